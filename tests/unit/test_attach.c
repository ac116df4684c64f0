/* attach/: the pure parts (attach ids, the data mount path check, mountinfo decoding, the scan
 * for an overlay attach's mounts).  The
 * mounts, loop devices and crash recovery are tested for real in
 * tests/integration/test_attach.sh. */
#include <check.h>
#include <stdbool.h>
#include <string.h>

#include "../../attach/internal.h"
#include "../../dist/dist.h"
#include "unit.h"

/* TESTABLE helpers of attach/attach.c. */
int attach_id_for_dir(const char *dir, char ret[32], imc_error *err);
bool attach_id_valid(const char *s);
int data_dest_check(const char *dest, imc_error *err);
void mountinfo_unescape(char *s);

START_TEST(attach_ids)
{
	char a[32], b[32];
	imc_error err;

	ck_assert_int_eq(attach_id_for_dir("/run/pods/p1", a, &err), 0);
	ck_assert_int_eq(attach_id_for_dir("/run/pods/p2", b, &err), 0);
	ck_assert(attach_id_valid(a));
	ck_assert(attach_id_valid(b));
	ck_assert_str_ne(a, b);
	/* Stable: detach finds the attach from the directory alone. */
	ck_assert_int_eq(attach_id_for_dir("/run/pods/p1", b, &err), 0);
	ck_assert_str_eq(a, b);

	static const char *const bad[] = {
	    "",
	    "att-",
	    "att-0123456789abcde",   /* 15 digits */
	    "att-0123456789abcdef0", /* 17 */
	    "att-0123456789ABCDEF",  /* upper case */
	    "att-0123456789abcdeg",  /* not hex */
	    "imc-0123456789abcdef",  /* a cache id */
	    "att-0123456789abcde/",  /* a path */
	    "/dev/loop0",
	};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_msg(!attach_id_valid(bad[i]), "accepted \"%s\"", bad[i]);
	ck_assert(attach_id_valid("att-0123456789abcdef"));
}
END_TEST

START_TEST(data_dest_paths)
{
	imc_error err;
	static const char *const good[] = {"/data", "/opt/llm", "//opt//llm/", "/./x", "/a/.b/..c"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(good); i++)
		ck_assert_msg(data_dest_check(good[i], &err) == 0, "refused %s: %s", good[i],
			      err.msg);

	ck_assert_int_eq(data_dest_check("data", &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "absolute"));
	ck_assert_int_eq(data_dest_check("/a/../b", &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "\"..\" is not allowed"));
	ck_assert_int_eq(data_dest_check("/..", &err), -EINVAL);
	ck_assert_int_eq(data_dest_check("/", &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "names no directory"));
	ck_assert_int_eq(data_dest_check("/./", &err), -EINVAL);

	char longp[1100];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	ck_assert_int_eq(data_dest_check(longp, &err), -EINVAL); /* over the cap */
	longp[1024] = '\0';
	ck_assert_int_eq(data_dest_check(longp, &err), 0); /* at it */
}
END_TEST

START_TEST(mountinfo_escapes)
{
	char s1[] = "/run/pods/with\\040space\\011tab\\012nl\\134bs";
	char s2[] = "/plain";
	char s3[] = "/bad\\9x\\04";

	mountinfo_unescape(s1);
	ck_assert_str_eq(s1, "/run/pods/with space\ttab\nnl\\bs");
	mountinfo_unescape(s2);
	ck_assert_str_eq(s2, "/plain");
	mountinfo_unescape(s3); /* not escapes: left as they are */
	ck_assert_str_eq(s3, "/bad\\9x\\04");
}
END_TEST

/* The overlay of att-0123456789abcdef (by its source), the mounts on top of it (the data
 * mount, a mount on that), and none of another attach's or anyone else's; the last-mounted
 * first. */
