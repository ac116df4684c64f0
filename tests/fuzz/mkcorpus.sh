#!/bin/bash
# Writes the seed inputs of the fuzz targets under DIR/<target>/ (DIR/ref, DIR/manifest,
# DIR/request, DIR/layer, DIR/runtime, DIR/query, DIR/index, DIR/auth, DIR/net, DIR/platform,
# DIR/grpc, DIR/snapmsg, DIR/mountinfo, DIR/data, DIR/trace, DIR/sources).  The layers are
# small tar, tar.gz and tar.zst files made with GNU tar: plain trees, whiteouts, hard links,
# symlinks, device nodes, sparse files, long (pax) names, and the hostile kinds: "../" and
# absolute names, symlinks and hard links pointing out of the root followed by entries through
# them.  Deterministic: same tar, same bytes.
#   usage: mkcorpus.sh DIR
set -euo pipefail

out=${1:?usage: mkcorpus.sh DIR}
mkdir -p "$out"/{ref,manifest,request,layer,runtime,query,index,auth,net,platform,grpc,snapmsg,mountinfo,data,trace,sources}
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/imc-mkcorpus.XXXXXX")
trap 'rm -rf "$work"' EXIT

seed() { # seed TARGET NAME CONTENT
	printf '%s' "$3" >"$out/$1/$2"
}

# ---- the agent's source order and deadlines (fuzz_sources) ---------------------------------
seed sources order server,registry
seed sources reversed registry,server
seed sources one registry
seed sources twice server,server
seed sources deadline 60
seed sources max 86400
seed sources zero 0

# ---- data source URLs (fuzz_data) -----------------------------------------------------------
seed data https https://models.example.com/llm/model.safetensors
seed data escaped 'https://h.example/a%20b/we%2Fird%00name.bin?x=1#f'
seed data loop http://127.0.0.1:8000/m.bin
seed data user https://u:p@h.example/m.bin

# ---- image references ----------------------------------------------------------------------
digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
seed ref plain busybox
seed ref tag busybox:1.36
seed ref hub docker.io/library/alpine:3.19
seed ref user user/repo:v1.0-rc_1
seed ref local localhost/a__b/c-d.e:tag
seed ref port 127.0.0.1:5000/x/y:latest
seed ref digest "quay.io/org/img@$digest"
seed ref tagdigest "registry.example.com:443/org/img:v2@$digest"
seed ref ipv6 "[::1]:5000/img:tag"
seed ref upper Registry/img

