/* The blob store, <state>/blobs/sha256/<hex>: a download cache of verified layers.  What crashes
 * leave in it goes at start; what no cache, base or running build needs goes after each build
 * and each removal, and the least recently used go when the store is over its size cap. */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include "builder.h"

#define BLOB_TMP_PREFIX ".tmp-" /* a download in progress (builder/registry.c) */

int builder_blobs_remove_partial(const char *blob_dir, size_t *ret_n, uint64_t *ret_bytes,
				 imc_error *err)
{
	_cleanup_free_ char *dir = imc_path_join(blob_dir, "sha256");
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	*ret_n = 0;
	*ret_bytes = 0;
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	if (!d) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return e == ENOENT ? 0 : imc_err_sys(err, e, "%s", dir);
	}
	while ((de = readdir(d)))
		if (strncmp(de->d_name, BLOB_TMP_PREFIX, strlen(BLOB_TMP_PREFIX)) == 0 &&
		    imc_remove_unheld_at(dirfd(d), de->d_name, ret_bytes) == 1)
			(*ret_n)++;
	return 0;
}

/* ---- pins: the blobs running builds need --------------------------------------------------
 * A build pins the layers of its images once they are resolved, before it looks for them in
 * the store, and unpins them when it ends; the collector never removes a pinned blob, and it
 * decides and removes under the same lock, so a blob a build has just found present stays. */

struct pin {
	char hex[IMC_SHA256_HEX_LEN + 1];
	unsigned count;
};

static pthread_mutex_t pins_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pin *pins;
static size_t n_pins, cap_pins;

static struct pin *pin_find_locked(const char *hex)
{
	for (size_t i = 0; i < n_pins; i++)
		if (strcmp(pins[i].hex, hex) == 0)
			return &pins[i];
	return NULL;
}

int builder_blobs_pin(const char *blob_dir, const char *digest, imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1], path[PATH_MAX];
	struct pin *p;
	int r = imc_digest_parse(digest, hex, err);

	if (r < 0)
		return r;
	pthread_mutex_lock(&pins_lock);
	p = pin_find_locked(hex);
	if (!p && n_pins == cap_pins) {
		size_t cap = cap_pins ? cap_pins * 2 : 64;
		struct pin *grown = realloc(pins, cap * sizeof(*grown));
		if (grown) {
			pins = grown;
			cap_pins = cap;
		}
	}
	if (!p && n_pins < cap_pins) {
		p = &pins[n_pins++];
		memcpy(p->hex, hex, sizeof(p->hex));
		p->count = 0;
	}
	if (p)
		p->count++;
	pthread_mutex_unlock(&pins_lock);
	if (!p)
		return imc_err(err, ENOMEM, "out of memory");
	/* Its last use, for the size cap's least-recently-used order. */
	if ((size_t)snprintf(path, sizeof(path), "%s/sha256/%s", blob_dir, hex) < sizeof(path))
		utimensat(AT_FDCWD, path, NULL, AT_SYMLINK_NOFOLLOW);
	return 0;
}

void builder_blobs_unpin(const char *digest)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	struct pin *p;

	if (imc_digest_parse(digest, hex, NULL) < 0)
		return;
	pthread_mutex_lock(&pins_lock);
	p = pin_find_locked(hex);
	if (p && --p->count == 0)
		*p = pins[--n_pins];
	if (n_pins == 0) {
		free(pins);
		pins = NULL;
		cap_pins = 0;
	}
	pthread_mutex_unlock(&pins_lock);
}

/* ---- the collector --------------------------------------------------------------------------- */

struct blob_entry {
	char hex[IMC_SHA256_HEX_LEN + 1];
	uint64_t bytes; /* allocated */
	struct timespec mtime;
	bool keep; /* a cache or base needs it */
};

