/* imcd's config file, bearer tokens and TLS key pair.  Tokens are kept only as sha256 digests
 * and compared in constant time; nothing here logs, and no message ever holds a token. */
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth.h"

#define SHA256_PREFIX "sha256:"
#define BEARER	      "Bearer"

/* ---- tokens ----------------------------------------------------------------------------------
 */

/* RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
TESTABLE bool token_chars_valid(const char *s, size_t len)
{
	size_t i = 0;

	for (; i < len; i++) {
		char c = s[i];
		bool alnum =
		    (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (!alnum && !strchr("-._~+/", c))
			break;
	}
	if (i == 0)
		return false;
	while (i < len && s[i] == '=')
		i++;
	return i == len;
}

static int token_digest(const char *token, size_t len, unsigned char ret[API_TOKEN_DIGEST_LEN],
			imc_error *err)
{
	unsigned int n = 0;

	if (EVP_Digest(token, len, ret, &n, EVP_sha256(), NULL) != 1 || n != API_TOKEN_DIGEST_LEN)
		return imc_err(err, EIO, "sha256 of a token failed");
	return 0;
}

static int hex_value(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c - 'a' + 10; /* lowercase checked before */
}

/* "sha256:<64 lowercase hex>" or a clear token (hashed here). */
static int parse_token(const char *s, const char *ctx, unsigned char ret[API_TOKEN_DIGEST_LEN],
		       bool *ret_clear, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	size_t len = strlen(s);

	if (strncmp(s, SHA256_PREFIX, strlen(SHA256_PREFIX)) == 0) {
		if (imc_digest_parse(s, hex, err) < 0)
			return imc_err(err, EINVAL,
				       "%s.token: want sha256:<64 lowercase hex digits>", ctx);
		for (size_t i = 0; i < API_TOKEN_DIGEST_LEN; i++)
			ret[i] =
			    (unsigned char)(hex_value(hex[2 * i]) << 4 | hex_value(hex[2 * i + 1]));
		*ret_clear = false;
		return 0;
	}
	if (len < API_BEARER_MIN || len > API_BEARER_MAX)
		return imc_err(err, EINVAL, "%s.token: want %d to %d bytes (or sha256:<hex>)", ctx,
			       API_BEARER_MIN, API_BEARER_MAX);
	if (!token_chars_valid(s, len))
		return imc_err(err, EINVAL,
			       "%s.token: only letters, digits and -._~+/ (then =) may appear",
			       ctx);
	*ret_clear = true;
	return token_digest(s, len, ret, err);
}

