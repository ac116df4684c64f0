/* imcctl push: a cache's chunk index and chunks, read from imcd, written to an OCI registry as
 * an artifact (docs/distribution.md): config = the index, layers = the chunk blobs (each once),
 * artifactType application/vnd.imcache.snapshot.v1.  Blobs the registry has are skipped (HEAD);
 * the others go up as monolithic uploads (POST .../blobs/uploads/, then PUT ?digest=). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../store/chunks.h"
#include "builder.h"
#include "push.h"

#define PUSH_TIMEOUT_S	  120
#define PUSH_INDEX_WAIT_S 600 /* how long a 202 to the index request is waited out */

struct push {
	const struct push_config *cfg;
	struct builder_ref ref;
	char *base; /* scheme://registry/v2/<repo> */
	CURL *curl;
	struct push_stats *st;
};

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
	struct imc_buf *b = ctx;

	n *= size;
	if (b->len + n > CHUNKS_INDEX_MAX)
		return 0;
	return imc_buf_append(b, p, n) < 0 ? 0 : n;
}

static bool host_plain_http(const char *registry, const char *const *insecure)
{
	size_t n = strcspn(registry, ":");

	if (strncmp(registry, "localhost", n) == 0 && n == 9)
		return true;
	if (strncmp(registry, "127.", 4) == 0 || strncmp(registry, "[::1]", 5) == 0)
		return true;
	for (size_t i = 0; insecure && insecure[i]; i++)
		if (strcmp(insecure[i], registry) == 0 ||
		    (strlen(insecure[i]) == n && strncmp(insecure[i], registry, n) == 0))
			return true;
	return false;
}

