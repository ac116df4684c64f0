#!/bin/bash
# Block mode end to end: `imc-attach attach --block` hands out a device, and a microVM (QEMU, TCG)
# that gets it as a virtio disk sees the cache's files.  The guest is the newest Debian kernel in
# /boot with a tiny initramfs: static busybox and the virtio_blk and ext4 modules (Debian builds
# them as modules) with their dependencies from modules.dep.  Its init mounts /dev/vda read-only,
# prints a file of the image between markers and powers off.  Then detach by device path leaves
# nothing behind.  Needs root, loop devices, qemu-system-x86, linux-image-amd64, busybox-static.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/snapshot.sh"

need_root
need_loop
need_tool qemu-system-x86_64 cpio losetup findmnt mkfs.xfs mkfs.ext4 gzip
need_programs imc-attach

KVER=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$KVER" ] || skip_all "needs a kernel in /boot (linux-image-amd64)"
MODDIR=/lib/modules/$KVER
[ -r "$MODDIR/modules.dep" ] || skip_all "needs $MODDIR/modules.dep"

# --- the initramfs ------------------------------------------------------------------------------

# mod_closure NAME...: the module files (relative to MODDIR) NAME needs, dependencies first.
declare -A SEEN=()
MODS=()
mod_add() {
	local rel=$1 deps d
	[ -z "${SEEN[$rel]:-}" ] || return 0
	SEEN[$rel]=1
	deps=$(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$MODDIR/modules.dep")
	for d in $deps; do
		mod_add "$d"
	done
	MODS+=("$rel")
}
mod_closure() {
	local name rel
	for name in "$@"; do
		if grep -q "^CONFIG_$(echo "$name" | tr '[:lower:]-' '[:upper:]_')=y" "/boot/config-$KVER" 2>/dev/null; then
			continue # built in
		fi
		rel=$(awk -F: -v n="/$name.ko" 'index($1, n) && substr($1, length($1) - length(n) + 1) == n { print $1; exit }' \
			"$MODDIR/modules.dep")
		[ -n "$rel" ] || {
			echo "module $name not found in $MODDIR" >&2
			return 1
		}
		mod_add "$rel"
	done
}

INITRD_DIR=$TEST_TMP/initramfs
mkdir -p "$INITRD_DIR"/{bin,dev,proc,sys,mnt,lib/modules}
install -m 0755 "$MK_BUSYBOX" "$INITRD_DIR/bin/busybox"
for a in sh mount umount cat insmod poweroff mkdir sleep echo ls; do
	ln -s busybox "$INITRD_DIR/bin/$a"
done
# virtio_pci and virtio_blk for the disk; crc32c for ext4's checksums (it asks the crypto API,
# which would otherwise call modprobe).
if ! mod_closure virtio_pci virtio_blk crc32c_generic ext4; then
	bail "the guest's modules are found in $MODDIR"
fi
: >"$INITRD_DIR/modules"
for m in "${MODS[@]}"; do
	case "$m" in
	*.ko) cp "$MODDIR/$m" "$INITRD_DIR/lib/modules/" ;;
	*.ko.xz) xz -dc "$MODDIR/$m" >"$INITRD_DIR/lib/modules/$(basename "$m" .xz)" ;;
	*.ko.zst) zstd -qdc "$MODDIR/$m" >"$INITRD_DIR/lib/modules/$(basename "$m" .zst)" ;;
	*) bail "module $m: unknown compression" ;;
	esac
	basename "${m%.xz}" .zst >>"$INITRD_DIR/modules"
done
note "guest kernel $KVER, modules: $(tr '\n' ' ' <"$INITRD_DIR/modules")"
cat >"$INITRD_DIR/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </modules
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 -o ro /dev/vda /mnt; then
	echo "IMC-GUEST-BEGIN"
	cat /mnt/images/0/rootfs/etc/hello
	ls /mnt/images/0/rootfs/bin/busybox
	echo "IMC-GUEST-END"
	umount /mnt
else
	echo "IMC-GUEST-MOUNT-FAILED"
	ls /dev
fi
poweroff -f
EOF
chmod 0755 "$INITRD_DIR/init"
if (cd "$INITRD_DIR" && find . | cpio -o -H newc --quiet | gzip -1) >"$TEST_TMP/initrd.gz"; then
	ok "initramfs of busybox and ${#MODS[@]} modules"
else
	bail "initramfs of busybox and ${#MODS[@]} modules"
fi

# --- a cache, attached in block mode ------------------------------------------------------------

STATE=$TEST_TMP/state
IMC_STATE=$STATE
export IMC_STATE
defer imc_teardown_quiet
SNAP=imc-000000000000f001
mk_snapshot_tree "$TEST_TMP/tree"
mk_snapshot "$STATE" "$SNAP" "$TEST_TMP/tree" 64 || bail "a snapshot is made in the store"
_capture imc_attach attach --block "$SNAP"
read -r DEV AID <<<"$out"
if [ "$rc" != 0 ] || [ ! -b "$DEV" ]; then
	bail "attach --block prints a device" "$rc $out"
fi
defer imc_detach_quiet "$AID"
ok "attach --block: $DEV ($AID)"

# --- boot -----------------------------------------------------------------------------------------

QLOG=$TEST_TMP/qemu.log
ARGS=(-nodefaults -no-user-config -no-reboot -machine pc -accel tcg -m 512 -smp 1
	-nographic -monitor none -serial stdio
	-kernel "/boot/vmlinuz-$KVER" -initrd "$TEST_TMP/initrd.gz"
	-append "console=ttyS0 panic=-1 quiet rdinit=/init mitigations=off"
	-drive "file=$DEV,format=raw,if=virtio,cache=none")
# qboot starts the kernel sooner than SeaBIOS (TCG runs firmware slowly too).
if [ -r /usr/share/qemu/qboot.rom ]; then
	ARGS+=(-bios /usr/share/qemu/qboot.rom)
fi
T0=$(now_ms)
qemu-system-x86_64 "${ARGS[@]}" </dev/null >"$QLOG" 2>&1 &
QPID=$!
defer stop_pid "$QPID" 5
# The guest powers off by itself; give TCG time on a busy machine.
for i in $(seq 1 1800); do
	kill -0 "$QPID" 2>/dev/null || break
	grep -q 'IMC-GUEST-END\|IMC-GUEST-MOUNT-FAILED\|Kernel panic' "$QLOG" 2>/dev/null && sleep 1 && break
	sleep 0.1
done
stop_pid "$QPID" 5 || true
note "guest ran for $(($(now_ms) - T0)) ms"
GUEST=$(sed -n '/IMC-GUEST-BEGIN/,/IMC-GUEST-END/p' "$QLOG" | tr -d '\r')
check_eq "the guest sees the image's files on its virtio disk" \
	"IMC-GUEST-BEGIN hello-from-snapshot /mnt/images/0/rootfs/bin/busybox IMC-GUEST-END" \
	"$(printf '%s' "$GUEST" | tr '\n' ' ' | sed 's/ $//')"
[ -n "$GUEST" ] || note "$(tail -n 30 "$QLOG")"
check_fails "qemu (pid $QPID) is gone" kill -0 "$QPID"

check "detach by device path" imc_attach detach "$DEV"
check_eq "no loop device left on the clone" "" \
	"$(losetup -n -O NAME,BACK-FILE -l | awk -v p="$STATE/pool/clones/" 'index($2, p) == 1')"
check_eq "no clone or state left" "" "$(find "$STATE/pool/clones" "$STATE/attachments" -mindepth 1)"
check "teardown releases the pool" imc_attach teardown
check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops_settled)"

done_testing
