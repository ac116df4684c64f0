/* imcd: the imcache REST service.  Its options are a table (options[]), one row each. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "../attach/attach.h"
#include "../common/cli.h"
#include "../dist/dist.h"
#include "../store/store.h"
#include "api.h"
#include "auth.h"
#include "conns.h"

#define MAX_INSECURE_REGISTRIES 64
#define MAX_DATA_ALLOW		64
#define MAX_DRIVER_OPTS		32
#define LISTEN_URL_MAX		160 /* "unix:" and a sun_path fit */

struct options {
	const char *listen;
	const char *state_dir;
	const char *driver;
	uint64_t pool_size;
	const char *insecure[MAX_INSECURE_REGISTRIES + 1];
	size_t n_insecure;
	const char *driver_opts[MAX_DRIVER_OPTS + 1];
	size_t n_driver_opts;
	const char *ready_file;
	unsigned threads;
	const char *auth_file;
	const char *ca_file;
	const char *hf_endpoint;
	const char *config; /* NULL: API_CONFIG_DEFAULT when it exists */
	bool no_config;	    /* not even API_CONFIG_DEFAULT */
	const char *tls_cert;
	const char *tls_key;
	unsigned build_workers;	      /* 0: api/caches.c's default (2) */
	double evict_high, evict_low; /* 0: 0.90 / 0.80 */
	unsigned sweep_interval_ms;   /* 0: 60 s */
	struct api_http_limits http;  /* 0: the config's, else the default */
	unsigned day_seconds;	      /* 0: 86400; test builds only: $IMCD_DAY_SECONDS */
	char platform[OCI_PLATFORM_MAX];
	unsigned resolve_timeout_ms;		    /* 0: 30 s */
	unsigned shutdown_grace_ms;		    /* 0: 30 s */
	unsigned tenant_builds;			    /* 0: api/caches.c's rule */
	uint64_t blob_cache_max;		    /* 0: the config's, else no cap */
	const char *data_allow[MAX_DATA_ALLOW + 1]; /* --allow-data-destination */
	size_t n_data_allow;
	uint64_t min_rate, min_rate_window_s; /* 0: net/'s defaults (64 KiB/s, 60 s) */
	uint64_t max_blob_size;		      /* 0: OCI_BLOB_MAX_DEFAULT */
};

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imcd --listen HOST:PORT|unix:PATH --state-dir DIR [--driver reflink|thin]\n"
	    "            [--driver-opt KEY=VALUE]... [--pool-size BYTES]\n"
	    "            [--insecure-registry HOST:PORT]... [--auth-file FILE] [--ca-file FILE]\n"
	    "            [--hf-endpoint URL] [--ready-file FILE] [--threads N]\n"
	    "            [--config FILE|--no-config] [--tls-cert FILE --tls-key FILE]\n"
	    "            [--build-workers N] [--evict-high F] [--evict-low F]\n"
	    "            [--sweep-interval SEC] [--platform OS/ARCH[/VARIANT]]\n"
	    "            [--resolve-timeout SEC] [--shutdown-grace SEC]\n"
	    "            [--tenant-builds N] [--blob-cache-max BYTES]\n"
	    "            [--log-level error|warn|info|debug]\n"
	    "            [--max-connections N] [--max-connections-per-client N]\n"
	    "            [--connection-reserve N] [--request-timeout SEC]\n"
	    "            [--allow-data-destination ADDR[/PREFIX][:PORT]]... [--min-rate BYTES]\n"
	    "            [--min-rate-window SEC] [--max-blob-size BYTES]\n"
	    "\n"
	    "  --listen HOST:PORT    IPv4 address or [IPv6]:PORT; port 0 picks a free port\n"
	    "                        (default 127.0.0.1:8080)\n"
	    "  --listen unix:PATH    a Unix socket (mode 0660), removed on a clean stop\n"
	    "  --state-dir DIR       metadata, blobs and the store (default %s)\n"
	    "  --driver NAME         store driver: reflink (default) or thin\n"
	    "  --driver-opt K=V      a store driver option (repeatable; see docs/architecture.md)\n"
	    "  --pool-size BYTES     size of the store's pool file (K, M, G, T suffixes)\n"
	    "  --insecure-registry H:P  reach this registry over plain HTTP (repeatable)\n"
	    "  --auth-file FILE      registry credentials, docker config.json style (\"auths\"),\n"
	    "                        read at each build; a request's credentials come first\n"
	    "  --ca-file FILE        extra CA certificates (PEM) for HTTPS, besides the system's\n"
	    "  --hf-endpoint URL     where hf:// data resolves (default $HF_ENDPOINT, else\n"
	    "                        https://huggingface.co)\n"
	    "  --ready-file FILE     once listening, write http://HOST:PORT or unix:PATH there\n"
	    "  --config FILE         bearer tokens and their tenants, quotas, TLS, defaults\n"
	    "                        (default %s when it exists; without one\n"
	    "                        there is no auth: see docs/security.md)\n"
	    "  --no-config           do not read %s (auth off)\n"
	    "  --tls-cert FILE       serve HTTPS with this PEM certificate chain ...\n"
	    "  --tls-key FILE        ... and this PEM private key (not readable by others)\n"
	    "  --build-workers N     builds at once (1-64, default 2)\n"
	    "  --tenant-builds N     builds one tenant may run at once (1-64; default: all the\n"
	    "                        workers but one when tokens name two or more tenants)\n"
	    "  --evict-high F        evict least recently used caches once the pool is this full\n"
	    "                        (0-1, default 0.90) ...\n"
	    "  --evict-low F         ... until it is below this (default 0.80)\n"
	    "  --sweep-interval SEC  how often expiry and eviction run (default 60; 0.2 works)\n"
	    "  --platform P          the platform of images whose request names none\n"
	    "                        (default linux/amd64; linux/arm64/v8, linux/arm/v7, ...)\n"
	    "  --resolve-timeout SEC match=best: how long one registry lookup may take (1-600,\n"
	    "                        default 30)\n"
	    "  --shutdown-grace SEC  on SIGTERM, how long running builds may go on before they\n"
	    "                        are cancelled (1-3600, default 30)\n"
	    "  --blob-cache-max BYTES  cap the blob store: over it, the least recently used\n"
	    "                        layer blobs go (K, M, G, T suffixes; default: no cap, only\n"
	    "                        blobs that no cache needs go)\n"
	    "  --threads N           API server threads (1-64, default one per CPU)\n"
	    "  --allow-data-destination A  data (https://, hf://) may reach this loopback,\n"
	    "                        private or link-local address (repeatable; none by default)\n"
	    "  --min-rate BYTES      a registry or data transfer slower than this ...\n"
	    "  --min-rate-window SEC ... for this long is aborted (default 64K over 60 s)\n"
	    "  --max-blob-size BYTES a layer declaring more is refused (default 64G)\n"
	    "  --log-level LEVEL     error, warn, info (default) or debug, on stderr\n"
	    "  --max-connections N   client connections open at once (default %d)\n"
	    "  --max-connections-per-client N  ... from one client address (default %d)\n"
	    "  --connection-reserve N  ... of which kept for /healthz and /metrics (default %d)\n"
	    "  --request-timeout SEC a request (line, headers, body) must be all in within this\n"
	    "                        of its connection opening or the previous answer (default "
	    "%d)\n"
	    "  -h, --help            this help\n",
	    STORE_DEFAULT_STATE_DIR, API_CONFIG_DEFAULT, API_CONFIG_DEFAULT,
	    API_CONNECTIONS_DEFAULT, API_PER_CLIENT_DEFAULT, API_RESERVE_DEFAULT,
	    API_REQUEST_TIMEOUT_DEFAULT);
}

