/* Client connections against slow clients (see conns.h).
 *
 * libmicrohttpd's own timeout is an idle timeout: every byte restarts it, so a client that sends
 * a header line every few seconds holds its connection forever, and enough of them hold every
 * connection.  Here each connection waiting for a request (from its accept, or from its previous
 * answer) is on one list, oldest first, with a deadline that no byte moves: a watchdog shuts the
 * socket down once the deadline passes, and libmicrohttpd then closes the connection as if the
 * client had gone.  The same list gives the connection to close when a new one arrives at the
 * limit: the oldest still waiting, which is where slow clients end up. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "conns.h"

#define NS_PER_S 1000000000ULL

struct api_conn {
	struct api_conn *prev, *next; /* the waiting list */
	int fd;
	uint64_t deadline_ns;
	bool waiting; /* on the list: its request is not all in yet */
	bool closing; /* shut down by us, not yet closed by libmicrohttpd */
	bool reserve; /* opened in the reserve */
};

struct api_conns {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	bool have_thread, stop;
	struct api_conn *head, *tail; /* waiting, oldest (earliest deadline) first */
	unsigned open, closing;
	unsigned general; /* max_connections - reserve */
	uint64_t timeout_ns;
	struct api_metrics *metrics;
};

/* ---- limits ---------------------------------------------------------------------------------- */

static unsigned pick(unsigned flag, unsigned config, unsigned dflt)
{
	return flag ? flag : config ? config : dflt;
}

int api_http_limits_resolve(const struct api_http_limits *flags,
			    const struct api_http_limits *config, struct api_http_limits *ret,
			    imc_error *err)
{
	static const struct api_http_limits none = {0};
	struct api_http_limits l;

	flags = flags ? flags : &none;
	config = config ? config : &none;
	l.max_connections =
	    pick(flags->max_connections, config->max_connections, API_CONNECTIONS_DEFAULT);
	if (l.max_connections < 2 || l.max_connections > API_CONNECTIONS_MAX)
		return imc_err(err, EINVAL, "max connections %u: want 2-%u", l.max_connections,
			       API_CONNECTIONS_MAX);
	/* The defaults shrink with a small total: a quarter kept, no client above the total. */
	l.reserve = pick(flags->reserve, config->reserve,
			 API_RESERVE_DEFAULT < l.max_connections / 4 ? API_RESERVE_DEFAULT
								     : l.max_connections / 4);
	l.per_client = pick(flags->per_client, config->per_client,
			    API_PER_CLIENT_DEFAULT < l.max_connections ? API_PER_CLIENT_DEFAULT
								       : l.max_connections);
	l.request_timeout_s =
	    pick(flags->request_timeout_s, config->request_timeout_s, API_REQUEST_TIMEOUT_DEFAULT);
	if (l.reserve >= l.max_connections)
		return imc_err(err, EINVAL,
			       "connection reserve %u: want fewer than the %u connections",
			       l.reserve, l.max_connections);
	if (l.per_client > l.max_connections)
		return imc_err(err, EINVAL,
			       "connections per client %u: want at most the %u connections",
			       l.per_client, l.max_connections);
	if (l.request_timeout_s > API_REQUEST_TIMEOUT_MAX)
		return imc_err(err, EINVAL, "request timeout %u s: want 1-%u", l.request_timeout_s,
			       API_REQUEST_TIMEOUT_MAX);
	*ret = l;
	return 0;
}

/* ---- the waiting list (under g->lock) ----------------------------------------------------- */

static void unlist(struct api_conns *g, struct api_conn *c)
{
	if (!c->waiting)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		g->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		g->tail = c->prev;
	c->prev = c->next = NULL;
	c->waiting = false;
}

/* Every deadline is now + the same timeout: appending keeps the list in deadline order. */
static void list_waiting(struct api_conns *g, struct api_conn *c, uint64_t now_ns)
{
	c->deadline_ns = now_ns + g->timeout_ns;
	c->prev = g->tail;
	c->next = NULL;
	if (g->tail)
		g->tail->next = c;
	else
		g->head = c;
	g->tail = c;
	c->waiting = true;
	if (g->head == c)
		pthread_cond_signal(&g->wake);
}

/* Shut the socket down: libmicrohttpd sees the end of the connection and closes it (and only
 * then its fd, after telling api_conns_gone, which takes the lock: the fd is still ours here). */
static void close_conn(struct api_conns *g, struct api_conn *c, enum api_conn_event why)
{
	unlist(g, c);
	shutdown(c->fd, SHUT_RDWR);
	c->closing = true;
	g->closing++;
	api_metrics_count_connection(g->metrics, why);
}

/* The connection to close for a new one at the limit: the one that has waited longest for its
 * request, but not a reserve one (those are there for what a slow client cannot be: quick). */
static struct api_conn *oldest_general(struct api_conns *g)
{
	struct api_conn *c = g->head;

