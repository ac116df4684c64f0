/* Where a request may go: the loopback rule, plain HTTP, redirects and the destination check. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "internal.h"

#define HOST_MAX 256

/* ---- hosts ----------------------------------------------------------------------------------- */

static bool parse_port(const char *s, unsigned *ret)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 5)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v == 0 || v > 65535)
		return false;
	*ret = (unsigned)v;
	return true;
}

/* "host", "host:port", "[v6]", "[v6]:port", or a bare IPv6 address: the host without brackets
 * into host, the port (0: none) into *ret_port. */
int net_hostport_split(const char *hostport, char *host, size_t size, unsigned *ret_port)
{
	const char *h = hostport, *port = NULL;
	size_t n;

	*ret_port = 0;
	if (hostport[0] == '[') {
		const char *close = strchr(hostport, ']');
		if (!close || (close[1] && close[1] != ':'))
			return -EINVAL;
		h = hostport + 1;
		n = (size_t)(close - h);
		port = close[1] == ':' ? close + 2 : NULL;
	} else {
		const char *colon = strchr(hostport, ':');
		if (colon && strchr(colon + 1, ':'))
			colon = NULL; /* a bare IPv6 address */
		n = colon ? (size_t)(colon - hostport) : strlen(hostport);
		port = colon ? colon + 1 : NULL;
	}
	if (n == 0 || n >= size || memchr(h, '\0', n))
		return -EINVAL;
	if (port && !parse_port(port, ret_port))
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = '\0';
	return 0;
}

bool net_host_is_loopback(const char *host)
{
	char buf[HOST_MAX];
	struct in_addr a4;
	struct in6_addr a6;
	size_t n = strlen(host);

	if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(buf)) {
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		return inet_pton(AF_INET6, buf, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
	}
	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

static bool insecure_listed(const struct net_client *c, const char *host, unsigned port)
{
	for (size_t i = 0; c && i < c->n_insecure; i++)
		if (strcasecmp(c->insecure[i].host, host) == 0 &&
		    (c->insecure[i].port == 0 || c->insecure[i].port == port))
			return true;
	return false;
}

bool net_plain_http_allowed(const struct net_client *c, const char *hostport)
{
	char host[HOST_MAX];
	unsigned port;

	if (net_hostport_split(hostport, host, sizeof(host), &port) < 0)
		return false;
	return net_host_is_loopback(host) || insecure_listed(c, host, port ? port : 80);
}

const char *net_scheme(const struct net_client *c, const char *hostport)
{
	return net_plain_http_allowed(c, hostport) ? "http" : "https";
}

/* A parsed URL's host without brackets, and its port. */
static int url_host(const struct net_url *u, char *host, size_t size)
{
	size_t n = strlen(u->host);
	const char *h = u->host;

	if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
		h++;
		n -= 2;
	}
	if (n == 0 || n >= size)
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = '\0';
	return 0;
}

/* Plain HTTP to the URL's host: loopback, an insecure host, or through a unix socket. */
int net_url_policy(const struct net_client *c, const struct net_request *q, const char *url,
		   imc_error *err)
{
	struct net_url u = {0};
	char host[HOST_MAX], shown[NET_MSG_URL];
	int r = net_url_parse(url, &u, err);

	if (r < 0)
		return r;
	r = url_host(&u, host, sizeof(host));
	if (r == 0 && strcmp(u.scheme, "http") == 0 && !q->unix_socket &&
	    !net_host_is_loopback(host) && !insecure_listed(c, host, u.port)) {
		net_url_redact(url, shown, sizeof(shown));
		r = imc_err(err, EPERM,
			    "%s: plain HTTP goes only to loopback hosts and to hosts named "
			    "insecure; use https://",
			    shown);
	} else if (r < 0) {
		net_url_redact(url, shown, sizeof(shown));
		r = imc_err(err, EINVAL, "%s: bad host", shown);
	}
	net_url_free(&u);
	return r;
}

/* ---- redirects ----------------------------------------------------------------------------- */

/* From URL from to URL to: any HTTPS URL; plain HTTP to the same host when from was plain HTTP
 * too, or to an insecure host. */
