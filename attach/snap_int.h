/* What snap.c and snap_meta.c share. */
#ifndef IMC_SNAP_INT_H
#define IMC_SNAP_INT_H

#include "snap.h"

struct snap {
	int rootfd, snapfd, lockfd;
	char *root;
	json_t *db;
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

#endif
