# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# Common helpers for imcache's shell tests: a private temp dir, a cleanup stack, TAP-like
# reporting and small utilities.  Source it first:  . "$(dirname "$0")/../lib/common.sh"
#
# Output: one line per test ("ok N - what", "not ok N - what", "ok N - what # SKIP why") and, at
# exit, exactly one summary line "N passed, N failed, N skipped".  The script exits 1 if anything
# failed (including an unexpected abort under set -e), else 0.

set -euo pipefail

IMC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMC_BIN=${IMC_BIN:-$IMC_ROOT/build}
export IMC_ROOT IMC_BIN

# Loopback traffic (registry, imcd) must never go through a proxy from the environment.
export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export NO_PROXY="$no_proxy"

T_PASS=0
T_FAIL=0
T_SKIP=0
T_NUM=0
T_DONE=0
_DEFER=()

TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/imc-test.XXXXXXXX")
export TEST_TMP

# --- reporting -------------------------------------------------------------------------------

ok() {
	T_NUM=$((T_NUM + 1))
	T_PASS=$((T_PASS + 1))
	printf 'ok %d - %s\n' "$T_NUM" "$*"
}

# not_ok DESC [DETAIL...]: a failed test; DETAIL lines are printed as TAP comments.
not_ok() {
	T_NUM=$((T_NUM + 1))
	T_FAIL=$((T_FAIL + 1))
	printf 'not ok %d - %s\n' "$T_NUM" "$1"
	shift
	local line
	for line in "$@"; do
		printf '%s\n' "$line" | sed 's/^/#   /'
	done
}

skip() {
	T_NUM=$((T_NUM + 1))
	T_SKIP=$((T_SKIP + 1))
	printf 'ok %d - %s # SKIP %s\n' "$T_NUM" "$1" "${2:-no reason given}"
}

note() {
	printf '%s\n' "$*" | sed 's/^/# /'
}

# skip_all REASON: the whole file cannot run here; counts as one skip and exits.
skip_all() {
	skip "$(basename "$0")" "$1"
	T_DONE=1
	exit 0
}

# bail REASON: a precondition the rest of the file depends on failed; counts as a failure.
bail() {
	not_ok "$@"
	T_DONE=1
	exit 1
}

# _capture CMD...: run CMD with errexit in force (a plain "out=$(f) || rc=$?" runs shell
# function f with errexit ignored, so a failing step in f would go unnoticed); sets the
# caller's out and rc.
_capture() {
	set +e
	out=$(
		set -e
		"$@" 2>&1
	)
	rc=$?
	set -e
}

# check DESC CMD...: ok if CMD succeeds; otherwise not_ok with CMD's output.
check() {
	local desc=$1 out rc
	shift
	_capture "$@"
	if [ "$rc" -eq 0 ]; then
		ok "$desc"
	else
		not_ok "$desc" "command: $*" "exit status: $rc" "$out"
	fi
	return 0
}

# check_fails DESC CMD...: ok if CMD fails.
check_fails() {
	local desc=$1 out rc
	shift
	_capture "$@"
	if [ "$rc" -ne 0 ]; then
		ok "$desc"
	else
		not_ok "$desc" "command unexpectedly succeeded: $*" "$out"
	fi
	return 0
}

# check_fails_with DESC ERE CMD...: ok if CMD fails and its output (stdout and stderr) matches
# the extended regular expression ERE.
check_fails_with() {
	local desc=$1 ere=$2 out rc
	shift 2
	_capture "$@"
	if [ "$rc" -ne 0 ] && grep -Eq -- "$ere" <<<"$out"; then
		ok "$desc"
	else
		not_ok "$desc" "command: $*" "exit status: $rc (want a failure matching $ere)" "$out"
	fi
	return 0
}

# check_eq DESC EXPECTED ACTUAL
check_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "expected: $2" "got:      $3"
	fi
}

