#!/bin/bash
# Distribution of snapshots in chunks (docs/distribution.md), two hosts on one machine: imcd (and
# the registry it builds from) in this network namespace, the agent in a private one joined by a
# veth pair on 10.213.X.0/30.  The agent attaches a cache it has never seen and a container runs
# from it; the index is exported in the background once a cache is Ready (202 with Retry-After
# meanwhile, while /healthz answers, and the agent waits it out); the index and chunk
# endpoints answer Range, If-None-Match and bad names right; a chunk
# corrupted on the server is caught (refetched, then a clear failure, nothing left behind); a
# connection dropped in the middle of chunks resumes; a full local pool fails cleanly; a cache
# rebuilt with a small change sends only the chunks that changed; --cache-size evicts the least
# recently used snapshot; a deleted cache takes its index and the chunks only it held; an export
# in flight stops at once for a delete of its cache and for imcd's shutdown.  The
# namespace and the veth are removed on every exit path.
# Needs root, loop devices, ip netns and nsenter.
# shellcheck source-path=SCRIPTDIR disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"
. "$(dirname "$0")/../lib/netns.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs sha256sum ip nsenter python3 xxd zstd
need_programs imcd imcctl imc-attach

# --- two hosts: a network namespace for the agent, a veth pair to it -------------------------

netns_pair imc-dist imcd
check "namespace $NS joined by a veth on 10.213.$NET.0/30" netns_pair_up

# pool_objects STATE: the volumes and snapshots in an agent's pool ("no pool" when it has none).
pool_objects() {
	if [ ! -d "$1/pool/volumes" ] || [ ! -d "$1/pool/snapshots" ]; then
		echo "no pool"
		return 0
	fi
	find "$1/pool/volumes" "$1/pool/snapshots" -mindepth 1 -printf '%f\n'
}

# agent STATE ARG...: imc-attach on the second host (only its network is apart: its mounts are
# this host's, so the container can be run from here).
# shellcheck disable=SC2317
agent() {
	local state=$1
	shift
	nsenter --net="/run/netns/$NS" "$IMC_BIN/imc-attach" --state-dir "$state" -v "$@"
}
# shellcheck disable=SC2317
agent_teardown() {
	"$IMC_BIN/imc-attach" --state-dir "$1" teardown >/dev/null 2>&1 || true
}

# --- the server host: registry, images, imcd --------------------------------------------------

# The registry listens on the server's veth address: the agent pulls pushed caches from it.
IMC_REGISTRY_ADDR=$SERVER_IP registry_start_or_bail
LAYOUT=$TEST_TMP/layout
WORK=$TEST_TMP/work
# mkimage_dist TAG EXTRA: busybox and 24 MiB of fixed pseudo-random data (layer 1, the same in
# every tag), plus a small layer that differs per tag.
# shellcheck disable=SC2317
mkimage_dist() {
	local tag=$1 extra=$2 l1 l2 m
	[ -e "$LAYOUT/oci-layout" ] || mk_layout "$LAYOUT"
	rm -rf "$WORK" && mkdir -p "$WORK"
	mkimage_busybox_rootfs "$WORK/l1"
	mkdir -p "$WORK/l1/blob" "$WORK/l2/etc"
	[ -e "$TEST_TMP/data.bin" ] || head -c $((24 << 20)) /dev/urandom >"$TEST_TMP/data.bin"
	cp "$TEST_TMP/data.bin" "$WORK/l1/blob/data.bin"
	printf '%s\n' "$extra" >"$WORK/l2/etc/release"
	l1=$(mk_layer "$LAYOUT" "$WORK/l1" gzip)
	l2=$(mk_layer "$LAYOUT" "$WORK/l2" gzip)
	m=$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$l1" "$l2")
	mk_tag "$LAYOUT" "$tag" "$m"
	mkimage_push "$LAYOUT" "$tag" "imc/dist:$tag"
}
check "image v1 builds and pushes" mkimage_dist v1 "release one"

