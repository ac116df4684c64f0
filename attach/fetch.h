/* Fetching a snapshot a host has never seen: its chunk index from imcd (or an OCI registry), the
 * chunks it lacks in parallel, each verified, written into a new local snapshot; chunks another
 * local snapshot already holds are copied locally (docs/distribution.md). */
#ifndef IMC_ATTACH_FETCH_H
#define IMC_ATTACH_FETCH_H

#include <stdint.h>

#include "../common/imc.h"
#include "../store/chunks.h"
#include "../store/store.h"

#define FETCH_PARALLEL_DEFAULT 8
#define FETCH_PARALLEL_MAX     64
#define FETCH_ATTEMPTS	       4 /* per chunk, for dropped connections (each resumes) */
#define FETCH_TIMEOUT_S	       60
#define FETCH_INDEX_WAIT_S     600 /* how long a 202 to the index request is waited out */

struct fetch_config {
	const char *server;	  /* imcd base URL ("http://host:port") */
	const char *token;	  /* bearer token for imcd; NULL: none */
	const char *registry_ref; /* pull from this OCI ref instead (imcctl push); NULL: imcd */
	const char *const *insecure_registries; /* plain-HTTP registries (NULL-terminated) */
	unsigned parallel;			/* chunk downloads at once; 0: default */
	uint64_t cache_size; /* local store limit in bytes (LRU of unattached snapshots); 0: none */
};

struct fetch_stats {
	uint64_t chunks, zero_chunks;	 /* in the index; zero ones are never sent */
	uint64_t fetched, fetched_bytes; /* chunks over the network, compressed bytes */
	uint64_t local, local_bytes;	 /* chunks copied from another local snapshot */
	uint64_t retries, refetched_corrupt;
	uint64_t evicted; /* snapshots evicted for space */
	uint64_t ns;
};

/* Make snapshot id local: nothing to do when the store has it (its last use is recorded);
 * otherwise fetch it.  On any failure the half-written volume is removed. */
int fetch_snapshot(struct store *s, const struct fetch_config *cfg, const char *id,
		   struct fetch_stats *ret_stats, imc_error *err);
/* Record that snapshot id was used now (for the LRU). */
int fetch_touch(struct store *s, const char *id, imc_error *err);
/* Evict unattached snapshots, least recently used first, until the local snapshots plus need
 * bytes fit in limit (-ENOSPC when attached ones leave too little); ret_evicted counts them. */
int fetch_evict(struct store *s, uint64_t limit, uint64_t need, const char *keep,
		uint64_t *ret_evicted, imc_error *err);

/* A run of zero chunks between data chunks. */
struct gap {
	uint64_t start, end;
};
#ifdef IMC_TESTING
/* The gaps the fetcher fills with zeros (all but the 15 largest; none when there are at most
 * 15), so that the reflink seal has nothing to compact.  *ret is malloc'ed (NULL when none). */
int fetch_small_gaps(const struct chunk_index *ix, struct gap **ret, size_t *ret_n);
#endif

#endif
