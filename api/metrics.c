/* Metrics: the counters behind GET /metrics and the page in the Prometheus text exposition
 * format 0.0.4 (# HELP and # TYPE once per family, base units: seconds and bytes). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "api.h"

#define NS_PER_S 1000000000ULL

struct bucket {
	const char *le; /* the label value, as written on the page */
	uint64_t ns;	/* the upper bound, inclusive */
};

static const struct bucket build_buckets[API_BUILD_BUCKETS] = {
    {"1", 1 * NS_PER_S},     {"5", 5 * NS_PER_S},     {"15", 15 * NS_PER_S},
    {"30", 30 * NS_PER_S},   {"60", 60 * NS_PER_S},   {"120", 120 * NS_PER_S},
    {"300", 300 * NS_PER_S}, {"600", 600 * NS_PER_S}, {"1800", 1800 * NS_PER_S},
};

static const struct bucket http_buckets[API_HTTP_BUCKETS] = {
    {"0.0005", 500000ULL},  {"0.001", 1000000ULL},  {"0.0025", 2500000ULL}, {"0.005", 5000000ULL},
    {"0.01", 10000000ULL},  {"0.025", 25000000ULL}, {"0.05", 50000000ULL},  {"0.1", 100000000ULL},
    {"0.25", 250000000ULL}, {"0.5", 500000000ULL},  {"1", 1000000000ULL},
};

