/* Chunked, content-addressed export of snapshots: the chunk store, an object its owner creates. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "dist.h"

#define INDEX_DIR "index"
#define TRACE_DIR "trace" /* <state>/chunks/trace/<id>.json: startup traces (trace.c) */

struct dist_chunks {
	int dirfd; /* <state>/chunks */
	struct store *store;
	pthread_mutex_t export_lock; /* one export at a time; forgets wait for it */
};

bool dist_chunk_is_zero(const void *data, size_t len)
{
	const unsigned char *p = data;
	static const unsigned char zero[4096];

	while (len >= sizeof(zero)) {
		if (memcmp(p, zero, sizeof(zero)) != 0)
			return false;
		p += sizeof(zero);
		len -= sizeof(zero);
	}
	return memcmp(p, zero, len) == 0;
}

/* ---- compression ----------------------------------------------------------------------------- */

int dist_chunk_compress(const void *data, size_t len, void **ret, size_t *ret_len, imc_error *err)
{
	size_t cap = ZSTD_compressBound(len), n;
	_cleanup_free_ void *out = malloc(cap);

	if (!out)
		return imc_err(err, ENOMEM, "out of memory");
	/* One frame, fixed level, no threads: the same content always gives the same blob. */
	n = ZSTD_compress(out, cap, data, len, DIST_ZSTD_LEVEL);
	if (ZSTD_isError(n))
		return imc_err(err, EIO, "zstd: %s", ZSTD_getErrorName(n));
	*ret = steal_pointer(&out);
	*ret_len = n;
	return 0;
}

int dist_chunk_decompress_verify(const void *blob, size_t blob_len, const char *digest, void *out,
				 size_t want, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1], got[IMC_SHA256_HEX_LEN + 1];
	unsigned long long fsize = ZSTD_getFrameContentSize(blob, blob_len);
	size_t n;

	if (imc_digest_parse(digest, hex, err) < 0)
		return -EINVAL;
	/* The frame header says how much it holds: refuse a bomb before decompressing. */
	if (fsize != want)
		return imc_err(err, EBADMSG, "chunk %s: frame holds %llu bytes, want %zu", digest,
			       fsize, want);
	n = ZSTD_decompress(out, want, blob, blob_len);
	if (ZSTD_isError(n))
		return imc_err(err, EBADMSG, "chunk %s: zstd: %s", digest, ZSTD_getErrorName(n));
	if (n != want)
		return imc_err(err, EBADMSG, "chunk %s: %zu bytes, want %zu", digest, n, want);
	if (imc_sha256_hex(out, n, got, err) < 0)
		return err->code;
	if (strcmp(got, hex) != 0)
		return imc_err(err, EBADMSG, "chunk %s: digest mismatch (content is sha256:%.12s…)",
			       digest, got);
	return 0;
}

/* ---- the chunk store ------------------------------------------------------------------------- */

char *dist_dir(const char *state_dir)
{
	return imc_path_join(state_dir, "chunks");
}

int dist_chunks_open(const char *state_dir, struct store *s, struct dist_chunks **ret,
		     imc_error *err)
{
	_cleanup_free_ char *dir = dist_dir(state_dir);
	_cleanup_free_ char *idx = dir ? imc_path_join(dir, INDEX_DIR) : NULL;
	struct dist_chunks *cs;
	int fd;

	if (!idx)
		return imc_err(err, ENOMEM, "out of memory");
	if (imc_mkdir_p(idx, 0700, err) < 0)
		return err->code;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0 && mkdirat(fd, TRACE_DIR, 0700) < 0 && errno != EEXIST) {
		int e = errno;
		close(fd);
		return imc_err_sys(err, e, "%s/" TRACE_DIR, dir);
	}
	if (fd < 0)
		return imc_err_sys(err, errno, "%s", dir);
	cs = calloc(1, sizeof(*cs));
	if (!cs) {
		close(fd);
		return imc_err(err, ENOMEM, "out of memory");
	}
	cs->dirfd = fd;
	cs->store = s;
	pthread_mutex_init(&cs->export_lock, NULL);
	*ret = cs;
	return 0;
}

