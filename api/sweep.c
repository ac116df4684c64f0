/* The cache table's sweeper: space (blob collection, pool trim, the metadata's recovery from a
 * full disk), base snapshots no cache stands on, expiry and eviction. */
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

/* ---- space --------------------------------------------------------------------------------------
 * What a build or a removal leaves that nothing needs goes on the sweeper thread, never in a
 * request handler: the blob store's collection lists a directory. */

/* A build ended or a cache went: wake the sweeper for a space pass now. */
void api_caches_space_changed_locked(struct api_caches *c)
{
	c->space_due = true;
	c->trim_due = true;
	c->last_change_ns = imc_monotonic_ns();
	pthread_cond_signal(&c->sweep_cond);
}

void api_caches_wake_space_pass(struct api_caches *c)
{
	pthread_mutex_lock(&c->lock);
	api_caches_space_changed_locked(c);
	pthread_mutex_unlock(&c->lock);
}

void api_caches_space_changed(void *ctx, const char *id)
{
	(void)id;
	if (ctx)
		api_caches_wake_space_pass(ctx);
}

/* Append the layer digests of a cache's built images to out. */
static void cache_layers_append(const struct api_cache *cache, json_t *out)
{
	size_t i, k;
	json_t *im, *l;

	json_array_foreach(json_object_get(cache->manifest, "images"), i, im)
	{
		json_array_foreach(json_object_get(im, "layers"), k, l)
		    json_array_append(out, json_object_get(l, "digest"));
	}
}

/* The layers the blob store keeps: those of every cache that has its snapshot and of every base
 * (a running build pins its own). */
static json_t *needed_layers(struct api_caches *c)
{
	json_t *keep = builder_bases_layers(c->store);

	if (!keep)
		return NULL;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items; i++) {
		const struct api_cache *cache = c->items[i];

		if (cache->status == API_CACHE_READY || cache->status == API_CACHE_UPDATING)
			cache_layers_append(cache, keep);
	}
	pthread_mutex_unlock(&c->lock);
	return keep;
}

static void collect_blobs(struct api_caches *c)
{
	_cleanup_json_ json_t *keep = needed_layers(c);
	struct builder_blobs_gc res;
	imc_error e = {0};

	if (!keep)
		return;
	if (builder_blobs_gc(c->blob_dir, keep, c->blob_max, &res, &e) < 0)
		imc_warn("blob store: %s", e.msg);
	else if (res.removed)
		imc_info("blob store: %zu blob(s) removed (%zu of them least recently used over "
			 "the %llu-byte cap), %llu bytes freed, %llu bytes kept",
			 res.removed, res.evicted, (unsigned long long)c->blob_max,
			 (unsigned long long)res.freed, (unsigned long long)res.kept_bytes);
}

/* Give what the pool freed back to the filesystem under it (store_trim: FITRIM of the embedded
 * pool, which walks its free space under the allocation-group locks that clones take too). */
static void trim_pool(struct api_caches *c)
{
	uint64_t trimmed = 0, t0 = imc_monotonic_ns();
	imc_error e = {0};

	if (store_trim(c->store, &trimmed, &e) < 0)
		imc_warn("pool: trim: %s", e.msg);
	else if (trimmed)
		imc_info("pool: trimmed (%llu bytes of free space discarded, %.0f ms)",
			 (unsigned long long)trimmed, (double)(imc_monotonic_ns() - t0) / 1e6);
}

/* Room for the metadata again?  Every reserve file there, and as much again free. */
bool api_caches_meta_room(struct api_caches *c)
{
	struct statvfs sv;
	uint64_t free_bytes;

	if (api_meta_reserve_fill(c->meta_dirfd, NULL) < 0 || fstatvfs(c->meta_dirfd, &sv) < 0)
		return false;
	/* root (imcd) may write into the blocks a filesystem keeps for root: count them. */
	free_bytes = (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * sv.f_frsize;
	return free_bytes >= 2ULL * API_META_RESERVE_SLOTS * API_META_RESERVE_SLOT;
}

/* While the metadata is full: write what could not be written, and once it all is and there
 * is room again, let creates and builds go on. */
static void meta_recover(struct api_caches *c)
{
	_cleanup_free_ char(*ids)[API_ID_MAX] = NULL;
	size_t n = 0;
	bool dirty = false, full;

	pthread_mutex_lock(&c->lock);
	full = c->meta_full;
	ids = full ? calloc(c->n_items + 1, sizeof(*ids)) : NULL;
	for (size_t i = 0; ids && i < c->n_items; i++)
		if (c->items[i]->meta_dirty)
			memcpy(ids[n++], c->items[i]->id, API_ID_MAX);
	pthread_mutex_unlock(&c->lock);
	if (!full || !ids)
		return;
	for (size_t i = 0; i < n; i++) {
		imc_error e = {0};
		if (api_caches_persist_id(c, ids[i], &e) == 0)
			imc_info("cache %s: metadata written (it could not be for want of space)",
				 ids[i]);
	}
	if (!api_caches_meta_room(c))
		return;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items && !dirty; i++)
		dirty = c->items[i]->meta_dirty;
	if (!dirty) {
		c->meta_full = false;
		pthread_cond_broadcast(&c->cond); /* queued builds may start */
	}
	pthread_mutex_unlock(&c->lock);
	if (!dirty)
		imc_info("metadata: there is room again; creates and builds go on");
}

