/* Internal to net/: the client's parts, one transfer's state, and the helpers its files share.
 * Nothing outside net/ includes this (or libcurl). */
#ifndef IMC_NET_INTERNAL_H
#define IMC_NET_INTERNAL_H

#include <pthread.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "net.h"

#define NET_USER_AGENT	     "imcache/0.1"
#define NET_MEMORY_MAX	     (64ULL << 20) /* a memory sink without a max */
#define NET_ERROR_BODY_MAX   (64u << 10)   /* the start of a refused answer's body */
#define NET_HEADERS_MAX	     128	   /* headers of one answer ... */
#define NET_HEADER_BYTES_MAX (64u << 10)   /* ... and their bytes */
#define NET_REDIRECTS_MAX    10
#define NET_URL_MAX	     8192
#define NET_MSG_URL	     300 /* room for a URL in a message */

/* An insecure host: plain HTTP allowed (port 0: any). */
struct net_insecure {
	char *host; /* without brackets */
	unsigned port;
};

/* An allowed destination: addr/prefix in the IPv6 (IPv4-mapped) space, port 0: any. */
struct net_allow {
	unsigned char addr[16];
	unsigned prefix;
	unsigned port;
};

struct net_client {
	char *ca_file;
	char *user_agent;
	struct net_insecure *insecure;
	size_t n_insecure;
	bool check_destination;
	struct net_allow *allow;
	size_t n_allow;
	struct net_limits limits; /* complete: defaults filled in */
	struct net_retry retry;
	void (*log)(void *ctx, enum imc_log_level level, const char *msg);
	void *log_ctx;
	CURLSH *share; /* DNS cache and TLS sessions, for every thread */
	pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
};

struct net_conn {
	CURL *curl; /* kept after a successful attempt, NULL after a failed one */
};

/* What one hop of one attempt does with the body of the answer it gets. */
enum net_hop_mode {
	NET_HOP_HEADERS,  /* the headers are still coming */
	NET_HOP_SINK,	  /* an answer: the body goes to the sink */
	NET_HOP_ERROR,	  /* a refused status: the start of the body is kept for the message */
	NET_HOP_REDIRECT, /* followed: the body is dropped */
};

/* One request, across its attempts and their redirects. */
struct net_xfer {
	struct net_client *c;
	const struct net_request *q;
	struct net_response *resp;
	struct net_limits lim;
	struct net_retry rt;
	uint64_t deadline_ns; /* monotonic; UINT64_MAX: none */
	uint64_t t0_ns;
	/* The body as the sink holds it, kept across attempts. */
	uint64_t origin;    /* offset in the resource of the sink's first byte (a Range's start) */
	uint64_t delivered; /* bytes the sink holds (FILE: the file's length) */
	bool from_scratch;  /* the next attempt asks for everything again, without a Range */
	bool ranges_bad;    /* the server mishandled a resume: never ask it for a range again */
	bool hashing;
	imc_sha256 sha;
	struct imc_buf mem;
	/* One hop (a perform of one URL). */
	CURL *curl;
	const char *url; /* the request's URL, or url_own after a redirect */
	char *url_own;
	const char *method;
	bool send_auth; /* the URL is the request's origin: credentials go along */
	bool asked_range;
	uint64_t asked_from, asked_to;
	bool resuming; /* asked_range is ours (a resume), not the caller's */
	enum net_hop_mode mode;
	long status;
	bool head_done;	   /* the final answer's headers are in */
	bool errbody_full; /* a refused answer's body passed its cap: the rest is not read */
	struct imc_buf errbody;
	struct net_header *headers;
	size_t n_headers, header_bytes;
	uint64_t upload_pos;
	int fail; /* -errno from a callback that stopped the transfer */
	imc_error fail_err;
	bool fail_retry;
	char refused[160]; /* why the destination check refused an address */
	char errbuf[CURL_ERROR_SIZE];
};

/* policy.c */
bool net_dest_allowed(const struct net_client *c, const struct sockaddr *sa, char *why,
		      size_t size);
int net_url_policy(const struct net_client *c, const struct net_request *q, const char *url,
		   imc_error *err);
/* Also in net.h for the tests. */
int net_hostport_split(const char *hostport, char *host, size_t size, unsigned *ret_port);
int net_allow_parse(const char *entry, unsigned char ret_addr[16], unsigned *ret_prefix,
		    unsigned *ret_port);
bool net_redirect_allowed(const struct net_client *c, const char *from, const char *to);
int net_retry_after_parse(const char *value, int64_t now, uint64_t *ret_ms);
int net_content_range_parse(const char *value, uint64_t *ret_first, uint64_t *ret_last,
			    uint64_t *ret_total);
void net_reason(const char *body, size_t len, char *out, size_t size);
uint64_t net_backoff_ms(const struct net_retry *r, unsigned attempt, uint32_t rnd);
uint64_t net_deadline_ms(const struct net_limits *l, uint64_t declared);

/* text.c */
int net_curl_errno(CURLcode c);
bool net_curl_retryable(CURLcode c);
bool net_status_retryable(long status);
bool net_method_idempotent(const char *method);
void net_free_headers(struct net_header *h, size_t n);

/* client.c */
void net_merge(struct net_limits *lim, struct net_retry *rt, const struct net_client *c,
	       const struct net_request *q);
const char *net_system_capath(void);

/* transfer.c: has q's caller cancelled it (cancel flag, cancelled callback, or on_bytes said
 * stop)?  And one hop of one attempt; 0 or -errno with xfer->fail_err / err set, and
 * *ret_code the libcurl result. */
bool net_request_cancelled(const struct net_request *q);
int net_hop(struct net_xfer *x, CURLcode *ret_code, imc_error *err);
int net_sink_restart(struct net_xfer *x, imc_error *err);
void net_hop_release(struct net_xfer *x, bool keep);
/* Read len bytes of fd back into sha (may be NULL); *ret_len = len. */
int net_file_hash(int fd, uint64_t len, imc_sha256 *sha, uint64_t *ret_len, imc_error *err);

static inline void net_curl_cleanupp(CURL **c)
{
	if (*c)
		curl_easy_cleanup(*c);
}

static inline void net_curl_slist_freep(struct curl_slist **l)
{
	curl_slist_free_all(*l);
}

static inline void net_curl_freep(char **p)
{
	curl_free(*p);
}

static inline void net_curl_url_freep(CURLU **u)
{
	if (*u)
		curl_url_cleanup(*u);
}

#endif
