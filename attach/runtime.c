/* The pure parts of imc-runtime: a runc/crun command line read just far enough to find the
 * command, the bundle and the container id; the imcache annotations of config.json; the record
 * of which directory a container's attach uses; the real runtime's log format. */
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime.h"

#define RECORD_DIR	 "runtime"
#define RECORD_MAX_BYTES (64 * 1024)

/* Global flags of runc and crun that take a value ("--root DIR", "--root=DIR", "-root DIR"). */
static const char *const global_value_flags[] = {"root", "log",	     "log-format",     "log-level",
						 "criu", "rootless", "cgroup-manager", NULL};
/* Flags of create and run (both runtimes) that take a value. */
static const char *const create_value_flags[] = {
    "bundle", "b", "console-socket", "pid-file", "preserve-fds", "config", "f", NULL};
static const char *const no_value_flags[] = {NULL};

static bool in_list(const char *const *list, const char *name, size_t len)
{
	for (; *list; list++)
		if (strlen(*list) == len && strncmp(*list, name, len) == 0)
			return true;
	return false;
}

/* One flag at argv[*i]: sets *ret_name and *ret_len to its name (no dashes, no "=value") and
 * *ret_value to its value when it takes one, consuming the next argument when needed. */
static int take_flag(int argc, char *const *argv, int *i, const char *const *value_flags,
		     const char **ret_name, size_t *ret_len, const char **ret_value, imc_error *err)
{
	const char *arg = argv[*i], *name = arg + 1, *eq;
	size_t len;

	if (name[0] == '-')
		name++;
	eq = strchr(name, '=');
	len = eq ? (size_t)(eq - name) : strlen(name);
	*ret_name = name;
	*ret_len = len;
	*ret_value = NULL;
	if (!in_list(value_flags, name, len)) {
		/* argp's "-bDIR": a one-letter flag glued to its value. */
		if (arg[1] != '-' && !eq && len > 1 && in_list(value_flags, name, 1)) {
			*ret_len = 1;
			*ret_value = name + 1;
		}
		return 0;
	}
	if (eq) {
		*ret_value = eq + 1;
		return 0;
	}
	if (*i + 1 >= argc)
		return imc_err(err, EINVAL, "%s: needs a value", arg);
	*ret_value = argv[++*i];
	return 0;
}

static bool flag_is(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && strncmp(name, want, len) == 0;
}

static enum runtime_verb verb_of(const char *cmd)
{
	if (strcmp(cmd, "create") == 0)
		return RUNTIME_CREATE;
	if (strcmp(cmd, "run") == 0)
		return RUNTIME_RUN;
	if (strcmp(cmd, "delete") == 0)
		return RUNTIME_DELETE;
	return RUNTIME_OTHER;
}

static int parse_globals(int argc, char *const *argv, struct runtime_args *a, imc_error *err)
{
	for (int i = 1; i < argc; i++) {
		const char *name, *value;
		size_t len;
		int r;

		if (strcmp(argv[i], "--") == 0) {
			a->command_index = i + 1 < argc ? i + 1 : -1;
			return 0;
		}
		if (argv[i][0] != '-' || argv[i][1] == '\0') {
			a->command_index = i;
			return 0;
		}
		r = take_flag(argc, argv, &i, global_value_flags, &name, &len, &value, err);
		if (r < 0)
			return r;
		if (flag_is(name, len, "log"))
			a->log_file = value;
		else if (flag_is(name, len, "log-format"))
			a->log_json = strcmp(value, "json") == 0;
	}
	return 0;
}

static int parse_command(int argc, char *const *argv, struct runtime_args *a, imc_error *err)
{
	const char *const *value_flags =
	    a->verb == RUNTIME_DELETE ? no_value_flags : create_value_flags;
	bool positional_only = false;

	for (int i = a->command_index + 1; i < argc; i++) {
		const char *name, *value;
		size_t len;
		int r;

		if (positional_only || argv[i][0] != '-' || argv[i][1] == '\0') {
			a->id = argv[i];
			continue;
		}
		if (strcmp(argv[i], "--") == 0) {
			positional_only = true;
			continue;
		}
		r = take_flag(argc, argv, &i, value_flags, &name, &len, &value, err);
		if (r < 0)
			return r;
		if (a->verb == RUNTIME_DELETE)
			continue; /* its -f is --force */
		if (flag_is(name, len, "bundle") || flag_is(name, len, "b"))
			a->bundle = value;
		else if (flag_is(name, len, "config") || flag_is(name, len, "f"))
			a->config = value;
		else if (a->verb == RUNTIME_RUN &&
			 (flag_is(name, len, "detach") || flag_is(name, len, "d")))
			a->detach = true;
	}
	return 0;
}

int runtime_parse_args(int argc, char *const *argv, struct runtime_args *ret, imc_error *err)
{
	struct runtime_args a = {.command_index = -1, .bundle = ".", .config = "config.json"};
	int r = parse_globals(argc, argv, &a, err);

	if (r < 0)
		return r;
	if (a.command_index >= 0) {
		a.verb = verb_of(argv[a.command_index]);
		if (a.verb != RUNTIME_OTHER && (r = parse_command(argc, argv, &a, err)) < 0)
			return r;
	}
	if (a.bundle[0] == '\0')
		a.bundle = ".";
	*ret = a;
	return 0;
}

