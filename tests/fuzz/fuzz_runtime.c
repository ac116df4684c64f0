/* Fuzz target: imc-runtime's inputs from outside, config.json (runtime_cache_parse) and the
 * command line (runtime_parse_args).
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - config.json: a failure says something; a success without the annotation has no cache id,
 *    one with it has a valid cache id, an image of at most 1000 and an absolute rootfs (the
 *    bundle is absolute here) — the path imc-runtime would mount on;
 *  - argv (the input split at NUL bytes): every string returned points into argv (the bundle may
 *    be the default "."), and the command index is inside it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../attach/runtime.h"

#define ARGV_MAX 64

static void check_config(const char *data, size_t size)
{
	struct runtime_cache c = {0};
	imc_error err = {0};

	if (runtime_cache_parse(data, size, "/bundle", &c, &err) < 0) {
		if (!err.msg[0] || err.code >= 0) {
			fprintf(stderr, "config: failure without a message or code\n");
			abort();
		}
		runtime_cache_free(&c);
		return;
	}
	if (c.cache_id && (!imc_name_valid(c.cache_id, 64) || c.image > 1000 || !c.rootfs ||
			   c.rootfs[0] != '/')) {
		fprintf(stderr, "config: accepted cache \"%s\" image %u rootfs \"%s\"\n",
			c.cache_id, c.image, c.rootfs ? c.rootfs : "(null)");
		abort();
	}
	runtime_cache_free(&c);
}

/* Does p point into one of the argument strings ("--log=FILE" gives a pointer past the "=")? */
static bool in_argv(const char *p, char *const *argv, int argc)
{
	for (int i = 0; i < argc; i++)
		if (p >= argv[i] && p <= argv[i] + strlen(argv[i]))
			return true;
	return false;
}

static void check_args(const char *data, size_t size)
{
	_cleanup_free_ char *copy = malloc(size + 1);
	char *argv[ARGV_MAX + 1];
	int argc = 0;
	struct runtime_args a = {0};
	imc_error err = {0};

	if (!copy)
		return;
	memcpy(copy, data, size);
	copy[size] = '\0';
	argv[argc++] = "imc-runtime";
	for (char *p = copy; p < copy + size && argc < ARGV_MAX; p += strlen(p) + 1)
		argv[argc++] = p;
	argv[argc] = NULL;
	if (runtime_parse_args(argc, argv, &a, &err) < 0)
		return;
	if (a.command_index >= argc || (a.id && !in_argv(a.id, argv, argc)) ||
	    (a.log_file && !in_argv(a.log_file, argv, argc)) ||
	    (a.bundle && strcmp(a.bundle, ".") != 0 && !in_argv(a.bundle, argv, argc))) {
		fprintf(stderr, "argv: result points outside argv\n");
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_config((const char *)data, size);
	check_args((const char *)data, size);
	return 0;
}
