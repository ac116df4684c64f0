#!/bin/bash
# End to end: a real registry, images built here, imcd building caches, imc-attach cloning and
# mounting them, a container running from an attached rootfs, and nothing left behind.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/container.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs unshare
need_programs imcd imcctl imc-attach

# --- registry and images ---------------------------------------------------------------------

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# build_push BUILDER TAG REPO:TAG [SKOPEO_ARG...] (called through check)
# shellcheck disable=SC2317
build_push() {
	local builder=$1 tag=$2 dest=$3
	shift 3
	"$builder" "$LAYOUT" "$tag" && mkimage_push "$LAYOUT" "$tag" "$dest" "$@"
}
check "multilayer image builds and pushes" build_push mkimage_multilayer multi imc/multi:v1
check "OCI index image (amd64 + arm64) builds and pushes with --all" \
	build_push mkimage_index idx imc/idx:v1 --all
# One image in two repositories (pushed byte for byte: the same manifest digest), with a layer
# large enough (48 MiB) that its base takes a while to build.
# shellcheck disable=SC2317
push_same() {
	mkimage_plain "$LAYOUT" same $((48 << 10)) && registry_push_raw "$LAYOUT" same imc/same-a:v1 &&
		registry_push_raw "$LAYOUT" same imc/same-b:v1
}
check "one image pushes to two repositories" push_same
MULTI_REF=$REGISTRY/imc/multi:v1
IDX_REF=$REGISTRY/imc/idx:v1
MULTI_DIGEST=$(registry_manifest imc/multi v1 | sha256sum | cut -d' ' -f1)
MULTI_DIGEST=sha256:$MULTI_DIGEST

# --- imcd ------------------------------------------------------------------------------------

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

# Create through the API.
http POST "$IMCD_URL/v1/imagecaches" \
	"$(jq -cn --arg ref "$MULTI_REF" '{name: "multi-api", images: [{ref: $ref}]}')"
check_eq "POST /v1/imagecaches answers 202" 202 "$HTTP_STATUS"
ID1=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
check_match "POST returns an id imc-…" '^imc-[A-Za-z0-9._-]+$' "$ID1"
check_eq "POST returns status Creating" Creating "$(json_get "$HTTP_BODY" '.status // empty' 2>/dev/null || true)"
[ -n "$ID1" ] || bail "cannot go on without a cache id" "$HTTP_STATUS $HTTP_BODY"

T0=$(now_ms)
CACHE1=$(cache_wait "$ID1" 300) || CACHE1=
T1=$(now_ms)
STATUS1=$(json_get "$CACHE1" '.status // empty' 2>/dev/null || true)
if [ "$STATUS1" = Ready ]; then
	ok "cache $ID1 of $MULTI_REF becomes Ready ($((T1 - T0)) ms)"
else
	bail "cache $ID1 of $MULTI_REF becomes Ready" "got: $CACHE1" "imcd log:" "$(imcd_log_tail 30)"
fi

check_eq "GET: id" "$ID1" "$(json_get "$CACHE1" .id)"
check_eq "GET: name" multi-api "$(json_get "$CACHE1" .name)"
check_eq "GET: one image, with the requested ref" "1 $MULTI_REF" \
	"$(json_get "$CACHE1" '"\(.images | length) \(.images[0].ref)"')"
check_eq "GET: size is a positive number" true \
	"$(json_get "$CACHE1" '(.size | type) == "number" and .size > 0')"
check_eq "GET: no statusMessage on a Ready cache" false "$(json_get "$CACHE1" 'has("statusMessage")')"
if [ "$(json_get "$CACHE1" '.images[0] | has("digest")')" = true ]; then
	check_eq "GET: image digest is the manifest's digest" "$MULTI_DIGEST" \
		"$(json_get "$CACHE1" '.images[0].digest')"
fi

