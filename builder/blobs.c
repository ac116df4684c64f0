/* The blob store, <state>/blobs/sha256/<hex>: what crashes leave in it. */
#include <fcntl.h>
#include <string.h>

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
