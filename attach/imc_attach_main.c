/* imc-attach: the agent on each sandbox host.  The commands are a table (commands[]), each with
 * its function, its own options (a table of rows, common/cli.h) and its lines of the help. */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/priv.h"
#include "../dist/dist.h"
#include "attach.h"
#include "report.h"

#define DRIVER_OPTS_MAX 32
#define HELP_DONE	(-1) /* a take function's answer to --help: stop, exit 0 */

/* The global options and what every command gets. */
struct globals {
	struct store_config cfg;
	const char *driver_opts[DRIVER_OPTS_MAX + 1];
	size_t n_driver_opts;
	struct dist_fetch_config fc;
	const char *insecure[DRIVER_OPTS_MAX + 1];
	size_t n_insecure;
	bool verbose;
	bool no_lazy; /* --no-lazy: fetch the whole snapshot before an attach */
	struct attach_reporter reporter;
	struct attach_lower_policy lower; /* $IMCACHE_LOWER_*, then --lower-grace, --lower-max */
};

struct command {
	const char *name;
	int (*run)(struct store *s, struct globals *g, int argc, char **argv);
	const char *help; /* its lines under "commands:" in the help */
	bool own_repairs; /* prints what the store repaired itself (else main warns of it) */
};

static void usage(FILE *f);

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

static void print_fetch_stats(const char *id, const struct dist_fetch_stats *st)
{
	fprintf(stderr,
		"imc-attach: fetched %s in %.2f s: %" PRIu64 " chunks (%" PRIu64 " zero), %" PRIu64
		" over the network (%" PRIu64 " bytes), %" PRIu64 " local, %" PRIu64
		" retries, %" PRIu64 " corrupt refetched, %" PRIu64 " evicted, %" PRIu64
		" sources abandoned\n",
		id, (double)st->ns / 1e9, st->chunks, st->zero_chunks, st->fetched,
		st->fetched_bytes, st->local, st->retries, st->refetched_corrupt, st->evicted,
		st->abandoned);
}

/* The cache in the local store, fetched when --server names where from (a lazy server of it
 * joined: attach_fetch). */
static int ensure_local(struct store *s, const struct dist_fetch_config *fc, const char *id,
			bool verbose, imc_error *err)
{
	struct dist_fetch_stats st = {0};
	bool joined;

	if (!fc->server && !fc->registry_ref)
		return 0;
	if (attach_fetch(s, fc, id, &st, &joined, err) < 0)
		return err->code;
	if (verbose && joined)
		fprintf(stderr, "imc-attach: %s: joined its lazy server's fill\n", id);
	if (verbose && st.ns)
		print_fetch_stats(id, &st);
	return 0;
}

/* An overlay attach of a cache the store lacks, with a source: a lazy lower, unless --no-lazy. */
static bool lazy_wanted(struct store *s, const struct globals *g, const struct attach_request *req)
{
	struct store_object_info info;

	return !g->no_lazy && (g->fc.server || g->fc.registry_ref) && !req->block &&
	       req->mode != ATTACH_MODE_CLONE && imc_name_valid(req->cache_id, 64) &&
	       store_stat(s, STORE_SNAPSHOT, req->cache_id, &info, NULL) < 0;
}

/* lazy-serve's one option, into a long. */
static int take_ready_fd(const struct imc_cli_opt *opt, const char *arg, void *fd)
{
	char *end;

	errno = 0;
	*(long *)fd = strtol(arg, &end, 10);
	if (errno || *end || !*arg || *(long *)fd < 3 || *(long *)fd > 1024) {
		fprintf(stderr, "imc-attach: lazy-serve: --ready-fd %s: want 3-1024\n", arg);
		return 2;
	}
	return 0;
}

static const struct imc_cli_opt lazy_serve_opts[] = {
    {"ready-fd", required_argument, 'r', take_ready_fd, 0},
};

