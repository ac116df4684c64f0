/* The shared lower: one read-only mount of a cache's snapshot per host, under the attach room's
 * <state>/lowers/, shared by every overlay attach of that cache so that its files are cached
 * once (docs/architecture.md, "Overlay attach").
 *
 *   lowers/<id>.lock          flock: shared to add or drop a reference, exclusive to mount,
 *                             unmount or remove the lower's files
 *   lowers/<id>/              the mount point (ext4, ro,noload, on a read-only direct-I/O
 *                             autoclear loop device, or the driver's read-only device)
 *   lowers/<id>.json          {"cacheId","device","mountedAt"}, written before the mount
 *   lowers/<id>.refs/<att-id> one entry per attach using it (a hard link of its state file, or
 *                             an empty file); its directory's mtime is the time of the last
 *                             reference change (the last use once it is empty)
 *
 * The references are files, not a count: a reference whose attach has no state file belongs to
 * no live or dead attach (the state is created before the reference and removed after it) and is
 * dropped by the sweep, so a crash never leaves a lower held forever.  The mount point itself is
 * the record of the mount: a crash before the mount leaves an autoclear loop device that goes
 * with the process, a crash after it leaves a mounted, unreferenced lower that the sweep
 * releases when its grace runs out.
 *
 * Over 800 lines: the lower's life under its one lock protocol (acquire, release, sweep, the
 * lazy lower's mount, removal of a cache with its lowers, the fetch that joins a lazy server),
 * kept together so that every step that takes the lock is read beside the others. */
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "../common/priv.h"
#include "../dist/dist.h"
#include "internal.h"

#define LOWER_NAME_MAX	 128
#define LOWER_EXT4_OPTS	 "noload"
#define LOWER_SCAN_MAX	 4096 /* lowers looked at by one sweep */
#define LOWER_REFS_MAX	 100000
#define LOWER_RECORD_MAX (16 * 1024)

static const struct attach_lower_policy default_policy = {.grace_s = ATTACH_LOWER_GRACE_DEFAULT,
							  .max_mounted = ATTACH_LOWER_MAX_DEFAULT};

int lower_open_dir(struct store *s, imc_error *err)
{
	return attach_open_subdir(s, ATTACH_LOWERS_DIR, err);
}

static void lower_name(const char *id, const char *suffix, char ret[LOWER_NAME_MAX])
{
	snprintf(ret, LOWER_NAME_MAX, "%s%s", id, suffix);
}

