#!/bin/bash
# bench_overlay.sh: overlay mode (one shared read-only lower per cache, an overlayfs per pod)
# beside clone mode (a clone per pod), in one run, release build.
#
#   BENCH_OVL_MB (1024)          data in the snapshot, MiB (in 64 MiB files)
#   BENCH_OVL_CONC ("1 20 50")   attaches at once
#   BENCH_OVL_ATTACHES (100)     attaches per measurement
#   BENCH_OVL_PODS (8)           pods that read the data
#
# attach / detach   p50/p99 in-process (attach_bench, threads at once; process start excluded)
# CPU               user + system time of attach_bench per attach and its detach (on C cores, the
#                   last of N at once waits about N * CPU / C)
# page cache        after BENCH_OVL_PODS pods each read all the data: the pages of the files'
#                   inodes (fincore), summed over the distinct inodes (the lower's, or each clone's)
# read throughput   of pod 1 (cold) and of pods 2..N (mean), MiB/s
# The table goes to stdout and to build/bench/overlay.md (BENCH_OVL_OUT); the numbers of the plots
# to build/bench/overlay_attach.dat (attach/detach by attaches at once, each mode) and
# overlay_pagecache.dat (the page cache after each of the pods has read the data, each mode).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

MB=${BENCH_OVL_MB:-1024}
CONC=${BENCH_OVL_CONC:-1 20 50}
N=${BENCH_OVL_ATTACHES:-100}
PODS=${BENCH_OVL_PODS:-8}
OUT_MD=${BENCH_OVL_OUT:-$IMC_ROOT/build/bench/overlay.md}
BENCH=$IMC_BIN/bench/attach_bench

bench_need jq fincore
if [ ! -x "$BENCH" ] || [ ! -x "$IMC_BIN/imc-attach" ]; then
	echo "bench: build $BENCH and $IMC_BIN/imc-attach first (make bench builds them)" >&2
	exit 1
fi
STATE=$TEST_TMP/state
IA="$IMC_BIN/imc-attach --state-dir $STATE --lower-grace 0"
teardown() {
	local m
	for m in "$TEST_TMP"/pod-*; do $IA detach "$m" >/dev/null 2>&1 || true; done
	"$IMC_BIN/imc-attach" --state-dir "$STATE" teardown >/dev/null 2>&1 || true
}
defer teardown
$IA list >/dev/null
ID=$(printf 'imc-%016x' "$MB") # a cache id: imc- and 16 hex digits
step "snapshot with $MB MiB of data"
"$BENCH" --make-snapshot "$STATE" "$ID" "$MB"
sync

declare -A A50 A99 D50 D99 CPU
for mode in overlay clone; do
	flag=
	[ "$mode" = overlay ] && flag=--overlay
	for c in $CONC; do
		step "$mode: $N attaches, $c at once"
		# shellcheck disable=SC2086 # flag is empty or one word
		J=$("$BENCH" $flag "$STATE" "$ID" "$N" "$c")
		A50[$mode.$c]=$(ms "$J" .attach_p50_ms)
		A99[$mode.$c]=$(ms "$J" .attach_p99_ms)
		D50[$mode.$c]=$(ms "$J" .detach_p50_ms)
		D99[$mode.$c]=$(ms "$J" .detach_p99_ms)
		CPU[$mode.$c]=$(ms "$J" .cpu_ms_per_attach)
	done
	# A lower left warm by the attaches would start the read below warm.
	"$IMC_BIN/imc-attach" --state-dir "$STATE" --lower-grace 0 reconcile >/dev/null
done

