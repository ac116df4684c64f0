#!/bin/bash
# The release programs (IMC_BIN, built with SAN=0, as installed on hosts where imc-attach and
# imc-runtime run as root) carry none of the test builds' hooks: no fault injection (IMC_FAULT),
# no stop points (IMC_ATTACH_STOP_AT, the holds: the lazy server's IMC_LAZY_HOLD_BACKGROUND and
# IMC_LAZY_HOLD_WALK, imcd's IMC_EXPORT_HOLD and IMC_BUILD_HOLD), no test knobs
# read from the environment (IMCD_DAY_SECONDS and the former IMCD_EVICT_*,
# IMCD_SWEEP_INTERVAL_MS, IMCD_BUILD_WORKERS), and they read the environment only with
# secure_getenv.  The test build (IMC_CHECK_BIN, SAN=1) is checked to have
# the hooks, so that a search that finds nothing is known to be able to find something.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"

need_tool strings nm grep
PROGRAMS="imcd imcctl imc-attach imc-runtime"
HOOKS="IMC_FAULT IMC_ATTACH_STOP_AT IMCD_DAY_SECONDS IMCD_EVICT_HIGH IMCD_EVICT_LOW
IMCD_SWEEP_INTERVAL_MS IMCD_BUILD_WORKERS IMC_LAZY_HOLD_BACKGROUND IMC_LAZY_HOLD_WALK
IMC_EXPORT_HOLD IMC_BUILD_HOLD"

for p in $PROGRAMS; do
	[ -x "$IMC_BIN/$p" ] || bail "release program $IMC_BIN/$p is built (make O=build/release)"
done

# count PROGRAM STRING: how many of PROGRAM's printable strings contain STRING.
count() { strings -a "$1" | grep -c -F "$2" || true; }

for p in $PROGRAMS; do
	for h in $HOOKS; do
		check_eq "release $p: no \"$h\" in it" 0 "$(count "$IMC_BIN/$p" "$h")"
	done
	# Our code's imports (the libraries are shared objects, their own calls do not show).
	check_eq "release $p: the environment is read with secure_getenv only (no getenv import)" "" \
		"$(nm -D --undefined-only "$IMC_BIN/$p" | awk '$2 == "getenv" || $2 ~ /^getenv@/')"
done

if [ -n "${IMC_CHECK_BIN:-}" ]; then
	check_match "the test build's imc-attach has the fault injection (the search can find it)" \
		'^[1-9]' "$(count "$IMC_CHECK_BIN/imc-attach" IMC_FAULT)"
	check_match "... and the stop points" '^[1-9]' "$(count "$IMC_CHECK_BIN/imc-attach" IMC_ATTACH_STOP_AT)"
	check_match "... and the lazy server's hold of its background fill" '^[1-9]' \
		"$(count "$IMC_CHECK_BIN/imc-attach" IMC_LAZY_HOLD_BACKGROUND)"
	check_match "the test build's imcd has the short retention day" '^[1-9]' \
		"$(count "$IMC_CHECK_BIN/imcd" IMCD_DAY_SECONDS)"
	check_match "... and the hold of a build" '^[1-9]' "$(count "$IMC_CHECK_BIN/imcd" IMC_BUILD_HOLD)"
fi

done_testing
