#!/bin/bash
# imc-snapshotter serving images from caches: imcd builds caches of a one-layer and a two-layer
# image from a loopback registry (access log on); imc-snapshotter runs on imcd's state dir (the
# host's store) under Debian's containerd 1.6 with the CRI plugin (snapshotter "imcache"), and
# tests/tools/cri-pull makes the kubelet's PullImage (ctr 1.6's pull fetches every blob before it
# unpacks, without the snapshot.ref labels).  The pull of the one-layer image fetches the
# manifest and config and no layer blob (its layer's ChainID is the cached top: AlreadyExists);
# ctr run prints a file only that image has; two containers are isolated over one read-only
# lower mounted once; an image that adds a layer to the cached one pulls only its own layer and
# runs with the right tree; the two-layer image is served from its top while its first layer (a
# prefix of the cached chain) is unpacked by containerd, and an image over that prefix runs
# without the cached top's files; kill -9 and restarts keep everything; a kill -9 between a
# lower's mount and its record leaves a mount that the restart removes; removing the images
# leaves no record, mount, loop device or process.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/containerd.sh"

need_root
need_loop
need_tool jq skopeo containerd ctr runc findmnt losetup mkfs.xfs mkfs.ext4
need_programs imcd imcctl imc-attach imc-snapshotter tests/cri-pull

CTRD_NS=k8s.io # the CRI's namespace
SNAP_SOCK=$TEST_TMP/snap/snapshotter.sock
SNAP_PID=
SNAP_LOG=$TEST_TMP/snapshotter.log
SNAP_ARGS=()

eval "$(declare -f _containerd_config | sed '1s/_containerd_config/_containerd_config_base/')"
_containerd_config() {
	_containerd_config_base | grep -v '"io.containerd.grpc.v1.cri",'
	containerd_cri_imcache_config "$SNAP_SOCK"
}
wait_eq() { # WANT CMD...: until CMD prints WANT; at most 30 s
	local want=$1 i
	shift
	for ((i = 0; i < 300; i++)); do
		if [ "$("$@")" = "$want" ]; then
			echo "$want"
			return 0
		fi
		sleep 0.1
	done
	"$@"
}
snap_start() { # [ENV=VALUE...]
	local i n
	n=$(grep -c 'serving snapshots' "$SNAP_LOG" 2>/dev/null || true)
	env "$@" "$IMC_BIN/imc-snapshotter" -v --address "$SNAP_SOCK" --state-dir "$SNAP_DIR" \
		"${SNAP_ARGS[@]}" >>"$SNAP_LOG" 2>&1 &
	SNAP_PID=$!
	for ((i = 0; i < 200; i++)); do
		[ "$(grep -c 'serving snapshots' "$SNAP_LOG")" -gt "${n:-0}" ] && return 0
		kill -0 "$SNAP_PID" 2>/dev/null || break
		sleep 0.05
	done
	tail -n 20 "$SNAP_LOG" >&2
	return 1
}
snaps() { ctrd snapshots --snapshotter imcache "$@"; }
snap_reachable() {
	local i
	for ((i = 0; i < 300; i++)); do
		snaps ls >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}
