/* Commit, Remove, Stat, Update, List, Usage and Cleanup, with the checks and errors of
 * containerd's snapshot storage (snapshots/storage/bolt.go). */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "snap_int.h"

/* ---- usage: blocks and inodes of a tree, each inode once (containerd's fs.DiskUsage) ---- */
struct du {
	int64_t size, inodes;
	void *seen; /* tsearch tree of the inodes with several links */
};
static __thread struct du *du_cur;

static int cmp_ino(const void *a, const void *b)
{
	ino_t x = *(const ino_t *)a, y = *(const ino_t *)b;
	return x < y ? -1 : x > y;
}

static int du_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	ino_t *key;

	if (type == FTW_NS)
		return 0;
	if (st->st_nlink > 1 && !S_ISDIR(st->st_mode)) {
		if (!(key = malloc(sizeof(*key))))
			return -1;
		*key = st->st_ino;
		if (*(ino_t **)tsearch(key, &du_cur->seen, cmp_ino) != key) {
			free(key);
			return 0;
		}
	}
	du_cur->size += (int64_t)st->st_blocks * 512;
	du_cur->inodes++;
	return 0;
}

static int disk_usage(const char *path, int64_t *ret_size, int64_t *ret_inodes, imc_error *err)
{
	struct du du = {0};
	int r;

	du_cur = &du;
	r = nftw(path, du_visit, 32, FTW_PHYS | FTW_MOUNT);
	du_cur = NULL;
	tdestroy(du.seen, free);
	if (r != 0)
		return imc_err_sys(err, errno ? errno : ENOMEM, "%s: disk usage", path);
	*ret_size = du.size;
	*ret_inodes = du.inodes;
	return 0;
}

static int get_rec(struct snap *s, const char *key, json_t **ret, imc_error *err)
{
	if (snap_check_key("key", key, err) < 0)
		return err->code;
	*ret = snap_rec(s->db, key);
	return *ret ? 0 : imc_err(err, ENOENT, "snapshot %s: does not exist", key);
}

