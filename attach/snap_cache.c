/* Remote snapshots from caches.  A Prepare whose containerd.io/snapshot.ref label names the top
 * ChainID of an image in a cache of the local store (the agent's, --state-dir) commits a snapshot
 * of that name at once and answers AlreadyExists, so containerd neither fetches nor unpacks the
 * layer.  Only top ChainIDs are served: a cache holds each image flattened, so a prefix of its
 * chain has no tree of its own there; containerd unpacks such layers itself, and whatever builds
 * on a top (a container, or another image's next layer) gets the cache's /images/<n>/rootfs as
 * its lowest lowerdir.
 *
 * The catalog (ChainID -> cache, image) is read from each snapshot's /imcache.json through a
 * detached read-only mount, once per snapshot per process.  A snapshot served from a cache takes
 * the host's shared lower of the cache (attach/lower.c, <state>/lowers/<cache id>, the one
 * imc-attach's overlay attaches use; lazy from imcd with --server when the store lacks the
 * cache): a reference "snap-<id>" per snapshot, its record marked "shared".  The snapshot's
 * directory is made before the reference and the reference before the record: a crash leaves
 * at most a reference no record has, which snap_shared_reconcile (at start and in Cleanup)
 * drops, releasing the lower.
 *
 * Records written before ("cache" without "shared") keep the snapshotter's own lower of the
 * cache, ROOT/lowers/<cache id> (its snapshot on a read-only autoclear loop device, ext4 ro,noload,
 * once per cache; the records naming the cache are its references) until they are removed;
 * snap_lowers_reconcile unmounts those no such record names. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "../oci/oci.h"
#include "../store/store.h"
#include "../dist/dist.h"
#include "internal.h"
#include "snap_int.h"

#define LOWERS		   "lowers"
#define CATALOG_MAX	   (16u << 20) /* bytes of /imcache.json read */
#define LOWER_OPTIONS	   "noload"
#define CHAIN_ID_LEN	   (7 + IMC_SHA256_HEX_LEN)
#define MAX_CATALOG_IMAGES 1024

/* The catalog entry of a cache's manifest: {"createdAt","tops":[ChainID or null per image]}. */
static json_t *catalog_entry(json_t *m, const char *id)
{
	json_t *images = json_object_get(m, "images"), *image;
	const char *kind = json_string_value(json_object_get(m, "kind"));
	json_t *tops = json_array();
	size_t i;

	/* A base (kind "base") is the builder's, not a Ready cache. */
	if (kind && strcmp(kind, "base") == 0)
		json_array_clear(tops);
	else
		json_array_foreach(images, i, image)
		{
			char top[CHAIN_ID_LEN + 1];
			imc_error e = {0};
			if (i >= MAX_CATALOG_IMAGES)
				break;
			if (oci_image_top_chain_id(image, top, &e) < 0) {
				imc_warn("cache %s: image %zu: %s: not served", id, i, e.msg);
				json_array_append_new(tops, json_null());
			} else {
				json_array_append_new(tops, json_string(top));
			}
		}
	return json_pack("{s:s,s:o}", "createdAt",
			 json_string_value(json_object_get(m, "createdAt")) ?: "", "tops", tops);
}

/* Reads a snapshot's /imcache.json through a detached read-only mount (gone when mfd closes),
 * then deactivates the device: a loop device would go by itself, a thin one stays until its last
 * user deactivates it. */
static int read_manifest(struct snap *s, const char *id, json_t **ret, imc_error *err)
{
	struct store_dev dev = {.fd = -1};
	int mfd = -1;
	imc_error ignored;
	int r = store_activate(s->store, STORE_SNAPSHOT, id, STORE_ACTIVATE_READ_ONLY, &dev, err);

	if (r < 0)
		return r;
	r = imc_priv_fsmount("ext4", dev.path, LOWER_OPTIONS, true, &mfd, err);
	if (r == 0)
		r = imc_json_read_file(mfd, "imcache.json", CATALOG_MAX, ret, err);
	if (mfd >= 0)
		close(mfd);
	store_deactivate(s->store, STORE_SNAPSHOT, id, &dev, &ignored);
	return r;
}

