#!/bin/bash
# Registry authentication and registry faults, against real registries:
#   - docker-registry behind htpasswd basic auth: no credentials, a wrong password and the right
#     one (given in the request), and the password never in imcd's log or the API;
#   - docker-registry behind a token server (tests/lib/tokenserver.py, RS256 JWTs the registry
#     verifies): the same three, a token given as the credential, an identity token from a
#     docker config.json (imcd --auth-file), and the refresh of an expired token on a 401;
#   - a proxy (tests/lib/faultproxy.py) that drops a blob download half way (the build resumes
#     with a Range request), answers 503 once (retried after its Retry-After) and corrupts a
#     blob (digest mismatch: the build fails and keeps nothing); a hostile layer fails the build
#     and writes nothing outside the volume;
#   - HTTPS on a non-loopback address: a certificate from the extra CA file (--ca-file) is
#     trusted, another one is not, and plain HTTP is refused to a registry not named insecure.
# The test runs in a network namespace of its own, with lo up and a documentation address
# (192.0.2.10) on it, so the non-loopback address is there on every machine and nothing of the
# host's network is touched.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
if [ -z "${IMC_AUTH_NETNS:-}" ]; then
	[ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null &&
		exec unshare -n env IMC_AUTH_NETNS=1 bash "$0" "$@"
elif ! { ip link set lo up && ip addr add 192.0.2.10/32 dev lo; }; then
	echo "# cannot set up the test's network namespace" >&2
	exit 1
fi
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo htpasswd openssl python3 losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

USER1=alice
PASS1='s3cret-Pa55word'
WRONG='wrong-Pa55word'
IDENT='identity-refresh-token-0123456789'

LAYOUT=$TEST_TMP/layout
mkimage_busybox "$LAYOUT" bb >/dev/null || bail "busybox image builds"
mkimage_plain "$LAYOUT" p1 2048 >/dev/null || bail "plain image 1 builds"
mkimage_plain "$LAYOUT" p2 2048 >/dev/null || bail "plain image 2 builds"
mkimage_plain "$LAYOUT" p3 2048 >/dev/null || bail "plain image 3 builds"
mkimage_plain "$LAYOUT" p4 512 >/dev/null || bail "plain image 4 builds"
ok "test images build"

# create_with_creds REF CREDS_JSON: POST a cache of REF with credentials; prints the id.
create_with_creds() {
	local body
	body=$(jq -cn --arg ref "$1" --argjson creds "$2" \
		'{name: "auth", images: [{ref: $ref}], credentials: $creds}')
	http POST "$IMCD_URL/v1/imagecaches" "$body"
	if [ "$HTTP_STATUS" != 202 ]; then
		echo "POST /v1/imagecaches: $HTTP_STATUS $HTTP_BODY" >&2
		return 1
	fi
	json_get "$HTTP_BODY" '.id'
}

# build DESC WANT REF [CREDS_JSON]: a cache of REF must end WANT (Ready or Failed).  Sets
# BUILD_JSON and BUILD_MSG.
build() {
	local desc=$1 want=$2 ref=$3 creds=${4:-[]} id status
	BUILD_JSON=
	BUILD_MSG=
	if ! id=$(create_with_creds "$ref" "$creds" 2>"$TEST_TMP/create.err"); then
		not_ok "$desc: POST is accepted (202)" "$(cat "$TEST_TMP/create.err")"
		return 0
	fi
	BUILD_JSON=$(cache_wait "$id" 180) || BUILD_JSON=
	status=$(json_get "$BUILD_JSON" '.status // empty' 2>/dev/null || true)
	BUILD_MSG=$(json_get "$BUILD_JSON" '.statusMessage // empty' 2>/dev/null || true)
	if [ "$status" = "$want" ]; then
		ok "$desc: the cache ends $want"
	else
		not_ok "$desc: the cache ends $want" "got: $BUILD_JSON" "$(imcd_log_tail 10)"
	fi
	[ -z "$BUILD_MSG" ] || note "statusMessage: $BUILD_MSG"
	# Failed caches go at once: only Ready ones hold store space.
	[ "$status" = Ready ] || http DELETE "$IMCD_URL/v1/imagecaches/$id"
}

creds() { # REGISTRY USER PASSWORD
	jq -cn --arg r "$1" --arg u "$2" --arg p "$3" '[{registry: $r, username: $u, password: $p}]'
}

# --- htpasswd (Basic) --------------------------------------------------------------------------

IMC_REGISTRY_AUTH=htpasswd:$USER1:$PASS1 registry_start ||
	bail "htpasswd registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}")"
BASIC=$REGISTRY
ok "registry with htpasswd auth at $BASIC"
check_eq "it refuses anonymous requests (401)" 401 \
	"$(curl -s -o /dev/null -w '%{http_code}' "http://$BASIC/v2/")"
