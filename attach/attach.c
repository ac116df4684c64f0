/* Attach = clone the snapshot, expose the clone as a block device, and either mount one image's
 * rootfs of it at the caller's directory (with the cache's /data read-only inside it, if asked)
 * or hand the device itself to a microVM (block mode).
 *
 * The state of each attach is one JSON file, created before anything is touched and kept
 * flock()ed by the process working on it (attach, detach, reconcile).  Updates are written in
 * place (one pwrite, the content only grows) so the lock stays on the same inode.  A state that
 * nobody holds and whose status is still "attaching" belongs to a process that died: detach and
 * reconcile undo it.  The attach id is "att-" + 16 hex digits: derived from the directory in
 * mount mode (so detach finds it from the directory alone), random in block mode.
 *
 * Over 800 lines: attach, detach and reconcile work on the same state file, its lock, its statuses
 * and the same undo steps (each section below is one of them); kept together so that every crash
 * point and its undo are read side by side. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include "../common/priv.h"
#include "internal.h"

#define ATTACH_DIR	     "attachments"
#define ATTACH_IMAGE_MAX     1000
#define ATTACH_ID_LEN	     20 /* "att-" + 16 hex */
#define ATTACH_SIZE_MAX	     (16ULL << 40)
#define ATTACH_DATA_DEST_MAX 1024
#define ATTACH_MANIFEST_MAX  (16 * 1024 * 1024) /* bytes of /imcache.json read */
#define STATE_MAX_BYTES	     (64 * 1024)
#define MOUNTINFO_MAX	     (4U << 20)

#define STATUS_ATTACHING "attaching"
#define STATUS_ATTACHED	 "attached"

/* Test-only stop points: IMC_ATTACH_STOP_AT=after-clone|after-loop|after-mount|after-data|
 * detach-after-umount stops the process there (SIGSTOP), so that a test can SIGKILL it at exactly
 * that point of an attach or detach. */
static void stop_point(const char *name)
{
#ifdef IMC_TESTING
	const char *at = secure_getenv("IMC_ATTACH_STOP_AT");

	if (at && strcmp(at, name) == 0)
		raise(SIGSTOP);
#else
	(void)name;
#endif
}

int attach_open_subdir(struct store *s, const char *name, imc_error *err)
{
	_cleanup_free_ char *path = imc_path_join(store_state_dir(s), name);
	int fd;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", path);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s", path);
	return fd;
}

static int open_attach_dir(struct store *s, imc_error *err)
{
	return attach_open_subdir(s, ATTACH_DIR, err);
}

/* The attach id of a mount-mode attach: "att-" + 16 hex of sha256(dir). */
TESTABLE int attach_id_for_dir(const char *dir, char ret[32], imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	int r = imc_sha256_hex(dir, strlen(dir), hex, err);

	if (r < 0)
		return r;
	snprintf(ret, 32, "att-%.16s", hex);
	return 0;
}

