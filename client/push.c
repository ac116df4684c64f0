/* imcctl push: a cache's chunk index and chunks, read from imcd, written to an OCI registry as
 * an artifact (docs/distribution.md): config = the index, layers = the chunk blobs (each once),
 * artifactType application/vnd.imcache.snapshot.v1.  The registry side is oci/artifact.c. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define IMCD_INDEX_WAIT_S 600 /* how long a 202 to the index request is waited out */

struct push {
	const struct client_push_config *cfg;
	struct oci_pusher *reg;
	struct client_push_stats *st;
};

/* One GET of url from imcd through net/ (the token and the unix socket of every other imcctl
 * command) into ret: 0 with *ret_status (2xx), or the error. */
static int imcd_get_once(struct push *p, const char *url, struct imc_buf *ret, long *ret_status,
			 imc_error *err)
{
	struct net_response res = {0};
	int r = net_perform(
	    p->cfg->net,
	    &(struct net_request){.url = url,
				  .unix_socket = p->cfg->unix_socket,
				  .bearer = p->cfg->token,
				  .sink = {.kind = NET_SINK_MEMORY, .max = OCI_INDEX_MAX}},
	    &res, err);

	if (r == 0) {
		free(ret->data);
		ret->data = steal_pointer(&res.body);
		ret->len = res.body_len;
		ret->cap = ret->len;
		*ret_status = res.status;
	}
	net_response_free(&res);
	return r;
}

/* GET from imcd (the index or a chunk).  202: imcd is still exporting the index (it does so
 * once the cache is Ready), asked again each second for up to IMCD_INDEX_WAIT_S. */
static int imcd_get(struct push *p, const char *path, struct imc_buf *ret, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	long status = 0;

	if (asprintf(&url, "%s%s", p->cfg->server, path) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	for (time_t give_up = time(NULL) + IMCD_INDEX_WAIT_S;; sleep(1)) {
		if (imcd_get_once(p, url, ret, &status, err) < 0)
			return err->code;
		if (status != 202 || time(NULL) >= give_up)
			break;
	}
	if (status != 200)
		return imc_err(err, status == 202 ? ETIMEDOUT : EIO, "GET %s: HTTP %ld%s", url,
			       status,
			       status == 202 ? " (the index was still being exported)" : "");
	return 0;
}

static int upload(struct push *p, const char *digest, const void *data, size_t len, imc_error *err)
{
	bool uploaded = false;

	if (oci_push_blob(p->reg, digest, data, len, &uploaded, err) < 0)
		return err->code;
	if (!uploaded) {
		p->st->blobs_skipped++;
		return 0;
	}
	p->st->blobs_uploaded++;
	p->st->bytes_uploaded += len;
	return 0;
}

/* One chunk blob from imcd to the registry, checked against its digest on the way. */
static int push_chunk(struct push *p, const struct oci_chunk_entry *e, imc_error *err)
{
	char path[160], hex[IMC_SHA256_HEX_LEN + 1];
	struct imc_buf b = {0};
	bool have = false;
	int r;

	if (oci_push_blob_exists(p->reg, e->blob, &have, err) < 0)
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
		r = upload(p, e->blob, b.data, b.len, err);
	imc_buf_free(&b);
	return r;
}

static json_t *manifest_json(const struct oci_chunk_index *ix, const char *index_digest,
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
								OCI_SNAPSHOT_MT_CHUNK, "digest",
								ix->chunks[i].blob, "size",
								(json_int_t)ix->chunks[i].csize));
	}
	m = json_pack("{s:i,s:s,s:s,s:{s:s,s:s,s:I},s:o,s:{s:s}}", "schemaVersion", 2, "mediaType",
		      OCI_MT_OCI_MANIFEST, "artifactType", OCI_SNAPSHOT_ARTIFACT_TYPE, "config",
		      "mediaType", OCI_SNAPSHOT_MT_INDEX, "digest", index_digest, "size",
		      (json_int_t)index_len, "layers", layers, "annotations", "io.imcache.cache-id",
		      ix->cache_id);
	return m;
}

static int put_manifest(struct push *p, const struct oci_chunk_index *ix, const char *index_digest,
			size_t index_len, imc_error *err)
{
	_cleanup_json_ json_t *m = manifest_json(ix, index_digest, index_len);
	_cleanup_free_ char *body = m ? json_dumps(m, JSON_COMPACT) : NULL;

	if (!body)
		return imc_err(err, ENOMEM, "out of memory");
	return oci_push_manifest(p->reg, body, strlen(body), p->st->manifest_digest, err);
}

static int push_all(struct push *p, const char *id, imc_error *err)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	struct imc_buf b = {0};
	char path[160], hex[IMC_SHA256_HEX_LEN + 1], digest[OCI_DIGEST_MAX + 1];
	int r;

	snprintf(path, sizeof(path), "/v1/imagecaches/%s/index", id);
	r = imcd_get(p, path, &b, err);
	if (r == 0)
		r = oci_chunk_index_parse(b.data, b.len, &ix, err);
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
		r = upload(p, digest, b.data, b.len, err);
	if (r == 0)
		r = put_manifest(p, &ix, digest, b.len, err);
	imc_buf_free(&b);
	return r;
}

int client_push_snapshot(const struct client_push_config *cfg, const char *cache_id,
			 const char *ref, struct client_push_stats *ret, imc_error *err)
{
	struct push p = {.cfg = cfg, .st = ret};
	int r;

	*ret = (struct client_push_stats){0};
	if (oci_push_open(ref, cfg->insecure_registries, &p.reg, err) < 0)
		return err->code;
	r = push_all(&p, cache_id, err);
	if (r < 0)
		imc_err_wrap(err, "push %s to %s", cache_id, ref);
	oci_push_close(p.reg);
	return r;
}
