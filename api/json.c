/* The API's JSON: create requests in, cache objects and errors out, metadata files both ways.
 *
 * Over 800 lines: the create request's parser with its caps, the cache object's JSON and the
 * metadata files share the field names and limits of one cache model; the split of the cache table
 * (api/caches.c) is the time to split it along them. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../builder/builder.h"
#include "api.h"

/* ---- errors -----------------------------------------------------------------------------------
 */

void api_status_from_errno(int code, unsigned *ret_http, const char **ret_code)
{
	static const struct {
		int err;
		unsigned http;
		const char *code;
	} map[] = {
	    {EBADMSG, 400, "InvalidJSON"},	{EINVAL, 400, "InvalidArgument"},
	    {ERANGE, 400, "InvalidArgument"},	{ENOENT, 404, "NotFound"},
	    {EBUSY, 409, "Conflict"},		{EFBIG, 413, "PayloadTooLarge"},
	    {EDQUOT, 429, "LimitExceeded"},	{ESHUTDOWN, 503, "Unavailable"},
	    {API_EQUOTA, 403, "QuotaExceeded"}, {EINPROGRESS, 503, "InProgress"},
	    {ETIMEDOUT, 504, "GatewayTimeout"}, {ENOSPC, 507, "InsufficientStorage"},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(map); i++)
		if (-code == map[i].err) {
			*ret_http = map[i].http;
			*ret_code = map[i].code;
			return;
		}
	*ret_http = 500;
	*ret_code = "Internal";
}

unsigned api_retry_after_from_status(unsigned http)
{
	if (http == 503)
		return API_RETRY_AFTER_S;
	if (http == 504) /* a failed resolve is answered that long before it is tried again */
		return API_RESOLVE_FAIL_TTL_S;
	return 0;
}

json_t *api_error_json(const char *code, const char *message)
{
	size_t n = strlen(message);
	char safe[2 * IMC_ERR_MSG];

	/* A message naming what a client sent (cut by a "%.80s", or bytes it sent) may not be
	 * UTF-8, which JSON cannot carry: such bytes go out escaped. */
	if (!imc_utf8_valid(message, n)) {
		imc_log_escape(message, n, safe, sizeof(safe));
		message = safe;
	}
	return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
}

/* ---- create requests --------------------------------------------------------------------------
 */

static void data_free(struct api_data *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(d[i].source);
		free(d[i].path);
		free(d[i].sha256);
	}
	free(d);
}

static void secret_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void api_credentials_free(struct api_credential *c, size_t n)
{
	for (size_t i = 0; c && i < n; i++) {
		free(c[i].registry);
		secret_free(c[i].username);
		secret_free(c[i].password);
		secret_free(c[i].token);
	}
	free(c);
}

void api_create_request_free(struct api_create_request *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n_refs; i++) {
		free(r->refs[i]);
		if (r->platforms)
			free(r->platforms[i]);
	}
	free(r->refs);
	free(r->platforms);
	free(r->name);
	free(r->client_token);
	data_free(r->data, r->n_data);
	api_credentials_free(r->credentials, r->n_credentials);
	memset(r, 0, sizeof(*r));
}

#define ENTRY_CTX_MAX 32

