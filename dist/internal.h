/* What fetch.c lends lazy.c inside the dist room; not a public header. */
#ifndef IMC_DIST_INTERNAL_H
#define IMC_DIST_INTERNAL_H

#include "dist.h"

#define DIST_FETCH_VOLUME_PREFIX "fetch-" /* the volume a fetch of <id> writes: fetch-<id> */

/* Where the chunks come from, shared by every thread: imcd (--server, its net/ client) or the
 * artifact at cfg->registry_ref.  cfg must outlive it. */
struct dist_origin;
int dist_origin_open(const struct dist_fetch_config *cfg, struct dist_origin **ret, imc_error *err);
void dist_origin_close(struct dist_origin *o);
/* The index of id from the origin (ret_buf: its bytes, kept by dist_fetch_record). */
int dist_origin_index(const struct dist_origin *o, const char *id, struct oci_chunk_index *ret,
		      char **ret_buf, size_t *ret_len, imc_error *err);

/* One thread's way to the chunks: a kept connection to imcd, or a registry client. */
struct dist_source;
int dist_source_open(const struct dist_origin *o, struct dist_source **ret, imc_error *err);
void dist_source_close(struct dist_source *src);
/* The chunk e (len uncompressed bytes) into out, verified; a corrupt blob is fetched once more,
 * then -EBADMSG naming the chunk.  *ret_bytes gets the compressed bytes that came. */
int dist_source_chunk(struct dist_source *src, const struct oci_chunk_entry *e, uint64_t len,
		      void *out, uint64_t *ret_bytes, imc_error *err);

/* Evict for room and check the pool has the data bytes of ix free (as a whole fetch does). */
int dist_fetch_check_space(struct store *s, const struct dist_fetch_config *cfg, const char *id,
			   const struct oci_chunk_index *ix, imc_error *err);
/* Write zeros into the small gaps between data chunks of ix on fd (the store's fill hints). */
int dist_fetch_zero_gaps(struct store *s, const struct oci_chunk_index *ix, int fd, imc_error *err);
/* A fetched snapshot's bookkeeping: its index kept in chunks/local/, its last use. */
int dist_fetch_record(struct store *s, const char *id, const char *buf, size_t len, imc_error *err);

#endif
