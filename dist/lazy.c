/* The lazy lower's backend (docs/distribution.md, "Lazy attach"): a FUSE file system with one
 * file, the snapshot image, whose chunks are fetched when first read and by background threads,
 * written into a store volume that is sealed as the snapshot once every chunk is local.
 *
 * Over 800 lines: the slots' states, the reads, the background threads (reads first, the startup
 * trace, the walk), the seal and the FUSE operations share one lock and one condition, and are
 * kept in one file so that every wait on it is read beside every change it waits for. */
#define FUSE_USE_VERSION 31
#include <fcntl.h>
#include <fuse.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define LAZY_BG_DEFAULT	 4
#define LAZY_SOURCES_MAX 64
/* Reads first: the background fill in order starts no fetch while a read waits for a chunk nor
 * for LAZY_DEMAND_QUIET_NS after the last one (a starting pod reads in bursts between which it
 * computes); meanwhile the background threads fetch only the slots that follow a run of reads in
 * order (from the LAZY_RA_RUN-th slot of the run on; as many as there are threads), which that
 * reader wants next. */
#define LAZY_DEMAND_QUIET_NS (250ULL * 1000 * 1000)
#define LAZY_RA_RUN	     2

enum slot_state { SLOT_ABSENT, SLOT_BUSY, SLOT_LOCAL };

struct dist_lazy {
	struct store *s;
	const struct dist_fetch_config *cfg;
	char id[DIST_ID_MAX + 1];
	char vol[DIST_ID_MAX + 16];
	struct oci_chunk_index ix;
	char *index_buf;
	size_t index_len;
	struct dist_origin *origin;
	/* Per chunk slot (offset / chunk_size): the index entry (-1: all zeros) and its state. */
	ssize_t *entry;
	unsigned char *state;
	size_t n_slots, n_local, n_data;
	pthread_mutex_t lock;
	pthread_cond_t changed;
	bool stop, complete;
	/* The image: the volume's device, then, once sealed, the snapshot's (swapped under rw). */
	pthread_rwlock_t rw;
	struct store_dev dev;
	enum store_kind dev_kind;
	/* Idle connections, reused by reads and background threads. */
	struct dist_source *idle[LAZY_SOURCES_MAX];
	size_t n_idle;
	struct dist_lazy_stats st;
	struct fuse *fuse;
	bool mounted;
	pthread_t bg[DIST_FETCH_PARALLEL_MAX], sealer;
	unsigned n_bg;
	/* Reads first: the reads waiting for a chunk, when the last one ended (CLOCK_MONOTONIC ns),
	 * the slot it read, and the read-ahead slots [ra_next, ra_end) the background takes first.
	 */
	unsigned n_demand, demand_run;
	uint64_t demand_end;
	size_t demand_last, ra_next, ra_end;
	bool sealer_started, have_volume;
	size_t bg_next;
	/* Startup trace (docs/distribution.md): imcd's, whose slots the background threads take
	 * first (pf[pf_next..n_pf)), or the one recorded here while tracing: the data slots reads
	 * touched first, in order, sent to imcd when the window ends.  in_trace marks a slot of
	 * either. */
	size_t *pf, n_pf, pf_next, pf_done;
	size_t *rec, n_rec;
	unsigned char *in_trace;
	bool tracing;
	struct timespec trace_end; /* CLOCK_MONOTONIC, the clock of l->changed */
	pthread_t tracer;
	bool tracer_started;
};

/* ---- chunks ---------------------------------------------------------------------------------- */

static int source_take(struct dist_lazy *l, struct dist_source **ret, imc_error *err)
{
	pthread_mutex_lock(&l->lock);
	*ret = l->n_idle ? l->idle[--l->n_idle] : NULL;
	pthread_mutex_unlock(&l->lock);
	if (*ret)
		return 0;
	return dist_source_open(l->origin, NULL, &l->stop, ret, err);
}

static void source_give(struct dist_lazy *l, struct dist_source *src)
{
	pthread_mutex_lock(&l->lock);
	if (l->n_idle < LAZY_SOURCES_MAX) {
		l->idle[l->n_idle++] = src;
		src = NULL;
	}
	pthread_mutex_unlock(&l->lock);
	dist_source_close(src);
}

