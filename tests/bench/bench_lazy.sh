#!/bin/bash
# bench_lazy.sh: a pod on a cold host from a cache that host has never seen (issue 15), over a
# veth link shaped with tc tbf; and the chunk size of the index, measured with the same pod.
#
#   BENCH_LAZY_SIZES ("2048 8192")   image sizes, MiB: a busybox layer and a model file of the
#                                    rest in an uncompressed layer (random, incompressible)
#   BENCH_LAZY_RATES ("1gbit 10gbit") link rates (tc units)
#   BENCH_LAZY_CHUNKS ("512K 1M 4M") chunk sizes compared (imcd --chunk-size), with the first
#                                    image size and rate; "" skips the comparison
#   BENCH_LAZY_CHUNK                 the chunk size of the other rows; default: the one the
#                                    comparison picks (rule below), else imcd's default
#   BENCH_LAZY_CTR_MAX_MB (2048)     ctr image pull + run for images up to this size (0: never)
#   BENCH_LAZY_STARTUP_MB (64)       what the pod reads before its first output ...
#   BENCH_LAZY_PIECE_KB (1024)       ... in pieces of this size spread over the model file
#   BENCH_OUT                        the markdown table (build/bench/lazy.md); the numbers go
#                                    to build/bench/lazy_start.dat, lazy_read.dat, lazy_chunks.dat
#   BENCH_LAZY_APPEND (0)            1: add the rows to lazy_start.dat and lazy_read.dat as they
#                                    are (a later run of other sizes, e.g. BENCH_LAZY_SIZES=8192)
#
# Two hosts on one machine (tests/lib/netns.sh): the registry, imcd and nginx here, the agent in
# a network namespace of its own behind the veth.  Every contender starts on a new, empty agent
# state (a cold host: nothing of the cache local) and is timed from its first command to the pod's
# first output; the pod is `chroot DIR /bin/sh -c PROBE` on the attached rootfs (busybox), PROBE
# reading the startup set (BENCH_LAZY_STARTUP_MB in pieces at spread, 4 KiB-aligned offsets of
# /model/model.bin, the same offsets every time) and printing its byte count:
#   lazy            imc-attach --server URL attach ID DIR (a lazy lower: FUSE, chunks on first
#                   read, the background fill going on meanwhile), then the pod; once more
#                   with --parallel 1 (one background fetcher instead of 4: how much the fill
#                   slows the reads the pod waits for)
#   lazy + trace    the same on a second cold host once imcd has the startup trace of the first
#                   (GET /v1/imagecaches/{id}/trace answers 200); until imcd records traces the
#                   row says so and is not measured
#   prefetch        imc-attach --no-lazy attach (the whole snapshot fetched, verified, sealed),
#                   then the pod
#   ctr             `ctr image pull --plain-http` of the same image in the agent's namespace (ctr
#                   fetches, its containerd unpacks), then `ctr run --rm` of the pod (plain runc)
# "bytes on the link" is what the server side of the veth sent from the first command to the
# output (its tx counter: HTTP and TCP/IP headers included, and the lazy lower's background fill).
# Then the whole model file read through a fresh lazy lower (dd bs=4M) against curl of the same
# bytes (the layer blob, from nginx with sendfile) over the same link, to /dev/null.
#
# The chunk sizes: for each, imcd restarted with --chunk-size and its chunk store emptied, the
# export timed (GET index until 200), the index's size, the lazy pod's first output and bytes, and
# the prefetch's fill rate (the snapshot's data / its time).  The rule that picks the chunk size
# of the other rows: the least bytes before the first output among the sizes that fill at 90 % of
# the best fill rate or more (ties: the larger chunk, the smaller index).
#
# Needs root, loop devices, /dev/fuse, overlayfs, ip netns, tc, nsenter, nginx, skopeo, curl, jq
# (and containerd, ctr and runc for the ctr rows).  IMC_BIN: a release build (make bench).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/../lib/netns.sh
. "$here/../lib/netns.sh"
# shellcheck source=SCRIPTDIR/../lib/containerd.sh
. "$here/../lib/containerd.sh"

