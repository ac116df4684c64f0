#!/bin/bash
# The API never waits on a registry: against a registry that accepts connections and never
# answers (tests/lib/stallregistry.py), match=best requests answer at once (503 InProgress with
# Retry-After) while imcd's resolver asks, /healthz keeps answering, and the resolve ends at its
# deadline (--resolve-timeout) as 504 GatewayTimeout; imcctl waits through the 503s.
# A build that never ends (its layer trickles in, 8 bytes every 3 s) cannot hold imcd hostage:
# DELETE of its cache cancels it (202 Deleting, then the cache is gone with nothing left in the
# store, and its transfer is dropped), a queued one is dropped at once (200); SIGTERM cancels it
# after --shutdown-grace and imcd exits, and at the next start the cache is Failed "cancelled by
# shutdown", not built again.
# Fairness: two such builds of one tenant do not hold both build workers; another tenant's build
# of an image that answers at once still ends Ready.
# Byte quotas count a build by the size it is sized to from its manifest before any layer is
# fetched: of two builds of a large image that both fit the quota at accept time, one fails
# QuotaExceeded once sized, and the other's size counts against the next create.
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
GRACE_S=2
IMCD_ARGS=(--threads 2 --resolve-timeout "$RESOLVE_S" --shutdown-grace "$GRACE_S")
# Two request threads: two requests that block in a handler would hold every one of them.
imcd_start_or_bail "$TEST_TMP/state" "${IMCD_ARGS[@]}"

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

# --- a build that never ends: DELETE cancels it --------------------------------------------------

# trickling REPO: true once the registry has started to trickle REPO's layer.
trickling() {
	grep -q "/v2/$1/blobs/.* trickle-start" "$STALLREG_LOG"
}
# wait_until DESC TIMEOUT_S CMD...: CMD until it succeeds, at most TIMEOUT_S seconds.
wait_until() {
	local desc=$1 timeout=$2 deadline=$(($(date +%s) + $2))
	shift 2
	until "$@"; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "$desc: not after $timeout s" >&2
			return 1
		fi
		sleep 0.2
	done
}
# cache_gone ID: GET answers 404.
cache_gone() {
	http GET "$IMCD_URL/v1/imagecaches/$1"
	[ "$HTTP_STATUS" = 404 ]
}
# store_leftovers ID: what of cache ID is in the state dir (nothing, once it is gone).
store_leftovers() {
	local s=$IMC_STATE
	ls -d "$s/pool/volumes/"* "$s/pool/snapshots/$1.img" "$s/tmp/build-"* "$s/caches/$1.json" \
		2>/dev/null || true
}

DEL=$(create_cache "$STALLREG/trickle/del:1" del) || bail "a cache of a trickling image is created"
QUEUED=$(create_cache "$STALLREG/trickle/del:1" del-queued) ||
	bail "a second cache of the same image is created (it waits for the first)"
check "the build of $DEL is trickling its layer" wait_until "trickle" 60 trickling trickle/del
http DELETE "$IMCD_URL/v1/imagecaches/$QUEUED"
check_eq "DELETE of a queued cache: 200 Deleted" "200 Deleted" \
	"$HTTP_STATUS $(json_get "$HTTP_BODY" .status 2>/dev/null)"
check "... and it is gone" cache_gone "$QUEUED"
http DELETE "$IMCD_URL/v1/imagecaches/$DEL"
check_eq "DELETE of a cache whose build runs: 202 Deleting" "202 Deleting" \
	"$HTTP_STATUS $(json_get "$HTTP_BODY" .status 2>/dev/null)"
check "the build is cancelled and the cache is gone (404)" wait_until "404" 30 cache_gone "$DEL"
check_eq "nothing of it is left in the store (volumes, snapshot, build dir, metadata)" "" \
	"$(store_leftovers "$DEL")"
check "the trickled transfer was dropped" wait_until "trickle-gone" 30 \
	grep -q '/v2/trickle/del/blobs/.* trickle-gone' "$STALLREG_LOG"
check_match "imcd logs the cancelled build" "cache $DEL: Failed: cancelled" "$(cat "$IMCD_LOG")"

# --- SIGTERM cancels a build that never ends, after the grace -------------------------------------

TERM_ID=$(create_cache "$STALLREG/trickle/term:1" term) || bail "a cache of a trickling image is created"
check "the build of $TERM_ID is trickling its layer" wait_until "trickle" 60 trickling trickle/term
STOP_RC=0
stop_pid "$IMCD_PID" $((GRACE_S + 30)) || STOP_RC=$?
IMCD_PID=
check_eq "SIGTERM: imcd exits 0 within --shutdown-grace ${GRACE_S} s + 30 s" 0 "$STOP_RC"
check_fails "... with no sanitizer report in its log" \
	grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"
check_match "imcd logs that it cancelled the build past the grace" \
	"cache $TERM_ID: the build did not end within $((GRACE_S * 1000)) ms of the shutdown" \
	"$(cat "$IMCD_LOG")"
imcd_start_or_bail "$TEST_TMP/state" "${IMCD_ARGS[@]}"
http GET "$IMCD_URL/v1/imagecaches/$TERM_ID"
check_eq "after the restart the cancelled cache is Failed, not built again" Failed \
	"$(json_get "$HTTP_BODY" .status 2>/dev/null)"
check_match "... cancelled by shutdown" '^cancelled by shutdown' \
	"$(json_get "$HTTP_BODY" .statusMessage 2>/dev/null)"
check_eq "... and nothing of its build is left in the store" "" \
	"$(store_leftovers "$TERM_ID" | grep -v "caches/$TERM_ID.json" || true)"

check_clean_shutdown