/* Fetch slot's chunk and write it into the image (the slot is ours: SLOT_BUSY); the fetch
 * tries the sources again with backoff up to the read deadline, then fails (the read: EIO). */
static int fetch_slot(struct dist_lazy *l, size_t slot, uint64_t *ret_bytes, imc_error *err)
{
	const struct oci_chunk_entry *e = &l->ix.chunks[l->entry[slot]];
	uint64_t len = oci_chunk_index_len(&l->ix, e->offset);
	_cleanup_free_ void *buf = malloc(l->ix.chunk_size);
	struct dist_source *src = NULL;
	int r;

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	if ((r = source_take(l, &src, err)) < 0)
		return r;
	r = dist_source_chunk(src, e, len, buf, dist_origin_read_until(l->origin), ret_bytes, err);
	if (r < 0) {
		dist_source_close(src); /* its connection may be broken */
		return r;
	}
	source_give(l, src);
	pthread_rwlock_rdlock(&l->rw);
	r = l->dev_kind == STORE_VOLUME ? dist_pwrite_full(l->dev.fd, buf, len, e->offset) : 0;
	pthread_rwlock_unlock(&l->rw);
	if (r < 0)
		return imc_err_sys(err, -r, "write chunk at offset %" PRIu64, e->offset);
	return 0;
}

/* The end of the read-ahead after slot: as many slots as there are background threads. */
static size_t ra_end_after(const struct dist_lazy *l, size_t slot)
{
	return slot + 1 + l->n_bg < l->n_slots ? slot + 1 + l->n_bg : l->n_slots;
}

/* A read needs slot, which is not local (under l->lock): the fill in order waits, and a read
 * that goes on from the previous one (the next slot, or a later one up to the end of its
 * read-ahead, which was local) extends the run; a run long enough moves the read-ahead past it. */
static void demand_begin(struct dist_lazy *l, size_t slot)
{
	bool in_order = slot == l->demand_last + 1 || (slot > l->demand_last && slot <= l->ra_end);

	l->n_demand++;
	/* Another read of the last slot, or of the one before (the kernel sends a file's pages in
	 * several requests at once, served by several FUSE threads in any order): the run goes on.
	 */
	if (slot + 1 >= l->demand_last && slot <= l->demand_last)
		return;
	l->demand_run = in_order ? l->demand_run + 1 : 0;
	l->demand_last = slot;
	if (l->demand_run >= LAZY_RA_RUN && l->n_bg) {
		l->ra_next = slot + 1;
		l->ra_end = ra_end_after(l, slot);
		pthread_cond_broadcast(&l->changed);
	}
}

/* A read of a local slot (under l->lock): inside the read-ahead of a run, the read-ahead moves on
 * with the reader, as many slots ahead of it as there are background threads. */
static void ra_follow(struct dist_lazy *l, size_t slot)
{
	size_t end = ra_end_after(l, slot);

	if (l->demand_run < LAZY_RA_RUN || slot <= l->demand_last || slot > l->ra_end)
		return;
	l->demand_last = slot;
	if (end <= l->ra_end)
		return;
	if (l->ra_next < slot + 1)
		l->ra_next = slot + 1;
	l->ra_end = end;
	pthread_cond_broadcast(&l->changed);
}

static void demand_done(struct dist_lazy *l)
{
	l->n_demand--;
	l->demand_end = imc_monotonic_ns();
}

/* Make slot local: at once if nobody fetches it, else wait for the one who does.  background
 * leaves a slot that someone else fetches alone. */
