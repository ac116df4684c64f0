/* Distribution endpoints: the chunk index of a cache and its chunks (docs/distribution.md), from
 * the chunk store that imcd opened (dist/), and the hooks through which the cache table tells its
 * exporter that a snapshot is Ready (export it) or gone (drop its chunks). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "../dist/dist.h"
#include "api.h"

/* The cache must be the caller's (another tenant's is 404, as for GET of the cache) and Ready.
 * A chunk, too, goes only to a tenant one of whose caches references it (see chunk_visible). */
static int cache_ready(struct api_caches *c, const struct api_caller *who, const char *id,
		       imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	const char *status;

	if (api_caches_get(c, who, id, &j, err) < 0)
		return err->code;
	status = json_string_value(json_object_get(j, "status"));
	if (!status || strcmp(status, "Ready") != 0)
		return imc_err(err, EBUSY, "cache %s: %s, not Ready", id, status ? status : "?");
	return 0;
}

static int chunks_of(struct api_caches *c, struct dist_chunks **ret, imc_error *err)
{
	*ret = api_caches_chunks(c);
	return *ret ? 0 : imc_err(err, ESHUTDOWN, "no store");
}

/* The index is not there yet: 202 {"id","status":"Exporting"} while the exporter has it (queued
 * now when it had not), or the failure of its last try. */
static int index_pending(struct api_caches *c, const char *id, json_t **ret, unsigned *ret_status,
			 imc_error *err)
{
	struct dist_exporter *x = api_caches_exporter(c);
	int r = x ? dist_exporter_state(x, id, err) : imc_err(err, ESHUTDOWN, "no exporter");

	if (r == 0)
		r = dist_exporter_queue(x, id, err);
	if (r < 0 && r != -EINPROGRESS)
		return r;
	*ret = json_pack("{s:s,s:s}", "id", id, "status", "Exporting");
	if (!*ret)
		return imc_err(err, ENOMEM, "out of memory");
	*ret_status = 202;
	return 0;
}

int api_dist_index(struct api_caches *c, const struct api_caller *who, const char *id_in,
		   size_t id_len, json_t **ret, unsigned *ret_status, imc_error *err)
{
	char id[API_ID_MAX];
	struct dist_chunks *cs;
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r;

	if (id_len == 0 || id_len >= sizeof(id))
		return imc_err(err, EINVAL, "cache id: malformed");
	memcpy(id, id_in, id_len);
	id[id_len] = '\0';
	if (api_cache_id_check(id, err) < 0)
		return err->code;
	if (cache_ready(c, who, id, err) < 0 || chunks_of(c, &cs, err) < 0)
		return err->code;
	/* Only a read of the stored index here: the export itself runs on the exporter. */
	r = dist_read_index(cs, id, &buf, &len, err);
	if (r == -ENOENT) {
		imc_err_clear(err);
		return index_pending(c, id, ret, ret_status, err);
	}
	if (r < 0)
		return r;
	*ret_status = 200;
	return imc_json_parse_object(buf, len, ret, err);
}

/* ---- startup traces -------------------------------------------------------------------------- */

/* PUT's one query parameter: replace=true|false. */
static int trace_query_parse(const struct api_query_arg *args, size_t n, bool *ret_replace,
			     imc_error *err)
{
	bool seen = false;

	*ret_replace = false;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(args[i].key, "replace") != 0)
			return imc_err(err, EINVAL, "query parameter \"%.64s\": unknown",
				       args[i].key);
		if (seen)
			return imc_err(err, EINVAL,
				       "query parameter replace: given more than once");
		seen = true;
		if (args[i].value && strcmp(args[i].value, "true") == 0)
			*ret_replace = true;
		else if (!args[i].value || strcmp(args[i].value, "false") != 0)
			return imc_err(err, EINVAL, "replace: want true or false");
	}
	return 0;
}