/* Is s an attach id ("att-" + 16 lowercase hex digits)? */
TESTABLE bool attach_id_valid(const char *s)
{
	if (strncmp(s, "att-", 4) != 0 || strlen(s) != ATTACH_ID_LEN)
		return false;
	for (const char *p = s + 4; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static void state_name(const char *aid, char ret[64])
{
	snprintf(ret, 64, "%s.json", aid);
}

/* ---- state files ----------------------------------------------------------------------------- */

/* Write state over the file behind fd (locked by us) in one pwrite. */
static int state_update(int fd, json_t *state, imc_error *err)
{
	_cleanup_free_ char *buf = json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS);
	struct stat st;
	size_t len;
	ssize_t n;

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	len = strlen(buf);
	n = pwrite(fd, buf, len, 0);
	/* Cut only what a shorter content leaves behind: a truncate to the size the file has
	 * anyway still costs (XFS writes the file's dirty pages back first). */
	if (n < 0 || (size_t)n != len || fstat(fd, &st) < 0 ||
	    (st.st_size > (off_t)len && ftruncate(fd, (off_t)len) < 0))
		return imc_err_sys(err, n < 0 ? errno : EIO, "attach state %s",
				   json_string_value(json_object_get(state, "id")));
	return 0;
}

/* Record the attach before doing it, and keep it locked: returns the locked descriptor, or
 * -EEXIST when the id is attached already. */
static int state_create(int adir, const char *aid, json_t *state, imc_error *err)
{
	char name[64], tmp[80];
	_cleanup_close_ int fd = -1;
	int r;

	state_name(aid, name);
	snprintf(tmp, sizeof(tmp), ".%s.%d.%d", name, (int)getpid(), (int)gettid());
	fd = openat(adir, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "attach state %s", tmp);
	if (flock(fd, LOCK_EX) < 0)
		r = imc_err_sys(err, errno, "lock attach state %s", tmp);
	else
		r = state_update(fd, state, err);
	if (r == 0 && renameat2(adir, tmp, adir, name, RENAME_NOREPLACE) < 0)
		r = errno == EEXIST ? imc_err(err, EEXIST, "already attached")
				    : imc_err_sys(err, errno, "attach state %s", name);
	if (r < 0) {
		unlinkat(adir, tmp, 0);
		return r;
	}
	return steal_fd(&fd);
}

/* Open and lock the state of aid without waiting: -ENOENT when there is none, -EBUSY when
 * another process works on it. */
static int state_lock(int adir, const char *aid, imc_error *err)
{
	char name[64];
	_cleanup_close_ int fd = -1;
	struct stat st;

	state_name(aid, name);
	fd = openat(adir, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : imc_err_sys(err, errno, "attach state %s", name);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK
			   ? imc_err(err, EBUSY, "attach %s: another process is working on it", aid)
			   : imc_err_sys(err, errno, "lock attach state %s", name);
	/* Removed by whoever held the lock before us. */
	if (fstat(fd, &st) < 0 || st.st_nlink == 0)
		return -ENOENT;
	return steal_fd(&fd);
}

static int state_read(int fd, const char *aid, json_t **ret, imc_error *err)
{
	char buf[STATE_MAX_BYTES + 1];
	ssize_t n = pread(fd, buf, sizeof(buf), 0);

	if (n < 0)
		return imc_err_sys(err, errno, "attach state %s", aid);
	if (n > STATE_MAX_BYTES)
		return imc_err(err, EFBIG, "attach state %s: over %d bytes", aid, STATE_MAX_BYTES);
	if (imc_json_parse_object(buf, (size_t)n, ret, err) < 0)
		return imc_err_wrap(err, "attach state %s", aid);
	return 0;
}

static const char *state_str(json_t *state, const char *key)
{
	return json_string_value(json_object_get(state, key));
}

/* An overlay attach (a state written before modes existed is a clone). */
static bool state_overlay(json_t *state)
{
	const char *mode = state_str(state, "mode");

	return mode && strcmp(mode, ATTACH_MODE_NAME_OVERLAY) == 0;
}

static bool req_overlay(const struct attach_request *req)
{
	return !req->block && req->mode != ATTACH_MODE_CLONE;
}

/* ---- loop devices and mounts found from the outside (reconcile, crash leftovers) --------------
 */

/* The device number of a block device node, 0 when it is not one. */
static dev_t blockdev_rdev(const char *path)
{
	struct stat st;

	if (!path || stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
		return 0;
	return st.st_rdev;
}

/* Is dir the root of a mount of the filesystem on device rdev? */
static bool is_mount_of(const char *dir, dev_t rdev)
{
	struct statx stx;

	if (rdev == 0 || statx(AT_FDCWD, dir, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT,
			       STATX_BASIC_STATS, &stx) < 0)
		return false;
	return makedev(stx.stx_dev_major, stx.stx_dev_minor) == rdev &&
	       (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

/* Decode mountinfo's octal escapes (\040 and friends) in place. */
TESTABLE void mountinfo_unescape(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

/* Unmount every mount of the filesystem on rdev in this mount namespace, the last-mounted
 * (deepest) first; each one is added to repairs. */
static int umount_all_of(dev_t rdev, json_t *repairs, imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	char *lines[256], *save = NULL;
	size_t n = 0, len;
	int r;

	if (rdev == 0)
		return 0;
	r = imc_read_file("/proc/self/mountinfo", MOUNTINFO_MAX, &buf, &len, err);
	if (r < 0)
		return r;
	for (char *l = strtok_r(buf, "\n", &save); l && n < IMC_ARRAY_SIZE(lines);
	     l = strtok_r(NULL, "\n", &save)) {
		unsigned maj, min;
		char mp[PATH_MAX];
		/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ..." */
		if (sscanf(l, "%*u %*u %u:%u %*s %4095s", &maj, &min, mp) == 3 &&
		    makedev(maj, min) == rdev)
			lines[n++] = l;
	}
	for (size_t i = n; i-- > 0;) {
		char mp[PATH_MAX];
		sscanf(lines[i], "%*u %*u %*u:%*u %*s %4095s", mp);
		mountinfo_unescape(mp);
		r = imc_priv_umount(mp, 0, err);
		if (r < 0 && r != -EINVAL && r != -ENOENT)
			return r;
		if (r == 0 && repairs)
			json_array_append_new(repairs, json_sprintf("unmounted %s", mp));
	}
	return 0;
}

struct release {
	const char *aid; /* NULL: every clone's */
	json_t *repairs;
};

/* Unmount what is mounted from loop and release it, if it serves the clone asked for (the store
 * names the clones of its loop devices: store_for_each_clone_device). */
static int release_loop(const char *loop, const char *id, void *ctx, imc_error *err)
{
	const struct release *rel = ctx;
	char dev[IMC_LOOP_PATH_MAX + 8];
	int r;

	if (!attach_id_valid(id) || (rel->aid && strcmp(id, rel->aid) != 0))
		return 0;
	snprintf(dev, sizeof(dev), "/dev/%s", loop);
	if ((r = umount_all_of(blockdev_rdev(dev), rel->repairs, err)) < 0)
		return r;
	r = imc_priv_loop_detach(dev, err);
	if (r < 0 && r != -ENXIO && r != -ENOENT)
		return r;
	if (r == 0 && rel->repairs)
		json_array_append_new(rel->repairs,
				      json_sprintf("released %s (clone %s)", dev, id));
	return 0;
}

/* Release every loop device that serves aid's clone, unmounting what is mounted from it first. */
static int release_loops_of(struct store *s, const char *aid, json_t *repairs, imc_error *err)
{
	struct release rel = {.aid = aid, .repairs = repairs};

	return store_for_each_clone_device(s, release_loop, &rel, err);
}

/* Does the device recorded for aid still serve its clone?  (Mount mode: the loop device is
 * autoclear, so it is bound exactly as long as something, normally the mount, holds it.) */
static bool device_alive(struct store *s, const char *aid, const char *dev)
{
	char id[STORE_CLONE_ID_MAX + 1];
	imc_error ignored;

	if (!dev || strncmp(dev, "/dev/loop", 9) != 0)
		return blockdev_rdev(dev) != 0; /* not a loop device: a driver's own node */
	if (store_clone_of_device(s, dev + 5, id, &ignored) < 0)
		return true; /* cannot tell: keep it */
	return strcmp(id, aid) == 0;
}

/* ---- mounting ------------------------------------------------------------------------------- */

/* A detached copy of subdir of the mount mfd (a directory, never a symlink), read-only (and
 * nosuid, nodev) if asked. */
static int open_subtree(int mfd, const char *subdir, bool read_only, int *ret_fd)
{
	struct mount_attr attr = {.attr_set =
				      MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
	_cleanup_close_ int tree = -1;
	struct stat st;

	if (fstatat(mfd, subdir, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	tree =
	    open_tree(mfd, subdir,
		      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_NO_AUTOMOUNT | AT_SYMLINK_NOFOLLOW);
	if (tree < 0)
		return -errno;
	if (read_only && mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return -errno;
	*ret_fd = steal_fd(&tree);
	return 0;
}

/* Check data_dest ("/an/absolute/path", no "..") before anything is done. */
TESTABLE int data_dest_check(const char *dest, imc_error *err)
{
	size_t len = strlen(dest);
	bool named = false;

	if (dest[0] != '/' || len > ATTACH_DATA_DEST_MAX)
		return imc_err(err, EINVAL,
			       "data mount path \"%.80s\": want an absolute path of at "
			       "most %d bytes",
			       dest, ATTACH_DATA_DEST_MAX);
	for (const char *p = dest; *p;) {
		size_t n;
		p += strspn(p, "/");
		n = strcspn(p, "/");
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return imc_err(err, EINVAL, "data mount path %s: \"..\" is not allowed",
				       dest);
		if (n > 0 && !(n == 1 && p[0] == '.'))
			named = true;
		p += n;
	}
	if (!named)
		return imc_err(err, EINVAL, "data mount path %s: names no directory", dest);
	return 0;
}

/* Make the directory dest inside rootfd (each component resolved with RESOLVE_IN_ROOT, so no
 * symlink in the image can lead out of it) and return an O_PATH descriptor of it. */
static int mkdir_in_root(int rootfd, const char *dest, int *ret_fd, imc_error *err)
{
	_cleanup_free_ char *path = strdup(dest);
	_cleanup_close_ int parent = -1;
	size_t len;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	len = strlen(path);
	parent = fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
	if (parent < 0)
		return imc_err_sys(err, errno, "dup");
	for (size_t end = 0; end < len;) {
		size_t start = end + strspn(path + end, "/");
		int fd;
		end = start + strcspn(path + start, "/");
		if (end == start)
			break;
		char saved = path[end], name[NAME_MAX + 1];
		snprintf(name, sizeof(name), "%.*s", (int)(end - start), path + start);
		path[end] = '\0';
		fd = imc_openat_in_root(rootfd, path, O_PATH | O_DIRECTORY, 0);
		if (fd == -ENOENT) {
			/* mkdirat never follows the last component: a dangling symlink there
			 * is EEXIST, and the lookup again fails. */
			if (mkdirat(parent, name, 0755) < 0 && errno != EEXIST)
				return imc_err_sys(err, errno, "data mount point %s", path);
			fd = imc_openat_in_root(rootfd, path, O_PATH | O_DIRECTORY, 0);
		}
		if (fd < 0)
			return imc_err_sys(err, -fd, "data mount point %s", path);
		path[end] = saved;
		close(parent);
		parent = fd;
	}
	*ret_fd = steal_fd(&parent);
	return 0;
}

/* ---- undo ----------------------------------------------------------------------------------- */

/* Unmount the data mount inside the attach's rootfs, if it is there.  The path is resolved inside
 * the rootfs (the container may have changed it), and only a mount root of the clone's own
 * filesystem is unmounted. */
static int umount_data(const char *dir, const char *dest, dev_t rdev, imc_error *err)
{
	_cleanup_close_ int root = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	_cleanup_close_ int fd = -1;
	struct statx stx;
	char what[PATH_MAX + 64];
	int r;

	if (root < 0)
		return 0;
	fd = imc_openat_in_root(root, dest, O_PATH | O_NOFOLLOW, 0);
	if (fd < 0)
		return 0;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) < 0 ||
	    makedev(stx.stx_dev_major, stx.stx_dev_minor) != rdev ||
	    !(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT))
		return 0;
	snprintf(what, sizeof(what), "%s%s", dir, dest);
	r = imc_priv_umount_fd(fd, what, err);
	return r == -EINVAL ? 0 : r;
}

/* Undo whatever part of the attach aid (its state locked by us in fd) exists: the data mount,
 * the rootfs mount, the device, the clone, the state.  Each step accepts that it is done. */
static int undo(struct store *s, int adir, const char *aid, json_t *state, json_t *repairs,
		imc_error *err)
{
	const char *dir = state_str(state, "dir"), *dev = state_str(state, "device");
	const char *dest = state_str(state, "dataDest");
	const char *status = state_str(state, "status");
	bool attached = status && strcmp(status, STATUS_ATTACHED) == 0;
	dev_t rdev = blockdev_rdev(dev);
	char name[64];
	int r;

	if (state_overlay(state)) {
		state_name(aid, name);
		if ((r = overlay_undo(s, aid, state, repairs, err)) < 0)
			return r;
		if (unlinkat(adir, name, 0) < 0 && errno != ENOENT)
			return imc_err_sys(err, errno, "attach state %s", name);
		return 0;
	}
	if (dir && rdev && is_mount_of(dir, rdev)) {
		if (dest && (r = umount_data(dir, dest, rdev, err)) < 0)
			return r;
		r = imc_priv_umount(dir, 0, err);
		if (r < 0 && r != -EINVAL)
			return r;
		if (repairs)
			json_array_append_new(repairs, json_sprintf("unmounted %s", dir));
	}
	stop_point("detach-after-umount");
	if (dev) {
		struct store_dev sd = {.fd = -1};
		snprintf(sd.path, sizeof(sd.path), "%s", dev);
		if ((r = store_deactivate(s, STORE_CLONE, aid, &sd, err)) < 0)
			return r;
	}
	/* A crash before the device was recorded (or before "attached") may have left one that
	 * the state does not name. */
	if ((!dev || !attached) && (r = release_loops_of(s, aid, repairs, err)) < 0)
		return r;
	r = store_remove(s, STORE_CLONE, aid, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == 0 && repairs)
		json_array_append_new(repairs, json_sprintf("removed clone %s", aid));
	state_name(aid, name);
	if (unlinkat(adir, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "attach state %s", name);
	return 0;
}

/* ---- attach --------------------------------------------------------------------------------- */

static int resolve_dir(const char *dir, char ret[PATH_MAX], imc_error *err)
{
	struct stat st;

	if (!dir || dir[0] == '\0')
		return imc_err(err, EINVAL, "mount directory: empty");
	if (!realpath(dir, ret))
		return imc_err_sys(err, errno, "mount directory %s", dir);
	if (stat(ret, &st) < 0)
		return imc_err_sys(err, errno, "mount directory %s", ret);
	if (!S_ISDIR(st.st_mode))
		return imc_err(err, ENOTDIR, "mount directory %s: not a directory", ret);
	return 0;
}

/* Detached copies of images/N/rootfs and (if asked) /data of the filesystem at from.  A bare
 * -EINVAL, with err untouched, when the kernel refuses to copy from a detached mount. */
static int clone_trees(int from, const struct attach_request *req, const char *subdir,
		       int *ret_rootfs, int *ret_data, imc_error *err)
{
	int r = open_subtree(from, subdir, false, ret_rootfs);

	if (r == -EINVAL)
		return r;
	if (r < 0)
		return r == -ENOENT ? imc_err(err, ENOENT, "cache %s has no image %u",
					      req->cache_id, req->image)
				    : imc_err_sys(err, r, "cache %s: %s", req->cache_id, subdir);
	if (!req->data_dest)
		return 0;
	r = open_subtree(from, "data", true, ret_data);
	if (r == -EINVAL) {
		close(*ret_rootfs);
		*ret_rootfs = -1;
		return r;
	}
	if (r < 0)
		return r == -ENOENT || r == -ENOTDIR
			   ? imc_err(err, ENOENT, "cache %s has no /data", req->cache_id)
			   : imc_err_sys(err, r, "cache %s: /data", req->cache_id);
	return 0;
}

/* Where a mount-mode attach mounts: dir (the path recorded), or, when the caller opened the
 * directory itself (dirfd >= 0, imc-runtime's root.path), that descriptor: then dir is never
 * resolved again, and nothing swapped into the path meanwhile can move the mount elsewhere. */
struct target {
	const char *dir;
	int dirfd;
};

static int move_to(int from, const struct target *t, const char *what, imc_error *err)
{
	if (t->dirfd >= 0)
		return imc_priv_move_mount(from, t->dirfd, "", what, err);
	return imc_priv_move_mount(from, AT_FDCWD, t->dir, what, err);
}

/* Kernels before 6.15 copy trees only out of mounts attached in a namespace: attach the whole
 * filesystem at the target for the moment it takes to copy them out, then detach it.  A crash
 * in between leaves a mount of the clone's device at dir, which detach and reconcile undo like
 * the rootfs mount. */
static int clone_trees_attached(int mfd, const struct attach_request *req, const char *subdir,
				const struct target *t, int *ret_rootfs, int *ret_data,
				imc_error *err)
{
	imc_error ignored;
	int r;

	if ((r = move_to(mfd, t, t->dir, err)) < 0)
		return r;
	/* mfd now names the attached mount's root. */
	r = clone_trees(mfd, req, subdir, ret_rootfs, ret_data, err);
	if (r == -EINVAL) /* bare: err not filled */
		r = imc_err(err, EINVAL, "cache %s: copy %s out of its mount", req->cache_id,
			    subdir);
	/* Lazily: mfd (and the copies) still reference it. */
	if (imc_priv_umount_fd(mfd, t->dir, r < 0 ? &ignored : err) < 0 && r == 0)
		r = err->code;
	return r;
}

/* images[image].config of the snapshot's /imcache.json, read through the detached mount (the
 * file is outside what mount_trees makes visible). */
static int read_image_config(int mfd, const struct attach_request *req, json_t **ret,
			     imc_error *err)
{
	_cleanup_json_ json_t *m = NULL;
	json_t *images = NULL, *image, *cfg = NULL;
	int r = imc_json_read_file(mfd, "imcache.json", ATTACH_MANIFEST_MAX, &m, err);

	if (r == 0)
		r = imc_json_get_array(m, "images", true, ATTACH_IMAGE_MAX, "/imcache.json",
				       &images, err);
	if (r == 0 && !json_is_object(image = json_array_get(images, req->image)))
		r = imc_err(err, ENOENT, "/imcache.json: no image %u", req->image);
	if (r == 0)
		r = imc_json_get_object(image, "config", true, "/imcache.json images[]", &cfg, err);
	if (r < 0)
		return imc_err_wrap(err, "cache %s", req->cache_id);
	*ret = json_incref(cfg);
	return 0;
}

/* Mount images/N/rootfs of the clone on dev at dir and, if asked, the cache's /data read-only at
 * dir/data_dest, all from one detached fsmount (so only those two mounts ever appear). *ret_config
 * gets image req->image's config when req->image_config. */
static int mount_trees(const struct attach_request *req, const char *dev, const struct target *t,
		       json_t **ret_config, imc_error *err)
{
	_cleanup_close_ int mfd = -1, rootfs = -1, data = -1, dest = -1;
	const char *dir = t->dir;
	char subdir[64], what[PATH_MAX + 128];
	int r;

	if ((r = imc_priv_fsmount("ext4", dev, STORE_EXT4_MOUNT_OPTIONS, false, &mfd, err)) < 0)
		return r;
	if (req->image_config && (r = read_image_config(mfd, req, ret_config, err)) < 0)
		return r;
	snprintf(subdir, sizeof(subdir), "images/%u/rootfs", req->image);
	r = clone_trees(mfd, req, subdir, &rootfs, &data, err);
	if (r == -EINVAL)
		r = clone_trees_attached(mfd, req, subdir, t, &rootfs, &data, err);
	if (r < 0)
		return r;
	snprintf(what, sizeof(what), "%s:%s on %s", dev, subdir, dir);
	if ((r = move_to(rootfs, t, what, err)) < 0)
		return r;
	stop_point("after-mount");
	if (!req->data_dest)
		return 0;
	/* rootfs names the mounted rootfs now: the data mount point is found inside it, not by
	 * resolving dir again. */
	if ((r = mkdir_in_root(rootfs, req->data_dest, &dest, err)) < 0)
		return r;
	snprintf(what, sizeof(what), "%s:/data on %s%s", dev, dir, req->data_dest);
	if ((r = imc_priv_move_mount(data, dest, "", what, err)) < 0)
		return r;
	stop_point("after-data");
	return 0;
}

static int do_attach(struct store *s, const struct attach_request *req, const char *aid,
		     const struct target *t, int sfd, json_t *state, json_t **ret_config,
		     imc_error *err)
{
	unsigned flags = req->block ? STORE_ACTIVATE_PERSIST : 0;
	struct store_dev dev = {.fd = -1};
	int r;

	if (req_overlay(req)) {
		r = overlay_attach(s, req, aid, t->dir, t->dirfd, state, ret_config, err);
		if (r < 0)
			return r;
		json_object_set_new(state, "status", json_string(STATUS_ATTACHED));
		return state_update(sfd, state, err);
	}
	/* No existence check first: the clone is the check, and the hot path stays short. */
	r = store_clone(s, req->cache_id, aid, err);
	if (r == -ENOENT)
		return imc_err(err, ENOENT, "cache %s: not in the local store", req->cache_id);
	if (r < 0)
		return r;
	stop_point("after-clone");
	if (req->size)
		r = store_resize(s, STORE_CLONE, aid, req->size, err);
	if (r == 0)
		r = store_activate(s, STORE_CLONE, aid, flags, &dev, err);
	if (r < 0)
		return r;
	if (json_object_set_new(state, "device", json_string(dev.path)) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	else
		r = state_update(sfd, state, err);
	if (r == 0)
		stop_point("after-loop");
	if (r == 0 && req->size)
		r = imc_priv_resize_ext4(dev.path, req->size, err);
	if (r == 0 && !req->block)
		r = mount_trees(req, dev.path, t, ret_config, err);
	/* From here the mount holds the device (or, persistent, it holds itself); dropping our
	 * descriptor lets an autoclear one go with the mount, or now when the mount failed. */
	close(dev.fd);
	if (r < 0)
		return r;
	json_object_set_new(state, "status", json_string(STATUS_ATTACHED));
	return state_update(sfd, state, err);
}

static int check_request(struct store *s, const struct attach_request *req, imc_error *err)
{
	struct store_object_info info;
	int r;

	if (!req->cache_id || !imc_name_valid(req->cache_id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed",
			       req->cache_id ? req->cache_id : "");
	/* Only caches attach: a base snapshot (img-…) or anything else the store holds is none. */
	if (!imc_cache_id_valid(req->cache_id))
		return imc_err(err, ENOENT,
			       "cache %s: no such cache (a cache id is %s<16 hex digits>)",
			       req->cache_id, IMC_CACHE_ID_PREFIX);
	if (req->image > ATTACH_IMAGE_MAX)
		return imc_err(err, EINVAL, "image %u: at most %d", req->image, ATTACH_IMAGE_MAX);
	if (req->block && req->data_dest)
		return imc_err(err, EINVAL, "a data mount needs mount mode, not block mode");
	if (req->block && req->mode == ATTACH_MODE_OVERLAY)
		return imc_err(err, EINVAL,
			       "block mode always clones: --mode overlay needs a mount");
	if (req->data_dest && (r = data_dest_check(req->data_dest, err)) < 0)
		return r;
	if (!req->size)
		return 0;
	if (req->size > ATTACH_SIZE_MAX)
		return imc_err(err, EINVAL, "size %llu: at most %llu bytes (16 TiB)",
			       (unsigned long long)req->size, ATTACH_SIZE_MAX);
	if (req->size % 4096)
		return imc_err(err, EINVAL, "size %llu: not a multiple of 4096",
			       (unsigned long long)req->size);
	if (req_overlay(req))
		return 0; /* bounds what the pod writes, not the snapshot */
	r = store_stat(s, STORE_SNAPSHOT, req->cache_id, &info, err);
	if (r == -ENOENT)
		return imc_err(err, ENOENT, "cache %s: not in the local store", req->cache_id);
	if (r < 0)
		return r;
	if (req->size < info.size)
		return imc_err(err, EINVAL,
			       "size %llu is smaller than cache %s (%llu bytes); a clone can only "
			       "grow",
			       (unsigned long long)req->size, req->cache_id,
			       (unsigned long long)info.size);
	return 0;
}

static json_t *state_new(struct store *s, const struct attach_request *req, const char *aid,
			 const char *dir)
{
	json_t *state = json_pack("{s:s, s:s, s:i, s:b, s:s, s:s, s:I, s:i}", "id", aid, "cacheId",
				  req->cache_id, "image", (int)req->image, "block", req->block,
				  "status", STATUS_ATTACHING, "driver", store_driver_name(s),
				  "createdAt", (json_int_t)imc_now(), "pid", (int)getpid());

	if (state && dir && json_object_set_new(state, "dir", json_string(dir)) < 0)
		json_decref(steal_pointer(&state));
	if (state && req->data_dest &&
	    json_object_set_new(state, "dataDest", json_string(req->data_dest)) < 0)
		json_decref(steal_pointer(&state));
	if (state && req->size &&
	    json_object_set_new(state, "size", json_integer((json_int_t)req->size)) < 0)
		json_decref(steal_pointer(&state));
	if (state &&
	    json_object_set_new(state, "mode",
				json_string(req_overlay(req) ? ATTACH_MODE_NAME_OVERLAY
							     : ATTACH_MODE_NAME_CLONE)) < 0)
		json_decref(steal_pointer(&state));
	return state;
}

/* The directory a descriptor names must be the one its path names now (the path is what the
 * state records, for detach): else something was swapped in since the caller opened it. */
static int same_dir(const char *dir, int dirfd, imc_error *err)
{
	struct stat a, b;

	if (fstat(dirfd, &a) < 0)
		return imc_err_sys(err, errno, "mount directory %s", dir);
	if (stat(dir, &b) < 0)
		return imc_err_sys(err, errno, "mount directory %s", dir);
	if (!S_ISDIR(a.st_mode) || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		return imc_err(err, EXDEV, "mount directory %s: changed while being attached", dir);
	return 0;
}

int attach_cache(struct store *s, const struct attach_request *req, json_t **ret_state,
		 imc_error *err)
{
	return attach_cache_at(s, req, -1, ret_state, err);
}

int attach_cache_at(struct store *s, const struct attach_request *req, int dirfd,
		    json_t **ret_state, imc_error *err)
{
	char dir[PATH_MAX], aid[64];
	const char *what = "";
	_cleanup_close_ int adir = -1, sfd = -1;
	_cleanup_json_ json_t *state = NULL, *config = NULL;
	const struct target t = {.dir = dir, .dirfd = dirfd};
	int r;

	if ((r = check_request(s, req, err)) < 0)
		return r;
	if (req->block) {
		r = imc_random_id("att", aid, sizeof(aid), err);
		what = "block device";
	} else if ((r = resolve_dir(req->dir, dir, err)) == 0 &&
		   (dirfd < 0 || (r = same_dir(dir, dirfd, err)) == 0)) {
		r = attach_id_for_dir(dir, aid, err);
		what = dir;
	}
	if (r < 0)
		return r;
	if ((adir = open_attach_dir(s, err)) < 0)
		return adir;
	state = state_new(s, req, aid, req->block ? NULL : dir);
	if (!state)
		return imc_err(err, ENOMEM, "out of memory");
	sfd = state_create(adir, aid, state, err);
	if (sfd < 0)
		return imc_err_wrap(err, "%s", what);
	r = do_attach(s, req, aid, req->block ? NULL : &t, sfd, state, &config, err);
	if (r < 0) {
		imc_error undo_err;
		if (undo(s, adir, aid, state, NULL, &undo_err) < 0)
			return imc_err_wrap(err, "attach %s as %s (and undoing it failed: %s)",
					    req->cache_id, what, undo_err.msg);
		/* A lower this attach mounted goes too, when the policy says it would now. */
		if (req_overlay(req))
			lower_sweep(s, req->lower, NULL, &undo_err);
		return imc_err_wrap(err, "attach %s as %s", req->cache_id, what);
	}
	/* After the last state write: the config stays out of the state file.  Without it (no
	 * memory) imc-runtime reads /imcache.json its own way. */
	if (config)
		json_object_set(state, "imageConfig", config);
	if (ret_state)
		*ret_state = steal_pointer(&state);
	return 0;
}

/* ---- detach --------------------------------------------------------------------------------- */

/* The attach whose recorded device is dev. */
static int find_by_device(int adir, const char *dev, char ret[64], imc_error *err)
{
	int fd = fcntl(adir, F_DUPFD_CLOEXEC, 3);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "attachments");
	}
	while ((de = readdir(d))) {
		_cleanup_json_ json_t *state = NULL;
		imc_error ignored;
		size_t len = strlen(de->d_name);
		const char *sdev;

		if (len != ATTACH_ID_LEN + 5 || strcmp(de->d_name + ATTACH_ID_LEN, ".json"))
			continue;
		if (imc_json_read_file(adir, de->d_name, STATE_MAX_BYTES, &state, &ignored) < 0)
			continue;
		sdev = state_str(state, "device");
		if (sdev && strcmp(sdev, dev) == 0) {
			snprintf(ret, 64, "%.*s", ATTACH_ID_LEN, de->d_name);
			return 0;
		}
	}
	return imc_err(err, ENOENT, "%s: no attach uses this device", dev);
}

/* Which attach "what" names: an attach id, a device path or a mount directory. */
static int resolve_target(int adir, const char *what, char ret[64], imc_error *err)
{
	char dir[PATH_MAX];

	if (attach_id_valid(what)) {
		snprintf(ret, 64, "%s", what);
		return 0;
	}
	if (strncmp(what, "/dev/", 5) == 0)
		return find_by_device(adir, what, ret, err);
	/* The directory may be gone after a crash: then the given path is the key. */
	if (!realpath(what, dir)) {
		if (strlen(what) >= sizeof(dir))
			return imc_err(err, ENAMETOOLONG, "%.80s: path too long", what);
		snprintf(dir, sizeof(dir), "%s", what);
	}
	return attach_id_for_dir(dir, ret, err);
}

int attach_detach(struct store *s, const char *what, imc_error *err)
{
	char aid[64];
	_cleanup_close_ int adir = -1, sfd = -1;
	_cleanup_json_ json_t *state = NULL;
	int r;

	if ((adir = open_attach_dir(s, err)) < 0)
		return adir;
	if ((r = resolve_target(adir, what, aid, err)) < 0)
		return r;
	sfd = state_lock(adir, aid, err);
	if (sfd == -ENOENT)
		return imc_err(err, ENOENT, "%s: nothing attached there", what);
	if (sfd < 0)
		return sfd;
	if ((r = state_read(sfd, aid, &state, err)) < 0)
		return r;
	r = undo(s, adir, aid, state, NULL, err);
	return r < 0 ? imc_err_wrap(err, "detach %s", what) : 0;
}

int attach_list(struct store *s, json_t **ret, imc_error *err)
{
	int adir = open_attach_dir(s, err);
	_cleanup_dir_ DIR *d = NULL;
	_cleanup_json_ json_t *list = json_array();
	struct dirent *de;

	if (adir < 0)
		return adir;
	d = fdopendir(adir);
	if (!d) {
		close(adir);
		return imc_err_sys(err, errno, "attachments");
	}
	if (!list)
		return imc_err(err, ENOMEM, "out of memory");
	while ((de = readdir(d))) {
		json_t *state = NULL;
		size_t len = strlen(de->d_name);
		int r;

		if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".json"))
			continue;
		r = imc_json_read_file(dirfd(d), de->d_name, STATE_MAX_BYTES, &state, err);
		if (r == -ENOENT)
			continue; /* detached meanwhile */
		if (r < 0)
			return imc_err_wrap(err, "attachments");
		if (!json_object_get(state, "mode"))
			json_object_set_new(state, "mode", json_string(ATTACH_MODE_NAME_CLONE));
		json_array_append_new(list, state);
	}
	*ret = steal_pointer(&list);
	return 0;
}

/* ---- reconcile ------------------------------------------------------------------------------ */

/* One recorded attach: keep it if someone works on it or its device is still in use; otherwise
 * (a crashed attach or detach, a mount that vanished) undo it. */
static int reconcile_state(struct store *s, int adir, const char *aid, json_t *repairs,
			   imc_error *err)
{
	_cleanup_close_ int sfd = state_lock(adir, aid, err);
	_cleanup_json_ json_t *state = NULL;
	const char *status, *why;
	int r;

	if (sfd == -ENOENT || sfd == -EBUSY)
		return 0; /* gone meanwhile, or in the hands of a live process */
	if (sfd < 0)
		return sfd;
	if (state_read(sfd, aid, &state, err) < 0) {
		/* Unreadable: undo what the id alone finds. */
		json_decref(state);
		state = json_pack("{s:s}", "id", aid);
		if (!state)
			return imc_err(err, ENOMEM, "out of memory");
		why = "unreadable state";
	} else {
		status = state_str(state, "status");
		if (status && strcmp(status, STATUS_ATTACHED) == 0 &&
		    (state_overlay(state) ? overlay_alive(aid)
					  : device_alive(s, aid, state_str(state, "device"))))
			return 0;
		why = status && strcmp(status, STATUS_ATTACHED) == 0
			  ? "its mount or device vanished"
			  : "interrupted attach";
	}
	if ((r = undo(s, adir, aid, state, repairs, err)) < 0)
		return imc_err_wrap(err, "attach %s", aid);
	json_array_append_new(repairs,
			      json_sprintf("cleaned attach %s (%s%s%s)", aid, why,
					   state_str(state, "dir") ? ", at " : "",
					   state_str(state, "dir") ? state_str(state, "dir") : ""));
	return 0;
}

/* Temporary state files (".att-….json.PID.TID") whose process is gone.  The lock alone would
 * not do: an attach creates the file an instant before it locks it. */
static void reconcile_tmp(int adir, const char *name, json_t *repairs)
{
	const char *dot = strstr(name, ".json.");
	_cleanup_close_ int fd = -1;
	long pid = dot ? strtol(dot + 6, NULL, 10) : 0;

	if (pid > 0 && pid <= INT_MAX && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
		return;
	fd = openat(adir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0)
		return;
	if (unlinkat(adir, name, 0) == 0)
		json_array_append_new(repairs, json_sprintf("removed unfinished state %s", name));
}

static int reconcile_states(struct store *s, int adir, json_t *repairs, imc_error *err)
{
	int fd = fcntl(adir, F_DUPFD_CLOEXEC, 3);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	int r;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "attachments");
	}
	while ((de = readdir(d))) {
		char aid[ATTACH_ID_LEN + 1];
		size_t len = strlen(de->d_name);

		if (strncmp(de->d_name, ".att-", 5) == 0) {
			reconcile_tmp(adir, de->d_name, repairs);
			continue;
		}
		if (len != ATTACH_ID_LEN + 5 || strcmp(de->d_name + ATTACH_ID_LEN, ".json"))
			continue;
		snprintf(aid, sizeof(aid), "%.*s", ATTACH_ID_LEN, de->d_name);
		if (attach_id_valid(aid) && (r = reconcile_state(s, adir, aid, repairs, err)) < 0)
			return r;
	}
	return 0;
}

/* Clones without a state file: the state is created before the clone and removed after it, so
 * such a clone belongs to no attach, live or dead. */
static int reconcile_clones(struct store *s, int adir, json_t *repairs, imc_error *err)
{
	char **ids = NULL;
	size_t n = 0;
	int r = store_list(s, STORE_CLONE, &ids, &n, err);

	for (size_t i = 0; r == 0 && i < n; i++) {
		char name[64];
		struct stat st;
		if (!attach_id_valid(ids[i]))
			continue;
		state_name(ids[i], name);
		if (fstatat(adir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT)
			continue;
		if ((r = release_loops_of(s, ids[i], repairs, err)) < 0)
			break;
		r = store_remove(s, STORE_CLONE, ids[i], err);
		if (r == 0)
			json_array_append_new(repairs,
					      json_sprintf("removed orphan clone %s", ids[i]));
		else if (r == -ENOENT)
			r = 0;
	}
	store_list_free(ids, n);
	return r;
}

struct orphan_loops {
	int adir;
	json_t *repairs;
};

static int release_if_orphan(const char *loop, const char *id, void *ctx, imc_error *err)
{
	const struct orphan_loops *o = ctx;
	struct release rel = {.aid = id, .repairs = o->repairs};
	char name[64];
	struct stat st;

	if (!attach_id_valid(id))
		return 0;
	state_name(id, name);
	if (fstatat(o->adir, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 0;
	return release_loop(loop, id, &rel, err);
}

/* Loop devices serving a clone of this store (even a deleted one) that has no state file. */
static int reconcile_loops(struct store *s, int adir, json_t *repairs, imc_error *err)
{
	struct orphan_loops o = {.adir = adir, .repairs = repairs};

	return store_for_each_clone_device(s, release_if_orphan, &o, err);
}

static int reconcile_attaches(struct store *s, json_t **ret_repairs, imc_error *err)
{
	_cleanup_close_ int adir = open_attach_dir(s, err);
	_cleanup_json_ json_t *repairs = json_array();
	int r;

	if (adir < 0)
		return adir;
	if (!repairs)
		return imc_err(err, ENOMEM, "out of memory");
	if ((r = reconcile_states(s, adir, repairs, err)) < 0 ||
	    (r = reconcile_clones(s, adir, repairs, err)) < 0 ||
	    (r = reconcile_loops(s, adir, repairs, err)) < 0)
		return imc_err_wrap(err, "reconcile");
	*ret_repairs = steal_pointer(&repairs);
	return 0;
}

int attach_detach_with(struct store *s, const char *what, const struct attach_lower_policy *pol,
		       imc_error *err)
{
	imc_error ignored;
	int r = attach_detach(s, what, err);

	/* The detach is done either way: a lower that cannot be released yet stays warm. */
	if (r == 0)
		lower_sweep(s, pol, NULL, &ignored);
	return r;
}

int attach_reconcile_with(struct store *s, const struct attach_lower_policy *pol,
			  json_t **ret_repairs, imc_error *err)
{
	_cleanup_json_ json_t *repairs = NULL;
	int r = reconcile_attaches(s, &repairs, err);

	if (r == 0)
		r = lower_reap_lazy(s, repairs, err);
	if (r == 0 && (r = overlay_reconcile_orphans(s, repairs, err)) == 0)
		r = lower_sweep(s, pol, repairs, err);
	if (r < 0)
		return imc_err_wrap(err, "reconcile");
	*ret_repairs = steal_pointer(&repairs);
	return 0;
}

/* ---- for the rest of the room (internal.h) --------------------------------------------------- */

const char *attach_state_dir(struct store *s)
{
	return store_state_dir(s);
}

void attach_stop_point(const char *name)
{
	stop_point(name);
}

bool attach_state_exists(struct store *s, const char *aid)
{
	_cleanup_free_ char *dir = imc_path_join(attach_state_dir(s), ATTACH_DIR);
	char name[64];
	struct stat st;

	if (!dir || !attach_id_valid(aid))
		return !dir; /* no memory: keep what it names */
	state_name(aid, name);
	_cleanup_free_ char *path = imc_path_join(dir, name);
	return !path || lstat(path, &st) == 0 || errno != ENOENT;
}

int attach_state_link(struct store *s, const char *aid, int dirfd, const char *name)
{
	_cleanup_free_ char *dir = imc_path_join(attach_state_dir(s), ATTACH_DIR);
	_cleanup_free_ char *path = NULL;
	char sname[64];

	if (!dir || !attach_id_valid(aid))
		return dir ? -EINVAL : -ENOMEM;
	state_name(aid, sname);
	if (!(path = imc_path_join(dir, sname)))
		return -ENOMEM;
	return linkat(AT_FDCWD, path, dirfd, name, 0) < 0 ? -errno : 0;
}

int attach_mkdir_in_root(int rootfd, const char *dest, int *ret_fd, imc_error *err)
{
	return mkdir_in_root(rootfd, dest, ret_fd, err);
}

int attach_read_image_config(int dirfd, const struct attach_request *req, json_t **ret,
			     imc_error *err)
{
	return read_image_config(dirfd, req, ret, err);
}

void attach_mountinfo_unescape(char *s)
{
	mountinfo_unescape(s);
}
