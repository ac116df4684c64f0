/* Auto-match (--server): a Prepare whose snapshot.ref (a ChainID) no local cache serves asks
 * imcd for the Ready caches of the caller's tenant with an image whose top ChainID it is (GET
 * /v1/imagecaches?chainId=…&status=Ready) and takes the newest one's shared lower, the host's
 * one read-only mount of the cache (attach/lower.c); a cache the store lacks is attached lazily
 * there (attach/lazy.c: its chunks come from imcd on demand and in the background), so the
 * Prepare answers AlreadyExists before the cache is local.
 *
 * Auto-create (--auto-create): when imcd has no cache of the pulled image either, imcd is asked
 * to create one for the reference the CRI pulled (its label containerd.io/snapshot/cri.image-ref),
 * without waiting for the build: this pull goes on as any other, the next cold node hits.  A
 * pull asks for each of its layers, so a reference is asked for at most once per
 * SNAP_AUTO_CREATE_TTL_S in this process, and not at all when imcd holds a Ready cache of the
 * manifest the CRI names (cri.manifest-digest: the layer that missed is a prefix of its chain,
 * not its top); imcd itself gives an identical request the cache still being built. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../net/net.h"
#include "internal.h"
#include "snap_int.h"

#define LABEL_IMAGE_REF	       "containerd.io/snapshot/cri.image-ref"
#define LABEL_MANIFEST_DIGEST  "containerd.io/snapshot/cri.manifest-digest"
#define MATCH_BODY_MAX	       (4u << 20)
#define SNAP_AUTO_CREATE_TTL_S 600
#define SNAP_AUTO_CREATE_MAX   1024 /* refs remembered */
#define REF_MAX		       1024 /* imcd's cap on an image ref */

