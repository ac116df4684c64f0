#!/bin/bash
# Lazy attach (docs/distribution.md, "Lazy attach"): a host whose store lacks a cache attaches it
# from imcd on loopback before its chunks are local.  The attach returns with fewer chunks sent
# than the snapshot has (the background fill is held back by the test-only
# IMC_LAZY_HOLD_BACKGROUND until the test lets it go); a pod reads a file right (sha256), four
# readers at once fetch each chunk once, a second pod shares the lower; the background fill
# completes and the volume is sealed as an ordinary snapshot with the index's sha256 while the
# pods keep working; the last detach ends the FUSE server; a later attach uses the snapshot
# without FUSE and sends nothing.  kill -9 of the FUSE server (the pod then gets an error, never
# bytes) and of imc-attach right after it started the server, each followed by reconcile, leave no
# mount (FUSE included), loop device, process or half-fetched volume; a chunk corrupted on the
# server is an I/O error inside the pod.  The same lazy attach from the registry alone (the
# artifact imcctl push wrote), filled and sealed.  The server's figures (imc-attach list and
# lowers: chunks local/total, bytes on demand and in the background) while the fill is held and
# after the seal, and in reconcile's repair after a kill -9; a prefetch of a cache whose lazy
# server is filling it joins that server (no chunk fetched twice, the server's seal kept).
# imc-runtime on a cold store, with crun and with runc: a container started lazily (IMCACHE_SERVER)
# prints the model file's sha256; without a source its create fails naming the settings; nothing
# is left after either.  imcd restarted with --chunk-size 256K: the index exported again in
# 256 KiB chunks, attached lazily, the same snapshot sealed from it.
# Needs root, loop devices, overlayfs, /dev/fuse, crun and runc; the kill -9 test needs a
# -DIMC_TESTING build.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl skopeo losetup findmnt mkfs.xfs sha256sum xxd zstd debugfs unshare runc crun
need_programs imcd imcctl imc-attach imc-runtime
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || skip_all "needs /dev/fuse"

# The FUSE server's stderr is a log file that goes with its lower: sanitizer reports (a check
# build) go to files here instead, checked at the end.
mkdir -p "$TEST_TMP/asan"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$TEST_TMP/asan/report"

# --- the server: registry, image, imcd, a Ready cache and its index ----------------------------

registry_start_or_bail
LAYOUT=$TEST_TMP/layout
WORK=$TEST_TMP/work
mk_layout "$LAYOUT"
mkimage_busybox_rootfs "$WORK/l1"
mkdir -p "$WORK/l1/blob"
head -c $((24 << 20)) /dev/urandom >"$TEST_TMP/data.bin"
cp "$TEST_TMP/data.bin" "$WORK/l1/blob/data.bin"
L1=$(mk_layer "$LAYOUT" "$WORK/l1" gzip)
M=$(mk_image "$LAYOUT" amd64 "$MK_DEFAULT_CONFIG" "$L1")
mk_tag "$LAYOUT" v1 "$M"
check "image pushes" mkimage_push "$LAYOUT" v1 imc/lazy:v1
DATA_SHA=$(sha256sum <"$TEST_TMP/data.bin" | cut -d' ' -f1)

STATE=$TEST_TMP/server
defer imc_teardown_quiet
_imcd_launch "$STATE" 127.0.0.1:0 --insecure-registry "$REGISTRY" || bail "imcd starts" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL"
_capture imcctl create "$REGISTRY/imc/lazy:v1" --name lazy --wait
ID=$(printf '%s\n' "$out" | tail -n1 | tr -d '[:space:]')
[ "$rc" -eq 0 ] || bail "cache is Ready" "$out"
ok "cache $ID is Ready"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "its index is served" 200 "$HTTP_STATUS"
INDEX=$HTTP_BODY
TOTAL=$(jq '.chunks | length' <<<"$INDEX")
CS=$(jq -r .chunkSize <<<"$INDEX")
note "$TOTAL data chunks of $CS bytes"

# --- the agent ----------------------------------------------------------------------------------

