/* Which queued build starts next (docs/api.md, "Builds").  Pure: the cache table calls it under
 * its lock with the queue in order and the builds that run.
 *
 * A build that never ends (a registry that trickles a layer) holds its worker until it is
 * cancelled; without a rule, one tenant's few such builds would hold every worker and starve
 * every other tenant.  So a tenant never runs more than tenant_cap builds at once (below the
 * number of workers where several tenants share imcd: one worker is always left to the others),
 * and the next build goes to the tenant that runs the fewest, oldest request first. */
#include <string.h>

#include "api.h"

static const char *tenant_name(const struct api_cache *c)
{
	return c->tenant ? c->tenant : API_TENANT_DEFAULT;
}

/* Do two caches name an image in common?  The builder keeps one base volume per image, so two
 * builds of the same image at once would collide on it: such builds run one after the other. */
static bool share_an_image(const struct api_cache *a, const struct api_cache *b)
{
	for (size_t i = 0; i < a->n_refs; i++)
		for (size_t k = 0; k < b->n_refs; k++)
			if (strcmp(a->refs[i], b->refs[k]) == 0)
				return true;
	return false;
}

static unsigned running_of(const char *tenant, struct api_cache *const *running, size_t n)
{
	unsigned count = 0;

	for (size_t i = 0; i < n; i++)
		if (running[i] && strcmp(tenant_name(running[i]), tenant) == 0)
			count++;
	return count;
}

static bool collides(const struct api_cache *c, struct api_cache *const *running, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (running[i] && share_an_image(running[i], c))
			return true;
	return false;
}

ssize_t api_queue_pick(struct api_cache *const *queued, size_t n_queued,
		       struct api_cache *const *running, size_t n_running, unsigned tenant_cap)
{
	ssize_t best = -1;
	unsigned best_load = 0;

	for (size_t i = 0; i < n_queued; i++) {
		unsigned load = running_of(tenant_name(queued[i]), running, n_running);

		if ((tenant_cap && load >= tenant_cap) || collides(queued[i], running, n_running))
			continue;
		if (best < 0 || load < best_load) { /* ties: the older request (queue order) */
			best = (ssize_t)i;
			best_load = load;
		}
	}
	return best;
}
