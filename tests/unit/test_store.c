/* The store and attach suite, the same for every driver: real loop devices, a real pool (an
 * XFS file for reflink, a device-mapper thin pool for thin), real ext4 clones and mounts.  The
 * driver comes from IMC_STORE_DRIVER (default reflink).  Needs root and loop devices (and
 * device-mapper for thin); without them it says why and exits 77 (skipped). */
#include <check.h>
#include <stdatomic.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#include "../../attach/attach.h"
#include "../../common/priv.h"
#include "../../dist/dist.h"
#include "../../store/store.h"
#include "unit.h"

#define SNAP "imc-0123456789abcdef"
#define NOFS "imc-00000000000000f5"
#define BASE "img-0123456789abcdef0123456789abcdef"

static char state_dir[] = "/tmp/imc-test-store.XXXXXX";
static struct store *st;
static const char *driver = "reflink";
static int base_devs; /* the pool's own devices, counted after setup */

static bool is_reflink(void)
{
	return strcmp(driver, "reflink") == 0;
}

static void must(int r, const imc_error *err)
{
	ck_assert_msg(r == 0, "unexpected failure %d: %s", r, err->msg);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, text, strlen(text)), 0);
	close(fd);
}

static bool file_has(const char *path, const char *text)
{
	char *buf = NULL;
	bool same = imc_read_file(path, 1 << 20, &buf, NULL, NULL) == 0 && strcmp(buf, text) == 0;
	free(buf);
	return same;
}

/* How many /sys/block/<prefix>* devices have an ATTR file whose text MATCH accepts. */
static int sys_block_count(const char *prefix, const char *attr, bool (*match)(const char *text))
{
	DIR *d = opendir("/sys/block");
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		char path[300], *buf = NULL;
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/%s", de->d_name, attr);
		if (imc_read_file(path, 4096, &buf, NULL, NULL) == 0 && match(buf))
			n++;
		free(buf);
	}
	closedir(d);
	return n;
}

/* A loop device's backing file under the test's state dir (the pool's files included). */
static bool under_state_dir(const char *backing_file)
{
	return strstr(backing_file, state_dir) != NULL;
}

/* A device-mapper device of imcache (thin volumes and clones, the pool not counted). */
static bool imc_volume(const char *dm_name)
{
	return strncmp(dm_name, "imc-", 4) == 0 && strncmp(dm_name, "imc-pool-", 9) != 0;
}

/* Block devices the store holds: loop devices of files under the state dir and dm devices. */
static int devices_in_use(void)
{
	return sys_block_count("loop", "loop/backing_file", under_state_dir) +
	       sys_block_count("dm-", "dm/name", imc_volume);
}

static size_t count(enum store_kind kind)
{
	char **ids;
	size_t n;
	imc_error err;

	must(store_list(st, kind, &ids, &n, &err), &err);
	store_list_free(ids, n);
	return n;
}

/* A snapshot built the way the builder builds one: ext4 with /images/0/rootfs/hello. */
static void make_snapshot(const char *id)
{
	static const char *const mkfs_args[] = {"-q", "-F", "-b", "4096", NULL};
	char mnt[PATH_MAX], path[PATH_MAX + 64];
	struct store_dev dev = {.fd = -1};
	imc_error err;

	must(store_volume_create(st, id, 256ULL << 20, &err), &err);
	must(store_activate(st, STORE_VOLUME, id, 0, &dev, &err), &err);
	must(imc_priv_mkfs("ext4", mkfs_args, dev.path, &err), &err);
	snprintf(mnt, sizeof(mnt), "%s/mnt-build", state_dir);
	ck_assert_int_eq(mkdir(mnt, 0700), 0);
	must(imc_priv_mount_fs("ext4", dev.path, STORE_EXT4_MOUNT_OPTIONS, false, mnt, &err), &err);
	snprintf(path, sizeof(path), "%s/images/0/rootfs", mnt);
	must(imc_mkdir_p(path, 0755, &err), &err);
	snprintf(path, sizeof(path), "%s/images/0/rootfs/hello", mnt);
	write_file(path, "from the snapshot\n");
	must(imc_priv_umount(mnt, 0, &err), &err);
	rmdir(mnt);
	must(store_deactivate(st, STORE_VOLUME, id, &dev, &err), &err);
	must(store_seal(st, id, id, &err), &err);
}

static void setup(void)
{
	struct store_config cfg = {
	    .state_dir = state_dir, .driver = driver, .pool_size = 4ULL << 30};
	imc_error err;

	ck_assert_ptr_nonnull(mkdtemp(state_dir));
	must(store_open(&cfg, &st, &err), &err);
	base_devs = devices_in_use();
	ck_assert_int_eq(base_devs, is_reflink() ? 1 : 2); /* the pool file; data and metadata */
	make_snapshot(SNAP);
	ck_assert_int_eq(devices_in_use(), base_devs);
}

