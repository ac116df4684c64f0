/* imcctl: command-line client of imcd's REST API. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include "../api/wire.h"
#include "client.h"

#define DEFAULT_SERVER	     "http://127.0.0.1:8080"
#define RESPONSE_MAX	     (64u << 20)
#define REQUEST_TIMEOUT_S    60L
#define CONNECT_TIMEOUT_S    10L
#define WAIT_TIMEOUT_DEFAULT 1800L
#define RETRY_WITHIN_S	     120 /* a GET answered 503 with Retry-After is repeated this long */

/* Exit codes: 0 ok, 1 the request or the cache failed, 2 usage. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

struct client {
	char server[512]; /* base URL, without a trailing slash */
	/* --server unix:PATH: requests go over this socket to a dummy http://localhost base URL. */
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char where[512];  /* the server as the user named it, for messages */
	char token[4097]; /* the bearer token (--token, else $IMCACHE_TOKEN) or "" */
	struct net_client *net;
};
#define TOKEN_MAX 4096 /* bytes of a bearer token */

/* ---- HTTP -------------------------------------------------------------------------------------
 */

struct reply {
	long status;
	json_t *body; /* NULL when the body is not JSON */
	char *raw;
	unsigned retry_after; /* seconds of a Retry-After header; 0: none */
};

static void reply_free(struct reply *r)
{
	json_decref(r->body);
	free(r->raw);
}

/* The client of imcd: no retries (a failed request is reported at once), at most
 * REQUEST_TIMEOUT_S a request.  The server the user named may be plain HTTP: its host and port
 * are the client's insecure host. */
static int imcd_client_new(const char *server, struct net_client **ret, imc_error *err)
{
	struct net_url u = {0};
	char hostport[300] = "";
	const char *insecure[] = {hostport, NULL};
	int r;

	if (net_url_parse(server, &u, NULL) == 0 && strcmp(u.scheme, "http") == 0)
		snprintf(hostport, sizeof(hostport), "%s:%u", u.host, u.port);
	net_url_free(&u);
	r = net_client_new(
	    &(struct net_config){.insecure_hosts = hostport[0] ? insecure : NULL,
				 .limits = {.connect_timeout_ms = CONNECT_TIMEOUT_S * 1000,
					    .deadline_ms = REQUEST_TIMEOUT_S * 1000},
				 .retry = {.max_attempts = 1}},
	    ret, err);
	return r;
}

/* Seconds of the answer's Retry-After (0 when absent or a date; at most RETRY_WITHIN_S). */
static unsigned retry_after_of(const struct net_response *res)
{
	const char *h = net_response_header(res, "Retry-After", 0);
	unsigned long v;
	char *end = NULL;

	if (!h)
		return 0;
	v = strtoul(h, &end, 10);
	if (end == h || *end)
		return 0;
	return v > RETRY_WITHIN_S ? RETRY_WITHIN_S : (unsigned)v;
}

/* One request through net/ (the answer's status, whatever it is, is the caller's to judge).
 * Fails (printing why) only when no HTTP answer came back. */
static int request(const struct client *c, const char *method, const char *path, const char *body,
		   struct reply *ret)
{
	static const char *const headers[] = {"Accept: application/json", NULL};
	_cleanup_free_ char *url = imc_path_join(c->server, path[0] == '/' ? path + 1 : path);
	struct net_response res = {0};
	imc_error err = {0};
	int r;

	if (!url) {
		fprintf(stderr, "imcctl: out of memory\n");
		return -ENOMEM;
	}
	r = net_perform(c->net,
			&(struct net_request){
			    .method = method,
			    .url = url,
			    .unix_socket = c->unix_path[0] ? c->unix_path : NULL,
			    .bearer = c->token[0] ? c->token : NULL,
			    .headers = headers,
			    .body = {.data = body,
				     .len = body ? strlen(body) : 0,
				     .content_type = body ? "application/json" : NULL},
			    .sink = {.kind = NET_SINK_MEMORY, .max = RESPONSE_MAX},
			    .any_status = true,
			},
			&res, &err);
	if (r < 0) {
		if (r == -EFBIG)
			fprintf(stderr, "imcctl: %s %s%s: response larger than %u bytes\n", method,
				c->where, path, RESPONSE_MAX);
		else
			fprintf(stderr, "imcctl: cannot reach imcd at %s: %s\n", c->where, err.msg);
		net_response_free(&res);
		return -EIO;
	}
	*ret = (struct reply){.status = res.status,
			      .raw = steal_pointer(&res.body),
			      .retry_after = retry_after_of(&res)};
	if (ret->raw)
		ret->body = json_loadb(ret->raw, res.body_len, 0, NULL);
	net_response_free(&res);
	return 0;
}

