#!/bin/bash
# Startup traces of lazy lowers (docs/distribution.md, "Startup trace").  The routes first: GET
# /v1/imagecaches/{id}/trace is 404 while there is none, another tenant's cache is 404 for GET
# and PUT, a request without a token 401; a trace that is not JSON, names an offset that is no
# data chunk of the index, names one twice, has another chunk size or an unknown query
# parameter is 400, one of more than 65536 offsets or 1 MiB 413, and none of them is stored.
# Then two cold hosts: the first (background fill held) starts a pod that reads two files; its
# lazy server sends the chunks those reads touched, in order, to imcd when it exits; imcd keeps
# it (a later PUT is 409 unless ?replace=true; it survives a restart of imcd).  A second cold
# host (a fresh agent state dir) fetches the traced chunks first, and the same reads then fetch
# fewer chunks on demand (counted by imcd's log and the server's stats), with no chunk sent
# twice; it records no trace of its own.  A stale trace (offsets of no chunk, duplicates, written
# into imcd's store behind its back) is used entry by entry.  Deleting the cache removes its
# trace.  A server whose --trace-window ends while it runs sends what it has then, and reads after
# that change nothing.  Every exit path leaves no mount (FUSE included), loop device or process.
# Needs root, loop devices, overlayfs and /dev/fuse; the holds need a -DIMC_TESTING build.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl skopeo losetup findmnt mkfs.xfs sha256sum tail
need_programs imcd imc-attach
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || skip_all "needs /dev/fuse"
grep -qa IMC_LAZY_HOLD_WALK "$IMC_BIN/imc-attach" ||
	skip_all "needs a -DIMC_TESTING build (make O=build/check SAN=1)"

mkdir -p "$TEST_TMP/asan"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$TEST_TMP/asan/report"

# --- imcd with two tenants, a Ready cache of team-a and its index -------------------------------

TOKEN_A=trace-a-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
TOKEN_B=trace-b-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
CFG=$TEST_TMP/imcd.json
(umask 077 && jq -n --arg a "$TOKEN_A" --arg b "$TOKEN_B" \
	'{tokens: [{token: $a, tenant: "team-a"}, {token: $b, tenant: "team-b"}]}' >"$CFG")

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
WORK=$TEST_TMP/work
mk_layout "$LAYOUT"
mkimage_busybox_rootfs "$WORK/l1"
mkdir -p "$WORK/l1/blob"
head -c $((9 << 20)) /dev/urandom >"$WORK/l1/blob/a.bin"
head -c $((7 << 20)) /dev/urandom >"$WORK/l1/blob/b.bin"
head -c $((16 << 20)) /dev/urandom >"$WORK/l1/blob/rest.bin"
A_SHA=$(sha256sum <"$WORK/l1/blob/a.bin" | cut -d' ' -f1)
B_SHA=$(sha256sum <"$WORK/l1/blob/b.bin" | cut -d' ' -f1)
L1=$(mk_layer "$LAYOUT" "$WORK/l1" gzip)
M=$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1")
mk_tag "$LAYOUT" v1 "$M"
check "image pushes" mkimage_push "$LAYOUT" v1 imc/trace:v1

STATE=$TEST_TMP/server
defer imc_teardown_quiet
_imcd_launch "$STATE" 127.0.0.1:0 --insecure-registry "$REGISTRY" --config "$CFG" ||
	bail "imcd starts" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL with two tenants"

# [BODY=JSON|BODY_FILE=FILE] req TOKEN|- METHOD PATH: sets HTTP_STATUS and HTTP_BODY.
req() {
	local token=$1 method=$2 path=$3 out
	out=$(mktemp "$TEST_TMP/.req.XXXXXX")
	local -a args=(-sS --noproxy '*' -o "$out" -w '%{http_code}' -X "$method" --max-time 30)
	[ "$token" = - ] || args+=(-H "Authorization: Bearer $token")
	if [ -n "${BODY_FILE-}" ]; then
		args+=(-H 'Content-Type: application/json' --data-binary "@$BODY_FILE")
	elif [ -n "${BODY+set}" ]; then
		printf '%s' "$BODY" >"$out.req"
		args+=(-H 'Content-Type: application/json' --data-binary "@$out.req")
	fi
	HTTP_STATUS=$(curl "${args[@]}" "$IMCD_URL$path" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	rm -f "$out" "$out.req"
}
# req_settled TOKEN GET PATH: req again while imcd answers 202 or 503 (for at most 120 s).
req_settled() {
	local deadline=$(($(date +%s) + 120))
	while :; do
		req "$@"
		case "$HTTP_STATUS" in
		202 | 503) [ "$(date +%s)" -lt "$deadline" ] || return 0 ;;
		*) return 0 ;;
		esac
		sleep 0.2
	done
}

