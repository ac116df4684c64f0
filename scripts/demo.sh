#!/bin/bash
# imcache demo: build a cache of a container image from a local registry, attach a copy-on-write
# clone of it as a container rootfs in milliseconds, run a container there, and compare with
# pulling and unpacking the same image the usual way (skopeo copy + umoci unpack).
#
#   scripts/demo.sh            (as root: loop devices, mounts and containers need it)
#
# Everything it starts or creates (registry, imcd, mounts, loop devices, temp files) is removed
# on every exit path, Ctrl-C included.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (it mounts file systems, uses loop devices and runs containers)" >&2
	exit 1
fi

echo "== installing dependencies and building"
scripts/install-deps.sh
make -j"$(nproc)"

IMC_BIN=$PWD/build
IMC_NO_SUMMARY=1
export IMC_BIN IMC_NO_SUMMARY
# shellcheck source-path=SCRIPTDIR/..
. tests/lib/common.sh
# shellcheck source-path=SCRIPTDIR/..
. tests/lib/registry.sh
# shellcheck source-path=SCRIPTDIR/..
. tests/lib/mkimage.sh
# shellcheck source-path=SCRIPTDIR/..
. tests/lib/imcd.sh
# shellcheck source-path=SCRIPTDIR/..
. tests/lib/container.sh

step() {
	printf '\n== %s\n' "$*"
}

step "starting a local registry and pushing a busybox image built with umoci"
registry_start
mkimage_umoci "$TEST_TMP/layout" latest
mkimage_push "$TEST_TMP/layout" latest demo/busybox:latest
REF=$REGISTRY/demo/busybox:latest
echo "pushed $REF"

step "starting imcd"
STATE=$TEST_TMP/state
defer imc_teardown_quiet
imcd_start "$STATE" --log-level info
echo "imcd listens at $IMCD_URL (state in $STATE, log in $IMCD_LOG)"

step "imcctl create --wait $REF"
T0=$(now_ms)
ID=$(imcctl create "$REF" --name demo --wait | tail -n1)
T1=$(now_ms)
BUILD_MS=$((T1 - T0))
echo "cache $ID is Ready after $BUILD_MS ms"
imcctl get "$ID" | jq . 2>/dev/null || imcctl get "$ID"

step "imc-attach attach $ID"
MNT=$TEST_TMP/rootfs
mkdir -p "$MNT"
defer imc_detach_quiet "$MNT"
T0=$(now_ms)
ATTACH_OUT=$("$IMC_BIN/imc-attach" --state-dir "$STATE" -v attach "$ID" "$MNT" 2>&1)
T1=$(now_ms)
ATTACH_MS=$((T1 - T0))
printf '%s\n' "$ATTACH_OUT"
ATTACH_INNER=$(printf '%s\n' "$ATTACH_OUT" | sed -n 's/.* in \([0-9.]*\) ms$/\1/p' | tail -n1)
findmnt --mountpoint "$MNT"
ls "$MNT"

step "running a container from the attached rootfs"
T0=$(now_ms)
# shellcheck disable=SC2016 # expanded in the container
if ! run_container "$MNT" /bin/sh -c 'echo "hello from an imcache rootfs: $(cat /etc/motd)"'; then
	echo "no runtime could run the container:" >&2
	printf '%s' "$CONTAINER_ERRORS" >&2
	exit 1
fi
T1=$(now_ms)
RUN_MS=$((T1 - T0))
printf '%s\n' "$CONTAINER_OUTPUT"
if [ "$CONTAINER_RUNTIME" = crun ]; then
	echo "(runtime: crun, in a private mount namespace without /sys/fs/cgroup/unified)"
else
	echo "(runtime: $CONTAINER_RUNTIME - crun did not work here:"
	printf '%s' "$CONTAINER_ERRORS" | sed 's/^/   /'
	echo ")"
fi

step "detach and delete"
"$IMC_BIN/imc-attach" --state-dir "$STATE" detach "$MNT"
imcctl delete "$ID"
echo "detached $MNT, deleted $ID"

step "for comparison: skopeo copy + umoci unpack of the same image"
T0=$(now_ms)
skopeo copy --quiet --src-tls-verify=false "docker://$REF" "oci:$TEST_TMP/pulled:latest"
umoci unpack --image "$TEST_TMP/pulled:latest" "$TEST_TMP/unpacked" >/dev/null
T1=$(now_ms)
PULL_MS=$((T1 - T0))
rm -rf "$TEST_TMP/unpacked" "$TEST_TMP/pulled"

step "timings (ms, wall clock from date +%s%N; process start included)"
printf '  %-44s %8s\n' "build (imcctl create --wait, create->Ready)" "$BUILD_MS"
printf '  %-44s %8s\n' "attach (imc-attach attach)" "$ATTACH_MS"
[ -z "$ATTACH_INNER" ] || printf '  %-44s %8s\n' "  of which the attach itself, as imc-attach says" "$ATTACH_INNER"
printf '  %-44s %8s\n' "container start+run ($CONTAINER_RUNTIME)" "$RUN_MS"
printf '  %-44s %8s\n' "skopeo copy + umoci unpack" "$PULL_MS"
if [ "$ATTACH_MS" -gt 0 ]; then
	echo "  attach is $((PULL_MS / ATTACH_MS))x faster than pull+unpack of this (small) image"
fi

step "cleaning up"
RC=0
imcd_stop || RC=$?
[ "$RC" -eq 0 ] || echo "imcd exited with status $RC" >&2
"$IMC_BIN/imc-attach" --state-dir "$STATE" teardown
echo "done"
