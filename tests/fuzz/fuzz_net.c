/* Fuzz target: net/'s parsers of what peers and configurations send: Retry-After and
 * Content-Range values, the error body's reason, URLs (parse, redact, escape), servers, host:port
 * and allowed-destination entries, addresses, and the redirect rule.
 *
 * The first byte picks the parser, the rest (up to a NUL) is its input; for the redirect rule a
 * second NUL-separated string is the target.
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - what net/ writes for messages (escape, redact, reason) holds no control bytes and no bytes
 *    >= 0x80, and always fits its buffer;
 *  - Retry-After: at most 10^9 s; Content-Range: first <= last < total;
 *  - an allowed-destination entry has a prefix within its family and a port <= 65535;
 *  - host:port gives a non-empty host and a port <= 65535;
 *  - a parsed URL is http or https with a port; redact never keeps a user:password or a query;
 *  - a redirect allowed over plain HTTP goes to the same host or to the insecure host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../net/net.h"

static struct net_client *client;

static void clean_text(const char *s, size_t size)
{
	size_t n = strlen(s);

	if (n >= size)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < ' ' || (unsigned char)s[i] >= 0x7f)
			abort();
}

static void fuzz_text(const char *s, size_t n)
{
	char out[300], small[8];

	net_escape(s, n, out, sizeof(out));
	clean_text(out, sizeof(out));
	net_escape(s, n, small, sizeof(small));
	clean_text(small, sizeof(small));
	net_reason(s, n, out, sizeof(out));
	clean_text(out, sizeof(out));
}

static void fuzz_headers(const char *s)
{
	uint64_t ms = 0, first, last, total;

	if (net_retry_after_parse(s, 1700000000, &ms) == 0 && ms > 1000000000ULL * 1000)
		abort();
	if (net_content_range_parse(s, &first, &last, &total) == 0 &&
	    (first > last || (total != UINT64_MAX && last >= total)))
		abort();
}

static void fuzz_url(const char *s)
{
	struct net_url u = {0};
	struct net_server srv = {0};
	static char out[4 * 4096 + 64]; /* room for every byte escaped (inputs are capped) */

	if (strlen(s) <= 4096 && net_url_parse(s, &u, NULL) == 0) {
		if ((strcmp(u.scheme, "http") != 0 && strcmp(u.scheme, "https") != 0) ||
		    u.port == 0 || u.port > 65535 || !u.host[0] || u.path[0] != '/')
			abort();
		net_url_redact(s, out, sizeof(out));
		clean_text(out, sizeof(out));
		/* The authority keeps no '@' (its user:password) and the query is gone. */
		const char *auth = strstr(out, "://");
		if (!auth || memchr(auth + 3, '@', strcspn(auth + 3, "/?")) ||
		    (strchr(out, '?') && strcmp(strchr(out, '?'), "?...") != 0))
			abort();
		net_url_free(&u);
	}
	net_url_redact(s, out, sizeof(out));
	clean_text(out, sizeof(out));
	if (net_server_parse(s, &srv, NULL) == 0) {
		char *url = net_server_url(&srv, "/x");
		if (!srv.base || !url)
			abort();
		free(url);
		net_server_free(&srv);
	}
	free(net_url_escape(s, strlen(s)));
	free(net_url_join("https://reg.example/v2/x/blobs/uploads/", s));
}

static void fuzz_hosts(const char *s)
{
	unsigned char a[16];
	unsigned prefix, port;
	char host[256];

	if (net_allow_parse(s, a, &prefix, &port) == 0) {
		if (prefix > 128 || port > 65535)
			abort();
		net_addr_public(a);
	}
	if (net_hostport_split(s, host, sizeof(host), &port) == 0 && (!host[0] || port > 65535))
		abort();
	net_host_is_loopback(s);
	net_plain_http_allowed(client, s);
}

static void fuzz_redirect(const char *from, const char *to)
{
	struct net_url a = {0}, b = {0};

	if (!net_redirect_allowed(client, from, to))
		return;
	if (net_url_parse(from, &a, NULL) < 0 || net_url_parse(to, &b, NULL) < 0)
		abort();
	if (strcmp(b.scheme, "http") == 0 && strcasecmp(b.host, "mirror.example") != 0 &&
	    (strcmp(a.scheme, "http") != 0 || strcasecmp(a.host, b.host) != 0))
		abort();
	net_url_free(&a);
	net_url_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const insecure[] = {"mirror.example", "reg.example:5000", NULL};
	_cleanup_free_ char *s = NULL;
	const char *second;

	if (!client &&
	    net_client_new(&(struct net_config){.insecure_hosts = insecure}, &client, NULL) < 0)
		abort();
	if (size < 1)
		return 0;
	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = s[size] = '\0';
	switch (data[0] % 5) {
	case 0:
		fuzz_text(s, size - 1);
		break;
	case 1:
		fuzz_headers(s);
		break;
	case 2:
		fuzz_url(s);
		break;
	case 3:
		fuzz_hosts(s);
		break;
	default:
		second = s + strlen(s) + 1;
		fuzz_redirect(s, second);
		break;
	}
	return 0;
}
