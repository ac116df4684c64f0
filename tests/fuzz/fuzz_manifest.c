/* Fuzz target: image manifests and indexes (oci_manifest_parse, oci_index_select).
 *
 * The body is copied into a buffer of exactly its length (no NUL after it), so that reading past
 * len is caught.  Each body is parsed as a manifest under every Content-Type a registry may send
 * (and none), and as an index for two platforms.  On success the results must be complete and
 * within the caps the parser promises. */
#include <stdlib.h>
#include <string.h>

#include "../../oci/oci.h"

#define MAX_LAYERS    1000	  /* oci/manifest.c */
#define MAX_BLOB_SIZE (1LL << 40) /* oci/manifest.c */

static const char *const content_types[] = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/json",
    NULL, /* no Content-Type: the body's mediaType decides */
};

static const char *const platforms[] = {"linux/amd64", "linux/arm64/v8"};

static void check_descriptor(const struct oci_descriptor *d)
{
	if (!d->media_type || !d->digest || d->size < 0 || d->size > MAX_BLOB_SIZE)
		abort();
	if (strncmp(d->digest, "sha256:", 7) != 0 || strlen(d->digest) != 7 + 64)
		abort();
}

static void fuzz_manifest(const char *content_type, const char *body, size_t len)
{
	struct oci_manifest m = {0};
	imc_error err = {0};
	int r = oci_manifest_parse(content_type, body, len, &m, &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0' || m.layers || m.config.digest)
			abort();
		return;
	}
	if (r > 0 || m.n_layers > MAX_LAYERS || (m.n_layers > 0 && !m.layers))
		abort();
	check_descriptor(&m.config);
	for (size_t i = 0; i < m.n_layers; i++)
		check_descriptor(&m.layers[i]);
	oci_manifest_free(&m);
}

static void fuzz_index(const char *platform, const char *body, size_t len)
{
	struct oci_descriptor d = {0};
	imc_error err = {0};
	int r = oci_index_select(body, len, platform, &d, &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0' || d.digest || d.media_type)
			abort();
		return;
	}
	if (r > 0)
		abort();
	check_descriptor(&d);
	oci_descriptor_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *body = malloc(size ? size : 1);

	if (!body)
		return 0;
	memcpy(body, data, size);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(content_types); i++)
		fuzz_manifest(content_types[i], body, size);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(platforms); i++)
		fuzz_index(platforms[i], body, size);
	return 0;
}
