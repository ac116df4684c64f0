/* imc-runtime: a runc-compatible OCI runtime wrapper (the nvidia-container-runtime pattern).
 * create/run of a bundle whose config.json names an imcache cache attach the cache's rootfs at
 * root.path, then hand over to the real runtime with the same arguments; delete detaches.
 * Everything else is the real runtime's, untouched. */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include "../common/priv.h"
#include "../dist/dist.h"
#include "attach.h"
#include "report.h"
#include "runtime.h"

#define RUNTIME_INSECURE_MAX 32

struct ctx {
	struct runtime_args args;
	const char *state_dir;
	const char *server,
	    *token;  /* $IMCACHE_SERVER, $IMCACHE_TOKEN: where attaches are reported */
	char **argv; /* the real runtime's: ours with argv[0] replaced */
	char *runtime;
	struct attach_lower_policy lower; /* $IMCACHE_LOWER_GRACE, $IMCACHE_LOWER_MAX */
	/* Where a cache the store lacks comes from: $IMCACHE_SERVER, $IMCACHE_REGISTRY_REF (and
	 * $IMCACHE_INSECURE_REGISTRY), as imc-attach's --server, --registry-ref. */
	struct dist_fetch_config fc;
	char *insecure_buf;
	const char *insecure[RUNTIME_INSECURE_MAX + 1];
};

static volatile sig_atomic_t child_pid;

/* A cache the store lacks, the attach's source: lazy in overlay mode (the lower on imc-attach
 * lazy-serve, as imc-attach attach does it), a whole fetch first in clone mode.  Without a
 * source the error says which setting would fix it. */
static int source_for(struct store *s, const struct ctx *c, struct attach_request *req,
		      imc_error *err)
{
	struct store_object_info info;
	struct dist_fetch_stats st;
	bool joined;

	if (!imc_name_valid(req->cache_id, 64) ||
	    store_stat(s, STORE_SNAPSHOT, req->cache_id, &info, NULL) == 0)
		return 0; /* malformed: the attach says so; local: nothing to fetch */
	if (!c->fc.server && !c->fc.registry_ref)
		return imc_err(err, ENOENT,
			       "cache %s: not in the local store (set IMCACHE_SERVER=URL of imcd, "
			       "or IMCACHE_REGISTRY_REF=REF of its artifact, for imc-runtime to "
			       "fetch it)",
			       req->cache_id);
	if (req->mode != ATTACH_MODE_CLONE) {
		req->lazy = &c->fc;
		return 0;
	}
	return attach_fetch(s, &c->fc, req->cache_id, &st, &joined, err);
}

/* Report a failure on stderr and, when the caller gave --log, in the runtime's log format. */
static int fail(const struct ctx *c, const imc_error *err)
{
	fprintf(stderr, "imc-runtime: %s\n", err->msg);
	if (c->args.log_file) {
		_cleanup_free_ char *line = NULL;
		_cleanup_close_ int fd =
		    open(c->args.log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (fd >= 0 &&
		    runtime_log_line(c->args.log_json, err->msg, imc_now(), &line, NULL) == 0)
			(void)imc_write_all(fd, line, strlen(line));
	}
	return 1;
}

static int fail_msg(const struct ctx *c, const char *msg)
{
	imc_error err;

	imc_err(&err, EINVAL, "%s", msg);
	return fail(c, &err);
}

static int exec_runtime(const struct ctx *c)
{
	imc_error err;

	execv(c->runtime, c->argv);
	imc_err_sys(&err, errno, "exec %s", c->runtime);
	fail(c, &err);
	return 127;
}

static void forward_signal(int sig)
{
	if (child_pid > 0)
		kill((pid_t)child_pid, sig);
}

/* Run the real runtime as a child, forwarding the signals a shell or containerd sends; returns
 * its exit status as a shell would (128 + signal). */
static int run_runtime(const struct ctx *c)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
	struct sigaction sa = {.sa_handler = forward_signal};
	imc_error err;
	pid_t pid;
	int status;

	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(sigs); i++)
		sigaction(sigs[i], &sa, NULL);
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		imc_err_sys(&err, errno, "fork");
		fail(c, &err);
		return 1;
	}
	if (pid == 0) {
		sa.sa_handler = SIG_DFL;
		for (size_t i = 0; i < IMC_ARRAY_SIZE(sigs); i++)
			sigaction(sigs[i], &sa, NULL);
		_exit(exec_runtime(c));
	}
	child_pid = pid;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			imc_err_sys(&err, errno, "wait for %s", c->runtime);
			fail(c, &err);
			return 1;
		}
	}
	child_pid = 0;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

