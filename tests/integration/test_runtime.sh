#!/bin/bash
# imc-runtime, the runc-compatible wrapper: a bundle whose config.json names a cache runs from the
# cache's files (run, and create + start + delete) with crun and with runc, and leaves nothing
# attached; a bundle without the annotation passes through; an unknown cache fails cleanly.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"
. "$(dirname "$0")/../lib/webserver.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs unshare nginx
need_programs imcd imcctl imc-attach imc-runtime

RUNTIMES=
for rt in crun runc; do
	command -v "$rt" >/dev/null 2>&1 && RUNTIMES+="$rt "
done
[ -n "$RUNTIMES" ] || skip_all "needs crun or runc"

# --- registry, image, imcd, cache ------------------------------------------------------------

registry_start || bail "registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}" 2>/dev/null)"
LAYOUT=$TEST_TMP/layout
images_push_or_bail "multilayer image builds and pushes" "$LAYOUT" multilayer:multi
images_push_or_bail "config probe image builds and pushes" "$LAYOUT" config_probe:probe

STATE=$TEST_TMP/state
defer imc_teardown_quiet
webserver_start_or_bail
# image 0: the multilayer image, image 1: the config probe; /data/models/model.bin from nginx
imcd_start "$STATE" --allow-data-destination "${WEB_URL#http://}" || bail "imcd starts" "$(imcd_log_tail 30)"
printf 'model-bytes\n' >"$WEB_ROOT/model.bin"
OUT=$(imcctl create "$REGISTRY/imc/multi:v1" "$REGISTRY/imc/probe:v1" --name rt \
	--data "$WEB_URL/model.bin=models" --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "cache of the multilayer and probe images is Ready" \
	"$(cat "$TEST_TMP/imcctl.err")"
ok "cache $ID is Ready"
export IMCACHE_STATE_DIR=$STATE

# --- helpers ---------------------------------------------------------------------------------

# mk_bundle DIR ROOT_PATH ANNOTATIONS_JSON CMD...: a bundle whose root.path is ROOT_PATH
# (relative to DIR) and whose process runs CMD; ROOT_PATH is created empty if missing.
mk_bundle() {
	local dir=$1 root=$2 ann=$3 gen args
	shift 3
	mkdir -p "$dir"
	mkdir -p "$dir/$root"
	gen=${RUNTIMES%% *}
	(cd "$dir" && rm -f config.json && "$gen" spec >/dev/null)
	args=$(printf '%s\n' "$@" | jq -R . | jq -cs .)
	jq --arg root "$root" --argjson args "$args" --argjson ann "$ann" \
		'.root.path = $root | .root.readonly = false | .process.terminal = false
		 | .process.args = $args | .hostname = "imcache-rt" | .annotations = $ann' \
		"$dir/config.json" >"$dir/config.json.new"
	mv -f "$dir/config.json.new" "$dir/config.json"
}

# in_rt RT CMD...: run CMD for runtime RT.  crun 1.8 needs a private mount namespace without
# the hybrid cgroup2 mount at /sys/fs/cgroup/unified (see tests/lib/container.sh); runc runs as
# is.  The attach then happens in that namespace too, which the whole CMD shares.
in_rt() {
	local rt=$1
	shift
	if [ "$rt" = crun ]; then
		# shellcheck disable=SC2016 # expanded by the inner shell
		IMCACHE_RUNTIME=crun timeout 120 unshare -m --propagation private sh -c \
			'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh "$@" </dev/null
	else
		IMCACHE_RUNTIME=runc timeout 120 "$@" </dev/null
	fi
}

IMC_RT=$IMC_BIN/imc-runtime
RT_ERRS=$TEST_TMP/rt-stderr
mkdir -p "$RT_ERRS"

# nothing_left WHAT ROOTFS CONTAINER_ID: the checks after a container is gone.
nothing_left() {
	local what=$1 rootfs=$2
	container_gone "$@"
	check_eq "$what: the rootfs dir is empty again" "" "$(ls -A "$rootfs" 2>&1)"
}

# --- run, create + start + delete, with each runtime ---------------------------------------------

ANN=$(jq -cn --arg id "$ID" '{"imcache.io/cache-id": $id, "other": "x"}')
WORKED=
for rt in $RUNTIMES; do
	B=$TEST_TMP/bundle-run-$rt
	cid=imc-rt-run-$rt-$$
	mk_bundle "$B" rootfs "$ANN" /bin/sh -c 'echo hello-from-runtime; cat /data/a.txt'
	defer imc_detach_quiet "$B/rootfs"
	defer "$rt" --root "$TEST_TMP/rt-root-$rt" delete --force "$cid"
	rc=0
	out=$(in_rt "$rt" "$IMC_RT" --root "$TEST_TMP/rt-root-$rt" run --bundle "$B" "$cid" \
		2>"$RT_ERRS/run-$rt") || rc=$?
	if [ "$rc" -eq 0 ]; then
		WORKED+="$rt "
		check_eq "$rt: imc-runtime run prints the container's output from the cache" \
			"hello-from-runtime content-a" "$(printf '%s' "$out" | tr '\n' ' ' | sed 's/ $//')"
	else
		not_ok "$rt: imc-runtime run exits 0" "exit status $rc" "$out" "$(cat "$RT_ERRS/run-$rt")"
	fi
	nothing_left "$rt: after run" "$B/rootfs" "$cid"

	# create + start + delete, all in one shell (one mount namespace for crun), in overlay mode
	# (the default) and in clone mode (imcache.io/attach-mode).
	for mode in overlay clone; do
	B=$TEST_TMP/bundle-csd-$rt-$mode
	cid=imc-rt-csd-$rt-$mode-$$
	want_fs=overlay
	ann=$ANN
	if [ "$mode" = clone ]; then
		want_fs=ext4
		ann=$(printf '%s' "$ANN" | jq -c '. + {"imcache.io/attach-mode": "clone"}')
	fi
	mk_bundle "$B" rootfs "$ann" /bin/cat /data/a.txt
	defer imc_detach_quiet "$B/rootfs"
	defer "$rt" --root "$TEST_TMP/rt-root-$rt" delete --force "$cid"
	# shellcheck disable=SC2016 # expanded by the inner shell
	FLOW='set -e
		rt=$1 imc=$2 root=$3 b=$4 cid=$5 out=$6
		"$imc" --root "$root" create --bundle "$b" "$cid" >"$out" 2>&1
		echo "mounted=$(findmnt -rn -o FSTYPE --mountpoint "$b/rootfs" || echo no)"
		echo "records=$(ls "$IMCACHE_STATE_DIR/runtime")"
		"$imc" --root "$root" start "$cid"
		i=0
		while [ "$("$rt" --root "$root" state "$cid" | jq -r .status)" != stopped ]; do
			i=$((i + 1)); [ $i -lt 200 ] || { echo "never stopped"; exit 1; }; sleep 0.05
		done
		echo stopped
		"$imc" --root "$root" delete "$cid"
		echo "mounted-after=$(findmnt -rn --mountpoint "$b/rootfs" >/dev/null && echo yes || echo no)"'
	rc=0
	out=$(in_rt "$rt" sh -c "$FLOW" sh "$rt" "$IMC_RT" "$TEST_TMP/rt-root-$rt" "$B" "$cid" \
		"$TEST_TMP/out-csd-$rt-$mode" 2>"$RT_ERRS/csd-$rt-$mode") || rc=$?
	if [ "$rc" -eq 0 ]; then
		check_eq "$rt ($mode): create attaches at root.path ($want_fs) and records the container" \
			"mounted=$want_fs records=$cid.json stopped mounted-after=no" \
			"$(printf '%s' "$out" | tr '\n' ' ' | sed 's/ $//')"
		check_eq "$rt ($mode): the created container read the cache's /data/a.txt" content-a \
			"$(cat "$TEST_TMP/out-csd-$rt-$mode" 2>&1)"
	else
		not_ok "$rt ($mode): imc-runtime create + start + delete" "exit status $rc" "$out" \
			"$(cat "$RT_ERRS/csd-$rt-$mode")"
	fi
	nothing_left "$rt ($mode): after create + start + delete" "$B/rootfs" "$cid"
	done
done
note "runtimes that worked through imc-runtime: ${WORKED:-none} (tried: $RUNTIMES)"

# --- imcache.io/use-image-config ---------------------------------------------------------------

RT=${RUNTIMES%% *}
# cfg_run NAME ANN_EXTRA_JSON JQ_EDIT CMD...: a bundle on image 1 (the probe) with the annotations
# plus ANN_EXTRA_JSON, config.json edited by JQ_EDIT, run through imc-runtime; sets out and rc.
cfg_run() {
	local name=$1 extra=$2 edit=$3 ann
	shift 3
	B=$TEST_TMP/bundle-$name
	cid=imc-rt-$name-$$
	ann=$(jq -cn --arg id "$ID" --argjson x "$extra" \
		'{"imcache.io/cache-id": $id, "imcache.io/image": "1"} + $x')
	mk_bundle "$B" rootfs "$ann" "$@"
	jq "$edit" "$B/config.json" >"$B/config.json.new" && mv -f "$B/config.json.new" "$B/config.json"
	defer imc_detach_quiet "$B/rootfs"
	defer "$RT" delete --force "$cid"
	rc=0
	out=$(in_rt "$RT" "$IMC_RT" run --bundle "$B" "$cid" 2>"$RT_ERRS/$name") || rc=$?
	out="$out$(cat "$RT_ERRS/$name")"
}

cfg_run cfg-fill '{"imcache.io/use-image-config": "true"}' '.process.args = []' unused
check_eq "$RT: use-image-config=true fills args, env, cwd and user from the image" \
	"0 $CONFIG_PROBE_OUTPUT" "$rc $out"
check_eq "use-image-config=true: config.json was rewritten (args, cwd, uid:gid, both PATHs kept)" \
	'/bin/sh /work 1000:1000 true' \
	"$(jq -r '"\(.process.args[0]) \(.process.cwd) \(.process.user.uid):\(.process.user.gid) \(
		[.process.env[] | select(startswith("PATH=/usr/local"))] | length == 1)"' \
		"$B/config.json" 2>&1)"
nothing_left "use-image-config=true" "$B/rootfs" "$cid"

# shellcheck disable=SC2016 # expanded in the container
cfg_run cfg-keep '{"imcache.io/use-image-config": "true"}' '.process.cwd = "/bin"' \
	/bin/sh -c 'echo "$IMC_TEST $(pwd) $(id -u)"'
check_eq "use-image-config=true keeps the spec's args and cwd, fills env and user" \
	"0 from-image /bin 1000" "$rc $out"

cfg_run cfg-override '{"imcache.io/use-image-config": "override"}' '.process.cwd = "/bin"' \
	/bin/false
check_eq "use-image-config=override: the image's args, cwd and user win" \
	"0 $CONFIG_PROBE_OUTPUT" "$rc $out"

# shellcheck disable=SC2016 # expanded in the container
cfg_run cfg-none '{"imcache.io/use-image-config": "false"}' '.' \
	/bin/sh -c 'echo "${IMC_TEST:-unset} $(id -u)"'
check_eq "use-image-config=false: the spec as it is" "0 unset 0" "$rc $out"

cfg_run cfg-noprocess '{"imcache.io/use-image-config": "true"}' 'del(.process)' unused
check_match "use-image-config with no process in config.json fails after the attach, naming it" \
	"^1 imc-runtime: .*imcache.io/use-image-config.*process" "$rc $out"
nothing_left "use-image-config failure" "$B/rootfs" "$cid"

# --- imcache.io/data-mount ---------------------------------------------------------------------

for dest in models /models/../../etc / /a//b; do
	cfg_run data-bad "$(jq -cn --arg d "$dest" '{"imcache.io/data-mount": $d}')" '.' /bin/true
	check_match "data-mount \"$dest\" is refused naming the annotation" \
		"^1 imc-runtime: .*imcache.io/data-mount" "$rc $out"
	nothing_left "data-mount \"$dest\"" "$B/rootfs" "$cid"
	check_fails "data-mount \"$dest\": the real runtime never created the container" \
		"$RT" state "$cid"
done
# shellcheck disable=SC2016 # expanded in the container
cfg_run data-ok '{"imcache.io/data-mount": "/mnt/data"}' '.' /bin/sh -c \
	'cat /mnt/data/models/model.bin; (echo x >/mnt/data/x) 2>/dev/null && echo data-writable || echo data-read-only; echo x >/written && echo rootfs-writable'
check_eq "$RT: data-mount=/mnt/data shows the cache's /data there, read-only" \
	"0 model-bytes data-read-only rootfs-writable" "$(printf '%s' "$rc $out" | tr '\n' ' ')"
nothing_left "data-mount" "$B/rootfs" "$cid"
check_eq "data-mount: no mount left below the rootfs dir" "" \
	"$(findmnt -rn -o TARGET | grep -F "$B/rootfs" || true)"

OUT=$(imcctl create "$REGISTRY/imc/probe:v1" --name nodata --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID2=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID2" =~ ^imc- ]] || bail "a cache without data is Ready" "$(cat "$TEST_TMP/imcctl.err")"
B=$TEST_TMP/bundle-data-none
cid=imc-rt-data-none-$$
mk_bundle "$B" rootfs "$(jq -cn --arg id "$ID2" \
	'{"imcache.io/cache-id": $id, "imcache.io/data-mount": "/models"}')" /bin/true
rc=0
out=$(in_rt "$RT" "$IMC_RT" run --bundle "$B" "$cid" 2>&1) || rc=$?
check_match "data-mount of a cache without /data fails naming the cache" \
	"^1 imc-runtime: .*$ID2 has no /data" "$rc $out"
nothing_left "data-mount of a cache without /data" "$B/rootfs" "$cid"
http DELETE "$IMCD_URL/v1/imagecaches/$ID2"
check_eq "DELETE $ID2 answers 200" 200 "$HTTP_STATUS"

# --- pass-through: no annotation -------------------------------------------------------------

RT=${RUNTIMES%% *}
B=$TEST_TMP/bundle-plain
mkdir -p "$B"
mkimage_busybox_rootfs "$B/plain" >/dev/null 2>&1 || bail "busybox rootfs builds"
echo plain-file >"$B/plain/plain.txt"
mk_bundle "$B" plain '{}' /bin/cat /plain.txt
cid=imc-rt-plain-$$
defer "$RT" delete --force "$cid"
rc=0
out=$(in_rt "$RT" "$IMC_RT" run -b "$B" "$cid" 2>"$RT_ERRS/plain") || rc=$?
check_eq "$RT: a bundle without the annotation runs as pass-through from its plain rootfs" \
	"0 plain-file" "$rc $out"
check_fails "pass-through writes no runtime record" test -e "$STATE/runtime/$cid.json"
check_eq "pass-through attaches nothing" 0 "$(attach_count)"
check_match "other commands pass through (--version names the real runtime)" \
	"$RT version" "$(in_rt "$RT" "$IMC_RT" --version 2>&1)"

# Without the annotation imc-runtime is transparent: a config.json that runc takes but a strict
# parser would not (duplicate keys, bytes that are not UTF-8, \u0000, more than 4 MiB) reaches
# runc as it is.  Each is run with runc alone first: what runc takes, imc-runtime must pass on.
# mutate FILE KIND: config.json rewritten with one such oddity.
mutate() {
	python3 - "$1" "$2" <<'EOF'
import json, sys
path, kind = sys.argv[1:]
spec = json.load(open(path))
spec.setdefault("annotations", {})["note"] = "PLACEHOLDER"
text = json.dumps(spec).encode()
odd = {"dup": b"x", "utf8": b"\xff\xfe-not-utf8", "nul": b"a\\u0000b",
       "big": b"a" * (5 << 20)}[kind]
text = text.replace(b"PLACEHOLDER", odd)
if kind == "dup":
    text = b'{"hostname":"dup-first",' + text[1:]
open(path, "wb").write(text)
EOF
}
if command -v runc >/dev/null 2>&1; then
	for kind in dup utf8 nul big; do
		B=$TEST_TMP/bundle-odd-$kind
		mkdir -p "$B"
		cp -a "$TEST_TMP/bundle-plain/plain" "$B/plain"
		mk_bundle "$B" plain '{}' /bin/cat /plain.txt
		mutate "$B/config.json" "$kind"
		cid=imc-rt-odd-$kind-$$
		defer runc delete --force "$cid"
		rc=0
		out=$(in_rt runc runc run -b "$B" "$cid" 2>&1) || rc=$?
		check_eq "runc alone runs a config.json with $kind" "0 plain-file" "$rc $out"
		rc=0
		out=$(in_rt runc "$IMC_RT" run -b "$B" "$cid" 2>&1) || rc=$?
		check_eq "runc through imc-runtime runs it too (no annotation: passed through)" \
			"0 plain-file" "$rc $out"
		check_fails "... and no runtime record is written" test -e "$STATE/runtime/$cid.json"
	done
	check "the big config.json is more than 4 MiB" \
		test "$(stat -c %s "$TEST_TMP/bundle-odd-big/config.json")" -gt 4194304
	# With the annotation the same oddity is read strictly: the duplicate key is refused,
	# naming the file, and nothing is attached.
	B=$TEST_TMP/bundle-odd-strict
	mk_bundle "$B" rootfs "$(jq -cn --arg id "$ID" '{"imcache.io/cache-id": $id}')" /bin/true
	mutate "$B/config.json" dup
	rc=0
	out=$(in_rt runc "$IMC_RT" run -b "$B" "imc-rt-strict-$$" 2>&1) || rc=$?
	check_match "with the annotation, a duplicate key is refused" \
		"^1 imc-runtime: .*config.json.*" "$rc $out"
	check_eq "... and nothing is attached" 0 "$(attach_count)"
else
	not_ok "runc is installed (the pass-through of odd config.json files is checked with it)"
fi


# --- root.path through a symlink: refused before anything is mounted ----------------------------

# root_link_case NAME ROOT_PATH: a bundle whose root.path (made by the caller) leads through a
# symlink to $TEST_TMP/elsewhere-NAME; imc-runtime must refuse it and mount nothing anywhere.
root_link_case() {
	local name=$1 root=$2 B=$TEST_TMP/bundle-link-$1 away=$TEST_TMP/elsewhere-$1 cid
	cid=imc-rt-link-$name-$$
	mkdir -p "$away/rootfs"
	defer imc_detach_quiet "$away"
	defer imc_detach_quiet "$away/rootfs"
	defer "$RT" delete --force "$cid"
	mk_bundle "$B" dummy "$(jq -cn --arg id "$ID" '{"imcache.io/cache-id": $id}')" /bin/cat /data/a.txt
	rmdir "$B/dummy"
	jq --arg r "$root" '.root.path = $r' "$B/config.json" >"$B/config.json.new" &&
		mv -f "$B/config.json.new" "$B/config.json"
	case $name in
	link) ln -s "$away" "$B/rootfs-link" ;;
	through) ln -s "$away" "$B/sub" ;;
	absolute) ln -s "$away" "$B/sub" ;;
	esac
	rc=0
	out=$(in_rt "$RT" "$IMC_RT" run --bundle "$B" "$cid" 2>&1) || rc=$?
	check_match "root.path $root (a symlink on the way): refused naming it" \
		"^1 imc-runtime: .*root.path .*symlink" "$rc $out"
	check_eq "... nothing is mounted where the symlink leads" "" \
		"$(findmnt -rn -o TARGET | grep -F "$away" || true)"
	check_eq "... the directory there is untouched" "" "$(ls -A "$away/rootfs" 2>&1)"
	check_eq "... no attach and no record" "0 " \
		"$(attach_count) $(ls "$STATE/runtime" 2>/dev/null | grep -F "$cid" || true)"
	check_fails "... and the real runtime never created the container" "$RT" state "$cid"
}
root_link_case link rootfs-link
root_link_case through sub/rootfs
root_link_case absolute "$TEST_TMP/bundle-link-absolute/sub/rootfs"

