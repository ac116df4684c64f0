/* dist/: chunked, content-addressed distribution of snapshots (docs/distribution.md).
 *
 * A snapshot is cut into fixed-size chunks; each chunk that is not all zeros is compressed with
 * zstd and stored once, named by the sha256 of its uncompressed bytes, in
 * <state>/chunks/sha256/<2 hex>/<64 hex>.zst.  The chunk index (its format: oci/index.c) of a
 * cache is kept in <state>/chunks/index/<cache-id>.json.  chunks.c is the chunk store and the
 * export, exporter.c the thread that runs exports in the background, serve.c what a server
 * answers for a chunk, fetch.c the agent's fetch of a snapshot it lacks (from imcd or an OCI
 * registry) into its local store. */
#ifndef IMC_DIST_H
#define IMC_DIST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"
#include "../oci/oci.h"
#include "../store/store.h"

#define DIST_CHUNK_SIZE_DEFAULT (4U << 20) /* 4 MiB: see docs/distribution.md */
#define DIST_ZSTD_LEVEL		3

/* Is size a chunk size an export may use: a power of two in OCI_CHUNK_SIZE_MIN..MAX. */
bool dist_chunk_size_valid(uint64_t size);

/* ---- the chunk store (chunks.c): <state>/chunks -------------------------------------------
 * An object its owner creates (imcd at start) and passes to whoever serves or exports.  Exports
 * run one at a time (seconds each); a forget waits for the export in flight (a chunk of an
 * export in flight is in no index yet); opening a blob never waits. */
struct dist_chunks;
/* s (may be NULL: nothing can be exported) is the store whose snapshots are exported. */
int dist_chunks_open(const char *state_dir, struct store *s, struct dist_chunks **ret,
		     imc_error *err);
void dist_chunks_close(struct dist_chunks *cs);
/* <state>/chunks, dist's directory (the chunk store's and the fetcher's), malloc'ed (NULL: out of
 * memory). */
char *dist_dir(const char *state_dir);
/* "sha256/<2>/<hex>.zst" of a digest ("sha256:<hex>") into buf (at least 96 bytes). */
int dist_chunk_path(const char *digest, char *buf, size_t size, imc_error *err);
/* Does the exported index of snapshot id name the chunk digest?  *ret false when the snapshot
 * has no exported index. */
int dist_index_has_chunk(struct dist_chunks *cs, const char *id, const char *digest, bool *ret,
			 imc_error *err);
/* Open the stored compressed chunk of digest read-only (-ENOENT when absent). */
int dist_chunks_open_blob(struct dist_chunks *cs, const char *digest, int *ret_fd, imc_error *err);

/* Export snapshot id (read through a read-only activation, so any driver works): cut, hash,
 * compress and store its chunks, write <state>/chunks/index/<id>.json; a stored index is
 * reused.  ret (optional) gets the index bytes.  chunk_size 0: DIST_CHUNK_SIZE_DEFAULT.
 * cancel (may be NULL) is read before each chunk: once true the export ends -ECANCELED and
 * writes no index (the chunks stored so far are named by none: dist_forget or a later export
 * of the same snapshot settles them). */
int dist_export(struct dist_chunks *cs, const char *id, uint32_t chunk_size,
		const atomic_bool *cancel, char **ret, size_t *ret_len, imc_error *err);
/* Drop the index of id and every stored chunk that no remaining index names.  *ret_freed gets
 * the bytes freed.  Nothing to do when id was never exported. */
int dist_forget(struct dist_chunks *cs, const char *id, uint64_t *ret_freed, imc_error *err);
/* Remove the chunk and index files that an export killed half way left under temporary names
 * in <state_dir>/chunks (those a live export holds stay); *ret_n and *ret_bytes get how many
 * and what they took. */
int dist_chunks_remove_partial(const char *state_dir, size_t *ret_n, uint64_t *ret_bytes,
			       imc_error *err);
/* The stored index bytes of id (-ENOENT when not exported yet); never exports. */
int dist_read_index(struct dist_chunks *cs, const char *id, char **ret, size_t *ret_len,
		    imc_error *err);

/* ---- the exporter (exporter.c): one thread that runs exports and forgets in order ----------
 * imcd queues the export of a cache once it is Ready and the forget of one that is gone, so no
 * request thread runs an export.  An export asked for twice is queued once; a forget drops a
 * queued export of the same cache and runs after one in flight. */
