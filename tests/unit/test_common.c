/* common/: errors, digests, JSON field access, atomic files, paths that cannot escape a root. */
#include <check.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/cli.h"
#include "../../common/imc.h"
#include "../../common/priv.h"
#include "unit.h"

START_TEST(errors_carry_context)
{
	imc_error err = {0};

	ck_assert_int_eq(imc_err(&err, ENOENT, "layer %s", "sha256:ab"), -ENOENT);
	ck_assert_int_eq(imc_err_wrap(&err, "image %s", "x"), -ENOENT);
	ck_assert_str_eq(err.msg, "image x: layer sha256:ab");
	ck_assert_int_eq(imc_err_sys(&err, -EIO, "read"), -EIO);
	ck_assert_str_eq(err.msg, "read: Input/output error");
	ck_assert_int_eq(imc_err(NULL, EINVAL, "ignored"), -EINVAL);
}
END_TEST

START_TEST(sha256_and_digests)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	imc_error err;

	ck_assert_int_eq(imc_sha256_hex("abc", 3, hex, &err), 0);
	ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	ck_assert_int_eq(
	    imc_digest_parse(
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex,
		&err),
	    0);
	static const char *const bad[] = {
	    "",
	    "sha256:",
	    "sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	    "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
	    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
	    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0",
	    "sha256:../../../../etc/passwd/../../../../../../../../../../../../../../../..",
	    "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(imc_digest_parse(bad[i], hex, &err) == -EINVAL, "accepted %s",
			      bad[i]);
	ck_assert_int_eq(imc_digest_parse(NULL, hex, &err), -EINVAL);
}
END_TEST

