/* The HTTP side of imcd: libmicrohttpd with an internal thread pool on epoll, its connections
 * (api/conns.c), the request's body (capped at API_BODY_MAX, a 413 as soon as it is over), who
 * sends it (auth, the connection reserve), the chunk files, and the answer on the wire.  What a
 * request is answered is api/handle.c's (api_handle_args), which never blocks on a build. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>

#include "api.h"
#include "auth.h"
#include "conns.h"
#include "handle.h"

#define SERVER_THREADS_MAX    64
#define SERVER_IDLE_TIMEOUT_S 30 /* no byte either way for this long: closed (libmicrohttpd) */
#define SERVER_DRAIN_NS	      (3ULL * 1000000000ULL) /* in-flight requests get this long */
/* After an early 413, bytes of the body still read and dropped before the connection closes, so
 * that the close does not reset the connection before the client has read the answer. */
#define SERVER_BODY_DRAIN_MAX API_BODY_MAX

/* TLS 1.2 and 1.3 only. */
#define SERVER_TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct api_server {
	struct MHD_Daemon *daemon;
	int listen_fd;
	struct api_caches *caches;
	const struct api_config *auth; /* NULL: every request is the default tenant */
	unsigned active; /* requests between their first callback and completion (atomic) */
	struct api_http_limits limits;
	struct api_conns *conns;
};

struct request {
	struct api_caller caller; /* who sends it: set before anything else is looked at */
	struct api_query_arg args[API_QUERY_ARGS_MAX];
	size_t n_args;
	bool too_many_args;
	struct imc_buf body;
	bool too_large;
	uint64_t start_ns;
	const char *challenge; /* a 401's WWW-Authenticate */
	bool refused;	       /* answered with resp once the (bodiless) request is complete */
	struct api_response refusal;
	bool answered_early; /* a 413 went out in the middle of the body (send_early) */
	size_t drained;	     /* body bytes dropped since */
};

static bool content_length_too_large(struct MHD_Connection *conn)
{
	const char *cl =
	    MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	char *end = NULL;
	unsigned long long v;

	if (!cl)
		return false;
	errno = 0;
	v = strtoull(cl, &end, 10);
	return errno != 0 || end == cl || v > API_BODY_MAX;
}

/* A Content-Length above 0 or a chunked body. */
static bool request_has_body(struct MHD_Connection *conn)
{
	const char *cl =
	    MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

	if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
		return true;
	return cl && strspn(cl, "0") != strlen(cl);
}

/* Append a chunk of the body; past the cap the rest is only counted as too much. */
static int append_body(struct request *req, const char *data, size_t n)
{
	if (req->too_large)
		return 0;
	if (n > API_BODY_MAX - req->body.len) {
		req->too_large = true;
		imc_buf_free(&req->body);
		return 0;
	}
	return imc_buf_append(&req->body, data, n);
}

/* MHD has split and percent-decoded the query; the values live as long as the connection. */
static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	struct request *req = cls;

	(void)kind;
	if (req->n_args == API_QUERY_ARGS_MAX) {
		req->too_many_args = true;
		return MHD_NO;
	}
	req->args[req->n_args++] = (struct api_query_arg){.key = key, .value = value};
	return MHD_YES;
}

/* Our record of the connection (api/conns.c), NULL when it has none. */
static struct api_conn *conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return info ? info->socket_context : NULL;
}

/* Retry-After: seconds, when the answer asks the client to come back. */
static void add_retry_after(struct MHD_Response *r, unsigned seconds)
{
	char v[16];

	if (!seconds)
		return;
	snprintf(v, sizeof(v), "%u", seconds);
	MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
}

static enum MHD_Result send_response(struct api_server *s, struct MHD_Connection *conn,
				     const char *method, const char *url, struct request *req,
				     struct api_response *resp)
{
	struct MHD_Response *r;
	enum MHD_Result ok;
	size_t len = resp->body_len ? resp->body_len : resp->body ? strlen(resp->body) : 0;

