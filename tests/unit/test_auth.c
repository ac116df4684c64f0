/* imcd's security parts: the config file (tokens, tenants, quotas, TLS, defaults), its file
 * permissions, the Authorization header check, the TLS key pair (made here with OpenSSL) and the
 * listen address's locality. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../../api/auth.h"
#include "unit.h"

/* TESTABLE helpers of api/auth.c. */
bool token_chars_valid(const char *s, size_t len);
int bearer_token(const char *header, const char **ret, size_t *ret_len);

#define TOKEN_A "tenant-a-token-0123456789abcdef"
#define TOKEN_B "tenant-b-token-ZYXWVUTSRQPONMLK"

static char tmpdir[] = "/tmp/imc-test-auth.XXXXXX";

static void setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	imc_rm_rf_at(AT_FDCWD, tmpdir, NULL);
	memcpy(tmpdir + strlen(tmpdir) - 6, "XXXXXX", 6); /* for the next mkdtemp */
}

static void sha256_hex_of(const char *s, char out[IMC_SHA256_HEX_LEN + 1])
{
	imc_error err = {0};

	ck_assert_int_eq(imc_sha256_hex(s, strlen(s), out, &err), 0);
}

static int parse(const char *json, struct api_config *c, imc_error *err)
{
	memset(c, 0, sizeof(*c));
	imc_err_clear(err);
	return api_config_parse(json, strlen(json), c, err);
}

/* json must be refused with want and a message containing needle. */
static void expect_bad(const char *json, int want, const char *needle)
{
	struct api_config c;
	imc_error err;
	int r = parse(json, &c, &err);

	ck_assert_msg(r == want, "%s: got %d (%s), want %d", json, r, err.msg, want);
	ck_assert_msg(strstr(err.msg, needle), "%s: message \"%s\" lacks \"%s\"", json, err.msg,
		      needle);
	ck_assert_msg(!strstr(err.msg, TOKEN_A), "%s: the message shows a token: %s", json,
		      err.msg);
	ck_assert_ptr_null(c.tokens);
}

/* ---- config parsing ---------------------------------------------------------------------------
 */

START_TEST(config_good)
{
	char hex[IMC_SHA256_HEX_LEN + 1], json[2048];
	struct api_config c;
	imc_error err;

	sha256_hex_of(TOKEN_B, hex);
	snprintf(json, sizeof(json),
		 "{\"tokens\":[{\"token\":\"%s\",\"tenant\":\"team-a\"},"
		 "{\"token\":\"sha256:%s\",\"tenant\":\"team_b.2\"},"
		 "{\"token\":\"another-token-for-team-a==\",\"tenant\":\"team-a\"}],"
		 "\"tenants\":{\"team-a\":{\"maxCaches\":10,\"maxBytes\":1073741824},"
		 "\"team_b.2\":{\"maxCaches\":0}},"
		 "\"tls\":{\"cert\":\"/etc/imcache/tls.crt\",\"key\":\"/etc/imcache/tls.key\"},"
		 "\"listen\":\"0.0.0.0:8443\",\"stateDir\":\"/srv/imcache\","
		 "\"blobCacheMax\":10737418240}",
		 TOKEN_A, hex);
	ck_assert_msg(parse(json, &c, &err) == 0, "%s", err.msg);
	ck_assert(c.auth);
	ck_assert(c.has_clear_tokens);
	ck_assert_uint_eq(c.n_tokens, 3);
	ck_assert_str_eq(c.tokens[0].tenant, "team-a");
	ck_assert_str_eq(c.tokens[1].tenant, "team_b.2");
	ck_assert_uint_eq(c.n_limits, 2);
	for (size_t i = 0; i < c.n_limits; i++) {
		if (strcmp(c.limits[i].tenant, "team-a") == 0) {
			ck_assert_uint_eq(c.limits[i].max_caches, 10);
			ck_assert_uint_eq(c.limits[i].max_bytes, 1073741824);
		} else {
			ck_assert_str_eq(c.limits[i].tenant, "team_b.2");
			ck_assert_uint_eq(c.limits[i].max_caches, 0);
			ck_assert_uint_eq(c.limits[i].max_bytes, 0);
		}
	}
	ck_assert_str_eq(c.tls_cert, "/etc/imcache/tls.crt");
	ck_assert_str_eq(c.tls_key, "/etc/imcache/tls.key");
	ck_assert_str_eq(c.listen, "0.0.0.0:8443");
	ck_assert_str_eq(c.state_dir, "/srv/imcache");
	ck_assert_uint_eq(c.blob_cache_max, 10737418240ULL);
	api_config_free(&c);
	ck_assert_ptr_null(c.tokens);
}
END_TEST

