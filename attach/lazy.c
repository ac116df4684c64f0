/* The lazy lower's server process (docs/distribution.md, "Lazy attach"): when the store lacks a
 * cache, the first overlay attach starts `imc-attach lazy-serve`, a FUSE server (dist/lazy.c)
 * that presents the snapshot image as lowers/<id>.fuse/image, and puts the shared lower on a
 * read-only loop device over that file.
 *
 *   lowers/<id>.lazy       the server's pid; it holds an exclusive flock on it while it lives,
 *                          so a lock that can be taken means a server that died
 *   lowers/<id>.fuse/      the FUSE mount point
 *   lowers/<id>.lazy.log   the server's stderr
 *
 * The server exits when its file system is unmounted: the lower's release unmounts it (after
 * the lower's ext4, which frees the loop device) and waits for the server's lock. */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/priv.h"
#include "../dist/dist.h"
#include "internal.h"

#define LAZY_STOP_WAIT_MS 30000 /* for the server to exit after its unmount, then SIGKILL */
#define LAZY_READY_MAX	  4096

/* The program that runs `lazy-serve`: imc-attach itself, unless another program (the
 * snapshotter) names it. */
static const char *lazy_program = "/proc/self/exe";

void attach_lazy_set_program(const char *path)
{
	lazy_program = path;
}

static void lazy_name(const char *id, const char *suffix, char ret[LAZY_NAME_MAX])
{
	snprintf(ret, LAZY_NAME_MAX, "%s%s", id, suffix);
}

