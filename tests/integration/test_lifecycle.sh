#!/bin/bash
# The lifecycle half of the API against a real imcd and registry:
#   - every status code of the attachments endpoints, delete refused (409) while attached and
#     done with ?force=true, lastUsedAt and events following attaches;
#   - clientToken (the same token answers the same cache, a different request under it is 409)
#     and identical concurrent requests sharing one build;
#   - match=best (a tag no cache names, whose layers one cache holds);
#   - retention: a cache expires after retentionDays (a day is 2 s here: IMCD_DAY_SECONDS, a
#     test build's knob), a pinned one (retentionDays 0) and an attached one do not; eviction
#     above the high watermark (--evict-high) takes the unattached, unpinned caches, with
#     imcache_evictions_total;
#   - restart recovery: imcd killed with SIGKILL while a blob download is stalled (a proxy that
#     holds blob answers), started again: the half-built volume is removed, the reconciliation
#     is logged, and the cache is built again and ends Ready;
#   - SIGTERM: the running build finishes, a queued one stays Creating (event Interrupted) and is
#     built at the next start (event Resumed);
#   - imc-attach --server reporting its attach and detach (and only warning when imcd is
#     unreachable), imcctl get/delete --force/attach/detach/attachments/list --match best;
#   - tenants from a --config file: quotas (403 QuotaExceeded for maxCaches and maxBytes) and
#     isolation (another tenant's cache is 404 to get, list, delete, attach and detach).
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs python3
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_images() {
	mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1 &&
		mkimage_push "$LAYOUT" bb imc/bbcopy:v9 &&
		mkimage_plain "$LAYOUT" plain 64 && registry_push_raw "$LAYOUT" plain imc/plain:v1 &&
		mkimage_plain "$LAYOUT" big 2048 && registry_push_raw "$LAYOUT" big imc/big:v1 &&
		mkimage_plain "$LAYOUT" big2 2048 && registry_push_raw "$LAYOUT" big2 imc/big2:v1
}
check "images push" push_images
BB=$REGISTRY/imc/bb:v1
PLAIN=$REGISTRY/imc/plain:v1

# A registry proxy that holds every answer for a blob whose digest is written in $STALL_FILE,
# for as long as it is there: a build through it stays Creating, mid-download, for as long as
# the test wants.
STALL_FILE=$TEST_TMP/stall
cat >"$TEST_TMP/stallproxy.py" <<PY
import os, sys, time
sys.path.insert(0, "$IMC_ROOT/tests/lib")
import faultproxy
base = faultproxy.Handler.forward
def forward(self):
    if self.command == "GET" and "/blobs/sha256:" in self.path:
        self.note("seen")
        digest = self.path.rsplit("/", 1)[-1]
        def stalled():
            try:
                with open("$STALL_FILE") as f:
                    return digest in f.read().split()
            except OSError:
                return False
        while stalled():
            time.sleep(0.1)
    return base(self)
faultproxy.Handler.forward = forward
faultproxy.Handler.do_GET = faultproxy.Handler.do_HEAD = forward
sys.exit(faultproxy.main())
PY
BIG_DIGEST=$(jq -r '.layers[0].digest' <<<"$(registry_manifest imc/big v1 2>/dev/null)")
check_match "the big image's layer digest is known" '^sha256:' "$BIG_DIGEST"
BIG2_DIGEST=$(jq -r '.layers[0].digest' <<<"$(registry_manifest imc/big2 v1 2>/dev/null)")
echo "$BIG_DIGEST" >"$STALL_FILE"
PROXY_DIR=$TEST_TMP/proxy
mkdir -p "$PROXY_DIR"
: >"$PROXY_DIR/log"
python3 "$TEST_TMP/stallproxy.py" --upstream "$REGISTRY" --mode none \
	--log "$PROXY_DIR/log" --port-file "$PROXY_DIR/port" >"$PROXY_DIR/stderr" 2>&1 &