void dist_chunks_close(struct dist_chunks *cs)
{
	if (!cs)
		return;
	close(cs->dirfd);
	pthread_mutex_destroy(&cs->export_lock);
	free(cs);
}

int dist_chunk_path(const char *digest, char *buf, size_t size, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];

	if (imc_digest_parse(digest, hex, err) < 0)
		return -EINVAL;
	snprintf(buf, size, "sha256/%.2s/%s.zst", hex, hex);
	return 0;
}

int dist_chunks_open_blob(struct dist_chunks *cs, const char *digest, int *ret_fd, imc_error *err)
{
	char path[128];
	int fd;

	if (dist_chunk_path(digest, path, sizeof(path), err) < 0)
		return -EINVAL;
	fd = openat(cs->dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return imc_err_sys(err, errno, "chunk %s", digest);
	*ret_fd = fd;
	return 0;
}

/* Store a compressed chunk under its name (tmp + rename: a reader never sees half of one). */
static int store_blob(struct dist_chunks *cs, const char *path, const void *blob, size_t len,
		      imc_error *err)
{
	char dir[16], tmp[160];
	_cleanup_close_ int fd = -1;
	int r;

	snprintf(dir, sizeof(dir), "%.9s", path); /* "sha256/xx" */
	if (mkdirat(cs->dirfd, "sha256", 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "chunks/sha256");
	if (mkdirat(cs->dirfd, dir, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "chunks/%s", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d.%lu", path, getpid(), (unsigned long)pthread_self());
	fd = openat(cs->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "chunks/%s", tmp);
	imc_hold_file(fd); /* one nobody holds is removed at the next start */
	r = imc_write_all(fd, blob, len);
	imc_stop_point("chunk-write");
	if (r < 0 || renameat(cs->dirfd, tmp, cs->dirfd, path) < 0) {
		r = r < 0 ? r : -errno;
		unlinkat(cs->dirfd, tmp, 0);
		return imc_err_sys(err, -r, "chunks/%s", path);
	}
	return 0;
}

/* The digest of a stored blob (it was stored by an earlier export: hash what is there). */
static int hash_fd(int fd, char out[OCI_DIGEST_MAX + 1], uint64_t *ret_size, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	_cleanup_free_ char *buf = malloc(1 << 20);
	imc_sha256 h;
	uint64_t total = 0;
	ssize_t n;

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	if (imc_sha256_init(&h, err) < 0)
		return err->code;
	while ((n = read(fd, buf, 1 << 20)) > 0) {
		imc_sha256_update(&h, buf, (size_t)n);
		total += (uint64_t)n;
	}
	if (n < 0) {
		imc_sha256_free(&h);
		return imc_err_sys(err, errno, "read chunk");
	}
	imc_sha256_final_hex(&h, hex);
	snprintf(out, OCI_DIGEST_MAX + 1, "sha256:%s", hex);
	*ret_size = total;
	return 0;
}

/* Store one non-zero chunk (once per content) and fill its entry. */
static int export_chunk(struct dist_chunks *cs, const void *data, size_t len,
			struct oci_chunk_entry *e, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1], path[128];
	_cleanup_free_ void *blob = NULL;
	_cleanup_close_ int fd = -1;
	size_t blen;

	if (imc_sha256_hex(data, len, hex, err) < 0)
		return err->code;
	snprintf(e->digest, sizeof(e->digest), "sha256:%s", hex);
	dist_chunk_path(e->digest, path, sizeof(path), err);
	fd = openat(cs->dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0)
		return hash_fd(fd, e->blob, &e->csize, err);
	if (dist_chunk_compress(data, len, &blob, &blen, err) < 0)
		return err->code;
	if (imc_sha256_hex(blob, blen, hex, err) < 0)
		return err->code;
	snprintf(e->blob, sizeof(e->blob), "sha256:%s", hex);
	e->csize = blen;
	return store_blob(cs, path, blob, blen, err);
}

/* pread or pwrite all of len bytes at off: short transfers and EINTR go on. */
static int pio_full(int fd, char *buf, size_t len, uint64_t off, bool writing)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = writing ? pwrite(fd, buf + done, len - done, (off_t)(off + done))
				    : pread(fd, buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (size_t)n;
	}
	return 0;
}

int dist_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	return pio_full(fd, buf, len, off, false);
}

int dist_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	return pio_full(fd, (char *)buf, len, off, true); /* only ever written from */
}