	/* MUST_FREE hands the buffer over: MHD sends it as it is and frees it, no copy. */
	r = MHD_create_response_from_buffer(len, resp->body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(resp->body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				resp->content_type ? resp->content_type : API_CONTENT_TYPE);
	if (resp->allow)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, resp->allow);
	add_retry_after(r, resp->retry_after);
	if (resp->status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					req->challenge ? req->challenge : API_AUTH_CHALLENGE);
	if (resp->close) {
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
		if (!resp->retry_after)
			add_retry_after(r, 1);
	}
	api_conns_request_in(s->conns, conn_of(conn));
	ok = MHD_queue_response(conn, resp->status, r);
	MHD_destroy_response(r);
	api_metrics_observe_request(api_caches_metrics(s->caches), resp->status,
				    imc_monotonic_ns() - req->start_ns);
	if (resp->status >= 500 && resp->status != 503) /* 503: come back later, not a fault */
		imc_error_log("%s %s: %u %.*s", method, url, resp->status, (int)(len ? len - 1 : 0),
			      resp->body ? resp->body : "");
	else
		imc_debug("%s %s: %u (%.3f ms)", method, url, resp->status,
			  (double)(imc_monotonic_ns() - req->start_ns) / 1e6);
	return ok;
}

/* An answer written on the connection itself, for the one case libmicrohttpd has no way to
 * queue one: in the middle of a request body (MHD_queue_response takes an answer only before
 * the body or after it, and a chunked body may never end).  It says "Connection: close": the
 * caller closes the connection after it.  Through the connection's TLS session when it has one;
 * best effort (a client that does not read gets the close). */
static void write_raw_answer(struct MHD_Connection *conn, unsigned status, const char *body,
			     size_t len)
{
	const union MHD_ConnectionInfo *fd =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	const union MHD_ConnectionInfo *tls =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	struct imc_buf b = {0};
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, MHD_get_reason_phrase_for(status), API_CONTENT_TYPE, len);

	if (n < 0 || (size_t)n >= sizeof(head) || imc_buf_append(&b, head, (size_t)n) < 0 ||
	    imc_buf_append(&b, body, len) < 0) {
		imc_buf_free(&b);
		return;
	}
	if (tls && tls->tls_session) {
		(void)gnutls_record_send((gnutls_session_t)tls->tls_session, b.data, b.len);
	} else if (fd) {
		(void)send(fd->connect_fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		shutdown(fd->connect_fd, SHUT_WR); /* the answer is all there is */
	}
	imc_buf_free(&b);
}

/* A chunked body just passed the cap: answer 413 now, not once the client ends the body. */
static enum MHD_Result send_early(struct api_server *s, struct MHD_Connection *conn,
				  const char *method, const char *url, struct request *req)
{
	struct api_response resp;
	size_t len;

	api_handle_args(s->caches, &req->caller, method, url, NULL, 0, false, NULL, 0, true, &resp);
	len = resp.body ? strlen(resp.body) : 0;
	write_raw_answer(conn, resp.status, resp.body ? resp.body : "", len);
	req->answered_early = true;
	api_metrics_observe_request(api_caches_metrics(s->caches), resp.status,
				    imc_monotonic_ns() - req->start_ns);
	imc_debug("%s %s: %u in the middle of the body (%.3f ms)", method, url, resp.status,
		  (double)(imc_monotonic_ns() - req->start_ns) / 1e6);
	free(resp.body);
	return MHD_YES;
}

/* Who sends the request.  /healthz is open; everything else (including /metrics and unknown
 * paths, so that nothing is revealed without a token) needs a valid token when auth is on.
 * Returns false with a 401 in resp. */
static bool authenticate(struct api_server *s, struct MHD_Connection *conn, const char *url,
			 struct request *req, struct api_response *resp)
{
	const char *header =
	    MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	struct api_match match;
	imc_error err = {0};
	bool missing = false;

	req->caller.tenant = API_TENANT_DEFAULT;
	if (!s->auth || !s->auth->auth)
		return true;
	api_route_match(url, &match);
	if (match.route == API_ROUTE_HEALTHZ)
		return true;
	if (api_auth_check(s->auth, header, &req->caller, &missing, &err) == 0)
		return true;
	*resp = (struct api_response){0};
	api_answer_error(resp, MHD_HTTP_UNAUTHORIZED, "Unauthorized", err.msg);
	req->challenge = missing ? API_AUTH_CHALLENGE : API_AUTH_CHALLENGE_BAD;
	return false;
}

/* What a reserve connection may ask for: what a load balancer and a monitor need. */
static bool reserve_route(const char *url)
{
	struct api_match match;

	api_route_match(url, &match);
	return match.route == API_ROUTE_HEALTHZ || match.route == API_ROUTE_METRICS;
}

/* A connection opened past max - reserve connections, for anything but /healthz and /metrics:
 * 503, and the connection closes so that the client comes back on a general one. */
static void reserve_refusal(struct api_server *s, struct api_response *resp)
{
	char msg[160];

	snprintf(msg, sizeof(msg),
		 "imcd is at its connection limit (%u open): this connection may ask only "
		 "/healthz and /metrics; retry",
		 s->limits.max_connections - s->limits.reserve);
	*resp = (struct api_response){0};
	api_answer_error(resp, 503, "Unavailable", msg);
	resp->close = true;
}

