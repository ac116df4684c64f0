/* The lazy lower's server process (docs/distribution.md, "Lazy attach"): when the store lacks a
 * cache, the first overlay attach starts `imc-attach lazy-serve`, a FUSE server (dist/lazy.c)
 * that presents the snapshot image as lowers/<id>.fuse/image, and puts the shared lower on a
 * read-only loop device over that file.
 *
 *   lowers/<id>.lazy       the server's pid; it holds an exclusive flock on it while it lives,
 *                          so a lock that can be taken means a server that died
 *   lowers/<id>.fuse/      the FUSE mount point
 *   lowers/<id>.lazy.log   the server's stderr
 *   lowers/<id>.lazy.stats its counts (JSON, replaced atomically as they change: chunks
 *                          local/total, bytes fetched on demand and in the background), which
 *                          `imc-attach lowers` and `list` show
 *
 * The server exits when its file system is unmounted: the lower's release unmounts it (after
 * the lower's ext4, which frees the loop device) and waits for the server's lock. */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
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

static void print_stats(const struct dist_lazy_stats *st, const char *id)
{
	fprintf(stderr,
		"imc-attach: lazy %s: %" PRIu64 " of %" PRIu64 " chunks local, %" PRIu64
		" fetched on demand (%" PRIu64 " bytes), %" PRIu64 " in the background (%" PRIu64
		" bytes; %" PRIu64 " of them prefetched from the startup trace, %" PRIu64
		" bytes), %" PRIu64 " failed, %s; startup trace: %" PRIu64 " used, %" PRIu64
		" recorded%s\n",
		id, st->local, st->chunks, st->demand, st->demand_bytes, st->background,
		st->bg_bytes, st->prefetched, st->prefetched_bytes, st->failed,
		st->sealed ? "sealed" : "not sealed", st->trace_used, st->trace_recorded,
		st->trace_sent ? " and sent" : "");
}

/* ---- the stats file (lowers/<id>.lazy.stats) ---------------------------------------------- */

#define LAZY_STATS_MAX 4096

static json_t *stats_json(const struct dist_lazy_stats *st)
{
	return json_pack("{s:I, s:I, s:{s:I, s:I}, s:{s:I, s:I}, s:I, s:b, s:I, s:I}", "chunks",
			 (json_int_t)st->chunks, "local", (json_int_t)st->local, "onDemand",
			 "chunks", (json_int_t)st->demand, "bytes", (json_int_t)st->demand_bytes,
			 "background", "chunks", (json_int_t)st->background, "bytes",
			 (json_int_t)st->bg_bytes, "failed", (json_int_t)st->failed, "sealed",
			 st->sealed, "pid", (json_int_t)getpid(), "updatedAt",
			 (json_int_t)imc_now());
}

struct stats_writer {
	struct dist_lazy *l;
	int ldir;
	char name[LAZY_NAME_MAX];
	bool stop;			/* atomic */
	struct dist_lazy_stats written; /* the thread's */
	pthread_t thread;
	bool started;
};

static void stats_write(struct stats_writer *w, const struct dist_lazy_stats *st)
{
	_cleanup_json_ json_t *j = stats_json(st);
	imc_error err = {0};

	if (j && imc_json_write_replace(w->ldir, w->name, j, &err) < 0)
		fprintf(stderr, "imc-attach: lazy: %s: %s\n", w->name, err.msg);
}

static void *stats_loop(void *arg)
{
	struct stats_writer *w = arg;
	struct dist_lazy_stats now;

	/* Unchanged: told to quit, or the server stops. */
	while (dist_lazy_wait_stats(w->l, &w->written, &w->stop, &now)) {
		stats_write(w, &now);
		w->written = now;
	}
	return NULL;
}

/* The first counts written now (before the attach is told), then a thread that rewrites them
 * as they change. */
static void stats_start(struct stats_writer *w, struct dist_lazy *l, int ldir, const char *id)
{
	*w = (struct stats_writer){.l = l, .ldir = ldir};
	lazy_name(id, ".lazy.stats", w->name);
	dist_lazy_get_stats(l, &w->written);
	stats_write(w, &w->written);
	w->started = pthread_create(&w->thread, NULL, stats_loop, w) == 0;
}

/* The thread ended, the last counts written and logged. */
static void stats_stop(struct stats_writer *w, const char *id)
{
	struct dist_lazy_stats st;

	__atomic_store_n(&w->stop, true, __ATOMIC_RELAXED);
	dist_lazy_wake(w->l);
	if (w->started)
		pthread_join(w->thread, NULL);
	dist_lazy_get_stats(w->l, &st);
	stats_write(w, &st);
	print_stats(&st, id);
}

json_t *lazy_stats_read(int ldir, const char *id)
{
	char name[LAZY_NAME_MAX];
	imc_error ignored;
	json_t *j = NULL;

	lazy_name(id, ".lazy.stats", name);
	if (imc_json_read_file(ldir, name, LAZY_STATS_MAX, &j, &ignored) < 0)
		return NULL;
	json_object_set_new(j, "serverAlive", json_boolean(lazy_alive(ldir, id)));
	return j;
}

json_t *attach_lazy_stats(struct store *s, const char *id)
{
	imc_error ignored;
	_cleanup_close_ int ldir = -1;

	if (!id || !imc_name_valid(id, 64) || (ldir = lower_open_dir(s, &ignored)) < 0)
		return NULL;
	return lazy_stats_read(ldir, id);
}