/* Brings s->caches up to the store's snapshots: new ones read, vanished ones dropped. */
static int catalog_refresh(struct snap *s, imc_error *err)
{
	char **ids = NULL;
	size_t n = 0;
	_cleanup_json_ json_t *next = json_object();

	if (!next)
		return imc_err(err, ENOMEM, "out of memory");
	if (store_list(s->store, STORE_SNAPSHOT, &ids, &n, err) < 0)
		return imc_err_wrap(err, "caches");
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_object_get(s->caches, ids[i]);
		_cleanup_json_ json_t *m = NULL;
		imc_error e2 = {0};

		if (!imc_cache_id_valid(ids[i]))
			continue; /* a base, or no cache's */
		if (e) {
			json_object_set(next, ids[i], e);
			continue;
		}
		if (read_manifest(s, ids[i], &m, &e2) < 0)
			imc_warn("cache %s: %s: not served", ids[i], e2.msg);
		e = m ? catalog_entry(m, ids[i]) : json_pack("{s:s,s:[]}", "createdAt", "", "tops");
		imc_debug("catalog: cache %s: %zu image(s)", ids[i],
			  json_array_size(json_object_get(e, "tops")));
		if (e)
			json_object_set_new(next, ids[i], e);
	}
	store_list_free(ids, n);
	json_decref(s->caches);
	s->caches = steal_pointer(&next);
	return 0;
}

/* The newest cache (createdAt, then the larger id) with an image whose top is chain_id. */
static int catalog_find(struct snap *s, const char *chain_id, const char **ret_id,
			unsigned *ret_image)
{
	const char *id, *best = NULL, *best_at = "";
	json_t *e, *top;
	size_t i;

	json_object_foreach(s->caches, id, e)
	{
		const char *at = json_string_value(json_object_get(e, "createdAt"));
		json_array_foreach(json_object_get(e, "tops"), i, top)
		{
			int c;
			if (!json_is_string(top) || strcmp(json_string_value(top), chain_id) != 0)
				continue;
			c = best ? strcmp(at, best_at) : 1;
			if (c > 0 || (c == 0 && strcmp(id, best) > 0)) {
				best = id;
				best_at = at;
				*ret_image = (unsigned)i;
			}
			break;
		}
	}
	*ret_id = best;
	return best ? 0 : -ENOENT;
}

static void ref_name(int64_t id, char ret[32])
{
	snprintf(ret, 32, ATTACH_SNAP_REF_PREFIX "%lld", (long long)id);
}

int snap_shared_get(struct snap *s, const char *cache_id, int64_t id, char ret_root[4096],
		    imc_error *err)
{
	const struct dist_fetch_config fc = {.server = s->server, .token = s->token};
	char aid[32];

	if (!s->store)
		return imc_err(err, ENOENT, "cache %s: no store to serve it from", cache_id);
	ref_name(id, aid);
	return lower_acquire(s->store, cache_id, aid, NULL, s->server ? &fc : NULL, ret_root, err);
}

