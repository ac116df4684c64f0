#!/bin/bash
# plot.sh DATA_DIR OUT_DIR: the benchmark plots, PNG through gnuplot, from the data files the
# benches write (tests/bench/lib.sh: bench_dat; '#' header lines, then tab-separated rows).
#
#   attach_size.png  attach p50/p99 vs snapshot size, each attach mode    (attach_size.dat)
#   attach_conc.png  attach p50/p99 vs attaches at once, each attach mode (attach_conc.dat)
#   pod_start.png    a container under containerd: from a cache vs pulling the image (pod_start.dat)
#   build.png        imcd build vs skopeo copy + umoci unpack and curl | tar (build_big.dat,
#                    build_layers.dat)
#   attach_modes.png attach p50/p99 vs attaches at once, overlay vs clone mode (overlay_attach.dat)
#   page_cache.png   the page cache N pods of one cache use, overlay vs clone (overlay_pagecache.dat)
#   cold_start.png   a pod's first output on a cold host vs image size and link rate: lazy attach,
#                    prefetch, ctr pull + run (lazy_start.dat)
#   chunk_size.png   chunk size vs bytes before the first output and fill rate (lazy_chunks.dat)
#
# The caption of each plot is the machine and the date of its data files' headers.  make bench
# draws build/bench/*.png from build/bench/*.dat; make plots draws docs/plots/*.png from the
# latest data kept in docs/bench-data/.  A plot whose data files are all missing (a run with a
# few BENCH_PARTS) is left out with a note; with PLOT_STRICT=1 (make plots) that is an error.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: ${0##*/} DATA_DIR OUT_DIR" >&2
	exit 2
fi
IN=$1
OUT=$2
command -v gnuplot >/dev/null || {
	echo "${0##*/}: needs gnuplot (scripts/install-deps.sh installs gnuplot-nox)" >&2
	exit 1
}
mkdir -p "$OUT"
made=0
missing=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/imc-plot.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# rows_where FILE NAME COLUMN VALUE: FILE's rows whose first field is "NAME" and whose COLUMN
# (1-based) is VALUE, into $TMP (prints the path).
rows_where() {
	local out=$TMP/${1##*/}.$2.$3.$4
	out=${out// /_}
	awk -F'\t' -v m="\"$2\"" -v c="$3" -v v="$4" '!/^#/ && $1 == m && $c == v' "$1" >"$out"
	printf '%s\n' "$out"
}

# rows_of FILE MODE: FILE's rows whose first field is "MODE", into $TMP (prints the path).
rows_of() {
	local out=$TMP/${1##*/}.$2
	awk -F'\t' -v m="\"$2\"" '!/^#/ && $1 == m' "$1" >"$out"
	printf '%s\n' "$out"
}

# max_of "COLUMN..." FILE...: the largest value in those columns (1-based) of FILEs' rows.
max_of() {
	local c=$1
	shift
	awk -F'\t' -v cs="$c" 'BEGIN { n = split(cs, col, " ") }
		!/^#/ { for (i = 1; i <= n; i++) if ($col[i] + 0 > m) m = $col[i] + 0 }
		END { print m + 0 }' "$@"
}

# header FILE KEY: the value of the "# KEY: ..." line of a data file.
header() { sed -n "s/^# $2: //p" "$1" | head -n1; }

# caption FILE...: "machine, date, load" of the files: each distinct machine and date once, then
# the load average of each file (1, 5, 15 min), made safe for a gnuplot string in double quotes.
caption() {
	local f loads
	# Every "# load:" line (a bench that added rows later adds one).
	loads=$(for f in "$@"; do sed -n 's/^# load: //p' "$f" | cut -d' ' -f1-3; done | sed '/^$/d' | paste -sd '/' |
		sed 's|/| / |g')
	{
		for f in "$@"; do
			printf '%s, %s\n' "$(header "$f" machine)" "$(header "$f" date)"
		done | awk '!seen[$0]++' | paste -sd ';' | sed 's/;/; /g'
	} | sed "s|\$|${loads:+, load $loads}|; s/[\"\\\\]/ /g"
}

# have NAME FILE...: all FILEs exist; otherwise note it (or fail under PLOT_STRICT).
have() {
	local name=$1 f
	shift
	for f in "$@"; do
		[ -s "$f" ] && continue
		echo "${0##*/}: $name.png left out: no $f" >&2
		missing=$((missing + 1))
		return 1
	done
}

# The settings every plot shares; $1 is the file, $2 the title, $3 the caption.
preamble() {
	cat <<EOF
set terminal pngcairo size 960,560 font "DejaVu Sans,11" noenhanced
set output "$1"
set title "$2" font ",14"
set label 99 "$3" at screen 0.01, screen 0.025 font ",9" textcolor rgb "#555555"
set bmargin 6
set grid ytics lc rgb "#dddddd"
set key top left box opaque
set datafile separator "\t"
set datafile commentschars "#"
EOF
}

plot_attach_size() {
	local d=$IN/attach_size.dat
	have attach_size "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/attach_size.png" "Attach latency vs snapshot size (one attach at a time)" "$(caption "$d")")
set xlabel "data in the snapshot (GiB, log scale)"
set ylabel "attach latency (ms)"
set logscale x 2
set yrange [0:*]
set xtics ("1" 1, "2" 2, "4" 4, "8" 8, "16" 16, "32" 32, "64" 64)
set offsets graph 0.05, graph 0.05, graph 0.1, 0
plot "$(rows_of "$d" mount)" using (\$2/1024):4 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "mount mode, p50", \
     "" using (\$2/1024):5 with linespoints lw 2 pt 7 dt 2 lc rgb "#1f77b4" title "mount mode, p99", \
     "$(rows_of "$d" block)" using (\$2/1024):4 with linespoints lw 2 pt 5 lc rgb "#d62728" title "block mode, p50", \
     "" using (\$2/1024):5 with linespoints lw 2 pt 5 dt 2 lc rgb "#d62728" title "block mode, p99"
EOF
	made=$((made + 1))
}

plot_attach_conc() {
	local d=$IN/attach_conc.dat
	have attach_conc "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/attach_conc.png" "Attach latency vs attaches at once ($(header "$d" 'imcache bench' | sed 's/.*, \([0-9]* MiB\) snapshot.*/\1 snapshot/'))" "$(caption "$d")")
set xlabel "attaches at once (threads, each attaching and detaching in a loop)"
set ylabel "attach latency (ms)"
set yrange [0:*]
set offsets graph 0.03, graph 0.03, graph 0.1, 0
plot "$(rows_of "$d" mount)" using 2:4 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "mount mode, p50", \
     "" using 2:5 with linespoints lw 2 pt 7 dt 2 lc rgb "#1f77b4" title "mount mode, p99", \
     "$(rows_of "$d" block)" using 2:4 with linespoints lw 2 pt 5 lc rgb "#d62728" title "block mode, p50", \
     "" using 2:5 with linespoints lw 2 pt 5 dt 2 lc rgb "#d62728" title "block mode, p99"
EOF
	made=$((made + 1))
}

plot_pod_start() {
	local d=$IN/pod_start.dat
	have pod_start "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/pod_start.png" "Container start under containerd: from a cache vs pulling the image" "$(caption "$d")")
set ylabel "time to the container's exit, median (ms, log scale)"
set logscale y 10
set yrange [10:*]
set style fill solid 0.8 border -1
set boxwidth 0.6
set xtics rotate by -20 left font ",10"
set bmargin 9
unset key
plot "$d" using 0:3:(strstrt(strcol(1), "cache") > 0 ? 0x2ca02c : 0xff7f0e):xtic(1) with boxes lc rgb variable, \
     "$d" using 0:3:(sprintf("%.0f ms", \$3)) with labels offset 0,0.8 font ",10"
EOF
	made=$((made + 1))
}

