/* imc-runtime: a runc-compatible OCI runtime that attaches an imcache rootfs before handing the
 * container to the real runtime (crun or runc), and detaches it after.  The parts here are pure
 * (command line, config.json, records, log lines) so that unit tests reach them; the program is
 * attach/imc_runtime_main.c. */
#ifndef IMC_RUNTIME_H
#define IMC_RUNTIME_H

#include <stdbool.h>

#include "../common/imc.h"

#define RUNTIME_ANNOTATION_CACHE_ID "imcache.io/cache-id"
#define RUNTIME_ANNOTATION_IMAGE    "imcache.io/image"
#define RUNTIME_ANNOTATION_DATA	    "imcache.io/data-mount"
#define RUNTIME_CONFIG_MAX	    (4 * 1024 * 1024) /* bytes of config.json read */
#define RUNTIME_ID_MAX		    200		      /* bytes of a container id we record */

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

/* The imcache part of a bundle's config.json. */
struct runtime_cache {
	char *cache_id; /* NULL: no imcache annotation, pass through */
	unsigned image; /* imcache.io/image, 0-1000 */
	char *rootfs;	/* root.path, joined to the bundle when relative */
};
void runtime_cache_free(struct runtime_cache *c);

/* Parse config.json text.  No annotation leaves ret->cache_id NULL; a malformed file, a bad
 * annotation or a missing root.path fail naming the field. */
int runtime_cache_parse(const char *json, size_t len, const char *bundle, struct runtime_cache *ret,
			imc_error *err);
/* Read and parse <bundle>/<config> (config absolute or relative to the bundle).  A missing file
 * is -ENOENT (the real runtime reports it better). */
int runtime_cache_load(const char *bundle, const char *config, struct runtime_cache *ret,
		       imc_error *err);

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