BODY=$(jq -cn --arg ref "$REGISTRY/imc/trace:v1" '{name: "trace", images: [{ref: $ref}]}') \
	req "$TOKEN_A" POST /v1/imagecaches
[ "$HTTP_STATUS" = 202 ] || bail "team-a creates a cache" "$HTTP_STATUS $HTTP_BODY"
ID=$(jq -r .id <<<"$HTTP_BODY")
for _ in $(seq 1 1200); do
	req "$TOKEN_A" GET "/v1/imagecaches/$ID"
	[ "$(jq -r .status <<<"$HTTP_BODY" 2>/dev/null)" = Creating ] || break
	sleep 0.1
done
[ "$(jq -r .status <<<"$HTTP_BODY")" = Ready ] || bail "cache $ID is Ready" "$HTTP_BODY"
ok "team-a's cache $ID is Ready"
req_settled "$TOKEN_A" GET "/v1/imagecaches/$ID/index"
check_eq "its index is served" 200 "$HTTP_STATUS"
INDEX=$HTTP_BODY
TOTAL=$(jq '.chunks | length' <<<"$INDEX")
CS=$(jq -r .chunkSize <<<"$INDEX")
note "$TOTAL data chunks of $CS bytes"
OFF0=$(jq '.chunks[0].offset' <<<"$INDEX")
OFF1=$(jq '.chunks[1].offset' <<<"$INDEX")
MT=application/vnd.imcache.trace.v1+json
trace_json() { # OFFSET... -> a trace of the index's chunk size
	jq -cn --arg mt "$MT" --argjson cs "$CS" '{mediaType: $mt, chunkSize: $cs,
		offsets: ($ARGS.positional | map(tonumber))}' --args "$@"
}
# A chunk offset no data chunk starts at: the first slot past the last data chunk's, else a
# zero slot inside.
NODATA=$(jq --argjson cs "$CS" '[.chunks[].offset] as $o |
	[range(0; (.size + $cs - 1) / $cs | floor) | . * $cs | select(. as $x | $o | index($x) | not)]
	| first // (.size + $cs)' <<<"$INDEX")
TRACE_FILE=$STATE/chunks/trace/$ID.json
TP=/v1/imagecaches/$ID/trace

# --- the routes -------------------------------------------------------------------------------

req "$TOKEN_A" GET "$TP"
check_eq "GET of a trace that does not exist: 404" 404 "$HTTP_STATUS"
check_eq "it says so" NotFound "$(jq -r .error.code <<<"$HTTP_BODY")"
req - GET "$TP"
check_eq "GET without a token: 401" 401 "$HTTP_STATUS"
BODY=$(trace_json "$OFF0") req - PUT "$TP"
check_eq "PUT without a token: 401" 401 "$HTTP_STATUS"
BODY=$(trace_json "$OFF0") req "$TOKEN_B" PUT "$TP"
check_eq "another tenant's PUT: 404, as for GET of the cache" 404 "$HTTP_STATUS"
req "$TOKEN_B" GET "$TP"
check_eq "another tenant's GET: 404" 404 "$HTTP_STATUS"
bad_put() { # DESC STATUS MESSAGE-REGEX [QUERY]
	req "$TOKEN_A" PUT "$TP${4:-}"
	check_eq "$1: $2" "$2" "$HTTP_STATUS"
	check_match "$1: the message says why" "$3" "$(jq -r .error.message <<<"$HTTP_BODY" 2>&1)"
}
BODY='{"mediaType":' bad_put "a PUT that is not JSON" 400 "malformed JSON"
BODY=$(trace_json "$OFF0" "$NODATA") bad_put "a PUT naming an offset of no data chunk" 400 \
	"offsets\[1\] $NODATA: no data chunk"
BODY=$(trace_json "$OFF0" "$OFF1" "$OFF0") bad_put "a PUT naming a chunk twice" 400 \
	"offsets\[2\] $OFF0: given twice"
BODY=$(jq -cn --arg mt "$MT" --argjson cs "$((CS * 2))" --argjson o "$OFF0" \
	'{mediaType: $mt, chunkSize: $cs, offsets: [$o]}') bad_put "a PUT of another chunk size" 400 \
	"chunkSize"
BODY=$(trace_json "$OFF0" | jq -c '.mediaType = "x"') bad_put "a PUT of another media type" 400 \
	"mediaType"
BODY=$(trace_json "$OFF0") bad_put "a PUT with an unknown query parameter" 400 "unknown" "?force=true"
jq -cn --arg mt "$MT" --argjson cs "$CS" '{mediaType: $mt, chunkSize: $cs,
	offsets: [range(0; 65537) | 0]}' >"$TEST_TMP/many.json"