PROXY_PID=$!
# shellcheck disable=SC2317
stop_proxy() { rm -f "$STALL_FILE"; kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }
defer stop_proxy
wait_for_file "$PROXY_DIR/port" 20 "$PROXY_PID" || bail "stall proxy starts" "$(cat "$PROXY_DIR/stderr")"
STALLED=127.0.0.1:$(cat "$PROXY_DIR/port")/imc/big:v1
STALLED2=127.0.0.1:$(cat "$PROXY_DIR/port")/imc/big2:v1

STATE=$TEST_TMP/state
# A day of 2 s is a test build's knob (release binaries have none); the rest are imcd's flags.
export IMCD_DAY_SECONDS=2
LC_FLAGS=(--sweep-interval 0.2 --build-workers 2)
imcd_start_or_bail "$STATE" "${LC_FLAGS[@]}"
# API: the caches URL of the imcd running now (its port changes with each start).
api_url() { API=$IMCD_URL/v1/imagecaches; }
api_url

# post BODY: POST /v1/imagecaches (HTTP_STATUS/HTTP_BODY).
post() { http POST "$API" "$1"; }
body() { # REF [EXTRA_JSON]
	jq -cn --arg ref "$1" --argjson x "${2:-{\}}" '{images: [{ref: $ref}]} + $x'
}

# ---- clientToken and identical requests ----------------------------------------------------
post "$(body "$BB" '{"name":"tok","clientToken":"t-1","retentionDays":0}')"
check_eq "POST with a clientToken: 202" 202 "$HTTP_STATUS"
TOK_ID=$(json_get "$HTTP_BODY" .id)
post "$(body "$BB" '{"name":"tok","clientToken":"t-1","retentionDays":0}')"
check_eq "the same clientToken again: 202" 202 "$HTTP_STATUS"
check_eq "... and the same cache" "$TOK_ID" "$(json_get "$HTTP_BODY" .id)"
check_eq "... marked existing" true "$(json_get "$HTTP_BODY" .existing)"
post "$(body "$PLAIN" '{"name":"tok","clientToken":"t-1"}')"
check_eq "the same clientToken with another request: 409" 409 "$HTTP_STATUS"
check_match "... naming the token" 't-1' "$HTTP_BODY"
cache_wait "$TOK_ID" 120 >/dev/null || bail "cache $TOK_ID builds" "$(imcd_log_tail 20)"
post "$(body "$BB" '{"name":"tok","clientToken":"t-1","retentionDays":0}')"
check_eq "the clientToken after the build: still that cache" "$TOK_ID" "$(json_get "$HTTP_BODY" .id)"
check_eq "... Ready" Ready "$(json_get "$HTTP_BODY" .status)"
http GET "$API?name=tok"
check_eq "one cache for three requests under one token" 1 "$(jq '.items | length' <<<"$HTTP_BODY")"

# Identical requests while the first still builds (stalled): one build, one id.
post "$(body "$STALLED" '{"name":"same"}')"
SAME1=$(json_get "$HTTP_BODY" .id)
post "$(body "$STALLED" '{"name":"same"}')"
check_eq "an identical request while Creating: 202" 202 "$HTTP_STATUS"
check_eq "... answers the same cache" "$SAME1" "$(json_get "$HTTP_BODY" .id)"
post "$(body "$STALLED" '{"name":"other"}')"
OTHER=$(json_get "$HTTP_BODY" .id)
check_fails "a request with another name is not identical: its own cache" test "$OTHER" = "$SAME1"

# progress and events while stalled
sleep 1
http GET "$API/$SAME1"
check_eq "a stalled build is Creating" Creating "$(json_get "$HTTP_BODY" .status)"
check_match "progress has bytesTotal" '^[0-9]+$' "$(json_get "$HTTP_BODY" .progress.bytesTotal)"
check_eq "events: Created, BuildStarted" "Created BuildStarted" \
	"$(jq -r '[.events[].type] | join(" ")' <<<"$HTTP_BODY")"
# (DELETE while Creating cancels the build: tests/integration/test_stalls.sh.)
http POST "$API/$SAME1/attachments" '{}'
check_eq "attach while Creating: 409" 409 "$HTTP_STATUS"

# ---- restart recovery: kill -9 mid-download -------------------------------------------------
http GET "$API/$SAME1"
sleep 0.5
check_match "a volume is being built (stalled): mounted under state/tmp" 'build-' \
	"$(findmnt -rn -o TARGET | grep "^$STATE/tmp/build-" || true)"