check "the busybox image pushes with the password" \
	mkimage_push "$LAYOUT" bb auth/bb:v1 --dest-creds "$USER1:$PASS1"

# TLS: a certificate for this machine's address that imcd is told to trust, and one it is not.
ADDR=$(registry_host_addr) || ADDR=
if [ -n "$ADDR" ]; then
	no_proxy="$no_proxy,$ADDR"
	export no_proxy NO_PROXY="$no_proxy"
	mkdir -p "$TEST_TMP/tls"
	for c in trusted other; do
		openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=imcache-$c" \
			-addext "subjectAltName=IP:$ADDR" -keyout "$TEST_TMP/tls/$c.key" \
			-out "$TEST_TMP/tls/$c.crt" >/dev/null 2>&1 || bail "openssl makes a $c certificate"
	done
fi
CA_ARGS=()
[ -n "$ADDR" ] && CA_ARGS=(--ca-file "$TEST_TMP/tls/trusted.crt")

# The docker config.json: an identity token for the token registry (filled in below) and a
# wrong entry for the htpasswd one that the request's credentials must override.
AUTH_FILE=$TEST_TMP/docker-config.json
printf '{"auths":{}}' >"$AUTH_FILE"
STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE" --auth-file "$AUTH_FILE" "${CA_ARGS[@]}"

build "basic, no credentials" Failed "$BASIC/auth/bb:v1"
check_match "basic, no credentials: the message asks for a username and password" \
	"requires a username and password" "$BUILD_MSG"
build "basic, wrong password" Failed "$BASIC/auth/bb:v1" "$(creds "$BASIC" "$USER1" "$WRONG")"
check_match "basic, wrong password: the message says the credentials were refused" \
	"credentials were refused" "$BUILD_MSG"
check_fails "basic, wrong password: the message does not hold the password" \
	grep -qF -- "$WRONG" <<<"$BUILD_JSON"
build "basic, right password" Ready "$BASIC/auth/bb:v1" "$(creds "$BASIC" "$USER1" "$PASS1")"
check_eq "basic: the image config is recorded" "PATH=/bin IMC_TEST=1" \
	"$(json_get "$BUILD_JSON" '.images[0].config.env | join(" ")' 2>&1)"
build "basic, credentials for another registry only" Failed "$BASIC/auth/bb:v1" \
	"$(creds "other.example:5000" "$USER1" "$PASS1")"

# --- token server (Bearer) ---------------------------------------------------------------------

export TOKEN_USERS="$USER1:$PASS1" TOKEN_IDENTITY=$IDENT
token_start 300 1 || bail "token server starts"
ok "token server at $TOKEN_SERVER (its first token is born expired)"
IMC_REGISTRY_AUTH=token registry_start ||
	bail "token registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}")"
TOKREG=$REGISTRY
ok "registry with token auth at $TOKREG"
check "the busybox image pushes through the token flow" \
	mkimage_push "$LAYOUT" bb tok/bb:v1 --dest-creds "$USER1:$PASS1"
check "a second image pushes" mkimage_push "$LAYOUT" p1 tok/p1:v1 --dest-creds "$USER1:$PASS1"

build "token, no credentials" Failed "$TOKREG/tok/bb:v1"
check_match "token, no credentials: anonymous access refused" "anonymous access refused" \
	"$BUILD_MSG"
build "token, wrong password" Failed "$TOKREG/tok/bb:v1" "$(creds "$TOKREG" "$USER1" "$WRONG")"
check_match "token, wrong password: the credentials were refused by the token service" \
	"token from http://$TOKEN_SERVER/token.*credentials were refused" "$BUILD_MSG"
check_fails "token, wrong password: the message does not hold the password" \
	grep -qF -- "$WRONG" <<<"$BUILD_JSON"
tokens() { grep -c "^GET $USER1 .* 200\$" "$TOKEN_LOG" || true; }
N0=$(tokens)
build "token, right password" Ready "$TOKREG/tok/bb:v1" "$(creds "$TOKREG" "$USER1" "$PASS1")"
N1=$(tokens)
check_match "token: imcd got a token for $USER1 with scope repository:tok/bb:pull" \
	"^GET $USER1 repository:tok/bb:pull 200" "$(grep "^GET $USER1 repository:tok/bb" "$TOKEN_LOG")"
check_eq "token: the registry refused the expired first token and imcd fetched another" 2 \
	"$((N1 - N0))"
build "token, another repository" Ready "$TOKREG/tok/p1:v1" "$(creds "$TOKREG" "$USER1" "$PASS1")"
N2=$(tokens)
check_eq "token: another scope, one more token" 1 "$((N2 - N1))"
build "token, the first repository again" Ready "$TOKREG/tok/bb:v1" \
	"$(creds "$TOKREG" "$USER1" "$PASS1")"
