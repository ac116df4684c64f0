/* Fetching snapshots from imcd in chunks (docs/distribution.md).
 *
 * Over 800 lines: one fetch, from its plan to the sealed snapshot, in the order it runs; HTTP
 * itself is net/'s. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "internal.h"

#define LOCAL_DIR     "local" /* <state>/chunks/local/<id>.json: indexes of fetched snapshots */
#define USE_SUFFIX    ".use"  /* <state>/chunks/local/<id>.use: last use (mtime) */
#define VOLUME_PREFIX DIST_FETCH_VOLUME_PREFIX

#define FETCH_PARALLEL_DEFAULT 8
#define FETCH_ATTEMPTS	       4   /* per chunk, for dropped connections (each resumes) */
#define FETCH_INDEX_WAIT_S     600 /* how long a 202 to the index request is waited out */

/* ---- HTTP (net/) ------------------------------------------------------------------------- */

struct sink {
	struct imc_buf buf;
	unsigned retry_after; /* a 202's Retry-After, in seconds (0: none) */
};

/* The client of imcd: a stalled transfer is a dropped connection (resumed with a Range by
 * net/) rather than a wait; the server the operator named may be plain HTTP (its host and port
 * are the client's insecure host), or a unix: socket. */
static int imcd_client(const struct net_server *srv, struct net_client **ret, imc_error *err)
{
	char hostport[300] = "";
	const char *insecure[] = {hostport, NULL};

	if (!srv->unix_socket)
		net_url_plain_hostport(srv->base, hostport, sizeof(hostport));
	return net_client_new(
	    &(struct net_config){
		.insecure_hosts = hostport[0] ? insecure : NULL,
		.limits = {.connect_timeout_ms = 10000, .min_rate = 1024, .min_rate_window_s = 10},
		.retry = {.max_attempts = FETCH_ATTEMPTS}},
	    ret, err);
}

/* imcd as the fetcher reaches it: its client and where it is. */
struct imcd_link {
	struct net_client *net;
	struct net_server srv;
};

static void imcd_link_close(struct imcd_link *l)
{
	net_client_free(l->net);
	net_server_free(&l->srv);
}

/* The seconds of a Retry-After header (0 when absent or a date). */
static unsigned retry_after_of(const struct net_response *res)
{
	const char *h = net_response_header(res, "Retry-After", 0);
	unsigned long v;
	char *end = NULL;

	if (!h)
		return 0;
	v = strtoul(h, &end, 10);
	return end == h || *end ? 0 : v > FETCH_INDEX_WAIT_S ? FETCH_INDEX_WAIT_S : v;
}

static int imcd_link_open(const char *server, struct imcd_link *ret, imc_error *err)
{
	int r = net_server_parse(server, &ret->srv, err);

	if (r == 0)
		r = imcd_client(&ret->srv, &ret->net, err);
	return r < 0 ? imc_err_wrap(err, "--server") : 0;
}

static bool source_cancelled(void *ctx);

/* GET path of imcd into s: exactly size bytes when sized, at most max; cancel_ctx (a struct
 * dist_source, or NULL) may cancel it. */
static int http_get(struct net_client *net, const struct net_server *srv, struct net_conn *conn,
		    const char *path, bool sized, uint64_t size, uint64_t max, struct sink *s,
		    const char *token, unsigned *ret_attempts, const struct net_retry *retry,
		    void *cancel_ctx, imc_error *err)
{
	_cleanup_free_ char *url = net_server_url(srv, path);
	struct net_response res = {0};
	int r;

	if (!url)
		return imc_err(err, ENOMEM, "out of memory");
	r = net_perform(
	    net,
	    &(struct net_request){
		.url = url,
		.unix_socket = srv->unix_socket,
		.bearer = token,
		.sink = {.kind = NET_SINK_MEMORY, .sized = sized, .size = size, .max = max},
		.conn = conn,
		.retry = retry,
		.cancelled = cancel_ctx ? source_cancelled : NULL,
		.cancel_ctx = cancel_ctx},
	    &res, err);
	if (ret_attempts)
		*ret_attempts = res.attempts;
	imc_buf_free(&s->buf);
	s->retry_after = 0;
	if (r == 0 && res.status == 202) { /* imcd is still making it (an index being exported) */
		s->retry_after = retry_after_of(&res);
		r = imc_err(err, EINPROGRESS, "%s: not ready yet (202)", path);
	} else if (r == 0) {
		s->buf = (struct imc_buf){
		    .data = steal_pointer(&res.body), .len = res.body_len, .cap = res.body_len};
	}
	net_response_free(&res);
	return r;
}

/* ---- the plan ------------------------------------------------------------------------------ */

struct job {
	const struct oci_chunk_entry *e;
	uint64_t len;
	bool local; /* found in another local snapshot */
	const char *src_id;
	uint64_t src_offset;
};

struct fetch {
	struct store *s;
	const struct dist_fetch_config *cfg;
	const struct oci_chunk_index *ix;
	int dev_fd;
	struct job *jobs;
	size_t n_jobs;
	size_t next; /* next job to take (under lock) */
	pthread_mutex_t lock;
	bool failed;
	imc_error err; /* the first failure */
	struct dist_fetch_stats *st;
	struct dist_origin *o; /* each worker opens its own source of it */
};

static void fetch_fail(struct fetch *f, const imc_error *e)
{
	pthread_mutex_lock(&f->lock);
	if (!f->failed) {
		f->failed = true;
		f->err = *e;
	}
	pthread_mutex_unlock(&f->lock);
}

static struct job *take_job(struct fetch *f)
{
	struct job *j = NULL;

	pthread_mutex_lock(&f->lock);
	while (!f->failed && f->next < f->n_jobs && !j) {
		struct job *c = &f->jobs[f->next++];
		if (!c->local)
			j = c;
	}
	pthread_mutex_unlock(&f->lock);
	return j;
}

