/* Telling imcd about attaches through net/ (see report.h). */
#include <string.h>
#include <unistd.h>

#include "attach.h"
#include "../net/net.h"
#include "report.h"

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

/* One report through net/: no retries (a report is skipped, not waited for), within
 * ATTACH_REPORT_TIMEOUT_MS; the server the operator named may be plain HTTP or unix:PATH. */
static int report_client(const struct net_server *srv, struct net_client **ret, imc_error *err)
{
	char hostport[300] = "";
	const char *insecure[] = {hostport, NULL};

	if (!srv->unix_socket)
		net_url_plain_hostport(srv->base, hostport, sizeof(hostport));
	return net_client_new(
	    &(struct net_config){.insecure_hosts = hostport[0] ? insecure : NULL,
				 .limits = {.deadline_ms = ATTACH_REPORT_TIMEOUT_MS},
				 .retry = {.max_attempts = 1}},
	    ret, err);
}

static int send_report(const struct attach_reporter *r, const char *method, const char *path,
		       const char *body, long want, imc_error *err)
{
	struct net_server srv = {0};
	struct net_client *net = NULL;
	struct net_response res = {0};
	_cleanup_free_ char *url = NULL;
	char head[256];
	int rc;

	if (r->token && (strlen(r->token) > ATTACH_REPORT_TOKEN_MAX || strpbrk(r->token, "\r\n")))
		return imc_err(err, EINVAL, "the token: at most %d bytes on one line",
			       ATTACH_REPORT_TOKEN_MAX);
	rc = net_server_parse(r->server, &srv, err);
	if (rc == 0)
		rc = report_client(&srv, &net, err);
	if (rc == 0 && !(url = net_server_url(&srv, path)))
		rc = imc_err(err, ENOMEM, "out of memory");
	if (rc == 0)
		rc = net_perform(net,
				 &(struct net_request){
				     .method = method,
				     .url = url,
				     .unix_socket = srv.unix_socket,
				     .bearer = r->token,
				     .body = {.data = body,
					      .len = body ? strlen(body) : 0,
					      .content_type = "application/json"},
				     .sink = {.kind = NET_SINK_MEMORY, .max = RESPONSE_MAX},
				     .any_status = true,
				 },
				 &res, err);
	if (rc < 0) {
		imc_err_wrap(err, "imcd at %s", r->server);
	} else if (res.status != want && !(want == 201 && res.status == 200)) {
		net_escape(res.body ? res.body : "", res.body ? res.body_len : 0, head,
			   sizeof(head));
		rc = imc_err(err, EPROTO, "imcd at %s: %s %s: %ld %s", r->server, method, path,
			     res.status, head);
	}
	net_response_free(&res);
	net_client_free(net);
	net_server_free(&srv);
	return rc;
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
