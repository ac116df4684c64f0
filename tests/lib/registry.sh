# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on a random
# loopback port, filesystem storage in TEST_TMP, deletes enabled.  Needs common.sh.
#
#   registry_start                 exports REGISTRY (127.0.0.1:PORT), REGISTRY_PID, REGISTRY_ROOT
#   registry_blob_path DIGEST      the file the registry stores DIGEST's content in
#   registry_corrupt_blob DIGEST   flips bytes in that file in place (same size)
#
# Authentication (set before registry_start; each start may use another):
#   IMC_REGISTRY_AUTH=htpasswd:USER:PASSWORD   basic auth against a bcrypt htpasswd file
#   IMC_REGISTRY_AUTH=token                    bearer tokens from the token server of token_start
#                                          (tests/lib/tokenserver.py), which must run first
# TLS (set before registry_start): IMC_REGISTRY_TLS=CERT:KEY serves HTTPS on IMC_REGISTRY_ADDR
# (an address of this machine; default 127.0.0.1, which imcache always reaches over plain HTTP,
# so a test of HTTPS needs a non-loopback one: registry_host_addr prints one).
# IMC_REGISTRY_ACCESSLOG=1 (set before registry_start): every request is logged to REGISTRY_LOG.
# Several registries may run at once: each is stopped at exit by its own pid.

REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}

_registry_config() {
	local root=$1 port=$2
	cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: $([ -n "${IMC_REGISTRY_ACCESSLOG:-}" ] && echo false || echo true)
storage:
  filesystem:
    rootdirectory: $root
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: ${IMC_REGISTRY_ADDR:-127.0.0.1}:$port
  secret: imcache-test-only
EOF
	if [ -n "${IMC_REGISTRY_TLS:-}" ]; then
		cat <<EOF
  tls:
    certificate: ${IMC_REGISTRY_TLS%%:*}
    key: ${IMC_REGISTRY_TLS#*:}
EOF
	fi
	_registry_auth_config "$(dirname "$root")"
}

# registry_host_addr: an IPv4 address of this machine that is not loopback (fails if none).
registry_host_addr() {
	local a
	a=$(ip -4 -o addr show scope global 2>/dev/null | awk '{sub(/\/.*/, "", $4); print $4; exit}')
	[ -n "$a" ] && printf '%s\n' "$a"
}

# The auth section for IMC_REGISTRY_AUTH (nothing when unset).
_registry_auth_config() {
	local dir=$1 user pass
	case "${IMC_REGISTRY_AUTH:-}" in
	"") ;;
	htpasswd:*:*)
		user=${IMC_REGISTRY_AUTH#htpasswd:}
		pass=${user#*:}
		user=${user%%:*}
		[ -s "$dir/htpasswd" ] || htpasswd -Bbn "$user" "$pass" >"$dir/htpasswd"
		cat <<EOF
auth:
  htpasswd:
    realm: imcache-test
    path: $dir/htpasswd
EOF
		;;
	token)
		cat <<EOF
auth:
  token:
    realm: http://$TOKEN_SERVER/token
    service: $TOKEN_SERVICE
    issuer: $TOKEN_ISSUER
    rootcertbundle: $TOKEN_CERT
EOF
		;;
	*)
		echo "IMC_REGISTRY_AUTH=$IMC_REGISTRY_AUTH: want htpasswd:USER:PASSWORD or token" >&2
		return 1
		;;
	esac
}

# Deferred: stop a server we started, whatever its exit status.
_stop_quiet() {
	stop_pid "$1" || true
}

_registry_ready() {
	[ "$1" = 200 ] || { [ -n "${IMC_REGISTRY_AUTH:-}" ] && [ "$1" = 401 ]; }
}

