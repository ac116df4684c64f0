/* Building a cache: resolve every image (manifests and configs) and every data source (file
 * lists and sizes: the store is untouched until they are all valid), then a fresh ext4 volume, the
 * images pulled under /images/<n>/rootfs (each layer applied as soon as it is downloaded and
 * verified, while the later ones download), the model data under /data/<path>/ (written straight
 * into the volume, checksummed), /imcache.json, a clean unmount, and the seal that turns the volume
 * into the cache's read-only snapshot.  A failure at any point removes the volume.
 *
 * Incremental builds: a cache of one image (with or without data) is built on that image's base
 * snapshot "img-<32 hex of sha256("<manifest digest> <platform>")>", a sealed volume holding only
 * the image.  The
 * first such cache builds the base; every later one, whatever its data, clones the base into its
 * volume (FICLONE: no copy), grows the filesystem to its size online, adds its data and is sealed
 * (and so compacted) on its own, so no snapshot is ever a clone of a clone.  /imcache.json's
 * "base" says which base was used and what that saved.  Stores that cannot make a volume from a
 * snapshot, and caches of several images, build from scratch as before. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "builder.h"

#define BUILD_MIN_SIZE	  BUILDER_SIZE_MIN
#define BUILD_MAX_SIZE	  (16ULL << 40)
#define BUILD_SIZE_FACTOR 8 /* compressed layer bytes → filesystem size (sparse, so cheap) */
#define BUILD_DATA_SLACK  (64ULL << 20) /* ext4 metadata beside the data (inode tables, maps) */
#define MANIFEST_FILE	  "imcache.json"
#define MANIFEST_VERSION  1
#define BASE_PREFIX	  BUILDER_BASE_PREFIX
#define BASE_HEX	  32
#define BASE_ID_MAX	  (sizeof(BASE_PREFIX) + BASE_HEX)
#define BASES_DIR	  "bases" /* <state>/bases/<base id>.json: {"layers": [digest…]} */
#define BASES_MAX	  4096	  /* records looked at for a common layer chain */
#define BASE_RECORD_MAX	  (1u << 20)

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
	struct builder_data_plan **plans;
	size_t n_plans;
	bool volume_created;
	struct store_dev dev;
	char mnt[PATH_MAX];
	bool mounted;
	bool borrowed_images; /* images belong to another build */
	json_t *pinned;	      /* the layer digests this build pinned in the blob store */
	uint64_t layer_bytes, data_bytes;
	uint64_t expected; /* bytes set aside beside the pool (store_space_expect) */
};

/* Undo whatever of the volume exists: mount, mount point, device, the volume itself. */
static void build_drop_volume(struct build *b)
{
	imc_error ignored;

	if (b->mounted)
		imc_priv_umount(b->mnt, 0, &ignored);
	b->mounted = false;
	if (b->mnt[0])
		rmdir(b->mnt);
	b->mnt[0] = '\0';
	if (b->volume_created) {
		store_deactivate(b->s, STORE_VOLUME, b->id, &b->dev, &ignored);
		store_remove(b->s, STORE_VOLUME, b->id, &ignored);
	} else if (b->dev.fd >= 0) {
		close(b->dev.fd);
	}
	b->volume_created = false;
	b->dev.fd = -1;
}

static void build_cleanup(struct build *b)
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
TESTABLE uint64_t build_default_size(uint64_t layer_bytes, uint64_t data_bytes)
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

/* Between the steps of a build: -ECANCELED once the caller asked to stop. */
static int build_check_cancel(const struct build *b, const struct builder_opts *o, imc_error *err)
{
	return builder_cancelled(o) ? imc_err(err, ECANCELED, "volume %s: build cancelled", b->id)
				    : 0;
}

static double ms_since(uint64_t t0)
{
	return (double)(imc_monotonic_ns() - t0) / 1e6;
}

