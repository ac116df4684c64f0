#!/bin/bash
# bench_api.sh: imcd's API under load (wrk on loopback), with bearer auth in the measured path.
#
#   BENCH_API_CACHES (1000)   caches in the store while measuring
#   BENCH_API_SECONDS (10)    each wrk run
#   BENCH_API_CONNS (32)      wrk connections (-c), over BENCH_API_THREADS (2) threads (-t)
#   BENCH_OUT                 where the markdown table goes (build/bench/api.md)
#   BENCH_API_IMCD_THREADS    imcd --threads (unset: imcd's default)
#   BENCH_API_PERF (unset)    a directory: perf record imcd during each run, top symbols there
#
# A tiny busybox image is pushed to a local docker-registry; imcd (the release build, with a
# config holding one bearer token) builds BENCH_API_CACHES caches of it (driven by 4 parallel
# POST loops; builds of the same image reuse its base snapshot).  imcd runs with --export request:
# by default it exports each Ready cache's chunk index in the background (about a second of CPU per
# GiB of snapshot, each of these is 1 GiB), which would take the next 18 minutes of one CPU and
# share the 2 CPUs with the runs; the API, not the exporter, is measured.  Then wrk -t2 -c32 --latency,
# each request with "Authorization: Bearer <token>", on
#   get    GET /v1/imagecaches/{id}          (one Ready cache)
#   list   GET /v1/imagecaches?limit=100     (the first page of 100 caches, ~130 KiB: bounded by
#                                             bytes, see the MB/s column)
#   list10 GET /v1/imagecaches?limit=10      (a page a client really asks for)
#   name   GET /v1/imagecaches?name=<one>&limit=10   (a filter that scans all caches, 1 match)
#   image  GET /v1/imagecaches?image=<ref>&limit=10  (every cache has that ref: a full page)
#   401    GET /v1/imagecaches/{id} with a wrong token (the cost of refusing)
# and prints req/s and p50/p99 latency against the goals (>= 20,000 req/s, p99 < 10 ms).
# Needs root and loop devices, wrk.  Run as:  IMC_BIN=$PWD/build tests/bench/bench_api.sh
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_API_CACHES:-1000}
SECS=${BENCH_API_SECONDS:-10}
CONNS=${BENCH_API_CONNS:-32}
THREADS=${BENCH_API_THREADS:-2}
OUT_MD=${BENCH_OUT:-$IMC_ROOT/build/bench/api.md}
GOAL_RPS=20000
GOAL_P99_MS=10

bench_need wrk jq curl skopeo


step "registry and a busybox image"
registry_start
mkimage_busybox "$TEST_TMP/layout" bb >/dev/null
mkimage_push "$TEST_TMP/layout" bb bench/bb:v1
REF=$REGISTRY/bench/bb:v1

TOKEN=bench-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
CFG=$TEST_TMP/imcd.json
(umask 077 && jq -n --arg t "$TOKEN" '{tokens: [{token: $t, tenant: "bench"}]}' >"$CFG")
AUTH="Authorization: Bearer $TOKEN"

step "imcd (release build) with a bearer token"
defer imc_teardown_quiet
imcd_start "$TEST_TMP/state" --config "$CFG" --log-level warn --export request \
	${BENCH_API_IMCD_THREADS:+--threads "$BENCH_API_IMCD_THREADS"}

# post_loop FIRST COUNT: POST caches FIRST..FIRST+COUNT-1, retrying while the queue is full (429).
post_loop() {
	local i code body
	for ((i = $1; i < $1 + $2; i++)); do
		body=$(jq -cn --arg ref "$REF" --arg n "c$i" '{name: $n, images: [{ref: $ref}]}')
		while :; do
			code=$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' -H "$AUTH" \
				-H 'Content-Type: application/json' -d "$body" \
				"$IMCD_URL/v1/imagecaches") || code=000
			[ "$code" = 202 ] && break
			[ "$code" = 429 ] || [ "$code" = 503 ] || {
				echo "bench_api: POST c$i: HTTP $code" >&2
				return 1
			}
			sleep 0.2
		done
	done
}

# count STATUS: how many caches have that status (following the pages).
count() {
	local token='' n=0 page
	while :; do
		page=$(curl -fsS --noproxy '*' -H "$AUTH" \
			"$IMCD_URL/v1/imagecaches?status=$1&limit=1000${token:+&pageToken=$token}")
		n=$((n + $(jq '.items | length' <<<"$page")))
		token=$(jq -r '.nextPageToken // empty' <<<"$page")
		[ -n "$token" ] || break
	done
	echo "$n"
}

step "creating $N caches (the first alone: it makes the image's base snapshot; then 4 POST loops)"
T0=$(now_ms)
post_loop 0 1
while [ "$(count Creating)" -ne 0 ]; do
	sleep 0.2
done
PER=$(((N - 1 + 3) / 4))
pids=()
for ((k = 0; k < 4; k++)); do
	first=$((1 + k * PER))
	cnt=$((N - first < PER ? N - first : PER))
	[ "$cnt" -gt 0 ] || continue
	post_loop "$first" "$cnt" &
	pids+=($!)
done
for p in "${pids[@]}"; do
	wait "$p"
done
while :; do
	creating=$(count Creating)
	[ "$creating" -eq 0 ] && break
	sleep 1
