#!/bin/bash
# imc-attach, the agent, in clone mode (tests/integration/test_overlay.sh has the default overlay
# mode): mount mode with the cache's /data mounted read-only inside the rootfs
# (symlinks in the image cannot move it out), block mode (a device, no mount; detach by device or
# attach id), --size (clone and ext4 grown, too small refused), reconcile after kill -9 at every
# stop point of attach and detach (nothing leaked, live attaches untouched), orphan clones and loop
# devices, and 50 attaches of one cache at once, each isolated.
# Needs root and loop devices; the kill -9 tests need a build with -DIMC_TESTING (build/check).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/snapshot.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs mkfs.ext4 debugfs blockdev
need_programs imcd imcctl imc-attach

ERRS=$TEST_TMP/attach-stderr
mkdir -p "$ERRS"
N_ERR=0

# ia ARG...: imc-attach with the test's state dir; stderr is kept for the sanitizer check and
# also shown on the caller's stderr.
ia() {
	N_ERR=$((N_ERR + 1))
	"$IMC_BIN/imc-attach" --state-dir "$STATE" "$@" 2> >(tee "$ERRS/$N_ERR" >&2)
}

# --- a cache built by imcd, and snapshots made straight into the store ------------------------

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
images_push_or_bail "multilayer image builds and pushes" "$LAYOUT" multilayer:multi
STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"
OUT=$(imcctl create "$REGISTRY/imc/multi:v1" --name attach --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "cache of the multilayer image is Ready" "$(cat "$TEST_TMP/imcctl.err")"
ok "cache $ID is Ready (built by imcd)"

# The builder does not make /data yet: the data cache is an ext4 image made here.
SNAP=imc-00000000da7a7e57
mk_snapshot_tree "$TEST_TMP/tree" data
ln -s / "$TEST_TMP/tree/images/0/rootfs/escape"
ln -s "$TEST_TMP/outside" "$TEST_TMP/tree/images/0/rootfs/models"
mk_snapshot "$STATE" "$SNAP" "$TEST_TMP/tree" 64 || bail "a snapshot with /data is made in the store"
ok "snapshot $SNAP with /data is in the store"

CLONES=$STATE/pool/clones
# leaks: what any attach left behind (loop devices on clones, mounts under $TEST_TMP/m*, clone
# and state files); empty when there is nothing.
leaks() {
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v p="$CLONES/" 'index($2, p) == 1 { print "loop " $0 }'
	tmp_mounts | grep "^$TEST_TMP/m" | sed 's/^/mount /' || true
	find "$CLONES" "$STATE/attachments" -mindepth 1 -printf 'file %p\n' 2>/dev/null
}
# The autoclear loop device of a clone goes asynchronously after the unmount: allow it a moment.
no_leaks() {
	local i
	for i in $(seq 1 40); do
		[ -z "$(leaks)" ] && break
		sleep 0.05
	done
	check_eq "$1: nothing left (loop devices, mounts, clones, states)" "" "$(leaks)"
}
mkdir -p "$TEST_TMP/m"
# Deferred: whatever a failed test left, while the pool is still there.
# shellcheck disable=SC2317 # called through defer
reconcile_quiet() {
	if findmnt -rn --mountpoint "$STATE/pool" >/dev/null 2>&1; then
		ia reconcile >/dev/null 2>&1 || true
	fi
}
defer reconcile_quiet

# --- mount mode, /data --------------------------------------------------------------------------

M=$TEST_TMP/m/pod1
mkdir -p "$M"
defer imc_detach_quiet "$M"
check "attach the imcd-built cache at a directory" ia attach --mode clone "$ID" "$M"
check_eq "the rootfs shows the image's files" content-a "$(cat "$M/data/a.txt" 2>&1)"
check_eq "list shows it attached with its device" "attached $M true" \
	"$(ia list | jq -r '.[0] | "\(.status) \(.dir) \(.device | startswith("/dev/"))"')"
check_fails "a second attach at the same directory is refused" ia attach --mode clone "$ID" "$M"
mkdir -p "$TEST_TMP/m/nodata"
_capture ia attach --mode clone --data-dest /models "$ID" "$TEST_TMP/m/nodata"
check_match "a cache without /data: clear error" "cache $ID has no /data" "$out"
check "detach by directory" ia detach "$M"
no_leaks "after attach, detach and a refused data attach"

M=$TEST_TMP/m/pod2
mkdir -p "$M"
defer imc_detach_quiet "$M"
check "attach with --data-dest /opt/llm" ia attach --mode clone --data-dest /opt/llm "$SNAP" "$M"
check_eq "the data file is at DIR/opt/llm" weights-v1 "$(cat "$M/opt/llm/llm/model.bin" 2>&1)"
check_eq "the rootfs file is there too" hello-from-snapshot "$(cat "$M/etc/hello" 2>&1)"
check_fails "the data mount is read-only" touch "$M/opt/llm/new"
check "the rootfs is writable" touch "$M/etc/new"
check_match "data is mounted read-only, nosuid, nodev" '^ro,nosuid,nodev' \
	"$(findmnt -rn -o OPTIONS --mountpoint "$M/opt/llm")"
check "detach unmounts data, then the rootfs" ia detach "$M"
check_fails "no mount left at DIR/opt/llm" findmnt -rn --mountpoint "$M/opt/llm"
no_leaks "after a data attach"

M=$TEST_TMP/m/pod3
mkdir -p "$M"
defer imc_detach_quiet "$M"
check "attach with --data-dest through a symlink to / in the image" \
	ia attach --mode clone --data-dest /escape/w "$SNAP" "$M"
check_eq "it lands inside the rootfs" weights-v1 "$(cat "$M/w/llm/model.bin" 2>&1)"
check_fails "and not at the host's /w" test -e /w/llm
check "detach" ia detach "$M"
_capture ia attach --mode clone --data-dest /models/x "$SNAP" "$M"
check_match "a symlink to a host path: refused (resolved inside the rootfs, where it dangles)" \
	"data mount point /models" "$rc $out"
check_fails "nothing was made on the host" test -e "$TEST_TMP/outside"
_capture ia attach --mode clone --data-dest /a/../b "$SNAP" "$M"
check_match "'..' in the data path is refused" '"\.\." is not allowed' "$out"
_capture ia attach --mode clone --data-dest relative "$SNAP" "$M"
check_match "a relative data path is refused" "want an absolute path" "$out"
no_leaks "after refused data attaches"

# --- --size -------------------------------------------------------------------------------------

M=$TEST_TMP/m/sized
mkdir -p "$M"
defer imc_detach_quiet "$M"
check "attach with --size 256M" ia attach --mode clone --size 256M "$SNAP" "$M"
DEV=$(ia list | jq -r '.[0].device')
check_eq "the device is 256 MiB" 268435456 "$(blockdev --getsize64 "$DEV" 2>&1)"
check_eq "the ext4 fills it (block count)" 65536 \
	"$(dumpe2fs -h "$DEV" 2>/dev/null | sed -n 's/^Block count: *//p')"
check_eq "the grown rootfs still has the files" hello-from-snapshot "$(cat "$M/etc/hello" 2>&1)"
check "detach" ia detach "$M"
_capture ia attach --mode clone --size 16M "$SNAP" "$M"
check_match "a size below the snapshot's is refused" "smaller than cache $SNAP" "$out"
_capture ia attach --mode clone --size 100000001 "$SNAP" "$M"
check_match "a size that is not a multiple of 4096 is refused" "not a multiple of 4096" "$out"
_capture ia attach --mode clone --size 12Q "$SNAP" "$M"
check_eq "a malformed size is a usage error" 2 "$rc"
no_leaks "after --size"

# --- block mode ---------------------------------------------------------------------------------

_capture ia attach --block --size 128M "$SNAP"
read -r BDEV BAID <<<"$out"
if [ "$rc" = 0 ] && [ -b "$BDEV" ] && [[ "$BAID" =~ ^att-[0-9a-f]{16}$ ]]; then
	ok "attach --block prints a block device and an attach id ($BDEV $BAID)"
else
	not_ok "attach --block prints a block device and an attach id" "$rc $out"
fi
defer imc_detach_quiet "$BAID"
check_fails "block mode mounts nothing" findmnt -rn -S "$BDEV"
check_eq "the device holds the image's files" hello-from-snapshot \
	"$(debugfs -R 'cat /images/0/rootfs/etc/hello' "$BDEV" 2>/dev/null)"
check_eq "the device was grown to 128 MiB" 134217728 "$(blockdev --getsize64 "$BDEV" 2>&1)"
check_eq "list records it as a block attach" "true $BDEV" \
	"$(ia list | jq -r --arg id "$BAID" '.[] | select(.id == $id) | "\(.block) \(.device)"')"
check "detach by device path" ia detach "$BDEV"
no_leaks "after a block attach detached by device"
_capture ia attach --block "$SNAP"
read -r BDEV BAID <<<"$out"
check "detach by attach id" ia detach "$BAID"
check_fails "detaching it again: nothing attached" ia detach "$BAID"
_capture ia attach --block --data-dest /x "$SNAP"
check_match "block mode with a data mount is refused" "needs mount mode" "$out"
no_leaks "after block attaches"

# --- kill -9 at every stop point, then reconcile or detach ------------------------------------

# stopped_at POINT CMD...: run CMD with IMC_ATTACH_STOP_AT=POINT in the background and wait until
# it stops itself there (SIGSTOP); sets STOPPED_PID.  Fails if it exits instead.
stopped_at() {
	local point=$1 i st
	shift
	N_ERR=$((N_ERR + 1))
	IMC_ATTACH_STOP_AT=$point "$IMC_BIN/imc-attach" --state-dir "$STATE" "$@" \
		>/dev/null 2>"$ERRS/$N_ERR" &
	STOPPED_PID=$!
	defer kill_if_attach "$STOPPED_PID"
	for i in $(seq 1 200); do
		st=$(ps -o stat= -p "$STOPPED_PID" 2>/dev/null || true)
		case "$st" in
		T*) return 0 ;;
		"" | Z*) return 1 ;;
		esac
		sleep 0.05
	done
	return 1
}
# kill_if_attach PID: deferred; kill PID only while it is still our imc-attach (not a reused pid).
# shellcheck disable=SC2317 # called through defer
kill_if_attach() {
	if tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "^$IMC_BIN/imc-attach --state-dir $STATE "; then
		kill -9 "$1"
	fi
}
# detach_loop_if_ours DEV: deferred; detach DEV only while it still serves one of our clones.
# shellcheck disable=SC2317 # called through defer
detach_loop_if_ours() {
	case "$(losetup -n -O BACK-FILE "$1" 2>/dev/null)" in
	"$CLONES"/*) losetup -d "$1" ;;
	esac
}
# stop_quiet PID: deferred stop_pid that does not report the killed process's status.
# shellcheck disable=SC2317 # called through defer
stop_quiet() {
	stop_pid "$1" 5 || true
}
kill9() {
	kill -9 "$1" 2>/dev/null
	wait "$1" 2>/dev/null || true
}

# Does this build have the stop points (-DIMC_TESTING)?
M=$TEST_TMP/m/probe
mkdir -p "$M"
if stopped_at after-clone attach --mode clone "$SNAP" "$M"; then
	kill9 "$STOPPED_PID"
	ia reconcile >/dev/null
	HAVE_STOP=1
else
	ia detach "$M" >/dev/null 2>&1 || true
	HAVE_STOP=
fi

crash_case() { # MODE POINT: attach (or detach) stopped at POINT, SIGKILLed, then reconcile
	local mode=$1 point=$2 dir=$TEST_TMP/m/crash-$1-$2 what out
	mkdir -p "$dir"
	case "$mode" in
	mount) stopped_at "$point" attach --mode clone --data-dest /opt/llm "$SNAP" "$dir" ;;
	block) stopped_at "$point" attach --block --size 128M "$SNAP" ;;
	detach)
		ia attach --mode clone --data-dest /opt/llm "$SNAP" "$dir" >/dev/null
		stopped_at "$point" detach "$dir"
		;;
	esac || {
		not_ok "$mode: the process stops at $point"
		return 0
	}
	what="kill -9 at $point ($mode)"
	# A stopped attach holds its state: reconcile must leave it alone.
	out=$(ia reconcile 2>&1)
	check_eq "$what: reconcile leaves the attach in progress alone" "nothing to repair" "$out"
	kill9 "$STOPPED_PID"
	out=$(ia reconcile 2>&1)
	check_match "$what: reconcile reports what it repaired" "repaired: .*att-" "$out"
	no_leaks "$what, reconcile"
	check_eq "$what: list is empty" 0 "$(ia list | jq length)"
}

if [ -n "$HAVE_STOP" ]; then
	ok "the build has the test-only stop points"
	for p in after-clone after-loop after-mount after-data; do
		crash_case mount "$p"
	done
	for p in after-clone after-loop; do
		crash_case block "$p"
	done
	crash_case detach detach-after-umount

	# detach (not reconcile) finishes a crashed attach too, and the dir can be attached again.
	M=$TEST_TMP/m/crash-redo
	mkdir -p "$M"
	if stopped_at after-mount attach --mode clone "$SNAP" "$M"; then
		kill9 "$STOPPED_PID"
		check_fails "after kill -9 at after-mount, a new attach at the dir is refused" \
			ia attach --mode clone "$SNAP" "$M"
		check "detach finishes the crashed attach" ia detach "$M"
		check "the dir can be attached again" ia attach --mode clone "$SNAP" "$M"
		check "and detached" ia detach "$M"
		no_leaks "after a crashed attach undone by detach"
	else
		not_ok "attach stops at after-mount"
	fi
elif [ "${CI:-}" = true ]; then
	not_ok "the build has the test-only stop points" "IMC_BIN=$IMC_BIN was built without -DIMC_TESTING"
else
	skip "kill -9 at every stop point" "$IMC_BIN/imc-attach was built without -DIMC_TESTING"
fi

# --- reconcile: vanished mounts, orphan clones and loop devices, live attaches ------------------

M=$TEST_TMP/m/live
mkdir -p "$M" "$TEST_TMP/m/vanish"
defer imc_detach_quiet "$M"
defer imc_detach_quiet "$TEST_TMP/m/vanish"
ia attach --mode clone --data-dest /opt/llm "$SNAP" "$M" >/dev/null
ia attach --mode clone --data-dest /opt/llm "$SNAP" "$TEST_TMP/m/vanish" >/dev/null
umount "$TEST_TMP/m/vanish/opt/llm" "$TEST_TMP/m/vanish"
cp --reflink=always "$STATE/pool/snapshots/$SNAP.img" "$CLONES/att-00000000000000aa.img"
cp --reflink=always "$STATE/pool/snapshots/$SNAP.img" "$CLONES/att-00000000000000bb.img"
LEAKED=$(losetup -f --show "$CLONES/att-00000000000000bb.img")
defer detach_loop_if_ours "$LEAKED"
out=$(ia reconcile 2>&1)
check_match "reconcile cleans an attach whose mount vanished" \
	"cleaned attach att-[0-9a-f]+ \(its mount or device vanished, at $TEST_TMP/m/vanish\)" "$out"
check_match "reconcile removes a clone no attach owns" "removed orphan clone att-00000000000000aa" "$out"
check_match "reconcile releases a loop device on a clone no attach owns" \
	"released $LEAKED \(clone att-00000000000000bb\)" "$out"
check_eq "the live attach is untouched" "weights-v1 1" \
	"$(cat "$M/opt/llm/llm/model.bin") $(ia list | jq length)"
check_eq "a second reconcile has nothing to repair" "nothing to repair" "$(ia reconcile 2>&1)"
check "detach the live attach" ia detach "$M"
no_leaks "after reconcile"

# An attach made in another mount namespace (as crun's is) is invisible here but alive: reconcile
# must keep it while the namespace holds the mount, and clean it once the namespace is gone.
M=$TEST_TMP/m/ns
mkdir -p "$M"
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m --propagation private sh -c \
	'"$1" --state-dir "$2" attach --mode clone "$3" "$4" && echo attached >"$5" && exec sleep 120' \
	sh "$IMC_BIN/imc-attach" "$STATE" "$SNAP" "$M" "$TEST_TMP/ns.ready" 2>"$ERRS/ns" &
NS_PID=$!
defer stop_quiet "$NS_PID"
if wait_for_file "$TEST_TMP/ns.ready" 30 "$NS_PID"; then
	check_fails "the other namespace's mount is not visible here" findmnt -rn --mountpoint "$M"
	check_eq "reconcile keeps the attach of the other namespace" "nothing to repair 1" \
		"$(ia reconcile 2>&1) $(ia list | jq length)"
	stop_pid "$NS_PID" 5 || true
	out=""
	for i in $(seq 1 40); do # the loop device goes asynchronously after the namespace
		out=$(ia reconcile 2>&1)
		[ "$out" = "nothing to repair" ] || break
		sleep 0.05
	done
	check_match "once the namespace is gone, reconcile cleans it" \
		"cleaned attach att-[0-9a-f]+ \(its mount or device vanished, at $M\)" "$out"
	no_leaks "after the other namespace's attach"
else
	not_ok "attach in another mount namespace" "$(cat "$ERRS/ns")"
fi

# --- 50 attaches of one cache at once ----------------------------------------------------------

# all_at_once VERB [ARG...]: imc-attach VERB ARG... $TEST_TMP/m/cI for I in 1..N, all at once,
# each one's stderr appended to $ERRS/cI; sets failed to how many of them failed.
all_at_once() {
	local i pids=()
	for i in $(seq 1 "$N"); do
		"$IMC_BIN/imc-attach" --state-dir "$STATE" "$@" "$TEST_TMP/m/c$i" 2>>"$ERRS/c$i" &
		pids+=($!)
	done
	failed=0
	for i in $(seq 1 "$N"); do
		wait "${pids[i - 1]}" || failed=$((failed + 1))
	done
}

N=50
for i in $(seq 1 $N); do
	mkdir -p "$TEST_TMP/m/c$i"
	defer imc_detach_quiet "$TEST_TMP/m/c$i"
done
# Meanwhile reconcile runs again and again: it must take none of the attaches in progress.
(while [ ! -e "$TEST_TMP/stop-reconcile" ]; do
	"$IMC_BIN/imc-attach" --state-dir "$STATE" reconcile
done >"$TEST_TMP/reconcile.out" 2>"$ERRS/reconcile-loop") &
RECONCILE_PID=$!
defer stop_quiet "$RECONCILE_PID"
T0=$(now_ms)
all_at_once attach --mode clone "$ID"
note "$N concurrent attaches took $(($(now_ms) - T0)) ms"
touch "$TEST_TMP/stop-reconcile"
wait "$RECONCILE_PID" || true
check_eq "$N attaches at once all succeed" 0 "$failed"
check_eq "reconcile running meanwhile repaired nothing" "nothing to repair" \
	"$(sort -u "$TEST_TMP/reconcile.out")"
[ "$failed" = 0 ] || note "$(cat "$ERRS"/c* | sort | uniq -c | head)"
check_eq "$N distinct loop devices" $N "$(ia list | jq '[.[].device] | unique | length')"
for i in $(seq 1 $N); do
	echo "pod-$i" >"$TEST_TMP/m/c$i/mine" 2>/dev/null || true
done
bad=0
for i in $(seq 1 $N); do
	[ "$(cat "$TEST_TMP/m/c$i/mine" 2>/dev/null)" = "pod-$i" ] || bad=$((bad + 1))
	[ "$(cat "$TEST_TMP/m/c$i/data/a.txt" 2>/dev/null)" = content-a ] || bad=$((bad + 1))
done
check_eq "each attach is isolated (its own write, the image's files)" 0 "$bad"
all_at_once detach
check_eq "$N detaches at once all succeed" 0 "$failed"
no_leaks "after $N concurrent attaches and detaches"

# --- flags --------------------------------------------------------------------------------------

_capture "$IMC_BIN/imc-attach" --state-dir "$STATE" --driver-opt novalue list
check_eq "--driver-opt without = is a usage error" 2 "$rc"
_capture "$IMC_BIN/imc-attach" --state-dir "$STATE" --driver-opt foo=bar list
check_match "--driver-opt reaches the driver (reflink refuses any)" 'driver option "foo=bar"' "$out"
_capture "$IMC_BIN/imc-attach" --state-dir "$STATE" --driver nosuch list
check_match "--driver reaches the store (an unknown driver is named)" "nosuch" "$out"

if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$ERRS"/*; then
	not_ok "imc-attach: no sanitizer report" \
		"$(grep -E -A20 'Sanitizer|runtime error:' "$ERRS"/* | head -40)"
else
	ok "imc-attach: no sanitizer report"
fi

rm -f "$STATE/pool/snapshots/$SNAP.img"
http DELETE "$IMCD_URL/v1/imagecaches/$ID"
check_eq "DELETE $ID answers 200 (nothing holds it)" 200 "$HTTP_STATUS"
check_clean_shutdown

done_testing