plot_build() {
	local a=$IN/build_big.dat b=$IN/build_layers.dat
	have build "$a" "$b" || return 0
	grep -hv '^#' "$a" "$b" >"$TMP/build.dat"
	gnuplot <<EOF
$(preamble "$OUT/build.png" "Getting an image onto a host: imcd build vs pull + unpack" "$(caption "$a" "$b")")
set ylabel "time (s)"
set yrange [0:$(max_of "2 3 4" "$a" "$b") * 1.45]
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top center box opaque
plot "$TMP/build.dat" using 2:xtic(1) lc rgb "#ff7f0e" title "skopeo copy + umoci unpack", \
     "" using 3 lc rgb "#9467bd" title "curl | tar -x, layer by layer", \
     "" using 4 lc rgb "#2ca02c" title "imcd build (POST to Ready: pull, verify, mkfs, apply, seal)", \
     "" using (\$0 - 0.25):2:(sprintf("%.1f s", \$2)) with labels offset 0,0.7 font ",10" notitle, \
     "" using 0:3:(sprintf("%.1f s", \$3)) with labels offset 0,0.7 font ",10" notitle, \
     "" using (\$0 + 0.25):4:(sprintf("%.1f s", \$4)) with labels offset 0,0.7 font ",10" notitle
EOF
	made=$((made + 1))
}

plot_attach_modes() {
	local d=$IN/overlay_attach.dat
	have attach_modes "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/attach_modes.png" "Attach latency vs attaches at once: overlay mode vs clone mode ($(header "$d" 'imcache bench' | sed 's/.*, \([0-9]* MiB\) snapshot.*/\1 snapshot/'))" "$(caption "$d")")
