# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# A real web server for model-data tests: Debian's nginx on a random loopback port, with its own
# config, prefix, logs and temp dirs in TEST_TMP; stopped by PID at exit.  Serves WEB_ROOT with
# byte ranges (nginx's default), JSON under /api/ (the Hugging Face listing layout) and, under
# /slow/, at WEB_SLOW_RATE (default 2m) bytes per second.  Needs common.sh.
#
#   webserver_start             exports WEB_URL (http://127.0.0.1:PORT), WEB_ROOT, WEB_PID
#   webserver_stop
#   web_hf_repo ORG/REPO REV FILE...   publish files (paths relative to the current directory)
#                               as a Hugging Face model repository:
#                               /api/models/ORG/REPO/revision/REV (the file list) and
#                               /ORG/REPO/resolve/REV/FILE

NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
WEB_PID=
WEB_URL=
WEB_ROOT=

_webserver_config() {
	local dir=$1 port=$2
	cat <<EOF
daemon off;
master_process on;
worker_processes 2;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
	access_log $dir/access.log;
	client_body_temp_path $dir/tmp/body;
	proxy_temp_path $dir/tmp/proxy;
	fastcgi_temp_path $dir/tmp/fastcgi;
	uwsgi_temp_path $dir/tmp/uwsgi;
	scgi_temp_path $dir/tmp/scgi;
	default_type application/octet-stream;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 10000;
	server {
		listen 127.0.0.1:$port;
		root $dir/root;
		location /api/ { default_type application/json; }
		location /slow/ { limit_rate ${WEB_SLOW_RATE:-2m}; }
	}
}
EOF
}

# webserver_start: start nginx, wait until it answers.  Stopped by PID at exit.
webserver_start() {
	local dir attempt port pid deadline code
	[ -x "$NGINX_BIN" ] || {
		echo "webserver_start: $NGINX_BIN not found (apt-get install nginx-light)" >&2
		return 1
	}
	dir=$(mktemp -d "$TEST_TMP/web.XXXXXX")
	mkdir -p "$dir/root" "$dir/tmp"
	: >"$dir/root/.alive"
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && continue
		_webserver_config "$dir" "$port" >"$dir/nginx.conf"
		"$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/log" 2>&1 &
		pid=$!
		deadline=$(($(date +%s) + 20))
		code=000
		while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
			code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 \
				"http://127.0.0.1:$port/.alive" 2>/dev/null) || code=000
			[ "$code" = 200 ] && break
			sleep 0.05
		done
		if [ "$code" = 200 ]; then
			WEB_URL=http://127.0.0.1:$port
			WEB_ROOT=$dir/root
			WEB_PID=$pid
			WEB_DIR=$dir
			export WEB_URL WEB_ROOT WEB_PID WEB_DIR
			defer webserver_stop
			return 0
		fi
		stop_pid "$pid" 5 || true
		if ! grep -q 'Address already in use' "$dir/error.log" "$dir/log" 2>/dev/null; then
			echo "webserver_start: attempt $attempt on port $port failed:" >&2
			tail -n 5 "$dir/error.log" "$dir/log" >&2 2>/dev/null
		fi
	done
	echo "webserver_start: could not start $NGINX_BIN" >&2
	return 1
}

# The master gets SIGTERM (stop_pid) and takes its workers with it.
webserver_stop() {
	[ -n "${WEB_PID:-}" ] || return 0
	stop_pid "$WEB_PID" 10 || true
	WEB_PID=
}

webserver_start_or_bail() {
	webserver_start || bail "nginx starts" "$(cat "${WEB_DIR:-/nonexistent}/error.log" 2>/dev/null)"
	ok "nginx serves $WEB_URL"
}

# web_hf_repo ORG/REPO REV FILE...: run in the directory holding the files.
web_hf_repo() {
	local repo=$1 rev=$2 f list
	shift 2
	mkdir -p "$WEB_ROOT/api/models/$repo/revision"
	list=$(printf '%s\n' "$@" | jq -R '{rfilename: .}' | jq -cs --arg id "$repo" \
		'{id: $id, sha: "0000000000000000000000000000000000000000", siblings: .}')
	printf '%s' "$list" >"$WEB_ROOT/api/models/$repo/revision/$rev"
	for f in "$@"; do
		mkdir -p "$(dirname "$WEB_ROOT/$repo/resolve/$rev/$f")"
		cp "$f" "$WEB_ROOT/$repo/resolve/$rev/$f"
	done
}
