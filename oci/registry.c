/* OCI distribution client on libcurl: manifests, blobs, credentials and bearer tokens.
 *
 * Registries on loopback addresses (and those named insecure) are reached over plain HTTP, all
 * others over HTTPS with the system CAs (and an extra CA file when one is configured).  Every
 * body a registry sends is capped; blobs stream to a temp file while their sha256 is computed,
 * a dropped download resumes with a Range request, and only a verified blob gets its final name.
 *
 * Authentication follows the distribution spec: a request goes out with what we have; a 401
 * names the scheme.  Basic: send the registry's username and password.  Bearer: get a token
 * from the challenge's realm (with the credentials as basic auth when there are any, or an
 * OAuth2 refresh-token POST for an identity token), keep it per registry, scope and credentials
 * until its expires_in runs out, and try again.  Credentials come from the build request first,
 * then from a docker-style config.json; they never appear in logs or error messages.
 *
 * Over 800 lines: its HTTP request, retry and token code (about 600 lines) is what net/ replaces
 * when the registry client moves onto it. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../net/curl_cleanup.h"
#include "oci.h"

#define TOKEN_MAX	   (64u << 10)
#define TOKEN_RESPONSE_MAX (1u << 20)
#define ERROR_BODY_MAX	   (64u << 10)
#define CHALLENGE_MAX	   4096
#define USER_AGENT	   "imcache/0.1"
#define CURL_BUFFER_SIZE   (512L << 10)
#define BLOB_TRIES	   6 /* per blob; a resumed download keeps the bytes it has */
#define META_TRIES	   3 /* manifests, configs, tokens */
#define BACKOFF_FIRST_MS   500
#define BACKOFF_MAX_MS	   8000
#define RETRY_AFTER_MAX_S  30 /* a longer Retry-After is cut to this */
#define AUTH_FILE_MAX	   (1u << 20)
#define CRED_FIELD_MAX	   4096
#define TOKEN_CACHE_MAX	   64
#define TOKEN_LIFETIME_MIN 60 /* the spec's default when expires_in is missing */
#define TOKEN_LIFETIME_MAX (24 * 3600)
#define TOKEN_MARGIN_S	   10 /* renew this long before a token expires */
#define DOCKER_HUB	   "registry-1.docker.io"

static const char manifest_accept[] = "Accept: " OCI_MT_OCI_MANIFEST ", " OCI_MT_OCI_INDEX
				      ", " OCI_MT_DOCKER_MANIFEST ", " OCI_MT_DOCKER_LIST;

struct oci_registry {
	char *name; /* host[:port] */
	char *repository;
	char *base; /* "<scheme>://<host>/v2/<repository>" */
	char *ca_file;
	bool plain_http;
	CURL *curl; /* for the one-thread calls: manifests and configs */
	struct oci_registry_cred cred;
	char cred_id[IMC_SHA256_HEX_LEN + 1]; /* a hash of cred: token cache key, "" = anonymous */
	pthread_mutex_t lock;		      /* guards the fields below */
	bool basic;			      /* the registry asked for Basic auth */
	char *token;			      /* bearer token */
	int64_t token_expires;
	bool (*cancelled)(void *ctx); /* the caller's stop (oci_registry_opts.cancelled) */
	void *cancel_ctx;
};

/* Has the caller of this registry's requests asked them to stop? */
static bool registry_stopped(const struct oci_registry *r)
{
	return r && r->cancelled && r->cancelled(r->cancel_ctx);
}

/* registry_stopped for backoff(): false stops the wait. */
static bool registry_go_on(void *ctx, int64_t n)
{
	(void)n;
	return !registry_stopped(ctx);
}

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

/* ---- credentials ------------------------------------------------------------------------- */

static bool is_docker_hub(const char *host, size_t n)
{
	static const char *const hub[] = {"docker.io", "index.docker.io", DOCKER_HUB};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(hub); i++)
		if (n == strlen(hub[i]) && strncasecmp(host, hub[i], n) == 0)
			return true;
	return false;
}

/* Does a credential's or auth file's registry key ("host[:port]", with or without a scheme
 * and a path, as docker writes them: "https://index.docker.io/v1/") name registry? */
TESTABLE bool registry_key_matches(const char *key, const char *registry)
{
	size_t n, rn = strlen(registry);

	if (strncasecmp(key, "https://", 8) == 0)
		key += 8;
	else if (strncasecmp(key, "http://", 7) == 0)
		key += 7;
	n = strcspn(key, "/");
	if (n == 0)
		return false;
	if (is_docker_hub(key, n) && is_docker_hub(registry, rn))
		return true;
	return n == rn && strncasecmp(key, registry, n) == 0;
}

static void secret_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void secret_free_p(char **p)
{
	secret_free(*p);
}

static void cred_free(struct oci_registry_cred *c)
{
	secret_free(c->username);
	secret_free(c->password);
	secret_free(c->bearer);
	secret_free(c->identity_token);
	*c = (struct oci_registry_cred){0};
}

static bool cred_field_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > CRED_FIELD_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < ' ' || s[i] == 0x7f)
			return false;
	return true;
}

static int cred_set(char **slot, const char *v, imc_error *err)
{
	secret_free(*slot);
	*slot = v ? strdup(v) : NULL;
	return v && !*slot ? imc_err(err, ENOMEM, "out of memory") : 0;
}

static int cred_from_request(const struct oci_credential *bc, const char *registry,
			     struct oci_registry_cred *ret, imc_error *err)
{
	bool pass = bc->username || bc->password;
	int r;

