/* The thin driver: every volume, snapshot and clone is a thin device in one device-mapper thin
 * pool.  create = "create_thin", seal = the volume becomes the snapshot (an origin no one writes
 * again), clone = "create_snap" of it, activate = a "thin" target at /dev/mapper/imc-<h>-<kind>-
 * <id>, remove = "delete".  Everything goes through libdevmapper ioctls, never dmsetup.
 *
 * The pool is built from configured data and metadata devices, or from sparse files in
 * <state>/thin/ on loop devices (the embedded pool).  Which thin device id belongs to which
 * object is recorded in <state>/thin/devices.json together with the pool's transaction id: every
 * change of the pool's metadata is written there first as a pending operation, then done in the
 * pool, then the pool's transaction id is moved on, then the record is committed.  On open the
 * two are reconciled both ways (see thin_reconcile).
 *
 * Over 800 lines: one driver behind the ops table, whose pool, record (devices.json) and
 * reconciliation of the two are one transaction protocol, kept in one file so that its steps are
 * read in order. */
#include <fcntl.h>
#include <libdevmapper.h>
#include <linux/fs.h>
#include <pthread.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "../common/priv.h"
#include "internal.h"

static inline void imc_dm_task_destroyp(struct dm_task **t)
{
	if (*t)
		dm_task_destroy(*t);
}
#define _cleanup_dm_task_ _cleanup_(imc_dm_task_destroyp)

#define THIN_DIR	    "thin"
#define META_FILE	    "devices.json"
#define LOCK_FILE	    "lock"
#define DATA_FILE	    "data.img"
#define METADATA_FILE	    "meta.img"
#define META_VERSION	    1
#define META_MAX_BYTES	    (64U << 20)
#define META_MAX_DEVICES    (1U << 20)
#define THIN_DEV_ID_MAX	    ((1U << 24) - 1) /* thin device ids are 24 bits */
#define DM_NAME_MAX	    128
#define ID_MAX		    64
#define SECTOR		    512ULL
#define BLOCK_MIN	    (64ULL << 10) /* the pool's data block: 64 KiB to 1 GiB, in 64 KiB steps */
#define BLOCK_MAX	    (1ULL << 30)
#define METADATA_MIN	    (16ULL << 20)
#define METADATA_MAX	    (16320ULL << 20) /* the kernel uses at most about 15.9 GiB */
#define METADATA_FULL_PCT   90 /* refuse creates above this, before the pool turns read-only */
#define REMOVE_TRIES	    10
#define REMOVE_SLEEP_MS	    10 /* 10, 20, ... 100 ms: 550 ms in all */
#define SHARED_TRIES	    5  /* 10 ... 50 ms: 150 ms for a shared snapshot's other user */
#define SWEEP_SLACK	    256
#define DEFAULT_LOW_WATER   (64ULL << 20)
#define DM_PROBE_TARGET_LEN 8

/* libdevmapper returns 1 for success and 0 for failure and logs through a callback; the callback
 * keeps the last error line here so that it lands in our imc_error instead of on stderr. */
static __thread char dm_last_msg[256];

/* libdevmapper keeps process-wide state (its control fd, the stack of /dev/mapper node
 * operations): one thread at a time. */
static pthread_mutex_t dm_mutex = PTHREAD_MUTEX_INITIALIZER;

/* Tests crash a child process at a named point of an operation (see test_thin.c). */
TESTABLE void (*thin_crash_hook)(const char *point);

static void crash_point(const char *point)
{
	if (thin_crash_hook)
		thin_crash_hook(point);
}

struct thin_opts {
	const char *data_dev, *metadata_dev; /* both or neither */
	uint64_t block_size, low_water, data_size, metadata_size;
	bool discard, zero;
};

struct thin_dev {
	enum store_kind kind;
	char id[ID_MAX + 1];
	uint32_t dev_id;
	uint64_t size;
};

enum pending_op { PENDING_NONE, PENDING_CREATE, PENDING_DELETE };

/* devices.json */
struct thin_meta {
	uint64_t transaction;
	uint32_t next_id;
	struct thin_dev *devs;
	size_t n, cap;
	enum pending_op pending;
	struct thin_dev pending_dev;
};

struct thin {
	struct thin_opts opts;
	char *dir; /* <state>/thin */
	int dirfd;
	char pool_name[DM_NAME_MAX];
	char prefix[32];   /* "imc-<8 hex>": every thin device's name starts with it */
	char pool_dev[32]; /* "major:minor" of the pool */
	uint64_t block_sectors;
	bool embedded;
	json_t *repairs;
};

static struct thin *th(struct store *s)
{
	return s->priv;
}

/* ---- libdevmapper wrappers ------------------------------------------------------------------ */

__attribute__((format(printf, 5, 6))) static void dm_log(int level, const char *file, int line,
							 int dm_errno, const char *fmt, ...)
{
	va_list ap;

	if ((level & 0xf) > 3) /* _LOG_ERR and worse */
		return;
	va_start(ap, fmt);
	vsnprintf(dm_last_msg, sizeof(dm_last_msg), fmt, ap);
	va_end(ap);
}

static void dm_setup(void)
{
	dm_log_with_errno_init(dm_log);
	/* Without udev (containers, the test VM), libdevmapper makes the /dev/mapper nodes itself
	 * in dm_udev_wait(). */
	if (secure_getenv("DM_DISABLE_UDEV") || access("/run/udev/control", F_OK) != 0)
		dm_udev_set_sync_support(0);
}

struct dm_req {
	int type;
	const char *name;
	const char *target, *params; /* DM_DEVICE_CREATE */
	uint64_t sectors;
	const char *message; /* DM_DEVICE_TARGET_MSG */
	bool read_only;
};

static const char *dm_op_name(int type)
{
	switch (type) {
	case DM_DEVICE_CREATE:
		return "create";
	case DM_DEVICE_REMOVE:
		return "remove";
	case DM_DEVICE_RELOAD:
		return "load";
	case DM_DEVICE_RESUME:
		return "resume";
	case DM_DEVICE_TARGET_MSG:
		return "message";
	case DM_DEVICE_STATUS:
		return "status";
	case DM_DEVICE_TABLE:
		return "table";
	case DM_DEVICE_INFO:
		return "info";
	case DM_DEVICE_LIST:
		return "list";
	}
	return "task";
}

static bool dm_wants_cookie(int type)
{
	return type == DM_DEVICE_CREATE || type == DM_DEVICE_REMOVE || type == DM_DEVICE_RESUME;
}

static int dm_setup_task(struct dm_task *t, const struct dm_req *q)
{
	if (q->name && !dm_task_set_name(t, q->name))
		return 0;
	if (q->target && !dm_task_add_target(t, 0, q->sectors, q->target, q->params))
		return 0;
	if (q->message && (!dm_task_set_sector(t, 0) || !dm_task_set_message(t, q->message)))
		return 0;
	if (q->read_only && !dm_task_set_ro(t))
		return 0;
	return 1;
}

/* Run one task; the finished task goes to ret_task when wanted (status, info, list). */
static int dm_do(const struct dm_req *q, struct dm_task **ret_task, imc_error *err)
{
	_cleanup_dm_task_ struct dm_task *t = dm_task_create(q->type);
	uint32_t cookie = 0;
	bool cookie_set = false;
	int ok, e;

	dm_last_msg[0] = '\0';
	if (!t)
		return imc_err(err, ENOMEM, "device-mapper %s %s: cannot create the task",
			       dm_op_name(q->type), q->name ? q->name : "");
	ok = dm_setup_task(t, q);
	if (ok && dm_wants_cookie(q->type)) {
		ok = dm_task_set_cookie(t, &cookie, 0);
		cookie_set = ok;
	}
	if (ok)
		ok = dm_task_run(t);
	e = ok ? 0 : dm_task_get_errno(t);
	if (cookie_set && !dm_udev_wait(cookie) && ok) {
		ok = 0;
		e = EIO;
	}
	if (!ok)
		return imc_err(err, e > 0 ? e : EIO, "device-mapper %s %s%s%s: %s",
			       dm_op_name(q->type), q->name ? q->name : "", q->message ? " " : "",
			       q->message ? q->message : "",
			       dm_last_msg[0] ? dm_last_msg : strerror(e > 0 ? e : EIO));
	if (ret_task)
		*ret_task = steal_pointer(&t);
	return 0;
}

