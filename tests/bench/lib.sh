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
# median: of the numbers on stdin; ms_fmt MS: "123 ms", or "12.3 s" from 10 s on.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ms_fmt() { awk -v ms="$1" 'BEGIN { if (ms >= 10000) printf "%.1f s", ms / 1000; else printf "%.0f ms", ms }'; }

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

# --- two hosts on one machine (tests/lib/netns.sh: netns_pair, netns_pair_up) ---------------
# The server side (imcd, registry, nginx) in this network namespace, the agent in $NS; what the
# agent receives leaves the server through $VETH, so that is where the link is shaped and counted.

# bench_shape DEV RATE: shape DEV's egress with tc tbf to RATE (tc's units: 1gbit, 500mbit), a
# burst of 10 ms at that rate (at least 1 MiB); replaces an earlier shaping.
bench_shape() {
	local burst
	burst=$(awk -v r="$2" 'BEGIN { n = r + 0; u = tolower(substr(r, length(n "") + 1))
		m = u == "gbit" ? 1e9 : u == "mbit" ? 1e6 : u == "kbit" ? 1e3 : u == "bit" ? 1 : 0
		if (m == 0) exit 1
		b = n * m / 8 / 100; printf "%d", b < 1048576 ? 1048576 : b }') || {
		echo "${0##*/}: rate $2: want N[gbit|mbit|kbit]" >&2
		return 1
	}
	tc qdisc replace dev "$1" root tbf rate "$2" burst "$burst" latency 50ms
}

# bench_rate_gbit RATE: RATE (1gbit, 500mbit) in Gbit/s, a bare number.
bench_rate_gbit() {
	awk -v r="$1" 'BEGIN { n = r + 0; u = tolower(substr(r, length(n "") + 1))
		printf "%g", u == "gbit" ? n : u == "mbit" ? n / 1e3 : u == "kbit" ? n / 1e6 : n / 1e9 }'
}

# bench_tx_bytes DEV: the bytes DEV has sent so far (the link's counter, headers included).
bench_tx_bytes() { cat "/sys/class/net/$1/statistics/tx_bytes"; }

# bench_agent STATE ARG...: imc-attach on the agent's side of the link, verbose (its statistics
# go to stderr), lowers released at their last detach.
bench_agent() {
	local state=$1
	shift
	nsenter --net="/run/netns/$NS" "$IMC_BIN/imc-attach" --state-dir "$state" --lower-grace 0 -v "$@"
}

# bench_agent_down STATE [DIR]: detach DIR (if given) and release the agent's pool; quiet.
# shellcheck disable=SC2317 # called through defer
bench_agent_down() {
	[ -z "${2:-}" ] || "$IMC_BIN/imc-attach" --state-dir "$1" --lower-grace 0 detach "$2" >/dev/null 2>&1 || true
	"$IMC_BIN/imc-attach" --state-dir "$1" --lower-grace 0 reconcile >/dev/null 2>&1 || true
	"$IMC_BIN/imc-attach" --state-dir "$1" teardown >/dev/null 2>&1 || true
}

# bench_nginx_start ROOT ADDR: nginx (2 workers, sendfile, no access log) serving ROOT on ADDR
# and a free port; sets NGINX_URL (http://ADDR:PORT) once it answers.  Stopped at exit.
bench_nginx_start() {
	local root=$1 addr=$2 dir port i
	dir=$(mktemp -d "$TEST_TMP/nginx.XXXXXX")
	port=$((20000 + RANDOM % 20000))
	cat >"$dir/nginx.conf" <<EOC
daemon off;
worker_processes 2;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 64; }
http {
	access_log off;
	sendfile on;
	client_body_temp_path $dir;
	proxy_temp_path $dir;
	fastcgi_temp_path $dir;
	uwsgi_temp_path $dir;
	scgi_temp_path $dir;
	server { listen $addr:$port; root $root; }
}
EOC
	nginx -c "$dir/nginx.conf" -p "$dir" &
	NGINX_PID=$!
	defer stop_pid "$NGINX_PID" 10
	NGINX_URL=http://$addr:$port
	for i in $(seq 50); do
		curl -sS -o /dev/null "$NGINX_URL/" 2>/dev/null && return 0
		kill -0 "$NGINX_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "${0##*/}: nginx did not start: $(tail -n 5 "$dir/error.log")" >&2
	return 1
}
