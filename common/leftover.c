/* Files that a process writes under a temporary name and renames when done (blob downloads,
 * compactions, chunk and index writes) are held with an exclusive flock while they are written:
 * one that nobody holds belongs to a process that died, and whoever finds it may remove it. */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "imc.h"

int imc_hold_file(int fd)
{
	return flock(fd, LOCK_EX | LOCK_NB) < 0 ? -errno : 0;
}

int imc_remove_unheld_at(int dirfd, const char *name, uint64_t *ret_bytes)
{
	_cleanup_close_ int fd =
	    openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? 0 : -errno; /* its writer is alive */
	if (unlinkat(dirfd, name, 0) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (ret_bytes)
		*ret_bytes += (uint64_t)st.st_blocks * 512;
	return 1;
}

void imc_stop_point(const char *name)
{
#ifdef IMC_TESTING
	const char *at = getenv("IMC_STOP_AT");

	if (at && strcmp(at, name) == 0)
		raise(SIGSTOP);
#else
	(void)name;
#endif
}
