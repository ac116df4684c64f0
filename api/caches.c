/* The cache table: metadata files, the build queue and its pool of worker threads, the
 * attachments imc-attach reports, and the sweeper that expires and evicts caches.
 *
 * One mutex guards the table and the queue; handlers only ever hold it to look at or change
 * memory, never across a build or a store call.  A Creating cache cannot be deleted, expired or
 * evicted, so a worker keeps a plain pointer to the cache it builds; a cache being deleted is
 * marked Deleting so that nothing else touches it until it leaves the table.
 *
 * Tenants: every cache records its owner; a cache of another tenant is answered exactly like
 * one that does not exist (404). */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "../builder/builder.h"
#include "../store/store.h"
#include "api.h"

#define INTERRUPTED_MSG "interrupted: imcd stopped during the build"
#define NOT_STARTED_MSG "interrupted: imcd stopped before the build started"
#define CREDS_LOST_MSG                                                                             \
	"credentials lost on restart: imcd stopped during a build that had "                       \
	"credentials, which are never written down; create the cache again"
#define WORKERS_MAX	    64
#define WORKERS_DEFAULT	    2
#define EVICT_HIGH_DEFAULT  0.90
#define EVICT_LOW_DEFAULT   0.80
#define SWEEP_MS_DEFAULT    60000u
#define DAY_SECONDS_DEFAULT 86400u
#define GRACE_MS_DEFAULT    30000u
#define CANCELLED_BY_SHUTDOWN_MSG                                                                  \
	"cancelled by shutdown: imcd stopped and the build did not end within its grace of %u s; " \
	"create the cache again"
#define CANCELLED_BY_DELETE_MSG "cancelled: the cache was deleted during its build"

struct api_caches {
	struct store *store;
	int meta_dirfd; /* <state>/caches */
	char *blob_dir; /* <state>/blobs */
	const char *const *insecure_registries;
	const char *hf_endpoint, *ca_file, *auth_file;
	const char *platform; /* images that name none (normalized) */
	struct net_client *registry_net, *data_net;
	uint64_t max_blob_size;
	void (*on_event)(void *ctx, enum api_event ev, const char *id, const char *message);
	void *event_ctx;
	void (*on_snapshot_removed)(void *ctx, const char *id);
	void *snapshot_ctx;
	int (*remove_snapshot)(struct store *s, const char *id, bool force, imc_error *err);
	struct dist_chunks *chunks; /* for api/dist.c only */
	const struct api_tenant_limits *limits;
	size_t n_limits;
	unsigned n_workers;
	unsigned grace_ms;   /* close: how long running builds get before they are cancelled */
	unsigned tenant_cap; /* builds one tenant may run at once (0: no cap) */
	double evict_high, evict_low;
	unsigned sweep_ms, day_seconds;
	uint64_t blob_max; /* the blob store's size cap; 0: none */

	pthread_mutex_t lock; /* items, n_items, queue, stopping, per-cache fields */
	pthread_cond_t cond;
	pthread_cond_t sweep_cond; /* wakes the sweeper early: stopping */
	struct api_cache **items;  /* sorted by api_cache_cmp */
	struct api_cache **by_id;  /* the same caches sorted by id: lookups in O(log n) */
	size_t n_items, cap_items;
	struct api_cache *queue[API_QUEUE_MAX]; /* ring of Creating caches waiting for a worker */
	size_t q_head, q_len;
	bool stopping;
	struct api_cache *building[WORKERS_MAX]; /* the builds running now (NULL: a free slot) */
	pthread_t workers[WORKERS_MAX];
	unsigned workers_started;
	pthread_t sweeper;
	bool sweeper_started;
	struct api_resolver *resolver; /* match=best's registry lookups */
	void (*on_snapshot_ready)(void *ctx, const char *id);
	struct dist_exporter *exporter; /* for api/dist.c only */
	unsigned resolve_timeout_ms;
	bool space_due; /* something went: the sweeper collects blobs (see space_changed_locked) */
	bool trim_due;	/* ... and trims the pool once things are quiet (see space_pass) */
	uint64_t last_change_ns; /* the last build end, removal or attachment report */

	pthread_mutex_t persist_lock; /* one metadata write at a time (shared tmp file names) */
	/* A metadata write failed for want of space (under lock): creates are refused (507), no
	 * build starts, /healthz is 503 with meta_reason, until the sweeper finds room again. */
	bool meta_full;
	char meta_reason[IMC_ERR_MSG];

	struct api_metrics metrics; /* atomics, no lock */
};

/* ---- table ------------------------------------------------------------------------------------
 */