void runtime_cache_free(struct runtime_cache *c)
{
	free(c->cache_id);
	free(c->rootfs);
	*c = (struct runtime_cache){0};
}

static int parse_image(json_t *annotations, unsigned *ret, imc_error *err)
{
	const char *s = NULL;
	char *end;
	unsigned long n;
	int r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_IMAGE, false, 16,
				    "config.json annotations", &s, err);

	if (r < 0 || !s)
		return r;
	errno = 0;
	n = strtoul(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end || errno || n > 1000)
		return imc_err(err, EINVAL, "annotation %s=\"%s\": want 0-1000",
			       RUNTIME_ANNOTATION_IMAGE, s);
	*ret = (unsigned)n;
	return 0;
}

static int rootfs_path(json_t *config, const char *bundle, char **ret, imc_error *err)
{
	json_t *root = NULL;
	const char *path = NULL;
	int r = imc_json_get_object(config, "root", true, "config.json", &root, err);

	if (r < 0)
		return r;
	r = imc_json_get_string(root, "path", true, PATH_MAX - 1, "config.json root", &path, err);
	if (r < 0)
		return r;
	if (path[0] == '\0')
		return imc_err(err, EINVAL, "config.json root.path: empty");
	*ret = path[0] == '/' ? strdup(path) : imc_path_join(bundle, path);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int runtime_cache_parse(const char *json, size_t len, const char *bundle, struct runtime_cache *ret,
			imc_error *err)
{
	_cleanup_json_ json_t *config = NULL;
	json_t *annotations = NULL;
	const char *id = NULL;
	struct runtime_cache c = {0};
	int r = imc_json_parse_object(json, len, &config, err);

	if (r < 0)
		return imc_err_wrap(err, "config.json");
	r = imc_json_get_object(config, "annotations", false, "config.json", &annotations, err);
	if (r < 0)
		return r;
	if (annotations)
		r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_CACHE_ID, false, 256,
					"config.json annotations", &id, err);
	if (r < 0 || !id) {
		*ret = c;
		return r;
	}
	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "annotation %s=\"%.80s\": not a cache id",
			       RUNTIME_ANNOTATION_CACHE_ID, id);
	if (json_object_get(annotations, RUNTIME_ANNOTATION_DATA))
		return imc_err(err, EOPNOTSUPP, "annotation %s: not supported by imc-runtime",
			       RUNTIME_ANNOTATION_DATA);
	if ((r = parse_image(annotations, &c.image, err)) < 0)
		return r;
	if ((r = rootfs_path(config, bundle, &c.rootfs, err)) < 0)
		return r;
	c.cache_id = strdup(id);
	if (!c.cache_id) {
		runtime_cache_free(&c);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = c;
	return 0;
}

int runtime_cache_load(const char *bundle, const char *config, struct runtime_cache *ret,
		       imc_error *err)
{
	_cleanup_free_ char *path =
	    config[0] == '/' ? strdup(config) : imc_path_join(bundle, config);
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	int r;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	r = imc_read_file(path, RUNTIME_CONFIG_MAX, &buf, &len, err);
	if (r < 0)
		return r == -ENOENT ? r : imc_err_wrap(err, "bundle %s", bundle);
	r = runtime_cache_parse(buf, len, bundle, ret, err);
	return r < 0 ? imc_err_wrap(err, "%s", path) : 0;
}

/* Is dir/name an executable file?  ret gets the malloc'ed path when it is. */
static bool find_in(const char *dir, size_t dir_len, const char *name, char **ret)
{
	_cleanup_free_ char *d = strndup(dir_len ? dir : ".", dir_len ? dir_len : 1);
	_cleanup_free_ char *p = d ? imc_path_join(d, name) : NULL;
	struct stat st;

	if (!p || access(p, X_OK) < 0 || stat(p, &st) < 0 || !S_ISREG(st.st_mode))
		return false;
	*ret = steal_pointer(&p);
	return true;
}

static int search_path(const char *name, const char *path, char **ret)
{
	const char *p = path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

	for (;;) {
		const char *colon = strchr(p, ':');
		size_t len = colon ? (size_t)(colon - p) : strlen(p);

		if (find_in(p, len, name, ret))
			return 0;
		if (!colon)
			return -ENOENT;
		p = colon + 1;
	}
}

int runtime_pick(const char *env, const char *path, char **ret, imc_error *err)
{
	if (env && env[0] != '\0') {
		if (strchr(env, '/')) {
			*ret = strdup(env);
			return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
		}
		if (search_path(env, path, ret) < 0)
			return imc_err(err, ENOENT, "IMCACHE_RUNTIME=%s: not found in PATH", env);
		return 0;
	}
	if (search_path("crun", path, ret) == 0 || search_path("runc", path, ret) == 0)
		return 0;
	return imc_err(err, ENOENT, "neither crun nor runc is in PATH (set IMCACHE_RUNTIME)");
}