static int parse_size(const char *s, uint64_t *ret)
{
	char *end = NULL;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (*end) {
	case 'T':
		shift += 10; /* fall through */
	case 'G':
		shift += 10; /* fall through */
	case 'M':
		shift += 10; /* fall through */
	case 'K':
		shift += 10;
		end++;
		break;
	case '\0':
		break;
	default:
		return -EINVAL;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*ret = (uint64_t)v << shift;
	return 0;
}

static int parse_log_level(const char *s)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(names); i++)
		if (strcmp(s, names[i]) == 0) {
			imc_log_set_level((enum imc_log_level)i);
			return 0;
		}
	return -EINVAL;
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "imcd: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	return -1;
}

/* Seconds, fractions allowed, 0.01-86400, as milliseconds. */
static int parse_seconds_ms(const char *s, unsigned *ret)
{
	char *end = NULL;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0.01 && v <= 86400))
		return -1;
	*ret = (unsigned)(v * 1000 + 0.5);
	return 0;
}

/* A fraction of the pool in (0, 1]. */
static int parse_fraction(const char *s, double *ret)
{
	char *end = NULL;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0 && v <= 1))
		return -1;
	*ret = v;
	return 0;
}

/* The options' take functions (common/cli.h): 0, -1 after a usage error, 1 after --help. */
#define OPTS(p) ((struct options *)(p))