static int ensure_slot(struct dist_lazy *l, size_t slot, bool background, imc_error *err)
{
	uint64_t bytes = 0;
	bool demand = false;
	int r;

	pthread_mutex_lock(&l->lock);
	if (!background && l->state[slot] != SLOT_LOCAL) {
		demand = true;
		demand_begin(l, slot);
	} else if (!background) {
		ra_follow(l, slot);
	}
	while (l->state[slot] == SLOT_BUSY && !background && !l->stop)
		pthread_cond_wait(&l->changed, &l->lock);
	if (l->state[slot] == SLOT_LOCAL || (background && l->state[slot] == SLOT_BUSY)) {
		if (demand)
			demand_done(l);
		pthread_mutex_unlock(&l->lock);
		return 0;
	}
	if (l->stop) {
		if (demand)
			demand_done(l);
		pthread_mutex_unlock(&l->lock);
		return imc_err(err, EIO, "cache %s: stopping", l->id);
	}
	l->state[slot] = SLOT_BUSY;
	pthread_mutex_unlock(&l->lock);
	r = fetch_slot(l, slot, &bytes, err);
	pthread_mutex_lock(&l->lock);
	if (demand)
		demand_done(l);
	l->state[slot] = r == 0 ? SLOT_LOCAL : SLOT_ABSENT;
	if (r == 0) {
		l->n_local++;
		*(background ? &l->st.background : &l->st.demand) += 1;
		*(background ? &l->st.bg_bytes : &l->st.demand_bytes) += bytes;
		if (background && l->n_pf && l->in_trace[slot]) {
			l->st.prefetched++;
			l->st.prefetched_bytes += bytes;
		}
		l->complete = l->n_local == l->n_slots;
	} else {
		l->st.failed++;
	}
	pthread_cond_broadcast(&l->changed);
	pthread_mutex_unlock(&l->lock);
	return r;
}

#ifdef IMC_TESTING
/* Test builds: the background threads wait while the file $IMC_LAZY_HOLD_BACKGROUND does not
 * exist, so that a test sees a lower that is not complete yet. */
static void test_hold(struct dist_lazy *l)
{
	const char *hold = secure_getenv("IMC_LAZY_HOLD_BACKGROUND");

	while (hold && *hold && access(hold, F_OK) < 0 &&
	       !__atomic_load_n(&l->stop, __ATOMIC_RELAXED))
		usleep(20000);
}
/* ... and $IMC_LAZY_HOLD_WALK holds only the walk in order (not the startup trace's slots nor
 * the read-ahead): true while it does. */
static bool test_hold_walk(void)
{
	const char *hold = secure_getenv("IMC_LAZY_HOLD_WALK");

	return hold && *hold && access(hold, F_OK) < 0;
}
#else
static void test_hold(struct dist_lazy *l)
{
	(void)l;
}

static bool test_hold_walk(void)
{
	return false;
}
#endif

/* A read-ahead slot to fetch, or else whether the fill in order must wait for the reads, until
 * *ret_until (under l->lock). */
static bool ra_take(struct dist_lazy *l, size_t *ret, bool *ret_wait, struct timespec *ret_until)
{
	uint64_t quiet_end = l->demand_end + LAZY_DEMAND_QUIET_NS, now;

	while (l->ra_next < l->ra_end)
		if (l->state[l->ra_next++] == SLOT_ABSENT) {
			*ret = l->ra_next - 1;
			return true;
		}
	now = imc_monotonic_ns();
	*ret_wait = !l->stop && (l->n_demand || now < quiet_end);
	/* While a read waits: look again at the end of a quiet period, or when one begins. */
	if (l->n_demand)
		quiet_end = now + LAZY_DEMAND_QUIET_NS;
	*ret_until = imc_timespec_of_ns(quiet_end);
	return false;
}

/* The next slot of the fill in order, once the reads let it (or a read-ahead slot meanwhile). */
static bool walk_take(struct dist_lazy *l, size_t *ret)
{
	struct timespec until;
	bool wait = false, got;

	pthread_mutex_lock(&l->lock);
	while (!(got = ra_take(l, ret, &wait, &until)) && !l->stop && (wait || test_hold_walk())) {
		if (!wait) /* held by the test: look again in 20 ms */
			until = imc_timespec_of_ns(imc_monotonic_ns() + 20000000ULL);
		pthread_cond_timedwait(&l->changed, &l->lock, &until);
	}
	pthread_mutex_unlock(&l->lock);
	if (got)
		return true;
	*ret = __atomic_fetch_add(&l->bg_next, 1, __ATOMIC_RELAXED);
	return *ret < l->n_slots;
}

/* The next slot for a background thread: those of imcd's trace first, in its order (*ret_traced),
 * then the read-ahead of reads in order and every slot in order, the latter only while no read
 * waits (what is local by then is skipped).  False when none is left. */
