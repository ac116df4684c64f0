/* The listen address: "HOST:PORT" or "[IPV6]:PORT", bound by us so that port 0 works and the
 * real port is known before the server starts. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "api.h"

#define LISTEN_BACKLOG 1024

static int parse_port(const char *s, const char *spec, uint16_t *ret, imc_error *err)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 5)
		return imc_err(err, EINVAL, "listen address \"%.100s\": want a port 0-65535", spec);
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return imc_err(err, EINVAL,
				       "listen address \"%.100s\": want a port 0-65535", spec);
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v > 65535)
		return imc_err(err, EINVAL, "listen address \"%.100s\": want a port 0-65535", spec);
	*ret = (uint16_t)v;
	return 0;
}

static int parse_v6(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		    imc_error *err)
{
	struct sockaddr_in6 *sa = (struct sockaddr_in6 *)ret;
	const char *close = strchr(spec, ']');
	char host[INET6_ADDRSTRLEN];
	uint16_t port;
	size_t n;

	if (!close || close[1] != ':')
		return imc_err(err, EINVAL, "listen address \"%.100s\": want [IPV6]:PORT", spec);
	n = (size_t)(close - spec - 1);
	if (n == 0 || n >= sizeof(host))
		return imc_err(err, EINVAL, "listen address \"%.100s\": bad IPv6 address", spec);
	memcpy(host, spec + 1, n);
	host[n] = '\0';
	if (parse_port(close + 2, spec, &port, err) < 0)
		return -EINVAL;
	memset(ret, 0, sizeof(*ret));
	sa->sin6_family = AF_INET6;
	sa->sin6_port = htons(port);
	if (inet_pton(AF_INET6, host, &sa->sin6_addr) != 1)
		return imc_err(err, EINVAL, "listen address \"%.100s\": bad IPv6 address", spec);
	*ret_len = sizeof(*sa);
	return 0;
}

static int parse_v4(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		    imc_error *err)
{
	struct sockaddr_in *sa = (struct sockaddr_in *)ret;
	const char *colon = strrchr(spec, ':');
	char host[INET_ADDRSTRLEN];
	uint16_t port;
	size_t n;

	if (!colon)
		return imc_err(err, EINVAL, "listen address \"%.100s\": want HOST:PORT", spec);
	n = (size_t)(colon - spec);
	if (n == 0 || n >= sizeof(host))
		return imc_err(err, EINVAL, "listen address \"%.100s\": want an IPv4 address",
			       spec);
	memcpy(host, spec, n);
	host[n] = '\0';
	if (parse_port(colon + 1, spec, &port, err) < 0)
		return -EINVAL;
	memset(ret, 0, sizeof(*ret));
	sa->sin_family = AF_INET;
	sa->sin_port = htons(port);
	if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
		return imc_err(err, EINVAL, "listen address \"%.100s\": want an IPv4 address",
			       spec);
	*ret_len = sizeof(*sa);
	return 0;
}

int api_listen_parse(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		     imc_error *err)
{
	if (!spec || !*spec)
		return imc_err(err, EINVAL, "listen address: empty");
	return spec[0] == '[' ? parse_v6(spec, ret, ret_len, err)
			      : parse_v4(spec, ret, ret_len, err);
}

int api_listen_url(const struct sockaddr *sa, char *buf, size_t size, imc_error *err)
{
	char host[INET6_ADDRSTRLEN];
	int n;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		n = snprintf(buf, size, "http://%s:%u", host, (unsigned)ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		n = snprintf(buf, size, "http://[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
	} else {
		return imc_err(err, EAFNOSUPPORT, "listen address: unsupported family %d",
			       sa->sa_family);
	}
	if (n < 0 || (size_t)n >= size)
		return imc_err(err, ENAMETOOLONG, "listen url: buffer too small");
	return 0;
}

int api_listen_open(const char *spec, int *ret_fd, char *ret_url, size_t url_size, imc_error *err)
{
	struct sockaddr_storage ss, bound;
	socklen_t len = 0, blen = sizeof(bound);
	_cleanup_close_ int fd = -1;
	int one = 1, r;

	r = api_listen_parse(spec, &ss, &len, err);
	if (r < 0)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return imc_err_sys(err, errno, "listen %s: socket", spec);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		return imc_err_sys(err, errno, "listen %s: SO_REUSEADDR", spec);
	if (ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		return imc_err_sys(err, errno, "listen %s: IPV6_V6ONLY", spec);
	if (bind(fd, (struct sockaddr *)&ss, len) < 0)
		return imc_err_sys(err, errno, "listen %s: bind", spec);
	if (listen(fd, LISTEN_BACKLOG) < 0)
		return imc_err_sys(err, errno, "listen %s: listen", spec);
	if (getsockname(fd, (struct sockaddr *)&bound, &blen) < 0)
		return imc_err_sys(err, errno, "listen %s: getsockname", spec);
	r = api_listen_url((struct sockaddr *)&bound, ret_url, url_size, err);
	if (r < 0)
		return r;
	*ret_fd = steal_fd(&fd);
	return 0;
}
