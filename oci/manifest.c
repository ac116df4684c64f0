/* Image manifests (Docker schema 2, OCI image manifest v1) and indexes (OCI image index, Docker
 * manifest list).  Unknown fields are ignored, as the OCI image spec requires of readers; every
 * field we use is type-checked, and counts and sizes are capped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oci.h"

#define MAX_LAYERS	  1000
#define MAX_INDEX_ENTRIES 1000
#define MAX_BLOB_SIZE	  (1LL << 40) /* 1 TiB: no real layer comes near */
#define MAX_MANIFEST_SIZE (4LL << 20)
#define MEDIA_TYPE_MAX	  255
#define PLATFORM_PART_MAX 64
#define DIGEST_STR_MAX	  200

static const char *const layer_types[] = {
    OCI_MT_OCI_LAYER,
    OCI_MT_OCI_LAYER_GZIP,
    OCI_MT_OCI_LAYER_ZSTD,
    OCI_MT_DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    NULL,
};

static bool str_in(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

/* "type/subtype; charset=utf-8" -> "type/subtype" compared against want. */
static bool media_type_is(const char *media_type, const char *want)
{
	size_t n;

	if (!media_type)
		return false;
	n = strcspn(media_type, "; \t");
	return n == strlen(want) && strncasecmp(media_type, want, n) == 0;
}

bool oci_media_type_is_index(const char *media_type)
{
	return media_type_is(media_type, OCI_MT_OCI_INDEX) ||
	       media_type_is(media_type, OCI_MT_DOCKER_LIST);
}

static bool is_image_manifest_type(const char *media_type)
{
	return media_type_is(media_type, OCI_MT_OCI_MANIFEST) ||
	       media_type_is(media_type, OCI_MT_DOCKER_MANIFEST);
}

void oci_descriptor_free(struct oci_descriptor *d)
{
	if (!d)
		return;
	free(d->media_type);
	free(d->digest);
	*d = (struct oci_descriptor){0};
}

void oci_manifest_free(struct oci_manifest *m)
{
	if (!m)
		return;
	oci_descriptor_free(&m->config);
	for (size_t i = 0; i < m->n_layers; i++)
		oci_descriptor_free(&m->layers[i]);
	free(m->layers);
	*m = (struct oci_manifest){0};
}

/* Read {mediaType, digest, size} of a descriptor object; ctx names it in errors. */
static int descriptor_parse(json_t *obj, const char *ctx, struct oci_descriptor *ret,
			    imc_error *err)
{
	const char *media_type = NULL, *digest = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	int64_t size = -1;
	int r;

	if (!json_is_object(obj))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_get_string(obj, "mediaType", true, MEDIA_TYPE_MAX, ctx, &media_type, err);
	if (r == 0)
		r = imc_json_get_string(obj, "digest", true, DIGEST_STR_MAX, ctx, &digest, err);
	if (r == 0)
		r = imc_json_get_int(obj, "size", true, 0, MAX_BLOB_SIZE, ctx, &size, err);
	if (r < 0)
		return r;
	if (imc_digest_parse(digest, hex, err) < 0)
		return imc_err_wrap(err, "%s.digest", ctx);
	ret->media_type = strdup(media_type);
	ret->digest = strdup(digest);
	ret->size = size;
	if (!ret->media_type || !ret->digest) {
		oci_descriptor_free(ret);
		return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

/* The media type of a manifest body: Content-Type when it names a manifest or index type, else
 * the body's mediaType, else (OCI allows leaving it out) guessed from the fields present. */
static int manifest_media_type(const char *content_type, json_t *body, const char **ret,
			       imc_error *err)
{
	const char *body_type = NULL;
	bool known_ct =
	    is_image_manifest_type(content_type) || oci_media_type_is_index(content_type);

	if (imc_json_get_string(body, "mediaType", false, MEDIA_TYPE_MAX, "manifest", &body_type,
				err) < 0)
		return err ? err->code : -EINVAL;
	if (known_ct && body_type && !media_type_is(content_type, body_type))
		return imc_err(err, EINVAL,
			       "manifest: Content-Type %.100s disagrees with mediaType %.100s",
			       content_type, body_type);
	if (known_ct)
		*ret = content_type;
	else if (body_type)
		*ret = body_type;
	else if (json_object_get(body, "manifests"))
		*ret = OCI_MT_OCI_INDEX;
	else
		*ret = OCI_MT_OCI_MANIFEST;
	return 0;
}

int oci_manifest_kind(const char *content_type, const char *body, size_t len, bool *ret_is_index,
		      imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	const char *mt = NULL;
	int r;

	r = imc_json_parse_object(body, len, &j, err);
	if (r < 0)
		return imc_err_wrap(err, "manifest");
	r = manifest_media_type(content_type, j, &mt, err);
	if (r < 0)
		return r;
	*ret_is_index = oci_media_type_is_index(mt);
	return 0;
}

static int check_schema_version(json_t *j, const char *ctx, imc_error *err)
{
	json_t *sv = json_object_get(j, "schemaVersion");

	if (!json_is_integer(sv))
		return imc_err(err, EINVAL, "%s.schemaVersion: required, want an integer", ctx);
	if (json_integer_value(sv) != 2)
		return imc_err(err, EINVAL,
			       "%s.schemaVersion: %lld is not supported (want 2; Docker schema 1 "
			       "images must be re-pushed)",
			       ctx, (long long)json_integer_value(sv));
	return 0;
}

static int check_layer_type(const struct oci_descriptor *d, const char *ctx, imc_error *err)
{
	if (str_in(d->media_type, layer_types))
		return 0;
	if (strstr(d->media_type, "nondistributable") || strstr(d->media_type, "foreign"))
		return imc_err(err, ENOTSUP,
			       "%s: non-distributable (foreign) layer %.100s is not supported", ctx,
			       d->media_type);
	return imc_err(err, ENOTSUP, "%s: unsupported layer media type %.100s", ctx, d->media_type);
}

static int manifest_parse_layers(json_t *layers, struct oci_manifest *m, imc_error *err)
{
	size_t n = json_array_size(layers);

	m->layers = calloc(n ? n : 1, sizeof(*m->layers));
	if (!m->layers)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		char ctx[48];
		snprintf(ctx, sizeof(ctx), "manifest.layers[%zu]", i);
		int r = descriptor_parse(json_array_get(layers, i), ctx, &m->layers[i], err);
		if (r < 0)
			return r;
		m->n_layers = i + 1;
		r = check_layer_type(&m->layers[i], ctx, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int manifest_parse(const char *media_type, const char *body, size_t len,
			  struct oci_manifest *m, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	json_t *config = NULL, *layers = NULL;
	const char *mt = NULL;
	int r;

	if (len > MAX_MANIFEST_SIZE)
		return imc_err(err, EFBIG, "manifest: larger than %lld bytes", MAX_MANIFEST_SIZE);
	r = imc_json_parse_object(body, len, &j, err);
	if (r < 0)
		return imc_err_wrap(err, "manifest");
	r = manifest_media_type(media_type, j, &mt, err);
	if (r < 0)
		return r;
	if (oci_media_type_is_index(mt))
		return imc_err(err, EINVAL, "manifest: %.100s is an index, not an image manifest",
			       mt);
	if (!is_image_manifest_type(mt))
		return imc_err(err, ENOTSUP, "manifest: unsupported media type %.100s", mt);
	r = check_schema_version(j, "manifest", err);
	if (r == 0)
		r = imc_json_get_object(j, "config", true, "manifest", &config, err);
	if (r == 0)
		r = imc_json_get_array(j, "layers", true, MAX_LAYERS, "manifest", &layers, err);
	if (r == 0)
		r = descriptor_parse(config, "manifest.config", &m->config, err);
	if (r < 0)
		return r;
	if (!str_in(m->config.media_type,
		    (const char *const[]){OCI_MT_OCI_CONFIG, OCI_MT_DOCKER_CONFIG, NULL}))
		return imc_err(err, ENOTSUP,
			       "manifest.config: media type %.100s is not a container image config",
			       m->config.media_type);
	return manifest_parse_layers(layers, m, err);
}

int oci_manifest_parse(const char *media_type, const char *body, size_t len,
		       struct oci_manifest *ret, imc_error *err)
{
	struct oci_manifest m = {0};
	int r = manifest_parse(media_type, body, len, &m, err);

	if (r < 0) {
		oci_manifest_free(&m);
		return r;
	}
	*ret = m;
	return 0;
}

/* ---- platforms ---------------------------------------------------------------------------- */

struct platform {
	char os[PLATFORM_PART_MAX];
	char arch[PLATFORM_PART_MAX];
	char variant[PLATFORM_PART_MAX];
};

/* As containerd's platforms.Normalize: aliases and default variants. */
static void platform_normalize(struct platform *p)
{
	static const struct {
		const char *from, *arch, *variant;
	} aliases[] = {
	    {"x86_64", "amd64", NULL}, {"x86-64", "amd64", NULL}, {"aarch64", "arm64", NULL},
	    {"armhf", "arm", "v7"},    {"armel", "arm", "v6"},	  {"i386", "386", NULL},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(aliases); i++) {
		if (strcmp(p->arch, aliases[i].from) != 0)
			continue;
		snprintf(p->arch, sizeof(p->arch), "%s", aliases[i].arch);
		if (aliases[i].variant)
			snprintf(p->variant, sizeof(p->variant), "%s", aliases[i].variant);
	}
	if (p->variant[0] >= '0' && p->variant[0] <= '9') {
		char v[PLATFORM_PART_MAX];
		snprintf(v, sizeof(v), "v%s", p->variant);
		memcpy(p->variant, v, sizeof(v));
	}
	if (strcmp(p->arch, "arm64") == 0 && p->variant[0] == '\0')
		snprintf(p->variant, sizeof(p->variant), "v8");
	if (strcmp(p->arch, "arm") == 0 && p->variant[0] == '\0')
		snprintf(p->variant, sizeof(p->variant), "v7");
	if (strcmp(p->arch, "amd64") == 0 && strcmp(p->variant, "v1") == 0)
		p->variant[0] = '\0';
}

static bool platform_part_valid(const char *s, size_t n)
{
	/* Starts with a letter or digit: never "." or "..". */
	if (n == 0 || n >= PLATFORM_PART_MAX ||
	    !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
		      s[i] == '-' || s[i] == '.'))
			return false;
	return true;
}

static int platform_parse(const char *s, struct platform *ret, imc_error *err)
{
	struct platform p = {0};
	char *parts[3] = {p.os, p.arch, p.variant};
	const char *cur = s;
	size_t i = 0;

	for (; i < 3; i++) {
		size_t n = strcspn(cur, "/");
		if (!platform_part_valid(cur, n))
			return imc_err(err, EINVAL,
				       "platform \"%.100s\": want os/arch[/variant] in lowercase",
				       s);
		memcpy(parts[i], cur, n);
		cur += n;
		if (*cur == '\0')
			break;
		cur++;
	}
	if (i == 0 || i == 3)
		return imc_err(err, EINVAL, "platform \"%.100s\": want os/arch[/variant]", s);
	platform_normalize(&p);
	*ret = p;
	return 0;
}

static void platform_format(const struct platform *p, char *out, size_t size)
{
	snprintf(out, size, "%s/%s%s%s", p->os, p->arch, p->variant[0] ? "/" : "", p->variant);
}

int oci_platform_normalize(const char *s, char *out, size_t size, imc_error *err)
{
	struct platform p;
	int r = platform_parse(s, &p, err);

	if (r == 0)
		platform_format(&p, out, size);
	return r;
}

/* A part the image config declares, lowercased as containerd does; false when unusable. */
static bool platform_part_copy(char out[PLATFORM_PART_MAX], const char *s)
{
	size_t n = strlen(s);

	if (n >= PLATFORM_PART_MAX)
		return false;
	for (size_t i = 0; i <= n; i++)
		out[i] = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];
	return platform_part_valid(out, n);
}

int oci_platform_match_config(const char *want, const char *os, const char *arch,
			      const char *variant, char *ret, size_t size, imc_error *err)
{
	struct platform w, have = {0};
	bool has_variant = variant && *variant;
	char avail[OCI_PLATFORM_MAX];
	int r = platform_parse(want, &w, err);

	if (r < 0)
		return r;
	if (!os || !*os || !arch || !*arch) { /* the config names none: as asked */
		platform_format(&w, ret, size);
		return 0;
	}
	if (!platform_part_copy(have.os, os) || !platform_part_copy(have.arch, arch) ||
	    (has_variant && !platform_part_copy(have.variant, variant)))
		return imc_err(err, ENOENT,
			       "no manifest for platform %s (the image config declares an unusable "
			       "os/architecture/variant)",
			       want);
	platform_normalize(&have);
	platform_format(&have, avail, sizeof(avail));
	if (strcmp(have.os, w.os) != 0 || strcmp(have.arch, w.arch) != 0 ||
	    (has_variant && strcmp(have.variant, w.variant) != 0))
		return imc_err(err, ENOENT, "no manifest for platform %s (available: %s)", want,
			       avail);
	/* No variant declared: the image is for every variant of its architecture. */
	platform_format(has_variant ? &have : &w, ret, size);
	return 0;
}

static int entry_platform(json_t *entry, const char *ctx, struct platform *ret, imc_error *err)
{
	json_t *pj = NULL;
	const char *os = NULL, *arch = NULL, *variant = "";
	int r = imc_json_get_object(entry, "platform", false, ctx, &pj, err);

	*ret = (struct platform){0};
	if (r < 0 || !pj)
		return r;
	r = imc_json_get_string(pj, "os", true, PLATFORM_PART_MAX - 1, ctx, &os, err);
	if (r == 0)
		r = imc_json_get_string(pj, "architecture", true, PLATFORM_PART_MAX - 1, ctx, &arch,
					err);
	if (r == 0)
		r = imc_json_get_string(pj, "variant", false, PLATFORM_PART_MAX - 1, ctx, &variant,
					err);
	if (r < 0)
		return r;
	snprintf(ret->os, sizeof(ret->os), "%s", os);
	snprintf(ret->arch, sizeof(ret->arch), "%s", arch);
	snprintf(ret->variant, sizeof(ret->variant), "%s", variant);
	platform_normalize(ret);
	return 0;
}

static void platform_append(char *buf, size_t size, const struct platform *p)
{
	size_t n = strlen(buf);

	if (p->os[0] == '\0')
		return;
	if (n > 0 && n + 2 < size) {
		memcpy(buf + n, ", ", 3);
		n += 2;
	}
	platform_format(p, buf + n, size - n);
}

static int index_select(json_t *manifests, const char *platform_s, const struct platform *want,
			struct oci_descriptor *ret, imc_error *err)
{
	char avail[600] = "";

	for (size_t i = 0; i < json_array_size(manifests); i++) {
		json_t *entry = json_array_get(manifests, i);
		struct platform p;
		char ctx[48];
		snprintf(ctx, sizeof(ctx), "index.manifests[%zu]", i);
		if (!json_is_object(entry))
			return imc_err(err, EINVAL, "%s: want an object", ctx);
		int r = entry_platform(entry, ctx, &p, err);
		if (r < 0)
			return r;
		platform_append(avail, sizeof(avail), &p);
		if (strcmp(p.os, want->os) != 0 || strcmp(p.arch, want->arch) != 0 ||
		    strcmp(p.variant, want->variant) != 0)
			continue;
		r = descriptor_parse(entry, ctx, ret, err);
		if (r < 0)
			return r;
		if (!is_image_manifest_type(ret->media_type)) {
			r = imc_err(err, ENOTSUP, "%s: media type %.100s is not an image manifest",
				    ctx, ret->media_type);
			oci_descriptor_free(ret);
			return r;
		}
		if (ret->size > MAX_MANIFEST_SIZE) {
			oci_descriptor_free(ret);
			return imc_err(err, EFBIG, "%s: manifest larger than %lld bytes", ctx,
				       MAX_MANIFEST_SIZE);
		}
		return 0;
	}
	return imc_err(err, ENOENT, "no manifest for platform %s in the index (available: %s)",
		       platform_s, avail[0] ? avail : "none");
}

int oci_index_select(const char *body, size_t len, const char *platform, struct oci_descriptor *ret,
		     imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	json_t *manifests = NULL;
	struct platform want;
	int r;

	if (!platform || !*platform)
		platform = OCI_DEFAULT_PLATFORM;
	r = platform_parse(platform, &want, err);
	if (r < 0)
		return r;
	if (len > MAX_MANIFEST_SIZE)
		return imc_err(err, EFBIG, "index: larger than %lld bytes", MAX_MANIFEST_SIZE);
	r = imc_json_parse_object(body, len, &j, err);
	if (r < 0)
		return imc_err_wrap(err, "index");
	r = check_schema_version(j, "index", err);
	if (r < 0)
		return r;
	r = imc_json_get_array(j, "manifests", true, MAX_INDEX_ENTRIES, "index", &manifests, err);
	if (r < 0)
		return r;
	return index_select(manifests, platform, &want, ret, err);
}

int oci_chain_id(const char *const *diff_ids, size_t n, char ret[OCI_DIGEST_MAX + 1],
		 imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1], buf[2 * OCI_DIGEST_MAX + 2];

	if (n == 0)
		return imc_err(err, EINVAL, "no layers");
	for (size_t i = 0; i < n; i++)
		if (imc_digest_parse(diff_ids[i], hex, err) < 0)
			return imc_err_wrap(err, "diff_id %zu", i);
	snprintf(ret, OCI_DIGEST_MAX + 1, "%s", diff_ids[0]);
	for (size_t i = 1; i < n; i++) {
		int len = snprintf(buf, sizeof(buf), "%s %s", ret, diff_ids[i]);
		if (imc_sha256_hex(buf, (size_t)len, hex, err) < 0)
			return err->code;
		snprintf(ret, OCI_DIGEST_MAX + 1, "sha256:%s", hex);
	}
	return 0;
}

int oci_image_top_chain_id(const json_t *image, char ret[OCI_DIGEST_MAX + 1], imc_error *err)
{
	json_t *layers = json_object_get(image, "layers"), *l;
	size_t n = json_array_size(layers), i;
	_cleanup_free_ const char **ids = calloc(n ? n : 1, sizeof(*ids));

	if (!ids)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(layers, i, l)
	{
		if (!(ids[i] = json_string_value(json_object_get(l, "diffId"))))
			return imc_err(err, EINVAL, "layer %zu: no diffId", i);
	}
	return oci_chain_id(ids, n, ret, err);
}
