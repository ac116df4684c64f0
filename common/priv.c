#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <spawn.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include "priv.h"

extern char **environ;

static unsigned long op_count[IMC_PRIV__MAX];
#ifdef IMC_TESTING
/* Fault injection: test builds only (a release binary has no way to make a call fail).  The
 * names are IMC_FAULT's. */
static const char *const op_names[IMC_PRIV__MAX] = {
    [IMC_PRIV_FICLONE] = "ficlone",	    [IMC_PRIV_LOOP_ATTACH] = "loop_attach",
    [IMC_PRIV_LOOP_DETACH] = "loop_detach", [IMC_PRIV_MOUNT] = "mount",
    [IMC_PRIV_UMOUNT] = "umount",	    [IMC_PRIV_MKFS] = "mkfs",
    [IMC_PRIV_RESIZE] = "resize",	    [IMC_PRIV_TRIM] = "trim",
};
static unsigned long fail_at[IMC_PRIV__MAX]; /* absolute call number that fails, 0 = none */
static int fail_errno[IMC_PRIV__MAX];
#endif

unsigned long imc_priv_count(enum imc_priv_op op)
{
	return __atomic_load_n(&op_count[op], __ATOMIC_RELAXED);
}

#ifdef IMC_TESTING
/* Make the nth next call of op (1 = the next one) fail with -errnum. */
static void imc_priv_inject(enum imc_priv_op op, unsigned nth, int errnum)
{
	fail_at[op] = imc_priv_count(op) + nth;
	fail_errno[op] = errnum;
}
#endif

/* Entered by every privileged operation: count it, and (test builds) fail it when a fault is
 * injected. */
static int priv_enter(enum imc_priv_op op)
{
	unsigned long n = __atomic_add_fetch(&op_count[op], 1, __ATOMIC_RELAXED);

#ifdef IMC_TESTING
	if (fail_at[op] && n == fail_at[op])
		return -fail_errno[op];
#else
	(void)n;
#endif
	return 0;
}

#ifdef IMC_TESTING
static int errno_by_name(const char *s)
{
	static const struct {
		const char *name;
		int value;
	} names[] = {{"EIO", EIO},	 {"ENOSPC", ENOSPC}, {"EBUSY", EBUSY},
		     {"ENOMEM", ENOMEM}, {"EPERM", EPERM},   {"EINVAL", EINVAL},
		     {"ENXIO", ENXIO},	 {"EAGAIN", EAGAIN}, {"EOPNOTSUPP", EOPNOTSUPP},
		     {"ENODEV", ENODEV}};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(names); i++)
		if (strcmp(names[i].name, s) == 0)
			return names[i].value;
	return 0;
}

int imc_priv_inject_from_env(imc_error *err)
{
	const char *env = secure_getenv("IMC_FAULT");
	_cleanup_free_ char *copy = NULL;
	char *save = NULL;

	if (!env || !*env)
		return 0;
	copy = strdup(env);
	if (!copy)
		return imc_err(err, ENOMEM, "out of memory");
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *name = item, *nth = strchr(item, ':'), *errname, *end;
		int op = -1;

		if (!nth || !(errname = strchr(nth + 1, ':')))
			return imc_err(err, EINVAL, "IMC_FAULT \"%s\": want op:nth:ERRNO", item);
		*nth++ = '\0';
		*errname++ = '\0';
		for (int i = 0; i < IMC_PRIV__MAX; i++)
			if (strcmp(op_names[i], name) == 0)
				op = i;
		unsigned long n = strtoul(nth, &end, 10);
		int e = errno_by_name(errname);
		if (op < 0 || *end || n == 0 || n > 1000000 || e == 0)
			return imc_err(err, EINVAL,
				       "IMC_FAULT \"%s:%s:%s\": unknown op, count or errno", name,
				       nth, errname);
		imc_priv_inject((enum imc_priv_op)op, (unsigned)n, e);
	}
	return 0;
}

#endif

int imc_priv_ficlone(int dst_fd, int src_fd, imc_error *err)
{
	int r = priv_enter(IMC_PRIV_FICLONE);

	if (r == 0 && ioctl(dst_fd, FICLONE, src_fd) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, r, "FICLONE") : 0;
}