static int open_store(const struct ctx *c, struct store **ret, imc_error *err)
{
	struct store_config cfg = {.state_dir = c->state_dir, .driver = "reflink"};
	int r = imc_priv_inject_from_env(err);

	return r < 0 ? r : store_open(&cfg, ret, err);
}

/* Detach the container's attach (if one is recorded) and drop the record. */
static int undo_attach(const struct ctx *c, imc_error *err)
{
	_cleanup_free_ char *dir = NULL;
	struct store *s = NULL;
	int r = runtime_record_read(c->state_dir, c->args.id, &dir, err);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	_cleanup_json_ json_t *state = NULL;
	struct attach_reporter reporter;

	if ((r = open_store(c, &s, err)) < 0)
		return r;
	/* $IMCACHE_SERVER: tell imcd (runc's flags are not ours to extend). */
	attach_reporter_init(&reporter, c->server, c->token);
	if (attach_reporter_enabled(&reporter))
		state = attach_report_lookup(s, dir);
	r = attach_detach_with(s, dir, &c->lower, err);
	store_close(s);
	if (r == 0)
		attach_report_state(&reporter, false, state, "imc-runtime");
	if (r == -ENOENT)
		r = 0; /* nothing attached there any more: only the record was left */
	if (r < 0)
		return r;
	return runtime_record_remove(c->state_dir, c->args.id, err);
}

/* Record, then attach; on failure neither the attach nor the record is left.  ret_state gets
 * the attach state. */
static int do_attach(const struct ctx *c, const struct runtime_cache *cache, json_t **ret_state,
		     imc_error *err)
{
	struct attach_request req = {.cache_id = cache->cache_id,
				     .image = cache->image,
				     .dir = cache->rootfs,
				     .data_dest = cache->data_dest,
				     .image_config = cache->use_config != RUNTIME_USE_CONFIG_NO,
				     .mode = cache->clone ? ATTACH_MODE_CLONE : ATTACH_MODE_OVERLAY,
				     .lower = &c->lower};
	_cleanup_close_ int rootfd = -1;
	struct store *s = NULL;
	int r;

	/* root.path without symlinks, before anything is recorded or mounted. */
	if ((r = runtime_rootfs_open(c->args.bundle, cache->root_path, &rootfd, err)) < 0)
		return imc_err_wrap(err, "container %s", c->args.id);
	if ((r = runtime_record_write(c->state_dir, c->args.id, cache, err)) < 0)
		return r;
	r = open_store(c, &s, err);
	if (r == 0) {
		struct attach_reporter reporter;

		if ((r = source_for(s, c, &req, err)) == 0)
			r = attach_cache_at(s, &req, rootfd, ret_state, err);
		store_close(s);
		attach_reporter_init(&reporter, c->server, c->token);
		if (r == 0 && ret_state)
			attach_report_state(&reporter, true, *ret_state, "imc-runtime");
	}
	if (r < 0)
		runtime_record_remove(c->state_dir, c->args.id, NULL);
	return r < 0 ? imc_err_wrap(err, "container %s", c->args.id) : 0;
}

/* imcache.io/use-image-config: the image's config (which the attach read from the snapshot's
 * /imcache.json) into config.json, rewritten in place. */
static int apply_image_config(const struct ctx *c, const struct runtime_cache *cache, json_t *state,
			      imc_error *err)
{
	_cleanup_close_ int rootfd = -1;
	json_t *config = json_object_get(state, "imageConfig");
	int r;

	if (!json_is_object(config))
		return imc_err(err, EINVAL, "%s: the attach returned no image config",
			       RUNTIME_ANNOTATION_USE_CONFIG);
	/* The attached rootfs: root.path again without symlinks (the mount is on its last
	 * component, which the lookup enters). */
	if ((r = runtime_rootfs_open(c->args.bundle, cache->root_path, &rootfd, err)) < 0)
		return r;
	if ((r = runtime_spec_apply_image(cache->spec, config, cache->use_config, rootfd, err)) < 0)
		return r;
	return runtime_spec_write(cache, err);
}

