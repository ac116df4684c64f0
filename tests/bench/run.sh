#!/bin/bash
# make bench: imcache against pulling and unpacking the same image, measured in one run.
#
#   BENCH_SIZE_MB (2048)  BENCH_FILES (4000)  BENCH_ATTACHES (20)
#
# A ~2 GiB image of random data in thousands of files (4 gzip layers) is pushed to a local
# docker-registry.  Then, on this machine and in this run:
#   build     imcd: POST /v1/imagecaches → Ready (pull, verify, mkfs, apply, seal)
#   skopeo    skopeo copy docker://… oci:… + umoci unpack (the usual pull+unpack)
#   curl|tar  each layer's blob through curl | tar -xz, one after the other
#   attach    clone + loop + mount in-process (attach_bench), p50/p99 of BENCH_ATTACHES,
#             then the same with 20 attaches at once
# and prints the ratios.  Then the other parts, each standalone (its own registry, imcd, store)
# and each with its own table:
#   bench_layers.sh        a 5-layer image: imcd build vs skopeo + umoci and curl | tar
#   bench_attach_scale.sh  attach p50/p99 for 1, 4 and 16 GiB snapshots and 1, 8, 20 at once
#   bench_overlay.sh       overlay vs clone mode: attach/detach at 1, 20, 50 at once, page cache
#                          and read throughput of 8 pods reading 1 GiB
#   bench_model.sh         a cache with a 4 GiB model file vs curl of the same file
#   bench_ctr.sh           ctr run from a cache vs ctr pull + run of the same image
#   bench_snapshotter.sh   a CRI pull + ctr run through imc-snapshotter (cache local) vs ctr pull
#                          + run with containerd's overlayfs snapshotter
#   bench_vm_drivers.sh    thin vs reflink in the Debian-kernel VM (emulated CPU: ratios only)
#   bench_api.sh           wrk against GET of a cache and of the list, 1,000 caches in the store
#   bench_distribution.sh  a cold host: fetch + attach over a veth link vs curl of the snapshot
#   bench_lazy.sh          a cold host: a pod's first output, lazy attach vs prefetch vs ctr pull,
#                          over a veth shaped to 1 and 10 Gbit/s, 2 and 8 GiB images; chunk sizes
# BENCH_PARTS ("layers attach_scale overlay model ctr snapshotter vm_drivers api distribution lazy")
# picks the parts.  All tables together go to
# build/bench/results.md; the numbers the plots need go to build/bench/*.dat as well (lib.sh:
# bench_dat), and tests/bench/plot.sh draws build/bench/*.png from them at the end.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MB=${BENCH_SIZE_MB:-2048}
NFILES=${BENCH_FILES:-4000}
ATTACHES=${BENCH_ATTACHES:-20}
OUT_MD=${BENCH_OUT:-$IMC_ROOT/build/bench/results.md}

bench_need skopeo umoci jq curl tar xfs_bmap


step "generating a ${SIZE_MB} MiB image in ${NFILES} files"
"$here/mkimage-big.sh" "$SIZE_MB" "$NFILES" "$TEST_TMP/layout" big >/dev/null
registry_start
mkimage_push "$TEST_TMP/layout" big bench/big:latest
REF=$REGISTRY/bench/big:latest
# The registry's files were just written: every contender below reads them from the page cache.

step "imcd build"
imcd_start "$TEST_TMP/state" --log-level info
defer imc_teardown_quiet
T0=$(now_ms)
ID=$(create_cache "$REF" bench)
JSON=$(cache_wait "$ID" 1800)
BUILD_MS=$(($(now_ms) - T0))
[ "$(json_get "$JSON" .status)" = Ready ] || {
	echo "bench: build failed: $JSON" >&2
	exit 1
}
SNAP=$IMC_STATE/pool/snapshots/$ID.img
EXTENTS=$(xfs_bmap "$SNAP" | tail -n +2 | grep -vc hole || true)
APPARENT=$(stat -c %s "$SNAP")
ALLOCATED=$(($(stat -c %b "$SNAP") * 512))

