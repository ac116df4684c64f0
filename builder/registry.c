/* OCI distribution client on libcurl: manifests, blobs and anonymous bearer tokens.
 *
 * Registries on loopback addresses (and those named insecure) are reached over plain HTTP, all
 * others over HTTPS with the system CAs.  Every body a registry sends is capped; blobs stream to
 * a temp file while their sha256 is computed, and only a verified blob gets its final name. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry.h"

#define TOKEN_MAX	   (64u << 10)
#define TOKEN_RESPONSE_MAX (1u << 20)
#define ERROR_BODY_MAX	   (64u << 10)
#define CHALLENGE_MAX	   4096
#define USER_AGENT	   "imcache/0.1"
#define BLOB_TRIES	   3
#define CURL_BUFFER_SIZE   (512L << 10)

static const char manifest_accept[] = "Accept: " BUILDER_MT_OCI_MANIFEST ", " BUILDER_MT_OCI_INDEX
				      ", " BUILDER_MT_DOCKER_MANIFEST ", " BUILDER_MT_DOCKER_LIST;

struct registry {
	char *name; /* host[:port] */
	char *repository;
	char *base; /* "<scheme>://<host>/v2/<repository>" */
	bool plain_http;
	CURL *curl; /* for the one-thread calls: manifests and configs */
	pthread_mutex_t lock;
	char *token; /* bearer token, guarded by lock */
};

/* asprintf that returns NULL on failure (glibc leaves the pointer undefined). */
static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : s;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- pure helpers (unit tested) ---------------------------------------------------------- */

static bool host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

/* Plain HTTP for loopback hosts and for registries listed in insecure, either as "host:port"
 * or as a bare host (any port). */
TESTABLE bool registry_plain_http(const char *registry, const char *const *insecure)
{
	char host[256];
	const char *start = registry;
	size_t n;

	if (registry[0] == '[') {
		const char *close = strchr(registry, ']');
		if (!close)
			return false;
		start = registry + 1;
		n = (size_t)(close - start);
	} else {
		n = strcspn(registry, ":");
	}
	if (n == 0 || n >= sizeof(host))
		return false;
	memcpy(host, start, n);
	host[n] = '\0';
	if (host_is_loopback(host))
		return true;
	for (; insecure && *insecure; insecure++)
		if (strcasecmp(*insecure, registry) == 0 || strcasecmp(*insecure, host) == 0)
			return true;
	return false;
}

/* Read one auth-param value (token or quoted-string) at *p into a malloc'ed string. */
static char *challenge_value(const char **p)
{
	const char *s = *p;
	char *out = malloc(strlen(s) + 1);
	size_t n = 0;

	if (!out)
		return NULL;
	if (*s == '"') {
		for (s++; *s && *s != '"'; s++) {
			if (*s == '\\' && s[1])
				s++;
			out[n++] = *s;
		}
		if (*s == '"')
			s++;
	} else {
		while (*s && *s != ',' && *s != ' ' && *s != '\t')
			out[n++] = *s++;
	}
	out[n] = '\0';
	*p = s;
	return out;
}

/* WWW-Authenticate: Bearer realm="…",service="…",scope="…".  Returns 0 when it is a Bearer
 * challenge with a realm, -EINVAL otherwise (or -ENOMEM). */