static bool lower_mounted(struct snap *s, const char *cache_id)
{
	struct stat dir, st;

	return fstat(s->lowersfd, &dir) == 0 &&
	       fstatat(s->lowersfd, cache_id, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       S_ISDIR(st.st_mode) && st.st_dev != dir.st_dev;
}

/* Mounts the cache's lower unless it is mounted already. */
static int snap_lower_get(struct snap *s, const char *cache_id, imc_error *err)
{
	struct store_dev dev = {.fd = -1};
	char path[4200];
	int r;

	if (lower_mounted(s, cache_id))
		return 0;
	if (!s->store)
		return imc_err(err, ENOENT, "cache %s: no store to serve it from", cache_id);
	if (mkdirat(s->lowersfd, cache_id, 0755) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "%s/" LOWERS "/%s", s->root, cache_id);
	r = store_activate(s->store, STORE_SNAPSHOT, cache_id, STORE_ACTIVATE_READ_ONLY, &dev, err);
	if (r < 0)
		return imc_err_wrap(err, "cache %s", cache_id);
	snprintf(path, sizeof(path), "%s/" LOWERS "/%s", s->root, cache_id);
	r = imc_priv_mount_fs("ext4", dev.path, LOWER_OPTIONS, true, path, err);
	close(dev.fd); /* autoclear: the mount holds the device from here */
	if (r == 0)
		imc_info("cache %s: lower mounted at %s", cache_id, path);
	return r;
}

int snap_lower_rootfs(struct snap *s, json_t *rec, char *buf, size_t size, imc_error *err)
{
	const char *cache = json_string_value(json_object_get(rec, "cache"));
	unsigned image = (unsigned)snap_rec_int(rec, "image");
	char root[4096];

	if (json_is_true(json_object_get(rec, "shared"))) {
		if (snap_shared_get(s, cache, snap_rec_int(rec, "id"), root, err) < 0)
			return err->code;
		snprintf(buf, size, "%s/images/%u/rootfs", root, image);
		return 0;
	}
	if (snap_lower_get(s, cache, err) < 0)
		return err->code;
	snprintf(buf, size, "%s/" LOWERS "/%s/images/%u/rootfs", s->root, cache, image);
	return 0;
}

static size_t lower_refs(struct snap *s, const char *cache_id)
{
	const char *k, *c;
	json_t *rec;
	size_t n = 0;

	json_object_foreach(json_object_get(s->db, "snapshots"), k, rec)
	{
		c = json_string_value(json_object_get(rec, "cache"));
		n += c && strcmp(c, cache_id) == 0 && !json_is_true(json_object_get(rec, "shared"));
	}
	return n;
}

static int lower_put(struct snap *s, const char *cache_id, imc_error *err)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/" LOWERS "/%s", s->root, cache_id);
	if (lower_mounted(s, cache_id) && imc_priv_umount(path, MNT_DETACH, err) < 0)
		return err->code;
	if (unlinkat(s->lowersfd, cache_id, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "%s", path);
	imc_info("cache %s: lower released", cache_id);
	return 0;
}

void snap_lower_release(struct snap *s, const char *cache_id, int64_t id, bool shared)
{
	imc_error e = {0};
	char aid[32];

	ref_name(id, aid);
	if (shared && s->store && lower_release_now(s->store, cache_id, aid, &e) < 0)
		imc_warn("cache %s: shared lower: %s", cache_id, e.msg);
	else if (!shared && lower_refs(s, cache_id) == 0 && lower_put(s, cache_id, &e) < 0)
		imc_warn("cache %s: %s", cache_id, e.msg);
}

/* A "snap-<id>" reference lives while a record has that id. */
static bool snap_ref_live(const char *name, void *ctx)
{
	struct snap *s = ctx;
	const char *k;
	json_t *rec;
	char aid[32];

	json_object_foreach(json_object_get(s->db, "snapshots"), k, rec)
	{
		ref_name(snap_rec_int(rec, "id"), aid);
		if (json_is_true(json_object_get(rec, "shared")) && strcmp(aid, name) == 0)
			return true;
	}
	return false;
}

int snap_shared_reconcile(struct snap *s, unsigned *ret_dropped, imc_error *err)
{
	return lower_drop_snap_refs(s->store, snap_ref_live, s, ret_dropped, err);
}

int snap_lowers_reconcile(struct snap *s, unsigned *ret_removed, imc_error *err)
{
	int fd = openat(s->lowersfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "%s/" LOWERS, s->root);
	}
	while ((de = readdir(d))) {
		/* Only ours: a cache id (a lower) no record names; anything else is left alone. */
		if (!imc_cache_id_valid(de->d_name) || lower_refs(s, de->d_name) > 0)
			continue;
		if (lower_put(s, de->d_name, err) < 0)
			return err->code;
		(*ret_removed)++;
	}
	return 0;
}

int snap_shared_image(struct snap *s, const char *cache_id, const char *root, const char *ref,
		      unsigned *ret_image, imc_error *err)
{
	_cleanup_close_ int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_json_ json_t *m = NULL, *e = NULL;
	json_t *top;
	size_t i;

	if (fd < 0)
		return imc_err_sys(err, errno, "%s", root);
	if (imc_json_read_file(fd, "imcache.json", CATALOG_MAX, &m, err) < 0)
		return imc_err_wrap(err, "cache %s", cache_id);
	if (!(e = catalog_entry(m, cache_id)))
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(json_object_get(e, "tops"), i, top)
	{
		if (json_is_string(top) && strcmp(json_string_value(top), ref) == 0) {
			*ret_image = (unsigned)i;
			return 0;
		}
	}
	return imc_err(err, ENOENT, "cache %s: no image whose top is %s", cache_id, ref);
}