mkdir -p "$TEST_TMP/m"
AGENTS=()
ia() { # STATE ARG...
	local st=$1
	shift
	"$IMC_BIN/imc-attach" --state-dir "$st" --lower-grace 0 --server "$IMCD_URL" "$@"
}
# shellcheck disable=SC2317 # called through defer
cleanup_agents() {
	local a m
	for a in "${AGENTS[@]}"; do
		for m in $(tmp_mounts | grep "^$TEST_TMP/m/" | sort -r); do
			ia "$a" detach "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
		done
		ia "$a" reconcile >/dev/null 2>&1 || true
		umount -l "$a/lowers/$ID.fuse" 2>/dev/null || true
		"$IMC_BIN/imc-attach" --state-dir "$a" teardown >/dev/null 2>&1 || true
	done
}
defer cleanup_agents
pod() {
	mkdir -p "$TEST_TMP/m/$1"
	printf '%s' "$TEST_TMP/m/$1"
}
MARK=0
mark() { MARK=$(wc -l <"$IMCD_LOG"); }
sent() { # chunk GETs answered since the mark
	tail -n +"$((MARK + 1))" "$IMCD_LOG" | grep -c 'GET /v1/chunks/.*: 200' || true
}
dups() { # chunks sent more than once since the mark
	tail -n +"$((MARK + 1))" "$IMCD_LOG" | grep -o 'GET /v1/chunks/sha256:[0-9a-f]*: 200' |
		sort | uniq -d | wc -l
}
server_pid() { cat "$1/lowers/$ID.lazy" 2>/dev/null | tr -d '[:space:]'; }
fuse_mounted() { findmnt -rn --mountpoint "$1/lowers/$ID.fuse" >/dev/null 2>&1; }
# leaks STATE: mounts (pods, lowers, FUSE), loop devices on the FUSE file or the agent's files,
# lower records, states, half-fetched volumes; empty when nothing is left.
leaks() {
	local a=$1
	tmp_mounts | grep -E "^($TEST_TMP/m/|$a/lowers)" | sed 's/^/mount /' || true
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v l="$a/lowers/" -v c="$a/pool/clones/" \
		'index($2, l) == 1 || index($2, c) == 1 { print "loop " $0 }'
	find "$a/lowers" "$a/attachments" "$a/overlays" "$a/pool/scratch/overlays" "$a/pool/volumes" \
		-mindepth 1 -printf 'file %p\n' 2>/dev/null || true # pods go to one of the two
}
no_leaks() { # STATE WHAT [PID]
	local i left
	for i in $(seq 1 100); do
		left=$(leaks "$1")
		[ -z "$left" ] && break
		sleep 0.05
	done
	check_eq "$2: nothing left (mounts incl. FUSE, loop devices, records, volumes)" "" "$left"
	if [ -n "${3:-}" ]; then
		check "$2: the FUSE server (pid $3) is gone" wait_pid_gone "$3"
	fi
}
wait_pid_gone() {
	local i
	for i in $(seq 1 600); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	echo "pid $1 still runs" >&2
	return 1
}

# lazy_stats STATE DIR: the lazyStats of the attach at DIR in `imc-attach list`.
lazy_stats() {
	ia "$1" list 2>/dev/null | jq -c --arg d "$2" '.[] | select(.dir == $d) | .lazyStats'
}
# wait_stats STATE DIR JQ: wait (60 s at most) until JQ holds for the attach's lazyStats (the
# server rewrites its stats file as chunks arrive).
wait_stats() {
	local i
	for i in $(seq 1 600); do
		[ "$(lazy_stats "$1" "$2" | jq -r "$3" 2>/dev/null)" = true ] && return 0
		sleep 0.1
	done
	return 1
}

A1=$TEST_TMP/agent1
AGENTS+=("$A1")
HOLD=$TEST_TMP/go
P1=$(pod p1)
mark
check "lazy attach of $ID at p1 (background fill held)" \
	env IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$IMC_BIN/imc-attach" --state-dir "$A1" --lower-grace 0 \
	--server "$IMCD_URL" attach "$ID" "$P1"
AT_ATTACH=$(sent)
if [ "$AT_ATTACH" -lt "$TOTAL" ]; then
	ok "attach returned with $AT_ATTACH of $TOTAL chunks sent"
else
	not_ok "attach returns before every chunk is local" "$AT_ATTACH of $TOTAL sent"
fi
check "the snapshot is not in the store yet" test ! -e "$A1/pool/snapshots/$ID.img"
check_eq "the FUSE file system is mounted" fuse.imcache \
	"$(findmnt -rn -o FSTYPE --mountpoint "$A1/lowers/$ID.fuse")"
LDEV=$(findmnt -rn -o SOURCE --mountpoint "$A1/lowers/$ID" || true)
check_eq "the lower is ext4 on a loop device over the FUSE file" "$A1/lowers/$ID.fuse/image" \
	"$(losetup -n -O BACK-FILE "$LDEV" | tr -d ' ')"
check_eq "the loop device is read-only" 1 "$(blockdev --getro "$LDEV")"
SPID=$(server_pid "$A1")
check "the FUSE server runs (pid $SPID)" kill -0 "$SPID"
check_eq "p1 is an overlay" overlay "$(findmnt -rn -o FSTYPE --mountpoint "$P1")"
check_eq "p1 reads the model file right" "$DATA_SHA" "$(sha256sum <"$P1/blob/data.bin" | cut -d' ' -f1)"
check_eq "p1 runs busybox from the lazy lower" hi "$("$P1/bin/busybox" echo hi)"

# The per-lower figures while the background fill is held: in list (per attach) and lowers.
wait_stats "$A1" "$P1" '.onDemand.bytes > 0' || true
ST=$(lazy_stats "$A1" "$P1")
note "list: lazyStats $ST"
check_eq "list: the lower has the index's data chunks in all" "$TOTAL" "$(jq -r .chunks <<<"$ST")"
check_eq "list: fewer are local than in all, read ones on demand, none in the background" \
	"true true 0 false" \
	"$(jq -r '"\(.local < .chunks) \(.onDemand.chunks > 0 and .onDemand.bytes > 0) \(.background.chunks) \(.sealed)"' <<<"$ST")"
