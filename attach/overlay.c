/* Overlay attach: the pod's rootfs is an overlayfs whose lower is images/<n>/rootfs of the
 * cache's shared read-only lower (lower.c) and whose upper and work directories are the pod's
 * own, in <state>/overlays/<att-id>/ (on a size-limited tmpfs mounted there with --size).  The
 * overlay's source is "imc-<att-id>", which is how detach and reconcile find its mounts in
 * /proc/self/mountinfo.  Options: docs/architecture.md, "Overlay attach". */
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include "../common/priv.h"
#include "internal.h"

#define OVERLAYS_DIR "overlays"
/* index=off: no hardlink index (the upper is never reused with another lower, and index=on
 * would tie the upper to the lower's file handles); redirect_dir=on: a directory of the lower
 * can be renamed inside the pod without EXDEV (the rename is recorded in the upper, which only
 * this pod reads); metacopy=off: a chmod or chown copies the whole file up, so the upper never
 * depends on the lower for data of a file it changed; xino=auto: unique inode numbers across the
 * layers where the upper's inode numbers leave room; volatile: no syncfs of the upper (it is
 * thrown away with the pod, and after a crash it is removed, never mounted again). */
#define OVERLAY_OPTIONS "index=off,redirect_dir=on,metacopy=off,xino=auto,volatile"
#define MOUNTINFO_MAX	(4U << 20)
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U /* Linux 6.8: mount ids never reused while the system runs */
#endif
#define POD_MOUNTS_MAX ATTACH_POD_MOUNTS_MAX

/* Where pod directories go: the store's scratch directory on its own filesystem where it has one
 * (the reflink pool's XFS), else <state>/overlays.  A pod makes and removes about ten inodes
 * (ours, and the work directory's that overlayfs makes at every mount): on the pool they stay off
 * the state dir's filesystem, which holds the attach records (docs/architecture.md, "The pod").
 * Pods of a state dir from before live in <state>/overlays: detach and reconcile look there too. */
