/* Reporting attaches to imcd, so that it knows which caches are in use (delete refused while
 * attached, lastUsedAt, no expiry or eviction of an attached cache):
 *   POST   <server>/v1/imagecaches/<cache>/attachments {"id":"att-…","host":"<hostname>"}
 *   DELETE <server>/v1/imagecaches/<cache>/attachments/<att-…>
 * The attachment id is the attach's own id (attach_cache's state "id"), so a repeated report is
 * harmless (imcd answers 200 for an id it already has) and a detach names the same id.
 * The server is "http(s)://HOST:PORT" or "unix:PATH"; the token (optional) goes in
 * "Authorization: Bearer".  A report never makes an attach or detach fail: callers warn. */
#ifndef IMC_ATTACH_REPORT_H
#define IMC_ATTACH_REPORT_H

#include "../common/imc.h"
#include "../store/store.h"

#define ATTACH_REPORT_TIMEOUT_MS                                                                   \
	3000L /* a report is short: an imcd slower than this is skipped                            \
	       */
#define ATTACH_REPORT_TOKEN_MAX 4096

struct attach_reporter {
	const char *server; /* NULL or "": reporting is off */
	const char *token;  /* NULL: no Authorization header */
};

/* The server and token as main found them (--server / --token, else $IMCACHE_SERVER /
 * $IMCACHE_TOKEN read with secure_getenv); NULL or "": none. */
void attach_reporter_init(struct attach_reporter *r, const char *server, const char *token);
bool attach_reporter_enabled(const struct attach_reporter *r);

/* The recorded attach that a detach of what (a dir, an attach id or a device) will undo, so
 * that its ids can be reported after it is gone: a new reference, or NULL. */
json_t *attach_report_lookup(struct store *s, const char *what);
/* Report the attach state's ("cacheId", "id") attach or detach when reporting is on; a failure
 * is written to stderr as a warning prefixed with prog. */
void attach_report_state(const struct attach_reporter *r, bool attached, json_t *state,
			 const char *prog);

#endif
