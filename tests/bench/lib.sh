# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# The start every bench script shares: sources tests/lib (common, registry, mkimage, imcd), turns
# off the test summary line (a bench prints tables, not test counts) and defines the helpers the
# tables are made with.  A bench script begins with
#   # shellcheck source=tests/bench/lib.sh
#   . "$(dirname "$0")/lib.sh"
# and stays runnable alone:  IMC_BIN=$PWD/build tests/bench/bench_X.sh
# Sets here (this directory); IMC_BIN defaults to build/ (common.sh).

IMC_NO_SUMMARY=1
export IMC_NO_SUMMARY
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source=SCRIPTDIR/../lib/registry.sh
. "$here/../lib/registry.sh"
# shellcheck source=SCRIPTDIR/../lib/mkimage.sh
. "$here/../lib/mkimage.sh"
# shellcheck source=SCRIPTDIR/../lib/imcd.sh
. "$here/../lib/imcd.sh"

# bench_need TOOL...: root, writable loop devices and TOOLs in PATH, or exit 1 saying what is
# missing (a bench asked for and unable to run is an error, not a skip).
bench_need() {
	local t
	if [ "$(id -u)" -ne 0 ] || [ ! -w /dev/loop-control ]; then
		echo "${0##*/}: needs root and loop devices" >&2
		exit 1
	fi
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || {
			echo "${0##*/}: needs $t (scripts/install-deps.sh)" >&2
			exit 1
		}
	done
}

# step WHAT: progress on stderr (stdout is the table).
step() { printf '== %s\n' "$*" >&2; }

# ms_to_s MS [DECIMALS]: "1.2 s" (DECIMALS: 1).
ms_to_s() { awk -v ms="$1" -v d="${2:-1}" 'BEGIN { printf "%.*f s", d, ms / 1000 }'; }

# ratio A B [DECIMALS]: A / B with DECIMALS (2) places, none from 100 up; "-" when B <= 0.
ratio() {
	awk -v a="$1" -v b="$2" -v d="${3:-2}" \
		'BEGIN { if (b <= 0) print "-"; else if (a / b >= 100) printf "%.0f", a / b; else printf "%.*f", d, a / b }'
}

# ms JSON FILTER: the number FILTER picks from JSON, with 2 decimals.
ms() { json_get "$1" "$2" | awk '{ printf "%.2f", $1 }'; }

# skopeo_umoci_ms REF: the usual pull + unpack of REF, skopeo copy into an OCI layout then umoci
# unpack (both removed after); sets SKOPEO_MS, UMOCI_MS and PULL_MS (the two together).
skopeo_umoci_ms() {
	local t0 t1 t2
	t0=$(now_ms)
	skopeo copy --quiet --src-tls-verify=false "docker://$1" "oci:$TEST_TMP/pulled:img"
	t1=$(now_ms)
	umoci unpack --image "$TEST_TMP/pulled:img" "$TEST_TMP/bundle" >/dev/null
	t2=$(now_ms)
	SKOPEO_MS=$((t1 - t0))
	UMOCI_MS=$((t2 - t1))
	PULL_MS=$((t2 - t0))
	rm -rf "$TEST_TMP/pulled" "$TEST_TMP/bundle"
}

# --- data files for plots --------------------------------------------------------------------
# Next to its markdown table a bench writes its numbers as a plain data file, build/bench/NAME.dat:
# '#' header lines (what was measured, the machine, the date, the columns) and one row per
# measurement, fields separated by tabs, strings in double quotes (gnuplot reads it as it is).
# tests/bench/plot.sh draws the PNGs from these files; docs/bench-data/ keeps the latest ones.

BENCH_DIR=${BENCH_DIR:-$IMC_ROOT/build/bench}

# bench_machine: "2 cores (AMD EPYC), 24 GiB, Linux 6.1.0-18-amd64" of this machine.
bench_machine() {
	local cpu mem
	cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
	mem=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
	printf '%s cores%s, %s GiB, Linux %s\n' "$(nproc)" "${cpu:+ ($cpu)}" "$mem" "$(uname -r)"
}

# bench_dat NAME WHAT COLUMN...: start build/bench/NAME.dat (replacing an earlier one) with its
# header; prints nothing.  WHAT says what the rows measure, with units.
bench_dat() {
	local name=$1 what=$2 f
	shift 2
	f=$BENCH_DIR/$name.dat
	mkdir -p "$BENCH_DIR"
	{
		printf '# imcache bench: %s\n' "$what"
		printf '# machine: %s\n' "$(bench_machine)"
		printf '# date: %s\n' "$(date -u +%Y-%m-%d)"
		# The machines are shared: how busy this one was says how far to trust the tails.
		printf '# load: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min load average at the end)"
		printf '# script: tests/bench/%s\n' "${0##*/}"
		printf '# columns:'
		printf ' %s' "$@"
		printf '\n'
	} >"$f"
}

# bench_row NAME FIELD...: append one row to NAME.dat; a field that is not a number is quoted.
bench_row() {
	local f=$BENCH_DIR/$1.dat v sep=
	shift
	for v in "$@"; do
		if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then
			printf '%s%s' "$sep" "$v"
		else
			printf '%s"%s"' "$sep" "${v//\"/\'}"
		fi
		sep=$'\t'
	done >>"$f"
	printf '\n' >>"$f"
}

# secs MS: MS as seconds with 2 decimals, a bare number (for data files).
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