/* Attach, then adjust config.json; on failure nothing stays attached. */
static int prepare(const struct ctx *c, const struct runtime_cache *cache, imc_error *err)
{
	_cleanup_json_ json_t *state = NULL;
	int r = do_attach(c, cache, &state, err);

	if (r < 0 || cache->use_config == RUNTIME_USE_CONFIG_NO)
		return r;
	r = apply_image_config(c, cache, state, err);
	if (r < 0) {
		imc_error undo_err;
		if (undo_attach(c, &undo_err) < 0)
			return imc_err_wrap(err, "container %s (and detaching failed: %s)",
					    c->args.id, undo_err.msg);
		return imc_err_wrap(err, "container %s", c->args.id);
	}
	return 0;
}

static int cmd_create_or_run(const struct ctx *c)
{
	struct runtime_cache cache = {0};
	imc_error err = {0};
	bool keep;
	int r, status;

	r = runtime_cache_load(c->args.bundle, c->args.config, &cache, &err);
	if (r == -ENOENT)
		return exec_runtime(c); /* no config.json: the runtime says so its way */
	if (r < 0)
		return fail(c, &err);
	if (!cache.cache_id)
		return exec_runtime(c);
	if (!c->args.id) {
		runtime_cache_free(&cache);
		return fail_msg(c, "no container id on the command line");
	}
	r = prepare(c, &cache, &err);
	runtime_cache_free(&cache);
	if (r < 0)
		return fail(c, &err);
	status = run_runtime(c);
	/* The attach stays for delete while a container exists: after a create or a detached run
	 * that worked.  A failed create or a foreground run that ended leaves nothing behind. */
	keep = status == 0 && (c->args.verb == RUNTIME_CREATE || c->args.detach);
	if (!keep && undo_attach(c, &err) < 0) {
		fail(c, &err);
		return status ? status : 1;
	}
	return status;
}

static int cmd_delete(const struct ctx *c)
{
	_cleanup_free_ char *dir = NULL;
	imc_error err = {0};
	int r, status;

	if (!c->args.id || !imc_name_valid(c->args.id, RUNTIME_ID_MAX))
		return exec_runtime(c);
	r = runtime_record_read(c->state_dir, c->args.id, &dir, &err);
	if (r == -ENOENT)
		return exec_runtime(c);
	if (r < 0)
		return fail(c, &err);
	status = run_runtime(c);
	/* A delete that failed leaves the container (and so its rootfs) in place. */
	if (status == 0 && undo_attach(c, &err) < 0)
		return fail(c, &err);
	return status;
}

/* The commands the wrapper acts on, by verb (runtime.c finds it on the command line); the
 * others are the real runtime's alone. */
static int (*const commands[])(const struct ctx *c) = {
    [RUNTIME_OTHER] = exec_runtime,
    [RUNTIME_CREATE] = cmd_create_or_run,
    [RUNTIME_RUN] = cmd_create_or_run,
    [RUNTIME_DELETE] = cmd_delete,
};

/* $IMCACHE_REGISTRY_REF and $IMCACHE_INSECURE_REGISTRY (H:P[,H:P]...) into c->fc, beside the
 * $IMCACHE_SERVER and $IMCACHE_TOKEN read already. */
static int source_from_env(struct ctx *c, imc_error *err)
{
	const char *ref = secure_getenv("IMCACHE_REGISTRY_REF");
	const char *insecure = secure_getenv("IMCACHE_INSECURE_REGISTRY");
	size_t n = 0;

	c->fc = (struct dist_fetch_config){.server = c->server && *c->server ? c->server : NULL,
					   .token = c->token,
					   .registry_ref = ref && *ref ? ref : NULL,
					   .insecure_registries = c->insecure,
					   .list_in_use = attach_list,
					   .remove_snapshot = attach_snapshot_remove};
	if (!insecure || !*insecure)
		return 0;
	if (!(c->insecure_buf = strdup(insecure)))
		return imc_err(err, ENOMEM, "out of memory");
	for (char *save = NULL, *h = strtok_r(c->insecure_buf, ",", &save); h;
	     h = strtok_r(NULL, ",", &save)) {
		if (n == RUNTIME_INSECURE_MAX)
			return imc_err(err, EINVAL, "IMCACHE_INSECURE_REGISTRY: at most %d hosts",
				       RUNTIME_INSECURE_MAX);
		c->insecure[n++] = h;
	}
	return 0;
}

/* The real runtime must not be this program (installed as "runc", say): that would loop. */
static int check_not_self(const char *runtime, imc_error *err)
{
	char self[PATH_MAX], other[PATH_MAX];

	if (!realpath("/proc/self/exe", self) || !realpath(runtime, other))
		return 0; /* exec reports a missing runtime */
	if (strcmp(self, other) == 0)
		return imc_err(err, ELOOP, "the real runtime %s is imc-runtime itself", runtime);
	return 0;
}

