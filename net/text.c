/* Text in and out of net/: URLs, servers, escaping, the headers we parse (Retry-After,
 * Content-Range), the reason in an error body, and the errno of a status or a libcurl code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "internal.h"

#define UNIX_PREFIX	  "unix:"
#define REASON_MAX	  200
#define RETRY_AFTER_S_MAX 1000000000ULL /* more seconds saturate */

/* ---- escaping -------------------------------------------------------------------------------- */

size_t net_escape(const char *in, size_t n, char *out, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (size == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)in[i];
		char e[5] = {ch, 0};
		if (ch == '\n' || ch == '\t' || ch == '\r' || ch == '\\')
			e[0] = '\\', e[1] = ch == '\n'	 ? 'n'
					    : ch == '\t' ? 't'
					    : ch == '\r' ? 'r'
							 : '\\';
		else if (ch < 0x20 || ch >= 0x7f)
			e[0] = '\\', e[1] = 'x', e[2] = hex[ch >> 4], e[3] = hex[ch & 15];
		size_t k = strlen(e);
		if (o + k >= size)
			break;
		memcpy(out + o, e, k);
		o += k;
	}
	out[o] = '\0';
	return o;
}

/* The URL as libcurl reads it (what is really asked), without user:password, query, fragment. */
static int redact_parsed(const char *url, char *buf, size_t size)
{
	_cleanup_(net_curl_url_freep) CURLU *h = curl_url();
	_cleanup_(net_curl_freep) char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
	_cleanup_(net_curl_freep) char *query = NULL, *frag = NULL;

	if (!h || curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		return -EINVAL;
	curl_url_get(h, CURLUPART_PORT, &port, 0);
	curl_url_get(h, CURLUPART_QUERY, &query, 0);
	curl_url_get(h, CURLUPART_FRAGMENT, &frag, 0);
	snprintf(buf, size, "%s://%s%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "",
		 path, query || frag ? "?..." : "");
	return 0;
}

/* Not a URL libcurl takes: the text, cut the same way (anything up to an '@' in what follows
 * the scheme is taken for user information). */
static void redact_text(const char *url, char *buf, size_t size)
{
	size_t scheme =
	    strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
	const char *auth = url[scheme] == ':' && scheme ? url + scheme + 1 : url;
	size_t auth_len, path_len;
	const char *at, *rest;

	auth += strspn(auth, "/");
	auth_len = strcspn(auth, "/?#");
	at = memrchr(auth, '@', auth_len);
	rest = auth + auth_len;
	path_len = strcspn(rest, "?#");
	snprintf(buf, size, "%.*s%.*s%.*s%s", (int)(auth - url), url,
		 (int)(auth_len - (at ? (size_t)(at + 1 - auth) : 0)), at ? at + 1 : auth,
		 (int)path_len, rest, rest[path_len] ? "?..." : "");
}

void net_url_redact(const char *url, char *out, size_t size)
{
	char buf[NET_URL_MAX + 16];

	if (strnlen(url, NET_URL_MAX + 1) > NET_URL_MAX || redact_parsed(url, buf, sizeof(buf)) < 0)
		redact_text(url, buf, sizeof(buf));
	net_escape(buf, strlen(buf), out, size);
}

/* ---- URLs and servers ------------------------------------------------------------------------ */

void net_url_free(struct net_url *u)
{
	if (!u)
		return;
	free(u->scheme);
	free(u->host);
	free(u->path);
	*u = (struct net_url){0};
}

static int url_parts(CURLU *h, struct net_url *u)
{
	_cleanup_(net_curl_freep) char *scheme = NULL, *host = NULL, *path = NULL, *port = NULL;
	_cleanup_(net_curl_freep) char *user = NULL;

	if (curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0] ||
	    curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		return -EINVAL;
	if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
		return -EINVAL;
	u->has_userinfo = curl_url_get(h, CURLUPART_USER, &user, 0) == CURLUE_OK;
	u->port = (unsigned)strtoul(port, NULL, 10);
	if (u->port == 0 || u->port > 65535)
		return -EINVAL;
	u->scheme = strdup(scheme);
	u->host = strdup(host);
	u->path = strdup(path[0] ? path : "/");
	if (!u->scheme || !u->host || !u->path)
		return -ENOMEM;
	for (char *p = u->scheme; *p; p++)
		*p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
	return 0;
}

int net_url_parse(const char *url, struct net_url *ret, imc_error *err)
{
	_cleanup_(net_curl_url_freep) CURLU *h = curl_url();
	struct net_url u = {0};
	char shown[NET_MSG_URL];
	int r;

	if (!h)
		return imc_err(err, ENOMEM, "out of memory");
	if (strnlen(url, NET_URL_MAX + 1) > NET_URL_MAX)
		return imc_err(err, EINVAL, "URL longer than %d bytes", NET_URL_MAX);
	r = curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK ? url_parts(h, &u) : -EINVAL;
	if (r < 0) {
		net_url_free(&u);
		net_url_redact(url, shown, sizeof(shown));
		return r == -ENOMEM ? imc_err(err, ENOMEM, "out of memory")
				    : imc_err(err, EINVAL, "\"%s\": not an http(s) URL", shown);
	}
	*ret = u;
	return 0;
}

char *net_url_join(const char *base, const char *ref)
{
	_cleanup_(net_curl_url_freep) CURLU *h = curl_url();
	_cleanup_(net_curl_freep) char *url = NULL;

	if (!h || strnlen(base, NET_URL_MAX + 1) > NET_URL_MAX ||
	    strnlen(ref, NET_URL_MAX + 1) > NET_URL_MAX ||
	    curl_url_set(h, CURLUPART_URL, base, 0) != CURLUE_OK ||
	    curl_url_set(h, CURLUPART_URL, ref, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_URL, &url, 0) != CURLUE_OK)
		return NULL;
	return strdup(url);
}

char *net_url_escape(const char *s, size_t n)
{
	_cleanup_(net_curl_freep) char *e = NULL;

	if (n > INT32_MAX)
		return NULL;
	e = curl_easy_escape(NULL, s, (int)n);
	return e ? strdup(e) : NULL;
}

void net_server_free(struct net_server *s)
{
	if (!s)
		return;
	free(s->base);
	free(s->unix_socket);
	*s = (struct net_server){0};
}

int net_server_parse(const char *spec, struct net_server *ret, imc_error *err)
{
	struct net_url u = {0};
	size_t n = strlen(spec);
	char shown[NET_MSG_URL];
	int r;

	*ret = (struct net_server){0};
	if (strncmp(spec, UNIX_PREFIX, strlen(UNIX_PREFIX)) == 0) {
		const char *path = spec + strlen(UNIX_PREFIX);
		if (!*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return imc_err(err, EINVAL,
				       "server \"%.120s\": want unix:PATH of 1 to %zu "
				       "bytes",
				       spec, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		ret->unix_socket = strdup(path);
		ret->base = strdup("http://localhost");
	} else {
		r = net_url_parse(spec, &u, NULL);
		net_url_free(&u);
		if (r < 0) {
			net_url_redact(spec, shown, sizeof(shown));
			return imc_err(err, EINVAL,
				       "server \"%s\": want http(s)://HOST[:PORT] or unix:PATH",
				       shown);
		}
		while (n > 0 && spec[n - 1] == '/')
			n--;
		ret->base = strndup(spec, n);
	}
	if (!ret->base || (spec[0] == 'u' && !ret->unix_socket)) {
		net_server_free(ret);
		return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

char *net_server_url(const struct net_server *s, const char *path)
{
	char *url = NULL;

	if (asprintf(&url, "%s%s%s", s->base, path[0] == '/' ? "" : "/", path) < 0)
		return NULL;
	return url;
}

/* ---- headers we parse -------------------------------------------------------------------------
 */

static const char *skip_ows(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

/* Strict decimal digits (at most 20) into *ret; the end into *ret_end. */
static bool parse_u64(const char *s, uint64_t *ret, const char **ret_end)
{
	uint64_t v = 0;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (p == s)
		return false;
	*ret = v;
	*ret_end = p;
	return true;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3); a date in the past is 0. */
int net_retry_after_parse(const char *value, int64_t now, uint64_t *ret_ms)
{
	const char *p = skip_ows(value), *end = NULL;
	uint64_t s = 0;
	size_t n = strlen(p);
	time_t t;

	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	if (n == 0 || n > 64)
		return -EINVAL;
	if (*p >= '0' && *p <= '9') {
		/* Seconds: digits only (a long run of them saturates). */
		for (size_t i = 0; i < n; i++)
			if (p[i] < '0' || p[i] > '9')
				return -EINVAL;
		if (n > 10 || !parse_u64(p, &s, &end) || s > RETRY_AFTER_S_MAX)
			s = RETRY_AFTER_S_MAX;
		*ret_ms = s * 1000;
		return 0;
	}
	char date[65];
	memcpy(date, p, n);
	date[n] = '\0';
	t = curl_getdate(date, NULL);
	if (t < 0)
		return -EINVAL;
	*ret_ms = (int64_t)t <= now ? 0
		  : (uint64_t)((int64_t)t - now) > RETRY_AFTER_S_MAX
		      ? RETRY_AFTER_S_MAX * 1000
		      : (uint64_t)((int64_t)t - now) * 1000;
	return 0;
}

/* Content-Range of a 206: "bytes FIRST-LAST/TOTAL" (TOTAL "*": UINT64_MAX). */
int net_content_range_parse(const char *value, uint64_t *ret_first, uint64_t *ret_last,
			    uint64_t *ret_total)
{
	const char *p = skip_ows(value);
	uint64_t first, last, total = UINT64_MAX;

	if (strncasecmp(p, "bytes", 5) != 0 || (p[5] != ' ' && p[5] != '\t'))
		return -EINVAL;
	p = skip_ows(p + 5);
	if (!parse_u64(p, &first, &p) || *p++ != '-' || !parse_u64(p, &last, &p) || *p++ != '/')
		return -EINVAL;
	if (*p == '*')
		p++;
	else if (!parse_u64(p, &total, &p) || total <= last)
		return -EINVAL;
	if (*skip_ows(p) != '\0' || last < first)
		return -EINVAL;
	*ret_first = first;
	*ret_last = last;
	*ret_total = total;
	return 0;
}

/* ---- what a refused answer says ------------------------------------------------------------- */

static bool reason_json(const char *body, size_t len, char *buf, size_t size)
{
	_cleanup_json_ json_t *j = json_loadb(body, len, 0, NULL);
	json_t *e = json_array_get(json_object_get(j, "errors"), 0); /* OCI distribution */
	const char *code, *msg;

	if (!e)
		e = json_object_get(j, "error"); /* imcd's {"error":{"code","message"}} */
	if (!json_is_object(e))
		e = j;
	code = json_string_value(json_object_get(e, "code"));
	msg = json_string_value(json_object_get(e, "message"));
	if (msg && !*msg)
		msg = NULL;
	if (code && msg)
		snprintf(buf, size, "%.*s (%.64s)", REASON_MAX, msg, code);
	else if (code || msg)
		snprintf(buf, size, "%.*s", REASON_MAX, code ? code : msg);
	return code || msg;
}

/* The reason a server gives in an error body: the message of a JSON error (OCI's or imcd's),
 * else the first line of a text body; escaped, "" when there is none. */
void net_reason(const char *body, size_t len, char *out, size_t size)
{
	char buf[REASON_MAX + 80] = "";
	size_t n;

	if (size == 0)
		return;
	out[0] = '\0';
	if (!body || len == 0)
		return;
	if (!reason_json(body, len, buf, sizeof(buf))) {
		while (len > 0 && (*body == ' ' || *body == '\t' || *body == '\r' || *body == '\n'))
			body++, len--;
		if (len == 0 || *body == '<' || *body == '{' || *body == '[')
			return; /* HTML or unreadable JSON: the status says it */
		n = strcspn(body, "\r\n");
		n = n < len ? n : len;
		/* A NUL in the body ends the line. */
		snprintf(buf, sizeof(buf), "%.*s", (int)(n < REASON_MAX ? n : REASON_MAX), body);
	}
	net_escape(buf, strlen(buf), out, size);
}

/* ---- errnos ---------------------------------------------------------------------------------- */

int net_status_errno(long status)
{
	switch (status) {
	case 400:
		return EINVAL;
	case 401:
	case 403:
		return EACCES;
	case 404:
	case 410:
		return ENOENT;
	case 405:
	case 501:
		return EOPNOTSUPP;
	case 408:
		return ETIMEDOUT;
	case 409:
		return EBUSY;
	case 413:
		return EFBIG;
	case 416:
		return ERANGE;
	case 429:
		return EAGAIN;
	default:
		return status >= 500 && status <= 599 ? EIO : EPROTO;
	}
}

bool net_status_retryable(long status)
{
	return status == 429 || status == 408 || (status >= 500 && status <= 599 && status != 501);
}

int net_curl_errno(CURLcode c)
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
	case CURLE_ABORTED_BY_CALLBACK:
		return ECANCELED;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return EINVAL;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		return ECONNRESET;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return EPROTO;
	default:
		return EIO;
	}
}

/* Transport failures another attempt may get past (not a refused certificate, not our own
 * limits or mistakes). */
bool net_curl_retryable(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

/* Whether a failed request may be sent again although the server may have acted on it. */
bool net_method_idempotent(const char *method)
{
	return !method || strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
	       strcmp(method, "PUT") == 0 || strcmp(method, "DELETE") == 0;
}

void net_free_headers(struct net_header *h, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
}

void net_url_plain_hostport(const char *url, char *ret, size_t size)
{
	struct net_url u = {0};

	ret[0] = '\0';
	if (net_url_parse(url, &u, NULL) == 0 && strcmp(u.scheme, "http") == 0)
		snprintf(ret, size, "%s:%u", u.host, u.port);
	net_url_free(&u);
}