#define DIST_ID_MAX 64 /* a cache id's buffer */
struct dist_exporter;
/* chunk_size: that of new exports (a power of two, OCI_CHUNK_SIZE_MIN..MAX; 0: the default);
 * an index already stored keeps its own, which every reader takes from the index. */
int dist_exporter_start(struct dist_chunks *cs, uint32_t chunk_size, struct dist_exporter **ret,
			imc_error *err);
/* Ends after the job running now, and the forgets still queued (exports queued are dropped). */
void dist_exporter_stop(struct dist_exporter *x);
/* Queue an export of id (once: nothing when it is queued or running already). */
int dist_exporter_queue(struct dist_exporter *x, const char *id, imc_error *err);
/* Queue dropping id's index and the chunks no other index names (after an export of id that
 * runs now; a queued one is dropped).  When it cannot be queued, it runs now. */
int dist_exporter_forget(struct dist_exporter *x, const char *id, imc_error *err);
/* fn(ctx, id) runs on the exporter thread after each forget of id, when an export of id that
 * ran has let go of the snapshot (imcd: the pool may be trimmed now).  NULL clears it; a call
 * in progress ends first, so ctx may be freed once this returns. */
void dist_exporter_set_on_forgotten(struct dist_exporter *x, void (*fn)(void *ctx, const char *id),
				    void *ctx);
/* -EINPROGRESS while an export of id is queued or running; the failure of its last export
 * (reported once); else 0. */
int dist_exporter_state(struct dist_exporter *x, const char *id, imc_error *err);

/* Compress / decompress-and-verify one chunk. */
int dist_chunk_compress(const void *data, size_t len, void **ret, size_t *ret_len, imc_error *err);
/* Decompress blob into out (exactly want bytes) and check sha256 == digest. */
int dist_chunk_decompress_verify(const void *blob, size_t blob_len, const char *digest, void *out,
				 size_t want, imc_error *err);
bool dist_chunk_is_zero(const void *data, size_t len);
/* All len bytes at off, going on after short transfers and EINTR: 0, or a negative errno (-EIO
 * when the file ends or nothing moves).  Errno-only leaf helpers (common/imc.h): callers name
 * the device. */
int dist_pread_full(int fd, void *buf, size_t len, uint64_t off);
int dist_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* ---- serving a chunk (serve.c) --------------------------------------------------------------
 * GET|HEAD /v1/chunks/{digest}: one zstd chunk, from its file, with Range (206/416) and ETag /
 * If-None-Match (304).  The HTTP server sends what the answer says. */
struct dist_chunk_answer {
	unsigned status;     /* 200, 206 (range), 304 (not modified) or 416 (unsatisfiable) */
	int fd;		     /* 200, 206: the blob, now the caller's; else -1 */
	uint64_t start, len; /* 200, 206: the bytes of fd to send */
	char etag[OCI_DIGEST_MAX + 3];
	char content_range[96]; /* 206, 416: the Content-Range header; else "" */
};
/* if_none_match and range: the request's headers (NULL when absent).  Fails (err set) when the
 * digest is malformed, the chunk is not stored (-ENOENT) or cannot be read. */
int dist_chunk_answer(struct dist_chunks *cs, const char *digest, const char *if_none_match,
		      const char *range, struct dist_chunk_answer *ret, imc_error *err);

/* ---- fetching a snapshot a host has never seen (fetch.c) ------------------------------------
 * Its chunk index from imcd (or an OCI registry), the chunks it lacks in parallel, each
 * verified, written into a new local snapshot; chunks another local snapshot already holds are
 * copied locally. */
#define DIST_FETCH_PARALLEL_MAX 64

/* The sources of chunks (and of the index): imcd (--server) and the OCI artifact
 * (--registry-ref).  With both, they are tried in the configured order; a source whose fetches
 * keep failing for longer than its deadline is abandoned for the other (docs/distribution.md,
 * "Sources"). */
enum dist_source_kind { DIST_SOURCE_SERVER, DIST_SOURCE_REGISTRY, DIST_SOURCE_KINDS };
#define DIST_SOURCE_DEADLINE_DEFAULT_MS 10000ULL /* --source-deadline */
#define DIST_READ_DEADLINE_DEFAULT_MS	60000ULL /* --read-deadline (a lazy read) */
#define DIST_DEADLINE_MAX_S		86400ULL

