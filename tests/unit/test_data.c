/* Unit tests of model data: names, URLs and sources, the default size, and downloads from a
 * real HTTP server in this process (libmicrohttpd) that serves byte ranges and misbehaves on
 * request: 503s, connections dropped in the middle of a piece, ranges ignored, no length. */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <microhttpd.h>

#include "../../builder/builder.h"
#include "unit.h"

/* ---- names, URLs, sources ------------------------------------------------------------------ */

START_TEST(names)
{
	char long_name[BUILDER_DATA_NAME_MAX + 2];

	ck_assert(builder_data_name_valid("model.safetensors"));
	ck_assert(builder_data_name_valid("a b+c=d"));
	ck_assert(builder_data_name_valid("..."));
	ck_assert(!builder_data_name_valid(""));
	ck_assert(!builder_data_name_valid("."));
	ck_assert(!builder_data_name_valid(".."));
	ck_assert(!builder_data_name_valid("a/b"));
	ck_assert(!builder_data_name_valid("a\nb"));
	ck_assert(!builder_data_name_valid(NULL));
	memset(long_name, 'x', sizeof(long_name));
	long_name[BUILDER_DATA_NAME_MAX] = '\0';
	ck_assert(builder_data_name_valid(long_name));
	long_name[BUILDER_DATA_NAME_MAX] = 'x';
	long_name[BUILDER_DATA_NAME_MAX + 1] = '\0';
	ck_assert(!builder_data_name_valid(long_name));

	ck_assert_int_eq(data_rel_path_check("onnx/model.onnx", NULL), 0);
	ck_assert_int_eq(data_rel_path_check("a", NULL), 0);
	ck_assert_int_eq(data_rel_path_check("../etc/passwd", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("a/../../b", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("/abs", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("a//b", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("a/", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("a/./b", NULL), -EINVAL);
	ck_assert_int_eq(data_rel_path_check("1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17", NULL),
			 -EINVAL);
}
END_TEST

/* The file name an https source gives: its path's last component without query or fragment,
 * percent-decoded (but %00, and escapes that are not two hex digits, kept as they are). */
START_TEST(url_file_names)
{
	static const char *const cases[][2] = {
	    {"https://h.example/llm/model.safetensors", "model.safetensors"},
	    {"https://h.example/a%20b/my%20model.bin?x=1#f", "my model.bin"},
	    {"https://h.example/we%2Fird.bin", "we/ird.bin"},
	    {"https://h.example/m%00.bin", "m%00.bin"},
	    {"https://h.example/m%zz%4", "m%zz%4"},
	    {"https://h.example/", ""},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		char *name = data_url_file_name(cases[i][0]);
		ck_assert_msg(name, "%s", cases[i][0]);
		ck_assert_str_eq(name, cases[i][1]);
		free(name);
	}
	ck_assert_ptr_null(data_url_file_name("not a URL"));
	ck_assert_ptr_null(data_url_file_name("ftp://h.example/m.bin"));
}
END_TEST

START_TEST(urls)
{
	bool plain = true;
	imc_error err;

	ck_assert_int_eq(data_url_check("https://example.com/m.bin", &plain, &err), 0);
	ck_assert(!plain);
	ck_assert_int_eq(data_url_check("http://127.0.0.1:8080/m.bin", &plain, &err), 0);
	ck_assert(plain);
	ck_assert_int_eq(data_url_check("http://localhost/m.bin", &plain, &err), 0);
	ck_assert_int_eq(data_url_check("http://[::1]:9/m.bin", &plain, &err), 0);
	ck_assert_int_eq(data_url_check("http://example.com/m.bin", NULL, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "loopback"), "%s", err.msg);
	ck_assert_int_eq(data_url_check("http://128.0.0.1/m.bin", NULL, &err), -EINVAL);
	ck_assert_int_eq(data_url_check("ftp://example.com/m.bin", NULL, &err), -EINVAL);
	ck_assert_int_eq(data_url_check("file:///etc/passwd", NULL, &err), -EINVAL);
	ck_assert_int_eq(data_url_check("https://user:pw@example.com/m", NULL, &err), -EINVAL);
	ck_assert_msg(!strstr(err.msg, "pw"), "the message echoes the password: %s", err.msg);
	ck_assert_int_eq(data_url_check("not a url", NULL, &err), -EINVAL);
}
END_TEST

START_TEST(hf_sources)
{
	char *repo = NULL, *rev = NULL;

	ck_assert_int_eq(data_hf_parse("hf://org/repo@v1.0", &repo, &rev, NULL), 0);
	ck_assert_str_eq(repo, "org/repo");
	ck_assert_str_eq(rev, "v1.0");
	free(repo);
	free(rev);
	ck_assert_int_eq(data_hf_parse("hf://gpt2", &repo, &rev, NULL), 0);
	ck_assert_str_eq(repo, "gpt2");
	ck_assert_str_eq(rev, "main");
	free(repo);
	free(rev);
	static const char *const bad[] = {
	    "hf://",	  "hf://org/",	 "hf:///repo",	"hf://org/repo@",
	    "hf://a/b/c", "hf://../x",	 "hf://org/..", "hf://o/r@a/b",
	    "hf://o r/x", "https://x/y", "hf://o/r@..",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		repo = rev = NULL;
		ck_assert_msg(data_hf_parse(bad[i], &repo, &rev, NULL) == -EINVAL, "%s", bad[i]);
		ck_assert_ptr_null(repo);
	}
}
END_TEST

START_TEST(entries)
{
	enum builder_data_kind kind;
	imc_error err;
	const char *sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#define D(src, p, s) (&(struct builder_data){.source = (src), .path = (p), .sha256 = (s)})
	ck_assert_int_eq(builder_data_check(D("https://h/m.bin", "llm", sha), &kind, &err), 0);
	ck_assert_int_eq(kind, BUILDER_DATA_HTTPS);
	ck_assert_int_eq(
	    builder_data_check(D("oci://127.0.0.1:5000/a/b:v1", "x", NULL), &kind, &err), 0);
	ck_assert_int_eq(kind, BUILDER_DATA_OCI);
	ck_assert_int_eq(builder_data_check(D("hf://org/repo@main", "x", NULL), &kind, &err), 0);
	ck_assert_int_eq(kind, BUILDER_DATA_HF);

	ck_assert_int_eq(builder_data_check(D("hf://org/repo", "x", sha), NULL, &err), -EINVAL);
	ck_assert_msg(strncmp(err.msg, "sha256:", 7) == 0, "%s", err.msg);
	ck_assert_int_eq(builder_data_check(D("https://h/m", "x", "ABC"), NULL, &err), -EINVAL);
	ck_assert_msg(strncmp(err.msg, "sha256:", 7) == 0, "%s", err.msg);
	ck_assert_int_eq(builder_data_check(D("oci://", "x", NULL), NULL, &err), -EINVAL);
	ck_assert_msg(strncmp(err.msg, "source:", 7) == 0, "%s", err.msg);
	ck_assert_int_eq(builder_data_check(D("https://h/m", "a/", NULL), NULL, &err), -EINVAL);
	ck_assert_msg(strncmp(err.msg, "path: ", 6) == 0, "%s", err.msg);
	ck_assert_int_eq(builder_data_check(D("gopher://h/m", "a", NULL), NULL, &err), -EINVAL);
	ck_assert_msg(strncmp(err.msg, "source:", 7) == 0, "%s", err.msg);
#undef D
}
END_TEST

/* data[].path may be a relative path of several components, each one checked. */
START_TEST(nested_paths)
{
	static const char *const good[] = {"models/llama-3-8b", "a/b/c", "a b/c+d", "m/...",
					   "1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16"};
	static const struct {
		const char *path, *msg;
	} bad[] = {
	    {"", "not a relative path"},
	    {"/models", "not a relative path"},
	    {"models/", "not a relative path"},
	    {"models//x", "not a relative path"},
	    {"./models", "bad component \".\""},
	    {"models/./x", "bad component \".\""},
	    {"models/../../etc", "bad component \"..\""},
	    {"..", "bad component \"..\""},
	    {"a/b\nc", "a control character at byte 3"},
	    {"1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17", "deeper than 16"},
	};
	char long_comp[BUILDER_DATA_NAME_MAX + 8];
	imc_error err;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(good); i++)
		ck_assert_msg(builder_data_check(
				  &(struct builder_data){.source = "https://h/m", .path = good[i]},
				  NULL, &err) == 0,
			      "%s: %s", good[i], err.msg);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		int r = builder_data_check(
		    &(struct builder_data){.source = "https://h/m", .path = bad[i].path}, NULL,
		    &err);
		ck_assert_msg(r == -EINVAL, "%s: accepted", bad[i].path);
		ck_assert_msg(strncmp(err.msg, "path: ", 6) == 0 && strstr(err.msg, bad[i].msg),
			      "%s: %s", bad[i].path, err.msg);
	}
	memset(long_comp, 'x', sizeof(long_comp));
	memcpy(long_comp, "a/", 2);
	long_comp[sizeof(long_comp) - 1] = '\0';
	ck_assert_int_eq(
	    builder_data_check(&(struct builder_data){.source = "https://h/m", .path = long_comp},
			       NULL, &err),
	    -EINVAL);

	ck_assert(builder_data_paths_overlap("models", "models"));
	ck_assert(builder_data_paths_overlap("models", "models/llama"));
	ck_assert(builder_data_paths_overlap("models/llama/x", "models/llama"));
	ck_assert(!builder_data_paths_overlap("models", "models2"));
	ck_assert(!builder_data_paths_overlap("models/a", "models/b"));
	ck_assert(!builder_data_paths_overlap("models/ab", "models/a"));
}
END_TEST

START_TEST(default_size)
{
	uint64_t gib = 1ULL << 30;

	ck_assert_uint_eq(build_default_size(0, 0), gib);
	ck_assert_uint_eq(build_default_size(gib, 0), 8 * gib);
	/* Data is stored as it is: its bytes, 1/16 more and a slack, on top of the images. */
	ck_assert_uint_ge(build_default_size(0, 4 * gib), gib + 4 * gib + gib / 4);
	ck_assert_uint_le(build_default_size(0, 4 * gib), gib + 4 * gib + gib / 4 + (128 << 20));
	ck_assert_uint_eq(build_default_size(0, 4 * gib) % (1 << 20), 0);
	ck_assert_uint_eq(build_default_size(UINT64_MAX / 2, UINT64_MAX / 2), 16ULL << 40);
}
END_TEST

/* ---- a real HTTP server ---------------------------------------------------------------------- */

#define BODY_SIZE  (3 * (1 << 20) + 12345)
#define RANGES_MAX 256

struct server {
	struct MHD_Daemon *d;
	char url[128];
	unsigned char *body;
	size_t size;
	pthread_mutex_t lock;
	/* behaviour */
	unsigned fail_first; /* answer 503 to that many GETs */
	size_t drop_at;	     /* the first ranged GET past its first byte stops after this many */
	bool dropped;
	bool ignore_range; /* 200 with the whole body for a ranged GET */
	bool no_length;	   /* no Content-Length (chunked), no Accept-Ranges */
	bool no_ranges;	   /* no Accept-Ranges in HEAD */
	unsigned status;   /* != 0: answer every request with this */
	/* record */
	unsigned gets, heads;
	uint64_t range_starts[RANGES_MAX];
	unsigned n_ranges;
};

struct reader {
	struct server *s;
	size_t start, len, stop_after; /* stop_after: SIZE_MAX = never */
};

static ssize_t read_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct reader *r = cls;
	size_t n;

	if (pos >= r->stop_after)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if (pos >= r->len)
		return MHD_CONTENT_READER_END_OF_STREAM;
	n = r->len - pos;
	if (n > max)
		n = max;
	if (r->stop_after != SIZE_MAX && pos + n > r->stop_after)
		n = r->stop_after - pos;
	memcpy(buf, r->s->body + r->start + pos, n);
	return (ssize_t)n;
}

static int parse_range(const char *h, size_t size, size_t *ret_start, size_t *ret_end)
{
	unsigned long long a, b;
	char dash;

	if (!h || strncmp(h, "bytes=", 6) != 0)
		return -1;
	if (sscanf(h + 6, "%llu-%llu", &a, &b) == 2) {
		*ret_start = a;
		*ret_end = b + 1 > size ? size : b + 1;
	} else if (sscanf(h + 6, "%llu%c", &a, &dash) == 2 && dash == '-') {
		*ret_start = a;
		*ret_end = size;
	} else {
		return -1;
	}
	return *ret_start < *ret_end ? 0 : -1;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_size, void **con_cls)
{
	struct server *s = cls;
	const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
	struct MHD_Response *resp;
	struct reader *r = calloc(1, sizeof(*r));
	unsigned status = 200;
	size_t start = 0, end = s->size;
	bool head = strcmp(method, "HEAD") == 0, fail;
	enum MHD_Result ret;

	ck_assert_ptr_nonnull(r);
	pthread_mutex_lock(&s->lock);
	if (head)
		s->heads++;
	else
		s->gets++;
	fail = !head && s->fail_first > 0;
	if (fail) {
		s->fail_first--;
		status = 503;
	}
	if (s->status) {
		fail = true;
		status = s->status;
	}
	r->s = s;
	r->stop_after = SIZE_MAX;
	if (!fail && !head && range && !s->ignore_range && !s->no_length &&
	    parse_range(range, s->size, &start, &end) == 0) {
		status = 206;
		if (s->n_ranges < RANGES_MAX)
			s->range_starts[s->n_ranges++] = start;
		if (s->drop_at && !s->dropped && start > 0) {
			s->dropped = true;
			r->stop_after = s->drop_at;
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (fail) {
		free(r);
		resp = MHD_create_response_from_buffer(4, (void *)"busy", MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(conn, status, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	r->start = start;
	r->len = end - start;
	resp = MHD_create_response_from_callback(s->no_length ? MHD_SIZE_UNKNOWN : r->len,
						 64 * 1024, read_cb, r, free);
	if (!s->no_length && !s->no_ranges)
		MHD_add_response_header(resp, "Accept-Ranges", "bytes");
	if (status == 206) {
		char cr[128];
		snprintf(cr, sizeof(cr), "bytes %zu-%zu/%zu", start, end - 1, s->size);
		MHD_add_response_header(resp, "Content-Range", cr);
	}
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void server_start(struct server *s)
{
	const union MHD_DaemonInfo *info;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

	s->size = BODY_SIZE;
	s->body = malloc(s->size);
	ck_assert_ptr_nonnull(s->body);
	for (size_t i = 0; i < s->size; i++)
		s->body[i] = (unsigned char)((i * 2654435761u) >> 13);
	pthread_mutex_init(&s->lock, NULL);
	s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
				NULL, NULL, answer, s, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
	ck_assert_ptr_nonnull(s->d);
	info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	ck_assert_ptr_nonnull(info);
	snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u/model.bin", info->port);
}

static void server_stop(struct server *s)
{
	MHD_stop_daemon(s->d);
	pthread_mutex_destroy(&s->lock);
	free(s->body);
}

static int tmp_file(void)
{
	char path[] = "/tmp/imc-test-data.XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	unlink(path);
	return fd;
}

/* Each download test runs against a fresh server, into an empty unlinked file (a checked
 * fixture of the "download" case). */
static struct server srv;
static int dl_fd = -1;

/* The data client, as imcd makes it: every connection checked, the test's server allowed. */
static struct net_client *dl_net;

static struct net_client *data_client(const char *const *allow)
{
	struct net_client *c = NULL;
	imc_error err = {0};

	ck_assert_msg(net_client_new(&(struct net_config){.check_destination = true,
							  .allow_destinations = allow,
							  .retry = {.base_ms = 10, .max_ms = 50}},
				     &c, &err) == 0,
		      "%s", err.msg);
	return c;
}

static void download_setup(void)
{
	static const char *const allow[] = {"127.0.0.1", NULL};

	memset(&srv, 0, sizeof(srv));
	server_start(&srv);
	dl_fd = tmp_file();
	dl_net = data_client(allow);
}

static void download_teardown(void)
{
	close(dl_fd);
	dl_fd = -1;
	server_stop(&srv);
	net_client_free(dl_net);
	dl_net = NULL;
}

/* The downloaded file holds exactly the server's body. */
static void expect_content(void)
{
	unsigned char *got = malloc(srv.size + 1);
	struct stat st;

	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(fstat(dl_fd, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)srv.size);
	ck_assert_int_eq(pread(dl_fd, got, srv.size + 1, 0), (ssize_t)srv.size);
	ck_assert(memcmp(got, srv.body, srv.size) == 0);
	free(got);
}

static void body_sha(char out[IMC_SHA256_HEX_LEN + 1])
{
	ck_assert_int_eq(imc_sha256_hex(srv.body, srv.size, out, NULL), 0);
}

/* A download of the server's body into dl_fd; known: the size is given and ranges are used. */
static struct builder_download dl_for(bool known)
{
	return (struct builder_download){
	    .url = srv.url,
	    .net = dl_net,
	    .fd = dl_fd,
	    .size = known ? srv.size : UINT64_MAX,
	    .ranges = known,
	    .connections = 4,
	    .piece_size = 256 * 1024,
	};
}

START_TEST(head)
{
	uint64_t size = 0;
	bool ranges = false;

	ck_assert_int_eq(builder_download_head(dl_net, srv.url, &size, &ranges, NULL), 0);
	ck_assert_uint_eq(size, BODY_SIZE);
	ck_assert(ranges);
	srv.no_ranges = true;
	ck_assert_int_eq(builder_download_head(dl_net, srv.url, &size, &ranges, NULL), 0);
	ck_assert(!ranges);
	srv.status = 404;
	ck_assert_int_eq(builder_download_head(dl_net, srv.url, &size, &ranges, NULL), -ENOENT);
}
END_TEST

START_TEST(ranged_pieces)
{
	char want[IMC_SHA256_HEX_LEN + 1];
	struct builder_download d = dl_for(true);
	imc_error err = {0};
	size_t pieces = (BODY_SIZE + 256 * 1024 - 1) / (256 * 1024);

	body_sha(want);
	d.want_sha256 = want;
	ck_assert_msg(builder_download(&d, &err) == 0, "%s", err.msg);
	expect_content();
	ck_assert_str_eq(d.got_sha256, want);
	ck_assert_uint_eq(d.got_size, BODY_SIZE);
	ck_assert_uint_eq(d.retries, 0);
	ck_assert_uint_eq(srv.n_ranges, pieces); /* one ranged GET a piece */
	ck_assert_uint_eq(srv.gets, pieces);
	for (unsigned i = 0; i < srv.n_ranges; i++)
		ck_assert_uint_eq(srv.range_starts[i] % (256 * 1024), 0);
}
END_TEST

START_TEST(retry_503)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	srv.fail_first = 3;
	ck_assert_msg(builder_download(&d, &err) == 0, "%s", err.msg);
	expect_content();
	ck_assert_uint_eq(d.retries, 3);
}
END_TEST

START_TEST(always_503)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	srv.status = 503;
	d.connections = 1;
	ck_assert_int_eq(builder_download(&d, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "HTTP 503") && strstr(err.msg, "attempts"), "%s", err.msg);
}
END_TEST

START_TEST(resume_dropped)
{
	char want[IMC_SHA256_HEX_LEN + 1];
	struct builder_download d = dl_for(true);
	imc_error err = {0};
	bool resumed = false;

	body_sha(want);
	srv.drop_at = 100000; /* inside a 256 KiB piece */
	d.want_sha256 = want;
	ck_assert_msg(builder_download(&d, &err) == 0, "%s", err.msg);
	expect_content();
	ck_assert(srv.dropped);
	ck_assert_uint_ge(d.retries, 1);
	/* The retry asked for the rest of the piece, not all of it again. */
	for (unsigned i = 0; i < srv.n_ranges; i++)
		if (srv.range_starts[i] % (256 * 1024) == 100000)
			resumed = true;
	ck_assert(resumed);
}
END_TEST

START_TEST(range_ignored)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	srv.ignore_range = true;
	ck_assert_msg(builder_download(&d, &err) == 0, "%s", err.msg);
	expect_content();
}
END_TEST

START_TEST(unknown_length)
{
	char want[IMC_SHA256_HEX_LEN + 1];
	struct builder_download d = dl_for(false);
	imc_error err = {0};

	body_sha(want);
	srv.no_length = true;
	ck_assert_msg(builder_download(&d, &err) == 0, "%s", err.msg);
	expect_content();
	ck_assert_uint_eq(d.got_size, BODY_SIZE);
	ck_assert_str_eq(d.got_sha256, want);
	ck_assert_uint_eq(srv.gets, 1);
}
END_TEST

START_TEST(sha_mismatch)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	d.want_sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
	ck_assert_int_eq(builder_download(&d, &err), -EBADMSG);
	ck_assert_msg(strstr(err.msg, "sha256 mismatch"), "%s", err.msg);
}
END_TEST

START_TEST(not_found_no_retry)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	srv.status = 404;
	d.connections = 1;
	ck_assert_int_eq(builder_download(&d, &err), -ENOENT);
	ck_assert_uint_eq(srv.gets, 1);
}
END_TEST

START_TEST(more_than_announced)
{
	struct builder_download d = dl_for(true);
	imc_error err = {0};

	d.ranges = false; /* one stream that must be this long */
	d.size = BODY_SIZE - 1;
	ck_assert_int_eq(builder_download(&d, &err), -EFBIG);
}
END_TEST

/* Nested data paths land under /data/<path>/, beside each other; the parents are made one at a
 * time and never through a symlink, and the last one must be new. */
START_TEST(nested_fetch)
{
	char root[] = "/tmp/imc-test-nested.XXXXXX", out[] = "/tmp/imc-test-outside.XXXXXX";
	const char *const paths[] = {"models/llama-3-8b", "models/tiny/v1"};
	struct builder_opts o = {.data_net = dl_net};
	imc_error err = {0};
	char file[512];
	int rootfd;

	ck_assert_ptr_nonnull(mkdtemp(root));
	ck_assert_ptr_nonnull(mkdtemp(out));
	rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(rootfd, 0);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(paths) + 2; i++) {
		/* then the first path again, and one through a symlink out of the root */
		const char *path = i < 2 ? paths[i] : i == 2 ? paths[0] : "evil/x";
		struct builder_data d = {.source = srv.url, .path = path};
		struct builder_data_plan *plan = NULL;
		json_t *entry = NULL;
		int r;

		if (i == 3)
			ck_assert_int_eq(symlinkat(out, rootfd, "data/evil"), 0);
		ck_assert_msg(builder_data_plan(&o, &d, &plan, &err) == 0, "%s", err.msg);
		r = builder_data_fetch(&o, plan, rootfd, -1, &entry, &err);
		builder_data_plan_free(plan);
		if (i < 2) {
			ck_assert_msg(r == 0, "%s: %s", path, err.msg);
			ck_assert_str_eq(json_string_value(json_object_get(entry, "path")), path);
			json_decref(entry);
			snprintf(file, sizeof(file), "%s/data/%s/model.bin", root, path);
			int fd = open(file, O_RDONLY | O_CLOEXEC);
			ck_assert_msg(fd >= 0, "%s", file);
			close(fd);
		} else if (i == 2) {
			ck_assert_int_eq(r, -EEXIST);
			ck_assert_msg(strstr(err.msg, "already there"), "%s", err.msg);
		} else {
			ck_assert_msg(r < 0, "a data path through a symlink was followed");
		}
	}
	snprintf(file, sizeof(file), "%s/x", out);
	ck_assert_int_lt(access(file, F_OK), 0);
	close(rootfd);
	{
		char name[600];
		int dfd = open("/tmp", O_RDONLY | O_DIRECTORY);
		snprintf(name, sizeof(name), "%s", strrchr(root, '/') + 1);
		ck_assert_int_eq(imc_rm_rf_at(dfd, name, NULL), 0);
		snprintf(name, sizeof(name), "%s", strrchr(out, '/') + 1);
		ck_assert_int_eq(imc_rm_rf_at(dfd, name, NULL), 0);
		close(dfd);
	}
}
END_TEST

/* A data source on a loopback address the operator did not allow is refused, by the address
 * the connection would go to (also for "localhost", a name). */
START_TEST(destination_refused)
{
	static const char *const other[] = {"127.0.0.2", NULL};
	struct net_client *c = data_client(other);
	struct builder_download d = dl_for(true);
	char url[128];
	uint64_t size = 0;
	bool ranges = false;
	imc_error err = {0};

	ck_assert_int_eq(builder_download_head(c, srv.url, &size, &ranges, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "127.0.0.1"), "%s", err.msg);
	snprintf(url, sizeof(url), "http://localhost:%s", strrchr(srv.url, ':') + 1);
	ck_assert_int_eq(builder_download_head(c, url, &size, &ranges, &err), -EPERM);
	d.net = c;
	ck_assert_int_eq(builder_download(&d, &err), -EPERM);
	ck_assert_int_eq(builder_download_head(NULL, srv.url, &size, &ranges, &err), -EPERM);
	net_client_free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("data");
	TCase *t = tcase_create("pure");

	tcase_add_test(t, names);
	tcase_add_test(t, urls);
	tcase_add_test(t, url_file_names);
	tcase_add_test(t, hf_sources);
	tcase_add_test(t, entries);
	tcase_add_test(t, nested_paths);
	tcase_add_test(t, default_size);
	suite_add_tcase(s, t);

	t = tcase_create("download");
	tcase_set_timeout(t, 60);
	tcase_add_checked_fixture(t, download_setup, download_teardown);
	tcase_add_test(t, head);
	tcase_add_test(t, ranged_pieces);
	tcase_add_test(t, retry_503);
	tcase_add_test(t, always_503);
	tcase_add_test(t, resume_dropped);
	tcase_add_test(t, range_ignored);
	tcase_add_test(t, unknown_length);
	tcase_add_test(t, sha_mismatch);
	tcase_add_test(t, not_found_no_retry);
	tcase_add_test(t, more_than_announced);
	tcase_add_test(t, nested_fetch);
	tcase_add_test(t, destination_refused);
	suite_add_tcase(s, t);
	return unit_run(s);
}
