#!/bin/bash
# Bad input, real faults: an image tag the registry does not have, an unreachable registry, a
# layer whose bytes no longer match its digest (corrupted in the registry's own storage),
# malformed and over-broad API requests, unknown ids, attach of a cache that does not exist.
# Each failure must be reported with the cause and leave nothing behind.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# Uncompressed layer, pushed byte for byte: corrupting its middle keeps a valid tar, so only a
# digest check can tell.
# shellcheck disable=SC2317 # called through check
push_plain() { mkimage_plain "$LAYOUT" plain 512 && registry_push_raw "$LAYOUT" plain imc/plain:v1; }
# shellcheck disable=SC2317
push_bb() { mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1; }
# shellcheck disable=SC2317
served_matches() { # REPO DIGEST: the registry serves bytes that hash to DIGEST
	test "sha256:$(curl -fsS --noproxy '*' "http://$REGISTRY/v2/$1/blobs/$2" | sha256sum | cut -d' ' -f1)" = "$2"
}
# push_diffid NAME COMP FILTER: a one-layer image (one small file; COMP gzip or none) whose
# config's rootfs.diff_ids went through the jq FILTER, pushed byte for byte as imc/diffid-NAME:v1.
# shellcheck disable=SC2317
push_diffid() {
	local name=$1 comp=$2 filter=$3 work l m
	work=$(mktemp -d "$TEST_TMP/diffid.XXXXXX")
	mkdir -p "$work/l1/etc"
	printf 'diff_id test %s\n' "$name" >"$work/l1/etc/$name"
	l=$(mk_layer "$LAYOUT" "$work/l1" "$comp") || return 1
	m=$(MK_DIFF_IDS_JQ=$filter mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$l") || return 1
	mk_tag "$LAYOUT" "diffid-$name" "$m" &&
		registry_push_raw "$LAYOUT" "diffid-$name" "imc/diffid-$name:v1"
}
check "uncompressed single-layer image pushes as is" push_plain
check "gzip busybox image pushes" push_bb
check "an image whose diff_id does not match its gzip layer pushes" \
	push_diffid wrong gzip '.[0] = "sha256:" + ("0" * 64)'
check "an image with no diff_id for its layer pushes" push_diffid missing none '.[1:]'
check "an image with a diff_id too many pushes" push_diffid extra gzip '. + [.[0]]'
PLAIN_LAYER=$(registry_manifest imc/plain v1 | jq -r '.layers[0].digest')
PLAIN_MT=$(registry_manifest imc/plain v1 | jq -r '.layers[0].mediaType')
check_eq "the registry holds the plain image's layer uncompressed" \
	application/vnd.oci.image.layer.v1.tar "$PLAIN_MT"
BB_LAYER=$(registry_manifest imc/bb v1 | jq -r '.layers[0].digest')
check "corrupt the plain layer in the registry's storage" registry_corrupt_blob "$PLAIN_LAYER"
check "corrupt the gzip layer in the registry's storage" registry_corrupt_blob "$BB_LAYER"
check_fails "the registry now serves plain-layer bytes that do not match the digest" \
	served_matches imc/plain "$PLAIN_LAYER"
check_fails "the registry now serves gzip-layer bytes that do not match the digest" \
	served_matches imc/bb "$BB_LAYER"

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

# expect_failed REF DESC: create a cache of REF; it must end Failed.  Sets FAILED_ID, FAILED_MSG.
expect_failed() {
	local ref=$1 desc=$2 id body status
	FAILED_ID=
	FAILED_MSG=
	if ! id=$(create_cache "$ref" bad 2>"$TEST_TMP/create.err"); then
		not_ok "$desc: POST is accepted (202)" "$(cat "$TEST_TMP/create.err")"
		return 0
	fi
	FAILED_ID=$id
	body=$(cache_wait "$id" 120) || body=
	status=$(json_get "$body" '.status // empty' 2>/dev/null || true)
	FAILED_MSG=$(json_get "$body" '.statusMessage // empty' 2>/dev/null || true)
	if [ "$status" = Failed ]; then
		ok "$desc: cache ends Failed"
	else
		not_ok "$desc: cache ends Failed" "got: $body" "$(imcd_log_tail 10)"
	fi
	note "statusMessage: $FAILED_MSG"
}

# store_is_clean DESC: no volume, snapshot or clone files; no loop device or mount but the
# pool's own.
store_is_clean() {
	local desc=$1
	check_eq "$desc: no volume or snapshot files in the pool" "" \
		"$(find "$STATE/pool/volumes" "$STATE/pool/snapshots" "$STATE/pool/clones" \
			-mindepth 1 2>/dev/null)"
	check_eq "$desc: only the pool's loop device is left" "$STATE/pool.img" \
		"$(losetup -n -O BACK-FILE -l 2>/dev/null | grep -F "$TEST_TMP/" | sort | tr -d ' ')"
	check_eq "$desc: only the pool is mounted" "$STATE/pool" "$(tmp_mounts)"
	check_eq "$desc: no build directory left in STATE/tmp" "" \
		"$(find "$STATE/tmp" -mindepth 1 2>/dev/null)"
	check_eq "$desc: every cached blob hashes to its name" "" "$(unverified_blobs)"
}

# Files under STATE/blobs/sha256 whose content does not hash to their name (temp files too).
unverified_blobs() {
	local f
	[ -d "$STATE/blobs" ] || return 0
	find "$STATE/blobs" -type f | while read -r f; do
		[ "$(basename "$f")" = "$(sha256sum "$f" | cut -d' ' -f1)" ] || printf '%s\n' "$f"
	done
}

# --- registry-side failures ------------------------------------------------------------------

expect_failed "$REGISTRY/imc/plain:no-such-tag" "unknown tag"
check_match "unknown tag: statusMessage carries the registry's reason" '[Mm]anifest unknown|MANIFEST_UNKNOWN' "$FAILED_MSG"

expect_failed "$REGISTRY/imc/no-such-repo:v1" "unknown repository"
check_match "unknown repository: statusMessage says why" '.' "$FAILED_MSG"

expect_failed "127.0.0.1:1/imc/x:v1" "unreachable registry"
check_match "unreachable registry: statusMessage names the registry" '127\.0\.0\.1:1' "$FAILED_MSG"

expect_failed "$REGISTRY/imc/plain:v1" "corrupted uncompressed layer"
check_match "corrupted layer: statusMessage says digest mismatch" '[Dd]igest mismatch' "$FAILED_MSG"
# The digest may be abbreviated, but to no less than 12 hex digits.
check_match "corrupted layer: statusMessage names the layer (${PLAIN_LAYER:0:19}…)" \
	"${PLAIN_LAYER:7:12}" "$FAILED_MSG"
store_is_clean "corrupted layer"
check_eq "corrupted layer: no blob of that digest kept in STATE/blobs" "" \
	"$(find "$STATE/blobs" -name "*${PLAIN_LAYER#sha256:}*" 2>/dev/null)"
CORRUPT_ID=$FAILED_ID

expect_failed "$REGISTRY/imc/bb:v1" "corrupted gzip layer"
check_match "corrupted gzip layer: statusMessage names a cause" '.' "$FAILED_MSG"
store_is_clean "corrupted gzip layer"
check_eq "corrupted gzip layer: no blob of that digest kept in STATE/blobs" "" \
	"$(find "$STATE/blobs" -name "*${BB_LAYER#sha256:}*" 2>/dev/null)"

# Layers whose uncompressed content is not what the config's rootfs.diff_ids says (umoci and
# containerd refuse such images), or a diff_id count that is not the layer count.
DIFF_LAYER=$(registry_manifest imc/diffid-wrong v1 | jq -r '.layers[0].digest')
expect_failed "$REGISTRY/imc/diffid-wrong:v1" "diff_id mismatch"
check_match "diff_id mismatch: statusMessage names the layer (index and digest)" \
	"layer 0 $DIFF_LAYER: diff_id mismatch" "$FAILED_MSG"
check_match "diff_id mismatch: statusMessage gives the config's diff_id" \
	"rootfs.diff_ids\\[0\\] says sha256:0{64}" "$FAILED_MSG"
store_is_clean "diff_id mismatch"
DIFF_LAYER=$(registry_manifest imc/diffid-missing v1 | jq -r '.layers[0].digest')
expect_failed "$REGISTRY/imc/diffid-missing:v1" "no diff_id for a layer"
check_match "no diff_id: statusMessage names the layer" \
	"layer 0 $DIFF_LAYER: no diff_id for it in the image config \\(rootfs.diff_ids has 0 for 1 layers\\)" \
	"$FAILED_MSG"
store_is_clean "no diff_id for a layer"
expect_failed "$REGISTRY/imc/diffid-extra:v1" "a diff_id too many"
check_match "a diff_id too many: statusMessage says which" \
	'rootfs.diff_ids\[1\]: names no layer \(rootfs.diff_ids has 2 for 1 layers\)' "$FAILED_MSG"
store_is_clean "a diff_id too many"

OUT=$(imcctl create "$REGISTRY/imc/plain:v1" --wait 2>"$TEST_TMP/imcctl.err") && RC=0 || RC=$?
check_eq "imcctl create --wait exits 1 on a Failed build" 1 "$RC"
check_match "imcctl prints the reason on stderr" '[Dd]igest mismatch' "$(cat "$TEST_TMP/imcctl.err")"
[ -z "$OUT" ] || note "imcctl stdout: $OUT"

http GET "$IMCD_URL/v1/imagecaches/$CORRUPT_ID"
check_eq "a Failed cache stays readable (GET 200)" 200 "$HTTP_STATUS"
check_eq "GET: Failed with its statusMessage" "Failed true" \
	"$(json_get "$HTTP_BODY" '"\(.status) \(.statusMessage | type == "string" and length > 0)"' 2>&1)"

# --- API input -------------------------------------------------------------------------------

# expect_error METHOD PATH BODY STATUS DESC: the answer has STATUS (an ERE, e.g. "400|413") and a
# JSON .error.code and .error.message.
expect_error() {
	local method=$1 path=$2 body=$3 want=$4 desc=$5
	if [ -n "$body" ]; then
		http "$method" "$IMCD_URL$path" "$body"
	else
		http "$method" "$IMCD_URL$path"
	fi
	check_match "$desc: HTTP $want" "^($want)\$" "$HTTP_STATUS"
	check_match "$desc: JSON .error.code and .error.message" '^[^ ]+ .+$' \
		"$(json_get "$HTTP_BODY" '"\(.error.code // "") \(.error.message // "")"' 2>/dev/null || true)"
}

GOOD_REF=$REGISTRY/imc/plain:v1
http GET "$IMCD_URL/v1/imagecaches"
N_BEFORE=$(jq '.items | length' <<<"$HTTP_BODY")
STATE_BEFORE=$(ls "$STATE/caches" 2>/dev/null | sort | tr '\n' ' ')
expect_error POST /v1/imagecaches '{"images":[{"ref":' 400 "truncated JSON"
expect_error POST /v1/imagecaches 'not json at all' 400 "not JSON"
expect_error POST /v1/imagecaches '[]' 400 "JSON array instead of an object"
expect_error POST /v1/imagecaches \
	"{\"name\":\"x\",\"images\":[{\"ref\":\"$GOOD_REF\"}],\"bogus\":1}" 400 "unknown top-level field"
expect_error POST /v1/imagecaches \
	"{\"name\":\"x\",\"images\":[{\"ref\":\"$GOOD_REF\",\"bogus\":1}]}" 400 "unknown field in an image"
expect_error POST /v1/imagecaches '{"name":"x","images":"notalist"}' 400 "images of the wrong type"
expect_error POST /v1/imagecaches '{"name":"x","images":[{"ref":42}]}' 400 "ref of the wrong type"
expect_error POST /v1/imagecaches '{"name":"x","images":[]}' 400 "no images"
expect_error POST /v1/imagecaches '{"name":"x"}' 400 "images missing"
expect_error POST /v1/imagecaches '{"name":"x","images":[{"ref":"UPPER/Case::bad"}]}' 400 \
	"unparsable image reference"
MANY=$(jq -cn --arg r "$GOOD_REF" '{name: "x", images: [range(0; 21) | {ref: $r}]}')
expect_error POST /v1/imagecaches "$MANY" 400 "21 images (the cap is 20)"
BIG=$(head -c 3000000 /dev/zero | tr '\0' 'a')
expect_error POST /v1/imagecaches "{\"name\":\"$BIG\",\"images\":[{\"ref\":\"$GOOD_REF\"}]}" \
	'400|413' "a 3 MB body"
unset BIG
expect_error GET /v1/imagecaches/imc-doesnotexist "" 404 "GET unknown id"
expect_error DELETE /v1/imagecaches/imc-doesnotexist "" 404 "DELETE unknown id"
expect_error GET /v1/imagecaches/..%2f..%2fetc%2fpasswd "" '400|404' "GET an id with a path in it"
expect_error GET /v1/nothing-here "" 404 "unknown path"
# mkbody JQ_EXPR: a create body around GOOD_REF (name "x") changed by a jq expression.
mkbody() { jq -cn --arg r "$GOOD_REF" "{name: \"x\", images: [{ref: \$r}]} | $1"; }
expect_error POST /v1/imagecaches "$(mkbody '.name = "../../etc"')" 400 "path traversal in the name"
expect_error POST /v1/imagecaches "$(mkbody '.name = "a/b"')" 400 "a slash in the name"
expect_error POST /v1/imagecaches "$(mkbody '.name = "café-☃"')" 400 "unicode in the name"
expect_error POST /v1/imagecaches "$(mkbody '.name = ("n" * 129)')" 400 "a name of 129 bytes"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].ref = "régistry.example/ïmage:v1"')" 400 \
	"unicode in an image reference"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].ref = "127.0.0.1:5000/../../etc:v1"')" 400 \
	"path traversal in an image reference"
expect_error POST /v1/imagecaches "$(mkbody '.images = [[.images[0]]]')" 400 "an image that is an array"
expect_error POST /v1/imagecaches "$(mkbody '.images = null')" 400 "images: null"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].platform = "linux"')" 400 "a platform without an architecture"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].platform = "linux/arm/v7/x"')" 400 "a platform of four parts"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].platform = "../../etc"')" 400 "path traversal in a platform"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].platform = "Linux/ARM64"')" 400 "a platform in capitals"
expect_error POST /v1/imagecaches "$(mkbody '.images[0].platform = {os: "linux"}')" 400 "a platform as an object"
expect_error POST /v1/imagecaches "$(mkbody '.images += [.images[0] | .platform = "linux/amd64"]')" 400 \
	"the same ref twice for the default platform"