STATE=$TEST_TMP/server
defer imc_teardown_quiet
_imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" || bail "imcd starts on $SERVER_IP" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL"

build() {
	local out
	out=$(imcctl create "$REGISTRY/imc/dist:$1" --name "dist-$1" --wait 2>&1) || {
		echo "$out" >&2
		return 1
	}
	printf '%s\n' "$out" | tail -n1 | tr -d '[:space:]'
}
ID=$(build v1) || bail "cache of v1 is Ready"
ok "cache $ID is Ready"

check_fails "the agent's namespace cannot reach this host's loopback" \
	nsenter --net="/run/netns/$NS" curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:${REGISTRY##*:}/v2/"
check "the agent's namespace reaches imcd over the veth" \
	nsenter --net="/run/netns/$NS" curl -fsS --max-time 5 -o /dev/null "$IMCD_URL/healthz"

# --- the endpoints ----------------------------------------------------------------------------

# index_get ID: GET the index once; INDEX_STATUS, INDEX_RETRY (the Retry-After header), INDEX_BODY.
index_get() {
	local out=$TEST_TMP/index-get
	INDEX_STATUS=$(curl -sS --noproxy '*' -o "$out.body" -D "$out.head" -w '%{http_code}' \
		--max-time 30 "$IMCD_URL/v1/imagecaches/$1/index" 2>/dev/null) || INDEX_STATUS=000
	INDEX_RETRY=$(sed -n 's/^[Rr]etry-[Aa]fter: *//p' "$out.head" | tr -d '\r')
	INDEX_BODY=$(cat "$out.body")
}
# exported_count ID: how many times imcd logged an export of ID's chunk index.
exported_count() {
	grep -c "cache $1: chunk index exported" "$IMCD_LOG" || true
}
# wait_exported ID N: until imcd has logged N exports of ID's index (at most 120 s).
wait_exported() {
	local i
	for i in $(seq 600); do
		[ "$(exported_count "$1")" -ge "$2" ] && return 0
		sleep 0.2
	done
	echo "cache $1: $2 export(s) not logged after 120 s" >&2
	return 1
}

# The cache became Ready a moment ago: its export runs in the background.
index_get "$ID"
if [ "$INDEX_STATUS" = 200 ] || { [ "$INDEX_STATUS" = 202 ] && [ "$INDEX_RETRY" = 1 ]; }; then
	ok "GET index right after Ready: $INDEX_STATUS (202 with Retry-After while it is exported)"
else
	not_ok "GET index right after Ready: 200 or 202 with Retry-After" \
		"$INDEX_STATUS Retry-After '$INDEX_RETRY' $INDEX_BODY"
fi
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "GET index is 200" 200 "$HTTP_STATUS"
INDEX=$HTTP_BODY
printf '%s' "$INDEX" >"$TEST_TMP/index.json"
SIZE=$(jq -r .size <<<"$INDEX")
CS=$(jq -r .chunkSize <<<"$INDEX")
NCHUNKS=$(jq '.chunks | length' <<<"$INDEX")
ALL=$(((SIZE + CS - 1) / CS))
check_eq "index names its media type and cache" "application/vnd.imcache.index.v1+json $ID" \
	"$(jq -r '.mediaType + " " + .cacheId' <<<"$INDEX")"
if [ "$NCHUNKS" -gt 0 ] && [ "$NCHUNKS" -lt "$ALL" ]; then
	ok "all-zero chunks are not listed ($NCHUNKS of $ALL chunks stored)"
else
	not_ok "all-zero chunks are not listed" "$NCHUNKS of $ALL"
fi
check_match "the snapshot's sha256 is named" '^sha256:[0-9a-f]{64}$' "$(jq -r .sha256 <<<"$INDEX")"
check_eq "index of an unknown cache is 404" 404 \
	"$(curl -s -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/imagecaches/imc-0000000000000000/index")"