#ifdef IMC_TESTING
/* Test builds: after its first chunk an export waits while the file $IMC_EXPORT_HOLD does not
 * exist (and nobody cancels it), so that a test finds an export in flight. */
static void test_hold(const struct oci_chunk_index *ix, const atomic_bool *cancel)
{
	const char *hold = secure_getenv("IMC_EXPORT_HOLD");
	bool said = false;

	while (hold && *hold && access(hold, F_OK) < 0 && !(cancel && atomic_load(cancel))) {
		if (!said)
			imc_info("cache %s: export held until %s exists (test build)", ix->cache_id,
				 hold);
		said = true;
		usleep(20000);
	}
}
#else
static void test_hold(const struct oci_chunk_index *ix, const atomic_bool *cancel)
{
	(void)ix;
	(void)cancel;
}
#endif

/* Cut the device into chunks; ix gets the entries and the whole file's digest. */
static int export_device(struct dist_chunks *cs, int fd, struct oci_chunk_index *ix,
			 const atomic_bool *cancel, imc_error *err)
{
	size_t cap = (ix->size + ix->chunk_size - 1) / ix->chunk_size;
	_cleanup_free_ void *buf = malloc(ix->chunk_size);
	char hex[IMC_SHA256_HEX_LEN + 1];
	imc_sha256 h;
	int r = 0;

	ix->chunks = calloc(cap + 1, sizeof(*ix->chunks));
	if (!buf || !ix->chunks)
		return imc_err(err, ENOMEM, "out of memory");
	if (imc_sha256_init(&h, err) < 0)
		return err->code;
	for (uint64_t off = 0; off < ix->size && r == 0; off += ix->chunk_size) {
		size_t len = (size_t)oci_chunk_index_len(ix, off);
		if (off)
			test_hold(ix, cancel);
		if (cancel && atomic_load(cancel)) {
			r = imc_err(err, ECANCELED, "cancelled at %" PRIu64 " of %" PRIu64 " bytes",
				    off, ix->size);
			break;
		}
		if ((r = dist_pread_full(fd, buf, len, off)) < 0) {
			r = imc_err_sys(err, -r, "read at %" PRIu64, off);
			break;
		}
		imc_sha256_update(&h, buf, len);
		if (dist_chunk_is_zero(buf, len))
			continue;
		ix->chunks[ix->n_chunks].offset = off;
		r = export_chunk(cs, buf, len, &ix->chunks[ix->n_chunks], err);
		if (r == 0)
			ix->n_chunks++;
	}
	if (r < 0) {
		imc_sha256_free(&h);
		return r;
	}
	imc_sha256_final_hex(&h, hex);
	snprintf(ix->sha256, sizeof(ix->sha256), "sha256:%s", hex);
	return 0;
}

int dist_read_index(struct dist_chunks *cs, const char *id, char **ret, size_t *ret_len,
		    imc_error *err)
{
	char name[128];
	_cleanup_close_ int dfd = -1;
	_cleanup_free_ char *path = NULL;

	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	snprintf(name, sizeof(name), INDEX_DIR "/%s.json", id);
	dfd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0)
		return imc_err_sys(err, errno, "chunk index of %s", id);
	if (asprintf(&path, "/proc/self/fd/%d", dfd) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return imc_read_file(path, OCI_INDEX_MAX, ret, ret_len, err);
}