/* lazy-serve --ready-fd N CACHE_ID: the FUSE server of a lazy lower (started by attach). */
static int cmd_lazy_serve(struct store *s, struct globals *g, int argc, char **argv)
{
	imc_error err = {0};
	long fd = -1;

	optind = 1;
	if (imc_cli_getopt(argc, argv, "+", lazy_serve_opts, IMC_ARRAY_SIZE(lazy_serve_opts),
			   &fd) != 0)
		return 2;
	if (fd < 0 || argc - optind != 1) {
		usage(stderr);
		return 2;
	}
	if (!g->fc.server && !g->fc.registry_ref) {
		fprintf(stderr,
			"imc-attach: lazy-serve: want --server URL or --registry-ref REF\n");
		return 2;
	}
	fcntl((int)fd, F_SETFD, FD_CLOEXEC);
	if (attach_lazy_serve(s, &g->fc, argv[optind], (int)fd, &err) < 0)
		return fail(&err);
	return 0;
}

static int cmd_prefetch(struct store *s, struct globals *g, int argc, char **argv)
{
	const struct dist_fetch_config *fc = &g->fc;
	imc_error err = {0};

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (!fc->server && !fc->registry_ref) {
		fprintf(stderr, "imc-attach: prefetch: want --server URL (or $IMCACHE_SERVER)\n");
		return 2;
	}
	if (ensure_local(s, fc, argv[1], g->verbose, &err) < 0)
		return fail(&err);
	return 0;
}

/* attach's options, into a struct attach_request. */
static int take_image(const struct imc_cli_opt *opt, const char *arg, void *req)
{
	char *end;
	unsigned long n = strtoul(arg, &end, 10);

	if (*end || !*arg || n > 1000) {
		fprintf(stderr, "imc-attach: --image %s: want 0-1000\n", arg);
		return 2;
	}
	((struct attach_request *)req)->image = (unsigned)n;
	return 0;
}

static int take_clone_size(const struct imc_cli_opt *opt, const char *arg, void *req)
{
	if (parse_size(arg, &((struct attach_request *)req)->size) < 0) {
		fprintf(stderr, "imc-attach: --size %s: want BYTES[K|M|G|T]\n", arg);
		return 2;
	}
	return 0;
}

static int take_mode(const struct imc_cli_opt *opt, const char *arg, void *req)
{
	imc_error err = {0};

	if (attach_mode_parse(arg, &((struct attach_request *)req)->mode, &err) < 0) {
		fprintf(stderr, "imc-attach: --mode: %s\n", err.msg);
		return 2;
	}
	return 0;
}

static const struct imc_cli_opt attach_opts[] = {
    {"image", required_argument, 'i', take_image, 0},
    {"block", no_argument, 'b', imc_cli_true, offsetof(struct attach_request, block)},
    {"size", required_argument, 'S', take_clone_size, 0},
    {"data-dest", required_argument, 'D', imc_cli_string,
     offsetof(struct attach_request, data_dest)},
    {"mode", required_argument, 'm', take_mode, 0},
};

static void print_attached(const struct attach_request *req, json_t *state, uint64_t t0)
{
	fprintf(stderr, "imc-attach: attached %s as %s in %.2f ms\n", req->cache_id,
		req->block ? json_string_value(json_object_get(state, "device")) : req->dir,
		(double)(imc_monotonic_ns() - t0) / 1e6);
}

static int cmd_attach(struct store *s, struct globals *g, int argc, char **argv)
{
	struct attach_request req = {0};
	_cleanup_json_ json_t *state = NULL;
	imc_error err = {0};
	uint64_t t0;
	int r;

	optind = 1;
	req.lower = &g->lower;
	r = imc_cli_getopt(argc, argv, "+", attach_opts, IMC_ARRAY_SIZE(attach_opts), &req);
	if (r != 0)
		return 2;
	if (argc - optind != (req.block ? 1 : 2)) {
		usage(stderr);
		return 2;
	}
	req.cache_id = argv[optind];
	req.dir = req.block ? NULL : argv[optind + 1];
	t0 = imc_monotonic_ns();
	if (lazy_wanted(s, g, &req))
		req.lazy = &g->fc;
	else if (ensure_local(s, &g->fc, req.cache_id, g->verbose, &err) < 0)
		return fail(&err);
	if (attach_cache(s, &req, &state, &err) < 0)
		return fail(&err);
	attach_report_state(&g->reporter, true, state, "imc-attach");
	if (g->verbose)
		print_attached(&req, state, t0);
	if (req.block)
		printf("%s %s\n", json_string_value(json_object_get(state, "device")),
		       json_string_value(json_object_get(state, "id")));
	return 0;
}

