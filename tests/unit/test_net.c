/* net/: the HTTP client, against real servers in this process on random loopback ports and unix
 * sockets (tests/unit/httpsrv.h): retries and Retry-After, minimum rate and deadlines,
 * cancellation, the status map and the messages, sinks with caps, digests and Range resume,
 * request headers and bodies, TLS verification, redirects, the loopback, plain-HTTP and
 * destination policies; and the pure parsers behind them.
 *
 * Over 800 lines: one suite per room, and every server behaviour net/ handles is scripted here. */
#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../net/net.h"
#include "httpsrv.h"
#include "unit.h"

#define BLOB_LEN 200000

static char blob[BLOB_LEN];
static char blob_hex[IMC_SHA256_HEX_LEN + 1];
static char tmpdir[64];

static void setup(void)
{
	for (size_t i = 0; i < BLOB_LEN; i++)
		blob[i] = (char)((i * 7 + 3) & 0xff);
	ck_assert_int_eq(imc_sha256_hex(blob, BLOB_LEN, blob_hex, NULL), 0);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/imc-test-net.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	imc_rm_rf_at(AT_FDCWD, tmpdir, NULL);
}

/* A client for tests: quick retries, the given insecure hosts. */
static struct net_client *client(const char *const *insecure)
{
	struct net_config cfg = {.insecure_hosts = insecure,
				 .retry = {.max_attempts = 3, .base_ms = 1, .max_ms = 4}};
	struct net_client *c = NULL;
	imc_error err = {0};

	ck_assert_msg(net_client_new(&cfg, &c, &err) == 0, "%s", err.msg);
	return c;
}

static char *url_of(const struct srv *s, const char *host, const char *path)
{
	char *u = NULL;

	ck_assert_int_gt(asprintf(&u, "http://%s:%u%s", host, s->port, path), 0);
	return u;
}

/* GET url into memory with c; the response in *r (to free). */
static int get(struct net_client *c, const char *url, struct net_response *r, imc_error *err)
{
	struct net_request q = {.url = url, .sink = {.kind = NET_SINK_MEMORY}};

	return net_perform(c, &q, r, err);
}

/* ---- pure parts ----------------------------------------------------------------------------- */

/* A server URL's host:port, only when it is plain http. */
START_TEST(plain_hostport)
{
	char hp[300];

	net_url_plain_hostport("http://127.0.0.1:8080/v1", hp, sizeof(hp));
	ck_assert_str_eq(hp, "127.0.0.1:8080");
	net_url_plain_hostport("http://imcd.example", hp, sizeof(hp));
	ck_assert_str_eq(hp, "imcd.example:80");
	net_url_plain_hostport("https://imcd.example:8443", hp, sizeof(hp));
	ck_assert_str_eq(hp, "");
	net_url_plain_hostport("not a url", hp, sizeof(hp));
	ck_assert_str_eq(hp, "");
}
END_TEST

START_TEST(loopback_rule)
{
	static const char *const yes[] = {"127.0.0.1", "127.1.2.3", "127.255.255.255", "::1",
					  "[::1]",     "localhost", "LocalHost"};
	static const char *const no[] = {"127.evil.example",
					 "localhost.example",
					 "128.0.0.1",
					 "127.0.0.1.nip.io",
					 "::ffff:127.0.0.1",
					 "0.0.0.0",
					 "[::2]",
					 "localhos",
					 "127.1",
					 "",
					 "[127.0.0.1]"};
	const char *insecure[] = {"reg.example:5000", "plain.example", "[fd00::1]", NULL};
	struct net_client *c = client(insecure);

	for (size_t i = 0; i < IMC_ARRAY_SIZE(yes); i++)
		ck_assert_msg(net_host_is_loopback(yes[i]), "%s", yes[i]);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(no); i++)
		ck_assert_msg(!net_host_is_loopback(no[i]), "%s", no[i]);
	ck_assert(net_plain_http_allowed(c, "127.0.0.1:5000"));
	ck_assert(net_plain_http_allowed(c, "[::1]:5000"));
	ck_assert(net_plain_http_allowed(c, "localhost"));
	ck_assert(!net_plain_http_allowed(c, "127.evil.example:5000"));
	ck_assert(net_plain_http_allowed(c, "reg.example:5000"));
	ck_assert(net_plain_http_allowed(c, "REG.example:5000"));
	ck_assert(!net_plain_http_allowed(c, "reg.example:5001"));
	ck_assert(!net_plain_http_allowed(c, "reg.example"));
	ck_assert(net_plain_http_allowed(c, "plain.example:1234"));
	ck_assert(net_plain_http_allowed(c, "[fd00::1]:80"));
	ck_assert(!net_plain_http_allowed(c, "registry-1.docker.io"));
	ck_assert_str_eq(net_scheme(c, "127.0.0.1:5000"), "http");
	ck_assert_str_eq(net_scheme(c, "127.evil.example"), "https");
	ck_assert_str_eq(net_scheme(NULL, "quay.io"), "https");
	net_client_free(c);
}
END_TEST

static bool public_str(const char *s)
{
	unsigned char a[16];
	unsigned prefix, port;

	ck_assert_msg(net_allow_parse(s, a, &prefix, &port) == 0, "%s", s);
	return net_addr_public(a);
}

START_TEST(address_classes)
{
	static const char *const pub[] = {"8.8.8.8",	       "1.1.1.1",	  "172.32.0.1",
					  "100.128.0.1",       "2606:4700::1111", "::ffff:8.8.8.8",
					  "2002:0808:0808::1", "64:ff9b::808:808"};
	static const char *const not [] = {"127.0.0.1",
					   "10.1.2.3",
					   "172.16.0.1",
					   "172.31.255.255",
					   "192.168.1.1",
					   "169.254.169.254",
					   "0.0.0.0",
					   "100.64.0.1",
					   "224.0.0.1",
					   "255.255.255.255",
					   "::1",
					   "::",
					   "fe80::1",
					   "fd00::1",
					   "fc00::1",
					   "ff02::1",
					   "::ffff:127.0.0.1",
					   "::ffff:169.254.169.254",
					   "2002:7f00:0001::1",
					   "64:ff9b::a00:1",
					   "2001:db8::1",
					   "::127.0.0.1",
					   "198.18.0.1",
					   "192.0.2.1"};
	static const char *const bad[] = {
	    "",	    "127.0.0.1/33", "::1/129",	 "127.0.0.1:0",	 "1.2.3.4:70000", "[127.0.0.1]",
	    "[::1", "::1:80x",	    "10.0.0.0/", "host.example", "1.2.3.4/8:80"};
	unsigned char a[16];
	unsigned prefix, port;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(pub); i++)
		ck_assert_msg(public_str(pub[i]), "%s", pub[i]);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(not ); i++)
		ck_assert_msg(!public_str(not [i]), "%s", not [i]);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(net_allow_parse(bad[i], a, &prefix, &port) == -EINVAL, "%s", bad[i]);
	ck_assert_int_eq(net_allow_parse("10.0.0.0/8", a, &prefix, &port), 0);
	ck_assert_uint_eq(prefix, 104);
	ck_assert_uint_eq(port, 0);
	ck_assert_int_eq(net_allow_parse("127.0.0.1:8080", a, &prefix, &port), 0);
	ck_assert_uint_eq(prefix, 128);
	ck_assert_uint_eq(port, 8080);
	ck_assert_int_eq(net_allow_parse("[fd00::]/8", a, &prefix, &port), 0);
	ck_assert_uint_eq(prefix, 8);
	ck_assert_int_eq(net_allow_parse("[::1]:443", a, &prefix, &port), 0);
	ck_assert_uint_eq(port, 443);
	ck_assert_int_eq(net_allow_parse("fd00::/16", a, &prefix, &port), 0);
	ck_assert_uint_eq(prefix, 16);
}
END_TEST

