/* One hop of one attempt: a libcurl easy handle set up from the request, performed once, with
 * the callbacks that route the body (sink, error capture, dropped redirect body), check each
 * answer's headers before a byte is written, check each connection's address, and cancel. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"

#define CURL_BUFFER_SIZE (512L << 10)

/* ---- the sink -------------------------------------------------------------------------------- */

static uint64_t sink_cap(const struct net_sink *s)
{
	if (s->max)
		return s->max;
	return s->kind == NET_SINK_MEMORY ? NET_MEMORY_MAX : UINT64_MAX;
}

static int xfail(struct net_xfer *x, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int xfail(struct net_xfer *x, int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(x->fail_err.msg, sizeof(x->fail_err.msg), fmt, ap);
	va_end(ap);
	x->fail = x->fail_err.code = -abs(errnum);
	return x->fail;
}

/* Start the body over from the sink's origin (the server sends it all again). */
int net_sink_restart(struct net_xfer *x, imc_error *err)
{
	const struct net_sink *s = &x->q->sink;
	int r;

	if (x->delivered == 0 && s->kind != NET_SINK_FILE)
		return 0;
	if (s->kind == NET_SINK_CALLBACK)
		return imc_err(err, ERANGE,
			       "%llu bytes were delivered and the server sends the "
			       "body again from its start",
			       (unsigned long long)x->delivered);
	if (s->kind == NET_SINK_FILE && ftruncate(s->fd, 0) < 0)
		return imc_err_sys(err, errno, "truncate the file");
	x->mem.len = 0;
	if (x->mem.data)
		x->mem.data[0] = '\0';
	if (x->hashing) {
		imc_sha256_free(&x->sha);
		r = imc_sha256_init(&x->sha, err);
		if (r < 0) {
			x->hashing = false;
			return r;
		}
	}
	if (x->q->on_bytes && x->delivered)
		x->q->on_bytes(x->q->ctx, -(int64_t)x->delivered);
	x->delivered = 0;
	return 0;
}

static int sink_file_write(int fd, const char *data, size_t n, uint64_t off)
{
	while (n > 0) {
		ssize_t w = pwrite(fd, data, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		data += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static int sink_put(struct net_xfer *x, const char *data, size_t n)
{
	const struct net_sink *s = &x->q->sink;
	int r = 0;

	if (s->sized && n > s->size - x->delivered)
		return xfail(x, EFBIG, "more than the %llu bytes declared",
			     (unsigned long long)s->size);
	if (n > sink_cap(s) - x->delivered)
		return xfail(x, EFBIG, "body larger than %llu bytes",
			     (unsigned long long)sink_cap(s));
	if (s->kind == NET_SINK_MEMORY && imc_buf_append(&x->mem, data, n) < 0)
		return xfail(x, ENOMEM, "out of memory");
	if (s->kind == NET_SINK_FILE)
		r = sink_file_write(s->fd, data, n, x->delivered);
	else if (s->kind == NET_SINK_CALLBACK)
		r = s->write(s->write_ctx, data, n);
	if (r < 0)
		return xfail(x, r, "writing the body: %s", strerror(-r));
	if (x->hashing)
		imc_sha256_update(&x->sha, data, n);
	x->delivered += n;
	if (x->q->on_bytes && !x->q->on_bytes(x->q->ctx, (int64_t)n))
		return xfail(x, ECANCELED, "cancelled");
	return 0;
}

/* ---- answers: headers ---------------------------------------------------------------------- */

static const char *hop_header(const struct net_xfer *x, const char *name)
{
	for (size_t i = 0; i < x->n_headers; i++)
		if (strcasecmp(x->headers[i].name, name) == 0)
			return x->headers[i].value;
	return NULL;
}

static int64_t content_length(const struct net_xfer *x)
{
	const char *v = hop_header(x, "Content-Length");
	int64_t n = 0;

	if (!v || !*v || v[strspn(v, "0123456789")] != '\0')
		return -1;
	if (strlen(v) > 18)
		return INT64_MAX; /* 10^18 bytes or more: past any cap */
	for (const char *p = v; *p; p++)
		n = n * 10 + (*p - '0');
	return n;
}

/* A 206: its Content-Range must start where we asked and stay within what we asked. */
static int check_partial(struct net_xfer *x, uint64_t *ret_len)
{
	const char *v = hop_header(x, "Content-Range");
	const struct net_sink *s = &x->q->sink;
	uint64_t first, last, total;

	if (!x->asked_range)
		return xfail(x, EPROTO, "a partial answer (206) to a request for everything");
	if (!v || net_content_range_parse(v, &first, &last, &total) < 0 || first != x->asked_from ||
	    (x->asked_to != UINT64_MAX && last > x->asked_to)) {
		x->fail_retry = x->resuming; /* ask everything again, without a range */
		x->from_scratch = x->ranges_bad = x->resuming;
		return xfail(x, EPROTO, "the answer to a Range request starts elsewhere");
	}
	if (s->sized && !x->q->range && total != UINT64_MAX && total != s->size)
		return xfail(x, EBADMSG, "the resource has %llu bytes, %llu declared",
			     (unsigned long long)total, (unsigned long long)s->size);
	*ret_len = last - first + 1;
	return 0;
}

/* A 2xx answer's headers are in: check what it declares before any of its body is written. */
static int sink_begin(struct net_xfer *x)
{
	const struct net_sink *s = &x->q->sink;
	int64_t cl = x->resp->content_length;
	uint64_t len = cl >= 0 ? (uint64_t)cl : UINT64_MAX;
	int r;

	if (x->method && strcmp(x->method, "HEAD") == 0)
		return 0;
	if (x->status == 206 && (r = check_partial(x, &len)) < 0)
		return r;
	if (x->status != 206 && x->asked_range && !x->resuming)
		return xfail(x, ERANGE, "the server ignored the byte range");
	if (x->status != 206 && x->asked_range) { /* our resume was ignored: all of it again */
		r = net_sink_restart(x, &x->fail_err);
		if (r < 0)
			return x->fail = r;
	}
	if (len == UINT64_MAX)
		return 0;
	if (len > sink_cap(s) - x->delivered)
		return xfail(x, EFBIG, "the answer declares %llu bytes, more than the %llu allowed",
			     (unsigned long long)len, (unsigned long long)sink_cap(s));
	if (s->sized && len > s->size - x->delivered)
		return xfail(x, EFBIG,
			     "the answer declares %llu bytes, more than the %llu expected",
			     (unsigned long long)(x->delivered + len), (unsigned long long)s->size);
	if (s->sized && len < s->size - x->delivered && x->status != 206)
		return xfail(x, EBADMSG, "the answer declares %llu bytes, %llu expected",
			     (unsigned long long)len, (unsigned long long)s->size);
	return 0;
}

static int headers_done(struct net_xfer *x)
{
	long status = 0;

	curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || x->head_done)
		return 0; /* 1xx: the answer follows; trailers after the body */
	x->head_done = true;
	x->status = x->resp->status = status;
	x->resp->content_length = content_length(x);
	if (status >= 300 && status <= 399 && status != 304 && !x->q->no_redirect &&
	    hop_header(x, "Location")) {
		x->mode = NET_HOP_REDIRECT;
		return 0;
	}
	if (status >= 200 && status <= 299) {
		x->mode = NET_HOP_SINK;
		return sink_begin(x);
	}
	x->mode = NET_HOP_ERROR;
	return 0;
}

static int header_add(struct net_xfer *x, const char *line, size_t n)
{
	const char *colon = memchr(line, ':', n), *v;
	struct net_header *h;
	size_t vn;

	if (!colon || colon == line)
		return 0; /* not a header (a folded line): ignored */
	if (x->n_headers >= NET_HEADERS_MAX || x->header_bytes + n > NET_HEADER_BYTES_MAX)
		return xfail(x, EPROTO, "more than %d headers or %u bytes of them", NET_HEADERS_MAX,
			     NET_HEADER_BYTES_MAX);
	h = realloc(x->headers, (x->n_headers + 1) * sizeof(*h));
	if (!h)
		return xfail(x, ENOMEM, "out of memory");
	x->headers = h;
	for (v = colon + 1; v < line + n && (*v == ' ' || *v == '\t'); v++)
		;
	for (vn = (size_t)(line + n - v); vn > 0 && strchr(" \t\r\n", v[vn - 1]); vn--)
		;
	h[x->n_headers].name = strndup(line, (size_t)(colon - line));
	h[x->n_headers].value = strndup(v, vn);
	if (!h[x->n_headers].name || !h[x->n_headers].value) {
		free(h[x->n_headers].name);
		free(h[x->n_headers].value);
		return xfail(x, ENOMEM, "out of memory");
	}
	x->n_headers++;
	x->header_bytes += n;
	return 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ctx)
{
	struct net_xfer *x = ctx;
	size_t n = size * nmemb;

	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		net_free_headers(x->headers, x->n_headers); /* a new answer (after a 1xx) */
		x->headers = NULL;
		x->n_headers = x->header_bytes = 0;
		return n;
	}
	if (x->head_done)
		return n; /* trailers */
	if ((n == 2 && data[0] == '\r' && data[1] == '\n') || (n == 1 && data[0] == '\n'))
		return headers_done(x) < 0 ? 0 : n;
	return header_add(x, data, n) < 0 ? 0 : n;
}

/* ---- answers: bodies, progress, sockets ---------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
	struct net_xfer *x = ctx;
	size_t n = size * nmemb, keep;

	switch (x->mode) {
	case NET_HOP_SINK:
		return sink_put(x, data, n) < 0 ? 0 : n;
	case NET_HOP_ERROR:
		keep =
		    x->errbody.len < NET_ERROR_BODY_MAX ? NET_ERROR_BODY_MAX - x->errbody.len : 0;
		if (keep > n)
			keep = n;
		if (keep && imc_buf_append(&x->errbody, data, keep) < 0)
			return xfail(x, ENOMEM, "out of memory"), 0;
		if (keep < n) {
			x->errbody_full = true; /* enough to say why: stop reading */
			return 0;
		}
		return n;
	default:
		return n; /* a redirect's body */
	}
}

