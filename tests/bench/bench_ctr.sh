#!/bin/bash
# bench_ctr.sh: end to end under containerd, measured in one run on one machine —
#   cache   `ctr run --rm --runc-binary imc-runtime --annotation imcache.io/cache-id=ID --rootfs
#           DIR` (attach, runc create/start, the process, runc delete, detach); once more with
#           imcache.io/use-image-config=true (the image config read and config.json rewritten),
#           and once more in clone mode (imcache.io/attach-mode=clone; the default is overlay)
#   pull    `ctr image pull --plain-http` of the same image from the local docker-registry
#           (download + unpack into the overlayfs snapshotter), then `ctr run --rm` of it with
#           plain runc; the image and its content are removed (GC synchronous) between runs
# and prints the ratio of the medians.  The container reads the image's files in both cases
# (`ls /bench/l0 | wc -l`), and its output must be the same.
#
#   BENCH_CTR_SIZE_MB (2048)  BENCH_CTR_FILES (4000)  BENCH_CTR_RUNS (10)  BENCH_CTR_PULLS (3)
#   BENCH_CTR_OUT (build/bench/ctr.md); the medians go to build/bench/pod_start.dat too
#
# Needs root, loop devices, containerd, ctr, runc, skopeo, docker-registry; IMC_BIN (release
# build, default build/) holds imcd, imcctl, imc-attach and imc-runtime.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/../lib/containerd.sh
. "$here/../lib/containerd.sh"

SIZE_MB=${BENCH_CTR_SIZE_MB:-2048}
NFILES=${BENCH_CTR_FILES:-4000}
RUNS=${BENCH_CTR_RUNS:-10}
PULLS=${BENCH_CTR_PULLS:-3}
OUT_MD=${BENCH_CTR_OUT:-$IMC_ROOT/build/bench/ctr.md}

bench_need containerd ctr runc skopeo jq


PROBE='ls /bench/l0 | wc -l'

step "generating a ${SIZE_MB} MiB image in ${NFILES} files"
"$here/mkimage-big.sh" "$SIZE_MB" "$NFILES" "$TEST_TMP/layout" big >/dev/null
registry_start
mkimage_push "$TEST_TMP/layout" big bench/ctr:latest
REF=$REGISTRY/bench/ctr:latest
rm -rf "$TEST_TMP/layout"

step "imcd build (not timed here; see run.sh)"
imcd_start "$TEST_TMP/state" --log-level info
defer imc_teardown_quiet
ID=$(create_cache "$REF" bench-ctr)
JSON=$(cache_wait "$ID" 1800)
[ "$(json_get "$JSON" .status)" = Ready ] || {
	echo "bench_ctr: build failed: $JSON" >&2
	exit 1
}

export IMCACHE_STATE_DIR=$IMC_STATE IMCACHE_RUNTIME=runc
containerd_start "$TEST_TMP/containerd"

step "ctr run from the cache x$RUNS"
: >"$TEST_TMP/cache.ms"
for ((i = 0; i < RUNS; i++)); do
	mkdir -p "$TEST_TMP/rootfs-$i"
	defer imc_detach_quiet "$TEST_TMP/rootfs-$i"
	T0=$(now_ms)
	CACHE_OUT=$(ctrd_run_imc "bench-cache-$i" "$TEST_TMP/rootfs-$i" "imcache.io/cache-id=$ID" \
		-- /bin/sh -c "$PROBE")
	echo $(($(now_ms) - T0)) >>"$TEST_TMP/cache.ms"
done
CACHE_MS=$(median <"$TEST_TMP/cache.ms")

step "ctr run from the cache with imcache.io/use-image-config=true x$RUNS"
: >"$TEST_TMP/cfg.ms"
for ((i = 0; i < RUNS; i++)); do
	mkdir -p "$TEST_TMP/rootfs-cfg-$i"
	defer imc_detach_quiet "$TEST_TMP/rootfs-cfg-$i"
	T0=$(now_ms)
	CFG_OUT=$(ctrd_run_imc "bench-cfg-$i" "$TEST_TMP/rootfs-cfg-$i" "imcache.io/cache-id=$ID" \
		imcache.io/use-image-config=true -- /bin/sh -c "$PROBE")
	echo $(($(now_ms) - T0)) >>"$TEST_TMP/cfg.ms"
done
CFG_MS=$(median <"$TEST_TMP/cfg.ms")
[ "$CFG_OUT" = "$CACHE_OUT" ] || {
	echo "bench_ctr: use-image-config changed what the container saw: '$CFG_OUT'" >&2
	exit 1
}

