/* The imcache REST API: request parsing and validation, the JSON of caches, routing, the cache
 * table with its build worker, and the HTTP server (libmicrohttpd) that ties them together.
 *
 * Pure parts (no store, no builder build, no network): api/json.c, api/route.c, api/listen.c.
 * api/caches.c owns the state and the builds; api/handle.c answers one request without HTTP;
 * api/server.c is the HTTP glue. */
#ifndef IMC_API_H
#define IMC_API_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../builder/builder.h"
#include "../common/imc.h"
#include "wire.h"

/* ---- limits (every size a client controls) ------------------------------------------------ */
#define API_BODY_MAX	      (1024 * 1024)	 /* request body; more is 413 */
#define API_NAME_MAX	      128		 /* cache name, [A-Za-z0-9._-] */
#define API_REF_MAX	      1024		 /* image reference */
#define API_IMAGES_MAX	      BUILDER_IMAGES_MAX /* images in one cache */
#define API_QUEUE_MAX	      256		 /* builds waiting for the worker */
#define API_META_MAX	      (16u << 20)	 /* a metadata file */
#define API_DATA_MAX	      BUILDER_DATA_MAX	 /* data entries in one cache */
#define API_SIZE_MAX	      (16ULL << 40)	 /* a requested filesystem size */
#define API_CREDS_MAX	      16		 /* credentials in one request */
#define API_REGISTRY_MAX      255		 /* credentials[].registry */
#define API_USER_MAX	      256		 /* credentials[].username */
#define API_SECRET_MAX	      16384		 /* credentials[].password / token */
#define API_CONTENT_TYPE      "application/json"
#define API_TOKEN_MAX	      64    /* clientToken, [A-Za-z0-9._-] */
#define API_RETENTION_MAX     36500 /* retentionDays; 0 = pinned (never expires, never evicted) */
#define API_RETENTION_DEFAULT 30    /* retentionDays when a request leaves it out */
#define API_EVENTS_MAX	      50    /* events kept per cache (the newest) */
#define API_ATTACH_MAX	      1024  /* attachments recorded per cache */
#define API_HOST_MAX	      255   /* attachments[].host */
/* A tenant's quota is used up: 403 QuotaExceeded (retrying does not help until the tenant
 * deletes caches).  A full table or build queue is -EDQUOT: 429 LimitExceeded (retry later). */
#define API_EQUOTA EUSERS

/* ---- errors -> HTTP ------------------------------------------------------------------------
 * Handlers turn a negative errno into an HTTP status and an error code:
 *   -EBADMSG 400 InvalidJSON      -EINVAL/-ERANGE 400 InvalidArgument   -ENOENT 404 NotFound
 *   -EBUSY 409 Conflict           -EFBIG 413 PayloadTooLarge            -EDQUOT 429 LimitExceeded
 *   -API_EQUOTA 403 QuotaExceeded -ESHUTDOWN 503 Unavailable            -ENOSPC 507
 *   InsufficientStorage           -EINPROGRESS 503 InProgress           -ETIMEDOUT 504
 *   GatewayTimeout                anything else 500 Internal
 * A 503 or 504 carries Retry-After (api_retry_after_from_status). */
void api_status_from_errno(int code, unsigned *ret_http, const char **ret_code);
#define API_RETRY_AFTER_S 1 /* seconds, in a 503: the work it waits for is under way */
/* The Retry-After seconds of an error answer with this status (0: none). */
unsigned api_retry_after_from_status(unsigned http);
/* {"error":{"code":code,"message":message}}; NULL on OOM. */
json_t *api_error_json(const char *code, const char *message);

/* ---- create requests ------------------------------------------------------------------------ */
/* A data entry as requested (checked with builder_data_check). */
struct api_data {
	char *source;
	char *path;
	char *sha256; /* NULL when not given */
};
/* Registry credentials: kept in memory only, for the build; never echoed, logged or written
 * down, and wiped when freed. */
struct api_credential {
	char *registry;
	char *username; /* NULL with a token */
	char *password; /* NULL with a token */
	char *token;	/* NULL with username/password */
};
void api_credentials_free(struct api_credential *c, size_t n);

struct api_create_request {
	char *name;  /* NULL when not given */
	char **refs; /* 1..API_IMAGES_MAX distinct image references, validated with
		      * oci_ref_parse, in request order (index n: /images/<n>/rootfs) */
	size_t n_refs;
	char **platforms; /* per ref: images[].platform normalized ("linux/arm64/v8"), NULL where
			   * the request names none (imcd's default); NULL when none does */
	struct api_data *data; /* 0..API_DATA_MAX entries with distinct paths */
	size_t n_data;
	uint64_t size; /* 0: the builder's default */
	struct api_credential *credentials;
	size_t n_credentials;
	int64_t retention_days; /* 0..API_RETENTION_MAX; API_RETENTION_DEFAULT when not given */
	char *client_token;	/* NULL when not given */
};
/* Parse and validate a POST /v1/imagecaches body.  Malformed JSON fails with -EBADMSG, anything
 * else wrong with -EINVAL and a message naming the field ("images[0].ref: want a string"); more
 * than API_IMAGES_MAX images or the same ref twice for the same platform is -EINVAL too. */
