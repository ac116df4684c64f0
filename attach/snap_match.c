/* Auto-match (--server): a Prepare with a snapshot.ref that no local cache serves asks imcd for a
 * Ready cache of the image being pulled, fetches it into the local store (dist_fetch_snapshot,
 * as `imc-attach prefetch` does) and looks again.  The image comes from the labels the CRI passes
 * with every layer (disable_snapshot_annotations = false): containerd.io/snapshot/cri.image-ref
 * and cri.manifest-digest; the query is GET /v1/imagecaches?image=NAME@DIGEST&status=Ready,
 * which matches a cache by the manifest (or index) digest it resolved.  The newest such cache
 * is fetched.  Without those labels (ctr) nothing is asked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dist/dist.h"
#include "../net/net.h"
#include "../store/store.h"
#include "snap_int.h"

#define LABEL_IMAGE_REF	      "containerd.io/snapshot/cri.image-ref"
#define LABEL_MANIFEST_DIGEST "containerd.io/snapshot/cri.manifest-digest"
#define MATCH_BODY_MAX	      (4u << 20)

/* NAME@DIGEST from the pulled reference (its tag or digest dropped) and the manifest digest. */
static int digest_ref(const char *ref, const char *digest, char *buf, size_t size, imc_error *err)
{
	const char *slash = strrchr(ref, '/'), *last = slash ? slash + 1 : ref;
	size_t n = strcspn(last, ":@") + (size_t)(last - ref);
	char hex[IMC_SHA256_HEX_LEN + 1];

	if (imc_digest_parse(digest, hex, err) < 0)
		return imc_err_wrap(err, "label %s", LABEL_MANIFEST_DIGEST);
	if ((size_t)snprintf(buf, size, "%.*s@%s", (int)n, ref, digest) >= size)
		return imc_err(err, ENAMETOOLONG, "label %s: too long", LABEL_IMAGE_REF);
	return 0;
}

/* The id of the newest Ready cache in imcd's answer (*ret NULL when none). */
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

static int ask_imcd(struct snap *s, const char *image, char *ret, size_t size, imc_error *err)
{
	_cleanup_free_ char *q = net_url_escape(image, strlen(image)), *url = NULL;
	struct net_response resp = {0};
	_cleanup_json_ json_t *page = NULL;
	json_error_t je;
	int r;

	if (!q || asprintf(&url, "%s/v1/imagecaches?image=%s&status=Ready", s->server, q) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	struct net_request req = {.url = url,
				  .bearer = s->token,
				  .sink = {.kind = NET_SINK_MEMORY, .max = MATCH_BODY_MAX}};
	r = net_perform(s->net, &req, &resp, err);
	if (r == 0 && !(page = json_loadb(resp.body, resp.body_len, 0, &je)))
		r = imc_err(err, EPROTO, "%s: not JSON: %s", s->server, je.text);
	net_response_free(&resp);
	return r < 0 ? r : newest_item(page, ret, size);
}

int snap_match_fetch(struct snap *s, json_t *labels, imc_error *err)
{
	const char *ref = json_string_value(json_object_get(labels, LABEL_IMAGE_REF));
	const char *digest = json_string_value(json_object_get(labels, LABEL_MANIFEST_DIGEST));
	const struct dist_fetch_config fc = {.server = s->server, .token = s->token};
	struct dist_fetch_stats st = {0};
	char image[2048], id[64];
	int r;

	if (!s->server || !s->store || !ref || !digest)
		return -ENOENT;
	if (digest_ref(ref, digest, image, sizeof(image), err) < 0)
		return err->code;
	if ((r = ask_imcd(s, image, id, sizeof(id), err)) < 0)
		return r == -ENOENT
			   ? imc_err(err, ENOENT, "%s: no Ready cache of %s", s->server, image)
			   : imc_err_wrap(err, "auto-match of %s", image);
	if (json_object_get(s->caches, id))
		return imc_err(err, ENOENT, "cache %s: local already", id);
	imc_info("auto-match: %s: fetching cache %s from %s", image, id, s->server);
	if (dist_fetch_snapshot(s->store, &fc, id, &st, err) < 0)
		return imc_err_wrap(err, "auto-match: cache %s", id);
	imc_info("auto-match: cache %s: fetched (%llu chunks)", id, (unsigned long long)st.chunks);
	return 0;
}
