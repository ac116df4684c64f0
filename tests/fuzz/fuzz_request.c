/* Fuzz target: the API's JSON input (api_create_request_parse, api_cache_from_meta).
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

static void fuzz_create_request(const char *body, size_t len)
{
	struct api_create_request req = {0};
	imc_error err = {0};
	int r = api_create_request_parse(body, len, &req, &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0' || req.refs || req.name)
			abort();
		return;
	}
	if (r > 0 || req.n_refs != 1 || !req.refs || !req.refs[0])
		abort();
	api_create_request_free(&req);
}

static void check_same(const struct api_cache *a, const struct api_cache *b)
{
	if (strcmp(a->id, b->id) != 0 || !str_eq(a->name, b->name) || a->status != b->status ||
	    !str_eq(a->status_message, b->status_message) || a->created_at != b->created_at ||
	    a->n_refs != b->n_refs || !json_same(a->manifest, b->manifest) ||
	    (a->status == API_CACHE_READY && (a->size != b->size || a->ready_at != b->ready_at)))
		abort();
	for (size_t i = 0; i < a->n_refs; i++)
		if (strcmp(a->refs[i], b->refs[i]) != 0)
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
