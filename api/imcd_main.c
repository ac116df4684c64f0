/* imcd: the imcache REST service.  Start-up and wiring: the config, the store, the chunk store
 * and its exporter, the HTTP clients, the cache table and the server, opened in that order and
 * closed in reverse; the command line is api/imcd_options.c's. */
#include <fcntl.h>
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
#include "imcd.h"

#define LISTEN_URL_MAX 160 /* "unix:" and a sun_path fit */

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
static int load_config(struct imcd_options *o, struct service *svc, imc_error *err)
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
static int net_open(const struct imcd_options *o, struct service *svc, imc_error *err)
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
static int open_caches(const struct imcd_options *o, struct service *svc, json_t *repairs,
		       imc_error *err)
{
	/* --export request: no export at Ready, the first GET of the index queues it. */
	void (*on_ready)(void *, const char *) =
	    o->export_on_request ? NULL : api_dist_snapshot_ready;

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
					.on_snapshot_ready = on_ready,
					.snapshot_ctx = svc->exporter,
					.remove_snapshot = attach_snapshot_remove,
					.chunks = svc->chunks,
					.exporter = svc->exporter},
	    repairs, &svc->caches, err);
}

/* What the cache table runs on: the HTTP clients, the store, the chunk store and its exporter. */
static int open_backends(const struct imcd_options *o, struct service *svc, json_t *repairs,
			 imc_error *err)
{
	const struct store_config scfg = {.state_dir = o->state_dir,
					  .driver = o->driver,
					  .pool_size = o->pool_size,
					  .driver_opts = o->driver_opts};
	int r = net_open(o, svc, err);

	if (r == 0)
		r = store_open(&scfg, &svc->store, err);
	if (r == 0)
		repair_partial_chunks(o->state_dir, repairs);
	if (r == 0)
		r = dist_chunks_open(o->state_dir, svc->store, &svc->chunks, err);
	if (r == 0)
		r = dist_exporter_start(svc->chunks, o->chunk_size, &svc->exporter, err);
	if (r < 0)
		return r;
	if (!svc->config.auth && !api_listen_is_local(o->listen))
		imc_warn(
		    "listening on %s without auth: anyone who reaches it can create and delete "
		    "caches (give bearer tokens in --config, see docs/security.md)",
		    o->listen);
	log_repairs(store_repairs(svc->store));
	return 0;
}

/* The server on the listening socket *fd (the server's once it starts: *fd becomes -1), then
 * the ready file. */
static int serve(const struct imcd_options *o, struct service *svc, int *fd,
		 const struct api_http_limits *http, imc_error *err)
{
	int r = api_server_start_secure(
	    &(struct api_server_config){
		.listen_fd = *fd, .caches = svc->caches, .threads = o->threads, .limits = *http},
	    &(struct api_server_security){.auth = &svc->config,
					  .tls = svc->tls.cert_pem ? &svc->tls : NULL},
	    &svc->server, err);

	if (r < 0)
		return r;
	*fd = -1;
	if (svc->tls.cert_pem)
		url_set_https(svc->url, sizeof(svc->url));
	if (o->ready_file)
		r = write_ready_file(o->ready_file, svc->url, err);
	if (r == 0)
		imc_info("listening on %s (state %s, store driver %s; connections: %u, %u per "
			 "client, %u in reserve, %u s per request)",
			 svc->url, o->state_dir, store_driver_name(svc->store),
			 http->max_connections, http->per_client, http->reserve,
			 http->request_timeout_s);
	return r;
}

static int start(const struct imcd_options *o, struct service *svc, imc_error *err)
{
	_cleanup_json_ json_t *repairs = json_array();
	_cleanup_close_ int fd = -1;
	struct api_http_limits http;
	int r;

	if (!repairs)
		return imc_err(err, ENOMEM, "out of memory");
	/* The flags win over the config's "http"; what does not fit fails before anything starts.
	 */
	if (api_http_limits_resolve(&o->http, &svc->config.http, &http, err) < 0)
		return err->code;
	raise_fd_limit(http.max_connections);
	/* The socket first: a taken port fails before the store sets anything up. */
	r = api_listen_open(o->listen, &fd, svc->url, sizeof(svc->url), err);
	if (r == 0)
		r = open_backends(o, svc, repairs, err);
	if (r < 0)
		return r;
	r = open_caches(o, svc, repairs, err);
	log_repairs(repairs);
	if (r < 0)
		return r;
	/* A forget ends an export's hold on a removed snapshot: trim again. */
	dist_exporter_set_on_forgotten(svc->exporter, api_caches_space_changed, svc->caches);
	return serve(o, svc, &fd, &http, err);
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
	struct imcd_options o;
	struct service svc = {0};
	imc_error err = {0};
	sigset_t sigs;
	int r, sig = 0;

	r = imcd_parse_args(argc, argv, &o);
	if (r != 0)
		return r > 0 ? 0 : 2;
	imcd_read_environment(&o);
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
