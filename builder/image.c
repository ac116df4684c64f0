/* A resolved image: ref -> manifest (through an index to the platform's manifest) -> config,
 * then its layers fetched into the blob directory and applied in order. */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"

#define FETCH_WORKERS	  4
#define PROGRESS_STEP	  (1u << 20)
#define CONFIG_LIST_MAX	  10000
#define CONFIG_STRING_MAX (64u << 10)
#define CONFIG_LABELS_MAX 1000

struct builder_image {
	char *ref_given;
	char *name; /* "registry/repository[:tag][@digest]", for messages */
	struct oci_ref ref;
	struct oci_registry *reg;
	char platform[OCI_PLATFORM_MAX];
	char digest[7 + IMC_SHA256_HEX_LEN + 1];       /* the image manifest's */
	char index_digest[7 + IMC_SHA256_HEX_LEN + 1]; /* "" unless resolved through an index */
	struct oci_manifest manifest;
	json_t *config;	 /* {"env","cmd","entrypoint","workingDir","user","labels"} */
	char **diff_ids; /* the config's rootfs.diff_ids: one per layer, NULL-terminated */
};

static void strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

void builder_image_free(struct builder_image *img)
{
	if (!img)
		return;
	oci_registry_close(img->reg);
	oci_ref_free(&img->ref);
	oci_manifest_free(&img->manifest);
	json_decref(img->config);
	strv_free(img->diff_ids);
	free(img->ref_given);
	free(img->name);
	free(img);
}

static void image_freep(struct builder_image **img)
{
	builder_image_free(*img);
}

static char *ref_display(const struct oci_ref *r)
{
	char *s = NULL;

	if (asprintf(&s, "%s/%s%s%s%s%s", r->registry, r->repository, r->tag ? ":" : "",
		     r->tag ? r->tag : "", r->digest ? "@" : "", r->digest ? r->digest : "") < 0)
		return NULL;
	return s;
}

/* ---- the image config -------------------------------------------------------------------- */

