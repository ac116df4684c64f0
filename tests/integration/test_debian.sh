#!/bin/bash
# A real distribution: a Debian bookworm minbase rootfs (debootstrap from this machine's apt
# mirror; the result is kept in build/cache/ for the next run) with a few extras real images
# carry (a file capability, user xattrs, setuid, owners, a hardlink across directories, a sparse
# file, a long name, a fifo), made into a 5-layer image with umoci (one repack per layer, the last
# one deleting things: whiteouts), pushed with skopeo, built by imcd and attached.  The attached
# rootfs must match `umoci unpack` of the same image entry for entry: type, mode, owner, size,
# content hash, link target, device numbers, mtime, xattrs and hardlink groups (tests/lib/treelist.py).
# Needs root, loop devices and the network to the Debian mirror on the first run.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo umoci debootstrap python3 losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

CACHE_DIR=${IMC_TEST_CACHE:-$IMC_ROOT/build/cache}
ROOTFS_TAR=$CACHE_DIR/debian-bookworm-minbase.tar
SUITE=bookworm

# The first Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
	local m
	m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
		grep -v -- '-security' | head -n1)
	[ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
		awk '$3 ~ /^bookworm$/ {print $2; exit}')
	printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# make_rootfs DIR: debootstrap into DIR, or unpack the cached result of an earlier run.
make_rootfs() {
	local dir=$1 mirror tmp
	mkdir -p "$dir"
	if [ -s "$ROOTFS_TAR" ]; then
		tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$ROOTFS_TAR" -C "$dir"
		return
	fi
	mirror=$(debian_mirror)
	note "debootstrap --variant=minbase $SUITE from $mirror (cached in $ROOTFS_TAR afterwards)"
	timeout 600 debootstrap --variant=minbase "$SUITE" "$dir" "$mirror" >"$TEST_TMP/debootstrap.log" 2>&1 || {
		tail -n 20 "$TEST_TMP/debootstrap.log" >&2
		return 1
	}
	mkdir -p "$CACHE_DIR"
	tmp=$(mktemp "$CACHE_DIR/.rootfs.XXXXXX")
	tar --xattrs --xattrs-include='*' --numeric-owner -cpf "$tmp" -C "$dir" .
	mv -f "$tmp" "$ROOTFS_TAR"
}

T0=$(now_ms)
ROOTFS=$TEST_TMP/rootfs
make_rootfs "$ROOTFS" || bail "a Debian minbase rootfs (debootstrap)"
ok "Debian $SUITE minbase rootfs ($(du -sm "$ROOTFS" | cut -f1) MiB, $(find "$ROOTFS" | wc -l) entries, $(($(now_ms) - T0)) ms)"

