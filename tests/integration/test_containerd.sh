#!/bin/bash
# imc-runtime under containerd: a private containerd (Debian's 1.6, own root, state, socket and
# config) runs containers with `ctr run --runc-binary imc-runtime --annotation
# imcache.io/cache-id=...` on an empty --rootfs directory; what they print exists only in the
# cache.  The image's own config through imcache.io/use-image-config, an unknown cache reported
# by containerd from imc-runtime's json log line, and nothing left behind.
# Needs root, loop devices, containerd, ctr and runc.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"
. "$(dirname "$0")/../lib/containerd.sh"
. "$(dirname "$0")/../lib/webserver.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs containerd ctr containerd-shim-runc-v2 runc \
	nginx
need_programs imcd imcctl imc-attach imc-runtime

# --- registry, images, imcd, cache -------------------------------------------------------------

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
images_push_or_bail "multilayer and config probe images build and push" "$LAYOUT" \
	multilayer:multi config_probe:probe
STATE=$TEST_TMP/state
webserver_start_or_bail
imcd_start_or_bail "$STATE" --allow-data-destination "${WEB_URL#http://}"
printf 'model-bytes\n' >"$WEB_ROOT/model.bin"
OUT=$(imcctl create "$REGISTRY/imc/multi:v1" "$REGISTRY/imc/probe:v1" --name ctrd \
	--data "$WEB_URL/model.bin=models" --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "cache of two images is Ready" "$(cat "$TEST_TMP/imcctl.err")"
ok "cache $ID is Ready"

# --- containerd --------------------------------------------------------------------------------

# Inherited by containerd's shims, and so by imc-runtime (see tests/lib/containerd.sh for why
# runc).  ASan's options reach it the same way.
export IMCACHE_STATE_DIR=$STATE IMCACHE_RUNTIME=runc
containerd_start "$TEST_TMP/containerd" || bail "containerd starts on its own socket" "$(tail -n 30 "$CTRD_LOG")"
ok "containerd $(ctrd version 2>/dev/null | awk '/Version:/ { print $2; exit }') answers on $CTRD_ADDR"

# nothing_left WHAT ROOTFS CONTAINER_ID
nothing_left() {
	local what=$1
	container_gone "$@"
	check_eq "$what: no task left in containerd" "" "$(ctrd task ls -q 2>&1)"
	check_eq "$what: no container left in containerd" "" "$(ctrd container ls -q 2>&1)"
}

# ctr_run_fresh NAME ANNOTATION... -- CMD...: ctr run (ctrd_run_imc) of container ctr-NAME on a
# fresh, empty rootfs dir ROOT=$TEST_TMP/rootfs-NAME, detached at exit; sets out (its stdout
# and stderr) and rc.
ctr_run_fresh() {
	local name=$1
	shift
	ROOT=$TEST_TMP/rootfs-$name
	mkdir -p "$ROOT"
	defer imc_detach_quiet "$ROOT"
	rc=0
	out=$(ctrd_run_imc "ctr-$name" "$ROOT" "$@" 2>&1) || rc=$?
}

# --- ctr run from the cache --------------------------------------------------------------------

# shellcheck disable=SC2016 # expanded in the container
ctr_run_fresh a "imcache.io/cache-id=$ID" -- \
	/bin/sh -c 'echo "$(cat /data/a.txt) $(cat /opq/new) ${IMC_TEST:-no-image-env}"'
check_eq "ctr run --runc-binary imc-runtime prints files that exist only in the cache" \
	"0 content-a new no-image-env" "$rc $out"
check_eq "the --rootfs directory on the host stayed empty" "" "$(ls -A "$ROOT" 2>&1)"
nothing_left "after ctr run --rm" "$ROOT" ctr-a

# The bundle containerd wrote holds the annotation: the shim passed config.json as it was.
# shellcheck disable=SC2016 # expanded in the container
# The root's mountinfo line: its root in its filesystem and the filesystem's type.
ROOT_LINE='while read -r _ _ _ root mnt rest; do
	[ "$mnt" != / ] || { set -- ${rest#* - }; echo "$root $1"; }
done </proc/self/mountinfo'
ctr_run_fresh b "imcache.io/cache-id=$ID" -- /bin/sh -c "$ROOT_LINE"
check_eq "the container's / is an overlay (the default mode)" "0 / overlay" "$rc $out"
nothing_left "after the overlay run" "$ROOT" ctr-b
ctr_run_fresh clone "imcache.io/cache-id=$ID" imcache.io/attach-mode=clone -- /bin/sh -c "$ROOT_LINE"
check_eq "with imcache.io/attach-mode=clone it is the clone's /images/0/rootfs" \
	"0 /images/0/rootfs ext4" "$rc $out"
nothing_left "after the clone run" "$ROOT" ctr-clone

# --- the image's config through containerd -----------------------------------------------------

ctr_run_fresh cfg "imcache.io/cache-id=$ID" imcache.io/image=1 \
	imcache.io/use-image-config=override -- /bin/false
check_eq "imcache.io/image=1 + use-image-config=override runs the image's entrypoint as its user" \
	"0 $CONFIG_PROBE_OUTPUT" "$rc $out"
nothing_left "after the use-image-config run" "$ROOT" ctr-cfg

# shellcheck disable=SC2016 # expanded in the container
ctr_run_fresh data "imcache.io/cache-id=$ID" imcache.io/data-mount=/mnt/models \
	-- /bin/sh -c 'cat /mnt/models/models/model.bin; (echo x >/mnt/models/x) 2>/dev/null || echo read-only'
check_eq "imcache.io/data-mount through containerd: the cache's /data, read-only" \
	"0 model-bytes read-only" "$(printf '%s' "$rc $out" | tr '\n' ' ' | sed 's/ $//')"
nothing_left "after the data-mount run" "$ROOT" ctr-data
check_eq "no mount left below the data-mount run's rootfs" "" \
	"$(findmnt -rn -o TARGET | grep -F "$ROOT" || true)"

# --- failures ----------------------------------------------------------------------------------

ctr_run_fresh unknown imcache.io/cache-id=imc-00000000deadbeef -- /bin/true
check_match "an unknown cache fails ctr run with imc-runtime's message (from its json log line)" \
	"^[1-9][0-9]* .*imc-00000000deadbeef: not in the local store" "$rc $out"
nothing_left "after the unknown cache" "$ROOT" ctr-unknown

ctr_run_fresh baddata "imcache.io/cache-id=$ID" \
	imcache.io/data-mount=../../etc -- /bin/true
check_match "a bad data-mount fails ctr run naming the annotation" \
	"^[1-9][0-9]* .*imcache.io/data-mount" "$rc $out"
nothing_left "after the bad data-mount" "$ROOT" ctr-baddata

# --- pass-through: no annotation ----------------------------------------------------------------

ROOT=$TEST_TMP/rootfs-plain
mkimage_busybox_rootfs "$ROOT" >/dev/null 2>&1 || bail "busybox rootfs builds"
echo plain-file >"$ROOT/plain.txt"
rc=0
out=$(ctrd_run_imc ctr-plain "$ROOT" other=x -- /bin/cat /plain.txt 2>&1) || rc=$?
check_eq "without the annotation imc-runtime passes through (runs the plain --rootfs)" \
	"0 plain-file" "$rc $out"
check_fails "pass-through wrote no runtime record" test -e "$STATE/runtime/ctr-plain.json"

# What the CRI plugin does with pod_annotations = ["imcache.io/*"]: the pod's annotations reach
# the sandbox (pause) container and every container of the pod.  The sandbox, and a container
# other than the one imcache.io/container names (a sidecar), run from their own rootfs.
rc=0
out=$(ctrd_run_imc ctr-sandbox "$ROOT" "imcache.io/cache-id=$ID" \
	io.kubernetes.cri.container-type=sandbox -- /bin/cat /plain.txt 2>&1) || rc=$?
check_eq "a CRI sandbox container with the pod's cache annotation passes through" \
	"0 plain-file" "$rc $out"
rc=0
out=$(ctrd_run_imc ctr-sidecar "$ROOT" "imcache.io/cache-id=$ID" imcache.io/container=app \
	io.kubernetes.cri.container-type=container io.kubernetes.cri.container-name=queue-proxy \
	-- /bin/cat /plain.txt 2>&1) || rc=$?
check_eq "a sidecar that imcache.io/container does not name passes through" \
	"0 plain-file" "$rc $out"
check_eq "neither wrote a runtime record" "" "$(ls -A "$STATE/runtime" 2>&1)"
ctr_run_fresh app "imcache.io/cache-id=$ID" imcache.io/container=app \
	io.kubernetes.cri.container-type=container io.kubernetes.cri.container-name=app \
	-- /bin/cat /data/a.txt
check_eq "the container imcache.io/container names runs from the cache" "0 content-a" "$rc $out"
nothing_left "after the named container" "$ROOT" ctr-app

# --- shutdown ----------------------------------------------------------------------------------

if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$CTRD_LOG" \
	"$CTRD_STATE"/io.containerd.runtime.v2.task/*/*/log.json 2>/dev/null; then
	not_ok "imc-runtime under containerd: no sanitizer report" \
		"$(grep -E -A20 'Sanitizer|runtime error:' "$CTRD_LOG" | head -40)"
else
	ok "imc-runtime under containerd: no sanitizer report"
fi
SHIMS=$(_containerd_shim_pids | tr '\n' ' ')
CTRD_PID_WAS=$CTRD_PID
containerd_stop
check_fails "containerd (pid $CTRD_PID_WAS) is stopped" kill -0 "$CTRD_PID_WAS"
check_eq "no containerd shim is left" "" "$(for p in $SHIMS; do kill -0 "$p" 2>/dev/null && echo "$p"; done)"
check_eq "no runc state is left" "" "$(ls -A "$CTRD_RUNC_ROOT"/* 2>/dev/null)"

http DELETE "$IMCD_URL/v1/imagecaches/$ID"
check_eq "DELETE $ID answers 200 (nothing holds it)" 200 "$HTTP_STATUS"
check_clean_shutdown

done_testing