/* "imcctl: <HTTP status> <code>: <message>" for an error answer. */
static void print_api_error(const struct reply *r)
{
	json_t *e = json_object_get(r->body, "error");
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *msg = json_string_value(json_object_get(e, "message"));

	if (code && msg) {
		fprintf(stderr, "imcctl: %ld %s: %s\n", r->status, code, msg);
		return;
	}
	fprintf(stderr, "imcctl: %ld: unexpected answer: %.200s\n", r->status,
		r->raw ? r->raw : "(empty)");
}

/* A request; a GET that imcd answers 503 with Retry-After (it is working on what the answer
 * needs, e.g. resolving an image) is asked again after that long, for up to RETRY_WITHIN_S. */
static int request_patiently(const struct client *c, const char *method, const char *path,
			     const char *body, struct reply *ret)
{
	time_t give_up = time(NULL) + RETRY_WITHIN_S;

	for (;;) {
		int r = request(c, method, path, body, ret);

		if (r < 0 || ret->status != 503 || !ret->retry_after ||
		    strcmp(method, "GET") != 0 || time(NULL) + (time_t)ret->retry_after > give_up)
			return r;
		sleep(ret->retry_after);
		reply_free(ret);
		*ret = (struct reply){0};
	}
}

/* A request that must answer 2xx with a JSON object: ret_body gets a reference. */
static int call(const struct client *c, const char *method, const char *path, const char *body,
		json_t **ret_body)
{
	struct reply r = {0};

	if (request_patiently(c, method, path, body, &r) < 0)
		return -EIO;
	if (r.status < 200 || r.status > 299) {
		print_api_error(&r);
		reply_free(&r);
		return -EIO;
	}
	if (!json_is_object(r.body)) {
		fprintf(stderr, "imcctl: %ld: answer is not a JSON object: %.200s\n", r.status,
			r.raw ? r.raw : "(empty)");
		reply_free(&r);
		return -EIO;
	}
	*ret_body = json_incref(r.body);
	reply_free(&r);
	return 0;
}

static char *cache_path(const char *id)
{
	_cleanup_free_ char *esc = net_url_escape(id, strlen(id));
	char *p;

	if (!esc || asprintf(&p, "/v1/imagecaches/%s", esc) < 0)
		return NULL;
	return p;
}

/* ---- output -----------------------------------------------------------------------------------
 */

static void print_json(json_t *j)
{
	_cleanup_free_ char *s = json_dumps(j, JSON_INDENT(2));

	if (s)
		printf("%s\n", s);
}

static const char *str_or(json_t *obj, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s && *s ? s : dflt;
}

static void human_size(json_t *v, char *buf, size_t size)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double n;
	size_t u = 0;

	if (!json_is_integer(v)) {
		snprintf(buf, size, "-");
		return;
	}
	n = (double)json_integer_value(v);
	while (n >= 1024 && u + 1 < IMC_ARRAY_SIZE(units)) {
		n /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f%s" : "%.0f%s", n, units[u]);
}

#define LIST_COLS 6

static void list_row(json_t *item, char cells[LIST_COLS][256])
{
	json_t *images = json_object_get(item, "images");
	const char *ref = str_or(json_array_get(images, 0), "ref", "-");

	snprintf(cells[0], 256, "%s", str_or(item, "id", "-"));
	snprintf(cells[1], 256, "%s", str_or(item, "status", "-"));
	snprintf(cells[2], 256, "%s", str_or(item, "name", "-"));
	if (json_array_size(images) > 1)
		snprintf(cells[3], 256, "%s (+%zu)", ref, json_array_size(images) - 1);
	else
		snprintf(cells[3], 256, "%s", ref);
	human_size(json_object_get(item, "size"), cells[4], 256);
	snprintf(cells[5], 256, "%s", str_or(item, "createdAt", "-"));
}

static void print_table(json_t *items)
{
	static const char *const heads[LIST_COLS] = {"ID",    "STATUS", "NAME",
						     "IMAGE", "SIZE",	"CREATED"};
	size_t n = json_array_size(items), width[LIST_COLS];
	char(*rows)[LIST_COLS][256] = calloc(n + 1, sizeof(*rows));

	if (!rows) {
		fprintf(stderr, "imcctl: out of memory\n");
		return;
	}
	for (size_t c = 0; c < LIST_COLS; c++) {
		snprintf(rows[0][c], 256, "%s", heads[c]);
		width[c] = strlen(heads[c]);
	}
	for (size_t i = 0; i < n; i++) {
		list_row(json_array_get(items, i), rows[i + 1]);
		for (size_t c = 0; c < LIST_COLS; c++)
			if (strlen(rows[i + 1][c]) > width[c])
				width[c] = strlen(rows[i + 1][c]);
	}
	for (size_t i = 0; i <= n; i++)
		for (size_t c = 0; c < LIST_COLS; c++)
			printf(c + 1 < LIST_COLS ? "%-*s  " : "%-*s\n",
			       c + 1 < LIST_COLS ? (int)width[c] : 0, rows[i][c]);
	free(rows);
}

