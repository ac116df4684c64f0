/* imc-snapshotter: containerd's snapshot service (containerd.services.snapshots.v1.Snapshots)
 * with the overlayfs snapshotter's semantics, over the state directory's snapshotter/ tree. */
#ifndef IMC_SNAP_H
#define IMC_SNAP_H

#include <regex.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"
#include "../grpc/grpc.h"

/* ---- filters (snap_filter.c): containerd's filter syntax ---------------------------------
 *   filter   := selector ("," selector)*          every selector must match
 *   selector := fieldpath [("==" | "!=" | "~=") value]
 *   fieldpath:= field ("." field)*                field: [A-Za-z_][A-Za-z0-9_]* or quoted
 *   value    := quoted or the bytes up to "," or a space
 * quoted: "..." with Go's escapes, or /.../ (regular expressions; "\/" is a slash).  Fields of a
 * snapshot: kind, name, parent, labels.KEY.  A list of filters matches when any one does. */
#define SNAP_FILTER_MAX_LEN	  4096
#define SNAP_FILTER_MAX_SELECTORS 32
#define SNAP_FILTER_MAX_PATH	  16
#define SNAP_REGEX_MAX_NODES	  1024 /* the compiled tree of a ~= pattern (snap_filter.c) */
#define SNAP_REGEX_MAX_DEPTH	  32   /* groups in groups */
#define SNAP_REGEX_MAX_REPEATS	  4    /* repetitions of repetitions: ((a+)+)+ is 3 */

enum snap_op { SNAP_OP_PRESENT, SNAP_OP_EQ, SNAP_OP_NE, SNAP_OP_MATCH };
struct snap_selector {
	char *path[SNAP_FILTER_MAX_PATH];
	size_t n_path;
	enum snap_op op;
	char *value;
	regex_t re;
	bool has_re;
};
struct snap_filter {
	struct snap_selector sel[SNAP_FILTER_MAX_SELECTORS];
	size_t n;
};
int snap_filter_parse(const char *s, struct snap_filter *ret, imc_error *err);
void snap_filter_free(struct snap_filter *f);

/* ---- snapshots (snap.c, snap_meta.c) ---------------------------------------------------- */
enum snap_kind { SNAP_KIND_UNKNOWN, SNAP_KIND_VIEW, SNAP_KIND_ACTIVE, SNAP_KIND_COMMITTED };

/* A snapshot's record as the service returns it (strings owned by the store; valid until the
 * next change). */
struct snap_info {
	const char *name, *parent; /* parent "" when none */
	enum snap_kind kind;
	int64_t created_ns, updated_ns;
	json_t *labels; /* object of strings */
};
struct snap_mount {
	char type[16];
	char source[4096];
	char *options[8]; /* malloc'ed */
	size_t n_options;
};
struct snap_mounts {
	struct snap_mount m[1];
	size_t n;
};
void snap_mounts_free(struct snap_mounts *m);

/* Label caps: containerd's 4096 bytes for a key and its value together, and a count. */
#define SNAP_MAX_LABEL	4096
#define SNAP_MAX_LABELS 256
#define SNAP_MAX_KEY	4096

struct snap;
/* Opens (creating) ROOT: meta.json, snapshots/<id>/{fs,work}; flocks ROOT/lock. */
int snap_open(const char *root, struct snap **ret, imc_error *err);
void snap_close(struct snap *s);
/* Serve remote snapshots from the caches of st (the agent's store; NULL: none).  The labels
 * of containerd's unpack and of a snapshot served from a cache: */
#define SNAP_LABEL_REF	    "containerd.io/snapshot.ref"
#define SNAP_LABEL_CACHE_ID "imcache.io/cache-id"
struct store;
/* Also drops the references on the host's shared lowers (attach/lower.c) that no record names
 * (a crash between the reference and the record), releasing what that leaves unused. */
int snap_set_store(struct snap *s, struct store *st, imc_error *err);
/* Auto-match: a miss asks imcd at server (with token; NULL: none) for a cache of the layer's
 * chain, attached lazily; auto_create: and asks imcd to create one of the pulled image when it
 * has none. */
int snap_set_server(struct snap *s, const char *server, const char *token, bool auto_create,
		    imc_error *err);

/* Errors follow containerd's storage: -ENOENT (NotFound), -EEXIST (AlreadyExists), -EINVAL
 * (InvalidArgument), -EBUSY (FailedPrecondition); anything else is an internal failure. */
int snap_prepare(struct snap *s, enum snap_kind kind, const char *key, const char *parent,
		 json_t *labels, struct snap_mounts *ret, imc_error *err);
int snap_mounts(struct snap *s, const char *key, struct snap_mounts *ret, imc_error *err);
int snap_commit(struct snap *s, const char *name, const char *key, json_t *labels, imc_error *err);
int snap_remove(struct snap *s, const char *key, imc_error *err);
int snap_stat(struct snap *s, const char *key, struct snap_info *ret, imc_error *err);
/* fields: "labels" or "labels.KEY" (n of them; none: the labels as a whole). */
int snap_update(struct snap *s, const char *name, json_t *labels, const char *const *fields,
		size_t n, struct snap_info *ret, imc_error *err);
/* Calls fn for each snapshot that matches any of the n filters (all when n is 0), in key
 * order; fn returning non-zero stops the walk with that value. */
int snap_walk(struct snap *s, const struct snap_filter *filters, size_t n,
	      int (*fn)(const struct snap_info *info, void *ud), void *ud, imc_error *err);
int snap_usage(struct snap *s, const char *key, int64_t *ret_size, int64_t *ret_inodes,
	       imc_error *err);
/* Removes the directories and temporary files no record names; *ret_removed counts them. */
int snap_cleanup(struct snap *s, unsigned *ret_removed, imc_error *err);

bool snap_filter_match(const struct snap_filter *f, const struct snap_info *info);
/* A labels object checked against the caps (NULL is an empty one). */
int snap_labels_check(json_t *labels, imc_error *err);

/* ---- the gRPC service (snap_service.c) -------------------------------------------------- */
extern const struct grpc_method snap_service_methods[];
extern const size_t snap_service_n_methods;

#endif