check_eq "list: local is what came on demand" "$(jq -r .onDemand.chunks <<<"$ST")" \
	"$(jq -r .local <<<"$ST")"
check_eq "lowers: the same figures for the lower, its server alive" "$TOTAL true" \
	"$(ia "$A1" lowers | jq -r --arg id "$ID" '.[] | select(.cacheId == $id) | "\(.lazyStats.chunks) \(.lazyStats.serverAlive)"')"
check "the server keeps them in lowers/<id>.lazy.stats" test -s "$A1/lowers/$ID.lazy.stats"
# The same figures in the Prometheus text format (imc-attach metrics).
M=$(ia "$A1" metrics)
metric() { awk -v k="$1" '$1 == k { print $2 }' <<<"$M"; }
check_eq "metrics: one attach, one lower" "1 1" \
	"$(metric imcache_agent_attaches) $(metric imcache_agent_lowers)"
check_eq "metrics: the lazy lower's chunks in all, local, fetched for reads and in the background" \
	"$TOTAL $(jq -r '"\(.local) \(.onDemand.chunks) 0"' <<<"$ST")" \
	"$(metric "imcache_agent_lazy_chunks{cache_id=\"$ID\"}") $(metric "imcache_agent_lazy_chunks_local{cache_id=\"$ID\"}") $(metric "imcache_agent_lazy_fetched_chunks_total{cache_id=\"$ID\",by=\"demand\"}") $(metric "imcache_agent_lazy_fetched_chunks_total{cache_id=\"$ID\",by=\"background\"}")"
check_eq "metrics: not sealed, its server alive" "0 1" \
	"$(metric "imcache_agent_lazy_sealed{cache_id=\"$ID\"}") $(metric "imcache_agent_lazy_server_alive{cache_id=\"$ID\"}")"
check_eq "metrics: every line a comment or NAME{LABELS} INTEGER" "" \
	"$(grep -Ev '^# (HELP|TYPE) |^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9]+$' <<<"$M")"

# Four readers at once of a file not read yet (page cache dropped first, so reads go to FUSE).
mark
echo 3 >/proc/sys/vm/drop_caches
P2=$(pod p2)
check "a second pod shares the lazy lower" ia "$A1" attach "$ID" "$P2"
READERS=()
for i in 1 2 3 4; do
	(sha256sum <"$P2/blob/data.bin" | cut -d' ' -f1 >"$TEST_TMP/r$i") &
	READERS+=($!)
done
wait "${READERS[@]}"
check_eq "four readers at once read it right" "$DATA_SHA $DATA_SHA $DATA_SHA $DATA_SHA" \
	"$(cat "$TEST_TMP"/r1 "$TEST_TMP"/r2 "$TEST_TMP"/r3 "$TEST_TMP"/r4 | tr '\n' ' ' | sed 's/ $//')"
check_eq "no chunk was sent twice" 0 "$(dups)"

# The background fill, the seal.
mark
touch "$HOLD"
wait_for_file "$A1/pool/snapshots/$ID.img" 120 || true
check "the background fill completes: the snapshot is sealed into the store" \
	test -e "$A1/pool/snapshots/$ID.img"
check_eq "the sealed snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(sha256sum <"$A1/pool/snapshots/$ID.img" | cut -d' ' -f1)"
check_eq "no chunk was sent twice by the background fill" 0 "$(dups)"
check "its index is kept as a local snapshot's" test -s "$A1/chunks/local/$ID.json"
wait_stats "$A1" "$P1" '.sealed' || true
ST=$(lazy_stats "$A1" "$P1")
note "list after the seal: lazyStats $ST"
check_eq "list after the seal: every chunk local, the rest came in the background, sealed" \
	"$TOTAL true true" \
	"$(jq -r '"\(.local) \(.background.chunks > 0 and .background.bytes > 0 and .onDemand.chunks + .background.chunks == .chunks) \(.sealed)"' <<<"$ST")"
echo 3 >/proc/sys/vm/drop_caches
check_eq "the pods keep working after the seal" "$DATA_SHA" "$(sha256sum <"$P1/blob/data.bin" | cut -d' ' -f1)"
check "the FUSE server still runs while pods use it" kill -0 "$SPID"
check "detach p1" ia "$A1" detach "$P1"
check "the FUSE server stays for p2" kill -0 "$SPID"
check "detach p2, the last pod" ia "$A1" detach "$P2"
check "the last detach ends the FUSE server" wait_pid_gone "$SPID"
check_fails "the FUSE file system is unmounted" fuse_mounted "$A1"

mark
P3=$(pod p3)
check "a later attach" ia "$A1" attach "$ID" "$P3"
check_eq "uses the local snapshot, no FUSE" "$A1/pool/snapshots/$ID.img" \
	"$(losetup -n -O BACK-FILE "$(findmnt -rn -o SOURCE --mountpoint "$A1/lowers/$ID")" | tr -d ' ')"
check_fails "no FUSE mount" fuse_mounted "$A1"
check_eq "and sends nothing" 0 "$(sent)"
check_eq "p3 reads the file right" "$DATA_SHA" "$(sha256sum <"$P3/blob/data.bin" | cut -d' ' -f1)"
check "detach p3" ia "$A1" detach "$P3"
no_leaks "$A1" "after the later attach"

