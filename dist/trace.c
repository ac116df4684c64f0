/* Startup traces (docs/distribution.md, "Startup trace"): the order in which a lazy lower's
 * first reads touched its chunks, as JSON; what imcd accepts of one (every offset a data chunk of
 * the cache's index, none twice); and the agent's GET and PUT of it.  imcd keeps it beside the
 * index (chunks.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../net/net.h"
#include "dist.h"

#define TRACE_ATTEMPTS	    2	  /* advisory: a lost trace costs bandwidth, not correctness */
#define TRACE_CONNECT_MS    3000  /* the GET runs while an attach waits */
#define TRACE_DEADLINE_MS   10000 /* per request, every attempt included */
#define TRACE_TOO_MANY_MSG  "startup trace: %zu offsets, more than %d"
#define TRACE_MEDIA_TYPE_SZ 128

void dist_trace_free(struct dist_trace *t)
{
	free(t->offsets);
	*t = (struct dist_trace){0};
}

static int parse_offsets(json_t *arr, struct dist_trace *t, imc_error *err)
{
	json_t *v;
	size_t i;

	t->offsets = calloc(json_array_size(arr) + 1, sizeof(*t->offsets));
	if (!t->offsets)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(arr, i, v)
	{
		json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
		if (n < 0 || (uint64_t)n >= OCI_SNAPSHOT_MAX)
			return imc_err(err, EINVAL,
				       "startup trace: offsets[%zu]: want an integer 0..%llu", i,
				       OCI_SNAPSHOT_MAX - 1);
		t->offsets[t->n++] = (uint64_t)n;
	}
	return 0;
}

int dist_trace_parse(const char *buf, size_t len, struct dist_trace *ret, imc_error *err)
{
	static const char *const allowed[] = {"mediaType", "chunkSize", "offsets", NULL};
	_cleanup_(dist_trace_free) struct dist_trace t = {0};
	_cleanup_json_ json_t *j = NULL;
	json_t *arr = NULL;
	const char *mt = NULL;
	int64_t cs = 0;

	if (len > DIST_TRACE_BYTES_MAX)
		return imc_err(err, EFBIG, "startup trace: %zu bytes, more than %d", len,
			       DIST_TRACE_BYTES_MAX);
	if (imc_json_parse_object(buf, len, &j, err) < 0)
		return imc_err_wrap(err, "startup trace");
	if (imc_json_check_fields(j, allowed, "trace", err) < 0 ||
	    imc_json_get_string(j, "mediaType", true, TRACE_MEDIA_TYPE_SZ, "trace", &mt, err) < 0 ||
	    imc_json_get_int(j, "chunkSize", true, OCI_CHUNK_SIZE_MIN, OCI_CHUNK_SIZE_MAX, "trace",
			     &cs, err) < 0 ||
	    imc_json_get_array(j, "offsets", true, SIZE_MAX, "trace", &arr, err) < 0)
		return err->code;
	if (strcmp(mt, DIST_TRACE_MEDIA_TYPE) != 0)
		return imc_err(err, EINVAL, "trace.mediaType \"%.80s\": want %s", mt,
			       DIST_TRACE_MEDIA_TYPE);
	if ((cs & (cs - 1)) != 0)
		return imc_err(err, EINVAL, "trace.chunkSize %" PRId64 ": not a power of two", cs);
	if (json_array_size(arr) > DIST_TRACE_ENTRIES_MAX)
		return imc_err(err, EFBIG, TRACE_TOO_MANY_MSG, json_array_size(arr),
			       DIST_TRACE_ENTRIES_MAX);
	t.chunk_size = (uint32_t)cs;
	if (parse_offsets(arr, &t, err) < 0)
		return err->code;
	*ret = t;
	t = (struct dist_trace){0};
	return 0;
}

