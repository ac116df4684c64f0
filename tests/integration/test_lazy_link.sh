#!/bin/bash
# Lazy attach over a link that fails (docs/distribution.md, "Sources" and "Lazy reads when the
# network fails"): two hosts on one machine, imcd and the registry in this network namespace,
# the agent in a private one joined by a veth pair on 10.213.X.0/30.  A lazy attach with both
# sources (imcd first, the registry second) reads from imcd; imcd killed mid-fill, the reads go
# on from the registry (imcd abandoned after --source-deadline) and the fill seals, and a whole
# fetch (prefetch) with imcd gone comes from the registry; with the registry first in the order
# ($IMCACHE_SOURCE_ORDER) imcd sends nothing; bad orders and deadlines are refused; a chunk
# corrupted on imcd is read from the registry with both sources, and is an I/O error with imcd
# alone; the link cut during a read (the veth down, the link shaped slow with tc tbf so that
# the read is still running): the read blocks, retries, and after --read-deadline fails with EIO,
# every byte it returned before being the file's; the link restored, a new read works.  The
# namespace, the veth, mounts (FUSE included), loop devices and processes are removed on every
# exit path.
# Needs root, loop devices, overlayfs, /dev/fuse, ip netns, nsenter and tc.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"
. "$(dirname "$0")/../lib/netns.sh"

need_root
need_loop
need_tool jq curl skopeo losetup findmnt mkfs.xfs sha256sum ip nsenter tc xxd zstd debugfs cmp dd
need_programs imcd imcctl imc-attach
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || skip_all "needs /dev/fuse"

# The FUSE servers' stderr is a log file that goes with the lower: sanitizer reports (a check
# build) go to files here instead, checked at the end.
mkdir -p "$TEST_TMP/asan"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$TEST_TMP/asan/report"

netns_pair imc-llink imcll
check "namespace $NS joined by a veth on 10.213.$NET.0/30" netns_pair_up

# --- the server host: registry, image, imcd, a Ready cache, its artifact ----------------------

IMC_REGISTRY_ACCESSLOG=1 IMC_REGISTRY_ADDR=$SERVER_IP registry_start_or_bail
LAYOUT=$TEST_TMP/layout
WORK=$TEST_TMP/work
mk_layout "$LAYOUT"
mkimage_busybox_rootfs "$WORK/l1"
mkdir -p "$WORK/l1/blob"
for f in first second third cut; do
	head -c $((12 << 20)) /dev/urandom >"$TEST_TMP/$f.bin"
	cp "$TEST_TMP/$f.bin" "$WORK/l1/blob/$f.bin"
done
L1=$(mk_layer "$LAYOUT" "$WORK/l1" gzip)
M=$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1")
mk_tag "$LAYOUT" v1 "$M"
check "image pushes" mkimage_push "$LAYOUT" v1 imc/llink:v1
sha() { sha256sum <"$1" | cut -d' ' -f1; }

STATE=$TEST_TMP/server
defer imc_teardown_quiet
_imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" ||
	bail "imcd starts on $SERVER_IP" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL"
_capture imcctl create "$REGISTRY/imc/llink:v1" --name llink --wait
ID=$(printf '%s\n' "$out" | tail -n1 | tr -d '[:space:]')
[ "$rc" -eq 0 ] || bail "cache is Ready" "$out"
ok "cache $ID is Ready"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "its index is served" 200 "$HTTP_STATUS"
INDEX=$HTTP_BODY
CS=$(jq -r .chunkSize <<<"$INDEX")
REF=$REGISTRY/imc/llinksnap:v1
_capture imcctl push "$ID" "$REF" --insecure-registry "$REGISTRY"
check_eq "imcctl push writes the snapshot to the registry" 0 "$rc"
check "the agent's namespace reaches imcd over the veth" \
	nsenter --net="/run/netns/$NS" curl -fsS --max-time 5 -o /dev/null "$IMCD_URL/healthz"

# --- the agent host ---------------------------------------------------------------------------

