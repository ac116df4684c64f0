/* net_perform: a request's attempts (retries with backoff, within the deadline), each
 * attempt's redirects (checked, credentials kept to the origin), the verdict on each answer, and
 * the messages. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SLEEP_SLICE_MS 100

/* What went wrong in one attempt, and whether another may help. */
struct verdict {
	bool retry;
	bool has_after;	   /* the server said when (Retry-After) */
	uint64_t after_ms; /* ... this long from now */
};

static const char *method_name(const struct net_request *q)
{
	return q->method ? q->method : "GET";
}

/* "GET https://host/path" (and where the redirects led) for the front of a message. */
static void what(const struct net_xfer *x, char *buf, size_t size)
{
	char a[NET_MSG_URL], b[NET_MSG_URL];

	net_url_redact(x->q->url, a, sizeof(a));
	if (x->resp->redirects && x->url) {
		net_url_redact(x->url, b, sizeof(b));
		snprintf(buf, size, "%s %s (redirected to %s)", method_name(x->q), a, b);
	} else {
		snprintf(buf, size, "%s %s", method_name(x->q), a);
	}
}

static int fail(const struct net_xfer *x, imc_error *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(const struct net_xfer *x, imc_error *err, int errnum, const char *fmt, ...)
{
	char head[2 * NET_MSG_URL + 64], tail[IMC_ERR_MSG];
	va_list ap;

	what(x, head, sizeof(head));
	va_start(ap, fmt);
	vsnprintf(tail, sizeof(tail), fmt, ap);
	va_end(ap);
	return imc_err(err, errnum, "%s: %s", head, tail);
}

/* ---- checks before anything is sent --------------------------------------------------------- */

static bool method_known(const char *m)
{
	static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};

	for (size_t i = 0; m && i < IMC_ARRAY_SIZE(known); i++)
		if (strcmp(m, known[i]) == 0)
			return true;
	return !m;
}