http GET "$IMCD_URL/v1/imagecaches"
check_eq "GET /v1/imagecaches answers 200" 200 "$HTTP_STATUS"
check_eq "list: .items holds the cache, Ready" Ready \
	"$(jq -r --arg id "$ID1" '.items[] | select(.id == $id) | .status' <<<"$HTTP_BODY" 2>&1)"

# Create through imcctl --wait.
OUT=$(imcctl create "$MULTI_REF" --name multi-cli --wait 2>"$TEST_TMP/imcctl.err") || OUT="FAILED: $OUT"
ID2=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID2" =~ ^imc- ]]; then
	ok "imcctl create --wait prints the id ($ID2)"
else
	not_ok "imcctl create --wait prints the id" "stdout: $OUT" "stderr: $(cat "$TEST_TMP/imcctl.err")"
fi
http GET "$IMCD_URL/v1/imagecaches/$ID2"
check_eq "imcctl --wait returned once the cache is Ready" Ready \
	"$(json_get "$HTTP_BODY" '.status // empty' 2>/dev/null || true)"
check_match "imcctl get ID shows the cache" "$ID2" "$(imcctl get "$ID2" 2>&1)"
OUT=$(imcctl list 2>&1) || true
check_match "imcctl list shows the API-made cache" "$ID1" "$OUT"
check_match "imcctl list shows the imcctl-made cache" "$ID2" "$OUT"

# The snapshot itself: an ext4 image with /imcache.json and /images/0/rootfs.
SNAP=$STATE/pool/snapshots/$ID1.img
if [ -f "$SNAP" ]; then
	mkdir -p "$TEST_TMP/snap"
	if mount -o ro,loop,noload "$SNAP" "$TEST_TMP/snap" 2>"$TEST_TMP/mount.err"; then
		# shellcheck disable=SC2016 # $id is jq's
		check "snapshot has a valid /imcache.json naming the cache" \
			jq -e --arg id "$ID1" '.id == $id' "$TEST_TMP/snap/imcache.json"
		check "snapshot has /images/0/rootfs/bin/busybox" test -x "$TEST_TMP/snap/images/0/rootfs/bin/busybox"
		umount "$TEST_TMP/snap"
	else
		not_ok "snapshot $SNAP mounts read-only" "$(cat "$TEST_TMP/mount.err")"
	fi
else
	not_ok "snapshot file $SNAP exists" "$(ls -la "$STATE/pool/snapshots" 2>&1)"
fi

# --- a base snapshot is internal ------------------------------------------------------------

# The cache stands on its image's base snapshot (img-…) in the same store: neither the API nor
# imc-attach takes it for a cache.
BASE=$(find "$STATE/pool/snapshots" -name 'img-*.img' -printf '%f\n' 2>/dev/null | head -n1)
BASE=${BASE%.img}
check_match "the cache's image has a base snapshot in the pool" '^img-[0-9a-f]+$' "$BASE"
for route in "GET /v1/imagecaches/$BASE" "DELETE /v1/imagecaches/$BASE" \
	"DELETE /v1/imagecaches/$BASE?force=true" "GET /v1/imagecaches/$BASE/index" \
	"GET /v1/imagecaches/$BASE/attachments"; do
	http "${route%% *}" "$IMCD_URL${route#* }"
	check_eq "$route: 404, as for an unknown cache" "404 NotFound" \
		"$HTTP_STATUS $(json_get "$HTTP_BODY" '.error.code' 2>/dev/null || true)"
done
http POST "$IMCD_URL/v1/imagecaches/$BASE/attachments" '{}'
check_eq "POST /v1/imagecaches/$BASE/attachments: 404" 404 "$HTTP_STATUS"
http GET "$IMCD_URL/v1/imagecaches"
check_eq "the list has no base snapshot in it" "" \
	"$(json_get "$HTTP_BODY" '.items[].id | select(startswith("img-"))' 2>/dev/null || true)"
