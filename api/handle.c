/* One request, without HTTP: the request's text checked, its route and method matched, the
 * table's function for it called (api/caches.c, api/dist.c, api/attachments.c) and its result
 * made the answer, compact JSON with a status (api_handle, api/handle.h).  The HTTP side, with
 * bodies, auth and connections, is api/server.c's. */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "handle.h"

/* The body of every answer: compact JSON and a newline. */
static char *render(json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	size_t n;
	char *t;

	if (!s)
		return NULL;
	n = strlen(s);
	t = realloc(s, n + 2);
	if (!t) {
		free(s);
		return NULL;
	}
	t[n] = '\n';
	t[n + 1] = '\0';
	return t;
}

static void answer(struct api_response *ret, unsigned status, json_t *j)
{
	ret->status = status;
	ret->body = render(j);
	if (!ret->body) { /* no memory to say more */
		ret->status = 500;
		ret->body =
		    strdup("{\"error\":{\"code\":\"Internal\",\"message\":\"out of memory\"}}\n");
	}
}

void api_answer_error(struct api_response *ret, unsigned status, const char *code,
		      const char *message)
{
	_cleanup_json_ json_t *j = api_error_json(code, message);

	answer(ret, status, j);
}

static void answer_errno(struct api_response *ret, const imc_error *err)
{
	const char *code;
	unsigned status;

	api_status_from_errno(err->code, &status, &code);
	api_answer_error(ret, status, code, err->msg[0] ? err->msg : "internal error");
	ret->retry_after = api_retry_after_from_status(ret->status);
}

static int list_caches(struct api_caches *c, const struct api_caller *who,
		       const struct api_query_arg *args, size_t n_args, bool too_many_args,
		       json_t **ret, imc_error *err)
{
	struct api_list_query q;
	int r;

	if (too_many_args)
		return imc_err(err, EINVAL, "query: more than %d parameters", API_QUERY_ARGS_MAX);
	r = api_list_query_parse(args, n_args, &q, err);
	if (r < 0)
		return r;
	r = c ? api_caches_list(c, who, &q, ret, err) : imc_err(err, ESHUTDOWN, "no cache table");
	api_list_query_free(&q);
	return r;
}

static int create_cache(struct api_caches *c, const struct api_caller *who, const char *body,
			size_t len, json_t **ret, imc_error *err)
{
	struct api_create_request req = {0};
	int r = api_create_request_parse(body, len, &req, err);

	if (r < 0)
		return r;
	r = api_caches_create(c, who, &req, ret, err);
	api_create_request_free(&req);
	return r;
}

/* GET /metrics: the Prometheus text page (without a table: zero counts and no pool). */
static void answer_metrics(struct api_caches *c, struct api_response *ret)
{
	struct api_metrics_page page = {0};
	imc_error err = {0};

	if (c)
		api_caches_metrics_page(c, &page);
	if (api_metrics_render(&page, &ret->body, &err) < 0) {
		answer_errno(ret, &err);
		return;
	}
	ret->status = 200;
	ret->content_type = API_METRICS_CONTENT_TYPE;
}

/* The hot reads: GET /v1/imagecaches/{id} and the list (but match=best) are answered with the
 * bytes kept rendered per cache, without a json_t.  Returns false when the request is not one
 * of them. */
static bool read_body(struct api_caches *c, const struct api_caller *who, enum api_method m,
		      const struct api_match *match, const struct api_request_query *query,
		      struct api_response *ret, imc_error *err, int *ret_r)
{
	struct api_list_query q;

	if (!c || m != API_METHOD_GET)
		return false;
	if (match->route == API_ROUTE_CACHE && api_cache_id_valid(match->id)) {
		*ret_r = api_caches_get_body(c, who, match->id, &ret->body, &ret->body_len, err);
		return true;
	}
	if (match->route != API_ROUTE_CACHES || query->too_many)
		return false;
	*ret_r = api_list_query_parse(query->args, query->n, &q, err);
	if (*ret_r < 0)
		return true;
	if (q.match_best) {
		api_list_query_free(&q);
		return false;
	}
	*ret_r = api_caches_list_body(c, who, &q, &ret->body, &ret->body_len, err);
	api_list_query_free(&q);
	return true;
}

/* 200 {"status":"ok"}, or 503 {"status":"unavailable","reason":…} while imcd cannot write its
 * metadata. */