# check_match DESC ERE TEXT: ok if TEXT matches the extended regular expression.
check_match() {
	# A here-string, not a pipe: grep -q stops at the first match, and under pipefail the
	# writer's SIGPIPE would fail a check that matched.
	if grep -Eq -- "$2" <<<"$3"; then
		ok "$1"
	else
		not_ok "$1" "expected to match: $2" "got: $3"
	fi
}

_summary() {
	printf '%d passed, %d failed, %d skipped\n' "$T_PASS" "$T_FAIL" "$T_SKIP"
}

# --- cleanup stack ---------------------------------------------------------------------------

# defer CMD [ARG...]: run CMD at exit (EXIT, INT, TERM), last deferred first.  Failures are
# reported as comments and do not stop the other cleanups.
defer() {
	_DEFER+=("$(printf '%q ' "$@")")
}

run_deferred() {
	local i
	for ((i = ${#_DEFER[@]} - 1; i >= 0; i--)); do
		eval "${_DEFER[i]}" >/dev/null 2>&1 || note "cleanup failed: ${_DEFER[i]}"
		unset '_DEFER[i]'
	done
	_DEFER=()
}

# Last-resort safety net for anything the deferred cleanups missed: mounts under TEST_TMP
# (deepest first), then loop devices backed by files under it.  Tests assert the absence of
# leaks themselves before this runs, so a leak is still reported as a failure.
_reap_tmp() {
	local m dev
	[ -d "$TEST_TMP" ] || return 0
	while read -r m; do
		note "leak reaped: mount $m"
		umount -l "$m" 2>/dev/null || true
	done < <(tmp_mounts | sort -r)
	while read -r dev; do
		note "leak reaped: loop device $dev"
		losetup -d "$dev" 2>/dev/null || true
	done < <(tmp_loops)
	rm -rf --one-file-system "$TEST_TMP" 2>/dev/null || true
}

_on_exit() {
	local rc=$?
	# The cleanups must run to the end: a second Ctrl-C or TERM is ignored from here on.
	trap - EXIT
	trap '' INT TERM
	set +e
	if [ "$T_DONE" -eq 0 ] && [ "$rc" -ne 0 ]; then
		not_ok "$(basename "$0") aborted (exit status $rc)" "last failed command: ${_LAST_CMD:-?}" \
			"at line ${_LAST_LINE:-?}"
	fi
	run_deferred
	_reap_tmp
	# Scripts that are not tests (the demo) set IMC_NO_SUMMARY=1.
	[ -n "${IMC_NO_SUMMARY:-}" ] || _summary
	if [ "$T_FAIL" -gt 0 ]; then
		exit 1
	fi
	exit 0
}

_on_signal() {
	not_ok "$(basename "$0") interrupted by SIG$1"
	T_DONE=1
	exit 1
}

trap _on_exit EXIT
trap '_on_signal INT' INT
trap '_on_signal TERM' TERM
set -E
trap '_LAST_LINE=$LINENO; _LAST_CMD=$BASH_COMMAND' ERR

# done_testing: normal end of a test file.
done_testing() {
	T_DONE=1
	exit 0
}

# --- preconditions ---------------------------------------------------------------------------

need_root() {
	[ "$(id -u)" -eq 0 ] || skip_all "needs root (running as uid $(id -u))"
}

need_tool() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || skip_all "needs '$t' (not in PATH; run scripts/install-deps.sh)"
	done
}

need_loop() {
	[ -e /dev/loop-control ] || skip_all "needs loop devices (/dev/loop-control is missing)"
	losetup -f >/dev/null 2>&1 || skip_all "needs a free loop device (losetup -f failed)"
}

# need_programs NAME...: the imcache programs under test must exist in IMC_BIN; a missing one
# is a failure, not a skip (the build is part of what is tested).
need_programs() {
	local p
	for p in "$@"; do
		[ -x "$IMC_BIN/$p" ] || bail "program $IMC_BIN/$p exists" "build it with: make O=build/check SAN=1 programs"
	done
}

# --- utilities -------------------------------------------------------------------------------

now_ms() {
	echo $(($(date +%s%N) / 1000000))
}

# wait_for_file FILE [TIMEOUT_S] [PID]: wait until FILE exists and is not empty.  Fails early
# if PID (the process expected to write it) dies.
wait_for_file() {
	local file=$1 timeout=${2:-30} pid=${3:-} deadline
	deadline=$(($(date +%s) + timeout))
	while [ ! -s "$file" ]; do
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

# wait_for_match FILE REGEX [TIMEOUT_S]: wait until a line of FILE matches REGEX (grep).
wait_for_match() {
	local file=$1 regex=$2 timeout=${3:-30} deadline
	deadline=$(($(date +%s) + timeout))
	until grep -q -- "$regex" "$file" 2>/dev/null; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# wait_gone PATH [TIMEOUT_S]: wait until PATH no longer exists.
wait_gone() {
	local path=$1 timeout=${2:-10} deadline
	deadline=$(($(date +%s) + timeout))
	while [ -e "$path" ] || [ -L "$path" ]; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "$path still exists after ${timeout}s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# json_get JSON FILTER: print jq's raw output of FILTER applied to JSON; fails on invalid JSON.
json_get() {
	printf '%s' "$1" | jq -r "$2"
}

# http METHOD URL [BODY]: sets HTTP_STATUS and HTTP_BODY.  Never fails on HTTP errors.
HTTP_STATUS=
HTTP_BODY=
http() {
	local method=$1 url=$2 body=${3-} out
	out=$(mktemp "$TEST_TMP/.http.XXXXXX")
	local -a args=(-sS --noproxy '*' -o "$out" -w '%{http_code}' -X "$method" --max-time 30)
	if [ $# -ge 3 ]; then
		# Through a file: a body can be larger than one command-line argument may be.
		printf '%s' "$body" >"$out.req"
		args+=(-H 'Content-Type: application/json' --data-binary "@$out.req")
	fi
	HTTP_STATUS=$(curl "${args[@]}" "$url" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	rm -f "$out" "$out.req"
}

# http_settled METHOD URL [TIMEOUT_S]: http, repeated while imcd answers that it is still at
# work on what the answer needs (503, or 202 to a GET), for at most TIMEOUT_S (default 60)
# seconds; the last answer in HTTP_STATUS and HTTP_BODY.
http_settled() {
	local method=$1 url=$2 deadline=$(($(date +%s) + ${3:-60}))
	while :; do
		http "$method" "$url"
		case "$HTTP_STATUS" in
		503 | 202) ;;
		*) return 0 ;;
		esac
		[ "$(date +%s)" -lt "$deadline" ] || return 0
		sleep 0.2
	done
}

# stop_pid PID [TIMEOUT_S]: SIGTERM, wait, then SIGKILL.  Returns the exit status when PID is a
# child of this shell (124 if it had to be killed).
stop_pid() {
	local pid=$1 timeout=${2:-10} i rc=0
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || rc=$?
		return "$rc"
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < timeout * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		# A zombie child still answers kill -0; wait reaps it.
		if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ]; then
			break
		fi
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; then
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		return 124
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

# Mount points at or under TEST_TMP, one a line.
tmp_mounts() {
	findmnt -rn -o TARGET | while read -r m; do
		# findmnt escapes blanks as \x20; TEST_TMP has none.
		case "$m" in
		"$TEST_TMP" | "$TEST_TMP"/*) printf '%s\n' "$m" ;;
		esac
	done
}

# Loop devices whose backing file is under TEST_TMP, one a line.
tmp_loops() {
	losetup -n -O NAME,BACK-FILE -l 2>/dev/null | while read -r dev back; do
		case "$back" in
		"$TEST_TMP"/*) printf '%s\n' "$dev" ;;
		esac
	done
}

# tmp_loops_settled: tmp_loops once the kernel has finished releasing autoclear devices.  The
# last unmount of a loop-backed filesystem drops the device in deferred work, so right after it a
# device may still be listed for a moment; wait up to 2 s for that, then report what is left.
tmp_loops_settled() {
	local left i
	for i in $(seq 20); do
		left=$(tmp_loops)
		[ -z "$left" ] && return 0
		sleep 0.1
	done
	printf '%s\n' "$left"
}
