/* imc-attach: the agent on each sandbox host. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "../common/priv.h"
#include "../dist/dist.h"
#include "attach.h"
#include "report.h"

#define DRIVER_OPTS_MAX 32

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imc-attach [--state-dir DIR] [--driver NAME] [--driver-opt KEY=VALUE]... [-v]\n"
	    "                  [--server URL] [--token T] [--cache-size BYTES] [--parallel N]\n"
	    "                  [--pool-size BYTES] [--registry-ref REF [--insecure-registry "
	    "H:P]...]\n"
	    "                  [--lower-grace SECONDS] [--lower-max N]\n"
	    "                  COMMAND\n"
	    "\n"
	    "With --server (or $IMCACHE_SERVER), a cache this host does not have is fetched from\n"
	    "imcd in chunks first; --cache-size bounds the local store (least recently used\n"
	    "unattached snapshots go first).  With --registry-ref, it is pulled from the OCI\n"
	    "artifact that imcctl push wrote there instead.\n"
	    "\n"
	    "commands:\n"
	    "  attach [--image N] [--mode overlay|clone] [--size BYTES] [--data-dest PATH]\n"
	    "         CACHE_ID DIR\n"
	    "        mount the cache's image N (default 0) rootfs at DIR: overlay (default) puts\n"
	    "        an overlayfs on the cache's one read-only mount on this host, and --size\n"
	    "        bounds what the pod can write; clone mounts a copy-on-write clone, and\n"
	    "        --size grows it and its ext4 first (K, M, G, T suffixes); --data-dest\n"
	    "        mounts the cache's /data read-only at DIR/PATH\n"
	    "  attach --block [--size BYTES] CACHE_ID\n"
	    "        expose a clone as a block device for a microVM (nothing is mounted);\n"
	    "        prints \"DEVICE ATTACH_ID\"\n"
	    "  prefetch CACHE_ID            fetch the cache into the local store (no attach)\n"
	    "  detach DIR|ATTACH_ID|DEVICE  undo an attach\n"
	    "  list                         the attaches on this host, as JSON\n"
	    "  lowers                       the shared read-only lowers mounted here, as JSON\n"
	    "  reconcile                    undo attaches whose process died or whose mount or\n"
	    "                               device vanished, remove clones and loop devices no\n"
	    "                               attach owns; prints what it repaired\n"
	    "  teardown                     release the store's embedded pool (unmount it, free\n"
	    "                               its loop device); refused while in use\n"
	    "\n"
	    "With --server (or $IMCACHE_SERVER) attach and detach are reported to imcd, with\n"
	    "--token (or $IMCACHE_TOKEN) as the bearer token; a failed report only warns.\n"
	    "An unused shared lower stays mounted --lower-grace seconds (or $IMCACHE_LOWER_GRACE;\n"
	    "default 300) after its last detach, and the least recently used unused ones go\n"
	    "while more than --lower-max (or $IMCACHE_LOWER_MAX; default 64) are mounted;\n"
	    "detach and reconcile release them.\n"
	    "-v, --verbose prints fetch statistics and attach and detach times on stderr;\n"
	    "-h, --help prints this help.\n");
}

static int fail(const imc_error *err)
{
	fprintf(stderr, "imc-attach: %s\n", err->msg);
	return 1;
}

/* BYTES with an optional binary suffix (K, M, G, T). */
static int parse_size(const char *arg, uint64_t *ret)
{
	static const char suffixes[] = "KMGT";
	char *end;
	unsigned long long n;
	int shift = 0;

	errno = 0;
	n = strtoull(arg, &end, 10);
	if (errno || end == arg || arg[0] == '-')
		return -EINVAL;
	if (*end) {
		const char *p = strchr(suffixes, *end);
		if (!p || end[1])
			return -EINVAL;
		shift = 10 * (int)(p - suffixes + 1);
	}
	if (n == 0 || n > (UINT64_MAX >> shift))
		return -ERANGE;
	*ret = (uint64_t)n << shift;
	return 0;
}

static struct attach_reporter reporter;
static struct attach_lower_policy lower_policy;