done
READY=$(count Ready)
CREATE_MS=$(($(now_ms) - T0))
[ "$READY" -eq "$N" ] || {
	echo "bench_api: $READY of $N caches Ready; Failed: $(count Failed)" >&2
	curl -fsS --noproxy '*' -H "$AUTH" "$IMCD_URL/v1/imagecaches?status=Failed&limit=1" >&2
	imcd_log_tail 20 >&2
	exit 1
}
step "$N caches Ready in $((CREATE_MS / 1000)) s"
ID=$(curl -fsS --noproxy '*' -H "$AUTH" "$IMCD_URL/v1/imagecaches?limit=1" | jq -r '.items[0].id')
NAME=c$((N / 2))
REF_Q=$(jq -rn --arg r "$REF" '$r | @uri')

# to_ms VALUE: wrk's "1.23ms" / "456.00us" / "1.02s" in milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
		else print "?" }'
}

# measure NAME URL [HEADER]: one wrk run; sets RPS, P50, P99 (ms), ERRORS (non-2xx/3xx + socket).
measure() {
	local name=$1 url=$2 header=${3:-$AUTH} out
	step "wrk -t$THREADS -c$CONNS -d${SECS}s --latency: $name"
	local perf_pid=
	if [ -n "${BENCH_API_PERF:-}" ] && command -v perf >/dev/null 2>&1; then
		perf record -q -g -o "$TEST_TMP/perf-$name.data" -p "$IMCD_PID" -- sleep "$SECS" \
			>/dev/null 2>&1 &
		perf_pid=$!
	fi
	out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H "$header" "$url")
	if [ -n "$perf_pid" ]; then
		wait "$perf_pid" || true
		mkdir -p "$BENCH_API_PERF"
		perf report -q --stdio --no-children -i "$TEST_TMP/perf-$name.data" 2>/dev/null |
			grep -E '^ +[0-9.]+%' | head -40 >"$BENCH_API_PERF/perf-$name.txt" || true
	fi
	printf '%s\n' "$out" >"$TEST_TMP/wrk-$name.txt"
	RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
	P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
	P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
	MBS=$(awk '/^Transfer\/sec:/ { v = $2; if (v ~ /GB$/) m = v * 1024; else if (v ~ /MB$/) m = v * 1;
		else if (v ~ /KB$/) m = v / 1024; else m = v / 1048576; printf "%.0f", m }' <<<"$out")
	ERRORS=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ {
		gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
}

verdict() { # verdict RPS P99
	awk -v r="$1" -v p="$2" -v gr="$GOAL_RPS" -v gp="$GOAL_P99_MS" \
		'BEGIN { print (r >= gr && p < gp) ? "meets" : "misses" }'
}

ROWS=()
row() { # row NAME EXPECT_ERRORS
	local errs=$ERRORS
	[ "$2" = all ] && errs="$ERRORS (all 401, as meant)"
	ROWS+=("| $1 | $RPS | $(ratio "$RPS" "$GOAL_RPS")× | $P50 ms | $P99 ms | $(ratio "$P99" "$GOAL_P99_MS")× | $MBS | $errs | $(verdict "$RPS" "$P99") |")
}

# body_bytes PATH: the size of one answer body.
body_bytes() { curl -fsS --noproxy '*' -H "$AUTH" "$IMCD_URL$1" | wc -c; }

# read ROW-NAME WRK-NAME PATH: measure a GET and add its row, with the body size.
read_row() {
	local bytes
	bytes=$(body_bytes "$3")
	measure "$2" "$IMCD_URL$3"
	local shown=${3/$REF_Q/<ref>}
	row "GET ${shown/$ID/\{id\}} ($bytes B)" 0
	[ "$2" = list ] && LIST_BYTES=$bytes
	return 0
}

LIST_BYTES=0
read_row get get "/v1/imagecaches/$ID"
read_row list list "/v1/imagecaches?limit=100"
read_row list10 list10 "/v1/imagecaches?limit=10"
read_row name name "/v1/imagecaches?name=$NAME&limit=10"
read_row image image "/v1/imagecaches?image=$REF_Q&limit=10"
measure unauthorized "$IMCD_URL/v1/imagecaches/$ID" "Authorization: Bearer wrong-$TOKEN"
row "GET /v1/imagecaches/{id}, wrong token (401)" all

imcd_stop

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "API reads under wrk -t$THREADS -c$CONNS -d${SECS}s on loopback, bearer token on every request,"
	echo "$N Ready caches in the store (created in $((CREATE_MS / 1000)) s; imcd --export request: no chunk"
	echo "index export in the background), $(nproc) CPUs shared by wrk and imcd."
	echo "Goal: >= $GOAL_RPS req/s and p99 < $GOAL_P99_MS ms."
	echo
	echo "A list page of 100 caches is $LIST_BYTES bytes: $GOAL_RPS req/s of it would be" \
		"$((LIST_BYTES * GOAL_RPS / 1048576)) MiB/s of JSON."
	echo
	echo "| request | req/s | vs. goal | p50 | p99 | p99 vs. goal | MB/s | errors | goal |"
	echo "|---|---|---|---|---|---|---|---|---|"
	printf '%s\n' "${ROWS[@]}"
} | tee "$OUT_MD"