static void teardown(void)
{
	imc_error err;
	char pool[PATH_MAX];

	store_remove(st, STORE_SNAPSHOT, SNAP, &err);
	must(store_teardown(st, &err), &err);
	store_close(st);
	snprintf(pool, sizeof(pool), "%s/pool", state_dir);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, state_dir, &err), 0);
	ck_assert_int_eq(devices_in_use(), 0);
	memcpy(state_dir + strlen(state_dir) - 6, "XXXXXX", 6);
}

static void mkdirs(char *a, char *b, size_t n)
{
	snprintf(a, n, "%s/a", state_dir);
	snprintf(b, n, "%s/b", state_dir);
	ck_assert_int_eq(mkdir(a, 0755), 0);
	ck_assert_int_eq(mkdir(b, 0755), 0);
}

START_TEST(snapshot_is_in_the_pool)
{
	char pool[PATH_MAX];
	struct statfs fs;
	struct store_object_info info;
	struct store_usage use;
	imc_error err;

	must(store_stat(st, STORE_SNAPSHOT, SNAP, &info, &err), &err);
	ck_assert_uint_eq(info.size, 256ULL << 20);
	ck_assert_uint_gt(info.allocated, 0);
	ck_assert_uint_lt(info.allocated, 64ULL << 20); /* sparse: ext4's metadata and a file */
	ck_assert_uint_eq(count(STORE_SNAPSHOT), 1);
	ck_assert_uint_eq(count(STORE_VOLUME), 0);
	ck_assert_int_eq(store_stat(st, STORE_VOLUME, SNAP, &info, &err), -ENOENT);
	must(store_usage(st, &use, &err), &err);
	ck_assert_uint_gt(use.total, 3ULL << 30);
	ck_assert_uint_gt(use.used, 0);
	ck_assert_uint_eq(use.used + use.free <= use.total, 1);
	if (is_reflink()) {
		snprintf(pool, sizeof(pool), "%s/pool", state_dir);
		ck_assert_int_eq(statfs(pool, &fs), 0);
		ck_assert_uint_eq((unsigned long)fs.f_type, 0x58465342UL);
		ck_assert_uint_gt(info.extents, 0);
	} else {
		ck_assert_uint_gt(use.meta_total, 0);
		ck_assert_uint_gt(use.meta_used, 0);
	}
}
END_TEST

static int note_clone_device(const char *dev, const char *clone_id, void *ctx, imc_error *err)
{
	char *seen = ctx;

	if (strcmp(clone_id, "att-00000000000000c1") == 0)
		snprintf(seen, 64, "%s", dev);
	return 0;
}

/* What callers ask of the driver instead of reading its table or its layout. */
START_TEST(driver_answers_capabilities_hints_and_clone_devices)
{
	const char *cid = "att-00000000000000c1";
	struct store_fill_hints h;
	struct store_dev dev;
	char id[STORE_CLONE_ID_MAX + 1], seen[64] = "";
	imc_error err;

	ck_assert(store_can(st, STORE_CAP_VOLUME_FROM_SNAPSHOT));
	store_fill_hints(st, &h);
	ck_assert_int_eq(h.fill_gaps, is_reflink());
	ck_assert_uint_eq(h.keep_holes, is_reflink() ? 15 : 0);
	ck_assert_str_eq(store_state_dir(st), state_dir);
	must(store_clone(st, SNAP, cid, &err), &err);
	must(store_activate(st, STORE_CLONE, cid, 0, &dev, &err), &err);
	must(store_for_each_clone_device(st, note_clone_device, seen, &err), &err);
	if (is_reflink()) {
		ck_assert_int_eq(strncmp(dev.path, "/dev/loop", 9), 0);
		must(store_clone_of_device(st, dev.path + 5, id, &err), &err);
		ck_assert_str_eq(id, cid);
		ck_assert_str_eq(seen, dev.path + 5);
	} else {
		ck_assert_str_eq(seen, ""); /* thin clones are dm devices of its own */
	}
	must(store_clone_of_device(st, "loop999999", id, &err), &err);
	ck_assert_str_eq(id, "");
	must(store_deactivate(st, STORE_CLONE, cid, &dev, &err), &err);
	must(store_remove(st, STORE_CLONE, cid, &err), &err);
}
END_TEST

