/* imc-snapshotter: a containerd proxy snapshot plugin on a unix socket. */
#include <getopt.h>
#include <limits.h>
#include <unistd.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../store/store.h"
#include "../common/priv.h"
#include "attach.h"
#include "snap.h"

#define DEFAULT_ADDRESS "/run/imcache/snapshotter.sock"
#define DEFAULT_STATE	"/var/lib/imcache"

static volatile sig_atomic_t stop;

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imc-snapshotter [--address PATH] [--state-dir DIR] [--server URL]\n"
	    "                       [--token T] [--auto-create] [-v]\n"
	    "\n"
	    "Serves containerd.services.snapshots.v1.Snapshots (gRPC, h2c) on the unix socket\n"
	    "PATH (default " DEFAULT_ADDRESS "), with the overlayfs snapshotter's semantics;\n"
	    "its snapshots and records live in DIR/snapshotter (DIR default " DEFAULT_STATE ").\n"
	    "When DIR holds the agent's store, images of its caches are served from them (the\n"
	    "top ChainID of a cached image is committed at once; containers get the cache's\n"
	    "tree as their lower, one read-only mount per cache).\n"
	    "--server URL: a layer no local cache serves is looked up on imcd at URL (by its\n"
	    "ChainID) and a Ready cache whose image tops that chain attached lazily (its chunks\n"
	    "fetched on demand by imc-attach's FUSE server) as the host's shared lower under\n"
	    "DIR/lowers; DIR's store is made if need be.\n"
	    "--token T: imcd's bearer token (default $IMCACHE_TOKEN), the tenant's.\n"
	    "--auto-create: with --server, a CRI pull that imcd has no cache for asks imcd to\n"
	    "create one of the image ref it was pulled as (once per ref per 10 minutes), and\n"
	    "goes on without waiting.\n"
	    "containerd's config names it as\n"
	    "  [proxy_plugins.imcache]\n"
	    "    type = \"snapshot\"\n"
	    "    address = \"PATH\"\n"
	    "-v, --verbose logs each cleanup; -h, --help prints this help.\n");
}

static void on_signal(int sig)
{
	stop = sig;
}

/* The agent's store in state, when there is one (reflink driver): its caches are served.  None
 * is made here (a store would create its pool). */
static int open_store(const char *state, bool make, struct store **ret, imc_error *err)
{
	const struct store_config cfg = {.state_dir = state};
	_cleanup_free_ char *pool = imc_path_join(state, "pool");
	struct stat st;

	*ret = NULL;
	if (!pool)
		return imc_err(err, ENOMEM, "out of memory");
	if (!make && (stat(pool, &st) < 0 || !S_ISDIR(st.st_mode))) {
		imc_info("%s: no store: no snapshot is served from caches", state);
		return 0;
	}
	if (imc_priv_inject_from_env(err) < 0 || store_open(&cfg, ret, err) < 0)
		return imc_err_wrap(err, "store %s", state);
	if (strcmp(store_driver_name(*ret), "reflink") != 0) {
		imc_warn("store %s: driver %s: caches are served from the reflink driver only",
			 state, store_driver_name(*ret));
		store_close(*ret);
		*ret = NULL;
	}
	return 0;
}

static int serve(const char *address, const char *state, const char *server, const char *token,
		 bool auto_create, imc_error *err)
{
	_cleanup_free_ char *root = imc_path_join(state, "snapshotter");
	_cleanup_free_ char *dir = strdup(address);
	struct grpc_server *srv = NULL;
	struct snap *s = NULL;
	struct store *st = NULL;
	int r;

	if (!root || !dir)
		return imc_err(err, ENOMEM, "out of memory");
	if (imc_mkdir_p(dirname(dir), 0755, err) < 0 ||
	    open_store(state, server != NULL, &st, err) < 0)
		return err->code;
	if (snap_open(root, &s, err) < 0) {
		store_close(st);
		return err->code;
	}
	if (snap_set_store(s, st, err) < 0 ||
	    (server && snap_set_server(s, server, token, auto_create, err) < 0)) {
		snap_close(s);
		store_close(st);
		return err->code;
	}
	r = grpc_server_new(snap_service_methods, snap_service_n_methods, s, &srv, err);
	if (r == 0)
		r = grpc_server_listen(srv, address, err);
	if (r == 0) {
		imc_info("serving snapshots of %s on %s", root, address);
		r = grpc_server_run(srv, &stop, err);
	}
	grpc_server_free(srv);
	snap_close(s);
	store_close(st);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"address", required_argument, NULL, 'a'}, {"state-dir", required_argument, NULL, 's'},
	    {"server", required_argument, NULL, 'S'},  {"token", required_argument, NULL, 'T'},
	    {"auto-create", no_argument, NULL, 'C'},   {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},	       {0},
	};
	const char *address = DEFAULT_ADDRESS, *state = DEFAULT_STATE, *server = NULL;
	const char *token = secure_getenv("IMCACHE_TOKEN");
	bool auto_create = false;
	struct sigaction sa = {.sa_handler = on_signal};
	imc_error err = {0};
	int c;

	while ((c = getopt_long(argc, argv, "a:s:S:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			address = optarg;
			break;
		case 's':
			state = optarg;
			break;
		case 'S':
			server = optarg;
			break;
		case 'T':
			token = optarg;
			break;
		case 'C':
			auto_create = true;
			break;
		case 'v':
			imc_log_set_level(IMC_LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (auto_create && !server) {
		fprintf(stderr, "imc-snapshotter: --auto-create needs --server\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (serve(address, state, server, token && *token ? token : NULL, auto_create, &err) < 0) {
		fprintf(stderr, "imc-snapshotter: %s\n", err.msg);
		return 1;
	}
	imc_info("%s: stopping", strsignal(stop));
	return 0;
}
