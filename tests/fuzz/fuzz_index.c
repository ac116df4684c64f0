/* Fuzz target: the chunk index (oci_chunk_index_parse), what an agent reads from imcd or a
 * registry.
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure sets err->code to the returned value, says something and leaves no chunks;
 *  - a success keeps every invariant the fetcher relies on: chunkSize a power of two in range,
 *    offsets multiples of it, strictly increasing and inside size, no more chunks than size
 *    holds, every chunk length (the last one short) in 1..chunkSize;
 *  - the rendered index parses back to the same entries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../oci/oci.h"

static void check_invariants(const struct oci_chunk_index *ix)
{
	if (ix->chunk_size < OCI_CHUNK_SIZE_MIN || ix->chunk_size > OCI_CHUNK_SIZE_MAX ||
	    (ix->chunk_size & (ix->chunk_size - 1)) || ix->size == 0 ||
	    ix->size > OCI_SNAPSHOT_MAX ||
	    ix->n_chunks > (ix->size + ix->chunk_size - 1) / ix->chunk_size)
		abort();
	for (size_t i = 0; i < ix->n_chunks; i++) {
		const struct oci_chunk_entry *c = &ix->chunks[i];
		uint64_t len = oci_chunk_index_len(ix, c->offset);
		if (c->offset % ix->chunk_size || c->offset >= ix->size || len == 0 ||
		    len > ix->chunk_size || (i && c->offset <= ix->chunks[i - 1].offset) ||
		    strncmp(c->digest, "sha256:", 7) || strncmp(c->blob, "sha256:", 7) ||
		    c->csize == 0)
			abort();
	}
}

static void check_round_trip(const struct oci_chunk_index *ix)
{
	struct oci_chunk_index back = {0};
	imc_error err = {0};
	char *buf = NULL;
	size_t len = 0;

	if (oci_chunk_index_render(ix, &buf, &len, &err) < 0)
		return; /* out of memory only */
	if (oci_chunk_index_parse(buf, len, &back, &err) < 0 || back.n_chunks != ix->n_chunks ||
	    back.size != ix->size || back.chunk_size != ix->chunk_size ||
	    strcmp(back.sha256, ix->sha256) || strcmp(back.cache_id, ix->cache_id))
		abort();
	for (size_t i = 0; i < ix->n_chunks; i++)
		if (back.chunks[i].offset != ix->chunks[i].offset ||
		    strcmp(back.chunks[i].digest, ix->chunks[i].digest) ||
		    strcmp(back.chunks[i].blob, ix->chunks[i].blob) ||
		    back.chunks[i].csize != ix->chunks[i].csize)
			abort();
	oci_chunk_index_free(&back);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oci_chunk_index ix = {0};
	imc_error err = {0};
	int r = oci_chunk_index_parse((const char *)data, size, &ix, &err);

	if (r < 0) {
		if (err.code != r || !err.msg[0] || ix.chunks)
			abort();
		return 0;
	}
	check_invariants(&ix);
	check_round_trip(&ix);
	oci_chunk_index_free(&ix);
	return 0;
}
