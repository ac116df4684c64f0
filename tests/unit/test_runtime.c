/* attach/runtime.c: the runc/crun command line, the imcache annotations of config.json, the
 * real runtime's choice, log lines and attach records. */
#include <check.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../attach/runtime.h"
#include "unit.h"

int userdb_find(const char *db, const char *name, uint32_t id, uint32_t *ret_id, uint32_t *ret_gid);

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
	ck_assert_ptr_null(c.data_dest);
	ck_assert_int_eq(c.use_config, RUNTIME_USE_CONFIG_NO);
	ck_assert_ptr_nonnull(c.spec);
	runtime_cache_free(&c);

	static const struct {
		const char *value;
		enum runtime_use_config want;
	} modes[] = {{"false", RUNTIME_USE_CONFIG_NO},
		     {"true", RUNTIME_USE_CONFIG_FILL},
		     {"override", RUNTIME_USE_CONFIG_OVERRIDE}};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(modes); i++) {
		char json[256];
		snprintf(json, sizeof(json),
			 "{\"root\":{\"path\":\"r\"},\"annotations\":{\"imcache.io/cache-id\":"
			 "\"imc-1\",\"imcache.io/data-mount\":\"/models/x\","
			 "\"imcache.io/use-image-config\":\"%s\"}}",
			 modes[i].value);
		ck_assert_int_eq(parse(json, &c, &err), 0);
		ck_assert_int_eq(c.use_config, modes[i].want);
		ck_assert_str_eq(c.data_dest, "/models/x");
		ck_assert(!c.clone);
		runtime_cache_free(&c);
	}

	/* imcache.io/attach-mode: overlay (also the default) or clone. */
	static const struct {
		const char *value;
		bool clone;
	} attach_modes[] = {{"overlay", false}, {"clone", true}};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(attach_modes); i++) {
		char json[256];
		snprintf(json, sizeof(json),
			 "{\"root\":{\"path\":\"r\"},\"annotations\":{\"imcache.io/cache-id\":"
			 "\"imc-1\",\"imcache.io/attach-mode\":\"%s\"}}",
			 attach_modes[i].value);
		ck_assert_int_eq(parse(json, &c, &err), 0);
		ck_assert_int_eq(c.clone, attach_modes[i].clone);
		runtime_cache_free(&c);
	}
}
END_TEST

START_TEST(kubernetes_containers)
{
	static const struct {
		const char *extra;
		bool selected;
	} cases[] = {
	    {"", true},
	    {",\"io.kubernetes.cri.container-type\":\"container\"", true},
	    {",\"io.kubernetes.cri.container-type\":\"sandbox\"", false},
	    {",\"io.kubernetes.cri-o.ContainerType\":\"sandbox\"", false},
	    {",\"imcache.io/container\":\"app\",\"io.kubernetes.cri.container-name\":\"app\"",
	     true},
	    {",\"imcache.io/container\":\"app\",\"io.kubernetes.cri.container-name\":\"queue-"
	     "proxy\"",
	     false},
	    {",\"imcache.io/container\":\"app\",\"io.kubernetes.container.name\":\"sidecar\"",
	     false},
	    {",\"imcache.io/container\":\"app\"", true}, /* not under a CRI: no name to compare */
	    {",\"imcache.io/container\":\"app\",\"io.kubernetes.cri.container-type\":"
	     "\"sandbox\",\"io.kubernetes.cri.container-name\":\"app\"",
	     false},
	};
	imc_error err = {0};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		char json[512];
		struct runtime_cache c;

		snprintf(json, sizeof(json),
			 "{\"root\":{\"path\":\"r\"},\"annotations\":{\"imcache.io/cache-id\":"
			 "\"imc-1\"%s}}",
			 cases[i].extra);
		ck_assert_msg(parse(json, &c, &err) == 0, "case %zu: %s", i, err.msg);
		ck_assert_msg((c.cache_id != NULL) == cases[i].selected, "case %zu", i);
		runtime_cache_free(&c);
	}
	ck_assert_int_lt(parse("{\"root\":{\"path\":\"r\"},\"annotations\":{\"imcache.io/"
			       "cache-id\":\"imc-1\",\"imcache.io/container\":7}}",
			       &(struct runtime_cache){0}, &err),
			 0);
	ck_assert_msg(strstr(err.msg, "imcache.io/container"), "%s", err.msg);
}
END_TEST

