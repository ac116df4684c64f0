#!/bin/bash
# bench_distribution.sh: the first attach of a cache on a cold host, fetched in chunks from imcd,
# against curl of the same snapshot file over the same link; and the bytes an incremental rebuild
# sends against the full size.
#
#   BENCH_DIST_MB (2048)     the snapshot's size (at least 1024: the builder's minimum); about
#                            30 % of it stays zero blocks
#   BENCH_DIST_RATE          shape the link to this rate with tc (e.g. 1gbit); default: unshaped
#   BENCH_OUT                where the markdown table goes (build/bench/distribution.md)
#
# Two hosts on one machine: imcd and the registry in this network namespace, the agent in a
# private one, joined by a veth pair on 10.213.X.0/30.  Contenders, each into a cold agent:
#   imc-attach attach     GET index, chunks in parallel (zstd, verified), write, seal, clone,
#                         mount: the time until the rootfs is there
#   curl                  GET of the sealed snapshot file from nginx (sendfile) on the server
# Needs root, loop devices, ip netns, nsenter and nginx.
#   Run as:  IMC_BIN=$PWD/build tests/bench/bench_distribution.sh
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/../lib/webserver.sh
. "$here/../lib/webserver.sh"
# shellcheck source=SCRIPTDIR/../lib/netns.sh
. "$here/../lib/netns.sh"

need_root
need_loop
need_tool jq curl skopeo ip nsenter nginx xfs_bmap
MB=${BENCH_DIST_MB:-2048}
OUT=${BENCH_OUT:-$IMC_ROOT/build/bench/distribution.md}
mkdir -p "$(dirname "$OUT")"

netns_pair imc-bdist imcb
netns_pair_up
if [ -n "${BENCH_DIST_RATE:-}" ]; then
	bench_shape "$VETH" "$BENCH_DIST_RATE"
fi
agent() { bench_agent "$@"; }

# --- the cache: busybox and model data of 70 % of the snapshot's size (the rest stays zero) ---
# The builder sizes image filesystems at 8x their layers (sparse), so the data goes in as /data
# (served by nginx here), which the builder stores as it is: the requested size then holds it.

IMC_REGISTRY_ADDR=$SERVER_IP registry_start >/dev/null
webserver_start >/dev/null
LAYOUT=$TEST_TMP/layout
mkimage_busybox "$LAYOUT" bb
mkimage_push "$LAYOUT" bb imc/bdist:v1
head -c $((MB * 7 / 10 << 20)) /dev/urandom >"$WEB_ROOT/model.bin"
# The rebuild: the same model with 1 MiB in its middle changed.
cp "$WEB_ROOT/model.bin" "$WEB_ROOT/model2.bin"
head -c $((1 << 20)) /dev/urandom |
	dd of="$WEB_ROOT/model2.bin" bs=1M seek=$((MB * 7 / 20)) conv=notrunc status=none
