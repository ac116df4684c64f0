/* Unit tests of the builder: image refs, manifests, indexes, whiteouts, registry helpers and
 * layer application on real tar streams written here with libarchive.
 *
 * Over 800 lines: one suite per room (refs, manifests, indexes, layers). */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "../../builder/builder.h"
#include "../../oci/oci.h"
#include "unit.h"

#define HEX_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define HEX_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define HEX_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define DIG_A "sha256:" HEX_A
#define DIG_B "sha256:" HEX_B
#define DIG_C "sha256:" HEX_C

/* ---- image refs -------------------------------------------------------------------------- */

static const struct {
	const char *in, *registry, *repository, *tag, *digest;
} good_refs[] = {
    {"busybox", "registry-1.docker.io", "library/busybox", "latest", NULL},
    {"busybox:1.36", "registry-1.docker.io", "library/busybox", "1.36", NULL},
    {"library/busybox", "registry-1.docker.io", "library/busybox", "latest", NULL},
    {"user/app:v1.0_rc-2", "registry-1.docker.io", "user/app", "v1.0_rc-2", NULL},
    {"docker.io/busybox", "registry-1.docker.io", "library/busybox", "latest", NULL},
    {"index.docker.io/user/app", "registry-1.docker.io", "user/app", "latest", NULL},
    {"localhost/foo", "localhost", "foo", "latest", NULL},
    {"localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", "tag", NULL},
    {"127.0.0.1:5000/demo/app@" DIG_A, "127.0.0.1:5000", "demo/app", NULL, DIG_A},
    {"ghcr.io/org/app:1.0@" DIG_B, "ghcr.io", "org/app", "1.0", DIG_B},
    {"[::1]:5000/foo", "[::1]:5000", "foo", "latest", NULL},
    {"quay.io/a-b__c.d/e_f--g", "quay.io", "a-b__c.d/e_f--g", "latest", NULL},
    {"foo:5000", "registry-1.docker.io", "library/foo", "5000", NULL},
    {"Example.COM/foo", "Example.COM", "foo", "latest", NULL},
    {"my-registry.local:443/a/b/c/d:_x", "my-registry.local:443", "a/b/c/d", "_x", NULL},
};

START_TEST(ref_good)
{
	struct oci_ref r;
	imc_error err = {0};

	ck_assert_msg(oci_ref_parse(good_refs[_i].in, &r, &err) == 0, "%s: %s", good_refs[_i].in,
		      err.msg);
	ck_assert_str_eq(r.registry, good_refs[_i].registry);
	ck_assert_str_eq(r.repository, good_refs[_i].repository);
	ck_assert_pstr_eq(r.tag, good_refs[_i].tag);
	ck_assert_pstr_eq(r.digest, good_refs[_i].digest);
	oci_ref_free(&r);
}
END_TEST

static const struct {
	const char *in, *why;
} bad_refs[] = {
    {"", "empty"},
    {"foo/Bar", "invalid repository"},
    {"foo:", "invalid tag"},
    {"foo:-bad", "invalid tag"},
    {"foo:a/b", "invalid registry host \"foo:a\""},
    {"foo@sha256:abc", "64 hex"},
    {"foo@md5:" HEX_A, "only sha256"},
    {"foo@sha256:" HEX_A "A", "64 hex"},
    {"foo bar", "space"},
    {"a//b", "invalid repository"},
    {"-foo", "invalid repository"},
    {"foo-", "invalid repository"},
    {"foo..bar", "invalid repository"},
    {"foo___bar", "invalid repository"},
    {"a.b:x:y/foo", "invalid registry host"},
    {"localhost:123456/foo", "invalid registry host"},
    {"-bad.io/foo", "invalid registry host"},
    {"bad..io/foo", "invalid registry host"},
    {"/foo", "invalid repository"},
    {"foo/", "invalid repository"},
    {":tag", "missing repository"},
    {"@" DIG_A, "missing repository"},
    {"ghcr.io/", "invalid repository"},
    {"foo\n", "control"},
};

START_TEST(ref_bad)
{
	struct oci_ref r = {0};
	imc_error err = {0};

	ck_assert_int_eq(oci_ref_parse(bad_refs[_i].in, &r, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, bad_refs[_i].why) &&
			  strncmp(err.msg, "image ref \"", 11) == 0,
		      "%s: got \"%s\"", bad_refs[_i].in, err.msg);
	ck_assert_ptr_null(r.registry);
}
END_TEST

START_TEST(ref_limits)
{
	char tag[200], ref[700];
	struct oci_ref r;
	imc_error err = {0};

	memset(tag, 'a', 128);
	tag[128] = '\0';
	snprintf(ref, sizeof(ref), "foo:%s", tag);
	ck_assert_int_eq(oci_ref_parse(ref, &r, &err), 0);
	oci_ref_free(&r);
	snprintf(ref, sizeof(ref), "foo:%sa", tag);
	ck_assert_int_eq(oci_ref_parse(ref, &r, &err), -EINVAL);
	memset(ref, 'a', 600);
	ref[600] = '\0';
	ck_assert_int_eq(oci_ref_parse(ref, &r, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "longer than 512"));
	ck_assert(ref_tag_valid("_"));
	ck_assert(!ref_tag_valid(".a"));
	ck_assert(ref_domain_valid("a-b.c"));
	ck_assert(!ref_domain_valid("a-.c"));
	ck_assert(!ref_domain_valid("[zz]:1"));
	ck_assert(ref_repository_valid("a/b-c/d__e"));
	ck_assert(!ref_repository_valid("a/_b"));
}
END_TEST

/* ---- manifests --------------------------------------------------------------------------- */

#define DOCKER_MANIFEST                                                                            \
	"{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_DOCKER_MANIFEST "\","                       \
	"\"config\":{\"mediaType\":\"" OCI_MT_DOCKER_CONFIG "\",\"size\":1469,"                    \
	"\"digest\":\"" DIG_A "\"},"                                                               \
	"\"layers\":[{\"mediaType\":\"" OCI_MT_DOCKER_LAYER_GZIP "\",\"size\":2479,"               \
	"\"digest\":\"" DIG_B "\"},"                                                               \
	"{\"mediaType\":\"" OCI_MT_DOCKER_LAYER_GZIP "\",\"size\":0,\"digest\":\"" DIG_C "\"}]}"

START_TEST(manifest_docker)
{
	struct oci_manifest m;
	imc_error err = {0};

	ck_assert_msg(oci_manifest_parse(OCI_MT_DOCKER_MANIFEST, DOCKER_MANIFEST,
					 strlen(DOCKER_MANIFEST), &m, &err) == 0,
		      "%s", err.msg);
	ck_assert_str_eq(m.config.digest, DIG_A);
	ck_assert_int_eq(m.config.size, 1469);
	ck_assert_str_eq(m.config.media_type, OCI_MT_DOCKER_CONFIG);
	ck_assert_uint_eq(m.n_layers, 2);
	ck_assert_str_eq(m.layers[0].digest, DIG_B);
	ck_assert_int_eq(m.layers[0].size, 2479);
	ck_assert_str_eq(m.layers[1].digest, DIG_C);
	ck_assert_int_eq(m.layers[1].size, 0);
	oci_manifest_free(&m);
	/* Content-Type with parameters, or absent (the body says). */
	ck_assert_int_eq(oci_manifest_parse(OCI_MT_DOCKER_MANIFEST "; charset=utf-8",
					    DOCKER_MANIFEST, strlen(DOCKER_MANIFEST), &m, &err),
			 0);
	oci_manifest_free(&m);
	ck_assert_int_eq(
	    oci_manifest_parse(NULL, DOCKER_MANIFEST, strlen(DOCKER_MANIFEST), &m, &err), 0);
	oci_manifest_free(&m);
	/* A Content-Type contradicting the body. */
	ck_assert_int_eq(oci_manifest_parse(OCI_MT_OCI_MANIFEST, DOCKER_MANIFEST,
					    strlen(DOCKER_MANIFEST), &m, &err),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "disagrees"));
}
END_TEST

#define OCI_MANIFEST                                                                               \
	"{\"schemaVersion\":2,"                                                                    \
	"\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG "\",\"size\":10,"                         \
	"\"digest\":\"" DIG_A "\"},"                                                               \
	"\"layers\":[{\"mediaType\":\"" OCI_MT_OCI_LAYER_GZIP "\",\"size\":5,"                     \
	"\"digest\":\"" DIG_B "\",\"annotations\":{\"x\":\"y\"}},"                                 \
	"{\"mediaType\":\"" OCI_MT_OCI_LAYER_ZSTD "\",\"size\":6,\"digest\":\"" DIG_C "\"},"       \
	"{\"mediaType\":\"" OCI_MT_OCI_LAYER "\",\"size\":7,\"digest\":\"" DIG_C "\"}],"           \
	"\"annotations\":{\"org.opencontainers.image.created\":\"now\"}}"