# --- failures leave nothing attached ---------------------------------------------------------

B=$TEST_TMP/bundle-unknown
mk_bundle "$B" rootfs '{"imcache.io/cache-id": "imc-00000000deadbeef"}' /bin/true
cid=imc-rt-unknown-$$
defer "$RT" delete --force "$cid"
for fmt in json text; do
	LOG=$TEST_TMP/runtime-$fmt.log
	rc=0
	out=$(in_rt "$RT" "$IMC_RT" --log "$LOG" --log-format "$fmt" create --bundle "$B" "$cid" 2>&1) ||
		rc=$?
	check_eq "unknown cache id ($fmt log): imc-runtime create exits 1" 1 "$rc"
	check_match "unknown cache id ($fmt log): stderr names the cache" \
		'imc-runtime: .*imc-00000000deadbeef.*not in the local store' "$out"
	if [ "$fmt" = json ]; then
		check_eq "unknown cache id: the --log file gets a json error line" "error true true" \
			"$(jq -r '"\(.level) \(.msg | test("imc-00000000deadbeef")) \(.time | length > 0)"' \
				"$LOG" 2>&1)"
	else
		check_match "unknown cache id: the --log file gets a text error line" \
			'^time="[^"]+" level=error msg=".*imc-00000000deadbeef.*"$' "$(cat "$LOG" 2>&1)"
	fi
	nothing_left "unknown cache id ($fmt log)" "$B/rootfs" "$cid"
	check_fails "unknown cache id ($fmt log): the real runtime never created the container" \
		"$RT" state "$cid"
