/* Attaching caches on a sandbox host: a COW clone of the snapshot, a block device and a mount of
 * one image's rootfs, with state on disk so that detach works after a crash. */
#ifndef IMC_ATTACH_H
#define IMC_ATTACH_H

#include <stdbool.h>

#include "../common/imc.h"
#include "../store/store.h"

#include <stdint.h>

struct attach_request {
	const char *cache_id;
	unsigned image;	 /* /images/<image>/rootfs */
	const char *dir; /* where the rootfs appears (mount mode) */
	/* Block mode: expose the clone as a block device for a microVM and mount nothing; the
	 * device path is in the returned state ("device"). */
	bool block;
	/* Grow the clone and its ext4 to this many bytes before use; 0 = as built. */
	uint64_t size;
	/* Mount the cache's /data read-only at <dir>/<data_dest> (an absolute path inside the
	 * rootfs); NULL = no data mount. */
	const char *data_dest;
	/* Return images[image].config of the snapshot's /imcache.json in the state as
	 * "imageConfig" (for imc-runtime's imcache.io/use-image-config; not persisted). */
	bool image_config;
};

/* Attach; ret_state (optional) gets the recorded attach state. */
int attach_cache(struct store *s, const struct attach_request *req, json_t **ret_state,
		 imc_error *err);
/* The same, mounting on dirfd (an O_PATH descriptor of req->dir that the caller opened, say
 * without following symlinks) rather than on what req->dir resolves to: the path is only
 * checked to name the same directory still (-EXDEV if not) and recorded for detach. */
int attach_cache_at(struct store *s, const struct attach_request *req, int dirfd,
		    json_t **ret_state, imc_error *err);
/* Undo an attach named by its directory, its attach id ("att-" + 16 hex) or its device path;
 * -ENOENT when nothing is attached there, -EBUSY while another process works on it.  Works on
 * whatever part of an attach a crash left behind. */
int attach_detach(struct store *s, const char *what, imc_error *err);
/* Undo attaches whose process died or whose mount/device vanished; remove clones, loop devices
 * and mounts no attach owns; *ret_repairs = array of strings. */
int attach_reconcile(struct store *s, json_t **ret_repairs, imc_error *err);
/* All recorded attaches, as a JSON array of states. */
int attach_list(struct store *s, json_t **ret, imc_error *err);

#endif
