/* net/: the one HTTP client of imcache (libcurl), for every binary: net_perform() owns the
 * policies that each caller used to have its own version of:
 *
 *  - a fresh libcurl easy handle for every attempt that follows a failure (a kept connection is
 *    reused only after a success), global init once;
 *  - retries with exponential backoff and jitter for 429, 5xx and transport errors, honouring
 *    Retry-After (seconds or an HTTP-date), bounded by a number of attempts and a deadline;
 *  - a minimum transfer rate over a window and an overall deadline per request (which grows with
 *    the size of a declared body), and cancellation during the transfer and the backoff;
 *  - one status -> errno map, and messages that name the method, the URL (without credentials or
 *    query) and the status, with everything a peer sent escaped;
 *  - sinks: a capped memory buffer, a file (sha256 and size checked, resumed with Range after a
 *    dropped connection or from a partial file), a callback;
 *  - one loopback rule and one plain-HTTP rule, redirects followed only where they may go, and
 *    an optional check of the address every connection really goes to.
 *
 * A client (struct net_client) holds the configuration and is shared by every thread; a
 * struct net_conn keeps one thread's connection between its requests.  Library code: nothing here
 * prints; the optional log hook of the client hears of retries. */
#ifndef IMC_NET_H
#define IMC_NET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/imc.h"

/* ---- limits and retries ---------------------------------------------------------------------
 * A zero field means "inherit": a request's field from its client's, a client's from the
 * built-in default named beside it.  NET_OFF turns a limit off. */
#define NET_OFF UINT64_MAX

struct net_limits {
	uint64_t connect_timeout_ms; /* 30 s: TCP and TLS set-up of one connection */
	uint64_t min_rate;	     /* 64 KiB/s: slower than this ... */
	uint64_t min_rate_window_s;  /* 60 s: ... for this long aborts the attempt */
	uint64_t deadline_ms;	/* 15 min: the whole request, every attempt and wait included */
	uint64_t deadline_rate; /* 1 MiB/s: a declared size adds size / rate to the deadline */
};

struct net_retry {
	uint64_t max_attempts;	     /* 5 (1: no retry) */
	uint64_t base_ms;	     /* 500 ms: the first backoff, doubled each time ... */
	uint64_t max_ms;	     /* 8 s: ... up to this; each wait is jittered to [d/2, d] */
	uint64_t retry_after_max_ms; /* 30 s: a longer Retry-After is cut to this */
};

/* ---- the client ------------------------------------------------------------------------------ */
struct net_config {
	const char *ca_file;		   /* PEM CAs trusted besides the system's; NULL: none */
	const char *const *insecure_hosts; /* "host" or "host:port": plain HTTP allowed there */
	bool check_destination;		   /* refuse non-public addresses (see below) */
	const char *const *allow_destinations; /* "ADDR", "ADDR/PREFIX", "ADDR:PORT", "[V6]:PORT" */
	const char *user_agent;		       /* NULL: "imcache/0.1" */
	struct net_limits limits;
	struct net_retry retry;
	/* Hears of each retry (IMC_LOG_WARN) with a message whose peer-sent text is escaped. */
	void (*log)(void *ctx, enum imc_log_level level, const char *msg);
	void *log_ctx;
};

struct net_client;
/* Copies everything cfg names; the client is immutable afterwards, so any thread may use it. */
int net_client_new(const struct net_config *cfg, struct net_client **ret, imc_error *err);
void net_client_free(struct net_client *c);

/* One thread's kept connection: requests that name it reuse its connection after a success (and
 * start from a fresh handle after a failure).  NULL when out of memory. */
struct net_conn;
struct net_conn *net_conn_new(void);
void net_conn_free(struct net_conn *conn);

/* ---- the one loopback rule and the plain-HTTP rule ------------------------------------------
 * A host is loopback only if it parses as an address in 127.0.0.0/8 or ::1 ("[::1]" too), or is
 * "localhost" (ASCII case aside): "127.evil.example" and "localhost.example" are not.  Plain HTTP
 * goes only to loopback hosts, unix: sockets and the client's insecure hosts; a redirect goes to
 * the same host (plain HTTP only if the request was), or to any HTTPS host, or over plain HTTP
 * to an insecure host.
 *
 * The destination check (check_destination) refuses, for every connection curl opens (after DNS,
 * after each redirect), the loopback, unspecified, link-local, private (RFC 1918, fc00::/7),
 * shared (100.64/10), multicast, broadcast and reserved addresses, IPv4-mapped ones by their IPv4
 * address, unless the address (and port) is in allow_destinations.  Proxies from the environment
 * are not used by such a client: the check must see the real destination. */
