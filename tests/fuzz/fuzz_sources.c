/* Fuzz target: the agent's source settings from outside, --source-order / $IMCACHE_SOURCE_ORDER
 * (dist_source_order_parse) and --source-deadline / --read-deadline and their variables
 * (dist_deadline_parse); the input is one string (cut at its first NUL).
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure sets err->code to the returned value (-EINVAL), says something and leaves the
 *    result as it was;
 *  - an order is accepted only when it is one of "server", "registry", "server,registry" and
 *    "registry,server", and says the registry is first exactly when it starts with "registry";
 *  - a deadline is accepted only when it is decimal digits alone, 1 to DIST_DEADLINE_MAX_S
 *    seconds, and comes out as that many thousand milliseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../dist/dist.h"

static void check_order(const char *s)
{
	static const char *const good[] = {"server", "registry", "server,registry",
					   "registry,server"};
	imc_error err = {0};
	bool first = true, was = first;
	bool valid = false;
	int r = dist_source_order_parse(s, &first, &err);

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		valid = valid || strcmp(s, good[i]) == 0;
	if (r < 0) {
		if (valid || r != -EINVAL || err.code != r || !err.msg[0] || first != was)
			abort();
		return;
	}
	if (r != 0 || !valid || first != (strncmp(s, "registry", 8) == 0))
		abort();
}

static void check_deadline(const char *s)
{
	imc_error err = {0};
	uint64_t ms = 7;
	int r = dist_deadline_parse(s, "--read-deadline", &ms, &err);

	if (r < 0) {
		if (r != -EINVAL || err.code != r || !strstr(err.msg, "--read-deadline") || ms != 7)
			abort();
		return;
	}
	if (r != 0 || ms < 1000 || ms > DIST_DEADLINE_MAX_S * 1000 || ms % 1000)
		abort();
	if (strspn(s, "0123456789") != strlen(s) || strtoull(s, NULL, 10) * 1000 != ms)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	check_order(s);
	check_deadline(s);
	free(s);
	return 0;
}
