/* The pure parts of imc-runtime: a runc/crun command line read just far enough to find the
 * command, the bundle and the container id; the imcache annotations of config.json; the record
 * of which directory a container's attach uses; the real runtime's log format.
 *
 * Over 800 lines: small pure parts that share no state, each unit tested
 * (tests/unit/test_runtime.c) and fuzzed (tests/fuzz/fuzz_runtime.c). */
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* The commands the wrapper acts on (imc_runtime_main.c has a function for each verb). */
static const char *const verb_names[] = {
    [RUNTIME_CREATE] = "create",
    [RUNTIME_RUN] = "run",
    [RUNTIME_DELETE] = "delete",
};

static enum runtime_verb verb_of(const char *cmd)
{
	for (size_t v = 0; v < IMC_ARRAY_SIZE(verb_names); v++)
		if (verb_names[v] && strcmp(cmd, verb_names[v]) == 0)
			return (enum runtime_verb)v;
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
	free(c->root_path);
	free(c->data_dest);
	json_decref(c->spec);
	free(c->config_path);
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

static int rootfs_path(json_t *config, const char *bundle, char **ret, char **ret_raw,
		       imc_error *err)
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
	*ret_raw = strdup(path);
	return *ret && *ret_raw ? 0 : imc_err(err, ENOMEM, "out of memory");
}

int runtime_rootfs_open(const char *bundle, const char *root_path, int *ret_fd, imc_error *err)
{
	_cleanup_close_ int bfd = -1;
	bool relative = root_path[0] != '/';
	int fd;

	if (relative && (bfd = open(bundle, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
		return imc_err_sys(err, errno, "bundle %s", bundle);
	fd = imc_open_no_symlinks(relative ? bfd : AT_FDCWD, root_path, relative,
				  O_PATH | O_DIRECTORY);
	if (fd == -ELOOP)
		return imc_err(err, ELOOP,
			       "config.json root.path \"%.200s\": is or passes through a symlink "
			       "(refused: the cache would be mounted where it leads)",
			       root_path);
	if (fd == -EXDEV)
		return imc_err(err, EXDEV,
			       "config.json root.path \"%.200s\": leads out of bundle %s",
			       root_path, bundle);
	if (fd < 0)
		return imc_err_sys(err, -fd, "config.json root.path \"%.200s\"", root_path);
	*ret_fd = fd;
	return 0;
}

int runtime_data_dest_check(const char *dest, imc_error *err)
{
	size_t len = strlen(dest);

	if (dest[0] != '/' || len > RUNTIME_DATA_DEST_MAX || len < 2)
		return imc_err(err, EINVAL,
			       "annotation %s=\"%.80s\": want an absolute path, %d-%d bytes",
			       RUNTIME_ANNOTATION_DATA, dest, 2, RUNTIME_DATA_DEST_MAX);
	for (const char *p = dest + 1;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);

		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return imc_err(err, EINVAL,
				       "annotation %s=\"%.80s\": a \"\", \".\" or \"..\" component",
				       RUNTIME_ANNOTATION_DATA, dest);
		if (!slash)
			return 0;
		p = slash + 1;
	}
}

static int parse_data_dest(json_t *annotations, char **ret, imc_error *err)
{
	const char *s = NULL;
	int r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_DATA, false,
				    RUNTIME_DATA_DEST_MAX, "config.json annotations", &s, err);

	if (r < 0 || !s)
		return r;
	if ((r = runtime_data_dest_check(s, err)) < 0)
		return r;
	*ret = strdup(s);
	return *ret ? 0 : imc_err(err, ENOMEM, "out of memory");
}

static int parse_use_config(json_t *annotations, enum runtime_use_config *ret, imc_error *err)
{
	const char *s = NULL;
	int r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_USE_CONFIG, false, 16,
				    "config.json annotations", &s, err);

	if (r < 0 || !s || strcmp(s, "false") == 0)
		return r;
	if (strcmp(s, "true") == 0)
		*ret = RUNTIME_USE_CONFIG_FILL;
	else if (strcmp(s, "override") == 0)
		*ret = RUNTIME_USE_CONFIG_OVERRIDE;
	else
		return imc_err(err, EINVAL, "annotation %s=\"%s\": want true, false or override",
			       RUNTIME_ANNOTATION_USE_CONFIG, s);
	return 0;
}