bool net_request_cancelled(const struct net_request *q)
{
	return (q->cancel && atomic_load(q->cancel)) ||
	       (q->cancelled && q->cancelled(q->cancel_ctx)) ||
	       (q->on_bytes && !q->on_bytes(q->ctx, 0));
}

static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct net_xfer *x = ctx;

	if (net_request_cancelled(x->q)) {
		xfail(x, ECANCELED, "cancelled");
		return 1;
	}
	return 0;
}

static curl_socket_t on_open(void *ctx, curlsocktype purpose, struct curl_sockaddr *a)
{
	struct net_xfer *x = ctx;

	if (!net_dest_allowed(x->c, &a->addr, x->refused, sizeof(x->refused)))
		return CURL_SOCKET_BAD;
	return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- request bodies ---------------------------------------------------------------------- */

static size_t on_read(char *buf, size_t size, size_t nmemb, void *ctx)
{
	struct net_xfer *x = ctx;
	const struct net_body *b = &x->q->body;
	size_t want = size * nmemb, left = b->len - (size_t)x->upload_pos;
	ssize_t n;

	if (want > left)
		want = left;
	if (want == 0)
		return 0;
	if (!b->from_fd) {
		memcpy(buf, (const char *)b->data + x->upload_pos, want);
		x->upload_pos += want;
		return want;
	}
	do
		n = pread(b->fd, buf, want, (off_t)(b->offset + x->upload_pos));
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		xfail(x, n < 0 ? errno : EIO, "reading the request body: %s",
		      n < 0 ? strerror(errno) : "the file is shorter than its length");
		return CURL_READFUNC_ABORT;
	}
	x->upload_pos += (uint64_t)n;
	return (size_t)n;
}