/* The position of id in by_id, or where it would go. */
static size_t by_id_pos(const struct api_caches *c, const char *id, bool *ret_found)
{
	size_t lo = 0, hi = c->n_items;

	*ret_found = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int d = strcmp(c->by_id[mid]->id, id);

		if (d == 0) {
			*ret_found = true;
			return mid;
		}
		if (d < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The position of a cache of the table in items (sorted by api_cache_cmp). */
static size_t items_pos(const struct api_caches *c, const struct api_cache *cache)
{
	size_t lo = 0, hi = c->n_items;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (api_cache_cmp(c->items[mid], cache) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct api_cache *find_locked(struct api_caches *c, const char *id, size_t *ret_index)
{
	bool found;
	size_t pos = by_id_pos(c, id, &found);

	if (!found)
		return NULL;
	if (ret_index)
		*ret_index = items_pos(c, c->by_id[pos]);
	return c->by_id[pos];
}

static int grow_locked(struct api_caches *c, imc_error *err)
{
	size_t cap = c->cap_items ? c->cap_items * 2 : 64;
	struct api_cache **items = realloc(c->items, cap * sizeof(*items));
	struct api_cache **by_id;

	if (!items)
		return imc_err(err, ENOMEM, "out of memory");
	c->items = items;
	by_id = realloc(c->by_id, cap * sizeof(*by_id));
	if (!by_id)
		return imc_err(err, ENOMEM, "out of memory");
	c->by_id = by_id;
	c->cap_items = cap;
	return 0;
}

static int insert_locked(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	size_t pos = c->n_items, id_pos;
	bool found;

	if (c->n_items == c->cap_items && grow_locked(c, err) < 0)
		return -ENOMEM;
	/* New caches are nearly always the newest: walk back from the end. */
	while (pos > 0 && api_cache_cmp(c->items[pos - 1], cache) > 0)
		pos--;
	id_pos = by_id_pos(c, cache->id, &found);
	memmove(c->items + pos + 1, c->items + pos, (c->n_items - pos) * sizeof(*c->items));
	c->items[pos] = cache;
	memmove(c->by_id + id_pos + 1, c->by_id + id_pos,
		(c->n_items - id_pos) * sizeof(*c->by_id));
	c->by_id[id_pos] = cache;
	c->n_items++;
	cache->day_seconds = c->day_seconds;
	return 0;
}

static void remove_locked(struct api_caches *c, size_t index)
{
	bool found;
	size_t id_pos = by_id_pos(c, c->items[index]->id, &found);

	memmove(c->items + index, c->items + index + 1,
		(c->n_items - index - 1) * sizeof(*c->items));
	if (found)
		memmove(c->by_id + id_pos, c->by_id + id_pos + 1,
			(c->n_items - id_pos - 1) * sizeof(*c->by_id));
	c->n_items--;
}

static int cmp_items(const void *a, const void *b)
{
	return api_cache_cmp(*(struct api_cache *const *)a, *(struct api_cache *const *)b);
}

/* Every status change: the rendered API object of the cache is stale from here. */
static void set_status_locked(struct api_cache *cache, enum api_cache_status status)
{
	cache->status = status;
	api_cache_touch(cache);
}

/* ---- metadata files ---------------------------------------------------------------------------
 */

static void meta_name(const char *id, char *buf, size_t size)
{
	snprintf(buf, size, "%s.json", id);
}

static bool no_space(int r)
{
	return r == -ENOSPC || r == -EDQUOT;
}

static void set_meta_full(struct api_caches *c, const char *why)
{
	bool was;

	pthread_mutex_lock(&c->lock);
	was = c->meta_full;
	c->meta_full = true;
	snprintf(c->meta_reason, sizeof(c->meta_reason), "%s", why);
	pthread_mutex_unlock(&c->lock);
	if (!was)
		imc_error_log("metadata: %s: new caches are refused and builds wait until there is "
			      "room; changes not written are retried",
			      why);
}

/* Write one metadata file (under persist_lock).  Out of space, a status change goes through a
 * reserve file (api/meta_reserve.c) and reaches the disk anyway; anything else fails. */
static int meta_write(struct api_caches *c, const char *name, json_t *meta, bool status_change,
		      imc_error *err)
{
	imc_error e = {0};
	int r = imc_json_write_atomic(c->meta_dirfd, name, meta, &e);

	if (r == 0 || !no_space(r)) {
		if (r < 0 && err)
			*err = e;
		return r;
	}
	set_meta_full(c, e.msg);
	if (status_change && api_meta_reserve_write(c->meta_dirfd, name, meta, NULL) == 0) {
		imc_warn(
		    "metadata %s: out of space, the status change was written through a reserve "
		    "file",
		    name);
		return 0;
	}
	if (err)
		*err = e;
	return r;
}

/* Write the metadata of an already serialised cache (a new one). */
static int persist_meta(struct api_caches *c, const char *id, json_t *meta, imc_error *err)
{
	char name[API_ID_MAX + 8];
	int r;

	if (!meta)
		return imc_err(err, ENOMEM, "cache %s: out of memory", id);
	meta_name(id, name, sizeof(name));
	pthread_mutex_lock(&c->persist_lock);
	r = meta_write(c, name, meta, false, err);
	pthread_mutex_unlock(&c->persist_lock);
	return r < 0 ? imc_err_wrap(err, "cache %s: metadata", id) : 0;
}

/* After a write of cache id holding status: on disk now, or still to be written. */
static void persisted(struct api_caches *c, const char *id, enum api_cache_status status,
		      bool written)
{
	struct api_cache *cache;

	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, NULL);
	if (cache && written)
		cache->persisted_status = status;
	if (cache)
		cache->meta_dirty = !written;
	pthread_mutex_unlock(&c->lock);
}

/* Persist a cache by id, for a caller that no longer holds the lock: a cache deleted meanwhile
 * is not written back (persist_lock orders this against unlink_meta).  A write that fails
 * leaves the cache marked dirty: the sweeper writes it once there is room. */
static int persist_id(struct api_caches *c, const char *id, imc_error *err)
{
	_cleanup_json_ json_t *meta = NULL;
	enum api_cache_status status = API_CACHE_CREATING;
	char name[API_ID_MAX + 8];
	struct api_cache *cache;
	bool change = false;
	int r = 0;

	meta_name(id, name, sizeof(name));
	pthread_mutex_lock(&c->persist_lock);
	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, NULL);
	if (cache) {
		meta = api_cache_to_meta(cache);
		status = cache->status;
		change = status != cache->persisted_status;
	}
	pthread_mutex_unlock(&c->lock);
	if (cache && !meta)
		r = imc_err(err, ENOMEM, "cache %s: out of memory", id);
	else if (cache)
		r = meta_write(c, name, meta, change, err);
	if (cache)
		persisted(c, id, status, r == 0);
	pthread_mutex_unlock(&c->persist_lock);
	return r < 0 ? imc_err_wrap(err, "cache %s: metadata", id) : 0;
}

/* The same for a cache of the table. */
static int persist(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	char id[API_ID_MAX];

	pthread_mutex_lock(&c->lock);
	memcpy(id, cache->id, sizeof(id));
	pthread_mutex_unlock(&c->lock);
	return persist_id(c, id, err);
}

static int unlink_meta(struct api_caches *c, const char *id, imc_error *err)
{
	char name[API_ID_MAX + 8];
	int r = 0;

	meta_name(id, name, sizeof(name));
	pthread_mutex_lock(&c->persist_lock);
	if (unlinkat(c->meta_dirfd, name, 0) < 0 && errno != ENOENT)
		r = imc_err_sys(err, errno, "cache %s: remove metadata %s", id, name);
	pthread_mutex_unlock(&c->persist_lock);
	return r;
}

/* ---- loading and repair -----------------------------------------------------------------------
 */

static bool is_meta_name(const char *name, char id[API_ID_MAX])
{
	size_t n = strlen(name);

	if (n < 6 || n - 5 >= API_ID_MAX || strcmp(name + n - 5, ".json") != 0)
		return false;
	memcpy(id, name, n - 5);
	id[n - 5] = '\0';
	return api_cache_id_valid(id);
}

static int load_one(struct api_caches *c, const char *file, const char *id, json_t *repairs,
		    imc_error *err)
{
	_cleanup_json_ json_t *meta = NULL;
	struct api_cache *cache = NULL;
	imc_error e = {0};

	if (imc_json_read_file(c->meta_dirfd, file, API_META_MAX, &meta, &e) < 0) {
		imc_repair_report(repairs, "caches/%s; ignored", e.msg); /* e names the file */
		return 0;
	}
	if (api_cache_from_meta(meta, &cache, &e) < 0) {
		imc_repair_report(repairs, "caches/%s: %s; ignored", file, e.msg);
		return 0;
	}
	if (strcmp(cache->id, id) != 0) {
		imc_repair_report(repairs, "caches/%s: holds cache %s; ignored", file, cache->id);
		api_cache_free(cache);
		return 0;
	}
	cache->persisted_status = cache->status;
	if (insert_locked(c, cache, err) < 0) {
		api_cache_free(cache);
		return err ? err->code : -ENOMEM;
	}
	return 0;
}

static int load_all(struct api_caches *c, json_t *repairs, imc_error *err)
{
	int dfd = fcntl(c->meta_dirfd, F_DUPFD_CLOEXEC, 3);
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	char id[API_ID_MAX];

	if (dfd < 0)
		return imc_err_sys(err, errno, "caches directory");
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return imc_err_sys(err, errno, "caches directory");
	}
	while ((errno = 0, de = readdir(d))) {
		if (de->d_name[0] == '.' && strstr(de->d_name, ".tmp.")) {
			/* A metadata write that a crash cut short; the old file is intact. */
			unlinkat(c->meta_dirfd, de->d_name, 0);
			imc_repair_report(repairs, "caches/%s: removed a partial metadata write",
					  de->d_name);
			continue;
		}
		if (!is_meta_name(de->d_name, id))
			continue;
		if (c->n_items >= API_MAX_CACHES)
			return imc_err(err, EDQUOT, "caches directory: more than %d caches",
				       API_MAX_CACHES);
		int r = load_one(c, de->d_name, id, repairs, err);
		if (r < 0)
			return r;
	}
	if (errno != 0)
		return imc_err_sys(err, errno, "caches directory: readdir");
	if (c->n_items > 1)
		qsort(c->items, c->n_items, sizeof(*c->items), cmp_items);
	return 0;
}

static void remove_leftover(struct api_caches *c, enum store_kind kind, const char *id,
			    json_t *repairs)
{
	imc_error e = {0};
	int r = store_remove(c->store, kind, id, &e);

	if (r == 0)
		imc_repair_report(repairs, "cache %s: removed the leftover %s", id,
				  store_kind_name(kind));
	else if (r != -ENOENT)
		imc_repair_report(repairs, "cache %s: cannot remove the leftover %s: %s", id,
				  store_kind_name(kind), e.msg);
}

/* ---- events -----------------------------------------------------------------------------------
 */

static void notify(struct api_caches *c, enum api_event ev, const char *id, const char *msg)
{
	if (c->on_event)
		c->on_event(c->event_ctx, ev, id, msg);
}

/* Record an event in a cache's history (under the lock); an OOM loses the event only. */
#define event_locked(cache, type, ...) api_cache_add_event((cache), imc_now(), (type), __VA_ARGS__)

/* ---- repair on start --------------------------------------------------------------------------
 */

static int queue_push_locked(struct api_caches *c, struct api_cache *cache)
{
	if (c->q_len >= API_QUEUE_MAX)
		return -EDQUOT;
	c->queue[(c->q_head + c->q_len) % API_QUEUE_MAX] = cache;
	c->q_len++;
	pthread_cond_signal(&c->cond);
	return 0;
}

/* A build that imcd did not see finish: whatever it left in the store goes.  Without
 * credentials it is built again from the start (queued); with credentials, which were never
 * written down, it cannot be, and is marked Failed with the reason. */
static int repair_interrupted(struct api_caches *c, struct api_cache *cache, json_t *repairs,
			      imc_error *err)
{
	imc_error e = {0};

	remove_leftover(c, STORE_VOLUME, cache->id, repairs);
	remove_leftover(c, STORE_SNAPSHOT, cache->id, repairs);
	if (!cache->had_credentials && queue_push_locked(c, cache) == 0) {
		event_locked(cache, "Resumed", "imcd restarted: the build starts again");
		if (persist(c, cache, &e) < 0)
			imc_repair_report(repairs, "%s", e.msg);
		imc_repair_report(repairs,
				  "cache %s: was Creating when imcd stopped; build queued again",
				  cache->id);
		return 0;
	}
	if (api_cache_set_failed(cache,
				 cache->had_credentials ? CREDS_LOST_MSG
							: INTERRUPTED_MSG " (build queue full)",
				 err) < 0)
		return err ? err->code : -ENOMEM;
	event_locked(cache, "Failed", "%s", cache->status_message);
	if (persist(c, cache, &e) < 0)
		imc_repair_report(repairs, "%s", e.msg);
	imc_repair_report(repairs, "cache %s: was Creating when imcd stopped; marked Failed: %s",
			  cache->id, cache->status_message);
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
	event_locked(cache, "Failed", "snapshot missing from the store (found on restart)");
	if (persist(c, cache, &e) < 0)
		imc_repair_report(repairs, "%s", e.msg);
	imc_repair_report(repairs, "cache %s: was Ready but its snapshot is gone; marked Failed",
			  cache->id);
	return 0;
}

/* A delete or expiry that a crash cut short: finish it. */
static void repair_deleting(struct api_caches *c, struct api_cache *cache, json_t *repairs)
{
	imc_error e = {0};

	remove_leftover(c, STORE_SNAPSHOT, cache->id, repairs);
	remove_leftover(c, STORE_VOLUME, cache->id, repairs); /* a delete that cancelled a build */
	set_status_locked(cache, API_CACHE_EXPIRED);
	event_locked(cache, "Expired", "a removal cut short by a restart was finished");
	if (persist(c, cache, &e) < 0)
		imc_repair_report(repairs, "%s", e.msg);
	imc_repair_report(repairs,
			  "cache %s: was Deleting when imcd stopped; snapshot removed, Expired",
			  cache->id);
}

/* Partial blob downloads that a killed imcd left under temporary names (those a live process
 * holds stay).  The chunk store's are imcd's to remove: it opens that store. */
static void repair_partial_blobs(struct api_caches *c, json_t *repairs)
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
static int repair_all(struct api_caches *c, json_t *repairs, imc_error *err)
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

/* ---- space --------------------------------------------------------------------------------------
 * What a build or a removal leaves that nothing needs goes on the sweeper thread, never in a
 * request handler: the blob store's collection lists a directory. */

/* A build ended or a cache went: wake the sweeper for a space pass now. */
static void space_changed_locked(struct api_caches *c)
{
	c->space_due = true;
	c->trim_due = true;
	c->last_change_ns = imc_monotonic_ns();
	pthread_cond_signal(&c->sweep_cond);
}

static void space_changed(struct api_caches *c)
{
	pthread_mutex_lock(&c->lock);
	space_changed_locked(c);
	pthread_mutex_unlock(&c->lock);
}

void api_caches_space_changed(void *ctx, const char *id)
{
	(void)id;
	if (ctx)
		space_changed(ctx);
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
static bool meta_room(struct api_caches *c)
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
		if (persist_id(c, ids[i], &e) == 0)
			imc_info("cache %s: metadata written (it could not be for want of space)",
				 ids[i]);
	}
	if (!meta_room(c))
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

/* ---- the build workers ------------------------------------------------------------------------
 */

struct progress_ctx {
	struct api_caches *caches;
	struct api_cache *cache;
};

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct progress_ctx *p = ctx;

	pthread_mutex_lock(&p->caches->lock);
	/* done grows through one image's fetch and starts again with the next image (or drops
	 * when a download is retried): count only its increases. */
	if (done > p->cache->progress_done)
		api_metrics_add_pull_bytes(&p->caches->metrics, done - p->cache->progress_done);
	p->cache->progress_done = done;
	p->cache->progress_total = total;
	api_cache_touch(p->cache);
	pthread_mutex_unlock(&p->caches->lock);
}