check_eq "token: the cached token is used again (no token request)" "$N2" "$(tokens)"

# A registry token given as the credential: sent as is.
TOK=$(curl -fsS -u "$USER1:$PASS1" \
	"http://$TOKEN_SERVER/token?service=$TOKEN_SERVICE&scope=repository:tok/bb:pull" |
	jq -r .token)
build "token given as the credential" Ready "$TOKREG/tok/bb:v1" \
	"$(jq -cn --arg r "$TOKREG" --arg t "$TOK" '[{registry: $r, token: $t}]')"

jq -n --arg r "$TOKREG" --arg i "$IDENT" --arg b "$BASIC" \
	'{auths: {($r): {identitytoken: $i}, ($b): {auth: ("x:y" | @base64)}}}' >"$AUTH_FILE"
build "identity token from --auth-file (OAuth2 refresh grant)" Ready "$TOKREG/tok/bb:v1"
check_match "the token server saw the refresh grant" "^POST identity repository:tok/bb:pull 200" \
	"$(grep '^POST identity' "$TOKEN_LOG")"
build "the request's credentials win over --auth-file's" Ready "$BASIC/auth/bb:v1" \
	"$(creds "$BASIC" "$USER1" "$PASS1")"
build "--auth-file's wrong entry alone" Failed "$BASIC/auth/bb:v1"

# --- faults: a dropped connection, a 503, a corrupt blob -----------------------------------------

unset IMC_REGISTRY_AUTH
registry_start_or_bail
PLAIN=$REGISTRY
for t in p1 p2 p3; do
	registry_push_raw "$LAYOUT" "$t" "fault/$t:v1" || bail "image $t pushes"
done
registry_push_raw "$LAYOUT" p4 fault/p4a:v1 || bail "image p4 pushes"
registry_push_raw "$LAYOUT" p4 fault/p4b:v1 || bail "image p4 pushes again"
layer_of() { # TAG: the layer digest of image TAG of the layout
	local m
	m=$(jq -r --arg t "$1" \
		'.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
		"$LAYOUT/index.json")
	jq -r '.layers[0].digest' "$LAYOUT/blobs/sha256/${m#sha256:}"
}
# shellcheck disable=SC2317 # called through check
blob_ok() { # DIGEST: imcd's blob cache holds it, and it hashes to its name
	local f=$STATE/blobs/sha256/${1#sha256:}
	[ -f "$f" ] && [ "sha256:$(sha256sum "$f" | cut -d' ' -f1)" = "$1" ]
}

faultproxy_start "$PLAIN" cut:700000 || bail "fault proxy (cut) starts"
build "a blob download dropped after 700000 bytes" Ready "$FAULTPROXY/fault/p1:v1"
L1=$(layer_of p1)
check_match "the proxy cut the layer's first download" "GET .*/blobs/$L1 - cut-after-700000" \
	"$(cat "$FAULTPROXY_LOG")"
check_match "imcd resumed it with a Range request from a byte it had" \
	"GET .*/blobs/$L1 bytes=[1-9][0-9]*- forward-206" "$(cat "$FAULTPROXY_LOG")"
check "the resumed blob is complete and verified" blob_ok "$L1"

faultproxy_start "$PLAIN" status:503 || bail "fault proxy (503) starts"
build "a blob answered 503 (Retry-After: 1) once" Ready "$FAULTPROXY/fault/p2:v1"
L2=$(layer_of p2)
check_eq "the blob was asked for twice: 503, then 200" "status-503 forward-200" \
	"$(grep "/blobs/$L2" "$FAULTPROXY_LOG" | awk '{print $4}' | xargs)"
check "the retried blob is verified" blob_ok "$L2"

# Two images of one cache share their layer: it is downloaded once.
BODY=$(jq -cn --arg a "$FAULTPROXY/fault/p4a:v1" --arg b "$FAULTPROXY/fault/p4b:v1" \
	'{name: "shared", images: [{ref: $a}, {ref: $b}]}')
http POST "$IMCD_URL/v1/imagecaches" "$BODY"
ID=$(json_get "$HTTP_BODY" '.id // empty' 2>/dev/null || true)
JSON=$(cache_wait "$ID" 120) || JSON=
check_eq "a cache of two images that share a layer is Ready" Ready \
	"$(json_get "$JSON" '.status // empty' 2>&1)"
L4=$(layer_of p4)
check_eq "the shared layer was downloaded once (after one 503)" "status-503 forward-200" \
	"$(grep "/blobs/$L4" "$FAULTPROXY_LOG" | awk '{print $4}' | xargs)"

faultproxy_start "$PLAIN" corrupt || bail "fault proxy (corrupt) starts"
build "a blob with a flipped byte" Failed "$FAULTPROXY/fault/p3:v1"
L3=$(layer_of p3)
check_match "the message says digest mismatch and names the layer" \
	"layer $L3.*[Dd]igest mismatch" "$BUILD_MSG"
check_fails "no blob of that digest is kept" blob_ok "$L3"
check_eq "no temp file is left in the blob cache" "" \
	"$(find "$STATE/blobs" -name '.tmp-*' 2>/dev/null)"

# A hostile layer ("../" out of the root, then a block device): the build fails naming the
# entry, the file it aimed at never appears, and no volume is left in the store.
ESCAPE=/tmp/imc-escape-$$-$RANDOM
# shellcheck disable=SC2317 # called through check
mk_hostile() {
	local tar=$TEST_TMP/hostile.tar line d size
	python3 - "$tar" "../../../../../../../..$ESCAPE" <<'EOF'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for name in ("etc/ok", sys.argv[2]):
        ti = tarfile.TarInfo(name)
        ti.size = 6
        t.addfile(ti, io.BytesIO(b"pwned\n"))
    ti = tarfile.TarInfo("dev/sda")
    ti.type, ti.devmajor, ti.devminor = tarfile.BLKTYPE, 8, 0
    t.addfile(ti)
EOF
	read -r d size < <(_mk_blob "$LAYOUT" "$tar")
	line="$(jq -cn --arg mt "$MT_LAYER_TAR" --arg d "$d" --argjson s "$size" \
		'{mediaType: $mt, digest: $d, size: $s}') $d"
	mk_tag "$LAYOUT" hostile "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$line")"
	registry_push_raw "$LAYOUT" hostile fault/hostile:v1
}
check "an image with a hostile layer pushes" mk_hostile
build "a hostile layer" Failed "$PLAIN/fault/hostile:v1"
check_match "the message names the entry and what is wrong" \
	'entry "[./]*'"$ESCAPE"'": path climbs out of the root' "$BUILD_MSG"
