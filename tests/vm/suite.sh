#!/bin/bash
# The part of imcache's tests that needs device-mapper, run inside the test VM by tests/vm/run.sh:
# the driver-independent store suite against the thin driver, the thin driver's own tests (with
# configured data and metadata disks), and the end-to-end build -> attach -> crun run on thin.
#   disks: /dev/vda scratch (XFS, mounted on /tmp), /dev/vdb thin data, /dev/vdc thin metadata
set -u
[ "${IMC_VM:-}" = 1 ] || { echo "suite.sh runs inside the test VM: tests/vm/run.sh" >&2; exit 2; }
cd "$(dirname "$0")/../.." || exit 1
IMC_BIN=${IMC_BIN:-$PWD/build/check}
export IMC_BIN

# /tmp on a real disk: pool files, registry blobs and images do not fit the guest's RAM, and
# O_DIRECT and reflinks need a real filesystem.  A tree that lives under /tmp itself (a CI clone
# in /tmp/...) is shared at that path: it is carried over the new /tmp with a bind mount.
repo=$PWD
case $repo in
/tmp/*) mkdir -p /run/imc-repo && mount --bind "$repo" /run/imc-repo || exit 1 ;;
*) repo= ;;
esac
if ! { mkfs.xfs -q -f -m reflink=1 /dev/vda && mount -o noatime /dev/vda /tmp; }; then
	echo "cannot put /tmp on /dev/vda" >&2
	exit 1
fi
chmod 1777 /tmp
if [ -n "$repo" ]; then
	mkdir -p "$repo" && mount --bind /run/imc-repo "$repo" && cd "$repo" || exit 1
fi
export TMPDIR=/tmp

failed=()
step() {
	local name=$1 rc=0 t0=$SECONDS
	shift
	echo "== $name"
	"$@" || rc=$?
	echo "== $name: exit $rc ($((SECONDS - t0)) s)"
	[ $rc = 0 ] || failed+=("$name")
}
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export CK_FORK=yes
step "store suite (thin)" env IMC_STORE_DRIVER=thin "$IMC_BIN/tests/test_store"
step "thin driver tests" env IMC_THIN_DATA_DEV=/dev/vdb IMC_THIN_METADATA_DEV=/dev/vdc \
	"$IMC_BIN/tests/test_thin"
if [ "${IMC_VM_E2E:-1}" = 1 ]; then
	step "end to end (thin)" bash tests/vm/test_thin_e2e.sh
fi
cd / || exit 1
[ -z "$repo" ] || umount "$repo" /run/imc-repo 2>/dev/null || true
umount /tmp 2>/dev/null || umount -l /tmp
if [ ${#failed[@]} -gt 0 ]; then
	echo "VM suite: failed: ${failed[*]}"
	exit 1
fi
echo "VM suite: all passed"
