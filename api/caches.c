/* The cache table: metadata files, the build queue and its worker thread.
 *
 * One mutex guards the table and the queue; handlers only ever hold it to look at or change
 * memory, never across a build or a store call.  A Creating cache cannot be deleted, so the
 * worker keeps a plain pointer to the cache it builds. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include "../builder/builder.h"
#include "../store/store.h"
#include "api.h"

#define INTERRUPTED_MSG "interrupted: imcd stopped during the build"
#define NOT_STARTED_MSG "interrupted: imcd stopped before the build started"
#define CREDS_LOST_MSG                                                                             \
	"credentials lost on restart: imcd stopped during a build that had "                       \
	"credentials, which are never written down; create the cache again"

struct api_caches {
	struct store *store;
	int meta_dirfd; /* <state>/caches */
	char *blob_dir; /* <state>/blobs */
	const char *const *insecure_registries;
	const char *hf_endpoint, *ca_file, *auth_file;
	void (*on_event)(void *ctx, enum api_event ev, const char *id, const char *message);
	void *event_ctx;

	pthread_mutex_t lock; /* items, n_items, queue, stopping, per-cache fields */
	pthread_cond_t cond;
	struct api_cache **items; /* sorted by api_cache_cmp */
	size_t n_items, cap_items;
	struct api_cache *queue[API_QUEUE_MAX]; /* ring of Creating caches waiting for the worker */
	size_t q_head, q_len;
	bool stopping;
	pthread_t worker;
	bool worker_started;

	pthread_mutex_t persist_lock; /* one metadata write at a time (shared tmp file names) */

	struct api_metrics metrics; /* atomics, no lock */
};

/* ---- table ------------------------------------------------------------------------------------
 */

static struct api_cache *find_locked(struct api_caches *c, const char *id, size_t *ret_index)
{
	for (size_t i = 0; i < c->n_items; i++)
		if (strcmp(c->items[i]->id, id) == 0) {
			if (ret_index)
				*ret_index = i;
			return c->items[i];
		}
	return NULL;
}

static int insert_locked(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	size_t pos = c->n_items;

	if (c->n_items == c->cap_items) {
		size_t cap = c->cap_items ? c->cap_items * 2 : 64;
		struct api_cache **items = realloc(c->items, cap * sizeof(*items));
		if (!items)
			return imc_err(err, ENOMEM, "out of memory");
		c->items = items;
		c->cap_items = cap;
	}
	/* New caches are nearly always the newest: walk back from the end. */
	while (pos > 0 && api_cache_cmp(c->items[pos - 1], cache) > 0)
		pos--;
	memmove(c->items + pos + 1, c->items + pos, (c->n_items - pos) * sizeof(*c->items));
	c->items[pos] = cache;
	c->n_items++;
	return 0;
}

static void remove_locked(struct api_caches *c, size_t index)
{
	memmove(c->items + index, c->items + index + 1,
		(c->n_items - index - 1) * sizeof(*c->items));
	c->n_items--;
}

static int cmp_items(const void *a, const void *b)
{
	return api_cache_cmp(*(struct api_cache *const *)a, *(struct api_cache *const *)b);
}

/* ---- metadata files ---------------------------------------------------------------------------
 */

static void meta_name(const char *id, char *buf, size_t size)
{
	snprintf(buf, size, "%s.json", id);
}

/* Write the metadata of an already serialised cache. */
static int persist_meta(struct api_caches *c, const char *id, json_t *meta, imc_error *err)
{
	char name[API_ID_MAX + 8];
	int r;

	if (!meta)
		return imc_err(err, ENOMEM, "cache %s: out of memory", id);
	meta_name(id, name, sizeof(name));
	pthread_mutex_lock(&c->persist_lock);
	r = imc_json_write_atomic(c->meta_dirfd, name, meta, err);
	pthread_mutex_unlock(&c->persist_lock);
	return r < 0 ? imc_err_wrap(err, "cache %s: metadata", id) : 0;
}

/* Serialise under the lock, write outside it. */
static int persist(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	_cleanup_json_ json_t *meta = NULL;
	char id[API_ID_MAX];

	pthread_mutex_lock(&c->lock);
	meta = api_cache_to_meta(cache);
	memcpy(id, cache->id, sizeof(id));
	pthread_mutex_unlock(&c->lock);
	return persist_meta(c, id, meta, err);
}

