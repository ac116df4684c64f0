/* containerd.services.snapshots.v1.Snapshots over grpc/: protobuf messages to snap_* calls and
 * back.  The snapshotter field of each request is ignored (one snapshotter per socket), as
 * containerd's own proxy plugin server does. */
#include <stdlib.h>
#include <string.h>

#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.pb-c.h"
#include "snap.h"

#define PB(x)	   Containerd__Services__Snapshots__V1__##x
#define PBD(x)	   containerd__services__snapshots__v1__##x##__descriptor
#define LIST_BATCH 100

typedef PB(Info__LabelsEntry) label_pb;

/* The grpc code of a snap_* failure. */
static int snap_grpc_code(int r)
{
	switch (r) {
	case -ENOENT:
		return GRPC_NOT_FOUND;
	case -EEXIST:
		return GRPC_ALREADY_EXISTS;
	case -EINVAL:
		return GRPC_INVALID_ARGUMENT;
	case -EBUSY:
		return GRPC_FAILED_PRECONDITION;
	default:
		return GRPC_INTERNAL;
	}
}

static int fail(struct grpc_call *call, imc_error *err)
{
	return grpc_call_fail(call, snap_grpc_code(err->code), "%s", err->msg);
}

/* The map entries of any request (they share Info's entry layout) as a JSON object. */
static int labels_from_pb(size_t n, void **entries, json_t **ret, imc_error *err)
{
	json_t *o = json_object();

	if (!o)
		return imc_err(err, ENOMEM, "out of memory");
	if (n > SNAP_MAX_LABELS) {
		json_decref(o);
		return imc_err(err, EINVAL, "more than %d labels", SNAP_MAX_LABELS);
	}
	for (size_t i = 0; i < n; i++) {
		label_pb *e = entries[i];
		if (json_object_set_new(o, e->key ? e->key : "",
					json_string(e->value ? e->value : "")) < 0) {
			json_decref(o);
			return imc_err(err, EINVAL, "label %.64s: not UTF-8", e->key ? e->key : "");
		}
	}
	*ret = o;
	return 0;
}

/* ---- mounts ---------------------------------------------------------------------------- */
struct mounts_pb {
	Containerd__Types__Mount m[1], *p[1];
	size_t n;
};

static void mounts_to_pb(struct snap_mounts *sm, struct mounts_pb *out)
{
	out->n = sm->n;
	for (size_t i = 0; i < sm->n; i++) {
		out->m[i] = (Containerd__Types__Mount)CONTAINERD__TYPES__MOUNT__INIT;
		out->m[i].type = sm->m[i].type;
		out->m[i].source = sm->m[i].source;
		out->m[i].target = "";
		out->m[i].n_options = sm->m[i].n_options;
		out->m[i].options = sm->m[i].options;
		out->p[i] = &out->m[i];
	}
}

static int send_mounts(struct grpc_call *call, struct snap_mounts *sm, int kind)
{
	PB(PrepareSnapshotResponse)
	prep = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_RESPONSE__INIT;
	PB(ViewSnapshotResponse)
	view = CONTAINERD__SERVICES__SNAPSHOTS__V1__VIEW_SNAPSHOT_RESPONSE__INIT;
	PB(MountsResponse) mnt = CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_RESPONSE__INIT;
	ProtobufCMessage *msg[] = {&prep.base, &view.base, &mnt.base};
	struct mounts_pb pb;
	int r;

	mounts_to_pb(sm, &pb);
	prep.n_mounts = view.n_mounts = mnt.n_mounts = pb.n;
	prep.mounts = view.mounts = mnt.mounts = pb.p;
	r = grpc_call_send(call, msg[kind]);
	snap_mounts_free(sm);
	return r < 0 ? grpc_call_fail(call, GRPC_INTERNAL, "cannot send the mounts") : GRPC_OK;
}

static int create(struct grpc_call *call, struct snap *s, enum snap_kind kind, const char *key,
		  const char *parent, size_t n, void **labels)
{
	_cleanup_json_ json_t *l = NULL;
	struct snap_mounts sm;
	imc_error err = {0};

	if (labels_from_pb(n, labels, &l, &err) < 0 ||
	    snap_prepare(s, kind, key, parent, l, &sm, &err) < 0)
		return fail(call, &err);
	return send_mounts(call, &sm, kind == SNAP_KIND_ACTIVE ? 0 : 1);
}

static int do_prepare(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(PrepareSnapshotRequest) *req = (const void *)m;
	return create(call, ud, SNAP_KIND_ACTIVE, req->key, req->parent, req->n_labels,
		      (void **)req->labels);
}