# ---- manifests and indexes -----------------------------------------------------------------
desc() { # desc MEDIATYPE SIZE
	printf '{"mediaType":"%s","digest":"%s","size":%s}' "$1" "$digest" "$2"
}
oci_cfg=$(desc application/vnd.oci.image.config.v1+json 1469)
oci_l1=$(desc application/vnd.oci.image.layer.v1.tar+gzip 2479)
oci_l2=$(desc application/vnd.oci.image.layer.v1.tar+zstd 100)
seed manifest oci "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":$oci_cfg,\"layers\":[$oci_l1,$oci_l2],\"annotations\":{\"a\":\"b\"}}"
seed manifest oci-notype "{\"schemaVersion\":2,\"config\":$oci_cfg,\"layers\":[]}"
seed manifest docker "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\",\"config\":$(desc application/vnd.docker.container.image.v1+json 7023),\"layers\":[$(desc application/vnd.docker.image.rootfs.diff.tar.gzip 32654)]}"
plat() { # plat OS ARCH [VARIANT]
	if [ $# -gt 2 ]; then
		printf '"platform":{"os":"%s","architecture":"%s","variant":"%s"}' "$1" "$2" "$3"
	else
		printf '"platform":{"os":"%s","architecture":"%s"}' "$1" "$2"
	fi
}
entry() { # entry MEDIATYPE PLATFORM...
	local mt=$1
	shift
	printf '{"mediaType":"%s","digest":"%s","size":528,%s}' "$mt" "$digest" "$(plat "$@")"
}
om=application/vnd.oci.image.manifest.v1+json
dm=application/vnd.docker.distribution.manifest.v2+json
seed manifest oci-index "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$(entry $om linux arm v7),$(entry $om linux arm64 v8),$(entry $om linux amd64)]}"
seed manifest docker-list "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.list.v2+json\",\"manifests\":[$(entry $dm linux aarch64),$(entry $dm linux x86_64),$(entry $dm windows amd64)]}"
seed manifest index-notype "{\"schemaVersion\":2,\"manifests\":[$(entry $om linux arm64)]}"

# ---- imc-runtime: config.json and command lines (NUL-separated) ------------------------------
seed runtime plain '{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["sh"]}}'
seed runtime cache '{"root":{"path":"rootfs"},"annotations":{"imcache.io/cache-id":"imc-0123456789abcdef","imcache.io/image":"1"}}'
seed runtime cache-abs '{"root":{"path":"/run/pods/p1"},"annotations":{"imcache.io/cache-id":"imc-0123456789abcdef"}}'
printf '%s\0' --root /run/runc --log /tmp/l --log-format json create --bundle /b -f c.json --pid-file p ctr1 >"$out/runtime/argv-create"
printf '%s\0' --debug run -d --bundle=/b ctr2 >"$out/runtime/argv-run"
printf '%s\0' delete -f ctr3 >"$out/runtime/argv-delete"

# ---- list queries: key/value pairs (NUL-separated), a raw query string, a page token ----------
# The token of "1700000000:imc-0123456789abcdef" (hex of the position).
token=$(printf '%s' 1700000000:imc-0123456789abcdef | od -An -tx1 | tr -d ' \n')
printf '%s\0' status Ready limit 10 >"$out/query/pairs-status"
printf '%s\0' image "quay.io/org/img@$digest" match exact name my-cache_1.0 >"$out/query/pairs-image"
printf '%s\0' pageToken "$token" limit 1000 status Failed >"$out/query/pairs-token"
printf '%s\0' limit >"$out/query/pairs-novalue"
seed query raw "status=Creating&name=a.b&image=busybox%3Alatest&match=exact&limit=5&pageToken=$token"
seed query raw-plus "image=docker.io/library/alpine:3.19&name=x+y&limit=0100"
seed query token "$token"
printf '%s\0' chainId "$digest" status Ready >"$out/query/pairs-chain-id"
seed query raw-manifest-digest "manifestDigest=$digest&chainId=sha256:ABC&limit=3"

# ---- API requests and cache metadata -------------------------------------------------------
seed request create '{"images":[{"ref":"busybox:latest"}],"name":"my-cache_1.0"}'
seed request create-digest "{\"images\":[{\"ref\":\"127.0.0.1:5000/a/b@$digest\"}]}"
seed request meta-creating '{"version":1,"id":"imc-0123456789abcdef","status":"Creating","createdAt":1700000000,"refs":["busybox"]}'
seed request meta-ready '{"version":1,"id":"imc-00000000000000ff","name":"n","status":"Ready","createdAt":1,"readyAt":2,"size":4096,"refs":["busybox","alpine:3"],"manifest":{"images":[{"ref":"busybox","digest":"x"}]}}'
seed request create-platforms '{"images":[{"ref":"busybox","platform":"linux/arm64"},{"ref":"busybox","platform":"linux/x86_64"},{"ref":"busybox"}]}'
seed request meta-platforms '{"version":1,"id":"imc-0123456789abcdef","status":"Creating","createdAt":1,"refs":["a","a"],"platforms":["linux/amd64","linux/arm64/v8"]}'
seed request meta-failed '{"version":1,"id":"imc-abcdefabcdefabcd","status":"Failed","statusMessage":"pull failed","createdAt":5,"refs":[]}'

# ---- layers ----------------------------------------------------------------------------------
t() { # t NAME [tar options and files...]: an uncompressed tar, a .gz and a .zst of it
	local name=$1
	shift
	(cd "$work" && tar --blocking-factor=1 --sort=name --mtime=@1700000000 --owner=0 \
		--group=0 --numeric-owner -cf "$out/layer/$name.tar" "$@")
	gzip -9 -n -c "$out/layer/$name.tar" >"$out/layer/$name.tar.gz"
	if command -v zstd >/dev/null; then
		zstd -q -19 -c "$out/layer/$name.tar" >"$out/layer/$name.tar.zst"
	fi
}

# A small tree: directories, a file, a symlink, a hard link, a fifo, an empty file.
mkdir -p "$work/a/b"
printf 'hello\n' >"$work/a/f"
: >"$work/a/b/empty"
ln -s f "$work/a/l"
ln "$work/a/f" "$work/a/h"
mkfifo "$work/a/p"
chmod 4755 "$work/a/f"
chmod 1777 "$work/a/b"
t tree a
if [ "$(id -u)" = 0 ]; then
	mknod "$work/a/null" c 1 3
	t tree-dev a
	rm -f "$work/a/null"
fi
t tree-pax --format=pax a
t tree-ustar --format=ustar a

# Whiteouts: of a file, of a directory, opaque, AUFS metadata, a bare ".wh.".
mkdir -p "$work/w/dir"
: >"$work/w/.wh.f"
: >"$work/w/.wh.gone"
: >"$work/w/dir/.wh..wh..opq"
: >"$work/w/dir/kept"
: >"$work/w/.wh..wh.plnk"
t whiteouts w
: >"$work/.wh.."
: >"$work/.wh..."
t whiteout-dot .wh..
t whiteout-dotdot .wh...
rm -f "$work/.wh.." "$work/.wh..."

# Sparse file and a long name (GNU longname / pax path).
truncate -s 1M "$work/a/b/sparse"
printf 'x' | dd of="$work/a/b/sparse" bs=1 seek=65536 conv=notrunc status=none
long=$(printf 'n%.0s' {1..150})
: >"$work/a/$long"
t sparse --sparse a/b/sparse "a/$long"
t sparse-pax --format=pax --sparse a/b/sparse "a/$long"
rm -f "$work/a/b/sparse" "$work/a/$long"

# Hostile names: "../" and absolute paths kept as they are (-P).
mkdir -p "$work/x"
printf 'escape\n' >"$work/x/pwned"
t dotdot -P --transform='s,^x,../../../../x,' x
t absolute -P --transform='s,^x,/tmp/x,' x
t dotdot-middle -P --transform='s,^x/,x/../../../../,' x

# A symlink out of the root, then entries through it.
mkdir -p "$work/s"
ln -s ../../../.. "$work/s/up"
ln -s / "$work/s/abs"
mkdir -p "$work/s/through1" "$work/s/through2"
printf 'escape\n' >"$work/s/through1/pwned"
printf 'escape\n' >"$work/s/through2/pwned"
t symlink-escape -P --transform='s,^s/through1,s/up,;s,^s/through2,s/abs/tmp,' \
	s/up s/abs s/through1 s/through2
# A hard link whose target is outside the root (by ".." and by absolute name).
mkdir -p "$work/hl"
printf 'data\n' >"$work/hl/f"
ln "$work/hl/f" "$work/hl/g"
t hardlink-escape -P --transform='flags=RSh;s,^hl/f$,../../../../../etc/hostname,' hl/f hl/g
t hardlink-abs -P --transform='flags=RSh;s,^hl/f$,/etc/hostname,' hl/f hl/g
# The same names inside the root: "../../hl/f" and "/hl/f" are hl/f.
t hardlink-dotdot-in -P --transform='flags=RSh;s,^hl/f$,../../hl/f,' hl/f hl/g
t hardlink-abs-in -P --transform='flags=RSh;s,^hl/f$,/hl/f,' hl/f hl/g
# Whiteouts aimed above the root.
mkdir -p "$work/wh"
: >"$work/wh/.wh..."
: >"$work/wh/.wh.g3"
t whiteout-escape -P --transform='s,^wh/\.wh\.g3$,../../.wh.g3,' wh

# Scripts for fuzz_layer's structured mode (see fuzz_layer.c): 0xa5, options, then entries of
# type, attributes, path (shape byte, word indexes), [link target], [length, contents].
# a/, a/b "hi", a/l -> ../.., a/c hard link to a/b, a/.wh.b, a/.wh..wh..opq
printf '\xa5\x00\x01\x00\x01\x00\x00\x01\x02\x00\x01\x02hi\x02\x03\x02\x00\x18\x02\x03\x03\x03\x01\x02\x00\x02\x02\x00\x01\x00\x01\x02\x00\x0b\x00\x00\x01\x02\x00\x0c\x00' \
	>"$out/layer/script-tree"
# gzip: l -> /, l/tmp/x, u -> a/../../.., u/g3 (a directory through it), .wh.g3, .wh.root
printf '\xa5\x01\x02\x03\x01\x18\x08\x00\x01\x03\x18\x14\x00\x01x\x02\x03\x01\x18\x02\x1b\x03\x01\x01\x02\x18\x08\x00\x01\x01\x11\x00\x00\x01\x01\x12\x00' \
	>"$out/layer/script-escape.gz"

# Degenerate blobs.
: >"$out/layer/empty"
head -c 1024 /dev/zero >"$out/layer/zeros"

# ---- chunk indexes (oci/index.c) -----------------------------------------------------------
d1=sha256:1111111111111111111111111111111111111111111111111111111111111111
d2=sha256:2222222222222222222222222222222222222222222222222222222222222222
seed index two-chunks '{"mediaType":"application/vnd.imcache.index.v1+json","cacheId":"imc-0123456789abcdef","chunkSize":65536,"size":200000,"sha256":"'"$digest"'","chunks":[{"offset":0,"digest":"'"$d1"'","blob":"'"$d2"'","csize":100},{"offset":131072,"digest":"'"$d2"'","blob":"'"$d1"'","csize":7}]}'
seed index no-chunks '{"mediaType":"application/vnd.imcache.index.v1+json","cacheId":"imc-0123456789abcdef","chunkSize":4194304,"size":4096,"sha256":"'"$digest"'","chunks":[]}'

# ---- startup traces (dist/trace.c) ---------------------------------------------------------
seed trace three '{"mediaType":"application/vnd.imcache.trace.v1+json","chunkSize":65536,"offsets":[196608,0,65536]}'
seed trace empty '{"mediaType":"application/vnd.imcache.trace.v1+json","chunkSize":4194304,"offsets":[]}'
seed trace twice '{"mediaType":"application/vnd.imcache.trace.v1+json","chunkSize":65536,"offsets":[0,0,131072]}'

# ---- imcd config files and Authorization headers (api/auth.c) ------------------------------
seed auth config '{"tokens":[{"token":"fuzz-tenant-a-token-0123456789","tenant":"a"},{"token":"sha256:'"${digest#sha256:}"'","tenant":"b"}],"tenants":{"a":{"maxCaches":10,"maxBytes":1073741824}},"tls":{"cert":"/c.pem","key":"/k.pem"}}'
seed auth header-a 'Bearer fuzz-tenant-a-token-0123456789'
seed auth header-bad 'Bearer nope'

# ---- net/: the first byte picks the parser (0 text, 1 headers, 2 URLs, 3 hosts, 4 redirects) --
nseed() { # nseed NAME SELECTOR CONTENT (printf escapes allowed in CONTENT)
	printf "\\x0$2$3" >"$out/net/$1"
}
nseed reason-oci 0 '{"errors":[{"code":"DENIED","message":"no\\nway"}]}'
nseed reason-text 0 'it broke\n\033[2Jforged'
nseed retry-secs 1 '120'
nseed retry-date 1 'Wed, 21 Oct 2015 07:28:00 GMT'
nseed range 1 'bytes 10-19/200'
nseed url 2 'https://user:pw@reg.example:5000/v2/x/blobs/sha256:ab?X-Sig=1#f'
nseed url-v6 2 'http://[::1]:8080/healthz'
nseed server-unix 2 'unix:/run/imcache/imcd.sock'
nseed allow-cidr 3 '10.0.0.0/8'
nseed allow-port 3 '[fd00::1]:443'
nseed host 3 '127.evil.example:5000'
nseed redirect 4 'http://127.0.0.1:5000/a\000http://mirror.example/b'
nseed redirect-https 4 'https://reg.example/a\000https://s3.example/b?sig=1'

# ---- platforms: the one asked for, then a config's os, architecture, variant (NUL-separated) --
printf '%s' linux/amd64 >"$out/platform/amd64"
printf '%s' linux/arm64/v8 >"$out/platform/arm64"
printf '%s\0' linux/arm64 linux aarch64 v8 >"$out/platform/config-aarch64"
printf '%s\0' linux/arm/v7 linux arm "" >"$out/platform/config-arm-novariant"
printf '%s\0' linux/x86_64 Linux AMD64 >"$out/platform/config-upper"
printf '%s\0' linux/arm64 linux amd64 >"$out/platform/config-mismatch"
printf '%s\0' windows/amd64/v3 windows amd64 v3 >"$out/platform/windows-v3"
printf '%s' linux/armhf/6 >"$out/platform/alias-variant"

# ---- gRPC frames and the snapshot service's messages ----------------------------------------
# grpc: 0x80 frames; 0x40 a request (method byte, grpc-timeout, NUL, body); 0x00 raw HTTP/2.
bseed() { # bseed TARGET NAME PRINTF_FORMAT
	# shellcheck disable=SC2059 # the format is the seed
	printf "$3" >"$out/$1/$2"
}
bseed grpc frames '\200\000\000\000\000\002\022\000\000\000\000\000\000'
bseed grpc prepare '\100\000\061S\000\000\000\000\000\003\022\001k'
bseed grpc list '\100\002\000\000\000\000\000\002\022\000'
bseed grpc stat-timeout '\100\001\061\060\060m\000\000\000\000\000\000'
bseed grpc settings '\000\010\000\000\000\004\000\000\000\000\000'
# snapmsg: 0x00 filters (NUL between), 0x80 METHOD MESSAGE (0 Prepare, 3 Commit, 5 Stat, 7 List)
bseed snapmsg filters '\000kind==committed,name~=/^s/\000labels."containerd.io/snapshot.ref"\000parent!=p'
bseed snapmsg prepare '\200\000\022\001k\042\010\012\001a\022\003xyz'
bseed snapmsg commit '\200\003\022\002l1\032\001k'
bseed snapmsg stat '\200\005\022\001k'
bseed snapmsg list '\200\007\022\017kind==committed'

# ---- mountinfo: an overlay attach's mounts (the overlay by its source, and what sits on it) -----
seed mountinfo pod '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 7:7 / /var/lib/imcache/lowers/imc-1 ro,relatime shared:20 - ext4 /dev/loop7 ro,norecovery
41 22 0:52 / /run/pods/p\0401 rw,relatime shared:21 - overlay imc-att-0123456789abcdef rw,lowerdir=/x,upperdir=/y,workdir=/z
42 41 7:7 /data /run/pods/p\0401/models ro,nosuid,nodev,relatime shared:20 - ext4 /dev/loop7 ro
43 42 0:53 / /run/pods/p\0401/models/tmp rw - tmpfs tmpfs rw
'
seed mountinfo other '41 22 0:52 / /run/pods/p2 rw - overlay imc-att-ffffffffffffffff rw
42 41 0:53 / /run/pods/p2/x rw - tmpfs tmpfs rw
'
