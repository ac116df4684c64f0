/* A scripted HTTP/1.1 server for unit tests, in the test process: it listens on a random
 * 127.0.0.1 port (or a unix socket, optionally with TLS from a certificate made on the spot),
 * serves each connection in a thread of its own, records every request, and answers each one by
 * calling the test's handler, which can send anything: a status with headers, a body cut short,
 * bytes trickled slowly, a stall, a huge Content-Length.  Header-only, static functions. */
#ifndef IMC_TESTS_HTTPSRV_H
#define IMC_TESTS_HTTPSRV_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "../../common/imc.h"

#define SRV_REQS_MAX  64
#define SRV_CONNS_MAX 64
#define SRV_HEAD_MAX  16384

struct srv_req {
	char method[16];
	char path[1024];
	char range[64];
	char auth[512];
	char ctype[128];
	char headers[SRV_HEAD_MAX]; /* all header lines as received */
	size_t body_len;
	char body_sha[IMC_SHA256_HEX_LEN + 1];
	char body[4096]; /* its start */
	unsigned conn;	 /* the connection's number */
};

struct srv;
struct srv_conn {
	struct srv *s;
	int fd;
	SSL *ssl;
	unsigned id;
	bool close; /* set by a handler: close after this answer */
};

/* Answer request q (number n from 0, across connections). */
typedef void (*srv_handler)(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n);

struct srv {
	int lfd;
	unsigned port;
	char unix_path[108];
	SSL_CTX *tls;
	srv_handler fn;
	void *ctx; /* for the handler */
	pthread_t accept_th;
	pthread_t conn_th[SRV_CONNS_MAX];
	struct srv_conn *conns[SRV_CONNS_MAX];
	unsigned n_conns;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct srv_req reqs[SRV_REQS_MAX];
	unsigned n_reqs;
	unsigned n_stalls; /* handlers now stalling */
	atomic_bool stop;
};

/* ---- I/O ------------------------------------------------------------------------------------ */

static int srv_read(struct srv_conn *c, char *buf, size_t n)
{
	for (;;) {
		ssize_t r;
		if (atomic_load(&c->s->stop))
			return -1;
		if (c->ssl) {
			int k = SSL_read(c->ssl, buf, (int)n);
			if (k > 0)
				return k;
			int e = SSL_get_error(c->ssl, k);
			if (e == SSL_ERROR_WANT_READ ||
			    (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR)))
				continue;
			return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
		}
		r = read(c->fd, buf, n);
		if (r >= 0)
			return (int)r;
		if (errno != EAGAIN && errno != EINTR)
			return -1;
	}
}

