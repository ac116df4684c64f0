/* client/: imcctl, the command-line client of imcd's API.  It links common/, oci/ and the API's
 * wire shapes only (no store, no builder, no server code). */
#ifndef IMC_CLIENT_H
#define IMC_CLIENT_H

#include <stdint.h>

#include "../common/imc.h"
#include "../oci/oci.h"

/* ---- imcctl push (push.c): a cache's chunks from imcd to an OCI registry ------------------ */
struct client_push_config {
	struct net_client *net;			/* the client of imcd's requests */
	const char *server;			/* imcd base URL ("http://localhost" on a socket) */
	const char *unix_socket;		/* imcd's unix socket; NULL: server is a URL */
	const char *token;			/* bearer token for imcd (--token); NULL: none */
	const char *const *insecure_registries; /* plain-HTTP registries besides loopback */
};

struct client_push_stats {
	uint64_t blobs_uploaded, blobs_skipped, bytes_uploaded;
	char manifest_digest[OCI_DIGEST_MAX + 1];
};

/* Push cache_id (its index from imcd: GET /v1/imagecaches/{id}/index) to ref ("host/repo:tag"). */
int client_push_snapshot(const struct client_push_config *cfg, const char *cache_id,
			 const char *ref, struct client_push_stats *ret, imc_error *err);

#endif
