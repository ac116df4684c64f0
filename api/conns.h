/* Client connections against slow clients (api/conns.c): a deadline for each request to be all
 * in, a cap on connections with a reserve for /healthz and /metrics, and the bookkeeping behind
 * them.  The server (api/server.c) feeds it libmicrohttpd's connection events; the per-client
 * and total caps themselves are libmicrohttpd's options. */
#ifndef IMC_API_CONNS_H
#define IMC_API_CONNS_H

#include "api.h"

struct api_conns;
struct api_conn; /* one client connection */

/* Each field of flags, else of config, else its default; then checked against the others
 * (-EINVAL naming the one that is out of range or does not fit). */
int api_http_limits_resolve(const struct api_http_limits *flags,
			    const struct api_http_limits *config, struct api_http_limits *ret,
			    imc_error *err);

/* The bookkeeping for limits (resolved) and, with watchdog, the thread that closes connections
 * whose request is late.  m (may be NULL) counts what happens. */
int api_conns_new(const struct api_http_limits *limits, struct api_metrics *m, bool watchdog,
		  struct api_conns **ret, imc_error *err);
void api_conns_free(struct api_conns *g);

/* A connection was accepted (socket fd) at now_ns: its first request's clock starts.  Past
 * max - reserve connections the oldest connection still waiting for its request is closed to
 * make room; when none is, the new one is a reserve connection.  NULL on OOM (the caller closes
 * the connection). */
struct api_conn *api_conns_admit(struct api_conns *g, int fd, uint64_t now_ns);
/* The connection is closed (its fd still open): forget it. */
void api_conns_gone(struct api_conns *g, struct api_conn *c);
/* A reserve connection may ask only for /healthz and /metrics. */
bool api_conn_is_reserve(const struct api_conn *c);
/* Its request is all in (headers and body): no deadline while it is answered. */
void api_conns_request_in(struct api_conns *g, struct api_conn *c);
/* Its answer is sent and the connection stays open: the next request's clock starts. */
void api_conns_request_done(struct api_conns *g, struct api_conn *c, uint64_t now_ns);
/* Close (shut down) every connection whose request is not all in by now_ns; returns how many,
 * and when the next deadline is in *ret_next_ns (UINT64_MAX: none).  The watchdog's step. */
unsigned api_conns_expire(struct api_conns *g, uint64_t now_ns, uint64_t *ret_next_ns);

#endif