TESTABLE int registry_parse_bearer(const char *header, char **ret_realm, char **ret_service,
				   char **ret_scope)
{
	_cleanup_free_ char *realm = NULL, *service = NULL, *scope = NULL;
	const char *p = header + strspn(header, " \t");

	if (strlen(header) > CHALLENGE_MAX || strncasecmp(p, "Bearer", 6) != 0 ||
	    (p[6] != ' ' && p[6] != '\t'))
		return -EINVAL;
	p += 6;
	for (;;) {
		p += strspn(p, " \t,");
		if (*p == '\0')
			break;
		size_t klen = strcspn(p, "= \t,");
		if (p[klen] != '=')
			return -EINVAL;
		const char *key = p;
		p += klen + 1;
		char *v = challenge_value(&p);
		if (!v)
			return -ENOMEM;
		char **slot = klen == 5 && strncasecmp(key, "realm", 5) == 0	 ? &realm
			      : klen == 7 && strncasecmp(key, "service", 7) == 0 ? &service
			      : klen == 5 && strncasecmp(key, "scope", 5) == 0	 ? &scope
										 : NULL;
		if (slot) {
			free(*slot);
			*slot = v;
		} else {
			free(v);
		}
	}
	if (!realm || !*realm)
		return -EINVAL;
	*ret_realm = steal_pointer(&realm);
	*ret_service = steal_pointer(&service);
	*ret_scope = steal_pointer(&scope);
	return 0;
}

static void sanitize(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < ' ' || (unsigned char)*s >= 0x7f)
			*s = '?';
}

/* The reason a registry gives for a failed request: the first entry of the distribution error
 * body {"errors":[{"code":…,"message":…}]}, else just the status. */
TESTABLE void registry_error_text(long status, const char *body, size_t len, char *buf, size_t size)
{
	_cleanup_json_ json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
	json_t *e0 = json_array_get(json_object_get(j, "errors"), 0);
	const char *code = json_string_value(json_object_get(e0, "code"));
	const char *msg = json_string_value(json_object_get(e0, "message"));

	if (msg && !*msg)
		msg = NULL;
	if (code && msg)
		snprintf(buf, size, "%.200s (%.64s, HTTP %ld)", msg, code, status);
	else if (code || msg)
		snprintf(buf, size, "%.200s (HTTP %ld)", code ? code : msg, status);
	else
		snprintf(buf, size, "HTTP %ld", status);
	sanitize(buf);
}

static int status_errno(long status)
{
	switch (status) {
	case 401:
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 429:
		return EAGAIN;
	default:
		return status >= 500 ? EIO : EPROTO;
	}
}

static int curl_errno(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
		return ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		return ETIMEDOUT;
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
		return EPROTO;
	default:
		return EIO;
	}
}

/* ---- one HTTP GET ------------------------------------------------------------------------ */

/* Where a response body goes: a capped memory buffer, or (for a 200 answer to a blob request)
 * a file, hashed on the way. */
struct http_sink {
	CURL *curl;
	struct imc_buf body;
	size_t max;
	int fd; /* -1: memory only */
	imc_sha256 *sha;
	uint64_t expect, written;
	bool (*on_bytes)(void *ctx, int64_t n);
	void *ctx;
	bool too_big, cancelled;
	int io_errno;
};

static int sink_append(struct http_sink *s, const char *data, size_t n)
{
	if (imc_buf_append(&s->body, data, n) < 0) {
		s->io_errno = ENOMEM;
		return -ENOMEM;
	}
	return 0;
}

static size_t sink_file(struct http_sink *s, const char *data, size_t n)
{
	int r;

	if (s->written + n > s->expect) {
		s->too_big = true;
		return 0;
	}
	r = imc_write_all(s->fd, data, n);
	if (r < 0) {
		s->io_errno = -r;
		return 0;
	}
	imc_sha256_update(s->sha, data, n);
	s->written += n;
	if (s->on_bytes && !s->on_bytes(s->ctx, (int64_t)n)) {
		s->cancelled = true;
		return 0;
	}
	return n;
}

static size_t sink_write(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct http_sink *s = userdata;
	size_t n = size * nmemb, keep;
	long status = 0;

	curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
	if (s->fd >= 0 && status == 200)
		return sink_file(s, data, n);
	if (status == 200) {
		if (s->body.len + n > s->max) {
			s->too_big = true;
			return 0;
		}
		return sink_append(s, data, n) < 0 ? 0 : n;
	}
	/* An error body is only read for its message: keep the start of it. */
	keep = s->body.len < s->max ? s->max - s->body.len : 0;
	if (keep > n)
		keep = n;
	if (keep && sink_append(s, data, keep) < 0)
		return 0;
	return n;
}

