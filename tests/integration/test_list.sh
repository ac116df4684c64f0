#!/bin/bash
# GET /v1/imagecaches filters and paging: caches of two images (Ready) and of an unknown tag
# (Failed), each filter (status, name, image exact by ref and by @sha256 digest), pages of 1 and 2
# that list every id exactly once in order, imcctl list following the pages, and bad parameters
# answered 400 with a JSON error naming the parameter.
# Needs root and loop devices (the store loop-mounts its XFS pool file).
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_images() {
	mkimage_busybox "$LAYOUT" bb && mkimage_push "$LAYOUT" bb imc/bb:v1 &&
		mkimage_plain "$LAYOUT" plain 64 && registry_push_raw "$LAYOUT" plain imc/plain:v1
}
check "busybox and plain images push" push_images
BB=$REGISTRY/imc/bb:v1
PLAIN=$REGISTRY/imc/plain:v1

STATE=$TEST_TMP/state
imcd_start_or_bail "$STATE"

# Five caches, in this order: bb "web", plain "db", unknown tag "web" (Failed), bb "api",
# unknown tag "db" (Failed).
IDS=()
for spec in "$BB web" "$PLAIN db" "$REGISTRY/imc/bb:nope web" "$BB api" "$REGISTRY/imc/plain:nope db"; do
	read -r ref name <<<"$spec"
	id=$(create_cache "$ref" "$name") || bail "POST $ref is accepted" "$(imcd_log_tail 10)"
	IDS+=("$id")
	cache_wait "$id" 120 >/dev/null || bail "cache $id of $ref finishes" "$(imcd_log_tail 10)"
done
ok "five caches created and built: ${IDS[*]}"

# ids QUERY: the ids of one GET, space-separated (HTTP_STATUS/HTTP_BODY are kept).
ids() {
	http GET "$IMCD_URL/v1/imagecaches$1"
	jq -r '[.items[].id] | join(" ")' <<<"$HTTP_BODY" 2>/dev/null
}

# Several caches share a createdAt second: the list order is createdAt, then id.
ALL=$(ids '')
check_eq "no filter: all five, each once" "$(printf '%s\n' "${IDS[@]}" | sort | tr '\n' ' ')" \
	"$(tr ' ' '\n' <<<"$ALL" | sort | tr '\n' ' ')"
# ordered ID...: the ids in list order (as ALL has them), space-separated.
ordered() {
	local id out=()
	for id in $ALL; do
		[[ " $* " == *" $id "* ]] && out+=("$id")
	done
	echo "${out[*]}"
}
check_eq "no filter: no nextPageToken" "null" "$(jq -c .nextPageToken <<<"$HTTP_BODY")"
check_eq "status=Ready" "$(ordered "${IDS[0]}" "${IDS[1]}" "${IDS[3]}")" "$(ids '?status=Ready')"
check_eq "status=Failed" "$(ordered "${IDS[2]}" "${IDS[4]}")" "$(ids '?status=Failed')"
check_eq "status=Creating: none" "" "$(ids '?status=Creating')"
check_eq "name=web" "$(ordered "${IDS[0]}" "${IDS[2]}")" "$(ids '?name=web')"
check_eq "name=nobody: none" "" "$(ids '?name=nobody')"
check_eq "image=BB (exact)" "$(ordered "${IDS[0]}" "${IDS[3]}")" "$(ids "?image=$BB&match=exact")"
check_eq "image=PLAIN (match defaults to exact)" "${IDS[1]}" "$(ids "?image=$PLAIN")"
check_eq "image=bb:latest: no cache asked for that ref" "" "$(ids "?image=$REGISTRY/imc/bb:latest")"
check_eq "status=Ready&name=web&image=BB" "${IDS[0]}" "$(ids "?status=Ready&name=web&image=$BB")"
http GET "$IMCD_URL/v1/imagecaches/${IDS[0]}"
BB_DIGEST=$(jq -r '.images[0].digest' <<<"$HTTP_BODY")
check_eq "image=bb@digest matches the Ready caches by resolved digest" \
	"$(ordered "${IDS[0]}" "${IDS[3]}")" "$(ids "?image=$REGISTRY/imc/bb@$BB_DIGEST")"

# match=best: the one cache sharing the most layers; PLAIN shares none with BB.
http GET "$IMCD_URL/v1/imagecaches?image=$BB&match=best"
check_eq "match=best for BB: one of the bb caches" 1 \
	"$(jq --arg a "${IDS[0]}" --arg b "${IDS[3]}" '[.items[] | select(.id == $a or .id == $b)] | length' <<<"$HTTP_BODY")"
check_match "... with sharedLayers = wantedLayers" '^([1-9][0-9]*) \1$' \
	"$(jq -r '.items[0] | "\(.sharedLayers) \(.wantedLayers)"' <<<"$HTTP_BODY")"
check_eq "match=best for BB with name=db: no cache shares a layer" 0 \
	"$(ids "?image=$BB&match=best&name=db" | wc -w)"
