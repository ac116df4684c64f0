/* The chunk exporter (docs/distribution.md): one thread that exports a cache's chunk index once
 * the cache is Ready (a 2 GiB snapshot takes seconds to cut, hash and compress), and drops the
 * index and chunks of caches that are gone, in the order they were asked for.  Requests never
 * wait for it: GET …/index answers 202 while the export is queued or running.
 *
 * Jobs are a FIFO list; an export asked for twice is queued once, and a forget drops a queued
 * export of the same cache and stops the one running at its next chunk (the forget runs after
 * it: the chunks of an export in flight are in no index yet).  Stopping the exporter stops the
 * running export the same way, so neither a delete nor imcd's shutdown waits for a whole
 * snapshot to be cut.  A failed export is remembered (the
 * newest EXPORT_FAILURES) until a GET …/index reports it once. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "dist.h"

#define EXPORT_FAILURES 64
#define EXPORTER_NICE	19

enum job_kind { JOB_EXPORT, JOB_FORGET };

struct job {
	struct job *next;
	enum job_kind kind;
	char id[DIST_ID_MAX];
};

struct failure {
	char id[DIST_ID_MAX];
	imc_error err;
};

struct dist_exporter {
	struct dist_chunks *chunks;
	uint32_t chunk_size;  /* of new exports; 0: DIST_CHUNK_SIZE_DEFAULT */
	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;  /* a job was queued, or stopping */
	struct job *head, *tail;
	struct job running;			  /* its id is "" when idle */
	atomic_bool cancel_running;		  /* ends the export running now */
	struct failure failures[EXPORT_FAILURES]; /* a ring; id "" is a free slot */
	size_t next_failure;
	bool stopping;
	pthread_t thread;
	bool started;
	pthread_mutex_t hook_lock; /* held while on_forgotten runs */
	void (*on_forgotten)(void *ctx, const char *id);
	void *hook_ctx;
};

static bool queued_locked(struct dist_exporter *x, enum job_kind kind, const char *id)
{
	for (struct job *j = x->head; j; j = j->next)
		if (j->kind == kind && strcmp(j->id, id) == 0)
			return true;
	return false;
}

static int push_locked(struct dist_exporter *x, enum job_kind kind, const char *id, imc_error *err)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return imc_err(err, ENOMEM, "out of memory");
	j->kind = kind;
	snprintf(j->id, sizeof(j->id), "%s", id);
	if (x->tail)
		x->tail->next = j;
	else
		x->head = j;
	x->tail = j;
	pthread_cond_signal(&x->cond);
	return 0;
}

/* Unlink and free the queued exports of id. */
static void drop_exports_locked(struct dist_exporter *x, const char *id)
{
	struct job **p = &x->head, *prev = NULL;

	while (*p) {
		struct job *j = *p;

		if (j->kind == JOB_EXPORT && strcmp(j->id, id) == 0) {
			*p = j->next;
			free(j);
			continue;
		}
		prev = j;
		p = &j->next;
	}
	x->tail = prev;
}

static struct failure *failure_find_locked(struct dist_exporter *x, const char *id)
{
	for (size_t i = 0; i < EXPORT_FAILURES; i++)
		if (x->failures[i].id[0] && strcmp(x->failures[i].id, id) == 0)
			return &x->failures[i];
	return NULL;
}

int dist_exporter_queue(struct dist_exporter *x, const char *id, imc_error *err)
{
	struct failure *f;
	int r = 0;

	pthread_mutex_lock(&x->lock);
	if ((f = failure_find_locked(x, id)))
		f->id[0] = '\0'; /* asked again: try again */
	if (x->stopping)
		r = imc_err(err, ESHUTDOWN, "imcd is shutting down");
	else if (!(x->running.kind == JOB_EXPORT && strcmp(x->running.id, id) == 0) &&
		 !queued_locked(x, JOB_EXPORT, id))
		r = push_locked(x, JOB_EXPORT, id, err);
	pthread_mutex_unlock(&x->lock);
	return r;
}

int dist_exporter_forget(struct dist_exporter *x, const char *id, imc_error *err)
{
	struct failure *f;
	uint64_t freed = 0;
	int r = 0;

	pthread_mutex_lock(&x->lock);
	drop_exports_locked(x, id);
	if (x->running.kind == JOB_EXPORT && strcmp(x->running.id, id) == 0)
		atomic_store(&x->cancel_running, true); /* its snapshot is gone: no index */
	if ((f = failure_find_locked(x, id)))
		f->id[0] = '\0';
	if (!queued_locked(x, JOB_FORGET, id))
		r = push_locked(x, JOB_FORGET, id, err);
	pthread_mutex_unlock(&x->lock);
	if (r < 0) { /* not queued: now, in this thread (it waits for an export in flight) */
		imc_err_clear(err);
		r = dist_forget(x->chunks, id, &freed, err);
		if (r == 0 && freed)
			imc_info("cache %s: %llu bytes of chunks freed", id,
				 (unsigned long long)freed);
	}
	return r;
}

void dist_exporter_set_on_forgotten(struct dist_exporter *x, void (*fn)(void *ctx, const char *id),
				    void *ctx)
{
	if (!x)
		return;
	pthread_mutex_lock(&x->hook_lock);
	x->on_forgotten = fn;
	x->hook_ctx = ctx;
	pthread_mutex_unlock(&x->hook_lock);
}

int dist_exporter_state(struct dist_exporter *x, const char *id, imc_error *err)
{
	struct failure *f;
	int r = 0;

	pthread_mutex_lock(&x->lock);
	if ((x->running.kind == JOB_EXPORT && strcmp(x->running.id, id) == 0) ||
	    queued_locked(x, JOB_EXPORT, id)) {
		r = imc_err(err, EINPROGRESS, "cache %s: its chunk index is being exported", id);
	} else if ((f = failure_find_locked(x, id))) {
		if (err)
			*err = f->err;
		r = f->err.code ? f->err.code : -EIO;
		f->id[0] = '\0'; /* reported once; the next request queues it again */
	}
	pthread_mutex_unlock(&x->lock);
	return r;
}