check_eq "index of an id that is no cache id is 404, as for GET" 404 \
	"$(curl -s -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/imagecaches/not-a-cache-id/index")"
check_eq "index of a malformed id is 400" 400 \
	"$(curl -s -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/imagecaches/not!an!id/index")"

D0=$(jq -r '.chunks[0].digest' <<<"$INDEX")
C0=$(jq -r '.chunks[0].csize' <<<"$INDEX")
B0=$(jq -r '.chunks[0].blob' <<<"$INDEX")
CURL=(curl -s --noproxy '*' --max-time 10)
check_eq "GET chunk: 200 with its compressed size" "200 $C0" \
	"$("${CURL[@]}" -o "$TEST_TMP/c0" -w '%{http_code} %{size_download}' "$IMCD_URL/v1/chunks/$D0")"
check_eq "the chunk blob is named by its sha256" "$B0" "sha256:$(_sha256 "$TEST_TMP/c0")"
check_eq "the chunk decompresses to its digest" "$D0" "sha256:$(zstd -dc <"$TEST_TMP/c0" | sha256sum | cut -d' ' -f1)"
check_eq "If-None-Match with its ETag is 304" 304 \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H "If-None-Match: \"$D0\"" "$IMCD_URL/v1/chunks/$D0")"
check_eq "Range bytes=1-10 is 206 with 10 bytes" "206 10" \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download}' -H 'Range: bytes=1-10' "$IMCD_URL/v1/chunks/$D0")"
check_eq "a range past the end is 416" 416 \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H "Range: bytes=$((C0 + 5))-" "$IMCD_URL/v1/chunks/$D0")"
check_eq "an unknown chunk is 404" 404 \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/chunks/sha256:$(printf '%064d' 0)")"
check_eq "a malformed digest is 400" 400 \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/chunks/sha256:xyz")"
check_eq "POST on a chunk is 405" 405 \
	"$("${CURL[@]}" -o /dev/null -w '%{http_code}' -X POST "$IMCD_URL/v1/chunks/$D0")"

# --- the agent attaches a cache it has never seen --------------------------------------------

A1=$TEST_TMP/agent1
defer agent_teardown "$A1"
MNT=$TEST_TMP/rootfs
mkdir -p "$MNT"
# shellcheck disable=SC2317
agent_detach_quiet() {
	"$IMC_BIN/imc-attach" --state-dir "$1" detach "$2" >/dev/null 2>&1 || true
}
defer agent_detach_quiet "$A1" "$MNT"
_capture agent "$A1" --server "$IMCD_URL" --no-lazy attach "$ID" "$MNT"
if [ "$rc" -eq 0 ]; then
	ok "the agent fetches and attaches $ID"
	note "$out"
else
	not_ok "the agent fetches and attaches $ID" "$out"
fi
check_eq "the local snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(_sha256 "$A1/pool/snapshots/$ID.img" 2>/dev/null)"
check_eq "the rootfs holds the image's data" "$(_sha256 "$WORK/l1/blob/data.bin")" \
	"$(_sha256 "$MNT/blob/data.bin" 2>/dev/null)"
if run_container "$MNT" /bin/sh -c 'cat /etc/release'; then
	check_eq "a container runs from the fetched cache ($CONTAINER_RUNTIME)" "release one" \
		"$(printf '%s' "$CONTAINER_OUTPUT" | tr -d '\r')"
else
	not_ok "a container runs from the fetched cache" "$CONTAINER_ERRORS"
fi
check "detach" "$IMC_BIN/imc-attach" --state-dir "$A1" detach "$MNT"
_capture agent "$A1" --server "$IMCD_URL" prefetch "$ID"
check_eq "prefetch of a cache the host has fetches nothing" "0 " "$rc $(grep fetched <<<"$out" || true)"

# --- the export runs in the background, and the agent waits for it ----------------------------