static int check_digest(const char *want, char hex[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	char buf[7 + IMC_SHA256_HEX_LEN + 1];

	if (strncmp(want, "sha256:", 7) != 0) {
		snprintf(buf, sizeof(buf), "sha256:%.64s", want);
		want = strlen(want) == IMC_SHA256_HEX_LEN ? buf : "";
	}
	return imc_digest_parse(want, hex, err);
}

static int check_request(const struct net_xfer *x, char want[IMC_SHA256_HEX_LEN + 1],
			 imc_error *err)
{
	const struct net_request *q = x->q;
	const struct net_sink *s = &q->sink;

	if (!q->url)
		return imc_err(err, EINVAL, "a request without a URL");
	if (!method_known(q->method))
		return fail(x, err, EINVAL, "unknown method");
	if ((s->kind == NET_SINK_FILE && s->fd < 0) ||
	    (s->kind == NET_SINK_CALLBACK && !s->write) ||
	    (s->resume && s->kind != NET_SINK_FILE) || (q->body.from_fd && q->body.fd < 0))
		return fail(x, err, EINVAL, "a sink or a body without its file or callback");
	if (q->range && q->range_to < q->range_from)
		return fail(x, err, EINVAL, "an empty byte range");
	if (s->sized && s->max && s->size > s->max)
		return fail(x, err, EFBIG, "%llu bytes declared, more than the %llu allowed",
			    (unsigned long long)s->size, (unsigned long long)s->max);
	if (s->want_sha256 && check_digest(s->want_sha256, want, NULL) < 0)
		return fail(x, err, EINVAL, "the expected digest is not sha256:<64 hex digits>");
	return net_url_policy(x->c, q, q->url, err);
}

/* The sink before the first attempt: a file to resume is read back for its hash. */
static int sink_open(struct net_xfer *x, imc_error *err)
{
	const struct net_sink *s = &x->q->sink;
	struct stat st;
	int r;

	x->origin = x->q->range ? x->q->range_from : 0;
	x->hashing = s->hash || s->want_sha256;
	if (x->hashing && (r = imc_sha256_init(&x->sha, err)) < 0) {
		x->hashing = false;
		return r;
	}
	if (s->kind != NET_SINK_FILE)
		return 0;
	if (fstat(s->fd, &st) < 0)
		return imc_err_sys(err, errno, "the file to download into");
	if (!s->resume || (s->sized && (uint64_t)st.st_size >= s->size) || st.st_size == 0)
		return ftruncate(s->fd, 0) < 0 ? imc_err_sys(err, errno, "truncate the file") : 0;
	return net_file_hash(s->fd, (uint64_t)st.st_size, x->hashing ? &x->sha : NULL,
			     &x->delivered, err);
}

/* ---- one attempt --------------------------------------------------------------------------------
 */

static bool resumable(const struct net_xfer *x)
{
	return strcmp(method_name(x->q), "GET") == 0 && x->q->sink.kind != NET_SINK_DISCARD &&
	       !x->ranges_bad && !x->from_scratch;
}

static int range_plan(struct net_xfer *x, imc_error *err)
{
	const struct net_request *q = x->q;
	int r;

	if (x->delivered && !resumable(x) && (r = net_sink_restart(x, err)) < 0)
		return r;
	x->from_scratch = false;
	x->resuming = x->delivered > 0 && !q->range;
	x->asked_range = q->range || x->delivered > 0;
	x->asked_from = x->origin + x->delivered;
	x->asked_to = q->range ? q->range_to : UINT64_MAX;
	return 0;
}

static int timeout_verdict(struct net_xfer *x, const char *msg, struct verdict *v, imc_error *err)
{
	curl_off_t connected = 0;

	curl_easy_getinfo(x->curl, CURLINFO_CONNECT_TIME_T, &connected);
	if (x->deadline_ns != UINT64_MAX && imc_monotonic_ns() + 20 * 1000000ULL >= x->deadline_ns)
		return fail(x, err, ETIMEDOUT, "no complete answer within the deadline of %llu ms",
			    (unsigned long long)((x->deadline_ns - x->t0_ns) / 1000000));
	v->retry = true;
	if (!connected)
		return fail(x, err, ETIMEDOUT, "%s", msg);
	return fail(x, err, ETIMEDOUT, "slower than %llu bytes/s for %llu s",
		    (unsigned long long)x->lim.min_rate,
		    (unsigned long long)x->lim.min_rate_window_s);
}

/* No answer: the transfer broke (the bytes that came stay in the sink for a resume). */
static int transport_verdict(struct net_xfer *x, CURLcode code, struct verdict *v, imc_error *err)
{
	char msg[CURL_ERROR_SIZE + 64];
	bool not_sent = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
			code == CURLE_COULDNT_RESOLVE_PROXY;

	if (x->fail) { /* a callback stopped it, and said why */
		v->retry = x->fail_retry;
		return fail(x, err, x->fail, "%s", x->fail_err.msg);
	}
	if (x->refused[0] && code == CURLE_COULDNT_CONNECT)
		return fail(x, err, EPERM, "destination refused: %s", x->refused);
	net_escape(x->errbuf[0] ? x->errbuf : curl_easy_strerror(code),
		   strlen(x->errbuf[0] ? x->errbuf : curl_easy_strerror(code)), msg, sizeof(msg));
	if (code == CURLE_OPERATION_TIMEDOUT)
		return timeout_verdict(x, msg, v, err);
	v->retry = net_curl_retryable(code) && (not_sent || net_method_idempotent(x->q->method));
	return fail(x, err, net_curl_errno(code), "%s", msg);
}

static bool status_accepted(const struct net_request *q, long status)
{
	for (const long *a = q->accept; a && *a; a++)
		if (*a == status)
			return true;
	return q->any_status || (status >= 200 && status <= 299);
}

static void retry_after(const struct net_xfer *x, struct verdict *v)
{
	for (size_t i = 0; i < x->n_headers; i++)
		if (strcasecmp(x->headers[i].name, "Retry-After") == 0 &&
		    net_retry_after_parse(x->headers[i].value, imc_now(), &v->after_ms) == 0) {
			v->has_after = true;
			return;
		}
}

/* An answer came: is it the one asked for? */
static int answer_verdict(struct net_xfer *x, struct verdict *v, imc_error *err)
{
	const struct net_sink *s = &x->q->sink;
	long st = x->status;
	char reason[400];

	if (x->mode == NET_HOP_SINK && s->sized && x->delivered != s->size &&
	    strcmp(method_name(x->q), "HEAD") != 0) {
		v->retry = resumable(x); /* closed early: the next attempt asks for the rest */
		return fail(x, err, EBADMSG, "got %llu bytes, want %llu",
			    (unsigned long long)x->delivered, (unsigned long long)s->size);
	}
	if (status_accepted(x->q, st))
		return 0;
	if (st == 416 && x->resuming) {
		x->from_scratch = true; /* our offset is wrong: start over */
		v->retry = true;
		return fail(x, err, ERANGE, "HTTP 416 to a resume at byte %llu",
			    (unsigned long long)x->asked_from);
	}
	v->retry = net_status_retryable(st) &&
		   (net_method_idempotent(x->q->method) || st == 429 || st == 503);
	if (v->retry)
		retry_after(x, v);
	net_reason(x->errbody.data, x->errbody.len, reason, sizeof(reason));
	return fail(x, err, net_status_errno(st), "HTTP %ld%s%s%s", st, reason[0] ? " (" : "",
		    reason, reason[0] ? ")" : "");
}

/* The next hop of a redirect, if this answer is one we follow. */
static int redirect_next(struct net_xfer *x, char **next, imc_error *err)
{
	char *loc = NULL, shown[NET_MSG_URL];
	struct net_url a = {0}, b = {0};

	if (curl_easy_getinfo(x->curl, CURLINFO_REDIRECT_URL, &loc) != CURLE_OK || !loc)
		return fail(x, err, EPROTO, "HTTP %ld with an unusable Location", x->status);
	net_url_redact(loc, shown, sizeof(shown));
	if (x->resp->redirects >= NET_REDIRECTS_MAX)
		return fail(x, err, EPROTO, "more than %d redirects", NET_REDIRECTS_MAX);
	if (!net_redirect_allowed(x->c, x->url, loc))
		return fail(x, err, EPERM,
			    "redirect to %s refused: plain HTTP to another host that is not "
			    "named insecure",
			    shown);
	if (!(*next = strdup(loc)))
		return imc_err(err, ENOMEM, "out of memory");
	/* Credentials stay with the origin: scheme, host and port. */
	if (net_url_parse(x->url, &a, NULL) == 0 && net_url_parse(loc, &b, NULL) == 0)
		x->send_auth = x->send_auth && strcmp(a.scheme, b.scheme) == 0 &&
			       strcasecmp(a.host, b.host) == 0 && a.port == b.port;
	else
		x->send_auth = false;
	net_url_free(&a);
	net_url_free(&b);
	if (x->status == 303 ||
	    ((x->status == 301 || x->status == 302) && x->method && strcmp(x->method, "POST") == 0))
		x->method = x->method && strcmp(x->method, "HEAD") == 0 ? "HEAD" : NULL;
	return 0;
}

/* 0: an answer for the caller; 1: a redirect to follow; -errno otherwise.  *ret_ok: the
 * transfer itself went well (its handle may be kept). */
static int hop_verdict(struct net_xfer *x, CURLcode code, struct verdict *v, bool *ret_ok,
		       imc_error *err)
{
	*ret_ok = !x->fail && (code == CURLE_OK || (code == CURLE_WRITE_ERROR && x->errbody_full));
	if (!*ret_ok)
		return transport_verdict(x, code, v, err);
	if (x->mode == NET_HOP_REDIRECT)
		return 1;
	return answer_verdict(x, v, err);
}

static void set_url(struct net_xfer *x, char *own)
{
	free(x->url_own);
	x->url_own = own;
	x->url = own ? own : x->q->url;
}

/* One attempt: the request, and the redirects it meets. */
static int attempt(struct net_xfer *x, struct verdict *v, imc_error *err)
{
	const struct net_sink *s = &x->q->sink;
	int r = range_plan(x, err);

	if (r < 0)
		return r;
	if (s->sized && x->delivered == s->size && x->delivered > 0)
		return 0; /* all of it came before the connection dropped */
	set_url(x, NULL);
	x->method = x->q->method;
	x->send_auth = true;
	x->resp->redirects = 0;
	for (;;) {
		char *next = NULL;
		CURLcode code;
		bool ok = false;

		r = net_hop(x, &code, err);
		if (r == 0)
			r = hop_verdict(x, code, v, &ok, err);
		if (r == 1)
			r = redirect_next(x, &next, err);
		net_hop_release(x, ok);
		if (r < 0 || !next)
			return r;
		set_url(x, next);
		x->resp->redirects++;
	}
}

static bool cancelled(const struct net_xfer *x)
{
	return net_request_cancelled(x->q);
}

/* Sleep ms in slices, still hearing of a cancel. */
static int pause_ms(struct net_xfer *x, uint64_t ms)
{
	while (ms > 0) {
		uint64_t slice = ms > SLEEP_SLICE_MS ? SLEEP_SLICE_MS : ms;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(slice * 1000000)};
		if (cancelled(x))
			return -ECANCELED;
		nanosleep(&ts, NULL);
		ms -= slice;
		x->resp->waited_ms += slice;
	}
	return cancelled(x) ? -ECANCELED : 0;
}

