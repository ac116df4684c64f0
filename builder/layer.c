/* Layer application: read a (gzip, zstd or plain) tar stream with libarchive and recreate each
 * entry under a root directory ourselves.
 *
 * Why not archive_write_disk: every path must stay inside the root whatever the tar says.  The
 * parent directory of each entry is opened with openat2(RESOLVE_IN_ROOT), so "..", absolute
 * paths and symlinks (already on disk or created by this layer) all resolve inside the root; the
 * final component is then created or changed with *at() calls that never follow it.
 *
 * OCI whiteouts: ".wh.<name>" deletes <name> from the lower layers; ".wh..wh..opq" empties its
 * directory of everything the lower layers put there.  Both spare what this layer itself
 * created, so every path the layer creates is remembered (with its ancestors), as containerd's
 * applier does.
 *
 * diff_ids: the decompression thread hashes every byte it hands to the tar reader, and once the
 * tar reader is at the end of the archive the rest of the stream (the end-of-archive blocks and
 * the record padding after them) is read and hashed too: the sha256 of the whole uncompressed
 * stream is what the image config's rootfs.diff_ids[i] names.
 *
 * Over 800 lines: every path check, whiteout rule and entry type stays next to the openat2 walk it
 * depends on, so that all a hostile layer can reach is read in one file (its corpus:
 * tests/unit/test_layers.c). */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "builder.h"

static inline void imc_archive_read_freep(struct archive **a)
{
	if (*a)
		archive_read_free(*a);
}
#define _cleanup_archive_ _cleanup_(imc_archive_read_freep)

#define LAYER_PATH_MAX	  4096
#define LAYER_ENTRIES_MAX 1000000
#define LINK_TARGET_MAX	  4096
#define XATTRS_MAX	  128
#define XATTR_VALUE_MAX	  (64u << 10)
#define FILE_SIZE_MAX	  (1LL << 40)
#define READ_BLOCK	  (1u << 20)
#define UID_MAX_VALID	  0xfffffffeLL
#define LAYER_DEPTH_MAX	  512 /* path components */

#define WH_PREFIX      ".wh."
#define WH_META_PREFIX ".wh..wh."
#define WH_OPAQUE      ".wh..wh..opq"

/* ---- paths ------------------------------------------------------------------------------- */

/* Normalize an entry path to a relative path under the root: drop "", "." and leading "/",
 * apply ".." lexically.  A ".." above the root is no mistake a real image makes: -EPERM (as
 * Docker's "breakout" check).  "" is the root itself. */
TESTABLE int layer_path_clean(const char *in, char *out, size_t size)
{
	size_t n = 0, depth = 0;

	while (*in) {
		size_t len = strcspn(in, "/");
		if (len == 0 || (len == 1 && in[0] == '.')) {
			/* skip */
		} else if (len == 2 && in[0] == '.' && in[1] == '.') {
			if (depth == 0)
				return -EPERM;
			depth--;
			while (n > 0 && out[n - 1] != '/')
				n--;
			if (n > 0)
				n--;
		} else {
			if (++depth > LAYER_DEPTH_MAX)
				return -ELOOP;
			if (n + (n > 0) + len + 1 > size)
				return -ENAMETOOLONG;
			if (n > 0)
				out[n++] = '/';
			memcpy(out + n, in, len);
			n += len;
		}
		in += len;
		in += *in == '/';
	}
	if (size == 0)
		return -ENAMETOOLONG;
	out[n] = '\0';
	return 0;
}

static int path_error(int r, const char *what, imc_error *err)
{
	switch (r) {
	case -EPERM:
		return imc_err(err, EPERM, "%s climbs out of the root with \"..\"", what);
	case -ELOOP:
		return imc_err(err, ELOOP, "%s deeper than %d components", what, LAYER_DEPTH_MAX);
	default:
		return imc_err(err, ENAMETOOLONG, "%s longer than %d bytes", what, LAYER_PATH_MAX);
	}
}

enum builder_whiteout builder_whiteout_kind(const char *path, char **ret_target)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	size_t dir_len = slash ? (size_t)(slash - path) : 0;
	char *target;

	if (strncmp(base, WH_PREFIX, strlen(WH_PREFIX)) != 0)
		return BUILDER_WHITEOUT_NONE;
	if (strcmp(base, WH_OPAQUE) == 0)
		return BUILDER_WHITEOUT_OPAQUE;
	/* Other ".wh..wh." names are AUFS metadata; ".wh." alone names nothing, and ".wh.." and
	 * ".wh..." would delete the directory itself or its parent, above the root at the top. */
	if (strncmp(base, WH_META_PREFIX, strlen(WH_META_PREFIX)) == 0 ||
	    base[strlen(WH_PREFIX)] == '\0' || strcmp(base, ".wh..") == 0 ||
	    strcmp(base, ".wh...") == 0)
		return BUILDER_WHITEOUT_NONE;
	if (ret_target) {
		size_t blen = strlen(base + strlen(WH_PREFIX));
		target = malloc(dir_len + 1 + blen + 1);
		if (!target)
			return BUILDER_WHITEOUT_NONE;
		memcpy(target, path, dir_len);
		if (slash)
			target[dir_len++] = '/';
		memcpy(target + dir_len, base + strlen(WH_PREFIX), blen + 1);
		*ret_target = target;
	}
	return BUILDER_WHITEOUT_FILE;
}

/* ---- the set of paths created by this layer ---------------------------------------------- */