START_TEST(config_minimal)
{
	struct api_config c;
	imc_error err;
	char hex[IMC_SHA256_HEX_LEN + 1], json[256];

	ck_assert_int_eq(parse("{}", &c, &err), 0);
	ck_assert(!c.auth);
	ck_assert_uint_eq(c.n_tokens, 0);
	ck_assert_ptr_null(c.tls_cert);
	api_config_free(&c);

	/* The destinations data may reach though they are not public. */
	ck_assert_int_eq(
	    parse("{\"dataAllowDestinations\":[\"127.0.0.1:8000\",\"10.0.0.0/8\"]}", &c, &err), 0);
	ck_assert_uint_eq(c.n_data_allow, 2);
	ck_assert_str_eq(c.data_allow[0], "127.0.0.1:8000");
	ck_assert_str_eq(c.data_allow[1], "10.0.0.0/8");
	api_config_free(&c);

	/* Only digests: nothing secret in the file. */
	sha256_hex_of(TOKEN_A, hex);
	snprintf(json, sizeof(json), "{\"tokens\":[{\"token\":\"sha256:%s\",\"tenant\":\"a\"}]}",
		 hex);
	ck_assert_int_eq(parse(json, &c, &err), 0);
	ck_assert(c.auth);
	ck_assert(!c.has_clear_tokens);
	api_config_free(&c);
}
END_TEST

START_TEST(config_bad)
{
	expect_bad("{\"tokens\":[", -EINVAL, "malformed JSON");
	expect_bad("[]", -EINVAL, "want an object");
	expect_bad("{\"bogus\":1}", -EINVAL, "bogus: unknown field");
	expect_bad("{\"dataAllowDestinations\":\"127.0.0.1\"}", -EINVAL, "want an array");
	expect_bad("{\"dataAllowDestinations\":[1]}", -EINVAL, "dataAllowDestinations[0]");
	expect_bad("{\"dataAllowDestinations\":[\"\"]}", -EINVAL, "dataAllowDestinations[0]");
	expect_bad("{\"tokens\":{}}", -EINVAL, "tokens: want an array");
	expect_bad("{\"tokens\":[]}", -EINVAL, "tokens: empty");
	expect_bad("{\"tokens\":[\"x\"]}", -EINVAL, "tokens[0]: want an object");
	expect_bad("{\"tokens\":[{\"token\":\"" TOKEN_A "\"}]}", -EINVAL,
		   "tokens[0].tenant: required");
	expect_bad("{\"tokens\":[{\"tenant\":\"a\"}]}", -EINVAL, "tokens[0].token: required");
	expect_bad("{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"a\",\"role\":\"x\"}]}",
		   -EINVAL, "tokens[0].role: unknown field");
	expect_bad("{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":7}]}", -EINVAL,
		   "tokens[0].tenant: want a string");
	expect_bad("{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"../x\"}]}", -EINVAL,
		   "tokens[0].tenant: want 1-64");
	expect_bad("{\"tokens\":[{\"token\":\"short\",\"tenant\":\"a\"}]}", -EINVAL,
		   "tokens[0].token: want 16 to 4096 bytes");
	expect_bad("{\"tokens\":[{\"token\":\"has a space in it 0123\",\"tenant\":\"a\"}]}",
		   -EINVAL, "tokens[0].token: only letters");
	expect_bad("{\"tokens\":[{\"token\":\"sha256:abc\",\"tenant\":\"a\"}]}", -EINVAL,
		   "tokens[0].token: want sha256:<64 lowercase hex digits>");
	expect_bad("{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"a\"},"
		   "{\"token\":\"" TOKEN_A "\",\"tenant\":\"b\"}]}",
		   -EINVAL, "tokens[1].token: the same as tokens[0]");
	expect_bad("{\"tenants\":[]}", -EINVAL, "tenants: want an object");
	expect_bad("{\"tenants\":{\"a\":{\"maxCaches\":-1}}}", -ERANGE, "tenants.a.maxCaches");
	expect_bad("{\"tenants\":{\"a\":{\"maxBytes\":\"1G\"}}}", -EINVAL,
		   "tenants.a.maxBytes: want an integer");
	expect_bad("{\"tenants\":{\"a\":{\"maxFiles\":1}}}", -EINVAL,
		   "tenants.a.maxFiles: unknown field");
	expect_bad("{\"tenants\":{\"a b\":{}}}", -EINVAL, "tenants.a b: want a tenant name");
	expect_bad("{\"tls\":{\"cert\":\"/c\"}}", -EINVAL, "tls: want both cert and key");
	expect_bad("{\"tls\":{\"cert\":\"/c\",\"key\":\"/k\",\"ca\":\"/x\"}}", -EINVAL,
		   "tls.ca: unknown field");
	expect_bad("{\"tls\":{\"cert\":\"\",\"key\":\"/k\"}}", -EINVAL, "tls.cert: empty");
	expect_bad("{\"listen\":5}", -EINVAL, "listen: want a string");
	expect_bad("{\"stateDir\":\"\"}", -EINVAL, "stateDir: empty");
	expect_bad("{\"blobCacheMax\":-1}", -ERANGE, "blobCacheMax");
	expect_bad("{\"blobCacheMax\":\"1G\"}", -EINVAL, "blobCacheMax: want an integer");
	expect_bad("{\"listen\":\"a\",\"listen\":\"b\"}", -EINVAL, "malformed JSON");
}
END_TEST

