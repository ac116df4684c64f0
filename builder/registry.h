/* Internal to builder/: media types, the OCI distribution client and helpers shared between the
 * builder's files (and reached by its unit tests). */
#ifndef IMC_BUILDER_REGISTRY_H
#define IMC_BUILDER_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "builder.h"

#define BUILDER_MT_OCI_MANIFEST	     "application/vnd.oci.image.manifest.v1+json"
#define BUILDER_MT_OCI_INDEX	     "application/vnd.oci.image.index.v1+json"
#define BUILDER_MT_OCI_CONFIG	     "application/vnd.oci.image.config.v1+json"
#define BUILDER_MT_OCI_LAYER	     "application/vnd.oci.image.layer.v1.tar"
#define BUILDER_MT_OCI_LAYER_GZIP    "application/vnd.oci.image.layer.v1.tar+gzip"
#define BUILDER_MT_OCI_LAYER_ZSTD    "application/vnd.oci.image.layer.v1.tar+zstd"
#define BUILDER_MT_DOCKER_MANIFEST   "application/vnd.docker.distribution.manifest.v2+json"
#define BUILDER_MT_DOCKER_LIST	     "application/vnd.docker.distribution.manifest.list.v2+json"
#define BUILDER_MT_DOCKER_CONFIG     "application/vnd.docker.container.image.v1+json"
#define BUILDER_MT_DOCKER_LAYER_GZIP "application/vnd.docker.image.rootfs.diff.tar.gzip"

#define BUILDER_MANIFEST_MAX (4u << 20) /* manifests, indexes and image configs */

/* Is the manifest body (with the response's Content-Type, may be NULL) an index? */
int builder_manifest_kind(const char *content_type, const char *body, size_t len,
			  bool *ret_is_index, imc_error *err);

/* The transport options every request of the builder sets, to registries and data sources
 * alike: redirects, the protocols (plain http only where allowed), timeouts, keep-alive, user
 * agent and buffer size.  A libcurl code: callers turn it into their errno. */
CURLcode builder_curl_transport_opts(CURL *curl, bool plain_http);

/* ---- registry client (registry.c) ---------------------------------------------------------
 * One per image: it keeps the bearer token for all of that image's requests.  Blob downloads
 * may run from several threads at once; the other calls are for one thread. */
struct registry;

/* What we may present to one registry.  Never logged, never in an error message. */
struct registry_cred {
	char *username, *password;
	char *bearer;	      /* a registry token, sent as is */
	char *identity_token; /* an OAuth2 refresh token for the token service */
};

int registry_open(const struct builder_opts *o, const struct builder_ref *ref,
		  struct registry **ret, imc_error *err);
void registry_close(struct registry *r);

struct registry_manifest {
	char *body;
	size_t len;
	char *content_type;			 /* NULL when the registry sent none */
	char digest[7 + IMC_SHA256_HEX_LEN + 1]; /* "sha256:<hex>" of the body */
};
void registry_manifest_free(struct registry_manifest *m);
/* GET /v2/<repo>/manifests/<reference>.  When want_digest is set the body must hash to it. */
int registry_get_manifest(struct registry *r, const char *reference, const char *want_digest,
			  struct registry_manifest *ret, imc_error *err);
/* GET a small blob (an image config) into memory, checking its size and digest. */
int registry_get_blob_mem(struct registry *r, const struct builder_descriptor *d, size_t max,
			  char **ret, size_t *ret_len, imc_error *err);
/* Download blob d into <blob_dir>/sha256/<hex> unless it is already there.  on_bytes (may be
 * NULL) hears of bytes as they arrive (a negative count takes back the bytes of a failed try,
 * 0 is a heartbeat) and returns false to cancel the download. */
int registry_fetch_blob(struct registry *r, const struct builder_descriptor *d,
			const char *blob_dir, bool (*on_bytes)(void *ctx, int64_t n), void *ctx,
			imc_error *err);

#ifdef IMC_TESTING
bool registry_plain_http(const char *registry, const char *const *insecure);
int registry_parse_bearer(const char *header, char **ret_realm, char **ret_service,
			  char **ret_scope);
bool registry_key_matches(const char *key, const char *registry);
int registry_auth_file_lookup(const char *text, size_t len, const char *registry,
			      struct registry_cred *ret, imc_error *err);
int registry_token_parse(const char *body, size_t len, int64_t now, char **ret,
			 int64_t *ret_expires, imc_error *err);
void registry_error_text(long status, const char *body, size_t len, char *buf, size_t size);
bool ref_repository_valid(const char *s);
bool ref_domain_valid(const char *s);
bool ref_tag_valid(const char *s);
bool media_type_is(const char *media_type, const char *want);
int layer_path_clean(const char *in, char *out, size_t size);
bool layer_device_allowed(mode_t type, unsigned major_n, unsigned minor_n);
#endif

#endif
