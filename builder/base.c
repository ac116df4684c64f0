/* Incremental builds: a cache of one image (with or without data) is built on that image's base
 * snapshot "img-<32 hex of sha256("<manifest digest> <platform>")>", a sealed volume holding only
 * the image.  The first such cache builds the base; every later one, whatever its data, clones
 * the base into its volume (FICLONE: no copy), grows the filesystem to its size online, adds its
 * data and is sealed (and so compacted) on its own, so no snapshot is ever a clone of a clone.
 * A new base starts, when it can, as a clone of the base with the longest common layer chain
 * (<state>/bases/<base id>.json records each base's layers).  /imcache.json's "base" says which
 * base was used and what that saved.  Stores that cannot make a volume from a snapshot, and
 * caches of several images, build from scratch (builder/build.c). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "build_internal.h"

#define BASE_PREFIX	BUILDER_BASE_PREFIX
#define BASE_HEX	32
#define BASE_ID_MAX	(sizeof(BASE_PREFIX) + BASE_HEX)
#define BASES_DIR	"bases" /* <state>/bases/<base id>.json: {"layers": [digest…]} */
#define BASES_MAX	4096	/* records looked at for a common layer chain */
#define BASE_RECORD_MAX (1u << 20)

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
		r = build_mount_volume(base, false, err);
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
	_cleanup_json_ json_t *manifest = NULL, *layers = build_layer_digests(b->images[0]);
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
			r = build_mount_volume(&base, true, err);
		if (r == 0)
			r = build_apply_images(&base, o, json_object_get(manifest, "images"), err);
	}
	*ret_seconds = (double)(imc_monotonic_ns() - t0) / 1e9;
	if (r == 0 && json_object_set_new(manifest, "buildSeconds", json_real(*ret_seconds)) < 0)
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = build_write_manifest(&base, manifest, err);
	if (r == 0)
		r = build_seal_volume(&base, err);
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

/* The cache's /imcache.json "base": which base, whether it was reused, and the seconds that
 * saved (its build's) or took; "builtFrom" when the base was built on another's layer chain. */
static int describe_base(json_t *manifest, const char *base_id, bool reused, uint64_t layer_bytes,
			 double seconds, json_t *from, imc_error *err)
{
	json_t *base =
	    json_pack("{s:s, s:b, s:I, s:f}", "snapshot", base_id, "reused", reused, "layerBytes",
		      (json_int_t)layer_bytes, reused ? "savedSeconds" : "buildSeconds", seconds);

	if (json_object_set_new(manifest, "base", base) < 0 ||
	    (from && json_object_set(base, "builtFrom", from) < 0))
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

/* A cache of one image: its base (built now if there is none), cloned, grown, plus the data. */
int build_on_base(struct build *b, const struct builder_opts *o, uint64_t size,
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
	r = build_check_room(b, o, b->data_bytes + (reused ? 0 : b->layer_bytes), err);
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
		r = build_mount_volume(b, false, err);
	if (r == 0) {
		double s = base_seconds_take(b);
		if (reused)
			base_seconds = s;
		json_object_set_new(manifest, "size", json_integer((json_int_t)size));
		r = describe_images(b, json_object_get(manifest, "images"), err);
	}
	if (r == 0)
		r = describe_base(manifest, base_id, reused, layer_bytes, base_seconds, from, err);
	if (r == 0)
		r = build_finish_volume(b, o, manifest, err);
	return r < 0 ? build_failed(b, r, size, err) : 0;
}
