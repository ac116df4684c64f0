/* imcd: the imcache REST service. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "../attach/attach.h"
#include "../dist/dist.h"
#include "../store/store.h"
#include "api.h"
#include "auth.h"
#include "conns.h"

#define MAX_INSECURE_REGISTRIES 64
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
	unsigned resolve_timeout_ms; /* 0: 30 s */
	unsigned shutdown_grace_ms;  /* 0: 30 s */
	unsigned tenant_builds;	     /* 0: api/caches.c's rule */
	uint64_t blob_cache_max;     /* 0: the config's, else no cap */
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

/* --max-connections (M), --max-connections-per-client (P), --connection-reserve (R),
 * --request-timeout (Q); how they fit together is checked once the config is read. */
static int parse_http_option(int ch, const char *arg, struct api_http_limits *l)
{
	uint64_t n = 0;
	bool bad = parse_size(arg, &n) < 0 || n == 0;

	switch (ch) {
	case 'M':
		if (bad || n > API_CONNECTIONS_MAX)
			return usage_error("--max-connections %s: want 2-65536", arg);
		l->max_connections = (unsigned)n;
		return 0;
	case 'P':
		if (bad || n > API_CONNECTIONS_MAX)
			return usage_error("--max-connections-per-client %s: want 1-65536", arg);
		l->per_client = (unsigned)n;
		return 0;
	case 'R':
		if (bad || n >= API_CONNECTIONS_MAX)
			return usage_error("--connection-reserve %s: want 1-65535", arg);
		l->reserve = (unsigned)n;
		return 0;
	default:
		if (bad || n > API_REQUEST_TIMEOUT_MAX)
			return usage_error("--request-timeout %s: want 1-3600 seconds", arg);
		l->request_timeout_s = (unsigned)n;
		return 0;
	}
}

/* One option; returns 0, 1 to exit 0 (--help) or -1 on a usage error. */
static int parse_option(int ch, const char *arg, struct options *o)
{
	uint64_t n = 0;

	switch (ch) {
	case 'l':
		o->listen = arg;
		return 0;
	case 's':
		o->state_dir = arg;
		return 0;
	case 'd':
		o->driver = arg;
		return 0;
	case 'p':
		if (parse_size(arg, &o->pool_size) < 0)
			return usage_error("--pool-size %s: want BYTES[K|M|G|T]", arg);
		return 0;
	case 'k':
		if (o->n_insecure >= MAX_INSECURE_REGISTRIES)
			return usage_error("%s: too many --insecure-registry (at most 64)", arg);
		o->insecure[o->n_insecure++] = arg;
		return 0;
	case 'o':
		if (o->n_driver_opts >= MAX_DRIVER_OPTS)
			return usage_error("%s: too many --driver-opt (at most 32)", arg);
		if (!strchr(arg, '='))
			return usage_error("--driver-opt %s: want KEY=VALUE", arg);
		o->driver_opts[o->n_driver_opts++] = arg;
		return 0;
	case 'A':
		o->auth_file = arg;
		return 0;
	case 'C':
		o->ca_file = arg;
		return 0;
	case 'H':
		o->hf_endpoint = arg;
		return 0;
	case 'r':
		o->ready_file = arg;
		return 0;
	case 'L':
		if (parse_log_level(arg) < 0)
			return usage_error("--log-level %s: want error|warn|info|debug", arg);
		return 0;
	case 't':
		if (parse_size(arg, &n) < 0 || n == 0 || n > 64)
			return usage_error("--threads %s: want 1-64", arg);
		o->threads = (unsigned)n;
		return 0;
	case 'c':
		o->config = arg;
		return 0;
	case 'N':
		o->no_config = true;
		return 0;
	case 'T':
		o->tls_cert = arg;
		return 0;
	case 'K':
		o->tls_key = arg;
		return 0;
	case 'W':
		if (parse_size(arg, &n) < 0 || n == 0 || n > 64)
			return usage_error("--build-workers %s: want 1-64", arg);
		o->build_workers = (unsigned)n;
		return 0;
	case 'E':
		if (parse_fraction(arg, &o->evict_high) < 0)
			return usage_error("--evict-high %s: want a fraction in (0, 1]", arg);
		return 0;
	case 'e':
		if (parse_fraction(arg, &o->evict_low) < 0)
			return usage_error("--evict-low %s: want a fraction in (0, 1]", arg);
		return 0;
	case 'S':
		if (parse_seconds_ms(arg, &o->sweep_interval_ms) < 0)
			return usage_error("--sweep-interval %s: want 0.01-86400 seconds", arg);
		return 0;
	case 'M':
	case 'P':
	case 'R':
	case 'Q':
		return parse_http_option(ch, arg, &o->http);
	case 'F':
		if (oci_platform_normalize(arg, o->platform, sizeof(o->platform), NULL) < 0)
			return usage_error("--platform %s: want OS/ARCH[/VARIANT] (linux/arm64)",
					   arg);
		return 0;
	case 'Y':
		if (parse_size(arg, &n) < 0 || n == 0 || n > 600)
			return usage_error("--resolve-timeout %s: want 1-600 seconds", arg);
		o->resolve_timeout_ms = (unsigned)n * 1000;
		return 0;
	case 'B':
		if (parse_size(arg, &n) < 0 || n == 0 || n > 64)
			return usage_error("--tenant-builds %s: want 1-64", arg);
		o->tenant_builds = (unsigned)n;
		return 0;
	case 'G':
		if (parse_size(arg, &n) < 0 || n == 0 || n > 3600)
			return usage_error("--shutdown-grace %s: want 1-3600 seconds", arg);
		o->shutdown_grace_ms = (unsigned)n * 1000;
		return 0;
	case 'X':
		if (parse_size(arg, &o->blob_cache_max) < 0 || o->blob_cache_max == 0)
			return usage_error("--blob-cache-max %s: want BYTES[K|M|G|T] above 0", arg);
		return 0;
	case 'h':
		usage(stdout);
		return 1;
	}
	usage(stderr);
	return -1;
}