static void ready_message(json_t *manifest, uint64_t size, char *msg, size_t n)
{
	json_t *base = json_object_get(manifest, "base");

	if (json_is_true(json_object_get(base, "reused")))
		snprintf(msg, n,
			 "Ready (%llu bytes; on base %s: %lld layer bytes neither fetched "
			 "nor applied, %.1f s saved)",
			 (unsigned long long)size,
			 json_string_value(json_object_get(base, "snapshot")),
			 (long long)json_integer_value(json_object_get(base, "layerBytes")),
			 json_number_value(json_object_get(base, "savedSeconds")));
	else
		snprintf(msg, n, "Ready (%llu bytes)", (unsigned long long)size);
}

static bool drop_cancelled(struct api_caches *c, struct api_cache *cache);
static const char *shutdown_message(const struct api_caches *c, char *msg, size_t n);

/* Record the outcome of a build in memory (under the lock) and on disk, unless a DELETE
 * cancelled it (decided under the lock, so a DELETE sees either Creating and cancels, or the
 * outcome): then the cache goes, and true is returned (it is freed). */
static bool finish_build(struct api_caches *c, struct api_cache *cache, json_t *manifest,
			 int build_r, const char *build_msg, uint64_t start_ns)
{
	struct store_object_info info = {0};
	char msg[IMC_ERR_MSG + 64], why[256];
	imc_error e = {0};

	if (build_r == 0 && store_stat(c->store, STORE_SNAPSHOT, cache->id, &info, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg); /* size unknown: 0 */
	char id[API_ID_MAX];

	memcpy(id, cache->id, sizeof(id));
	if (build_r == 0)
		ready_message(manifest, info.size, msg, sizeof(msg));
	pthread_mutex_lock(&c->lock);
	if (cache->cancel == API_CANCEL_DELETE) {
		pthread_mutex_unlock(&c->lock);
		return drop_cancelled(c, cache);
	}
	if (cache->cancel == API_CANCEL_SHUTDOWN && build_r < 0)
		build_msg = shutdown_message(c, why, sizeof(why));
	if (build_r == 0) {
		set_status_locked(cache, API_CACHE_READY);
		cache->manifest = json_incref(manifest);
		cache->size = info.size;
		cache->ready_at = imc_now();
		api_cache_touch(cache);
		event_locked(cache, "Ready", "%s", msg);
	} else {
		if (api_cache_set_failed(cache, build_msg, NULL) < 0)
			set_status_locked(cache, API_CACHE_FAILED); /* no memory for the message */
		event_locked(cache, "Failed", "%s", build_msg);
	}
	pthread_mutex_unlock(&c->lock);
	api_metrics_observe_build(&c->metrics, build_r == 0, imc_monotonic_ns() - start_ns);
	__atomic_sub_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	/* Once unlocked the cache may be deleted: only its id is used from here on. */
	if (persist_id(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	if (build_r == 0 && c->on_snapshot_ready)
		c->on_snapshot_ready(c->snapshot_ctx, id);
	if (build_r == 0)
		notify(c, API_EVENT_BUILD_READY, id, msg);
	else
		notify(c, API_EVENT_BUILD_FAILED, id, build_msg);
	return false;
}

/* The request's data and credentials in the builder's shape (pointing into cache, which does
 * not change while it builds). */
struct build_args {
	struct builder_data data[API_DATA_MAX];
	struct oci_credential creds[API_CREDS_MAX];
};

static void build_args_fill(struct build_args *a, const struct api_cache *cache,
			    struct builder_request *breq, struct builder_opts *opts)
{
	size_t n_data = cache->n_data < API_DATA_MAX ? cache->n_data : API_DATA_MAX;
	size_t n_creds =
	    cache->n_credentials < API_CREDS_MAX ? cache->n_credentials : API_CREDS_MAX;

	for (size_t i = 0; i < n_data; i++)
		a->data[i] = (struct builder_data){.source = cache->data[i].source,
						   .path = cache->data[i].path,
						   .sha256 = cache->data[i].sha256};
	for (size_t i = 0; i < n_creds; i++)
		a->creds[i] = (struct oci_credential){.registry = cache->credentials[i].registry,
						      .username = cache->credentials[i].username,
						      .password = cache->credentials[i].password,
						      .token = cache->credentials[i].token};
	breq->data = a->data;
	breq->n_data = n_data;
	breq->size = cache->request_size;
	opts->credentials = n_creds ? a->creds : NULL;
	opts->n_credentials = n_creds;
}

/* The build is over: the credentials go (wiped). */
static void drop_credentials(struct api_caches *c, struct api_cache *cache)
{
	struct api_credential *creds;
	size_t n;

	pthread_mutex_lock(&c->lock);
	creds = steal_pointer(&cache->credentials);
	n = cache->n_credentials;
	cache->n_credentials = 0;
	pthread_mutex_unlock(&c->lock);
	api_credentials_free(creds, n);
}

/* builder_opts.cancelled of a build: its cache was deleted, or imcd stops past its grace. */
static bool build_cancelled(void *ctx)
{
	const struct api_cache *cache = ctx;

	return __atomic_load_n(&cache->cancel, __ATOMIC_RELAXED) != API_CANCEL_NONE;
}

/* A build cancelled by a DELETE has ended: whatever it left in the store goes, and so does the
 * cache (table, metadata).  The cache is freed: the caller must not touch it again. */
static bool drop_cancelled(struct api_caches *c, struct api_cache *cache)
{
	char id[API_ID_MAX];
	imc_error e = {0};
	size_t index = 0;

	memcpy(id, cache->id, sizeof(id));
	if (store_remove(c->store, STORE_SNAPSHOT, id, &e) < 0 && e.code != -ENOENT)
		imc_warn("cache %s: %s", id, e.msg);
	if (store_remove(c->store, STORE_VOLUME, id, &e) < 0 && e.code != -ENOENT)
		imc_warn("cache %s: %s", id, e.msg);
	pthread_mutex_lock(&c->lock);
	if (find_locked(c, id, &index) == cache)
		remove_locked(c, index);
	pthread_mutex_unlock(&c->lock);
	__atomic_sub_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	if (unlink_meta(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	notify(c, API_EVENT_BUILD_FAILED, id, CANCELLED_BY_DELETE_MSG);
	api_cache_free(cache);
	return true;
}

/* The message a build stopped by a shutdown ends Failed with (msg holds it). */
static const char *shutdown_message(const struct api_caches *c, char *msg, size_t n)
{
	snprintf(msg, n, CANCELLED_BY_SHUTDOWN_MSG, (c->grace_ms + 999) / 1000);
	return msg;
}

static int reserve_size(void *ctx, uint64_t size, imc_error *err);

static bool build_one(struct api_caches *c, struct api_cache *cache)
{
	struct progress_ctx pctx = {.caches = c, .cache = cache};
	struct builder_request breq = {0};
	struct builder_opts opts = {
	    .blob_dir = c->blob_dir,
	    .insecure_registries = c->insecure_registries,
	    .hf_endpoint = c->hf_endpoint,
	    .ca_file = c->ca_file,
	    .auth_file = c->auth_file,
	    .platform = c->platform,
	    .registry_net = c->registry_net,
	    .data_net = c->data_net,
	    .blob_max = c->max_blob_size,
	    .tenant = cache->tenant ? cache->tenant : API_TENANT_DEFAULT,
	    .progress = on_progress,
	    .progress_ctx = &pctx,
	    .cancelled = build_cancelled,
	    .cancel_ctx = cache,
	    .on_size = reserve_size,
	    .size_ctx = &pctx,
	};
	struct build_args args;
	_cleanup_json_ json_t *manifest = NULL;
	imc_error e = {0};
	char what[API_REF_MAX + 32];
	uint64_t start_ns = imc_monotonic_ns();
	int r;

	/* refs never change after creation, so reading them without the lock is safe. */
	if (cache->n_refs > 1)
		snprintf(what, sizeof(what), "%s (+%zu more images)", cache->refs[0],
			 cache->n_refs - 1);
	else
		snprintf(what, sizeof(what), "%s", cache->n_refs ? cache->refs[0] : "(no image)");
	__atomic_add_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&c->lock);
	event_locked(cache, "BuildStarted", "%s", what);
	pthread_mutex_unlock(&c->lock);
	notify(c, API_EVENT_BUILD_START, cache->id, what);
	breq.refs = (const char *const *)cache->refs;
	breq.platforms = (const char *const *)cache->platforms;
	breq.n_refs = cache->n_refs;
	build_args_fill(&args, cache, &breq, &opts);
	r = builder_build(c->store, &opts, cache->id, &breq, &manifest, &e);
	explicit_bzero(&args, sizeof(args));
	drop_credentials(c, cache);
	if (r == 0 && !manifest)
		r = imc_err(&e, EIO, "builder returned no manifest");
	if (r < 0 && !e.msg[0])
		imc_err(&e, r, "build failed (no reason given)");
	return finish_build(c, cache, manifest, r, e.msg, start_ns);
}

/* Take the queued cache api_queue_pick chooses (no image shared with a running build, its
 * tenant under its cap, the least busy tenant first, then queue order), or NULL. */
static struct api_cache *take_next_locked(struct api_caches *c)
{
	struct api_cache *queued[API_QUEUE_MAX];
	ssize_t pick;

	if (c->meta_full)
		return NULL; /* its outcome could not be written down: it waits for room */
	for (size_t n = 0; n < c->q_len; n++)
		queued[n] = c->queue[(c->q_head + n) % API_QUEUE_MAX];
	pick = api_queue_pick(queued, c->q_len, c->building, c->n_workers, c->tenant_cap);
	if (pick < 0)
		return NULL;
	/* Close the gap: shift the entries before it one place towards the tail. */
	for (size_t n = (size_t)pick; n > 0; n--) {
		size_t prev = (c->q_head + n - 1) % API_QUEUE_MAX;
		c->queue[(c->q_head + n) % API_QUEUE_MAX] = c->queue[prev];
	}
	c->q_head = (c->q_head + 1) % API_QUEUE_MAX;
	c->q_len--;
	return queued[pick];
}

struct worker {
	struct api_caches *caches;
	unsigned slot;
};

static void drop_unused_bases(struct api_caches *c);

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct api_caches *c = w->caches;
	unsigned slot = w->slot;

	free(w);
	for (;;) {
		struct api_cache *cache = NULL;

		pthread_mutex_lock(&c->lock);
		while (!c->stopping && !(cache = take_next_locked(c)))
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->stopping) { /* cache is NULL: nothing was taken */
			pthread_mutex_unlock(&c->lock);
			return NULL;
		}
		c->building[slot] = cache;
		pthread_mutex_unlock(&c->lock);
		bool dropped = build_one(c, cache);
		pthread_mutex_lock(&c->lock);
		c->building[slot] = NULL;
		pthread_cond_broadcast(&c->cond); /* a build waiting for this image may start */
		if (dropped) /* a base the cancelled build made may now stand alone */
			drop_unused_bases(c);
		space_changed_locked(c); /* its blobs are needed no more, or less */
		pthread_mutex_unlock(&c->lock);
	}
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
static void drop_unused_bases(struct api_caches *c)
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

static void drop_unused_bases_now(struct api_caches *c)
{
	pthread_mutex_lock(&c->lock);
	drop_unused_bases(c);
	pthread_mutex_unlock(&c->lock);
}

/* A cache's snapshot is gone: whoever holds what was made of it (imcd: its chunks) hears. */
static void snapshot_removed(struct api_caches *c, const char *id)
{
	if (c->on_snapshot_removed)
		c->on_snapshot_removed(c->snapshot_ctx, id);
}

static int remove_snapshot(struct api_caches *c, const char *id, bool force, imc_error *err)
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
	int r = remove_snapshot(c, id, false, &e);

	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, NULL);
	if (cache && r < 0 && r != -ENOENT) {
		set_status_locked(cache, cache->status_before);
		event_locked(cache, "ExpireFailed", "%s", e.msg);
		if (r == -EBUSY)
			cache->last_used_at = imc_now();
	} else if (cache) {
		set_status_locked(cache, API_CACHE_EXPIRED);
		event_locked(cache, type, "%s", why);
	}
	pthread_mutex_unlock(&c->lock);
	if (cache && persist_id(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	if (r == 0 || r == -ENOENT) {
		snapshot_removed(c, id);
		drop_unused_bases_now(c);
		space_changed(c);
	}
	if (r == 0 || r == -ENOENT) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s: %s", type, why);
		notify(c, API_EVENT_EXPIRED, id, msg);
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
		set_status_locked(cache, API_CACHE_DELETING);
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
		set_status_locked(best, API_CACHE_DELETING);
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

static void *sweeper_main(void *arg)
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

/* ---- open and close ---------------------------------------------------------------------------
 */

static int open_dirs(struct api_caches *c, const char *state_dir, imc_error *err)
{
	_cleanup_free_ char *meta_dir = imc_path_join(state_dir, "caches");
	int r;

	c->blob_dir = oci_blob_dir(state_dir);
	if (!meta_dir || !c->blob_dir)
		return imc_err(err, ENOMEM, "out of memory");
	r = imc_mkdir_p(meta_dir, 0700, err);
	if (r == 0)
		r = imc_mkdir_p(c->blob_dir, 0700, err);
	if (r < 0)
		return r;
	c->meta_dirfd = open(meta_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->meta_dirfd < 0)
		return imc_err_sys(err, errno, "%s", meta_dir);
	return 0;
}

/* The metadata's reserve files; without room for them (and as much again) imcd starts as if a
 * write had failed. */
static void open_reserve(struct api_caches *c, json_t *repairs)
{
	imc_error e = {0};

	if (meta_room(c))
		return;
	if (api_meta_reserve_fill(c->meta_dirfd, &e) == 0)
		imc_err(&e, ENOSPC, "caches/: less than %u bytes free",
			2 * API_META_RESERVE_SLOTS * API_META_RESERVE_SLOT);
	imc_repair_report(repairs, "%s", e.msg);
	c->meta_full = true;
	snprintf(c->meta_reason, sizeof(c->meta_reason), "%s", e.msg);
}

static void free_caches(struct api_caches *c)
{
	for (size_t i = 0; i < c->n_items; i++)
		api_cache_free(c->items[i]);
	free(c->items);
	free(c->by_id);
	free(c->blob_dir);
	if (c->meta_dirfd >= 0)
		close(c->meta_dirfd);
	pthread_cond_destroy(&c->cond);
	pthread_cond_destroy(&c->sweep_cond);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->persist_lock);
	free(c);
}

/* A knob: the config's value when set and in range, else the default.  Library code reads no
 * environment: imcd's main parses flags (and, in test builds, test knobs) into the config. */
static double knob(double cfg, double dflt, double min, double max)
{
	return cfg > 0 && cfg >= min && cfg <= max ? cfg : dflt;
}

/* Builds one tenant may run at once: as configured (at most the workers), else, where several
 * tenants share imcd, all workers but one (which stays for the other tenants). */
static unsigned tenant_cap_of(const struct api_caches_config *cfg, unsigned workers)
{
	if (cfg->tenant_builds)
		return cfg->tenant_builds < workers ? cfg->tenant_builds : workers;
	return cfg->multi_tenant && workers > 1 ? workers - 1 : workers;
}

static void configure(struct api_caches *c, const struct api_caches_config *cfg)
{
	c->store = cfg->store;
	c->insecure_registries = cfg->insecure_registries;
	c->hf_endpoint = cfg->hf_endpoint;
	c->ca_file = cfg->ca_file;
	c->auth_file = cfg->auth_file;
	c->platform = cfg->platform ? cfg->platform : OCI_DEFAULT_PLATFORM;
	c->registry_net = cfg->registry_net;
	c->data_net = cfg->data_net;
	c->max_blob_size = cfg->max_blob_size;
	c->on_event = cfg->on_event;
	c->event_ctx = cfg->event_ctx;
	c->on_snapshot_removed = cfg->on_snapshot_removed;
	c->snapshot_ctx = cfg->snapshot_ctx;
	c->remove_snapshot = cfg->remove_snapshot;
	c->on_snapshot_ready = cfg->on_snapshot_ready;
	c->chunks = cfg->chunks;
	c->exporter = cfg->exporter;
	c->limits = cfg->limits;
	c->n_limits = cfg->n_limits;
	c->n_workers = (unsigned)knob(cfg->build_workers, WORKERS_DEFAULT, 1, WORKERS_MAX);
	c->evict_high = knob(cfg->evict_high, EVICT_HIGH_DEFAULT, 0, 1);
	c->evict_low = knob(cfg->evict_low, EVICT_LOW_DEFAULT, 0, 1);
	if (c->evict_low > c->evict_high)
		c->evict_low = c->evict_high;
	c->sweep_ms = (unsigned)knob(cfg->sweep_interval_ms, SWEEP_MS_DEFAULT, 10, 86400000);
	c->day_seconds =
	    (unsigned)knob(cfg->day_seconds, DAY_SECONDS_DEFAULT, 1, DAY_SECONDS_DEFAULT);
	c->resolve_timeout_ms = cfg->resolve_timeout_ms;
	c->grace_ms = cfg->shutdown_grace_ms ? cfg->shutdown_grace_ms : GRACE_MS_DEFAULT;
	c->tenant_cap = tenant_cap_of(cfg, c->n_workers);
	c->blob_max = cfg->blob_cache_max;
}

static int start_resolver(struct api_caches *c, imc_error *err)
{
	const struct api_resolver_config rcfg = {
	    .opts = {.blob_dir = c->blob_dir,
		     .insecure_registries = c->insecure_registries,
		     .ca_file = c->ca_file,
		     .auth_file = c->auth_file,
		     .registry_net = c->registry_net,
		     .blob_max = c->max_blob_size},
	    .timeout_ms = c->resolve_timeout_ms,
	};

	return api_resolver_start(&rcfg, &c->resolver, err);
}

static int start_threads(struct api_caches *c, imc_error *err)
{
	int r;

	for (; c->workers_started < c->n_workers; c->workers_started++) {
		struct worker *w = malloc(sizeof(*w));

		if (!w)
			return imc_err(err, ENOMEM, "out of memory");
		*w = (struct worker){.caches = c, .slot = c->workers_started};
		r = -pthread_create(&c->workers[c->workers_started], NULL, worker_main, w);
		if (r < 0) {
			free(w);
			return imc_err_sys(err, -r, "build worker thread");
		}
	}
	r = -pthread_create(&c->sweeper, NULL, sweeper_main, c);
	if (r < 0)
		return imc_err_sys(err, -r, "sweeper thread");
	c->sweeper_started = true;
	return start_resolver(c, err);
}

static bool any_building_locked(const struct api_caches *c)
{
	for (unsigned w = 0; w < c->n_workers; w++)
		if (c->building[w])
			return true;
	return false;
}

/* Give the running builds grace_ms to end, then cancel them (they stop within about a second:
 * every transfer polls the flag).  Under the lock; stopping is set. */
static void cancel_builds_after_grace_locked(struct api_caches *c)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += c->grace_ms / 1000;
	ts.tv_nsec += (long)(c->grace_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (any_building_locked(c) && pthread_cond_timedwait(&c->cond, &c->lock, &ts) == 0)
		;
	for (unsigned w = 0; w < c->n_workers; w++) {
		struct api_cache *cache = c->building[w];
		int none = API_CANCEL_NONE;

		if (cache &&
		    __atomic_compare_exchange_n(&cache->cancel, &none, API_CANCEL_SHUTDOWN, false,
						__ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
			event_locked(cache, "Cancelled", "imcd stops: the build is cancelled");
			imc_warn("cache %s: the build did not end within %u ms of the shutdown; "
				 "cancelled",
				 cache->id, c->grace_ms);
		}
	}
}

static void stop_threads(struct api_caches *c)
{
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->cond);
	pthread_cond_broadcast(&c->sweep_cond);
	if (c->workers_started)
		cancel_builds_after_grace_locked(c);
	pthread_mutex_unlock(&c->lock);
	for (unsigned i = 0; i < c->workers_started; i++)
		pthread_join(c->workers[i], NULL);
	if (c->sweeper_started)
		pthread_join(c->sweeper, NULL);
	api_resolver_stop(c->resolver);
	c->resolver = NULL;
}

int api_caches_open(const struct api_caches_config *cfg, json_t *ret_repairs,
		    struct api_caches **ret, imc_error *err)
{
	struct api_caches *c = calloc(1, sizeof(*c));
	pthread_condattr_t attr;
	int r;

	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	c->meta_dirfd = -1;
	configure(c, cfg);
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->persist_lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&c->sweep_cond, &attr);
	pthread_condattr_destroy(&attr);
	r = open_dirs(c, cfg->state_dir, err);
	if (r == 0)
		builder_recover(c->store, cfg->state_dir, ret_repairs);
	if (r == 0)
		repair_partial_blobs(c, ret_repairs);
	if (r == 0)
		open_reserve(c, ret_repairs);
	if (r == 0)
		r = load_all(c, ret_repairs, err);
	if (r == 0)
		r = repair_all(c, ret_repairs, err);
	/* What a crash or the repairs freed: trimmed once the first sweep interval is quiet. */
	c->trim_due = true;
	c->last_change_ns = imc_monotonic_ns();
	if (r == 0)
		r = start_threads(c, err);
	if (r < 0) {
		stop_threads(c);
		free_caches(c);
		return r;
	}
	*ret = c;
	return 0;
}

struct dist_chunks *api_caches_chunks(struct api_caches *c)
{
	return c ? c->chunks : NULL;
}

struct dist_exporter *api_caches_exporter(struct api_caches *c)
{
	return c ? c->exporter : NULL;
}

void api_caches_close(struct api_caches *c)
{
	imc_error e = {0};

	if (!c)
		return;
	stop_threads(c);
	/* The workers are gone after their running builds: what is still queued never started.
	 * It stays Creating on disk, and the next start builds it (or fails it, when it had
	 * credentials). */
	for (; c->q_len > 0; c->q_len--, c->q_head = (c->q_head + 1) % API_QUEUE_MAX) {
		struct api_cache *cache = c->queue[c->q_head];

		event_locked(cache, "Interrupted",
			     cache->had_credentials ? "imcd stopped before the build started; "
						      "its credentials are not kept"
						    : "imcd stopped before the build started; "
						      "it resumes when imcd starts again");
		if (persist(c, cache, &e) < 0)
			notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg);
	}
	free_caches(c);
}

/* ---- requests ---------------------------------------------------------------------------------
 */

static const char *tenant_of(const struct api_caller *who)
{
	return who && who->tenant ? who->tenant : API_TENANT_DEFAULT;
}

static bool owns(const struct api_cache *cache, const char *tenant)
{
	return strcmp(cache->tenant ? cache->tenant : API_TENANT_DEFAULT, tenant) == 0;
}

int api_caches_ready_ids(struct api_caches *c, const char *tenant, char (**ret)[API_ID_MAX],
			 size_t *ret_n, imc_error *err)
{
	char(*ids)[API_ID_MAX];
	size_t n = 0;

	pthread_mutex_lock(&c->lock);
	ids = calloc(c->n_items + 1, sizeof(*ids));
	for (size_t k = 0; ids && k < c->n_items; k++) {
		const struct api_cache *x = c->items[k];
		if ((x->status == API_CACHE_READY || x->status == API_CACHE_UPDATING) &&
		    owns(x, tenant))
			memcpy(ids[n++], x->id, API_ID_MAX);
	}
	pthread_mutex_unlock(&c->lock);
	if (!ids)
		return imc_err(err, ENOMEM, "out of memory");
	*ret = ids;
	*ret_n = n;
	return 0;
}

/* A cache the caller may see; another tenant's is as absent as a missing one. */
static struct api_cache *find_visible_locked(struct api_caches *c, const char *tenant,
					     const char *id, size_t *ret_index)
{
	struct api_cache *cache = find_locked(c, id, ret_index);

	return cache && owns(cache, tenant) ? cache : NULL;
}

static int not_found(imc_error *err, const char *id)
{
	return imc_err(err, ENOENT, "cache %s: not found", id);
}

/* Is there room for one more cache and build?  Under the lock. */
static int check_room_locked(struct api_caches *c, imc_error *err)
{
	if (c->stopping)
		return imc_err(err, ESHUTDOWN, "imcd is shutting down");
	if (c->meta_full)
		return imc_err(err, ENOSPC,
			       "metadata cannot be written (%s); new caches are refused "
			       "until there is room",
			       c->meta_reason);
	if (c->n_items >= API_MAX_CACHES)
		return imc_err(err, EDQUOT, "at most %d caches; delete some first", API_MAX_CACHES);
	if (c->q_len >= API_QUEUE_MAX)
		return imc_err(err, EDQUOT, "%d builds are already queued; retry later",
			       API_QUEUE_MAX);
	return 0;
}

/* ---- quotas: a Creating cache counts what its build will take --------------------------------
 * At accept time that is its requested size, else the builder's smallest default size; once the
 * build knows its size (the sizing rule on the manifests' layer sizes and the data sizes, before
 * any layer is fetched) the reservation becomes that size or the build fails QuotaExceeded; a
 * Ready cache counts its snapshot's size, a Failed one nothing.  All under the table lock, so
 * concurrent creates and builds never both pass on the same bytes. */

/* What a create of size bytes (0: the builder's default) reserves until its build is sized. */
static uint64_t quota_estimate(uint64_t size)
{
	return size ? size : BUILDER_SIZE_MIN;
}

static uint64_t quota_bytes_of(const struct api_cache *x)
{
	if (x->status != API_CACHE_CREATING)
		return x->size;
	return x->reserved ? x->reserved : quota_estimate(x->request_size);
}

static const struct api_tenant_limits *limits_of(const struct api_caches *c, const char *tenant)
{
	for (size_t i = 0; i < c->n_limits; i++)
		if (c->limits[i].tenant && strcmp(c->limits[i].tenant, tenant) == 0)
			return &c->limits[i];
	return NULL;
}

/* The caches the tenant holds (Expired and Deleting ones do not count) and their bytes, but
 * skip's. */
static void tenant_usage_locked(const struct api_caches *c, const char *tenant,
				const struct api_cache *skip, uint64_t *ret_count,
				uint64_t *ret_bytes)
{
	*ret_count = *ret_bytes = 0;
	for (size_t i = 0; i < c->n_items; i++) {
		const struct api_cache *x = c->items[i];

		if (x == skip || !owns(x, tenant) || x->status == API_CACHE_EXPIRED ||
		    x->status == API_CACHE_DELETING)
			continue;
		(*ret_count)++;
		*ret_bytes += quota_bytes_of(x);
	}
}

/* builder_opts.on_size: the build's real size replaces the reservation made at accept time, or
 * the build fails QuotaExceeded before it fetches a layer. */
static int reserve_size(void *ctx, uint64_t size, imc_error *err)
{
	struct progress_ctx *p = ctx;
	struct api_caches *c = p->caches;
	const char *tenant = p->cache->tenant ? p->cache->tenant : API_TENANT_DEFAULT;
	const struct api_tenant_limits *lim;
	uint64_t count, bytes;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	lim = limits_of(c, tenant);
	tenant_usage_locked(c, tenant, p->cache, &count, &bytes);
	if (lim && lim->max_bytes && bytes + size > lim->max_bytes)
		r = imc_err(err, API_EQUOTA,
			    "tenant %s: quota of %llu bytes exceeded: the build needs %llu bytes, "
			    "the tenant's other caches hold %llu",
			    tenant, (unsigned long long)lim->max_bytes, (unsigned long long)size,
			    (unsigned long long)bytes);
	else
		p->cache->reserved = size;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The tenant's quota (403 QuotaExceeded): caches it holds and their bytes, plus what this
 * create reserves (size: its quota_estimate). */
static int check_quota_locked(struct api_caches *c, const char *tenant, uint64_t size,
			      imc_error *err)
{
	const struct api_tenant_limits *lim = limits_of(c, tenant);
	uint64_t count = 0, bytes = 0;

	if (!lim || (!lim->max_caches && !lim->max_bytes))
		return 0;
	tenant_usage_locked(c, tenant, NULL, &count, &bytes);
	if (lim->max_caches && count >= lim->max_caches)
		return imc_err(err, API_EQUOTA,
			       "tenant %s: quota of %llu caches reached; delete some first", tenant,
			       (unsigned long long)lim->max_caches);
	if (lim->max_bytes && bytes + size > lim->max_bytes)
		return imc_err(err, API_EQUOTA,
			       "tenant %s: quota of %llu bytes reached (%llu used, %llu requested)",
			       tenant, (unsigned long long)lim->max_bytes,
			       (unsigned long long)bytes, (unsigned long long)size);
	return 0;
}

/* An earlier cache that answers this create request, under the lock: the tenant's cache with
 * the same clientToken (any status; a different request under the same token is -EBUSY), else
 * (without a token) an identical request of the tenant still Creating, without credentials. */
static int find_same_locked(struct api_caches *c, const char *tenant,
			    const struct api_create_request *req, const char *key,
			    struct api_cache **ret, imc_error *err)
{
	*ret = NULL;
	for (size_t i = 0; i < c->n_items; i++) {
		struct api_cache *x = c->items[i];

		if (!owns(x, tenant))
			continue;
		if (req->client_token) {
			if (!x->client_token || strcmp(x->client_token, req->client_token) != 0)
				continue;
			if (strcmp(x->request_key, key) != 0)
				return imc_err(err, EBUSY,
					       "clientToken %s: already used for cache %s with a "
					       "different request",
					       req->client_token, x->id);
			*ret = x;
			return 0;
		}
		if (x->status == API_CACHE_CREATING && !x->had_credentials &&
		    req->n_credentials == 0 && !x->client_token && strcmp(x->request_key, key) == 0)
			*ret = x;
	}
	return 0;
}

static int answer_same(struct api_cache *x, json_t **ret, imc_error *err)
{
	*ret = json_pack("{s:s,s:s,s:b}", "id", x->id, "status", api_cache_status_name(x->status),
			 "existing", 1);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int new_id(struct api_caches *c, char id[API_ID_MAX], imc_error *err)
{
	for (int tries = 0; tries < 8; tries++) {
		int r = imc_random_id(API_ID_PREFIX, id, API_ID_MAX, err);
		bool taken;

		if (r < 0)
			return r;
		pthread_mutex_lock(&c->lock);
		taken = find_locked(c, id, NULL) != NULL;
		r = check_room_locked(c, err);
		pthread_mutex_unlock(&c->lock);
		if (r < 0 || !taken)
			return r;
	}
	return imc_err(err, EEXIST, "cannot pick a free cache id");
}

/* Insert and queue, unless an earlier cache answers the request (ret_same) or there is no
 * room. */
static int enqueue(struct api_caches *c, struct api_cache *cache,
		   const struct api_create_request *req, json_t **ret_same, imc_error *err)
{
	struct api_cache *same = NULL;
	int r;

	pthread_mutex_lock(&c->lock);
	r = find_same_locked(c, cache->tenant, req, cache->request_key, &same, err);
	if (r == 0 && same)
		r = answer_same(same, ret_same, err);
	else if (r == 0)
		r = check_room_locked(c, err);
	if (r == 0 && !same)
		r = check_quota_locked(c, cache->tenant, quota_estimate(req->size), err);
	if (r == 0 && !same)
		r = insert_locked(c, cache, err);
	if (r == 0 && !same)
		queue_push_locked(c, cache); /* room checked above */
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The request as imcd builds it: imcd's platform for every image that names none (ret points
 * into req, c and plat).  The same ref twice for the same platform is refused here too, now that
 * every platform is known. */
static int with_platforms(const struct api_caches *c, const struct api_create_request *req,
			  char *plat[API_IMAGES_MAX], struct api_create_request *ret,
			  imc_error *err)
{
	if (req->n_refs > API_IMAGES_MAX)
		return imc_err(err, EINVAL, "images: at most %d images, got %zu", API_IMAGES_MAX,
			       req->n_refs);
	*ret = *req;
	ret->platforms = plat;
	for (size_t i = 0; i < req->n_refs; i++) {
		plat[i] =
		    req->platforms && req->platforms[i] ? req->platforms[i] : (char *)c->platform;
		for (size_t k = 0; k < i; k++)
			if (strcmp(req->refs[k], req->refs[i]) == 0 &&
			    strcmp(plat[k], plat[i]) == 0)
				return imc_err(err, EINVAL,
					       "images[%zu]: %s for %s is already images[%zu]", i,
					       req->refs[i], plat[i], k);
	}
	return 0;
}

int api_caches_create(struct api_caches *c, const struct api_caller *who,
		      const struct api_create_request *req_in, json_t **ret, imc_error *err)
{
	const char *tenant = tenant_of(who);
	struct api_cache *cache = NULL, *same = NULL;
	_cleanup_json_ json_t *answer = NULL, *meta = NULL, *existing = NULL;
	struct api_create_request full, *req = &full;
	char id[API_ID_MAX], *plat[API_IMAGES_MAX];
	int r;

	r = with_platforms(c, req_in, plat, &full, err);
	if (r == 0)
		r = new_id(c, id, err);
	if (r == 0)
		r = api_cache_new_for(id, tenant, req, imc_now(), &cache, err);
	if (r < 0)
		return r;
	/* Checked before the metadata write too: a repeated request costs no disk write. */
	pthread_mutex_lock(&c->lock);
	r = find_same_locked(c, tenant, req, cache->request_key, &same, err);
	if (r == 0 && same)
		r = answer_same(same, ret, err);
	else if (r == 0)
		r = check_quota_locked(c, tenant, quota_estimate(req->size), err);
	pthread_mutex_unlock(&c->lock);
	if (r < 0 || same) {
		api_cache_free(cache);
		return r;
	}
	answer = json_pack("{s:s,s:s}", "id", id, "status", "Creating");
	meta = api_cache_to_meta(cache);
	/* On disk first: a cache the client has heard of survives a crash. */
	r = answer ? persist_meta(c, id, meta, err) : imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = enqueue(c, cache, req, &existing, err);
	if (r < 0 || existing) {
		unlink_meta(c, id, NULL);
		api_cache_free(cache);
		if (r < 0)
			return r;
		*ret = steal_pointer(&existing);
		return 0;
	}
	*ret = steal_pointer(&answer);
	return 0;
}

/* A malloc'ed copy of a rendered object with a newline: the body of a GET. */
static int copy_body(const char *json, size_t len, char **ret, size_t *ret_len, imc_error *err)
{
	char *b = malloc(len + 2);

	if (!b)
		return imc_err(err, ENOMEM, "out of memory");
	memcpy(b, json, len);
	b[len] = '\n';
	b[len + 1] = '\0';
	*ret = b;
	*ret_len = len + 1;
	return 0;
}

int api_caches_get_body(struct api_caches *c, const struct api_caller *who, const char *id,
			char **ret, size_t *ret_len, imc_error *err)
{
	struct api_cache *cache;
	const char *json = NULL;
	size_t len = 0;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	cache = find_visible_locked(c, tenant_of(who), id, NULL);
	if (!cache)
		r = not_found(err, id);
	else if (api_cache_rendered(cache, &json, &len) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	else
		r = copy_body(json, len, ret, ret_len, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* A body back into JSON (for callers that want a json_t, not the server). */
static int body_to_json(char *body, size_t len, json_t **ret, imc_error *err)
{
	json_error_t jerr;
	json_t *j = json_loadb(body, len, 0, &jerr);

	free(body);
	if (!j)
		return imc_err(err, ENOMEM, "rendered object: %s", jerr.text);
	*ret = j;
	return 0;
}

int api_caches_get(struct api_caches *c, const struct api_caller *who, const char *id, json_t **ret,
		   imc_error *err)
{
	char *body = NULL;
	size_t len = 0;
	int r = api_caches_get_body(c, who, id, &body, &len, err);

	return r < 0 ? r : body_to_json(body, len, ret, err);
}

/* ---- match=best -------------------------------------------------------------------------------
 */

/* The layers of the image asked for: from a built cache of the tenant that holds that exact ref
 * (no network), else from the resolver (never waiting for a registry: -EINPROGRESS while it
 * asks). */
static json_t *wanted_layers(struct api_caches *c, const char *tenant, const char *image,
			     const char *platform, imc_error *err)
{
	json_t *layers = NULL, *l;
	size_t i;

	pthread_mutex_lock(&c->lock);
	for (size_t k = 0; k < c->n_items && !layers; k++) {
		struct api_cache *x = c->items[k];
		json_t *imgs = x->manifest ? json_object_get(x->manifest, "images") : NULL, *im;

		if (!owns(x, tenant))
			continue;
		json_array_foreach(imgs, i, im)
		{
			const char *ref = json_string_value(json_object_get(im, "ref"));
			const char *p = json_string_value(json_object_get(im, "platform"));
			if (ref && strcmp(ref, image) == 0 && p && strcmp(p, platform) == 0) {
				layers = json_array();
				json_array_foreach(json_object_get(im, "layers"), i, l)
				    json_array_append(layers, json_object_get(l, "digest"));
				break;
			}
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (layers)
		return layers;
	if (api_resolver_layers(c->resolver, image, platform, &layers, err) < 0)
		return NULL;
	return layers;
}

/* {"items":[the tenant's cache (matching status/name) with an image of the platform asked for
 * (imcd's default) sharing the most layers]} (empty when none shares any), with "sharedLayers"
 * and "wantedLayers" in the item. */
static int list_best(struct api_caches *c, const char *tenant, const struct api_list_query *q,
		     json_t **ret, imc_error *err)
{
	const char *platform = q->platform ? q->platform : c->platform;
	_cleanup_json_ json_t *want = wanted_layers(c, tenant, q->image, platform, err);
	_cleanup_json_ json_t *page = NULL;
	struct api_cache *best = NULL;
	size_t best_n = 0;
	json_t *item = NULL;

	if (!want)
		return err && err->code ? err->code : imc_err(err, ENOMEM, "out of memory");
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items; i++) {
		struct api_cache *x = c->items[i];
		size_t n;

		if (!owns(x, tenant) || !api_cache_matches(x, q) ||
		    !api_cache_has_platform(x, platform))
			continue;
		n = api_cache_shared_layers(x, want);
		if (n > best_n) { /* ties: the older cache (list order) */
			best = x;
			best_n = n;
		}
	}
	if (best) {
		item = api_cache_to_json(best);
		if (item) {
			json_object_set_new(item, "sharedLayers", json_integer((json_int_t)best_n));
			json_object_set_new(item, "wantedLayers",
					    json_integer((json_int_t)json_array_size(want)));
		}
	}
	pthread_mutex_unlock(&c->lock);
	page = json_pack("{s:[]}", "items");
	if (!page ||
	    (best && (!item || json_array_append_new(json_object_get(page, "items"), item) < 0)))
		return imc_err(err, ENOMEM, "out of memory");
	*ret = steal_pointer(&page);
	return 0;
}

int api_caches_list_body(struct api_caches *c, const struct api_caller *who,
			 const struct api_list_query *q, char **ret, size_t *ret_len,
			 imc_error *err)
{
	int r;

	pthread_mutex_lock(&c->lock);
	r = api_list_page_body(c->items, c->n_items, tenant_of(who), q, ret, ret_len, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int api_caches_list(struct api_caches *c, const struct api_caller *who,
		    const struct api_list_query *q, json_t **ret, imc_error *err)
{
	char *body = NULL;
	size_t len = 0;
	int r;

	if (q->match_best)
		return list_best(c, tenant_of(who), q, ret, err);
	r = api_caches_list_body(c, who, q, &body, &len, err);
	return r < 0 ? r : body_to_json(body, len, ret, err);
}

/* ---- delete -----------------------------------------------------------------------------------
 */

/* Take a queued cache out of the queue; false when it is not queued. */
static bool unqueue_locked(struct api_caches *c, const struct api_cache *cache)
{
	for (size_t n = 0; n < c->q_len; n++) {
		if (c->queue[(c->q_head + n) % API_QUEUE_MAX] != cache)
			continue;
		for (; n + 1 < c->q_len; n++)
			c->queue[(c->q_head + n) % API_QUEUE_MAX] =
			    c->queue[(c->q_head + n + 1) % API_QUEUE_MAX];
		c->q_len--;
		return true;
	}
	return false;
}

/* DELETE of a Creating cache, under the lock: a queued build is dropped (the delete goes on as
 * for any cache); a running one is asked to stop (*ret_cancelling: the worker removes the cache
 * once the build has ended). */
static void cancel_for_delete_locked(struct api_caches *c, struct api_cache *cache,
				     bool *ret_cancelling)
{
	*ret_cancelling = !unqueue_locked(c, cache);
	if (*ret_cancelling)
		__atomic_store_n(&cache->cancel, API_CANCEL_DELETE, __ATOMIC_RELAXED);
}

/* Claim a cache for deletion (Deleting): refused while another removal runs and while clones
 * are attached (unless force); a Creating one has its build dropped or cancelled. */
static int claim_for_delete(struct api_caches *c, const char *tenant, const char *id, bool force,
			    bool *ret_cancelling, imc_error *err)
{
	struct api_cache *cache;
	int r = 0;

	*ret_cancelling = false;
	pthread_mutex_lock(&c->lock);
	cache = find_visible_locked(c, tenant, id, NULL);
	if (!cache)
		r = not_found(err, id);
	else if (cache->deleting || cache->status == API_CACHE_DELETING)
		r = imc_err(err, EBUSY, "cache %s: already being deleted", id);
	else if (cache->n_attachments > 0 && !force)
		r = imc_err(err, EBUSY,
			    "cache %s: %zu clone(s) attached (first %s); detach them or delete "
			    "with force=true",
			    id, cache->n_attachments, cache->attachments[0].id);
	if (r == 0 && cache->status == API_CACHE_CREATING)
		cancel_for_delete_locked(c, cache, ret_cancelling);
	if (r == 0) {
		cache->deleting = true;
		api_cache_touch(cache);
		cache->status_before = cache->status;
		set_status_locked(cache, API_CACHE_DELETING);
		event_locked(cache, "Deleting", "%s",
			     *ret_cancelling	    ? "delete: cancelling the build"
			     : cache->n_attachments ? "delete forced with clones attached"
						    : "delete");
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* Drop the cache from the table (deleted) or release the claim (the delete failed). */
static void finish_delete(struct api_caches *c, const char *id, bool deleted)
{
	struct api_cache *cache;
	size_t index = 0;

	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, &index);
	if (cache && deleted) {
		remove_locked(c, index);
	} else if (cache) {
		cache->deleting = false;
		api_cache_touch(cache);
		set_status_locked(cache, cache->status_before);
	}
	pthread_mutex_unlock(&c->lock);
	if (deleted)
		api_cache_free(cache);
}

/* A cache whose build is being cancelled: Deleting is written down (a restart finishes the
 * delete), the worker does the rest. */
static int answer_cancelling(struct api_caches *c, const char *id, json_t **ret, imc_error *err)
{
	imc_error e = {0};

	if (persist_id(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	*ret = json_pack("{s:s,s:s}", "id", id, "status", "Deleting");
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int api_caches_delete_force(struct api_caches *c, const struct api_caller *who,
				   const char *id, bool force, json_t **ret, imc_error *err)
{
	_cleanup_json_ json_t *answer = json_pack("{s:s,s:s}", "id", id, "status", "Deleted");
	bool cancelling = false;
	int r;

	if (!answer)
		return imc_err(err, ENOMEM, "out of memory");
	r = claim_for_delete(c, tenant_of(who), id, force, &cancelling, err);
	if (r < 0)
		return r;
	if (cancelling)
		return answer_cancelling(c, id, ret, err);
	r = remove_snapshot(c, id, force, err);
	if (r < 0 && r != -ENOENT) { /* ENOENT: a Failed or Expired cache has none */
		finish_delete(c, id, false);
		return imc_err_wrap(err, "cache %s", id);
	}
	/* The snapshot is gone: the cache is gone, even if its metadata file lingers (the next
	 * start marks such a cache Failed). */
	finish_delete(c, id, true);
	snapshot_removed(c, id);
	drop_unused_bases_now(c);
	space_changed(c);
	r = unlink_meta(c, id, err);
	if (r < 0)
		return r;
	*ret = steal_pointer(&answer);
	return 0;
}

int api_caches_delete_args(struct api_caches *c, const struct api_caller *who, const char *id,
			   const struct api_query_arg *args, size_t n_args, json_t **ret,
			   unsigned *ret_status, imc_error *err)
{
	bool force = false;
	int r = api_delete_query_parse(args, n_args, &force, err);

	if (r < 0)
		return r;
	if (!c)
		return imc_err(err, ESHUTDOWN, "no cache table");
	r = api_caches_delete_force(c, who, id, force, ret, err);
	if (r == 0 && strcmp(json_string_value(json_object_get(*ret, "status")), "Deleting") == 0)
		*ret_status = 202;
	return r;
}

/* ---- attachments ------------------------------------------------------------------------------
 */

static int parse_attach_body(const char *body, size_t len, char id[API_ID_MAX], char **ret_host,
			     imc_error *err)
{
	static const char *const fields[] = {"id", "host", NULL};
	_cleanup_json_ json_t *j = NULL;
	const char *aid = NULL, *host = NULL;
	int r;

	id[0] = '\0';
	*ret_host = NULL;
	if (len == 0)
		return 0;
	if (len > API_BODY_MAX)
		return imc_err(err, EFBIG, "request body larger than %d bytes", API_BODY_MAX);
	r = imc_json_parse_object(body, len, &j, err);
	if (r < 0)
		return r == -EINVAL ? imc_err(err, EBADMSG, "%s", err ? err->msg : "bad JSON") : r;
	r = imc_json_check_fields(j, fields, NULL, err);
	if (r == 0)
		r = imc_json_get_string(j, "id", false, API_ID_MAX - 1, NULL, &aid, err);
	if (r == 0)
		r = imc_json_get_string(j, "host", false, API_HOST_MAX, NULL, &host, err);
	if (r < 0)
		return r;
	if (aid && !api_attach_id_valid(aid))
		return imc_err(err, EINVAL, "id \"%.80s\": want %s-<16 hex digits>", aid,
			       API_ATTACH_PREFIX);
	if (host && !imc_name_valid(host, API_HOST_MAX))
		return imc_err(err, EINVAL, "host: want 1-%d characters of [A-Za-z0-9._-]",
			       API_HOST_MAX);
	if (aid)
		snprintf(id, API_ID_MAX, "%s", aid);
	if (host && !(*ret_host = strdup(host)))
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

static json_t *attachment_json(const char *cache_id, const struct api_attachment *a)
{
	char t[32];

	imc_time_rfc3339(a->at, t, sizeof(t));
	return json_pack("{s:s,s:s,s:s?,s:s}", "id", a->id, "cacheId", cache_id, "host", a->host,
			 "attachedAt", t);
}

/* Record an attachment under the lock; ret_status 200 when it was already there. */
static int attach_locked(struct api_caches *c, struct api_cache *cache, const char *aid,
			 char **host, json_t **ret, unsigned *ret_status, imc_error *err)
{
	struct api_attachment *a;

	for (size_t i = 0; i < cache->n_attachments; i++)
		if (strcmp(cache->attachments[i].id, aid) == 0) {
			*ret_status = 200;
			*ret = attachment_json(cache->id, &cache->attachments[i]);
			return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
		}
	if (cache->status != API_CACHE_READY)
		return imc_err(err, EBUSY, "cache %s: %s, not Ready: nothing to attach", cache->id,
			       api_cache_status_name(cache->status));
	if (cache->n_attachments >= API_ATTACH_MAX)
		return imc_err(err, EDQUOT, "cache %s: %d attachments already", cache->id,
			       API_ATTACH_MAX);
	a = realloc(cache->attachments, (cache->n_attachments + 1) * sizeof(*a));
	if (!a)
		return imc_err(err, ENOMEM, "out of memory");
	cache->attachments = a;
	a = &cache->attachments[cache->n_attachments];
	*a = (struct api_attachment){.host = steal_pointer(host), .at = imc_now()};
	snprintf(a->id, sizeof(a->id), "%s", aid);
	*ret = attachment_json(cache->id, a);
	if (!*ret) {
		free(a->host);
		return imc_err(err, ENOMEM, "out of memory");
	}
	cache->n_attachments++;
	cache->last_used_at = a->at;
	c->last_change_ns = imc_monotonic_ns(); /* no pool trim in an attach burst */
	api_cache_touch(cache);
	event_locked(cache, "Attached", "%s%s%s", aid, a->host ? " on " : "",
		     a->host ? a->host : "");
	*ret_status = 201;
	return 0;
}

static int api_caches_attach(struct api_caches *c, const struct api_caller *who, const char *id,
			     const char *body, size_t len, json_t **ret, unsigned *ret_status,
			     imc_error *err)
{
	_cleanup_free_ char *host = NULL;
	struct api_cache *cache;
	char aid[API_ID_MAX];
	imc_error e = {0};
	int r = parse_attach_body(body, len, aid, &host, err);

	if (r == 0 && !aid[0])
		r = imc_random_id(API_ATTACH_PREFIX, aid, sizeof(aid), err);
	if (r < 0)
		return r;
	pthread_mutex_lock(&c->lock);
	cache = find_visible_locked(c, tenant_of(who), id, NULL);
	r = cache ? attach_locked(c, cache, aid, &host, ret, ret_status, err) : not_found(err, id);
	pthread_mutex_unlock(&c->lock);
	if (r < 0 || *ret_status != 201)
		return r;
	__atomic_add_fetch(&c->metrics.attaches, 1, __ATOMIC_RELAXED);
	/* Best effort: the attachment is in memory either way; a lost write is logged. */
	if (persist_id(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	return 0;
}

static int api_caches_detach(struct api_caches *c, const struct api_caller *who, const char *id,
			     const char *aid, json_t **ret, imc_error *err)
{
	struct api_cache *cache;
	imc_error e = {0};
	bool found = false;

	if (!api_attach_id_valid(aid))
		return imc_err(err, EINVAL, "attachment id \"%.80s\": malformed (want %s-<16 hex>)",
			       aid, API_ATTACH_PREFIX);
	*ret = json_pack("{s:s,s:s,s:s}", "id", aid, "cacheId", id, "status", "Detached");
	if (!*ret)
		return imc_err(err, ENOMEM, "out of memory");
	pthread_mutex_lock(&c->lock);
	cache = find_visible_locked(c, tenant_of(who), id, NULL);
	for (size_t i = 0; cache && i < cache->n_attachments && !found; i++) {
		if (strcmp(cache->attachments[i].id, aid) != 0)
			continue;
		found = true;
		free(cache->attachments[i].host);
		memmove(cache->attachments + i, cache->attachments + i + 1,
			(cache->n_attachments - i - 1) * sizeof(*cache->attachments));
		cache->n_attachments--;
		cache->last_used_at = imc_now();
		c->last_change_ns = imc_monotonic_ns();
		api_cache_touch(cache);
		event_locked(cache, "Detached", "%s", aid);
	}
	pthread_mutex_unlock(&c->lock);
	if (!found) {
		json_decref(steal_pointer(ret));
		return cache ? imc_err(err, ENOENT, "cache %s: attachment %s: not found", id, aid)
			     : not_found(err, id);
	}
	__atomic_add_fetch(&c->metrics.detaches, 1, __ATOMIC_RELAXED);
	if (persist_id(c, id, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	return 0;
}

static int api_caches_attachments(struct api_caches *c, const struct api_caller *who,
				  const char *id, json_t **ret, imc_error *err)
{
	_cleanup_json_ json_t *items = json_array();
	struct api_cache *cache;
	int r = items ? 0 : -ENOMEM;

	pthread_mutex_lock(&c->lock);
	cache = find_visible_locked(c, tenant_of(who), id, NULL);
	for (size_t i = 0; r == 0 && cache && i < cache->n_attachments; i++)
		r = json_array_append_new(items, attachment_json(id, &cache->attachments[i]));
	pthread_mutex_unlock(&c->lock);
	if (!cache)
		return not_found(err, id);
	*ret = r == 0 ? json_pack("{s:O}", "items", items) : NULL;
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int api_attachments_dispatch(struct api_caches *c, const struct api_caller *who, enum api_method m,
			     const struct api_match *match, const char *body, size_t len,
			     json_t **ret, unsigned *ret_status, imc_error *err)
{
	*ret_status = 200;
	if (api_cache_id_check(match->id, err) < 0)
		return err->code;
	if (!c)
		return imc_err(err, ESHUTDOWN, "no cache table");
	if (match->route == API_ROUTE_ATTACHMENT)
		return api_caches_detach(c, who, match->id, match->aid, ret, err);
	if (m == API_METHOD_GET)
		return api_caches_attachments(c, who, match->id, ret, err);
	return api_caches_attach(c, who, match->id, body, len, ret, ret_status, err);
}

/* ---- metrics ----------------------------------------------------------------------------------
 */

struct api_metrics *api_caches_metrics(struct api_caches *c)
{
	return c ? &c->metrics : NULL;
}

void api_caches_metrics_page(struct api_caches *c, struct api_metrics_page *ret)
{
	struct store_usage usage;
	imc_error e = {0};

	*ret = (struct api_metrics_page){0};
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_items; i++) {
		if ((size_t)c->items[i]->status < API_CACHE_STATUS_COUNT)
			ret->caches[c->items[i]->status]++;
		ret->attachments += c->items[i]->n_attachments;
	}
	pthread_mutex_unlock(&c->lock);
	/* Outside the lock: the store may ask the kernel (statfs). */
	if (store_usage(c->store, &usage, &e) == 0) {
		ret->have_pool = true;
		ret->pool_size = usage.total;
		ret->pool_used = usage.used;
		ret->pool_free = usage.free;
		ret->pool_meta_size = usage.meta_total;
		ret->pool_meta_used = usage.meta_used;
	}
	api_metrics_load(&c->metrics, &ret->m);
}
