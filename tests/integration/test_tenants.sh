#!/bin/bash
# Bearer tokens and tenants (imcd --config): requests without a token, with a wrong one or with
# another scheme are 401 with a WWW-Authenticate challenge (before routing, body caps or
# anything else); /healthz stays open and /metrics needs a token; two tenants each see, list,
# delete and report attachments of only their own caches, and get only the chunks their own
# caches reference; imcctl --token applies to push; tokens never reach the log; config
# files that are unsafe or wrong are refused at start naming the problem.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs sha256sum
need_programs imcd imc-attach

TOKEN_A=tenant-a-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
TOKEN_B=tenant-b-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
TOKEN_C=tenant-c-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
TOKEN_Q=tenant-q-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
QUOTA_Q=$((3 << 30))
HASH_B=$(printf '%s' "$TOKEN_B" | sha256sum | cut -d' ' -f1)

CFG=$TEST_TMP/imcd.json
# shellcheck disable=SC2317 # called through check
write_config() { # write_config FILE MODE JSON
	(umask 077 && printf '%s\n' "$3" >"$1")
	chmod "$2" "$1"
}
write_config "$CFG" 0600 "$(jq -n --arg a "$TOKEN_A" --arg b "sha256:$HASH_B" --arg c "$TOKEN_C" \
	--arg q "$TOKEN_Q" --argjson qb "$QUOTA_Q" '{
	tokens: [{token: $a, tenant: "team-a"}, {token: $b, tenant: "team-b"},
	         {token: $c, tenant: "team-a"}, {token: $q, tenant: "team-q"}],
	tenants: {"team-a": {maxCaches: 100}, "team-b": {maxCaches: 100, maxBytes: 1099511627776},
	          "team-q": {maxBytes: $qb}}}')"

# --- config files refused at start ---------------------------------------------------------------

# refused NAME MODE JSON NEEDLE: imcd exits 1 before listening, saying NEEDLE.
refused() {
	local f=$TEST_TMP/$1.json out rc=0
	write_config "$f" "$2" "$3"
	out=$(timeout 30 "$IMC_BIN/imcd" --config "$f" --listen 127.0.0.1:0 \
		--state-dir "$TEST_TMP/state-$1" 2>&1) || rc=$?
	check_eq "config $1: imcd exits 1" 1 "$rc"
	check_match "config $1: imcd says why" "$4" "$out"
	check_fails "config $1: no store was set up" test -e "$TEST_TMP/state-$1/pool.img"
	if printf '%s' "$out" | grep -qF -- "$TOKEN_A"; then
		not_ok "config $1: the message does not show the token" "$out"
	fi
}
refused world-readable 0644 "$(jq -n --arg a "$TOKEN_A" '{tokens: [{token: $a, tenant: "a"}]}')" \
	'holds clear tokens and is readable by others'
refused group-writable 0660 "$(jq -n --arg a "$TOKEN_A" '{tokens: [{token: $a, tenant: "a"}]}')" \
	'writable by group or others'
refused unknown-key 0600 "$(jq -n --arg a "$TOKEN_A" '{tokens: [{token: $a, tenant: "a"}], listne: "x"}')" \
	'listne: unknown field'
refused bad-type 0600 "$(jq -n --arg a "$TOKEN_A" '{tokens: [{token: $a, tenant: 5}]}')" \
	'tokens\[0\]\.tenant: want a string'
refused short-token 0600 '{"tokens":[{"token":"abc","tenant":"a"}]}' \
	'tokens\[0\]\.token: want 16 to 4096 bytes'
OUT=$(timeout 30 "$IMC_BIN/imcd" --config "$TEST_TMP/nope.json" --listen 127.0.0.1:0 \
	--state-dir "$TEST_TMP/state-nope" 2>&1) && RC=0 || RC=$?
check_eq "a missing --config file: imcd exits 1" 1 "$RC"
check_match "a missing --config file: imcd names it" 'nope.json.*No such file' "$OUT"