struct dist_fetch_config {
	const char *server;	     /* imcd base URL ("http://host:port"); NULL: none */
	const char *token;	     /* bearer token for imcd; NULL: none */
	const char *registry_ref;    /* the OCI ref imcctl push wrote; NULL: none */
	bool registry_first;	     /* with both: the registry is tried first (--source-order) */
	uint64_t source_deadline_ms; /* a failing source is abandoned after this; 0: default */
	uint64_t read_deadline_ms;   /* a lazy read retries this long, then EIO; 0: default */
	const char *const *insecure_registries; /* plain-HTTP registries (NULL-terminated) */
	unsigned parallel;			/* chunk downloads at once; 0: default */
	uint64_t cache_size; /* local store limit in bytes (LRU of unattached snapshots); 0: none */
	/* The snapshots in use, never evicted: a JSON array of objects whose "cacheId" names one
	 * (imc-attach passes attach_list, its attach records).  NULL: none is in use. */
	int (*list_in_use)(struct store *s, json_t **ret, imc_error *err);
	/* Removes an evicted snapshot (force false); -EBUSY keeps it, in use.  NULL: store_remove.
	 * imc-attach passes attach_snapshot_remove, which releases the cache's warm shared lower
	 * first. */
	int (*remove_snapshot)(struct store *s, const char *id, bool force, imc_error *err);
	/* A lazy lower's startup trace (with server only): recorded for trace_window_s seconds
	 * (0: DIST_TRACE_WINDOW_DEFAULT) unless no_trace. */
	unsigned trace_window_s;
	bool no_trace;
};

struct dist_fetch_stats {
	uint64_t chunks, zero_chunks;	 /* in the index; zero ones are never sent */
	uint64_t fetched, fetched_bytes; /* chunks over the network, compressed bytes */
	uint64_t local, local_bytes;	 /* chunks copied from another local snapshot */
	uint64_t retries, refetched_corrupt;
	uint64_t abandoned; /* sources abandoned over their deadline */
	uint64_t evicted;   /* snapshots evicted for space */
	uint64_t ns;
};

/* Make snapshot id local: nothing to do when the store has it (its last use is recorded);
 * otherwise fetch it.  On any failure the half-written volume is removed. */
int dist_fetch_snapshot(struct store *s, const struct dist_fetch_config *cfg, const char *id,
			struct dist_fetch_stats *ret_stats, imc_error *err);

/* --source-order: "server", "registry", "server,registry" or "registry,server" (a source not
 * named comes last); *ret_registry_first says which comes first. */
int dist_source_order_parse(const char *s, bool *ret_registry_first, imc_error *err);
/* A deadline in whole seconds, 1 to DIST_DEADLINE_MAX_S, into milliseconds; what names it
 * (the flag or the variable) in the error. */
int dist_deadline_parse(const char *s, const char *what, uint64_t *ret_ms, imc_error *err);

/* A run of zero chunks between data chunks. */
struct dist_gap {
	uint64_t start, end;
};
#ifdef IMC_TESTING
/* The gaps the fetcher fills with zeros (all but the keep largest; none when there are at most
 * keep: the store's fill hints), so that the reflink seal has nothing to compact.  *ret is
 * malloc'ed (NULL when none). */
int fetch_small_gaps(const struct oci_chunk_index *ix, size_t keep, struct dist_gap **ret,
		     size_t *ret_n);
#endif

/* ---- startup traces (trace.c; imcd keeps them in chunks.c) -----------------------------------
 * {"mediaType": DIST_TRACE_MEDIA_TYPE, "chunkSize": N, "offsets": [...]}: the offsets of the data
 * chunks a lazy lower's reads touched first, in that order (docs/distribution.md). */
#define DIST_TRACE_MEDIA_TYPE	  "application/vnd.imcache.trace.v1+json"
#define DIST_TRACE_BYTES_MAX	  (1024 * 1024)
#define DIST_TRACE_ENTRIES_MAX	  65536
#define DIST_TRACE_WINDOW_DEFAULT 30   /* seconds */
#define DIST_TRACE_WINDOW_MAX	  3600 /* seconds */
struct dist_trace {
	uint32_t chunk_size;
	uint64_t *offsets;
	size_t n;
};
/* The shape only (any offset below OCI_SNAPSHOT_MAX): more than DIST_TRACE_BYTES_MAX bytes or
 * DIST_TRACE_ENTRIES_MAX offsets is -EFBIG, anything else wrong -EINVAL (-ERANGE: a chunkSize out
 * of range). */
