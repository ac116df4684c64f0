/* Fuzz target: the API's JSON input (api_create_request_parse with its images and their
 * platforms, data, size and credentials, api_cache_from_meta).
 *
 * The body is copied into a buffer of exactly its length.  It is parsed as a create request; when
 * it is a JSON object it is also read as a cache metadata file.  A cache read from metadata must
 * survive its own round trip: api_cache_to_meta() of it reads back to the same cache. */
#include <stdlib.h>
#include <string.h>

#include "../../api/api.h"

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* json_equal() is false when either side is NULL. */
static bool json_same(json_t *a, json_t *b)
{
	return (!a && !b) || json_equal(a, b);
}

/* No key of a credential anywhere in what a cache shows or writes down; of the credentials the
 * metadata holds only "credentials": true. */
static bool has_secret_key(json_t *j)
{
	static const char *const keys[] = {"password", "token", "username", "registry"};
	const char *key;
	json_t *v;
	size_t i;

	if (json_is_object(j)) {
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			if (json_object_get(j, keys[k]))
				return true;
		json_object_foreach(j, key, v) if (has_secret_key(v)) return true;
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, v) if (has_secret_key(v)) return true;
	}
	return false;
}

static void check_no_secret(const struct api_create_request *req)
{
	struct api_cache *c = NULL;
	_cleanup_json_ json_t *j = NULL, *meta = NULL;
	json_t *flag;

	if (api_cache_new("imc-0123456789abcdef", req, 1, &c, NULL) < 0)
		abort();
	j = api_cache_to_json(c);
	meta = api_cache_to_meta(c);
	if (!j || !meta || has_secret_key(j) || has_secret_key(meta))
		abort();
	flag = json_object_get(meta, "credentials");
	if (req->n_credentials ? !json_is_true(flag) : flag != NULL)
		abort();
	api_cache_free(c);
}

static void fuzz_create_request(const char *body, size_t len)
{
	struct api_create_request req = {0};
	imc_error err = {0};
	int r = api_create_request_parse(body, len, &req, &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0' || req.refs || req.name || req.data ||
		    req.credentials || req.n_data || req.n_credentials)
			abort();
		return;
	}
	if (r > 0 || req.n_refs < 1 || !req.refs || !req.refs[0] || req.n_data > API_DATA_MAX ||
	    req.n_credentials > API_CREDS_MAX || req.size > API_SIZE_MAX ||
	    req.retention_days < 0 || req.retention_days > API_RETENTION_MAX ||
	    (req.client_token && !imc_name_valid(req.client_token, API_TOKEN_MAX)))
		abort();
	/* Every platform given is normalized, and no image is asked for twice. */
	for (size_t i = 0; i < req.n_refs; i++) {
		char norm[OCI_PLATFORM_MAX];
		if (!req.platforms)
			abort();
		if (req.platforms[i] &&
		    (oci_platform_normalize(req.platforms[i], norm, sizeof(norm), NULL) < 0 ||
		     strcmp(norm, req.platforms[i]) != 0))
			abort();
		for (size_t k = 0; k < i; k++)
			if (strcmp(req.refs[i], req.refs[k]) == 0 &&
			    str_eq(req.platforms[i], req.platforms[k]))
				abort();
	}
	/* Every accepted entry is one the builder accepts too, and no path is another's or inside
	 * it. */
	for (size_t i = 0; i < req.n_data; i++) {
		struct builder_data d = {req.data[i].source, req.data[i].path, req.data[i].sha256};
		if (builder_data_check(&d, NULL, NULL) < 0)
			abort();
		for (size_t k = 0; k < i; k++)
			if (builder_data_paths_overlap(req.data[i].path, req.data[k].path))
				abort();
	}
	/* A cache made from it never shows a credential. */
	for (size_t i = 0; i < req.n_credentials; i++)
		if (!req.credentials[i].registry ||
		    !(req.credentials[i].token ||
		      (req.credentials[i].username && req.credentials[i].password)))
			abort();
	check_no_secret(&req);
	api_create_request_free(&req);
}

static void check_same(const struct api_cache *a, const struct api_cache *b)
{
	if (strcmp(a->id, b->id) != 0 || !str_eq(a->name, b->name) || a->status != b->status ||
	    !str_eq(a->status_message, b->status_message) || a->created_at != b->created_at ||
	    a->n_refs != b->n_refs || !json_same(a->manifest, b->manifest) ||
	    a->n_data != b->n_data || a->request_size != b->request_size ||
	    a->had_credentials != b->had_credentials ||
	    (a->status == API_CACHE_READY && (a->size != b->size || a->ready_at != b->ready_at)) ||
	    !str_eq(a->tenant, b->tenant) || !str_eq(a->client_token, b->client_token) ||
	    strcmp(a->request_key, b->request_key) != 0 || a->retention_days != b->retention_days ||
	    a->last_used_at != b->last_used_at || a->n_attachments != b->n_attachments ||
	    a->n_events != b->n_events)
		abort();
	for (size_t i = 0; i < a->n_events; i++)
		if (a->events[i].time != b->events[i].time ||
		    strcmp(a->events[i].type, b->events[i].type) != 0 ||
		    strcmp(a->events[i].message, b->events[i].message) != 0)
			abort();
	for (size_t i = 0; i < a->n_attachments; i++)
		if (strcmp(a->attachments[i].id, b->attachments[i].id) != 0 ||
		    !str_eq(a->attachments[i].host, b->attachments[i].host))
			abort();
	for (size_t i = 0; i < a->n_refs; i++)
		if (strcmp(a->refs[i], b->refs[i]) != 0 || !a->platforms[i] ||
		    !str_eq(a->platforms[i], b->platforms[i]))
			abort();
	for (size_t i = 0; i < a->n_data; i++)
		if (!str_eq(a->data[i].source, b->data[i].source) ||
		    !str_eq(a->data[i].path, b->data[i].path) ||
		    !str_eq(a->data[i].sha256, b->data[i].sha256))
			abort();
}

static void fuzz_meta(json_t *meta)
{
	struct api_cache *c = NULL, *again = NULL;
	_cleanup_json_ json_t *back = NULL, *shown = NULL;
	imc_error err = {0};
	int r = api_cache_from_meta(meta, &c, &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0' || c)
			abort();
		return;
	}
	if (r > 0 || !api_cache_id_valid(c->id))
		abort();
	shown = api_cache_to_json(c);
	back = api_cache_to_meta(c);
	if (!shown || !back)
		abort();
	if (api_cache_from_meta(back, &again, &err) < 0)
		abort();
	check_same(c, again);
	api_cache_free(again);
	api_cache_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *body = malloc(size ? size : 1);
	_cleanup_json_ json_t *j = NULL;

	if (!body)
		return 0;
	memcpy(body, data, size);
	fuzz_create_request(body, size);
	j = json_loadb(body, size, JSON_REJECT_DUPLICATES, NULL);
	if (json_is_object(j))
		fuzz_meta(j);
	return 0;
}