START_TEST(config_caps)
{
	struct imc_buf b = {0};
	struct api_config c;
	imc_error err;
	char item[128];

	ck_assert_int_eq(imc_buf_append(&b, "{\"tokens\":[", 11), 0);
	for (int i = 0; i <= API_TOKENS_MAX; i++) {
		int n = snprintf(item, sizeof(item),
				 "%s{\"token\":\"token-number-%08d\",\"tenant\":\"t\"}",
				 i ? "," : "", i);
		ck_assert_int_eq(imc_buf_append(&b, item, (size_t)n), 0);
	}
	ck_assert_int_eq(imc_buf_append(&b, "]}", 2), 0);
	ck_assert_int_eq(parse(b.data, &c, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "tokens: at most 4096"), "%s", err.msg);
	imc_buf_free(&b);

	/* A file over API_CONFIG_MAX is refused before it is parsed. */
	ck_assert_int_eq(api_config_parse("{}", API_CONFIG_MAX + 1, &c, &err), -EFBIG);
}
END_TEST

/* ---- the config file and its mode ----------------------------------------------------------- */

static void write_file(const char *name, const char *content, mode_t mode, char *path, size_t size)
{
	int fd;

	snprintf(path, size, "%s/%s", tmpdir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, content, strlen(content)), 0);
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
}