bool net_host_is_loopback(const char *host);
/* hostport: "host", "host:port", "[v6]" or "[v6]:port". */
bool net_plain_http_allowed(const struct net_client *c, const char *hostport);
/* "http" where plain HTTP is allowed, else "https". */
const char *net_scheme(const struct net_client *c, const char *hostport);

/* ---- URLs --------------------------------------------------------------------------------------
 */
struct net_url {
	char *scheme; /* lowercase */
	char *host;   /* as in the URL: "[::1]" keeps its brackets */
	char *path;   /* "/" at least */
	unsigned port;
	bool has_userinfo;
};
/* An absolute http(s) URL; -EINVAL naming the URL otherwise. */
int net_url_parse(const char *url, struct net_url *ret, imc_error *err);
void net_url_free(struct net_url *u);
/* "host:port" of url when it is plain http (a server the operator named, whose host a client
 * treats as insecure), else "" (https, a URL that does not parse). */
void net_url_plain_hostport(const char *url, char *ret, size_t size);
/* ref (a Location, absolute or relative) resolved against the URL base; malloc'ed, NULL when
 * either does not parse or on OOM. */
char *net_url_join(const char *base, const char *ref);
/* Percent-encode n bytes of s for a URL component (malloc'ed; NULL on OOM). */
char *net_url_escape(const char *s, size_t n);
/* The URL for messages, as libcurl reads it: no user:password, the query and fragment cut to
 * "?...", control bytes escaped. */
void net_url_redact(const char *url, char *out, size_t size);

/* A server given as "unix:PATH" or "http(s)://HOST[:PORT][/PREFIX]" (trailing '/' dropped). */
struct net_server {
	char *base;	   /* "http://localhost" for a unix socket */
	char *unix_socket; /* NULL for a URL */
};
int net_server_parse(const char *spec, struct net_server *ret, imc_error *err);
void net_server_free(struct net_server *s);
/* base + path ("/v1/..."), malloc'ed; NULL on OOM. */
char *net_server_url(const struct net_server *s, const char *path);

/* Escape bytes < 0x20, 0x7f, bytes >= 0x80 and '\\' as \n, \t, \r, \\ or \xNN; out is always
 * terminated (truncated if need be).  Returns the length written. */
size_t net_escape(const char *in, size_t n, char *out, size_t size);

/* ---- requests ------------------------------------------------------------------------------- */
enum net_sink_kind {
	NET_SINK_DISCARD, /* the body is read and dropped */
	NET_SINK_MEMORY,  /* into net_response.body, at most max (default 64 MiB) */
	NET_SINK_FILE,	  /* into fd (pwrite from offset 0), at most max when set */
	NET_SINK_CALLBACK /* to write() as it arrives */
};

struct net_sink {
	enum net_sink_kind kind;
	uint64_t max;		 /* more is EFBIG, checked against Content-Length first */
	bool sized;		 /* the body (or the asked range) is exactly size bytes */
	uint64_t size;		 /* ... which also scales the deadline */
	const char *want_sha256; /* "sha256:<hex>" or "<hex>": checked at the end (EBADMSG) */
	bool hash;		 /* compute net_response.sha256 (implied by want_sha256) */
	int fd;			 /* FILE */
	bool resume;		 /* FILE: keep the bytes the file has and ask for the rest */
	int (*write)(void *ctx, const void *data, size_t n); /* CALLBACK: 0 or -errno */
	void *write_ctx;
};

struct net_body {
	const void *data; /* from memory ... */
	size_t len;
	bool from_fd; /* ... or len bytes of fd from offset (pread: the fd's offset stays) */
	int fd;
	uint64_t offset;
	const char *content_type; /* NULL: none sent */
};

