/* The gRPC server: nghttp2 server sessions, one per connection, polled by one thread.  A call
 * runs when its request stream ends; its answer is HEADERS, the DATA of its messages and the
 * trailers (grpc-status, grpc-message), or one HEADERS frame with all of them (Trailers-Only)
 * when it has no message. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "grpc.h"

struct grpc_server {
	const struct grpc_method *methods;
	size_t n_methods;
	void *userdata;
	int lfd;
	char *path;
	struct grpc_conn *conns[GRPC_MAX_CONNS];
	size_t n_conns;
	nghttp2_session_callbacks *cbs;
};

struct grpc_conn {
	struct grpc_server *s;
	int fd; /* -1: fed from memory, output kept in out */
	nghttp2_session *h2;
	struct imc_buf out;
	struct grpc_call *calls; /* nghttp2_session_del closes streams without telling us */
};

struct grpc_call {
	struct grpc_conn *conn;
	struct grpc_call *next, **pprev;
	int32_t id;
	char *path;
	bool post, grpc_type, too_big, dispatched;
	size_t header_bytes;
	uint64_t deadline_ns; /* CLOCK_MONOTONIC; 0: none */
	struct imc_buf in, out;
	size_t out_off, n_sent;
	int http_status, code;
	char message[GRPC_MAX_STATUS_MSG + 1];
};

#define NV(n, v)                                                                                   \
	{                                                                                          \
		(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE         \
	}

int grpc_call_send(struct grpc_call *call, const ProtobufCMessage *msg)
{
	int r = grpc_frame_append(&call->out, msg);
	if (r == 0)
		call->n_sent++;
	return r;
}

int grpc_call_fail(struct grpc_call *call, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(call->message, sizeof(call->message), fmt, ap);
	va_end(ap);
	return code;
}

bool grpc_call_expired(const struct grpc_call *call)
{
	return call->deadline_ns && imc_monotonic_ns() >= call->deadline_ns;
}

static void call_free(struct grpc_call *call)
{
	if (!call)
		return;
	if (call->pprev) {
		*call->pprev = call->next;
		if (call->next)
			call->next->pprev = call->pprev;
	}
	free(call->path);
	imc_buf_free(&call->in);
	imc_buf_free(&call->out);
	free(call);
}

static const struct grpc_method *find_method(struct grpc_server *s, const char *path)
{
	for (size_t i = 0; path && i < s->n_methods; i++)
		if (strcmp(s->methods[i].path, path) == 0)
			return &s->methods[i];
	return NULL;
}

static int frame_error(struct grpc_call *call, int r)
{
	switch (r) {
	case -EAGAIN:
		return grpc_call_fail(call, GRPC_INTERNAL,
				      call->in.len ? "truncated request message"
						   : "no request message");
	case -EFBIG:
		return grpc_call_fail(call, GRPC_RESOURCE_EXHAUSTED,
				      "request message larger than %u bytes", GRPC_MAX_MESSAGE);
	case -EOPNOTSUPP:
		return grpc_call_fail(call, GRPC_UNIMPLEMENTED,
				      "compressed messages are not supported");
	default:
		return grpc_call_fail(call, GRPC_INTERNAL, "bad message flag");
	}
}

/* Checks the request, unpacks its one message and runs the handler; returns the grpc status. */
static int run_call(struct grpc_server *s, struct grpc_call *call)
{
	const struct grpc_method *m = find_method(s, call->path);
	const uint8_t *msg = NULL;
	size_t len = 0, used = 0;
	ProtobufCMessage *req;
	int r, code;

	if (!call->post || !call->grpc_type) {
		call->http_status = call->post ? 415 : 405;
		return grpc_call_fail(call, GRPC_INTERNAL,
				      "want POST with content-type application/grpc");
	}
	if (!m)
		return grpc_call_fail(call, GRPC_UNIMPLEMENTED, "unknown method %s", call->path);
	if (call->too_big)
		return frame_error(call, -EFBIG);
	if (grpc_call_expired(call))
		return grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED,
				      "deadline passed before the call ran");
	r = grpc_frame_parse((const uint8_t *)call->in.data, call->in.len, GRPC_MAX_MESSAGE, &msg,
			     &len, &used);
	if (r < 0)
		return frame_error(call, r);
	if (used != call->in.len)
		return grpc_call_fail(call, GRPC_INTERNAL, "more than one request message");
	req = protobuf_c_message_unpack(m->request, NULL, len, msg);
	if (!req)
		return grpc_call_fail(call, GRPC_INTERNAL, "cannot parse %s", m->request->name);
	code = m->handler(call, req, s->userdata);
	protobuf_c_message_free_unpacked(req, NULL);
	if (code == GRPC_OK && !m->server_streaming && call->n_sent != 1)
		return grpc_call_fail(call, GRPC_INTERNAL, "unary handler sent %zu messages",
				      call->n_sent);
	if (code != GRPC_OK && !m->server_streaming)
		call->out.len = 0; /* a unary failure carries no message */
	return code;
}

