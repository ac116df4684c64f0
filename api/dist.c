/* Distribution endpoints: the chunk index of a cache and its chunks (docs/distribution.md). */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <microhttpd.h>

#include "../store/chunks.h"
#include "api.h"

/* The chunk store, opened on first use (the table does not know about it).  dist_lock guards
 * the opening only; export_lock serializes exports (seconds each), which chunk requests for
 * other caches never wait for. */
static pthread_mutex_t dist_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;
static struct chunk_store dist_chunks = {.dirfd = -1};

static int dist_store(struct api_caches *c, struct chunk_store **ret, imc_error *err)
{
	struct store *s = api_caches_store(c);
	int r = 0;

	if (!s)
		return imc_err(err, ESHUTDOWN, "no store");
	pthread_mutex_lock(&dist_lock);
	if (dist_chunks.dirfd < 0)
		r = chunk_store_open(s->state_dir, &dist_chunks, err);
	pthread_mutex_unlock(&dist_lock);
	*ret = &dist_chunks;
	return r;
}

/* The cache must be the caller's (another tenant's is 404, as for GET of the cache) and Ready.
 * A chunk needs no such check: it is named by its content, so knowing its digest is the only
 * way to ask for it, and only a caller with a valid token gets that far. */
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

int api_dist_export(struct api_caches *c, const char *id, imc_error *err)
{
	struct chunk_store *cs;
	int r;

	if (dist_store(c, &cs, err) < 0)
		return err->code;
	pthread_mutex_lock(&export_lock);
	r = chunks_export(api_caches_store(c), cs, id, 0, NULL, NULL, err);
	pthread_mutex_unlock(&export_lock);
	if (r < 0)
		return r == -ENOENT ? imc_err(err, ENOENT, "cache %s: no snapshot", id) : r;
	return 0;
}

/* The index is not there yet: 202 {"id","status":"Exporting"} while the exporter has it (queued
 * now when it had not), or the failure of its last try. */
static int index_pending(struct api_caches *c, const char *id, json_t **ret, unsigned *ret_status,
			 imc_error *err)
{
	struct api_exporter *x = api_caches_exporter(c);
	int r = x ? api_exporter_state(x, id, err) : imc_err(err, ESHUTDOWN, "no exporter");

	if (r == 0)
		r = api_exporter_queue(x, id, err);
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
	struct chunk_store *cs;
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r;

	if (id_len == 0 || id_len >= sizeof(id))
		return imc_err(err, EINVAL, "cache id: malformed");
	memcpy(id, id_in, id_len);
	id[id_len] = '\0';
	if (!api_cache_id_valid(id))
		return imc_err(err, EINVAL,
			       "cache id \"%.80s\": malformed (want %s-<16 hex digits>)", id,
			       API_ID_PREFIX);
	if (cache_ready(c, who, id, err) < 0 || dist_store(c, &cs, err) < 0)
		return err->code;
	/* Only a read of the stored index here: the export itself runs on the exporter. */
	r = chunks_read_index(cs, id, &buf, &len, err);
	if (r == -ENOENT) {
		imc_err_clear(err);
		return index_pending(c, id, ret, ret_status, err);
	}
	if (r < 0)
		return r;
	*ret_status = 200;
	return imc_json_parse_object(buf, len, ret, err);
}

int api_dist_forget(struct api_caches *c, const char *id, uint64_t *ret_freed, imc_error *err)
{
	struct chunk_store *cs;
	int r;

	*ret_freed = 0;
	if (dist_store(c, &cs, err) < 0)
		return err->code;
	/* Exports stay out meanwhile: a chunk of an export in flight is in no index yet. */
	pthread_mutex_lock(&export_lock);
	r = chunks_forget(cs, id, ret_freed, err);
	pthread_mutex_unlock(&export_lock);
	return r;
}

/* ---- chunks ---------------------------------------------------------------------------------- */

struct range {
	uint64_t start, len;
};