BODY_FILE=$TEST_TMP/many.json bad_put "a PUT of 65537 offsets" 413 "more than 65536"
{
	printf '{"mediaType":"%s","chunkSize":%s,"offsets":[' "$MT" "$CS"
	head -c $((1 << 20)) /dev/zero | tr '\0' ' '
	printf ']}'
} >"$TEST_TMP/big.json"
BODY_FILE=$TEST_TMP/big.json req "$TOKEN_A" PUT "$TP"
check_eq "a PUT of more than 1 MiB: 413" 413 "$HTTP_STATUS"
req "$TOKEN_A" DELETE "$TP"
check_eq "DELETE of a trace: 405" 405 "$HTTP_STATUS"
req "$TOKEN_A" GET "$TP"
check_eq "after all of them, still no trace" 404 "$HTTP_STATUS"
check "and no trace file" test ! -e "$TRACE_FILE"

# --- the agents ---------------------------------------------------------------------------------

mkdir -p "$TEST_TMP/m"
AGENTS=()
TAILS=()
ia() { # STATE ARG...
	local st=$1
	shift
	env -u IMCACHE_TOKEN "$IMC_BIN/imc-attach" --state-dir "$st" --lower-grace 0 \
		--server "$IMCD_URL" --token "$TOKEN_A" "$@"
}
# shellcheck disable=SC2317 # called through defer
cleanup_agents() {
	local a m p
	for a in "${AGENTS[@]}"; do
		for m in $(tmp_mounts | grep "^$TEST_TMP/m/" | sort -r); do
			ia "$a" detach "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
		done
		ia "$a" reconcile >/dev/null 2>&1 || true
		umount -l "$a/lowers/$ID.fuse" 2>/dev/null || true
		"$IMC_BIN/imc-attach" --state-dir "$a" teardown >/dev/null 2>&1 || true
	done
	for p in "${TAILS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
}
defer cleanup_agents
pod() {
	mkdir -p "$TEST_TMP/m/$1"
	printf '%s' "$TEST_TMP/m/$1"
}
MARK=0
mark() { MARK=$(wc -l <"$IMCD_LOG"); }
sent() { # chunk GETs answered since the mark
	tail -n +"$((MARK + 1))" "$IMCD_LOG" | grep -c 'GET /v1/chunks/.*: 200' || true
}
dups() { # chunks sent more than once since the mark
	tail -n +"$((MARK + 1))" "$IMCD_LOG" | grep -o 'GET /v1/chunks/sha256:[0-9a-f]*: 200' |
		sort | uniq -d | wc -l
}
server_pid() { tr -d '[:space:]' <"$1/lowers/$ID.lazy" 2>/dev/null; }
# The server's log goes with its lower when the lower is released: a copy of it, by tail -f
# (which keeps reading the file it opened), for what it prints when it exits.
copy_log() { # STATE COPY
	tail -n +1 -f "$1/lowers/$ID.lazy.log" >"$2" 2>/dev/null &
	TAILS+=($!)
}
stat_of() { # COPY FIELD-REGEX: the number before FIELD-REGEX in the server's last stats line
	grep 'chunks local' "$1" | tail -n1 | grep -o "[0-9]* $2" | head -n1 | cut -d' ' -f1
}
wait_pid_gone() {
	local i
	for i in $(seq 1 600); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}
