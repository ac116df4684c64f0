/* The image resolver of match=best (docs/api.md): an image's layer digests from its registry,
 * never inside a request.  A lookup answers from a small cache of ref -> layers; a ref it does
 * not know is queued for the resolver's own threads and the lookup says -EINPROGRESS (503 with
 * Retry-After) at once.  Every resolve has a deadline: a registry that accepts connections and
 * never answers holds a resolver thread that long, never a request thread, and the outcome (the
 * layers, or why not, -ETIMEDOUT past the deadline) is kept for the next lookups. */
#include <pthread.h>
#include <string.h>

#include "../builder/builder.h"
#include "api.h"

#define RESOLVE_THREADS	     2
#define RESOLVE_ENTRIES	     256
#define RESOLVE_TIMEOUT_MS   30000u
#define NS_PER_S	     1000000000ULL
#define RESOLVE_DIGEST_TTL_S 3600 /* a digest ref names content that never changes */

enum entry_state { ENTRY_FREE, ENTRY_QUEUED, ENTRY_RUNNING, ENTRY_DONE, ENTRY_FAILED };

struct entry {
	enum entry_state state;
	char *ref;
	char *platform;	  /* os/arch[/variant] of the image asked for */
	json_t *layers;	  /* ENTRY_DONE: the digests, in order */
	imc_error err;	  /* ENTRY_FAILED: why */
	uint64_t expires; /* DONE, FAILED: monotonic ns after which it is resolved again */
	uint64_t tick;	  /* queue order (QUEUED), last use (DONE, FAILED) */
};

struct api_resolver {
	struct builder_opts opts;
	uint64_t timeout_ns;
	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;  /* an entry was queued, or stopping */
	struct entry entries[RESOLVE_ENTRIES];
	uint64_t tick;
	bool stopping; /* also read without the lock (atomic) by resolves in flight */
	pthread_t threads[RESOLVE_THREADS];
	unsigned n_threads;
};

static void entry_clear(struct entry *e)
{
	free(e->ref);
	free(e->platform);
	json_decref(e->layers);
	*e = (struct entry){0};
}

static struct entry *find_locked(struct api_resolver *r, const char *ref, const char *platform)
{
	for (size_t i = 0; i < RESOLVE_ENTRIES; i++) {
		const struct entry *e = &r->entries[i];

		if (e->state != ENTRY_FREE && strcmp(e->ref, ref) == 0 &&
		    strcmp(e->platform, platform) == 0)
			return &r->entries[i];
	}
	return NULL;
}

/* A free entry, else the least recently used settled one (dropped); NULL when every entry is
 * queued or running. */
static struct entry *take_slot_locked(struct api_resolver *r)
{
	struct entry *lru = NULL;

	for (size_t i = 0; i < RESOLVE_ENTRIES; i++) {
		struct entry *e = &r->entries[i];

		if (e->state == ENTRY_FREE)
			return e;
		if ((e->state == ENTRY_DONE || e->state == ENTRY_FAILED) &&
		    (!lru || e->tick < lru->tick))
			lru = e;
	}
	if (lru)
		entry_clear(lru);
	return lru;
}

static int in_progress(const char *ref, imc_error *err)
{
	return imc_err(err, EINPROGRESS,
		       "image %.300s: being resolved from its registry; retry shortly", ref);
}

static int queue_locked(struct api_resolver *r, const char *ref, const char *platform,
			imc_error *err)
{
	struct entry *e;

	if (r->stopping)
		return imc_err(err, ESHUTDOWN, "imcd is shutting down");
	e = take_slot_locked(r);
	if (!e)
		return imc_err(err, EDQUOT, "%d images are being resolved already; retry later",
			       RESOLVE_ENTRIES);
	e->ref = strdup(ref);
	e->platform = strdup(platform);
	if (!e->ref || !e->platform) {
		entry_clear(e);
		return imc_err(err, ENOMEM, "out of memory");
	}
	e->state = ENTRY_QUEUED;
	e->tick = ++r->tick;
	pthread_cond_signal(&r->cond);
	return in_progress(ref, err);
}

static int answer_locked(struct api_resolver *r, struct entry *e, json_t **ret, imc_error *err)
{
	e->tick = ++r->tick;
	switch (e->state) {
	case ENTRY_DONE:
		/* A copy of its own: the caller may hold it while another thread reads ours. */
		*ret = json_deep_copy(e->layers);
		return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
	case ENTRY_FAILED:
		if (err)
			*err = e->err;
		return e->err.code;
	default:
		return in_progress(e->ref, err);
	}
}

int api_resolver_layers(struct api_resolver *r, const char *ref, const char *platform, json_t **ret,
			imc_error *err)
{
	uint64_t now = imc_monotonic_ns();
	struct entry *e;
	int rc;

	pthread_mutex_lock(&r->lock);
	e = find_locked(r, ref, platform);
	if (e && (e->state == ENTRY_DONE || e->state == ENTRY_FAILED) && now >= e->expires) {
		entry_clear(e);
		e = NULL;
	}
	rc = e ? answer_locked(r, e, ret, err) : queue_locked(r, ref, platform, err);
	pthread_mutex_unlock(&r->lock);
	return rc;
}

/* ---- the resolver's threads -------------------------------------------------------------------
 */

struct job {
	struct api_resolver *r;
	uint64_t deadline;
};