START_TEST(redirect_rule)
{
	const char *insecure[] = {"mirror.example", NULL};
	struct net_client *c = client(insecure);

	ck_assert(
	    net_redirect_allowed(c, "https://reg.example/v2/x", "https://s3.example/b?sig=1"));
	ck_assert(net_redirect_allowed(c, "http://127.0.0.1:5000/a", "https://cdn.example/b"));
	ck_assert(net_redirect_allowed(c, "http://127.0.0.1:5000/a", "http://127.0.0.1:6000/b"));
	ck_assert(!net_redirect_allowed(c, "http://127.0.0.1:5000/a", "http://localhost:5000/b"));
	ck_assert(!net_redirect_allowed(c, "https://reg.example/a", "http://reg.example/b"));
	ck_assert(!net_redirect_allowed(c, "https://reg.example/a", "http://127.0.0.1/b"));
	ck_assert(net_redirect_allowed(c, "https://reg.example/a", "http://mirror.example/b"));
	ck_assert(!net_redirect_allowed(c, "https://reg.example/a", "ftp://reg.example/b"));
	ck_assert(!net_redirect_allowed(c, "https://reg.example/a", "file:///etc/passwd"));
	ck_assert(!net_redirect_allowed(c, "https://reg.example/a", "not a url"));
	net_client_free(c);
}
END_TEST