MB=$TEST_TMP/mbase
mkdir -p "$MB"
defer imc_detach_quiet "$MB"
OUT=$(imc_attach attach "$BASE" "$MB" 2>&1) && RC=0 || RC=$?
check_eq "imc-attach attach $BASE is refused" 1 "$RC"
check_match "... as no such cache" "$BASE: no such cache" "$OUT"
check_fails "... and nothing is mounted there" findmnt -rn --mountpoint "$MB"
OUT=$(imc_attach attach --block "$BASE" 2>&1) && RC=0 || RC=$?
# Should it attach after all, its device must not outlive the test.
[ "$RC" != 0 ] || imc_attach detach "${OUT%% *}" >/dev/null 2>&1 || true
check_match "imc-attach attach --block $BASE is refused as no such cache" \
	"^1 .*$BASE: no such cache" "$RC $OUT"
check_eq "no attach was recorded" 0 "$(json_get "$(imc_attach list 2>&1)" length 2>&1)"
check "the base snapshot is still there" test -f "$STATE/pool/snapshots/$BASE.img"

# --- attach ----------------------------------------------------------------------------------

# attach_at ID DIR [ARG...]: attach, deferring the detach; prints the time it took (ms).
attach_at() {
	local id=$1 dir=$2 t0 t1 out rc=0
	shift 2
	mkdir -p "$dir"
	defer imc_detach_quiet "$dir"
	t0=$(now_ms)
	out=$(imc_attach attach "$@" "$id" "$dir" 2>&1) || rc=$?
	t1=$(now_ms)
	if [ "$rc" -eq 0 ]; then
		ok "attach $id at $(basename "$dir") ($((t1 - t0)) ms including process start)"
	else
		not_ok "attach $id at $(basename "$dir")" "exit status $rc" "$out"
	fi
	return "$rc"
}

M1=$TEST_TMP/m1
M2=$TEST_TMP/m2
M3=$TEST_TMP/m3
attach_at "$ID1" "$M1" || true
attach_at "$ID1" "$M2" || true

# check_rootfs DIR: what the two layers must have produced.
check_rootfs() {
	local r=$1 n
	n=$(basename "$r")
	check "$n: is a mount point" findmnt -rn --mountpoint "$r"
	check_eq "$n: /data/a.txt from layer 2" content-a "$(cat "$r/data/a.txt" 2>&1)"
	check_fails "$n: whiteout removed /data/b.txt" test -e "$r/data/b.txt"
	check_eq "$n: no whiteout files left in the rootfs" "" \
		"$(find "$r" -xdev -name '.wh.*' 2>&1)"
	check_eq "$n: opaque /opq holds only 'new'" new \
		"$(find "$r/opq" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>&1 | sort | tr '\n' ' ' | sed 's/ $//')"
	check_eq "$n: /opq/new content" new "$(cat "$r/opq/new" 2>&1)"
	check_eq "$n: /keep/x from layer 1 stays" keep "$(cat "$r/keep/x" 2>&1)"
	check_eq "$n: /data/hard has link count 2" 2 "$(stat -c %h "$r/data/hard" 2>&1)"
	check_eq "$n: /data/hard is the same inode as /data/a.txt" \
		"$(stat -c %i "$r/data/a.txt" 2>&1)" "$(stat -c %i "$r/data/hard" 2>&1)"
	check_eq "$n: /data/rel -> a.txt" a.txt "$(readlink "$r/data/rel" 2>&1)"
	check_eq "$n: /data/abs -> /data/a.txt" /data/a.txt "$(readlink "$r/data/abs" 2>&1)"
	check_eq "$n: /data/suid mode 4755 owner 1000:1000" "4755 1000 1000" \
		"$(stat -c '%a %u %g' "$r/data/suid" 2>&1)"
	check_eq "$n: /tmp mode 1777" 1777 "$(stat -c %a "$r/tmp" 2>&1)"
	check_eq "$n: /bin/sh -> busybox" busybox "$(readlink "$r/bin/sh" 2>&1)"
	check "$n: /bin/busybox is executable" test -x "$r/bin/busybox"
	check_fails "$n: the mount is the image rootfs, not the snapshot root (no /imcache.json)" \
		test -e "$r/imcache.json"
}
check_rootfs "$M1"
check_rootfs "$M2"

