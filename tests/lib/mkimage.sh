# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# Build OCI image layouts by hand, offline: layers are GNU tar archives of directories prepared
# here (numeric owners, sorted names, fixed mtimes), gzip'd or not; config, manifest and index
# JSON are written with jq.  Needs common.sh (and registry.sh for mkimage_push).
#
# Low level (each prints one line):
#   mk_layout DIR                         an empty layout
#   mk_layer DIR SRCDIR [gzip|none]       "DESCRIPTOR_JSON DIFF_ID" of a new layer blob
#   mk_image DIR ARCH CONFIG_JSON LAYER_LINE...   manifest descriptor (with platform)
#   mk_index DIR DESCRIPTOR...            index descriptor
#   mk_tag DIR TAG DESCRIPTOR             names DESCRIPTOR TAG in DIR/index.json
# High level (build DIR with image TAG):
#   mkimage_busybox_rootfs ROOTFS, mkimage_busybox, mkimage_multilayer, mkimage_index,
#   mkimage_umoci, mkimage_plain (one uncompressed layer, for fault injection)
#   mkimage_push DIR TAG REPO:TAG [--all]

MK_MTIME=${MK_MTIME:-1700000000}
MK_CREATED=${MK_CREATED:-2023-11-14T22:13:20Z}
MK_BUSYBOX=${MK_BUSYBOX:-/bin/busybox}
MK_BUSYBOX_APPLETS=(sh echo cat ls test stat readlink head wc id)
MT_LAYER_GZIP=application/vnd.oci.image.layer.v1.tar+gzip
MT_LAYER_TAR=application/vnd.oci.image.layer.v1.tar
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_INDEX=application/vnd.oci.image.index.v1+json

_sha256() {
	sha256sum "$1" | cut -d' ' -f1
}

# _mk_blob DIR FILE [HEX]: move FILE into DIR's blobs; prints "sha256:HEX SIZE".  HEX: FILE's
# sha256 when the caller has it already (an uncompressed layer: its diff_id).
_mk_blob() {
	local dir=$1 file=$2 hex=${3:-} size
	[ -n "$hex" ] || hex=$(_sha256 "$file")
	size=$(stat -c %s "$file")
	mv -f "$file" "$dir/blobs/sha256/$hex"
	printf 'sha256:%s %s\n' "$hex" "$size"
}

# _mk_json_blob DIR MEDIATYPE JSON [EXTRA_JQ_ARGS]: store JSON (compacted) as a blob; prints its
# descriptor.
_mk_json_blob() {
	local dir=$1 mt=$2 json=$3 tmp digest size
	tmp=$(mktemp "$dir/.json.XXXXXX")
	printf '%s' "$json" | jq -cj . >"$tmp"
	read -r digest size < <(_mk_blob "$dir" "$tmp")
	jq -cn --arg mt "$mt" --arg d "$digest" --argjson s "$size" \
		'{mediaType: $mt, digest: $d, size: $s}'
}

mk_layout() {
	local dir=$1
	mkdir -p "$dir/blobs/sha256"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
	printf '{"schemaVersion":2,"mediaType":"%s","manifests":[]}' "$MT_INDEX" >"$dir/index.json"
}

# mk_random_bytes N: N random (incompressible) bytes on stdout; openssl rand when installed (fast,
# but it takes an int: fed in 1 GiB pieces), else /dev/urandom.
mk_random_bytes() {
	if command -v openssl >/dev/null 2>&1; then
		local left=$1 n
		while [ "$left" -gt 0 ]; do
			n=$((left > 1073741824 ? 1073741824 : left))
			openssl rand "$n"
			left=$((left - n))
		done
	else
		head -c "$1" /dev/urandom
	fi
}

