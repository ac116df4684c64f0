/* Building a cache: resolve every image (manifests and configs) and every data source (file
 * lists and sizes: the store is untouched until they are all valid), check that the store has
 * room, then build the volume fresh (here) or on the image's base snapshot (builder/base.c).
 * What is done in the volume (mkfs, the images pulled under /images/<n>/rootfs, each layer
 * applied as soon as it is downloaded and verified, the model data under /data/<path>/,
 * /imcache.json, a clean unmount and the seal that turns the volume into the cache's read-only
 * snapshot) is builder/volume.c's.  A failure at any point removes the volume. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build_internal.h"

#define BUILD_MIN_SIZE	  BUILDER_SIZE_MIN
#define BUILD_MAX_SIZE	  (16ULL << 40)
#define BUILD_SIZE_FACTOR 8 /* compressed layer bytes → filesystem size (sparse, so cheap) */
#define BUILD_DATA_SLACK  (64ULL << 20) /* ext4 metadata beside the data (inode tables, maps) */

void build_cleanup(struct build *b)
{
	build_drop_volume(b);
	for (size_t k = 0; k < json_array_size(b->pinned); k++)
		builder_blobs_unpin(json_string_value(json_array_get(b->pinned, k)));
	json_decref(b->pinned);
	if (b->expected)
		store_space_expect(b->s, -(int64_t)b->expected, NULL);
	for (size_t i = 0; !b->borrowed_images && i < b->n_images; i++)
		builder_image_free(b->images[i]);
	if (!b->borrowed_images)
		free(b->images);
	for (size_t i = 0; i < b->n_plans; i++)
		builder_data_plan_free(b->plans[i]);
	free(b->plans);
}

/* Images take BUILD_SIZE_FACTOR times their compressed bytes (sparse, so cheap); data files are
 * stored as they are, plus 1/16 and a fixed slack for the filesystem's own blocks. */
uint64_t build_default_size(uint64_t layer_bytes, uint64_t data_bytes)
{
	uint64_t size = layer_bytes > BUILD_MAX_SIZE / BUILD_SIZE_FACTOR
			    ? BUILD_MAX_SIZE
			    : layer_bytes * BUILD_SIZE_FACTOR;

	if (size < BUILD_MIN_SIZE)
		size = BUILD_MIN_SIZE;
	if (data_bytes > BUILD_MAX_SIZE - size)
		return BUILD_MAX_SIZE;
	size += data_bytes;
	if (data_bytes)
		size += data_bytes / 16 + BUILD_DATA_SLACK;
	if (size > BUILD_MAX_SIZE)
		size = BUILD_MAX_SIZE;
	return (size + (1ULL << 20) - 1) & ~((1ULL << 20) - 1);
}

static int resolve_all(struct build *b, const struct builder_opts *o,
		       const struct builder_request *req, uint64_t *ret_bytes, imc_error *err)
{
	const char *const *refs = req->refs;
	size_t n = req->n_refs;
	uint64_t bytes = 0;

	b->images = calloc(n, sizeof(*b->images));
	if (!b->images)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct builder_opts oi = *o; /* each image its own platform */
		if (req->platforms && req->platforms[i])
			oi.platform = req->platforms[i];
		int r = builder_image_resolve(&oi, refs[i], &b->images[i], err);
		b->n_images = i + 1;
		if (r < 0)
			return r;
		bytes += builder_image_layer_bytes(b->images[i]);
	}
	*ret_bytes = bytes;
	return 0;
}

static int plan_all(struct build *b, const struct builder_opts *o,
		    const struct builder_request *req, uint64_t *ret_bytes, imc_error *err)
{
	uint64_t bytes = 0;

	if (req->n_data > BUILDER_DATA_MAX)
		return imc_err(err, EINVAL, "data: at most %d entries, got %zu", BUILDER_DATA_MAX,
			       req->n_data);
	b->plans = calloc(req->n_data ? req->n_data : 1, sizeof(*b->plans));
	if (!b->plans)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < req->n_data; i++) {
		for (size_t k = 0; k < i; k++)
			if (builder_data_paths_overlap(req->data[i].path, req->data[k].path))
				return imc_err(
				    err, EINVAL,
				    "data[%zu].path: %s and data[%zu].path %s: the same, or "
				    "one inside the other",
				    i, req->data[i].path, k, req->data[k].path);
		int r = builder_data_plan(o, &req->data[i], &b->plans[i], err);
		if (r < 0)
			return r;
		b->n_plans = i + 1;
		bytes += builder_data_plan_bytes(b->plans[i]);
	}
	*ret_bytes = bytes;
	return 0;
}