SIZES=${BENCH_LAZY_SIZES-2048 8192}
RATES=${BENCH_LAZY_RATES-1gbit 10gbit}
CHUNKS=${BENCH_LAZY_CHUNKS-512K 1M 4M}
CHUNK=${BENCH_LAZY_CHUNK:-}
CTR_MAX_MB=${BENCH_LAZY_CTR_MAX_MB:-2048}
STARTUP_MB=${BENCH_LAZY_STARTUP_MB:-64}
PIECE_KB=${BENCH_LAZY_PIECE_KB:-1024}
OUT=${BENCH_OUT:-$IMC_ROOT/build/bench/lazy.md}

bench_need jq curl skopeo ip tc nsenter nginx chroot
[ "$CTR_MAX_MB" -eq 0 ] || bench_need containerd ctr runc
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || {
	echo "${0##*/}: needs /dev/fuse" >&2
	exit 1
}
for v in $SIZES; do
	[ "$v" -ge 64 ] || {
		echo "${0##*/}: BENCH_LAZY_SIZES: $v MiB is too small (64 MiB at least)" >&2
		exit 1
	}
done
read -r RATE1 _ <<<"$RATES"
read -r SIZE1 _ <<<"$SIZES"
mkdir -p "$(dirname "$OUT")" "$BENCH_DIR"

netns_pair imc-blazy imcl
netns_pair_up
IMC_REGISTRY_ADDR=$SERVER_IP registry_start >/dev/null
STATE=$TEST_TMP/server
defer imc_teardown_quiet
MNT=$TEST_TMP/pod
mkdir -p "$MNT"
AGENT_N=0

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b ? 100 * a / b : 0 }'; }
mibs() { awk -v b="$1" -v ms="$2" 'BEGIN { printf "%.0f", ms ? b / 1048576 / (ms / 1000) : 0 }'; }

# --- the image: busybox + a model file, in the registry; the model layer's blob for curl --------

# make_image MB: sets REF, MODEL_BYTES, BLOB (the model layer's file in the registry's storage).
make_image() {
	local mb=$1 layout=$TEST_TMP/layout work=$TEST_TMP/work l1 l2 m
	rm -rf "$layout" "$work"
	mk_layout "$layout"
	mkimage_busybox_rootfs "$work/l1"
	l1=$(mk_layer "$layout" "$work/l1" gzip)
	MODEL_BYTES=$(((mb - 2) << 20))
	mkdir -p "$work/l2/model"
	mk_random_bytes "$MODEL_BYTES" >"$work/l2/model/model.bin"
	l2=$(mk_layer "$layout" "$work/l2" none)
	rm -rf "$work"
	m=$(mk_image "$layout" amd64 "$MK_DEFAULT_CONFIG" "$l1" "$l2")
	mk_tag "$layout" v1 "$m"
	REF=$REGISTRY/bench/lazy$mb:v1
	# Byte for byte: skopeo would gzip the uncompressed model layer (and change its digest).
	mkimage_push "$layout" v1 "bench/lazy$mb:v1" --preserve-digests
	BLOB=$(registry_blob_path "$(jq -r .digest <<<"${l2% *}")")
	rm -rf "$layout"
}

# The startup set: PIECES pieces of PIECE_KB at spread offsets of the model file (4 KiB blocks),
# the same for every contender; PROBE reads them and prints how many bytes it read (WANT).
make_probe() {
	local pieces=$((STARTUP_MB * 1024 / PIECE_KB)) blocks=$((PIECE_KB / 4)) skips
	skips=$(awk -v n="$pieces" -v total=$((MODEL_BYTES / 4096)) -v len="$blocks" 'BEGIN {
		srand(15); stride = int(total / n)
		for (i = 0; i < n; i++) printf "%d ", i * stride + int(rand() * (stride - len)) }')
	PROBE="for s in $skips; do /bin/busybox dd if=/model/model.bin bs=4096 skip=\$s count=$blocks 2>/dev/null; done | wc -c"
	WANT=$((pieces * blocks * 4096))
}

# --- imcd, and its export at a chunk size --------------------------------------------------------

# imcd_up [CHUNK]: imcd (re)started on the server's address; with CHUNK, --chunk-size CHUNK
# (IMCD_CHUNK says which).  A cache's index is exported once it is Ready.
IMCD_CHUNK=
imcd_up() {
	imcd_stop || true
	IMCD_CHUNK=$1
	_imcd_launch "$STATE" "$SERVER_IP:0" --insecure-registry "$REGISTRY" --log-level info \
		--blob-cache-max 1M --sweep-interval 1 ${1:+--chunk-size "$1"}
}