static int fetch_data(struct build *b, const struct builder_opts *o, json_t *data, imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	for (size_t i = 0; i < b->n_plans; i++) {
		json_t *entry = NULL;
		uint64_t t0 = imc_monotonic_ns();
		int r = build_check_cancel(b, o, err);

		if (r == 0)
			r = builder_data_fetch(o, b->plans[i], root, b->dev.fd, &entry, err);
		if (r < 0)
			return r;
		imc_debug("volume %s: data %zu fetched in %.0f ms", b->id, i, ms_since(t0));
		if (json_array_append_new(data, entry) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int mount_volume(struct build *b, bool mkfs, imc_error *err)
{
	_cleanup_free_ char *tmp = builder_tmp_dir(store_state_dir(b->s));
	int r;

	if (!tmp)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", tmp);
	snprintf(b->mnt, sizeof(b->mnt), "%s/" BUILDER_MOUNT_PREFIX "%s", tmp, b->id);
	if (mkdir(b->mnt, 0700) < 0) {
		r = imc_err_sys(err, errno, "mkdir %s", b->mnt);
		b->mnt[0] = '\0';
		return r;
	}
	r = mkfs ? imc_priv_mkfs("ext4", mkfs_ext4_args, b->dev.path, err) : 0;
	if (r == 0)
		r = imc_priv_mount_fs("ext4", b->dev.path, STORE_EXT4_MOUNT_OPTIONS, false, b->mnt,
				      err);
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

/* Write the volume's filesystem out and learn whether that worked: a write that the pool refused
 * (ENOSPC) reaches the filesystem in the volume only at writeback, and an unmount would drop it
 * without a word, sealing a snapshot with holes in it. */
static int sync_volume(struct build *b, imc_error *err)
{
	_cleanup_close_ int fd = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || syncfs(fd) < 0)
		return imc_err_sys(err, errno, "volume %s: write back", b->id);
	return 0;
}

/* Unmount cleanly (so clones never need a journal replay), release the device and seal the
 * volume as the snapshot of the same id. */
static int seal_volume(struct build *b, imc_error *err)
{
	uint64_t t0 = imc_monotonic_ns();
	double umount_ms, release_ms;
	int r = sync_volume(b, err);

	if (r == 0)
		r = imc_priv_umount(b->mnt, 0, err);
	if (r < 0)
		return r;
	b->mounted = false;
	umount_ms = ms_since(t0);
	r = store_deactivate(b->s, STORE_VOLUME, b->id, &b->dev, err);
	release_ms = ms_since(t0) - umount_ms;
	if (r == 0)
		r = store_seal(b->s, b->id, b->id, err);
	if (r == 0)
		b->volume_created = false;
	imc_debug("volume %s: unmount %.0f ms, release %.0f ms, seal %.0f ms", b->id, umount_ms,
		  release_ms, ms_since(t0) - umount_ms - release_ms);
	return r;
}

/* The last steps of every build, once the images are in: the data, /imcache.json, seal. */
static int finish_volume(struct build *b, const struct builder_opts *o, json_t *manifest,
			 imc_error *err)
{
	int r = fetch_data(b, o, json_object_get(manifest, "data"), err);

	if (r == 0)
		r = write_manifest(b, manifest, err);
	if (r == 0)
		r = build_check_cancel(b, o, err);
	if (r == 0)
		r = seal_volume(b, err);
	return r;
}

#define STORE_FULL_BELOW (64ULL << 20) /* an ENOSPC with less free in the store: the store's */

/* A build that failed (r) names its cache, and says so when the size was too small, or when the
 * store, not the volume, ran out of space. */
static int build_failed(const struct build *b, int r, uint64_t size, imc_error *err)
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
static int check_room(struct build *b, const struct builder_opts *o, uint64_t content,
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
static int build_fresh(struct build *b, const struct builder_opts *o, uint64_t size,
		       json_t *manifest, imc_error *err)
{
	int r = check_room(b, o, b->layer_bytes + b->data_bytes, err);

	if (r == 0)
		r = store_volume_create(b->s, b->id, size, err);
	if (r < 0)
		return r;
	b->volume_created = true;
	r = store_activate(b->s, STORE_VOLUME, b->id, 0, &b->dev, err);
	if (r == 0)
		r = mount_volume(b, true, err);
	if (r == 0)
		r = apply_images(b, o, json_object_get(manifest, "images"), err);
	if (r == 0)
		r = finish_volume(b, o, manifest, err);
	return r < 0 ? build_failed(b, r, size, err) : 0;
}

/* The base of an image is keyed by its manifest digest and its platform: the same manifest
 * asked for as two platforms (a config that names none) is two bases, as it is two caches.
 * "" when the image has no sha256 digest. */
static void base_id_of(const struct builder_image *img, char id[BASE_ID_MAX])
{
	_cleanup_json_ json_t *desc = builder_image_describe(img);
	const char *digest = json_string_value(json_object_get(desc, "digest"));
	const char *platform = json_string_value(json_object_get(desc, "platform"));
	_cleanup_free_ char *key = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];

	id[0] = '\0';
	if (!digest || strncmp(digest, "sha256:", 7) != 0 || !platform ||
	    asprintf(&key, "%s %s", digest, platform) < 0 ||
	    imc_sha256_hex(key, strlen(key), hex, NULL) < 0)
		return;
	snprintf(id, BASE_ID_MAX, BASE_PREFIX "%.*s", BASE_HEX, hex);
}

/* What the base's /imcache.json says its build took (0 when unknown); the file goes, the
 * cache writes its own. */
static double base_seconds_take(struct build *b)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_json_ json_t *j = NULL;
	double seconds;

	if (root < 0 || imc_json_read_file(root, MANIFEST_FILE, 1u << 20, &j, NULL) < 0)
		return 0;
	seconds = json_number_value(json_object_get(j, "buildSeconds"));
	unlinkat(root, MANIFEST_FILE, 0);
	return seconds;
}

static int describe_images(struct build *b, json_t *images, imc_error *err)
{
	for (size_t i = 0; i < b->n_images; i++) {
		json_t *desc = builder_image_describe(b->images[i]);
		char path[64];

		snprintf(path, sizeof(path), "/images/%zu/rootfs", i);
		if (!desc || json_object_set_new(desc, "rootfs", json_string(path)) < 0 ||
		    json_array_append_new(images, desc) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

/* The layer digests of an image, in order (a new reference; NULL on OOM). */
static json_t *layer_digests(const struct builder_image *img)
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
		_cleanup_json_ json_t *layers = layer_digests(b->images[i]);
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

static char *bases_dir(struct store *s)
{
	return imc_path_join(store_state_dir(s), BASES_DIR);
}

/* Remember which layers a sealed base holds (best effort: without the record the base is still
 * reused by its own image, just not as another image's common chain). */
static void base_record(struct store *s, const char *base_id, json_t *layers)
{
	_cleanup_free_ char *dir = bases_dir(s);
	_cleanup_json_ json_t *rec = json_pack("{s:O}", "layers", layers);
	_cleanup_close_ int dfd = -1;
	char name[BASE_ID_MAX + 8];

	if (!dir || !rec || imc_mkdir_p(dir, 0700, NULL) < 0)
		return;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(name, sizeof(name), "%s.json", base_id);
	if (dfd >= 0)
		imc_json_write_atomic(dfd, name, rec, NULL);
}

int builder_base_forget(struct store *s, const char *base_id, imc_error *err)
{
	_cleanup_free_ char *dir = bases_dir(s);
	_cleanup_close_ int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	char name[BASE_ID_MAX + 8];
	int r;

	if (strncmp(base_id, BASE_PREFIX, strlen(BASE_PREFIX)) != 0 ||
	    strlen(base_id) >= BASE_ID_MAX)
		return imc_err(err, EINVAL, "%.80s: not a base snapshot", base_id);
	r = store_remove(s, STORE_SNAPSHOT, base_id, err);
	if (r < 0 && r != -ENOENT)
		return r;
	snprintf(name, sizeof(name), "%s.json", base_id);
	if (dfd >= 0 && unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "base record %s", name);
	return 0;
}

json_t *builder_bases_layers(struct store *s)
{
	_cleanup_free_ char *dir = bases_dir(s);
	_cleanup_dir_ DIR *d = dir ? opendir(dir) : NULL;
	json_t *out = json_array();
	struct dirent *de;
	size_t seen = 0;

	while (out && d && (de = readdir(d)) && seen++ < BASES_MAX) {
		_cleanup_json_ json_t *rec = NULL;
		struct store_object_info info;
		char id[BASE_ID_MAX];
		size_t n = strlen(de->d_name);

		if (n != BASE_ID_MAX - 1 + 5 || strcmp(de->d_name + n - 5, ".json") != 0 ||
		    strncmp(de->d_name, BASE_PREFIX, strlen(BASE_PREFIX)) != 0)
			continue;
		memcpy(id, de->d_name, n - 5);
		id[n - 5] = '\0';
		if (store_stat(s, STORE_SNAPSHOT, id, &info, NULL) < 0 ||
		    imc_json_read_file(dirfd(d), de->d_name, BASE_RECORD_MAX, &rec, NULL) < 0 ||
		    !json_is_array(json_object_get(rec, "layers")))
			continue;
		if (json_array_extend(out, json_object_get(rec, "layers")) < 0) {
			json_decref(out);
			return NULL;
		}
	}
	return out;
}

/* How many leading layers of want the record's layers are, when all of them are; else 0. */
static size_t chain_prefix(json_t *rec, json_t *want)
{
	json_t *have = json_object_get(rec, "layers");
	size_t n = json_array_size(have);

	if (!json_is_array(have) || n == 0 || n > json_array_size(want))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!json_is_string(json_array_get(have, i)) ||
		    !json_equal(json_array_get(have, i), json_array_get(want, i)))
			return 0;
	return n;
}

/* The sealed base holding the longest leading chain of want's layers (another image's: a tag
 * that moved, an image built on a common parent).  ret_k = 0 when there is none. */
static void find_chain_base(struct store *s, json_t *want, const char *self,
			    char ret_id[BASE_ID_MAX], size_t *ret_k)
{
	_cleanup_free_ char *dir = bases_dir(s);
	_cleanup_dir_ DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	size_t seen = 0;

	*ret_k = 0;
	while (d && (de = readdir(d)) && seen++ < BASES_MAX) {
		_cleanup_json_ json_t *rec = NULL;
		struct store_object_info info;
		char id[BASE_ID_MAX];
		size_t n = strlen(de->d_name), k;

		if (n != BASE_ID_MAX - 1 + 5 || strcmp(de->d_name + n - 5, ".json") != 0 ||
		    strncmp(de->d_name, BASE_PREFIX, strlen(BASE_PREFIX)) != 0)
			continue;
		memcpy(id, de->d_name, n - 5);
		id[n - 5] = '\0';
		if (strcmp(id, self) == 0 ||
		    imc_json_read_file(dirfd(d), de->d_name, BASE_RECORD_MAX, &rec, NULL) < 0)
			continue;
		k = chain_prefix(rec, want);
		if (k > *ret_k && store_stat(s, STORE_SNAPSHOT, id, &info, NULL) == 0) {
			*ret_k = k;
			memcpy(ret_id, id, BASE_ID_MAX);
		}
	}
}

/* The base volume as a clone of the chain base `from` (holding the first k layers), then the
 * image's other layers applied on top.  Any failure leaves base's volume for the caller to
 * drop. */
static int base_from_chain(struct build *base, const struct builder_opts *o, const char *from,
			   size_t k, json_t *layers, uint64_t size, imc_error *err)
{
	struct store_object_info info;
	_cleanup_close_ int root = -1, rootfs = -1;
	int r = store_stat(base->s, STORE_SNAPSHOT, from, &info, err);

	if (r == 0 && size < info.size)
		size = info.size;
	if (r == 0)
		r = store_volume_from_snapshot(base->s, from, base->id, size, err);
	if (r < 0)
		return r;
	base->volume_created = true;
	r = store_activate(base->s, STORE_VOLUME, base->id, 0, &base->dev, err);
	if (r == 0 && size > info.size)
		r = imc_priv_resize_ext4(base->dev.path, size, err);
	if (r == 0)
		r = mount_volume(base, false, err);
	if (r < 0)
		return r;
	base_seconds_take(base);
	/* Every layer in the blob directory (those of the chain usually are already). */
	r = builder_image_fetch(o, base->images[0], err);
	if (r < 0)
		return r;
	root = open(base->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	rootfs =
	    root < 0 ? -1 : imc_openat_in_root(root, "images/0/rootfs", O_RDONLY | O_DIRECTORY, 0);
	if (rootfs < 0)
		return imc_err(err, EIO, "base %s: /images/0/rootfs", from);
	/* Each layer checked against its diff_id, as in a build from scratch. */
	for (size_t i = k; i < json_array_size(layers); i++) {
		r = builder_image_apply_layer(o, base->images[0], i, rootfs, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The base snapshot of b's one image: a volume with just the image, sealed.  Built on the base
 * with the longest common layer chain when there is one (ret_from gets {"snapshot","layers"}),
 * else from scratch. */
static int build_base(struct build *b, const struct builder_opts *o, const char *base_id,
		      uint64_t layer_bytes, uint64_t size, double *ret_seconds, json_t **ret_from,
		      imc_error *err)
{
	_cleanup_(build_cleanup) struct build base = {.s = b->s,
						      .id = base_id,
						      .images = b->images,
						      .n_images = b->n_images,
						      .borrowed_images = true,
						      .dev = {.fd = -1}};
	_cleanup_json_ json_t *manifest = NULL, *layers = layer_digests(b->images[0]);
	uint64_t t0 = imc_monotonic_ns();
	char created[32], from[BASE_ID_MAX];
	imc_error ignored;
	size_t k = 0;
	int r;

	if (!layers)
		return imc_err(err, ENOMEM, "out of memory");
	/* What an interrupted base build may have left. */
	store_remove(b->s, STORE_VOLUME, base_id, &ignored);
	imc_time_rfc3339(imc_now(), created, sizeof(created));
	manifest = json_pack("{s:i, s:s, s:s, s:s, s:[], s:I}", "version", MANIFEST_VERSION, "id",
			     base_id, "kind", "base", "createdAt", created, "images", "layerBytes",
			     (json_int_t)layer_bytes);
	if (!manifest)
		return imc_err(err, ENOMEM, "out of memory");
	find_chain_base(b->s, layers, base_id, from, &k);
	if (k > 0 && base_from_chain(&base, o, from, k, layers, size, NULL) == 0) {
		r = describe_images(&base, json_object_get(manifest, "images"), err);
		*ret_from = json_pack("{s:s,s:I}", "snapshot", from, "layers", (json_int_t)k);
		if (r == 0 && (!*ret_from || json_object_set(manifest, "builtFrom", *ret_from) < 0))
			r = imc_err(err, ENOMEM, "out of memory");
	} else {
		/* No common chain, or it could not be used (a filesystem that cannot grow here):
		 * from scratch. */
		build_drop_volume(&base);
		r = store_volume_create(b->s, base_id, size, err);
		if (r < 0)
			return imc_err_wrap(err, "base %s", base_id);
		base.volume_created = true;
		r = store_activate(b->s, STORE_VOLUME, base_id, 0, &base.dev, err);
		if (r == 0)
			r = mount_volume(&base, true, err);
		if (r == 0)
			r = apply_images(&base, o, json_object_get(manifest, "images"), err);
	}
	*ret_seconds = (double)(imc_monotonic_ns() - t0) / 1e9;
	if (r == 0 && json_object_set_new(manifest, "buildSeconds", json_real(*ret_seconds)) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = write_manifest(&base, manifest, err);
	if (r == 0)
		r = seal_volume(&base, err);
	if (r < 0)
		return imc_err_wrap(err, "base %s", base_id);
	base_record(b->s, base_id, layers);
	return 0;
}

/* Two builds of one base at once would collide on its volume and its mount point
 * (tmp/build-img-…): a cache by tag and one by digest, or two repositories serving the same
 * manifest, have the same base whatever their refs.  So a build holds its base, by id (the
 * manifest digest and platform) and state dir, from the look for it until its own volume is
 * cloned from it; another build of the same base waits, then finds it built.  imcd is the one
 * process that builds in a state dir. */
struct base_hold {
	const char *state_dir;
	char id[BASE_ID_MAX];
	bool held;
	struct base_hold *next;
};
static pthread_mutex_t bases_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bases_cond = PTHREAD_COND_INITIALIZER;
static struct base_hold *bases_held; /* under bases_lock */

static bool base_held_locked(const struct base_hold *h)
{
	for (const struct base_hold *x = bases_held; x; x = x->next)
		if (strcmp(x->id, h->id) == 0 && strcmp(x->state_dir, h->state_dir) == 0)
			return true;
	return false;
}

static void base_hold(struct base_hold *h, const struct store *s, const char *id)
{
	*h = (struct base_hold){.state_dir = store_state_dir(s)};
	snprintf(h->id, sizeof(h->id), "%s", id);
	pthread_mutex_lock(&bases_lock);
	while (base_held_locked(h))
		pthread_cond_wait(&bases_cond, &bases_lock);
	h->next = bases_held;
	bases_held = h;
	h->held = true;
	pthread_mutex_unlock(&bases_lock);
}

static void base_release(struct base_hold *h)
{
	if (!h->held)
		return;
	pthread_mutex_lock(&bases_lock);
	for (struct base_hold **p = &bases_held; *p; p = &(*p)->next)
		if (*p == h) {
			*p = h->next;
			break;
		}
	h->held = false;
	pthread_cond_broadcast(&bases_cond);
	pthread_mutex_unlock(&bases_lock);
}

/* A cache of one image: its base (built now if there is none), cloned, grown, plus the data. */
static int build_on_base(struct build *b, const struct builder_opts *o, uint64_t size,
			 uint64_t layer_bytes, json_t *manifest, imc_error *err)
{
	struct store_object_info info = {0};
	_cleanup_json_ json_t *from = NULL;
	_cleanup_(base_release) struct base_hold hold = {0};
	char base_id[BASE_ID_MAX];
	double base_seconds = 0;
	bool reused;
	int r;

	base_id_of(b->images[0], base_id);
	if (strlen(base_id) != BASE_ID_MAX - 1)
		return build_fresh(b, o, size, manifest, err);
	base_hold(&hold, b->s, base_id);
	reused = store_stat(b->s, STORE_SNAPSHOT, base_id, &info, NULL) == 0;
	r = check_room(b, o, b->data_bytes + (reused ? 0 : b->layer_bytes), err);
	if (r < 0)
		return build_failed(b, r, size, err);
	/* The first base is as large as the cache that asks for it (sparse, so cheap): later
	 * caches up to that size reuse it without growing the filesystem. */
	if (!reused) {
		uint64_t base_size = build_default_size(layer_bytes, 0);
		r = build_base(b, o, base_id, layer_bytes, size > base_size ? size : base_size,
			       &base_seconds, &from, err);
		if (r == 0)
			r = store_stat(b->s, STORE_SNAPSHOT, base_id, &info, err);
		if (r < 0)
			return imc_err_wrap(err, "cache %s", b->id);
	}
	if (size < info.size)
		size = info.size;
	r = store_volume_from_snapshot(b->s, base_id, b->id, size, err);
	base_release(&hold); /* cloned: the rest is this cache's own */
	if (r < 0)
		return imc_err_wrap(err, "cache %s", b->id);
	b->volume_created = true;
	r = store_activate(b->s, STORE_VOLUME, b->id, 0, &b->dev, err);
	if (r == 0 && size > info.size)
		r = imc_priv_resize_ext4(b->dev.path, size, err);
	if (r == 0)
		r = mount_volume(b, false, err);
	if (r == 0) {
		double s = base_seconds_take(b);
		if (reused)
			base_seconds = s;
		json_object_set_new(manifest, "size", json_integer((json_int_t)size));
		r = describe_images(b, json_object_get(manifest, "images"), err);
	}
	if (r == 0 && json_object_set_new(
			  manifest, "base",
			  json_pack("{s:s, s:b, s:I, s:f}", "snapshot", base_id, "reused", reused,
				    "layerBytes", (json_int_t)layer_bytes,
				    reused ? "savedSeconds" : "buildSeconds", base_seconds)) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0 && from &&
	    json_object_set(json_object_get(manifest, "base"), "builtFrom", from) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = finish_volume(b, o, manifest, err);
	return r < 0 ? build_failed(b, r, size, err) : 0;
}

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
