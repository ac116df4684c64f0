/* oci/: the OCI side of imcache, used by builder/, dist/ and the client: image references,
 * manifests and indexes, media types, platforms, the distribution client (registry.c) with its
 * token cache, blob download and upload, and artifact push and pull. */
#ifndef IMC_OCI_H
#define IMC_OCI_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"
#include "../net/net.h"

/* ---- image references (ref.c) ------------------------------------------------------------- */
struct oci_ref {
	char *registry;	  /* "registry-1.docker.io", "127.0.0.1:5000", ... (as contacted) */
	char *repository; /* "library/busybox" */
	char *tag;	  /* NULL when only a digest was given */
	char *digest;	  /* "sha256:…" or NULL */
};
int oci_ref_parse(const char *s, struct oci_ref *ret, imc_error *err);
void oci_ref_free(struct oci_ref *r);

/* ---- manifests (manifest.c) --------------------------------------------------------------- */
struct oci_descriptor {
	char *media_type;
	char *digest;
	int64_t size;
};
struct oci_manifest {
	struct oci_descriptor config;
	struct oci_descriptor *layers;
	size_t n_layers;
};
/* Parse a Docker schema 2 or OCI image manifest (media_type from Content-Type or the body). */
int oci_manifest_parse(const char *media_type, const char *body, size_t len,
		       struct oci_manifest *ret, imc_error *err);
void oci_manifest_free(struct oci_manifest *m);
/* Pick the manifest for platform ("os/arch[/variant]") from an OCI index / manifest list. */
int oci_index_select(const char *body, size_t len, const char *platform, struct oci_descriptor *ret,
		     imc_error *err);
void oci_descriptor_free(struct oci_descriptor *d);
bool oci_media_type_is_index(const char *media_type);

#define OCI_MT_OCI_MANIFEST	 "application/vnd.oci.image.manifest.v1+json"
#define OCI_MT_OCI_INDEX	 "application/vnd.oci.image.index.v1+json"
#define OCI_MT_OCI_CONFIG	 "application/vnd.oci.image.config.v1+json"
#define OCI_MT_OCI_LAYER	 "application/vnd.oci.image.layer.v1.tar"
#define OCI_MT_OCI_LAYER_GZIP	 "application/vnd.oci.image.layer.v1.tar+gzip"
#define OCI_MT_OCI_LAYER_ZSTD	 "application/vnd.oci.image.layer.v1.tar+zstd"
#define OCI_MT_DOCKER_MANIFEST	 "application/vnd.docker.distribution.manifest.v2+json"
#define OCI_MT_DOCKER_LIST	 "application/vnd.docker.distribution.manifest.list.v2+json"
#define OCI_MT_DOCKER_CONFIG	 "application/vnd.docker.container.image.v1+json"
#define OCI_MT_DOCKER_LAYER_GZIP "application/vnd.docker.image.rootfs.diff.tar.gzip"

#define OCI_DIGEST_MAX	     (7 + IMC_SHA256_HEX_LEN) /* "sha256:" + hex */
#define OCI_DEFAULT_PLATFORM "linux/amd64"
#define OCI_MANIFEST_MAX     (4u << 20) /* manifests, indexes and image configs */

/* Is the manifest body (with the response's Content-Type, may be NULL) an index? */
int oci_manifest_kind(const char *content_type, const char *body, size_t len, bool *ret_is_index,
		      imc_error *err);

/* ---- platforms ("os/arch[/variant]", as in the image-spec index) -------------------------- */
#define OCI_PLATFORM_MAX 200 /* bytes of a normalized platform and its NUL */
/* Normalize as containerd does: lowercase parts of [a-z0-9._-], aliases (x86_64 -> amd64,
 * aarch64 -> arm64, armhf -> arm/v7), the default variants (arm64 -> arm64/v8, arm -> arm/v7)
 * and none for amd64 ("amd64/v1" -> "amd64").  -EINVAL with a message naming s. */
int oci_platform_normalize(const char *s, char *out, size_t size, imc_error *err);
/* A layer chain's ChainID (containerd's snapshot names): ChainID(L0) = DiffID(L0), ChainID(Ln) =
 * sha256(ChainID(Ln-1) + " " + DiffID(Ln)); every diff_id "sha256:<hex>". */
int oci_chain_id(const char *const *diff_ids, size_t n, char ret[OCI_DIGEST_MAX + 1],
		 imc_error *err);
