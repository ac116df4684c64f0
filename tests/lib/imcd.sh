# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# Running the programs under test: imcd on a random loopback port, imc-attach and imcctl with the
# test's state dir and server.  Needs common.sh.
#
#   imcd_start STATE_DIR [ARG...]  exports IMCD_URL, IMCD_PID, IMCD_LOG, IMC_STATE
#   imcd_stop                      SIGTERM; returns imcd's exit status
#   imcctl ARG...                  $IMC_BIN/imcctl --server $IMCD_URL ARG...
#   imc_attach ARG...              $IMC_BIN/imc-attach --state-dir $IMC_STATE ARG...
#   cache_wait ID [TIMEOUT_S]      polls GET until the status is not Creating; prints the JSON

IMCD_PID=
IMCD_URL=
IMCD_LOG=
IMC_STATE=

# _imcd_launch STATE_DIR LISTEN [ARG...]: start imcd listening on LISTEN and wait for its ready
# file; sets IMCD_URL to what imcd wrote there.
_imcd_launch() {
	local state=$1 listen=$2 ready
	shift 2
	# A host's /etc/imcache/imcd.json would turn auth on for every test: without --config of
	# its own, a test's imcd reads none.
	case " $* " in
	*" --config"* | *" --no-config "*) ;;
	*) set -- "$@" --no-config ;;
	esac
	IMC_STATE=$state
	mkdir -p "$state"
	ready=$(mktemp -u "$TEST_TMP/imcd-ready.XXXXXX")
	IMCD_LOG=$(mktemp "$TEST_TMP/imcd-log.XXXXXX")
	"$IMC_BIN/imcd" --listen "$listen" --state-dir "$state" --ready-file "$ready" \
		--log-level debug "$@" >"$IMCD_LOG" 2>&1 &
	IMCD_PID=$!
	defer imcd_kill
	if ! wait_for_file "$ready" 60 "$IMCD_PID"; then
		echo "imcd did not become ready; its log:" >&2
		tail -n 30 "$IMCD_LOG" >&2
		return 1
	fi
	IMCD_URL=$(head -n1 "$ready" | tr -d '[:space:]')
	export IMCD_URL IMCD_PID IMCD_LOG IMC_STATE
}

imcd_start() {
	local state=$1
	shift
	_imcd_launch "$state" 127.0.0.1:0 "$@" || return 1
	case "$IMCD_URL" in
	http://127.0.0.1:[0-9]*) ;;
	*)
		echo "imcd wrote '$IMCD_URL' to its ready file, not http://127.0.0.1:PORT" >&2
		return 1
		;;
	esac
}

# imcd_stop: SIGTERM and wait; returns imcd's exit status (124 if it had to be killed).
imcd_stop() {
	local rc=0
	[ -n "$IMCD_PID" ] || return 0
	stop_pid "$IMCD_PID" 30 || rc=$?
	IMCD_PID=
	return "$rc"
}

# Deferred: stop imcd if a test did not, without failing the cleanup.
imcd_kill() {
	imcd_stop || true
}

imcd_log_tail() {
	[ -n "$IMCD_LOG" ] && tail -n "${1:-20}" "$IMCD_LOG"
}

imcctl() {
	"$IMC_BIN/imcctl" --server "$IMCD_URL" "$@"
}

imc_attach() {
	"$IMC_BIN/imc-attach" --state-dir "$IMC_STATE" "$@"
}

# imc_detach_quiet DIR: deferred detach; fine if already detached.
imc_detach_quiet() {
	imc_attach detach "$1" >/dev/null 2>&1 || true
}

# imc_teardown_quiet: deferred pool teardown; fine if there is no pool.
imc_teardown_quiet() {
	[ -n "$IMC_STATE" ] || return 0
	if findmnt -rn --mountpoint "$IMC_STATE/pool" >/dev/null 2>&1; then
		"$IMC_BIN/imc-attach" --state-dir "$IMC_STATE" teardown >/dev/null 2>&1 || true
	fi
}

# cache_wait ID [TIMEOUT_S]: prints the cache JSON once its status is no longer Creating.
cache_wait() {
	local id=$1 timeout=${2:-120} deadline status
	deadline=$(($(date +%s) + timeout))
	while :; do
		http GET "$IMCD_URL/v1/imagecaches/$id"
		if [ "$HTTP_STATUS" = 200 ]; then
			status=$(json_get "$HTTP_BODY" '.status // empty' 2>/dev/null || true)
			if [ -n "$status" ] && [ "$status" != Creating ]; then
				printf '%s\n' "$HTTP_BODY"
				return 0
			fi
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "cache $id still not done after ${timeout}s: $HTTP_STATUS $HTTP_BODY" >&2
			return 1
		fi
		if [ -n "$IMCD_PID" ] && ! kill -0 "$IMCD_PID" 2>/dev/null; then
			echo "imcd died while building $id" >&2
			return 1
		fi
		sleep 0.1
	done
}