static int parse_mode(json_t *annotations, bool *ret, imc_error *err)
{
	const char *s = NULL;
	int r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_MODE, false, 16,
				    "config.json annotations", &s, err);

	if (r < 0 || !s)
		return r;
	if (strcmp(s, "overlay") != 0 && strcmp(s, "clone") != 0)
		return imc_err(err, EINVAL, "annotation %s=\"%s\": want overlay or clone",
			       RUNTIME_ANNOTATION_MODE, s);
	*ret = strcmp(s, "clone") == 0;
	return 0;
}

static int parse_cache(json_t *config, json_t *annotations, const char *id, const char *bundle,
		       struct runtime_cache *c, imc_error *err)
{
	int r;

	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "annotation %s=\"%.80s\": not a cache id",
			       RUNTIME_ANNOTATION_CACHE_ID, id);
	if ((r = parse_image(annotations, &c->image, err)) < 0 ||
	    (r = parse_data_dest(annotations, &c->data_dest, err)) < 0 ||
	    (r = parse_use_config(annotations, &c->use_config, err)) < 0 ||
	    (r = parse_mode(annotations, &c->clone, err)) < 0 ||
	    (r = rootfs_path(config, bundle, &c->rootfs, &c->root_path, err)) < 0)
		return r;
	c->cache_id = strdup(id);
	if (!c->cache_id)
		return imc_err(err, ENOMEM, "out of memory");
	c->spec = json_incref(config);
	return 0;
}

/* The value of the first of keys that annotations has as a string, or NULL. */
static const char *annotation_of(json_t *annotations, const char *const *keys)
{
	for (; *keys; keys++) {
		const char *v = json_string_value(json_object_get(annotations, *keys));
		if (v)
			return v;
	}
	return NULL;
}

/* Does the cache apply to this container?  CRI runtimes pass pod annotations to the sandbox
 * (pause) container and to every container of the pod, sidecars included: the sandbox never
 * gets the cache, and with imcache.io/container only the container of that name does. */
static int container_selected(json_t *annotations, bool *ret, imc_error *err)
{
	static const char *const type_keys[] = {"io.kubernetes.cri.container-type",
						"io.kubernetes.cri-o.ContainerType", NULL};
	static const char *const name_keys[] = {"io.kubernetes.cri.container-name",
						"io.kubernetes.container.name", NULL};
	const char *want = NULL, *type = annotation_of(annotations, type_keys);
	const char *name = annotation_of(annotations, name_keys);
	int r = imc_json_get_string(annotations, RUNTIME_ANNOTATION_CONTAINER, false, 253,
				    "config.json annotations", &want, err);

	if (r < 0)
		return r;
	*ret = !(type && strcmp(type, "sandbox") == 0) && !(want && name && strcmp(want, name));
	return 0;
}

int runtime_cache_parse(const char *json, size_t len, const char *bundle, struct runtime_cache *ret,
			imc_error *err)
{
	bool selected = false;
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
	if (r == 0 && id)
		r = container_selected(annotations, &selected, err);
	if (r < 0 || !id || !selected) {
		*ret = c;
		return r;
	}
	r = parse_cache(config, annotations, id, bundle, &c, err);
	if (r < 0) {
		runtime_cache_free(&c);
		return r;
	}
	*ret = c;
	return 0;
}