struct net_request {
	const char *method;	 /* NULL: GET; HEAD, POST, PUT, PATCH, DELETE */
	const char *url;	 /* absolute http(s) URL */
	const char *unix_socket; /* connect to this socket instead (the URL's host is ignored) */
	const char *bearer;	 /* Authorization: Bearer */
	const char *username;	 /* Basic auth with password */
	const char *password;
	const char *const *headers; /* extra "Name: value" lines, NULL-terminated */
	struct net_body body;	    /* sent when data or from_fd is set (or method wants one) */
	bool range;		    /* ask bytes range_from..range_to (UINT64_MAX: to the end) */
	uint64_t range_from, range_to;
	struct net_sink sink;
	/* Statuses besides 2xx that are answers (0-terminated), e.g. 401; or every status.  Only
	 * a 2xx body goes to the sink; another one's start is in net_response.body. */
	const long *accept;
	bool any_status;
	bool no_redirect;		 /* a 3xx is an answer, not followed */
	const struct net_limits *limits; /* per request (zero fields inherit the client's) */
	const struct net_retry *retry;
	struct net_conn *conn; /* NULL: a handle of its own, closed at the end */
	/* Hears of body bytes as they arrive (n > 0), of bytes taken back when a download starts
	 * over (n < 0) and of time passing (n == 0); false cancels (ECANCELED). */
	bool (*on_bytes)(void *ctx, int64_t n);
	void *ctx;
	const atomic_bool *cancel; /* true cancels (ECANCELED), checked during the transfer */
	/* Polled during the transfer and every backoff slice: true cancels (ECANCELED). */
	bool (*cancelled)(void *ctx);
	void *cancel_ctx;
};

struct net_header {
	char *name, *value; /* as the server sent them: escape before printing */
};

struct net_response {
	long status;		/* of the last answer; 0 when none came */
	int64_t content_length; /* of the last answer; -1 unknown */
	char *body;		/* MEMORY: the body (NUL-terminated); any sink: the start of a
				 * refused answer's body (64 KiB at most) */
	size_t body_len;
	uint64_t bytes;			     /* body bytes in the sink (FILE: from offset 0) */
	char sha256[IMC_SHA256_HEX_LEN + 1]; /* of those bytes, when hashed */
	char *url;			     /* the last URL asked (after redirects) */
	unsigned attempts, redirects;	     /* made */
	uint64_t waited_ms;		     /* spent in backoff between attempts */
	struct net_header *headers;	     /* of the last answer */
	size_t n_headers;
};

/* Perform q.  0 when an answer came whose status is 2xx, in q->accept, or any with any_status
 * (ret->status says which); otherwise -errno with a message that names the URL: the status
 * mapped by net_status_errno(), ETIMEDOUT (deadline, min rate, connect), ECONNREFUSED,
 * EHOSTUNREACH (DNS), EPROTO (TLS, a malformed answer), EPERM (a policy refused the URL, a
 * redirect or a destination), EFBIG (over a cap), EBADMSG (size or digest mismatch),
 * ERANGE (a byte range ignored), ECANCELED.  ret is filled either way and must be freed. */
int net_perform(struct net_client *c, const struct net_request *q, struct net_response *ret,
		imc_error *err);
void net_response_free(struct net_response *r);
/* The nth (0-based) value of header name (case-insensitive) of the last answer, or NULL. */
const char *net_response_header(const struct net_response *r, const char *name, size_t nth);

/* 400 EINVAL, 401/403 EACCES, 404/410 ENOENT, 405/501 EOPNOTSUPP, 408 ETIMEDOUT, 409 EBUSY,
 * 413 EFBIG, 416 ERANGE, 429 EAGAIN, other 5xx EIO, other statuses EPROTO. */
int net_status_errno(long status);

#ifdef IMC_TESTING
/* Pure parts, reached by the unit tests and the fuzz target. */
int net_retry_after_parse(const char *value, int64_t now, uint64_t *ret_ms);
int net_content_range_parse(const char *value, uint64_t *ret_first, uint64_t *ret_last,
			    uint64_t *ret_total);
int net_hostport_split(const char *hostport, char *host, size_t size, unsigned *ret_port);
int net_allow_parse(const char *entry, unsigned char ret_addr[16], unsigned *ret_prefix,
		    unsigned *ret_port);
bool net_addr_public(const unsigned char addr[16]);
bool net_redirect_allowed(const struct net_client *c, const char *from, const char *to);
void net_reason(const char *body, size_t len, char *out, size_t size);
uint64_t net_backoff_ms(const struct net_retry *r, unsigned attempt, uint32_t rnd);
uint64_t net_deadline_ms(const struct net_limits *l, uint64_t declared);
#endif

#endif