static int write_index(struct dist_chunks *cs, const char *id, const char *buf, size_t len,
		       imc_error *err)
{
	char name[128], tmp[160];
	_cleanup_close_ int fd = -1;
	int r;

	snprintf(name, sizeof(name), INDEX_DIR "/%s.json", id);
	snprintf(tmp, sizeof(tmp), INDEX_DIR "/.%s.json.tmp", id);
	fd = openat(cs->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "chunks/%s", tmp);
	imc_hold_file(fd);
	r = imc_write_all(fd, buf, len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(cs->dirfd, tmp, cs->dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(cs->dirfd, tmp, 0);
		return imc_err_sys(err, -r, "chunks/%s", name);
	}
	return 0;
}

static int export_snapshot(struct store *s, struct dist_chunks *cs, const char *id,
			   uint32_t chunk_size, const atomic_bool *cancel, char **ret,
			   size_t *ret_len, imc_error *err)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	struct store_object_info info;
	struct store_dev dev = {.fd = -1};
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r;

	r = dist_read_index(cs, id, &buf, &len, err);
	if (r != -ENOENT) {
		if (r == 0 && ret) {
			*ret = steal_pointer(&buf);
			*ret_len = len;
		}
		return r;
	}
	imc_err_clear(err);
	if (store_stat(s, STORE_SNAPSHOT, id, &info, err) < 0)
		return err->code;
	if (info.size == 0 || info.size > OCI_SNAPSHOT_MAX)
		return imc_err(err, EFBIG, "snapshot %s: size %" PRIu64 " out of range", id,
			       info.size);
	snprintf(ix.cache_id, sizeof(ix.cache_id), "%s", id);
	ix.chunk_size = chunk_size ? chunk_size : DIST_CHUNK_SIZE_DEFAULT;
	ix.size = info.size;
	if (store_activate(s, STORE_SNAPSHOT, id, STORE_ACTIVATE_READ_ONLY, &dev, err) < 0)
		return err->code;
	r = export_device(cs, dev.fd, &ix, cancel, err);
	store_deactivate(s, STORE_SNAPSHOT, id, &dev, NULL);
	if (r < 0)
		return imc_err_wrap(err, "export snapshot %s", id);
	if (oci_chunk_index_render(&ix, &buf, &len, err) < 0 ||
	    write_index(cs, id, buf, len, err) < 0)
		return err->code;
	if (ret) {
		*ret = steal_pointer(&buf);
		*ret_len = len;
	}
	return 0;
}

bool dist_chunk_size_valid(uint64_t size)
{
	return size >= OCI_CHUNK_SIZE_MIN && size <= OCI_CHUNK_SIZE_MAX && !(size & (size - 1));
}

int dist_export(struct dist_chunks *cs, const char *id, uint32_t chunk_size,
		const atomic_bool *cancel, char **ret, size_t *ret_len, imc_error *err)
{
	int r;

	if (chunk_size && !dist_chunk_size_valid(chunk_size))
		return imc_err(err, EINVAL, "chunk size %" PRIu32 ": want a power of two in %u-%u",
			       chunk_size, OCI_CHUNK_SIZE_MIN, OCI_CHUNK_SIZE_MAX);
	if (!cs->store)
		return imc_err(err, ESHUTDOWN, "no store");
	/* One export at a time: a second request for the same cache waits and reads the index
	 * the first one wrote. */
	pthread_mutex_lock(&cs->export_lock);
	r = export_snapshot(cs->store, cs, id, chunk_size, cancel, ret, ret_len, err);
	pthread_mutex_unlock(&cs->export_lock);
	return r;
}

/* ---- forgetting a snapshot ------------------------------------------------------------------- */

struct digest_set {
	char (*hex)[IMC_SHA256_HEX_LEN + 1];
	size_t n, cap;
};

static int digest_set_add_index(struct digest_set *set, const struct oci_chunk_index *ix)
{
	if (set->n + ix->n_chunks > set->cap) {
		size_t cap = (set->n + ix->n_chunks) * 2 + 64;
		void *p = realloc(set->hex, cap * sizeof(*set->hex));
		if (!p)
			return -ENOMEM;
		set->hex = p;
		set->cap = cap;
	}
	for (size_t i = 0; i < ix->n_chunks; i++)
		snprintf(set->hex[set->n++], IMC_SHA256_HEX_LEN + 1, "%s",
			 ix->chunks[i].digest + 7);
	return 0;
}

