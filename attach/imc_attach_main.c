/* imc-attach: the agent on each sandbox host. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "../common/priv.h"
#include "attach.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imc-attach [--state-dir DIR] [--driver reflink] [-v] COMMAND\n"
	    "\n"
	    "commands:\n"
	    "  attach [--image N] CACHE_ID DIR  mount a copy-on-write clone of the cache's\n"
	    "                                   image N (default 0) rootfs at DIR\n"
	    "  detach DIR                       undo the attach at DIR\n"
	    "  list                             the attaches on this host, as JSON\n"
	    "  teardown                         release the store's embedded pool (unmount\n"
	    "                                   it, free its loop device); refused while in use\n");
}

static int fail(const imc_error *err)
{
	fprintf(stderr, "imc-attach: %s\n", err->msg);
	return 1;
}

static int cmd_attach(struct store *s, int argc, char **argv, bool verbose)
{
	static const struct option opts[] = {{"image", required_argument, NULL, 'i'}, {0}};
	struct attach_request req = {0};
	imc_error err = {0};
	uint64_t t0;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "+i:", opts, NULL)) != -1) {
		char *end;
		unsigned long n;
		if (c != 'i')
			return 2;
		n = strtoul(optarg, &end, 10);
		if (*end || !*optarg || n > 1000) {
			fprintf(stderr, "imc-attach: --image %s: want 0-1000\n", optarg);
			return 2;
		}
		req.image = (unsigned)n;
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	req.cache_id = argv[optind];
	req.dir = argv[optind + 1];
	t0 = imc_monotonic_ns();
	if (attach_cache(s, &req, NULL, &err) < 0)
		return fail(&err);
	if (verbose)
		fprintf(stderr, "imc-attach: attached %s at %s in %.2f ms\n", req.cache_id, req.dir,
			(double)(imc_monotonic_ns() - t0) / 1e6);
	return 0;
}

static int cmd_detach(struct store *s, int argc, char **argv, bool verbose)
{
	imc_error err = {0};
	uint64_t t0 = imc_monotonic_ns();

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (attach_detach(s, argv[1], &err) < 0)
		return fail(&err);
	if (verbose)
		fprintf(stderr, "imc-attach: detached %s in %.2f ms\n", argv[1],
			(double)(imc_monotonic_ns() - t0) / 1e6);
	return 0;
}

static int cmd_list(struct store *s)
{
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};

	if (attach_list(s, &list, &err) < 0)
		return fail(&err);
	json_dumpf(list, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	fputc('\n', stdout);
	return 0;
}

static int cmd_teardown(struct store *s)
{
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};

	if (attach_list(s, &list, &err) < 0)
		return fail(&err);
	if (json_array_size(list) > 0) {
		fprintf(stderr,
			"imc-attach: teardown: %zu attaches are still recorded; detach them "
			"first\n",
			json_array_size(list));
		return 1;
	}
	if (store_teardown(s, &err) < 0)
		return fail(&err);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"state-dir", required_argument, NULL, 's'},
					     {"driver", required_argument, NULL, 'd'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	struct store_config cfg = {.state_dir = STORE_DEFAULT_STATE_DIR, .driver = "reflink"};
	struct store *s = NULL;
	imc_error err = {0};
	bool verbose = false;
	int c, r;

	while ((c = getopt_long(argc, argv, "+s:d:vh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			cfg.state_dir = optarg;
			break;
		case 'd':
			cfg.driver = optarg;
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	if (strcmp(cmd, "attach") && strcmp(cmd, "detach") && strcmp(cmd, "list") &&
	    strcmp(cmd, "teardown")) {
		fprintf(stderr, "imc-attach: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return 2;
	}
	if (imc_priv_inject_from_env(&err) < 0 || store_open(&cfg, &s, &err) < 0)
		return fail(&err);
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "attach") == 0)
		r = cmd_attach(s, argc, argv, verbose);
	else if (strcmp(cmd, "detach") == 0)
		r = cmd_detach(s, argc, argv, verbose);
	else if (strcmp(cmd, "list") == 0)
		r = cmd_list(s);
	else
		r = cmd_teardown(s);
	store_close(s);
	return r;
}