/* Does the text hold the annotation's key, as JSON writers put it (as is, or with "\/")? */
static bool mentions_key(const char *buf, size_t len)
{
	static const char *const keys[] = {RUNTIME_ANNOTATION_CACHE_ID, "imcache.io\\/cache-id"};

	for (size_t i = 0; i < IMC_ARRAY_SIZE(keys); i++)
		if (memmem(buf, len, keys[i], strlen(keys[i])))
			return true;
	return false;
}

int runtime_config_mentions_cache(const char *path, bool *ret, imc_error *err)
{
	enum { CHUNK = 64 * 1024, KEEP = 64 }; /* KEEP: longer than any key, kept across reads */
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = malloc(CHUNK + KEEP);
	size_t have = 0;

	if (fd < 0)
		return errno == ENOENT ? -ENOENT : imc_err_sys(err, errno, "%s", path);
	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	for (;;) {
		ssize_t n = read(fd, buf + have, CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return imc_err_sys(err, errno, "%s", path);
		have += (size_t)n;
		if (mentions_key(buf, have) || n == 0) {
			*ret = n > 0;
			return 0;
		}
		if (have > KEEP) { /* the tail, where a key may start */
			memmove(buf, buf + have - KEEP, KEEP);
			have = KEEP;
		}
	}
}

int runtime_cache_load(const char *bundle, const char *config, struct runtime_cache *ret,
		       imc_error *err)
{
	_cleanup_free_ char *path =
	    config[0] == '/' ? strdup(config) : imc_path_join(bundle, config);
	_cleanup_free_ char *buf = NULL;
	bool mentions = false;
	size_t len = 0;
	int r;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	/* Without the annotation imc-runtime is not there: whatever the real runtime takes
	 * (duplicate keys, bytes that are not UTF-8, \u0000, any size) goes to it unread. */
	r = runtime_config_mentions_cache(path, &mentions, err);
	if (r < 0)
		return r == -ENOENT ? r : imc_err_wrap(err, "bundle %s", bundle);
	if (!mentions) {
		*ret = (struct runtime_cache){0};
		return 0;
	}
	r = imc_read_file(path, RUNTIME_CONFIG_MAX, &buf, &len, err);
	if (r < 0)
		return r == -ENOENT ? r : imc_err_wrap(err, "bundle %s", bundle);
	r = runtime_cache_parse(buf, len, bundle, ret, err);
	if (r < 0)
		return imc_err_wrap(err, "%s", path);
	ret->config_path = steal_pointer(&path);
	return 0;
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

/* ---- the image config -------------------------------------------------------------------- */

/* A numeric uid or gid: 1-10 digits, below 2^32 - 1 (which means "none"). */
static bool parse_id(const char *s, size_t len, uint32_t *ret)
{
	uint64_t v = 0;

	if (len == 0 || len > 10)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v >= UINT32_MAX)
		return false;
	*ret = (uint32_t)v;
	return true;
}

/* Find in an /etc/passwd or /etc/group text the entry whose first field is name (name != NULL)
 * or whose id (third field) is id; ret_id gets the third field, ret_gid (optional, passwd) the
 * fourth.  -ENOENT when there is none; malformed lines are skipped, as libc does. */
TESTABLE int userdb_find(const char *db, const char *name, uint32_t id, uint32_t *ret_id,
			 uint32_t *ret_gid)
{
	for (const char *line = db; *line;) {
		const char *end = strchrnul(line, '\n');
		const char *f[5] = {line};
		size_t nf = 1;
		uint32_t lid, lgid = 0;

		for (const char *p = line; p < end && nf < IMC_ARRAY_SIZE(f); p++)
			if (*p == ':')
				f[nf++] = p + 1;
		if (nf >= 4 && parse_id(f[2], (size_t)(f[3] - f[2] - 1), &lid) &&
		    (!ret_gid || (nf >= 5 && parse_id(f[3], (size_t)(f[4] - f[3] - 1), &lgid)))) {
			size_t name_len = (size_t)(f[1] - f[0] - 1);
			bool hit =
			    name ? strlen(name) == name_len && strncmp(line, name, name_len) == 0
				 : lid == id;
			if (hit) {
				*ret_id = lid;
				if (ret_gid)
					*ret_gid = lgid;
				return 0;
			}
		}
		line = *end ? end + 1 : end;
	}
	return -ENOENT;
}

/* The text of path (etc/passwd, etc/group) inside the rootfs at rootfd; -ENOENT if missing. */
static int read_userdb(int rootfd, const char *path, char **ret, imc_error *err)
{
	_cleanup_close_ int fd = imc_openat_in_root(rootfd, path, O_RDONLY | O_NOCTTY, 0);
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	size_t got = 0;

	if (fd == -ENOENT)
		return -ENOENT;
	if (fd < 0)
		return imc_err_sys(err, -fd, "image /%s", path);
	if (fstat(fd, &st) < 0)
		return imc_err_sys(err, errno, "image /%s", path);
	if (!S_ISREG(st.st_mode) || st.st_size > RUNTIME_USERDB_MAX)
		return imc_err(err, EINVAL, "image /%s: not a regular file of at most %d bytes",
			       path, RUNTIME_USERDB_MAX);
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return imc_err_sys(err, errno, "image /%s", path);
		if (n == 0)
			break;
		got += (size_t)n;
	}
	buf[got] = '\0';
	*ret = steal_pointer(&buf);
	return 0;
}

