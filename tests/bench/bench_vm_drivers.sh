#!/bin/bash
# make bench-vm: the reflink and thin store drivers side by side, in the test VM (tests/vm/imc-vm;
# the thin driver needs device-mapper, which the host kernel may lack).  In one VM run, for each
# driver in a fresh state dir on the same scratch XFS disk:
#   build   a snapshot of BENCH_VM_DATA_MB of incompressible data, the builder's way
#           (volume, mkfs.ext4, mount, write, unmount, seal)
#   clone   BENCH_VM_CLONES times clone + activate + mount (p50/p99), then unmount + deactivate
#           + remove (p50/p99)
# and prints thin/reflink ratios.  Under TCG (no KVM) the guest CPU is emulated: compare the
# ratios, not the absolute figures.
#
#   BENCH_VM_DATA_MB (256)  BENCH_VM_CLONES (30)   IMC_BIN (build: the release build)
#   BENCH_OUT: where the markdown table goes as well (make bench's run.sh sets it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
IMC_BIN=${IMC_BIN:-$root/build}
DATA_MB=${BENCH_VM_DATA_MB:-256}
CLONES=${BENCH_VM_CLONES:-30}
export IMC_BIN DATA_MB CLONES

if [ "${1:-}" != --in-vm ]; then
	[ -x "$IMC_BIN/bench/driver_bench" ] ||
		{ echo "bench-vm: build $IMC_BIN/bench/driver_bench first (make bench-vm)" >&2; exit 1; }
	out=$(mktemp)
	trap 'rm -f "$out"' EXIT
	"$root/tests/vm/imc-vm" --mem 2048 --timeout 900 --share "$root" --disk scratch:16G \
		-- "$here/bench_vm_drivers.sh" --in-vm | tee "$out"
	grep '^{' "$out" | jq -rs '
		def by(d): map(select(.driver == d));
		(by("reflink") | add) as $r | (by("thin") | add) as $t |
		def ratio(k): if ($r[k] // 0) > 0 then ($t[k] / $r[k] * 100 | round / 100) else "n/a" end;
		"| measure (emulated CPU) | reflink | thin | thin/reflink |",
		"|---|---|---|---|",
		( ["build_ms", "attach_p50_ms", "attach_p99_ms", "detach_p50_ms", "detach_p99_ms"][] as $k |
		  "| \($k) | \($r[$k]) | \($t[$k]) | \(ratio($k)) |")' | tee "${BENCH_OUT:-/dev/null}"
	exit 0
fi

# ---- inside the VM ------------------------------------------------------------------------
# The scratch disk on a directory of its own (not over /tmp, where the tree itself may live).
scratch=/run/imc-bench
mkdir -p "$scratch"
mkfs.xfs -q -f -m reflink=1 /dev/vda
mount -o noatime /dev/vda "$scratch"
trap 'cd /; umount "$scratch" 2>/dev/null || umount -l "$scratch"' EXIT
for driver in reflink thin; do
	state=$scratch/bench-$driver
	echo "== $driver: build ${DATA_MB} MiB" >&2
	"$IMC_BIN/bench/driver_bench" build "$driver" "$state" snap "$DATA_MB"
	sync
	echo 3 >/proc/sys/vm/drop_caches
	echo "== $driver: $CLONES clones" >&2
	"$IMC_BIN/bench/driver_bench" clone "$driver" "$state" snap "$CLONES"
	"$IMC_BIN/bench/driver_bench" teardown "$driver" "$state"
done
