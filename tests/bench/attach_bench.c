/* attach_bench [--block|--overlay] STATE_DIR CACHE_ID COUNT [THREADS [SIZE_MB]]: attach the cache
 * COUNT times (THREADS at a time, each at its own directory, all made before; grown to SIZE_MB with
 * --size semantics when given), timing every attach and detach in-process, and print p50/p99/max in
 * ms as one JSON line, with the CPU time (user + system) this process spent per attach and its
 * detach (cpu_ms_per_attach: with THREADS at a time on C cores the last of a burst waits about
 * THREADS * cpu_ms_per_attach / C).
 * --block: block mode (imc-attach attach --block: a clone on a device, nothing mounted), detached
 * by its attach id.  --overlay: overlay mode (an overlayfs per attach on the cache's shared
 * lower; --size bounds the pod's writes); without either: clone mode (a clone mounted).
 *
 * attach_bench --make-snapshot STATE_DIR ID DATA_MB: make snapshot ID in the store the way the
 * builder does (volume, mkfs.ext4 without a journal, mount, files, clean unmount, seal with its
 * compaction) holding DATA_MB of incompressible data under /images/0/rootfs/data in 64 MiB files,
 * for attach timings at image sizes no registry pull would reach in a benchmark's time. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "../../attach/attach.h"
#include "../../common/priv.h"
#include "bench_util.h"

#define FILE_MB 64

struct job {
	struct store *s;
	const char *cache_id;
	const char *base;
	bool block, overlay;
	uint64_t size;
	int first, count;
	double *attach_ms, *detach_ms;
	int failed;
	imc_error err;
};

static void *run(void *arg)
{
	struct job *j = arg;

	for (int i = j->first; i < j->first + j->count; i++) {
		char dir[512];
		struct attach_request req = {.cache_id = j->cache_id,
					     .dir = j->block ? NULL : dir,
					     .block = j->block,
					     .size = j->size,
					     .mode = j->overlay ? ATTACH_MODE_OVERLAY
								: ATTACH_MODE_CLONE};
		_cleanup_json_ json_t *state = NULL;
		uint64_t t0;

		snprintf(dir, sizeof(dir), "%s/a%d", j->base, i);
		t0 = imc_monotonic_ns();
		if ((j->failed = attach_cache(j->s, &req, &state, &j->err)) < 0)
			return NULL;
		j->attach_ms[i] = bench_ms_since(t0);
		if (j->block)
			snprintf(dir, sizeof(dir), "%s",
				 json_string_value(json_object_get(state, "id")));
		t0 = imc_monotonic_ns();
		if ((j->failed = attach_detach(j->s, dir, &j->err)) < 0)
			return NULL;
		j->detach_ms[i] = bench_ms_since(t0);
	}
	return NULL;
}

/* DATA_MB of pseudo-random bytes in 64 MiB files under the first image's rootfs. */
static int write_data(const char *root, int data_mb, imc_error *err)
{
	char dir[600];

	snprintf(dir, sizeof(dir), "%s/images/0/rootfs/data", root);
	if (imc_mkdir_p(dir, 0755, err) < 0)
		return err->code;
	return bench_write_data(dir, data_mb, FILE_MB, err);
}

static int make_snapshot(struct store *s, const char *id, int data_mb, imc_error *err)
{
	static const char *const mkfs_args[] = {"-q", "-F",	      "-b", "4096",	 "-m", "0",
						"-O", "^has_journal", "-E", "nodiscard", NULL};
	char vol[96], mnt[] = "/tmp/imc-bench-snap.XXXXXX";
	uint64_t size = ((uint64_t)data_mb * 5 / 4 + 256) << 20;
	struct store_dev dev = {.fd = -1};
	int r;

	snprintf(vol, sizeof(vol), "bench-%s", id);
	if (!mkdtemp(mnt))
		return imc_err_sys(err, errno, "mkdtemp");
	r = store_volume_create(s, vol, size, err);
	if (r == 0)
		r = store_activate(s, STORE_VOLUME, vol, 0, &dev, err);
	if (r == 0)
		r = imc_priv_mkfs("ext4", mkfs_args, dev.path, err);
	if (r == 0)
		r = imc_priv_mount_fs("ext4", dev.path, STORE_EXT4_MOUNT_OPTIONS, false, mnt, err);
	if (r == 0) {
		r = write_data(mnt, data_mb, err);
		imc_error umount_err;
		int u = imc_priv_umount(mnt, 0, &umount_err);
		if (r == 0 && u < 0)
			r = imc_err(err, -u, "%s", umount_err.msg);
	}
	rmdir(mnt);
	if (dev.fd >= 0)
		store_deactivate(s, STORE_VOLUME, vol, &dev, NULL);
	if (r == 0)
		r = store_seal(s, vol, id, err);
	if (r < 0)
		store_remove(s, STORE_VOLUME, vol, NULL);
	return r;
}

static double tv_ms(const struct timeval *t)
{
	return (double)t->tv_sec * 1000 + (double)t->tv_usec / 1000;
}