/* The lower's mount point as an absolute path (overlayfs wants paths). */
static int lower_root(struct store *s, const char *id, char ret[PATH_MAX], imc_error *err)
{
	char real[PATH_MAX];

	if (!realpath(attach_state_dir(s), real))
		return imc_err_sys(err, errno, "%s", attach_state_dir(s));
	if ((size_t)snprintf(ret, PATH_MAX, "%s/" ATTACH_LOWERS_DIR "/%s", real, id) >= PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", real);
	return 0;
}

/* Open and flock id's lock file (how: LOCK_SH, LOCK_EX, | LOCK_NB); a file a sweep removed
 * while we waited is opened again.  -EBUSY (bare) when LOCK_NB finds it held. */
static int lower_lock(int ldir, const char *id, int how, imc_error *err)
{
	char name[LOWER_NAME_MAX];

	lower_name(id, ".lock", name);
	for (;;) {
		_cleanup_close_ int fd =
		    openat(ldir, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		struct stat st;

		if (fd < 0)
			return imc_err_sys(err, errno, "lower %s: lock", id);
		if (flock(fd, how) < 0)
			return errno == EWOULDBLOCK ? -EBUSY
						    : imc_err_sys(err, errno, "lower %s: lock", id);
		if (fstat(fd, &st) < 0)
			return imc_err_sys(err, errno, "lower %s: lock", id);
		if (st.st_nlink > 0)
			return steal_fd(&fd);
	}
}

/* Is lowers/<id> the root of a mount? */
static bool lower_mounted(int ldir, const char *id, dev_t *ret_dev)
{
	struct statx stx;

	if (statx(ldir, id, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &stx) < 0 ||
	    !(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT))
		return false;
	if (ret_dev)
		*ret_dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	return true;
}

static int refs_dir(int ldir, const char *id, bool create, imc_error *err)
{
	char name[LOWER_NAME_MAX];
	int fd;

	lower_name(id, ".refs", name);
	if (create && mkdirat(ldir, name, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "lower %s: references", id);
	fd = openat(ldir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT && !create
			   ? -ENOENT
			   : imc_err_sys(err, errno, "lower %s: references", id);
	return fd;
}

/* id's references as a directory stream in *ret; NULL when the lower has none (no directory). */
static int refs_opendir(int ldir, const char *id, DIR **ret, imc_error *err)
{
	int fd = refs_dir(ldir, id, false, err);

	*ret = NULL;
	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return fd;
	if (!(*ret = fdopendir(fd))) {
		close(fd);
		return imc_err_sys(err, errno, "lower %s: references", id);
	}
	return 0;
}

/* A reference's holder lives: an attach with a state file, or a snapshot of imc-snapshotter
 * (ATTACH_SNAP_REF_PREFIX and its id) whose directory <state>/snapshotter/snapshots/<id> is
 * there (made before the reference, removed before it is dropped). */
static bool ref_live(struct store *s, const char *name)
{
	const size_t n = strlen(ATTACH_SNAP_REF_PREFIX);
	char path[PATH_MAX];

	if (strncmp(name, ATTACH_SNAP_REF_PREFIX, n) != 0)
		return attach_state_exists(s, name);
	if (!name[n] || strspn(name + n, "0123456789") != strlen(name + n))
		return false;
	snprintf(path, sizeof(path), "%s/" ATTACH_SNAP_DIR "/%s", attach_state_dir(s), name + n);
	return access(path, F_OK) == 0;
}

/* The reference is a hard link of the attach's state file where the filesystem allows: a name,
 * no new inode (creating one is the costly part on some filesystems: ext4 without a journal scans
 * the inodes deleted in the last 30 s at every allocation).  Else an empty file. */
static int ref_add(struct store *s, int ldir, const char *id, const char *aid, imc_error *err)
{
	_cleanup_close_ int rdir = refs_dir(ldir, id, true, err);
	int fd, r;

	if (rdir < 0)
		return rdir;
	r = attach_state_link(s, aid, rdir, aid);
	if (r == 0 || r == -EEXIST)
		return 0;
	fd = openat(rdir, aid, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "lower %s: reference %s", id, aid);
	close(fd);
	return 0;
}

static int ref_drop(int ldir, const char *id, const char *aid, imc_error *err)
{
	_cleanup_close_ int rdir = refs_dir(ldir, id, false, err);

	if (rdir == -ENOENT)
		return 0;
	if (rdir < 0)
		return rdir;
	if (unlinkat(rdir, aid, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "lower %s: reference %s", id, aid);
	return 0;
}

static bool snapshot_exists(struct store *s, const char *id)
{
	struct store_object_info info;
	imc_error ignored;

	return store_stat(s, STORE_SNAPSHOT, id, &info, &ignored) != -ENOENT;
}

/* Mount the snapshot read-only at lowers/<id> (locked exclusively by us). */
static int lower_mount(struct store *s, int ldir, const char *id, const char *root, imc_error *err)
{
	struct store_dev dev = {.fd = -1};
	_cleanup_json_ json_t *rec = NULL;
	char name[LOWER_NAME_MAX];
	int r;

	if (mkdirat(ldir, id, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "lower %s: mount point", id);
	r = store_activate(s, STORE_SNAPSHOT, id, STORE_ACTIVATE_READ_ONLY, &dev, err);
	if (r == -ENOENT)
		return imc_err(err, ENOENT, "cache %s: not in the local store", id);
	if (r < 0)
		return r;
	lower_name(id, ".json", name);
	rec = json_pack("{s:s, s:s, s:I}", "cacheId", id, "device", dev.path, "mountedAt",
			(json_int_t)imc_now());
	r = rec ? imc_json_write_replace(ldir, name, rec, err) : imc_err(err, ENOMEM, "no memory");
	attach_stop_point("lower-after-loop");
	if (r == 0)
		r = imc_priv_mount_fs("ext4", dev.path, LOWER_EXT4_OPTS, true, root, err);
	/* The mount holds the device now: an autoclear loop device goes with it.  A device that
	 * does not go by itself (thin) is deactivated when the lower is unmounted. */
	if (dev.fd >= 0)
		close(dev.fd);
	if (r < 0) {
		struct store_dev byname = {.fd = -1};
		imc_error ignored;
		snprintf(byname.path, sizeof(byname.path), "%s", dev.path);
		store_deactivate(s, STORE_SNAPSHOT, id, &byname, &ignored);
		unlinkat(ldir, name, 0);
		return imc_err_wrap(err, "lower of cache %s", id);
	}
	attach_stop_point("lower-after-mount");
	return 0;
}

/* The record, then the server, then a read-only loop device on its file, then the mount. */
static int lazy_mount_steps(struct store *s, int ldir, const char *id, const char *root,
			    const struct dist_fetch_config *lazy, const char *name, imc_error *err)
{
	const struct imc_loop_opts lo = {.read_only = true, .autoclear = true, .block_size = 4096};
	char image[PATH_MAX], dev[IMC_LOOP_PATH_MAX];
	_cleanup_json_ json_t *rec = NULL;
	_cleanup_close_ int fd = -1, loop = -1;
	int r;

	rec = json_pack("{s:s, s:s, s:b}", "cacheId", id, "device", "", "lazy", 1);
	if (!rec)
		return imc_err(err, ENOMEM, "out of memory");
	if ((r = imc_json_write_replace(ldir, name, rec, err)) < 0 ||
	    (r = lazy_start(s, ldir, lazy, id, err)) < 0)
		return r;
	attach_stop_point("lazy-after-server");
	if ((r = lazy_fuse_dir(s, id, image, err)) < 0)
		return r;
	if (strlen(image) + sizeof("/" DIST_LAZY_FILE) > sizeof(image))
		return imc_err(err, ENAMETOOLONG, "%s: path too long", image);
	strncat(image, "/" DIST_LAZY_FILE, sizeof(image) - strlen(image) - 1);
	if ((fd = open(image, O_RDONLY | O_CLOEXEC)) < 0)
		return imc_err_sys(err, errno, "%s", image);
	if ((r = imc_priv_loop_attach(fd, &lo, dev, &loop, err)) < 0)
		return r;
	json_object_set_new(rec, "device", json_string(dev));
	json_object_set_new(rec, "mountedAt", json_integer((json_int_t)imc_now()));
	if ((r = imc_json_write_replace(ldir, name, rec, err)) < 0)
		return r;
	return imc_priv_mount_fs("ext4", dev, LOWER_EXT4_OPTS, true, root, err);
}

/* A cache the store lacks: its lower on the lazy server's file (locked exclusively by us). */
static int lower_mount_lazy(struct store *s, int ldir, const char *id, const char *root,
			    const struct dist_fetch_config *lazy, imc_error *err)
{
	char name[LOWER_NAME_MAX];
	int r;

	if (mkdirat(ldir, id, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "lower %s: mount point", id);
	lower_name(id, ".json", name);
	r = lazy_mount_steps(s, ldir, id, root, lazy, name, err);
	if (r < 0) {
		imc_error ignored;
		lazy_stop(s, ldir, id, &ignored);
		unlinkat(ldir, name, 0);
		return imc_err_wrap(err, "lazy lower of cache %s", id);
	}
	attach_stop_point("lower-after-mount");
	return 0;
}

int lower_acquire(struct store *s, const char *cache_id, const char *aid,
		  const struct attach_lower_policy *pol, const struct dist_fetch_config *lazy,
		  char ret_root[PATH_MAX], imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_close_ int lock = -1;
	bool mounted_here = false;
	int r;

	if (ldir < 0)
		return ldir;
	if ((r = lower_root(s, cache_id, ret_root, err)) < 0)
		return r;
	if ((lock = lower_lock(ldir, cache_id, LOCK_SH, err)) < 0)
		return lock;
	/* The reference first: from here no sweep unmounts the lower under us. */
	if ((r = ref_add(s, ldir, cache_id, aid, err)) < 0)
		return r;
	if (lower_mounted(ldir, cache_id, NULL)) {
		/* A deleted cache's lower lives on for its pods until they go, but takes no new
		 * ones. */
		if (snapshot_exists(s, cache_id) || lazy_alive(ldir, cache_id))
			return 0;
		imc_error ignored;
		ref_drop(ldir, cache_id, aid, &ignored);
		return imc_err(err, ENOENT, "cache %s: not in the local store", cache_id);
	}
	if (flock(lock, LOCK_EX) < 0)
		r = imc_err_sys(err, errno, "lower %s: lock", cache_id);
	else if (!lower_mounted(ldir, cache_id, NULL)) {
		r = lazy && !snapshot_exists(s, cache_id)
			? lower_mount_lazy(s, ldir, cache_id, ret_root, lazy, err)
			: lower_mount(s, ldir, cache_id, ret_root, err);
		mounted_here = r == 0;
	}
	if (r < 0) {
		imc_error ignored;
		ref_drop(ldir, cache_id, aid, &ignored);
		return r;
	}
	close(steal_fd(&lock));
	if (mounted_here) {
		/* One more lower mounted: the limit may now release an unused one. */
		imc_error ignored;
		lower_sweep(s, pol, NULL, &ignored);
	}
	return 0;
}

int lower_release(struct store *s, const char *cache_id, const char *aid, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_close_ int lock = -1;

	if (ldir < 0)
		return ldir;
	if ((lock = lower_lock(ldir, cache_id, LOCK_SH, err)) < 0)
		return lock;
	return ref_drop(ldir, cache_id, aid, err);
}

/* ---- the sweep ------------------------------------------------------------------------------ */

static int64_t timespec_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* Count id's references, dropping those whose attach has no state; *ret_last = the time of the
 * last reference change (ns since the epoch: the LRU order of lowers released within a second). */
static int refs_count(struct store *s, int ldir, const char *id, json_t *repairs, size_t *ret_n,
		      int64_t *ret_last, imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	struct stat st;
	size_t n = 0, seen = 0;
	int r;

	*ret_n = 0;
	*ret_last = 0;
	if ((r = refs_opendir(ldir, id, &d, err)) < 0 || !d)
		return r;
	while ((de = readdir(d)) && seen++ < LOWER_REFS_MAX) {
		if (de->d_name[0] == '.')
			continue;
		if (ref_live(s, de->d_name)) {
			n++;
			continue;
		}
		if (unlinkat(dirfd(d), de->d_name, 0) == 0 && repairs)
			json_array_append_new(repairs,
					      json_sprintf("dropped reference of gone attach %s "
							   "on the lower of %s",
							   de->d_name, id));
	}
	if (fstat(dirfd(d), &st) == 0)
		*ret_last = timespec_ns(&st.st_mtim);
	*ret_n = n;
	return 0;
}

/* Remove what is left of an unmounted, unreferenced lower (locked exclusively by us). */
static void lower_forget(int ldir, const char *id)
{
	char name[LOWER_NAME_MAX];

	lower_name(id, ".refs", name);
	unlinkat(ldir, name, AT_REMOVEDIR);
	lower_name(id, ".json", name);
	unlinkat(ldir, name, 0);
	unlinkat(ldir, id, AT_REMOVEDIR);
	lower_name(id, ".lazy.log", name);
	unlinkat(ldir, name, 0);
	lower_name(id, ".lazy.stats", name);
	unlinkat(ldir, name, 0);
	lower_name(id, ".lock", name);
	unlinkat(ldir, name, 0);
}

/* Unmount lowers/<id> (locked exclusively by us, unreferenced) and deactivate its device; the
 * records stay (lower_forget). */
static int lower_unmount_keep(struct store *s, int ldir, const char *id, imc_error *err)
{
	_cleanup_json_ json_t *rec = NULL;
	char root[PATH_MAX], name[LOWER_NAME_MAX];
	imc_error ignored;
	const char *dev;
	int r;

	if ((r = lower_root(s, id, root, err)) < 0)
		return r;
	attach_stop_point("lower-before-umount");
	r = imc_priv_umount(root, 0, err);
	if (r < 0 && r != -EINVAL)
		return imc_err_wrap(err, "release the lower of cache %s", id);
	attach_stop_point("lower-after-umount");
	lower_name(id, ".json", name);
	if (lazy_present(ldir, id)) {
		/* The loop device went with the mount: now the server's file system. */
		if ((r = lazy_stop(s, ldir, id, err)) < 0)
			return imc_err_wrap(err, "release the lower of cache %s", id);
	} else if (imc_json_read_file(ldir, name, LOWER_RECORD_MAX, &rec, &ignored) == 0 &&
		   (dev = json_string_value(json_object_get(rec, "device")))) {
		struct store_dev sd = {.fd = -1};
		snprintf(sd.path, sizeof(sd.path), "%s", dev);
		if ((r = store_deactivate(s, STORE_SNAPSHOT, id, &sd, err)) < 0)
			return imc_err_wrap(err, "release the lower of cache %s", id);
	}
	return 0;
}

/* Unmount lowers/<id> (locked exclusively by us, unreferenced), deactivate its device and
 * remove its records. */
static int lower_unmount(struct store *s, int ldir, const char *id, const char *why,
			 json_t *repairs, imc_error *err)
{
	int r = lower_unmount_keep(s, ldir, id, err);

	if (r < 0)
		return r;
	lower_forget(ldir, id);
	if (repairs)
		json_array_append_new(repairs,
				      json_sprintf("released the lower of cache %s (%s)", id, why));
	return 0;
}

int lower_release_now(struct store *s, const char *cache_id, const char *aid, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_close_ int lock = -1;
	size_t refs;
	int64_t last;
	int r;

	if (ldir < 0)
		return ldir;
	if ((lock = lower_lock(ldir, cache_id, LOCK_SH, err)) < 0)
		return lock;
	if ((r = ref_drop(ldir, cache_id, aid, err)) < 0)
		return r;
	if (flock(lock, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? 0
					    : imc_err_sys(err, errno, "lower %s: lock", cache_id);
	if ((r = refs_count(s, ldir, cache_id, NULL, &refs, &last, err)) < 0 || refs > 0)
		return r;
	if (lower_mounted(ldir, cache_id, NULL) || lazy_present(ldir, cache_id))
		return lower_unmount(s, ldir, cache_id, "its last user went", NULL, err);
	lower_forget(ldir, cache_id);
	return 0;
}

struct idle {
	char id[LOWER_NAME_MAX];
	int64_t last;
};

static int cmp_idle(const void *a, const void *b)
{
	const struct idle *x = a, *y = b;
	return x->last < y->last ? -1 : x->last > y->last;
}

struct sweep {
	struct idle *idle;
	size_t n_idle, cap, mounted;
};

/* One lower: release it if unreferenced past its grace, else note it (mounted, idle). */
static int sweep_one(struct store *s, int ldir, const char *id,
		     const struct attach_lower_policy *pol, struct sweep *sw, json_t *repairs,
		     imc_error *err)
{
	_cleanup_close_ int lock = lower_lock(ldir, id, LOCK_EX | LOCK_NB, err);
	size_t refs;
	int64_t last;
	bool mounted;
	int r;

	if (lock == -EBUSY) {
		sw->mounted++; /* in someone's hands: counts, but is not ours to release */
		return 0;
	}
	if (lock < 0)
		return lock;
	if ((r = refs_count(s, ldir, id, repairs, &refs, &last, err)) < 0)
		return r;
	mounted = lower_mounted(ldir, id, NULL);
	if (refs > 0) {
		sw->mounted += mounted;
		return 0;
	}
	if (!mounted) {
		/* A crash after the unmount (or a mount that went behind our back): its device,
		 * where the driver keeps one, a lazy server, and the records. */
		char name[LOWER_NAME_MAX];
		lower_name(id, ".json", name);
		if (faccessat(ldir, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0 || lazy_present(ldir, id))
			return lower_unmount(s, ldir, id, "no longer mounted", repairs, err);
		lower_forget(ldir, id);
		return 0;
	}
	if (lazy_present(ldir, id) && !lazy_alive(ldir, id))
		return lower_unmount(s, ldir, id, "its lazy server is gone", repairs, err);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	if (timespec_ns(&now) - last >= pol->grace_s * 1000000000)
		return lower_unmount(s, ldir, id, "unused past its grace", repairs, err);
	if (!snapshot_exists(s, id))
		return lower_unmount(s, ldir, id, "its cache was deleted", repairs, err);
	sw->mounted++;
	if (sw->n_idle == sw->cap) {
		size_t cap = sw->cap ? sw->cap * 2 : 16;
		struct idle *g = realloc(sw->idle, cap * sizeof(*g));
		if (!g)
			return imc_err(err, ENOMEM, "out of memory");
		sw->idle = g;
		sw->cap = cap;
	}
	snprintf(sw->idle[sw->n_idle].id, LOWER_NAME_MAX, "%s", id);
	sw->idle[sw->n_idle++].last = last;
	return 0;
}

/* Over the limit: release unreferenced lowers, least recently used first. */
static int sweep_lru(struct store *s, int ldir, const struct attach_lower_policy *pol,
		     struct sweep *sw, json_t *repairs, imc_error *err)
{
	qsort(sw->idle, sw->n_idle, sizeof(*sw->idle), cmp_idle);
	for (size_t i = 0; i < sw->n_idle && sw->mounted > pol->max_mounted; i++) {
		const char *id = sw->idle[i].id;
		_cleanup_close_ int lock = lower_lock(ldir, id, LOCK_EX | LOCK_NB, err);
		size_t refs;
		int64_t last;
		int r;

		if (lock == -EBUSY)
			continue;
		if (lock < 0)
			return lock;
		if ((r = refs_count(s, ldir, id, NULL, &refs, &last, err)) < 0)
			return r;
		if (refs > 0 || !lower_mounted(ldir, id, NULL))
			continue;
		if ((r = lower_unmount(s, ldir, id, "least recently used over the limit", repairs,
				       err)) < 0)
			return r;
		sw->mounted--;
	}
	return 0;
}

/* Call each(id, ctx) for every <id>SUFFIX (a 5-byte suffix: ".lock", ".lazy") in the lowers
 * directory ldir, whose id is a valid name, until one fails. */
static int lower_scan(int ldir, const char *suffix,
		      int (*each)(const char *id, void *ctx, imc_error *err), void *ctx,
		      imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	size_t seen = 0;
	int r = 0, fd;

	if ((fd = fcntl(ldir, F_DUPFD_CLOEXEC, 3)) < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, ATTACH_LOWERS_DIR);
	}
	while (r == 0 && (de = readdir(d)) && seen++ < LOWER_SCAN_MAX) {
		size_t len = strlen(de->d_name);
		char id[LOWER_NAME_MAX];
		if (de->d_name[0] == '.' || len <= 5 || len - 5 >= LOWER_NAME_MAX ||
		    strcmp(de->d_name + len - 5, suffix) != 0)
			continue;
		snprintf(id, sizeof(id), "%.*s", (int)(len - 5), de->d_name);
		if (imc_name_valid(id, 64))
			r = each(id, ctx, err);
	}
	return r;
}

/* What the sweep and the reap of lazy lowers need for each lower. */
struct sweep_ctx {
	struct store *s;
	int ldir;
	const struct attach_lower_policy *pol;
	struct sweep sw;
	json_t *repairs;
};

static int sweep_each(const char *id, void *ctx, imc_error *err)
{
	struct sweep_ctx *c = ctx;

	return sweep_one(c->s, c->ldir, id, c->pol, &c->sw, c->repairs, err);
}

static int reap_each(const char *id, void *ctx, imc_error *err)
{
	struct sweep_ctx *c = ctx;

	return lazy_reap(c->s, c->ldir, id, c->repairs, err);
}

struct drop_ctx {
	struct store *s;
	int ldir;
	bool (*live)(const char *name, void *ctx);
	void *live_ctx;
	unsigned dropped;
};

/* The references of id named ATTACH_SNAP_REF_PREFIX… that the caller says are dead: dropped,
 * and the lower released when that leaves it unreferenced. */
static int drop_each(const char *id, void *ctx, imc_error *err)
{
	struct drop_ctx *c = ctx;
	_cleanup_json_ json_t *dead = json_array();
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	size_t seen = 0, i;
	json_t *name;
	int r;

	if (!dead)
		return imc_err(err, ENOMEM, "out of memory");
	if ((r = refs_opendir(c->ldir, id, &d, err)) < 0 || !d)
		return r;
	while ((de = readdir(d)) && seen++ < LOWER_REFS_MAX)
		if (strncmp(de->d_name, ATTACH_SNAP_REF_PREFIX, strlen(ATTACH_SNAP_REF_PREFIX)) ==
			0 &&
		    !c->live(de->d_name, c->live_ctx))
			json_array_append_new(dead, json_string(de->d_name));
	json_array_foreach(dead, i, name)
	{
		if ((r = lower_release_now(c->s, id, json_string_value(name), err)) < 0)
			return r;
		c->dropped++;
	}
	return 0;
}

int lower_drop_snap_refs(struct store *s, bool (*live)(const char *name, void *ctx), void *ctx,
			 unsigned *ret_dropped, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	struct drop_ctx c = {.s = s, .ldir = ldir, .live = live, .live_ctx = ctx};
	int r;

	if (ldir < 0)
		return ldir;
	r = lower_scan(ldir, ".lock", drop_each, &c, err);
	*ret_dropped += c.dropped;
	return r;
}

int lower_sweep(struct store *s, const struct attach_lower_policy *pol, json_t *repairs,
		imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	struct sweep_ctx c = {.s = s, .pol = pol ? pol : &default_policy, .repairs = repairs};
	int r;

	if (ldir < 0)
		return ldir;
	c.ldir = ldir;
	r = lower_scan(ldir, ".lock", sweep_each, &c, err);
	if (r == 0 && c.sw.mounted > c.pol->max_mounted)
		r = sweep_lru(s, ldir, c.pol, &c.sw, repairs, err);
	free(c.sw.idle);
	return r;
}

int lower_reap_lazy(struct store *s, json_t *repairs, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	struct sweep_ctx c = {.s = s, .ldir = ldir, .repairs = repairs};

	if (ldir < 0)
		return ldir;
	return lower_scan(ldir, ".lazy", reap_each, &c, err);
}

int attach_lowers_release(struct store *s, imc_error *err)
{
	static const struct attach_lower_policy now = {.grace_s = 0, .max_mounted = 0};

	return lower_sweep(s, &now, NULL, err);
}

/* ---- removing a cache's snapshot ------------------------------------------------------------ */

/* Detach every overlay attach that holds a reference on id's lower (none locked by us). */
static int lower_detach_all(struct store *s, int ldir, const char *id, imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	size_t seen = 0;
	int r;

	if ((r = refs_opendir(ldir, id, &d, err)) < 0 || !d)
		return r;
	while ((de = readdir(d)) && seen++ < LOWER_REFS_MAX) {
		if (de->d_name[0] == '.' || !attach_state_exists(s, de->d_name))
			continue;
		r = attach_detach(s, de->d_name, err);
		if (r < 0 && r != -ENOENT)
			return imc_err_wrap(err, "cache %s", id);
	}
	return 0;
}

int attach_snapshot_remove(struct store *s, const char *id, bool force, imc_error *err)
{
	_cleanup_close_ int ldir = -1, lock = -1;
	char name[LOWER_NAME_MAX];
	size_t refs;
	int64_t last;
	int r;

	if (!imc_name_valid(id, 64))
		return store_remove(s, STORE_SNAPSHOT, id, err); /* which names what is wrong */
	if ((ldir = lower_open_dir(s, err)) < 0)
		return ldir;
	if (force && (r = lower_detach_all(s, ldir, id, err)) < 0)
		return r;
	/* Held through the removal: an attach that comes now finds no snapshot to mount. */
	if ((lock = lower_lock(ldir, id, LOCK_EX, err)) < 0)
		return lock;
	if ((r = refs_count(s, ldir, id, NULL, &refs, &last, err)) < 0)
		return r;
	if (refs > 0)
		return imc_err(
		    err, EBUSY,
		    "cache %s: its shared lower is in use by %zu overlay attach(es) or "
		    "imc-snapshotter snapshot(s) on this host; detach them or delete with "
		    "force=true (which leaves the snapshotter's: remove their images)",
		    id, refs);
	lower_name(id, ".json", name);
	if ((lower_mounted(ldir, id, NULL) ||
	     faccessat(ldir, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) &&
	    (r = lower_unmount_keep(s, ldir, id, err)) < 0)
		return r;
	r = store_remove(s, STORE_SNAPSHOT, id, err);
	lower_forget(ldir, id);
	return r;
}

/* ---- listing -------------------------------------------------------------------------------- */

static json_t *lower_json(struct store *s, int ldir, const char *id)
{
	_cleanup_json_ json_t *rec = NULL;
	char name[LOWER_NAME_MAX];
	imc_error ignored;
	size_t refs = 0;
	int64_t last = 0;
	_cleanup_close_ int rdir = refs_dir(ldir, id, false, &ignored);

	lower_name(id, ".json", name);
	if (imc_json_read_file(ldir, name, LOWER_RECORD_MAX, &rec, &ignored) < 0)
		rec = json_pack("{s:s}", "cacheId", id);
	if (rdir >= 0) {
		int fd = fcntl(rdir, F_DUPFD_CLOEXEC, 3);
		_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *de;
		struct stat st;
		while (d && (de = readdir(d)))
			refs += de->d_name[0] != '.' && ref_live(s, de->d_name);
		if (fstat(rdir, &st) == 0)
			last = st.st_mtim.tv_sec;
	}
	if (rec) {
		json_object_set_new(rec, "refs", json_integer((json_int_t)refs));
		json_object_set_new(rec, "lastUsedAt", json_integer(last));
		json_object_set_new(rec, "mounted", json_boolean(lower_mounted(ldir, id, NULL)));
		json_t *lazy = lazy_stats_read(ldir, id);
		if (lazy)
			json_object_set_new(rec, "lazyStats", lazy);
	}
	return steal_pointer(&rec);
}

int attach_lowers_list(struct store *s, json_t **ret, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_json_ json_t *list = json_array();
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int fd;

	if (ldir < 0)
		return ldir;
	if (!list)
		return imc_err(err, ENOMEM, "out of memory");
	if ((fd = fcntl(ldir, F_DUPFD_CLOEXEC, 3)) < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, ATTACH_LOWERS_DIR);
	}
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		char id[LOWER_NAME_MAX];
		json_t *l;
		if (de->d_name[0] == '.' || len <= 5 || len - 5 >= LOWER_NAME_MAX ||
		    strcmp(de->d_name + len - 5, ".lock") != 0)
			continue;
		snprintf(id, sizeof(id), "%.*s", (int)(len - 5), de->d_name);
		if (imc_name_valid(id, 64) && (l = lower_json(s, ldir, id)))
			json_array_append_new(list, l);
	}
	*ret = steal_pointer(&list);
	return 0;
}

/* ---- whole fetches ------------------------------------------------------------------------ */

/* The lower's lock file, when a fetch created it for nothing else (locked exclusively by us). */
static void lock_forget_unused(int ldir, const char *id)
{
	char name[LOWER_NAME_MAX];

	lower_name(id, ".json", name);
	if (lower_mounted(ldir, id, NULL) || faccessat(ldir, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return;
	lower_name(id, ".refs", name);
	if (faccessat(ldir, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0 || lazy_present(ldir, id))
		return;
	lower_name(id, ".lock", name);
	unlinkat(ldir, name, 0);
}

/* The lower's lock, exclusively, with no lazy server of id alive: one is joined first (waited
 * for until it sealed the snapshot, then 0 and *ret_lock -1: nothing to fetch). */
static int fetch_lock(struct store *s, int ldir, const char *id, int *ret_lock, bool *ret_joined,
		      imc_error *err)
{
	*ret_lock = -1;
	for (;;) {
		lazy_join(s, ldir, id, ret_joined);
		if (snapshot_exists(s, id))
			return 0;
		if ((*ret_lock = lower_lock(ldir, id, LOCK_EX, err)) < 0)
			return *ret_lock;
		if (!lazy_alive(ldir, id))
			return 0;
		close(*ret_lock); /* a lazy lower started meanwhile: join it */
		*ret_lock = -1;
	}
}

int attach_fetch(struct store *s, const struct dist_fetch_config *fc, const char *id,
		 struct dist_fetch_stats *ret_stats, bool *ret_joined, imc_error *err)
{
	_cleanup_close_ int ldir = -1, lock = -1;
	int r;

	*ret_joined = false;
	if (!imc_name_valid(id, 64) || snapshot_exists(s, id))
		return dist_fetch_snapshot(s, fc, id, ret_stats, err); /* it says what is wrong */
	if ((ldir = lower_open_dir(s, err)) < 0)
		return ldir;
	if ((r = fetch_lock(s, ldir, id, &lock, ret_joined, err)) < 0)
		return r;
	if (lock >= 0)
		attach_stop_point("fetch-locked");
	r = dist_fetch_snapshot(s, fc, id, ret_stats, err); /* joined: records its use */
	if (lock >= 0)
		lock_forget_unused(ldir, id);
	return r;
}

/* ---- policy --------------------------------------------------------------------------------- */

static int policy_number(const char *name, const char *v, long long max, long long *ret,
			 imc_error *err)
{
	char *end;
	long long n;

	if (!v || !*v)
		return 0;
	errno = 0;
	n = strtoll(v, &end, 10);
	if (errno || *end || n < 0 || n > max)
		return imc_err(err, EINVAL, "%s=\"%.40s\": want 0-%lld", name, v, max);
	*ret = n;
	return 1;
}

int attach_lower_policy_parse(const char *grace, const char *max, struct attach_lower_policy *ret,
			      imc_error *err)
{
	long long n;
	int r;

	*ret = default_policy;
	if ((r = policy_number("IMCACHE_LOWER_GRACE", grace, ATTACH_LOWER_GRACE_MAX, &n, err)) < 0)
		return r;
	if (r > 0)
		ret->grace_s = n;
	if ((r = policy_number("IMCACHE_LOWER_MAX", max, ATTACH_LOWER_MAX_MAX, &n, err)) < 0)
		return r;
	if (r > 0)
		ret->max_mounted = (unsigned)n;
	return 0;
}

int attach_mode_parse(const char *name, enum attach_mode *ret, imc_error *err)
{
	if (strcmp(name, ATTACH_MODE_NAME_OVERLAY) == 0)
		*ret = ATTACH_MODE_OVERLAY;
	else if (strcmp(name, ATTACH_MODE_NAME_CLONE) == 0)
		*ret = ATTACH_MODE_CLONE;
	else
		return imc_err(err, EINVAL, "attach mode \"%.40s\": want overlay or clone", name);
	return 0;
}