static bool bg_take(struct dist_lazy *l, size_t *ret, bool *ret_traced)
{
	size_t k = __atomic_fetch_add(&l->pf_next, 1, __ATOMIC_RELAXED);

	*ret_traced = k < l->n_pf;
	if (*ret_traced) {
		*ret = l->pf[k];
		return true;
	}
	return walk_take(l, ret);
}

/* A slot of the trace is done with (fetched, found local, or failed): the last one says so. */
static void trace_slot_done(struct dist_lazy *l)
{
	if (__atomic_add_fetch(&l->pf_done, 1, __ATOMIC_RELAXED) != l->n_pf)
		return;
	pthread_mutex_lock(&l->lock);
	uint64_t n = l->st.prefetched;
	pthread_mutex_unlock(&l->lock);
	fprintf(stderr,
		"imc-attach: lazy %s: the startup trace's %zu chunks are done (%" PRIu64
		" prefetched, the rest read first)\n",
		l->id, l->n_pf, n);
}

static void *background(void *arg)
{
	struct dist_lazy *l = arg;
	imc_error err = {0};
	size_t slot;
	bool traced;

	test_hold(l);
	for (;;) {
		if (!bg_take(l, &slot, &traced) || __atomic_load_n(&l->stop, __ATOMIC_RELAXED))
			break;
		if (ensure_slot(l, slot, true, &err) < 0)
			fprintf(stderr, "imc-attach: lazy %s: background: %s\n", l->id, err.msg);
		if (traced)
			trace_slot_done(l);
	}
	return NULL;
}

/* ---- the startup trace ----------------------------------------------------------------------- */

/* A read touched slot: while tracing, the first touch of a data slot is recorded. */
static void trace_note(struct dist_lazy *l, size_t slot)
{
	if (!__atomic_load_n(&l->tracing, __ATOMIC_RELAXED) || l->entry[slot] < 0)
		return;
	pthread_mutex_lock(&l->lock);
	if (l->tracing && !l->in_trace[slot] && l->n_rec < DIST_TRACE_ENTRIES_MAX) {
		l->in_trace[slot] = 1;
		l->rec[l->n_rec++] = slot;
	}
	pthread_mutex_unlock(&l->lock);
}

/* The window ends (or the server does): what was recorded goes to imcd. */
static void trace_send(struct dist_lazy *l)
{
	_cleanup_free_ uint64_t *off = malloc((l->n_rec + 1) * sizeof(*off));
	struct dist_trace t = {.chunk_size = l->ix.chunk_size, .offsets = off, .n = l->n_rec};
	imc_error err = {0};
	int r;

	if (l->n_rec == 0) {
		fprintf(stderr, "imc-attach: lazy %s: no chunk read while tracing: no trace\n",
			l->id);
		return;
	}
	if (!off)
		return;
	for (size_t i = 0; i < l->n_rec; i++)
		off[i] = l->rec[i] * (uint64_t)l->ix.chunk_size;
	r = dist_trace_send(l->cfg, l->id, &t, &err);
	pthread_mutex_lock(&l->lock);
	l->st.trace_sent = r == 0;
	pthread_mutex_unlock(&l->lock);
	if (r == 0)
		fprintf(stderr, "imc-attach: lazy %s: startup trace of %zu chunks sent to imcd\n",
			l->id, l->n_rec);
	else
		fprintf(stderr, "imc-attach: lazy %s: %s (not sent)\n", l->id, err.msg);
}

static void *tracer(void *arg)
{
	struct dist_lazy *l = arg;
	int r = 0;

	pthread_mutex_lock(&l->lock);
	while (l->tracing && !l->stop && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&l->changed, &l->lock, &l->trace_end);
	l->tracing = false; /* l->rec is ours from here on */
	pthread_mutex_unlock(&l->lock);
	trace_send(l);
	return NULL;
}

/* End the window now (the server stops) and wait for the trace to be sent. */
static void trace_finish(struct dist_lazy *l)
{
	if (!l->tracer_started)
		return;
	pthread_mutex_lock(&l->lock);
	l->tracing = false;
	pthread_cond_broadcast(&l->changed);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->tracer, NULL);
	l->tracer_started = false;
}