/* ---- commands ---------------------------------------------------------------------------------
 */

#define CREATE_DATA_MAX 64 /* --data options (imcd takes at most as many) */

struct create_opts {
	const char *name;
	bool wait;
	long timeout;
	bool json;
	const char *data[CREATE_DATA_MAX]; /* "SRC=PATH" */
	size_t n_data;
	unsigned long long size; /* 0: imcd's default */
	long retention_days;	 /* -1: imcd's default */
	const char *client_token;
	const char *platform; /* every image's; NULL: imcd's default */
};

static void sleep_ms(long ms)
{
	nanosleep(&(struct timespec){.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L}, NULL);
}

/* The build's progress on stderr: a bar redrawn in place on a terminal, else one line each time
 * the percentage moves. */
static void show_progress(const char *id, json_t *cache, bool tty, long *last_pct)
{
	json_t *p = json_object_get(cache, "progress");
	long pct = (long)json_integer_value(json_object_get(p, "percent"));
	double done = (double)json_integer_value(json_object_get(p, "bytesDone")) / 1048576.0;
	double total = (double)json_integer_value(json_object_get(p, "bytesTotal")) / 1048576.0;
	char bar[41];
	int fill = (int)(pct * 40 / 100);

	if (!json_is_object(p) || (!tty && pct == *last_pct))
		return;
	*last_pct = pct;
	if (!tty) {
		fprintf(stderr, "%s: Creating %ld%% (%.1f of %.1f MiB)\n", id, pct, done, total);
		return;
	}
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, ' ', (size_t)(40 - fill));
	bar[40] = '\0';
	fprintf(stderr, "\r%s [%s] %3ld%% %.1f/%.1f MiB", id, bar, pct, done, total);
}

/* Poll until the cache is Ready (0) or Failed, gone, or too slow (1). */
static int wait_ready(const struct client *c, const char *id, const struct create_opts *o)
{
	_cleanup_free_ char *path = cache_path(id);
	uint64_t deadline = imc_monotonic_ns() + (uint64_t)o->timeout * 1000000000ULL;
	bool tty = isatty(STDERR_FILENO);
	long delay = 100, last_pct = -1;

	if (!path)
		return EXIT_FAIL;
	for (;;) {
		_cleanup_json_ json_t *cache = NULL;
		const char *status;

		if (call(c, "GET", path, NULL, &cache) < 0)
			return EXIT_FAIL;
		status = str_or(cache, "status", "");
		/* -o json is for scripts, which often read stderr too: no progress lines there. */
		if (strcmp(status, "Creating") == 0 && (tty || !o->json))
			show_progress(id, cache, tty, &last_pct);
		else if (tty && last_pct >= 0)
			fputc('\n', stderr);
		if (strcmp(status, "Ready") == 0) {
			if (o->json)
				print_json(cache);
			else
				printf("%s\n", id);
			return EXIT_OK;
		}
		if (strcmp(status, "Creating") != 0) {
			if (o->json)
				print_json(cache);
			fprintf(stderr, "imcctl: cache %s: %s: %s\n", id, status,
				str_or(cache, "statusMessage", "(no message)"));
			return EXIT_FAIL;
		}
		if (o->timeout > 0 && imc_monotonic_ns() >= deadline) {
			fprintf(stderr, "imcctl: cache %s: still Creating after %ld s\n", id,
				o->timeout);
			return EXIT_FAIL;
		}
		sleep_ms(delay);
		delay = delay * 2 > 500 ? 500 : delay * 2;
	}
}

/* "SRC=PATH" → {"source":SRC,"path":PATH}; the last '=' splits (URLs may hold one). */
static json_t *data_entry(const char *arg)
{
	const char *eq = strrchr(arg, '=');
	_cleanup_free_ char *src = eq ? strndup(arg, (size_t)(eq - arg)) : NULL;

	if (!src)
		return NULL;
	return json_pack("{s:s,s:s}", "source", src, "path", eq + 1);
}