int dist_trace_render(const struct dist_trace *t, char **ret, size_t *ret_len, imc_error *err)
{
	_cleanup_json_ json_t *arr = json_array();
	_cleanup_json_ json_t *j = NULL;
	char *s;

	if (!arr)
		return imc_err(err, ENOMEM, "out of memory");
	if (t->n > DIST_TRACE_ENTRIES_MAX)
		return imc_err(err, EFBIG, TRACE_TOO_MANY_MSG, t->n, DIST_TRACE_ENTRIES_MAX);
	for (size_t i = 0; i < t->n; i++)
		if (json_array_append_new(arr, json_integer((json_int_t)t->offsets[i])) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	j = json_pack("{s:s,s:I,s:O}", "mediaType", DIST_TRACE_MEDIA_TYPE, "chunkSize",
		      (json_int_t)t->chunk_size, "offsets", arr);
	s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	*ret_len = strlen(s);
	*ret = s;
	return 0;
}

/* The index entry at offset (the index's chunks are in offset order), or NULL. */
static const struct oci_chunk_entry *entry_at(const struct oci_chunk_index *ix, uint64_t off)
{
	size_t lo = 0, hi = ix->n_chunks;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->chunks[mid].offset == off)
			return &ix->chunks[mid];
		if (ix->chunks[mid].offset < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int dist_trace_check(const struct dist_trace *t, const struct oci_chunk_index *ix, imc_error *err)
{
	_cleanup_free_ unsigned char *seen = calloc(ix->n_chunks + 1, 1);

	if (!seen)
		return imc_err(err, ENOMEM, "out of memory");
	if (t->chunk_size != ix->chunk_size)
		return imc_err(err, EINVAL, "trace.chunkSize %" PRIu32 ": the index's is %" PRIu32,
			       t->chunk_size, ix->chunk_size);
	if (t->n > ix->n_chunks)
		return imc_err(err, EINVAL, "trace.offsets: %zu, more than the index's %zu chunks",
			       t->n, ix->n_chunks);
	for (size_t i = 0; i < t->n; i++) {
		const struct oci_chunk_entry *e = entry_at(ix, t->offsets[i]);
		if (!e)
			return imc_err(err, EINVAL,
				       "trace.offsets[%zu] %" PRIu64 ": no data chunk of the index "
				       "starts there",
				       i, t->offsets[i]);
		if (seen[e - ix->chunks]++)
			return imc_err(err, EINVAL, "trace.offsets[%zu] %" PRIu64 ": given twice",
				       i, t->offsets[i]);
	}
	return 0;
}

/* ---- the agent's side: GET and PUT /v1/imagecaches/{id}/trace on imcd ------------------------ */

struct trace_link {
	struct net_server srv;
	struct net_client *net;
	char *url;
};

static void trace_link_close(struct trace_link *l)
{
	net_client_free(l->net);
	net_server_free(&l->srv);
	free(l->url);
}

static int trace_link_open(const struct dist_fetch_config *cfg, const char *id,
			   struct trace_link *ret, imc_error *err)
{
	char hostport[300] = "", path[160];
	const char *insecure[] = {hostport, NULL};

	*ret = (struct trace_link){0};
	if (!cfg->server)
		return imc_err(err, EINVAL, "cache %s: startup traces need --server", id);
	if (!imc_name_valid(id, DIST_ID_MAX))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	if (net_server_parse(cfg->server, &ret->srv, err) < 0)
		return imc_err_wrap(err, "--server");
	if (!ret->srv.unix_socket)
		net_url_plain_hostport(ret->srv.base, hostport, sizeof(hostport));
	snprintf(path, sizeof(path), "/v1/imagecaches/%s/trace", id);
	if (!(ret->url = net_server_url(&ret->srv, path)))
		return imc_err(err, ENOMEM, "out of memory");
	return net_client_new(
	    &(struct net_config){.insecure_hosts = hostport[0] ? insecure : NULL,
				 .limits = {.connect_timeout_ms = TRACE_CONNECT_MS,
					    .deadline_ms = TRACE_DEADLINE_MS},
				 .retry = {.max_attempts = TRACE_ATTEMPTS}},
	    &ret->net, err);
}

int dist_trace_fetch(const struct dist_fetch_config *cfg, const char *id, struct dist_trace *ret,
		     imc_error *err)
{
	_cleanup_(trace_link_close) struct trace_link l = {0};
	struct net_response res = {0};
	int r = trace_link_open(cfg, id, &l, err);

	if (r == 0)
		r = net_perform(l.net,
				&(struct net_request){
				    .url = l.url,
				    .unix_socket = l.srv.unix_socket,
				    .bearer = cfg->token,
				    .sink = {.kind = NET_SINK_MEMORY, .max = DIST_TRACE_BYTES_MAX}},
				&res, err);
	if (r == 0)
		r = dist_trace_parse(res.body ? res.body : "", res.body_len, ret, err);
	net_response_free(&res);
	return r < 0 ? imc_err_wrap(err, "cache %s: startup trace", id) : 0;
}

int dist_trace_send(const struct dist_fetch_config *cfg, const char *id, const struct dist_trace *t,
		    imc_error *err)
{
	_cleanup_(trace_link_close) struct trace_link l = {0};
	_cleanup_free_ char *body = NULL;
	struct net_response res = {0};
	size_t len = 0;
	int r = trace_link_open(cfg, id, &l, err);

	if (r == 0)
		r = dist_trace_render(t, &body, &len, err);
	if (r == 0)
		r = net_perform(
		    l.net,
		    &(struct net_request){
			.method = "PUT",
			.url = l.url,
			.unix_socket = l.srv.unix_socket,
			.bearer = cfg->token,
			.body = {.data = body, .len = len, .content_type = "application/json"},
			.sink = {.kind = NET_SINK_DISCARD}},
		    &res, err);
	net_response_free(&res);
	return r < 0 ? imc_err_wrap(err, "cache %s: startup trace", id) : 0;
}