/* Take imcd's trace: each entry that names a data slot not named before, in order; the rest
 * (another chunk size, an offset of no data chunk, a duplicate) is ignored. */
static void trace_plan(struct dist_lazy *l, const struct dist_trace *t)
{
	uint64_t cs = l->ix.chunk_size;

	if (t->chunk_size == cs && !(l->pf = malloc((t->n + 1) * sizeof(*l->pf))))
		return;
	for (size_t i = 0; t->chunk_size == cs && i < t->n; i++) {
		uint64_t slot = t->offsets[i] / cs;
		if (t->offsets[i] % cs || slot >= l->n_slots || l->entry[slot] < 0 ||
		    l->in_trace[slot])
			continue;
		l->in_trace[slot] = 1;
		l->pf[l->n_pf++] = (size_t)slot;
	}
	l->st.trace_used = l->n_pf;
	fprintf(stderr,
		"imc-attach: lazy %s: startup trace from imcd: %zu entries, %zu chunks fetched "
		"first\n",
		l->id, t->n, l->n_pf);
}

/* Record a trace for trace_window_s seconds from now. */
static int trace_start(struct dist_lazy *l, imc_error *err)
{
	unsigned secs = l->cfg->trace_window_s ? l->cfg->trace_window_s : DIST_TRACE_WINDOW_DEFAULT;
	size_t n = l->n_data < DIST_TRACE_ENTRIES_MAX ? l->n_data : DIST_TRACE_ENTRIES_MAX;

	if (l->cfg->no_trace || n == 0)
		return 0;
	if (!(l->rec = malloc(n * sizeof(*l->rec))))
		return imc_err(err, ENOMEM, "out of memory");
	clock_gettime(CLOCK_MONOTONIC, &l->trace_end);
	l->trace_end.tv_sec += secs;
	l->tracing = true;
	return 0;
}

/* With imcd as --server: its trace of the cache to fetch first, else (none, or it could not be
 * had: a trace is advisory) one recorded here. */
static int trace_load(struct dist_lazy *l, imc_error *err)
{
	struct dist_trace t = {0};
	imc_error e = {0};
	int r;

	if (!l->cfg->server)
		return 0;
	if (!(l->in_trace = calloc(l->n_slots + 1, 1)))
		return imc_err(err, ENOMEM, "out of memory");
	r = dist_trace_fetch(l->cfg, l->id, &t, &e);
	if (r == 0) {
		trace_plan(l, &t);
		dist_trace_free(&t);
		return 0;
	}
	if (r != -ENOENT)
		fprintf(stderr, "imc-attach: lazy %s: %s (none used)\n", l->id, e.msg);
	return trace_start(l, err);
}

/* ---- the seal -------------------------------------------------------------------------------- */

static int seal(struct dist_lazy *l, imc_error *err)
{
	struct store_dev snap = {.fd = -1};
	int r;

	/* Zeros where the volume has holes: what reads see does not change. */
	pthread_rwlock_rdlock(&l->rw);
	r = dist_fetch_zero_gaps(l->s, &l->ix, l->dev.fd, err);
	pthread_rwlock_unlock(&l->rw);
	if (r < 0)
		return r;
	pthread_rwlock_wrlock(&l->rw);
	r = fsync(l->dev.fd) < 0 ? imc_err_sys(err, errno, "volume %s", l->vol) : 0;
	if (r == 0)
		r = store_deactivate(l->s, STORE_VOLUME, l->vol, &l->dev, err);
	if (r == 0 && (r = store_seal(l->s, l->vol, l->id, err)) == 0)
		r = store_activate(l->s, STORE_SNAPSHOT, l->id, STORE_ACTIVATE_READ_ONLY, &snap,
				   err);
	if (r == 0) {
		l->dev = snap;
		l->dev_kind = STORE_SNAPSHOT;
	} else if (l->dev.fd < 0) {
		imc_error e2 = {0};
		/* Serve on from the volume, whatever failed. */
		store_activate(l->s, STORE_VOLUME, l->vol, 0, &l->dev, &e2);
	}
	pthread_rwlock_unlock(&l->rw);
	if (r == 0)
		r = dist_fetch_record(l->s, l->id, l->index_buf, l->index_len, err);
	return r;
}

