#!/bin/bash
# imcd over HTTPS (--tls-cert/--tls-key, or "tls" in the config file) with a certificate from a
# CA made here with openssl: curl --cacert reaches it, with bearer tokens checked as over HTTP;
# clients that do not trust the CA, speak plain HTTP or offer only TLS 1.1 are turned away; a
# cache is built and deleted over HTTPS; bad key pairs are refused at start naming the file.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs openssl
need_programs imcd imc-attach

PKI=$TEST_TMP/pki
mkdir -p "$PKI"
# shellcheck disable=SC2317 # called through check
make_pki() {
	cd "$PKI" &&
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
			-subj /CN=imc-test-ca -keyout ca.key -out ca.crt &&
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
			-subj /CN=localhost -keyout srv.key -out srv.csr &&
		printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >srv.ext &&
		openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
			-extfile srv.ext -out srv.crt &&
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
			-subj /CN=other -keyout other.key -out other.crt &&
		chmod 0600 srv.key other.key && printf 'not a certificate\n' >junk.crt
}
check "openssl makes a CA, a server certificate for 127.0.0.1 and another key pair" make_pki

TOKEN=tls-tenant-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
CFG=$TEST_TMP/imcd.json
(umask 077 && jq -n --arg t "$TOKEN" '{tokens: [{token: $t, tenant: "t1"}]}' >"$CFG")

# --- key pairs refused at start ------------------------------------------------------------------

# refused DESC NEEDLE EXIT ARG...: imcd with these TLS arguments exits EXIT saying NEEDLE.
refused() {
	local desc=$1 needle=$2 want=$3 out rc=0
	shift 3
	out=$(timeout 30 "$IMC_BIN/imcd" --listen 127.0.0.1:0 --state-dir "$TEST_TMP/state-bad" \
		"$@" 2>&1) || rc=$?
	check_eq "$desc: imcd exits $want" "$want" "$rc"
	check_match "$desc: imcd says why" "$needle" "$out"
}
refused "a key of another certificate" 'other.key: does not belong to the certificate .*srv.crt' 1 \
	--tls-cert "$PKI/srv.crt" --tls-key "$PKI/other.key"
refused "a certificate that is not PEM" 'junk.crt: not a PEM certificate' 1 \
	--tls-cert "$PKI/junk.crt" --tls-key "$PKI/srv.key"
cp "$PKI/srv.key" "$PKI/open.key"
chmod 0644 "$PKI/open.key"
refused "a key readable by others" 'open.key: readable by others' 1 \
	--tls-cert "$PKI/srv.crt" --tls-key "$PKI/open.key"
refused "a missing key file" 'missing.key.*No such file' 1 \
	--tls-cert "$PKI/srv.crt" --tls-key "$PKI/missing.key"
refused "--tls-cert without --tls-key" 'go together' 2 --tls-cert "$PKI/srv.crt"
check_fails "no store was set up by the refused starts" test -e "$TEST_TMP/state-bad/pool.img"

# --- imcd on HTTPS ---------------------------------------------------------------------------------

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_bb() { mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1; }
check "busybox image builds and pushes" push_bb
BB=$REGISTRY/imc/bb:v1

defer imc_teardown_quiet
_imcd_launch "$TEST_TMP/state" 127.0.0.1:0 --config "$CFG" --tls-cert "$PKI/srv.crt" \
	--tls-key "$PKI/srv.key" || bail "imcd starts with TLS" "$(imcd_log_tail 30)"
check_match "the ready file says https://127.0.0.1:PORT" '^https://127\.0\.0\.1:[0-9]+$' "$IMCD_URL"