# What real images carry beyond a plain debootstrap.  The file capability is a VFS v2 blob
# (cap_net_bind_service, effective), written with python so that no libcap tool is needed.
# shellcheck disable=SC2317 # called through check
add_extras() {
	local r=$1
	mkdir -p "$r/opt/extras/sub" "$r/srv/other"
	cp -a "$r/usr/bin/true" "$r/opt/extras/cap-true"
	python3 -c 'import os, struct, sys
os.setxattr(sys.argv[1], "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))
os.setxattr(sys.argv[2], "user.imcache.note", b"a user xattr")' \
		"$r/opt/extras/cap-true" "$r/etc/hostname"
	cp -a "$r/usr/bin/env" "$r/opt/extras/suid-env"
	chmod 4755 "$r/opt/extras/suid-env"
	printf 'owned\n' >"$r/opt/extras/owned"
	chown 1234:5678 "$r/opt/extras/owned"
	chmod 0640 "$r/opt/extras/owned"
	printf 'shared by two directories\n' >"$r/opt/extras/sub/hard"
	ln "$r/opt/extras/sub/hard" "$r/srv/other/hard-too"
	truncate -s 64M "$r/opt/extras/sparse"
	printf 'tail' | dd of="$r/opt/extras/sparse" bs=1 seek=$((32 << 20)) conv=notrunc status=none
	printf 'long\n' >"$r/opt/extras/$(printf 'n%.0s' $(seq 1 240))"
	mkfifo -m 0620 "$r/opt/extras/fifo"
	ln -s ../extras/owned "$r/opt/extras/sub/rel-link"
	ln -s /etc/os-release "$r/opt/extras/abs-link"
	chmod 2775 "$r/srv/other"
	chgrp 50 "$r/srv/other"
}
check "extras: a file capability, xattrs, setuid, owners, hardlinks, sparse, long names" \
	add_extras "$ROOTFS"

# --- the image: five layers with umoci -------------------------------------------------------

LAYOUT=$TEST_TMP/layout
BUNDLE=$TEST_TMP/bundle
# build_image: one repack per layer (--refresh-bundle: the next one starts from this one).
# shellcheck disable=SC2317 # called through check
build_image() {
	local b=$BUNDLE/rootfs d
	umoci init --layout "$LAYOUT"
	umoci new --image "$LAYOUT:deb"
	umoci unpack --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	# 1: everything but /usr/share, /var and the extras
	for d in "$ROOTFS"/*; do
		case "${d##*/}" in
		usr | var | opt | srv) ;;
		*) cp -a "$d" "$b/" ;;
		esac
	done
	mkdir -p "$b/usr"
	for d in "$ROOTFS"/usr/*; do
		[ "${d##*/}" = share ] || cp -a "$d" "$b/usr/"
	done
	umoci repack --refresh-bundle --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	# 2: /usr/share
	cp -a "$ROOTFS/usr/share" "$b/usr/"
	umoci repack --refresh-bundle --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	# 3: /var
	cp -a "$ROOTFS/var" "$b/"
	umoci repack --refresh-bundle --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	# 4: the extras (cp -a keeps xattrs, hardlinks among what it copies, holes)
	cp -a "$ROOTFS/opt" "$ROOTFS/srv" "$b/"
	umoci repack --refresh-bundle --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	# 5: deletions and a change: whiteouts of a directory tree and of single files
	rm -rf "$b/usr/share/doc" "$b/usr/share/man/man1" "$b/etc/motd" "$b/var/log/apt"
	printf 'changed in layer 5\n' >>"$b/etc/issue"
	umoci repack --refresh-bundle --image "$LAYOUT:deb" "$BUNDLE" >/dev/null
	umoci config --image "$LAYOUT:deb" --os linux --architecture amd64 \
		--config.cmd /bin/bash --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		--config.env LANG=C.UTF-8 --config.workingdir /root --config.user 0:0 \
		--config.label org.example.test=debian --config.label org.example.layers=5
	umoci gc --layout "$LAYOUT"
	rm -rf "$BUNDLE"
}
T0=$(now_ms)
check "umoci builds a 5-layer image of it" build_image
note "umoci took $(($(now_ms) - T0)) ms"
MANIFEST=$(jq -r '.manifests[0].digest' "$LAYOUT/index.json")
check_eq "the image has 5 layers" 5 \
	"$(jq '.layers | length' "$LAYOUT/blobs/sha256/${MANIFEST#sha256:}")"

registry_start_or_bail
check "skopeo pushes it" skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:deb" \
	"docker://$REGISTRY/debian/minbase:$SUITE"

# --- imcd builds it; umoci unpacks it --------------------------------------------------------

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"
T0=$(now_ms)
ID=$(create_cache "$REGISTRY/debian/minbase:$SUITE" debian) || bail "POST the cache"
JSON=$(cache_wait "$ID" 600) || JSON=
BUILD_MS=$(($(now_ms) - T0))
check_eq "imcd builds the cache ($BUILD_MS ms)" Ready "$(json_get "$JSON" '.status // empty' 2>&1)"
[ "$(json_get "$JSON" '.status // empty' 2>&1)" = Ready ] ||
	bail "the cache is Ready" "$JSON" "$(imcd_log_tail 20)"
check_eq "the config's labels are recorded" "debian 5" \
	"$(json_get "$JSON" '.images[0].config.labels | "\(.["org.example.test"]) \(.["org.example.layers"])"' 2>&1)"
check_eq "the config's env, cmd, workingDir and user are recorded" \
	"PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8|/bin/bash|/root|0:0" \
	"$(json_get "$JSON" '.images[0].config | "\(.env | join(" "))|\(.cmd | join(" "))|\(.workingDir)|\(.user)"' 2>&1)"

T0=$(now_ms)
check "umoci unpacks the same image" umoci unpack --image "$LAYOUT:deb" "$TEST_TMP/ref" >/dev/null
note "umoci unpack took $(($(now_ms) - T0)) ms"

MNT=$TEST_TMP/mnt
mkdir -p "$MNT"
defer imc_detach_quiet "$MNT"
check "imc-attach mounts the cache's rootfs" imc_attach attach "$ID" "$MNT"

python3 "$IMC_ROOT/tests/lib/treelist.py" --no-dir-times "$TEST_TMP/ref/rootfs" >"$TEST_TMP/umoci.list"
python3 "$IMC_ROOT/tests/lib/treelist.py" --no-dir-times "$MNT" >"$TEST_TMP/imcache.list"
note "$(wc -l <"$TEST_TMP/umoci.list") entries listed"
if diff -u "$TEST_TMP/umoci.list" "$TEST_TMP/imcache.list" >"$TEST_TMP/list.diff"; then
	ok "the attached rootfs matches umoci unpack entry for entry"
else
	not_ok "the attached rootfs matches umoci unpack entry for entry" \
		"$(head -n 40 "$TEST_TMP/list.diff")"
fi
# The listing must see what it is meant to compare (a listing that misses them compares nothing).
for want in 'opt/extras/cap-true .*xattr.security.capability=' \
	'etc/hostname .*xattr.user.imcache.note=' 'opt/extras/suid-env type=file mode=4755' \
	'opt/extras/owned type=file mode=0640 uid=1234 gid=5678' \
	'srv/other/hard-too .*hardlink=opt/extras/sub/hard' 'dev/null type=char .*rdev=1,3' \
	'opt/extras/fifo type=fifo mode=0620' 'srv/other type=dir mode=2775 uid=0 gid=50'; do
	check_match "imcache's listing has ${want%% *}" "^$want" "$(grep "^${want%% *} " "$TEST_TMP/imcache.list")"
done
check_fails "the deleted /usr/share/doc is gone" test -e "$MNT/usr/share/doc"
check_match "the change of layer 5 is there" 'changed in layer 5' "$(cat "$MNT/etc/issue")"
check_eq "the 64 MiB sparse file takes less than 1 MiB" 1 \
	"$(($(stat -c %b "$MNT/opt/extras/sparse") * 512 < (1 << 20) ? 1 : 0))"
check_eq "and reads back" tail "$(dd if="$MNT/opt/extras/sparse" bs=1 skip=$((32 << 20)) count=4 status=none)"
check "chroot: the image's bash runs" chroot "$MNT" /bin/bash -c 'test -x /usr/bin/dpkg'

check "detach" imc_attach detach "$MNT"
check_clean_shutdown
done_testing