/* name (name_len bytes, or a number) in the rootfs's passwd (is_user) or group file. */
static int lookup_id(int rootfd, bool is_user, const char *name, size_t name_len, uint32_t *ret_id,
		     uint32_t *ret_gid, imc_error *err)
{
	const char *file = is_user ? "etc/passwd" : "etc/group";
	_cleanup_free_ char *n = strndup(name, name_len);
	_cleanup_free_ char *db = NULL;
	int r;

	if (!n)
		return imc_err(err, ENOMEM, "out of memory");
	if (rootfd < 0)
		return imc_err(err, EINVAL, "image user %s \"%s\": names need the image's /%s",
			       is_user ? "name" : "group", n, file);
	r = read_userdb(rootfd, file, &db, err);
	if (r == -ENOENT)
		return imc_err(err, ENOENT, "image user %s \"%s\": the image has no /%s",
			       is_user ? "name" : "group", n, file);
	if (r < 0)
		return r;
	if (userdb_find(db, n, 0, ret_id, is_user ? ret_gid : NULL) < 0)
		return imc_err(err, ENOENT, "image user %s \"%s\": not in the image's /%s",
			       is_user ? "name" : "group", n, file);
	return 0;
}

int runtime_user_resolve(const char *user, int rootfd, uint32_t *ret_uid, uint32_t *ret_gid,
			 imc_error *err)
{
	const char *colon = strchr(user, ':');
	size_t ulen = colon ? (size_t)(colon - user) : strlen(user);
	uint32_t uid, gid = 0;
	int r;

	if (ulen == 0 || ulen > 256 || (colon && (colon[1] == '\0' || strlen(colon + 1) > 256)))
		return imc_err(err, EINVAL, "image user \"%.80s\": want user[:group]", user);
	if (parse_id(user, ulen, &uid)) {
		/* A bare uid takes its passwd entry's group, if the image has one. */
		_cleanup_free_ char *db = NULL;
		if (!colon && rootfd >= 0 && read_userdb(rootfd, "etc/passwd", &db, NULL) == 0) {
			uint32_t found;
			if (userdb_find(db, NULL, uid, &found, &gid) < 0)
				gid = 0;
		}
	} else if ((r = lookup_id(rootfd, true, user, ulen, &uid, &gid, err)) < 0) {
		return r;
	}
	if (colon && !parse_id(colon + 1, strlen(colon + 1), &gid) &&
	    (r = lookup_id(rootfd, false, colon + 1, strlen(colon + 1), &gid, NULL, err)) < 0)
		return r;
	*ret_uid = uid;
	*ret_gid = gid;
	return 0;
}

