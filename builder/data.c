/* Model data: https files fetched with parallel ranged GETs straight into the volume, OCI
 * artifacts (one file per layer) through the registry client, and Hugging Face-compatible model
 * repositories (a file list, then one https download per file).
 *
 * A download writes each piece with pwrite at its offset in the destination file; the calling
 * thread follows the contiguous prefix of the file that the pieces have filled and hashes it, so
 * the sha256 is ready when the last byte lands.  A piece that stops early (a dropped connection)
 * is asked again from where it stopped.
 *
 * Over 800 lines: three sources (https, oci, hf) share one download engine, its plans and the
 * volume's directory code; HTTP itself is net/'s. */
#include <ctype.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "builder.h"

#define DATA_CONNECTIONS      4
#define DATA_PIECE	      (64ULL << 20)
#define DATA_TRIES	      6
#define DATA_BACKOFF_MS	      200
#define DATA_BACKOFF_MAX_MS   5000
#define DATA_LIST_MAX	      (16u << 20) /* hf file list */
#define DATA_HASH_CHUNK	      (4u << 20)
#define DATA_PATH_DEPTH_MAX   16
#define DATA_REL_PATH_MAX     BUILDER_DATA_PATH_MAX
#define DATA_TITLE_ANNOTATION "org.opencontainers.image.title"

/* ---- names, URLs and sources (pure) ---------------------------------------------------------- */

bool builder_data_name_valid(const char *s)
{
	size_t n = s ? strnlen(s, BUILDER_DATA_NAME_MAX + 1) : 0;

	if (n == 0 || n > BUILDER_DATA_NAME_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p == '/' || *p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

/* A relative path of valid names ("a/b/c"); what names it in messages ("file name", "path"). */
static int rel_path_check(const char *what, const char *path, imc_error *err)
{
	char buf[DATA_REL_PATH_MAX + 1];
	char *save = NULL;
	size_t depth = 0;

	if (strnlen(path, sizeof(buf)) >= sizeof(buf))
		return imc_err(err, EINVAL, "%s: longer than %d bytes", what, DATA_REL_PATH_MAX);
	for (const unsigned char *p = (const unsigned char *)path; *p; p++)
		if (*p < 0x20 || *p == 0x7f) /* never echoed: it would break the message's line */
			return imc_err(err, EINVAL, "%s: a control character at byte %zu", what,
				       (size_t)(p - (const unsigned char *)path));
	if (path[0] == '\0' || path[0] == '/' || strstr(path, "//") ||
	    path[strlen(path) - 1] == '/')
		return imc_err(
		    err, EINVAL,
		    "%s: \"%.200s\" is not a relative path (no leading, trailing or double "
		    "'/')",
		    what, path);
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (!builder_data_name_valid(c))
			return imc_err(err, EINVAL,
				       "%s: \"%.200s\": bad component \"%.64s\" (1-%d bytes, no "
				       "control characters, not . or ..)",
				       what, path, c, BUILDER_DATA_NAME_MAX);
		if (++depth > DATA_PATH_DEPTH_MAX)
			return imc_err(err, EINVAL, "%s: \"%.200s\": deeper than %d", what, path,
				       DATA_PATH_DEPTH_MAX);
	}
	return 0;
}

/* A relative path of valid names ("a/b/c"), for the files of an hf repository. */
TESTABLE int data_rel_path_check(const char *path, imc_error *err)
{
	return rel_path_check("file name", path, err);
}

bool builder_data_paths_overlap(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b), n = na < nb ? na : nb;

	return strncmp(a, b, n) == 0 && (na == nb || (na < nb ? b[n] : a[n]) == '/');
}

/* An https URL, or http to a loopback host (net/'s one loopback rule; the destination check of
 * the data client then refuses loopback unless the operator allows it); never with
 * user:password in it (credentials go in the request's credentials, never written down). */
TESTABLE int data_url_check(const char *url, bool *ret_plain, imc_error *err)
{
	struct net_url u = {0};
	bool plain;
	int r;

	if (strnlen(url, BUILDER_DATA_SOURCE_MAX + 1) > BUILDER_DATA_SOURCE_MAX)
		return imc_err(err, EINVAL, "URL longer than %d bytes", BUILDER_DATA_SOURCE_MAX);
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
		return imc_err(err, EINVAL, "\"%.200s\": want https://", url);
	r = net_url_parse(url, &u, NULL);
	if (r < 0)
		return imc_err(err, EINVAL, "\"%.200s\": not a URL", url);
	plain = strcmp(u.scheme, "http") == 0;
	if (u.has_userinfo)
		r = imc_err(err, EINVAL, "URL with a user name: put credentials elsewhere");
	else if (plain && !net_host_is_loopback(u.host))
		r = imc_err(err, EINVAL, "\"%.200s\": plain http only to a loopback host", url);
	net_url_free(&u);
	if (r == 0 && ret_plain)
		*ret_plain = plain;
	return r;
}

/* The last component of a URL's path, percent-decoded (malloc'ed; NULL when it does not
 * parse or on OOM). */
TESTABLE char *data_url_file_name(const char *url)
{
	struct net_url u = {0};
	const char *base;
	char *out, *o;

	if (net_url_parse(url, &u, NULL) < 0)
		return NULL;
	base = strrchr(u.path, '/');
	base = base ? base + 1 : u.path;
	base = strndup(base, strcspn(base, "?#"));
	net_url_free(&u);
	if (!base)
		return NULL;
	out = o = (char *)base;
	for (const char *i = base; *i; i++) {
		unsigned v;
		if (*i == '%' && sscanf(i + 1, "%2x", &v) == 1 && isxdigit((unsigned char)i[1]) &&
		    isxdigit((unsigned char)i[2]) && v != 0) {
			*o++ = (char)v;
			i += 2;
		} else {
			*o++ = *i;
		}
	}
	*o = '\0';
	return out;
}