static char *create_body(char **images, int n, const struct create_opts *o)
{
	_cleanup_json_ json_t *body = json_object();
	json_t *arr = json_array(), *data = NULL;

	if (!body || !arr || json_object_set_new(body, "images", arr) < 0)
		return NULL;
	for (int i = 0; i < n; i++)
		if (json_array_append_new(arr, json_pack("{s:s,s:s*}", "ref", images[i], "platform",
							 o->platform)) < 0)
			return NULL;
	if (o->name && json_object_set_new(body, "name", json_string(o->name)) < 0)
		return NULL;
	if (o->n_data) {
		data = json_array();
		if (!data || json_object_set_new(body, "data", data) < 0)
			return NULL;
		for (size_t i = 0; i < o->n_data; i++)
			if (json_array_append_new(data, data_entry(o->data[i])) < 0)
				return NULL;
	}
	if (o->size && json_object_set_new(body, "size", json_integer((json_int_t)o->size)) < 0)
		return NULL;
	if (o->retention_days >= 0 &&
	    json_object_set_new(body, "retentionDays", json_integer(o->retention_days)) < 0)
		return NULL;
	if (o->client_token &&
	    json_object_set_new(body, "clientToken", json_string(o->client_token)) < 0)
		return NULL;
	return json_dumps(body, JSON_COMPACT);
}

static int parse_output(const char *s, bool *json)
{
	if (strcmp(s, "json") == 0)
		*json = true;
	else if (strcmp(s, "table") == 0 || strcmp(s, "plain") == 0)
		*json = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_create_args(int argc, char **argv, struct create_opts *o)
{
	static const struct option longopts[] = {
	    {"name", required_argument, NULL, 'n'},
	    {"wait", no_argument, NULL, 'w'},
	    {"timeout", required_argument, NULL, 't'},
	    {"output", required_argument, NULL, 'o'},
	    {"data", required_argument, NULL, 'd'},
	    {"size", required_argument, NULL, 's'},
	    {"retention-days", required_argument, NULL, 'r'},
	    {"client-token", required_argument, NULL, 'k'},
	    {"platform", required_argument, NULL, 'p'},
	    {NULL, 0, NULL, 0},
	};
	char *end;
	int ch;

	*o = (struct create_opts){.timeout = WAIT_TIMEOUT_DEFAULT, .retention_days = -1};
	while ((ch = getopt_long(argc, argv, ":n:wt:o:d:s:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'r':
			errno = 0;
			o->retention_days = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || o->retention_days < 0) {
				fprintf(
				    stderr,
				    "imcctl: --retention-days %s: want days (0: never expire)\n",
				    optarg);
				return -1;
			}
			break;
		case 'k':
			o->client_token = optarg;
			break;
		case 'p':
			o->platform = optarg; /* imcd checks it */
			break;
		case 'd': {
			const char *eq = strrchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1]) {
				fprintf(stderr, "imcctl: --data %s: want SOURCE=PATH\n", optarg);
				return -1;
			}
			if (o->n_data >= CREATE_DATA_MAX) {
				fprintf(stderr, "imcctl: at most %d --data\n", CREATE_DATA_MAX);
				return -1;
			}
			o->data[o->n_data++] = optarg;
			break;
		}
		case 's':
			errno = 0;
			o->size = strtoull(optarg, &end, 10);
			if (errno || *end || end == optarg || o->size == 0 || optarg[0] == '-') {
				fprintf(stderr, "imcctl: --size %s: want bytes (> 0)\n", optarg);
				return -1;
			}
			break;
		case 'n':
			o->name = optarg;
			break;
		case 'w':
			o->wait = true;
			break;
		case 't':
			errno = 0;
			o->timeout = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || o->timeout < 0) {
				fprintf(stderr, "imcctl: --timeout %s: want seconds (0: none)\n",
					optarg);
				return -1;
			}
			break;
		case 'o':
			if (parse_output(optarg, &o->json) < 0) {
				fprintf(stderr, "imcctl: -o %s: want json\n", optarg);
				return -1;
			}
			break;
		default:
			fprintf(stderr, "imcctl: create: bad option %s\n", argv[optind - 1]);
			return -1;
		}
	}
	return 0;
}