/* The lower that serves ref for the new snapshot id, the host's shared lower of the cache: a
 * cache of the store (the catalog), else, with --server, one imcd has (lazily attached when the
 * store lacks it).  -ENOENT: none. */
static int serve_from(struct snap *s, json_t *labels, const char *ref, int64_t id,
		      char ret_cache[SNAP_CACHE_ID_MAX], unsigned *ret_image, bool *ret_shared,
		      imc_error *err)
{
	const char *cache;

	if (catalog_refresh(s, err) < 0) {
		imc_warn("%s: no snapshot served from caches", err->msg);
		*err = (imc_error){0};
		return -ENOENT;
	}
	*ret_shared = true;
	if (catalog_find(s, ref, &cache, ret_image) == 0) {
		char root[4096];
		snprintf(ret_cache, SNAP_CACHE_ID_MAX, "%s", cache);
		return snap_shared_get(s, cache, id, root, err);
	}
	return snap_match_remote(s, labels, ref, id, ret_cache, ret_image, err);
}

static json_t *remote_rec(int64_t id, const char *parent, json_t *labels, const char *cache,
			  unsigned image, bool shared)
{
	json_t *l = snap_labels_copy(labels), *rec;
	int64_t now = snap_now_ns();

	json_object_set_new(l, SNAP_LABEL_CACHE_ID, json_string(cache));
	rec = json_pack("{s:I,s:s,s:s,s:I,s:I,s:o,s:I,s:I,s:s,s:I}", "id", (json_int_t)id, "kind",
			"committed", "parent", parent ? parent : "", "created", (json_int_t)now,
			"updated", (json_int_t)now, "labels", l, "size", (json_int_t)0, "inodes",
			(json_int_t)0, "cache", cache, "image", (json_int_t)image);
	if (rec && shared)
		json_object_set_new(rec, "shared", json_true());
	return rec;
}

/* The remote path of snap_prepare: -ENOENT when no cache serves ref (the caller goes on as for
 * any layer), -EEXIST when the snapshot ref is committed (from a cache or already there).  The
 * snapshot's directory comes first (a shared lower's reference lives while it is there), then
 * the lower, then the record. */
int snap_prepare_remote(struct snap *s, const char *parent, json_t *labels, const char *ref,
			imc_error *err)
{
	_cleanup_json_ json_t *db = NULL;
	int64_t id = snap_rec_int(s->db, "next_id");
	char cache[SNAP_CACHE_ID_MAX];
	unsigned image = 0;
	bool shared = false;
	json_t *rec;
	int r;

	if (snap_rec(s->db, ref))
		return imc_err(err, EEXIST, "snapshot %s: already exists", ref);
	if (!s->store) {
		imc_debug("snapshot %s: no store", ref);
		return -ENOENT;
	}
	if (snap_make_dirs(s, id, false, err) < 0) {
		snap_remove_dir(s, id);
		return err->code;
	}
	if ((r = serve_from(s, labels, ref, id, cache, &image, &shared, err)) < 0) {
		snap_remove_dir(s, id);
		if (r != -ENOENT)
			return r;
		imc_debug("snapshot %s: no cache serves it%s%s", ref, err->msg[0] ? ": " : "",
			  err->msg);
		*err = (imc_error){0};
		return -ENOENT;
	}
	snap_stop_point("remote-after-mount");
	rec = remote_rec(id, parent, labels, cache, image, shared);
	if (!rec || snap_meta_copy(s, &db, err) < 0 ||
	    json_object_set_new(json_object_get(db, "snapshots"), ref, rec) < 0 ||
	    json_object_set_new(db, "next_id", json_integer(id + 1)) < 0 ||
	    snap_meta_commit(s, &db, err) < 0) {
		snap_remove_dir(s, id);
		snap_lower_release(s, cache, id, shared);
		return err->code ? err->code : imc_err(err, ENOMEM, "out of memory");
	}
	imc_info("snapshot %s: from cache %s image %u%s", ref, cache, image,
		 shared ? " (shared lower)" : "");
	return imc_err(err, EEXIST, "snapshot %s: already exists (cache %s)", ref, cache);
}
