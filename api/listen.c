/* The listen address: "HOST:PORT", "[IPV6]:PORT" or "unix:PATH", bound by us so that port 0
 * works, the real port is known before the server starts, and a stale Unix socket file is told
 * apart from a live server. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "api.h"
#include "auth.h"

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

static int parse_unix(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		      imc_error *err)
{
	struct sockaddr_un *sa = (struct sockaddr_un *)ret;
	const char *path = spec + strlen(API_LISTEN_UNIX_PREFIX);
	size_t n = strlen(path);

	if (n == 0)
		return imc_err(err, EINVAL, "listen address \"%.100s\": want unix:PATH", spec);
	/* sun_path holds the path and its NUL; longer paths would be cut by the kernel. */
	if (n >= sizeof(sa->sun_path))
		return imc_err(err, ENAMETOOLONG,
			       "listen address \"%.100s...\": socket path longer than %zu bytes",
			       spec, sizeof(sa->sun_path) - 1);
	memset(ret, 0, sizeof(*ret));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, n + 1);
	*ret_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

int api_listen_parse(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		     imc_error *err)
{
	if (!spec || !*spec)
		return imc_err(err, EINVAL, "listen address: empty");
	if (strncmp(spec, API_LISTEN_UNIX_PREFIX, strlen(API_LISTEN_UNIX_PREFIX)) == 0)
		return parse_unix(spec, ret, ret_len, err);
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
	} else if (sa->sa_family == AF_UNIX) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		n = snprintf(buf, size, "%s%.*s", API_LISTEN_UNIX_PREFIX, (int)sizeof(un->sun_path),
			     un->sun_path);
	} else {
		return imc_err(err, EAFNOSUPPORT, "listen address: unsupported family %d",
			       sa->sa_family);
	}
	if (n < 0 || (size_t)n >= size)
		return imc_err(err, ENAMETOOLONG, "listen url: buffer too small");
	return 0;
}

/* What is at a Unix socket path before we bind: nothing (0), a stale socket file that is removed
 * (0), or a reason to refuse (a live server: -EADDRINUSE; not a socket: -EEXIST). */
static int unix_clear_stale(const struct sockaddr_un *sa, socklen_t len, imc_error *err)
{
	_cleanup_close_ int probe = -1;
	struct stat st;

	if (lstat(sa->sun_path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return imc_err_sys(err, errno, "listen unix:%s", sa->sun_path);
	}
	if (!S_ISSOCK(st.st_mode))
		return imc_err(err, EEXIST, "listen unix:%s: exists and is not a socket",
			       sa->sun_path);
	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return imc_err_sys(err, errno, "listen unix:%s: socket", sa->sun_path);
	if (connect(probe, (const struct sockaddr *)sa, len) == 0)
		return imc_err(err, EADDRINUSE, "listen unix:%s: another server is listening there",
			       sa->sun_path);
	/* Only "nobody is listening" makes the file stale; anything else (EACCES...) refuses. */
	if (errno != ECONNREFUSED)
		return imc_err_sys(err, errno, "listen unix:%s: probing the existing socket",
				   sa->sun_path);
	if (unlink(sa->sun_path) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "listen unix:%s: removing the stale socket",
				   sa->sun_path);
	return 0;
}

/* Bind a Unix socket with mode 0660 from the start: the umask covers the window between bind()
 * and a chmod().  Called before any thread runs, so changing the umask is safe. */
static int unix_bind(int fd, const struct sockaddr_un *sa, socklen_t len, imc_error *err)
{
	mode_t old;
	int r;

	r = unix_clear_stale(sa, len, err);
	if (r < 0)
		return r;
	old = umask(0117);
	r = bind(fd, (const struct sockaddr *)sa, len) < 0 ? -errno : 0;
	umask(old);
	if (r < 0)
		return imc_err_sys(err, -r, "listen unix:%s: bind", sa->sun_path);
	if (chmod(sa->sun_path, 0660) < 0) {
		r = -errno;
		unlink(sa->sun_path);
		return imc_err_sys(err, -r, "listen unix:%s: chmod", sa->sun_path);
	}
	return 0;
}

static int inet_bind(int fd, const struct sockaddr_storage *ss, socklen_t len, const char *spec,
		     imc_error *err)
{
	int one = 1;

	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		return imc_err_sys(err, errno, "listen %s: SO_REUSEADDR", spec);
	if (ss->ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		return imc_err_sys(err, errno, "listen %s: IPV6_V6ONLY", spec);
	if (bind(fd, (const struct sockaddr *)ss, len) < 0)
		return imc_err_sys(err, errno, "listen %s: bind", spec);
	return 0;
}

int api_listen_open(const char *spec, int *ret_fd, char *ret_url, size_t url_size, imc_error *err)
{
	struct sockaddr_storage ss, bound;
	socklen_t len = 0, blen = sizeof(bound);
	_cleanup_close_ int fd = -1;
	bool is_unix;
	int r;

	r = api_listen_parse(spec, &ss, &len, err);
	if (r < 0)
		return r;
	is_unix = ss.ss_family == AF_UNIX;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return imc_err_sys(err, errno, "listen %s: socket", spec);
	r = is_unix ? unix_bind(fd, (struct sockaddr_un *)&ss, len, err)
		    : inet_bind(fd, &ss, len, spec, err);
	if (r < 0)
		return r;
	if (listen(fd, LISTEN_BACKLOG) < 0)
		r = imc_err_sys(err, errno, "listen %s: listen", spec);
	else if (is_unix) /* getsockname() adds nothing to the path we bound */
		r = api_listen_url((struct sockaddr *)&ss, ret_url, url_size, err);
	else if (getsockname(fd, (struct sockaddr *)&bound, &blen) < 0)
		r = imc_err_sys(err, errno, "listen %s: getsockname", spec);
	else
		r = api_listen_url((struct sockaddr *)&bound, ret_url, url_size, err);
	if (r < 0) {
		if (is_unix)
			unlink(((struct sockaddr_un *)&ss)->sun_path);
		return r;
	}
	*ret_fd = steal_fd(&fd);
	return 0;
}

int api_listen_remove(const char *url, imc_error *err)
{
	const char *path;

	if (strncmp(url, API_LISTEN_UNIX_PREFIX, strlen(API_LISTEN_UNIX_PREFIX)) != 0)
		return 0;
	path = url + strlen(API_LISTEN_UNIX_PREFIX);
	if (unlink(path) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "removing socket %s", path);
	return 0;
}

bool api_listen_is_local(const char *spec)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;

	if (api_listen_parse(spec, &ss, &len, NULL) < 0)
		return false;
	if (ss.ss_family == AF_UNIX)
		return true;
	if (ss.ss_family == AF_INET)
		return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
	return IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
}
