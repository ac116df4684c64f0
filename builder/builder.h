/* The builder: OCI distribution client, manifest handling and layer application, and the build
 * of a cache snapshot from image refs. */
#ifndef IMC_BUILDER_H
#define IMC_BUILDER_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"
#include "../store/store.h"

/* ---- image references -------------------------------------------------------------------- */
struct builder_ref {
	char *registry;	  /* "registry-1.docker.io", "127.0.0.1:5000", ... (as contacted) */
	char *repository; /* "library/busybox" */
	char *tag;	  /* NULL when only a digest was given */
	char *digest;	  /* "sha256:…" or NULL */
};
int builder_ref_parse(const char *s, struct builder_ref *ret, imc_error *err);
void builder_ref_free(struct builder_ref *r);

/* ---- manifests ---------------------------------------------------------------------------- */
struct builder_descriptor {
	char *media_type;
	char *digest;
	int64_t size;
};
struct builder_manifest {
	struct builder_descriptor config;
	struct builder_descriptor *layers;
	size_t n_layers;
};
/* Parse a Docker schema 2 or OCI image manifest (media_type from Content-Type or the body). */
int builder_manifest_parse(const char *media_type, const char *body, size_t len,
			   struct builder_manifest *ret, imc_error *err);
void builder_manifest_free(struct builder_manifest *m);
/* Pick the manifest for platform ("os/arch[/variant]") from an OCI index / manifest list. */
int builder_index_select(const char *body, size_t len, const char *platform,
			 struct builder_descriptor *ret, imc_error *err);
void builder_descriptor_free(struct builder_descriptor *d);
bool builder_media_type_is_index(const char *media_type);

/* ---- layers ------------------------------------------------------------------------------- */
enum builder_whiteout {
	BUILDER_WHITEOUT_NONE,
	BUILDER_WHITEOUT_FILE,	 /* ".wh.<name>": delete <name> */
	BUILDER_WHITEOUT_OPAQUE, /* ".wh..wh..opq": hide the lower contents of the directory */
};
/* Classify a normalized entry path; for FILE, ret_target gets the path that is deleted. */
enum builder_whiteout builder_whiteout_kind(const char *path, char **ret_target);
/* Apply one layer blob (gzip, zstd or uncompressed tar) to the tree under rootfd.  Every path is
 * resolved inside rootfd; what names the layer in errors. */
int builder_layer_apply(int rootfd, int blob_fd, const char *what, imc_error *err);

/* ---- pulling ------------------------------------------------------------------------------ */
/* Registry credentials of one request: never logged, never written to disk. */
struct builder_credential {
	const char *registry; /* "host[:port]" as in image refs; docker.io for Docker Hub */
	const char *username; /* with password: basic auth, and for a token service's realm */
	const char *password;
	const char *token; /* instead of username/password: a registry identity/bearer token */
};

struct builder_opts {
	const char *blob_dir;			/* verified blobs, sha256/<hex> */
	const char *platform;			/* default "linux/amd64" */
	const char *const *insecure_registries; /* NULL-terminated "host:port" list, plain HTTP */
	const struct builder_credential *credentials; /* per registry; first match wins */
	size_t n_credentials;
	const char *auth_file;	 /* docker-style config.json ("auths"); NULL = none */
	const char *ca_file;	 /* extra CA bundle for HTTPS; NULL = system CAs only */
	const char *hf_endpoint; /* Hugging Face-compatible endpoint for hf:// data */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
};

struct builder_image; /* a resolved image: manifest, config and layers */
int builder_image_resolve(const struct builder_opts *o, const char *ref, struct builder_image **ret,
			  imc_error *err);
/* Download every layer not yet in blob_dir, verifying sizes and digests. */
int builder_image_fetch(const struct builder_opts *o, struct builder_image *img, imc_error *err);
/* Apply the fetched layers in order under rootfd. */
int builder_image_apply(const struct builder_opts *o, struct builder_image *img, int rootfd,
			imc_error *err);
/* builder_image_fetch + builder_image_apply overlapped: each layer is applied as soon as it and
 * the layers before it are in the blob directory, while the later ones download. */
int builder_image_pull(const struct builder_opts *o, struct builder_image *img, int rootfd,
		       imc_error *err);
/* Compressed bytes of all layers. */
uint64_t builder_image_layer_bytes(const struct builder_image *img);
/* What /imcache.json and the API record of the image: ref, digest, platform, config (env, cmd,
 * entrypoint, workingDir, user), layers.  A new reference. */
json_t *builder_image_describe(const struct builder_image *img);
void builder_image_free(struct builder_image *img);

/* ---- building a cache --------------------------------------------------------------------- */
#define BUILDER_IMAGES_MAX 20 /* images in one cache, /images/0..19/rootfs */

/* Model data that lands in /data/<path>/. */
struct builder_data {
	const char *source; /* https://host/file, oci://registry/repo:tag, hf://org/repo@revision */
	const char *path;   /* the name under /data/ */
	const char *sha256; /* optional hex digest of a single-file https source */
};

struct builder_request {
	const char *const *refs; /* 1..BUILDER_IMAGES_MAX image refs */
	size_t n_refs;
	const struct builder_data *data;
	size_t n_data;
	uint64_t size; /* filesystem size in bytes; 0 picks a default from the content */
};

/* Resolve refs, create a volume in the store, mkfs.ext4, pull each image (fetch + apply) under
 * /images/<n>/rootfs, fetch data under /data/<path>/, write /imcache.json, unmount and seal it as
 * snapshot cache_id.  On failure nothing is left in the store.  ret_manifest gets the content of
 * /imcache.json. */
int builder_build(struct store *s, const struct builder_opts *o, const char *cache_id,
		  const struct builder_request *req, json_t **ret_manifest, imc_error *err);

#endif