static int cmd_create(const struct client *c, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *body = NULL;
	struct create_opts o;
	const char *id;

	optind = 1;
	if (parse_create_args(argc, argv, &o) < 0)
		return EXIT_USAGE;
	/* Options may follow the images: getopt permutes, the images are what is left. */
	if (optind >= argc) {
		fprintf(stderr,
			"usage: imcctl create IMAGE [IMAGE...] [--name N] [--data SRC=PATH]... "
			"[--platform OS/ARCH[/VARIANT]] [--size BYTES] [--retention-days N] "
			"[--client-token T] [--wait] [--timeout SEC] [-o json]\n");
		return EXIT_USAGE;
	}
	body = create_body(argv + optind, argc - optind, &o);
	if (!body) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	if (call(c, "POST", "/v1/imagecaches", body, &answer) < 0)
		return EXIT_FAIL;
	id = json_string_value(json_object_get(answer, "id"));
	if (!id) {
		fprintf(stderr, "imcctl: the answer has no id\n");
		return EXIT_FAIL;
	}
	if (o.wait)
		return wait_ready(c, id, &o);
	if (o.json)
		print_json(answer);
	else
		printf("%s\n", id);
	return EXIT_OK;
}

#define LIST_USAGE                                                                                 \
	"usage: imcctl list [--status S] [--name N] [--image REF [--match exact|best]] [--limit "  \
	"N] "                                                                                      \
	"[-o json]\n"
#define LIST_PAGES_MAX (API_MAX_CACHES + 1) /* a server that never stops paging */

/* Append "&key=value" (value escaped) to *q. */
static int query_add(char **q, const char *key, const char *value)
{
	_cleanup_free_ char *esc = net_url_escape(value, strlen(value));
	char *n;

	if (!esc || asprintf(&n, "%s%s%s=%s", *q, **q ? "&" : "", key, esc) < 0)
		return -ENOMEM;
	free(*q);
	*q = n;
	return 0;
}

/* One page at the query plus the token; its items are moved to all. */
static int list_page(const struct client *c, const char *query, const char *token, json_t *all,
		     char **ret_next)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *q = strdup(query);
	_cleanup_free_ char *path = NULL;
	const char *next;

	if (!q || (token && query_add(&q, "pageToken", token) < 0) ||
	    asprintf(&path, "/v1/imagecaches%s%s", *q ? "?" : "", q) < 0) {
		fprintf(stderr, "imcctl: out of memory\n");
		return -ENOMEM;
	}
	if (call(c, "GET", path, NULL, &answer) < 0)
		return -EIO;
	if (json_array_extend(all, json_object_get(answer, "items")) < 0) {
		fprintf(stderr, "imcctl: %s: answer without items\n", path);
		return -EIO;
	}
	next = json_string_value(json_object_get(answer, "nextPageToken"));
	*ret_next = next ? strdup(next) : NULL;
	if (next && !*ret_next) {
		fprintf(stderr, "imcctl: out of memory\n");
		return -ENOMEM;
	}
	return 0;
}

static int list_all(const struct client *c, const char *query, json_t *all)
{
	_cleanup_free_ char *token = NULL;

	for (size_t page = 0; page < LIST_PAGES_MAX; page++) {
		char *next = NULL;

		if (list_page(c, query, token, all, &next) < 0)
			return -EIO;
		free(token);
		token = next;
		if (!token)
			return 0;
	}
	fprintf(stderr, "imcctl: more than %d pages\n", LIST_PAGES_MAX);
	return -E2BIG;
}

static int cmd_list(const struct client *c, int argc, char **argv)
{
	static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
						 {"status", required_argument, NULL, 's'},
						 {"name", required_argument, NULL, 'n'},
						 {"image", required_argument, NULL, 'i'},
						 {"limit", required_argument, NULL, 'l'},
						 {"match", required_argument, NULL, 'm'},
						 {NULL, 0, NULL, 0}};
	_cleanup_json_ json_t *items = json_array();
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *query = strdup("");
	bool json = false;
	int ch, r = 0;

	if (!items || !query) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	optind = 1;
	while (r == 0 && (ch = getopt_long(argc, argv, ":o:", longopts, NULL)) != -1) {
		if (ch == 'o')
			r = parse_output(optarg, &json);
		else if (ch == 's')
			r = query_add(&query, "status", optarg);
		else if (ch == 'n')
			r = query_add(&query, "name", optarg);
		else if (ch == 'i')
			r = query_add(&query, "image", optarg);
		else if (ch == 'l')
			r = query_add(&query, "limit", optarg);
		else if (ch == 'm')
			r = query_add(&query, "match", optarg);
		else
			r = -EINVAL;
	}
	if (r < 0 || optind != argc) {
		fprintf(stderr, LIST_USAGE);
		return EXIT_USAGE;
	}
	if (list_all(c, query, items) < 0)
		return EXIT_FAIL;
	answer = json_pack("{s:O}", "items", items);
	if (!answer) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	if (json)
		print_json(answer);
	else
		print_table(items);
	return EXIT_OK;
}

