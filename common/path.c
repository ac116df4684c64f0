#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "imc.h"

bool imc_name_valid(const char *s, size_t max_len)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > max_len || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

bool imc_cache_id_valid(const char *id)
{
	const size_t plen = strlen(IMC_CACHE_ID_PREFIX);

	if (!id || strncmp(id, IMC_CACHE_ID_PREFIX, plen) != 0 || strlen(id) != plen + 16)
		return false;
	for (const char *p = id + plen; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

char *imc_path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (!p)
		return NULL;
	memcpy(p, a, la);
	if (la > 0 && a[la - 1] != '/')
		p[la++] = '/';
	memcpy(p + la, b, lb + 1);
	return p;
}

int imc_mkdir_p(const char *path, mode_t mode, imc_error *err)
{
	_cleanup_free_ char *p = strdup(path);

	if (!p)
		return imc_err(err, ENOMEM, "out of memory");
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST)
			return imc_err_sys(err, errno, "mkdir %s", p);
		*s = '/';
	}
	if (mkdir(p, mode) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", p);
	return 0;
}

int imc_openat_in_root(int rootfd, const char *path, int flags, mode_t mode)
{
	struct open_how how = {
	    .flags = (uint64_t)(flags | O_CLOEXEC),
	    .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
	    .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
	};
	long fd;

	do
		fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
	while (fd < 0 && (errno == EAGAIN || errno == EINTR));
	return fd < 0 ? -errno : (int)fd;
}

int imc_open_no_symlinks(int dirfd, const char *path, bool beneath, int flags)
{
	struct open_how how = {
	    .flags = (uint64_t)(flags | O_CLOEXEC),
	    .resolve =
		RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (beneath ? RESOLVE_BENEATH : 0),
	};
	long fd;

	do
		fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
	while (fd < 0 && (errno == EAGAIN || errno == EINTR));
	return fd < 0 ? -errno : (int)fd;
}

static int rm_rf_children(int dfd, imc_error *err)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int r = 0;

	if (!d) {
		close(dfd);
		return imc_err_sys(err, errno, "opendir");
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		r = imc_rm_rf_at(dirfd(d), de->d_name, err);
		if (r < 0)
			break;
	}
	closedir(d);
	return r;
}

int imc_rm_rf_at(int dirfd, const char *name, imc_error *err)
{
	struct stat st;

	/* "." and ".." would climb out of what the caller meant to remove; "a/b" would follow
	 * symlinks on the way; only an absolute path (no dirfd) may have slashes. */
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
	    (name[0] != '/' && strchr(name, '/')))
		return imc_err(err, EINVAL, "remove \"%.80s\": not a single name", name);

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : imc_err_sys(err, errno, "stat %s", name);
	if (S_ISDIR(st.st_mode)) {
		int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return imc_err_sys(err, errno, "open %s", name);
		if (rm_rf_children(fd, err) < 0)
			return imc_err_wrap(err, "%s", name);
		if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
			return imc_err_sys(err, errno, "rmdir %s", name);
		return 0;
	}
	if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "unlink %s", name);
	return 0;
}

int imc_read_file(const char *path, size_t max, char **ret, size_t *ret_len, imc_error *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	size_t len = 0, cap = 0;

	if (fd < 0)
		return imc_err_sys(err, errno, "%s", path);
	for (;;) {
		if (len == cap) {
			if (cap > max)
				return imc_err(err, EFBIG, "%s: larger than %zu bytes", path, max);
			cap = cap ? cap * 2 : 4096;
			char *nb = realloc(buf, cap + 1);
			if (!nb)
				return imc_err(err, ENOMEM, "%s: out of memory", path);
			buf = nb;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return imc_err_sys(err, errno, "%s: read", path);
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > max)
		return imc_err(err, EFBIG, "%s: larger than %zu bytes", path, max);
	buf[len] = '\0';
	*ret = steal_pointer(&buf);
	if (ret_len)
		*ret_len = len;
	return 0;
}

int imc_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