START_TEST(json_fields_are_typed_and_checked)
{
	static const char *const allowed[] = {"name", "size", "pin", "images", NULL};
	const char *body = "{\"name\":\"n\",\"size\":5,\"pin\":true,\"images\":[1,2]}";
	json_t *j = NULL, *arr = NULL;
	const char *name = NULL;
	int64_t size = 0;
	bool pin = false;
	imc_error err;

	ck_assert_int_eq(imc_json_parse_object(body, strlen(body), &j, &err), 0);
	ck_assert_int_eq(imc_json_check_fields(j, allowed, "", &err), 0);
	ck_assert_int_eq(imc_json_get_string(j, "name", true, 8, "", &name, &err), 0);
	ck_assert_str_eq(name, "n");
	ck_assert_int_eq(imc_json_get_int(j, "size", true, 0, 10, "", &size, &err), 0);
	ck_assert_int_eq(size, 5);
	ck_assert_int_eq(imc_json_get_bool(j, "pin", true, "", &pin, &err), 0);
	ck_assert(pin);
	ck_assert_int_eq(imc_json_get_array(j, "images", true, 2, "", &arr, &err), 0);
	ck_assert_int_eq(imc_json_get_array(j, "images", true, 1, "", &arr, &err), -EINVAL);
	ck_assert_int_eq(imc_json_get_int(j, "size", true, 6, 10, "", &size, &err), -ERANGE);
	ck_assert_int_eq(imc_json_get_string(j, "size", true, 8, "req", &name, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "req.size: want a string");
	ck_assert_int_eq(imc_json_get_string(j, "missing", true, 8, "", &name, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "missing: required");
	name = "kept";
	ck_assert_int_eq(imc_json_get_string(j, "missing", false, 8, "", &name, &err), 0);
	ck_assert_str_eq(name, "kept");
	json_object_set_new(j, "evil", json_true());
	ck_assert_int_eq(imc_json_check_fields(j, allowed, "body", &err), -EINVAL);
	ck_assert_str_eq(err.msg, "body.evil: unknown field");
	json_decref(j);

	static const char *const malformed[] = {
	    "", "{", "[]", "\"x\"", "{\"a\":1,\"a\":2}", "{\"a\":1}garbage"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(malformed); i++)
		ck_assert_msg(imc_json_parse_object(malformed[i], strlen(malformed[i]), &j, &err) ==
				  -EINVAL,
			      "accepted %s", malformed[i]);
	/* A NUL inside a string is refused rather than silently cut. */
	const char *nul = "{\"name\":\"a\\u0000b\"}";
	ck_assert_int_eq(imc_json_parse_object(nul, strlen(nul), &j, &err), -EINVAL);
}
END_TEST

START_TEST(atomic_json_files)
{
	char dir[] = "/tmp/imc-test-common.XXXXXX";
	json_t *j = json_pack("{s:s}", "id", "imc-1"), *back = NULL;
	imc_error err;
	int dfd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	ck_assert_int_eq(imc_json_write_atomic(dfd, "c.json", j, &err), 0);
	ck_assert_int_eq(imc_json_write_replace(dfd, "d.json", j, &err), 0);
	ck_assert_int_eq(imc_json_read_file(dfd, "c.json", 1024, &back, &err), 0);
	ck_assert(json_equal(j, back));
	json_decref(back);
	ck_assert_int_eq(imc_json_read_file(dfd, "c.json", 4, &back, &err), -EFBIG);
	ck_assert_int_eq(imc_json_read_file(dfd, "none.json", 1024, &back, &err), -ENOENT);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
	ck_assert_int_ne(access(dir, F_OK), 0);
	close(dfd);
	json_decref(j);
}
END_TEST

/* A file held by a live writer stays; once nobody holds it, it goes (with what it took). */
START_TEST(leftovers_nobody_holds_are_removed)
{
	char dir[] = "/tmp/imc-test-leftover.XXXXXX";
	_cleanup_close_ int dfd = -1;
	uint64_t bytes = 0;
	int fd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = openat(dfd, ".tmp-x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(imc_write_all(fd, "data", 4), 0);
	ck_assert_int_eq(fsync(fd), 0);
	ck_assert_int_eq(imc_hold_file(fd), 0);
	ck_assert_int_eq(imc_remove_unheld_at(dfd, ".tmp-x", &bytes), 0);
	ck_assert_int_eq(faccessat(dfd, ".tmp-x", F_OK, 0), 0);
	close(fd);
	ck_assert_int_eq(imc_remove_unheld_at(dfd, ".tmp-x", &bytes), 1);
	ck_assert_int_eq(faccessat(dfd, ".tmp-x", F_OK, 0), -1);
	ck_assert_uint_gt(bytes, 0);
	ck_assert_int_eq(imc_remove_unheld_at(dfd, ".tmp-x", &bytes), 0); /* gone already */
	ck_assert_int_eq(mkdirat(dfd, "sub", 0700), 0);
	ck_assert_int_eq(imc_remove_unheld_at(dfd, "sub", &bytes), 0); /* not a regular file */
	ck_assert_int_eq(unlinkat(dfd, "sub", AT_REMOVEDIR), 0);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(paths_stay_in_root)
{
	char dir[] = "/tmp/imc-test-common.XXXXXX", path[PATH_MAX];
	imc_error err;
	int root, fd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/root", dir);
	ck_assert_int_eq(mkdir(path, 0755), 0);
	root = open(path, O_RDONLY | O_DIRECTORY);
	/* A symlink pointing out of the root, and ../ paths, resolve inside it. */
	ck_assert_int_eq(symlinkat("/..", root, "up"), 0);
	ck_assert_int_eq(symlinkat("../../../outside", root, "rel"), 0);
	fd = imc_openat_in_root(root, "up/../../outside", O_WRONLY | O_CREAT, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	fd = imc_openat_in_root(root, "rel", O_WRONLY | O_CREAT, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/outside", dir);
	ck_assert_int_ne(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/root/outside", dir);
	ck_assert_int_eq(access(path, F_OK), 0);
	ck_assert_int_eq(imc_openat_in_root(root, "/proc/self/root/etc", O_RDONLY, 0), -ENOENT);
	/* Removal never climbs: not "..", not ".", not through a path. */
	ck_assert_int_eq(imc_rm_rf_at(root, "..", &err), -EINVAL);
	ck_assert_int_eq(imc_rm_rf_at(root, ".", &err), -EINVAL);
	ck_assert_int_eq(imc_rm_rf_at(root, "up/x", &err), -EINVAL);
	snprintf(path, sizeof(path), "%s/root", dir);
	ck_assert_int_eq(access(path, F_OK), 0);
	close(root);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

START_TEST(names_and_ids)
{
	char id[64];
	imc_error err;

	ck_assert(imc_name_valid("imc-0123abcd", 64));
	ck_assert(!imc_name_valid("", 64));
	ck_assert(!imc_name_valid("..", 64));
	ck_assert(!imc_name_valid("a/b", 64));
	ck_assert(!imc_name_valid("abcdef", 5));
	ck_assert(!imc_name_valid("caf\xc3\xa9", 64));
	ck_assert_int_eq(imc_random_id("imc", id, sizeof(id), &err), 0);
	ck_assert_uint_eq(strlen(id), 20);
	ck_assert(imc_name_valid(id, 64));
	ck_assert_int_eq(imc_random_id("imc", id, 8, &err), -ENAMETOOLONG);
}
END_TEST

START_TEST(buffers_grow_and_stay_terminated)
{
	struct imc_buf b = {0};
	char chunk[3000];

	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(imc_buf_append(&b, chunk, sizeof(chunk)), 0);
	ck_assert_uint_eq(b.len, 30000);
	ck_assert_uint_ge(b.cap, 30001);
	ck_assert_int_eq(b.data[b.len], '\0');
	ck_assert_uint_eq(strlen(b.data), 30000);
	ck_assert_int_eq(imc_buf_append(&b, chunk, SIZE_MAX - 10), -ENOMEM);
	ck_assert_uint_eq(b.len, 30000);
	imc_buf_free(&b);
	ck_assert_ptr_null(b.data);
	ck_assert_uint_eq(b.len, 0);
}
END_TEST

START_TEST(times_are_always_terminated)
{
	char buf[32];

	imc_time_rfc3339(0, buf, sizeof(buf));
	ck_assert_str_eq(buf, "1970-01-01T00:00:00Z");
	imc_time_rfc3339(1795439478, buf, sizeof(buf));
	ck_assert_str_eq(buf, "2026-11-23T13:11:18Z");
	memset(buf, 'X', sizeof(buf));
	imc_time_rfc3339(INT64_MAX, buf, sizeof(buf)); /* beyond what gmtime_r can represent */
	ck_assert_ptr_nonnull(memchr(buf, '\0', sizeof(buf)));
	ck_assert_str_eq(buf, "9999-12-31T23:59:59Z");
}
END_TEST

START_TEST(fault_injection)
{
	imc_error err;
	unsigned long before = imc_priv_count(IMC_PRIV_FICLONE);

	setenv("IMC_FAULT", "ficlone:2:ENOSPC", 1);
	ck_assert_int_eq(imc_priv_inject_from_env(&err), 0);
	ck_assert_int_eq(imc_priv_ficlone(-1, -1, &err), -EBADF);  /* the real ioctl ran */
	ck_assert_int_eq(imc_priv_ficlone(-1, -1, &err), -ENOSPC); /* injected */
	ck_assert_int_eq(imc_priv_ficlone(-1, -1, &err), -EBADF);
	ck_assert_uint_eq(imc_priv_count(IMC_PRIV_FICLONE) - before, 3);
	static const char *const bad[] = {"nope:1:EIO", "mount:0:EIO", "mount:1:EWHAT", "mount",
					  "mount:x:EIO"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		setenv("IMC_FAULT", bad[i], 1);
		ck_assert_msg(imc_priv_inject_from_env(&err) == -EINVAL, "accepted %s", bad[i]);
	}
	unsetenv("IMC_FAULT");
}
END_TEST

START_TEST(utf8_is_checked)
{
	uint32_t cp = 0;

	ck_assert(imc_utf8_valid("caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x90\xb3", 14));
	ck_assert(imc_utf8_valid("a\0b", 3));
	ck_assert_uint_eq(imc_utf8_char("\xe2\x98\x83", 3, &cp), 3);
	ck_assert_uint_eq(cp, 0x2603);
	static const char *const bad[] = {"\xff",
					  "\xc3",
					  "\xc3\x28",
					  "\xc0\xaf" /* overlong '/' */,
					  "\xe0\x80\xaf",
					  "\xed\xa0\x80" /* surrogate */,
					  "\xf4\x90\x80\x80" /* > U+10FFFF */,
					  "\x80",
					  "\xf8\x88\x80\x80\x80"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(!imc_utf8_valid(bad[i], strlen(bad[i])), "accepted bad[%zu]", i);
}
END_TEST

START_TEST(log_escapes_what_comes_from_outside)
{
	const char *in = "a\nb\r\t\\\x1b[2J\xff\xc2\x9b\xe2\x80\xa8 caf\xc3\xa9";
	char out[128], small[8];

	ck_assert_uint_eq(imc_log_escape(in, strlen(in), out, sizeof(out)), strlen(in));
	ck_assert_str_eq(out, "a\\nb\\r\\t\\\\\\x1b[2J\\xff\\u009b\\u2028 caf\xc3\xa9");
	/* Cut only between whole escapes and characters. */
	ck_assert_uint_eq(imc_log_escape("ab\ncd", 5, small, 4), 2);
	ck_assert_str_eq(small, "ab");
	ck_assert_uint_eq(imc_log_escape("\xc3\xa9\xc3\xa9", 4, small, 4), 2);
	ck_assert_str_eq(small, "\xc3\xa9");
}
END_TEST

/* A request's bytes in a log message cannot make a second line: the whole message is one. */
START_TEST(log_lines_cannot_be_forged)
{
	char path[] = "/tmp/imc-log-XXXXXX", buf[1024];
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	ssize_t n;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
	imc_log(IMC_LOG_ERROR, "GET %s: %u", "/v1/x\n2026-01-01T00:00:00Z error: forged\x1b[1A",
		404);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(path);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
	ck_assert_ptr_eq(strchr(buf, '\n'), buf + n - 1);
	ck_assert_ptr_nonnull(
	    strstr(buf, " error: GET /v1/x\\n2026-01-01T00:00:00Z error: forged\\x1b[1A: 404\n"));
}
END_TEST

/* common/cli.h: rows become getopt_long's options; a take function's answer stops the parse. */
struct cli_test_opts {
	const char *name;
	bool force;
	int count;
};

static int take_count(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	struct cli_test_opts *t = o;

	if (strcmp(arg, "bad") == 0)
		return 7;
	t->count++;
	return 0;
}

static const struct imc_cli_opt cli_test_table[] = {
    {"name", required_argument, 'n', imc_cli_string, offsetof(struct cli_test_opts, name)},
    {"force", no_argument, 0, imc_cli_true, offsetof(struct cli_test_opts, force)},
    {"count", required_argument, 0, take_count, 0},
};

static int cli_parse(int argc, char **argv, struct cli_test_opts *t)
{
	*t = (struct cli_test_opts){0};
	optind = 1;
	return imc_cli_getopt(argc, argv, "+:", cli_test_table, IMC_ARRAY_SIZE(cli_test_table), t);
}

START_TEST(cli_option_tables)
{
	struct cli_test_opts t;
	char *ok[] = {"p",    "-n", "a",    "--force", "--count=1", "--cou", "2",
		      "--na", "b",  "rest", "-n",      "x",	    NULL};
	char *stop[] = {"p", "--count", "bad", "--force", NULL};
	char *unknown[] = {"p", "--nope", NULL};
	char *missing[] = {"p", "--name", NULL};
	char *no_short[] = {"p", "-f", NULL};

	ck_assert_int_eq(cli_parse(12, ok, &t), 0);
	ck_assert_str_eq(t.name, "b"); /* the last one wins, abbreviations work */
	ck_assert(t.force);
	ck_assert_int_eq(t.count, 2);
	ck_assert_str_eq(ok[optind], "rest"); /* "+": options end at the first argument */
	ck_assert_int_eq(cli_parse(4, stop, &t), 7);
	ck_assert(!t.force);
	ck_assert_int_eq(cli_parse(2, unknown, &t), IMC_CLI_REJECTED);
	ck_assert_int_eq(cli_parse(2, missing, &t), IMC_CLI_REJECTED);
	ck_assert_int_eq(cli_parse(2, no_short, &t), IMC_CLI_REJECTED); /* a row without one */
}
END_TEST

int main(void)
{
	Suite *s = suite_create("common");
	TCase *tc = tcase_create("common");

	tcase_add_test(tc, errors_carry_context);
	tcase_add_test(tc, sha256_and_digests);
	tcase_add_test(tc, json_fields_are_typed_and_checked);
	tcase_add_test(tc, atomic_json_files);
	tcase_add_test(tc, leftovers_nobody_holds_are_removed);
	tcase_add_test(tc, paths_stay_in_root);
	tcase_add_test(tc, names_and_ids);
	tcase_add_test(tc, buffers_grow_and_stay_terminated);
	tcase_add_test(tc, times_are_always_terminated);
	tcase_add_test(tc, fault_injection);
	tcase_add_test(tc, utf8_is_checked);
	tcase_add_test(tc, log_escapes_what_comes_from_outside);
	tcase_add_test(tc, log_lines_cannot_be_forged);
	tcase_add_test(tc, cli_option_tables);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
