/* Driver-independent entry points: validate, then dispatch through the driver table. */
#include <string.h>

#include "internal.h"

static const struct store_driver_ops *const drivers[] = {&store_reflink_ops, &store_thin_ops};

#define STORE_ID_MAX 64

static int check_id(const char *id, imc_error *err)
{
	if (!imc_name_valid(id, STORE_ID_MAX))
		return imc_err(err, EINVAL, "store id \"%.80s\": want 1-%d of [A-Za-z0-9._-]",
			       id ? id : "", STORE_ID_MAX);
	return 0;
}

const char *store_kind_name(enum store_kind kind)
{
	switch (kind) {
	case STORE_VOLUME:
		return "volume";
	case STORE_SNAPSHOT:
		return "snapshot";
	case STORE_CLONE:
		return "clone";
	}
	return "?";
}

/* The caller's driver options, copied for store_driver_opts. */
static int copy_opts(struct store *s, const char *const *opts, imc_error *err)
{
	size_t n = 0;

	while (opts && opts[n])
		n++;
	if (n == 0)
		return 0;
	if (!(s->opts_copy = calloc(n + 1, sizeof(*s->opts_copy))))
		return imc_err(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (!(s->opts_copy[i] = strdup(opts[i])))
			return imc_err(err, ENOMEM, "out of memory");
	return 0;
}

static void store_free(struct store *s)
{
	for (size_t i = 0; s->opts_copy && s->opts_copy[i]; i++)
		free(s->opts_copy[i]);
	free(s->opts_copy);
	json_decref(s->repairs);
	free(s->state_dir);
	free(s);
}

int store_open(const struct store_config *cfg, struct store **ret, imc_error *err)
{
	const char *name = cfg->driver && *cfg->driver ? cfg->driver : "reflink";
	const struct store_driver_ops *ops = NULL;
	struct store *s;
	int r;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(drivers); i++)
		if (strcmp(drivers[i]->name, name) == 0)
			ops = drivers[i];
	if (!ops)
		return imc_err(err, EINVAL, "store driver \"%.40s\": unknown (have: reflink, thin)",
			       name);
	s = calloc(1, sizeof(*s));
	if (!s)
		return imc_err(err, ENOMEM, "out of memory");
	s->ops = ops;
	s->pool_size = cfg->pool_size ? cfg->pool_size : STORE_DEFAULT_POOL_SIZE;
	s->pool_size_given = cfg->pool_size != 0;
	s->driver_opts = cfg->driver_opts;
	s->state_dir =
	    strdup(cfg->state_dir && *cfg->state_dir ? cfg->state_dir : STORE_DEFAULT_STATE_DIR);
	if (!s->state_dir || copy_opts(s, cfg->driver_opts, err) < 0) {
		store_free(s);
		return imc_err(err, ENOMEM, "out of memory");
	}
	r = ops->open(s, err);
	s->driver_opts = NULL;
	if (r == 0 && !s->repairs && !(s->repairs = json_array())) {
		ops->close(s);
		r = imc_err(err, ENOMEM, "out of memory");
	}
	if (r < 0) {
		store_free(s);
		return imc_err_wrap(err, "store %s in %s", name, cfg->state_dir);
	}
	*ret = s;
	return 0;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	s->ops->close(s);
	store_free(s);
}

json_t *store_repairs(const struct store *s)
{
	return s->repairs;
}

const char *store_driver_name(const struct store *s)
{
	return s->ops->name;
}

const char *const *store_driver_opts(const struct store *s)
{
	return (const char *const *)s->opts_copy;
}

int store_volume_create(struct store *s, const char *id, uint64_t size, imc_error *err)
{
	int r = check_id(id, err);

	if (r == 0 && size < (16ULL << 20))
		r = imc_err(err, EINVAL, "volume %s: size %llu is below the 16 MiB minimum", id,
			    (unsigned long long)size);
	return r < 0 ? r : s->ops->volume_create(s, id, size, err);
}

int store_activate(struct store *s, enum store_kind kind, const char *id, unsigned flags,
		   struct store_dev *ret, imc_error *err)
{
	int r = check_id(id, err);

	if (r == 0 && (flags & ~(STORE_ACTIVATE_READ_ONLY | STORE_ACTIVATE_PERSIST)))
		r = imc_err(err, EINVAL, "%s %s: unknown activate flags %#x", store_kind_name(kind),
			    id, flags);
	if (r == 0 && kind == STORE_SNAPSHOT && !(flags & STORE_ACTIVATE_READ_ONLY))
		r = imc_err(err, EPERM, "snapshot %s: read-only", id);
	return r < 0 ? r : s->ops->activate(s, kind, id, flags, ret, err);
}

int store_deactivate(struct store *s, enum store_kind kind, const char *id, struct store_dev *dev,
		     imc_error *err)
{
	int r = check_id(id, err);
	return r < 0 ? r : s->ops->deactivate(s, kind, id, dev, err);
}