/* Returns 0 to run, 1 to exit 0 (--help), -1 on a usage error. */
static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"state-dir", required_argument, NULL, 's'},
	    {"driver", required_argument, NULL, 'd'},
	    {"driver-opt", required_argument, NULL, 'o'},
	    {"auth-file", required_argument, NULL, 'A'},
	    {"ca-file", required_argument, NULL, 'C'},
	    {"hf-endpoint", required_argument, NULL, 'H'},
	    {"pool-size", required_argument, NULL, 'p'},
	    {"insecure-registry", required_argument, NULL, 'k'},
	    {"ready-file", required_argument, NULL, 'r'},
	    {"log-level", required_argument, NULL, 'L'},
	    {"threads", required_argument, NULL, 't'},
	    {"config", required_argument, NULL, 'c'},
	    {"no-config", no_argument, NULL, 'N'},
	    {"tls-cert", required_argument, NULL, 'T'},
	    {"tls-key", required_argument, NULL, 'K'},
	    {"build-workers", required_argument, NULL, 'W'},
	    {"evict-high", required_argument, NULL, 'E'},
	    {"evict-low", required_argument, NULL, 'e'},
	    {"sweep-interval", required_argument, NULL, 'S'},
	    {"max-connections", required_argument, NULL, 'M'},
	    {"max-connections-per-client", required_argument, NULL, 'P'},
	    {"connection-reserve", required_argument, NULL, 'R'},
	    {"request-timeout", required_argument, NULL, 'Q'},
	    {"platform", required_argument, NULL, 'F'},
	    {"resolve-timeout", required_argument, NULL, 'Y'},
	    {"shutdown-grace", required_argument, NULL, 'G'},
	    {"tenant-builds", required_argument, NULL, 'B'},
	    {"blob-cache-max", required_argument, NULL, 'X'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch, r;

	*o = (struct options){0}; /* listen and state_dir: the config's, else the defaults */
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		r = parse_option(ch, optarg, o);
		if (r != 0)
			return r;
	}
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

static int start(const struct options *o, struct service *svc, imc_error *err)
{
	const struct store_config scfg = {.state_dir = o->state_dir,
					  .driver = o->driver,
					  .pool_size = o->pool_size,
					  .driver_opts = o->driver_opts};
	_cleanup_json_ json_t *repairs = json_array();
	_cleanup_close_ int fd = -1;
	struct api_http_limits http;
	const char *platform = o->platform[0] ? o->platform : NULL; /* NULL: linux/amd64 */
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
	r = api_caches_open(
	    &(struct api_caches_config){.state_dir = o->state_dir,
					.store = svc->store,
					.insecure_registries = o->insecure,
					.auth_file = o->auth_file,
					.ca_file = o->ca_file,
					.hf_endpoint = o->hf_endpoint,
					.platform = platform,
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
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		imc_error_log("cannot initialise libcurl");
		return 1;
	}
	r = load_config(&o, &svc, &err);
	if (r == 0)
		r = start(&o, &svc, &err);
	if (r < 0) {
		imc_error_log("%s", err.msg);
		stop(&svc);
		curl_global_cleanup();
		return 1;
	}
	sigwait(&sigs, &sig);
	imc_info("%s: stopping", strsignal(sig));
	stop(&svc);
	curl_global_cleanup();
	imc_info("stopped");
	return 0;
}
