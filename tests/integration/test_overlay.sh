#!/bin/bash
# imc-attach's default overlay mode: one read-only lower per cache per host shared by every pod
# of that cache, an overlayfs per pod.  Isolation both ways (writes, deletes, renames, chmods in
# one pod are seen neither by another pod nor by the snapshot), /data read-only from the lower,
# --size (ENOSPC inside, the host unaffected), clone mode and block mode beside it, a state from
# before modes existed, many pods of one and of several caches attached and detached at once, the
# grace and the LRU limit of unused lowers, kill -9 at every step of attach, detach and of the
# lower's mount and unmount followed by reconcile (nothing left: loop devices, mounts, pod
# directories, references), and the page cache: N pods reading one file cache it once in overlay
# mode, N times in clone mode (fincore, which counts the pages of each file).
# Needs root, loop devices and overlayfs; the kill -9 tests need a -DIMC_TESTING build.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/snapshot.sh"

need_root
need_loop
need_tool jq losetup findmnt mkfs.xfs mkfs.ext4 debugfs fincore
need_programs imc-attach
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip_all "needs overlayfs"

ERRS=$TEST_TMP/errs
mkdir -p "$ERRS" "$TEST_TMP/m"
N_ERR=0
STATE=$TEST_TMP/state
# ia ARG...: imc-attach with the test's state dir and no grace for unused lowers (the grace has
# its own test); stderr kept for the sanitizer check.
ia() {
	N_ERR=$((N_ERR + 1))
	"$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 0 "$@" 2> >(tee "$ERRS/$N_ERR" >&2)
}
# shellcheck disable=SC2317 # called through defer
cleanup() {
	local m
	if findmnt -rn --mountpoint "$STATE/pool" >/dev/null 2>&1; then
		for m in $(tmp_mounts | grep "^$TEST_TMP/m/" | sort -r); do
			ia detach "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
		done
		ia reconcile >/dev/null 2>&1 || true
		"$IMC_BIN/imc-attach" --state-dir "$STATE" teardown >/dev/null 2>&1 || true
	fi
}
defer cleanup

# Three caches made straight into the store: A with /data and a 16 MiB file, B and C small.
mk_snapshot_tree "$TEST_TMP/treeA" data
head -c 16M /dev/urandom >"$TEST_TMP/treeA/images/0/rootfs/big.bin"
mkdir -p "$TEST_TMP/treeA/images/0/rootfs/srv/dir"
printf 'in-dir\n' >"$TEST_TMP/treeA/images/0/rootfs/srv/dir/f"
A=imc-00000000000000aa
B=imc-00000000000000bb
C=imc-00000000000000cc
mk_snapshot "$STATE" "$A" "$TEST_TMP/treeA" 96 || bail "snapshot $A is made"
mk_snapshot_tree "$TEST_TMP/treeB"
mk_snapshot "$STATE" "$B" "$TEST_TMP/treeB" 64 || bail "snapshot $B is made"
mk_snapshot "$STATE" "$C" "$TEST_TMP/treeB" 64 || bail "snapshot $C is made"
ok "snapshots $A, $B, $C are in the store"
SNAPS=$STATE/pool/snapshots

# leaks: loop devices on snapshots or clones, mounts under the test's dirs and the lowers, pod
# directories, lower records, states, clones; empty when nothing is left.
leaks() {
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null |
		awk -v s="$SNAPS/" -v c="$STATE/pool/clones/" \
			'index($2, s) == 1 || index($2, c) == 1 { print "loop " $0 }'
	tmp_mounts | grep -E "^($TEST_TMP/m/|$STATE/lowers)" | sed 's/^/mount /' || true
	find "$STATE/overlays" "$STATE/pool/scratch/overlays" "$STATE/lowers" "$STATE/attachments" \
		"$STATE/pool/clones" -mindepth 1 -printf 'file %p\n' 2>/dev/null || true
}
no_leaks() {
	local i
	for i in $(seq 1 40); do
		[ -z "$(leaks)" ] && break
		sleep 0.05
	done
	check_eq "$1: nothing left (loop devices, mounts, pod dirs, lowers, states)" "" "$(leaks)"
}
lower_refs() { # ID: the references on ID's lower, "-" when it has no record
	ia lowers | jq -r --arg id "$1" '[.[] | select(.cacheId == $id)] | if length == 0 then "-"
		else "\(.[0].refs) \(.[0].mounted)" end'
}
pod() {
	mkdir -p "$TEST_TMP/m/$1"
	printf '%s' "$TEST_TMP/m/$1"
}

