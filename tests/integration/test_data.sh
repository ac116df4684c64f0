#!/bin/bash
# Model data in a cache: an https-style file from a local nginx (ranged, two pieces, sha256
# checked), a Hugging Face-compatible repository on the same server (hf://, HF_ENDPOINT), and an
# OCI artifact pushed to the test registry (oci://, files named by their title annotations) all
# land under /data/<path>/ with their sizes and digests in /imcache.json and in GET.  A wrong
# sha256 and a size too small fail the build with a clear reason; bad data entries are 400s that
# name the field; credentials are never echoed or written down, and a build that had them is
# marked Failed ("credentials lost on restart") when imcd restarts in the middle of it.
# Data reaches only destinations the operator allowed: imcd allows the web server's address
# and port (--allow-data-destination), and a data URL naming another loopback service of the
# host (imcd's own API) fails the build "destination refused", by the address connected to.
# Needs root and loop devices.
# shellcheck source-path=SCRIPTDIR disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/webserver.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs sha256sum nginx
need_programs imcd imcctl imc-attach

# --- servers and content ---------------------------------------------------------------------

registry_start_or_bail
webserver_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317
build_push() {
	mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1
}
check "busybox image builds and pushes" build_push
BB_REF=$REGISTRY/imc/bb:v1

# A 70 MiB model: more than one 64 MiB piece, so two ranged GETs.
mkdir -p "$WEB_ROOT/models"
head -c $((70 << 20)) /dev/urandom >"$WEB_ROOT/models/model.bin"
MODEL_SHA=$(sha256sum "$WEB_ROOT/models/model.bin" | cut -d' ' -f1)
MODEL_URL=$WEB_URL/models/model.bin

# A Hugging Face-style repository with a file in a subdirectory.
HF_SRC=$TEST_TMP/hf
mkdir -p "$HF_SRC/onnx"
printf '{"model_type":"tiny"}' >"$HF_SRC/config.json"
head -c 300000 /dev/urandom >"$HF_SRC/onnx/model.onnx"
(cd "$HF_SRC" && web_hf_repo acme/tiny main config.json onnx/model.onnx)
check "the hf file list is served" curl -fsS --noproxy '*' -o /dev/null \
	"$WEB_URL/api/models/acme/tiny/revision/main"

# An OCI artifact: two layers, each a file named by its title annotation.
ART=$TEST_TMP/art
mkdir -p "$ART"
head -c 123457 /dev/urandom >"$ART/weights.safetensors"
printf 'tokens\n' >"$ART/tokenizer.txt"
printf '{}' >"$ART/config"
# shellcheck disable=SC2317
push_artifact() {
	local f d s
	local -a layers=()
	for f in weights.safetensors tokenizer.txt config; do
		registry_put_blob imc/art "$ART/$f" || return 1
	done
	for f in weights.safetensors tokenizer.txt; do
		d=sha256:$(sha256sum "$ART/$f" | cut -d' ' -f1)
		s=$(stat -c %s "$ART/$f")
		layers+=("$(jq -cn --arg d "$d" --argjson s "$s" --arg t "$f" '{mediaType: "application/octet-stream", digest: $d, size: $s, annotations: {"org.opencontainers.image.title": $t}}')")
	done
	jq -cn --arg cd "sha256:$(sha256sum "$ART/config" | cut -d' ' -f1)" \
		--argjson layers "$(printf '%s\n' "${layers[@]}" | jq -cs .)" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
		  config: {mediaType: "application/vnd.oci.empty.v1+json", digest: $cd, size: 2},
		  layers: $layers}' >"$ART/manifest.json"
	curl -fsS --noproxy '*' -X PUT -o /dev/null \
		-H "Content-Type: application/vnd.oci.image.manifest.v1+json" \
		--data-binary "@$ART/manifest.json" "http://$REGISTRY/v2/imc/art/manifests/v1"
}
check "an OCI artifact pushes to the registry" push_artifact