check_eq "match=best for PLAIN: the plain cache" "${IDS[1]}" "$(ids "?image=$PLAIN&match=best")"

# page_all LIMIT [FILTER]: follow nextPageToken; prints all ids, one per line; fails on a page
# over LIMIT items or on an error.
page_all() {
	local limit=$1 filter=${2-} token='' n=0
	while :; do
		http GET "$IMCD_URL/v1/imagecaches?limit=$limit$filter${token:+&pageToken=$token}"
		[ "$HTTP_STATUS" = 200 ] || { echo "page: $HTTP_STATUS $HTTP_BODY" >&2; return 1; }
		[ "$(jq '.items | length' <<<"$HTTP_BODY")" -le "$limit" ] || return 1
		jq -r '.items[].id' <<<"$HTTP_BODY"
		token=$(jq -r '.nextPageToken // empty' <<<"$HTTP_BODY")
		[ -n "$token" ] || return 0
		n=$((n + 1))
		[ "$n" -lt 20 ] || return 1
	done
}
for limit in 1 2; do
	got=$(page_all "$limit" | tr '\n' ' ' | sed 's/ $//')
	check_eq "limit=$limit: pages list every id exactly once, in order" "$ALL" "$got"
done
got=$(page_all 1 '&status=Failed' | tr '\n' ' ' | sed 's/ $//')
check_eq "limit=1&status=Failed pages" "$(ordered "${IDS[2]}" "${IDS[4]}")" "$got"
http GET "$IMCD_URL/v1/imagecaches?limit=5"
check_eq "limit=5 with five caches: no nextPageToken" "null" "$(jq -c .nextPageToken <<<"$HTTP_BODY")"

FAILED="${IDS[2]} ${IDS[4]}"
WEB_BB=${IDS[0]}

# imcctl list follows the pages.
check_eq "imcctl list --limit 1 -o json lists all" "$ALL" \
	"$(imcctl list --limit 1 -o json | jq -r '[.items[].id] | join(" ")')"
# shellcheck disable=SC2086 # FAILED is two ids
check_eq "imcctl list --status Failed --limit 1" "$(ordered ${FAILED})" \
	"$(imcctl list --status Failed --limit 1 -o json | jq -r '[.items[].id] | join(" ")')"
check_eq "imcctl list --name web --image BB" "$WEB_BB" \
	"$(imcctl list --name web --image "$BB" -o json | jq -r '[.items[].id] | join(" ")')"
check_match "imcctl list table shows the Failed cache" "${FAILED%% *}.*Failed" \
	"$(imcctl list --status Failed)"

# bad QUERY NEEDLE: 400 InvalidArgument whose message contains NEEDLE.
bad() {
	http GET "$IMCD_URL/v1/imagecaches$1"
	check_eq "$1: 400" 400 "$HTTP_STATUS"
	check_eq "$1: InvalidArgument" InvalidArgument "$(jq -r .error.code <<<"$HTTP_BODY" 2>/dev/null)"
	check_match "$1: message names it" "$2" "$(jq -r .error.message <<<"$HTTP_BODY" 2>/dev/null)"
}
bad '?status=Done' 'status "Done"'
bad '?bogus=1' 'bogus'
bad '?limit=0' 'limit'
bad '?limit=1001' 'limit'
bad '?limit=abc' 'limit'
bad '?status=Ready&status=Failed' 'status: given more than once'
bad "?image=$BB&match=fuzzy" 'match "fuzzy"'
bad "?match=best" 'match: only with image'
bad "?image=$BB&match=best&pageToken=313a78" 'pageToken'
bad '?status=Gone' 'want Creating, Ready, Failed, Updating, Deleting or Expired'
bad '?pageToken=zz' 'pageToken'
bad '?pageToken=313a78' 'pageToken'
bad "?name=$(head -c 200 /dev/zero | tr '\0' a)" 'name: longer than'

# Last, since it deletes one cache (which one depends on the order of ids created in the same
# second, so nothing after this may rely on a particular cache being there):
# A token whose item is deleted before the next page still continues after its position.
http GET "$IMCD_URL/v1/imagecaches?limit=2"
TOKEN=$(jq -r .nextPageToken <<<"$HTTP_BODY")
read -r -a POS <<<"$ALL"
http DELETE "$IMCD_URL/v1/imagecaches/${POS[1]}"
check_eq "DELETE the last item of page 1" 200 "$HTTP_STATUS"
check_eq "page 2 after deleting the token's item" "${POS[2]} ${POS[3]}" \
	"$(ids "?limit=2&pageToken=$TOKEN")"
ALL=$(ordered "${POS[0]}" "${POS[2]}" "${POS[3]}" "${POS[4]}")
read -r -a IDS <<<"$ALL"

for id in "${IDS[@]}"; do
	http DELETE "$IMCD_URL/v1/imagecaches/$id"
	check_eq "DELETE $id answers 200" 200 "$HTTP_STATUS"
done
check_eq "the list is empty" "" "$(ids '')"

check_clean_shutdown

done_testing