# --- imcd with two tenants ------------------------------------------------------------------------

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_bb() { mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1; }
check "busybox image builds and pushes" push_bb
BB=$REGISTRY/imc/bb:v1

imcd_start_or_bail "$TEST_TMP/state" --config "$CFG"
check_match "imcd logs that auth is on" 'auth on, 4 token\(s\)' "$(cat "$IMCD_LOG")"

# [BODY=JSON|BODY_FILE=FILE] req TOKEN|- METHOD PATH [EXTRA_CURL_ARG...]: sets HTTP_STATUS, HTTP_BODY and
# HTTP_CHALLENGE (the WWW-Authenticate header).  TOKEN "-" sends no Authorization header.
HTTP_CHALLENGE=
req() {
	local token=$1 method=$2 path=$3 out
	shift 3
	out=$(mktemp "$TEST_TMP/.req.XXXXXX")
	local -a args=(-sS --noproxy '*' -o "$out" -D "$out.h" -w '%{http_code}' -X "$method"
		--max-time 30)
	[ "$token" = - ] || args+=(-H "Authorization: Bearer $token")
	if [ -n "${BODY_FILE-}" ]; then
		args+=(-H 'Content-Type: application/json' --data-binary "@$BODY_FILE")
	elif [ -n "${BODY+set}" ]; then
		printf '%s' "$BODY" >"$out.req"
		args+=(-H 'Content-Type: application/json' --data-binary "@$out.req")
	fi
	HTTP_STATUS=$(curl "${args[@]}" "$@" "$IMCD_URL$path" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	HTTP_CHALLENGE=$(sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: *//p' "$out.h" | tr -d '\r')
	rm -f "$out" "$out.h" "$out.req"
}

# unauthorized DESC CHALLENGE: the last answer was a JSON 401 with that challenge.
unauthorized() {
	check_eq "$1: 401" 401 "$HTTP_STATUS"
	check_eq "$1: error code Unauthorized" Unauthorized \
		"$(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
	check_eq "$1: WWW-Authenticate" "$2" "$HTTP_CHALLENGE"
}
CHALLENGE='Bearer realm="imcache"'
CHALLENGE_BAD='Bearer realm="imcache", error="invalid_token"'

req - GET /healthz
check_eq "GET /healthz without a token: 200" 200 "$HTTP_STATUS"
req - GET /v1/imagecaches
unauthorized "GET /v1/imagecaches without a token" "$CHALLENGE"
check_match "the 401 says the token is missing" 'missing bearer token' \
	"$(jq -r .error.message <<<"$HTTP_BODY" 2>/dev/null)"
req wrong-token-0123456789abcdef GET /v1/imagecaches
unauthorized "GET /v1/imagecaches with a wrong token" "$CHALLENGE_BAD"
req "sha256:$HASH_B" GET /v1/imagecaches
unauthorized "the configured sha256:<hex> is not itself a token" "$CHALLENGE_BAD"
req - GET /v1/imagecaches -H "Authorization: Basic $(printf 'team-a:%s' "$TOKEN_A" | base64 -w0)"
unauthorized "Basic credentials" "$CHALLENGE_BAD"
req - GET /v1/imagecaches -H "Authorization: Bearer $TOKEN_A extra"
unauthorized "a token with trailing garbage" "$CHALLENGE_BAD"
req - GET /metrics
unauthorized "GET /metrics without a token" "$CHALLENGE"
req "$TOKEN_B" GET /metrics
check_eq "GET /metrics with a token: 200" 200 "$HTTP_STATUS"
req - GET /v2/nothing-here
unauthorized "an unknown path without a token (no 404 given away)" "$CHALLENGE"
BIG=$TEST_TMP/big-body.json
head -c $((2 << 20)) /dev/zero | tr '\0' ' ' >"$BIG"
BODY_FILE=$BIG req - POST /v1/imagecaches
unauthorized "a 2 MiB POST without a token (before its size is looked at)" "$CHALLENGE"
BODY="$(jq -cn --arg ref "$BB" '{images: [{ref: $ref}]}')" req - POST /v1/imagecaches
unauthorized "POST /v1/imagecaches without a token" "$CHALLENGE"
req wrong-token-0123456789abcdef DELETE /v1/imagecaches/imc-0000000000000000
unauthorized "DELETE with a wrong token" "$CHALLENGE_BAD"
OUT=$(curl -sS --noproxy '*' -o /dev/null -o /dev/null -w '%{http_code}:%{num_connects} ' \
	-H 'Authorization: Bearer wrong-token-0123456789abcdef' "$IMCD_URL/v1/imagecaches" \
	"$IMCD_URL/v1/imagecaches" 2>&1) || true
check_eq "a 401 without a body keeps the connection (two GETs, one connect)" "401:1 401:0 " "$OUT"
OUT=$(curl -sS --noproxy '*' -o /dev/null -D - -H 'Content-Type: application/json' \
	--data-binary '{"images":[]}' "$IMCD_URL/v1/imagecaches" 2>&1 | tr -d '\r') || true
check_match "a 401 to a POST with a body closes the connection (the body is never read)" \
	'^Connection: close' "$(grep -i '^connection:' <<<"$OUT")"
BODY_FILE=$BIG req "$TOKEN_A" POST /v1/imagecaches
check_eq "a 2 MiB POST with a token: 413" 413 "$HTTP_STATUS"
req - GET /v1/imagecaches -H "Authorization: Bearer $TOKEN_A"
check_eq "the scheme's case: 'Bearer' works" 200 "$HTTP_STATUS"
req - GET /v1/imagecaches -H "Authorization: bearer $TOKEN_A"
check_eq "the scheme's case: 'bearer' works too" 200 "$HTTP_STATUS"

# --- isolation ---------------------------------------------------------------------------------------

# create TOKEN NAME: POST a cache of busybox as TOKEN's tenant; prints the id.
create() {
	BODY=$(jq -cn --arg ref "$BB" --arg n "$2" '{name: $n, images: [{ref: $ref}]}') \
		req "$1" POST /v1/imagecaches
	[ "$HTTP_STATUS" = 202 ] || {
		echo "POST as $2: $HTTP_STATUS $HTTP_BODY" >&2
		return 1
	}
	jq -r .id <<<"$HTTP_BODY"
}
# wait_ready TOKEN ID: until the cache is no longer Creating; prints its status.
wait_ready() {
	local i s=
	for i in $(seq 600); do
		req "$1" GET "/v1/imagecaches/$2"
		s=$(jq -r '.status // empty' <<<"$HTTP_BODY" 2>/dev/null || true)
		[ "$s" = Creating ] || [ "$HTTP_STATUS" != 200 ] || sleep 0.2
		[ "$s" = Creating ] || break
	done
	echo "$s"
}
# ids TOKEN: the ids team TOKEN lists, sorted, space-separated.
ids() {
	req "$1" GET /v1/imagecaches
	jq -r '[.items[].id] | sort | join(" ")' <<<"$HTTP_BODY" 2>/dev/null
}

# The first build alone: it makes the image's base snapshot, which the others then reuse.
A1=$(create "$TOKEN_A" a-one) || bail "team-a creates a cache" "$(imcd_log_tail 10)"
check_eq "team-a's cache $A1 becomes Ready" Ready "$(wait_ready "$TOKEN_A" "$A1")"
A2=$(create "$TOKEN_C" a-two) || bail "team-a creates a cache with its second token" "$(imcd_log_tail 10)"
B1=$(create "$TOKEN_B" b-one) || bail "team-b creates a cache" "$(imcd_log_tail 10)"
check_eq "team-a's second token sees $A2 become Ready" Ready "$(wait_ready "$TOKEN_A" "$A2")"
check_eq "team-b's cache $B1 becomes Ready" Ready "$(wait_ready "$TOKEN_B" "$B1")"

check_eq "team-a lists its two caches, not team-b's" "$(printf '%s\n' "$A1" "$A2" | sort | tr '\n' ' ' | sed 's/ $//')" \
	"$(ids "$TOKEN_A")"
check_eq "team-b lists only its own cache" "$B1" "$(ids "$TOKEN_B")"
req "$TOKEN_B" GET "/v1/imagecaches?name=a-one"
check_eq "team-b filtering by team-a's cache name finds nothing" 0 \
	"$(jq '.items | length' <<<"$HTTP_BODY" 2>/dev/null)"
req "$TOKEN_B" GET "/v1/imagecaches?image=$BB"
check_eq "team-b filtering by image finds only its own" "$B1" \
	"$(jq -r '[.items[].id] | join(" ")' <<<"$HTTP_BODY" 2>/dev/null)"

req "$TOKEN_B" GET "/v1/imagecaches/$A1"
check_eq "team-b GET team-a's cache: 404 (as if it did not exist)" 404 "$HTTP_STATUS"
check_eq "team-b GET team-a's cache: NotFound" NotFound "$(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
req "$TOKEN_B" GET "/v1/imagecaches/imc-0123456789abcdef"
check_eq "team-b GET a cache that does not exist: the same 404" 404 "$HTTP_STATUS"
req "$TOKEN_B" DELETE "/v1/imagecaches/$A1"
check_eq "team-b DELETE team-a's cache: 404" 404 "$HTTP_STATUS"
req "$TOKEN_B" DELETE "/v1/imagecaches/$A1?force=true"
check_eq "team-b DELETE ?force=true team-a's cache: 404" 404 "$HTTP_STATUS"
req "$TOKEN_A" GET "/v1/imagecaches/$A1"
check_eq "team-a's cache is still there and Ready" "200 Ready" \
	"$HTTP_STATUS $(jq -r .status <<<"$HTTP_BODY" 2>/dev/null)"
check "team-a's snapshot is still in the pool" test -e "$IMC_STATE/pool/snapshots/$A1.img"
req "$TOKEN_A" GET "/v1/imagecaches/$B1"
check_eq "team-a GET team-b's cache: 404" 404 "$HTTP_STATUS"

# Distribution (docs/distribution.md) under the same rules: a chunk index is its cache's; a chunk
# needs a valid token.
req "$TOKEN_B" GET "/v1/imagecaches/$A1/index"
check_eq "team-b GET team-a's chunk index: 404" 404 "$HTTP_STATUS"
req - GET "/v1/imagecaches/$A1/index"
unauthorized "GET a chunk index without a token" "$CHALLENGE"
for _ in $(seq 300); do # 202 while imcd exports it in the background
	req "$TOKEN_A" GET "/v1/imagecaches/$A1/index"
	[ "$HTTP_STATUS" = 202 ] || break
	sleep 0.2
done
check_eq "team-a GET its own chunk index: 200" 200 "$HTTP_STATUS"
CHUNK=$(jq -r '.chunks[0].digest // empty' <<<"$HTTP_BODY" 2>/dev/null)
check_match "team-a's index names chunks" '^sha256:[0-9a-f]{64}$' "$CHUNK"
req - GET "/v1/chunks/$CHUNK"
unauthorized "GET a chunk without a token" "$CHALLENGE"
req wrong-token-0123456789abcdef GET "/v1/chunks/$CHUNK"
unauthorized "GET a chunk with a wrong token" "$CHALLENGE_BAD"
req "$TOKEN_A" GET "/v1/chunks/$CHUNK"
check_eq "GET a chunk with a valid token: 200" 200 "$HTTP_STATUS"
# A chunk goes only to a tenant one of whose caches references it: team-b's caches have no
# exported index naming it, so it is as absent for team-b as a chunk that does not exist.
req "$TOKEN_B" GET "/v1/chunks/$CHUNK"
B_CHUNK="$HTTP_STATUS $(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
check_eq "team-b GET a chunk only team-a's cache references: 404 NotFound" "404 NotFound" \
	"$B_CHUNK"
req "$TOKEN_B" GET "/v1/chunks/sha256:$(printf '0%.0s' $(seq 1 64))"
check_eq "... the same answer as for a chunk that does not exist" "$B_CHUNK" \
	"$HTTP_STATUS $(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
req "$TOKEN_B" HEAD "/v1/chunks/$CHUNK" --head
check_eq "team-b HEAD of that chunk: 404" 404 "$HTTP_STATUS"

# imcctl --token applies to push too (it used to read only $IMCACHE_TOKEN).
OUT=$(env -u IMCACHE_TOKEN "$IMC_BIN/imcctl" --server "$IMCD_URL" --token "$TOKEN_A" \
	push "$A1" "$REGISTRY/imc/tenant-push:v1" 2>&1) && RC=0 || RC=$?
check_eq "imcctl --token T push exits 0 (auth on)" "0" "$RC$(test "$RC" = 0 || echo " $OUT")"
OUT=$(env -u IMCACHE_TOKEN "$IMC_BIN/imcctl" --server "$IMCD_URL" --token "$TOKEN_B" \
	push "$A1" "$REGISTRY/imc/tenant-push:v2" 2>&1) && RC=0 || RC=$?
check_match "imcctl --token (team-b) push of team-a's cache: refused, not found" \
	'^1 .*(404|No such file|not found)' "$RC $OUT"

# The same name and image from another tenant is another cache (no clientToken crosstalk).
SAME=$(jq -cn --arg ref "$BB" '{name: "a-one", images: [{ref: $ref}], clientToken: "same-token-1"}')
BODY=$SAME req "$TOKEN_B" POST /v1/imagecaches
check_eq "team-b may reuse team-a's cache name: 202" 202 "$HTTP_STATUS"
B2=$(jq -r .id <<<"$HTTP_BODY" 2>/dev/null)
BODY=$SAME req "$TOKEN_A" POST /v1/imagecaches
A3=$(jq -r .id <<<"$HTTP_BODY" 2>/dev/null)
check_match "team-a with team-b's clientToken gets its own cache" "^imc-[0-9a-f]{16} $B2$" \
	"$A3 $B2"
if [ "$A3" = "$B2" ]; then
	not_ok "team-a with the same clientToken does not get team-b's cache" "$A3"
fi
check_eq "team-b's cache $B2 becomes Ready" Ready "$(wait_ready "$TOKEN_B" "$B2")"
check_eq "team-a's cache $A3 becomes Ready" Ready "$(wait_ready "$TOKEN_A" "$A3")"

# --- attachments (reported by imc-attach / imc-runtime) -------------------------------------------

BODY='{"host":"node-b"}' req "$TOKEN_B" POST "/v1/imagecaches/$A1/attachments"
check_eq "team-b reporting an attachment of team-a's cache: 404" 404 "$HTTP_STATUS"
BODY='{"host":"node-a"}' req "$TOKEN_A" POST "/v1/imagecaches/$A1/attachments"
check_match "team-a reports an attachment of its cache: 2xx" '^20[01]$' "$HTTP_STATUS"
AID=$(jq -r '.id // empty' <<<"$HTTP_BODY" 2>/dev/null || true)
check_match "the attachment has an id att-…" '^att-[0-9a-f]{16}$' "$AID"
req "$TOKEN_B" GET "/v1/imagecaches/$A1/attachments"
check_eq "team-b listing team-a's attachments: 404" 404 "$HTTP_STATUS"
req "$TOKEN_B" DELETE "/v1/imagecaches/$A1/attachments/$AID"
check_eq "team-b removing team-a's attachment: 404" 404 "$HTTP_STATUS"
req "$TOKEN_A" DELETE "/v1/imagecaches/$A1"
check_eq "team-a cannot delete its attached cache without force: 409" 409 "$HTTP_STATUS"
req "$TOKEN_A" DELETE "/v1/imagecaches/$A1/attachments/$AID"
check_match "team-a removes its attachment: 2xx" '^20[04]$' "$HTTP_STATUS"

# --- deletes --------------------------------------------------------------------------------------

for pair in "$TOKEN_A $A1" "$TOKEN_A $A2" "$TOKEN_A $A3" "$TOKEN_B $B1" "$TOKEN_B $B2"; do
	read -r tok id <<<"$pair"
	req "$tok" DELETE "/v1/imagecaches/$id"
	check_eq "its tenant deletes $id: 200" 200 "$HTTP_STATUS"
done
check_eq "team-a lists nothing" "" "$(ids "$TOKEN_A")"
check_eq "team-b lists nothing" "" "$(ids "$TOKEN_B")"

# --- a byte quota holds under concurrent creates --------------------------------------------------

# team-q may hold 3 GiB; a create without size reserves the builder's smallest filesystem
# (1 GiB, what busybox is sized to) from the moment it is accepted.
Q_PIDS=()
for n in 1 2 3 4 5 6 7 8; do
	curl -sS --noproxy '*' -o "$TEST_TMP/q$n.body" -w '%{http_code}' --max-time 60 \
		-H "Authorization: Bearer $TOKEN_Q" -H 'Content-Type: application/json' \
		--data-binary "$(jq -cn --arg ref "$BB" --arg n "q$n" '{name: $n, images: [{ref: $ref}]}')" \
		"$IMCD_URL/v1/imagecaches" >"$TEST_TMP/q$n.code" 2>/dev/null &
	Q_PIDS+=($!)
done
wait "${Q_PIDS[@]}" || true
Q_OK=() Q_REFUSED=0 Q_OTHER=
for n in 1 2 3 4 5 6 7 8; do
	code=$(cat "$TEST_TMP/q$n.code")
	if [ "$code" = 202 ]; then
		Q_OK+=("$(jq -r .id "$TEST_TMP/q$n.body")")
	elif [ "$code $(jq -r .error.code "$TEST_TMP/q$n.body" 2>/dev/null)" = "403 QuotaExceeded" ]; then
		Q_REFUSED=$((Q_REFUSED + 1))
	else
		Q_OTHER="$Q_OTHER $code $(cat "$TEST_TMP/q$n.body")"
	fi
done
check_eq "8 parallel creates without size: 3 accepted, 5 refused 403 QuotaExceeded" "3 5 " \
	"${#Q_OK[@]} $Q_REFUSED $Q_OTHER"
for id in "${Q_OK[@]}"; do
	check_eq "team-q's accepted cache $id ends Ready" Ready "$(wait_ready "$TOKEN_Q" "$id")"
done
req "$TOKEN_Q" GET /v1/imagecaches
Q_USED=$(jq '[.items[] | select(.status == "Ready") | .size] | add // 0' <<<"$HTTP_BODY")
if [ "$Q_USED" -le "$QUOTA_Q" ]; then
	ok "team-q's Ready caches hold $Q_USED bytes, within its quota of $QUOTA_Q"
else
	not_ok "team-q's Ready caches stay within its quota" "$Q_USED > $QUOTA_Q"
fi
BODY=$(jq -cn --arg ref "$BB" '{name: "q9", images: [{ref: $ref}]}') req "$TOKEN_Q" POST /v1/imagecaches
check_eq "with the quota used up by Ready caches, one more create: 403 QuotaExceeded" \
	"403 QuotaExceeded" "$HTTP_STATUS $(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
for id in "${Q_OK[@]}"; do
	req "$TOKEN_Q" DELETE "/v1/imagecaches/$id"
done

# --- the log ----------------------------------------------------------------------------------------

for t in "$TOKEN_A" "$TOKEN_B" "$TOKEN_C" "$TOKEN_Q"; do
	if grep -qF -- "$t" "$IMCD_LOG"; then
		not_ok "imcd's log does not hold the token ${t%%-*}-…" "$(grep -nF -- "$t" "$IMCD_LOG" | head -3)"
	else
		ok "imcd's log does not hold the token ${t:0:9}…"
	fi
done

# --- SIGTERM: new connections refused at once, the request in flight still answered -------------

# A 6 KiB body sent at 2 KiB/s is in flight for about 3 s; it asks for an unknown field, so the
# answer (400 naming it) proves it was read to the end and handled, not cut off.
SLOW=$TEST_TMP/slow-body.json
{
	printf '{"bogus": 1'
	head -c 6000 /dev/zero | tr '\0' ' '
	printf '}'
} >"$SLOW"
curl -sS --noproxy '*' --limit-rate 2K -o "$TEST_TMP/slow.out" -w '%{http_code}' \
	-H "Authorization: Bearer $TOKEN_A" -H 'Content-Type: application/json' \
	--data-binary "@$SLOW" --max-time 30 "$IMCD_URL/v1/imagecaches" >"$TEST_TMP/slow.status" 2>&1 &
SLOW_PID=$!
defer sh -c "kill $SLOW_PID 2>/dev/null || true"
sleep 1
STOP_PID=$IMCD_PID
kill -TERM "$STOP_PID"
sleep 0.5
STATUS=$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$IMCD_URL/healthz" \
	2>/dev/null) || true
check_eq "after SIGTERM a new connection is refused" 000 "${STATUS:-000}"
wait "$SLOW_PID" || true
check_eq "the request in flight at SIGTERM is answered (400 for its unknown field)" 400 \
	"$(cat "$TEST_TMP/slow.status")"
check_match "... naming the field" 'bogus' "$(cat "$TEST_TMP/slow.out")"
check_clean_shutdown

# --- listen and stateDir from the config (no tokens: auth off) -------------------------------------

CFG3=$TEST_TMP/defaults.json
(umask 077 && jq -n --arg l "unix:$TEST_TMP/cfg.sock" --arg d "$TEST_TMP/state-cfg" \
	'{listen: $l, stateDir: $d}' >"$CFG3")
IMC_STATE=$TEST_TMP/state-cfg
defer imc_teardown_quiet
IMCD_LOG=$TEST_TMP/imcd-cfg.log
"$IMC_BIN/imcd" --config "$CFG3" --ready-file "$TEST_TMP/cfg.ready" >"$IMCD_LOG" 2>&1 &
IMCD_PID=$!
defer imcd_kill
if wait_for_file "$TEST_TMP/cfg.ready" 60 "$IMCD_PID"; then
	check_eq "listen from the config: the ready file says unix:…/cfg.sock" \
		"unix:$TEST_TMP/cfg.sock" "$(cat "$TEST_TMP/cfg.ready")"
	check "stateDir from the config: the pool is there" test -e "$TEST_TMP/state-cfg/pool.img"
	http_unix "$TEST_TMP/cfg.sock" GET /v1/imagecaches
	check_eq "a config without tokens: no auth (200 without a token)" 200 "$HTTP_STATUS"
	check_match "a config without tokens: imcd logs auth off" 'auth off \(no tokens\)' \
		"$(cat "$IMCD_LOG")"
else
	not_ok "imcd starts with listen and stateDir from its config" "$(tail -n 20 "$IMCD_LOG")"
fi
check_clean_shutdown

# --- no config (--no-config: not even /etc/imcache/imcd.json): auth off, a warning on a
# non-loopback address

IMCD_CONFIG_NONE=$TEST_TMP/state-open
_imcd_launch "$IMCD_CONFIG_NONE" 0.0.0.0:0 --no-config || bail "imcd starts on 0.0.0.0 without a config" \
	"$(imcd_log_tail 20)"
defer imc_teardown_quiet
PORT=${IMCD_URL##*:}
check_match "without auth on 0.0.0.0, imcd warns" 'without auth: anyone who reaches it' \
	"$(cat "$IMCD_LOG")"
HTTP_STATUS=$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' \
	"http://127.0.0.1:$PORT/v1/imagecaches" 2>/dev/null) || true
check_eq "without a config, requests need no token" 200 "$HTTP_STATUS"
check_clean_shutdown

done_testing