expect_error POST /v1/imagecaches "$(mkbody '.size = -1')" 400 "a negative size"
expect_error POST /v1/imagecaches "$(mkbody '.size = 0')" 400 "size 0"
expect_error POST /v1/imagecaches "$(mkbody '.size = "1G"')" 400 "size as a string"
expect_error POST /v1/imagecaches "$(mkbody '.size = 1.5')" 400 "size as a fraction"
expect_error POST /v1/imagecaches "$(mkbody '.size = 99999999999999999999')" 400 "a size past 16 TiB"
expect_error POST /v1/imagecaches "$(mkbody '.retentionDays = -3')" 400 "negative retentionDays"
expect_error POST /v1/imagecaches "$(mkbody '.retentionDays = 36501')" 400 "retentionDays past 100 years"
expect_error POST /v1/imagecaches "$(mkbody '.retentionDays = true')" 400 "retentionDays as a boolean"
expect_error POST /v1/imagecaches "$(mkbody '.clientToken = "../tok"')" 400 "path traversal in clientToken"
expect_error POST /v1/imagecaches "$(mkbody '.clientToken = ("t" * 65)')" 400 "a clientToken of 65 bytes"
expect_error POST /v1/imagecaches "$(mkbody '.data = [{source: "https://example.com/f", path: "../x"}]')" \
	400 "path traversal in a data path"
