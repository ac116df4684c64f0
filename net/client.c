/* The client: libcurl's global init (once), the configuration every request shares, the share
 * handle (DNS cache, TLS sessions) and kept connections; defaults, backoff and deadlines. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const struct net_limits default_limits = {
    .connect_timeout_ms = 30 * 1000,
    .min_rate = 64 << 10,
    .min_rate_window_s = 60,
    .deadline_ms = 15 * 60 * 1000,
    .deadline_rate = 1 << 20,
};

static const struct net_retry default_retry = {
    .max_attempts = 5,
    .base_ms = 500,
    .max_ms = 8000,
    .retry_after_max_ms = 30 * 1000,
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode init_rc;

static void init_curl(void)
{
	init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int net_global_init(imc_error *err)
{
	pthread_once(&init_once, init_curl);
	return init_rc == CURLE_OK ? 0
				   : imc_err(err, EIO, "libcurl: %s", curl_easy_strerror(init_rc));
}

const char *net_system_capath(void)
{
	const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

	return v && v->capath ? v->capath : "/etc/ssl/certs";
}

/* ---- defaults ---------------------------------------------------------------------------------
 */

#define INHERIT(dst, src, field)                                                                   \
	do {                                                                                       \
		if ((src)->field)                                                                  \
			(dst)->field = (src)->field;                                               \
	} while (0)

static void limits_over(struct net_limits *dst, const struct net_limits *src)
{
	INHERIT(dst, src, connect_timeout_ms);
	INHERIT(dst, src, min_rate);
	INHERIT(dst, src, min_rate_window_s);
	INHERIT(dst, src, deadline_ms);
	INHERIT(dst, src, deadline_rate);
}

static void retry_over(struct net_retry *dst, const struct net_retry *src)
{
	INHERIT(dst, src, max_attempts);
	INHERIT(dst, src, base_ms);
	INHERIT(dst, src, max_ms);
	INHERIT(dst, src, retry_after_max_ms);
}

void net_merge(struct net_limits *lim, struct net_retry *rt, const struct net_client *c,
	       const struct net_request *q)
{
	*lim = c->limits;
	*rt = c->retry;
	if (q->limits)
		limits_over(lim, q->limits);
	if (q->retry)
		retry_over(rt, q->retry);
}

/* The wait after attempt number `attempt` (1, 2, ...) failed: base doubled per attempt up to
 * max, then jittered into [d/2, d] with rnd so that clients that failed together spread out. */
uint64_t net_backoff_ms(const struct net_retry *r, unsigned attempt, uint32_t rnd)
{
	uint64_t d = r->base_ms;

	for (unsigned i = 1; i < attempt && d < r->max_ms; i++)
		d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
	if (d > r->max_ms)
		d = r->max_ms;
	return d - (d / 2 == 0 ? 0 : (uint64_t)rnd % (d / 2 + 1));
}

/* The whole request's time: deadline_ms, plus declared bytes at deadline_rate. */
uint64_t net_deadline_ms(const struct net_limits *l, uint64_t declared)
{
	uint64_t extra;

	if (l->deadline_ms == NET_OFF)
		return NET_OFF;
	if (!declared || l->deadline_rate == NET_OFF || l->deadline_rate == 0)
		return l->deadline_ms;
	extra = declared / l->deadline_rate;
	extra = extra > UINT64_MAX / 1000
		    ? UINT64_MAX
		    : extra * 1000 + (declared % l->deadline_rate) * 1000 / l->deadline_rate;
	return extra > NET_OFF - 1 - l->deadline_ms ? NET_OFF - 1 : l->deadline_ms + extra;
}