static int sink_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
			 curl_off_t ulnow)
{
	struct http_sink *s = userdata;

	if (s->on_bytes && !s->on_bytes(s->ctx, 0)) {
		s->cancelled = true;
		return 1;
	}
	return 0;
}

static char *registry_token_copy(struct registry *r)
{
	char *t;

	pthread_mutex_lock(&r->lock);
	t = r->token ? strdup(r->token) : NULL;
	pthread_mutex_unlock(&r->lock);
	return t;
}

static int http_setup(bool plain_http, CURL *curl, const char *url, struct curl_slist *headers,
		      struct http_sink *s, char *errbuf)
{
	CURLcode c = CURLE_OK;

	curl_easy_reset(curl);
#define SET(opt, val)                                                                              \
	if (c == CURLE_OK)                                                                         \
	c = curl_easy_setopt(curl, opt, val)
	SET(CURLOPT_URL, url);
	SET(CURLOPT_HTTPHEADER, headers);
	SET(CURLOPT_WRITEFUNCTION, sink_write);
	SET(CURLOPT_WRITEDATA, s);
	SET(CURLOPT_XFERINFOFUNCTION, sink_progress);
	SET(CURLOPT_XFERINFODATA, s);
	SET(CURLOPT_NOPROGRESS, 0L);
	SET(CURLOPT_ERRORBUFFER, errbuf);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_FOLLOWLOCATION, 1L);
	SET(CURLOPT_MAXREDIRS, 10L);
	SET(CURLOPT_PROTOCOLS_STR, plain_http ? "http,https" : "https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, plain_http ? "http,https" : "https");
	SET(CURLOPT_CONNECTTIMEOUT, 30L);
	SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
	SET(CURLOPT_LOW_SPEED_TIME, 60L);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_USERAGENT, USER_AGENT);
	SET(CURLOPT_BUFFERSIZE, CURL_BUFFER_SIZE);
#undef SET
	return c == CURLE_OK ? 0 : -curl_errno(c);
}

static int registry_fetch_token(struct registry *r, const char *challenge, imc_error *err);

/* GET url into s; with auth, send the image's token and try once more with a fresh token after
 * a Bearer 401.  Returns 0 with the status in *ret_status when the server answered;
 * *ret_transient says whether a failure is worth another try. */