static uint64_t wait_ms(const struct net_xfer *x, unsigned attempt, const struct verdict *v)
{
	uint32_t rnd = 0;
	uint64_t d;

	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
		rnd = (uint32_t)imc_monotonic_ns();
	d = net_backoff_ms(&x->rt, attempt, rnd);
	if (v->has_after) {
		uint64_t a =
		    v->after_ms > x->rt.retry_after_max_ms ? x->rt.retry_after_max_ms : v->after_ms;
		d = a > d ? a : d;
	}
	return d;
}

/* Say how many attempts a failure took. */
static int attempts_note(const struct net_xfer *x, int r, imc_error *err)
{
	size_t n;

	if (r < 0 && err && x->resp->attempts > 1) {
		n = strlen(err->msg);
		snprintf(err->msg + n, sizeof(err->msg) - n, " (after %u attempts)",
			 x->resp->attempts);
	}
	return r;
}

static void log_retry(const struct net_xfer *x, uint64_t ms, const imc_error *err)
{
	char msg[IMC_ERR_MSG + 80];

	if (!x->c->log)
		return;
	snprintf(msg, sizeof(msg), "%s; attempt %u of %llu in %llu ms", err ? err->msg : "?",
		 x->resp->attempts + 1, (unsigned long long)x->rt.max_attempts,
		 (unsigned long long)ms);
	x->c->log(x->c->log_ctx, IMC_LOG_WARN, msg);
}