struct path_set {
	char **slots;
	size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static char **set_slot(const struct path_set *s, const char *p)
{
	size_t i = (size_t)hash_str(p) & (s->cap - 1);

	while (s->slots[i] && strcmp(s->slots[i], p) != 0)
		i = (i + 1) & (s->cap - 1);
	return &s->slots[i];
}

static bool set_contains(const struct path_set *s, const char *p)
{
	return s->cap && *set_slot(s, p) != NULL;
}

static int set_grow(struct path_set *s)
{
	struct path_set bigger = {.cap = s->cap ? s->cap * 2 : 1024, .n = s->n};

	bigger.slots = calloc(bigger.cap, sizeof(char *));
	if (!bigger.slots)
		return -ENOMEM;
	for (size_t i = 0; i < s->cap; i++)
		if (s->slots[i])
			*set_slot(&bigger, s->slots[i]) = s->slots[i];
	free(s->slots);
	*s = bigger;
	return 0;
}

/* Add p; returns 1 when it was new. */
static int set_add(struct path_set *s, const char *p)
{
	char **slot;

	if ((s->n + 1) * 4 > s->cap * 3 && set_grow(s) < 0)
		return -ENOMEM;
	slot = set_slot(s, p);
	if (*slot)
		return 0;
	*slot = strdup(p);
	if (!*slot)
		return -ENOMEM;
	s->n++;
	return 1;
}

/* Add p and every ancestor not yet there. */
static int set_add_with_parents(struct path_set *s, const char *p)
{
	char buf[LAYER_PATH_MAX + 1];
	int r = set_add(s, p);

	if (r <= 0)
		return r;
	snprintf(buf, sizeof(buf), "%s", p);
	for (char *slash = strrchr(buf, '/'); slash; slash = strrchr(buf, '/')) {
		*slash = '\0';
		r = set_add(s, buf);
		if (r <= 0)
			return r;
	}
	return 0;
}

static void set_free(struct path_set *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->slots[i]);
	free(s->slots);
	*s = (struct path_set){0};
}

/* ---- applying ---------------------------------------------------------------------------- */

struct dir_time {
	char *path;
	struct timespec ts[2];
};

struct apply {
	int rootfd;
	struct archive *a;
	struct path_set created;
	struct dir_time *dirs;
	size_t n_dirs, cap_dirs;
	char parent[LAYER_PATH_MAX + 1]; /* the parent directory held open in parent_fd */
	int parent_fd;
	bool parent_sgid, root_sgid; /* set-group-ID directories: new entries take their group */
	uid_t euid;
	gid_t egid;
};

/* One entry being applied. */
struct entry {
	struct archive_entry *e;
	char path[LAYER_PATH_MAX + 1]; /* normalized */
	const char *base;	       /* last component of path */
	int pfd;		       /* parent directory (borrowed from struct apply) */
	bool parent_sgid;
	mode_t perm;
	uid_t uid;
	gid_t gid;
	struct timespec ts[2];
};

/* Something was removed: the directory held open may be gone. */
static void parent_forget(struct apply *ap)
{
	if (ap->parent_fd >= 0)
		close(ap->parent_fd);
	ap->parent_fd = -1;
	ap->parent[0] = '\0';
}

/* Create the missing directories of dir (relative, not "") with mode 0755. */
static int mkdir_parents(struct apply *ap, const char *dir, imc_error *err)
{
	char prefix[LAYER_PATH_MAX + 1];
	_cleanup_close_ int cur = -1;
	size_t n = 0;

	while (dir[n]) {
		size_t len = strcspn(dir + n, "/");
		memcpy(prefix, dir, n + len);
		prefix[n + len] = '\0';
		int fd = imc_openat_in_root(ap->rootfd, prefix, O_PATH | O_DIRECTORY, 0);
		if (fd == -ENOENT) {
			int at = cur >= 0 ? cur : ap->rootfd;
			if (mkdirat(at, prefix + n, 0755) == 0) {
				/* Ours, just made, not a symlink: 0755 whatever the umask. */
				if (fchmodat(at, prefix + n, 0755, 0) < 0)
					return imc_err_sys(err, errno, "chmod %s", prefix);
			} else if (errno != EEXIST) {
				return imc_err_sys(err, errno, "mkdir %s", prefix);
			}
			if (set_add(&ap->created, prefix) < 0)
				return imc_err(err, ENOMEM, "out of memory");
			fd = imc_openat_in_root(ap->rootfd, prefix, O_PATH | O_DIRECTORY, 0);
		}
		if (fd < 0)
			return imc_err_sys(err, -fd, "parent directory %s", prefix);
		if (cur >= 0)
			close(cur);
		cur = fd;
		n += len;
		n += dir[n] == '/';
	}
	return 0;
}

/* Open the parent directory dir ("" = the root) inside the root, creating it when asked.  The
 * fd is borrowed: it stays valid until the next call or parent_forget(). */