# read_all DIR: read every data file under DIR; prints MiB/s.
read_all() {
	local t0 ms
	t0=$(now_ms)
	cat "$1"/data/* >/dev/null
	ms=$(($(now_ms) - t0))
	awk -v mb="$MB" -v ms="$ms" 'BEGIN { printf "%.0f", mb * 1000 / (ms > 0 ? ms : 1) }'
}
# cached_mb FILE...: MiB of the files' pages in the page cache.
cached_mb() {
	fincore -b -n -o RES "$@" | awk '{ s += $1 } END { printf "%.0f", s / 1048576 }'
}
# mode_cached_mb MODE: the page cache of the data so far (the lower's files, or every clone's).
mode_cached_mb() {
	if [ "$1" = overlay ]; then
		cached_mb "$STATE/lowers/$ID"/images/0/rootfs/data/*
	else
		cached_mb "$TEST_TMP"/pod-*/data/*
	fi
}
declare -A PC FIRST REST PCN
for mode in overlay clone; do
	step "$mode: $PODS pods read $MB MiB each"
	for i in $(seq 1 "$PODS"); do
		mkdir -p "$TEST_TMP/pod-$i"
		$IA attach --mode "$mode" "$ID" "$TEST_TMP/pod-$i"
	done
	FIRST[$mode]=$(read_all "$TEST_TMP/pod-1")
	PCN[$mode.1]=$(mode_cached_mb "$mode")
	sum=0
	for i in $(seq 2 "$PODS"); do
		sum=$((sum + $(read_all "$TEST_TMP/pod-$i")))
		PCN[$mode.$i]=$(mode_cached_mb "$mode")
	done
	REST[$mode]=$((sum / (PODS - 1)))
	PC[$mode]=${PCN[$mode.$PODS]}
	for i in $(seq 1 "$PODS"); do $IA detach "$TEST_TMP/pod-$i"; done
done

{
	echo "Overlay mode (shared read-only lower + overlayfs per pod) and clone mode (a clone per"
	echo "pod), in-process attach/detach, release build, $N attaches per row, a $MB MiB snapshot."
	echo
	echo "| | overlay | clone | clone/overlay |"
	echo "|---|---|---|---|"
	for c in $CONC; do
		echo "| attach p50 / p99, $c at once | ${A50[overlay.$c]} / ${A99[overlay.$c]} ms | ${A50[clone.$c]} / ${A99[clone.$c]} ms | $(ratio "${A99[clone.$c]}" "${A99[overlay.$c]}") (p99) |"
	done
	for c in $CONC; do
		echo "| detach p50 / p99, $c at once | ${D50[overlay.$c]} / ${D99[overlay.$c]} ms | ${D50[clone.$c]} / ${D99[clone.$c]} ms | $(ratio "${D99[clone.$c]}" "${D99[overlay.$c]}") (p99) |"
	done
	for c in $CONC; do
		echo "| CPU per attach + detach, $c at once | ${CPU[overlay.$c]} ms | ${CPU[clone.$c]} ms | $(ratio "${CPU[clone.$c]}" "${CPU[overlay.$c]}") |"
	done
	echo "| page cache after $PODS pods read $MB MiB | ${PC[overlay]} MiB ($(ratio "${PC[overlay]}" "$MB") of the data) | ${PC[clone]} MiB ($(ratio "${PC[clone]}" "$MB")) | $(ratio "${PC[clone]}" "${PC[overlay]}") |"
	echo "| read, pod 1 (cold) | ${FIRST[overlay]} MiB/s | ${FIRST[clone]} MiB/s | |"
	echo "| read, pods 2-$PODS (mean) | ${REST[overlay]} MiB/s | ${REST[clone]} MiB/s | $(ratio "${REST[overlay]}" "${REST[clone]}") (overlay/clone) |"
	echo
	bench_machine
} | { mkdir -p "$(dirname "$OUT_MD")"; tee "$OUT_MD"; }

bench_dat overlay_attach "attach and detach latency by attaches at once, each attach mode, ${MB} MiB snapshot, ms ($N attaches a row)" \
	mode concurrency attach_p50_ms attach_p99_ms detach_p50_ms detach_p99_ms
for mode in overlay clone; do
	for c in $CONC; do
		bench_row overlay_attach "$mode" "$c" "${A50[$mode.$c]}" "${A99[$mode.$c]}" \
			"${D50[$mode.$c]}" "${D99[$mode.$c]}"
	done
done
bench_dat overlay_pagecache "page cache of the data after pods 1..N each read all ${MB} MiB of it, MiB, each attach mode" \
	mode pods page_cache_mib data_mib
for mode in overlay clone; do
	for i in $(seq 1 "$PODS"); do
		bench_row overlay_pagecache "$mode" "$i" "${PCN[$mode.$i]}" "$MB"
	done
done
