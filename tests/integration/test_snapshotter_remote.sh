#!/bin/bash
# imc-snapshotter --server on a node whose store is empty: imcd (tokens on, two tenants) holds a
# cache of a one-layer image; Debian's containerd 1.6 with the CRI plugin (snapshotter
# "imcache") pulls it through tests/tools/cri-pull (the kubelet's PullImage).  The Prepare of its
# layer finds no local cache, asks imcd by the layer's ChainID and attaches the cache lazily (the
# shared lower of attach/lower.c on imc-attach's FUSE server): the registry's access log shows no
# layer blob fetched, and the container prints the image's file while the background fill is
# held (IMC_LAZY_HOLD_BACKGROUND) and after the fill sealed the cache into the node's store.
# Removing the image releases the lower, the FUSE mount and its server.  --auto-create with a
# tenant's token: a pull of an image no cache holds succeeds through the ordinary path (its layer
# fetched from the registry) and imcd gets a create for that ref under that tenant; an image of
# two layers that both miss is asked for once.  The caches become Ready, and a second
# snapshotter on a fresh state dir (with a fresh containerd) pulls the first image with no layer
# blob fetched.  Nothing is left: containerd, snapshotters, FUSE servers, imcd and the registry
# by PID, mounts (FUSE included), loop devices, the test's directory.
# Needs root, loop devices, overlayfs and /dev/fuse; the hold needs a -DIMC_TESTING build.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/containerd.sh"

need_root
need_loop
need_tool jq curl skopeo containerd ctr runc findmnt losetup mkfs.xfs mkfs.ext4 sha256sum
need_programs imcd imcctl imc-attach imc-snapshotter tests/cri-pull
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || skip_all "needs /dev/fuse"

# The FUSE servers' stderr is a log file that goes with their lower: sanitizer reports (a check
# build) go to files here instead, checked at the end.
mkdir -p "$TEST_TMP/asan"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$TEST_TMP/asan/report"

CTRD_NS=k8s.io # the CRI's namespace
SNAP_SOCK=$TEST_TMP/snap/snapshotter.sock
SNAP_PID=
SNAP_LOG=$TEST_TMP/snapshotter.log
SNAP_DIR=
SNAP_ARGS=()
HOLD=$TEST_TMP/go