/* image_config.key: an array of strings (missing or null: empty), borrowed. */
static int image_list(json_t *cfg, const char *key, json_t **ret, imc_error *err)
{
	json_t *arr = NULL;
	int r;

	if (json_is_null(json_object_get(cfg, key))) {
		*ret = NULL;
		return 0;
	}
	r = imc_json_get_array(cfg, key, false, RUNTIME_IMAGE_LIST_MAX, "image config", &arr, err);
	if (r < 0)
		return r;
	for (size_t i = 0; arr && i < json_array_size(arr); i++) {
		json_t *v = json_array_get(arr, i);
		if (!json_is_string(v) || json_string_length(v) > RUNTIME_IMAGE_STRING_MAX ||
		    strlen(json_string_value(v)) != json_string_length(v))
			return imc_err(err, EINVAL,
				       "image config.%s[%zu]: want a string of at most %d bytes",
				       key, i, RUNTIME_IMAGE_STRING_MAX);
	}
	*ret = arr;
	return 0;
}

static int set_args(json_t *process, json_t *cfg, enum runtime_use_config mode, imc_error *err)
{
	json_t *entrypoint = NULL, *cmd = NULL, *spec_args = json_object_get(process, "args");
	_cleanup_json_ json_t *args = json_array();
	int r;

	if ((r = image_list(cfg, "entrypoint", &entrypoint, err)) < 0 ||
	    (r = image_list(cfg, "cmd", &cmd, err)) < 0)
		return r;
	if (!args || (entrypoint && json_array_extend(args, entrypoint) < 0) ||
	    (cmd && json_array_extend(args, cmd) < 0))
		return imc_err(err, ENOMEM, "out of memory");
	if (spec_args && !json_is_array(spec_args))
		return imc_err(err, EINVAL, "config.json process.args: not an array");
	if (json_array_size(spec_args) > 0 &&
	    (mode == RUNTIME_USE_CONFIG_FILL || json_array_size(args) == 0))
		return 0;
	if (json_array_size(args) == 0)
		return imc_err(
		    err, EINVAL,
		    "config.json has no process.args and the image no entrypoint or cmd");
	return json_object_set(process, "args", args) < 0 ? imc_err(err, ENOMEM, "out of memory")
							  : 0;
}

/* Index of the entry of env named like entry ("NAME=..." or "NAME"), or -1. */
static ssize_t env_find(json_t *env, const char *entry)
{
	size_t len = strcspn(entry, "=");

	for (size_t i = 0; i < json_array_size(env); i++) {
		const char *e = json_string_value(json_array_get(env, i));
		if (e && strncmp(e, entry, len) == 0 && (e[len] == '=' || e[len] == '\0'))
			return (ssize_t)i;
	}
	return -1;
}

