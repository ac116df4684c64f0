#!/bin/bash
# make check-vm: the tests that need device-mapper, in a VM (tests/vm/imc-vm) booted from the
# Debian kernel installed on this host, since the host's own kernel may have none.
#
#   tests/vm/run.sh            the in-VM suite (tests/vm/suite.sh) with IMC_BIN's programs
#
# Without QEMU, a kernel or a static busybox it prints why and exits 0 (skipped) — but with
# CI=true, where nothing may skip, it fails.  Afterwards it checks that the VM left nothing on
# the host: no QEMU process, run directory, disk image, loop device or mount of its own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
IMC_BIN=${IMC_BIN:-$root/build/check}
export IMC_BIN

skip() {
	if [ "${CI:-}" = true ]; then
		echo "check-vm: FAILED: $* (CI=true: nothing may skip; run scripts/install-deps.sh)" >&2
		exit 1
	fi
	echo "check-vm: SKIP: $* (scripts/install-deps.sh installs it)"
	exit 0
}
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (package qemu-system-x86)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no kernel in /boot (package linux-image-amd64)"
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } ||
	skip "no static busybox (package busybox-static)"
[ "$(id -u)" = 0 ] || skip "needs root (to read /boot/vmlinuz and run the tests as root)"
for t in test_store test_thin; do
	[ -x "$IMC_BIN/tests/$t" ] || { echo "check-vm: $IMC_BIN/tests/$t is not built" >&2; exit 1; }
done

# The VM's run directory (disk images, pipes) lives under a private dir, so that what it might
# leave is easy to find; other jobs on this host may come and go with their own devices.
vmtmp=$(mktemp -d "${TMPDIR:-/tmp}/imc-check-vm.XXXXXX")
leftovers() {
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v a="$vmtmp" -v b="$root" \
		'index($2, a) == 1 || index($2, b) == 1 { print "loop device " $0 }'
	findmnt -rn -o TARGET | awk -v a="$vmtmp" -v b="$root" \
		'index($1, a) == 1 || index($1, b) == 1 { print "mount " $0 }'
	pgrep -af qemu-system | grep -F "$vmtmp" | sed 's/^/process /' || true
	find "$vmtmp" -mindepth 1 -maxdepth 1 | sed 's/^/file /'
}
before=$(leftovers)
rc=0
# 8G scratch disk for /tmp (sparse), 1G + 64M for the thin tests' configured-device pool
TMPDIR=$vmtmp "$here/imc-vm" --mem 2048 --timeout "${IMC_VM_TIMEOUT:-900}" --share "$root" \
	--disk scratch:8G --disk data:1G --disk meta:64M -- "$here/suite.sh" || rc=$?
after=$(leftovers)
if [ "$after" != "$before" ]; then
	echo "check-vm: the VM run left this on the host:" >&2
	echo "$after" >&2
	rc=1
else
	rmdir "$vmtmp"
fi
[ $rc = 0 ] && echo "check-vm: passed" || echo "check-vm: FAILED (exit $rc)"
exit $rc