static bool is_blob_name(const char *name)
{
	size_t n = strlen(name);

	if (n != IMC_SHA256_HEX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return false;
	return true;
}

static int cmp_hex(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int cmp_oldest_first(const void *a, const void *b)
{
	const struct blob_entry *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return strcmp(x->hex, y->hex);
}

/* The hex digests of keep's strings, sorted (a malloc'ed array of n entries). */
static int keep_set(json_t *keep, char (**ret)[IMC_SHA256_HEX_LEN + 1], size_t *ret_n)
{
	size_t n = json_array_size(keep), k = 0, i;
	char(*set)[IMC_SHA256_HEX_LEN + 1] = calloc(n + 1, sizeof(*set));
	json_t *v;

	if (!set)
		return -ENOMEM;
	json_array_foreach(keep, i, v)
	{
		const char *d = json_string_value(v);
		if (d && imc_digest_parse(d, set[k], NULL) == 0)
			k++;
	}
	qsort(set, k, sizeof(*set), cmp_hex);
	*ret = set;
	*ret_n = k;
	return 0;
}

/* Every blob in the directory, with whether keep names it. */
static int list_blobs(DIR *d, char (*set)[IMC_SHA256_HEX_LEN + 1], size_t n_set,
		      struct blob_entry **ret, size_t *ret_n)
{
	struct blob_entry *list = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;

	while ((de = readdir(d))) {
		struct stat st;

		if (!is_blob_name(de->d_name) ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			struct blob_entry *grown = realloc(list, cap * sizeof(*grown));
			if (!grown) {
				free(list);
				return -ENOMEM;
			}
			list = grown;
		}
		list[n] =
		    (struct blob_entry){.bytes = (uint64_t)st.st_blocks * 512, .mtime = st.st_mtim};
		memcpy(list[n].hex, de->d_name, sizeof(list[n].hex));
		list[n].keep = n_set && bsearch(de->d_name, set, n_set, sizeof(*set), cmp_hex);
		n++;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

/* Remove one blob unless a build pins it (decided and done under the pins' lock). */
static bool remove_unpinned(int dfd, const struct blob_entry *b)
{
	bool removed = false;

	pthread_mutex_lock(&pins_lock);
	if (!pin_find_locked(b->hex))
		removed = unlinkat(dfd, b->hex, 0) == 0;
	pthread_mutex_unlock(&pins_lock);
	return removed;
}

/* Over the cap: the least recently used go, pinned ones excepted, until what is left fits. */
static uint64_t evict_lru(int dfd, struct blob_entry *list, size_t n, uint64_t total,
			  uint64_t max_bytes, struct builder_blobs_gc *ret)
{
	qsort(list, n, sizeof(*list), cmp_oldest_first);
	for (size_t i = 0; i < n && total > max_bytes; i++) {
		if (list[i].bytes == 0 || !remove_unpinned(dfd, &list[i]))
			continue;
		ret->removed++;
		ret->evicted++;
		ret->freed += list[i].bytes;
		total -= list[i].bytes;
	}
	return total;
}

static void collect(int dfd, struct blob_entry *list, size_t n, uint64_t max_bytes,
		    struct builder_blobs_gc *ret)
{
	uint64_t total = 0;

	/* What nothing needs goes first. */
	for (size_t i = 0; i < n; i++) {
		if (!list[i].keep && remove_unpinned(dfd, &list[i])) {
			ret->removed++;
			ret->freed += list[i].bytes;
			list[i].bytes = 0;
			continue;
		}
		total += list[i].bytes;
	}
	if (max_bytes && total > max_bytes)
		total = evict_lru(dfd, list, n, total, max_bytes, ret);
	ret->kept_bytes = total;
}

int builder_blobs_gc(const char *blob_dir, json_t *keep, uint64_t max_bytes,
		     struct builder_blobs_gc *ret, imc_error *err)
{
	_cleanup_free_ char *dir = imc_path_join(blob_dir, "sha256");
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	_cleanup_dir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	_cleanup_free_ char(*set)[IMC_SHA256_HEX_LEN + 1] = NULL;
	_cleanup_free_ struct blob_entry *list = NULL;
	size_t n_set = 0, n = 0;

	*ret = (struct builder_blobs_gc){0};
	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	if (!d) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return e == ENOENT ? 0 : imc_err_sys(err, e, "%s", dir);
	}
	if (keep_set(keep, &set, &n_set) < 0 || list_blobs(d, set, n_set, &list, &n) < 0)
		return imc_err(err, ENOMEM, "out of memory");
	collect(dirfd(d), list, n, max_bytes, ret);
	return 0;
}