/* The options of get, delete, attach, detach and attachments. */
struct one_opts {
	bool json, output_given, force;
	const char *attach_id, *host;
	const char *args[2]; /* ID [ATTACHMENT] */
	int n_args;
};

static int parse_one_args(int argc, char **argv, int want_args, struct one_opts *o)
{
	static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
						 {"force", no_argument, NULL, 'f'},
						 {"id", required_argument, NULL, 'i'},
						 {"host", required_argument, NULL, 'H'},
						 {NULL, 0, NULL, 0}};
	int ch;

	*o = (struct one_opts){0};
	optind = 1;
	while ((ch = getopt_long(argc, argv, ":o:f", longopts, NULL)) != -1) {
		if (ch == 'o' && parse_output(optarg, &o->json) == 0) {
			o->output_given = true;
			continue;
		}
		if (ch == 'f')
			o->force = true;
		else if (ch == 'i')
			o->attach_id = optarg;
		else if (ch == 'H')
			o->host = optarg;
		else
			return -1;
	}
	for (; optind < argc && o->n_args < 2; optind++)
		o->args[o->n_args++] = argv[optind];
	return optind == argc && o->n_args == want_args ? 0 : -1;
}

/* get ID, human: the fields people look at, then the events. */
static void print_cache(json_t *j)
{
	static const char *const keys[] = {"id",	"name",	   "status",	 "statusMessage",
					   "createdAt", "readyAt", "lastUsedAt", "expiresAt"};
	json_t *p = json_object_get(j, "progress"), *ev, *img;
	char size[32];
	size_t i;

	for (i = 0; i < IMC_ARRAY_SIZE(keys); i++)
		if (json_string_value(json_object_get(j, keys[i])))
			printf("%-14s %s\n", keys[i],
			       json_string_value(json_object_get(j, keys[i])));
	human_size(json_object_get(j, "size"), size, sizeof(size));
	printf("%-14s %s\n", "size", size);
	printf("%-14s %lld%s\n", "retentionDays",
	       (long long)json_integer_value(json_object_get(j, "retentionDays")),
	       json_integer_value(json_object_get(j, "retentionDays")) == 0 ? " (pinned)" : "");
	printf("%-14s %lld\n", "attachments",
	       (long long)json_integer_value(json_object_get(j, "attachments")));
	if (json_is_object(p))
		printf("%-14s %lld%% (%lld of %lld bytes)\n", "progress",
		       (long long)json_integer_value(json_object_get(p, "percent")),
		       (long long)json_integer_value(json_object_get(p, "bytesDone")),
		       (long long)json_integer_value(json_object_get(p, "bytesTotal")));
	json_array_foreach(json_object_get(j, "images"), i, img)
	    printf("image %-8zu %s %s %s\n", i, str_or(img, "ref", "-"),
		   str_or(img, "platform", ""), str_or(img, "digest", ""));
	printf("events:\n");
	json_array_foreach(json_object_get(j, "events"), i, ev)
	    printf("  %s  %-12s %s\n", str_or(ev, "time", "-"), str_or(ev, "type", "-"),
		   str_or(ev, "message", ""));
}

static int cmd_get(const struct client *c, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *path = NULL;
	struct one_opts o;

	if (parse_one_args(argc, argv, 1, &o) < 0) {
		fprintf(stderr, "usage: imcctl get ID [-o json|table]\n");
		return EXIT_USAGE;
	}
	path = cache_path(o.args[0]);
	if (!path || call(c, "GET", path, NULL, &answer) < 0)
		return EXIT_FAIL;
	/* Without -o: a summary for a person at a terminal, the JSON for a script (as before). */
	if (o.output_given ? o.json : !isatty(STDOUT_FILENO))
		print_json(answer);
	else
		print_cache(answer);
	return EXIT_OK;
}

static int cmd_delete(const struct client *c, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *path = NULL, *full = NULL;
	struct one_opts o;

	if (parse_one_args(argc, argv, 1, &o) < 0) {
		fprintf(stderr, "usage: imcctl delete ID [--force] [-o json]\n");
		return EXIT_USAGE;
	}
	path = cache_path(o.args[0]);
	if (!path || asprintf(&full, "%s%s", path, o.force ? "?force=true" : "") < 0)
		return EXIT_FAIL;
	if (call(c, "DELETE", full, NULL, &answer) < 0)
		return EXIT_FAIL;
	if (o.json)
		print_json(answer);
	else
		printf("%s\n", o.args[0]);
	return EXIT_OK;
}

/* attach ID [--id att-…] [--host H]: record an attachment (what imc-attach --server does);
 * detach ID ATTACHMENT; attachments ID. */
