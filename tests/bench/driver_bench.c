/* driver_bench: the store drivers side by side, at the store's level (no attach state, no
 * subdirectory bind), for tests/bench/bench_vm_drivers.sh.
 *
 *   driver_bench build DRIVER STATE_DIR SNAP DATA_MB
 *	build snapshot SNAP the builder's way (volume, mkfs.ext4, mount, DATA_MB of incompressible
 *	data in 16 MiB files, unmount, deactivate, seal); prints {"build_ms": ...}
 *   driver_bench clone DRIVER STATE_DIR SNAP COUNT
 *	COUNT times: clone + activate + mount the whole filesystem (timed), then unmount +
 *	deactivate + remove (timed apart); prints p50/p99 of both as one JSON line
 *   driver_bench teardown DRIVER STATE_DIR
 *	remove every snapshot and release the pool
 *
 * The pool is embedded in STATE_DIR (sparse files), 8 GiB. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../../common/priv.h"
#include "../../store/store.h"
#include "bench_util.h"

#define FILE_MB 16

static int build(struct store *s, const char *id, int data_mb, imc_error *err)
{
	static const char *const mkfs_args[] = {"-q", "-F",	      "-b", "4096",	 "-m", "0",
						"-O", "^has_journal", "-E", "nodiscard", NULL};
	char mnt[] = "/tmp/imc-driver-bench.XXXXXX";
	struct store_dev dev = {.fd = -1};
	uint64_t t0 = imc_monotonic_ns();
	int r;

	if (!mkdtemp(mnt))
		return imc_err_sys(err, errno, "mkdtemp");
	r = store_volume_create(s, id, ((uint64_t)data_mb * 5 / 4 + 256) << 20, err);
	if (r == 0)
		r = store_activate(s, STORE_VOLUME, id, 0, &dev, err);
	if (r == 0)
		r = imc_priv_mkfs("ext4", mkfs_args, dev.path, err);
	if (r == 0)
		r = imc_priv_mount(dev.path, mnt, "ext4", 0, STORE_EXT4_MOUNT_OPTIONS, err);
	if (r == 0) {
		r = bench_write_data(mnt, data_mb, FILE_MB, err);
		if (r == 0)
			r = imc_priv_umount(mnt, 0, err);
		else
			imc_priv_umount(mnt, 0, NULL);
	}
	rmdir(mnt);
	if (r == 0)
		r = store_deactivate(s, STORE_VOLUME, id, &dev, err);
	if (r == 0)
		r = store_seal(s, id, id, err);
	if (r == 0)
		printf("{\"driver\":\"%s\",\"data_mb\":%d,\"build_ms\":%.1f}\n",
		       store_driver_name(s), data_mb, bench_ms_since(t0));
	return r;
}

static int one_clone(struct store *s, const char *snap, int i, const char *mnt, double *up,
		     double *down, imc_error *err)
{
	char id[32];
	struct store_dev dev = {.fd = -1};
	uint64_t t0 = imc_monotonic_ns();
	int r;

	snprintf(id, sizeof(id), "bench-%d", i);
	if ((r = store_clone(s, snap, id, err)) < 0 ||
	    (r = store_activate(s, STORE_CLONE, id, 0, &dev, err)) < 0)
		return r;
	r = imc_priv_mount(dev.path, mnt, "ext4", 0, STORE_EXT4_MOUNT_OPTIONS, err);
	close(dev.fd);
	dev.fd = -1;
	if (r < 0)
		return r;
	*up = bench_ms_since(t0);
	t0 = imc_monotonic_ns();
	if ((r = imc_priv_umount(mnt, 0, err)) < 0 ||
	    (r = store_deactivate(s, STORE_CLONE, id, &dev, err)) < 0 ||
	    (r = store_remove(s, STORE_CLONE, id, err)) < 0)
		return r;
	*down = bench_ms_since(t0);
	return 0;
}

static int clones(struct store *s, const char *snap, int count, imc_error *err)
{
	char mnt[] = "/tmp/imc-driver-bench.XXXXXX";
	_cleanup_free_ double *up = calloc((size_t)count, sizeof(double));
	_cleanup_free_ double *down = calloc((size_t)count, sizeof(double));
	int r = 0;

	if (!up || !down)
		return imc_err(err, ENOMEM, "out of memory");
	if (!mkdtemp(mnt))
		return imc_err_sys(err, errno, "mkdtemp");
	for (int i = 0; i < count && r == 0; i++)
		r = one_clone(s, snap, i, mnt, &up[i], &down[i], err);
	rmdir(mnt);
	if (r < 0)
		return r;
	qsort(up, (size_t)count, sizeof(double), bench_cmp_double);
	qsort(down, (size_t)count, sizeof(double), bench_cmp_double);
	printf("{\"driver\":\"%s\",\"count\":%d,\"attach_p50_ms\":%.2f,\"attach_p99_ms\":%.2f,"
	       "\"detach_p50_ms\":%.2f,\"detach_p99_ms\":%.2f}\n",
	       store_driver_name(s), count, bench_pct(up, count, 0.5), bench_pct(up, count, 0.99),
	       bench_pct(down, count, 0.5), bench_pct(down, count, 0.99));
	return 0;
}

static int teardown(struct store *s, imc_error *err)
{
	char **ids;
	size_t n;
	int r = store_list(s, STORE_SNAPSHOT, &ids, &n, err);

	for (size_t i = 0; r == 0 && i < n; i++)
		r = store_remove(s, STORE_SNAPSHOT, ids[i], err);
	if (r == 0)
		store_list_free(ids, n);
	return r < 0 ? r : store_teardown(s, err);
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";
	struct store_config cfg = {.pool_size = 8ULL << 30};
	struct store *s;
	imc_error err = {0};
	int n = 0, r;

	if (!((strcmp(cmd, "build") == 0 && argc == 6) ||
	      (strcmp(cmd, "clone") == 0 && argc == 6) ||
	      (strcmp(cmd, "teardown") == 0 && argc == 4))) {
		fprintf(stderr, "usage: driver_bench build|clone DRIVER STATE_DIR SNAP N\n"
				"       driver_bench teardown DRIVER STATE_DIR\n");
		return 2;
	}
	if (argc == 6 && ((n = atoi(argv[5])) < 1 || n > 100000)) {
		fprintf(stderr, "driver_bench: bad N %s\n", argv[5]);
		return 2;
	}
	cfg.driver = argv[2];
	cfg.state_dir = argv[3];
	if (imc_mkdir_p(cfg.state_dir, 0700, &err) < 0 || store_open(&cfg, &s, &err) < 0) {
		fprintf(stderr, "driver_bench: %s\n", err.msg);
		return 1;
	}
	if (strcmp(cmd, "build") == 0)
		r = build(s, argv[4], n, &err);
	else if (strcmp(cmd, "clone") == 0)
		r = clones(s, argv[4], n, &err);
	else
		r = teardown(s, &err);
	if (r < 0)
		fprintf(stderr, "driver_bench %s: %s\n", cmd, err.msg);
	store_close(s);
	return r < 0 ? 1 : 0;
}
