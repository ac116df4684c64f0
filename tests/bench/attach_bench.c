/* attach_bench STATE_DIR CACHE_ID COUNT [THREADS]: attach the cache COUNT times (THREADS at a
 * time, each at its own directory), timing every attach and detach in-process, and print
 * p50/p99/max in ms as one JSON line. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../../attach/attach.h"

struct job {
	struct store *s;
	const char *cache_id;
	const char *base;
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
		struct attach_request req = {.cache_id = j->cache_id, .dir = dir};
		uint64_t t0;

		snprintf(dir, sizeof(dir), "%s/a%d", j->base, i);
		if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
			j->failed = imc_err_sys(&j->err, errno, "mkdir %s", dir);
			return NULL;
		}
		t0 = imc_monotonic_ns();
		if ((j->failed = attach_cache(j->s, &req, NULL, &j->err)) < 0)
			return NULL;
		j->attach_ms[i] = (double)(imc_monotonic_ns() - t0) / 1e6;
		t0 = imc_monotonic_ns();
		if ((j->failed = attach_detach(j->s, dir, &j->err)) < 0)
			return NULL;
		j->detach_ms[i] = (double)(imc_monotonic_ns() - t0) / 1e6;
		rmdir(dir);
	}
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
	int i = (int)(p * (n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

int main(int argc, char **argv)
{
	struct store_config cfg = {0};
	struct store *s;
	imc_error err;
	char base[] = "/tmp/imc-attach-bench.XXXXXX";
	int count, threads, failed = 0;

	if (argc < 4) {
		fprintf(stderr, "usage: attach_bench STATE_DIR CACHE_ID COUNT [THREADS]\n");
		return 2;
	}
	cfg.state_dir = argv[1];
	count = atoi(argv[3]);
	threads = argc > 4 ? atoi(argv[4]) : 1;
	if (count < 1 || count > 10000 || threads < 1 || threads > count) {
		fprintf(stderr, "attach_bench: bad COUNT or THREADS\n");
		return 2;
	}
	if (store_open(&cfg, &s, &err) < 0 || !mkdtemp(base)) {
		fprintf(stderr, "attach_bench: %s\n", err.msg);
		return 1;
	}
	double *attach_ms = calloc((size_t)count, sizeof(double));
	double *detach_ms = calloc((size_t)count, sizeof(double));
	struct job *jobs = calloc((size_t)threads, sizeof(*jobs));
	pthread_t *tids = calloc((size_t)threads, sizeof(*tids));
	for (int t = 0, first = 0; t < threads; t++) {
		int n = count / threads + (t < count % threads);
		jobs[t] = (struct job){s, argv[2], base, first, n, attach_ms, detach_ms, 0, {0}};
		first += n;
		pthread_create(&tids[t], NULL, run, &jobs[t]);
	}
	for (int t = 0; t < threads; t++) {
		pthread_join(tids[t], NULL);
		if (jobs[t].failed) {
			fprintf(stderr, "attach_bench: %s\n", jobs[t].err.msg);
			failed = 1;
		}
	}
	rmdir(base);
	store_close(s);
	if (failed)
		return 1;
	qsort(attach_ms, (size_t)count, sizeof(double), cmp);
	qsort(detach_ms, (size_t)count, sizeof(double), cmp);
	printf("{\"count\":%d,\"threads\":%d,\"attach_p50_ms\":%.3f,\"attach_p99_ms\":%.3f,"
	       "\"attach_max_ms\":%.3f,\"detach_p50_ms\":%.3f,\"detach_p99_ms\":%.3f}\n",
	       count, threads, pct(attach_ms, count, 0.5), pct(attach_ms, count, 0.99),
	       attach_ms[count - 1], pct(detach_ms, count, 0.5), pct(detach_ms, count, 0.99));
	free(attach_ms);
	free(detach_ms);
	free(jobs);
	free(tids);
	return 0;
}
