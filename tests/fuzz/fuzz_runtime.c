/* Fuzz target: imc-runtime's inputs from outside, config.json (runtime_cache_parse), the
 * command line (runtime_parse_args) and an image config put into a spec
 * (runtime_spec_apply_image, the /imcache.json side of imcache.io/use-image-config).
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - config.json: a failure says something; a success without the annotation has no cache id,
 *    one with it has a valid cache id, an image of at most 1000, an absolute rootfs (the
 *    bundle is absolute here) — the path imc-runtime would mount on — and a data mount that is
 *    absent or absolute without a ".." component;
 *  - image config: a success leaves process.args a non-empty array of strings and process.env an
 *    array of strings, in both modes;
 *  - argv (the input split at NUL bytes): every string returned points into argv (the bundle may
 *    be the default "."), and the command index is inside it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../attach/runtime.h"

#define ARGV_MAX 64

/* Is there a "", "." or ".." component in the absolute path p? */
static bool odd_component(const char *p)
{
	for (p++;; p++) {
		size_t n = strcspn(p, "/");
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return true;
		p += n;
		if (!*p)
			return false;
	}
}

static bool accepted_badly(const struct runtime_cache *c)
{
	if (!c->cache_id)
		return c->data_dest || c->spec || c->rootfs;
	return !imc_name_valid(c->cache_id, 64) || c->image > 1000 || !c->rootfs ||
	       c->rootfs[0] != '/' || !c->spec ||
	       (c->data_dest && (c->data_dest[0] != '/' || odd_component(c->data_dest)));
}

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
	if (accepted_badly(&c)) {
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

static bool all_strings(json_t *arr, bool non_empty)
{
	if (!json_is_array(arr) || (non_empty && json_array_size(arr) == 0))
		return false;
	for (size_t i = 0; i < json_array_size(arr); i++)
		if (!json_is_string(json_array_get(arr, i)))
			return false;
	return true;
}

static void check_image_config(const char *data, size_t size)
{
	static const enum runtime_use_config modes[] = {RUNTIME_USE_CONFIG_FILL,
							RUNTIME_USE_CONFIG_OVERRIDE};
	_cleanup_json_ json_t *cfg = json_loadb(data, size, 0, NULL);

	if (!cfg)
		return;
	for (size_t i = 0; i < IMC_ARRAY_SIZE(modes); i++) {
		_cleanup_json_ json_t *spec =
		    json_pack("{s:{s:[], s:[s], s:s, s:{s:i, s:i}}}", "process", "args", "env",
			      "PATH=/bin", "cwd", "/", "user", "uid", 0, "gid", 0);
		imc_error err = {0};
		json_t *process;

		if (!spec)
			return;
		if (runtime_spec_apply_image(spec, cfg, modes[i], -1, &err) < 0) {
			if (!err.msg[0] || err.code >= 0) {
				fprintf(stderr,
					"image config: failure without a message or code\n");
				abort();
			}
			continue;
		}
		process = json_object_get(spec, "process");
		if (!all_strings(json_object_get(process, "args"), true) ||
		    !all_strings(json_object_get(process, "env"), false)) {
			fprintf(stderr,
				"image config: accepted, but args or env are not strings\n");
			abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_config((const char *)data, size);
	check_args((const char *)data, size);
	check_image_config((const char *)data, size);
	return 0;
}