/* A directory of the caller's own on the store's filesystem: the reflink pool's XFS; thin: none. */
START_TEST(scratch_dir_is_on_the_pool)
{
	char path[PATH_MAX], want[PATH_MAX];
	struct statfs fs;
	struct stat st_;
	imc_error err;

	if (!is_reflink()) {
		ck_assert_int_eq(store_scratch_dir(st, "overlays", path, &err), -EOPNOTSUPP);
		return;
	}
	must(store_scratch_dir(st, "overlays", path, &err), &err);
	snprintf(want, sizeof(want), "%s/pool/" STORE_SCRATCH_DIR "/overlays", state_dir);
	ck_assert_str_eq(path, want);
	ck_assert_int_eq(stat(path, &st_), 0);
	ck_assert(S_ISDIR(st_.st_mode));
	ck_assert_int_eq(st_.st_mode & 07777, 0700);
	ck_assert_int_eq(statfs(path, &fs), 0);
	ck_assert_uint_eq((unsigned long)fs.f_type, 0x58465342UL); /* XFS */
	must(store_scratch_dir(st, "overlays", path, &err), &err); /* there already */
	ck_assert_int_eq(store_scratch_dir(st, "../x", path, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "malformed"));
	ck_assert_int_eq(store_scratch_dir(st, "", path, &err), -EINVAL);
	ck_assert_int_eq(rmdir(want), 0);
}
END_TEST

START_TEST(unknown_driver_options_are_refused)
{
	const char *const opts[] = {"no_such_key=1", NULL};
	struct store_config cfg = {.state_dir = state_dir, .driver = driver, .driver_opts = opts};
	struct store *other = NULL;
	imc_error err;

	ck_assert_int_eq(store_open(&cfg, &other, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "no_such_key"));
	ck_assert_ptr_null(other);
	cfg.driver = "zfs";
	cfg.driver_opts = NULL;
	ck_assert_int_eq(store_open(&cfg, &other, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "zfs"));
}
END_TEST

START_TEST(a_second_open_sees_the_same_store)
{
	struct store_config cfg = {.state_dir = state_dir, .driver = driver};
	struct store *other;
	char **ids;
	size_t n;
	imc_error err;

	must(store_open(&cfg, &other, &err), &err);
	ck_assert_uint_eq(json_array_size(store_repairs(other)), 0);
	must(store_list(other, STORE_SNAPSHOT, &ids, &n, &err), &err);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ids[0], SNAP);
	store_list_free(ids, n);
	must(store_clone(other, SNAP, "c1", &err), &err);
	store_close(other);
	ck_assert_uint_eq(count(STORE_CLONE), 1);
	ck_assert_int_eq(store_clone(st, SNAP, "c1", &err), -EEXIST);
	ck_assert_int_eq(store_clone(st, "imc-ffffffffffffffff", "c2", &err), -ENOENT);
	must(store_remove(st, STORE_CLONE, "c1", &err), &err);
	ck_assert_int_eq(store_remove(st, STORE_CLONE, "c1", &err), -ENOENT);
	ck_assert_int_eq(devices_in_use(), base_devs);
}
END_TEST

static void sha256_of(const char *path, char out[IMC_SHA256_HEX_LEN + 1])
{
	char *buf = NULL;
	size_t len = 0;
	imc_error err;

	must(imc_read_file(path, 64 << 20, &buf, &len, &err), &err);
	must(imc_sha256_hex(buf, len, out, &err), &err);
	free(buf);
}

/* Volume "frag": 500 scattered blocks, written backwards and synced one by one: hundreds of
 * extents, and 499 holes, so its seal compacts it. */
static void make_fragmented_volume(char path[PATH_MAX])
{
	char block[4096];
	imc_error err;
	int fd;

	must(store_volume_create(st, "frag", 32ULL << 20, &err), &err);
	snprintf(path, PATH_MAX, "%s/pool/volumes/frag.img", state_dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	for (int i = 499; i >= 0; i--) {
		memset(block, 'a' + i % 26, sizeof(block));
		ck_assert_int_eq(pwrite(fd, block, sizeof(block), (off_t)i * 65536), 4096);
		fdatasync(fd);
	}
	close(fd);
}

START_TEST(fragmented_volume_is_sealed_with_few_extents)
{
	char path[PATH_MAX], before[IMC_SHA256_HEX_LEN + 1], after[IMC_SHA256_HEX_LEN + 1];
	struct store_object_info info;
	imc_error err;

	make_fragmented_volume(path);
	must(store_stat(st, STORE_VOLUME, "frag", &info, &err), &err);
	ck_assert_uint_gt(info.extents, 256);
	sha256_of(path, before);
	must(store_seal(st, "frag", "frag", &err), &err);
	must(store_stat(st, STORE_SNAPSHOT, "frag", &info, &err), &err);
	/* 499 holes of 60 KiB: within the fill budget, so 16 data runs remain */
	ck_assert_msg(info.extents <= 16, "%llu extents", (unsigned long long)info.extents);
	ck_assert_uint_eq(info.size, 32ULL << 20);
	snprintf(path, sizeof(path), "%s/pool/snapshots/frag.img", state_dir);
	sha256_of(path, after);
	ck_assert_str_eq(before, after);
	must(store_remove(st, STORE_SNAPSHOT, "frag", &err), &err);
}
END_TEST

/* A seal SIGKILLed in the middle of its compaction (stopped there by the test-only stop point
 * seal-compact, then killed for real) leaves .frag.img.compact beside the volume: the next
 * store_open removes it and says so, but not while a live compaction holds it. */
START_TEST(a_seal_killed_while_compacting_leaves_no_compact_file)
{
	struct store_config cfg = {.state_dir = state_dir, .driver = driver};
	char path[PATH_MAX], compact[PATH_MAX + 32];
	struct store *other;
	struct stat sb;
	imc_error err;
	int status;
	pid_t pid;

	make_fragmented_volume(path);
	snprintf(compact, sizeof(compact), "%s/pool/volumes/.frag.img.compact", state_dir);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		setenv("IMC_STOP_AT", "seal-compact", 1);
		_exit(store_seal(st, "frag", "frag", &err) == 0 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
	ck_assert_msg(WIFSTOPPED(status), "the seal stopped at its compaction");
	ck_assert_int_eq(stat(compact, &sb), 0);
	ck_assert_int_gt(sb.st_blocks, 0);
	/* Still held by the (stopped, live) seal: left alone. */
	must(store_open(&cfg, &other, &err), &err);
	ck_assert_uint_eq(json_array_size(store_repairs(other)), 0);
	store_close(other);
	ck_assert_int_eq(stat(compact, &sb), 0);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	must(store_open(&cfg, &other, &err), &err);
	ck_assert_uint_eq(json_array_size(store_repairs(other)), 1);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(store_repairs(other), 0)),
				     ".frag.img.compact: removed a seal that a crash cut short"));
	store_close(other);
	ck_assert_int_eq(stat(compact, &sb), -1);
	ck_assert_int_eq(errno, ENOENT);
	must(store_remove(st, STORE_VOLUME, "frag", &err), &err);
}
END_TEST