static int cmd_attachments(const struct client *c, const char *cmd, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL, *body = json_object();
	_cleanup_free_ char *path = NULL, *full = NULL, *text = NULL;
	const bool detach = strcmp(cmd, "detach") == 0, list = strcmp(cmd, "attachments") == 0;
	struct one_opts o;
	size_t i;
	json_t *a;

	if (parse_one_args(argc, argv, detach ? 2 : 1, &o) < 0) {
		fprintf(stderr, "usage: imcctl attach ID [--id att-…] [--host H] | detach ID "
				"ATTACHMENT | attachments ID [-o json]\n");
		return EXIT_USAGE;
	}
	if (detach && !api_attach_id_valid(o.args[1])) {
		fprintf(stderr, "imcctl: attachment \"%.80s\": want att-<16 hex digits>\n",
			o.args[1]);
		return EXIT_USAGE;
	}
	path = cache_path(o.args[0]);
	if (!path || !body ||
	    asprintf(&full, "%s/attachments%s%s", path, detach ? "/" : "",
		     detach ? o.args[1] : "") < 0)
		return EXIT_FAIL;
	if (o.attach_id)
		json_object_set_new(body, "id", json_string(o.attach_id));
	if (o.host)
		json_object_set_new(body, "host", json_string(o.host));
	text = json_dumps(body, JSON_COMPACT);
	if (!text || call(c,
			  detach ? "DELETE"
			  : list ? "GET"
				 : "POST",
			  full, detach || list ? NULL : text, &answer) < 0)
		return EXIT_FAIL;
	if (o.json)
		print_json(answer);
	else if (!list)
		printf("%s\n", str_or(answer, "id", "-"));
	else
		json_array_foreach(json_object_get(answer, "items"), i, a)
		    printf("%s  %s  %s\n", str_or(a, "id", "-"), str_or(a, "attachedAt", "-"),
			   str_or(a, "host", "-"));
	return EXIT_OK;
}

/* ---- main -------------------------------------------------------------------------------------
 */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imcctl [--server URL|unix:PATH] [--token T] COMMAND [ARGS]\n"
	    "       imcctl -h|--help\n"
	    "\n"
	    "  create IMAGE [IMAGE...] [--name N] [--data SRC=PATH]... [--platform P] [--wait]\n"
	    "         [--size BYTES] [--timeout SEC] [--retention-days N] [--client-token T]\n"
	    "         [-o json]\n"
	    "  list [--status S] [--name N] [--image REF [--match exact|best]] [--limit N]\n"
	    "         [-o json]\n"
	    "  get ID [-o json]\n"
	    "  delete ID [--force] [-o json]\n"
	    "  attach ID [--id att-<16 hex>] [--host H] [-o json]\n"
	    "  detach ID ATTACHMENT [-o json]\n"
	    "  attachments ID [-o json]\n"
	    "  push ID REGISTRY/REPO:TAG [--insecure-registry HOST:PORT]...\n"
	    "         write the cache's chunks to an OCI registry as an artifact\n"
	    "\n"
	    "-o json (--output json) prints the API's answer as JSON.  The server defaults to\n"
	    "$IMCACHE_SERVER, else %s; the bearer token (--token) to\n"
	    "$IMCACHE_TOKEN.  create --wait draws a progress bar on a terminal.\n",
	    DEFAULT_SERVER);
}

/* "unix:PATH": the socket path, and a dummy base URL (the Host header says localhost). */
static int set_unix_server(struct client *c, const char *spec)
{
	const char *path = spec + strlen(API_LISTEN_UNIX_PREFIX);
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(c->unix_path)) {
		fprintf(stderr, "imcctl: server \"%.100s\": want unix:PATH of at most %zu bytes\n",
			spec, sizeof(c->unix_path) - 1);
		return -1;
	}
	memcpy(c->unix_path, path, n + 1);
	snprintf(c->server, sizeof(c->server), "http://localhost");
	snprintf(c->where, sizeof(c->where), "%s", spec);
	return 0;
}

static int set_server(struct client *c, const char *url)
{
	size_t n = strlen(url);

	if (strncmp(url, API_LISTEN_UNIX_PREFIX, strlen(API_LISTEN_UNIX_PREFIX)) == 0)
		return set_unix_server(c, url);
	while (n > 0 && url[n - 1] == '/')
		n--;
	if (n == 0 || n >= sizeof(c->server)) {
		fprintf(stderr,
			"imcctl: server URL \"%.100s\": want http://HOST:PORT or unix:PATH\n", url);
		return -1;
	}
	memcpy(c->server, url, n);
	c->server[n] = '\0';
	memcpy(c->where, c->server, n + 1);
	return 0;
}