/* One "bytes=a-b", "bytes=a-" or "bytes=-n" range of a size-byte file: 1 ok, 0 not a range we
 * serve (answer the whole file), -1 unsatisfiable (416). */
static int parse_range(const char *h, uint64_t size, struct range *ret)
{
	unsigned long long a = 0, b = size ? size - 1 : 0;
	char *end;

	if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
		return 0;
	h += 6;
	if (*h == '-') {
		unsigned long long n = strtoull(h + 1, &end, 10);
		if (*end || end == h + 1)
			return 0;
		if (n == 0 || size == 0)
			return -1;
		a = n >= size ? 0 : size - n;
	} else {
		a = strtoull(h, &end, 10);
		if (end == h || *end != '-')
			return 0;
		if (end[1]) {
			char *e2;
			b = strtoull(end + 1, &e2, 10);
			if (*e2 || b < a)
				return 0;
		}
		if (a >= size)
			return -1;
		if (b >= size)
			b = size - 1;
	}
	*ret = (struct range){.start = a, .len = b - a + 1};
	return 1;
}

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

static bool etag_matches(const char *inm, const char *etag)
{
	return inm && (strcmp(inm, "*") == 0 || strstr(inm, etag) != NULL);
}

static void add_chunk_headers(struct MHD_Response *r, const char *etag)
{
	MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, etag);
	MHD_add_response_header(r, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CHUNKS_MEDIA_TYPE_CHUNK);
	/* Named by content: it never changes. */
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
				"public, max-age=31536000, immutable");
}

unsigned api_dist_chunk(struct api_caches *c, struct MHD_Connection *conn, const char *method,
			const char *digest, struct MHD_Response **ret)
{
	char etag[CHUNKS_DIGEST_LEN + 3], crange[96];
	struct chunk_store *cs;
	_cleanup_close_ int fd = -1;
	imc_error err = {0};
	struct range rg = {0};
	struct stat st;
	unsigned status = 200;
	int rr;

	(void)method; /* HEAD: libmicrohttpd sends the headers only */
	*ret = NULL;
	if (dist_store(c, &cs, &err) < 0)
		return respond_errno(&err, ret);
	if (chunk_store_open_blob(cs, digest, &fd, &err) < 0) {
		if (err.code == -ENOENT)
			snprintf(err.msg, sizeof(err.msg), "chunk %.80s: not found", digest);
		return respond_errno(&err, ret);
	}
	if (fstat(fd, &st) < 0) {
		imc_err_sys(&err, errno, "chunk %s", digest);
		return respond_errno(&err, ret);
	}
	snprintf(etag, sizeof(etag), "\"%s\"", digest);
	if (etag_matches(
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH),
		etag)) {
		*ret = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		if (*ret)
			add_chunk_headers(*ret, etag);
		return 304;
	}
	rr = parse_range(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE),
			 (uint64_t)st.st_size, &rg);
	if (rr < 0) {
		snprintf(crange, sizeof(crange), "bytes */%lld", (long long)st.st_size);
		respond_error(416, "RangeNotSatisfiable", "range outside the chunk", ret);
		if (*ret)
			MHD_add_response_header(*ret, MHD_HTTP_HEADER_CONTENT_RANGE, crange);
		return 416;
	}
	if (rr == 0)
		rg = (struct range){.start = 0, .len = (uint64_t)st.st_size};
	else
		status = 206;
	/* Zero copy: libmicrohttpd sends from the descriptor (sendfile) and closes it. */
	*ret = MHD_create_response_from_fd_at_offset64(rg.len, fd, rg.start);
	if (!*ret)
		return 500;
	fd = -1;
	add_chunk_headers(*ret, etag);
	if (status == 206) {
		snprintf(crange, sizeof(crange), "bytes %" PRIu64 "-%" PRIu64 "/%lld", rg.start,
			 rg.start + rg.len - 1, (long long)st.st_size);
		MHD_add_response_header(*ret, MHD_HTTP_HEADER_CONTENT_RANGE, crange);
	}
	return status;
}