# export_at CHUNK: the index at CHUNK ("": imcd's default): the one imcd exported when the cache
# became Ready if it runs with CHUNK, else exported anew by an imcd restarted with CHUNK and an
# empty chunk store; sets EXPORT_MS (imcd's log), INDEX_BYTES, NCHUNKS, CS (the index's
# chunkSize), CBYTES (compressed data) and DATA_BYTES.
export_at() {
	local ix=$TEST_TMP/index.json
	if [ "$1" != "$IMCD_CHUNK" ]; then
		imcd_stop || true
		rm -rf "$STATE/chunks"
		imcd_up "$1"
	fi
	while [ "$(curl -sS -o "$ix" -w '%{http_code}' "$IMCD_URL/v1/imagecaches/$ID/index")" = 202 ]; do
		sleep 0.1
	done
	EXPORT_MS=$(sed -n "s/.*cache $ID: chunk index exported (\([0-9.]*\) s).*/\1/p" "$IMCD_LOG" |
		tail -n1 | awk '{ printf "%.0f", $1 * 1000 }')
	jq -e .chunkSize "$ix" >/dev/null || {
		echo "${0##*/}: no index: $(head -c 300 "$ix")" >&2
		return 1
	}
	INDEX_BYTES=$(stat -c %s "$ix")
	CS=$(jq .chunkSize "$ix")
	NCHUNKS=$(jq '.chunks | length' "$ix")
	CBYTES=$(jq '[.chunks[].csize] | add' "$ix")
	DATA_BYTES=$(jq --argjson cs "$CS" --argjson size "$(jq .size "$ix")" \
		'[.chunks[].offset | if . + $cs > $size then $size - . else $cs end] | add' "$ix")
}

# --- the contenders, each on a new cold host ------------------------------------------------------

# new_agent: an empty agent state with its pool (made before any clock starts); sets AGENT.
new_agent() {
	AGENT_N=$((AGENT_N + 1))
	AGENT=$TEST_TMP/agent$AGENT_N
	defer bench_agent_down "$AGENT" "$MNT"
	"$IMC_BIN/imc-attach" --state-dir "$AGENT" list >/dev/null 2>&1
	sync
}

agent_failed() {
	echo "${0##*/}: imc-attach attach failed:" >&2
	tail -n 20 "$TEST_TMP/agent.log" >&2
	return 1
}

# agent_gone: the pod detached, the lazy lower and its FUSE server released, the pool torn down
# and the state removed.
agent_gone() {
	bench_agent_down "$AGENT" "$MNT"
	rm -rf --one-file-system "$AGENT"
}

# pod_first_output T0 B0 WHAT: the pod on MNT; sets T_MS and BYTES (since T0 and B0).
pod_first_output() {
	local out
	out=$(chroot "$MNT" /bin/sh -c "$PROBE")
	T_MS=$(($(now_ms) - $1))
	BYTES=$(($(bench_tx_bytes "$VETH") - $2))
	[ "$out" = "$WANT" ] || {
		echo "${0##*/}: $3: the pod read '$out' bytes, not $WANT" >&2
		return 1
	}
}

# cold_attach lazy|prefetch [OPTION...]: imc-attach [OPTION...] attach on a new cold host, then
# the pod; T_MS, BYTES.
cold_attach() {
	local t0 b0 mode=$1
	shift
	[ "$mode" = prefetch ] && set -- --no-lazy "$@"
	new_agent
	b0=$(bench_tx_bytes "$VETH")
	t0=$(now_ms)
	bench_agent "$AGENT" --server "$IMCD_URL" "$@" attach "$ID" "$MNT" >/dev/null 2>>"$TEST_TMP/agent.log" ||
		agent_failed
	pod_first_output "$t0" "$b0" "$mode"
	agent_gone
}

# cold_ctr: ctr image pull + ctr run --rm of the pod; T_MS, BYTES.  The image and its content
# are removed after (GC synchronous).
cold_ctr() {
	local t0 b0 out
	b0=$(bench_tx_bytes "$VETH")
	t0=$(now_ms)
	# ctr fetches the layers itself (containerd 1.6: the client pulls into the content store).
	nsenter --net="/run/netns/$NS" ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" \
		image pull --plain-http "$REF" >/dev/null
	out=$(timeout 600 ctr --address "$CTRD_ADDR" --namespace "$CTRD_NS" run --rm \
		--runc-root "$CTRD_RUNC_ROOT" "$REF" "bench-lazy-$AGENT_N" /bin/sh -c "$PROBE" </dev/null)
	T_MS=$(($(now_ms) - t0))
	BYTES=$(($(bench_tx_bytes "$VETH") - b0))
	AGENT_N=$((AGENT_N + 1))
	ctrd image rm --sync "$REF" >/dev/null
	[ "$out" = "$WANT" ] || {
		echo "${0##*/}: ctr: the pod read '$out' bytes, not $WANT" >&2
		return 1
	}
}