/* Copy a string field (already type- and length-checked) or leave *ret NULL when absent. */
static int dup_field(const char *v, char **ret, imc_error *err)
{
	if (!v)
		return 0;
	*ret = strdup(v);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int data_set(struct api_data *d, const char *source, const char *path, const char *sha256,
		    imc_error *err)
{
	int r = dup_field(source, &d->source, err);

	if (r == 0)
		r = dup_field(path, &d->path, err);
	if (r == 0)
		r = dup_field(sha256, &d->sha256, err);
	return r;
}

static int credential_set(struct api_credential *c, const char *registry, const char *user,
			  const char *pass, const char *token, imc_error *err)
{
	int r = dup_field(registry, &c->registry, err);

	if (r == 0)
		r = dup_field(user, &c->username, err);
	if (r == 0)
		r = dup_field(pass, &c->password, err);
	if (r == 0)
		r = dup_field(token, &c->token, err);
	return r;
}

/* The fields of a data entry, in the request and in metadata alike. */
static int get_data_fields(json_t *entry, const char *ctx, const char **ret_source,
			   const char **ret_path, const char **ret_sha, imc_error *err)
{
	int r = imc_json_get_string(entry, "source", true, BUILDER_DATA_SOURCE_MAX, ctx, ret_source,
				    err);

	if (r == 0)
		r = imc_json_get_string(entry, "path", true, BUILDER_DATA_PATH_MAX, ctx, ret_path,
					err);
	if (r == 0)
		r = imc_json_get_string(entry, "sha256", false, IMC_SHA256_HEX_LEN, ctx, ret_sha,
					err);
	return r;
}

/* Entry index of array key must be an object with only the given fields; ctx gets its name
 * ("key[index]") for messages. */
static int check_entry(json_t *entry, const char *key, size_t index, const char *const *fields,
		       char ctx[static ENTRY_CTX_MAX], imc_error *err)
{
	snprintf(ctx, ENTRY_CTX_MAX, "%s[%zu]", key, index);
	if (!json_is_object(entry))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	return imc_json_check_fields(entry, fields, ctx, err);
}

/* An optional array field of at most max entries; *ret stays NULL when it is absent. */
static int get_capped_array(json_t *body, const char *key, size_t max, json_t **ret, imc_error *err)
{
	int r = imc_json_get_array(body, key, false, SIZE_MAX, NULL, ret, err);

	if (r < 0 || !*ret)
		return r;
	if (json_array_size(*ret) > max)
		return imc_err(err, EINVAL, "%s: at most %zu entries, got %zu", key, max,
			       json_array_size(*ret));
	return 0;
}

typedef int (*parse_entry_fn)(json_t *entry, size_t index, struct api_create_request *req,
			      imc_error *err);

static int parse_each(json_t *array, parse_entry_fn parse, struct api_create_request *req,
		      imc_error *err)
{
	for (size_t i = 0; i < json_array_size(array); i++) {
		int r = parse(json_array_get(array, i), i, req, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int parse_name(json_t *body, struct api_create_request *req, imc_error *err)
{
	const char *name = NULL;
	int r = imc_json_get_string(body, "name", false, API_NAME_MAX, NULL, &name, err);

	if (r < 0 || !name)
		return r;
	if (!imc_name_valid(name, API_NAME_MAX))
		return imc_err(err, EINVAL, "name: want 1-%d characters of [A-Za-z0-9._-]",
			       API_NAME_MAX);
	req->name = strdup(name);
	return req->name ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static bool str_same(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* images[].platform: "os/arch[/variant]", normalized into ret (may be "" when absent). */
static int parse_image_platform(json_t *image, const char *ctx, char ret[OCI_PLATFORM_MAX],
				imc_error *err)
{
	const char *platform = NULL;
	int r = imc_json_get_string(image, "platform", false, OCI_PLATFORM_MAX - 1, ctx, &platform,
				    err);

	ret[0] = '\0';
	if (r < 0 || !platform)
		return r;
	if (oci_platform_normalize(platform, ret, OCI_PLATFORM_MAX, err) < 0) {
		imc_err_wrap(err, "%s.platform", ctx);
		if (err)
			err->code = -EINVAL;
		return -EINVAL;
	}
	return 0;
}

static int parse_image(json_t *image, size_t index, struct api_create_request *req, imc_error *err)
{
	static const char *const fields[] = {"ref", "platform", NULL};
	struct oci_ref parsed = {0};
	const char *ref = NULL, *plat;
	char ctx[ENTRY_CTX_MAX], platform[OCI_PLATFORM_MAX];
	int r = check_entry(image, "images", index, fields, ctx, err);

	if (r == 0)
		r = imc_json_get_string(image, "ref", true, API_REF_MAX, ctx, &ref, err);
	if (r == 0)
		r = parse_image_platform(image, ctx, platform, err);
	if (r < 0)
		return r;
	plat = platform[0] ? platform : NULL;
	r = oci_ref_parse(ref, &parsed, err);
	if (r < 0) {
		imc_err_wrap(err, "%s.ref", ctx);
		if (err)
			err->code =
			    -EINVAL; /* a bad ref is the client's error, whatever the cause */
		return -EINVAL;
	}
	oci_ref_free(&parsed);
	for (size_t i = 0; i < req->n_refs; i++)
		if (strcmp(req->refs[i], ref) == 0 && str_same(req->platforms[i], plat))
			return plat ? imc_err(err, EINVAL, "%s: %s for %s is already images[%zu]",
					      ctx, ref, plat, i)
				    : imc_err(err, EINVAL, "%s.ref: %s is already images[%zu]", ctx,
					      ref, i);
	req->refs[req->n_refs] = strdup(ref);
	if (!req->refs[req->n_refs])
		return imc_err(err, ENOMEM, "out of memory");
	req->n_refs++;
	return dup_field(plat, &req->platforms[req->n_refs - 1], err);
}

static int parse_images(json_t *body, struct api_create_request *req, imc_error *err)
{
	json_t *images = NULL;
	int r = imc_json_get_array(body, "images", true, SIZE_MAX, NULL, &images, err);

	if (r < 0)
		return r;
	if (json_array_size(images) == 0)
		return imc_err(err, EINVAL, "images: at least one image is required");
	if (json_array_size(images) > API_IMAGES_MAX)
		return imc_err(err, EINVAL, "images: at most %d images, got %zu", API_IMAGES_MAX,
			       json_array_size(images));
	req->refs = calloc(json_array_size(images), sizeof(*req->refs));
	req->platforms = calloc(json_array_size(images), sizeof(*req->platforms));
	if (!req->refs || !req->platforms)
		return imc_err(err, ENOMEM, "out of memory");
	return parse_each(images, parse_image, req, err);
}

static int parse_data_entry(json_t *entry, size_t index, struct api_create_request *req,
			    imc_error *err)
{
	static const char *const fields[] = {"source", "path", "sha256", NULL};
	const char *source = NULL, *path = NULL, *sha = NULL;
	char ctx[ENTRY_CTX_MAX];
	int r = check_entry(entry, "data", index, fields, ctx, err);

	if (r == 0)
		r = get_data_fields(entry, ctx, &source, &path, &sha, err);
	if (r < 0)
		return r;
	r = builder_data_check(
	    &(struct builder_data){.source = source, .path = path, .sha256 = sha}, NULL, err);
	if (r < 0) {
		imc_err_wrap(err, "%s", ctx);
		return err ? err->code : r;
	}
	for (size_t i = 0; i < req->n_data; i++)
		if (strcmp(req->data[i].path, path) == 0)
			return imc_err(err, EINVAL, "%s.path: %s is already data[%zu]", ctx, path,
				       i);
		else if (builder_data_paths_overlap(req->data[i].path, path))
			return imc_err(err, EINVAL,
				       "%s.path: %s and data[%zu].path %s: one is inside the other",
				       ctx, path, i, req->data[i].path);
	return data_set(&req->data[req->n_data++], source, path, sha, err);
}

static int parse_data(json_t *body, struct api_create_request *req, imc_error *err)
{
	json_t *data = NULL;
	int r = get_capped_array(body, "data", API_DATA_MAX, &data, err);

	if (r == 0 && data && !(req->data = calloc(json_array_size(data) + 1, sizeof(*req->data))))
		r = imc_err(err, ENOMEM, "out of memory");
	return r < 0 || !data ? r : parse_each(data, parse_data_entry, req, err);
}

static int parse_size(json_t *body, struct api_create_request *req, imc_error *err)
{
	int64_t size = 0;
	int r = imc_json_get_int(body, "size", false, 1, (int64_t)API_SIZE_MAX, NULL, &size, err);

	if (r == -ERANGE && err)
		err->code = -EINVAL; /* out of range is a bad argument like any other */
	req->size = (uint64_t)size;
	return r == -ERANGE ? -EINVAL : r;
}

/* Never echo a credential's value: messages name the field only. */
static int parse_credential(json_t *c, size_t index, struct api_create_request *req, imc_error *err)
{
	static const char *const fields[] = {"registry", "username", "password", "token", NULL};
	const char *registry = NULL, *user = NULL, *pass = NULL, *token = NULL;
	char ctx[ENTRY_CTX_MAX];
	int r = check_entry(c, "credentials", index, fields, ctx, err);

	if (r == 0)
		r = imc_json_get_string(c, "registry", true, API_REGISTRY_MAX, ctx, &registry, err);
	if (r == 0)
		r = imc_json_get_string(c, "username", false, API_USER_MAX, ctx, &user, err);
	if (r == 0)
		r = imc_json_get_string(c, "password", false, API_SECRET_MAX, ctx, &pass, err);
	if (r == 0)
		r = imc_json_get_string(c, "token", false, API_SECRET_MAX, ctx, &token, err);
	if (r < 0)
		return r;
	if (!registry[0] || strpbrk(registry, "/ \t\r\n@"))
		return imc_err(err, EINVAL, "%s.registry: want host[:port]", ctx);
	if (token ? user || pass || !token[0] : !user || !pass || !user[0])
		return imc_err(err, EINVAL, "%s: want username and password, or a token (not both)",
			       ctx);
	for (size_t i = 0; i < req->n_credentials; i++)
		if (strcmp(req->credentials[i].registry, registry) == 0)
			return imc_err(err, EINVAL, "%s.registry: %s is already credentials[%zu]",
				       ctx, registry, i);
	return credential_set(&req->credentials[req->n_credentials++], registry, user, pass, token,
			      err);
}

static int parse_credentials(json_t *body, struct api_create_request *req, imc_error *err)
{
	json_t *creds = NULL;
	int r = get_capped_array(body, "credentials", API_CREDS_MAX, &creds, err);

	if (r == 0 && creds &&
	    !(req->credentials = calloc(json_array_size(creds) + 1, sizeof(*req->credentials))))
		r = imc_err(err, ENOMEM, "out of memory");
	return r < 0 || !creds ? r : parse_each(creds, parse_credential, req, err);
}

static int parse_lifecycle(json_t *body, struct api_create_request *req, imc_error *err)
{
	const char *token = NULL;
	int r = imc_json_get_int(body, "retentionDays", false, 0, API_RETENTION_MAX, NULL,
				 &req->retention_days, err);

	if (r == -ERANGE && err)
		err->code = -EINVAL;
	if (r < 0)
		return r == -ERANGE ? -EINVAL : r;
	r = imc_json_get_string(body, "clientToken", false, API_TOKEN_MAX, NULL, &token, err);
	if (r < 0 || !token)
		return r;
	if (!imc_name_valid(token, API_TOKEN_MAX))
		return imc_err(err, EINVAL, "clientToken: want 1-%d characters of [A-Za-z0-9._-]",
			       API_TOKEN_MAX);
	return dup_field(token, &req->client_token, err);
}

int api_create_request_parse(const char *body, size_t len, struct api_create_request *ret,
			     imc_error *err)
{
	static const char *const fields[] = {"images",	    "name",	     "data",	    "size",
					     "credentials", "retentionDays", "clientToken", NULL};
	struct api_create_request req = {.retention_days = API_RETENTION_DEFAULT};
	_cleanup_json_ json_t *j = NULL;
	json_error_t jerr;
	int r;

	if (len > API_BODY_MAX)
		return imc_err(err, EFBIG, "request body larger than %d bytes", API_BODY_MAX);
	j = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!j)
		return imc_err(err, EBADMSG, "malformed JSON at line %d column %d: %s", jerr.line,
			       jerr.column, jerr.text);
	if (!json_is_object(j))
		return imc_err(err, EINVAL, "request body: want a JSON object");
	r = imc_json_check_fields(j, fields, NULL, err);
	if (r == 0)
		r = parse_images(j, &req, err);
	if (r == 0)
		r = parse_name(j, &req, err);
	if (r == 0)
		r = parse_data(j, &req, err);
	if (r == 0)
		r = parse_size(j, &req, err);
	if (r == 0)
		r = parse_credentials(j, &req, err);
	if (r == 0)
		r = parse_lifecycle(j, &req, err);
	if (r < 0) {
		api_create_request_free(&req);
		return r;
	}
	*ret = req;
	return 0;
}

/* ---- caches -----------------------------------------------------------------------------------
 */

static const char *const status_names[] = {
    [API_CACHE_CREATING] = "Creating", [API_CACHE_READY] = "Ready",
    [API_CACHE_FAILED] = "Failed",     [API_CACHE_UPDATING] = "Updating",
    [API_CACHE_DELETING] = "Deleting", [API_CACHE_EXPIRED] = "Expired",
};

const char *api_cache_status_name(enum api_cache_status s)
{
	return (size_t)s < IMC_ARRAY_SIZE(status_names) ? status_names[s] : "Unknown";
}

int api_cache_status_parse(const char *s, enum api_cache_status *ret)
{
	for (size_t i = 0; i < IMC_ARRAY_SIZE(status_names); i++)
		if (strcmp(s, status_names[i]) == 0) {
			*ret = (enum api_cache_status)i;
			return 0;
		}
	return -EINVAL;
}

int api_cache_id_check(const char *id, imc_error *err)
{
	if (!imc_name_valid(id, API_ID_MAX - 1))
		return imc_err(err, EINVAL,
			       "cache id \"%.80s\": malformed (want %s-<16 hex digits>)", id,
			       API_ID_PREFIX);
	if (!api_cache_id_valid(id)) /* a base snapshot's img-… is internal: no cache's */
		return imc_err(err, ENOENT, "cache %s: not found", id);
	return 0;
}

void api_cache_free(struct api_cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_refs; i++) {
		free(c->refs[i]);
		if (c->platforms)
			free(c->platforms[i]);
	}
	free(c->refs);
	free(c->platforms);
	free(c->name);
	data_free(c->data, c->n_data);
	api_credentials_free(c->credentials, c->n_credentials);
	free(c->status_message);
	json_decref(c->manifest);
	free(c->tenant);
	free(c->client_token);
	for (size_t i = 0; i < c->n_attachments; i++)
		free(c->attachments[i].host);
	free(c->attachments);
	for (size_t i = 0; i < c->n_events; i++)
		free(c->events[i].message);
	free(c->rendered);
	free(c);
}

int api_cache_add_event(struct api_cache *c, int64_t now, const char *type, const char *fmt, ...)
{
	char msg[IMC_ERR_MSG];
	struct api_cache_event *e;
	va_list ap;
	char *m;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	m = strdup(msg);
	if (!m)
		return -ENOMEM;
	if (c->n_events == API_EVENTS_MAX) {
		free(c->events[0].message);
		memmove(c->events, c->events + 1, (API_EVENTS_MAX - 1) * sizeof(c->events[0]));
		c->n_events--;
	}
	api_cache_touch(c);
	e = &c->events[c->n_events++];
	e->time = now;
	snprintf(e->type, sizeof(e->type), "%s", type);
	e->message = m;
	return 0;
}

int64_t api_cache_expires_at(const struct api_cache *c, int64_t day_seconds)
{
	int64_t from = c->last_used_at, span, at;

	if (c->retention_days <= 0 || c->status != API_CACHE_READY)
		return 0;
	if (c->ready_at > from)
		from = c->ready_at;
	if (c->created_at > from)
		from = c->created_at;
	/* Saturating: the times come from metadata files, which may hold anything. */
	if (__builtin_mul_overflow((int64_t)c->retention_days, day_seconds, &span) ||
	    __builtin_add_overflow(from, span, &at))
		return INT64_MAX;
	return at;
}

static const char *platform_or_default(char *const *platforms, size_t i)
{
	return platforms && platforms[i] ? platforms[i] : OCI_DEFAULT_PLATFORM;
}

static bool platforms_all_default(char *const *platforms, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(platform_or_default(platforms, i), OCI_DEFAULT_PLATFORM) != 0)
			return false;
	return true;
}

/* ["os/arch[/variant]", …] of n images (NULL on OOM). */
static json_t *platforms_json(char *const *platforms, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(platform_or_default(platforms, i))) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

int api_request_key(const char *tenant, const struct api_create_request *req,
		    char ret[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	_cleanup_json_ json_t *k = json_pack(
	    "{s:s,s:s?,s:I,s:I,s:[],s:[]}", "tenant", tenant ? tenant : API_TENANT_DEFAULT, "name",
	    req->name, "size", (json_int_t)req->size, "retentionDays",
	    (json_int_t)req->retention_days, "refs", "data");
	_cleanup_free_ char *s = NULL;
	int r = k ? 0 : -ENOMEM;

	for (size_t i = 0; r == 0 && i < req->n_refs; i++)
		r = json_array_append_new(json_object_get(k, "refs"), json_string(req->refs[i]));
	/* Only when an image is for another platform than linux/amd64: the keys of requests
	 * made before there were platforms (all linux/amd64) stay what they were. */
	if (r == 0 && !platforms_all_default(req->platforms, req->n_refs))
		r = json_object_set_new(k, "platforms",
					platforms_json(req->platforms, req->n_refs));
	for (size_t i = 0; r == 0 && i < req->n_data; i++)
		r = json_array_append_new(json_object_get(k, "data"),
					  json_pack("{s:s,s:s,s:s?}", "source", req->data[i].source,
						    "path", req->data[i].path, "sha256",
						    req->data[i].sha256));
	s = r == 0 ? json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	return imc_sha256_hex(s, strlen(s), ret, err);
}

static int copy_data(struct api_cache *c, const struct api_data *data, size_t n, imc_error *err)
{
	c->data = calloc(n + 1, sizeof(*c->data));
	if (!c->data)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_data < n; c->n_data++) {
		const struct api_data *from = &data[c->n_data];
		int r = data_set(&c->data[c->n_data], from->source, from->path, from->sha256, err);
		if (r < 0) {
			c->n_data++;
			return r;
		}
	}
	return 0;
}

static int copy_credentials(struct api_cache *c, const struct api_credential *creds, size_t n,
			    imc_error *err)
{
	c->had_credentials = n > 0;
	c->credentials = calloc(n + 1, sizeof(*c->credentials));
	if (!c->credentials)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_credentials < n; c->n_credentials++) {
		const struct api_credential *from = &creds[c->n_credentials];
		int r = credential_set(&c->credentials[c->n_credentials], from->registry,
				       from->username, from->password, from->token, err);
		if (r < 0) {
			c->n_credentials++;
			return r;
		}
	}
	return 0;
}

static int copy_refs(struct api_cache *c, char *const *refs, char *const *platforms, size_t n,
		     imc_error *err)
{
	c->refs = calloc(n ? n : 1, sizeof(*c->refs));
	c->platforms = calloc(n ? n : 1, sizeof(*c->platforms));
	if (!c->refs || !c->platforms)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_refs < n; c->n_refs++) {
		c->refs[c->n_refs] = strdup(refs[c->n_refs]);
		c->platforms[c->n_refs] = strdup(platform_or_default(platforms, c->n_refs));
		if (!c->refs[c->n_refs] || !c->platforms[c->n_refs]) {
			c->n_refs++;
			return imc_err(err, ENOMEM, "out of memory");
		}
	}
	return 0;
}

int api_cache_new(const char *id, const struct api_create_request *req, int64_t now,
		  struct api_cache **ret, imc_error *err)
{
	return api_cache_new_for(id, NULL, req, now, ret, err);
}

int api_cache_new_for(const char *id, const char *tenant, const struct api_create_request *req,
		      int64_t now, struct api_cache **ret, imc_error *err)
{
	struct api_cache *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	snprintf(c->id, sizeof(c->id), "%s", id);
	c->status = API_CACHE_CREATING;
	c->created_at = now;
	c->request_size = req->size;
	c->retention_days = req->retention_days;
	r = api_request_key(tenant, req, c->request_key, err);
	if (r == 0 && !(c->tenant = strdup(tenant ? tenant : API_TENANT_DEFAULT)))
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0 && req->client_token && !(c->client_token = strdup(req->client_token)))
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = api_cache_add_event(c, now, "Created", "%zu image(s) requested", req->n_refs);
	if (r == 0)
		r = copy_refs(c, req->refs, req->platforms, req->n_refs, err);
	if (r == 0 && req->name && !(c->name = strdup(req->name)))
		r = imc_err(err, ENOMEM, "out of memory");
	if (r == 0)
		r = copy_data(c, req->data, req->n_data, err);
	if (r == 0)
		r = copy_credentials(c, req->credentials, req->n_credentials, err);
	if (r < 0) {
		api_cache_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

int api_cache_set_failed(struct api_cache *c, const char *message, imc_error *err)
{
	char *m = strdup(message && *message ? message : "failed");

	if (!m)
		return imc_err(err, ENOMEM, "out of memory");
	free(c->status_message);
	c->status_message = m;
	c->status = API_CACHE_FAILED;
	api_cache_touch(c);
	return 0;
}

int api_cache_cmp(const struct api_cache *a, const struct api_cache *b)
{
	if (a->created_at != b->created_at)
		return a->created_at < b->created_at ? -1 : 1;
	return strcmp(a->id, b->id);
}

static int set_time(json_t *o, const char *key, int64_t t)
{
	char buf[32];

	imc_time_rfc3339(t, buf, sizeof(buf));
	return json_object_set_new(o, key, json_string(buf));
}

/* [{"ref":…,"platform":…}] for each requested ref. */
static json_t *refs_as_images(const struct api_cache *c)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < c->n_refs; i++)
		if (json_array_append_new(a, json_pack("{s:s,s:s}", "ref", c->refs[i], "platform",
						       platform_or_default(c->platforms, i))) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* What the API shows as images: the manifest's "images" once built, else the requested refs. */
static json_t *images_json(const struct api_cache *c)
{
	json_t *images = c->manifest ? json_object_get(c->manifest, "images") : NULL;

	if (json_is_array(images))
		return json_deep_copy(images);
	return refs_as_images(c);
}

/* The requested entries: [{"path","source"(,"sha256")}]. */
static json_t *requested_data_json(const struct api_cache *c)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < c->n_data; i++) {
		json_t *e =
		    json_pack("{s:s,s:s}", "path", c->data[i].path, "source", c->data[i].source);
		if (e && c->data[i].sha256 &&
		    json_object_set_new(e, "sha256", json_string(c->data[i].sha256)) < 0)
			json_decref(steal_pointer(&e));
		if (json_array_append_new(a, e) < 0) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

/* What the API shows as data: once built, each entry's files with their sizes and digests and
 * the entry's total size; before, the requested entries. */
static json_t *data_json(const struct api_cache *c)
{
	json_t *built = c->manifest ? json_object_get(c->manifest, "data") : NULL;
	_cleanup_json_ json_t *a = NULL;
	json_t *entry;
	size_t i;

	if (!json_is_array(built))
		return requested_data_json(c);
	a = json_deep_copy(built);
	if (!a)
		return NULL;
	json_array_foreach(a, i, entry)
	{
		json_t *files = json_object_get(entry, "files"), *f;
		json_int_t total = 0;
		size_t k;

		json_array_foreach(files, k, f) total +=
		    json_integer_value(json_object_get(f, "size"));
		if (json_is_object(entry) &&
		    json_object_set_new(entry, "size", json_integer(total)) < 0)
			return NULL;
	}
	return steal_pointer(&a);
}

static json_t *events_json(const struct api_cache *c)
{
	json_t *a = json_array();
	char t[32];

	for (size_t i = 0; a && i < c->n_events; i++) {
		imc_time_rfc3339(c->events[i].time, t, sizeof(t));
		if (json_array_append_new(a, json_pack("{s:s,s:s,s:s}", "time", t, "type",
						       c->events[i].type, "message",
						       c->events[i].message)) < 0) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

/* Lifecycle fields of the API object. */
static int lifecycle_json(json_t *o, const struct api_cache *c)
{
	int64_t expires = api_cache_expires_at(c, c->day_seconds ? c->day_seconds : 86400);
	int r = json_object_set_new(o, "retentionDays", json_integer(c->retention_days));

	if (expires)
		r |= set_time(o, "expiresAt", expires);
	if (c->last_used_at)
		r |= set_time(o, "lastUsedAt", c->last_used_at);
	r |= json_object_set_new(o, "attachments", json_integer((json_int_t)c->n_attachments));
	r |= json_object_set_new(o, "events", events_json(c));
	return r;
}

static json_t *progress_json(const struct api_cache *c)
{
	uint64_t pct = c->progress_total ? c->progress_done * 100 / c->progress_total : 0;

	return json_pack("{s:I,s:I,s:I}", "percent", (json_int_t)(pct > 100 ? 100 : pct),
			 "bytesDone", (json_int_t)c->progress_done, "bytesTotal",
			 (json_int_t)c->progress_total);
}

json_t *api_cache_to_json(const struct api_cache *c)
{
	_cleanup_json_ json_t *o =
	    json_pack("{s:s,s:s,s:s}", "id", c->id, "name", c->name ? c->name : "", "status",
		      api_cache_status_name(c->status));
	int r = 0;

	if (!o)
		return NULL;
	if (c->status == API_CACHE_FAILED)
		r |= json_object_set_new(o, "statusMessage",
					 json_string(c->status_message ? c->status_message : ""));
	r |= json_object_set_new(o, "images", images_json(c));
	if (c->n_data || (c->manifest && json_array_size(json_object_get(c->manifest, "data"))))
		r |= json_object_set_new(o, "data", data_json(c));
	if (c->manifest && json_is_object(json_object_get(c->manifest, "base")))
		r |= json_object_set_new(o, "base",
					 json_deep_copy(json_object_get(c->manifest, "base")));
	if (c->status == API_CACHE_CREATING && !c->deleting)
		r |= json_object_set_new(o, "progress", progress_json(c));
	if (c->status == API_CACHE_READY)
		r |= json_object_set_new(o, "size", json_integer((json_int_t)c->size));
	r |= set_time(o, "createdAt", c->created_at);
	if (c->status == API_CACHE_READY)
		r |= set_time(o, "readyAt", c->ready_at);
	r |= lifecycle_json(o, c);
	return r == 0 ? steal_pointer(&o) : NULL;
}

void api_cache_touch(struct api_cache *c)
{
	c->gen++;
}

/* Everything the API object is made of that can change after the cache is created (id, name,
 * refs and requested data never do). */
static struct api_cache_stamp stamp_of(const struct api_cache *c)
{
	struct api_cache_stamp s;

	memset(&s, 0, sizeof(s)); /* padding too: stamps are compared with memcmp */
	s.gen = c->gen;
	s.size = c->size;
	s.progress_done = c->progress_done;
	s.progress_total = c->progress_total;
	s.created_at = c->created_at;
	s.ready_at = c->ready_at;
	s.last_used_at = c->last_used_at;
	s.retention_days = c->retention_days;
	s.day_seconds = c->day_seconds;
	s.manifest = c->manifest;
	s.status_message = c->status_message;
	s.last_event = c->n_events ? c->events[c->n_events - 1].message : NULL;
	s.n_attachments = c->n_attachments;
	s.n_events = c->n_events;
	s.status = c->status;
	s.deleting = c->deleting;
	return s;
}

int api_cache_rendered(struct api_cache *c, const char **ret, size_t *ret_len)
{
	struct api_cache_stamp now = stamp_of(c);
	_cleanup_json_ json_t *j = NULL;
	char *s;

	if (c->rendered && memcmp(&now, &c->rendered_stamp, sizeof(now)) == 0) {
		*ret = c->rendered;
		*ret_len = c->rendered_len;
		return 0;
	}
	j = api_cache_to_json(c);
	s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	if (!s)
		return -ENOMEM;
	free(c->rendered);
	c->rendered = s;
	c->rendered_len = strlen(s);
	c->rendered_stamp = now;
	*ret = c->rendered;
	*ret_len = c->rendered_len;
	return 0;
}

/* ---- metadata files ---------------------------------------------------------------------------
 */

#define META_VERSION 1

static int meta_lifecycle_out(json_t *o, const struct api_cache *c)
{
	_cleanup_json_ json_t *atts = json_array(), *events = json_array();
	int r = atts && events ? 0 : -1;

	r |= json_object_set_new(o, "tenant",
				 json_string(c->tenant ? c->tenant : API_TENANT_DEFAULT));
	r |= json_object_set_new(o, "retentionDays", json_integer(c->retention_days));
	r |= json_object_set_new(o, "requestKey", json_string(c->request_key));
	if (c->client_token)
		r |= json_object_set_new(o, "clientToken", json_string(c->client_token));
	if (c->last_used_at)
		r |= json_object_set_new(o, "lastUsedAt", json_integer(c->last_used_at));
	for (size_t i = 0; r == 0 && i < c->n_attachments; i++)
		r |= json_array_append_new(atts,
					   json_pack("{s:s,s:s?,s:I}", "id", c->attachments[i].id,
						     "host", c->attachments[i].host, "at",
						     (json_int_t)c->attachments[i].at));
	for (size_t i = 0; r == 0 && i < c->n_events; i++)
		r |= json_array_append_new(
		    events, json_pack("{s:I,s:s,s:s}", "time", (json_int_t)c->events[i].time,
				      "type", c->events[i].type, "message", c->events[i].message));
	if (r == 0 && c->n_attachments)
		r |= json_object_set(o, "attachments", atts);
	if (r == 0)
		r |= json_object_set(o, "events", events);
	return r;
}

json_t *api_cache_to_meta(const struct api_cache *c)
{
	_cleanup_json_ json_t *o =
	    json_pack("{s:i,s:s,s:s,s:I}", "version", META_VERSION, "id", c->id, "status",
		      api_cache_status_name(c->status), "createdAt", (json_int_t)c->created_at);
	_cleanup_json_ json_t *refs = json_array();
	int r = 0;

	if (!o || !refs)
		return NULL;
	for (size_t i = 0; i < c->n_refs; i++)
		r |= json_array_append_new(refs, json_string(c->refs[i]));
	r |= json_object_set(o, "refs", refs);
	r |= json_object_set_new(o, "platforms", platforms_json(c->platforms, c->n_refs));
	if (c->name)
		r |= json_object_set_new(o, "name", json_string(c->name));
	if (c->status_message)
		r |= json_object_set_new(o, "statusMessage", json_string(c->status_message));
	if (c->manifest)
		r |= json_object_set(o, "manifest", c->manifest);
	if (c->n_data)
		r |= json_object_set_new(o, "data", requested_data_json(c));
	if (c->request_size)
		r |= json_object_set_new(o, "requestSize",
					 json_integer((json_int_t)c->request_size));
	/* Only that there were credentials: a build that needs them cannot resume after a
	 * restart, and the values themselves never reach the disk. */
	if (c->had_credentials)
		r |= json_object_set_new(o, "credentials", json_true());
	if (c->status == API_CACHE_READY) {
		r |= json_object_set_new(o, "size", json_integer((json_int_t)c->size));
		r |= json_object_set_new(o, "readyAt", json_integer((json_int_t)c->ready_at));
	}
	r |= meta_lifecycle_out(o, c);
	return r == 0 ? steal_pointer(&o) : NULL;
}

/* "platforms": one per ref, normalized; metadata written before there were platforms has none:
 * those images were all built for linux/amd64. */
static int meta_platforms(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *plats = NULL, *v;
	char norm[OCI_PLATFORM_MAX];
	int r = imc_json_get_array(meta, "platforms", false, API_IMAGES_MAX, NULL, &plats, err);

	if (r < 0)
		return r;
	if (plats && json_array_size(plats) != c->n_refs)
		return imc_err(err, EINVAL, "platforms: %zu for %zu refs", json_array_size(plats),
			       c->n_refs);
	for (size_t i = 0; i < c->n_refs; i++) {
		v = plats ? json_array_get(plats, i) : NULL;
		if (v &&
		    (!json_is_string(v) ||
		     oci_platform_normalize(json_string_value(v), norm, sizeof(norm), NULL) < 0 ||
		     strcmp(norm, json_string_value(v)) != 0))
			return imc_err(err, EINVAL, "platforms[%zu]: want a normalized platform",
				       i);
		c->platforms[i] = strdup(v ? norm : OCI_DEFAULT_PLATFORM);
		if (!c->platforms[i])
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int meta_refs(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *refs = NULL, *v;
	size_t i;
	int r = imc_json_get_array(meta, "refs", true, API_IMAGES_MAX, NULL, &refs, err);

	if (r < 0)
		return r;
	c->refs = calloc(json_array_size(refs) + 1, sizeof(*c->refs));
	c->platforms = calloc(json_array_size(refs) + 1, sizeof(*c->platforms));
	if (!c->refs || !c->platforms)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(refs, i, v)
	{
		if (!json_is_string(v))
			return imc_err(err, EINVAL, "refs[%zu]: want a string", i);
		c->refs[i] = strdup(json_string_value(v));
		if (!c->refs[i])
			return imc_err(err, ENOMEM, "out of memory");
		c->n_refs = i + 1;
	}
	return meta_platforms(meta, c, err);
}

static int meta_data(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *data = NULL, *v;
	size_t i;
	int r = imc_json_get_array(meta, "data", false, API_DATA_MAX, NULL, &data, err);

	if (r < 0 || !data)
		return r;
	c->data = calloc(json_array_size(data) + 1, sizeof(*c->data));
	if (!c->data)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(data, i, v)
	{
		const char *source = NULL, *path = NULL, *sha = NULL;
		char ctx[32];

		snprintf(ctx, sizeof(ctx), "data[%zu]", i);
		if (!json_is_object(v))
			return imc_err(err, EINVAL, "%s: want an object", ctx);
		r = get_data_fields(v, ctx, &source, &path, &sha, err);
		if (r < 0)
			return r;
		c->n_data = i + 1;
		r = data_set(&c->data[i], source, path, sha, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int meta_strings(json_t *meta, struct api_cache *c, imc_error *err)
{
	const char *id = NULL, *status = NULL, *name = NULL, *msg = NULL;
	int r = imc_json_get_string(meta, "id", true, API_ID_MAX - 1, NULL, &id, err);

	if (r == 0 && !api_cache_id_valid(id))
		r = imc_err(err, EINVAL, "id \"%s\": malformed", id);
	if (r == 0)
		r = imc_json_get_string(meta, "status", true, 32, NULL, &status, err);
	if (r == 0 && api_cache_status_parse(status, &c->status) < 0)
		r = imc_err(err, EINVAL, "status \"%s\": unknown", status);
	if (r == 0)
		r = imc_json_get_string(meta, "name", false, API_NAME_MAX, NULL, &name, err);
	if (r == 0)
		r = imc_json_get_string(meta, "statusMessage", false, IMC_ERR_MSG * 4, NULL, &msg,
					err);
	if (r < 0)
		return r;
	snprintf(c->id, sizeof(c->id), "%s", id);
	if (name && !(c->name = strdup(name)))
		return imc_err(err, ENOMEM, "out of memory");
	if (msg && !(c->status_message = strdup(msg)))
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

static int meta_attachments(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *atts = NULL, *v;
	size_t i;
	int r = imc_json_get_array(meta, "attachments", false, API_ATTACH_MAX, NULL, &atts, err);

	if (r < 0 || !atts)
		return r;
	c->attachments = calloc(json_array_size(atts) + 1, sizeof(*c->attachments));
	if (!c->attachments)
		return imc_err(err, ENOMEM, "out of memory");
	json_array_foreach(atts, i, v)
	{
		const char *id = NULL, *host = NULL;
		char ctx[32];

		snprintf(ctx, sizeof(ctx), "attachments[%zu]", i);
		r = imc_json_get_string(v, "id", true, API_ID_MAX - 1, ctx, &id, err);
		if (r == 0)
			r = imc_json_get_string(v, "host", false, API_HOST_MAX, ctx, &host, err);
		if (r == 0)
			r = imc_json_get_int(v, "at", true, 0, INT64_MAX, ctx,
					     &c->attachments[i].at, err);
		if (r < 0)
			return r;
		snprintf(c->attachments[i].id, sizeof(c->attachments[i].id), "%s", id);
		c->n_attachments = i + 1;
		r = dup_field(host, &c->attachments[i].host, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int meta_events(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *events = NULL, *v;
	size_t i;
	int r = imc_json_get_array(meta, "events", false, API_EVENTS_MAX, NULL, &events, err);

	json_array_foreach(events, i, v)
	{
		const char *type = NULL, *msg = NULL;
		int64_t t = 0;
		char ctx[32];

		snprintf(ctx, sizeof(ctx), "events[%zu]", i);
		r = imc_json_get_int(v, "time", true, 0, INT64_MAX, ctx, &t, err);
		if (r == 0)
			r = imc_json_get_string(v, "type", true, 23, ctx, &type, err);
		if (r == 0)
			r = imc_json_get_string(v, "message", true, IMC_ERR_MSG - 1, ctx, &msg,
						err);
		if (r == 0 && api_cache_add_event(c, t, type, "%s", msg) < 0)
			r = imc_err(err, ENOMEM, "out of memory");
		if (r < 0)
			return r;
	}
	return r;
}

/* Lifecycle fields; metadata written before they existed gets the defaults. */
static int meta_lifecycle(json_t *meta, struct api_cache *c, imc_error *err)
{
	const char *tenant = NULL, *token = NULL, *key = NULL;
	int r;

	c->retention_days = API_RETENTION_DEFAULT;
	r = imc_json_get_string(meta, "tenant", false, API_TENANT_MAX, NULL, &tenant, err);
	if (r == 0)
		r = imc_json_get_string(meta, "clientToken", false, API_TOKEN_MAX, NULL, &token,
					err);
	if (r == 0)
		r = imc_json_get_string(meta, "requestKey", false, IMC_SHA256_HEX_LEN, NULL, &key,
					err);
	if (r == 0)
		r = imc_json_get_int(meta, "retentionDays", false, 0, API_RETENTION_MAX, NULL,
				     &c->retention_days, err);
	if (r == 0)
		r = imc_json_get_int(meta, "lastUsedAt", false, 0, INT64_MAX, NULL,
				     &c->last_used_at, err);
	if (r < 0)
		return r;
	snprintf(c->request_key, sizeof(c->request_key), "%s", key ? key : "");
	if (!(c->tenant = strdup(tenant ? tenant : API_TENANT_DEFAULT)))
		return imc_err(err, ENOMEM, "out of memory");
	r = dup_field(token, &c->client_token, err);
	if (r == 0)
		r = meta_attachments(meta, c, err);
	return r == 0 ? meta_events(meta, c, err) : r;
}

static int meta_numbers(json_t *meta, struct api_cache *c, imc_error *err)
{
	int64_t size = 0, request_size = 0;
	int r = imc_json_get_int(meta, "createdAt", true, 0, INT64_MAX, NULL, &c->created_at, err);

	if (r == 0)
		r = imc_json_get_int(meta, "readyAt", false, 0, INT64_MAX, NULL, &c->ready_at, err);
	if (r == 0)
		r = imc_json_get_int(meta, "size", false, 0, INT64_MAX, NULL, &size, err);
	if (r == 0)
		r = imc_json_get_int(meta, "requestSize", false, 0, (int64_t)API_SIZE_MAX, NULL,
				     &request_size, err);
	if (r == 0)
		r = imc_json_get_bool(meta, "credentials", false, NULL, &c->had_credentials, err);
	c->size = (uint64_t)size;
	c->request_size = (uint64_t)request_size;
	return r;
}

int api_cache_from_meta(json_t *meta, struct api_cache **ret, imc_error *err)
{
	struct api_cache *c = calloc(1, sizeof(*c));
	json_t *manifest = NULL;
	int64_t version = 0;
	int r;

	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	r = imc_json_get_int(meta, "version", true, META_VERSION, META_VERSION, NULL, &version,
			     err);
	if (r == 0)
		r = meta_strings(meta, c, err);
	if (r == 0)
		r = meta_refs(meta, c, err);
	if (r == 0)
		r = meta_numbers(meta, c, err);
	if (r == 0)
		r = meta_data(meta, c, err);
	if (r == 0)
		r = imc_json_get_object(meta, "manifest", false, NULL, &manifest, err);
	if (r == 0)
		r = meta_lifecycle(meta, c, err);
	if (r < 0) {
		api_cache_free(c);
		return r;
	}
	c->manifest = json_incref(manifest);
	*ret = c;
	return 0;
}
