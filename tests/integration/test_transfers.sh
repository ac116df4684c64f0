#!/bin/bash
# Registry transfers cannot be held or misdirected (tests/lib/stallregistry.py on 127.0.0.1):
# - a layer that trickles in (8 bytes a second) is aborted by the minimum rate (imcd --min-rate
#   64K --min-rate-window 2 here; 64 KiB/s over 60 s by default): the build ends Failed saying
#   so, instead of Creating for as long as the registry likes;
# - a registry port that refuses connections is reported as such, after retries;
# - a redirect of a layer to another host over plain HTTP (127.0.0.1 -> localhost) is refused,
#   one to the same host is followed;
# - a layer declared larger than --max-blob-size is refused before it is asked for;
# - builds of two tenants that share a layer do not share its download: team-b's build is not
#   held by team-a's trickling one.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl python3 losetup findmnt mkfs.xfs
need_programs imcd imc-attach

stallregistry_start 8 1 || bail "the misbehaving registry starts"
ok "the misbehaving registry listens at $STALLREG"
imcd_start_or_bail "$TEST_TMP/state" --min-rate 64K --min-rate-window 2 --max-blob-size 1M

# build_of NAME REPO: create a cache of $STALLREG/REPO:1 and print its JSON once it is done.
build_of() {
	local id
	id=$(create_cache "$STALLREG/$2:1" "$1") || return 1
	cache_wait "$id" 240
}

# --- a trickling layer ------------------------------------------------------------------------

C=$(build_of trickle trickle/img) || C='{}'
check_eq "a layer trickling in at 8 bytes/s: the build ends Failed" Failed \
	"$(json_get "$C" .status 2>&1)"
check_match "... slower than the minimum rate, after retries" \
	'slower than 65536 bytes/s for 2 s.*after [0-9]+ attempts' \
	"$(json_get "$C" .statusMessage 2>&1)"
check_match "the registry saw the client go away mid-body" 'trickle/img/blobs/.* trickle-gone' \
	"$(cat "$STALLREG_LOG")"

# --- a registry port nobody listens on --------------------------------------------------------

# A port that was free a moment ago (bound, then closed).
CLOSED=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
C=$(create_cache "127.0.0.1:$CLOSED/nobody/img:1" refused) && C=$(cache_wait "$C" 120) || C='{}'
check_eq "a registry whose port refuses connections: Failed" Failed "$(json_get "$C" .status 2>&1)"
check_match "... reported as a refused connection, after retries on fresh handles" \
	'127\.0\.0\.1:'"$CLOSED"'.*([Cc]ould.?n.t connect|[Cc]onnection refused).*after [0-9]+ attempts' \
	"$(json_get "$C" .statusMessage 2>&1)"
check_fails "... not hidden as a libcurl set-up failure" \
	grep -q 'cannot set up libcurl' <<<"$(json_get "$C" .statusMessage 2>&1)"

# --- redirects --------------------------------------------------------------------------------

C=$(build_of redirected redirect/img) || C='{}'
check_eq "a layer redirected to another host over plain HTTP: Failed" Failed \
	"$(json_get "$C" .status 2>&1)"
check_match "... the redirect is refused, naming where it pointed" \
	'redirect to http://localhost:[0-9]+/v2/redirect/img/blobs/.* refused' \
	"$(json_get "$C" .statusMessage 2>&1)"
check_fails "... and the other host was never asked" \
	grep -q 'redirect/img/blobs/.*moved=1' "$STALLREG_LOG"

C=$(build_of moved moved/img) || C='{}'
check_eq "a layer redirected to the same host: Ready" Ready "$(json_get "$C" .status 2>&1)"
check_match "... fetched from where it was sent" 'GET /v2/moved/img/blobs/.*moved=1 blob' \
	"$(cat "$STALLREG_LOG")"

# --- a declared size over the cap -------------------------------------------------------------

C=$(build_of huge fast/huge) || C='{}'
check_eq "a layer declared at 160 MiB with --max-blob-size 1M: Failed" Failed \
	"$(json_get "$C" .status 2>&1)"
check_match "... the message names the cap" '167772160 bytes declared, more than the 1048576' \
	"$(json_get "$C" .statusMessage 2>&1)"
LAYER=$(json_get "$C" '.statusMessage' 2>/dev/null | grep -o 'sha256:[0-9a-f]\{64\}' | head -n1)
check_match "... it names the layer" '^sha256:' "$LAYER"
check_fails "... and the layer was never asked for" \
	grep -q "GET /v2/fast/huge/blobs/$LAYER" "$STALLREG_LOG"
check_eq "no temp file is left in the blob cache" "" \
	"$(find "$TEST_TMP/state/blobs" -name '.tmp-*' 2>/dev/null)"

check_clean_shutdown

# --- a shared layer in flight: no tenant waits on another ------------------------------------

# Two tenants whose images share a layer: team-a's registry trickles it, team-b's build of the
# same layer must not wait for team-a's download (it used to: in-flight downloads were shared by
# digest alone).  team-b's build ends Ready while team-a's is still trickling.
CONF=$TEST_TMP/imcd.json
TOKEN_A=token-of-team-a-0123456789
TOKEN_B=token-of-team-b-0123456789
jq -n --arg a "$TOKEN_A" --arg b "$TOKEN_B" \
	'{tokens: [{token: $a, tenant: "team-a"}, {token: $b, tenant: "team-b"}]}' >"$CONF"
chmod 600 "$CONF"
imcd_start_or_bail "$TEST_TMP/state2" --config "$CONF" --build-workers 2 --min-rate 64K \
	--min-rate-window 2
# as TOKEN ARG...: imcctl with a tenant's token.
as() {
	local t=$1
	shift
	"$IMC_BIN/imcctl" --server "$IMCD_URL" --token "$t" "$@"
}
# status_of TOKEN ID: the cache's status.
status_of() {
	as "$1" get "$2" -o json 2>/dev/null | jq -r '.status // empty' 2>/dev/null
}
A=$(as "$TOKEN_A" create "$STALLREG/trickle/shared-a:1" 2>/dev/null | tail -n1)
check_match "team-a's build of a trickling shared layer is accepted" '^imc-' "$A"
wait_for_match "$STALLREG_LOG" '/v2/trickle/shared-a/blobs/.* trickle-start' 30 || true
check_match "team-a's layer download is in flight" 'trickle/shared-a/blobs/.* trickle-start' \
	"$(cat "$STALLREG_LOG")"
OUT=$(as "$TOKEN_B" create "$STALLREG/fast/shared-b:1" --wait --timeout 120 2>&1) || true
check_match "team-b's build of the same layer ends Ready" '^imc-' "$(printf '%s\n' "$OUT" | tail -n1)"
check_eq "... while team-a's is still Creating (team-b never waited on it)" Creating \
	"$(status_of "$TOKEN_A" "$A")"
SHARED=$(grep -o '/v2/trickle/shared-a/blobs/sha256:[0-9a-f]* trickle-start' "$STALLREG_LOG" |
	head -n1 | sed 's|.*/blobs/||; s| .*||')
check_match "... team-b fetched the shared layer itself" "GET /v2/fast/shared-b/blobs/$SHARED blob" \
	"$(cat "$STALLREG_LOG")"
for _ in $(seq 1 1200); do
	S=$(status_of "$TOKEN_A" "$A")
	[ "$S" = Creating ] || break
	sleep 0.1
done
check_eq "team-a's build ends Failed at the minimum rate" Failed "$S"
check_clean_shutdown