_port_in_use() {
	ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# registry_start: start a registry, wait until GET /v2/ answers 200.  Stopped by PID at exit.
registry_start() {
	local dir attempt port pid deadline code addr=${IMC_REGISTRY_ADDR:-127.0.0.1} scheme=http
	[ -z "${IMC_REGISTRY_TLS:-}" ] || scheme=https
	[ -x "$REGISTRY_BIN" ] || {
		echo "registry_start: $REGISTRY_BIN not found (apt-get install docker-registry)" >&2
		return 1
	}
	dir=$(mktemp -d "$TEST_TMP/registry.XXXXXX")
	mkdir -p "$dir/storage"
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		_port_in_use "$port" && continue
		_registry_config "$dir/storage" "$port" >"$dir/config.yml" || return 1
		# docker-registry takes REGISTRY_* variables as config overrides: none of ours.
		# shellcheck disable=SC2046 # one "-u NAME" pair per variable
		env $(compgen -e | grep '^REGISTRY_' | sed 's/^/-u /') \
			"$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/log" 2>&1 &
		pid=$!
		deadline=$(($(date +%s) + 20))
		code=000
		while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
			code=$(curl -sk --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 \
				"$scheme://$addr:$port/v2/" 2>/dev/null) || code=000
			# 401: it answers, and wants credentials (IMC_REGISTRY_AUTH).
			_registry_ready "$code" && break
			sleep 0.05
		done
		if _registry_ready "$code"; then
			REGISTRY=$addr:$port
			REGISTRY_PID=$pid
			REGISTRY_ROOT=$dir/storage
			REGISTRY_LOG=$dir/log
			export REGISTRY REGISTRY_PID REGISTRY_ROOT REGISTRY_LOG
			defer _stop_quiet "$pid"
			return 0
		fi
		# Port clash (someone bound it between our check and the registry's bind) or a slow
		# start: stop this one and retry on another port.
		stop_pid "$pid" 5 || true
		if ! grep -q 'address already in use' "$dir/log"; then
			echo "registry_start: attempt $attempt on port $port failed:" >&2
			tail -n 5 "$dir/log" >&2
		fi
	done
	echo "registry_start: could not start $REGISTRY_BIN" >&2
	return 1
}

registry_stop() {
	[ -n "${REGISTRY_PID:-}" ] || return 0
	stop_pid "$REGISTRY_PID" || true
	REGISTRY_PID=
}

registry_blob_path() {
	local hex=${1#sha256:}
	printf '%s/docker/registry/v2/blobs/sha256/%s/%s/data\n' "$REGISTRY_ROOT" "${hex:0:2}" "$hex"
}

# registry_corrupt_blob DIGEST [OFFSET]: XOR 16 bytes of the stored blob with 0xff, starting at
# OFFSET (default: the middle of the blob).  The size stays the same, so the registry keeps
# serving it, and the content no longer matches DIGEST.
registry_corrupt_blob() {
	local digest=$1 file size off i b
	file=$(registry_blob_path "$digest")
	[ -f "$file" ] || {
		echo "registry_corrupt_blob: $file does not exist" >&2
		return 1
	}
	size=$(stat -c %s "$file")
	off=${2:-$((size / 2))}
	[ $((off + 16)) -le "$size" ] || {
		echo "registry_corrupt_blob: blob $digest is too small ($size bytes) for offset $off" >&2
		return 1
	}
	for ((i = off; i < off + 16; i++)); do
		b=$(od -An -tu1 -j "$i" -N1 "$file" | tr -d ' ')
		# shellcheck disable=SC2059 # the format is the octal escape of the new byte
		printf "\\$(printf '%03o' $((b ^ 255)))" |
			dd of="$file" bs=1 seek="$i" count=1 conv=notrunc status=none
	done
	[ "$(stat -c %s "$file")" -eq "$size" ] || return 1
	[ "sha256:$(sha256sum "$file" | cut -d' ' -f1)" != "$digest" ]
}

# registry_manifest REPO REF: the manifest JSON the registry serves (OCI or Docker types).
registry_manifest() {
	curl -fsS --noproxy '*' \
		-H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		-H 'Accept: application/vnd.oci.image.index.v1+json' \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		-H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
		"http://$REGISTRY/v2/$1/manifests/$2"
}

# registry_put_blob REPO FILE: a monolithic upload through the distribution API (POST, then PUT
# with ?digest=).
registry_put_blob() {
	local repo=$1 file=$2 digest loc sep
	digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
	loc=$(curl -fsS --noproxy '*' -X POST -D - -o /dev/null \
		"http://$REGISTRY/v2/$repo/blobs/uploads/" | tr -d '\r' |
		sed -n 's/^[Ll]ocation: *//p')
	[ -n "$loc" ] || return 1
	case "$loc" in
	http*) ;;
	*) loc=http://$REGISTRY$loc ;;
	esac
	case "$loc" in
	*\?*) sep='&' ;;
	*) sep='?' ;;
	esac
	curl -fsS --noproxy '*' -X PUT -H 'Content-Type: application/octet-stream' \
		--data-binary "@$file" -o /dev/null "$loc${sep}digest=$digest"
}

