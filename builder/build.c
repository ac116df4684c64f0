/* Building a cache: resolve every image (manifests and configs: the store is untouched until they
 * are all valid), then a fresh ext4 volume, the images pulled under /images/<n>/rootfs (each layer
 * applied as soon as it is downloaded and verified, while the later ones download), /imcache.json,
 * a clean unmount, and the seal that turns the volume into the cache's read-only snapshot.  A
 * failure at any point removes the volume. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "builder.h"

#define BUILD_MIN_SIZE	  (1ULL << 30)
#define BUILD_MAX_SIZE	  (16ULL << 40)
#define BUILD_SIZE_FACTOR 8 /* compressed layer bytes → filesystem size (sparse, so cheap) */
#define MANIFEST_FILE	  "imcache.json"
#define MANIFEST_VERSION  1

/* No journal: a volume that a crash interrupts is thrown away, and so is a clone (sandboxes are
 * ephemeral), so there is nothing to recover; without one each attach mounts faster (no jbd2
 * thread) and detach has no journal to flush.  Nothing to discard on a fresh sparse file, and
 * inode tables stay holes until used. */
static const char *const mkfs_ext4_args[] = {
    "-q", "-F",	     "-b", "4096",	   "-m", "0",
    "-L", "imcache", "-O", "^has_journal", "-E", "nodiscard,lazy_itable_init=1",
    NULL};

struct build {
	struct store *s;
	const char *id;
	struct builder_image **images;
	size_t n_images;
	bool volume_created;
	struct store_dev dev;
	char mnt[PATH_MAX];
	bool mounted;
};

static void build_cleanup(struct build *b)
{
	imc_error ignored;

	if (b->mounted)
		imc_priv_umount(b->mnt, 0, &ignored);
	if (b->mnt[0])
		rmdir(b->mnt);
	if (b->volume_created) {
		store_deactivate(b->s, STORE_VOLUME, b->id, &b->dev, &ignored);
		store_remove(b->s, STORE_VOLUME, b->id, &ignored);
	} else if (b->dev.fd >= 0) {
		close(b->dev.fd);
	}
	for (size_t i = 0; i < b->n_images; i++)
		builder_image_free(b->images[i]);
	free(b->images);
}

TESTABLE uint64_t build_default_size(uint64_t layer_bytes)
{
	uint64_t size = layer_bytes > BUILD_MAX_SIZE / BUILD_SIZE_FACTOR
			    ? BUILD_MAX_SIZE
			    : layer_bytes * BUILD_SIZE_FACTOR;

	if (size < BUILD_MIN_SIZE)
		size = BUILD_MIN_SIZE;
	return (size + (1ULL << 20) - 1) & ~((1ULL << 20) - 1);
}

static int resolve_all(struct build *b, const struct builder_opts *o, const char *const *refs,
		       size_t n, uint64_t *ret_bytes, imc_error *err)
{
	uint64_t bytes = 0;

	b->images = calloc(n, sizeof(*b->images));
	if (!b->images)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		int r = builder_image_resolve(o, refs[i], &b->images[i], err);
		b->n_images = i + 1;
		if (r < 0)
			return r;
		bytes += builder_image_layer_bytes(b->images[i]);
	}
	*ret_bytes = bytes;
	return 0;
}

static int mount_volume(struct build *b, imc_error *err)
{
	_cleanup_free_ char *tmp = imc_path_join(b->s->state_dir, "tmp");
	int r;

	if (!tmp)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", tmp);
	snprintf(b->mnt, sizeof(b->mnt), "%s/build-%s", tmp, b->id);
	if (mkdir(b->mnt, 0700) < 0) {
		r = imc_err_sys(err, errno, "mkdir %s", b->mnt);
		b->mnt[0] = '\0';
		return r;
	}
	r = imc_priv_mkfs("ext4", mkfs_ext4_args, b->dev.path, err);
	if (r == 0)
		r = imc_priv_mount_subdir("ext4", b->dev.path, STORE_EXT4_MOUNT_OPTIONS, false, "",
					  b->mnt, err);
	b->mounted = r == 0;
	return r;
}

