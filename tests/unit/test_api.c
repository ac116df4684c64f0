/* The REST API's pure parts: create-request validation, cache JSON and metadata, routing, the
 * listen address, the answers that need no cache table (errors, /healthz) and the metrics page.
 *
 * Over 800 lines: one suite per room, and api/ has many pure parts. */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <string.h>

#include "../../api/api.h"
#include "../../api/conns.h"
#include "unit.h"

static const struct api_caller test_caller = {.tenant = API_TENANT_DEFAULT};

/* ---- helpers ----------------------------------------------------------------------------------
 */

static int parse(const char *body, struct api_create_request *req, imc_error *err)
{
	memset(req, 0, sizeof(*req));
	imc_err_clear(err);
	return api_create_request_parse(body, strlen(body), req, err);
}

/* body must be refused with want (a negative errno) and a message starting with prefix. */
static void expect_bad(const char *body, int want, const char *prefix)
{
	struct api_create_request req;
	imc_error err;
	int r = parse(body, &req, &err);

	ck_assert_msg(r == want, "%s: got %d (%s), want %d", body, r, err.msg, want);
	ck_assert_int_eq(err.code, want);
	ck_assert_msg(strncmp(err.msg, prefix, strlen(prefix)) == 0,
		      "%s: message \"%s\", want \"%s…\"", body, err.msg, prefix);
	ck_assert_ptr_null(req.refs);
	ck_assert_ptr_null(req.name);
}

static json_t *load(const char *s)
{
	json_t *j = json_loads(s, 0, NULL);
	ck_assert_ptr_nonnull(j);
	return j;
}

/* ---- create requests --------------------------------------------------------------------------
 */

START_TEST(create_good)
{
	struct api_create_request req;
	imc_error err;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"127.0.0.1:5000/busybox:1.36\"}],"
			       "\"name\":\"my-cache_1.0\"}",
			       &req, &err),
			 0);
	ck_assert_uint_eq(req.n_refs, 1);
	ck_assert_str_eq(req.refs[0], "127.0.0.1:5000/busybox:1.36");
	ck_assert_str_eq(req.name, "my-cache_1.0");
	api_create_request_free(&req);
	ck_assert_ptr_null(req.refs);

	/* name is optional, and null counts as absent */
	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"busybox\"}]}", &req, &err), 0);
	ck_assert_ptr_null(req.name);
	ck_assert_str_eq(req.refs[0], "busybox");
	api_create_request_free(&req);
	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"busybox\"}],\"name\":null}", &req, &err),
			 0);
	ck_assert_ptr_null(req.name);
	api_create_request_free(&req);
}
END_TEST

START_TEST(create_malformed_json)
{
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}]", -EBADMSG, "malformed JSON");
	expect_bad("", -EBADMSG, "malformed JSON");
	expect_bad("images=busybox", -EBADMSG, "malformed JSON");
	expect_bad("{\"name\":\"a\",\"name\":\"b\",\"images\":[]}", -EBADMSG, "malformed JSON");
}
END_TEST

START_TEST(create_not_object)
{
	expect_bad("[{\"ref\":\"busybox\"}]", -EINVAL, "request body: want a JSON object");
	expect_bad("\"busybox\"", -EINVAL, "request body: want a JSON object");
	expect_bad("null", -EINVAL, "request body: want a JSON object");
}
END_TEST

START_TEST(create_unknown_fields)
{
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"colour\":\"red\"}", -EINVAL,
		   "colour: unknown field");
	expect_bad("{\"images\":[{\"ref\":\"busybox\",\"os\":\"linux\"}]}", -EINVAL,
		   "images[0].os: unknown field");
}
END_TEST

START_TEST(create_wrong_types)
{
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"name\":5}", -EINVAL,
		   "name: want a string");
	expect_bad("{\"images\":\"busybox\"}", -EINVAL, "images: want an array");
	expect_bad("{\"images\":{\"ref\":\"busybox\"}}", -EINVAL, "images: want an array");
	expect_bad("{\"images\":[\"busybox\"]}", -EINVAL, "images[0]: want an object");
	expect_bad("{\"images\":[{\"ref\":5}]}", -EINVAL, "images[0].ref: want a string");
	expect_bad("{\"images\":[{\"ref\":[\"busybox\"]}]}", -EINVAL,
		   "images[0].ref: want a string");
}
END_TEST

START_TEST(create_images_count)
{
	expect_bad("{\"name\":\"x\"}", -EINVAL, "images: required");
	expect_bad("{\"images\":null}", -EINVAL, "images: required");
	expect_bad("{\"images\":[{}]}", -EINVAL, "images[0].ref: required");
	expect_bad("{\"images\":[]}", -EINVAL, "images: at least one image is required");
}
END_TEST

/* {"images":[{"ref":"r0"},…,{"ref":"r<n-1>"}]}, each ref "127.0.0.1:5000/img<i>:v1" */
static char *images_body(size_t n)
{
	_cleanup_json_ json_t *body = json_object();
	json_t *arr = json_array();
	char ref[64];

	ck_assert_ptr_nonnull(body);
	ck_assert_ptr_nonnull(arr);
	ck_assert_int_eq(json_object_set_new(body, "images", arr), 0);
	for (size_t i = 0; i < n; i++) {
		snprintf(ref, sizeof(ref), "127.0.0.1:5000/img%zu:v1", i);
		ck_assert_int_eq(json_array_append_new(arr, json_pack("{s:s}", "ref", ref)), 0);
	}
	return json_dumps(body, JSON_COMPACT);
}

START_TEST(create_several_images)
{
	static const size_t counts[] = {1, 2, API_IMAGES_MAX};
	struct api_create_request req;
	imc_error err;
	char ref[64];

	for (size_t k = 0; k < IMC_ARRAY_SIZE(counts); k++) {
		_cleanup_free_ char *body = images_body(counts[k]);

		ck_assert_msg(parse(body, &req, &err) == 0, "%zu images: %s", counts[k], err.msg);
		ck_assert_uint_eq(req.n_refs, counts[k]);
		for (size_t i = 0; i < counts[k]; i++) { /* request order, index = rootfs number */
			snprintf(ref, sizeof(ref), "127.0.0.1:5000/img%zu:v1", i);
			ck_assert_str_eq(req.refs[i], ref);
		}
		api_create_request_free(&req);
	}
	/* the same repository under another tag or digest is a different image */
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"busybox\"},{\"ref\":\"busybox:1.36\"}]}", &req, &err),
	    0);
	ck_assert_uint_eq(req.n_refs, 2);
	api_create_request_free(&req);
}
END_TEST

START_TEST(create_too_many_images)
{
	_cleanup_free_ char *body = images_body(API_IMAGES_MAX + 1);
	_cleanup_free_ char *huge = images_body(1000);

	expect_bad(body, -EINVAL, "images: at most 20 images, got 21");
	expect_bad(huge, -EINVAL, "images: at most 20 images, got 1000");
}
END_TEST

START_TEST(create_duplicate_images)
{
	expect_bad("{\"images\":[{\"ref\":\"busybox\"},{\"ref\":\"busybox\"}]}", -EINVAL,
		   "images[1].ref: busybox is already images[0]");
	expect_bad("{\"images\":[{\"ref\":\"a\"},{\"ref\":\"b\"},{\"ref\":\"c\"},{\"ref\":\"b\"}]}",
		   -EINVAL, "images[3].ref: b is already images[1]");
	/* a bad ref after a duplicate-free prefix still names its index */
	expect_bad("{\"images\":[{\"ref\":\"a\"},{\"ref\":\"Bad Ref\"}]}", -EINVAL,
		   "images[1].ref: ");
}
END_TEST

/* images[].platform: normalized as the image-spec index and containerd spell platforms. */
START_TEST(create_platforms)
{
	static const struct {
		const char *in, *want;
	} good[] = {
	    {"linux/amd64", "linux/amd64"},	 {"linux/x86_64", "linux/amd64"},
	    {"linux/amd64/v1", "linux/amd64"},	 {"linux/arm64", "linux/arm64/v8"},
	    {"linux/aarch64", "linux/arm64/v8"}, {"linux/arm64/v8", "linux/arm64/v8"},
	    {"linux/arm", "linux/arm/v7"},	 {"linux/arm/v7", "linux/arm/v7"},
	    {"linux/arm/6", "linux/arm/v6"},	 {"linux/armhf", "linux/arm/v7"},
	    {"windows/amd64", "windows/amd64"},	 {"linux/riscv64", "linux/riscv64"},
	};
	struct api_create_request req;
	imc_error err;
	char body[256];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(good); i++) {
		snprintf(body, sizeof(body),
			 "{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"%s\"}]}", good[i].in);
		ck_assert_msg(parse(body, &req, &err) == 0, "%s: %s", body, err.msg);
		ck_assert_str_eq(req.platforms[0], good[i].want);
		api_create_request_free(&req);
	}
	/* none given: imcd's default, decided when the cache is created */
	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a\"}]}", &req, &err), 0);
	ck_assert_ptr_null(req.platforms[0]);
	api_create_request_free(&req);
	/* the same ref for two platforms is two images */
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"linux/amd64\"},"
		  "{\"ref\":\"r.io/a\",\"platform\":\"linux/arm64\"},{\"ref\":\"r.io/a\"}]}",
		  &req, &err),
	    0);
	ck_assert_uint_eq(req.n_refs, 3);
	ck_assert_str_eq(req.platforms[1], "linux/arm64/v8");
	api_create_request_free(&req);

	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"linux/arm64\"},"
		   "{\"ref\":\"r.io/a\",\"platform\":\"linux/aarch64/v8\"}]}",
		   -EINVAL, "images[1]: r.io/a for linux/arm64/v8 is already images[0]");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"linux\"}]}", -EINVAL,
		   "images[0].platform: platform \"linux\": want os/arch[/variant]");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"linux/arm/v7/x\"}]}", -EINVAL,
		   "images[0].platform: ");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"Linux/AMD64\"}]}", -EINVAL,
		   "images[0].platform: ");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"linux//v7\"}]}", -EINVAL,
		   "images[0].platform: ");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"../../etc\"}]}", -EINVAL,
		   "images[0].platform: ");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":\"\"}]}", -EINVAL,
		   "images[0].platform: ");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":5}]}", -EINVAL,
		   "images[0].platform: want a string");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a\",\"platform\":{\"os\":\"linux\"}}]}", -EINVAL,
		   "images[0].platform: want a string");
}
END_TEST

START_TEST(create_bad_ref)
{
	expect_bad("{\"images\":[{\"ref\":\"\"}]}", -EINVAL, "images[0].ref: ");
	expect_bad("{\"images\":[{\"ref\":\"Busy Box\"}]}", -EINVAL, "images[0].ref: ");
	expect_bad("{\"images\":[{\"ref\":\"busybox:bad:tag:\"}]}", -EINVAL, "images[0].ref: ");
	expect_bad("{\"images\":[{\"ref\":\"busybox@sha256:1234\"}]}", -EINVAL, "images[0].ref: ");
}
END_TEST

START_TEST(create_bad_name)
{
	char body[512], name[API_NAME_MAX + 2];
	struct api_create_request req;
	imc_error err;

	memset(name, 'n', API_NAME_MAX + 1);
	name[API_NAME_MAX + 1] = '\0';
	snprintf(body, sizeof(body), "{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"%s\"}", name);
	expect_bad(body, -EINVAL, "name: longer than 128 bytes");

	name[API_NAME_MAX] = '\0'; /* exactly the limit is fine */
	snprintf(body, sizeof(body), "{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"%s\"}", name);
	ck_assert_int_eq(parse(body, &req, &err), 0);
	ck_assert_uint_eq(strlen(req.name), API_NAME_MAX);
	api_create_request_free(&req);

	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"a/b\"}", -EINVAL,
		   "name: want 1-128 characters");
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"..\"}", -EINVAL,
		   "name: want 1-128 characters");
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"\"}", -EINVAL,
		   "name: want 1-128 characters");
	expect_bad("{\"images\":[{\"ref\":\"busybox\"}],\"name\":\"a b\"}", -EINVAL,
		   "name: want 1-128 characters");
}
END_TEST

/* ---- data, size and credentials ---------------------------------------------------------------
 */

#define IMG "\"images\":[{\"ref\":\"busybox\"}]"
#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define URL "https://models.example.com/llm/model.safetensors"

START_TEST(create_data_good)
{
	struct api_create_request req;
	imc_error err;

	ck_assert_int_eq(
	    parse("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"llm\","
		  "\"sha256\":\"" SHA "\"},{\"source\":\"hf://org/m@v2\",\"path\":"
		  "\"m\"},{\"source\":\"oci://127.0.0.1:5000/a/w:v1\",\"path\":\"w\"}],"
		  "\"size\":5368709120}",
		  &req, &err),
	    0);
	ck_assert_uint_eq(req.n_data, 3);
	ck_assert_str_eq(req.data[0].source, URL);
	ck_assert_str_eq(req.data[0].path, "llm");
	ck_assert_str_eq(req.data[0].sha256, SHA);
	ck_assert_str_eq(req.data[1].source, "hf://org/m@v2");
	ck_assert_ptr_null(req.data[1].sha256);
	ck_assert_str_eq(req.data[2].path, "w");
	ck_assert_uint_eq(req.size, 5368709120ULL);
	ck_assert_uint_eq(req.n_credentials, 0);
	api_create_request_free(&req);
}
END_TEST

START_TEST(create_data_bad)
{
	expect_bad("{" IMG ",\"data\":{}}", -EINVAL, "data: want an array");
	expect_bad("{" IMG ",\"data\":[5]}", -EINVAL, "data[0]: want an object");
	expect_bad("{" IMG ",\"data\":[{\"path\":\"x\"}]}", -EINVAL, "data[0].source: required");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL "\"}]}", -EINVAL,
		   "data[0].path: required");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"x\",\"mode\":1}]}",
		   -EINVAL, "data[0].mode: unknown field");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"ftp://h/x\",\"path\":\"x\"}]}", -EINVAL,
		   "data[0]: source:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"http://10.0.0.1/x\",\"path\":\"x\"}]}",
		   -EINVAL, "data[0]: source:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"../x\"}]}", -EINVAL,
		   "data[0]: path:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"..\"}]}", -EINVAL,
		   "data[0]: path:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL
		   "\",\"path\":\"x\",\"sha256\":\"abc\"}]}",
		   -EINVAL, "data[0]: sha256:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"hf://o/r\",\"path\":\"x\",\"sha256\":\"" SHA
		   "\"}]}",
		   -EINVAL, "data[0]: sha256:");
	expect_bad("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"x\"},{\"source\":\"" URL
		   "\",\"path\":\"x\"}]}",
		   -EINVAL, "data[1].path: x is already data[0]");
	expect_bad("{" IMG ",\"size\":0}", -EINVAL, "size:");
	expect_bad("{" IMG ",\"size\":-1}", -EINVAL, "size:");
	expect_bad("{" IMG ",\"size\":\"1G\"}", -EINVAL, "size:");
	expect_bad("{" IMG ",\"size\":17592186044417}", -EINVAL, "size:");
}
END_TEST