START_TEST(retry_after_parse)
{
	uint64_t ms = 7;
	int64_t t = 1445412480; /* Wed, 21 Oct 2015 07:28:00 GMT */

	ck_assert_int_eq(net_retry_after_parse("120", t, &ms), 0);
	ck_assert_uint_eq(ms, 120000);
	ck_assert_int_eq(net_retry_after_parse(" 0 ", t, &ms), 0);
	ck_assert_uint_eq(ms, 0);
	ck_assert_int_eq(net_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", t - 10, &ms), 0);
	ck_assert_uint_eq(ms, 10000);
	ck_assert_int_eq(net_retry_after_parse("Wednesday, 21-Oct-15 07:28:00 GMT", t - 3, &ms), 0);
	ck_assert_uint_eq(ms, 3000);
	ck_assert_int_eq(net_retry_after_parse("Wed Oct 21 07:28:00 2015", t - 1, &ms), 0);
	ck_assert_uint_eq(ms, 1000);
	ck_assert_int_eq(net_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", t + 60, &ms), 0);
	ck_assert_uint_eq(ms, 0); /* in the past */
	ck_assert_int_eq(net_retry_after_parse("99999999999999999999999", t, &ms), 0);
	ck_assert_uint_eq(ms, 1000000000ULL * 1000); /* saturates */
	static const char *const bad[] = {"", "  ", "-1", "1.5", "12abc", "soon", "0x10"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(net_retry_after_parse(bad[i], t, &ms) == -EINVAL, "\"%s\"", bad[i]);
}
END_TEST

START_TEST(content_range_parse)
{
	uint64_t f, l, t;

	ck_assert_int_eq(net_content_range_parse("bytes 10-19/200", &f, &l, &t), 0);
	ck_assert(f == 10 && l == 19 && t == 200);
	ck_assert_int_eq(net_content_range_parse("bytes 0-0/*", &f, &l, &t), 0);
	ck_assert(t == UINT64_MAX);
	static const char *const bad[] = {"bytes 19-10/200", "bytes 10-19/19", "bytes */200",
					  "items 0-1/2",     "bytes 0-1/2 x",  "bytes -1-2/3",
					  "bytes 0-1",	     "bytes0-1/2",     ""};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(net_content_range_parse(bad[i], &f, &l, &t) == -EINVAL, "%s", bad[i]);
}
END_TEST

START_TEST(status_map)
{
	static const long status[] = {400, 401, 403, 404, 405, 408, 409, 410, 413,
				      416, 429, 500, 501, 502, 503, 504, 418, 302};
	static const int want[] = {EINVAL,     EACCES, EACCES, ENOENT, EOPNOTSUPP, ETIMEDOUT,
				   EBUSY,      ENOENT, EFBIG,  ERANGE, EAGAIN,	   EIO,
				   EOPNOTSUPP, EIO,    EIO,    EIO,    EPROTO,	   EPROTO};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(status); i++)
		ck_assert_msg(net_status_errno(status[i]) == want[i], "%ld", status[i]);
}
END_TEST

START_TEST(backoff_and_deadline)
{
	struct net_retry r = {.base_ms = 500, .max_ms = 8000};
	struct net_limits l = {.deadline_ms = 60000, .deadline_rate = 1 << 20};

	ck_assert_uint_eq(net_backoff_ms(&r, 1, 0), 500);
	ck_assert_uint_eq(net_backoff_ms(&r, 2, 0), 1000);
	ck_assert_uint_eq(net_backoff_ms(&r, 5, 0), 8000);
	ck_assert_uint_eq(net_backoff_ms(&r, 50, 0), 8000);
	for (uint32_t rnd = 0; rnd < 5000; rnd += 7) { /* jitter: [d/2, d] */
		uint64_t d = net_backoff_ms(&r, 3, rnd);
		ck_assert(d >= 1000 && d <= 2000);
	}
	ck_assert_uint_eq(net_deadline_ms(&l, 0), 60000);
	ck_assert_uint_eq(net_deadline_ms(&l, 10u << 20), 70000);
	ck_assert_uint_eq(net_deadline_ms(&l, 1u << 19), 60500);
	ck_assert(net_deadline_ms(&l, UINT64_MAX) < NET_OFF);
	l.deadline_rate = NET_OFF;
	ck_assert_uint_eq(net_deadline_ms(&l, 10u << 20), 60000);
	l.deadline_ms = NET_OFF;
	ck_assert(net_deadline_ms(&l, 1) == NET_OFF);
}
END_TEST

START_TEST(escaping_and_reasons)
{
	char out[256];

	net_escape("a\nb\x1b[31m\\\xff", 10, out, sizeof(out));
	ck_assert_str_eq(out, "a\\nb\\x1b[31m\\\\\\xff");
	net_escape("abcdef", 6, out, 4);
	ck_assert_str_eq(out, "abc");
	net_url_redact("https://user:secret@reg.example:5000/v2/x/blobs/sha256:ab?X-Sig=abc#f", out,
		       sizeof(out));
	ck_assert_str_eq(out, "https://reg.example:5000/v2/x/blobs/sha256:ab?...");
	net_url_redact("http://h/p\nq", out, sizeof(out));
	ck_assert_str_eq(out, "http://h/p\\nq");
	/* However libcurl reads the URL, or when it cannot, no user information stays. */
	static const char *const odd[] = {"https:/user:secret@reg.example/x",
					  "HTTPS:///user:secret@reg.example/x",
					  "user:secret@reg.example",
					  "ftp://user:secret@h/",
					  "https://user:secret@",
					  "%%%@x"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(odd); i++) {
		net_url_redact(odd[i], out, sizeof(out));
		ck_assert_msg(!strstr(out, "secret"), "%s -> %s", odd[i], out);
	}
	static const char oci[] = "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\","
				  "\"message\":\"manifest unknown\"}]}";
	net_reason(oci, strlen(oci), out, sizeof(out));
	ck_assert_str_eq(out, "manifest unknown (MANIFEST_UNKNOWN)");
	static const char api[] = "{\"error\":{\"code\":\"conflict\",\"message\":\"attached\"}}";
	net_reason(api, strlen(api), out, sizeof(out));
	ck_assert_str_eq(out, "attached (conflict)");
	net_reason("\r\nno such\rthing\nsecond line", 27, out, sizeof(out));
	ck_assert_str_eq(out, "no such");
	net_reason("bad\x1b[2Jthing", 12, out, sizeof(out));
	ck_assert_str_eq(out, "bad\\x1b[2Jthing");
	net_reason("<html><body>502</body></html>", 29, out, sizeof(out));
	ck_assert_str_eq(out, "");
	net_reason(NULL, 0, out, sizeof(out));
	ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(servers_and_urls)
{
	struct net_server s = {0};
	struct net_url u = {0};
	imc_error err = {0};
	char *url, *esc;

	ck_assert_int_eq(net_server_parse("unix:/run/imcd.sock", &s, &err), 0);
	ck_assert_str_eq(s.base, "http://localhost");
	ck_assert_str_eq(s.unix_socket, "/run/imcd.sock");
	url = net_server_url(&s, "/v1/imagecaches");
	ck_assert_str_eq(url, "http://localhost/v1/imagecaches");
	free(url);
	net_server_free(&s);
	ck_assert_int_eq(net_server_parse("https://imcd.example:8443/", &s, &err), 0);
	ck_assert_str_eq(s.base, "https://imcd.example:8443");
	ck_assert_ptr_null(s.unix_socket);
	url = net_server_url(&s, "healthz");
	ck_assert_str_eq(url, "https://imcd.example:8443/healthz");
	free(url);
	net_server_free(&s);
	static const char *const bad[] = {"unix:", "ftp://x", "imcd:8080", "", "http://"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(net_server_parse(bad[i], &s, &err) == -EINVAL, "%s", bad[i]);
	ck_assert_int_eq(net_url_parse("HTTPS://u:p@[::1]:5000/v2/", &u, &err), 0);
	ck_assert_str_eq(u.scheme, "https");
	ck_assert_str_eq(u.host, "[::1]");
	ck_assert_uint_eq(u.port, 5000);
	ck_assert(u.has_userinfo);
	net_url_free(&u);
	ck_assert_int_eq(net_url_parse("http://h.example", &u, &err), 0);
	ck_assert_uint_eq(u.port, 80);
	ck_assert_str_eq(u.path, "/");
	net_url_free(&u);
	ck_assert_int_eq(net_url_parse("file:///etc/passwd", &u, &err), -EINVAL);
	ck_assert_int_eq(net_url_parse("http://[::5]:0/", &u, &err), -EINVAL);
	ck_assert_int_eq(net_url_parse("http://user:topsecret@/x y", &u, &err), -EINVAL);
	ck_assert_msg(!strstr(err.msg, "topsecret"), "%s", err.msg);
	url =
	    net_url_join("http://127.0.0.1:5000/v2/x/blobs/uploads/", "/v2/x/blobs/uploads/u1?s=2");
	ck_assert_str_eq(url, "http://127.0.0.1:5000/v2/x/blobs/uploads/u1?s=2");
	free(url);
	url = net_url_join("https://reg.example/v2/x/blobs/uploads/", "u2");
	ck_assert_str_eq(url, "https://reg.example/v2/x/blobs/uploads/u2");
	free(url);
	url = net_url_join("https://reg.example/v2/", "https://s3.example/b?x=1");
	ck_assert_str_eq(url, "https://s3.example/b?x=1");
	free(url);
	ck_assert_ptr_null(net_url_join("not a url", "/x"));
	esc = net_url_escape("a b/c", 5);
	ck_assert_str_eq(esc, "a%20b%2Fc");
	free(esc);
}
END_TEST

START_TEST(config_errors)
{
	const char *bad_insecure[] = {"[::1", NULL};
	const char *bad_allow[] = {"10.0.0.0/40\n", NULL};
	struct net_client *c = NULL;
	imc_error err = {0};

	ck_assert_int_eq(
	    net_client_new(&(struct net_config){.insecure_hosts = bad_insecure}, &c, &err),
	    -EINVAL);
	ck_assert_msg(strstr(err.msg, "\"[::1\""), "%s", err.msg);
	ck_assert_int_eq(
	    net_client_new(&(struct net_config){.allow_destinations = bad_allow}, &c, &err),
	    -EINVAL);
	ck_assert_msg(strstr(err.msg, "10.0.0.0/40\\n"), "%s", err.msg);
	ck_assert_ptr_null(c);
}
END_TEST

/* ---- answers, headers, bodies ------------------------------------------------------------ */

static void h_ok(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	srv_reply(c, 200,
		  "Docker-Content-Digest: sha256:abc\r\n"
		  "WWW-Authenticate: Bearer realm=\"a\"\r\n"
		  "WWW-Authenticate: Basic realm=\"b\"\r\n"
		  "Location: /next\r\n",
		  "hello", 5);
}

START_TEST(answers_and_headers)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_ok, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/v2/x");
	ck_assert_msg(get(c, url, &r, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "hello");
	ck_assert_uint_eq(r.body_len, 5);
	ck_assert_uint_eq(r.bytes, 5);
	ck_assert_int_eq(r.content_length, 5);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_str_eq(r.url, url);
	ck_assert_str_eq(net_response_header(&r, "docker-content-digest", 0), "sha256:abc");
	ck_assert_str_eq(net_response_header(&r, "WWW-Authenticate", 0), "Bearer realm=\"a\"");
	ck_assert_str_eq(net_response_header(&r, "WWW-Authenticate", 1), "Basic realm=\"b\"");
	ck_assert_ptr_null(net_response_header(&r, "WWW-Authenticate", 2));
	ck_assert_str_eq(net_response_header(&r, "Location", 0), "/next");
	ck_assert_str_eq(s.reqs[0].method, "GET");
	ck_assert_str_eq(s.reqs[0].path, "/v2/x");
	ck_assert_msg(strstr(s.reqs[0].headers, "User-Agent: imcache/"), "%s", s.reqs[0].headers);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

START_TEST(auth_and_extra_headers)
{
	struct net_client *c = client(NULL);
	const char *extra[] = {"Accept: application/vnd.oci.image.manifest.v1+json", "X-Test: 1",
			       NULL};
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_ok, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/a");
	struct net_request q = {.url = url, .bearer = "tok.en", .headers = extra};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	q = (struct net_request){.url = url, .username = "al", .password = "pw"};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	ck_assert_str_eq(s.reqs[0].auth, "Bearer tok.en");
	ck_assert_msg(strstr(s.reqs[0].headers, "X-Test: 1\r\n"), "%s", s.reqs[0].headers);
	ck_assert_msg(strstr(s.reqs[0].headers, "Accept: application/vnd.oci.image.manifest"), "%s",
		      s.reqs[0].headers);
	ck_assert_str_eq(s.reqs[1].auth, "Basic YWw6cHc="); /* al:pw */
	const char *evil[] = {"X-A: 1\r\nX-Injected: 1", NULL};
	q = (struct net_request){.url = url, .headers = evil};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EINVAL);
	net_response_free(&r);
	q = (struct net_request){.url = url, .bearer = "a\nb"};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EINVAL);
	net_response_free(&r);
	ck_assert_uint_eq(srv_count(&s, NULL), 2);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

static void h_echo(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	srv_reply(c, strcmp(q->method, "PUT") == 0 ? 201 : 202, "", q->body_sha, 64);
}

START_TEST(request_bodies)
{
	struct net_client *c = client(NULL);
	char path[128], hex[IMC_SHA256_HEX_LEN + 1];
	struct net_response r;
	imc_error err = {0};
	struct srv s;
	int fd;

	srv_start(&s, h_echo, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/up");
	struct net_request q = {
	    .method = "PUT",
	    .url = url,
	    .body = {.data = blob, .len = BLOB_LEN, .content_type = "application/octet-stream"},
	    .sink = {.kind = NET_SINK_MEMORY}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(r.status, 201);
	ck_assert_str_eq(r.body, blob_hex);
	net_response_free(&r);
	snprintf(path, sizeof(path), "%s/body", tmpdir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_eq(imc_write_all(fd, blob, BLOB_LEN), 0);
	q = (struct net_request){.method = "POST",
				 .url = url,
				 .body = {.from_fd = true, .fd = fd, .offset = 1000, .len = 5000},
				 .sink = {.kind = NET_SINK_MEMORY}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(imc_sha256_hex(blob + 1000, 5000, hex, NULL), 0);
	ck_assert_str_eq(r.body, hex);
	net_response_free(&r);
	q = (struct net_request){.method = "PATCH", .url = url, .body = {.data = "x", .len = 1}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	q = (struct net_request){.method = "POST", .url = url};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	q = (struct net_request){.method = "DELETE", .url = url};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	q = (struct net_request){.method = "BREW", .url = url};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EINVAL);
	net_response_free(&r);
	ck_assert_str_eq(s.reqs[0].method, "PUT");
	ck_assert_uint_eq(s.reqs[0].body_len, BLOB_LEN);
	ck_assert_str_eq(s.reqs[0].ctype, "application/octet-stream");
	ck_assert_str_eq(s.reqs[1].method, "POST");
	ck_assert_uint_eq(s.reqs[1].body_len, 5000);
	ck_assert_str_eq(s.reqs[2].method, "PATCH");
	ck_assert_str_eq(s.reqs[2].body, "x");
	ck_assert_str_eq(s.reqs[3].method, "POST");
	ck_assert_uint_eq(s.reqs[3].body_len, 0);
	ck_assert_str_eq(s.reqs[4].method, "DELETE");
	ck_assert_uint_eq(srv_count(&s, NULL), 5);
	close(fd);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* ---- retries ----------------------------------------------------------------------------------
 */

static void h_503_twice(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	if (n < 2)
		srv_reply(c, 503, "", "busy\x1b[2J\n", 9);
	else
		srv_reply(c, 200, "", "ok", 2);
}

struct logged {
	int n;
	char last[1200];
};

static void log_hook(void *ctx, enum imc_log_level level, const char *msg)
{
	struct logged *l = ctx;

	l->n++;
	snprintf(l->last, sizeof(l->last), "%s", msg);
}

START_TEST(retries_5xx_then_answer)
{
	struct logged l = {0};
	struct net_config cfg = {.retry = {.max_attempts = 3, .base_ms = 1, .max_ms = 2},
				 .log = log_hook,
				 .log_ctx = &l};
	struct net_client *c = NULL;
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	ck_assert_int_eq(net_client_new(&cfg, &c, &err), 0);
	srv_start(&s, h_503_twice, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/m");
	ck_assert_msg(get(c, url, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "ok");
	ck_assert_uint_eq(r.attempts, 3);
	ck_assert_int_eq(l.n, 2);
	ck_assert_msg(strstr(l.last, "HTTP 503 (busy\\x1b[2J); attempt 3 of 3"), "%s", l.last);
	for (const char *p = l.last; *p; p++) /* the log line holds no raw control byte */
		ck_assert_msg((unsigned char)*p >= ' ' && *p != 0x7f, "%s", l.last);
	net_response_free(&r);
	/* With two attempts only, the 503 is the answer. */
	srv_stop(&s);
	srv_start(&s, h_503_twice, NULL, NULL);
	free(url);
	url = url_of(&s, "127.0.0.1", "/m");
	struct net_request q = {.url = url, .retry = &(struct net_retry){.max_attempts = 2}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EIO);
	ck_assert_uint_eq(r.attempts, 2);
	ck_assert_int_eq(r.status, 503);
	ck_assert_msg(strstr(err.msg, ": HTTP 503 (busy\\x1b[2J) (after 2 attempts)"), "%s",
		      err.msg);
	ck_assert_str_eq(r.body, "busy\x1b[2J\n");
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

static void h_retry_after(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	char extra[128];

	if (n == 0) {
		srv_reply(c, 429, "Retry-After: 1\r\n", "", 0);
	} else if (n == 2) {
		time_t t = time(NULL) + 3;
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(extra, sizeof(extra), "Retry-After: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
		srv_reply(c, 503, extra, "", 0);
	} else if (n == 4 || strcmp(q->path, "/later") == 0) {
		srv_reply(c, 503, "Retry-After: 86400\r\n", "", 0);
	} else {
		srv_reply(c, 200, "", "ok", 2);
	}
}

START_TEST(retry_after_is_honoured)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_retry_after, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/m");
	/* 429 with Retry-After: 1 (seconds); the client's own backoff is 1 ms. */
	ck_assert_msg(get(c, url, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 2);
	ck_assert_uint_ge(r.waited_ms, 1000);
	ck_assert_uint_lt(r.waited_ms, 1100);
	net_response_free(&r);
	/* 503 with an HTTP-date 3 s ahead (seconds are its resolution). */
	ck_assert_msg(get(c, url, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_ge(r.waited_ms, 1000);
	ck_assert_uint_le(r.waited_ms, 3000);
	net_response_free(&r);
	/* A day is cut to the maximum. */
	struct net_request q = {.url = url,
				.retry = &(struct net_retry){.retry_after_max_ms = 50},
				.sink = {.kind = NET_SINK_MEMORY}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "ok");
	ck_assert_uint_eq(r.attempts, 2);
	ck_assert_uint_ge(r.waited_ms, 50);
	ck_assert_uint_lt(r.waited_ms, 100);
	net_response_free(&r);
	free(url);
	/* A wait that would pass the deadline is not waited. */
	url = url_of(&s, "127.0.0.1", "/later");
	q = (struct net_request){.url = url, .limits = &(struct net_limits){.deadline_ms = 5000}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EIO);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_uint_eq(r.waited_ms, 0);
	ck_assert_msg(strstr(err.msg, "the deadline leaves no time for another attempt: GET"), "%s",
		      err.msg);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

static void h_status(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	int status = atoi(q->path + 1);
	const char *body = strncmp(q->path, "/500", 4) == 0 ? "it broke\n\x1b[2Jforged line" : "";

	srv_reply(c, status, status == 401 ? "WWW-Authenticate: Bearer realm=\"r\"\r\n" : "", body,
		  strlen(body));
}

START_TEST(statuses_and_messages)
{
	static const struct {
		const char *path;
		int err;
		unsigned attempts;
	} cases[] = {{"/404", -ENOENT, 1}, {"/401", -EACCES, 1}, {"/416", -ERANGE, 1},
		     {"/429", -EAGAIN, 3}, {"/500", -EIO, 3},	 {"/400", -EINVAL, 1}};
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	char *url;
	struct srv s;

	srv_start(&s, h_status, NULL, NULL);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		url = url_of(&s, "127.0.0.1", cases[i].path);
		ck_assert_int_eq(get(c, url, &r, &err), cases[i].err);
		ck_assert_uint_eq(r.attempts, cases[i].attempts);
		ck_assert_msg(strstr(err.msg, url + 7) && strstr(err.msg, cases[i].path + 1), "%s",
			      err.msg);
		net_response_free(&r);
		free(url);
	}
	/* The message: no credentials, no query, the server's text escaped. */
	char *u = NULL;
	ck_assert_int_gt(asprintf(&u, "http://al:hunter2@127.0.0.1:%u/500?token=sekrit", s.port),
			 0);
	ck_assert_int_eq(get(c, u, &r, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "GET http://127.0.0.1:"), "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "/500?...: HTTP 500 (it broke) (after 3 attempts)"), "%s",
		      err.msg);
	ck_assert_msg(!strstr(err.msg, "hunter2") && !strstr(err.msg, "sekrit"), "%s", err.msg);
	for (const char *p = err.msg; *p; p++)
		ck_assert_msg((unsigned char)*p >= ' ' && *p != 0x7f, "raw control byte: %s",
			      err.msg);
	net_response_free(&r);
	free(u);
	/* A refused answer can be an answer: a 401 in accept, or any status. */
	url = url_of(&s, "127.0.0.1", "/401");
	struct net_request q = {.url = url, .accept = (const long[]){401, 0}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), 0);
	ck_assert_int_eq(r.status, 401);
	ck_assert_str_eq(net_response_header(&r, "WWW-Authenticate", 0), "Bearer realm=\"r\"");
	net_response_free(&r);
	free(url);
	url = url_of(&s, "127.0.0.1", "/500");
	q = (struct net_request){.url = url, .any_status = true, .sink = {.kind = NET_SINK_MEMORY}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), 0);
	ck_assert_int_eq(r.status, 500);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_msg(strncmp(r.body, "it broke\n", 9) == 0, "%s", r.body);
	net_response_free(&r);
	/* POST is not sent again after a 500 (the server may have acted on it); after a 503 it
	 * is. */
	unsigned before = srv_count(&s, NULL);
	q = (struct net_request){.method = "POST", .url = url};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EIO);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_uint_eq(srv_count(&s, NULL), before + 1);
	net_response_free(&r);
	free(url);
	url = url_of(&s, "127.0.0.1", "/503");
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EIO);
	ck_assert_uint_eq(r.attempts, 3);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* A port nothing listens on (bound, never listened). */
static int dead_port(unsigned *ret)
{
	struct sockaddr_in in = {.sin_family = AF_INET};
	socklen_t len = sizeof(in);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&in, sizeof(in)) == 0 &&
		  getsockname(fd, (struct sockaddr *)&in, &len) == 0);
	*ret = ntohs(in.sin_port);
	return fd;
}

START_TEST(transport_errors_are_retried_on_fresh_handles)
{
	const char *insecure[] = {"nothing.invalid", NULL};
	struct net_client *c = client(insecure);
	struct net_conn *conn = net_conn_new();
	struct net_response r;
	imc_error err = {0};
	unsigned port, conns;
	char url[128];
	struct srv s;
	int fd = dead_port(&port);

	/* Refused connections: the real error, retried, on the same conn each time. */
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/v2/", port);
	struct net_request q = {.url = url, .conn = conn, .sink = {.kind = NET_SINK_MEMORY}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECONNREFUSED);
	ck_assert_uint_eq(r.attempts, 3);
	ck_assert_msg(strstr(err.msg, "GET http://127.0.0.1:") &&
			  strstr(err.msg, "(after 3 attempts)") && !strstr(err.msg, "set up"),
		      "%s", err.msg);
	net_response_free(&r);
	/* A name that does not resolve: reported as such, and retried. */
	q.url = "http://nothing.invalid/v2/";
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EHOSTUNREACH);
	ck_assert_uint_eq(r.attempts, 3);
	ck_assert_msg(strstr(err.msg, "nothing.invalid") && !strstr(err.msg, "set up"), "%s",
		      err.msg);
	net_response_free(&r);
	/* The same conn then works, and keeps its connection between requests. */
	srv_start(&s, h_ok, NULL, NULL);
	char *ok = url_of(&s, "127.0.0.1", "/a");
	q.url = ok;
	for (int i = 0; i < 3; i++) {
		ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
		net_response_free(&r);
	}
	ck_assert_uint_eq(srv_count(&s, &conns), 3);
	ck_assert_uint_eq(conns, 1);
	/* Without a conn, each request has a connection of its own. */
	q.conn = NULL;
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	ck_assert_uint_eq(srv_count(&s, &conns), 4);
	ck_assert_uint_eq(conns, 2);
	free(ok);
	srv_stop(&s);
	close(fd);
	net_conn_free(conn);
	net_client_free(c);
}
END_TEST

/* ---- deadlines, minimum rate, cancellation ------------------------------------------------- */

static void h_trickle(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	srv_printf(c, "HTTP/1.1 200 X\r\nContent-Length: %d\r\n\r\n", BLOB_LEN);
	srv_trickle(c, blob, BLOB_LEN, 8, 200);
}

START_TEST(min_rate_aborts_a_trickle)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_trickle, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_MEMORY},
				.limits =
				    &(struct net_limits){.min_rate = 1000, .min_rate_window_s = 1},
				.retry = &(struct net_retry){.max_attempts = 2}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ETIMEDOUT);
	ck_assert_msg(strstr(err.msg, "slower than 1000 bytes/s for 1 s (after 2 attempts)"), "%s",
		      err.msg);
	ck_assert_uint_eq(r.attempts, 2);
	/* The second attempt resumed where the first stopped. */
	ck_assert_msg(strncmp(s.reqs[1].range, "bytes=", 6) == 0, "%s", s.reqs[1].range);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

static void h_stall(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	srv_printf(c, "HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\n0123456789");
	srv_stall(c);
}

START_TEST(deadline_ends_a_stall)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_stall, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_MEMORY},
				.limits =
				    &(struct net_limits){.min_rate = NET_OFF, .deadline_ms = 1000}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ETIMEDOUT);
	ck_assert_msg(strstr(err.msg, "within the deadline of 1000 ms"), "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 1); /* the deadline covers every attempt */
	net_response_free(&r);
	/* A declared size adds to the deadline: 100 bytes at 200 bytes/s, half a second. */
	q.sink = (struct net_sink){.kind = NET_SINK_MEMORY, .sized = true, .size = 100};
	q.limits =
	    &(struct net_limits){.min_rate = NET_OFF, .deadline_ms = 1000, .deadline_rate = 200};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ETIMEDOUT);
	ck_assert_msg(strstr(err.msg, "within the deadline of 1500 ms"), "%s", err.msg);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

struct canceller {
	struct srv *s;
	atomic_bool *flag;
};

static void *cancel_main(void *arg)
{
	struct canceller *k = arg;

	srv_wait_stall(k->s);
	atomic_store(k->flag, true);
	return NULL;
}

static bool refuse_bytes(void *ctx, int64_t n)
{
	int *calls = ctx;

	return ++*calls < 3;
}

START_TEST(cancellation)
{
	struct net_client *c = client(NULL);
	atomic_bool flag = false;
	struct canceller k;
	struct net_response r;
	imc_error err = {0};
	pthread_t th;
	struct srv s;
	int calls = 0;

	srv_start(&s, h_stall, NULL, NULL);
	k = (struct canceller){.s = &s, .flag = &flag};
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_MEMORY},
				.cancel = &flag,
				.limits = &(struct net_limits){.min_rate = NET_OFF}};
	pthread_create(&th, NULL, cancel_main, &k);
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_msg(strstr(err.msg, "cancelled"), "%s", err.msg);
	pthread_join(th, NULL);
	net_response_free(&r);
	/* A progress callback that says no. */
	q = (struct net_request){.url = url,
				 .sink = {.kind = NET_SINK_MEMORY},
				 .on_bytes = refuse_bytes,
				 .ctx = &calls,
				 .limits = &(struct net_limits){.min_rate = NET_OFF}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_int_eq(calls, 3);
	net_response_free(&r);
	/* A flag already set: nothing is sent. */
	unsigned before = srv_count(&s, NULL);
	q = (struct net_request){.url = url, .cancel = &flag};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_uint_eq(srv_count(&s, NULL), before);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* The caller's cancelled callback (registries' and data's builds use it): polled during the
 * transfer, during the wait before a retry, and before anything is sent. */
struct stopper {
	struct srv *s;
	unsigned polls;
	bool always;
};

static bool stop_once_asked(void *ctx)
{
	struct stopper *k = ctx;

	k->polls++;
	return k->always || srv_count(k->s, NULL) > 0;
}

START_TEST(cancelled_callback)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	struct srv s, later;
	struct stopper k = {.s = &s};

	srv_start(&s, h_stall, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_MEMORY},
				.cancelled = stop_once_asked,
				.cancel_ctx = &k,
				.limits = &(struct net_limits){.min_rate = NET_OFF}};
	/* A stalled answer: stopped during the transfer. */
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_msg(strstr(err.msg, "cancelled"), "%s", err.msg);
	ck_assert_uint_gt(k.polls, 0);
	net_response_free(&r);
	/* A 503 with a day's Retry-After: stopped in the wait, no second attempt. */
	srv_start(&later, h_retry_after, NULL, NULL);
	char *url2 = url_of(&later, "127.0.0.1", "/later");
	k = (struct stopper){.s = &later};
	q.url = url2;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_uint_eq(r.attempts, 1);
	ck_assert_uint_eq(srv_count(&later, NULL), 1);
	net_response_free(&r);
	/* Cancelled already: nothing is sent. */
	unsigned before = srv_count(&s, NULL);
	k = (struct stopper){.s = &s, .always = true};
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ECANCELED);
	ck_assert_uint_eq(srv_count(&s, NULL), before);
	net_response_free(&r);
	free(url);
	free(url2);
	srv_stop(&later);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* ---- sinks ------------------------------------------------------------------------------------
 */

static void h_blob(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	if (strcmp(q->path, "/huge") == 0) {
		srv_printf(c, "HTTP/1.1 200 X\r\nContent-Length: 1099511627776\r\n\r\n");
		srv_stall(c);
	} else if (strcmp(q->path, "/huger") == 0) {
		srv_printf(c, "HTTP/1.1 200 X\r\nContent-Length: 123456789012345678901234\r\n\r\n");
		srv_stall(c);
	} else if (strcmp(q->path, "/short") == 0) {
		srv_reply(c, 200, "", blob, 1000);
	} else if (strcmp(q->path, "/cut") == 0) {
		srv_serve(c, q, blob, BLOB_LEN, true, srv_first(s, q) ? 70000 : 0); /* drops once */
	} else if (strcmp(q->path, "/cut-norange") == 0) {
		srv_serve(c, q, blob, BLOB_LEN, false, srv_first(s, q) ? 70000 : 0);
	} else if (strcmp(q->path, "/norange") == 0) {
		srv_serve(c, q, blob, BLOB_LEN, false, 0);
	} else if (strcmp(q->path, "/badrange") == 0) {
		if (q->range[0])
			srv_reply(c, 206, "Content-Range: bytes 5-9/200000\r\n", blob + 5, 5);
		else
			srv_serve(c, q, blob, BLOB_LEN, false, srv_first(s, q) ? 1000 : 0);
	} else {
		srv_serve(c, q, blob, BLOB_LEN, true, 0);
	}
}

static bool count_bytes(void *ctx, int64_t n)
{
	int64_t *sum = ctx;

	*sum += n;
	return true;
}

START_TEST(memory_sink_caps)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	int64_t sum = 0;
	struct srv s;

	srv_start(&s, h_blob, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url, .sink = {.kind = NET_SINK_MEMORY, .max = 1000}};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EFBIG);
	ck_assert_msg(strstr(err.msg, "200000 bytes, more than the 1000 allowed"), "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 1);
	net_response_free(&r);
	free(url);
	/* A huge Content-Length fails before a byte of the body is taken. */
	url = url_of(&s, "127.0.0.1", "/huge");
	q = (struct net_request){
	    .url = url, .sink = {.kind = NET_SINK_MEMORY}, .on_bytes = count_bytes, .ctx = &sum};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EFBIG);
	ck_assert_msg(strstr(err.msg, "declares 1099511627776 bytes"), "%s", err.msg);
	ck_assert_int_eq(sum, 0);
	net_response_free(&r);
	free(url);
	url = url_of(&s, "127.0.0.1", "/huger"); /* past 64 bits */
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EFBIG);
	ck_assert_int_eq(sum, 0);
	net_response_free(&r);
	free(url);
	/* A body in memory, in a range. */
	url = url_of(&s, "127.0.0.1", "/blob");
	q = (struct net_request){.url = url,
				 .range = true,
				 .range_from = 10,
				 .range_to = 19,
				 .sink.kind = NET_SINK_MEMORY};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(r.status, 206);
	ck_assert_uint_eq(r.body_len, 10);
	ck_assert_mem_eq(r.body, blob + 10, 10);
	ck_assert_str_eq(s.reqs[3].range, "bytes=10-19");
	net_response_free(&r);
	free(url);
	/* A range the server ignores is an error, not the whole resource. */
	url = url_of(&s, "127.0.0.1", "/norange");
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ERANGE);
	ck_assert_msg(strstr(err.msg, "ignored the byte range"), "%s", err.msg);
	net_response_free(&r);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