int grpc_server_call(struct grpc_server *s, const char *path, const void *body, size_t len,
		     struct imc_buf *ret_out, char *ret_msg, size_t msg_size)
{
	struct grpc_call call = {.post = true, .grpc_type = true, .path = (char *)path};
	int code;

	if (len > GRPC_MAX_MESSAGE + 5)
		call.too_big = true;
	else if (imc_buf_append(&call.in, body, len) < 0)
		return GRPC_RESOURCE_EXHAUSTED;
	code = run_call(s, &call);
	imc_buf_free(&call.in);
	snprintf(ret_msg, msg_size, "%s", call.message);
	*ret_out = call.out;
	return code;
}

static int submit_trailers(nghttp2_session *h2, struct grpc_call *call, int code)
{
	char status[16] = "", msg[GRPC_MAX_STATUS_MSG * 3 + 1] = "";
	nghttp2_nv nva[2] = {NV("grpc-status", status), NV("grpc-message", msg)};

	snprintf(status, sizeof(status), "%d", code);
	grpc_message_encode(call->message, msg, sizeof(msg));
	nva[0].valuelen = strlen(status);
	nva[1].valuelen = strlen(msg);
	return nghttp2_submit_trailer(h2, call->id, nva, msg[0] ? 2 : 1);
}

