/* Listing caches: the query string of GET /v1/imagecaches, its filters, and page slicing with an
 * opaque token that encodes a position in the list order (createdAt, id). */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../builder/builder.h"
#include "api.h"

#define PAGE_POS_MAX (API_PAGE_TOKEN_MAX / 2) /* "createdAt:id" */

/* ---- the raw query string ---------------------------------------------------------------------
 */

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s in place; "+" is a space.  A NUL byte or a broken escape is refused. */
static int query_decode(char *s, imc_error *err)
{
	char *w = s;

	for (const char *p = s; *p; p++) {
		if (*p == '+') {
			*w++ = ' ';
		} else if (*p != '%') {
			*w++ = *p;
		} else {
			int hi = hex_value(p[1]), lo = hi < 0 ? -1 : hex_value(p[2]);

			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return imc_err(err, EINVAL, "query: bad percent escape");
			*w++ = (char)(hi * 16 + lo);
			p += 2;
		}
	}
	*w = '\0';
	return 0;
}

int api_query_split(char *query, struct api_query_arg *ret, size_t max, size_t *ret_n,
		    imc_error *err)
{
	size_t n = 0;
	char *save = NULL;

	for (char *part = strtok_r(query, "&", &save); part; part = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(part, '=');

		if (n == max)
			return imc_err(err, EINVAL, "query: more than %zu parameters", max);
		if (eq)
			*eq = '\0';
		if (query_decode(part, err) < 0 || (eq && query_decode(eq + 1, err) < 0))
			return -EINVAL;
		ret[n++] = (struct api_query_arg){.key = part, .value = eq ? eq + 1 : NULL};
	}
	*ret_n = n;
	return 0;
}

/* ---- page tokens ------------------------------------------------------------------------------
 */

int api_page_token_encode(int64_t created_at, const char *id, char *buf, size_t size,
			  imc_error *err)
{
	static const char digits[] = "0123456789abcdef";
	char pos[PAGE_POS_MAX];
	int n = snprintf(pos, sizeof(pos), "%" PRId64 ":%s", created_at, id);

	if (n < 0 || (size_t)n >= sizeof(pos) || size < 2 * (size_t)n + 1)
		return imc_err(err, ENAMETOOLONG, "page token: position too long");
	for (int i = 0; i < n; i++) {
		buf[2 * i] = digits[(unsigned char)pos[i] >> 4];
		buf[2 * i + 1] = digits[(unsigned char)pos[i] & 0xf];
	}
	buf[2 * n] = '\0';
	return 0;
}

static int bad_token(imc_error *err)
{
	return imc_err(err, EINVAL, "pageToken: malformed (use the nextPageToken of a page)");
}

int api_page_token_decode(const char *token, int64_t *ret_created_at, char ret_id[API_ID_MAX],
			  imc_error *err)
{
	size_t len = strlen(token);
	char pos[PAGE_POS_MAX];
	char *colon, *end = NULL;
	long long created;

	if (len == 0 || len % 2 != 0 || len / 2 >= sizeof(pos))
		return bad_token(err);
	for (size_t i = 0; i < len / 2; i++) {
		/* Lowercase only: one position has one token. */
		int hi = hex_value(token[2 * i]), lo = hex_value(token[2 * i + 1]);

		if (hi < 0 || lo < 0 || (hi | lo) == 0 ||
		    (token[2 * i] >= 'A' && token[2 * i] <= 'F') ||
		    (token[2 * i + 1] >= 'A' && token[2 * i + 1] <= 'F'))
			return bad_token(err);
		pos[i] = (char)(hi * 16 + lo);
	}
	pos[len / 2] = '\0';
	colon = strchr(pos, ':');
	if (!colon || colon == pos || pos[0] < '0' || pos[0] > '9' ||
	    (pos[0] == '0' && colon != pos + 1))
		return bad_token(err);
	*colon = '\0';
	errno = 0;
	created = strtoll(pos, &end, 10);
	if (errno != 0 || *end != '\0' || !api_cache_id_valid(colon + 1))
		return bad_token(err);
	*ret_created_at = created;
	snprintf(ret_id, API_ID_MAX, "%s", colon + 1);
	return 0;
}

/* ---- parameters -------------------------------------------------------------------------------
 */