static int do_view(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(ViewSnapshotRequest) *req = (const void *)m;
	return create(call, ud, SNAP_KIND_VIEW, req->key, req->parent, req->n_labels,
		      (void **)req->labels);
}

static int do_mounts(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(MountsRequest) *req = (const void *)m;
	struct snap_mounts sm;
	imc_error err = {0};

	if (snap_mounts(ud, req->key, &sm, &err) < 0)
		return fail(call, &err);
	return send_mounts(call, &sm, 2);
}

static int send_empty(struct grpc_call *call)
{
	Google__Protobuf__Empty e = GOOGLE__PROTOBUF__EMPTY__INIT;
	return grpc_call_send(call, &e.base) < 0 ? GRPC_INTERNAL : GRPC_OK;
}

static int do_commit(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(CommitSnapshotRequest) *req = (const void *)m;
	_cleanup_json_ json_t *l = NULL;
	imc_error err = {0};

	if (labels_from_pb(req->n_labels, (void **)req->labels, &l, &err) < 0 ||
	    snap_commit(ud, req->name, req->key, l, &err) < 0)
		return fail(call, &err);
	return send_empty(call);
}

static int do_remove(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(RemoveSnapshotRequest) *req = (const void *)m;
	imc_error err = {0};

	if (snap_remove(ud, req->key, &err) < 0)
		return fail(call, &err);
	return send_empty(call);
}

/* ---- info ------------------------------------------------------------------------------ */
struct info_pb {
	PB(Info) info;
	Google__Protobuf__Timestamp created, updated;
	label_pb *entries;
	label_pb **ptrs;
};

static void info_pb_free(struct info_pb *p)
{
	free(p->entries);
	free(p->ptrs);
}

static int info_to_pb(const struct snap_info *in, struct info_pb *out)
{
	size_t n = json_object_size(in->labels), i = 0;
	const char *k;
	json_t *v;

	*out = (struct info_pb){.info = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__INIT,
				.created = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
				.updated = GOOGLE__PROTOBUF__TIMESTAMP__INIT};
	out->entries = calloc(n ? n : 1, sizeof(*out->entries));
	out->ptrs = calloc(n ? n : 1, sizeof(*out->ptrs));
	if (!out->entries || !out->ptrs) {
		info_pb_free(out);
		return -ENOMEM;
	}
	json_object_foreach(in->labels, k, v)
	{
		out->entries[i] =
		    (label_pb)CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__LABELS_ENTRY__INIT;
		out->entries[i].key = (char *)k;
		out->entries[i].value = (char *)json_string_value(v);
		out->ptrs[i] = &out->entries[i];
		i++;
	}
	out->info.name = (char *)in->name;
	out->info.parent = (char *)in->parent;
	out->info.kind = (PB(Kind))in->kind;
	out->created.seconds = in->created_ns / 1000000000;
	out->created.nanos = (int32_t)(in->created_ns % 1000000000);
	out->updated.seconds = in->updated_ns / 1000000000;
	out->updated.nanos = (int32_t)(in->updated_ns % 1000000000);
	out->info.created_at = &out->created;
	out->info.updated_at = &out->updated;
	out->info.n_labels = n;
	out->info.labels = out->ptrs;
	return 0;
}

static int do_stat(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(StatSnapshotRequest) *req = (const void *)m;
	PB(StatSnapshotResponse)
	resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_RESPONSE__INIT;
	struct snap_info info;
	struct info_pb pb;
	imc_error err = {0};
	int r;

	if (snap_stat(ud, req->key, &info, &err) < 0)
		return fail(call, &err);
	if (info_to_pb(&info, &pb) < 0)
		return grpc_call_fail(call, GRPC_INTERNAL, "out of memory");
	resp.info = &pb.info;
	r = grpc_call_send(call, &resp.base);
	info_pb_free(&pb);
	return r < 0 ? GRPC_INTERNAL : GRPC_OK;
}

static int do_update(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(UpdateSnapshotRequest) *req = (const void *)m;
	PB(UpdateSnapshotResponse)
	resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_RESPONSE__INIT;
	_cleanup_json_ json_t *l = NULL;
	struct snap_info info;
	struct info_pb pb;
	imc_error err = {0};
	int r;

	if (!req->info)
		return grpc_call_fail(call, GRPC_INVALID_ARGUMENT, "no info");
	if (labels_from_pb(req->info->n_labels, (void **)req->info->labels, &l, &err) < 0 ||
	    snap_update(ud, req->info->name, l,
			req->update_mask ? (const char *const *)req->update_mask->paths : NULL,
			req->update_mask ? req->update_mask->n_paths : 0, &info, &err) < 0)
		return fail(call, &err);
	if (info_to_pb(&info, &pb) < 0)
		return grpc_call_fail(call, GRPC_INTERNAL, "out of memory");
	resp.info = &pb.info;
	r = grpc_call_send(call, &resp.base);
	info_pb_free(&pb);
	return r < 0 ? GRPC_INTERNAL : GRPC_OK;
}