START_TEST(config_load_modes)
{
	const char *clear = "{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"a\"}]}";
	char hex[IMC_SHA256_HEX_LEN + 1], hashed[256], path[PATH_MAX];
	struct api_config c = {0};
	imc_error err = {0};

	write_file("private.json", clear, 0600, path, sizeof(path));
	ck_assert_msg(api_config_load(path, &c, &err) == 0, "%s", err.msg);
	ck_assert(c.auth);
	api_config_free(&c);

	write_file("group.json", clear, 0640, path, sizeof(path));
	ck_assert_msg(api_config_load(path, &c, &err) == 0, "%s", err.msg);
	api_config_free(&c);

	write_file("world.json", clear, 0644, path, sizeof(path));
	ck_assert_int_eq(api_config_load(path, &c, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "readable by others") && strstr(err.msg, "world.json"), "%s",
		      err.msg);
	ck_assert_ptr_null(c.tokens);

	sha256_hex_of(TOKEN_A, hex);
	snprintf(hashed, sizeof(hashed),
		 "{\"tokens\":[{\"token\":\"sha256:%s\",\"tenant\":\"a\"}]}", hex);
	write_file("hashed.json", hashed, 0644, path, sizeof(path));
	ck_assert_msg(api_config_load(path, &c, &err) == 0, "%s", err.msg);
	api_config_free(&c);

	write_file("writable.json", hashed, 0664, path, sizeof(path));
	ck_assert_int_eq(api_config_load(path, &c, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "writable by group or others"), "%s", err.msg);

	write_file("bad.json", "{\"tokens\":7}", 0600, path, sizeof(path));
	ck_assert_int_eq(api_config_load(path, &c, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "bad.json") && strstr(err.msg, "tokens: want an array"), "%s",
		      err.msg);

	snprintf(path, sizeof(path), "%s/missing.json", tmpdir);
	ck_assert_int_eq(api_config_load(path, &c, &err), -ENOENT);
	ck_assert_int_eq(api_config_load(tmpdir, &c, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "not a regular file"), "%s", err.msg);
}
END_TEST

/* ---- the Authorization header --------------------------------------------------------------- */

static struct api_config two_tenants(void)
{
	char hex[IMC_SHA256_HEX_LEN + 1], json[512];
	struct api_config c;
	imc_error err;

	sha256_hex_of(TOKEN_B, hex);
	snprintf(json, sizeof(json),
		 "{\"tokens\":[{\"token\":\"" TOKEN_A "\",\"tenant\":\"a\"},"
		 "{\"token\":\"sha256:%s\",\"tenant\":\"b\"}]}",
		 hex);
	ck_assert_msg(parse(json, &c, &err) == 0, "%s", err.msg);
	return c;
}

/* header must map to tenant (NULL: refused with -EACCES, missing telling whether it was). */
static void expect_caller(const struct api_config *c, const char *header, const char *tenant,
			  bool missing)
{
	struct api_caller who = {0};
	bool got_missing = !missing;
	imc_error err = {0};
	int r = api_auth_check(c, header, &who, &got_missing, &err);

	if (tenant) {
		ck_assert_msg(r == 0, "%s: %d %s", header, r, err.msg);
		ck_assert_str_eq(who.tenant, tenant);
		return;
	}
	ck_assert_msg(r == -EACCES, "%s: got %d (tenant %s)", header ? header : "(none)", r,
		      who.tenant ? who.tenant : "-");
	ck_assert(got_missing == missing);
	ck_assert(err.msg[0]);
	ck_assert_msg(!header || strlen(header) < 16 || !strstr(err.msg, header + 7),
		      "the message shows the token: %s", err.msg);
}

START_TEST(auth_tokens)
{
	struct api_config c = two_tenants();

	expect_caller(&c, "Bearer " TOKEN_A, "a", false);
	expect_caller(&c, "Bearer " TOKEN_B, "b", false); /* configured as its sha256 */
	expect_caller(&c, "bearer " TOKEN_A, "a", false); /* the scheme is case-insensitive */
	expect_caller(&c, "BEARER   " TOKEN_B "  ", "b", false);
	expect_caller(&c, NULL, NULL, true);
	expect_caller(&c, "", NULL, true);
	expect_caller(&c, "Bearer", NULL, false);
	expect_caller(&c, "Bearer ", NULL, false);
	expect_caller(&c, "Bearer wrong-token-0123456789abcdef", NULL, false);
	expect_caller(&c, "Bearer " TOKEN_A "x", NULL, false);
	expect_caller(&c, "Bearer " TOKEN_A " x", NULL, false);
	expect_caller(&c, "Basic " TOKEN_A, NULL, false);
	expect_caller(&c, "Bearer" TOKEN_A, NULL, false);
	expect_caller(&c, TOKEN_A, NULL, false);
	/* sha256:<hex> is how the file names a token, never a token itself. */
	{
		char hex[IMC_SHA256_HEX_LEN + 1], header[128];
		sha256_hex_of(TOKEN_B, hex);
		snprintf(header, sizeof(header), "Bearer sha256:%s", hex);
		expect_caller(&c, header, NULL, false);
	}
	api_config_free(&c);
}
END_TEST

