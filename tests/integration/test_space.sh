#!/bin/bash
# Space on the imcd host: what crashes leave behind goes, and so does what nothing needs.
#   - a blob download killed half way (imcd SIGKILLed while a trickling registry proxy sends the
#     layer a few bytes at a time) leaves blobs/sha256/.tmp-…; the next start removes it, and the
#     cache is built again;
#   - an index export killed half way (imcd stopped by the test-only stop point chunk-write with a
#     chunk written under its temporary name, then SIGKILLed: a real kill, at the one moment such
#     a file exists, which a kill at a random time would almost never hit) leaves
#     chunks/sha256/…/*.tmp.*; the next start removes it and the export runs again;
#   - the blob store is collected: a blob nothing needs goes after a build, every blob goes with
#     the last cache, and over --blob-cache-max the least recently used go, but never a blob a
#     running build needs;
#   - the embedded pool gives space back: deleting a 64 MiB cache shrinks pool.img's allocated
#     size (du) by as much, once the sweeper has trimmed the pool.
# (A seal killed during its compaction is tested in tests/unit/test_store.c, the same way.)
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs python3 du
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_images() {
	mkimage_plain "$LAYOUT" slow 8192 && registry_push_raw "$LAYOUT" slow imc/slow:v1
}
check "images push" push_images
SLOW_LAYER=$(jq -r '.layers[0].digest' <<<"$(registry_manifest imc/slow v1 2>/dev/null)")
check_match "the slow image's layer digest is known" '^sha256:' "$SLOW_LAYER"

# A registry proxy that sends the body of every blob whose digest is listed in $TRICKLE_FILE
# 1 KiB every 50 ms after its first 256 KiB, for as long as it is listed (then the rest at once).
TRICKLE_FILE=$TEST_TMP/trickle
cat >"$TEST_TMP/trickleproxy.py" <<'PY'
import http.client, sys, time
from http.server import BaseHTTPRequestHandler
sys.path.insert(0, sys.argv[1])
import loopserver
upstream, listed_file, port_file = sys.argv[2:5]

def listed(path):
    try:
        with open(listed_file) as f:
            return path.rsplit("/", 1)[-1] in f.read().split()
    except OSError:
        return False

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def forward(self):
        up = http.client.HTTPConnection(upstream, timeout=60)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
        up.request(self.command, self.path, headers=hdrs)
        r = up.getresponse()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                self.send_header(k, v)
        self.end_headers()
        sent = 0
        while self.command != "HEAD":
            slow = "/blobs/" in self.path and sent >= 256 << 10 and listed(self.path)
            chunk = r.read(1024 if slow else 65536)
            if not chunk:
                break
            self.wfile.write(chunk)
            self.wfile.flush()
            sent += len(chunk)
            if slow:
                time.sleep(0.05)
        up.close()
    do_GET = do_HEAD = forward

sys.exit(loopserver.serve(H, port_file))
PY
PROXY_DIR=$TEST_TMP/proxy
mkdir -p "$PROXY_DIR"
python3 "$TEST_TMP/trickleproxy.py" "$IMC_ROOT/tests/lib" "$REGISTRY" "$TRICKLE_FILE" \
	"$PROXY_DIR/port" >"$PROXY_DIR/stderr" 2>&1 &
PROXY_PID=$!
# shellcheck disable=SC2317
stop_proxy() { kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }
defer stop_proxy
wait_for_file "$PROXY_DIR/port" 20 "$PROXY_PID" || bail "trickle proxy starts" "$(cat "$PROXY_DIR/stderr")"
SLOW=127.0.0.1:$(cat "$PROXY_DIR/port")/imc/slow:v1

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

# The partial blob downloads in the blob store, one a line.
partial_blobs() { find "$STATE/blobs" -name '.tmp-*' 2>/dev/null; }
# Does a partial download hold some bytes (the kill must come while the layer is half there)?
# shellcheck disable=SC2317 # called through check
has_partial_bytes() {
	local f
	for f in $(partial_blobs); do
		[ "$(stat -c %s "$f")" -gt 0 ] && return 0
	done
	return 1
}
# wait_until SECONDS CMD...: poll CMD every 0.1 s.
# shellcheck disable=SC2317 # called through check
wait_until() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# ---- a download killed half way ---------------------------------------------------------------
echo "$SLOW_LAYER" >"$TRICKLE_FILE"
ID=$(create_cache "$SLOW" slow) || bail "POST a cache of the trickled image" "$HTTP_BODY"
check "the layer trickles into blobs/sha256/.tmp-…" wait_until 60 has_partial_bytes
kill -9 "$IMCD_PID"
wait "$IMCD_PID" 2>/dev/null || true
IMCD_PID=
check_match "imcd SIGKILLed mid-download left the partial download" 'tmp-' "$(partial_blobs)"
PARTIAL_KIB=$(du -sk "$STATE/blobs" | cut -f1)
rm -f "$TRICKLE_FILE" # the proxy sends at full speed again
imcd_start "$STATE" || bail "imcd starts again after SIGKILL" "$(imcd_log_tail 30)"
check_match "the restart removes the partial download and says so" \
	'repair: blobs: removed 1 partial download\(s\) a crash left \([0-9]+ bytes\)' "$(cat "$IMCD_LOG")"