snap_stop() {
	[ -n "$SNAP_PID" ] || return 0
	stop_pid "$SNAP_PID" 10 || true
	SNAP_PID=
}
snap_kill() {
	kill -KILL "$SNAP_PID" 2>/dev/null || true
	wait "$SNAP_PID" 2>/dev/null || true
	SNAP_PID=
}
wait_stopped() {
	local i
	for ((i = 0; i < 400; i++)); do
		[ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" = T ] && return 0
		sleep 0.05
	done
	return 1
}
cri_pull() { "$IMC_BIN/tests/cri-pull" "$CTRD_ADDR" "$1"; }
# containerd's connection to the snapshotter may still be re-establishing after the kill (its
# transport reports "unavailable" then): a pull that fails so is tried again, at most 5 times.
cri_pull_retry() {
	local i out
	for ((i = 0; i < 5; i++)); do
		out=$(cri_pull "$1" 2>&1) && return 0
		grep -q unavailable <<<"$out" || break
		note "pull attempt $((i + 1)): $out"
		sleep 1
	done
	echo "$out" >&2
	return 1
}
# shellcheck disable=SC2317 # called through check
rm_images() { # the CRI names an image by tag, repository digest and id: all of them
	local refs
	refs=$(ctrd image ls -q)
	# shellcheck disable=SC2086 # one argument per reference
	[ -z "$refs" ] || ctrd image rm --sync $refs >/dev/null
}
run_in() { # REF NAME CMD...
	local ref=$1 name=$2
	shift 2
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm --snapshotter imcache \
		--runc-root "$CTRD_RUNC_ROOT" "$ref" "$name" "$@" </dev/null
}

# --- two images: "one" (a layer), "two" (that layer and one more) -----------------------------
IMC_REGISTRY_ACCESSLOG=1 registry_start_or_bail
LAYOUT=$TEST_TMP/layout
W=$TEST_TMP/work
mk_layout "$LAYOUT"
mkimage_busybox_rootfs "$W/l1"
mkdir -p "$W/l1/only" "$W/l2/only"
printf 'from-cache\n' >"$W/l1/only/cached.txt"
printf 'derived\n' >"$W/l2/derived.txt"
: >"$W/l2/only/.wh.cached.txt"
L1=$(mk_layer "$LAYOUT" "$W/l1" gzip) && L2=$(mk_layer "$LAYOUT" "$W/l2" gzip) ||
	bail "layers are made"
mk_tag "$LAYOUT" one "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1")"
mk_tag "$LAYOUT" two "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1" "$L2")"
# "multi" (two layers of its own, cached) and "side" (multi's first layer and another one): side
# builds on a ChainID that is a prefix, not the top, of a cached image.
mkimage_busybox_rootfs "$W/m1"
mkdir -p "$W/m1/m" "$W/m2/m" "$W/s2/m"
printf 'base\n' >"$W/m1/m/base.txt"
printf 'top\n' >"$W/m2/m/top.txt"
printf 'side\n' >"$W/s2/m/side.txt"
M1=$(mk_layer "$LAYOUT" "$W/m1" gzip) && M2=$(mk_layer "$LAYOUT" "$W/m2" gzip) &&
	S2=$(mk_layer "$LAYOUT" "$W/s2" gzip) || bail "layers are made"
mk_tag "$LAYOUT" multi "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$M1" "$M2")"
mk_tag "$LAYOUT" side "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$M1" "$S2")"
for t in one two multi side; do
	mkimage_push "$LAYOUT" "$t" "snapc/$t:v1" || bail "image $t pushes"
