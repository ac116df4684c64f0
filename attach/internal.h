/* What attach.c, lower.c and overlay.c share inside the attach room; not a public header. */
#ifndef IMC_ATTACH_INTERNAL_H
#define IMC_ATTACH_INTERNAL_H

#include <limits.h>

#include "attach.h"

#define ATTACH_MODE_NAME_OVERLAY "overlay"
#define ATTACH_MODE_NAME_CLONE	 "clone"

/* attach.c */
/* The store's state dir (the one place this room asks the store for it). */
const char *attach_state_dir(struct store *s);
/* <state>/name, made (0700) if missing, opened as a directory: the descriptor, or -errno. */
int attach_open_subdir(struct store *s, const char *name, imc_error *err);
/* Test-only SIGSTOP points (IMC_ATTACH_STOP_AT=NAME in a -DIMC_TESTING build). */
void attach_stop_point(const char *name);
/* Is there a state file for attach id aid (attachments/<aid>.json)? */
bool attach_state_exists(struct store *s, const char *aid);
/* Hard-link aid's state file as name in dirfd: 0, or -errno (bare) where that cannot be done
 * (no state file, another filesystem, no hard links there). */
int attach_state_link(struct store *s, const char *aid, int dirfd, const char *name);
/* Make dest inside rootfd (each component resolved inside it); an O_PATH fd of it. */
int attach_mkdir_in_root(int rootfd, const char *dest, int *ret_fd, imc_error *err);
/* images[req->image].config of /imcache.json in the cache's root at dirfd. */
int attach_read_image_config(int dirfd, const struct attach_request *req, json_t **ret,
			     imc_error *err);
/* Decode mountinfo's octal escapes in place. */
void attach_mountinfo_unescape(char *s);

/* lower.c: one read-only mount of a cache's snapshot per host, shared by its overlay attaches.
 * <state>/lowers/<id>/ is the mount, <id>.json its device, <id>.refs/<att-id> one entry per
 * attach using it, <id>.lock the flock (shared to take or drop a reference, exclusive to mount
 * or unmount). */
#define ATTACH_LOWERS_DIR "lowers"
/* Take a reference for attach aid on cache_id's lower, mounting it if it is not; ret_root gets
 * the lower's root directory. */
/* lazy (may be NULL): a cache the store lacks gets a lazy lower from this source. */
int lower_acquire(struct store *s, const char *cache_id, const char *aid,
		  const struct attach_lower_policy *pol, const struct dist_fetch_config *lazy,
		  char ret_root[PATH_MAX], imc_error *err);
/* The lowers directory, opened (created when missing). */
int lower_open_dir(struct store *s, imc_error *err);
/* Undo the attaches on lazy lowers whose server died (before the sweep releases them). */
int lower_reap_lazy(struct store *s, json_t *repairs, imc_error *err);
/* Drop attach aid's reference (the lower stays mounted: lower_sweep releases it). */
int lower_release(struct store *s, const char *cache_id, const char *aid, imc_error *err);
/* Drop references of attaches that have no state; unmount lowers that nothing references and
 * whose grace ran out, then the least recently used unreferenced ones while more than
 * pol->max_mounted are mounted; remove records of lowers that are not mounted.  Each change goes
 * into repairs (may be NULL).  Lowers another process holds are skipped. */
int lower_sweep(struct store *s, const struct attach_lower_policy *pol, json_t *repairs,
		imc_error *err);

/* imc-snapshotter's snapshots served from a lower hold references named "snap-<id>": live
 * while its snapshot directory <state>/snapshotter/snapshots/<id> is there. */
#define ATTACH_SNAP_REF_PREFIX "snap-"
#define ATTACH_SNAP_DIR	       "snapshotter/snapshots"
/* Drop aid's reference and, when no live reference is left and no other process holds the lower,
 * unmount and forget it at once (no grace). */
int lower_release_now(struct store *s, const char *cache_id, const char *aid, imc_error *err);
/* Every lower's "snap-" references for which live(name, ctx) is false: released as by
 * lower_release_now; *ret_dropped counts them. */