/* Does name exist?  Fills its open count when asked. */
static int dm_exists(const char *name, int *ret_open_count, uint32_t *ret_major,
		     uint32_t *ret_minor, imc_error *err)
{
	_cleanup_dm_task_ struct dm_task *t = NULL;
	struct dm_info info;
	int r = dm_do(&(struct dm_req){.type = DM_DEVICE_INFO, .name = name}, &t, err);

	if (r < 0)
		return r;
	if (!dm_task_get_info(t, &info))
		return imc_err(err, EIO, "device-mapper info %s: no info", name);
	if (!info.exists)
		return 0;
	if (ret_open_count)
		*ret_open_count = info.open_count;
	if (ret_major)
		*ret_major = info.major;
	if (ret_minor)
		*ret_minor = info.minor;
	return 1;
}

/* The parameters of the single target of name (status or table); malloc'ed. */
static int dm_target_params(int type, const char *name, char **ret_type, char **ret_params,
			    imc_error *err)
{
	_cleanup_dm_task_ struct dm_task *t = NULL;
	uint64_t start, len;
	char *ttype = NULL, *params = NULL;
	int r = dm_do(&(struct dm_req){.type = type, .name = name}, &t, err);

	if (r < 0)
		return r;
	dm_get_next_target(t, NULL, &start, &len, &ttype, &params);
	if (!ttype || !params)
		return imc_err(err, ENODATA, "device-mapper %s %s: no target", dm_op_name(type),
			       name);
	if (ret_type && !(*ret_type = strdup(ttype)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!(*ret_params = strdup(params))) {
		if (ret_type)
			free(*ret_type);
		return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

/* Remove name, retrying while it is busy (a mount going away, udev probing it); a device that
 * is not there is no error.  EBUSY after the last try is reported, never ignored. */
static int dm_remove_retry(const char *name, imc_error *err)
{
	int r = 0;

	for (int i = 0; i < REMOVE_TRIES; i++) {
		r = dm_exists(name, NULL, NULL, NULL, err);
		if (r <= 0)
			return r;
		r = dm_do(&(struct dm_req){.type = DM_DEVICE_REMOVE, .name = name}, NULL, err);
		if (r != -EBUSY)
			return r == -ENXIO ? 0 : r;
		nanosleep(&(struct timespec){.tv_nsec = (long)REMOVE_SLEEP_MS * (i + 1) * 1000000L},
			  NULL);
	}
	return imc_err(err, EBUSY, "device %s is still in use after %d tries (mounted or open)",
		       name, REMOVE_TRIES);
}

/* ---- the pool ------------------------------------------------------------------------------ */

struct pool_status {
	uint64_t transaction;
	uint64_t data_used, data_total; /* blocks */
	uint64_t meta_used, meta_total; /* 4 KiB blocks */
	bool read_only, out_of_data_space, fail, needs_check, discard_passdown;
};

static int pool_status(struct thin *t, struct pool_status *ret, imc_error *err)
{
	_cleanup_free_ char *params = NULL;
	struct dm_pool *mem;
	struct dm_status_thin_pool *st = NULL;
	int r = dm_target_params(DM_DEVICE_STATUS, t->pool_name, NULL, &params, err);

	if (r < 0)
		return r;
	mem = dm_pool_create("imc-thin", 1024);
	if (!mem)
		return imc_err(err, ENOMEM, "out of memory");
	if (!dm_get_status_thin_pool(mem, params, &st)) {
		dm_pool_destroy(mem);
		return imc_err(err, EIO, "pool %s: cannot parse its status \"%.100s\"",
			       t->pool_name, params);
	}
	*ret = (struct pool_status){
	    .transaction = st->transaction_id,
	    .data_used = st->used_data_blocks,
	    .data_total = st->total_data_blocks,
	    .meta_used = st->used_metadata_blocks,
	    .meta_total = st->total_metadata_blocks,
	    .read_only = st->read_only,
	    .out_of_data_space = st->out_of_data_space,
	    .fail = st->fail || st->error,
	    .needs_check = st->needs_check,
	    .discard_passdown = st->discards == DM_THIN_DISCARDS_PASSDOWN,
	};
	dm_pool_destroy(mem);
	return 0;
}

/* Can the pool take a new device and its writes?  Refused early, with the reason, rather than
 * letting the pool's metadata run out (which turns the whole pool read-only). */
static int pool_check_writable(struct thin *t, const struct pool_status *ps, imc_error *err)
{
	if (ps->fail || ps->needs_check)
		return imc_err(err, EIO, "pool %s has failed (needs thin_check)", t->pool_name);
	if (ps->read_only)
		return imc_err(err, EROFS, "pool %s is read-only", t->pool_name);
	if (ps->out_of_data_space)
		return imc_err(err, ENOSPC, "pool %s is out of data space", t->pool_name);
	if (ps->meta_total && ps->meta_used * 100 >= ps->meta_total * METADATA_FULL_PCT)
		return imc_err(err, ENOSPC, "pool %s: metadata %llu of %llu blocks used",
			       t->pool_name, (unsigned long long)ps->meta_used,
			       (unsigned long long)ps->meta_total);
	return 0;
}

static int pool_message(struct thin *t, imc_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int pool_message(struct thin *t, imc_error *err, const char *fmt, ...)
{
	char msg[128];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return dm_do(
	    &(struct dm_req){.type = DM_DEVICE_TARGET_MSG, .name = t->pool_name, .message = msg},
	    NULL, err);
}

static int pool_set_transaction(struct thin *t, uint64_t from, uint64_t to, imc_error *err)
{
	return pool_message(t, err, "set_transaction_id %llu %llu", (unsigned long long)from,
			    (unsigned long long)to);
}

static uint64_t dev_size(int fd)
{
	uint64_t bytes = 0;
	struct stat st;

	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		return (uint64_t)st.st_size;
	if (ioctl(fd, BLKGETSIZE64, &bytes) < 0)
		return 0;
	return bytes;
}

/* A sparse backing file (created when missing) on an autoclear loop device: the pool's table
 * holds the device open, so the loop device goes with the pool. */
static int backing_loop(struct thin *t, const char *name, uint64_t size,
			char ret[IMC_LOOP_PATH_MAX], int *ret_fd, imc_error *err)
{
	static const struct imc_loop_opts lo = {
	    .autoclear = true, .direct_io = true, .block_size = 4096};
	_cleanup_close_ int fd = openat(t->dirfd, name, O_RDWR | O_CLOEXEC);
	int r;

	if (fd < 0 && errno == ENOENT) {
		fd = openat(t->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0 && ftruncate(fd, (off_t)size) < 0) {
			r = imc_err_sys(err, errno, "size %s/%s", t->dir, name);
			unlinkat(t->dirfd, name, 0);
			return r;
		}
	}
	if (fd < 0)
		return imc_err_sys(err, errno, "%s/%s", t->dir, name);
	r = imc_priv_loop_attach(fd, &lo, ret, ret_fd, err);
	return r < 0 ? imc_err_wrap(err, "pool file %s/%s", t->dir, name) : 0;
}

static int open_dev(const char *path, int *ret_fd, imc_error *err)
{
	*ret_fd = open(path, O_RDWR | O_CLOEXEC);
	return *ret_fd < 0 ? imc_err_sys(err, errno, "%s", path) : 0;
}

/* The pool's table: "<metadata dev> <data dev> <block sectors> <low water blocks> <features>".
 * error_if_no_space: a full pool fails writes at once (the build fails) instead of queueing
 * them for a minute. */
static int pool_create(struct thin *t, uint64_t meta_size_default, imc_error *err)
{
	const struct thin_opts *o = &t->opts;
	char data[IMC_LOOP_PATH_MAX], meta[IMC_LOOP_PATH_MAX], params[256], features[96];
	_cleanup_close_ int data_fd = -1, meta_fd = -1;
	uint64_t sectors, low_water;
	int n_features = 1, r;

	if (t->embedded) {
		uint64_t msize = o->metadata_size ? o->metadata_size : meta_size_default;
		r = backing_loop(t, METADATA_FILE, msize, meta, &meta_fd, err);
		if (r == 0)
			r = backing_loop(t, DATA_FILE, o->data_size, data, &data_fd, err);
	} else {
		snprintf(meta, sizeof(meta), "%s", o->metadata_dev);
		snprintf(data, sizeof(data), "%s", o->data_dev);
		r = open_dev(meta, &meta_fd, err);
		if (r == 0)
			r = open_dev(data, &data_fd, err);
	}
	if (r < 0)
		return r;
	sectors = dev_size(data_fd) / SECTOR / t->block_sectors * t->block_sectors;
	if (sectors == 0)
		return imc_err(err, ENOSPC, "pool data device %s is smaller than one block", data);
	low_water = o->low_water / (t->block_sectors * SECTOR);
	n_features += !o->zero + !o->discard;
	snprintf(features, sizeof(features), "error_if_no_space%s%s",
		 o->zero ? "" : " skip_block_zeroing", o->discard ? "" : " ignore_discard");
	snprintf(params, sizeof(params), "%s %s %llu %llu %d %s", meta, data,
		 (unsigned long long)t->block_sectors, (unsigned long long)low_water, n_features,
		 features);
	r = dm_do(&(struct dm_req){.type = DM_DEVICE_CREATE,
				   .name = t->pool_name,
				   .target = "thin-pool",
				   .params = params,
				   .sectors = sectors},
		  NULL, err);
	return r < 0 ? imc_err_wrap(err, "pool %s", t->pool_name) : 0;
}

/* An existing pool keeps the block size it was made with. */
static int pool_read_block_size(struct thin *t, imc_error *err)
{
	_cleanup_free_ char *ttype = NULL, *params = NULL;
	unsigned long long block = 0;
	int r = dm_target_params(DM_DEVICE_TABLE, t->pool_name, &ttype, &params, err);

	if (r < 0)
		return r;
	if (strcmp(ttype, "thin-pool") != 0 || sscanf(params, "%*s %*s %llu", &block) != 1 ||
	    block == 0)
		return imc_err(err, EEXIST, "device %s exists and is not a thin pool",
			       t->pool_name);
	t->block_sectors = block;
	return 0;
}

static int pool_open(struct thin *t, uint64_t meta_size_default, imc_error *err)
{
	uint32_t major, minor;
	int r = dm_exists(t->pool_name, NULL, NULL, NULL, err);

	if (r == 0)
		r = pool_create(t, meta_size_default, err);
	else if (r > 0)
		r = pool_read_block_size(t, err);
	if (r < 0)
		return r;
	r = dm_exists(t->pool_name, NULL, &major, &minor, err);
	if (r == 0)
		return imc_err(err, ENXIO, "pool %s vanished", t->pool_name);
	if (r < 0)
		return r;
	snprintf(t->pool_dev, sizeof(t->pool_dev), "%u:%u", major, minor);
	return 0;
}

/* ---- devices.json -------------------------------------------------------------------------- */

static void meta_free(struct thin_meta *m)
{
	free(m->devs);
	*m = (struct thin_meta){0};
}

static int parse_kind(const char *s, enum store_kind *ret)
{
	for (int k = STORE_VOLUME; k <= STORE_CLONE; k++)
		if (strcmp(s, store_kind_name(k)) == 0) {
			*ret = k;
			return 0;
		}
	return -EINVAL;
}

static int parse_dev(json_t *o, const char *ctx, struct thin_dev *ret, imc_error *err)
{
	static const char *const fields[] = {"kind", "id", "devId", "size", NULL};
	const char *kind = NULL, *id = NULL;
	int64_t dev_id = 0, size = 0;
	int r;

	if (!json_is_object(o))
		return imc_err(err, EINVAL, "%s: not an object", ctx);
	if ((r = imc_json_check_fields(o, fields, ctx, err)) < 0 ||
	    (r = imc_json_get_string(o, "kind", true, 16, ctx, &kind, err)) < 0 ||
	    (r = imc_json_get_string(o, "id", true, ID_MAX, ctx, &id, err)) < 0 ||
	    (r = imc_json_get_int(o, "devId", true, 0, THIN_DEV_ID_MAX, ctx, &dev_id, err)) < 0 ||
	    (r = imc_json_get_int(o, "size", true, 0, INT64_MAX, ctx, &size, err)) < 0)
		return r;
	if (parse_kind(kind, &ret->kind) < 0 || !imc_name_valid(id, ID_MAX))
		return imc_err(err, EINVAL, "%s: bad kind or id", ctx);
	snprintf(ret->id, sizeof(ret->id), "%s", id);
	ret->dev_id = (uint32_t)dev_id;
	ret->size = (uint64_t)size;
	return 0;
}

static int meta_add(struct thin_meta *m, const struct thin_dev *d)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 16;
		struct thin_dev *g = realloc(m->devs, cap * sizeof(*g));
		if (!g)
			return -ENOMEM;
		m->devs = g;
		m->cap = cap;
	}
	m->devs[m->n++] = *d;
	return 0;
}

static void meta_drop(struct thin_meta *m, size_t i)
{
	m->devs[i] = m->devs[--m->n];
}

static ssize_t meta_find(const struct thin_meta *m, enum store_kind kind, const char *id)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->devs[i].kind == kind && strcmp(m->devs[i].id, id) == 0)
			return (ssize_t)i;
	return -1;
}