done
REF3=$REGISTRY/snapc/multi:v1
REF4=$REGISTRY/snapc/side:v1
M1_DIFF=${M1#* }
REF1=$REGISTRY/snapc/one:v1
REF2=$REGISTRY/snapc/two:v1
L1_BLOB=$(jq -r .digest <<<"${L1% *}")
L2_BLOB=$(jq -r .digest <<<"${L2% *}")
TOP1=${L1#* } # the ChainID of a one-layer image is its diff_id

STATE=$TEST_TMP/state
SNAP_DIR=$STATE
imcd_start_or_bail "$STATE"
OUT=$(imcctl create "$REF1" --name snapc --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "a cache of image one is Ready" "$(cat "$TEST_TMP/imcctl.err")"
ok "cache $ID of $REF1 is Ready"
OUT=$(imcctl create "$REF3" --name snapc-multi --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID3=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID3" =~ ^imc- ]] || bail "a cache of image multi is Ready" "$(cat "$TEST_TMP/imcctl.err")"
ok "cache $ID3 of $REF3 is Ready"

LOWER=$STATE/lowers/$ID # the host's shared lower of the cache (attach/lower.c)
lower_mounts() { findmnt -rn -o TARGET,FSTYPE,OPTIONS | awk -v p="$LOWER" '$1 == p'; }
n_lower_mounts() { lower_mounts | grep -c . || true; }
snap_loops() { losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v f="$STATE/pool/snapshots/" 'index($2, f) == 1'; }
n_records() { jq '.snapshots | length' "$STATE/snapshotter/meta.json"; }
# Whatever a failed run left mounted, before the pool's teardown (deferred first, so run last).
# shellcheck disable=SC2317 # called through defer
umount_lowers() {
	local m
	for m in "$STATE"/lowers/* "$STATE"/snapshotter/lowers/*; do
		[ -d "$m" ] && umount -l "$m" 2>/dev/null
	done
	return 0
}
defer umount_lowers
mkdir -p "$(dirname "$SNAP_SOCK")" "$TEST_TMP/cni/bin" "$TEST_TMP/cni/conf"
defer snap_stop
snap_start || bail "imc-snapshotter starts on imcd's state dir"
containerd_start || bail "containerd starts"

# --- the cached image: no layer fetched ----------------------------------------------------------
MARK=$(wc -l <"$REGISTRY_LOG")
check "a CRI pull of the cached image" cri_pull "$REF1"
PULL_LOG=$(tail -n +"$((MARK + 1))" "$REGISTRY_LOG")
check_match "the registry served the manifest" 'GET /v2/snapc/one/manifests/' "$PULL_LOG"
CFG1=$(ctrd image ls | awk -v r="$REF1" '$1 == r {print $3}')
check_eq "containerd has the image" 1 "$(ctrd image ls -q | grep -cxF "$REF1" || true)"
check_match "and the config" "GET /v2/snapc/one/blobs/sha256:" "$PULL_LOG"
check_eq "and no layer blob" 0 "$(grep -c "blobs/$L1_BLOB" <<<"$PULL_LOG" || true)"
note "image one: digest $CFG1, layer $L1_BLOB, top ChainID $TOP1"
check_match "the layer's snapshot names the cache that serves it" "\"imcache.io/cache-id\": \"$ID\"" \
	"$(snaps info "$TOP1" 2>&1)"
check_eq "the cache's snapshot is mounted once, read-only ext4" 1 "$(n_lower_mounts)"
check_match "ro and noload" '^[^ ]+ ext4 ro,.*norecovery|^[^ ]+ ext4 ro,' "$(lower_mounts)"
check_match "the host's shared lower, with the snapshot's reference" '^snap-[0-9]+$' \
	"$(ls "$LOWER.refs" 2>/dev/null)"

check_eq "ctr run prints a file only that image has" from-cache \
	"$(run_in "$REF1" r1 cat /only/cached.txt 2>&1)"
check "a container writes into its snapshot" \
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --snapshotter imcache \
	--runc-root "$CTRD_RUNC_ROOT" "$REF1" c1 sh -c 'echo mine >/only/own'
check "a second container does not see it" run_in "$REF1" c2 test ! -e /only/own
check "nor does the cache" test ! -e "$LOWER/images/0/rootfs/only/own"
check_eq "both containers used the one lower mount" 1 "$(n_lower_mounts)"
# imcd on this host deletes a cache through the shared lower: the snapshotter's references hold it.
http DELETE "$IMCD_URL/v1/imagecaches/$ID?force=true"
check_eq "DELETE ?force=true of the cache while the snapshotter serves it: 409" 409 "$HTTP_STATUS"
check_match "... naming the snapshotter's snapshots" 'in use by 1 .*imc-snapshotter snapshot' "$HTTP_BODY"
check_eq "the cache is Ready again" Ready "$(json_get "$(imcctl get "$ID" -o json)" .status)"
check_eq "the lower stays mounted" 1 "$(n_lower_mounts)"
check "the container is removed" ctrd container rm c1

# --- an image over the cached one's layer: only its own layer is fetched -------------------------
MARK=$(wc -l <"$REGISTRY_LOG")
check "a CRI pull of an image that adds a layer to the cached one" cri_pull "$REF2"
PULL_LOG=$(tail -n +"$((MARK + 1))" "$REGISTRY_LOG")
check_eq "its own layer was fetched" 1 "$(grep -c "GET /v2/snapc/two/blobs/$L2_BLOB" <<<"$PULL_LOG" || true)"
check_eq "the shared one was not" 0 "$(grep -c "blobs/$L1_BLOB" <<<"$PULL_LOG" || true)"
check "it runs with the right tree (the cached layer under its own, whiteout applied)" \
	run_in "$REF2" r2 sh -c 'test "$(cat /derived.txt)" = derived && test ! -e /only/cached.txt && test -x /bin/busybox'
check_eq "the cached image is unchanged" from-cache "$(run_in "$REF1" r3 cat /only/cached.txt 2>&1)"

# --- a cached image of two layers: its top is served, the prefix is unpacked by containerd --------
check "a CRI pull of the cached two-layer image" cri_pull "$REF3"
TOP3=$(snaps ls | awk -v p="$M1_DIFF" '$2 == p {print $1}')
check_match "its top snapshot is served by its cache" "\"imcache.io/cache-id\": \"$ID3\"" \
	"$(snaps info "$TOP3" 2>&1)"
INFO=$(snaps info "$M1_DIFF" 2>&1)
check_match "its first layer (a prefix of the cached chain) was unpacked by containerd" \
	'"Kind": "Committed"' "$INFO"
check_eq "and is not served from a cache" "" "$(grep imcache.io/cache-id <<<"$INFO" || true)"
check "it runs with both layers' files" run_in "$REF3" r7 sh -c 'test "$(cat /m/base.txt /m/top.txt)" = "base
top"'
check "a CRI pull of an image over that prefix" cri_pull "$REF4"
check "it runs with the prefix's tree and its own layer, not the cached top's files" \
	run_in "$REF4" r8 sh -c 'test "$(cat /m/base.txt /m/side.txt)" = "base
side" && test ! -e /m/top.txt'
check_eq "two caches, two lower mounts" 2 "$(findmnt -rn -o TARGET | grep -c "^$STATE/lowers/" || true)"

# --- restarts and kill -9 ------------------------------------------------------------------------
snap_kill
check_eq "after kill -9 the lower stays (its snapshots need it)" 1 "$(n_lower_mounts)"
if snap_start && snap_reachable; then ok "imc-snapshotter restarts"; else not_ok "imc-snapshotter restarts"; fi
check_eq "both images still run" "from-cache derived" \
	"$(run_in "$REF1" r4 cat /only/cached.txt 2>&1) $(run_in "$REF2" r5 cat /derived.txt 2>&1)"
check_eq "still one lower mount" 1 "$(n_lower_mounts)"

# Image one out; the lower stays while image two's chain builds on the cached layer.
check "ctr image rm --sync of every image" rm_images
check_eq "no snapshot record is left" 0 "$(wait_eq 0 n_records)"
check_eq "the lowers are unmounted" 0 "$(wait_eq 0 n_lower_mounts)"
check_eq "the other cache's too" "" "$(findmnt -rn -o TARGET | grep "^$STATE/lowers/" || true)"
check "and its directory removed" test ! -e "$LOWER"
check_eq "no loop device on the cache's snapshot" "" "$(wait_eq "" snap_loops)"

# kill -9 between the lower's mount and the snapshot's record: the restart unmounts it.
snap_stop
snap_start IMC_SNAP_STOP_AT=remote-after-mount && snap_reachable ||
	bail "imc-snapshotter starts with a stop point"
cri_pull_retry "$REF1" >"$TEST_TMP/stopped-pull.out" 2>&1 &
CTR_PID=$!
if wait_stopped "$SNAP_PID"; then
	ok "Prepare stops after the lower's mount"
else
	not_ok "Prepare stops after the lower's mount"
	sed 's/^/# /' "$TEST_TMP/stopped-pull.out"
fi
snap_kill
stop_pid "$CTR_PID" 10 || true
check_eq "the killed Prepare left the lower mounted, no record naming it" "1 0" "$(n_lower_mounts) $(n_records)"
if snap_start && snap_reachable; then ok "imc-snapshotter restarts after kill -9"; else not_ok "imc-snapshotter restarts after kill -9"; fi
check_match "and reports the repair" 'repair: .*dropped 1 reference' "$(cat "$SNAP_LOG")"
check_eq "the orphaned lower is gone" "0 no" "$(n_lower_mounts) $([ -e "$LOWER" ] && echo yes || echo no)"
check "the image pulls again" cri_pull_retry "$REF1"
check_eq "and runs" from-cache "$(run_in "$REF1" r6 cat /only/cached.txt 2>&1)"
check "ctr image rm --sync" rm_images
check_eq "no lower is left" 0 "$(wait_eq 0 n_lower_mounts)"

# (--server and --auto-create on a node without the caches: test_snapshotter_remote.sh)
containerd_stop
snap_stop
check_eq "no mount under the test directory but imcd's pool" "$STATE/pool" "$(tmp_mounts)"
check_eq "no loop device on a cache snapshot" "" "$(snap_loops)"
check_eq "no imc-snapshotter process is left" "" "$(pgrep -f "[i]mc-snapshotter -v --address $SNAP_SOCK" || true)"
done_testing