STATE=$TEST_TMP/state
export HF_ENDPOINT=$WEB_URL
WEB_ALLOW=${WEB_URL#http://}
imcd_start_or_bail "$STATE" --allow-data-destination "$WEB_ALLOW"

# --- one cache with all three kinds ----------------------------------------------------------

OUT=$(imcctl create "$BB_REF" --name data --data "$MODEL_URL=llm" \
	--data "hf://acme/tiny@main=tiny" --data "oci://$REGISTRY/imc/art:v1=art" \
	--wait --timeout 300 2>"$TEST_TMP/imcctl.err") || OUT="FAILED: $OUT"
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID" =~ ^imc- ]]; then
	ok "imcctl create --data (https, hf, oci) --wait makes a Ready cache ($ID)"
else
	bail "imcctl create --data (https, hf, oci) --wait makes a Ready cache" "stdout: $OUT" \
		"stderr: $(cat "$TEST_TMP/imcctl.err")" "$(imcd_log_tail 20)"
fi

http GET "$IMCD_URL/v1/imagecaches/$ID"
check_eq "GET: three data entries in request order" "llm tiny art" \
	"$(json_get "$HTTP_BODY" '[.data[].path] | join(" ")' 2>&1)"
check_eq "GET: the model's size and sha256" "$((70 << 20)) $MODEL_SHA" \
	"$(json_get "$HTTP_BODY" '.data[0].files[0] | "\(.size) \(.sha256)"' 2>&1)"
check_eq "GET: the hf files, the one in a subdirectory too" "config.json onnx/model.onnx" \
	"$(json_get "$HTTP_BODY" '[.data[1].files[].name] | join(" ")' 2>&1)"
check_eq "GET: the hf entry's size is the sum of its files" "$((21 + 300000))" \
	"$(json_get "$HTTP_BODY" '.data[1].size' 2>&1)"
check_eq "GET: the artifact's files are named by their titles, with their digests" \
	"weights.safetensors:$(sha256sum "$ART/weights.safetensors" | cut -d' ' -f1) tokenizer.txt:$(sha256sum "$ART/tokenizer.txt" | cut -d' ' -f1)" \
	"$(json_get "$HTTP_BODY" '[.data[2].files[] | "\(.name):\(.sha256)"] | join(" ")' 2>&1)"

# The files themselves, from the sealed snapshot mounted read-only.
# shellcheck disable=SC2317 # deferred
umount_quiet() {
	! findmnt -rn --mountpoint "$1" >/dev/null || umount "$1"
}
SNAP=$STATE/pool/snapshots/$ID.img
MNT=$TEST_TMP/snap
mkdir -p "$MNT"
if mount -o ro,loop "$SNAP" "$MNT" 2>"$TEST_TMP/mount.err"; then
	defer umount_quiet "$MNT"
	ok "the snapshot mounts read-only"
	check "/data/llm/model.bin is the served file" cmp "$WEB_ROOT/models/model.bin" "$MNT/data/llm/model.bin"
	check "/data/tiny/onnx/model.onnx is the hf file" cmp "$HF_SRC/onnx/model.onnx" "$MNT/data/tiny/onnx/model.onnx"
	check "/data/art/weights.safetensors is the artifact's layer" cmp "$ART/weights.safetensors" "$MNT/data/art/weights.safetensors"
	check_eq "/imcache.json lists the data with the model's sha256" "$MODEL_SHA" \
		"$(jq -r '.data[0].files[0].sha256' "$MNT/imcache.json" 2>&1)"
	EXTENTS=$(filefrag "$MNT/data/llm/model.bin" 2>/dev/null | grep -Eo '[0-9]+ extents?' || true)
	note "model.bin in the snapshot: ${EXTENTS:-? extents}"
	check "the snapshot unmounts" umount "$MNT"
else
	not_ok "the snapshot mounts read-only" "$(cat "$TEST_TMP/mount.err")"
fi
check_eq "the artifact's blobs did not stay in the blob directory" "" \
	"$(find "$STATE/blobs" -name "$(sha256sum "$ART/weights.safetensors" | cut -d' ' -f1)" 2>/dev/null)"
check "the two pieces were asked for with Range" \
	grep -Eq '"GET /models/model.bin HTTP/1.1" 206' "$WEB_DIR/access.log"

# --- incremental: a second cache of the same image reuses its base snapshot ------------------

BB_DIGEST=sha256:$(registry_manifest imc/bb v1 | sha256sum | cut -d' ' -f1)
# img- and 32 hex of the sha256 of "<manifest digest> <platform>".
BASE=img-$(printf '%s %s' "$BB_DIGEST" linux/amd64 | sha256sum | cut -c1-32)
check "the first cache built the image's base snapshot $BASE" test -f "$STATE/pool/snapshots/$BASE.img"
check_eq "GET of the first cache: base built now" "$BASE false" \
	"$(json_get "$(imcctl get "$ID" 2>&1)" '"\(.base.snapshot) \(.base.reused)"' 2>&1)"

# Without the layer blobs in imcd's blob directory, a second build that pulled the image again
# would fetch them: it must not.
find "$STATE/blobs" -type f -delete
OUT=$(imcctl create "$BB_REF" --name data2 --data "hf://acme/tiny@main=tiny2" --wait \
	--timeout 300 2>"$TEST_TMP/imcctl.err") || OUT="FAILED: $OUT"
ID2=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID2" =~ ^imc- ]]; then
	ok "a second cache of the same image with other data is Ready ($ID2)"
else
	not_ok "a second cache of the same image with other data is Ready" "$OUT" "$(cat "$TEST_TMP/imcctl.err")"
fi
C2=$(imcctl get "$ID2" 2>&1)
check_eq "the second cache reused the base" "$BASE true" \
	"$(json_get "$C2" '"\(.base.snapshot) \(.base.reused)"' 2>&1)"
check_match "the saving is reported (layer bytes, seconds)" '^[1-9][0-9]* [0-9.]+$' \
	"$(json_get "$C2" '"\(.base.layerBytes) \(.base.savedSeconds)"' 2>&1)"
check_eq "no layer blob was fetched for it" "" "$(find "$STATE/blobs" -type f 2>/dev/null)"
check_eq "it has only its own data" "tiny2" "$(json_get "$C2" '[.data[].path] | join(" ")' 2>&1)"
if mount -o ro,loop "$STATE/pool/snapshots/$ID2.img" "$MNT" 2>"$TEST_TMP/mount.err"; then
	check "the second cache has the image's /bin/busybox" test -x "$MNT/images/0/rootfs/bin/busybox"
	check "the second cache has its hf files" cmp "$HF_SRC/onnx/model.onnx" "$MNT/data/tiny2/onnx/model.onnx"
	check_fails "the second cache has none of the first one's data" test -e "$MNT/data/llm"
	check_eq "its /imcache.json is its own" "$ID2" "$(jq -r .id "$MNT/imcache.json" 2>&1)"
	umount "$MNT" || not_ok "the snapshot unmounts"
else
	not_ok "the second cache's snapshot mounts" "$(cat "$TEST_TMP/mount.err")"
fi
# "Never clone a clone": each cache is sealed (and compacted) on its own.
extents() { xfs_bmap "$1" 2>/dev/null | tail -n +2 | grep -vc hole || true; }
E_BASE=$(extents "$STATE/pool/snapshots/$BASE.img")
E_1=$(extents "$STATE/pool/snapshots/$ID.img")
E_2=$(extents "$STATE/pool/snapshots/$ID2.img")
note "extents (xfs_bmap): base $E_BASE, first cache $E_1, second cache (from the base) $E_2"
check "the cache built on the base has few extents (<= 64): $E_2" test "$E_2" -le 64

# Bigger than the base: grown online where the kernel lets us, else built from scratch.
OUT=$(imcctl create "$BB_REF" --name big --size $((3 << 30)) --wait --timeout 300 2>&1) || OUT="FAILED: $OUT"
ID3=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID3" =~ ^imc- ]]; then
	ok "a cache larger than the base is Ready ($ID3)"
	note "larger cache: base $(json_get "$(imcctl get "$ID3")" '.base.reused // "not used (built from scratch)"')"
else
	not_ok "a cache larger than the base is Ready" "$OUT"
fi

# --- a tag that moves: the new image's base starts from the old one's common layers ---------

MV=$TEST_TMP/moving
MW=$TEST_TMP/moving-src
# shellcheck disable=SC2317 # called through check
mk_moving() {
	mk_layout "$MV"
	mkimage_busybox_rootfs "$MW/l1"
	mkdir -p "$MW/l2/app" "$MW/l3/app"
	printf 'v1\n' >"$MW/l2/app/version"
	printf 'v2\n' >"$MW/l3/app/version"
	printf 'extra\n' >"$MW/l3/app/extra"
	local l1 l2 l3
	l1=$(mk_layer "$MV" "$MW/l1" gzip)
	l2=$(mk_layer "$MV" "$MW/l2" gzip)
	l3=$(mk_layer "$MV" "$MW/l3" gzip)
	mk_tag "$MV" v1 "$(mk_image "$MV" amd64 "$MK_DEFAULT_CONFIG" "$l1" "$l2")"
	mk_tag "$MV" v2 "$(mk_image "$MV" amd64 "$MK_DEFAULT_CONFIG" "$l1" "$l2" "$l3")"
}
check "two images sharing two layers are made" mk_moving
APP_REF=$REGISTRY/imc/app:latest
check "v1 pushed as imc/app:latest" mkimage_push "$MV" v1 imc/app:latest
OUT=$(imcctl create "$APP_REF" --name app1 --wait --timeout 300 2>&1) || OUT="FAILED: $OUT"
ID_V1=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
check_match "a cache of imc/app:latest (v1) is Ready" '^imc-' "$ID_V1 $OUT"
BASE_V1=$(json_get "$(imcctl get "$ID_V1" 2>&1)" '.base.snapshot // empty' 2>&1)
check "v2 pushed as imc/app:latest (the tag moves)" mkimage_push "$MV" v2 imc/app:latest
OUT=$(imcctl create "$APP_REF" --name app2 --wait --timeout 300 2>&1) || OUT="FAILED: $OUT"
ID_V2=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
check_match "a cache of imc/app:latest (v2) is Ready" '^imc-' "$ID_V2 $OUT"
C_V2=$(imcctl get "$ID_V2" 2>&1)
check_fails "v2 has a base of its own" test "$(json_get "$C_V2" '.base.snapshot' 2>&1)" = "$BASE_V1"
check_eq "v2's base was built on v1's, reusing its 2 layers" "$BASE_V1 2" \
	"$(json_get "$C_V2" '"\(.base.builtFrom.snapshot) \(.base.builtFrom.layers)"' 2>&1)"
if mount -o ro,loop "$STATE/pool/snapshots/$ID_V2.img" "$MNT" 2>"$TEST_TMP/mount.err"; then
	check_eq "v2's rootfs has v2's /app/version" v2 "$(cat "$MNT/images/0/rootfs/app/version" 2>&1)"
	check "v2's rootfs has v2's /app/extra" test -f "$MNT/images/0/rootfs/app/extra"
	check "v2's rootfs has the common layer's /bin/busybox" test -x "$MNT/images/0/rootfs/bin/busybox"
	check "the v2 snapshot unmounts" umount "$MNT"
else
	not_ok "the v2 snapshot mounts" "$(cat "$TEST_TMP/mount.err")"
fi

# --- nested data paths -----------------------------------------------------------------------

# data[].path may be several components: files land under /data/<path>/, two entries may share
# a parent directory.
OUT=$(imcctl create "$BB_REF" --name nested --data "oci://$REGISTRY/imc/art:v1=models/llama-3-8b" \
	--data "hf://acme/tiny@main=models/tiny" --wait --timeout 300 2>"$TEST_TMP/imcctl.err") ||
	OUT="FAILED: $OUT"
ID_NEST=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
if [[ "$ID_NEST" =~ ^imc- ]]; then
	ok "a cache with data paths models/llama-3-8b and models/tiny is Ready ($ID_NEST)"
else
	not_ok "a cache with data paths models/llama-3-8b and models/tiny is Ready" "$OUT" \
		"$(cat "$TEST_TMP/imcctl.err")" "$(imcd_log_tail 10)"
fi
check_eq "GET: the nested paths as requested" "models/llama-3-8b models/tiny" \
	"$(json_get "$(imcctl get "$ID_NEST" 2>&1)" '[.data[].path] | join(" ")' 2>&1)"
if mount -o ro,loop "$STATE/pool/snapshots/$ID_NEST.img" "$MNT" 2>"$TEST_TMP/mount.err"; then
	check "/data/models/llama-3-8b/weights.safetensors is the artifact's layer" \
		cmp "$ART/weights.safetensors" "$MNT/data/models/llama-3-8b/weights.safetensors"
	check "/data/models/tiny/onnx/model.onnx is the hf file" \
		cmp "$HF_SRC/onnx/model.onnx" "$MNT/data/models/tiny/onnx/model.onnx"
	check_eq "/data/models holds just the two entries" "llama-3-8b tiny" \
		"$(find "$MNT/data/models" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ' | sed 's/ $//')"
	check_eq "/imcache.json records the nested paths" "models/llama-3-8b models/tiny" \
		"$(jq -r '[.data[].path] | join(" ")' "$MNT/imcache.json" 2>&1)"
	check "the nested snapshot unmounts" umount "$MNT"
else
	not_ok "the nested snapshot mounts" "$(cat "$TEST_TMP/mount.err")"
fi

# --- sha256 and size -------------------------------------------------------------------------

# wait_cache ID: the cache's JSON once it is no longer Creating (nothing for an empty ID).
wait_cache() {
	[ -n "$1" ] || return 0
	cache_wait "$1" 300 || true
}

# post_data BODY_JQ: POST a cache of busybox with extra fields; sets HTTP_STATUS/HTTP_BODY.
post_data() {
	http POST "$IMCD_URL/v1/imagecaches" \
		"$(jq -cn --arg ref "$BB_REF" --arg url "$MODEL_URL" --arg sha "$MODEL_SHA" \
			--arg reg "$REGISTRY" "{images: [{ref: \$ref}]} + ($1)")"
}

post_data '{data: [{source: $url, path: "m", sha256: $sha}]}'
ID_SHA=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
C=$(wait_cache "$ID_SHA")
check_eq "the right sha256: Ready" Ready "$(json_get "$C" '.status' 2>&1)"

post_data '{data: [{source: $url, path: "m", sha256: ("0" * 64)}]}'
ID_BAD=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
C=$(wait_cache "$ID_BAD")
check_eq "a wrong sha256: Failed" Failed "$(json_get "$C" '.status' 2>&1)"
check_match "a wrong sha256: the message says so and names the file" \
	'data m.*model\.bin.*sha256 mismatch' "$(json_get "$C" '.statusMessage' 2>&1)"
check_eq "a wrong sha256 leaves no volume or snapshot" "" \
	"$(find "$STATE/pool" -name "$ID_BAD*" 2>/dev/null)"

# A loopback service that is not allowed: imcd's own API (the issue: a tenant read the host's
# loopback services back through its cache).
http POST "$IMCD_URL/v1/imagecaches" "$(jq -cn --arg ref "$BB_REF" \
	--arg url "$IMCD_URL/v1/imagecaches" '{images: [{ref: $ref}], data: [{source: $url, path: "x"}]}')"
ID_LOOP=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
C=$(wait_cache "$ID_LOOP")
check_eq "data from a loopback address that is not allowed: Failed" Failed \
	"$(json_get "$C" '.status' 2>&1)"
check_match "... destination refused, naming the address" 'destination refused.*127\.0\.0\.1' \
	"$(json_get "$C" '.statusMessage' 2>&1)"
http POST "$IMCD_URL/v1/imagecaches" "$(jq -cn --arg ref "$BB_REF" \
	--arg url "http://localhost:${IMCD_URL##*:}/v1/imagecaches" \
	'{images: [{ref: $ref}], data: [{source: $url, path: "x"}]}')"