START_TEST(manifest_oci)
{
	struct oci_manifest m;
	imc_error err = {0};
	bool is_index = true;

	/* No mediaType anywhere: OCI allows it, the fields say it is a manifest. */
	ck_assert_msg(oci_manifest_parse(NULL, OCI_MANIFEST, strlen(OCI_MANIFEST), &m, &err) == 0,
		      "%s", err.msg);
	ck_assert_uint_eq(m.n_layers, 3);
	ck_assert_str_eq(m.layers[1].media_type, OCI_MT_OCI_LAYER_ZSTD);
	ck_assert_int_eq(m.layers[2].size, 7);
	oci_manifest_free(&m);
	ck_assert_int_eq(oci_manifest_parse("application/octet-stream", OCI_MANIFEST,
					    strlen(OCI_MANIFEST), &m, &err),
			 0);
	oci_manifest_free(&m);
	ck_assert_int_eq(
	    oci_manifest_kind(NULL, OCI_MANIFEST, strlen(OCI_MANIFEST), &is_index, &err), 0);
	ck_assert(!is_index);
}
END_TEST

static const struct {
	const char *body, *why;
} bad_manifests[] = {
    {"{\"schemaVersion\":1,\"config\":{},\"layers\":[]}", "schemaVersion: 1 is not supported"},
    {"{\"config\":{},\"layers\":[]}", "schemaVersion: required"},
    {"{\"schemaVersion\":2,\"layers\":[]}", "manifest.config: required"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"" DIG_A "\"}}",
     "manifest.layers: required"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"sha256:xyz\"},\"layers\":[]}",
     "manifest.config.digest"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":-1,\"digest\":\"" DIG_A "\"},\"layers\":[]}",
     "manifest.config.size: must be between 0"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":[{\"mediaType\":\"" OCI_MT_OCI_LAYER
     "\",\"size\":1,\"digest\":\"sha256:" HEX_A "0\"}]}",
     "manifest.layers[0].digest"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":[{\"mediaType\":\"" OCI_MT_OCI_LAYER
     "\",\"digest\":\"" DIG_A "\"}]}",
     "manifest.layers[0].size: required"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":[{\"mediaType\":"
     "\"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip\",\"size\":1,"
     "\"digest\":\"" DIG_A "\"}]}",
     "non-distributable"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.cncf.helm.config.v1+json\""
     ",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":[]}",
     "not a container image config"},
    {"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
     "\",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":{}}",
     "manifest.layers: want an array"},
    {"{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_OCI_INDEX "\",\"manifests\":[]}",
     "is an index"},
    {"{\"schemaVersion\":2,\"manifests\":[]}", "is an index"},
    {"[1,2]", "want an object"},
    {"{\"schemaVersion\":2,", "malformed JSON"},
};

START_TEST(manifest_bad)
{
	struct oci_manifest m = {0};
	imc_error err = {0};
	const char *b = bad_manifests[_i].body;

	ck_assert_int_lt(oci_manifest_parse(NULL, b, strlen(b), &m, &err), 0);
	ck_assert_msg(strstr(err.msg, bad_manifests[_i].why), "want \"%s\", got \"%s\"",
		      bad_manifests[_i].why, err.msg);
	ck_assert_ptr_null(m.layers);
}
END_TEST

START_TEST(manifest_layer_cap)
{
	size_t cap = 1001 * 200 + 1000;
	char *b = malloc(cap);
	size_t n = 0;
	struct oci_manifest m = {0};
	imc_error err = {0};

	n += (size_t)snprintf(b + n, cap - n,
			      "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" OCI_MT_OCI_CONFIG
			      "\",\"size\":1,\"digest\":\"" DIG_A "\"},\"layers\":[");
	for (int i = 0; i < 1001; i++)
		n += (size_t)snprintf(b + n, cap - n,
				      "%s{\"mediaType\":\"" OCI_MT_OCI_LAYER
				      "\",\"size\":1,\"digest\":\"" DIG_B "\"}",
				      i ? "," : "");
	n += (size_t)snprintf(b + n, cap - n, "]}");
	ck_assert_int_eq(oci_manifest_parse(NULL, b, n, &m, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "at most 1000"));
	free(b);
}
END_TEST

/* ---- indexes ----------------------------------------------------------------------------- */

/* clang-format off */
#define INDEX_ENTRY(dig, platform)                                                                 \
	"{\"mediaType\":\"" OCI_MT_OCI_MANIFEST "\",\"size\":500,\"digest\":\"" dig            \
	"\",\"platform\":" platform "}"
#define PLAT(os, arch)          "{\"architecture\":\"" arch "\",\"os\":\"" os "\"}"
#define PLATV(os, arch, var)    "{\"architecture\":\"" arch "\",\"os\":\"" os "\",\"variant\":\"" var "\"}"
#define INDEX                                                                                      \
	"{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_OCI_INDEX "\",\"manifests\":["          \
	INDEX_ENTRY(DIG_C, PLAT("unknown", "unknown")) ","                                          \
	INDEX_ENTRY(DIG_A, PLAT("linux", "amd64")) ","                                              \
	INDEX_ENTRY(DIG_B, PLATV("linux", "arm64", "v8")) ","                                       \
	INDEX_ENTRY(DIG_A, PLATV("linux", "arm", "v6")) ","                                         \
	INDEX_ENTRY(DIG_C, PLATV("linux", "arm", "v7")) "]}"
/* clang-format on */

START_TEST(index_select)
{
	static const struct {
		const char *platform, *digest;
	} cases[] = {
	    {NULL, DIG_A},	    {"linux/amd64", DIG_A},    {"linux/x86_64", DIG_A},
	    {"linux/arm64", DIG_B}, {"linux/arm64/v8", DIG_B}, {"linux/aarch64", DIG_B},
	    {"linux/arm", DIG_C},   {"linux/arm/v7", DIG_C},   {"linux/arm/v6", DIG_A},
	};
	imc_error err = {0};
	bool is_index = false;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		struct oci_descriptor d;
		ck_assert_msg(oci_index_select(INDEX, strlen(INDEX), cases[i].platform, &d, &err) ==
				  0,
			      "%s: %s", cases[i].platform, err.msg);
		ck_assert_msg(strcmp(d.digest, cases[i].digest) == 0, "%s: got %s",
			      cases[i].platform, d.digest);
		ck_assert_str_eq(d.media_type, OCI_MT_OCI_MANIFEST);
		ck_assert_int_eq(d.size, 500);
		oci_descriptor_free(&d);
	}
	ck_assert_int_eq(oci_manifest_kind(NULL, INDEX, strlen(INDEX), &is_index, &err), 0);
	ck_assert(is_index);
	ck_assert(oci_media_type_is_index(OCI_MT_DOCKER_LIST));
	ck_assert(oci_media_type_is_index(OCI_MT_OCI_INDEX "; charset=utf-8"));
	ck_assert(!oci_media_type_is_index(OCI_MT_OCI_MANIFEST));
	ck_assert(!oci_media_type_is_index(NULL));
}
END_TEST

START_TEST(index_no_match)
{
	struct oci_descriptor d = {0};
	imc_error err = {0};
	const char *list = "{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_DOCKER_LIST
			   "\",\"manifests\":[" INDEX_ENTRY(DIG_B, PLAT("linux", "arm64")) "]}";

	ck_assert_int_eq(oci_index_select(INDEX, strlen(INDEX), "linux/s390x", &d, &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, "no manifest for platform linux/s390x") &&
			  strstr(err.msg, "linux/amd64, linux/arm64/v8, linux/arm/v6, "
					  "linux/arm/v7"),
		      "%s", err.msg);
	ck_assert_int_eq(oci_index_select(list, strlen(list), NULL, &d, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "available: linux/arm64/v8"));
	ck_assert_int_eq(oci_index_select(INDEX, strlen(INDEX), "linux", &d, &err), -EINVAL);
	ck_assert_int_eq(oci_index_select(INDEX, strlen(INDEX), "linux/a/b/c", &d, &err), -EINVAL);
	ck_assert_int_eq(oci_index_select("{\"schemaVersion\":2}", 19, NULL, &d, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "index.manifests: required"));
	ck_assert_ptr_null(d.digest);
}
END_TEST

/* ---- platforms --------------------------------------------------------------------------- */

START_TEST(platform_parse)
{
	static const struct {
		const char *in, *want; /* want NULL: refused */
	} cases[] = {
	    {"linux/amd64", "linux/amd64"},
	    {"linux/x86_64", "linux/amd64"},
	    {"linux/x86-64", "linux/amd64"},
	    {"linux/amd64/v1", "linux/amd64"},
	    {"linux/amd64/v3", "linux/amd64/v3"},
	    {"linux/arm64", "linux/arm64/v8"},
	    {"linux/aarch64", "linux/arm64/v8"},
	    {"linux/arm64/v8", "linux/arm64/v8"},
	    {"linux/arm64/8", "linux/arm64/v8"},
	    {"linux/arm", "linux/arm/v7"},
	    {"linux/arm/v6", "linux/arm/v6"},
	    {"linux/armhf", "linux/arm/v7"},
	    {"linux/armel", "linux/arm/v6"},
	    {"linux/i386", "linux/386"},
	    {"linux/s390x", "linux/s390x"},
	    {"windows/amd64", "windows/amd64"},
	    {"linux", NULL},
	    {"linux/", NULL},
	    {"/amd64", NULL},
	    {"linux/arm/v7/x", NULL},
	    {"Linux/amd64", NULL},
	    {"linux/amd 64", NULL},
	    {"../..", NULL},
	    {"linux/.hidden", NULL},
	    {"", NULL},
	};
	char out[OCI_PLATFORM_MAX], again[OCI_PLATFORM_MAX];
	char long_part[160];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		imc_error err = {0};
		int r = oci_platform_normalize(cases[i].in, out, sizeof(out), &err);
		if (!cases[i].want) {
			ck_assert_msg(r == -EINVAL, "%s: accepted as %s", cases[i].in, out);
			ck_assert_ptr_nonnull(strstr(err.msg, "platform \""));
			continue;
		}
		ck_assert_msg(r == 0, "%s: %s", cases[i].in, err.msg);
		ck_assert_str_eq(out, cases[i].want);
		/* normalized stays normalized */
		ck_assert_int_eq(oci_platform_normalize(out, again, sizeof(again), NULL), 0);
		ck_assert_str_eq(again, out);
	}
	memset(long_part, 'a', sizeof(long_part) - 1);
	long_part[sizeof(long_part) - 1] = '\0';
	snprintf(out, sizeof(out), "linux/%s", long_part);
	ck_assert_int_eq(oci_platform_normalize(out, again, sizeof(again), NULL), -EINVAL);
}
END_TEST

