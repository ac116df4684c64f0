#!/bin/bash
# imc-snapshotter as containerd's only snapshotter for an image: Debian's containerd 1.6 on its
# own root, state and socket with a proxy_plugins.imcache entry, imc-snapshotter on its own
# socket, a registry on loopback with a two-layer image (a whiteout, an opaque directory).
# ctr pulls, unpacks and runs through it (runc), two containers are isolated, ctr snapshots
# ls/info/usage/label/view/mounts/rm/tree work, containerd restarts, a restart and a kill -9
# in the middle of a Prepare leave it consistent, and removing the image removes every snapshot directory (Cleanup included).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/containerd.sh"

need_root
need_tool jq skopeo containerd ctr runc findmnt
need_programs imc-snapshotter

SNAP_SOCK=$TEST_TMP/snap/snapshotter.sock
SNAP_STATE=$TEST_TMP/snapstate
SNAP_ROOT=$SNAP_STATE/snapshotter
SNAP_PID=
SNAP_LOG=$TEST_TMP/snapshotter.log

# containerd's config with the proxy plugin added.
eval "$(declare -f _containerd_config | sed '1s/_containerd_config/_containerd_config_base/')"
_containerd_config() {
	_containerd_config_base
	cat <<EOF

[proxy_plugins.imcache]
  type = "snapshot"
  address = "$SNAP_SOCK"

# A garbage collection after every deletion (it removes the snapshots of removed containers
# from the snapshotter), not only every 100 changes.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
EOF
}
# wait_eq WANT CMD...: until CMD prints WANT (containerd removes snapshots from its snapshotter in
# its garbage collection, after the ctr command returned); at most 30 s.
wait_eq() {
	local want=$1 i
	shift
	for ((i = 0; i < 300; i++)); do
		if [ "$("$@")" = "$want" ]; then
			echo "$want"
			return 0
		fi
		sleep 0.1
	done
	"$@"
}

snap_start() { # [ENV=VALUE...]
	local i n
	n=$(grep -c 'serving snapshots' "$SNAP_LOG" 2>/dev/null || true)
	env "$@" "$IMC_BIN/imc-snapshotter" --address "$SNAP_SOCK" --state-dir "$SNAP_STATE" \
		>>"$SNAP_LOG" 2>&1 &
	SNAP_PID=$!
	# A socket a killed one left may still be there: wait for this one's start line.
	for ((i = 0; i < 200; i++)); do
		[ "$(grep -c 'serving snapshots' "$SNAP_LOG")" -gt "${n:-0}" ] && return 0
		kill -0 "$SNAP_PID" 2>/dev/null || break
		sleep 0.05
	done
	tail -n 20 "$SNAP_LOG" >&2
	return 1
}
# Until containerd reaches the snapshotter again (its gRPC connection backs off up to 3 s after
# a restart); at most 30 s.
snap_reachable() {
	local i
	for ((i = 0; i < 300; i++)); do
		snaps ls >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}
snap_stop() {
	[ -n "$SNAP_PID" ] || return 0
	stop_pid "$SNAP_PID" 10 || true
	SNAP_PID=
}
snap_kill() {
	kill -KILL "$SNAP_PID" 2>/dev/null || true
	wait "$SNAP_PID" 2>/dev/null || true
	SNAP_PID=
}
# The state of a process (T: stopped).
proc_state() {
	ps -o stat= -p "$1" 2>/dev/null | cut -c1
}
wait_stopped() {
	local i
	for ((i = 0; i < 400; i++)); do
		[ "$(proc_state "$1")" = T ] && return 0
		sleep 0.05
	done
	return 1
}
snaps() {
	ctrd snapshots --snapshotter imcache "$@"
}
# Snapshot directories on disk and records in meta.json.
n_dirs() { find "$SNAP_ROOT/snapshots" -mindepth 1 -maxdepth 1 | wc -l; }
n_records() { jq '.snapshots | length' "$SNAP_ROOT/meta.json"; }
consistent() {
	local d r
	d=$(n_dirs)
	r=$(n_records)
	[ "$d" = "$r" ] || {
		echo "$d directories, $r records"
		return 1
	}
}

registry_start || bail "registry starts"
LAYOUT=$TEST_TMP/layout
mkimage_multilayer "$LAYOUT" multi >/dev/null || bail "image builds"
mkimage_push "$LAYOUT" multi snap/multi:v1 || bail "image pushes"
REF=$REGISTRY/snap/multi:v1

mkdir -p "$(dirname "$SNAP_SOCK")"
defer snap_stop
snap_start || bail "imc-snapshotter starts"
containerd_start || bail "containerd starts"

check_match "containerd lists the proxy snapshotter" \
	'io.containerd.snapshotter.v1[[:space:]]+imcache[[:space:]].*ok' "$(ctrd plugins ls 2>&1)"
check "ctr image pull --snapshotter imcache unpacks through it" \
	ctrd image pull --snapshotter imcache --plain-http "$REF"
check_eq "two committed layer snapshots are recorded" 2 "$(n_records)"

run_in() { # NAME CMD...: ctr run --rm of CMD in the image
	local name=$1
	shift
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm --snapshotter imcache \
		--runc-root "$CTRD_RUNC_ROOT" "$REF" "$name" "$@" </dev/null
}
check_eq "ctr run prints a file of the image" content-a "$(run_in r1 cat /data/a.txt 2>&1)"
check "the lower layer's whiteout and opaque directory apply" \
	run_in r2 sh -c 'test ! -e /data/b.txt && test ! -e /opq/old1 && test -e /opq/new && test -e /keep/x'