# --- overlay is the default; isolation both ways -----------------------------------------------

P1=$(pod p1)
P2=$(pod p2)
check "attach $A at p1 (default mode)" ia attach "$A" "$P1"
check "attach $A at p2" ia attach --data-dest /models "$A" "$P2"
check_eq "list shows both in overlay mode" "overlay overlay" \
	"$(ia list | jq -r '[.[].mode] | join(" ")')"
check_eq "p1 is an overlayfs" overlay "$(findmnt -rn -o FSTYPE --mountpoint "$P1")"
check_eq "one lower for $A, mounted, two references" "2 true" "$(lower_refs "$A")"
check_eq "the lower is one read-only ext4 mount" "ext4 ro" \
	"$(findmnt -rn -o FSTYPE,OPTIONS --mountpoint "$STATE/lowers/$A" | awk '{split($2,o,","); print $1, o[1]}')"
LDEV=$(findmnt -rn -o SOURCE --mountpoint "$STATE/lowers/$A")
check_eq "the lower's loop device is read-only" 1 "$(blockdev --getro "$LDEV")"
check_eq "with direct I/O" 1 "$(losetup -n -O DIO "$LDEV" | tr -d ' ')"
check_eq "p1 sees the image" hello-from-snapshot "$(cat "$P1/etc/hello")"
AID1=$(ia list | jq -r --arg d "$P1" '.[] | select(.dir == $d) | .id')
check "p1's upper is on the store's filesystem (the pool), not the state dir's" \
	test -d "$STATE/pool/scratch/overlays/$AID1/upper" -a ! -e "$STATE/overlays/$AID1"
check_eq "the pod's writes land in the pool's XFS" xfs \
	"$(stat -f -c %T "$STATE/pool/scratch/overlays/$AID1/upper")"
check_eq "p1's reference on the lower is its state file, linked (no inode of its own)" \
	"$(stat -c '%i 2' "$STATE/attachments/$AID1.json")" "$(stat -c '%i %h' "$STATE/lowers/$A.refs/$AID1")"
# Unique mount ids (Linux 6.8): the state records the overlay's, and detach finds it by it.
if printf '%s\n' 6.8 "$(uname -r | cut -d. -f1,2)" | sort -CV; then WANT_ID=yes; else WANT_ID=no; fi
check_eq "the state records the overlay's unique mount id where the kernel has them" "$WANT_ID" \
	"$(jq -r 'if (.mountId // 0) > 0 then "yes" else "no" end' "$STATE/attachments/$AID1.json")"

printf 'p1-was-here\n' >"$P1/etc/hello"
printf 'new\n' >"$P1/new-in-p1"
rm "$P1/bin/busybox.keep" 2>/dev/null || true
rm -f "$P1/srv/dir/f"
mv "$P1/srv/dir" "$P1/srv/moved"
chmod 0600 "$P1/etc/hello"
check_eq "p1 sees its own write" p1-was-here "$(cat "$P1/etc/hello")"
check_eq "p2 does not see p1's write" hello-from-snapshot "$(cat "$P2/etc/hello")"
check "p2 does not see p1's new file" test ! -e "$P2/new-in-p1"
check_eq "p2 still has the file p1 deleted" in-dir "$(cat "$P2/srv/dir/f")"
check "p1 renamed a lower directory (redirect_dir)" test -d "$P1/srv/moved"
check "p2 still has it under its name" test -d "$P2/srv/dir"
check_eq "p2 keeps the mode p1 changed" 644 "$(stat -c %a "$P2/etc/hello")"
check_eq "the lower is unchanged" hello-from-snapshot "$(cat "$STATE/lowers/$A/images/0/rootfs/etc/hello")"
printf 'p2-was-here\n' >"$P2/etc/hello"
check_eq "p1 does not see p2's write" p1-was-here "$(cat "$P1/etc/hello")"
check_fails "the lower cannot be written" sh -c "echo x >'$STATE/lowers/$A/images/0/rootfs/etc/hello'"
check_eq "p2's /models is the cache's /data" weights-v1 "$(cat "$P2/models/llm/model.bin")"
check_fails "p2's /models is read-only" sh -c "echo x >'$P2/models/llm/model.bin'"
check "p1 has no /models" test ! -e "$P1/models"
check "detach p1" ia detach "$P1"
check_eq "one reference left" "1 true" "$(lower_refs "$A")"
check "detach p2" ia detach "$P2"
no_leaks "after two overlay attaches detached (grace 0)"
check_eq "the snapshot is unchanged" hello-from-snapshot \
	"$(debugfs -R 'cat /images/0/rootfs/etc/hello' "$SNAPS/$A.img" 2>/dev/null)"