int store_seal(struct store *s, const char *volume_id, const char *snapshot_id, imc_error *err)
{
	int r = check_id(volume_id, err);

	if (r == 0)
		r = check_id(snapshot_id, err);
	return r < 0 ? r : s->ops->seal(s, volume_id, snapshot_id, err);
}

int store_clone(struct store *s, const char *snapshot_id, const char *clone_id, imc_error *err)
{
	int r = check_id(snapshot_id, err);

	if (r == 0)
		r = check_id(clone_id, err);
	return r < 0 ? r : s->ops->clone(s, snapshot_id, clone_id, err);
}

int store_remove(struct store *s, enum store_kind kind, const char *id, imc_error *err)
{
	int r = check_id(id, err);
	return r < 0 ? r : s->ops->remove(s, kind, id, err);
}

int store_stat(struct store *s, enum store_kind kind, const char *id, struct store_object_info *ret,
	       imc_error *err)
{
	int r = check_id(id, err);
	return r < 0 ? r : s->ops->stat(s, kind, id, ret, err);
}

int store_list(struct store *s, enum store_kind kind, char ***ret_ids, size_t *ret_n,
	       imc_error *err)
{
	return s->ops->list(s, kind, ret_ids, ret_n, err);
}

void store_list_free(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

int store_usage(struct store *s, struct store_usage *ret, imc_error *err)
{
	return s->ops->usage(s, ret, err);
}

int store_teardown(struct store *s, imc_error *err)
{
	return s->ops->teardown(s, err);
}

int store_scratch_dir(struct store *s, const char *name, char ret[PATH_MAX], imc_error *err)
{
	if (!name || !imc_name_valid(name, 64))
		return imc_err(err, EINVAL, "scratch directory \"%.80s\": malformed name",
			       name ? name : "");
	if (!s->ops->scratch_dir)
		return -EOPNOTSUPP;
	return s->ops->scratch_dir(s, name, ret, err);
}

int store_trim(struct store *s, uint64_t *ret_trimmed, imc_error *err)
{
	*ret_trimmed = 0;
	return s->ops->trim ? s->ops->trim(s, ret_trimmed, err) : 0;
}

int store_fit(struct store *s, imc_error *err)
{
	uint64_t beside = __atomic_load_n(&s->beside, __ATOMIC_RELAXED);

	return s->ops->fit ? s->ops->fit(s, beside, err) : 0;
}

int store_space_expect(struct store *s, int64_t bytes, imc_error *err)
{
	if (bytes < 0)
		__atomic_sub_fetch(&s->beside, (uint64_t)-bytes, __ATOMIC_RELAXED);
	else
		__atomic_add_fetch(&s->beside, (uint64_t)bytes, __ATOMIC_RELAXED);
	return store_fit(s, err);
}

int store_volume_from_snapshot(struct store *s, const char *snapshot_id, const char *volume_id,
			       uint64_t size, imc_error *err)
{
	int r = check_id(snapshot_id, err);

	if (r == 0)
		r = check_id(volume_id, err);
	if (r == 0 && !s->ops->volume_from_snapshot)
		r = imc_err(err, EOPNOTSUPP, "store driver %s: no volumes from snapshots",
			    s->ops->name);
	return r < 0 ? r : s->ops->volume_from_snapshot(s, snapshot_id, volume_id, size, err);
}

int store_resize(struct store *s, enum store_kind kind, const char *id, uint64_t size,
		 imc_error *err)
{
	int r = check_id(id, err);

	if (r == 0 && kind == STORE_SNAPSHOT)
		r = imc_err(err, EINVAL, "snapshot %s: read-only, cannot grow", id);
	if (r == 0 && (size == 0 || size % 4096))
		r = imc_err(err, EINVAL, "%s %s: size %llu is not a positive multiple of 4096",
			    store_kind_name(kind), id, (unsigned long long)size);
	return r < 0 ? r : s->ops->resize(s, kind, id, size, err);
}

const char *store_state_dir(const struct store *s)
{
	return s->state_dir;
}

bool store_can(const struct store *s, enum store_cap cap)
{
	switch (cap) {
	case STORE_CAP_VOLUME_FROM_SNAPSHOT:
		return s->ops->volume_from_snapshot != NULL;
	}
	return false;
}

void store_fill_hints(const struct store *s, struct store_fill_hints *ret)
{
	*ret = (struct store_fill_hints){0};
	if (s->ops->fill_hints)
		s->ops->fill_hints(s, ret);
}

int store_clone_of_device(struct store *s, const char *dev, char ret[STORE_CLONE_ID_MAX + 1],
			  imc_error *err)
{
	ret[0] = '\0';
	return s->ops->clone_of_device ? s->ops->clone_of_device(s, dev, ret, err) : 0;
}

int store_for_each_clone_device(struct store *s, store_clone_device_fn fn, void *ctx,
				imc_error *err)
{
	return s->ops->for_each_clone_device ? s->ops->for_each_clone_device(s, fn, ctx, err) : 0;
}
