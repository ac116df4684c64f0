/* What snap.c and snap_meta.c share. */
#ifndef IMC_SNAP_INT_H
#define IMC_SNAP_INT_H

#include "snap.h"

struct store;
struct net_client;

struct snap {
	int rootfd, snapfd, lockfd, lowersfd;
	char *root;
	json_t *db;
	struct store *store; /* the caches served (NULL: none); not owned */
	json_t *caches;	     /* the catalog, snap_cache.c */
	/* Auto-match (snap_match.c): imcd's URL and token (NULL: off), its client; auto-create,
	 * and the refs it asked imcd to create lately (ref -> unix seconds). */
	char *server, *token;
	struct net_client *net;
	bool auto_create;
	json_t *asked;
};

const char *snap_kind_str(enum snap_kind k);
enum snap_kind snap_rec_kind(json_t *rec);
int64_t snap_rec_int(json_t *rec, const char *field);
/* The record of key in db (NULL when none). */
json_t *snap_rec(json_t *db, const char *key);
/* The info of key's record (which must exist); name is key itself. */
void snap_rec_info(json_t *db, const char *key, struct snap_info *ret);
/* A copy of the records to change, and its atomic replacement of them (taking *db). */
int snap_meta_copy(struct snap *s, json_t **ret, imc_error *err);
int snap_meta_commit(struct snap *s, json_t **db, imc_error *err);
bool snap_is_tmp_meta(const char *name);

int64_t snap_now_ns(void);
void snap_stop_point(const char *point);
int snap_check_key(const char *what, const char *key, imc_error *err);
void snap_id_path(struct snap *s, int64_t id, const char *sub, char *buf, size_t size);
void snap_remove_dir(struct snap *s, int64_t id);
/* A copy of labels without the empty values (containerd stores none); an empty object for
 * NULL. */
json_t *snap_labels_copy(json_t *labels);

int snap_make_dirs(struct snap *s, int64_t id, bool work, imc_error *err);

/* ---- remote snapshots from caches (snap_cache.c) ---- */
int snap_prepare_remote(struct snap *s, const char *parent, json_t *labels, const char *ref,
			imc_error *err);
/* The rootfs of the image that the record rec (served from a cache) names, in BUF: the lower
 * mounted if it is not (ROOT/lowers/<cache>, or the host's shared lower <state>/lowers/<cache>
 * for a record with "shared"), then <lower>/images/<image>/rootfs. */
int snap_lower_rootfs(struct snap *s, json_t *rec, char *buf, size_t size, imc_error *err);
/* After the removal of the record of snapshot id that cache served: its own lower is unmounted
 * when no record names the cache any more; a shared one loses the snapshot's reference. */
void snap_lower_release(struct snap *s, const char *cache_id, int64_t id, bool shared);
/* The shared lower of cache for snapshot id (attach/lower.c's, lazy from imcd with --server
 * when the store lacks the cache): *ret_root its root. */
int snap_shared_get(struct snap *s, const char *cache_id, int64_t id, char ret_root[4096],
		    imc_error *err);
/* Drops the "snap-" references on shared lowers whose snapshot no record has. */
int snap_shared_reconcile(struct snap *s, unsigned *ret_dropped, imc_error *err);
#define SNAP_CACHE_ID_MAX 64
/* The index of the image of /imcache.json under root (cache_id's lower) whose top ChainID is
 * ref; -ENOENT when none. */
int snap_shared_image(struct snap *s, const char *cache_id, const char *root, const char *ref,
		      unsigned *ret_image, imc_error *err);
/* With --server (snap_match.c): asks imcd for a Ready cache with an image whose top ChainID is
 * ref and takes the shared lower of the newest for snapshot id (lazy when the store lacks it):
 * 0 with the cache and the image, -ENOENT (the reason in err) when imcd has none; then, with
 * --auto-create, asks imcd to create a cache of the image the CRI labels name. */
int snap_match_remote(struct snap *s, json_t *labels, const char *ref, int64_t id,
		      char ret_cache[SNAP_CACHE_ID_MAX], unsigned *ret_image, imc_error *err);
/* Unmounts and removes the lowers no record names. */
int snap_lowers_reconcile(struct snap *s, unsigned *ret_removed, imc_error *err);

#endif