static int take_pool_size(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_size(arg, &OPTS(o)->pool_size) < 0)
		return usage_error("--pool-size %s: want BYTES[K|M|G|T]", arg);
	return 0;
}

static int take_insecure(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (OPTS(o)->n_insecure >= MAX_INSECURE_REGISTRIES)
		return usage_error("%s: too many --insecure-registry (at most 64)", arg);
	OPTS(o)->insecure[OPTS(o)->n_insecure++] = arg;
	return 0;
}

static int take_driver_opt(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (OPTS(o)->n_driver_opts >= MAX_DRIVER_OPTS)
		return usage_error("%s: too many --driver-opt (at most 32)", arg);
	if (!strchr(arg, '='))
		return usage_error("--driver-opt %s: want KEY=VALUE", arg);
	OPTS(o)->driver_opts[OPTS(o)->n_driver_opts++] = arg;
	return 0;
}

static int take_log_level(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_log_level(arg) < 0)
		return usage_error("--log-level %s: want error|warn|info|debug", arg);
	return 0;
}

/* A count in 1-max into *ret; fmt says what is wanted. */
static int take_count(const char *arg, uint64_t max, const char *fmt, unsigned *ret)
{
	uint64_t n = 0;

	if (parse_size(arg, &n) < 0 || n == 0 || n > max)
		return usage_error(fmt, arg);
	*ret = (unsigned)n;
	return 0;
}

static int take_threads(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, 64, "--threads %s: want 1-64", &OPTS(o)->threads);
}

static int take_build_workers(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, 64, "--build-workers %s: want 1-64", &OPTS(o)->build_workers);
}

/* --evict-high, --evict-low: the double at opt->off. */
static int take_fraction(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_fraction(arg, (double *)((char *)o + opt->off)) < 0) {
		fprintf(stderr, "imcd: --%s %s: want a fraction in (0, 1]\n", opt->name, arg);
		return -1;
	}
	return 0;
}

static int take_sweep_interval(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_seconds_ms(arg, &OPTS(o)->sweep_interval_ms) < 0)
		return usage_error("--sweep-interval %s: want 0.01-86400 seconds", arg);
	return 0;
}

/* The HTTP limits: how they fit together is checked once the config is read. */
static int take_max_connections(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, API_CONNECTIONS_MAX, "--max-connections %s: want 2-65536",
			  &OPTS(o)->http.max_connections);
}

static int take_per_client(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, API_CONNECTIONS_MAX, "--max-connections-per-client %s: want 1-65536",
			  &OPTS(o)->http.per_client);
}

static int take_reserve(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, API_CONNECTIONS_MAX - 1, "--connection-reserve %s: want 1-65535",
			  &OPTS(o)->http.reserve);
}

static int take_request_timeout(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, API_REQUEST_TIMEOUT_MAX, "--request-timeout %s: want 1-3600 seconds",
			  &OPTS(o)->http.request_timeout_s);
}