static int parse_tenant_name(json_t *obj, const char *ctx, char **ret, imc_error *err)
{
	const char *name = NULL;
	int r = imc_json_get_string(obj, "tenant", true, API_TENANT_MAX, ctx, &name, err);

	if (r < 0)
		return r;
	if (!imc_name_valid(name, API_TENANT_MAX))
		return imc_err(err, EINVAL, "%s.tenant: want 1-%d of [A-Za-z0-9._-]", ctx,
			       API_TENANT_MAX);
	*ret = strdup(name);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_one_token(json_t *obj, const char *ctx, struct api_token *ret, bool *ret_clear,
			   imc_error *err)
{
	static const char *const fields[] = {"token", "tenant", NULL};
	const char *token = NULL;
	int r;

	if (!json_is_object(obj))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_check_fields(obj, fields, ctx, err);
	if (r == 0)
		r = imc_json_get_string(obj, "token", true, API_BEARER_MAX, ctx, &token, err);
	if (r == 0)
		r = parse_token(token, ctx, ret->digest, ret_clear, err);
	if (r == 0)
		r = parse_tenant_name(obj, ctx, &ret->tenant, err);
	return r;
}

static int parse_tokens(json_t *root, struct api_config *c, imc_error *err)
{
	json_t *arr = NULL, *v;
	char ctx[32];
	size_t i;
	int r = imc_json_get_array(root, "tokens", false, API_TOKENS_MAX, NULL, &arr, err);

	if (r < 0 || !arr)
		return r;
	if (json_array_size(arr) == 0)
		return imc_err(err, EINVAL, "tokens: empty (leave the key out to turn auth off)");
	c->tokens = calloc(json_array_size(arr), sizeof(*c->tokens));
	if (!c->tokens)
		return imc_err(err, ENOMEM, "out of memory");
	c->auth = true;
	json_array_foreach(arr, i, v)
	{
		bool clear = false;
		snprintf(ctx, sizeof(ctx), "tokens[%zu]", i);
		r = parse_one_token(v, ctx, &c->tokens[i], &clear, err);
		c->n_tokens = i + 1; /* freed with the config, even half parsed */
		if (r < 0)
			return r;
		c->has_clear_tokens |= clear;
		for (size_t k = 0; k < i; k++)
			if (memcmp(c->tokens[k].digest, c->tokens[i].digest,
				   API_TOKEN_DIGEST_LEN) == 0)
				return imc_err(err, EINVAL, "%s.token: the same as tokens[%zu]",
					       ctx, k);
	}
	return 0;
}

static int parse_quota(json_t *obj, const char *name, struct api_tenant_limits *ret, imc_error *err)
{
	static const char *const fields[] = {"maxCaches", "maxBytes", NULL};
	int64_t caches = 0, bytes = 0;
	char ctx[API_TENANT_MAX + 16];
	int r;

	snprintf(ctx, sizeof(ctx), "tenants.%s", name);
	if (!imc_name_valid(name, API_TENANT_MAX))
		return imc_err(err, EINVAL, "%.80s: want a tenant name of 1-%d [A-Za-z0-9._-]", ctx,
			       API_TENANT_MAX);
	if (!json_is_object(obj))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_check_fields(obj, fields, ctx, err);
	if (r == 0)
		r = imc_json_get_int(obj, "maxCaches", false, 0, API_MAX_CACHES, ctx, &caches, err);
	if (r == 0)
		r = imc_json_get_int(obj, "maxBytes", false, 0, INT64_MAX, ctx, &bytes, err);
	if (r < 0)
		return r;
	ret->max_caches = (uint64_t)caches;
	ret->max_bytes = (uint64_t)bytes;
	ret->tenant = strdup(name);
	return ret->tenant ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_tenants(json_t *root, struct api_config *c, imc_error *err)
{
	json_t *obj = NULL, *v;
	const char *name;
	int r = imc_json_get_object(root, "tenants", false, NULL, &obj, err);

	if (r < 0 || !obj)
		return r;
	if (json_object_size(obj) > API_TENANTS_MAX)
		return imc_err(err, EINVAL, "tenants: at most %d", API_TENANTS_MAX);
	c->limits = calloc(json_object_size(obj) + 1, sizeof(*c->limits));
	if (!c->limits)
		return imc_err(err, ENOMEM, "out of memory");
	json_object_foreach(obj, name, v)
	{
		r = parse_quota(v, name, &c->limits[c->n_limits], err);
		if (r < 0)
			return r;
		c->n_limits++;
	}
	return 0;
}

static int dup_string(json_t *obj, const char *key, size_t max, const char *ctx, char **ret,
		      imc_error *err)
{
	const char *s = NULL;
	int r = imc_json_get_string(obj, key, false, max, ctx, &s, err);

	if (r < 0 || !s)
		return r;
	if (!*s)
		return imc_err(err, EINVAL, "%s%s%s: empty", ctx ? ctx : "", ctx ? "." : "", key);
	*ret = strdup(s);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_tls(json_t *root, struct api_config *c, imc_error *err)
{
	static const char *const fields[] = {"cert", "key", NULL};
	json_t *tls = NULL;
	int r = imc_json_get_object(root, "tls", false, NULL, &tls, err);

	if (r < 0 || !tls)
		return r;
	r = imc_json_check_fields(tls, fields, "tls", err);
	if (r == 0)
		r = dup_string(tls, "cert", PATH_MAX, "tls", &c->tls_cert, err);
	if (r == 0)
		r = dup_string(tls, "key", PATH_MAX, "tls", &c->tls_key, err);
	if (r == 0 && (!c->tls_cert || !c->tls_key))
		r = imc_err(err, EINVAL, "tls: want both cert and key");
	return r;
}

/* One limit of "http": 1..max, absent leaves 0 (the flag's or the default). */
static int http_limit(json_t *http, const char *key, int64_t max, unsigned *ret, imc_error *err)
{
	int64_t v = 0;
	int r = imc_json_get_int(http, key, false, 1, max, "http", &v, err);

	*ret = (unsigned)v;
	return r;
}

static int parse_http(json_t *root, struct api_config *c, imc_error *err)
{
	static const char *const fields[] = {"maxConnections", "maxConnectionsPerClient",
					     "connectionReserve", "requestTimeout", NULL};
	struct api_http_limits *l = &c->http;
	json_t *http = NULL;
	int r = imc_json_get_object(root, "http", false, NULL, &http, err);

	if (r < 0 || !http)
		return r;
	r = imc_json_check_fields(http, fields, "http", err);
	if (r == 0)
		r = http_limit(http, "maxConnections", API_CONNECTIONS_MAX, &l->max_connections,
			       err);
	if (r == 0)
		r = http_limit(http, "maxConnectionsPerClient", API_CONNECTIONS_MAX, &l->per_client,
			       err);
	if (r == 0)
		r = http_limit(http, "connectionReserve", API_CONNECTIONS_MAX - 1, &l->reserve,
			       err);
	if (r == 0)
		r = http_limit(http, "requestTimeout", API_REQUEST_TIMEOUT_MAX,
			       &l->request_timeout_s, err);
	return r;
}

#define DATA_ALLOW_MAX 64

/* "dataAllowDestinations": ["127.0.0.1:8000", "10.0.0.0/8", ...] (checked by net/ when imcd
 * makes its data client). */
static int parse_data_allow(json_t *root, struct api_config *c, imc_error *err)
{
	json_t *a = NULL, *v;
	size_t i;
	int r =
	    imc_json_get_array(root, "dataAllowDestinations", false, DATA_ALLOW_MAX, NULL, &a, err);

	if (r < 0 || !a)
		return r;
	c->data_allow = calloc(json_array_size(a) + 1, sizeof(*c->data_allow));
	if (!c->data_allow)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(a, i, v)
	{
		const char *s = json_string_value(v);
		if (!s || !*s || strlen(s) > 64)
			return imc_err(
			    err, EINVAL,
			    "dataAllowDestinations[%zu]: want an address of 1 to 64 bytes", i);
		if (!(c->data_allow[c->n_data_allow] = strdup(s)))
			return imc_err(err, ENOMEM, "out of memory");
		c->n_data_allow++;
	}
	return 0;
}

static int parse_root(json_t *root, struct api_config *c, imc_error *err)
{
	static const char *const fields[] = {
	    "tokens",	"tenants", "tls",	   "listen",
	    "stateDir", "http",	   "blobCacheMax", "dataAllowDestinations",
	    NULL};
	int64_t blob_max = 0;
	int r = imc_json_check_fields(root, fields, NULL, err);

	if (r == 0)
		r = parse_tokens(root, c, err);
	if (r == 0)
		r = parse_tenants(root, c, err);
	if (r == 0)
		r = parse_tls(root, c, err);
	if (r == 0)
		r = dup_string(root, "listen", PATH_MAX, NULL, &c->listen, err);
	if (r == 0)
		r = dup_string(root, "stateDir", PATH_MAX, NULL, &c->state_dir, err);
	if (r == 0)
		r = parse_http(root, c, err);
	if (r == 0)
		r = imc_json_get_int(root, "blobCacheMax", false, 0, INT64_MAX, NULL, &blob_max,
				     err);
	c->blob_cache_max = (uint64_t)blob_max;
	if (r == 0)
		r = parse_data_allow(root, c, err);
	return r;
}

int api_config_parse(const char *buf, size_t len, struct api_config *ret, imc_error *err)
{
	_cleanup_json_ json_t *root = NULL;
	struct api_config c = {0};
	int r;

	if (len > API_CONFIG_MAX)
		return imc_err(err, EFBIG, "config: larger than %d bytes", API_CONFIG_MAX);
	r = imc_json_parse_object(buf, len, &root, err);
	if (r < 0)
		return r;
	r = parse_root(root, &c, err);
	if (r < 0) {
		api_config_free(&c);
		return r;
	}
	*ret = c;
	return 0;
}

void api_config_free(struct api_config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_tokens; i++) {
		OPENSSL_cleanse(c->tokens[i].digest, API_TOKEN_DIGEST_LEN);
		free(c->tokens[i].tenant);
	}
	free(c->tokens);
	for (size_t i = 0; i < c->n_limits; i++)
		free((char *)c->limits[i].tenant);
	free(c->limits);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->listen);
	free(c->state_dir);
	for (size_t i = 0; i < c->n_data_allow; i++)
		free(c->data_allow[i]);
	free(c->data_allow);
	*c = (struct api_config){0};
}

/* Open a file that must be a regular file not writable by group or others; ret_st gets its
 * mode and size. */
static int open_private(const char *path, const char *what, struct stat *ret_st, imc_error *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return imc_err_sys(err, errno, "%s %s", what, path);
	if (fstat(fd, ret_st) < 0)
		return imc_err_sys(err, errno, "%s %s", what, path);
	if (!S_ISREG(ret_st->st_mode))
		return imc_err(err, EINVAL, "%s %s: not a regular file", what, path);
	if (ret_st->st_mode & (S_IWGRP | S_IWOTH))
		return imc_err(err, EPERM,
			       "%s %s: writable by group or others (mode %04o); chmod go-w it",
			       what, path, (unsigned)(ret_st->st_mode & 07777));
	return steal_fd(&fd);
}

/* The whole of fd (at most max bytes), NUL-terminated. */
static int read_fd(int fd, const char *path, size_t max, char **ret, size_t *ret_len,
		   imc_error *err)
{
	struct imc_buf b = {0};
	char chunk[8192];

	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			imc_buf_free(&b);
			return imc_err_sys(err, errno, "%s: read", path);
		}
		if (n == 0)
			break;
		if (b.len + (size_t)n > max) {
			imc_buf_free(&b);
			return imc_err(err, EFBIG, "%s: larger than %zu bytes", path, max);
		}
		if (imc_buf_append(&b, chunk, (size_t)n) < 0) {
			imc_buf_free(&b);
			return imc_err(err, ENOMEM, "%s: out of memory", path);
		}
	}
	if (!b.data && imc_buf_append(&b, "", 0) < 0)
		return imc_err(err, ENOMEM, "%s: out of memory", path);
	*ret = b.data;
	*ret_len = b.len;
	return 0;
}

