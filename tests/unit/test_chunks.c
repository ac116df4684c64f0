/* The chunk index format (oci/index.c) and the chunk codec (dist/chunks.c), and the
 * distribution routes: the index renders and parses back, every malformed index is refused
 * naming the field, a chunk compresses deterministically and a flipped byte or a lying frame
 * header is caught.  The sources of a fetch: their order parses (and bad orders and deadlines
 * are refused), a failing source is abandoned only once its deadline has passed (at once for a
 * permanent error) and a success clears its failure, the pick follows the order, skips what it
 * is told to and starts the abandoned anew only when asked, and the waits between tries grow
 * to their cap and never pass the time left. */
#include <check.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../api/api.h"
#include "../../api/imcd.h"
#include "../../dist/dist.h"
#include "../../dist/internal.h"
#include "unit.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "sha256:3333333333333333333333333333333333333333333333333333333333333333"
#define D4 "sha256:4444444444444444444444444444444444444444444444444444444444444444"

static const char *good_index(void)
{
	return "{\"mediaType\":\"" OCI_SNAPSHOT_MT_INDEX "\",\"cacheId\":\"imc-0123456789abcdef\","
	       "\"chunkSize\":1048576,\"size\":3145729,\"sha256\":\"" D1 "\",\"chunks\":["
	       "{\"offset\":0,\"digest\":\"" D1 "\",\"blob\":\"" D2 "\",\"csize\":10},"
	       "{\"offset\":3145728,\"digest\":\"" D2 "\",\"blob\":\"" D1 "\",\"csize\":9}]}";
}

/* Write a file (and its directories) under the chunk store. */
static void put(const char *root, const char *rel, const char *text)
{
	char path[512], dir[512];
	imc_error err = {0};
	int fd;

	snprintf(path, sizeof(path), "%s/chunks/%s", root, rel);
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(path, '/') - path), path);
	ck_assert_int_eq(imc_mkdir_p(dir, 0700, &err), 0);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, text, strlen(text)), 0);
	close(fd);
}

static bool stored(const char *root, const char *digest)
{
	char rel[128], path[512];
	imc_error err = {0};

	ck_assert_int_eq(dist_chunk_path(digest, rel, sizeof(rel), &err), 0);
	snprintf(path, sizeof(path), "%s/chunks/%s", root, rel);
	return access(path, F_OK) == 0;
}

/* An index of cache id naming chunks a and b (1 MiB chunks, a snapshot of 2 MiB). */
static void put_index(const char *root, const char *id, const char *a, const char *b)
{
	char rel[128], text[1024];

	snprintf(text, sizeof(text),
		 "{\"mediaType\":\"" OCI_SNAPSHOT_MT_INDEX "\",\"cacheId\":\"%s\","
		 "\"chunkSize\":1048576,\"size\":2097152,\"sha256\":\"" D1 "\",\"chunks\":["
		 "{\"offset\":0,\"digest\":\"%s\",\"blob\":\"" D1 "\",\"csize\":10},"
		 "{\"offset\":1048576,\"digest\":\"%s\",\"blob\":\"" D2 "\",\"csize\":9}]}",
		 id, a, b);
	snprintf(rel, sizeof(rel), "index/%s.json", id);
	put(root, rel, text);
}

START_TEST(forgetting_a_cache_drops_only_its_own_chunks)
{
	static const char *const d[] = {D1, D2, D3, D4};
	char root[] = "/tmp/imc-test-chunks.XXXXXX", rel[128];
	struct dist_chunks *cs = NULL;
	uint64_t freed = 1;
	imc_error err = {0};

	ck_assert_ptr_nonnull(mkdtemp(root));
	ck_assert_int_eq(dist_chunks_open(root, NULL, &cs, &err), 0);
	for (size_t i = 0; i < 4; i++) {
		ck_assert_int_eq(dist_chunk_path(d[i], rel, sizeof(rel), &err), 0);
		put(root, rel, "a compressed chunk");
	}
	put_index(root, "imc-aaaaaaaaaaaaaaaa", D1, D2);
	put_index(root, "imc-bbbbbbbbbbbbbbbb", D2, D3); /* D4: in no index */

	/* Never exported: nothing happens. */
	ck_assert_int_eq(dist_forget(cs, "imc-cccccccccccccccc", &freed, &err), 0);
	ck_assert_uint_eq(freed, 0);
	ck_assert(stored(root, D4));
	/* A: its own chunk and the stray one go, the shared one stays. */
	ck_assert_msg(dist_forget(cs, "imc-aaaaaaaaaaaaaaaa", &freed, &err) == 0, "%s", err.msg);
	ck_assert_uint_gt(freed, 0);
	ck_assert(!stored(root, D1) && stored(root, D2) && stored(root, D3) && !stored(root, D4));
	/* B: the rest. */
	ck_assert_int_eq(dist_forget(cs, "imc-bbbbbbbbbbbbbbbb", &freed, &err), 0);
	ck_assert(!stored(root, D2) && !stored(root, D3));
	ck_assert_int_lt(dist_forget(cs, "../x", &freed, &err), 0);
	dist_chunks_close(cs);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, root, &err), 0);
}
END_TEST

