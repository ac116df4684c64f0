#!/bin/bash
# bench_snapshotter.sh: an unmodified pull + run under containerd (issue 16), measured in one run
# on one machine —
#   imcache  the kubelet's PullImage through containerd's CRI plugin (tests/tools/cri-pull; the
#            CRI's snapshotter is imc-snapshotter, on the state dir of an imcd that holds a Ready
#            cache of the image: the layer's Prepare answers AlreadyExists, no layer is fetched),
#            then `ctr run --rm --snapshotter imcache` of it
#   overlay  `ctr image pull --plain-http` of the same image from the local docker-registry into
#            containerd's overlayfs snapshotter (download + unpack), then `ctr run --rm` of it
# with the images and their snapshots removed (GC synchronous) between runs, and prints the ratio
# of the medians (goal ≥ 100×).  The container lists the image's files in both cases, and its
# output must be the same.
#
#   BENCH_SNAP_SIZE_MB (2048)  BENCH_SNAP_FILES (4000)  BENCH_SNAP_RUNS (5)  BENCH_SNAP_PULLS (3)
#   BENCH_OUT (build/bench/snapshotter.md); the medians go to build/bench/snap_start.dat
#
# Not measured here (issue 16's second row): the cache on imcd only, attached lazily over a
# shaped link, against overlayfs over the same link.
# Needs root, loop devices, containerd (with its CRI plugin), ctr, runc, skopeo, docker-registry;
# IMC_BIN (release build) holds imcd, imcctl, imc-snapshotter and tests/cri-pull.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/../lib/containerd.sh
. "$here/../lib/containerd.sh"

SIZE_MB=${BENCH_SNAP_SIZE_MB:-2048}
NFILES=${BENCH_SNAP_FILES:-4000}
RUNS=${BENCH_SNAP_RUNS:-5}
PULLS=${BENCH_SNAP_PULLS:-3}
OUT_MD=${BENCH_OUT:-$IMC_ROOT/build/bench/snapshotter.md}
GOAL=100

bench_need containerd ctr runc skopeo jq
for p in imc-snapshotter tests/cri-pull; do
	[ -x "$IMC_BIN/$p" ] || {
		echo "bench_snapshotter: $IMC_BIN/$p is not built (make O=build/release programs)" >&2
		exit 1
	}
done


PROBE='ls /bench/l0 | wc -l'
CTRD_NS=k8s.io # the CRI's namespace: the CRI pull and both runs
SNAP_SOCK=$TEST_TMP/snap/snapshotter.sock
SNAP_LOG=$TEST_TMP/snapshotter.log
SNAP_PID=

# containerd with the CRI plugin (its pulls go through the unpacker with the snapshot.ref
# labels), imc-snapshotter as its snapshotter, the registry plain HTTP.
eval "$(declare -f _containerd_config | sed '1s/_containerd_config/_containerd_config_base/')"
_containerd_config() {
	_containerd_config_base | grep -v '"io.containerd.grpc.v1.cri",'
	containerd_cri_imcache_config "$SNAP_SOCK"
}
snap_stop() {
	[ -n "$SNAP_PID" ] || return 0
	stop_pid "$SNAP_PID" 10 || true
	SNAP_PID=
}
# Every reference of every image (the CRI names one by tag, repository digest and id), synchronously.
rm_images() {
	local refs
	refs=$(ctrd image ls -q)
	# shellcheck disable=SC2086 # one argument per reference
	[ -z "$refs" ] || ctrd image rm --sync $refs >/dev/null
}
run_with() { # SNAPSHOTTER NAME
	timeout 600 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm --snapshotter "$1" \
		--runc-root "$CTRD_RUNC_ROOT" "$REF" "$2" /bin/sh -c "$PROBE" </dev/null
}

step "generating a ${SIZE_MB} MiB image in ${NFILES} files"
"$here/mkimage-big.sh" "$SIZE_MB" "$NFILES" "$TEST_TMP/layout" big >/dev/null
registry_start
mkimage_push "$TEST_TMP/layout" big bench/snap:latest
REF=$REGISTRY/bench/snap:latest
rm -rf "$TEST_TMP/layout"

step "imcd build (not timed here; see run.sh)"
imcd_start "$TEST_TMP/state" --log-level info --export request
defer imc_teardown_quiet
ID=$(create_cache "$REF" bench-snap)
JSON=$(cache_wait "$ID" 1800)
[ "$(json_get "$JSON" .status)" = Ready ] || {
	echo "bench_snapshotter: build failed: $JSON" >&2
	exit 1
}

