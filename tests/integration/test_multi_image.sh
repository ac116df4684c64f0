#!/bin/bash
# A cache of several images: one imcctl create with two refs builds both into one snapshot
# (/images/0/rootfs and /images/1/rootfs), GET lists both in request order with their digests,
# imc-attach --image N mounts the one asked for, and an index past the last fails cleanly.  The
# same ref for two platforms is two images of one cache.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

# --- registry and two different images -------------------------------------------------------

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# build_push BUILDER TAG REPO:TAG (called through check)
# shellcheck disable=SC2317
build_push() {
	"$1" "$LAYOUT" "$2" && mkimage_push "$LAYOUT" "$2" "$3"
}
check "busybox image builds and pushes" build_push mkimage_busybox bb imc/bb:v1
check "multilayer image builds and pushes" build_push mkimage_multilayer multi imc/multi:v1
# shellcheck disable=SC2317
push_index() { mkimage_index "$LAYOUT" idx && mkimage_push "$LAYOUT" idx imc/idx:v1 --all; }
check "OCI index image (amd64 + arm64) builds and pushes with --all" push_index
IDX_REF=$REGISTRY/imc/idx:v1
BB_REF=$REGISTRY/imc/bb:v1
MULTI_REF=$REGISTRY/imc/multi:v1
BB_DIGEST=sha256:$(registry_manifest imc/bb v1 | sha256sum | cut -d' ' -f1)
MULTI_DIGEST=sha256:$(registry_manifest imc/multi v1 | sha256sum | cut -d' ' -f1)
check_fails "the two images differ" test "$BB_DIGEST" = "$MULTI_DIGEST"

# --- imcd, and one cache of both -------------------------------------------------------------

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

OUT=$(imcctl create "$BB_REF" "$MULTI_REF" --name two --wait 2>"$TEST_TMP/imcctl.err") ||
	OUT="FAILED: $OUT"
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID" =~ ^imc- ]]; then
	ok "imcctl create IMAGE IMAGE --wait makes one cache ($ID)"
else
	bail "imcctl create IMAGE IMAGE --wait makes one cache" "stdout: $OUT" \
		"stderr: $(cat "$TEST_TMP/imcctl.err")" "$(imcd_log_tail 20)"
fi

http GET "$IMCD_URL/v1/imagecaches/$ID"
check_eq "GET answers 200" 200 "$HTTP_STATUS"
check_eq "GET: the cache is Ready" Ready "$(json_get "$HTTP_BODY" '.status // empty' 2>&1)"
check_eq "GET: two images, refs in request order" "2 $BB_REF $MULTI_REF" \
	"$(json_get "$HTTP_BODY" '"\(.images | length) \(.images[0].ref) \(.images[1].ref)"' 2>&1)"
check_eq "GET: images[0].digest is the busybox manifest's" "$BB_DIGEST" \
	"$(json_get "$HTTP_BODY" '.images[0].digest // empty' 2>&1)"
check_eq "GET: images[1].digest is the multilayer manifest's" "$MULTI_DIGEST" \
	"$(json_get "$HTTP_BODY" '.images[1].digest // empty' 2>&1)"
check_eq "GET: each image's config is its own" "/ /data" \
	"$(json_get "$HTTP_BODY" '"\(.images[0].config.workingDir) \(.images[1].config.workingDir)"' 2>&1)"

# The same cache through the API with the order reversed keeps that order too.
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg a "$MULTI_REF" --arg b "$BB_REF" '{images: [{ref: $a}, {ref: $b}]}')"
check_eq "POST with two images answers 202" 202 "$HTTP_STATUS"
ID_REV=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
CACHE_REV=
[ -z "$ID_REV" ] || CACHE_REV=$(cache_wait "$ID_REV" 300) || CACHE_REV=
check_eq "reversed request: Ready, refs in its own order" "Ready $MULTI_REF $BB_REF" \
	"$(json_get "$CACHE_REV" '"\(.status) \(.images[0].ref) \(.images[1].ref)"' 2>&1)"

# Refused requests: a ref twice, 21 images.
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg a "$BB_REF" '{images: [{ref: $a}, {ref: $a}]}')"
check_eq "the same ref twice: 400" 400 "$HTTP_STATUS"
check_match "the same ref twice: the message names the duplicate" 'images\[1\]\.ref: .* is already images\[0\]' \
	"$(json_get "$HTTP_BODY" '.error.message // empty' 2>&1)"
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg r "$REGISTRY/imc/bb" '{images: [range(0; 21) | {ref: "\($r):v\(.)"}]}')"
check_eq "21 distinct images: 400" 400 "$HTTP_STATUS"
check_match "21 images: the message names the cap" 'at most 20' \
	"$(json_get "$HTTP_BODY" '.error.message // empty' 2>&1)"

# The same ref for linux/amd64 and linux/arm64: two images of one cache, each its platform's.
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg r "$IDX_REF" '{images: [{ref: $r, platform: "linux/amd64"}, {ref: $r, platform: "linux/arm64"}]}')"
check_eq "POST the same ref for two platforms: 202" 202 "$HTTP_STATUS"
ID_PLAT=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
CACHE_PLAT=
[ -z "$ID_PLAT" ] || CACHE_PLAT=$(cache_wait "$ID_PLAT" 300) || CACHE_PLAT=
check_eq "two platforms of one ref: Ready, each image with its platform" \
	"Ready linux/amd64 linux/arm64/v8" \
	"$(json_get "$CACHE_PLAT" '"\(.status) \(.images[0].platform) \(.images[1].platform)"' 2>&1)"
