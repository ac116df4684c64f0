/* Fuzz target: the startup trace (dist_trace_parse), what imcd reads from a PUT body and an agent
 * from imcd.
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure sets err->code to the returned value, says something and leaves no offsets;
 *  - a success keeps the caps: chunkSize a power of two in range, at most DIST_TRACE_ENTRIES_MAX
 *    offsets, each below OCI_SNAPSHOT_MAX;
 *  - the rendered trace parses back to the same offsets;
 *  - the check against a small index never crashes, and passes only for offsets of its chunks,
 *    none twice. */
#include <stdlib.h>
#include <string.h>

#include "../../dist/dist.h"

static void check_invariants(const struct dist_trace *t)
{
	if (t->chunk_size < OCI_CHUNK_SIZE_MIN || t->chunk_size > OCI_CHUNK_SIZE_MAX ||
	    (t->chunk_size & (t->chunk_size - 1)) || t->n > DIST_TRACE_ENTRIES_MAX ||
	    (t->n && !t->offsets))
		abort();
	for (size_t i = 0; i < t->n; i++)
		if (t->offsets[i] >= OCI_SNAPSHOT_MAX)
			abort();
}

static void check_round_trip(const struct dist_trace *t)
{
	struct dist_trace back = {0};
	imc_error err = {0};
	char *buf = NULL;
	size_t len = 0;

	if (dist_trace_render(t, &buf, &len, &err) < 0)
		return; /* out of memory only */
	if (dist_trace_parse(buf, len, &back, &err) < 0 || back.n != t->n ||
	    back.chunk_size != t->chunk_size)
		abort();
	for (size_t i = 0; i < t->n; i++)
		if (back.offsets[i] != t->offsets[i])
			abort();
	dist_trace_free(&back);
	free(buf);
}

/* 64 KiB chunks at 0, 64 KiB and 192 KiB of a 256 KiB snapshot. */
static void check_against_index(const struct dist_trace *t)
{
	struct oci_chunk_entry e[3] = {{.offset = 0}, {.offset = 65536}, {.offset = 196608}};
	struct oci_chunk_index ix = {
	    .chunk_size = 65536, .size = 262144, .chunks = e, .n_chunks = 3};
	imc_error err = {0};
	bool seen[3] = {false, false, false};

	if (dist_trace_check(t, &ix, &err) < 0) {
		if (!err.msg[0])
			abort();
		return;
	}
	if (t->chunk_size != ix.chunk_size || t->n > 3)
		abort();
	for (size_t i = 0; i < t->n; i++) {
		size_t k = t->offsets[i] == 0 ? 0 : t->offsets[i] == 65536 ? 1 : 2;
		if (t->offsets[i] != e[k].offset || seen[k])
			abort();
		seen[k] = true;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dist_trace t = {0};
	imc_error err = {0};
	int r = dist_trace_parse((const char *)data, size, &t, &err);

	if (r < 0) {
		if (err.code != r || !err.msg[0] || t.offsets)
			abort();
		return 0;
	}
	check_invariants(&t);
	check_round_trip(&t);
	check_against_index(&t);
	dist_trace_free(&t);
	return 0;
}