# lazy_read: the whole model file through a fresh lazy lower; READ_MS (the read alone).
lazy_read() {
	local t0
	new_agent
	bench_agent "$AGENT" --server "$IMCD_URL" attach "$ID" "$MNT" >/dev/null 2>>"$TEST_TMP/agent.log" ||
		agent_failed
	t0=$(now_ms)
	dd if="$MNT/model/model.bin" of=/dev/null bs=4M status=none
	READ_MS=$(($(now_ms) - t0))
	agent_gone
}

# curl_read: the model layer's blob from nginx over the link; CURL_MS, CURL_BYTES.
curl_read() {
	local t0
	t0=$(now_ms)
	CURL_BYTES=$(nsenter --net="/run/netns/$NS" curl -fsS -o /dev/null -w '%{size_download}' \
		"$NGINX_URL/model.tar")
	CURL_MS=$(($(now_ms) - t0))
}

# trace_code: what imcd answers for the cache's startup trace (200 once it records them).
trace_code() {
	curl -s -o /dev/null -w '%{http_code}' "$IMCD_URL/v1/imagecaches/$ID/trace" || true
}

# --- the run ----------------------------------------------------------------------------------------

START_ROWS=$TEST_TMP/start.rows
READ_ROWS=$TEST_TMP/read.rows
CHUNK_ROWS=$TEST_TMP/chunk.rows
: >"$START_ROWS"
: >"$READ_ROWS"
: >"$CHUNK_ROWS"
if [ "$CTR_MAX_MB" -gt 0 ]; then
	# containerd in the agent's namespace, so that its pulls cross the link.
	mkdir -p "$TEST_TMP/nsbin"
	printf '#!/bin/sh\nexec nsenter --net=/run/netns/%s %s "$@"\n' "$NS" "$(command -v containerd)" \
		>"$TEST_TMP/nsbin/containerd"
	chmod +x "$TEST_TMP/nsbin/containerd"
	PATH=$TEST_TMP/nsbin:$PATH containerd_start "$TEST_TMP/containerd"
fi
WEB=$TEST_TMP/web
mkdir -p "$WEB"
bench_nginx_start "$WEB" "$SERVER_IP"

# chunk_pick: the rule of the header, over CHUNK_ROWS (chunk first_output_ms bytes fill_mibs).
chunk_pick() {
	awk '{ c[NR] = $1; b[NR] = $3; f[NR] = $4; if ($4 > best) best = $4 }
		END { for (i = 1; i <= NR; i++) if (f[i] >= 0.9 * best && (!w || b[i] < b[w] ||
			(b[i] == b[w] && c[i] > c[w]))) w = i
			if (w) print c[w] }' "$1"
}