	if (pass && (!cred_field_ok(bc->username) || !cred_field_ok(bc->password) ||
		     strchr(bc->username, ':')))
		return imc_err(
		    err, EINVAL,
		    "credentials for %s: want a username (without ':') and a password of "
		    "1 to %d printable bytes",
		    registry, CRED_FIELD_MAX);
	if (bc->token && !cred_field_ok(bc->token))
		return imc_err(err, EINVAL, "credentials for %s: token of 1 to %d printable bytes",
			       registry, CRED_FIELD_MAX);
	if (!pass && !bc->token)
		return imc_err(err, EINVAL,
			       "credentials for %s: want username and password, or token",
			       registry);
	r = cred_set(&ret->username, bc->username, err);
	if (r == 0)
		r = cred_set(&ret->password, bc->password, err);
	if (r == 0)
		r = cred_set(&ret->bearer, bc->token, err);
	return r;
}

/* "auth": base64 of "username:password". */
static int cred_decode_auth(const char *b64, struct oci_registry_cred *ret)
{
	size_t n = strlen(b64), len;
	_cleanup_free_ unsigned char *raw = NULL;
	char *colon;
	int r = 0;

	if (n == 0 || n > 2 * CRED_FIELD_MAX || n % 4 != 0)
		return -EINVAL;
	raw = malloc(n / 4 * 3 + 1);
	if (!raw)
		return -ENOMEM;
	int dn = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)n);
	if (dn < 0)
		return -EINVAL;
	len = (size_t)dn;
	while (len > 0 && n >= 1 && b64[n - 1] == '=') { /* DecodeBlock counts the padding */
		len--;
		n--;
	}
	raw[len] = '\0';
	colon = strlen((char *)raw) == len ? strchr((char *)raw, ':') : NULL;
	if (colon) {
		*colon = '\0';
		if (!cred_field_ok((char *)raw) || !cred_field_ok(colon + 1))
			r = -EINVAL;
		if (r == 0 && (cred_set(&ret->username, (char *)raw, NULL) < 0 ||
			       cred_set(&ret->password, colon + 1, NULL) < 0))
			r = -ENOMEM;
	}
	explicit_bzero(raw, len);
	return colon ? r : -EINVAL;
}

static int auth_entry_parse(json_t *e, const char *registry, struct oci_registry_cred *ret,
			    imc_error *err)
{
	const char *auth = NULL, *user = NULL, *pass = NULL, *ident = NULL, *regtok = NULL;
	char ctx[300];
	int r;

	snprintf(ctx, sizeof(ctx), "auths.%.250s", registry);
	if (!json_is_object(e))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_get_string(e, "auth", false, 2 * CRED_FIELD_MAX, ctx, &auth, err);
	if (r == 0)
		r = imc_json_get_string(e, "username", false, CRED_FIELD_MAX, ctx, &user, err);
	if (r == 0)
		r = imc_json_get_string(e, "password", false, CRED_FIELD_MAX, ctx, &pass, err);
	if (r == 0)
		r = imc_json_get_string(e, "identitytoken", false, CRED_FIELD_MAX, ctx, &ident,
					err);
	if (r == 0)
		r = imc_json_get_string(e, "registrytoken", false, CRED_FIELD_MAX, ctx, &regtok,
					err);
	if (r < 0)
		return r;
	if (auth && *auth) {
		r = cred_decode_auth(auth, ret);
		if (r < 0)
			return imc_err(err, -r, "%s.auth: not the base64 of username:password",
				       ctx);
	} else if (user && pass && *user && *pass) {
		if (!cred_field_ok(user) || !cred_field_ok(pass))
			return imc_err(err, EINVAL, "%s: username or password not printable", ctx);
		if (cred_set(&ret->username, user, err) < 0 ||
		    cred_set(&ret->password, pass, err) < 0)
			return -ENOMEM;
	}
	if (ident && *ident && cred_set(&ret->identity_token, ident, err) < 0)
		return -ENOMEM;
	if (regtok && *regtok && cred_set(&ret->bearer, regtok, err) < 0)
		return -ENOMEM;
	return 0;
}

/* The entry of a docker config.json ({"auths": {"<registry>": {...}}}) for registry; *ret is
 * left empty when there is none.  credsStore and credHelpers are not consulted. */
TESTABLE int registry_auth_file_lookup(const char *text, size_t len, const char *registry,
				       struct oci_registry_cred *ret, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	json_t *auths = NULL, *v;
	const char *key;
	int r = imc_json_parse_object(text, len, &j, err);

	if (r == 0)
		r = imc_json_get_object(j, "auths", false, "auth file", &auths, err);
	if (r < 0 || !auths)
		return r;
	json_object_foreach(auths, key, v)
	{
		if (!registry_key_matches(key, registry))
			continue;
		r = auth_entry_parse(v, registry, ret, err);
		if (r < 0)
			cred_free(ret);
		return r;
	}
	return 0;
}

static int cred_from_file(const char *path, const char *registry, struct oci_registry_cred *ret,
			  imc_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = imc_read_file(path, AUTH_FILE_MAX, &text, &len, err);

	if (r == -ENOENT)
		return 0; /* no file: no credentials */
	if (r == 0)
		r = registry_auth_file_lookup(text, len, registry, ret, err);
	if (text)
		explicit_bzero(text, len);
	return r < 0 ? imc_err_wrap(err, "auth file %s", path) : 0;
}

/* The request's credentials for the registry (the first match wins), else the auth file's. */
static int cred_pick(const struct oci_registry_opts *o, struct oci_registry *r, imc_error *err)
{
	for (size_t i = 0; i < o->n_credentials; i++) {
		const struct oci_credential *bc = &o->credentials[i];
		if (bc->registry && registry_key_matches(bc->registry, r->name))
			return cred_from_request(bc, r->name, &r->cred, err);
	}
	return o->auth_file ? cred_from_file(o->auth_file, r->name, &r->cred, err) : 0;
}