static int loop_configure(int loop_fd, int backing_fd, const struct imc_loop_opts *o)
{
	struct loop_config cfg = {
	    .fd = (uint32_t)backing_fd,
	    .block_size = o->block_size,
	};

	cfg.info.lo_flags = (o->read_only ? LO_FLAGS_READ_ONLY : 0) |
			    (o->autoclear ? LO_FLAGS_AUTOCLEAR : 0) |
			    (o->direct_io ? LO_FLAGS_DIRECT_IO : 0);
	if (ioctl(loop_fd, LOOP_CONFIGURE, &cfg) == 0)
		return 0;
	if (errno == EINVAL && o->direct_io) {
		/* The backing file refused O_DIRECT (alignment or fs): buffered it is. */
		cfg.info.lo_flags &= ~(uint32_t)LO_FLAGS_DIRECT_IO;
		if (ioctl(loop_fd, LOOP_CONFIGURE, &cfg) == 0)
			return 0;
	}
	return -errno;
}

static uint32_t random_stride(void)
{
	static __thread uint32_t x;

	if (x == 0)
		x = (uint32_t)gettid() * 2654435761U | 1;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return x;
}

int imc_priv_loop_attach(int backing_fd, const struct imc_loop_opts *opts,
			 char ret_path[IMC_LOOP_PATH_MAX], int *ret_fd, imc_error *err)
{
	_cleanup_close_ int ctl = -1;
	int r = priv_enter(IMC_PRIV_LOOP_ATTACH);

	if (r < 0)
		return imc_err_sys(err, r, "loop attach");
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return imc_err_sys(err, errno, "/dev/loop-control");
	/* LOOP_CTL_GET_FREE hands every concurrent caller the same lowest free device; the losers
	 * of the race (EBUSY) walk up from there instead of all asking again, and only ask again
	 * (which makes a new device when none is free) once they run past the existing ones. */
	int nr = -1;
	for (int attempt = 0; attempt < 256; attempt++) {
		char path[IMC_LOOP_PATH_MAX];
		_cleanup_close_ int fd = -1;

		if (nr < 0 && (nr = ioctl(ctl, LOOP_CTL_GET_FREE)) < 0)
			return imc_err_sys(err, errno, "LOOP_CTL_GET_FREE");
		snprintf(path, sizeof(path), "/dev/loop%d", nr);
		fd = open(path, (opts->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (fd < 0 && errno == ENOENT && attempt == 0) {
			/* No devtmpfs node for a device the kernel just handed out (containers). */
			if (mknod(path, S_IFBLK | 0600, makedev(7, (unsigned)nr)) < 0 &&
			    errno != EEXIST)
				return imc_err_sys(err, errno, "mknod %s", path);
			fd = open(path, (opts->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		}
		if (fd < 0 && (errno == ENOENT || errno == ENXIO)) {
			nr = -1; /* past the existing devices */
			continue;
		}
		if (fd < 0)
			return imc_err_sys(err, errno, "open %s", path);
		r = loop_configure(fd, backing_fd, opts);
		if (r == -EBUSY) {
			nr += 1 + (int)(random_stride() % 8); /* racers spread out */
			continue;
		}
		if (r < 0)
			return imc_err_sys(err, r, "LOOP_CONFIGURE %s", path);
		memcpy(ret_path, path, sizeof(path));
		*ret_fd = steal_fd(&fd);
		return 0;
	}
	return imc_err(err, EBUSY, "loop attach: every free loop device was taken by others");
}

int imc_priv_loop_detach(const char *dev, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	int r = priv_enter(IMC_PRIV_LOOP_DETACH);

	if (r < 0)
		return imc_err_sys(err, r, "loop detach %s", dev);
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "open %s", dev);
	if (ioctl(fd, LOOP_CLR_FD, 0) < 0)
		return imc_err_sys(err, errno, "LOOP_CLR_FD %s", dev);
	return 0;
}

int imc_priv_loop_backing(const char *dev, uint64_t *ret_dev, uint64_t *ret_ino, imc_error *err)
{
	_cleanup_close_ int fd = open(dev, O_RDONLY | O_CLOEXEC);
	struct loop_info64 info;

	if (fd < 0)
		return imc_err_sys(err, errno, "open %s", dev);
	if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0)
		return imc_err_sys(err, errno, "LOOP_GET_STATUS64 %s", dev);
	*ret_dev = info.lo_device;
	*ret_ino = info.lo_inode;
	return 0;
}

static int fsconfig_options(int fsfd, const char *options)
{
	_cleanup_free_ char *copy = strdup(options ? options : "");
	char *save = NULL;

	if (!copy)
		return -ENOMEM;
	for (char *o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(o, '=');
		int r;
		if (eq) {
			*eq = '\0';
			r = fsconfig(fsfd, FSCONFIG_SET_STRING, o, eq + 1, 0);
		} else {
			r = fsconfig(fsfd, FSCONFIG_SET_FLAG, o, NULL, 0);
		}
		if (r < 0)
			return -errno;
	}
	return 0;
}

/* fsopen + fsconfig + fsmount; what names the step that failed. */
static int fsmount_detached(const char *fstype, const char *source, const char *options,
			    bool read_only, const char **what)
{
	_cleanup_close_ int fsfd = fsopen(fstype, FSOPEN_CLOEXEC);
	int r, mfd;

	*what = "fsopen";
	if (fsfd < 0)
		return -errno;
	*what = "fsconfig";
	if (fsconfig(fsfd, FSCONFIG_SET_STRING, "source", source, 0) < 0)
		return -errno;
	if ((r = fsconfig_options(fsfd, options)) < 0)
		return r;
	if (read_only && fsconfig(fsfd, FSCONFIG_SET_FLAG, "ro", NULL, 0) < 0)
		return -errno;
	if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		return -errno;
	*what = "fsmount";
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, read_only ? MOUNT_ATTR_RDONLY : 0);
	return mfd < 0 ? -errno : mfd;
}

int imc_priv_fsmount(const char *fstype, const char *source, const char *options, bool read_only,
		     int *ret_mfd, imc_error *err)
{
	const char *what = "mount";
	int r = priv_enter(IMC_PRIV_MOUNT);

	if (r == 0)
		r = fsmount_detached(fstype, source, options, read_only, &what);
	if (r < 0)
		return imc_err_sys(err, r, "mount %s %s (%s)", fstype, source, what);
	*ret_mfd = r;
	return 0;
}

int imc_priv_mount_fs(const char *fstype, const char *source, const char *options, bool read_only,
		      const char *target, imc_error *err)
{
	_cleanup_close_ int mfd = -1;
	const char *what = "mount";
	int r = priv_enter(IMC_PRIV_MOUNT);

	if (r == 0)
		r = mfd = fsmount_detached(fstype, source, options, read_only, &what);
	if (r >= 0) {
		what = "move_mount";
		r = move_mount(mfd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0 ? -errno : 0;
	}
	if (r < 0)
		return imc_err_sys(err, r, "mount %s %s on %s (%s)", fstype, source, target, what);
	return 0;
}

int imc_priv_move_mount(int from_fd, int to_dirfd, const char *to_path, const char *what,
			imc_error *err)
{
	unsigned flags = MOVE_MOUNT_F_EMPTY_PATH | (to_path[0] ? 0 : MOVE_MOUNT_T_EMPTY_PATH);
	int r = priv_enter(IMC_PRIV_MOUNT);

	if (r == 0 && move_mount(from_fd, "", to_dirfd, to_path, flags) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, r, "mount %s", what) : 0;
}

int imc_priv_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
		   const char *data, imc_error *err)
{
	int r = priv_enter(IMC_PRIV_MOUNT);

	if (r == 0 && mount(source, target, fstype, flags, data) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, r, "mount %s on %s", source, target) : 0;
}

int imc_priv_umount(const char *target, int flags, imc_error *err)
{
	int r = priv_enter(IMC_PRIV_UMOUNT);

	if (r == 0 && umount2(target, flags | UMOUNT_NOFOLLOW) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, r, "umount %s", target) : 0;
}

int imc_priv_umount_fd(int fd, const char *what, imc_error *err)
{
	char proc[64];
	int r = priv_enter(IMC_PRIV_UMOUNT);

	/* The descriptor's magic link is followed (on purpose: it names the mount we hold), and the
	 * unmount is lazy since that descriptor itself keeps the mount busy until it is closed. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (r == 0 && umount2(proc, MNT_DETACH) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, r, "umount %s", what) : 0;
}

/* Run argv (argv[0] looked up in PATH) with stdin from /dev/null; its output goes into the error
 * message on failure. */
static int run_tool(const char *const *argv, const char *what, imc_error *err)
{
	char out[512];
	int pipefd[2], status, r;
	posix_spawn_file_actions_t fa;
	pid_t pid;
	ssize_t len = 0, k;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return imc_err_sys(err, errno, "pipe");
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (r != 0) {
		close(pipefd[0]);
		return imc_err_sys(err, r, "run %s", argv[0]);
	}
	while ((k = read(pipefd[0], out + len, sizeof(out) - 1 - (size_t)len)) > 0 ||
	       (k < 0 && errno == EINTR))
		if (k > 0)
			len += k;
	out[len] = '\0';
	close(pipefd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return imc_err_sys(err, errno, "wait %s", argv[0]);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return imc_err(err, EIO, "%s failed (status %d): %s", what, status, out);
	return 0;
}

#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#endif

int imc_priv_resize_ext4(const char *dev, uint64_t size, imc_error *err)
{
	_cleanup_close_ int mfd = -1, root = -1;
	const char *what = "mount";
	char arg[32], desc[96];
	const char *argv[] = {"resize2fs", "-f", dev, arg, NULL};
	struct statfs sf;
	uint64_t blocks;
	int r = priv_enter(IMC_PRIV_RESIZE);

	if (r < 0)
		return imc_err_sys(err, r, "resize %s", dev);
	/* Online: one ioctl on a detached mount that is never visible anywhere.  The fsmount
	 * descriptor is O_PATH: the ioctl needs a real open of the root. */
	r = mfd = fsmount_detached("ext4", dev, IMC_EXT4_RESIZE_MOUNT_OPTIONS, false, &what);
	if (r >= 0) {
		root = openat(mfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		r = root < 0 || fstatfs(root, &sf) < 0 ? -errno : 0;
	}
	if (r < 0)
		return imc_err_sys(err, r, "resize %s (%s)", dev, what);
	blocks = size / (uint64_t)sf.f_bsize;
	if (ioctl(root, EXT4_IOC_RESIZE_FS, &blocks) == 0)
		return 0;
	if (errno != EPERM)
		return imc_err_sys(err, errno, "resize ext4 %s to %llu blocks", dev,
				   (unsigned long long)blocks);
	/* The kernel wants CAP_SYS_RESOURCE for that; resize2fs on the unmounted filesystem. */
	close(steal_fd(&root));
	close(steal_fd(&mfd));
	snprintf(arg, sizeof(arg), "%lluK", (unsigned long long)(size >> 10));
	snprintf(desc, sizeof(desc), "resize2fs %s %s", dev, arg);
	return run_tool(argv, desc, err);
}

int imc_priv_fitrim(int fd, const char *what, uint64_t *ret_trimmed, imc_error *err)
{
	struct fstrim_range range = {.start = 0, .len = UINT64_MAX, .minlen = 0};
	int r = priv_enter(IMC_PRIV_TRIM);

	if (r == 0 && ioctl(fd, FITRIM, &range) < 0)
		r = -errno;
	if (r < 0)
		return imc_err_sys(err, r, "FITRIM %s", what);
	*ret_trimmed = range.len;
	return 0;
}

int imc_priv_mkfs(const char *fstype, const char *const *args, const char *dev, imc_error *err)
{
	char prog[64], desc[128];
	const char *argv[32];
	size_t n = 0;
	int r = priv_enter(IMC_PRIV_MKFS);

	if (r < 0)
		return imc_err_sys(err, r, "mkfs.%s %s", fstype, dev);
	snprintf(prog, sizeof(prog), "mkfs.%s", fstype);
	argv[n++] = prog;
	for (; args && *args && n < IMC_ARRAY_SIZE(argv) - 2; args++)
		argv[n++] = *args;
	argv[n++] = dev;
	argv[n] = NULL;
	snprintf(desc, sizeof(desc), "%s %s", prog, dev);
	return run_tool(argv, desc, err);
}
