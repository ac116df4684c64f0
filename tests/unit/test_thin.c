/* The thin driver's own tests, in a real kernel with device-mapper (tests/vm/imc-vm runs them
 * in a VM where the host has none): reconciliation after crashes at each step of an operation,
 * devices and records that lost their other half, EBUSY on remove, a full pool, discard on
 * delete, configured data and metadata devices.  Without device-mapper it runs the option
 * parsing tests only, says why and exits 77 (skipped). */
#include <check.h>
#include <fcntl.h>
#include <libdevmapper.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>

#include "../../common/priv.h"
#include "../../store/store.h"
#include "unit.h"

struct thin_opts {
	const char *data_dev, *metadata_dev;
	uint64_t block_size, low_water, data_size, metadata_size;
	bool discard, zero;
};
int thin_parse_opts(const char *const *kvs, struct thin_opts *o, imc_error *err);
int thin_parse_size(const char *s, uint64_t *ret);
extern void (*thin_crash_hook)(const char *point);

#define SNAP "imc-00000000000000aa"

static char state_dir[] = "/tmp/imc-test-thin.XXXXXX";
static struct store *st;

static void must(int r, const imc_error *err)
{
	ck_assert_msg(r == 0, "unexpected failure %d: %s", r, err->msg);
}

static void open_store(const char *const *opts)
{
	struct store_config cfg = {
	    .state_dir = state_dir, .driver = "thin", .pool_size = 1ULL << 30, .driver_opts = opts};
	imc_error err;

	must(store_open(&cfg, &st, &err), &err);
}

static void reopen(void)
{
	store_close(st);
	open_store(NULL);
}