static uint64_t pool_file_allocated(void)
{
	char path[PATH_MAX];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/pool.img", state_dir);
	ck_assert_int_eq(stat(path, &sb), 0);
	return (uint64_t)sb.st_blocks * 512;
}

/* 64 MiB written into the embedded pool and removed: the pool file keeps those blocks until
 * store_trim gives them back (holes punched through the loop device's discard). */
START_TEST(trim_gives_the_pool_file_space_back)
{
	static char block[1 << 20];
	char path[PATH_MAX];
	uint64_t before, after, trimmed = 0;
	imc_error err;
	int fd;

	must(store_volume_create(st, "big", 128ULL << 20, &err), &err);
	snprintf(path, sizeof(path), "%s/pool/volumes/big.img", state_dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	for (int i = 0; i < 64; i++) {
		memset(block, 'a' + i % 26, sizeof(block));
		ck_assert_int_eq(pwrite(fd, block, sizeof(block), (off_t)i << 20), sizeof(block));
	}
	ck_assert_int_eq(fsync(fd), 0);
	close(fd);
	before = pool_file_allocated();
	must(store_remove(st, STORE_VOLUME, "big", &err), &err);
	ck_assert_uint_ge(pool_file_allocated() + (8 << 20), before); /* not given back yet */
	/* At once: store_trim has XFS free the blocks first (it does that in the background). */
	must(store_trim(st, &trimmed, &err), &err);
	ck_assert_uint_ge(trimmed, 64ULL << 20);
	after = pool_file_allocated();
	ck_assert_msg(after + (48ULL << 20) <= before, "pool.img: %llu bytes before, %llu after",
		      (unsigned long long)before, (unsigned long long)after);
}
END_TEST

/* XFS_IOC_GOINGDOWN (xfs_fs.h), as xfs_io -x -c shutdown does: a real shutdown of the pool's
 * XFS, the state it is left in after a metadata I/O error. */
#define XFS_IOC_GOINGDOWN_		 _IOR('X', 125, uint32_t)
#define XFS_FSOP_GOING_FLAGS_NOLOGFLUSH_ 0x2

START_TEST(teardown_reports_a_shut_down_pool)
{
	char pool[PATH_MAX];
	uint32_t flags = XFS_FSOP_GOING_FLAGS_NOLOGFLUSH_;
	struct stat sb, sp;
	imc_error err;
	int fd;

	snprintf(pool, sizeof(pool), "%s/pool", state_dir);
	fd = open(pool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ioctl(fd, XFS_IOC_GOINGDOWN_, &flags), 0);
	close(fd);
	ck_assert_int_eq(store_teardown(st, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "shut its XFS filesystem down") &&
			  strstr(err.msg, "xfs_repair"),
		      "%s", err.msg);
	/* ... and it is released all the same. */
	ck_assert_int_eq(stat(state_dir, &sb), 0);
	ck_assert_int_eq(stat(pool, &sp), 0);
	ck_assert_uint_eq(sb.st_dev, sp.st_dev);
}
END_TEST

/* A loop-mounted ext4 of size bytes at dir (image file img); the loop device goes with the
 * unmount. */
static void mount_small_ext4(const char *img, const char *dir, uint64_t size)
{
	static const char *const args[] = {"-q", "-F", NULL};
	static const struct imc_loop_opts lo = {.autoclear = true};
	char dev[IMC_LOOP_PATH_MAX];
	imc_error err;
	int fd = open(img, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600), loop_fd = -1;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	must(imc_priv_mkfs("ext4", args, img, &err), &err);
	must(imc_priv_loop_attach(fd, &lo, dev, &loop_fd, &err), &err);
	close(fd);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	must(imc_priv_mount(dev, dir, "ext4", 0, "", &err), &err);
	close(loop_fd);
}

static uint64_t fs_free(const char *path)
{
	struct statvfs sv;

	ck_assert_int_eq(statvfs(path, &sv), 0);
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* The embedded pool on a 1 GiB filesystem: the default size is clamped to what it has free and
 * 256 GiB asked for is refused (a 320 MiB filesystem takes no pool at all); once the filesystem
 * fills beside the pool, the pool answers ENOSPC to a write while the filesystem under it still
 * has its margin, and its XFS stays up. */
START_TEST(a_pool_is_sized_against_its_filesystem_and_says_enospc_first)
{
	char img[PATH_MAX], host[PATH_MAX], dir[PATH_MAX + 16], path[PATH_MAX + 64];
	static char block[1 << 20];
	struct store_config cfg = {.driver = "reflink"};
	struct store *small = NULL, *s2 = NULL;
	struct store_usage u;
	struct stat sb;
	imc_error err;
	int fd, r = 0;

	snprintf(img, sizeof(img), "%s/tiny.img", state_dir);
	snprintf(host, sizeof(host), "%s/tiny", state_dir);
	mount_small_ext4(img, host, 320ULL << 20);
	snprintf(dir, sizeof(dir), "%s/state", host);
	cfg.state_dir = dir;
	ck_assert_int_eq(store_open(&cfg, &small, &err), -ENOSPC);
	ck_assert_msg(strstr(err.msg, "an embedded pool needs 300 MiB"), "%s", err.msg);
	snprintf(path, sizeof(path), "%s/pool.img", dir);
	ck_assert_int_ne(access(path, F_OK), 0);
	must(imc_priv_umount(host, 0, &err), &err);
	rmdir(host);

	snprintf(img, sizeof(img), "%s/host.img", state_dir);
	snprintf(host, sizeof(host), "%s/host", state_dir);
	mount_small_ext4(img, host, 1ULL << 30);
	snprintf(dir, sizeof(dir), "%s/big", host);
	cfg.state_dir = dir;
	cfg.pool_size = 256ULL << 30;
	ck_assert_int_eq(store_open(&cfg, &s2, &err), -ENOSPC);
	ck_assert_msg(strstr(err.msg, "give a smaller --pool-size"), "%s", err.msg);
	snprintf(dir, sizeof(dir), "%s/state", host);
	cfg.state_dir = dir;
	cfg.pool_size = 0;
	must(store_open(&cfg, &small, &err), &err);
	ck_assert_ptr_nonnull(
	    strstr(json_string_value(json_array_get(store_repairs(small), 0)), "not the default"));
	snprintf(path, sizeof(path), "%s/pool.img", dir);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_le(sb.st_size, 1LL << 30);

	/* Something else fills the filesystem: 200 MiB are left. */
	snprintf(path, sizeof(path), "%s/filler", host);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_eq(fallocate(fd, 0, 0, (off_t)(fs_free(host) - (200ULL << 20))), 0);
	close(fd);
	must(store_fit(small, &err), &err);
	must(store_usage(small, &u, &err), &err);
	ck_assert_msg(u.free + (64ULL << 20) <= fs_free(host), "pool %llu free, host %llu",
		      (unsigned long long)u.free, (unsigned long long)fs_free(host));
	must(store_volume_create(small, "v", 1ULL << 30, &err), &err);
	snprintf(path, sizeof(path), "%s/pool/volumes/v.img", dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	memset(block, 'x', sizeof(block));
	for (int i = 0; i < 400 && r == 0; i++)
		if (pwrite(fd, block, sizeof(block), (off_t)i << 20) != (ssize_t)sizeof(block))
			r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	ck_assert_int_eq(r, -ENOSPC);
	ck_assert_uint_ge(fs_free(host), 32ULL << 20); /* the filesystem under it never filled */
	must(store_usage(small, &u, &err), &err);      /* the pool's XFS is up (EIO when shut) */
	must(store_remove(small, STORE_VOLUME, "v", &err), &err);
	must(store_teardown(small, &err), &err);
	store_close(small);
	must(imc_priv_umount(host, 0, &err), &err);
}
END_TEST

struct range {
	off_t start, end;
};
size_t compact_plan(struct range *holes, size_t n, off_t data_bytes);

START_TEST(compaction_keeps_the_largest_holes_within_the_fill_budget)
{
	struct range h[40];
	off_t MiB = 1 << 20;

	/* 40 holes of 1..40 MiB (hole i is i+1 MiB) in 1 GiB of data: the budget is 128 MiB */
	for (int i = 0; i < 40; i++)
		h[i] = (struct range){(off_t)i * 100 * MiB, (off_t)i * 100 * MiB + (i + 1) * MiB};
	size_t keep = compact_plan(h, 40, 1024 * MiB);
	/* the 15 largest (26..40 MiB) leave 1+..+25 = 325 MiB of zeros, over budget; keeping the
	 * 25 largest leaves 1+..+15 = 120 MiB */
	ck_assert_uint_eq(keep, 25);
	for (size_t i = 0; i < keep; i++) {
		ck_assert_int_ge(h[i].end - h[i].start, 16 * MiB); /* the largest ones */
		if (i > 0)
			ck_assert_int_gt(h[i].start, h[i - 1].start); /* in file order */
	}
	/* small holes: within the 64 MiB floor, only the target's 15 are kept */
	for (int i = 0; i < 40; i++)
		h[i] = (struct range){(off_t)i * MiB, (off_t)i * MiB + 4096 * (i + 1)};
	ck_assert_uint_eq(compact_plan(h, 40, 10 * MiB), 15);
	ck_assert_uint_eq(compact_plan(h, 7, 10 * MiB), 7);
}
END_TEST

START_TEST(two_attaches_are_isolated)
{
	char a[PATH_MAX], b[PATH_MAX], f[PATH_MAX + 16];
	unsigned long clones = imc_priv_count(IMC_PRIV_FICLONE);
	struct store_object_info info;
	struct attach_request req = {.cache_id = SNAP, .mode = ATTACH_MODE_CLONE};
	imc_error err;

	mkdirs(a, b, sizeof(a));
	req.dir = a;
	must(attach_cache(st, &req, NULL, &err), &err);
	req.dir = b;
	must(attach_cache(st, &req, NULL, &err), &err);
	ck_assert_uint_eq(imc_priv_count(IMC_PRIV_FICLONE) - clones, is_reflink() ? 2 : 0);
	ck_assert_uint_eq(count(STORE_CLONE), 2);
	ck_assert_int_eq(devices_in_use(), base_devs + 2);

	snprintf(f, sizeof(f), "%s/hello", a);
	ck_assert(file_has(f, "from the snapshot\n"));
	write_file(f, "changed in a\n");
	snprintf(f, sizeof(f), "%s/new", a);
	write_file(f, "only in a\n");
	snprintf(f, sizeof(f), "%s/hello", b);
	ck_assert(file_has(f, "from the snapshot\n"));
	snprintf(f, sizeof(f), "%s/new", b);
	ck_assert_int_ne(access(f, F_OK), 0);
	/* writes to a clone stay out of the snapshot */
	must(store_stat(st, STORE_SNAPSHOT, SNAP, &info, &err), &err);
	ck_assert_uint_eq(info.size, 256ULL << 20);

	must(attach_detach(st, a, &err), &err);
	must(attach_detach(st, b, &err), &err);
	/* A fresh attach still sees the snapshot as built. */
	must(attach_cache(st, &req, NULL, &err), &err);
	snprintf(f, sizeof(f), "%s/hello", b);
	ck_assert(file_has(f, "from the snapshot\n"));
	must(attach_detach(st, b, &err), &err);
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert_int_eq(devices_in_use(), base_devs); /* the pool's own */
}
END_TEST

START_TEST(attach_with_size_grows_the_clone_and_its_filesystem)
{
	char a[PATH_MAX], b[PATH_MAX], f[PATH_MAX + 16];
	struct attach_request req = {
	    .cache_id = SNAP, .size = 512ULL << 20, .mode = ATTACH_MODE_CLONE};
	struct store_object_info info;
	struct statvfs vfs;
	imc_error err;

	mkdirs(a, b, sizeof(a));
	req.dir = a;
	must(attach_cache(st, &req, NULL, &err), &err);
	ck_assert_int_eq(statvfs(a, &vfs), 0);
	/* The snapshot's ext4 is 256 MiB; grown, it holds more than 400 MiB of blocks. */
	ck_assert_uint_gt((uint64_t)vfs.f_blocks * vfs.f_frsize, 400ULL << 20);
	snprintf(f, sizeof(f), "%s/hello", a);
	ck_assert(file_has(f, "from the snapshot\n"));
	must(store_stat(st, STORE_SNAPSHOT, SNAP, &info, &err), &err);
	ck_assert_uint_eq(info.size, 256ULL << 20); /* the snapshot did not grow */
	must(attach_detach(st, a, &err), &err);

	/* Smaller than the snapshot: refused, nothing left. */
	req.size = 128ULL << 20;
	ck_assert_int_lt(attach_cache(st, &req, NULL, &err), 0);
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert_int_eq(devices_in_use(), base_devs);
	/* The store refuses to grow a snapshot. */
	ck_assert_int_eq(store_resize(st, STORE_SNAPSHOT, SNAP, 1ULL << 30, &err), -EINVAL);
}
END_TEST

START_TEST(bad_attaches_leave_nothing)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct attach_request req = {.cache_id = "imc-ffffffffffffffff", .mode = ATTACH_MODE_CLONE};
	json_t *list;
	imc_error err;
	int r;

	mkdirs(a, b, sizeof(a));
	req.dir = a;
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "not in the local store"));
	req.cache_id = "../etc";
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -EINVAL);
	req.cache_id = SNAP;
	req.image = 3;
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "no image 3"));
	req.image = 0;
	/* A snapshot with no filesystem in it: the clone's mount fails for real. */
	must(store_volume_create(st, NOFS, 32ULL << 20, &err), &err);
	must(store_seal(st, NOFS, NOFS, &err), &err);
	req.cache_id = NOFS;
	r = attach_cache(st, &req, NULL, &err);
	ck_assert_msg(r == -EINVAL || r == -EIO, "attach of a snapshot without ext4: %d %s", r,
		      err.msg);
	must(store_remove(st, STORE_SNAPSHOT, NOFS, &err), &err);
	/* A base snapshot (what caches of one image stand on) is in the store, and no cache. */
	must(store_volume_create(st, BASE, 32ULL << 20, &err), &err);
	must(store_seal(st, BASE, BASE, &err), &err);
	req.cache_id = BASE;
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "no such cache"));
	req.block = true;
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -ENOENT);
	req.block = false;
	must(store_remove(st, STORE_SNAPSHOT, BASE, &err), &err);
	req.cache_id = SNAP;
	req.dir = "/nonexistent/imc-test";
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -ENOENT);

	ck_assert_uint_eq(count(STORE_CLONE), 0);
	must(attach_list(st, &list, &err), &err);
	ck_assert_uint_eq(json_array_size(list), 0);
	json_decref(list);
	ck_assert_int_eq(devices_in_use(), base_devs);

	/* The same dir twice: the second is refused and the first still works. */
	req.dir = a;
	must(attach_cache(st, &req, NULL, &err), &err);
	ck_assert_int_eq(attach_cache(st, &req, NULL, &err), -EEXIST);
	must(attach_detach(st, a, &err), &err);
	ck_assert_int_eq(attach_detach(st, a, &err), -ENOENT);
}
END_TEST