static void *sealer(void *arg)
{
	struct dist_lazy *l = arg;
	imc_error err = {0};

	pthread_mutex_lock(&l->lock);
	while (!l->complete && !l->stop)
		pthread_cond_wait(&l->changed, &l->lock);
	bool go = l->complete && !l->stop;
	pthread_mutex_unlock(&l->lock);
	if (!go)
		return NULL;
	if (seal(l, &err) < 0) {
		fprintf(stderr, "imc-attach: lazy %s: seal: %s\n", l->id, err.msg);
		return NULL;
	}
	pthread_mutex_lock(&l->lock);
	l->st.sealed = true;
	pthread_cond_broadcast(&l->changed); /* for dist_lazy_wait_stats */
	pthread_mutex_unlock(&l->lock);
	fprintf(stderr, "imc-attach: lazy %s: every chunk is local; sealed as a snapshot\n", l->id);
	return NULL;
}

/* ---- the file system --------------------------------------------------------------------------
 */

static struct dist_lazy *ctx(void)
{
	return fuse_get_context()->private_data;
}

static bool is_image(const char *path)
{
	return path[0] == '/' && strcmp(path + 1, DIST_LAZY_FILE) == 0;
}

static int lz_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0500;
		st->st_nlink = 2;
		return 0;
	}
	if (!is_image(path))
		return -ENOENT;
	st->st_mode = S_IFREG | 0400;
	st->st_nlink = 1;
	st->st_size = (off_t)ctx()->ix.size;
	st->st_blocks = (blkcnt_t)((ctx()->ix.size + 511) / 512);
	return 0;
}

static int lz_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)off, (void)fi, (void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, DIST_LAZY_FILE, NULL, 0, 0);
	return 0;
}

static int lz_open(const char *path, struct fuse_file_info *fi)
{
	if (!is_image(path))
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->keep_cache = 1; /* the file never changes */
	return 0;
}

/* A read: every chunk it touches made local first (an error is EIO, never other bytes). */
static int lz_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct dist_lazy *l = ctx();
	uint64_t cs = l->ix.chunk_size, end;
	imc_error err = {0};
	int r;

	(void)path, (void)fi;
	if (off < 0 || (uint64_t)off >= l->ix.size)
		return 0;
	end = (uint64_t)off + size > l->ix.size ? l->ix.size : (uint64_t)off + size;
	for (uint64_t slot = (uint64_t)off / cs; slot * cs < end; slot++) {
		trace_note(l, slot);
		if (ensure_slot(l, slot, false, &err) < 0) {
			fprintf(stderr, "imc-attach: lazy %s: read at %" PRIu64 ": %s\n", l->id,
				(uint64_t)off, err.msg);
			return -EIO;
		}
	}
	pthread_rwlock_rdlock(&l->rw);
	r = dist_pread_full(l->dev.fd, buf, end - (uint64_t)off, (uint64_t)off);
	pthread_rwlock_unlock(&l->rw);
	return r < 0 ? -EIO : (int)(end - (uint64_t)off);
}

static const struct fuse_operations lazy_ops = {
    .getattr = lz_getattr,
    .readdir = lz_readdir,
    .open = lz_open,
    .read = lz_read,
};

/* ---- open, run, close -------------------------------------------------------------------------
 */

static int plan_slots(struct dist_lazy *l, imc_error *err)
{
	l->n_slots = (l->ix.size + l->ix.chunk_size - 1) / l->ix.chunk_size;
	l->entry = malloc((l->n_slots + 1) * sizeof(*l->entry));
	l->state = calloc(l->n_slots + 1, 1);
	if (!l->entry || !l->state)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < l->n_slots; i++) {
		l->entry[i] = -1;
		l->state[i] = SLOT_LOCAL; /* zeros: a hole, or zeros written */
	}
	for (size_t k = 0; k < l->ix.n_chunks; k++) {
		size_t slot = l->ix.chunks[k].offset / l->ix.chunk_size;
		l->entry[slot] = (ssize_t)k;
		l->state[slot] = SLOT_ABSENT;
	}
	l->n_data = l->ix.n_chunks;
	l->n_local = l->n_slots - l->n_data;
	l->st.chunks = l->n_data;
	return 0;
}