/* The first callback of a request: headers only.  Returns MHD_YES to read the body, or the
 * result of answering right away (no token, a declared body over the cap). */
static enum MHD_Result on_headers(struct api_server *s, struct MHD_Connection *conn,
				  const char *url, const char *method, void **con_cls)
{
	struct request *req = calloc(1, sizeof(*req));
	struct api_response resp;

	if (!req)
		return MHD_NO;
	req->start_ns = imc_monotonic_ns();
	*con_cls = req;
	__atomic_add_fetch(&s->active, 1, __ATOMIC_RELAXED);
	if (api_conn_is_reserve(conn_of(conn)) && !reserve_route(url)) {
		reserve_refusal(s, &resp);
		return send_response(s, conn, method, url, req, &resp);
	}
	if (!authenticate(s, conn, url, req, &resp)) {
		/* Without a body the answer waits for the end of the request, which keeps the
		 * connection alive; a body is never read from a caller without a valid token:
		 * answering now closes the connection after the 401. */
		if (request_has_body(conn))
			return send_response(s, conn, method, url, req, &resp);
		req->refused = true;
		req->refusal = resp;
		return MHD_YES;
	}
	/* A declared body over the cap is refused before it is read. */
	if (!content_length_too_large(conn))
		return MHD_YES;
	req->too_large = true;
	api_handle_args(s->caches, &req->caller, method, url, NULL, 0, false, NULL, 0, true, &resp);
	return send_response(s, conn, method, url, req, &resp);
}

/* GET|HEAD /v1/chunks/{digest}: a file, answered without the JSON path (api/dist.c). */
static bool is_chunk_request(const char *url, const char *method)
{
	struct api_match match;

	api_route_match(url, &match);
	return match.route == API_ROUTE_CHUNK &&
	       (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0);
}

static enum MHD_Result send_chunk(struct api_server *s, struct MHD_Connection *conn,
				  const char *method, const char *url, struct request *req)
{
	struct MHD_Response *r = NULL;
	struct api_match match;
	enum MHD_Result ok;
	unsigned status;

	api_route_match(url, &match);
	status = api_dist_chunk(s->caches, &req->caller, conn, method, match.id, &r);
	if (!r)
		return MHD_NO;
	api_conns_request_in(s->conns, conn_of(conn));
	ok = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	api_metrics_observe_request(api_caches_metrics(s->caches), status,
				    imc_monotonic_ns() - req->start_ns);
	imc_debug("%s %s: %u", method, url, status);
	return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct api_server *s = cls;
	struct request *req = *con_cls;
	struct api_response resp;

	if (!req)
		return on_headers(s, conn, url, method, con_cls);
	if (req->refused) {
		resp = req->refusal;
		req->refusal.body = NULL;
		return send_response(s, conn, method, url, req, &resp);
	}
	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		if (req->answered_early) { /* dropped; enough of it closes the connection */
			req->drained += n;
			return req->drained > SERVER_BODY_DRAIN_MAX ? MHD_NO : MHD_YES;
		}
		if (append_body(req, upload_data, n) < 0)
			return MHD_NO;
		/* Past the cap (a declared length over it was refused before the body). */
		return req->too_large ? send_early(s, conn, method, url, req) : MHD_YES;
	}
	if (req->answered_early)
		return MHD_NO; /* the body ended after its 413: close, as the answer said */
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_arg, req);
	if (is_chunk_request(url, method)) {
		const struct api_request_query q = {.args = req->args, .n = req->n_args};

		resp = (struct api_response){0};
		if (!api_request_text_valid(url, &q, &resp))
			return send_response(s, conn, method, url, req, &resp);
		return send_chunk(s, conn, method, url, req);
	}
	api_handle_args(s->caches, &req->caller, method, url, req->args, req->n_args,
			req->too_many_args, req->body.data, req->body.len, req->too_large, &resp);
	return send_response(s, conn, method, url, req, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct api_server *s = cls;
	struct request *req = *con_cls;

	/* Answered and kept open: the next request's clock starts. */
	if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
		api_conns_request_done(s->conns, conn_of(conn), imc_monotonic_ns());
	if (req) {
		imc_buf_free(&req->body);
		free(req->refusal.body);
		free(req);
		*con_cls = NULL;
		__atomic_sub_fetch(&s->active, 1, __ATOMIC_RELAXED);
	}
}