ID_LOOP=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
C=$(wait_cache "$ID_LOOP")
check_match "... also when named localhost (checked after DNS)" 'destination refused' \
	"$(json_get "$C" '.statusMessage' 2>&1)"

post_data '{data: [{source: $url, path: "m"}], size: (64 * 1048576)}'
ID_SMALL=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
C=$(wait_cache "$ID_SMALL")
check_eq "size smaller than the data: Failed" Failed "$(json_get "$C" '.status' 2>&1)"
check_match "size smaller than the data: the reason is clear" 'too small' \
	"$(json_get "$C" '.statusMessage' 2>&1)"

# --- refused requests ------------------------------------------------------------------------

# bad DESC JQ ERE: the request is a 400 whose message matches ERE.
bad() {
	post_data "$2"
	if [ "$HTTP_STATUS" = 400 ]; then
		check_match "$1: 400 naming the field" "$3" "$(json_get "$HTTP_BODY" '.error.message' 2>&1)"
	else
		not_ok "$1: 400" "got $HTTP_STATUS $HTTP_BODY"
	fi
}
bad "an ftp source" '{data: [{source: "ftp://x/y", path: "m"}]}' '^data\[0\]: source'
bad "plain http to another host" '{data: [{source: "http://example.com/m.bin", path: "m"}]}' \
	'^data\[0\]: source.*loopback'