static bool repairs_mention(const char *text)
{
	json_t *v;
	size_t i;

	json_array_foreach(store_repairs(st), i, v)
	{
		if (strstr(json_string_value(v), text))
			return true;
	}
	return false;
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

/* ---- the pool seen from outside the driver, with libdevmapper ---------------------------- */

static json_t *record(void)
{
	char path[PATH_MAX];
	json_error_t jerr;
	json_t *j;

	snprintf(path, sizeof(path), "%s/thin/devices.json", state_dir);
	j = json_load_file(path, 0, &jerr);
	ck_assert_msg(j != NULL, "%s: %s", path, jerr.text);
	return j;
}

static const char *pool_name(char buf[64])
{
	json_t *j = record();
	snprintf(buf, 64, "%s", json_string_value(json_object_get(j, "pool")));
	json_decref(j);
	return buf;
}

static int dev_id_of(const char *kind, const char *id)
{
	json_t *j = record(), *d;
	size_t i;
	int found = -1;

	json_array_foreach(json_object_get(j, "devices"), i, d)
	{
		if (strcmp(json_string_value(json_object_get(d, "kind")), kind) == 0 &&
		    strcmp(json_string_value(json_object_get(d, "id")), id) == 0)
			found = (int)json_integer_value(json_object_get(d, "devId"));
	}
	json_decref(j);
	return found;
}

static int next_id(void)
{
	json_t *j = record();
	int n = (int)json_integer_value(json_object_get(j, "nextId"));
	json_decref(j);
	return n;
}

static bool dm_task_do(int type, const char *name, const char *ttype, const char *params,
		       const char *msg)
{
	struct dm_task *t = dm_task_create(type);
	uint32_t cookie = 0;
	bool cookie_needed = type == DM_DEVICE_CREATE || type == DM_DEVICE_REMOVE;
	int ok;

	ck_assert_ptr_nonnull(t);
	ok = dm_task_set_name(t, name);
	if (ok && ttype)
		ok = dm_task_add_target(t, 0, 2048, ttype, params);
	if (ok && msg)
		ok = dm_task_set_sector(t, 0) && dm_task_set_message(t, msg);
	if (ok && cookie_needed)
		ok = dm_task_set_cookie(t, &cookie, 0);
	ok = ok && dm_task_run(t);
	if (cookie_needed)
		dm_udev_wait(cookie);
	dm_task_destroy(t);
	return ok;
}

static bool pool_msg(const char *fmt, int a, int b)
{
	char pool[64], msg[96];
	snprintf(msg, sizeof(msg), fmt, a, b);
	return dm_task_do(DM_DEVICE_TARGET_MSG, pool_name(pool), NULL, NULL, msg);
}

static uint64_t pool_transaction(void)
{
	char pool[64];
	struct dm_task *t = dm_task_create(DM_DEVICE_STATUS);
	uint64_t start, len, txn = 0;
	char *ttype, *params;

	ck_assert(dm_task_set_name(t, pool_name(pool)) && dm_task_run(t));
	dm_get_next_target(t, NULL, &start, &len, &ttype, &params);
	ck_assert_int_eq(sscanf(params, "%" SCNu64, &txn), 1);
	dm_task_destroy(t);
	return txn;
}

/* Is thin device id in the pool?  A table that names it loads only if it is. */
static bool pool_has(int id)
{
	char pool[64], params[96], path[PATH_MAX];
	struct stat sb;
	bool ok;

	snprintf(path, sizeof(path), "/dev/mapper/%s", pool_name(pool));
	ck_assert_int_eq(stat(path, &sb), 0);
	snprintf(params, sizeof(params), "%u:%u %d", major(sb.st_rdev), minor(sb.st_rdev), id);
	ok = dm_task_do(DM_DEVICE_CREATE, "imc-test-probe", "thin", params, NULL);
	if (ok)
		ck_assert(dm_task_do(DM_DEVICE_REMOVE, "imc-test-probe", NULL, NULL, NULL));
	return ok;
}

/* imcache's dm devices besides pools (every test leaves none behind). */
static int dm_devices(void)
{
	struct dm_task *t = dm_task_create(DM_DEVICE_LIST);
	struct dm_names *n;
	int count = 0;

	ck_assert(dm_task_run(t));
	for (n = dm_task_get_names(t); n && n->dev;
	     n = n->next ? (struct dm_names *)((char *)n + n->next) : NULL)
		if (strncmp(n->name, "imc-", 4) == 0 && strncmp(n->name, "imc-pool-", 9) != 0)
			count++;
	dm_task_destroy(t);
	return count;
}

/* ---- fixture ------------------------------------------------------------------------------- */

static void make_snapshot(const char *id)
{
	static const char *const mkfs_args[] = {"-q", "-F", "-b", "4096", NULL};
	struct store_dev dev = {.fd = -1};
	imc_error err;

	must(store_volume_create(st, id, 64ULL << 20, &err), &err);
	must(store_activate(st, STORE_VOLUME, id, 0, &dev, &err), &err);
	ck_assert_ptr_nonnull(strstr(dev.path, "/dev/mapper/imc-"));
	must(imc_priv_mkfs("ext4", mkfs_args, dev.path, &err), &err);
	must(store_deactivate(st, STORE_VOLUME, id, &dev, &err), &err);
	must(store_seal(st, id, id, &err), &err);
}

static void setup(void)
{
	dm_udev_set_sync_support(0);
	struct store_config cfg = {
	    .state_dir = state_dir, .driver = "thin", .pool_size = 1ULL << 30};
	imc_error err;
	int r;

	ck_assert_ptr_nonnull(mkdtemp(state_dir));
	r = store_open(&cfg, &st, &err);
	if (r < 0)
		imc_rm_rf_at(AT_FDCWD, state_dir, NULL);
	must(r, &err);
	make_snapshot(SNAP);
}

static void teardown(void)
{
	imc_error err;

	thin_crash_hook = NULL;
	store_remove(st, STORE_SNAPSHOT, SNAP, &err);
	ck_assert_int_eq(dm_devices(), 0);
	must(store_teardown(st, &err), &err);
	store_close(st);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, state_dir, &err), 0);
	memcpy(state_dir + strlen(state_dir) - 6, "XXXXXX", 6);
}

/* ---- crashes ------------------------------------------------------------------------------- */

static const char *crash_at;

static void crash_here(const char *point)
{
	if (strcmp(point, crash_at) == 0)
		_exit(42);
}

/* Run fn in a child that dies at point, as a killed imcd or imc-attach would. */
static void crash_in_child(const char *point, void (*fn)(void))
{
	int status;
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		crash_at = point;
		thin_crash_hook = crash_here;
		fn();
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 42, "child did not crash at %s",
		      point);
}

static void clone_c1(void)
{
	imc_error err;
	store_clone(st, SNAP, "c1", &err);
}

static void remove_c1(void)
{
	imc_error err;
	store_remove(st, STORE_CLONE, "c1", &err);
}