J=$(cache_wait "$ID" 120) || bail "the cache is built again after the restart" "$(imcd_log_tail 20)"
check_eq "... and ends Ready" Ready "$(json_get "$J" .status)"
check_eq "no partial download is left (${PARTIAL_KIB} KiB were there)" "" "$(partial_blobs)"

# ---- an export killed half way ------------------------------------------------------------------
imcd_stop || true
# imcd exported the cache's index in the background once it was Ready: without its chunks and
# index (as a cache made Ready by an imcd that did not export at Ready), the GET below queues an
# export that has every chunk to write.
rm -rf "$STATE/chunks"
IMC_STOP_AT=chunk-write imcd_start "$STATE" || bail "imcd starts with a stop point" "$(imcd_log_tail 30)"
curl -s --noproxy '*' --max-time 60 -o /dev/null "$IMCD_URL/v1/imagecaches/$ID/index" &
CURL_PID=$!
# shellcheck disable=SC2317 # called through check
imcd_stopped() { [ "$(ps -o stat= -p "$IMCD_PID" | cut -c1)" = T ]; }
check "the export stops at its first chunk write" wait_until 60 imcd_stopped
partial_chunks() { find "$STATE/chunks" -name '*.tmp*' 2>/dev/null; }
check_match "a chunk is there under its temporary name" '\.tmp\.' "$(partial_chunks)"
kill -9 "$IMCD_PID"
wait "$IMCD_PID" 2>/dev/null || true
IMCD_PID=
kill "$CURL_PID" 2>/dev/null || true
wait "$CURL_PID" 2>/dev/null || true
check_match "imcd SIGKILLed mid-export left it" '\.tmp\.' "$(partial_chunks)"
imcd_start "$STATE" || bail "imcd starts again after SIGKILL" "$(imcd_log_tail 30)"
check_match "the restart removes the export's partial chunk and says so" \
	'repair: chunks: removed 1 partial file\(s\) of an export a crash cut short' "$(cat "$IMCD_LOG")"
check_eq "no partial chunk or index is left" "" "$(partial_chunks)"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "the export runs again: GET …/index answers 200 (after 202 while it runs)" 200 \
	"$HTTP_STATUS"
check_eq "... and leaves no temporary file" "" "$(partial_chunks)"