int api_config_load(const char *path, struct api_config *ret, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *buf = NULL;
	struct api_config c = {0};
	struct stat st;
	size_t len = 0;
	int r;

	fd = open_private(path, "config", &st, err);
	if (fd < 0)
		return fd;
	r = read_fd(fd, path, API_CONFIG_MAX, &buf, &len, err);
	if (r < 0)
		return r;
	r = api_config_parse(buf, len, &c, err);
	OPENSSL_cleanse(buf, len);
	if (r < 0)
		return imc_err_wrap(err, "config %s", path);
	if (c.has_clear_tokens && (st.st_mode & S_IROTH)) {
		api_config_free(&c);
		return imc_err(err, EPERM,
			       "config %s: holds clear tokens and is readable by others (mode "
			       "%04o); chmod o-r it or give the tokens as sha256:<hex>",
			       path, (unsigned)(st.st_mode & 07777));
	}
	*ret = c;
	return 0;
}

/* ---- the Authorization header -----------------------------------------------------------------
 */

/* "Bearer <token>": the scheme is case-insensitive (RFC 7235), one or more spaces follow it;
 * trailing blanks are allowed.  ret gets the token and its length. */
TESTABLE int bearer_token(const char *header, const char **ret, size_t *ret_len)
{
	const char *p = header;
	size_t n;

	if (strlen(header) > API_AUTH_HEADER_MAX)
		return -EACCES;
	if (strncasecmp(p, BEARER, strlen(BEARER)) != 0 || p[strlen(BEARER)] != ' ')
		return -EACCES;
	p += strlen(BEARER);
	while (*p == ' ')
		p++;
	n = strlen(p);
	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	if (n == 0 || n > API_BEARER_MAX || !token_chars_valid(p, n))
		return -EACCES;
	*ret = p;
	*ret_len = n;
	return 0;
}