kill -9 "$IMCD_PID"
wait "$IMCD_PID" 2>/dev/null || true
IMCD_PID=
rm -f "$STALL_FILE" # the registry answers again
imcd_start "$STATE" "${LC_FLAGS[@]}" || bail "imcd starts again after SIGKILL" "$(imcd_log_tail 30)"
api_url
check_match "the restart unmounts the half-done build" 'unmounted a build' "$(cat "$IMCD_LOG")"
check_match "the restart logs the reconciliation" 'reconciled [0-9]+ cache record' "$(cat "$IMCD_LOG")"
check_match "... and the build queued again" "cache $SAME1: was Creating when imcd stopped; build queued again" "$(cat "$IMCD_LOG")"
J=$(cache_wait "$SAME1" 120) || bail "cache $SAME1 finishes after the restart" "$(imcd_log_tail 20)"
check_eq "the interrupted cache ends Ready" Ready "$(json_get "$J" .status)"
check_match "... with a Resumed event" 'Resumed' "$(jq -r '[.events[].type] | join(" ")' <<<"$J")"
J=$(cache_wait "$OTHER" 120)
check_eq "the other cache of the same image, built at the same time, ends Ready" Ready \
	"$(json_get "$J" .status)" || note "$J"
check_eq "no build is left mounted" "" "$(findmnt -rn -o TARGET | grep "^$STATE/tmp/build-" || true)"
check_eq "no volume is left in the pool" "" "$(find "$STATE/pool" -path '*volumes/*' 2>/dev/null)"

# ---- SIGTERM: the running build finishes, a queued one resumes at the next start -------------
echo "$BIG2_DIGEST" >"$STALL_FILE"
post "$(body "$STALLED2" '{"name":"t1"}')"
T1=$(json_get "$HTTP_BODY" .id)
post "$(body "$STALLED2" '{"name":"t2"}')"
T2=$(json_get "$HTTP_BODY" .id)
sleep 1
http GET "$API/$T2"
check_eq "a second build of the same image waits for the first (no BuildStarted)" "Created" \
	"$(jq -r '[.events[].type] | join(" ")' <<<"$HTTP_BODY")"
kill -TERM "$IMCD_PID"
sleep 1
rm -f "$STALL_FILE" # the running build may finish now
rc=0
imcd_stop || rc=$?
check_eq "imcd exits 0 on SIGTERM once its running build is done" 0 "$rc"
check_eq "the running build finished Ready before imcd stopped" Ready \
	"$(jq -r .status "$STATE/caches/$T1.json")"
check_eq "the queued one is still Creating on disk" Creating "$(jq -r .status "$STATE/caches/$T2.json")"
check_match "... with an Interrupted event" 'Interrupted' \
	"$(jq -r '[.events[].type] | join(" ")' "$STATE/caches/$T2.json")"
imcd_start "$STATE" "${LC_FLAGS[@]}" || bail "imcd starts again after SIGTERM" "$(imcd_log_tail 30)"
api_url
J=$(cache_wait "$T2" 120) || bail "the queued cache builds after the restart" "$(imcd_log_tail 20)"
check_eq "the queued cache resumes and ends Ready" "Ready" "$(json_get "$J" .status)"
check_match "... Created Interrupted Resumed BuildStarted Ready" \
	'Created Interrupted Resumed BuildStarted Ready' "$(jq -r '[.events[].type] | join(" ")' <<<"$J")"

