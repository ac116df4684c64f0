/* The reflink driver: one ext4 image file per volume, snapshot and clone in a pool directory on a
 * filesystem that can share extents (XFS, btrfs).  clone = FICLONE, activate = loop device.  When
 * the state dir's own filesystem cannot reflink, the pool is an embedded sparse XFS file
 * (<state>/pool.img) loop-mounted at <state>/pool.
 *
 * Over 800 lines: the pool's layout (volumes, snapshots, clones), its embedded XFS (ballast, trim,
 * teardown) and the seal's compaction all depend on one another's invariants (few extents, the
 * ballast's accounting), so they are read together here. */
#include <dirent.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <pthread.h>

#include "../common/priv.h"
#include "internal.h"

#define XFS_SUPER_MAGIC 0x58465342
#define POOL_DIR	"pool"
#define POOL_FILE	"pool.img"
#define IMG_SUFFIX	".img"
#define NAME_MAX_LEN	128
#define COMPACT_SUFFIX	".compact"
#define BALLAST_FILE	".ballast"     /* in the embedded pool's root: see pool_fit */
#define POOL_MIN_SIZE	(300ULL << 20) /* what mkfs.xfs accepts */
#define POOL_MARGIN_MIN (64ULL << 20)
#define FIT_SLACK	(8ULL << 20) /* the ballast moves only by more than this */

struct reflink {
	char *pool_dir;
	bool embedded;
	pthread_mutex_t fit_lock; /* one ballast change at a time */
	int kind_dirs[3];	  /* volumes/, snapshots/, clones/ in the pool */
};

static const char *const kind_dirs[] = {
    [STORE_VOLUME] = "volumes", [STORE_SNAPSHOT] = "snapshots", [STORE_CLONE] = "clones"};

static struct reflink *rl(struct store *s)
{
	return s->priv;
}

static void img_name(const char *id, char buf[NAME_MAX_LEN])
{
	snprintf(buf, NAME_MAX_LEN, "%s" IMG_SUFFIX, id);
}

/* Can files in dirfd share extents?  Probed with two anonymous files: the probe is not a store
 * operation, so it does not go through the privileged funnel. */
static bool dir_can_reflink(const char *dir)
{
	_cleanup_close_ int src = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	_cleanup_close_ int dst = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	char block[4096] = {1};

	if (src < 0 || dst < 0 || imc_write_all(src, block, sizeof(block)) < 0)
		return false;
	return ioctl(dst, FICLONE, src) == 0;
}

/* Is something (our XFS pool) already mounted on pool_dir? */
static int pool_mounted(const char *state_dir, const char *pool_dir, imc_error *err)
{
	struct stat sst, pst;
	struct statfs fs;

	if (stat(state_dir, &sst) < 0)
		return imc_err_sys(err, errno, "%s", state_dir);
	if (stat(pool_dir, &pst) < 0)
		return imc_err_sys(err, errno, "%s", pool_dir);
	if (sst.st_dev == pst.st_dev)
		return 0;
	if (statfs(pool_dir, &fs) < 0)
		return imc_err_sys(err, errno, "%s", pool_dir);
	if (fs.f_type != XFS_SUPER_MAGIC)
		return imc_err(err, EEXIST,
			       "%s: something other than the XFS pool is mounted there", pool_dir);
	return 1;
}

static int pool_create_file(const char *path, uint64_t size, imc_error *err)
{
	static const char *const mkfs_args[] = {"-q", "-m", "reflink=1", "-s", "size=4096", NULL};
	_cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int r;

	if (fd < 0)
		return imc_err_sys(err, errno, "create %s", path);
	if (ftruncate(fd, (off_t)size) < 0) {
		r = imc_err_sys(err, errno, "size %s", path);
		unlink(path);
		return r;
	}
	r = imc_priv_mkfs("xfs", mkfs_args, path, err);
	if (r < 0)
		unlink(path);
	return r;
}

static int pool_mount(const char *file, const char *dir, imc_error *err)
{
	static const struct imc_loop_opts lo = {
	    .autoclear = true, .direct_io = true, .block_size = 4096};
	_cleanup_close_ int fd = open(file, O_RDWR | O_CLOEXEC);
	_cleanup_close_ int loop_fd = -1;
	char dev[IMC_LOOP_PATH_MAX];
	int r;

	if (fd < 0)
		return imc_err_sys(err, errno, "open %s", file);
	r = imc_priv_loop_attach(fd, &lo, dev, &loop_fd, err);
	if (r < 0)
		return imc_err_wrap(err, "pool %s", file);
	/* With autoclear the loop device goes away when the pool is unmounted, or right here
	 * when the mount fails and loop_fd is closed. */
	return imc_priv_mount(dev, dir, "xfs", MS_NOATIME, "", err);
}

/* What the state dir's filesystem keeps free beside the embedded pool (blobs, metadata, what else
 * lives there): 1/32 of it, at least 64 MiB. */
static uint64_t pool_margin(const struct statvfs *sv)
{
	uint64_t m = (uint64_t)sv->f_blocks * sv->f_frsize / 32;

	return m > POOL_MARGIN_MIN ? m : POOL_MARGIN_MIN;
}

