#!/bin/bash
# End to end on the thin driver, in a kernel with device-mapper (tests/vm/imc-vm): a registry on
# 127.0.0.1, imcd --driver thin builds a cache into a dm thin pool, imc-attach --driver thin
# attaches it as a rootfs in clone mode and in overlay mode (two pods on one read-only activation
# of the snapshot, isolated, crun runs from one; the lower's device goes with the last detach,
# also after a kill -9 right after the lower's unmount), detach and teardown leave no device
# behind; a restarted imcd finds the pool and the cache again and repairs nothing.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"

need_root
need_loop
need_tool jq curl skopeo findmnt crun
need_programs imcd imcctl imc-attach
[ -e /sys/class/misc/device-mapper ] ||
	skip_all "needs device-mapper (run it in a VM: tests/vm/imc-vm -- $0)"

# crun needs a cgroup2 hierarchy; inside the test VM this is the guest's own kernel.
if [ "${IMC_VM:-}" = 1 ] && ! findmnt -rn -t cgroup2 /sys/fs/cgroup >/dev/null; then
	mount -t cgroup2 none /sys/fs/cgroup
fi

# imc-attach and the teardown use the same driver as imcd.
# shellcheck disable=SC2317 # called by imcd.sh's helpers
imc_attach() {
	"$IMC_BIN/imc-attach" --state-dir "$IMC_STATE" --driver thin "$@"
}
# shellcheck disable=SC2317 # deferred
imc_teardown_quiet() {
	if [ -n "$IMC_STATE" ]; then
		imc_attach teardown >/dev/null 2>&1 || true
	fi
}
# imcache's dm devices (pool included) of this test's pools.
our_dm_devices() {
	local n
	for n in /sys/block/dm-*/dm/name; do
		if [ -e "$n" ]; then grep -h '^imc-' "$n" || true; fi
	done | sort
}

BEFORE_DM=$(our_dm_devices)
registry_start_or_bail
LAYOUT=$TEST_TMP/layout
images_push_or_bail "multilayer image builds and pushes" "$LAYOUT" multilayer:multi

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE" --driver thin --pool-size 2G
check_match "imcd runs the thin driver" "store driver thin" "$(cat "$IMCD_LOG")"

