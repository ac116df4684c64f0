/* attach/runtime.c: the runc/crun command line, the imcache annotations of config.json, the
 * real runtime's choice, log lines and attach records. */
#include <check.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "../../attach/runtime.h"
#include "unit.h"

struct args_case {
	const char *argv[16];
	enum runtime_verb verb;
	int command_index;
	const char *bundle, *config, *id, *log_file;
	bool log_json, detach;
};

static int count(const char *const *argv)
{
	int n = 0;

	while (argv[n])
		n++;
	return n;
}

static void check_str(const char *want, const char *got, int i, const char *what)
{
	if (!want)
		ck_assert_msg(!got, "case %d: %s: want NULL, got %s", i, what, got);
	else
		ck_assert_msg(got && strcmp(want, got) == 0, "case %d: %s: want %s, got %s", i,
			      what, want, got ? got : "NULL");
}

START_TEST(args_table)
{
	/* argv; verb, command index, bundle, config, id, log file, log json, detach */
	static const struct args_case cases[] = {
	    {{"r", "create", "c1"},
	     RUNTIME_CREATE,
	     1,
	     ".",
	     "config.json",
	     "c1",
	     NULL,
	     false,
	     false},
	    {{"r", "--root", "/run/x", "--log", "/l", "--log-format", "json", "--systemd-cgroup",
	      "create", "--bundle", "/b", "--pid-file", "/p", "c2"},
	     RUNTIME_CREATE,
	     8,
	     "/b",
	     "config.json",
	     "c2",
	     "/l",
	     true,
	     false},
	    {{"r", "--debug", "--root=/r", "--log=/l2", "--log-format=text", "run", "-b", "bb",
	      "--detach", "c3"},
	     RUNTIME_RUN,
	     5,
	     "bb",
	     "config.json",
	     "c3",
	     "/l2",
	     false,
	     true},
	    {{"r", "-root", "/r", "run", "--bundle=/x", "--console-socket", "/s", "c4"},
	     RUNTIME_RUN,
	     3,
	     "/x",
	     "config.json",
	     "c4",
	     NULL,
	     false,
	     false},
	    /* crun: -bDIR, --config/-f, flags after the id */
	    {{"r", "create", "-b/g", "c5", "-f", "other.json"},
	     RUNTIME_CREATE,
	     1,
	     "/g",
	     "other.json",
	     "c5",
	     NULL,
	     false,
	     false},
	    /* the id is the last positional argument */
	    {{"r", "run", "x", "y"}, RUNTIME_RUN, 1, ".", "config.json", "y", NULL, false, false},
	    {{"r", "run", "--", "-odd"},
	     RUNTIME_RUN,
	     1,
	     ".",
	     "config.json",
	     "-odd",
	     NULL,
	     false,
	     false},
	    /* delete: -f is --force, not a config file */
	    {{"r", "--root", "/r", "delete", "-f", "c6"},
	     RUNTIME_DELETE,
	     3,
	     ".",
	     "config.json",
	     "c6",
	     NULL,
	     false,
	     false},
	    {{"r", "delete", "--force", "c7"},
	     RUNTIME_DELETE,
	     1,
	     ".",
	     "config.json",
	     "c7",
	     NULL,
	     false,
	     false},
	    /* everything else passes through */
	    {{"r", "--log", "create", "state", "c8"},
	     RUNTIME_OTHER,
	     3,
	     ".",
	     "config.json",
	     NULL,
	     "create",
	     false,
	     false},
	    {{"r", "start", "--bundle", "/b", "c9"},
	     RUNTIME_OTHER,
	     1,
	     ".",
	     "config.json",
	     NULL,
	     NULL,
	     false,
	     false},
	    {{"r", "features"}, RUNTIME_OTHER, 1, ".", "config.json", NULL, NULL, false, false},
	    {{"r", "--version"}, RUNTIME_OTHER, -1, ".", "config.json", NULL, NULL, false, false},
	    {{"r"}, RUNTIME_OTHER, -1, ".", "config.json", NULL, NULL, false, false},
	    {{"r", "create"}, RUNTIME_CREATE, 1, ".", "config.json", NULL, NULL, false, false},
	    {{"r", "create", "--bundle=", "c10"},
	     RUNTIME_CREATE,
	     1,
	     ".",
	     "config.json",
	     "c10",
	     NULL,
	     false,
	     false},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		const struct args_case *c = &cases[i];
		struct runtime_args a;
		imc_error err = {0};
		int r = runtime_parse_args(count(c->argv), (char *const *)c->argv, &a, &err);

		ck_assert_msg(r == 0, "case %zu: %s", i, err.msg);
		ck_assert_msg(a.verb == c->verb, "case %zu: verb %d", i, a.verb);
		ck_assert_msg(a.command_index == c->command_index, "case %zu: command at %d", i,
			      a.command_index);
		check_str(c->bundle, a.bundle, (int)i, "bundle");
		check_str(c->config, a.config, (int)i, "config");
		check_str(c->id, a.id, (int)i, "id");
		check_str(c->log_file, a.log_file, (int)i, "log");
		ck_assert_msg(a.log_json == c->log_json, "case %zu: log json", i);
		ck_assert_msg(a.detach == c->detach, "case %zu: detach", i);
	}
}
END_TEST

