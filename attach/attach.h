/* Attaching caches on a sandbox host: a COW clone of the snapshot, a block device and a mount of
 * one image's rootfs, with state on disk so that detach works after a crash. */
#ifndef IMC_ATTACH_H
#define IMC_ATTACH_H

#include <stdbool.h>

#include "../common/imc.h"
#include "../store/store.h"

#include <stdint.h>
#include <stdio.h>

/* How a mount-mode attach makes the rootfs (docs/architecture.md, "Overlay attach"). */
enum attach_mode {
	ATTACH_MODE_DEFAULT, /* overlay, or clone for block mode */
	ATTACH_MODE_OVERLAY, /* an overlayfs on the cache's shared read-only lower */
	ATTACH_MODE_CLONE,   /* a copy-on-write clone on its own device */
};
/* "overlay" or "clone"; anything else is -EINVAL naming it. */
int attach_mode_parse(const char *name, enum attach_mode *ret, imc_error *err);

/* When an unused shared lower is released: grace_s seconds after its last detach, or sooner,
 * least recently used first, while more than max_mounted lowers are mounted. */
struct attach_lower_policy {
	int64_t grace_s;
	unsigned max_mounted;
};
#define ATTACH_LOWER_GRACE_DEFAULT 300
#define ATTACH_LOWER_MAX_DEFAULT   64
#define ATTACH_LOWER_GRACE_MAX	   (30LL * 24 * 3600)
#define ATTACH_LOWER_MAX_MAX	   4096
/* The defaults, with grace (seconds) and max over them where not NULL or empty: the values of
 * $IMCACHE_LOWER_GRACE and $IMCACHE_LOWER_MAX, which main reads; a malformed value is -EINVAL
 * naming it. */
int attach_lower_policy_parse(const char *grace, const char *max, struct attach_lower_policy *ret,
			      imc_error *err);

struct dist_fetch_config;
struct dist_fetch_stats;

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
	enum attach_mode mode;
	/* NULL: the defaults. */
	const struct attach_lower_policy *lower;
	/* Overlay mode, a cache the store lacks: where its chunks come from, for a lazy lower
	 * (docs/distribution.md, "Lazy attach"); NULL: the cache must be local. */
	const struct dist_fetch_config *lazy;
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
/* attach_detach, then release the shared lowers that pol says are unused for long enough (NULL:
 * the defaults). */
int attach_detach_with(struct store *s, const char *what, const struct attach_lower_policy *pol,
		       imc_error *err);
/* Undo attaches whose process died or whose mount/device vanished; remove clones, loop devices
 * and mounts no attach owns; *ret_repairs = array of strings. */
/* And the shared lowers: stale references dropped, lowers unused past pol's grace or over its
 * limit released (NULL: the defaults), pod directories no attach owns removed. */
int attach_reconcile_with(struct store *s, const struct attach_lower_policy *pol,
			  json_t **ret_repairs, imc_error *err);
/* Release every shared lower no attach uses (teardown). */
int attach_lowers_release(struct store *s, imc_error *err);
/* Remove cache id's snapshot from the store (store_remove) unless overlay attaches use its shared
 * lower here: -EBUSY, nothing changed; with force they are detached first.  A lower that no
 * attach uses (warm) is released first.  Held against new attaches of the cache throughout. */
int attach_snapshot_remove(struct store *s, const char *id, bool force, imc_error *err);
/* The shared lowers mounted on this host, as a JSON array of {cacheId, refs, device, ...}. */
int attach_lowers_list(struct store *s, json_t **ret, imc_error *err);
/* All recorded attaches, as a JSON array of states. */
int attach_list(struct store *s, json_t **ret, imc_error *err);
/* The attaches and lowers of this host (a lazy lower's counts too) as Prometheus text on f
 * (imc-attach metrics, for node_exporter's textfile collector). */
int attach_metrics_write(struct store *s, FILE *f, imc_error *err);

/* The counts of cache id's lazy lower, from its server's stats file (docs/distribution.md,
 * "Lazy attach"): chunks local/total, on-demand and background fetches; NULL when it has none. */
json_t *attach_lazy_stats(struct store *s, const char *id);
/* Fetch cache id whole into the store (dist_fetch_snapshot; nothing to do when it is local) for
 * prefetch, or a clone, block or --no-lazy attach.  A lazy server of the cache writes the same
 * volume (fetch-<id>): one that lives is joined (its seal waited for, *ret_joined set), and the
 * fetch holds the cache's lower lock, which the start of a lazy lower takes too, so none starts
 * meanwhile (that attach waits, then mounts the fetched snapshot). */
int attach_fetch(struct store *s, const struct dist_fetch_config *fc, const char *id,
		 struct dist_fetch_stats *ret_stats, bool *ret_joined, imc_error *err);
/* imc-attach lazy-serve: the FUSE server of cache id's lazy lower (attach/lazy.c), until its
 * file system is unmounted; "ok" or "error ERRNO MESSAGE" is written to ready_fd once it is
 * mounted or has failed. */
int attach_lazy_serve(struct store *s, const struct dist_fetch_config *fc, const char *id,
		      int ready_fd, imc_error *err);

#endif