set xlabel "attaches at once (threads, each attaching and detaching in a loop)"
set ylabel "attach latency (ms)"
set yrange [0:*]
set offsets graph 0.03, graph 0.03, graph 0.1, 0
plot "$(rows_of "$d" overlay)" using 2:3 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "overlay mode (shared lower + overlayfs), p50", \
     "" using 2:4 with linespoints lw 2 pt 7 dt 2 lc rgb "#2ca02c" title "overlay mode, p99", \
     "$(rows_of "$d" clone)" using 2:3 with linespoints lw 2 pt 5 lc rgb "#1f77b4" title "clone mode (a clone per pod), p50", \
     "" using 2:4 with linespoints lw 2 pt 5 dt 2 lc rgb "#1f77b4" title "clone mode, p99"
EOF
	made=$((made + 1))
}

plot_page_cache() {
	local d=$IN/overlay_pagecache.dat
	have page_cache "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/page_cache.png" "Page cache used by N pods that each read the same data (one cache)" "$(caption "$d")")
set xlabel "pods that have read all the data (each its own rootfs)"
set ylabel "page cache of the data (MiB)"
set yrange [0:*]
set xtics 1
set offsets graph 0.03, graph 0.03, graph 0.1, 0
plot "$(rows_of "$d" clone)" using 2:3 with linespoints lw 2 pt 5 lc rgb "#1f77b4" title "clone mode (a clone per pod)", \
     "$(rows_of "$d" overlay)" using 2:3 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "overlay mode (one shared read-only lower)", \
     "" using 2:4 with lines lw 1 dt 3 lc rgb "#555555" title "the data itself (1x)"
EOF
	made=$((made + 1))
}

# The contenders of cold_start.png, each in its colour; the 10 Gbit/s lines dashed.
COLD_WHO=("lazy" "lazy, --parallel 1" "lazy + trace" "prefetch" "ctr pull + run")
COLD_RGB=("#2ca02c" "#8c564b" "#17becf" "#1f77b4" "#ff7f0e")

plot_cold_start() {
	local d=$IN/lazy_start.dat g f i pl=() rates
	have cold_start "$d" || return 0
	mapfile -t rates < <(awk -F'\t' '!/^#/ { print $3 }' "$d" | sort -gu)
	for i in "${!COLD_WHO[@]}"; do
		for g in "${rates[@]}"; do
			f=$(rows_where "$d" "${COLD_WHO[$i]}" 3 "$g")
			[ -s "$f" ] || continue
			pl+=("\"$f\" using (\$2/1024):4 with linespoints lw 2 pt 7 $([ "$g" = 1 ] || echo 'dt 2') lc rgb \"${COLD_RGB[$i]}\" title \"${COLD_WHO[$i]}, $g Gbit/s\"")
		done
	done
	gnuplot <<EOF
$(preamble "$OUT/cold_start.png" "A pod on a cold host: time to its first output vs image size and link rate" "$(caption "$d")")
set xlabel "image size (GiB, log scale)"
set ylabel "from attach (or pull) to the pod's first output (s, log scale)"
set logscale x 2
set logscale y 10
set xtics ("0.125" 0.125, "0.25" 0.25, "0.5" 0.5, "1" 1, "2" 2, "4" 4, "8" 8, "16" 16, "32" 32)
set offsets graph 0.1, graph 0.1, 0, 0
set key outside right top box opaque
plot $(IFS=,; printf '%s' "${pl[*]}")
EOF
	made=$((made + 1))
}

plot_chunk_size() {
	local d=$IN/lazy_chunks.dat
	have chunk_size "$d" || return 0
	gnuplot <<EOF
$(preamble "$OUT/chunk_size.png" "Chunk size: what a lazy pod fetches before its first output, and the fill rate" "$(caption "$d")")
set xlabel "chunk size (KiB, log scale)"
set ylabel "bytes on the link before the first output (MiB)"
set y2label "whole-snapshot fill rate (MiB/s)"
set logscale x 2
set yrange [0:*]
set y2range [0:*]
set ytics nomirror
set y2tics
set key top center box opaque
set offsets graph 0.1, graph 0.1, graph 0.15, 0
plot "$d" using 1:3 with linespoints lw 2 pt 7 lc rgb "#2ca02c" axes x1y1 title "bytes before the first output (lazy)", \
     "$d" using 1:4 with linespoints lw 2 pt 5 dt 2 lc rgb "#1f77b4" axes x1y2 title "fill rate (prefetch of the whole snapshot)", \
     "$d" using 1:3:(sprintf("index %.0f KiB", \$5)) with labels offset 0,1.2 font ",9" notitle
EOF
	made=$((made + 1))
}

plot_attach_size
plot_attach_conc
plot_pod_start
plot_build
plot_attach_modes
plot_page_cache
plot_cold_start
plot_chunk_size
echo "${0##*/}: $made plots in $OUT" >&2
if [ "${PLOT_STRICT:-0}" = 1 ] && [ "$missing" -gt 0 ]; then
	exit 1
fi