START_TEST(auth_off)
{
	struct api_config off = {0};
	struct api_caller who = {0};
	imc_error err = {0};
	bool missing = true;

	ck_assert_int_eq(api_auth_check(NULL, NULL, &who, &missing, &err), 0);
	ck_assert_str_eq(who.tenant, API_TENANT_DEFAULT);
	ck_assert(!missing);
	who.tenant = NULL;
	ck_assert_int_eq(api_auth_check(&off, "Bearer whatever-it-is-0123", &who, &missing, &err),
			 0);
	ck_assert_str_eq(who.tenant, API_TENANT_DEFAULT);
}
END_TEST

START_TEST(auth_header_syntax)
{
	const char *tok = NULL;
	size_t len = 0;
	char big[API_AUTH_HEADER_MAX + 16];

	ck_assert(token_chars_valid("abc-._~+/XYZ09==", 16));
	ck_assert(!token_chars_valid("==", 2));
	ck_assert(!token_chars_valid("ab=c", 4));
	ck_assert(!token_chars_valid("a\"b", 3));
	ck_assert(!token_chars_valid("a:b", 3));
	ck_assert(!token_chars_valid("", 0));
	ck_assert_int_eq(bearer_token("Bearer abc==  ", &tok, &len), 0);
	ck_assert_uint_eq(len, 5);
	ck_assert(strncmp(tok, "abc==", len) == 0);
	ck_assert_int_eq(bearer_token("Bearer\tabc", &tok, &len), -EACCES);
	ck_assert_int_eq(bearer_token("Bearer a,b", &tok, &len), -EACCES);
	memcpy(big, "Bearer ", 7);
	memset(big + 7, 'a', sizeof(big) - 8);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(bearer_token(big, &tok, &len), -EACCES);
}
END_TEST

/* ---- TLS ------------------------------------------------------------------------------------- */

/* A self-signed P-256 certificate for localhost and its key, written as PEM files. */
static void make_pair(const char *cert_name, const char *key_name, mode_t key_mode)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *n;
	char path[PATH_MAX];
	FILE *f;

	ck_assert_ptr_nonnull(key);
	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	ck_assert_int_eq(X509_set_pubkey(x, key), 1);
	n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
				   -1, 0);
	ck_assert_int_eq(X509_set_issuer_name(x, n), 1);
	ck_assert_int_gt(X509_sign(x, key, EVP_sha256()), 0);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, cert_name);
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(PEM_write_X509(f, x), 1);
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, key_name);
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	ck_assert_int_eq(chmod(path, key_mode), 0);
	X509_free(x);
	EVP_PKEY_free(key);
}

static int load_pair(const char *cert_name, const char *key_name, struct api_tls *t, imc_error *err)
{
	char cert[PATH_MAX], key[PATH_MAX];

	snprintf(cert, sizeof(cert), "%s/%s", tmpdir, cert_name);
	snprintf(key, sizeof(key), "%s/%s", tmpdir, key_name);
	memset(t, 0, sizeof(*t));
	imc_err_clear(err);
	return api_tls_load(cert, key, t, err);
}

