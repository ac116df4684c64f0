/* The builder: layer application, image assembly, model data, and the build of a cache snapshot
 * from image refs (the registry side is oci/). */
#ifndef IMC_BUILDER_H
#define IMC_BUILDER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/imc.h"
#include "../oci/oci.h"
#include "../store/store.h"

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
/* The same, reading the uncompressed stream to its very end (end-of-archive blocks and padding
 * included): ret_diff_id gets its sha256 in hex, what the image config's rootfs.diff_ids[i]
 * must name. */
int builder_layer_apply_hashed(int rootfd, int blob_fd, const char *what,
			       char ret_diff_id[IMC_SHA256_HEX_LEN + 1], imc_error *err);

/* ---- pulling ------------------------------------------------------------------------------ */
struct builder_opts {
	const char *blob_dir;			  /* verified blobs, sha256/<hex> */
	const char *platform;			  /* default "linux/amd64" */
	const char *const *insecure_registries;	  /* NULL-terminated "host:port" list, plain HTTP */
	const struct oci_credential *credentials; /* per registry; first match wins */
	size_t n_credentials;
	const char *auth_file;	 /* docker-style config.json ("auths"); NULL = none */
	const char *ca_file;	 /* extra CA bundle for HTTPS; NULL = system CAs only */
	const char *hf_endpoint; /* Hugging Face-compatible endpoint for hf:// data */
	/* The HTTP clients (net/): for registries (NULL: each registry makes its own from
	 * insecure_registries and ca_file), and for https:// and hf:// data, whose destination
	 * check refuses loopback, link-local and private addresses the operator did not allow
	 * (NULL: such data is refused). */
	struct net_client *registry_net;
	struct net_client *data_net;
	uint64_t
	    blob_max; /* a declared layer size above this is refused (0: OCI_BLOB_MAX_DEFAULT) */
	const char *tenant; /* whose build: in-flight blob downloads are shared per tenant only */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
	/* Polled during every registry and data transfer (about once a second, also while one
	 * waits to be retried) and between the steps of a build: true stops the work with
	 * -ECANCELED.  NULL: never. */
	bool (*cancelled)(void *ctx);
	void *cancel_ctx;
	/* Called once a build knows its filesystem size (the requested one, or the default from
	 * the manifests' layer sizes and the data sizes), before the store is touched and before
	 * any layer is fetched: a negative errno (with err set) fails the build with it.  NULL:
	 * none. */
	int (*on_size)(void *ctx, uint64_t size, imc_error *err);
	void *size_ctx;
};
/* Has o's caller asked to stop (o->cancelled)? */
bool builder_cancelled(const struct builder_opts *o);

/* The registry side of o (registry.c's options: insecure registries, credentials, CA file). */
struct oci_registry_opts builder_registry_opts(const struct builder_opts *o);

struct builder_image; /* a resolved image: manifest, config and layers */
int builder_image_resolve(const struct builder_opts *o, const char *ref, struct builder_image **ret,
			  imc_error *err);
/* Download every layer not yet in blob_dir, verifying sizes and digests. */
int builder_image_fetch(const struct builder_opts *o, struct builder_image *img, imc_error *err);
/* Apply fetched layer i under rootfd, checking its uncompressed content against the config's
 * rootfs.diff_ids[i]: a mismatch fails naming the layer (index and digest) and both digests. */
int builder_image_apply_layer(const struct builder_opts *o, const struct builder_image *img,
			      size_t i, int rootfd, imc_error *err);
/* Fetch and apply the layers in order under rootfd, overlapped: each layer is applied as soon as
 * it and the layers before it are in the blob directory, while the later ones download. */
int builder_image_pull(const struct builder_opts *o, struct builder_image *img, int rootfd,
		       imc_error *err);
/* Compressed bytes of all layers. */
uint64_t builder_image_layer_bytes(const struct builder_image *img);
/* What /imcache.json and the API record of the image: ref, digest, platform, config (env, cmd,
 * entrypoint, workingDir, user), layers.  A new reference. */
json_t *builder_image_describe(const struct builder_image *img);
void builder_image_free(struct builder_image *img);

/* ---- the blob store (blobs.c) -------------------------------------------------------------- */
/* Remove the partial downloads (".tmp-…") in <blob_dir>/sha256 that no live process holds (a
 * download killed half way); *ret_n and *ret_bytes get how many and what they took. */
int builder_blobs_remove_partial(const char *blob_dir, size_t *ret_n, uint64_t *ret_bytes,
				 imc_error *err);
