/* The cache table: metadata files, the build queue and its pool of worker threads, the
 * attachments imc-attach reports, and the sweeper that expires and evicts caches.  This file
 * holds the table itself, its lookups and the requests (create, get, list, delete, metrics);
 * persist.c the metadata files, repair.c the repair on start, workers.c the builds, sweep.c
 * the sweeper, lifecycle.c open and close, attachments.c the attachments.  struct api_caches
 * and what those files share are in caches_internal.h.
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

#include "caches_internal.h"

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

struct api_cache *api_caches_find_locked(struct api_caches *c, const char *id, size_t *ret_index)
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

int api_caches_insert_locked(struct api_caches *c, struct api_cache *cache, imc_error *err)
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

void api_caches_remove_locked(struct api_caches *c, size_t index)
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

int api_caches_cmp_items(const void *a, const void *b)
{
	return api_cache_cmp(*(struct api_cache *const *)a, *(struct api_cache *const *)b);
}

/* Every status change: the rendered API object of the cache is stale from here. */
void api_caches_set_status_locked(struct api_cache *cache, enum api_cache_status status)
{
	cache->status = status;
	api_cache_touch(cache);
}

/* ---- events -----------------------------------------------------------------------------------
 */

void api_caches_notify(struct api_caches *c, enum api_event ev, const char *id, const char *msg)
{
	if (c->on_event)
		c->on_event(c->event_ctx, ev, id, msg);
}

/* ---- requests ---------------------------------------------------------------------------------
 */

const char *api_caches_tenant_of(const struct api_caller *who)
{
	return who && who->tenant ? who->tenant : API_TENANT_DEFAULT;
}

bool api_caches_owns(const struct api_cache *cache, const char *tenant)
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
		    api_caches_owns(x, tenant))
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
struct api_cache *api_caches_find_visible_locked(struct api_caches *c, const char *tenant,
						 const char *id, size_t *ret_index)
{
	struct api_cache *cache = api_caches_find_locked(c, id, ret_index);

	return cache && api_caches_owns(cache, tenant) ? cache : NULL;
}

int api_caches_not_found(imc_error *err, const char *id)
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

		if (!api_caches_owns(x, tenant))
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
		taken = api_caches_find_locked(c, id, NULL) != NULL;
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
		r = api_caches_check_quota_locked(c, cache->tenant,
						  api_caches_quota_estimate(req->size), err);
	if (r == 0 && !same)
		r = api_caches_insert_locked(c, cache, err);
	if (r == 0 && !same)
		api_caches_queue_push_locked(c, cache); /* room checked above */
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
	const char *tenant = api_caches_tenant_of(who);
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
		r = api_caches_check_quota_locked(c, tenant, api_caches_quota_estimate(req->size),
						  err);
	pthread_mutex_unlock(&c->lock);
	if (r < 0 || same) {
		api_cache_free(cache);
		return r;
	}
	answer = json_pack("{s:s,s:s}", "id", id, "status", "Creating");
	meta = api_cache_to_meta(cache);
	/* On disk first: a cache the client has heard of survives a crash. */
	r = answer ? api_caches_persist_meta(c, id, meta, err)
		   : imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = enqueue(c, cache, req, &existing, err);
	if (r < 0 || existing) {
		api_caches_unlink_meta(c, id, NULL);
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
	cache = api_caches_find_visible_locked(c, api_caches_tenant_of(who), id, NULL);
	if (!cache)
		r = api_caches_not_found(err, id);
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

		if (!api_caches_owns(x, tenant))
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

		if (!api_caches_owns(x, tenant) || !api_cache_matches(x, q) ||
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
	r = api_list_page_body(c->items, c->n_items, api_caches_tenant_of(who), q, ret, ret_len,
			       err);
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
		return list_best(c, api_caches_tenant_of(who), q, ret, err);
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
	cache = api_caches_find_visible_locked(c, tenant, id, NULL);
	if (!cache)
		r = api_caches_not_found(err, id);
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
		api_caches_set_status_locked(cache, API_CACHE_DELETING);
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
	cache = api_caches_find_locked(c, id, &index);
	if (cache && deleted) {
		api_caches_remove_locked(c, index);
	} else if (cache) {
		cache->deleting = false;
		api_cache_touch(cache);
		api_caches_set_status_locked(cache, cache->status_before);
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

	if (api_caches_persist_id(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
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
	r = claim_for_delete(c, api_caches_tenant_of(who), id, force, &cancelling, err);
	if (r < 0)
		return r;
	if (cancelling)
		return answer_cancelling(c, id, ret, err);
	r = api_caches_remove_snapshot(c, id, force, err);
	if (r < 0 && r != -ENOENT) { /* ENOENT: a Failed or Expired cache has none */
		finish_delete(c, id, false);
		return imc_err_wrap(err, "cache %s", id);
	}
	/* The snapshot is gone: the cache is gone, even if its metadata file lingers (the next
	 * start marks such a cache Failed). */
	finish_delete(c, id, true);
	api_caches_snapshot_removed(c, id);
	api_caches_drop_unused_bases_now(c);
	api_caches_wake_space_pass(c);
	r = api_caches_unlink_meta(c, id, err);
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