START_TEST(detach_after_agent_crash)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct attach_request req = {.cache_id = SNAP, .mode = ATTACH_MODE_CLONE};
	imc_error err;
	int status;
	pid_t pid;

	mkdirs(a, b, sizeof(a));
	req.dir = a;
	pid = fork();
	if (pid == 0) {
		/* The agent attaches and dies before anyone detaches. */
		_exit(attach_cache(st, &req, NULL, &err) == 0 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	ck_assert_uint_eq(count(STORE_CLONE), 1);
	ck_assert_int_eq(devices_in_use(), base_devs + 1);
	must(attach_detach(st, a, &err), &err);
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert_int_eq(devices_in_use(), base_devs);
}
END_TEST

START_TEST(teardown_refused_while_attached)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct attach_request req = {.cache_id = SNAP, .mode = ATTACH_MODE_CLONE};
	imc_error err;

	mkdirs(a, b, sizeof(a));
	req.dir = a;
	must(attach_cache(st, &req, NULL, &err), &err);
	ck_assert_int_eq(store_teardown(st, &err), -EBUSY);
	/* The store stays usable after a refused teardown. */
	must(attach_detach(st, a, &err), &err);
	must(attach_cache(st, &req, NULL, &err), &err);
	must(attach_detach(st, a, &err), &err);
}
END_TEST