# create_cache REF [NAME]: POST a cache of one image; prints the id.  Fails unless 202.
create_cache() {
	local body
	body=$(jq -cn --arg ref "$1" --arg name "${2:-test}" '{name: $name, images: [{ref: $ref}]}')
	http POST "$IMCD_URL/v1/imagecaches" "$body"
	if [ "$HTTP_STATUS" != 202 ]; then
		echo "POST /v1/imagecaches: $HTTP_STATUS $HTTP_BODY" >&2
		return 1
	fi
	json_get "$HTTP_BODY" '.id'
}

# check_clean_shutdown: the tests every integration script ends with — imcd stops cleanly on
# SIGTERM with no sanitizer report, the pool is released, and nothing is left behind.
check_clean_shutdown() {
	local pid=$IMCD_PID rc=0
	imcd_stop || rc=$?
	check_eq "imcd exits 0 on SIGTERM" 0 "$rc"
	if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"; then
		not_ok "imcd log has no sanitizer report" \
			"$(grep -E -A20 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG" | head -40)"
	else
		ok "imcd log has no sanitizer report"
	fi
	check "imc-attach teardown releases the pool" imc_attach teardown
	check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops_settled)"
	check_eq "no mount under the test dir" "" "$(tmp_mounts)"
	check_fails "imcd (pid $pid) is gone" kill -0 "$pid"
}

# imcd_start_unix STATE_DIR SOCKET [ARG...]: imcd_start on a Unix socket; IMCD_URL is unix:SOCKET
# (imcctl takes it as --server; curl needs http_unix).
imcd_start_unix() {
	local state=$1 sock=$2
	shift 2
	_imcd_launch "$state" "unix:$sock" "$@" || return 1
	if [ "$IMCD_URL" != "unix:$sock" ]; then
		echo "imcd wrote '$IMCD_URL' to its ready file, not unix:$sock" >&2
		return 1
	fi
}

# http_unix SOCKET METHOD PATH [BODY]: like http, over a Unix socket.
http_unix() {
	local sock=$1 method=$2 path=$3 body=${4-} out
	out=$(mktemp "$TEST_TMP/.http.XXXXXX")
	local -a args=(-sS --unix-socket "$sock" -o "$out" -w '%{http_code}' -X "$method" --max-time 30)
	if [ $# -ge 4 ]; then
		printf '%s' "$body" >"$out.req"
		args+=(-H 'Content-Type: application/json' --data-binary "@$out.req")
	fi
	HTTP_STATUS=$(curl "${args[@]}" "http://localhost$path" 2>/dev/null) || HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_BODY=$(cat "$out" 2>/dev/null || true)
	rm -f "$out" "$out.req"
}

# registry_start_or_bail / imcd_start_or_bail STATE [ARG...]: how every integration test starts
# its registry and its imcd (with the pool's teardown deferred); the run stops if either fails.
registry_start_or_bail() {
	registry_start || bail "registry starts" "$(cat "${REGISTRY_LOG:-/dev/null}" 2>/dev/null)"
	ok "registry serves /v2/ at $REGISTRY"
}

# images_push_or_bail DESC LAYOUT KIND:TAG...: make each image in LAYOUT with mkimage_KIND
# LAYOUT TAG (mkimage.sh, container.sh) and push it to $REGISTRY as imc/TAG:v1; one check, DESC,
# and the run stops if any of them fails.
images_push_or_bail() {
	local desc=$1 layout=$2 spec kind tag
	shift 2
	for spec in "$@"; do
		kind=${spec%%:*} tag=${spec#*:}
		{ "mkimage_$kind" "$layout" "$tag" && mkimage_push "$layout" "$tag" "imc/$tag:v1"; } \
			>/dev/null 2>&1 || bail "$desc"
	done
	ok "$desc"
}

imcd_start_or_bail() {
	defer imc_teardown_quiet
	imcd_start "$@" || bail "imcd starts and writes its ready file" "$(imcd_log_tail 30)"
	ok "imcd listens at $IMCD_URL"
}