static int parent_open(struct apply *ap, const char *dir, bool create, int *ret_fd, bool *ret_sgid,
		       imc_error *err)
{
	struct stat st;
	int fd;

	if (dir[0] == '\0') {
		*ret_fd = ap->rootfd;
		*ret_sgid = ap->root_sgid;
		return 0;
	}
	if (ap->parent_fd >= 0 && strcmp(ap->parent, dir) == 0) {
		*ret_fd = ap->parent_fd;
		*ret_sgid = ap->parent_sgid;
		return 0;
	}
	fd = imc_openat_in_root(ap->rootfd, dir, O_PATH | O_DIRECTORY, 0);
	if (fd == -ENOENT && create) {
		int r = mkdir_parents(ap, dir, err);
		if (r < 0)
			return r;
		fd = imc_openat_in_root(ap->rootfd, dir, O_PATH | O_DIRECTORY, 0);
	}
	if (fd < 0)
		return imc_err_sys(err, -fd, "parent directory %s", dir);
	if (fstat(fd, &st) < 0) {
		close(fd);
		return imc_err_sys(err, errno, "parent directory %s", dir);
	}
	parent_forget(ap);
	ap->parent_fd = fd;
	ap->parent_sgid = (st.st_mode & S_ISGID) != 0;
	snprintf(ap->parent, sizeof(ap->parent), "%s", dir);
	*ret_fd = fd;
	*ret_sgid = ap->parent_sgid;
	return 0;
}

/* Split path into its directory (in buf) and last component. */
static const char *path_split(const char *path, char *dir, size_t size)
{
	const char *slash = strrchr(path, '/');
	size_t n = slash ? (size_t)(slash - path) : 0;

	snprintf(dir, size, "%.*s", (int)n, path);
	return slash ? slash + 1 : path;
}

/* Something is in the way at the entry's path (creating it said EEXIST): remove it, unless it is
 * a directory and keep_dir is set.  *ret_old (may be NULL) gets what was there. */
static int entry_make_room(struct apply *ap, struct entry *en, bool keep_dir, struct stat *ret_old,
			   imc_error *err)
{
	struct stat st;

	if (fstatat(en->pfd, en->base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "stat");
	if (ret_old)
		*ret_old = st;
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(en->pfd, en->base, 0) < 0 && errno != ENOENT)
			return imc_err_sys(err, errno, "unlink");
		return 0;
	}
	if (keep_dir)
		return 0;
	/* The directory held open is either en's parent (it stays) or may lie in the tree
	 * being removed. */
	if (en->pfd != ap->parent_fd)
		parent_forget(ap);
	return imc_rm_rf_at(en->pfd, en->base, err);
}

/* Entries we create are new inodes: chown only when the owner is not already right. */
static bool owner_needed(const struct apply *ap, const struct entry *en)
{
	return en->uid != ap->euid || en->gid != ap->egid || en->parent_sgid;
}

static int set_owner_fd(const struct entry *en, int fd, imc_error *err)
{
	if (fchown(fd, en->uid, en->gid) < 0)
		return imc_err_sys(err, errno, "chown %u:%u", (unsigned)en->uid, (unsigned)en->gid);
	return 0;
}

