/* Image references, as docker/distribution's reference package reads them:
 *   [host[:port]/]path[:tag][@sha256:<hex>]
 * The first component is a registry host when it holds '.' or ':', is "localhost" or has an
 * upper-case letter; otherwise the registry is Docker Hub, where a single component gets
 * "library/". */
#include <string.h>

#include "oci.h"

#define REF_MAX	    512
#define REPO_MAX    255
#define TAG_MAX	    128
#define DOCKER_HUB  "registry-1.docker.io"
#define DEFAULT_TAG "latest"

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c)
{
	return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/* path-component := [a-z0-9]+ (separator [a-z0-9]+)*, separator := [_.] | __ | -+ */
static bool path_component_valid(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
		return false;
	while (i < n) {
		if (is_lower_alnum(s[i])) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < n && !is_lower_alnum(s[j]))
			j++;
		size_t len = j - i;
		bool ok = (len == 1 && (s[i] == '.' || s[i] == '_')) ||
			  (len == 2 && s[i] == '_' && s[i + 1] == '_') || strspn(s + i, "-") >= len;
		if (!ok)
			return false;
		i = j;
	}
	return true;
}

TESTABLE bool ref_repository_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > REPO_MAX)
		return false;
	for (const char *p = s;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (!path_component_valid(p, len))
			return false;
		if (!slash)
			return true;
		p = slash + 1;
	}
}

/* domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]; '.'-separated;
 * optional ":port"; or a bracketed IPv6 address with an optional port. */
TESTABLE bool ref_domain_valid(const char *s)
{
	const char *host_end, *port = NULL;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close == s + 1 ||
		    strspn(s + 1, "0123456789abcdefABCDEF:.") != (size_t)(close - s - 1))
			return false;
		host_end = close + 1;
		if (*host_end == ':')
			port = host_end + 1;
		else if (*host_end != '\0')
			return false;
	} else {
		const char *colon = strchr(s, ':');
		host_end = colon ? colon : s + strlen(s);
		if (colon)
			port = colon + 1;
		for (const char *p = s; p < host_end;) {
			const char *dot = memchr(p, '.', (size_t)(host_end - p));
			const char *end = dot ? dot : host_end;
			if (end == p || !is_alnum(p[0]) || !is_alnum(end[-1]))
				return false;
			for (const char *q = p; q < end; q++)
				if (!is_alnum(*q) && *q != '-')
					return false;
			p = dot ? dot + 1 : host_end;
			if (dot && p == host_end)
				return false;
		}
		if (host_end == s)
			return false;
	}
	if (port) {
		size_t n = strlen(port);
		if (n == 0 || n > 5 || strspn(port, "0123456789") != n)
			return false;
	}
	return true;
}

/* tag := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127} */
TESTABLE bool ref_tag_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > TAG_MAX || !(is_alnum(s[0]) || s[0] == '_'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(is_alnum(s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
			return false;
	return true;
}

/* Does the first component of a name denote a registry host? */
static bool is_domain(const char *s, size_t n)
{
	if (n == 9 && memcmp(s, "localhost", 9) == 0)
		return true;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '.' || s[i] == ':' || (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '[')
			return true;
	return false;
}

static bool is_docker_hub(const char *domain)
{
	return strcmp(domain, "docker.io") == 0 || strcmp(domain, "index.docker.io") == 0 ||
	       strcmp(domain, DOCKER_HUB) == 0;
}

static int ref_split_name(const char *s, const char *name, struct oci_ref *r, imc_error *err)
{
	const char *slash = strchr(name, '/');
	const char *path = name;

	if (slash && is_domain(name, (size_t)(slash - name))) {
		r->registry = strndup(name, (size_t)(slash - name));
		path = slash + 1;
		if (!r->registry)
			return imc_err(err, ENOMEM, "out of memory");
		if (!ref_domain_valid(r->registry))
			return imc_err(err, EINVAL,
				       "image ref \"%s\": invalid registry host \"%s\"", s,
				       r->registry);
		if (is_docker_hub(r->registry)) {
			free(r->registry);
			r->registry = NULL;
		}
	}
	if (!r->registry) {
		r->registry = strdup(DOCKER_HUB);
		if (!r->registry)
			return imc_err(err, ENOMEM, "out of memory");
		if (!strchr(path, '/')) {
			r->repository = imc_path_join("library", path);
			if (!r->repository)
				return imc_err(err, ENOMEM, "out of memory");
		}
	}
	if (!r->repository && !(r->repository = strdup(path)))
		return imc_err(err, ENOMEM, "out of memory");
	if (!ref_repository_valid(r->repository))
		return imc_err(
		    err, EINVAL,
		    "image ref \"%s\": invalid repository \"%s\" (want lowercase "
		    "letters, digits and separators '.', '_', '__', '-', at most %d bytes)",
		    s, path, REPO_MAX);
	return 0;
}

static int ref_parse(const char *s, struct oci_ref *r, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	_cleanup_free_ char *name = NULL;
	char *at, *colon, *slash;

	if (strlen(s) == 0)
		return imc_err(err, EINVAL, "image ref \"\": empty");
	if (strlen(s) > REF_MAX)
		return imc_err(err, EINVAL, "image ref \"%.64s...\": longer than %d bytes", s,
			       REF_MAX);
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
			return imc_err(err, EINVAL,
				       "image ref \"%s\": contains a space or control character",
				       s);
	name = strdup(s);
	if (!name)
		return imc_err(err, ENOMEM, "out of memory");
	at = strchr(name, '@');
	if (at) {
		*at = '\0';
		if (imc_digest_parse(at + 1, hex, err) < 0)
			return imc_err_wrap(err, "image ref \"%s\"", s);
		if (!(r->digest = strdup(at + 1)))
			return imc_err(err, ENOMEM, "out of memory");
	}
	slash = strrchr(name, '/');
	colon = strrchr(name, ':');
	if (colon && (!slash || colon > slash)) {
		*colon = '\0';
		if (!ref_tag_valid(colon + 1))
			return imc_err(err, EINVAL,
				       "image ref \"%s\": invalid tag \"%s\" (want "
				       "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})",
				       s, colon + 1);
		if (!(r->tag = strdup(colon + 1)))
			return imc_err(err, ENOMEM, "out of memory");
	}
	if (name[0] == '\0')
		return imc_err(err, EINVAL, "image ref \"%s\": missing repository name", s);
	if (!r->tag && !r->digest && !(r->tag = strdup(DEFAULT_TAG)))
		return imc_err(err, ENOMEM, "out of memory");
	return ref_split_name(s, name, r, err);
}

int oci_ref_parse(const char *s, struct oci_ref *ret, imc_error *err)
{
	struct oci_ref r = {0};
	int rc;

	if (!s)
		return imc_err(err, EINVAL, "image ref: missing");
	rc = ref_parse(s, &r, err);
	if (rc < 0) {
		oci_ref_free(&r);
		return rc;
	}
	*ret = r;
	return 0;
}

void oci_ref_free(struct oci_ref *r)
{
	if (!r)
		return;
	free(r->registry);
	free(r->repository);
	free(r->tag);
	free(r->digest);
	*r = (struct oci_ref){0};
}
