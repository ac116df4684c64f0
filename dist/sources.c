/* The sources of a fetch (docs/distribution.md, "Sources"): their order, their deadlines and
 * the waits between tries.  Pure bookkeeping: fetch.c holds the sources and their locks. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define RETRY_WAIT_FIRST_MS 250
#define RETRY_WAIT_MAX_MS   4000

static const char *const source_names[DIST_SOURCE_KINDS] = {"server", "registry"};

static int source_of(const char *s, size_t n)
{
	for (int k = 0; k < DIST_SOURCE_KINDS; k++)
		if (strlen(source_names[k]) == n && strncmp(s, source_names[k], n) == 0)
			return k;
	return -1;
}

int dist_source_order_parse(const char *s, bool *ret_registry_first, imc_error *err)
{
	const char *comma = s ? strchr(s, ',') : NULL;
	int first, second = -1;

	if (!s)
		return imc_err(err, EINVAL, "source order: missing");
	first = source_of(s, comma ? (size_t)(comma - s) : strlen(s));
	if (comma)
		second = source_of(comma + 1, strlen(comma + 1));
	if (first < 0 || (comma && (second < 0 || second == first)))
		return imc_err(err, EINVAL,
			       "source order \"%.80s\": want server,registry or registry,server",
			       s);
	*ret_registry_first = first == DIST_SOURCE_REGISTRY;
	return 0;
}

int dist_deadline_parse(const char *s, const char *what, uint64_t *ret_ms, imc_error *err)
{
	char *end = NULL;
	unsigned long long v;

	errno = 0;
	v = s && *s && strspn(s, "0123456789") == strlen(s) ? strtoull(s, &end, 10) : 0;
	if (errno || !end || *end || v < 1 || v > DIST_DEADLINE_MAX_S)
		return imc_err(err, EINVAL, "%s \"%.80s\": want 1-%llu seconds", what, s ? s : "",
			       (unsigned long long)DIST_DEADLINE_MAX_S);
	*ret_ms = v * 1000;
	return 0;
}

bool dist_health_failed(struct dist_health *h, enum dist_source_kind k, uint64_t now_ns,
			uint64_t deadline_ns, bool permanent)
{
	if (h->abandoned[k])
		return false;
	if (h->failing_since_ns[k] == 0)
		h->failing_since_ns[k] = now_ns ? now_ns : 1;
	if (!permanent && now_ns - h->failing_since_ns[k] < deadline_ns)
		return false;
	h->abandoned[k] = true;
	return true;
}

void dist_health_ok(struct dist_health *h, enum dist_source_kind k)
{
	h->failing_since_ns[k] = 0;
	h->abandoned[k] = false;
}

int dist_health_pick(struct dist_health *h, const enum dist_source_kind *order, size_t n,
		     unsigned skip, bool again)
{
	int first = -1;

	for (size_t i = 0; i < n; i++) {
		if (skip & (1U << order[i]))
			continue;
		if (!h->abandoned[order[i]])
			return (int)order[i];
		if (first < 0)
			first = (int)order[i];
	}
	if (first < 0 || !again)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!(skip & (1U << order[i]))) {
			h->abandoned[order[i]] = false;
			h->failing_since_ns[order[i]] = 0;
		}
	return first;
}

uint64_t dist_retry_wait_ms(unsigned attempt, uint64_t left_ms)
{
	uint64_t w = attempt >= 5 ? RETRY_WAIT_MAX_MS : (uint64_t)RETRY_WAIT_FIRST_MS << attempt;

	if (w > RETRY_WAIT_MAX_MS)
		w = RETRY_WAIT_MAX_MS;
	return w < left_ms ? w : left_ms;
}

bool dist_error_permanent(int code)
{
	switch (code < 0 ? -code : code) {
	case ENOENT:
	case EACCES:
	case EPERM:
	case EINVAL:
	case EFBIG:
	case EOPNOTSUPP:
	case ENOMEM:
		return true;
	default:
		return false;
	}
}