static void remember_failure_locked(struct dist_exporter *x, const char *id, const imc_error *e)
{
	struct failure *f = &x->failures[x->next_failure];

	x->next_failure = (x->next_failure + 1) % EXPORT_FAILURES;
	snprintf(f->id, sizeof(f->id), "%s", id);
	f->err = *e;
	if (!f->err.code)
		f->err.code = -EIO;
}

static void run_job(struct dist_exporter *x, const struct job *j)
{
	imc_error e = {0};
	uint64_t freed = 0, t0 = imc_monotonic_ns();
	int r;

	if (j->kind == JOB_FORGET) {
		if (dist_forget(x->chunks, j->id, &freed, &e) < 0)
			imc_warn("cache %s: dropping its chunks: %s", j->id, e.msg);
		else if (freed)
			imc_info("cache %s: %llu bytes of chunks freed", j->id,
				 (unsigned long long)freed);
		pthread_mutex_lock(&x->hook_lock);
		if (x->on_forgotten)
			x->on_forgotten(x->hook_ctx, j->id);
		pthread_mutex_unlock(&x->hook_lock);
		return;
	}
	r = dist_export(x->chunks, j->id, x->chunk_size, &x->cancel_running, NULL, NULL, &e);
	if (r == -ECANCELED) {
		pthread_mutex_lock(&x->lock);
		bool stopping = x->stopping;
		pthread_mutex_unlock(&x->lock);
		imc_info("cache %s: chunk index export stopped (%s): %s", j->id,
			 stopping ? "imcd is stopping" : "the cache is gone", e.msg);
		return;
	}
	if (r == -ENOENT)
		imc_err(&e, ENOENT, "cache %s: no snapshot", j->id);
	if (r < 0) {
		imc_warn("cache %s: chunk index export failed: %s", j->id, e.msg);
		pthread_mutex_lock(&x->lock);
		remember_failure_locked(x, j->id, &e);
		pthread_mutex_unlock(&x->lock);
		return;
	}
	imc_info("cache %s: chunk index exported (%.1f s)", j->id,
		 (double)(imc_monotonic_ns() - t0) / 1e9);
}

/* The next job to run: any job while running, only forgets once stopping (the chunks of a
 * cache that is gone must go; an export can be asked for again after a restart). */
static struct job *take_locked(struct dist_exporter *x)
{
	struct job **p = &x->head, *prev = NULL;

	while (*p && x->stopping && (*p)->kind != JOB_FORGET) {
		prev = *p;
		p = &(*p)->next;
	}
	struct job *j = *p;
	if (!j)
		return NULL;
	*p = j->next;
	if (x->tail == j)
		x->tail = prev;
	return j;
}

static void *exporter_main(void *arg)
{
	struct dist_exporter *x = arg;

	/* Background work: at nice 19 the export (hashing every byte of a snapshot, its holes
	 * included: about a second per GiB) leaves the CPUs to requests and builds. */
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), EXPORTER_NICE) < 0)
		imc_warn("chunk index exporter: nice %d: %s", EXPORTER_NICE, strerror(errno));
	pthread_mutex_lock(&x->lock);
	for (;;) {
		struct job *j;

		while (!(j = take_locked(x)) && !x->stopping)
			pthread_cond_wait(&x->cond, &x->lock);
		if (!j)
			break;
		x->running = *j;
		atomic_store(&x->cancel_running, false);
		free(j);
		pthread_mutex_unlock(&x->lock);
		run_job(x, &x->running);
		pthread_mutex_lock(&x->lock);
		x->running.id[0] = '\0';
	}
	pthread_mutex_unlock(&x->lock);
	return NULL;
}

int dist_exporter_start(struct dist_chunks *cs, uint32_t chunk_size, struct dist_exporter **ret,
			imc_error *err)
{
	struct dist_exporter *x;
	int r;

	if (chunk_size && !dist_chunk_size_valid(chunk_size))
		return imc_err(err, EINVAL, "chunk size %" PRIu32 ": want a power of two in %u-%u",
			       chunk_size, OCI_CHUNK_SIZE_MIN, OCI_CHUNK_SIZE_MAX);
	x = calloc(1, sizeof(*x));
	if (!x)
		return imc_err(err, ENOMEM, "out of memory");
	x->chunks = cs;
	x->chunk_size = chunk_size;
	pthread_mutex_init(&x->lock, NULL);
	pthread_mutex_init(&x->hook_lock, NULL);
	pthread_cond_init(&x->cond, NULL);
	r = -pthread_create(&x->thread, NULL, exporter_main, x);
	if (r < 0) {
		dist_exporter_stop(x);
		return imc_err_sys(err, -r, "exporter thread");
	}
	x->started = true;
	*ret = x;
	return 0;
}

void dist_exporter_stop(struct dist_exporter *x)
{
	struct job *j;

	if (!x)
		return;
	pthread_mutex_lock(&x->lock);
	x->stopping = true;
	atomic_store(&x->cancel_running, true);
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->lock);
	/* The export running now stops at its next chunk (it is asked for again after a restart);
	 * a forget running now ends first. */
	if (x->started)
		pthread_join(x->thread, NULL);
	while ((j = x->head)) {
		x->head = j->next;
		free(j);
	}
	pthread_cond_destroy(&x->cond);
	pthread_mutex_destroy(&x->hook_lock);
	pthread_mutex_destroy(&x->lock);
	free(x);
}
