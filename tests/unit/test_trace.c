/* Startup traces (dist/trace.c, docs/distribution.md "Startup trace"): the JSON parses and renders
 * back, every malformed trace is refused naming the field (too big: -EFBIG), the check against the
 * index refuses unknown and repeated offsets and another chunk size, imcd's store keeps the first
 * trace unless replace, refuses a cache without an index, and forgets it with the index; the
 * route takes GET and PUT. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../api/api.h"
#include "../../dist/dist.h"
#include "unit.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define ID "imc-0123456789abcdef"
#define MT "\"mediaType\":\"" DIST_TRACE_MEDIA_TYPE "\""

static int parse(const char *text, struct dist_trace *t, imc_error *err)
{
	*err = (imc_error){0};
	return dist_trace_parse(text, strlen(text), t, err);
}

START_TEST(trace_round_trip)
{
	struct dist_trace t = {0}, back = {0};
	imc_error err = {0};
	char *buf = NULL;
	size_t len = 0;

	ck_assert_msg(
	    parse("{" MT ",\"chunkSize\":1048576,\"offsets\":[3145728,0,1048576]}", &t, &err) == 0,
	    "%s", err.msg);
	ck_assert_uint_eq(t.chunk_size, 1048576);
	ck_assert_uint_eq(t.n, 3);
	ck_assert_uint_eq(t.offsets[0], 3145728);
	ck_assert_uint_eq(t.offsets[1], 0);
	ck_assert_uint_eq(t.offsets[2], 1048576);
	ck_assert_int_eq(dist_trace_render(&t, &buf, &len, &err), 0);
	ck_assert_int_eq(dist_trace_parse(buf, len, &back, &err), 0);
	ck_assert_uint_eq(back.n, t.n);
	ck_assert_uint_eq(back.chunk_size, t.chunk_size);
	for (size_t i = 0; i < t.n; i++)
		ck_assert_uint_eq(back.offsets[i], t.offsets[i]);
	free(buf);
	dist_trace_free(&back);
	dist_trace_free(&t);
	/* An empty trace is a trace. */
	ck_assert_int_eq(parse("{" MT ",\"chunkSize\":65536,\"offsets\":[]}", &t, &err), 0);
	ck_assert_uint_eq(t.n, 0);
	dist_trace_free(&t);
}
END_TEST

START_TEST(bad_traces_are_refused)
{
	static const struct {
		const char *text, *says;
		int code;
	} bad[] = {
	    {"", "malformed JSON", -EINVAL},
	    {"[1,2]", "want an object", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[0]", "malformed JSON", -EINVAL},
	    {"{\"chunkSize\":1048576,\"offsets\":[0]}", "mediaType", -EINVAL},
	    {"{\"mediaType\":\"x\",\"chunkSize\":1048576,\"offsets\":[0]}", "mediaType", -EINVAL},
	    {"{" MT ",\"offsets\":[0]}", "chunkSize", -EINVAL},
	    {"{" MT ",\"chunkSize\":1000000,\"offsets\":[0]}", "power of two", -EINVAL},
	    {"{" MT ",\"chunkSize\":1024,\"offsets\":[0]}", "chunkSize", -ERANGE},
	    {"{" MT ",\"chunkSize\":\"1048576\",\"offsets\":[0]}", "chunkSize", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576}", "offsets", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":{}}", "offsets", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[-1]}", "offsets[0]", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[0,\"1\"]}", "offsets[1]", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[0,1.5]}", "offsets[1]", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[17592186044416]}", "offsets[0]", -EINVAL},
	    {"{" MT ",\"chunkSize\":1048576,\"offsets\":[],\"extra\":1}", "extra", -EINVAL},
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dist_trace t = {0};
		imc_error err = {0};
		int r = parse(bad[i].text, &t, &err);
		ck_assert_msg(r == bad[i].code, "%zu: %d (%s)", i, r, err.msg);
		ck_assert_int_eq(err.code, r);
		ck_assert_msg(strstr(err.msg, bad[i].says), "%zu: %s", i, err.msg);
		ck_assert_ptr_null(t.offsets);
	}
}
END_TEST