int api_auth_check(const struct api_config *cfg, const char *authorization, struct api_caller *ret,
		   bool *ret_missing, imc_error *err)
{
	unsigned char digest[API_TOKEN_DIGEST_LEN];
	const char *token = NULL;
	size_t len = 0, found = SIZE_MAX;
	int r;

	*ret_missing = false;
	if (!cfg || !cfg->auth) {
		ret->tenant = API_TENANT_DEFAULT;
		return 0;
	}
	if (!authorization || !*authorization) {
		*ret_missing = true;
		return imc_err(err, EACCES, "missing bearer token (Authorization: Bearer <token>)");
	}
	if (bearer_token(authorization, &token, &len) < 0)
		return imc_err(err, EACCES, "Authorization: want \"Bearer <token>\"");
	r = token_digest(token, len, digest, err);
	if (r < 0)
		return r;
	/* Every token is compared, whichever matches: the time says nothing about which. */
	for (size_t i = 0; i < cfg->n_tokens; i++)
		if (CRYPTO_memcmp(digest, cfg->tokens[i].digest, API_TOKEN_DIGEST_LEN) == 0)
			found = i;
	OPENSSL_cleanse(digest, sizeof(digest));
	if (found == SIZE_MAX)
		return imc_err(err, EACCES, "invalid bearer token");
	ret->tenant = cfg->tokens[found].tenant;
	return 0;
}