# --- one tenant's builds that never end do not starve another tenant ------------------------------

TOKEN_A=tenant-a-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
TOKEN_B=tenant-b-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
CFG=$TEST_TMP/imcd.json
(umask 077 && jq -n --arg a "$TOKEN_A" --arg b "$TOKEN_B" \
	'{tokens: [{token: $a, tenant: "team-a"}, {token: $b, tenant: "team-b"}]}' >"$CFG")
# Two build workers (the default): before, team-a's two builds took both.
imcd_start_or_bail "$TEST_TMP/state-fair" "${IMCD_ARGS[@]}" --config "$CFG"
# as TOKEN METHOD PATH [BODY]: http with a bearer token (HTTP_STATUS, HTTP_BODY).
as() {
	local token=$1 method=$2 path=$3 out
	out=$(mktemp "$TEST_TMP/.as.XXXXXX")
	local -a args=(-sS --noproxy '*' -o "$out" -w '%{http_code}' -X "$method" --max-time 30
		-H "Authorization: Bearer $token")
	[ $# -lt 4 ] || args+=(-H 'Content-Type: application/json' --data-binary "$4")
	HTTP_STATUS=$(curl "${args[@]}" "$IMCD_URL$path" 2>/dev/null) || HTTP_STATUS=000
	HTTP_BODY=$(cat "$out")
	rm -f "$out"
}
# create_as TOKEN REF NAME: prints the id of a new cache.
create_as() {
	as "$1" POST /v1/imagecaches "$(jq -cn --arg r "$2" --arg n "$3" '{name: $n, images: [{ref: $r}]}')"
	[ "$HTTP_STATUS" = 202 ] || {
		echo "POST: $HTTP_STATUS $HTTP_BODY" >&2
		return 1
	}
	jq -r .id <<<"$HTTP_BODY"
}
# status_as TOKEN ID: the cache's status.
status_as() {
	as "$1" GET "/v1/imagecaches/$2"
	jq -r '.status // empty' <<<"$HTTP_BODY"
}
ready_as() {
	[ "$(status_as "$1" "$2")" = Ready ]
}
A1=$(create_as "$TOKEN_A" "$STALLREG/trickle/fair-a1:1" a1) || bail "team-a creates a trickling cache"
A2=$(create_as "$TOKEN_A" "$STALLREG/trickle/fair-a2:1" a2) || bail "team-a creates a second one"
check "team-a's first build trickles its layer" wait_until "trickle" 60 trickling trickle/fair-a1
B1=$(create_as "$TOKEN_B" "$STALLREG/fast/fair-b:1" b1) || bail "team-b creates a cache"
check "team-b's build ends Ready while team-a's builds never end" wait_until "Ready" 120 \
	ready_as "$TOKEN_B" "$B1"
as "$TOKEN_A" GET "/v1/imagecaches/$A2"
check_eq "team-a's second build waits (one worker stays for other tenants)" "Creating Created" \
	"$(jq -r '.status + " " + ([.events[].type] | join(" "))' <<<"$HTTP_BODY")"
check_eq "team-a's first build still runs" Creating "$(status_as "$TOKEN_A" "$A1")"

check_clean_shutdown

# --- a byte quota holds the sized builds ------------------------------------------------------------

# Each image declares a 160 MiB layer, so the builder sizes its cache to 1280 MiB; the quota
# (2.4 GiB) holds two accepted creates (1 GiB each before they are sized), not two sized builds.
QUOTA=2576980377
QCFG=$TEST_TMP/quota.json
(umask 077 && jq -n --argjson q "$QUOTA" '{tenants: {default: {maxBytes: $q}}}' >"$QCFG")
imcd_start_or_bail "$TEST_TMP/state-quota" "${IMCD_ARGS[@]}" --config "$QCFG"
H1=$(create_cache "$STALLREG/trickle/huge-q1:1" huge1) || bail "a cache of a large image is accepted"
H2=$(create_cache "$STALLREG/trickle/huge-q2:1" huge2) || bail "a second one is accepted"
# quota_failed: one of the two is Failed by the quota; QF_REPO (its repository) and QR (the
# other's id).
quota_failed() {
	local id msg
	for id in "$H1" "$H2"; do
		http GET "$IMCD_URL/v1/imagecaches/$id"
		msg=$(json_get "$HTTP_BODY" '.statusMessage // empty' 2>/dev/null || true)
		if [ "$(json_get "$HTTP_BODY" .status)" = Failed ] && [[ $msg == *"quota of $QUOTA bytes exceeded"* ]]; then
			if [ "$id" = "$H1" ]; then QF_REPO=huge-q1 QR=$H2; else QF_REPO=huge-q2 QR=$H1; fi
			return 0
		fi
	done
	return 1
}
check "once sized, one of the two builds fails QuotaExceeded before fetching a layer" \
	wait_until "quota" 60 quota_failed
quota_failed || true
check_eq "... the other one builds on (Creating)" Creating \
	"$(curl -sS "$IMCD_URL/v1/imagecaches/$QR" | jq -r .status)"
check_fails "... and the failed one fetched no layer" grep -q "/v2/trickle/$QF_REPO/blobs/.* trickle" \
	"$STALLREG_LOG"
http POST "$IMCD_URL/v1/imagecaches" "$(jq -cn --arg r "$STALLREG/fast/q3:1" '{images: [{ref: $r}], size: 2147483648}')"
check_eq "a 2 GiB create on top of the sized build (1280 MiB): 403 QuotaExceeded" "403 QuotaExceeded" \
	"$HTTP_STATUS $(json_get "$HTTP_BODY" .error.code 2>/dev/null)"

check_clean_shutdown
done_testing