for mb in $SIZES; do
	step "image of $mb MiB"
	make_image "$mb"
	make_probe
	rm -f "$WEB/model.tar"
	ln "$BLOB" "$WEB/model.tar"
	if [ "$mb" = "$SIZE1" ] && [ -n "$CHUNKS" ]; then
		imcd_up "${CHUNKS%% *}"
	else
		imcd_up "$CHUNK"
	fi
	snap_mb=$((mb + mb / 8 + 256)) # room for ext4's metadata; 1024 at least (the builder's minimum)
	[ "$snap_mb" -ge 1024 ] || snap_mb=1024
	ID=$(imcctl create "$REF" --size "$((snap_mb << 20))" --wait --timeout 3600 |
		tail -n1 | tr -d '[:space:]')
	if [ "$mb" = "$SIZE1" ] && [ -n "$CHUNKS" ]; then
		bench_shape "$VETH" "$RATE1"
		for c in $CHUNKS; do
			step "chunks of $c: export, lazy, prefetch over $RATE1"
			export_at "$c"
			cold_attach lazy
			LZ_MS=$T_MS LZ_B=$BYTES
			cold_attach prefetch
			printf '%s %s %s %s %s %s %s %s\n' "$CS" "$LZ_MS" "$LZ_B" \
				"$(mibs "$DATA_BYTES" "$T_MS")" "$INDEX_BYTES" "$NCHUNKS" "$EXPORT_MS" \
				"$T_MS" >>"$CHUNK_ROWS"
		done
		[ -n "$CHUNK" ] || CHUNK=$(chunk_pick "$CHUNK_ROWS")
	fi
	if [ -z "${CS:-}" ] || [ "$CS" != "$CHUNK" ]; then
		step "export${CHUNK:+ at $CHUNK}"
		export_at "$CHUNK"
	fi
	CHUNK_USED=$CS
	for rate in $RATES; do
		bench_shape "$VETH" "$rate"
		g=$(bench_rate_gbit "$rate")
		step "$mb MiB over $rate: lazy"
		cold_attach lazy
		printf '"lazy"\t%s\t%s\t%s\t%s\n' "$mb" "$g" "$T_MS" "$BYTES" >>"$START_ROWS"
		step "$mb MiB over $rate: lazy, one background fetcher (--parallel 1)"
		cold_attach lazy --parallel 1
		printf '"lazy, --parallel 1"\t%s\t%s\t%s\t%s\n' "$mb" "$g" "$T_MS" "$BYTES" >>"$START_ROWS"
		code=$(trace_code)
		if [ "$code" = 200 ]; then
			step "$mb MiB over $rate: lazy with the startup trace"
			cold_attach lazy
			printf '"lazy + trace"\t%s\t%s\t%s\t%s\n' "$mb" "$g" "$T_MS" "$BYTES" >>"$START_ROWS"
		else
			printf '"lazy + trace"\t%s\t%s\t-\t%s\n' "$mb" "$g" "$code" >>"$START_ROWS"
		fi
		step "$mb MiB over $rate: prefetch, then attach"
		cold_attach prefetch
		printf '"prefetch"\t%s\t%s\t%s\t%s\n' "$mb" "$g" "$T_MS" "$BYTES" >>"$START_ROWS"
		if [ "$mb" -le "$CTR_MAX_MB" ]; then
			step "$mb MiB over $rate: ctr image pull + run"
			cold_ctr
			printf '"ctr pull + run"\t%s\t%s\t%s\t%s\n' "$mb" "$g" "$T_MS" "$BYTES" >>"$START_ROWS"
		fi
		step "$mb MiB over $rate: the whole model file, lazily and with curl"
		lazy_read
		curl_read
		printf '%s\t%s\t%s\t%s\n' "$mb" "$g" "$(mibs "$MODEL_BYTES" "$READ_MS")" \
			"$(mibs "$CURL_BYTES" "$CURL_MS")" >>"$READ_ROWS"
	done
	eval "DATA_$mb=$DATA_BYTES CBYTES_$mb=$CBYTES CS_$mb=$CHUNK_USED"
	imcctl delete --force "$ID" >/dev/null # the agents' attach reports went without --server
	imcd_stop
	CS=
	rm -f "$WEB/model.tar"
	registry_stop
	rm -rf "$REGISTRY_ROOT"
	IMC_REGISTRY_ADDR=$SERVER_IP registry_start >/dev/null
done

# --- tables and data files --------------------------------------------------------------------------