mkdir -p "$(dirname "$SNAP_SOCK")" "$TEST_TMP/cni/bin" "$TEST_TMP/cni/conf"
defer snap_stop
"$IMC_BIN/imc-snapshotter" --address "$SNAP_SOCK" --state-dir "$IMC_STATE" >"$SNAP_LOG" 2>&1 &
SNAP_PID=$!
for ((i = 0; i < 200; i++)); do
	[ -S "$SNAP_SOCK" ] && break
	sleep 0.05
done
[ -S "$SNAP_SOCK" ] || {
	echo "bench_snapshotter: imc-snapshotter did not start: $(tail -n 5 "$SNAP_LOG")" >&2
	exit 1
}
containerd_start "$TEST_TMP/containerd"

step "CRI pull + ctr run --snapshotter imcache x$RUNS"
: >"$TEST_TMP/imc.ms"
: >"$TEST_TMP/imcpull.ms"
for ((i = 0; i < RUNS; i++)); do
	rm_images
	T0=$(now_ms)
	"$IMC_BIN/tests/cri-pull" "$CTRD_ADDR" "$REF" >/dev/null
	T1=$(now_ms)
	IMC_OUT=$(run_with imcache "bench-imc-$i")
	T2=$(now_ms)
	echo $((T2 - T0)) >>"$TEST_TMP/imc.ms"
	echo $((T1 - T0)) >>"$TEST_TMP/imcpull.ms"
done
rm_images
IMC_MS=$(median <"$TEST_TMP/imc.ms")
IMCPULL_MS=$(median <"$TEST_TMP/imcpull.ms")

step "ctr image pull (overlayfs) + ctr run x$PULLS"
: >"$TEST_TMP/ovl.ms"
: >"$TEST_TMP/ovlpull.ms"
for ((i = 0; i < PULLS; i++)); do
	rm_images
	T0=$(now_ms)
	ctrd image pull --plain-http "$REF" >/dev/null
	T1=$(now_ms)
	OVL_OUT=$(run_with overlayfs "bench-ovl-$i")
	T2=$(now_ms)
	echo $((T2 - T0)) >>"$TEST_TMP/ovl.ms"
	echo $((T1 - T0)) >>"$TEST_TMP/ovlpull.ms"
done
rm_images
OVL_MS=$(median <"$TEST_TMP/ovl.ms")
OVLPULL_MS=$(median <"$TEST_TMP/ovlpull.ms")

if [ "$IMC_OUT" != "$OVL_OUT" ]; then
	echo "bench_snapshotter: the two containers saw different files: '$IMC_OUT' vs '$OVL_OUT'" >&2
	exit 1
fi

containerd_stop
snap_stop
imcctl delete "$ID" >/dev/null
imcd_stop

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "containerd $(containerd --version | awk '{ print $3 }'), runc; image: ${SIZE_MB} MiB in ${NFILES} files, 4 gzip layers, local docker-registry; the container lists one layer's files (both saw $IMC_OUT)."
	echo
	echo "| what (median) | time | vs. imcache |"
	echo "|---|---|---|"
	echo "| CRI pull (imc-snapshotter, cache local) (of $RUNS) | $(ms_fmt "$IMCPULL_MS") | |"
	echo "| CRI pull + ctr run --rm --snapshotter imcache (of $RUNS) | $(ms_fmt "$IMC_MS") | 1 |"
	echo "| ctr image pull --plain-http, overlayfs (of $PULLS) | $(ms_fmt "$OVLPULL_MS") | |"
	echo "| ctr image pull + ctr run --rm, overlayfs (of $PULLS) | $(ms_fmt "$OVL_MS") | **$(ratio "$OVL_MS" "$IMC_MS" 1)× slower** (goal ≥ ${GOAL}×) |"
	echo
	bench_machine
} | tee "$OUT_MD"
bench_dat snap_start "containerd pull + run to exit, median ms (${SIZE_MB} MiB image, ${NFILES} files)" \
	what runs median_ms
bench_row snap_start "CRI pull + run, imc-snapshotter (cache local)" "$RUNS" "$IMC_MS"
bench_row snap_start "ctr pull + run, overlayfs" "$PULLS" "$OVL_MS"