/* What an image config declares against the platform asked for (image-spec: os and
 * architecture must match, the variant too when the config has one). */
START_TEST(platform_match_config)
{
	static const struct {
		const char *want, *os, *arch, *variant, *got; /* got NULL: no match */
	} cases[] = {
	    {"linux/amd64", "linux", "amd64", NULL, "linux/amd64"},
	    {"linux/amd64", "linux", "x86_64", "", "linux/amd64"},
	    {"linux/amd64", "Linux", "AMD64", NULL, "linux/amd64"},
	    {"linux/arm64/v8", "linux", "arm64", NULL, "linux/arm64/v8"},
	    {"linux/arm64", "linux", "aarch64", "v8", "linux/arm64/v8"},
	    {"linux/arm/v6", "linux", "arm", NULL, "linux/arm/v6"}, /* no variant: any */
	    {"linux/arm/v7", "linux", "arm", "v7", "linux/arm/v7"},
	    {"linux/arm64", NULL, NULL, NULL, "linux/arm64/v8"}, /* names none: any */
	    {"linux/arm64", "", "", NULL, "linux/arm64/v8"},
	    {"linux/arm64", "linux", "amd64", NULL, NULL},
	    {"linux/amd64", "linux", "arm64", NULL, NULL},
	    {"linux/amd64", "windows", "amd64", NULL, NULL},
	    {"linux/arm/v7", "linux", "arm", "v6", NULL},
	    {"linux/amd64", "linux", "amd 64", NULL, NULL},
	};
	char got[OCI_PLATFORM_MAX];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		imc_error err = {0};
		int r = oci_platform_match_config(cases[i].want, cases[i].os, cases[i].arch,
						  cases[i].variant, got, sizeof(got), &err);
		if (cases[i].got) {
			ck_assert_msg(r == 0, "%zu: %s", i, err.msg);
			ck_assert_str_eq(got, cases[i].got);
			continue;
		}
		ck_assert_msg(r == -ENOENT, "%zu: %s/%s matched %s", i, cases[i].os, cases[i].arch,
			      cases[i].want);
		ck_assert_msg(strncmp(err.msg, "no manifest for platform ", 25) == 0, "%s",
			      err.msg);
	}
	ck_assert_int_eq(oci_platform_match_config("linux/arm64", "linux", "amd64", NULL, got,
						   sizeof(got), &(imc_error){0}),
			 -ENOENT);
	{
		imc_error err = {0};
		oci_platform_match_config("linux/arm64", "linux", "amd64", NULL, got, sizeof(got),
					  &err);
		ck_assert_str_eq(err.msg,
				 "no manifest for platform linux/arm64 (available: linux/amd64)");
		ck_assert_int_eq(oci_platform_match_config("linux", "linux", "amd64", NULL, got,
							   sizeof(got), &err),
				 -EINVAL);
	}
}
END_TEST

/* ---- diff_ids ---------------------------------------------------------------------------- */

START_TEST(diff_ids_parse)
{
	struct oci_descriptor layers[2] = {
	    {.media_type = OCI_MT_OCI_LAYER_GZIP, .digest = DIG_A, .size = 1},
	    {.media_type = OCI_MT_OCI_LAYER_GZIP, .digest = DIG_B, .size = 1},
	};
	struct oci_manifest m = {.layers = layers, .n_layers = 2};
	static const struct {
		const char *config, *msg; /* msg NULL: accepted */
		int code;
	} cases[] = {
	    {"{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" DIG_C "\",\"" DIG_A "\"]}}", NULL,
	     0},
	    {"{\"rootfs\":{\"diff_ids\":[\"" DIG_C "\",\"" DIG_A "\"]}}", NULL, 0},
	    {"{}", "image config.rootfs: required", -EINVAL},
	    {"{\"rootfs\":{\"type\":\"layers\"}}", "rootfs.diff_ids: required", -EINVAL},
	    {"{\"rootfs\":{\"diff_ids\":[\"" DIG_C "\"]}}",
	     "layer 1 " DIG_B
	     ": no diff_id for it in the image config (rootfs.diff_ids has 1 for 2 "
	     "layers)",
	     -EINVAL},
	    {"{\"rootfs\":{\"diff_ids\":[]}}", "layer 0 " DIG_A ": no diff_id", -EINVAL},
	    {"{\"rootfs\":{\"diff_ids\":[\"" DIG_C "\",\"" DIG_A "\",\"" DIG_B "\"]}}",
	     "rootfs.diff_ids[2]: names no layer (rootfs.diff_ids has 3 for 2 layers)", -EINVAL},
	    {"{\"rootfs\":{\"diff_ids\":[\"" DIG_C "\",\"sha256:abc\"]}}",
	     "rootfs.diff_ids[1]: want a sha256 digest (for layer 1 " DIG_B ")", -EINVAL},
	    {"{\"rootfs\":{\"diff_ids\":[\"" DIG_C "\",7]}}", "rootfs.diff_ids[1]: want a sha256",
	     -EINVAL},
	    {"{\"rootfs\":{\"type\":\"other\",\"diff_ids\":[]}}", "is not \"layers\"", -ENOTSUP},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		json_t *j = json_loads(cases[i].config, 0, NULL);
		imc_error err = {0};
		char **ids = NULL;
		int r;

		ck_assert_ptr_nonnull(j);
		r = image_diff_ids_parse(j, &m, &ids, &err);
		json_decref(j);
		ck_assert_msg(r == cases[i].code, "%s: %d (%s)", cases[i].config, r, err.msg);
		if (!cases[i].msg) {
			ck_assert_str_eq(ids[0], DIG_C);
			ck_assert_str_eq(ids[1], DIG_A);
			ck_assert_ptr_null(ids[2]);
			free(ids[0]);
			free(ids[1]);
			free(ids);
			continue;
		}
		ck_assert_ptr_null(ids);
		ck_assert_msg(strstr(err.msg, cases[i].msg), "%s: %s", cases[i].config, err.msg);
	}
}
END_TEST

/* ---- whiteouts, paths, registry helpers -------------------------------------------------- */

START_TEST(whiteout_kind)
{
	static const struct {
		const char *path;
		enum builder_whiteout kind;
		const char *target;
	} cases[] = {
	    {".wh.foo", BUILDER_WHITEOUT_FILE, "foo"},
	    {"a/b/.wh.c", BUILDER_WHITEOUT_FILE, "a/b/c"},
	    {"a/.wh..hidden", BUILDER_WHITEOUT_FILE, "a/.hidden"},
	    {"a/.wh..wh..opq", BUILDER_WHITEOUT_OPAQUE, NULL},
	    {".wh..wh..opq", BUILDER_WHITEOUT_OPAQUE, NULL},
	    {"a/.wh..wh.plnk", BUILDER_WHITEOUT_NONE, NULL},
	    {"a/.wh.", BUILDER_WHITEOUT_NONE, NULL},
	    /* whiteouts of "." and ".." would remove the directory or its parent (found by
	     * fuzz_layer): not whiteouts, and the applier refuses the layer */
	    {".wh..", BUILDER_WHITEOUT_NONE, NULL},
	    {".wh...", BUILDER_WHITEOUT_NONE, NULL},
	    {"a/.wh...", BUILDER_WHITEOUT_NONE, NULL},
	    {"a/b.wh.c", BUILDER_WHITEOUT_NONE, NULL},
	    {".wh.a/b", BUILDER_WHITEOUT_NONE, NULL},
	    {"plain", BUILDER_WHITEOUT_NONE, NULL},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		char *target = NULL;
		enum builder_whiteout k = builder_whiteout_kind(cases[i].path, &target);
		ck_assert_msg(k == cases[i].kind, "%s: kind %d", cases[i].path, (int)k);
		ck_assert_pstr_eq(target, cases[i].target);
		free(target);
	}
}
END_TEST