int snap_commit(struct snap *s, const char *name, const char *key, json_t *labels, imc_error *err)
{
	_cleanup_json_ json_t *db = NULL;
	json_t *rec, *snaps, *nrec;
	int64_t size, inodes, now = snap_now_ns();
	char fs[4200];

	if (get_rec(s, key, &rec, err) < 0 || snap_check_key("name", name, err) < 0 ||
	    snap_labels_check(labels, err) < 0)
		return err->code;
	if (snap_rec_kind(rec) != SNAP_KIND_ACTIVE)
		return imc_err(err, EBUSY, "snapshot %s: not active", key);
	if (snap_rec(s->db, name))
		return imc_err(err, EEXIST, "snapshot %s: already exists", name);
	snap_id_path(s, snap_rec_int(rec, "id"), "fs", fs, sizeof(fs));
	if (disk_usage(fs, &size, &inodes, err) < 0)
		return err->code;
	snap_stop_point("commit-before-meta");
	if (snap_meta_copy(s, &db, err) < 0)
		return err->code;
	snaps = json_object_get(db, "snapshots");
	nrec = json_pack("{s:O,s:s,s:O,s:I,s:I,s:o,s:I,s:I}", "id", json_object_get(rec, "id"),
			 "kind", "committed", "parent", json_object_get(rec, "parent"), "created",
			 (json_int_t)now, "updated", (json_int_t)now, "labels",
			 snap_labels_copy(labels), "size", (json_int_t)size, "inodes",
			 (json_int_t)inodes);
	if (!nrec || json_object_set_new(snaps, name, nrec) < 0 || json_object_del(snaps, key) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return snap_meta_commit(s, &db, err);
}

static bool has_child(struct snap *s, const char *key)
{
	const char *k;
	json_t *rec;

	json_object_foreach(json_object_get(s->db, "snapshots"), k,
			    rec) if (strcmp(json_string_value(json_object_get(rec, "parent")),
					    key) == 0) return true;
	return false;
}

int snap_remove(struct snap *s, const char *key, imc_error *err)
{
	_cleanup_json_ json_t *db = NULL;
	_cleanup_free_ char *cache = NULL;
	json_t *rec;
	int64_t id;
	bool shared;

	if (get_rec(s, key, &rec, err) < 0)
		return err->code;
	if (has_child(s, key))
		return imc_err(err, EBUSY, "snapshot %s: cannot remove snapshot with child", key);
	id = snap_rec_int(rec, "id");
	shared = json_is_true(json_object_get(rec, "shared"));
	if (json_object_get(rec, "cache") &&
	    !(cache = strdup(json_string_value(json_object_get(rec, "cache")))))
		return imc_err(err, ENOMEM, "out of memory");
	if (snap_meta_copy(s, &db, err) < 0 ||
	    json_object_del(json_object_get(db, "snapshots"), key) < 0 ||
	    snap_meta_commit(s, &db, err) < 0)
		return err->code ? err->code : imc_err(err, ENOMEM, "out of memory");
	snap_stop_point("remove-after-meta");
	snap_remove_dir(s, id);
	if (cache)
		snap_lower_release(s, cache, id, shared);
	return 0;
}

int snap_stat(struct snap *s, const char *key, struct snap_info *ret, imc_error *err)
{
	json_t *rec;

	if (get_rec(s, key, &rec, err) < 0)
		return err->code;
	snap_rec_info(s->db, key, ret);
	return 0;
}

/* The labels after an update of fields (containerd's UpdateInfo). */
static int updated_labels(json_t *old, json_t *labels, const char *name, const char *const *fields,
			  size_t n, json_t **ret, imc_error *err)
{
	_cleanup_json_ json_t *out = json_deep_copy(old);

	if (!out)
		return imc_err(err, ENOMEM, "out of memory");
	if (n == 0) {
		*ret = snap_labels_copy(labels);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(fields[i], "labels") == 0) {
			json_decref(out);
			out = json_deep_copy(labels ? labels : json_object());
		} else if (strncmp(fields[i], "labels.", 7) == 0) {
			json_t *v = json_object_get(labels, fields[i] + 7);
			json_object_set_new(out, fields[i] + 7,
					    json_string(v ? json_string_value(v) : ""));
		} else {
			return imc_err(err, EINVAL, "cannot update %s field on snapshot %s",
				       fields[i], name);
		}
		if (!out)
			return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = snap_labels_copy(out);
	return 0;
}

int snap_update(struct snap *s, const char *name, json_t *labels, const char *const *fields,
		size_t n, struct snap_info *ret, imc_error *err)
{
	_cleanup_json_ json_t *db = NULL, *nl = NULL;
	json_t *rec;

	if (get_rec(s, name, &rec, err) < 0 || snap_labels_check(labels, err) < 0 ||
	    updated_labels(json_object_get(rec, "labels"), labels, name, fields, n, &nl, err) < 0)
		return err->code;
	if (!nl || snap_labels_check(nl, err) < 0)
		return err->code ? err->code : imc_err(err, ENOMEM, "out of memory");
	if (snap_meta_copy(s, &db, err) < 0)
		return err->code;
	rec = snap_rec(db, name);
	if (json_object_set(rec, "labels", nl) < 0 ||
	    json_object_set_new(rec, "updated", json_integer(snap_now_ns())) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (snap_meta_commit(s, &db, err) < 0)
		return err->code;
	snap_rec_info(s->db, name, ret);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int snap_walk(struct snap *s, const struct snap_filter *filters, size_t n,
	      int (*fn)(const struct snap_info *info, void *ud), void *ud, imc_error *err)
{
	json_t *snaps = json_object_get(s->db, "snapshots"), *rec;
	size_t count = json_object_size(snaps), i = 0;
	_cleanup_free_ const char **keys = calloc(count ? count : 1, sizeof(*keys));
	const char *k;
	int r = 0;

	if (!keys)
		return imc_err(err, ENOMEM, "out of memory");
	json_object_foreach(snaps, k, rec) keys[i++] = k;
	qsort(keys, count, sizeof(*keys), cmp_str);
	for (i = 0; i < count && r == 0; i++) {
		struct snap_info info;
		bool match = n == 0;
		snap_rec_info(s->db, keys[i], &info);
		for (size_t f = 0; f < n && !match; f++)
			match = snap_filter_match(&filters[f], &info);
		if (match)
			r = fn(&info, ud);
	}
	return r;
}

int snap_usage(struct snap *s, const char *key, int64_t *ret_size, int64_t *ret_inodes,
	       imc_error *err)
{
	json_t *rec;
	char fs[4200];

	if (get_rec(s, key, &rec, err) < 0)
		return err->code;
	if (snap_rec_kind(rec) != SNAP_KIND_ACTIVE) {
		*ret_size = snap_rec_int(rec, "size");
		*ret_inodes = snap_rec_int(rec, "inodes");
		return 0;
	}
	snap_id_path(s, snap_rec_int(rec, "id"), "fs", fs, sizeof(fs));
	return disk_usage(fs, ret_size, ret_inodes, err);
}

static bool id_in_use(struct snap *s, const char *name)
{
	json_t *rec;
	const char *k;
	char *end;
	long long id = strtoll(name, &end, 10);

	if (*end || end == name)
		return false;
	json_object_foreach(json_object_get(s->db, "snapshots"), k,
			    rec) if (snap_rec_int(rec, "id") == id) return true;
	return false;
}

/* Removes the entries of dirfd that keep(name) refuses. */
static int sweep(struct snap *s, int dirfd, bool (*keep)(struct snap *, const char *),
		 unsigned *removed, imc_error *err)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "%s: cannot list", s->root);
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    keep(s, de->d_name))
			continue;
		if (imc_rm_rf_at(dirfd, de->d_name, err) < 0)
			return imc_err_wrap(err, "cleanup");
		(*removed)++;
	}
	return 0;
}

static bool keep_root_entry(struct snap *s, const char *name)
{
	return !snap_is_tmp_meta(name);
}

int snap_cleanup(struct snap *s, unsigned *ret_removed, imc_error *err)
{
	unsigned removed = 0;

	if (sweep(s, s->snapfd, id_in_use, &removed, err) < 0 ||
	    sweep(s, s->rootfd, keep_root_entry, &removed, err) < 0 ||
	    snap_lowers_reconcile(s, &removed, err) < 0 ||
	    (s->store && snap_shared_reconcile(s, &removed, err) < 0))
		return err->code;
	*ret_removed = removed;
	return 0;
}
