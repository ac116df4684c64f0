/* imcctl list: every page of the caches, as a table or JSON. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../api/wire.h"
#include "../common/cli.h"
#include "../common/imc.h"
#include "../net/net.h"
#include "imcctl.h"

#define LIST_COLS 6

static void list_row(json_t *item, char cells[LIST_COLS][256])
{
	json_t *images = json_object_get(item, "images");
	const char *ref = client_str_or(json_array_get(images, 0), "ref", "-");

	snprintf(cells[0], 256, "%s", client_str_or(item, "id", "-"));
	snprintf(cells[1], 256, "%s", client_str_or(item, "status", "-"));
	snprintf(cells[2], 256, "%s", client_str_or(item, "name", "-"));
	if (json_array_size(images) > 1)
		snprintf(cells[3], 256, "%s (+%zu)", ref, json_array_size(images) - 1);
	else
		snprintf(cells[3], 256, "%s", ref);
	client_human_size(json_object_get(item, "size"), cells[4], 256);
	snprintf(cells[5], 256, "%s", client_str_or(item, "createdAt", "-"));
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
	if (client_call(c, "GET", path, NULL, &answer) < 0)
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

/* list's options: the filters into the query, -o. */
struct list_opts {
	char **query; /* "key=value&..." */
	bool json;
};

static int take_output(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return client_parse_output(arg, &((struct list_opts *)o)->json);
}

/* --status, --name, --image, --limit, --match: the query key is the option's name. */
static int take_filter(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return query_add(((struct list_opts *)o)->query, opt->name, arg);
}

static const struct imc_cli_opt list_options[] = {
    {"output", required_argument, 'o', take_output, 0},
    {"status", required_argument, 0, take_filter, 0},
    {"name", required_argument, 0, take_filter, 0},
    {"image", required_argument, 0, take_filter, 0},
    {"limit", required_argument, 0, take_filter, 0},
    {"match", required_argument, 0, take_filter, 0},
};

int client_cmd_list(const struct client *c, const struct client_command *cmd, int argc, char **argv)
{
	_cleanup_json_ json_t *items = json_array();
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *query = strdup("");
	struct list_opts o = {.query = &query};
	int r;

	if (!items || !query) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	optind = 1;
	r = imc_cli_getopt(argc, argv, ":", list_options, IMC_ARRAY_SIZE(list_options), &o);
	if (r != 0 || optind != argc) {
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	if (list_all(c, query, items) < 0)
		return EXIT_FAIL;
	answer = json_pack("{s:O}", "items", items);
	if (!answer) {
		fprintf(stderr, "imcctl: out of memory\n");
		return EXIT_FAIL;
	}
	if (o.json)
		client_print_json(answer);
	else
		print_table(items);
	return EXIT_OK;
}