step "skopeo copy + umoci unpack"
skopeo_umoci_ms "$REF"

step "curl | tar -xz per layer"
mkdir -p "$TEST_TMP/curltar"
T0=$(now_ms)
for digest in $(registry_manifest bench/big latest | jq -r '.layers[].digest'); do
	curl -fsS --noproxy "*" "http://$REGISTRY/v2/bench/big/blobs/$digest" | tar -xz -C "$TEST_TMP/curltar"
done
CURLTAR_MS=$(($(now_ms) - T0))
rm -rf "$TEST_TMP/curltar"

# The snapshot was just written: attach once it is on disk, not while its write-back through
# the pool's loop device holds every clone and mount (bench_attach_scale.sh does the same).
step "sync"
sync
step "attach x$ATTACHES (one at a time), then x100 (20 at a time)"
SEQ=$("$IMC_BIN/bench/attach_bench" "$IMC_STATE" "$ID" "$ATTACHES" 1)
CONC=$("$IMC_BIN/bench/attach_bench" "$IMC_STATE" "$ID" 100 20)
A50=$(ms "$SEQ" .attach_p50_ms)
A99=$(ms "$SEQ" .attach_p99_ms)
D50=$(ms "$SEQ" .detach_p50_ms)
C50=$(ms "$CONC" .attach_p50_ms)
C99=$(ms "$CONC" .attach_p99_ms)

imcctl delete "$ID" >/dev/null
imcd_stop

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "Image: ${SIZE_MB} MiB of random data in ${NFILES} files, 4 gzip layers, from a local docker-registry."
	echo "Snapshot: $((APPARENT >> 20)) MiB ext4 (sparse, $((ALLOCATED >> 20)) MiB allocated), ${EXTENTS} extents."
	echo
	echo "| what | time | vs. skopeo copy + umoci unpack |"
	echo "|---|---|---|"
	echo "| skopeo copy + umoci unpack | $(ms_to_s "$PULL_MS") ($(ms_to_s "$SKOPEO_MS") + $(ms_to_s "$UMOCI_MS")) | 1 |"
	echo "| curl \\| tar -xz, per layer | $(ms_to_s "$CURLTAR_MS") | $(ratio "$CURLTAR_MS" "$PULL_MS")× the time |"
	echo "| imcd build (POST → Ready) | $(ms_to_s "$BUILD_MS") | $(ratio "$BUILD_MS" "$PULL_MS")× the time |"
	echo "| attach p50 (of $ATTACHES) | ${A50} ms | $(ratio "$PULL_MS" "$A50")× faster |"
	echo "| attach p99 (of $ATTACHES) | ${A99} ms | $(ratio "$PULL_MS" "$A99")× faster |"
	echo "| attach p50 / p99, 100 with 20 at once | ${C50} / ${C99} ms | |"
	echo "| detach p50 | ${D50} ms | |"
} | tee "$OUT_MD"
bench_dat build_big "build time of one image, seconds (skopeo copy + umoci unpack, curl | tar, imcd)" \
	image skopeo_umoci_s curl_tar_s imcd_build_s
bench_row build_big "${SIZE_MB} MiB, ${NFILES} files, 4 gzip layers" "$(secs "$PULL_MS")" \
	"$(secs "$CURLTAR_MS")" "$(secs "$BUILD_MS")"

for part in ${BENCH_PARTS-layers attach_scale overlay model ctr snapshotter vm_drivers api distribution lazy}; do
	step "$part"
	out=$IMC_ROOT/build/bench/$part.md
	BENCH_OUT=$out BENCH_SCALE_OUT=$out BENCH_CTR_OUT=$out BENCH_OVL_OUT=$out \
		"$here/bench_$part.sh" >&2
	{
		echo
		echo "### $part"
		echo
		cat "$out"
	} | tee -a "$OUT_MD"
done

step "plots"
"$here/plot.sh" "$BENCH_DIR" "$BENCH_DIR"