# A cache whose index is not exported (as one made Ready before imcd exported at Ready): the
# request queues the export and is answered at once.
check "imcd logs the background export of $ID" wait_exported "$ID" 1
rm -f "$STATE/chunks/index/$ID.json"
A5=$TEST_TMP/agent5
defer agent_teardown "$A5"
MARK=$(wc -l <"$IMCD_LOG")
_capture agent "$A5" --server "$IMCD_URL" prefetch "$ID"
check_eq "the agent fetches a cache whose index is being exported" 0 "$rc"
SEEN=$(tail -n +"$((MARK + 1))" "$IMCD_LOG" | sed -n "s|.*GET /v1/imagecaches/$ID/index: \([0-9]*\).*|\1|p" |
	uniq | tr '\n' ' ')
check_match "... after waiting out 202 answers (imcd answered: $SEEN)" '^202 (202 )*200 $' "$SEEN"
check_eq "... and its snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(_sha256 "$A5/pool/snapshots/$ID.img" 2>/dev/null)"
agent_teardown "$A5"
check "the export is logged again" wait_exported "$ID" 2
rm -f "$STATE/chunks/index/$ID.json"
index_get "$ID"
check_eq "GET index while it is not exported: 202 Exporting with Retry-After: 1" "202 Exporting 1" \
	"$INDEX_STATUS $(jq -r .status <<<"$INDEX_BODY" 2>/dev/null) $INDEX_RETRY"
check_eq "/healthz answers while the export runs" 200 \
	"$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$IMCD_URL/healthz" || true)"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "... then the same index, 200" "200 $(jq -r .sha256 <<<"$INDEX")" \
	"$HTTP_STATUS $(jq -r .sha256 <<<"$HTTP_BODY" 2>/dev/null)"

# --- a corrupted chunk ------------------------------------------------------------------------

BLOBFILE=$STATE/chunks/sha256/${D0:7:2}/${D0:7}.zst
flip() {
	local off=$(($(stat -c %s "$BLOBFILE") / 2)) b
	b=$(xxd -p -s "$off" -l 1 "$BLOBFILE")
	printf '%02x' $((0x$b ^ 0xff)) | xxd -r -p | dd of="$BLOBFILE" bs=1 seek="$off" conv=notrunc status=none
}
A2=$TEST_TMP/agent2
defer agent_teardown "$A2"
flip
check_fails_with "a chunk corrupted on the server is refetched once, then fails naming it" \
	"corrupt twice" agent "$A2" --server "$IMCD_URL" prefetch "$ID"
check_eq "the failed fetch leaves no volume or snapshot" "" \
	"$(pool_objects "$A2")"
flip
check "once the chunk is repaired the fetch succeeds" agent "$A2" --server "$IMCD_URL" prefetch "$ID"

# --- push to the registry, pull from the registry only -----------------------------------------

_capture imcctl push "$ID" "$REGISTRY/imc/snap:v1" --insecure-registry "$REGISTRY"
if [ "$rc" -eq 0 ] && grep -q "$((NCHUNKS + 1)) blobs uploaded" <<<"$out"; then
	ok "imcctl push writes the chunks and the index to the registry"
else
	not_ok "imcctl push writes the snapshot to the registry" "exit $rc" "$out"
fi
MANIFEST=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
	"http://$REGISTRY/v2/imc/snap/manifests/v1" 2>&1) || true
check_eq "the artifact has the snapshot artifactType, the index as config, chunks as layers" \
	"application/vnd.imcache.snapshot.v1 application/vnd.imcache.index.v1+json application/vnd.imcache.chunk.v1.zstd" \
	"$(jq -r '[.artifactType, .config.mediaType, (.layers[0].mediaType)] | join(" ")' <<<"$MANIFEST" 2>&1)"
_capture imcctl push "$ID" "$REGISTRY/imc/snap:again" --insecure-registry "$REGISTRY"
check_match "a second push uploads only the manifest (the blobs are there)" \
	" 0 blobs uploaded .* $((NCHUNKS + 1)) already there" "$out"