START_TEST(crash_before_the_pool_knows_leaves_nothing)
{
	int id = next_id();

	crash_in_child("create:recorded", clone_c1);
	reopen();
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert(repairs_mention("interrupted create"));
	ck_assert(!pool_has(id));
}
END_TEST

START_TEST(crash_after_create_snap_deletes_the_leaked_device)
{
	int id = next_id();

	crash_in_child("create:done", clone_c1);
	ck_assert(pool_has(id)); /* leaked: in the pool, recorded only as pending */
	reopen();
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert(repairs_mention("deleted the leaked device"));
	ck_assert(!pool_has(id));
	/* the store goes on: the same clone id works */
	imc_error err;
	must(store_clone(st, SNAP, "c1", &err), &err);
	must(store_remove(st, STORE_CLONE, "c1", &err), &err);
}
END_TEST

START_TEST(crash_after_the_transaction_keeps_the_clone)
{
	struct store_dev dev = {.fd = -1};
	imc_error err;
	int id = next_id();

	crash_in_child("create:transaction", clone_c1);
	reopen();
	ck_assert(repairs_mention("finished an interrupted create"));
	ck_assert_uint_eq(count(STORE_CLONE), 1);
	ck_assert_int_eq(dev_id_of("clone", "c1"), id);
	must(store_activate(st, STORE_CLONE, "c1", 0, &dev, &err), &err);
	must(store_deactivate(st, STORE_CLONE, "c1", &dev, &err), &err);
	must(store_remove(st, STORE_CLONE, "c1", &err), &err);
	ck_assert(!pool_has(id));
}
END_TEST

START_TEST(crash_during_delete_is_finished)
{
	imc_error err;
	int id;

	must(store_clone(st, SNAP, "c1", &err), &err);
	id = dev_id_of("clone", "c1");
	crash_in_child("delete:recorded", remove_c1);
	ck_assert(pool_has(id));
	reopen();
	ck_assert(repairs_mention("finished an interrupted delete"));
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert(!pool_has(id));
}
END_TEST

START_TEST(a_device_no_record_owns_is_deleted)
{
	int id = next_id() + 7;
	uint64_t txn = pool_transaction();
	char want[64];

	/* What a crashed process that lost its record would leave: a device and a moved
	 * transaction id. */
	ck_assert(pool_msg("create_thin %d", id, 0));
	ck_assert(pool_msg("set_transaction_id %d %d", (int)txn, (int)txn + 1));
	reopen();
	snprintf(want, sizeof(want), "thin device %d: in pool", id);
	ck_assert_msg(repairs_mention(want), "no repair names device %d", id);
	ck_assert(!pool_has(id));
	ck_assert_uint_eq(count(STORE_SNAPSHOT), 1);
	ck_assert_uint_eq(pool_transaction(), txn + 1);
}
END_TEST

START_TEST(a_record_whose_device_is_gone_is_dropped)
{
	imc_error err;

	must(store_clone(st, SNAP, "c1", &err), &err);
	ck_assert(pool_msg("delete %d", dev_id_of("clone", "c1"), 0));
	reopen();
	ck_assert(repairs_mention("gone from pool"));
	ck_assert_uint_eq(count(STORE_CLONE), 0);
	ck_assert_uint_eq(count(STORE_SNAPSHOT), 1);
	/* and a clean open repairs nothing */
	reopen();
	ck_assert_uint_eq(json_array_size(store_repairs(st)), 0);
}
END_TEST

START_TEST(an_active_device_no_record_owns_is_removed)
{
	char pool[64], name[128], params[96], path[PATH_MAX];
	struct stat sb;

	pool_name(pool);
	snprintf(name, sizeof(name), "imc-%s-c-ghost", pool + strlen("imc-pool-"));
	snprintf(path, sizeof(path), "/dev/mapper/%s", pool);
	ck_assert_int_eq(stat(path, &sb), 0);
	snprintf(params, sizeof(params), "%u:%u %d", major(sb.st_rdev), minor(sb.st_rdev),
		 dev_id_of("snapshot", SNAP));
	ck_assert(dm_task_do(DM_DEVICE_CREATE, name, "thin", params, NULL));
	ck_assert_int_eq(dm_devices(), 1);
	reopen();
	ck_assert(repairs_mention("owned by nothing, removed"));
	ck_assert_int_eq(dm_devices(), 0);
}
END_TEST