static void print_fetch_stats(const char *id, const struct dist_fetch_stats *st)
{
	fprintf(stderr,
		"imc-attach: fetched %s in %.2f s: %" PRIu64 " chunks (%" PRIu64 " zero), %" PRIu64
		" over the network (%" PRIu64 " bytes), %" PRIu64 " local, %" PRIu64
		" retries, %" PRIu64 " corrupt refetched, %" PRIu64 " evicted\n",
		id, (double)st->ns / 1e9, st->chunks, st->zero_chunks, st->fetched,
		st->fetched_bytes, st->local, st->retries, st->refetched_corrupt, st->evicted);
}

/* The cache in the local store, fetched when --server names where from. */
static int ensure_local(struct store *s, const struct dist_fetch_config *fc, const char *id,
			bool verbose, imc_error *err)
{
	struct dist_fetch_stats st = {0};

	if (!fc->server && !fc->registry_ref)
		return 0;
	if (dist_fetch_snapshot(s, fc, id, &st, err) < 0)
		return err->code;
	if (verbose && st.ns)
		print_fetch_stats(id, &st);
	return 0;
}

static int cmd_prefetch(struct store *s, const struct dist_fetch_config *fc, int argc, char **argv,
			bool verbose)
{
	imc_error err = {0};

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (!fc->server && !fc->registry_ref) {
		fprintf(stderr, "imc-attach: prefetch: want --server URL (or $IMCACHE_SERVER)\n");
		return 2;
	}
	if (ensure_local(s, fc, argv[1], verbose, &err) < 0)
		return fail(&err);
	return 0;
}

static int cmd_attach(struct store *s, const struct dist_fetch_config *fc, int argc, char **argv,
		      bool verbose)
{
	static const struct option opts[] = {
	    {"image", required_argument, NULL, 'i'}, {"block", no_argument, NULL, 'b'},
	    {"size", required_argument, NULL, 'S'},  {"data-dest", required_argument, NULL, 'D'},
	    {"mode", required_argument, NULL, 'm'},  {0}};
	struct attach_request req = {0};
	_cleanup_json_ json_t *state = NULL;
	imc_error err = {0};
	uint64_t t0;
	int c;

	optind = 1;
	req.lower = &lower_policy;
	while ((c = getopt_long(argc, argv, "+i:bS:D:m:", opts, NULL)) != -1) {
		char *end;
		unsigned long n;
		switch (c) {
		case 'i':
			n = strtoul(optarg, &end, 10);
			if (*end || !*optarg || n > 1000) {
				fprintf(stderr, "imc-attach: --image %s: want 0-1000\n", optarg);
				return 2;
			}
			req.image = (unsigned)n;
			break;
		case 'b':
			req.block = true;
			break;
		case 'S':
			if (parse_size(optarg, &req.size) < 0) {
				fprintf(stderr, "imc-attach: --size %s: want BYTES[K|M|G|T]\n",
					optarg);
				return 2;
			}
			break;
		case 'D':
			req.data_dest = optarg;
			break;
		case 'm':
			if (attach_mode_parse(optarg, &req.mode, &err) < 0) {
				fprintf(stderr, "imc-attach: --mode: %s\n", err.msg);
				return 2;
			}
			break;
		default:
			return 2;
		}
	}
	if (argc - optind != (req.block ? 1 : 2)) {
		usage(stderr);
		return 2;
	}
	req.cache_id = argv[optind];
	req.dir = req.block ? NULL : argv[optind + 1];
	t0 = imc_monotonic_ns();
	if (ensure_local(s, fc, req.cache_id, verbose, &err) < 0)
		return fail(&err);
	if (attach_cache(s, &req, &state, &err) < 0)
		return fail(&err);
	attach_report_state(&reporter, true, state, "imc-attach");
	if (verbose)
		fprintf(stderr, "imc-attach: attached %s as %s in %.2f ms\n", req.cache_id,
			req.block ? json_string_value(json_object_get(state, "device")) : req.dir,
			(double)(imc_monotonic_ns() - t0) / 1e6);
	if (req.block)
		printf("%s %s\n", json_string_value(json_object_get(state, "device")),
		       json_string_value(json_object_get(state, "id")));
	return 0;
}

