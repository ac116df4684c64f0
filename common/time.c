/* Time: RFC 3339 stamps, the wall clock and the monotonic clock. */
#include <stdio.h>
#include <time.h>

#include "imc.h"

void imc_time_rfc3339(int64_t t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	/* gmtime_r() leaves tm unset for a year beyond int, and a failed strftime() leaves buf
	 * unterminated: neither may reach the caller. */
	if (size == 0)
		return;
	if (!gmtime_r(&tt, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, size, "%s", t < 0 ? "0000-01-01T00:00:00Z" : "9999-12-31T23:59:59Z");
}

int64_t imc_now(void)
{
	return (int64_t)time(NULL);
}

uint64_t imc_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct timespec imc_timespec_of_ns(uint64_t ns)
{
	return (struct timespec){.tv_sec = (time_t)(ns / 1000000000ULL),
				 .tv_nsec = (long)(ns % 1000000000ULL)};
}
