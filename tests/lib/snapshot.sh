# shellcheck shell=bash
# Snapshots made straight into a store, for attach tests that need content the builder does not
# make yet (a cache's /data) or sizes that would take minutes to pull.  The store is the real one
# (opened by imc-attach, so the embedded XFS pool exists); the snapshot is an ext4 image made the
# way the builder makes them (4 KiB blocks, no journal, cleanly unmounted) and sealed the way
# store_seal leaves it (mode 0400 in pool/snapshots/).  Needs common.sh.
#
#   mk_snapshot STATE_DIR ID SRC_DIR [SIZE_MB]   SRC_DIR's tree becomes the snapshot's root
#                                                (images/0/rootfs/..., data/...); SIZE_MB 64
#   mk_snapshot_tree DIR [DATA]                  a small tree: images/0/rootfs with busybox
#                                                and /etc/hello, and data/ when DATA is "data"

mk_snapshot() {
	local state=$1 id=$2 src=$3 size=${4:-64} img
	"$IMC_BIN/imc-attach" --state-dir "$state" list >/dev/null || return 1
	img=$state/pool/volumes/.$id.mk
	rm -f "$img"
	truncate -s "${size}M" "$img"
	if ! mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -E nodiscard,root_owner=0:0 \
		-d "$src" "$img" >/dev/null 2>&1; then
		rm -f "$img"
		echo "mk_snapshot: mkfs.ext4 -d $src failed" >&2
		return 1
	fi
	chmod 0400 "$img"
	mv -f "$img" "$state/pool/snapshots/$id.img"
}

mk_snapshot_tree() {
	local dir=$1 data=${2:-}
	mkimage_busybox_rootfs "$dir/images/0/rootfs" || return 1
	printf 'hello-from-snapshot\n' >"$dir/images/0/rootfs/etc/hello"
	if [ "$data" = data ]; then
		mkdir -p "$dir/data/llm"
		printf 'weights-v1\n' >"$dir/data/llm/model.bin"
	fi
}
