/* imc-runtime: a runc-compatible OCI runtime that attaches an imcache rootfs before handing the
 * container to the real runtime (crun or runc), and detaches it after.  The parts here are pure
 * (command line, config.json, records, log lines) so that unit tests reach them; the program is
 * attach/imc_runtime_main.c. */
#ifndef IMC_RUNTIME_H
#define IMC_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/imc.h"

#define RUNTIME_ANNOTATION_CACHE_ID   "imcache.io/cache-id"
#define RUNTIME_ANNOTATION_IMAGE      "imcache.io/image"
#define RUNTIME_ANNOTATION_DATA	      "imcache.io/data-mount"
#define RUNTIME_ANNOTATION_USE_CONFIG "imcache.io/use-image-config"
#define RUNTIME_ANNOTATION_CONTAINER  "imcache.io/container"
#define RUNTIME_ANNOTATION_MODE	      "imcache.io/attach-mode"
#define RUNTIME_CONFIG_MAX	      (4 * 1024 * 1024) /* bytes of config.json read */
#define RUNTIME_ID_MAX		      200		/* bytes of a container id we record */
#define RUNTIME_DATA_DEST_MAX	      1024		/* bytes of imcache.io/data-mount */
#define RUNTIME_USERDB_MAX	      (4 * 1024 * 1024) /* bytes of an image's /etc/passwd, group */
#define RUNTIME_IMAGE_LIST_MAX	      10000		/* entries of the image's env, cmd... */
#define RUNTIME_IMAGE_STRING_MAX      (64 * 1024)	/* bytes of one of them */

enum runtime_verb {
	RUNTIME_OTHER, /* everything the wrapper passes through untouched */
	RUNTIME_CREATE,
	RUNTIME_RUN,
	RUNTIME_DELETE,
};

/* What the wrapper needs from a runc/crun command line; pointers into argv. */
struct runtime_args {
	enum runtime_verb verb;
	int command_index;    /* argv index of COMMAND, -1 when there is none (--version) */
	const char *bundle;   /* create/run: --bundle/-b, default "." */
	const char *config;   /* create/run: crun's --config/-f, default "config.json" */
	const char *id;	      /* create/run/delete: the last positional argument, NULL if none */
	const char *log_file; /* global --log */
	bool log_json;	      /* global --log-format json */
	bool detach;	      /* run --detach/-d */
};

/* Parse argv (argv[0] is the program).  Fails with -EINVAL only when a flag that takes a value
 * has none; the caller then passes the command line through for the real runtime to judge. */
int runtime_parse_args(int argc, char *const *argv, struct runtime_args *ret, imc_error *err);

/* imcache.io/use-image-config: how the image's config (env, cmd, entrypoint, workingDir, user,
 * recorded in the snapshot's /imcache.json) goes into the spec's process. */
enum runtime_use_config {
	RUNTIME_USE_CONFIG_NO,	     /* absent or "false": the spec as it is */
	RUNTIME_USE_CONFIG_FILL,     /* "true": fill what the spec leaves empty */
	RUNTIME_USE_CONFIG_OVERRIDE, /* "override": the image's values win where it has them */
};

/* The imcache part of a bundle's config.json. */
struct runtime_cache {
	char *cache_id;	 /* NULL: no imcache annotation, pass through */
	unsigned image;	 /* imcache.io/image, 0-1000 */
	char *rootfs;	 /* root.path, joined to the bundle when relative */
	char *root_path; /* root.path as config.json has it */
	char *data_dest; /* imcache.io/data-mount, checked by runtime_data_dest_check; NULL: none */
	enum runtime_use_config use_config;
	bool clone;	   /* imcache.io/attach-mode "clone"; "overlay" or absent: false */
	json_t *spec;	   /* the whole config.json, kept to rewrite it (with cache_id only) */
	char *config_path; /* where it was read (runtime_cache_load only) */
};
void runtime_cache_free(struct runtime_cache *c);