/* ---- EBUSY --------------------------------------------------------------------------------- */

static void *close_later(void *arg)
{
	nanosleep(&(struct timespec){.tv_nsec = 150 * 1000000L}, NULL);
	close(*(int *)arg);
	return NULL;
}

START_TEST(remove_of_a_busy_device_is_retried_then_reported)
{
	struct store_dev dev = {.fd = -1};
	imc_error err;
	uint64_t t0;
	int holder;
	pthread_t thread;

	must(store_clone(st, SNAP, "c1", &err), &err);
	must(store_activate(st, STORE_CLONE, "c1", 0, &dev, &err), &err);
	holder = open(dev.path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(holder, 0);
	close(dev.fd);
	t0 = imc_monotonic_ns();
	ck_assert_int_eq(store_deactivate(st, STORE_CLONE, "c1", NULL, &err), -EBUSY);
	ck_assert_uint_ge(imc_monotonic_ns() - t0, 400ULL * 1000000); /* it did wait */
	ck_assert_ptr_nonnull(strstr(err.msg, "-c-c1"));
	ck_assert_int_eq(store_remove(st, STORE_CLONE, "c1", &err), -EBUSY);
	ck_assert_uint_eq(count(STORE_CLONE), 1);
	/* a holder that lets go while the retries run */
	ck_assert_int_eq(pthread_create(&thread, NULL, close_later, &holder), 0);
	must(store_deactivate(st, STORE_CLONE, "c1", NULL, &err), &err);
	pthread_join(thread, NULL);
	must(store_remove(st, STORE_CLONE, "c1", &err), &err);
}
END_TEST

/* The agent's shared lower (a mount) and imcd's index export (a descriptor) activate the same
 * snapshot device: the first to deactivate leaves it to the other, the last one removes it. */
START_TEST(a_shared_snapshot_device_goes_with_its_last_user)
{
	struct store_dev a = {.fd = -1}, b = {.fd = -1};
	char block[4096];
	imc_error err;

	must(store_activate(st, STORE_SNAPSHOT, SNAP, STORE_ACTIVATE_READ_ONLY, &a, &err), &err);
	must(store_activate(st, STORE_SNAPSHOT, SNAP, STORE_ACTIVATE_READ_ONLY, &b, &err), &err);
	ck_assert_str_eq(a.path, b.path);
	must(store_deactivate(st, STORE_SNAPSHOT, SNAP, &a, &err), &err);
	ck_assert_int_eq(dm_devices(), 1);
	ck_assert_int_eq(pread(b.fd, block, sizeof(block), 1024 * 1024), (ssize_t)sizeof(block));
	must(store_deactivate(st, STORE_SNAPSHOT, SNAP, &b, &err), &err);
	ck_assert_int_eq(dm_devices(), 0);
	/* and with no other user, the first deactivate removes it */
	must(store_activate(st, STORE_SNAPSHOT, SNAP, STORE_ACTIVATE_READ_ONLY, &a, &err), &err);
	must(store_deactivate(st, STORE_SNAPSHOT, SNAP, &a, &err), &err);
	ck_assert_int_eq(dm_devices(), 0);
}
END_TEST

START_TEST(teardown_is_refused_while_a_device_is_active)
{
	struct store_dev dev = {.fd = -1};
	imc_error err;

	must(store_clone(st, SNAP, "c1", &err), &err);
	must(store_activate(st, STORE_CLONE, "c1", STORE_ACTIVATE_PERSIST, &dev, &err), &err);
	close(dev.fd);
	ck_assert_int_eq(store_teardown(st, &err), -EBUSY);
	dev.fd = -1;
	must(store_deactivate(st, STORE_CLONE, "c1", &dev, &err), &err);
	must(store_remove(st, STORE_CLONE, "c1", &err), &err);
}
END_TEST

/* ---- space --------------------------------------------------------------------------------- */

static uint64_t allocated(const char *name)
{
	char path[PATH_MAX];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/thin/%s", state_dir, name);
	ck_assert_int_eq(stat(path, &sb), 0);
	return (uint64_t)sb.st_blocks * 512;
}

/* Write n MiB of non-zero data at the start of dev; the first error's -errno, or 0. */
static int fill(const char *dev, int mib)
{
	int fd = open(dev, O_WRONLY | O_DIRECT | O_CLOEXEC), r = 0;
	void *buf;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(posix_memalign(&buf, 4096, 1 << 20), 0);
	memset(buf, 0x5a, 1 << 20);
	for (int i = 0; i < mib && r == 0; i++)
		if (pwrite(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20)
			r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	free(buf);
	close(fd);
	return r;
}

START_TEST(delete_discards_the_blocks)
{
	struct store_dev dev = {.fd = -1};
	imc_error err;
	uint64_t before, after;

	must(store_volume_create(st, "v", 64ULL << 20, &err), &err);
	must(store_activate(st, STORE_VOLUME, "v", 0, &dev, &err), &err);
	ck_assert_int_eq(fill(dev.path, 32), 0);
	must(store_deactivate(st, STORE_VOLUME, "v", &dev, &err), &err);
	before = allocated("data.img");
	must(store_remove(st, STORE_VOLUME, "v", &err), &err);
	after = allocated("data.img");
	ck_assert_msg(after + (24ULL << 20) < before, "data.img: %llu bytes before, %llu after",
		      (unsigned long long)before, (unsigned long long)after);
}
END_TEST

START_TEST(a_full_pool_fails_the_writes_and_recovers)
{
	static const char *const opts[] = {"data_size=48M", "block_size=64k", NULL};
	struct store_dev dev = {.fd = -1};
	struct store_usage use;
	imc_error err;
	uint64_t t0;
	int r;

	/* A second store in the same kind of state dir, with a 48 MiB pool. */
	store_remove(st, STORE_SNAPSHOT, SNAP, &err);
	must(store_teardown(st, &err), &err);
	store_close(st);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, state_dir, &err), 0);
	ck_assert_int_eq(mkdir(state_dir, 0700), 0);
	open_store(opts);
	must(store_volume_create(st, "big", 256ULL << 20, &err), &err);
	must(store_activate(st, STORE_VOLUME, "big", 0, &dev, &err), &err);
	t0 = imc_monotonic_ns();
	r = fill(dev.path, 100);
	ck_assert_msg(r == -ENOSPC || r == -EIO, "filling a 48 MiB pool: %d", r);
	ck_assert_uint_lt(imc_monotonic_ns() - t0, 30ULL * 1000000000); /* not queued */
	must(store_usage(st, &use, &err), &err);
	ck_assert_uint_eq(use.used, use.total);
	ck_assert_int_eq(store_volume_create(st, "other", 32ULL << 20, &err), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of data space"));
	/* the flush at deactivate may report the failed writes; the device goes either way */
	r = store_deactivate(st, STORE_VOLUME, "big", &dev, &err);
	ck_assert_msg(r == 0 || r == -EIO || r == -ENOSPC, "deactivate: %s", err.msg);
	ck_assert_int_eq(dm_devices(), 0);
	ck_assert_int_eq(store_seal(st, "big", "big", &err), -ENOSPC);
	ck_assert_uint_eq(count(STORE_SNAPSHOT), 0);
	/* the failed build goes away, and the pool is writable again */
	must(store_remove(st, STORE_VOLUME, "big", &err), &err);
	must(store_usage(st, &use, &err), &err);
	ck_assert_uint_lt(use.used, use.total / 4);
	must(store_volume_create(st, "next", 32ULL << 20, &err), &err);
	must(store_activate(st, STORE_VOLUME, "next", 0, &dev, &err), &err);
	ck_assert_int_eq(fill(dev.path, 8), 0);
	must(store_deactivate(st, STORE_VOLUME, "next", &dev, &err), &err);
	must(store_seal(st, "next", SNAP, &err), &err);
}
END_TEST

#define LONG_ID "img-0123456789abcdef0123456789abcdef0123456789abcdef0123456789a"

START_TEST(a_volume_from_a_snapshot_starts_with_its_content)
{
	struct store_dev dev = {.fd = -1}, other = {.fd = -1};
	struct store_object_info info;
	uint16_t magic = 0;
	imc_error err;

	must(store_volume_from_snapshot(st, SNAP, "v2", 128ULL << 20, &err), &err);
	must(store_stat(st, STORE_VOLUME, "v2", &info, &err), &err);
	ck_assert_uint_eq(info.size, 128ULL << 20);
	must(store_activate(st, STORE_VOLUME, "v2", 0, &dev, &err), &err);
	ck_assert_str_eq(dev.path + strlen(dev.path) - 5, "-v-v2");
	ck_assert_int_eq(pread(dev.fd, &magic, sizeof(magic), 1024 + 0x38), 2);
	ck_assert_uint_eq(magic, 0xEF53); /* the snapshot's ext4 */
	ck_assert_int_eq(fill(dev.path, 1), 0);
	must(store_deactivate(st, STORE_VOLUME, "v2", &dev, &err), &err);
	ck_assert_int_eq(store_volume_from_snapshot(st, "imc-00000000000000ff", "v3", 0, &err),
			 -ENOENT);
	must(store_remove(st, STORE_VOLUME, "v2", &err), &err);
	/* ids of up to 64 characters: the device name gets a hash, the path still fits */
	must(store_volume_from_snapshot(st, SNAP, LONG_ID "0", 0, &err), &err);
	must(store_volume_from_snapshot(st, SNAP, LONG_ID "1", 0, &err), &err);
	must(store_activate(st, STORE_VOLUME, LONG_ID "0", 0, &dev, &err), &err);
	must(store_activate(st, STORE_VOLUME, LONG_ID "1", 0, &other, &err), &err);
	ck_assert_str_ne(dev.path, other.path);
	ck_assert_int_eq(access(dev.path, F_OK), 0);
	must(store_deactivate(st, STORE_VOLUME, LONG_ID "0", &dev, &err), &err);
	must(store_deactivate(st, STORE_VOLUME, LONG_ID "1", &other, &err), &err);
	must(store_remove(st, STORE_VOLUME, LONG_ID "0", &err), &err);
	must(store_remove(st, STORE_VOLUME, LONG_ID "1", &err), &err);
	/* the snapshot did not change */
	must(store_activate(st, STORE_SNAPSHOT, SNAP, STORE_ACTIVATE_READ_ONLY, &dev, &err), &err);
	ck_assert_int_eq(pread(dev.fd, &magic, sizeof(magic), 1024 + 0x38), 2);
	ck_assert_uint_eq(magic, 0xEF53);
	must(store_deactivate(st, STORE_SNAPSHOT, SNAP, &dev, &err), &err);
}
END_TEST

/* ---- configured devices -------------------------------------------------------------------- */

START_TEST(a_pool_on_configured_devices)
{
	const char *data = getenv("IMC_THIN_DATA_DEV"), *meta = getenv("IMC_THIN_METADATA_DEV");
	char o1[128], o2[128], path[PATH_MAX];
	const char *opts[] = {o1, o2, "block_size=128k", "discard=off", NULL};
	static const char zeros[4096];
	struct store_dev dev = {.fd = -1};
	struct store *first = st;
	struct stat sb;
	imc_error err;
	int fd;

	if (!data || !meta) {
		printf("a_pool_on_configured_devices: skipped (IMC_THIN_DATA_DEV and "
		       "IMC_THIN_METADATA_DEV unset)\n");
		return;
	}
	fd = open(meta, O_WRONLY | O_CLOEXEC); /* a blank metadata device starts a new pool */
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, zeros, sizeof(zeros), 0), (ssize_t)sizeof(zeros));
	close(fd);
	snprintf(o1, sizeof(o1), "data_dev=%s", data);
	snprintf(o2, sizeof(o2), "metadata_dev=%s", meta);
	/* another state dir: another pool, next to the first one */
	char second[] = "/tmp/imc-test-thin2.XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(second));
	struct store_config cfg = {.state_dir = second, .driver = "thin", .driver_opts = opts};
	must(store_open(&cfg, &st, &err), &err);
	make_snapshot("s2");
	snprintf(path, sizeof(path), "%s/thin/data.img", second);
	ck_assert_int_ne(stat(path, &sb), 0); /* no embedded files */
	must(store_clone(st, "s2", "c2", &err), &err);
	must(store_activate(st, STORE_CLONE, "c2", 0, &dev, &err), &err);
	must(store_deactivate(st, STORE_CLONE, "c2", &dev, &err), &err);
	must(store_remove(st, STORE_CLONE, "c2", &err), &err);
	must(store_remove(st, STORE_SNAPSHOT, "s2", &err), &err);
	must(store_teardown(st, &err), &err);
	store_close(st);
	st = first;
	ck_assert_uint_eq(count(STORE_SNAPSHOT), 1); /* the first pool did not notice */
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, second, &err), 0);
}
END_TEST