static int on_seek(void *ctx, curl_off_t offset, int origin)
{
	struct net_xfer *x = ctx;

	if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > x->q->body.len)
		return CURL_SEEKFUNC_CANTSEEK;
	x->upload_pos = (uint64_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* ---- the handle ---------------------------------------------------------------------------- */

/* Lines with a secret in them are wiped before they are freed. */
static void slist_wipe_free(struct curl_slist **l)
{
	for (struct curl_slist *p = *l; p; p = p->next)
		explicit_bzero(p->data, strlen(p->data));
	curl_slist_free_all(*l);
}

static bool line_ok(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < ' ' && *s != '\t')
			return false;
	return true;
}

static bool credential_header(const char *line)
{
	static const char *const names[] = {"authorization:", "proxy-authorization:", "cookie:"};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(names); i++)
		if (strncasecmp(line, names[i], strlen(names[i])) == 0)
			return true;
	return false;
}

static int add_line(struct curl_slist **l, const char *line, imc_error *err)
{
	struct curl_slist *n = curl_slist_append(*l, line);

	if (!n)
		return imc_err(err, ENOMEM, "out of memory");
	*l = n;
	return 0;
}

static int build_headers(struct net_xfer *x, struct curl_slist **l, imc_error *err)
{
	const struct net_request *q = x->q;
	char line[320];
	int r = 0;

	for (const char *const *h = q->headers; h && *h && r == 0; h++) {
		if (!line_ok(*h) || !strchr(*h, ':'))
			return imc_err(err, EINVAL,
				       "a request header is not one \"Name: value\" line");
		if (x->send_auth || !credential_header(*h))
			r = add_line(l, *h, err);
	}
	if (r == 0 && x->send_auth && q->bearer) {
		_cleanup_free_ char *auth = NULL;
		if (!line_ok(q->bearer))
			return imc_err(err, EINVAL, "the bearer token is not one line");
		if (asprintf(&auth, "Authorization: Bearer %s", q->bearer) < 0)
			return imc_err(err, ENOMEM, "out of memory");
		r = add_line(l, auth, err);
		explicit_bzero(auth, strlen(auth));
	}
	if (r == 0 && q->body.content_type) {
		if (!line_ok(q->body.content_type) || strlen(q->body.content_type) > 256)
			return imc_err(err, EINVAL, "the content type is not one short line");
		snprintf(line, sizeof(line), "Content-Type: %s", q->body.content_type);
		r = add_line(l, line, err);
	}
	return r == 0 ? add_line(l, "Expect:", err) : r; /* no 100-continue round trip */
}