done

B=$TEST_TMP/bundle-badimage
mk_bundle "$B" rootfs "$(jq -cn --arg id "$ID" '{"imcache.io/cache-id": $id, "imcache.io/image": "7x"}')" /bin/true
rc=0
out=$(in_rt "$RT" "$IMC_RT" run --bundle "$B" imc-rt-bad-$$ 2>&1) || rc=$?
check_match "a bad imcache.io/image fails naming it" "1 .*imcache.io/image.*0-1000" "$rc $out"
B=$TEST_TMP/bundle-noimage
mk_bundle "$B" rootfs "$(jq -cn --arg id "$ID" '{"imcache.io/cache-id": $id, "imcache.io/image": "3"}')" /bin/true
rc=0
out=$(in_rt "$RT" "$IMC_RT" run --bundle "$B" imc-rt-noimg-$$ 2>&1) || rc=$?
check_match "an image the cache does not have fails naming it" "1 .*has no image 3" "$rc $out"
nothing_left "image the cache does not have" "$B/rootfs" "imc-rt-noimg-$$"

mkdir -p "$TEST_TMP/selfbin"
ln -s "$IMC_RT" "$TEST_TMP/selfbin/runc"
rc=0
out=$(IMCACHE_RUNTIME=$TEST_TMP/selfbin/runc "$IMC_RT" --version 2>&1) || rc=$?
check_match "a real runtime that is imc-runtime itself is refused" "1 .*imc-runtime itself" "$rc $out"

if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$RT_ERRS"/*; then
	not_ok "imc-runtime: no sanitizer report" "$(grep -E -A20 'Sanitizer|runtime error:' "$RT_ERRS"/* | head -40)"
else
	ok "imc-runtime: no sanitizer report"
fi

http DELETE "$IMCD_URL/v1/imagecaches/$ID"
check_eq "DELETE $ID answers 200 (nothing holds it)" 200 "$HTTP_STATUS"

check_clean_shutdown

done_testing