START_TEST(create_data_cap)
{
	struct imc_buf b = {0};
	const char *head = "{" IMG ",\"data\":[";
	char entry[128];

	ck_assert_int_eq(imc_buf_append(&b, head, strlen(head)), 0);
	for (int i = 0; i < API_DATA_MAX + 1; i++) {
		int n = snprintf(entry, sizeof(entry), "%s{\"source\":\"%s\",\"path\":\"p%d\"}",
				 i ? "," : "", URL, i);
		ck_assert_int_eq(imc_buf_append(&b, entry, (size_t)n), 0);
	}
	ck_assert_int_eq(imc_buf_append(&b, "]}", 2), 0);
	expect_bad(b.data, -EINVAL, "data: at most 64 entries");
	imc_buf_free(&b);
}
END_TEST

START_TEST(create_credentials)
{
	struct api_create_request req;
	imc_error err;

	ck_assert_int_eq(parse("{" IMG ",\"credentials\":[{\"registry\":\"ghcr.io\",\"username\":"
			       "\"u\",\"password\":\"hunter2\"},{\"registry\":\"127.0.0.1:5000\","
			       "\"token\":\"tok\"}]}",
			       &req, &err),
			 0);
	ck_assert_uint_eq(req.n_credentials, 2);
	ck_assert_str_eq(req.credentials[0].registry, "ghcr.io");
	ck_assert_str_eq(req.credentials[0].username, "u");
	ck_assert_str_eq(req.credentials[0].password, "hunter2");
	ck_assert_ptr_null(req.credentials[0].token);
	ck_assert_str_eq(req.credentials[1].token, "tok");
	api_create_request_free(&req);
}
END_TEST

/* A refused credential never shows its value in the message. */
static void expect_bad_secret(const char *body, const char *prefix)
{
	struct api_create_request req;
	imc_error err;

	expect_bad(body, -EINVAL, prefix);
	parse(body, &req, &err);
	ck_assert_msg(!strstr(err.msg, "s3cr3t"), "the message shows a secret: %s", err.msg);
}

START_TEST(create_credentials_bad)
{
	expect_bad_secret("{" IMG ",\"credentials\":{}}", "credentials: want an array");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"registry\":\"r\",\"token\":\"s3cr3t\","
			  "\"password\":\"s3cr3t\"}]}",
			  "credentials[0]: want username and password, or a token");
	expect_bad_secret("{" IMG
			  ",\"credentials\":[{\"registry\":\"r\",\"password\":\"s3cr3t\"}]}",
			  "credentials[0]: want username and password, or a token");
	expect_bad_secret("{" IMG
			  ",\"credentials\":[{\"registry\":\"r\",\"username\":\"s3cr3t\"}]}",
			  "credentials[0]: want username and password, or a token");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"token\":\"s3cr3t\"}]}",
			  "credentials[0].registry: required");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"registry\":\"a/b\",\"token\":\"s3cr3t\"}]}",
			  "credentials[0].registry: want host[:port]");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"registry\":\"r\",\"token\":\"s3cr3t\","
			  "\"scope\":\"s3cr3t\"}]}",
			  "credentials[0].scope: unknown field");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"registry\":\"r\",\"token\":5}]}",
			  "credentials[0].token: want a string");
	expect_bad_secret("{" IMG ",\"credentials\":[{\"registry\":\"r\",\"token\":\"s3cr3t\"},"
			  "{\"registry\":\"r\",\"token\":\"s3cr3t\"}]}",
			  "credentials[1].registry: r is already credentials[0]");
}
END_TEST

/* The metadata keeps the data and the size, and of the credentials only that there were some;
 * the API object shows the data, never a credential. */
START_TEST(cache_data_and_credentials)
{
	struct api_create_request req;
	struct api_cache *c = NULL, *back = NULL;
	imc_error err;
	json_t *meta, *j;
	char *dump;

	ck_assert_int_eq(parse("{" IMG ",\"data\":[{\"source\":\"" URL "\",\"path\":\"llm\"}],"
			       "\"size\":1073741824,\"credentials\":[{\"registry\":\"r\","
			       "\"username\":\"u\",\"password\":\"s3cr3t\"}]}",
			       &req, &err),
			 0);
	ck_assert_int_eq(api_cache_new("imc-0123456789abcdef", &req, 1795000000, &c, &err), 0);
	api_create_request_free(&req);
	ck_assert_uint_eq(c->n_credentials, 1);
	ck_assert(c->had_credentials);

	meta = api_cache_to_meta(c);
	dump = json_dumps(meta, 0);
	ck_assert_ptr_null(strstr(dump, "s3cr3t"));
	ck_assert_ptr_null(strstr(dump, "\"u\""));
	free(dump);
	ck_assert_int_eq(api_cache_from_meta(meta, &back, &err), 0);
	ck_assert_uint_eq(back->n_data, 1);
	ck_assert_str_eq(back->data[0].source, URL);
	ck_assert_str_eq(back->data[0].path, "llm");
	ck_assert_uint_eq(back->request_size, 1073741824ULL);
	ck_assert(back->had_credentials);
	ck_assert_uint_eq(back->n_credentials, 0);

	j = api_cache_to_json(c);
	dump = json_dumps(j, 0);
	ck_assert_ptr_null(strstr(dump, "s3cr3t"));
	ck_assert_ptr_nonnull(strstr(dump, "\"path\": \"llm\""));
	free(dump);
	json_decref(j);

	/* Ready: the built entries with their files and the entry's size. */
	c->status = API_CACHE_READY;
	c->manifest = load("{\"images\":[],\"data\":[{\"path\":\"llm\",\"source\":\"" URL
			   "\",\"files\":[{\"name\":\"a\",\"size\":3,\"sha256\":\"" SHA
			   "\"},{\"name\":\"b\",\"size\":4,\"sha256\":\"" SHA "\"}]}]}");
	j = api_cache_to_json(c);
	ck_assert_int_eq(json_integer_value(json_object_get(
			     json_array_get(json_object_get(j, "data"), 0), "size")),
			 7);
	ck_assert_str_eq(
	    json_string_value(json_object_get(
		json_array_get(
		    json_object_get(json_array_get(json_object_get(j, "data"), 0), "files"), 1),
		"name")),
	    "b");
	json_decref(j);
	json_decref(meta);
	api_cache_free(back);
	api_cache_free(c);
}
END_TEST

START_TEST(create_body_cap)
{
	size_t n = API_BODY_MAX + 1;
	char *big = malloc(n);
	struct api_create_request req = {0};
	imc_error err = {0};

	ck_assert_ptr_nonnull(big);
	memset(big, ' ', n);
	ck_assert_int_eq(api_create_request_parse(big, n, &req, &err), -EFBIG);
	free(big);
}
END_TEST

/* ---- errors -----------------------------------------------------------------------------------
 */

START_TEST(errno_to_status)
{
	static const struct {
		int code;
		unsigned http;
		const char *name;
	} cases[] = {
	    {-EBADMSG, 400, "InvalidJSON"},	 {-EINVAL, 400, "InvalidArgument"},
	    {-ENOENT, 404, "NotFound"},		 {-EBUSY, 409, "Conflict"},
	    {-EFBIG, 413, "PayloadTooLarge"},	 {-EDQUOT, 429, "LimitExceeded"},
	    {-ESHUTDOWN, 503, "Unavailable"},	 {-EIO, 500, "Internal"},
	    {-ENOMEM, 500, "Internal"},		 {-EINPROGRESS, 503, "InProgress"},
	    {-ETIMEDOUT, 504, "GatewayTimeout"}, {-ENOSPC, 507, "InsufficientStorage"},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		unsigned http = 0;
		const char *name = NULL;
		api_status_from_errno(cases[i].code, &http, &name);
		ck_assert_uint_eq(http, cases[i].http);
		ck_assert_str_eq(name, cases[i].name);
	}
	ck_assert_uint_eq(api_retry_after_from_status(503), API_RETRY_AFTER_S);
	ck_assert_uint_eq(api_retry_after_from_status(504), API_RESOLVE_FAIL_TTL_S);
	ck_assert_uint_eq(api_retry_after_from_status(500), 0);
	ck_assert_uint_eq(api_retry_after_from_status(200), 0);
}
END_TEST

/* The reserve files: made in full, a status written through one (the slot goes), refused when
 * none is left or the file would not fit. */
START_TEST(meta_reserve_files)
{
	char dir[] = "/tmp/imc-test-reserve.XXXXXX", big[API_META_RESERVE_SLOT + 16];
	_cleanup_json_ json_t *j = json_pack("{s:s,s:s}", "id", "imc-1", "status", "Failed");
	_cleanup_json_ json_t *back = NULL, *huge = NULL;
	struct stat sb;
	imc_error err;
	int dfd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_eq(api_meta_reserve_fill(dfd, &err), 0);
	ck_assert_int_eq(fstatat(dfd, ".reserve.0", &sb, 0), 0);
	ck_assert_int_eq(sb.st_size, API_META_RESERVE_SLOT);
	ck_assert_int_ge((long long)sb.st_blocks * 512, API_META_RESERVE_SLOT);
	for (int i = 0; i < API_META_RESERVE_SLOTS; i++)
		ck_assert_int_eq(api_meta_reserve_write(dfd, "c.json", j, &err), 0);
	ck_assert_int_eq(imc_json_read_file(dfd, "c.json", 1024, &back, &err), 0);
	ck_assert(json_equal(j, back));
	ck_assert_int_eq(api_meta_reserve_write(dfd, "c.json", j, &err), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(err.msg, "no reserve file left"));
	ck_assert_int_eq(api_meta_reserve_fill(dfd, &err), 0);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	huge = json_pack("{s:s}", "x", big);
	ck_assert_int_eq(api_meta_reserve_write(dfd, "d.json", huge, &err), -ENOSPC);
	ck_assert_int_eq(faccessat(dfd, ".reserve.0", F_OK, 0), 0); /* a refused write takes none */
	close(dfd);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

/* ---- cache JSON -------------------------------------------------------------------------------
 */

#define ID     "imc-0123456789abcdef"
#define HEX64  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HEX64B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define HEX64C "00000000000000000000000000000000000000000000000000000000000000aa"

static struct api_cache *new_cache(const char *name, int64_t created)
{
	char *refs[] = {"127.0.0.1:5000/busybox:1.36"};
	struct api_create_request req = {.name = (char *)name, .refs = refs, .n_refs = 1};
	struct api_cache *c = NULL;
	imc_error err;

	ck_assert_int_eq(api_cache_new(ID, &req, created, &c, &err), 0);
	return c;
}

START_TEST(cache_json_creating)
{
	struct api_cache *c = new_cache(NULL, 1795000000);
	json_t *j = api_cache_to_json(c);
	json_t *images;

	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "id")), ID);
	ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "");
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "Creating");
	ck_assert_str_eq(json_string_value(json_object_get(j, "createdAt")),
			 "2026-11-18T11:06:40Z");
	images = json_object_get(j, "images");
	ck_assert_uint_eq(json_array_size(images), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(images, 0), "ref")),
			 "127.0.0.1:5000/busybox:1.36");
	ck_assert_ptr_null(json_object_get(j, "size"));
	ck_assert_ptr_null(json_object_get(j, "readyAt"));
	ck_assert_ptr_null(json_object_get(j, "statusMessage"));
	ck_assert_ptr_nonnull(json_object_get(j, "progress"));
	json_decref(j);
	api_cache_free(c);
}
END_TEST

START_TEST(cache_json_ready)
{
	struct api_cache *c = new_cache("web", 1795000000);
	json_t *j, *img;

	c->status = API_CACHE_READY;
	c->size = 123456789;
	c->ready_at = 1795000042;
	c->manifest = load("{\"version\":1,\"images\":[{\"ref\":\"127.0.0.1:5000/busybox:1.36\","
			   "\"digest\":\"sha256:aa\",\"config\":{\"cmd\":[\"sh\"]}}],\"data\":[]}");
	j = api_cache_to_json(c);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "Ready");
	ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "web");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "size")), 123456789);
	ck_assert_str_eq(json_string_value(json_object_get(j, "readyAt")), "2026-11-18T11:07:22Z");
	img = json_array_get(json_object_get(j, "images"), 0);
	ck_assert_str_eq(json_string_value(json_object_get(img, "digest")), "sha256:aa");
	ck_assert_ptr_nonnull(json_object_get(img, "config"));
	ck_assert_ptr_null(json_object_get(j, "statusMessage"));
	ck_assert_ptr_null(json_object_get(j, "progress"));
	json_decref(j);
	api_cache_free(c);
}
END_TEST

START_TEST(cache_json_failed)
{
	struct api_cache *c = new_cache(NULL, 1795000000);
	imc_error err;
	json_t *j;

	ck_assert_int_eq(api_cache_set_failed(c, "manifest unknown (busybox:nope)", &err), 0);
	j = api_cache_to_json(c);
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "Failed");
	ck_assert_str_eq(json_string_value(json_object_get(j, "statusMessage")),
			 "manifest unknown (busybox:nope)");
	ck_assert_ptr_null(json_object_get(j, "size"));
	ck_assert_ptr_null(json_object_get(j, "readyAt"));
	json_decref(j);
	api_cache_free(c);
}
END_TEST

