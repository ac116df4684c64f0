/* OCI artifacts (docs/distribution.md).  Push: blobs the registry has are skipped (HEAD); the
 * others go up as monolithic uploads (POST .../blobs/uploads/, then PUT ?digest=); the manifest
 * is PUT to the ref's tag.  Pull: the manifest, checked to be of the expected artifact type, and
 * its config blob. */
#include <stdio.h>
#include <string.h>

#include "../net/curl_cleanup.h"
#include "oci.h"

#define PUSH_TIMEOUT_S 120
#define PUSH_BODY_MAX  (64u << 20) /* an answer we read (and drop) */

struct oci_pusher {
	struct oci_ref ref;
	char *base; /* scheme://registry/v2/<repo> */
	CURL *curl;
};

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
	struct imc_buf *b = ctx;

	n *= size;
	if (b->len + n > PUSH_BODY_MAX)
		return 0;
	return imc_buf_append(b, p, n) < 0 ? 0 : n;
}

static bool host_plain_http(const char *registry, const char *const *insecure)
{
	size_t n = strcspn(registry, ":");

	if (strncmp(registry, "localhost", n) == 0 && n == 9)
		return true;
	if (strncmp(registry, "127.", 4) == 0 || strncmp(registry, "[::1]", 5) == 0)
		return true;
	for (size_t i = 0; insecure && insecure[i]; i++)
		if (strcmp(insecure[i], registry) == 0 ||
		    (strlen(insecure[i]) == n && strncmp(insecure[i], registry, n) == 0))
			return true;
	return false;
}