bad "a path of .." '{data: [{source: $url, path: ".."}]}' '^data\[0\]: path'
bad "a nested path with a .. component" '{data: [{source: $url, path: "models/../../etc"}]}' \
	'^data\[0\]: path: "models/\.\./\.\./etc": bad component "\.\."'
bad "a nested path with a . component" '{data: [{source: $url, path: "models/./x"}]}' \
	'^data\[0\]: path: .*bad component "\."'
bad "a path with a leading /" '{data: [{source: $url, path: "/models/x"}]}' \
	'^data\[0\]: path: .*not a relative path'
bad "a path with a trailing /" '{data: [{source: $url, path: "models/"}]}' \
	'^data\[0\]: path: .*not a relative path'
bad "a path with an empty component" '{data: [{source: $url, path: "models//x"}]}' \
	'^data\[0\]: path: .*not a relative path'
bad "a path with a control character" '{data: [{source: $url, path: "models/a\nb"}]}' \
	'^data\[0\]: path: a control character at byte 8$'
bad "a path 17 components deep" '{data: [{source: $url, path: ([range(0; 17) | "d"] | join("/"))}]}' \
	'^data\[0\]: path: .*deeper than 16'
bad "a path inside another entry's" \
	'{data: [{source: $url, path: "models"}, {source: $url, path: "models/x"}]}' \
	'^data\[1\]\.path: models/x and data\[0\]\.path models: one is inside the other'