mkdir -p "$TEST_TMP/m"
AGENTS=()
HOLD=$TEST_TMP/go
# agent_env VAR=VALUE STATE ARG...: imc-attach in the agent's namespace (its mounts are this
# host's) with VAR=VALUE in its environment, the background fill held until $HOLD exists, short
# deadlines; agent STATE ARG...: the same without VAR.
# shellcheck disable=SC2317
agent_env() {
	local e=$1 st=$2
	shift 2
	nsenter --net="/run/netns/$NS" env IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$e" \
		"$IMC_BIN/imc-attach" --state-dir "$st" --lower-grace 0 --insecure-registry "$REGISTRY" \
		--source-deadline 1 --read-deadline 4 "$@"
}
# shellcheck disable=SC2317
agent() { agent_env IMC_TEST_AGENT=1 "$@"; }
# shellcheck disable=SC2317 # called through defer
cleanup_agents() {
	local a m
	ip link set "$VETH" up 2>/dev/null || true
	for a in "${AGENTS[@]}"; do
		for m in $(tmp_mounts | grep "^$TEST_TMP/m/" | sort -r); do
			agent "$a" detach "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
		done
		agent "$a" reconcile >/dev/null 2>&1 || true
		umount -l "$a/lowers/$ID.fuse" 2>/dev/null || true
		"$IMC_BIN/imc-attach" --state-dir "$a" teardown >/dev/null 2>&1 || true
	done
}
defer cleanup_agents
pod() {
	mkdir -p "$TEST_TMP/m/$1"
	printf '%s' "$TEST_TMP/m/$1"
}
server_pid() { tr -d '[:space:]' <"$1/lowers/$ID.lazy" 2>/dev/null; }
lazy_log() { printf '%s' "$1/lowers/$ID.lazy.log"; }
MARK=0
mark() { MARK=$(wc -l <"$REGISTRY_LOG"); }
# Snapshot chunk blobs the registry sent since the mark.
from_registry() {
	tail -n +"$((MARK + 1))" "$REGISTRY_LOG" | grep -c 'GET /v2/imc/llinksnap/blobs/sha256:[0-9a-f]* HTTP/[0-9.]*" 200' || true
}
leaks() {
	local a=$1
	tmp_mounts | grep -E "^($TEST_TMP/m/|$a/lowers)" | sed 's/^/mount /' || true
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v l="$a/lowers/" '
		index($2, l) == 1 { print "loop " $0 }'
	find "$a/lowers" "$a/attachments" "$a/overlays" "$a/pool/scratch/overlays" "$a/pool/volumes" \
		-mindepth 1 -printf 'file %p\n' 2>/dev/null || true # pods go to one of the two
}
# shellcheck disable=SC2317 # called through check
wait_pid_gone() {
	local i
	for i in $(seq 1 600); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	echo "pid $1 still runs" >&2
	return 1
}
no_leaks() { # STATE WHAT PID
	local i left
	for i in $(seq 1 100); do
		left=$(leaks "$1")
		[ -z "$left" ] && break
		sleep 0.05
	done
	check_eq "$2: nothing left (mounts incl. FUSE, loop devices, records, volumes)" "" "$left"
	check "$2: the FUSE server (pid $3) is gone" wait_pid_gone "$3"
}

# --- both sources: imcd first; imcd killed mid-fill, the reads go on from the registry --------

A1=$TEST_TMP/agent1
AGENTS+=("$A1")
P1=$(pod p1)
mark
check "lazy attach with both sources (imcd, then the registry)" \
	agent "$A1" --server "$IMCD_URL" --registry-ref "$REF" attach "$ID" "$P1"
SPID1=$(server_pid "$A1")
check "its FUSE server runs (pid $SPID1)" kill -0 "$SPID1"
check_eq "p1 reads a file right" "$(sha "$TEST_TMP/first.bin")" "$(sha "$P1/blob/first.bin")"
check_eq "from imcd: the registry sent no chunk" 0 "$(from_registry)"

kill -9 "$IMCD_PID"
wait "$IMCD_PID" 2>/dev/null || true
IMCD_PID=
ok "imcd killed (mid-fill: the background fill is held, chunks are missing)"
mark
check_eq "p1 reads another file right, imcd gone" "$(sha "$TEST_TMP/second.bin")" \
	"$(sha "$P1/blob/second.bin")"
if [ "$(from_registry)" -gt 0 ]; then
	ok "the registry sent its chunks ($(from_registry))"
else
	not_ok "the registry sends the chunks once imcd is gone" "$(tail -n 5 "$(lazy_log "$A1")")"
fi
check_eq "imcd is abandoned for the registry, logged once" 1 \
	"$(grep -c 'source imcd abandoned for the registry' "$(lazy_log "$A1")")"
touch "$HOLD"
wait_for_file "$A1/pool/snapshots/$ID.img" 120 || true
check_eq "the background fill from the registry seals the snapshot (the index's sha256)" \
	"$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(sha256sum <"$A1/pool/snapshots/$ID.img" 2>/dev/null | cut -d' ' -f1)"
check "detach p1" agent "$A1" detach "$P1"
no_leaks "$A1" "after imcd was killed" "$SPID1"
rm -f "$HOLD"

