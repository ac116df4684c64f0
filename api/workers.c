/* The cache table's build workers: the pool that takes queued caches, runs their builds and
 * records the outcome, cancels them, and the quota reservation a Creating cache holds. */
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
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, cache->id,
				  e.msg); /* size unknown: 0 */
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
		api_caches_set_status_locked(cache, API_CACHE_READY);
		cache->manifest = json_incref(manifest);
		cache->size = info.size;
		cache->ready_at = imc_now();
		api_cache_touch(cache);
		event_locked(cache, "Ready", "%s", msg);
	} else {
		if (api_cache_set_failed(cache, build_msg, NULL) < 0)
			api_caches_set_status_locked(
			    cache, API_CACHE_FAILED); /* no memory for the message */
		event_locked(cache, "Failed", "%s", build_msg);
	}
	pthread_mutex_unlock(&c->lock);
	api_metrics_observe_build(&c->metrics, build_r == 0, imc_monotonic_ns() - start_ns);
	__atomic_sub_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	/* Once unlocked the cache may be deleted: only its id is used from here on. */
	if (api_caches_persist_id(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	if (build_r == 0 && c->on_snapshot_ready)
		c->on_snapshot_ready(c->snapshot_ctx, id);
	if (build_r == 0)
		api_caches_notify(c, API_EVENT_BUILD_READY, id, msg);
	else
		api_caches_notify(c, API_EVENT_BUILD_FAILED, id, build_msg);
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
	if (api_caches_find_locked(c, id, &index) == cache)
		api_caches_remove_locked(c, index);
	pthread_mutex_unlock(&c->lock);
	__atomic_sub_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	if (api_caches_unlink_meta(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	api_caches_notify(c, API_EVENT_BUILD_FAILED, id, CANCELLED_BY_DELETE_MSG);
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
	api_caches_notify(c, API_EVENT_BUILD_START, cache->id, what);
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

void *api_caches_worker_main(void *arg)
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
			api_caches_drop_unused_bases(c);
		api_caches_space_changed_locked(c); /* its blobs are needed no more, or less */
		pthread_mutex_unlock(&c->lock);
	}
}

/* ---- quotas: a Creating cache counts what its build will take --------------------------------
 * At accept time that is its requested size, else the builder's smallest default size; once the
 * build knows its size (the sizing rule on the manifests' layer sizes and the data sizes, before
 * any layer is fetched) the reservation becomes that size or the build fails QuotaExceeded; a
 * Ready cache counts its snapshot's size, a Failed one nothing.  All under the table lock, so
 * concurrent creates and builds never both pass on the same bytes. */

/* What a create of size bytes (0: the builder's default) reserves until its build is sized. */
uint64_t api_caches_quota_estimate(uint64_t size)
{
	return size ? size : BUILDER_SIZE_MIN;
}

static uint64_t quota_bytes_of(const struct api_cache *x)
{
	if (x->status != API_CACHE_CREATING)
		return x->size;
	return x->reserved ? x->reserved : api_caches_quota_estimate(x->request_size);
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

		if (x == skip || !api_caches_owns(x, tenant) || x->status == API_CACHE_EXPIRED ||
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
 * create reserves (size: its api_caches_quota_estimate). */
int api_caches_check_quota_locked(struct api_caches *c, const char *tenant, uint64_t size,
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