START_TEST(cache_meta_roundtrip)
{
	struct api_cache *c = new_cache("web", 1795000000), *back = NULL;
	imc_error err;
	json_t *meta;

	c->status = API_CACHE_READY;
	c->size = 1 << 20;
	c->ready_at = 1795000042;
	c->manifest = load("{\"images\":[{\"ref\":\"x\"}]}");
	meta = api_cache_to_meta(c);
	ck_assert_ptr_nonnull(meta);
	ck_assert_int_eq(api_cache_from_meta(meta, &back, &err), 0);
	ck_assert_str_eq(back->id, ID);
	ck_assert_str_eq(back->name, "web");
	ck_assert_int_eq(back->status, API_CACHE_READY);
	ck_assert_uint_eq(back->size, 1 << 20);
	ck_assert_int_eq(back->created_at, 1795000000);
	ck_assert_int_eq(back->ready_at, 1795000042);
	ck_assert_uint_eq(back->n_refs, 1);
	ck_assert_str_eq(back->refs[0], "127.0.0.1:5000/busybox:1.36");
	ck_assert(json_equal(back->manifest, c->manifest));
	api_cache_free(back);
	json_decref(meta);
	api_cache_free(c);
}
END_TEST

START_TEST(cache_several_images)
{
	char *refs[] = {"127.0.0.1:5000/imc/b:v1", "127.0.0.1:5000/imc/a:v1",
			"127.0.0.1:5000/imc/c:v1"};
	struct api_create_request req = {.refs = refs, .n_refs = IMC_ARRAY_SIZE(refs)};
	struct api_cache *c = NULL, *back = NULL;
	json_t *j, *images, *meta;
	imc_error err;

	ck_assert_int_eq(api_cache_new(ID, &req, 1795000000, &c, &err), 0);
	/* Creating: the requested refs, in request order */
	j = api_cache_to_json(c);
	images = json_object_get(j, "images");
	ck_assert_uint_eq(json_array_size(images), IMC_ARRAY_SIZE(refs));
	for (size_t i = 0; i < IMC_ARRAY_SIZE(refs); i++)
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_array_get(images, i), "ref")), refs[i]);
	json_decref(j);
	/* Ready: the builder's describe objects, in its order */
	c->status = API_CACHE_READY;
	c->ready_at = 1795000042;
	c->manifest =
	    load("{\"images\":[{\"ref\":\"127.0.0.1:5000/imc/b:v1\",\"digest\":\"sha256:bb\"},"
		 "{\"ref\":\"127.0.0.1:5000/imc/a:v1\",\"digest\":\"sha256:aa\"},"
		 "{\"ref\":\"127.0.0.1:5000/imc/c:v1\",\"digest\":\"sha256:cc\"}]}");
	j = api_cache_to_json(c);
	images = json_object_get(j, "images");
	ck_assert_uint_eq(json_array_size(images), 3);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(images, 0), "digest")),
			 "sha256:bb");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(images, 2), "digest")),
			 "sha256:cc");
	json_decref(j);
	/* the metadata file keeps every ref, in order */
	meta = api_cache_to_meta(c);
	ck_assert_uint_eq(json_array_size(json_object_get(meta, "refs")), 3);
	ck_assert_int_eq(api_cache_from_meta(meta, &back, &err), 0);
	ck_assert_uint_eq(back->n_refs, IMC_ARRAY_SIZE(refs));
	for (size_t i = 0; i < IMC_ARRAY_SIZE(refs); i++)
		ck_assert_str_eq(back->refs[i], refs[i]);
	api_cache_free(back);
	json_decref(meta);
	api_cache_free(c);
}
END_TEST

/* A metadata file written before caches had several images: one ref, no other difference. */
START_TEST(cache_meta_old_single_ref)
{
	json_t *meta = load("{\"version\":1,\"id\":\"" ID "\",\"status\":\"Failed\","
			    "\"statusMessage\":\"x\",\"createdAt\":5,\"refs\":[\"busybox\"]}");
	struct api_cache *c = NULL;
	imc_error err;

	ck_assert_msg(api_cache_from_meta(meta, &c, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(c->n_refs, 1);
	ck_assert_str_eq(c->refs[0], "busybox");
	api_cache_free(c);
	json_decref(meta);
}
END_TEST

/* A cache keeps each image's platform: shown while Creating, in its metadata, in its identity. */
START_TEST(cache_platforms)
{
	char *refs[] = {"r.io/a:1", "r.io/a:1", "r.io/b:1"};
	char *plats[] = {"linux/amd64", "linux/arm64/v8", NULL};
	struct api_create_request req = {.refs = refs, .platforms = plats, .n_refs = 3};
	struct api_cache *c = NULL, *back = NULL;
	json_t *j, *meta;
	imc_error err;

	ck_assert_int_eq(api_cache_new(ID, &req, 1795000000, &c, &err), 0);
	ck_assert_str_eq(c->platforms[2], "linux/amd64"); /* none given */
	j = api_cache_to_json(c);
	ck_assert_str_eq(json_string_value(json_object_get(
			     json_array_get(json_object_get(j, "images"), 1), "platform")),
			 "linux/arm64/v8");
	json_decref(j);
	meta = api_cache_to_meta(c);
	ck_assert_int_eq(api_cache_from_meta(meta, &back, &err), 0);
	for (size_t i = 0; i < 3; i++)
		ck_assert_str_eq(back->platforms[i], c->platforms[i]);
	ck_assert_str_eq(back->request_key, c->request_key);
	ck_assert(api_cache_has_platform(back, "linux/arm64/v8"));
	ck_assert(!api_cache_has_platform(back, "linux/arm/v7"));
	api_cache_free(back);
	json_decref(meta);
	api_cache_free(c);

	/* metadata from before platforms: every image was built for linux/amd64 */
	meta = load("{\"version\":1,\"id\":\"" ID "\",\"status\":\"Failed\","
		    "\"statusMessage\":\"x\",\"createdAt\":5,\"refs\":[\"a\",\"b\"]}");
	ck_assert_msg(api_cache_from_meta(meta, &c, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(c->platforms[0], "linux/amd64");
	ck_assert_str_eq(c->platforms[1], "linux/amd64");
	api_cache_free(c);
	json_decref(meta);
}
END_TEST

/* Two requests that differ only in an image's platform are two caches; an image that names
 * none is linux/amd64 here (api_caches_create fills in imcd's default before). */
START_TEST(request_key_platforms)
{
	struct api_create_request a, b, c;
	char ka[IMC_SHA256_HEX_LEN + 1], kb[IMC_SHA256_HEX_LEN + 1], kc[IMC_SHA256_HEX_LEN + 1];
	imc_error err;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"}]}", &a, &err), 0);
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"r.io/a:1\",\"platform\":\"linux/x86_64\"}]}", &b, &err),
	    0);
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"r.io/a:1\",\"platform\":\"linux/arm64\"}]}", &c, &err),
	    0);
	ck_assert_int_eq(api_request_key("t", &a, ka, &err), 0);
	ck_assert_int_eq(api_request_key("t", &b, kb, &err), 0);
	ck_assert_int_eq(api_request_key("t", &c, kc, &err), 0);
	ck_assert_str_eq(ka, kb);
	ck_assert_str_ne(ka, kc);
	api_create_request_free(&a);
	api_create_request_free(&b);
	api_create_request_free(&c);
}
END_TEST

START_TEST(cache_meta_bad)
{
	static const char *const bad[] = {
	    "{\"id\":\"" ID "\",\"status\":\"Ready\",\"refs\":[],\"createdAt\":1}",
	    "{\"version\":2,\"id\":\"" ID "\",\"status\":\"Ready\",\"refs\":[],\"createdAt\":1}",
	    "{\"version\":1,\"id\":\"../etc\",\"status\":\"Ready\",\"refs\":[],\"createdAt\":1}",
	    "{\"version\":1,\"id\":\"" ID "\",\"status\":\"Odd\",\"refs\":[],\"createdAt\":1}",
	    "{\"version\":1,\"id\":\"" ID "\",\"status\":\"Ready\",\"refs\":[1],\"createdAt\":1}",
	    "{\"version\":1,\"id\":\"" ID "\",\"status\":\"Ready\",\"refs\":[]}",
	    "{\"version\":1,\"id\":\"" ID "\",\"status\":\"Ready\",\"refs\":[],\"createdAt\":1,"
	    "\"manifest\":[]}",
	    /* platforms: one per ref, normalized strings */
	    "{\"version\":1,\"id\":\"" ID
	    "\",\"status\":\"Failed\",\"createdAt\":1,\"refs\":[\"a\"],"
	    "\"platforms\":[]}",
	    "{\"version\":1,\"id\":\"" ID
	    "\",\"status\":\"Failed\",\"createdAt\":1,\"refs\":[\"a\"],"
	    "\"platforms\":[\"linux/arm64\"]}",
	    "{\"version\":1,\"id\":\"" ID
	    "\",\"status\":\"Failed\",\"createdAt\":1,\"refs\":[\"a\"],"
	    "\"platforms\":[7]}",
	    "{\"version\":1,\"id\":\"" ID
	    "\",\"status\":\"Failed\",\"createdAt\":1,\"refs\":[\"a\"],"
	    "\"platforms\":\"linux/amd64\"}",
	    /* more refs than a cache can have */
	    "{\"version\":1,\"id\":\"" ID "\",\"status\":\"Failed\",\"createdAt\":1,\"refs\":"
	    "[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\","
	    "\"o\",\"p\","
	    "\"q\",\"r\",\"s\",\"t\",\"u\"]}",
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		json_t *meta = load(bad[i]);
		struct api_cache *c = NULL;
		imc_error err = {0};

		ck_assert_msg(api_cache_from_meta(meta, &c, &err) < 0, "accepted %s", bad[i]);
		ck_assert_ptr_null(c);
		json_decref(meta);
	}
}
END_TEST

START_TEST(cache_ids_and_order)
{
	struct api_cache a = {.id = "imc-00000000000000bb", .created_at = 5};
	struct api_cache b = {.id = "imc-00000000000000aa", .created_at = 6};
	struct api_cache c = {.id = "imc-00000000000000cc", .created_at = 5};
	enum api_cache_status st;

	ck_assert(api_cache_id_valid(ID));
	ck_assert(!api_cache_id_valid("imc-0123456789ABCDEF"));
	ck_assert(!api_cache_id_valid("imc-0123456789abcde"));
	ck_assert(!api_cache_id_valid("imc-0123456789abcdef0"));
	ck_assert(!api_cache_id_valid("abc-0123456789abcdef"));
	ck_assert(!api_cache_id_valid(""));
	ck_assert(!api_cache_id_valid(NULL));
	ck_assert_int_lt(api_cache_cmp(&a, &b), 0); /* createdAt first */
	ck_assert_int_lt(api_cache_cmp(&a, &c), 0); /* then id */
	ck_assert_int_gt(api_cache_cmp(&b, &c), 0);
	ck_assert_int_eq(api_cache_status_parse("Failed", &st), 0);
	ck_assert_int_eq(st, API_CACHE_FAILED);
	ck_assert_int_lt(api_cache_status_parse("failed", &st), 0);
}
END_TEST

/* ---- routing ----------------------------------------------------------------------------------
 */