/* msg as a logrus text value: quoted, with '"', '\\' and control characters escaped. */
static int append_quoted(struct imc_buf *b, const char *msg)
{
	int r = imc_buf_append(b, "\"", 1);

	for (const char *p = msg; r == 0 && *p; p++) {
		char esc[8];
		unsigned char ch = (unsigned char)*p;

		if (ch == '"' || ch == '\\')
			snprintf(esc, sizeof(esc), "\\%c", ch);
		else if (ch == '\n')
			snprintf(esc, sizeof(esc), "\\n");
		else if (ch < 0x20)
			snprintf(esc, sizeof(esc), "\\x%02x", ch);
		else
			snprintf(esc, sizeof(esc), "%c", ch);
		r = imc_buf_append(b, esc, strlen(esc));
	}
	return r ? r : imc_buf_append(b, "\"", 1);
}

int runtime_log_line(bool json, const char *msg, int64_t now, char **ret, imc_error *err)
{
	char t[32];
	struct imc_buf b = {0};
	int r;

	imc_time_rfc3339(now, t, sizeof(t));
	if (json) {
		_cleanup_json_ json_t *j =
		    json_pack("{s:s, s:s, s:s}", "level", "error", "msg", msg, "time", t);
		char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
		r = s ? imc_buf_append(&b, s, strlen(s)) : -ENOMEM;
		free(s);
	} else {
		r = imc_buf_append(&b, "time=\"", 6);
		if (r == 0)
			r = imc_buf_append(&b, t, strlen(t));
		if (r == 0)
			r = imc_buf_append(&b, "\" level=error msg=", 18);
		if (r == 0)
			r = append_quoted(&b, msg);
	}
	if (r == 0)
		r = imc_buf_append(&b, "\n", 1);
	if (r < 0) {
		imc_buf_free(&b);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = b.data;
	return 0;
}

static int open_record_dir(const char *state_dir, bool create, imc_error *err)
{
	_cleanup_free_ char *path = imc_path_join(state_dir, RECORD_DIR);
	int fd;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	if (create) {
		int r = imc_mkdir_p(path, 0700, err);
		if (r < 0)
			return r;
	}
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT && !create ? -ENOENT : imc_err_sys(err, errno, "%s", path);
	return fd;
}

static int record_name(const char *id, char ret[RUNTIME_ID_MAX + 8], imc_error *err)
{
	if (!imc_name_valid(id, RUNTIME_ID_MAX))
		return imc_err(err, EINVAL, "container id \"%.80s\": want [A-Za-z0-9._-], 1-%d", id,
			       RUNTIME_ID_MAX);
	snprintf(ret, RUNTIME_ID_MAX + 8, "%s.json", id);
	return 0;
}

int runtime_record_write(const char *state_dir, const char *id, const struct runtime_cache *c,
			 imc_error *err)
{
	char name[RUNTIME_ID_MAX + 8];
	_cleanup_close_ int dfd = -1;
	_cleanup_json_ json_t *rec = NULL;
	int r = record_name(id, name, err);

	if (r < 0)
		return r;
	dfd = open_record_dir(state_dir, true, err);
	if (dfd < 0)
		return dfd;
	if (faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return imc_err(err, EEXIST, "container %s: an imcache attach is already recorded",
			       id);
	rec = json_pack("{s:s, s:s, s:i, s:s, s:I}", "id", id, "cacheId", c->cache_id, "image",
			(int)c->image, "dir", c->rootfs, "createdAt", (json_int_t)imc_now());
	if (!rec)
		return imc_err(err, ENOMEM, "out of memory");
	r = imc_json_write_replace(dfd, name, rec, err);
	return r < 0 ? imc_err_wrap(err, "container %s", id) : 0;
}

int runtime_record_read(const char *state_dir, const char *id, char **ret_dir, imc_error *err)
{
	char name[RUNTIME_ID_MAX + 8];
	_cleanup_close_ int dfd = -1;
	_cleanup_json_ json_t *rec = NULL;
	const char *dir = NULL;
	int r = record_name(id, name, err);

	if (r < 0)
		return r;
	dfd = open_record_dir(state_dir, false, err);
	if (dfd < 0)
		return dfd;
	if (faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
		return -ENOENT;
	r = imc_json_read_file(dfd, name, RECORD_MAX_BYTES, &rec, err);
	if (r == 0)
		r = imc_json_get_string(rec, "dir", true, PATH_MAX - 1, name, &dir, err);
	if (r < 0)
		return imc_err_wrap(err, "container %s record", id);
	*ret_dir = strdup(dir);
	return *ret_dir ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int runtime_record_remove(const char *state_dir, const char *id, imc_error *err)
{
	char name[RUNTIME_ID_MAX + 8];
	_cleanup_close_ int dfd = -1;
	int r = record_name(id, name, err);

	if (r < 0)
		return r;
	dfd = open_record_dir(state_dir, false, err);
	if (dfd == -ENOENT)
		return 0;
	if (dfd < 0)
		return dfd;
	if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "container %s record", id);
	return 0;
}