START_TEST(index_round_trip)
{
	struct oci_chunk_index ix = {0}, back = {0};
	char *buf = NULL;
	size_t len = 0;
	imc_error err = {0};
	const char *g = good_index();

	ck_assert_msg(oci_chunk_index_parse(g, strlen(g), &ix, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(ix.n_chunks, 2);
	ck_assert_uint_eq(ix.chunk_size, 1U << 20);
	ck_assert_uint_eq(ix.size, 3145729);
	ck_assert_uint_eq(oci_chunk_index_len(&ix, 0), 1U << 20);
	ck_assert_uint_eq(oci_chunk_index_len(&ix, 3145728), 1); /* the short last chunk */
	ck_assert_str_eq(ix.chunks[1].blob, D1);
	ck_assert_int_eq(oci_chunk_index_render(&ix, &buf, &len, &err), 0);
	ck_assert_str_eq(buf, g); /* fixed key order: the same bytes, the same digest */
	ck_assert_int_eq(oci_chunk_index_parse(buf, len, &back, &err), 0);
	ck_assert_uint_eq(back.chunks[1].offset, 3145728);
	free(buf);
	oci_chunk_index_free(&ix);
	oci_chunk_index_free(&back);
}
END_TEST

/* Replace the first occurrence of from in the good index with to, and expect a refusal whose
 * message holds want. */
static void refused(const char *from, const char *to, const char *want)
{
	const char *g = good_index(), *at = strstr(g, from);
	char buf[2048];
	struct oci_chunk_index ix = {0};
	imc_error err = {0};

	ck_assert_ptr_nonnull(at);
	snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - g), g, to, at + strlen(from));
	ck_assert_msg(oci_chunk_index_parse(buf, strlen(buf), &ix, &err) < 0, "accepted: %s", buf);
	ck_assert_msg(strstr(err.msg, want), "message \"%s\" lacks \"%s\"", err.msg, want);
	ck_assert_ptr_null(ix.chunks);
}

START_TEST(bad_indexes_are_refused)
{
	refused("\"chunkSize\":1048576", "\"chunkSize\":1000000", "power of two");
	refused("\"chunkSize\":1048576", "\"chunkSize\":1024", "chunkSize");
	refused("\"chunkSize\":1048576", "\"chunkSize\":1099511627776", "chunkSize");
	refused("\"size\":3145729", "\"size\":0", "size");
	refused("\"size\":3145729", "\"size\":\"big\"", "size");
	refused("\"offset\":3145728", "\"offset\":5", "multiple");
	refused("\"offset\":3145728", "\"offset\":0", "in order");
	refused("\"offset\":3145728", "\"offset\":4194304", "chunks[1].offset");
	refused("\"csize\":9", "\"csize\":0", "csize");
	refused("\"csize\":9", "\"csize\":99999999", "csize");
	refused("\"blob\":\"" D2 "\"", "\"blob\":\"md5:00\"", "blob");
	refused("\"digest\":\"" D1 "\"", "\"digest\":\"sha256:ABC\"", "digest");
	refused("\"cacheId\":\"imc-0123456789abcdef\"", "\"cacheId\":\"../x\"", "cacheId");
	refused(OCI_SNAPSHOT_MT_INDEX, "application/json", "mediaType");
	refused("\"chunks\":[", "\"extra\":1,\"chunks\":[", "extra");
	refused("\"csize\":10}", "\"csize\":10,\"x\":1}", "x");
	refused("\"chunks\":[", "\"chunks\":[1,", "chunks[0]");
	refused("{\"mediaType\"", "[{\"mediaType\"", "");
}
END_TEST

