/* The lazy lower's backend (docs/distribution.md, "Lazy attach"): a FUSE file system with one
 * file, the snapshot image, whose chunks are fetched when first read and by background threads,
 * written into a store volume that is sealed as the snapshot once every chunk is local. */
#define FUSE_USE_VERSION 31
#include <fcntl.h>
#include <fuse.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define LAZY_BG_DEFAULT	 4
#define LAZY_SOURCES_MAX 64

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
	bool sealer_started, have_volume;
	size_t bg_next;
};

/* ---- chunks ---------------------------------------------------------------------------------- */

static int source_take(struct dist_lazy *l, struct dist_source **ret, imc_error *err)
{
	pthread_mutex_lock(&l->lock);
	*ret = l->n_idle ? l->idle[--l->n_idle] : NULL;
	pthread_mutex_unlock(&l->lock);
	if (*ret)
		return 0;
	return dist_source_open(l->origin, ret, err);
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

/* Fetch slot's chunk and write it into the image (the slot is ours: SLOT_BUSY). */
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
	r = dist_source_chunk(src, e, len, buf, ret_bytes, err);
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

/* Make slot local: at once if nobody fetches it, else wait for the one who does.  background
 * leaves a slot that someone else fetches alone. */
static int ensure_slot(struct dist_lazy *l, size_t slot, bool background, imc_error *err)
{
	uint64_t bytes = 0;
	int r;

	pthread_mutex_lock(&l->lock);
	while (l->state[slot] == SLOT_BUSY && !background && !l->stop)
		pthread_cond_wait(&l->changed, &l->lock);
	if (l->state[slot] == SLOT_LOCAL || (background && l->state[slot] == SLOT_BUSY)) {
		pthread_mutex_unlock(&l->lock);
		return 0;
	}
	if (l->stop) {
		pthread_mutex_unlock(&l->lock);
		return imc_err(err, EIO, "cache %s: stopping", l->id);
	}
	l->state[slot] = SLOT_BUSY;
	pthread_mutex_unlock(&l->lock);
	r = fetch_slot(l, slot, &bytes, err);
	pthread_mutex_lock(&l->lock);
	l->state[slot] = r == 0 ? SLOT_LOCAL : SLOT_ABSENT;
	if (r == 0) {
		l->n_local++;
		*(background ? &l->st.background : &l->st.demand) += 1;
		*(background ? &l->st.bg_bytes : &l->st.demand_bytes) += bytes;
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
#else
static void test_hold(struct dist_lazy *l)
{
	(void)l;
}
#endif

static void *background(void *arg)
{
	struct dist_lazy *l = arg;
	imc_error err = {0};

	test_hold(l);
	for (;;) {
		size_t slot = __atomic_fetch_add(&l->bg_next, 1, __ATOMIC_RELAXED);
		if (slot >= l->n_slots || __atomic_load_n(&l->stop, __ATOMIC_RELAXED))
			break;
		if (ensure_slot(l, slot, true, &err) < 0)
			fprintf(stderr, "imc-attach: lazy %s: background: %s\n", l->id, err.msg);
	}
	return NULL;
}

/* ---- the seal -------------------------------------------------------------------------------- */

static int seal(struct dist_lazy *l, imc_error *err)
{
	struct store_dev snap = {.fd = -1};
	int r;

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
	for (uint64_t slot = (uint64_t)off / cs; slot * cs < end; slot++)
		if (ensure_slot(l, slot, false, &err) < 0) {
			fprintf(stderr, "imc-attach: lazy %s: read at %" PRIu64 ": %s\n", l->id,
				(uint64_t)off, err.msg);
			return -EIO;
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
	if (store_activate(l->s, STORE_VOLUME, l->vol, 0, &l->dev, err) < 0 ||
	    dist_fetch_zero_gaps(l->s, &l->ix, l->dev.fd, err) < 0) {
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
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->changed, NULL);
	pthread_rwlock_init(&l->rw, NULL);
	if (read_index(l, err) < 0 || plan_slots(l, err) < 0 || make_volume(l, err) < 0) {
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
	for (l->n_bg = 0; l->n_bg < n && l->n_bg < DIST_FETCH_PARALLEL_MAX; l->n_bg++)
		if (pthread_create(&l->bg[l->n_bg], NULL, background, l) != 0)
			break;
	if (fuse_set_signal_handlers(fuse_get_session(l->fuse)) != 0)
		return imc_err(err, EIO, "cache %s: cannot set signal handlers", l->id);
	r = fuse_loop_mt(l->fuse, 0);
	fuse_remove_signal_handlers(fuse_get_session(l->fuse));
	return r < 0 ? imc_err(err, EIO, "cache %s: the FUSE loop failed", l->id) : 0;
}

void dist_lazy_get_stats(struct dist_lazy *l, struct dist_lazy_stats *ret)
{
	pthread_mutex_lock(&l->lock);
	*ret = l->st;
	ret->local = l->n_local - (l->n_slots - l->n_data);
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