/* The chunk size of an export: the index carries the size asked for (imcd --chunk-size) and cuts
 * at its multiples; an index already stored is kept with its own size when the default changes
 * (old indexes stay readable); a size that is not a power of two in range is refused. */
START_TEST(export_chunk_size)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	struct dist_chunks *cs = NULL;
	char *buf = NULL, *again = NULL;
	size_t len = 0, len2 = 0;
	uint64_t freed = 0;
	imc_error err;

	must(dist_chunks_open(state_dir, st, &cs, &err), &err);
	ck_assert_int_eq(dist_export(cs, SNAP, 3U << 20, NULL, &buf, &len, &err), -EINVAL);
	ck_assert_int_eq(dist_export(cs, SNAP, 32U << 10, NULL, &buf, &len, &err), -EINVAL);
	must(dist_export(cs, SNAP, 256U << 10, NULL, &buf, &len, &err), &err);
	must(oci_chunk_index_parse(buf, len, &ix, &err), &err);
	ck_assert_uint_eq(ix.chunk_size, 256U << 10);
	ck_assert_uint_gt(ix.n_chunks, 0);
	ck_assert_uint_le(ix.n_chunks, (ix.size + ix.chunk_size - 1) / ix.chunk_size);
	for (size_t i = 0; i < ix.n_chunks; i++)
		ck_assert_uint_eq(ix.chunks[i].offset % (256U << 10), 0);
	/* Exported again with the default (not 256 KiB): the stored 256 KiB index is served. */
	must(dist_export(cs, SNAP, 0, NULL, &again, &len2, &err), &err);
	ck_assert_uint_eq(len2, len);
	ck_assert_int_eq(memcmp(again, buf, len), 0);
	must(dist_forget(cs, SNAP, &freed, &err), &err);
	ck_assert_uint_gt(freed, 0);
	free(again);
	again = NULL;
	/* Gone, then exported with the default: the new index has the default size. */
	must(dist_export(cs, SNAP, 0, NULL, &again, &len2, &err), &err);
	oci_chunk_index_free(&ix);
	must(oci_chunk_index_parse(again, len2, &ix, &err), &err);
	ck_assert_uint_eq(ix.chunk_size, DIST_CHUNK_SIZE_DEFAULT);
	must(dist_forget(cs, SNAP, &freed, &err), &err);
	dist_chunks_close(cs);
	free(buf);
	free(again);
}
END_TEST