/* ---- TLS ----------------------------------------------------------------------------------------
 */

static int read_pem(const char *path, const char *what, bool secret, char **ret, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	size_t len = 0;

	fd = open_private(path, what, &st, err);
	if (fd < 0)
		return fd;
	if (secret && (st.st_mode & S_IROTH))
		return imc_err(err, EPERM, "%s %s: readable by others (mode %04o); chmod o-r it",
			       what, path, (unsigned)(st.st_mode & 07777));
	return read_fd(fd, path, API_TLS_FILE_MAX, ret, &len, err);
}

static void bio_freep(BIO **b)
{
	BIO_free(*b);
}
static void x509_freep(X509 **x)
{
	X509_free(*x);
}
static void pkey_freep(EVP_PKEY **k)
{
	EVP_PKEY_free(*k);
}

/* Both parse as PEM and the key is the certificate's. */
static int tls_check_pair(const struct api_tls *t, const char *cert_path, const char *key_path,
			  imc_error *err)
{
	_cleanup_(bio_freep) BIO *cb = BIO_new_mem_buf(t->cert_pem, -1);
	_cleanup_(bio_freep) BIO *kb = BIO_new_mem_buf(t->key_pem, -1);
	_cleanup_(x509_freep) X509 *cert = NULL;
	_cleanup_(pkey_freep) EVP_PKEY *key = NULL;
	int r = 0;

	if (!cb || !kb)
		return imc_err(err, ENOMEM, "out of memory");
	cert = PEM_read_bio_X509(cb, NULL, NULL, NULL);
	if (!cert)
		r = imc_err(err, EINVAL, "tls cert %s: not a PEM certificate", cert_path);
	else if (!(key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL)))
		r = imc_err(err, EINVAL, "tls key %s: not an unencrypted PEM private key",
			    key_path);
	else if (X509_check_private_key(cert, key) != 1)
		r = imc_err(err, EINVAL, "tls key %s: does not belong to the certificate %s",
			    key_path, cert_path);
	ERR_clear_error();
	return r;
}

int api_tls_load(const char *cert_path, const char *key_path, struct api_tls *ret, imc_error *err)
{
	struct api_tls t = {0};
	int r = read_pem(cert_path, "tls cert", false, &t.cert_pem, err);

	if (r == 0)
		r = read_pem(key_path, "tls key", true, &t.key_pem, err);
	if (r == 0)
		r = tls_check_pair(&t, cert_path, key_path, err);
	if (r < 0) {
		api_tls_free(&t);
		return r;
	}
	*ret = t;
	return 0;
}

void api_tls_free(struct api_tls *t)
{
	if (!t)
		return;
	if (t->key_pem) {
		OPENSSL_cleanse(t->key_pem, strlen(t->key_pem));
		free(t->key_pem);
	}
	free(t->cert_pem);
	*t = (struct api_tls){0};
}