int api_create_request_parse(const char *body, size_t len, struct api_create_request *ret,
			     imc_error *err);
void api_create_request_free(struct api_create_request *r);

/* ---- caches -----------------------------------------------------------------------------------
 */
enum api_cache_status {
	API_CACHE_CREATING,
	API_CACHE_READY,
	API_CACHE_FAILED,
	API_CACHE_UPDATING, /* reserved for rebuilding a Ready cache in place: never set yet */
	API_CACHE_DELETING, /* its snapshot is being removed (DELETE, expiry or eviction) */
	API_CACHE_EXPIRED,  /* expired or evicted: the snapshot is gone, the record stays */
	API_CACHE_STATUS_COUNT,
};
const char *api_cache_status_name(enum api_cache_status s);
int api_cache_status_parse(const char *s, enum api_cache_status *ret);

/* An id in a path: -EINVAL when it could never name anything (400), -ENOENT when it is not a
 * cache id (404, as for an unknown cache: a base snapshot "img-…" is internal), else 0. */
int api_cache_id_check(const char *id, imc_error *err);

/* One event of a cache's history (the newest API_EVENTS_MAX are kept and persisted). */
struct api_cache_event {
	int64_t time; /* unix seconds */
	char type[24];
	char *message;
};
/* A clone attached somewhere (reported by imc-attach / imc-runtime). */
struct api_attachment {
	char id[API_ID_MAX]; /* "att-<16 hex>" */
	char *host;	     /* NULL when not reported */
	int64_t at;	     /* unix seconds */
};