static void count(struct fetch *f, uint64_t *field, uint64_t n)
{
	__atomic_add_fetch(field, n, __ATOMIC_RELAXED);
	(void)f;
}

/* Fetch (verified), count and write one chunk. */
static int fetch_one(struct fetch *f, struct dist_source *src, const struct job *j, void *out,
		     imc_error *err)
{
	uint64_t bytes = 0;
	int r = dist_source_chunk(src, j->e, j->len, out, 0, &bytes, err);

	if (r < 0)
		return r;
	count(f, &f->st->fetched, 1);
	count(f, &f->st->fetched_bytes, bytes);
	r = dist_pwrite_full(f->dev_fd, out, j->len, j->e->offset);
	if (r < 0)
		return imc_err_sys(err, -r, "write chunk at offset %" PRIu64, j->e->offset);
	return 0;
}

static void *worker(void *arg)
{
	struct fetch *f = arg;
	_cleanup_free_ void *out = malloc(f->ix->chunk_size);
	struct dist_source *src = NULL;
	struct job *j;
	imc_error err = {0};

	if (!out) {
		imc_err(&err, ENOMEM, "out of memory");
		fetch_fail(f, &err);
		return NULL;
	}
	if (dist_source_open(f->o, f->st, &f->failed, &src, &err) < 0) {
		fetch_fail(f, &err);
		return NULL;
	}
	while ((j = take_job(f))) {
		if (fetch_one(f, src, j, out, &err) < 0) {
			fetch_fail(f, &err);
			break;
		}
	}
	dist_source_close(src);
	return NULL;
}

static int run_workers(struct fetch *f, imc_error *err)
{
	unsigned n = f->cfg->parallel ? f->cfg->parallel : FETCH_PARALLEL_DEFAULT;
	pthread_t th[DIST_FETCH_PARALLEL_MAX];
	unsigned started = 0;

	if (n > DIST_FETCH_PARALLEL_MAX)
		n = DIST_FETCH_PARALLEL_MAX;
	for (; started < n; started++)
		if (pthread_create(&th[started], NULL, worker, f) != 0)
			break;
	if (started == 0)
		return imc_err(err, EAGAIN, "cannot start fetch threads");
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (f->failed) {
		*err = f->err;
		return err->code;
	}
	return 0;
}

/* ---- local chunks: other fetched snapshots that hold the same content --------------------- */

static int local_dir(struct store *s, int *ret_fd, imc_error *err)
{
	_cleanup_free_ char *top = dist_dir(store_state_dir(s));
	_cleanup_free_ char *dir = top ? imc_path_join(top, LOCAL_DIR) : NULL;
	int fd;

	if (!dir)
		return imc_err(err, ENOMEM, "out of memory");
	if (imc_mkdir_p(dir, 0700, err) < 0)
		return err->code;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s", dir);
	*ret_fd = fd;
	return 0;
}

struct known {
	const char *digest; /* into ixs[i] */
	size_t src;	    /* index into the loaded indexes */
	uint64_t offset;
};

struct local_set {
	struct oci_chunk_index *ixs;
	size_t n_ixs;
	struct known *known;
	size_t n_known;
};

static void local_set_free(struct local_set *l)
{
	for (size_t i = 0; i < l->n_ixs; i++)
		oci_chunk_index_free(&l->ixs[i]);
	free(l->ixs);
	free(l->known);
}

static int cmp_known(const void *a, const void *b)
{
	return strcmp(((const struct known *)a)->digest, ((const struct known *)b)->digest);
}

static int load_one(struct store *s, int dfd, const char *name, struct local_set *l)
{
	char id[128];
	struct store_object_info info;
	_cleanup_free_ char *buf = NULL, *path = NULL;
	size_t len, n = strlen(name);
	struct oci_chunk_index *ix;
	imc_error e = {0};

	if (n < 6 || n - 5 >= sizeof(id) || strcmp(name + n - 5, ".json") != 0)
		return 0;
	snprintf(id, sizeof(id), "%.*s", (int)(n - 5), name);
	if (store_stat(s, STORE_SNAPSHOT, id, &info, &e) < 0)
		return 0; /* evicted or removed: its index is stale */
	if (asprintf(&path, "/proc/self/fd/%d/%s", dfd, name) < 0)
		return -ENOMEM;
	ix = &l->ixs[l->n_ixs];
	if (imc_read_file(path, OCI_INDEX_MAX, &buf, &len, &e) < 0 ||
	    oci_chunk_index_parse(buf, len, ix, &e) < 0 || strcmp(ix->cache_id, id) != 0) {
		oci_chunk_index_free(ix);
		return 0;
	}
	l->n_ixs++;
	return 0;
}

/* Every chunk digest the local snapshots hold, sorted for lookups. */
static int local_set_load(struct store *s, struct local_set *ret, imc_error *err)
{
	_cleanup_close_ int dfd = -1;
	_cleanup_dir_ DIR *d = NULL;
	size_t cap = 0, total = 0;
	struct dirent *de;

	*ret = (struct local_set){0};
	if (local_dir(s, &dfd, err) < 0)
		return err->code;
	d = fdopendir(dup(dfd));
	if (!d)
		return imc_err_sys(err, errno, "chunks/" LOCAL_DIR);
	while ((de = readdir(d))) {
		if (ret->n_ixs == cap) {
			cap = cap ? cap * 2 : 16;
			struct oci_chunk_index *g = realloc(ret->ixs, cap * sizeof(*g));
			if (!g)
				return imc_err(err, ENOMEM, "out of memory");
			ret->ixs = g;
		}
		if (load_one(s, dfd, de->d_name, ret) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < ret->n_ixs; i++)
		total += ret->ixs[i].n_chunks;
	ret->known = calloc(total + 1, sizeof(*ret->known));
	if (!ret->known)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < ret->n_ixs; i++)
		for (size_t k = 0; k < ret->ixs[i].n_chunks; k++)
			ret->known[ret->n_known++] =
			    (struct known){.digest = ret->ixs[i].chunks[k].digest,
					   .src = i,
					   .offset = ret->ixs[i].chunks[k].offset};
	qsort(ret->known, ret->n_known, sizeof(*ret->known), cmp_known);
	return 0;
}