# Two containers: one writes, the other does not see it.
check "a container writes into its snapshot" \
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --snapshotter imcache \
	--runc-root "$CTRD_RUNC_ROOT" "$REF" c1 sh -c 'echo mine >/data/own'
check "a second container does not see the first one's file" run_in c2 test ! -e /data/own
own_files() { find "$SNAP_ROOT/snapshots" -path '*/fs/data/own' | wc -l; }
check_eq "the file is in exactly one snapshot's upper directory" 1 "$(own_files)"
check "ctr snapshots ls lists the container's active snapshot" \
	sh -c "ctr --address '$CTRD_ADDR' --namespace '$CTRD_NS' snapshots --snapshotter imcache ls | grep -E '^c1[[:space:]].*Active'"
check "the container and its snapshot are removed" ctrd container rm c1
check_eq "its writes are gone with it" 0 "$(wait_eq 0 own_files)"

# ctr snapshots on the layers.
TOP=$(ctrd image ls | awk -v r="$REF" '$1 == r {print $3}')
CHAIN=$(snaps ls | awk '$3 == "Committed" && $2 != "" {print $1}' | head -n1)
check_match "ctr snapshots info shows a committed layer" '"Kind": "Committed"' "$(snaps info "$CHAIN" 2>&1)"
check_match "ctr snapshots usage reports its size" "$CHAIN[[:space:]]+[0-9.]+ [KMG]?i?B[[:space:]]+[0-9]+" \
	"$(snaps usage "$CHAIN" 2>&1)"
check_match "ctr snapshots tree shows the chain" '\\_' "$(snaps tree 2>&1)"
check "ctr snapshots prepare over the top layer" snaps prepare k1 "$CHAIN"
check "ctr snapshots label sets a snapshot label" snaps label k1 containerd.io/snapshot/imc-test=yes
label_in_meta() {
	jq -r '[.snapshots[] | .labels["containerd.io/snapshot/imc-test"] // empty] | join(",")' \
		"$SNAP_ROOT/meta.json"
}
check_eq "the label reaches the snapshotter's record" yes "$(label_in_meta)"
check_match "and comes back through info" 'imc-test": "yes"' "$(snaps info k1 2>&1)"
check_fails "ctr snapshots rm of a parent with a child is refused" snaps rm "$CHAIN"
check "ctr snapshots rm of the prepared snapshot" snaps rm k1
check "ctr snapshots view over the top layer" snaps view v1 "$CHAIN"
check_match "its mounts: an overlay of both layers, no upper directory" \
	'^mount -t overlay overlay /tmp/x -o (index=off,)?lowerdir=[^ ,]*/fs:[^ ,]*/fs$' \
	"$(snaps mounts /tmp/x v1 2>&1)"
# (rm first: containerd's garbage collection, run after every deletion here, would take a view
# that no lease or gc.root label holds)
check "ctr snapshots rm of the view" snaps rm v1
BASE=$(snaps ls | awk '$2 == "Committed" {print $1}')
check "ctr snapshots view over the base layer" snaps view v0 "$BASE"
check_match "its mounts: the base layer bound read-only" '^mount -t bind [^ ]*/fs /tmp/x -o ro,rbind$' \
	"$(snaps mounts /tmp/x v0 2>&1)"
check "ctr snapshots rm of the base view" snaps rm v0
check_eq "the prepared snapshot and the views are gone" 2 "$(wait_eq 2 n_records)"
check "records and directories agree" consistent
note "image $REF top $TOP"

# containerd restarts on the same root: it reconnects, the image still runs.
containerd_stop
containerd_start || bail "containerd starts again"
check_eq "the image runs after a containerd restart" content-a "$(run_in r5 cat /data/a.txt 2>&1)"

# Restart: everything is still there.
snap_stop
if snap_start && snap_reachable; then ok "imc-snapshotter restarts"; else not_ok "imc-snapshotter restarts"; fi
check_eq "the snapshots survive the restart" 2 "$(n_records)"
check_eq "and the image still runs" content-a "$(run_in r3 cat /data/a.txt 2>&1)"

# kill -9 between the directory and the record of a Prepare: a directory no record names.
snap_stop
snap_start IMC_SNAP_STOP_AT=prepare-after-mkdir && snap_reachable ||
	bail "imc-snapshotter starts with a stop point"
ctrd snapshots --snapshotter imcache prepare k2 "$CHAIN" >/dev/null 2>&1 &
CTR_PID=$!
if wait_stopped "$SNAP_PID"; then ok "Prepare stops after its directory"; else not_ok "Prepare stops after its directory"; fi
snap_kill
stop_pid "$CTR_PID" 10 || true
check_eq "the killed Prepare left one directory no record names" 1 "$(($(n_dirs) - $(n_records)))"
if snap_start && snap_reachable; then ok "imc-snapshotter restarts after kill -9"; else not_ok "imc-snapshotter restarts after kill -9"; fi
check_eq "the killed Prepare left no snapshot" "" "$(snaps ls | awk '$1 == "k2"')"
check_eq "the image runs after the kill" content-a "$(run_in r4 cat /data/a.txt 2>&1)"

# Removing the image: containerd's garbage collection removes every snapshot and calls Cleanup,
# which takes the orphaned directory too.
check "ctr image rm --sync" ctrd image rm --sync "$REF"
check_eq "no snapshot record is left" 0 "$(wait_eq 0 n_records)"
check_eq "no snapshot directory is left (Cleanup removed the orphan)" 0 "$(n_dirs)"
check_eq "no mount under the test directory is left" "" "$(tmp_mounts)"

containerd_stop
snap_stop
check "the snapshotter removed its socket" test ! -e "$SNAP_SOCK"
done_testing
