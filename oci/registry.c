/* OCI distribution client on net/: manifests, blobs, credentials and bearer tokens.
 *
 * Registries on loopback addresses (net/'s one loopback rule) and those named insecure are
 * reached over plain HTTP, all others over HTTPS with the system CAs (and an extra CA file when
 * one is configured).  Retries, deadlines, the minimum rate, redirects (same host or HTTPS, or
 * an insecure host) and resumes are net/'s.  Every body a registry sends is capped; a declared
 * blob size is bounded by a cap and by the blob store's free space before a byte is written;
 * blobs stream to a temp file while their sha256 is computed, and only a verified blob gets its
 * final name.
 *
 * Authentication follows the distribution spec: a request goes out with what we have; a 401
 * names the scheme.  Basic: send the registry's username and password.  Bearer: get a token
 * from the challenge's realm (with the credentials as basic auth when there are any, or an
 * OAuth2 refresh-token POST for an identity token), keep it per registry, scope and credentials
 * until its expires_in runs out, and try again.  Credentials come from the build request first,
 * then from a docker-style config.json; they never appear in logs or error messages.
 *
 * Over 800 lines: the token dance (challenges, realms, OAuth2, the token cache) and the blob
 * store's side (in-flight sharing, size bounds, verified renames) live beside the requests they
 * serve; HTTP itself is net/'s. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../net/net.h"
#include "oci.h"

#define TOKEN_MAX	   (64u << 10)
#define TOKEN_RESPONSE_MAX (1u << 20)
#define CHALLENGE_MAX	   4096
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
	char *base;   /* "<scheme>://<host>/v2/<repository>" */
	char *tenant; /* "" when none: blob downloads are shared per registry and tenant */
	bool plain_http;
	struct net_client *net, *own_net; /* own_net: made from the options, freed with r */
	struct net_conn *conn;		  /* for the one-thread calls: manifests and configs */
	uint64_t blob_max;
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