static int open_file(const char *name)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	return fd;
}

static void check_file(int fd, uint64_t len)
{
	char hex[IMC_SHA256_HEX_LEN + 1], *buf = malloc(len + 1);
	struct stat st;

	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, len);
	ck_assert_int_eq(pread(fd, buf, len, 0), (ssize_t)len);
	ck_assert_int_eq(imc_sha256_hex(buf, len, hex, NULL), 0);
	ck_assert_str_eq(hex, blob_hex);
	free(buf);
}

START_TEST(file_sink_digest_and_size)
{
	struct net_client *c = client(NULL);
	char want[80], wrong[80];
	struct net_response r;
	imc_error err = {0};
	struct srv s;
	int fd = open_file("blob");

	snprintf(want, sizeof(want), "sha256:%s", blob_hex);
	snprintf(wrong, sizeof(wrong), "sha256:%064d", 0);
	srv_start(&s, h_blob, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/blob");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_FILE,
					 .fd = fd,
					 .sized = true,
					 .size = BLOB_LEN,
					 .want_sha256 = want}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.sha256, blob_hex);
	ck_assert_uint_eq(r.bytes, BLOB_LEN);
	ck_assert_ptr_null(r.body);
	check_file(fd, BLOB_LEN);
	net_response_free(&r);
	q.sink.want_sha256 = wrong;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EBADMSG);
	ck_assert_msg(strstr(err.msg, "sha256 mismatch: got sha256:"), "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 1);
	net_response_free(&r);
	q.sink.want_sha256 = "sha256:nothex";
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EINVAL);
	net_response_free(&r);
	/* Declared sizes: more than the cap is refused before a request; the answer must match. */
	unsigned before = srv_count(&s, NULL);
	q.sink = (struct net_sink){
	    .kind = NET_SINK_FILE, .fd = fd, .sized = true, .size = 2ULL << 40, .max = 1ULL << 30};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EFBIG);
	ck_assert_uint_eq(srv_count(&s, NULL), before);
	net_response_free(&r);
	q.sink = (struct net_sink){.kind = NET_SINK_FILE, .fd = fd, .sized = true, .size = 5000};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EFBIG);
	ck_assert_msg(strstr(err.msg, "more than the 5000 expected"), "%s", err.msg);
	net_response_free(&r);
	free(url);
	url = url_of(&s, "127.0.0.1", "/short");
	q.url = url;
	q.sink.size = BLOB_LEN;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EBADMSG);
	ck_assert_msg(strstr(err.msg, "declares 1000 bytes, 200000 expected"), "%s", err.msg);
	net_response_free(&r);
	free(url);
	close(fd);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