static const struct known *local_find(const struct local_set *l, const char *digest)
{
	struct known key = {.digest = digest};
	return bsearch(&key, l->known, l->n_known, sizeof(key), cmp_known);
}

/* Copy the chunks of one local source snapshot (verified: a local disk can rot too). */
static int copy_local_from(struct fetch *f, const char *src_id, void *buf, imc_error *err)
{
	struct store_dev dev = {.fd = -1};
	char hex[IMC_SHA256_HEX_LEN + 1];
	int r = 0;

	if (store_activate(f->s, STORE_SNAPSHOT, src_id, STORE_ACTIVATE_READ_ONLY, &dev, err) < 0)
		return err->code;
	for (size_t i = 0; i < f->n_jobs && r == 0; i++) {
		struct job *j = &f->jobs[i];
		if (!j->local || strcmp(j->src_id, src_id) != 0)
			continue;
		r = dist_pread_full(dev.fd, buf, j->len, j->src_offset);
		if (r == 0 && imc_sha256_hex(buf, j->len, hex, err) == 0 &&
		    strcmp(hex, j->e->digest + 7) != 0)
			j->local = false; /* changed under us: fetch it instead */
		else if (r == 0 &&
			 (r = dist_pwrite_full(f->dev_fd, buf, j->len, j->e->offset)) == 0) {
			f->st->local++;
			f->st->local_bytes += j->len;
		}
		if (r < 0)
			r = imc_err_sys(err, -r, "copy local chunk of %s", src_id);
	}
	store_deactivate(f->s, STORE_SNAPSHOT, src_id, &dev, NULL);
	return r;
}

static int copy_local(struct fetch *f, imc_error *err)
{
	_cleanup_free_ void *buf = malloc(f->ix->chunk_size);

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < f->n_jobs; i++) {
		const char *src = f->jobs[i].src_id;
		bool first = f->jobs[i].local;
		for (size_t k = 0; k < i && first; k++)
			first = !(f->jobs[k].src_id && strcmp(f->jobs[k].src_id, src) == 0);
		if (first && copy_local_from(f, src, buf, err) < 0)
			return err->code;
	}
	return 0;
}

static int plan(struct fetch *f, const struct local_set *l, imc_error *err)
{
	f->jobs = calloc(f->ix->n_chunks + 1, sizeof(*f->jobs));
	if (!f->jobs)
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < f->ix->n_chunks; i++) {
		const struct oci_chunk_entry *e = &f->ix->chunks[i];
		const struct known *k = local_find(l, e->digest);
		f->jobs[i] = (struct job){.e = e, .len = oci_chunk_index_len(f->ix, e->offset)};
		if (k) {
			f->jobs[i].local = true;
			f->jobs[i].src_id = l->ixs[k->src].cache_id;
			f->jobs[i].src_offset = k->offset;
		}
	}
	f->n_jobs = f->ix->n_chunks;
	return 0;
}

/* ---- the index ----------------------------------------------------------------------------- */

/* GET the index into s: net/ tries dropped transfers again, and a 202 (imcd exports the index
 * in the background once the cache is Ready) is asked again after its Retry-After, for up to
 * FETCH_INDEX_WAIT_S. */
static int get_index_waiting(const struct dist_fetch_config *cfg, struct net_client *net,
			     const struct net_server *srv, const char *path, struct sink *s,
			     imc_error *err)
{
	uint64_t give_up = imc_monotonic_ns() + FETCH_INDEX_WAIT_S * 1000000000ULL;
	int r;

	for (;;) {
		r = http_get(net, srv, NULL, path, false, 0, OCI_INDEX_MAX, s, cfg->token, NULL,
			     NULL, NULL, err);
		if (r != -EINPROGRESS)
			return r;
		if (imc_monotonic_ns() + s->retry_after * 1000000000ULL >= give_up)
			return imc_err(err, ETIMEDOUT, "%s: still not ready after %d s", path,
				       FETCH_INDEX_WAIT_S);
		sleep(s->retry_after ? s->retry_after : 1);
	}
}

static int get_index(const struct dist_fetch_config *cfg, struct net_client *net,
		     const struct net_server *srv, const char *id, struct oci_chunk_index *ret,
		     char **ret_buf, size_t *ret_len, imc_error *err)
{
	struct sink s = {0};
	char path[160];
	int r;

	snprintf(path, sizeof(path), "/v1/imagecaches/%s/index", id);
	r = get_index_waiting(cfg, net, srv, path, &s, err);
	if (r == 0 && s.buf.len == 0)
		r = imc_err(err, EBADMSG, "%s: empty", path);
	if (r == 0 && oci_chunk_index_parse(s.buf.data, s.buf.len, ret, err) < 0)
		r = imc_err_wrap(err, "%s", path);
	if (r == 0 && strcmp(ret->cache_id, id) != 0)
		r = imc_err(err, EBADMSG, "%s: the index is of %s", path, ret->cache_id);
	if (r < 0) {
		imc_buf_free(&s.buf);
		return r;
	}
	*ret_buf = steal_pointer(&s.buf.data);
	*ret_len = s.buf.len;
	return 0;
}