# mk_tar SRCDIR OUT: a deterministic tar (OUT "-" is stdout) of SRCDIR's contents (names without a "./" prefix).
mk_tar() {
	local src=$1 out=$2
	(cd "$src" && find . -mindepth 1 -maxdepth 1 -printf '%P\0' | LC_ALL=C sort -z) |
		tar --create --file "$out" --directory "$src" --null --files-from - \
			--numeric-owner --sort=name --mtime="@$MK_MTIME" --format=posix \
			--pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'
}

# MK_GZIP_LEVEL: 1 (fast) to 9; pigz is used when installed.
MK_GZIP_LEVEL=${MK_GZIP_LEVEL:-6}
_gzip() { # stdin to stdout
	if command -v pigz >/dev/null 2>&1; then
		pigz -n "-$MK_GZIP_LEVEL" -c
	else
		gzip -n "-$MK_GZIP_LEVEL" -c
	fi
}

mk_layer() {
	local dir=$1 src=$2 comp=${3:-gzip} tmp diffid digest size mt pid
	tmp=$(mktemp "$dir/.layer.XXXXXX")
	if [ "$comp" = gzip ]; then
		# One pass: the diff_id (hash of the uncompressed tar) is taken on the way to gzip.
		rm -f "$tmp.fifo"
		mkfifo "$tmp.fifo"
		sha256sum <"$tmp.fifo" >"$tmp.diffid" &
		pid=$!
		mk_tar "$src" - | tee "$tmp.fifo" | _gzip >"$tmp"
		wait "$pid"
		diffid=sha256:$(cut -d' ' -f1 "$tmp.diffid")
		rm -f "$tmp.fifo" "$tmp.diffid"
		mt=$MT_LAYER_GZIP
	else
		mk_tar "$src" "$tmp"
		diffid=sha256:$(_sha256 "$tmp")
		mt=$MT_LAYER_TAR
	fi
	read -r digest size < <(_mk_blob "$dir" "$tmp" "$([ "$comp" = gzip ] || echo "${diffid#sha256:}")")
	printf '%s %s\n' "$(jq -cn --arg mt "$mt" --arg d "$digest" --argjson s "$size" \
		'{mediaType: $mt, digest: $d, size: $s}')" "$diffid"
}

# mk_image DIR ARCH CONFIG_JSON LAYER_LINE...: CONFIG_JSON is the image config's "config" object
# (Env, Cmd, WorkingDir...); LAYER_LINEs are mk_layer's output, bottom layer first.
# MK_DIFF_IDS_JQ (a jq filter, default "."): applied to the config's rootfs.diff_ids, to make a
# broken image (".[1:]" drops one, ". + [.[0]]" adds one, ".[0] = \"sha256:…\"" changes one).
mk_image() {
	local dir=$1 arch=$2 cfg=$3 line desc diffid layers='[]' diffids='[]' config cdesc mdesc
	shift 3
	for line in "$@"; do
		desc=${line% *}
		diffid=${line##* }
		layers=$(jq -c --argjson d "$desc" '. + [$d]' <<<"$layers")
		diffids=$(jq -c --arg d "$diffid" '. + [$d]' <<<"$diffids")
	done
	diffids=$(jq -c "${MK_DIFF_IDS_JQ:-.}" <<<"$diffids") || return 1
	config=$(jq -cn --arg arch "$arch" --arg created "$MK_CREATED" --argjson cfg "$cfg" \
		--argjson diffids "$diffids" \
		'{created: $created, architecture: $arch, os: "linux", config: $cfg,
		  rootfs: {type: "layers", diff_ids: $diffids},
		  history: [$diffids[] | {created: $created, created_by: "tests/lib/mkimage.sh"}]}')
	cdesc=$(_mk_json_blob "$dir" "$MT_CONFIG" "$config")
	mdesc=$(_mk_json_blob "$dir" "$MT_MANIFEST" "$(jq -cn --arg mt "$MT_MANIFEST" \
		--argjson c "$cdesc" --argjson l "$layers" \
		'{schemaVersion: 2, mediaType: $mt, config: $c, layers: $l}')")
	jq -c --arg arch "$arch" '. + {platform: {architecture: $arch, os: "linux"}}' <<<"$mdesc"
}

mk_index() {
	local dir=$1 d list='[]'
	shift
	for d in "$@"; do
		list=$(jq -c --argjson d "$d" '. + [$d]' <<<"$list")
	done
	_mk_json_blob "$dir" "$MT_INDEX" "$(jq -cn --arg mt "$MT_INDEX" --argjson m "$list" \
		'{schemaVersion: 2, mediaType: $mt, manifests: $m}')"
}

mk_tag() {
	local dir=$1 tag=$2 desc=$3 tmp
	tmp=$(mktemp "$dir/.index.XXXXXX")
	jq -c --arg tag "$tag" --argjson d "$desc" \
		'.manifests = ([.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] != $tag)]
		  + [$d + {annotations: {"org.opencontainers.image.ref.name": $tag}}])' \
		"$dir/index.json" >"$tmp"
	mv -f "$tmp" "$dir/index.json"
}

# --- images ----------------------------------------------------------------------------------

MK_DEFAULT_CONFIG='{"Env":["PATH=/bin","IMC_TEST=1"],"Cmd":["/bin/sh"],"WorkingDir":"/"}'

# mkimage_busybox_rootfs ROOTFS: a minimal root filesystem around a static busybox.
mkimage_busybox_rootfs() {
	local root=$1 a
	# A container rootfs has no libc: busybox must be the static build.
	if [ ! -x "$MK_BUSYBOX" ] || ldd "$MK_BUSYBOX" >/dev/null 2>&1; then
		echo "mkimage: $MK_BUSYBOX is missing or not static (install busybox-static)" >&2
		return 1
	fi
	mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev}
	install -m 0755 "$MK_BUSYBOX" "$root/bin/busybox"
	for a in "${MK_BUSYBOX_APPLETS[@]}"; do
		ln -sfn busybox "$root/bin/$a"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
	chmod 1777 "$root/tmp"
	chmod 0700 "$root/root"
}

# mkimage_busybox DIR TAG: one gzip layer with the busybox rootfs.
mkimage_busybox() {
	local dir=$1 tag=$2 work l1 m
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || mk_layout "$dir"
	mkimage_busybox_rootfs "$work/l1"
	l1=$(mk_layer "$dir" "$work/l1" gzip)
	m=$(mk_image "$dir" amd64 "$MK_DEFAULT_CONFIG" "$l1")
	mk_tag "$dir" "$tag" "$m"
	rm -rf "$work"
}

# mkimage_multilayer DIR TAG: two layers exercising whiteouts, an opaque dir, a hardlink,
# symlinks, setuid and owners.  Layer 1 (gzip) is busybox + /data/{a,b}.txt, /opq/old{1,2},
# /keep/x; layer 2 (gzip) deletes /data/b.txt, makes /opq opaque with /opq/new, adds /data/hard
# (hardlink to /data/a.txt), /data/rel -> a.txt, /data/abs -> /data/a.txt and /data/suid (4755,
# uid/gid 1000).
mkimage_multilayer() {
	local dir=$1 tag=$2 work l1 l2 m
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || mk_layout "$dir"

	mkimage_busybox_rootfs "$work/l1"
	mkdir -p "$work/l1/data" "$work/l1/opq" "$work/l1/keep"
	printf 'content-a\n' >"$work/l1/data/a.txt"
	printf 'content-b\n' >"$work/l1/data/b.txt"
	printf 'old1\n' >"$work/l1/opq/old1"
	printf 'old2\n' >"$work/l1/opq/old2"
	printf 'keep\n' >"$work/l1/keep/x"

	mkdir -p "$work/l2/data" "$work/l2/opq"
	: >"$work/l2/data/.wh.b.txt"
	: >"$work/l2/opq/.wh..wh..opq"
	printf 'new\n' >"$work/l2/opq/new"
	printf 'content-a\n' >"$work/l2/data/a.txt"
	ln "$work/l2/data/a.txt" "$work/l2/data/hard"
	ln -s a.txt "$work/l2/data/rel"
	ln -s /data/a.txt "$work/l2/data/abs"
	printf '#!/bin/sh\necho suid\n' >"$work/l2/data/suid"
	chown 1000:1000 "$work/l2/data/suid"
	chmod 4755 "$work/l2/data/suid"

	l1=$(mk_layer "$dir" "$work/l1" gzip)
	l2=$(mk_layer "$dir" "$work/l2" gzip)
	m=$(mk_image "$dir" amd64 \
		'{"Env":["PATH=/bin","IMC_TEST=multilayer"],"Cmd":["/bin/sh","-c","cat /data/a.txt"],"WorkingDir":"/data"}' \
		"$l1" "$l2")
	mk_tag "$dir" "$tag" "$m"
	rm -rf "$work"
}

# mkimage_index DIR TAG: an OCI index with linux/amd64 (busybox + /platform "amd64") and
# linux/arm64 (/platform "arm64" only).  Push it with --all.
mkimage_index() {
	local dir=$1 tag=$2 work la lb ma mb idx
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || mk_layout "$dir"
	mkimage_busybox_rootfs "$work/amd64"
	printf 'amd64\n' >"$work/amd64/platform"
	mkdir -p "$work/arm64"
	printf 'arm64\n' >"$work/arm64/platform"
	la=$(mk_layer "$dir" "$work/amd64" gzip)
	lb=$(mk_layer "$dir" "$work/arm64" gzip)
	ma=$(mk_image "$dir" amd64 "$MK_DEFAULT_CONFIG" "$la")
	mb=$(mk_image "$dir" arm64 "$MK_DEFAULT_CONFIG" "$lb")
	idx=$(mk_index "$dir" "$ma" "$mb")
	mk_tag "$dir" "$tag" "$idx"
	rm -rf "$work"
}

# mkimage_plain DIR TAG [KIB]: one UNCOMPRESSED layer holding /blob (KIB KiB of random data,
# default 256) on top of nothing else.  Flipping bytes in the middle of that layer changes only
# file content, so the tar stays valid and only a digest check can notice.
mkimage_plain() {
	local dir=$1 tag=$2 kib=${3:-256} work l1 m
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || mk_layout "$dir"
	mkdir -p "$work/l1"
	head -c "$((kib * 1024))" /dev/urandom >"$work/l1/blob"
	l1=$(mk_layer "$dir" "$work/l1" none)
	m=$(mk_image "$dir" amd64 "$MK_DEFAULT_CONFIG" "$l1")
	mk_tag "$dir" "$tag" "$m"
	rm -rf "$work"
}

# mkimage_umoci DIR TAG: the busybox rootfs built the umoci way (init, new, unpack, repack,
# config).
mkimage_umoci() {
	local dir=$1 tag=$2 work
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || umoci init --layout "$dir"
	umoci new --image "$dir:$tag"
	umoci unpack --image "$dir:$tag" "$work/bundle" >/dev/null
	mkimage_busybox_rootfs "$work/bundle/rootfs"
	printf 'built with umoci\n' >"$work/bundle/rootfs/etc/motd"
	umoci repack --image "$dir:$tag" "$work/bundle" >/dev/null
	umoci config --image "$dir:$tag" --os linux --architecture amd64 \
		--config.env PATH=/bin --config.workingdir / --config.cmd /bin/sh \
		--config.user 0:0 --author imcache-tests
	umoci gc --layout "$dir"
	rm -rf "$work"
}

# mkimage_push DIR TAG REPO:TAG [--all]: push with skopeo to $REGISTRY.
mkimage_push() {
	local dir=$1 tag=$2 dest=$3
	shift 3
	skopeo copy --quiet --dest-tls-verify=false "$@" "oci:$dir:$tag" "docker://$REGISTRY/$dest"
}