START_TEST(range_resume)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};
	int64_t sum = 0;
	struct srv s;
	int fd = open_file("blob");

	srv_start(&s, h_blob, NULL, NULL);
	/* The connection drops after 70000 bytes: the next attempt asks for the rest. */
	char *url = url_of(&s, "127.0.0.1", "/cut");
	struct net_request q = {.url = url,
				.sink = {.kind = NET_SINK_FILE, .fd = fd, .hash = true},
				.on_bytes = count_bytes,
				.ctx = &sum};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 2);
	ck_assert_int_eq(r.status, 206);
	ck_assert_str_eq(s.reqs[1].range, "bytes=70000-");
	ck_assert_str_eq(r.sha256, blob_hex);
	ck_assert_int_eq(sum, BLOB_LEN);
	check_file(fd, BLOB_LEN);
	net_response_free(&r);
	free(url);
	/* A partial file from before: kept, hashed, and only the rest asked for. */
	ck_assert_int_eq(ftruncate(fd, 123456), 0);
	url = url_of(&s, "127.0.0.1", "/blob");
	q = (struct net_request){
	    .url = url,
	    .sink = {.kind = NET_SINK_FILE, .fd = fd, .resume = true, .want_sha256 = blob_hex}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(s.reqs[2].range, "bytes=123456-");
	ck_assert_uint_eq(r.bytes, BLOB_LEN);
	check_file(fd, BLOB_LEN);
	net_response_free(&r);
	free(url);
	/* A server that ignores ranges sends it all again: the file starts over. */
	sum = 0;
	url = url_of(&s, "127.0.0.1", "/cut-norange");
	q = (struct net_request){.url = url,
				 .sink = {.kind = NET_SINK_FILE, .fd = fd, .want_sha256 = blob_hex},
				 .on_bytes = count_bytes,
				 .ctx = &sum};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 2);
	ck_assert_int_eq(r.status, 200);
	ck_assert_int_eq(sum, BLOB_LEN); /* 70000 taken back */
	check_file(fd, BLOB_LEN);
	net_response_free(&r);
	free(url);
	/* A 206 that starts elsewhere: asked again without a range. */
	url = url_of(&s, "127.0.0.1", "/badrange");
	q.url = url;
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 3);
	check_file(fd, BLOB_LEN);
	net_response_free(&r);
	free(url);
	close(fd);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

