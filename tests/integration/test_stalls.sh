#!/bin/bash
# The API never waits on a registry: against a registry that accepts connections and never
# answers (tests/lib/stallregistry.py), match=best requests answer at once (503 InProgress with
# Retry-After) while imcd's resolver asks, /healthz keeps answering, and the resolve ends at its
# deadline (--resolve-timeout) as 504 GatewayTimeout; imcctl waits through the 503s.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl python3 losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

stallregistry_start || bail "the misbehaving registry starts"
ok "the misbehaving registry listens at $STALLREG"
RESOLVE_S=3
# Two request threads: two requests that block in a handler would hold every one of them.
imcd_start_or_bail "$TEST_TMP/state" --threads 2 --resolve-timeout "$RESOLVE_S"

# healthz DESC: GET /healthz answers 200 within 5 s (the failure criterion is the timeout).
healthz() {
	check_eq "$1" 200 "$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 \
		"$IMCD_URL/healthz" 2>/dev/null || true)"
}

# --- match=best against a registry that never answers -----------------------------------------

for n in 1 2; do
	curl -sS --noproxy '*' -o "$TEST_TMP/match$n.body" -D "$TEST_TMP/match$n.head" \
		-w '%{http_code}' --max-time 60 \
		"$IMCD_URL/v1/imagecaches?image=$STALLREG/stall/img$n:1&match=best" \
		>"$TEST_TMP/match$n.code" 2>/dev/null &
	eval "MATCH_PID$n=$!"
done
defer sh -c "kill $MATCH_PID1 $MATCH_PID2 2>/dev/null || true"
sleep 1 # both requests are in imcd by now
healthz "/healthz answers while two match=best requests wait on a stalled registry"
wait "$MATCH_PID1" "$MATCH_PID2" || true
for n in 1 2; do
	check_eq "match=best $n: 503 InProgress" "503 InProgress" \
		"$(cat "$TEST_TMP/match$n.code") $(jq -r .error.code "$TEST_TMP/match$n.body" 2>/dev/null)"
	check_match "match=best $n: with Retry-After" '^[Rr]etry-[Aa]fter: [1-9]' \
		"$(grep -i '^retry-after:' "$TEST_TMP/match$n.head" | tr -d '\r')"
done
check_match "the registry saw the resolver's requests (and answered none)" 'stall/img1.* stall' \
	"$(cat "$STALLREG_LOG")"
http_settled GET "$IMCD_URL/v1/imagecaches?image=$STALLREG/stall/img1:1&match=best" \
	$((RESOLVE_S + 30))
check_eq "past --resolve-timeout the answer is 504 GatewayTimeout" "504 GatewayTimeout" \
	"$HTTP_STATUS $(json_get "$HTTP_BODY" .error.code 2>/dev/null)"
check_match "... saying the registry did not answer within $RESOLVE_S s" \
	"did not answer within $RESOLVE_S s" "$(json_get "$HTTP_BODY" .error.message 2>/dev/null)"
healthz "/healthz answers after the resolves timed out"
check_fails_with "imcctl list --match best waits through the 503s and reports the timeout" \
	'504 GatewayTimeout' imcctl list --image "$STALLREG/stall/img3:1" --match best
check "imcctl list --match best of an image the resolver can reach: answered" \
	imcctl list --image "$STALLREG/fast/img:1" --match best

check_clean_shutdown
done_testing
