/* What fetch.c lends lazy.c inside the dist room; not a public header. */
#ifndef IMC_DIST_INTERNAL_H
#define IMC_DIST_INTERNAL_H

#include "dist.h"

#define DIST_FETCH_VOLUME_PREFIX "fetch-" /* the volume a fetch of <id> writes: fetch-<id> */

/* Where the chunks come from, shared by every thread: imcd (--server, its net/ client), the
 * artifact at cfg->registry_ref, or both in cfg's order, with the sources' health (which one is
 * abandoned).  cfg must outlive it. */
struct dist_origin;
int dist_origin_open(const struct dist_fetch_config *cfg, struct dist_origin **ret, imc_error *err);
void dist_origin_close(struct dist_origin *o);
/* The index of id from the first source that has it (ret_buf: its bytes, kept by
 * dist_fetch_record); a source that keeps failing is abandoned after its deadline. */
int dist_origin_index(struct dist_origin *o, const char *id, struct oci_chunk_index *ret,
		      char **ret_buf, size_t *ret_len, imc_error *err);
/* When a lazy read that starts now gives up: now + the read deadline. */
uint64_t dist_origin_read_until(const struct dist_origin *o);

/* One thread's way to the chunks: a kept connection to imcd and a registry client.  st (NULL:
 * the source's own) gets the retries and refetches; *stop (NULL: never) true ends a fetch
 * (waits included) with ECANCELED. */
struct dist_source;
int dist_source_open(struct dist_origin *o, struct dist_fetch_stats *st, const bool *stop,
		     struct dist_source **ret, imc_error *err);
void dist_source_close(struct dist_source *src);
/* The chunk e (len uncompressed bytes) into out, verified.  A failed fetch is tried again with
 * backoff, from the first source not abandoned (dist_health_pick); a corrupt blob is fetched
 * from the other source, or once more from the only one, then -EBADMSG naming the chunk.
 * until_ns 0 (a whole fetch): fails when every source is abandoned; else (a lazy read)
 * abandoned sources are tried again, until until_ns (ETIMEDOUT).  *ret_bytes gets the
 * compressed bytes that came. */
int dist_source_chunk(struct dist_source *src, const struct oci_chunk_entry *e, uint64_t len,
		      void *out, uint64_t until_ns, uint64_t *ret_bytes, imc_error *err);

/* ---- the sources' health and the waits between tries (sources.c; pure) ---------------------- */
struct dist_health {
	uint64_t failing_since_ns[DIST_SOURCE_KINDS]; /* 0: its last fetch worked */
	bool abandoned[DIST_SOURCE_KINDS];
	bool told[DIST_SOURCE_KINDS]; /* its abandonment was logged (once a process) */
};
/* A fetch from source k failed at now_ns: true when this abandons k (failing for deadline_ns
 * since its first failure after a success, or a permanent error); false while it has time
 * left, or when it was abandoned already. */
bool dist_health_failed(struct dist_health *h, enum dist_source_kind k, uint64_t now_ns,
			uint64_t deadline_ns, bool permanent);
void dist_health_ok(struct dist_health *h, enum dist_source_kind k);
/* The source to try: the first of order[0..n) that is neither abandoned nor in skip (a mask of
 * 1 << kind).  When each one not skipped is abandoned: -1, or with again they all start anew
 * (not abandoned, no failure counted) and the first of them is the answer.  -1 when every one
 * is skipped. */
int dist_health_pick(struct dist_health *h, const enum dist_source_kind *order, size_t n,
		     unsigned skip, bool again);
/* The wait before try attempt + 1 of a fetch: 250 ms doubled each try up to 4 s, at most
 * left_ms. */
uint64_t dist_retry_wait_ms(unsigned attempt, uint64_t left_ms);
/* An error that a retry of the same source cannot mend (not found, refused, malformed). */
bool dist_error_permanent(int code);

/* Evict for room and check the pool has the data bytes of ix free (as a whole fetch does). */
int dist_fetch_check_space(struct store *s, const struct dist_fetch_config *cfg, const char *id,
			   const struct oci_chunk_index *ix, imc_error *err);
/* Write zeros into the small gaps between data chunks of ix on fd (the store's fill hints). */
int dist_fetch_zero_gaps(struct store *s, const struct oci_chunk_index *ix, int fd, imc_error *err);
/* A fetched snapshot's bookkeeping: its index kept in chunks/local/, its last use. */
int dist_fetch_record(struct store *s, const char *id, const char *buf, size_t len, imc_error *err);

#endif
