# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# A private containerd for tests: Debian's containerd 1.6 with its own root, state, socket and
# config in TEST_TMP (the CRI plugin and the snapshotters a test does not need are disabled, so
# it starts in well under a second).  Needs common.sh.
#
#   containerd_start           exports CTRD_ADDR, CTRD_PID, CTRD_ROOT, CTRD_STATE, CTRD_LOG,
#                              CTRD_RUNC_ROOT; defers containerd_stop
#   ctrd ARG...                ctr --address $CTRD_ADDR --namespace $CTRD_NS ARG...
#   containerd_stop            removes every task and container of the namespace, stops
#                              containerd by PID, then any shim it left (by the shim.pid files in
#                              its state dir), and unmounts what is left under its dirs
#
# The environment of containerd is inherited by its shims and so by the runc binary they call:
# imc-runtime reads IMCACHE_STATE_DIR and IMCACHE_RUNTIME from there.  runc runs as is on this
# host; crun 1.8 needs a private mount namespace without /sys/fs/cgroup/unified (see
# container.sh), which would put containerd and every attach in that namespace, so the tests use
# runc (IMCACHE_RUNTIME=runc) under containerd.  The runc state goes to CTRD_RUNC_ROOT (ctr run
# --runc-root), not /run/containerd/runc.

CTRD_NS=imcache-test
CTRD_PID=
CTRD_ADDR=
CTRD_ROOT=
CTRD_STATE=
CTRD_LOG=
CTRD_RUNC_ROOT=

_containerd_config() {
	cat <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$CTRD_ADDR"

[ttrpc]
  address = "$CTRD_ADDR.ttrpc"

[debug]
  level = "info"
EOF
}

# containerd_start [DIR]: everything under DIR (default $TEST_TMP/containerd).
# containerd_cri_imcache_config SOCK: the config lines that turn the CRI plugin on (its pulls, the
# kubelet's, go through containerd's unpacker with the containerd.io/snapshot.ref labels) with
# imc-snapshotter at SOCK as its snapshotter "imcache", $REGISTRY plain HTTP and a synchronous
# GC; a script appends them to _containerd_config_base's, less the line that disables the CRI.
containerd_cri_imcache_config() {
	cat <<EOT

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "imcache"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$TEST_TMP/cni/bin"
    conf_dir = "$TEST_TMP/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY"]
    endpoint = ["http://$REGISTRY"]

[proxy_plugins.imcache]
  type = "snapshot"
  address = "$1"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
EOT
}

containerd_start() {
	local dir=${1:-$TEST_TMP/containerd} i
	CTRD_ROOT=$dir/root
	CTRD_STATE=$dir/state
	CTRD_ADDR=$dir/containerd.sock
	CTRD_LOG=$dir/containerd.log
	CTRD_RUNC_ROOT=$dir/runc
	mkdir -p "$CTRD_ROOT" "$CTRD_STATE" "$CTRD_RUNC_ROOT"
	_containerd_config >"$dir/config.toml"
	containerd --config "$dir/config.toml" >"$CTRD_LOG" 2>&1 &
	CTRD_PID=$!
	defer containerd_stop
	export CTRD_ADDR CTRD_PID CTRD_ROOT CTRD_STATE CTRD_LOG CTRD_RUNC_ROOT
	for ((i = 0; i < 400; i++)); do
		if ctrd version >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$CTRD_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "containerd did not answer on $CTRD_ADDR; its log:" >&2
	tail -n 30 "$CTRD_LOG" >&2
	return 1
}

ctrd() {
	ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" "$@"
}

# ctrd_run_imc ID ROOTFS_DIR ANNOTATION... -- CMD...: ctr run --rm of CMD on ROOTFS_DIR (a
# --rootfs that imc-runtime fills from the cache) with imc-runtime as the runc binary.
ctrd_run_imc() {
	local id=$1 rootfs=$2
	local -a ann=()
	shift 2
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		ann+=(--annotation "$1")
		shift
	done
	shift
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm \
		--runc-binary "$IMC_BIN/imc-runtime" --runc-root "$CTRD_RUNC_ROOT" \
		"${ann[@]}" --rootfs "$rootfs" "$id" "$@" </dev/null
}

# The pids of the shims containerd started (their shim.pid files).
_containerd_shim_pids() {
	local f
	[ -n "$CTRD_STATE" ] || return 0
	for f in "$CTRD_STATE"/io.containerd.runtime.v2.task/*/*/shim.pid; do
		[ -f "$f" ] && cat "$f" && echo
	done
	return 0
}

containerd_stop() {
	local t c pid
	[ -n "$CTRD_PID" ] || return 0
	if kill -0 "$CTRD_PID" 2>/dev/null; then
		for t in $(ctrd task ls -q 2>/dev/null); do
			ctrd task kill -s KILL "$t" >/dev/null 2>&1 || true
			ctrd task delete --force "$t" >/dev/null 2>&1 || true
		done
		for c in $(ctrd container ls -q 2>/dev/null); do
			ctrd container rm "$c" >/dev/null 2>&1 || true
		done
	fi
	stop_pid "$CTRD_PID" 10 || true
	# Shims outlive containerd by design; these are ours (their pid files are in our state).
	for pid in $(_containerd_shim_pids); do
		[[ "$pid" =~ ^[0-9]+$ ]] || continue
		if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd-shim ]; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	CTRD_PID=
}