static int cmd_detach(struct store *s, struct globals *g, int argc, char **argv)
{
	_cleanup_json_ json_t *state = NULL;
	imc_error err = {0};
	uint64_t t0 = imc_monotonic_ns();

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (attach_reporter_enabled(&g->reporter))
		state = attach_report_lookup(s, argv[1]);
	if (attach_detach_with(s, argv[1], &g->lower, &err) < 0)
		return fail(&err);
	attach_report_state(&g->reporter, false, state, "imc-attach");
	if (g->verbose)
		fprintf(stderr, "imc-attach: detached %s in %.2f ms\n", argv[1],
			(double)(imc_monotonic_ns() - t0) / 1e6);
	return 0;
}

static int cmd_list(struct store *s, struct globals *g, int argc, char **argv)
{
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};

	size_t i;
	json_t *a;

	if (attach_list(s, &list, &err) < 0)
		return fail(&err);
	/* An attach on a lazy lower: its server's counts. */
	json_array_foreach(list, i, a)
	{
		json_t *lazy =
		    attach_lazy_stats(s, json_string_value(json_object_get(a, "cacheId")));
		if (lazy)
			json_object_set_new(a, "lazyStats", lazy);
	}
	json_dumpf(list, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	fputc('\n', stdout);
	return 0;
}

static int cmd_lowers(struct store *s, struct globals *g, int argc, char **argv)
{
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};

	if (attach_lowers_list(s, &list, &err) < 0)
		return fail(&err);
	json_dumpf(list, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	fputc('\n', stdout);
	return 0;
}

static int cmd_metrics(struct store *s, struct globals *g, int argc, char **argv)
{
	imc_error err = {0};

	if (attach_metrics_write(s, stdout, &err) < 0)
		return fail(&err);
	return 0;
}

static int cmd_reconcile(struct store *s, struct globals *g, int argc, char **argv)
{
	_cleanup_json_ json_t *repairs = NULL;
	imc_error err = {0};
	size_t i;
	json_t *v;

	if (attach_reconcile_with(s, &g->lower, &repairs, &err) < 0)
		return fail(&err);
	/* What the store repaired when it was opened (the thin driver's pool), then the attaches.
	 */
	json_array_foreach(store_repairs(s), i, v) printf("repaired: %s\n", json_string_value(v));
	json_array_foreach(repairs, i, v) printf("repaired: %s\n", json_string_value(v));
	if (json_array_size(repairs) == 0 && json_array_size(store_repairs(s)) == 0)
		printf("nothing to repair\n");
	return 0;
}

static int cmd_teardown(struct store *s, struct globals *g, int argc, char **argv)
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