/* Caps: more offsets than DIST_TRACE_ENTRIES_MAX, or more bytes than DIST_TRACE_BYTES_MAX. */
START_TEST(too_big_traces_are_refused)
{
	size_t cap = 64 + 2 * (DIST_TRACE_ENTRIES_MAX + 1) + DIST_TRACE_BYTES_MAX;
	char *text = malloc(cap);
	struct dist_trace t = {0};
	imc_error err = {0};
	size_t n;

	ck_assert_ptr_nonnull(text);
	n = (size_t)snprintf(text, cap, "{" MT ",\"chunkSize\":65536,\"offsets\":[0");
	for (size_t i = 0; i < DIST_TRACE_ENTRIES_MAX; i++)
		n += (size_t)snprintf(text + n, cap - n, ",0");
	snprintf(text + n, cap - n, "]}");
	ck_assert_int_eq(parse(text, &t, &err), -EFBIG);
	ck_assert_msg(strstr(err.msg, "more than 65536"), "%s", err.msg);
	ck_assert_ptr_null(t.offsets);
	/* Bytes: spaces past the cap. */
	n = (size_t)snprintf(text, cap, "{" MT ",\"chunkSize\":65536,\"offsets\":[]");
	memset(text + n, ' ', DIST_TRACE_BYTES_MAX);
	snprintf(text + n + DIST_TRACE_BYTES_MAX, cap - n - DIST_TRACE_BYTES_MAX, "}");
	ck_assert_int_eq(parse(text, &t, &err), -EFBIG);
	free(text);
}
END_TEST

/* 1 MiB chunks at 0, 1 MiB and 3 MiB of a 4 MiB snapshot (2 MiB: zeros). */
static struct oci_chunk_index three_chunks(struct oci_chunk_entry e[3])
{
	for (size_t i = 0; i < 3; i++)
		e[i] = (struct oci_chunk_entry){.offset = (i == 2 ? 3 : i) << 20, .csize = 1};
	return (struct oci_chunk_index){
	    .chunk_size = 1 << 20, .size = 4 << 20, .chunks = e, .n_chunks = 3};
}

START_TEST(trace_checked_against_the_index)
{
	struct oci_chunk_entry e[3];
	struct oci_chunk_index ix = three_chunks(e);
	uint64_t off[4] = {3 << 20, 0, 1 << 20, 0};
	struct dist_trace t = {.chunk_size = 1 << 20, .offsets = off, .n = 3};
	imc_error err = {0};

	ck_assert_msg(dist_trace_check(&t, &ix, &err) == 0, "%s", err.msg);
	t.n = 4; /* 0 twice (and more than the index has) */
	ck_assert_int_eq(dist_trace_check(&t, &ix, &err), -EINVAL);
	off[3] = 2 << 20;
	t.n = 3;
	off[2] = 2 << 20; /* a zero chunk: no data chunk starts there */
	ck_assert_int_eq(dist_trace_check(&t, &ix, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "offsets[2] 2097152: no data chunk"), "%s", err.msg);
	off[2] = 1; /* not even a chunk's start */
	ck_assert_int_eq(dist_trace_check(&t, &ix, &err), -EINVAL);
	off[2] = 0;
	ck_assert_int_eq(dist_trace_check(&t, &ix, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "offsets[2] 0: given twice"), "%s", err.msg);
	off[2] = 1 << 20;
	t.chunk_size = 1 << 21;
	ck_assert_int_eq(dist_trace_check(&t, &ix, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "chunkSize"), "%s", err.msg);
}
END_TEST

static void put_index(const char *root, const char *id)
{
	char path[512], text[1024];
	int fd;

	snprintf(text, sizeof(text),
		 "{\"mediaType\":\"" OCI_SNAPSHOT_MT_INDEX "\",\"cacheId\":\"%s\","
		 "\"chunkSize\":1048576,\"size\":2097152,\"sha256\":\"" D1 "\",\"chunks\":["
		 "{\"offset\":0,\"digest\":\"" D1 "\",\"blob\":\"" D1 "\",\"csize\":10},"
		 "{\"offset\":1048576,\"digest\":\"" D2 "\",\"blob\":\"" D2 "\",\"csize\":9}]}",
		 id);
	snprintf(path, sizeof(path), "%s/chunks/index/%s.json", root, id);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, text, strlen(text)), 0);
	close(fd);
}