static int make_volume(struct dist_lazy *l, imc_error *err)
{
	struct store_object_info info;

	if (store_stat(l->s, STORE_SNAPSHOT, l->id, &info, NULL) == 0)
		return imc_err(err, EEXIST, "cache %s: already in the local store", l->id);
	if (dist_fetch_check_space(l->s, l->cfg, l->id, &l->ix, err) < 0)
		return err->code;
	store_remove(l->s, STORE_VOLUME, l->vol, NULL); /* what a dead server left */
	if (store_volume_create(l->s, l->vol, l->ix.size, err) < 0)
		return err->code;
	/* The zeros of the small gaps (fewer extents for the sealed snapshot, as a whole fetch
	 * writes them) go in at the seal: before the first read they cost seconds per GiB of a
	 * large sparse snapshot (32 GiB of a 64 GiB one took 20 s). */
	if (store_activate(l->s, STORE_VOLUME, l->vol, 0, &l->dev, err) < 0) {
		int r = err->code;
		store_deactivate(l->s, STORE_VOLUME, l->vol, &l->dev, NULL);
		store_remove(l->s, STORE_VOLUME, l->vol, NULL);
		return r;
	}
	l->dev_kind = STORE_VOLUME;
	l->have_volume = true;
	return 0;
}

/* The chunk index from the configured source. */
static int read_index(struct dist_lazy *l, imc_error *err)
{
	if (dist_origin_open(l->cfg, &l->origin, err) < 0)
		return imc_err_wrap(err, "cache %s", l->id);
	return dist_origin_index(l->origin, l->id, &l->ix, &l->index_buf, &l->index_len, err);
}

int dist_lazy_open(struct store *s, const struct dist_fetch_config *cfg, const char *id,
		   struct dist_lazy **ret, imc_error *err)
{
	struct dist_lazy *l;

	if (!imc_name_valid(id, DIST_ID_MAX))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	if (!cfg->server && !cfg->registry_ref)
		return imc_err(err, EINVAL, "cache %s: no source (--server or --registry-ref)", id);
	if (!(l = calloc(1, sizeof(*l))))
		return imc_err(err, ENOMEM, "out of memory");
	*l = (struct dist_lazy){.s = s, .cfg = cfg, .dev = {.fd = -1}};
	snprintf(l->id, sizeof(l->id), "%s", id);
	snprintf(l->vol, sizeof(l->vol), DIST_FETCH_VOLUME_PREFIX "%s", id);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the trace window's timed wait */
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->changed, &ca);
	pthread_condattr_destroy(&ca);
	pthread_rwlock_init(&l->rw, NULL);
	if (read_index(l, err) < 0 || plan_slots(l, err) < 0 || make_volume(l, err) < 0 ||
	    trace_load(l, err) < 0) {
		int r = err->code;
		dist_lazy_close(l);
		return r;
	}
	*ret = l;
	return 0;
}

