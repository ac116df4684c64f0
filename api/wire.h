/* What the API's clients share with imcd, with nothing of the server behind it: the shapes of
 * ids, the limits a client pages against, the listen address forms.  imcctl links api/wire.c and
 * nothing else of api/. */
#ifndef IMC_API_WIRE_H
#define IMC_API_WIRE_H

#include <stdbool.h>

#define API_ID_MAX	       64      /* buffer for a cache id ("imc-" + 16 hex + NUL) */
#define API_ID_PREFIX	       "imc"   /* cache ids: "imc-" + 16 lowercase hex digits */
#define API_ATTACH_PREFIX      "att"   /* attachment ids: "att-" + 16 lowercase hex digits */
#define API_MAX_CACHES	       10000   /* caches the table holds */
#define API_LISTEN_UNIX_PREFIX "unix:" /* --listen / --server unix:PATH */

/* "imc-" + 16 lowercase hex digits. */
bool api_cache_id_valid(const char *id);
/* "att-" + 16 lowercase hex digits. */
bool api_attach_id_valid(const char *id);

#endif