bool api_caches_healthy(struct api_caches *c, char *why, size_t why_size)
{
	bool ok;

	pthread_mutex_lock(&c->lock);
	ok = !c->meta_full;
	if (!ok)
		snprintf(why, why_size,
			 "metadata cannot be written: %s (creates refused, changes retried until "
			 "there is room)",
			 c->meta_reason);
	pthread_mutex_unlock(&c->lock);
	return ok;
}

/* The space pass of a sweep: blobs, after something went (or always, under a size cap); the
 * pool's trim, once nothing went and nothing was attached or detached for a whole sweep
 * interval (so a run of deletes costs one trim, and a trim does not land in an attach burst). */
static void space_pass(struct api_caches *c)
{
	uint64_t quiet_ns = (uint64_t)c->sweep_ms * 1000000ULL;
	imc_error e = {0};
	bool due, trim;

	pthread_mutex_lock(&c->lock);
	due = c->space_due;
	c->space_due = false;
	trim = c->trim_due && imc_monotonic_ns() - c->last_change_ns >= quiet_ns;
	if (trim)
		c->trim_due = false;
	pthread_mutex_unlock(&c->lock);
	meta_recover(c);
	if (due || c->blob_max)
		collect_blobs(c);
	if (trim)
		trim_pool(c);
	/* The filesystem under the pool may have filled (or emptied) meanwhile. */
	if (store_fit(c->store, &e) < 0)
		imc_warn("%s", e.msg);
}

/* ---- expiry and eviction ----------------------------------------------------------------------
 */

/* Does a cache whose snapshot exists stand on base snapshot id (its manifest's base.snapshot)? */
static bool base_in_use_locked(struct api_caches *c, const char *id)
{
	for (size_t i = 0; i < c->n_items; i++) {
		const struct api_cache *cache = c->items[i];
		const char *base = json_string_value(
		    json_object_get(json_object_get(cache->manifest, "base"), "snapshot"));
		if ((cache->status == API_CACHE_READY || cache->status == API_CACHE_UPDATING) &&
		    base && strcmp(base, id) == 0)
			return true;
	}
	return false;
}

/* Remove the per-image base snapshots (img-…) that no cache stands on any more.  Not while a
 * build runs or waits: it may be about to clone one.  Under the table lock, so no build starts
 * meanwhile. */
void api_caches_drop_unused_bases(struct api_caches *c)
{
	char **ids = NULL;
	size_t n = 0;
	imc_error e = {0};
	bool busy = c->q_len > 0;

	for (unsigned w = 0; w < c->n_workers && !busy; w++)
		busy = c->building[w] != NULL;
	if (busy || store_list(c->store, STORE_SNAPSHOT, &ids, &n, &e) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		if (strncmp(ids[i], BUILDER_BASE_PREFIX, strlen(BUILDER_BASE_PREFIX)) != 0 ||
		    base_in_use_locked(c, ids[i]))
			continue;
		if (builder_base_forget(c->store, ids[i], &e) < 0)
			imc_warn("base snapshot %s: %s", ids[i], e.msg);
		else
			imc_info("base snapshot %s: no cache stands on it any more, removed",
				 ids[i]);
	}
	store_list_free(ids, n);
}

void api_caches_drop_unused_bases_now(struct api_caches *c)
{
	pthread_mutex_lock(&c->lock);
	api_caches_drop_unused_bases(c);
	pthread_mutex_unlock(&c->lock);
}

/* A cache's snapshot is gone: whoever holds what was made of it (imcd: its chunks) hears. */
void api_caches_snapshot_removed(struct api_caches *c, const char *id)
{
	if (c->on_snapshot_removed)
		c->on_snapshot_removed(c->snapshot_ctx, id);
}

int api_caches_remove_snapshot(struct api_caches *c, const char *id, bool force, imc_error *err)
{
	return c->remove_snapshot ? c->remove_snapshot(c->store, id, force, err)
				  : store_remove(c->store, STORE_SNAPSHOT, id, err);
}

/* Remove the snapshot of a cache already marked Deleting (by id: the cache stays in the table,
 * and nothing else touches a Deleting cache) and mark it Expired with why; false if it stays.
 * One in use on this host (EBUSY: overlay pods on its shared lower) counts as used now. */