START_TEST(tls_pairs)
{
	struct api_tls t;
	imc_error err;
	char path[PATH_MAX];

	make_pair("a.crt", "a.key", 0600);
	make_pair("b.crt", "b.key", 0640);
	make_pair("c.crt", "c.key", 0644);
	ck_assert_msg(load_pair("a.crt", "a.key", &t, &err) == 0, "%s", err.msg);
	ck_assert(strstr(t.cert_pem, "BEGIN CERTIFICATE"));
	ck_assert(strstr(t.key_pem, "PRIVATE KEY"));
	api_tls_free(&t);
	ck_assert_ptr_null(t.key_pem);
	ck_assert_msg(load_pair("b.crt", "b.key", &t, &err) == 0, "%s", err.msg);
	api_tls_free(&t);

	ck_assert_int_eq(load_pair("a.crt", "b.key", &t, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "does not belong to the certificate"), "%s", err.msg);
	ck_assert_ptr_null(t.cert_pem);
	ck_assert_int_eq(load_pair("c.crt", "c.key", &t, &err), -EPERM);
	ck_assert_msg(strstr(err.msg, "c.key: readable by others"), "%s", err.msg);
	ck_assert_int_eq(load_pair("a.key", "a.key", &t, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "not a PEM certificate"), "%s", err.msg);
	snprintf(path, sizeof(path), "%s/a.crt", tmpdir);
	ck_assert_int_eq(chmod(path, 0600), 0);
	ck_assert_int_eq(load_pair("a.crt", "a.crt", &t, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "not an unencrypted PEM private key"), "%s", err.msg);
	ck_assert_int_eq(load_pair("a.crt", "none.key", &t, &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, "none.key"), "%s", err.msg);
	write_file("empty.crt", "", 0644, path, sizeof(path));
	ck_assert_int_eq(load_pair("empty.crt", "a.key", &t, &err), -EINVAL);
}
END_TEST

START_TEST(listen_local)
{
	ck_assert(api_listen_is_local("127.0.0.1:8080"));
	ck_assert(api_listen_is_local("127.9.8.7:0"));
	ck_assert(api_listen_is_local("[::1]:8080"));
	ck_assert(api_listen_is_local("unix:/run/imcache/imcd.sock"));
	ck_assert(!api_listen_is_local("0.0.0.0:8080"));
	ck_assert(!api_listen_is_local("10.1.2.3:8080"));
	ck_assert(!api_listen_is_local("[::]:8080"));
	ck_assert(!api_listen_is_local("128.0.0.1:80"));
	ck_assert(!api_listen_is_local("nonsense"));
}
END_TEST

/* "http": the connection limits, each 1..its cap; the flags and defaults fill the rest. */
START_TEST(config_http_limits)
{
	struct api_config c;
	imc_error err;

	ck_assert_int_eq(parse("{\"http\":{\"maxConnections\":100,\"maxConnectionsPerClient\":8,"
			       "\"connectionReserve\":4,\"requestTimeout\":5}}",
			       &c, &err),
			 0);
	ck_assert_uint_eq(c.http.max_connections, 100);
	ck_assert_uint_eq(c.http.per_client, 8);
	ck_assert_uint_eq(c.http.reserve, 4);
	ck_assert_uint_eq(c.http.request_timeout_s, 5);
	api_config_free(&c);
	ck_assert_int_eq(parse("{\"http\":{\"requestTimeout\":9}}", &c, &err), 0);
	ck_assert_uint_eq(c.http.max_connections, 0);
	ck_assert_uint_eq(c.http.request_timeout_s, 9);
	api_config_free(&c);
	expect_bad("{\"http\":{\"maxConnection\":1}}", -EINVAL, "http.maxConnection");
	expect_bad("{\"http\":{\"requestTimeout\":0}}", -ERANGE, "http.requestTimeout");
	expect_bad("{\"http\":{\"requestTimeout\":3601}}", -ERANGE, "http.requestTimeout");
	expect_bad("{\"http\":{\"maxConnections\":\"10\"}}", -EINVAL, "http.maxConnections");
	expect_bad("{\"http\":[]}", -EINVAL, "http");
}
END_TEST

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *t = tcase_create("config");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, config_good);
	tcase_add_test(t, config_minimal);
	tcase_add_test(t, config_bad);
	tcase_add_test(t, config_caps);
	tcase_add_test(t, config_http_limits);
	tcase_add_test(t, config_load_modes);
	suite_add_tcase(s, t);

	t = tcase_create("auth");
	tcase_add_test(t, auth_tokens);
	tcase_add_test(t, auth_off);
	tcase_add_test(t, auth_header_syntax);
	tcase_add_test(t, listen_local);
	suite_add_tcase(s, t);

	t = tcase_create("tls");
	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, tls_pairs);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return unit_run(auth_suite());
}
