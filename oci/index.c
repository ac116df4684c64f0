/* The imcache snapshot artifact's config: the chunk index (docs/distribution.md).  Shared by
 * the server that cuts a snapshot (dist/), the agent that fetches one (dist/) and the client that
 * pushes one to a registry (client/), so it lives with the other OCI formats. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h> /* ZSTD_COMPRESSBOUND only: a macro, nothing to link */

#include "oci.h"

void oci_chunk_index_free(struct oci_chunk_index *ix)
{
	free(ix->chunks);
	*ix = (struct oci_chunk_index){0};
}

uint64_t oci_chunk_index_len(const struct oci_chunk_index *ix, uint64_t offset)
{
	uint64_t left = offset < ix->size ? ix->size - offset : 0;
	return left < ix->chunk_size ? left : ix->chunk_size;
}

/* ---- the index ------------------------------------------------------------------------------ */

static int get_digest(json_t *obj, const char *key, const char *ctx, char *out, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	const char *s = NULL;
	int r = imc_json_get_string(obj, key, true, OCI_DIGEST_MAX, ctx, &s, err);

	if (r < 0)
		return r;
	if (imc_digest_parse(s, hex, err) < 0)
		return imc_err_wrap(err, "%s.%s", ctx, key);
	snprintf(out, OCI_DIGEST_MAX + 1, "%s", s);
	return 0;
}

static int parse_chunk(json_t *o, const struct oci_chunk_index *ix, uint64_t min_offset, size_t i,
		       struct oci_chunk_entry *ret, imc_error *err)
{
	static const char *const allowed[] = {"offset", "digest", "blob", "csize", NULL};
	char ctx[48];
	int64_t off = 0, csize = 0;

	snprintf(ctx, sizeof(ctx), "chunks[%zu]", i);
	if (!json_is_object(o))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	if (imc_json_check_fields(o, allowed, ctx, err) < 0 ||
	    imc_json_get_int(o, "offset", true, 0, (int64_t)ix->size - 1, ctx, &off, err) < 0 ||
	    imc_json_get_int(o, "csize", true, 1, ZSTD_COMPRESSBOUND(ix->chunk_size), ctx, &csize,
			     err) < 0 ||
	    get_digest(o, "digest", ctx, ret->digest, err) < 0 ||
	    get_digest(o, "blob", ctx, ret->blob, err) < 0)
		return err->code;
	if ((uint64_t)off % ix->chunk_size != 0 || (uint64_t)off < min_offset)
		return imc_err(err, EINVAL,
			       "%s.offset %" PRId64 ": not a multiple of chunkSize in order", ctx,
			       off);
	ret->offset = (uint64_t)off;
	ret->csize = (uint64_t)csize;
	return 0;
}

static int parse_header(json_t *j, struct oci_chunk_index *ix, json_t **ret_chunks, imc_error *err)
{
	static const char *const allowed[] = {"mediaType", "cacheId", "chunkSize", "size",
					      "sha256",	   "chunks",  NULL};
	const char *mt = NULL, *id = NULL;
	int64_t cs = 0, size = 0;

	if (imc_json_check_fields(j, allowed, "index", err) < 0 ||
	    imc_json_get_string(j, "mediaType", true, 128, "index", &mt, err) < 0 ||
	    imc_json_get_string(j, "cacheId", true, sizeof(ix->cache_id) - 1, "index", &id, err) <
		0 ||
	    imc_json_get_int(j, "chunkSize", true, OCI_CHUNK_SIZE_MIN, OCI_CHUNK_SIZE_MAX, "index",
			     &cs, err) < 0 ||
	    imc_json_get_int(j, "size", true, 1, (int64_t)OCI_SNAPSHOT_MAX, "index", &size, err) <
		0 ||
	    get_digest(j, "sha256", "index", ix->sha256, err) < 0 ||
	    imc_json_get_array(j, "chunks", true, OCI_INDEX_CHUNKS_MAX, "index", ret_chunks, err) <
		0)
		return err->code;
	if (strcmp(mt, OCI_SNAPSHOT_MT_INDEX) != 0)
		return imc_err(err, EINVAL, "index.mediaType \"%.80s\": want %s", mt,
			       OCI_SNAPSHOT_MT_INDEX);
	if (!imc_name_valid(id, sizeof(ix->cache_id) - 1))
		return imc_err(err, EINVAL, "index.cacheId \"%.80s\": malformed", id);
	if ((cs & (cs - 1)) != 0)
		return imc_err(err, EINVAL, "index.chunkSize %" PRId64 ": not a power of two", cs);
	snprintf(ix->cache_id, sizeof(ix->cache_id), "%s", id);
	ix->chunk_size = (uint32_t)cs;
	ix->size = (uint64_t)size;
	return 0;
}

int oci_chunk_index_parse(const char *buf, size_t len, struct oci_chunk_index *ret, imc_error *err)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	_cleanup_json_ json_t *j = NULL;
	json_t *arr = NULL, *o;
	uint64_t next = 0;
	size_t i;
	int r;

	if (len > OCI_INDEX_MAX)
		return imc_err(err, EFBIG, "chunk index: %zu bytes, more than %u", len,
			       OCI_INDEX_MAX);
	if ((r = imc_json_parse_object(buf, len, &j, err)) < 0)
		return imc_err_wrap(err, "chunk index");
	if (parse_header(j, &ix, &arr, err) < 0)
		return err->code;
	if (json_array_size(arr) > (ix.size + ix.chunk_size - 1) / ix.chunk_size)
		return imc_err(err, EINVAL, "index.chunks: %zu chunks, more than size holds",
			       json_array_size(arr));
	ix.chunks = calloc(json_array_size(arr) + 1, sizeof(*ix.chunks));
	if (!ix.chunks)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(arr, i, o)
	{
		if (parse_chunk(o, &ix, next, i, &ix.chunks[i], err) < 0)
			return err->code;
		next = ix.chunks[i].offset + ix.chunk_size;
		ix.n_chunks++;
	}
	*ret = ix;
	ix = (struct oci_chunk_index){0};
	return 0;
}

int oci_chunk_index_render(const struct oci_chunk_index *ix, char **ret, size_t *ret_len,
			   imc_error *err)
{
	_cleanup_json_ json_t *arr = json_array();
	_cleanup_json_ json_t *j = NULL;
	char *s;

	if (!arr)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < ix->n_chunks; i++) {
		const struct oci_chunk_entry *c = &ix->chunks[i];
		if (json_array_append_new(arr, json_pack("{s:I,s:s,s:s,s:I}", "offset",
							 (json_int_t)c->offset, "digest", c->digest,
							 "blob", c->blob, "csize",
							 (json_int_t)c->csize)) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	j = json_pack("{s:s,s:s,s:I,s:I,s:s,s:O}", "mediaType", OCI_SNAPSHOT_MT_INDEX, "cacheId",
		      ix->cache_id, "chunkSize", (json_int_t)ix->chunk_size, "size",
		      (json_int_t)ix->size, "sha256", ix->sha256, "chunks", arr);
	s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	*ret_len = strlen(s);
	*ret = s;
	return 0;
}