/* In the order of the help. */
static const struct command commands[] = {
    {"attach", cmd_attach,
     "  attach [--image N] [--mode overlay|clone] [--size BYTES] [--data-dest PATH]\n"
     "         CACHE_ID DIR\n"
     "        mount the cache's image N (default 0) rootfs at DIR: overlay (default) puts\n"
     "        an overlayfs on the cache's one read-only mount on this host, and --size\n"
     "        bounds what the pod can write; clone mounts a copy-on-write clone, and\n"
     "        --size grows it and its ext4 first (K, M, G, T suffixes); --data-dest\n"
     "        mounts the cache's /data read-only at DIR/PATH\n"
     "  attach --block [--size BYTES] CACHE_ID\n"
     "        expose a clone as a block device for a microVM (nothing is mounted);\n"
     "        prints \"DEVICE ATTACH_ID\"\n",
     false},
    {"prefetch", cmd_prefetch,
     "  prefetch CACHE_ID            fetch the cache into the local store (no attach); with\n"
     "                               a lazy server of it here, wait for that one's seal\n",
     false},
    {"detach", cmd_detach, "  detach DIR|ATTACH_ID|DEVICE  undo an attach\n", false},
    {"list", cmd_list,
     "  list                         the attaches on this host, as JSON (on a lazy lower:\n"
     "                               lazyStats, its chunks local/total and bytes fetched)\n",
     false},
    {"lowers", cmd_lowers,
     "  lowers                       the shared read-only lowers mounted here, as JSON\n"
     "                               (a lazy one with its lazyStats)\n",
     false},
    {"metrics", cmd_metrics,
     "  metrics                      the attaches and lowers (a lazy one's chunks local and\n"
     "                               fetched) in the Prometheus text format\n",
     false},
    {"reconcile", cmd_reconcile,
     "  reconcile                    undo attaches whose process died or whose mount or\n"
     "                               device vanished, remove clones and loop devices no\n"
     "                               attach owns; prints what it repaired\n",
     true},
    {"teardown", cmd_teardown,
     "  teardown                     release the store's embedded pool (unmount it, free\n"
     "                               its loop device); refused while in use\n",
     false},
    {"lazy-serve", cmd_lazy_serve,
     "  lazy-serve --ready-fd N CACHE_ID\n"
     "                               the FUSE server of a lazy lower (attach starts it)\n",
     false},
};

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imc-attach [--state-dir DIR] [--driver NAME] [--driver-opt KEY=VALUE]... "
	    "[-v]\n"
	    "                  [--server URL] [--token T] [--cache-size BYTES] [--parallel N]\n"
	    "                  [--pool-size BYTES] [--registry-ref REF [--insecure-registry "
	    "H:P]...]\n"
	    "                  [--lower-grace SECONDS] [--lower-max N] [--no-lazy]\n"
	    "                  [--trace-window SECONDS]\n"
	    "                  [--source-order server,registry|registry,server]\n"
	    "                  [--source-deadline SECONDS] [--read-deadline SECONDS]\n"
	    "                  COMMAND\n"
	    "\n"
	    "With --server (or $IMCACHE_SERVER), a cache this host does not have is fetched "
	    "from\n"
	    "imcd in chunks first; --cache-size bounds the local store (least recently used\n"
	    "unattached snapshots go first).  With --registry-ref, it is pulled from the OCI\n"
	    "artifact that imcctl push wrote there instead.  An overlay attach of such a cache\n"
	    "is lazy: it returns once the cache's chunk index is read and a FUSE server\n"
	    "(imc-attach lazy-serve) presents the snapshot, fetching each chunk when first read\n"
	    "and the rest in the background, then seals it into the local store; --no-lazy\n"
	    "fetches the whole snapshot first.  With both --server and --registry-ref, both\n"
	    "are sources, tried in --source-order (or $IMCACHE_SOURCE_ORDER; default\n"
	    "server,registry); one whose fetches keep failing for --source-deadline seconds\n"
	    "(or $IMCACHE_SOURCE_DEADLINE; default 10) is abandoned for the other.  A lazy read\n"
	    "whose chunk cannot be fetched is tried again with backoff for --read-deadline\n"
	    "seconds (or $IMCACHE_READ_DEADLINE; default 60), then fails with EIO.  With\n"
	    "--server, the first lazy start of a cache records which chunks its reads touch in\n"
	    "its first --trace-window seconds (default 30; 0: none) and hands that startup\n"
	    "trace to imcd; later lazy starts fetch those chunks first.\n"
	    "\n"
	    "commands:\n");
	for (size_t i = 0; i < IMC_ARRAY_SIZE(commands); i++)
		fputs(commands[i].help, f);
	fprintf(f,
		"\n"
		"With --server (or $IMCACHE_SERVER) attach and detach are reported to imcd, with\n"
		"--token (or $IMCACHE_TOKEN) as the bearer token; a failed report only warns.\n"
		"An unused shared lower stays mounted --lower-grace seconds (or "
		"$IMCACHE_LOWER_GRACE;\n"
		"default 300) after its last detach, and the least recently used unused ones go\n"
		"while more than --lower-max (or $IMCACHE_LOWER_MAX; default 64) are mounted;\n"
		"detach and reconcile release them.\n"
		"-v, --verbose prints fetch statistics and attach and detach times on stderr;\n"
		"-h, --help prints this help.\n");
}

/* The global options, into struct globals. */
static int take_driver_opt(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;

	if (g->n_driver_opts == DRIVER_OPTS_MAX || !strchr(arg, '=')) {
		fprintf(stderr, "imc-attach: --driver-opt %s: want KEY=VALUE (at most %d)\n", arg,
			DRIVER_OPTS_MAX);
		return 2;
	}
	g->driver_opts[g->n_driver_opts++] = arg;
	return 0;
}

static int take_insecure(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;

	if (g->n_insecure == DRIVER_OPTS_MAX) {
		fprintf(stderr, "imc-attach: too many --insecure-registry\n");
		return 2;
	}
	g->insecure[g->n_insecure++] = arg;
	return 0;
}