bad "an unknown field in a data entry" '{data: [{source: $url, path: "m", mode: 1}]}' \
	'data\[0\].*mode'
bad "sha256 for an hf source" '{data: [{source: "hf://a/b", path: "m", sha256: $sha}]}' \
	'^data\[0\]: sha256'
bad "65 data entries" '{data: [range(0; 65) | {source: $url, path: "m\(.)"}]}' 'at most 64'
bad "the same path twice" '{data: [{source: $url, path: "m"}, {source: $url, path: "m"}]}' \
	'data\[1\]\.path'
bad "size 0" '{size: 0}' '^size'
bad "credentials with both a password and a token" \
	'{credentials: [{registry: $reg, username: "u", password: "p", token: "t"}]}' \
	'^credentials\[0\]'
bad "an unknown field in credentials" \
	'{credentials: [{registry: $reg, token: "t", secret: "x"}]}' 'credentials\[0\].*secret'

# --- credentials -----------------------------------------------------------------------------

SECRET=pw-$RANDOM$RANDOM-never-written
post_data "{credentials: [{registry: \$reg, username: \"imc\", password: \"$SECRET\"}]}"
ID_CRED=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
check_eq "a request with credentials: 202" 202 "$HTTP_STATUS"
check_fails "the 202 answer does not echo the password" grep -qF "$SECRET" <<<"$HTTP_BODY"
C=$(wait_cache "$ID_CRED")
check_eq "the cache with credentials is Ready" Ready "$(json_get "$C" '.status' 2>&1)"
check_fails "GET does not show the password" grep -qF "$SECRET" <<<"$C"
check_fails "no file under the state dir holds the password" grep -rqF "$SECRET" "$STATE/caches" "$STATE/blobs"
check_fails "the imcd log does not hold the password" grep -qF "$SECRET" "$IMCD_LOG"
check_eq "the metadata records only that there were credentials" true \
	"$(jq -r '.credentials' "$STATE/caches/$ID_CRED.json" 2>&1)"