leaks() {
	local a=$1
	tmp_mounts | grep -E "^($TEST_TMP/m/|$a/lowers)" | sed 's/^/mount /' || true
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v l="$a/lowers/" -v c="$a/pool/clones/" \
		'index($2, l) == 1 || index($2, c) == 1 { print "loop " $0 }'
	find "$a/lowers" "$a/attachments" "$a/overlays" "$a/pool/scratch/overlays" "$a/pool/volumes" \
		-mindepth 1 -printf 'file %p\n' 2>/dev/null || true # pods go to one of the two
}
no_leaks() { # STATE WHAT
	local i left
	for i in $(seq 1 100); do
		left=$(leaks "$1")
		[ -z "$left" ] && break
		sleep 0.05
	done
	check_eq "$2: nothing left (mounts incl. FUSE, loop devices, records, volumes)" "" "$left"
}
read_files() { # POD DESC
	check_eq "$2 reads a.bin right" "$A_SHA" "$(sha256sum <"$1/blob/a.bin" | cut -d' ' -f1)"
	check_eq "$2 reads b.bin right" "$B_SHA" "$(sha256sum <"$1/blob/b.bin" | cut -d' ' -f1)"
}
# detach_all STATE POD PID COPY DESC: the last detach ends the server, whose stats reach COPY.
detach_all() {
	check "$5: detach" ia "$1" detach "$2"
	check "$5: the last detach ends the FUSE server" wait_pid_gone "$3"
	wait_for_match "$4" 'chunks local' 30 || true
	check_match "$5: the server printed its counts" "fetched on demand" "$(cat "$4")"
	no_leaks "$1" "$5"
}

# Host 1: no trace yet.  The background fill is held, so every chunk the reads need is fetched
# for them.
A1=$TEST_TMP/agent1
AGENTS+=("$A1")
HOLD1=$TEST_TMP/go1
P1=$(pod p1)
check "host 1: lazy attach (background fill held)" \
	env IMC_LAZY_HOLD_BACKGROUND="$HOLD1" "$IMC_BIN/imc-attach" --state-dir "$A1" \
	--lower-grace 0 --server "$IMCD_URL" --token "$TOKEN_A" --trace-window 600 attach "$ID" "$P1"
SPID1=$(server_pid "$A1")
copy_log "$A1" "$TEST_TMP/log1"
mark
read_files "$P1" "host 1"
DEMAND1=$(sent)
note "host 1: $DEMAND1 chunks fetched for the reads"
detach_all "$A1" "$P1" "$SPID1" "$TEST_TMP/log1" "host 1"
LOG1=$(cat "$TEST_TMP/log1")
check_match "host 1 found no trace and recorded one" "startup trace of [0-9]* chunks sent to imcd" \
	"$LOG1"
RECORDED=$(grep -o 'startup trace of [0-9]* chunks sent' <<<"$LOG1" | grep -o '[0-9]*')
STAT_DEMAND1=$(stat_of "$TEST_TMP/log1" "fetched on demand")
check_match "its stats count the recorded trace" "$RECORDED recorded and sent" "$LOG1"

req "$TOKEN_A" GET "$TP"
check_eq "imcd serves the trace" 200 "$HTTP_STATUS"
TRACE=$HTTP_BODY
check_eq "its shape" "$MT $CS $RECORDED" \
	"$(jq -r '"\(.mediaType) \(.chunkSize) \(.offsets | length)"' <<<"$TRACE")"
check_eq "no offset twice" "$RECORDED" "$(jq '.offsets | unique | length' <<<"$TRACE")"
check_eq "every offset a data chunk of the index" 0 \
	"$(jq -n --argjson t "$TRACE" --argjson i "$INDEX" \
		'[$t.offsets[] | . as $o | select([$i.chunks[].offset] | index($o) | not)] | length')"
if [ "$RECORDED" -ge "$DEMAND1" ] && [ "$RECORDED" -lt "$TOTAL" ]; then
	ok "the trace names the $RECORDED chunks reads touched (of $TOTAL)"
else
	not_ok "the trace names what the reads touched" "$RECORDED recorded, $DEMAND1 fetched, $TOTAL"
fi
req "$TOKEN_B" GET "$TP"
check_eq "team-b still gets 404" 404 "$HTTP_STATUS"
check "the trace is a file beside the index" test -s "$TRACE_FILE"

BODY=$(trace_json "$OFF1") req "$TOKEN_A" PUT "$TP"
check_eq "a second PUT is refused: the first trace is kept" 409 "$HTTP_STATUS"
req "$TOKEN_A" GET "$TP"
check_eq "the first trace is unchanged" "$TRACE" "$HTTP_BODY"
BODY=$(trace_json "$OFF1") req "$TOKEN_A" PUT "$TP?replace=true"
check_eq "a PUT with ?replace=true replaces it" 201 "$HTTP_STATUS"
req "$TOKEN_A" GET "$TP"
check_eq "the trace is the new one" "[$OFF1]" "$(jq -c .offsets <<<"$HTTP_BODY")"
BODY=$TRACE req "$TOKEN_A" PUT "$TP?replace=true"
check_eq "the recorded trace goes back" 201 "$HTTP_STATUS"