static int cred_load(const struct oci_registry_opts *o, struct oci_registry *r, imc_error *err)
{
	imc_sha256 h;
	int rc = cred_pick(o, r, err);

	if (rc < 0)
		return rc;
	if (!r->cred.username && !r->cred.bearer && !r->cred.identity_token)
		return 0;
	rc = imc_sha256_init(&h, err);
	if (rc < 0)
		return rc;
	const char *parts[] = {r->cred.username, r->cred.password, r->cred.bearer,
			       r->cred.identity_token};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(parts); i++)
		imc_sha256_update(&h, parts[i] ? parts[i] : "",
				  parts[i] ? strlen(parts[i]) + 1 : 1);
	imc_sha256_final_hex(&h, r->cred_id);
	return 0;
}

/* ---- the token cache ----------------------------------------------------------------------
 * Process-wide, so that every image of a build (and the next build) reuses a token while it is
 * valid.  Keyed by registry, scope and a hash of the credentials the token was issued for: an
 * anonymous request never gets a token that credentials bought. */

struct token_entry {
	char *key;
	char *token;
	int64_t expires;
};

static pthread_mutex_t token_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct token_entry token_cache[TOKEN_CACHE_MAX];

static char *token_key(const struct oci_registry *r, const char *scope)
{
	return xasprintf("%s\n%s\n%s", r->name, scope, r->cred_id);
}

static void token_entry_clear(struct token_entry *e)
{
	free(e->key);
	secret_free(e->token);
	*e = (struct token_entry){0};
}

/* A copy of the cached token for key with its expiry, or NULL. */
static char *token_cache_get(const char *key, int64_t *ret_expires)
{
	int64_t now = imc_now();
	char *t = NULL;

	pthread_mutex_lock(&token_cache_lock);
	for (size_t i = 0; i < TOKEN_CACHE_MAX && !t; i++) {
		struct token_entry *e = &token_cache[i];
		if (e->key && e->expires <= now)
			token_entry_clear(e);
		if (e->key && strcmp(e->key, key) == 0) {
			t = strdup(e->token);
			*ret_expires = e->expires;
		}
	}
	pthread_mutex_unlock(&token_cache_lock);
	return t;
}

/* Replace the entry for key, else take a free slot, else the one closest to expiry. */
static void token_cache_put(const char *key, const char *token, int64_t expires)
{
	struct token_entry *slot = NULL;
	char *k = strdup(key), *t = strdup(token);

	if (!k || !t) {
		free(k);
		secret_free(t);
		return; /* not cached: the next request asks again */
	}
	pthread_mutex_lock(&token_cache_lock);
	for (size_t i = 0; i < TOKEN_CACHE_MAX; i++) {
		struct token_entry *e = &token_cache[i];
		if (e->key && strcmp(e->key, key) == 0) {
			slot = e;
			break;
		}
		if (!slot || (slot->key && (!e->key || e->expires < slot->expires)))
			slot = e;
	}
	token_entry_clear(slot);
	*slot = (struct token_entry){.key = k, .token = t, .expires = expires};
	pthread_mutex_unlock(&token_cache_lock);
}

/* The token to send with a request, or NULL (copy; guarded by r->lock). */
static char *registry_token_copy(struct oci_registry *r)
{
	char *t = NULL;

	pthread_mutex_lock(&r->lock);
	if (r->token && r->token_expires > imc_now())
		t = strdup(r->token);
	else if (r->cred.bearer)
		t = strdup(r->cred.bearer);
	pthread_mutex_unlock(&r->lock);
	return t;
}

static void registry_token_set(struct oci_registry *r, char *token, int64_t expires)
{
	pthread_mutex_lock(&r->lock);
	secret_free(r->token);
	r->token = token;
	r->token_expires = expires;
	pthread_mutex_unlock(&r->lock);
}

/* ---- one HTTP request ---------------------------------------------------------------------- */

/* Where a response body goes: a capped memory buffer, or (for a 200 or 206 answer to a blob
 * request) a file, hashed on the way. */
struct http_sink {
	CURL *curl;
	struct imc_buf body;
	size_t max;
	int fd; /* -1: memory only */
	imc_sha256 *sha;
	uint64_t expect, written;
	uint64_t range_from; /* the Range request's first byte (0: none) */
	bool (*on_bytes)(void *ctx, int64_t n);
	void *ctx;
	const struct oci_registry *reg; /* its caller's stop is polled too */
	bool too_big, cancelled, bad_range, started;
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

/* The server ignored our Range and sends the whole blob: start the file over. */
static bool sink_restart(struct http_sink *s)
{
	imc_error e;

	if (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0) {
		s->io_errno = errno;
		return false;
	}
	imc_sha256_free(s->sha);
	if (imc_sha256_init(s->sha, &e) < 0) {
		s->io_errno = ENOMEM;
		return false;
	}
	if (s->on_bytes && s->written)
		s->on_bytes(s->ctx, -(int64_t)s->written);
	s->written = 0;
	return true;
}

/* Content-Range of a 206 must start where we asked: "bytes <from>-<last>/<size>". */
static bool sink_range_ok(struct http_sink *s)
{
	struct curl_header *h = NULL;
	unsigned long long from, last, size;

	if (curl_easy_header(s->curl, "Content-Range", 0, CURLH_HEADER, -1, &h) != CURLHE_OK ||
	    sscanf(h->value, "bytes %llu-%llu/%llu", &from, &last, &size) != 3)
		return false;
	return from == s->range_from && from == s->written && size == s->expect && last + 1 == size;
}

static size_t sink_file(struct http_sink *s, long status, const char *data, size_t n)
{
	int r;

	if (!s->started) {
		s->started = true;
		if (status == 206 && !sink_range_ok(s)) {
			s->bad_range = true;
			return 0;
		}
		if (status == 200 && s->written && !sink_restart(s))
			return 0;
	}
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
	if (s->fd >= 0 && (status == 200 || (status == 206 && s->range_from)))
		return sink_file(s, status, data, n);
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

	if ((s->on_bytes && !s->on_bytes(s->ctx, 0)) || registry_stopped(s->reg)) {
		s->cancelled = true;
		return 1;
	}
	return 0;
}

/* One request: GET, or POST of a form (the OAuth2 token request). */
struct http_req {
	const char *url;
	const char *accept;  /* an "Accept: ..." header line, or NULL */
	const char *bearer;  /* Authorization: Bearer */
	bool basic;	     /* basic auth with user and password */
	const char *user;    /* ... */
	const char *pass;    /* ... */
	const char *post;    /* a form body: POST */
	uint64_t range_from; /* Range: bytes=<from>- */
};

static const char *system_capath(void)
{
	const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

	return v && v->capath ? v->capath : "/etc/ssl/certs";
}

CURLcode oci_curl_transport_opts(CURL *curl, bool plain_http)
{
	CURLcode c = CURLE_OK;

#define SET(opt, val)                                                                              \
	if (c == CURLE_OK)                                                                         \
	c = curl_easy_setopt(curl, opt, val)
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
	return c;
}

static int http_setup(const struct oci_registry *r, CURL *curl, const struct http_req *q,
		      struct curl_slist *headers, struct http_sink *s, char *errbuf)
{
	CURLcode c = CURLE_OK;
	char range[32];