START_TEST(more_chunks_than_the_size_holds)
{
	char buf[4096];
	struct oci_chunk_index ix = {0};
	imc_error err = {0};
	int n = snprintf(buf, sizeof(buf),
			 "{\"mediaType\":\"" OCI_SNAPSHOT_MT_INDEX "\",\"cacheId\":\"imc-1\","
			 "\"chunkSize\":65536,\"size\":65536,\"sha256\":\"" D1 "\",\"chunks\":[");
	for (int i = 0; i < 2; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n,
			      "%s{\"offset\":%d,\"digest\":\"" D1 "\",\"blob\":\"" D1
			      "\",\"csize\":5}",
			      i ? "," : "", i * 65536);
	snprintf(buf + n, sizeof(buf) - (size_t)n, "]}");
	ck_assert_int_lt(oci_chunk_index_parse(buf, strlen(buf), &ix, &err), 0);
	ck_assert_msg(strstr(err.msg, "more than size holds"), "%s", err.msg);
}
END_TEST

START_TEST(codec_verifies_content)
{
	size_t len = 256 * 1024, blen = 0, blen2 = 0;
	char *data = malloc(len), *out = malloc(len);
	void *blob = NULL, *blob2 = NULL;
	char hex[IMC_SHA256_HEX_LEN + 1], digest[OCI_DIGEST_MAX + 1];
	imc_error err = {0};

	for (size_t i = 0; i < len; i++)
		data[i] = (char)(i * 7 + i / 1000);
	ck_assert_int_eq(imc_sha256_hex(data, len, hex, &err), 0);
	snprintf(digest, sizeof(digest), "sha256:%s", hex);
	ck_assert_int_eq(dist_chunk_compress(data, len, &blob, &blen, &err), 0);
	ck_assert_int_eq(dist_chunk_compress(data, len, &blob2, &blen2, &err), 0);
	ck_assert_uint_eq(blen, blen2);
	ck_assert_int_eq(memcmp(blob, blob2, blen), 0); /* deterministic: same chunk, same blob */
	ck_assert_int_eq(dist_chunk_decompress_verify(blob, blen, digest, out, len, &err), 0);
	ck_assert_int_eq(memcmp(out, data, len), 0);
	/* A frame that says it holds another size is refused before decompressing. */
	ck_assert_int_eq(dist_chunk_decompress_verify(blob, blen, digest, out, len - 1, &err),
			 -EBADMSG);
	/* A different digest: mismatch. */
	ck_assert_int_eq(dist_chunk_decompress_verify(blob, blen, D1, out, len, &err), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(err.msg, "digest mismatch"));
	/* A byte flipped in the middle of the blob. */
	((unsigned char *)blob)[blen / 2] ^= 0xff;
	ck_assert_int_eq(dist_chunk_decompress_verify(blob, blen, digest, out, len, &err),
			 -EBADMSG);
	/* Truncated. */
	ck_assert_int_eq(dist_chunk_decompress_verify(blob2, blen2 / 2, digest, out, len, &err),
			 -EBADMSG);
	ck_assert(!dist_chunk_is_zero(data, len));
	memset(data, 0, len);
	ck_assert(dist_chunk_is_zero(data, len));
	ck_assert(dist_chunk_is_zero(data, 4097));
	data[len - 1] = 1;
	ck_assert(!dist_chunk_is_zero(data, len));
	free(data);
	free(out);
	free(blob);
	free(blob2);
}
END_TEST

START_TEST(blob_paths)
{
	char buf[128];
	imc_error err = {0};

	ck_assert_int_eq(dist_chunk_path(D1, buf, sizeof(buf), &err), 0);
	ck_assert_str_eq(
	    buf, "sha256/11/1111111111111111111111111111111111111111111111111111111111111111.zst");
	ck_assert_int_lt(dist_chunk_path("sha256:../../etc/passwd", buf, sizeof(buf), &err), 0);
	ck_assert_int_lt(dist_chunk_path("sha256:", buf, sizeof(buf), &err), 0);
}
END_TEST

