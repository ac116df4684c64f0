/* The snapshotter's records: one JSON document, ROOT/meta.json, replaced atomically (tmp file,
 * fsync, rename, fsync dir) by every change, so a kill -9 leaves either the old or the new one.
 * Directories are made before the record that names them and removed after it is gone: what a
 * crash leaves is a directory no record names, which snap_cleanup removes.
 *   {"version":1,"next_id":N,"snapshots":{KEY:{"id":N,"kind":"active|view|committed",
 *    "parent":"","created":NS,"updated":NS,"labels":{},"size":N,"inodes":N}}} */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "../net/net.h"
#include "snap_int.h"

#define META	 "meta.json"
#define META_MAX (256u << 20)

static const char *const kinds[] = {"unknown", "view", "active", "committed"};

const char *snap_kind_str(enum snap_kind k)
{
	return (size_t)k < IMC_ARRAY_SIZE(kinds) ? kinds[k] : "unknown";
}

enum snap_kind snap_rec_kind(json_t *rec)
{
	const char *k = json_string_value(json_object_get(rec, "kind"));

	for (size_t i = 1; k && i < IMC_ARRAY_SIZE(kinds); i++)
		if (strcmp(k, kinds[i]) == 0)
			return (enum snap_kind)i;
	return SNAP_KIND_UNKNOWN;
}

int64_t snap_rec_int(json_t *rec, const char *field)
{
	return json_integer_value(json_object_get(rec, field));
}

int snap_labels_check(json_t *labels, imc_error *err)
{
	const char *k;
	json_t *v;

	if (!labels)
		return 0;
	if (!json_is_object(labels))
		return imc_err(err, EINVAL, "labels: not an object");
	if (json_object_size(labels) > SNAP_MAX_LABELS)
		return imc_err(err, EINVAL, "more than %d labels", SNAP_MAX_LABELS);
	json_object_foreach(labels, k, v)
	{
		if (!json_is_string(v))
			return imc_err(err, EINVAL, "label %.64s: not a string", k);
		if (strlen(k) + json_string_length(v) > SNAP_MAX_LABEL)
			return imc_err(err, EINVAL,
				       "label %.64s: key and value length greater than %d bytes", k,
				       SNAP_MAX_LABEL);
	}
	return 0;
}

static int check_rec(const char *key, json_t *rec, imc_error *err)
{
	static const char *const fields[] = {"id",	"kind",	  "parent", "created",
					     "updated", "labels", "size",   "inodes",
					     "cache",	"image",  "shared", NULL};
	const char *parent;
	int64_t id;

	if (!json_is_object(rec) || imc_json_check_fields(rec, fields, "snapshot", err) < 0 ||
	    imc_json_get_int(rec, "id", true, 1, INT64_MAX, "snapshot", &id, err) < 0 ||
	    imc_json_get_string(rec, "parent", true, SNAP_MAX_KEY, "snapshot", &parent, err) < 0 ||
	    snap_rec_kind(rec) == SNAP_KIND_UNKNOWN ||
	    !json_is_integer(json_object_get(rec, "created")) ||
	    !json_is_integer(json_object_get(rec, "updated")) ||
	    snap_labels_check(json_object_get(rec, "labels"), err) < 0 ||
	    (json_object_get(rec, "cache") &&
	     (!imc_cache_id_valid(json_string_value(json_object_get(rec, "cache"))) ||
	      snap_rec_kind(rec) != SNAP_KIND_COMMITTED ||
	      !json_is_integer(json_object_get(rec, "image")) || snap_rec_int(rec, "image") < 0 ||
	      snap_rec_int(rec, "image") > 1023)) ||
	    (json_object_get(rec, "shared") &&
	     (!json_is_true(json_object_get(rec, "shared")) || !json_object_get(rec, "cache"))))
		return imc_err(err, EINVAL, "%s: snapshot %.200s: malformed record", META, key);
	return 0;
}

/* Reads meta.json (an empty store when there is none) and checks every record. */
static int meta_load(struct snap *s, imc_error *err)
{
	json_t *snaps, *rec;
	const char *key;
	int r = imc_json_read_file(s->rootfd, META, META_MAX, &s->db, err);

	if (r == -ENOENT) {
		s->db = json_pack("{s:i,s:i,s:{}}", "version", 1, "next_id", 1, "snapshots");
		return s->db ? 0 : imc_err(err, ENOMEM, "out of memory");
	}
	if (r < 0)
		return r;
	snaps = json_object_get(s->db, "snapshots");
	if (!json_is_object(snaps) || snap_rec_int(s->db, "version") != 1 ||
	    snap_rec_int(s->db, "next_id") < 1)
		return imc_err(err, EINVAL, "%s: not a snapshotter record (version 1)", META);
	json_object_foreach(snaps, key, rec) if (check_rec(key, rec, err) < 0) return err->code;
	return 0;
}