# --- kill -9 of the FUSE server, then reconcile -----------------------------------------------

A2=$TEST_TMP/agent2
AGENTS+=("$A2")
P4=$(pod p4)
rm -f "$HOLD"
check "lazy attach at p4" env IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$IMC_BIN/imc-attach" \
	--state-dir "$A2" --lower-grace 0 --server "$IMCD_URL" attach "$ID" "$P4"
SPID=$(server_pid "$A2")
check "its FUSE server runs (pid $SPID)" kill -0 "$SPID"
kill -9 "$SPID"
check "the killed server is gone" wait_pid_gone "$SPID"
echo 3 >/proc/sys/vm/drop_caches
check_fails "a read in the pod fails (an error, not bytes)" sha256sum "$P4/blob/data.bin"
_capture ia "$A2" reconcile
note "$out"
check_match "reconcile undoes the pod and releases the lower" "lazy server" "$out"
check_match "... saying what the dead server had, from its last stats file" \
	"lazy server of cache $ID is gone; [0-9]+ of $TOTAL chunks were local" "$out"
no_leaks "$A2" "kill -9 of the FUSE server + reconcile"
check "the pod directory is no mount" test -z "$(findmnt -rn --mountpoint "$P4")"

# --- kill -9 of imc-attach after it started the server, then reconcile -------------------------

if grep -qa IMC_ATTACH_STOP_AT "$IMC_BIN/imc-attach"; then
	A3=$TEST_TMP/agent3
	AGENTS+=("$A3")
	P5=$(pod p5)
	env IMC_ATTACH_STOP_AT=lazy-after-server IMC_LAZY_HOLD_BACKGROUND="$HOLD" \
		"$IMC_BIN/imc-attach" --state-dir "$A3" --lower-grace 0 --server "$IMCD_URL" \
		attach "$ID" "$P5" &
	APID=$!
	for i in $(seq 1 600); do
		[ "$(ps -o stat= -p "$APID" | cut -c1)" = T ] && break
		sleep 0.05
	done
	check_eq "imc-attach stops after starting the server" T "$(ps -o stat= -p "$APID" | cut -c1)"
	SPID=$(server_pid "$A3")
	check "its FUSE server runs (pid $SPID)" kill -0 "$SPID"
	kill -9 "$APID"
	wait "$APID" 2>/dev/null || true
	_capture ia "$A3" reconcile
	note "$out"
	no_leaks "$A3" "kill -9 of imc-attach after the server started + reconcile" "$SPID"
else
	not_ok "kill -9 of imc-attach needs a -DIMC_TESTING build (make O=build/check SAN=1)"
fi

# --- from the registry alone (the artifact imcctl push wrote) -----------------------------------

_capture imcctl push "$ID" "$REGISTRY/imc/lazysnap:v1" --insecure-registry "$REGISTRY"
check_eq "imcctl push writes the snapshot to the registry" 0 "$rc"
A5=$TEST_TMP/agent5
AGENTS+=("$A5")
P7=$(pod p7)
rm -f "$HOLD"
check "lazy attach at p7 from the registry (no imcd)" env IMC_LAZY_HOLD_BACKGROUND="$HOLD" \
	"$IMC_BIN/imc-attach" --state-dir "$A5" --lower-grace 0 \
	--registry-ref "$REGISTRY/imc/lazysnap:v1" attach "$ID" "$P7"
check "the snapshot is not in that store yet" test ! -e "$A5/pool/snapshots/$ID.img"
check_eq "the FUSE file system is mounted" fuse.imcache \
	"$(findmnt -rn -o FSTYPE --mountpoint "$A5/lowers/$ID.fuse" || true)"
SPID=$(server_pid "$A5")
check_eq "p7 reads the model file right" "$DATA_SHA" "$(sha256sum <"$P7/blob/data.bin" | cut -d' ' -f1)"
touch "$HOLD"
wait_for_file "$A5/pool/snapshots/$ID.img" 120 || true
check_eq "the background fill from the registry seals the snapshot (the index's sha256)" \
	"$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(sha256sum <"$A5/pool/snapshots/$ID.img" 2>/dev/null | cut -d' ' -f1)"
check "detach p7" "$IMC_BIN/imc-attach" --state-dir "$A5" --lower-grace 0 detach "$P7"
no_leaks "$A5" "after the lazy attach from the registry" "$SPID"
rm -f "$HOLD"

# --- a corrupted chunk is an I/O error in the pod ---------------------------------------------