static int pods_dir(struct store *s, bool legacy, char ret[PATH_MAX], imc_error *err)
{
	char real[PATH_MAX], path[PATH_MAX];
	int r = legacy ? -EOPNOTSUPP : store_scratch_dir(s, OVERLAYS_DIR, path, err);

	if (r == 0) {
		if (!realpath(path, ret))
			return imc_err_sys(err, errno, "%s", path);
		return 0;
	}
	if (r != -EOPNOTSUPP)
		return r;
	if (!realpath(attach_state_dir(s), real))
		return imc_err_sys(err, errno, "%s", attach_state_dir(s));
	if ((size_t)snprintf(ret, PATH_MAX, "%s/" OVERLAYS_DIR, real) >= PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", real);
	return 0;
}

static int pod_path(const char *base, const char *aid, char ret[PATH_MAX], imc_error *err)
{
	if ((size_t)snprintf(ret, PATH_MAX, "%s/%s", base, aid) >= PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", base);
	return 0;
}

/* overlayfs splits its options at ',' (and lowerdir at ':', with '\\' escapes): refuse such
 * paths rather than escape them differently for each kernel. */
static int overlay_path_check(const char *path, imc_error *err)
{
	if (strpbrk(path, ",:\\\n"))
		return imc_err(err, EINVAL,
			       "%s: an overlay attach needs a state dir path without ',', ':' or "
			       "'\\' (use --mode clone)",
			       path);
	return 0;
}

/* ---- the pod's mounts, found in mountinfo --------------------------------------------------- */

#define pod_mount attach_pod_mount

/* One mountinfo line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - FSTYPE SOURCE ...". */
static bool mountinfo_line(char *l, unsigned *id, unsigned *parent, char **point, bool *ours,
			   const char *source)
{
	char fstype[32], src[80], *dash = strstr(l, " - "), *sp;
	int at = 0;

	if (!dash || sscanf(l, "%u %u %*s %*s %n", id, parent, &at) < 2 || at == 0)
		return false;
	*point = l + at;
	if (*point >= dash)
		return false;
	if ((sp = strchr(*point, ' ')))
		*sp = '\0';
	*ours = sscanf(dash + 3, "%31s %79s", fstype, src) == 2 && strcmp(fstype, "overlay") == 0 &&
		strcmp(src, source) == 0;
	return true;
}

TESTABLE size_t attach_pod_mounts_scan(char *buf, const char *aid, struct pod_mount *ret)
{
	char source[64], *save = NULL;
	size_t n = 0;

	snprintf(source, sizeof(source), "imc-%.40s", aid);
	/* mountinfo lists a mount after its parent: one pass finds the overlays and what was
	 * mounted on them afterwards. */
	for (char *l = strtok_r(buf, "\n", &save); l && n < POD_MOUNTS_MAX;
	     l = strtok_r(NULL, "\n", &save)) {
		unsigned id, parent;
		char *point;
		bool ours, child = false;
		if (!mountinfo_line(l, &id, &parent, &point, &ours, source))
			continue;
		for (size_t j = 0; j < n && !ours && !child; j++)
			child = ret[j].id == parent;
		if (!ours && !child)
			continue;
		ret[n] = (struct pod_mount){.id = id, .parent = parent, .overlay = ours};
		snprintf(ret[n].point, sizeof(ret[n].point), "%s", point);
		attach_mountinfo_unescape(ret[n].point);
		n++;
	}
	for (size_t i = 0; i < n / 2; i++) {
		struct pod_mount t = ret[i];
		ret[i] = ret[n - 1 - i];
		ret[n - 1 - i] = t;
	}
	return n;
}

/* The overlay mounts of attach aid and the mounts on top of them, in ret with the last-mounted
 * first (the order to undo them in). */
static int pod_mounts_in(const char *mountinfo, const char *aid, struct pod_mount *ret,
			 size_t *ret_n, imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	size_t len;
	int r;

	*ret_n = 0;
	if ((r = imc_read_file(mountinfo, MOUNTINFO_MAX, &buf, &len, err)) < 0)
		return r;
	*ret_n = attach_pod_mounts_scan(buf, aid, ret);
	return 0;
}

static int pod_mounts(const char *aid, struct pod_mount *ret, size_t *ret_n, imc_error *err)
{
	return pod_mounts_in("/proc/self/mountinfo", aid, ret, ret_n, err);
}

#define NS_SCAN_PROCS_MAX 65536
#define NS_SCAN_NS_MAX	  1024

/* Is the overlay of aid mounted in a mount namespace other than ours (a runtime's private one)?
 * One process's mountinfo per namespace. */
static bool mounted_elsewhere(const char *aid)
{
	_cleanup_dir_ DIR *d = opendir("/proc");
	struct pod_mount *m = NULL;
	ino_t seen[NS_SCAN_NS_MAX];
	size_t n_seen = 0, procs = 0;
	struct dirent *de;
	struct stat st;
	bool found = false;

	if (!d || !(m = calloc(POD_MOUNTS_MAX, sizeof(*m))))
		return true; /* cannot tell: keep it */
	if (stat("/proc/self/ns/mnt", &st) == 0)
		seen[n_seen++] = st.st_ino;
	while (!found && (de = readdir(d)) && procs++ < NS_SCAN_PROCS_MAX &&
	       n_seen < NS_SCAN_NS_MAX) {
		char path[64];
		imc_error ignored;
		size_t n = 0, i;
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%.20s/ns/mnt", de->d_name);
		if (stat(path, &st) < 0)
			continue;
		for (i = 0; i < n_seen && seen[i] != st.st_ino; i++)
			;
		if (i < n_seen)
			continue;
		seen[n_seen++] = st.st_ino;
		snprintf(path, sizeof(path), "/proc/%.20s/mountinfo", de->d_name);
		found = pod_mounts_in(path, aid, m, &n, &ignored) == 0 && n > 0;
	}
	free(m);
	return found;
}

bool overlay_alive(const char *aid)
{
	struct pod_mount m[POD_MOUNTS_MAX];
	imc_error ignored;
	size_t n;

	/* Cannot tell: keep it. */
	if (pod_mounts(aid, m, &n, &ignored) < 0)
		return true;
	return n > 0 || mounted_elsewhere(aid);
}

/* The unique id of the mount whose root fd (or fd/path) is; 0 when it is no mount root or the
 * kernel has no unique mount ids (before 6.8). */
static uint64_t mount_id(int fd, const char *path, int flags)
{
	struct statx stx;

	if (statx(fd, path, flags | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_MNT_ID_UNIQUE,
		  &stx) < 0 ||
	    !(stx.stx_mask & STATX_MNT_ID_UNIQUE) || !(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT))
		return 0;
	return stx.stx_mnt_id;
}

/* The pod's mounts found without mountinfo (which costs every detach in proportion to all the
 * mounts of the host, pods included): the mount at the state's dir is the overlay the attach
 * recorded ("mountId"), so only the data mount sits on it.  1 when they are unmounted, 0 when the
 * mountinfo way must do it (nothing recorded, no unique ids, the directory's mount not that one,
 * or something else on top of it), -errno on error. */
static int umount_pod_recorded(json_t *state, json_t *repairs, imc_error *err)
{
	const char *dir = json_string_value(json_object_get(state, "dir"));
	const char *dest = json_string_value(json_object_get(state, "dataDest"));
	json_int_t want = json_integer_value(json_object_get(state, "mountId"));
	_cleanup_close_ int root = -1, data = -1;
	char what[PATH_MAX * 2];
	uint64_t id;
	int r;

	if (!dir || want <= 0)
		return 0;
	root = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (root < 0 || mount_id(root, "", AT_EMPTY_PATH) != (uint64_t)want)
		return 0;
	if (dest && (data = imc_openat_in_root(root, dest, O_PATH | O_NOFOLLOW, 0)) >= 0 &&
	    (id = mount_id(data, "", AT_EMPTY_PATH)) != 0 && id != (uint64_t)want) {
		snprintf(what, sizeof(what), "%s%s", dir, dest);
		r = imc_priv_umount_fd(data, what, err); /* lazily, as in umount_pod */
		if (r < 0 && r != -EINVAL)
			return r;
		if (r == 0 && repairs)
			json_array_append_new(repairs, json_sprintf("unmounted %s", what));
	}
	/* Our descriptors would keep the overlay busy. */
	close(steal_fd(&root));
	if (data >= 0)
		close(steal_fd(&data));
	r = imc_priv_umount(dir, 0, err);
	if (r == -EBUSY || r == -EINVAL)
		return 0; /* something on top, or busy: the mountinfo way finds out which */
	if (r < 0)
		return r;
	if (repairs)
		json_array_append_new(repairs, json_sprintf("unmounted %s", dir));
	return 1;
}

/* Unmount the pod's mounts: what sits on the overlay lazily (a data mount's path may be busy
 * through the descriptor that names it), the overlay itself not (a busy rootfs is an error). */
static int umount_pod(const char *aid, json_t *repairs, imc_error *err)
{
	struct pod_mount m[POD_MOUNTS_MAX];
	size_t n;
	int r;

	if ((r = pod_mounts(aid, m, &n, err)) < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		r = imc_priv_umount(m[i].point, m[i].overlay ? 0 : MNT_DETACH, err);
		if (r < 0 && r != -EINVAL && r != -ENOENT)
			return r;
		if (r == 0 && repairs)
			json_array_append_new(repairs, json_sprintf("unmounted %s", m[i].point));
	}
	return 0;
}

/* ---- the pod directory ---------------------------------------------------------------------- */

/* Open the pod directories' directory base (made if missing when create); -ENOENT (bare) when it
 * is not there and !create. */
static int open_pods_dir(const char *base, bool create, imc_error *err)
{
	int fd;

	if (create && mkdir(base, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", base);
	fd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT && !create ? -ENOENT : imc_err_sys(err, errno, "%s", base);
	return fd;
}

/* Remove pod directory aid of odir (named base), unmounting its tmpfs first. */
static int pod_remove_in(int odir, const char *base, const char *aid, json_t *repairs,
			 imc_error *err)
{
	char pod[PATH_MAX];
	struct statx stx;
	int r;

	if ((r = pod_path(base, aid, pod, err)) < 0)
		return r;
	if (statx(odir, aid, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &stx) < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "%s", pod);
	if (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) {
		/* Lazily: a lazily unmounted overlay may still hold it. */
		r = imc_priv_umount(pod, MNT_DETACH, err);
		if (r < 0 && r != -EINVAL)
			return r;
	}
	if ((r = imc_rm_rf_at(odir, aid, err)) < 0)
		return imc_err_wrap(err, "pod directory %s", pod);
	if (repairs)
		json_array_append_new(repairs, json_sprintf("removed pod directory %s", pod));
	return 0;
}

/* Remove the pod directory of aid wherever it is (where pods go now, or where they went before). */
static int pod_remove(struct store *s, const char *aid, json_t *repairs, imc_error *err)
{
	char here[PATH_MAX], legacy[PATH_MAX];
	int r;

	if ((r = pods_dir(s, false, here, err)) < 0 || (r = pods_dir(s, true, legacy, err)) < 0)
		return r;
	for (int i = 0; i < 2 && r == 0; i++) {
		const char *base = i == 0 ? here : legacy;
		_cleanup_close_ int odir = -1;
		if (i == 1 && strcmp(here, legacy) == 0)
			break;
		if ((odir = open_pods_dir(base, false, err)) == -ENOENT)
			continue;
		r = odir < 0 ? odir : pod_remove_in(odir, base, aid, repairs, err);
	}
	return r;
}

/* The pod's upper and work directories (on a tmpfs of size bytes when size is not 0); the upper
 * gets the owner and mode of the lower's rootfs, since it becomes the overlay's root. */
static int pod_create(struct store *s, const char *aid, uint64_t size, const struct stat *root,
		      char ret[PATH_MAX], imc_error *err)
{
	_cleanup_close_ int odir = -1, pfd = -1;
	char base[PATH_MAX];
	int r;

	if ((r = pod_remove(s, aid, NULL, err)) < 0 || (r = pods_dir(s, false, base, err)) < 0 ||
	    (r = pod_path(base, aid, ret, err)) < 0)
		return r;
	if ((odir = open_pods_dir(base, true, err)) < 0)
		return odir;
	if (mkdirat(odir, aid, 0700) < 0)
		return imc_err_sys(err, errno, "pod directory %s", ret);
	if (size) {
		char opts[64];
		snprintf(opts, sizeof(opts), "size=%llu,mode=0700", (unsigned long long)size);
		r = imc_priv_mount("tmpfs", ret, "tmpfs", MS_NOSUID | MS_NODEV, opts, err);
		if (r < 0)
			return imc_err_wrap(err, "writable space of %llu bytes",
					    (unsigned long long)size);
	}
	pfd = openat(odir, aid, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0)
		return imc_err_sys(err, errno, "pod directory %s", ret);
	if (mkdirat(pfd, "upper", root->st_mode & 07777) < 0 || mkdirat(pfd, "work", 0700) < 0)
		return imc_err_sys(err, errno, "pod directory %s", ret);
	if (fchownat(pfd, "upper", root->st_uid, root->st_gid, AT_SYMLINK_NOFOLLOW) < 0 ||
	    fchmodat(pfd, "upper", root->st_mode & 07777, 0) < 0)
		return imc_err_sys(err, errno, "pod directory %s/upper", ret);
	attach_stop_point("after-upper");
	return 0;
}

/* ---- attach --------------------------------------------------------------------------------- */

/* The cache's /data of the lower, read-only, nosuid, nodev, on dest inside the pod's overlay
 * (root: its mount). */
static int mount_data(const struct attach_request *req, const char *lroot, int root,
		      const char *dir, imc_error *err)
{
	struct mount_attr attr = {.attr_set =
				      MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
	_cleanup_close_ int lfd = open(lroot, O_PATH | O_DIRECTORY | O_CLOEXEC);
	_cleanup_close_ int tree = -1, dest = -1;
	char what[PATH_MAX * 2];
	int r;

	if (lfd < 0)
		return imc_err_sys(err, errno, "%s", lroot);
	tree =
	    open_tree(lfd, "data",
		      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_NO_AUTOMOUNT | AT_SYMLINK_NOFOLLOW);
	if (tree < 0)
		return imc_err_sys(err, errno, "cache %s: /data", req->cache_id);
	if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return imc_err_sys(err, errno, "cache %s: /data read-only", req->cache_id);
	if ((r = attach_mkdir_in_root(root, req->data_dest, &dest, err)) < 0)
		return r;
	snprintf(what, sizeof(what), "%s/data on %s%s", lroot, dir, req->data_dest);
	if ((r = imc_priv_move_mount(tree, dest, "", what, err)) < 0)
		return r;
	attach_stop_point("after-data");
	return 0;
}

/* Is the lower's images/<n>/rootfs there, and /data if asked?  (Before anything is mounted.) */
static int check_lower(const struct attach_request *req, const char *lroot, struct stat *ret_root,
		       imc_error *err)
{
	_cleanup_close_ int lfd = open(lroot, O_PATH | O_DIRECTORY | O_CLOEXEC);
	char sub[64];
	struct stat st;

	if (lfd < 0)
		return imc_err_sys(err, errno, "%s", lroot);
	snprintf(sub, sizeof(sub), "images/%u/rootfs", req->image);
	if (fstatat(lfd, sub, ret_root, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(ret_root->st_mode))
		return imc_err(err, ENOENT, "cache %s has no image %u", req->cache_id, req->image);
	if (req->data_dest &&
	    (fstatat(lfd, "data", &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)))
		return imc_err(err, ENOENT, "cache %s has no /data", req->cache_id);
	return 0;
}

/* Mount the pod's overlay on dir (on dirfd when it is not -1); *ret_mfd names its root, *ret_id
 * is its unique mount id (0: none). */
static int mount_overlay(const struct attach_request *req, const char *aid, const char *lroot,
			 const char *pod, const char *dir, int dirfd, int *ret_mfd,
			 uint64_t *ret_id, imc_error *err)
{
	_cleanup_free_ char *opts = NULL;
	_cleanup_close_ int mfd = -1;
	char source[64], what[PATH_MAX + 64];
	int r;

	if (asprintf(&opts, "lowerdir=%s/images/%u/rootfs,upperdir=%s/upper,workdir=%s/work,%s",
		     lroot, req->image, pod, pod, OVERLAY_OPTIONS) < 0) {
		opts = NULL;
		return imc_err(err, ENOMEM, "out of memory");
	}
	snprintf(source, sizeof(source), "imc-%s", aid);
	if ((r = imc_priv_fsmount("overlay", source, opts, false, &mfd, err)) < 0)
		return r;
	snprintf(what, sizeof(what), "overlay of cache %s on %s", req->cache_id, dir);
	if (dirfd >= 0)
		r = imc_priv_move_mount(mfd, dirfd, "", what, err);
	else
		r = imc_priv_move_mount(mfd, AT_FDCWD, dir, what, err);
	if (r < 0)
		return r;
	attach_stop_point("after-mount");
	*ret_id = mount_id(mfd, "", AT_EMPTY_PATH);
	*ret_mfd = steal_fd(&mfd);
	return 0;
}

int overlay_attach(struct store *s, const struct attach_request *req, const char *aid,
		   const char *dir, int dirfd, json_t *state, json_t **ret_config, imc_error *err)
{
	_cleanup_close_ int mfd = -1;
	uint64_t id = 0;
	char lroot[PATH_MAX], pod[PATH_MAX];
	struct stat root;
	int r;

	if ((r = lower_acquire(s, req->cache_id, aid, req->lower, req->lazy, lroot, err)) < 0)
		return r;
	attach_stop_point("after-lower");
	if ((r = overlay_path_check(lroot, err)) < 0 ||
	    (r = check_lower(req, lroot, &root, err)) < 0)
		return r;
	if (req->image_config) {
		_cleanup_close_ int lfd = open(lroot, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (lfd < 0)
			return imc_err_sys(err, errno, "%s", lroot);
		if ((r = attach_read_image_config(lfd, req, ret_config, err)) < 0)
			return r;
	}
	if ((r = pod_create(s, aid, req->size, &root, pod, err)) < 0 ||
	    (r = overlay_path_check(pod, err)) < 0)
		return r;
	if ((r = mount_overlay(req, aid, lroot, pod, dir, dirfd, &mfd, &id, err)) < 0)
		return r;
	if (id && json_object_set_new(state, "mountId", json_integer((json_int_t)id)) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	/* mfd names the mounted overlay: the data mount point is found inside it, not by
	 * resolving dir again.  The caller records "attached". */
	if (req->data_dest && (r = mount_data(req, lroot, mfd, dir, err)) < 0)
		return r;
	return 0;
}

int overlay_undo(struct store *s, const char *aid, json_t *state, json_t *repairs, imc_error *err)
{
	const char *cache_id = json_string_value(json_object_get(state, "cacheId"));
	int r;

	if ((r = umount_pod_recorded(state, repairs, err)) == 0)
		r = umount_pod(aid, repairs, err);
	if (r < 0)
		return r;
	attach_stop_point("detach-after-umount");
	if ((r = pod_remove(s, aid, repairs, err)) < 0)
		return r;
	if (cache_id && imc_name_valid(cache_id, 64) &&
	    (r = lower_release(s, cache_id, aid, err)) < 0)
		return r;
	return 0;
}

/* Pod directories in base (the directory odir) whose attach has no state. */
static int reconcile_orphans_in(struct store *s, int odir, const char *base, json_t *repairs,
				imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int r = 0, fd = fcntl(odir, F_DUPFD_CLOEXEC, 3);

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "%s", base);
	}
	while (r == 0 && (de = readdir(d))) {
		if (de->d_name[0] == '.' || strncmp(de->d_name, "att-", 4) != 0 ||
		    attach_state_exists(s, de->d_name))
			continue;
		if ((r = umount_pod(de->d_name, repairs, err)) == 0)
			r = pod_remove_in(odir, base, de->d_name, repairs, err);
	}
	return r;
}

int overlay_reconcile_orphans(struct store *s, json_t *repairs, imc_error *err)
{
	char here[PATH_MAX], legacy[PATH_MAX];
	int r;

	if ((r = pods_dir(s, false, here, err)) < 0 || (r = pods_dir(s, true, legacy, err)) < 0)
		return r;
	for (int i = 0; i < 2 && r == 0; i++) {
		const char *base = i == 0 ? here : legacy;
		_cleanup_close_ int odir = -1;
		if (i == 1 && strcmp(here, legacy) == 0)
			break;
		if ((odir = open_pods_dir(base, false, err)) == -ENOENT)
			continue;
		r = odir < 0 ? odir : reconcile_orphans_in(s, odir, base, repairs, err);
	}
	return r;
}