static int set_owner_at(const struct apply *ap, const struct entry *en, imc_error *err)
{
	if (!owner_needed(ap, en))
		return 0;
	if (fchownat(en->pfd, en->base, en->uid, en->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return imc_err_sys(err, errno, "chown %u:%u", (unsigned)en->uid, (unsigned)en->gid);
	return 0;
}

static int set_xattrs(const struct entry *en, int fd, imc_error *err)
{
	const char *name;
	const void *value;
	size_t size;

	if (archive_entry_xattr_reset(en->e) > XATTRS_MAX)
		return imc_err(err, E2BIG, "more than %d extended attributes", XATTRS_MAX);
	while (archive_entry_xattr_next(en->e, &name, &value, &size) == ARCHIVE_OK) {
		if (size > XATTR_VALUE_MAX)
			return imc_err(err, E2BIG, "xattr %.100s: value larger than %u bytes", name,
				       XATTR_VALUE_MAX);
		if (fsetxattr(fd, name, value, size, 0) < 0 && errno != EOPNOTSUPP)
			return imc_err_sys(err, errno, "xattr %.100s", name);
	}
	return 0;
}

static int pwrite_all(int fd, const char *buf, size_t len, int64_t off)
{
	while (len > 0) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static int archive_fail(struct archive *a, imc_error *err)
{
	int e = archive_errno(a);

	return imc_err(err, e > 0 ? e : EIO, "%s",
		       archive_error_string(a) ? archive_error_string(a) : "corrupt archive");
}

#define ZERO_BLOCK 4096

static bool all_zero(const char *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Write buf at off, leaving every aligned 4 KiB block of zeros a hole: most tools write the holes
 * of sparse files (and the zero padding of model files) into layers as data.  The file is new,
 * so a hole reads as the zeros it stands for.  *end gets the end of what was written. */
static int pwrite_sparse(int fd, const char *buf, size_t len, int64_t off, int64_t *end)
{
	size_t i = 0;

	while (i < len) {
		size_t n = ZERO_BLOCK - (size_t)((off + (int64_t)i) % ZERO_BLOCK), start;
		if (n > len - i)
			n = len - i;
		if (all_zero(buf + i, n)) {
			i += n;
			continue;
		}
		/* A run of blocks with data: one write. */
		for (start = i, i += n; i < len; i += n) {
			n = len - i < ZERO_BLOCK ? len - i : ZERO_BLOCK;
			if (all_zero(buf + i, n))
				break;
		}
		int r = pwrite_all(fd, buf + start, i - start, off + (int64_t)start);
		if (r < 0)
			return r;
		if (off + (int64_t)i > *end)
			*end = off + (int64_t)i;
	}
	return 0;
}

/* Copy the entry's data into fd; holes (of sparse entries, and blocks of zeros) stay holes. */
static int write_data(struct apply *ap, int fd, int64_t size, imc_error *err)
{
	int64_t end = 0;

	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int r = archive_read_data_block(ap->a, &buf, &len, &off);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
			return archive_fail(ap->a, err);
		if (off < 0 || off > size || (int64_t)len > size - off)
			return imc_err(err, EBADMSG, "data block beyond the entry's size");
		r = pwrite_sparse(fd, buf, len, off, &end);
		if (r < 0)
			return imc_err_sys(err, -r, "write");
	}
	if (end < size && ftruncate(fd, (off_t)size) < 0)
		return imc_err_sys(err, errno, "truncate to %lld bytes", (long long)size);
	return 0;
}

static int sys_result(int r)
{
	return r < 0 ? -errno : r;
}

static int create_file(const struct entry *en)
{
	return sys_result(
	    openat(en->pfd, en->base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
}

static int apply_file(struct apply *ap, struct entry *en, imc_error *err)
{
	int64_t size = archive_entry_size(en->e);
	_cleanup_close_ int fd = -1;
	int r;

	if (size < 0 || size > FILE_SIZE_MAX)
		return imc_err(err, EFBIG, "file size %lld out of range", (long long)size);
	fd = create_file(en);
	if (fd == -EEXIST) {
		r = entry_make_room(ap, en, false, NULL, err);
		if (r < 0)
			return r;
		fd = create_file(en);
	}
	if (fd < 0)
		return imc_err_sys(err, -fd, "create");
	r = write_data(ap, fd, size, err);
	/* chown clears setuid and file capabilities: xattrs and mode come after it. */
	if (r == 0 && owner_needed(ap, en))
		r = set_owner_fd(en, fd, err);
	if (r == 0)
		r = set_xattrs(en, fd, err);
	if (r == 0 && fchmod(fd, en->perm) < 0)
		r = imc_err_sys(err, errno, "chmod %o", (unsigned)en->perm);
	if (r == 0 && futimens(fd, en->ts) < 0)
		r = imc_err_sys(err, errno, "set times");
	return r;
}

static int dir_time_add(struct apply *ap, const struct entry *en, imc_error *err)
{
	if (ap->n_dirs == ap->cap_dirs) {
		size_t cap = ap->cap_dirs ? ap->cap_dirs * 2 : 256;
		struct dir_time *nd = realloc(ap->dirs, cap * sizeof(*nd));
		if (!nd)
			return imc_err(err, ENOMEM, "out of memory");
		ap->dirs = nd;
		ap->cap_dirs = cap;
	}
	ap->dirs[ap->n_dirs].path = strdup(en->path);
	if (!ap->dirs[ap->n_dirs].path)
		return imc_err(err, ENOMEM, "out of memory");
	memcpy(ap->dirs[ap->n_dirs].ts, en->ts, sizeof(en->ts));
	ap->n_dirs++;
	return 0;
}

static int apply_dir(struct apply *ap, struct entry *en, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	bool created = true;
	int r = 0, mk = sys_result(mkdirat(en->pfd, en->base, 0700));

	if (mk == -EEXIST) {
		struct stat old = {0};
		r = entry_make_room(ap, en, true, &old, err);
		if (r < 0)
			return r;
		/* An existing directory is kept; this entry's metadata replace its own. */
		created = !S_ISDIR(old.st_mode);
		mk = created ? sys_result(mkdirat(en->pfd, en->base, 0700)) : 0;
	}
	if (mk < 0)
		return imc_err_sys(err, -mk, "mkdir");
	fd = openat(en->pfd, en->base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "open directory");
	if (!created || owner_needed(ap, en))
		r = set_owner_fd(en, fd, err);
	if (r == 0)
		r = set_xattrs(en, fd, err);
	if (r == 0 && fchmod(fd, en->perm) < 0)
		r = imc_err_sys(err, errno, "chmod %o", (unsigned)en->perm);
	/* Later entries change a directory's times: they are set when the layer is done. */
	if (r == 0)
		r = dir_time_add(ap, en, err);
	return r;
}

static int apply_symlink(struct apply *ap, struct entry *en, imc_error *err)
{
	const char *target = archive_entry_symlink(en->e);
	int r;

	if (!target || !*target || strlen(target) > LINK_TARGET_MAX)
		return imc_err(err, EINVAL, "symlink target empty or longer than %d bytes",
			       LINK_TARGET_MAX);
	r = sys_result(symlinkat(target, en->pfd, en->base));
	if (r == -EEXIST) {
		r = entry_make_room(ap, en, false, NULL, err);
		if (r < 0)
			return r;
		r = sys_result(symlinkat(target, en->pfd, en->base));
	}
	if (r < 0)
		return imc_err_sys(err, -r, "symlink");
	r = set_owner_at(ap, en, err);
	if (r == 0 && utimensat(en->pfd, en->base, en->ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = imc_err_sys(err, errno, "set times");
	return r;
}

static int apply_hardlink(struct apply *ap, struct entry *en, const char *link, imc_error *err)
{
	char target[LAYER_PATH_MAX + 1], dir[LAYER_PATH_MAX + 1];
	_cleanup_close_ int tfd = -1;
	const char *tbase;
	struct stat tst, old;
	int r;

	r = strlen(link) > LINK_TARGET_MAX ? -ENAMETOOLONG
					   : layer_path_clean(link, target, sizeof(target));
	if (r < 0)
		return path_error(r, "hardlink target", err);
	if (target[0] == '\0')
		return imc_err(err, EINVAL, "hardlink to the root directory");
	if (strcmp(target, en->path) == 0)
		return 0;
	tbase = path_split(target, dir, sizeof(dir));
	tfd = imc_openat_in_root(ap->rootfd, dir[0] ? dir : ".", O_PATH | O_DIRECTORY, 0);
	if (tfd < 0)
		return imc_err_sys(err, -tfd, "hardlink target %.200s", target);
	if (fstatat(tfd, tbase, &tst, AT_SYMLINK_NOFOLLOW) < 0)
		return imc_err_sys(err, errno, "hardlink target %.200s", target);
	if (S_ISDIR(tst.st_mode))
		return imc_err(err, EPERM, "hardlink target %.200s is a directory", target);
	r = sys_result(linkat(tfd, tbase, en->pfd, en->base, 0));
	if (r == -EEXIST) {
		/* Already a link to the target (both names may lead to one file): done. */
		if (fstatat(en->pfd, en->base, &old, AT_SYMLINK_NOFOLLOW) == 0 &&
		    old.st_dev == tst.st_dev && old.st_ino == tst.st_ino)
			return 0;
		r = entry_make_room(ap, en, false, NULL, err);
		if (r < 0)
			return r;
		r = sys_result(linkat(tfd, tbase, en->pfd, en->base, 0));
	}
	if (r < 0)
		return imc_err_sys(err, -r, "hardlink to %.200s", target);
	return 0;
}

/* The character devices a container's /dev may hold (the OCI runtime spec's defaults); any
 * other device node in a layer is refused: mounted without nodev it would be a door to the
 * host's hardware. */
TESTABLE bool layer_device_allowed(mode_t type, unsigned major_n, unsigned minor_n)
{
	static const unsigned allowed[][2] = {
	    {1, 3}, {1, 5}, {1, 7}, {1, 8}, {1, 9}, /* null zero full random urandom */
	    {5, 0}, {5, 1}, {5, 2},		    /* tty console ptmx */
	};

	if (type == S_IFIFO)
		return true;
	if (type != S_IFCHR)
		return false;
	for (size_t i = 0; i < IMC_ARRAY_SIZE(allowed); i++)
		if (allowed[i][0] == major_n && allowed[i][1] == minor_n)
			return true;
	return false;
}

/* Extended attributes of a node we just created, through an O_PATH descriptor (there is no
 * fsetxattr for a device we must not open). */
static int set_xattrs_node(const struct entry *en, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	char proc[64];
	const char *name;
	const void *value;
	size_t size;

	if (archive_entry_xattr_reset(en->e) == 0)
		return 0;
	if (archive_entry_xattr_count(en->e) > XATTRS_MAX)
		return imc_err(err, E2BIG, "more than %d extended attributes", XATTRS_MAX);
	fd = openat(en->pfd, en->base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "open");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	while (archive_entry_xattr_next(en->e, &name, &value, &size) == ARCHIVE_OK) {
		if (size > XATTR_VALUE_MAX)
			return imc_err(err, E2BIG, "xattr %.100s: value larger than %u bytes", name,
				       XATTR_VALUE_MAX);
		if (setxattr(proc, name, value, size, 0) < 0 && errno != EOPNOTSUPP)
			return imc_err_sys(err, errno, "xattr %.100s", name);
	}
	return 0;
}

static int apply_node(struct apply *ap, struct entry *en, mode_t type, imc_error *err)
{
	dev_t dev = type == S_IFIFO
			? 0
			: makedev(archive_entry_rdevmajor(en->e), archive_entry_rdevminor(en->e));
	mode_t mode = type | (en->perm & 0777);
	int r;

	if (!layer_device_allowed(type, major(dev), minor(dev)))
		return imc_err(err, EPERM, "%s device %u:%u is not allowed in an image",
			       type == S_IFBLK ? "block" : "character", major(dev), minor(dev));
	r = sys_result(mknodat(en->pfd, en->base, mode, dev));
	if (r == -EEXIST) {
		r = entry_make_room(ap, en, false, NULL, err);
		if (r < 0)
			return r;
		r = sys_result(mknodat(en->pfd, en->base, mode, dev));
	}
	if (r < 0)
		return imc_err_sys(err, -r, "mknod");
	r = set_owner_at(ap, en, err);
	/* The node was just created by us at this name: it is not a symlink to follow. */
	if (r == 0 && fchmodat(en->pfd, en->base, en->perm, 0) < 0)
		r = imc_err_sys(err, errno, "chmod %o", (unsigned)en->perm);
	if (r == 0)
		r = set_xattrs_node(en, err);
	if (r == 0 && utimensat(en->pfd, en->base, en->ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = imc_err_sys(err, errno, "set times");
	return r;
}

/* ---- whiteouts --------------------------------------------------------------------------- */

static int apply_whiteout(struct apply *ap, const char *target, imc_error *err)
{
	char dir[LAYER_PATH_MAX + 1];
	const char *base = path_split(target, dir, sizeof(dir));
	bool sgid;
	int pfd, r;

	/* A whiteout only hides the lower layers, never this layer's own entries. */
	if (set_contains(&ap->created, target))
		return 0;
	r = parent_open(ap, dir, false, &pfd, &sgid, err);
	if (r == -ENOENT || r == -ENOTDIR)
		return 0;
	if (r < 0)
		return r;
	r = imc_rm_rf_at(pfd, base, err);
	parent_forget(ap);
	return r;
}

/* Remove every child of dfd (whose path is path, "" for the root) not created by this layer;
 * descend into the kept directories, whose lower contents are hidden as well. */
static int opaque_clear(struct apply *ap, int dfd, char *path, size_t plen, imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	int fd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
	struct dirent *de;
	int r = 0;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "open directory %s", path);
	}
	while (r == 0 && (errno = 0, de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		size_t nlen = strlen(de->d_name);
		if (plen + 1 + nlen > LAYER_PATH_MAX)
			return imc_err(err, ENAMETOOLONG, "path under %s too long", path);
		size_t clen = plen;
		if (plen)
			path[clen++] = '/';
		memcpy(path + clen, de->d_name, nlen + 1);
		if (!set_contains(&ap->created, path)) {
			r = imc_rm_rf_at(dirfd(d), de->d_name, err);
		} else {
			_cleanup_close_ int cfd = openat(
			    dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (cfd >= 0)
				r = opaque_clear(ap, cfd, path, clen + nlen, err);
			else if (errno != ENOTDIR && errno != ELOOP)
				r = imc_err_sys(err, errno, "open %s", path);
		}
		path[plen] = '\0';
	}
	if (r == 0 && errno != 0)
		r = imc_err_sys(err, errno, "read directory %s", path);
	return r;
}

static int apply_opaque(struct apply *ap, const char *dir, imc_error *err)
{
	char path[LAYER_PATH_MAX + 1];
	_cleanup_close_ int fd = -1;

	parent_forget(ap);
	fd = imc_openat_in_root(ap->rootfd, dir[0] ? dir : ".", O_RDONLY | O_DIRECTORY, 0);
	if (fd == -ENOENT || fd == -ENOTDIR)
		return 0;
	if (fd < 0)
		return imc_err_sys(err, -fd, "opaque directory %s", dir);
	snprintf(path, sizeof(path), "%s", dir);
	return opaque_clear(ap, fd, path, strlen(path), err);
}

/* ---- entries ----------------------------------------------------------------------------- */

static int entry_meta(struct entry *en, imc_error *err)
{
	struct archive_entry *e = en->e;
	int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);

	if (uid < 0 || uid > UID_MAX_VALID || gid < 0 || gid > UID_MAX_VALID)
		return imc_err(err, ERANGE, "owner %lld:%lld out of range", (long long)uid,
			       (long long)gid);
	en->uid = (uid_t)uid;
	en->gid = (gid_t)gid;
	en->perm = archive_entry_perm(e) & 07777;
	if (archive_entry_mtime_is_set(e)) {
		en->ts[1] = (struct timespec){archive_entry_mtime(e), archive_entry_mtime_nsec(e)};
		en->ts[0] =
		    archive_entry_atime_is_set(e)
			? (struct timespec){archive_entry_atime(e), archive_entry_atime_nsec(e)}
			: en->ts[1];
	} else {
		en->ts[0] = en->ts[1] = (struct timespec){0, UTIME_OMIT};
	}
	return 0;
}

static int apply_typed(struct apply *ap, struct entry *en, imc_error *err)
{
	const char *link = archive_entry_hardlink(en->e);
	mode_t type = archive_entry_filetype(en->e);

	if (link)
		return apply_hardlink(ap, en, link, err);
	switch (type) {
	case AE_IFREG:
		return apply_file(ap, en, err);
	case AE_IFDIR:
		return apply_dir(ap, en, err);
	case AE_IFLNK:
		return apply_symlink(ap, en, err);
	case AE_IFCHR:
	case AE_IFBLK:
	case AE_IFIFO:
		return apply_node(ap, en, type, err);
	default:
		return imc_err(err, ENOTSUP, "unsupported entry type 0%o", (unsigned)type);
	}
}

static int apply_entry(struct apply *ap, struct archive_entry *e, imc_error *err)
{
	struct entry en = {.e = e};
	const char *name = archive_entry_pathname(e);
	char dir[LAYER_PATH_MAX + 1];
	_cleanup_free_ char *wh_target = NULL;
	int r;

	if (!name)
		return imc_err(err, EINVAL, "entry without a path");
	r = strlen(name) > LAYER_PATH_MAX ? -ENAMETOOLONG
					  : layer_path_clean(name, en.path, sizeof(en.path));
	if (r < 0)
		return path_error(r, "path", err);
	if (en.path[0] == '\0')
		return 0; /* the root itself is the caller's */
	en.base = path_split(en.path, dir, sizeof(dir));
	if (strncmp(en.base, WH_PREFIX, strlen(WH_PREFIX)) == 0) {
		switch (builder_whiteout_kind(en.path, &wh_target)) {
		case BUILDER_WHITEOUT_OPAQUE:
			return apply_opaque(ap, dir, err);
		case BUILDER_WHITEOUT_FILE:
			return apply_whiteout(ap, wh_target, err);
		default:
			if (strncmp(en.base, WH_META_PREFIX, strlen(WH_META_PREFIX)) == 0)
				return 0; /* AUFS metadata */
			return imc_err(err, EINVAL, "malformed whiteout");
		}
	}
	r = entry_meta(&en, err);
	if (r == 0)
		r = parent_open(ap, dir, true, &en.pfd, &en.parent_sgid, err);
	if (r < 0)
		return r;
	r = apply_typed(ap, &en, err);
	if (r == 0 && set_add_with_parents(&ap->created, en.path) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	return r;
}

static int apply_dir_times(struct apply *ap, imc_error *err)
{
	for (size_t i = 0; i < ap->n_dirs; i++) {
		char dir[LAYER_PATH_MAX + 1];
		const char *base = path_split(ap->dirs[i].path, dir, sizeof(dir));
		struct stat st;
		bool sgid;
		int pfd;

		/* Gone or replaced by a later entry of this layer: nothing to do. */
		if (parent_open(ap, dir, false, &pfd, &sgid, NULL) < 0 ||
		    fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
			continue;
		if (utimensat(pfd, base, ap->dirs[i].ts, AT_SYMLINK_NOFOLLOW) < 0)
			return imc_err_sys(err, errno, "directory %s: set times", ap->dirs[i].path);
	}
	return 0;
}

/* ---- decompression in a thread of its own ------------------------------------------------
 * Inflating is most of the CPU time of a layer.  A second thread decompresses the blob into a
 * small ring of buffers while this one recreates the entries from the tar stream. */

#define RING_BUFS 4

struct inflater {
	int blob_fd;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	char *buf[RING_BUFS];
	size_t len[RING_BUFS];
	size_t head, count; /* filled buffers, oldest first; the reader may hold buf[head] */
	bool held, eof, stop;
	int error; /* the decompressor's failure (errno) */
	char msg[256];
	bool hashing; /* hash: the sha256 of every decompressed byte, in stream order */
	imc_sha256 hash;
};

static int raw_open(struct archive *raw, int fd)
{
	struct archive_entry *e;

	/* Only the filters a layer may use, built in: never an external program. */
	if (archive_read_support_filter_gzip(raw) != ARCHIVE_OK ||
	    archive_read_support_filter_zstd(raw) != ARCHIVE_OK ||
	    archive_read_support_format_raw(raw) != ARCHIVE_OK)
		return -ENOTSUP;
	if (archive_read_open_fd(raw, fd, READ_BLOCK) != ARCHIVE_OK ||
	    archive_read_next_header(raw, &e) != ARCHIVE_OK)
		return -EIO;
	return 0;
}

/* Fill buf with up to size decompressed bytes: its length, 0 at the end, or -1. */
static ssize_t raw_fill(struct archive *raw, char *buf, size_t size)
{
	size_t n = 0;

	while (n < size) {
		la_ssize_t r = archive_read_data(raw, buf + n, size - n);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		n += (size_t)r;
	}
	return (ssize_t)n;
}

/* Returns the slot to fill next, or -1 when told to stop. */
static int inflater_wait_slot(struct inflater *in)
{
	int slot;

	pthread_mutex_lock(&in->lock);
	while (in->count == RING_BUFS && !in->stop)
		pthread_cond_wait(&in->cond, &in->lock);
	slot = in->stop ? -1 : (int)((in->head + in->count) % RING_BUFS);
	pthread_mutex_unlock(&in->lock);
	return slot;
}

static void inflater_finish(struct inflater *in, struct archive *raw, int error)
{
	pthread_mutex_lock(&in->lock);
	if (error) {
		const char *m = raw ? archive_error_string(raw) : NULL;
		in->error = error;
		snprintf(in->msg, sizeof(in->msg), "%s",
			 m		    ? m
			 : error == ENOTSUP ? "no built-in gzip or zstd"
					    : "cannot decompress");
	}
	in->eof = true;
	pthread_cond_broadcast(&in->cond);
	pthread_mutex_unlock(&in->lock);
}

static void *inflater_main(void *arg)
{
	struct inflater *in = arg;
	_cleanup_archive_ struct archive *raw = archive_read_new();
	int r = raw ? raw_open(raw, in->blob_fd) : -ENOMEM;

	while (r == 0) {
		int slot = inflater_wait_slot(in);
		if (slot < 0)
			break;
		ssize_t n = raw_fill(raw, in->buf[slot], READ_BLOCK);
		if (n < 0) {
			r = archive_errno(raw) > 0 ? -archive_errno(raw) : -EIO;
			break;
		}
		if (in->hashing && n > 0)
			imc_sha256_update(&in->hash, in->buf[slot], (size_t)n);
		pthread_mutex_lock(&in->lock);
		in->len[slot] = (size_t)n;
		in->count += n > 0;
		pthread_cond_broadcast(&in->cond);
		pthread_mutex_unlock(&in->lock);
		if (n == 0)
			break;
	}
	inflater_finish(in, raw, -r);
	return NULL;
}

/* libarchive's read callback for the tar reader: the next decompressed buffer. */
static la_ssize_t inflater_read(struct archive *a, void *client, const void **ret)
{
	struct inflater *in = client;
	la_ssize_t n = 0;

	pthread_mutex_lock(&in->lock);
	if (in->held) {
		in->head = (in->head + 1) % RING_BUFS;
		in->count--;
		in->held = false;
		pthread_cond_broadcast(&in->cond);
	}
	while (in->count == 0 && !in->eof)
		pthread_cond_wait(&in->cond, &in->lock);
	if (in->count > 0) {
		in->held = true;
		*ret = in->buf[in->head];
		n = (la_ssize_t)in->len[in->head];
	} else if (in->error) {
		archive_set_error(a, in->error, "%s", in->msg);
		n = -1;
	}
	pthread_mutex_unlock(&in->lock);
	return n;
}

/* Read the decompressed stream to its end, dropping what the tar reader left (it stops at the
 * end-of-archive blocks): every byte is hashed on the way.  0, or the decompressor's errno. */
static int inflater_drain(struct inflater *in)
{
	int error;

	pthread_mutex_lock(&in->lock);
	for (;;) {
		in->head = (in->head + in->count) % RING_BUFS;
		in->count = 0;
		in->held = false;
		pthread_cond_broadcast(&in->cond);
		if (in->eof)
			break;
		pthread_cond_wait(&in->cond, &in->lock);
	}
	error = in->error;
	pthread_mutex_unlock(&in->lock);
	return error;
}

static int inflater_start(struct inflater *in, int blob_fd, bool hash, imc_error *err)
{
	in->blob_fd = blob_fd;
	pthread_mutex_init(&in->lock, NULL);
	pthread_cond_init(&in->cond, NULL);
	for (size_t i = 0; i < RING_BUFS; i++)
		if (!(in->buf[i] = malloc(READ_BLOCK)))
			return imc_err(err, ENOMEM, "out of memory");
	if (hash && imc_sha256_init(&in->hash, err) < 0)
		return err ? err->code : -ENOMEM;
	in->hashing = hash;
	if (pthread_create(&in->thread, NULL, inflater_main, in) != 0)
		return imc_err(err, EAGAIN, "cannot start the decompression thread");
	in->started = true;
	return 0;
}

static void inflater_stop(struct inflater *in)
{
	if (in->started) {
		pthread_mutex_lock(&in->lock);
		in->stop = true;
		pthread_cond_broadcast(&in->cond);
		pthread_mutex_unlock(&in->lock);
		pthread_join(in->thread, NULL);
	}
	for (size_t i = 0; i < RING_BUFS; i++)
		free(in->buf[i]);
	if (in->hashing)
		imc_sha256_free(&in->hash);
	pthread_cond_destroy(&in->cond);
	pthread_mutex_destroy(&in->lock);
}

static int archive_open(struct archive **ret, struct inflater *in, imc_error *err)
{
	_cleanup_archive_ struct archive *a = archive_read_new();

	if (!a)
		return imc_err(err, ENOMEM, "out of memory");
	/* A zero-length blob reads as an empty layer. */
	if (archive_read_support_format_tar(a) != ARCHIVE_OK ||
	    archive_read_support_format_empty(a) != ARCHIVE_OK)
		return imc_err(err, ENOTSUP, "libarchive lacks tar: %s",
			       archive_error_string(a) ? archive_error_string(a) : "?");
	if (archive_read_open(a, in, NULL, inflater_read, NULL) != ARCHIVE_OK)
		return archive_fail(a, err);
	*ret = steal_pointer(&a);
	return 0;
}

/* The sha256 of the whole uncompressed stream, read to its end. */
static int layer_diff_id(struct inflater *in, const char *what, char ret[IMC_SHA256_HEX_LEN + 1],
			 imc_error *err)
{
	int e = inflater_drain(in);

	if (e)
		return imc_err(err, e, "%s: after the end of the archive: %s", what, in->msg);
	imc_sha256_final_hex(&in->hash, ret);
	in->hashing = false; /* final_hex freed the context */
	return 0;
}

static int layer_apply(struct apply *ap, struct inflater *in, int blob_fd, const char *what,
		       char *ret_diff_id, imc_error *err)
{
	struct archive_entry *e;
	size_t count = 0;
	int r;

	posix_fadvise(blob_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	r = inflater_start(in, blob_fd, ret_diff_id != NULL, err);
	if (r == 0)
		r = archive_open(&ap->a, in, err);
	if (r < 0)
		return imc_err_wrap(err, "%s", what);
	for (;;) {
		r = archive_read_next_header(ap->a, &e);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
			archive_fail(ap->a, err);
			return count ? imc_err_wrap(err, "%s: after %zu entries", what, count)
				     : imc_err_wrap(err, "%s", what);
		}
		if (++count > LAYER_ENTRIES_MAX)
			return imc_err(err, E2BIG, "%s: more than %d entries", what,
				       LAYER_ENTRIES_MAX);
		r = apply_entry(ap, e, err);
		if (r < 0) {
			const char *name = archive_entry_pathname(e);
			return imc_err_wrap(err, "%s: entry \"%.200s\"", what, name ? name : "");
		}
	}
	r = apply_dir_times(ap, err);
	if (r < 0)
		return imc_err_wrap(err, "%s", what);
	return ret_diff_id ? layer_diff_id(in, what, ret_diff_id, err) : 0;
}

int builder_layer_apply(int rootfd, int blob_fd, const char *what, imc_error *err)
{
	return builder_layer_apply_hashed(rootfd, blob_fd, what, NULL, err);
}

int builder_layer_apply_hashed(int rootfd, int blob_fd, const char *what,
			       char ret_diff_id[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	struct apply ap = {.rootfd = rootfd, .parent_fd = -1, .euid = geteuid(), .egid = getegid()};
	struct inflater in = {0};
	struct stat st;
	int r;

	if (fstat(rootfd, &st) < 0)
		return imc_err_sys(err, errno, "%s: root directory", what ? what : "layer");
	ap.root_sgid = (st.st_mode & S_ISGID) != 0;
	r = layer_apply(&ap, &in, blob_fd, what ? what : "layer", ret_diff_id, err);

	parent_forget(&ap);
	inflater_stop(&in);
	if (ap.a)
		archive_read_free(ap.a);
	set_free(&ap.created);
	for (size_t i = 0; i < ap.n_dirs; i++)
		free(ap.dirs[i].path);
	free(ap.dirs);
	return r;
}