eval "$(declare -f _containerd_config | sed '1s/_containerd_config/_containerd_config_base/')"
_containerd_config() {
	_containerd_config_base | grep -v '"io.containerd.grpc.v1.cri",'
	containerd_cri_imcache_config "$SNAP_SOCK"
}
snap_start() { # [ENV=VALUE...]
	local i n
	n=$(grep -c 'serving snapshots' "$SNAP_LOG" 2>/dev/null || true)
	env IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$@" "$IMC_BIN/imc-snapshotter" -v --address "$SNAP_SOCK" \
		--state-dir "$SNAP_DIR" "${SNAP_ARGS[@]}" >>"$SNAP_LOG" 2>&1 &
	SNAP_PID=$!
	for ((i = 0; i < 200; i++)); do
		[ "$(grep -c 'serving snapshots' "$SNAP_LOG")" -gt "${n:-0}" ] && return 0
		kill -0 "$SNAP_PID" 2>/dev/null || break
		sleep 0.05
	done
	tail -n 20 "$SNAP_LOG" >&2
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
wait_stopped() {
	local i
	for ((i = 0; i < 400; i++)); do
		[ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" = T ] && return 0
		sleep 0.05
	done
	return 1
}
snaps() { ctrd snapshots --snapshotter imcache "$@"; }
# shellcheck disable=SC2317 # called through check
cri_pull() { "$IMC_BIN/tests/cri-pull" "$CTRD_ADDR" "$1"; }
# containerd's connection to the snapshotter may still be re-establishing after a kill (its
# transport reports "unavailable" then): a pull that fails so is tried again, at most 5 times.
# shellcheck disable=SC2317 # called through check
cri_pull_retry() {
	local i out
	for ((i = 0; i < 5; i++)); do
		out=$(cri_pull "$1" 2>&1) && return 0
		grep -q unavailable <<<"$out" || break
		note "pull attempt $((i + 1)): $out"
		sleep 1
	done
	echo "$out" >&2
	return 1
}
# shellcheck disable=SC2317 # called through check
rm_images() {
	local refs
	refs=$(ctrd image ls -q)
	# shellcheck disable=SC2086 # one argument per reference
	[ -z "$refs" ] || ctrd image rm --sync $refs >/dev/null
}
run_in() { # REF NAME CMD...
	local ref=$1 name=$2
	shift 2
	timeout 120 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm --snapshotter imcache \
		--runc-root "$CTRD_RUNC_ROOT" "$ref" "$name" "$@" </dev/null
}
api() { # TOKEN PATH: GET with the token; sets HTTP_STATUS and HTTP_BODY
	local out
	out=$(mktemp "$TEST_TMP/.api.XXXXXX")
	HTTP_STATUS=$(curl -sS --noproxy '*' --max-time 30 -o "$out" -w '%{http_code}' \
		-H "Authorization: Bearer $1" "$IMCD_URL$2" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out")
	rm -f "$out"
}
index_served() { # TOKEN ID: until imcd serves the cache's chunk index (at most 120 s)
	local i
	for ((i = 0; i < 600; i++)); do
		api "$1" "/v1/imagecaches/$2/index"
		[ "$HTTP_STATUS" = 200 ] && return 0
		sleep 0.2
	done
	return 1
}
urlenc() { jq -rn --arg v "$1" '$v|@uri'; }
# The caches of tenant TOKEN with image REF (as written) and their statuses, "ID STATUS" lines.
caches_of() { # TOKEN REF
	api "$1" "/v1/imagecaches?image=$(urlenc "$2")"
	jq -r '.items[] | "\(.id) \(.status)"' <<<"$HTTP_BODY" 2>/dev/null
}
layer_gets() { # MARK BLOB...: GETs of those layer blobs in the registry log since MARK
	local mark=$1 b n=0
	shift
	for b in "$@"; do
		n=$((n + $(tail -n +"$((mark + 1))" "$REGISTRY_LOG" | grep -c "GET /v2/.*/blobs/$b" || true)))
	done
	echo "$n"
}
# shellcheck disable=SC2317 # called through check
fuse_mounted() { findmnt -rn --mountpoint "$1/lowers/$2.fuse" >/dev/null 2>&1; }
lazy_server() { tr -d '[:space:]' <"$1/lowers/$2.lazy" 2>/dev/null; }
node_mounts() { findmnt -rn -o TARGET | grep "^$1/lowers/" || true; }
wait_eq() { # WANT CMD...: until CMD prints WANT; at most 30 s
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
# shellcheck disable=SC2317 # called through check
wait_pid_gone() {
	local i
	for ((i = 0; i < 600; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}

# --- images: "one" (cached on imcd), "two" (one layer of its own), "three" (two of its own) -----
IMC_REGISTRY_ACCESSLOG=1 registry_start_or_bail
LAYOUT=$TEST_TMP/layout
W=$TEST_TMP/work
mk_layout "$LAYOUT"
mkimage_busybox_rootfs "$W/l1"
mkimage_busybox_rootfs "$W/t1"
mkimage_busybox_rootfs "$W/u1"
mkdir -p "$W/l1/only" "$W/t1/two" "$W/u1/three" "$W/u2/three"
printf 'from-cache\n' >"$W/l1/only/cached.txt"
head -c $((8 << 20)) /dev/urandom >"$W/l1/only/data.bin"
DATA_SHA=$(sha256sum <"$W/l1/only/data.bin" | cut -d' ' -f1)
printf 'auto\n' >"$W/t1/two/auto.txt"
printf 'base\n' >"$W/u1/three/base.txt"
printf 'top\n' >"$W/u2/three/top.txt"
L1=$(mk_layer "$LAYOUT" "$W/l1" gzip) && T1=$(mk_layer "$LAYOUT" "$W/t1" gzip) &&
	U1=$(mk_layer "$LAYOUT" "$W/u1" gzip) && U2=$(mk_layer "$LAYOUT" "$W/u2" gzip) ||
	bail "layers are made"
mk_tag "$LAYOUT" one "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1")"
mk_tag "$LAYOUT" two "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$T1")"
mk_tag "$LAYOUT" three "$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$U1" "$U2")"
for t in one two three; do
	mkimage_push "$LAYOUT" "$t" "snapr/$t:v1" || bail "image $t pushes"
done
REF1=$REGISTRY/snapr/one:v1
REF2=$REGISTRY/snapr/two:v1
REF3=$REGISTRY/snapr/three:v1
L1_BLOB=$(jq -r .digest <<<"${L1% *}")
T1_BLOB=$(jq -r .digest <<<"${T1% *}")
TOP2=${T1#* }
TOP1=${L1#* }

# --- imcd with two tenants; tenant a's cache of "one" ------------------------------------------
TOKEN_A=tenant-a-token-0123456789abcdef
TOKEN_B=tenant-b-token-0123456789abcdef
CFG=$TEST_TMP/imcd.json
(umask 077 && jq -n --arg a "$TOKEN_A" --arg b "$TOKEN_B" \
	'{tokens: [{token: $a, tenant: "team-a"}, {token: $b, tenant: "team-b"}]}' >"$CFG")
STATE=$TEST_TMP/server
# Builds wait while $BUILD_GO is missing (test build hook IMC_BUILD_HOLD): the two-layer image's
# cache is held Creating while containerd pulls it, so that both its layers miss.
BUILD_GO=$TEST_TMP/build-go
touch "$BUILD_GO"
export IMC_BUILD_HOLD=$BUILD_GO
imcd_start_or_bail "$STATE" --config "$CFG" --insecure-registry "$REGISTRY"
unset IMC_BUILD_HOLD
OUT=$(imcctl --token "$TOKEN_A" create "$REF1" --name snapr --wait 2>"$TEST_TMP/imcctl.err") || OUT=
ID=$(printf '%s\n' "$OUT" | tail -n1 | tr -d '[:space:]')
[[ "$ID" =~ ^imc- ]] || bail "tenant a's cache of $REF1 is Ready" "$(cat "$TEST_TMP/imcctl.err")"
ok "tenant a's cache $ID of $REF1 is Ready"
index_served "$TOKEN_A" "$ID" || bail "imcd serves the index of $ID" "$HTTP_STATUS $HTTP_BODY"
ok "imcd serves its chunk index"
api "$TOKEN_A" "/v1/imagecaches?chainId=$TOP1&status=Ready"
check_eq "imcd finds it by the layer's ChainID" "$ID" "$(jq -r '[.items[].id] | join(" ")' <<<"$HTTP_BODY")"
api "$TOKEN_B" "/v1/imagecaches?chainId=$TOP1"
check_eq "not for another tenant" 0 "$(jq '.items | length' <<<"$HTTP_BODY")"
api "$TOKEN_A" "/v1/imagecaches?chainId=sha256:nothex"
check_eq "a malformed chainId is 400" 400 "$HTTP_STATUS"
check_match "naming the parameter" 'chainId \\"sha256:nothex\\": want sha256: and 64' "$HTTP_BODY"

# --- node 1: an empty store, --server and tenant a's token ---------------------------------------
NODE=$TEST_TMP/node1
NODE2=$TEST_TMP/node2
# shellcheck disable=SC2317 # called through defer
nodes_teardown() {
	local n m
	snap_stop
	for n in "$NODE" "$NODE2"; do
		for m in $(node_mounts "$n" | sort -r); do
			umount -l "$m" 2>/dev/null || true
		done
		if findmnt -rn --mountpoint "$n/pool" >/dev/null 2>&1; then
			"$IMC_BIN/imc-attach" --state-dir "$n" teardown >/dev/null 2>&1 || true
		fi
	done
	return 0
}
defer nodes_teardown
mkdir -p "$(dirname "$SNAP_SOCK")" "$TEST_TMP/cni/bin" "$TEST_TMP/cni/conf"
SNAP_DIR=$NODE
SNAP_ARGS=(--server "$IMCD_URL" --token "$TOKEN_A")
snap_start || bail "imc-snapshotter starts on an empty node with --server"
ok "imc-snapshotter starts on an empty node with --server"
containerd_start "$TEST_TMP/ctrd1" || bail "containerd starts"

MARK=$(wc -l <"$REGISTRY_LOG")
check "a CRI pull of the image imcd holds" cri_pull "$REF1"
check_match "the registry served its manifest" 'GET /v2/snapr/one/manifests/' \
	"$(tail -n +"$((MARK + 1))" "$REGISTRY_LOG")"
check_eq "and no layer blob" 0 "$(layer_gets "$MARK" "$L1_BLOB")"
check_match "the snapshotter asked imcd by the ChainID" "auto-match: $TOP1: cache $ID on " "$(cat "$SNAP_LOG")"
check_match "the layer's snapshot names the cache" "\"imcache.io/cache-id\": \"$ID\"" "$(snaps info "$TOP1" 2>&1)"
check_eq "the cache is attached lazily: its FUSE file system is mounted" fuse.imcache \
	"$(findmnt -rn -o FSTYPE --mountpoint "$NODE/lowers/$ID.fuse" || true)"
check_eq "under the host's shared lower, ext4" ext4 "$(findmnt -rn -o FSTYPE --mountpoint "$NODE/lowers/$ID" || true)"
SPID=$(lazy_server "$NODE" "$ID")
check "its FUSE server runs (pid $SPID)" kill -0 "${SPID:-0}"
check "the cache is not in the node's store yet (the fill is held)" test ! -e "$NODE/pool/snapshots/$ID.img"
check_eq "the container prints the image's file while the fill is held" from-cache \
	"$(run_in "$REF1" r1 cat /only/cached.txt 2>&1)"
check_eq "and reads its data right" "$DATA_SHA" "$(run_in "$REF1" r2 sh -c 'sha256sum </only/data.bin' 2>&1 | cut -d' ' -f1)"
touch "$HOLD"
wait_for_file "$NODE/pool/snapshots/$ID.img" 120 || true
check "the background fill seals the cache into the node's store" test -e "$NODE/pool/snapshots/$ID.img"
echo 3 >/proc/sys/vm/drop_caches
check_eq "the container prints the file after the fill" from-cache "$(run_in "$REF1" r3 cat /only/cached.txt 2>&1)"
check_eq "no layer blob was fetched all along" 0 "$(layer_gets "$MARK" "$L1_BLOB")"
check "ctr image rm --sync" rm_images
check_eq "the shared lower is released" "" "$(wait_eq "" node_mounts "$NODE")"
check "its FUSE server is gone" wait_pid_gone "${SPID:-0}"
check_fails "no FUSE mount is left" fuse_mounted "$NODE" "$ID"
check_eq "nothing of it is left in the lowers directory" "" \
	"$(find "$NODE/lowers" -mindepth 1 -maxdepth 1 -name "$ID*" 2>/dev/null)"

# --- --auto-create: images no cache holds -------------------------------------------------------
snap_stop
SNAP_ARGS=(--server "$IMCD_URL" --token "$TOKEN_A" --auto-create)
snap_start || bail "imc-snapshotter starts with --auto-create"
ok "imc-snapshotter starts with --auto-create"
MARK=$(wc -l <"$REGISTRY_LOG")
check "a CRI pull of an image no cache holds" cri_pull_retry "$REF2"
# (imcd's build of the cache fetches the blob too, at the same time: at least one GET)
N=$(layer_gets "$MARK" "$T1_BLOB")
if [ "$N" -ge 1 ]; then ok "it went the ordinary way: its layer fetched from the registry"; else not_ok "its layer fetched from the registry" "$N GETs"; fi
INFO=$(snaps info "$TOP2" 2>&1 || true)
check_match "and unpacked by containerd" '"Kind": "Committed"' "$INFO"
check_eq "not served from a cache" "" "$(grep imcache.io/cache-id <<<"$INFO" || true)"
check_eq "the container runs" auto "$(run_in "$REF2" r4 cat /two/auto.txt 2>&1)"
check_eq "the snapshotter asked imcd to create a cache of it" 1 \
	"$(grep -c "auto-create: $REF2: imcd creates cache" "$SNAP_LOG" || true)"
NEW=$(caches_of "$TOKEN_A" "$REF2" | awk '{print $1}')
check_match "imcd has a cache of that ref under tenant a" '^imc-[0-9a-f]+$' "$NEW"
check_eq "and none under tenant b" "" "$(caches_of "$TOKEN_B" "$REF2")"
LOGMARK=$(wc -l <"$SNAP_LOG")
rm -f "$BUILD_GO"
check "a CRI pull of an image of two layers no cache holds" cri_pull "$REF3"
check_eq "both its layers missed" 2 \
	"$(tail -n +"$((LOGMARK + 1))" "$SNAP_LOG" | grep -c 'no cache serves it: .*no Ready cache of chain' || true)"
check_eq "the create was asked once for the ref" 1 \
	"$(grep -c "auto-create: $REF3: imcd creates cache" "$SNAP_LOG" || true)"
check_eq "the container runs" "base top" \
	"$(run_in "$REF3" r5 cat /three/base.txt /three/top.txt 2>&1 | tr '\n' ' ' | sed 's/ $//')"
check_eq "its cache was Creating all along (its build held)" Creating \
	"$(caches_of "$TOKEN_A" "$REF3" | awk '{print $2}')"
touch "$BUILD_GO"
settled() { # TOKEN REF: the status of its one cache once it is not Creating
	local i st
	for ((i = 0; i < 600; i++)); do
		st=$(caches_of "$1" "$2" | awk '{print $2}')
		[ "$st" != Creating ] && break
		sleep 0.2
	done
	echo "$st"
}
check_eq "the cache of the one-layer image becomes Ready" Ready "$(settled "$TOKEN_A" "$REF2")"
check_eq "so does the two-layer image's" Ready "$(settled "$TOKEN_A" "$REF3")"
index_served "$TOKEN_A" "$NEW" || true
check_eq "the first one's index is served" 200 "$HTTP_STATUS"
check "ctr image rm --sync" rm_images
check_eq "no lower is left on node 1" "" "$(wait_eq "" node_mounts "$NODE")"
containerd_stop
snap_stop

# --- node 2: a fresh state dir and containerd; the auto-created cache serves the pull -----------
# First a kill -9 between the shared lower's reference and the snapshot's record (stop point
# remote-after-mount): the restart drops the reference and releases the lower.  The fill is held
# again, so the cache stays on its lazy lower on this node.
rm -f "$HOLD"
SNAP_DIR=$NODE2
SNAP_ARGS=(--server "$IMCD_URL" --token "$TOKEN_A")
snap_start IMC_SNAP_STOP_AT=remote-after-mount || bail "a second imc-snapshotter starts on a fresh state dir"
ok "a second imc-snapshotter starts on a fresh state dir (a stop point set)"
containerd_start "$TEST_TMP/ctrd2" || bail "a fresh containerd starts"
cri_pull "$REF2" >"$TEST_TMP/stopped-pull.out" 2>&1 &
CTR_PID=$!
if wait_stopped "$SNAP_PID"; then
	ok "Prepare stops after the shared lower is taken"
else
	not_ok "Prepare stops after the shared lower is taken" "$(tail -n 5 "$SNAP_LOG")"
fi
SPID=$(lazy_server "$NODE2" "$NEW")
snap_kill
stop_pid "$CTR_PID" 10 || true
check_eq "the killed Prepare left the lazy lower mounted" ext4 \
	"$(findmnt -rn -o FSTYPE --mountpoint "$NODE2/lowers/$NEW" || true)"
check_match "with the snapshot's reference" '^snap-[0-9]+$' "$(ls "$NODE2/lowers/$NEW.refs" 2>/dev/null)"
records_of() { # CACHE: the records naming it (none before the first record is written)
	if [ -e "$NODE2/snapshotter/meta.json" ]; then
		jq --arg c "$1" '[.snapshots[] | select(.cache == $c)] | length' "$NODE2/snapshotter/meta.json"
	else
		echo 0
	fi
}
check_eq "and no record naming the cache" 0 "$(records_of "$NEW")"
snap_start || bail "imc-snapshotter restarts after kill -9"
ok "imc-snapshotter restarts after kill -9"
check_match "and reports the repair" 'repair: .*dropped 1 reference' "$(cat "$SNAP_LOG")"
check_eq "the orphaned lower is released" "" "$(wait_eq "" node_mounts "$NODE2")"
check "its FUSE server is gone" wait_pid_gone "${SPID:-0}"
MARK=$(wc -l <"$REGISTRY_LOG")
check "a CRI pull of the image on the second node" cri_pull_retry "$REF2"
check_eq "no layer blob fetched" 0 "$(layer_gets "$MARK" "$T1_BLOB")"
check_match "its layer is served by the auto-created cache" "\"imcache.io/cache-id\": \"$NEW\"" \
	"$(snaps info "$TOP2" 2>&1)"
check_eq "the container runs" auto "$(run_in "$REF2" r6 cat /two/auto.txt 2>&1)"
SPID=$(lazy_server "$NODE2" "$NEW")
check "ctr image rm --sync" rm_images
check_eq "the second node's lower is released" "" "$(wait_eq "" node_mounts "$NODE2")"
check "its FUSE server is gone" wait_pid_gone "${SPID:-0}"

containerd_stop
snap_stop
nodes_teardown
check_eq "no mount under the test directory but imcd's pool" "$STATE/pool" "$(tmp_mounts)"
check_eq "no loop device on the nodes' files" "" \
	"$(losetup -n -O NAME,BACK-FILE -l | grep -E "$NODE/|$NODE2/" || true)"
check_eq "no imc-snapshotter process is left" "" "$(pgrep -f "[i]mc-snapshotter -v --address $SNAP_SOCK" || true)"
check_eq "no FUSE server of the nodes is left" "" \
	"$(pgrep -f "[i]mc-attach --state-dir ($NODE|$NODE2) " || true)"
check_eq "no sanitizer report" "" "$(cat "$TEST_TMP"/asan/report* 2>/dev/null || true)"
done_testing