bool net_redirect_allowed(const struct net_client *c, const char *from, const char *to)
{
	struct net_url a = {0}, b = {0};
	char ha[HOST_MAX], hb[HOST_MAX];
	bool ok = false;

	if (net_url_parse(from, &a, NULL) < 0 || net_url_parse(to, &b, NULL) < 0 ||
	    url_host(&a, ha, sizeof(ha)) < 0 || url_host(&b, hb, sizeof(hb)) < 0) {
		net_url_free(&a);
		net_url_free(&b);
		return false;
	}
	if (strcmp(b.scheme, "https") == 0)
		ok = true;
	else if (strcmp(b.scheme, "http") == 0)
		ok = (strcmp(a.scheme, "http") == 0 && strcasecmp(ha, hb) == 0) ||
		     insecure_listed(c, hb, b.port);
	net_url_free(&a);
	net_url_free(&b);
	return ok;
}

/* ---- addresses ----------------------------------------------------------------------------- */

static bool v4_public(const unsigned char *a)
{
	static const struct {
		uint8_t net[4];
		unsigned len;
	} special[] = {
	    {{0, 0, 0, 0}, 8},	     /* "this network", unspecified */
	    {{10, 0, 0, 0}, 8},	     /* private */
	    {{100, 64, 0, 0}, 10},   /* shared address space (carrier NAT) */
	    {{127, 0, 0, 0}, 8},     /* loopback */
	    {{169, 254, 0, 0}, 16},  /* link-local (cloud metadata services) */
	    {{172, 16, 0, 0}, 12},   /* private */
	    {{192, 0, 0, 0}, 24},    /* IETF protocol assignments */
	    {{192, 0, 2, 0}, 24},    /* documentation */
	    {{192, 168, 0, 0}, 16},  /* private */
	    {{198, 18, 0, 0}, 15},   /* benchmarking */
	    {{198, 51, 100, 0}, 24}, /* documentation */
	    {{203, 0, 113, 0}, 24},  /* documentation */
	    {{224, 0, 0, 0}, 4},     /* multicast */
	    {{240, 0, 0, 0}, 4},     /* reserved, broadcast */
	};
	uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];

	for (size_t i = 0; i < IMC_ARRAY_SIZE(special); i++) {
		uint32_t net = (uint32_t)special[i].net[0] << 24 |
			       (uint32_t)special[i].net[1] << 16 |
			       (uint32_t)special[i].net[2] << 8 | special[i].net[3];
		uint32_t mask = special[i].len ? ~0u << (32 - special[i].len) : 0;
		if ((v & mask) == net)
			return false;
	}
	return true;
}

static bool prefix_is(const unsigned char *a, const unsigned char *p, unsigned bits)
{
	unsigned bytes = bits / 8, rest = bits % 8;

	if (memcmp(a, p, bytes) != 0)
		return false;
	return rest == 0 || ((a[bytes] ^ p[bytes]) & (0xff << (8 - rest))) == 0;
}

/* A global unicast address?  IPv4 as ::ffff:a.b.c.d. */
bool net_addr_public(const unsigned char a[16])
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
	static const unsigned char zero[16] = {0};
	static const unsigned char ula[1] = {0xfc}, ll[2] = {0xfe, 0x80}, site[2] = {0xfe, 0xc0};
	static const unsigned char mcast[1] = {0xff}, doc[4] = {0x20, 0x01, 0x0d, 0xb8};
	static const unsigned char sixto4[2] = {0x20, 0x02}, discard[8] = {0x01, 0x00};

	if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
		return v4_public(a + 12);
	if (prefix_is(a, sixto4, 16))
		return v4_public(a + 2);
	if (prefix_is(a, zero, 96)) /* unspecified, loopback, IPv4-compatible */
		return false;
	return !prefix_is(a, ula, 7) && !prefix_is(a, ll, 10) && !prefix_is(a, site, 10) &&
	       !prefix_is(a, mcast, 8) && !prefix_is(a, doc, 32) && !prefix_is(a, discard, 64);
}

