#!/bin/bash
# bench_attach_scale.sh: how attach scales, in-process (tests/bench/attach_bench, release build).
#
#   BENCH_SCALE_MB ("1024 4096 16384")  data in each snapshot, MiB
#   BENCH_SCALE_CONC ("1 8 20")         attaches at once
#   BENCH_SCALE_ATTACHES (40)           attaches per measurement (at least 5 per thread)
#
# Snapshots holding each amount of incompressible data are made straight into a fresh store the
# way the builder makes them (mkfs.ext4 without a journal, files, clean unmount, seal with its
# compaction; attach_bench --make-snapshot), so no registry pull bounds the sizes.  Then, in
# each attach mode (mount: clone + loop + mount of the rootfs; block: clone + loop, nothing
# mounted, as attach --block for a microVM):
#   by size        attach p50/p99, one at a time, of each snapshot (goal: flat, p99 < 50 ms)
#   concurrency    attach p50/p99 of the first snapshot with 1, 8 and 20 attaches at once
#   --size 2x      attach p50/p99 growing the clone and its ext4 to twice the snapshot (mount)
# The markdown table goes to stdout and to build/bench/attach_scale.md (BENCH_SCALE_OUT); the
# numbers to build/bench/attach_size.dat and attach_conc.dat.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SIZES=${BENCH_SCALE_MB:-1024 4096 16384}
MODES="mount block"
CONC=${BENCH_SCALE_CONC:-1 8 20}
N=${BENCH_SCALE_ATTACHES:-40}
OUT_MD=${BENCH_SCALE_OUT:-$IMC_ROOT/build/bench/attach_scale.md}
BENCH=$IMC_BIN/bench/attach_bench

bench_need jq xfs_bmap
if [ ! -x "$BENCH" ] || [ ! -x "$IMC_BIN/imc-attach" ]; then
	echo "bench: build $BENCH and $IMC_BIN/imc-attach first (make bench builds them)" >&2
	exit 1
fi

teardown() { "$IMC_BIN/imc-attach" --state-dir "$STATE" teardown >/dev/null 2>&1 || true; }

STATE=$TEST_TMP/state
defer teardown
"$IMC_BIN/imc-attach" --state-dir "$STATE" list >/dev/null

declare -A SNAP_S EXTENTS
# scale_id MB: the snapshot of MB MiB, under a cache id (imc- and 16 hex digits)
scale_id() { printf 'imc-%016x' "$1"; }
for mb in $SIZES; do
	step "snapshot with $mb MiB of data"
	T0=$(now_ms)
	"$BENCH" --make-snapshot "$STATE" "$(scale_id "$mb")" "$mb"
	SNAP_S[$mb]=$(awk -v ms="$(($(now_ms) - T0))" 'BEGIN { printf "%.1f", ms / 1000 }')
	EXTENTS[$mb]=$(xfs_bmap "$STATE/pool/snapshots/$(scale_id "$mb").img" | tail -n +2 | grep -vc hole || true)
done
FIRST=${SIZES%% *}
# The snapshots were just written: until their data is written back (through the pool's loop
# device into its file), every clone and mount waits on it (measured: p50 15 ms on a 1 GiB
# snapshot right after --make-snapshot, 1.9 ms once written back).  An attach on a host meets
# snapshots that were built earlier, so the timings start once everything is on disk.
step "sync"
sync

# attach_bench_mode MODE ARG...: attach_bench in MODE (mount or block).
attach_bench_mode() {
	local mode=$1
	shift
	if [ "$mode" = block ]; then
		"$BENCH" --block "$@"
	else
		"$BENCH" "$@"
	fi
}

{
	echo "Attach (FICLONE + loop, then the mount of images/0/rootfs in mount mode) and detach"
	echo "in-process, release build, $N attaches per row; snapshots made with"
	echo "\`attach_bench --make-snapshot\` and sealed by the store."
	echo
	echo "| snapshot data | extents | mode | attach p50 | attach p99 | detach p50 |"
	echo "|---|---|---|---|---|---|"
} >"$TEST_TMP/size.md"
bench_dat attach_size "attach latency by snapshot size, one at a time, ms ($N attaches a row)" \
	mode snapshot_data_mib extents attach_p50_ms attach_p99_ms detach_p50_ms
for mb in $SIZES; do
	for mode in $MODES; do
		step "attach x$N ($mode), one at a time, $mb MiB"
		J=$(attach_bench_mode "$mode" "$STATE" "$(scale_id "$mb")" "$N" 1)
		echo "| $mb MiB (made in ${SNAP_S[$mb]} s) | ${EXTENTS[$mb]} | $mode | $(ms "$J" .attach_p50_ms) ms | $(ms "$J" .attach_p99_ms) ms | $(ms "$J" .detach_p50_ms) ms |" >>"$TEST_TMP/size.md"
		bench_row attach_size "$mode" "$mb" "${EXTENTS[$mb]}" "$(ms "$J" .attach_p50_ms)" \
			"$(ms "$J" .attach_p99_ms)" "$(ms "$J" .detach_p50_ms)"
	done
done

{
	echo
	echo "| attaches at once ($FIRST MiB snapshot) | mode | count | attach p50 | attach p99 | max |"
	echo "|---|---|---|---|---|---|"
} >"$TEST_TMP/conc.md"
bench_dat attach_conc "attach latency by attaches at once, ${FIRST} MiB snapshot, ms" \
	mode concurrency count attach_p50_ms attach_p99_ms attach_max_ms
for mode in $MODES; do
	for c in $CONC; do
		count=$N
		[ "$count" -ge $((c * 5)) ] || count=$((c * 5))
		step "attach x$count ($mode), $c at a time"
		J=$(attach_bench_mode "$mode" "$STATE" "$(scale_id "$FIRST")" "$count" "$c")
		echo "| $c | $mode | $count | $(ms "$J" .attach_p50_ms) ms | $(ms "$J" .attach_p99_ms) ms | $(ms "$J" .attach_max_ms) ms |" >>"$TEST_TMP/conc.md"
		bench_row attach_conc "$mode" "$c" "$count" "$(ms "$J" .attach_p50_ms)" \
			"$(ms "$J" .attach_p99_ms)" "$(ms "$J" .attach_max_ms)"
	done
done

SNAP_MB=$(($(stat -c %s "$STATE/pool/snapshots/$(scale_id "$FIRST").img") >> 20))
step "attach x$N with --size $((SNAP_MB * 2)) MiB"
J=$("$BENCH" "$STATE" "$(scale_id "$FIRST")" "$N" 1 $((SNAP_MB * 2)))
{
	echo
	echo "| --size (clone and ext4 grown from $SNAP_MB to $((SNAP_MB * 2)) MiB) | attach p50 | attach p99 |"
	echo "|---|---|---|"
	echo "| one at a time | $(ms "$J" .attach_p50_ms) ms | $(ms "$J" .attach_p99_ms) ms |"
} >>"$TEST_TMP/conc.md"

mkdir -p "$(dirname "$OUT_MD")"
cat "$TEST_TMP/size.md" "$TEST_TMP/conc.md" | tee "$OUT_MD"