struct collected {
	struct imc_buf b;
	int fail_at;
};

static int collect(void *ctx, const void *data, size_t n)
{
	struct collected *k = ctx;

	if (k->fail_at && k->b.len > (size_t)k->fail_at)
		return -ENOSPC;
	return imc_buf_append(&k->b, data, n);
}

START_TEST(callback_sink)
{
	struct net_client *c = client(NULL);
	struct collected k = {0};
	struct net_response r;
	imc_error err = {0};
	struct srv s;

	srv_start(&s, h_blob, NULL, NULL);
	char *url = url_of(&s, "127.0.0.1", "/cut");
	struct net_request q = {
	    .url = url, .sink = {.kind = NET_SINK_CALLBACK, .write = collect, .write_ctx = &k}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(k.b.len, BLOB_LEN);
	ck_assert_mem_eq(k.b.data, blob, BLOB_LEN);
	net_response_free(&r);
	imc_buf_free(&k.b);
	free(url);
	k = (struct collected){.fail_at = 1000};
	url = url_of(&s, "127.0.0.1", "/blob");
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -ENOSPC);
	ck_assert_uint_eq(r.attempts, 1);
	net_response_free(&r);
	imc_buf_free(&k.b);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* ---- redirects, TLS, unix sockets -------------------------------------------------------------
 */

struct redir {
	unsigned port_b, tls_port;
};

static void h_redirect(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	const struct redir *rd = s->ctx;
	char loc[160];

	if (strcmp(q->path, "/r-same") == 0)
		snprintf(loc, sizeof(loc), "Location: http://127.0.0.1:%u/target\r\n", rd->port_b);
	else if (strcmp(q->path, "/r-other") == 0)
		snprintf(loc, sizeof(loc), "Location: http://localhost:%u/target\r\n", rd->port_b);
	else if (strcmp(q->path, "/r-tls") == 0)
		snprintf(loc, sizeof(loc), "Location: https://localhost:%u/target\r\n",
			 rd->tls_port);
	else if (strcmp(q->path, "/r-loop") == 0)
		snprintf(loc, sizeof(loc), "Location: /r-loop\r\n");
	else if (strncmp(q->path, "/r-", 3) == 0)
		snprintf(loc, sizeof(loc), "Location: /final\r\n");
	else
		loc[0] = '\0';
	if (loc[0])
		srv_reply(c, strcmp(q->path, "/r-303") == 0 ? 303 : 302, loc, "moved", 5);
	else
		srv_reply(c, 200, "", "final", 5);
}

static void h_target(struct srv *s, struct srv_conn *c, const struct srv_req *q, unsigned n)
{
	srv_reply(c, 200, "", q->auth[0] ? q->auth : "-", strlen(q->auth[0] ? q->auth : "-"));
}

START_TEST(redirects)
{
	const char *insecure[] = {"localhost", NULL};
	const char *extra[] = {"Authorization: Basic c2VjcmV0", "X-Other: 1", NULL};
	struct net_client *c = client(NULL), *ci = client(insecure), *ctls = NULL;
	char ca[128], *url;
	struct net_response r;
	struct redir rd;
	imc_error err = {0};
	struct srv a, b, t;

	snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
	srv_start(&b, h_target, NULL, NULL);
	srv_start(&t, h_ok, NULL, ca);
	rd = (struct redir){.port_b = b.port, .tls_port = t.port};
	srv_start(&a, h_redirect, NULL, NULL);
	a.ctx = &rd;
	/* Same host, another port: followed; credentials stay with the origin. */
	url = url_of(&a, "127.0.0.1", "/r-same");
	struct net_request q = {.url = url, .bearer = "t", .sink.kind = NET_SINK_MEMORY};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "-");
	ck_assert_uint_eq(r.redirects, 1);
	ck_assert_msg(strstr(r.url, "/target"), "%s", r.url);
	net_response_free(&r);
	free(url);
	/* Same origin: credentials go along. */
	url = url_of(&a, "127.0.0.1", "/r-rel");
	q.url = url;
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "final");
	ck_assert_str_eq(a.reqs[srv_count(&a, NULL) - 1].auth, "Bearer t");
	net_response_free(&r);
	free(url);
	/* Plain HTTP to another host: refused, unless that host is named insecure. */
	url = url_of(&a, "127.0.0.1", "/r-other");
	q.url = url;
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "redirect to http://localhost:"), "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 1);
	net_response_free(&r);
	q.headers = extra;
	ck_assert_msg(net_perform(ci, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "-");
	ck_assert_msg(strstr(b.reqs[srv_count(&b, NULL) - 1].headers, "X-Other: 1"), "%s",
		      b.reqs[srv_count(&b, NULL) - 1].headers);
	net_response_free(&r);
	free(url);
	/* Loops end; a 303 turns a POST into a GET without its body. */
	url = url_of(&a, "127.0.0.1", "/r-loop");
	q = (struct net_request){.url = url};
	ck_assert_int_eq(net_perform(c, &q, &r, &err), -EPROTO);
	ck_assert_msg(strstr(err.msg, "more than 10 redirects"), "%s", err.msg);
	net_response_free(&r);
	free(url);
	url = url_of(&a, "127.0.0.1", "/r-303");
	q = (struct net_request){.method = "POST", .url = url, .body = {.data = "abc", .len = 3}};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	unsigned last = srv_count(&a, NULL) - 1;
	ck_assert_str_eq(a.reqs[last].method, "GET");
	ck_assert_str_eq(a.reqs[last].path, "/final");
	ck_assert_uint_eq(a.reqs[last].body_len, 0);
	ck_assert_str_eq(a.reqs[last - 1].method, "POST");
	net_response_free(&r);
	free(url);
	/* To HTTPS, any host (with TLS verified). */
	ck_assert_int_eq(net_client_new(&(struct net_config){.ca_file = ca}, &ctls, &err), 0);
	url = url_of(&a, "127.0.0.1", "/r-tls");
	q = (struct net_request){.url = url, .sink.kind = NET_SINK_MEMORY};
	ck_assert_msg(net_perform(ctls, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "hello");
	ck_assert_msg(strncmp(r.url, "https://localhost:", 18) == 0, "%s", r.url);
	net_response_free(&r);
	free(url);
	srv_stop(&a);
	srv_stop(&b);
	srv_stop(&t);
	net_client_free(c);
	net_client_free(ci);
	net_client_free(ctls);
}
END_TEST

START_TEST(tls_is_verified)
{
	struct net_client *c = client(NULL), *ctls = NULL;
	struct net_response r;
	imc_error err = {0};
	char ca[128], url[128];
	struct srv t;

	snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
	srv_start(&t, h_ok, NULL, ca);
	snprintf(url, sizeof(url), "https://localhost:%u/v2/", t.port);
	ck_assert_int_eq(get(c, url, &r, &err), -EPROTO);
	ck_assert_uint_eq(r.attempts, 1); /* a refused certificate is not retried */
	ck_assert_msg(strstr(err.msg, "certificate"), "%s", err.msg);
	net_response_free(&r);
	ck_assert_int_eq(net_client_new(&(struct net_config){.ca_file = ca}, &ctls, &err), 0);
	ck_assert_msg(get(ctls, url, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "hello");
	net_response_free(&r);
	snprintf(url, sizeof(url), "https://127.0.0.1:%u/v2/", t.port);
	ck_assert_msg(get(ctls, url, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	srv_stop(&t);
	net_client_free(c);
	net_client_free(ctls);
}
END_TEST

START_TEST(unix_sockets)
{
	struct net_client *c = NULL;
	struct net_server server = {0};
	struct net_response r;
	imc_error err = {0};
	char path[128], spec[140];
	struct srv s;

	/* Also with the destination check: a unix socket is the operator's own. */
	ck_assert_int_eq(net_client_new(&(struct net_config){.check_destination = true}, &c, &err),
			 0);
	snprintf(path, sizeof(path), "%s/imcd.sock", tmpdir);
	snprintf(spec, sizeof(spec), "unix:%s", path);
	srv_start(&s, h_ok, path, NULL);
	ck_assert_int_eq(net_server_parse(spec, &server, &err), 0);
	char *url = net_server_url(&server, "/healthz");
	struct net_request q = {
	    .url = url, .unix_socket = server.unix_socket, .sink.kind = NET_SINK_MEMORY};
	ck_assert_msg(net_perform(c, &q, &r, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(r.body, "hello");
	ck_assert_str_eq(s.reqs[0].path, "/healthz");
	net_response_free(&r);
	free(url);
	net_server_free(&server);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

/* ---- where requests may go ---------------------------------------------------------------- */

START_TEST(plain_http_only_to_loopback_or_insecure)
{
	struct net_client *c = client(NULL);
	struct net_response r;
	imc_error err = {0};

	static const char *const refused[] = {"http://127.evil.example:5000/v2/",
					      "http://registry.example/v2/",
					      "http://localhost.example/v2/"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(refused); i++) {
		ck_assert_int_eq(get(c, refused[i], &r, &err), -EPERM);
		ck_assert_msg(strstr(err.msg, "plain HTTP goes only to loopback"), "%s", err.msg);
		ck_assert_uint_eq(r.attempts, 0); /* nothing sent, not even a DNS query */
		net_response_free(&r);
	}
	ck_assert_int_eq(get(c, "ftp://127.0.0.1/x", &r, &err), -EINVAL);
	net_response_free(&r);
	net_client_free(c);
}
END_TEST

START_TEST(destination_check)
{
	char allow_a[64];
	const char *allow_one[] = {allow_a, NULL}, *allow_lo[] = {"127.0.0.0/8", NULL};
	struct net_client *c = NULL, *c1 = NULL, *c8 = NULL;
	struct net_response r;
	imc_error err = {0};
	unsigned conns;
	struct redir rd;
	struct srv a, b;
	char *url;

	srv_start(&b, h_target, NULL, NULL);
	srv_start(&a, h_redirect, NULL, NULL);
	rd = (struct redir){.port_b = b.port};
	a.ctx = &rd;
	snprintf(allow_a, sizeof(allow_a), "127.0.0.1:%u", a.port);
	ck_assert_int_eq(net_client_new(&(struct net_config){.check_destination = true}, &c, &err),
			 0);
	ck_assert_int_eq(net_client_new(&(struct net_config){.check_destination = true,
							     .allow_destinations = allow_one},
					&c1, &err),
			 0);
	ck_assert_int_eq(net_client_new(&(struct net_config){.check_destination = true,
							     .allow_destinations = allow_lo},
					&c8, &err),
			 0);
	/* Loopback, by address or by a name that resolves to it: refused, nothing connects. */
	url = url_of(&a, "127.0.0.1", "/final");
	ck_assert_int_eq(get(c, url, &r, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "destination refused: 127.0.0.1 port"), "%s", err.msg);
	ck_assert_uint_eq(r.attempts, 1);
	net_response_free(&r);
	free(url);
	url = url_of(&a, "localhost", "/final");
	ck_assert_int_eq(get(c, url, &r, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "is not a public address"), "%s", err.msg);
	net_response_free(&r);
	srv_count(&a, &conns);
	ck_assert_uint_eq(conns, 0);
	free(url);
	/* Allowed by address and port; the check holds after a redirect to another port. */
	url = url_of(&a, "127.0.0.1", "/final");
	ck_assert_msg(get(c1, url, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	free(url);
	url = url_of(&a, "127.0.0.1", "/r-same");
	ck_assert_int_eq(get(c1, url, &r, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "(redirected to http://127.0.0.1:"), "%s", err.msg);
	srv_count(&b, &conns);
	ck_assert_uint_eq(conns, 0);
	net_response_free(&r);
	/* A whole network allowed. */
	ck_assert_msg(get(c8, url, &r, &err) == 0, "%s", err.msg);
	net_response_free(&r);
	free(url);
	srv_stop(&a);
	srv_stop(&b);
	net_client_free(c);
	net_client_free(c1);
	net_client_free(c8);
}
END_TEST

/* ---- threads ----------------------------------------------------------------------------------
 */

struct worker {
	struct net_client *c;
	const char *url;
	int failures;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct net_conn *conn = net_conn_new();

	for (int i = 0; i < 10; i++) {
		struct net_request q = {
		    .url = w->url, .conn = i % 2 ? conn : NULL, .sink.kind = NET_SINK_MEMORY};
		struct net_response r;
		imc_error err = {0};
		if (net_perform(w->c, &q, &r, &err) < 0 || strcmp(r.body, "hello") != 0)
			w->failures++;
		net_response_free(&r);
	}
	net_conn_free(conn);
	return NULL;
}

START_TEST(one_client_many_threads)
{
	struct net_client *c = client(NULL);
	struct worker w[4];
	pthread_t th[4];
	struct srv s;

	srv_start(&s, h_ok, NULL, NULL);
	char *url = url_of(&s, "localhost", "/x");
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){.c = c, .url = url};
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].failures, 0);
	}
	ck_assert_uint_eq(srv_count(&s, NULL), 40);
	free(url);
	srv_stop(&s);
	net_client_free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("net");
	TCase *pure = tcase_create("parsers and rules");
	TCase *live = tcase_create("against servers");

	tcase_add_test(pure, plain_hostport);
	tcase_add_test(pure, loopback_rule);
	tcase_add_test(pure, address_classes);
	tcase_add_test(pure, redirect_rule);
	tcase_add_test(pure, retry_after_parse);
	tcase_add_test(pure, content_range_parse);
	tcase_add_test(pure, status_map);
	tcase_add_test(pure, backoff_and_deadline);
	tcase_add_test(pure, escaping_and_reasons);
	tcase_add_test(pure, servers_and_urls);
	tcase_add_test(pure, config_errors);
	suite_add_tcase(s, pure);
	tcase_add_checked_fixture(live, setup, teardown);
	tcase_set_timeout(live, 60);
	tcase_add_test(live, answers_and_headers);
	tcase_add_test(live, auth_and_extra_headers);
	tcase_add_test(live, request_bodies);
	tcase_add_test(live, retries_5xx_then_answer);
	tcase_add_test(live, retry_after_is_honoured);
	tcase_add_test(live, statuses_and_messages);
	tcase_add_test(live, transport_errors_are_retried_on_fresh_handles);
	tcase_add_test(live, min_rate_aborts_a_trickle);
	tcase_add_test(live, deadline_ends_a_stall);
	tcase_add_test(live, cancellation);
	tcase_add_test(live, cancelled_callback);
	tcase_add_test(live, memory_sink_caps);
	tcase_add_test(live, file_sink_digest_and_size);
	tcase_add_test(live, range_resume);
	tcase_add_test(live, callback_sink);
	tcase_add_test(live, redirects);
	tcase_add_test(live, tls_is_verified);
	tcase_add_test(live, unix_sockets);
	tcase_add_test(live, plain_http_only_to_loopback_or_insecure);
	tcase_add_test(live, destination_check);
	tcase_add_test(live, one_client_many_threads);
	suite_add_tcase(s, live);
	return unit_run(s);
}
