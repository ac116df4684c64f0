/* A small libcurl client that tells imcd about attaches (see report.h). */
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../net/curl_cleanup.h"
#include "attach.h"
#include "report.h"

#define API_PREFIX   "unix:"
#define RESPONSE_MAX 65536

void attach_reporter_init(struct attach_reporter *r, const char *server, const char *token)
{
	r->server = server && *server ? server : NULL;
	r->token = token && *token ? token : NULL;
}

bool attach_reporter_enabled(const struct attach_reporter *r)
{
	return r && r->server && r->server[0];
}

/* Only what our own ids can be: nothing to escape in a URL. */
static bool id_ok(const char *id, const char *prefix)
{
	size_t n = strlen(prefix);

	if (!id || strncmp(id, prefix, n) != 0 || strlen(id) != n + 16)
		return false;
	for (const char *p = id + n; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

struct sink {
	size_t len;
	char head[256]; /* the start of the answer, for the error message */
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct sink *s = userdata;
	size_t n = size * nmemb;

	if (s->len < sizeof(s->head) - 1) {
		size_t k = n < sizeof(s->head) - 1 - s->len ? n : sizeof(s->head) - 1 - s->len;
		memcpy(s->head + s->len, ptr, k);
		s->head[s->len + k] = '\0';
	}
	s->len += n;
	return s->len > RESPONSE_MAX ? 0 : n;
}

/* The base URL and, for unix:PATH, the socket. */
static int base_url(const char *server, CURL *curl, char *buf, size_t size, imc_error *err)
{
	size_t n = strlen(server);

	if (strncmp(server, API_PREFIX, strlen(API_PREFIX)) == 0) {
		curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, server + strlen(API_PREFIX));
		snprintf(buf, size, "http://localhost");
		return 0;
	}
	while (n > 0 && server[n - 1] == '/')
		n--;
	if (n == 0 || n >= size - 1 ||
	    (strncmp(server, "http://", 7) != 0 && strncmp(server, "https://", 8) != 0))
		return imc_err(err, EINVAL,
			       "imcd server \"%.100s\": want http(s)://HOST:PORT or "
			       "unix:PATH",
			       server);
	memcpy(buf, server, n);
	buf[n] = '\0';
	return 0;
}

static int send_report(const struct attach_reporter *r, const char *method, const char *path,
		       const char *body, long want, imc_error *err)
{
	_cleanup_curl_ CURL *curl = curl_easy_init();
	_cleanup_curl_slist_ struct curl_slist *headers = NULL;
	char base[512], url[1024], auth[ATTACH_REPORT_TOKEN_MAX + 32];
	struct sink sink = {0};
	long status = 0;
	CURLcode cr;
	int rc;

	if (!curl)
		return imc_err(err, ENOMEM, "out of memory");
	rc = base_url(r->server, curl, base, sizeof(base), err);
	if (rc < 0)
		return rc;
	snprintf(url, sizeof(url), "%s%s", base, path);
	headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (headers && r->token) {
		if (strlen(r->token) > ATTACH_REPORT_TOKEN_MAX || strpbrk(r->token, "\r\n"))
			return imc_err(err, EINVAL, "the token: at most %d bytes on one line",
				       ATTACH_REPORT_TOKEN_MAX);
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", r->token);
		headers = curl_slist_append(headers, auth);
		explicit_bzero(auth, sizeof(auth));
	}
	if (!headers)
		return imc_err(err, ENOMEM, "out of memory");
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, ATTACH_REPORT_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	if (body) {
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	cr = curl_easy_perform(curl);
	if (cr != CURLE_OK)
		return imc_err(err, EIO, "imcd at %s: %s", r->server, curl_easy_strerror(cr));
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (status != want && !(want == 201 && status == 200))
		return imc_err(err, EPROTO, "imcd at %s: %s %s: %ld %s", r->server, method, path,
			       status, sink.head);
	return 0;
}

static int attach_report_attach(const struct attach_reporter *r, const char *cache_id,
				const char *attach_id, imc_error *err)
{
	_cleanup_json_ json_t *body = NULL;
	_cleanup_free_ char *text = NULL;
	char host[256] = "", path[128];

	if (!id_ok(cache_id, "imc-") || !id_ok(attach_id, "att-"))
		return imc_err(err, EINVAL, "report %s of %s: malformed id", attach_id, cache_id);
	gethostname(host, sizeof(host) - 1);
	body = json_pack("{s:s}", "id", attach_id);
	if (body && imc_name_valid(host, 255))
		json_object_set_new(body, "host", json_string(host));
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	if (!text)
		return imc_err(err, ENOMEM, "out of memory");
	snprintf(path, sizeof(path), "/v1/imagecaches/%s/attachments", cache_id);
	return send_report(r, "POST", path, text, 201, err);
}

static int attach_report_detach(const struct attach_reporter *r, const char *cache_id,
				const char *attach_id, imc_error *err)
{
	char path[160];

	if (!id_ok(cache_id, "imc-") || !id_ok(attach_id, "att-"))
		return imc_err(err, EINVAL, "report %s of %s: malformed id", attach_id, cache_id);
	snprintf(path, sizeof(path), "/v1/imagecaches/%s/attachments/%s", cache_id, attach_id);
	return send_report(r, "DELETE", path, NULL, 200, err);
}

json_t *attach_report_lookup(struct store *s, const char *what)
{
	static const char *const keys[] = {"id", "dir", "device"};
	_cleanup_json_ json_t *list = NULL;
	imc_error err = {0};
	size_t i;
	json_t *st;

	if (attach_list(s, &list, &err) < 0)
		return NULL;
	json_array_foreach(list, i, st)
	{
		for (size_t k = 0; k < IMC_ARRAY_SIZE(keys); k++) {
			const char *v = json_string_value(json_object_get(st, keys[k]));
			if (v && strcmp(v, what) == 0)
				return json_incref(st);
		}
	}
	return NULL;
}

void attach_report_state(const struct attach_reporter *r, bool attached, json_t *state,
			 const char *prog)
{
	const char *cache = json_string_value(json_object_get(state, "cacheId"));
	const char *aid = json_string_value(json_object_get(state, "id"));
	imc_error err = {0};
	int rc;

	if (!attach_reporter_enabled(r) || !state)
		return;
	rc = attached ? attach_report_attach(r, cache, aid, &err)
		      : attach_report_detach(r, cache, aid, &err);
	if (rc < 0) /* the caller is a main(): this is where it warns */
		fprintf(stderr, "%s: warning: %s, but imcd was not told: %s\n", prog,
			attached ? "attached" : "detached", err.msg);
}