static int hex_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* The digests every remaining index names, sorted. */
static int referenced_chunks(struct dist_chunks *cs, struct digest_set *set, imc_error *err)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int fd = openat(cs->dirfd, INDEX_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return imc_err_sys(err, errno, "chunks/" INDEX_DIR);
	}
	while ((de = readdir(d))) {
		char id[64];
		size_t len = strlen(de->d_name);
		_cleanup_free_ char *buf = NULL;
		struct oci_chunk_index ix = {0};
		size_t n;
		int r;

		if (de->d_name[0] == '.' || len < 6 || len - 5 >= sizeof(id) ||
		    strcmp(de->d_name + len - 5, ".json"))
			continue;
		snprintf(id, sizeof(id), "%.*s", (int)(len - 5), de->d_name);
		if ((r = dist_read_index(cs, id, &buf, &n, err)) < 0 ||
		    (r = oci_chunk_index_parse(buf, n, &ix, err)) < 0)
			return imc_err_wrap(err, "chunk index of %s", id);
		r = digest_set_add_index(set, &ix);
		oci_chunk_index_free(&ix);
		if (r < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	if (set->n)
		qsort(set->hex, set->n, sizeof(*set->hex), hex_cmp);
	return 0;
}

/* Remove the stored chunks of directory sha256/<sub> that set does not name. */
static void drop_unreferenced(struct dist_chunks *cs, const char *sub, const struct digest_set *set,
			      uint64_t *freed)
{
	char dir[32];
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int fd;

	snprintf(dir, sizeof(dir), "sha256/%s", sub);
	fd = openat(cs->dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		char hex[IMC_SHA256_HEX_LEN + 1];
		struct stat st;

		if (strlen(de->d_name) != IMC_SHA256_HEX_LEN + 4 ||
		    strcmp(de->d_name + IMC_SHA256_HEX_LEN, ".zst"))
			continue; /* a .tmp of an export in flight is not ours to judge */
		snprintf(hex, sizeof(hex), "%.*s", IMC_SHA256_HEX_LEN, de->d_name);
		if (set->n && bsearch(hex, set->hex, set->n, sizeof(*set->hex), hex_cmp))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    unlinkat(dirfd(d), de->d_name, 0) == 0)
			*freed += (uint64_t)st.st_blocks * 512;
	}
}

