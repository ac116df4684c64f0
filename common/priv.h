/* The privileged funnel: every loop, mount, clone and mkfs action goes through here, so it can be
 * audited in one place, counted by tests and, in test builds only (IMC_TESTING: SAN=1), fault-
 * injected (IMC_FAULT=op:nth:errno, e.g. "mount:1:EIO" fails the first mount with EIO; for faults
 * that cannot be caused for real). */
#ifndef IMC_PRIV_H
#define IMC_PRIV_H

#include <stdbool.h>
#include <stdint.h>

#include "imc.h"

enum imc_priv_op {
	IMC_PRIV_FICLONE,
	IMC_PRIV_LOOP_ATTACH,
	IMC_PRIV_LOOP_DETACH,
	IMC_PRIV_MOUNT,
	IMC_PRIV_UMOUNT,
	IMC_PRIV_MKFS,
	IMC_PRIV_RESIZE,
	IMC_PRIV_TRIM,
	IMC_PRIV__MAX,
};

/* How many times op was entered in this process. */
unsigned long imc_priv_count(enum imc_priv_op op);
#ifdef IMC_TESTING
/* Test builds only.  Parse IMC_FAULT from the environment ("op:nth:ERRNAME[,...]"); bad values
 * are errors. */
int imc_priv_inject_from_env(imc_error *err);
#else
/* Release builds take no faults from anywhere. */
static inline int imc_priv_inject_from_env(imc_error *err)
{
	(void)err;
	return 0;
}
#endif

/* FICLONE dst_fd from src_fd (whole file). */
int imc_priv_ficlone(int dst_fd, int src_fd, imc_error *err);

#define IMC_LOOP_PATH_MAX 32
struct imc_loop_opts {
	bool read_only;
	bool autoclear;	     /* the device goes away with its last opener/mount */
	bool direct_io;	     /* bypass the page cache of the backing file (falls back if refused) */
	uint32_t block_size; /* 0 = kernel default */
};
/* Bind backing_fd to a free loop device (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retrying at once
 * when another process wins the race).  Returns the device path and an open fd of it. */
int imc_priv_loop_attach(int backing_fd, const struct imc_loop_opts *opts,
			 char ret_path[IMC_LOOP_PATH_MAX], int *ret_fd, imc_error *err);
/* LOOP_CLR_FD on dev. */
int imc_priv_loop_detach(const char *dev, imc_error *err);
/* The backing file's (dev, ino) of a loop device; -ENXIO when unbound. */
int imc_priv_loop_backing(const char *dev, uint64_t *ret_dev, uint64_t *ret_ino, imc_error *err);

/* Mount fstype from source (a block device) at target with the new mount API (fsopen/fsmount/
 * move_mount).  options is a comma-separated fsconfig list ("noinit_itable,errors=remount-ro"). */
int imc_priv_mount_fs(const char *fstype, const char *source, const char *options, bool read_only,
		      const char *target, imc_error *err);
/* A detached mount (fsopen/fsconfig/fsmount) of fstype from source, visible nowhere until a tree
 * of it is moved somewhere; *ret_mfd is its O_PATH descriptor. */
int imc_priv_fsmount(const char *fstype, const char *source, const char *options, bool read_only,
		     int *ret_mfd, imc_error *err);
/* move_mount the detached tree from_fd onto to_dirfd/to_path (to_path "" = to_dirfd itself);
 * what names the mount in errors. */
int imc_priv_move_mount(int from_fd, int to_dirfd, const char *to_path, const char *what,
			imc_error *err);
/* Plain mount(2). */
int imc_priv_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
		   const char *data, imc_error *err);
int imc_priv_umount(const char *target, int flags, imc_error *err);
/* Lazily unmount the mount whose root fd holds (an O_PATH descriptor of it). */
int imc_priv_umount_fd(int fd, const char *what, imc_error *err);
/* Grow the ext4 on dev (mounted nowhere) to size bytes: online through a detached mount (one
 * ioctl), or with resize2fs -f when the kernel refuses that (no CAP_SYS_RESOURCE). */
#define IMC_EXT4_RESIZE_MOUNT_OPTIONS "noinit_itable"
int imc_priv_resize_ext4(const char *dev, uint64_t size, imc_error *err);
/* FITRIM the filesystem that fd is on, all of it: its free space is discarded (a loop-mounted
 * filesystem's backing file gets holes punched there).  *ret_trimmed: bytes the filesystem says
 * it trimmed. */
int imc_priv_fitrim(int fd, const char *what, uint64_t *ret_trimmed, imc_error *err);
/* Run mkfs.<fstype> with args (NULL-terminated, without the program name) on dev; its output
 * goes into the error message on failure. */
int imc_priv_mkfs(const char *fstype, const char *const *args, const char *dev, imc_error *err);

#endif