/* Global options come before the command; returns the index of the command or -1. */
static int parse_global(int argc, char **argv, struct client *c)
{
	const char *env = secure_getenv("IMCACHE_SERVER"), *tenv = secure_getenv("IMCACHE_TOKEN");
	const char *server = env && *env ? env : DEFAULT_SERVER;
	const char *token = tenv && *tenv ? tenv : NULL;
	int i = 1;

	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
			token = argv[++i];
		} else if (strncmp(argv[i], "--token=", 8) == 0) {
			token = argv[i] + 8;
		} else if (strcmp(argv[i], "--server") == 0 && i + 1 < argc) {
			server = argv[++i];
		} else if (strncmp(argv[i], "--server=", 9) == 0) {
			server = argv[i] + 9;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			exit(EXIT_OK);
		} else {
			fprintf(stderr, "imcctl: unknown option %s\n", argv[i]);
			return -1;
		}
	}
	if (set_server(c, server) < 0)
		return -1;
	if (token && (strlen(token) > TOKEN_MAX || strpbrk(token, "\r\n"))) {
		fprintf(stderr, "imcctl: the token: at most %d bytes on one line\n", TOKEN_MAX);
		return -1;
	}
	if (token)
		snprintf(c->token, sizeof(c->token), "%s", token);
	if (i >= argc) {
		usage(stderr);
		return -1;
	}
	return i;
}

/* push CACHE_ID REF [--insecure-registry HOST:PORT]...: client/push.c does the work. */
static int cmd_push(const struct client *c, int argc, char **argv)
{
	const char *insecure[17] = {0};
	struct client_push_config cfg = {.net = c->net,
					 .server = c->server,
					 .unix_socket = c->unix_path[0] ? c->unix_path : NULL,
					 .token = c->token[0] ? c->token : NULL,
					 .insecure_registries = insecure};
	struct client_push_stats st;
	const char *pos[2];
	size_t n_insecure = 0, n_pos = 0;
	imc_error err = {0};

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--insecure-registry") == 0 && i + 1 < argc && n_insecure < 16)
			insecure[n_insecure++] = argv[++i];
		else if (argv[i][0] != '-' && n_pos < 2)
			pos[n_pos++] = argv[i];
		else
			n_pos = 3;
	}
	if (n_pos != 2) {
		fprintf(stderr, "usage: imcctl [--server URL|unix:PATH] push CACHE_ID "
				"REGISTRY/REPO:TAG [--insecure-registry HOST:PORT]...\n");
		return EXIT_USAGE;
	}
	if (client_push_snapshot(&cfg, pos[0], pos[1], &st, &err) < 0) {
		fprintf(stderr, "imcctl: %s\n", err.msg);
		return EXIT_FAIL;
	}
	printf("%s@%s\n", pos[1], st.manifest_digest);
	fprintf(stderr,
		"imcctl: pushed %s: %" PRIu64 " blobs uploaded (%" PRIu64 " bytes), %" PRIu64
		" already there\n",
		pos[0], st.blobs_uploaded, st.bytes_uploaded, st.blobs_skipped);
	return EXIT_OK;
}

static int run(const struct client *c, int argc, char **argv)
{
	const char *cmd = argv[0];

	if (strcmp(cmd, "create") == 0)
		return cmd_create(c, argc, argv);
	if (strcmp(cmd, "list") == 0 || strcmp(cmd, "ls") == 0)
		return cmd_list(c, argc, argv);
	if (strcmp(cmd, "get") == 0)
		return cmd_get(c, argc, argv);
	if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "rm") == 0)
		return cmd_delete(c, argc, argv);
	if (strcmp(cmd, "attach") == 0 || strcmp(cmd, "detach") == 0 ||
	    strcmp(cmd, "attachments") == 0)
		return cmd_attachments(c, cmd, argc, argv);
	if (strcmp(cmd, "push") == 0)
		return cmd_push(c, argc, argv);
	fprintf(stderr, "imcctl: unknown command \"%s\"\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	struct client c = {0};
	imc_error err = {0};
	int i = parse_global(argc, argv, &c), r;

	if (i < 0)
		return EXIT_USAGE;
	if (imcd_client_new(c.server, &c.net, &err) < 0) {
		fprintf(stderr, "imcctl: %s\n", err.msg);
		return EXIT_FAIL;
	}
	r = run(&c, argc - i, argv + i);
	explicit_bzero(c.token, sizeof(c.token));
	net_client_free(c.net);
	return r;
}