static ssize_t read_body(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
			 nghttp2_data_source *src, void *ud)
{
	struct grpc_call *call = src->ptr;
	size_t n = call->out.len - call->out_off;

	if (n > len)
		n = len;
	memcpy(buf, call->out.data + call->out_off, n);
	call->out_off += n;
	if (call->out_off == call->out.len) {
		*flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
		if (submit_trailers(h2, call, call->code) != 0)
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	return (ssize_t)n;
}

static void respond(struct grpc_conn *c, struct grpc_call *call, int code)
{
	char http[8] = "", status[16] = "", msg[GRPC_MAX_STATUS_MSG * 3 + 1] = "";
	nghttp2_nv nva[4] = {NV(":status", http), NV("content-type", "application/grpc"),
			     NV("grpc-status", status), NV("grpc-message", msg)};
	nghttp2_data_provider prd = {.source.ptr = call, .read_callback = read_body};

	call->code = code;
	snprintf(http, sizeof(http), "%d", call->http_status ? call->http_status : 200);
	nva[0].valuelen = strlen(http);
	if (call->out.len > 0) {
		nghttp2_submit_response(c->h2, call->id, nva, 2, &prd);
		return;
	}
	snprintf(status, sizeof(status), "%d", code);
	nva[2].valuelen = strlen(status);
	grpc_message_encode(call->message, msg, sizeof(msg));
	nva[3].valuelen = strlen(msg);
	nghttp2_submit_response(c->h2, call->id, nva, msg[0] ? 4 : 3, NULL);
}

static struct grpc_call *stream_call(nghttp2_session *h2, int32_t id)
{
	return nghttp2_session_get_stream_user_data(h2, id);
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *ud)
{
	struct grpc_call *call;

	if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	call = calloc(1, sizeof(*call));
	if (!call)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	call->conn = ud;
	call->id = frame->hd.stream_id;
	call->next = call->conn->calls;
	if (call->next)
		call->next->pprev = &call->next;
	call->pprev = &call->conn->calls;
	call->conn->calls = call;
	nghttp2_session_set_stream_user_data(h2, call->id, call);
	return 0;
}

static bool is_grpc_type(const uint8_t *v, size_t len)
{
	static const char t[] = "application/grpc";
	size_t n = sizeof(t) - 1;
	return len >= n && memcmp(v, t, n) == 0 && (len == n || v[n] == '+' || v[n] == ';');
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct grpc_call *call = stream_call(h2, frame->hd.stream_id);
	uint64_t ns;

	if (!call || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	call->header_bytes += namelen + valuelen + 32;
	if (call->header_bytes > GRPC_MAX_HEADER_SIZE)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
#define IS(s) (namelen == sizeof(s) - 1 && memcmp(name, s, namelen) == 0)
	if (IS(":method"))
		call->post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
	else if (IS(":path") && !call->path &&
		 !(call->path = strndup((const char *)value, valuelen)))
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	else if (IS("content-type"))
		call->grpc_type = is_grpc_type(value, valuelen);
	else if (IS("grpc-timeout") && grpc_timeout_parse((const char *)value, valuelen, &ns) == 0)
		call->deadline_ns = ns > UINT64_MAX / 2 ? 0 : imc_monotonic_ns() + ns;
#undef IS
	return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
		   void *ud)
{
	struct grpc_call *call = stream_call(h2, id);

	if (!call || call->too_big)
		return 0;
	if (call->in.len + len > GRPC_MAX_MESSAGE + 5 || imc_buf_append(&call->in, data, len) < 0) {
		call->too_big = true;
		imc_buf_free(&call->in);
		call->in = (struct imc_buf){0};
	}
	return 0;
}

static int on_frame(nghttp2_session *h2, const nghttp2_frame *frame, void *ud)
{
	struct grpc_conn *c = ud;
	struct grpc_call *call;

	if (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	call = stream_call(h2, frame->hd.stream_id);
	if (!call || call->dispatched)
		return 0;
	call->dispatched = true;
	respond(c, call, run_call(c->s, call));
	return 0;
}

static int on_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
	call_free(stream_call(h2, id));
	nghttp2_session_set_stream_user_data(h2, id, NULL);
	return 0;
}

static int make_callbacks(nghttp2_session_callbacks **ret)
{
	nghttp2_session_callbacks *cbs;

	if (nghttp2_session_callbacks_new(&cbs) != 0)
		return -ENOMEM;
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
	*ret = cbs;
	return 0;
}

int grpc_server_new(const struct grpc_method *methods, size_t n, void *userdata,
		    struct grpc_server **ret, imc_error *err)
{
	struct grpc_server *s = calloc(1, sizeof(*s));

	if (!s || make_callbacks(&s->cbs) < 0) {
		free(s);
		return imc_err(err, ENOMEM, "grpc server: out of memory");
	}
	s->methods = methods;
	s->n_methods = n;
	s->userdata = userdata;
	s->lfd = -1;
	*ret = s;
	return 0;
}

static int conn_new(struct grpc_server *s, int fd, struct grpc_conn **ret)
{
	nghttp2_settings_entry set[] = {
	    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, GRPC_MAX_STREAMS},
	    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, GRPC_MAX_HEADER_SIZE},
	};
	struct grpc_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->s = s;
	c->fd = fd;
	if (nghttp2_session_server_new(&c->h2, s->cbs, c) != 0) {
		free(c);
		return -ENOMEM;
	}
	nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, set, IMC_ARRAY_SIZE(set));
	*ret = c;
	return 0;
}

int grpc_conn_new_mem(struct grpc_server *s, struct grpc_conn **ret)
{
	return conn_new(s, -1, ret);
}

void grpc_conn_free(struct grpc_conn *c)
{
	if (!c)
		return;
	nghttp2_session_del(c->h2);
	while (c->calls)
		call_free(c->calls);
	if (c->fd >= 0)
		close(c->fd);
	imc_buf_free(&c->out);
	free(c);
}