/* The index from an OCI artifact: manifest -> config (the index). */
static int get_index_registry(const struct oci_registry_opts *o, const struct oci_ref *ref,
			      const char *id, struct oci_chunk_index *ret, char **ret_buf,
			      size_t *ret_len, imc_error *err)
{
	static const struct oci_artifact_kind snapshot = {.artifact_type =
							      OCI_SNAPSHOT_ARTIFACT_TYPE,
							  .config_type = OCI_SNAPSHOT_MT_INDEX,
							  .config_max = OCI_INDEX_MAX,
							  .what = "an imcache snapshot"};
	struct oci_registry *r = NULL;
	char *buf = NULL;
	size_t len = 0;
	int rc;

	rc = oci_registry_open(o, ref, &r, err);
	if (rc == 0)
		rc = oci_artifact_pull_config(r, ref, &snapshot, &buf, &len, err);
	if (rc == 0)
		rc = oci_chunk_index_parse(buf, len, ret, err);
	if (rc == 0 && strcmp(ret->cache_id, id) != 0)
		rc = imc_err(err, EBADMSG, "the artifact holds cache %s", ret->cache_id);
	if (r)
		oci_registry_close(r);
	if (rc < 0) {
		oci_chunk_index_free(ret);
		free(buf);
		return rc;
	}
	*ret_buf = buf;
	*ret_len = len;
	return 0;
}

/* ---- the origin and its sources (dist/internal.h; the order and the health: sources.c) ------ */

static const char *const kind_names[DIST_SOURCE_KINDS] = {"imcd", "the registry"};

struct dist_origin {
	const struct dist_fetch_config *cfg;
	struct oci_registry_opts ropts;
	struct oci_ref ref; /* --registry-ref, when have_ref */
	bool have_ref;
	struct imcd_link link; /* --server, when link.net */
	enum dist_source_kind order[DIST_SOURCE_KINDS];
	size_t n;
	uint64_t deadline_ns; /* --source-deadline */
	pthread_mutex_t lock; /* health, n_abandoned */
	struct dist_health health;
	uint64_t n_abandoned; /* sources abandoned (a whole fetch's statistics) */
};

void dist_origin_close(struct dist_origin *o)
{
	if (!o)
		return;
	if (o->have_ref)
		oci_ref_free(&o->ref);
	imcd_link_close(&o->link);
	pthread_mutex_destroy(&o->lock);
	free(o);
}

static void origin_order(struct dist_origin *o)
{
	const struct dist_fetch_config *cfg = o->cfg;

	if (cfg->server && !(cfg->registry_first && cfg->registry_ref))
		o->order[o->n++] = DIST_SOURCE_SERVER;
	if (cfg->registry_ref)
		o->order[o->n++] = DIST_SOURCE_REGISTRY;
	if (cfg->server && cfg->registry_first && cfg->registry_ref)
		o->order[o->n++] = DIST_SOURCE_SERVER;
}

int dist_origin_open(const struct dist_fetch_config *cfg, struct dist_origin **ret, imc_error *err)
{
	struct dist_origin *o = calloc(1, sizeof(*o));
	int r = 0;

	if (!o)
		return imc_err(err, ENOMEM, "out of memory");
	o->cfg = cfg;
	o->ropts = (struct oci_registry_opts){.insecure_registries = cfg->insecure_registries};
	o->deadline_ns =
	    (cfg->source_deadline_ms ? cfg->source_deadline_ms : DIST_SOURCE_DEADLINE_DEFAULT_MS) *
	    1000000ULL;
	pthread_mutex_init(&o->lock, NULL);
	origin_order(o);
	if (o->n == 0)
		r = imc_err(err, EINVAL, "no source (--server or --registry-ref)");
	if (r == 0 && cfg->registry_ref) {
		r = oci_ref_parse(cfg->registry_ref, &o->ref, err);
		o->have_ref = r == 0;
		if (r < 0)
			imc_err_wrap(err, "--registry-ref");
	}
	if (r == 0 && cfg->server)
		r = imcd_link_open(cfg->server, &o->link, err);
	if (r < 0) {
		dist_origin_close(o);
		return r;
	}
	*ret = o;
	return 0;
}

uint64_t dist_origin_read_until(const struct dist_origin *o)
{
	uint64_t ms =
	    o->cfg->read_deadline_ms ? o->cfg->read_deadline_ms : DIST_READ_DEADLINE_DEFAULT_MS;
	return imc_monotonic_ns() + ms * 1000000ULL;
}

/* The source to try now (-1: none left, see dist_health_pick). */
static int origin_pick(struct dist_origin *o, unsigned skip, bool again)
{
	pthread_mutex_lock(&o->lock);
	int k = dist_health_pick(&o->health, o->order, o->n, skip, again);
	pthread_mutex_unlock(&o->lock);
	return k;
}

static void origin_ok(struct dist_origin *o, enum dist_source_kind k)
{
	pthread_mutex_lock(&o->lock);
	dist_health_ok(&o->health, k);
	pthread_mutex_unlock(&o->lock);
}

/* Source k failed (err says how): true when that abandons it, which is logged the first time
 * when there is another source to go to. */
static bool origin_failed(struct dist_origin *o, enum dist_source_kind k, bool permanent,
			  const imc_error *err)
{
	pthread_mutex_lock(&o->lock);
	bool gone =
	    dist_health_failed(&o->health, k, imc_monotonic_ns(), o->deadline_ns, permanent);
	bool tell = gone && o->n > 1 && !o->health.told[k];
	o->n_abandoned += gone && o->n > 1;
	if (tell)
		o->health.told[k] = true;
	pthread_mutex_unlock(&o->lock);
	if (tell && permanent)
		fprintf(stderr, "imc-attach: source %s abandoned for %s: %s\n", kind_names[k],
			kind_names[k == DIST_SOURCE_SERVER], err->msg);
	else if (tell)
		fprintf(stderr,
			"imc-attach: source %s abandoned for %s, failing for %" PRIu64 " s: %s\n",
			kind_names[k], kind_names[k == DIST_SOURCE_SERVER],
			o->deadline_ns / 1000000000U, err->msg);
	return gone;
}

