/* imcd's command line: the option table (options[], one row each, common/cli.h), what each
 * option takes, the usage text, and the environment it reads (api/imcd.h).  Start-up and the
 * wiring of the service are api/imcd_main.c's. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../dist/dist.h"
#include "../store/store.h"
#include "auth.h"
#include "imcd.h"

/* The synopsis, then the options in two groups (usage_where, usage_tuning). */
static const char usage_synopsis[] =
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
    "            [--chunk-size BYTES] [--export ready|request]\n"
    "\n";

/* Where things are, and whom to trust. */
static void usage_where(FILE *f)
{
	fprintf(
	    f,
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
	    "  --tls-key FILE        ... and this PEM private key (not readable by others)\n",
	    STORE_DEFAULT_STATE_DIR, API_CONFIG_DEFAULT, API_CONFIG_DEFAULT);
}

/* Builds, eviction, transfers, logging and connections. */
static void usage_tuning(FILE *f)
{
	fprintf(
	    f,
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
	    "  --chunk-size BYTES    chunks of the indexes exported from now on: a power of two,\n"
	    "                        64K-64M (default 4M; indexes already exported keep theirs)\n"
	    "  --export WHEN         a cache's chunk index is exported when it is ready (default)\n"
	    "                        or on the first request for it (request)\n"
	    "  --log-level LEVEL     error, warn, info (default) or debug, on stderr\n"
	    "  --max-connections N   client connections open at once (default %d)\n"
	    "  --max-connections-per-client N  ... from one client address (default %d)\n"
	    "  --connection-reserve N  ... of which kept for /healthz and /metrics (default %d)\n"
	    "  --request-timeout SEC a request (line, headers, body) must be all in within this\n"
	    "                        of its connection opening or the previous answer (default "
	    "%d)\n"
	    "  -h, --help            this help\n",
	    API_CONNECTIONS_DEFAULT, API_PER_CLIENT_DEFAULT, API_RESERVE_DEFAULT,
	    API_REQUEST_TIMEOUT_DEFAULT);
}

static void usage(FILE *f)
{
	fputs(usage_synopsis, f);
	usage_where(f);
	usage_tuning(f);
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
#define OPTS(p) ((struct imcd_options *)(p))

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

static int take_chunk_size(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	uint64_t n = 0;

	if (parse_size(arg, &n) < 0 || !dist_chunk_size_valid(n))
		return usage_error("--chunk-size %s: want a power of two in 64K-64M", arg);
	OPTS(o)->chunk_size = (uint32_t)n;
	return 0;
}

static int take_export(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	if (strcmp(arg, "ready") != 0 && strcmp(arg, "request") != 0)
		return usage_error("--export %s: want ready or request", arg);
	OPTS(o)->export_on_request = strcmp(arg, "request") == 0;
	return 0;
}

static int take_help(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	usage(stdout);
	return 1;
}

/* One row per option (the order is getopt_long's for an ambiguous abbreviation). */
#define O(field) offsetof(struct imcd_options, field)
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
    {"chunk-size", required_argument, 0, take_chunk_size, 0},
    {"export", required_argument, 0, take_export, 0},
    {"help", no_argument, 'h', take_help, 0},
};
#undef O

int imcd_parse_args(int argc, char **argv, struct imcd_options *o)
{
	int r;

	*o = (struct imcd_options){0}; /* listen and state_dir: the config's, else the defaults */
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

void imcd_read_environment(struct imcd_options *o)
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