static int http_get(struct registry *r, bool auth, CURL *curl, const char *url, const char *accept,
		    struct http_sink *s, long *ret_status, bool *ret_transient, imc_error *err)
{
	*ret_transient = false;
	for (int attempt = 0;; attempt++) {
		_cleanup_curl_slist_ struct curl_slist *headers = NULL;
		_cleanup_free_ char *token = auth ? registry_token_copy(r) : NULL;
		_cleanup_free_ char *auth_hdr = NULL;
		char errbuf[CURL_ERROR_SIZE] = "";
		struct curl_header *h = NULL;
		long status = 0;
		CURLcode c;
		int rc;

		if (accept && !(headers = curl_slist_append(headers, accept)))
			return imc_err(err, ENOMEM, "out of memory");
		if (token && (!(auth_hdr = xasprintf("Authorization: Bearer %s", token)) ||
			      !(headers = curl_slist_append(headers, auth_hdr))))
			return imc_err(err, ENOMEM, "out of memory");
		rc = http_setup(r->plain_http, curl, url, headers, s, errbuf);
		if (rc < 0)
			return imc_err(err, rc, "GET %s: cannot set up libcurl", url);
		s->body.len = 0; /* a retry starts the body over */
		if (s->body.data)
			s->body.data[0] = '\0';
		s->too_big = s->cancelled = false;
		s->io_errno = 0;
		c = curl_easy_perform(curl);
		if (s->cancelled)
			return imc_err(err, ECANCELED, "GET %s: cancelled", url);
		if (s->io_errno)
			return imc_err_sys(err, s->io_errno, "GET %s: writing the body", url);
		if (s->too_big && s->fd >= 0)
			return imc_err(err, EFBIG,
				       "GET %s: more than the %llu bytes the manifest declares",
				       url, (unsigned long long)s->expect);
		if (s->too_big)
			return imc_err(err, EFBIG, "GET %s: body larger than %zu bytes", url,
				       s->max);
		if (c != CURLE_OK) {
			*ret_transient =
			    c != CURLE_OUT_OF_MEMORY && c != CURLE_UNSUPPORTED_PROTOCOL;
			return imc_err(err, curl_errno(c), "GET %s: %s", url,
				       errbuf[0] ? errbuf : curl_easy_strerror(c));
		}
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
		if (status == 401 && auth && attempt == 0 &&
		    curl_easy_header(curl, "WWW-Authenticate", 0, CURLH_HEADER, -1, &h) ==
			CURLHE_OK &&
		    strncasecmp(h->value, "Bearer", 6) == 0) {
			_cleanup_free_ char *challenge = strdup(h->value);
			if (!challenge)
				return imc_err(err, ENOMEM, "out of memory");
			rc = registry_fetch_token(r, challenge, err);
			if (rc < 0)
				return rc;
			continue;
		}
		*ret_transient = status >= 500 || status == 429;
		*ret_status = status;
		return 0;
	}
}

static int http_status_error(long status, const struct http_sink *s, const char *url,
			     imc_error *err)
{
	char reason[400];

	registry_error_text(status, s->body.data, s->body.len, reason, sizeof(reason));
	return imc_err(err, status_errno(status), "%s", reason);
}

/* ---- tokens ------------------------------------------------------------------------------ */

static bool token_valid(const char *t)
{
	size_t n = strlen(t);

	if (n == 0 || n > TOKEN_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] <= ' ' || (unsigned char)t[i] >= 0x7f)
			return false;
	return true;
}

static void curl_freep(char **p)
{
	curl_free(*p);
}