# ---- attachments, delete 409/force, lastUsedAt ----------------------------------------------
ATT=att-0123456789abcdef
http POST "$API/$TOK_ID/attachments" "{\"id\":\"$ATT\",\"host\":\"node-1\"}"
check_eq "POST attachments: 201" 201 "$HTTP_STATUS"
check_eq "... the id given" "$ATT" "$(json_get "$HTTP_BODY" .id)"
http POST "$API/$TOK_ID/attachments" "{\"id\":\"$ATT\",\"host\":\"node-1\"}"
check_eq "the same attachment again: 200" 200 "$HTTP_STATUS"
http POST "$API/$TOK_ID/attachments" ''
check_eq "POST attachments without a body: 201 with a new id" 201 "$HTTP_STATUS"
ATT2=$(json_get "$HTTP_BODY" .id)
check_match "... att-<16 hex>" '^att-[0-9a-f]{16}$' "$ATT2"
http GET "$API/$TOK_ID/attachments"
check_eq "GET attachments lists both" 2 "$(jq '.items | length' <<<"$HTTP_BODY")"
http POST "$API/$TOK_ID/attachments" '{"id":"att-xyz"}'
check_eq "a malformed attachment id: 400" 400 "$HTTP_STATUS"
http POST "$API/$TOK_ID/attachments" '{"id":"att-0123456789abcdef","bogus":1}'
check_eq "an unknown field: 400" 400 "$HTTP_STATUS"
http POST "$API/$TOK_ID/attachments" '{"id":'
check_eq "malformed JSON: 400" 400 "$HTTP_STATUS"
http POST "$API/imc-0000000000000000/attachments" '{}'
check_eq "attach to an unknown cache: 404" 404 "$HTTP_STATUS"
http GET "$API/$TOK_ID/attachments/$ATT"
check_eq "GET on one attachment: 405" 405 "$HTTP_STATUS"
http GET "$API/$TOK_ID"
check_match "lastUsedAt is set" '^20[0-9-]+T' "$(json_get "$HTTP_BODY" .lastUsedAt)"
check_eq "attachments: 2" 2 "$(json_get "$HTTP_BODY" .attachments)"
check_eq "pinned: no expiresAt" null "$(json_get "$HTTP_BODY" .expiresAt)"
check_match "events record the attach" 'Attached' "$(jq -r '[.events[].type] | join(" ")' <<<"$HTTP_BODY")"
http DELETE "$API/$TOK_ID"
check_eq "DELETE while attached: 409" 409 "$HTTP_STATUS"
check_match "... saying force" 'force' "$HTTP_BODY"
http DELETE "$API/$TOK_ID?force=maybe"
check_eq "DELETE ?force=maybe: 400" 400 "$HTTP_STATUS"
http DELETE "$API/$TOK_ID/attachments/$ATT"
check_eq "detach: 200" 200 "$HTTP_STATUS"
http DELETE "$API/$TOK_ID/attachments/$ATT"
check_eq "detach again: 404" 404 "$HTTP_STATUS"
http GET "$IMCD_URL/metrics"
check_match "metrics count the attaches" 'imcache_attaches_total 2' "$HTTP_BODY"
check_match "metrics: one attached now" 'imcache_attachments 1' "$HTTP_BODY"
http DELETE "$API/$TOK_ID"
check_eq "still one attached: 409" 409 "$HTTP_STATUS"
http DELETE "$API/$TOK_ID?force=true"
check_eq "DELETE ?force=true: 200" 200 "$HTTP_STATUS"
http GET "$API/$TOK_ID"
check_eq "gone: 404" 404 "$HTTP_STATUS"
http DELETE "$API/$TOK_ID/attachments/$ATT2"
check_eq "detach from a deleted cache: 404" 404 "$HTTP_STATUS"

# ---- match=best -----------------------------------------------------------------------------
http GET "$API?image=$REGISTRY/imc/bbcopy:v9"
check_eq "exact: no cache names bbcopy:v9" 0 "$(jq '.items | length' <<<"$HTTP_BODY")"
BBID=$(create_cache "$BB" bb2) && cache_wait "$BBID" 120 >/dev/null
http GET "$API?image=$REGISTRY/imc/bbcopy:v9&match=best"
check_eq "match=best of a ref imcd has not resolved yet: 503 at once (the resolver asks)" \
	"503 InProgress" "$HTTP_STATUS $(json_get "$HTTP_BODY" '.error.code' 2>/dev/null)"
http_settled GET "$API?image=$REGISTRY/imc/bbcopy:v9&match=best"
check_eq "match=best: 200" 200 "$HTTP_STATUS"
check_eq "match=best: the bb cache, whose layers bbcopy:v9 shares" "$BBID" "$(json_get "$HTTP_BODY" '.items[0].id')"
check_match "... sharedLayers" '^[1-9]' "$(json_get "$HTTP_BODY" '.items[0].sharedLayers')"
http_settled GET "$API?image=$REGISTRY/imc/nothere:v1&match=best"
check_eq "match=best of an image that does not exist: 404" 404 "$HTTP_STATUS"

