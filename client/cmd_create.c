/* imcctl create: a cache from images (and data), and --wait for it to be Ready. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/imc.h"
#include "imcctl.h"

#define WAIT_TIMEOUT_DEFAULT 1800L
#define CREATE_DATA_MAX	     64 /* --data options (imcd takes at most as many) */

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
	_cleanup_free_ char *path = client_cache_path(id);
	uint64_t deadline = imc_monotonic_ns() + (uint64_t)o->timeout * 1000000000ULL;
	bool tty = isatty(STDERR_FILENO);
	long delay = 100, last_pct = -1;

	if (!path)
		return EXIT_FAIL;
	for (;;) {
		_cleanup_json_ json_t *cache = NULL;
		const char *status;

		if (client_call(c, "GET", path, NULL, &cache) < 0)
			return EXIT_FAIL;
		status = client_str_or(cache, "status", "");
		/* -o json is for scripts, which often read stderr too: no progress lines there. */
		if (strcmp(status, "Creating") == 0 && (tty || !o->json))
			show_progress(id, cache, tty, &last_pct);
		else if (tty && last_pct >= 0)
			fputc('\n', stderr);
		if (strcmp(status, "Ready") == 0) {
			if (o->json)
				client_print_json(cache);
			else
				printf("%s\n", id);
			return EXIT_OK;
		}
		if (strcmp(status, "Creating") != 0) {
			if (o->json)
				client_print_json(cache);
			fprintf(stderr, "imcctl: cache %s: %s: %s\n", id, status,
				client_str_or(cache, "statusMessage", "(no message)"));
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

/* create's options, into a struct create_opts: 0, or -1 after saying why. */
#define OPTS(p) ((struct create_opts *)(p))

static int take_retention_days(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	char *end;

	errno = 0;
	OPTS(o)->retention_days = strtol(arg, &end, 10);
	if (errno || *end || end == arg || OPTS(o)->retention_days < 0) {
		fprintf(stderr, "imcctl: --retention-days %s: want days (0: never expire)\n", arg);
		return -1;
	}
	return 0;
}

static int take_data(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	const char *eq = strrchr(arg, '=');

	if (!eq || eq == arg || !eq[1]) {
		fprintf(stderr, "imcctl: --data %s: want SOURCE=PATH\n", arg);
		return -1;
	}
	if (OPTS(o)->n_data >= CREATE_DATA_MAX) {
		fprintf(stderr, "imcctl: at most %d --data\n", CREATE_DATA_MAX);
		return -1;
	}
	OPTS(o)->data[OPTS(o)->n_data++] = arg;
	return 0;
}

static int take_size(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	char *end;

	errno = 0;
	OPTS(o)->size = strtoull(arg, &end, 10);
	if (errno || *end || end == arg || OPTS(o)->size == 0 || arg[0] == '-') {
		fprintf(stderr, "imcctl: --size %s: want bytes (> 0)\n", arg);
		return -1;
	}
	return 0;
}

static int take_timeout(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	char *end;

	errno = 0;
	OPTS(o)->timeout = strtol(arg, &end, 10);
	if (errno || *end || end == arg || OPTS(o)->timeout < 0) {
		fprintf(stderr, "imcctl: --timeout %s: want seconds (0: none)\n", arg);
		return -1;
	}
	return 0;
}

static int take_output(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (client_parse_output(arg, &OPTS(o)->json) < 0) {
		fprintf(stderr, "imcctl: -o %s: want json\n", arg);
		return -1;
	}
	return 0;
}

#define O(field) offsetof(struct create_opts, field)
static const struct imc_cli_opt create_options[] = {
    {"name", required_argument, 'n', imc_cli_string, O(name)},
    {"wait", no_argument, 'w', imc_cli_true, O(wait)},
    {"timeout", required_argument, 't', take_timeout, 0},
    {"output", required_argument, 'o', take_output, 0},
    {"data", required_argument, 'd', take_data, 0},
    {"size", required_argument, 's', take_size, 0},
    {"retention-days", required_argument, 0, take_retention_days, 0},
    {"client-token", required_argument, 0, imc_cli_string, O(client_token)},
    {"platform", required_argument, 0, imc_cli_string, O(platform)}, /* imcd checks it */
};
#undef O

static int parse_create_args(int argc, char **argv, struct create_opts *o)
{
	int r;

	*o = (struct create_opts){.timeout = WAIT_TIMEOUT_DEFAULT, .retention_days = -1};
	r = imc_cli_getopt(argc, argv, ":", create_options, IMC_ARRAY_SIZE(create_options), o);
	if (r == IMC_CLI_REJECTED)
		fprintf(stderr, "imcctl: create: bad option %s\n", argv[optind - 1]);
	return r == 0 ? 0 : -1;
}

int client_cmd_create(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv)
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
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	body = create_body(argv + optind, argc - optind, &o);
	if (!body) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	if (client_call(c, "POST", "/v1/imagecaches", body, &answer) < 0)
		return EXIT_FAIL;
	id = json_string_value(json_object_get(answer, "id"));
	if (!id) {
		fprintf(stderr, "imcctl: the answer has no id\n");
		return EXIT_FAIL;
	}
	if (o.wait)
		return wait_ready(c, id, &o);
	if (o.json)
		client_print_json(answer);
	else
		printf("%s\n", id);
	return EXIT_OK;
}