static int run(struct net_xfer *x, imc_error *err)
{
	for (unsigned n = 1;; n++) {
		struct verdict v = {0};
		uint64_t ms;
		int r;

		if (cancelled(x))
			return attempts_note(x, fail(x, err, ECANCELED, "cancelled"), err);
		x->resp->attempts = n;
		r = attempt(x, &v, err);
		if (r == 0 || !v.retry || n >= x->rt.max_attempts)
			return attempts_note(x, r, err);
		ms = wait_ms(x, n, &v);
		if (x->deadline_ns != UINT64_MAX &&
		    imc_monotonic_ns() + ms * 1000000ULL >= x->deadline_ns) {
			attempts_note(x, r, err);
			return imc_err_wrap(err, "the deadline leaves no time for another attempt");
		}
		log_retry(x, ms, err);
		if (pause_ms(x, ms) < 0)
			return attempts_note(x, fail(x, err, ECANCELED, "cancelled"), err);
	}
}

/* ---- the request ----------------------------------------------------------------------------- */

static void deadline_set(struct net_xfer *x)
{
	const struct net_request *q = x->q;
	uint64_t declared = q->sink.sized ? q->sink.size : 0, ms;

	if (q->body.len > declared)
		declared = q->body.len;
	x->t0_ns = imc_monotonic_ns();
	ms = net_deadline_ms(&x->lim, declared);
	x->deadline_ns = ms == NET_OFF || ms > (UINT64_MAX - x->t0_ns) / 1000000
			     ? UINT64_MAX
			     : x->t0_ns + ms * 1000000;
}

static int finish(struct net_xfer *x, const char *want, imc_error *err)
{
	struct net_response *resp = x->resp;

	resp->bytes = x->delivered;
	if (x->hashing) {
		imc_sha256_final_hex(&x->sha, resp->sha256);
		x->hashing = false;
	}
	if (want && strcmp(want, resp->sha256) != 0)
		return fail(x, err, EBADMSG, "sha256 mismatch: got sha256:%s, want sha256:%s",
			    resp->sha256, want);
	if (x->q->sink.kind == NET_SINK_MEMORY && !x->mem.data &&
	    imc_buf_append(&x->mem, "", 0) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

/* Hand the answer's parts to the response and free the rest. */
static void xfer_done(struct net_xfer *x, bool body_is_sink)
{
	struct net_response *resp = x->resp;
	struct imc_buf *body = body_is_sink ? &x->mem : &x->errbody;

	if (x->hashing)
		imc_sha256_free(&x->sha);
	resp->headers = steal_pointer(&x->headers);
	resp->n_headers = x->n_headers;
	resp->url = x->url ? strdup(x->url) : NULL;
	if (body->data && !resp->body) {
		resp->body = steal_pointer(&body->data);
		resp->body_len = body->len;
	}
	imc_buf_free(&x->mem);
	imc_buf_free(&x->errbody);
	free(x->url_own);
}

int net_perform(struct net_client *c, const struct net_request *q, struct net_response *ret,
		imc_error *err)
{
	struct net_xfer x = {.c = c, .q = q, .resp = ret};
	char want[IMC_SHA256_HEX_LEN + 1] = "";
	bool sink_ok;
	int r;

	*ret = (struct net_response){.content_length = -1};
	r = check_request(&x, want, err);
	if (r == 0) {
		net_merge(&x.lim, &x.rt, c, q);
		deadline_set(&x);
		r = sink_open(&x, err);
	}
	if (r == 0)
		r = run(&x, err);
	sink_ok = r == 0 && ret->status >= 200 && ret->status <= 299;
	if (sink_ok)
		r = finish(&x, q->sink.want_sha256 ? want : NULL, err);
	xfer_done(&x, sink_ok && r == 0);
	return r;
}

void net_response_free(struct net_response *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->url);
	net_free_headers(r->headers, r->n_headers);
	*r = (struct net_response){.content_length = -1};
}

const char *net_response_header(const struct net_response *r, const char *name, size_t nth)
{
	for (size_t i = 0; i < r->n_headers; i++)
		if (strcasecmp(r->headers[i].name, name) == 0 && nth-- == 0)
			return r->headers[i].value;
	return NULL;
}
