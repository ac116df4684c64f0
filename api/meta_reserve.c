/* Room kept for the metadata's last words.  caches/ holds API_META_RESERVE_SLOTS files
 * (.reserve.<n>) of API_META_RESERVE_SLOT bytes of written zeros.  When the filesystem is full and
 * a status change cannot be written the ordinary way (a new temporary file needs new blocks), it
 * is written into a slot instead: overwriting blocks a file already has, shrinking it and renaming
 * it over the cache's file need no new block on ext4 or XFS, so the change reaches the disk
 * whatever else filled it meanwhile.  The sweeper makes the slots again once there is room. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "api.h"

#define SLOT_NAME   ".reserve.%u"
#define SLOT_NEW    ".reserve.new.tmp.%u" /* api_caches_load_all removes a leftover (".tmp.") */
#define ZEROS_CHUNK (64u << 10)

static void slot_name(unsigned i, char buf[32])
{
	snprintf(buf, 32, SLOT_NAME, i);
}

static bool slot_ready(int dirfd, unsigned i)
{
	char name[32];
	struct stat st;

	slot_name(i, name);
	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	       st.st_size == API_META_RESERVE_SLOT &&
	       (uint64_t)st.st_blocks * 512 >= API_META_RESERVE_SLOT;
}

/* A slot written out in full (zeros, not fallocate: an unwritten extent would need a metadata
 * change when written, a written one does not). */
static int slot_make(int dirfd, unsigned i)
{
	static const char zeros[ZEROS_CHUNK];
	char tmp[48], name[32];
	_cleanup_close_ int fd = -1;
	int r = 0;

	slot_name(i, name);
	snprintf(tmp, sizeof(tmp), SLOT_NEW, i);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	for (size_t done = 0; r == 0 && done < API_META_RESERVE_SLOT; done += ZEROS_CHUNK)
		r = imc_write_all(fd, zeros, ZEROS_CHUNK);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(dirfd, tmp, 0);
	return r;
}

int api_meta_reserve_fill(int dirfd, imc_error *err)
{
	int r = 0;

	for (unsigned i = 0; i < API_META_RESERVE_SLOTS && r == 0; i++)
		if (!slot_ready(dirfd, i))
			r = slot_make(dirfd, i);
	if (r == 0 && fsync(dirfd) < 0)
		r = -errno;
	return r < 0 ? imc_err_sys(err, -r, "caches/.reserve: %u files of %u bytes",
				   API_META_RESERVE_SLOTS, API_META_RESERVE_SLOT)
		     : 0;
}

/* Overwrite slot i with buf and rename it to name. */
static int slot_take(int dirfd, unsigned i, const char *name, const char *buf, size_t len)
{
	char slot[32];
	_cleanup_close_ int fd = -1;
	int r;

	slot_name(i, slot);
	fd = openat(dirfd, slot, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	r = imc_write_all(fd, buf, len); /* from offset 0: over blocks the slot has */
	if (r == 0 && ftruncate(fd, (off_t)len) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, slot, dirfd, name) < 0)
		r = -errno;
	if (r == 0 && fsync(dirfd) < 0)
		r = -errno;
	return r;
}

int api_meta_reserve_write(int dirfd, const char *name, json_t *j, imc_error *err)
{
	_cleanup_free_ char *buf = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	size_t len = buf ? strlen(buf) : 0;
	int r = -ENOENT;

	if (!buf)
		return imc_err(err, ENOMEM, "%s: cannot serialise JSON", name);
	if (len > API_META_RESERVE_SLOT)
		return imc_err(err, ENOSPC, "%s: %zu bytes, more than a reserve file holds", name,
			       len);
	for (unsigned i = 0; i < API_META_RESERVE_SLOTS && r == -ENOENT; i++)
		r = slot_take(dirfd, i, name, buf, len);
	if (r == -ENOENT)
		return imc_err(err, ENOSPC, "%s: no reserve file left", name);
	return r < 0 ? imc_err_sys(err, -r, "%s: write through a reserve file", name) : 0;
}