START_TEST(path_clean)
{
	static const char *const cases[][2] = {
	    {"a/b", "a/b"},	{"/a//b/", "a/b"},   {"./a/./b", "a/b"}, {"a/b/../c", "a/c"},
	    {"/", ""},		{".", ""},	     {"a/..", ""},	 {"...", "..."},
	    {"a/..b", "a/..b"}, {"/abs/x", "abs/x"},
	};
	static const char *const escapes[] = {"..", "../../etc/passwd", "a/../../b", "/../x",
					      "./a/b/../../../c"};
	char out[64], deep[2100];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		ck_assert_int_eq(layer_path_clean(cases[i][0], out, sizeof(out)), 0);
		ck_assert_msg(strcmp(out, cases[i][1]) == 0, "%s -> %s", cases[i][0], out);
	}
	for (size_t i = 0; i < IMC_ARRAY_SIZE(escapes); i++)
		ck_assert_msg(layer_path_clean(escapes[i], out, sizeof(out)) == -EPERM, "%s",
			      escapes[i]);
	ck_assert_int_eq(layer_path_clean("abcdef/ghijk", out, 8), -ENAMETOOLONG);
	/* 512 components are fine, 513 are not */
	for (size_t i = 0; i < 513; i++)
		memcpy(deep + 2 * i, "d/", 2);
	deep[2 * 512 - 1] = '\0';
	ck_assert_int_eq(layer_path_clean(deep, deep, sizeof(deep)), 0);
	deep[2 * 512 - 1] = '/';
	deep[2 * 513 - 1] = '\0';
	ck_assert_int_eq(layer_path_clean(deep, deep, sizeof(deep)), -ELOOP);
	ck_assert(layer_device_allowed(S_IFCHR, 1, 3));
	ck_assert(layer_device_allowed(S_IFCHR, 5, 2));
	ck_assert(layer_device_allowed(S_IFIFO, 0, 0));
	ck_assert(!layer_device_allowed(S_IFCHR, 1, 1)); /* /dev/mem */
	ck_assert(!layer_device_allowed(S_IFBLK, 8, 0)); /* /dev/sda */
	ck_assert(!layer_device_allowed(S_IFBLK, 1, 3));
}
END_TEST

/* The scheme oci_registry_open picks for a registry (net/'s one loopback rule). */
static bool registry_plain_http(const char *registry, const char *const *insecure)
{
	struct oci_ref ref = {.registry = (char *)registry, .repository = (char *)"x"};
	struct oci_registry *r = NULL;
	imc_error err = {0};
	bool plain;

	ck_assert_msg(
	    oci_registry_open(&(struct oci_registry_opts){.insecure_registries = insecure}, &ref,
			      &r, &err) == 0,
	    "%s", err.msg);
	plain = oci_registry_plain_http(r);
	oci_registry_close(r);
	return plain;
}

START_TEST(registry_helpers)
{
	const char *const insecure[] = {"reg.internal:5000", "plain.example", NULL};
	char *realm = NULL, *service = NULL, *scope = NULL, buf[256];

	ck_assert(registry_plain_http("127.0.0.1:5000", NULL));
	ck_assert(registry_plain_http("127.1.2.3", NULL));
	ck_assert(registry_plain_http("localhost:5000", NULL));
	ck_assert(registry_plain_http("[::1]:5000", NULL));
	ck_assert(!registry_plain_http("128.0.0.1:5000", NULL));
	ck_assert(!registry_plain_http("registry-1.docker.io", NULL));
	ck_assert(!registry_plain_http("localhost.evil.com", NULL));
	ck_assert(!registry_plain_http("127.evil.example:5000", NULL));
	ck_assert(!registry_plain_http("127.0.0.1.nip.io", NULL));
	ck_assert(registry_plain_http("reg.internal:5000", insecure));
	ck_assert(!registry_plain_http("reg.internal:5001", insecure));
	ck_assert(registry_plain_http("plain.example:8080", insecure));

	ck_assert_int_eq(registry_parse_bearer("Bearer realm=\"https://auth.docker.io/token\","
					       "service=\"registry.docker.io\",scope=\"repository:"
					       "library/busybox:pull\"",
					       &realm, &service, &scope),
			 0);
	ck_assert_str_eq(realm, "https://auth.docker.io/token");
	ck_assert_str_eq(service, "registry.docker.io");
	ck_assert_str_eq(scope, "repository:library/busybox:pull");
	free(realm);
	free(service);
	free(scope);
	ck_assert_int_eq(registry_parse_bearer("bearer realm=http://h/t, scope=\"a\\\"b\"", &realm,
					       &service, &scope),
			 0);
	ck_assert_str_eq(realm, "http://h/t");
	ck_assert_ptr_null(service);
	ck_assert_str_eq(scope, "a\"b");
	free(realm);
	free(scope);
	ck_assert_int_eq(registry_parse_bearer("Basic realm=\"x\"", &realm, &service, &scope),
			 -EINVAL);
	ck_assert_int_eq(registry_parse_bearer("Bearer service=\"x\"", &realm, &service, &scope),
			 -EINVAL);
	ck_assert_int_eq(registry_parse_bearer("Bearer realm", &realm, &service, &scope), -EINVAL);

	const char *body = "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest "
			   "unknown\",\"detail\":{\"Tag\":\"nope\"}}]}";
	registry_error_text(404, body, strlen(body), buf, sizeof(buf));
	ck_assert_str_eq(buf, "manifest unknown (MANIFEST_UNKNOWN, HTTP 404)");
	registry_error_text(502, "<html>bad gateway</html>", 24, buf, sizeof(buf));
	ck_assert_str_eq(buf, "HTTP 502");
	registry_error_text(401, "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}", 36, buf,
			    sizeof(buf));
	ck_assert_str_eq(buf, "UNAUTHORIZED (HTTP 401)");
	body = "{\"errors\":[{\"code\":\"X\",\"message\":\"line\\nbreak\"}]}";
	registry_error_text(400, body, strlen(body), buf, sizeof(buf));
	ck_assert_str_eq(buf, "line?break (X, HTTP 400)");
	{
		char a[800], b[800], c[800];
		registry_inflight_key("ab", "reg1:5000", "t1", a, sizeof(a));
		registry_inflight_key("ab", "reg1:5000", "t2", b, sizeof(b));
		registry_inflight_key("ab", "reg2:5000", "t1", c, sizeof(c));
		ck_assert_str_ne(a, b); /* another tenant never waits on this download */
		ck_assert_str_ne(a, c); /* nor another registry's build */
		registry_inflight_key("ab", "reg1:5000", "t1", b, sizeof(b));
		ck_assert_str_eq(a, b);
	}
}
END_TEST

/* A declared blob size is bounded before any byte is written or asked for: by the cap
 * (EFBIG) and by the blob store's free space (ENOSPC).  The registry's port has nobody
 * listening: a request would fail otherwise. */