/* Sleep ms in short slices; false when cancelled meanwhile. */
static bool wait_ms(uint64_t ms, bool (*cancelled)(void *ctx), void *ctx)
{
	for (uint64_t t = 0; t < ms; t += 50) {
		if (cancelled && cancelled(ctx))
			return false;
		usleep((useconds_t)((ms - t < 50 ? ms - t : 50) * 1000));
	}
	return !(cancelled && cancelled(ctx));
}

static int index_from(struct dist_origin *o, enum dist_source_kind k, const char *id,
		      struct oci_chunk_index *ret, char **ret_buf, size_t *ret_len, imc_error *err)
{
	int r = k == DIST_SOURCE_REGISTRY
		    ? get_index_registry(&o->ropts, &o->ref, id, ret, ret_buf, ret_len, err)
		    : get_index(o->cfg, o->link.net, &o->link.srv, id, ret, ret_buf, ret_len, err);

	return r < 0 ? imc_err_wrap(err, "from %s", kind_names[k]) : 0;
}

int dist_origin_index(struct dist_origin *o, const char *id, struct oci_chunk_index *ret,
		      char **ret_buf, size_t *ret_len, imc_error *err)
{
	int r = imc_err(err, ENOENT, "no source");

	for (unsigned attempt = 0;; attempt++) {
		int k = origin_pick(o, 0, false);
		if (k < 0)
			return imc_err_wrap(err, "cache %s", id);
		r = index_from(o, (enum dist_source_kind)k, id, ret, ret_buf, ret_len, err);
		if (r == 0) {
			origin_ok(o, (enum dist_source_kind)k);
			return 0;
		}
		bool permanent = dist_error_permanent(r) || r == -EBADMSG;
		if (!origin_failed(o, (enum dist_source_kind)k, permanent, err))
			wait_ms(dist_retry_wait_ms(attempt, UINT64_MAX), NULL, NULL);
	}
}

/* One thread's way to the chunks: its kept connection to imcd, its registry client (opened at
 * its first use), and when the fetch in progress gives up. */
struct dist_source {
	struct dist_origin *o;
	struct dist_fetch_stats own, *st;
	const bool *stop;
	uint64_t until_ns; /* 0: never */
	struct net_conn *conn;
	struct oci_registry_opts ropts; /* the origin's, cancelled with this source's fetch */
	struct oci_registry *reg;
	struct sink s;
};

static bool source_cancelled(void *ctx)
{
	const struct dist_source *src = ctx;

	return (src->stop && __atomic_load_n(src->stop, __ATOMIC_RELAXED)) ||
	       (src->until_ns && imc_monotonic_ns() >= src->until_ns);
}

void dist_source_close(struct dist_source *src)
{
	if (!src)
		return;
	if (src->reg)
		oci_registry_close(src->reg);
	net_conn_free(src->conn);
	imc_buf_free(&src->s.buf);
	free(src);
}

int dist_source_open(struct dist_origin *o, struct dist_fetch_stats *st, const bool *stop,
		     struct dist_source **ret, imc_error *err)
{
	struct dist_source *src = calloc(1, sizeof(*src));