# ---- imc-attach reports to imcd; imcctl covers the lifecycle endpoints ----------------------
ACID=$(create_cache "$BB" attached) && cache_wait "$ACID" 120 >/dev/null
ROOT=$TEST_TMP/root
mkdir -p "$ROOT"
defer imc_detach_quiet "$ROOT"
check "imc-attach --server attaches" imc_attach --server "$IMCD_URL" attach "$ACID" "$ROOT"
AID=$(imc_attach list | jq -r --arg d "$ROOT" '.[] | select(.dir == $d) | .id')
http GET "$API/$ACID/attachments"
check_eq "imcd knows the attach by imc-attach's id" "$AID" "$(jq -r '.items[0].id' <<<"$HTTP_BODY")"
check_match "imcctl attachments lists it" "$AID" "$(imcctl attachments "$ACID" 2>&1)"
check_fails "imcctl delete while attached fails" imcctl delete "$ACID"
check_match "imcctl get -o table shows the cache with its events" 'Attached' "$(imcctl get "$ACID" -o table 2>&1)"
check_match "... and its attachments" 'attachments +1' "$(imcctl get "$ACID" -o table 2>&1)"
check_eq "imcctl get -o json" "$ACID" "$(imcctl get "$ACID" -o json | jq -r .id)"
check "imc-attach detach reports the detach" imc_attach --server "$IMCD_URL" detach "$ROOT"
http GET "$API/$ACID"
check_eq "no attachment left" 0 "$(json_get "$HTTP_BODY" .attachments)"
OUT=$(IMCACHE_SERVER=http://127.0.0.1:1 imc_attach attach "$ACID" "$ROOT" 2>&1)
check_eq "an unreachable imcd does not fail the attach" 0 "$?"
check_match "... it warns" 'warning: attached, but imcd was not told' "$OUT"
imc_attach detach "$ROOT" >/dev/null 2>&1
check "imcctl attach --id records an attachment" imcctl attach "$ACID" --id att-00000000000000aa --host h1
check_fails "imcctl delete without --force: refused" imcctl delete "$ACID"
check "imcctl detach" imcctl detach "$ACID" att-00000000000000aa
check_match "imcctl list --match best: a bb cache" "($ACID|$BBID)" "$(imcctl list --image "$REGISTRY/imc/bbcopy:v9" --match best 2>&1)"
check "imcctl attach again" imcctl attach "$ACID" --id att-00000000000000ab
check "imcctl delete --force" imcctl delete "$ACID" --force
OUT=$(imcctl create "$PLAIN" --name bar --retention-days 0 --client-token bar-1 --wait 2>"$TEST_TMP/bar.err")
check_match "imcctl create --wait prints the id" '^imc-[0-9a-f]{16}$' "$OUT"
check_match "... and (not on a terminal) progress lines or nothing on stderr" '^(|.*Creating [0-9]+%.*)$' "$(head -n1 "$TEST_TMP/bar.err")"
check_eq "imcctl create --client-token again: the same cache" "$OUT" \
	"$(imcctl create "$PLAIN" --name bar --retention-days 0 --client-token bar-1)"
check "imcctl delete it" imcctl delete "$OUT"

# ---- a cache whose shared lower overlay pods use on this host ------------------------------
# The pods are not reported to imcd: the lower's references under <state>/lowers/ are what
# holds the delete.
# lower_left ID: what is left of ID's lower (mount, loop device, records), empty when nothing;
# the kernel frees an autoclear loop device shortly after its unmount, so it is given 2 s.
lower_left() {
	local i
	for i in $(seq 1 40); do
		[ -z "$(lower_left_now "$1")" ] && break
		sleep 0.05
	done
	lower_left_now "$1"
}
lower_left_now() {
	findmnt -rn -o TARGET | grep -F "$STATE/lowers/$1" | sed 's/^/mount /' || true
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | grep -F "/$1.img" | sed 's/^/loop /' || true
	find "$STATE/lowers" -mindepth 1 -maxdepth 1 -name "$1*" -printf 'file %p\n' 2>/dev/null
}
OCID=$(create_cache "$BB" overlaid) && cache_wait "$OCID" 120 >/dev/null
OP1=$TEST_TMP/op1
OP2=$TEST_TMP/op2
mkdir -p "$OP1" "$OP2"
defer imc_detach_quiet "$OP1"
defer imc_detach_quiet "$OP2"
check "two overlay pods of $OCID" imc_attach attach "$OCID" "$OP1"
check "... the second" imc_attach attach "$OCID" "$OP2"
http DELETE "$API/$OCID"
check_eq "DELETE while overlay pods use its lower: 409" 409 "$HTTP_STATUS"
check_match "... saying the shared lower is in use, and force" 'shared lower is in use by 2 .*force' "$HTTP_BODY"
check_eq "the pod still reads its files" "root:x:0:0:root:/root:/bin/sh" "$(head -n1 "$OP1/etc/passwd")"
check_eq "the cache is Ready again" Ready "$(json_get "$(imcctl get "$OCID" -o json)" .status)"
check "... its snapshot kept" test -e "$STATE/pool/snapshots/$OCID.img"
check "a new pod of it still attaches" imc_attach attach "$OCID" "$TEST_TMP/root"
imc_attach detach "$TEST_TMP/root" >/dev/null 2>&1 || true
http DELETE "$API/$OCID?force=true"
check_eq "DELETE ?force=true with overlay pods: 200" 200 "$HTTP_STATUS"
check_eq "the pods are detached" "" "$(findmnt -rn -o TARGET | grep -F -e "$OP1" -e "$OP2" || true)"
check_eq "... their attach states gone" 0 \
	"$(imc_attach list | jq --arg c "$OCID" '[.[] | select(.cacheId == $c)] | length')"
check_eq "the lower released: no mount, no loop device, no records" "" "$(lower_left "$OCID")"
check_fails "the snapshot is gone" test -e "$STATE/pool/snapshots/$OCID.img"
http GET "$API/$OCID"
check_eq "the cache is gone" 404 "$HTTP_STATUS"

# A warm lower (no pod, inside its grace) does not hold a delete: it is released first.
WCID=$(create_cache "$BB" warm) && cache_wait "$WCID" 120 >/dev/null
WP=$TEST_TMP/wp
mkdir -p "$WP"
defer imc_detach_quiet "$WP"
check "a pod of $WCID" imc_attach --lower-grace 3600 attach "$WCID" "$WP"
check "... detached, its lower kept warm" imc_attach --lower-grace 3600 detach "$WP"
check "the warm lower is mounted" findmnt -rn --mountpoint "$STATE/lowers/$WCID"
http DELETE "$API/$WCID"
check_eq "DELETE with a warm lower and no pod: 200" 200 "$HTTP_STATUS"
check_eq "... the lower released: no mount, no loop device, no records" "" "$(lower_left "$WCID")"
check_fails "... the snapshot is gone" test -e "$STATE/pool/snapshots/$WCID.img"

# ---- retention ------------------------------------------------------------------------------
post "$(body "$PLAIN" '{"name":"short","retentionDays":1}')"
SHORT=$(json_get "$HTTP_BODY" .id)
post "$(body "$PLAIN" '{"name":"pinned","retentionDays":0}')"
PINNED=$(json_get "$HTTP_BODY" .id)
post "$(body "$PLAIN" '{"name":"held","retentionDays":1}')"
HELD=$(json_get "$HTTP_BODY" .id)
post "$(body "$PLAIN" '{"name":"podheld","retentionDays":1}')"
PODHELD=$(json_get "$HTTP_BODY" .id)
for id in "$SHORT" "$PINNED" "$HELD" "$PODHELD"; do cache_wait "$id" 120 >/dev/null; done
http POST "$API/$HELD/attachments" '{}'
check_eq "attach the held cache" 201 "$HTTP_STATUS"
HP=$TEST_TMP/hp
mkdir -p "$HP"
defer imc_detach_quiet "$HP"
check "an overlay pod of $PODHELD (not reported)" imc_attach attach "$PODHELD" "$HP"
http GET "$API/$SHORT"
check_match "retentionDays 1: expiresAt" '^20' "$(json_get "$HTTP_BODY" .expiresAt)"
sleep 4 # 2 days of 2 s
http GET "$API/$SHORT"
check_eq "retentionDays 1 after two days: Expired" Expired "$(json_get "$HTTP_BODY" .status)"
check_match "... with an Expired event" 'Expired' "$(jq -r '[.events[].type] | join(" ")' <<<"$HTTP_BODY")"
http GET "$API/$PINNED"
check_eq "pinned: still Ready" Ready "$(json_get "$HTTP_BODY" .status)"
http GET "$API/$HELD"
check_eq "attached: still Ready" Ready "$(json_get "$HTTP_BODY" .status)"
http GET "$API/$PODHELD"
check_eq "an overlay pod on its lower: still Ready" Ready "$(json_get "$HTTP_BODY" .status)"
check "... the pod reads its files" test -s "$HP/blob"
check "... and detaches" imc_attach --lower-grace 0 detach "$HP"
http GET "$API?status=Expired"
check_eq "status=Expired lists it" "$SHORT" "$(jq -r '[.items[].id] | join(" ")' <<<"$HTTP_BODY")"
http POST "$API/$SHORT/attachments" '{}'
check_eq "attach to an Expired cache: 409" 409 "$HTTP_STATUS"
http DELETE "$API/$SHORT"
check_eq "an Expired cache can be deleted" 200 "$HTTP_STATUS"

# ---- eviction above the high watermark -------------------------------------------------------
post "$(body "$PLAIN" '{"name":"evict1","retentionDays":1000}')"
E1=$(json_get "$HTTP_BODY" .id)
post "$(body "$BB" '{"name":"evict2","retentionDays":1000}')"
E2=$(json_get "$HTTP_BODY" .id)
cache_wait "$E1" 120 >/dev/null
cache_wait "$E2" 120 >/dev/null
rc=0
imcd_stop || rc=$?
check_eq "imcd stops on SIGTERM" 0 "$rc"
imcd_start "$STATE" "${LC_FLAGS[@]}" --evict-high 0.000001 --evict-low 0.0000001 ||
	bail "imcd starts with a tiny high watermark" "$(imcd_log_tail 30)"
api_url
sleep 2
for id in "$E1" "$E2" "$BBID"; do
	http GET "$API/$id"
	check_eq "above the high watermark: $id evicted" Expired "$(json_get "$HTTP_BODY" .status)"
done
check_match "... with an Evicted event" 'Evicted' "$(jq -r '[.events[].type] | join(" ")' <<<"$HTTP_BODY")"
http GET "$API/$PINNED"
check_eq "pinned: not evicted" Ready "$(json_get "$HTTP_BODY" .status)"
http GET "$API/$HELD"
check_eq "attached: not evicted" Ready "$(json_get "$HTTP_BODY" .status)"
http GET "$IMCD_URL/metrics"
check_match "imcache_evictions_total counts them" 'imcache_evictions_total [3-9]' "$HTTP_BODY"
check_eq "the attachment survived the restart" 1 "$(curl -s "$API/$HELD" | jq .attachments)"
http DELETE "$API/$HELD?force=true"
check_eq "force-delete the held cache" 200 "$HTTP_STATUS"

# ---- tenants: quotas (403) and isolation (404) ------------------------------------------------
TOKA=tenant-a-token-0123456789
TOKB=tenant-b-token-0123456789
CONF=$TEST_TMP/imcd.json
jq -n --arg a "$TOKA" --arg b "$TOKB" '{tokens: [{token: $a, tenant: "team-a"},
	{token: $b, tenant: "team-b"}], tenants: {"team-a": {maxCaches: 1},
	"team-b": {maxBytes: 1500000000}}}' >"$CONF"
