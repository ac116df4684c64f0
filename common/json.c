#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "imc.h"

static int write_replace(int dirfd, const char *name, json_t *j, bool durable, imc_error *err)
{
	char tmp[PATH_MAX];
	_cleanup_free_ char *buf = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	_cleanup_close_ int fd = -1;
	int r;

	if (!buf)
		return imc_err(err, ENOMEM, "%s: cannot serialise JSON", name);
	if ((size_t)snprintf(tmp, sizeof(tmp), ".%s.tmp.%d", name, (int)getpid()) >= sizeof(tmp))
		return imc_err(err, ENAMETOOLONG, "%s: name too long", name);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s: create", tmp);
	r = imc_write_all(fd, buf, strlen(buf));
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, tmp, 0);
		return imc_err_sys(err, -r, "%s: write", name);
	}
	if (durable && fsync(dirfd) < 0)
		return imc_err_sys(err, errno, "%s: fsync directory", name);
	return 0;
}

int imc_json_write_atomic(int dirfd, const char *name, json_t *j, imc_error *err)
{
	return write_replace(dirfd, name, j, true, err);
}

int imc_json_write_replace(int dirfd, const char *name, json_t *j, imc_error *err)
{
	return write_replace(dirfd, name, j, false, err);
}

int imc_json_read_file(int dirfd, const char *name, size_t max_size, json_t **ret, imc_error *err)
{
	_cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	json_t *j;
	size_t len = 0;

	if (fd < 0)
		return imc_err_sys(err, errno, "%s", name);
	if (fstat(fd, &st) < 0)
		return imc_err_sys(err, errno, "%s", name);
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max_size)
		return imc_err(err, EFBIG, "%s: not a regular file of at most %zu bytes", name,
			       max_size);
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return imc_err(err, ENOMEM, "%s: out of memory", name);
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return imc_err_sys(err, errno, "%s: read", name);
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	j = NULL;
	if (imc_json_parse_object(buf, len, &j, err) < 0)
		return imc_err_wrap(err, "%s", name);
	*ret = j;
	return 0;
}

int imc_json_parse_object(const char *buf, size_t len, json_t **ret, imc_error *err)
{
	json_error_t jerr;
	json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);

	if (!j)
		return imc_err(err, EINVAL, "malformed JSON at line %d column %d: %s", jerr.line,
			       jerr.column, jerr.text);
	if (!json_is_object(j)) {
		json_decref(j);
		return imc_err(err, EINVAL, "JSON: want an object at the top level");
	}
	*ret = j;
	return 0;
}

static const char *dot(const char *ctx)
{
	return ctx && *ctx ? "." : "";
}

int imc_json_check_fields(json_t *obj, const char *const *allowed, const char *ctx, imc_error *err)
{
	const char *key;
	json_t *v = NULL;

	json_object_foreach(obj, key, v)
	{
		bool ok = false;
		for (const char *const *a = allowed; *a; a++)
			if (strcmp(*a, key) == 0)
				ok = true;
		if (!ok)
			return imc_err(err, EINVAL, "%s%s%.64s: unknown field", ctx ? ctx : "",
				       dot(ctx), key);
	}
	return 0;
}

static int get_field(json_t *obj, const char *key, bool required, const char *ctx, json_t **ret,
		     imc_error *err)
{
	json_t *v = json_object_get(obj, key);

	if (!v || json_is_null(v)) {
		if (required)
			return imc_err(err, EINVAL, "%s%s%s: required", ctx ? ctx : "", dot(ctx),
				       key);
		*ret = NULL;
		return 0;
	}
	*ret = v;
	return 1;
}

#define WRONG_TYPE(what)                                                                           \
	imc_err(err, EINVAL, "%s%s%s: want %s", ctx ? ctx : "", dot(ctx), key, what)

int imc_json_get_string(json_t *obj, const char *key, bool required, size_t max_len,
			const char *ctx, const char **ret, imc_error *err)
{
	json_t *v = NULL;
	int r = get_field(obj, key, required, ctx, &v, err);

	if (r <= 0)
		return r;
	if (!json_is_string(v))
		return WRONG_TYPE("a string");
	if (json_string_length(v) > max_len)
		return imc_err(err, EINVAL, "%s%s%s: longer than %zu bytes", ctx ? ctx : "",
			       dot(ctx), key, max_len);
	if (strlen(json_string_value(v)) != json_string_length(v))
		return imc_err(err, EINVAL, "%s%s%s: contains a NUL byte", ctx ? ctx : "", dot(ctx),
			       key);
	*ret = json_string_value(v);
	return 0;
}

int imc_json_get_int(json_t *obj, const char *key, bool required, int64_t min, int64_t max,
		     const char *ctx, int64_t *ret, imc_error *err)
{
	json_t *v = NULL;
	int r = get_field(obj, key, required, ctx, &v, err);

	if (r <= 0)
		return r;
	if (!json_is_integer(v))
		return WRONG_TYPE("an integer");
	if (json_integer_value(v) < min || json_integer_value(v) > max)
		return imc_err(err, ERANGE, "%s%s%s: must be between %lld and %lld", ctx ? ctx : "",
			       dot(ctx), key, (long long)min, (long long)max);
	*ret = json_integer_value(v);
	return 0;
}

int imc_json_get_bool(json_t *obj, const char *key, bool required, const char *ctx, bool *ret,
		      imc_error *err)
{
	json_t *v = NULL;
	int r = get_field(obj, key, required, ctx, &v, err);

	if (r <= 0)
		return r;
	if (!json_is_boolean(v))
		return WRONG_TYPE("a boolean");
	*ret = json_is_true(v);
	return 0;
}

int imc_json_get_array(json_t *obj, const char *key, bool required, size_t max_items,
		       const char *ctx, json_t **ret, imc_error *err)
{
	json_t *v = NULL;
	int r = get_field(obj, key, required, ctx, &v, err);

	if (r <= 0)
		return r;
	if (!json_is_array(v))
		return WRONG_TYPE("an array");
	if (json_array_size(v) > max_items)
		return imc_err(err, EINVAL, "%s%s%s: at most %zu items", ctx ? ctx : "", dot(ctx),
			       key, max_items);
	*ret = v;
	return 0;
}

int imc_json_get_object(json_t *obj, const char *key, bool required, const char *ctx, json_t **ret,
			imc_error *err)
{
	json_t *v = NULL;
	int r = get_field(obj, key, required, ctx, &v, err);

	if (r <= 0)
		return r;
	if (!json_is_object(v))
		return WRONG_TYPE("an object");
	*ret = v;
	return 0;
}

void imc_repair_report(json_t *repairs, const char *fmt, ...)
{
	char msg[IMC_ERR_MSG + 256];
	va_list ap;

	if (!repairs)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_array_append_new(repairs, json_string(msg));
}