/* next_id above every numbered directory, so an id whose directory a crash left is not reused
 * before Cleanup removes it. */
static void bump_next_id(struct snap *s)
{
	int fd = openat(s->snapfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	int64_t next = snap_rec_int(s->db, "next_id");
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		char *end;
		long long id = strtoll(de->d_name, &end, 10);
		if (*end == '\0' && id >= next)
			next = id + 1;
	}
	json_object_set_new(s->db, "next_id", json_integer(next));
}

static void snap_closep(struct snap **s)
{
	snap_close(*s);
}

int snap_open(const char *root, struct snap **ret, imc_error *err)
{
	_cleanup_(snap_closep) struct snap *s = calloc(1, sizeof(*s));
	unsigned removed = 0;

	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	s->rootfd = s->snapfd = s->lockfd = s->lowersfd = -1;
	if (imc_mkdir_p(root, 0700, err) < 0)
		return err->code;
	s->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->rootfd < 0)
		return imc_err_sys(err, errno, "%s", root);
	s->lockfd = openat(s->rootfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) < 0)
		return imc_err_sys(err, errno == EWOULDBLOCK ? EBUSY : errno,
				   "%s/lock: another snapshotter uses this directory", root);
	if (mkdirat(s->rootfd, "snapshots", 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "%s/snapshots", root);
	s->snapfd = openat(s->rootfd, "snapshots", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->snapfd < 0)
		return imc_err_sys(err, errno, "%s/snapshots", root);
	if (mkdirat(s->rootfd, "lowers", 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "%s/lowers", root);
	s->lowersfd = openat(s->rootfd, "lowers", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->lowersfd < 0)
		return imc_err_sys(err, errno, "%s/lowers", root);
	if (!(s->root = strdup(root)))
		return imc_err(err, ENOMEM, "out of memory");
	if (meta_load(s, err) < 0)
		return imc_err_wrap(err, "%s", root);
	bump_next_id(s);
	if (snap_lowers_reconcile(s, &removed, err) < 0)
		return imc_err_wrap(err, "%s", root);
	if (removed)
		imc_info("repair: %s: unmounted %u lower(s) no snapshot names", root, removed);
	*ret = steal_pointer(&s);
	return 0;
}

void snap_close(struct snap *s)
{
	if (!s)
		return;
	if (s->snapfd >= 0)
		close(s->snapfd);
	if (s->lockfd >= 0)
		close(s->lockfd);
	if (s->lowersfd >= 0)
		close(s->lowersfd);
	json_decref(s->caches);
	json_decref(s->asked);
	net_client_free(s->net);
	free(s->server);
	free(s->token);
	if (s->rootfd >= 0)
		close(s->rootfd);
	json_decref(s->db);
	free(s->root);
	free(s);
}

int snap_set_store(struct snap *s, struct store *st, imc_error *err)
{
	unsigned dropped = 0;

	s->store = st;
	if (st && snap_shared_reconcile(s, &dropped, err) < 0)
		return imc_err_wrap(err, "%s", s->root);
	if (dropped)
		imc_info("repair: %s: dropped %u reference(s) on shared lowers no snapshot names",
			 s->root, dropped);
	return 0;
}

int snap_set_server(struct snap *s, const char *server, const char *token, bool auto_create,
		    imc_error *err)
{
	const struct net_config cfg = {0};

	if (!(s->server = strdup(server)) || (token && !(s->token = strdup(token))) ||
	    !(s->asked = json_object()))
		return imc_err(err, ENOMEM, "out of memory");
	s->auto_create = auto_create;
	return net_client_new(&cfg, &s->net, err);
}

int snap_meta_commit(struct snap *s, json_t **db, imc_error *err)
{
	if (imc_json_write_atomic(s->rootfd, META, *db, err) < 0)
		return imc_err_wrap(err, "%s", s->root);
	json_decref(s->db);
	s->db = steal_pointer(db);
	return 0;
}

int snap_meta_copy(struct snap *s, json_t **ret, imc_error *err)
{
	*ret = json_deep_copy(s->db);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

json_t *snap_rec(json_t *db, const char *key)
{
	return json_object_get(json_object_get(db, "snapshots"), key);
}

void snap_rec_info(json_t *db, const char *key, struct snap_info *ret)
{
	json_t *snaps = json_object_get(db, "snapshots");
	json_t *rec = json_object_get(snaps, key);

	*ret = (struct snap_info){
	    .name = key,
	    .parent = json_string_value(json_object_get(rec, "parent")),
	    .kind = snap_rec_kind(rec),
	    .created_ns = snap_rec_int(rec, "created"),
	    .updated_ns = snap_rec_int(rec, "updated"),
	    .labels = json_object_get(rec, "labels"),
	};
}

bool snap_is_tmp_meta(const char *name)
{
	return strncmp(name, "." META ".tmp.", sizeof("." META ".tmp.") - 1) == 0;
}