static int set_env(json_t *process, json_t *cfg, enum runtime_use_config mode, imc_error *err)
{
	json_t *image_env = NULL, *env = json_object_get(process, "env");
	int r = image_list(cfg, "env", &image_env, err);

	if (r < 0 || json_array_size(image_env) == 0)
		return r;
	if (!env) {
		env = json_array();
		if (!env || json_object_set_new(process, "env", env) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	if (!json_is_array(env) || json_array_size(env) > RUNTIME_IMAGE_LIST_MAX)
		return imc_err(err, EINVAL, "config.json process.env: not an array of at most %d",
			       RUNTIME_IMAGE_LIST_MAX);
	for (size_t i = 0; i < json_array_size(image_env); i++) {
		json_t *e = json_array_get(image_env, i);
		ssize_t at = env_find(env, json_string_value(e));

		if (at < 0)
			r = json_array_append(env, e);
		else if (mode == RUNTIME_USE_CONFIG_OVERRIDE)
			r = json_array_set(env, (size_t)at, e);
		if (r < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int set_cwd(json_t *process, json_t *cfg, enum runtime_use_config mode, imc_error *err)
{
	const char *dir = "", *cwd = "";
	int r = imc_json_get_string(cfg, "workingDir", false, RUNTIME_IMAGE_STRING_MAX,
				    "image config", &dir, err);

	if (r < 0 || dir[0] == '\0')
		return r;
	if (dir[0] != '/')
		return imc_err(err, EINVAL, "image config.workingDir \"%.80s\": not absolute", dir);
	r = imc_json_get_string(process, "cwd", false, PATH_MAX, "config.json process", &cwd, err);
	if (r < 0)
		return r;
	if (mode == RUNTIME_USE_CONFIG_FILL && cwd[0] != '\0' && strcmp(cwd, "/") != 0)
		return 0;
	return json_object_set_new(process, "cwd", json_string(dir)) < 0
		   ? imc_err(err, ENOMEM, "out of memory")
		   : 0;
}

static int set_user(json_t *process, json_t *cfg, enum runtime_use_config mode, int rootfd,
		    imc_error *err)
{
	const char *user = "";
	json_t *u = NULL;
	int64_t uid = 0, gid = 0;
	uint32_t new_uid, new_gid;
	int r = imc_json_get_string(cfg, "user", false, 1024, "image config", &user, err);

	if (r < 0 || user[0] == '\0')
		return r;
	if ((r = imc_json_get_object(process, "user", false, "config.json process", &u, err)) < 0)
		return r;
	if (u && ((r = imc_json_get_int(u, "uid", false, 0, UINT32_MAX, "config.json process.user",
					&uid, err)) < 0 ||
		  (r = imc_json_get_int(u, "gid", false, 0, UINT32_MAX, "config.json process.user",
					&gid, err)) < 0))
		return r;
	if (mode == RUNTIME_USE_CONFIG_FILL && (uid != 0 || gid != 0))
		return 0;
	if ((r = runtime_user_resolve(user, rootfd, &new_uid, &new_gid, err)) < 0)
		return r;
	if (!u) {
		u = json_object();
		if (!u || json_object_set_new(process, "user", u) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	if (json_object_set_new(u, "uid", json_integer(new_uid)) < 0 ||
	    json_object_set_new(u, "gid", json_integer(new_gid)) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

int runtime_spec_apply_image(json_t *spec, json_t *image_config, enum runtime_use_config mode,
			     int rootfd, imc_error *err)
{
	json_t *process = NULL;
	int r;

	if (mode == RUNTIME_USE_CONFIG_NO)
		return 0;
	if (!json_is_object(image_config))
		return imc_err(err, EINVAL, "image config: not an object");
	r = imc_json_get_object(spec, "process", true, "config.json", &process, err);
	if (r == 0)
		r = set_args(process, image_config, mode, err);
	if (r == 0)
		r = set_env(process, image_config, mode, err);
	if (r == 0)
		r = set_cwd(process, image_config, mode, err);
	if (r == 0)
		r = set_user(process, image_config, mode, rootfd, err);
	return r < 0 ? imc_err_wrap(err, "%s", RUNTIME_ANNOTATION_USE_CONFIG) : 0;
}

int runtime_spec_write(const struct runtime_cache *c, imc_error *err)
{
	const char *slash = c->config_path ? strrchr(c->config_path, '/') : NULL;
	_cleanup_free_ char *dir = NULL;
	_cleanup_close_ int dfd = -1;

	if (!slash || !c->spec)
		return imc_err(err, EINVAL, "config.json: no path to write it to");
	dir = slash == c->config_path ? strdup("/")
				      : strndup(c->config_path, (size_t)(slash - c->config_path));
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return imc_err_sys(err, errno, "%s", dir);
	return imc_json_write_atomic(dfd, slash + 1, c->spec, err) < 0
		   ? imc_err_wrap(err, "rewrite %s", c->config_path)
		   : 0;
}
