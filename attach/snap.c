/* Snapshots as containerd's overlayfs snapshotter keeps them: snapshots/<id>/fs is a snapshot's
 * tree (an active one's overlay upper), snapshots/<id>/work its overlay workdir.  An active or
 * view snapshot with no parent is a bind mount of its fs; otherwise an overlay with the fs of
 * its committed ancestors as lowerdirs, nearest first (a view over one parent: a read-only bind
 * of that parent). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "snap_int.h"

int64_t snap_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Test builds stop here (SIGSTOP) when IMC_SNAP_STOP_AT names the point, so a test can kill -9
 * the process exactly there. */
void snap_stop_point(const char *point)
{
#ifdef IMC_TESTING
	const char *at = getenv("IMC_SNAP_STOP_AT");
	if (at && strcmp(at, point) == 0)
		raise(SIGSTOP);
#else
	(void)point;
#endif
}

int snap_check_key(const char *what, const char *key, imc_error *err)
{
	if (!key || !*key)
		return imc_err(err, EINVAL, "%s must not be empty", what);
	if (strlen(key) > SNAP_MAX_KEY)
		return imc_err(err, EINVAL, "%s longer than %d bytes", what, SNAP_MAX_KEY);
	return 0;
}

void snap_id_path(struct snap *s, int64_t id, const char *sub, char *buf, size_t size)
{
	snprintf(buf, size, "%s/snapshots/%lld%s%s", s->root, (long long)id, sub ? "/" : "",
		 sub ? sub : "");
}

void snap_mounts_free(struct snap_mounts *m)
{
	for (size_t i = 0; i < m->n; i++)
		for (size_t j = 0; j < m->m[i].n_options; j++)
			free(m->m[i].options[j]);
	*m = (struct snap_mounts){0};
}

static int add_opt(struct snap_mount *m, const char *fmt, const char *arg)
{
	int n;

	if (m->n_options == IMC_ARRAY_SIZE(m->options))
		return -E2BIG;
	n = asprintf(&m->options[m->n_options], fmt, arg);
	if (n < 0)
		return -ENOMEM;
	m->n_options++;
	return 0;
}

/* lowerdir=: the fs of rec's ancestors, nearest first, down to one served from a cache (whose
 * lower is the image's whole tree); *ret_n counts them. */
static int lowerdirs(struct snap *s, json_t *rec, struct imc_buf *out, size_t *ret_n,
		     imc_error *err)
{
	const char *parent = json_string_value(json_object_get(rec, "parent"));
	char path[4200];

	*ret_n = 0;
	while (parent && *parent) {
		json_t *p = snap_rec(s->db, parent);
		const char *cache = json_string_value(json_object_get(p, "cache"));
		if (!p)
			return imc_err(err, ENOENT, "missing parent %s", parent);
		if (cache && snap_lower_rootfs(s, p, path, sizeof(path), err) < 0)
			return err->code;
		if (!cache)
			snap_id_path(s, snap_rec_int(p, "id"), "fs", path, sizeof(path));
		if ((out->len && imc_buf_append(out, ":", 1) < 0) ||
		    imc_buf_append(out, path, strlen(path)) < 0)
			return imc_err(err, ENOMEM, "out of memory");
		(*ret_n)++;
		parent = cache ? NULL : json_string_value(json_object_get(p, "parent"));
	}
	return 0;
}

static int bind_mount(const char *source, bool ro, struct snap_mounts *ret)
{
	struct snap_mount *m = &ret->m[0];

	ret->n = 1;
	snprintf(m->type, sizeof(m->type), "bind");
	snprintf(m->source, sizeof(m->source), "%s", source);
	return add_opt(m, "%s", ro ? "ro" : "rw") < 0 || add_opt(m, "%s", "rbind") < 0 ? -ENOMEM
										       : 0;
}

static int overlay_mount(struct snap *s, json_t *rec, const char *lower, struct snap_mounts *ret)
{
	struct snap_mount *m = &ret->m[0];
	char path[4200];
	int r = 0;

	ret->n = 1;
	snprintf(m->type, sizeof(m->type), "overlay");
	snprintf(m->source, sizeof(m->source), "overlay");
	if (access("/sys/module/overlay/parameters/index", F_OK) == 0)
		r = add_opt(m, "%s", "index=off");
	if (r == 0 && snap_rec_kind(rec) == SNAP_KIND_ACTIVE) {
		snap_id_path(s, snap_rec_int(rec, "id"), "work", path, sizeof(path));
		r = add_opt(m, "workdir=%s", path);
		snap_id_path(s, snap_rec_int(rec, "id"), "fs", path, sizeof(path));
		if (r == 0)
			r = add_opt(m, "upperdir=%s", path);
	}
	return r == 0 ? add_opt(m, "lowerdir=%s", lower) : r;
}

/* No parent: a bind of the snapshot's fs; a view over one tree: a read-only bind of it;
 * anything else an overlay. */