START_TEST(routes)
{
	struct api_match m;

	api_route_match("/v1/imagecaches/imc-0123456789abcdef/index", &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHE_INDEX);
	ck_assert_uint_eq(m.id_len, strlen("imc-0123456789abcdef"));
	ck_assert_int_eq(strncmp(m.id, "imc-0123456789abcdef", m.id_len), 0);
	api_route_match("/v1/chunks/" D1, &m);
	ck_assert_int_eq(m.route, API_ROUTE_CHUNK);
	ck_assert_str_eq(m.id, D1);
	api_route_match("/v1/imagecaches/imc-0123456789abcdef", &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHE);
	ck_assert_uint_eq(m.id_len, strlen("imc-0123456789abcdef"));
	api_route_match("/v1/imagecaches//index", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/a/b/index", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/a/indexx", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/chunks/", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/chunks/a/b", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	ck_assert(api_route_allows(API_ROUTE_CHUNK, API_METHOD_GET));
	ck_assert(!api_route_allows(API_ROUTE_CHUNK, API_METHOD_POST));
	ck_assert(!api_route_allows(API_ROUTE_CACHE_INDEX, API_METHOD_DELETE));
}
END_TEST

/* 20 gaps between data chunks, gap i being i+1 chunks long: the 5 smallest are filled. */
START_TEST(small_gaps_are_filled)
{
	struct oci_chunk_entry e[21] = {0};
	struct oci_chunk_index ix = {.chunk_size = 1U << 20, .chunks = e, .n_chunks = 21};
	struct dist_gap *g = NULL;
	uint64_t off = 5ULL << 20; /* a leading gap: not between data, never filled */
	size_t n = 0;

	for (int i = 0; i < 21; i++) {
		e[i].offset = off;
		off += (uint64_t)(i + 2) << 20; /* the chunk, then i + 1 zero chunks */
	}
	ix.size = off + (7ULL << 20); /* a trailing gap: never filled */
	ck_assert_int_eq(fetch_small_gaps(&ix, 15, &g, &n), 0);
	ck_assert_uint_eq(n, 5);
	for (size_t i = 0; i < n; i++) {
		uint64_t len = (g[i].end - g[i].start) >> 20;
		ck_assert_msg(len >= 1 && len <= 5, "gap %zu: %llu chunks", i,
			      (unsigned long long)len);
		ck_assert_uint_gt(g[i].start, 5ULL << 20);
		ck_assert_uint_lt(g[i].end, ix.size - (7ULL << 20));
	}
	free(g);
	/* 15 gaps or fewer: nothing to fill. */
	ix.n_chunks = 16;
	ck_assert_int_eq(fetch_small_gaps(&ix, 15, &g, &n), 0);
	ck_assert_uint_eq(n, 0);
	ck_assert_ptr_null(g);
	/* Adjacent data chunks leave no gap at all. */
	for (int i = 0; i < 21; i++)
		e[i].offset = (uint64_t)i << 20;
	ix.n_chunks = 21;
	ck_assert_int_eq(fetch_small_gaps(&ix, 15, &g, &n), 0);
	ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(source_order_parses)
{
	imc_error err = {0};
	bool first = true;
	uint64_t ms = 0;

	ck_assert_int_eq(dist_source_order_parse("server,registry", &first, &err), 0);
	ck_assert(!first);
	ck_assert_int_eq(dist_source_order_parse("registry,server", &first, &err), 0);
	ck_assert(first);
	ck_assert_int_eq(dist_source_order_parse("server", &first, &err), 0);
	ck_assert(!first);
	ck_assert_int_eq(dist_source_order_parse("registry", &first, &err), 0);
	ck_assert(first);
	first = false;
	static const char *const bad[] = {"",
					  ",",
					  "server,",
					  ",registry",
					  "server,server",
					  "imcd",
					  "registry,x",
					  "server,registry,",
					  "Server",
					  " server",
					  "registry;server"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(dist_source_order_parse(bad[i], &first, &err) == -EINVAL, "%s",
			      bad[i]);
		ck_assert(strstr(err.msg, "want server,registry or registry,server"));
		ck_assert(!first); /* unchanged */
	}
	ck_assert_int_eq(dist_source_order_parse(NULL, &first, &err), -EINVAL);

	ck_assert_int_eq(dist_deadline_parse("1", "--read-deadline", &ms, &err), 0);
	ck_assert_uint_eq(ms, 1000);
	ck_assert_int_eq(dist_deadline_parse("86400", "--read-deadline", &ms, &err), 0);
	ck_assert_uint_eq(ms, 86400000);
	static const char *const bad_s[] = {
	    "", "0", "-1", "1.5", "10s", "+5", " 5", "86401", "99999999999999999999"};
	for (size_t i = 0; i < sizeof(bad_s) / sizeof(bad_s[0]); i++) {
		ms = 7;
		ck_assert_msg(dist_deadline_parse(bad_s[i], "--source-deadline", &ms, &err) ==
				  -EINVAL,
			      "%s", bad_s[i]);
		ck_assert(strstr(err.msg, "--source-deadline"));
		ck_assert_uint_eq(ms, 7);
	}
}
END_TEST

#define S_NS 1000000000ULL

START_TEST(a_failing_source_is_abandoned_after_its_deadline)
{
	struct dist_health h = {0};
	const enum dist_source_kind both[] = {DIST_SOURCE_SERVER, DIST_SOURCE_REGISTRY};
	const enum dist_source_kind rev[] = {DIST_SOURCE_REGISTRY, DIST_SOURCE_SERVER};

	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), DIST_SOURCE_SERVER);
	ck_assert_int_eq(dist_health_pick(&h, rev, 2, 0, false), DIST_SOURCE_REGISTRY);
	/* Failing from t=100 s with a 10 s deadline: kept until 110 s, abandoned then, once. */
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_SERVER, 100 * S_NS, 10 * S_NS, false));
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_SERVER, 109 * S_NS, 10 * S_NS, false));
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), DIST_SOURCE_SERVER);
	ck_assert(dist_health_failed(&h, DIST_SOURCE_SERVER, 110 * S_NS, 10 * S_NS, false));
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_SERVER, 111 * S_NS, 10 * S_NS, false));
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), DIST_SOURCE_REGISTRY);
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, true), DIST_SOURCE_REGISTRY);
	/* A success in between starts the clock anew. */
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_REGISTRY, 200 * S_NS, 10 * S_NS, false));
	dist_health_ok(&h, DIST_SOURCE_REGISTRY);
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_REGISTRY, 209 * S_NS, 10 * S_NS, false));
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_REGISTRY, 218 * S_NS, 10 * S_NS, false));
	ck_assert(dist_health_failed(&h, DIST_SOURCE_REGISTRY, 219 * S_NS, 10 * S_NS, false));
	/* Both abandoned: a whole fetch has none left; a lazy read starts them anew, in order. */
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), -1);
	ck_assert_int_eq(dist_health_pick(&h, rev, 2, 0, true), DIST_SOURCE_REGISTRY);
	ck_assert(!h.abandoned[DIST_SOURCE_SERVER] && !h.abandoned[DIST_SOURCE_REGISTRY]);
	ck_assert_uint_eq(h.failing_since_ns[DIST_SOURCE_SERVER], 0);
	ck_assert(!dist_health_failed(&h, DIST_SOURCE_REGISTRY, 300 * S_NS, 10 * S_NS, false));
	/* A permanent error abandons at once; a success brings a source back. */
	ck_assert(dist_health_failed(&h, DIST_SOURCE_SERVER, 300 * S_NS, 10 * S_NS, true));
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), DIST_SOURCE_REGISTRY);
	dist_health_ok(&h, DIST_SOURCE_SERVER);
	ck_assert_int_eq(dist_health_pick(&h, both, 2, 0, false), DIST_SOURCE_SERVER);
}
END_TEST

