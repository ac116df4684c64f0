#!/bin/bash
# GET /metrics: the Prometheus text page before any cache, after a Ready busybox build and after
# a Failed one (unknown tag) — cache gauges, build counters and histogram, pulled bytes, pool
# bytes, HTTP requests by code — and a well-formed page (every sample line is `name value` or
# `name{labels} value`, each family's TYPE once, histogram +Inf equal to _count).
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs awk
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_bb() { mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1; }
check "busybox image builds and pushes" push_bb
BB_REF=$REGISTRY/imc/bb:v1

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

PAGE=
# fetch_metrics: GET /metrics into PAGE (HTTP_STATUS says how it went).
fetch_metrics() {
	http GET "$IMCD_URL/metrics"
	PAGE=$HTTP_BODY
}

# metric SAMPLE: the value of the line whose first field is SAMPLE (name or name{labels});
# empty when there is none.
metric() {
	awk -v s="$1" '$1 == s { print $2; exit }' <<<"$PAGE"
}

# shellcheck disable=SC2317 # called through check
# well_formed: every line is a comment or `name value` / `name{labels} value`; each family has
# one HELP and one TYPE; every histogram's +Inf bucket equals its _count and buckets never drop.
# Prints the first offending line.
well_formed() {
	awk '
	/^# (HELP|TYPE) / {
		k = $2 " " $3
		if (seen[k]++) { print "twice: " $0; bad = 1 }
		if ($2 == "TYPE" && $4 == "histogram") hist[$3] = 1
		next
	}
	/^#/ { next }
	!/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? [-+]?([0-9]+(\.[0-9]+)?|\+Inf|NaN)$/ {
		print "malformed: " $0; bad = 1; next
	}
	{
		name = $1; sub(/\{.*/, "", name)
		if (name ~ /_bucket$/) {
			base = substr(name, 1, length(name) - 7)
			if (($2 + 0) < last[base]) { print "bucket drops: " $0; bad = 1 }
			last[base] = $2 + 0
			if ($1 ~ /le="\+Inf"/) inf[base] = $2
		} else if (name ~ /_count$/) {
			count[substr(name, 1, length(name) - 6)] = $2
		}
	}
	END {
		for (h in hist) if (!(h in inf) || inf[h] != count[h]) { print "histogram " h ": +Inf " inf[h] " != _count " count[h]; bad = 1 }
		exit bad
	}' <<<"$PAGE"
}

# --- before any cache ---------------------------------------------------------------------------

fetch_metrics
check_eq "GET /metrics answers 200 before any cache" 200 "$HTTP_STATUS"
check_eq "Content-Type is the Prometheus text format 0.0.4" \
	"text/plain; version=0.0.4; charset=utf-8" \
	"$(curl -sS --noproxy '*' -o /dev/null -w '%{content_type}' "$IMCD_URL/metrics")"
check "the empty page is well formed" well_formed
check_eq "no caches: Creating Ready Failed all 0" "0 0 0" \
	"$(metric 'imcache_caches{status="Creating"}') $(metric 'imcache_caches{status="Ready"}') $(metric 'imcache_caches{status="Failed"}')"
check_eq "no caches: Updating Deleting Expired all 0" "0 0 0" \
	"$(metric 'imcache_caches{status="Updating"}') $(metric 'imcache_caches{status="Deleting"}') $(metric 'imcache_caches{status="Expired"}')"
check_eq "no evictions, expirations, attaches or attachments yet" "0 0 0 0 0" \
	"$(metric imcache_evictions_total) $(metric imcache_expirations_total) $(metric imcache_attaches_total) $(metric imcache_detaches_total) $(metric imcache_attachments)"
check_eq "no builds yet: builds_total ready/failed 0, histogram count 0, none in flight" "0 0 0 0" \
	"$(metric 'imcache_builds_total{result="ready"}') $(metric 'imcache_builds_total{result="failed"}') $(metric imcache_build_duration_seconds_count) $(metric imcache_builds_in_flight)"
check_eq "nothing pulled yet" 0 "$(metric imcache_pull_bytes_total)"
SIZE=$(metric 'imcache_pool_bytes{kind="size"}')
check_match "pool size is a positive byte count" '^[1-9][0-9]*$' "$SIZE"
http POST "$IMCD_URL/metrics" '{}'
check_eq "POST /metrics answers 405" 405 "$HTTP_STATUS"

# --- a Ready build ----------------------------------------------------------------------------

ID=$(create_cache "$BB_REF" bb) || not_ok "POST a busybox cache answers 202"
OUT=$(cache_wait "$ID" 180 2>&1) || true
check_eq "the busybox cache becomes Ready" Ready "$(json_get "$OUT" '.status // empty' 2>/dev/null || echo "$OUT")"

fetch_metrics
check_eq "GET /metrics answers 200 after the build" 200 "$HTTP_STATUS"
check "the page after a Ready build is well formed" well_formed
check_eq "caches: Creating 0, Ready 1, Failed 0" "0 1 0" \
	"$(metric 'imcache_caches{status="Creating"}') $(metric 'imcache_caches{status="Ready"}') $(metric 'imcache_caches{status="Failed"}')"
