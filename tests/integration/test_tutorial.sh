#!/bin/bash
# docs/tutorial.md, run: every fenced ```sh block of it, in order, in one bash (as a reader pastes
# them into one shell), at the top of the tree, under set -euo pipefail, so that a step that fails
# fails the test and the tutorial cannot rot.  Around it only what makes the run a test's:
#   HOME         a directory under TEST_TMP: the tutorial's workspace (~/imcache-tutorial) and its
#                make install PREFIX (~/.local) are in it
#   MAKEFLAGS    O=IMC_BIN (and SAN=1 for a sanitizer build): the tutorial's "make" and "make
#                install" build and install the programs under test
#   ROOTFS_TAR   build/cache/tutorial-bookworm-python3.tar: the tutorial's debootstrap result,
#                kept between runs (the first run debootstraps from the mirror, 1-3 min)
# IMC_TUTORIAL_LOG=FILE keeps the tutorial's output.  Each block that ran to its end is one ok; the block that failed is a not ok with the end of the
# output.  Whatever happened, everything the tutorial started is undone at exit: its processes
# (by the PIDs in its pid files, checked to be this run's), runc containers under its runc root,
# attaches, the pool, mounts and loop devices under TEST_TMP; then the test checks that none is
# left.  Needs root, loop devices and (the first time) the Debian mirror.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"

need_root
need_loop
need_tool jq curl python3 make debootstrap umoci skopeo runc docker-registry man
need_programs imcd imcctl imc-attach imc-runtime

DOC=$IMC_ROOT/docs/tutorial.md
export HOME=$TEST_TMP/home
T=$HOME/imcache-tutorial
mkdir -p "$HOME"
SAN=0
ldd "$IMC_BIN/imcd" 2>/dev/null | grep -q libasan && SAN=1
export MAKEFLAGS="O=$IMC_BIN SAN=$SAN"
export ROOTFS_TAR=${IMC_TEST_CACHE:-$IMC_ROOT/build/cache}/tutorial-bookworm-python3.tar
mkdir -p "$(dirname "$ROOTFS_TAR")"
# The tutorial's variables are its own: none of the caller's.
unset IMCACHE_SERVER IMCACHE_TOKEN IMCACHE_STATE_DIR IMCACHE_RUNTIME

# --- the script: the sh blocks, each followed by a line that records it ran to its end ----------

SCRIPT=$TEST_TMP/tutorial.sh
DONE=$TEST_TMP/blocks.done
: >"$DONE"
awk -v done="$DONE" '
	/^```sh[[:space:]]*$/ { inside = 1; n++; start = NR; print "# --- block " n " (docs/tutorial.md:" start ")"; next }
	inside && /^```[[:space:]]*$/ { inside = 0; print "echo " n " " start " $(date +%s%3N) >>\"" done "\""; next }
	inside { print }
	END { if (inside) exit 1 }' "$DOC" >"$SCRIPT.body" || bail "docs/tutorial.md: every sh block is closed"
BLOCKS=$(grep -c '^```sh' "$DOC")
[ "$BLOCKS" -gt 0 ] || bail "docs/tutorial.md has sh blocks"
{
	echo 'set -euo pipefail'
	cat "$SCRIPT.body"
} >"$SCRIPT"
note "$BLOCKS sh blocks from docs/tutorial.md"

# --- cleanup on every exit path ------------------------------------------------------------------

# shellcheck disable=SC2317 # called through undo_tutorial
# A PID from the tutorial's pid files, if it is still this run's (its command line names TEST_TMP).
ours() {
	[ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$TEST_TMP"
}

# Processes of the tutorial, one a line: those whose command line names its home (the services)
# or whose root or working directory is in it (a container's).
tmp_processes() {
	local p where
	for p in /proc/[0-9]*; do
		where="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) $(readlink "$p/root" 2>/dev/null) $(readlink "$p/cwd" 2>/dev/null)"
		case "$where" in
		*"$HOME"*) printf '%s\n' "${p#/proc/}" ;;
		esac
	done
	return 0
}

# shellcheck disable=SC2317 # called through defer
undo_tutorial() {
	local id pidf pid
	if [ -d "$T/runc" ]; then
		for id in $(runc --root "$T/runc" list -q 2>/dev/null); do
			IMCACHE_STATE_DIR=$T/state IMCACHE_RUNTIME=runc \
				"$IMC_BIN/imc-runtime" --root "$T/runc" delete --force "$id" || true
		done
	fi
	for pidf in "$T"/*.pid; do
		[ -f "$pidf" ] || continue
		pid=$(cat "$pidf")
		ours "$pid" && stop_pid "$pid" 20
	done
	if [ -d "$T/state" ]; then
		for id in $("$IMC_BIN/imc-attach" --state-dir "$T/state" list 2>/dev/null | jq -r '.[].id'); do
			"$IMC_BIN/imc-attach" --state-dir "$T/state" detach "$id" || true
		done
		"$IMC_BIN/imc-attach" --state-dir "$T/state" teardown || true
	fi
}
defer undo_tutorial

# --- the run -------------------------------------------------------------------------------------

T0=$(now_ms)
rc=0
(cd "$IMC_ROOT" && timeout 1200 bash "$SCRIPT") >"$TEST_TMP/tutorial.log" 2>&1 </dev/null || rc=$?
note "the tutorial took $(($(now_ms) - T0)) ms"
# IMC_TUTORIAL_LOG=FILE keeps what the tutorial printed (to read it as a reader would see it).
[ -z "${IMC_TUTORIAL_LOG:-}" ] || cp "$TEST_TMP/tutorial.log" "$IMC_TUTORIAL_LOG"
ran=0
prev=$T0
while read -r n line t; do
	ran=$n
	ok "block $n (docs/tutorial.md:$line) runs ($((t - prev)) ms)"
	prev=$t
done <"$DONE"
if [ "$ran" -lt "$BLOCKS" ]; then
	line=$(awk -v n=$((ran + 1)) '/^```sh/ && ++k == n { print NR; exit }' "$DOC")
	not_ok "block $((ran + 1)) (docs/tutorial.md:$line) runs (exit status $rc)" \
		"$(tail -n 30 "$TEST_TMP/tutorial.log")"
fi
check_eq "the script exits 0" 0 "$rc"

# What the tutorial says it shows (its output, kept in the log).
LOG=$(cat "$TEST_TMP/tutorial.log")
check_match "the image has 3 layers" '^layers: 3$' "$LOG"
check_match "the cache's data holds the weights' file" 'model.safetensors' "$LOG"
check_match "the model server loaded the weights from the cache" \
	'the server loaded the weights from the cache' "$LOG"
check_match "no attach is left after the container's delete" '^attaches left: 0$' "$LOG"
check_fails "the sanitizers reported nothing" grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' \
	"$TEST_TMP/tutorial.log"

# The tutorial's own clean-up step undid everything: check before the deferred cleanup runs.
check_eq "no process of the tutorial is left" "" "$(tmp_processes | paste -sd ' ')"
check_eq "no mount under the test dir" "" "$(tmp_mounts)"
check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops_settled)"
check_fails "the workspace is gone" test -e "$T"
check_eq "make uninstall left no file in ~/.local" "" "$(find "$HOME/.local" ! -type d 2>/dev/null)"
check "the Debian tarball is kept for the next run" test -s "$ROOTFS_TAR"
done_testing