# Clones are independent copies.
echo written-in-m1 >"$M1/only-in-m1" 2>/dev/null || true
check_eq "clone 1 is writable" written-in-m1 "$(cat "$M1/only-in-m1" 2>&1)"
check_fails "clone 2 does not see clone 1's new file" test -e "$M2/only-in-m1"
echo changed >"$M1/data/a.txt" 2>/dev/null || true
check_eq "clone 2 does not see clone 1's change to /data/a.txt" content-a "$(cat "$M2/data/a.txt" 2>&1)"
attach_at "$ID1" "$M3" || true
check_fails "a fresh third attach does not see clone 1's new file" test -e "$M3/only-in-m1"
check_eq "a fresh third attach has the original /data/a.txt" content-a "$(cat "$M3/data/a.txt" 2>&1)"

OUT=$(imc_attach list 2>&1) || true
check_eq "imc-attach list: a JSON array of 3 attaches" 3 "$(json_get "$OUT" 'length' 2>&1)"
for d in "$M1" "$M2" "$M3"; do
	check_match "imc-attach list names $(basename "$d")" "\"$d\"" "$OUT"
done

# --- a container from an attached rootfs ----------------------------------------------------

if run_container "$M3" /bin/sh -c 'echo hello-from-imcache; cat /data/a.txt'; then
	note "container runtime used: $CONTAINER_RUNTIME"
	[ -z "$CONTAINER_ERRORS" ] || note "runtimes that failed first: $CONTAINER_ERRORS"
	check_eq "container ($CONTAINER_RUNTIME) prints hello-from-imcache and /data/a.txt" \
		"hello-from-imcache content-a" "$(printf '%s' "$CONTAINER_OUTPUT" | tr '\n' ' ' | sed 's/ $//')"
else
	not_ok "a container runs from the attached rootfs (crun or runc)" "$CONTAINER_ERRORS"
fi
# Both runtimes imcache supports, each on its own (scripts/install-deps.sh installs both).
for rt in crun runc; do
	if ! command -v "$rt" >/dev/null 2>&1; then
		skip "container with $rt" "$rt is not installed"
		continue
	fi
	if IMC_RUNTIME=$rt run_container "$M3" /bin/cat /data/a.txt; then
		check_eq "container with $rt reads the attached rootfs" content-a "$CONTAINER_OUTPUT"
	else
		not_ok "container with $rt reads the attached rootfs" "$CONTAINER_ERRORS"
	fi
done

# --- one base, several refs at once -----------------------------------------------------------

# By tag, by digest and from another repository, all at once: one base snapshot (its id is the
# manifest digest's, whatever the ref), built by one of the builds while the others wait for it.
SAME_DIGEST=sha256:$(registry_manifest imc/same-a v1 | sha256sum | cut -d' ' -f1)
check_eq "both repositories serve the same manifest" "$SAME_DIGEST" \
	"sha256:$(registry_manifest imc/same-b v1 | sha256sum | cut -d' ' -f1)"
SAME_REFS=("$REGISTRY/imc/same-a:v1" "$REGISTRY/imc/same-a@$SAME_DIGEST" "$REGISTRY/imc/same-b:v1")
for i in 0 1 2; do
	jq -cn --arg r "${SAME_REFS[$i]}" '{images: [{ref: $r}]}' >"$TEST_TMP/same-$i.json"
done
# The three POSTs go out together; imcd's two build workers take the first two at once.
SAME_PIDS=()
for i in 0 1 2; do
	curl -sS --noproxy '*' --max-time 30 -H 'Content-Type: application/json' \
		--data-binary "@$TEST_TMP/same-$i.json" -o "$TEST_TMP/same-$i.out" \
		"$IMCD_URL/v1/imagecaches" &
	SAME_PIDS+=($!)