RC=0
imcd_stop || RC=$?
check_eq "imcd stops" 0 "$RC"
_imcd_launch "$STATE" 127.0.0.1:0 --insecure-registry "$REGISTRY" --config "$CFG" ||
	bail "imcd restarts" "$(imcd_log_tail 30)"
req "$TOKEN_A" GET "$TP"
check_eq "the trace survives a restart of imcd" "$TRACE" "$HTTP_BODY"

# Host 2: a fresh state dir.  Its background threads take the trace first; the walk in order
# after it is held, so what the reads then fetch is what the trace missed.
A2=$TEST_TMP/agent2
AGENTS+=("$A2")
HOLD2=$TEST_TMP/go2
P2=$(pod p2)
mark
check "host 2: lazy attach (the walk after the trace held)" \
	env IMC_LAZY_HOLD_WALK="$HOLD2" "$IMC_BIN/imc-attach" --state-dir "$A2" --lower-grace 0 \
	--server "$IMCD_URL" --token "$TOKEN_A" attach "$ID" "$P2"
SPID2=$(server_pid "$A2")
copy_log "$A2" "$TEST_TMP/log2"
check "host 2: the trace's chunks are fetched first" \
	wait_for_match "$TEST_TMP/log2" "the startup trace's [0-9]* chunks are done" 120
check_match "host 2 took the trace's $RECORDED entries" \
	"startup trace from imcd: $RECORDED entries, $RECORDED chunks fetched first" \
	"$(cat "$TEST_TMP/log2")"
echo 3 >/proc/sys/vm/drop_caches
mark
read_files "$P2" "host 2"
DEMAND2=$(sent)
note "host 2: $DEMAND2 chunks fetched for the same reads (host 1: $DEMAND1)"
if [ "$DEMAND2" -lt "$DEMAND1" ]; then
	ok "host 2 fetches fewer chunks on demand ($DEMAND2 < $DEMAND1, imcd's log)"
else
	not_ok "host 2 fetches fewer chunks on demand" "$DEMAND2 vs $DEMAND1"
fi
mark
touch "$HOLD2"
wait_for_file "$A2/pool/snapshots/$ID.img" 120 || true
check "host 2: the rest is filled and sealed" test -e "$A2/pool/snapshots/$ID.img"
check_eq "host 2: no chunk was sent twice after the trace" 0 "$(dups)"
detach_all "$A2" "$P2" "$SPID2" "$TEST_TMP/log2" "host 2"
STAT_DEMAND2=$(stat_of "$TEST_TMP/log2" "fetched on demand")
PREFETCHED2=$(stat_of "$TEST_TMP/log2" "of them prefetched from the startup trace")
note "server stats: host 1 $STAT_DEMAND1 on demand; host 2 $STAT_DEMAND2 on demand, $PREFETCHED2 prefetched from the trace"
if [ -n "$STAT_DEMAND2" ] && [ -n "$STAT_DEMAND1" ] && [ "$STAT_DEMAND2" -lt "$STAT_DEMAND1" ]; then
	ok "the server's stats agree: $STAT_DEMAND2 < $STAT_DEMAND1 on demand"
else
	not_ok "the server's stats count fewer on-demand fetches" "$STAT_DEMAND2 vs $STAT_DEMAND1"
fi
if [ -n "$PREFETCHED2" ] && [ "$PREFETCHED2" -gt 0 ]; then
	ok "host 2 prefetched $PREFETCHED2 chunks from the trace"
else
	not_ok "host 2 prefetches from the trace" "$(grep 'chunks local' "$TEST_TMP/log2")"
fi
check_fails "host 2 sent no trace of its own" grep -q "sent to imcd" "$TEST_TMP/log2"
req "$TOKEN_A" GET "$TP"
check_eq "imcd's trace is still host 1's" "$TRACE" "$HTTP_BODY"