step "ctr run from the cache in clone mode (imcache.io/attach-mode=clone) x$RUNS"
: >"$TEST_TMP/clone.ms"
for ((i = 0; i < RUNS; i++)); do
	mkdir -p "$TEST_TMP/rootfs-clone-$i"
	defer imc_detach_quiet "$TEST_TMP/rootfs-clone-$i"
	T0=$(now_ms)
	CLONE_OUT=$(ctrd_run_imc "bench-clone-$i" "$TEST_TMP/rootfs-clone-$i" \
		"imcache.io/cache-id=$ID" imcache.io/attach-mode=clone -- /bin/sh -c "$PROBE")
	echo $(($(now_ms) - T0)) >>"$TEST_TMP/clone.ms"
done
CLONE_MS=$(median <"$TEST_TMP/clone.ms")
[ "$CLONE_OUT" = "$CACHE_OUT" ] || {
	echo "bench_ctr: clone mode changed what the container saw: '$CLONE_OUT'" >&2
	exit 1
}

step "ctr image pull + ctr run x$PULLS"
: >"$TEST_TMP/pull.ms"
: >"$TEST_TMP/pullonly.ms"
: >"$TEST_TMP/runonly.ms"
for ((i = 0; i < PULLS; i++)); do
	ctrd image rm --sync "$REF" >/dev/null 2>&1 || true
	T0=$(now_ms)
	ctrd image pull --plain-http "$REF" >/dev/null
	T1=$(now_ms)
	PULL_OUT=$(timeout 600 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm \
		--runc-root "$CTRD_RUNC_ROOT" "$REF" "bench-pull-$i" /bin/sh -c "$PROBE" </dev/null)
	T2=$(now_ms)
	echo $((T2 - T0)) >>"$TEST_TMP/pull.ms"
	echo $((T1 - T0)) >>"$TEST_TMP/pullonly.ms"
	echo $((T2 - T1)) >>"$TEST_TMP/runonly.ms"
done
ctrd image rm --sync "$REF" >/dev/null 2>&1 || true
PULL_MS=$(median <"$TEST_TMP/pull.ms")
PULLONLY_MS=$(median <"$TEST_TMP/pullonly.ms")
RUNONLY_MS=$(median <"$TEST_TMP/runonly.ms")

if [ "$CACHE_OUT" != "$PULL_OUT" ]; then
	echo "bench_ctr: the two containers saw different files: '$CACHE_OUT' vs '$PULL_OUT'" >&2
	exit 1
fi

containerd_stop
imcctl delete "$ID" >/dev/null
imcd_stop

mkdir -p "$(dirname "$OUT_MD")"
{
	echo "containerd $(containerd --version | awk '{ print $3 }'), runc; image: ${SIZE_MB} MiB in ${NFILES} files, 4 gzip layers, local docker-registry."
	echo
	echo "| what (median) | time | vs. cache |"
	echo "|---|---|---|"
	echo "| ctr run --rm from the cache (imc-runtime, overlay mode: the default, of $RUNS) | $(ms_fmt "$CACHE_MS") | 1 |"
	echo "| the same in clone mode (imcache.io/attach-mode=clone, of $RUNS) | $(ms_fmt "$CLONE_MS") | $(ratio "$CLONE_MS" "$CACHE_MS" 1)× |"
	echo "| the same with imcache.io/use-image-config=true (of $RUNS) | $(ms_fmt "$CFG_MS") | $(ratio "$CFG_MS" "$CACHE_MS" 1)× |"
	echo "| ctr run --rm of the pulled image, plain runc (of $PULLS; the floor) | $(ms_fmt "$RUNONLY_MS") | $(ratio "$RUNONLY_MS" "$CACHE_MS" 1)× |"
	echo "| ctr image pull --plain-http (of $PULLS) | $(ms_fmt "$PULLONLY_MS") | $(ratio "$PULLONLY_MS" "$CACHE_MS" 1)× |"
	echo "| ctr image pull + ctr run --rm (of $PULLS) | $(ms_fmt "$PULL_MS") | **$(ratio "$PULL_MS" "$CACHE_MS" 1)× slower** (goal ≥ 50×) |"
} | tee "$OUT_MD"
bench_dat pod_start "container start to exit under containerd, median ms (${SIZE_MB} MiB image, ${NFILES} files)" \
	what runs median_ms
bench_row pod_start "ctr run, cache (imc-runtime)" "$RUNS" "$CACHE_MS"
bench_row pod_start "ctr run, cache, clone mode" "$RUNS" "$CLONE_MS"
bench_row pod_start "ctr run, cache + use-image-config" "$RUNS" "$CFG_MS"
bench_row pod_start "ctr run, image already pulled (runc)" "$PULLS" "$RUNONLY_MS"
bench_row pod_start "ctr image pull" "$PULLS" "$PULLONLY_MS"
bench_row pod_start "ctr image pull + ctr run" "$PULLS" "$PULL_MS"