OUT=$(imcctl create "$REGISTRY/imc/multi:v1" --name thin --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "cache builds into the thin pool" \
	"$(cat "$TEST_TMP/imcctl.err"; imcd_log_tail 20)"
ok "cache $ID builds into the thin pool"
check_eq "the pool has the cache's snapshot" "$ID" \
	"$(jq -r --arg id "$ID" '.devices[] | select(.kind == "snapshot" and .id == $id) | .id' \
		"$STATE/thin/devices.json")"
check_match "/metrics reports the thin pool's usage" "imcache_" "$(curl -s "$IMCD_URL/metrics")"

ROOT=$TEST_TMP/root
mkdir -p "$ROOT"
defer imc_detach_quiet "$ROOT"
check "imc-attach --driver thin attaches $ID (clone mode)" imc_attach attach --mode clone "$ID" "$ROOT"
check_match "the rootfs is mounted from a thin device" "^/dev/mapper/imc-" \
	"$(findmnt -rn -o SOURCE --mountpoint "$ROOT" || true)"
if IMC_RUNTIME=crun run_container "$ROOT" /bin/sh -c 'cat /data/a.txt; echo written >/x; cat /x'; then
	check_eq "crun runs a container from the thin clone" "content-a
written" "$CONTAINER_OUTPUT"
else
	not_ok "crun runs a container from the thin clone" "$CONTAINER_ERRORS"
fi
check "detach" imc_attach detach "$ROOT"
check_eq "no clone left in the pool" 0 \
	"$(jq '[.devices[] | select(.kind == "clone")] | length' "$STATE/thin/devices.json")"

# lower_holders ID: on a failure, which processes still see the lower's mount or hold its device
# open (for the diagnosis, on stderr).
lower_holders() {
	local pid
	for pid in /proc/[0-9]*; do
		grep -qs -- "lowers/$1" "$pid/mountinfo" &&
			echo "# mount seen by ${pid#/proc/}: $(tr '\0' ' ' <"$pid/cmdline" 2>/dev/null)" >&2
		ls -l "$pid/fd" 2>/dev/null | grep -q -- "-s-$1" &&
			echo "# device open in ${pid#/proc/}: $(tr '\0' ' ' <"$pid/cmdline" 2>/dev/null)" >&2
	done
	return 0
}

# Overlay mode (the default): one read-only activation of the snapshot, shared by the pods.
P1=$TEST_TMP/pod1
P2=$TEST_TMP/pod2
mkdir -p "$P1" "$P2"
defer imc_detach_quiet "$P1"
defer imc_detach_quiet "$P2"
io() { imc_attach --lower-grace 0 "$@"; }
check "overlay attach of $ID at pod1" io attach "$ID" "$P1"
check "overlay attach of $ID at pod2" io attach "$ID" "$P2"
LOWER_SRC=$(findmnt -rn -o SOURCE --mountpoint "$STATE/lowers/$ID" || true)
check_match "the shared lower is the snapshot's thin device" "^/dev/mapper/imc-.*-s-" "$LOWER_SRC"
check_eq "mounted read-only from a read-only device" "ro 1" \
	"$(findmnt -rn -o OPTIONS --mountpoint "$STATE/lowers/$ID" | cut -d, -f1) $(blockdev --getro "$LOWER_SRC" 2>&1)"
check_eq "pods are overlays" "overlay overlay" \
	"$(findmnt -rn -o FSTYPE --mountpoint "$P1") $(findmnt -rn -o FSTYPE --mountpoint "$P2")"
echo pod1 >"$P1/mine"
check "pod2 does not see pod1's write" test ! -e "$P2/mine"
check_eq "pod2 reads the image's files" content-a "$(cat "$P2/data/a.txt" 2>&1)"
if IMC_RUNTIME=crun run_container "$P1" /bin/sh -c 'cat /mine; echo again >/x; cat /x'; then
	check_eq "crun runs a container from the overlay" "pod1
again" "$CONTAINER_OUTPUT"
else
	not_ok "crun runs a container from the overlay" "$CONTAINER_ERRORS"
fi
check "detach pod1" io detach "$P1"
check "the lower stays for pod2" test -n "$(findmnt -rn --mountpoint "$STATE/lowers/$ID")"
check "detach pod2" io detach "$P2"
check_eq "the lower's mount goes with the last detach" "" \
	"$(findmnt -rn --mountpoint "$STATE/lowers/$ID" || true)"
# imcd's background export of the chunk index reads the same snapshot device: whichever of the
# two deactivates last removes it, so it is gone once the export is done too.
wait_for_match "$IMCD_LOG" "cache $ID: chunk index exported" 120 || true
check_match "imcd exported the cache's chunk index" "cache $ID: chunk index exported" \
	"$(cat "$IMCD_LOG")"
LEFT=$(findmnt -rn --mountpoint "$STATE/lowers/$ID" || true; our_dm_devices | grep -- '-s-' || true)
[ -z "$LEFT" ] || lower_holders "$ID"
check_eq "the lower's device goes with its last user" "" "$LEFT"
# kill -9 right after the lower's unmount: its thin device is still active; reconcile removes it.
check "overlay attach again" io attach "$ID" "$P1"
IMC_ATTACH_STOP_AT=lower-after-umount "$IMC_BIN/imc-attach" --state-dir "$STATE" --driver thin \
	--lower-grace 0 detach "$P1" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 400); do
	case "$(ps -o stat= -p "$pid" 2>/dev/null)" in T*) break ;; "" | Z*) break ;; esac
	sleep 0.05
done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
check_match "after kill -9 past the lower's unmount, its device is still there" "-s-" \
	"$(our_dm_devices)"
check_match "reconcile releases it" "released the lower of cache $ID" "$(io reconcile 2>&1)"
check_eq "no snapshot device and no lower left" "" \
	"$(findmnt -rn --mountpoint "$STATE/lowers/$ID" || true; our_dm_devices | grep -- '-s-' || true;
	   find "$STATE/lowers" "$STATE/overlays" -mindepth 1)"

# A restart finds the pool and the cache and has nothing to repair.
imcd_stop || true
imcd_start "$STATE" --driver thin --pool-size 2G || bail "imcd restarts" "$(imcd_log_tail 20)"
check_eq "the restarted imcd repairs nothing" "" "$(grep 'repair: ' "$IMCD_LOG" || true)"
check_match "the cache is still Ready" '"status":"Ready"' "$(cache_wait "$ID" 30 | jq -c .)"
check_clean_shutdown_thin() {
	local rc=0
	imcd_stop || rc=$?
	check_eq "imcd exits 0 on SIGTERM" 0 "$rc"
	check_fails "imcd log has no sanitizer report" \
		grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"
	check "imc-attach teardown removes the pool" imc_attach teardown
	check_eq "no dm device of this test is left" "$BEFORE_DM" "$(our_dm_devices)"
	check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops)"
	check_eq "no mount under the test dir" "" "$(tmp_mounts)"
}
check_clean_shutdown_thin
done_testing
