/* Fuzz target: the query of GET /v1/imagecaches (api/list.c): api_list_query_parse on key/value
 * pairs, api_query_split on the raw query string, api_page_token_decode on a token.
 *
 * The input is read three ways:
 *  - split at NUL bytes into strings, alternately key and value (at most QUERY_PAIRS_MAX pairs;
 *    a last key without its value has a NULL value, like "?key"), given to the parser;
 *  - up to the first NUL, as a raw query string, split with api_query_split and then parsed;
 *  - the whole input up to the first NUL as a page token.
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure says something (a message and a negative code);
 *  - an accepted query has a limit of 1..API_LIST_LIMIT_MAX, a status (when given) that is one of
 *    the three, a valid name, an image digest only with an image, and a page position that
 *    encodes back to a token the decoder takes again;
 *  - a decoded token re-encodes to the very same string (one position, one token);
 *  - api_query_split gives at most its max arguments, each inside the query buffer;
 *  - the same pairs as DELETE arguments: only force=true|false is taken;
 *  - the input as a path: a route's ids lie inside the path (attachments routes included);
 *  - a path or query that is not UTF-8 (once decoded) is answered 400 with a JSON body, before
 *    anything would look it up (so without a cache table). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../api/api.h"

#define QUERY_PAIRS_MAX 32

static void check_failure(int r, const imc_error *err, const char *what)
{
	if (r < 0 && (err->code >= 0 || err->msg[0] == '\0')) {
		fprintf(stderr, "%s: failure %d without a message or code\n", what, r);
		abort();
	}
}

/* The token for (created, id) decodes back to the same position. */
static void check_position(int64_t created, const char *id, const char *what)
{
	char token[API_PAGE_TOKEN_MAX + 1];
	char back_id[API_ID_MAX];
	int64_t back_created = 0;
	imc_error err = {0};

	if (api_page_token_encode(created, id, token, sizeof(token), &err) < 0 ||
	    api_page_token_decode(token, &back_created, back_id, &err) < 0 ||
	    back_created != created || strcmp(back_id, id) != 0) {
		fprintf(stderr, "%s: position %lld:%s does not survive its token (%s)\n", what,
			(long long)created, id, err.msg);
		abort();
	}
}

static void check_delete(const struct api_query_arg *args, size_t n)
{
	imc_error err = {0};
	bool force = false;
	int r = api_delete_query_parse(args, n, &force, &err);

	check_failure(r, &err, "delete query");
	if (r == 0 && (n > 1 || (n == 1 && (strcmp(args[0].key, "force") != 0 || !args[0].value ||
					    (strcmp(args[0].value, "true") != 0 &&
					     strcmp(args[0].value, "false") != 0))))) {
		fprintf(stderr, "delete query: accepted %zu arguments\n", n);
		abort();
	}
}

static void check_route(const char *path)
{
	struct api_match m;
	size_t len = strlen(path);

	api_route_match(path, &m);
	if ((m.route == API_ROUTE_ATTACHMENT &&
	     (!m.aid || m.aid < path || m.aid > path + len || strchr(m.aid, '/'))) ||
	    ((m.route == API_ROUTE_ATTACHMENT || m.route == API_ROUTE_ATTACHMENTS) &&
	     (!m.id || !m.id[0] || strchr(m.id, '/')))) {
		fprintf(stderr, "route of \"%s\": bad ids\n", path);
		abort();
	}
}

/* NULL, or "sha256:" and 64 lowercase hex digits. */
static bool digest_ok(const char *d)
{
	return !d || (strlen(d) == 71 && strncmp(d, "sha256:", 7) == 0 &&
		      strspn(d + 7, "0123456789abcdef") == 64);
}

static void check_query(const struct api_query_arg *args, size_t n, const char *what)
{
	struct api_list_query q = {0};
	imc_error err = {0};
	int r = api_list_query_parse(args, n, &q, &err);

	check_failure(r, &err, what);
	if (r < 0) {
		if (q.name || q.image || q.image_digest || q.chain_id || q.manifest_digest)
			abort();
		return;
	}
	if (!digest_ok(q.chain_id) || !digest_ok(q.manifest_digest)) {
		fprintf(stderr, "%s: accepted chainId \"%s\" manifestDigest \"%s\"\n", what,
			q.chain_id ? q.chain_id : "(null)",
			q.manifest_digest ? q.manifest_digest : "(null)");
		abort();
	}
	if (r > 0 || q.limit < 1 || q.limit > API_LIST_LIMIT_MAX ||
	    (q.have_status && (unsigned)q.status >= API_CACHE_STATUS_COUNT) ||
	    (q.match_best && (!q.image || q.have_after)) ||
	    (q.name && !imc_name_valid(q.name, API_NAME_MAX)) || (q.image_digest && !q.image)) {
		fprintf(stderr, "%s: accepted limit %zu status %d name \"%s\" image \"%s\"\n", what,
			q.limit, q.have_status ? (int)q.status : -1, q.name ? q.name : "(null)",
			q.image ? q.image : "(null)");
		abort();
	}
	if (q.have_after)
		check_position(q.after_created, q.after_id, what);
	api_list_query_free(&q);
}