static int take_platform(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (oci_platform_normalize(arg, OPTS(o)->platform, sizeof(OPTS(o)->platform), NULL) < 0)
		return usage_error("--platform %s: want OS/ARCH[/VARIANT] (linux/arm64)", arg);
	return 0;
}

/* match=best: seconds, kept as milliseconds. */
static int take_resolve_timeout(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	unsigned s = 0;

	if (take_count(arg, 600, "--resolve-timeout %s: want 1-600 seconds", &s) < 0)
		return -1;
	OPTS(o)->resolve_timeout_ms = s * 1000;
	return 0;
}

static int take_shutdown_grace(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	unsigned s = 0;

	if (take_count(arg, 3600, "--shutdown-grace %s: want 1-3600 seconds", &s) < 0)
		return -1;
	OPTS(o)->shutdown_grace_ms = s * 1000;
	return 0;
}

static int take_tenant_builds(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	return take_count(arg, 64, "--tenant-builds %s: want 1-64", &OPTS(o)->tenant_builds);
}

static int take_blob_cache_max(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_size(arg, &OPTS(o)->blob_cache_max) < 0 || OPTS(o)->blob_cache_max == 0)
		return usage_error("--blob-cache-max %s: want BYTES[K|M|G|T] above 0", arg);
	return 0;
}

static int take_data_allow(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (OPTS(o)->n_data_allow >= MAX_DATA_ALLOW)
		return usage_error("%s: too many --allow-data-destination (at most 64)", arg);
	OPTS(o)->data_allow[OPTS(o)->n_data_allow++] = arg;
	return 0;
}

static int take_min_rate(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_size(arg, &OPTS(o)->min_rate) < 0 || OPTS(o)->min_rate == 0)
		return usage_error("--min-rate %s: want BYTES[K|M|G] per second", arg);
	return 0;
}

static int take_min_rate_window(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	uint64_t *w = &OPTS(o)->min_rate_window_s;

	if (parse_size(arg, w) < 0 || *w == 0 || *w > 86400)
		return usage_error("--min-rate-window %s: want 1-86400 seconds", arg);
	return 0;
}

static int take_max_blob_size(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (parse_size(arg, &OPTS(o)->max_blob_size) < 0 || OPTS(o)->max_blob_size == 0)
		return usage_error("--max-blob-size %s: want BYTES[K|M|G|T]", arg);
	return 0;
}

static int take_help(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	usage(stdout);
	return 1;
}

/* One row per option (the order is getopt_long's for an ambiguous abbreviation). */
#define O(field) offsetof(struct options, field)
static const struct imc_cli_opt options[] = {
    {"listen", required_argument, 0, imc_cli_string, O(listen)},
    {"state-dir", required_argument, 0, imc_cli_string, O(state_dir)},
    {"driver", required_argument, 0, imc_cli_string, O(driver)},
    {"driver-opt", required_argument, 0, take_driver_opt, 0},
    {"auth-file", required_argument, 0, imc_cli_string, O(auth_file)},
    {"ca-file", required_argument, 0, imc_cli_string, O(ca_file)},
    {"hf-endpoint", required_argument, 0, imc_cli_string, O(hf_endpoint)},
    {"pool-size", required_argument, 0, take_pool_size, 0},
    {"insecure-registry", required_argument, 0, take_insecure, 0},
    {"ready-file", required_argument, 0, imc_cli_string, O(ready_file)},
    {"log-level", required_argument, 0, take_log_level, 0},
    {"threads", required_argument, 0, take_threads, 0},
    {"config", required_argument, 0, imc_cli_string, O(config)},
    {"no-config", no_argument, 0, imc_cli_true, O(no_config)},
    {"tls-cert", required_argument, 0, imc_cli_string, O(tls_cert)},
    {"tls-key", required_argument, 0, imc_cli_string, O(tls_key)},
    {"build-workers", required_argument, 0, take_build_workers, 0},
    {"evict-high", required_argument, 0, take_fraction, O(evict_high)},
    {"evict-low", required_argument, 0, take_fraction, O(evict_low)},
    {"sweep-interval", required_argument, 0, take_sweep_interval, 0},
    {"max-connections", required_argument, 0, take_max_connections, 0},
    {"max-connections-per-client", required_argument, 0, take_per_client, 0},
    {"connection-reserve", required_argument, 0, take_reserve, 0},
    {"request-timeout", required_argument, 0, take_request_timeout, 0},
    {"platform", required_argument, 0, take_platform, 0},
    {"resolve-timeout", required_argument, 0, take_resolve_timeout, 0},
    {"shutdown-grace", required_argument, 0, take_shutdown_grace, 0},
    {"tenant-builds", required_argument, 0, take_tenant_builds, 0},
    {"blob-cache-max", required_argument, 0, take_blob_cache_max, 0},
    {"allow-data-destination", required_argument, 0, take_data_allow, 0},
    {"min-rate", required_argument, 0, take_min_rate, 0},
    {"min-rate-window", required_argument, 0, take_min_rate_window, 0},
    {"max-blob-size", required_argument, 0, take_max_blob_size, 0},
    {"help", no_argument, 'h', take_help, 0},
};
#undef O