struct api_cache {
	char id[API_ID_MAX];
	char *name; /* NULL when none was given */
	char **refs;
	size_t n_refs;
	char **platforms; /* per ref, normalized (imcd's default filled in); part of its identity */
	struct api_data *data;
	size_t n_data;
	uint64_t request_size; /* as requested; 0: the default */
	bool had_credentials;  /* the request carried credentials (persisted as a flag only) */
	struct api_credential *credentials; /* in memory only, dropped once the build ends */
	size_t n_credentials;
	enum api_cache_status status;
	char *status_message;	/* Failed: why */
	json_t *manifest;	/* Ready: the builder's /imcache.json content */
	uint64_t size;		/* Ready: bytes of the snapshot */
	int64_t created_at;	/* unix seconds */
	int64_t ready_at;	/* unix seconds; 0 until Ready */
	char *tenant;		/* the owner (API_TENANT_DEFAULT in metadata written before) */
	int64_t retention_days; /* 0: pinned */
	char *client_token;	/* NULL when none was given */
	char request_key[IMC_SHA256_HEX_LEN + 1]; /* identifies an identical request */
	int64_t last_used_at;			  /* unix seconds; 0: never attached */
	struct api_attachment *attachments;
	size_t n_attachments;
	struct api_cache_event events[API_EVENTS_MAX]; /* oldest first */
	size_t n_events;
	/* In memory only. */
	enum api_cache_status persisted_status; /* the status its metadata file holds */
	bool meta_dirty; /* its last change is not on disk yet (no space): the sweeper retries */
	uint64_t progress_done, progress_total;
	bool deleting;
	enum api_cache_status status_before; /* while Deleting/Updating: the status to go back to */
	int64_t day_seconds;		     /* a retention day (0: 86400), for expiresAt */
	int cancel;	   /* enum api_cancel: why its running build is asked to stop (atomic) */
	uint64_t reserved; /* Creating: bytes its sized build holds of the tenant's maxBytes */
	/* The rendered API object (api_cache_rendered): the exact bytes GET answers, kept until
	 * the cache changes.  gen is bumped by api_cache_touch() on every change; rendered_stamp
	 * also holds the rendered fields themselves, so a change that forgot to touch still
	 * re-renders. */
	uint64_t gen;
	char *rendered;
	size_t rendered_len;
	struct api_cache_stamp {
		uint64_t gen, size, progress_done, progress_total;
		int64_t created_at, ready_at, last_used_at, retention_days, day_seconds;
		const void *manifest, *status_message, *last_event;
		size_t n_attachments, n_events;
		enum api_cache_status status;
		bool deleting;
	} rendered_stamp;
};
/* Why a running build is stopped: its cache was deleted, or imcd stops (past its grace). */
enum api_cancel { API_CANCEL_NONE, API_CANCEL_DELETE, API_CANCEL_SHUTDOWN };
/* Append an event (the oldest goes when API_EVENTS_MAX are kept); fails only on OOM. */
int api_cache_add_event(struct api_cache *c, int64_t now, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* When a Ready cache expires: the last use (or readyAt, or createdAt) + retentionDays days of
 * day_seconds each; 0 when pinned or not Ready. */
int64_t api_cache_expires_at(const struct api_cache *c, int64_t day_seconds);
/* The sha256 of what makes two create requests identical: tenant, name, refs in order with their
 * platforms (NULL: OCI_DEFAULT_PLATFORM), data entries in order, size and retentionDays
 * (credentials and clientToken excluded). */
int api_request_key(const char *tenant, const struct api_create_request *req,
		    char ret[IMC_SHA256_HEX_LEN + 1], imc_error *err);

/* A new Creating cache for req, owned by tenant (NULL: API_TENANT_DEFAULT); an image without a
 * platform gets OCI_DEFAULT_PLATFORM (api_caches_create fills in imcd's default first). */
int api_cache_new(const char *id, const struct api_create_request *req, int64_t now,
		  struct api_cache **ret, imc_error *err);
int api_cache_new_for(const char *id, const char *tenant, const struct api_create_request *req,
		      int64_t now, struct api_cache **ret, imc_error *err);
void api_cache_free(struct api_cache *c);
/* Set a message (copied); fails only on OOM. */
int api_cache_set_failed(struct api_cache *c, const char *message, imc_error *err);
/* The API object (GET /v1/imagecaches/{id}); NULL on OOM. */
json_t *api_cache_to_json(const struct api_cache *c);
/* Mark a cache changed: its rendered object is rebuilt on the next read.  Every change of a
 * field the API object shows goes with a touch (under the table lock). */
void api_cache_touch(struct api_cache *c);
/* The API object as compact JSON (no newline), rendered only when the cache changed since the
 * last call; *ret points into the cache and stays valid until its next change (hold the table
 * lock).  -ENOMEM only. */
int api_cache_rendered(struct api_cache *c, const char **ret, size_t *ret_len);
/* The metadata file (<state>/caches/<id>.json) and back. */
json_t *api_cache_to_meta(const struct api_cache *c);
int api_cache_from_meta(json_t *meta, struct api_cache **ret, imc_error *err);
/* List order: createdAt, then id. */
int api_cache_cmp(const struct api_cache *a, const struct api_cache *b);

/* ---- list queries (api/list.c): GET /v1/imagecaches?status=&name=&image=&match=&limit=&pageToken=
 * The page token is the hex of "createdAt:id" of the last item of a page: the next page starts
 * after that position in the list order, so inserts and deletes never skip or repeat an item. */
#define API_LIST_LIMIT_DEFAULT 100
#define API_LIST_LIMIT_MAX     1000
#define API_QUERY_ARGS_MAX     16		       /* parameters in one query string */
#define API_QUERY_VALUE_MAX    API_REF_MAX	       /* bytes of one (decoded) value */
#define API_PAGE_TOKEN_MAX     (2 * (20 + API_ID_MAX)) /* hex of "createdAt:id" */

struct api_query_arg {
	const char *key;
	const char *value; /* NULL for "?key" without "=" */
};
struct api_list_query {
	bool have_status;
	enum api_cache_status status;
	char *name;	       /* NULL: any */
	char *image;	       /* NULL: any; else the exact ref */
	char *image_digest;    /* "sha256:…" when image is a digest ref, else NULL */
	char *chain_id;	       /* chainId: an image whose top ChainID it is; NULL: any */
	char *manifest_digest; /* manifestDigest: an image resolved to it; NULL: any */
	char *platform;	       /* with image: only that platform's (normalized); NULL: any (exact),
				* imcd's default (best) */
	bool match_best;       /* match=best: the one cache sharing the most layers with image */
	size_t limit;
	bool have_after; /* a page token: items after (after_created, after_id) */
	int64_t after_created;
	char after_id[API_ID_MAX];
};
/* Split a raw query string (modified in place: "&" and "=" become NULs, values are
 * percent-decoded, "+" is a space) into at most max arguments. */
int api_query_split(char *query, struct api_query_arg *ret, size_t max, size_t *ret_n,
		    imc_error *err);
/* Validate the arguments of a list request: unknown, repeated, empty or too long parameters,
 * a bad status, limit, match or page token are -EINVAL naming the parameter. */
int api_list_query_parse(const struct api_query_arg *args, size_t n, struct api_list_query *ret,
			 imc_error *err);
void api_list_query_free(struct api_list_query *q);
int api_page_token_encode(int64_t created_at, const char *id, char *buf, size_t size,
			  imc_error *err);
int api_page_token_decode(const char *token, int64_t *ret_created_at, char ret_id[API_ID_MAX],
			  imc_error *err);
bool api_cache_matches(const struct api_cache *c, const struct api_list_query *q);
/* One page of items (sorted by api_cache_cmp): {"items":[…]} plus "nextPageToken" when more
 * matching items follow. */
int api_list_page(struct api_cache *const *items, size_t n, const struct api_list_query *q,
		  json_t **ret, imc_error *err);
/* Only items of tenant (NULL: all). */
int api_list_page_tenant(struct api_cache *const *items, size_t n, const char *tenant,
			 const struct api_list_query *q, json_t **ret, imc_error *err);
/* The same page as the body GET answers (compact JSON and a newline, malloc'ed), joined from
 * the items' rendered objects (api_cache_rendered) without a json_t tree. */
int api_list_page_body(struct api_cache *const *items, size_t n, const char *tenant,
		       const struct api_list_query *q, char **ret, size_t *ret_len, imc_error *err);
/* How many of want's layer digests (an array of strings) the cache's images hold. */
size_t api_cache_shared_layers(const struct api_cache *c, json_t *want);
/* Does the cache hold an image for platform (normalized)? */
bool api_cache_has_platform(const struct api_cache *c, const char *platform);
/* DELETE /v1/imagecaches/{id} arguments: force=true|false only. */
int api_delete_query_parse(const struct api_query_arg *args, size_t n, bool *ret_force,
			   imc_error *err);

/* ---- the build queue (api/queue.c) ----------------------------------------------------------
 * The next build to start: the index in queued (oldest first) of the first cache that shares no
 * image ref with a running build and whose tenant runs fewer than tenant_cap builds (0: no cap),
 * preferring the tenant that runs the fewest; -1 when none may start.  running may hold NULLs
 * (free workers). */
ssize_t api_queue_pick(struct api_cache *const *queued, size_t n_queued,
		       struct api_cache *const *running, size_t n_running, unsigned tenant_cap);

/* ---- the image resolver of match=best (api/resolver.c) ---------------------------------------
 * Registries are never asked from a request thread: api_resolver_layers answers from what the
 * resolver has (the layer digests of a ref resolved lately, or why that failed), else queues the
 * ref for the resolver's threads and answers -EINPROGRESS at once.  Each resolve has a deadline:
 * one that runs past it ends as -ETIMEDOUT; any other failure is -ENOENT (no image to compare
 * with). */
#define API_RESOLVE_TTL_S      60 /* a tag's layers are used this long, then resolved again */
#define API_RESOLVE_FAIL_TTL_S 10 /* a failure is answered this long, then tried again */
struct api_resolver;
struct api_resolver_config {
	struct builder_opts opts; /* registries, CAs, auth file: kept as pointers */
	unsigned timeout_ms;	  /* one resolve's deadline; 0: 30 s */
};
int api_resolver_start(const struct api_resolver_config *cfg, struct api_resolver **ret,
		       imc_error *err);
/* Stops resolves in flight (within about a second) and frees everything. */
void api_resolver_stop(struct api_resolver *r);
/* The layer digests of image ref for platform (normalized; a new array), or -EINPROGRESS, or
 * the recent failure. */
int api_resolver_layers(struct api_resolver *r, const char *ref, const char *platform, json_t **ret,
			imc_error *err);

/* ---- routing ----------------------------------------------------------------------------------
 */
enum api_route {
	API_ROUTE_NONE,	       /* unknown path: 404 */
	API_ROUTE_HEALTHZ,     /* /healthz */
	API_ROUTE_CACHES,      /* /v1/imagecaches */
	API_ROUTE_CACHE,       /* /v1/imagecaches/{id} */
	API_ROUTE_METRICS,     /* /metrics */
	API_ROUTE_ATTACHMENTS, /* /v1/imagecaches/{id}/attachments */
	API_ROUTE_ATTACHMENT,  /* /v1/imagecaches/{id}/attachments/{aid} */
	API_ROUTE_CACHE_INDEX, /* /v1/imagecaches/{id}/index (api/dist.c) */
	API_ROUTE_CHUNK,       /* /v1/chunks/{digest} (api/dist.c; served from a file) */
	API_ROUTE_CACHE_TRACE, /* /v1/imagecaches/{id}/trace (api/dist.c) */
};
enum api_method {
	API_METHOD_GET,
	API_METHOD_POST,
	API_METHOD_DELETE,
	API_METHOD_PUT,
	API_METHOD_OTHER,
};
struct api_match {
	enum api_route route;
	const char *id; /* API_ROUTE_CACHE: the id segment inside the url (not validated) */
	/* API_ROUTE_ATTACHMENT(S): the cache id (copied, NUL-terminated) and the attachment id. */
	char id_buf[API_ID_MAX];
	const char *aid;
	size_t id_len; /* bytes of id (CACHE_INDEX: id is not NUL-terminated; CHUNK: the digest) */
};
enum api_method api_method_parse(const char *method);
/* Match a path (no query string). */
void api_route_match(const char *url, struct api_match *ret);
bool api_route_allows(enum api_route route, enum api_method method);
/* The Allow header for a 405. */
const char *api_route_allow(enum api_route route);

/* ---- listening --------------------------------------------------------------------------------
 */
/* "HOST:PORT" (IPv4 literal), "[IPV6]:PORT" (port 0 picks a free port) or "unix:PATH" (a path
 * longer than sun_path holds fails with -ENAMETOOLONG). */
int api_listen_parse(const char *spec, struct sockaddr_storage *ret, socklen_t *ret_len,
		     imc_error *err);
/* "http://HOST:PORT" or "unix:PATH" of a bound address. */
int api_listen_url(const struct sockaddr *sa, char *buf, size_t size, imc_error *err);
/* Parse spec, bind and listen; ret_url gets the address with the real port.  A Unix socket is
 * created with mode 0660; a socket file already there is removed only when nothing answers on it
 * (-EADDRINUSE when a server does, -EEXIST when the path is not a socket). */
int api_listen_open(const char *spec, int *ret_fd, char *ret_url, size_t url_size, imc_error *err);
/* Remove the socket file of a "unix:PATH" url from api_listen_open; nothing for a TCP url. */
int api_listen_remove(const char *url, imc_error *err);

/* ---- callers -----------------------------------------------------------------------------------
 * Who makes a request: the tenant its bearer token belongs to (api/auth.c).  Without a token
 * configuration (auth off) every request comes from API_TENANT_DEFAULT.  A tenant sees, lists
 * and deletes only its own caches. */
#define API_TENANT_MAX	   64 /* bytes of a tenant name, [A-Za-z0-9._-] */
#define API_TENANT_DEFAULT "default"
struct api_caller {
	const char *tenant;
};
/* A tenant's quota (from the config file): 0 = no limit. */
struct api_tenant_limits {
	const char *tenant;
	uint64_t max_caches; /* caches it holds (any status but Deleting/Expired) */
	uint64_t max_bytes;  /* sum of their sizes */
};

/* ---- the cache table and its build worker (api/caches.c) ---------------------------------- */
struct store;
struct dist_chunks;
struct dist_exporter;
struct api_caches;

enum api_event {
	API_EVENT_BUILD_START,
	API_EVENT_BUILD_READY,
	API_EVENT_BUILD_FAILED,
	API_EVENT_PERSIST_FAILED,
	API_EVENT_EXPIRED, /* the sweeper removed a cache (retention or eviction) */
};
struct api_caches_config {
	const char *state_dir;			/* metadata in <state_dir>/caches */
	struct store *store;			/* opened by the caller */
	const char *const *insecure_registries; /* NULL-terminated, may be NULL */
	const char *hf_endpoint;		/* hf:// data; NULL: huggingface.co */
	const char *ca_file;			/* extra CAs for data and registries; NULL: none */
	const char *auth_file; /* docker config.json with registry credentials; NULL: none */
	const char *platform;  /* images without one (normalized); NULL: linux/amd64 */
	/* The HTTP clients (net/) builds use for registries and for data (builder_opts). */
	struct net_client *registry_net, *data_net;
	uint64_t max_blob_size;			/* 0: OCI_BLOB_MAX_DEFAULT */
	const struct api_tenant_limits *limits; /* per-tenant quotas; tenants not listed: none */
	size_t n_limits;
	/* Called from the worker thread (not under the table lock); may be NULL. */
	void (*on_event)(void *ctx, enum api_event ev, const char *id, const char *message);
	void *event_ctx;
	/* The snapshot of cache id is gone (deleted, expired or evicted): called
	 * after its removal by whichever thread removed it, not under the table lock; may
	 * be NULL.  imcd drops the snapshot's chunks here (api_dist_snapshot_removed). */
	void (*on_snapshot_removed)(void *ctx, const char *id);
	/* The build of cache id ended Ready: called from the worker thread, not under the table
	 * lock; may be NULL.  imcd queues its chunk index export here (api_dist_snapshot_ready). */
	void (*on_snapshot_ready)(void *ctx, const char *id);
	void *snapshot_ctx; /* for both */
	/* Removes the snapshot of a cache that is deleted (force: its DELETE said so) or expired
	 * or evicted (false); NULL: store_remove.  imcd points it at attach_snapshot_remove, which
	 * refuses (-EBUSY) while overlay pods on this host use the cache's shared lower. */
	int (*remove_snapshot)(struct store *s, const char *id, bool force, imc_error *err);
	/* The chunk store the distribution routes serve and its exporter (api/dist.c; opened by
	 * the caller, may be NULL): the table only hands them to them. */
	struct dist_chunks *chunks;
	struct dist_exporter *exporter;
	/* Lifecycle (0 picks the default; imcd sets them from its flags). */
	unsigned build_workers;	     /* builds at once: 2 */
	double evict_high;	     /* pool used/size that starts eviction: 0.90 */
	double evict_low;	     /* ... and where it stops: 0.80 */
	unsigned sweep_interval_ms;  /* expiry/eviction pass: 60000 */
	unsigned day_seconds;	     /* a retention day: 86400 (shorter only in test builds) */
	unsigned resolve_timeout_ms; /* match=best: one registry resolve's deadline; 0: 30 s */
	unsigned shutdown_grace_ms;  /* how long close waits for running builds before it cancels
				      * them; 0: 30 s */
	unsigned tenant_builds;	     /* builds one tenant may run at once; 0: build_workers, or
				      * build_workers - 1 with multi_tenant */
	bool multi_tenant;	     /* tokens of two or more tenants are configured */
	/* The blob store (<state_dir>/blobs): what no cache, base or running build needs goes
	 * after each build and removal; over this many bytes the least recently used go too
	 * (0: no cap). */
	uint64_t blob_cache_max;
};

/* Load the metadata, repair what a crash left (each repair appended to ret_repairs as a string)
 * and start the build worker. */
int api_caches_open(const struct api_caches_config *cfg, json_t *ret_repairs,
		    struct api_caches **ret, imc_error *err);
/* The chunk store it was given (NULL for a NULL table or none). */
struct dist_chunks *api_caches_chunks(struct api_caches *c);
/* The exporter it was given (NULL for a NULL table or none). */
struct dist_exporter *api_caches_exporter(struct api_caches *c);
/* The ids of the tenant's Ready (and Updating) caches: *ret malloc'ed. */
int api_caches_ready_ids(struct api_caches *c, const char *tenant, char (**ret)[API_ID_MAX],
			 size_t *ret_n, imc_error *err);
/* Stop the workers: running builds get shutdown_grace_ms to end, then they are cancelled (and
 * marked Failed "cancelled by shutdown: …"); queued builds stay Creating on disk (built at the
 * next start). */
void api_caches_close(struct api_caches *c);
/* Persist a new Creating cache and queue its build; ret gets {"id","status"}. */
int api_caches_create(struct api_caches *c, const struct api_caller *who,
		      const struct api_create_request *req, json_t **ret, imc_error *err);
int api_caches_get(struct api_caches *c, const struct api_caller *who, const char *id, json_t **ret,
		   imc_error *err);
int api_caches_list(struct api_caches *c, const struct api_caller *who,
		    const struct api_list_query *q, json_t **ret, imc_error *err);
/* The same as answer bodies (compact JSON and a newline, malloc'ed), from the rendered objects
 * of the caches: no json_t on the way (match=best goes through api_caches_list). */
int api_caches_get_body(struct api_caches *c, const struct api_caller *who, const char *id,
			char **ret, size_t *ret_len, imc_error *err);
int api_caches_list_body(struct api_caches *c, const struct api_caller *who,
			 const struct api_list_query *q, char **ret, size_t *ret_len,
			 imc_error *err);
/* DELETE /v1/imagecaches/{id}[?force=true]: remove the snapshot and the metadata; -EBUSY while
 * attached unless force (its clones keep their own copy).  *ret_status 200
 * {"id","status":"Deleted"}, or 202 {"id","status":"Deleting"} for a cache whose build runs: the
 * build is cancelled, and the cache (with whatever the build left in the store) goes once it has
 * stopped.  A queued build is dropped at once (200). */
int api_caches_delete_args(struct api_caches *c, const struct api_caller *who, const char *id,
			   const struct api_query_arg *args, size_t n_args, json_t **ret,
			   unsigned *ret_status, imc_error *err);
/* The attachments route, for the server's dispatch().  POST /v1/imagecaches/{id}/attachments
 * body {"id"?: "att-…", "host"?: "…"}: record an attach (201; 200 when that id is already
 * recorded); -EBUSY unless Ready.  DELETE …/attachments/{aid}: forget it (404 when unknown).
 * GET …/attachments: the list.  Both move lastUsedAt. */
int api_attachments_dispatch(struct api_caches *c, const struct api_caller *who, enum api_method m,
			     const struct api_match *match, const char *body, size_t len,
			     json_t **ret, unsigned *ret_status, imc_error *err);
/* Something outside the table let go of pool space (imcd: the exporter dropped a removed
 * snapshot's export, which held the snapshot open): the sweeper collects and trims again once
 * quiet.  ctx is the table (NULL: nothing); the signature is dist_exporter_set_on_forgotten's. */
void api_caches_space_changed(void *ctx, const char *id);
/* Can imcd write its metadata?  false with why (a metadata write that failed for want of
 * space, until space returns): /healthz answers 503 with it, creates 507. */
bool api_caches_healthy(struct api_caches *c, char *why, size_t why_size);

/* ---- the metadata's reserve (api/meta_reserve.c) ---------------------------------------------
 * Files of written zeros in caches/ that a status change is written into when the filesystem is
 * full (their blocks are reused: no allocation), so that it still reaches the disk. */
#define API_META_RESERVE_SLOTS 4
#define API_META_RESERVE_SLOT  (256u << 10)
/* Make every missing slot; -ENOSPC (or another errno) when there is no room for them. */
int api_meta_reserve_fill(int dirfd, imc_error *err);
/* Write j as dirfd/name through a slot (durably: fsync, rename, fsync dir); -ENOSPC when no slot
 * is left or j does not fit one. */
int api_meta_reserve_write(int dirfd, const char *name, json_t *j, imc_error *err);

/* ---- metrics (api/metrics.c): GET /metrics in the Prometheus text format 0.0.4 ------------
 * The counters are plain integers updated with __atomic builtins (relaxed): no lock and no
 * allocation per request.  Histograms keep one count per bucket (not cumulative; the last slot
 * is +Inf) and a sum in nanoseconds; the page makes the buckets cumulative and takes _count
 * from the same loaded values, so +Inf always equals _count. */
#define API_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define API_BUILD_BUCKETS	 9  /* 1 5 15 30 60 120 300 600 1800 seconds, then +Inf */
#define API_HTTP_BUCKETS	 11 /* 0.0005 .. 1 seconds, then +Inf */
#define API_HTTP_CODE_MIN	 100
#define API_HTTP_CODE_MAX	 599 /* statuses outside [MIN, MAX] are counted as 500s */
#define API_HTTP_CODES		 (API_HTTP_CODE_MAX - API_HTTP_CODE_MIN + 1)

struct api_metrics {
	uint64_t builds_in_flight;
	uint64_t builds_ready, builds_failed;
	uint64_t build_buckets[API_BUILD_BUCKETS + 1];
	uint64_t build_ns_sum;
	uint64_t pull_bytes; /* increases of the builder's progress "done" */
	uint64_t http_codes[API_HTTP_CODES];
	uint64_t http_buckets[API_HTTP_BUCKETS + 1];
	uint64_t http_ns_sum;
	uint64_t evictions;	   /* caches removed because the pool passed the high watermark */
	uint64_t expirations;	   /* caches removed because their retention ran out */
	uint64_t attaches;	   /* attachments reported */
	uint64_t detaches;	   /* attachments ended */
	uint64_t http_connections; /* open now (a gauge) */
	uint64_t http_conn_events[4]; /* by enum api_conn_event, but API_CONN_OPENED/CLOSED */
};
/* What happened to a client connection (api/conns.c). */
enum api_conn_event {
	API_CONN_TIMED_OUT, /* closed: its request was not all in by its deadline */
	API_CONN_EVICTED,   /* closed, still waiting for its request, to make room at the limit */
	API_CONN_RESERVED,  /* opened in the reserve: /healthz and /metrics only */
	API_CONN_REFUSED,   /* refused when accepted: over the per-client or total limit */
	API_CONN_OPENED,
	API_CONN_CLOSED,
};
/* All of one page: a copy of the counters and the gauges read when it is asked for. */
struct api_metrics_page {
	struct api_metrics m;
	uint64_t caches[API_CACHE_STATUS_COUNT]; /* by enum api_cache_status */
	uint64_t attachments;			 /* attached now, all caches */
	bool have_pool;				 /* false: store_usage failed, no pool samples */
	uint64_t pool_size, pool_used, pool_free;
	uint64_t pool_meta_size, pool_meta_used; /* 0 where the pool has no metadata space */
};
/* Count one finished build / one answered request; m may be NULL (nothing counted). */
void api_metrics_observe_build(struct api_metrics *m, bool ready, uint64_t ns);
void api_metrics_observe_request(struct api_metrics *m, unsigned status, uint64_t ns);
void api_metrics_count_connection(struct api_metrics *m, enum api_conn_event ev);
/* Add bytes to the pulled-bytes counter. */
void api_metrics_add_pull_bytes(struct api_metrics *m, uint64_t n);
/* Copy the counters with atomic loads. */
void api_metrics_load(const struct api_metrics *m, struct api_metrics *ret);
/* The page as a malloc'ed NUL-terminated string. */
int api_metrics_render(const struct api_metrics_page *p, char **ret, imc_error *err);
/* The counters of a cache table (NULL for a NULL table). */
struct api_metrics *api_caches_metrics(struct api_caches *c);
/* Count the caches by status (under the table lock), read the pool usage and the counters.  A
 * pool usage that cannot be read leaves have_pool false; nothing else can fail. */
void api_caches_metrics_page(struct api_caches *c, struct api_metrics_page *ret);

/* ---- the HTTP server (api/server.c) ---------------------------------------------------------- */
/* Client connections (docs/security.md): 0 in a field picks its default. */
#define API_CONNECTIONS_DEFAULT	    1024  /* open at once, all clients */
#define API_CONNECTIONS_MAX	    65536 /* the most --max-connections takes */
#define API_PER_CLIENT_DEFAULT	    64	  /* open at once from one client address */
#define API_RESERVE_DEFAULT	    16	  /* of those, kept for /healthz and /metrics */
#define API_REQUEST_TIMEOUT_DEFAULT 30	  /* seconds for a request to be all in */
#define API_REQUEST_TIMEOUT_MAX	    3600
struct api_http_limits {
	unsigned max_connections;
	unsigned per_client; /* TCP only: a Unix socket's clients have no address */
	unsigned reserve;    /* below max_connections */
	/* A request's line, headers and body must all be in within this many seconds of the
	 * connection opening or of the previous answer on it; trickling bytes does not extend it.
	 */
	unsigned request_timeout_s;
};
struct api_server;
struct api_server_config {
	int listen_fd; /* bound and listening; the server owns it from then on */
	struct api_caches *caches;
	unsigned threads;	       /* 0: a default */
	struct api_http_limits limits; /* resolved (api_http_limits_resolve); zeros: the defaults */
};
/* Started with api_server_start_secure (api/auth.h).  Stop accepting, give in-flight requests a
 * moment to finish, stop. */
void api_server_stop(struct api_server *s);

/* One request, without HTTP (api/handle.c): what the server answers (status, JSON body, Allow
 * header for 405).  The body is a malloc'ed NUL-terminated string. */
struct api_response {
	unsigned status;
	char *body;
	size_t body_len; /* bytes of body; 0: strlen(body) */
	const char *allow;
	const char *content_type; /* NULL: API_CONTENT_TYPE */
	bool close;		  /* "Connection: close" and "Retry-After: 1" */
	unsigned retry_after;	  /* seconds for a Retry-After header; 0: none */
};
/* url may carry a raw "?query" (split with api_query_split). */
void api_handle(struct api_caches *c, const struct api_caller *who, const char *method,
		const char *url, const char *body, size_t len, bool too_large,
		struct api_response *ret);

/* ---- distribution (api/dist.c, docs/distribution.md) -----------------------------------------
 * GET /v1/imagecaches/{id}/index: the chunk index of a Ready cache (*ret_status 200), exported
 * in the background once the cache is Ready (dist/exporter.c): 202 {"id","status":"Exporting"}
 * until it is there (queued then if it was not), or the failure of the last export;
 * GET|HEAD /v1/chunks/{digest}: one zstd chunk, from its file, with Range (206/416) and ETag /
 * If-None-Match (304). */
struct MHD_Connection;
struct MHD_Response;
int api_dist_index(struct api_caches *c, const struct api_caller *who, const char *id,
		   size_t id_len, json_t **ret, unsigned *ret_status, imc_error *err);
/* GET /v1/imagecaches/{id}/trace: the startup trace (404 when none); PUT: store one (body: the
 * trace, dist_trace_parse; 201, or 409 when one is kept already unless ?replace=true).  Auth and
 * tenants as for the index: the cache must be the caller's and Ready. */
int api_dist_trace(struct api_caches *c, const struct api_caller *who, enum api_method m,
		   const char *id, size_t id_len, const struct api_query_arg *args, size_t n_args,
		   const char *body, size_t len, json_t **ret, unsigned *ret_status,
		   imc_error *err);
/* The table's on_snapshot_removed hook, with the exporter as ctx: queue dropping the cache's
 * index and the chunks no other index names (logged when they are freed). */
void api_dist_snapshot_removed(void *ctx, const char *id);
/* The table's on_snapshot_ready hook, with the exporter as ctx: queue the export of the cache's
 * chunk index. */
void api_dist_snapshot_ready(void *ctx, const char *id);
/* The answer to a chunk request: its status and response (NULL on OOM). */
unsigned api_dist_chunk(struct api_caches *c, const struct api_caller *who,
			struct MHD_Connection *conn, const char *method, const char *digest,
			struct MHD_Response **ret);

#endif