int lower_drop_snap_refs(struct store *s, bool (*live)(const char *name, void *ctx), void *ctx,
			 unsigned *ret_dropped, imc_error *err);

/* lazy.c: the lazy lower's FUSE server process (lowers/<id>.lazy, <id>.fuse/, <id>.lazy.log) */
#define LAZY_NAME_MAX 160
/* The FUSE mount point of id's lazy lower (absolute). */
int lazy_fuse_dir(struct store *s, const char *id, char ret[PATH_MAX], imc_error *err);
/* Does id's lower have a lazy server record, and does its server live? */
bool lazy_present(int ldir, const char *id);
bool lazy_alive(int ldir, const char *id);
/* The server's command line (lazy.c builds it before its fork). */
struct lazy_argv {
	char *v[160];
	size_t n;
	char fd[16], par[16], size[32], window[16], sdl[24], rdl[24];
};
struct lazy_store_args {
	const char *state_dir, *driver;
	const char *const *driver_opts; /* NULL-terminated, or NULL */
};
#ifdef IMC_TESTING
void lazy_server_argv(const struct lazy_store_args *st, const struct dist_fetch_config *fc,
		      const char *id, int wfd, struct lazy_argv *a);
#endif
/* Start the server of id (a process of its own) and wait until its file system is mounted. */
int lazy_start(struct store *s, int ldir, const struct dist_fetch_config *fc, const char *id,
	       imc_error *err);
/* Unmount its file system, wait for the server to exit (SIGKILL after a bound), remove what it
 * left. */
int lazy_stop(struct store *s, int ldir, const char *id, imc_error *err);
/* Wait while a lazy server of id lives and has not sealed the snapshot (*ret_joined set when
 * there was one). */
int lazy_join(struct store *s, int ldir, const char *id, bool *ret_joined);
/* The counts of id's lazy server (lowers/<id>.lazy.stats) with "serverAlive"; NULL: none. */
json_t *lazy_stats_read(int ldir, const char *id);
/* Undo the attaches of id's lazy lower when its server is dead. */
int lazy_reap(struct store *s, int ldir, const char *id, json_t *repairs, imc_error *err);

/* overlay.c */
/* Mount-mode attach as an overlayfs at dir on the cache's shared lower. */
/* dir names the mount point; dirfd, when not -1, is it opened already (the mount goes onto the
 * descriptor, not onto dir resolved again). */
/* state gets the overlay's unique mount id ("mountId", where the kernel has them) for the caller
 * to record with "attached". */
int overlay_attach(struct store *s, const struct attach_request *req, const char *aid,
		   const char *dir, int dirfd, json_t *state, json_t **ret_config, imc_error *err);
/* Undo whatever part of overlay attach aid exists: its mounts, its pod directory, its
 * reference on the lower.  The caller removes the state. */
int overlay_undo(struct store *s, const char *aid, json_t *state, json_t *repairs, imc_error *err);
#define ATTACH_POD_MOUNTS_MAX 16
struct attach_pod_mount {
	unsigned id, parent;
	bool overlay; /* the pod's overlay (source "imc-<aid>"), not a mount on top of it */
	char point[PATH_MAX];
};
/* The mounts of attach aid's overlay and those on top of them in mountinfo text buf (changed
 * in place), at most ATTACH_POD_MOUNTS_MAX, last-mounted first; their count.  (Static outside
 * test builds; the fuzz target reaches it.) */
#ifdef IMC_TESTING
size_t attach_pod_mounts_scan(char *buf, const char *aid, struct attach_pod_mount *ret);
#endif
/* Is the overlay of attach aid mounted, in this mount namespace or any other (reconcile must not
 * undo a pod whose runtime attached it in a private namespace)? */
bool overlay_alive(const char *aid);
/* Pod directories (<state>/overlays/<att-id>) whose attach has no state: unmounted, removed. */
int overlay_reconcile_orphans(struct store *s, json_t *repairs, imc_error *err);

#endif