expect_error POST /v1/imagecaches "$(mkbody '.data = [{source: "file:///etc/passwd", path: "p"}]')" \
	400 "a file:// data source"
expect_error POST /v1/imagecaches "$(mkbody '.data = [{source: "https://example.com/f", path: "p", sha256: "xyz"}]')" \
	400 "a malformed data sha256"
expect_error POST /v1/imagecaches "$(mkbody '.credentials = [{registry: "r.io", password: "p"}]')" \
	400 "a password without a username"
expect_error POST /v1/imagecaches "$(mkbody '.credentials = [{registry: "r.io", token: "t", extra: 1}]')" \
	400 "an unknown field in credentials"
expect_error POST /v1/imagecaches "{\"name\":\"x\",\"name\":\"y\",\"images\":[{\"ref\":\"$GOOD_REF\"}]}" \
	400 "a duplicate key"
expect_error POST /v1/imagecaches "{\"name\":\"x\\u0000y\",\"images\":[{\"ref\":\"$GOOD_REF\"}]}" \
	400 "a NUL byte in the name"
DEEP=$(printf '[%.0s' $(seq 1 5000))
expect_error POST /v1/imagecaches "$DEEP" 400 "JSON nested 5000 deep"
unset DEEP
expect_error POST /v1/imagecaches '' 400 "an empty body"
expect_error PUT /v1/imagecaches "$(mkbody .)" 405 "PUT on the collection"
expect_error POST /v1/imagecaches/imc-0123456789abcdef "$(mkbody .)" 405 "POST on a cache"
expect_error GET "/v1/imagecaches?status=Sleeping" "" 400 "list with an unknown status"
expect_error GET "/v1/imagecaches?limit=-5" "" 400 "list with a negative limit"
expect_error GET "/v1/imagecaches?image=$GOOD_REF&match=fuzzy" "" 400 "list with match=fuzzy"
expect_error GET "/v1/imagecaches?image=$GOOD_REF&platform=linux" "" 400 "list with a bad platform"
expect_error GET "/v1/imagecaches?platform=linux/arm64" "" 400 "list with a platform but no image"
expect_error GET "/v1/imagecaches?pageToken=zz" "" 400 "list with a forged page token"
expect_error GET "/v1/imagecaches?name=%2e%2e%2f" "" 400 "list by a name with a path in it"
expect_error DELETE "/v1/imagecaches/imc-0123456789abcdef?force=maybe" "" 400 "DELETE with force=maybe"
expect_error POST /v1/imagecaches/imc-0123456789abcdef/attachments '{"id":"../../x"}' 400 \
	"an attachment id with a path in it"