/* imc-runtime --help alone: what the wrapper itself reads (every other use of --help is the real
 * runtime's, as are all the flags, which pass through unchanged). */
static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: imc-runtime [GLOBAL FLAGS] COMMAND [FLAGS] [ARGS]   (as runc or crun)\n"
	    "       imc-runtime -h|--help\n"
	    "\n"
	    "An OCI runtime wrapper: create and run of a bundle whose config.json carries the\n"
	    "annotation imcache.io/cache-id attach that cache's rootfs at root.path, then run the\n"
	    "real runtime with the same arguments; delete detaches.  Every other command, and\n"
	    "every bundle without the annotation, goes to the real runtime untouched.\n"
	    "\n"
	    "Flags it reads (and passes on):\n"
	    "  --log FILE, --log-format text|json   where and how its own errors are logged too\n"
	    "  --root DIR, --log-level L, --criu P, --rootless B, --cgroup-manager M\n"
	    "                        the real runtime's global flags, skipped to find COMMAND\n"
	    "  create|run --bundle DIR, -b DIR   the bundle (default: the current directory)\n"
	    "  create|run --config FILE, -f FILE   crun's config.json path\n"
	    "  create|run --console-socket S, --pid-file F, --preserve-fds N   skipped\n"
	    "  -h, --help            this help (alone; the real runtime's: crun --help)\n"
	    "\n"
	    "Environment: IMCACHE_RUNTIME (crun, runc or a path; default crun if in PATH, else\n"
	    "runc), IMCACHE_STATE_DIR (default %s), IMCACHE_SERVER and\n"
	    "IMCACHE_TOKEN (report attaches to imcd), IMCACHE_LOWER_GRACE and IMCACHE_LOWER_MAX\n"
	    "(see imc-attach --help).  A cache the store lacks comes from imcd at\n"
	    "IMCACHE_SERVER, or from the OCI artifact at IMCACHE_REGISTRY_REF (plain HTTP for\n"
	    "the registries in IMCACHE_INSECURE_REGISTRY, H:P[,H:P]...): lazily in overlay mode\n"
	    "(imc-attach lazy-serve, the imc-attach beside imc-runtime, serves it), whole\n"
	    "first in clone mode; without either, create fails.\n"
	    "Annotations: imcache.io/cache-id, imcache.io/image, imcache.io/data-mount,\n"
	    "imcache.io/use-image-config, imcache.io/container, imcache.io/attach-mode\n"
	    "(overlay, the default, or clone).\n",
	    STORE_DEFAULT_STATE_DIR);
}

int main(int argc, char **argv)
{
	_cleanup_free_ char **rt_argv = calloc((size_t)argc + 1, sizeof(char *));
	_cleanup_free_ char *runtime = NULL;
	/* runc's command line is not ours to extend: the environment is the channel, read here and
	 * with secure_getenv (a root-run wrapper). */
	const char *state_dir = secure_getenv("IMCACHE_STATE_DIR");
	struct ctx c = {.state_dir = state_dir && *state_dir ? state_dir : STORE_DEFAULT_STATE_DIR,
			.server = secure_getenv("IMCACHE_SERVER"),
			.token = secure_getenv("IMCACHE_TOKEN")};
	imc_error err = {0};
	int r;

	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (!rt_argv)
		return fail_msg(&c, "out of memory");
	if (runtime_parse_args(argc, argv, &c.args, &err) < 0)
		c.args = (struct runtime_args){.command_index = -1}; /* the runtime judges */
	if (runtime_pick(secure_getenv("IMCACHE_RUNTIME"), secure_getenv("PATH"), &runtime, &err) <
		0 ||
	    check_not_self(runtime, &err) < 0)
		return fail(&c, &err);
	if (attach_lower_policy_parse(secure_getenv("IMCACHE_LOWER_GRACE"),
				      secure_getenv("IMCACHE_LOWER_MAX"), &c.lower, &err) < 0)
		return fail(&c, &err);
	if (source_from_env(&c, &err) < 0)
		return fail(&c, &err);
	c.runtime = runtime;
	rt_argv[0] = runtime;
	for (int i = 1; i < argc; i++)
		rt_argv[i] = argv[i];
	c.argv = rt_argv;
	r = commands[c.args.verb](&c);
	free(c.insecure_buf);
	return r;
}