# ---- the blob store is collected --------------------------------------------------------------
# blob_files: the verified blobs (64 hex digits) in the blob store, one a line.
blob_files() { find "$STATE/blobs/sha256" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' 2>/dev/null; }
# plant_junk: a blob no cache, base or build needs (the store's collector removes it on its next
# pass: a probe that such a pass ran).
plant_junk() {
	head -c 4096 /dev/urandom >"$TEST_TMP/junk"
	JUNK=$STATE/blobs/sha256/$(sha256sum "$TEST_TMP/junk" | cut -d' ' -f1)
	cp "$TEST_TMP/junk" "$JUNK"
}
# shellcheck disable=SC2317 # called through check
junk_gone() { [ ! -e "$JUNK" ]; }
blob_of() { echo "$STATE/blobs/sha256/${1#sha256:}"; }
# A build that fails at once (no such image): each build's end runs a collection.
# shellcheck disable=SC2317 # called through check
fail_a_build() {
	local id
	id=$(create_cache "$REGISTRY/imc/none:v1" none) && cache_wait "$id" 60 >/dev/null &&
		http DELETE "$IMCD_URL/v1/imagecaches/$id"
}

check_match "a Ready cache's layer blob is in the blob store" "${SLOW_LAYER#sha256:}" "$(blob_files)"
plant_junk
check "a build that fails ends" fail_a_build
check "the collection after it removes a blob nothing needs" wait_until 20 junk_gone
check "... and keeps the Ready cache's layer" test -f "$(blob_of "$SLOW_LAYER")"
http DELETE "$IMCD_URL/v1/imagecaches/$ID"
check_eq "DELETE the last cache" 200 "$HTTP_STATUS"
# shellcheck disable=SC2317 # called through check
no_blobs() { [ -z "$(blob_files)" ]; }
check "with every cache deleted, blobs/ ends empty" wait_until 20 no_blobs
note "blobs/ now: $(du -sh "$STATE/blobs" | cut -f1)"

# A size cap, and a running build's blobs: image "pair" has a 4 MiB layer A and a 2 MiB layer B,
# B trickled.  The cap is 3 MiB: while the build runs, A (complete, over the cap and needed by
# no cache yet) stays; once the cache is Ready, A and B are both a cache's, 6 MiB in all, and
# the least recently used, A, goes.
# shellcheck disable=SC2317 # called through check
push_pair() {
	local work l1 l2 m
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	mkdir -p "$work/a" "$work/b"
	head -c $((4 << 20)) /dev/urandom >"$work/a/a"
	head -c $((2 << 20)) /dev/urandom >"$work/b/b"
	l1=$(mk_layer "$LAYOUT" "$work/a" none) && l2=$(mk_layer "$LAYOUT" "$work/b" none) &&
		m=$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$l1" "$l2") &&
		mk_tag "$LAYOUT" pair "$m" && registry_push_raw "$LAYOUT" pair imc/pair:v1
}
check "image pair pushes" push_pair
PAIR_M=$(registry_manifest imc/pair v1 2>/dev/null)
LAYER_A=$(jq -r '.layers[0].digest' <<<"$PAIR_M")
LAYER_B=$(jq -r '.layers[1].digest' <<<"$PAIR_M")
imcd_stop || true
imcd_start "$STATE" --sweep-interval 0.2 --blob-cache-max 3M ||
	bail "imcd starts with --blob-cache-max 3M" "$(imcd_log_tail 30)"
echo "$LAYER_B" >"$TRICKLE_FILE"
PAIR_ID=$(create_cache "127.0.0.1:$(cat "$PROXY_DIR/port")/imc/pair:v1" pair) ||
	bail "POST a cache of image pair" "$HTTP_BODY"
check "layer B trickles in" wait_until 60 has_partial_bytes
check "layer A is in" test -f "$(blob_of "$LAYER_A")"
plant_junk
check "a collection runs meanwhile (a blob nothing needs goes)" wait_until 20 junk_gone
check "... and leaves the running build's layer A, 4 MiB over the 3 MiB cap" \
	test -f "$(blob_of "$LAYER_A")"
rm -f "$TRICKLE_FILE"
J=$(cache_wait "$PAIR_ID" 120) || bail "the pair cache builds" "$(imcd_log_tail 20)"
check_eq "... Ready" Ready "$(json_get "$J" .status)"
# shellcheck disable=SC2317 # called through check
a_gone() { [ ! -e "$(blob_of "$LAYER_A")" ]; }
check "over the cap, the least recently used blob (A) goes" wait_until 20 a_gone
check "... and the newer one (B) stays" test -f "$(blob_of "$LAYER_B")"
check_match "... within the cap: $(du -sk "$STATE/blobs/sha256" | cut -f1) KiB" '^[0-9]+$' \
	"$(du -sk "$STATE/blobs/sha256" | awk '$1 <= 3072 {print $1}')"
check_match "imcd logs what the cap removed" 'blob store: [0-9]+ blob\(s\) removed \(1 of them least recently used over the 3145728-byte cap\)' \
	"$(cat "$IMCD_LOG")"
http DELETE "$IMCD_URL/v1/imagecaches/$PAIR_ID"
check_eq "DELETE the pair cache" 200 "$HTTP_STATUS"
check "blobs/ ends empty again" wait_until 20 no_blobs

# ---- the embedded pool gives space back ---------------------------------------------------------
# pool.img is a sparse file on the state dir's filesystem: a cache's blocks stay allocated in it
# after the cache is deleted unless the pool is trimmed (FITRIM through the loop device).
pool_kib() { du -k "$STATE/pool.img" | cut -f1; }
pool_apparent_kib() { du -k --apparent-size "$STATE/pool.img" | cut -f1; }
# shellcheck disable=SC2317 # called through check
push_big() { mkimage_plain "$LAYOUT" big 65536 && registry_push_raw "$LAYOUT" big imc/big:v1; }
check "a 64 MiB image pushes" push_big
BIG_ID=$(create_cache "$REGISTRY/imc/big:v1" big) || bail "POST a cache of the 64 MiB image" "$HTTP_BODY"
J=$(cache_wait "$BIG_ID" 120) || bail "the 64 MiB cache builds" "$(imcd_log_tail 20)"
check_eq "... Ready" Ready "$(json_get "$J" .status)"
sync
POOL_BEFORE=$(pool_kib)
APPARENT=$(pool_apparent_kib)
http DELETE "$IMCD_URL/v1/imagecaches/$BIG_ID"
check_eq "DELETE the 64 MiB cache" 200 "$HTTP_STATUS"
# shellcheck disable=SC2317 # called through check
pool_shrank() { [ "$(pool_kib)" -le $((POOL_BEFORE - 48 * 1024)) ]; }
check "pool.img's allocated size shrinks by the cache's 64 MiB (from $POOL_BEFORE KiB)" \
	wait_until 30 pool_shrank
note "pool.img: apparent $APPARENT KiB, allocated $POOL_BEFORE KiB with the cache, $(pool_kib) KiB after its DELETE"
check_eq "... its apparent size stays" "$APPARENT" "$(pool_apparent_kib)"
check_match "imcd logs the trim" 'pool: trimmed \([0-9]+ bytes of free space discarded' "$(cat "$IMCD_LOG")"
note "$(grep 'pool: trimmed' "$IMCD_LOG" | tail -n1)"

check_clean_shutdown

done_testing