static int apply_images(struct build *b, const struct builder_opts *o, json_t *images,
			imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	if (mkdirat(root, "images", 0755) < 0)
		return imc_err_sys(err, errno, "mkdir /images");
	for (size_t i = 0; i < b->n_images; i++) {
		char path[64];
		_cleanup_close_ int rootfs = -1;
		json_t *desc;

		snprintf(path, sizeof(path), "images/%zu", i);
		if (mkdirat(root, path, 0755) < 0)
			return imc_err_sys(err, errno, "mkdir /%s", path);
		snprintf(path, sizeof(path), "images/%zu/rootfs", i);
		if (mkdirat(root, path, 0755) < 0)
			return imc_err_sys(err, errno, "mkdir /%s", path);
		rootfs = openat(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (rootfs < 0)
			return imc_err_sys(err, errno, "/%s", path);
		int r = builder_image_pull(o, b->images[i], rootfs, err);
		if (r < 0)
			return r;
		desc = builder_image_describe(b->images[i]);
		snprintf(path, sizeof(path), "/images/%zu/rootfs", i);
		if (!desc || json_object_set_new(desc, "rootfs", json_string(path)) < 0 ||
		    json_array_append_new(images, desc) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int write_manifest(struct build *b, json_t *manifest, imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	return imc_json_write_atomic(root, MANIFEST_FILE, manifest, err);
}

int builder_build(struct store *s, const struct builder_opts *o, const char *cache_id,
		  const struct builder_request *req, json_t **ret_manifest, imc_error *err)
{
	const char *const *refs = req->refs;
	size_t n_refs = req->n_refs;
	uint64_t size = req->size;
	_cleanup_(build_cleanup) struct build b = {.s = s, .id = cache_id, .dev = {.fd = -1}};
	_cleanup_json_ json_t *manifest = NULL;
	char created[32];
	uint64_t layer_bytes = 0;
	int r;

	if (req->n_data)
		return imc_err(err, EOPNOTSUPP, "data: not supported yet");
	if (n_refs < 1 || n_refs > BUILDER_IMAGES_MAX)
		return imc_err(err, EINVAL, "images: want 1 to %d, got %zu", BUILDER_IMAGES_MAX,
			       n_refs);
	if (size > BUILD_MAX_SIZE)
		return imc_err(err, EINVAL, "size %llu: at most %llu", (unsigned long long)size,
			       (unsigned long long)BUILD_MAX_SIZE);
	r = resolve_all(&b, o, refs, n_refs, &layer_bytes, err);
	if (r < 0)
		return r;
	if (size == 0)
		size = build_default_size(layer_bytes);
	imc_time_rfc3339(imc_now(), created, sizeof(created));
	manifest =
	    json_pack("{s:i, s:s, s:s, s:[], s:[], s:I}", "version", MANIFEST_VERSION, "id",
		      cache_id, "createdAt", created, "images", "data", "size", (json_int_t)size);
	if (!manifest)
		return imc_err(err, ENOMEM, "out of memory");

	r = store_volume_create(s, cache_id, size, err);
	if (r < 0)
		return r;
	b.volume_created = true;
	r = store_activate(s, STORE_VOLUME, cache_id, 0, &b.dev, err);
	if (r == 0)
		r = mount_volume(&b, err);
	if (r == 0)
		r = apply_images(&b, o, json_object_get(manifest, "images"), err);
	if (r == 0)
		r = write_manifest(&b, manifest, err);
	if (r < 0)
		return imc_err_wrap(err, "cache %s", cache_id);

	/* A clean unmount, so that clones never need a journal replay. */
	r = imc_priv_umount(b.mnt, 0, err);
	if (r < 0)
		return r;
	b.mounted = false;
	r = store_deactivate(s, STORE_VOLUME, cache_id, &b.dev, err);
	if (r == 0)
		r = store_seal(s, cache_id, cache_id, err);
	if (r < 0)
		return imc_err_wrap(err, "cache %s", cache_id);
	b.volume_created = false;
	if (ret_manifest)
		*ret_manifest = steal_pointer(&manifest);
	return 0;
}