int lazy_fuse_dir(struct store *s, const char *id, char ret[PATH_MAX], imc_error *err)
{
	char real[PATH_MAX];

	if (!realpath(attach_state_dir(s), real))
		return imc_err_sys(err, errno, "%s", attach_state_dir(s));
	if ((size_t)snprintf(ret, PATH_MAX, "%s/" ATTACH_LOWERS_DIR "/%s.fuse", real, id) >=
	    PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", real);
	return 0;
}

bool lazy_present(int ldir, const char *id)
{
	char name[LAZY_NAME_MAX];

	lazy_name(id, ".lazy", name);
	return faccessat(ldir, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

bool lazy_alive(int ldir, const char *id)
{
	char name[LAZY_NAME_MAX];
	_cleanup_close_ int fd = -1;

	lazy_name(id, ".lazy", name);
	fd = openat(ldir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return false;
	return flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK;
}

/* ---- the server (imc-attach lazy-serve) --------------------------------------------------------
 */

static void ready_say(int fd, const char *what)
{
	if (fd >= 0 && imc_write_all(fd, what, strlen(what)) < 0)
		return;
}

static int serve_lock(int ldir, const char *id, int *ret_fd, imc_error *err)
{
	char name[LAZY_NAME_MAX], pid[32];
	_cleanup_close_ int fd = -1;

	lazy_name(id, ".lazy", name);
	fd = openat(ldir, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "lazy server of %s: lock", id);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK
			   ? imc_err(err, EBUSY, "cache %s: a lazy server runs already", id)
			   : imc_err_sys(err, errno, "lazy server of %s: lock", id);
	snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, strlen(pid), 0) < 0)
		return imc_err_sys(err, errno, "lazy server of %s: pid", id);
	*ret_fd = steal_fd(&fd);
	return 0;
}

static void print_stats(struct dist_lazy *l, const char *id)
{
	struct dist_lazy_stats st;

	dist_lazy_get_stats(l, &st);
	fprintf(stderr,
		"imc-attach: lazy %s: %" PRIu64 " of %" PRIu64 " chunks local, %" PRIu64
		" fetched on demand (%" PRIu64 " bytes), %" PRIu64 " in the background (%" PRIu64
		" bytes; %" PRIu64 " of them prefetched from the startup trace, %" PRIu64
		" bytes), %" PRIu64 " failed, %s; startup trace: %" PRIu64 " used, %" PRIu64
		" recorded%s\n",
		id, st.local, st.chunks, st.demand, st.demand_bytes, st.background, st.bg_bytes,
		st.prefetched, st.prefetched_bytes, st.failed, st.sealed ? "sealed" : "not sealed",
		st.trace_used, st.trace_recorded, st.trace_sent ? " and sent" : "");
}

int attach_lazy_serve(struct store *s, const struct dist_fetch_config *fc, const char *id,
		      int ready_fd, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_close_ int lock = -1;
	char mnt[PATH_MAX], name[LAZY_NAME_MAX];
	struct dist_lazy *l = NULL;
	int r;

	if (ldir < 0 || !imc_name_valid(id, 64))
		r = ldir < 0 ? ldir : imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	else if ((r = serve_lock(ldir, id, &lock, err)) == 0 &&
		 (r = lazy_fuse_dir(s, id, mnt, err)) == 0) {
		lazy_name(id, ".fuse", name);
		if (mkdirat(ldir, name, 0700) < 0 && errno != EEXIST)
			r = imc_err_sys(err, errno, "%s", mnt);
	}
	if (r == 0 && (r = dist_lazy_open(s, fc, id, &l, err)) == 0)
		r = dist_lazy_mount(l, mnt, err);
	if (r < 0) {
		char msg[LAZY_READY_MAX];
		snprintf(msg, sizeof(msg), "error %d %s", -r, err->msg);
		ready_say(ready_fd, msg);
		dist_lazy_close(l);
		return r;
	}
	ready_say(ready_fd, "ok");
	close(ready_fd);
	fprintf(stderr, "imc-attach: lazy %s: serving %s/" DIST_LAZY_FILE "\n", id, mnt);
	r = dist_lazy_run(l, err);
	print_stats(l, id);
	dist_lazy_close(l);
	unlinkat(ldir, name, AT_REMOVEDIR);
	return r;
}

/* ---- starting and stopping it ------------------------------------------------------------------
 */

/* In the grandchild: a session of its own, stdio to /dev/null and the log, then exec. */
static void exec_server(int ldir, const char *id, int wfd, char *const argv[], char *const envp[])
{
	char name[LAZY_NAME_MAX];
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), log;

	lazy_name(id, ".lazy.log", name);
	log = openat(ldir, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	setsid();
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
	}
	if (log >= 0)
		dup2(log, 2);
	fcntl(wfd, F_SETFD, 0);
	execve(lazy_program, argv, envp);
	_exit(127);
}

struct argv_buf {
	char *v[48 + DIST_FETCH_PARALLEL_MAX];
	size_t n;
	char fd[16], par[16], size[32], window[16], sdl[24], rdl[24];
};

static void arg(struct argv_buf *a, const char *s)
{
	if (a->n + 1 < IMC_ARRAY_SIZE(a->v))
		a->v[a->n++] = (char *)s;
	a->v[a->n] = NULL;
}

static void server_argv(struct store *s, const struct dist_fetch_config *fc, const char *id,
			int wfd, struct argv_buf *a)
{
	arg(a, "imc-attach");
	arg(a, "--state-dir");
	arg(a, attach_state_dir(s));
	arg(a, "--driver");
	arg(a, store_driver_name(s));
	if (fc->server) {
		arg(a, "--server");
		arg(a, fc->server);
	}
	if (fc->registry_ref) {
		arg(a, "--registry-ref");
		arg(a, fc->registry_ref);
	}
	for (size_t i = 0; fc->insecure_registries && fc->insecure_registries[i]; i++) {
		arg(a, "--insecure-registry");
		arg(a, fc->insecure_registries[i]);
	}
	if (fc->parallel) {
		snprintf(a->par, sizeof(a->par), "%u", fc->parallel);
		arg(a, "--parallel");
		arg(a, a->par);
	}
	if (fc->cache_size) {
		snprintf(a->size, sizeof(a->size), "%" PRIu64, fc->cache_size);
		arg(a, "--cache-size");
		arg(a, a->size);
	}
	if (fc->no_trace || fc->trace_window_s) {
		snprintf(a->window, sizeof(a->window), "%u", fc->no_trace ? 0 : fc->trace_window_s);
		arg(a, "--trace-window");
		arg(a, a->window);
	}
	arg(a, "--source-order");
	arg(a, fc->registry_first ? "registry,server" : "server,registry");
	if (fc->source_deadline_ms) {
		snprintf(a->sdl, sizeof(a->sdl), "%" PRIu64, fc->source_deadline_ms / 1000);
		arg(a, "--source-deadline");
		arg(a, a->sdl);
	}
	if (fc->read_deadline_ms) {
		snprintf(a->rdl, sizeof(a->rdl), "%" PRIu64, fc->read_deadline_ms / 1000);
		arg(a, "--read-deadline");
		arg(a, a->rdl);
	}
	snprintf(a->fd, sizeof(a->fd), "%d", wfd);
	arg(a, "lazy-serve");
	arg(a, "--ready-fd");
	arg(a, a->fd);
	arg(a, id);
}

/* The server's environment: ours, with $IMCACHE_TOKEN set to the agent's token (--token or the
 * environment's; none: unset).  Not an argument: argv is there for every user's ps to read,
 * /proc/PID/environ only for the process's owner.  Built before the fork (no malloc after it);
 * free_env frees the array and the token's entry, not environ's strings. */
static int server_env(const char *token, char ***ret, char **ret_tok, imc_error *err)
{
	size_t n = 0, k = 0;
	char **env;

	*ret_tok = NULL;
	for (char **e = environ; e && *e; e++)
		n++;
	if (!(env = calloc(n + 2, sizeof(*env))))
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "IMCACHE_TOKEN=", sizeof("IMCACHE_TOKEN=") - 1) != 0)
			env[k++] = environ[i];
	if (token && *token) {
		if (asprintf(ret_tok, "IMCACHE_TOKEN=%s", token) < 0) {
			*ret_tok = NULL;
			free(env);
			return imc_err(err, ENOMEM, "out of memory");
		}
		env[k++] = *ret_tok;
	}
	env[k] = NULL;
	*ret = env;
	return 0;
}