A6=$TEST_TMP/agent6
defer agent_teardown "$A6"
_capture nsenter --net="/run/netns/$NS" env -u IMCACHE_SERVER "$IMC_BIN/imc-attach" \
	--state-dir "$A6" -v --registry-ref "$REGISTRY/imc/snap:v1" --insecure-registry "$REGISTRY" \
	prefetch "$ID"
if [ "$rc" -eq 0 ]; then
	ok "the second host pulls the cache from the registry alone"
else
	not_ok "the second host pulls the cache from the registry" "exit $rc" "$out"
fi
check_eq "the pulled snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(_sha256 "$A6/pool/snapshots/$ID.img" 2>/dev/null)"
agent_teardown "$A6"

# --- a dropped connection: a proxy cuts every chunk's first answer ----------------------------

PROXY_LOG=$TEST_TMP/proxy.log
PROXY_PORT=$((20000 + RANDOM % 20000))
python3 - "$SERVER_IP" "$PROXY_PORT" "${IMCD_URL#http://}" "$PROXY_LOG" <<'EOF' &
import http.client, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
host, port, upstream, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen, lock = set(), threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        up = http.client.HTTPConnection(upstream, timeout=30)
        hdr = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
        up.request("GET", self.path, headers=hdr)
        r = up.getresponse()
        body = r.read()
        with lock:
            first = "/v1/chunks/" in self.path and self.path not in seen
            seen.add(self.path)
        cut = first and r.status == 200 and len(body) > 100
        with open(log, "a") as f:
            f.write("%s %s %s\n" % (self.path, self.headers.get("Range", "-"), "cut" if cut else r.status))
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                self.send_header(k, v)
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            self.close_connection = True
            return
        self.wfile.write(body)
ThreadingHTTPServer((host, port), H).serve_forever()
EOF
PROXY_PID=$!
defer kill "$PROXY_PID"
for _ in $(seq 50); do
	curl -s -o /dev/null "http://$SERVER_IP:$PROXY_PORT/healthz" && break
	sleep 0.1
done
A3=$TEST_TMP/agent3
defer agent_teardown "$A3"
_capture agent "$A3" --server "http://$SERVER_IP:$PROXY_PORT" prefetch "$ID"
if [ "$rc" -eq 0 ] && grep -q cut "$PROXY_LOG" && grep -q 'bytes=' "$PROXY_LOG"; then
	ok "chunks cut off mid-transfer resume with Range ($(grep -c cut "$PROXY_LOG") cut)"
else
	not_ok "chunks cut off mid-transfer resume" "exit $rc" "$out" "$(head -5 "$PROXY_LOG" 2>/dev/null)"
fi
check_eq "the resumed snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(_sha256 "$A3/pool/snapshots/$ID.img" 2>/dev/null)"

# --- a full local disk --------------------------------------------------------------------------

A4=$TEST_TMP/agent4
defer agent_teardown "$A4"
"$IMC_BIN/imc-attach" --state-dir "$A4" list >/dev/null
AVAIL=$(df -B1 --output=avail "$A4/pool" | tail -n1 | tr -d ' ')
fallocate -l $((AVAIL - (4 << 20))) "$A4/pool/filler"
check_fails_with "a full local pool fails cleanly, saying so" "[Ff]ree|[Ss]pace" \
	agent "$A4" --server "$IMCD_URL" prefetch "$ID"
check_eq "nothing half-written is left in the full pool" "" \
	"$(pool_objects "$A4")"
rm -f "$A4/pool/filler"

# --- an incremental rebuild sends only what changed ------------------------------------------