static bool addr_parse(const char *s, unsigned char ret[16], bool *ret_v4)
{
	struct in_addr a4;

	if (inet_pton(AF_INET, s, &a4) == 1) {
		memset(ret, 0, 10);
		ret[10] = ret[11] = 0xff;
		memcpy(ret + 12, &a4, 4);
		*ret_v4 = true;
		return true;
	}
	*ret_v4 = false;
	return inet_pton(AF_INET6, s, ret) == 1;
}

static bool parse_prefix(const char *s, unsigned max, unsigned *ret)
{
	unsigned v = 0;

	if (!*s || strlen(s) > 3)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (unsigned)(*p - '0');
	}
	if (v > max)
		return false;
	*ret = v;
	return true;
}

/* Copy n bytes of s into buf (of 64) as a string; false when they do not fit. */
static bool take(char buf[64], const char *s, size_t n)
{
	if (n == 0 || n >= 64)
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return true;
}

/* "ADDR", "ADDR/PREFIX", "V4:PORT", "[V6]", "[V6]:PORT", "[V6]/PREFIX" (IPv4 in the mapped
 * space: a /8 becomes /104). */
int net_allow_parse(const char *entry, unsigned char ret_addr[16], unsigned *ret_prefix,
		    unsigned *ret_port)
{
	const char *rest, *colon;
	char buf[64];
	unsigned port = 0, prefix;
	bool v4, ok;

	if (entry[0] == '[') {
		const char *close = strchr(entry, ']');
		ok = close && take(buf, entry + 1, (size_t)(close - entry - 1)) &&
		     addr_parse(buf, ret_addr, &v4) && !v4;
		rest = close ? close + 1 : "";
	} else if ((rest = strchr(entry, '/'))) {
		ok = take(buf, entry, (size_t)(rest - entry)) && addr_parse(buf, ret_addr, &v4);
	} else if ((colon = strchr(entry, ':')) && !strchr(colon + 1, ':')) {
		ok = take(buf, entry, (size_t)(colon - entry)) && addr_parse(buf, ret_addr, &v4) &&
		     v4;
		rest = colon;
	} else {
		ok = addr_parse(entry, ret_addr, &v4);
		rest = "";
	}
	if (!ok)
		return -EINVAL;
	prefix = v4 ? 32 : 128;
	if (rest[0] == ':' && !parse_port(rest + 1, &port))
		return -EINVAL;
	if (rest[0] == '/' && !parse_prefix(rest + 1, prefix, &prefix))
		return -EINVAL;
	if (rest[0] && rest[0] != ':' && rest[0] != '/')
		return -EINVAL;
	*ret_prefix = v4 ? 96 + prefix : prefix;
	*ret_port = port;
	return 0;
}

static void sockaddr_addr(const struct sockaddr *sa, unsigned char a[16], unsigned *ret_port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		memset(a, 0, 10);
		a[10] = a[11] = 0xff;
		memcpy(a + 12, &s4->sin_addr, 4);
		*ret_port = ntohs(s4->sin_port);
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		memcpy(a, &s6->sin6_addr, 16);
		*ret_port = ntohs(s6->sin6_port);
	}
}

/* May a connection go to sa?  Unix sockets always (the operator named them); otherwise public
 * addresses, and the allowed ones.  why says which address was refused. */
bool net_dest_allowed(const struct net_client *c, const struct sockaddr *sa, char *why, size_t size)
{
	unsigned char a[16];
	char text[INET6_ADDRSTRLEN] = "?";
	unsigned port;

	if (!c->check_destination || sa->sa_family == AF_UNIX)
		return true;
	if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
		snprintf(why, size, "address family %d", sa->sa_family);
		return false;
	}
	sockaddr_addr(sa, a, &port);
	for (size_t i = 0; i < c->n_allow; i++)
		if (prefix_is(a, c->allow[i].addr, c->allow[i].prefix) &&
		    (c->allow[i].port == 0 || c->allow[i].port == port))
			return true;
	if (net_addr_public(a))
		return true;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, text, sizeof(text));
	else
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, text,
			  sizeof(text));
	snprintf(why, size, "%s%s%s port %u is not a public address",
		 sa->sa_family == AF_INET6 ? "[" : "", text, sa->sa_family == AF_INET6 ? "]" : "",
		 port);
	return false;
}