/* The top ChainID of an image of /imcache.json (its "layers", each with a "diffId"). */
int oci_image_top_chain_id(const json_t *image, char ret[OCI_DIGEST_MAX + 1], imc_error *err);
/* Does an image whose config declares os/arch[/variant] (NULL or "" when it names none) serve
 * platform want?  os and architecture must be want's, and so must the variant when the config
 * declares one; a config that names no platform serves any.  ret gets the platform of the
 * image (normalized); a mismatch is -ENOENT "no manifest for platform WANT (available: P)". */
int oci_platform_match_config(const char *want, const char *os, const char *arch,
			      const char *variant, char *ret, size_t size, imc_error *err);

/* ---- registry client (registry.c) ---------------------------------------------------------
 * One per image: it keeps the bearer token for all of that image's requests.  Blob downloads
 * may run from several threads at once; the other calls are for one thread. */
struct oci_registry;

/* Registry credentials of one request: never logged, never written to disk. */
struct oci_credential {
	const char *registry; /* "host[:port]" as in image refs; docker.io for Docker Hub */
	const char *username; /* with password: basic auth, and for a token service's realm */
	const char *password;
	const char *token; /* instead of username/password: a registry identity/bearer token */
};

/* How to reach registries and what to present to them. */
struct oci_registry_opts {
	const char *const *insecure_registries;	  /* NULL-terminated "host:port" list, plain HTTP */
	const struct oci_credential *credentials; /* per registry; first match wins */
	size_t n_credentials;
	const char *auth_file; /* docker-style config.json ("auths"); NULL = none */
	const char *ca_file;   /* extra CA bundle for HTTPS; NULL = system CAs only */
	/* Polled during every request (about once a second, also while one waits to be retried):
	 * true stops it with -ECANCELED.  NULL: never. */
	bool (*cancelled)(void *ctx);
	void *cancel_ctx;
	/* The HTTP client to use; NULL: the registry makes its own from insecure_registries,
	 * ca_file and limits (zero fields: net/'s defaults, e.g. 64 KiB/s over 60 s). */
	struct net_client *net;
	struct net_limits limits;
	uint64_t
	    blob_max; /* a declared blob size above this is refused (0: OCI_BLOB_MAX_DEFAULT) */
	const char *tenant; /* blob downloads in flight are shared per registry and tenant only */
};
#define OCI_BLOB_MAX_DEFAULT (64ULL << 30)

/* What we may present to one registry.  Never logged, never in an error message. */
struct oci_registry_cred {
	char *username, *password;
	char *bearer;	      /* a registry token, sent as is */
	char *identity_token; /* an OAuth2 refresh token for the token service */
};

int oci_registry_open(const struct oci_registry_opts *o, const struct oci_ref *ref,
		      struct oci_registry **ret, imc_error *err);
void oci_registry_close(struct oci_registry *r);
/* Is the registry reached over plain HTTP (loopback, or named insecure)? */
bool oci_registry_plain_http(const struct oci_registry *r);

struct oci_registry_manifest {
	char *body;
	size_t len;
	char *content_type;			 /* NULL when the registry sent none */
	char digest[7 + IMC_SHA256_HEX_LEN + 1]; /* "sha256:<hex>" of the body */
};
void oci_registry_manifest_free(struct oci_registry_manifest *m);
/* GET /v2/<repo>/manifests/<reference>.  When want_digest is set the body must hash to it. */
int oci_registry_get_manifest(struct oci_registry *r, const char *reference,
			      const char *want_digest, struct oci_registry_manifest *ret,
			      imc_error *err);
/* GET a small blob (an image config) into memory, checking its size and digest. */
int oci_registry_get_blob_mem(struct oci_registry *r, const struct oci_descriptor *d, size_t max,
			      char **ret, size_t *ret_len, imc_error *err);
/* The blob cache (blobs.c): <state>/blobs, malloc'ed (NULL: out of memory); a blob of it is
 * <blob dir>/sha256/<hex>, in the directory oci_blob_sha256_dir answers. */
char *oci_blob_dir(const char *state_dir);
char *oci_blob_sha256_dir(const char *blob_dir);
/* Download blob d into <blob_dir>/sha256/<hex> unless it is already there.  on_bytes (may be
 * NULL) hears of bytes as they arrive (a negative count takes back the bytes of a failed try,
 * 0 is a heartbeat) and returns false to cancel the download. */
int oci_registry_fetch_blob(struct oci_registry *r, const struct oci_descriptor *d,
			    const char *blob_dir, bool (*on_bytes)(void *ctx, int64_t n), void *ctx,
			    imc_error *err);

/* ---- artifacts (artifact.c) ----------------------------------------------------------------
 * Push: one pusher per target ref ("host/repo:tag", a tag, not a digest). */
struct oci_pusher;
int oci_push_open(const char *ref, const char *const *insecure_registries, struct oci_pusher **ret,
		  imc_error *err);