static void free_env(char **env, char *tok)
{
	if (tok) {
		explicit_bzero(tok, strlen(tok));
		free(tok);
	}
	free(env);
}

/* Wait for the server's word: "ok", or "error ERRNO MESSAGE". */
static int read_ready(int rfd, const char *id, imc_error *err)
{
	char buf[LAZY_READY_MAX];
	size_t len = 0;
	ssize_t n;
	int code = 0, at = 0;

	while (len < sizeof(buf) - 1 &&
	       ((n = read(rfd, buf + len, sizeof(buf) - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
		len += n > 0 ? (size_t)n : 0;
	buf[len] = '\0';
	if (strcmp(buf, "ok") == 0)
		return 0;
	if (sscanf(buf, "error %d %n", &code, &at) == 1 && code > 0)
		return imc_err(err, code, "%s", buf + at);
	return imc_err(err, EIO, "cache %s: the lazy server died before it was ready (see %s)", id,
		       ATTACH_LOWERS_DIR "/<id>.lazy.log");
}

int lazy_start(struct store *s, int ldir, const struct dist_fetch_config *fc, const char *id,
	       imc_error *err)
{
	struct argv_buf a = {.n = 0};
	char **env = NULL, *tok = NULL;
	int p[2], status;
	pid_t child;

	if (server_env(fc->token, &env, &tok, err) < 0)
		return err->code;
	if (pipe2(p, O_CLOEXEC) < 0) {
		free_env(env, tok);
		return imc_err_sys(err, errno, "pipe");
	}
	server_argv(s, fc, id, p[1], &a);
	child = fork();
	if (child < 0) {
		free_env(env, tok);
		close(p[0]);
		close(p[1]);
		return imc_err_sys(err, errno, "fork");
	}
	if (child == 0) {
		/* The server is a grandchild: not ours to reap, and it outlives us. */
		if (fork() == 0)
			exec_server(ldir, id, p[1], a.v, env);
		_exit(0);
	}
	free_env(env, tok);
	close(p[1]);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	int r = read_ready(p[0], id, err);
	close(p[0]);
	return r;
}

static pid_t lazy_pid(int ldir, const char *id)
{
	char name[LAZY_NAME_MAX], buf[32] = {0};
	_cleanup_close_ int fd = -1;
	long pid = 0;

	lazy_name(id, ".lazy", name);
	fd = openat(ldir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0)
		pid = strtol(buf, NULL, 10);
	return pid > 1 ? (pid_t)pid : 0;
}

int lazy_stop(struct store *s, int ldir, const char *id, imc_error *err)
{
	char mnt[PATH_MAX], name[LAZY_NAME_MAX];
	int r;

	if ((r = lazy_fuse_dir(s, id, mnt, err)) < 0)
		return r;
	r = imc_priv_umount(mnt, MNT_DETACH, err);
	if (r < 0 && r != -EINVAL && r != -ENOENT)
		return imc_err_wrap(err, "the lazy server of cache %s", id);
	for (unsigned waited = 0; lazy_alive(ldir, id); waited += 10) {
		pid_t pid = lazy_pid(ldir, id);
		if (waited >= LAZY_STOP_WAIT_MS && pid > 0)
			kill(pid, SIGKILL);
		usleep(10000);
	}
	if ((r = dist_lazy_forget(s, id, err)) < 0)
		return imc_err_wrap(err, "the lazy server of cache %s", id);
	lazy_name(id, ".fuse", name);
	unlinkat(ldir, name, AT_REMOVEDIR);
	lazy_name(id, ".lazy", name);
	unlinkat(ldir, name, 0);
	return 0;
}

/* Reconcile: the attaches on a lazy lower whose server died are undone (their pods read EIO
 * anyway); the sweep then releases the lower. */
int lazy_reap(struct store *s, int ldir, const char *id, json_t *repairs, imc_error *err)
{
	char name[LAZY_NAME_MAX];
	_cleanup_close_ int rdir = -1;
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;

	if (!lazy_present(ldir, id) || lazy_alive(ldir, id))
		return 0;
	lazy_name(id, ".refs", name);
	rdir = openat(ldir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (rdir < 0 || !(d = fdopendir(steal_fd(&rdir))))
		return 0;
	while ((de = readdir(d))) {
		imc_error e = {0};
		if (de->d_name[0] == '.')
			continue;
		if (attach_detach(s, de->d_name, &e) == 0 && repairs)
			json_array_append_new(repairs,
					      json_sprintf("undid attach %s: the lazy server of "
							   "cache %s is gone",
							   de->d_name, id));
	}
	(void)err;
	return 0;
}
