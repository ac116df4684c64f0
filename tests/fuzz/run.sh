#!/bin/bash
# Runs the fuzz targets built in BUILD_DIR (make fuzz), each for SECONDS:
#   1. replays every input saved under tests/fuzz/regressions/<target>/, one by one;
#   2. fuzzes with -max_total_time=SECONDS from BUILD_DIR/corpus/<target> (kept between runs),
#      seeded from the inputs mkcorpus.sh writes into BUILD_DIR/seeds/<target>.
# A crash, leak, sanitizer report or timeout fails the run: its log tail and the reproducer
# (BUILD_DIR/artifacts/<target>/) are printed.  Exits 1 if any target failed.
#   usage: run.sh BUILD_DIR SECONDS [TARGET...]    (default: every fuzz_* built in BUILD_DIR)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "${1:?usage: run.sh BUILD_DIR SECONDS [TARGET...]}" && pwd)
secs=${2:?usage: run.sh BUILD_DIR SECONDS [TARGET...]}
shift 2
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
	for bin in "$out"/fuzz_*; do
		[ -x "$bin" ] && targets+=("${bin##*/fuzz_}")
	done
fi
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets in $out (make fuzz)"; exit 1; }

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

"$here/mkcorpus.sh" "$out/seeds"

# Per-target options: the dictionary, and for layers room for a tar of a few entries.
opts_for() {
	case $1 in
	ref) echo "-dict=$here/ref.dict -max_len=1024" ;;
	manifest | request | runtime | index | auth | trace) echo "-dict=$here/json.dict -max_len=8192" ;;
	layer) echo "-dict=$here/layer.dict -max_len=16384" ;;
	*) echo "-max_len=4096" ;;
	esac
}

failed=()
for t in "${targets[@]}"; do
	bin=$out/fuzz_$t
	corpus=$out/corpus/$t
	artifacts=$out/artifacts/$t/
	log=$out/logs/$t.log
	tmp=$out/tmp/$t
	[ -x "$bin" ] || { echo "fuzz_$t: $bin is missing (make fuzz)"; exit 1; }
	rm -rf "$tmp"
	mkdir -p "$corpus" "$artifacts" "$out/seeds/$t" "$(dirname "$log")" "$tmp"
	# shellcheck disable=SC2207
	common=(-timeout=25 -rss_limit_mb=2048 -artifact_prefix="$artifacts" $(opts_for "$t"))
	: >"$log"
	touch "$log.start"
	rc=0

	regressions=()
	if [ -d "$here/regressions/$t" ]; then
		while IFS= read -r -d '' f; do regressions+=("$f"); done < <(
			find "$here/regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
	fi
	if [ ${#regressions[@]} -gt 0 ]; then
		TMPDIR=$tmp "$bin" "${common[@]}" "${regressions[@]}" >>"$log" 2>&1 || rc=$?
	fi
	if [ $rc = 0 ]; then
		TMPDIR=$tmp "$bin" "${common[@]}" -max_total_time="$secs" -print_final_stats=1 \
			"$corpus" "$out/seeds/$t" >>"$log" 2>&1 || rc=$?
	fi
	rm -rf "$tmp"

	if [ $rc != 0 ]; then
		echo "fuzz_$t: FAILED (exit status $rc); log $log"
		tail -n 60 "$log" | sed 's/^/    /'
		find "$artifacts" -type f -newer "$log.start" -printf '    reproducer: %p\n'
		failed+=("$t")
		continue
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
	done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
	cov=$(sed -nE 's/.* cov: ([0-9]+) .*/\1/p' <<<"$done_line")
	corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$done_line")
	echo "fuzz_$t: ok: ${#regressions[@]} regression inputs, ${runs:-?} runs in ${secs}s," \
		"coverage ${cov:-?}, corpus ${corp:-?}"
done
[ ${#failed[@]} = 0 ] || { echo "fuzz: failed: ${failed[*]}"; exit 1; }