/* config.<key>: an array of strings (null or missing: empty) copied to out[key]. */
static int config_list(json_t *cfg, const char *key, json_t *out, const char *out_key,
		       imc_error *err)
{
	json_t *arr = NULL, *copy = json_array();
	int r;

	if (!copy)
		return imc_err(err, ENOMEM, "out of memory");
	json_object_set_new(out, out_key, copy);
	r = imc_json_get_array(cfg, key, false, CONFIG_LIST_MAX, "image config.config", &arr, err);
	if (r < 0 || !arr)
		return r;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *v = json_array_get(arr, i);
		if (!json_is_string(v) || json_string_length(v) > CONFIG_STRING_MAX)
			return imc_err(err, EINVAL,
				       "image config.config.%s[%zu]: want a string of at most %u "
				       "bytes",
				       key, i, CONFIG_STRING_MAX);
		if (json_array_append(copy, v) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int config_string(json_t *cfg, const char *key, json_t *out, const char *out_key,
			 imc_error *err)
{
	const char *v = "";
	int r =
	    imc_json_get_string(cfg, key, false, CONFIG_STRING_MAX, "image config.config", &v, err);

	if (r < 0)
		return r;
	return json_object_set_new(out, out_key, json_string(v)) < 0
		   ? imc_err(err, ENOMEM, "out of memory")
		   : 0;
}

/* config.Labels: an object of strings (null or missing: empty) copied to out.labels. */
static int config_labels(json_t *cfg, json_t *out, imc_error *err)
{
	json_t *labels = NULL, *copy = json_object(), *v;
	const char *key;
	int r;

	if (!copy)
		return imc_err(err, ENOMEM, "out of memory");
	json_object_set_new(out, "labels", copy);
	if (json_is_null(json_object_get(cfg, "Labels")))
		return 0;
	r = imc_json_get_object(cfg, "Labels", false, "image config.config", &labels, err);
	if (r < 0 || !labels)
		return r;
	if (json_object_size(labels) > CONFIG_LABELS_MAX)
		return imc_err(err, E2BIG, "image config.config.Labels: more than %d labels",
			       CONFIG_LABELS_MAX);
	json_object_foreach(labels, key, v)
	{
		if (!json_is_string(v) || json_string_length(v) > CONFIG_STRING_MAX ||
		    strlen(key) > CONFIG_STRING_MAX)
			return imc_err(
			    err, EINVAL,
			    "image config.config.Labels.%.100s: want a string of at most "
			    "%u bytes",
			    key, CONFIG_STRING_MAX);
		if (json_object_set(copy, key, v) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

/* The platform the config declares must be the one asked for: a single-platform image of
 * another platform fails as an index without it does, listing what it has. */
static int config_platform(struct builder_image *img, json_t *j, imc_error *err)
{
	const char *os = NULL, *arch = NULL, *variant = NULL;
	char have[OCI_PLATFORM_MAX];
	int r = imc_json_get_string(j, "os", false, 64, "image config", &os, err);

	if (r == 0)
		r = imc_json_get_string(j, "architecture", false, 64, "image config", &arch, err);
	if (r == 0)
		r = imc_json_get_string(j, "variant", false, 64, "image config", &variant, err);
	if (r == 0)
		r = oci_platform_match_config(img->platform, os, arch, variant, have, sizeof(have),
					      err);
	if (r < 0 && img->index_digest[0]) /* the index said otherwise */
		return imc_err_wrap(err, "manifest %s of index %s", img->digest, img->index_digest);
	if (r < 0)
		return r;
	snprintf(img->platform, sizeof(img->platform), "%s", have);
	return 0;
}

static int diff_ids_copy(json_t *ids, const struct oci_manifest *m, char ***ret, imc_error *err)
{
	char **v = calloc(m->n_layers + 1, sizeof(*v));
	char hex[IMC_SHA256_HEX_LEN + 1];

	if (!v)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < m->n_layers; i++) {
		const char *d = json_string_value(json_array_get(ids, i));
		if (!d || imc_digest_parse(d, hex, NULL) < 0) {
			strv_free(v);
			return imc_err(err, EINVAL,
				       "image config.rootfs.diff_ids[%zu]: want a sha256 digest "
				       "(for layer %zu %s)",
				       i, i, m->layers[i].digest);
		}
		if (!(v[i] = strdup(d))) {
			strv_free(v);
			return imc_err(err, ENOMEM, "out of memory");
		}
	}
	*ret = v;
	return 0;
}

/* One diff_id per layer, as umoci and containerd require: a layer without one, or a diff_id
 * without a layer, is a broken image. */
TESTABLE int image_diff_ids_parse(json_t *config, const struct oci_manifest *m, char ***ret,
				  imc_error *err)
{
	const char *type = NULL;
	json_t *rootfs = NULL, *ids = NULL;
	size_t n;
	int r = imc_json_get_object(config, "rootfs", true, "image config", &rootfs, err);

	if (r == 0)
		r = imc_json_get_string(rootfs, "type", false, 64, "image config.rootfs", &type,
					err);
	if (r == 0 && type && strcmp(type, "layers") != 0)
		r = imc_err(err, ENOTSUP, "image config.rootfs.type: %s is not \"layers\"", type);
	if (r == 0)
		r = imc_json_get_array(rootfs, "diff_ids", true, SIZE_MAX, "image config.rootfs",
				       &ids, err);
	if (r < 0)
		return r;
	n = json_array_size(ids);
	if (n < m->n_layers)
		return imc_err(err, EINVAL,
			       "layer %zu %s: no diff_id for it in the image config "
			       "(rootfs.diff_ids has %zu for %zu layers)",
			       n, m->layers[n].digest, n, m->n_layers);
	if (n > m->n_layers)
		return imc_err(err, EINVAL,
			       "image config.rootfs.diff_ids[%zu]: names no layer "
			       "(rootfs.diff_ids has %zu for %zu layers)",
			       m->n_layers, n, m->n_layers);
	return diff_ids_copy(ids, m, ret, err);
}

static int config_parse(struct builder_image *img, const char *body, size_t len, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL, *out = json_object();
	json_t *cfg = NULL, *empty = NULL;
	int r;

	if (!out)
		return imc_err(err, ENOMEM, "out of memory");
	r = imc_json_parse_object(body, len, &j, err);
	if (r < 0)
		return imc_err_wrap(err, "image config");
	r = imc_json_get_object(j, "config", false, "image config", &cfg, err);
	if (r < 0)
		return r;
	if (!cfg)
		cfg = empty = json_object();
	if (!cfg)
		return imc_err(err, ENOMEM, "out of memory");
	r = config_list(cfg, "Env", out, "env", err);
	if (r == 0)
		r = config_list(cfg, "Cmd", out, "cmd", err);
	if (r == 0)
		r = config_list(cfg, "Entrypoint", out, "entrypoint", err);
	if (r == 0)
		r = config_string(cfg, "WorkingDir", out, "workingDir", err);
	if (r == 0)
		r = config_string(cfg, "User", out, "user", err);
	if (r == 0)
		r = config_labels(cfg, out, err);
	json_decref(empty);
	if (r == 0)
		r = config_platform(img, j, err);
	if (r == 0)
		r = image_diff_ids_parse(j, &img->manifest, &img->diff_ids, err);
	if (r < 0)
		return r;
	img->config = steal_pointer(&out);
	return 0;
}

/* ---- resolving --------------------------------------------------------------------------- */

/* The image manifest for ref: through an index to the platform's entry when it is one. */
static int resolve_manifest(struct builder_image *img, struct oci_registry_manifest *ret,
			    imc_error *err)
{
	struct oci_registry_manifest m = {0};
	const char *reference = img->ref.digest ? img->ref.digest : img->ref.tag;
	bool is_index = false;
	int r;

	r = oci_registry_get_manifest(img->reg, reference, img->ref.digest, &m, err);
	if (r == 0)
		r = oci_manifest_kind(m.content_type, m.body, m.len, &is_index, err);
	if (r == 0 && is_index) {
		struct oci_descriptor d = {0};
		r = oci_index_select(m.body, m.len, img->platform, &d, err);
		memcpy(img->index_digest, m.digest, sizeof(m.digest));
		oci_registry_manifest_free(&m);
		if (r == 0)
			r = oci_registry_get_manifest(img->reg, d.digest, d.digest, &m, err);
		if (r == 0 && (int64_t)m.len != d.size)
			r = imc_err(err, EBADMSG, "manifest %s: %zu bytes, the index says %lld",
				    d.digest, m.len, (long long)d.size);
		oci_descriptor_free(&d);
	}
	if (r < 0) {
		oci_registry_manifest_free(&m);
		return r;
	}
	*ret = m;
	return 0;
}

static int image_resolve(const struct builder_opts *o, struct builder_image *img, imc_error *err)
{
	struct oci_registry_manifest m = {0};
	_cleanup_free_ char *config = NULL;
	size_t config_len = 0;
	int r;

	r = resolve_manifest(img, &m, err);
	if (r == 0)
		r = oci_manifest_parse(m.content_type, m.body, m.len, &img->manifest, err);
	if (r == 0)
		memcpy(img->digest, m.digest, sizeof(m.digest));
	oci_registry_manifest_free(&m);
	if (r < 0)
		return r;
	r = oci_registry_get_blob_mem(img->reg, &img->manifest.config, OCI_MANIFEST_MAX, &config,
				      &config_len, err);
	if (r < 0)
		return imc_err_wrap(err, "config %s", img->manifest.config.digest);
	return config_parse(img, config, config_len, err);
}

struct oci_registry_opts builder_registry_opts(const struct builder_opts *o)
{
	return (struct oci_registry_opts){.insecure_registries = o->insecure_registries,
					  .credentials = o->credentials,
					  .n_credentials = o->n_credentials,
					  .auth_file = o->auth_file,
					  .ca_file = o->ca_file,
					  .cancelled = o->cancelled,
					  .cancel_ctx = o->cancel_ctx,
					  .net = o->registry_net,
					  .blob_max = o->blob_max,
					  .tenant = o->tenant};
}

int builder_image_resolve(const struct builder_opts *o, const char *ref, struct builder_image **ret,
			  imc_error *err)
{
	_cleanup_(image_freep) struct builder_image *img = calloc(1, sizeof(*img));
	const char *platform = o->platform && *o->platform ? o->platform : OCI_DEFAULT_PLATFORM;
	const struct oci_registry_opts ro = builder_registry_opts(o);
	int r;

	if (!img || !(img->ref_given = strdup(ref ? ref : "")))
		return imc_err(err, ENOMEM, "out of memory");
	r = oci_ref_parse(ref, &img->ref, err);
	if (r < 0)
		return r;
	r = oci_platform_normalize(platform, img->platform, sizeof(img->platform), err);
	if (r < 0)
		return r;
	img->name = ref_display(&img->ref);
	if (!img->name)
		return imc_err(err, ENOMEM, "out of memory");
	r = oci_registry_open(&ro, &img->ref, &img->reg, err);
	if (r == 0)
		r = image_resolve(o, img, err);
	if (r < 0)
		return imc_err_wrap(err, "%s", img->name);
	*ret = steal_pointer(&img);
	return 0;
}

/* ---- fetching and applying --------------------------------------------------------------
 * Up to FETCH_WORKERS layers download at once, in manifest order.  builder_image_pull applies
 * each layer as soon as it (and every layer before it) is there, while the rest download. */

struct fetch {
	const struct builder_opts *o;
	struct builder_image *img;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* a layer arrived or the fetch failed */
	size_t next;	     /* the next layer to start */
	bool *fetched;	     /* per layer */
	bool failed;
	imc_error err; /* the first failure */
	int64_t done;
	uint64_t total, reported;
};

bool builder_cancelled(const struct builder_opts *o)
{
	return o && o->cancelled && o->cancelled(o->cancel_ctx);
}

static bool fetch_on_bytes(void *ctx, int64_t n)
{
	struct fetch *f = ctx;
	bool ok;

	pthread_mutex_lock(&f->lock);
	f->done += n;
	if (f->done < 0)
		f->done = 0;
	if (f->o->progress && n != 0 &&
	    ((uint64_t)f->done >= f->reported + PROGRESS_STEP || (uint64_t)f->done < f->reported ||
	     (uint64_t)f->done == f->total)) {
		f->reported = (uint64_t)f->done;
		f->o->progress(f->o->progress_ctx, (uint64_t)f->done, f->total);
	}
	ok = !f->failed;
	pthread_mutex_unlock(&f->lock);
	return ok && !builder_cancelled(f->o);
}

/* The first layer of the manifest with the same digest as layer i (i itself, mostly). */
static size_t layer_first(const struct oci_manifest *m, size_t i)
{
	for (size_t j = 0; j < i; j++)
		if (strcmp(m->layers[j].digest, m->layers[i].digest) == 0)
			return j;
	return i;
}

static void fetch_fail(struct fetch *f, const imc_error *e)
{
	pthread_mutex_lock(&f->lock);
	if (!f->failed) {
		f->failed = true;
		f->err = *e;
	}
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
}

static void *fetch_worker(void *arg)
{
	struct fetch *f = arg;
	const struct oci_manifest *m = &f->img->manifest;

	for (;;) {
		imc_error e = {0};
		size_t i;

		pthread_mutex_lock(&f->lock);
		i = f->next++;
		bool stop = f->failed || i >= m->n_layers;
		pthread_mutex_unlock(&f->lock);
		if (stop)
			return NULL;
		if (layer_first(m, i) != i)
			continue;
		if (oci_registry_fetch_blob(f->img->reg, &m->layers[i], f->o->blob_dir,
					    fetch_on_bytes, f, &e) < 0) {
			imc_err_wrap(&e, "layer %s", m->layers[i].digest);
			fetch_fail(f, &e);
			continue;
		}
		pthread_mutex_lock(&f->lock);
		f->fetched[i] = true;
		pthread_cond_broadcast(&f->cond);
		pthread_mutex_unlock(&f->lock);
	}
}

static int fetch_init(struct fetch *f, const struct builder_opts *o, struct builder_image *img,
		      size_t *ret_unique, imc_error *err)
{
	*f = (struct fetch){.o = o, .img = img};
	*ret_unique = 0;
	if (!o->blob_dir)
		return imc_err(err, EINVAL, "%s: no blob directory", img->name);
	f->fetched = calloc(img->manifest.n_layers + 1, sizeof(bool));
	if (!f->fetched)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < img->manifest.n_layers; i++) {
		if (layer_first(&img->manifest, i) != i)
			continue;
		(*ret_unique)++;
		f->total += (uint64_t)img->manifest.layers[i].size;
	}
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	return 0;
}

/* Join the workers; the fetch's result (its first failure wrapped with the image name). */
static int fetch_finish(struct fetch *f, pthread_t *threads, size_t n_threads, imc_error *err)
{
	int r = 0;

	for (size_t i = 0; i < n_threads; i++)
		pthread_join(threads[i], NULL);
	if (f->failed) {
		if (err)
			*err = f->err;
		r = imc_err_wrap(err, "%s", f->img->name);
	}
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
	free(f->fetched);
	return r;
}

static size_t fetch_spawn(struct fetch *f, pthread_t *threads, size_t max)
{
	size_t n = 0;

	while (n < max && pthread_create(&threads[n], NULL, fetch_worker, f) == 0)
		n++;
	return n;
}

int builder_image_fetch(const struct builder_opts *o, struct builder_image *img, imc_error *err)
{
	pthread_t threads[FETCH_WORKERS];
	struct fetch f;
	size_t unique, n_threads;
	int r = fetch_init(&f, o, img, &unique, err);

	if (r < 0)
		return r;
	/* This thread is one of the FETCH_WORKERS. */
	n_threads = fetch_spawn(&f, threads,
				unique < FETCH_WORKERS ? unique - (unique > 0) : FETCH_WORKERS - 1);
	fetch_worker(&f);
	return fetch_finish(&f, threads, n_threads, err);
}

int builder_image_apply_layer(const struct builder_opts *o, const struct builder_image *img,
			      size_t i, int rootfd, imc_error *err)
{
	const struct oci_descriptor *d = &img->manifest.layers[i];
	_cleanup_free_ char *dir = oci_blob_sha256_dir(o->blob_dir);
	_cleanup_close_ int fd = -1;
	char what[128], path[PATH_MAX], got[IMC_SHA256_HEX_LEN + 1];

	snprintf(what, sizeof(what), "layer %zu %s", i, d->digest);
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, d->digest + 7) >= sizeof(path))
		return imc_err(err, ENAMETOOLONG, "%s: blob directory path too long", img->name);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s: %s: %s", img->name, what, path);
	if (builder_layer_apply_hashed(rootfd, fd, what, got, err) < 0)
		return imc_err_wrap(err, "%s", img->name);
	if (strcmp(img->diff_ids[i] + 7, got) != 0)
		return imc_err(err, EBADMSG,
			       "%s: %s: diff_id mismatch: the uncompressed layer is sha256:%s, the "
			       "image config's rootfs.diff_ids[%zu] says %s",
			       img->name, what, got, i, img->diff_ids[i]);
	return 0;
}

/* Wait until layer i is in the blob directory; false when the fetch failed. */
static bool fetch_wait(struct fetch *f, size_t i)
{
	size_t first = layer_first(&f->img->manifest, i);
	bool ok;

	pthread_mutex_lock(&f->lock);
	while (!f->fetched[first] && !f->failed)
		pthread_cond_wait(&f->cond, &f->lock);
	ok = f->fetched[first];
	pthread_mutex_unlock(&f->lock);
	return ok;
}

int builder_image_pull(const struct builder_opts *o, struct builder_image *img, int rootfd,
		       imc_error *err)
{
	pthread_t threads[FETCH_WORKERS];
	struct fetch f;
	size_t unique, n_threads;
	int r = fetch_init(&f, o, img, &unique, err), ra = 0;

	if (r < 0)
		return r;
	n_threads = fetch_spawn(&f, threads, unique < FETCH_WORKERS ? unique : FETCH_WORKERS);
	if (n_threads == 0 && unique > 0)
		fetch_worker(&f); /* no thread to be had: fetch first, then apply */
	for (size_t i = 0; i < img->manifest.n_layers && ra == 0; i++) {
		if (!fetch_wait(&f, i))
			break;
		ra = builder_cancelled(o) ? imc_err(err, ECANCELED, "%s: cancelled", img->name)
					  : builder_image_apply_layer(o, img, i, rootfd, err);
		if (ra < 0) {
			imc_error stop = {.code = -ECANCELED};
			fetch_fail(&f, &stop); /* stop the downloads */
		}
	}
	r = fetch_finish(&f, threads, n_threads, ra < 0 ? NULL : err);
	return ra < 0 ? ra : r;
}

uint64_t builder_image_layer_bytes(const struct builder_image *img)
{
	uint64_t n = 0;

	for (size_t i = 0; i < img->manifest.n_layers; i++)
		n += (uint64_t)img->manifest.layers[i].size;
	return n;
}

static json_t *describe_layers(const struct oci_manifest *m, char *const *diff_ids)
{
	json_t *arr = json_array();

	for (size_t i = 0; arr && i < m->n_layers; i++) {
		json_t *l =
		    json_pack("{s:s, s:I, s:s, s:s?}", "digest", m->layers[i].digest, "size",
			      (json_int_t)m->layers[i].size, "mediaType", m->layers[i].media_type,
			      "diffId", diff_ids ? diff_ids[i] : NULL);
		if (!l || json_array_append_new(arr, l) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return arr;
}

json_t *builder_image_describe(const struct builder_image *img)
{
	json_t *layers = describe_layers(&img->manifest, img->diff_ids);
	json_t *j;

	if (!layers)
		return NULL;
	j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:O, s:o}", "ref", img->ref_given, "registry",
		      img->ref.registry, "repository", img->ref.repository, "digest", img->digest,
		      "platform", img->platform, "configDigest", img->manifest.config.digest,
		      "config", img->config, "layers", layers);
	if (j && img->index_digest[0] &&
	    json_object_set_new(j, "indexDigest", json_string(img->index_digest)) < 0) {
		json_decref(j);
		return NULL;
	}
	return j;
}
