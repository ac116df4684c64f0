#!/bin/bash
# Slow clients cannot lock others out of imcd: a request must be all in within --request-timeout
# of its connection opening, however often the client sends a header line (libmicrohttpd's own
# timeout restarts with every byte); one client address holds at most
# --max-connections-per-client connections; past --max-connections minus --connection-reserve
# a new connection closes the oldest one still waiting for its request, and the reserve serves
# /healthz and /metrics.  Small limits so that it is quick; slow clients come from several
# loopback addresses (127.0.0.0/8 all reaches imcd on 127.0.0.1).
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl python3 losetup findmnt mkfs.xfs awk
need_programs imcd imc-attach

SLOW="python3 $(dirname "$0")/../lib/slowloris.py"
STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE" --max-connections 16 --max-connections-per-client 4 \
	--connection-reserve 4 --request-timeout 3 --threads 2
HOSTPORT=${IMCD_URL#http://}
check_match "imcd logs its connection limits" \
	'connections: 16, 4 per client, 4 in reserve, 3 s per request' "$(cat "$IMCD_LOG")"

# metric SAMPLE: its value on the /metrics page (empty when there is none).
metric() {
	http GET "$IMCD_URL/metrics"
	awk -v s="$1" '$1 == s { print $2; exit }' <<<"$HTTP_BODY"
}

# --- the deadline is not moved by each line ---------------------------------------------------

# One header line every 0.5 s: with an idle timeout the connection would live forever.
OUT=$($SLOW "$HOSTPORT" --sources 127.0.0.2 --per-source 1 --interval 0.5 --duration 30 --once)
note "one slow client: $OUT"
check_eq "a client sending a header line every 0.5 s is closed by imcd, unanswered" "1 0" \
	"$(jq -r '"\(.closed_by_server) \(.answered)"' <<<"$OUT")"
check "... before it sent 20 lines (10 s; the request timeout is 3 s)" \
	test "$(jq -r .max_lines <<<"$OUT")" -lt 20
check_eq "metrics: one connection closed at its request deadline" 1 \
	"$(metric 'imcache_http_connections_closed_total{reason="request_timeout"}')"

# --- one client address holds at most 4 connections --------------------------------------------

# For 2 s, within the 3 s deadline: only the per-client cap closes connections.
OUT=$($SLOW "$HOSTPORT" --sources 127.0.0.3 --per-source 8 --interval 1 --duration 2 --once)
note "eight connections from one address: $OUT"
check_eq "8 connections from one address: 4 refused at once, 4 kept" "4 4 4" \
	"$(jq -r '"\(.closed_by_server) \(.refused_fast) \(.open_now)"' <<<"$OUT")"
check_eq "metrics: the 4 refused connections counted" 4 \
	"$(metric imcache_http_connections_refused_total)"

# --- many slow clients, from ten addresses: the API still answers --------------------------------

# 40 slow connections wanted (10 addresses x 4) against 16 in all; each comes back half a second
# after imcd closes it.
SLOW_OUT=$TEST_TMP/slow.json
$SLOW "$HOSTPORT" --sources "$(seq -s, -f '127.0.0.%g' 10 19)" --per-source 4 --interval 1 \
	--duration 120 >"$SLOW_OUT" &
SLOW_PID=$!
# shellcheck disable=SC2317 # deferred
stop_slow() { kill "$SLOW_PID" 2>/dev/null || true; }
defer stop_slow
# Until the attack is steady: the slow clients hold every general place, and each one that
# comes back closes the one that has waited longest (so it cannot hold a place for long).
for _ in $(seq 150); do
	[ "$(metric 'imcache_http_connections_closed_total{reason="evicted"}')" -ge 40 ] \
		2>/dev/null && break
	sleep 0.2
done
check_match "metrics: imcd closed waiting slow connections to make room (40 or more)" \
	'^([4-9][0-9]|[1-9][0-9]{2,})$' \
	"$(metric 'imcache_http_connections_closed_total{reason="evicted"}')"
note "open connections now: $(metric imcache_http_connections) (of 16)"
for i in 1 2 3 4 5; do
	STATUS=$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 10 \
		"$IMCD_URL/healthz" 2>/dev/null) || STATUS=${STATUS:-000}
	check_eq "while slow clients hold the connections, a new client's /healthz answers ($i)" \
		200 "$STATUS"
done
http GET "$IMCD_URL/v1/imagecaches"
check_eq "... and so does GET /v1/imagecaches" 200 "$HTTP_STATUS"
http GET "$IMCD_URL/metrics"
check_eq "... and /metrics" 200 "$HTTP_STATUS"
check "the slow clients are still at it" kill -0 "$SLOW_PID"
stop_slow
wait "$SLOW_PID" || true
OUT=$(cat "$SLOW_OUT")
note "ten slow addresses: $OUT"
check_eq "no slow connection ever got an answer" 0 "$(jq -r .answered <<<"$OUT" 2>&1)"
check "slow connections were closed by imcd and came back" \
	test "$(jq -r .closed_by_server <<<"$OUT")" -gt 0

# --- after them ---------------------------------------------------------------------------------

http GET "$IMCD_URL/healthz"
check_eq "once the slow clients are gone, /healthz answers" 200 "$HTTP_STATUS"
for _ in $(seq 50); do
	[ "$(metric imcache_http_connections)" -le 1 ] 2>/dev/null && break
	sleep 0.2
done
check_eq "their connections are all closed (only the one asking /metrics is open)" 1 \
	"$(metric imcache_http_connections)"
if grep -q 'Server reached connection limit' <(grep ' warn: ' "$IMCD_LOG"); then
	not_ok "refused connections are not logged as warnings, one each" \
		"$(grep -c ' warn: ' "$IMCD_LOG") warnings"
else
	ok "refused connections are not logged as warnings, one each"
fi

check_clean_shutdown

done_testing