int dist_lazy_mount(struct dist_lazy *l, const char *mountpoint, imc_error *err)
{
	char fsname[DIST_ID_MAX + 48];
	snprintf(fsname, sizeof(fsname), "-ofsname=imc-lazy-%s,subtype=imcache,ro", l->id);
	char *argv[] = {"imc-lazy", fsname, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(2, argv);

	l->fuse = fuse_new(&args, &lazy_ops, sizeof(lazy_ops), l);
	fuse_opt_free_args(&args);
	if (!l->fuse)
		return imc_err(err, EIO, "cache %s: cannot set up the FUSE file system", l->id);
	if (fuse_mount(l->fuse, mountpoint) != 0)
		return imc_err(err, EIO, "cache %s: cannot mount the FUSE file system at %s", l->id,
			       mountpoint);
	l->mounted = true;
	return 0;
}

int dist_lazy_run(struct dist_lazy *l, imc_error *err)
{
	unsigned n = l->cfg->parallel ? l->cfg->parallel : LAZY_BG_DEFAULT;
	int r;

	if (!l->mounted)
		return imc_err(err, EINVAL, "cache %s: not mounted", l->id);
	if (pthread_create(&l->sealer, NULL, sealer, l) != 0)
		return imc_err(err, EAGAIN, "cannot start the sealer thread");
	l->sealer_started = true;
	if (l->tracing && pthread_create(&l->tracer, NULL, tracer, l) == 0)
		l->tracer_started = true;
	else
		l->tracing = false; /* nobody would send it */
	for (l->n_bg = 0; l->n_bg < n && l->n_bg < DIST_FETCH_PARALLEL_MAX; l->n_bg++)
		if (pthread_create(&l->bg[l->n_bg], NULL, background, l) != 0)
			break;
	if (fuse_set_signal_handlers(fuse_get_session(l->fuse)) != 0)
		return imc_err(err, EIO, "cache %s: cannot set signal handlers", l->id);
	r = fuse_loop_mt(l->fuse, 0);
	fuse_remove_signal_handlers(fuse_get_session(l->fuse));
	trace_finish(l);
	return r < 0 ? imc_err(err, EIO, "cache %s: the FUSE loop failed", l->id) : 0;
}

void dist_lazy_get_stats(struct dist_lazy *l, struct dist_lazy_stats *ret)
{
	pthread_mutex_lock(&l->lock);
	*ret = l->st;
	ret->local = l->n_local - (l->n_slots - l->n_data);
	ret->trace_recorded = l->n_rec;
	pthread_mutex_unlock(&l->lock);
}

static bool stats_differ(const struct dist_lazy_stats *a, const struct dist_lazy_stats *b)
{
	return a->local != b->local || a->demand != b->demand || a->background != b->background ||
	       a->failed != b->failed || a->sealed != b->sealed;
}

bool dist_lazy_wait_stats(struct dist_lazy *l, const struct dist_lazy_stats *seen, const bool *quit,
			  struct dist_lazy_stats *ret)
{
	bool changed;

	pthread_mutex_lock(&l->lock);
	for (;;) {
		*ret = l->st;
		ret->local = l->n_local - (l->n_slots - l->n_data);
		changed = stats_differ(ret, seen);
		if (changed || l->stop || __atomic_load_n(quit, __ATOMIC_RELAXED))
			break;
		pthread_cond_wait(&l->changed, &l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return changed;
}

void dist_lazy_wake(struct dist_lazy *l)
{
	pthread_mutex_lock(&l->lock);
	pthread_cond_broadcast(&l->changed);
	pthread_mutex_unlock(&l->lock);
}

void dist_lazy_close(struct dist_lazy *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_broadcast(&l->changed);
	pthread_mutex_unlock(&l->lock);
	trace_finish(l);
	for (unsigned i = 0; i < l->n_bg; i++)
		pthread_join(l->bg[i], NULL);
	if (l->sealer_started)
		pthread_join(l->sealer, NULL);
	if (l->fuse) {
		if (l->mounted)
			fuse_unmount(l->fuse);
		fuse_destroy(l->fuse);
	}
	if (l->have_volume && l->dev.fd >= 0)
		store_deactivate(l->s, l->dev_kind, l->dev_kind == STORE_VOLUME ? l->vol : l->id,
				 &l->dev, NULL);
	if (l->have_volume && !l->st.sealed)
		store_remove(l->s, STORE_VOLUME, l->vol, NULL);
	for (size_t i = 0; i < l->n_idle; i++)
		dist_source_close(l->idle[i]);
	dist_origin_close(l->origin);
	oci_chunk_index_free(&l->ix);
	free(l->index_buf);
	free(l->entry);
	free(l->state);
	free(l->pf);
	free(l->rec);
	free(l->in_trace);
	pthread_rwlock_destroy(&l->rw);
	pthread_cond_destroy(&l->changed);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

int dist_lazy_forget(struct store *s, const char *id, imc_error *err)
{
	struct store_object_info info;
	char vol[DIST_ID_MAX + 16];

	snprintf(vol, sizeof(vol), DIST_FETCH_VOLUME_PREFIX "%s", id);
	if (store_stat(s, STORE_VOLUME, vol, &info, NULL) < 0)
		return 0;
	return store_remove(s, STORE_VOLUME, vol, err);
}
