/* OCI artifacts (docs/distribution.md).  Push: blobs the registry has are skipped (HEAD); the
 * others go up as monolithic uploads (POST .../blobs/uploads/, then PUT ?digest=); the manifest
 * is PUT to the ref's tag.  Pull: the manifest, checked to be of the expected artifact type, and
 * its config blob. */
#include <stdio.h>
#include <string.h>

#include "../net/curl_cleanup.h"
#include "oci.h"

#define PUSH_BODY_MAX (64u << 20) /* an answer we read (and drop) */

struct oci_pusher {
	struct oci_ref ref;
	char *base; /* scheme://registry/v2/<repo> */
	struct net_client *net;
	struct net_conn *conn;
};

static const long accept_push[] = {404, 0};

/* One request through net/ (retries, deadlines, the one loopback rule and the redirect rule);
 * the answer's status is the caller's to judge, its body is dropped.  ret_location gets the
 * Location header resolved against url. */
static int request(struct oci_pusher *p, const char *method, const char *url,
		   const char *content_type, const void *upload, size_t upload_len,
		   long *ret_status, char **ret_location, imc_error *err)
{
	struct net_response res = {0};
	const char *loc;
	int r = net_perform(
	    p->net,
	    &(struct net_request){
		.method = method,
		.url = url,
		.body = {.data = upload, .len = upload_len, .content_type = content_type},
		.sink = {.kind = NET_SINK_DISCARD, .max = PUSH_BODY_MAX},
		.accept = accept_push,
		.conn = p->conn},
	    &res, err);

	if (r == 0) {
		*ret_status = res.status;
		loc = net_response_header(&res, "Location", 0);
		if (ret_location)
			*ret_location = loc ? net_url_join(res.url ? res.url : url, loc) : NULL;
	}
	net_response_free(&res);
	return r;
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

/* Location (resolved against the request) with the digest as a query argument. */
static int upload_url(const char *loc, const char *digest, char **ret, imc_error *err)
{
	return asprintf(ret, "%s%cdigest=%s", loc, strchr(loc, '?') ? '&' : '?', digest) < 0
		   ? imc_err(err, ENOMEM, "out of memory")
		   : 0;
}

int oci_push_blob(struct oci_pusher *p, const char *digest, const void *data, size_t len,
		  bool *ret_uploaded, imc_error *err)
{
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
	if (upload_url(loc, digest, &put, err) < 0)
		return err->code;
	if (request(p, "PUT", put, "application/octet-stream", data, len, &status, NULL, err) < 0)
		return err->code;
	if (status != 201)
		return imc_err(err, EIO, "PUT blob %s: HTTP %ld", digest, status);
	*ret_uploaded = true;
	return 0;
}

int oci_push_manifest(struct oci_pusher *p, const char *body, size_t len,
		      char ret_digest[OCI_DIGEST_MAX + 1], imc_error *err)
{
	_cleanup_free_ char *url = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1];
	long status = 0;

	if (asprintf(&url, "%s/manifests/%s", p->base, p->ref.tag ? p->ref.tag : "latest") < 0)
		return imc_err(err, ENOMEM, "out of memory");
	if (request(p, "PUT", url, OCI_MT_OCI_MANIFEST, body, len, &status, NULL, err) < 0)
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
	if (net_client_new(&(struct net_config){.insecure_hosts = insecure_registries}, &p->net,
			   err) < 0) {
		oci_push_close(p);
		return imc_err_wrap(err, "push to %s", ref);
	}
	p->conn = net_conn_new();
	if (!p->conn || asprintf(&p->base, "%s://%s/v2/%s", net_scheme(p->net, p->ref.registry),
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
	net_conn_free(p->conn);
	net_client_free(p->net);
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