# A whole fetch (prefetch) with imcd still gone: the index and the chunks from the registry.
A5=$TEST_TMP/agent5
AGENTS+=("$A5")
_capture agent "$A5" -v --server "$IMCD_URL" --registry-ref "$REF" prefetch "$ID"
check_eq "prefetch with both sources and imcd gone succeeds" 0 "$rc"
check_match "it abandoned imcd for the registry" "source imcd abandoned for the registry" "$out"
check_match "its statistics count the abandoned source" "1 sources abandoned" "$out"
check_eq "the fetched snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(sha256sum <"$A5/pool/snapshots/$ID.img" 2>/dev/null | cut -d' ' -f1)"
AGENTS+=("$TEST_TMP/agent5b")
check_fails_with "prefetch with imcd alone, imcd gone, fails naming it" "cache $ID: from imcd" \
	agent "$TEST_TMP/agent5b" --server "$IMCD_URL" prefetch "$ID"

_imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" ||
	bail "imcd starts again" "$(imcd_log_tail 30)"
ok "imcd runs again at $IMCD_URL"

# --- the order: the registry first ($IMCACHE_SOURCE_ORDER) ------------------------------------

from_imcd() { grep -c 'GET /v1/chunks/.*: 200' "$IMCD_LOG" || true; }
A6=$TEST_TMP/agent6
AGENTS+=("$A6")
P6=$(pod p6)
mark
check "lazy attach with IMCACHE_SOURCE_ORDER=registry,server" \
	agent_env IMCACHE_SOURCE_ORDER=registry,server "$A6" --server "$IMCD_URL" \
	--registry-ref "$REF" attach "$ID" "$P6"
SPID6=$(server_pid "$A6")
check_eq "p6 reads a file right" "$(sha "$TEST_TMP/first.bin")" "$(sha "$P6/blob/first.bin")"
check_eq "imcd sent no chunk" 0 "$(from_imcd)"
if [ "$(from_registry)" -gt 0 ]; then
	ok "the registry sent them ($(from_registry))"
else
	not_ok "the registry, first in the order, sends the chunks"
fi
check "detach p6" agent "$A6" detach "$P6"
no_leaks "$A6" "after the registry-first attach" "$SPID6"

# Bad settings are refused before anything is done.
A7=$TEST_TMP/agent7
check_fails_with "--source-order bogus is refused" "want server,registry or registry,server" \
	agent "$A7" --source-order server,imcd --server "$IMCD_URL" prefetch "$ID"
check_fails_with "\$IMCACHE_SOURCE_ORDER bogus is refused" "IMCACHE_SOURCE_ORDER" \
	agent_env IMCACHE_SOURCE_ORDER=server,server "$A7" --server "$IMCD_URL" prefetch "$ID"
check_fails_with "--read-deadline 0 is refused" "--read-deadline \"0\": want 1-86400 seconds" \
	agent "$A7" --read-deadline 0 --server "$IMCD_URL" prefetch "$ID"
check_fails_with "\$IMCACHE_SOURCE_DEADLINE 5s is refused" "IMCACHE_SOURCE_DEADLINE" \
	agent_env IMCACHE_SOURCE_DEADLINE=5s "$A7" --server "$IMCD_URL" prefetch "$ID"
check "and nothing was made for them" test ! -e "$A7"

# --- a chunk corrupted on imcd -----------------------------------------------------------------

# The chunk that holds the first block of third.bin, from the snapshot agent 1 sealed.
BLK=$(debugfs -R "bmap /images/0/rootfs/blob/third.bin 0" "$A1/pool/snapshots/$ID.img" 2>/dev/null | tail -n1)
OFF=$(((BLK * 4096) / CS * CS))
DIG=$(jq -r --argjson o "$OFF" '.chunks[] | select(.offset == $o) | .digest' <<<"$INDEX")
BLOBFILE=$STATE/chunks/sha256/${DIG:7:2}/${DIG:7}.zst
check "third.bin's first chunk is stored on imcd ($DIG)" test -s "$BLOBFILE"
cp "$BLOBFILE" "$TEST_TMP/blob.good"
restore_blob() { cp "$TEST_TMP/blob.good" "$BLOBFILE"; }
defer restore_blob
OFFB=$(($(stat -c %s "$BLOBFILE") / 2))
B=$(xxd -p -s "$OFFB" -l 1 "$BLOBFILE")
printf '%02x' $((0x$B ^ 0xff)) | xxd -r -p | dd of="$BLOBFILE" bs=1 seek="$OFFB" conv=notrunc status=none

A2=$TEST_TMP/agent2
AGENTS+=("$A2")
P2=$(pod p2)
check "lazy attach with both sources" \
	agent "$A2" --server "$IMCD_URL" --registry-ref "$REF" attach "$ID" "$P2"