/* Returns 0 to run, 1 to exit 0 (--help), -1 on a usage error. */
static int parse_args(int argc, char **argv, struct options *o)
{
	int r;

	*o = (struct options){0}; /* listen and state_dir: the config's, else the defaults */
	r = imc_cli_getopt(argc, argv, "", options, IMC_ARRAY_SIZE(options), o);
	if (r == IMC_CLI_REJECTED) {
		usage(stderr);
		return -1;
	}
	if (r != 0)
		return r;
	if (optind < argc)
		return usage_error("unexpected argument \"%s\"", argv[optind]);
	if (o->config && o->no_config)
		return usage_error("%s: --config and --no-config exclude each other", o->config);
	if (o->evict_high && o->evict_low && o->evict_low > o->evict_high)
		return usage_error("%s: --evict-low is above --evict-high", "--evict-low");
	if (!o->tls_cert != !o->tls_key)
		return usage_error("%s: --tls-cert and --tls-key go together",
				   o->tls_cert ? o->tls_cert : o->tls_key);
	return 0;
}

/* The environment channels, all read here: $HF_ENDPOINT (the Hugging Face convention) when
 * --hf-endpoint is not given, and in test builds only the retention day's length. */
static void read_environment(struct options *o)
{
	const char *hf = secure_getenv("HF_ENDPOINT");

	if (!o->hf_endpoint && hf && *hf)
		o->hf_endpoint = hf;
#ifdef IMC_TESTING
	/* The lifecycle test's 2-second day; release binaries have no such knob. */
	const char *day = secure_getenv("IMCD_DAY_SECONDS");
	uint64_t n = 0;

	if (day && parse_size(day, &n) == 0 && n > 0 && n <= 86400)
		o->day_seconds = (unsigned)n;
#endif
}

/* http://HOST:PORT or unix:PATH and a newline, replacing path atomically. */
static int write_ready_file(const char *path, const char *url, imc_error *err)
{
	char tmp[PATH_MAX];
	_cleanup_close_ int fd = -1;
	char line[LISTEN_URL_MAX + 1];
	int n = snprintf(line, sizeof(line), "%s\n", url);
	int r;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= sizeof(tmp))
		return imc_err(err, ENAMETOOLONG, "%s: name too long", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s", tmp);
	r = imc_write_all(fd, line, (size_t)n);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return imc_err_sys(err, -r, "%s", path);
	}
	return 0;
}

static void on_event(void *ctx, enum api_event ev, const char *id, const char *message)
{
	switch (ev) {
	case API_EVENT_BUILD_START:
		imc_info("cache %s: building %s", id, message);
		break;
	case API_EVENT_BUILD_READY:
		imc_info("cache %s: %s", id, message);
		break;
	case API_EVENT_BUILD_FAILED:
		imc_warn("cache %s: Failed: %s", id, message);
		break;
	case API_EVENT_PERSIST_FAILED:
		imc_error_log("cache %s: %s", id, message);
		break;
	case API_EVENT_EXPIRED:
		imc_info("cache %s: %s", id, message);
		break;
	}
}