/* ---- the client --------------------------------------------------------------------------------
 */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ctx)
{
	struct net_client *c = ctx;

	pthread_mutex_lock(&c->locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ctx)
{
	struct net_client *c = ctx;

	pthread_mutex_unlock(&c->locks[data]);
}

static int share_new(struct net_client *c, imc_error *err)
{
	CURLSHcode s = CURLSHE_OK;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(c->locks); i++)
		pthread_mutex_init(&c->locks[i], NULL);
	c->share = curl_share_init();
	if (!c->share)
		return imc_err(err, ENOMEM, "out of memory");
#define SHSET(opt, val)                                                                            \
	if (s == CURLSHE_OK)                                                                       \
	s = curl_share_setopt(c->share, opt, val)
	SHSET(CURLSHOPT_LOCKFUNC, share_lock);
	SHSET(CURLSHOPT_UNLOCKFUNC, share_unlock);
	SHSET(CURLSHOPT_USERDATA, c);
	SHSET(CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	SHSET(CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
#undef SHSET
	return s == CURLSHE_OK ? 0
			       : imc_err(err, ENOMEM, "libcurl share: %s", curl_share_strerror(s));
}

static int copy_insecure(struct net_client *c, const char *const *list, imc_error *err)
{
	size_t n = 0;

	while (list && list[n])
		n++;
	c->insecure = calloc(n + 1, sizeof(*c->insecure));
	if (!c->insecure)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_insecure < n; c->n_insecure++) {
		const char *e = list[c->n_insecure];
		char host[256], shown[128];
		unsigned port;
		if (net_hostport_split(e, host, sizeof(host), &port) < 0) {
			net_escape(e, strlen(e), shown, sizeof(shown));
			return imc_err(err, EINVAL, "insecure host \"%s\": want HOST or HOST:PORT",
				       shown);
		}
		c->insecure[c->n_insecure].port = port;
		if (!(c->insecure[c->n_insecure].host = strdup(host)))
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int copy_allow(struct net_client *c, const char *const *list, imc_error *err)
{
	size_t n = 0;

	while (list && list[n])
		n++;
	c->allow = calloc(n + 1, sizeof(*c->allow));
	if (!c->allow)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_allow < n; c->n_allow++) {
		struct net_allow *a = &c->allow[c->n_allow];
		const char *e = list[c->n_allow];
		char shown[128];
		if (net_allow_parse(e, a->addr, &a->prefix, &a->port) < 0) {
			net_escape(e, strlen(e), shown, sizeof(shown));
			return imc_err(err, EINVAL,
				       "allowed destination \"%s\": want ADDR, ADDR/PREFIX, "
				       "ADDR:PORT or [ADDR]:PORT",
				       shown);
		}
	}
	return 0;
}

int net_client_new(const struct net_config *cfg, struct net_client **ret, imc_error *err)
{
	struct net_client *c;
	int r = net_global_init(err);

	if (r < 0)
		return r;
	c = calloc(1, sizeof(*c));
	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	c->limits = default_limits;
	limits_over(&c->limits, &cfg->limits);
	c->retry = default_retry;
	retry_over(&c->retry, &cfg->retry);
	c->check_destination = cfg->check_destination;
	c->log = cfg->log;
	c->log_ctx = cfg->log_ctx;
	c->user_agent = strdup(cfg->user_agent ? cfg->user_agent : NET_USER_AGENT);
	c->ca_file = cfg->ca_file ? strdup(cfg->ca_file) : NULL;
	if (!c->user_agent || (cfg->ca_file && !c->ca_file))
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = share_new(c, err);
	if (r == 0)
		r = copy_insecure(c, cfg->insecure_hosts, err);
	if (r == 0)
		r = copy_allow(c, cfg->allow_destinations, err);
	if (r < 0) {
		net_client_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

void net_client_free(struct net_client *c)
{
	if (!c)
		return;
	if (c->share) {
		curl_share_cleanup(c->share);
		for (size_t i = 0; i < IMC_ARRAY_SIZE(c->locks); i++)
			pthread_mutex_destroy(&c->locks[i]);
	}
	for (size_t i = 0; i < c->n_insecure; i++)
		free(c->insecure[i].host);
	free(c->insecure);
	free(c->allow);
	free(c->ca_file);
	free(c->user_agent);
	free(c);
}

struct net_conn *net_conn_new(void)
{
	return calloc(1, sizeof(struct net_conn));
}

void net_conn_free(struct net_conn *conn)
{
	if (!conn)
		return;
	if (conn->curl)
		curl_easy_cleanup(conn->curl);
	free(conn);
}