	if (!src)
		return imc_err(err, ENOMEM, "out of memory");
	src->o = o;
	src->st = st ? st : &src->own;
	src->stop = stop;
	src->ropts = o->ropts;
	src->ropts.cancelled = source_cancelled;
	src->ropts.cancel_ctx = src;
	if (o->link.net && !(src->conn = net_conn_new())) {
		dist_source_close(src);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = src;
	return 0;
}

/* Download one chunk's blob whole from imcd into src->s (net/ resumes a broken transfer where
 * it stopped).  For a lazy read (a deadline), one try: dist_source_chunk retries, so that the
 * source deadline and the read deadline are what bound the read. */
static int download_imcd(struct dist_source *src, const struct oci_chunk_entry *e, imc_error *err)
{
	char path[160];
	unsigned attempts = 0;
	int r;

	snprintf(path, sizeof(path), "/v1/chunks/%s", e->digest);
	static const struct net_retry one_try = {.max_attempts = 1};
	r = http_get(src->o->link.net, &src->o->link.srv, src->conn, path, true, e->csize, e->csize,
		     &src->s, src->o->cfg->token, &attempts, src->until_ns ? &one_try : NULL, src,
		     err);
	if (attempts > 1)
		__atomic_add_fetch(&src->st->retries, attempts - 1, __ATOMIC_RELAXED);
	return r;
}

/* The chunk's blob from the registry (the client verifies its size and digest). */
static int download_registry(struct dist_source *src, const struct oci_chunk_entry *e,
			     imc_error *err)
{
	const struct oci_descriptor d = {.media_type = (char *)OCI_SNAPSHOT_MT_CHUNK,
					 .digest = (char *)e->blob,
					 .size = (int64_t)e->csize};
	char *data = NULL;
	size_t len = 0;

	if (!src->reg && oci_registry_open(&src->ropts, &src->o->ref, &src->reg, err) < 0)
		return err->code;
	if (oci_registry_get_blob_mem(src->reg, &d, e->csize, &data, &len, err) < 0)
		return err->code;
	imc_buf_free(&src->s.buf);
	src->s.buf = (struct imc_buf){.data = data, .len = len, .cap = len};
	return 0;
}

/* The chunk from source k into out, verified: 0, -EBADMSG (it came corrupt) or the failure. */
static int chunk_from(struct dist_source *src, enum dist_source_kind k,
		      const struct oci_chunk_entry *e, uint64_t len, void *out, imc_error *err)
{
	int r =
	    k == DIST_SOURCE_REGISTRY ? download_registry(src, e, err) : download_imcd(src, e, err);

	if (r == 0)
		r = dist_chunk_decompress_verify(src->s.buf.data, src->s.buf.len, e->digest, out,
						 len, err);
	return r < 0 ? imc_err_wrap(err, "%s", kind_names[k]) : 0;
}

/* A fetch of e that will not come: why, naming the chunk. */
static int chunk_given_up(struct dist_source *src, const struct oci_chunk_entry *e,
			  unsigned corrupt, imc_error *err)
{
	bool all_corrupt = true;

	for (size_t i = 0; i < src->o->n; i++)
		all_corrupt = all_corrupt && (corrupt & (1U << src->o->order[i]));
	if (all_corrupt)
		return imc_err_wrap(err, "chunk at offset %" PRIu64 " (corrupt %s)", e->offset,
				    src->o->n > 1 ? "from every source" : "twice");
	if (src->until_ns && imc_monotonic_ns() >= src->until_ns) {
		char last[256];
		snprintf(last, sizeof(last), "%s", err->msg);
		return imc_err(err, ETIMEDOUT,
			       "chunk at offset %" PRIu64 ": no source answered within the read "
			       "deadline (last: %s)",
			       e->offset, last);
	}
	return imc_err_wrap(err, "chunk at offset %" PRIu64, e->offset);
}

int dist_source_chunk(struct dist_source *src, const struct oci_chunk_entry *e, uint64_t len,
		      void *out, uint64_t until_ns, uint64_t *ret_bytes, imc_error *err)
{
	struct dist_origin *o = src->o;
	unsigned corrupt = 0, n_corrupt[DIST_SOURCE_KINDS] = {0}, told = 0;
	int r = imc_err(err, ENOENT, "no source");

	src->until_ns = until_ns;
	for (unsigned attempt = 0;; attempt++) {
		int k = origin_pick(o, corrupt, until_ns != 0);
		if (k < 0 || source_cancelled(src))
			return chunk_given_up(src, e, corrupt, err);
		r = chunk_from(src, (enum dist_source_kind)k, e, len, out, err);
		if (r == 0) {
			origin_ok(o, (enum dist_source_kind)k);
			*ret_bytes = src->s.buf.len;
			return 0;
		}
		if (r == -EBADMSG) {
			/* From the other source, or once more from the only one. */
			__atomic_add_fetch(&src->st->refetched_corrupt, 1, __ATOMIC_RELAXED);
			if (++n_corrupt[k] >= (o->n > 1 ? 1U : 2U))
				corrupt |= 1U << k;
			fprintf(
			    stderr, "imc-attach: chunk at offset %" PRIu64 ": %s; fetching it %s\n",
			    e->offset, err->msg, o->n == 1 ? "once more" : "from the other source");
			continue;
		}
		__atomic_add_fetch(&src->st->retries, 1, __ATOMIC_RELAXED);
		if (until_ns && !told++)
			fprintf(stderr,
				"imc-attach: chunk at offset %" PRIu64
				": %s; trying again until the read deadline\n",
				e->offset, err->msg);
		if (origin_failed(o, (enum dist_source_kind)k, dist_error_permanent(r), err))
			continue; /* to the other source at once */
		uint64_t now = imc_monotonic_ns();
		uint64_t left = !until_ns	 ? UINT64_MAX
				: until_ns > now ? (until_ns - now) / 1000000
						 : 0;
		wait_ms(dist_retry_wait_ms(attempt, left), source_cancelled, src);
	}
}

/* ---- last use and LRU ----------------------------------------------------------------------- */

/* Record that snapshot id was used now (for the LRU). */
static int fetch_touch(struct store *s, const char *id, imc_error *err)
{
	_cleanup_close_ int dfd = -1, fd = -1;
	char name[128];

	if (local_dir(s, &dfd, err) < 0)
		return err->code;
	snprintf(name, sizeof(name), "%s" USE_SUFFIX, id);
	fd = openat(dfd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || futimens(fd, NULL) < 0)
		return imc_err_sys(err, errno, "last use of %s", id);
	return 0;
}

struct lru_item {
	char *id;
	int64_t used;
	uint64_t bytes;
};

static int cmp_lru(const void *a, const void *b)
{
	const struct lru_item *x = a, *y = b;
	return x->used < y->used ? -1 : x->used > y->used;
}

static bool attached(json_t *list, const char *id)
{
	size_t i;
	json_t *v;

	json_array_foreach(list, i, v)
	{
		const char *cid = json_string_value(json_object_get(v, "cacheId"));
		if (cid && strcmp(cid, id) == 0)
			return true;
	}
	return false;
}

static int64_t last_use(int dfd, const char *id)
{
	char name[128];
	struct stat st;

	snprintf(name, sizeof(name), "%s" USE_SUFFIX, id);
	return fstatat(dfd, name, &st, 0) < 0 ? 0 : (int64_t)st.st_mtim.tv_sec;
}

static void forget_local(int dfd, const char *id)
{
	char name[128];

	snprintf(name, sizeof(name), "%s.json", id);
	unlinkat(dfd, name, 0);
	snprintf(name, sizeof(name), "%s" USE_SUFFIX, id);
	unlinkat(dfd, name, 0);
}

/* Evict unattached snapshots, least recently used first, until the local snapshots plus need
 * bytes fit in limit (-ENOSPC when attached ones leave too little); ret_evicted counts them. */
static int fetch_evict(struct store *s, const struct dist_fetch_config *cfg, uint64_t need,
		       const char *keep, uint64_t *ret_evicted, imc_error *err)
{
	_cleanup_json_ json_t *list = NULL;
	_cleanup_close_ int dfd = -1;
	_cleanup_free_ struct lru_item *items = NULL;
	const uint64_t limit = cfg->cache_size;
	char **ids = NULL;
	size_t n = 0, n_items = 0;
	uint64_t used = 0;
	int r = 0;

	*ret_evicted = 0;
	if (limit == 0)
		return 0;
	if (local_dir(s, &dfd, err) < 0 ||
	    (cfg->list_in_use && cfg->list_in_use(s, &list, err) < 0) ||
	    store_list(s, STORE_SNAPSHOT, &ids, &n, err) < 0)
		return err->code;
	items = calloc(n + 1, sizeof(*items));
	for (size_t i = 0; items && i < n; i++) {
		struct store_object_info info;
		if (store_stat(s, STORE_SNAPSHOT, ids[i], &info, NULL) < 0)
			continue;
		used += info.allocated;
		if ((keep && strcmp(ids[i], keep) == 0) || attached(list, ids[i]))
			continue;
		items[n_items++] = (struct lru_item){
		    .id = ids[i], .used = last_use(dfd, ids[i]), .bytes = info.allocated};
	}
	if (!items) {
		store_list_free(ids, n);
		return imc_err(err, ENOMEM, "out of memory");
	}
	qsort(items, n_items, sizeof(*items), cmp_lru);
	for (size_t i = 0; i < n_items && used + need > limit && r == 0; i++) {
		r = cfg->remove_snapshot ? cfg->remove_snapshot(s, items[i].id, false, err)
					 : store_remove(s, STORE_SNAPSHOT, items[i].id, err);
		if (r == -EBUSY)
			r = 0; /* taken by an attach since the list: kept */
		else if (r == 0) {
			forget_local(dfd, items[i].id);
			used -= items[i].bytes < used ? items[i].bytes : used;
			(*ret_evicted)++;
		}
	}
	store_list_free(ids, n);
	if (r == 0 && used + need > limit)
		r = imc_err(err, ENOSPC,
			    "cache size %" PRIu64 ": %" PRIu64
			    " bytes held by attached snapshots, %" PRIu64 " more needed",
			    limit, used, need);
	return r;
}

/* ---- the whole fetch ------------------------------------------------------------------------ */

static uint64_t data_bytes(const struct oci_chunk_index *ix)
{
	uint64_t n = 0;

	for (size_t i = 0; i < ix->n_chunks; i++)
		n += oci_chunk_index_len(ix, ix->chunks[i].offset);
	return n;
}

static int check_space(struct store *s, const struct dist_fetch_config *cfg, const char *id,
		       const struct oci_chunk_index *ix, struct dist_fetch_stats *st,
		       imc_error *err)
{
	struct store_usage u;
	uint64_t need = data_bytes(ix);

	/* Before any eviction: a snapshot that cannot fit costs the store nothing. */
	if (cfg->cache_size && need > cfg->cache_size)
		return imc_err(err, ENOSPC,
			       "snapshot %s: %" PRIu64
			       " bytes of data, more than the cache size %" PRIu64,
			       id, need, cfg->cache_size);
	if (fetch_evict(s, cfg, need, id, &st->evicted, err) < 0)
		return imc_err_wrap(err, "make room for %s", id);
	if (store_usage(s, &u, err) < 0)
		return err->code;
	if (need > u.free)
		return imc_err(err, ENOSPC,
			       "snapshot %s: %" PRIu64 " bytes of data, the pool has %" PRIu64
			       " free",
			       id, need, u.free);
	return 0;
}

/* Fill the activated volume: local copies first, then the network. */
/* Zero chunks stay holes, but a driver may ask for fewer holes (store_fill_hints: the reflink
 * driver's seal rewrites a volume with more holes between its data into few extents, a copy of
 * all of it).  So the keep largest gaps between data chunks stay holes and the smaller ones are
 * written as zeros here, locally: the seal then has nothing to compact. */

static int cmp_gap_desc(const void *a, const void *b)
{
	uint64_t x = ((const struct dist_gap *)a)->end - ((const struct dist_gap *)a)->start;
	uint64_t y = ((const struct dist_gap *)b)->end - ((const struct dist_gap *)b)->start;
	return x < y ? 1 : x > y ? -1 : 0;
}

TESTABLE int fetch_small_gaps(const struct oci_chunk_index *ix, size_t keep, struct dist_gap **ret,
			      size_t *ret_n)
{
	struct dist_gap *g = calloc(ix->n_chunks + 1, sizeof(*g));
	size_t n = 0;

	if (!g)
		return -ENOMEM;
	/* Only gaps between data count: before the first and after the last there is no data. */
	for (size_t i = 1; i < ix->n_chunks; i++) {
		uint64_t end_prev = ix->chunks[i - 1].offset + ix->chunk_size;
		if (ix->chunks[i].offset > end_prev)
			g[n++] = (struct dist_gap){end_prev, ix->chunks[i].offset};
	}
	if (n <= keep) {
		free(g);
		*ret = NULL;
		*ret_n = 0;
		return 0;
	}
	qsort(g, n, sizeof(*g), cmp_gap_desc);
	memmove(g, g + keep, (n - keep) * sizeof(*g));
	*ret = g;
	*ret_n = n - keep;
	return 0;
}

static int write_zero_gaps(struct fetch *f, imc_error *err)
{
	_cleanup_free_ struct dist_gap *g = NULL;
	_cleanup_free_ void *zero = NULL;
	struct store_fill_hints hints;
	size_t n = 0;
	int r;

	store_fill_hints(f->s, &hints);
	if (!hints.fill_gaps)
		return 0; /* thin: zeros would take pool blocks, and its seal does not copy */
	if (fetch_small_gaps(f->ix, hints.keep_holes, &g, &n) < 0 ||
	    !(zero = calloc(1, f->ix->chunk_size)))
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		for (uint64_t off = g[i].start; off < g[i].end; off += f->ix->chunk_size)
			if ((r = dist_pwrite_full(f->dev_fd, zero, f->ix->chunk_size, off)) < 0)
				return imc_err_sys(err, -r, "write zeros at %" PRIu64, off);
	return 0;
}

static int fill(struct fetch *f, const struct local_set *l, imc_error *err)
{
	if (plan(f, l, err) < 0 || copy_local(f, err) < 0 || write_zero_gaps(f, err) < 0 ||
	    run_workers(f, err) < 0)
		return err->code;
	if (fsync(f->dev_fd) < 0)
		return imc_err_sys(err, errno, "write snapshot %s", f->ix->cache_id);
	return 0;
}

static int save_local_index(struct store *s, const char *id, const char *buf, size_t len,
			    imc_error *err)
{
	_cleanup_close_ int dfd = -1, fd = -1;
	char name[128], tmp[160];
	int r;

	if (local_dir(s, &dfd, err) < 0)
		return err->code;
	snprintf(name, sizeof(name), "%s.json", id);
	snprintf(tmp, sizeof(tmp), ".%s.json.tmp", id);
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "local index of %s", id);
	r = imc_write_all(fd, buf, len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dfd, tmp, dfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dfd, tmp, 0);
		return imc_err_sys(err, -r, "local index of %s", id);
	}
	return 0;
}