done
wait "${SAME_PIDS[@]}" || true
SAME_IDS=()
for i in 0 1 2; do
	SAME_IDS+=("$(jq -r '.id // empty' "$TEST_TMP/same-$i.out" 2>/dev/null || true)")
done
SAME_BASES=()
for i in 0 1 2; do
	C=$(cache_wait "${SAME_IDS[$i]}" 300) || C=
	check_eq "same image at once, create $i: Ready" Ready "$(json_get "$C" '.status' 2>&1)"
	[ "$(json_get "$C" '.status' 2>&1)" = Ready ] ||
		note "statusMessage: $(json_get "$C" '.statusMessage // empty' 2>&1)"
	SAME_BASES+=("$(json_get "$C" '"\(.base.snapshot) \(.base.reused)"' 2>&1)")
done
N_BASES=$(printf '%s\n' "${SAME_BASES[@]}" | awk '{print $1}' | sort -u | wc -l)
N_BUILT=$(printf '%s\n' "${SAME_BASES[@]}" | grep -c '^img-.* false$' || true)
N_REUSED=$(printf '%s\n' "${SAME_BASES[@]}" | grep -c '^img-.* true$' || true)
check_eq "all three stand on one base: built by one, reused by two" "1 1 2" \
	"$N_BASES $N_BUILT $N_REUSED"
check_eq "no build directory or volume is left" "" \
	"$(find "$STATE/tmp" "$STATE/pool/volumes" -mindepth 1 2>/dev/null)"

# --- the OCI index image ---------------------------------------------------------------------