static int trace_put(struct dist_chunks *cs, const char *id, const struct api_query_arg *args,
		     size_t n_args, const char *body, size_t len, json_t **ret,
		     unsigned *ret_status, imc_error *err)
{
	_cleanup_(dist_trace_free) struct dist_trace t = {0};
	bool replace;

	if (trace_query_parse(args, n_args, &replace, err) < 0 ||
	    dist_trace_parse(body ? body : "", len, &t, err) < 0 ||
	    dist_trace_store(cs, id, &t, replace, err) < 0)
		return err->code;
	*ret = json_pack("{s:s,s:I}", "id", id, "chunks", (json_int_t)t.n);
	*ret_status = 201;
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int trace_get(struct dist_chunks *cs, const char *id, json_t **ret, unsigned *ret_status,
		     imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r = dist_trace_read(cs, id, &buf, &len, err);

	if (r == -ENOENT)
		return imc_err(err, ENOENT, "cache %s: no startup trace", id);
	if (r < 0)
		return r;
	*ret_status = 200;
	return imc_json_parse_object(buf, len, ret, err);
}

int api_dist_trace(struct api_caches *c, const struct api_caller *who, enum api_method m,
		   const char *id_in, size_t id_len, const struct api_query_arg *args,
		   size_t n_args, const char *body, size_t len, json_t **ret, unsigned *ret_status,
		   imc_error *err)
{
	char id[API_ID_MAX];
	struct dist_chunks *cs;

	if (id_len == 0 || id_len >= sizeof(id))
		return imc_err(err, EINVAL, "cache id: malformed");
	memcpy(id, id_in, id_len);
	id[id_len] = '\0';
	if (api_cache_id_check(id, err) < 0)
		return err->code;
	/* Another tenant's cache is 404, as for GET of the cache: its trace is not there either. */
	if (cache_ready(c, who, id, err) < 0 || chunks_of(c, &cs, err) < 0)
		return err->code;
	if (m == API_METHOD_PUT)
		return trace_put(cs, id, args, n_args, body, len, ret, ret_status, err);
	if (n_args)
		return imc_err(err, EINVAL, "query parameter \"%.64s\": unknown", args[0].key);
	return trace_get(cs, id, ret, ret_status, err);
}

void api_dist_snapshot_removed(void *ctx, const char *id)
{
	imc_error e = {0};

	if (ctx && dist_exporter_forget(ctx, id, &e) < 0)
		imc_warn("cache %s: dropping its chunks: %s", id, e.msg);
}

void api_dist_snapshot_ready(void *ctx, const char *id)
{
	imc_error e = {0};

	if (ctx && dist_exporter_queue(ctx, id, &e) < 0)
		imc_warn("cache %s: chunk index export not queued: %s", id, e.msg);
}

/* ---- chunks ---------------------------------------------------------------------------------- */

static unsigned respond_error(unsigned status, const char *code, const char *msg,
			      struct MHD_Response **ret)
{
	_cleanup_json_ json_t *j = api_error_json(code, msg);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

	*ret = s ? MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE) : NULL;
	if (!*ret) {
		free(s);
		return status;
	}
	MHD_add_response_header(*ret, MHD_HTTP_HEADER_CONTENT_TYPE, API_CONTENT_TYPE);
	return status;
}

static unsigned respond_errno(const imc_error *err, struct MHD_Response **ret)
{
	const char *code;
	unsigned status;

	api_status_from_errno(err->code, &status, &code);
	return respond_error(status, code, err->msg, ret);
}

static void add_chunk_headers(struct MHD_Response *r, const char *etag)
{
	MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, etag);
	MHD_add_response_header(r, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, OCI_SNAPSHOT_MT_CHUNK);
	/* Named by content: it never changes. */
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
				"public, max-age=31536000, immutable");
}

/* A chunk is served to a tenant only if the exported index of one of its Ready caches names it:
 * knowing a digest is not enough (that made the chunk store a content oracle across tenants).
 * Any other chunk is answered exactly like one that does not exist. */
static int chunk_visible(struct api_caches *c, struct dist_chunks *cs, const char *tenant,
			 const char *digest, imc_error *err)
{
	char(*ids)[API_ID_MAX] = NULL;
	char path[128];
	size_t n = 0;
	bool has = false;
	int r = dist_chunk_path(digest, path, sizeof(path), err); /* a malformed one is a 400 */

	if (r == 0)
		r = api_caches_ready_ids(c, tenant, &ids, &n, err);

	for (size_t i = 0; r == 0 && i < n && !has; i++)
		r = dist_index_has_chunk(cs, ids[i], digest, &has, err);
	free(ids);
	if (r == 0 && !has)
		r = imc_err(err, ENOENT, "chunk %.80s: not found", digest);
	return r;
}

unsigned api_dist_chunk(struct api_caches *c, const struct api_caller *who,
			struct MHD_Connection *conn, const char *method, const char *digest,
			struct MHD_Response **ret)
{
	struct dist_chunks *cs;
	struct dist_chunk_answer a;
	imc_error err = {0};

	(void)method; /* HEAD: libmicrohttpd sends the headers only */
	*ret = NULL;
	if (chunks_of(c, &cs, &err) < 0 ||
	    chunk_visible(c, cs, who && who->tenant ? who->tenant : API_TENANT_DEFAULT, digest,
			  &err) < 0 ||
	    dist_chunk_answer(
		cs, digest,
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH),
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE), &a,
		&err) < 0)
		return respond_errno(&err, ret);
	if (a.status == 304) {
		*ret = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		if (*ret)
			add_chunk_headers(*ret, a.etag);
		return 304;
	}
	if (a.status == 416) {
		respond_error(416, "RangeNotSatisfiable", "range outside the chunk", ret);
		if (*ret)
			MHD_add_response_header(*ret, MHD_HTTP_HEADER_CONTENT_RANGE,
						a.content_range);
		return 416;
	}
	/* Zero copy: libmicrohttpd sends from the descriptor (sendfile) and closes it. */
	*ret = MHD_create_response_from_fd_at_offset64(a.len, a.fd, a.start);
	if (!*ret) {
		close(a.fd);
		return 500;
	}
	add_chunk_headers(*ret, a.etag);
	if (a.status == 206)
		MHD_add_response_header(*ret, MHD_HTTP_HEADER_CONTENT_RANGE, a.content_range);
	return a.status;
}