static int fetch_into_volume(struct store *s, struct dist_origin *o,
			     const struct oci_chunk_index *ix, const char *vol,
			     struct dist_fetch_stats *st, imc_error *err)
{
	_cleanup_(local_set_free) struct local_set l = {0};
	struct store_dev dev = {.fd = -1};
	struct fetch f = {.s = s, .cfg = o->cfg, .ix = ix, .st = st, .o = o};
	int r;

	if (local_set_load(s, &l, err) < 0)
		return err->code;
	if (store_volume_create(s, vol, ix->size, err) < 0)
		return err->code;
	if (store_activate(s, STORE_VOLUME, vol, 0, &dev, err) < 0)
		return err->code;
	pthread_mutex_init(&f.lock, NULL);
	f.dev_fd = dev.fd;
	r = fill(&f, &l, err);
	pthread_mutex_destroy(&f.lock);
	free(f.jobs);
	if (store_deactivate(s, STORE_VOLUME, vol, &dev, r < 0 ? NULL : err) < 0 && r == 0)
		r = err->code;
	return r;
}

static int fetch_with_index(struct store *s, struct dist_origin *o, const char *id,
			    const struct oci_chunk_index *ix, const char *buf, size_t len,
			    struct dist_fetch_stats *st, imc_error *err)
{
	const struct dist_fetch_config *cfg = o->cfg;
	char vol[128];
	int r;