/* registry_stopped as net/'s cancelled callback. */
static bool registry_stopped_cb(void *ctx)
{
	return registry_stopped(ctx);
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

/* ---- pure helpers (unit tested) ---------------------------------------------------------- */

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

/* One request to the registry or its token service, through net/ (retries, deadlines, the
 * minimum rate, redirects and the plain-HTTP rule are net/'s). */
struct http_req {
	const char *url;
	const char *accept; /* an "Accept: ..." header line, or NULL */
	const char *bearer; /* Authorization: Bearer */
	const char *user;   /* basic auth with pass */
	const char *pass;   /* ... */
	const char *post;   /* a form body: POST */
	struct net_sink sink;
	bool (*on_bytes)(void *ctx, int64_t n);
	void *ctx;
	bool conn; /* on the registry's kept connection (one-thread calls) */
};

static const long accept_401[] = {401, 0};
static const long accept_token[] = {401, 403, 0};

static int http_do(struct oci_registry *r, const struct http_req *q, const long *accept,
		   struct net_response *res, imc_error *err)
{
	const char *headers[3] = {0};
	size_t n = 0;
	int rc;

	if (q->accept)
		headers[n++] = q->accept;
	rc = net_perform(
	    r->net,
	    &(struct net_request){
		.method = q->post ? "POST" : NULL,
		.url = q->url,
		.bearer = q->bearer,
		.username = q->user,
		.password = q->pass,
		.headers = headers,
		.body = {.data = q->post,
			 .len = q->post ? strlen(q->post) : 0,
			 .content_type = q->post ? "application/x-www-form-urlencoded" : NULL},
		.sink = q->sink,
		.accept = accept,
		.conn = q->conn ? r->conn : NULL,
		.on_bytes = q->on_bytes,
		.ctx = q->ctx,
		.cancelled = registry_stopped_cb,
		.cancel_ctx = r,
	    },
	    res, err);
	return rc;
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

static char *escape(const char *s)
{
	return net_url_escape(s ? s : "", s ? strlen(s) : 0);
}

static int token_url(const char *realm, const char *service, const char *scope, bool in_query,
		     char **ret, imc_error *err)
{
	_cleanup_free_ char *svc = NULL;
	_cleanup_free_ char *scp = NULL;
	char sep[2] = {strchr(realm, '?') ? '&' : '?', '\0'};

	if (!in_query) {
		*ret = strdup(realm);
		return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
	}
	if (service && *service && !(svc = escape(service)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!(scp = escape(scope)))
		return imc_err(err, ENOMEM, "out of memory");
	*ret = xasprintf("%s%s%s%s%sscope=%s", realm, sep, svc ? "service=" : "", svc ? svc : "",
			 svc ? "&" : "", scp);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* OAuth2 refresh-token grant (docker's identity tokens). */
static int token_form(const struct oci_registry *r, const char *service, const char *scope,
		      char **ret, imc_error *err)
{
	_cleanup_free_ char *svc = escape(service);
	_cleanup_free_ char *scp = escape(scope);
	_cleanup_(secret_free_p) char *tok = escape(r->cred.identity_token);

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

static int token_fetch(struct oci_registry *r, const char *realm, const char *service,
		       const char *scope, char **ret, int64_t *ret_expires, imc_error *err)
{
	_cleanup_free_ char *url = NULL, *form = NULL;
	struct net_response res = {0};
	struct http_req q = {.sink = {.kind = NET_SINK_MEMORY, .max = TOKEN_RESPONSE_MAX}};
	int rc;

	rc = token_url(realm, service, scope, !r->cred.identity_token, &url, err);
	if (rc == 0 && r->cred.identity_token)
		rc = token_form(r, service, scope, &form, err);
	if (rc == 0) {
		q.url = url;
		q.post = form;
		if (!form && r->cred.username) {
			q.user = r->cred.username;
			q.pass = r->cred.password;
		}
		rc = http_do(r, &q, accept_token, &res, err);
	}
	if (form)
		explicit_bzero(form, strlen(form));
	if (rc == 0 && (res.status == 401 || res.status == 403))
		rc = imc_err(err, EACCES, "%s (HTTP %ld)",
			     r->cred_id[0] ? "the configured credentials were refused"
					   : "anonymous access refused; configure credentials for "
					     "this registry",
			     res.status);
	if (rc == 0)
		rc = registry_token_parse(res.body ? res.body : "", res.body_len, imc_now(), ret,
					  ret_expires, err);
	net_response_free(&res);
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
	sanitize(where);
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

/* The first challenge we can answer: Bearer before Basic. */
static const char *challenge_pick(const struct net_response *res, bool *ret_basic)
{
	const char *basic = NULL, *h;

	for (size_t i = 0; (h = net_response_header(res, "WWW-Authenticate", i)); i++) {
		const char *v = h + strspn(h, " \t");
		if (strncasecmp(v, "Bearer", 6) == 0 && (v[6] == ' ' || v[6] == '\t')) {
			*ret_basic = false;
			return h;
		}
		if (strncasecmp(v, "Basic", 5) == 0 &&
		    (v[5] == '\0' || v[5] == ' ' || v[5] == '\t'))
			basic = h;
	}
	*ret_basic = basic != NULL;
	return basic;
}

/* Answer a 401: true to try again; false with the error set. */
static int registry_auth_answer(struct oci_registry *r, const struct net_response *res,
				const char *sent_token, bool sent_basic, bool *ret_again,
				imc_error *err)
{
	_cleanup_free_ char *challenge = NULL;
	bool basic = false;
	const char *c = challenge_pick(res, &basic);

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

static int auth_refused(struct oci_registry *r, const struct net_response *res, imc_error *err)
{
	char reason[400];

	registry_error_text(res->status, res->body, res->body_len, reason, sizeof(reason));
	return imc_err(err, EACCES, "registry %s: %s: %s", r->name,
		       r->cred_id[0] ? "access denied with the configured credentials"
				     : "access denied without credentials",
		       reason);
}

/* Request q with the registry's credentials, answering up to two 401 challenges (a cached
 * token may turn out stale before a fresh one is fetched).  Returns 0 with a 2xx answer in
 * *res (to be freed); a 401 that remains is an error. */
static int http_auth(struct oci_registry *r, struct http_req q, struct net_response *res,
		     imc_error *err)
{
	for (int round = 0;; round++) {
		_cleanup_(secret_free_p) char *token = NULL;
		bool basic, again = false;
		int rc;

		pthread_mutex_lock(&r->lock);
		basic = r->basic;
		pthread_mutex_unlock(&r->lock);
		q.user = basic ? r->cred.username : NULL;
		q.pass = basic ? r->cred.password : NULL;
		token = basic ? NULL : registry_token_copy(r);
		q.bearer = token;
		rc = http_do(r, &q, accept_401, res, err);
		if (rc < 0 || res->status != 401)
			return rc;
		if (round < 2)
			rc = registry_auth_answer(r, res, token, basic, &again, err);
		if (rc == 0 && !again)
			rc = auth_refused(r, res, err);
		if (rc < 0)
			return rc;
		net_response_free(res);
	}
}

/* ---- the client -------------------------------------------------------------------------- */

static int registry_net(const struct oci_registry_opts *o, struct oci_registry *r, imc_error *err)
{
	struct net_config cfg = {
	    .ca_file = o->ca_file, .insecure_hosts = o->insecure_registries, .limits = o->limits};

	if (o->net) {
		r->net = o->net;
		return 0;
	}
	if (net_client_new(&cfg, &r->own_net, err) < 0)
		return -1;
	r->net = r->own_net;
	return 0;
}

int oci_registry_open(const struct oci_registry_opts *o, const struct oci_ref *ref,
		      struct oci_registry **ret, imc_error *err)
{
	_cleanup_free_ char *key = NULL;
	struct oci_registry *r;
	int rc;

	r = calloc(1, sizeof(*r));
	if (!r)
		return imc_err(err, ENOMEM, "out of memory");
	pthread_mutex_init(&r->lock, NULL);
	if (registry_net(o, r, err) < 0) {
		oci_registry_close(r);
		return imc_err_wrap(err, "registry %s", ref->registry);
	}
	r->plain_http = strcmp(net_scheme(r->net, ref->registry), "http") == 0;
	r->name = strdup(ref->registry);
	r->repository = strdup(ref->repository);
	r->tenant = strdup(o->tenant ? o->tenant : "");
	r->conn = net_conn_new();
	r->blob_max = o->blob_max ? o->blob_max : OCI_BLOB_MAX_DEFAULT;
	r->cancelled = o->cancelled;
	r->cancel_ctx = o->cancel_ctx;
	r->base = xasprintf("%s://%s/v2/%s", r->plain_http ? "http" : "https", ref->registry,
			    ref->repository);
	if (!r->name || !r->repository || !r->tenant || !r->conn || !r->base) {
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
	net_conn_free(r->conn);
	net_client_free(r->own_net);
	pthread_mutex_destroy(&r->lock);
	cred_free(&r->cred);
	free(r->name);
	free(r->repository);
	free(r->tenant);
	free(r->base);
	secret_free(r->token);
	free(r);
}

bool oci_registry_plain_http(const struct oci_registry *r)
{
	return r->plain_http;
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
static int check_content_digest(const struct net_response *res, const char *digest, imc_error *err)
{
	const char *h = net_response_header(res, "Docker-Content-Digest", 0);
	char shown[100];

	if (!h || strncmp(h, "sha256:", 7) != 0 || strcmp(h, digest) == 0)
		return 0;
	net_escape(h, strlen(h), shown, sizeof(shown));
	return imc_err(err, EBADMSG,
		       "manifest digest mismatch: registry says %.80s, the body hashes to %s",
		       shown, digest);
}

static int manifest_take(struct net_response *res, const char *want_digest,
			 struct oci_registry_manifest *m, imc_error *err)
{
	const char *ct = net_response_header(res, "Content-Type", 0);
	int rc = body_digest(res->body ? res->body : "", res->body_len, m->digest, err);

	if (rc < 0)
		return rc;
	if (want_digest && strcmp(want_digest, m->digest) != 0)
		return imc_err(err, EBADMSG, "manifest %s: digest mismatch (got %s)", want_digest,
			       m->digest);
	rc = check_content_digest(res, m->digest, err);
	if (rc < 0)
		return rc;
	if (ct && !(m->content_type = strndup(ct, strcspn(ct, " \t;"))))
		return imc_err(err, ENOMEM, "out of memory");
	m->body = res->body ? steal_pointer(&res->body) : strdup("");
	m->len = res->body_len;
	return m->body ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int oci_registry_get_manifest(struct oci_registry *r, const char *reference,
			      const char *want_digest, struct oci_registry_manifest *ret,
			      imc_error *err)
{
	_cleanup_free_ char *url = xasprintf("%s/manifests/%s", r->base, reference);
	struct oci_registry_manifest m = {0};
	struct net_response res = {0};
	int rc;

	if (!url)
		return imc_err(err, ENOMEM, "out of memory");
	rc = http_auth(r,
		       (struct http_req){.url = url,
					 .accept = manifest_accept,
					 .sink = {.kind = NET_SINK_MEMORY, .max = OCI_MANIFEST_MAX},
					 .conn = true},
		       &res, err);
	if (rc == 0)
		rc = manifest_take(&res, want_digest, &m, err);
	net_response_free(&res);
	if (rc < 0) {
		oci_registry_manifest_free(&m);
		return rc;
	}
	*ret = m;
	return 0;
}

static int blob_url(struct oci_registry *r, const char *digest, char **ret, imc_error *err)
{
	*ret = xasprintf("%s/blobs/%s", r->base, digest);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int oci_registry_get_blob_mem(struct oci_registry *r, const struct oci_descriptor *d, size_t max,
			      char **ret, size_t *ret_len, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	struct net_response res = {0};
	int rc;

	if (d->size < 0 || (uint64_t)d->size > max)
		return imc_err(err, EFBIG, "blob %s: %lld bytes, more than the %zu allowed",
			       d->digest, (long long)d->size, max);
	rc = blob_url(r, d->digest, &url, err);
	if (rc == 0)
		rc = http_auth(r,
			       (struct http_req){.url = url,
						 .sink = {.kind = NET_SINK_MEMORY,
							  .max = max,
							  .sized = true,
							  .size = (uint64_t)d->size,
							  .want_sha256 = d->digest},
						 .conn = true},
			       &res, err);
	if (rc == 0) {
		*ret = steal_pointer(&res.body);
		*ret_len = res.body_len;
	}
	net_response_free(&res);
	return rc;
}

/* Download blob d into fd: sized, sha256-checked, resumed with Range after a dropped connection
 * (net/), within the deadline its size grants and above the minimum rate. */
static int blob_download(struct oci_registry *r, const struct oci_descriptor *d, int fd,
			 bool (*on_bytes)(void *ctx, int64_t n), void *ctx, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	struct net_response res = {0};
	int rc = blob_url(r, d->digest, &url, err);

	if (rc == 0)
		rc = http_auth(r,
			       (struct http_req){.url = url,
						 .sink = {.kind = NET_SINK_FILE,
							  .fd = fd,
							  .sized = true,
							  .size = (uint64_t)d->size,
							  .want_sha256 = d->digest},
						 .on_bytes = on_bytes,
						 .ctx = ctx},
			       &res, err);
	if (rc == -EBADMSG && res.sha256[0] && res.bytes == (uint64_t)d->size)
		rc = imc_err(err, EBADMSG, "digest mismatch (got sha256:%s)", res.sha256);
	net_response_free(&res);
	return rc;
}

static bool blob_present(int dfd, const char *hex, int64_t size)
{
	struct stat st;

	return fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	       st.st_size == size;
}

/* A declared size is bounded before a byte is written: by the cap, and by the free space of
 * the filesystem the blob store is on. */
static int blob_size_check(const struct oci_registry *r, const struct oci_descriptor *d, int dfd,
			   imc_error *err)
{
	struct statvfs st;
	uint64_t avail;

	if ((uint64_t)d->size > r->blob_max)
		return imc_err(err, EFBIG,
			       "blob %s: %lld bytes declared, more than the %llu allowed",
			       d->digest, (long long)d->size, (unsigned long long)r->blob_max);
	if (fstatvfs(dfd, &st) < 0)
		return imc_err_sys(err, errno, "statvfs of the blob store");
	avail = (uint64_t)st.f_bavail * st.f_frsize;
	if ((uint64_t)d->size > avail)
		return imc_err(err, ENOSPC,
			       "blob %s: %lld bytes declared, the blob store has %llu bytes free",
			       d->digest, (long long)d->size, (unsigned long long)avail);
	return 0;
}

/* ---- blobs in flight ----------------------------------------------------------------------
 * A blob that several images (or builds) need at once is downloaded by one of them; the others
 * wait for it and then find it in the blob directory.  Only requests to one registry for one
 * tenant share a download: a stalled source of one tenant (or a registry that serves a digest
 * another registry also has) never holds another's build. */

#define INFLIGHT_MAX 256
#define INFLIGHT_KEY (IMC_SHA256_HEX_LEN + 2 * 256 + 3)

static pthread_mutex_t inflight_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t inflight_cond = PTHREAD_COND_INITIALIZER;
static char inflight[INFLIGHT_MAX][INFLIGHT_KEY];

static int inflight_find(const char *key)
{
	for (int i = 0; i < INFLIGHT_MAX; i++)
		if (strcmp(inflight[i], key) == 0)
			return i;
	return -1;
}

/* Claim key for this thread; 1 when claimed, 0 when another thread had it (and now no longer
 * has: look again), -ECANCELED. */
static int inflight_claim(const struct oci_registry *r, const char *key,
			  bool (*on_bytes)(void *ctx, int64_t n), void *ctx)
{
	bool waited = false;
	int slot;

	pthread_mutex_lock(&inflight_lock);
	while (inflight_find(key) >= 0 || (slot = inflight_find("")) < 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		waited = true;
		pthread_cond_timedwait(&inflight_cond, &inflight_lock, &ts);
		if ((on_bytes && !on_bytes(ctx, 0)) || registry_stopped(r)) {
			pthread_mutex_unlock(&inflight_lock);
			return -ECANCELED;
		}
	}
	if (waited) {
		pthread_mutex_unlock(&inflight_lock);
		return 0;
	}
	snprintf(inflight[slot], INFLIGHT_KEY, "%s", key);
	pthread_mutex_unlock(&inflight_lock);
	return 1;
}

static void inflight_release(const char *key)
{
	pthread_mutex_lock(&inflight_lock);
	int slot = inflight_find(key);
	if (slot >= 0)
		inflight[slot][0] = '\0';
	pthread_cond_broadcast(&inflight_cond);
	pthread_mutex_unlock(&inflight_lock);
}

/* The in-flight key of a blob: its digest, the registry and the tenant. */
TESTABLE void registry_inflight_key(const char *hex, const char *registry, const char *tenant,
				    char *out, size_t size)
{
	snprintf(out, size, "%s\n%.256s\n%.256s", hex, registry, tenant);
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

static int blob_dir_open(const char *blob_dir, char **ret_dir, int *ret_fd, imc_error *err)
{
	_cleanup_free_ char *dir = oci_blob_sha256_dir(blob_dir);
	int rc;

	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	rc = imc_mkdir_p(dir, 0700, err);
	if (rc < 0)
		return rc;
	*ret_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*ret_fd < 0)
		return imc_err_sys(err, errno, "open %s", dir);
	*ret_dir = steal_pointer(&dir);
	return 0;
}

int oci_registry_fetch_blob(struct oci_registry *r, const struct oci_descriptor *d,
			    const char *blob_dir, bool (*on_bytes)(void *ctx, int64_t n), void *ctx,
			    imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1], key[INFLIGHT_KEY];
	_cleanup_free_ char *dir = NULL;
	_cleanup_close_ int dfd = -1;
	int rc;

	rc = imc_digest_parse(d->digest, hex, err);
	if (rc < 0)
		return rc;
	if (d->size < 0)
		return imc_err(err, EINVAL, "negative size");
	rc = blob_dir_open(blob_dir, &dir, &dfd, err);
	if (rc < 0)
		return rc;
	registry_inflight_key(hex, r->name, r->tenant, key, sizeof(key));
	for (;;) {
		if (blob_present(dfd, hex, d->size)) {
			if (on_bytes)
				on_bytes(ctx, d->size);
			return 0;
		}
		rc = blob_size_check(r, d, dfd, err);
		if (rc < 0)
			return rc;
		rc = inflight_claim(r, key, on_bytes, ctx);
		if (rc < 0)
			return imc_err(err, -rc, "cancelled");
		if (rc == 1)
			break;
	}
	rc = blob_fetch_into(r, d, dfd, dir, hex, on_bytes, ctx, err);
	inflight_release(key);
	return rc;
}