# The chunk that holds the first block of the model file, from the sealed snapshot of agent 1.
BLK=$(debugfs -R "bmap /images/0/rootfs/blob/data.bin 0" "$A1/pool/snapshots/$ID.img" 2>/dev/null | tail -n1)
OFF=$(((BLK * 4096) / CS * CS))
DIG=$(jq -r --argjson o "$OFF" '.chunks[] | select(.offset == $o) | .digest' <<<"$INDEX")
BLOBFILE=$STATE/chunks/sha256/${DIG:7:2}/${DIG:7}.zst
check "the model file's first chunk is stored on imcd ($DIG)" test -s "$BLOBFILE"
cp "$BLOBFILE" "$TEST_TMP/blob.good"
OFFB=$(($(stat -c %s "$BLOBFILE") / 2))
B=$(xxd -p -s "$OFFB" -l 1 "$BLOBFILE")
printf '%02x' $((0x$B ^ 0xff)) | xxd -r -p | dd of="$BLOBFILE" bs=1 seek="$OFFB" conv=notrunc status=none
A4=$TEST_TMP/agent4
AGENTS+=("$A4")
P6=$(pod p6)
check "lazy attach at p6" env IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$IMC_BIN/imc-attach" \
	--state-dir "$A4" --lower-grace 0 --server "$IMCD_URL" attach "$ID" "$P6"
SPID=$(server_pid "$A4")
_capture head -c 4096 "$P6/blob/data.bin"
if [ "$rc" -ne 0 ] && grep -q "Input/output error" <<<"$out"; then
	ok "reading the corrupted chunk is an I/O error in the pod"
else
	not_ok "reading the corrupted chunk is an I/O error" "exit $rc" "$(head -c 200 <<<"$out" | xxd | head -3)"
fi
check "the server names the chunk in its log" grep -q "corrupt twice" "$A4/lowers/$ID.lazy.log"
cp "$TEST_TMP/blob.good" "$BLOBFILE"
check "detach p6" ia "$A4" detach "$P6"
no_leaks "$A4" "after the corrupted chunk" "$SPID"
check "the unsealed volume is gone" test -z "$(ls "$A4/pool/volumes" 2>/dev/null)"

# --- the agent's --cache-size holds for the lazy server too -------------------------------------

# A FUSE server of STATE's (imc-attach lazy-serve with --state-dir STATE), by its command line.
lazy_servers() {
	local c
	for c in /proc/[0-9]*/cmdline; do
		tr '\0' ' ' 2>/dev/null <"$c" | grep -qF -- "--state-dir $1 " &&
			tr '\0' ' ' 2>/dev/null <"$c" | grep -q ' lazy-serve ' && echo "${c//[^0-9]/}"
	done
	return 0
}
A6=$TEST_TMP/agent6
AGENTS+=("$A6")
P8=$(pod p8)
_capture ia "$A6" --cache-size 1M attach "$ID" "$P8"
check_eq "a lazy attach of a cache bigger than --cache-size is refused" 1 "$rc"
check_match "it says the cache size is too small" "more than the cache size 1048576" "$out"
check "p8 is no mount" test -z "$(findmnt -rn --mountpoint "$P8")"
no_leaks "$A6" "the refused lazy attach"
check_eq "the refused lazy attach leaves no FUSE server" "" "$(lazy_servers "$A6")"

# --- prefetch of a cache whose lazy server fills it joins that server -----------------------------

A8=$TEST_TMP/agent8
AGENTS+=("$A8")
P10=$(pod p10)
rm -f "$HOLD"
mark
check "lazy attach at p10 (background fill held)" env IMC_LAZY_HOLD_BACKGROUND="$HOLD" \
	"$IMC_BIN/imc-attach" --state-dir "$A8" --lower-grace 0 --server "$IMCD_URL" attach "$ID" "$P10"
SPID=$(server_pid "$A8")
check_eq "p10 reads the model file right (its chunks on demand)" "$DATA_SHA" \
	"$(sha256sum <"$P10/blob/data.bin" | cut -d' ' -f1)"
ia "$A8" -v prefetch "$ID" >"$TEST_TMP/prefetch.out" 2>&1 &
PF=$!
# Without the join it would fetch the whole snapshot again into the server's volume: chunks
# sent twice, the server's seal broken.
touch "$HOLD"
RC=0
wait "$PF" || RC=$?
check_eq "prefetch exits 0 once the lazy server sealed the cache" 0 "$RC"
check_match "prefetch says it joined the lazy server's fill" "joined its lazy server" \
	"$(cat "$TEST_TMP/prefetch.out")"
check_eq "the snapshot is the lazy server's seal (the index's sha256)" "$(jq -r .sha256 <<<"$INDEX")" \
	"sha256:$(sha256sum <"$A8/pool/snapshots/$ID.img" 2>/dev/null | cut -d' ' -f1)"
check_eq "no chunk was sent twice (prefetch fetched nothing of its own)" 0 "$(dups)"
check "the FUSE server still serves p10" kill -0 "$SPID"
check_eq "p10 still reads the model file right" "$DATA_SHA" \
	"$(sha256sum <"$P10/blob/data.bin" | cut -d' ' -f1)"
check "detach p10" ia "$A8" detach "$P10"
no_leaks "$A8" "after prefetch joined the lazy server" "$SPID"
rm -f "$HOLD"