START_TEST(routing)
{
	struct api_match m;

	api_route_match("/healthz", &m);
	ck_assert_int_eq(m.route, API_ROUTE_HEALTHZ);
	api_route_match("/metrics", &m);
	ck_assert_int_eq(m.route, API_ROUTE_METRICS);
	ck_assert(api_route_allows(API_ROUTE_METRICS, api_method_parse("GET")));
	ck_assert(!api_route_allows(API_ROUTE_METRICS, api_method_parse("DELETE")));
	api_route_match("/metricsx", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches", &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHES);
	api_route_match("/v1/imagecaches/" ID, &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHE);
	ck_assert_str_eq(m.id, ID);
	api_route_match("/v1/imagecaches/not-an-id", &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHE); /* the handler answers 400 */
	api_route_match("/v1/imagecaches/", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/" ID "/x", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecachesx", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);

	ck_assert(api_route_allows(API_ROUTE_CACHES, api_method_parse("POST")));
	ck_assert(api_route_allows(API_ROUTE_CACHES, api_method_parse("GET")));
	ck_assert(!api_route_allows(API_ROUTE_CACHES, api_method_parse("DELETE")));
	ck_assert(api_route_allows(API_ROUTE_CACHE, api_method_parse("DELETE")));
	ck_assert(!api_route_allows(API_ROUTE_CACHE, api_method_parse("PUT")));
	ck_assert(!api_route_allows(API_ROUTE_HEALTHZ, api_method_parse("POST")));
	ck_assert(!api_route_allows(API_ROUTE_NONE, api_method_parse("GET")));
	ck_assert_str_eq(api_route_allow(API_ROUTE_CACHE), "GET, DELETE");
}
END_TEST

/* ---- listen addresses -------------------------------------------------------------------------
 */

START_TEST(listen_parse)
{
	static const char *const bad[] = {
	    "",		"127.0.0.1", "localhost:80", ":80",    "127.0.0.1:65536", "127.0.0.1:-1",
	    "1.2.3:80", "[::1]8080", "[::1]:",	     "::1:80", "[zz]:80",	  "127.0.0.1:80x"};
	struct sockaddr_storage ss;
	socklen_t len;
	imc_error err;
	char url[128];

	ck_assert_int_eq(api_listen_parse("127.0.0.1:8080", &ss, &len, &err), 0);
	ck_assert_int_eq(ss.ss_family, AF_INET);
	ck_assert_int_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
	ck_assert_int_eq(api_listen_url((struct sockaddr *)&ss, url, sizeof(url), &err), 0);
	ck_assert_str_eq(url, "http://127.0.0.1:8080");
	ck_assert_int_eq(api_listen_parse("[::1]:0", &ss, &len, &err), 0);
	ck_assert_int_eq(ss.ss_family, AF_INET6);
	ck_assert_int_eq(api_listen_url((struct sockaddr *)&ss, url, sizeof(url), &err), 0);
	ck_assert_str_eq(url, "http://[::1]:0");
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(api_listen_parse(bad[i], &ss, &len, &err) == -EINVAL, "accepted %s",
			      bad[i]);
}
END_TEST

START_TEST(listen_parse_unix)
{
	struct sockaddr_storage ss;
	struct sockaddr_un *un = (struct sockaddr_un *)&ss;
	char path[sizeof(un->sun_path) + 8], spec[sizeof(path) + 8], url[160];
	socklen_t len;
	imc_error err;

	ck_assert_int_eq(api_listen_parse("unix:/run/imcache/imcd.sock", &ss, &len, &err), 0);
	ck_assert_int_eq(ss.ss_family, AF_UNIX);
	ck_assert_str_eq(un->sun_path, "/run/imcache/imcd.sock");
	ck_assert_int_eq(len, offsetof(struct sockaddr_un, sun_path) + strlen(un->sun_path) + 1);
	ck_assert_int_eq(api_listen_url((struct sockaddr *)&ss, url, sizeof(url), &err), 0);
	ck_assert_str_eq(url, "unix:/run/imcache/imcd.sock");
	ck_assert_int_eq(api_listen_parse("unix:", &ss, &len, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "unix:PATH"));
	/* The longest path sun_path holds (with its NUL), then one byte more. */
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[sizeof(un->sun_path) - 1] = '\0';
	snprintf(spec, sizeof(spec), "unix:%s", path);
	ck_assert_int_eq(api_listen_parse(spec, &ss, &len, &err), 0);
	ck_assert_str_eq(un->sun_path, path);
	path[sizeof(un->sun_path) - 1] = 'a';
	path[sizeof(un->sun_path)] = '\0';
	snprintf(spec, sizeof(spec), "unix:%s", path);
	ck_assert_int_eq(api_listen_parse(spec, &ss, &len, &err), -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(err.msg, "socket path longer than"));
	/* Not a unix: spec: "unix" alone is a bad TCP address. */
	ck_assert_int_eq(api_listen_parse("unix", &ss, &len, &err), -EINVAL);
}
END_TEST

START_TEST(listen_open_unix)
{
	char dir[] = "/tmp/imc-test-listen.XXXXXX", spec[128], url[160];
	struct stat st;
	imc_error err;
	int fd = -1, fd2 = -1;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(spec, sizeof(spec), "unix:%s/imcd.sock", dir);
	ck_assert_int_eq(api_listen_open(spec, &fd, url, sizeof(url), &err), 0);
	ck_assert_str_eq(url, spec);
	ck_assert_int_eq(stat(spec + 5, &st), 0);
	ck_assert(S_ISSOCK(st.st_mode));
	ck_assert_int_eq(st.st_mode & 07777, 0660);
	/* Live: a second listener refuses and leaves the socket alone. */
	ck_assert_int_eq(api_listen_open(spec, &fd2, url, sizeof(url), &err), -EADDRINUSE);
	ck_assert_int_eq(stat(spec + 5, &st), 0);
	/* Stale (nobody listens): replaced. */
	close(fd);
	ck_assert_int_eq(api_listen_open(spec, &fd, url, sizeof(url), &err), 0);
	close(fd);
	ck_assert_int_eq(api_listen_remove(url, &err), 0);
	ck_assert_int_eq(stat(spec + 5, &st), -1);
	/* Not a socket: refused, the file kept. */
	close(open(spec + 5, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	ck_assert_int_eq(api_listen_open(spec, &fd, url, sizeof(url), &err), -EEXIST);
	ck_assert_int_eq(stat(spec + 5, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(unlink(spec + 5), 0);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(listen_open_port0)
{
	char url[128];
	imc_error err;
	int fd = -1;

	ck_assert_int_eq(api_listen_open("127.0.0.1:0", &fd, url, sizeof(url), &err), 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_msg(strncmp(url, "http://127.0.0.1:", 17) == 0 && atoi(url + 17) > 0, "url %s",
		      url);
	close(fd);
	ck_assert_int_lt(api_listen_open("127.0.0.1:99999", &fd, url, sizeof(url), &err), 0);
}
END_TEST

/* ---- answers that need no cache table ---------------------------------------------------------
 */

/* Handle one request and check status and error code (NULL: a success). */
static json_t *handle(const char *method, const char *url, const char *body, bool too_large,
		      unsigned want_status, const char *want_code)
{
	struct api_response resp;
	json_t *j;

	api_handle(NULL, &test_caller, method, url, body, body ? strlen(body) : 0, too_large,
		   &resp);
	ck_assert_msg(resp.status == want_status, "%s %s: status %u, want %u (%s)", method, url,
		      resp.status, want_status, resp.body);
	ck_assert_ptr_nonnull(resp.body);
	ck_assert(resp.body[strlen(resp.body) - 1] == '\n');
	j = json_loads(resp.body, 0, NULL);
	ck_assert_msg(j != NULL, "not JSON: %s", resp.body);
	if (want_code)
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_object_get(j, "error"), "code")),
		    want_code);
	if (want_status == 405)
		ck_assert_ptr_nonnull(resp.allow);
	free(resp.body);
	return j;
}

START_TEST(handle_without_table)
{
	json_t *j = handle("GET", "/healthz", NULL, false, 200, NULL);

	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
	json_decref(j);
	json_decref(handle("GET", "/nope", NULL, false, 404, "NotFound"));
	json_decref(handle("PUT", "/v1/imagecaches", NULL, false, 405, "MethodNotAllowed"));
	json_decref(handle("POST", "/healthz", NULL, false, 405, "MethodNotAllowed"));
	json_decref(handle("GET", "/v1/imagecaches/bad id", NULL, false, 400, "InvalidArgument"));
	json_decref(handle("GET", "/v1/imagecaches/..", NULL, false, 400, "InvalidArgument"));
	json_decref(handle("DELETE",
			   "/v1/imagecaches/imc-0123456789abcdef0123456789abcdef"
			   "0123456789abcdef0123456789abcdef",
			   NULL, false, 400, "InvalidArgument"));
	json_decref(handle("POST", "/v1/imagecaches", "{", false, 400, "InvalidJSON"));
	json_decref(handle("POST", "/v1/imagecaches", "{\"images\":[],\"x\":1}", false, 400,
			   "InvalidArgument"));
	json_decref(handle("POST", "/v1/imagecaches", "", true, 413, "PayloadTooLarge"));
}
END_TEST

/* A base snapshot (img-…) and any other well-formed id that is not a cache's: an unknown cache
 * on every route, whatever the store holds (decided before any table is looked at). */
START_TEST(handle_base_snapshot_is_no_cache)
{
	static const char base[] = "img-0123456789abcdef0123456789abcdef";
	static const struct {
		const char *method, *fmt, *body;
	} routes[] = {
	    {"GET", "/v1/imagecaches/%s", NULL},
	    {"DELETE", "/v1/imagecaches/%s", NULL},
	    {"DELETE", "/v1/imagecaches/%s?force=true", NULL},
	    {"GET", "/v1/imagecaches/%s/index", NULL},
	    {"GET", "/v1/imagecaches/%s/attachments", NULL},
	    {"POST", "/v1/imagecaches/%s/attachments", "{}"},
	    {"DELETE", "/v1/imagecaches/%s/attachments/att-0123456789abcdef", NULL},
	};
	char url[160];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(routes); i++) {
		snprintf(url, sizeof(url), routes[i].fmt, base);
		json_decref(handle(routes[i].method, url, routes[i].body, false, 404, "NotFound"));
		snprintf(url, sizeof(url), routes[i].fmt, "imc-00000000000000aa0");
		json_decref(handle(routes[i].method, url, routes[i].body, false, 404, "NotFound"));
	}
	ck_assert(!api_cache_id_valid(base));
	ck_assert(imc_cache_id_valid("imc-0123456789abcdef"));
	ck_assert(!imc_cache_id_valid("imc-0123456789ABCDEF"));
	ck_assert(!imc_cache_id_valid("img-0123456789abcdef"));
}
END_TEST

/* The error message of an answer that must be 400 InvalidArgument. */
static void bad_text(const char *method, const char *url, const char *want_in_message)
{
	json_t *j = handle(method, url, NULL, false, 400, "InvalidArgument");
	const char *msg =
	    json_string_value(json_object_get(json_object_get(j, "error"), "message"));

	ck_assert_msg(msg && strstr(msg, want_in_message), "%s: message \"%s\" lacks \"%s\"", url,
		      msg ? msg : "", want_in_message);
	json_decref(j);
}

/* Bytes that are not UTF-8 (what "%ff" decodes to) are a client's error that names where they
 * are, never a 500 (no JSON can carry them) or a dropped connection. */
START_TEST(handle_bytes_that_are_not_utf8)
{
	bad_text("GET", "/v1/imagecaches/imc-\xff",
		 "path \"/v1/imagecaches/imc-\\xff\": not valid UTF-8");
	bad_text("DELETE", "/v1/imagecaches/\xc3", "not valid UTF-8");
	bad_text("GET", "/v1/chunks/\xff", "path \"/v1/chunks/\\xff\"");
	bad_text("GET", "/v1/imagecaches?name=%ff",
		 "query parameter \"name\": value not valid UTF-8");
	bad_text("GET", "/v1/imagecaches?image=a%c3%28b&limit=1", "query parameter \"image\"");
	bad_text("GET", "/v1/imagecaches?%ff%fe=1",
		 "query parameter \"\\xff\\xfe\": name not valid");
	bad_text("GET", "/healthz?x=%80", "query parameter \"x\"");
	/* Well-formed UTF-8 that names nothing is still a plain 404 / 400. */
	json_decref(
	    handle("GET", "/v1/imagecaches/caf\xc3\xa9", NULL, false, 400, "InvalidArgument"));
	json_decref(handle("GET", "/v1/nothing-\xe2\x98\x83", NULL, false, 404, "NotFound"));

	/* An error message cut in the middle of a character is still answered as JSON. */
	json_t *e = api_error_json("InvalidArgument", "id \"caf\xc3\": malformed");
	char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
	ck_assert_ptr_nonnull(text);
	ck_assert_ptr_nonnull(strstr(text, "caf\\\\xc3"));
	free(text);
	json_decref(e);
}
END_TEST

/* ---- lifecycle: retention, clientToken, events, attachments, tenants ------------------------
 */

START_TEST(create_lifecycle_fields)
{
	struct api_create_request req;
	imc_error err;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"}]}", &req, &err), 0);
	ck_assert_int_eq(req.retention_days, API_RETENTION_DEFAULT);
	ck_assert_ptr_null(req.client_token);
	api_create_request_free(&req);
	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"retentionDays\":0,"
			       "\"clientToken\":\"tok-1\"}",
			       &req, &err),
			 0);
	ck_assert_int_eq(req.retention_days, 0);
	ck_assert_str_eq(req.client_token, "tok-1");
	api_create_request_free(&req);
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"retentionDays\":-1}", -EINVAL,
		   "retentionDays");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"retentionDays\":36501}", -EINVAL,
		   "retentionDays");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"retentionDays\":\"7\"}", -EINVAL,
		   "retentionDays");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"clientToken\":\"../x\"}", -EINVAL,
		   "clientToken");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"clientToken\":\"\"}", -EINVAL,
		   "clientToken");
	expect_bad("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"clientToken\":7}", -EINVAL,
		   "clientToken");
}
END_TEST

START_TEST(request_key_identical)
{
	struct api_create_request a, b;
	char ka[IMC_SHA256_HEX_LEN + 1], kb[IMC_SHA256_HEX_LEN + 1];
	imc_error err;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"},{\"ref\":\"r.io/b:1\"}],"
			       "\"clientToken\":\"x\"}",
			       &a, &err),
			 0);
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"r.io/a:1\"},{\"ref\":\"r.io/b:1\"}]}", &b, &err), 0);
	/* the token is not part of what makes requests identical */
	ck_assert_int_eq(api_request_key("t1", &a, ka, &err), 0);
	ck_assert_int_eq(api_request_key("t1", &b, kb, &err), 0);
	ck_assert_str_eq(ka, kb);
	/* another tenant, another key */
	ck_assert_int_eq(api_request_key("t2", &b, kb, &err), 0);
	ck_assert_str_ne(ka, kb);
	api_create_request_free(&b);
	/* the order of the images matters (/images/<n>) */
	ck_assert_int_eq(
	    parse("{\"images\":[{\"ref\":\"r.io/b:1\"},{\"ref\":\"r.io/a:1\"}]}", &b, &err), 0);
	ck_assert_int_eq(api_request_key("t1", &b, kb, &err), 0);
	ck_assert_str_ne(ka, kb);
	api_create_request_free(&b);
	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"},{\"ref\":\"r.io/b:1\"}],"
			       "\"retentionDays\":3}",
			       &b, &err),
			 0);
	ck_assert_int_eq(api_request_key("t1", &b, kb, &err), 0);
	ck_assert_str_ne(ka, kb);
	api_create_request_free(&a);
	api_create_request_free(&b);
}
END_TEST

START_TEST(cache_events_ring)
{
	struct api_cache *c = new_cache("ev", 100);
	json_t *j;

	for (int i = 0; i < API_EVENTS_MAX + 7; i++)
		ck_assert_int_eq(api_cache_add_event(c, 1000 + i, "T", "event %d", i), 0);
	ck_assert_uint_eq(c->n_events, API_EVENTS_MAX);
	/* the oldest went: "Created" and events 0..7 */
	ck_assert_str_eq(c->events[0].message, "event 7");
	ck_assert_str_eq(c->events[API_EVENTS_MAX - 1].message, "event 56");
	j = api_cache_to_json(c);
	ck_assert_uint_eq(json_array_size(json_object_get(j, "events")), API_EVENTS_MAX);
	ck_assert_str_eq(json_string_value(json_object_get(
			     json_array_get(json_object_get(j, "events"), 0), "message")),
			 "event 7");
	json_decref(j);
	api_cache_free(c);
}
END_TEST