check_fails "two platforms of one ref: two manifests" \
	test "$(json_get "$CACHE_PLAT" '.images[0].digest')" = "$(json_get "$CACHE_PLAT" '.images[1].digest')"
P0=$TEST_TMP/p0
P1=$TEST_TMP/p1
mkdir -p "$P0" "$P1"
defer imc_detach_quiet "$P0"
defer imc_detach_quiet "$P1"
check "attach --image 0 (amd64)" imc_attach attach --image 0 "$ID_PLAT" "$P0"
check "attach --image 1 (arm64)" imc_attach attach --image 1 "$ID_PLAT" "$P1"
check_eq "image 0 is the amd64 one, image 1 the arm64 one (/platform)" "amd64 arm64" \
	"$(cat "$P0/platform" 2>&1) $(cat "$P1/platform" 2>&1)"
check "image 0 (amd64) has /bin/busybox" test -x "$P0/bin/busybox"
check_fails "image 1 (arm64) has no /bin/busybox" test -e "$P1/bin/busybox"
check "detach p0" imc_attach detach "$P0"
check "detach p1" imc_attach detach "$P1"
# An image with no platform is imcd's default: with it spelled out too, it is there twice.
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg r "$IDX_REF" '{images: [{ref: $r}, {ref: $r, platform: "linux/x86_64"}]}')"
check_eq "the same ref for the default platform and linux/amd64: 400" 400 "$HTTP_STATUS"
check_match "... naming the duplicate" 'images\[1\]: .* for linux/amd64 is already images\[0\]' \
	"$(json_get "$HTTP_BODY" '.error.message // empty' 2>&1)"

# --- attach each image -----------------------------------------------------------------------

M0=$TEST_TMP/m0
M1=$TEST_TMP/m1
M2=$TEST_TMP/m2
mkdir -p "$M0" "$M1" "$M2"
defer imc_detach_quiet "$M0"
defer imc_detach_quiet "$M1"
defer imc_detach_quiet "$M2"
check "attach --image 0" imc_attach attach --image 0 "$ID" "$M0"
check "attach --image 1" imc_attach attach --image 1 "$ID" "$M1"
check "m0 is a mount point" findmnt -rn --mountpoint "$M0"
check "m1 is a mount point" findmnt -rn --mountpoint "$M1"
check "image 0 (busybox) has /bin/busybox" test -x "$M0/bin/busybox"
check_fails "image 0 (busybox) has no /data/a.txt" test -e "$M0/data/a.txt"
check_eq "image 1 (multilayer) has /data/a.txt" content-a "$(cat "$M1/data/a.txt" 2>&1)"
check_fails "image 1 (multilayer) has no /data/b.txt (whiteout)" test -e "$M1/data/b.txt"
check_fails "neither mount is the snapshot root (no /imcache.json)" \
	test -e "$M0/imcache.json" -o -e "$M1/imcache.json"
if run_container "$M1" /bin/cat /data/a.txt; then
	check_eq "a container runs from image 1" content-a "$CONTAINER_OUTPUT"
else
	not_ok "a container runs from image 1" "$CONTAINER_ERRORS"
fi

CLONES_BEFORE=$(find "$STATE/pool/clones" -type f 2>/dev/null | sort)
LIST_BEFORE=$(imc_attach list 2>&1)
check_eq "imc-attach list: 2 attaches" 2 "$(json_get "$LIST_BEFORE" 'length' 2>&1)"
OUT=$(imc_attach attach --image 2 "$ID" "$M2" 2>&1) && RC=0 || RC=$?
check_eq "attach --image 2 of a two-image cache exits 1" 1 "$RC"
check_match "attach --image 2: the message names the missing image" "has no image 2" "$OUT"
check_fails "m2 is not a mount point" findmnt -rn --mountpoint "$M2"
check_eq "attach --image 2 left no clone file" "$CLONES_BEFORE" \
	"$(find "$STATE/pool/clones" -type f 2>/dev/null | sort)"
check_eq "attach --image 2 left the attach list as it was" "$LIST_BEFORE" "$(imc_attach list 2>&1)"

# --- detach, delete, stop --------------------------------------------------------------------

for d in "$M0" "$M1"; do
	check "detach $(basename "$d")" imc_attach detach "$d"
	check_fails "$(basename "$d") is no longer a mount point" findmnt -rn --mountpoint "$d"
done
check_eq "imc-attach list is empty after detaching" 0 "$(json_get "$(imc_attach list 2>&1)" 'length' 2>&1)"
check_eq "no clone files left in the pool" "" "$(find "$STATE/pool/clones" -type f 2>/dev/null)"

for id in "$ID" "$ID_REV" "$ID_PLAT"; do
	[ -n "$id" ] || continue
	http DELETE "$IMCD_URL/v1/imagecaches/$id"
	check_eq "DELETE $id answers 200" 200 "$HTTP_STATUS"
	check "snapshot of $id is gone from the pool (within 10 s)" wait_gone "$STATE/pool/snapshots/$id.img" 10
done

check_clean_shutdown

done_testing
