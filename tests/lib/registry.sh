# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on a random
# loopback port, filesystem storage in TEST_TMP, deletes enabled.  Needs common.sh.
#
#   registry_start                 exports REGISTRY (127.0.0.1:PORT), REGISTRY_PID, REGISTRY_ROOT
#   registry_blob_path DIGEST      the file the registry stores DIGEST's content in
#   registry_corrupt_blob DIGEST   flips bytes in that file in place (same size)

REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}

_registry_config() {
	local root=$1 port=$2
	cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $root
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: imcache-test-only
EOF
}

_port_in_use() {
	ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# registry_start: start a registry, wait until GET /v2/ answers 200.  Stopped by PID at exit.
registry_start() {
	local dir attempt port pid deadline code
	[ -x "$REGISTRY_BIN" ] || {
		echo "registry_start: $REGISTRY_BIN not found (apt-get install docker-registry)" >&2
		return 1
	}
	dir=$(mktemp -d "$TEST_TMP/registry.XXXXXX")
	mkdir -p "$dir/storage"
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		_port_in_use "$port" && continue
		_registry_config "$dir/storage" "$port" >"$dir/config.yml"
		"$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/log" 2>&1 &
		pid=$!
		deadline=$(($(date +%s) + 20))
		code=000
		while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
			code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 \
				"http://127.0.0.1:$port/v2/" 2>/dev/null) || code=000
			[ "$code" = 200 ] && break
			sleep 0.05
		done
		if [ "$code" = 200 ]; then
			REGISTRY=127.0.0.1:$port
			REGISTRY_PID=$pid
			REGISTRY_ROOT=$dir/storage
			REGISTRY_LOG=$dir/log
			export REGISTRY REGISTRY_PID REGISTRY_ROOT REGISTRY_LOG
			defer registry_stop
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