START_TEST(cache_meta_lifecycle_roundtrip)
{
	struct api_create_request req;
	struct api_cache *c = NULL, *back = NULL;
	imc_error err;
	json_t *meta, *j;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"}],\"retentionDays\":2,"
			       "\"clientToken\":\"tk\"}",
			       &req, &err),
			 0);
	ck_assert_int_eq(api_cache_new_for("imc-00000000000000aa", "acme", &req, 1000, &c, &err),
			 0);
	api_create_request_free(&req);
	c->status = API_CACHE_READY;
	c->ready_at = 2000;
	c->last_used_at = 3000;
	c->attachments = calloc(1, sizeof(*c->attachments));
	snprintf(c->attachments[0].id, API_ID_MAX, "att-0123456789abcdef");
	c->attachments[0].host = strdup("node-1");
	c->attachments[0].at = 3000;
	c->n_attachments = 1;
	ck_assert_int_eq(api_cache_add_event(c, 3000, "Attached", "att-0123456789abcdef"), 0);
	meta = api_cache_to_meta(c);
	ck_assert_ptr_nonnull(meta);
	/* credentials never, the tenant always */
	ck_assert_str_eq(json_string_value(json_object_get(meta, "tenant")), "acme");
	ck_assert_int_eq(api_cache_from_meta(meta, &back, &err), 0);
	ck_assert_str_eq(back->tenant, "acme");
	ck_assert_str_eq(back->client_token, "tk");
	ck_assert_str_eq(back->request_key, c->request_key);
	ck_assert_int_eq(back->retention_days, 2);
	ck_assert_int_eq(back->last_used_at, 3000);
	ck_assert_uint_eq(back->n_attachments, 1);
	ck_assert_str_eq(back->attachments[0].id, "att-0123456789abcdef");
	ck_assert_str_eq(back->attachments[0].host, "node-1");
	ck_assert_uint_eq(back->n_events, 2);
	ck_assert_str_eq(back->events[0].type, "Created");
	ck_assert_str_eq(back->events[1].type, "Attached");
	/* expiry: 2 days after the last use */
	ck_assert_int_eq(api_cache_expires_at(back, 86400), 3000 + 2 * 86400);
	j = api_cache_to_json(back);
	ck_assert_str_eq(json_string_value(json_object_get(j, "expiresAt")),
			 "1970-01-03T00:50:00Z");
	ck_assert_str_eq(json_string_value(json_object_get(j, "lastUsedAt")),
			 "1970-01-01T00:50:00Z");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "attachments")), 1);
	ck_assert_ptr_null(json_object_get(j, "clientToken"));
	ck_assert_ptr_null(json_object_get(j, "tenant"));
	json_decref(j);
	/* pinned: never expires */
	back->retention_days = 0;
	ck_assert_int_eq(api_cache_expires_at(back, 86400), 0);
	json_decref(meta);
	api_cache_free(c);
	api_cache_free(back);
}
END_TEST

START_TEST(routing_attachments)
{
	struct api_match m;

	api_route_match("/v1/imagecaches/imc-0123456789abcdef/attachments", &m);
	ck_assert_int_eq(m.route, API_ROUTE_ATTACHMENTS);
	ck_assert_str_eq(m.id, "imc-0123456789abcdef");
	ck_assert(api_route_allows(m.route, API_METHOD_POST));
	ck_assert(api_route_allows(m.route, API_METHOD_GET));
	ck_assert(!api_route_allows(m.route, API_METHOD_DELETE));
	api_route_match("/v1/imagecaches/imc-0123456789abcdef/attachments/att-0123456789abcdef",
			&m);
	ck_assert_int_eq(m.route, API_ROUTE_ATTACHMENT);
	ck_assert_str_eq(m.id, "imc-0123456789abcdef");
	ck_assert_str_eq(m.aid, "att-0123456789abcdef");
	ck_assert(api_route_allows(m.route, API_METHOD_DELETE));
	ck_assert(!api_route_allows(m.route, API_METHOD_GET));
	ck_assert_str_eq(api_route_allow(m.route), "DELETE");
	api_route_match("/v1/imagecaches/x/attachments/a/b", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/x/attachmentsX", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/x/attachments/", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches//attachments", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/x/other", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	ck_assert(api_attach_id_valid("att-0123456789abcdef"));
	ck_assert(!api_attach_id_valid("att-0123456789ABCDEF"));
	ck_assert(!api_attach_id_valid("att-0123"));
	ck_assert(!api_attach_id_valid("imc-0123456789abcdef"));
}
END_TEST

START_TEST(delete_query)
{
	struct api_query_arg args[2] = {{"force", "true"}, {"force", "false"}};
	bool force = false;
	imc_error err;

	ck_assert_int_eq(api_delete_query_parse(args, 0, &force, &err), 0);
	ck_assert(!force);
	ck_assert_int_eq(api_delete_query_parse(args, 1, &force, &err), 0);
	ck_assert(force);
	ck_assert_int_eq(api_delete_query_parse(args + 1, 1, &force, &err), 0);
	ck_assert(!force);
	ck_assert_int_eq(api_delete_query_parse(args, 2, &force, &err), -EINVAL);
	args[0].value = "yes";
	ck_assert_int_eq(api_delete_query_parse(args, 1, &force, &err), -EINVAL);
	args[0] = (struct api_query_arg){"bogus", "1"};
	ck_assert_int_eq(api_delete_query_parse(args, 1, &force, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "bogus"));
	/* through the handler: checked before the table is looked at */
	json_decref(handle("DELETE", "/v1/imagecaches/imc-0123456789abcdef?force=maybe", NULL,
			   false, 400, "InvalidArgument"));
	json_decref(handle("POST", "/v1/imagecaches/bad!/attachments", "{}", false, 400,
			   "InvalidArgument"));
	json_decref(handle("GET", "/v1/imagecaches/imc-0123456789abcdef/attachments/att-1", NULL,
			   false, 405, "MethodNotAllowed"));
}
END_TEST

/* A Creating cache of tenant with one image ref (n picks the id). */
static struct api_cache *queued_cache(const char *tenant, const char *ref, int n)
{
	char body[256], id[API_ID_MAX];
	struct api_create_request req;
	struct api_cache *c = NULL;
	imc_error err;

	snprintf(body, sizeof(body), "{\"images\":[{\"ref\":\"%s\"}]}", ref);
	snprintf(id, sizeof(id), "imc-%016x", n);
	ck_assert_int_eq(parse(body, &req, &err), 0);
	ck_assert_int_eq(api_cache_new_for(id, tenant, &req, n, &c, &err), 0);
	api_create_request_free(&req);
	return c;
}

/* The build queue: per-tenant cap, the least busy tenant first, queue order on ties, never two
 * builds of one image ref at once. */
START_TEST(queue_pick_fair)
{
	struct api_cache *a1 = queued_cache("ta", "r.io/a1:1", 1),
			 *a2 = queued_cache("ta", "r.io/a2:1", 2),
			 *a3 = queued_cache("ta", "r.io/a3:1", 3),
			 *b1 = queued_cache("tb", "r.io/b1:1", 4),
			 *b2 = queued_cache("tb", "r.io/b2:1", 5),
			 *bx = queued_cache("tb", "r.io/a1:1", 6);

	/* ta runs a1 with a cap of 1: b1 goes although a2 is older. */
	ck_assert_int_eq(api_queue_pick((struct api_cache *[]){a2, b1}, 2,
					(struct api_cache *[]){a1, NULL}, 2, 1),
			 1);
	/* No cap: still the tenant that runs nothing first. */
	ck_assert_int_eq(api_queue_pick((struct api_cache *[]){a2, a3, b1}, 3,
					(struct api_cache *[]){NULL, a1, NULL}, 3, 0),
			 2);
	/* Both run one: the oldest request. */
	ck_assert_int_eq(api_queue_pick((struct api_cache *[]){a3, b2}, 2,
					(struct api_cache *[]){a1, b1, NULL}, 3, 2),
			 0);
	/* Only ta waits and it is at its cap: nothing starts, a worker stays for tb. */
	ck_assert_int_eq(api_queue_pick((struct api_cache *[]){a2, a3}, 2,
					(struct api_cache *[]){a1, NULL}, 2, 1),
			 -1);
	/* The same image ref as a running build (another tenant's) waits for it. */
	ck_assert_int_eq(
	    api_queue_pick((struct api_cache *[]){bx}, 1, (struct api_cache *[]){a1, NULL}, 2, 0),
	    -1);
	ck_assert_int_eq(api_queue_pick((struct api_cache *[]){bx, b2}, 2,
					(struct api_cache *[]){a1, NULL}, 2, 0),
			 1);
	/* An empty queue; free workers only. */
	ck_assert_int_eq(api_queue_pick(NULL, 0, (struct api_cache *[]){NULL}, 1, 1), -1);
	ck_assert_int_eq(
	    api_queue_pick((struct api_cache *[]){a1}, 1, (struct api_cache *[]){NULL}, 1, 1), 0);
	api_cache_free(a1);
	api_cache_free(a2);
	api_cache_free(a3);
	api_cache_free(b1);
	api_cache_free(b2);
	api_cache_free(bx);
}
END_TEST

START_TEST(list_tenant_and_shared_layers)
{
	struct api_create_request req;
	struct api_cache *a = NULL, *b = NULL, *items[2];
	struct api_list_query q = {.limit = 10};
	imc_error err;
	json_t *page, *want;

	ck_assert_int_eq(parse("{\"images\":[{\"ref\":\"r.io/a:1\"}]}", &req, &err), 0);
	ck_assert_int_eq(api_cache_new_for("imc-00000000000000a1", "ta", &req, 1, &a, &err), 0);
	ck_assert_int_eq(api_cache_new_for("imc-00000000000000b1", "tb", &req, 2, &b, &err), 0);
	api_create_request_free(&req);
	items[0] = a;
	items[1] = b;
	ck_assert_int_eq(api_list_page_tenant(items, 2, "tb", &q, &page, &err), 0);
	ck_assert_uint_eq(json_array_size(json_object_get(page, "items")), 1);
	ck_assert_str_eq(json_string_value(json_object_get(
			     json_array_get(json_object_get(page, "items"), 0), "id")),
			 "imc-00000000000000b1");
	json_decref(page);
	a->manifest =
	    load("{\"images\":[{\"ref\":\"r.io/a:1\",\"layers\":[{\"digest\":\"sha256:1\"},"
		 "{\"digest\":\"sha256:2\"}]},{\"layers\":[{\"digest\":\"sha256:3\"}]}]}");
	want = load("[\"sha256:2\",\"sha256:3\",\"sha256:9\"]");
	ck_assert_uint_eq(api_cache_shared_layers(a, want), 2);
	ck_assert_uint_eq(api_cache_shared_layers(b, want), 0);
	json_decref(want);
	api_cache_free(a);
	api_cache_free(b);
}
END_TEST

/* ---- rendered objects (the bytes GET answers, kept per cache) ---------------------------------
 */

/* What the rendered bytes must be: the compact dump of api_cache_to_json now. */
static void expect_rendered_fresh(struct api_cache *c)
{
	json_t *j = api_cache_to_json(c);
	char *want = json_dumps(j, JSON_COMPACT);
	const char *got = NULL;
	size_t len = 0;

	ck_assert_int_eq(api_cache_rendered(c, &got, &len), 0);
	ck_assert_uint_eq(len, strlen(want));
	ck_assert_str_eq(got, want);
	free(want);
	json_decref(j);
}

START_TEST(rendered_kept_until_a_change)
{
	struct api_cache *c = new_cache("web", 1795000000);
	const char *first = NULL, *again = NULL;
	size_t len = 0;
	uint64_t gen;

	ck_assert_int_eq(api_cache_rendered(c, &first, &len), 0);
	ck_assert_int_eq(api_cache_rendered(c, &again, &len), 0);
	ck_assert_ptr_eq(first, again); /* nothing changed: not rendered again */
	expect_rendered_fresh(c);

	/* An event (also the 51st, which drops the oldest and keeps the count at 50). */
	gen = c->gen;
	ck_assert_int_eq(api_cache_add_event(c, 1795000001, "Note", "first note"), 0);
	ck_assert_uint_gt(c->gen, gen);
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "first note"));
	for (int i = 0; i < API_EVENTS_MAX; i++)
		ck_assert_int_eq(api_cache_add_event(c, 1795000002, "Note", "note %d", i), 0);
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "note 49"));
	ck_assert_ptr_null(strstr(c->rendered, "first note"));

	/* Build progress, then Ready with a manifest. */
	c->progress_done = 50;
	c->progress_total = 200;
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "\"percent\":25"));
	c->status = API_CACHE_READY;
	c->ready_at = 1795000042;
	c->size = 4096;
	c->manifest = load("{\"images\":[{\"ref\":\"127.0.0.1:5000/busybox:1.36\","
			   "\"digest\":\"sha256:aa\"}]}");
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "\"status\":\"Ready\""));
	ck_assert_ptr_nonnull(strstr(c->rendered, "sha256:aa"));

	/* An attach: the count, lastUsedAt and expiresAt (computed from it) move. */
	c->attachments = calloc(1, sizeof(*c->attachments));
	ck_assert_ptr_nonnull(c->attachments);
	snprintf(c->attachments[0].id, sizeof(c->attachments[0].id), "att-0000000000000001");
	c->n_attachments = 1;
	c->last_used_at = 1795100000;
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "\"attachments\":1"));
	ck_assert_ptr_nonnull(strstr(c->rendered, "\"lastUsedAt\":\"2026-11-19T14:53:20Z\""));

	/* A touch alone re-renders (a change of something the stamp does not hold). */
	first = c->rendered;
	api_cache_touch(c);
	ck_assert_int_eq(api_cache_rendered(c, &again, &len), 0);
	ck_assert_uint_eq(len, strlen(again));

	/* Failed: status and message. */
	ck_assert_int_eq(api_cache_set_failed(c, "disk on fire", NULL), 0);
	expect_rendered_fresh(c);
	ck_assert_ptr_nonnull(strstr(c->rendered, "\"statusMessage\":\"disk on fire\""));
	api_cache_free(c);
}
END_TEST

/* The old way of building a page: a json_t tree, dumped. */
static char *page_as_tree(struct api_cache **items, size_t n, size_t limit)
{
	json_t *page = json_pack("{s:[]}", "items");
	size_t i, n_s;
	char *s, *t;

	for (i = 0; i < n && i < limit; i++)
		json_array_append_new(json_object_get(page, "items"), api_cache_to_json(items[i]));
	if (n > limit) {
		char token[API_PAGE_TOKEN_MAX + 1];
		ck_assert_int_eq(api_page_token_encode(items[limit - 1]->created_at,
						       items[limit - 1]->id, token, sizeof(token),
						       NULL),
				 0);
		json_object_set_new(page, "nextPageToken", json_string(token));
	}
	s = json_dumps(page, JSON_COMPACT);
	json_decref(page);
	n_s = strlen(s);
	t = realloc(s, n_s + 2);
	ck_assert_ptr_nonnull(t);
	t[n_s] = '\n';
	t[n_s + 1] = '\0';
	return t;
}