START_TEST(blob_size_bounds)
{
	char dir[] = "/tmp/imc-blobs-XXXXXX", path[600];
	struct oci_ref ref = {.registry = (char *)"127.0.0.1:1", .repository = (char *)"x"};
	struct oci_descriptor d = {
	    .digest = (char *)"sha256:"
			      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	    .size = 2 << 20};
	struct oci_registry *r = NULL;
	imc_error err = {0};

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(
	    oci_registry_open(&(struct oci_registry_opts){.blob_max = 1 << 20}, &ref, &r, &err), 0);
	ck_assert_int_eq(oci_registry_fetch_blob(r, &d, dir, NULL, NULL, &err), -EFBIG);
	ck_assert_msg(strstr(err.msg, "more than the 1048576 allowed"), "%s", err.msg);
	oci_registry_close(r);
	ck_assert_int_eq(
	    oci_registry_open(&(struct oci_registry_opts){.blob_max = UINT64_MAX}, &ref, &r, &err),
	    0);
	d.size = INT64_MAX / 2;
	ck_assert_int_eq(oci_registry_fetch_blob(r, &d, dir, NULL, NULL, &err), -ENOSPC);
	ck_assert_msg(strstr(err.msg, "bytes free"), "%s", err.msg);
	oci_registry_close(r);
	snprintf(path, sizeof(path), "%s/sha256", dir);
	ck_assert_int_eq(rmdir(path), 0); /* empty: no temp file was made */
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* imcctl push's registry scheme follows the one loopback rule: 127.evil.example is a name, so
 * it gets HTTPS (it used to get plain HTTP for starting with "127."). */
START_TEST(push_loopback_rule)
{
	struct oci_pusher *p = NULL;
	imc_error err = {0};
	bool have = true;

	ck_assert_int_eq(oci_push_open("127.evil.example:5000/x:y", NULL, &p, &err), 0);
	ck_assert_int_lt(oci_push_blob_exists(p, "sha256:00", &have, &err), 0);
	ck_assert_msg(strstr(err.msg, "https://127.evil.example:5000/"), "%s", err.msg);
	oci_push_close(p);
}
END_TEST

START_TEST(registry_auth_helpers)
{
	struct oci_registry_cred c = {0};
	imc_error err = {0};
	char *tok = NULL;
	int64_t exp = 0;
	/* "alice:s3cr:et" and "bob:pw" in base64 */
	const char *file = "{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":"
			   "\"YWxpY2U6czNjcjpldA==\"},\"reg.example:5000\":{\"auth\":"
			   "\"Ym9iOnB3\",\"email\":\"x@y\"},\"tok.example\":{\"identitytoken\":"
			   "\"idt\"},\"bad.example\":{\"auth\":\"bm8tY29sb24=\"},"
			   "\"plain.example\":{\"username\":\"u\",\"password\":\"p\"}},"
			   "\"credsStore\":\"desktop\"}";

	ck_assert(registry_key_matches("docker.io", "registry-1.docker.io"));
	ck_assert(registry_key_matches("https://index.docker.io/v1/", "registry-1.docker.io"));
	ck_assert(registry_key_matches("http://Reg.Example:5000/", "reg.example:5000"));
	ck_assert(!registry_key_matches("reg.example", "reg.example:5000"));
	ck_assert(!registry_key_matches("reg.example:50001", "reg.example:5000"));
	ck_assert(!registry_key_matches("https://", "reg.example"));

	ck_assert_int_eq(
	    registry_auth_file_lookup(file, strlen(file), "registry-1.docker.io", &c, &err), 0);
	ck_assert_pstr_eq(c.username, "alice");
	ck_assert_pstr_eq(c.password, "s3cr:et");
	free(c.username);
	free(c.password);
	c = (struct oci_registry_cred){0};
	ck_assert_int_eq(
	    registry_auth_file_lookup(file, strlen(file), "reg.example:5000", &c, &err), 0);
	ck_assert_pstr_eq(c.username, "bob");
	ck_assert_pstr_eq(c.password, "pw");
	free(c.username);
	free(c.password);
	c = (struct oci_registry_cred){0};
	ck_assert_int_eq(registry_auth_file_lookup(file, strlen(file), "tok.example", &c, &err), 0);
	ck_assert_pstr_eq(c.identity_token, "idt");
	ck_assert_ptr_null(c.username);
	free(c.identity_token);
	c = (struct oci_registry_cred){0};
	ck_assert_int_eq(registry_auth_file_lookup(file, strlen(file), "plain.example", &c, &err),
			 0);
	ck_assert_pstr_eq(c.username, "u");
	free(c.username);
	free(c.password);
	c = (struct oci_registry_cred){0};
	ck_assert_int_eq(registry_auth_file_lookup(file, strlen(file), "other.example", &c, &err),
			 0);
	ck_assert_ptr_null(c.username);
	/* "no-colon": an auth that is not user:password; the message names the entry only */
	ck_assert_int_lt(registry_auth_file_lookup(file, strlen(file), "bad.example", &c, &err), 0);
	ck_assert_msg(strstr(err.msg, "auths.bad.example.auth") && !strstr(err.msg, "no-colon"),
		      "%s", err.msg);
	ck_assert_ptr_null(c.username);
	ck_assert_int_lt(registry_auth_file_lookup("{\"auths\":[]}", 12, "x", &c, &err), 0);

	const char *resp = "{\"token\":\"abc\",\"expires_in\":300}";
	ck_assert_int_eq(registry_token_parse(resp, strlen(resp), 1000, &tok, &exp, &err), 0);
	ck_assert_str_eq(tok, "abc");
	ck_assert_int_eq(exp, 1000 + 300 - 10);
	free(tok);
	resp = "{\"access_token\":\"xyz\"}"; /* no expires_in: the spec's 60 s */
	ck_assert_int_eq(registry_token_parse(resp, strlen(resp), 0, &tok, &exp, &err), 0);
	ck_assert_str_eq(tok, "xyz");
	ck_assert_int_eq(exp, 60 - 10);
	free(tok);
	resp = "{\"token\":\"a b\"}";
	ck_assert_int_lt(registry_token_parse(resp, strlen(resp), 0, &tok, &exp, &err), 0);
	resp = "{\"token\":\"t\",\"expires_in\":\"soon\"}";
	ck_assert_int_lt(registry_token_parse(resp, strlen(resp), 0, &tok, &exp, &err), 0);
}
END_TEST

/* ---- layers ------------------------------------------------------------------------------ */

enum ent_type { E_FILE, E_DIR, E_SYMLINK, E_HARDLINK, E_FIFO, E_CHR, E_SPARSE };

struct ent {
	enum ent_type type;
	const char *path;
	const char *data; /* file contents; link target */
	unsigned mode;	  /* permission bits; 0 = 0644 / 0755 */
	int uid, gid;
	long mtime;	   /* 0 = 1000000 */
	const char *xattr; /* "name=value" */
};

/* tmp_top is made and removed by the parent process (so a failed test leaves nothing behind);
 * each test works in its own tmp_root below it. */
static char tmp_top[256], tmp_root[320];

static void setup_top(void)
{
	snprintf(tmp_top, sizeof(tmp_top), "/tmp/imc-test-builder-XXXXXX");
	if (!mkdtemp(tmp_top))
		abort();
}

static void teardown_top(void)
{
	imc_error err = {0};
	int dfd = open("/tmp", O_RDONLY | O_DIRECTORY);

	if (dfd < 0 || imc_rm_rf_at(dfd, strrchr(tmp_top, '/') + 1, &err) < 0)
		fprintf(stderr, "cannot remove %s: %s\n", tmp_top, err.msg);
	if (dfd >= 0)
		close(dfd);
}

static void setup_tmp(void)
{
	snprintf(tmp_root, sizeof(tmp_root), "%s/t-XXXXXX", tmp_top);
	ck_assert_ptr_nonnull(mkdtemp(tmp_root));
}

static char *tpath(const char *rel)
{
	static char buf[4][512];
	static int n;
	char *b = buf[n++ % 4];

	snprintf(b, 512, "%s/%s", tmp_root, rel);
	return b;
}

/* Write a tar with the given filter ("gzip", "zstd", "none") to tmp_root/name. */
static void write_layer(const char *name, const char *filter, const struct ent *ents, size_t n)
{
	struct archive *a = archive_write_new();

	ck_assert_int_eq(archive_write_set_format_pax(a), ARCHIVE_OK);
	if (strcmp(filter, "gzip") == 0)
		ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
	else if (strcmp(filter, "zstd") == 0)
		ck_assert_int_eq(archive_write_add_filter_zstd(a), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_open_filename(a, tpath(name)), ARCHIVE_OK);
	for (size_t i = 0; i < n; i++) {
		const struct ent *en = &ents[i];
		struct archive_entry *e = archive_entry_new();
		size_t len = en->data ? strlen(en->data) : 0;
		archive_entry_set_pathname(e, en->path);
		archive_entry_set_uid(e, en->uid);
		archive_entry_set_gid(e, en->gid);
		archive_entry_set_mtime(e, en->mtime ? en->mtime : 1000000, 0);
		switch (en->type) {
		case E_FILE:
		case E_SPARSE:
			archive_entry_set_filetype(e, AE_IFREG);
			archive_entry_set_perm(e, en->mode ? en->mode : 0644);
			archive_entry_set_size(e, en->type == E_SPARSE ? (1 << 20) + (la_int64_t)len
								       : (la_int64_t)len);
			if (en->type == E_SPARSE) {
				archive_entry_sparse_add_entry(e, 0, (la_int64_t)len);
				archive_entry_sparse_add_entry(e, 1 << 20, (la_int64_t)len);
			}
			break;
		case E_DIR:
			archive_entry_set_filetype(e, AE_IFDIR);
			archive_entry_set_perm(e, en->mode ? en->mode : 0755);
			break;
		case E_SYMLINK:
			archive_entry_set_filetype(e, AE_IFLNK);
			archive_entry_set_perm(e, 0777);
			archive_entry_set_symlink(e, en->data);
			len = 0;
			break;
		case E_HARDLINK:
			archive_entry_set_filetype(e, AE_IFREG);
			archive_entry_set_perm(e, 0644);
			archive_entry_set_hardlink(e, en->data);
			len = 0;
			break;
		case E_FIFO:
			archive_entry_set_filetype(e, AE_IFIFO);
			archive_entry_set_perm(e, en->mode ? en->mode : 0600);
			break;
		case E_CHR:
			archive_entry_set_filetype(e, AE_IFCHR);
			archive_entry_set_perm(e, 0666);
			archive_entry_set_rdevmajor(e, 1);
			archive_entry_set_rdevminor(e, 3);
			break;
		}
		if (en->xattr) {
			const char *eq = strchr(en->xattr, '=');
			char xname[128];
			snprintf(xname, sizeof(xname), "%.*s", (int)(eq - en->xattr), en->xattr);
			archive_entry_xattr_add_entry(e, xname, eq + 1, strlen(eq + 1));
		}
		/* WARN: a non-ASCII name the C locale cannot translate, written as is. */
		int r = archive_write_header(a, e);
		ck_assert_msg(r == ARCHIVE_OK || r == ARCHIVE_WARN, "%s", archive_error_string(a));
		if (en->type == E_SPARSE) {
			/* The writer takes the whole logical contents and skips the hole. */
			static char zeros[1 << 20];
			size_t hole = (1u << 20) - len;
			ck_assert_int_eq(archive_write_data(a, en->data, len), (la_ssize_t)len);
			ck_assert_int_eq(archive_write_data(a, zeros, hole), (la_ssize_t)hole);
			ck_assert_int_eq(archive_write_data(a, en->data, len), (la_ssize_t)len);
		} else if (len) {
			ck_assert_int_eq(archive_write_data(a, en->data, len), (la_ssize_t)len);
		}
		archive_entry_free(e);
	}
	ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
}

static int apply(const char *root, const char *layer, imc_error *err)
{
	int rootfd = open(tpath(root), O_RDONLY | O_DIRECTORY);
	int fd = open(tpath(layer), O_RDONLY);
	int r;

	ck_assert_int_ge(rootfd, 0);
	ck_assert_int_ge(fd, 0);
	r = builder_layer_apply(rootfd, fd, "layer test", err);
	close(fd);
	close(rootfd);
	return r;
}

static void apply_ok(const char *root, const char *layer)
{
	imc_error err = {0};

	ck_assert_msg(apply(root, layer, &err) == 0, "%s", err.msg);
}

static char *slurp(const char *rel)
{
	static char buf[4096];
	int fd = open(tpath(rel), O_RDONLY | O_NOFOLLOW);
	ssize_t n;

	ck_assert_msg(fd >= 0, "open %s: %s", rel, strerror(errno));
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	ck_assert_int_ge(n, 0);
	buf[n] = '\0';
	return buf;
}

static bool exists(const char *rel)
{
	struct stat st;

	return lstat(tpath(rel), &st) == 0;
}

static struct stat lst(const char *rel)
{
	struct stat st;

	ck_assert_msg(lstat(tpath(rel), &st) == 0, "lstat %s: %s", rel, strerror(errno));
	return st;
}

START_TEST(layer_basic)
{
	const struct ent ents[] = {
	    {.type = E_DIR,
	     .path = "a/",
	     .data = NULL,
	     .mode = 0750,
	     .uid = 1000,
	     .gid = 1001,
	     .mtime = 5000},
	    {.type = E_FILE,
	     .path = "a/f",
	     .data = "hello",
	     .mode = 0640,
	     .uid = 1000,
	     .gid = 1001,
	     .mtime = 12345,
	     .xattr = "user.test=value"},
	    {.type = E_SYMLINK,
	     .path = "a/l",
	     .data = "f",
	     .mode = 0,
	     .uid = 7,
	     .gid = 8,
	     .mtime = 0},
	    {.type = E_HARDLINK, .path = "a/h", .data = "a/f"},
	    {.type = E_FILE, .path = "x/y/z", .data = "implicit parents"},
	    {.type = E_FILE, .path = "s", .data = "setuid", .mode = 04755, .uid = 1, .gid = 2},
	    {.type = E_FIFO, .path = "p", .data = NULL, .mode = 0620},
	    {.type = E_DIR, .path = "./a/sub", .data = NULL, .mode = 0700},
	    {.type = E_FILE, .path = "a/sub/g", .data = "g"},
	    {.type = E_SPARSE, .path = "sparse", .data = "edge"},
	    {.type = E_FILE, .path = "empty", .data = ""},
	    {.type = E_FILE, .path = "utf8-\xc3\xa9t\xc3\xa9", .data = "x"},
	};
	char sparse[16];
	struct stat st;

	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("l1.tar.gz", "gzip", ents, IMC_ARRAY_SIZE(ents));
	apply_ok("root", "l1.tar.gz");

	st = lst("root/a");
	ck_assert(S_ISDIR(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0750);
	ck_assert_uint_eq(st.st_uid, 1000);
	ck_assert_uint_eq(st.st_gid, 1001);
	ck_assert_int_eq(st.st_mtime, 5000); /* set after a/f, a/l, a/h, a/sub were made */
	st = lst("root/a/f");
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0640);
	ck_assert_uint_eq(st.st_uid, 1000);
	ck_assert_int_eq(st.st_mtime, 12345);
	ck_assert_uint_eq(st.st_nlink, 2);
	ck_assert_str_eq(slurp("root/a/f"), "hello");
	char xv[32] = "";
	ck_assert_int_eq(getxattr(tpath("root/a/f"), "user.test", xv, sizeof(xv)), 5);
	ck_assert_str_eq(xv, "value");
	ck_assert_uint_eq(lst("root/a/h").st_ino, st.st_ino);
	st = lst("root/a/l");
	ck_assert(S_ISLNK(st.st_mode));
	ck_assert_uint_eq(st.st_uid, 7);
	char target[16] = "";
	ck_assert_int_eq(readlink(tpath("root/a/l"), target, sizeof(target)), 1);
	ck_assert_str_eq(slurp("root/x/y/z"), "implicit parents");
	ck_assert_uint_eq(lst("root/x").st_mode & 07777, 0755);
	ck_assert_uint_eq(lst("root/x/y").st_mode & 07777, 0755);
	st = lst("root/s");
	ck_assert_uint_eq(st.st_mode & 07777, 04755);
	ck_assert_uint_eq(st.st_uid, 1);
	ck_assert_uint_eq(st.st_gid, 2);
	st = lst("root/p");
	ck_assert(S_ISFIFO(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0620);
	ck_assert_uint_eq(lst("root/a/sub").st_mode & 07777, 0700);
	ck_assert_str_eq(slurp("root/a/sub/g"), "g");
	st = lst("root/sparse");
	ck_assert_int_eq(st.st_size, (1 << 20) + 4);
	ck_assert_int_lt(st.st_blocks * 512, 1 << 20); /* the hole stayed a hole */
	int fd = open(tpath("root/sparse"), O_RDONLY);
	ck_assert_int_eq(pread(fd, sparse, 4, 0), 4);
	ck_assert_int_eq(memcmp(sparse, "edge", 4), 0);
	ck_assert_int_eq(pread(fd, sparse, 4, 1000), 4);
	ck_assert_int_eq(memcmp(sparse, "\0\0\0\0", 4), 0);
	ck_assert_int_eq(pread(fd, sparse, 4, 1 << 20), 4);
	ck_assert_int_eq(memcmp(sparse, "edge", 4), 0);
	close(fd);
	ck_assert_int_eq(lst("root/empty").st_size, 0);
	ck_assert(exists("root/utf8-\xc3\xa9t\xc3\xa9"));
}
END_TEST

/* Blocks of zeros written as data in the tar become holes, and read back as zeros. */
START_TEST(layer_zero_blocks)
{
	static char data[(2 << 20) + 2];
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	char buf[8];
	struct stat st;

	memset(data, 'a', 5000);		  /* a block and a bit */
	memcpy(data + (1 << 20) + 100, "mid", 3); /* one block in the middle */
	memset(data + sizeof(data) - 2, 'e', 2);  /* the tail, unaligned */
	ck_assert_int_eq(archive_write_set_format_pax(a), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_open_filename(a, tpath("z.tar.gz")), ARCHIVE_OK);
	archive_entry_set_pathname(e, "z");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, sizeof(data));
	ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_data(a, data, sizeof(data)), (la_ssize_t)sizeof(data));
	ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
	archive_entry_free(e);
	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	apply_ok("root", "z.tar.gz");
	st = lst("root/z");
	ck_assert_int_eq(st.st_size, (2 << 20) + 2);
	ck_assert_int_le(st.st_blocks * 512, 4 * 4096 + 4096);
	int fd = open(tpath("root/z"), O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 4, 4998), 4);
	ck_assert_int_eq(memcmp(buf, "aa\0\0", 4), 0);
	ck_assert_int_eq(pread(fd, buf, 3, (1 << 20) + 100), 3);
	ck_assert_int_eq(memcmp(buf, "mid", 3), 0);
	ck_assert_int_eq(pread(fd, buf, 4, (2 << 20) - 2), 4);
	ck_assert_int_eq(memcmp(buf, "\0\0ee", 4), 0);
	close(fd);
}
END_TEST