int attach_lazy_serve(struct store *s, const struct dist_fetch_config *fc, const char *id,
		      int ready_fd, imc_error *err)
{
	_cleanup_close_ int ldir = lower_open_dir(s, err);
	_cleanup_close_ int lock = -1;
	char mnt[PATH_MAX], name[LAZY_NAME_MAX];
	struct dist_lazy *l = NULL;
	struct stats_writer w;
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
	stats_start(&w, l, ldir, id);
	ready_say(ready_fd, "ok");
	close(ready_fd);
	fprintf(stderr, "imc-attach: lazy %s: serving %s/" DIST_LAZY_FILE "\n", id, mnt);
	r = dist_lazy_run(l, err);
	stats_stop(&w, id);
	dist_lazy_close(l);
	unlinkat(ldir, name, AT_REMOVEDIR);
	return r;
}

/* ---- starting and stopping it ------------------------------------------------------------------
 */

/* In the grandchild: a session of its own, stdio to /dev/null and the log, then exec. */
static void exec_server(int ldir, const char *id, int wfd, const char *exe, char *const argv[],
			char *const envp[])
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
	execve(exe, argv, envp);
	_exit(127);
}

static void arg(struct lazy_argv *a, const char *s)
{
	if (a->n + 1 < IMC_ARRAY_SIZE(a->v))
		a->v[a->n++] = (char *)s;
	a->v[a->n] = NULL;
}

/* The options of the agent that the server needs: the store's (its state dir, driver and driver
 * options) and the source's. */
TESTABLE void lazy_server_argv(const struct lazy_store_args *st, const struct dist_fetch_config *fc,
			       const char *id, int wfd, struct lazy_argv *a)
{
	const char *const *opts = st->driver_opts;

	a->n = 0;
	arg(a, "imc-attach");
	arg(a, "--state-dir");
	arg(a, st->state_dir);
	arg(a, "--driver");
	arg(a, st->driver);
	for (size_t i = 0; opts && opts[i]; i++) {
		arg(a, "--driver-opt");
		arg(a, opts[i]);
	}
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

/* The program to exec as the server: this one when it is imc-attach, else (imc-runtime) the
 * imc-attach installed beside it. */
static int server_exe(const char *id, char ret[PATH_MAX], imc_error *err)
{
	char self[PATH_MAX];
	const char *base, *slash;

	if (!realpath("/proc/self/exe", self))
		return imc_err_sys(err, errno, "/proc/self/exe");
	slash = strrchr(self, '/');
	base = slash ? slash + 1 : self;
	if (strcmp(base, "imc-attach") == 0) {
		snprintf(ret, PATH_MAX, "%s", self);
		return 0;
	}
	if ((size_t)snprintf(ret, PATH_MAX, "%.*s/imc-attach", (int)(base - self - 1), self) >=
	    PATH_MAX)
		return imc_err(err, ENAMETOOLONG, "%s: path too long", self);
	if (access(ret, X_OK) < 0)
		return imc_err_sys(err, errno,
				   "cache %s: the lazy server is imc-attach beside %s, but %s", id,
				   base, ret);
	return 0;
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
	struct lazy_argv a = {.n = 0};
	char **env = NULL, *tok = NULL, exe[PATH_MAX];
	int p[2], status;
	pid_t child;

	if (server_exe(id, exe, err) < 0 || server_env(fc->token, &env, &tok, err) < 0)
		return err->code;
	if (pipe2(p, O_CLOEXEC) < 0) {
		free_env(env, tok);
		return imc_err_sys(err, errno, "pipe");
	}
	lazy_server_argv(&(struct lazy_store_args){.state_dir = attach_state_dir(s),
						   .driver = store_driver_name(s),
						   .driver_opts = store_driver_opts(s)},
			 fc, id, p[1], &a);
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
			exec_server(ldir, id, p[1], exe, a.v, env);
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
	lazy_name(id, ".lazy.stats", name);
	unlinkat(ldir, name, 0);
	lazy_name(id, ".lazy", name);
	unlinkat(ldir, name, 0);
	return 0;
}

int lazy_join(struct store *s, int ldir, const char *id, bool *ret_joined)
{
	struct store_object_info info;

	while (lazy_alive(ldir, id)) {
		*ret_joined = true;
		if (store_stat(s, STORE_SNAPSHOT, id, &info, NULL) == 0)
			return 0;
		usleep(50000);
	}
	return 0;
}

/* "; N of M chunks were local" from the dead server's last stats file ("" when none). */
static void reap_figures(int ldir, const char *id, char *buf, size_t size)
{
	_cleanup_json_ json_t *st = lazy_stats_read(ldir, id);

	buf[0] = '\0';
	if (st)
		snprintf(buf, size,
			 "; %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT " chunks were local",
			 json_integer_value(json_object_get(st, "local")),
			 json_integer_value(json_object_get(st, "chunks")));
}

int lazy_reap(struct store *s, int ldir, const char *id, json_t *repairs, imc_error *err)
{
	char name[LAZY_NAME_MAX], figures[96];
	_cleanup_close_ int rdir = -1;
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;

	if (!lazy_present(ldir, id) || lazy_alive(ldir, id))
		return 0;
	reap_figures(ldir, id, figures, sizeof(figures));
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
							   "cache %s is gone%s",
							   de->d_name, id, figures));
	}
	(void)err;
	return 0;
}