	st->chunks = (ix->size + ix->chunk_size - 1) / ix->chunk_size;
	st->zero_chunks = st->chunks - ix->n_chunks;
	if (check_space(s, cfg, id, ix, st, err) < 0)
		return err->code;
	snprintf(vol, sizeof(vol), VOLUME_PREFIX "%s", id);
	store_remove(s, STORE_VOLUME, vol, NULL); /* what a crashed fetch left */
	r = fetch_into_volume(s, o, ix, vol, st, err);
	if (r == 0)
		r = store_seal(s, vol, id, err);
	if (r < 0) {
		store_remove(s, STORE_VOLUME, vol, NULL);
		return imc_err_wrap(err, "fetch cache %s", id);
	}
	return dist_fetch_record(s, id, buf, len, err);
}

int dist_fetch_record(struct store *s, const char *id, const char *buf, size_t len, imc_error *err)
{
	if (save_local_index(s, id, buf, len, err) < 0 || fetch_touch(s, id, err) < 0)
		return err->code;
	return 0;
}

int dist_fetch_snapshot(struct store *s, const struct dist_fetch_config *cfg, const char *id,
			struct dist_fetch_stats *ret_stats, imc_error *err)
{
	_cleanup_(oci_chunk_index_free) struct oci_chunk_index ix = {0};
	_cleanup_free_ char *buf = NULL;
	struct store_object_info info;
	struct dist_fetch_stats st = {0};
	uint64_t t0 = imc_monotonic_ns();
	struct dist_origin *o = NULL;
	size_t len = 0;
	int r;

	if (!imc_name_valid(id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", id);
	if (store_stat(s, STORE_SNAPSHOT, id, &info, NULL) == 0)
		return fetch_touch(s, id, err);
	if (!cfg->server && !cfg->registry_ref)
		return imc_err(err, ENOENT, "cache %s: not in the local store (and no --server)",
			       id);
	if (dist_origin_open(cfg, &o, err) < 0)
		r = imc_err_wrap(err, "cache %s", id);
	else if ((r = dist_origin_index(o, id, &ix, &buf, &len, err)) == 0)
		r = fetch_with_index(s, o, id, &ix, buf, len, &st, err);
	st.abandoned = o ? o->n_abandoned : 0;
	dist_origin_close(o);
	if (r < 0)
		return r;
	st.ns = imc_monotonic_ns() - t0;
	if (ret_stats)
		*ret_stats = st;
	return 0;
}

/* ---- what lazy.c borrows besides the origin (dist/internal.h) ------------------------------- */

int dist_fetch_check_space(struct store *s, const struct dist_fetch_config *cfg, const char *id,
			   const struct oci_chunk_index *ix, imc_error *err)
{
	struct dist_fetch_stats st = {0};

	return check_space(s, cfg, id, ix, &st, err);
}

int dist_fetch_zero_gaps(struct store *s, const struct oci_chunk_index *ix, int fd, imc_error *err)
{
	struct fetch f = {.s = s, .ix = ix, .dev_fd = fd};

	return write_zero_gaps(&f, err);
}