START_TEST(args_missing_values_fail)
{
	static const char *const bad[][4] = {
	    {"r", "--root", NULL}, {"r", "create", "--bundle", NULL}, {"r", "run", "-b", NULL}};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		struct runtime_args a;
		imc_error err = {0};

		ck_assert_int_eq(runtime_parse_args(count(bad[i]), (char *const *)bad[i], &a, &err),
				 -EINVAL);
		ck_assert_msg(strstr(err.msg, "needs a value"), "%s", err.msg);
	}
}
END_TEST

static int parse(const char *json, struct runtime_cache *c, imc_error *err)
{
	*c = (struct runtime_cache){0};
	return runtime_cache_parse(json, strlen(json), "/bundle", c, err);
}

START_TEST(annotations)
{
	struct runtime_cache c;
	imc_error err = {0};

	ck_assert_int_eq(parse("{\"root\":{\"path\":\"rootfs\"}}", &c, &err), 0);
	ck_assert_ptr_null(c.cache_id);
	ck_assert_int_eq(
	    parse("{\"root\":{\"path\":\"rootfs\"},\"annotations\":{\"other\":\"x\"}}", &c, &err),
	    0);
	ck_assert_ptr_null(c.cache_id);

	ck_assert_int_eq(parse("{\"root\":{\"path\":\"rootfs\"},\"annotations\":"
			       "{\"imcache.io/cache-id\":\"imc-0123\"}}",
			       &c, &err),
			 0);
	ck_assert_str_eq(c.cache_id, "imc-0123");
	ck_assert_uint_eq(c.image, 0);
	ck_assert_str_eq(c.rootfs, "/bundle/rootfs");
	runtime_cache_free(&c);

	ck_assert_int_eq(parse("{\"root\":{\"path\":\"/abs/root\"},\"annotations\":"
			       "{\"imcache.io/cache-id\":\"imc-1\",\"imcache.io/image\":\"1000\"}}",
			       &c, &err),
			 0);
	ck_assert_str_eq(c.rootfs, "/abs/root");
	ck_assert_uint_eq(c.image, 1000);
	runtime_cache_free(&c);
}
END_TEST

START_TEST(annotations_bad)
{
	static const struct {
		const char *json, *msg;
	} bad[] = {
	    {"{", "config.json"},
	    {"[]", "config.json"},
	    {"{\"annotations\":[]}", "annotations"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":5}}", "imcache.io/cache-id"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"../x\"},\"root\":{\"path\":\"r\"}}",
	     "not a cache id"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"\"},\"root\":{\"path\":\"r\"}}",
	     "not a cache id"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/image\":\"1001\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "0-1000"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/image\":\"-1\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "0-1000"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/image\":\"1x\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "0-1000"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/image\":\"\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "0-1000"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/image\":2},"
	     "\"root\":{\"path\":\"r\"}}",
	     "imcache.io/image"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\"}}", "root"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\"},\"root\":{}}", "path"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\"},\"root\":{\"path\":\"\"}}", "empty"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/data-mount\":\"/d\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "not supported"},
	};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		struct runtime_cache c;
		imc_error err = {0};

		ck_assert_msg(parse(bad[i].json, &c, &err) < 0, "accepted %s", bad[i].json);
		ck_assert_msg(strstr(err.msg, bad[i].msg), "%s: message \"%s\" lacks \"%s\"",
			      bad[i].json, err.msg, bad[i].msg);
		ck_assert_ptr_null(c.cache_id);
	}
}
END_TEST