START_TEST(list_body_same_bytes_as_tree)
{
	struct api_cache *items[3];
	imc_error err;

	for (int i = 0; i < 3; i++) {
		char id[API_ID_MAX];
		snprintf(id, sizeof(id), "imc-00000000000000c%d", i);
		items[i] = new_cache(i == 1 ? "b\"quoted\\\u00e9" : "a", 1795000000 + i);
		snprintf(items[i]->id, sizeof(items[i]->id), "%s", id);
		api_cache_touch(items[i]);
	}
	items[2]->status = API_CACHE_READY;
	for (size_t limit = 1; limit <= 4; limit++) {
		struct api_list_query q = {.limit = limit};
		char *want = page_as_tree(items, 3, limit), *got = NULL;
		size_t len = 0;

		ck_assert_int_eq(api_list_page_body(items, 3, NULL, &q, &got, &len, &err), 0);
		ck_assert_uint_eq(len, strlen(got));
		ck_assert_str_eq(got, want);
		free(got);
		free(want);
	}
	{ /* nothing matches: an empty page */
		struct api_list_query q = {.limit = 10, .name = "nobody"};
		char *got = NULL;
		size_t len = 0;

		ck_assert_int_eq(api_list_page_body(items, 3, NULL, &q, &got, &len, &err), 0);
		ck_assert_str_eq(got, "{\"items\":[]}\n");
		free(got);
	}
	{ /* a change shows in the next page */
		struct api_list_query q = {.limit = 10};
		char *got = NULL;
		size_t len = 0;

		ck_assert_int_eq(api_cache_add_event(items[0], 1795000100, "Note", "seen?"), 0);
		ck_assert_int_eq(api_list_page_body(items, 3, NULL, &q, &got, &len, &err), 0);
		ck_assert_ptr_nonnull(strstr(got, "seen?"));
		free(got);
	}
	for (int i = 0; i < 3; i++)
		api_cache_free(items[i]);
}
END_TEST

/* ---- metrics ----------------------------------------------------------------------------------
 */

/* A known state: every bucket edge case once. */
static void metrics_known_state(struct api_metrics_page *p)
{
	struct api_metrics *m = &p->m;

	*p = (struct api_metrics_page){.caches = {1, 2, 3, 0, 0, 4}, .have_pool = true};
	p->attachments = 5;
	m->evictions = 6;
	m->expirations = 7;
	m->attaches = 8;
	m->detaches = 3;
	p->pool_size = 1000;
	p->pool_used = 400;
	p->pool_free = 600;
	api_metrics_observe_build(m, false, 500000000ULL);    /* 0.5 s: le 1 */
	api_metrics_observe_build(m, true, 5000000000ULL);    /* 5 s exactly: le 5 (inclusive) */
	api_metrics_observe_build(m, true, 4000000000000ULL); /* 4000 s: +Inf only */
	api_metrics_observe_request(m, 200, 300000ULL);	      /* 0.0003 s */
	api_metrics_observe_request(m, 202, 1000000ULL);      /* 0.001 s exactly */
	api_metrics_observe_request(m, 200, 2000000000ULL);   /* 2 s: +Inf only */
	api_metrics_observe_request(m, 42, 7000000ULL);	      /* no such status: a 500 */
	api_metrics_add_pull_bytes(m, 1234);
	api_metrics_add_pull_bytes(m, 1);
	m->builds_in_flight = 1;
	for (int i = 0; i < 3; i++)
		api_metrics_count_connection(m, API_CONN_OPENED);
	api_metrics_count_connection(m, API_CONN_CLOSED);
	api_metrics_count_connection(m, API_CONN_TIMED_OUT);
	api_metrics_count_connection(m, API_CONN_EVICTED);
	api_metrics_count_connection(m, API_CONN_EVICTED);
	api_metrics_count_connection(m, API_CONN_RESERVED);
	api_metrics_count_connection(m, API_CONN_REFUSED);
}

static const char METRICS_KNOWN_PAGE[] =
    "# HELP imcache_caches Image caches by status.\n"
    "# TYPE imcache_caches gauge\n"
    "imcache_caches{status=\"Creating\"} 1\n"
    "imcache_caches{status=\"Ready\"} 2\n"
    "imcache_caches{status=\"Failed\"} 3\n"
    "imcache_caches{status=\"Updating\"} 0\n"
    "imcache_caches{status=\"Deleting\"} 0\n"
    "imcache_caches{status=\"Expired\"} 4\n"
    "# HELP imcache_builds_in_flight Cache builds running now.\n"
    "# TYPE imcache_builds_in_flight gauge\n"
    "imcache_builds_in_flight 1\n"
    "# HELP imcache_builds_total Finished cache builds by result.\n"
    "# TYPE imcache_builds_total counter\n"
    "imcache_builds_total{result=\"ready\"} 2\n"
    "imcache_builds_total{result=\"failed\"} 1\n"
    "# HELP imcache_build_duration_seconds Duration of finished cache builds, Ready or Failed.\n"
    "# TYPE imcache_build_duration_seconds histogram\n"
    "imcache_build_duration_seconds_bucket{le=\"1\"} 1\n"
    "imcache_build_duration_seconds_bucket{le=\"5\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"15\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"30\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"60\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"120\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"300\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"600\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"1800\"} 2\n"
    "imcache_build_duration_seconds_bucket{le=\"+Inf\"} 3\n"
    "imcache_build_duration_seconds_sum 4005.500000000\n"
    "imcache_build_duration_seconds_count 3\n"
    "# HELP imcache_pull_bytes_total Layer bytes downloaded from registries, as the builder "
    "reported them.\n"
    "# TYPE imcache_pull_bytes_total counter\n"
    "imcache_pull_bytes_total 1235\n"
    "# HELP imcache_pool_bytes Bytes of the cache store's pool.\n"
    "# TYPE imcache_pool_bytes gauge\n"
    "imcache_pool_bytes{kind=\"size\"} 1000\n"
    "imcache_pool_bytes{kind=\"used\"} 400\n"
    "imcache_pool_bytes{kind=\"free\"} 600\n"
    "# HELP imcache_evictions_total Caches removed because the pool passed its high watermark.\n"
    "# TYPE imcache_evictions_total counter\n"
    "imcache_evictions_total 6\n"
    "# HELP imcache_expirations_total Caches removed because their retention ran out.\n"
    "# TYPE imcache_expirations_total counter\n"
    "imcache_expirations_total 7\n"
    "# HELP imcache_attaches_total Attachments reported by imc-attach and imc-runtime.\n"
    "# TYPE imcache_attaches_total counter\n"
    "imcache_attaches_total 8\n"
    "# HELP imcache_detaches_total Attachments ended.\n"
    "# TYPE imcache_detaches_total counter\n"
    "imcache_detaches_total 3\n"
    "# HELP imcache_attachments Clones attached now, all caches.\n"
    "# TYPE imcache_attachments gauge\n"
    "imcache_attachments 5\n"
    "# HELP imcache_http_requests_total HTTP requests answered, by status code.\n"
    "# TYPE imcache_http_requests_total counter\n"
    "imcache_http_requests_total{code=\"200\"} 2\n"
    "imcache_http_requests_total{code=\"202\"} 1\n"
    "imcache_http_requests_total{code=\"500\"} 1\n"
    "# HELP imcache_http_request_duration_seconds Time from a request's first byte to its answer "
    "being queued.\n"
    "# TYPE imcache_http_request_duration_seconds histogram\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.001\"} 2\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.0025\"} 2\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.005\"} 2\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.01\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.025\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.05\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.1\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.25\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"0.5\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"1\"} 3\n"
    "imcache_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"
    "imcache_http_request_duration_seconds_sum 2.008300000\n"
    "imcache_http_request_duration_seconds_count 4\n"
    "# HELP imcache_http_connections Client connections open now.\n"
    "# TYPE imcache_http_connections gauge\n"
    "imcache_http_connections 2\n"
    "# HELP imcache_http_connections_closed_total Client connections imcd closed before their "
    "request was in, by reason.\n"
    "# TYPE imcache_http_connections_closed_total counter\n"
    "imcache_http_connections_closed_total{reason=\"request_timeout\"} 1\n"
    "imcache_http_connections_closed_total{reason=\"evicted\"} 2\n"
    "# HELP imcache_http_connections_reserved_total Client connections opened in the reserve "
    "(/healthz and /metrics only).\n"
    "# TYPE imcache_http_connections_reserved_total counter\n"
    "imcache_http_connections_reserved_total 1\n"
    "# HELP imcache_http_connections_refused_total Client connections refused when accepted: "
    "over a connection limit.\n"
    "# TYPE imcache_http_connections_refused_total counter\n"
    "imcache_http_connections_refused_total 1\n";

