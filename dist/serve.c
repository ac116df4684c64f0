/* What a server answers for GET|HEAD /v1/chunks/{digest} (docs/distribution.md): the chunk's
 * file, whole or one byte range, its ETag, and 304 for a matching If-None-Match.  A chunk is
 * named by its content, so it never changes.  No HTTP library here: api/dist.c sends it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dist.h"

struct range {
	uint64_t start, len;
};

/* One "bytes=a-b", "bytes=a-" or "bytes=-n" range of a size-byte file: 1 ok, 0 not a range we
 * serve (answer the whole file), -1 unsatisfiable (416). */
static int parse_range(const char *h, uint64_t size, struct range *ret)
{
	unsigned long long a = 0, b = size ? size - 1 : 0;
	char *end;

	if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
		return 0;
	h += 6;
	if (*h == '-') {
		unsigned long long n = strtoull(h + 1, &end, 10);
		if (*end || end == h + 1)
			return 0;
		if (n == 0 || size == 0)
			return -1;
		a = n >= size ? 0 : size - n;
	} else {
		a = strtoull(h, &end, 10);
		if (end == h || *end != '-')
			return 0;
		if (end[1]) {
			char *e2;
			b = strtoull(end + 1, &e2, 10);
			if (*e2 || b < a)
				return 0;
		}
		if (a >= size)
			return -1;
		if (b >= size)
			b = size - 1;
	}
	*ret = (struct range){.start = a, .len = b - a + 1};
	return 1;
}

static bool etag_matches(const char *inm, const char *etag)
{
	return inm && (strcmp(inm, "*") == 0 || strstr(inm, etag) != NULL);
}

int dist_chunk_answer(struct dist_chunks *cs, const char *digest, const char *if_none_match,
		      const char *range, struct dist_chunk_answer *ret, imc_error *err)
{
	_cleanup_close_ int fd = -1;
	struct range rg = {0};
	struct stat st;
	int rr;

	*ret = (struct dist_chunk_answer){.status = 200, .fd = -1};
	if (dist_chunks_open_blob(cs, digest, &fd, err) < 0) {
		if (err->code == -ENOENT)
			snprintf(err->msg, sizeof(err->msg), "chunk %.80s: not found", digest);
		return err->code;
	}
	if (fstat(fd, &st) < 0)
		return imc_err_sys(err, errno, "chunk %s", digest);
	snprintf(ret->etag, sizeof(ret->etag), "\"%s\"", digest);
	if (etag_matches(if_none_match, ret->etag)) {
		ret->status = 304;
		return 0;
	}
	rr = parse_range(range, (uint64_t)st.st_size, &rg);
	if (rr < 0) {
		snprintf(ret->content_range, sizeof(ret->content_range), "bytes */%lld",
			 (long long)st.st_size);
		ret->status = 416;
		return 0;
	}
	if (rr == 0)
		rg = (struct range){.start = 0, .len = (uint64_t)st.st_size};
	else {
		ret->status = 206;
		snprintf(ret->content_range, sizeof(ret->content_range),
			 "bytes %" PRIu64 "-%" PRIu64 "/%lld", rg.start, rg.start + rg.len - 1,
			 (long long)st.st_size);
	}
	ret->start = rg.start;
	ret->len = rg.len;
	ret->fd = steal_fd(&fd);
	return 0;
}
