/* imcctl: command-line client of imcd's REST API.  The commands are a table (commands[]): a
 * name, a function (in client/cmd_*.c, by command group), its help lines and its usage line; each
 * command parses its own options from a table of rows.  Here: the requests, the output helpers,
 * the global options and main. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../api/wire.h"
#include "../common/imc.h"
#include "../net/net.h"
#include "imcctl.h"

#define DEFAULT_SERVER	  "http://127.0.0.1:8080"
#define RESPONSE_MAX	  (64u << 20)
#define REQUEST_TIMEOUT_S 60L
#define CONNECT_TIMEOUT_S 10L
#define RETRY_WITHIN_S	  120  /* a GET answered 503 with Retry-After is repeated this long */
#define TOKEN_MAX	  4096 /* bytes of a bearer token */
#define HELP_DONE	  (-2) /* parse_global after --help: exit 0 */

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
	char hostport[300];
	const char *insecure[] = {hostport, NULL};
	int r;

	net_url_plain_hostport(server, hostport, sizeof(hostport));
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
int client_call(const struct client *c, const char *method, const char *path, const char *body,
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

char *client_cache_path(const char *id)
{
	_cleanup_free_ char *esc = net_url_escape(id, strlen(id));
	char *p;

	if (!esc || asprintf(&p, "/v1/imagecaches/%s", esc) < 0)
		return NULL;
	return p;
}

/* ---- output -----------------------------------------------------------------------------------
 */

void client_print_json(json_t *j)
{
	_cleanup_free_ char *s = json_dumps(j, JSON_INDENT(2));

	if (s)
		printf("%s\n", s);
}

const char *client_str_or(json_t *obj, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s && *s ? s : dflt;
}

void client_human_size(json_t *v, char *buf, size_t size)
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

int client_parse_output(const char *s, bool *json)
{
	if (strcmp(s, "json") == 0)
		*json = true;
	else if (strcmp(s, "table") == 0 || strcmp(s, "plain") == 0)
		*json = false;
	else
		return -EINVAL;
	return 0;
}

/* ---- options in imcctl's own syntax -----------------------------------------------------------
 */

const struct client_flag *client_flag_match(const struct client_flag *table, size_t n, bool equals,
					    int argc, char **argv, int *i, const char **ret_value)
{
	const char *arg = argv[*i];

	for (size_t k = 0; k < n; k++) {
		size_t len = strlen(table[k].name);

		*ret_value = NULL;
		if (strcmp(arg, table[k].name) == 0 && (!table[k].has_value || *i + 1 < argc)) {
			if (table[k].has_value)
				*ret_value = argv[++*i];
			return &table[k];
		}
		if (equals && table[k].has_value && strncmp(arg, table[k].name, len) == 0 &&
		    arg[len] == '=') {
			*ret_value = arg + len + 1;
			return &table[k];
		}
	}
	return NULL;
}

/* ---- main -------------------------------------------------------------------------------------
 */

#define ATTACHMENTS_USAGE                                                                            \
	"usage: imcctl attach ID [--id att-…] [--host H] | detach ID ATTACHMENT | attachments ID " \
	"[-o json]\n"

/* In the order of the help. */
static const struct client_command commands[] = {
    {"create", NULL, client_cmd_create,
     "  create IMAGE [IMAGE...] [--name N] [--data SRC=PATH]... [--platform P] [--wait]\n"
     "         [--size BYTES] [--timeout SEC] [--retention-days N] [--client-token T]\n"
     "         [-o json]\n",
     "usage: imcctl create IMAGE [IMAGE...] [--name N] [--data SRC=PATH]... "
     "[--platform OS/ARCH[/VARIANT]] [--size BYTES] [--retention-days N] "
     "[--client-token T] [--wait] [--timeout SEC] [-o json]\n"},
    {"list", "ls", client_cmd_list,
     "  list [--status S] [--name N] [--image REF [--match exact|best]] [--limit N]\n"
     "         [-o json]\n",
     "usage: imcctl list [--status S] [--name N] [--image REF [--match exact|best]] [--limit N] "
     "[-o json]\n"},
    {"get", NULL, client_cmd_get, "  get ID [-o json]\n", "usage: imcctl get ID [-o json|table]\n"},
    {"delete", "rm", client_cmd_delete, "  delete ID [--force] [-o json]\n",
     "usage: imcctl delete ID [--force] [-o json]\n"},
    {"attach", NULL, client_cmd_attach, "  attach ID [--id att-<16 hex>] [--host H] [-o json]\n",
     ATTACHMENTS_USAGE},
    {"detach", NULL, client_cmd_detach, "  detach ID ATTACHMENT [-o json]\n", ATTACHMENTS_USAGE},
    {"attachments", NULL, client_cmd_attachments, "  attachments ID [-o json]\n",
     ATTACHMENTS_USAGE},
    {"push", NULL, client_cmd_push,
     "  push ID REGISTRY/REPO:TAG [--insecure-registry HOST:PORT]...\n"
     "         write the cache's chunks to an OCI registry as an artifact\n",
     "usage: imcctl [--server URL|unix:PATH] push CACHE_ID REGISTRY/REPO:TAG "
     "[--insecure-registry HOST:PORT]...\n"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: imcctl [--server URL|unix:PATH] [--token T] COMMAND [ARGS]\n"
		   "       imcctl -h|--help\n"
		   "\n");
	for (size_t i = 0; i < IMC_ARRAY_SIZE(commands); i++)
		fputs(commands[i].help, f);
	fprintf(f,
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

/* The global options, before the command. */
struct globals {
	const char *server, *token;
};

static int take_token(const char *value, void *g)
{
	((struct globals *)g)->token = value;
	return 0;
}

static int take_server(const char *value, void *g)
{
	((struct globals *)g)->server = value;
	return 0;
}

static int take_help(const char *value, void *g)
{
	usage(stdout);
	return HELP_DONE;
}

/* --NAME VALUE or --NAME=VALUE. */
static const struct client_flag global_flags[] = {
    {"--token", true, take_token},
    {"--server", true, take_server},
    {"-h", false, take_help},
    {"--help", false, take_help},
};

/* The server and the token, once the flags have said theirs. */
static int set_client(struct client *c, const struct globals *g)
{
	if (set_server(c, g->server) < 0)
		return -1;
	if (g->token && (strlen(g->token) > TOKEN_MAX || strpbrk(g->token, "\r\n"))) {
		fprintf(stderr, "imcctl: the token: at most %d bytes on one line\n", TOKEN_MAX);
		return -1;
	}
	if (g->token)
		snprintf(c->token, sizeof(c->token), "%s", g->token);
	return 0;
}

/* Global options come before the command; returns the index of the command, -1 on a usage
 * error or HELP_DONE. */
static int parse_global(int argc, char **argv, struct client *c)
{
	const char *env = secure_getenv("IMCACHE_SERVER"), *tenv = secure_getenv("IMCACHE_TOKEN");
	struct globals g = {.server = env && *env ? env : DEFAULT_SERVER,
			    .token = tenv && *tenv ? tenv : NULL};
	int i = 1, r;

	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *value;
		const struct client_flag *f = client_flag_match(
		    global_flags, IMC_ARRAY_SIZE(global_flags), true, argc, argv, &i, &value);

		if (!f) {
			fprintf(stderr, "imcctl: unknown option %s\n", argv[i]);
			return -1;
		}
		if ((r = f->take(value, &g)) != 0)
			return r;
	}
	if (set_client(c, &g) < 0)
		return -1;
	if (i >= argc) {
		usage(stderr);
		return -1;
	}
	return i;
}

static const struct client_command *command_of(const char *name)
{
	for (size_t i = 0; i < IMC_ARRAY_SIZE(commands); i++)
		if (strcmp(name, commands[i].name) == 0 ||
		    (commands[i].alias && strcmp(name, commands[i].alias) == 0))
			return &commands[i];
	return NULL;
}

int main(int argc, char **argv)
{
	struct client c = {0};
	const struct client_command *cmd;
	imc_error err = {0};
	int i = parse_global(argc, argv, &c), r;

	if (i == HELP_DONE)
		return EXIT_OK;
	if (i < 0)
		return EXIT_USAGE;
	if (imcd_client_new(c.server, &c.net, &err) < 0) {
		fprintf(stderr, "imcctl: %s\n", err.msg);
		return EXIT_FAIL;
	}
	cmd = command_of(argv[i]);
	if (cmd) {
		r = cmd->run(&c, cmd, argc - i, argv + i);
	} else {
		fprintf(stderr, "imcctl: unknown command \"%s\"\n", argv[i]);
		usage(stderr);
		r = EXIT_USAGE;
	}
	explicit_bzero(c.token, sizeof(c.token));
	net_client_free(c.net);
	return r;
}