START_TEST(pod_mounts_scan)
{
	static struct attach_pod_mount m[ATTACH_POD_MOUNTS_MAX];
	char buf[] = "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
		     "40 22 7:7 / /s/lowers/imc-1 ro - ext4 /dev/loop7 ro\n"
		     "41 22 0:52 / /run/p\\0401 rw - overlay imc-att-0123456789abcdef "
		     "rw,lowerdir=/x\n"
		     "42 41 7:7 /data /run/p\\0401/models ro - ext4 /dev/loop7 ro\n"
		     "43 42 0:53 / /run/p\\0401/models/t rw - tmpfs tmpfs rw\n"
		     "44 22 0:54 / /run/q rw - overlay imc-att-ffffffffffffffff rw\n"
		     "45 44 0:55 / /run/q/x rw - tmpfs tmpfs rw\n"
		     "46 22 0:56 / /run/r rw - overlay imc-att-0123456789abcdefX rw\n"
		     "garbage line\n"
		     "47 22 0:57 / - overlay\n";

	ck_assert_uint_eq(attach_pod_mounts_scan(buf, "att-0123456789abcdef", m), 3);
	ck_assert_str_eq(m[0].point, "/run/p 1/models/t");
	ck_assert(!m[0].overlay);
	ck_assert_str_eq(m[1].point, "/run/p 1/models");
	ck_assert_uint_eq(m[1].parent, 41);
	ck_assert_str_eq(m[2].point, "/run/p 1");
	ck_assert(m[2].overlay);
	ck_assert_uint_eq(m[2].id, 41);
}
END_TEST

/* Does argv hold flag followed by value? */
static bool has_pair(const struct lazy_argv *a, const char *flag, const char *value)
{
	for (size_t i = 0; i + 1 < a->n; i++)
		if (strcmp(a->v[i], flag) == 0 && strcmp(a->v[i + 1], value) == 0)
			return true;
	return false;
}

/* The lazy server gets the agent's driver options (and the rest of what it was given), in the
 * order given, each as --driver-opt KEY=VALUE before the command; the token never. */
START_TEST(lazy_server_args)
{
	static const char *const opts[] = {"data_dev=/dev/vdb", "zero=false", NULL};
	static const char *const insecure[] = {"127.0.0.1:5000", NULL};
	const struct lazy_store_args st = {
	    .state_dir = "/s", .driver = "thin", .driver_opts = opts};
	const struct dist_fetch_config fc = {.server = "http://h:1",
					     .token = "secret",
					     .registry_ref = "r/x:v1",
					     .insecure_registries = insecure,
					     .parallel = 8,
					     .cache_size = 1 << 20};
	struct lazy_argv a;
	size_t first = 0, second = 0;

	lazy_server_argv(&st, &fc, "imc-0123456789abcdef", 7, &a);
	ck_assert_uint_ge(a.n, 5);
	ck_assert_ptr_null(a.v[a.n]);
	ck_assert_str_eq(a.v[0], "imc-attach");
	ck_assert(has_pair(&a, "--state-dir", "/s"));
	ck_assert(has_pair(&a, "--driver", "thin"));
	ck_assert(has_pair(&a, "--driver-opt", "data_dev=/dev/vdb"));
	ck_assert(has_pair(&a, "--driver-opt", "zero=false"));
	ck_assert(has_pair(&a, "--server", "http://h:1"));
	ck_assert(has_pair(&a, "--registry-ref", "r/x:v1"));
	ck_assert(has_pair(&a, "--insecure-registry", "127.0.0.1:5000"));
	ck_assert(has_pair(&a, "--parallel", "8"));
	ck_assert(has_pair(&a, "--cache-size", "1048576"));
	for (size_t i = 0; i < a.n; i++) {
		ck_assert_ptr_null(strstr(a.v[i], "secret"));
		if (strcmp(a.v[i], "data_dev=/dev/vdb") == 0)
			first = i;
		if (strcmp(a.v[i], "zero=false") == 0)
			second = i;
	}
	ck_assert_uint_lt(first, second); /* in the order given */
	/* The command and its arguments last: every global option comes before it. */
	ck_assert_str_eq(a.v[a.n - 4], "lazy-serve");
	ck_assert_str_eq(a.v[a.n - 3], "--ready-fd");
	ck_assert_str_eq(a.v[a.n - 2], "7");
	ck_assert_str_eq(a.v[a.n - 1], "imc-0123456789abcdef");
	ck_assert_uint_lt(second, a.n - 4);

	/* No options: none on the command line. */
	lazy_server_argv(&(struct lazy_store_args){.state_dir = "/s", .driver = "reflink"},
			 &(struct dist_fetch_config){.server = "http://h:1"}, "imc-1", 3, &a);
	for (size_t i = 0; i < a.n; i++)
		ck_assert_str_ne(a.v[i], "--driver-opt");
	ck_assert_str_eq(a.v[a.n - 4], "lazy-serve");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("attach");
	TCase *tc = tcase_create("pure");

	tcase_add_test(tc, attach_ids);
	tcase_add_test(tc, data_dest_paths);
	tcase_add_test(tc, mountinfo_escapes);
	tcase_add_test(tc, pod_mounts_scan);
	tcase_add_test(tc, lazy_server_args);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
