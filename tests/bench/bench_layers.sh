#!/bin/bash
# bench_layers.sh: the build of a 5-layer image against pulling and unpacking the same image.
#
#   BENCH_LAYERS_MB (2048)   about this much file data in the image
#   BENCH_OUT                where the markdown table goes (build/bench/layers.md); the numbers
#                            go to build/bench/build_layers.dat too
#
# The image mixes what real images hold, in five layers pushed to a local docker-registry:
#   1  gzip          a few large incompressible files (40 %)
#   2  gzip          many small compressible files in 64 directories (20 %)
#   3  uncompressed  medium incompressible files (20 %)
#   4  gzip          medium incompressible files (15 %)
#   5  gzip          whiteouts of a quarter of layer 2, hardlinks, a changed file (5 %)
# Then, on this machine and in this run (every contender reads the registry's files from the page
# cache):
#   imcd build            POST /v1/imagecaches -> Ready (pull, verify, mkfs, apply, seal)
#   skopeo + umoci        skopeo copy docker://... oci:... then umoci unpack
#   curl | tar            each layer through curl | tar -x, one after the other
# and prints each time with its ratio to skopeo + umoci (the goal for imcd: <= 0.7).
# Needs root and loop devices.  Run as:  IMC_BIN=$PWD/build tests/bench/bench_layers.sh
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MB=${BENCH_LAYERS_MB:-2048}
OUT_MD=${BENCH_OUT:-$IMC_ROOT/build/bench/layers.md}
MK_GZIP_LEVEL=${MK_GZIP_LEVEL:-1}

bench_need skopeo umoci jq curl tar openssl


# random_files DIR COUNT MB_EACH: COUNT files of MB_EACH MiB of random data.
random_files() {
	local dir=$1 n=$2 mb=$3 i
	mkdir -p "$dir"
	for ((i = 0; i < n; i++)); do
		openssl rand -out "$dir/f$i.bin" $((mb << 20))
	done
}

# small_files DIR TOTAL_MB: 64 KiB compressible (base64) files in 64 directories.
small_files() {
	local dir=$1 mb=$2 d
	for ((d = 0; d < 64; d++)); do
		mkdir -p "$dir/d$d"
	done
	openssl rand -base64 $((mb * 3 / 4 << 20)) | split -b 65536 -a 5 - "$dir/s"
	local i=0 f
	for f in "$dir"/s*; do
		mv "$f" "$dir/d$((i % 64))/${f##*/}.txt"
		i=$((i + 1))
	done
}

step "generating a 5-layer image of about ${SIZE_MB} MiB"
W=$TEST_TMP/work
L=$TEST_TMP/layout
mk_layout "$L"
big=$((SIZE_MB * 40 / 100 / 8))
med3=$((SIZE_MB * 20 / 100 / 16))
med4=$((SIZE_MB * 15 / 100 / 12))
if [ "$big" -lt 1 ] || [ "$med3" -lt 1 ] || [ "$med4" -lt 1 ]; then
	echo "bench_layers: BENCH_LAYERS_MB=$SIZE_MB is too small (at least 100)" >&2
	exit 1
fi
random_files "$W/l1/opt/big" 8 "$big"
small_files "$W/l2/usr/share/many" $((SIZE_MB * 20 / 100))
random_files "$W/l3/srv/medium" 16 "$med3"
random_files "$W/l4/var/lib/medium" 12 "$med4"
mkdir -p "$W/l5/usr/share/many" "$W/l5/opt/links" "$W/l5/etc"
for ((d = 0; d < 16; d++)); do
	: >"$W/l5/usr/share/many/.wh.d$d"
done
openssl rand -out "$W/l5/opt/links/target" $((SIZE_MB * 5 / 100 << 20))
for ((i = 0; i < 100; i++)); do
	ln "$W/l5/opt/links/target" "$W/l5/opt/links/hl$i"
done
printf 'changed\n' >"$W/l5/etc/motd"
LINES=()
LINES+=("$(mk_layer "$L" "$W/l1" gzip)")
LINES+=("$(mk_layer "$L" "$W/l2" gzip)")
LINES+=("$(mk_layer "$L" "$W/l3" none)")
LINES+=("$(mk_layer "$L" "$W/l4" gzip)")
LINES+=("$(mk_layer "$L" "$W/l5" gzip)")
rm -rf "$W"
M=$(mk_image "$L" amd64 '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}' "${LINES[@]}")
mk_tag "$L" layers "$M"
BYTES=$(du -sb "$L/blobs" | cut -f1)

registry_start
registry_push_raw "$L" layers bench/layers:v1
REF=$REGISTRY/bench/layers:v1
rm -rf "$L"

step "imcd build"
imcd_start "$TEST_TMP/state" --log-level info
defer imc_teardown_quiet
T0=$(now_ms)
ID=$(create_cache "$REF" bench-layers)
JSON=$(cache_wait "$ID" 3600)
BUILD_MS=$(($(now_ms) - T0))
[ "$(json_get "$JSON" .status)" = Ready ] || {
	echo "bench_layers: build failed: $JSON" >&2
	exit 1
}
imcctl delete "$ID" >/dev/null
imcd_stop

step "skopeo copy + umoci unpack"
skopeo_umoci_ms "$REF"

step "curl | tar -x per layer"
mkdir -p "$TEST_TMP/curltar"
T0=$(now_ms)
registry_manifest bench/layers v1 | jq -r '.layers[] | "\(.digest) \(.mediaType)"' >"$TEST_TMP/layers"
while read -r digest mt; do
	z=
	[ "${mt%gzip}" = "$mt" ] || z=z
	curl -fsS --noproxy "*" "http://$REGISTRY/v2/bench/layers/blobs/$digest" |
		tar "-x$z" -C "$TEST_TMP/curltar"
done <"$TEST_TMP/layers"
CURLTAR_MS=$(($(now_ms) - T0))
rm -rf "$TEST_TMP/curltar"

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "Image: 5 layers (4 gzip, 1 uncompressed), $((BYTES >> 20)) MiB of blobs for ${SIZE_MB} MiB of files, from a local docker-registry."
	echo
	echo "| what | time | vs. skopeo copy + umoci unpack |"
	echo "|---|---|---|"
	echo "| skopeo copy + umoci unpack | $(ms_to_s "$PULL_MS") ($(ms_to_s "$SKOPEO_MS") + $(ms_to_s "$UMOCI_MS")) | 1 |"
	echo "| curl \\| tar -x, per layer | $(ms_to_s "$CURLTAR_MS") | $(ratio "$CURLTAR_MS" "$PULL_MS")× the time |"
	echo "| imcd build (POST → Ready) | $(ms_to_s "$BUILD_MS") | $(ratio "$BUILD_MS" "$PULL_MS")× the time (goal ≤ 0.7) |"
} | tee "$OUT_MD"
bench_dat build_layers "build time of one image, seconds (skopeo copy + umoci unpack, curl | tar, imcd)" \
	image skopeo_umoci_s curl_tar_s imcd_build_s
bench_row build_layers "${SIZE_MB} MiB, 5 layers (4 gzip)" "$(secs "$PULL_MS")" \
	"$(secs "$CURLTAR_MS")" "$(secs "$BUILD_MS")"
