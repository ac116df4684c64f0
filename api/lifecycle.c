/* The cache table opened (directories, reserve, load, repair, threads) and closed (running
 * builds given their grace, then cancelled). */
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

	if (api_caches_meta_room(c))
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
		r = -pthread_create(&c->workers[c->workers_started], NULL, api_caches_worker_main,
				    w);
		if (r < 0) {
			free(w);
			return imc_err_sys(err, -r, "build worker thread");
		}
	}
	r = -pthread_create(&c->sweeper, NULL, api_caches_sweeper_main, c);
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
		api_caches_repair_partial_blobs(c, ret_repairs);
	if (r == 0)
		open_reserve(c, ret_repairs);
	if (r == 0)
		r = api_caches_load_all(c, ret_repairs, err);
	if (r == 0)
		r = api_caches_repair_all(c, ret_repairs, err);
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
		if (api_caches_persist(c, cache, &e) < 0)
			api_caches_notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg);
	}
	free_caches(c);
}