check_fails "nothing was written outside the volume ($ESCAPE)" test -e "$ESCAPE"
check_eq "no volume is left in the store" "" "$(find "$STATE/pool/volumes" -type f 2>/dev/null)"

# --- HTTPS ---------------------------------------------------------------------------------------

if [ -n "$ADDR" ]; then
	IMC_REGISTRY_ADDR=$ADDR IMC_REGISTRY_TLS=$TEST_TMP/tls/trusted.crt:$TEST_TMP/tls/trusted.key \
		registry_start || bail "HTTPS registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}")"
	TLS_OK=$REGISTRY
	check "push to the HTTPS registry at $TLS_OK" \
		mkimage_push "$LAYOUT" bb tls/bb:v1 --dest-tls-verify=false
	build "HTTPS, certificate from the extra CA file" Ready "$TLS_OK/tls/bb:v1"
	IMC_REGISTRY_ADDR=$ADDR IMC_REGISTRY_TLS=$TEST_TMP/tls/other.crt:$TEST_TMP/tls/other.key \
		registry_start || bail "second HTTPS registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}")"
	check "push to the HTTPS registry with an untrusted certificate at $REGISTRY" \
		mkimage_push "$LAYOUT" bb tls/bb:v1 --dest-tls-verify=false
	build "HTTPS, an untrusted certificate" Failed "$REGISTRY/tls/bb:v1"
	check_match "HTTPS, an untrusted certificate: the message says so" \
		"[Cc]ertificate|SSL" "$BUILD_MSG"
	IMC_REGISTRY_ADDR=$ADDR registry_start || bail "plain HTTP registry on $ADDR starts"
	check "push to the plain HTTP registry at $REGISTRY" \
		mkimage_push "$LAYOUT" bb plain/bb:v1 --dest-tls-verify=false
	build "plain HTTP to a registry not named insecure" Failed "$REGISTRY/plain/bb:v1"
else
	skip "HTTPS with an extra CA file" "no non-loopback IPv4 address on this machine"
fi

# --- secrets -------------------------------------------------------------------------------------

check_fails "imcd's log never holds a password" grep -qF -e "$PASS1" -e "$WRONG" "$IMCD_LOG"
check_fails "imcd's log never holds the identity token" grep -qF -- "$IDENT" "$IMCD_LOG"
check_fails "the state dir never holds a password" grep -rqF -e "$PASS1" -e "$WRONG" \
	--exclude-dir=pool "$STATE"
http GET "$IMCD_URL/v1/imagecaches"
check_fails "GET /v1/imagecaches never shows a password" grep -qF -- "$PASS1" <<<"$HTTP_BODY"

check_clean_shutdown
done_testing