# registry_push_raw DIR TAG REPO:RTAG: push one image manifest of an OCI layout byte for byte
# (skopeo would recompress uncompressed layers on the way).
registry_push_raw() {
	local dir=$1 tag=$2 repo=${3%:*} rtag=${3##*:} mdesc mdigest mfile d
	mdesc=$(jq -c --arg t "$tag" \
		'.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)' \
		"$dir/index.json")
	[ -n "$mdesc" ] || return 1
	mdigest=$(jq -r .digest <<<"$mdesc")
	mfile=$dir/blobs/sha256/${mdigest#sha256:}
	for d in $(jq -r '.config.digest, .layers[].digest' "$mfile"); do
		registry_put_blob "$repo" "$dir/blobs/sha256/${d#sha256:}"
	done
	curl -fsS --noproxy '*' -X PUT -o /dev/null \
		-H "Content-Type: $(jq -r .mediaType <<<"$mdesc")" \
		--data-binary "@$mfile" "http://$REGISTRY/v2/$repo/manifests/$rtag"
}

# _pyhelper_start WHAT DIR SCRIPT ARG...: python3 tests/lib/SCRIPT ARG... --port-file DIR/port in
# the background (its output in DIR/stderr), stopped by pid at exit; returns once it has written
# its port to DIR/port, or fails saying that WHAT did not start.
_pyhelper_start() {
	local what=$1 dir=$2 script=$3 pid
	shift 3
	python3 "$IMC_ROOT/tests/lib/$script" "$@" --port-file "$dir/port" >"$dir/stderr" 2>&1 &
	pid=$!
	defer _stop_quiet "$pid"
	wait_for_file "$dir/port" 20 "$pid" || {
		echo "$what did not start:" >&2
		cat "$dir/stderr" >&2
		return 1
	}
}

# token_start [LIFETIME_S] [EXPIRE_FIRST]: the test token server (tests/lib/tokenserver.py) on a
# random loopback port with a fresh RSA key and self-signed certificate, granting what is asked
# to the users of TOKEN_USERS ("user:password" lines; export it first) and to the holder of
# TOKEN_IDENTITY (an OAuth2 refresh token), with tokens that expire after LIFETIME_S (default
# 300); the first EXPIRE_FIRST pull-only tokens (default 0) are born expired.  Exports
# TOKEN_SERVER (127.0.0.1:PORT), TOKEN_SERVICE, TOKEN_ISSUER, TOKEN_CERT, TOKEN_LOG (one line per
# request: "METHOD USER SCOPE STATUS").  Stopped by pid at exit.
token_start() {
	local lifetime=${1:-300} expire_first=${2:-0} dir
	dir=$(mktemp -d "$TEST_TMP/token.XXXXXX")
	openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj /CN=imcache-test-token \
		-keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1 || {
		echo "token_start: openssl could not make a key and certificate" >&2
		return 1
	}
	printf '%s\n' "${TOKEN_USERS:-}" >"$dir/users"
	TOKEN_SERVICE=imcache-test-registry
	TOKEN_ISSUER=imcache-test-issuer
	TOKEN_CERT=$dir/cert.pem
	TOKEN_LOG=$dir/requests.log
	: >"$TOKEN_LOG"
	_pyhelper_start "token_start: the token server" "$dir" tokenserver.py --key "$dir/key.pem" \
		--cert "$dir/cert.pem" --users "$dir/users" --identity-token "${TOKEN_IDENTITY:-}" \
		--lifetime "$lifetime" --expire-first "$expire_first" --service "$TOKEN_SERVICE" \
		--issuer "$TOKEN_ISSUER" --log "$TOKEN_LOG" || return 1
	TOKEN_SERVER=127.0.0.1:$(cat "$dir/port")
	export TOKEN_SERVER TOKEN_SERVICE TOKEN_ISSUER TOKEN_CERT TOKEN_LOG
}

# faultproxy_start UPSTREAM MODE: a proxy (tests/lib/faultproxy.py) in front of the registry at
# UPSTREAM that breaks blob downloads for real, once per blob unless said otherwise:
#   cut:N     send the headers and N bytes of the body, then drop the connection
#   status:C  answer HTTP C (503, 429) with Retry-After: 1
#   corrupt   flip one byte in the middle of every blob body over 64 KiB (layers, not configs)
# Sets FAULTPROXY (127.0.0.1:PORT) and FAULTPROXY_LOG ("METHOD PATH RANGE ACTION" lines).  Not
# in a command substitution: the deferred stop must be this shell's.
faultproxy_start() {
	local upstream=$1 mode=$2 dir
	dir=$(mktemp -d "$TEST_TMP/proxy.XXXXXX")
	FAULTPROXY_LOG=$dir/requests.log
	: >"$FAULTPROXY_LOG"
	_pyhelper_start "faultproxy_start: the proxy" "$dir" faultproxy.py --upstream "$upstream" \
		--mode "$mode" --log "$FAULTPROXY_LOG" || return 1
	FAULTPROXY=127.0.0.1:$(cat "$dir/port")
	export FAULTPROXY FAULTPROXY_LOG
}

# stallregistry_start [TRICKLE_BYTES TRICKLE_INTERVAL_S]: a registry (tests/lib/stallregistry.py)
# that misbehaves by repository: stall/... never answers, trickle/... sends its layer's body
# TRICKLE_BYTES (default 8) every TRICKLE_INTERVAL_S (default 3) seconds, anything else answers
# at once; every repository has an image of its own.  Sets STALLREG (127.0.0.1:PORT) and
# STALLREG_LOG ("METHOD PATH ACTION" lines).  Not in a command substitution.
stallregistry_start() {
	local dir
	dir=$(mktemp -d "$TEST_TMP/stallreg.XXXXXX")
	STALLREG_LOG=$dir/requests.log
	: >"$STALLREG_LOG"
	_pyhelper_start "stallregistry_start: the registry" "$dir" stallregistry.py \
		--log "$STALLREG_LOG" --trickle-bytes "${1:-8}" --trickle-interval "${2:-3}" || return 1
	STALLREG=127.0.0.1:$(cat "$dir/port")
	export STALLREG STALLREG_LOG
}