/* The chunk and index files of an export that a killed imcd cut short (before the chunk store
 * opens: no export runs yet). */
static void repair_partial_chunks(const char *state_dir, json_t *repairs)
{
	uint64_t bytes = 0;
	imc_error e = {0};
	size_t n = 0;

	if (dist_chunks_remove_partial(state_dir, &n, &bytes, &e) < 0)
		imc_repair_report(repairs, "chunks: cannot remove partial exports: %s", e.msg);
	else if (n)
		imc_repair_report(
		    repairs,
		    "chunks: removed %zu partial file(s) of an export a crash cut short "
		    "(%llu bytes)",
		    n, (unsigned long long)bytes);
}

static void log_repairs(json_t *repairs)
{
	size_t i;
	json_t *v;

	json_array_foreach(repairs, i, v)
	{
		imc_warn("repair: %s", json_string_value(v));
	}
}

/* The running service: everything main() tears down in reverse. */
struct service {
	struct api_config config; /* zero (auth off) without a config file */
	struct api_tls tls;	  /* cert_pem NULL: plain HTTP */
	struct store *store;
	struct dist_chunks *chunks;	/* the chunk store the distribution routes serve */
	struct dist_exporter *exporter; /* its exports (once Ready) and forgets (once gone) */
	struct api_caches *caches;
	struct api_server *server;
	struct net_client *registry_net, *data_net; /* the HTTP clients of registries and data */
	char url[LISTEN_URL_MAX]; /* set once listening; a unix: socket file is removed on stop */
};

/* The config file (--config, else the default one when it exists), then what it gives as
 * defaults for options not on the command line, then the TLS key pair. */
static int load_config(struct options *o, struct service *svc, imc_error *err)
{
	const char *path = o->config;
	const char *cert, *key;
	int r;

	if (!path && !o->no_config && access(API_CONFIG_DEFAULT, F_OK) == 0)
		path = API_CONFIG_DEFAULT;
	if (path) {
		r = api_config_load(path, &svc->config, err);
		if (r < 0)
			return r;
		imc_info("config %s: %s, %zu token(s), quotas for %zu tenant(s)", path,
			 svc->config.auth ? "auth on" : "auth off (no tokens)",
			 svc->config.n_tokens, svc->config.n_limits);
	}
	if (!o->listen)
		o->listen = svc->config.listen ? svc->config.listen : "127.0.0.1:8080";
	if (!o->state_dir)
		o->state_dir =
		    svc->config.state_dir ? svc->config.state_dir : STORE_DEFAULT_STATE_DIR;
	if (!o->blob_cache_max)
		o->blob_cache_max = svc->config.blob_cache_max;
	cert = o->tls_cert ? o->tls_cert : svc->config.tls_cert;
	key = o->tls_key ? o->tls_key : svc->config.tls_key;
	if (!cert)
		return 0;
	r = api_tls_load(cert, key, &svc->tls, err);
	if (r == 0)
		imc_info("TLS: certificate %s", cert);
	return r;
}

/* http://HOST:PORT becomes https://HOST:PORT when serving TLS (unix:PATH stays). */
static void url_set_https(char *url, size_t size)
{
	const char *http = "http://";
	size_t n = strlen(url);

	if (strncmp(url, http, strlen(http)) != 0 || n + 2 > size)
		return;
	memmove(url + 5, url + 4, n - 4 + 1);
	url[4] = 's';
}

/* Every connection is a descriptor: make room for them and for the store's own (a soft limit
 * below the hard one is raised; one that stays too low is warned about). */
static void raise_fd_limit(unsigned connections)
{
	rlim_t want = (rlim_t)connections + 256;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
		imc_warn("open files limited to %llu: fewer than the %u connections allow "
			 "(raise LimitNOFILE, or lower --max-connections)",
			 (unsigned long long)rl.rlim_cur, connections);
}