static int cmd_detach(struct store *s, int argc, char **argv, bool verbose)
{
	_cleanup_json_ json_t *state = NULL;
	imc_error err = {0};
	uint64_t t0 = imc_monotonic_ns();

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (attach_reporter_enabled(&reporter))
		state = attach_report_lookup(s, argv[1]);
	if (attach_detach_with(s, argv[1], &lower_policy, &err) < 0)
		return fail(&err);
	attach_report_state(&reporter, false, state, "imc-attach");
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

static int cmd_lowers(struct store *s)
{
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};

	if (attach_lowers_list(s, &list, &err) < 0)
		return fail(&err);
	json_dumpf(list, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	fputc('\n', stdout);
	return 0;
}

static int cmd_reconcile(struct store *s)
{
	_cleanup_json_ json_t *repairs = NULL;
	imc_error err = {0};
	size_t i;
	json_t *v;

	if (attach_reconcile_with(s, &lower_policy, &repairs, &err) < 0)
		return fail(&err);
	/* What the store repaired when it was opened (the thin driver's pool), then the attaches.
	 */
	json_array_foreach(store_repairs(s), i, v) printf("repaired: %s\n", json_string_value(v));
	json_array_foreach(repairs, i, v) printf("repaired: %s\n", json_string_value(v));
	if (json_array_size(repairs) == 0 && json_array_size(store_repairs(s)) == 0)
		printf("nothing to repair\n");
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
	if (attach_lowers_release(s, &err) < 0 || store_teardown(s, &err) < 0)
		return fail(&err);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"state-dir", required_argument, NULL, 's'},
					     {"driver", required_argument, NULL, 'd'},
					     {"driver-opt", required_argument, NULL, 'o'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"help", no_argument, NULL, 'h'},
					     {"server", required_argument, NULL, 'S'},
					     {"token", required_argument, NULL, 'T'},
					     {"cache-size", required_argument, NULL, 'C'},
					     {"parallel", required_argument, NULL, 'P'},
					     {"pool-size", required_argument, NULL, 'Z'},
					     {"registry-ref", required_argument, NULL, 'R'},
					     {"insecure-registry", required_argument, NULL, 'k'},
					     {"lower-grace", required_argument, NULL, 'g'},
					     {"lower-max", required_argument, NULL, 'L'},
					     {0}};
	static const char *const commands[] = {"attach",   "detach",   "list",	"reconcile",
					       "teardown", "prefetch", "lowers"};
	const char *insecure[DRIVER_OPTS_MAX + 1] = {0};
	size_t n_insecure = 0;
	/* The environment channels (a root-run agent: secure_getenv); the flags win. */
	struct dist_fetch_config fc = {.server = secure_getenv("IMCACHE_SERVER"),
				       .token = secure_getenv("IMCACHE_TOKEN"),
				       .insecure_registries = insecure,
				       .list_in_use = attach_list,
				       .remove_snapshot = attach_snapshot_remove};
	const char *driver_opts[DRIVER_OPTS_MAX + 1] = {0};
	struct store_config cfg = {
	    .state_dir = STORE_DEFAULT_STATE_DIR, .driver = "reflink", .driver_opts = driver_opts};
	struct store *s = NULL;
	imc_error err = {0};
	bool verbose = false, known = false;
	size_t n_opts = 0;
	int c, r;

	if (attach_lower_policy_parse(secure_getenv("IMCACHE_LOWER_GRACE"),
				      secure_getenv("IMCACHE_LOWER_MAX"), &lower_policy, &err) < 0)
		return fail(&err);
	while ((c = getopt_long(argc, argv, "+s:d:o:vhS:T:C:P:Z:R:k:g:L:", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 's':
			cfg.state_dir = optarg;
			break;
		case 'd':
			cfg.driver = optarg;
			break;
		case 'o':
			if (n_opts == DRIVER_OPTS_MAX || !strchr(optarg, '=')) {
				fprintf(
				    stderr,
				    "imc-attach: --driver-opt %s: want KEY=VALUE (at most %d)\n",
				    optarg, DRIVER_OPTS_MAX);
				return 2;
			}
			driver_opts[n_opts++] = optarg;
			break;
		case 'v':
			verbose = true;
			break;
		case 'S':
			fc.server = optarg;
			break;
		case 'T':
			fc.token = optarg;
			break;
		case 'C':
			if (parse_size(optarg, &fc.cache_size) < 0) {
				fprintf(stderr,
					"imc-attach: --cache-size %s: want BYTES[K|M|G|T]\n",
					optarg);
				return 2;
			}
			break;
		case 'R':
			fc.registry_ref = optarg;
			break;
		case 'k':
			if (n_insecure == DRIVER_OPTS_MAX) {
				fprintf(stderr, "imc-attach: too many --insecure-registry\n");
				return 2;
			}
			insecure[n_insecure++] = optarg;
			break;
		case 'Z':
			if (parse_size(optarg, &cfg.pool_size) < 0) {
				fprintf(stderr, "imc-attach: --pool-size %s: want BYTES[K|M|G|T]\n",
					optarg);
				return 2;
			}
			break;
		case 'P':
			fc.parallel = (unsigned)strtoul(optarg, NULL, 10);
			if (fc.parallel == 0 || fc.parallel > DIST_FETCH_PARALLEL_MAX) {
				fprintf(stderr, "imc-attach: --parallel %s: want 1-%d\n", optarg,
					DIST_FETCH_PARALLEL_MAX);
				return 2;
			}
			break;
		case 'g':
			errno = 0;
			lower_policy.grace_s = strtoll(optarg, &end, 10);
			if (errno || *end || !*optarg || lower_policy.grace_s < 0 ||
			    lower_policy.grace_s > ATTACH_LOWER_GRACE_MAX) {
				fprintf(stderr,
					"imc-attach: --lower-grace %s: want 0-%lld seconds\n",
					optarg, ATTACH_LOWER_GRACE_MAX);
				return 2;
			}
			break;
		case 'L':
			errno = 0;
			lower_policy.max_mounted = (unsigned)strtoul(optarg, &end, 10);
			if (errno || *end || !*optarg || optarg[0] == '-' ||
			    lower_policy.max_mounted > ATTACH_LOWER_MAX_MAX) {
				fprintf(stderr, "imc-attach: --lower-max %s: want 0-%d\n", optarg,
					ATTACH_LOWER_MAX_MAX);
				return 2;
			}
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
	attach_reporter_init(&reporter, fc.server, fc.token);
	const char *cmd = argv[optind];
	for (size_t i = 0; i < IMC_ARRAY_SIZE(commands); i++)
		known |= strcmp(cmd, commands[i]) == 0;
	if (!known) {
		fprintf(stderr, "imc-attach: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return 2;
	}
	if (imc_priv_inject_from_env(&err) < 0 || store_open(&cfg, &s, &err) < 0)
		return fail(&err);
	if (strcmp(cmd, "reconcile") != 0) {
		size_t i;
		json_t *v;
		json_array_foreach(store_repairs(s), i, v)
		    fprintf(stderr, "imc-attach: store repaired: %s\n", json_string_value(v));
	}
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "attach") == 0)
		r = cmd_attach(s, &fc, argc, argv, verbose);
	else if (strcmp(cmd, "prefetch") == 0)
		r = cmd_prefetch(s, &fc, argc, argv, verbose);
	else if (strcmp(cmd, "detach") == 0)
		r = cmd_detach(s, argc, argv, verbose);
	else if (strcmp(cmd, "list") == 0)
		r = cmd_list(s);
	else if (strcmp(cmd, "lowers") == 0)
		r = cmd_lowers(s);
	else if (strcmp(cmd, "reconcile") == 0)
		r = cmd_reconcile(s);
	else
		r = cmd_teardown(s);
	store_close(s);
	return r;
}