/* A cancelled export (a delete of the cache, imcd stopping: dist/exporter.c) ends -ECANCELED at
 * its next chunk and writes no index; the same export uncancelled then writes it. */
START_TEST(export_cancelled)
{
	struct dist_chunks *cs = NULL;
	atomic_bool cancel = true;
	char *buf = NULL;
	size_t len = 0;
	uint64_t freed = 0;
	imc_error err;

	must(dist_chunks_open(state_dir, st, &cs, &err), &err);
	ck_assert_int_eq(dist_export(cs, SNAP, 0, &cancel, &buf, &len, &err), -ECANCELED);
	ck_assert_ptr_null(buf);
	ck_assert_msg(strstr(err.msg, "cancelled at 0 of"), "%s", err.msg);
	ck_assert_int_eq(dist_read_index(cs, SNAP, &buf, &len, &err), -ENOENT);
	atomic_store(&cancel, false);
	must(dist_export(cs, SNAP, 0, &cancel, &buf, &len, &err), &err);
	ck_assert_uint_gt(len, 0);
	must(dist_forget(cs, SNAP, &freed, &err), &err);
	dist_chunks_close(cs);
	free(buf);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	driver = getenv("IMC_STORE_DRIVER") && *getenv("IMC_STORE_DRIVER")
		     ? getenv("IMC_STORE_DRIVER")
		     : "reflink";
	if (geteuid() != 0 || access("/dev/loop-control", R_OK | W_OK) != 0) {
		printf("test_store: SKIP: needs root and /dev/loop-control\n");
		return 77;
	}
	if (!is_reflink() && access("/sys/class/misc/device-mapper", F_OK) != 0) {
		printf("test_store: SKIP: driver %s needs device-mapper (/dev/mapper/control); "
		       "tests/vm/imc-vm runs it in a VM\n",
		       driver);
		return 77;
	}
	printf("test_store: driver %s\n", driver);
	s = suite_create("store");
	tc = tcase_create(driver);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, snapshot_is_in_the_pool);
	tcase_add_test(tc, driver_answers_capabilities_hints_and_clone_devices);
	tcase_add_test(tc, scratch_dir_is_on_the_pool);
	tcase_add_test(tc, unknown_driver_options_are_refused);
	tcase_add_test(tc, a_second_open_sees_the_same_store);
	if (is_reflink()) {
		tcase_add_test(tc, fragmented_volume_is_sealed_with_few_extents);
		tcase_add_test(tc, compaction_keeps_the_largest_holes_within_the_fill_budget);
		tcase_add_test(tc, a_seal_killed_while_compacting_leaves_no_compact_file);
		tcase_add_test(tc, trim_gives_the_pool_file_space_back);
		tcase_add_test(tc, a_pool_is_sized_against_its_filesystem_and_says_enospc_first);
		tcase_add_test(tc, teardown_reports_a_shut_down_pool);
	}
	tcase_add_test(tc, two_attaches_are_isolated);
	tcase_add_test(tc, attach_with_size_grows_the_clone_and_its_filesystem);
	tcase_add_test(tc, bad_attaches_leave_nothing);
	tcase_add_test(tc, detach_after_agent_crash);
	tcase_add_test(tc, teardown_refused_while_attached);
	tcase_add_test(tc, export_chunk_size);
	tcase_add_test(tc, export_cancelled);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