/* How many tenants the tokens name (2 means "two or more": all the caller asks). */
static size_t tenants_of(const struct api_config *cfg)
{
	for (size_t i = 1; i < cfg->n_tokens; i++)
		if (strcmp(cfg->tokens[i].tenant, cfg->tokens[0].tenant) != 0)
			return 2;
	return cfg->n_tokens ? 1 : 0;
}

/* The two HTTP clients: registries (insecure ones named), and data, whose every connection is
 * checked against the allowed destinations (--allow-data-destination, then the config's
 * "dataAllowDestinations"). */
static int net_open(const struct options *o, struct service *svc, imc_error *err)
{
	const char *allow[2 * MAX_DATA_ALLOW + 1] = {0};
	size_t n = 0;
	struct net_config cfg = {
	    .ca_file = o->ca_file,
	    .insecure_hosts = o->insecure,
	    .limits = {.min_rate = o->min_rate, .min_rate_window_s = o->min_rate_window_s}};
	int r = net_client_new(&cfg, &svc->registry_net, err);

	if (r < 0)
		return imc_err_wrap(err, "registry client");
	for (size_t i = 0; i < o->n_data_allow; i++)
		allow[n++] = o->data_allow[i];
	for (size_t i = 0; i < svc->config.n_data_allow && n < 2 * MAX_DATA_ALLOW; i++)
		allow[n++] = svc->config.data_allow[i];
	cfg.insecure_hosts = NULL;
	cfg.check_destination = true;
	cfg.allow_destinations = allow;
	r = net_client_new(&cfg, &svc->data_net, err);
	return r < 0 ? imc_err_wrap(err, "data client") : 0;
}

/* The cache table, its builds and sweeper on the HTTP clients, store, chunk store and exporter
 * just opened. */
static int open_caches(const struct options *o, struct service *svc, json_t *repairs,
		       imc_error *err)
{
	return api_caches_open(
	    &(struct api_caches_config){.state_dir = o->state_dir,
					.store = svc->store,
					.insecure_registries = o->insecure,
					.auth_file = o->auth_file,
					.ca_file = o->ca_file,
					.hf_endpoint = o->hf_endpoint,
					.platform =
					    o->platform[0] ? o->platform : NULL, /* linux/amd64 */
					.registry_net = svc->registry_net,
					.data_net = svc->data_net,
					.max_blob_size = o->max_blob_size,
					.limits = svc->config.limits,
					.n_limits = svc->config.n_limits,
					.build_workers = o->build_workers,
					.evict_high = o->evict_high,
					.evict_low = o->evict_low,
					.sweep_interval_ms = o->sweep_interval_ms,
					.day_seconds = o->day_seconds,
					.blob_cache_max = o->blob_cache_max,
					.resolve_timeout_ms = o->resolve_timeout_ms,
					.shutdown_grace_ms = o->shutdown_grace_ms,
					.tenant_builds = o->tenant_builds,
					.multi_tenant = tenants_of(&svc->config) > 1,
					.on_event = on_event,
					.on_snapshot_removed = api_dist_snapshot_removed,
					.on_snapshot_ready = api_dist_snapshot_ready,
					.snapshot_ctx = svc->exporter,
					.remove_snapshot = attach_snapshot_remove,
					.chunks = svc->chunks,
					.exporter = svc->exporter},
	    repairs, &svc->caches, err);
}

