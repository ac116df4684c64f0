/* imcd's security and service configuration: the config file (bearer tokens bound to tenants,
 * tenant quotas, TLS, listen and state-dir defaults), the Authorization header check, the TLS
 * key pair, and the server start that uses them.  See docs/security.md.
 *
 * Pure parts (no network): api_config_parse, api_auth_check, api_tls_load. */
#ifndef IMC_API_AUTH_H
#define IMC_API_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "api.h"

/* ---- limits ------------------------------------------------------------------------------- */
#define API_CONFIG_DEFAULT     "/etc/imcache/imcd.json"
#define API_CONFIG_MAX	       (1024 * 1024) /* bytes of the config file */
#define API_TOKENS_MAX	       4096	     /* tokens in one config */
#define API_TENANTS_MAX	       4096	     /* tenants with quotas in one config */
#define API_BEARER_MIN	       16	     /* bytes of a clear token */
#define API_BEARER_MAX	       4096	     /* bytes of a clear token (and of the header's) */
#define API_AUTH_HEADER_MAX    (API_BEARER_MAX + 64)
#define API_TLS_FILE_MAX       (256 * 1024) /* bytes of a PEM cert chain or key */
#define API_AUTH_REALM	       "imcache"
#define API_AUTH_CHALLENGE     "Bearer realm=\"" API_AUTH_REALM "\""
#define API_AUTH_CHALLENGE_BAD API_AUTH_CHALLENGE ", error=\"invalid_token\""
#define API_TOKEN_DIGEST_LEN   32

/* A token as configured: only its sha256 is kept (a clear token is hashed at load). */
struct api_token {
	unsigned char digest[API_TOKEN_DIGEST_LEN];
	char *tenant;
};

/* The parsed config file.  Every string is owned. */
struct api_config {
	struct api_token *tokens; /* 1..API_TOKENS_MAX when auth is on */
	size_t n_tokens;
	bool auth;	       /* "tokens" given: requests need a bearer token */
	bool has_clear_tokens; /* some token is in the clear (the file must not be o+r) */
	struct api_tenant_limits *limits; /* "tenants": quotas; .tenant strings owned */
	size_t n_limits;
	char *tls_cert; /* paths; NULL when not given */
	char *tls_key;
	char *listen; /* defaults for --listen / --state-dir; NULL when not given */
	char *state_dir;
	struct api_http_limits http; /* "http": connection limits; 0: not given */
	uint64_t blob_cache_max;     /* default for --blob-cache-max; 0 when not given */
	/* "dataAllowDestinations": addresses data sources may reach though they are loopback,
	 * private or link-local ("ADDR", "ADDR/PREFIX", "ADDR:PORT", "[V6]:PORT"). */
	char **data_allow;
	size_t n_data_allow;
};

/* Parse a config file's content.  Malformed JSON, unknown keys, wrong types, bad tenant names,
 * tokens that are too short or long or hold characters outside RFC 6750's b64token, a token
 * given twice, and more than the caps are -EINVAL with a message naming the key
 * ("tokens[2].tenant: ..."). */
int api_config_parse(const char *buf, size_t len, struct api_config *ret, imc_error *err);
/* Read and parse path.  Refused: not a regular file, writable by group or others, or readable
 * by others while it holds a clear token (-EPERM naming the file and the fix). */
int api_config_load(const char *path, struct api_config *ret, imc_error *err);
void api_config_free(struct api_config *c);

/* Who sends a request with this Authorization header value (NULL: no header).  With auth off
 * every request is API_TENANT_DEFAULT.  -EACCES when the header is missing, is not
 * "Bearer <token>", or the token is unknown (ret_missing tells "no credentials" apart, for the
 * WWW-Authenticate challenge).  ret->tenant points into cfg. The token is compared by its sha256
 * digest in constant time against every configured token. */
int api_auth_check(const struct api_config *cfg, const char *authorization, struct api_caller *ret,
		   bool *ret_missing, imc_error *err);

/* ---- TLS ------------------------------------------------------------------------------------ */
struct api_tls {
	char *cert_pem; /* NUL-terminated PEM, as libmicrohttpd wants them */
	char *key_pem;
};
/* Read a PEM certificate chain and its private key, check with OpenSSL that both parse and that
 * the key belongs to the certificate.  A key file readable by others is refused (-EPERM). */
int api_tls_load(const char *cert_path, const char *key_path, struct api_tls *ret, imc_error *err);
/* Wipes the key. */
void api_tls_free(struct api_tls *t);

/* ---- the server with auth and TLS (api/server.c) ------------------------------------------- */
struct api_server_security {
	const struct api_config *auth; /* NULL or auth off: every request is the default tenant */
	const struct api_tls *tls;     /* NULL: plain HTTP */
};
/* Start the HTTP server of cfg with auth and TLS (sec NULL: neither). */
int api_server_start_secure(const struct api_server_config *cfg,
			    const struct api_server_security *sec, struct api_server **ret,
			    imc_error *err);

/* ---- listening (api/listen.c) ---------------------------------------------------------------- */
/* Is a listen spec a Unix socket or a loopback address (127.0.0.0/8, ::1)?  False for anything
 * unparsable. */
bool api_listen_is_local(const char *spec);

#endif