STATE=$TEST_TMP/server
defer imc_teardown_quiet
_imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" \
	--allow-data-destination "${WEB_URL#http://}"
build() {
	imcctl create "$REGISTRY/imc/bdist:v1" --data "$WEB_URL/$1=model" --size "$((MB << 20))" \
		--wait --timeout 1800 | tail -n1 | tr -d '[:space:]'
}
ID=$(build model.bin)
# get_index ID FILE: the index, once imcd has exported it (202 until then).
get_index() {
	while [ "$(curl -sS -o "$2" -w '%{http_code}' "$IMCD_URL/v1/imagecaches/$1/index")" = 202 ]; do
		sleep 0.1
	done
}
t0=$(now_ms)
get_index "$ID" "$TEST_TMP/index.json"
EXPORT_MS=$(($(now_ms) - t0))
SIZE=$(jq .size "$TEST_TMP/index.json")
CS=$(jq .chunkSize "$TEST_TMP/index.json")
N=$(jq '.chunks | length' "$TEST_TMP/index.json")
ALL=$(((SIZE + CS - 1) / CS))
CBYTES=$(jq '[.chunks[].csize] | add' "$TEST_TMP/index.json")

# --- cold attach over the link ------------------------------------------------------------------

A1=$TEST_TMP/agent1
MNT=$TEST_TMP/mnt
mkdir -p "$MNT"
defer bench_agent_down "$A1" "$MNT"
"$IMC_BIN/imc-attach" --state-dir "$A1" list >/dev/null # the pool exists before the clock starts
sync
t0=$(now_ms)
STATS=$(agent "$A1" --server "$IMCD_URL" --no-lazy attach "$ID" "$MNT" 2>&1)
ATTACH_MS=$(($(now_ms) - t0))
SENT=$(sed -n 's/.*over the network (\([0-9]*\) bytes).*/\1/p' <<<"$STATS")
EXT_SERVER=$(xfs_bmap "$STATE/pool/snapshots/$ID.img" | grep -vc 'hole\|:$' || true)
EXT_AGENT=$(xfs_bmap "$A1/pool/snapshots/$ID.img" | grep -vc 'hole\|:$' || true)

# --- curl of the snapshot file over the same link ---------------------------------------------

WEB=$TEST_TMP/nginx
mkdir -p "$WEB/root"
ln "$STATE/pool/snapshots/$ID.img" "$WEB/root/snap.img" 2>/dev/null ||
	cp --reflink=always "$STATE/pool/snapshots/$ID.img" "$WEB/root/snap.img" ||
	cp "$STATE/pool/snapshots/$ID.img" "$WEB/root/snap.img"
bench_nginx_start "$WEB/root" "$SERVER_IP"
A2=$TEST_TMP/agent2
defer bench_agent_down "$A2" "$MNT"
"$IMC_BIN/imc-attach" --state-dir "$A2" list >/dev/null
sync
t0=$(now_ms)
nsenter --net="/run/netns/$NS" curl -fsS -o "$A2/pool/snap.img" "$NGINX_URL/snap.img"
sync -f "$A2/pool/snap.img"
CURL_MS=$(($(now_ms) - t0))
rm -f "$A2/pool/snap.img"

# --- incremental rebuild ----------------------------------------------------------------------

ID2=$(build model2.bin)
get_index "$ID2" "$TEST_TMP/index2.json"
CBYTES2=$(jq '[.chunks[].csize] | add' "$TEST_TMP/index2.json")
STATS2=$(agent "$A1" --server "$IMCD_URL" prefetch "$ID2" 2>&1)
SENT2=$(sed -n 's/.*over the network (\([0-9]*\) bytes).*/\1/p' <<<"$STATS2")

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
rate() { awk -v b="$1" -v ms="$2" 'BEGIN { printf "%.0f", ms ? b / 1048576 / (ms / 1000) : 0 }'; }
{
	echo "### Distribution: cold attach over a veth link${BENCH_DIST_RATE:+ shaped to $BENCH_DIST_RATE} ($MB MiB snapshot)"
	echo
	echo "| what | time | bytes sent | effective MiB/s (snapshot size / time) |"
	echo "|---|---|---|---|"
	echo "| index available after Ready (exported in the background) | ${EXPORT_MS} ms | - | - |"
	echo "| imc-attach attach, cold host (index + $((N)) chunks of $ALL, zstd, verified, seal, clone, mount) | ${ATTACH_MS} ms | $(mib "$SENT") MiB | $(rate "$SIZE" "$ATTACH_MS") |"
	echo "| curl of the snapshot file (nginx sendfile) | ${CURL_MS} ms | $(mib "$SIZE") MiB | $(rate "$SIZE" "$CURL_MS") |"
	echo
	awk -v a="$ATTACH_MS" -v c="$CURL_MS" 'BEGIN { printf "imc-attach throughput / curl throughput: **%.2f×** (goal ≥ 0.8×)\n\n", a ? c / a : 0 }'
	echo "Zero chunks (never sent): $((ALL - N)) of $ALL ($(awk -v z=$((ALL - N)) -v a="$ALL" 'BEGIN { printf "%.0f", 100 * z / a }') %); compressed chunk bytes: $(mib "$CBYTES") MiB."
	echo "Extents of the snapshot file: server $EXT_SERVER, fetched on the agent $EXT_AGENT."
	echo
	echo "| incremental rebuild (1 MiB of the model changed) | bytes |"
	echo "|---|---|"
	echo "| full size of the new cache's chunks | $(mib "$CBYTES2") MiB |"
	echo "| sent to a host that has the previous one | $(mib "${SENT2:-0}") MiB |"
	echo
	echo "agent: $STATS" | head -1
	echo
	echo "agent (incremental): $(grep fetched <<<"$STATS2")"
} | tee "$OUT"