/* A running build needs blob digest ("sha256:…"): the collector leaves it alone until as many
 * unpins as pins.  Pinning also marks it used now (its mtime), for the size cap's order. */
int builder_blobs_pin(const char *blob_dir, const char *digest, imc_error *err);
void builder_blobs_unpin(const char *digest);
struct builder_blobs_gc {
	size_t removed;	     /* blobs removed */
	size_t evicted;	     /* ... of them needed, but over the cap (least recently used) */
	uint64_t freed;	     /* bytes they took */
	uint64_t kept_bytes; /* bytes the blobs left take */
};
/* Remove every blob in <blob_dir>/sha256 that keep (an array of "sha256:…" digests: what caches
 * and bases need) does not name, then, while the rest take more than max_bytes (0: no cap), the
 * least recently used; never a pinned one. */
int builder_blobs_gc(const char *blob_dir, json_t *keep, uint64_t max_bytes,
		     struct builder_blobs_gc *ret, imc_error *err);
/* The layer digests of every base snapshot's record (a new array; NULL on OOM). */
json_t *builder_bases_layers(struct store *s);

/* ---- building a cache --------------------------------------------------------------------- */
#define BUILDER_IMAGES_MAX 20		/* images in one cache, /images/0..19/rootfs */
#define BUILDER_SIZE_MIN   (1ULL << 30) /* the smallest filesystem the builder makes by default */

/* Model data that lands in /data/<path>/. */
struct builder_data {
	const char *source; /* https://host/file, oci://registry/repo:tag, hf://org/repo@revision */
	const char *path;   /* the directory under /data/: "llm", "models/llama-3-8b" */
	const char *sha256; /* optional hex digest of a single-file https source */
};

struct builder_request {
	const char *const *refs; /* 1..BUILDER_IMAGES_MAX image refs */
	size_t n_refs;
	const char *const *platforms; /* per ref ("os/arch[/variant]"); NULL, or a NULL entry:
				       * opts.platform */
	const struct builder_data *data;
	size_t n_data;
	uint64_t size; /* filesystem size in bytes; 0 picks a default from the content */
};

/* ---- model data (data.c) -------------------------------------------------------------------
 * A data entry's source is one of
 *   https://host/path/file   one file (plain http only for loopback hosts), fetched with
 *                            parallel ranged GETs when the server sends a Content-Length
 *   oci://registry/repo:tag  an OCI artifact: each layer one file named by its
 *                            org.opencontainers.image.title annotation
 *   hf://org/repo[@rev]      every file of a Hugging Face-compatible model repository at rev
 *                            (default "main"), against opts.hf_endpoint
 * Files land in /data/<path>/ and are listed with their size and sha256. */
#define BUILDER_DATA_MAX	64	     /* entries in one request */
#define BUILDER_DATA_SOURCE_MAX 4096	     /* bytes of a source */
#define BUILDER_DATA_NAME_MAX	255	     /* bytes of a path or file name component */
#define BUILDER_DATA_PATH_MAX	1024	     /* bytes of a data path (at most 16 components) */
#define BUILDER_DATA_FILES_MAX	10000	     /* files of one oci:// or hf:// source */
#define BUILDER_DATA_FILE_MAX	(4ULL << 40) /* bytes of one file */
#define BUILDER_HF_DEFAULT	"https://huggingface.co"

enum builder_data_kind {
	BUILDER_DATA_HTTPS,
	BUILDER_DATA_OCI,
	BUILDER_DATA_HF,
};
/* A name we create under /data: 1..BUILDER_DATA_NAME_MAX bytes, no '/', no control characters,
 * not "." or "..". */
bool builder_data_name_valid(const char *s);
/* Check an entry without the network: the source's scheme and shape, the path (a relative path
 * of 1-16 valid names: no leading, trailing or double '/', no "." or ".." component), the sha256
 * (64 lowercase hex digits, for https sources only).  Messages name "source", "path" or
 * "sha256". */
int builder_data_check(const struct builder_data *d, enum builder_data_kind *ret_kind,
		       imc_error *err);
/* Two data paths that are the same or one inside the other ("models", "models/llama"): their
 * files would mix, so a request may not hold both. */
bool builder_data_paths_overlap(const char *a, const char *b);

/* What a data entry holds, once resolved: its files, their sizes and where they come from. */
struct builder_data_plan;
/* Resolve d (HEAD of an https file, the artifact's manifest, the hf repository's file list). */
int builder_data_plan(const struct builder_opts *o, const struct builder_data *d,
		      struct builder_data_plan **ret, imc_error *err);
