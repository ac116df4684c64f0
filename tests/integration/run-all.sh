#!/bin/bash
# Runs every tests/integration/test_*.sh, sums their "N passed, N failed, N skipped" lines and
# prints the total the same way.  Exits 1 if any test failed, if a file exited non-zero or
# printed no summary, and - when CI=true (CI runs as root with loop devices) - if anything was
# skipped.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pass=0
fail=0
skipped=0
bad_files=()

for t in "$here"/test_*.sh; do
	[ -e "$t" ] || continue
	name=$(basename "$t")
	echo "=== $name"
	log=$(mktemp "${TMPDIR:-/tmp}/imc-run-all.XXXXXX")
	rc=0
	bash "$t" 2>&1 | tee "$log" || rc=$?
	summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n1 || true)
	rm -f "$log"
	if [ -z "$summary" ]; then
		echo "# $name printed no summary line (exit status $rc)"
		fail=$((fail + 1))
		bad_files+=("$name")
		continue
	fi
	read -r p _ f _ s _ <<<"$summary"
	pass=$((pass + p))
	fail=$((fail + f))
	skipped=$((skipped + s))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "# $name exited with status $rc but reported no failure"
		fail=$((fail + 1))
	fi
	if [ "$f" -gt 0 ] || [ "$rc" -ne 0 ]; then
		bad_files+=("$name")
	fi
done

echo "==="
if [ "${#bad_files[@]}" -gt 0 ]; then
	echo "# failing: ${bad_files[*]}"
fi
if [ "${CI:-}" = true ] && [ "$skipped" -gt 0 ]; then
	echo "# CI=true: this environment must run every test; $skipped skipped count as failures"
	fail=$((fail + skipped))
fi
echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ]