static bool expire_one(struct api_caches *c, const char *id, const char *type, const char *why)
{
	struct api_cache *cache;
	imc_error e = {0};
	int r = api_caches_remove_snapshot(c, id, false, &e);

	pthread_mutex_lock(&c->lock);
	cache = api_caches_find_locked(c, id, NULL);
	if (cache && r < 0 && r != -ENOENT) {
		api_caches_set_status_locked(cache, cache->status_before);
		event_locked(cache, "ExpireFailed", "%s", e.msg);
		if (r == -EBUSY)
			cache->last_used_at = imc_now();
	} else if (cache) {
		api_caches_set_status_locked(cache, API_CACHE_EXPIRED);
		event_locked(cache, type, "%s", why);
	}
	pthread_mutex_unlock(&c->lock);
	if (cache && api_caches_persist_id(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	if (r == 0 || r == -ENOENT) {
		api_caches_snapshot_removed(c, id);
		api_caches_drop_unused_bases_now(c);
		api_caches_wake_space_pass(c);
	}
	if (r == 0 || r == -ENOENT) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s: %s", type, why);
		api_caches_notify(c, API_EVENT_EXPIRED, id, msg);
	}
	return r == 0 || r == -ENOENT;
}

static bool removable_locked(const struct api_cache *cache)
{
	return cache->status == API_CACHE_READY && cache->n_attachments == 0 &&
	       cache->retention_days > 0;
}

/* The first Ready, unattached, unpinned cache past its expiry, claimed (Deleting). */
static bool claim_expired(struct api_caches *c, int64_t now, char id[API_ID_MAX])
{
	bool found = false;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items && !found; i++) {
		struct api_cache *cache = c->items[i];
		int64_t exp = api_cache_expires_at(cache, c->day_seconds);

		if (!removable_locked(cache) || exp == 0 || now < exp)
			continue;
		cache->status_before = cache->status;
		api_caches_set_status_locked(cache, API_CACHE_DELETING);
		memcpy(id, cache->id, API_ID_MAX);
		found = true;
	}
	pthread_mutex_unlock(&c->lock);
	return found;
}

/* The least recently used Ready, unattached, unpinned cache, claimed (Deleting). */
static bool claim_lru(struct api_caches *c, char id[API_ID_MAX])
{
	struct api_cache *best = NULL;
	int64_t best_t = INT64_MAX;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items; i++) {
		struct api_cache *cache = c->items[i];
		int64_t t =
		    cache->last_used_at > cache->ready_at ? cache->last_used_at : cache->ready_at;

		if (removable_locked(cache) && t < best_t) {
			best = cache;
			best_t = t;
		}
	}
	if (best) {
		best->status_before = best->status;
		api_caches_set_status_locked(best, API_CACHE_DELETING);
		memcpy(id, best->id, API_ID_MAX);
	}
	pthread_mutex_unlock(&c->lock);
	return best != NULL;
}

static bool pool_above(struct api_caches *c, double mark, double *ret_ratio)
{
	struct store_usage u;
	imc_error e = {0};

	if (store_usage(c->store, &u, &e) < 0 || u.total == 0)
		return false;
	*ret_ratio = (double)u.used / (double)u.total;
	return *ret_ratio > mark;
}

/* One expiry and eviction pass (the sweeper thread runs it every sweep_interval_ms). */
static void api_caches_sweep(struct api_caches *c)
{
	char id[API_ID_MAX], why[128];
	double ratio = 0;

	while (claim_expired(c, imc_now(), id)) {
		if (!expire_one(c, id, "Expired", "retention ran out (not used for retentionDays)"))
			break; /* the next pass tries again (one in use counts as used now) */
		__atomic_add_fetch(&c->metrics.expirations, 1, __ATOMIC_RELAXED);
	}
	if (!pool_above(c, c->evict_high, &ratio))
		return;
	/* Above the high watermark: least recently used first, down to the low one. */
	do {
		if (!claim_lru(c, id))
			break;
		snprintf(why, sizeof(why),
			 "evicted: the pool was %.1f%% full (high watermark %.0f%%, low %.0f%%)",
			 ratio * 100, c->evict_high * 100, c->evict_low * 100);
		if (!expire_one(c, id, "Evicted", why))
			break; /* the next pass tries again, this one in use counted as used */
		__atomic_add_fetch(&c->metrics.evictions, 1, __ATOMIC_RELAXED);
	} while (pool_above(c, c->evict_low, &ratio));
}

/* Expiry, eviction, then space. */
static void sweep_all(struct api_caches *c)
{
	api_caches_sweep(c);
	space_pass(c);
}

void *api_caches_sweeper_main(void *arg)
{
	struct api_caches *c = arg;

	pthread_mutex_lock(&c->lock);
	while (!c->stopping) {
		struct timespec ts;

		/* While the metadata is full, its retries come every second at least. */
		unsigned ms = c->meta_full && c->sweep_ms > 1000 ? 1000 : c->sweep_ms;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += ms / 1000;
		ts.tv_nsec += (long)(ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (!c->space_due)
			pthread_cond_timedwait(&c->sweep_cond, &c->lock, &ts);
		if (c->stopping)
			break;
		pthread_mutex_unlock(&c->lock);
		sweep_all(c);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}