static int start(const struct options *o, struct service *svc, imc_error *err)
{
	const struct store_config scfg = {.state_dir = o->state_dir,
					  .driver = o->driver,
					  .pool_size = o->pool_size,
					  .driver_opts = o->driver_opts};
	_cleanup_json_ json_t *repairs = json_array();
	_cleanup_close_ int fd = -1;
	struct api_http_limits http;
	char *url = svc->url;
	int r;

	if (!repairs)
		return imc_err(err, ENOMEM, "out of memory");
	/* The flags win over the config's "http"; what does not fit fails before anything starts.
	 */
	if (api_http_limits_resolve(&o->http, &svc->config.http, &http, err) < 0)
		return err->code;
	raise_fd_limit(http.max_connections);
	/* The socket first: a taken port fails before the store sets anything up. */
	r = api_listen_open(o->listen, &fd, url, sizeof(svc->url), err);
	if (r == 0)
		r = net_open(o, svc, err);
	if (r == 0)
		r = store_open(&scfg, &svc->store, err);
	if (r == 0)
		repair_partial_chunks(o->state_dir, repairs);
	if (r == 0)
		r = dist_chunks_open(o->state_dir, svc->store, &svc->chunks, err);
	if (r == 0)
		r = dist_exporter_start(svc->chunks, &svc->exporter, err);
	if (r < 0)
		return r;
	if (!svc->config.auth && !api_listen_is_local(o->listen))
		imc_warn(
		    "listening on %s without auth: anyone who reaches it can create and delete "
		    "caches (give bearer tokens in --config, see docs/security.md)",
		    o->listen);
	log_repairs(store_repairs(svc->store));
	r = open_caches(o, svc, repairs, err);
	log_repairs(repairs);
	if (r == 0) /* a forget ends an export's hold on a removed snapshot: trim again */
		dist_exporter_set_on_forgotten(svc->exporter, api_caches_space_changed,
					       svc->caches);
	if (r == 0)
		r = api_server_start_secure(
		    &(struct api_server_config){.listen_fd = fd,
						.caches = svc->caches,
						.threads = o->threads,
						.limits = http},
		    &(struct api_server_security){.auth = &svc->config,
						  .tls = svc->tls.cert_pem ? &svc->tls : NULL},
		    &svc->server, err);
	if (r < 0)
		return r;
	fd = -1; /* the server's now */
	if (svc->tls.cert_pem)
		url_set_https(url, sizeof(svc->url));
	if (o->ready_file)
		r = write_ready_file(o->ready_file, url, err);
	if (r == 0)
		imc_info("listening on %s (state %s, store driver %s; connections: %u, %u per "
			 "client, %u in reserve, %u s per request)",
			 url, o->state_dir, store_driver_name(svc->store), http.max_connections,
			 http.per_client, http.reserve, http.request_timeout_s);
	return r;
}

static void stop(struct service *svc)
{
	imc_error err = {0};

	api_server_stop(svc->server);
	svc->server = NULL;
	if (svc->url[0] && api_listen_remove(svc->url, &err) < 0)
		imc_warn("%s", err.msg);
	svc->url[0] = '\0';
	if (svc->caches)
		imc_info("waiting for running builds, if any (they are cancelled past the "
			 "shutdown grace)");
	dist_exporter_set_on_forgotten(svc->exporter, NULL, NULL); /* the table goes */
	api_caches_close(svc->caches);
	svc->caches = NULL;
	/* After the table: the builds that ended queued exports, removals forgets. */
	dist_exporter_stop(svc->exporter);
	svc->exporter = NULL;
	dist_chunks_close(svc->chunks);
	svc->chunks = NULL;
	store_close(svc->store);
	svc->store = NULL;
	net_client_free(svc->registry_net);
	net_client_free(svc->data_net);
	svc->registry_net = svc->data_net = NULL;
	api_tls_free(&svc->tls);
	api_config_free(&svc->config);
}

int main(int argc, char **argv)
{
	struct options o;
	struct service svc = {0};
	imc_error err = {0};
	sigset_t sigs;
	int r, sig = 0;

	r = parse_args(argc, argv, &o);
	if (r != 0)
		return r > 0 ? 0 : 2;
	read_environment(&o);
	/* Every thread started from here on inherits the mask: only sigwait() sees these. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	r = load_config(&o, &svc, &err);
	if (r == 0)
		r = start(&o, &svc, &err);
	if (r < 0) {
		imc_error_log("%s", err.msg);
		stop(&svc);
		return 1;
	}
	sigwait(&sigs, &sig);
	imc_info("%s: stopping", strsignal(sig));
	stop(&svc);
	imc_info("stopped");
	return 0;
}