START_TEST(data_dest)
{
	static const char *const good[] = {"/data", "/a/b/c", "/a.b/..c/.d"};
	static const char *const bad[] = {"",	   "/",	    "data", "./data", "/a/../b", "/..",
					  "/a/..", "/a//b", "/./a", "/a/.",   "/x/"};
	char long_path[RUNTIME_DATA_DEST_MAX + 2];
	imc_error err = {0};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(good); i++)
		ck_assert_msg(runtime_data_dest_check(good[i], &err) == 0, "%s: %s", good[i],
			      err.msg);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		ck_assert_msg(runtime_data_dest_check(bad[i], &err) == -EINVAL, "accepted %s",
			      bad[i]);
		ck_assert_msg(strstr(err.msg, "imcache.io/data-mount"), "%s", err.msg);
	}
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	ck_assert_int_eq(runtime_data_dest_check(long_path, &err), -EINVAL);
	long_path[RUNTIME_DATA_DEST_MAX] = '\0';
	ck_assert_int_eq(runtime_data_dest_check(long_path, &err), 0);
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
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/data-mount\":\"d\"},"
	     "\"root\":{\"path\":\"r\"}}",
	     "absolute path"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/data-mount\":\"/a/../"
	     "b\"},\"root\":{\"path\":\"r\"}}",
	     "component"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/data-mount\":5},"
	     "\"root\":{\"path\":\"r\"}}",
	     "imcache.io/data-mount"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/use-image-config\":"
	     "\"yes\"},\"root\":{\"path\":\"r\"}}",
	     "true, false or override"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/use-image-config\":"
	     "true},\"root\":{\"path\":\"r\"}}",
	     "imcache.io/use-image-config"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/attach-mode\":"
	     "\"block\"},\"root\":{\"path\":\"r\"}}",
	     "want overlay or clone"},
	    {"{\"annotations\":{\"imcache.io/cache-id\":\"a\",\"imcache.io/attach-mode\":1},"
	     "\"root\":{\"path\":\"r\"}}",
	     "imcache.io/attach-mode"},
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