static bool job_cancelled(void *ctx)
{
	const struct job *j = ctx;

	return __atomic_load_n(&j->r->stopping, __ATOMIC_RELAXED) ||
	       imc_monotonic_ns() >= j->deadline;
}

/* The "layers"[].digest of an image's description, as a new array. */
static json_t *layer_digests(json_t *desc)
{
	json_t *out = json_array(), *l;
	size_t i;

	json_array_foreach(json_object_get(desc, "layers"), i, l)
	{
		if (out && json_array_append(out, json_object_get(l, "digest")) < 0) {
			json_decref(out);
			out = NULL;
		}
	}
	return out;
}

/* Why a resolve failed, as the lookups answer it: past the deadline -ETIMEDOUT, while stopping
 * -ESHUTDOWN, anything else (but memory) -ENOENT: there is nothing to compare with. */
static int resolve_failed(const struct job *j, const char *ref, imc_error *err)
{
	if (__atomic_load_n(&j->r->stopping, __ATOMIC_RELAXED))
		return imc_err(err, ESHUTDOWN, "imcd is shutting down");
	if (imc_monotonic_ns() >= j->deadline)
		return imc_err(err, ETIMEDOUT,
			       "image %.300s: its registry did not answer within %llu s", ref,
			       (unsigned long long)(j->r->timeout_ns / NS_PER_S));
	imc_err_wrap(err, "image %.300s", ref);
	if (err && err->code != -ENOMEM)
		err->code = -ENOENT;
	return err ? err->code : -ENOENT;
}

static int resolve_one(struct api_resolver *r, const char *ref, const char *platform, json_t **ret,
		       imc_error *err)
{
	struct job j = {.r = r, .deadline = imc_monotonic_ns() + r->timeout_ns};
	struct builder_opts o = r->opts;
	struct builder_image *img = NULL;
	_cleanup_json_ json_t *desc = NULL;

	o.cancelled = job_cancelled;
	o.cancel_ctx = &j;
	o.platform = platform;
	if (builder_image_resolve(&o, ref, &img, err) < 0)
		return resolve_failed(&j, ref, err);
	desc = builder_image_describe(img);
	builder_image_free(img);
	*ret = desc ? layer_digests(desc) : NULL;
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static struct entry *next_queued_locked(struct api_resolver *r)
{
	struct entry *first = NULL;

	for (size_t i = 0; i < RESOLVE_ENTRIES; i++) {
		struct entry *e = &r->entries[i];

		if (e->state == ENTRY_QUEUED && (!first || e->tick < first->tick))
			first = e;
	}
	return first;
}

/* The outcome of e's resolve, kept until it expires: layers for the TTL of its kind of ref,
 * a failure for API_RESOLVE_FAIL_TTL_S. */
static void settle_locked(struct api_resolver *r, struct entry *e, json_t *layers, int rc,
			  const imc_error *err)
{
	uint64_t ttl = (uint64_t)API_RESOLVE_FAIL_TTL_S;

	if (rc == 0) {
		e->layers = layers;
		e->state = ENTRY_DONE;
		ttl = strchr(e->ref, '@') ? RESOLVE_DIGEST_TTL_S : API_RESOLVE_TTL_S;
	} else {
		e->err = *err;
		if (!e->err.code)
			e->err.code = rc;
		e->state = ENTRY_FAILED;
	}
	e->expires = imc_monotonic_ns() + ttl * NS_PER_S;
	e->tick = ++r->tick;
}

static void *resolver_main(void *arg)
{
	struct api_resolver *r = arg;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct entry *e = NULL;
		json_t *layers = NULL;
		imc_error err = {0};
		int rc;

		while (!r->stopping && !(e = next_queued_locked(r)))
			pthread_cond_wait(&r->cond, &r->lock);
		if (r->stopping)
			break;
		/* A running entry is never dropped: its ref stays while the lock is let go. */
		e->state = ENTRY_RUNNING;
		pthread_mutex_unlock(&r->lock);
		rc = resolve_one(r, e->ref, e->platform, &layers, &err);
		pthread_mutex_lock(&r->lock);
		settle_locked(r, e, layers, rc, &err);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/* ---- start and stop ---------------------------------------------------------------------------
 */

int api_resolver_start(const struct api_resolver_config *cfg, struct api_resolver **ret,
		       imc_error *err)
{
	struct api_resolver *r = calloc(1, sizeof(*r));
	int rc = 0;

	if (!r)
		return imc_err(err, ENOMEM, "out of memory");
	r->opts = cfg->opts;
	r->timeout_ns =
	    (uint64_t)(cfg->timeout_ms ? cfg->timeout_ms : RESOLVE_TIMEOUT_MS) * 1000000ULL;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	for (; r->n_threads < RESOLVE_THREADS && rc == 0; r->n_threads++) {
		rc = -pthread_create(&r->threads[r->n_threads], NULL, resolver_main, r);
		if (rc < 0)
			break;
	}
	if (rc < 0) {
		api_resolver_stop(r);
		return imc_err_sys(err, -rc, "resolver thread");
	}
	*ret = r;
	return 0;
}

void api_resolver_stop(struct api_resolver *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	__atomic_store_n(&r->stopping, true, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	/* A resolve in flight sees stopping within about a second (its transfer's progress). */
	for (unsigned i = 0; i < r->n_threads; i++)
		pthread_join(r->threads[i], NULL);
	for (size_t i = 0; i < RESOLVE_ENTRIES; i++)
		entry_clear(&r->entries[i]);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}