static bool meta_owns(const struct thin_meta *m, uint32_t dev_id)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->devs[i].dev_id == dev_id)
			return true;
	return false;
}

static int meta_parse_pending(json_t *doc, struct thin_meta *m, imc_error *err)
{
	json_t *p = json_object_get(doc, "pending");
	const char *op = NULL;
	_cleanup_json_ json_t *dev = NULL;
	int r;

	if (!p || json_is_null(p))
		return 0;
	if ((r = imc_json_get_string(p, "op", true, 16, "devices.json pending", &op, err)) < 0)
		return r;
	m->pending = strcmp(op, "create") == 0	 ? PENDING_CREATE
		     : strcmp(op, "delete") == 0 ? PENDING_DELETE
						 : PENDING_NONE;
	if (m->pending == PENDING_NONE)
		return imc_err(err, EINVAL, "devices.json pending.op \"%s\": unknown", op);
	dev = json_deep_copy(p);
	if (!dev)
		return imc_err(err, ENOMEM, "out of memory");
	json_object_del(dev, "op");
	return parse_dev(dev, "devices.json pending", &m->pending_dev, err);
}

static int meta_parse(json_t *doc, struct thin_meta *m, imc_error *err)
{
	static const char *const fields[] = {"version", "pool",	   "transaction", "nextId",
					     "devices", "pending", NULL};
	int64_t version = 0, txn = 0, next = 0;
	json_t *devs = NULL, *v;
	size_t i;
	int r;

	if ((r = imc_json_check_fields(doc, fields, "devices.json", err)) < 0 ||
	    (r = imc_json_get_int(doc, "version", true, META_VERSION, META_VERSION, "devices.json",
				  &version, err)) < 0 ||
	    (r = imc_json_get_int(doc, "transaction", true, 0, INT64_MAX, "devices.json", &txn,
				  err)) < 0 ||
	    (r = imc_json_get_int(doc, "nextId", true, 0, THIN_DEV_ID_MAX + 1LL, "devices.json",
				  &next, err)) < 0 ||
	    (r = imc_json_get_array(doc, "devices", true, META_MAX_DEVICES, "devices.json", &devs,
				    err)) < 0)
		return r;
	m->transaction = (uint64_t)txn;
	m->next_id = (uint32_t)next;
	json_array_foreach(devs, i, v)
	{
		struct thin_dev d;
		if ((r = parse_dev(v, "devices.json device", &d, err)) < 0)
			return r;
		if (meta_add(m, &d) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return meta_parse_pending(doc, m, err);
}

static int meta_load(struct thin *t, struct thin_meta *m, imc_error *err)
{
	_cleanup_json_ json_t *doc = NULL;
	int r;

	*m = (struct thin_meta){0};
	r = imc_json_read_file(t->dirfd, META_FILE, META_MAX_BYTES, &doc, err);
	if (r == -ENOENT)
		return 0;
	if (r == 0)
		r = meta_parse(doc, m, err);
	if (r < 0) {
		meta_free(m);
		return imc_err_wrap(err, "%s/%s", t->dir, META_FILE);
	}
	return 0;
}

static json_t *dev_json(const struct thin_dev *d)
{
	return json_pack("{s:s, s:s, s:I, s:I}", "kind", store_kind_name(d->kind), "id", d->id,
			 "devId", (json_int_t)d->dev_id, "size", (json_int_t)d->size);
}

/* durable: fsync'ed (volumes and snapshots); clones are thrown away after a machine crash
 * anyway, and a record that lost them is repaired on open (the transaction ids differ). */
static int meta_save(struct thin *t, const struct thin_meta *m, bool durable, imc_error *err)
{
	_cleanup_json_ json_t *doc = json_pack(
	    "{s:i, s:s, s:I, s:I, s:[]}", "version", META_VERSION, "pool", t->pool_name,
	    "transaction", (json_int_t)m->transaction, "nextId", (json_int_t)m->next_id, "devices");
	json_t *devs = doc ? json_object_get(doc, "devices") : NULL;

	if (!doc)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < m->n; i++)
		if (json_array_append_new(devs, dev_json(&m->devs[i])) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	if (m->pending != PENDING_NONE) {
		json_t *p = dev_json(&m->pending_dev);
		if (!p ||
		    json_object_set_new(
			p, "op", json_string(m->pending == PENDING_CREATE ? "create" : "delete")) <
			0 ||
		    json_object_set_new(doc, "pending", p) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return durable ? imc_json_write_atomic(t->dirfd, META_FILE, doc, err)
		       : imc_json_write_replace(t->dirfd, META_FILE, doc, err);
}

static int meta_alloc_id(const struct thin_meta *m, uint32_t *ret, imc_error *err)
{
	if (m->next_id <= THIN_DEV_ID_MAX) {
		*ret = m->next_id;
		return 0;
	}
	for (uint32_t id = 0; id <= THIN_DEV_ID_MAX; id++)
		if (!meta_owns(m, id)) {
			*ret = id;
			return 0;
		}
	return imc_err(err, ENOSPC, "no free thin device id");
}

/* ---- locking: one operation at a time, across threads and processes ----------------------- */

struct op_lock {
	int fd;
	bool held;
};

static void op_unlock(struct op_lock *l)
{
	if (l->fd >= 0)
		close(l->fd); /* drops the flock */
	if (l->held)
		pthread_mutex_unlock(&dm_mutex);
	*l = (struct op_lock){.fd = -1};
}

static int op_lock(struct thin *t, struct op_lock *l, imc_error *err)
{
	pthread_mutex_lock(&dm_mutex);
	l->held = true;
	l->fd = openat(t->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (l->fd < 0 || flock(l->fd, LOCK_EX) < 0) {
		int r = imc_err_sys(err, errno, "lock %s/%s", t->dir, LOCK_FILE);
		op_unlock(l);
		return r;
	}
	return 0;
}

#define _cleanup_op_lock_ _cleanup_(op_unlock)

/* ---- thin devices -------------------------------------------------------------------------- */

static char kind_letter(enum store_kind kind)
{
	return kind == STORE_VOLUME ? 'v' : kind == STORE_SNAPSHOT ? 's' : 'c';
}

/* "imc-<h>-<v|s|c>-<id>", short enough that "/dev/mapper/<name>" fits a store_dev's path (63
 * characters): an id longer than DEV_ID_CHARS keeps its first characters and gets a hash of the
 * whole id instead of the rest. */
#define DEV_ID_CHARS (STORE_DEV_PATH_MAX - 1 - (int)sizeof("/dev/mapper/imc-12345678-v-") + 1)
static void dev_name(struct thin *t, enum store_kind kind, const char *id, char ret[DM_NAME_MAX])
{
	char hex[IMC_SHA256_HEX_LEN + 1];

	if (strlen(id) <= DEV_ID_CHARS || imc_sha256_hex(id, strlen(id), hex, NULL) < 0) {
		snprintf(ret, DM_NAME_MAX, "%s-%c-%.*s", t->prefix, kind_letter(kind), DEV_ID_CHARS,
			 id);
		return;
	}
	snprintf(ret, DM_NAME_MAX, "%s-%c-%.*s-%.16s", t->prefix, kind_letter(kind),
		 DEV_ID_CHARS - 17, id, hex);
}

static uint64_t size_sectors(uint64_t size)
{
	return (size + SECTOR - 1) / SECTOR;
}

/* Create name as thin device d in three steps (create, load, resume) rather than libdevmapper's
 * one, which loses the kernel's errno of a failed load: ENODATA says the device is not in the
 * pool.  Without resume the device stays suspended with its table loaded, all a probe needs. */
static int thin_dm_create(struct thin *t, const char *name, const struct thin_dev *d,
			  bool read_only, bool resume, imc_error *err)
{
	char params[64];
	imc_error ignored;
	int r;

	snprintf(params, sizeof(params), "%s %u", t->pool_dev, d->dev_id);
	r = dm_do(&(struct dm_req){.type = DM_DEVICE_CREATE, .name = name, .read_only = read_only},
		  NULL, err);
	if (r < 0)
		return r;
	r = dm_do(&(struct dm_req){.type = DM_DEVICE_RELOAD,
				   .name = name,
				   .target = "thin",
				   .params = params,
				   .sectors = size_sectors(d->size),
				   .read_only = read_only},
		  NULL, err);
	if (r == 0 && resume)
		r = dm_do(&(struct dm_req){.type = DM_DEVICE_RESUME, .name = name}, NULL, err);
	if (r < 0)
		dm_remove_retry(name, &ignored);
	return r;
}

/* Is thin device d in the pool?  Loading a table for it is the one test without side effects
 * (the kernel opens the device in the pool's metadata, ENODATA when it is not there). */
static int thin_probe(struct thin *t, const struct thin_dev *d, uint64_t *ret_mapped,
		      imc_error *err)
{
	char name[DM_NAME_MAX];
	_cleanup_free_ char *params = NULL;
	int r;

	snprintf(name, sizeof(name), "%s-probe-%d", t->prefix, (int)getpid());
	r = thin_dm_create(t, name, d, true, ret_mapped != NULL, err);
	if (r == -ENODATA)
		return 0;
	if (r < 0)
		return r;
	if (ret_mapped) {
		r = dm_target_params(DM_DEVICE_STATUS, name, NULL, &params, err);
		*ret_mapped = 0;
		if (r == 0)
			sscanf(params, "%" SCNu64, ret_mapped);
	}
	r = dm_remove_retry(name, err);
	return r < 0 ? r : 1;
}

/* Give the blocks of an inactive thin device back to the data device before deleting it: the
 * pool passes discards down (a sparse pool file gets its holes back). */
static int thin_discard(struct thin *t, const struct thin_dev *d, imc_error *err)
{
	char name[DM_NAME_MAX], path[DM_NAME_MAX + 16];
	_cleanup_close_ int fd = -1;
	uint64_t range[2] = {0, size_sectors(d->size) * SECTOR};
	int r;

	snprintf(name, sizeof(name), "%s-discard-%d", t->prefix, (int)getpid());
	r = thin_dm_create(t, name, d, false, true, err);
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "/dev/mapper/%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		r = imc_err_sys(err, errno, "%s", path);
	else if (ioctl(fd, BLKDISCARD, range) < 0 && errno != EOPNOTSUPP)
		r = imc_err_sys(err, errno, "discard %s", path);
	if (fd >= 0)
		close(steal_fd(&fd));
	int rr = dm_remove_retry(name, r < 0 ? NULL : err);
	return r < 0 ? r : rr;
}

/* Delete thin device dev_id from the pool: the device is inactive. */
static int thin_delete(struct thin *t, uint32_t dev_id, imc_error *err)
{
	return pool_message(t, err, "delete %u", dev_id);
}

static int reconcile_pending(struct thin *t, struct thin_meta *m, uint64_t pool_txn,
			     imc_error *err);

/* A pending entry left by an operation of this or another process that failed half-way (its
 * process still running) is settled before the next operation records its own. */
static int settle_pending(struct thin *t, struct thin_meta *m, imc_error *err)
{
	struct pool_status ps;
	int r;

	if (m->pending == PENDING_NONE)
		return 0;
	if ((r = pool_status(t, &ps, err)) < 0 ||
	    (r = reconcile_pending(t, m, ps.transaction, err)) < 0)
		return r;
	return 0;
}

/* Record, do, move the pool's transaction on, commit the record: after a crash at any point
 * the record's pending entry and the pool's transaction id tell which side to repair. */
static int thin_create_dev(struct thin *t, const struct thin_dev *want, const char *origin_kind_id,
			   uint32_t origin_dev_id, bool durable, imc_error *err)
{
	_cleanup_(meta_free) struct thin_meta m = {0};
	struct pool_status ps;
	struct thin_dev d = *want;
	int r;

	if ((r = meta_load(t, &m, err)) < 0 || (r = settle_pending(t, &m, err)) < 0)
		return r;
	if (meta_find(&m, d.kind, d.id) >= 0)
		return imc_err(err, EEXIST, "%s %s: exists", store_kind_name(d.kind), d.id);
	if ((r = pool_status(t, &ps, err)) < 0 || (r = pool_check_writable(t, &ps, err)) < 0)
		return r;
	if ((r = meta_alloc_id(&m, &d.dev_id, err)) < 0)
		return r;
	m.next_id = d.dev_id + 1 > m.next_id ? d.dev_id + 1 : m.next_id;
	m.pending = PENDING_CREATE;
	m.pending_dev = d;
	if ((r = meta_save(t, &m, durable, err)) < 0)
		return r;
	crash_point("create:recorded");
	r = origin_kind_id ? pool_message(t, err, "create_snap %u %u", d.dev_id, origin_dev_id)
			   : pool_message(t, err, "create_thin %u", d.dev_id);
	if (r < 0) {
		imc_error ignored;
		m.pending = PENDING_NONE;
		meta_save(t, &m, durable, &ignored);
		if (origin_kind_id && r == -ENODATA)
			return imc_err(err, ENOENT, "%s: gone from pool %s", origin_kind_id,
				       t->pool_name);
		return imc_err_wrap(err, "%s %s", store_kind_name(d.kind), d.id);
	}
	crash_point("create:done");
	if ((r = pool_set_transaction(t, m.transaction, m.transaction + 1, err)) < 0)
		return r; /* the pending entry stays: the next open sorts it out */
	crash_point("create:transaction");
	m.transaction++;
	m.pending = PENDING_NONE;
	if ((r = meta_add(&m, &d)) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return meta_save(t, &m, durable, err);
}

static int thin_remove_dev(struct thin *t, enum store_kind kind, const char *id, imc_error *err)
{
	_cleanup_(meta_free) struct thin_meta m = {0};
	char name[DM_NAME_MAX];
	struct pool_status ps;
	ssize_t i;
	int r;

	if ((r = meta_load(t, &m, err)) < 0 || (r = settle_pending(t, &m, err)) < 0)
		return r;
	i = meta_find(&m, kind, id);
	if (i < 0)
		return imc_err(err, ENOENT, "remove %s %s: not in the pool", store_kind_name(kind),
			       id);
	dev_name(t, kind, id, name);
	if ((r = dm_remove_retry(name, err)) < 0)
		return imc_err_wrap(err, "remove %s %s", store_kind_name(kind), id);
	if ((r = pool_status(t, &ps, err)) < 0)
		return r;
	if (t->opts.discard && ps.discard_passdown && !ps.read_only &&
	    (r = thin_discard(t, &m.devs[i], err)) < 0)
		return imc_err_wrap(err, "remove %s %s", store_kind_name(kind), id);
	m.pending = PENDING_DELETE;
	m.pending_dev = m.devs[i];
	meta_drop(&m, (size_t)i);
	if ((r = meta_save(t, &m, kind != STORE_CLONE, err)) < 0)
		return r;
	crash_point("delete:recorded");
	r = thin_delete(t, m.pending_dev.dev_id, err);
	if (r < 0 && r != -ENODATA)
		return imc_err_wrap(err, "remove %s %s", store_kind_name(kind), id);
	if ((r = pool_set_transaction(t, m.transaction, m.transaction + 1, err)) < 0)
		return r;
	m.transaction++;
	m.pending = PENDING_NONE;
	return meta_save(t, &m, kind != STORE_CLONE, err);
}

/* ---- reconciliation ------------------------------------------------------------------------ */

static void report(struct thin *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct thin *t, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	json_array_append_new(t->repairs, json_string(buf));
}

/* A pending operation the last process did not finish: a create that moved the pool's
 * transaction on is complete (keep the device), any other is undone (delete the device). */
static int reconcile_pending(struct thin *t, struct thin_meta *m, uint64_t pool_txn, imc_error *err)
{
	struct thin_dev *d = &m->pending_dev;
	int r;

	if (m->pending == PENDING_CREATE && pool_txn == m->transaction + 1) {
		if ((r = meta_add(m, d)) < 0)
			return imc_err(err, ENOMEM, "out of memory");
		report(t, "%s %s (thin device %u): finished an interrupted create",
		       store_kind_name(d->kind), d->id, d->dev_id);
	} else {
		r = thin_delete(t, d->dev_id, err);
		if (r < 0 && r != -ENODATA)
			return r;
		if (m->pending == PENDING_CREATE)
			report(t, "%s %s (thin device %u): %s an interrupted create",
			       store_kind_name(d->kind), d->id, d->dev_id,
			       r == 0 ? "deleted the leaked device of" : "dropped");
		else
			report(t, "%s %s (thin device %u): finished an interrupted delete",
			       store_kind_name(d->kind), d->id, d->dev_id);
	}
	m->pending = PENDING_NONE;
	m->transaction = pool_txn;
	return 0;
}

/* The pool's transaction differs from the record's with no pending entry to explain it (the
 * record was lost or is older than the pool): any device id the record does not own may be a
 * leak.  Deleting an id that is not there fails harmlessly. */
static int reconcile_sweep(struct thin *t, struct thin_meta *m, uint64_t pool_txn, imc_error *err)
{
	uint32_t end = m->next_id + SWEEP_SLACK;

	for (size_t i = 0; i < m->n; i++)
		if (m->devs[i].dev_id + SWEEP_SLACK > end)
			end = m->devs[i].dev_id + SWEEP_SLACK;
	end = end > THIN_DEV_ID_MAX ? THIN_DEV_ID_MAX : end;
	for (uint32_t id = 0; id < end; id++) {
		imc_error e;
		if (meta_owns(m, id))
			continue;
		if (thin_delete(t, id, &e) == 0)
			report(t, "thin device %u: in pool %s but owned by nothing, deleted", id,
			       t->pool_name);
	}
	report(t, "pool %s: transaction %llu, record %llu: record adopted the pool's", t->pool_name,
	       (unsigned long long)pool_txn, (unsigned long long)m->transaction);
	m->transaction = pool_txn;
	m->next_id = end > m->next_id ? end : m->next_id;
	return 0;
}

/* Entries whose thin device is gone from the pool. */
static int reconcile_entries(struct thin *t, struct thin_meta *m, bool *changed, imc_error *err)
{
	for (size_t i = 0; i < m->n;) {
		int r = thin_probe(t, &m->devs[i], NULL, err);
		if (r < 0)
			return r;
		if (r > 0) {
			i++;
			continue;
		}
		report(t, "%s %s (thin device %u): gone from pool %s, record dropped",
		       store_kind_name(m->devs[i].kind), m->devs[i].id, m->devs[i].dev_id,
		       t->pool_name);
		meta_drop(m, i);
		*changed = true;
	}
	return 0;
}

/* Active /dev/mapper devices of this store that no record owns. */
static int reconcile_active(struct thin *t, const struct thin_meta *m, imc_error *err)
{
	_cleanup_dm_task_ struct dm_task *task = NULL;
	size_t plen = strlen(t->prefix);
	struct dm_names *n;
	int r = dm_do(&(struct dm_req){.type = DM_DEVICE_LIST}, &task, err);

	if (r < 0)
		return r;
	n = dm_task_get_names(task);
	for (; n && n->dev; n = n->next ? (struct dm_names *)((char *)n + n->next) : NULL) {
		const char *rest = n->name + plen;
		bool owned = false;
		if (strncmp(n->name, t->prefix, plen) != 0 || *rest != '-')
			continue;
		for (size_t i = 0; i < m->n && !owned; i++) {
			char name[DM_NAME_MAX];
			dev_name(t, m->devs[i].kind, m->devs[i].id, name);
			owned = strcmp(name, n->name) == 0;
		}
		if (owned)
			continue;
		imc_error e;
		if (dm_remove_retry(n->name, &e) == 0)
			report(t, "device %s: active but owned by nothing, removed", n->name);
		else
			report(t, "device %s: owned by nothing, not removed: %s", n->name, e.msg);
	}
	return 0;
}

static int thin_reconcile(struct thin *t, imc_error *err)
{
	_cleanup_(meta_free) struct thin_meta m = {0};
	struct pool_status ps;
	bool changed = false, fresh;
	int r;

	if ((r = meta_load(t, &m, err)) < 0 || (r = pool_status(t, &ps, err)) < 0)
		return r;
	fresh = faccessat(t->dirfd, META_FILE, F_OK, 0) != 0;
	if (m.pending != PENDING_NONE) {
		if ((r = reconcile_pending(t, &m, ps.transaction, err)) < 0)
			return r;
		changed = true;
	}
	if (m.transaction != ps.transaction && !(fresh && ps.transaction == 0)) {
		if ((r = reconcile_sweep(t, &m, ps.transaction, err)) < 0)
			return r;
		changed = true;
	}
	if ((r = reconcile_entries(t, &m, &changed, err)) < 0 ||
	    (r = reconcile_active(t, &m, err)) < 0)
		return r;
	return changed || fresh ? meta_save(t, &m, true, err) : 0;
}

/* ---- options ------------------------------------------------------------------------------- */

TESTABLE int thin_parse_size(const char *s, uint64_t *ret)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	case 't':
	case 'T':
		shift = 40;
		break;
	case '\0':
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1])
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*ret = (uint64_t)v << shift;
	return 0;
}

static int parse_bool(const char *v, bool *ret)
{
	if (strcmp(v, "on") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
		*ret = true;
	else if (strcmp(v, "off") == 0 || strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
		*ret = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_opt(struct thin_opts *o, const char *kv, imc_error *err)
{
	const char *eq = strchr(kv, '=');
	const char *v = eq ? eq + 1 : "";
	size_t klen = eq ? (size_t)(eq - kv) : strlen(kv);
	int r = -EINVAL;

#define KEY(name) (klen == strlen(name) && strncmp(kv, name, klen) == 0)
	if (!eq)
		return imc_err(err, EINVAL, "driver option \"%.60s\": want key=value", kv);
	if (KEY("data_dev") || KEY("metadata_dev")) {
		if (*v == '/' && strlen(v) < IMC_LOOP_PATH_MAX)
			r = 0;
		if (r == 0 && KEY("data_dev"))
			o->data_dev = v;
		else if (r == 0)
			o->metadata_dev = v;
	} else if (KEY("block_size")) {
		r = thin_parse_size(v, &o->block_size);
		if (r == 0 && (o->block_size < BLOCK_MIN || o->block_size > BLOCK_MAX ||
			       o->block_size % BLOCK_MIN))
			r = -EINVAL;
	} else if (KEY("low_water")) {
		r = thin_parse_size(v, &o->low_water);
	} else if (KEY("data_size")) {
		r = thin_parse_size(v, &o->data_size);
		if (r == 0 && o->data_size < (16ULL << 20))
			r = -EINVAL;
	} else if (KEY("metadata_size")) {
		r = thin_parse_size(v, &o->metadata_size);
		if (r == 0 && (o->metadata_size < METADATA_MIN || o->metadata_size > METADATA_MAX))
			r = -EINVAL;
	} else if (KEY("discard")) {
		r = parse_bool(v, &o->discard);
	} else if (KEY("zero")) {
		r = parse_bool(v, &o->zero);
	} else {
		return imc_err(err, EINVAL,
			       "driver option \"%.*s\": the thin driver does not know it (has "
			       "data_dev, metadata_dev, block_size, low_water, data_size, "
			       "metadata_size, discard, zero)",
			       (int)(klen > 60 ? 60 : klen), kv);
	}
#undef KEY
	if (r < 0)
		return imc_err(err, EINVAL, "driver option %.*s: bad value \"%.60s\"", (int)klen,
			       kv, v);
	return 0;
}

TESTABLE int thin_parse_opts(const char *const *kvs, struct thin_opts *o, imc_error *err)
{
	*o = (struct thin_opts){
	    .block_size = BLOCK_MIN, .low_water = DEFAULT_LOW_WATER, .discard = true, .zero = true};
	for (size_t i = 0; kvs && kvs[i]; i++) {
		int r = parse_opt(o, kvs[i], err);
		if (r < 0)
			return r;
	}
	if (!o->data_dev != !o->metadata_dev)
		return imc_err(err, EINVAL, "driver options data_dev and metadata_dev go together");
	if (o->data_dev && (o->data_size || o->metadata_size))
		return imc_err(err, EINVAL,
			       "driver options data_size and metadata_size are for the embedded "
			       "pool, not with data_dev");
	return 0;
}

/* ---- driver ops ---------------------------------------------------------------------------- */

static void thin_close(struct store *s)
{
	struct thin *t = th(s);

	if (!t)
		return;
	if (t->dirfd >= 0)
		close(t->dirfd);
	json_decref(t->repairs);
	free(t->dir);
	free(t);
	s->priv = NULL;
	pthread_mutex_lock(&dm_mutex);
	dm_lib_release();
	pthread_mutex_unlock(&dm_mutex);
}

static int thin_names(struct store *s, struct thin *t, imc_error *err)
{
	_cleanup_free_ char *real = realpath(s->state_dir, NULL);
	char hex[IMC_SHA256_HEX_LEN + 1];
	int r;

	if (!real)
		return imc_err_sys(err, errno, "%s", s->state_dir);
	r = imc_sha256_hex(real, strlen(real), hex, err);
	if (r < 0)
		return r;
	snprintf(t->pool_name, sizeof(t->pool_name), "imc-pool-%.8s", hex);
	snprintf(t->prefix, sizeof(t->prefix), "imc-%.8s", hex);
	return 0;
}

static int thin_setup(struct store *s, struct thin *t, imc_error *err)
{
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	uint64_t meta_default;
	char version[64];
	int r;

	if ((r = thin_parse_opts(s->driver_opts, &t->opts, err)) < 0)
		return r;
	t->embedded = !t->opts.data_dev;
	if (!t->opts.data_size)
		t->opts.data_size = s->pool_size;
	meta_default = t->opts.data_size / 256;
	meta_default = meta_default < METADATA_MIN   ? METADATA_MIN
		       : meta_default > METADATA_MAX ? METADATA_MAX
						     : meta_default;
	t->block_sectors = t->opts.block_size / SECTOR;
	if ((r = imc_mkdir_p(t->dir, 0700, err)) < 0)
		return r;
	t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t->dirfd < 0)
		return imc_err_sys(err, errno, "%s", t->dir);
	if ((r = thin_names(s, t, err)) < 0 || (r = op_lock(t, &l, err)) < 0)
		return r;
	dm_setup();
	if (!dm_driver_version(version, sizeof(version)))
		return imc_err(err, ENODEV,
			       "device-mapper is not available (no dm-mod in this kernel, or no "
			       "/dev/mapper/control)");
	if ((r = pool_open(t, meta_default, err)) < 0)
		return r;
	return thin_reconcile(t, err);
}

static int thin_open(struct store *s, imc_error *err)
{
	struct thin *t = calloc(1, sizeof(*t));
	int r;

	if (!t)
		return imc_err(err, ENOMEM, "out of memory");
	t->dirfd = -1;
	s->priv = t;
	t->dir = imc_path_join(s->state_dir, THIN_DIR);
	t->repairs = json_array();
	if (!t->dir || !t->repairs) {
		thin_close(s);
		return imc_err(err, ENOMEM, "out of memory");
	}
	r = thin_setup(s, t, err);
	if (r < 0) {
		thin_close(s);
		return r;
	}
	s->repairs = json_incref(t->repairs);
	return 0;
}

static int thin_volume_create(struct store *s, const char *id, uint64_t size, imc_error *err)
{
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	struct thin_dev d = {.kind = STORE_VOLUME, .size = (size + 4095) / 4096 * 4096};
	int r = op_lock(th(s), &l, err);

	snprintf(d.id, sizeof(d.id), "%s", id);
	return r < 0 ? r : thin_create_dev(th(s), &d, NULL, 0, true, err);
}

/* Takes the pool's operation lock (into l), loads the metadata (into m) and finds kind/id in it. */
static int lock_find(struct thin *t, struct op_lock *l, struct thin_meta *m, enum store_kind kind,
		     const char *id, ssize_t *ret_index, imc_error *err)
{
	ssize_t i;
	int r;

	if ((r = op_lock(t, l, err)) < 0 || (r = meta_load(t, m, err)) < 0)
		return r;
	i = meta_find(m, kind, id);
	if (i < 0)
		return imc_err(err, ENOENT, "%s %s: not in the pool", store_kind_name(kind), id);
	*ret_index = i;
	return 0;
}

static int thin_activate(struct store *s, enum store_kind kind, const char *id, unsigned flags,
			 struct store_dev *ret, imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	bool read_only = flags & STORE_ACTIVATE_READ_ONLY;
	char name[DM_NAME_MAX];
	ssize_t i;
	int r, fd;

	if ((r = lock_find(t, &l, &m, kind, id, &i, err)) < 0)
		return r;
	dev_name(t, kind, id, name);
	r = dm_exists(name, NULL, NULL, NULL, err);
	if (r == 0)
		r = thin_dm_create(t, name, &m.devs[i], read_only, true, err);
	if (r < 0)
		return imc_err_wrap(err, "activate %s %s", store_kind_name(kind), id);
	snprintf(ret->path, sizeof(ret->path), "/dev/mapper/%s", name);
	fd = open(ret->path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0) {
		imc_error ignored;
		r = imc_err_sys(err, errno, "%s", ret->path);
		dm_remove_retry(name, &ignored);
		return r;
	}
	ret->fd = fd;
	return 0;
}

/* A snapshot's device is shared: the agent's read-only lower (a mount) and imcd's index export
 * (an open descriptor) activate the same one, in two processes.  Whoever deactivates while the
 * other still holds it open leaves it to that other user, whose own deactivate removes it: the
 * last user's deactivate is the one that removes the device.  The open count is read a few
 * times first, as a mount going away or udev's probe holds it for a moment too; a device held
 * open beyond that is logged and left to it. */
static int dm_remove_shared(const char *name, imc_error *err)
{
	int open_count = 0, r;

	for (int i = 0; i < SHARED_TRIES; i++) {
		if ((r = dm_exists(name, &open_count, NULL, NULL, err)) <= 0)
			return r;
		if (open_count == 0)
			return dm_remove_retry(name, err);
		nanosleep(&(struct timespec){.tv_nsec = (long)REMOVE_SLEEP_MS * (i + 1) * 1000000L},
			  NULL);
	}
	imc_info("device %s: still open by another user (%d), left to its last deactivate", name,
		 open_count);
	return 0;
}

/* A volume or clone device goes now, whoever activated it; a snapshot's goes with its last
 * user (dm_remove_shared).  Thin devices do not go away with their last opener.  A volume is
 * flushed first, which also commits the pool's metadata for it. */
static int thin_deactivate(struct store *s, enum store_kind kind, const char *id,
			   struct store_dev *dev, imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	char name[DM_NAME_MAX];
	int flushed = 0, r;

	if (dev && dev->fd >= 0) {
		if (kind == STORE_VOLUME && fsync(dev->fd) < 0)
			flushed = -errno;
		close(dev->fd);
		dev->fd = -1;
	}
	if ((r = op_lock(t, &l, err)) < 0)
		return r;
	dev_name(t, kind, id, name);
	r = kind == STORE_SNAPSHOT ? dm_remove_shared(name, err) : dm_remove_retry(name, err);
	if (r < 0)
		return imc_err_wrap(err, "deactivate %s %s", store_kind_name(kind), id);
	/* The device is gone either way; a failed flush means writes were lost (a full pool). */
	if (flushed < 0)
		return imc_err_sys(err, -flushed, "flush %s %s", store_kind_name(kind), id);
	return 0;
}

/* The volume becomes the snapshot: the same thin device, recorded as a snapshot, activated
 * read-only from now on.  Refused when the pool ran out of space while it was written (its
 * last writes failed).  Moving the pool's transaction on commits the pool's metadata. */
static int thin_seal(struct store *s, const char *volume_id, const char *snapshot_id,
		     imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	char name[DM_NAME_MAX];
	struct pool_status ps;
	ssize_t i;
	int r;

	if ((r = op_lock(t, &l, err)) < 0 || (r = meta_load(t, &m, err)) < 0 ||
	    (r = settle_pending(t, &m, err)) < 0)
		return r;
	i = meta_find(&m, STORE_VOLUME, volume_id);
	if (i < 0)
		return imc_err(err, ENOENT, "seal volume %s: not in the pool", volume_id);
	if (meta_find(&m, STORE_SNAPSHOT, snapshot_id) >= 0)
		return imc_err(err, EEXIST, "seal volume %s: snapshot %s exists", volume_id,
			       snapshot_id);
	dev_name(t, STORE_VOLUME, volume_id, name);
	if ((r = dm_remove_retry(name, err)) < 0 || (r = pool_status(t, &ps, err)) < 0)
		return imc_err_wrap(err, "seal volume %s", volume_id);
	if (ps.out_of_data_space || ps.read_only || ps.fail)
		return imc_err(err, ENOSPC, "seal volume %s: pool %s is %s; its writes may be lost",
			       volume_id, t->pool_name,
			       ps.out_of_data_space ? "out of data space" : "read-only or failed");
	if ((r = pool_set_transaction(t, m.transaction, m.transaction + 1, err)) < 0)
		return imc_err_wrap(err, "seal volume %s", volume_id);
	m.transaction++;
	m.devs[i].kind = STORE_SNAPSHOT;
	snprintf(m.devs[i].id, sizeof(m.devs[i].id), "%s", snapshot_id);
	return meta_save(t, &m, true, err);
}

/* A new device of kind as a "create_snap" of snapshot snapshot_id, at least as large as it (a
 * larger size only makes the device longer: the blocks past the snapshot's end read zero).  The
 * origin is a sealed snapshot, never active for writing: no suspend needed.  A clone is
 * disposable after a crash; a volume's record is made durable. */
static int snap_of(struct store *s, const char *snapshot_id, enum store_kind kind, const char *id,
		   uint64_t size, imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	struct thin_dev d = {.kind = kind};
	char origin[ID_MAX + 16];
	ssize_t i;
	int r;

	if ((r = lock_find(t, &l, &m, STORE_SNAPSHOT, snapshot_id, &i, err)) < 0)
		return r;
	snprintf(d.id, sizeof(d.id), "%s", id);
	size = (size + 4095) / 4096 * 4096;
	d.size = size > m.devs[i].size ? size : m.devs[i].size;
	snprintf(origin, sizeof(origin), "snapshot %s", snapshot_id);
	r = thin_create_dev(t, &d, origin, m.devs[i].dev_id, kind == STORE_VOLUME, err);
	return r < 0 ? imc_err_wrap(err, "%s %s from snapshot %s", store_kind_name(kind), id,
				    snapshot_id)
		     : 0;
}

static int thin_clone(struct store *s, const char *snapshot_id, const char *clone_id,
		      imc_error *err)
{
	return snap_of(s, snapshot_id, STORE_CLONE, clone_id, 0, err);
}

static int thin_volume_from_snapshot(struct store *s, const char *snapshot_id,
				     const char *volume_id, uint64_t size, imc_error *err)
{
	return snap_of(s, snapshot_id, STORE_VOLUME, volume_id, size, err);
}

/* A thin device's length is only its table's: grow the record (durably), and the table too when
 * the device is active (reload, then resume swaps it in under the open device). */
static int thin_resize(struct store *s, enum store_kind kind, const char *id, uint64_t size,
		       imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	char name[DM_NAME_MAX], params[64];
	ssize_t i;
	int r;

	if ((r = lock_find(t, &l, &m, kind, id, &i, err)) < 0)
		return r;
	if (m.devs[i].size > size)
		return imc_err(err, EINVAL, "%s %s: size %llu is smaller than its %llu bytes",
			       store_kind_name(kind), id, (unsigned long long)size,
			       (unsigned long long)m.devs[i].size);
	m.devs[i].size = size;
	if ((r = meta_save(t, &m, true, err)) < 0)
		return r;
	dev_name(t, kind, id, name);
	if ((r = dm_exists(name, NULL, NULL, NULL, err)) <= 0)
		return r;
	snprintf(params, sizeof(params), "%s %u", t->pool_dev, m.devs[i].dev_id);
	r = dm_do(&(struct dm_req){.type = DM_DEVICE_RELOAD,
				   .name = name,
				   .target = "thin",
				   .params = params,
				   .sectors = size_sectors(size)},
		  NULL, err);
	if (r == 0)
		r = dm_do(&(struct dm_req){.type = DM_DEVICE_RESUME, .name = name}, NULL, err);
	return r < 0 ? imc_err_wrap(err, "grow %s %s", store_kind_name(kind), id) : 0;
}

static int thin_remove(struct store *s, enum store_kind kind, const char *id, imc_error *err)
{
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	int r = op_lock(th(s), &l, err);

	return r < 0 ? r : thin_remove_dev(th(s), kind, id, err);
}

static int thin_stat(struct store *s, enum store_kind kind, const char *id,
		     struct store_object_info *ret, imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	_cleanup_free_ char *params = NULL;
	char name[DM_NAME_MAX];
	uint64_t mapped = 0;
	ssize_t i;
	int r;

	if ((r = lock_find(t, &l, &m, kind, id, &i, err)) < 0)
		return r;
	dev_name(t, kind, id, name);
	r = dm_exists(name, NULL, NULL, NULL, err);
	if (r > 0) {
		r = dm_target_params(DM_DEVICE_STATUS, name, NULL, &params, err);
		if (r == 0)
			sscanf(params, "%" SCNu64, &mapped);
	} else if (r == 0) {
		r = thin_probe(t, &m.devs[i], &mapped, err);
		if (r == 0)
			r = imc_err(err, ENOENT, "%s %s: gone from pool %s", store_kind_name(kind),
				    id, t->pool_name);
	}
	if (r < 0)
		return r;
	*ret = (struct store_object_info){
	    .size = m.devs[i].size, .allocated = mapped * SECTOR, .extents = 0};
	return 0;
}

static int thin_list(struct store *s, enum store_kind kind, char ***ret_ids, size_t *ret_n,
		     imc_error *err)
{
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_(meta_free) struct thin_meta m = {0};
	char **ids = NULL;
	size_t n = 0;
	int r;

	if ((r = op_lock(th(s), &l, err)) < 0 || (r = meta_load(th(s), &m, err)) < 0)
		return r;
	for (size_t i = 0; i < m.n; i++) {
		char **grown;
		if (m.devs[i].kind != kind)
			continue;
		grown = realloc(ids, (n + 1) * sizeof(*ids));
		if (!grown || !(grown[n] = strdup(m.devs[i].id))) {
			store_list_free(grown ? grown : ids, n);
			return imc_err(err, ENOMEM, "out of memory");
		}
		ids = grown;
		n++;
	}
	*ret_ids = ids;
	*ret_n = n;
	return 0;
}

static int thin_usage(struct store *s, struct store_usage *ret, imc_error *err)
{
	struct thin *t = th(s);
	struct pool_status ps;
	uint64_t block = t->block_sectors * SECTOR;
	int r;

	pthread_mutex_lock(&dm_mutex);
	r = pool_status(t, &ps, err);
	pthread_mutex_unlock(&dm_mutex);
	if (r < 0)
		return r;
	*ret = (struct store_usage){.total = ps.data_total * block,
				    .used = ps.data_used * block,
				    .free = (ps.data_total - ps.data_used) * block,
				    .meta_total = ps.meta_total * 4096,
				    .meta_used = ps.meta_used * 4096};
	return 0;
}

/* Remove the pool (its loop devices go with it); refused while any device of it is active. */
static int thin_teardown(struct store *s, imc_error *err)
{
	struct thin *t = th(s);
	_cleanup_op_lock_ struct op_lock l = {.fd = -1};
	_cleanup_dm_task_ struct dm_task *task = NULL;
	size_t plen = strlen(t->prefix);
	struct dm_names *n;
	int r;

	if ((r = op_lock(t, &l, err)) < 0 ||
	    (r = dm_do(&(struct dm_req){.type = DM_DEVICE_LIST}, &task, err)) < 0)
		return r;
	n = dm_task_get_names(task);
	for (; n && n->dev; n = n->next ? (struct dm_names *)((char *)n + n->next) : NULL)
		if (strncmp(n->name, t->prefix, plen) == 0 && n->name[plen] == '-')
			return imc_err(err, EBUSY, "pool %s is in use (device %s is active)",
				       t->pool_name, n->name);
	return dm_remove_retry(t->pool_name, err);
}

const struct store_driver_ops store_thin_ops = {
    .name = "thin",
    .open = thin_open,
    .close = thin_close,
    .volume_create = thin_volume_create,
    .activate = thin_activate,
    .resize = thin_resize,
    .deactivate = thin_deactivate,
    .seal = thin_seal,
    .clone = thin_clone,
    .remove = thin_remove,
    .stat = thin_stat,
    .list = thin_list,
    .usage = thin_usage,
    .teardown = thin_teardown,
    .volume_from_snapshot = thin_volume_from_snapshot,
};