OUT=$(imcctl create "$IDX_REF" --name idx --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID3=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID3" =~ ^imc- ]]; then
	ok "cache of the OCI index image is Ready ($ID3)"
	M4=$TEST_TMP/m4
	if attach_at "$ID3" "$M4"; then
		check_eq "index image: linux/amd64 was chosen (/platform)" amd64 "$(cat "$M4/platform" 2>&1)"
		check "detach the index image" imc_attach detach "$M4"
	fi
else
	not_ok "cache of the OCI index image is Ready" "$(cat "$TEST_TMP/imcctl.err")" "$(imcd_log_tail 10)"
fi
check_eq "index image, no platform asked: GET says linux/amd64" linux/amd64 \
	"$(json_get "$(imcctl get "$ID3" -o json 2>&1)" '.images[0].platform' 2>&1)"

# The same ref for linux/arm64 is another cache, of the other image of the index (its only file
# is /platform: an arm64 image needs no arm64 binary).
OUT=$(imcctl create "$IDX_REF" --platform linux/arm64 --name idx-arm --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID4=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID4" =~ ^imc- ]]; then
	ok "imcctl create --platform linux/arm64 of the index is Ready ($ID4)"
else
	not_ok "imcctl create --platform linux/arm64 of the index is Ready" \
		"$(cat "$TEST_TMP/imcctl.err")" "$(imcd_log_tail 10)"
fi
check_fails "the same ref for another platform is another cache" test "$ID4" = "$ID3"
C3=$(imcctl get "$ID3" -o json 2>&1)
C4=$(imcctl get "$ID4" -o json 2>&1)
check_eq "GET: the arm64 cache's image is linux/arm64/v8 (variant default)" linux/arm64/v8 \
	"$(json_get "$C4" '.images[0].platform' 2>&1)"
check_eq "GET: both come from the same index" "$(json_get "$C3" '.images[0].indexDigest' 2>&1)" \
	"$(json_get "$C4" '.images[0].indexDigest' 2>&1)"
check_fails "GET: they are two manifests" test "$(json_get "$C3" '.images[0].digest')" = \
	"$(json_get "$C4" '.images[0].digest')"
check_fails "each platform has its own base snapshot" test "$(json_get "$C3" '.base.snapshot')" = \
	"$(json_get "$C4" '.base.snapshot')"
# imcache_json ID: the snapshot's /imcache.json.
imcache_json() {
	local snap=$STATE/pool/snapshots/$1.img mnt=$TEST_TMP/snap-$1
	mkdir -p "$mnt"
	mount -o ro,loop,noload "$snap" "$mnt" 2>/dev/null || return 1
	cat "$mnt/imcache.json"
	umount "$mnt"
}
check_eq "/imcache.json of each cache names its platform" "linux/amd64 linux/arm64/v8" \
	"$(json_get "$(imcache_json "$ID3")" '.images[0].platform' 2>&1) $(json_get "$(imcache_json "$ID4")" '.images[0].platform' 2>&1)"
M5=$TEST_TMP/m5
if attach_at "$ID4" "$M5"; then
	check_eq "arm64 cache: the arm64 image (/platform)" arm64 "$(cat "$M5/platform" 2>&1)"
	check_fails "arm64 cache: none of the amd64 image's files" test -e "$M5/bin/busybox"
	check "detach the arm64 cache" imc_attach detach "$M5"
fi

# The platform is part of a request's identity: clientToken, list filters, match=best.
tok_body() { jq -cn --arg r "$IDX_REF" --arg p "$1" '{images: [{ref: $r, platform: $p}], clientToken: "tok-arm"}'; }
http POST "$IMCD_URL/v1/imagecaches" "$(tok_body linux/arm64)"
check_eq "clientToken with linux/arm64: 202" 202 "$HTTP_STATUS"
ID5=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
http POST "$IMCD_URL/v1/imagecaches" "$(tok_body linux/arm64/v8)"
check_eq "the same token and platform (spelled out): the same cache" "$ID5 true" \
	"$(json_get "$HTTP_BODY" '"\(.id) \(.existing)"' 2>&1)"
http POST "$IMCD_URL/v1/imagecaches" "$(tok_body linux/amd64)"
check_eq "the same token for another platform: 409 (another request)" 409 "$HTTP_STATUS"
[ -z "$ID5" ] || check_eq "the token's cache is Ready" Ready \
	"$(json_get "$(cache_wait "$ID5" 300)" .status 2>&1)"
IDX_Q=$(jq -rn --arg r "$IDX_REF" '$r | @uri')
http GET "$IMCD_URL/v1/imagecaches?image=$IDX_Q&platform=linux/arm64"
check_eq "list image=IDX&platform=linux/arm64: the two arm64 caches" "$(printf '%s\n' "$ID4" "$ID5" | sort | tr '\n' ' ')" \
	"$(json_get "$HTTP_BODY" '[.items[].id] | sort | join(" ")' 2>&1) "
http GET "$IMCD_URL/v1/imagecaches?image=$IDX_Q"
check_eq "list image=IDX: every platform's caches" 3 "$(json_get "$HTTP_BODY" '.items | length' 2>&1)"
http GET "$IMCD_URL/v1/imagecaches?image=$IDX_Q&match=best&platform=linux/arm64"
check_match "match=best for linux/arm64: an arm64 cache (they tie)" "^($ID4|$ID5)\$" \
	"$(json_get "$HTTP_BODY" '.items[0].id // empty' 2>&1)"
http GET "$IMCD_URL/v1/imagecaches?image=$IDX_Q&match=best"
check_eq "match=best without a platform: imcd's default (linux/amd64)" "$ID3" \
	"$(json_get "$HTTP_BODY" '.items[0].id // empty' 2>&1)"

# expect_platform_failure BODY DESC MESSAGE_ERE: the cache ends Failed saying so.
expect_platform_failure() {
	local id body
	http POST "$IMCD_URL/v1/imagecaches" "$1"
	id=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
	body=$(cache_wait "$id" 120) || body=
	check_eq "$2: Failed" Failed "$(json_get "$body" '.status' 2>&1)"
	check_match "$2: the message lists the platforms there are" "$3" \
		"$(json_get "$body" '.statusMessage' 2>&1)"
	FAILED_IDS+=("$id")
}
FAILED_IDS=()
expect_platform_failure "$(jq -cn --arg r "$IDX_REF" '{images: [{ref: $r, platform: "linux/s390x"}]}')" \
	"index without linux/s390x" \
	'no manifest for platform linux/s390x in the index \(available: linux/amd64, linux/arm64/v8\)'
expect_platform_failure "$(jq -cn --arg r "$MULTI_REF" '{images: [{ref: $r, platform: "linux/arm64"}]}')" \
	"single-platform amd64 image asked for linux/arm64" \
	'no manifest for platform linux/arm64/v8 \(available: linux/amd64\)'

# imcd --platform: the default of images that name none.  The caches made before keep theirs.
rc=0
imcd_stop || rc=$?
check_eq "imcd stops (SIGTERM) before its restart with --platform" 0 "$rc"
check_fails "imcd log has no sanitizer report (before the restart)" \
	grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"
imcd_start "$STATE" --platform linux/arm64 || bail "imcd starts with --platform linux/arm64" "$(imcd_log_tail 30)"
check_eq "after the restart, each cache keeps its platform" "linux/amd64 linux/arm64/v8" \
	"$(json_get "$(imcctl get "$ID3" -o json)" '.images[0].platform') $(json_get "$(imcctl get "$ID4" -o json)" '.images[0].platform')"
OUT=$(imcctl create "$IDX_REF" --name idx-default --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID6=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
C6=$(imcctl get "$ID6" -o json 2>&1)
check_eq "imcd --platform linux/arm64: an image that names none is linux/arm64/v8, on the arm64 base" \
	"linux/arm64/v8 $(json_get "$C4" '.base.snapshot') true" \
	"$(json_get "$C6" '"\(.images[0].platform) \(.base.snapshot) \(.base.reused)"' 2>&1)"

# --- detach, delete, stop --------------------------------------------------------------------

for d in "$M1" "$M2" "$M3"; do
	check "detach $(basename "$d")" imc_attach detach "$d"
	check_fails "$(basename "$d") is no longer a mount point" findmnt -rn --mountpoint "$d"
done
OUT=$(imc_attach list 2>&1) || true
check_eq "imc-attach list is empty after detaching" 0 "$(json_get "$OUT" 'length' 2>&1)"
check_eq "no clone files left in the pool" "" "$(find "$STATE/pool/clones" -type f 2>/dev/null)"

for id in "$ID1" "$ID2" "$ID3" "$ID4" "$ID5" "$ID6" "${SAME_IDS[@]}" "${FAILED_IDS[@]}"; do
	[ -n "$id" ] || continue
	http DELETE "$IMCD_URL/v1/imagecaches/$id"
	check_eq "DELETE $id answers 200" 200 "$HTTP_STATUS"
	http GET "$IMCD_URL/v1/imagecaches/$id"
	check_eq "GET $id after DELETE answers 404" 404 "$HTTP_STATUS"
	check_match "the 404 is a JSON error with a code" '.' \
		"$(json_get "$HTTP_BODY" '.error.code // empty' 2>/dev/null || true)"
	check "snapshot of $id is gone from the pool (within 10 s)" wait_gone "$STATE/pool/snapshots/$id.img" 10
done
# Each cache stood on its image's base snapshot (img-…); with the last cache of an image gone, so
# is its base.
http GET "$IMCD_URL/v1/imagecaches"
check_eq "no cache is left" 0 "$(json_get "$HTTP_BODY" '.items | length' 2>/dev/null)"
check_eq "no base snapshot is left in the pool" "" \
	"$(find "$STATE/pool/snapshots" -name 'img-*' 2>/dev/null)"

check_clean_shutdown

done_testing