# The other way round: an attach while a whole fetch (prefetch) of the cache runs waits for it
# (the fetch holds the cache's lower lock), then mounts the fetched snapshot: no lazy server
# writes the volume under the fetch.
if grep -qa IMC_ATTACH_STOP_AT "$IMC_BIN/imc-attach"; then
	A9=$TEST_TMP/agent9
	AGENTS+=("$A9")
	P11=$(pod p11)
	mark
	env IMC_ATTACH_STOP_AT=fetch-locked "$IMC_BIN/imc-attach" --state-dir "$A9" --lower-grace 0 \
		--server "$IMCD_URL" prefetch "$ID" &
	PF=$!
	for i in $(seq 1 600); do
		[ "$(ps -o stat= -p "$PF" | cut -c1)" = T ] && break
		sleep 0.05
	done
	check_eq "prefetch stops with the cache's lower lock held" T "$(ps -o stat= -p "$PF" | cut -c1)"
	"$IMC_BIN/imc-attach" --state-dir "$A9" --lower-grace 0 --server "$IMCD_URL" \
		attach "$ID" "$P11" >"$TEST_TMP/attach9.out" 2>&1 &
	AT=$!
	# The attach blocked on that lock: a waiter of a flock in /proc/locks ("->").
	for i in $(seq 1 600); do
		grep -qE -- "-> FLOCK +ADVISORY +[A-Z]+ +$AT " /proc/locks && break
		sleep 0.05
	done
	check "the attach waits for the prefetch's lock" grep -qE -- "-> FLOCK +ADVISORY +[A-Z]+ +$AT " /proc/locks
	kill -CONT "$PF"
	RC=0
	wait "$PF" || RC=$?
	check_eq "the prefetch completes" 0 "$RC"
	RC=0
	wait "$AT" || RC=$?
	check_eq "then the attach completes" 0 "$RC"
	[ "$RC" -eq 0 ] || note "$(cat "$TEST_TMP/attach9.out")"
	check_eq "on the fetched snapshot, no FUSE" "$A9/pool/snapshots/$ID.img" \
		"$(losetup -n -O BACK-FILE "$(findmnt -rn -o SOURCE --mountpoint "$A9/lowers/$ID")" | tr -d ' ')"
	check_fails "no FUSE mount" fuse_mounted "$A9"
	check_eq "no chunk was sent twice" 0 "$(dups)"
	check_eq "p11 reads the model file right" "$DATA_SHA" \
		"$(sha256sum <"$P11/blob/data.bin" | cut -d' ' -f1)"
	check "detach p11" ia "$A9" detach "$P11"
	no_leaks "$A9" "after the attach that waited for a prefetch"
else
	not_ok "an attach during a prefetch needs a -DIMC_TESTING build (make O=build/check SAN=1)"
fi
rm -f "$HOLD"

# --- imc-runtime on a cold store: a container started lazily, with crun and with runc -----------

# rt_bundle DIR: a bundle whose container prints the model file's sha256 from the cache.
rt_bundle() {
	mkdir -p "$1/rootfs"
	(cd "$1" && rm -f config.json && runc spec >/dev/null)
	jq --arg id "$ID" '.root.path = "rootfs" | .root.readonly = false | .process.terminal = false
		| .process.args = ["/bin/busybox", "sha256sum", "/blob/data.bin"]
		| .annotations = {"imcache.io/cache-id": $id}' "$1/config.json" >"$1/config.json.new"
	mv -f "$1/config.json.new" "$1/config.json"
}
# rt RUNTIME STATE ARG...: imc-runtime with STATE as its store, lowers released at once.  crun
# 1.8 needs a private mount namespace without the hybrid cgroup2 mount at
# /sys/fs/cgroup/unified (see tests/integration/test_runtime.sh); runc runs as is.
rt() {
	local r=$1 st=$2
	shift 2
	if [ "$r" = crun ]; then
		# shellcheck disable=SC2016 # expanded by the inner shell
		IMCACHE_RUNTIME=crun IMCACHE_STATE_DIR=$st IMCACHE_LOWER_GRACE=0 timeout 120 \
			unshare -m --propagation private sh -c \
			'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh "$IMC_BIN/imc-runtime" \
			--root "$TEST_TMP/rt-root-$r" "$@" </dev/null
	else
		IMCACHE_RUNTIME=runc IMCACHE_STATE_DIR=$st IMCACHE_LOWER_GRACE=0 timeout 120 \
			"$IMC_BIN/imc-runtime" --root "$TEST_TMP/rt-root-$r" "$@" </dev/null
	fi
}
for r in crun runc; do
	command -v "$r" >/dev/null || { not_ok "$r is installed"; continue; }
	AR=$TEST_TMP/agent-rt-$r
	AGENTS+=("$AR")
	B=$TEST_TMP/bundle-$r
	rt_bundle "$B"
	cid=imc-lazy-$r-$$
	defer "$r" --root "$TEST_TMP/rt-root-$r" delete --force "$cid"
	mark
	# The background fill held for good: what comes is what the container reads.
	IMCACHE_SERVER=$IMCD_URL IMC_LAZY_HOLD_BACKGROUND=$TEST_TMP/never \
		_capture rt "$r" "$AR" run --bundle "$B" "$cid"
	check_eq "$r: imc-runtime run on a cold store exits 0" 0 "$rc"
	check_eq "$r: the container prints the model file's sha256 from the cache" \
		"$DATA_SHA  /blob/data.bin" "$(printf '%s\n' "$out" | tail -n1)"
	[ "$rc" -eq 0 ] || note "$out" "$(cat "$AR/lowers/$ID.lazy.log" 2>/dev/null)"
	if [ "$(sent)" -gt 0 ] && [ "$(sent)" -lt "$TOTAL" ]; then
		ok "$r: lazily: the chunks it read came from imcd ($(sent) of $TOTAL sent)"
	else
		not_ok "$r: lazily: the chunks it read come from imcd, not all" "$(sent) of $TOTAL sent"
	fi
	check "$r: ... and the snapshot was never whole in the store (no seal)" \
		test ! -e "$AR/pool/snapshots/$ID.img"
	check_eq "$r: the container is gone" "" "$("$r" --root "$TEST_TMP/rt-root-$r" list -q 2>/dev/null | grep -F "$cid" || true)"
	check_eq "$r: no runtime record left" "" "$(ls "$AR/runtime" 2>/dev/null)"
	check_eq "$r: no attach left" 0 "$(ia "$AR" list | jq length)"
	no_leaks "$AR" "$r: after the lazily started container"
	check_eq "$r: no FUSE server left" "" "$(lazy_servers "$AR")"

	# Without a source: the create fails, naming the settings that would fix it.
	AN=$TEST_TMP/agent-rt-$r-nosrc
	AGENTS+=("$AN")
	cid=imc-lazy-nosrc-$r-$$
	defer "$r" --root "$TEST_TMP/rt-root-$r" delete --force "$cid"
	_capture rt "$r" "$AN" create --bundle "$B" "$cid"
	check_eq "$r: create of a cache the store lacks, no source: exit 1" 1 "$rc"
	check_match "$r: ... the error names the settings" \
		"imc-runtime: .*$ID: not in the local store \(set IMCACHE_SERVER=URL of imcd, or IMCACHE_REGISTRY_REF" \
		"$out"
	check_fails "$r: ... the real runtime never created the container" \
		"$r" --root "$TEST_TMP/rt-root-$r" state "$cid"
	check_eq "$r: ... no attach, no record" "0 " \
		"$(ia "$AN" list | jq length) $(ls "$AN/runtime" 2>/dev/null)"
	no_leaks "$AN" "$r: the create without a source"
	check_eq "$r: ... the rootfs dir is empty" "" "$(ls -A "$B/rootfs")"