#define SET(opt, val)                                                                              \
	if (c == CURLE_OK)                                                                         \
	c = curl_easy_setopt(x->curl, opt, val)

/* The method and the request body. */
static CURLcode setup_method(struct net_xfer *x)
{
	const struct net_body *b = &x->q->body;
	const char *m = x->method ? x->method : "GET";
	bool body = (b->data || b->from_fd || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
		     strcmp(m, "PATCH") == 0) &&
		    strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0;
	CURLcode c = CURLE_OK;

	x->upload_pos = 0;
	if (strcmp(m, "HEAD") == 0) {
		SET(CURLOPT_NOBODY, 1L);
		return c;
	}
	if (!body) {
		SET(CURLOPT_HTTPGET, 1L);
		if (strcmp(m, "GET") != 0)
			SET(CURLOPT_CUSTOMREQUEST, m);
		return c;
	}
	SET(CURLOPT_READFUNCTION, on_read);
	SET(CURLOPT_READDATA, x);
	SET(CURLOPT_SEEKFUNCTION, on_seek);
	SET(CURLOPT_SEEKDATA, x);
	if (strcmp(m, "PUT") == 0) {
		SET(CURLOPT_UPLOAD, 1L);
		SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)b->len);
	} else {
		SET(CURLOPT_POST, 1L);
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b->len);
		if (strcmp(m, "POST") != 0)
			SET(CURLOPT_CUSTOMREQUEST, m);
	}
	return c;
}

static CURLcode setup_limits(struct net_xfer *x)
{
	CURLcode c = CURLE_OK;
	uint64_t now = imc_monotonic_ns(), left_ms;

	if (x->lim.connect_timeout_ms != NET_OFF)
		SET(CURLOPT_CONNECTTIMEOUT_MS, (long)x->lim.connect_timeout_ms);
	if (x->lim.min_rate != NET_OFF && x->lim.min_rate_window_s != NET_OFF) {
		SET(CURLOPT_LOW_SPEED_LIMIT, (long)x->lim.min_rate);
		SET(CURLOPT_LOW_SPEED_TIME, (long)x->lim.min_rate_window_s);
	}
	if (x->deadline_ns != UINT64_MAX) {
		left_ms = x->deadline_ns > now ? (x->deadline_ns - now) / 1000000 : 0;
		SET(CURLOPT_TIMEOUT_MS, (long)(left_ms ? left_ms : 1));
	}
	return c;
}

static CURLcode setup_transport(struct net_xfer *x)
{
	const struct net_client *cl = x->c;
	CURLcode c = CURLE_OK;

	SET(CURLOPT_URL, x->url);
	SET(CURLOPT_SHARE, cl->share);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_ERRORBUFFER, x->errbuf);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, x);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, x);
	SET(CURLOPT_XFERINFOFUNCTION, on_progress);
	SET(CURLOPT_XFERINFODATA, x);
	SET(CURLOPT_NOPROGRESS, 0L);
	SET(CURLOPT_OPENSOCKETFUNCTION, on_open);
	SET(CURLOPT_OPENSOCKETDATA, x);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_USERAGENT, cl->user_agent);
	SET(CURLOPT_BUFFERSIZE, CURL_BUFFER_SIZE);
	if (x->q->unix_socket)
		SET(CURLOPT_UNIX_SOCKET_PATH, x->q->unix_socket);
	if (cl->check_destination)
		SET(CURLOPT_PROXY, ""); /* the check must see the real destination */
	if (cl->ca_file) {
		/* OpenSSL reads both: the extra CAs from the file, the system's from the directory.
		 */
		SET(CURLOPT_CAINFO, cl->ca_file);
		SET(CURLOPT_CAPATH, net_system_capath());
	}
	return c;
}