expect_error POST /v1/imagecaches/imc-0123456789abcdef/attachments '{"host":"a b"}' 400 \
	"an attachment host with a space"
expect_error POST /v1/imagecaches/imc-0123456789abcdef/attachments '{"id":"att-0123456789abcdef"}' 404 \
	"attach to a cache that does not exist"
expect_error DELETE /v1/imagecaches/imc-0123456789abcdef/attachments/..%2f.. "" '400|404' \
	"detach an attachment id with a path in it"

http GET "$IMCD_URL/v1/imagecaches"
check_eq "after all that, the list still answers 200" 200 "$HTTP_STATUS"
check_eq "no cache was created by the refused requests" 0 \
	"$(jq -r '[.items[] | select(.name == "x")] | length' <<<"$HTTP_BODY" 2>&1)"
check_eq "the refused requests changed nothing: as many caches as before" "$N_BEFORE" \
	"$(jq '.items | length' <<<"$HTTP_BODY")"
check_eq "... and the same metadata files" "$STATE_BEFORE" \
	"$(ls "$STATE/caches" 2>/dev/null | sort | tr '\n' ' ')"

# --- bytes that are not UTF-8, through a raw socket ---------------------------------------------

RAWHTTP="python3 $(dirname "$0")/../lib/rawhttp.py"
HOSTPORT=${IMCD_URL#http://}
# raw_expect REQUEST_LINE_TARGET STATUS MESSAGE_ERE DESC: GET TARGET as it is; the answer must
# have STATUS and a JSON error whose message matches MESSAGE_ERE.
raw_expect() {
	local target=$1 want=$2 msg=$3 desc=$4 out status body
	out=$($RAWHTTP request "$HOSTPORT" \
		"GET $target HTTP/1.1\\r\\nHost: test\\r\\nConnection: close\\r\\n\\r\\n" 2>&1) || true
	status=${out%% *} body=${out#* }
	check_eq "$desc: HTTP $want" "$want" "$status"
	check_match "$desc: the JSON error names it" "$msg" \
		"$(json_get "$body" '"\(.error.code) \(.error.message)"' 2>/dev/null || echo "$out")"
}
raw_expect '/v1/imagecaches/%ff' 400 '^InvalidArgument path "/v1/imagecaches/\\xff": not valid UTF-8' \
	"GET /v1/imagecaches/%ff"
raw_expect '/v1/imagecaches/imc-%c3%28' 400 '^InvalidArgument path .*not valid UTF-8' \
	"GET /v1/imagecaches/imc-%c3%28 (a broken two-byte sequence)"
raw_expect '/v1/chunks/%ff' 400 '^InvalidArgument path "/v1/chunks/\\xff": not valid UTF-8' \
	"GET /v1/chunks/%ff"
raw_expect '/v1/imagecaches?name=%ff' 400 \
	'^InvalidArgument query parameter "name": value not valid UTF-8' "list with name=%ff"
raw_expect '/v1/imagecaches?limit=5&image=%ed%a0%80' 400 \
	'^InvalidArgument query parameter "image": value not valid UTF-8' \
	"list with image= an encoded surrogate"
raw_expect '/v1/imagecaches?%fe%ff=1' 400 \
	'^InvalidArgument query parameter "\\xfe\\xff": name not valid UTF-8' \
	"list with a parameter name of bytes that are not UTF-8"
raw_expect '/v1/imagecaches/imc-0123456789abcdef?force=%c0%ae' 400 \
	'^InvalidArgument query parameter "force"' "GET of a cache with force=%c0%ae (an overlong '.')"
http GET "$IMCD_URL/healthz"
check_eq "imcd still answers /healthz after them" 200 "$HTTP_STATUS"

# --- a chunked body that passes the cap and never ends -------------------------------------------

# 64 KiB chunks, up to 16 MiB if no answer comes: the 413 must come once the body passes 1 MiB,
# while the client is still sending (how much it handed its kernel by then depends on socket
# buffers, so it is only noted).
OUT=$($RAWHTTP chunked "$HOSTPORT" /v1/imagecaches 65536 $((16 << 20)) 2>&1) || true
check_eq "a chunked body past 1 MiB that never ends: 413 PayloadTooLarge before it ends" \
	"413 PayloadTooLarge" \
	"$(head -n1 <<<"$OUT" | cut -d' ' -f1) $(head -n1 <<<"$OUT" | cut -d' ' -f2- |
		jq -r .error.code 2>/dev/null)"
note "chunked overflow: $(tr '\n' ' ' <<<"$OUT")"
http GET "$IMCD_URL/healthz"
check_eq "imcd still answers /healthz after it" 200 "$HTTP_STATUS"

# --- the log: a request's bytes cannot forge a line --------------------------------------------

# The path decodes to a newline followed by what looks like an error line of imcd's own, then an
# escape sequence that would move a terminal's cursor up.
FORGED='2026-01-01T00:00:00Z error: forged-line'
http GET "$IMCD_URL/v1/nothing%0d%0a${FORGED// /%20}%1b%5b1A"
check_eq "a path with %0d%0a in it: 404" 404 "$HTTP_STATUS"
# The line is written once the answer is queued: give it a moment to land.
for _ in $(seq 50); do grep -qF forged-line "$IMCD_LOG" && break; sleep 0.1; done
check_eq "no line of imcd's log starts with the forged text" "" \
	"$(grep -n "^$FORGED" "$IMCD_LOG" || true)"
check_match "the request is logged on one line, its CR, LF and ESC escaped" \
	'GET /v1/nothing\\r\\n2026-01-01T00:00:00Z error: forged-line\\x1b\[1A: 404' \
	"$(grep -F 'forged-line' "$IMCD_LOG" || true)"
check_eq "imcd's log holds no raw control character but the line ends" "" \
	"$(LC_ALL=C grep -n $'[\x01-\x08\x0b-\x1f\x7f]' "$IMCD_LOG" | head -3 || true)"

# --- attach of a cache that does not exist ---------------------------------------------------

MNT=$TEST_TMP/mnt
mkdir -p "$MNT"
defer imc_detach_quiet "$MNT"
OUT=$(imc_attach attach imc-doesnotexist "$MNT" 2>&1) && RC=0 || RC=$?
check_match "attach of an unknown cache id fails" '^[1-9]' "$RC"
check_match "attach of an unknown cache id says why" '.' "$OUT"
note "imc-attach said: $OUT"
check_fails "attach of an unknown cache id: nothing mounted there" findmnt -rn --mountpoint "$MNT"
check_eq "attach of an unknown cache id: the mount dir is still empty" "" "$(find "$MNT" -mindepth 1)"
OUT=$(imc_attach list 2>&1) || true
check_eq "attach of an unknown cache id: imc-attach list is empty" 0 "$(json_get "$OUT" length 2>&1)"
store_is_clean "attach of an unknown cache id"

# --- clean up --------------------------------------------------------------------------------

http GET "$IMCD_URL/v1/imagecaches"
for id in $(jq -r '.items[].id' <<<"$HTTP_BODY" 2>/dev/null); do
	http DELETE "$IMCD_URL/v1/imagecaches/$id"
	check_eq "DELETE Failed cache $id answers 200" 200 "$HTTP_STATUS"
done

check_clean_shutdown

done_testing