static bool hf_part_valid(const char *s, size_t n)
{
	if (n == 0 || n > 96 || (n <= 2 && strncmp(s, "..", n) == 0))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
			    s[i]) ||
		    s[i] == '\0')
			return false;
	return true;
}

/* "hf://org/repo[@rev]" → "org/repo" (or a bare "repo") and rev (default "main"). */
TESTABLE int data_hf_parse(const char *source, char **ret_repo, char **ret_rev, imc_error *err)
{
	const char *p = source + strlen("hf://"), *at, *slash;
	size_t repo_len;

	if (strncmp(source, "hf://", 5) != 0)
		return imc_err(err, EINVAL, "want hf://org/repo[@revision]");
	at = strchr(p, '@');
	repo_len = at ? (size_t)(at - p) : strlen(p);
	slash = memchr(p, '/', repo_len);
	if (slash ? !hf_part_valid(p, (size_t)(slash - p)) ||
			!hf_part_valid(slash + 1, repo_len - (size_t)(slash - p) - 1)
		  : !hf_part_valid(p, repo_len))
		return imc_err(err, EINVAL, "\"%.200s\": want hf://org/repo[@revision]", source);
	if (at && !hf_part_valid(at + 1, strlen(at + 1)))
		return imc_err(err, EINVAL, "\"%.200s\": bad revision", source);
	*ret_repo = strndup(p, repo_len);
	*ret_rev = strdup(at ? at + 1 : "main");
	if (!*ret_repo || !*ret_rev) {
		free(*ret_repo);
		free(*ret_rev);
		return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int sha256_hex_check(const char *s, imc_error *err)
{
	if (strlen(s) != IMC_SHA256_HEX_LEN)
		return imc_err(err, EINVAL, "sha256: want %d lowercase hex digits",
			       IMC_SHA256_HEX_LEN);
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return imc_err(err, EINVAL, "sha256: want %d lowercase hex digits",
				       IMC_SHA256_HEX_LEN);
	return 0;
}

int builder_data_check(const struct builder_data *d, enum builder_data_kind *ret_kind,
		       imc_error *err)
{
	enum builder_data_kind kind;
	int r = 0;

	if (!d->path)
		return imc_err(err, EINVAL, "path: required");
	r = rel_path_check("path", d->path, err);
	if (r < 0)
		return r;
	if (!d->source || strnlen(d->source, BUILDER_DATA_SOURCE_MAX + 1) > BUILDER_DATA_SOURCE_MAX)
		return imc_err(err, EINVAL, "source: want 1-%d bytes", BUILDER_DATA_SOURCE_MAX);
	if (strncmp(d->source, "oci://", 6) == 0) {
		struct oci_ref ref = {0};
		kind = BUILDER_DATA_OCI;
		r = oci_ref_parse(d->source + 6, &ref, err);
		oci_ref_free(&ref);
	} else if (strncmp(d->source, "hf://", 5) == 0) {
		_cleanup_free_ char *repo = NULL, *rev = NULL;
		kind = BUILDER_DATA_HF;
		r = data_hf_parse(d->source, &repo, &rev, err);
	} else {
		kind = BUILDER_DATA_HTTPS;
		r = data_url_check(d->source, NULL, err);
	}
	if (r < 0) {
		imc_err_wrap(err, "source");
		if (err)
			err->code = -EINVAL;
		return -EINVAL;
	}
	if (d->sha256 && kind != BUILDER_DATA_HTTPS)
		return imc_err(err, EINVAL,
			       "sha256: only for an https source (%s files carry "
			       "their own digests)",
			       kind == BUILDER_DATA_OCI ? "oci://" : "hf://");
	if (d->sha256 && sha256_hex_check(d->sha256, err) < 0)
		return -EINVAL;
	if (ret_kind)
		*ret_kind = kind;
	return 0;
}

/* ---- HTTP (net/) ------------------------------------------------------------------------------
 * Every request goes through the data client (builder_opts.data_net): it checks the address of
 * every connection (after DNS and redirects) against the operator's allowed destinations, so a
 * tenant's URL cannot reach the imcd host's loopback services or a private network. */

static const long accept_no_head[] = {405, 501, 0};

/* GET url into memory (at most max bytes), retried by net/. */
static int http_get_mem(struct net_client *net, const char *url, size_t max, char **ret,
			size_t *ret_len, imc_error *err)
{
	struct net_response res = {0};
	int r = net ? data_url_check(url, NULL, err)
		    : imc_err(err, EPERM, "%s: no HTTP client for data", url);

	if (r == 0)
		r = net_perform(net,
				&(struct net_request){
				    .url = url, .sink = {.kind = NET_SINK_MEMORY, .max = max}},
				&res, err);
	if (r == 0) {
		*ret = steal_pointer(&res.body);
		*ret_len = res.body_len;
	}
	net_response_free(&res);
	return r;
}

static bool takes_ranges(const struct net_response *res)
{
	const char *v = net_response_header(res, "Accept-Ranges", 0);

	return v && strncasecmp(v + strspn(v, " \t"), "bytes", 5) == 0;
}

int builder_download_head(struct net_client *net, const char *url, uint64_t *ret_size,
			  bool *ret_ranges, imc_error *err)
{
	struct net_response res = {0};
	int r = net ? data_url_check(url, NULL, err)
		    : imc_err(err, EPERM, "%s: no HTTP client for data", url);

	if (r == 0)
		r = net_perform(net,
				&(struct net_request){.method = "HEAD",
						      .url = url,
						      .sink = {.kind = NET_SINK_DISCARD},
						      .accept = accept_no_head},
				&res, err);
	if (r == 0 && (res.status == 405 || res.status == 501)) {
		*ret_size = UINT64_MAX; /* no HEAD here: one stream, size learnt on the way */
		*ret_ranges = false;
	} else if (r == 0 && res.content_length > (int64_t)BUILDER_DATA_FILE_MAX) {
		r = imc_err(err, EFBIG, "%s: %lld bytes, more than %llu", url,
			    (long long)res.content_length,
			    (unsigned long long)BUILDER_DATA_FILE_MAX);
	} else if (r == 0) {
		*ret_size = res.content_length >= 0 ? (uint64_t)res.content_length : UINT64_MAX;
		*ret_ranges = takes_ranges(&res) && res.content_length >= 0;
	}
	net_response_free(&res);
	return r;
}

/* ---- the download: pieces in parallel, hashed in order ------------------------------------- */

struct piece {
	uint64_t start, len; /* len UINT64_MAX: one stream of unknown length */
	uint64_t done;	     /* contiguous bytes written from start */
	bool finished;
};

struct dl {
	struct builder_download *d;
	bool ranged;
	struct piece *pieces;
	size_t n_pieces;
	pthread_mutex_t lock; /* everything below, and pieces[].done/finished */
	pthread_cond_t cond;
	size_t next;		/* next piece to hand out */
	bool waiting;		/* the hasher waits for bytes */
	int error;		/* first error (negative errno) */
	imc_error err;		/* its message */
	unsigned retries;	/* repeated tries */
	imc_sha256 *inline_sha; /* one worker, in file order: it hashes what it writes */
};

struct piece_io {
	struct dl *dl;
	struct piece *p;
};

static void dl_fail(struct dl *dl, const imc_error *e)
{
	pthread_mutex_lock(&dl->lock);
	if (!dl->error) {
		dl->error = e->code ? e->code : -EIO;
		dl->err = *e;
	}
	pthread_cond_broadcast(&dl->cond);
	pthread_mutex_unlock(&dl->lock);
}

/* net/'s callback sink: the bytes of piece p, in order, written where they belong. */
static int piece_write(void *ctx, const void *data, size_t n)
{
	struct piece_io *io = ctx;
	struct dl *dl = io->dl;
	struct piece *p = io->p;
	uint64_t done;
	int r;

	pthread_mutex_lock(&dl->lock);
	done = p->done;
	r = dl->error;
	pthread_mutex_unlock(&dl->lock);
	if (r)
		return -ECANCELED; /* another piece failed: stop this one */
	if (p->len == UINT64_MAX && done + n > BUILDER_DATA_FILE_MAX)
		return -EFBIG;
	for (size_t off = 0; off < n;) {
		ssize_t w = pwrite(dl->d->fd, (const char *)data + off, n - off,
				   (off_t)(p->start + done + off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		off += (size_t)w;
	}
	if (dl->inline_sha)
		imc_sha256_update(dl->inline_sha, data, n);
	pthread_mutex_lock(&dl->lock);
	p->done += n;
	if (dl->waiting)
		pthread_cond_broadcast(&dl->cond);
	pthread_mutex_unlock(&dl->lock);
	if (dl->d->on_bytes)
		dl->d->on_bytes(dl->d->ctx, n);
	return 0;
}

/* What is left of piece p, in one request: net/ retries 5xx, 429 and transport errors, and
 * resumes a dropped transfer with a Range from where it stopped. */
static int piece_fetch(struct dl *dl, struct piece *p)
{
	struct piece_io io = {.dl = dl, .p = p};
	struct net_response res = {0};
	imc_error e = {0};
	bool sized = p->len != UINT64_MAX;
	int r = net_perform(dl->d->net,
			    &(struct net_request){
				.url = dl->d->url,
				.range = dl->ranged,
				.range_from = p->start + p->done,
				.range_to = dl->ranged ? p->start + p->len - 1 : UINT64_MAX,
				.sink = {.kind = NET_SINK_CALLBACK,
					 .sized = sized,
					 .size = sized ? p->len - p->done : 0,
					 .max = sized ? 0 : BUILDER_DATA_FILE_MAX,
					 .write = piece_write,
					 .write_ctx = &io},
				.cancelled = dl->d->cancelled,
				.cancel_ctx = dl->d->cancel_ctx,
			    },
			    &res, &e);

	pthread_mutex_lock(&dl->lock);
	dl->retries += res.attempts > 1 ? res.attempts - 1 : 0;
	pthread_mutex_unlock(&dl->lock);
	net_response_free(&res);
	if (r < 0) {
		dl_fail(dl, &e);
		return r;
	}
	pthread_mutex_lock(&dl->lock);
	p->finished = true;
	pthread_cond_broadcast(&dl->cond);
	pthread_mutex_unlock(&dl->lock);
	return 0;
}

static void *dl_worker(void *arg)
{
	struct dl *dl = arg;

	for (;;) {
		struct piece *p = NULL;

		pthread_mutex_lock(&dl->lock);
		if (!dl->error && dl->next < dl->n_pieces)
			p = &dl->pieces[dl->next++];
		pthread_mutex_unlock(&dl->lock);
		if (!p || piece_fetch(dl, p) < 0)
			return NULL;
	}
}

/* How far from `off` the file is filled without a gap; sets *ret_end when all is written. */
static uint64_t dl_filled_locked(struct dl *dl, uint64_t off, bool *ret_end)
{
	for (size_t i = 0; i < dl->n_pieces; i++) {
		struct piece *p = &dl->pieces[i];
		uint64_t end = p->start + p->done;
		if (off >= p->start && (p->len == UINT64_MAX || off < p->start + p->len)) {
			*ret_end = p->finished && off == end && i + 1 == dl->n_pieces;
			return end > off ? end - off : 0;
		}
	}
	*ret_end = true;
	return 0;
}

/* The calling thread: hash the file in order as its bytes land. */
static int dl_hash(struct dl *dl, imc_sha256 *sha, uint64_t *ret_size)
{
	_cleanup_free_ char *buf = malloc(DATA_HASH_CHUNK);
	uint64_t off = 0;

	if (!buf)
		return -ENOMEM;
	for (;;) {
		uint64_t avail;
		bool end = false;

		int failed;

		pthread_mutex_lock(&dl->lock);
		while (!dl->error && (avail = dl_filled_locked(dl, off, &end)) == 0 && !end) {
			dl->waiting = true;
			pthread_cond_wait(&dl->cond, &dl->lock);
			dl->waiting = false;
		}
		failed = dl->error;
		pthread_mutex_unlock(&dl->lock);
		if (failed)
			return failed;
		if (end)
			break;
		while (avail > 0) {
			size_t want = avail > DATA_HASH_CHUNK ? DATA_HASH_CHUNK : (size_t)avail;
			ssize_t n = pread(dl->d->fd, buf, want, (off_t)off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				imc_error e;
				imc_err_sys(&e, n < 0 ? errno : EIO, "read back");
				dl_fail(dl, &e);
				return e.code;
			}
			imc_sha256_update(sha, buf, (size_t)n);
			off += (uint64_t)n;
			avail -= (uint64_t)n;
		}
	}
	*ret_size = off;
	return 0;
}

static int dl_plan_pieces(struct dl *dl, bool ranges, imc_error *err)
{
	struct builder_download *d = dl->d;
	uint64_t piece = d->piece_size ? d->piece_size : DATA_PIECE;

	dl->ranged = ranges && d->size != UINT64_MAX && d->size > 0;
	dl->n_pieces = dl->ranged ? (size_t)((d->size + piece - 1) / piece) : 1;
	dl->pieces = calloc(dl->n_pieces, sizeof(*dl->pieces));
	if (!dl->pieces)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < dl->n_pieces; i++) {
		dl->pieces[i].start = i * piece;
		dl->pieces[i].len =
		    dl->ranged ? (i + 1 < dl->n_pieces ? piece : d->size - i * piece) : d->size;
	}
	return 0;
}

static void dl_free(struct dl *dl)
{
	free(dl->pieces);
	pthread_cond_destroy(&dl->cond);
	pthread_mutex_destroy(&dl->lock);
}

static int dl_run(struct dl *dl, imc_sha256 *sha, uint64_t *ret_size, imc_error *err)
{
	unsigned want = dl->d->connections ? dl->d->connections : DATA_CONNECTIONS;
	pthread_t threads[32];
	size_t n_threads = 0;
	int r = 0;

	if (want > IMC_ARRAY_SIZE(threads))
		want = IMC_ARRAY_SIZE(threads);
	if (want > dl->n_pieces)
		want = (unsigned)dl->n_pieces;
	if (want <= 1) {
		/* One connection writes the file in order: hash on the way, no reading back. */
		dl->inline_sha = sha;
		dl_worker(dl);
		if (dl->error) {
			*err = dl->err;
			return dl->error;
		}
		*ret_size = 0;
		for (size_t i = 0; i < dl->n_pieces; i++)
			*ret_size += dl->pieces[i].done;
		return 0;
	}
	for (; n_threads < want; n_threads++) {
		r = -pthread_create(&threads[n_threads], NULL, dl_worker, dl);
		if (r < 0) {
			imc_error e;
			imc_err_sys(&e, -r, "download thread");
			dl_fail(dl, &e);
			break;
		}
	}
	if (n_threads > 0)
		r = dl_hash(dl, sha, ret_size);
	for (size_t i = 0; i < n_threads; i++)
		pthread_join(threads[i], NULL);
	if (dl->error) {
		*err = dl->err;
		return dl->error;
	}
	return r < 0 ? imc_err(err, -r, "%s: download failed", dl->d->url) : 0;
}

/* One pass over the whole file: ranged pieces, or one stream. */
static int download_pass(struct builder_download *d, bool ranges, uint64_t *ret_size,
			 imc_error *err)
{
	struct dl dl = {.d = d};
	imc_sha256 sha = {0};
	int r = data_url_check(d->url, NULL, err);

	if (r < 0)
		return r;
	pthread_mutex_init(&dl.lock, NULL);
	pthread_cond_init(&dl.cond, NULL);
	r = dl_plan_pieces(&dl, ranges, err);
	if (r == 0)
		r = imc_sha256_init(&sha, err);
	if (r == 0) {
		r = dl_run(&dl, &sha, ret_size, err);
		imc_sha256_final_hex(&sha, d->got_sha256);
	}
	d->retries += dl.retries;
	dl_free(&dl);
	return r;
}

int builder_download(struct builder_download *d, imc_error *err)
{
	uint64_t size = 0;
	int r = d->net ? 0 : imc_err(err, EINVAL, "%s: no HTTP client", d->url);

	if (r == 0 && d->size != UINT64_MAX && d->size > BUILDER_DATA_FILE_MAX)
		r = imc_err(err, EFBIG, "%s: %llu bytes, more than %llu", d->url,
			    (unsigned long long)d->size, (unsigned long long)BUILDER_DATA_FILE_MAX);
	if (r < 0)
		return r;
	d->retries = 0;
	r = download_pass(d, d->ranges, &size, err);
	/* It announced ranges and then ignored them: one stream over what was written. */
	if (r == -ERANGE && d->ranges)
		r = download_pass(d, false, &size, err);
	if (r < 0)
		return r;
	if (d->size != UINT64_MAX && size != d->size)
		return imc_err(err, EPROTO, "%s: got %llu bytes, want %llu", d->url,
			       (unsigned long long)size, (unsigned long long)d->size);
	d->got_size = size;
	if (d->want_sha256 && strcmp(d->want_sha256, d->got_sha256) != 0)
		return imc_err(err, EBADMSG, "%s: sha256 mismatch: got %s, want %s", d->url,
			       d->got_sha256, d->want_sha256);
	return 0;
}

/* ---- plans ----------------------------------------------------------------------------------- */

struct data_file {
	char *name;    /* relative to /data/<path>/ */
	char *url;     /* https and hf */
	uint64_t size; /* UINT64_MAX: unknown */
	bool ranges;   /* the server takes byte ranges */
	char *digest;  /* oci: "sha256:…" of the layer */
	char *media_type;
};

struct builder_data_plan {
	enum builder_data_kind kind;
	char *path, *source, *sha256;
	struct data_file *files;
	size_t n_files;
	struct oci_ref ref;	  /* oci */
	struct oci_registry *reg; /* oci */
};

void builder_data_plan_free(struct builder_data_plan *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_files; i++) {
		free(p->files[i].name);
		free(p->files[i].url);
		free(p->files[i].digest);
		free(p->files[i].media_type);
	}
	free(p->files);
	if (p->reg)
		oci_registry_close(p->reg);
	oci_ref_free(&p->ref);
	free(p->path);
	free(p->source);
	free(p->sha256);
	free(p);
}

static void plan_freep(struct builder_data_plan **p)
{
	builder_data_plan_free(*p);
}

uint64_t builder_data_plan_bytes(const struct builder_data_plan *p)
{
	uint64_t n = 0;

	for (size_t i = 0; i < p->n_files; i++)
		if (p->files[i].size != UINT64_MAX)
			n += p->files[i].size;
	return n;
}

static struct data_file *plan_add(struct builder_data_plan *p, size_t cap, imc_error *err)
{
	if (!p->files) {
		p->files = calloc(cap ? cap : 1, sizeof(*p->files));
		if (!p->files)
			return imc_err(err, ENOMEM, "out of memory"), NULL;
	}
	if (p->n_files >= cap)
		return imc_err(err, EFBIG, "more than %zu files", cap), NULL;
	p->files[p->n_files].size = UINT64_MAX;
	return &p->files[p->n_files++];
}

static int plan_https(const struct builder_opts *o, struct builder_data_plan *p, imc_error *err)
{
	_cleanup_free_ char *base = data_url_file_name(p->source);
	struct data_file *f;

	if (!base)
		return imc_err(err, EINVAL, "not a URL");
	if (!builder_data_name_valid(base))
		return imc_err(err, EINVAL, "the URL's path names no file");
	f = plan_add(p, 1, err);
	if (!f)
		return err ? err->code : -ENOMEM;
	f->name = strdup(base);
	f->url = strdup(p->source);
	if (!f->name || !f->url)
		return imc_err(err, ENOMEM, "out of memory");
	return builder_download_head(o->data_net, f->url, &f->size, &f->ranges, err);
}

static int oci_layer(struct builder_data_plan *p, json_t *layer, size_t i, size_t cap,
		     imc_error *err)
{
	const char *digest = NULL, *mt = NULL, *title = NULL;
	json_t *ann = NULL;
	int64_t size = 0;
	char ctx[32], hex[IMC_SHA256_HEX_LEN + 1];
	struct data_file *f;
	int r;

	snprintf(ctx, sizeof(ctx), "layers[%zu]", i);
	if (!json_is_object(layer))
		return imc_err(err, EINVAL, "%s: want an object", ctx);
	r = imc_json_get_string(layer, "digest", true, 200, ctx, &digest, err);
	if (r == 0)
		r = imc_json_get_string(layer, "mediaType", false, 255, ctx, &mt, err);
	if (r == 0)
		r = imc_json_get_int(layer, "size", true, 0, (int64_t)BUILDER_DATA_FILE_MAX, ctx,
				     &size, err);
	if (r == 0)
		r = imc_json_get_object(layer, "annotations", false, ctx, &ann, err);
	if (r == 0 && ann)
		r = imc_json_get_string(ann, DATA_TITLE_ANNOTATION, false, BUILDER_DATA_NAME_MAX,
					ctx, &title, err);
	if (r == 0)
		r = imc_digest_parse(digest, hex, err);
	if (r < 0)
		return r;
	if (!title)
		return imc_err(err, EINVAL, "%s: no %s annotation names the file", ctx,
			       DATA_TITLE_ANNOTATION);
	if (!builder_data_name_valid(title))
		return imc_err(err, EINVAL, "%s: title \"%.200s\": not a plain file name", ctx,
			       title);
	for (size_t k = 0; k < p->n_files; k++)
		if (strcmp(p->files[k].name, title) == 0)
			return imc_err(err, EINVAL, "%s: title \"%s\" is already layers[%zu]", ctx,
				       title, k);
	f = plan_add(p, cap, err);
	if (!f)
		return err ? err->code : -ENOMEM;
	f->name = strdup(title);
	f->digest = strdup(digest);
	f->media_type = strdup(mt ? mt : "application/octet-stream");
	f->size = (uint64_t)size;
	return f->name && f->digest && f->media_type ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int plan_oci(const struct builder_opts *o, struct builder_data_plan *p, imc_error *err)
{
	const struct oci_registry_opts ro = builder_registry_opts(o);
	struct oci_registry_manifest m = {0};
	_cleanup_json_ json_t *j = NULL;
	json_t *layers = NULL;
	bool is_index = false;
	int r = oci_ref_parse(p->source + strlen("oci://"), &p->ref, err);

	if (r == 0)
		r = oci_registry_open(&ro, &p->ref, &p->reg, err);
	if (r == 0)
		r = oci_registry_get_manifest(p->reg, p->ref.digest ? p->ref.digest : p->ref.tag,
					      p->ref.digest, &m, err);
	if (r < 0)
		return r;
	r = oci_manifest_kind(m.content_type, m.body, m.len, &is_index, err);
	if (r == 0 && is_index)
		r = imc_err(err, EINVAL, "an index, not an artifact manifest");
	if (r == 0)
		r = imc_json_parse_object(m.body, m.len, &j, err);
	oci_registry_manifest_free(&m);
	if (r == 0)
		r = imc_json_get_array(j, "layers", true, BUILDER_DATA_FILES_MAX, "manifest",
				       &layers, err);
	if (r < 0)
		return r;
	if (json_array_size(layers) == 0)
		return imc_err(err, EINVAL, "the artifact has no layers");
	for (size_t i = 0; i < json_array_size(layers); i++) {
		r = oci_layer(p, json_array_get(layers, i), i, json_array_size(layers), err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* A URL piece escaped component by component ("a b/c" → "a%20b/c"). */
static char *escape_path(const char *path)
{
	struct imc_buf out = {0};
	const char *p = path;

	while (*p) {
		size_t n = strcspn(p, "/");
		_cleanup_free_ char *e = net_url_escape(p, n);
		if (!e || imc_buf_append(&out, e, strlen(e)) < 0 ||
		    (p[n] == '/' && imc_buf_append(&out, "/", 1) < 0)) {
			imc_buf_free(&out);
			return NULL;
		}
		p += n + (p[n] == '/');
	}
	return out.data;
}

static char *hf_endpoint(const struct builder_opts *o)
{
	const char *e = o->hf_endpoint && *o->hf_endpoint ? o->hf_endpoint : BUILDER_HF_DEFAULT;
	size_t n = strlen(e);

	while (n > 0 && e[n - 1] == '/')
		n--;
	return strndup(e, n);
}

static int hf_file(struct builder_data_plan *p, const char *base, const char *repo, const char *rev,
		   const char *name, size_t cap, imc_error *err)
{
	_cleanup_free_ char *esc = NULL;
	struct data_file *f;

	if (data_rel_path_check(name, err) < 0)
		return -EINVAL;
	for (size_t k = 0; k < p->n_files; k++)
		if (strcmp(p->files[k].name, name) == 0)
			return imc_err(err, EINVAL, "file \"%s\" listed twice", name);
	esc = escape_path(name);
	f = plan_add(p, cap, err);
	if (!f)
		return err ? err->code : -ENOMEM;
	f->name = strdup(name);
	if (!esc || !f->name ||
	    asprintf(&f->url, "%s/%s/resolve/%s/%s", base, repo, rev, esc) < 0) {
		f->url = NULL;
		return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int plan_hf(const struct builder_opts *o, struct builder_data_plan *p, imc_error *err)
{
	_cleanup_free_ char *repo = NULL, *rev = NULL, *base = hf_endpoint(o), *url = NULL;
	_cleanup_free_ char *body = NULL;
	_cleanup_json_ json_t *j = NULL;
	json_t *siblings = NULL;
	size_t len = 0;
	int r = data_hf_parse(p->source, &repo, &rev, err);

	if (r < 0)
		return r;
	if (!base)
		return imc_err(err, ENOMEM, "out of memory");
	if (asprintf(&url, "%s/api/models/%s/revision/%s", base, repo, rev) < 0) {
		url = NULL;
		return imc_err(err, ENOMEM, "out of memory");
	}
	r = http_get_mem(o->data_net, url, DATA_LIST_MAX, &body, &len, err);
	if (r == 0)
		r = imc_json_parse_object(body, len, &j, err);
	if (r == 0)
		r = imc_json_get_array(j, "siblings", true, BUILDER_DATA_FILES_MAX, "file list",
				       &siblings, err);
	if (r < 0)
		return r;
	if (json_array_size(siblings) == 0)
		return imc_err(err, EINVAL, "%s@%s lists no files", repo, rev);
	for (size_t i = 0; i < json_array_size(siblings); i++) {
		json_t *s = json_array_get(siblings, i);
		const char *name = NULL;
		char ctx[32];

		snprintf(ctx, sizeof(ctx), "siblings[%zu]", i);
		if (!json_is_object(s))
			return imc_err(err, EINVAL, "%s: want an object", ctx);
		r = imc_json_get_string(s, "rfilename", true, DATA_REL_PATH_MAX, ctx, &name, err);
		if (r == 0)
			r = hf_file(p, base, repo, rev, name, json_array_size(siblings), err);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < p->n_files; i++) {
		r = builder_download_head(o->data_net, p->files[i].url, &p->files[i].size,
					  &p->files[i].ranges, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int builder_data_plan(const struct builder_opts *o, const struct builder_data *d,
		      struct builder_data_plan **ret, imc_error *err)
{
	_cleanup_(plan_freep) struct builder_data_plan *p = calloc(1, sizeof(*p));
	int r;

	if (!p)
		return imc_err(err, ENOMEM, "out of memory");
	r = builder_data_check(d, &p->kind, err);
	if (r < 0)
		return imc_err_wrap(err, "data %s", d->path ? d->path : "?");
	p->path = strdup(d->path);
	p->source = strdup(d->source);
	if (!p->path || !p->source || (d->sha256 && !(p->sha256 = strdup(d->sha256))))
		return imc_err(err, ENOMEM, "out of memory");
	switch (p->kind) {
	case BUILDER_DATA_HTTPS:
		r = plan_https(o, p, err);
		break;
	case BUILDER_DATA_OCI:
		r = plan_oci(o, p, err);
		break;
	case BUILDER_DATA_HF:
		r = plan_hf(o, p, err);
		break;
	}
	if (r < 0)
		return imc_err_wrap(err, "data %s (%s)", p->path, p->source);
	*ret = steal_pointer(&p);
	return 0;
}

/* ---- fetching -------------------------------------------------------------------------------- */

struct fetch_progress {
	const struct builder_opts *o;
	pthread_mutex_t lock;
	uint64_t done, total, reported;
};

static void fetch_on_bytes(void *ctx, uint64_t n)
{
	struct fetch_progress *fp = ctx;
	uint64_t done;
	bool report;

	pthread_mutex_lock(&fp->lock);
	fp->done += n;
	done = fp->done;
	report = done - fp->reported >= (8u << 20) || done == fp->total;
	if (report)
		fp->reported = done;
	pthread_mutex_unlock(&fp->lock);
	if (report && fp->o->progress)
		fp->o->progress(fp->o->progress_ctx, done, fp->total);
}

static bool oci_on_bytes(void *ctx, int64_t n)
{
	if (n > 0)
		fetch_on_bytes(ctx, (uint64_t)n);
	return true;
}

/* mkdir each directory of rel ("a/b/file" → a, a/b) under dirfd, inside it. */
static int mkdirs_in(int dirfd, const char *rel, imc_error *err)
{
	char buf[DATA_REL_PATH_MAX + 1];
	char *slash = buf;

	snprintf(buf, sizeof(buf), "%s", rel);
	while ((slash = strchr(slash, '/'))) {
		_cleanup_close_ int fd = -1;
		*slash = '\0';
		fd = imc_openat_in_root(dirfd, buf, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
		if (fd == -ENOENT && mkdirat(dirfd, buf, 0755) < 0 && errno != EEXIST)
			return imc_err_sys(err, errno, "mkdir %s", buf);
		if (fd < 0 && fd != -ENOENT)
			return imc_err_sys(err, -fd, "%s", buf);
		*slash++ = '/';
	}
	return 0;
}

/* Reserve the blocks ext4 just reserved for fd (unwritten extents) in the store's backing as
 * well: BLKZEROOUT on the volume's device makes the loop driver fallocate those ranges in its
 * backing file, so the pieces that parallel connections write later land in a few contiguous
 * extents instead of interleaving (a 2 GiB model written by 4 connections: 318 extents in the
 * pool without this).  Only an optimization: any failure leaves things as they were. */
static void reserve_on_device(int fd, int dev_fd)
{
	enum { MAX_EXTENTS = 512 };
	_cleanup_free_ struct fiemap *fm =
	    calloc(1, sizeof(*fm) + MAX_EXTENTS * sizeof(struct fiemap_extent));

	if (dev_fd < 0 || !fm)
		return;
	fm->fm_length = FIEMAP_MAX_OFFSET;
	fm->fm_extent_count = MAX_EXTENTS;
	if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0)
		return;
	for (unsigned i = 0; i < fm->fm_mapped_extents; i++) {
		const struct fiemap_extent *e = &fm->fm_extents[i];
		uint64_t range[2] = {e->fe_physical, e->fe_length};
		if ((e->fe_flags & FIEMAP_EXTENT_UNWRITTEN) && ioctl(dev_fd, BLKZEROOUT, range) < 0)
			return;
	}
}

/* Create the file for f under dir, with its size reserved when known (in the volume's device
 * dev_fd too, when one is given). */
static int create_file(int dirfd, const struct data_file *f, int dev_fd, imc_error *err)
{
	int r = mkdirs_in(dirfd, f->name, err);
	int fd;

	if (r < 0)
		return r;
	fd = imc_openat_in_root(dirfd, f->name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
	if (fd < 0)
		return imc_err_sys(err, -fd, "create %s", f->name);
	if (f->size != UINT64_MAX && f->size > 0 && fallocate(fd, 0, 0, (off_t)f->size) < 0) {
		r = errno;
		close(fd);
		if (r == ENOSPC)
			return imc_err(err, ENOSPC,
				       "%s: no room for %llu bytes: the cache's size is too small",
				       f->name, (unsigned long long)f->size);
		if (r != EOPNOTSUPP)
			return imc_err_sys(err, r, "fallocate %s", f->name);
		fd = imc_openat_in_root(dirfd, f->name, O_RDWR | O_NOFOLLOW, 0);
		if (fd < 0)
			return imc_err_sys(err, -fd, "open %s", f->name);
	} else if (f->size != UINT64_MAX && f->size > 0) {
		reserve_on_device(fd, dev_fd);
	}
	return fd;
}

static int copy_fd(int in, int out, uint64_t size, imc_error *err)
{
	_cleanup_free_ char *buf = NULL;
	uint64_t left = size;

	while (left > 0) {
		ssize_t n =
		    copy_file_range(in, NULL, out, NULL, left > (1u << 30) ? (1u << 30) : left, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		left -= (uint64_t)n;
	}
	if (left == 0)
		return 0;
	/* Another filesystem type, or no copy_file_range here: plain reads and writes. */
	buf = malloc(1u << 20);
	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	while (left > 0) {
		ssize_t n = read(in, buf, left > (1u << 20) ? (1u << 20) : left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return imc_err_sys(err, n < 0 ? errno : EIO, "read");
		int r = imc_write_all(out, buf, (size_t)n);
		if (r < 0)
			return imc_err_sys(err, -r, "write");
		left -= (uint64_t)n;
	}
	return 0;
}

/* The artifact's layer, verified by the registry client in the blob directory (dir), copied into
 * the file; the blob goes again unless it was there before (a model is not kept twice). */
static int fetch_oci_blob(const struct builder_opts *o, struct builder_data_plan *p,
			  const struct data_file *f, int fd, struct fetch_progress *fp,
			  const char *dir, const char *hex, imc_error *err)
{
	struct oci_descriptor d = {
	    .media_type = f->media_type, .digest = f->digest, .size = (int64_t)f->size};
	_cleanup_close_ int dfd = -1, in = -1;
	struct stat st;
	bool had;
	int r;

	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	had = dfd >= 0 && fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0;
	r = oci_registry_fetch_blob(p->reg, &d, o->blob_dir, oci_on_bytes, fp, err);
	if (r < 0)
		return r;
	if (dfd < 0)
		dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return imc_err_sys(err, errno, "%s", dir);
	in = openat(dfd, hex, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return imc_err_sys(err, errno, "blob %s", f->digest);
	r = copy_fd(in, fd, f->size, err);
	if (!had)
		unlinkat(dfd, hex, 0);
	return r;
}

/* fetch_oci_blob with the blob pinned: the blob store's collector leaves it alone meanwhile. */
static int fetch_oci_file(const struct builder_opts *o, struct builder_data_plan *p,
			  const struct data_file *f, int fd, struct fetch_progress *fp,
			  char hex[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	_cleanup_free_ char *dir = imc_path_join(o->blob_dir, "sha256");
	int r = imc_digest_parse(f->digest, hex, err);

	if (r < 0)
		return r;
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	r = builder_blobs_pin(o->blob_dir, f->digest, err);
	if (r < 0)
		return r;
	r = fetch_oci_blob(o, p, f, fd, fp, dir, hex, err);
	builder_blobs_unpin(f->digest);
	return r;
}

static int fetch_http_file(const struct builder_opts *o, struct builder_data_plan *p,
			   struct data_file *f, int fd, struct fetch_progress *fp,
			   char hex[IMC_SHA256_HEX_LEN + 1], uint64_t *ret_size, imc_error *err)
{
	struct builder_download d = {
	    .url = f->url,
	    .net = o->data_net,
	    .fd = fd,
	    .size = f->size,
	    .ranges = f->ranges,
	    .want_sha256 = p->kind == BUILDER_DATA_HTTPS ? p->sha256 : NULL,
	    .on_bytes = fetch_on_bytes,
	    .ctx = fp,
	    .cancelled = o->cancelled,
	    .cancel_ctx = o->cancel_ctx,
	};
	int r = builder_download(&d, err);

	if (r < 0)
		return r;
	memcpy(hex, d.got_sha256, IMC_SHA256_HEX_LEN + 1);
	*ret_size = d.got_size;
	return 0;
}

/* Make /data/<path> one component at a time below dfd (/data, taken over), never following a
 * symlink: the parents may be there already (another entry's, "models/a" beside "models/b"), the
 * last one must not.  Returns the last directory (O_PATH) or -errno. */
static int make_data_dirs(int dfd, const char *path, const char *rel, imc_error *err)
{
	char buf[DATA_REL_PATH_MAX + 1];
	char *save = NULL, *next;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *c = strtok_r(buf, "/", &save); c; c = next) {
		int sub;

		next = strtok_r(NULL, "/", &save);
		if (mkdirat(dfd, c, 0755) < 0 && (errno != EEXIST || !next)) {
			int e = errno;
			close(dfd);
			return e == EEXIST ? imc_err(err, EEXIST, "/%s: already there", rel)
					   : imc_err_sys(err, e, "mkdir /%s", rel);
		}
		sub = openat(dfd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(dfd);
		if (sub < 0)
			return imc_err_sys(err, errno, "/%s: %s", rel, c);
		dfd = sub;
	}
	return dfd;
}

static int open_data_dir(int rootfd, const char *path, imc_error *err)
{
	_cleanup_free_ char *rel = imc_path_join("data", path);
	int fd;

	if (!rel)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdirat(rootfd, "data", 0755) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir /data");
	fd = imc_openat_in_root(rootfd, "data", O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
	if (fd < 0)
		return imc_err_sys(err, -fd, "/data");
	fd = make_data_dirs(fd, path, rel, err);
	if (fd < 0)
		return fd;
	close(fd);
	fd = imc_openat_in_root(rootfd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
	return fd < 0 ? imc_err_sys(err, -fd, "/%s", rel) : fd;
}

static int fetch_one(const struct builder_opts *o, struct builder_data_plan *p, int dirfd,
		     int dev_fd, struct data_file *f, struct fetch_progress *fp, json_t *files,
		     imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	uint64_t size = f->size;
	_cleanup_close_ int fd = create_file(dirfd, f, dev_fd, err);
	int r;

	if (fd < 0)
		return fd;
	if (p->kind == BUILDER_DATA_OCI)
		r = fetch_oci_file(o, p, f, fd, fp, hex, err);
	else
		r = fetch_http_file(o, p, f, fd, fp, hex, &size, err);
	if (r == -ENOSPC && err && !strstr(err->msg, "too small"))
		imc_err_wrap(err, "the cache's size is too small");
	/* No fsync: the volume's clean unmount before the seal writes everything back once. */
	if (r < 0)
		return imc_err_wrap(err, "%s", f->name);
	if (json_array_append_new(files, json_pack("{s:s,s:I,s:s}", "name", f->name, "size",
						   (json_int_t)size, "sha256", hex)) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

int builder_data_fetch(const struct builder_opts *o, struct builder_data_plan *p, int rootfd,
		       int dev_fd, json_t **ret_entry, imc_error *err)
{
	struct fetch_progress fp = {.o = o, .total = builder_data_plan_bytes(p)};
	_cleanup_json_ json_t *entry =
	    json_pack("{s:s,s:s,s:[]}", "path", p->path, "source", p->source, "files");
	_cleanup_close_ int dirfd = -1;
	int r = 0;

	if (!entry)
		return imc_err(err, ENOMEM, "out of memory");
	dirfd = open_data_dir(rootfd, p->path, err);
	if (dirfd < 0)
		return imc_err_wrap(err, "data %s", p->path);
	pthread_mutex_init(&fp.lock, NULL);
	for (size_t i = 0; r == 0 && i < p->n_files; i++)
		r = fetch_one(o, p, dirfd, dev_fd, &p->files[i], &fp,
			      json_object_get(entry, "files"), err);
	pthread_mutex_destroy(&fp.lock);
	if (r < 0)
		return imc_err_wrap(err, "data %s", p->path);
	*ret_entry = steal_pointer(&entry);
	return 0;
}