int dist_trace_parse(const char *buf, size_t len, struct dist_trace *ret, imc_error *err);
int dist_trace_render(const struct dist_trace *t, char **ret, size_t *ret_len, imc_error *err);
void dist_trace_free(struct dist_trace *t);
/* What imcd stores: ix's chunk size, each offset a data chunk of ix, none twice (-EINVAL naming
 * the first entry that is not). */
int dist_trace_check(const struct dist_trace *t, const struct oci_chunk_index *ix, imc_error *err);
/* imcd: store t as id's trace (chunks/trace/<id>.json, written atomically) once checked against
 * id's exported index (-EBUSY when it has none yet); an existing trace is kept (-EBUSY) unless
 * replace.  Removed with the index by dist_forget. */
int dist_trace_store(struct dist_chunks *cs, const char *id, const struct dist_trace *t,
		     bool replace, imc_error *err);
/* imcd: the stored trace's bytes (-ENOENT when none). */
int dist_trace_read(struct dist_chunks *cs, const char *id, char **ret, size_t *ret_len,
		    imc_error *err);
/* The agent: GET (-ENOENT when imcd has none) and PUT of id's trace at cfg->server. */
int dist_trace_fetch(const struct dist_fetch_config *cfg, const char *id, struct dist_trace *ret,
		     imc_error *err);
int dist_trace_send(const struct dist_fetch_config *cfg, const char *id, const struct dist_trace *t,
		    imc_error *err);

/* ---- the lazy lower's backend (lazy.c): a snapshot served before it is local ----------------
 * A FUSE file system (libfuse3) with one read-only file, DIST_LAZY_FILE, the snapshot image,
 * backed by a new store volume that fills as it is read: a read of a range whose chunk is not
 * local fetches that chunk at once (verified; one fetch however many readers wait for it),
 * while background threads fetch the rest in order.  Once every chunk is local the volume is
 * sealed as the snapshot (an ordinary one: later attaches use it without FUSE) and the file
 * keeps being served from it until the file system is unmounted. */
#define DIST_LAZY_FILE "image"
struct dist_lazy;
struct dist_lazy_stats {
	uint64_t chunks, local;	       /* data chunks in the index, and local now */
	uint64_t demand, demand_bytes; /* fetched for a read, compressed bytes */
	uint64_t background, bg_bytes; /* fetched by the background threads */
	uint64_t failed;	       /* fetches that failed (the read got EIO) */
	/* Startup trace: the chunks of imcd's trace taken first (trace_used of its entries: the
	 * others were not data chunks of the index, or twice) and of them fetched by the
	 * background threads (prefetched, part of background), or recorded here (trace_recorded)
	 * and whether imcd took them. */
	uint64_t trace_used, prefetched, prefetched_bytes, trace_recorded;
	bool trace_sent;
	bool sealed;
};
/* The index of id (the store must not have it), room in the store, the volume made. */
int dist_lazy_open(struct store *s, const struct dist_fetch_config *cfg, const char *id,
		   struct dist_lazy **ret, imc_error *err);
/* Mount the file system at mountpoint (a directory); DIST_LAZY_FILE appears in it. */
int dist_lazy_mount(struct dist_lazy *l, const char *mountpoint, imc_error *err);
/* Serve until the file system is unmounted (or SIGTERM/SIGINT), fetching in the background
 * and sealing when complete. */
int dist_lazy_run(struct dist_lazy *l, imc_error *err);
void dist_lazy_get_stats(struct dist_lazy *l, struct dist_lazy_stats *ret);
/* Wait until the counts differ from *seen (a chunk made local, a fetch failed, the seal), or
 * *quit is set (then call dist_lazy_wake), or the server stops; *ret gets them.  true: they
 * differ. */
bool dist_lazy_wait_stats(struct dist_lazy *l, const struct dist_lazy_stats *seen, const bool *quit,
			  struct dist_lazy_stats *ret);
/* Wake dist_lazy_wait_stats (after setting its *quit). */
void dist_lazy_wake(struct dist_lazy *l);
/* Unmount if still mounted, stop the fetchers; a volume that was not sealed is removed. */
void dist_lazy_close(struct dist_lazy *l);
/* Remove what a lazy server of id that died left in the store (its unsealed volume). */
int dist_lazy_forget(struct store *s, const char *id, imc_error *err);

#endif