done

# --- imcd that requires a token: --token alone reaches the lazy server ---------------------------

TOKEN=lazy-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
(umask 077 && jq -n --arg t "$TOKEN" '{tokens: [{token: $t, tenant: "default"}]}' \
	>"$TEST_TMP/imcd.json")
RC=0
imcd_stop || RC=$?
check_eq "imcd stops" 0 "$RC"
_imcd_launch "$STATE" 127.0.0.1:0 --insecure-registry "$REGISTRY" --config "$TEST_TMP/imcd.json" ||
	bail "imcd restarts with a token required" "$(imcd_log_tail 30)"
ok "imcd listens at $IMCD_URL and requires a token"
http GET "$IMCD_URL/v1/imagecaches/$ID/index"
check_eq "a request without the token is refused" 401 "$HTTP_STATUS"
A7=$TEST_TMP/agent7
AGENTS+=("$A7")
P9=$(pod p9)
rm -f "$HOLD"
mark
check "lazy attach at p9 with --token only (no \$IMCACHE_TOKEN)" \
	env -u IMCACHE_TOKEN IMC_LAZY_HOLD_BACKGROUND="$HOLD" "$IMC_BIN/imc-attach" \
	--state-dir "$A7" --lower-grace 0 --server "$IMCD_URL" --token "$TOKEN" attach "$ID" "$P9"
check "the snapshot is not in that store yet" test ! -e "$A7/pool/snapshots/$ID.img"
SPID=$(server_pid "$A7")
check "its FUSE server runs (pid $SPID)" kill -0 "$SPID"
check_fails "the token is not on the server's command line" grep -qaF -- "$TOKEN" \
	"/proc/$SPID/cmdline"
echo 3 >/proc/sys/vm/drop_caches
check_eq "p9 reads the model file right" "$DATA_SHA" "$(sha256sum <"$P9/blob/data.bin" | cut -d' ' -f1)"
if [ "$(sent)" -gt 0 ]; then
	ok "the lazy server fetched $(sent) chunks with the token"
else
	not_ok "the lazy server fetches chunks with the token" "$(tail -n 5 "$A7/lowers/$ID.lazy.log")"
fi
touch "$HOLD"
wait_for_file "$A7/pool/snapshots/$ID.img" 120 || true
check "the background fill with the token seals the snapshot" test -e "$A7/pool/snapshots/$ID.img"
check "detach p9" ia "$A7" detach "$P9"
no_leaks "$A7" "after the lazy attach with --token" "$SPID"
rm -f "$HOLD"

# --- imcd --chunk-size: an index of 256 KiB chunks, attached lazily and sealed -------------------
# The agent takes the chunk size from the index: the same snapshot (its sha256) from smaller chunks.

RC=0
imcd_stop || RC=$?
check_eq "imcd stops" 0 "$RC"
rm -rf "$STATE/chunks"
_imcd_launch "$STATE" 127.0.0.1:0 --insecure-registry "$REGISTRY" --chunk-size 256K ||
	bail "imcd restarts with --chunk-size 256K" "$(imcd_log_tail 30)"