static int unlink_meta(struct api_caches *c, const char *id, imc_error *err)
{
	char name[API_ID_MAX + 8];

	meta_name(id, name, sizeof(name));
	if (unlinkat(c->meta_dirfd, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "cache %s: remove metadata %s", id, name);
	return 0;
}

static void report(json_t *repairs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(json_t *repairs, const char *fmt, ...)
{
	char msg[IMC_ERR_MSG + 256];
	va_list ap;

	if (!repairs)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_array_append_new(repairs, json_string(msg));
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
		report(repairs, "caches/%s; ignored", e.msg); /* e names the file */
		return 0;
	}
	if (api_cache_from_meta(meta, &cache, &e) < 0) {
		report(repairs, "caches/%s: %s; ignored", file, e.msg);
		return 0;
	}
	if (strcmp(cache->id, id) != 0) {
		report(repairs, "caches/%s: holds cache %s; ignored", file, cache->id);
		api_cache_free(cache);
		return 0;
	}
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
			report(repairs, "caches/%s: removed a partial metadata write", de->d_name);
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
		report(repairs, "cache %s: removed the leftover %s", id, store_kind_name(kind));
	else if (r != -ENOENT)
		report(repairs, "cache %s: cannot remove the leftover %s: %s", id,
		       store_kind_name(kind), e.msg);
}

/* A build that imcd did not see finish: nothing of it can be trusted. */
static int repair_interrupted(struct api_caches *c, struct api_cache *cache, json_t *repairs,
			      imc_error *err)
{
	imc_error e = {0};

	remove_leftover(c, STORE_VOLUME, cache->id, repairs);
	remove_leftover(c, STORE_SNAPSHOT, cache->id, repairs);
	if (api_cache_set_failed(cache, cache->had_credentials ? CREDS_LOST_MSG : INTERRUPTED_MSG,
				 err) < 0)
		return err ? err->code : -ENOMEM;
	if (persist(c, cache, &e) < 0)
		report(repairs, "%s", e.msg);
	report(repairs, "cache %s: was Creating when imcd stopped; marked Failed", cache->id);
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
		report(repairs, "cache %s: cannot check its snapshot: %s", cache->id, e.msg);
		return 0;
	}
	if (api_cache_set_failed(cache, "snapshot missing from the store", err) < 0)
		return err ? err->code : -ENOMEM;
	if (persist(c, cache, &e) < 0)
		report(repairs, "%s", e.msg);
	report(repairs, "cache %s: was Ready but its snapshot is gone; marked Failed", cache->id);
	return 0;
}