/* Parse config.json text.  No annotation leaves ret->cache_id NULL, and so do (Kubernetes, whose
 * pod annotations reach every container of the pod) a pod sandbox container and a container
 * other than the one imcache.io/container names; a malformed file, a bad annotation or a
 * missing root.path fail naming the field. */
int runtime_cache_parse(const char *json, size_t len, const char *bundle, struct runtime_cache *ret,
			imc_error *err);
/* Does the file hold the bytes of the imcache.io/cache-id key (as is, or written "\/") anywhere?
 * Read in pieces, whatever its size; -ENOENT when it is missing. */
int runtime_config_mentions_cache(const char *path, bool *ret, imc_error *err);
/* Read and parse <bundle>/<config> (config absolute or relative to the bundle).  A file that
 * does not mention the annotation's key (runtime_config_mentions_cache) is not parsed at all:
 * ret->cache_id NULL, pass through, whatever else is in it.  One that does is parsed strictly
 * (at most RUNTIME_CONFIG_MAX bytes of UTF-8 JSON, no duplicate keys).  A missing file is
 * -ENOENT (the real runtime reports it better). */
int runtime_cache_load(const char *bundle, const char *config, struct runtime_cache *ret,
		       imc_error *err);

/* Open root.path for the attach (O_PATH): relative to bundle it must stay inside the bundle, and
 * no component of it (absolute: from /) may be a symlink, so that the cache is mounted on
 * exactly that directory, never where a symlink leads.  Fails naming root.path. */
int runtime_rootfs_open(const char *bundle, const char *root_path, int *ret_fd, imc_error *err);

/* A data mount destination: an absolute path inside the container, at most
 * RUNTIME_DATA_DEST_MAX bytes, not "/", with no "", "." or ".." component. */
int runtime_data_dest_check(const char *dest, imc_error *err);

/* An image's user ("uid", "uid:gid", "name", "name:group", "uid:group"...) as numeric ids.  Names
 * are looked up in /etc/passwd and /etc/group of the rootfs at rootfd, opened with
 * RESOLVE_IN_ROOT (rootfd -1: names are refused).  A user without a group gets its passwd
 * entry's group, else 0 (as docker does). */
int runtime_user_resolve(const char *user, int rootfd, uint32_t *ret_uid, uint32_t *ret_gid,
			 imc_error *err);

/* Put an image config ({"env","cmd","entrypoint","workingDir","user"}) into spec's process:
 *   FILL      args = entrypoint + cmd when the spec has none; image env entries whose name the
 *             spec lacks are appended (the spec wins); cwd when the spec's is "" or "/"; user
 *             when the spec's is 0:0.
 *   OVERRIDE  the same, but the image wins wherever it has a value: args, cwd, user, and env
 *             entries of the same name are replaced.
 * rootfd is the container's rootfs for user names.  Fails naming the field; spec may then be
 * partly changed (the caller drops it). */
int runtime_spec_apply_image(json_t *spec, json_t *image_config, enum runtime_use_config mode,
			     int rootfd, imc_error *err);
/* Write c->spec back to c->config_path atomically (tmp file, fsync, rename). */
int runtime_spec_write(const struct runtime_cache *c, imc_error *err);

/* The real runtime: env (IMCACHE_RUNTIME) is a path (has a '/') or a name looked up in path
 * (PATH); unset or empty: crun if in path, else runc.  ret gets a malloc'ed path. */
int runtime_pick(const char *env, const char *path, char **ret, imc_error *err);

/* One line (with '\n') for the real runtime's --log file: logrus json
 * {"level":"error","msg":...,"time":...} or text time="..." level=error msg="...". */
int runtime_log_line(bool json, const char *msg, int64_t now, char **ret, imc_error *err);

/* <state_dir>/runtime/<id>.json: which directory an imcache attach for container id uses. */
int runtime_record_write(const char *state_dir, const char *id, const struct runtime_cache *c,
			 imc_error *err);
/* -ENOENT when there is no record for id. */
int runtime_record_read(const char *state_dir, const char *id, char **ret_dir, imc_error *err);
int runtime_record_remove(const char *state_dir, const char *id, imc_error *err);

#endif