static int srv_write(struct srv_conn *c, const void *data, size_t n)
{
	const char *p = data;

	while (n > 0) {
		ssize_t w = c->ssl ? SSL_write(c->ssl, p, (int)n) : send(c->fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && !c->ssl && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int srv_printf(struct srv_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int srv_printf(struct srv_conn *c, const char *fmt, ...)
{
	char buf[8192];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= sizeof(buf) ? -1 : srv_write(c, buf, (size_t)n);
}

/* status, extra header lines (each ending in \r\n, may be ""), and a body with its length. */
static void srv_reply(struct srv_conn *c, int status, const char *extra, const void *body,
		      size_t len)
{
	if (srv_printf(c, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s%s\r\n", status, len,
		       extra ? extra : "", c->close ? "Connection: close\r\n" : "") == 0 &&
	    len)
		srv_write(c, body, len);
}

/* Hold the connection open, sending nothing, until the client goes or the server stops. */
static void srv_stall(struct srv_conn *c)
{
	struct srv *s = c->s;
	char b[256];

	pthread_mutex_lock(&s->lock);
	s->n_stalls++;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	while (srv_read(c, b, sizeof(b)) > 0)
		;
	pthread_mutex_lock(&s->lock);
	s->n_stalls--;
	pthread_mutex_unlock(&s->lock);
	c->close = true;
}

static void srv_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Send len bytes of data n at a time, pausing ms between; stops when the client goes. */
static void srv_trickle(struct srv_conn *c, const char *data, size_t len, size_t n, unsigned ms)
{
	for (size_t off = 0; off < len && !atomic_load(&c->s->stop); off += n) {
		if (srv_write(c, data + off, n < len - off ? n : len - off) < 0)
			break;
		srv_sleep_ms(ms);
	}
	c->close = true;
}

/* Serve data (len bytes) as a resource that takes byte ranges (when ranges is set): a Range
 * "bytes=A-" or "bytes=A-B" gets a 206.  cut > 0: send only that many body bytes, then close. */
static void srv_serve(struct srv_conn *c, const struct srv_req *q, const char *data, size_t len,
		      bool ranges, size_t cut)
{
	unsigned long long a = 0, b = len ? len - 1 : 0;
	char extra[256] = "";
	int status = 200;
	size_t n;

	if (ranges && q->range[0]) {
		int k = sscanf(q->range, "bytes=%llu-%llu", &a, &b);
		if (k < 1 || a >= len) {
			srv_printf(c,
				   "HTTP/1.1 416 X\r\nContent-Range: bytes */%zu\r\n"
				   "Content-Length: 0\r\n\r\n",
				   len);
			return;
		}
		if (k < 2 || b >= len)
			b = len - 1;
		status = 206;
		snprintf(extra, sizeof(extra), "Content-Range: bytes %llu-%llu/%zu\r\n", a, b, len);
	}
	n = len ? (size_t)(b - a + 1) : 0;
	srv_printf(c, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n", status, n, extra);
	if (cut && cut < n) {
		srv_write(c, data + a, cut);
		c->close = true;
		return;
	}
	srv_write(c, data + a, n);
}

/* ---- requests ---------------------------------------------------------------------------------
 */

static void header_value(const char *head, const char *name, char *out, size_t size)
{
	size_t n = strlen(name);

	out[0] = '\0';
	for (const char *p = head; p && *p; p = strstr(p, "\r\n"), p = p ? p + 2 : NULL)
		if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
			const char *v = p + n + 1;
			v += strspn(v, " ");
			snprintf(out, size, "%.*s", (int)strcspn(v, "\r\n"), v);
			return;
		}
}

/* Read one request's head; -1 when the connection ended. */
static int srv_read_head(struct srv_conn *c, struct srv_req *q, char *buf, size_t *have)
{
	char *end;

	while (!(end = memmem(buf, *have, "\r\n\r\n", 4))) {
		if (*have >= SRV_HEAD_MAX - 1)
			return -1;
		int k = srv_read(c, buf + *have, SRV_HEAD_MAX - 1 - *have);
		if (k <= 0)
			return -1;
		*have += (size_t)k;
	}
	*end = '\0';
	if (sscanf(buf, "%15s %1023s", q->method, q->path) != 2)
		return -1;
	const char *h = strstr(buf, "\r\n");
	snprintf(q->headers, sizeof(q->headers), "%s", h ? h + 2 : "");
	header_value(q->headers, "Range", q->range, sizeof(q->range));
	header_value(q->headers, "Authorization", q->auth, sizeof(q->auth));
	header_value(q->headers, "Content-Type", q->ctype, sizeof(q->ctype));
	*have -= (size_t)(end + 4 - buf);
	memmove(buf, end + 4, *have);
	return 0;
}

static int srv_read_body(struct srv_conn *c, struct srv_req *q, char *buf, size_t *have)
{
	char cl[32];
	size_t want, got = 0;
	imc_sha256 h;

	header_value(q->headers, "Content-Length", cl, sizeof(cl));
	want = strtoull(cl, NULL, 10);
	if (imc_sha256_init(&h, NULL) < 0)
		return -1;
	while (got < want) {
		if (*have == 0) {
			int k = srv_read(c, buf, SRV_HEAD_MAX - 1);
			if (k <= 0) {
				imc_sha256_free(&h);
				return -1;
			}
			*have = (size_t)k;
		}
		size_t take = want - got < *have ? want - got : *have;
		if (got < sizeof(q->body))
			memcpy(q->body + got, buf,
			       take < sizeof(q->body) - got ? take : sizeof(q->body) - got);
		imc_sha256_update(&h, buf, take);
		got += take;
		*have -= take;
		memmove(buf, buf + take, *have);
	}
	imc_sha256_final_hex(&h, q->body_sha);
	q->body_len = got;
	return 0;
}

static void *srv_conn_main(void *arg)
{
	struct srv_conn *c = arg;
	struct srv *s = c->s;
	char *buf = malloc(SRV_HEAD_MAX);
	size_t have = 0;

	if (c->ssl && SSL_accept(c->ssl) != 1)
		c->close = true;
	while (buf && !c->close && !atomic_load(&s->stop)) {
		struct srv_req *q = calloc(1, sizeof(*q));
		unsigned n;
		if (!q || srv_read_head(c, q, buf, &have) < 0 ||
		    srv_read_body(c, q, buf, &have) < 0) {
			free(q);
			break;
		}
		q->conn = c->id;
		pthread_mutex_lock(&s->lock);
		n = s->n_reqs;
		if (n < SRV_REQS_MAX)
			s->reqs[s->n_reqs++] = *q;
		pthread_mutex_unlock(&s->lock);
		s->fn(s, c, q, n);
		free(q);
	}
	free(buf);
	/* The client sees the end at once (the descriptor is closed by srv_stop). */
	if (c->ssl)
		SSL_shutdown(c->ssl);
	shutdown(c->fd, SHUT_RDWR);
	return NULL;
}

static struct srv_conn *srv_conn_new(struct srv *s, int fd)
{
	struct srv_conn *c = calloc(1, sizeof(*c));
	struct timeval tv = {.tv_sec = 0, .tv_usec = 100 * 1000};

	if (!c)
		return NULL;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	c->s = s;
	c->fd = fd;
	if (s->tls) {
		c->ssl = SSL_new(s->tls);
		SSL_set_fd(c->ssl, fd);
	}
	return c;
}

static void *srv_accept_main(void *arg)
{
	struct srv *s = arg;

	while (!atomic_load(&s->stop)) {
		struct pollfd p = {.fd = s->lfd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		struct srv_conn *c = s->n_conns < SRV_CONNS_MAX ? srv_conn_new(s, fd) : NULL;
		if (!c) {
			close(fd);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		c->id = s->n_conns;
		s->conns[s->n_conns] = c;
		pthread_create(&s->conn_th[s->n_conns], NULL, srv_conn_main, c);
		s->n_conns++;
		pthread_mutex_unlock(&s->lock);
	}
	return NULL;
}

/* ---- a certificate for TLS ----------------------------------------------------------------- */

/* A self-signed certificate for "localhost" and 127.0.0.1, written as PEM to ca_path (the CA
 * file a client must trust), and a TLS context serving it. */
static SSL_CTX *srv_tls_new(const char *ca_path)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509V3_CTX v3;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	FILE *f = fopen(ca_path, "w");
	X509_EXTENSION *ext;

	if (!key || !x || !ctx || !f)
		abort();
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (!X509_sign(x, key, EVP_sha256()) || !PEM_write_X509(f, x) ||
	    SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1)
		abort();
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(key);
	return ctx;
}

/* ---- start and stop -------------------------------------------------------------------------- */

/* Listen on 127.0.0.1 (unix_path NULL) or on a unix socket; tls_ca: serve TLS with a fresh
 * certificate, written there. */
static void srv_start(struct srv *s, srv_handler fn, const char *unix_path, const char *tls_ca)
{
	memset(s, 0, sizeof(*s));
	s->fn = fn;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (unix_path) {
		struct sockaddr_un un = {.sun_family = AF_UNIX};
		snprintf(un.sun_path, sizeof(un.sun_path), "%s", unix_path);
		snprintf(s->unix_path, sizeof(s->unix_path), "%s", unix_path);
		unlink(unix_path);
		s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&un, sizeof(un)) < 0)
			abort();
	} else {
		struct sockaddr_in in = {.sin_family = AF_INET};
		socklen_t len = sizeof(in);
		in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&in, sizeof(in)) < 0 ||
		    getsockname(s->lfd, (struct sockaddr *)&in, &len) < 0)
			abort();
		s->port = ntohs(in.sin_port);
	}
	if (tls_ca)
		s->tls = srv_tls_new(tls_ca);
	if (listen(s->lfd, 64) < 0 || pthread_create(&s->accept_th, NULL, srv_accept_main, s) != 0)
		abort();
}

static void srv_stop(struct srv *s)
{
	atomic_store(&s->stop, true);
	pthread_join(s->accept_th, NULL);
	for (unsigned i = 0; i < s->n_conns; i++) {
		pthread_join(s->conn_th[i], NULL);
		if (s->conns[i]->ssl)
			SSL_free(s->conns[i]->ssl);
		close(s->conns[i]->fd);
		free(s->conns[i]);
	}
	close(s->lfd);
	if (s->unix_path[0])
		unlink(s->unix_path);
	if (s->tls)
		SSL_CTX_free(s->tls);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
}

/* Wait until a handler stalls (the client is then mid-request). */
static void srv_wait_stall(struct srv *s)
{
	pthread_mutex_lock(&s->lock);
	while (s->n_stalls == 0)
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

/* Is q the first request for its path? */
static bool srv_first(struct srv *s, const struct srv_req *q)
{
	unsigned seen = 0;

	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->n_reqs; i++)
		seen += strcmp(s->reqs[i].path, q->path) == 0;
	pthread_mutex_unlock(&s->lock);
	return seen <= 1;
}

static unsigned srv_count(struct srv *s, unsigned *ret_conns)
{
	unsigned n;

	pthread_mutex_lock(&s->lock);
	n = s->n_reqs;
	if (ret_conns)
		*ret_conns = s->n_conns;
	pthread_mutex_unlock(&s->lock);
	return n;
}

#endif
