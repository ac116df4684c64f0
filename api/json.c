/* The API's JSON: create requests in, cache objects and errors out, metadata files both ways. */
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
	    {EBADMSG, 400, "InvalidJSON"},    {EINVAL, 400, "InvalidArgument"},
	    {ERANGE, 400, "InvalidArgument"}, {ENOENT, 404, "NotFound"},
	    {EBUSY, 409, "Conflict"},	      {EFBIG, 413, "PayloadTooLarge"},
	    {EDQUOT, 429, "LimitExceeded"},   {ESHUTDOWN, 503, "Unavailable"},
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

json_t *api_error_json(const char *code, const char *message)
{
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
	for (size_t i = 0; i < r->n_refs; i++)
		free(r->refs[i]);
	free(r->refs);
	free(r->name);
	data_free(r->data, r->n_data);
	api_credentials_free(r->credentials, r->n_credentials);
	memset(r, 0, sizeof(*r));
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

static int parse_image(json_t *image, size_t index, struct api_create_request *req, imc_error *err)
{
	static const char *const fields[] = {"ref", NULL};
	struct builder_ref parsed = {0};
	const char *ref = NULL;
	char ctx[32];
	int r;

	snprintf(ctx, sizeof(ctx), "images[%zu]", index);
	if (!json_is_object(image))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_check_fields(image, fields, ctx, err);
	if (r == 0)
		r = imc_json_get_string(image, "ref", true, API_REF_MAX, ctx, &ref, err);
	if (r < 0)
		return r;
	r = builder_ref_parse(ref, &parsed, err);
	if (r < 0) {
		imc_err_wrap(err, "%s.ref", ctx);
		if (err)
			err->code =
			    -EINVAL; /* a bad ref is the client's error, whatever the cause */
		return -EINVAL;
	}
	builder_ref_free(&parsed);
	for (size_t i = 0; i < req->n_refs; i++)
		if (strcmp(req->refs[i], ref) == 0)
			return imc_err(err, EINVAL, "%s.ref: %s is already images[%zu]", ctx, ref,
				       i);
	req->refs[req->n_refs] = strdup(ref);
	if (!req->refs[req->n_refs])
		return imc_err(err, ENOMEM, "out of memory");
	req->n_refs++;
	return 0;
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
	if (!req->refs)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < json_array_size(images); i++) {
		r = parse_image(json_array_get(images, i), i, req, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Copy a string field (already type- and length-checked) or leave *ret NULL when absent. */
static int dup_field(const char *v, char **ret, imc_error *err)
{
	if (!v)
		return 0;
	*ret = strdup(v);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_data_entry(json_t *entry, size_t index, struct api_create_request *req,
			    imc_error *err)
{
	static const char *const fields[] = {"source", "path", "sha256", NULL};
	const char *source = NULL, *path = NULL, *sha = NULL;
	struct api_data *d = &req->data[req->n_data];
	char ctx[32];
	int r;

	snprintf(ctx, sizeof(ctx), "data[%zu]", index);
	if (!json_is_object(entry))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_check_fields(entry, fields, ctx, err);
	if (r == 0)
		r = imc_json_get_string(entry, "source", true, BUILDER_DATA_SOURCE_MAX, ctx,
					&source, err);
	if (r == 0)
		r = imc_json_get_string(entry, "path", true, BUILDER_DATA_NAME_MAX, ctx, &path,
					err);
	if (r == 0)
		r = imc_json_get_string(entry, "sha256", false, IMC_SHA256_HEX_LEN, ctx, &sha, err);
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
	req->n_data++;
	r = dup_field(source, &d->source, err);
	if (r == 0)
		r = dup_field(path, &d->path, err);
	if (r == 0)
		r = dup_field(sha, &d->sha256, err);
	return r;
}

static int parse_data(json_t *body, struct api_create_request *req, imc_error *err)
{
	json_t *data = NULL;
	int r = imc_json_get_array(body, "data", false, SIZE_MAX, NULL, &data, err);

	if (r < 0 || !data)
		return r;
	if (json_array_size(data) > API_DATA_MAX)
		return imc_err(err, EINVAL, "data: at most %d entries, got %zu", API_DATA_MAX,
			       json_array_size(data));
	req->data = calloc(json_array_size(data) + 1, sizeof(*req->data));
	if (!req->data)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < json_array_size(data); i++) {
		r = parse_data_entry(json_array_get(data, i), i, req, err);
		if (r < 0)
			return r;
	}
	return 0;
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
	struct api_credential *cred = &req->credentials[req->n_credentials];
	char ctx[32];
	int r;

	snprintf(ctx, sizeof(ctx), "credentials[%zu]", index);
	if (!json_is_object(c))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_check_fields(c, fields, ctx, err);
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
	req->n_credentials++;
	r = dup_field(registry, &cred->registry, err);
	if (r == 0)
		r = dup_field(user, &cred->username, err);
	if (r == 0)
		r = dup_field(pass, &cred->password, err);
	if (r == 0)
		r = dup_field(token, &cred->token, err);
	return r;
}

static int parse_credentials(json_t *body, struct api_create_request *req, imc_error *err)
{
	json_t *creds = NULL;
	int r = imc_json_get_array(body, "credentials", false, SIZE_MAX, NULL, &creds, err);

	if (r < 0 || !creds)
		return r;
	if (json_array_size(creds) > API_CREDS_MAX)
		return imc_err(err, EINVAL, "credentials: at most %d entries, got %zu",
			       API_CREDS_MAX, json_array_size(creds));
	req->credentials = calloc(json_array_size(creds) + 1, sizeof(*req->credentials));
	if (!req->credentials)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < json_array_size(creds); i++) {
		r = parse_credential(json_array_get(creds, i), i, req, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int api_create_request_parse(const char *body, size_t len, struct api_create_request *ret,
			     imc_error *err)
{
	static const char *const fields[] = {"images", "name", "data", "size", "credentials", NULL};
	struct api_create_request req = {0};
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
    [API_CACHE_CREATING] = "Creating",
    [API_CACHE_READY] = "Ready",
    [API_CACHE_FAILED] = "Failed",
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

bool api_cache_id_valid(const char *id)
{
	static const char prefix[] = API_ID_PREFIX "-";
	const size_t plen = sizeof(prefix) - 1;

	if (!id || strncmp(id, prefix, plen) != 0 || strlen(id) != plen + 16)
		return false;
	for (const char *p = id + plen; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

void api_cache_free(struct api_cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_refs; i++)
		free(c->refs[i]);
	free(c->refs);
	free(c->name);
	data_free(c->data, c->n_data);
	api_credentials_free(c->credentials, c->n_credentials);
	free(c->status_message);
	json_decref(c->manifest);
	free(c);
}

static int copy_data(struct api_cache *c, const struct api_data *data, size_t n, imc_error *err)
{
	c->data = calloc(n + 1, sizeof(*c->data));
	if (!c->data)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_data < n; c->n_data++) {
		struct api_data *d = &c->data[c->n_data];
		int r = dup_field(data[c->n_data].source, &d->source, err);
		if (r == 0)
			r = dup_field(data[c->n_data].path, &d->path, err);
		if (r == 0)
			r = dup_field(data[c->n_data].sha256, &d->sha256, err);
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
		struct api_credential *to = &c->credentials[c->n_credentials];
		int r = dup_field(from->registry, &to->registry, err);
		if (r == 0)
			r = dup_field(from->username, &to->username, err);
		if (r == 0)
			r = dup_field(from->password, &to->password, err);
		if (r == 0)
			r = dup_field(from->token, &to->token, err);
		if (r < 0) {
			c->n_credentials++;
			return r;
		}
	}
	return 0;
}

static int copy_refs(struct api_cache *c, char *const *refs, size_t n, imc_error *err)
{
	c->refs = calloc(n ? n : 1, sizeof(*c->refs));
	if (!c->refs)
		return imc_err(err, ENOMEM, "out of memory");
	for (; c->n_refs < n; c->n_refs++) {
		c->refs[c->n_refs] = strdup(refs[c->n_refs]);
		if (!c->refs[c->n_refs])
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

int api_cache_new(const char *id, const struct api_create_request *req, int64_t now,
		  struct api_cache **ret, imc_error *err)
{
	struct api_cache *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	snprintf(c->id, sizeof(c->id), "%s", id);
	c->status = API_CACHE_CREATING;
	c->created_at = now;
	c->request_size = req->size;
	r = copy_refs(c, req->refs, req->n_refs, err);
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

/* [{"ref":…}] for each requested ref. */
static json_t *refs_as_images(const struct api_cache *c)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < c->n_refs; i++)
		if (json_array_append_new(a, json_pack("{s:s}", "ref", c->refs[i])) < 0) {
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
	return r == 0 ? steal_pointer(&o) : NULL;
}

/* ---- metadata files ---------------------------------------------------------------------------
 */

#define META_VERSION 1

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
	return r == 0 ? steal_pointer(&o) : NULL;
}

static int meta_refs(json_t *meta, struct api_cache *c, imc_error *err)
{
	json_t *refs = NULL, *v;
	size_t i;
	int r = imc_json_get_array(meta, "refs", true, API_IMAGES_MAX, NULL, &refs, err);

	if (r < 0)
		return r;
	c->refs = calloc(json_array_size(refs) + 1, sizeof(*c->refs));
	if (!c->refs)
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
	return 0;
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
		struct api_data *d = &c->data[i];
		char ctx[32];

		snprintf(ctx, sizeof(ctx), "data[%zu]", i);
		if (!json_is_object(v))
			return imc_err(err, EINVAL, "%s: want an object", ctx);
		r = imc_json_get_string(v, "source", true, BUILDER_DATA_SOURCE_MAX, ctx, &source,
					err);
		if (r == 0)
			r = imc_json_get_string(v, "path", true, BUILDER_DATA_NAME_MAX, ctx, &path,
						err);
		if (r == 0)
			r = imc_json_get_string(v, "sha256", false, IMC_SHA256_HEX_LEN, ctx, &sha,
						err);
		if (r < 0)
			return r;
		c->n_data = i + 1;
		r = dup_field(source, &d->source, err);
		if (r == 0)
			r = dup_field(path, &d->path, err);
		if (r == 0)
			r = dup_field(sha, &d->sha256, err);
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
	if (r < 0) {
		api_cache_free(c);
		return r;
	}
	c->manifest = json_incref(manifest);
	*ret = c;
	return 0;
}
