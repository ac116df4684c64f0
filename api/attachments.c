/* The attachments imc-attach reports on a cache (POST/DELETE/GET .../attachments). */
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
	cache = api_caches_find_visible_locked(c, api_caches_tenant_of(who), id, NULL);
	r = cache ? attach_locked(c, cache, aid, &host, ret, ret_status, err)
		  : api_caches_not_found(err, id);
	pthread_mutex_unlock(&c->lock);
	if (r < 0 || *ret_status != 201)
		return r;
	__atomic_add_fetch(&c->metrics.attaches, 1, __ATOMIC_RELAXED);
	/* Best effort: the attachment is in memory either way; a lost write is logged. */
	if (api_caches_persist_id(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
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
	cache = api_caches_find_visible_locked(c, api_caches_tenant_of(who), id, NULL);
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
			     : api_caches_not_found(err, id);
	}
	__atomic_add_fetch(&c->metrics.detaches, 1, __ATOMIC_RELAXED);
	if (api_caches_persist_id(c, id, &e) < 0)
		api_caches_notify(c, API_EVENT_PERSIST_FAILED, id, e.msg);
	return 0;
}

static int api_caches_attachments(struct api_caches *c, const struct api_caller *who,
				  const char *id, json_t **ret, imc_error *err)
{
	_cleanup_json_ json_t *items = json_array();
	struct api_cache *cache;
	int r = items ? 0 : -ENOMEM;

	pthread_mutex_lock(&c->lock);
	cache = api_caches_find_visible_locked(c, api_caches_tenant_of(who), id, NULL);
	for (size_t i = 0; r == 0 && cache && i < cache->n_attachments; i++)
		r = json_array_append_new(items, attachment_json(id, &cache->attachments[i]));
	pthread_mutex_unlock(&c->lock);
	if (!cache)
		return api_caches_not_found(err, id);
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