static int bench(struct store *s, const char *cache_id, int count, int threads, bool block,
		 bool overlay, uint64_t size)
{
	char base[] = "/tmp/imc-attach-bench.XXXXXX";
	int failed = 0;

	if (!mkdtemp(base)) {
		perror("attach_bench: mkdtemp");
		return 1;
	}
	double *attach_ms = calloc((size_t)count, sizeof(double));
	double *detach_ms = calloc((size_t)count, sizeof(double));
	struct job *jobs = calloc((size_t)threads, sizeof(*jobs));
	pthread_t *tids = calloc((size_t)threads, sizeof(*tids));
	if (!attach_ms || !detach_ms || !jobs || !tids) {
		fprintf(stderr, "attach_bench: out of memory\n");
		return 1;
	}
	/* The pods' directories exist before the burst (a runtime's bundle does): making and
	 * removing them is no part of an attach, and threads would spend CPU on it meanwhile. */
	for (int i = 0; i < count && !block && !failed; i++) {
		char dir[sizeof(base) + 16];
		snprintf(dir, sizeof(dir), "%s/a%d", base, i);
		if (mkdir(dir, 0755) < 0) {
			perror("attach_bench: mkdir");
			failed = 1;
		}
	}
	struct rusage ru0, ru1;
	int started = 0;
	getrusage(RUSAGE_SELF, &ru0);
	for (int t = 0, first = 0; t < threads && !failed; t++, started++) {
		int n = count / threads + (t < count % threads);
		jobs[t] = (struct job){.s = s,
				       .cache_id = cache_id,
				       .base = base,
				       .block = block,
				       .overlay = overlay,
				       .size = size,
				       .first = first,
				       .count = n,
				       .attach_ms = attach_ms,
				       .detach_ms = detach_ms};
		first += n;
		pthread_create(&tids[t], NULL, run, &jobs[t]);
	}
	for (int t = 0; t < started; t++) {
		pthread_join(tids[t], NULL);
		if (jobs[t].failed) {
			fprintf(stderr, "attach_bench: %s\n", jobs[t].err.msg);
			failed = 1;
		}
	}
	getrusage(RUSAGE_SELF, &ru1);
	for (int i = 0; i < count; i++) { /* the pods' directories */
		char dir[sizeof(base) + 16];
		snprintf(dir, sizeof(dir), "%s/a%d", base, i);
		rmdir(dir);
	}
	rmdir(base);
	if (!failed) {
		qsort(attach_ms, (size_t)count, sizeof(double), bench_cmp_double);
		qsort(detach_ms, (size_t)count, sizeof(double), bench_cmp_double);
		printf("{\"count\":%d,\"threads\":%d,\"attach_p50_ms\":%.3f,\"attach_p99_ms\":%.3f,"
		       "\"attach_max_ms\":%.3f,\"detach_p50_ms\":%.3f,\"detach_p99_ms\":%.3f,"
		       "\"cpu_ms_per_attach\":%.3f}\n",
		       count, threads, bench_pct(attach_ms, count, 0.5),
		       bench_pct(attach_ms, count, 0.99), attach_ms[count - 1],
		       bench_pct(detach_ms, count, 0.5), bench_pct(detach_ms, count, 0.99),
		       (tv_ms(&ru1.ru_utime) - tv_ms(&ru0.ru_utime) + tv_ms(&ru1.ru_stime) -
			tv_ms(&ru0.ru_stime)) /
			   count);
	}
	free(attach_ms);
	free(detach_ms);
	free(jobs);
	free(tids);
	return failed;
}

int main(int argc, char **argv)
{
	struct store_config cfg = {0};
	struct store *s;
	imc_error err = {0};
	bool make = argc > 1 && strcmp(argv[1], "--make-snapshot") == 0;
	bool block = argc > 1 && strcmp(argv[1], "--block") == 0;
	bool overlay = argc > 1 && strcmp(argv[1], "--overlay") == 0;
	int r;

	if (block || overlay) {
		argv++;
		argc--;
	}
	if (make ? argc != 5 : argc < 4 || argc > 6) {
		fprintf(stderr, "usage: attach_bench [--block|--overlay] STATE_DIR CACHE_ID COUNT "
				"[THREADS [SIZE_MB]]\n"
				"       attach_bench --make-snapshot STATE_DIR ID DATA_MB\n");
		return 2;
	}
	if (make) {
		int data_mb = atoi(argv[4]);
		if (data_mb < 1 || data_mb > (1 << 20)) {
			fprintf(stderr, "attach_bench: bad DATA_MB\n");
			return 2;
		}
		cfg.state_dir = argv[2];
		if (store_open(&cfg, &s, &err) < 0 ||
		    make_snapshot(s, argv[3], data_mb, &err) < 0) {
			fprintf(stderr, "attach_bench: %s\n", err.msg);
			return 1;
		}
		store_close(s);
		return 0;
	}
	int count = atoi(argv[3]), threads = argc > 4 ? atoi(argv[4]) : 1;
	long size_mb = argc > 5 ? atol(argv[5]) : 0;
	if (count < 1 || count > 10000 || threads < 1 || threads > count || size_mb < 0) {
		fprintf(stderr, "attach_bench: bad COUNT, THREADS or SIZE_MB\n");
		return 2;
	}
	cfg.state_dir = argv[1];
	if (store_open(&cfg, &s, &err) < 0) {
		fprintf(stderr, "attach_bench: %s\n", err.msg);
		return 1;
	}
	r = bench(s, argv[2], count, threads, block, overlay, (uint64_t)size_mb << 20);
	store_close(s);
	return r;
}
