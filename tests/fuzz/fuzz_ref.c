/* Fuzz target: image references (oci_ref_parse).
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure sets err->code to the returned value and says something, and a NULL err
 *    changes nothing but the message;
 *  - a success fills registry and repository, and a tag or a digest;
 *  - the parsed parts, written back as "registry/repository[:tag][@digest]", parse to the same
 *    parts (when that string is within the length cap). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../oci/oci.h"

#define REF_MAX_FORMATTED 512 /* oci/ref.c's REF_MAX */

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_round_trip(const struct oci_ref *r)
{
	struct oci_ref again = {0};
	imc_error err = {0};
	char buf[2048];
	int n = snprintf(buf, sizeof(buf), "%s/%s%s%s%s%s", r->registry, r->repository,
			 r->tag ? ":" : "", r->tag ? r->tag : "", r->digest ? "@" : "",
			 r->digest ? r->digest : "");

	if (n < 0 || (size_t)n >= sizeof(buf) || n > REF_MAX_FORMATTED)
		return;
	if (oci_ref_parse(buf, &again, &err) < 0) {
		fprintf(stderr, "round trip: \"%s\" does not parse: %s\n", buf, err.msg);
		abort();
	}
	if (!str_eq(r->registry, again.registry) || !str_eq(r->repository, again.repository) ||
	    !str_eq(r->tag, again.tag) || !str_eq(r->digest, again.digest)) {
		fprintf(stderr, "round trip: \"%s\" parses to %s %s %s %s\n", buf, again.registry,
			again.repository, again.tag ? again.tag : "-",
			again.digest ? again.digest : "-");
		abort();
	}
	oci_ref_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oci_ref ref = {0}, quiet = {0};
	imc_error err = {0};
	_cleanup_free_ char *s = malloc(size + 1);
	int r, r_noerr;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	r = oci_ref_parse(s, &ref, &err);
	/* Without an imc_error the verdict is the same (imc_err_wrap() cannot keep the code then:
	 * -EIO, so only the sign is compared). */
	r_noerr = oci_ref_parse(s, &quiet, NULL);
	if ((r < 0) != (r_noerr < 0) || r > 0)
		abort();
	oci_ref_free(&quiet);
	if (r < 0) {
		if (err.code != r || err.msg[0] == '\0')
			abort();
		return 0;
	}
	if (!ref.registry || !ref.repository || (!ref.tag && !ref.digest))
		abort();
	check_round_trip(&ref);
	oci_ref_free(&ref);
	return 0;
}
