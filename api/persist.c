/* The cache table's metadata files: caches/<id>.json written (under persist_lock; out of space,
 * a status change goes through a reserve file), and all of them loaded on start. */
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
int api_caches_persist_meta(struct api_caches *c, const char *id, json_t *meta, imc_error *err)
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
	cache = api_caches_find_locked(c, id, NULL);
	if (cache && written)
		cache->persisted_status = status;
	if (cache)
		cache->meta_dirty = !written;
	pthread_mutex_unlock(&c->lock);
}

/* Persist a cache by id, for a caller that no longer holds the lock: a cache deleted meanwhile
 * is not written back (persist_lock orders this against api_caches_unlink_meta).  A write that
 * fails leaves the cache marked dirty: the sweeper writes it once there is room. */
int api_caches_persist_id(struct api_caches *c, const char *id, imc_error *err)
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
	cache = api_caches_find_locked(c, id, NULL);
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
int api_caches_persist(struct api_caches *c, struct api_cache *cache, imc_error *err)
{
	char id[API_ID_MAX];

	pthread_mutex_lock(&c->lock);
	memcpy(id, cache->id, sizeof(id));
	pthread_mutex_unlock(&c->lock);
	return api_caches_persist_id(c, id, err);
}

int api_caches_unlink_meta(struct api_caches *c, const char *id, imc_error *err)
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
	if (api_caches_insert_locked(c, cache, err) < 0) {
		api_cache_free(cache);
		return err ? err->code : -ENOMEM;
	}
	return 0;
}

int api_caches_load_all(struct api_caches *c, json_t *repairs, imc_error *err)
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
		qsort(c->items, c->n_items, sizeof(*c->items), api_caches_cmp_items);
	return 0;
}

void api_caches_remove_leftover(struct api_caches *c, enum store_kind kind, const char *id,
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