/* One request; headers (may be NULL) are sent, the answer's body is dropped. */
static int request(struct oci_pusher *p, const char *method, const char *url,
		   struct curl_slist *headers, const void *upload, size_t upload_len,
		   long *ret_status, char **ret_location, imc_error *err)
{
	CURL *c = p->curl;
	struct imc_buf sink = {0};
	CURLcode rc;
	char *loc = NULL;

	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)PUSH_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	if (upload) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, upload);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)upload_len);
	} else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}
	rc = curl_easy_perform(c);
	imc_buf_free(&sink);
	if (rc != CURLE_OK)
		return imc_err(err, EIO, "%s %s: %s", method, url, curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
	if (ret_location) {
		curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc);
		if (!loc) {
			struct curl_header *h = NULL;
			if (curl_easy_header(c, "Location", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
				loc = h->value;
		}
		*ret_location = loc ? strdup(loc) : NULL;
	}
	return 0;
}

int oci_push_blob_exists(struct oci_pusher *p, const char *digest, bool *ret, imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	long status = 0;

	if (asprintf(&url, "%s/blobs/%s", p->base, digest) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (request(p, "HEAD", url, NULL, NULL, 0, &status, NULL, err) < 0)
		return err->code;
	*ret = status == 200;
	return 0;
}

/* Location may be relative to the registry; the digest goes on as a query argument. */
static int upload_url(struct oci_pusher *p, const char *loc, const char *digest, char **ret,
		      imc_error *err)
{
	const char *scheme_end = strstr(p->base, "://");
	const char *host_end = scheme_end ? strchr(scheme_end + 3, '/') : NULL;
	int r;

	if (!host_end)
		return imc_err(err, EINVAL, "registry url %s", p->base);
	if (loc[0] == '/')
		r = asprintf(ret, "%.*s%s%cdigest=%s", (int)(host_end - p->base), p->base, loc,
			     strchr(loc, '?') ? '&' : '?', digest);
	else
		r = asprintf(ret, "%s%cdigest=%s", loc, strchr(loc, '?') ? '&' : '?', digest);
	return r < 0 ? imc_err(err, ENOMEM, "out of memory") : 0;
}

int oci_push_blob(struct oci_pusher *p, const char *digest, const void *data, size_t len,
		  bool *ret_uploaded, imc_error *err)
{
	_cleanup_curl_slist_ struct curl_slist *h = NULL;
	_cleanup_free_ char *url = NULL, *loc = NULL, *put = NULL;
	long status = 0;
	bool have = false;

	*ret_uploaded = false;
	if (oci_push_blob_exists(p, digest, &have, err) < 0)
		return err->code;
	if (have)
		return 0;
	if (asprintf(&url, "%s/blobs/uploads/", p->base) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (request(p, "POST", url, NULL, NULL, 0, &status, &loc, err) < 0)
		return err->code;
	if (status != 202 || !loc)
		return imc_err(err, EIO, "POST %s: HTTP %ld%s", url, status,
			       loc ? "" : " without a Location");
	if (upload_url(p, loc, digest, &put, err) < 0)
		return err->code;
	h = curl_slist_append(NULL, "Content-Type: application/octet-stream");
	if (request(p, "PUT", put, h, data, len, &status, NULL, err) < 0)
		return err->code;
	if (status != 201)
		return imc_err(err, EIO, "PUT blob %s: HTTP %ld", digest, status);
	*ret_uploaded = true;
	return 0;
}

int oci_push_manifest(struct oci_pusher *p, const char *body, size_t len,
		      char ret_digest[OCI_DIGEST_MAX + 1], imc_error *err)
{
	_cleanup_curl_slist_ struct curl_slist *h = NULL;
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	long status = 0;

	if (asprintf(&url, "%s/manifests/%s", p->base, p->ref.tag ? p->ref.tag : "latest") < 0)
		return imc_err(err, ENOMEM, "out of memory");
	h = curl_slist_append(NULL, "Content-Type: " OCI_MT_OCI_MANIFEST);
	if (request(p, "PUT", url, h, body, len, &status, NULL, err) < 0)
		return err->code;
	if (status != 201)
		return imc_err(err, EIO, "PUT %s: HTTP %ld", url, status);
	if (imc_sha256_hex(body, len, hex, err) < 0)
		return err->code;
	snprintf(ret_digest, OCI_DIGEST_MAX + 1, "sha256:%s", hex);
	return 0;
}

int oci_push_open(const char *ref, const char *const *insecure_registries, struct oci_pusher **ret,
		  imc_error *err)
{
	struct oci_pusher *p = calloc(1, sizeof(*p));

	if (!p)
		return imc_err(err, ENOMEM, "out of memory");
	if (oci_ref_parse(ref, &p->ref, err) < 0) {
		free(p);
		return imc_err_wrap(err, "push to %s", ref);
	}
	if (p->ref.digest && !p->ref.tag) {
		oci_push_close(p);
		return imc_err(err, EINVAL, "push to %s: name a tag, not a digest", ref);
	}
	p->curl = curl_easy_init();
	if (!p->curl ||
	    asprintf(&p->base, "%s://%s/v2/%s",
		     host_plain_http(p->ref.registry, insecure_registries) ? "http" : "https",
		     p->ref.registry, p->ref.repository) < 0) {
		p->base = NULL;
		oci_push_close(p);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = p;
	return 0;
}

void oci_push_close(struct oci_pusher *p)
{
	if (!p)
		return;
	free(p->base);
	if (p->curl)
		curl_easy_cleanup(p->curl);
	oci_ref_free(&p->ref);
	free(p);
}

/* ---- pull -------------------------------------------------------------------------------- */

static int manifest_config(const struct oci_registry_manifest *m, const struct oci_artifact_kind *k,
			   struct oci_descriptor *ret, imc_error *err)
{
	_cleanup_json_ json_t *j = NULL;
	json_t *cfg;
	const char *at = NULL, *mt = NULL, *digest = NULL;
	int64_t size = 0;

	if (imc_json_parse_object(m->body, m->len, &j, err) < 0)
		return imc_err_wrap(err, "manifest");
	if (imc_json_get_string(j, "artifactType", true, 256, "manifest", &at, err) < 0 ||
	    imc_json_get_object(j, "config", true, "manifest", &cfg, err) < 0 ||
	    imc_json_get_string(cfg, "mediaType", true, 256, "manifest.config", &mt, err) < 0 ||
	    imc_json_get_string(cfg, "digest", true, OCI_DIGEST_MAX, "manifest.config", &digest,
				err) < 0 ||
	    imc_json_get_int(cfg, "size", true, 1, (int64_t)k->config_max, "manifest.config", &size,
			     err) < 0)
		return -EINVAL;
	if (strcmp(at, k->artifact_type) != 0 || strcmp(mt, k->config_type) != 0)
		return imc_err(err, EINVAL, "manifest: artifact %.80s with config %.80s, not %s",
			       at, mt, k->what);
	ret->digest = strdup(digest);
	ret->size = size;
	return ret->digest ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int oci_artifact_pull_config(struct oci_registry *r, const struct oci_ref *ref,
			     const struct oci_artifact_kind *k, char **ret, size_t *ret_len,
			     imc_error *err)
{
	struct oci_registry_manifest m = {0};
	struct oci_descriptor d = {.media_type = (char *)k->config_type};
	int rc;

	rc = oci_registry_get_manifest(r, ref->digest ? ref->digest : ref->tag, ref->digest, &m,
				       err);
	if (rc == 0)
		rc = manifest_config(&m, k, &d, err);
	if (rc == 0)
		rc = oci_registry_get_blob_mem(r, &d, k->config_max, ret, ret_len, err);
	free(d.digest);
	oci_registry_manifest_free(&m);
	return rc;
}
