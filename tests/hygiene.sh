#!/bin/bash
# The tree kept honest by machine (make check runs it; make hygiene alone):
#  1. every extern symbol defined in one object is referenced from another one (else it should be
#     static, or go): nm over the objects given, the unit tests' included;
#  2. no tracked *.orig or *.rej file;
#  3. no libcurl handle made outside net/, the one HTTP client (curl_easy_init).
# Each finding is printed on a line of its own; the exit status is 1 when there is any.
# usage: tests/hygiene.sh OBJECT...
set -euo pipefail
cd "$(dirname "$0")/.."

findings=0
finding() {
	echo "hygiene: $*"
	findings=$((findings + 1))
}

# Symbols defined for others than us: the entry point, and the sanitizers' own (__odr_asan.*).
is_exempt() {
	case "$1" in
	main | __*) return 0 ;;
	esac
	return 1
}

unreferenced_externs() {
	local defs refs
	defs=$(mktemp) refs=$(mktemp)
	# "object symbol" for every extern definition, and every reference.
	nm -A -g --defined-only "$@" | awk '$(NF-1) ~ /^[BCDGRSTVW]$/ {
		split($1, o, ":"); print o[1], $NF }' | sort -u >"$defs"
	nm -A -u "$@" | awk '{ split($1, o, ":"); print o[1], $NF }' | sort -u >"$refs"
	# A definition is used when an object other than its own references it.
	awk 'NR == FNR { users[$2] = users[$2] " " $1; next }
	     { n = split(users[$2], u, " "); used = 0
	       for (i = 1; i <= n; i++) if (u[i] != $1) used = 1
	       if (!used) print $1, $2 }' "$refs" "$defs" >"$defs.unused"
	while read -r obj sym; do
		is_exempt "$sym" && continue
		finding "extern $sym is defined in ${obj#*obj/} and referenced from no other object"
	done <"$defs.unused"
	rm -f "$defs" "$refs" "$defs.unused"
}

tracked() {
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git ls-files -- "$@"
	else
		local args=() p
		for p in "$@"; do args+=(-o -name "$p"); done
		find . -path ./build -prune -o \( -false "${args[@]}" \) -print | sed 's|^\./||'
	fi
}

[ $# -gt 0 ] || { echo "usage: $0 OBJECT..." >&2; exit 2; }
unreferenced_externs "$@"

while read -r f; do
	[ -n "$f" ] && finding "$f: a tracked merge leftover (*.orig, *.rej)"
done < <(tracked '*.orig' '*.rej')

while IFS=: read -r f line _; do
	[ -n "$f" ] && finding "$f:$line: curl_easy_init outside net/ (requests go through net_perform)"
done < <(tracked '*.c' '*.h' | grep -v '^net/' | xargs -r grep -Hn 'curl_easy_init' || true)

if [ "$findings" -gt 0 ]; then
	echo "hygiene: $findings finding(s)"
	exit 1
fi
echo "hygiene: clean"
