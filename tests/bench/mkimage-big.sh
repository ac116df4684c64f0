#!/bin/bash
# mkimage-big.sh SIZE_MB NFILES OUTDIR [TAG]
#
# Writes an OCI image layout at OUTDIR with image TAG (default "big"): a busybox base plus about
# SIZE_MB of random (incompressible) data in about NFILES files (fewer when SIZE_MB does not
# divide evenly: files are cut at equal sizes) spread over 256 directories, in 4 gzip
# layers (pigz -1 when installed).  For the benchmarks: push it with
#   skopeo copy --dest-tls-verify=false oci:OUTDIR:TAG docker://REGISTRY/REPO:TAG
# Random data comes from openssl rand (falls back to /dev/urandom) in one stream per layer that
# split(1) cuts into files, so the cost is a few processes per layer, not one per file.
set -euo pipefail

usage() {
	echo "usage: $0 SIZE_MB NFILES OUTDIR [TAG]" >&2
	exit 2
}
if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
SIZE_MB=$1
NFILES=$2
OUT=$3
TAG=${4:-big}
if ! [[ "$SIZE_MB" =~ ^[1-9][0-9]*$ && "$NFILES" =~ ^[1-9][0-9]*$ ]]; then usage; fi
[ "$NFILES" -ge 4 ] || {
	echo "$0: NFILES must be at least 4 (one per layer)" >&2
	exit 2
}
[ "$NFILES" -le 4000000 ] || {
	echo "$0: NFILES must be at most 4000000" >&2
	exit 2
}
for t in jq tar split sha256sum; do
	command -v "$t" >/dev/null 2>&1 || {
		echo "$0: needs $t (scripts/install-deps.sh)" >&2
		exit 1
	}
done

LAYERS=4
DIRS_PER_LAYER=64 # 16 x 4 two-level dirs per layer, 256 in all
MK_GZIP_LEVEL=${MK_GZIP_LEVEL:-1} # pigz -1 unless the caller says otherwise
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/imc-mkbig.XXXXXX")
trap 'rm -rf "$TEST_TMP"' EXIT
# shellcheck source-path=SCRIPTDIR/../lib
. "$(dirname "$0")/../lib/mkimage.sh"

# fill_layer DIR K FILES BYTES: FILES files holding BYTES random bytes in all under
# DIR/bench/lK/dAA/dB.
fill_layer() {
	local dir=$1 k=$2 files=$3 bytes=$4 per flat d a b first last i
	per=$(((bytes + files - 1) / files))
	[ "$per" -gt 0 ] || per=1
	flat=$dir/.flat
	mkdir -p "$flat"
	# split makes ceil(bytes/per) files, f000000, f000001, ...
	mk_random_bytes "$bytes" | split -a 7 -d -b "$per" - "$flat/f"
	local made
	made=$(find "$flat" -type f | wc -l)
	TOTAL_FILES=$((TOTAL_FILES + made))
	# Move contiguous runs of files into each directory, one mv per directory.
	for ((d = 0; d < DIRS_PER_LAYER; d++)); do
		a=$((d / 4))
		b=$((d % 4))
		mkdir -p "$dir/bench/l$k/d$(printf '%02d' "$a")/d$b"
		first=$((d * made / DIRS_PER_LAYER))
		last=$(((d + 1) * made / DIRS_PER_LAYER - 1))
		[ "$last" -ge "$first" ] || continue
		local names=()
		for ((i = first; i <= last; i++)); do
			names+=("$flat/f$(printf '%07d' "$i")")
		done
		mv -t "$dir/bench/l$k/d$(printf '%02d' "$a")/d$b" -- "${names[@]}"
	done
	rmdir "$flat"
}

T0=$(date +%s%N)
mkdir -p "$OUT"
[ -e "$OUT/oci-layout" ] || mk_layout "$OUT"
BYTES=$((SIZE_MB * 1024 * 1024))
LINES=()
TOTAL_FILES=0
for ((k = 0; k < LAYERS; k++)); do
	src=$TEST_TMP/layer$k
	mkdir -p "$src"
	if [ "$k" -eq 0 ]; then
		mkimage_busybox_rootfs "$src"
	fi
	# The last layer takes the remainders.
	files=$((NFILES / LAYERS))
	bytes=$((BYTES / LAYERS))
	if [ "$k" -eq $((LAYERS - 1)) ]; then
		files=$((NFILES - files * (LAYERS - 1)))
		bytes=$((BYTES - bytes * (LAYERS - 1)))
	fi
	fill_layer "$src" "$k" "$files" "$bytes"
	LINES+=("$(mk_layer "$OUT" "$src" gzip)")
	rm -rf "$src"
	echo "layer $k: $((bytes / 1048576)) MiB: ${LINES[k]%% *}" >&2
done
M=$(mk_image "$OUT" amd64 \
	'{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/bench"}' "${LINES[@]}")
mk_tag "$OUT" "$TAG" "$M"
T1=$(date +%s%N)
printf '%s:%s  %s MiB in %s files, 4 layers, %s bytes compressed, built in %d ms\n' \
	"$OUT" "$TAG" "$SIZE_MB" "$TOTAL_FILES" \
	"$(jq -r '[.layers[].size] | add' "$OUT/blobs/sha256/$(jq -r .digest <<<"$M" | cut -d: -f2)")" \
	$(((T1 - T0) / 1000000))