/* GET /v1/imagecaches?QUERY: the answer's page. */
static int imcd_list(struct snap *s, const char *query, json_t **ret, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	struct net_response resp = {0};
	json_error_t je;
	int r;

	if (asprintf(&url, "%s/v1/imagecaches?%s", s->server, query) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	struct net_request req = {.url = url,
				  .bearer = s->token,
				  .sink = {.kind = NET_SINK_MEMORY, .max = MATCH_BODY_MAX}};
	r = net_perform(s->net, &req, &resp, err);
	if (r == 0 && !(*ret = json_loadb(resp.body, resp.body_len, 0, &je)))
		r = imc_err(err, EPROTO, "%s: not JSON: %s", s->server, je.text);
	net_response_free(&resp);
	return r;
}

/* The id of the newest Ready cache in imcd's answer (-ENOENT when none). */
static int newest_item(json_t *page, char *ret, size_t size)
{
	json_t *items = json_object_get(page, "items"), *it;
	const char *best_at = NULL;
	size_t i;

	ret[0] = '\0';
	json_array_foreach(items, i, it)
	{
		const char *id = json_string_value(json_object_get(it, "id"));
		const char *at = json_string_value(json_object_get(it, "createdAt"));
		const char *st = json_string_value(json_object_get(it, "status"));
		if (!id || !at || !st || strcmp(st, "Ready") != 0 || !imc_cache_id_valid(id))
			continue;
		if (!best_at || strcmp(at, best_at) > 0 ||
		    (strcmp(at, best_at) == 0 && strcmp(id, ret) > 0)) {
			snprintf(ret, size, "%s", id);
			best_at = at;
		}
	}
	return ret[0] ? 0 : -ENOENT;
}

/* The newest Ready cache imcd has with an image whose top ChainID (or, by_digest, whose
 * manifest digest) is value. */
static int ask_imcd(struct snap *s, const char *param, const char *value, char *ret, size_t size,
		    imc_error *err)
{
	_cleanup_free_ char *q = net_url_escape(value, strlen(value)), *query = NULL;
	_cleanup_json_ json_t *page = NULL;

	if (!q || asprintf(&query, "%s=%s&status=Ready", param, q) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (imcd_list(s, query, &page, err) < 0)
		return err->code;
	return newest_item(page, ret, size);
}

/* Was ref asked for within the TTL?  If not, it is remembered now (the oldest entries go). */
static bool asked_lately(struct snap *s, const char *ref)
{
	time_t now = time(NULL);
	json_t *t = json_object_get(s->asked, ref), *v;
	const char *k;
	void *tmp;

	if (t && now - (time_t)json_integer_value(t) < SNAP_AUTO_CREATE_TTL_S)
		return true;
	json_object_foreach_safe(s->asked, tmp, k, v)
	{
		if (now - (time_t)json_integer_value(v) >= SNAP_AUTO_CREATE_TTL_S)
			json_object_del(s->asked, k);
	}
	if (json_object_size(s->asked) >= SNAP_AUTO_CREATE_MAX)
		json_object_clear(s->asked);
	json_object_set_new(s->asked, ref, json_integer((json_int_t)now));
	return false;
}

static int post_create(struct snap *s, const char *ref, imc_error *err)
{
	_cleanup_free_ char *url = NULL, *body = NULL;
	_cleanup_json_ json_t *req_body = json_pack("{s:[{s:s}]}", "images", "ref", ref);
	_cleanup_json_ json_t *ans = NULL;
	struct net_response resp = {0};
	json_error_t je;
	int r;

	if (!req_body || !(body = json_dumps(req_body, JSON_COMPACT)) ||
	    asprintf(&url, "%s/v1/imagecaches", s->server) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	struct net_request req = {
	    .method = "POST",
	    .url = url,
	    .bearer = s->token,
	    .body = {.data = body, .len = strlen(body), .content_type = "application/json"},
	    .sink = {.kind = NET_SINK_MEMORY, .max = MATCH_BODY_MAX}};
	r = net_perform(s->net, &req, &resp, err);
	if (r == 0 && !(ans = json_loadb(resp.body, resp.body_len, 0, &je)))
		r = imc_err(err, EPROTO, "%s: not JSON: %s", s->server, je.text);
	net_response_free(&resp);
	if (r == 0)
		imc_info("auto-create: %s: imcd creates cache %s (%s)", ref,
			 json_string_value(json_object_get(ans, "id")) ?: "?",
			 json_string_value(json_object_get(ans, "status")) ?: "?");
	return r;
}

/* --auto-create: imcd has no cache serving this layer; ask it for one of the pulled image. */
static void auto_create(struct snap *s, json_t *labels)
{
	const char *ref = json_string_value(json_object_get(labels, LABEL_IMAGE_REF));
	const char *digest = json_string_value(json_object_get(labels, LABEL_MANIFEST_DIGEST));
	char id[SNAP_CACHE_ID_MAX], hex[IMC_SHA256_HEX_LEN + 1];
	imc_error e = {0};

	if (!s->auto_create || !ref || !*ref || strlen(ref) > REF_MAX || asked_lately(s, ref))
		return;
	if (digest && imc_digest_parse(digest, hex, &e) == 0 &&
	    ask_imcd(s, "manifestDigest", digest, id, sizeof(id), &e) == 0) {
		imc_debug("auto-create: %s: imcd has cache %s of it already", ref, id);
		return;
	}
	e = (imc_error){0};
	if (post_create(s, ref, &e) < 0)
		imc_warn("auto-create: %s: %s", ref, e.msg);
}

/* A failure on the way is no failure of the Prepare: the layer is then unpacked as any other. */
static int degrade(imc_error *err, const char *ref, const char *what)
{
	imc_warn("auto-match: %s: %s: %s; unpacked as any layer", ref, what, err->msg);
	*err = (imc_error){0};
	return -ENOENT;
}

int snap_match_remote(struct snap *s, json_t *labels, const char *ref, int64_t id,
		      char ret_cache[SNAP_CACHE_ID_MAX], unsigned *ret_image, imc_error *err)
{
	char root[4096];
	int r;

	if (!s->server)
		return -ENOENT;
	r = ask_imcd(s, "chainId", ref, ret_cache, SNAP_CACHE_ID_MAX, err);
	if (r == -ENOENT) {
		auto_create(s, labels);
		return imc_err(err, ENOENT, "%s: no Ready cache of chain %s", s->server, ref);
	}
	if (r < 0)
		return degrade(err, ref, s->server);
	imc_info("auto-match: %s: cache %s on %s, on its shared lower", ref, ret_cache, s->server);
	if (snap_shared_get(s, ret_cache, id, root, err) < 0)
		return degrade(err, ref, ret_cache);
	if ((r = snap_shared_image(s, ret_cache, root, ref, ret_image, err)) < 0) {
		snap_lower_release(s, ret_cache, id, true);
		return degrade(err, ref, ret_cache);
	}
	return 0;
}