enum list_param {
	P_STATUS,
	P_NAME,
	P_IMAGE,
	P_MATCH,
	P_LIMIT,
	P_PAGE_TOKEN,
	P_PLATFORM,
	P_CHAIN_ID,
	P_MANIFEST_DIGEST,
	P_COUNT
};
static const struct {
	const char *key;
	size_t max; /* bytes of the value */
} list_params[P_COUNT] = {
    [P_STATUS] = {"status", 16},	[P_NAME] = {"name", API_NAME_MAX},
    [P_IMAGE] = {"image", API_REF_MAX}, [P_MATCH] = {"match", 16},
    [P_LIMIT] = {"limit", 8},		[P_PAGE_TOKEN] = {"pageToken", API_PAGE_TOKEN_MAX},
    [P_PLATFORM] = {"platform", 199}, /* OCI_PLATFORM_MAX - 1 */
    [P_CHAIN_ID] = {"chainId", 128},	[P_MANIFEST_DIGEST] = {"manifestDigest", 128},
};

/* Each known parameter at most once, non-empty and within its cap: values[] by enum list_param. */
static int collect_params(const struct api_query_arg *args, size_t n, const char *values[P_COUNT],
			  imc_error *err)
{
	for (size_t i = 0; i < n; i++) {
		size_t p = 0;

		while (p < P_COUNT && strcmp(args[i].key, list_params[p].key) != 0)
			p++;
		if (p == P_COUNT)
			return imc_err(err, EINVAL, "query parameter \"%.64s\": unknown",
				       args[i].key);
		if (values[p])
			return imc_err(err, EINVAL, "query parameter %s: given more than once",
				       list_params[p].key);
		if (!args[i].value || !args[i].value[0])
			return imc_err(err, EINVAL, "query parameter %s: empty value",
				       list_params[p].key);
		if (strlen(args[i].value) > list_params[p].max)
			return imc_err(err, EINVAL, "query parameter %s: longer than %zu bytes",
				       list_params[p].key, list_params[p].max);
		values[p] = args[i].value;
	}
	return 0;
}

static int parse_limit(const char *s, size_t *ret, imc_error *err)
{
	char *end = NULL;
	unsigned long v;

	if (s[0] < '0' || s[0] > '9')
		return imc_err(err, EINVAL, "limit \"%s\": want 1-%d", s, API_LIST_LIMIT_MAX);
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 1 || v > API_LIST_LIMIT_MAX)
		return imc_err(err, EINVAL, "limit \"%s\": want 1-%d", s, API_LIST_LIMIT_MAX);
	*ret = v;
	return 0;
}

/* image: any valid reference; a digest reference also matches by the resolved digest. */
static int parse_image(const char *s, struct api_list_query *q, imc_error *err)
{
	struct oci_ref ref = {0};
	int r = oci_ref_parse(s, &ref, err);

	if (r < 0) {
		imc_err_wrap(err, "image");
		return err ? (err->code = -EINVAL) : -EINVAL; /* a bad ref is a bad argument */
	}
	q->image = strdup(s);
	if (q->image && ref.digest)
		q->image_digest = strdup(ref.digest);
	r = !q->image || (ref.digest && !q->image_digest) ? -ENOMEM : 0;
	oci_ref_free(&ref);
	return r < 0 ? imc_err(err, ENOMEM, "out of memory") : 0;
}

static int parse_platform(const char *s, struct api_list_query *q, imc_error *err)
{
	char norm[OCI_PLATFORM_MAX];

	if (oci_platform_normalize(s, norm, sizeof(norm), err) < 0)
		return imc_err_wrap(err, "platform");
	q->platform = strdup(norm);
	return q->platform ? 0 : imc_err(err, ENOMEM, "out of memory");
}