static uint64_t stored_first(struct dist_chunks *cs)
{
	struct dist_trace t = {0};
	imc_error err = {0};
	char *buf = NULL;
	size_t len = 0;
	uint64_t first;

	ck_assert_msg(dist_trace_read(cs, ID, &buf, &len, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(dist_trace_parse(buf, len, &t, &err), 0);
	ck_assert_uint_ge(t.n, 1);
	first = t.offsets[0];
	dist_trace_free(&t);
	free(buf);
	return first;
}

START_TEST(imcd_keeps_the_first_trace_and_forgets_it_with_the_index)
{
	char root[] = "/tmp/imc-test-trace.XXXXXX", path[512];
	uint64_t a[] = {1 << 20, 0}, b[] = {0}, wrong[] = {1 << 21};
	struct dist_trace ta = {.chunk_size = 1 << 20, .offsets = a, .n = 2};
	struct dist_trace tb = {.chunk_size = 1 << 20, .offsets = b, .n = 1};
	struct dist_trace tw = {.chunk_size = 1 << 20, .offsets = wrong, .n = 1};
	struct dist_chunks *cs = NULL;
	imc_error err = {0};
	uint64_t freed;
	char *buf = NULL;
	size_t len;

	ck_assert_ptr_nonnull(mkdtemp(root));
	ck_assert_int_eq(dist_chunks_open(root, NULL, &cs, &err), 0);
	/* No index yet: nothing to check against, nothing stored. */
	ck_assert_int_eq(dist_trace_store(cs, ID, &ta, false, &err), -EBUSY);
	ck_assert_msg(strstr(err.msg, "not exported yet"), "%s", err.msg);
	ck_assert_int_eq(dist_trace_read(cs, ID, &buf, &len, &err), -ENOENT);
	put_index(root, ID);
	/* A wrong one changes nothing. */
	ck_assert_int_eq(dist_trace_store(cs, ID, &tw, false, &err), -EINVAL);
	ck_assert_int_eq(dist_trace_read(cs, ID, &buf, &len, &err), -ENOENT);
	ck_assert_msg(dist_trace_store(cs, ID, &ta, false, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(stored_first(cs), 1 << 20);
	/* The first is kept ... */
	ck_assert_int_eq(dist_trace_store(cs, ID, &tb, false, &err), -EBUSY);
	ck_assert_msg(strstr(err.msg, "replace=true"), "%s", err.msg);
	ck_assert_uint_eq(stored_first(cs), 1 << 20);
	/* ... unless replaced. */
	ck_assert_int_eq(dist_trace_store(cs, ID, &tb, true, &err), 0);
	ck_assert_uint_eq(stored_first(cs), 0);
	ck_assert_int_lt(dist_trace_store(cs, "../x", &tb, true, &err), 0);
	/* Forgetting the cache drops it with the index. */
	ck_assert_int_eq(dist_forget(cs, ID, &freed, &err), 0);
	ck_assert_int_eq(dist_trace_read(cs, ID, &buf, &len, &err), -ENOENT);
	snprintf(path, sizeof(path), "%s/chunks/trace/%s.json", root, ID);
	ck_assert_int_ne(access(path, F_OK), 0);
	dist_chunks_close(cs);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, root, &err), 0);
}
END_TEST

START_TEST(trace_route)
{
	struct api_match m;

	api_route_match("/v1/imagecaches/" ID "/trace", &m);
	ck_assert_int_eq(m.route, API_ROUTE_CACHE_TRACE);
	ck_assert_uint_eq(m.id_len, strlen(ID));
	ck_assert_int_eq(strncmp(m.id, ID, m.id_len), 0);
	api_route_match("/v1/imagecaches//trace", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/a/b/trace", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	api_route_match("/v1/imagecaches/a/traces", &m);
	ck_assert_int_eq(m.route, API_ROUTE_NONE);
	ck_assert(api_route_allows(API_ROUTE_CACHE_TRACE, api_method_parse("GET")));
	ck_assert(api_route_allows(API_ROUTE_CACHE_TRACE, api_method_parse("PUT")));
	ck_assert(!api_route_allows(API_ROUTE_CACHE_TRACE, api_method_parse("POST")));
	ck_assert(!api_route_allows(API_ROUTE_CACHE_TRACE, api_method_parse("DELETE")));
	ck_assert(!api_route_allows(API_ROUTE_CACHE, api_method_parse("PUT")));
	ck_assert_str_eq(api_route_allow(API_ROUTE_CACHE_TRACE), "GET, PUT");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("trace");
	TCase *tc = tcase_create("trace");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, trace_round_trip);
	tcase_add_test(tc, bad_traces_are_refused);
	tcase_add_test(tc, too_big_traces_are_refused);
	tcase_add_test(tc, trace_checked_against_the_index);
	tcase_add_test(tc, imcd_keeps_the_first_trace_and_forgets_it_with_the_index);
	tcase_add_test(tc, trace_route);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
