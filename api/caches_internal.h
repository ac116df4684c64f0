/* Private to the cache table (api/caches.c, persist.c, repair.c, sweep.c, workers.c, lifecycle.c,
 * attachments.c): struct api_caches and what those files share.  Not for the rest of api/ (api.h is
 * the table's interface). */
#ifndef IMC_API_CACHES_INTERNAL_H
#define IMC_API_CACHES_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

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
	/* Something went: the sweeper collects blobs (see api_caches_space_changed_locked) ... */
	bool space_due;
	bool trim_due;		 /* ... and trims the pool once things are quiet (see space_pass) */
	uint64_t last_change_ns; /* the last build end, removal or attachment report */

	pthread_mutex_t persist_lock; /* one metadata write at a time (shared tmp file names) */
	/* A metadata write failed for want of space (under lock): creates are refused (507), no
	 * build starts, /healthz is 503 with meta_reason, until the sweeper finds room again. */
	bool meta_full;
	char meta_reason[IMC_ERR_MSG];

	struct api_metrics metrics; /* atomics, no lock */
};

struct worker {
	struct api_caches *caches;
	unsigned slot;
};

/* Record an event in a cache's history (under the lock); an OOM loses the event only. */
#define event_locked(cache, type, ...) api_cache_add_event((cache), imc_now(), (type), __VA_ARGS__)

/* The functions these files share, each defined in the file named above it; they are not the
 * table's interface (api.h). */

/* api/caches.c */
struct api_cache *api_caches_find_locked(struct api_caches *c, const char *id, size_t *ret_index);
int api_caches_insert_locked(struct api_caches *c, struct api_cache *cache, imc_error *err);
void api_caches_remove_locked(struct api_caches *c, size_t index);
int api_caches_cmp_items(const void *a, const void *b);
void api_caches_set_status_locked(struct api_cache *cache, enum api_cache_status status);
void api_caches_notify(struct api_caches *c, enum api_event ev, const char *id, const char *msg);
const char *api_caches_tenant_of(const struct api_caller *who);
bool api_caches_owns(const struct api_cache *cache, const char *tenant);
struct api_cache *api_caches_find_visible_locked(struct api_caches *c, const char *tenant,
						 const char *id, size_t *ret_index);
int api_caches_not_found(imc_error *err, const char *id);

/* api/persist.c */
int api_caches_persist_meta(struct api_caches *c, const char *id, json_t *meta, imc_error *err);
int api_caches_persist_id(struct api_caches *c, const char *id, imc_error *err);
int api_caches_persist(struct api_caches *c, struct api_cache *cache, imc_error *err);
int api_caches_unlink_meta(struct api_caches *c, const char *id, imc_error *err);
int api_caches_load_all(struct api_caches *c, json_t *repairs, imc_error *err);
void api_caches_remove_leftover(struct api_caches *c, enum store_kind kind, const char *id,
				json_t *repairs);

/* api/repair.c */
int api_caches_queue_push_locked(struct api_caches *c, struct api_cache *cache);
void api_caches_repair_partial_blobs(struct api_caches *c, json_t *repairs);
int api_caches_repair_all(struct api_caches *c, json_t *repairs, imc_error *err);

/* api/sweep.c */
void api_caches_space_changed_locked(struct api_caches *c);
void api_caches_wake_space_pass(struct api_caches *c);
bool api_caches_meta_room(struct api_caches *c);
void api_caches_drop_unused_bases(struct api_caches *c);
void api_caches_drop_unused_bases_now(struct api_caches *c);
void api_caches_snapshot_removed(struct api_caches *c, const char *id);
int api_caches_remove_snapshot(struct api_caches *c, const char *id, bool force, imc_error *err);
void *api_caches_sweeper_main(void *arg);

/* api/workers.c */
void *api_caches_worker_main(void *arg);
uint64_t api_caches_quota_estimate(uint64_t size);
int api_caches_check_quota_locked(struct api_caches *c, const char *tenant, uint64_t size,
				  imc_error *err);

#endif