static int rec_mounts(struct snap *s, json_t *rec, struct snap_mounts *ret, imc_error *err)
{
	const char *parent = json_string_value(json_object_get(rec, "parent"));
	enum snap_kind kind = snap_rec_kind(rec);
	struct imc_buf lower = {0};
	char path[4200];
	size_t n = 0;
	int r = 0;

	*ret = (struct snap_mounts){0};
	if (!*parent) {
		snap_id_path(s, snap_rec_int(rec, "id"), "fs", path, sizeof(path));
		r = bind_mount(path, kind == SNAP_KIND_VIEW, ret);
	} else if (lowerdirs(s, rec, &lower, &n, err) < 0) {
		imc_buf_free(&lower);
		return err->code;
	} else if (kind == SNAP_KIND_VIEW && n == 1) {
		r = bind_mount(lower.data, true, ret);
	} else {
		r = overlay_mount(s, rec, lower.data, ret);
	}
	imc_buf_free(&lower);
	if (r < 0) {
		snap_mounts_free(ret);
		return imc_err(err, -r, "cannot build the mounts");
	}
	return 0;
}

static int check_new(struct snap *s, enum snap_kind kind, const char *key, const char *parent,
		     json_t *labels, imc_error *err)
{
	json_t *p;

	if (kind != SNAP_KIND_ACTIVE && kind != SNAP_KIND_VIEW)
		return imc_err(err, EINVAL, "snapshot type %d invalid", kind);
	if (snap_check_key("key", key, err) < 0 || snap_labels_check(labels, err) < 0)
		return err->code;
	if (snap_rec(s->db, key))
		return imc_err(err, EEXIST, "snapshot %s: already exists", key);
	if (!parent || !*parent)
		return 0;
	if (!(p = snap_rec(s->db, parent)))
		return imc_err(err, ENOENT, "missing parent %s", parent);
	if (snap_rec_kind(p) != SNAP_KIND_COMMITTED)
		return imc_err(err, EINVAL, "parent %s is not a committed snapshot", parent);
	return 0;
}

int snap_make_dirs(struct snap *s, int64_t id, bool work, imc_error *err)
{
	char name[32];

	snprintf(name, sizeof(name), "%lld", (long long)id);
	if (mkdirat(s->snapfd, name, 0700) < 0)
		return imc_err_sys(err, errno, "%s/snapshots/%s", s->root, name);
	snprintf(name, sizeof(name), "%lld/fs", (long long)id);
	if (mkdirat(s->snapfd, name, 0755) < 0)
		return imc_err_sys(err, errno, "%s/snapshots/%s", s->root, name);
	snprintf(name, sizeof(name), "%lld/work", (long long)id);
	if (work && mkdirat(s->snapfd, name, 0711) < 0)
		return imc_err_sys(err, errno, "%s/snapshots/%s", s->root, name);
	return 0;
}

void snap_remove_dir(struct snap *s, int64_t id)
{
	char name[32];
	imc_error e = {0};

	snprintf(name, sizeof(name), "%lld", (long long)id);
	imc_rm_rf_at(s->snapfd, name, &e); /* what stays is Cleanup's */
}

int snap_prepare(struct snap *s, enum snap_kind kind, const char *key, const char *parent,
		 json_t *labels, struct snap_mounts *ret, imc_error *err)
{
	_cleanup_json_ json_t *db = NULL;
	int64_t id = snap_rec_int(s->db, "next_id"), now = snap_now_ns();
	json_t *rec;

	const char *ref = json_string_value(json_object_get(labels, SNAP_LABEL_REF));
	int r;

	if (check_new(s, kind, key, parent, labels, err) < 0)
		return err->code;
	if (kind == SNAP_KIND_ACTIVE && ref && *ref &&
	    (r = snap_prepare_remote(s, parent, labels, ref, err)) != -ENOENT)
		return r;
	if (snap_make_dirs(s, id, kind == SNAP_KIND_ACTIVE, err) < 0) {
		snap_remove_dir(s, id);
		return err->code;
	}
	snap_stop_point("prepare-after-mkdir");
	rec = json_pack("{s:I,s:s,s:s,s:I,s:I,s:o}", "id", (json_int_t)id, "kind",
			snap_kind_str(kind), "parent", parent ? parent : "", "created",
			(json_int_t)now, "updated", (json_int_t)now, "labels",
			snap_labels_copy(labels));
	if (!rec || snap_meta_copy(s, &db, err) < 0 ||
	    json_object_set_new(json_object_get(db, "snapshots"), key, rec) < 0 ||
	    json_object_set_new(db, "next_id", json_integer(id + 1)) < 0 ||
	    snap_meta_commit(s, &db, err) < 0) {
		snap_remove_dir(s, id);
		return err->code ? err->code : imc_err(err, ENOMEM, "out of memory");
	}
	return rec_mounts(s, snap_rec(s->db, key), ret, err);
}

int snap_mounts(struct snap *s, const char *key, struct snap_mounts *ret, imc_error *err)
{
	json_t *rec = snap_rec(s->db, key ? key : "");

	if (!rec)
		return imc_err(err, ENOENT, "snapshot %s: does not exist", key);
	if (snap_rec_kind(rec) == SNAP_KIND_COMMITTED)
		return imc_err(err, EBUSY, "snapshot %s: not active or view", key);
	return rec_mounts(s, rec, ret, err);
}

json_t *snap_labels_copy(json_t *labels)
{
	json_t *out = json_object(), *v;
	const char *k;

	json_object_foreach(labels, k, v) if (out && json_string_length(v) > 0)
	    json_object_set(out, k, v);
	return out;
}