check "image v2 (one file changed) builds and pushes" mkimage_dist v2 "release two"
ID2=$(build v2) || bail "cache of v2 is Ready"
ok "cache $ID2 is Ready"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID2/index" 120
N2=$(jq '.chunks | length' <<<"$HTTP_BODY")
MARK=$(wc -l <"$IMCD_LOG")
_capture agent "$A1" --server "$IMCD_URL" prefetch "$ID2"
SENT=$(tail -n +"$((MARK + 1))" "$IMCD_LOG" | grep -c 'GET /v1/chunks/.*: 200' || true)
note "$out"
if [ "$rc" -eq 0 ] && [ "$SENT" -lt "$N2" ] && grep -q ' [1-9][0-9]* local' <<<"$out"; then
	ok "the rebuilt cache sent $SENT of its $N2 chunks; the rest were copied locally"
else
	not_ok "the rebuilt cache sends only changed chunks" "exit $rc, sent $SENT of $N2" "$out"
fi
check_eq "the incremental snapshot has its index's sha256" "$(jq -r .sha256 <<<"$HTTP_BODY")" \
	"sha256:$(_sha256 "$A1/pool/snapshots/$ID2.img" 2>/dev/null)"

# --- LRU: a cache size that holds one snapshot evicts the least recently used ---------------

touch -d '2 hours ago' "$A3/chunks/local/$ID.use"
LIMIT=$(($(du -B1 "$A3/pool/snapshots/$ID.img" | cut -f1) * 3 / 2))
_capture agent "$A3" --server "$IMCD_URL" --cache-size "$LIMIT" prefetch "$ID2"
if [ "$rc" -eq 0 ] && [ ! -e "$A3/pool/snapshots/$ID.img" ] && [ -e "$A3/pool/snapshots/$ID2.img" ] &&
	grep -q '1 evicted' <<<"$out"; then
	ok "--cache-size evicts the least recently used snapshot to make room"
else
	not_ok "--cache-size evicts the LRU snapshot" "exit $rc" "$out" "$(ls "$A3/pool/snapshots")"
fi
A4_MNT=$TEST_TMP/rootfs4
mkdir -p "$A4_MNT"
defer agent_detach_quiet "$A4" "$A4_MNT"
check "an attached snapshot is never evicted" agent "$A4" --server "$IMCD_URL" --no-lazy attach "$ID" "$A4_MNT"
_capture agent "$A4" --server "$IMCD_URL" --cache-size "$LIMIT" prefetch "$ID2"
check_eq "... the fetch that needs its room fails instead" "1 yes" \
	"$rc $([ -e "$A4/pool/snapshots/$ID.img" ] && echo yes)"
check "detach" "$IMC_BIN/imc-attach" --state-dir "$A4" detach "$A4_MNT"
check "its shared lower stays mounted, warm" findmnt -rn --mountpoint "$A4/lowers/$ID"
_capture agent "$A4" --server "$IMCD_URL" --cache-size "$LIMIT" prefetch "$ID2"
check_eq "a warm lower does not keep its snapshot from eviction" "0 gone" \
	"$rc $([ -e "$A4/pool/snapshots/$ID.img" ] && echo there || echo gone)"
# lower_left: what is left of the lower (mount, loop device, records), given 2 s for the kernel
# to free the autoclear loop device after the unmount.
lower_left() {
	findmnt -rn -o TARGET | grep -F "$A4/lowers/$ID" | sed 's/^/mount /' || true
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | grep -F "$A4/pool/snapshots/$ID.img" || true
	find "$A4/lowers" -mindepth 1 -maxdepth 1 -name "$ID*" 2>/dev/null
}
for _ in $(seq 1 40); do [ -z "$(lower_left)" ] && break; sleep 0.05; done
check_eq "... it is released first: no mount, loop device or records left" "" "$(lower_left)"

# --- a deleted cache takes its index and the chunks only it held ---------------------------

check "delete the rebuilt cache" imcctl delete "$ID2"
check_eq "its chunk index is gone from imcd's chunk store" "gone" \
	"$([ -e "$STATE/chunks/index/$ID2.json" ] && echo there || echo gone)"