static size_t count_lines_starting(const char *page, const char *prefix)
{
	size_t n = 0, len = strlen(prefix);

	for (const char *l = page; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
		n += strncmp(l, prefix, len) == 0;
	return n;
}

/* The value of the line that starts with prefix (which must be there once). */
static unsigned long long sample(const char *page, const char *prefix)
{
	const char *l = strstr(page, prefix);

	ck_assert_msg(l && (l == page || l[-1] == '\n'), "no line %s", prefix);
	ck_assert_msg(strstr(l + 1, prefix) == NULL, "line %s twice", prefix);
	return strtoull(l + strlen(prefix), NULL, 10);
}

/* Exposition rules every family must keep: one HELP and one TYPE, before its samples;
 * histogram buckets never decrease and +Inf equals _count. */
static void check_family(const char *page, const char *name, const char *type)
{
	char prefix[160];
	unsigned long long prev = 0, v;
	const char *l;

	snprintf(prefix, sizeof(prefix), "# HELP %s ", name);
	ck_assert_uint_eq(count_lines_starting(page, prefix), 1);
	snprintf(prefix, sizeof(prefix), "# TYPE %s %s\n", name, type);
	ck_assert_uint_eq(count_lines_starting(page, prefix), 1);
	snprintf(prefix, sizeof(prefix), "# TYPE %s ", name);
	ck_assert_uint_eq(count_lines_starting(page, prefix), 1);
	if (strcmp(type, "histogram") != 0)
		return;
	snprintf(prefix, sizeof(prefix), "%s_bucket{le=\"", name);
	for (l = strstr(page, prefix); l; l = strstr(l + 1, prefix)) {
		v = strtoull(strstr(l, "} ") + 2, NULL, 10);
		ck_assert_msg(v >= prev, "%s: bucket %llu after %llu", name, v, prev);
		prev = v;
	}
	snprintf(prefix, sizeof(prefix), "%s_bucket{le=\"+Inf\"} ", name);
	v = sample(page, prefix);
	ck_assert_uint_eq(v, prev);
	snprintf(prefix, sizeof(prefix), "%s_count ", name);
	ck_assert_uint_eq(sample(page, prefix), v);
}

static void check_families(const char *page)
{
	check_family(page, "imcache_caches", "gauge");
	check_family(page, "imcache_builds_in_flight", "gauge");
	check_family(page, "imcache_builds_total", "counter");
	check_family(page, "imcache_build_duration_seconds", "histogram");
	check_family(page, "imcache_pull_bytes_total", "counter");
	check_family(page, "imcache_pool_bytes", "gauge");
	check_family(page, "imcache_http_requests_total", "counter");
	check_family(page, "imcache_http_request_duration_seconds", "histogram");
	check_family(page, "imcache_evictions_total", "counter");
	check_family(page, "imcache_expirations_total", "counter");
	check_family(page, "imcache_attaches_total", "counter");
	check_family(page, "imcache_detaches_total", "counter");
	check_family(page, "imcache_attachments", "gauge");
	check_family(page, "imcache_http_connections", "gauge");
	check_family(page, "imcache_http_connections_closed_total", "counter");
	check_family(page, "imcache_http_connections_reserved_total", "counter");
	check_family(page, "imcache_http_connections_refused_total", "counter");
	ck_assert_uint_eq(count_lines_starting(page, "# TYPE "), 17);
	ck_assert_uint_eq(count_lines_starting(page, "# HELP "), 17);
}

START_TEST(metrics_page_known_state)
{
	struct api_metrics_page p;
	char *page = NULL;
	imc_error err;

	metrics_known_state(&p);
	ck_assert_int_eq(api_metrics_render(&p, &page, &err), 0);
	ck_assert_str_eq(page, METRICS_KNOWN_PAGE);
	check_families(page);
	free(page);
}
END_TEST

START_TEST(metrics_page_load_copies)
{
	struct api_metrics_page p, q = {0};
	char *a = NULL, *b = NULL;
	imc_error err;

	metrics_known_state(&p);
	q = p;
	api_metrics_load(&p.m, &q.m);
	ck_assert_int_eq(api_metrics_render(&q, &a, &err), 0);
	ck_assert_str_eq(a, METRICS_KNOWN_PAGE);
	/* A NULL set of counters counts nothing. */
	api_metrics_observe_build(NULL, true, 1);
	api_metrics_observe_request(NULL, 200, 1);
	api_metrics_add_pull_bytes(NULL, 1);
	/* The page reads the copy, not the counters it came from. */
	api_metrics_observe_request(&p.m, 404, 1);
	ck_assert_int_eq(api_metrics_render(&q, &b, &err), 0);
	ck_assert_str_eq(b, METRICS_KNOWN_PAGE);
	free(a);
	free(b);
}
END_TEST

START_TEST(metrics_page_empty)
{
	struct api_metrics_page p = {0};
	char *page = NULL;
	imc_error err;

	ck_assert_int_eq(api_metrics_render(&p, &page, &err), 0);
	check_families(page);
	ck_assert_uint_eq(sample(page, "imcache_caches{status=\"Creating\"} "), 0);
	ck_assert_uint_eq(sample(page, "imcache_caches{status=\"Ready\"} "), 0);
	ck_assert_uint_eq(sample(page, "imcache_caches{status=\"Failed\"} "), 0);
	ck_assert_uint_eq(sample(page, "imcache_builds_total{result=\"failed\"} "), 0);
	ck_assert_uint_eq(sample(page, "imcache_build_duration_seconds_count "), 0);
	ck_assert_ptr_nonnull(strstr(page, "\nimcache_build_duration_seconds_sum 0.000000000\n"));
	/* No pool reading and no request yet: the families without samples. */
	ck_assert_ptr_null(strstr(page, "imcache_pool_bytes{"));
	ck_assert_ptr_null(strstr(page, "imcache_http_requests_total{"));
	free(page);
}
END_TEST

START_TEST(metrics_handle_without_table)
{
	struct api_response resp;

	api_handle(NULL, &test_caller, "GET", "/metrics", NULL, 0, false, &resp);
	ck_assert_uint_eq(resp.status, 200);
	ck_assert_str_eq(resp.content_type, "text/plain; version=0.0.4; charset=utf-8");
	ck_assert_ptr_nonnull(resp.body);
	ck_assert(strncmp(resp.body, "# HELP imcache_caches ", 22) == 0);
	check_families(resp.body);
	free(resp.body);
	api_handle(NULL, &test_caller, "POST", "/metrics", "", 0, false, &resp);
	ck_assert_uint_eq(resp.status, 405);
	ck_assert_str_eq(resp.allow, "GET");
	ck_assert_ptr_null(resp.content_type);
	free(resp.body);
	api_handle(NULL, &test_caller, "GET", "/metrics/x", NULL, 0, false, &resp);
	ck_assert_uint_eq(resp.status, 404);
	free(resp.body);
}
END_TEST

/* ---- list queries and pages -------------------------------------------------------------------
 */

static int parse_query(const char *qs, struct api_list_query *q, imc_error *err)
{
	struct api_query_arg args[API_QUERY_ARGS_MAX];
	char buf[4096];
	size_t n = 0;
	int r;

	snprintf(buf, sizeof(buf), "%s", qs);
	memset(q, 0, sizeof(*q));
	imc_err_clear(err);
	r = api_query_split(buf, args, API_QUERY_ARGS_MAX, &n, err);
	if (r < 0)
		return r;
	r = api_list_query_parse(args, n, q, err);
	return r;
}

static void expect_bad_query(const char *qs, const char *needle)
{
	struct api_list_query q;
	imc_error err;
	int r = parse_query(qs, &q, &err);

	ck_assert_msg(r == -EINVAL, "%s: got %d, want -EINVAL", qs, r);
	ck_assert_msg(strstr(err.msg, needle), "%s: message \"%s\" lacks \"%s\"", qs, err.msg,
		      needle);
}

START_TEST(list_query_good)
{
	struct api_list_query q;
	imc_error err;

	ck_assert_int_eq(parse_query("", &q, &err), 0);
	ck_assert_uint_eq(q.limit, API_LIST_LIMIT_DEFAULT);
	ck_assert(!q.have_status && !q.have_after);
	ck_assert_ptr_null(q.name);
	ck_assert_ptr_null(q.image);
	api_list_query_free(&q);

	ck_assert_int_eq(parse_query("status=Failed&name=web&limit=1000&image=127.0.0.1%3A5000/"
				     "imc/bb%3Av1&match=exact",
				     &q, &err),
			 0);
	ck_assert(q.have_status && q.status == API_CACHE_FAILED);
	ck_assert_str_eq(q.name, "web");
	ck_assert_str_eq(q.image, "127.0.0.1:5000/imc/bb:v1");
	ck_assert_ptr_null(q.image_digest);
	ck_assert_uint_eq(q.limit, 1000);
	api_list_query_free(&q);

	ck_assert_int_eq(
	    parse_query("image=r.io/a@sha256:"
			"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			&q, &err),
	    0);
	ck_assert_str_eq(q.image_digest,
			 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
	ck_assert_ptr_null(q.platform);
	api_list_query_free(&q);

	ck_assert_int_eq(parse_query("image=r.io/a&platform=linux/aarch64&match=best", &q, &err),
			 0);
	ck_assert_str_eq(q.platform, "linux/arm64/v8");
	api_list_query_free(&q);
}
END_TEST

/* image=REF&platform=P: only the caches that hold REF for P (by ref, or by digest). */
START_TEST(list_match_platform)
{
	char *refs[] = {"r.io/a:1"};
	char *amd[] = {"linux/amd64"}, *arm[] = {"linux/arm64/v8"};
	struct api_create_request ra = {.refs = refs, .platforms = amd, .n_refs = 1};
	struct api_create_request rb = {.refs = refs, .platforms = arm, .n_refs = 1};
	struct api_cache *a = NULL, *b = NULL;
	struct api_list_query q;
	imc_error err;

	ck_assert_int_eq(api_cache_new("imc-00000000000000a1", &ra, 1, &a, &err), 0);
	ck_assert_int_eq(api_cache_new("imc-00000000000000b1", &rb, 2, &b, &err), 0);
	ck_assert_int_eq(parse_query("image=r.io/a:1", &q, &err), 0);
	ck_assert(api_cache_matches(a, &q) && api_cache_matches(b, &q));
	api_list_query_free(&q);
	ck_assert_int_eq(parse_query("image=r.io/a:1&platform=linux/arm64", &q, &err), 0);
	ck_assert(!api_cache_matches(a, &q));
	ck_assert(api_cache_matches(b, &q));
	api_list_query_free(&q);
	/* by digest: the built image's platform counts */
	a->manifest = load("{\"images\":[{\"ref\":\"r.io/a:1\",\"platform\":\"linux/amd64\","
			   "\"indexDigest\":\"sha256:" HEX64 "\"}]}");
	b->manifest = load("{\"images\":[{\"ref\":\"r.io/a:1\",\"platform\":\"linux/arm64/v8\","
			   "\"indexDigest\":\"sha256:" HEX64 "\"}]}");
	ck_assert_int_eq(
	    parse_query("image=r.io/a@sha256:" HEX64 "&platform=linux/amd64", &q, &err), 0);
	ck_assert(api_cache_matches(a, &q));
	ck_assert(!api_cache_matches(b, &q));
	api_list_query_free(&q);
	api_cache_free(a);
	api_cache_free(b);
}
END_TEST

/* chainId=C: caches with an image whose top ChainID is C; manifestDigest=D: caches with an
 * image resolved to D.  Each narrows the others (status, name). */
START_TEST(list_match_chain_id)
{
	char *refs[] = {"r.io/a:1"};
	struct api_create_request req = {.refs = refs, .n_refs = 1};
	struct api_cache *a = NULL, *b = NULL;
	const char *ids[2] = {"sha256:" HEX64, "sha256:" HEX64B};
	char top1[OCI_DIGEST_MAX + 1], top2[OCI_DIGEST_MAX + 1], qs[256];
	struct api_list_query q;
	imc_error err;

	ck_assert_int_eq(oci_chain_id(ids, 1, top1, &err), 0);
	ck_assert_int_eq(oci_chain_id(ids, 2, top2, &err), 0);
	ck_assert_str_eq(top1, "sha256:" HEX64);
	ck_assert_str_ne(top2, top1);
	ck_assert_int_eq(api_cache_new("imc-00000000000000a1", &req, 1, &a, &err), 0);
	ck_assert_int_eq(api_cache_new("imc-00000000000000b1", &req, 2, &b, &err), 0);
	/* a: one image of one layer; b: one of two layers (the first one a's) */
	a->manifest = load("{\"images\":[{\"digest\":\"sha256:" HEX64B "\",\"layers\":"
			   "[{\"diffId\":\"sha256:" HEX64 "\"}]}]}");
	b->manifest =
	    load("{\"images\":[{\"digest\":\"sha256:" HEX64 "\",\"layers\":"
		 "[{\"diffId\":\"sha256:" HEX64 "\"},{\"diffId\":\"sha256:" HEX64B "\"}]}]}");
	snprintf(qs, sizeof(qs), "chainId=%s", top1);
	ck_assert_int_eq(parse_query(qs, &q, &err), 0);
	ck_assert(api_cache_matches(a, &q));
	ck_assert_msg(!api_cache_matches(b, &q), "a prefix of a chain is not its top");
	api_list_query_free(&q);
	snprintf(qs, sizeof(qs), "chainId=%s&status=Creating", top2);
	ck_assert_int_eq(parse_query(qs, &q, &err), 0);
	ck_assert(!api_cache_matches(a, &q));
	ck_assert(api_cache_matches(b, &q));
	api_list_query_free(&q);
	ck_assert_int_eq(parse_query("chainId=sha256:" HEX64C, &q, &err), 0);
	ck_assert(!api_cache_matches(a, &q) && !api_cache_matches(b, &q));
	api_list_query_free(&q);
	/* a cache not built yet has no chain */
	json_decref(a->manifest);
	a->manifest = NULL;
	snprintf(qs, sizeof(qs), "chainId=%s", top1);
	ck_assert_int_eq(parse_query(qs, &q, &err), 0);
	ck_assert(!api_cache_matches(a, &q));
	api_list_query_free(&q);

	ck_assert_int_eq(parse_query("manifestDigest=sha256:" HEX64, &q, &err), 0);
	ck_assert(!api_cache_matches(a, &q));
	ck_assert(api_cache_matches(b, &q));
	api_list_query_free(&q);
	ck_assert_int_eq(parse_query("manifestDigest=sha256:" HEX64 "&name=x", &q, &err), 0);
	ck_assert(!api_cache_matches(b, &q));
	api_list_query_free(&q);
	api_cache_free(a);
	api_cache_free(b);
}
END_TEST

START_TEST(list_query_bad)
{
	char long_name[API_NAME_MAX + 16];

	expect_bad_query("status=Done", "status \"Done\"");
	expect_bad_query("status=ready", "status");
	expect_bad_query("limit=0", "limit");
	expect_bad_query("limit=1001", "limit");
	expect_bad_query("limit=-1", "limit");
	expect_bad_query("limit=10x", "limit");
	expect_bad_query("limit=99999999999", "limit");
	expect_bad_query("bogus=1", "\"bogus\": unknown");
	expect_bad_query("status=Ready&status=Failed", "status: given more than once");
	expect_bad_query("name", "name: empty");
	expect_bad_query("name=", "name: empty");
	expect_bad_query("image=x&match=best&pageToken=00", "pageToken");
	expect_bad_query("match=best", "match: only with image");
	expect_bad_query("image=x&match=fuzzy", "match");
	expect_bad_query("match=exact", "match: only with image");
	expect_bad_query("platform=linux/arm64", "platform: only with image");
	expect_bad_query("image=x&platform=linux", "platform: platform \"linux\"");
	expect_bad_query("image=x&platform=LINUX/ARM64", "platform: ");
	expect_bad_query("image=x&platform=linux/arm64&platform=linux/amd64",
			 "platform: given more than once");
	expect_bad_query("image=UPPER/Case::", "image");
	expect_bad_query("name=a%2Fb", "name");
	expect_bad_query("name=%zz", "percent");
	expect_bad_query("name=a%00", "percent");
	expect_bad_query("pageToken=xyz", "pageToken");
	expect_bad_query("pageToken=3a", "pageToken");
	expect_bad_query("chainId=sha256:abc", "chainId \"sha256:abc\": want sha256: and 64");
	expect_bad_query("chainId=md5:" HEX64, "chainId");
	expect_bad_query("chainId=sha256:" HEX64 "0", "chainId");
	expect_bad_query(
	    "chainId=sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
	    "chainId");
	expect_bad_query("chainId=", "chainId: empty");
	expect_bad_query("chainId=sha256:" HEX64 "&chainId=sha256:" HEX64,
			 "chainId: given more than once");
	expect_bad_query("manifestDigest=latest", "manifestDigest \"latest\": want sha256:");
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	{
		char qs[256];

		snprintf(qs, sizeof(qs), "name=%s", long_name);
		expect_bad_query(qs, "longer than");
	}
	expect_bad_query(
	    "a=1&a=2&a=3&a=4&a=5&a=6&a=7&a=8&a=9&a=10&a=11&a=12&a=13&a=14&a=15&a=16&a=17",
	    "more than 16 parameters");
}
END_TEST

START_TEST(page_token_roundtrip)
{
	char tok[API_PAGE_TOKEN_MAX + 1], id[API_ID_MAX];
	int64_t t = 0;
	imc_error err;

	ck_assert_int_eq(
	    api_page_token_encode(1700000000, "imc-0123456789abcdef", tok, sizeof(tok), &err), 0);
	ck_assert_int_eq(api_page_token_decode(tok, &t, id, &err), 0);
	ck_assert_int_eq(t, 1700000000);
	ck_assert_str_eq(id, "imc-0123456789abcdef");
	/* hex of "1:imc-0123456789abcdef" is fine; "01:…", "-1:…", "1:", ":id" and uppercase are
	 * not */
	ck_assert_int_eq(
	    api_page_token_decode("313a696d632d30313233343536373839616263646566", &t, id, &err), 0);
	ck_assert_int_eq(t, 1);
	ck_assert_int_eq(
	    api_page_token_decode("30313a696d632d30313233343536373839616263646566", &t, id, &err),
	    -EINVAL);
	ck_assert_int_eq(
	    api_page_token_decode("2d313a696d632d30313233343536373839616263646566", &t, id, &err),
	    -EINVAL);
	ck_assert_int_eq(api_page_token_decode("313a", &t, id, &err), -EINVAL);
	ck_assert_int_eq(api_page_token_decode("3a696d63", &t, id, &err), -EINVAL);
	ck_assert_int_eq(
	    api_page_token_decode("313A696D632D30313233343536373839616263646566", &t, id, &err),
	    -EINVAL);
}
END_TEST

#define PAGE_N 5

static void make_caches(struct api_cache *items[PAGE_N])
{
	static const char *const names[PAGE_N] = {"a", "b", "a", "c", "b"};
	imc_error err;

	for (size_t i = 0; i < PAGE_N; i++) {
		char body[256], id[API_ID_MAX];
		struct api_create_request req;

		snprintf(body, sizeof(body),
			 "{\"images\":[{\"ref\":\"127.0.0.1:5000/imc/bb:v%zu\"}],\"name\":\"%s\"}",
			 i % 2, names[i]);
		ck_assert_int_eq(parse(body, &req, &err), 0);
		/* Two items share a createdAt: the id decides. */
		snprintf(id, sizeof(id), "imc-%016zx", i);
		ck_assert_int_eq(api_cache_new(id, &req, 100 + (int64_t)(i / 2), &items[i], &err),
				 0);
		api_create_request_free(&req);
	}
	items[1]->status = API_CACHE_READY;
	items[3]->status = API_CACHE_FAILED;
}

static void free_caches(struct api_cache *items[PAGE_N])
{
	for (size_t i = 0; i < PAGE_N; i++)
		api_cache_free(items[i]);
}

/* A page as "ids|token" ("" token when there is none); the token is copied to ret_token. */
static void page_ids(struct api_cache *const *items, size_t n, const char *qs, char *out,
		     size_t size, char *ret_token)
{
	struct api_list_query q;
	json_t *page = NULL, *item;
	const char *tok;
	imc_error err;
	size_t i, used = 0;

	ck_assert_int_eq(parse_query(qs, &q, &err), 0);
	ck_assert_int_eq(api_list_page(items, n, &q, &page, &err), 0);
	out[0] = '\0';
	json_array_foreach(json_object_get(page, "items"), i, item) used +=
	    (size_t)snprintf(out + used, size - used, "%s%s", i ? "," : "",
			     json_string_value(json_object_get(item, "id")) + 19);
	tok = json_string_value(json_object_get(page, "nextPageToken"));
	snprintf(ret_token, API_PAGE_TOKEN_MAX + 1, "%s", tok ? tok : "");
	json_decref(page);
	api_list_query_free(&q);
}

START_TEST(list_page_slicing)
{
	struct api_cache *items[PAGE_N];
	char ids[256], tok[API_PAGE_TOKEN_MAX + 1], qs[512], last_tok[API_PAGE_TOKEN_MAX + 1];

	make_caches(items);
	/* empty table */
	page_ids(items, 0, "", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "");
	ck_assert_str_eq(tok, "");
	/* all on one page; exactly limit items: no token */
	page_ids(items, PAGE_N, "", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,1,2,3,4");
	ck_assert_str_eq(tok, "");
	page_ids(items, PAGE_N, "limit=5", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,1,2,3,4");
	ck_assert_str_eq(tok, "");
	/* pages of 2 */
	page_ids(items, PAGE_N, "limit=2", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,1");
	ck_assert_str_ne(tok, "");
	snprintf(qs, sizeof(qs), "limit=2&pageToken=%s", tok);
	page_ids(items, PAGE_N, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "2,3");
	snprintf(qs, sizeof(qs), "limit=2&pageToken=%s", tok);
	page_ids(items, PAGE_N, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "4");
	ck_assert_str_eq(tok, "");
	/* a page that ends exactly at the last matching item has no token */
	page_ids(items, PAGE_N, "limit=4", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,1,2,3");
	snprintf(qs, sizeof(qs), "limit=4&pageToken=%s", tok);
	page_ids(items, PAGE_N, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "4");
	ck_assert_str_eq(tok, "");
	/* a token after the last item: an empty page */
	ck_assert_int_eq(api_page_token_encode(items[4]->created_at, items[4]->id, last_tok,
					       sizeof(last_tok), NULL),
			 0);
	snprintf(qs, sizeof(qs), "pageToken=%s", last_tok);
	page_ids(items, PAGE_N, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "");
	ck_assert_str_eq(tok, "");
	/* filters with paging: name=a is 0 and 2; status; image */
	page_ids(items, PAGE_N, "name=a&limit=1", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0");
	ck_assert_str_ne(tok, "");
	snprintf(qs, sizeof(qs), "name=a&limit=1&pageToken=%s", tok);
	page_ids(items, PAGE_N, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "2");
	ck_assert_str_eq(tok, "");
	page_ids(items, PAGE_N, "status=Creating", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,2,4");
	page_ids(items, PAGE_N, "status=Failed", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "3");
	page_ids(items, PAGE_N, "image=127.0.0.1:5000/imc/bb:v1&match=exact", ids, sizeof(ids),
		 tok);
	ck_assert_str_eq(ids, "1,3");
	page_ids(items, PAGE_N, "image=127.0.0.1:5000/imc/bb:v2", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "");
	page_ids(items, PAGE_N, "name=zz", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "");
	free_caches(items);
}
END_TEST

START_TEST(list_page_deleted_token)
{
	struct api_cache *items[PAGE_N];
	struct api_cache *rest[PAGE_N - 1];
	char ids[256], tok[API_PAGE_TOKEN_MAX + 1], qs[512];

	make_caches(items);
	page_ids(items, PAGE_N, "limit=2", ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "0,1");
	/* item 1 (the token's position) is deleted before the next page is asked for */
	rest[0] = items[0];
	rest[1] = items[2];
	rest[2] = items[3];
	rest[3] = items[4];
	snprintf(qs, sizeof(qs), "limit=2&pageToken=%s", tok);
	page_ids(rest, PAGE_N - 1, qs, ids, sizeof(ids), tok);
	ck_assert_str_eq(ids, "2,3");
	free_caches(items);
}
END_TEST

START_TEST(list_handle_bad_query)
{
	json_decref(handle("GET", "/v1/imagecaches?bogus=1", NULL, false, 400, "InvalidArgument"));
	json_decref(handle("GET", "/v1/imagecaches?limit=0", NULL, false, 400, "InvalidArgument"));
	json_decref(handle("GET", "/v1/imagecaches?status=Ready&status=Ready", NULL, false, 400,
			   "InvalidArgument"));
	json_decref(handle("GET", "/v1/imagecaches?image=x&match=nearest", NULL, false, 400,
			   "InvalidArgument"));
	/* well formed, but this answer has no table */
	json_decref(handle("GET", "/v1/imagecaches?limit=5", NULL, false, 503, "Unavailable"));
}
END_TEST

/* ---- client connections (api/conns.c) ------------------------------------------------------ */

START_TEST(http_limits_resolve)
{
	struct api_http_limits l, flags = {0}, cfg = {0};
	imc_error err;

	ck_assert_int_eq(api_http_limits_resolve(NULL, NULL, &l, &err), 0);
	ck_assert_uint_eq(l.max_connections, API_CONNECTIONS_DEFAULT);
	ck_assert_uint_eq(l.per_client, API_PER_CLIENT_DEFAULT);
	ck_assert_uint_eq(l.reserve, API_RESERVE_DEFAULT);
	ck_assert_uint_eq(l.request_timeout_s, API_REQUEST_TIMEOUT_DEFAULT);
	/* Small totals shrink the defaults with them; the flags win over the config. */
	cfg = (struct api_http_limits){.max_connections = 10, .request_timeout_s = 7};
	flags.request_timeout_s = 3;
	ck_assert_int_eq(api_http_limits_resolve(&flags, &cfg, &l, &err), 0);
	ck_assert_uint_eq(l.max_connections, 10);
	ck_assert_uint_eq(l.reserve, 2);
	ck_assert_uint_eq(l.per_client, 10);
	ck_assert_uint_eq(l.request_timeout_s, 3);
	static const struct api_http_limits bad[] = {
	    {.max_connections = 1},
	    {.max_connections = API_CONNECTIONS_MAX + 1},
	    {.max_connections = 10, .reserve = 10},
	    {.max_connections = 10, .per_client = 11},
	    {.request_timeout_s = API_REQUEST_TIMEOUT_MAX + 1},
	};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(api_http_limits_resolve(&bad[i], NULL, &l, &err) == -EINVAL,
			      "accepted bad[%zu]", i);
}
END_TEST

/* Has the other end of fd's socketpair seen the end of the connection (a shutdown)? */
static bool peer_closed(int peer)
{
	char c;

	return recv(peer, &c, 1, MSG_DONTWAIT) == 0;
}

#define S_NS 1000000000ULL

/* Six connections, two of them in reserve, requests in within 10 s. */
START_TEST(conns_evict_reserve_expire)
{
	const struct api_http_limits l = {
	    .max_connections = 6, .per_client = 6, .reserve = 2, .request_timeout_s = 10};
	struct api_metrics m = {0};
	struct api_conns *g = NULL;
	struct api_conn *c[7];
	int sp[7][2];
	uint64_t next = 0;
	imc_error err;

	ck_assert_int_eq(api_conns_new(&l, &m, false, &g, &err), 0);
	for (int i = 0; i < 7; i++)
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]), 0);
	/* Four general connections, all answering a request: nothing is waiting. */
	for (int i = 0; i < 4; i++) {
		c[i] = api_conns_admit(g, sp[i][0], (uint64_t)i * S_NS);
		ck_assert(!api_conn_is_reserve(c[i]));
		api_conns_request_in(g, c[i]);
	}
	/* Past them, with no one to close: reserve connections, and none is closed for another. */
	c[4] = api_conns_admit(g, sp[4][0], 4 * S_NS);
	c[5] = api_conns_admit(g, sp[5][0], 5 * S_NS);
	ck_assert(api_conn_is_reserve(c[4]) && api_conn_is_reserve(c[5]));
	ck_assert(!peer_closed(sp[4][1]));
	ck_assert_uint_eq(m.http_conn_events[API_CONN_RESERVED], 2);
	/* c[0] answered and waits for its next request: the next arrival closes it, not a reserve
	 * connection, and takes a general place. */
	api_conns_request_done(g, c[0], 6 * S_NS);
	c[6] = api_conns_admit(g, sp[6][0], 7 * S_NS);
	ck_assert(!api_conn_is_reserve(c[6]));
	ck_assert(peer_closed(sp[0][1]));
	ck_assert(!peer_closed(sp[4][1]) && !peer_closed(sp[5][1]));
	ck_assert_uint_eq(m.http_conn_events[API_CONN_EVICTED], 1);
	api_conns_gone(g, c[0]);
	/* Deadlines: 10 s after each one started waiting, whatever happened meanwhile. */
	ck_assert_uint_eq(api_conns_expire(g, 13 * S_NS, &next), 0);
	ck_assert_uint_eq(next, 14 * S_NS);
	ck_assert_uint_eq(api_conns_expire(g, 15 * S_NS, &next), 2); /* c[4], c[5] */
	ck_assert(peer_closed(sp[4][1]) && peer_closed(sp[5][1]) && !peer_closed(sp[6][1]));
	ck_assert_uint_eq(next, 17 * S_NS);
	/* A request all in has no deadline; the answer starts the next one. */
	api_conns_request_in(g, c[6]);
	ck_assert_uint_eq(api_conns_expire(g, 100 * S_NS, &next), 0);
	ck_assert_uint_eq(next, UINT64_MAX);
	api_conns_request_done(g, c[6], 100 * S_NS);
	ck_assert_uint_eq(api_conns_expire(g, 110 * S_NS, &next), 1);
	ck_assert(peer_closed(sp[6][1]));
	ck_assert_uint_eq(m.http_conn_events[API_CONN_TIMED_OUT], 3);
	ck_assert(!peer_closed(sp[1][1])); /* still answering: never closed */
	for (int i = 1; i < 7; i++)
		api_conns_gone(g, c[i]);
	ck_assert_uint_eq(m.http_connections, 0);
	api_conns_free(g);
	for (int i = 0; i < 7; i++) {
		close(sp[i][0]);
		close(sp[i][1]);
	}
}
END_TEST

/* With the watchdog thread: a connection that never sends its request is shut down by itself. */
START_TEST(conns_watchdog_closes_late_requests)
{
	const struct api_http_limits l = {
	    .max_connections = 4, .per_client = 4, .reserve = 1, .request_timeout_s = 1};
	struct api_conns *g = NULL;
	struct api_conn *c;
	char b;
	int sp[2];
	imc_error err;

	ck_assert_int_eq(api_conns_new(&l, NULL, true, &g, &err), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
	c = api_conns_admit(g, sp[0], imc_monotonic_ns());
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(recv(sp[1], &b, 1, 0), 0); /* blocks until the shutdown */
	api_conns_gone(g, c);
	api_conns_free(g);
	close(sp[0]);
	close(sp[1]);
}
END_TEST

static Suite *api_suite(void)
{
	Suite *s = suite_create("api");
	TCase *t = tcase_create("requests");

	tcase_add_test(t, meta_reserve_files);
	tcase_add_test(t, create_good);
	tcase_add_test(t, create_malformed_json);
	tcase_add_test(t, create_not_object);
	tcase_add_test(t, create_unknown_fields);
	tcase_add_test(t, create_wrong_types);
	tcase_add_test(t, create_images_count);
	tcase_add_test(t, create_several_images);
	tcase_add_test(t, create_too_many_images);
	tcase_add_test(t, create_duplicate_images);
	tcase_add_test(t, create_platforms);
	tcase_add_test(t, create_bad_ref);
	tcase_add_test(t, create_bad_name);
	tcase_add_test(t, create_body_cap);
	tcase_add_test(t, create_data_good);
	tcase_add_test(t, create_data_bad);
	tcase_add_test(t, create_data_cap);
	tcase_add_test(t, create_credentials);
	tcase_add_test(t, create_credentials_bad);
	tcase_add_test(t, cache_data_and_credentials);
	tcase_add_test(t, errno_to_status);
	suite_add_tcase(s, t);

	t = tcase_create("caches");
	tcase_add_test(t, cache_json_creating);
	tcase_add_test(t, cache_json_ready);
	tcase_add_test(t, cache_json_failed);
	tcase_add_test(t, cache_meta_roundtrip);
	tcase_add_test(t, cache_several_images);
	tcase_add_test(t, cache_meta_old_single_ref);
	tcase_add_test(t, cache_platforms);
	tcase_add_test(t, request_key_platforms);
	tcase_add_test(t, cache_meta_bad);
	tcase_add_test(t, cache_ids_and_order);
	tcase_add_test(t, create_lifecycle_fields);
	tcase_add_test(t, request_key_identical);
	tcase_add_test(t, cache_events_ring);
	tcase_add_test(t, cache_meta_lifecycle_roundtrip);
	tcase_add_test(t, routing_attachments);
	tcase_add_test(t, delete_query);
	tcase_add_test(t, list_tenant_and_shared_layers);
	tcase_add_test(t, queue_pick_fair);
	suite_add_tcase(s, t);

	t = tcase_create("http");
	tcase_add_test(t, routing);
	tcase_add_test(t, listen_parse);
	tcase_add_test(t, listen_parse_unix);
	tcase_add_test(t, listen_open_unix);
	tcase_add_test(t, listen_open_port0);
	tcase_add_test(t, handle_without_table);
	tcase_add_test(t, handle_bytes_that_are_not_utf8);
	tcase_add_test(t, handle_base_snapshot_is_no_cache);
	tcase_add_test(t, http_limits_resolve);
	tcase_add_test(t, conns_evict_reserve_expire);
	tcase_add_test(t, conns_watchdog_closes_late_requests);
	suite_add_tcase(s, t);

	t = tcase_create("list");
	tcase_add_test(t, list_query_good);
	tcase_add_test(t, list_query_bad);
	tcase_add_test(t, list_match_chain_id);
	tcase_add_test(t, list_match_platform);
	tcase_add_test(t, page_token_roundtrip);
	tcase_add_test(t, list_page_slicing);
	tcase_add_test(t, list_page_deleted_token);
	tcase_add_test(t, list_handle_bad_query);
	tcase_add_test(t, rendered_kept_until_a_change);
	tcase_add_test(t, list_body_same_bytes_as_tree);
	suite_add_tcase(s, t);

	t = tcase_create("metrics");
	tcase_add_test(t, metrics_page_known_state);
	tcase_add_test(t, metrics_page_load_copies);
	tcase_add_test(t, metrics_page_empty);
	tcase_add_test(t, metrics_handle_without_table);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return unit_run(api_suite());
}