START_TEST(the_pick_skips_and_the_waits_grow)
{
	struct dist_health h = {0};
	const enum dist_source_kind both[] = {DIST_SOURCE_SERVER, DIST_SOURCE_REGISTRY};
	const enum dist_source_kind one[] = {DIST_SOURCE_REGISTRY};
	const unsigned server = 1U << DIST_SOURCE_SERVER, registry = 1U << DIST_SOURCE_REGISTRY;

	/* A source that sent the chunk corrupt is skipped, abandoned or not. */
	ck_assert_int_eq(dist_health_pick(&h, both, 2, server, false), DIST_SOURCE_REGISTRY);
	ck_assert_int_eq(dist_health_pick(&h, both, 2, server | registry, true), -1);
	ck_assert_int_eq(dist_health_pick(&h, one, 1, 0, false), DIST_SOURCE_REGISTRY);
	ck_assert_int_eq(dist_health_pick(&h, one, 1, registry, true), -1);
	ck_assert(dist_health_failed(&h, DIST_SOURCE_REGISTRY, 5 * S_NS, 1 * S_NS, true));
	/* The registry abandoned, the server skipped: a lazy read starts only the registry anew. */
	ck_assert(dist_health_failed(&h, DIST_SOURCE_SERVER, 5 * S_NS, 1 * S_NS, true));
	ck_assert_int_eq(dist_health_pick(&h, both, 2, server, false), -1);
	ck_assert_int_eq(dist_health_pick(&h, both, 2, server, true), DIST_SOURCE_REGISTRY);
	ck_assert(h.abandoned[DIST_SOURCE_SERVER]);
	ck_assert(!h.abandoned[DIST_SOURCE_REGISTRY]);

	ck_assert_uint_eq(dist_retry_wait_ms(0, UINT64_MAX), 250);
	ck_assert_uint_eq(dist_retry_wait_ms(1, UINT64_MAX), 500);
	ck_assert_uint_eq(dist_retry_wait_ms(3, UINT64_MAX), 2000);
	ck_assert_uint_eq(dist_retry_wait_ms(4, UINT64_MAX), 4000);
	ck_assert_uint_eq(dist_retry_wait_ms(5, UINT64_MAX), 4000);
	ck_assert_uint_eq(dist_retry_wait_ms(1000, UINT64_MAX), 4000);
	ck_assert_uint_eq(dist_retry_wait_ms(4, 1200), 1200);
	ck_assert_uint_eq(dist_retry_wait_ms(0, 0), 0);

	ck_assert(dist_error_permanent(-ENOENT) && dist_error_permanent(-EACCES));
	ck_assert(!dist_error_permanent(-ECONNREFUSED) && !dist_error_permanent(-ETIMEDOUT) &&
		  !dist_error_permanent(-EIO) && !dist_error_permanent(-EHOSTUNREACH));
}
END_TEST