check_eq "builds_total: ready 1, failed 0" "1 0" \
	"$(metric 'imcache_builds_total{result="ready"}') $(metric 'imcache_builds_total{result="failed"}')"
check_eq "build duration histogram: count 1, +Inf 1" "1 1" \
	"$(metric imcache_build_duration_seconds_count) $(metric 'imcache_build_duration_seconds_bucket{le="+Inf"}')"
check_match "build duration sum is seconds with a fraction" '^[0-9]+\.[0-9]{9}$' \
	"$(metric imcache_build_duration_seconds_sum)"
check_eq "no build in flight once Ready" 0 "$(metric imcache_builds_in_flight)"
check_match "pulled bytes are counted (> 0)" '^[1-9][0-9]*$' "$(metric imcache_pull_bytes_total)"
USED=$(metric 'imcache_pool_bytes{kind="used"}')
FREE=$(metric 'imcache_pool_bytes{kind="free"}')
check_match "pool used bytes > 0" '^[1-9][0-9]*$' "$USED"
check_match "pool free bytes > 0" '^[1-9][0-9]*$' "$FREE"
check_eq "pool size is unchanged" "$SIZE" "$(metric 'imcache_pool_bytes{kind="size"}')"
check_eq "one POST counted as 202" 1 "$(metric 'imcache_http_requests_total{code="202"}')"
N200=$(metric 'imcache_http_requests_total{code="200"}')
check_match "GETs counted as 200 (metrics and polling: at least 3)" '^([3-9]|[1-9][0-9]+)$' "$N200"
check_eq "the POST /metrics counted as 405" 1 "$(metric 'imcache_http_requests_total{code="405"}')"
TOTAL=$(awk '$1 ~ /^imcache_http_requests_total\{/ { n += $2 } END { print n + 0 }' <<<"$PAGE")
check_eq "request duration count equals the requests by code" "$TOTAL" \
	"$(metric imcache_http_request_duration_seconds_count)"

# --- attachments --------------------------------------------------------------------------------
http POST "$IMCD_URL/v1/imagecaches/$ID/attachments" '{"id":"att-0000000000000001"}'
http POST "$IMCD_URL/v1/imagecaches/$ID/attachments" '{"id":"att-0000000000000001"}'
http POST "$IMCD_URL/v1/imagecaches/$ID/attachments" '{"id":"att-0000000000000002"}'
http DELETE "$IMCD_URL/v1/imagecaches/$ID/attachments/att-0000000000000002"
fetch_metrics
check_eq "attaches_total counts new attachments only (2), detaches_total 1, attached now 1" \
	"2 1 1" "$(metric imcache_attaches_total) $(metric imcache_detaches_total) $(metric imcache_attachments)"
http DELETE "$IMCD_URL/v1/imagecaches/$ID/attachments/att-0000000000000001"

# --- a Failed build -----------------------------------------------------------------------------

ID2=$(create_cache "$REGISTRY/imc/bb:no-such-tag" bad) || not_ok "POST an unknown tag answers 202"
OUT=$(cache_wait "$ID2" 120 2>&1) || true
check_eq "the unknown tag's cache ends Failed" Failed "$(json_get "$OUT" '.status // empty' 2>/dev/null || echo "$OUT")"

fetch_metrics
check_eq "GET /metrics answers 200 after the failure" 200 "$HTTP_STATUS"
check "the page after a Failed build is well formed" well_formed
check_eq "caches: Creating 0, Ready 1, Failed 1" "0 1 1" \
	"$(metric 'imcache_caches{status="Creating"}') $(metric 'imcache_caches{status="Ready"}') $(metric 'imcache_caches{status="Failed"}')"
check_eq "builds_total: ready 1, failed 1" "1 1" \
	"$(metric 'imcache_builds_total{result="ready"}') $(metric 'imcache_builds_total{result="failed"}')"
check_eq "build duration histogram count 2" 2 "$(metric imcache_build_duration_seconds_count)"
check_eq "two POSTs counted as 202" 2 "$(metric 'imcache_http_requests_total{code="202"}')"

# The awk check itself must catch a broken page.
PAGE=$(printf '# TYPE x counter\nx{a="1"} 1\nbroken line here\n')
check_fails "the well-formedness check rejects a malformed line" well_formed
PAGE=$(printf '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\n')
check_fails "the well-formedness check rejects a dropping bucket" well_formed

# Deleting the caches brings the gauges back down.
http DELETE "$IMCD_URL/v1/imagecaches/$ID"
check_eq "DELETE the Ready cache answers 200" 200 "$HTTP_STATUS"
http DELETE "$IMCD_URL/v1/imagecaches/$ID2"
check_eq "DELETE the Failed cache answers 200" 200 "$HTTP_STATUS"
fetch_metrics
check_eq "GET /metrics answers 200 after the deletes" 200 "$HTTP_STATUS"
check_eq "caches all 0 again; builds_total keeps counting" "0 0 0 1 1" \
	"$(metric 'imcache_caches{status="Creating"}') $(metric 'imcache_caches{status="Ready"}') $(metric 'imcache_caches{status="Failed"}') $(metric 'imcache_builds_total{result="ready"}') $(metric 'imcache_builds_total{result="failed"}')"

check_clean_shutdown

done_testing
