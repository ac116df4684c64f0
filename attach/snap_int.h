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
	/* Auto-match (snap_match.c): imcd's URL and token (NULL: off), its client. */
	char *server, *token;
	struct net_client *net;
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
/* BUF = ROOT/lowers/<cache>/images/<image>/rootfs */
void snap_lower_path(struct snap *s, const char *cache_id, unsigned image, char *buf, size_t size);
int snap_lower_get(struct snap *s, const char *cache_id, imc_error *err);
/* Unmounts the cache's lower when no record names it any more. */
void snap_lower_release(struct snap *s, const char *cache_id);
/* Asks imcd (--server) for a Ready cache of the image the CRI labels name and fetches it into
 * the store: 0 when one was fetched, -ENOENT (with the reason) when none. */
int snap_match_fetch(struct snap *s, json_t *labels, imc_error *err);
/* Unmounts and removes the lowers no record names. */
int snap_lowers_reconcile(struct snap *s, unsigned *ret_removed, imc_error *err);

#endif