static void note_repair(struct store *s, const char *msg)
{
	if (!s->repairs)
		s->repairs = json_array();
	json_array_append_new(s->repairs, json_string(msg));
}

/* The size of a new pool file, against the filesystem it goes on: a sparse file larger than
 * that filesystem's free space ends in I/O errors under XFS once it fills.  The default is
 * clamped to the free space less a margin; a size asked for that does not fit, and a filesystem
 * too small for any pool, are refused. */
static int pool_fit_size(struct store *s, uint64_t *ret_size, imc_error *err)
{
	struct statvfs sv;
	uint64_t avail, margin, cap;
	char msg[256];

	if (statvfs(s->state_dir, &sv) < 0)
		return imc_err_sys(err, errno, "statvfs %s", s->state_dir);
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	margin = pool_margin(&sv);
	cap = (avail > margin ? avail - margin : 0) & ~((1ULL << 20) - 1);
	if (cap < POOL_MIN_SIZE)
		return imc_err(
		    err, ENOSPC,
		    "the filesystem of %s has %llu MiB free: an embedded pool needs %llu "
		    "MiB and %llu MiB left beside it (give --state-dir on a larger "
		    "filesystem, or one that can reflink)",
		    s->state_dir, (unsigned long long)(avail >> 20),
		    (unsigned long long)(POOL_MIN_SIZE >> 20), (unsigned long long)(margin >> 20));
	if (s->pool_size <= cap) {
		*ret_size = s->pool_size;
		return 0;
	}
	if (s->pool_size_given)
		return imc_err(err, ENOSPC,
			       "pool size %llu MiB: the filesystem of %s has %llu MiB free, so at "
			       "most %llu MiB (%llu MiB are left beside the pool): give a smaller "
			       "--pool-size",
			       (unsigned long long)(s->pool_size >> 20), s->state_dir,
			       (unsigned long long)(avail >> 20), (unsigned long long)(cap >> 20),
			       (unsigned long long)(margin >> 20));
	snprintf(msg, sizeof(msg),
		 "pool.img: sized %llu MiB, not the default %llu MiB: the filesystem of the state "
		 "dir has %llu MiB free",
		 (unsigned long long)(cap >> 20), (unsigned long long)(s->pool_size >> 20),
		 (unsigned long long)(avail >> 20));
	note_repair(s, msg);
	*ret_size = cap;
	return 0;
}