	curl_easy_reset(curl);
#define SET(opt, val)                                                                              \
	if (c == CURLE_OK)                                                                         \
	c = curl_easy_setopt(curl, opt, val)
	SET(CURLOPT_URL, q->url);
	SET(CURLOPT_HTTPHEADER, headers);
	SET(CURLOPT_WRITEFUNCTION, sink_write);
	SET(CURLOPT_WRITEDATA, s);
	SET(CURLOPT_XFERINFOFUNCTION, sink_progress);
	SET(CURLOPT_XFERINFODATA, s);
	SET(CURLOPT_NOPROGRESS, 0L);
	SET(CURLOPT_ERRORBUFFER, errbuf);
	SET(CURLOPT_NOSIGNAL, 1L);
	/* libcurl sends neither Authorization headers nor basic auth to another host. */
	if (c == CURLE_OK)
		c = oci_curl_transport_opts(curl, r->plain_http);
	if (r->ca_file) {
		/* OpenSSL reads both: the extra CAs from the file, the system's from the
		 * hashed directory. */
		SET(CURLOPT_CAINFO, r->ca_file);
		SET(CURLOPT_CAPATH, system_capath());
	}
	if (q->basic) {
		SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		SET(CURLOPT_USERNAME, q->user);
		SET(CURLOPT_PASSWORD, q->pass);
	}
	if (q->post)
		SET(CURLOPT_POSTFIELDS, q->post);
	if (q->range_from) {
		snprintf(range, sizeof(range), "%llu-", (unsigned long long)q->range_from);
		SET(CURLOPT_RANGE, range);
	}
#undef SET
	return c == CURLE_OK ? 0 : -curl_errno(c);
}

static void sink_reset(struct http_sink *s, uint64_t range_from)
{
	s->body.len = 0; /* a retry starts the body over */
	if (s->body.data)
		s->body.data[0] = '\0';
	s->too_big = s->cancelled = s->bad_range = s->started = false;
	s->io_errno = 0;
	s->range_from = range_from;
}

/* Seconds of a Retry-After given in seconds (0 when absent or a date). */
static unsigned retry_after(CURL *curl)
{
	struct curl_header *h = NULL;
	unsigned long v;
	char *end = NULL;

	if (curl_easy_header(curl, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return 0;
	v = strtoul(h->value, &end, 10);
	if (end == h->value)
		return 0;
	return v > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (unsigned)v;
}

struct http_result {
	long status;
	bool transient;	      /* worth another try */
	unsigned retry_after; /* seconds the server asked us to wait */
};

/* Perform q into s.  Returns 0 when the server answered (status in ret), else -errno. */
static int http_once(struct oci_registry *r, CURL *curl, const struct http_req *q,
		     struct http_sink *s, struct http_result *ret, imc_error *err)
{
	_cleanup_curl_slist_ struct curl_slist *headers = NULL;
	_cleanup_free_ char *auth_hdr = NULL;
	char errbuf[CURL_ERROR_SIZE] = "";
	CURLcode c;
	int rc;

	*ret = (struct http_result){0};
	if (q->accept && !(headers = curl_slist_append(headers, q->accept)))
		return imc_err(err, ENOMEM, "out of memory");
	if (q->bearer && (!(auth_hdr = xasprintf("Authorization: Bearer %s", q->bearer)) ||
			  !(headers = curl_slist_append(headers, auth_hdr))))
		return imc_err(err, ENOMEM, "out of memory");
	if (q->post && !(headers = curl_slist_append(
			     headers, "Content-Type: application/x-www-form-urlencoded")))
		return imc_err(err, ENOMEM, "out of memory");
	rc = http_setup(r, curl, q, headers, s, errbuf);
	if (rc < 0)
		return imc_err(err, -rc, "%s %s: cannot set up libcurl", q->post ? "POST" : "GET",
			       q->url);
	sink_reset(s, q->range_from);
	s->reg = r;
	c = curl_easy_perform(curl);
	if (auth_hdr)
		explicit_bzero(auth_hdr, strlen(auth_hdr));
	/* The handle keeps a copy of the basic auth password until the next reset. */
	curl_easy_setopt(curl, CURLOPT_PASSWORD, NULL);
	if (s->cancelled)
		return imc_err(err, ECANCELED, "GET %s: cancelled", q->url);
	if (s->io_errno)
		return imc_err_sys(err, s->io_errno, "GET %s: writing the body", q->url);
	if (s->too_big && s->fd >= 0)
		return imc_err(err, EFBIG, "GET %s: more than the %llu bytes the manifest declares",
			       q->url, (unsigned long long)s->expect);
	if (s->too_big)
		return imc_err(err, EFBIG, "GET %s: body larger than %zu bytes", q->url, s->max);
	if (s->bad_range) {
		ret->transient = true;
		return imc_err(err, EPROTO,
			       "GET %s: the answer to a Range request starts elsewhere", q->url);
	}
	if (c != CURLE_OK) {
		ret->transient = c != CURLE_OUT_OF_MEMORY && c != CURLE_UNSUPPORTED_PROTOCOL &&
				 c != CURLE_PEER_FAILED_VERIFICATION &&
				 c != CURLE_SSL_CACERT_BADFILE;
		return imc_err(err, curl_errno(c), "GET %s: %s", q->url,
			       errbuf[0] ? errbuf : curl_easy_strerror(c));
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &ret->status);
	ret->transient = ret->status >= 500 || ret->status == 429;
	if (ret->transient)
		ret->retry_after = retry_after(curl);
	return 0;
}

static int http_status_error(long status, const struct http_sink *s, const char *url,
			     imc_error *err)
{
	char reason[400];

	registry_error_text(status, s->body.data, s->body.len, reason, sizeof(reason));
	return imc_err(err, status_errno(status), "%s", reason);
}

/* Wait before try number `try` (2, 3, ...): exponential from BACKOFF_FIRST_MS, at least what
 * the server asked for; false when on_bytes cancels meanwhile. */
static bool backoff(int try, unsigned server_s, bool (*on_bytes)(void *ctx, int64_t n), void *ctx)
{
	uint64_t ms = BACKOFF_FIRST_MS;

	for (int i = 2; i < try && ms < BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	if ((uint64_t)server_s * 1000 > ms)
		ms = (uint64_t)server_s * 1000;
	for (uint64_t waited = 0; waited < ms; waited += 100) {
		if (on_bytes && !on_bytes(ctx, 0))
			return false;
		usleep(100 * 1000);
	}
	return true;
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

/* The realm: an http(s) URL without userinfo.  Plain HTTP only where the registry itself is
 * reached over plain HTTP (loopback or named insecure): credentials never cross the network in
 * the clear. */
static int realm_check(const struct oci_registry *r, const char *realm, imc_error *err)
{
	const char *host;

	if (strncasecmp(realm, "https://", 8) == 0)
		host = realm + 8;
	else if (strncasecmp(realm, "http://", 7) == 0 && r->plain_http)
		host = realm + 7;
	else
		return imc_err(err, EPROTO, "token realm \"%.200s\" is not an %s URL", realm,
			       r->plain_http ? "http(s)" : "https");
	if (memchr(host, '@', strcspn(host, "/?#")))
		return imc_err(err, EPROTO, "token realm with user information refused");
	return 0;
}

static int token_url(CURL *curl, const char *realm, const char *service, const char *scope,
		     bool in_query, char **ret, imc_error *err)
{
	_cleanup_(curl_freep) char *svc = NULL;
	_cleanup_(curl_freep) char *scp = NULL;
	char sep[2] = {strchr(realm, '?') ? '&' : '?', '\0'};

	if (!in_query) {
		*ret = strdup(realm);
		return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
	}
	if (service && *service && !(svc = curl_easy_escape(curl, service, 0)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!(scp = curl_easy_escape(curl, scope, 0)))
		return imc_err(err, ENOMEM, "out of memory");
	*ret = xasprintf("%s%s%s%s%sscope=%s", realm, sep, svc ? "service=" : "", svc ? svc : "",
			 svc ? "&" : "", scp);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* OAuth2 refresh-token grant (docker's identity tokens). */
static int token_form(CURL *curl, const struct oci_registry *r, const char *service,
		      const char *scope, char **ret, imc_error *err)
{
	_cleanup_(curl_freep) char *svc = curl_easy_escape(curl, service ? service : "", 0);
	_cleanup_(curl_freep) char *scp = curl_easy_escape(curl, scope, 0);
	_cleanup_(curl_freep) char *tok = curl_easy_escape(curl, r->cred.identity_token, 0);

	if (!svc || !scp || !tok)
		return imc_err(err, ENOMEM, "out of memory");
	*ret = xasprintf("grant_type=refresh_token&client_id=imcache&service=%s&scope=%s&"
			 "refresh_token=%s",
			 svc, scp, tok);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* Parse a token response: the token and the unix time it expires. */
TESTABLE int registry_token_parse(const char *body, size_t len, int64_t now, char **ret,
				  int64_t *ret_expires, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	const char *t = NULL;
	int64_t expires_in = 0;
	int r = imc_json_parse_object(body, len, &j, err);

	if (r < 0)
		return r;
	r = imc_json_get_string(j, "token", false, TOKEN_MAX, "token response", &t, err);
	if (r == 0 && (!t || !*t))
		r = imc_json_get_string(j, "access_token", false, TOKEN_MAX, "token response", &t,
					err);
	if (r == 0)
		r = imc_json_get_int(j, "expires_in", false, INT32_MIN, INT32_MAX, "token response",
				     &expires_in, err);
	if (r < 0)
		return r;
	if (!t || !token_valid(t))
		return imc_err(err, EPROTO, "token response: no usable token or access_token");
	if (expires_in < TOKEN_LIFETIME_MIN)
		expires_in = TOKEN_LIFETIME_MIN;
	if (expires_in > TOKEN_LIFETIME_MAX)
		expires_in = TOKEN_LIFETIME_MAX;
	*ret = strdup(t);
	*ret_expires = now + expires_in - TOKEN_MARGIN_S;
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* Ask the token service once. */
static int token_request(struct oci_registry *r, CURL *curl, const char *url, const char *form,
			 struct http_sink *s, struct http_result *res, imc_error *err)
{
	struct http_req q = {.url = url, .post = form};

	if (!form && r->cred.username) {
		q.basic = true;
		q.user = r->cred.username;
		q.pass = r->cred.password;
	}
	return http_once(r, curl, &q, s, res, err);
}

static int token_fetch(struct oci_registry *r, const char *realm, const char *service,
		       const char *scope, char **ret, int64_t *ret_expires, imc_error *err)
{
	_cleanup_free_ char *url = NULL, *form = NULL;
	_cleanup_curl_ CURL *curl = curl_easy_init();
	struct http_sink s = {.curl = curl, .fd = -1, .max = TOKEN_RESPONSE_MAX};
	struct http_result res = {0};
	int rc;

	if (!curl)
		return imc_err(err, ENOMEM, "cannot create a libcurl handle");
	rc = token_url(curl, realm, service, scope, !r->cred.identity_token, &url, err);
	if (rc == 0 && r->cred.identity_token)
		rc = token_form(curl, r, service, scope, &form, err);
	for (int try = 1; rc == 0; try++) {
		rc = token_request(r, curl, url, form, &s, &res, err);
		if ((rc == 0 && !res.transient) || try == META_TRIES ||
		    !backoff(try + 1, res.retry_after, NULL, NULL))
			break;
		rc = 0;
	}
	if (form)
		explicit_bzero(form, strlen(form));
	if (rc == 0 && (res.status == 401 || res.status == 403))
		rc = imc_err(err, EACCES, "%s (HTTP %ld)",
			     r->cred_id[0] ? "the configured credentials were refused"
					   : "anonymous access refused; configure credentials for "
					     "this registry",
			     res.status);
	else if (rc == 0 && res.status != 200)
		rc = http_status_error(res.status, &s, url, err);
	if (rc == 0)
		rc =
		    registry_token_parse(s.body.data, s.body.len, imc_now(), ret, ret_expires, err);
	free(s.body.data);
	return rc;
}

/* A Bearer challenge: a token for its scope, from the cache unless it is the one just refused
 * (sent), else from the token service. */
static int registry_auth_bearer(struct oci_registry *r, const char *challenge, const char *sent,
				imc_error *err)
{
	_cleanup_free_ char *realm = NULL, *service = NULL, *scope = NULL, *key = NULL;
	_cleanup_free_ char *token = NULL;
	int64_t expires = 0;
	char where[240];
	int rc = registry_parse_bearer(challenge, &realm, &service, &scope);

	if (rc < 0)
		return imc_err(err, rc == -ENOMEM ? ENOMEM : EPROTO,
			       "registry %s: unusable WWW-Authenticate challenge \"%.200s\"",
			       r->name, challenge);
	if (!scope && !(scope = xasprintf("repository:%s:pull", r->repository)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!(key = token_key(r, scope)))
		return imc_err(err, ENOMEM, "out of memory");
	token = token_cache_get(key, &expires);
	if (token && (!sent || strcmp(token, sent) != 0)) {
		registry_token_set(r, steal_pointer(&token), expires);
		return 0;
	}
	secret_free(steal_pointer(&token));
	snprintf(where, sizeof(where), "%.*s", (int)strcspn(realm, "?"), realm);
	rc = realm_check(r, realm, err);
	if (rc == 0)
		rc = token_fetch(r, realm, service, scope, &token, &expires, err);
	if (rc < 0)
		return imc_err_wrap(err, "registry %s: token from %.200s (scope %.200s)", r->name,
				    where, scope);
	token_cache_put(key, token, expires);
	registry_token_set(r, steal_pointer(&token), expires);
	return 0;
}

/* The scheme of the first challenge we can answer: Bearer before Basic. */
static const char *challenge_pick(CURL *curl, bool *ret_basic)
{
	struct curl_header *h = NULL;
	const char *basic = NULL;

	for (size_t i = 0;
	     curl_easy_header(curl, "WWW-Authenticate", i, CURLH_HEADER, -1, &h) == CURLHE_OK;
	     i++) {
		const char *v = h->value + strspn(h->value, " \t");
		if (strncasecmp(v, "Bearer", 6) == 0 && (v[6] == ' ' || v[6] == '\t')) {
			*ret_basic = false;
			return h->value;
		}
		if (strncasecmp(v, "Basic", 5) == 0 &&
		    (v[5] == '\0' || v[5] == ' ' || v[5] == '\t'))
			basic = h->value;
		if (h->amount <= i + 1)
			break;
	}
	*ret_basic = basic != NULL;
	return basic;
}

/* Answer a 401: true to try again; false with the error set. */
static int registry_auth_answer(struct oci_registry *r, CURL *curl, const char *sent_token,
				bool sent_basic, bool *ret_again, imc_error *err)
{
	_cleanup_free_ char *challenge = NULL;
	bool basic = false;
	const char *c = challenge_pick(curl, &basic);

	*ret_again = false;
	if (!c)
		return 0; /* a 401 without a challenge we know: reported as is */
	if (basic) {
		if (!r->cred.username)
			return imc_err(err, EACCES,
				       "registry %s requires a username and password (Basic auth) "
				       "and none is configured for it",
				       r->name);
		if (sent_basic)
			return imc_err(err, EACCES,
				       "registry %s: the configured credentials were refused (HTTP "
				       "401)",
				       r->name);
		pthread_mutex_lock(&r->lock);
		r->basic = true;
		pthread_mutex_unlock(&r->lock);
		*ret_again = true;
		return 0;
	}
	if (!(challenge = strdup(c)))
		return imc_err(err, ENOMEM, "out of memory");
	int rc = registry_auth_bearer(r, challenge, sent_token, err);
	*ret_again = rc == 0;
	return rc;
}

/* Request q with the registry's credentials, answering up to two 401 challenges (a cached
 * token may turn out stale before a fresh one is fetched).  Returns 0 with the answer in *res;
 * a 401 that remains is an error. */
static int http_auth(struct oci_registry *r, CURL *curl, struct http_req q, struct http_sink *s,
		     struct http_result *res, imc_error *err)
{
	for (int round = 0;; round++) {
		_cleanup_(secret_free_p) char *token = NULL;
		bool basic, again = false;
		int rc;

		pthread_mutex_lock(&r->lock);
		basic = r->basic;
		pthread_mutex_unlock(&r->lock);
		q.basic = basic;
		q.user = basic ? r->cred.username : NULL;
		q.pass = basic ? r->cred.password : NULL;
		token = basic ? NULL : registry_token_copy(r);
		q.bearer = token;
		rc = http_once(r, curl, &q, s, res, err);
		if (rc < 0 || res->status != 401)
			return rc;
		if (round < 2) {
			rc = registry_auth_answer(r, curl, token, basic, &again, err);
			if (rc < 0)
				return rc;
		}
		if (!again) {
			char reason[400];
			registry_error_text(res->status, s->body.data, s->body.len, reason,
					    sizeof(reason));
			return imc_err(err, EACCES, "registry %s: %s: %s", r->name,
				       r->cred_id[0]
					   ? "access denied with the configured credentials"
					   : "access denied without credentials",
				       reason);
		}
	}
}

/* http_auth with retries of transient failures (for manifests and configs). */
static int http_auth_retry(struct oci_registry *r, CURL *curl, const struct http_req *q,
			   struct http_sink *s, struct http_result *res, imc_error *err)
{
	for (int try = 1;; try++) {
		int rc = http_auth(r, curl, *q, s, res, err);
		if (!res->transient || try == META_TRIES ||
		    !backoff(try + 1, res->retry_after, registry_go_on, r))
			return rc;
	}
}

/* ---- the client -------------------------------------------------------------------------- */

int oci_registry_open(const struct oci_registry_opts *o, const struct oci_ref *ref,
		      struct oci_registry **ret, imc_error *err)
{
	_cleanup_free_ char *key = NULL;
	struct oci_registry *r;
	int rc;

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
	r->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	r->cancelled = o->cancelled;
	r->cancel_ctx = o->cancel_ctx;
	if (!r->name || !r->repository || !r->curl || !r->base || (o->ca_file && !r->ca_file)) {
		oci_registry_close(r);
		return imc_err(err, ENOMEM, "out of memory");
	}
	rc = cred_load(o, r, err);
	if (rc < 0) {
		oci_registry_close(r);
		return imc_err_wrap(err, "registry %s", ref->registry);
	}
	/* A token of an earlier build for the usual scope saves the first 401. */
	key = xasprintf("%s\nrepository:%s:pull\n%s", r->name, r->repository, r->cred_id);
	if (key) {
		int64_t expires = 0;
		char *t = token_cache_get(key, &expires);
		if (t)
			registry_token_set(r, t, expires);
	}
	*ret = r;
	return 0;
}

void oci_registry_close(struct oci_registry *r)
{
	if (!r)
		return;
	if (r->curl)
		curl_easy_cleanup(r->curl);
	pthread_mutex_destroy(&r->lock);
	cred_free(&r->cred);
	free(r->name);
	free(r->repository);
	free(r->base);
	free(r->ca_file);
	secret_free(r->token);
	free(r);
}

void oci_registry_manifest_free(struct oci_registry_manifest *m)
{
	if (!m)
		return;
	free(m->body);
	free(m->content_type);
	*m = (struct oci_registry_manifest){0};
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

static int get_manifest(struct oci_registry *r, const char *reference, const char *want_digest,
			struct http_sink *s, struct oci_registry_manifest *m, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	struct http_result res;
	char *ct = NULL;
	int rc;

	url = xasprintf("%s/manifests/%s", r->base, reference);
	if (!url)
		return imc_err(err, ENOMEM, "out of memory");
	rc = http_auth_retry(r, r->curl, &(struct http_req){.url = url, .accept = manifest_accept},
			     s, &res, err);
	if (rc < 0)
		return rc;
	if (res.status != 200)
		return http_status_error(res.status, s, url, err);
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

int oci_registry_get_manifest(struct oci_registry *r, const char *reference,
			      const char *want_digest, struct oci_registry_manifest *ret,
			      imc_error *err)
{
	struct oci_registry_manifest m = {0};
	struct http_sink s = {.curl = r->curl, .fd = -1, .max = OCI_MANIFEST_MAX};
	int rc = get_manifest(r, reference, want_digest, &s, &m, err);

	if (rc < 0) {
		free(s.body.data);
		oci_registry_manifest_free(&m);
		return rc;
	}
	m.body = s.body.data ? s.body.data : strdup("");
	m.len = s.body.len;
	if (!m.body) {
		oci_registry_manifest_free(&m);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = m;
	return 0;
}

static int blob_url(struct oci_registry *r, const char *digest, char **ret, imc_error *err)
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

int oci_registry_get_blob_mem(struct oci_registry *r, const struct oci_descriptor *d, size_t max,
			      char **ret, size_t *ret_len, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	struct http_sink s = {.curl = r->curl, .fd = -1, .max = (size_t)d->size};
	struct http_result res = {0};
	int rc;

	if (d->size < 0 || (uint64_t)d->size > max)
		return imc_err(err, EFBIG, "blob %s: %lld bytes, more than the %zu allowed",
			       d->digest, (long long)d->size, max);
	rc = blob_url(r, d->digest, &url, err);
	if (rc == 0)
		rc = http_auth_retry(r, r->curl, &(struct http_req){.url = url}, &s, &res, err);
	if (rc == 0 && res.status != 200)
		rc = http_status_error(res.status, &s, url, err);
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

/* One try at the rest of blob d: from s->written on (a Range request when that is not 0). */
static int blob_try(struct oci_registry *r, CURL *curl, const char *url,
		    const struct oci_descriptor *d, struct http_sink *s, struct http_result *res,
		    imc_error *err)
{
	int rc;

	if (s->written == (uint64_t)d->size && d->size > 0) {
		*res = (struct http_result){.status = 200};
		return 0; /* everything arrived before the connection dropped */
	}
	rc = http_auth(r, curl, (struct http_req){.url = url, .range_from = s->written}, s, res,
		       err);
	if (rc == 0 && res->status == 416 && s->written) {
		res->transient = true; /* our offset is wrong: start over */
		if (!sink_restart(s))
			return imc_err_sys(err, s->io_errno, "truncate the temp file");
	}
	if (rc == 0 && res->status != 200 && res->status != 206)
		rc = http_status_error(res->status, s, url, err);
	if (rc == 0 && s->written != (uint64_t)d->size) {
		res->transient = true; /* the server closed early: resume */
		rc = imc_err(err, EBADMSG, "size mismatch: got %llu bytes, want %lld",
			     (unsigned long long)s->written, (long long)d->size);
	}
	return rc;
}

static int blob_download(struct oci_registry *r, const struct oci_descriptor *d, int fd,
			 bool (*on_bytes)(void *ctx, int64_t n), void *ctx, imc_error *err)
{
	_cleanup_curl_ CURL *curl = curl_easy_init();
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	imc_sha256 sha = {0};
	struct http_sink s = {.curl = curl,
			      .fd = fd,
			      .max = ERROR_BODY_MAX,
			      .sha = &sha,
			      .expect = (uint64_t)d->size,
			      .on_bytes = on_bytes,
			      .ctx = ctx};
	int rc;

	if (!curl)
		return imc_err(err, ENOMEM, "cannot create a libcurl handle");
	rc = blob_url(r, d->digest, &url, err);
	if (rc == 0)
		rc = imc_sha256_init(&sha, err);
	for (int try = 1; rc == 0; try++) {
		struct http_result res = {0};
		rc = blob_try(r, curl, url, d, &s, &res, err);
		if (rc == 0 || !res.transient || try == BLOB_TRIES)
			break;
		if (!backoff(try + 1, res.retry_after, on_bytes, ctx)) {
			rc = imc_err(err, ECANCELED, "cancelled");
			break;
		}
		rc = 0;
	}
	free(s.body.data);
	if (rc < 0) {
		imc_sha256_free(&sha);
		return rc;
	}
	imc_sha256_final_hex(&sha, hex);
	return check_blob_digest(d->digest, hex, err);
}

static bool blob_present(int dfd, const char *hex, int64_t size)
{
	struct stat st;

	return fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	       st.st_size == size;
}

/* ---- blobs in flight ----------------------------------------------------------------------
 * A blob that several images (or builds) need at once is downloaded by one of them; the others
 * wait for it and then find it in the blob directory. */

#define INFLIGHT_MAX 256

static pthread_mutex_t inflight_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t inflight_cond = PTHREAD_COND_INITIALIZER;
static char inflight[INFLIGHT_MAX][IMC_SHA256_HEX_LEN + 1];

static int inflight_find(const char *hex)
{
	for (int i = 0; i < INFLIGHT_MAX; i++)
		if (strcmp(inflight[i], hex) == 0)
			return i;
	return -1;
}

/* Claim hex for this thread; 1 when claimed, 0 when another thread had it (and now no longer
 * has: look again), -ECANCELED. */
static int inflight_claim(const char *hex, bool (*on_bytes)(void *ctx, int64_t n), void *ctx)
{
	bool waited = false;
	int slot;

	pthread_mutex_lock(&inflight_lock);
	while (inflight_find(hex) >= 0 || (slot = inflight_find("")) < 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		waited = true;
		pthread_cond_timedwait(&inflight_cond, &inflight_lock, &ts);
		if (on_bytes && !on_bytes(ctx, 0)) {
			pthread_mutex_unlock(&inflight_lock);
			return -ECANCELED;
		}
	}
	if (waited) {
		pthread_mutex_unlock(&inflight_lock);
		return 0;
	}
	memcpy(inflight[slot], hex, IMC_SHA256_HEX_LEN + 1);
	pthread_mutex_unlock(&inflight_lock);
	return 1;
}

static void inflight_release(const char *hex)
{
	pthread_mutex_lock(&inflight_lock);
	int slot = inflight_find(hex);
	if (slot >= 0)
		inflight[slot][0] = '\0';
	pthread_cond_broadcast(&inflight_cond);
	pthread_mutex_unlock(&inflight_lock);
}

static int blob_fetch_into(struct oci_registry *r, const struct oci_descriptor *d, int dfd,
			   const char *dir, const char *hex, bool (*on_bytes)(void *ctx, int64_t n),
			   void *ctx, imc_error *err)
{
	_cleanup_free_ char *tmp = NULL;
	_cleanup_close_ int fd = -1;
	const char *tmp_name;
	int rc;

	tmp = xasprintf("%s/.tmp-%s-XXXXXX", dir, hex);
	if (!tmp)
		return imc_err(err, ENOMEM, "out of memory");
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "create %s", tmp);
	imc_hold_file(fd); /* a partial download nobody holds is removed at the next start */
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

int oci_registry_fetch_blob(struct oci_registry *r, const struct oci_descriptor *d,
			    const char *blob_dir, bool (*on_bytes)(void *ctx, int64_t n), void *ctx,
			    imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	_cleanup_free_ char *dir = NULL;
	_cleanup_close_ int dfd = -1;
	int rc;

	rc = imc_digest_parse(d->digest, hex, err);
	if (rc < 0)
		return rc;
	if (d->size < 0)
		return imc_err(err, EINVAL, "negative size");
	dir = oci_blob_sha256_dir(blob_dir);
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	rc = imc_mkdir_p(dir, 0700, err);
	if (rc < 0)
		return rc;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return imc_err_sys(err, errno, "open %s", dir);
	for (;;) {
		if (blob_present(dfd, hex, d->size)) {
			if (on_bytes)
				on_bytes(ctx, d->size);
			return 0;
		}
		rc = inflight_claim(hex, on_bytes, ctx);
		if (rc < 0)
			return imc_err(err, -rc, "cancelled");
		if (rc == 1)
			break;
	}
	rc = blob_fetch_into(r, d, dfd, dir, hex, on_bytes, ctx, err);
	inflight_release(hex);
	return rc;
}