static int repair_all(struct api_caches *c, json_t *repairs, imc_error *err)
{
	for (size_t i = 0; i < c->n_items; i++) {
		struct api_cache *cache = c->items[i];
		int r = 0;

		if (cache->status == API_CACHE_CREATING)
			r = repair_interrupted(c, cache, repairs, err);
		else if (cache->status == API_CACHE_READY)
			r = repair_missing_snapshot(c, cache, repairs, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- the build worker -------------------------------------------------------------------------
 */

static void notify(struct api_caches *c, enum api_event ev, const char *id, const char *msg)
{
	if (c->on_event)
		c->on_event(c->event_ctx, ev, id, msg);
}

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
	pthread_mutex_unlock(&p->caches->lock);
}

/* Record the outcome of a build in memory (under the lock) and on disk. */
static void finish_build(struct api_caches *c, struct api_cache *cache, json_t *manifest,
			 int build_r, const char *build_msg, uint64_t start_ns)
{
	struct store_object_info info = {0};
	char msg[IMC_ERR_MSG + 64];
	imc_error e = {0};

	if (build_r == 0 && store_stat(c->store, STORE_SNAPSHOT, cache->id, &info, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg); /* size unknown: 0 */
	pthread_mutex_lock(&c->lock);
	if (build_r == 0) {
		cache->status = API_CACHE_READY;
		cache->manifest = json_incref(manifest);
		cache->size = info.size;
		cache->ready_at = imc_now();
	} else if (api_cache_set_failed(cache, build_msg, NULL) < 0) {
		cache->status = API_CACHE_FAILED; /* no memory for the message: the status still */
	}
	pthread_mutex_unlock(&c->lock);
	api_metrics_observe_build(&c->metrics, build_r == 0, imc_monotonic_ns() - start_ns);
	__atomic_sub_fetch(&c->metrics.builds_in_flight, 1, __ATOMIC_RELAXED);
	if (persist(c, cache, &e) < 0)
		notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg);
	if (build_r == 0) {
		json_t *base = json_object_get(manifest, "base");
		if (json_is_true(json_object_get(base, "reused")))
			snprintf(msg, sizeof(msg),
				 "Ready (%llu bytes; on base %s: %lld layer bytes neither fetched "
				 "nor applied, %.1f s saved)",
				 (unsigned long long)info.size,
				 json_string_value(json_object_get(base, "snapshot")),
				 (long long)json_integer_value(json_object_get(base, "layerBytes")),
				 json_number_value(json_object_get(base, "savedSeconds")));
		else
			snprintf(msg, sizeof(msg), "Ready (%llu bytes)",
				 (unsigned long long)info.size);
		notify(c, API_EVENT_BUILD_READY, cache->id, msg);
	} else {
		notify(c, API_EVENT_BUILD_FAILED, cache->id, build_msg);
	}
}

/* The request's data and credentials in the builder's shape (pointing into cache, which does
 * not change while it builds). */
struct build_args {
	struct builder_data data[API_DATA_MAX];
	struct builder_credential creds[API_CREDS_MAX];
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
		a->creds[i] =
		    (struct builder_credential){.registry = cache->credentials[i].registry,
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

static void build_one(struct api_caches *c, struct api_cache *cache)
{
	struct progress_ctx pctx = {.caches = c, .cache = cache};
	struct builder_request breq = {0};
	struct builder_opts opts = {
	    .blob_dir = c->blob_dir,
	    .insecure_registries = c->insecure_registries,
	    .hf_endpoint = c->hf_endpoint,
	    .ca_file = c->ca_file,
	    .auth_file = c->auth_file,
	    .progress = on_progress,
	    .progress_ctx = &pctx,
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
	notify(c, API_EVENT_BUILD_START, cache->id, what);
	breq.refs = (const char *const *)cache->refs;
	breq.n_refs = cache->n_refs;
	build_args_fill(&args, cache, &breq, &opts);
	r = builder_build(c->store, &opts, cache->id, &breq, &manifest, &e);
	explicit_bzero(&args, sizeof(args));
	drop_credentials(c, cache);
	if (r == 0 && !manifest)
		r = imc_err(&e, EIO, "builder returned no manifest");
	if (r < 0 && !e.msg[0])
		imc_err(&e, r, "build failed (no reason given)");
	finish_build(c, cache, manifest, r, e.msg, start_ns);
}

static void *worker_main(void *arg)
{
	struct api_caches *c = arg;

	for (;;) {
		struct api_cache *cache;

		pthread_mutex_lock(&c->lock);
		while (!c->stopping && c->q_len == 0)
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->stopping) {
			pthread_mutex_unlock(&c->lock);
			return NULL;
		}
		cache = c->queue[c->q_head];
		c->q_head = (c->q_head + 1) % API_QUEUE_MAX;
		c->q_len--;
		pthread_mutex_unlock(&c->lock);
		build_one(c, cache);
	}
}

/* ---- open and close ---------------------------------------------------------------------------
 */

static int open_dirs(struct api_caches *c, const char *state_dir, imc_error *err)
{
	_cleanup_free_ char *meta_dir = imc_path_join(state_dir, "caches");
	int r;

	c->blob_dir = imc_path_join(state_dir, "blobs");
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

static void free_caches(struct api_caches *c)
{
	for (size_t i = 0; i < c->n_items; i++)
		api_cache_free(c->items[i]);
	free(c->items);
	free(c->blob_dir);
	if (c->meta_dirfd >= 0)
		close(c->meta_dirfd);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->persist_lock);
	free(c);
}

int api_caches_open(const struct api_caches_config *cfg, json_t *ret_repairs,
		    struct api_caches **ret, imc_error *err)
{
	struct api_caches *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	c->meta_dirfd = -1;
	c->store = cfg->store;
	c->insecure_registries = cfg->insecure_registries;
	/* The environment stands in until imcd has flags for these. */
	c->hf_endpoint = cfg->hf_endpoint ? cfg->hf_endpoint : getenv("HF_ENDPOINT");
	c->ca_file = cfg->ca_file;
	c->auth_file = cfg->auth_file;
	c->on_event = cfg->on_event;
	c->event_ctx = cfg->event_ctx;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->persist_lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	r = open_dirs(c, cfg->state_dir, err);
	if (r == 0)
		r = load_all(c, ret_repairs, err);
	if (r == 0)
		r = repair_all(c, ret_repairs, err);
	if (r == 0) {
		r = -pthread_create(&c->worker, NULL, worker_main, c);
		if (r < 0)
			imc_err_sys(err, -r, "build worker thread");
	}
	if (r < 0) {
		free_caches(c);
		return r;
	}
	c->worker_started = true;
	*ret = c;
	return 0;
}

void api_caches_close(struct api_caches *c)
{
	imc_error e = {0};

	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	if (c->worker_started)
		pthread_join(c->worker, NULL);
	/* The worker is gone: what is still queued never started. */
	for (; c->q_len > 0; c->q_len--, c->q_head = (c->q_head + 1) % API_QUEUE_MAX) {
		struct api_cache *cache = c->queue[c->q_head];
		if (api_cache_set_failed(cache, NOT_STARTED_MSG, NULL) == 0 &&
		    persist(c, cache, &e) < 0)
			notify(c, API_EVENT_PERSIST_FAILED, cache->id, e.msg);
	}
	free_caches(c);
}

/* ---- requests ---------------------------------------------------------------------------------
 */

/* Is there room for one more cache and build?  Under the lock. */
static int check_room_locked(struct api_caches *c, imc_error *err)
{
	if (c->stopping)
		return imc_err(err, ESHUTDOWN, "imcd is shutting down");
	if (c->n_items >= API_MAX_CACHES)
		return imc_err(err, EDQUOT, "at most %d caches; delete some first", API_MAX_CACHES);
	if (c->q_len >= API_QUEUE_MAX)
		return imc_err(err, EDQUOT, "%d builds are already queued; retry later",
			       API_QUEUE_MAX);
	return 0;
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

static int enqueue(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	int r;

	pthread_mutex_lock(&c->lock);
	r = check_room_locked(c, err);
	if (r == 0)
		r = insert_locked(c, cache, err);
	if (r == 0) {
		c->queue[(c->q_head + c->q_len) % API_QUEUE_MAX] = cache;
		c->q_len++;
		pthread_cond_signal(&c->cond);
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

int api_caches_create(struct api_caches *c, const struct api_caller *who,
		      const struct api_create_request *req, json_t **ret, imc_error *err)
{
	struct api_cache *cache = NULL;
	_cleanup_json_ json_t *answer = NULL, *meta = NULL;
	char id[API_ID_MAX];
	int r;

	r = new_id(c, id, err);
	if (r == 0)
		r = api_cache_new(id, req, imc_now(), &cache, err);
	if (r < 0)
		return r;
	answer = json_pack("{s:s,s:s}", "id", id, "status", "Creating");
	meta = api_cache_to_meta(cache);
	/* On disk first: a cache the client has heard of survives a crash (as Failed). */
	r = answer ? persist_meta(c, id, meta, err) : imc_err(err, ENOMEM, "out of memory");
	if (r == 0) {
		r = enqueue(c, cache, err);
		if (r < 0)
			unlink_meta(c, id, NULL);
	}
	if (r < 0) {
		api_cache_free(cache);
		return r;
	}
	*ret = steal_pointer(&answer);
	return 0;
}

int api_caches_get(struct api_caches *c, const struct api_caller *who, const char *id, json_t **ret,
		   imc_error *err)
{
	struct api_cache *cache;
	json_t *j = NULL;

	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, NULL);
	if (cache)
		j = api_cache_to_json(cache);
	pthread_mutex_unlock(&c->lock);
	if (!cache)
		return imc_err(err, ENOENT, "cache %s: not found", id);
	if (!j)
		return imc_err(err, ENOMEM, "out of memory");
	*ret = j;
	return 0;
}

int api_caches_list(struct api_caches *c, const struct api_caller *who,
		    const struct api_list_query *q, json_t **ret, imc_error *err)
{
	int r;

	pthread_mutex_lock(&c->lock);
	r = api_list_page(c->items, c->n_items, q, ret, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* Claim a cache for deletion: refused while it builds or while another delete runs. */
static int claim_for_delete(struct api_caches *c, const char *id, imc_error *err)
{
	struct api_cache *cache;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	cache = find_locked(c, id, NULL);
	if (!cache)
		r = imc_err(err, ENOENT, "cache %s: not found", id);
	else if (cache->status == API_CACHE_CREATING)
		r = imc_err(err, EBUSY,
			    "cache %s: still Creating; delete it once it is Ready or "
			    "Failed",
			    id);
	else if (cache->deleting)
		r = imc_err(err, EBUSY, "cache %s: already being deleted", id);
	else
		cache->deleting = true;
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
	if (cache && deleted)
		remove_locked(c, index);
	else if (cache)
		cache->deleting = false;
	pthread_mutex_unlock(&c->lock);
	if (deleted)
		api_cache_free(cache);
}

int api_caches_delete(struct api_caches *c, const struct api_caller *who, const char *id,
		      json_t **ret, imc_error *err)
{
	_cleanup_json_ json_t *answer = json_pack("{s:s,s:s}", "id", id, "status", "Deleted");
	int r;

	if (!answer)
		return imc_err(err, ENOMEM, "out of memory");
	r = claim_for_delete(c, id, err);
	if (r < 0)
		return r;
	r = store_remove(c->store, STORE_SNAPSHOT, id, err);
	if (r < 0 && r != -ENOENT) { /* ENOENT: a Failed cache never had one */
		finish_delete(c, id, false);
		return imc_err_wrap(err, "cache %s", id);
	}
	/* The snapshot is gone: the cache is gone, even if its metadata file lingers (the next
	 * start marks such a cache Failed). */
	finish_delete(c, id, true);
	r = unlink_meta(c, id, err);
	if (r < 0)
		return r;
	*ret = steal_pointer(&answer);
	return 0;
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
	for (size_t i = 0; i < c->n_items; i++)
		ret->caches[c->items[i]->status]++;
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
