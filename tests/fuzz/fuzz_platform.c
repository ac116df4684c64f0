/* Fuzz target: platforms (oci_platform_normalize, oci_platform_match_config), as they
 * come from images[].platform, the list query's platform, imcd --platform and image configs.
 *
 * The input is up to four NUL-separated fields: the platform asked for, then the os,
 * architecture and variant an image config declares.  Properties beyond "no crash, no leak, no
 * UB":
 *  - a failure sets err->code to the returned value and says something;
 *  - a normalized platform fits OCI_PLATFORM_MAX, is "os/arch[/variant]" of lowercase
 *    [a-z0-9._-] parts, and normalizes to itself;
 *  - an image config that declares the normalized platform's own parts serves it, as itself;
 *  - a config match gives a normalized platform with the asked-for os and architecture. */
#include <stdlib.h>
#include <string.h>

#include "../../builder/builder.h"

static void check_normalized(const char *p)
{
	char again[OCI_PLATFORM_MAX];
	size_t slashes = 0;

	if (strlen(p) >= OCI_PLATFORM_MAX)
		abort();
	for (const char *c = p; *c; c++) {
		if (*c == '/')
			slashes++;
		else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' ||
			   *c == '_' || *c == '-'))
			abort();
	}
	if (slashes < 1 || slashes > 2 || p[0] == '/' || p[strlen(p) - 1] == '/' || strstr(p, "//"))
		abort();
	if (oci_platform_normalize(p, again, sizeof(again), NULL) < 0 || strcmp(again, p) != 0)
		abort();
}

/* os/arch prefix of a normalized platform (its first two parts) into out. */
static void os_arch(const char *p, char *out, size_t size)
{
	size_t n = strcspn(p, "/");

	n += 1 + strcspn(p + n + 1, "/");
	snprintf(out, size, "%.*s", (int)n, p);
}

static void self_match(const char *p)
{
	char os[OCI_PLATFORM_MAX], got[OCI_PLATFORM_MAX];
	const char *arch, *variant;
	char *slash;

	snprintf(os, sizeof(os), "%s", p);
	slash = strchr(os, '/');
	*slash = '\0';
	arch = slash + 1;
	slash = strchr(slash + 1, '/');
	variant = "";
	if (slash) {
		*slash = '\0';
		variant = slash + 1;
	}
	if (oci_platform_match_config(p, os, arch, variant, got, sizeof(got), NULL) < 0 ||
	    strcmp(got, p) != 0)
		abort();
}

static void fuzz_match(const char *want, const char *os, const char *arch, const char *variant)
{
	char got[OCI_PLATFORM_MAX], a[OCI_PLATFORM_MAX], b[OCI_PLATFORM_MAX];
	char norm[OCI_PLATFORM_MAX];
	imc_error err = {0};
	int r = oci_platform_match_config(want, os, arch, variant, got, sizeof(got), &err);

	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0')
			abort();
		return;
	}
	if (r > 0 || oci_platform_normalize(want, norm, sizeof(norm), NULL) < 0)
		abort();
	check_normalized(got);
	os_arch(got, a, sizeof(a));
	os_arch(norm, b, sizeof(b));
	if (strcmp(a, b) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *s = malloc(size + 1);
	const char *field[4] = {"", NULL, NULL, NULL};
	char out[OCI_PLATFORM_MAX];
	imc_error err = {0};
	size_t n = 1;
	int r;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	field[0] = s;
	for (size_t i = 0; i < size && n < 4; i++)
		if (s[i] == '\0')
			field[n++] = s + i + 1;

	r = oci_platform_normalize(field[0], out, sizeof(out), &err);
	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0')
			abort();
	} else {
		if (r > 0)
			abort();
		check_normalized(out);
		self_match(out);
	}
	fuzz_match(field[0], field[1], field[2], field[3]);
	return 0;
}
