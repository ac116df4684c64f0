/* Private to store/: the driver table and the struct every driver sees.  Callers outside store/
 * include store.h only and never see these. */
#ifndef IMC_STORE_INTERNAL_H
#define IMC_STORE_INTERNAL_H

#include "store.h"

struct store_driver_ops {
	const char *name;
	int (*open)(struct store *s, imc_error *err);
	void (*close)(struct store *s);
	int (*volume_create)(struct store *s, const char *id, uint64_t size, imc_error *err);
	int (*activate)(struct store *s, enum store_kind kind, const char *id, unsigned flags,
			struct store_dev *ret, imc_error *err);
	int (*deactivate)(struct store *s, enum store_kind kind, const char *id,
			  struct store_dev *dev, imc_error *err);
	int (*seal)(struct store *s, const char *volume_id, const char *snapshot_id,
		    imc_error *err);
	int (*clone)(struct store *s, const char *snapshot_id, const char *clone_id,
		     imc_error *err);
	int (*remove)(struct store *s, enum store_kind kind, const char *id, imc_error *err);
	int (*stat)(struct store *s, enum store_kind kind, const char *id,
		    struct store_object_info *ret, imc_error *err);
	int (*list)(struct store *s, enum store_kind kind, char ***ret_ids, size_t *ret_n,
		    imc_error *err);
	int (*usage)(struct store *s, struct store_usage *ret, imc_error *err);
	/* Release host resources the driver set up in open (the embedded pool mount); refused
	 * with -EBUSY while anything in it is in use. */
	int (*teardown)(struct store *s, imc_error *err);
	/* A new writable volume volume_id holding what snapshot snapshot_id holds (sharing its
	 * extents where the driver can), its size raised to size when that is more.  NULL in a
	 * driver that cannot: store_volume_from_snapshot answers -EOPNOTSUPP. */
	int (*volume_from_snapshot)(struct store *s, const char *snapshot_id, const char *volume_id,
				    uint64_t size, imc_error *err);
	/* Grow a volume or clone to size bytes (never shrink) before it is activated; the new
	 * space reads as zeros. */
	int (*resize)(struct store *s, enum store_kind kind, const char *id, uint64_t size,
		      imc_error *err);
	/* Give the filesystem under the pool back the space the pool no longer uses (the
	 * embedded pool: FITRIM, which punches holes in pool.img); *ret_trimmed gets the bytes.
	 * NULL in a driver that has nothing to give back (store_trim answers 0). */
	int (*trim)(struct store *s, uint64_t *ret_trimmed, imc_error *err);
	/* Keep the pool from promising more space than the filesystem under it holds, less
	 * `beside` bytes about to be written next to the pool (the embedded pool: a ballast file
	 * in it, so that the pool's XFS answers ENOSPC before its backing file cannot grow).  NULL
	 * where the pool has its own space (store_fit answers 0). */
	int (*fit)(struct store *s, uint64_t beside, imc_error *err);
	/* Fill hints (store_fill_hints); NULL: leave every gap a hole. */
	void (*fill_hints)(const struct store *s, struct store_fill_hints *ret);
	/* The clone dev serves (store_clone_of_device); NULL: none. */
	int (*clone_of_device)(struct store *s, const char *dev, char ret[STORE_CLONE_ID_MAX + 1],
			       imc_error *err);
	/* store_for_each_clone_device; NULL: none. */
	int (*for_each_clone_device)(struct store *s, store_clone_device_fn fn, void *ctx,
				     imc_error *err);
	/* store_scratch_dir (name checked by store.c); NULL where the store has no filesystem of
	 * its own (thin): store_scratch_dir answers -EOPNOTSUPP. */
	int (*scratch_dir)(struct store *s, const char *name, char ret[PATH_MAX], imc_error *err);
};

struct store {
	const struct store_driver_ops *ops;
	char *state_dir;
	uint64_t pool_size;
	bool pool_size_given; /* pool_size is the caller's, not the default */
	uint64_t beside;      /* bytes expected beside the pool (store_space_expect); atomic */
	void *priv;	      /* driver data */
	/* The caller's driver options: valid during open only. */
	const char *const *driver_opts;
	/* A copy of them for the store's life (store_driver_opts; NULL-terminated, or NULL). */
	char **opts_copy;
	/* What open found wrong and repaired (an array of strings, for the caller's log); never
	 * NULL after store_open. */
	json_t *repairs;
};

/* Drivers. */
extern const struct store_driver_ops store_reflink_ops;
extern const struct store_driver_ops store_thin_ops;

#endif