/* ---- list: batches of LIST_BATCH infos -------------------------------------------------- */
struct list_state {
	struct grpc_call *call;
	struct info_pb pb[LIST_BATCH];
	PB(Info) * ptrs[LIST_BATCH];
	size_t n;
};

static int list_flush(struct list_state *ls)
{
	PB(ListSnapshotsResponse)
	resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_RESPONSE__INIT;
	int r;

	if (ls->n == 0)
		return 0;
	resp.n_info = ls->n;
	resp.info = ls->ptrs;
	r = grpc_call_send(ls->call, &resp.base);
	for (size_t i = 0; i < ls->n; i++)
		info_pb_free(&ls->pb[i]);
	ls->n = 0;
	if (r < 0)
		return grpc_call_fail(ls->call, GRPC_INTERNAL, "cannot send the list");
	if (grpc_call_expired(ls->call))
		return grpc_call_fail(ls->call, GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
	return 0;
}

static int list_one(const struct snap_info *info, void *ud)
{
	struct list_state *ls = ud;

	if (info_to_pb(info, &ls->pb[ls->n]) < 0)
		return grpc_call_fail(ls->call, GRPC_INTERNAL, "out of memory");
	ls->ptrs[ls->n] = &ls->pb[ls->n].info;
	if (++ls->n == LIST_BATCH)
		return list_flush(ls);
	return 0;
}

static int do_list(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(ListSnapshotsRequest) *req = (const void *)m;
	_cleanup_free_ struct snap_filter *f =
	    calloc(req->n_filters ? req->n_filters : 1, sizeof(*f));
	_cleanup_free_ struct list_state *ls = calloc(1, sizeof(*ls));
	imc_error err = {0};
	size_t n = 0;
	int r = 0;

	if (!f || !ls)
		return grpc_call_fail(call, GRPC_INTERNAL, "out of memory");
	ls->call = call;
	for (; n < req->n_filters && r == 0; n++)
		if ((r = snap_filter_parse(req->filters[n], &f[n], &err)) < 0)
			r = fail(call, &err);
	if (r == 0 && (r = snap_walk(ud, f, req->n_filters, list_one, ls, &err)) < 0)
		r = fail(call, &err);
	if (r == 0)
		r = list_flush(ls);
	for (size_t i = 0; i < ls->n; i++)
		info_pb_free(&ls->pb[i]);
	for (size_t i = 0; i < n; i++)
		snap_filter_free(&f[i]);
	return r;
}

static int do_usage(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(UsageRequest) *req = (const void *)m;
	PB(UsageResponse) resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_RESPONSE__INIT;
	imc_error err = {0};

	if (snap_usage(ud, req->key, &resp.size, &resp.inodes, &err) < 0)
		return fail(call, &err);
	return grpc_call_send(call, &resp.base) < 0 ? GRPC_INTERNAL : GRPC_OK;
}

static int do_cleanup(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	imc_error err = {0};
	unsigned removed;

	if (snap_cleanup(ud, &removed, &err) < 0)
		return fail(call, &err);
	if (removed)
		imc_info("cleanup: removed %u unreferenced entries", removed);
	return send_empty(call);
}

#define SVC "/containerd.services.snapshots.v1.Snapshots/"
const struct grpc_method snap_service_methods[] = {
    {SVC "Prepare", &PBD(prepare_snapshot_request), false, do_prepare},
    {SVC "View", &PBD(view_snapshot_request), false, do_view},
    {SVC "Mounts", &PBD(mounts_request), false, do_mounts},
    {SVC "Commit", &PBD(commit_snapshot_request), false, do_commit},
    {SVC "Remove", &PBD(remove_snapshot_request), false, do_remove},
    {SVC "Stat", &PBD(stat_snapshot_request), false, do_stat},
    {SVC "Update", &PBD(update_snapshot_request), false, do_update},
    {SVC "List", &PBD(list_snapshots_request), true, do_list},
    {SVC "Usage", &PBD(usage_request), false, do_usage},
    {SVC "Cleanup", &PBD(cleanup_request), false, do_cleanup},
};
const size_t snap_service_n_methods = IMC_ARRAY_SIZE(snap_service_methods);