SPID2=$(server_pid "$A2")
mark
check_eq "the corrupted chunk is read right, from the registry" "$(sha "$TEST_TMP/third.bin")" \
	"$(sha "$P2/blob/third.bin")"
check_match "the server says it came corrupt from imcd" \
	"offset $OFF: imcd: .*fetching it from the other source" "$(cat "$(lazy_log "$A2")")"
if [ "$(from_registry)" -gt 0 ]; then
	ok "the registry sent it"
else
	not_ok "the registry sends the chunk imcd sent corrupt"
fi
check "detach p2" agent "$A2" detach "$P2"
no_leaks "$A2" "after the corrupted chunk, both sources" "$SPID2"

A3=$TEST_TMP/agent3
AGENTS+=("$A3")
P3=$(pod p3)
check "lazy attach with imcd alone" agent "$A3" --server "$IMCD_URL" attach "$ID" "$P3"
SPID3=$(server_pid "$A3")
_capture head -c 4096 "$P3/blob/third.bin"
if [ "$rc" -ne 0 ] && grep -q "Input/output error" <<<"$out"; then
	ok "with one source, the corrupted chunk is an I/O error in the pod"
else
	not_ok "with one source, the corrupted chunk is an I/O error" "exit $rc" \
		"$(head -c 200 <<<"$out" | xxd | head -3)"
fi
check "the server names the chunk in its log" grep -q "offset $OFF (corrupt twice)" "$(lazy_log "$A3")"
restore_blob
check "detach p3" agent "$A3" detach "$P3"
no_leaks "$A3" "after the corrupted chunk, imcd alone" "$SPID3"

# --- the link cut during a read ------------------------------------------------------------------

A4=$TEST_TMP/agent4
AGENTS+=("$A4")
P4=$(pod p4)
check "lazy attach with both sources (for the cut)" \
	agent "$A4" --server "$IMCD_URL" --registry-ref "$REF" attach "$ID" "$P4"
SPID4=$(server_pid "$A4")
# Shaped slow (a 12 MiB file takes seconds), so that the read still runs when the link goes.
check "the link is shaped to 16 Mbit/s (tc tbf)" \
	tc qdisc add dev "$VETH" root tbf rate 16mbit burst 32kb latency 400ms
echo 3 >/proc/sys/vm/drop_caches
dd if="$P4/blob/cut.bin" of="$TEST_TMP/cut.out" bs=64k status=none 2>"$TEST_TMP/cut.err" &
DD=$!
for i in $(seq 1 600); do
	[ "$(stat -c %s "$TEST_TMP/cut.out" 2>/dev/null || echo 0)" -gt 0 ] && break
	kill -0 "$DD" 2>/dev/null || break
	sleep 0.05
done
check "the read is under way (some bytes came, it still runs)" kill -0 "$DD"
check "the link is cut (the veth down)" ip link set "$VETH" down
check "the server retries the read's chunk" \
	wait_for_match "$(lazy_log "$A4")" "trying again until the read deadline" 60
RC=0
wait "$DD" || RC=$?
if [ "$RC" -ne 0 ] && grep -q "Input/output error" "$TEST_TMP/cut.err"; then
	ok "after the read deadline the read fails with EIO"
else
	not_ok "the read fails with EIO after the read deadline" "exit $RC: $(cat "$TEST_TMP/cut.err")"
fi
GOT=$(stat -c %s "$TEST_TMP/cut.out")
if [ "$GOT" -lt $((12 << 20)) ]; then
	ok "the read stopped at byte $GOT of $((12 << 20))"
else
	not_ok "the read stops before the end of the file" "$GOT bytes"
fi
check "every byte it returned is the file's" cmp -n "$GOT" "$TEST_TMP/cut.out" "$TEST_TMP/cut.bin"
check_match "the server says no source answered within the read deadline" \
	"no source answered within the read deadline" "$(cat "$(lazy_log "$A4")")"
check "the link is restored" ip link set "$VETH" up
tc qdisc del dev "$VETH" root 2>/dev/null || true
for i in $(seq 1 100); do
	nsenter --net="/run/netns/$NS" curl -fsS --max-time 2 -o /dev/null "$IMCD_URL/healthz" 2>/dev/null && break
	sleep 0.1
done
check_eq "a new read works and is right" "$(sha "$TEST_TMP/cut.bin")" "$(sha "$P4/blob/cut.bin")"
check "detach p4" agent "$A4" detach "$P4"
no_leaks "$A4" "after the cut link" "$SPID4"

check_eq "no sanitizer report from any process (the FUSE servers included)" "" \
	"$(cat "$TEST_TMP"/asan/report* 2>/dev/null | head -40)"

done_testing