/* Alternately key and value at the NUL bytes. */
static void fuzz_pairs(const char *data, size_t size)
{
	_cleanup_free_ char *copy = malloc(size + 1);
	struct api_query_arg args[QUERY_PAIRS_MAX];
	size_t n = 0;
	bool want_key = true;

	if (!copy)
		return;
	memcpy(copy, data, size);
	copy[size] = '\0';
	for (char *p = copy; p < copy + size; p += strlen(p) + 1) {
		if (want_key) {
			if (n == QUERY_PAIRS_MAX)
				break;
			args[n++] = (struct api_query_arg){.key = p, .value = NULL};
		} else {
			args[n - 1].value = p;
		}
		want_key = !want_key;
	}
	check_query(args, n, "pairs");
	check_delete(args, n);
}

/* The input up to its first NUL as a raw query string. */
static void fuzz_split(const char *data, size_t size)
{
	size_t len = strnlen(data, size);
	_cleanup_free_ char *query = malloc(len + 1);
	struct api_query_arg args[API_QUERY_ARGS_MAX];
	size_t n = 0;
	imc_error err = {0};
	int r;

	if (!query)
		return;
	memcpy(query, data, len);
	query[len] = '\0';
	r = api_query_split(query, args, API_QUERY_ARGS_MAX, &n, &err);
	check_failure(r, &err, "split");
	if (r < 0)
		return;
	if (n > API_QUERY_ARGS_MAX)
		abort();
	for (size_t i = 0; i < n; i++)
		if (args[i].key < query || args[i].key > query + len ||
		    (args[i].value && (args[i].value < query || args[i].value > query + len)))
			abort();
	check_query(args, n, "split");
	check_delete(args, n);
}

static void fuzz_token(const char *data, size_t size)
{
	size_t len = strnlen(data, size);
	_cleanup_free_ char *token = malloc(len + 1);
	char id[API_ID_MAX];
	char again[API_PAGE_TOKEN_MAX + 1];
	int64_t created = 0;
	imc_error err = {0};
	int r;

	if (!token)
		return;
	memcpy(token, data, len);
	token[len] = '\0';
	r = api_page_token_decode(token, &created, id, &err);
	check_failure(r, &err, "token");
	if (r < 0)
		return;
	if (!api_cache_id_valid(id) || created < 0 ||
	    api_page_token_encode(created, id, again, sizeof(again), &err) < 0 ||
	    strcmp(again, token) != 0) {
		fprintf(stderr, "token: \"%s\" decodes to %lld:%s, which encodes to \"%s\"\n",
			token, (long long)created, id, err.msg[0] ? err.msg : again);
		abort();
	}
}

/* What api_handle answers for a path (and query) that is not UTF-8 once decoded. */
static void check_not_utf8(const char *url)
{
	static const struct api_caller who = {.tenant = API_TENANT_DEFAULT};
	_cleanup_free_ char *copy = strdup(url);
	struct api_query_arg args[API_QUERY_ARGS_MAX];
	char *q = copy ? strchr(copy, '?') : NULL;
	struct api_response resp;
	imc_error err = {0};
	bool bad = false;
	size_t n = 0;
	json_t *j;

	if (!copy)
		return;
	if (q)
		*q++ = '\0';
	bad = !imc_utf8_valid(copy, strlen(copy));
	if (q && api_query_split(q, args, API_QUERY_ARGS_MAX, &n, &err) < 0)
		return; /* a malformed query: answered before the check */
	for (size_t i = 0; i < n; i++)
		bad |= !imc_utf8_valid(args[i].key, strlen(args[i].key)) ||
		       (args[i].value && !imc_utf8_valid(args[i].value, strlen(args[i].value)));
	if (!bad)
		return;
	api_handle(NULL, &who, "GET", url, NULL, 0, false, &resp);
	j = resp.body ? json_loads(resp.body, 0, NULL) : NULL;
	if (resp.status != 400 || !json_is_object(j)) {
		fprintf(stderr, "\"%s\" (not UTF-8): %u %s\n", url, resp.status,
			resp.body ? resp.body : "(no body)");
		abort();
	}
	json_decref(j);
	free(resp.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_pairs((const char *)data, size);
	fuzz_split((const char *)data, size);
	fuzz_token((const char *)data, size);
	{
		size_t len = strnlen((const char *)data, size);
		_cleanup_free_ char *path = malloc(len + 1);

		if (path) {
			memcpy(path, data, len);
			path[len] = '\0';
			check_route(path);
			check_not_utf8(path);
		}
	}
	return 0;
}