static int token_url(CURL *curl, const char *realm, const char *service, const char *scope,
		     char **ret, imc_error *err)
{
	_cleanup_(curl_freep) char *svc = NULL;
	_cleanup_(curl_freep) char *scp = NULL;
	char sep[2] = {strchr(realm, '?') ? '&' : '?', '\0'};

	if (strncasecmp(realm, "https://", 8) != 0 && strncasecmp(realm, "http://", 7) != 0)
		return imc_err(err, EPROTO, "token realm \"%.200s\" is not an http(s) URL", realm);
	if (service && *service && !(svc = curl_easy_escape(curl, service, 0)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!(scp = curl_easy_escape(curl, scope, 0)))
		return imc_err(err, ENOMEM, "out of memory");
	*ret = xasprintf("%s%s%s%s%sscope=%s", realm, sep, svc ? "service=" : "", svc ? svc : "",
			 svc ? "&" : "", scp);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int token_from_body(const char *body, size_t len, char **ret, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	const char *t = NULL;
	int r = imc_json_parse_object(body, len, &j, err);

	if (r < 0)
		return r;
	r = imc_json_get_string(j, "token", false, TOKEN_MAX, "token response", &t, err);
	if (r == 0 && (!t || !*t))
		r = imc_json_get_string(j, "access_token", false, TOKEN_MAX, "token response", &t,
					err);
	if (r < 0)
		return r;
	if (!t || !token_valid(t))
		return imc_err(err, EPROTO, "token response: no usable token or access_token");
	*ret = strdup(t);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* Anonymous token for a Bearer challenge; it replaces the one the registry refused. */
static int registry_fetch_token(struct registry *r, const char *challenge, imc_error *err)
{
	_cleanup_free_ char *realm = NULL, *service = NULL, *scope = NULL, *url = NULL;
	_cleanup_free_ char *token = NULL, *default_scope = NULL;
	_cleanup_curl_ CURL *curl = curl_easy_init();
	struct http_sink s = {.curl = curl, .fd = -1, .max = TOKEN_RESPONSE_MAX};
	bool transient;
	long status = 0;
	int rc;

	if (!curl)
		return imc_err(err, ENOMEM, "cannot create a libcurl handle");
	rc = registry_parse_bearer(challenge, &realm, &service, &scope);
	if (rc < 0)
		return imc_err(err, rc == -ENOMEM ? ENOMEM : EPROTO,
			       "registry %s: unusable WWW-Authenticate challenge \"%.200s\"",
			       r->name, challenge);
	if (!scope && !(default_scope = xasprintf("repository:%s:pull", r->repository)))
		return imc_err(err, ENOMEM, "out of memory");
	rc = token_url(curl, realm, service, scope ? scope : default_scope, &url, err);
	if (rc == 0)
		rc = http_get(r, false, curl, url, NULL, &s, &status, &transient, err);
	if (rc == 0 && status != 200)
		rc = http_status_error(status, &s, url, err);
	if (rc == 0)
		rc = token_from_body(s.body.data, s.body.len, &token, err);
	free(s.body.data);
	if (rc < 0)
		return imc_err_wrap(err, "registry %s: anonymous token from %.200s", r->name,
				    realm);
	pthread_mutex_lock(&r->lock);
	free(r->token);
	r->token = steal_pointer(&token);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/* ---- the client -------------------------------------------------------------------------- */

int registry_open(const struct builder_opts *o, const struct builder_ref *ref,
		  struct registry **ret, imc_error *err)
{
	struct registry *r;

	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK)
		return imc_err(err, EIO, "libcurl: %s", curl_easy_strerror(curl_init_rc));
	r = calloc(1, sizeof(*r));
	if (!r)
		return imc_err(err, ENOMEM, "out of memory");
	pthread_mutex_init(&r->lock, NULL);
	r->plain_http = registry_plain_http(ref->registry, o->insecure_registries);
	r->name = strdup(ref->registry);
	r->repository = strdup(ref->repository);
	r->curl = curl_easy_init();
	r->base = xasprintf("%s://%s/v2/%s", r->plain_http ? "http" : "https", ref->registry,
			    ref->repository);
	if (!r->name || !r->repository || !r->curl || !r->base) {
		registry_close(r);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = r;
	return 0;
}

void registry_close(struct registry *r)
{
	if (!r)
		return;
	if (r->curl)
		curl_easy_cleanup(r->curl);
	pthread_mutex_destroy(&r->lock);
	free(r->name);
	free(r->repository);
	free(r->base);
	free(r->token);
	free(r);
}

void registry_manifest_free(struct registry_manifest *m)
{
	if (!m)
		return;
	free(m->body);
	free(m->content_type);
	*m = (struct registry_manifest){0};
}

static int body_digest(const char *body, size_t len, char ret[7 + IMC_SHA256_HEX_LEN + 1],
		       imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	int r = imc_sha256_hex(body, len, hex, err);

	if (r == 0)
		snprintf(ret, 7 + IMC_SHA256_HEX_LEN + 1, "sha256:%s", hex);
	return r;
}

/* Docker-Content-Digest, when sent as a sha256 digest, must name the body we got. */
static int check_content_digest(CURL *curl, const char *digest, imc_error *err)
{
	struct curl_header *h = NULL;

	if (curl_easy_header(curl, "Docker-Content-Digest", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return 0;
	if (strncmp(h->value, "sha256:", 7) != 0 || strcmp(h->value, digest) == 0)
		return 0;
	return imc_err(err, EBADMSG,
		       "manifest digest mismatch: registry says %.80s, the body hashes to %s",
		       h->value, digest);
}

static int get_manifest(struct registry *r, const char *reference, const char *want_digest,
			struct http_sink *s, struct registry_manifest *m, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	char *ct = NULL;
	bool transient;
	long status = 0;
	int rc;

	url = xasprintf("%s/manifests/%s", r->base, reference);
	if (!url)
		return imc_err(err, ENOMEM, "out of memory");
	rc = http_get(r, true, r->curl, url, manifest_accept, s, &status, &transient, err);
	if (rc < 0)
		return rc;
	if (status != 200)
		return http_status_error(status, s, url, err);
	rc = body_digest(s->body.data ? s->body.data : "", s->body.len, m->digest, err);
	if (rc < 0)
		return rc;
	if (want_digest && strcmp(want_digest, m->digest) != 0)
		return imc_err(err, EBADMSG, "manifest %s: digest mismatch (got %s)", want_digest,
			       m->digest);
	rc = check_content_digest(r->curl, m->digest, err);
	if (rc < 0)
		return rc;
	if (curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct &&
	    !(m->content_type = strdup(ct)))
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

int registry_get_manifest(struct registry *r, const char *reference, const char *want_digest,
			  struct registry_manifest *ret, imc_error *err)
{
	struct registry_manifest m = {0};
	struct http_sink s = {.curl = r->curl, .fd = -1, .max = BUILDER_MANIFEST_MAX};
	int rc = get_manifest(r, reference, want_digest, &s, &m, err);

	if (rc < 0) {
		free(s.body.data);
		registry_manifest_free(&m);
		return rc;
	}
	m.body = s.body.data ? s.body.data : strdup("");
	m.len = s.body.len;
	if (!m.body) {
		registry_manifest_free(&m);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = m;
	return 0;
}

static int blob_url(struct registry *r, const char *digest, char **ret, imc_error *err)
{
	*ret = xasprintf("%s/blobs/%s", r->base, digest);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int check_blob_digest(const char *want, const char *got_hex, imc_error *err)
{
	if (strcmp(want + 7, got_hex) != 0)
		return imc_err(err, EBADMSG, "digest mismatch (got sha256:%s)", got_hex);
	return 0;
}

int registry_get_blob_mem(struct registry *r, const struct builder_descriptor *d, size_t max,
			  char **ret, size_t *ret_len, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	struct http_sink s = {.curl = r->curl, .fd = -1, .max = (size_t)d->size};
	bool transient;
	long status = 0;
	int rc;

	if (d->size < 0 || (uint64_t)d->size > max)
		return imc_err(err, EFBIG, "blob %s: %lld bytes, more than the %zu allowed",
			       d->digest, (long long)d->size, max);
	rc = blob_url(r, d->digest, &url, err);
	if (rc == 0)
		rc = http_get(r, true, r->curl, url, NULL, &s, &status, &transient, err);
	if (rc == 0 && status != 200)
		rc = http_status_error(status, &s, url, err);
	if (rc == 0 && s.body.len != (size_t)d->size)
		rc = imc_err(err, EBADMSG, "size mismatch: got %zu bytes, want %lld", s.body.len,
			     (long long)d->size);
	if (rc == 0)
		rc = imc_sha256_hex(s.body.data ? s.body.data : "", s.body.len, hex, err);
	if (rc == 0)
		rc = check_blob_digest(d->digest, hex, err);
	if (rc == 0 && !s.body.data && !(s.body.data = strdup("")))
		rc = imc_err(err, ENOMEM, "out of memory");
	if (rc < 0) {
		free(s.body.data);
		return rc;
	}
	*ret = s.body.data;
	*ret_len = s.body.len;
	return 0;
}

/* One try at downloading d into fd (empty, at offset 0). */
static int blob_try(struct registry *r, CURL *curl, const char *url,
		    const struct builder_descriptor *d, int fd, struct http_sink *s,
		    bool *ret_transient, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	imc_sha256 sha;
	long status = 0;
	int rc = imc_sha256_init(&sha, err);

	if (rc < 0)
		return rc;
	s->sha = &sha;
	s->written = 0;
	rc = http_get(r, true, curl, url, NULL, s, &status, ret_transient, err);
	if (rc == 0 && status != 200)
		rc = http_status_error(status, s, url, err);
	if (rc == 0 && s->written != (uint64_t)d->size)
		rc = imc_err(err, EBADMSG, "size mismatch: got %llu bytes, want %lld",
			     (unsigned long long)s->written, (long long)d->size);
	if (rc < 0) {
		imc_sha256_free(&sha);
		return rc;
	}
	imc_sha256_final_hex(&sha, hex);
	return check_blob_digest(d->digest, hex, err);
}

static int blob_download(struct registry *r, const struct builder_descriptor *d, int fd,
			 bool (*on_bytes)(void *ctx, int64_t n), void *ctx, imc_error *err)
{
	_cleanup_curl_ CURL *curl = curl_easy_init();
	_cleanup_free_ char *url = NULL;
	struct http_sink s = {.curl = curl,
			      .fd = fd,
			      .max = ERROR_BODY_MAX,
			      .expect = (uint64_t)d->size,
			      .on_bytes = on_bytes,
			      .ctx = ctx};
	int rc;

	if (!curl)
		return imc_err(err, ENOMEM, "cannot create a libcurl handle");
	rc = blob_url(r, d->digest, &url, err);
	for (int try = 1; rc == 0; try++) {
		bool transient = false;
		rc = blob_try(r, curl, url, d, fd, &s, &transient, err);
		if (rc == 0 || !transient || try == BLOB_TRIES)
			break;
		if (on_bytes && !on_bytes(ctx, -(int64_t)s.written)) {
			rc = imc_err(err, ECANCELED, "cancelled");
			break;
		}
		if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
			rc = imc_err_sys(err, errno, "truncate temp file");
			break;
		}
		sleep((unsigned)try);
		rc = 0;
	}
	free(s.body.data);
	return rc;
}

static bool blob_present(int dfd, const char *hex, int64_t size)
{
	struct stat st;

	return fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	       st.st_size == size;
}

int registry_fetch_blob(struct registry *r, const struct builder_descriptor *d,
			const char *blob_dir, bool (*on_bytes)(void *ctx, int64_t n), void *ctx,
			imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	_cleanup_free_ char *dir = NULL, *tmp = NULL;
	_cleanup_close_ int dfd = -1, fd = -1;
	const char *tmp_name;
	int rc;

	rc = imc_digest_parse(d->digest, hex, err);
	if (rc < 0)
		return rc;
	if (d->size < 0)
		return imc_err(err, EINVAL, "negative size");
	dir = imc_path_join(blob_dir, "sha256");
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	rc = imc_mkdir_p(dir, 0700, err);
	if (rc < 0)
		return rc;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return imc_err_sys(err, errno, "open %s", dir);
	if (blob_present(dfd, hex, d->size)) {
		if (on_bytes)
			on_bytes(ctx, d->size);
		return 0;
	}
	tmp = xasprintf("%s/.tmp-%s-XXXXXX", dir, hex);
	if (!tmp)
		return imc_err(err, ENOMEM, "out of memory");
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "create %s", tmp);
	tmp_name = strrchr(tmp, '/') + 1;
	rc = blob_download(r, d, fd, on_bytes, ctx, err);
	if (rc == 0 && fsync(fd) < 0)
		rc = imc_err_sys(err, errno, "fsync %s", tmp);
	if (rc == 0 && renameat(dfd, tmp_name, dfd, hex) < 0)
		rc = imc_err_sys(err, errno, "rename %s", tmp);
	if (rc < 0) {
		unlinkat(dfd, tmp_name, 0);
		return rc;
	}
	if (fsync(dfd) < 0)
		return imc_err_sys(err, errno, "fsync %s", dir);
	return 0;
}