/* --cache-size and --pool-size: BYTES into the uint64_t at opt->off. */
static int take_bytes(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	if (parse_size(arg, (uint64_t *)((char *)globals + opt->off)) < 0) {
		fprintf(stderr, "imc-attach: --%s %s: want BYTES[K|M|G|T]\n", opt->name, arg);
		return 2;
	}
	return 0;
}

static int take_parallel(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;

	g->fc.parallel = (unsigned)strtoul(arg, NULL, 10);
	if (g->fc.parallel == 0 || g->fc.parallel > DIST_FETCH_PARALLEL_MAX) {
		fprintf(stderr, "imc-attach: --parallel %s: want 1-%d\n", arg,
			DIST_FETCH_PARALLEL_MAX);
		return 2;
	}
	return 0;
}

/* --trace-window SECONDS: 0 records no startup trace. */
static int take_trace_window(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno || *end || !*arg || arg[0] == '-' || v > DIST_TRACE_WINDOW_MAX) {
		fprintf(stderr, "imc-attach: --trace-window %s: want 0-%d seconds\n", arg,
			DIST_TRACE_WINDOW_MAX);
		return 2;
	}
	g->fc.no_trace = v == 0;
	g->fc.trace_window_s = (unsigned)v;
	return 0;
}

static int take_source_order(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;
	imc_error err = {0};

	if (dist_source_order_parse(arg, &g->fc.registry_first, &err) < 0) {
		fprintf(stderr, "imc-attach: --source-order: %s\n", err.msg);
		return 2;
	}
	return 0;
}

/* --source-deadline and --read-deadline: SECONDS into the uint64_t (ms) at opt->off. */
static int take_deadline(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	char what[64];
	imc_error err = {0};

	snprintf(what, sizeof(what), "--%s", opt->name);
	if (dist_deadline_parse(arg, what, (uint64_t *)((char *)globals + opt->off), &err) < 0) {
		fprintf(stderr, "imc-attach: %s\n", err.msg);
		return 2;
	}
	return 0;
}

/* $IMCACHE_SOURCE_ORDER, $IMCACHE_SOURCE_DEADLINE, $IMCACHE_READ_DEADLINE (the flags win). */
static int sources_from_env(struct dist_fetch_config *fc, imc_error *err)
{
	const char *order = secure_getenv("IMCACHE_SOURCE_ORDER");
	const char *sd = secure_getenv("IMCACHE_SOURCE_DEADLINE");
	const char *rd = secure_getenv("IMCACHE_READ_DEADLINE");

	if (order && *order && dist_source_order_parse(order, &fc->registry_first, err) < 0)
		return imc_err_wrap(err, "$IMCACHE_SOURCE_ORDER");
	if (sd && *sd &&
	    dist_deadline_parse(sd, "$IMCACHE_SOURCE_DEADLINE", &fc->source_deadline_ms, err) < 0)
		return err->code;
	if (rd && *rd &&
	    dist_deadline_parse(rd, "$IMCACHE_READ_DEADLINE", &fc->read_deadline_ms, err) < 0)
		return err->code;
	return 0;
}

static int take_lower_grace(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;
	char *end;

	errno = 0;
	g->lower.grace_s = strtoll(arg, &end, 10);
	if (errno || *end || !*arg || g->lower.grace_s < 0 ||
	    g->lower.grace_s > ATTACH_LOWER_GRACE_MAX) {
		fprintf(stderr, "imc-attach: --lower-grace %s: want 0-%lld seconds\n", arg,
			ATTACH_LOWER_GRACE_MAX);
		return 2;
	}
	return 0;
}

static int take_lower_max(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	struct globals *g = globals;
	char *end;

	errno = 0;
	g->lower.max_mounted = (unsigned)strtoul(arg, &end, 10);
	if (errno || *end || !*arg || arg[0] == '-' ||
	    g->lower.max_mounted > ATTACH_LOWER_MAX_MAX) {
		fprintf(stderr, "imc-attach: --lower-max %s: want 0-%d\n", arg,
			ATTACH_LOWER_MAX_MAX);
		return 2;
	}
	return 0;
}