#define STORE_FULL_BELOW (64ULL << 20) /* an ENOSPC with less free in the store: the store's */

/* A build that failed (r) names its cache, and says so when the size was too small, or when the
 * store, not the volume, ran out of space. */
int build_failed(const struct build *b, int r, uint64_t size, imc_error *err)
{
	struct store_usage u;

	imc_err_wrap(err, "cache %s", b->id);
	if (r != -ENOSPC || !err || strstr(err->msg, "too small") ||
	    strstr(err->msg, "the store has"))
		return r;
	if (store_usage(b->s, &u, NULL) == 0 && u.free < STORE_FULL_BELOW)
		imc_err_wrap(err, "the store is full (%llu MiB free)",
			     (unsigned long long)(u.free >> 20));
	else
		imc_err_wrap(err, "size %llu bytes is too small for the content",
			     (unsigned long long)size);
	return r;
}

/* Bytes of b's layers not in the blob store yet: downloads to come, on the filesystem that the
 * pool (embedded or not) lives on too. */
static uint64_t missing_blob_bytes(struct build *b, const struct builder_opts *o)
{
	uint64_t bytes = 0;

	for (size_t i = 0; o->blob_dir && i < b->n_images; i++) {
		_cleanup_json_ json_t *desc = builder_image_describe(b->images[i]);
		size_t k;
		json_t *l;

		json_array_foreach(json_object_get(desc, "layers"), k, l)
		{
			const char *d = json_string_value(json_object_get(l, "digest"));
			char path[PATH_MAX];
			struct stat st;

			if (d && strncmp(d, "sha256:", 7) == 0 &&
			    (size_t)snprintf(path, sizeof(path), "%s/sha256/%s", o->blob_dir,
					     d + 7) < sizeof(path) &&
			    stat(path, &st) != 0)
				bytes += (uint64_t)json_integer_value(json_object_get(l, "size"));
		}
	}
	return bytes;
}

/* Before anything is written: the pool must hold content bytes, and its filesystem the layers
 * still to download as well (set aside for as long as the build runs, so that the pool promises
 * that much less: store_space_expect).  Too little is ENOSPC now, not an I/O error later. */
int build_check_room(struct build *b, const struct builder_opts *o, uint64_t content,
		     imc_error *err)
{
	uint64_t missing = missing_blob_bytes(b, o);
	struct store_usage u;
	int r;

	b->expected = missing;
	r = store_space_expect(b->s, (int64_t)missing, err);
	if (r == 0)
		r = store_usage(b->s, &u, err);
	if (r < 0)
		return r;
	if (u.free < missing + content)
		return imc_err(err, ENOSPC,
			       "the store has %llu MiB free, the build needs %llu MiB (%llu MiB of "
			       "content, %llu MiB of layers to download beside the pool)",
			       (unsigned long long)(u.free >> 20),
			       (unsigned long long)((missing + content + (1 << 20) - 1) >> 20),
			       (unsigned long long)((content + (1 << 20) - 1) >> 20),
			       (unsigned long long)((missing + (1 << 20) - 1) >> 20));
	return 0;
}

/* A fresh volume: mkfs, every image, the data, /imcache.json, seal. */
int build_fresh(struct build *b, const struct builder_opts *o, uint64_t size, json_t *manifest,
		imc_error *err)
{
	int r = build_check_room(b, o, b->layer_bytes + b->data_bytes, err);

	if (r == 0)
		r = store_volume_create(b->s, b->id, size, err);
	if (r < 0)
		return r;
	b->volume_created = true;
	r = store_activate(b->s, STORE_VOLUME, b->id, 0, &b->dev, err);
	if (r == 0)
		r = build_mount_volume(b, true, err);
	if (r == 0)
		r = build_apply_images(b, o, json_object_get(manifest, "images"), err);
	if (r == 0)
		r = build_finish_volume(b, o, manifest, err);
	return r < 0 ? build_failed(b, r, size, err) : 0;
}

/* The layer digests of an image, in order (a new reference; NULL on OOM). */
json_t *build_layer_digests(const struct builder_image *img)
{
	_cleanup_json_ json_t *desc = builder_image_describe(img);
	json_t *out = json_array(), *l;
	size_t i;

	if (!desc || !out) {
		json_decref(out);
		return NULL;
	}
	json_array_foreach(json_object_get(desc, "layers"), i, l)
	{
		if (json_array_append(out, json_object_get(l, "digest")) < 0) {
			json_decref(out);
			return NULL;
		}
	}
	return out;
}