/* ---- options (no device-mapper needed) ----------------------------------------------------- */

START_TEST(options_are_parsed_and_checked)
{
	const char *good[] = {"block_size=128k", "low_water=1G",      "discard=off", "zero=on",
			      "data_size=10G",	 "metadata_size=64M", NULL};
	const char *bad[][3] = {
	    {"block_size=96k", NULL},
	    {"block_size=32k", NULL},
	    {"data_dev=/dev/vdb", NULL},
	    {"nonsense=1", NULL},
	    {"discard=maybe", NULL},
	    {"data_size=10X", NULL},
	    {"metadata_size=1T", NULL},
	    {"data_dev=relative", "metadata_dev=/dev/vda", NULL},
	    {"data_dev=/dev/vdb", "metadata_dev=/dev/vda"},
	};
	struct thin_opts o;
	imc_error err;
	uint64_t v;

	must(thin_parse_opts(good, &o, &err), &err);
	ck_assert_uint_eq(o.block_size, 128 << 10);
	ck_assert_uint_eq(o.low_water, 1ULL << 30);
	ck_assert(!o.discard && o.zero);
	ck_assert_uint_eq(o.data_size, 10ULL << 30);
	must(thin_parse_opts(NULL, &o, &err), &err);
	ck_assert(o.discard && o.zero);
	ck_assert_uint_eq(o.block_size, 64 << 10);
	for (size_t i = 0; i + 1 < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(thin_parse_opts(bad[i], &o, &err) == -EINVAL, "accepted %s",
			      bad[i][0]);
	ck_assert_ptr_nonnull(strstr(err.msg, "data_dev"));
	must(thin_parse_opts(bad[8], &o, &err), &err);
	ck_assert_int_eq(thin_parse_size("18446744073709551615G", &v), -ERANGE);
	ck_assert_int_eq(thin_parse_size("-1", &v), -EINVAL);
	ck_assert_int_eq(thin_parse_size("4kb", &v), -EINVAL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("thin");
	TCase *opts = tcase_create("options"), *dm;
	SRunner *sr;
	int failed;

	tcase_add_test(opts, options_are_parsed_and_checked);
	suite_add_tcase(s, opts);
	if (geteuid() != 0 || access("/sys/class/misc/device-mapper", F_OK) != 0 ||
	    access("/dev/loop-control", R_OK | W_OK) != 0) {
		sr = srunner_create(s);
		srunner_run_all(sr, CK_NORMAL);
		failed = srunner_ntests_failed(sr);
		srunner_free(sr);
		if (failed)
			return 1;
		printf("test_thin: SKIP: needs root, device-mapper (/dev/mapper/control) and loop "
		       "devices; tests/vm/imc-vm runs it in a VM\n");
		return 77;
	}
	dm = tcase_create("dm");
	tcase_add_checked_fixture(dm, setup, teardown);
	tcase_set_timeout(dm, 300);
	tcase_add_test(dm, crash_before_the_pool_knows_leaves_nothing);
	tcase_add_test(dm, crash_after_create_snap_deletes_the_leaked_device);
	tcase_add_test(dm, crash_after_the_transaction_keeps_the_clone);
	tcase_add_test(dm, crash_during_delete_is_finished);
	tcase_add_test(dm, a_device_no_record_owns_is_deleted);
	tcase_add_test(dm, a_record_whose_device_is_gone_is_dropped);
	tcase_add_test(dm, an_active_device_no_record_owns_is_removed);
	tcase_add_test(dm, remove_of_a_busy_device_is_retried_then_reported);
	tcase_add_test(dm, a_shared_snapshot_device_goes_with_its_last_user);
	tcase_add_test(dm, teardown_is_refused_while_a_device_is_active);
	tcase_add_test(dm, delete_discards_the_blocks);
	tcase_add_test(dm, a_full_pool_fails_the_writes_and_recovers);
	tcase_add_test(dm, a_volume_from_a_snapshot_starts_with_its_content);
	tcase_add_test(dm, a_pool_on_configured_devices);
	suite_add_tcase(s, dm);
	return unit_run(s);
}