static int take_help(const struct imc_cli_opt *opt, const char *arg, void *globals)
{
	usage(stdout);
	return HELP_DONE;
}

#define G(field) offsetof(struct globals, field)
static const struct imc_cli_opt global_opts[] = {
    {"state-dir", required_argument, 's', imc_cli_string, G(cfg.state_dir)},
    {"driver", required_argument, 'd', imc_cli_string, G(cfg.driver)},
    {"driver-opt", required_argument, 'o', take_driver_opt, 0},
    {"verbose", no_argument, 'v', imc_cli_true, G(verbose)},
    {"help", no_argument, 'h', take_help, 0},
    {"server", required_argument, 'S', imc_cli_string, G(fc.server)},
    {"token", required_argument, 'T', imc_cli_string, G(fc.token)},
    {"cache-size", required_argument, 'C', take_bytes, G(fc.cache_size)},
    {"parallel", required_argument, 'P', take_parallel, 0},
    {"pool-size", required_argument, 'Z', take_bytes, G(cfg.pool_size)},
    {"registry-ref", required_argument, 'R', imc_cli_string, G(fc.registry_ref)},
    {"insecure-registry", required_argument, 'k', take_insecure, 0},
    {"lower-grace", required_argument, 'g', take_lower_grace, 0},
    {"lower-max", required_argument, 'L', take_lower_max, 0},
    {"no-lazy", no_argument, 'N', imc_cli_true, G(no_lazy)},
    {"trace-window", required_argument, 'W', take_trace_window, 0},
    {"source-order", required_argument, 0, take_source_order, 0},
    {"source-deadline", required_argument, 0, take_deadline, G(fc.source_deadline_ms)},
    {"read-deadline", required_argument, 0, take_deadline, G(fc.read_deadline_ms)},
};
#undef G

static const struct command *command_of(const char *name)
{
	for (size_t i = 0; i < IMC_ARRAY_SIZE(commands); i++)
		if (strcmp(name, commands[i].name) == 0)
			return &commands[i];
	return NULL;
}

static void warn_repairs(struct store *s)
{
	size_t i;
	json_t *v;

	json_array_foreach(store_repairs(s), i, v)
	    fprintf(stderr, "imc-attach: store repaired: %s\n", json_string_value(v));
}

/* The command with the store open: argv[0] is its name. */
static int run_command(const struct command *cmd, struct globals *g, int argc, char **argv)
{
	struct store *s = NULL;
	imc_error err = {0};
	int r;

	if (imc_priv_inject_from_env(&err) < 0 || store_open(&g->cfg, &s, &err) < 0)
		return fail(&err);
	if (!cmd->own_repairs)
		warn_repairs(s);
	r = cmd->run(s, g, argc, argv);
	store_close(s);
	return r;
}

int main(int argc, char **argv)
{
	/* The environment channels (a root-run agent: secure_getenv); the flags win. */
	struct globals g = {
	    .cfg = {.state_dir = STORE_DEFAULT_STATE_DIR, .driver = "reflink"},
	    .fc = {.server = secure_getenv("IMCACHE_SERVER"),
		   .token = secure_getenv("IMCACHE_TOKEN"),
		   .list_in_use = attach_list,
		   .remove_snapshot = attach_snapshot_remove},
	};
	const struct command *cmd;
	imc_error err = {0};
	int r;

	g.cfg.driver_opts = g.driver_opts;
	g.fc.insecure_registries = g.insecure;
	if (attach_lower_policy_parse(secure_getenv("IMCACHE_LOWER_GRACE"),
				      secure_getenv("IMCACHE_LOWER_MAX"), &g.lower, &err) < 0 ||
	    sources_from_env(&g.fc, &err) < 0)
		return fail(&err);
	r = imc_cli_getopt(argc, argv, "+", global_opts, IMC_ARRAY_SIZE(global_opts), &g);
	if (r == HELP_DONE)
		return 0;
	if (r == IMC_CLI_REJECTED || (r == 0 && optind >= argc)) {
		usage(stderr);
		return 2;
	}
	if (r != 0)
		return r;
	attach_reporter_init(&g.reporter, g.fc.server, g.fc.token);
	cmd = command_of(argv[optind]);
	if (!cmd) {
		fprintf(stderr, "imc-attach: unknown command \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	return run_command(cmd, &g, argc - optind, argv + optind);
}