START_TEST(userdb)
{
	const char *passwd = "root:x:0:0:root:/root:/bin/sh\n"
			     "broken:x:notanumber:1:::\n"
			     "short:x:5\n"
			     "app:x:1000:1001:App:/app:/bin/sh\n"
			     "nogid:x:77\n"
			     "last:x:4294967294:9::/:/bin/sh";
	const char *group = "root:x:0:\nstaff:x:50:app,root\nlast:x:60";
	uint32_t id = 99, gid = 99;

	ck_assert_int_eq(userdb_find(passwd, "app", 0, &id, &gid), 0);
	ck_assert_uint_eq(id, 1000);
	ck_assert_uint_eq(gid, 1001);
	ck_assert_int_eq(userdb_find(passwd, NULL, 1000, &id, &gid), 0);
	ck_assert_uint_eq(gid, 1001);
	ck_assert_int_eq(userdb_find(passwd, "last", 0, &id, &gid), 0);
	ck_assert_uint_eq(id, 4294967294u);
	ck_assert_uint_eq(gid, 9);
	ck_assert_int_eq(userdb_find(passwd, "ap", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find(passwd, "broken", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find(passwd, "short", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find(passwd, "nogid", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find(passwd, "", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find("", "root", 0, &id, &gid), -ENOENT);
	ck_assert_int_eq(userdb_find(group, "staff", 0, &id, NULL), 0);
	ck_assert_uint_eq(id, 50);
	ck_assert_int_eq(userdb_find(group, "last", 0, &id, NULL), -ENOENT); /* 3 fields */
}
END_TEST

static void write_file(const char *dir, const char *name, const char *text)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

START_TEST(user_resolve)
{
	char dir[] = "/tmp/imc-rt-unit.XXXXXX", root[300], etc[320], outside[320];
	static const struct {
		const char *user;
		uint32_t uid, gid;
	} good[] = {
	    {"0", 0, 0},	{"1000", 1000, 1001},	{"1000:0", 1000, 0},
	    {"4242", 4242, 0},	{"app", 1000, 1001},	{"app:staff", 1000, 50},
	    {"7:staff", 7, 50}, {"root:1000", 0, 1000},
	};
	static const struct {
		const char *user, *msg;
	} bad[] = {
	    {"ghost", "not in the image's /etc/passwd"},
	    {"app:ghosts", "not in the image's /etc/group"},
	    {"", "want user[:group]"},
	    {":5", "want user[:group]"},
	    {"5:", "want user[:group]"},
	    {"4294967295", "not in the image"}, /* too big for an id: taken as a name */
	};
	_cleanup_close_ int rootfd = -1;
	imc_error err = {0};
	uint32_t uid, gid;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(root, sizeof(root), "%s/root", dir);
	snprintf(etc, sizeof(etc), "%s/etc", root);
	ck_assert_int_eq(imc_mkdir_p(etc, 0755, &err), 0);
	write_file(root, "etc/passwd",
		   "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n");
	write_file(root, "etc/group", "root:x:0:\nstaff:x:50:app\n");
	rootfd = open(root, O_PATH | O_DIRECTORY);
	ck_assert_int_ge(rootfd, 0);

	for (size_t i = 0; i < IMC_ARRAY_SIZE(good); i++) {
		ck_assert_msg(runtime_user_resolve(good[i].user, rootfd, &uid, &gid, &err) == 0,
			      "%s: %s", good[i].user, err.msg);
		ck_assert_msg(uid == good[i].uid && gid == good[i].gid, "%s: got %u:%u",
			      good[i].user, uid, gid);
	}
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		ck_assert_msg(runtime_user_resolve(bad[i].user, rootfd, &uid, &gid, &err) < 0,
			      "accepted %s", bad[i].user);
		ck_assert_msg(strstr(err.msg, bad[i].msg), "%s: %s", bad[i].user, err.msg);
	}
	/* Without a rootfs, numbers work and names are refused. */
	ck_assert_int_eq(runtime_user_resolve("12:34", -1, &uid, &gid, &err), 0);
	ck_assert_uint_eq(uid, 12);
	ck_assert_uint_eq(gid, 34);
	ck_assert_int_lt(runtime_user_resolve("app", -1, &uid, &gid, &err), 0);
	ck_assert_msg(strstr(err.msg, "names need"), "%s", err.msg);

	/* A symlinked /etc/passwd pointing out of the rootfs resolves inside it. */
	snprintf(outside, sizeof(outside), "%s/passwd", dir);
	write_file(dir, "passwd", "evil:x:31337:31337::/:/bin/sh\n");
	snprintf(etc, sizeof(etc), "%s/etc/passwd", root);
	ck_assert_int_eq(unlink(etc), 0);
	ck_assert_int_eq(symlink("../../passwd", etc), 0);
	ck_assert_int_lt(runtime_user_resolve("evil", rootfd, &uid, &gid, &err), 0);
	ck_assert_msg(strstr(err.msg, "no /etc/passwd"), "%s", err.msg);
	ck_assert_int_eq(unlink(etc), 0);
	ck_assert_int_eq(symlink(outside, etc), 0); /* absolute: also inside */
	ck_assert_int_lt(runtime_user_resolve("evil", rootfd, &uid, &gid, &err), 0);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

static json_t *jparse(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);

	ck_assert_msg(j != NULL, "%s: %s", text, e.text);
	return j;
}

/* spec after runtime_spec_apply_image(mode) of image, compact with sorted keys. */
static char *applied(const char *spec_text, const char *image, enum runtime_use_config mode,
		     int rootfd, int *ret_r, imc_error *err)
{
	_cleanup_json_ json_t *spec = jparse(spec_text), *cfg = jparse(image);

	*ret_r = runtime_spec_apply_image(spec, cfg, mode, rootfd, err);
	return json_dumps(json_object_get(spec, "process"), JSON_COMPACT | JSON_SORT_KEYS);
}

START_TEST(spec_apply)
{
	static const char *image =
	    "{\"env\":[\"PATH=/img/bin\",\"IMG=1\",\"LANG\"],\"cmd\":[\"-c\",\"echo hi\"],"
	    "\"entrypoint\":[\"/bin/sh\"],\"workingDir\":\"/work\",\"user\":\"5:6\"}";
	static const struct {
		const char *spec;
		enum runtime_use_config mode;
		const char *want;
	} cases[] = {
	    /* the defaults every generator writes count as empty */
	    {"{\"process\":{\"args\":[],\"env\":[\"PATH=/spec\"],\"cwd\":\"/\",\"user\":{\"uid\":0,"
	     "\"gid\":0}}}",
	     RUNTIME_USE_CONFIG_FILL,
	     "{\"args\":[\"/bin/sh\",\"-c\",\"echo hi\"],\"cwd\":\"/work\",\"env\":[\"PATH=/spec\","
	     "\"IMG=1\",\"LANG\"],\"user\":{\"gid\":6,\"uid\":5}}"},
	    {"{\"process\":{}}", RUNTIME_USE_CONFIG_FILL,
	     "{\"args\":[\"/bin/sh\",\"-c\",\"echo "
	     "hi\"],\"cwd\":\"/work\",\"env\":[\"PATH=/img/bin\","
	     "\"IMG=1\",\"LANG\"],\"user\":{\"gid\":6,\"uid\":5}}"},
	    /* fill: what the spec says stays */
	    {"{\"process\":{\"args\":[\"x\"],\"env\":[\"IMG=spec\",\"LANG=C\"],\"cwd\":\"/s\","
	     "\"user\":{\"uid\":7,\"gid\":0}}}",
	     RUNTIME_USE_CONFIG_FILL,
	     "{\"args\":[\"x\"],\"cwd\":\"/s\",\"env\":[\"IMG=spec\",\"LANG=C\",\"PATH=/img/bin\"],"
	     "\"user\":{\"gid\":0,\"uid\":7}}"},
	    /* override: the image wins where it has a value */
	    {"{\"process\":{\"args\":[\"x\"],\"env\":[\"IMG=spec\",\"KEEP=1\"],\"cwd\":\"/s\","
	     "\"user\":{\"uid\":7,\"gid\":0}}}",
	     RUNTIME_USE_CONFIG_OVERRIDE,
	     "{\"args\":[\"/bin/sh\",\"-c\",\"echo hi\"],\"cwd\":\"/work\",\"env\":[\"IMG=1\","
	     "\"KEEP=1\",\"PATH=/img/bin\",\"LANG\"],\"user\":{\"gid\":6,\"uid\":5}}"},
	    {"{\"process\":{\"args\":[\"x\"]}}", RUNTIME_USE_CONFIG_NO, "{\"args\":[\"x\"]}"},
	};
	imc_error err = {0};
	int r;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		_cleanup_free_ char *got =
		    applied(cases[i].spec, image, cases[i].mode, -1, &r, &err);
		ck_assert_msg(r == 0, "case %zu: %s", i, err.msg);
		ck_assert_str_eq(got, cases[i].want);
	}
}
END_TEST

START_TEST(spec_apply_bad)
{
	static const struct {
		const char *spec, *image, *msg;
	} bad[] = {
	    {"{}", "{}", "process"},
	    {"{\"process\":{}}", "{\"cmd\":[]}", "no entrypoint or cmd"},
	    {"{\"process\":{}}", "{\"cmd\":\"/bin/sh\"}", "cmd"},
	    {"{\"process\":{}}", "{\"cmd\":[1]}", "cmd[0]"},
	    {"{\"process\":{\"args\":[\"x\"]}}", "{\"workingDir\":\"rel\"}", "not absolute"},
	    {"{\"process\":{\"args\":[\"x\"]}}", "{\"user\":\"app\"}", "names need"},
	    {"{\"process\":{\"args\":[\"x\"],\"env\":{}}}", "{\"env\":[\"A=1\"]}", "process.env"},
	    {"{\"process\":{\"args\":[\"x\"],\"user\":{\"uid\":-1}}}", "{\"user\":\"1\"}", "uid"},
	    {"{\"process\":{\"args\":5}}", "{\"cmd\":[\"x\"]}", "process.args"},
	};
	imc_error err = {0};
	int r;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *got =
		    applied(bad[i].spec, bad[i].image, RUNTIME_USE_CONFIG_FILL, -1, &r, &err);
		ck_assert_msg(r < 0, "case %zu accepted: %s", i, got);
		ck_assert_msg(strstr(err.msg, bad[i].msg) &&
				  strstr(err.msg, "imcache.io/use-image-config"),
			      "case %zu: \"%s\" lacks \"%s\"", i, err.msg, bad[i].msg);
	}
}
END_TEST

START_TEST(spec_rewrite)
{
	char dir[] = "/tmp/imc-rt-unit.XXXXXX", path[300];
	struct runtime_cache c = {0};
	_cleanup_free_ char *text = NULL;
	_cleanup_json_ json_t *cfg = jparse("{\"cmd\":[\"b\"]}");
	imc_error err = {0};
	struct stat st;

	/* load, change, write back: the file is replaced whole (a new inode) */
	ck_assert_ptr_nonnull(mkdtemp(dir));
	write_file(dir, "config.json",
		   "{\"root\":{\"path\":\"rootfs\"},\"process\":{\"args\":[],\"cwd\":\"/\"},"
		   "\"annotations\":{\"imcache.io/cache-id\":\"imc-a\","
		   "\"imcache.io/use-image-config\":\"true\"}}");
	snprintf(path, sizeof(path), "%s/config.json", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(runtime_cache_load(dir, "config.json", &c, &err), 0);
	ck_assert_str_eq(c.config_path, path);
	ck_assert_int_eq(runtime_spec_apply_image(c.spec, cfg, c.use_config, -1, &err), 0);
	ck_assert_int_eq(runtime_spec_write(&c, &err), 0);
	runtime_cache_free(&c);
	ck_assert_int_eq(imc_read_file(path, 4096, &text, NULL, &err), 0);
	ck_assert_msg(strstr(text, "\"args\":[\"b\"]") && strstr(text, "imcache.io/cache-id"), "%s",
		      text);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
}
END_TEST

/* Write n bytes to dir/config.json. */
static void write_config(const char *dir, const char *data, size_t n)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/config.json", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, n, f), n);
	fclose(f);
}

/* Without the annotation's key, config.json is the real runtime's business: what it takes and a
 * strict parser would refuse passes through unread.  With the key, it is parsed strictly. */
START_TEST(config_without_annotation_is_not_parsed)
{
	static const char *const foreign[] = {
	    "{\"root\":{\"path\":\"rootfs\"},\"hostname\":\"a\",\"hostname\":\"b\"}",
	    "{\"root\":{\"path\":\"rootfs\"},\"annotations\":{\"note\":\"\xff\xfe\"}}",
	    "{\"root\":{\"path\":\"rootfs\"},\"annotations\":{\"note\":\"a\\u0000b\"}}",
	    "not even JSON: the real runtime says so",
	};
	char dir[] = "/tmp/imc-rt-unit.XXXXXX";
	struct runtime_cache c = {0};
	imc_error err = {0};
	size_t big = RUNTIME_CONFIG_MAX + (1 << 20);
	_cleanup_free_ char *buf = malloc(big);
	char path[256];
	bool m = true;

	ck_assert_ptr_nonnull(buf);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	for (size_t i = 0; i < IMC_ARRAY_SIZE(foreign); i++) {
		write_config(dir, foreign[i], strlen(foreign[i]));
		ck_assert_msg(runtime_cache_load(dir, "config.json", &c, &err) == 0, "%zu: %s", i,
			      err.msg);
		ck_assert_ptr_null(c.cache_id);
		runtime_cache_free(&c);
	}
	/* Larger than the cap, with an annotation value that fills it. */
	memset(buf, 'a', big);
	memcpy(buf, "{\"annotations\":{\"x\":\"", strlen("{\"annotations\":{\"x\":\""));
	memcpy(buf + big - 3, "\"}}", 3);
	write_config(dir, buf, big);
	ck_assert_int_eq(runtime_cache_load(dir, "config.json", &c, &err), 0);
	ck_assert_ptr_null(c.cache_id);
	runtime_cache_free(&c);
	/* The key across the boundary of two reads, past the cap: found, so parsed, so refused. */
	memcpy(buf + 65536 - 7, RUNTIME_ANNOTATION_CACHE_ID, strlen(RUNTIME_ANNOTATION_CACHE_ID));
	write_config(dir, buf, big);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	ck_assert_int_eq(runtime_config_mentions_cache(path, &m, &err), 0);
	ck_assert(m);
	ck_assert_int_lt(runtime_cache_load(dir, "config.json", &c, &err), 0);
	/* With the key, duplicates and \u0000 are refused, also with the key written "\/". */
	static const char *const strict[] = {
	    "{\"root\":{\"path\":\"r\"},\"root\":{\"path\":\"s\"},\"annotations\":"
	    "{\"imcache.io/cache-id\":\"imc-0123456789abcdef\"}}",
	    "{\"root\":{\"path\":\"r\"},\"annotations\":{\"imcache.io\\/cache-id\":"
	    "\"imc-0123456789abcdef\",\"n\":\"\\u0000\"}}",
	};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(strict); i++) {
		write_config(dir, strict[i], strlen(strict[i]));
		ck_assert_msg(runtime_cache_load(dir, "config.json", &c, &err) < 0, "strict[%zu]",
			      i);
	}
	/* The key in some other value: parsed, and no annotation: pass through. */
	static const char other[] = "{\"root\":{\"path\":\"r\"},\"process\":{\"env\":"
				    "[\"X=imcache.io/cache-id\"]}}";
	write_config(dir, other, strlen(other));
	ck_assert_int_eq(runtime_cache_load(dir, "config.json", &c, &err), 0);
	ck_assert_ptr_null(c.cache_id);
	runtime_cache_free(&c);
	unlink(path);
	ck_assert_int_eq(runtime_config_mentions_cache(path, &m, &err), -ENOENT);
	rmdir(dir);
}
END_TEST

/* root.path is opened without following a symlink anywhere, and relative to the bundle it stays
 * in the bundle. */
START_TEST(rootfs_open_refuses_symlinks)
{
	char dir[] = "/tmp/imc-rt-root.XXXXXX", bundle[128], p[256], abs[256];
	imc_error err = {0};
	int fd = -1;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(bundle, sizeof(bundle), "%s/bundle", dir);
	ck_assert_int_eq(mkdir(bundle, 0755), 0);
	snprintf(p, sizeof(p), "%s/rootfs", bundle);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/elsewhere", dir);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/elsewhere/rootfs", dir);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/link", bundle);
	ck_assert_int_eq(symlink("../elsewhere", p), 0);
	snprintf(p, sizeof(p), "%s/self", bundle);
	ck_assert_int_eq(symlink("rootfs", p), 0);

	ck_assert_int_eq(runtime_rootfs_open(bundle, "rootfs", &fd, &err), 0);
	close(fd);
	ck_assert_int_eq(runtime_rootfs_open(bundle, "./rootfs/", &fd, &err), 0);
	close(fd);
	snprintf(abs, sizeof(abs), "%s/rootfs", bundle);
	ck_assert_int_eq(runtime_rootfs_open("/nonexistent", abs, &fd, &err), 0);
	close(fd);
	static const char *const looped[] = {"link", "link/rootfs", "self"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(looped); i++) {
		ck_assert_int_eq(runtime_rootfs_open(bundle, looped[i], &fd, &err), -ELOOP);
		ck_assert_ptr_nonnull(strstr(err.msg, "symlink"));
		ck_assert_ptr_nonnull(strstr(err.msg, looped[i]));
	}
	snprintf(abs, sizeof(abs), "%s/link/rootfs", bundle);
	ck_assert_int_eq(runtime_rootfs_open(bundle, abs, &fd, &err), -ELOOP);
	ck_assert_int_eq(runtime_rootfs_open(bundle, "../elsewhere/rootfs", &fd, &err), -EXDEV);
	ck_assert_int_eq(runtime_rootfs_open(bundle, "missing", &fd, &err), -ENOENT);
	ck_assert_int_eq(imc_rm_rf_at(AT_FDCWD, dir, &err), 0);
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
	tcase_add_test(tc, kubernetes_containers);
	tcase_add_test(tc, data_dest);
	tcase_add_test(tc, userdb);
	tcase_add_test(tc, user_resolve);
	tcase_add_test(tc, spec_apply);
	tcase_add_test(tc, spec_apply_bad);
	tcase_add_test(tc, spec_rewrite);
	tcase_add_test(tc, config_files);
	tcase_add_test(tc, config_without_annotation_is_not_parsed);
	tcase_add_test(tc, rootfs_open_refuses_symlinks);
	tcase_add_test(tc, pick_and_log);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