static int open_pool(struct store *s, struct reflink *p, imc_error *err)
{
	_cleanup_free_ char *file = imc_path_join(s->state_dir, POOL_FILE);
	struct stat st;
	int r;

	if (!file)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(p->pool_dir, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", p->pool_dir);
	p->embedded = stat(file, &st) == 0 || !dir_can_reflink(s->state_dir);
	if (!p->embedded)
		return 0;
	r = pool_mounted(s->state_dir, p->pool_dir, err);
	if (r != 0)
		return r < 0 ? r : 0;
	if (stat(file, &st) < 0) {
		uint64_t size = 0;

		r = pool_fit_size(s, &size, err);
		if (r == 0)
			r = pool_create_file(file, size, err);
		if (r < 0)
			return r;
	}
	return pool_mount(file, p->pool_dir, err);
}

static int open_kind_dirs(struct reflink *p, imc_error *err)
{
	_cleanup_close_ int pool = open(p->pool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (pool < 0)
		return imc_err_sys(err, errno, "%s", p->pool_dir);
	for (int k = 0; k < 3; k++) {
		if (mkdirat(pool, kind_dirs[k], 0700) < 0 && errno != EEXIST)
			return imc_err_sys(err, errno, "mkdir %s/%s", p->pool_dir, kind_dirs[k]);
		p->kind_dirs[k] = openat(pool, kind_dirs[k], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (p->kind_dirs[k] < 0)
			return imc_err_sys(err, errno, "%s/%s", p->pool_dir, kind_dirs[k]);
	}
	return 0;
}

/* A compaction (".<volume>.img.compact") that a crash cut short: its build is gone, so is it. */
static bool is_compact_name(const char *name)
{
	size_t n = strlen(name), sl = strlen(COMPACT_SUFFIX);

	return name[0] == '.' && n > sl && strcmp(name + n - sl, COMPACT_SUFFIX) == 0;
}

static int remove_partial_compactions(struct store *s, struct reflink *p, imc_error *err)
{
	int fd = openat(p->kind_dirs[STORE_VOLUME], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "%s/volumes", p->pool_dir);
	}
	if (!s->repairs && !(s->repairs = json_array()))
		return imc_err(err, ENOMEM, "out of memory");
	while ((de = readdir(d))) {
		char msg[NAME_MAX_LEN + 160];
		uint64_t bytes = 0;

		if (!is_compact_name(de->d_name) ||
		    imc_remove_unheld_at(dirfd(d), de->d_name, &bytes) != 1)
			continue;
		snprintf(msg, sizeof(msg),
			 "pool/volumes/%.*s: removed a seal that a crash cut short (%llu bytes)",
			 NAME_MAX_LEN, de->d_name, (unsigned long long)bytes);
		json_array_append_new(s->repairs, json_string(msg));
	}
	return 0;
}

static void close_kind_dirs(struct reflink *p)
{
	for (int k = 0; k < 3; k++) {
		if (p->kind_dirs[k] >= 0)
			close(p->kind_dirs[k]);
		p->kind_dirs[k] = -1;
	}
}

/* Grow or shrink the ballast to want bytes (allocated, never written: it costs the filesystem
 * under the pool nothing).  A pool too full to hold all of it is as full as it can be: fine. */
static int ballast_set(int fd, uint64_t have, uint64_t want)
{
	if (want > have + FIT_SLACK)
		return fallocate(fd, 0, 0, (off_t)want) < 0 && errno != ENOSPC ? -errno : 0;
	if (want + FIT_SLACK < have || (want == 0 && have > 0))
		return ftruncate(fd, (off_t)want) < 0 ? -errno : 0;
	return 0;
}

/* The embedded pool is a sparse file: its XFS would hand out blocks that the filesystem under it
 * no longer has (other files filled it, or the pool was made larger), and the writes behind them
 * would fail under XFS, which shuts down on a metadata write error.  So a ballast file in the pool
 * holds (fallocated, never written) as much of the pool's free space as the filesystem under it
 * lacks, keeping a margin and `beside` bytes free there: the pool's XFS answers ENOSPC first. */
static int reflink_fit(struct store *s, uint64_t beside, imc_error *err)
{
	struct reflink *p = rl(s);
	_cleanup_close_ int fd = -1;
	struct statvfs host, pool;
	uint64_t have, pool_free, host_free, keep, allowed, want;
	struct stat st;
	int r = 0;

	if (!p->embedded || p->kind_dirs[STORE_SNAPSHOT] < 0)
		return 0;
	pthread_mutex_lock(&p->fit_lock);
	fd = openat(p->kind_dirs[STORE_SNAPSHOT], "../" BALLAST_FILE,
		    O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || fstat(fd, &st) < 0 || fstatvfs(fd, &pool) < 0 ||
	    statvfs(s->state_dir, &host) < 0)
		r = -errno;
	if (r == 0) {
		have = (uint64_t)st.st_blocks * 512;
		pool_free = (uint64_t)pool.f_bavail * pool.f_frsize + have;
		host_free = (uint64_t)host.f_bavail * host.f_frsize;
		keep = pool_margin(&host) + beside;
		allowed = host_free > keep ? host_free - keep : 0;
		want = pool_free > allowed
			   ? (pool_free - allowed + (1ULL << 20) - 1) & ~((1ULL << 20) - 1)
			   : 0;
		r = ballast_set(fd, have, want);
	}
	pthread_mutex_unlock(&p->fit_lock);
	return r < 0 ? imc_err_sys(err, -r, "pool %s: fit to the free space under it", p->pool_dir)
		     : 0;
}

/* Before the pool is written to: the ballast follows the filesystem under it (best effort: a
 * pool that cannot even say so fails the write that follows). */
static void fit_before_write(struct store *s)
{
	reflink_fit(s, __atomic_load_n(&s->beside, __ATOMIC_RELAXED), NULL);
}

static void reflink_close(struct store *s)
{
	struct reflink *p = rl(s);

	if (!p)
		return;
	close_kind_dirs(p);
	pthread_mutex_destroy(&p->fit_lock);
	free(p->pool_dir);
	free(p);
	s->priv = NULL;
}

static int reflink_open(struct store *s, imc_error *err)
{
	_cleanup_free_ char *lock_path = NULL;
	_cleanup_close_ int lock = -1;
	struct reflink *p;
	int r;

	/* The reflink driver has no options: a key meant for another driver is an error, not
	 * something to ignore. */
	if (s->driver_opts && s->driver_opts[0])
		return imc_err(err, EINVAL,
			       "driver option \"%.60s\": the reflink driver takes no options",
			       s->driver_opts[0]);
	r = imc_mkdir_p(s->state_dir, 0700, err);
	if (r < 0)
		return r;
	lock_path = imc_path_join(s->state_dir, "lock");
	p = calloc(1, sizeof(*p));
	if (!lock_path || !p) {
		free(p);
		return imc_err(err, ENOMEM, "out of memory");
	}
	p->kind_dirs[0] = p->kind_dirs[1] = p->kind_dirs[2] = -1;
	pthread_mutex_init(&p->fit_lock, NULL);
	s->priv = p;
	p->pool_dir = imc_path_join(s->state_dir, POOL_DIR);
	if (!p->pool_dir) {
		reflink_close(s);
		return imc_err(err, ENOMEM, "out of memory");
	}
	/* imcd and imc-attach on one host share the state dir: set the pool up under a lock. */
	lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock < 0 || flock(lock, LOCK_EX) < 0) {
		r = imc_err_sys(err, errno, "lock %s", lock_path);
		reflink_close(s);
		return r;
	}
	r = open_pool(s, p, err);
	if (r == 0)
		r = open_kind_dirs(p, err);
	if (r == 0)
		r = remove_partial_compactions(s, p, err);
	if (r == 0)
		r = reflink_fit(s, 0, err);
	if (r < 0)
		reflink_close(s);
	return r;
}

static int reflink_volume_create(struct store *s, const char *id, uint64_t size, imc_error *err)
{
	char name[NAME_MAX_LEN];
	_cleanup_close_ int fd = -1;

	fit_before_write(s);
	img_name(id, name);
	fd = openat(rl(s)->kind_dirs[STORE_VOLUME], name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
		    0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "volume %s", id);
	if (ftruncate(fd, (off_t)size) < 0) {
		int r =
		    imc_err_sys(err, errno, "volume %s: size %llu", id, (unsigned long long)size);
		unlinkat(rl(s)->kind_dirs[STORE_VOLUME], name, 0);
		return r;
	}
	return 0;
}

static int reflink_activate(struct store *s, enum store_kind kind, const char *id, unsigned flags,
			    struct store_dev *ret, imc_error *err)
{
	bool read_only = flags & STORE_ACTIVATE_READ_ONLY;
	/* A persistent device is not autoclear: it stays bound after our descriptor closes, until
	 * deactivate clears it by path. */
	const struct imc_loop_opts lo = {.read_only = read_only,
					 .autoclear = !(flags & STORE_ACTIVATE_PERSIST),
					 .direct_io = true,
					 .block_size = 4096};
	char name[NAME_MAX_LEN], dev[IMC_LOOP_PATH_MAX];
	_cleanup_close_ int fd = -1;
	int loop_fd = -1, r;

	img_name(id, name);
	fd = openat(rl(s)->kind_dirs[kind], name, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s %s", store_kind_name(kind), id);
	r = imc_priv_loop_attach(fd, &lo, dev, &loop_fd, err);
	if (r < 0)
		return imc_err_wrap(err, "%s %s", store_kind_name(kind), id);
	snprintf(ret->path, sizeof(ret->path), "%s", dev);
	ret->fd = loop_fd;
	return 0;
}

static int reflink_deactivate(struct store *s, enum store_kind kind, const char *id,
			      struct store_dev *dev, imc_error *err)
{
	char name[NAME_MAX_LEN];
	struct stat st;
	uint64_t bdev, ino;
	int r;

	/* Loop devices are autoclear: one goes with its last opener or mount, so after a crash
	 * nothing is left bound unless still mounted.  Dropping our descriptor is all it takes;
	 * a device named by path (and no longer held) is cleared if it still serves the file. */
	if (!dev)
		return 0;
	if (dev->fd >= 0) {
		close(dev->fd);
		dev->fd = -1;
		return 0;
	}
	if (!dev->path[0])
		return 0;
	img_name(id, name);
	if (fstatat(rl(s)->kind_dirs[kind], name, &st, 0) < 0)
		return errno == ENOENT
			   ? 0
			   : imc_err_sys(err, errno, "%s %s", store_kind_name(kind), id);
	r = imc_priv_loop_backing(dev->path, &bdev, &ino, NULL);
	if (r < 0 || bdev != (uint64_t)st.st_dev || ino != (uint64_t)st.st_ino)
		return 0; /* gone, or serving something else by now */
	r = imc_priv_loop_detach(dev->path, err);
	return r == -ENXIO ? 0 : r;
}

static int count_extents(int fd, uint64_t *ret)
{
	struct fiemap fm = {.fm_start = 0, .fm_length = FIEMAP_MAX_OFFSET, .fm_extent_count = 0};

	if (ioctl(fd, FS_IOC_FIEMAP, &fm) < 0)
		return -errno;
	*ret = fm.fm_mapped_extents;
	return 0;
}

/* FICLONE costs time per extent of the source, and under a burst of attaches the clones queue
 * on the pool's allocation-group locks, so a snapshot must have few extents (measured on a 2 GiB
 * image, 100 attaches 20 at a time: 104 extents p50 49-56 ms, 17 extents 12-16 ms).  ext4 leaves
 * its data in runs with small holes between them, so at seal the volume is rewritten in file
 * order keeping only its largest holes: at most COMPACT_TARGET_RUNS data runs, unless that
 * would write more zeros than the fill budget (1/8 of the data, at least 64 MiB), in which case
 * more holes are kept.  This runs before the volume is ever fsynced: its pages are read from the
 * page cache, the copy is written with O_DIRECT (so it does not push the flusher into writing the
 * original), and the original, replaced by rename, is dropped without being written back.  It
 * costs a copy of the data at build time (on a 2 GiB image, 11.2 s -> 14.7 s for the first build
 * into a fresh embedded pool; 2.2 s -> 6.9 s with the blobs cached). */
#define COMPACT_TARGET_RUNS 16
/* A volume with fewer holes than this is sealed as it is: a volume made from a compacted snapshot
 * plus a few files (a cache on its image's base, model data written in order) has a few dozen
 * runs at most, and rewriting gigabytes to save a handful of extents costs more than it buys
 * (a 2 GiB model on a base: 23 holes, 3.8 s of copy). */
#define COMPACT_TRIGGER_HOLES 32
#define COMPACT_FILL_MIN      (64LL << 20)
#define COMPACT_BUF	      (8U << 20)

struct range {
	off_t start, end;
};

static off_t range_len(const struct range *r)
{
	return r->end - r->start;
}

static int cmp_hole_size_desc(const void *a, const void *b)
{
	off_t x = range_len(a), y = range_len(b);
	return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_start(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

struct layout {
	struct range *holes; /* between the first and the last data byte */
	size_t n_holes;
	off_t data_start, data_end;
};

static void layout_free(struct layout *l)
{
	free(l->holes);
}

static int list_holes(int fd, off_t size, struct layout *ret)
{
	size_t cap = 0;
	off_t pos = lseek(fd, 0, SEEK_DATA);

	*ret = (struct layout){.data_start = pos < 0 ? 0 : pos};
	while (pos >= 0 && pos < size) {
		off_t hole = lseek(fd, pos, SEEK_HOLE), next;
		if (hole < 0)
			return -errno;
		ret->data_end = hole;
		next = hole < size ? lseek(fd, hole, SEEK_DATA) : -1;
		if (next < 0)
			break;
		if (ret->n_holes == cap) {
			cap = cap ? cap * 2 : 256;
			struct range *g = realloc(ret->holes, cap * sizeof(*g));
			if (!g)
				return -ENOMEM;
			ret->holes = g;
		}
		ret->holes[ret->n_holes++] = (struct range){hole, next};
		pos = next;
	}
	return 0;
}

/* Sort the holes to keep to the front (in file order) and say how many there are. */
TESTABLE size_t compact_plan(struct range *holes, size_t n, off_t data_bytes)
{
	off_t budget = data_bytes / 8 > COMPACT_FILL_MIN ? data_bytes / 8 : COMPACT_FILL_MIN;
	off_t fill = 0;
	size_t keep = COMPACT_TARGET_RUNS - 1;

	if (n <= keep)
		return n;
	qsort(holes, n, sizeof(*holes), cmp_hole_size_desc);
	for (size_t i = keep; i < n; i++)
		fill += range_len(&holes[i]);
	while (fill > budget && keep < n)
		fill -= range_len(&holes[keep++]);
	qsort(holes, keep, sizeof(*holes), cmp_start);
	return keep;
}

/* Copy [start, end) of src to dst, which is open with O_DIRECT: the copy never dirties the
 * page cache, so the flusher is not provoked into writing back the original (thrown away after,
 * unwritten if its pages are still dirty).  Offsets come from SEEK_DATA/SEEK_HOLE and are
 * filesystem-block aligned; buf is aligned for O_DIRECT. */
static int copy_range(int src, int dst, off_t start, off_t end, char *buf)
{
	while (start < end) {
		size_t want =
		    (size_t)(end - start) < COMPACT_BUF ? (size_t)(end - start) : COMPACT_BUF;
		ssize_t n = pread(src, buf, want, start);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(dst, buf + done, (size_t)(n - done), start + done);
			if (w < 0 && errno != EINTR)
				return -errno;
			done += w > 0 ? w : 0;
		}
		start += n;
	}
	return 0;
}

static int compact_into(int src, int dst, off_t size, const struct layout *l, size_t keep)
{
	_cleanup_free_ char *buf = NULL;
	off_t pos = l->data_start;
	int r;

	if (posix_memalign((void **)&buf, 4096, COMPACT_BUF) != 0)
		return -ENOMEM;
	if (ftruncate(dst, size) < 0)
		return -errno;
	for (size_t i = 0; i <= keep; i++) {
		off_t end = i < keep ? l->holes[i].start : l->data_end;
		if ((r = copy_range(src, dst, pos, end, buf)) < 0)
			return r;
		if (i < keep)
			pos = l->holes[i].end;
	}
	return fsync(dst) < 0 ? -errno : 0;
}

static int compact_volume(struct reflink *p, const char *vname, int *fd, imc_error *err)
{
	_cleanup_(layout_free) struct layout l = {0};
	char tmp[NAME_MAX_LEN + 16];
	_cleanup_close_ int dst = -1;
	struct stat st;
	off_t data_bytes;
	size_t keep;
	int r;

	/* Holes, not extents: FIEMAP would force the volume to disk first. */
	if (fstat(*fd, &st) < 0)
		return imc_err_sys(err, errno, "%s", vname);
	if ((r = list_holes(*fd, st.st_size, &l)) < 0)
		return imc_err_sys(err, r, "%s: holes", vname);
	if (l.n_holes < COMPACT_TRIGGER_HOLES)
		return 0;
	data_bytes = l.data_end - l.data_start;
	for (size_t i = 0; i < l.n_holes; i++)
		data_bytes -= range_len(&l.holes[i]);
	keep = compact_plan(l.holes, l.n_holes, data_bytes);
	imc_debug("%s: %zu holes, %lld data bytes: rewritten keeping %zu holes", vname, l.n_holes,
		  (long long)data_bytes, keep);
	snprintf(tmp, sizeof(tmp), ".%s" COMPACT_SUFFIX, vname);
	dst = openat(p->kind_dirs[STORE_VOLUME], tmp,
		     O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600);
	if (dst < 0)
		return imc_err_sys(err, errno, "%s", tmp);
	imc_hold_file(dst); /* one nobody holds is removed when the store is next opened */
	r = compact_into(*fd, dst, st.st_size, &l, keep);
	imc_stop_point("seal-compact");
	if (r == 0 &&
	    renameat(p->kind_dirs[STORE_VOLUME], tmp, p->kind_dirs[STORE_VOLUME], vname) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(p->kind_dirs[STORE_VOLUME], tmp, 0);
		return imc_err_sys(err, r, "compact %s (%zu holes)", vname, l.n_holes);
	}
	close(*fd);
	*fd = steal_fd(&dst);
	return 0;
}

static int reflink_seal(struct store *s, const char *volume_id, const char *snapshot_id,
			imc_error *err)
{
	struct reflink *p = rl(s);
	char vname[NAME_MAX_LEN], sname[NAME_MAX_LEN];
	_cleanup_close_ int fd = -1;

	fit_before_write(s); /* the compaction writes a copy */
	img_name(volume_id, vname);
	img_name(snapshot_id, sname);
	fd = openat(p->kind_dirs[STORE_VOLUME], vname, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "volume %s", volume_id);
	if (compact_volume(p, vname, &fd, err) < 0)
		return imc_err_wrap(err, "seal volume %s", volume_id);
	if (fsync(fd) < 0 || fchmod(fd, 0400) < 0)
		return imc_err_sys(err, errno, "seal volume %s", volume_id);
	if (renameat2(p->kind_dirs[STORE_VOLUME], vname, p->kind_dirs[STORE_SNAPSHOT], sname,
		      RENAME_NOREPLACE) < 0)
		return imc_err_sys(err, errno, "seal volume %s as snapshot %s", volume_id,
				   snapshot_id);
	if (fsync(p->kind_dirs[STORE_SNAPSHOT]) < 0)
		return imc_err_sys(err, errno, "snapshot %s", snapshot_id);
	return 0;
}

static int reflink_clone(struct store *s, const char *snapshot_id, const char *clone_id,
			 imc_error *err)
{
	struct reflink *p = rl(s);
	char sname[NAME_MAX_LEN], cname[NAME_MAX_LEN];
	_cleanup_close_ int src = -1, dst = -1;
	int r;

	img_name(snapshot_id, sname);
	img_name(clone_id, cname);
	src = openat(p->kind_dirs[STORE_SNAPSHOT], sname, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return imc_err_sys(err, errno, "snapshot %s", snapshot_id);
	dst =
	    openat(p->kind_dirs[STORE_CLONE], cname, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (dst < 0)
		return imc_err_sys(err, errno, "clone %s", clone_id);
	r = imc_priv_ficlone(dst, src, err);
	if (r < 0) {
		unlinkat(p->kind_dirs[STORE_CLONE], cname, 0);
		return imc_err_wrap(err, "clone %s of snapshot %s", clone_id, snapshot_id);
	}
	return 0;
}

static int reflink_resize(struct store *s, enum store_kind kind, const char *id, uint64_t size,
			  imc_error *err)
{
	char name[NAME_MAX_LEN];
	_cleanup_close_ int fd = -1;
	struct stat st;

	img_name(id, name);
	fd = openat(rl(s)->kind_dirs[kind], name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fstat(fd, &st) < 0)
		return imc_err_sys(err, errno, "%s %s", store_kind_name(kind), id);
	if ((uint64_t)st.st_size > size)
		return imc_err(err, EINVAL, "%s %s: size %llu is smaller than its %llu bytes",
			       store_kind_name(kind), id, (unsigned long long)size,
			       (unsigned long long)st.st_size);
	/* Sparse: the new space costs nothing until written. */
	if (ftruncate(fd, (off_t)size) < 0)
		return imc_err_sys(err, errno, "grow %s %s to %llu bytes", store_kind_name(kind),
				   id, (unsigned long long)size);
	return 0;
}

static int reflink_remove(struct store *s, enum store_kind kind, const char *id, imc_error *err)
{
	char name[NAME_MAX_LEN];

	img_name(id, name);
	if (unlinkat(rl(s)->kind_dirs[kind], name, 0) < 0)
		return imc_err_sys(err, errno, "remove %s %s", store_kind_name(kind), id);
	return 0;
}

static int reflink_stat(struct store *s, enum store_kind kind, const char *id,
			struct store_object_info *ret, imc_error *err)
{
	char name[NAME_MAX_LEN];
	_cleanup_close_ int fd = -1;
	struct stat st;

	img_name(id, name);
	fd = openat(rl(s)->kind_dirs[kind], name, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0)
		return imc_err_sys(err, errno, "%s %s", store_kind_name(kind), id);
	ret->size = (uint64_t)st.st_size;
	ret->allocated = (uint64_t)st.st_blocks * 512;
	ret->extents = 0;
	count_extents(fd, &ret->extents);
	return 0;
}

static int reflink_list(struct store *s, enum store_kind kind, char ***ret_ids, size_t *ret_n,
			imc_error *err)
{
	int fd = openat(rl(s)->kind_dirs[kind], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	char **ids = NULL;
	size_t n = 0;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "list %ss", store_kind_name(kind));
	}
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name), sl = strlen(IMG_SUFFIX);
		char **grown;

		if (de->d_name[0] == '.' || len <= sl || strcmp(de->d_name + len - sl, IMG_SUFFIX))
			continue;
		grown = realloc(ids, (n + 1) * sizeof(*ids));
		if (!grown || !(grown[n] = strndup(de->d_name, len - sl))) {
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

static int reflink_usage(struct store *s, struct store_usage *ret, imc_error *err)
{
	struct statvfs sv;

	if (fstatvfs(rl(s)->kind_dirs[STORE_SNAPSHOT], &sv) < 0)
		return imc_err_sys(err, errno, "statvfs %s", rl(s)->pool_dir);
	ret->total = (uint64_t)sv.f_blocks * sv.f_frsize;
	ret->free = (uint64_t)sv.f_bavail * sv.f_frsize;
	ret->used = ret->total - (uint64_t)sv.f_bfree * sv.f_frsize;
	return 0;
}

static int reflink_teardown(struct store *s, imc_error *err)
{
	struct reflink *p = rl(s);
	int r;

	bool shut_down;

	if (!p->embedded)
		return 0;
	/* A pool XFS shut down (after I/O errors) answers EIO to a sync (and to any change; not
	 * always to statfs: measured). */
	shut_down = p->kind_dirs[STORE_SNAPSHOT] >= 0 && syncfs(p->kind_dirs[STORE_SNAPSHOT]) < 0 &&
		    errno == EIO;
	close_kind_dirs(p); /* our own open directories would keep the pool busy */
	r = imc_priv_umount(p->pool_dir, 0, err);
	if (r == 0 && shut_down)
		return imc_err(err, EIO,
			       "pool %s: the kernel had shut its XFS filesystem down (I/O errors, "
			       "see dmesg); it is unmounted now, run xfs_repair on %s/" POOL_FILE
			       " before it is used again",
			       p->pool_dir, s->state_dir);
	if (r == -EINVAL)
		return 0; /* not mounted */
	if (r < 0) {
		imc_error ignored;
		open_kind_dirs(p, &ignored); /* still usable */
	}
	if (r == -EBUSY)
		return imc_err(err, EBUSY, "pool %s is in use (attached clones or a running imcd)",
			       p->pool_dir);
	return r;
}

/* What the pool freed goes back to the state dir's filesystem: XFS discards its free space, the
 * loop device turns each discard into a hole punched in pool.img.  Nothing for a pool that is the
 * state dir's own filesystem: that one discards as its mount says. */
static int reflink_trim(struct store *s, uint64_t *ret_trimmed, imc_error *err)
{
	struct reflink *p = rl(s);
	int fd = p->kind_dirs[STORE_SNAPSHOT];
	struct statfs fs;

	if (!p->embedded)
		return 0;
	/* XFS frees a deleted file's blocks in the background (inode inactivation, which statfs
	 * flushes), and FITRIM skips freed extents until the log has committed their freeing
	 * (syncfs): without both, a trim right after a delete gives nothing back (measured). */
	if (fstatfs(fd, &fs) < 0 || syncfs(fd) < 0)
		return imc_err_sys(err, errno, "pool %s", p->pool_dir);
	return imc_priv_fitrim(fd, p->pool_dir, ret_trimmed, err);
}

/* A volume that starts as a snapshot's copy: FICLONE (the extents stay shared until written),
 * then the file is grown to size (sparse). */
static int reflink_volume_from_snapshot(struct store *s, const char *snapshot_id,
					const char *volume_id, uint64_t size, imc_error *err)
{
	struct reflink *p = rl(s);
	char sname[NAME_MAX_LEN], vname[NAME_MAX_LEN];
	_cleanup_close_ int src = -1, dst = -1;
	struct stat st;
	int r;

	fit_before_write(s);
	img_name(snapshot_id, sname);
	img_name(volume_id, vname);
	src = openat(p->kind_dirs[STORE_SNAPSHOT], sname, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return imc_err_sys(err, errno, "snapshot %s", snapshot_id);
	dst =
	    openat(p->kind_dirs[STORE_VOLUME], vname, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (dst < 0)
		return imc_err_sys(err, errno, "volume %s", volume_id);
	r = imc_priv_ficlone(dst, src, err);
	if (r == 0 && fstat(src, &st) < 0)
		r = imc_err_sys(err, errno, "snapshot %s", snapshot_id);
	if (r == 0 && size > (uint64_t)st.st_size && ftruncate(dst, (off_t)size) < 0)
		r = imc_err_sys(err, errno, "volume %s: size %llu", volume_id,
				(unsigned long long)size);
	if (r < 0) {
		unlinkat(p->kind_dirs[STORE_VOLUME], vname, 0);
		return imc_err_wrap(err, "volume %s from snapshot %s", volume_id, snapshot_id);
	}
	return 0;
}

/* ---- clones' loop devices, found through sysfs ---------------------------------------------- */

#define LOOP_SCAN_MAX 4096 /* loop devices looked at by one scan */

/* The clones directory as the kernel names loop backing files ("<real state dir>/pool/clones/"). */
static int clones_prefix(struct store *s, char ret[PATH_MAX], imc_error *err)
{
	char real[PATH_MAX];

	if (!realpath(s->state_dir, real))
		return imc_err_sys(err, errno, "%s", s->state_dir);
	if ((size_t)snprintf(ret, PATH_MAX, "%s/" POOL_DIR "/%s/", real, kind_dirs[STORE_CLONE]) >=
	    PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", real);
	return 0;
}

/* The id of the clone whose file backs /dev/<loop>, or "" when it backs none of this store's
 * clones (or nothing).  Deleted clone files count: their loop device is still a leak. */
static void loop_clone_id(const char *loop, const char *prefix, char ret[STORE_CLONE_ID_MAX + 1])
{
	char path[128], back[PATH_MAX + 16];
	_cleanup_close_ int fd = -1;
	size_t plen = strlen(prefix);
	ssize_t n;

	ret[0] = '\0';
	snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", loop);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || (n = read(fd, back, sizeof(back) - 1)) <= 0)
		return;
	back[n] = '\0';
	back[strcspn(back, "\n")] = '\0';
	if (strncmp(back, prefix, plen) != 0)
		return;
	char *id = back + plen, *dot = strstr(id, IMG_SUFFIX);
	if (!dot || (dot[4] != '\0' && strcmp(dot + 4, " (deleted)") != 0))
		return;
	*dot = '\0';
	if (strlen(id) <= STORE_CLONE_ID_MAX)
		snprintf(ret, STORE_CLONE_ID_MAX + 1, "%s", id);
}

static int reflink_clone_of_device(struct store *s, const char *dev,
				   char ret[STORE_CLONE_ID_MAX + 1], imc_error *err)
{
	char prefix[PATH_MAX];
	int r = clones_prefix(s, prefix, err);

	if (r == 0)
		loop_clone_id(dev, prefix, ret);
	return r;
}

static int reflink_for_each_clone_device(struct store *s, store_clone_device_fn fn, void *ctx,
					 imc_error *err)
{
	char prefix[PATH_MAX];
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int r, seen = 0;

	if ((r = clones_prefix(s, prefix, err)) < 0)
		return r;
	d = opendir("/sys/block");
	if (!d)
		return imc_err_sys(err, errno, "/sys/block");
	while ((de = readdir(d)) && seen++ < LOOP_SCAN_MAX) {
		char id[STORE_CLONE_ID_MAX + 1];
		if (strncmp(de->d_name, "loop", 4) != 0)
			continue;
		loop_clone_id(de->d_name, prefix, id);
		if (id[0] && (r = fn(de->d_name, id, ctx, err)) < 0)
			return r;
	}
	return 0;
}

/* A fetch fills gaps up to what the seal's compaction would keep as holes (see compact_volume). */
static void reflink_fill_hints(const struct store *s, struct store_fill_hints *ret)
{
	ret->fill_gaps = true;
	ret->keep_holes = COMPACT_TARGET_RUNS - 1;
}

/* <pool>/scratch/<name>/: on the pool's XFS (embedded, or the state dir's own XFS). */
static int reflink_scratch_dir(struct store *s, const char *name, char ret[PATH_MAX],
			       imc_error *err)
{
	const char *pool = rl(s)->pool_dir;
	char parent[PATH_MAX];

	if ((size_t)snprintf(ret, PATH_MAX, "%s/" STORE_SCRATCH_DIR "/%s", pool, name) >= PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", pool);
	if (mkdir(ret, 0700) == 0 || errno == EEXIST)
		return 0;
	if (errno != ENOENT)
		return imc_err_sys(err, errno, "mkdir %s", ret);
	snprintf(parent, sizeof(parent), "%s/" STORE_SCRATCH_DIR, pool);
	if ((mkdir(parent, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(ret, 0700) < 0 && errno != EEXIST))
		return imc_err_sys(err, errno, "mkdir %s", ret);
	return 0;
}

const struct store_driver_ops store_reflink_ops = {
    .name = "reflink",
    .open = reflink_open,
    .close = reflink_close,
    .volume_create = reflink_volume_create,
    .activate = reflink_activate,
    .resize = reflink_resize,
    .deactivate = reflink_deactivate,
    .seal = reflink_seal,
    .clone = reflink_clone,
    .remove = reflink_remove,
    .stat = reflink_stat,
    .list = reflink_list,
    .usage = reflink_usage,
    .teardown = reflink_teardown,
    .volume_from_snapshot = reflink_volume_from_snapshot,
    .fill_hints = reflink_fill_hints,
    .clone_of_device = reflink_clone_of_device,
    .for_each_clone_device = reflink_for_each_clone_device,
    .trim = reflink_trim,
    .fit = reflink_fit,
    .scratch_dir = reflink_scratch_dir,
};