# Host 3: a stale trace, written into imcd's store behind its back (imcd refuses to store one):
# two offsets of no data chunk, a duplicate and one that is no chunk's start around two good ones.
jq -cn --arg mt "$MT" --argjson cs "$CS" --argjson a "$OFF0" --argjson b "$OFF1" \
	--argjson n "$NODATA" '{chunkSize: $cs, mediaType: $mt,
	offsets: [$n, $b, ($n + $cs * 1000), $b, ($a + 1), $a]}' >"$TRACE_FILE"
A3=$TEST_TMP/agent3
AGENTS+=("$A3")
HOLD3=$TEST_TMP/go3
P3=$(pod p3)
check "host 3: lazy attach with a stale trace" \
	env IMC_LAZY_HOLD_WALK="$HOLD3" "$IMC_BIN/imc-attach" --state-dir "$A3" --lower-grace 0 \
	--server "$IMCD_URL" --token "$TOKEN_A" attach "$ID" "$P3"
SPID3=$(server_pid "$A3")
copy_log "$A3" "$TEST_TMP/log3"
wait_for_match "$TEST_TMP/log3" "startup trace from imcd" 30 || true
check_match "host 3 uses the trace's 2 good entries of 6" \
	"startup trace from imcd: 6 entries, 2 chunks fetched first" "$(cat "$TEST_TMP/log3")"
read_files "$P3" "host 3"
touch "$HOLD3"
detach_all "$A3" "$P3" "$SPID3" "$TEST_TMP/log3" "host 3"
check_match "host 3's stats: 2 used" "startup trace: 2 used" "$(cat "$TEST_TMP/log3")"

# Host 4: the window ends while the server runs.  imcd's trace removed behind its back again
# (there is no DELETE), so host 4 records for --trace-window 1: once that second is over it sends
# what it has (the mount's reads, if they came in time: either way it acts before it exits), and
# reads after it change nothing.
rm -f "$TRACE_FILE"
req "$TOKEN_A" GET "$TP"
check_eq "with the file gone imcd has no trace" 404 "$HTTP_STATUS"
A4=$TEST_TMP/agent4
AGENTS+=("$A4")
HOLD4=$TEST_TMP/go4
P4=$(pod p4)
check "host 4: lazy attach, --trace-window 1" \
	env IMC_LAZY_HOLD_BACKGROUND="$HOLD4" "$IMC_BIN/imc-attach" --state-dir "$A4" \
	--lower-grace 0 --server "$IMCD_URL" --token "$TOKEN_A" --trace-window 1 attach "$ID" "$P4"
SPID4=$(server_pid "$A4")
copy_log "$A4" "$TEST_TMP/log4"
WINDOW_END='startup trace of [0-9]* chunks sent to imcd\|no chunk read while tracing'
check "host 4: the window's end is acted on" wait_for_match "$TEST_TMP/log4" "$WINDOW_END" 60
check "host 4: while the server still runs" kill -0 "$SPID4"
req "$TOKEN_A" GET "$TP"
BEFORE="$HTTP_STATUS $HTTP_BODY"
note "host 4: $(grep -o "$WINDOW_END" "$TEST_TMP/log4"); imcd: ${BEFORE:0:120}"
read_files "$P4" "host 4"
touch "$HOLD4"
detach_all "$A4" "$P4" "$SPID4" "$TEST_TMP/log4" "host 4"
req "$TOKEN_A" GET "$TP"
check_eq "host 4: the reads after the window changed no trace" "$BEFORE" "$HTTP_STATUS $HTTP_BODY"
check_eq "host 4: one window end, no send at exit" 1 "$(grep -c "$WINDOW_END" "$TEST_TMP/log4")"

# --- the trace goes with its cache ----------------------------------------------------------------

req "$TOKEN_B" DELETE "/v1/imagecaches/$ID"
check_eq "team-b cannot delete team-a's cache" 404 "$HTTP_STATUS"
req "$TOKEN_A" DELETE "/v1/imagecaches/$ID"
check_eq "team-a deletes the cache" 200 "$HTTP_STATUS"
check "its trace file is removed" wait_gone "$TRACE_FILE" 60
req "$TOKEN_A" GET "$TP"
check_eq "GET of the trace of a deleted cache: 404" 404 "$HTTP_STATUS"

for p in "${TAILS[@]}"; do
	kill "$p" 2>/dev/null || true
done
check_eq "no sanitizer report from any process (the FUSE servers included)" "" \
	"$(cat "$TEST_TMP"/asan/report* 2>/dev/null | head -40)"

done_testing
