#!/bin/bash
# imcd on a Unix socket (--listen unix:PATH): curl --unix-socket, imcctl --server unix:PATH (push
# included) and the agent's fetch (imc-attach --server unix:PATH prefetch) reach it; a second imcd refuses a live socket; the socket file goes away on SIGTERM; a stale one
# left by kill -9 is replaced; paths that are too long or not sockets are refused.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs stat
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_bb() { mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1; }
check "busybox image builds and pushes" push_bb
BB_REF=$REGISTRY/imc/bb:v1

STATE=$TEST_TMP/state
SOCK=$TEST_TMP/run/imcd.sock
mkdir -p "$TEST_TMP/run"
defer imc_teardown_quiet

# --- refused listen addresses (before anything is set up) -------------------------------------

LONG=$TEST_TMP/$(printf 'x%.0s' $(seq 1 120)).sock
OUT=$("$IMC_BIN/imcd" --listen "unix:$LONG" --state-dir "$TEST_TMP/state-long" 2>&1) && RC=0 || RC=$?
check_eq "imcd refuses a socket path longer than sun_path (exit 1)" 1 "$RC"
check_match "imcd says the socket path is too long" 'socket path longer than 107 bytes' "$OUT"
check_fails "nothing created for the too-long path" test -e "$LONG"

PLAIN=$TEST_TMP/run/plain-file
echo keep >"$PLAIN"
OUT=$("$IMC_BIN/imcd" --listen "unix:$PLAIN" --state-dir "$TEST_TMP/state-plain" 2>&1) && RC=0 || RC=$?
check_eq "imcd refuses a path that is not a socket (exit 1)" 1 "$RC"
check_match "imcd says the path is not a socket" 'is not a socket' "$OUT"
check_eq "the file that is not a socket is left alone" keep "$(cat "$PLAIN")"

# --- imcd on a socket ---------------------------------------------------------------------------

imcd_start_unix "$STATE" "$SOCK" || bail "imcd starts on unix:$SOCK" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL"
check_eq "the socket is a socket with mode 0660" "socket 660" \
	"$(stat -c '%F %a' "$SOCK")"

http_unix "$SOCK" GET /healthz
check_eq "curl --unix-socket GET /healthz answers 200" 200 "$HTTP_STATUS"

http_unix "$SOCK" POST /v1/imagecaches \
	"$(jq -cn --arg ref "$BB_REF" '{name: "bb-curl", images: [{ref: $ref}]}')"
check_eq "curl --unix-socket POST /v1/imagecaches answers 202" 202 "$HTTP_STATUS"
ID1=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
check_match "POST returns an id imc-…" '^imc-[0-9a-f]{16}$' "$ID1"

OUT=$(imcctl create "$BB_REF" --name bb-ctl --wait -o json 2>&1) && RC=0 || RC=$?
check_eq "imcctl --server unix:… create --wait exits 0" 0 "$RC"
ID2=$(json_get "$OUT" '.id // empty' 2>/dev/null || true)
check_eq "imcctl create --wait: the cache is Ready" Ready \
	"$(json_get "$OUT" '.status // empty' 2>/dev/null || echo "$OUT")"

# The POSTed cache: poll through imcctl get.
STATUS1=
for _ in $(seq 1 600); do
	STATUS1=$(imcctl get "$ID1" 2>/dev/null | jq -r '.status // empty' 2>/dev/null || true)
	[ "$STATUS1" = Creating ] || [ -z "$STATUS1" ] || break
	sleep 0.2
done
check_eq "imcctl get: the POSTed cache $ID1 becomes Ready" Ready "$STATUS1"

OUT=$(imcctl list -o json 2>&1) || true
check_eq "imcctl list: both caches, Ready" "bb-ctl Ready,bb-curl Ready" \
	"$(jq -r '[.items[] | "\(.name) \(.status)"] | sort | join(",")' <<<"$OUT" 2>&1)"
OUT=$(IMCACHE_SERVER=$IMCD_URL "$IMC_BIN/imcctl" get "$ID2" 2>&1) || true
check_eq "IMCACHE_SERVER=unix:… imcctl get: name" bb-ctl "$(json_get "$OUT" .name 2>&1)"

# The agent's fetch and imcctl push reach imcd over the socket as the other commands do.
AGENT=$TEST_TMP/agent
defer "$IMC_BIN/imc-attach" --state-dir "$AGENT" teardown
OUT=$("$IMC_BIN/imc-attach" --state-dir "$AGENT" --server "unix:$SOCK" prefetch "$ID2" 2>&1) &&
	RC=0 || RC=$?
check_eq "imc-attach --server unix:… prefetch exits 0" "0" "$RC$(test "$RC" = 0 || echo " $OUT")"
check "... the snapshot is in the agent's store" test -s "$AGENT/pool/snapshots/$ID2.img"
"$IMC_BIN/imc-attach" --state-dir "$AGENT" teardown >/dev/null 2>&1 || true
OUT=$(imcctl push "$ID2" "$REGISTRY/imc/unixpush:v1" 2>&1) && RC=0 || RC=$?
check_eq "imcctl --server unix:… push exits 0" "0" "$RC$(test "$RC" = 0 || echo " $OUT")"
check_match "... and prints the pushed manifest" "imc/unixpush:v1@sha256:" "$OUT"

# --- a second imcd on the live socket -----------------------------------------------------------

OUT=$(timeout 60 "$IMC_BIN/imcd" --listen "unix:$SOCK" --state-dir "$TEST_TMP/state2" 2>&1) &&
	RC=0 || RC=$?
check_eq "a second imcd on the live socket exits 1" 1 "$RC"
check_match "a second imcd says another server is listening" 'another server is listening' "$OUT"
check_fails "the second imcd set up no state" test -e "$TEST_TMP/state2/pool.img"
http_unix "$SOCK" GET /healthz
check_eq "the first imcd still answers on the socket" 200 "$HTTP_STATUS"

check "imcctl delete $ID1" imcctl delete "$ID1"
check "imcctl delete $ID2" imcctl delete "$ID2"
check_eq "imcctl list: no cache left" 0 "$(imcctl list -o json 2>&1 | jq '.items | length' 2>&1)"
check_fails "imcctl get of a deleted cache fails" imcctl get "$ID1"

# --- SIGTERM removes the socket; kill -9 leaves a stale one that the next imcd replaces --------

RC=0
imcd_stop || RC=$?
check_eq "imcd exits 0 on SIGTERM" 0 "$RC"
check_fails "the socket file is gone after SIGTERM" test -e "$SOCK"

imcd_start_unix "$STATE" "$SOCK" || bail "imcd restarts on unix:$SOCK" "$(imcd_log_tail 30)"
{
	kill -KILL "$IMCD_PID"
	wait "$IMCD_PID"
} 2>/dev/null || true
IMCD_PID=
check "kill -9 leaves a stale socket file" test -S "$SOCK"
http_unix "$SOCK" GET /healthz
check_eq "nobody answers on the stale socket" 000 "$HTTP_STATUS"

imcd_start_unix "$STATE" "$SOCK" || bail "imcd replaces the stale socket" "$(imcd_log_tail 30)"
ok "imcd replaces the stale socket and listens at $IMCD_URL"
http_unix "$SOCK" GET /healthz
check_eq "the new imcd answers GET /healthz on the socket" 200 "$HTTP_STATUS"
check_eq "imcctl list after the restart: still no cache" 0 \
	"$(imcctl list -o json 2>&1 | jq '.items | length' 2>&1)"

check_clean_shutdown
check_fails "the socket file is gone after the last SIGTERM" test -e "$SOCK"

done_testing