/* libmicrohttpd opened or closed a client connection. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct api_server *s = cls;
	const union MHD_ConnectionInfo *fd;

	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		api_conns_gone(s->conns, *socket_context);
		*socket_context = NULL;
		return;
	}
	fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!fd)
		return;
	*socket_context = api_conns_admit(s->conns, fd->connect_fd, imc_monotonic_ns());
	if (!*socket_context) /* no memory to keep it within the limits: not kept at all */
		shutdown(fd->connect_fd, SHUT_RDWR);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	static const char limit_msg[] = "Server reached connection limit";
	struct api_server *s = cls;
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	/* One per refused connection: counted, not a warning each (a flood would flood the log). */
	if (strncmp(msg, limit_msg, sizeof(limit_msg) - 1) == 0) {
		api_metrics_count_connection(api_caches_metrics(s->caches), API_CONN_REFUSED);
		imc_debug("http: %s", msg);
		return;
	}
	imc_warn("http: %s", msg);
}

/* One thread per CPU: more threads than CPUs only queue behind each other (on 2 CPUs, 4
 * threads had a p99 of 83 ms for GET /v1/imagecaches/{id} where 2 threads had 4 ms). */
static unsigned default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > SERVER_THREADS_MAX ? SERVER_THREADS_MAX : (unsigned)n;
}

static struct MHD_Daemon *start_daemon(struct api_server *s, const struct api_server_config *cfg,
				       const struct api_tls *tls)
{
	unsigned threads = cfg->threads ? cfg->threads : default_threads();
	unsigned flags =
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
	struct MHD_OptionItem tls_opts[] = {
	    {MHD_OPTION_HTTPS_MEM_CERT, 0, tls ? tls->cert_pem : NULL},
	    {MHD_OPTION_HTTPS_MEM_KEY, 0, tls ? tls->key_pem : NULL},
	    {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)SERVER_TLS_PRIORITIES},
	    {MHD_OPTION_END, 0, NULL},
	};

	if (tls)
		flags |= MHD_USE_TLS;
	return MHD_start_daemon(
	    flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)cfg->listen_fd, MHD_OPTION_THREAD_POOL_SIZE,
	    threads, MHD_OPTION_CONNECTION_LIMIT, s->limits.max_connections,
	    MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->limits.per_client, MHD_OPTION_CONNECTION_TIMEOUT,
	    (unsigned)SERVER_IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_ARRAY,
	    tls ? tls_opts : &tls_opts[IMC_ARRAY_SIZE(tls_opts) - 1], MHD_OPTION_END);
}

int api_server_start_secure(const struct api_server_config *cfg,
			    const struct api_server_security *sec, struct api_server **ret,
			    imc_error *err)
{
	const struct api_tls *tls = sec ? sec->tls : NULL;
	struct api_server *s;

	if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		return imc_err(err, ENOTSUP, "this libmicrohttpd is built without TLS support");
	s = calloc(1, sizeof(*s));
	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	s->listen_fd = cfg->listen_fd;
	s->caches = cfg->caches;
	s->auth = sec ? sec->auth : NULL;
	if (api_http_limits_resolve(&cfg->limits, NULL, &s->limits, err) < 0 ||
	    api_conns_new(&s->limits, api_caches_metrics(s->caches), true, &s->conns, err) < 0) {
		free(s);
		return err->code;
	}
	s->daemon = start_daemon(s, cfg, tls);
	if (!s->daemon) {
		api_conns_free(s->conns);
		free(s);
		return imc_err(err, EIO, "cannot start the HTTP%s server (libmicrohttpd)",
			       tls ? "S" : "");
	}
	*ret = s;
	return 0;
}

void api_server_stop(struct api_server *s)
{
	uint64_t deadline = imc_monotonic_ns() + SERVER_DRAIN_NS;
	MHD_socket fd;

	if (!s)
		return;
	/* No new connection from here: closing the listening socket makes new clients fail fast
	 * (connection refused) instead of waiting in the backlog for a server that is leaving. */
	fd = MHD_quiesce_daemon(s->daemon);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
	/* Idle keep-alive connections do not count: only requests being read or answered. */
	while (__atomic_load_n(&s->active, __ATOMIC_RELAXED) > 0 && imc_monotonic_ns() < deadline)
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	if (__atomic_load_n(&s->active, __ATOMIC_RELAXED) > 0)
		imc_warn("http: stopping with %u request(s) still in flight after %llu s",
			 __atomic_load_n(&s->active, __ATOMIC_RELAXED),
			 (unsigned long long)(SERVER_DRAIN_NS / 1000000000ULL));
	MHD_stop_daemon(s->daemon);
	api_conns_free(s->conns);
	free(s);
}