{
	echo "Cold host, lazy attach (issue 15): a pod (busybox sh) that reads a ${STARTUP_MB} MiB startup set"
	echo "($((STARTUP_MB * 1024 / PIECE_KB)) pieces of ${PIECE_KB} KiB spread over the model file) and prints; timed from the first"
	echo "command on an empty agent state to that output.  Bytes: what the server's side of the veth"
	echo "sent meanwhile (headers and the lazy lower's background fill included); % of the snapshot's"
	echo "data (its non-zero chunks).  One run per row, release build."
	echo
	echo "| image | link | contender | first output | bytes on the link before it | % of the data |"
	echo "|---|---|---|---|---|---|"
	while IFS=$'\t' read -r who mb g ms b; do
		who=${who//\"/}
		data_var=DATA_$mb
		if [ "$ms" = - ]; then
			echo "| $mb MiB | $g Gbit/s | $who | not measured: GET /v1/imagecaches/{id}/trace answers $b (imcd records no startup trace yet) | - | - |"
		else
			echo "| $mb MiB | $g Gbit/s | $who | $(ms_to_s "$ms" 2) | $(mib "$b") MiB | $(pct "$b" "${!data_var}") % |"
		fi
	done <"$START_ROWS"
	echo
	for mb in $SIZES; do
		cs_var=CS_$mb
		echo "Chunks of the $mb MiB image's index: $((${!cs_var} >> 10)) KiB."
	done
	echo
	echo "| image | link | whole model file through the lazy lower (dd bs=4M) | curl of the same bytes (nginx, sendfile) | lazy / curl (goal ≥ 0.8×) |"
	echo "|---|---|---|---|---|"
	while IFS=$'\t' read -r mb g lz cu; do
		echo "| $mb MiB | $g Gbit/s | $lz MiB/s | $cu MiB/s | $(ratio "$lz" "$cu") |"
	done <"$READ_ROWS"
	if [ -s "$CHUNK_ROWS" ]; then
		echo
		echo "Chunk size ($SIZE1 MiB image, $RATE1): imcd --chunk-size, its chunk store emptied, the export timed;"
		echo "lazy: the pod's first output; prefetch: the whole snapshot's data fetched, verified and sealed."
		echo
		echo "| chunk | index | export | lazy: first output | lazy: bytes before it | prefetch: time | fill rate |"
		echo "|---|---|---|---|---|---|---|"
		while read -r cs lms lb fill ib n ems pms; do
			echo "| $((cs >> 10)) KiB | $(awk -v b="$ib" 'BEGIN { printf "%.0f", b / 1024 }') KiB ($n chunks) | $(ms_to_s "$ems") | $(ms_to_s "$lms" 2) | $(mib "$lb") MiB | $(ms_to_s "$pms") | $fill MiB/s |"
		done <"$CHUNK_ROWS"
		echo
		echo "Picked by the rule (least bytes before the first output among the sizes within 90 % of the best fill rate): $(($(chunk_pick "$CHUNK_ROWS") >> 10)) KiB."
	fi
	echo
	echo "Trace: GET /v1/imagecaches/{id}/trace answered $(awk -F'\t' '$1 == "\"lazy + trace\"" { print ($4 == "-" ? $5 : 200) }' "$START_ROWS" | sort -u | paste -sd/)."
	echo
	bench_machine
	echo "Load average at the end (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')."
} | tee "$OUT"

# lazy_dat NAME WHAT COLUMN...: bench_dat, or with BENCH_LAZY_APPEND=1 and NAME.dat there, a
# comment line saying when and under which load the rows below it were added.
lazy_dat() {
	if [ "${BENCH_LAZY_APPEND:-0}" = 1 ] && [ -s "$BENCH_DIR/$1.dat" ]; then
		printf '# load: %s (the rows below: sizes %s, %s)\n' "$(cut -d' ' -f1-3 /proc/loadavg)" \
			"$SIZES" "$(date -u +%Y-%m-%d)" >>"$BENCH_DIR/$1.dat"
	else
		bench_dat "$@"
	fi
}
lazy_dat lazy_start "a pod's first output on a cold host, seconds, and the bytes on the link before it, MiB (startup set ${STARTUP_MB} MiB in ${PIECE_KB} KiB pieces)" \
	contender image_mib link_gbit first_output_s bytes_mib
while IFS=$'\t' read -r who mb g ms b; do
	[ "$ms" = - ] && continue
	bench_row lazy_start "${who//\"/}" "$mb" "$g" "$(secs "$ms")" "$(mib "$b")"
done <"$START_ROWS"
lazy_dat lazy_read "the whole model file read over the link, MiB/s: through the lazy lower vs curl" \
	image_mib link_gbit lazy_mibs curl_mibs
while IFS=$'\t' read -r mb g lz cu; do
	bench_row lazy_read "$mb" "$g" "$lz" "$cu"
done <"$READ_ROWS"
if [ -s "$CHUNK_ROWS" ]; then
	bench_dat lazy_chunks "chunk size vs first output (s), bytes before it (MiB), fill rate (MiB/s), index (KiB) ($SIZE1 MiB image, $RATE1)" \
		chunk_kib first_output_s bytes_mib fill_mibs index_kib export_s
	while read -r cs lms lb fill ib n ems pms; do
		bench_row lazy_chunks "$((cs >> 10))" "$(secs "$lms")" "$(mib "$lb")" "$fill" \
			"$(awk -v b="$ib" 'BEGIN { printf "%.1f", b / 1024 }')" "$(secs "$ems")"
	done <"$CHUNK_ROWS"
fi