const struct imc_buf *grpc_conn_output(const struct grpc_conn *c)
{
	return &c->out;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -EPIPE;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Everything nghttp2 has to send, to the socket (or the memory buffer, kept to 64 MiB). */
static int conn_flush(struct grpc_conn *c)
{
	for (;;) {
		const uint8_t *p;
		ssize_t n = nghttp2_session_mem_send(c->h2, &p);
		if (n < 0)
			return -EPROTO;
		if (n == 0)
			return 0;
		if (c->fd >= 0 && send_all(c->fd, p, (size_t)n) < 0)
			return -EPIPE;
		if (c->fd < 0 && c->out.len + (size_t)n <= (64u << 20) &&
		    imc_buf_append(&c->out, p, (size_t)n) < 0)
			return -ENOMEM;
	}
}

int grpc_conn_feed(struct grpc_conn *c, const uint8_t *data, size_t len)
{
	ssize_t r = nghttp2_session_mem_recv(c->h2, data, len);

	if (r < 0 || conn_flush(c) < 0)
		return -EPROTO;
	if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))
		return -EPROTO;
	return 0;
}

static int check_stale_socket(const char *path, imc_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	_cleanup_close_ int fd = -1;
	struct stat st;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "%s", path);
	if (!S_ISSOCK(st.st_mode))
		return imc_err(err, EEXIST, "%s: exists and is not a socket", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return imc_err_sys(err, errno, "socket");
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return imc_err(err, EADDRINUSE, "%s: another server listens there", path);
	if (unlink(path) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "%s: remove stale socket", path);
	return 0;
}

int grpc_server_listen(struct grpc_server *s, const char *path, imc_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	_cleanup_close_ int fd = -1;

	if (strlen(path) >= sizeof(sa.sun_path))
		return imc_err(err, ENAMETOOLONG, "%s: socket path too long", path);
	if (check_stale_socket(path, err) < 0)
		return err->code;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return imc_err_sys(err, errno, "socket");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return imc_err_sys(err, errno, "%s: bind", path);
	if (chmod(path, 0660) < 0 || listen(fd, 64) < 0) {
		int e = errno;
		unlink(path);
		return imc_err_sys(err, e, "%s: listen", path);
	}
	s->path = strdup(path);
	if (!s->path) {
		unlink(path);
		return imc_err(err, ENOMEM, "out of memory");
	}
	s->lfd = steal_fd(&fd);
	return 0;
}

static void accept_conn(struct grpc_server *s)
{
	int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
	struct grpc_conn *c;

	if (fd < 0)
		return;
	if (s->n_conns == GRPC_MAX_CONNS || conn_new(s, fd, &c) < 0) {
		close(fd);
		return;
	}
	/* A peer that is gone before our SETTINGS reach it (a probe that only connects, as
	 * grpc_server_listen's check of a live socket does): the connection ends here. */
	if (conn_flush(c) < 0) {
		grpc_conn_free(c);
		return;
	}
	s->conns[s->n_conns++] = c;
}

/* Reads what the peer sent; false when the connection is over. */
static bool conn_read(struct grpc_conn *c)
{
	uint8_t buf[65536];
	ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

	if (n < 0 && errno == EINTR)
		return true;
	if (n <= 0)
		return false;
	return grpc_conn_feed(c, buf, (size_t)n) == 0;
}

int grpc_server_run(struct grpc_server *s, volatile sig_atomic_t *stop, imc_error *err)
{
	struct pollfd p[GRPC_MAX_CONNS + 1];

	if (s->lfd < 0)
		return imc_err(err, EINVAL, "grpc server: not listening");
	while (!*stop) {
		size_t i;
		p[0] = (struct pollfd){.fd = s->n_conns < GRPC_MAX_CONNS ? s->lfd : -1,
				       .events = POLLIN};
		for (i = 0; i < s->n_conns; i++)
			p[i + 1] = (struct pollfd){.fd = s->conns[i]->fd, .events = POLLIN};
		if (poll(p, s->n_conns + 1, 200) < 0) {
			if (errno == EINTR)
				continue;
			return imc_err_sys(err, errno, "poll");
		}
		for (i = s->n_conns; i-- > 0;) {
			if (!p[i + 1].revents || conn_read(s->conns[i]))
				continue;
			grpc_conn_free(s->conns[i]);
			s->conns[i] = s->conns[--s->n_conns];
		}
		if (p[0].revents & POLLIN)
			accept_conn(s);
	}
	return 0;
}

void grpc_server_free(struct grpc_server *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n_conns; i++)
		grpc_conn_free(s->conns[i]);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->path)
		unlink(s->path);
	free(s->path);
	nghttp2_session_callbacks_del(s->cbs);
	free(s);
}