static int healthz(struct api_caches *c, json_t **ret, unsigned *ret_status, imc_error *err)
{
	char why[512];

	if (c && !api_caches_healthy(c, why, sizeof(why))) {
		*ret_status = 503;
		*ret = json_pack("{s:s,s:s}", "status", "unavailable", "reason", why);
	} else {
		*ret = json_pack("{s:s}", "status", "ok");
	}
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int dispatch(struct api_caches *c, const struct api_caller *who, enum api_method m,
		    const struct api_match *match, const struct api_request_query *query,
		    const char *body, size_t len, json_t **ret, unsigned *ret_status,
		    imc_error *err)
{
	*ret_status = 200;
	switch (match->route) {
	case API_ROUTE_HEALTHZ:
		return healthz(c, ret, ret_status, err);
	case API_ROUTE_CACHES:
		if (m == API_METHOD_GET)
			return list_caches(c, who, query->args, query->n, query->too_many, ret,
					   err);
		*ret_status = 202;
		return create_cache(c, who, body, len, ret, err);
	case API_ROUTE_METRICS: /* answered in api_handle: not JSON */
	case API_ROUTE_CHUNK:	/* answered in on_request: a file */
		break;
	case API_ROUTE_CACHE_INDEX:
		return api_dist_index(c, who, match->id, match->id_len, ret, ret_status, err);
	case API_ROUTE_CACHE_TRACE:
		if (query->too_many)
			return imc_err(err, EINVAL, "query: more than %d parameters",
				       API_QUERY_ARGS_MAX);
		return api_dist_trace(c, who, m, match->id, match->id_len, query->args, query->n,
				      body, len, ret, ret_status, err);
	case API_ROUTE_CACHE:
		/* Malformed: could never name anything (400).  Well formed but unknown: 404. */
		if (api_cache_id_check(match->id, err) < 0)
			return err->code;
		if (m == API_METHOD_GET)
			return api_caches_get(c, who, match->id, ret, err);
		return api_caches_delete_args(c, who, match->id, query->args, query->n, ret,
					      ret_status, err);
	case API_ROUTE_ATTACHMENTS:
	case API_ROUTE_ATTACHMENT:
		return api_attachments_dispatch(c, who, m, match, body, len, ret, ret_status, err);
	case API_ROUTE_NONE:
		break;
	}
	return imc_err(err, ENOENT, "no such path");
}

bool api_request_text_valid(const char *url, const struct api_request_query *q,
			    struct api_response *ret)
{
	char name[100], msg[256];

	if (!imc_utf8_valid(url, strlen(url))) {
		imc_log_escape(url, strlen(url), name, sizeof(name));
		snprintf(msg, sizeof(msg), "path \"%s\": not valid UTF-8", name);
		api_answer_error(ret, 400, "InvalidArgument", msg);
		return false;
	}
	for (size_t i = 0; i < q->n; i++) {
		const char *k = q->args[i].key, *v = q->args[i].value;
		bool key_ok = imc_utf8_valid(k, strlen(k));

		if (key_ok && (!v || imc_utf8_valid(v, strlen(v))))
			continue;
		imc_log_escape(k, strlen(k), name, sizeof(name));
		snprintf(msg, sizeof(msg), "query parameter \"%s\": %s not valid UTF-8", name,
			 key_ok ? "value" : "name");
		api_answer_error(ret, 400, "InvalidArgument", msg);
		return false;
	}
	return true;
}

void api_handle_args(struct api_caches *c, const struct api_caller *who, const char *method,
		     const char *url, const struct api_query_arg *args, size_t n_args,
		     bool too_many_args, const char *body, size_t len, bool too_large,
		     struct api_response *ret)
{
	const struct api_request_query query = {
	    .args = args, .n = n_args, .too_many = too_many_args};
	enum api_method m = api_method_parse(method);
	_cleanup_json_ json_t *j = NULL;
	struct api_match match;
	char msg[256];
	imc_error err = {0};
	unsigned status;
	int r = 0;

	*ret = (struct api_response){0};
	if (!api_request_text_valid(url, &query, ret))
		return;
	api_route_match(url, &match);
	if (match.route == API_ROUTE_NONE) {
		snprintf(msg, sizeof(msg), "no such path: %.200s", url);
		api_answer_error(ret, 404, "NotFound", msg);
	} else if (!api_route_allows(match.route, m)) {
		snprintf(msg, sizeof(msg), "method %.20s not allowed on %.200s (allowed: %s)",
			 method, url, api_route_allow(match.route));
		api_answer_error(ret, 405, "MethodNotAllowed", msg);
		ret->allow = api_route_allow(match.route);
	} else if (too_large) {
		snprintf(msg, sizeof(msg), "request body larger than %d bytes", API_BODY_MAX);
		api_answer_error(ret, 413, "PayloadTooLarge", msg);
	} else if (match.route == API_ROUTE_METRICS) {
		answer_metrics(c, ret);
	} else if (read_body(c, who, m, &match, &query, ret, &err, &r)) {
		if (r < 0)
			answer_errno(ret, &err);
		else
			ret->status = 200;
	} else if (dispatch(c, who, m, &match, &query, body, len, &j, &status, &err) < 0) {
		answer_errno(ret, &err);
	} else {
		answer(ret, status, j);
		if (status == 202 && match.route == API_ROUTE_CACHE_INDEX)
			ret->retry_after = API_RETRY_AFTER_S; /* being exported: ask again */
	}
}

void api_handle(struct api_caches *c, const struct api_caller *who, const char *method,
		const char *url, const char *body, size_t len, bool too_large,
		struct api_response *ret)
{
	struct api_query_arg args[API_QUERY_ARGS_MAX];
	_cleanup_free_ char *path = strdup(url);
	char *q = path ? strchr(path, '?') : NULL;
	imc_error err = {0};
	size_t n = 0;

	if (!path) {
		*ret = (struct api_response){0};
		api_answer_error(ret, 500, "Internal", "out of memory");
		return;
	}
	if (q)
		*q++ = '\0';
	if (q && api_query_split(q, args, IMC_ARRAY_SIZE(args), &n, &err) < 0) {
		*ret = (struct api_response){0};
		answer_errno(ret, &err);
		return;
	}
	api_handle_args(c, who, method, path, args, n, false, body, len, too_large, ret);
}
