/* What the benchmark programs share.  A header of static inline functions: the Makefile builds
 * every .c file of tests/bench/ into a program of its own. */
#ifndef IMC_BENCH_UTIL_H
#define IMC_BENCH_UTIL_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../common/cleanup.h"
#include "../../common/imc.h"

/* qsort order of doubles. */
static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The p-th quantile (0..1) of n sorted values. */
static inline double bench_pct(const double *v, int n, double p)
{
	int i = (int)(p * (n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

static inline double bench_ms_since(uint64_t t0)
{
	return (double)(imc_monotonic_ns() - t0) / 1e6;
}

/* data_mb MiB of pseudo-random bytes (xorshift: incompressible enough, and fast) in files of
 * file_mb MiB, dir/f00000 on. */
static inline int bench_write_data(const char *dir, int data_mb, int file_mb, imc_error *err)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	_cleanup_free_ uint64_t *buf = malloc(1 << 20);

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	for (int f = 0; f * file_mb < data_mb; f++) {
		char path[700];
		_cleanup_close_ int fd = -1;
		int mb = data_mb - f * file_mb < file_mb ? data_mb - f * file_mb : file_mb;

		snprintf(path, sizeof(path), "%s/f%05d", dir, f);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			return imc_err_sys(err, errno, "%s", path);
		for (int m = 0; m < mb; m++) {
			for (size_t i = 0; i < (1 << 20) / sizeof(*buf); i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				buf[i] = x;
			}
			if (imc_write_all(fd, buf, 1 << 20) < 0)
				return imc_err_sys(err, errno, "write %s", path);
		}
	}
	return 0;
}

#endif