/* imcd --chunk-size: a power of two in 64K-64M, with the size suffixes; anything else refused. */
static int parse_chunk_size(const char *arg, struct imcd_options *o)
{
	char *argv[] = {"imcd", "--chunk-size", (char *)arg, NULL};

	optind = 0; /* a fresh getopt scan */
	return imcd_parse_args(3, argv, o);
}

START_TEST(imcd_chunk_size_option)
{
	static const char *const bad[] = {"1000000", "32K", "128M", "0", "-1M", "4X", ""};
	struct imcd_options o;

	ck_assert_int_eq(parse_chunk_size("1M", &o), 0);
	ck_assert_uint_eq(o.chunk_size, 1U << 20);
	ck_assert_int_eq(parse_chunk_size("524288", &o), 0);
	ck_assert_uint_eq(o.chunk_size, 512U << 10);
	ck_assert_int_eq(parse_chunk_size("64K", &o), 0);
	ck_assert_uint_eq(o.chunk_size, OCI_CHUNK_SIZE_MIN);
	ck_assert_int_eq(parse_chunk_size("64M", &o), 0);
	ck_assert_uint_eq(o.chunk_size, OCI_CHUNK_SIZE_MAX);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(parse_chunk_size(bad[i], &o) == -1, "--chunk-size %s taken", bad[i]);
	/* Not given: 0, the exporter's default. */
	char *none[] = {"imcd", NULL};
	optind = 0;
	ck_assert_int_eq(imcd_parse_args(1, none, &o), 0);
	ck_assert_uint_eq(o.chunk_size, 0);
	ck_assert(!dist_chunk_size_valid(3U << 20) &&
		  dist_chunk_size_valid(DIST_CHUNK_SIZE_DEFAULT));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("chunks");
	TCase *tc = tcase_create("chunks");

	tcase_add_test(tc, index_round_trip);
	tcase_add_test(tc, bad_indexes_are_refused);
	tcase_add_test(tc, more_chunks_than_the_size_holds);
	tcase_add_test(tc, codec_verifies_content);
	tcase_add_test(tc, blob_paths);
	tcase_add_test(tc, routes);
	tcase_add_test(tc, small_gaps_are_filled);
	tcase_add_test(tc, forgetting_a_cache_drops_only_its_own_chunks);
	tcase_add_test(tc, source_order_parses);
	tcase_add_test(tc, a_failing_source_is_abandoned_after_its_deadline);
	tcase_add_test(tc, the_pick_skips_and_the_waits_grow);
	tcase_add_test(tc, imcd_chunk_size_option);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