# [BODY=JSON] [AS=TOKEN] tls METHOD PATH [CURL_ARG...]: HTTPS with the CA and the token (AS, else
# TOKEN); sets HTTP_STATUS and HTTP_BODY.
tls() {
	local method=$1 path=$2 out
	shift 2
	out=$(mktemp "$TEST_TMP/.tls.XXXXXX")
	local -a args=(-sS --noproxy '*' --cacert "$PKI/ca.crt" -o "$out" -w '%{http_code}'
		-X "$method" --max-time 30 -H "Authorization: Bearer ${AS:-$TOKEN}")
	if [ -n "${BODY+set}" ]; then
		printf '%s' "$BODY" >"$out.req"
		args+=(-H 'Content-Type: application/json' --data-binary "@$out.req")
	fi
	HTTP_STATUS=$(curl "${args[@]}" "$@" "$IMCD_URL$path" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	rm -f "$out" "$out.req"
}

tls GET /healthz
check_eq "curl --cacert GET /healthz over HTTPS: 200" 200 "$HTTP_STATUS"
tls GET /v1/imagecaches
check_eq "GET /v1/imagecaches with the token over HTTPS: 200" 200 "$HTTP_STATUS"
AS=wrong-token-0123456789abcdef tls GET /v1/imagecaches
check_eq "a wrong token over HTTPS: 401" 401 "$HTTP_STATUS"
PORT=${IMCD_URL##*:}
STATUS=$(curl -sS --noproxy '*' --max-time 10 --cacert "$PKI/ca.crt" -o /dev/null \
	-w '%{http_code}' --resolve "localhost:$PORT:127.0.0.1" "https://localhost:$PORT/healthz" \
	2>/dev/null) || true
check_eq "the certificate's DNS name works too" 200 "$STATUS"

RC=0
curl -sS --noproxy '*' --max-time 10 -o /dev/null "$IMCD_URL/healthz" 2>/dev/null || RC=$?
check_eq "curl without the CA: certificate problem (exit 60)" 60 "$RC"
STATUS=$(curl -sS --noproxy '*' --max-time 10 -o /dev/null -w '%{http_code}' \
	"http://127.0.0.1:$PORT/healthz" 2>/dev/null) || true
check_match "plain HTTP to the HTTPS port gets no answer" '^(000|400)$' "${STATUS:-000}"
RC=0
curl -sS --noproxy '*' --max-time 10 --cacert "$PKI/ca.crt" --tlsv1.0 --tls-max 1.1 \
	-o /dev/null "$IMCD_URL/healthz" 2>/dev/null || RC=$?
check_fails "TLS 1.0/1.1 only: refused (curl exit $RC)" test "$RC" -eq 0
tls GET /healthz --tlsv1.2 --tls-max 1.2
check_eq "TLS 1.2: 200" 200 "$HTTP_STATUS"
tls GET /healthz --tlsv1.3
check_eq "TLS 1.3: 200" 200 "$HTTP_STATUS"

# A chunked body past the cap that never ends gets its 413 over TLS too (written through the
# connection's TLS session, in the middle of the body).
OUT=$(python3 "$(dirname "$0")/../lib/rawhttp.py" chunked --ca "$PKI/ca.crt" \
	--header "Authorization: Bearer $TOKEN" "${IMCD_URL#https://}" /v1/imagecaches 65536 \
	$((16 << 20)) 2>&1) || true
check_eq "over TLS, a chunked body past 1 MiB that never ends: 413 PayloadTooLarge" \
	"413 PayloadTooLarge" \
	"$(head -n1 <<<"$OUT" | cut -d' ' -f1) $(head -n1 <<<"$OUT" | cut -d' ' -f2- |
		jq -r .error.code 2>/dev/null)"
tls GET /healthz
check_eq "... and imcd still answers over TLS" 200 "$HTTP_STATUS"

BODY=$(jq -cn --arg ref "$BB" '{name: "over-tls", images: [{ref: $ref}]}') tls POST /v1/imagecaches
check_eq "POST /v1/imagecaches over HTTPS: 202" 202 "$HTTP_STATUS"
ID=$(jq -r '.id // empty' <<<"$HTTP_BODY" 2>/dev/null || true)
STATUS=
for _ in $(seq 600); do
	tls GET "/v1/imagecaches/$ID"
	STATUS=$(jq -r '.status // empty' <<<"$HTTP_BODY" 2>/dev/null || true)
	[ "$STATUS" = Creating ] || break
	sleep 0.2
done
check_eq "the cache built over HTTPS is Ready" Ready "$STATUS"
tls DELETE "/v1/imagecaches/$ID"
check_eq "DELETE over HTTPS: 200" 200 "$HTTP_STATUS"
check_clean_shutdown

# --- TLS from the config file -----------------------------------------------------------------------

CFG2=$TEST_TMP/imcd-tls.json
(umask 077 && jq -n --arg t "$TOKEN" --arg c "$PKI/srv.crt" --arg k "$PKI/srv.key" \
	'{tokens: [{token: $t, tenant: "t1"}], tls: {cert: $c, key: $k}}' >"$CFG2")
_imcd_launch "$TEST_TMP/state" 127.0.0.1:0 --config "$CFG2" ||
	bail "imcd starts with tls in its config" "$(imcd_log_tail 30)"
check_match "tls in the config: the ready file says https://" '^https://' "$IMCD_URL"
tls GET /v1/imagecaches
check_eq "tls in the config: GET /v1/imagecaches over HTTPS: 200" 200 "$HTTP_STATUS"
if grep -qF -- "$TOKEN" "$IMCD_LOG"; then
	not_ok "imcd's log does not hold the token"
else
	ok "imcd's log does not hold the token"
fi
check_clean_shutdown

done_testing