/* One request; body (may be NULL) collects the answer, headers (may be NULL) are sent. */
static int request(struct push *p, const char *method, const char *url, struct curl_slist *headers,
		   const void *upload, size_t upload_len, struct imc_buf *body, long *ret_status,
		   char **ret_location, imc_error *err)
{
	CURL *c = p->curl;
	struct imc_buf sink = {0};
	CURLcode rc;
	char *loc = NULL;

	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)PUSH_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, body ? body : &sink);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	if (upload) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, upload);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)upload_len);
	} else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}
	rc = curl_easy_perform(c);
	imc_buf_free(&sink);
	if (rc != CURLE_OK)
		return imc_err(err, EIO, "%s %s: %s", method, url, curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
	if (ret_location) {
		curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc);
		if (!loc) {
			struct curl_header *h = NULL;
			if (curl_easy_header(c, "Location", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
				loc = h->value;
		}
		*ret_location = loc ? strdup(loc) : NULL;
	}
	return 0;
}

/* GET from imcd (the index or a chunk). */
static int imcd_get(struct push *p, const char *path, struct imc_buf *ret, imc_error *err)
{
	_cleanup_free_ char *url = NULL, *auth = NULL;
	_cleanup_curl_slist_ struct curl_slist *h = NULL;
	long status = 0;

	if (asprintf(&url, "%s%s", p->cfg->server, path) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (p->cfg->token && asprintf(&auth, "Authorization: Bearer %s", p->cfg->token) > 0)
		h = curl_slist_append(NULL, auth);
	/* 202: imcd is still exporting the index (it does so once the cache is Ready). */
	for (time_t give_up = time(NULL) + PUSH_INDEX_WAIT_S;; sleep(1)) {
		ret->len = 0;
		if (request(p, "GET", url, h, NULL, 0, ret, &status, NULL, err) < 0)
			return err->code;
		if (status != 202 || time(NULL) >= give_up)
			break;
	}
	if (status != 200)
		return imc_err(err, status == 404 ? ENOENT : EIO, "GET %s: HTTP %ld", url, status);
	return 0;
}

static int blob_exists(struct push *p, const char *digest, bool *ret, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	long status = 0;

	if (asprintf(&url, "%s/blobs/%s", p->base, digest) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (request(p, "HEAD", url, NULL, NULL, 0, NULL, &status, NULL, err) < 0)
		return err->code;
	*ret = status == 200;
	return 0;
}

/* Location may be relative to the registry; the digest goes on as a query argument. */
static int upload_url(struct push *p, const char *loc, const char *digest, char **ret,
		      imc_error *err)
{
	const char *scheme_end = strstr(p->base, "://");
	const char *host_end = scheme_end ? strchr(scheme_end + 3, '/') : NULL;
	int r;

	if (!host_end)
		return imc_err(err, EINVAL, "registry url %s", p->base);
	if (loc[0] == '/')
		r = asprintf(ret, "%.*s%s%cdigest=%s", (int)(host_end - p->base), p->base, loc,
			     strchr(loc, '?') ? '&' : '?', digest);
	else
		r = asprintf(ret, "%s%cdigest=%s", loc, strchr(loc, '?') ? '&' : '?', digest);
	return r < 0 ? imc_err(err, ENOMEM, "out of memory") : 0;
}

static int blob_upload(struct push *p, const char *digest, const void *data, size_t len,
		       imc_error *err)
{
	_cleanup_curl_slist_ struct curl_slist *h = NULL;
	_cleanup_free_ char *url = NULL, *loc = NULL, *put = NULL;
	long status = 0;
	bool have = false;

	if (blob_exists(p, digest, &have, err) < 0)
		return err->code;
	if (have) {
		p->st->blobs_skipped++;
		return 0;
	}
	if (asprintf(&url, "%s/blobs/uploads/", p->base) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (request(p, "POST", url, NULL, NULL, 0, NULL, &status, &loc, err) < 0)
		return err->code;
	if (status != 202 || !loc)
		return imc_err(err, EIO, "POST %s: HTTP %ld%s", url, status,
			       loc ? "" : " without a Location");
	if (upload_url(p, loc, digest, &put, err) < 0)
		return err->code;
	h = curl_slist_append(NULL, "Content-Type: application/octet-stream");
	if (request(p, "PUT", put, h, data, len, NULL, &status, NULL, err) < 0)
		return err->code;
	if (status != 201)
		return imc_err(err, EIO, "PUT blob %s: HTTP %ld", digest, status);
	p->st->blobs_uploaded++;
	p->st->bytes_uploaded += len;
	return 0;
}

/* One chunk blob from imcd to the registry, checked against its digest on the way. */
static int push_chunk(struct push *p, const struct chunk_entry *e, imc_error *err)
{
	char path[160], hex[IMC_SHA256_HEX_LEN + 1];
	struct imc_buf b = {0};
	bool have = false;
	int r;

	if (blob_exists(p, e->blob, &have, err) < 0)
		return err->code;
	if (have) {
		p->st->blobs_skipped++;
		return 0;
	}
	snprintf(path, sizeof(path), "/v1/chunks/%s", e->digest);
	r = imcd_get(p, path, &b, err);
	if (r == 0 && b.len != e->csize)
		r = imc_err(err, EBADMSG, "chunk %s: %zu bytes, want %" PRIu64, e->digest, b.len,
			    e->csize);
	if (r == 0 && imc_sha256_hex(b.data, b.len, hex, err) == 0 && strcmp(hex, e->blob + 7) != 0)
		r = imc_err(err, EBADMSG, "chunk %s: blob digest mismatch", e->digest);
	if (r == 0)
		r = blob_upload(p, e->blob, b.data, b.len, err);
	imc_buf_free(&b);
	return r;
}

static json_t *manifest_json(const struct chunk_index *ix, const char *index_digest,
			     size_t index_len)
{
	json_t *layers = json_array();
	json_t *m;

	for (size_t i = 0; layers && i < ix->n_chunks; i++) {
		bool dup = false;
		for (size_t k = 0; k < i && !dup; k++)
			dup = strcmp(ix->chunks[k].blob, ix->chunks[i].blob) == 0;
		if (!dup)
			json_array_append_new(layers, json_pack("{s:s,s:s,s:I}", "mediaType",
								CHUNKS_MEDIA_TYPE_CHUNK, "digest",
								ix->chunks[i].blob, "size",
								(json_int_t)ix->chunks[i].csize));
	}
	m = json_pack("{s:i,s:s,s:s,s:{s:s,s:s,s:I},s:o,s:{s:s}}", "schemaVersion", 2, "mediaType",
		      "application/vnd.oci.image.manifest.v1+json", "artifactType",
		      CHUNKS_ARTIFACT_TYPE, "config", "mediaType", CHUNKS_MEDIA_TYPE_INDEX,
		      "digest", index_digest, "size", (json_int_t)index_len, "layers", layers,
		      "annotations", "io.imcache.cache-id", ix->cache_id);
	return m;
}

static int put_manifest(struct push *p, const struct chunk_index *ix, const char *index_digest,
			size_t index_len, imc_error *err)
{
	_cleanup_json_ json_t *m = manifest_json(ix, index_digest, index_len);
	_cleanup_curl_slist_ struct curl_slist *h = NULL;
	_cleanup_free_ char *body = m ? json_dumps(m, JSON_COMPACT) : NULL;
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	long status = 0;

	if (!body ||
	    asprintf(&url, "%s/manifests/%s", p->base, p->ref.tag ? p->ref.tag : "latest") < 0)
		return imc_err(err, ENOMEM, "out of memory");
	h = curl_slist_append(NULL, "Content-Type: application/vnd.oci.image.manifest.v1+json");
	if (request(p, "PUT", url, h, body, strlen(body), NULL, &status, NULL, err) < 0)
		return err->code;
	if (status != 201)
		return imc_err(err, EIO, "PUT %s: HTTP %ld", url, status);
	if (imc_sha256_hex(body, strlen(body), hex, err) < 0)
		return err->code;
	snprintf(p->st->manifest_digest, sizeof(p->st->manifest_digest), "sha256:%s", hex);
	return 0;
}

static int push_all(struct push *p, const char *id, imc_error *err)
{
	_cleanup_(chunk_index_free) struct chunk_index ix = {0};
	struct imc_buf b = {0};
	char path[160], hex[IMC_SHA256_HEX_LEN + 1], digest[CHUNKS_DIGEST_LEN + 1];
	int r;

	snprintf(path, sizeof(path), "/v1/imagecaches/%s/index", id);
	r = imcd_get(p, path, &b, err);
	if (r == 0)
		r = chunk_index_parse(b.data, b.len, &ix, err);
	if (r == 0)
		r = imc_sha256_hex(b.data, b.len, hex, err);
	for (size_t i = 0; r == 0 && i < ix.n_chunks; i++) {
		bool dup = false;
		for (size_t k = 0; k < i && !dup; k++)
			dup = strcmp(ix.chunks[k].blob, ix.chunks[i].blob) == 0;
		if (!dup)
			r = push_chunk(p, &ix.chunks[i], err);
	}
	snprintf(digest, sizeof(digest), "sha256:%s", hex);
	if (r == 0)
		r = blob_upload(p, digest, b.data, b.len, err);
	if (r == 0)
		r = put_manifest(p, &ix, digest, b.len, err);
	imc_buf_free(&b);
	return r;
}

int builder_push_snapshot(const struct push_config *cfg, const char *cache_id, const char *ref,
			  struct push_stats *ret, imc_error *err)
{
	struct push p = {.cfg = cfg, .st = ret};
	int r;

	*ret = (struct push_stats){0};
	if (builder_ref_parse(ref, &p.ref, err) < 0)
		return imc_err_wrap(err, "push to %s", ref);
	if (p.ref.digest && !p.ref.tag) {
		builder_ref_free(&p.ref);
		return imc_err(err, EINVAL, "push to %s: name a tag, not a digest", ref);
	}
	p.curl = curl_easy_init();
	if (!p.curl ||
	    asprintf(&p.base, "%s://%s/v2/%s",
		     host_plain_http(p.ref.registry, cfg->insecure_registries) ? "http" : "https",
		     p.ref.registry, p.ref.repository) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	else
		r = push_all(&p, cache_id, err);
	if (r < 0)
		imc_err_wrap(err, "push %s to %s", cache_id, ref);
	free(p.base);
	if (p.curl)
		curl_easy_cleanup(p.curl);
	builder_ref_free(&p.ref);
	return r;
}