START_TEST(layer_devices)
{
	const struct ent ents[] = {{.type = E_CHR, .path = "dev/null"}};
	struct stat st;

	if (geteuid() != 0)
		return; /* mknod of a device needs root */
	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("dev.tar", "none", ents, 1);
	apply_ok("root", "dev.tar");
	st = lst("root/dev/null");
	ck_assert(S_ISCHR(st.st_mode));
	ck_assert_uint_eq(major(st.st_rdev), 1);
	ck_assert_uint_eq(minor(st.st_rdev), 3);
	ck_assert_uint_eq(st.st_mode & 07777, 0666);
}
END_TEST

START_TEST(layer_whiteouts)
{
	const struct ent lower[] = {
	    {.type = E_FILE, .path = "d/keep", .data = "k"},
	    {.type = E_FILE, .path = "d/gone", .data = "g"},
	    {.type = E_FILE, .path = "e/sub/file", .data = "f"},
	    {.type = E_FILE, .path = "o/old1", .data = "1"},
	    {.type = E_FILE, .path = "o/olddir/x", .data = "x"},
	    {.type = E_FILE, .path = "o/sub/lower", .data = "l"},
	    {.type = E_FILE, .path = "linked", .data = "shared"},
	    {.type = E_HARDLINK, .path = "d/hl", .data = "linked"},
	};
	const struct ent upper[] = {
	    {.type = E_FILE, .path = "d/.wh.gone"},
	    {.type = E_FILE, .path = ".wh.e"},
	    {.type = E_FILE, .path = "d/.wh.nothing-there"},
	    {.type = E_FILE, .path = "nodir/.wh.x"},
	    {.type = E_FILE, .path = "o/new", .data = "n"},
	    {.type = E_FILE, .path = "o/sub/newer", .data = "n2"},
	    {.type = E_FILE, .path = "o/.wh..wh..opq"},
	    {.type = E_FILE, .path = "o/after", .data = "a"},
	    {.type = E_FILE, .path = "new-then-whiteout", .data = "stay"},
	    {.type = E_FILE, .path = ".wh.new-then-whiteout"},
	    {.type = E_FILE, .path = "d/hl", .data = "replaced"},
	    {.type = E_FILE, .path = ".wh..wh.plnk"},
	};

	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("lower.tar", "none", lower, IMC_ARRAY_SIZE(lower));
	write_layer("upper.tar.zst", "zstd", upper, IMC_ARRAY_SIZE(upper));
	apply_ok("root", "lower.tar");
	apply_ok("root", "upper.tar.zst");
	ck_assert(exists("root/d/keep"));
	ck_assert(!exists("root/d/gone"));
	ck_assert(!exists("root/e"));
	ck_assert(!exists("root/d/.wh.gone"));
	ck_assert(!exists("root/nodir"));
	/* opaque: lower contents gone, this layer's entries (before and after) kept */
	ck_assert(!exists("root/o/old1"));
	ck_assert(!exists("root/o/olddir"));
	ck_assert(!exists("root/o/sub/lower"));
	ck_assert_str_eq(slurp("root/o/new"), "n");
	ck_assert_str_eq(slurp("root/o/sub/newer"), "n2");
	ck_assert_str_eq(slurp("root/o/after"), "a");
	ck_assert(!exists("root/o/.wh..wh..opq"));
	/* a whiteout never hides its own layer's entry */
	ck_assert_str_eq(slurp("root/new-then-whiteout"), "stay");
	/* replacing a hardlinked file leaves the other link alone */
	ck_assert_str_eq(slurp("root/d/hl"), "replaced");
	ck_assert_str_eq(slurp("root/linked"), "shared");
	ck_assert(!exists("root/.wh..wh.plnk"));
}
END_TEST

