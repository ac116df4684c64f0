/* Routing: which endpoint a path names and which methods it takes. */
#include <string.h>

#include "api.h"

#define CACHES_PATH	"/v1/imagecaches"
#define ATTACHMENTS_SEG "/attachments"
#define CHUNKS_PATH	"/v1/chunks/"
#define INDEX_SUFFIX	"/index"
#define TRACE_SUFFIX	"/trace"

/* "{id}/attachments[/{aid}]" after CACHES_PATH "/": the id is copied into ret->id_buf. */
static bool match_attachments(const char *rest, struct api_match *ret)
{
	const char *slash = strchr(rest, '/');
	const size_t n = strlen(ATTACHMENTS_SEG);
	size_t id_len = slash ? (size_t)(slash - rest) : 0;

	if (!slash || id_len == 0 || id_len >= sizeof(ret->id_buf) ||
	    strncmp(slash, ATTACHMENTS_SEG, n) != 0)
		return false;
	memcpy(ret->id_buf, rest, id_len);
	ret->id_buf[id_len] = '\0';
	ret->id = ret->id_buf;
	if (slash[n] == '\0') {
		ret->route = API_ROUTE_ATTACHMENTS;
		return true;
	}
	if (slash[n] != '/' || slash[n + 1] == '\0' || strchr(slash + n + 1, '/'))
		return false;
	ret->route = API_ROUTE_ATTACHMENT;
	ret->aid = slash + n + 1;
	return true;
}

enum api_method api_method_parse(const char *method)
{
	if (strcmp(method, "GET") == 0)
		return API_METHOD_GET;
	if (strcmp(method, "POST") == 0)
		return API_METHOD_POST;
	if (strcmp(method, "DELETE") == 0)
		return API_METHOD_DELETE;
	if (strcmp(method, "PUT") == 0)
		return API_METHOD_PUT;
	return API_METHOD_OTHER;
}

/* /v1/imagecaches/{id}/index, /v1/imagecaches/{id}/trace and /v1/chunks/{digest} (api/dist.c). */
static void match_dist(const char *url, struct api_match *ret)
{
	const size_t n = strlen(CACHES_PATH "/"), c = strlen(CHUNKS_PATH);
	const char *slash;

	if (strncmp(url, CHUNKS_PATH, c) == 0 && url[c] != '\0' && !strchr(url + c, '/')) {
		ret->route = API_ROUTE_CHUNK;
		ret->id = url + c;
		ret->id_len = strlen(ret->id);
	} else if (strncmp(url, CACHES_PATH "/", n) == 0 && (slash = strchr(url + n, '/')) &&
		   slash > url + n &&
		   (strcmp(slash, INDEX_SUFFIX) == 0 || strcmp(slash, TRACE_SUFFIX) == 0)) {
		ret->route = strcmp(slash, INDEX_SUFFIX) == 0 ? API_ROUTE_CACHE_INDEX
							      : API_ROUTE_CACHE_TRACE;
		ret->id = url + n;
		ret->id_len = (size_t)(slash - ret->id);
	}
}

void api_route_match(const char *url, struct api_match *ret)
{
	const size_t n = strlen(CACHES_PATH);

	*ret = (struct api_match){.route = API_ROUTE_NONE};
	if (strcmp(url, "/healthz") == 0) {
		ret->route = API_ROUTE_HEALTHZ;
	} else if (strcmp(url, "/metrics") == 0) {
		ret->route = API_ROUTE_METRICS;
	} else if (strcmp(url, CACHES_PATH) == 0) {
		ret->route = API_ROUTE_CACHES;
	} else if (strncmp(url, CACHES_PATH "/", n + 1) == 0 && url[n + 1] != '\0' &&
		   !strchr(url + n + 1, '/')) {
		ret->route = API_ROUTE_CACHE;
		ret->id = url + n + 1;
		ret->id_len = strlen(ret->id);
	} else {
		match_dist(url, ret);
		if (ret->route == API_ROUTE_NONE && strncmp(url, CACHES_PATH "/", n + 1) == 0 &&
		    !match_attachments(url + n + 1, ret))
			*ret = (struct api_match){.route = API_ROUTE_NONE};
	}
}

bool api_route_allows(enum api_route route, enum api_method method)
{
	switch (route) {
	case API_ROUTE_HEALTHZ:
	case API_ROUTE_METRICS:
	case API_ROUTE_CACHE_INDEX:
	case API_ROUTE_CHUNK:
		return method == API_METHOD_GET;
	case API_ROUTE_CACHES:
		return method == API_METHOD_GET || method == API_METHOD_POST;
	case API_ROUTE_CACHE:
		return method == API_METHOD_GET || method == API_METHOD_DELETE;
	case API_ROUTE_ATTACHMENTS:
		return method == API_METHOD_GET || method == API_METHOD_POST;
	case API_ROUTE_ATTACHMENT:
		return method == API_METHOD_DELETE;
	case API_ROUTE_CACHE_TRACE:
		return method == API_METHOD_GET || method == API_METHOD_PUT;
	case API_ROUTE_NONE:
		break;
	}
	return false;
}

const char *api_route_allow(enum api_route route)
{
	switch (route) {
	case API_ROUTE_HEALTHZ:
	case API_ROUTE_METRICS:
	case API_ROUTE_CACHE_INDEX:
	case API_ROUTE_CHUNK:
		return "GET";
	case API_ROUTE_CACHES:
	case API_ROUTE_ATTACHMENTS:
		return "GET, POST";
	case API_ROUTE_CACHE:
		return "GET, DELETE";
	case API_ROUTE_ATTACHMENT:
		return "DELETE";
	case API_ROUTE_CACHE_TRACE:
		return "GET, PUT";
	case API_ROUTE_NONE:
		break;
	}
	return NULL;
}