http_settled GET "$IMCD_URL/v1/imagecaches/$ID/index" 120
check_eq "the index is exported again" 200 "$HTTP_STATUS"
INDEX256=$HTTP_BODY
check_eq "its chunks are of 256 KiB" 262144 "$(jq -r .chunkSize <<<"$INDEX256")"
check_eq "it describes the same snapshot" "$(jq -r .sha256 <<<"$INDEX")" "$(jq -r .sha256 <<<"$INDEX256")"
N256=$(jq '.chunks | length' <<<"$INDEX256")
if [ "$N256" -gt "$TOTAL" ]; then
	ok "$N256 chunks of 256 KiB where there were $TOTAL of $CS bytes"
else
	not_ok "more chunks of 256 KiB than of $CS bytes" "$N256 vs $TOTAL"
fi
A10=$TEST_TMP/agent10
AGENTS+=("$A10")
P11=$(pod p11)
check "the snapshot is not in that store yet" test ! -e "$A10/pool/snapshots/$ID.img"
# (--trace-window 0: no startup trace for imcd, whose trace would make the next section's reads
# find their chunks prefetched)
check "lazy attach at p11 from the 256 KiB index" ia "$A10" --trace-window 0 attach "$ID" "$P11"
check_eq "the FUSE file system serves it" fuse.imcache \
	"$(findmnt -rn -o FSTYPE --mountpoint "$A10/lowers/$ID.fuse")"
SPID=$(server_pid "$A10")
check_eq "p11 reads the model file right" "$DATA_SHA" "$(sha256sum <"$P11/blob/data.bin" | cut -d' ' -f1)"
wait_for_file "$A10/pool/snapshots/$ID.img" 120 || true
check "the fill seals the snapshot" test -e "$A10/pool/snapshots/$ID.img"
check_eq "the sealed snapshot has the index's sha256" "$(jq -r .sha256 <<<"$INDEX256")" \
	"sha256:$(sha256sum <"$A10/pool/snapshots/$ID.img" | cut -d' ' -f1)"
check_eq "the local index kept is the 256 KiB one" 262144 "$(jq -r .chunkSize "$A10/chunks/local/$ID.json")"
check_eq "the first agent's local index keeps its $CS-byte chunks" "$CS" \
	"$(jq -r .chunkSize "$A1/chunks/local/$ID.json")"
check "detach p11" ia "$A10" detach "$P11"
no_leaks "$A10" "after the lazy attach from the 256 KiB index" "$SPID"

# --- reads first: a read in order gets read-ahead while the walk in order waits -------------------
# The walk is held (test build hook IMC_LAZY_HOLD_WALK) and imcd has no startup trace of the cache
# (its chunk store was emptied above), so what the background fetches while p12 reads the model
# file in order is the read-ahead of that read (docs/distribution.md, "Reads first").
check "imcd has no startup trace of the cache" test ! -e "$STATE/chunks/trace/$ID.json"
A11=$TEST_TMP/agent11
AGENTS+=("$A11")
P12=$(pod p12)
WALK=$TEST_TMP/walk-go
rm -f "$WALK"
check "lazy attach at p12 (the walk in order held)" env IMC_LAZY_HOLD_WALK="$WALK" \
	"$IMC_BIN/imc-attach" --state-dir "$A11" --lower-grace 0 --server "$IMCD_URL" attach "$ID" "$P12"
SPID=$(server_pid "$A11")
# No kernel read-ahead on the lower's loop device: the pod's reads come one after the other, so the
# chunks ahead of them are the server's read-ahead's to fetch, not those of reads the kernel
# issued early (which the server counts as reads).
LOOP=$(jq -r .device "$A11/lowers/$ID.json")
check "the lower's loop device reads no more than it is asked" \
	sh -c "echo 0 >/sys/block/${LOOP#/dev/}/queue/read_ahead_kb"
echo 3 >/proc/sys/vm/drop_caches
check_eq "p12 reads the model file right, in order" "$DATA_SHA" \
	"$(sha256sum <"$P12/blob/data.bin" | cut -d' ' -f1)"
wait_stats "$A11" "$P12" '.background.chunks > 0' || true
ST=$(lazy_stats "$A11" "$P12")
note "lazyStats $ST"
check_eq "the background fetched read-ahead chunks for the read (more than the read did), and not the rest" \
	"true true true" \
	"$(jq -r '"\(.background.chunks > .onDemand.chunks) \(.onDemand.chunks > 0) \(.local < .chunks)"' <<<"$ST")"
touch "$WALK"
wait_for_file "$A11/pool/snapshots/$ID.img" 120 || true
check "once the walk goes on, the fill seals the snapshot" test -e "$A11/pool/snapshots/$ID.img"
check "detach p12" ia "$A11" detach "$P12"
no_leaks "$A11" "after the read-ahead" "$SPID"

check_eq "no sanitizer report from any process (the FUSE servers included)" "" \
	"$(cat "$TEST_TMP"/asan/report* 2>/dev/null | head -40)"

done_testing
