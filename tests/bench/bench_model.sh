#!/bin/bash
# Benchmark: a cache with a model file from a local web server vs. curl of the same file.
#
#   BENCH_MODEL_MB (4096)   size of the model file (random data)
#   BENCH_OUT               markdown table (default build/bench/results_model.md)
#
# nginx (tests/lib/webserver.sh) serves the file from TEST_TMP; a busybox image is in a local
# docker-registry.  Then, in this run, on the same machine:
#   curl          curl -o of the file onto the filesystem of imcd's state dir
#   curl+sha256   the same followed by sha256sum (imcd checks every file's digest)
#   curl+sync     curl -o, then sync of the file (imcd's volume is written back before the seal)
#   image only    imcd build of the busybox image alone (POST → Ready)
#   image+model   imcd build of busybox + the model as data (POST → Ready)
# and prints model time = (image+model) − (image only), and the ratios to curl (goal ≤ 1.1×).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/../lib/webserver.sh
. "$here/../lib/webserver.sh"

MODEL_MB=${BENCH_MODEL_MB:-4096}
OUT_MD=${BENCH_OUT:-$IMC_ROOT/build/bench/results_model.md}

bench_need jq curl sha256sum

umount_quiet() { ! findmnt -rn --mountpoint "$1" >/dev/null || umount "$1"; }
mibs() { awk -v mb="$1" -v ms="$2" 'BEGIN { if (ms <= 0) print "-"; else printf "%.0f MiB/s", mb * 1000 / ms }'; }

# build_ms JSON_BODY: POST, wait for Ready; prints "ms id".
build_ms() {
	local t0 id json
	t0=$(now_ms)
	http POST "$IMCD_URL/v1/imagecaches" "$1"
	[ "$HTTP_STATUS" = 202 ] || {
		echo "bench_model: POST: $HTTP_STATUS $HTTP_BODY" >&2
		return 1
	}
	id=$(json_get "$HTTP_BODY" .id)
	json=$(cache_wait "$id" 3600)
	[ "$(json_get "$json" .status)" = Ready ] || {
		echo "bench_model: build failed: $json" >&2
		return 1
	}
	echo "$(($(now_ms) - t0)) $id"
}

step "a ${MODEL_MB} MiB model file, nginx, a registry with busybox"
webserver_start
mkdir -p "$WEB_ROOT/models"
head -c $((MODEL_MB << 20)) /dev/urandom >"$WEB_ROOT/models/model.bin"
MODEL_SHA=$(sha256sum "$WEB_ROOT/models/model.bin" | cut -d' ' -f1)
# Every contender starts with nothing dirty: writing the model back must not slow the first one.
sync
URL=$WEB_URL/models/model.bin
registry_start
mkimage_busybox "$TEST_TMP/layout" bb >/dev/null
mkimage_push "$TEST_TMP/layout" bb bench/bb:v1
REF=$REGISTRY/bench/bb:v1

imcd_start "$TEST_TMP/state" --log-level info --allow-data-destination "${WEB_URL#http://}"
defer imc_teardown_quiet

step "curl -o (and sha256sum)"
T0=$(now_ms)
curl -fsS --noproxy '*' -o "$TEST_TMP/state/curl-model.bin" "$URL"
T1=$(now_ms)
CURL_SHA=$(sha256sum "$TEST_TMP/state/curl-model.bin" | cut -d' ' -f1)
T2=$(now_ms)
[ "$CURL_SHA" = "$MODEL_SHA" ] || {
	echo "bench_model: curl got a different file" >&2
	exit 1
}
CURL_MS=$((T1 - T0))
CURLSHA_MS=$((T2 - T0))
rm -f "$TEST_TMP/state/curl-model.bin"
sync
T0=$(now_ms)
curl -fsS --noproxy '*' -o "$TEST_TMP/state/curl-model.bin" "$URL"
sync "$TEST_TMP/state/curl-model.bin"
CURLSYNC_MS=$(($(now_ms) - T0))
rm -f "$TEST_TMP/state/curl-model.bin"
sync

step "imcd: the image alone"
read -r IMG_MS IMG_ID < <(build_ms "$(jq -cn --arg r "$REF" '{images: [{ref: $r}]}')")

step "imcd: the image and the model"
read -r ALL_MS ALL_ID < <(build_ms "$(jq -cn --arg r "$REF" --arg u "$URL" --arg s "$MODEL_SHA" \
	'{images: [{ref: $r}], data: [{source: $u, path: "llm", sha256: $s}]}')")
MODEL_MS=$((ALL_MS - IMG_MS))

SNAP=$IMC_STATE/pool/snapshots/$ALL_ID.img
SNAP_EXTENTS=$(xfs_bmap "$SNAP" 2>/dev/null | tail -n +2 | grep -vc hole || true)
MNT=$TEST_TMP/snap
mkdir -p "$MNT"
mount -o ro,loop "$SNAP" "$MNT"
defer umount_quiet "$MNT"
FILE_EXTENTS=$(filefrag "$MNT/data/llm/model.bin" | grep -Eo '[0-9]+ extents?' | cut -d' ' -f1)
umount "$MNT"

for id in "$IMG_ID" "$ALL_ID"; do
	http DELETE "$IMCD_URL/v1/imagecaches/$id" >/dev/null
done
imcd_stop

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "Model: ${MODEL_MB} MiB of random data from nginx on loopback; busybox image from a local docker-registry."
	echo "Snapshot: ${SNAP_EXTENTS} extents in the pool (xfs_bmap); model.bin inside it: ${FILE_EXTENTS} extents (filefrag)."
	echo
	echo "| what | time | throughput | vs. curl -o |"
	echo "|---|---|---|---|"
	echo "| curl -o | $(ms_to_s "$CURL_MS" 2) | $(mibs "$MODEL_MB" "$CURL_MS") | 1 |"
	echo "| curl -o + sha256sum | $(ms_to_s "$CURLSHA_MS" 2) | $(mibs "$MODEL_MB" "$CURLSHA_MS") | $(ratio "$CURLSHA_MS" "$CURL_MS")× |"
	echo "| curl -o + sync | $(ms_to_s "$CURLSYNC_MS" 2) | $(mibs "$MODEL_MB" "$CURLSYNC_MS") | $(ratio "$CURLSYNC_MS" "$CURL_MS")× |"
	echo "| imcd build, image only | $(ms_to_s "$IMG_MS" 2) | | |"
	echo "| imcd build, image + model | $(ms_to_s "$ALL_MS" 2) | | $(ratio "$ALL_MS" "$CURL_MS")× |"
	echo "| imcd model part (difference) | $(ms_to_s "$MODEL_MS" 2) | $(mibs "$MODEL_MB" "$MODEL_MS") | $(ratio "$MODEL_MS" "$CURL_MS")× (goal ≤ 1.1×) |"
} | tee "$OUT_MD"