check "a new pod at p1 starts clean" ia attach "$A" "$P1"
check_eq "it sees the image, not the old pod's write" hello-from-snapshot "$(cat "$P1/etc/hello")"
check "and detaches" ia detach "$P1"
# Something mounted on the pod's overlay besides its data mount: detach takes it off too.
check "a pod at p1 again" ia attach --data-dest /models "$A" "$P1"
mkdir -p "$P1/extra"
mount -t tmpfs extra "$P1/extra"
check "detach with a foreign mount on the pod" ia detach "$P1"
no_leaks "after a pod with a mount on it"

# --- bad input ---------------------------------------------------------------------------------

check_fails_with "--mode other is refused" 'want overlay or clone' ia attach --mode other "$A" "$P1"
check_fails_with "--block --mode overlay is refused" 'block mode always clones' \
	ia attach --block --mode overlay "$A"
check_fails_with "an unknown cache is named" "cache imc-00000000000000ee: not in the local store" \
	ia attach imc-00000000000000ee "$P1"
check_fails_with "an image the cache lacks is named" "has no image 7" ia attach --image 7 "$A" "$P1"
check_fails_with "a cache without /data refuses --data-dest" "has no /data" \
	ia attach --data-dest /d "$B" "$P1"
check_fails_with "--lower-grace -1 is refused" "want 0-" ia --lower-grace -1 list
no_leaks "after refused attaches"

# --- --size: ENOSPC inside, the host unaffected ------------------------------------------------

check "attach with --size 8M" ia attach --size 8M "$A" "$P1"
check "a second pod without a size" ia attach "$A" "$P2"
_capture dd if=/dev/zero of="$P1/fill" bs=1M count=16 conv=fsync
check_match "writing 16 MiB into the 8 MiB pod fails with ENOSPC" "No space left on device" "$out"
check "the other pod still writes 16 MiB" dd if=/dev/zero of="$P2/fill" bs=1M count=16 status=none
check "the host's state dir still takes writes" dd if=/dev/zero of="$STATE/probe" bs=1M count=1 status=none
rm -f "$STATE/probe"
check "detach both" sh -c "'$IMC_BIN/imc-attach' --state-dir '$STATE' --lower-grace 0 detach '$P1' &&
	'$IMC_BIN/imc-attach' --state-dir '$STATE' --lower-grace 0 detach '$P2'"
no_leaks "after --size pods"

# --- clone mode, block mode, a state from before modes -----------------------------------------