void oci_push_close(struct oci_pusher *p);
int oci_push_blob_exists(struct oci_pusher *p, const char *digest, bool *ret, imc_error *err);
/* Upload a blob unless the registry has it; *ret_uploaded says which. */
int oci_push_blob(struct oci_pusher *p, const char *digest, const void *data, size_t len,
		  bool *ret_uploaded, imc_error *err);
/* PUT an image manifest (OCI_MT_OCI_MANIFEST) to the ref's tag; ret_digest gets its digest. */
int oci_push_manifest(struct oci_pusher *p, const char *body, size_t len,
		      char ret_digest[OCI_DIGEST_MAX + 1], imc_error *err);

/* Pull: what an artifact must be. */
struct oci_artifact_kind {
	const char *artifact_type; /* the manifest's artifactType */
	const char *config_type;   /* its config's mediaType */
	size_t config_max;	   /* bytes of the config */
	const char *what;	   /* names the kind in errors: "an imcache snapshot" */
};
/* The config blob of the artifact at ref (by digest when ref has one, else by tag). */
int oci_artifact_pull_config(struct oci_registry *r, const struct oci_ref *ref,
			     const struct oci_artifact_kind *k, char **ret, size_t *ret_len,
			     imc_error *err);

/* ---- the imcache snapshot artifact (index.c, docs/distribution.md) ---------------------------
 * A snapshot cut into fixed-size chunks: artifactType OCI_SNAPSHOT_ARTIFACT_TYPE, the config is
 * its chunk index (JSON: offset -> digest of the uncompressed chunk, and the digest and size of
 * its zstd blob, plus the snapshot's size and sha256), the layers are the zstd chunks. */
#define OCI_SNAPSHOT_ARTIFACT_TYPE "application/vnd.imcache.snapshot.v1"
#define OCI_SNAPSHOT_MT_INDEX	   "application/vnd.imcache.index.v1+json"
#define OCI_SNAPSHOT_MT_CHUNK	   "application/vnd.imcache.chunk.v1.zstd"

#define OCI_CHUNK_SIZE_MIN   (64U << 10)
#define OCI_CHUNK_SIZE_MAX   (64U << 20)
#define OCI_SNAPSHOT_MAX     (16ULL << 40) /* a snapshot's size */
#define OCI_INDEX_MAX	     (64U << 20)   /* bytes of an index */
#define OCI_INDEX_CHUNKS_MAX (1U << 22)	   /* chunks in one index */

struct oci_chunk_entry {
	uint64_t offset;
	char digest[OCI_DIGEST_MAX + 1]; /* of the uncompressed content */
	char blob[OCI_DIGEST_MAX + 1];	 /* of the compressed (zstd) blob */
	uint64_t csize;			 /* bytes of the compressed blob */
};

struct oci_chunk_index {
	char cache_id[64];
	uint32_t chunk_size;
	uint64_t size;			 /* of the snapshot */
	char sha256[OCI_DIGEST_MAX + 1]; /* of the whole snapshot, zeros included */
	struct oci_chunk_entry *chunks;	 /* by offset; all-zero chunks are absent */
	size_t n_chunks;
};

void oci_chunk_index_free(struct oci_chunk_index *ix);
/* Bytes of the chunk at offset (the last one may be short). */
uint64_t oci_chunk_index_len(const struct oci_chunk_index *ix, uint64_t offset);
/* Parse and check an index: every field typed and capped, unknown fields refused, offsets
 * multiples of chunkSize, strictly increasing and inside size. */
int oci_chunk_index_parse(const char *buf, size_t len, struct oci_chunk_index *ret, imc_error *err);
/* The JSON of an index (compact, fixed key order: its bytes are what its digest names). */
int oci_chunk_index_render(const struct oci_chunk_index *ix, char **ret, size_t *ret_len,
			   imc_error *err);

#ifdef IMC_TESTING
void registry_inflight_key(const char *hex, const char *registry, const char *tenant, char *out,
			   size_t size);
int registry_parse_bearer(const char *header, char **ret_realm, char **ret_service,
			  char **ret_scope);
bool registry_key_matches(const char *key, const char *registry);
int registry_auth_file_lookup(const char *text, size_t len, const char *registry,
			      struct oci_registry_cred *ret, imc_error *err);
int registry_token_parse(const char *body, size_t len, int64_t now, char **ret,
			 int64_t *ret_expires, imc_error *err);
void registry_error_text(long status, const char *body, size_t len, char *buf, size_t size);
bool ref_repository_valid(const char *s);
bool ref_domain_valid(const char *s);
bool ref_tag_valid(const char *s);
#endif

#endif