/* chainId and manifestDigest: "sha256:" and 64 lowercase hex digits. */
static int parse_digest(const char *name, const char *s, char **ret, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	imc_error ignored;

	if (imc_digest_parse(s, hex, &ignored) < 0 || strcmp(s + 7, hex) != 0)
		return imc_err(err, EINVAL,
			       "%s \"%.80s\": want sha256: and 64 lowercase hex digits", name, s);
	*ret = strdup(s);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_values(const char *values[P_COUNT], struct api_list_query *q, imc_error *err)
{
	if (values[P_CHAIN_ID] &&
	    parse_digest("chainId", values[P_CHAIN_ID], &q->chain_id, err) < 0)
		return err->code;
	if (values[P_MANIFEST_DIGEST] &&
	    parse_digest("manifestDigest", values[P_MANIFEST_DIGEST], &q->manifest_digest, err) < 0)
		return err->code;
	if (values[P_MATCH] && strcmp(values[P_MATCH], "best") == 0)
		q->match_best = true;
	else if (values[P_MATCH] && strcmp(values[P_MATCH], "exact") != 0)
		return imc_err(err, EINVAL, "match \"%.32s\": want exact or best", values[P_MATCH]);
	if (values[P_MATCH] && !values[P_IMAGE])
		return imc_err(err, EINVAL, "match: only with image");
	if (values[P_PLATFORM] && !values[P_IMAGE])
		return imc_err(err, EINVAL, "platform: only with image");
	if (values[P_PLATFORM] && parse_platform(values[P_PLATFORM], q, err) < 0)
		return -EINVAL;
	if (q->match_best && values[P_PAGE_TOKEN])
		return imc_err(err, EINVAL, "pageToken: not with match=best (one item at most)");
	if (values[P_STATUS]) {
		if (api_cache_status_parse(values[P_STATUS], &q->status) < 0)
			return imc_err(err, EINVAL,
				       "status \"%.32s\": want Creating, Ready, Failed, Updating, "
				       "Deleting or Expired",
				       values[P_STATUS]);
		q->have_status = true;
	}
	if (values[P_LIMIT] && parse_limit(values[P_LIMIT], &q->limit, err) < 0)
		return -EINVAL;
	if (values[P_PAGE_TOKEN]) {
		if (api_page_token_decode(values[P_PAGE_TOKEN], &q->after_created, q->after_id,
					  err) < 0)
			return -EINVAL;
		q->have_after = true;
	}
	if (values[P_NAME]) {
		if (!imc_name_valid(values[P_NAME], API_NAME_MAX))
			return imc_err(err, EINVAL, "name \"%s\": want [A-Za-z0-9._-]",
				       values[P_NAME]);
		q->name = strdup(values[P_NAME]);
		if (!q->name)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return values[P_IMAGE] ? parse_image(values[P_IMAGE], q, err) : 0;
}

int api_list_query_parse(const struct api_query_arg *args, size_t n, struct api_list_query *ret,
			 imc_error *err)
{
	const char *values[P_COUNT] = {0};
	struct api_list_query q = {.limit = API_LIST_LIMIT_DEFAULT};
	int r;

	if (n > API_QUERY_ARGS_MAX)
		return imc_err(err, EINVAL, "query: more than %d parameters", API_QUERY_ARGS_MAX);
	r = collect_params(args, n, values, err);
	if (r == 0)
		r = parse_values(values, &q, err);
	if (r < 0) {
		api_list_query_free(&q);
		return r;
	}
	*ret = q;
	return 0;
}

void api_list_query_free(struct api_list_query *q)
{
	free(q->name);
	free(q->image);
	free(q->image_digest);
	free(q->platform);
	free(q->chain_id);
	free(q->manifest_digest);
	q->name = q->image = q->image_digest = q->platform = NULL;
	q->chain_id = q->manifest_digest = NULL;
}

/* ---- filters and pages ------------------------------------------------------------------------
 */

/* A built image whose resolved manifest (or index) digest is the wanted one (for platform
 * only, unless NULL). */
static bool manifest_has_digest(const json_t *manifest, const char *digest, const char *platform)
{
	json_t *images = manifest ? json_object_get(manifest, "images") : NULL;
	size_t i;
	json_t *img;

	json_array_foreach(images, i, img)
	{
		const char *d = json_string_value(json_object_get(img, "digest"));
		const char *x = json_string_value(json_object_get(img, "indexDigest"));
		const char *p = json_string_value(json_object_get(img, "platform"));

		if (((d && strcmp(d, digest) == 0) || (x && strcmp(x, digest) == 0)) &&
		    (!platform || (p && strcmp(p, platform) == 0)))
			return true;
	}
	return false;
}

/* A built image whose top ChainID (of its layers' diffIds) is chain_id. */
static bool manifest_has_top(const json_t *manifest, const char *chain_id)
{
	json_t *images = manifest ? json_object_get(manifest, "images") : NULL;
	size_t i;
	json_t *img;

	json_array_foreach(images, i, img)
	{
		char top[OCI_DIGEST_MAX + 1];
		imc_error ignored;

		if (oci_image_top_chain_id(img, top, &ignored) == 0 && strcmp(top, chain_id) == 0)
			return true;
	}
	return false;
}

bool api_cache_has_platform(const struct api_cache *c, const char *platform)
{
	for (size_t i = 0; c->platforms && i < c->n_refs; i++)
		if (c->platforms[i] && strcmp(c->platforms[i], platform) == 0)
			return true;
	return false;
}

bool api_cache_matches(const struct api_cache *c, const struct api_list_query *q)
{
	bool found = false;

	if (q->have_status && c->status != q->status)
		return false;
	if (q->name && (!c->name || strcmp(c->name, q->name) != 0))
		return false;
	if (q->chain_id && !manifest_has_top(c->manifest, q->chain_id))
		return false;
	if (q->manifest_digest && !manifest_has_digest(c->manifest, q->manifest_digest, NULL))
		return false;
	if (q->match_best) /* the image is scored by shared layers instead */
		return true;
	if (!q->image)
		return true;
	for (size_t i = 0; !found && i < c->n_refs; i++)
		found = strcmp(c->refs[i], q->image) == 0 &&
			(!q->platform || (c->platforms && c->platforms[i] &&
					  strcmp(c->platforms[i], q->platform) == 0));
	return found ||
	       (q->image_digest && manifest_has_digest(c->manifest, q->image_digest, q->platform));
}

/* The index of the first item after the token's position (0 without a token). */
static size_t page_start(struct api_cache *const *items, size_t n, const struct api_list_query *q)
{
	size_t lo = 0, hi = n;

	if (!q->have_after)
		return 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct api_cache *c = items[mid];
		bool after = c->created_at != q->after_created ? c->created_at > q->after_created
							       : strcmp(c->id, q->after_id) > 0;

		if (after)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

static bool owned_by(const struct api_cache *c, const char *tenant)
{
	return !tenant || strcmp(c->tenant ? c->tenant : API_TENANT_DEFAULT, tenant) == 0;
}

/* The items of one page (at most limit, in list order) into sel; *ret_more: matching items
 * follow. */
static size_t page_select(struct api_cache *const *items, size_t n, const char *tenant,
			  const struct api_list_query *q, size_t limit, struct api_cache **sel,
			  bool *ret_more)
{
	size_t count = 0;

	*ret_more = false;
	for (size_t i = page_start(items, n, q); i < n; i++) {
		if (!owned_by(items[i], tenant) || !api_cache_matches(items[i], q))
			continue;
		if (count == limit) {
			*ret_more = true;
			break;
		}
		sel[count++] = items[i];
	}
	return count;
}

static size_t page_limit(const struct api_list_query *q)
{
	return q->limit ? q->limit : API_LIST_LIMIT_DEFAULT;
}

int api_list_page(struct api_cache *const *items, size_t n, const struct api_list_query *q,
		  json_t **ret, imc_error *err)
{
	return api_list_page_tenant(items, n, NULL, q, ret, err);
}

int api_list_page_tenant(struct api_cache *const *items, size_t n, const char *tenant,
			 const struct api_list_query *q, json_t **ret, imc_error *err)
{
	_cleanup_free_ char *body = NULL;
	json_error_t jerr;
	size_t len = 0;
	json_t *page;
	int r = api_list_page_body(items, n, tenant, q, &body, &len, err);

	if (r < 0)
		return r;
	page = json_loadb(body, len, 0, &jerr);
	if (!page)
		return imc_err(err, ENOMEM, "list page: %s", jerr.text);
	*ret = page;
	return 0;
}

/* The bytes of a page: {"items":[ + items joined by "," + ]} or ],"nextPageToken":"…"} + a
 * newline, exactly what json_dumps(JSON_COMPACT) of the page object gives. */
#define PAGE_HEAD "{\"items\":["
#define PAGE_NEXT "],\"nextPageToken\":\""
#define PAGE_TAIL "]}\n"

static int render_items(struct api_cache **sel, size_t count, const char **parts, size_t *lens,
			size_t *ret_total, imc_error *err)
{
	size_t total = 0;

	for (size_t i = 0; i < count; i++) {
		if (api_cache_rendered(sel[i], &parts[i], &lens[i]) < 0)
			return imc_err(err, ENOMEM, "out of memory");
		total += lens[i] + 1;
	}
	*ret_total = total;
	return 0;
}

/* Join the rendered items into the page (token: "" for the last page). */
static int join_page(const char *const *parts, const size_t *lens, size_t count, size_t total,
		     const char *token, char **ret, size_t *ret_len, imc_error *err)
{
	size_t len = strlen(PAGE_HEAD), tlen = strlen(token);
	char *out = malloc(len + total + strlen(PAGE_NEXT) + tlen + 1 + strlen(PAGE_TAIL) + 1);

	if (!out)
		return imc_err(err, ENOMEM, "out of memory");
	memcpy(out, PAGE_HEAD, len);
	for (size_t i = 0; i < count; i++) {
		if (i > 0)
			out[len++] = ',';
		memcpy(out + len, parts[i], lens[i]);
		len += lens[i];
	}
	if (tlen) { /* page tokens are lowercase hex: nothing to escape */
		memcpy(out + len, PAGE_NEXT, strlen(PAGE_NEXT));
		len += strlen(PAGE_NEXT);
		memcpy(out + len, token, tlen);
		len += tlen;
		memcpy(out + len, "\"}\n", 4);
		len += 3;
	} else {
		memcpy(out + len, PAGE_TAIL, sizeof(PAGE_TAIL));
		len += strlen(PAGE_TAIL);
	}
	*ret = out;
	*ret_len = len;
	return 0;
}

int api_list_page_body(struct api_cache *const *items, size_t n, const char *tenant,
		       const struct api_list_query *q, char **ret, size_t *ret_len, imc_error *err)
{
	size_t limit = page_limit(q), count, total = 0;
	_cleanup_free_ struct api_cache **sel = calloc(limit, sizeof(*sel));
	_cleanup_free_ const char **parts = calloc(limit, sizeof(*parts));
	_cleanup_free_ size_t *lens = calloc(limit, sizeof(*lens));
	char token[API_PAGE_TOKEN_MAX + 1] = "";
	bool more;
	int r;

	if (!sel || !parts || !lens)
		return imc_err(err, ENOMEM, "out of memory");
	count = page_select(items, n, tenant, q, limit, sel, &more);
	r = render_items(sel, count, parts, lens, &total, err);
	if (r == 0 && more)
		r = api_page_token_encode(sel[count - 1]->created_at, sel[count - 1]->id, token,
					  sizeof(token), err);
	if (r < 0)
		return r;
	return join_page(parts, lens, count, total, token, ret, ret_len, err);
}

/* ---- match=best -------------------------------------------------------------------------------
 */

/* The layer digests of a cache's built images (a new array; empty before it is built). */
static json_t *api_cache_layers(const struct api_cache *c)
{
	json_t *images = c->manifest ? json_object_get(c->manifest, "images") : NULL;
	json_t *out = json_array(), *img, *layer;
	size_t i, k;

	json_array_foreach(images, i, img)
	{
		json_array_foreach(json_object_get(img, "layers"), k, layer)
		{
			json_t *d = json_object_get(layer, "digest");
			if (out && json_is_string(d) && json_array_append(out, d) < 0) {
				json_decref(out);
				return NULL;
			}
		}
	}
	return out;
}

size_t api_cache_shared_layers(const struct api_cache *c, json_t *want)
{
	_cleanup_json_ json_t *have = api_cache_layers(c);
	size_t shared = 0, i, k;
	json_t *w, *h;

	json_array_foreach(want, i, w)
	{
		json_array_foreach(have, k, h)
		{
			if (json_equal(w, h)) {
				shared++;
				break;
			}
		}
	}
	return shared;
}

/* ---- delete -----------------------------------------------------------------------------------
 */

int api_delete_query_parse(const struct api_query_arg *args, size_t n, bool *ret_force,
			   imc_error *err)
{
	bool force = false, seen = false;

	for (size_t i = 0; i < n; i++) {
		if (strcmp(args[i].key, "force") != 0)
			return imc_err(err, EINVAL, "query parameter \"%.64s\": unknown",
				       args[i].key);
		if (seen)
			return imc_err(err, EINVAL, "query parameter force: given more than once");
		seen = true;
		if (args[i].value && strcmp(args[i].value, "true") == 0)
			force = true;
		else if (!args[i].value || strcmp(args[i].value, "false") != 0)
			return imc_err(err, EINVAL, "force: want true or false");
	}
	*ret_force = force;
	return 0;
}