/* The blob store keeps every layer of b's images until the build ends. */
static int pin_layers(struct build *b, const struct builder_opts *o, imc_error *err)
{
	if (!o->blob_dir)
		return 0;
	b->pinned = json_array();
	if (!b->pinned)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < b->n_images; i++) {
		_cleanup_json_ json_t *layers = build_layer_digests(b->images[i]);
		size_t k;
		json_t *d;

		if (!layers)
			return imc_err(err, ENOMEM, "out of memory");
		json_array_foreach(layers, k, d)
		{
			if (json_array_append(b->pinned, d) < 0)
				return imc_err(err, ENOMEM, "out of memory");
			if (builder_blobs_pin(o->blob_dir, json_string_value(d), err) < 0) {
				json_array_remove(b->pinned, json_array_size(b->pinned) - 1);
				return err ? err->code : -ENOMEM;
			}
		}
	}
	return 0;
}

#ifdef IMC_TESTING
/* Test builds: a build waits before it resolves its refs while the file $IMC_BUILD_HOLD does not
 * exist (and nobody cancels it), so that a test finds a cache Creating for as long as it needs. */
static void test_hold(const char *cache_id, const struct builder_opts *o)
{
	const char *hold = secure_getenv("IMC_BUILD_HOLD");
	bool said = false;

	while (hold && *hold && access(hold, F_OK) < 0 && !builder_cancelled(o)) {
		if (!said)
			imc_info("cache %s: build held until %s exists (test build)", cache_id,
				 hold);
		said = true;
		usleep(20000);
	}
}
#else
static void test_hold(const char *cache_id, const struct builder_opts *o)
{
	(void)cache_id;
	(void)o;
}
#endif

int builder_build(struct store *s, const struct builder_opts *o, const char *cache_id,
		  const struct builder_request *req, json_t **ret_manifest, imc_error *err)
{
	size_t n_refs = req->n_refs;
	uint64_t size = req->size;
	_cleanup_(build_cleanup) struct build b = {.s = s, .id = cache_id, .dev = {.fd = -1}};
	_cleanup_json_ json_t *manifest = NULL;
	char created[32];
	uint64_t layer_bytes = 0, data_bytes = 0;
	int r;

	if (n_refs < 1 || n_refs > BUILDER_IMAGES_MAX)
		return imc_err(err, EINVAL, "images: want 1 to %d, got %zu", BUILDER_IMAGES_MAX,
			       n_refs);
	if (size > BUILD_MAX_SIZE)
		return imc_err(err, EINVAL, "size %llu: at most %llu", (unsigned long long)size,
			       (unsigned long long)BUILD_MAX_SIZE);
	test_hold(cache_id, o);
	r = resolve_all(&b, o, req, &layer_bytes, err);
	if (r == 0)
		r = pin_layers(&b, o, err);
	if (r == 0)
		r = plan_all(&b, o, req, &data_bytes, err);
	if (r == 0)
		r = build_check_cancel(&b, o, err);
	if (r < 0)
		return r;
	b.layer_bytes = layer_bytes;
	b.data_bytes = data_bytes;
	if (size == 0)
		size = build_default_size(layer_bytes, data_bytes);
	else if (size < data_bytes)
		return imc_err(err, ENOSPC,
			       "size %llu bytes is too small for the %llu bytes of data",
			       (unsigned long long)size, (unsigned long long)data_bytes);
	if (o->on_size && o->on_size(o->size_ctx, size, err) < 0)
		return imc_err_wrap(err, "cache %s", cache_id);
	imc_time_rfc3339(imc_now(), created, sizeof(created));
	manifest =
	    json_pack("{s:i, s:s, s:s, s:[], s:[], s:I}", "version", MANIFEST_VERSION, "id",
		      cache_id, "createdAt", created, "images", "data", "size", (json_int_t)size);
	if (!manifest)
		return imc_err(err, ENOMEM, "out of memory");

	if (n_refs == 1 && store_can(s, STORE_CAP_VOLUME_FROM_SNAPSHOT))
		r = build_on_base(&b, o, size, layer_bytes, manifest, err);
	else
		r = build_fresh(&b, o, size, manifest, err);
	if (r < 0)
		return r;
	if (ret_manifest)
		*ret_manifest = steal_pointer(&manifest);
	return 0;
}