chmod 600 "$CONF"
rc=0
imcd_stop || rc=$?
check_eq "imcd stops for the config" 0 "$rc"
imcd_start "$STATE" "${LC_FLAGS[@]}" --config "$CONF" || bail "imcd starts with tokens and quotas" "$(imcd_log_tail 30)"
api_url
# httpt TOKEN METHOD URL [BODY]: http with a bearer token.
httpt() {
	local token=$1 method=$2 url=$3 out
	out=$(mktemp "$TEST_TMP/.http.XXXXXX")
	local -a args=(-sS --noproxy '*' -o "$out" -w '%{http_code}' -X "$method" --max-time 30
		-H "Authorization: Bearer $token")
	[ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' --data-binary "$4")
	HTTP_STATUS=$(curl "${args[@]}" "$url" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	rm -f "$out"
}
httpt "$TOKA" POST "$API" "$(body "$PLAIN" '{"name":"a1","retentionDays":0}')"
check_eq "team-a's first cache: 202" 202 "$HTTP_STATUS"
A1=$(json_get "$HTTP_BODY" .id)
httpt "$TOKA" POST "$API" "$(body "$BB" '{"name":"a2"}')"
check_eq "team-a's second cache, over maxCaches 1: 403" 403 "$HTTP_STATUS"
check_eq "... QuotaExceeded" QuotaExceeded "$(json_get "$HTTP_BODY" .error.code)"
httpt "$TOKB" POST "$API" "$(body "$PLAIN" '{"size":2000000000}')"
check_eq "team-b asks for more bytes than maxBytes: 403" 403 "$HTTP_STATUS"
# (maxBytes 1.5 GB holds one cache without size: it counts the builder's smallest, 1 GiB.)
httpt "$TOKB" POST "$API" "$(body "$PLAIN" '{"name":"a1","retentionDays":0}')"
check_eq "team-b's identical request: its own cache (202)" 202 "$HTTP_STATUS"
B1=$(json_get "$HTTP_BODY" .id)
check_fails "... not team-a's" test "$B1" = "$A1"
# shellcheck disable=SC2317 # called through check
cache_wait_t() { # like cache_wait, with team-a's token
	local _
	for _ in $(seq 1 600); do
		httpt "$TOKA" GET "$API/$1"
		[ "$(json_get "$HTTP_BODY" .status)" != Creating ] && return 0
		sleep 0.2
	done
	return 1
}
check "team-a's cache builds" cache_wait_t "$A1"
httpt "$TOKB" GET "$API/$A1"
check_eq "team-b cannot get team-a's cache: 404" 404 "$HTTP_STATUS"
httpt "$TOKB" GET "$API?name=a1"
check_eq "team-b's list holds only its own" "$B1" "$(jq -r '[.items[].id] | join(" ")' <<<"$HTTP_BODY")"
httpt "$TOKB" POST "$API/$A1/attachments" '{}'
check_eq "team-b cannot attach team-a's cache: 404" 404 "$HTTP_STATUS"
httpt "$TOKA" POST "$API/$A1/attachments" '{"id":"att-00000000000000a1"}'
check_eq "team-a attaches its cache" 201 "$HTTP_STATUS"
httpt "$TOKB" DELETE "$API/$A1/attachments/att-00000000000000a1"
check_eq "team-b cannot detach it: 404" 404 "$HTTP_STATUS"
httpt "$TOKB" DELETE "$API/$A1?force=true"
check_eq "team-b cannot delete it: 404" 404 "$HTTP_STATUS"
httpt "$TOKA" GET "$API/$A1"
check_eq "team-a's cache is untouched" "Ready 1" "$(jq -r '"\(.status) \(.attachments)"' <<<"$HTTP_BODY")"
httpt "$TOKA" DELETE "$API/$A1?force=true"
check_eq "team-a deletes it" 200 "$HTTP_STATUS"
httpt "$TOKA" POST "$API" "$(body "$BB" '{"name":"a2","retentionDays":0}')"
check_eq "with the quota free again, team-a creates: 202" 202 "$HTTP_STATUS"
check "team-a's new cache builds" cache_wait_t "$(json_get "$HTTP_BODY" .id)"
httpt "$TOKB" GET "$API/$B1"
[ "$(json_get "$HTTP_BODY" .status)" = Creating ] && sleep 3

check_clean_shutdown
done_testing