/* Bytes of all files (those of unknown size count as 0). */
uint64_t builder_data_plan_bytes(const struct builder_data_plan *p);
/* Fetch every file of p into /data/<path>/ under rootfd (the volume's root), checking sizes and
 * digests; ret_entry gets {"path","source","files":[{"name","size","sha256"}]}.  dev_fd: the
 * volume's block device (its files' blocks are reserved there first), or -1. */
int builder_data_fetch(const struct builder_opts *o, struct builder_data_plan *p, int rootfd,
		       int dev_fd, json_t **ret_entry, imc_error *err);
void builder_data_plan_free(struct builder_data_plan *p);

/* One file from an http(s) URL into fd: with size known (and the server taking Range), pieces
 * of piece_size bytes fetched by `connections` parallel GETs, each written with pwrite where it
 * belongs and resumed from where it stopped after a dropped connection; otherwise one stream.
 * 5xx and 429 answers and transport errors are retried with backoff.  The sha256 of the file is
 * computed while it arrives (in file order) and must equal want_sha256 when that is set. */
struct builder_download {
	const char *url;
	struct net_client *net; /* the data client (builder_opts.data_net) */
	int fd;
	uint64_t size; /* UINT64_MAX: unknown (one stream, capped at BUILDER_DATA_FILE_MAX) */
	bool ranges;   /* the server announced Accept-Ranges: bytes */
	unsigned connections; /* 0: 4 */
	uint64_t piece_size;  /* 0: 64 MiB */
	const char *want_sha256;
	void (*on_bytes)(void *ctx, uint64_t n); /* from any thread; n may be 0 */
	void *ctx;
	bool (*cancelled)(void *ctx); /* polled during the transfer: true stops it (ECANCELED) */
	void *cancel_ctx;
	/* Out. */
	uint64_t got_size;
	char got_sha256[IMC_SHA256_HEX_LEN + 1];
	unsigned retries; /* tries that were repeated */
};
int builder_download(struct builder_download *d, imc_error *err);
/* HEAD url (following redirects): its Content-Length (UINT64_MAX when none) and whether it takes
 * byte ranges. */
int builder_download_head(struct net_client *net, const char *url, uint64_t *ret_size,
			  bool *ret_ranges, imc_error *err);

#ifdef IMC_TESTING
int data_url_check(const char *url, bool *ret_plain, imc_error *err);
char *data_url_file_name(const char *url);
int data_hf_parse(const char *source, char **ret_repo, char **ret_rev, imc_error *err);
int data_rel_path_check(const char *path, imc_error *err);
uint64_t build_default_size(uint64_t layer_bytes, uint64_t data_bytes);
int layer_path_clean(const char *in, char *out, size_t size);
bool layer_device_allowed(mode_t type, unsigned major_n, unsigned minor_n);
/* rootfs.diff_ids of an image config (parsed JSON): exactly one sha256 digest per layer of m;
 * ret gets a NULL-terminated copy. */
int image_diff_ids_parse(json_t *config, const struct oci_manifest *m, char ***ret, imc_error *err);
#endif

/* <state>/tmp, where builds mount their volumes (BUILDER_MOUNT_PREFIX<volume>), malloc'ed (NULL:
 * out of memory). */
char *builder_tmp_dir(const char *state_dir);
/* Recover what half-done builds of a process that died left: each build mounted at
 * builder_tmp_dir()/BUILDER_MOUNT_PREFIX<volume> is unmounted, its directory and its volume
 * removed; every repair is appended to repairs (an array of strings; may be NULL).  Run it
 * before any build starts. */
#define BUILDER_MOUNT_PREFIX "build-"
void builder_recover(struct store *s, const char *state_dir, json_t *repairs);

/* A cache of one image stands on that image's base snapshot, BUILDER_BASE_PREFIX + 32 hex of the
 * sha256 of its manifest digest and platform (see builder/build.c).  Remove a base and its
 * record of layers. */
#define BUILDER_BASE_PREFIX "img-"
int builder_base_forget(struct store *s, const char *base_id, imc_error *err);

/* Resolve refs, create a volume in the store, mkfs.ext4, pull each image (fetch + apply) under
 * /images/<n>/rootfs, fetch data under /data/<path>/, write /imcache.json, unmount and seal it as
 * snapshot cache_id.  On failure nothing is left in the store.  ret_manifest gets the content of
 * /imcache.json. */
int builder_build(struct store *s, const struct builder_opts *o, const char *cache_id,
		  const struct builder_request *req, json_t **ret_manifest, imc_error *err);

#endif
