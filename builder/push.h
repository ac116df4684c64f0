/* imcctl push: a cache's chunks from imcd to an OCI registry (builder/push.c). */
#ifndef IMC_BUILDER_PUSH_H
#define IMC_BUILDER_PUSH_H

#include <stdint.h>

#include "../common/imc.h"

struct push_config {
	const char *server;			/* imcd base URL */
	const char *token;			/* bearer token for imcd; NULL: none */
	const char *const *insecure_registries; /* plain-HTTP registries besides loopback */
};

struct push_stats {
	uint64_t blobs_uploaded, blobs_skipped, bytes_uploaded;
	char manifest_digest[7 + IMC_SHA256_HEX_LEN + 1];
};

/* Push cache_id (its index from imcd: GET /v1/imagecaches/{id}/index) to ref ("host/repo:tag"). */
int builder_push_snapshot(const struct push_config *cfg, const char *cache_id, const char *ref,
			  struct push_stats *ret, imc_error *err);

#endif
