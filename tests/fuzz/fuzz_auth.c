/* Fuzz target: imcd's config file parser (api_config_parse) and the Authorization header check
 * (api_auth_check).
 *
 * The input is read two ways:
 *  - the whole input as a config file;
 *  - up to the first NUL as an Authorization header value, checked against a fixed config of two
 *    tenants (one token in the clear, one as its sha256) and against the config just parsed
 *    when it was accepted.
 *
 * Properties beyond "no crash, no leak, no UB":
 *  - a failure says something (a message and a negative code) and leaves nothing allocated;
 *  - an accepted config has auth exactly when it has 1..API_TOKENS_MAX tokens, each with a valid
 *    tenant name, no two tokens with the same digest, quotas with valid tenant names, and TLS
 *    paths only in pairs;
 *  - a header is accepted only with a tenant of the config, refused only with -EACCES, and no
 *    message ever holds the header's token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../api/auth.h"

#define TOKEN_A "fuzz-tenant-a-token-0123456789"
#define TOKEN_B "fuzz-tenant-b-token-abcdefghij"

static struct api_config fixed;

static void check_failure(int r, const imc_error *err, const char *what)
{
	if (r < 0 && (err->code >= 0 || err->msg[0] == '\0')) {
		fprintf(stderr, "%s: failure %d without a message or code\n", what, r);
		abort();
	}
}

static void check_config(const struct api_config *c)
{
	if (c->auth != (c->n_tokens > 0) || c->n_tokens > API_TOKENS_MAX ||
	    c->n_limits > API_TENANTS_MAX || !c->tls_cert != !c->tls_key)
		abort();
	for (size_t i = 0; i < c->n_tokens; i++) {
		if (!imc_name_valid(c->tokens[i].tenant, API_TENANT_MAX))
			abort();
		for (size_t k = 0; k < i; k++)
			if (memcmp(c->tokens[i].digest, c->tokens[k].digest,
				   API_TOKEN_DIGEST_LEN) == 0)
				abort();
	}
	for (size_t i = 0; i < c->n_limits; i++)
		if (!imc_name_valid(c->limits[i].tenant, API_TENANT_MAX) ||
		    c->limits[i].max_caches > API_MAX_CACHES)
			abort();
}

static bool tenant_of(const struct api_config *c, const char *tenant)
{
	if (!c->auth)
		return strcmp(tenant, API_TENANT_DEFAULT) == 0;
	for (size_t i = 0; i < c->n_tokens; i++)
		if (c->tokens[i].tenant == tenant)
			return true;
	return false;
}

static void check_header(const struct api_config *c, const char *header)
{
	struct api_caller who = {0};
	imc_error err = {0};
	bool missing = false;
	int r = api_auth_check(c, header, &who, &missing, &err);
	const char *space = strrchr(header, ' ');

	check_failure(r, &err, "header");
	if (r == 0 && !tenant_of(c, who.tenant))
		abort();
	if (r < 0 && (r != -EACCES || (missing && *header)))
		abort();
	/* The token (what follows the last space, when long enough to mean anything). */
	if (r < 0 && space && strlen(space + 1) >= 8 && strstr(err.msg, space + 1)) {
		fprintf(stderr, "header: the message shows the token: %s\n", err.msg);
		abort();
	}
}

static void init_fixed(void)
{
	char json[512], hex[IMC_SHA256_HEX_LEN + 1];
	imc_error err = {0};

	if (fixed.auth)
		return;
	if (imc_sha256_hex(TOKEN_B, strlen(TOKEN_B), hex, &err) < 0)
		abort();
	snprintf(json, sizeof(json),
		 "{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"a\"},"
		 "{\"token\":\"sha256:%s\",\"tenant\":\"b\"}]}",
		 hex);
	if (api_config_parse(json, strlen(json), &fixed, &err) < 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct api_config c = {0};
	imc_error err = {0};
	size_t len = strnlen((const char *)data, size);
	_cleanup_free_ char *header = malloc(len + 1);
	int r;

	init_fixed();
	r = api_config_parse((const char *)data, size, &c, &err);
	check_failure(r, &err, "config");
	if (r < 0 && (c.tokens || c.limits || c.tls_cert || c.listen))
		abort();
	if (r == 0)
		check_config(&c);
	if (header) {
		memcpy(header, data, len);
		header[len] = '\0';
		check_header(&fixed, header);
		if (r == 0)
			check_header(&c, header);
	}
	api_config_free(&c);
	return 0;
}