check "attach --mode clone" ia attach --mode clone "$A" "$P1"
check_eq "list shows clone" clone "$(ia list | jq -r '.[0].mode')"
check_eq "no lower for a clone" "-" "$(lower_refs "$A")"
check "the clone is its own ext4" test "$(findmnt -rn -o FSTYPE --mountpoint "$P1")" = ext4
check "an overlay pod beside it" ia attach "$A" "$P2"
check_eq "list: one of each" "clone overlay" "$(ia list | jq -r '[.[].mode] | sort | join(" ")')"
check "detach the overlay pod" ia detach "$P2"
check "detach the clone" ia detach "$P1"
_capture ia attach --block "$A"
BID=${out##* }
check_eq "block mode is a clone" clone "$(ia list | jq -r '.[0].mode')"
check "detach the block attach" ia detach "$BID"
# A state written before modes existed has no "mode": it is a clone and still detaches.
check "attach --mode clone (to age its state)" ia attach --mode clone "$A" "$P1"
SF=$(ls "$STATE"/attachments/att-*.json)
jq -c 'del(.mode)' "$SF" >"$SF.old" && cat "$SF.old" >"$SF" && rm -f "$SF.old"
check_eq "an old state lists as clone" clone "$(ia list | jq -r '.[0].mode')"
check "and detaches" ia detach "$P1"
no_leaks "after clone, block and old-state attaches"
# An overlay pod attached before pods moved to the pool: its upper and work in <state>/overlays
# (made here as that version made them), with a plain file as its reference.
check "a pod that keeps the lower mounted" ia attach "$A" "$P2"
OLD=att-0123456789abcdef
mkdir -p "$STATE/overlays/$OLD/upper" "$STATE/overlays/$OLD/work"
mount -t overlay "imc-$OLD" -o "lowerdir=$STATE/lowers/$A/images/0/rootfs,upperdir=$STATE/overlays/$OLD/upper,workdir=$STATE/overlays/$OLD/work,index=off,volatile" "$P1"
jq -n --arg id "$OLD" --arg c "$A" --arg d "$P1" \
	'{id: $id, cacheId: $c, image: 0, block: false, status: "attached", driver: "reflink", createdAt: 1, pid: 1, dir: $d, mode: "overlay"}' \
	>"$STATE/attachments/$OLD.json"
: >"$STATE/lowers/$A.refs/$OLD"
check "the old pod detaches" ia detach "$OLD"
check "its pod directory in <state>/overlays is gone" test ! -e "$STATE/overlays/$OLD"
check "detach the other pod" ia detach "$P2"
mkdir -p "$STATE/overlays/$OLD/upper" "$STATE/overlays/$OLD/work/work"
_capture ia reconcile
check_match "reconcile removes an old pod directory without a state" \
	"removed pod directory $STATE/overlays/$OLD" "$out"
no_leaks "after pods from before"

# --- many pods of one and of several caches at once --------------------------------------------

# at_once VERB N CACHE [ARGS]: imc-attach VERB for pods CACHE-1..N all at once; failed = count.
at_once() {
	local verb=$1 n=$2 cache=$3 i pids=()
	for i in $(seq 1 "$n"); do
		mkdir -p "$TEST_TMP/m/$cache-$i"
		if [ "$verb" = attach ]; then
			"$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 0 attach "$cache" \
				"$TEST_TMP/m/$cache-$i" 2>>"$ERRS/conc" &
		else
			"$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 0 detach \
				"$TEST_TMP/m/$cache-$i" 2>>"$ERRS/conc" &
		fi
		pids+=($!)
	done
	failed=0
	for i in "${pids[@]}"; do
		wait "$i" || failed=$((failed + 1))
	done
}
N=30
at_once attach $N "$A"
check_eq "$N attaches of $A at once all succeed" 0 "$failed"
check_eq "one lower with $N references" "$N true" "$(lower_refs "$A")"
check_eq "one lower mount for $A" 1 "$(findmnt -rn -o TARGET | grep -c "^$STATE/lowers/$A\$")"
bad=0
for i in $(seq 1 $N); do echo "pod-$i" >"$TEST_TMP/m/$A-$i/mine"; done
for i in $(seq 1 $N); do
	[ "$(cat "$TEST_TMP/m/$A-$i/mine")" = "pod-$i" ] || bad=$((bad + 1))
	[ "$(cat "$TEST_TMP/m/$A-$i/etc/hello")" = hello-from-snapshot ] || bad=$((bad + 1))
done
check_eq "each pod is isolated (its own write, the image's files)" 0 "$bad"
at_once detach $N "$A"
check_eq "$N detaches at once all succeed" 0 "$failed"
no_leaks "after $N pods of one cache"

(at_once attach 10 "$A" && [ "$failed" = 0 ]) &
p1=$!
(at_once attach 10 "$B" && [ "$failed" = 0 ]) &
p2=$!
(at_once attach 10 "$C" && [ "$failed" = 0 ]) &
p3=$!
failed=0
for p in $p1 $p2 $p3; do wait "$p" || failed=$((failed + 1)); done
check_eq "10 pods each of 3 caches at once all attach" 0 "$failed"
check_eq "three lowers, 10 references each" "10 10 10" \
	"$(ia lowers | jq -r '[.[] | .refs] | join(" ")')"
(at_once detach 10 "$A" && [ "$failed" = 0 ]) &
p1=$!
(at_once detach 10 "$B" && [ "$failed" = 0 ]) &
p2=$!
failed=0
for p in $p1 $p2; do wait "$p" || failed=$((failed + 1)); done
check_eq "detaches of 2 caches at once all succeed" 0 "$failed"
check_eq "only $C's lower is left" "$C" "$(ia lowers | jq -r '[.[].cacheId] | join(" ")')"
at_once detach 10 "$C"
check_eq "and $C's pods detach" 0 "$failed"
no_leaks "after pods of several caches"

# --- grace and LRU -----------------------------------------------------------------------------

ig() { # imc-attach with a long grace
	"$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 3600 --lower-max "${MAX:-64}" "$@"
}
check "attach $A with a long grace" ig attach "$A" "$P1"
check "detach it" ig detach "$P1"
check_eq "the unused lower stays mounted (warm)" "0 true" "$(lower_refs "$A")"
check "a new pod of $A" ig attach "$A" "$P1"
check_eq "reuses the warm lower" "1 true" "$(lower_refs "$A")"
check "detach it" ig detach "$P1"
_capture ig reconcile
check_eq "reconcile within the grace keeps the warm lower" "nothing to repair" "$out"
_capture ia reconcile
check_match "reconcile past the grace releases it" "released the lower of cache $A \(unused past its grace\)" "$out"
no_leaks "after the grace"
MAX=2
ig attach "$A" "$(pod lru-A)" >/dev/null
ig attach "$B" "$(pod lru-B)" >/dev/null
ig detach "$TEST_TMP/m/lru-A" >/dev/null
ig detach "$TEST_TMP/m/lru-B" >/dev/null
check_eq "two unused lowers stay within --lower-max 2" "$A $B" \
	"$(ia lowers | jq -r '[.[].cacheId] | sort | join(" ")')"
check "a third cache's pod" ig attach "$C" "$(pod lru-C)"
check_eq "the least recently used unused lower ($A) went" "$B $C" \
	"$(ia lowers | jq -r '[.[].cacheId] | sort | join(" ")')"
check "detach it" ig detach "$TEST_TMP/m/lru-C"
MAX=64
check "teardown releases the warm lowers and the pool" "$IMC_BIN/imc-attach" --state-dir "$STATE" teardown
check_eq "no lower is left" "" "$(findmnt -rn -o TARGET | grep "^$STATE/lowers" || true)"
ia list >/dev/null # the pool again

# --- kill -9 at every step, then reconcile ------------------------------------------------------

stopped_at() { # POINT CMD...: run CMD stopped at POINT (SIGSTOP); sets STOPPED_PID
	local point=$1 i st
	shift
	IMC_ATTACH_STOP_AT=$point "$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 0 "$@" \
		>/dev/null 2>>"$ERRS/stopped" &
	STOPPED_PID=$!
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
crash_case() { # attach|detach POINT
	local verb=$1 point=$2 dir what out
	dir=$(pod "crash-$verb-$point")
	if [ "$verb" = detach ]; then
		ia attach --data-dest /models "$A" "$dir" >/dev/null
		stopped_at "$point" detach "$dir"
	else
		stopped_at "$point" attach --data-dest /models "$A" "$dir"
	fi || {
		not_ok "$verb stops at $point"
		return 0
	}
	what="kill -9 at $point ($verb)"
	out=$(ia reconcile 2>&1)
	check_eq "$what: reconcile leaves the attach in progress alone" "nothing to repair" "$out"
	kill -9 "$STOPPED_PID"
	wait "$STOPPED_PID" 2>/dev/null || true
	out=$(ia reconcile 2>&1)
	check_match "$what: reconcile repairs it" "repaired: " "$out"
	no_leaks "$what, reconcile"
}
if stopped_at after-lower attach "$A" "$(pod probe)"; then
	kill -9 "$STOPPED_PID"
	wait "$STOPPED_PID" 2>/dev/null || true
	ia reconcile >/dev/null
	for p in lower-after-loop lower-after-mount after-lower after-upper after-mount after-data; do
		crash_case attach "$p"
	done
	crash_case detach detach-after-umount
	# The lower's unmount: the last detach releases it (grace 0).
	for p in lower-before-umount lower-after-umount; do
		crash_case detach "$p"
	done
	# detach (not reconcile) finishes a crashed attach.
	D=$(pod crash-redo)
	if stopped_at after-mount attach "$A" "$D"; then
		kill -9 "$STOPPED_PID"
		wait "$STOPPED_PID" 2>/dev/null || true
		check "detach finishes the crashed overlay attach" ia detach "$D"
		no_leaks "after a crashed attach undone by detach"
	else
		not_ok "attach stops at after-mount"
	fi
elif [ "${CI:-}" = true ]; then
	not_ok "the build has the test-only stop points" "IMC_BIN=$IMC_BIN was built without -DIMC_TESTING"
else
	skip "kill -9 at every stop point" "$IMC_BIN/imc-attach was built without -DIMC_TESTING"
fi

# A pod's mount that vanished (unmounted behind our back) is cleaned; a live one is kept.
check "attach a live pod" ia attach "$A" "$P1"
check "attach a pod to lose" ia attach "$A" "$P2"
umount "$P2"
_capture ia reconcile
check_match "reconcile cleans the pod whose overlay vanished" "cleaned attach att-[0-9a-f]+ \(its mount or device vanished, at $P2\)" "$out"
check_eq "the live pod is kept" "1 true" "$(lower_refs "$A")"
check "detach the live pod" ia detach "$P1"
no_leaks "after a vanished overlay"

# A pod attached in a private mount namespace (as a runtime may) is alive: reconcile from the host's
# namespace keeps it, and undoes it once that namespace is gone.
rm -f "$TEST_TMP/ns-ready" "$TEST_TMP/ns-stop"
unshare -m --propagation private sh -c "'$IMC_BIN/imc-attach' --state-dir '$STATE' attach '$A' '$P1' &&
	touch '$TEST_TMP/ns-ready' && while [ ! -e '$TEST_TMP/ns-stop' ]; do sleep 0.05; done" &
NS_PID=$!
for _ in $(seq 1 200); do [ -e "$TEST_TMP/ns-ready" ] && break; sleep 0.05; done
check "a pod is attached in a private mount namespace" test -e "$TEST_TMP/ns-ready"
check_eq "it is not mounted in ours" "" "$(findmnt -rn --mountpoint "$P1" || true)"
_capture ia reconcile
check_eq "reconcile from our namespace keeps it" "nothing to repair" "$out"
touch "$TEST_TMP/ns-stop"
wait "$NS_PID" || true
_capture ia reconcile
check_match "once its namespace is gone, reconcile undoes it" "cleaned attach att-[0-9a-f]+ \(its mount or device vanished, at $P1\)" "$out"
no_leaks "after a pod of a private mount namespace"

# --- the cache deleted while pods use it ---------------------------------------------------------

# imcd's delete waits for the lower's pods or detaches them (test_lifecycle.sh); a snapshot removed
# behind the agent's back (here the snapshot of a copy of A) leaves its pods running on the lower.
D=imc-00000000000000dd
cp --reflink=always "$SNAPS/$A.img" "$SNAPS/$D.img"
check "attach a pod of $D (long grace)" ig attach "$D" "$P1"
rm -f "$SNAPS/$D.img"
check_eq "the pod still reads its files" hello-from-snapshot "$(cat "$P1/etc/hello")"
check_fails_with "a new attach of the deleted cache is refused" "cache $D: not in the local store" \
	ig attach "$D" "$P2"
check_eq "the refused attach took no reference" "1 true" "$(lower_refs "$D")"
check "detach the pod" ig detach "$P1"
check_eq "the deleted cache's lower goes with its last pod, grace or not" "-" "$(lower_refs "$D")"
no_leaks "after a cache deleted under its pods"

# --- page cache: N pods read one file ------------------------------------------------------------

# fincore's RES column in bytes of the file as seen at PATH (its real inode's pages).
cached() { fincore -b -n -o RES "$1" | tr -d ' '; }
NP=4
SIZE=$(stat -c %s "$TEST_TMP/treeA/images/0/rootfs/big.bin")
for i in $(seq 1 $NP); do ia attach "$A" "$(pod pc-$i)" >/dev/null; done
LFILE=$STATE/lowers/$A/images/0/rootfs/big.bin
check_eq "a fresh lower has none of the file cached" 0 "$(cached "$LFILE")"
cat "$TEST_TMP/m/pc-1/big.bin" >/dev/null
check_eq "pod 1's read caches the file once, in the lower" "$SIZE" "$(cached "$LFILE")"
for i in $(seq 2 $NP); do cat "$TEST_TMP/m/pc-$i/big.bin" >/dev/null; done
check_eq "pods 2-$NP read the same pages: still one file's worth" "$SIZE" "$(cached "$LFILE")"
for i in $(seq 1 $NP); do ia detach "$TEST_TMP/m/pc-$i" >/dev/null; done
total=0
for i in $(seq 1 $NP); do
	ia attach --mode clone "$A" "$(pod pcc-$i)" >/dev/null
	cat "$TEST_TMP/m/pcc-$i/big.bin" >/dev/null
	total=$((total + $(cached "$TEST_TMP/m/pcc-$i/big.bin")))
done
check_eq "clone mode: $NP pods cache it $NP times" $((NP * SIZE)) "$total"
for i in $(seq 1 $NP); do ia detach "$TEST_TMP/m/pcc-$i" >/dev/null; done
no_leaks "after the page-cache pods"

if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$ERRS"/* 2>/dev/null; then
	not_ok "imc-attach: no sanitizer report" \
		"$(grep -E -A20 'Sanitizer|runtime error:' "$ERRS"/* | head -40)"
else
	ok "imc-attach: no sanitizer report"
fi

done_testing
