/* Chunked, content-addressed export of snapshots (docs/distribution.md).
 *
 * A snapshot is cut into fixed-size chunks; each chunk that is not all zeros is compressed with
 * zstd and stored once, named by the sha256 of its uncompressed bytes, in
 * <state>/chunks/sha256/<2 hex>/<64 hex>.zst.  A chunk index (JSON) lists offset -> digest (and
 * the digest and size of the compressed blob, for OCI descriptors) plus the snapshot's size and
 * sha256.  The index of a cache is kept in <state>/chunks/index/<cache-id>.json. */
#ifndef IMC_STORE_CHUNKS_H
#define IMC_STORE_CHUNKS_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"
#include "store.h"

#define CHUNKS_MEDIA_TYPE_INDEX "application/vnd.imcache.index.v1+json"
#define CHUNKS_MEDIA_TYPE_CHUNK "application/vnd.imcache.chunk.v1.zstd"
#define CHUNKS_ARTIFACT_TYPE	"application/vnd.imcache.snapshot.v1"

#define CHUNKS_SIZE_DEFAULT (4U << 20) /* 4 MiB: see docs/distribution.md */
#define CHUNKS_SIZE_MIN	    (64U << 10)
#define CHUNKS_SIZE_MAX	    (64U << 20)
#define CHUNKS_SNAPSHOT_MAX (16ULL << 40) /* a snapshot's size */
#define CHUNKS_INDEX_MAX    (64U << 20)	  /* bytes of an index */
#define CHUNKS_COUNT_MAX    (1U << 22)	  /* chunks in one index */
#define CHUNKS_ZSTD_LEVEL   3
#define CHUNKS_DIGEST_LEN   (7 + IMC_SHA256_HEX_LEN) /* "sha256:" + hex */

struct chunk_entry {
	uint64_t offset;
	char digest[CHUNKS_DIGEST_LEN + 1]; /* of the uncompressed content */
	char blob[CHUNKS_DIGEST_LEN + 1];   /* of the compressed (zstd) blob */
	uint64_t csize;			    /* bytes of the compressed blob */
};

struct chunk_index {
	char cache_id[64];
	uint32_t chunk_size;
	uint64_t size;			    /* of the snapshot */
	char sha256[CHUNKS_DIGEST_LEN + 1]; /* of the whole snapshot, zeros included */
	struct chunk_entry *chunks;	    /* by offset; all-zero chunks are absent */
	size_t n_chunks;
};

void chunk_index_free(struct chunk_index *ix);
/* Bytes of the chunk at offset (the last one may be short). */
uint64_t chunk_index_len(const struct chunk_index *ix, uint64_t offset);
/* Parse and check an index: every field typed and capped, unknown fields refused, offsets
 * multiples of chunkSize, strictly increasing and inside size. */
int chunk_index_parse(const char *buf, size_t len, struct chunk_index *ret, imc_error *err);
/* The JSON of an index (compact, fixed key order: its bytes are what its digest names). */
int chunk_index_render(const struct chunk_index *ix, char **ret, size_t *ret_len, imc_error *err);

/* The chunk store under <state>/chunks. */
struct chunk_store {
	int dirfd; /* <state>/chunks */
};
int chunk_store_open(const char *state_dir, struct chunk_store *ret, imc_error *err);
void chunk_store_close(struct chunk_store *cs);
/* "sha256/<2>/<hex>.zst" of a digest ("sha256:<hex>") into buf (at least 96 bytes). */
int chunk_blob_path(const char *digest, char *buf, size_t size, imc_error *err);
/* Open the stored compressed chunk of digest read-only (-ENOENT when absent). */
int chunk_store_open_blob(struct chunk_store *cs, const char *digest, int *ret_fd, imc_error *err);

/* Export snapshot id (read through a read-only activation, so any driver works): cut, hash,
 * compress and store its chunks, write <state>/chunks/index/<id>.json; a stored index is
 * reused.  ret (optional) gets the index bytes. */
int chunks_export(struct store *s, struct chunk_store *cs, const char *id, uint32_t chunk_size,
		  char **ret, size_t *ret_len, imc_error *err);
/* The stored index bytes of id (-ENOENT when not exported yet). */
int chunks_read_index(struct chunk_store *cs, const char *id, char **ret, size_t *ret_len,
		      imc_error *err);

/* Drop the index of id and every stored chunk that no remaining index names (the caller keeps
 * exports out meanwhile: a chunk of an export in flight is in no index yet).  *ret_freed gets
 * the bytes freed.  Nothing to do when id was never exported. */
int chunks_forget(struct chunk_store *cs, const char *id, uint64_t *ret_freed, imc_error *err);
/* Remove the chunk and index files that an export killed half way left under temporary names
 * (those a live export holds stay); *ret_n and *ret_bytes get how many and what they took. */
int chunks_remove_partial(const char *state_dir, size_t *ret_n, uint64_t *ret_bytes,
			  imc_error *err);
/* Compress / decompress-and-verify one chunk. */
int chunk_compress(const void *data, size_t len, void **ret, size_t *ret_len, imc_error *err);
/* Decompress blob into out (exactly want bytes) and check sha256 == digest. */
int chunk_decompress_verify(const void *blob, size_t blob_len, const char *digest, void *out,
			    size_t want, imc_error *err);
bool chunk_is_zero(const void *data, size_t len);
/* All len bytes at off, going on after short transfers and EINTR: 0, or a negative errno (-EIO
 * when the file ends or nothing moves).  No imc_error: callers name the device. */
int chunk_pread_full(int fd, void *buf, size_t len, uint64_t off);
int chunk_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

#endif