check "imcd freed the chunks no other cache names" \
	grep -q "cache $ID2: [1-9][0-9]* bytes of chunks freed" "$IMCD_LOG"
check_eq "the chunks of the first cache stay" "ok" \
	"$([ -e "$STATE/chunks/index/$ID.json" ] && [ -e "$BLOBFILE" ] && echo ok)"

# --- imcd --export request: nothing exported at Ready; the first GET of the index asks for it ----
# The test builds' hold ($IMC_EXPORT_HOLD, missing until the test makes it) shows an export that
# started: it logs "export held" after its first chunk.  With the default (--export ready) that
# line follows the Ready at once.
rc=0
imcd_stop || rc=$?
check_eq "imcd stops (exit 0)" 0 "$rc"
GO5=$TEST_TMP/export5-go
IMC_EXPORT_HOLD=$GO5 _imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" \
	--export request || bail "imcd starts with --export request" "$(imcd_log_tail 30)"
check "image v5 builds and pushes" mkimage_dist v5 "release five"
ID5=$(build v5) || bail "cache of v5 is Ready"
sleep 2 # (a window for an export that should not start; nothing is timed)
check_eq "Ready, and no export of its index started" "0 gone" \
	"$(grep -c "cache $ID5: export held until" "$IMCD_LOG") $([ -e "$STATE/chunks/index/$ID5.json" ] && echo there || echo gone)"
index_get "$ID5"
check_eq "the first GET of its index: 202 Exporting" "202 Exporting" \
	"$INDEX_STATUS $(jq -r .status <<<"$INDEX_BODY" 2>/dev/null)"
check "that GET started the export" wait_for_match "$IMCD_LOG" "cache $ID5: export held until" 60
touch "$GO5"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID5/index" 120
check_eq "... then its index, 200" "200 true" \
	"$HTTP_STATUS $(jq -r '.chunks | length > 0' <<<"$HTTP_BODY" 2>/dev/null)"
check_eq "imcd --export never: a usage error" 2 \
	"$("$IMC_BIN/imcd" --export never >/dev/null 2>&1; echo $?)"

# --- an export in flight stops for a delete and for imcd's shutdown -------------------------
# imcd again, with the test builds' hold: an export waits after its first chunk until
# $IMC_EXPORT_HOLD exists (never, here), so both stops below find it in flight; before, a
# delete and a SIGTERM each waited for the whole snapshot to be cut.
rc=0
imcd_stop || rc=$?
check_eq "imcd stops (exit 0)" 0 "$rc"
IMC_EXPORT_HOLD=$TEST_TMP/export-go _imcd_launch "$STATE" "$SERVER_IP:0" \
	--insecure-registry "$REGISTRY" || bail "imcd starts again" "$(imcd_log_tail 30)"
check "image v3 builds and pushes" mkimage_dist v3 "release three"
ID3=$(build v3) || bail "cache of v3 is Ready"
check "the export of its index is in flight" \
	wait_for_match "$IMCD_LOG" "cache $ID3: export held until" 60
check "delete it" imcctl delete "$ID3"
check "the delete stops the export" \
	wait_for_match "$IMCD_LOG" "cache $ID3: chunk index export stopped (the cache is gone)" 60
check_eq "no index of it is written" "gone" \
	"$([ -e "$STATE/chunks/index/$ID3.json" ] && echo there || echo gone)"
check "image v4 builds and pushes" mkimage_dist v4 "release four"
ID4=$(build v4) || bail "cache of v4 is Ready"
check "the export of its index is in flight" \
	wait_for_match "$IMCD_LOG" "cache $ID4: export held until" 60

for a in "$A1" "$A2" "$A3" "$A4"; do
	agent_teardown "$a"
done
check_clean_shutdown # SIGTERM while the export of v4's index is held
check "the shutdown stopped the export" \
	grep -qF "cache $ID4: chunk index export stopped (imcd is stopping)" "$IMCD_LOG"
done_testing