	while (c && c->reserve)
		c = c->next;
	return c;
}

/* ---- connection events ------------------------------------------------------------------------
 */

struct api_conn *api_conns_admit(struct api_conns *g, int fd, uint64_t now_ns)
{
	struct api_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	pthread_mutex_lock(&g->lock);
	g->open++;
	if (g->open - g->closing > g->general) {
		struct api_conn *victim = oldest_general(g);

		if (victim)
			close_conn(g, victim, API_CONN_EVICTED);
		else
			c->reserve = true;
	}
	list_waiting(g, c, now_ns);
	pthread_mutex_unlock(&g->lock);
	api_metrics_count_connection(g->metrics, API_CONN_OPENED);
	if (c->reserve)
		api_metrics_count_connection(g->metrics, API_CONN_RESERVED);
	return c;
}

void api_conns_gone(struct api_conns *g, struct api_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&g->lock);
	unlist(g, c);
	g->open--;
	if (c->closing)
		g->closing--;
	pthread_mutex_unlock(&g->lock);
	api_metrics_count_connection(g->metrics, API_CONN_CLOSED);
	free(c);
}

bool api_conn_is_reserve(const struct api_conn *c)
{
	return c && c->reserve;
}

void api_conns_request_in(struct api_conns *g, struct api_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&g->lock);
	unlist(g, c);
	pthread_mutex_unlock(&g->lock);
}

void api_conns_request_done(struct api_conns *g, struct api_conn *c, uint64_t now_ns)
{
	if (!c)
		return;
	pthread_mutex_lock(&g->lock);
	if (!c->closing && !c->waiting)
		list_waiting(g, c, now_ns);
	pthread_mutex_unlock(&g->lock);
}

static unsigned expire_locked(struct api_conns *g, uint64_t now_ns, uint64_t *ret_next_ns)
{
	unsigned n = 0;

	while (g->head && g->head->deadline_ns <= now_ns) {
		close_conn(g, g->head, API_CONN_TIMED_OUT);
		n++;
	}
	*ret_next_ns = g->head ? g->head->deadline_ns : UINT64_MAX;
	return n;
}

unsigned api_conns_expire(struct api_conns *g, uint64_t now_ns, uint64_t *ret_next_ns)
{
	unsigned n;

	pthread_mutex_lock(&g->lock);
	n = expire_locked(g, now_ns, ret_next_ns);
	pthread_mutex_unlock(&g->lock);
	return n;
}

/* ---- the watchdog ------------------------------------------------------------------------------
 */

static void *watchdog(void *arg)
{
	struct api_conns *g = arg;

	pthread_mutex_lock(&g->lock);
	while (!g->stop) {
		uint64_t next;
		struct timespec ts;

		expire_locked(g, imc_monotonic_ns(), &next);
		if (next == UINT64_MAX) {
			pthread_cond_wait(&g->wake, &g->lock);
			continue;
		}
		ts = imc_timespec_of_ns(next);
		pthread_cond_timedwait(&g->wake, &g->lock, &ts);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

static int start_watchdog(struct api_conns *g, imc_error *err)
{
	pthread_condattr_t attr;
	int r;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* imc_monotonic_ns()'s clock */
	r = pthread_cond_init(&g->wake, &attr);
	pthread_condattr_destroy(&attr);
	if (r != 0)
		return imc_err_sys(err, r, "connection watchdog: condition variable");
	return 0;
}

int api_conns_new(const struct api_http_limits *limits, struct api_metrics *m, bool watchdog_on,
		  struct api_conns **ret, imc_error *err)
{
	struct api_conns *g = calloc(1, sizeof(*g));
	int r;

	if (!g)
		return imc_err(err, ENOMEM, "out of memory");
	pthread_mutex_init(&g->lock, NULL);
	g->general = limits->max_connections - limits->reserve;
	g->timeout_ns = (uint64_t)limits->request_timeout_s * NS_PER_S;
	g->metrics = m;
	r = start_watchdog(g, err);
	if (r == 0 && watchdog_on) {
		r = -pthread_create(&g->thread, NULL, watchdog, g);
		if (r < 0) {
			imc_err_sys(err, -r, "connection watchdog: thread");
			pthread_cond_destroy(&g->wake);
		}
		g->have_thread = r == 0;
	}
	if (r < 0) {
		pthread_mutex_destroy(&g->lock);
		free(g);
		return r;
	}
	*ret = g;
	return 0;
}

/* After libmicrohttpd has stopped: every connection is gone. */
void api_conns_free(struct api_conns *g)
{
	if (!g)
		return;
	if (g->have_thread) {
		pthread_mutex_lock(&g->lock);
		g->stop = true;
		pthread_cond_signal(&g->wake);
		pthread_mutex_unlock(&g->lock);
		pthread_join(g->thread, NULL);
	}
	pthread_cond_destroy(&g->wake);
	pthread_mutex_destroy(&g->lock);
	free(g);
}