static CURLcode setup_request(struct net_xfer *x, struct curl_slist *headers)
{
	const struct net_request *q = x->q;
	CURLcode c = setup_transport(x);
	char range[48];

	if (c == CURLE_OK)
		c = setup_limits(x);
	if (c == CURLE_OK)
		c = setup_method(x);
	SET(CURLOPT_HTTPHEADER, headers);
	if (x->send_auth && q->username) {
		SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		SET(CURLOPT_USERNAME, q->username);
		SET(CURLOPT_PASSWORD, q->password ? q->password : "");
	}
	if (x->asked_range) {
		if (x->asked_to == UINT64_MAX)
			snprintf(range, sizeof(range), "%llu-", (unsigned long long)x->asked_from);
		else
			snprintf(range, sizeof(range), "%llu-%llu",
				 (unsigned long long)x->asked_from,
				 (unsigned long long)x->asked_to);
		SET(CURLOPT_RANGE, range);
	}
	return c;
}
#undef SET

static void hop_reset(struct net_xfer *x)
{
	net_free_headers(x->headers, x->n_headers);
	x->headers = NULL;
	x->n_headers = x->header_bytes = 0;
	x->mode = NET_HOP_HEADERS;
	x->status = 0;
	x->head_done = x->errbody_full = x->fail_retry = false;
	x->errbody.len = 0;
	if (x->errbody.data)
		x->errbody.data[0] = '\0';
	x->fail = 0;
	imc_err_clear(&x->fail_err);
	x->refused[0] = x->errbuf[0] = '\0';
}

/* The handle for this hop: the kept one of the request's conn (reset), else a fresh one. */
static int hop_handle(struct net_xfer *x, imc_error *err)
{
	struct net_conn *conn = x->q->conn;

	if (conn && conn->curl) {
		x->curl = conn->curl;
		curl_easy_reset(x->curl);
		return 0;
	}
	x->curl = curl_easy_init();
	if (!x->curl)
		return imc_err(err, ENOMEM, "cannot create a libcurl handle");
	if (conn)
		conn->curl = x->curl;
	return 0;
}

int net_hop(struct net_xfer *x, CURLcode *ret_code, imc_error *err)
{
	_cleanup_(slist_wipe_free) struct curl_slist *headers = NULL;
	CURLcode c;
	int r;

	hop_reset(x);
	*ret_code = CURLE_OK;
	r = build_headers(x, &headers, err);
	if (r == 0)
		r = hop_handle(x, err);
	if (r < 0)
		return r;
	c = setup_request(x, headers);
	if (c != CURLE_OK)
		return imc_err(err, net_curl_errno(c), "cannot set up libcurl: %s",
			       curl_easy_strerror(c));
	*ret_code = curl_easy_perform(x->curl);
	/* Nothing of this request stays in a kept handle: the share, the password. */
	curl_easy_setopt(x->curl, CURLOPT_SHARE, NULL);
	curl_easy_setopt(x->curl, CURLOPT_PASSWORD, NULL);
	return 0;
}

/* After a hop: a conn keeps its handle only after a success (a failed transfer can leave a
 * handle that refuses options later); a handle of the request's own goes. */
void net_hop_release(struct net_xfer *x, bool keep)
{
	struct net_conn *conn = x->q->conn;

	if (!x->curl)
		return;
	if (conn && keep) {
		x->curl = NULL;
		return;
	}
	curl_easy_cleanup(x->curl);
	if (conn)
		conn->curl = NULL;
	x->curl = NULL;
}

int net_file_hash(int fd, uint64_t len, imc_sha256 *sha, uint64_t *ret_len, imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	uint64_t off = 0;

	if (sha && !(buf = malloc(1u << 20)))
		return imc_err(err, ENOMEM, "out of memory");
	while (sha && off < len) {
		size_t want = len - off > (1u << 20) ? (1u << 20) : (size_t)(len - off);
		ssize_t n = pread(fd, buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return imc_err_sys(err, n < 0 ? errno : EIO, "read back the partial file");
		imc_sha256_update(sha, buf, (size_t)n);
		off += (uint64_t)n;
	}
	*ret_len = len;
	return 0;
}
