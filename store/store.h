/* The cache store: writable volumes, sealed read-only snapshots and copy-on-write clones, behind
 * one driver table.  Callers never know which driver runs. */
#ifndef IMC_STORE_H
#define IMC_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"

enum store_kind {
	STORE_VOLUME,	/* being built, writable */
	STORE_SNAPSHOT, /* sealed, read-only; the id is the cache id */
	STORE_CLONE,	/* a writable COW clone of a snapshot, one per attach */
};

#define STORE_DEV_PATH_MAX 64
/* A volume or clone exposed as a block device. */
struct store_dev {
	char path[STORE_DEV_PATH_MAX];
	int fd; /* held open while the caller needs the device to stay; -1 once released */
};

struct store_object_info {
	uint64_t size;	    /* apparent size in bytes */
	uint64_t allocated; /* bytes really allocated in the pool */
	uint64_t extents;   /* extents of the backing file (0 where the driver has none) */
};

struct store_usage {
	uint64_t total;
	uint64_t used;
	uint64_t free;
	/* The pool's metadata space, where the driver has one (thin); 0 otherwise. */
	uint64_t meta_total;
	uint64_t meta_used;
};

/* store_activate flags */
enum {
	STORE_ACTIVATE_READ_ONLY = 1 << 0,
	/* The device outlives the caller's descriptor (block mode: a microVM opens it later); it
	 * goes only with store_deactivate on its path. */
	STORE_ACTIVATE_PERSIST = 1 << 1,
};

struct store_config {
	const char *state_dir; /* default /var/lib/imcache */
	const char *driver;    /* "reflink" (default) or "thin" */
	uint64_t pool_size;    /* embedded loop-backed pool file size (sparse); 0 = default */
	/* Driver options as "key=value" strings (--driver-opt), NULL-terminated; NULL = none.
	 * Each driver refuses keys it does not know. */
	const char *const *driver_opts;
};

#define STORE_DEFAULT_STATE_DIR "/var/lib/imcache"
#define STORE_DEFAULT_POOL_SIZE (256ULL << 30)

/* Opaque: the driver table and the driver's data stay in store/ (store/internal.h). */
struct store;

/* What a driver can do beyond the ops every driver has (store_can). */
enum store_cap {
	/* store_volume_from_snapshot: a new volume sharing a snapshot's extents. */
	STORE_CAP_VOLUME_FROM_SNAPSHOT,
};

/* How a writer that fills a volume itself (a fetch) should lay out what it writes. */
struct store_fill_hints {
	/* Write the smaller gaps between data as zeros, keeping only the keep_holes largest
	 * holes (the reflink driver's seal would rewrite a volume with more holes into few
	 * extents, a copy of all of it); false: leave every gap a hole (thin: zeros would take
	 * pool blocks). */
	bool fill_gaps;
	unsigned keep_holes;
};

int store_open(const struct store_config *cfg, struct store **ret, imc_error *err);
void store_close(struct store *s);
const char *store_driver_name(const struct store *s);
/* The driver options the store was opened with (borrowed, NULL-terminated; NULL: none). */
const char *const *store_driver_opts(const struct store *s);
const char *store_kind_name(enum store_kind kind);
/* The state dir the store was opened on (borrowed; its subdirectories' owners are listed in
 * docs/architecture.md). */
const char *store_state_dir(const struct store *s);
bool store_can(const struct store *s, enum store_cap cap);
void store_fill_hints(const struct store *s, struct store_fill_hints *ret);

int store_volume_create(struct store *s, const char *id, uint64_t size, imc_error *err);
int store_activate(struct store *s, enum store_kind kind, const char *id, unsigned flags,
		   struct store_dev *ret, imc_error *err);
int store_deactivate(struct store *s, enum store_kind kind, const char *id, struct store_dev *dev,
		     imc_error *err);
int store_seal(struct store *s, const char *volume_id, const char *snapshot_id, imc_error *err);
int store_clone(struct store *s, const char *snapshot_id, const char *clone_id, imc_error *err);
int store_remove(struct store *s, enum store_kind kind, const char *id, imc_error *err);
int store_stat(struct store *s, enum store_kind kind, const char *id, struct store_object_info *ret,
	       imc_error *err);
int store_list(struct store *s, enum store_kind kind, char ***ret_ids, size_t *ret_n,
	       imc_error *err);
void store_list_free(char **ids, size_t n);
int store_usage(struct store *s, struct store_usage *ret, imc_error *err);
int store_teardown(struct store *s, imc_error *err);
/* Grow volume or clone id to size bytes (a multiple of 4096, not below its size) before it is
 * activated; -EINVAL for a snapshot or a smaller size. */
int store_resize(struct store *s, enum store_kind kind, const char *id, uint64_t size,
		 imc_error *err);
/* See store_driver_ops.volume_from_snapshot in store/internal.h (the reflink driver: a FICLONE of
 * the snapshot's file, then ftruncate to size; the filesystem inside is not grown, that is the
 * caller's). */
int store_volume_from_snapshot(struct store *s, const char *snapshot_id, const char *volume_id,
			       uint64_t size, imc_error *err);
/* See store_driver_ops.fit (with the bytes store_space_expect set aside). */
int store_fit(struct store *s, imc_error *err);
/* bytes (negative: given back) are about to be written on the filesystem under the pool, beside
 * it (a build's layer downloads): the pool promises that much less until they are given back;
 * then store_fit. */
int store_space_expect(struct store *s, int64_t bytes, imc_error *err);
/* See store_driver_ops.trim.  Costs a walk of the pool's free space: not on a hot path. */
int store_trim(struct store *s, uint64_t *ret_trimmed, imc_error *err);
/* A directory of the caller's own on the store's filesystem, made if missing (mode 0700), its path
 * in ret: for files that belong beside the store's data rather than on the state dir's filesystem
 * (overlay pods' upper and work directories).  name: a valid name (imc_name_valid, 64).  It keeps
 * the pool in use while anything there is open or mounted (store_teardown answers -EBUSY then).
 * -EOPNOTSUPP (bare, err untouched) where the store has no filesystem of its own (thin). */
#define STORE_SCRATCH_DIR "scratch"
int store_scratch_dir(struct store *s, const char *name, char ret[PATH_MAX], imc_error *err);
/* The repairs store_open made (borrowed: an array of strings, empty when there were none). */
json_t *store_repairs(const struct store *s);

/* Clones exposed as block devices that the caller's records may not name (a crash between
 * activate and the record): the id of the clone that the block device named dev ("loopN")
 * serves, a deleted clone's too, in ret; "" when it serves none of this store's clones.  -errno
 * when the store cannot tell. */
#define STORE_CLONE_ID_MAX 64
int store_clone_of_device(struct store *s, const char *dev, char ret[STORE_CLONE_ID_MAX + 1],
			  imc_error *err);
/* Call fn for every block device serving a clone of this store (a deleted clone's too), with the
 * device's name ("loopN") and the clone's id; fn's error stops the walk.  A driver whose clones
 * are no devices of their own until activated by it (thin) has none to report. */
typedef int (*store_clone_device_fn)(const char *dev, const char *clone_id, void *ctx,
				     imc_error *err);
int store_for_each_clone_device(struct store *s, store_clone_device_fn fn, void *ctx,
				imc_error *err);

/* Mount options every ext4 volume and clone gets: no lazy inode-table zeroing thread, and no cache
 * flushes (a volume is fsynced as a whole when sealed; a clone is thrown away after a crash). */
#define STORE_EXT4_MOUNT_OPTIONS "noinit_itable,nobarrier"

#endif
