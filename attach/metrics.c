/* imc-attach metrics: the host's attaches and shared lowers in the Prometheus text format, for
 * node_exporter's textfile collector (docs/distribution.md, "Lazy attach").  The agent runs no
 * server: the figures are those of `imc-attach lowers` (a lazy lower's from the stats file its
 * FUSE server rewrites as chunks arrive), read when the command runs. */
#include <errno.h>
#include <stdio.h>

#include "attach.h"

/* One metric family of the lowers: a sample per lower that has the field (a lazy one for the
 * lazyStats fields), labelled with its cache id. */
struct lower_metric {
	const char *name, *type, *help;
	const char *path[2]; /* the field in a lower's record, or lazyStats.<path[0]>.<path[1]> */
	bool lazy;
	const char *by; /* a "by" label: its value */
};

static const struct lower_metric lower_metrics[] = {
    {"imcache_agent_lower_refs", "gauge", "Attaches using a shared lower.", {"refs"}, false, NULL},
    {"imcache_agent_lazy_chunks",
     "gauge",
     "Data chunks of a lazy lower's snapshot.",
     {"chunks"},
     true,
     NULL},
    {"imcache_agent_lazy_chunks_local", "gauge", "Of them, local now.", {"local"}, true, NULL},
    {"imcache_agent_lazy_fetched_chunks_total",
     "counter",
     "Chunks fetched, for reads (demand) or by the background fill.",
     {"onDemand", "chunks"},
     true,
     "demand"},
    {NULL, NULL, NULL, {"background", "chunks"}, true, "background"},
    {"imcache_agent_lazy_fetched_bytes_total",
     "counter",
     "Compressed chunk bytes fetched, for reads (demand) or by the background fill.",
     {"onDemand", "bytes"},
     true,
     "demand"},
    {NULL, NULL, NULL, {"background", "bytes"}, true, "background"},
    {"imcache_agent_lazy_failed_total",
     "counter",
     "Chunk fetches that failed.",
     {"failed"},
     true,
     NULL},
    {"imcache_agent_lazy_sealed",
     "gauge",
     "1 once every chunk is local and sealed.",
     {"sealed"},
     true,
     NULL},
    {"imcache_agent_lazy_server_alive",
     "gauge",
     "1 while the lazy lower's FUSE server runs.",
     {"serverAlive"},
     true,
     NULL},
};

static bool sample_value(json_t *lower, const struct lower_metric *m, json_int_t *ret)
{
	json_t *v = m->lazy ? json_object_get(lower, "lazyStats") : lower;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(m->path) && m->path[i] && v; i++)
		v = json_object_get(v, m->path[i]);
	if (json_is_boolean(v))
		*ret = json_is_true(v);
	else if (json_is_integer(v))
		*ret = json_integer_value(v);
	else
		return false;
	return true;
}

/* A cache id as a label value: ours are [a-z0-9-], anything else is left out. */
static bool label_ok(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
			return false;
	return true;
}

static void write_family(FILE *f, json_t *lowers, size_t k)
{
	const struct lower_metric *m = &lower_metrics[k];
	const char *name = m->name;
	size_t i;
	json_t *lower;

	for (size_t j = k; !name && j > 0; j--)
		name = lower_metrics[j - 1].name;
	if (m->name)
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, m->type);
	json_array_foreach(lowers, i, lower)
	{
		const char *id = json_string_value(json_object_get(lower, "cacheId"));
		json_int_t v;
		if (!label_ok(id) || !sample_value(lower, m, &v))
			continue;
		if (m->by)
			fprintf(f, "%s{cache_id=\"%s\",by=\"%s\"} %lld\n", name, id, m->by,
				(long long)v);
		else
			fprintf(f, "%s{cache_id=\"%s\"} %lld\n", name, id, (long long)v);
	}
}

int attach_metrics_write(struct store *s, FILE *f, imc_error *err)
{
	_cleanup_json_ json_t *attaches = NULL, *lowers = NULL;
	size_t mounted = 0, i;
	json_t *lower;

	if (attach_list(s, &attaches, err) < 0 || attach_lowers_list(s, &lowers, err) < 0)
		return err->code;
	json_array_foreach(lowers, i, lower) mounted +=
	    json_is_true(json_object_get(lower, "mounted"));
	fprintf(f,
		"# HELP imcache_agent_attaches Attaches recorded on this host.\n"
		"# TYPE imcache_agent_attaches gauge\nimcache_agent_attaches %zu\n"
		"# HELP imcache_agent_lowers Shared read-only lowers mounted on this host.\n"
		"# TYPE imcache_agent_lowers gauge\nimcache_agent_lowers %zu\n",
		json_array_size(attaches), mounted);
	for (size_t k = 0; k < IMC_ARRAY_SIZE(lower_metrics); k++)
		write_family(f, lowers, k);
	if (fflush(f) != 0 || ferror(f))
		return imc_err(err, EIO, "metrics: write failed");
	return 0;
}
