/* The cache table's repair on start: builds, deletes and downloads that a stopped imcd left
 * unfinished. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "caches_internal.h"

/* ---- repair on start --------------------------------------------------------------------------
 */

int api_caches_queue_push_locked(struct api_caches *c, struct api_cache *cache)
{
	if (c->q_len >= API_QUEUE_MAX)
		return -EDQUOT;
	c->queue[(c->q_head + c->q_len) % API_QUEUE_MAX] = cache;
	c->q_len++;
	pthread_cond_signal(&c->cond);
	return 0;
}

/* A repair done: the cache's event, its record written, and a line in the start-up report
 * (report, then why when there is one). */
static void repaired(struct api_caches *c, struct api_cache *cache, json_t *repairs,
		     const char *reason, const char *event, const char *report, const char *why)
{
	imc_error e = {0};

	event_locked(cache, reason, "%s", event);
	if (api_caches_persist(c, cache, &e) < 0)
		imc_repair_report(repairs, "%s", e.msg);
	imc_repair_report(repairs, "cache %s: %s%s%s", cache->id, report, why ? ": " : "",
			  why ? why : "");
}

/* A build that imcd did not see finish: whatever it left in the store goes.  Without
 * credentials it is built again from the start (queued); with credentials, which were never
 * written down, it cannot be, and is marked Failed with the reason. */
static int repair_interrupted(struct api_caches *c, struct api_cache *cache, json_t *repairs,
			      imc_error *err)
{
	api_caches_remove_leftover(c, STORE_VOLUME, cache->id, repairs);
	api_caches_remove_leftover(c, STORE_SNAPSHOT, cache->id, repairs);
	if (!cache->had_credentials && api_caches_queue_push_locked(c, cache) == 0) {
		repaired(c, cache, repairs, "Resumed", "imcd restarted: the build starts again",
			 "was Creating when imcd stopped; build queued again", NULL);
		return 0;
	}
	if (api_cache_set_failed(cache,
				 cache->had_credentials ? CREDS_LOST_MSG
							: INTERRUPTED_MSG " (build queue full)",
				 err) < 0)
		return err ? err->code : -ENOMEM;
	repaired(c, cache, repairs, "Failed", cache->status_message,
		 "was Creating when imcd stopped; marked Failed", cache->status_message);
	return 0;
}

static int repair_missing_snapshot(struct api_caches *c, struct api_cache *cache, json_t *repairs,
				   imc_error *err)
{
	struct store_object_info info;
	imc_error e = {0};
	int r = store_stat(c->store, STORE_SNAPSHOT, cache->id, &info, &e);

	if (r == 0)
		return 0;
	if (r != -ENOENT) {
		imc_repair_report(repairs, "cache %s: cannot check its snapshot: %s", cache->id,
				  e.msg);
		return 0;
	}
	if (api_cache_set_failed(cache, "snapshot missing from the store", err) < 0)
		return err ? err->code : -ENOMEM;
	repaired(c, cache, repairs, "Failed", "snapshot missing from the store (found on restart)",
		 "was Ready but its snapshot is gone; marked Failed", NULL);
	return 0;
}

/* A delete or expiry that a crash cut short: finish it. */
static void repair_deleting(struct api_caches *c, struct api_cache *cache, json_t *repairs)
{
	api_caches_remove_leftover(c, STORE_SNAPSHOT, cache->id, repairs);
	api_caches_remove_leftover(c, STORE_VOLUME, cache->id,
				   repairs); /* a delete that cancelled a build */
	api_caches_set_status_locked(cache, API_CACHE_EXPIRED);
	repaired(c, cache, repairs, "Expired", "a removal cut short by a restart was finished",
		 "was Deleting when imcd stopped; snapshot removed, Expired", NULL);
}

/* Partial blob downloads that a killed imcd left under temporary names (those a live process
 * holds stay).  The chunk store's are imcd's to remove: it opens that store. */
void api_caches_repair_partial_blobs(struct api_caches *c, json_t *repairs)
{
	uint64_t bytes = 0;
	imc_error e = {0};
	size_t n = 0;

	if (builder_blobs_remove_partial(c->blob_dir, &n, &bytes, &e) < 0)
		imc_repair_report(repairs, "blobs: cannot remove partial downloads: %s", e.msg);
	else if (n)
		imc_repair_report(
		    repairs, "blobs: removed %zu partial download(s) a crash left (%llu bytes)", n,
		    (unsigned long long)bytes);
}

/* Runs before any thread starts: the lock is not needed. */
int api_caches_repair_all(struct api_caches *c, json_t *repairs, imc_error *err)
{
	for (size_t i = 0; i < c->n_items; i++) {
		struct api_cache *cache = c->items[i];
		int r = 0;

		if (cache->status == API_CACHE_CREATING)
			r = repair_interrupted(c, cache, repairs, err);
		else if (cache->status == API_CACHE_READY || cache->status == API_CACHE_UPDATING)
			r = repair_missing_snapshot(c, cache, repairs, err);
		else if (cache->status == API_CACHE_DELETING)
			repair_deleting(c, cache, repairs);
		if (r < 0)
			return r;
	}
	/* The reconciliation itself is logged whatever it found; only repairs go into repairs. */
	imc_info("reconciled %zu cache record(s) against the store: %zu repair(s)", c->n_items,
		 repairs ? json_array_size(repairs) : 0);
	return 0;
}