# A build with credentials that imcd did not see finish: its metadata as a crash leaves it.
rc=0
imcd_stop || rc=$?
check_eq "imcd stops" 0 "$rc"
LOST=imc-00000000c0ffee00
jq -cn --arg id "$LOST" --arg ref "$BB_REF" \
	'{version: 1, id: $id, status: "Creating", createdAt: 1, refs: [$ref], credentials: true}' \
	>"$STATE/caches/$LOST.json"
imcd_start "$STATE" --allow-data-destination "$WEB_ALLOW" || bail "imcd restarts" "$(imcd_log_tail 30)"
http GET "$IMCD_URL/v1/imagecaches/$LOST"
check_eq "after a restart the build with credentials is Failed" Failed \
	"$(json_get "$HTTP_BODY" '.status' 2>&1)"
check_match "... with \"credentials lost on restart\"" 'credentials lost on restart' \
	"$(json_get "$HTTP_BODY" '.statusMessage' 2>&1)"

# --- cleanup ---------------------------------------------------------------------------------

for id in "$ID" "$ID2" "$ID3" "$ID_NEST" "$ID_V1" "$ID_V2" "$ID_SHA" "$ID_BAD" "$ID_SMALL" "$ID_CRED" "$LOST"; do
	[ -n "$id" ] || continue
	http DELETE "$IMCD_URL/v1/imagecaches/$id"
	check_eq "DELETE $id answers 200" 200 "$HTTP_STATUS"
done

check_clean_shutdown

done_testing