START_TEST(layer_replace)
{
	const struct ent lower[] = {
	    {.type = E_FILE, .path = "r/child", .data = "c"},
	    {.type = E_FILE, .path = "f2", .data = "file"},
	    {.type = E_DIR, .path = "d2/"},
	    {.type = E_FILE, .path = "d2/inner", .data = "i"},
	    {.type = E_FILE, .path = "sym", .data = "plain"},
	    {.type = E_DIR, .path = "keepdir/", .data = NULL, .mode = 0700, .uid = 5, .gid = 5},
	    {.type = E_FILE, .path = "keepdir/lower", .data = "l"},
	    {.type = E_DIR, .path = "sgid/", .data = NULL, .mode = 02775, .uid = 0, .gid = 50},
	};
	const struct ent upper[] = {
	    {.type = E_FILE, .path = "r", .data = "now a file"},
	    {.type = E_DIR, .path = "f2/", .data = NULL, .mode = 0711},
	    {.type = E_SYMLINK, .path = "d2", .data = "f2"},
	    {.type = E_SYMLINK, .path = "sym", .data = "r"},
	    {.type = E_DIR, .path = "keepdir/", .data = NULL, .mode = 0755, .uid = 6, .gid = 6},
	    {.type = E_FILE, .path = "sgid/root-owned", .data = "r"},
	    {.type = E_DIR, .path = "sgid/sub/"},
	};
	struct stat st;

	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("lower.tar", "none", lower, IMC_ARRAY_SIZE(lower));
	write_layer("upper.tar", "gzip", upper, IMC_ARRAY_SIZE(upper));
	apply_ok("root", "lower.tar");
	apply_ok("root", "upper.tar");
	ck_assert_str_eq(slurp("root/r"), "now a file");
	st = lst("root/f2");
	ck_assert(S_ISDIR(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0711);
	ck_assert(S_ISLNK(lst("root/d2").st_mode));
	ck_assert(S_ISLNK(lst("root/sym").st_mode));
	st = lst("root/keepdir");
	ck_assert_uint_eq(st.st_mode & 07777, 0755);
	ck_assert_uint_eq(st.st_uid, 6);
	ck_assert_str_eq(slurp("root/keepdir/lower"), "l");
	/* In a set-group-ID directory new entries still get the tar's group. */
	ck_assert_uint_eq(lst("root/sgid").st_gid, 50);
	ck_assert_uint_eq(lst("root/sgid/root-owned").st_gid, 0);
	st = lst("root/sgid/sub");
	ck_assert_uint_eq(st.st_gid, 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0755);
}
END_TEST

START_TEST(layer_escape)
{
	char outside_abs[600], name[64];
	const struct ent ents[] = {
	    {.type = E_FILE, .path = "/abs/file", .data = "in"},
	    {.type = E_SYMLINK, .path = "up", .data = "../../../../../.."},
	    {.type = E_FILE, .path = "up/escaped-up", .data = "in"},
	    {.type = E_SYMLINK, .path = "rootlink", .data = "/"},
	    {.type = E_FILE, .path = "rootlink/escaped-root", .data = "in"},
	    {.type = E_DIR, .path = "tmp/"},
	    {.type = E_SYMLINK, .path = "tmplink", .data = "/tmp"},
	    {.type = E_FILE, .path = name, .data = "in"},
	    {.type = E_SYMLINK, .path = "victim", .data = outside_abs},
	    {.type = E_FILE, .path = "victim", .data = "replaced"},
	};
	imc_error err = {0};
	struct stat st;

	/* The tree: tmp_root/{root,outside}; nothing may be written outside root. */
	snprintf(outside_abs, sizeof(outside_abs), "%s", tpath("outside"));
	snprintf(name, sizeof(name), "tmplink/%s-escaped", strrchr(tmp_root, '/') + 1);
	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	int fd = open(tpath("outside"), O_WRONLY | O_CREAT, 0644);
	ck_assert_int_eq(write(fd, "original", 8), 8);
	close(fd);
	write_layer("evil.tar", "gzip", ents, IMC_ARRAY_SIZE(ents));
	apply_ok("root", "evil.tar");

	ck_assert(exists("root/abs/file"));
	ck_assert(!exists("escaped-up"));
	ck_assert(exists("root/escaped-up"));
	ck_assert(lstat("/escaped-root", &st) < 0);
	ck_assert(exists("root/escaped-root"));
	char host_tmp[128];
	snprintf(host_tmp, sizeof(host_tmp), "/tmp/%s-escaped", strrchr(tmp_root, '/') + 1);
	ck_assert(lstat(host_tmp, &st) < 0);
	snprintf(host_tmp, sizeof(host_tmp), "root/tmp/%s-escaped", strrchr(tmp_root, '/') + 1);
	ck_assert(exists(host_tmp));
	ck_assert(S_ISLNK(lst("root/tmplink").st_mode));
	/* The symlink at victim was replaced, not written through. */
	ck_assert_str_eq(slurp("outside"), "original");
	ck_assert(S_ISREG(lst("root/victim").st_mode));
	ck_assert_str_eq(slurp("root/victim"), "replaced");

	/* A hardlink to an absolute path outside the root is looked up inside it: not there. */
	const struct ent hl[] = {{.type = E_HARDLINK, .path = "stolen", .data = "/etc/passwd"}};
	write_layer("hl.tar", "none", hl, 1);
	ck_assert_int_eq(apply("root", "hl.tar", &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, "layer test: entry \"stolen\"") &&
			  strstr(err.msg, "hardlink target etc/passwd"),
		      "%s", err.msg);
	ck_assert(!exists("root/stolen"));

	/* Through a symlink to a directory outside: resolved inside, where it does not exist. */
	char outside_dir[600];
	snprintf(outside_dir, sizeof(outside_dir), "%s", tpath("outdir"));
	ck_assert_int_eq(mkdir(outside_dir, 0755), 0);
	const struct ent sl[] = {{.type = E_SYMLINK, .path = "out", .data = outside_dir},
				 {.type = E_FILE, .path = "out/x", .data = "no"}};
	write_layer("sl.tar", "none", sl, 2);
	ck_assert_int_lt(apply("root", "sl.tar", &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "entry \"out/x\""));
	ck_assert(!exists("outdir/x"));
}
END_TEST

START_TEST(layer_corrupt)
{
	struct ent big[] = {{.type = E_FILE, .path = "big", .data = NULL}};
	char *data = malloc(4 << 20);
	imc_error err = {0};
	unsigned seed = 42;
	struct stat st;

	for (size_t i = 0; i < (4u << 20) - 1; i++) {
		seed = seed * 1103515245 + 12345;
		data[i] = (char)('a' + (seed >> 16) % 26);
	}
	data[(4 << 20) - 1] = '\0';
	big[0].data = data;
	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("big.tar.gz", "gzip", big, 1);
	free(data);
	ck_assert_int_eq(stat(tpath("big.tar.gz"), &st), 0);
	ck_assert_int_eq(truncate(tpath("big.tar.gz"), st.st_size / 2), 0);
	ck_assert_int_lt(apply("root", "big.tar.gz", &err), 0);
	ck_assert_msg(strstr(err.msg, "layer test: entry \"big\""), "%s", err.msg);

	/* Not a tar at all. */
	int fd = open(tpath("junk"), O_WRONLY | O_CREAT, 0644);
	ck_assert_int_eq(write(fd, "this is not a tar archive, not even close......", 47), 47);
	close(fd);
	ck_assert_int_lt(apply("root", "junk", &err), 0);
	ck_assert_msg(strncmp(err.msg, "layer test: ", 12) == 0, "%s", err.msg);
}
END_TEST

/* sha256 of a whole file, in hex. */
static void file_sha256(const char *rel, char out[IMC_SHA256_HEX_LEN + 1])
{
	char *buf = NULL;
	size_t len = 0;
	imc_error err = {0};

	ck_assert_msg(imc_read_file(tpath(rel), 64u << 20, &buf, &len, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(imc_sha256_hex(buf, len, out, &err), 0);
	free(buf);
}

/* Write the bytes of file `from` compressed with filter ("gzip", "zstd") to `to`: a raw stream,
 * whatever the bytes are. */
static void compress_file(const char *from, const char *to, const char *filter)
{
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	char *buf = NULL;
	size_t len = 0;

	ck_assert_int_eq(imc_read_file(tpath(from), 64u << 20, &buf, &len, NULL), 0);
	ck_assert_int_eq(archive_write_set_format_raw(a), ARCHIVE_OK);
	if (strcmp(filter, "gzip") == 0)
		ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
	else
		ck_assert_int_eq(archive_write_add_filter_zstd(a), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_open_filename(a, tpath(to)), ARCHIVE_OK);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_pathname(e, "data");
	ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_data(a, buf, len), (la_ssize_t)len);
	ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
	archive_entry_free(e);
	free(buf);
}

static int apply_hashed(const char *root, const char *layer, char out[IMC_SHA256_HEX_LEN + 1],
			imc_error *err)
{
	int rootfd = open(tpath(root), O_RDONLY | O_DIRECTORY);
	int fd = open(tpath(layer), O_RDONLY);
	int r;

	ck_assert_int_ge(rootfd, 0);
	ck_assert_int_ge(fd, 0);
	r = builder_layer_apply_hashed(rootfd, fd, "layer test", out, err);
	close(fd);
	close(rootfd);
	return r;
}

/* The diff_id is the sha256 of the whole uncompressed stream: every byte to its end, the
 * end-of-archive blocks and whatever follows them included, compressed or not. */
START_TEST(layer_diff_id)
{
	const struct ent ents[] = {
	    {.type = E_DIR, .path = "d/"},
	    {.type = E_FILE, .path = "d/f", .data = "diff id content\n"},
	};
	char want[IMC_SHA256_HEX_LEN + 1], got[IMC_SHA256_HEX_LEN + 1];
	static const char *const layers[] = {"l.tar", "l.tar.gz", "l.tar.zst", "pad.tar",
					     "pad.tar.gz"};
	imc_error err = {0};
	static char zeros[(12u << 20) + 7];
	int fd;

	ck_assert_int_eq(mkdir(tpath("root"), 0755), 0);
	write_layer("l.tar", "none", ents, IMC_ARRAY_SIZE(ents));
	compress_file("l.tar", "l.tar.gz", "gzip");
	compress_file("l.tar", "l.tar.zst", "zstd");
	/* Far more zero blocks than the tar reader needs to see its end (more than the
	 * decompression thread reads ahead), and an odd tail: the hash must still cover them. */
	fd = open(tpath("pad.tar"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	{
		char *buf = NULL;
		size_t len = 0;
		ck_assert_int_eq(imc_read_file(tpath("l.tar"), 1u << 20, &buf, &len, NULL), 0);
		ck_assert_int_eq(imc_write_all(fd, buf, len), 0);
		ck_assert_int_eq(imc_write_all(fd, zeros, sizeof(zeros)), 0);
		free(buf);
	}
	close(fd);
	compress_file("pad.tar", "pad.tar.gz", "gzip");

	for (size_t i = 0; i < IMC_ARRAY_SIZE(layers); i++) {
		file_sha256(i < 3 ? "l.tar" : "pad.tar", want);
		memset(got, 0, sizeof(got));
		ck_assert_msg(apply_hashed("root", layers[i], got, &err) == 0, "%s: %s", layers[i],
			      err.msg);
		ck_assert_msg(strcmp(got, want) == 0, "%s: diff_id %s, want %s", layers[i], got,
			      want);
	}
	ck_assert_str_eq(slurp("root/d/f"), "diff id content\n");
	file_sha256("l.tar", want);
	file_sha256("pad.tar", got);
	ck_assert_str_ne(got, want);
}
END_TEST

/* A blob file of 64 KiB named by hex, last used `age` seconds ago. */
static void blob_put(int dfd, const char *hex, int age)
{
	static char buf[65536];
	struct timespec t[2];
	int fd = openat(dfd, hex, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	memset(buf, 'x', sizeof(buf));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, buf, sizeof(buf)), 0);
	ck_assert_int_eq(fsync(fd), 0);
	clock_gettime(CLOCK_REALTIME, &t[0]);
	t[0].tv_sec -= age;
	t[1] = t[0];
	ck_assert_int_eq(futimens(fd, t), 0);
	close(fd);
}

/* What no cache needs goes, a pinned blob never does, and over the cap the least recently used
 * needed ones go first. */
START_TEST(blob_store_collection)
{
	char dir[] = "/tmp/imc-test-blobs.XXXXXX", sub[64], hex[4][IMC_SHA256_HEX_LEN + 1];
	char digest[4][IMC_SHA256_HEX_LEN + 8];
	struct builder_blobs_gc res;
	_cleanup_json_ json_t *keep = json_array();
	imc_error err;
	int dfd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(sub, sizeof(sub), "%s/sha256", dir);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	dfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	for (int i = 0; i < 4; i++) {
		memset(hex[i], 'a' + i, IMC_SHA256_HEX_LEN);
		hex[i][IMC_SHA256_HEX_LEN] = '\0';
		snprintf(digest[i], sizeof(digest[i]), "sha256:%s", hex[i]);
		blob_put(dfd, hex[i], 100 * (4 - i)); /* a is the oldest, d the newest */
	}
	/* a and b are needed; c is pinned by a running build; d nothing needs. */
	json_array_append_new(keep, json_string(digest[0]));
	json_array_append_new(keep, json_string(digest[1]));
	ck_assert_int_eq(builder_blobs_pin(dir, digest[2], &err), 0);
	ck_assert_int_eq(builder_blobs_gc(dir, keep, 0, &res, &err), 0);
	ck_assert_uint_eq(res.removed, 1);
	ck_assert_int_ne(faccessat(dfd, hex[3], F_OK, 0), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(faccessat(dfd, hex[i], F_OK, 0), 0);
	/* Cap of 100 KiB: a (the least recently used) goes, then b; c stays, pinned. */
	ck_assert_int_eq(builder_blobs_gc(dir, keep, 100 << 10, &res, &err), 0);
	ck_assert_uint_eq(res.removed, 2);
	ck_assert_uint_eq(res.evicted, 2);
	ck_assert_int_ne(faccessat(dfd, hex[0], F_OK, 0), 0);
	ck_assert_int_ne(faccessat(dfd, hex[1], F_OK, 0), 0);
	ck_assert_int_eq(faccessat(dfd, hex[2], F_OK, 0), 0);
	builder_blobs_unpin(digest[2]);
	ck_assert_int_eq(builder_blobs_gc(dir, keep, 0, &res, &err), 0);
	ck_assert_uint_eq(res.removed, 1);
	ck_assert_uint_eq(res.kept_bytes, 0);
	close(dfd);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

static Suite *builder_suite(void)
{
	Suite *s = suite_create("builder");
	TCase *tc = tcase_create("parse");
	TCase *tl = tcase_create("layer");

	tcase_add_loop_test(tc, ref_good, 0, IMC_ARRAY_SIZE(good_refs));
	tcase_add_loop_test(tc, ref_bad, 0, IMC_ARRAY_SIZE(bad_refs));
	tcase_add_test(tc, ref_limits);
	tcase_add_test(tc, manifest_docker);
	tcase_add_test(tc, manifest_oci);
	tcase_add_loop_test(tc, manifest_bad, 0, IMC_ARRAY_SIZE(bad_manifests));
	tcase_add_test(tc, manifest_layer_cap);
	tcase_add_test(tc, index_select);
	tcase_add_test(tc, index_no_match);
	tcase_add_test(tc, diff_ids_parse);
	tcase_add_test(tc, platform_parse);
	tcase_add_test(tc, platform_match_config);
	tcase_add_test(tc, whiteout_kind);
	tcase_add_test(tc, path_clean);
	tcase_add_test(tc, registry_helpers);
	tcase_add_test(tc, blob_size_bounds);
	tcase_add_test(tc, registry_auth_helpers);
	tcase_add_test(tc, blob_store_collection);
	suite_add_tcase(s, tc);

	tcase_add_unchecked_fixture(tl, setup_top, teardown_top);
	tcase_add_checked_fixture(tl, setup_tmp, NULL);
	tcase_set_timeout(tl, 60);
	tcase_add_test(tl, layer_basic);
	tcase_add_test(tl, layer_zero_blocks);
	tcase_add_test(tl, layer_devices);
	tcase_add_test(tl, layer_whiteouts);
	tcase_add_test(tl, layer_replace);
	tcase_add_test(tl, layer_escape);
	tcase_add_test(tl, layer_corrupt);
	tcase_add_test(tl, layer_diff_id);
	suite_add_tcase(s, tl);
	/* net/ retries a name that does not resolve (5 attempts, about 8 s of backoff). */
	TCase *tn = tcase_create("network");
	tcase_set_timeout(tn, 60);
	tcase_add_test(tn, push_loopback_rule);
	suite_add_tcase(s, tn);
	return s;
}

int main(void)
{
	return unit_run(builder_suite());
}