static void add(uint64_t *v, uint64_t n)
{
	__atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

/* The slot of a duration: the first bucket whose bound holds it, else +Inf (the last). */
static size_t bucket_index(const struct bucket *b, size_t n, uint64_t ns)
{
	size_t i = 0;

	while (i < n && ns > b[i].ns)
		i++;
	return i;
}

void api_metrics_observe_build(struct api_metrics *m, bool ready, uint64_t ns)
{
	if (!m)
		return;
	add(ready ? &m->builds_ready : &m->builds_failed, 1);
	add(&m->build_buckets[bucket_index(build_buckets, API_BUILD_BUCKETS, ns)], 1);
	add(&m->build_ns_sum, ns);
}

void api_metrics_observe_request(struct api_metrics *m, unsigned status, uint64_t ns)
{
	if (!m)
		return;
	if (status < API_HTTP_CODE_MIN || status > API_HTTP_CODE_MAX)
		status = 500;
	add(&m->http_codes[status - API_HTTP_CODE_MIN], 1);
	add(&m->http_buckets[bucket_index(http_buckets, API_HTTP_BUCKETS, ns)], 1);
	add(&m->http_ns_sum, ns);
}

void api_metrics_count_connection(struct api_metrics *m, enum api_conn_event ev)
{
	if (!m)
		return;
	if (ev == API_CONN_OPENED)
		add(&m->http_connections, 1);
	else if (ev == API_CONN_CLOSED)
		__atomic_sub_fetch(&m->http_connections, 1, __ATOMIC_RELAXED);
	else
		add(&m->http_conn_events[ev], 1);
}

void api_metrics_add_pull_bytes(struct api_metrics *m, uint64_t n)
{
	if (m)
		add(&m->pull_bytes, n);
}

static void load_array(const uint64_t *src, uint64_t *dst, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

void api_metrics_load(const struct api_metrics *m, struct api_metrics *ret)
{
	/* The struct is nothing but uint64_t counters. */
	load_array((const uint64_t *)m, (uint64_t *)ret, sizeof(*m) / sizeof(uint64_t));
}

/* ---- the page -------------------------------------------------------------------------------
 */

static int appendf(struct imc_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(struct imc_buf *b, const char *fmt, ...)
{
	char line[256]; /* the longest line is a bucket of a histogram with a long name */
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		return -EOVERFLOW;
	return imc_buf_append(b, line, (size_t)n);
}

static int family(struct imc_buf *b, const char *name, const char *type, const char *help)
{
	int r = appendf(b, "# HELP %s %s\n", name, help);

	return r < 0 ? r : appendf(b, "# TYPE %s %s\n", name, type);
}

/* A family with a single unlabelled sample. */
static int scalar(struct imc_buf *b, const char *name, const char *type, const char *help,
		  uint64_t value)
{
	int r = family(b, name, type, help);

	return r < 0 ? r : appendf(b, "%s %llu\n", name, (unsigned long long)value);
}

/* Seconds from nanoseconds, exactly: "12.000345678". */
static int append_seconds(struct imc_buf *b, const char *name, uint64_t ns)
{
	return appendf(b, "%s %llu.%09llu\n", name, (unsigned long long)(ns / NS_PER_S),
		       (unsigned long long)(ns % NS_PER_S));
}

static int histogram(struct imc_buf *b, const char *name, const char *help,
		     const struct bucket *bounds, size_t n, const uint64_t *counts, uint64_t ns_sum)
{
	char sample[96];
	uint64_t cumulative = 0;
	int r = family(b, name, "histogram", help);

	for (size_t i = 0; r == 0 && i <= n; i++) {
		cumulative += counts[i];
		r = appendf(b, "%s_bucket{le=\"%s\"} %llu\n", name, i < n ? bounds[i].le : "+Inf",
			    (unsigned long long)cumulative);
	}
	snprintf(sample, sizeof(sample), "%s_sum", name);
	if (r == 0)
		r = append_seconds(b, sample, ns_sum);
	if (r == 0)
		r = appendf(b, "%s_count %llu\n", name, (unsigned long long)cumulative);
	return r;
}

static int render_caches(struct imc_buf *b, const struct api_metrics_page *p)
{
	int r = family(b, "imcache_caches", "gauge", "Image caches by status.");

	for (int s = API_CACHE_CREATING; r == 0 && s < API_CACHE_STATUS_COUNT; s++)
		r = appendf(b, "imcache_caches{status=\"%s\"} %llu\n", api_cache_status_name(s),
			    (unsigned long long)p->caches[s]);
	return r;
}

static int render_builds(struct imc_buf *b, const struct api_metrics *m)
{
	int r = scalar(b, "imcache_builds_in_flight", "gauge", "Cache builds running now.",
		       m->builds_in_flight);

	if (r == 0)
		r = family(b, "imcache_builds_total", "counter",
			   "Finished cache builds by result.");
	if (r == 0)
		r = appendf(b, "imcache_builds_total{result=\"ready\"} %llu\n",
			    (unsigned long long)m->builds_ready);
	if (r == 0)
		r = appendf(b, "imcache_builds_total{result=\"failed\"} %llu\n",
			    (unsigned long long)m->builds_failed);
	if (r == 0)
		r = histogram(b, "imcache_build_duration_seconds",
			      "Duration of finished cache builds, Ready or Failed.", build_buckets,
			      API_BUILD_BUCKETS, m->build_buckets, m->build_ns_sum);
	if (r == 0)
		r = scalar(b, "imcache_pull_bytes_total", "counter",
			   "Layer bytes downloaded from registries, as the builder reported them.",
			   m->pull_bytes);
	return r;
}

static int render_lifecycle(struct imc_buf *b, const struct api_metrics_page *p)
{
	const struct api_metrics *m = &p->m;
	int r = scalar(b, "imcache_evictions_total", "counter",
		       "Caches removed because the pool passed its high watermark.", m->evictions);

	if (r == 0)
		r = scalar(b, "imcache_expirations_total", "counter",
			   "Caches removed because their retention ran out.", m->expirations);
	if (r == 0)
		r = scalar(b, "imcache_attaches_total", "counter",
			   "Attachments reported by imc-attach and imc-runtime.", m->attaches);
	if (r == 0)
		r = scalar(b, "imcache_detaches_total", "counter", "Attachments ended.",
			   m->detaches);
	if (r == 0)
		r = scalar(b, "imcache_attachments", "gauge", "Clones attached now, all caches.",
			   p->attachments);
	return r;
}

static int render_pool(struct imc_buf *b, const struct api_metrics_page *p)
{
	int r = family(b, "imcache_pool_bytes", "gauge", "Bytes of the cache store's pool.");

	if (r == 0 && p->have_pool)
		r = appendf(b,
			    "imcache_pool_bytes{kind=\"size\"} %llu\n"
			    "imcache_pool_bytes{kind=\"used\"} %llu\n"
			    "imcache_pool_bytes{kind=\"free\"} %llu\n",
			    (unsigned long long)p->pool_size, (unsigned long long)p->pool_used,
			    (unsigned long long)p->pool_free);
	/* A pool with metadata space of its own (dm-thin): running out of it stops the pool. */
	if (r == 0 && p->have_pool && p->pool_meta_size)
		r = family(b, "imcache_pool_metadata_bytes", "gauge",
			   "Bytes of the cache store's pool metadata (thin driver).");
	if (r == 0 && p->have_pool && p->pool_meta_size)
		r = appendf(b,
			    "imcache_pool_metadata_bytes{kind=\"size\"} %llu\n"
			    "imcache_pool_metadata_bytes{kind=\"used\"} %llu\n",
			    (unsigned long long)p->pool_meta_size,
			    (unsigned long long)p->pool_meta_used);
	return r;
}

static int render_connections(struct imc_buf *b, const struct api_metrics *m)
{
	static const char *const reasons[] = {"request_timeout", "evicted"};
	int r = scalar(b, "imcache_http_connections", "gauge", "Client connections open now.",
		       m->http_connections);

	if (r == 0)
		r = family(
		    b, "imcache_http_connections_closed_total", "counter",
		    "Client connections imcd closed before their request was in, by reason.");
	for (size_t i = 0; r == 0 && i < IMC_ARRAY_SIZE(reasons); i++)
		r = appendf(b, "imcache_http_connections_closed_total{reason=\"%s\"} %llu\n",
			    reasons[i], (unsigned long long)m->http_conn_events[i]);
	if (r == 0)
		r = scalar(b, "imcache_http_connections_reserved_total", "counter",
			   "Client connections opened in the reserve (/healthz and /metrics only).",
			   m->http_conn_events[API_CONN_RESERVED]);
	if (r == 0)
		r = scalar(b, "imcache_http_connections_refused_total", "counter",
			   "Client connections refused when accepted: over a connection limit.",
			   m->http_conn_events[API_CONN_REFUSED]);
	return r;
}

static int render_http(struct imc_buf *b, const struct api_metrics *m)
{
	int r = family(b, "imcache_http_requests_total", "counter",
		       "HTTP requests answered, by status code.");

	for (size_t i = 0; r == 0 && i < API_HTTP_CODES; i++)
		if (m->http_codes[i])
			r = appendf(b, "imcache_http_requests_total{code=\"%zu\"} %llu\n",
				    i + API_HTTP_CODE_MIN, (unsigned long long)m->http_codes[i]);
	if (r == 0)
		r = histogram(b, "imcache_http_request_duration_seconds",
			      "Time from a request's first byte to its answer being queued.",
			      http_buckets, API_HTTP_BUCKETS, m->http_buckets, m->http_ns_sum);
	return r == 0 ? render_connections(b, m) : r;
}

int api_metrics_render(const struct api_metrics_page *p, char **ret, imc_error *err)
{
	struct imc_buf b = {0};
	int r = render_caches(&b, p);

	if (r == 0)
		r = render_builds(&b, &p->m);
	if (r == 0)
		r = render_pool(&b, p);
	if (r == 0)
		r = render_lifecycle(&b, p);
	if (r == 0)
		r = render_http(&b, &p->m);
	if (r < 0) {
		imc_buf_free(&b);
		return imc_err(err, -r, "metrics page: %s",
			       r == -ENOMEM ? "out of memory" : "a line too long");
	}
	*ret = b.data;
	return 0;
}