static int forget(struct dist_chunks *cs, const char *id, uint64_t *ret_freed, imc_error *err)
{
	char name[128];
	struct digest_set set = {0};
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int fd, r;

	*ret_freed = 0;
	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	snprintf(name, sizeof(name), TRACE_DIR "/%s.json", id);
	if (unlinkat(cs->dirfd, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "chunks/%s", name);
	snprintf(name, sizeof(name), INDEX_DIR "/%s.json", id);
	if (unlinkat(cs->dirfd, name, 0) < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "chunks/%s", name);
	r = referenced_chunks(cs, &set, err);
	fd = r < 0 ? -1 : openat(cs->dirfd, "sha256", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0 && !(d = fdopendir(fd)))
		close(fd);
	while (d && (de = readdir(d)))
		if (strlen(de->d_name) == 2 && de->d_name[0] != '.')
			drop_unreferenced(cs, de->d_name, &set, ret_freed);
	free(set.hex);
	return r;
}

int dist_index_has_chunk(struct dist_chunks *cs, const char *id, const char *digest, bool *ret,
			 imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	struct oci_chunk_index ix = {0};
	size_t n = 0;
	int r;

	*ret = false;
	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	r = dist_read_index(cs, id, &buf, &n, err);
	if (r == -ENOENT)
		return 0; /* not exported (yet): it references nothing a chunk request could name */
	if (r == 0)
		r = oci_chunk_index_parse(buf, n, &ix, err);
	if (r < 0)
		return imc_err_wrap(err, "chunk index of %s", id);
	for (size_t i = 0; i < ix.n_chunks && !*ret; i++)
		*ret = strcmp(ix.chunks[i].digest, digest) == 0;
	oci_chunk_index_free(&ix);
	return 0;
}

int dist_forget(struct dist_chunks *cs, const char *id, uint64_t *ret_freed, imc_error *err)
{
	int r;

	/* Exports stay out meanwhile: a chunk of an export in flight is in no index yet. */
	pthread_mutex_lock(&cs->export_lock);
	r = forget(cs, id, ret_freed, err);
	pthread_mutex_unlock(&cs->export_lock);
	return r;
}

/* ---- startup traces (dist_trace_store, dist_trace_read) -------------------------------------- */

static int trace_write(struct dist_chunks *cs, const char *id, const struct dist_trace *t,
		       bool replace, imc_error *err)
{
	char name[128];
	_cleanup_free_ char *buf = NULL;
	_cleanup_json_ json_t *j = NULL;
	_cleanup_close_ int dfd = openat(cs->dirfd, TRACE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	size_t len = 0;

	if (dfd < 0)
		return imc_err_sys(err, errno, "chunks/" TRACE_DIR);
	snprintf(name, sizeof(name), "%s.json", id);
	if (!replace && faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return imc_err(err, EBUSY,
			       "cache %s: has a startup trace already (?replace=true replaces it)",
			       id);
	if (dist_trace_render(t, &buf, &len, err) < 0 ||
	    imc_json_parse_object(buf, len, &j, err) < 0)
		return err->code;
	return imc_json_write_atomic(dfd, name, j, err);
}

int dist_trace_store(struct dist_chunks *cs, const char *id, const struct dist_trace *t,
		     bool replace, imc_error *err)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r;

	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	/* Under the export lock: a forget of id (which drops the trace with the index) cannot run
	 * between the check against the index and the write. */
	pthread_mutex_lock(&cs->export_lock);
	r = dist_read_index(cs, id, &buf, &len, err);
	if (r == -ENOENT)
		r = imc_err(err, EBUSY, "cache %s: its chunk index is not exported yet", id);
	if (r == 0 && oci_chunk_index_parse(buf, len, &ix, err) < 0)
		r = imc_err_wrap(err, "chunk index of %s", id);
	if (r == 0)
		r = dist_trace_check(t, &ix, err);
	if (r == 0)
		r = trace_write(cs, id, t, replace, err);
	pthread_mutex_unlock(&cs->export_lock);
	return r;
}

int dist_trace_read(struct dist_chunks *cs, const char *id, char **ret, size_t *ret_len,
		    imc_error *err)
{
	char name[128];
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *path = NULL;

	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	snprintf(name, sizeof(name), TRACE_DIR "/%s.json", id);
	fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return imc_err_sys(err, errno, "startup trace of %s", id);
	if (asprintf(&path, "/proc/self/fd/%d", fd) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return imc_read_file(path, DIST_TRACE_BYTES_MAX, ret, ret_len, err);
}

/* ---- leftovers of a killed export ------------------------------------------------------------ */

/* A chunk or index written under a temporary name ("<name>.tmp.<pid>.<tid>", ".<id>.json.tmp"). */
static bool is_partial_name(const char *name)
{
	size_t n = strlen(name);

	return strstr(name, ".tmp.") ||
	       (name[0] == '.' && n > 4 && strcmp(name + n - 4, ".tmp") == 0);
}

static void remove_partial_in(int parent, const char *sub, size_t *ret_n, uint64_t *ret_bytes)
{
	int fd = openat(parent, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (is_partial_name(de->d_name) &&
		    imc_remove_unheld_at(dirfd(d), de->d_name, ret_bytes) == 1)
			(*ret_n)++;
}

int dist_chunks_remove_partial(const char *state_dir, size_t *ret_n, uint64_t *ret_bytes,
			       imc_error *err)
{
	_cleanup_free_ char *dir = imc_path_join(state_dir, "chunks");
	_cleanup_close_ int cfd = -1;
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	int fd;

	*ret_n = 0;
	*ret_bytes = 0;
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	cfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cfd < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "%s", dir);
	remove_partial_in(cfd, INDEX_DIR, ret_n, ret_bytes);
	remove_partial_in(cfd, TRACE_DIR, ret_n, ret_bytes);
	fd = openat(cfd, "sha256", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "%s/sha256", dir);
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return imc_err_sys(err, errno, "%s/sha256", dir);
	}
	while ((de = readdir(d)))
		if (strlen(de->d_name) == 2 && de->d_name[0] != '.')
			remove_partial_in(dirfd(d), de->d_name, ret_n, ret_bytes);
	return 0;
}