START_TEST(config_files)
{
	char dir[] = "/tmp/imc-rt-unit.XXXXXX";
	char path[256];
	struct runtime_cache c = {0};
	imc_error err = {0};
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(runtime_cache_load(dir, "config.json", &c, &err), -ENOENT);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("{\"root\":{\"path\":\"rootfs\"},\"annotations\":{\"imcache.io/cache-id\":\"imc-a\","
	      "\"imcache.io/image\":\"2\"}}",
	      f);
	fclose(f);
	ck_assert_int_eq(runtime_cache_load(dir, "config.json", &c, &err), 0);
	ck_assert_str_eq(c.cache_id, "imc-a");
	ck_assert_uint_eq(c.image, 2);
	snprintf(path, sizeof(path), "%s/rootfs", dir);
	ck_assert_str_eq(c.rootfs, path);
	runtime_cache_free(&c);

	/* records: written, read back, refused twice, removed */
	ck_assert_int_eq(runtime_record_read(dir, "ctr-1", &c.rootfs, &err), -ENOENT);
	c.cache_id = strdup("imc-a");
	c.rootfs = strdup("/some/dir");
	ck_assert_int_eq(runtime_record_write(dir, "ctr-1", &c, &err), 0);
	ck_assert_int_eq(runtime_record_write(dir, "ctr-1", &c, &err), -EEXIST);
	ck_assert_int_eq(runtime_record_write(dir, "../x", &c, &err), -EINVAL);
	runtime_cache_free(&c);
	ck_assert_int_eq(runtime_record_read(dir, "ctr-1", &c.rootfs, &err), 0);
	ck_assert_str_eq(c.rootfs, "/some/dir");
	runtime_cache_free(&c);
	ck_assert_int_eq(runtime_record_remove(dir, "ctr-1", &err), 0);
	ck_assert_int_eq(runtime_record_read(dir, "ctr-1", &c.rootfs, &err), -ENOENT);
	ck_assert_int_eq(runtime_record_remove(dir, "ctr-1", &err), 0);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

START_TEST(pick_and_log)
{
	char dir[] = "/tmp/imc-rt-unit.XXXXXX", path[256];
	_cleanup_free_ char *rt = NULL, *line = NULL;
	imc_error err = {0};
	int fd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(runtime_pick(NULL, dir, &rt, &err), -ENOENT);
	snprintf(path, sizeof(path), "%s/runc", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0755);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(runtime_pick("", dir, &rt, &err), 0);
	ck_assert_str_eq(rt, path);
	free(steal_pointer(&rt));
	snprintf(path, sizeof(path), "%s/crun", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0755);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(runtime_pick(NULL, dir, &rt, &err), 0);
	ck_assert_str_eq(rt, path); /* crun first */
	free(steal_pointer(&rt));
	ck_assert_int_eq(runtime_pick("nope", dir, &rt, &err), -ENOENT);
	ck_assert_int_eq(runtime_pick("/x/y", dir, &rt, &err), 0);
	ck_assert_str_eq(rt, "/x/y");
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);

	ck_assert_int_eq(runtime_log_line(true, "cache \"x\": gone", 0, &line, &err), 0);
	ck_assert_str_eq(line, "{\"level\":\"error\",\"msg\":\"cache \\\"x\\\": gone\",\"time\":"
			       "\"1970-01-01T00:00:00Z\"}\n");
	free(steal_pointer(&line));
	ck_assert_int_eq(runtime_log_line(false, "a \"b\"\n", 0, &line, &err), 0);
	ck_assert_str_eq(line,
			 "time=\"1970-01-01T00:00:00Z\" level=error msg=\"a \\\"b\\\"\\n\"\n");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("runtime");
	TCase *tc = tcase_create("runtime");

	tcase_add_test(tc, args_table);
	tcase_add_test(tc, args_missing_values_fail);
	tcase_add_test(tc, annotations);
	tcase_add_test(tc, annotations_bad);
	tcase_add_test(tc, config_files);
	tcase_add_test(tc, pick_and_log);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
