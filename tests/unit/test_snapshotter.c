/* imc-snapshotter's store and service: overlayfs mounts, containerd's errors through gRPC,
 * labels, Update masks, List filters and batches, Usage, persistence, the lock, a malformed
 * record, and kill -9 at each stop point (a forked child stops itself, the test kills it) with
 * Cleanup after. */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../../attach/snap_int.h"
#include "../../oci/oci.h"
#include <sys/mount.h>
#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.pb-c.h"
#include "unit.h"

#define PB(x) Containerd__Services__Snapshots__V1__##x
#define SVC   "/containerd.services.snapshots.v1.Snapshots/"

/* Each test's directory is made in one directory of the whole run, which the parent removes
 * at the end whatever happened to the tests (a failed or timed-out test in its forked child
 * never gets to its checked teardown): the mounts a test left there first. */
static char base[32], dir[64];

static void setup_base(void)
{
	snprintf(base, sizeof(base), "/tmp/imc-snap.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(base));
}

static void teardown_base(void)
{
	size_t n = strlen(base);
	imc_error err;
	bool again = true;

	for (int pass = 0; again && pass < 16; pass++) {
		FILE *f = fopen("/proc/self/mountinfo", "r");
		char line[8192], point[4096];

		again = false;
		while (f && fgets(line, sizeof(line), f))
			if (sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 &&
			    strncmp(point, base, n) == 0 && point[n] == '/')
				again |= umount2(point, MNT_DETACH) == 0;
		if (f)
			fclose(f);
	}
	imc_rm_rf_at(AT_FDCWD, base, &err);
}

static void setup(void)
{
	snprintf(dir, sizeof(dir), "%s/t.XXXXXX", base);
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
	imc_error err;
	imc_rm_rf_at(AT_FDCWD, dir, &err);
}

static struct snap *open_store(void)
{
	struct snap *s;
	imc_error err = {0};
	ck_assert_msg(snap_open(dir, &s, &err) == 0, "%s", err.msg);
	return s;
}

static int n_entries(const char *sub)
{
	char path[128];
	int n = 0;
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	DIR *d = opendir(path);
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += de->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

static void prep(struct snap *s, enum snap_kind kind, const char *key, const char *parent,
		 struct snap_mounts *m)
{
	imc_error err = {0};
	struct snap_mounts tmp;
	ck_assert_msg(snap_prepare(s, kind, key, parent, NULL, m ? m : &tmp, &err) == 0, "%s",
		      err.msg);
	if (!m)
		snap_mounts_free(&tmp);
}

static void commit(struct snap *s, const char *name, const char *key)
{
	imc_error err = {0};
	ck_assert_msg(snap_commit(s, name, key, NULL, &err) == 0, "%s", err.msg);
}

static bool has_opt(const struct snap_mount *m, const char *prefix, const char *want)
{
	for (size_t i = 0; i < m->n_options; i++)
		if (strncmp(m->options[i], prefix, strlen(prefix)) == 0)
			return strcmp(m->options[i] + strlen(prefix), want) == 0;
	return false;
}

START_TEST(mounts_follow_overlayfs)
{
	struct snap *s = open_store();
	struct snap_mounts m;
	char want[512];

	prep(s, SNAP_KIND_ACTIVE, "a", NULL, &m); /* id 1 */
	ck_assert_str_eq(m.m[0].type, "bind");
	snprintf(want, sizeof(want), "%s/snapshots/1/fs", dir);
	ck_assert_str_eq(m.m[0].source, want);
	ck_assert(has_opt(&m.m[0], "rw", "") && has_opt(&m.m[0], "rbind", ""));
	snap_mounts_free(&m);
	commit(s, "l1", "a");
	prep(s, SNAP_KIND_ACTIVE, "b", "l1", NULL); /* id 2 */
	commit(s, "l2", "b");
	prep(s, SNAP_KIND_VIEW, "v1", "l1", &m); /* one parent: its fs, read-only */
	snprintf(want, sizeof(want), "%s/snapshots/1/fs", dir);
	ck_assert_str_eq(m.m[0].type, "bind");
	ck_assert_str_eq(m.m[0].source, want);
	ck_assert(has_opt(&m.m[0], "ro", ""));
	snap_mounts_free(&m);
	prep(s, SNAP_KIND_VIEW, "v2", "l2", &m); /* overlay, no upper */
	ck_assert_str_eq(m.m[0].type, "overlay");
	snprintf(want, sizeof(want), "%s/snapshots/2/fs:%s/snapshots/1/fs", dir, dir);
	ck_assert(has_opt(&m.m[0], "lowerdir=", want));
	ck_assert(!has_opt(&m.m[0], "upperdir=", ""));
	snap_mounts_free(&m);
	prep(s, SNAP_KIND_ACTIVE, "c", "l2", &m); /* id 5: upper and work of its own */
	ck_assert(has_opt(&m.m[0], "lowerdir=", want));
	snprintf(want, sizeof(want), "%s/snapshots/5/fs", dir);
	ck_assert(has_opt(&m.m[0], "upperdir=", want));
	snprintf(want, sizeof(want), "%s/snapshots/5/work", dir);
	ck_assert(has_opt(&m.m[0], "workdir=", want));
	snap_mounts_free(&m);
	snap_close(s);
}
END_TEST

/* ---- the service through a real socket --------------------------------------------------- */
struct svc {
	struct snap *s;
	struct grpc_server *srv;
	struct grpc_client *cli;
	pthread_t thread;
	volatile sig_atomic_t stop;
	char sock[128];
};

static void *serve(void *p)
{
	struct svc *v = p;
	imc_error err = {0};
	grpc_server_run(v->srv, &v->stop, &err);
	return NULL;
}

static void svc_start(struct svc *v)
{
	imc_error err = {0};

	*v = (struct svc){.s = open_store()};
	snprintf(v->sock, sizeof(v->sock), "%s/snap.sock", dir);
	ck_assert_int_eq(
	    grpc_server_new(snap_service_methods, snap_service_n_methods, v->s, &v->srv, &err), 0);
	ck_assert_int_eq(grpc_server_listen(v->srv, v->sock, &err), 0);
	ck_assert_int_eq(pthread_create(&v->thread, NULL, serve, v), 0);
	ck_assert_int_eq(grpc_client_connect(v->sock, &v->cli, &err), 0);
}

static void svc_stop(struct svc *v)
{
	grpc_client_free(v->cli);
	v->stop = 1;
	pthread_join(v->thread, NULL);
	grpc_server_free(v->srv);
	snap_close(v->s);
}

/* One call; the status, its message in msg (if not NULL), the responses in *ret (if not NULL,
 * else freed). */
static int call(struct svc *v, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage ***ret, size_t *ret_n,
		char *msg)
{
	char path[128];
	ProtobufCMessage **msgs;
	struct grpc_reply r;
	imc_error err = {0};
	size_t n;

	snprintf(path, sizeof(path), SVC "%s", method);
	ck_assert_msg(grpc_client_call(v->cli, path, req, desc, &msgs, &n, &r, &err) == 0, "%s",
		      err.msg);
	if (msg)
		snprintf(msg, GRPC_MAX_STATUS_MSG + 1, "%s", r.message);
	grpc_reply_free(&r);
	if (ret) {
		*ret = msgs;
		*ret_n = n;
	} else {
		for (size_t i = 0; i < n; i++)
			protobuf_c_message_free_unpacked(msgs[i], NULL);
		free(msgs);
	}
	return r.status;
}

#define EMPTY &google__protobuf__empty__descriptor
static int rpc_prepare(struct svc *v, const char *key, const char *parent, size_t nl,
		       PB(PrepareSnapshotRequest__LabelsEntry) * *labels)
{
	PB(PrepareSnapshotRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
	req.key = (char *)key;
	req.parent = (char *)parent;
	req.n_labels = nl;
	req.labels = labels;
	return call(v, "Prepare", &req.base,
		    &containerd__services__snapshots__v1__prepare_snapshot_response__descriptor,
		    NULL, NULL, NULL);
}

static int rpc_commit(struct svc *v, const char *name, const char *key)
{
	PB(CommitSnapshotRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__INIT;
	req.name = (char *)name;
	req.key = (char *)key;
	return call(v, "Commit", &req.base, EMPTY, NULL, NULL, NULL);
}

static int rpc_remove(struct svc *v, const char *key)
{
	PB(RemoveSnapshotRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__REMOVE_SNAPSHOT_REQUEST__INIT;
	req.key = (char *)key;
	return call(v, "Remove", &req.base, EMPTY, NULL, NULL, NULL);
}

static PB(StatSnapshotResponse) * rpc_stat(struct svc *v, const char *key, int *status)
{
	PB(StatSnapshotRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
	ProtobufCMessage **msgs;
	size_t n;
	PB(StatSnapshotResponse) *r = NULL;

	req.key = (char *)key;
	*status = call(v, "Stat", &req.base,
		       &containerd__services__snapshots__v1__stat_snapshot_response__descriptor,
		       &msgs, &n, NULL);
	if (n)
		r = (void *)msgs[0];
	free(msgs);
	return r;
}

static const char *info_label(const PB(Info) * info, const char *key)
{
	for (size_t i = 0; i < info->n_labels; i++)
		if (strcmp(info->labels[i]->key, key) == 0)
			return info->labels[i]->value;
	return NULL;
}

START_TEST(errors_are_containerds)
{
	struct svc v;
	char msg[GRPC_MAX_STATUS_MSG + 1];
	int st;

	svc_start(&v);
	ck_assert_int_eq(rpc_prepare(&v, "a", "", 0, NULL), GRPC_OK);
	ck_assert_int_eq(rpc_prepare(&v, "a", "", 0, NULL), GRPC_ALREADY_EXISTS);
	ck_assert_int_eq(rpc_prepare(&v, "", "", 0, NULL), GRPC_INVALID_ARGUMENT);
	ck_assert_int_eq(rpc_prepare(&v, "b", "missing", 0, NULL), GRPC_NOT_FOUND);
	ck_assert_int_eq(rpc_prepare(&v, "b", "a", 0, NULL), GRPC_INVALID_ARGUMENT); /* active */
	ck_assert_int_eq(rpc_commit(&v, "l1", "missing"), GRPC_NOT_FOUND);
	ck_assert_int_eq(rpc_commit(&v, "l1", "a"), GRPC_OK);
	ck_assert_int_eq(rpc_commit(&v, "l2", "l1"), GRPC_FAILED_PRECONDITION); /* not active */
	ck_assert_int_eq(rpc_prepare(&v, "b", "l1", 0, NULL), GRPC_OK);
	ck_assert_int_eq(rpc_commit(&v, "l1", "b"), GRPC_ALREADY_EXISTS);
	ck_assert_int_eq(rpc_remove(&v, "l1"), GRPC_FAILED_PRECONDITION); /* has a child */
	ck_assert_int_eq(rpc_remove(&v, "nope"), GRPC_NOT_FOUND);
	PB(MountsRequest) mr = CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_REQUEST__INIT;
	mr.key = "l1";
	ck_assert_int_eq(call(&v, "Mounts", &mr.base,
			      &containerd__services__snapshots__v1__mounts_response__descriptor,
			      NULL, NULL, msg),
			 GRPC_FAILED_PRECONDITION);
	ck_assert_ptr_null(rpc_stat(&v, "nope", &st));
	ck_assert_int_eq(st, GRPC_NOT_FOUND);
	/* a label over 4096 bytes is refused and changes nothing */
	_cleanup_free_ char *big = calloc(1, 5000);
	memset(big, 'x', 4999);
	PB(PrepareSnapshotRequest__LabelsEntry)
	e = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT,
	*ep = &e;
	e.key = "k";
	e.value = big;
	ck_assert_int_eq(rpc_prepare(&v, "c", "", 1, &ep), GRPC_INVALID_ARGUMENT);
	ck_assert_ptr_null(rpc_stat(&v, "c", &st));
	ck_assert_int_eq(rpc_remove(&v, "b"), GRPC_OK);
	ck_assert_int_eq(rpc_remove(&v, "l1"), GRPC_OK);
	ck_assert_int_eq(n_entries("snapshots"), 0);
	svc_stop(&v);
}
END_TEST

START_TEST(labels_round_trip_and_update)
{
	struct svc v;
	PB(PrepareSnapshotRequest__LabelsEntry)
	e[2] = {CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT,
		CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT};
	PB(PrepareSnapshotRequest__LabelsEntry) * ep[2] = {&e[0], &e[1]};
	PB(StatSnapshotResponse) * r;
	int st;

	svc_start(&v);
	e[0].key = "containerd.io/snapshot.ref";
	e[0].value = "sha256:abc";
	e[1].key = "x";
	e[1].value = "1";
	ck_assert_int_eq(rpc_prepare(&v, "a", "", 2, ep), GRPC_OK);
	r = rpc_stat(&v, "a", &st);
	ck_assert_int_eq(st, GRPC_OK);
	ck_assert_int_eq(r->info->kind, CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE);
	ck_assert_str_eq(info_label(r->info, "containerd.io/snapshot.ref"), "sha256:abc");
	ck_assert_str_eq(info_label(r->info, "x"), "1");
	ck_assert_int_gt(r->info->created_at->seconds, 1700000000);
	protobuf_c_message_free_unpacked(&r->base, NULL);

	/* Update with the mask labels.x (to "") and labels.y: x goes, y comes, the ref stays */
	PB(UpdateSnapshotRequest)
	up = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_REQUEST__INIT;
	PB(Info) info = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__INIT;
	PB(Info__LabelsEntry)
	le = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__LABELS_ENTRY__INIT, *lep = &le;
	Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
	char *paths[] = {"labels.x", "labels.y"};
	le.key = "y";
	le.value = "2";
	info.name = "a";
	info.n_labels = 1;
	info.labels = &lep;
	mask.n_paths = 2;
	mask.paths = paths;
	up.info = &info;
	up.update_mask = &mask;
	ck_assert_int_eq(
	    call(&v, "Update", &up.base,
		 &containerd__services__snapshots__v1__update_snapshot_response__descriptor, NULL,
		 NULL, NULL),
	    GRPC_OK);
	r = rpc_stat(&v, "a", &st);
	ck_assert_ptr_null(info_label(r->info, "x"));
	ck_assert_str_eq(info_label(r->info, "y"), "2");
	ck_assert_str_eq(info_label(r->info, "containerd.io/snapshot.ref"), "sha256:abc");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* an immutable field in the mask is refused */
	char *bad[] = {"parent"};
	mask.n_paths = 1;
	mask.paths = bad;
	ck_assert_int_eq(
	    call(&v, "Update", &up.base,
		 &containerd__services__snapshots__v1__update_snapshot_response__descriptor, NULL,
		 NULL, NULL),
	    GRPC_INVALID_ARGUMENT);
	/* no mask: the labels as a whole */
	up.update_mask = NULL;
	ck_assert_int_eq(
	    call(&v, "Update", &up.base,
		 &containerd__services__snapshots__v1__update_snapshot_response__descriptor, NULL,
		 NULL, NULL),
	    GRPC_OK);
	r = rpc_stat(&v, "a", &st);
	ck_assert_uint_eq(r->info->n_labels, 1);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	info.name = "nope";
	ck_assert_int_eq(
	    call(&v, "Update", &up.base,
		 &containerd__services__snapshots__v1__update_snapshot_response__descriptor, NULL,
		 NULL, NULL),
	    GRPC_NOT_FOUND);
	svc_stop(&v);
	/* labels survive a reopen */
	struct snap *s = open_store();
	struct snap_info si;
	imc_error err = {0};
	ck_assert_int_eq(snap_stat(s, "a", &si, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(si.labels, "y")), "2");
	snap_close(s);
}
END_TEST

/* The names List answers for filters (joined with spaces), or the status when it fails. */
static void list_names(struct svc *v, char **filters, size_t nf, char *out, size_t size,
		       int *status, size_t *ret_batches)
{
	PB(ListSnapshotsRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_REQUEST__INIT;
	ProtobufCMessage **msgs;
	size_t n, o = 0;

	req.n_filters = nf;
	req.filters = filters;
	*status = call(v, "List", &req.base,
		       &containerd__services__snapshots__v1__list_snapshots_response__descriptor,
		       &msgs, &n, NULL);
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		PB(ListSnapshotsResponse) *r = (void *)msgs[i];
		for (size_t j = 0; j < r->n_info; j++)
			o += (size_t)snprintf(out + o, size - o, "%s%s", o ? " " : "",
					      r->info[j]->name);
		protobuf_c_message_free_unpacked(msgs[i], NULL);
	}
	free(msgs);
	if (ret_batches)
		*ret_batches = n;
}

START_TEST(list_filters_as_containerd)
{
	struct svc v;
	char out[8192];
	int st;
	static const struct {
		const char *f1, *f2, *want;
	} cases[] = {
	    {"kind==committed", NULL, "l1"},
	    {"kind==active", NULL, "a b"},
	    {"kind!=active", NULL, "l1 v"},
	    {"name~=^[ab]$", NULL, "a b"},
	    {"parent==l1", NULL, "b v"},
	    {"parent", NULL, "a b l1 v"},
	    {"labels.\"containerd.io/snapshot.ref\"==sha256:1", NULL, "a"},
	    {"labels.\"containerd.io/snapshot.ref\"", NULL, "a"},
	    {"labels.team==x", NULL, ""},
	    {"kind==view", "name==a", "a v"},
	    {"kind==active,parent==l1", NULL, "b"},
	    {"name~=/^l/", NULL, "l1"},
	    {"name == \"a\"", NULL, "a"},
	    {"name~=/^(a|b){1,3}$/", NULL, "a b"},
	    {"name~=^[[:alpha:]]+[0-9]*$", NULL, "a b l1 v"},
	    {"name~=^((((a)+)+)+)+$", NULL, "a"},
	};

	svc_start(&v);
	PB(PrepareSnapshotRequest__LabelsEntry)
	e = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT,
	*ep = &e;
	e.key = "containerd.io/snapshot.ref";
	e.value = "sha256:1";
	ck_assert_int_eq(rpc_prepare(&v, "x", "", 0, NULL), GRPC_OK);
	ck_assert_int_eq(rpc_commit(&v, "l1", "x"), GRPC_OK);
	ck_assert_int_eq(rpc_prepare(&v, "a", "", 1, &ep), GRPC_OK);
	ck_assert_int_eq(rpc_prepare(&v, "b", "l1", 0, NULL), GRPC_OK);
	struct snap_mounts m;
	imc_error err = {0};
	ck_assert_int_eq(snap_prepare(v.s, SNAP_KIND_VIEW, "v", "l1", NULL, &m, &err), 0);
	snap_mounts_free(&m);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		char *f[2] = {(char *)cases[i].f1, (char *)cases[i].f2};
		list_names(&v, f, cases[i].f2 ? 2 : 1, out, sizeof(out), &st, NULL);
		ck_assert_int_eq(st, GRPC_OK);
		ck_assert_msg(strcmp(out, cases[i].want) == 0, "%s: got \"%s\", want \"%s\"",
			      cases[i].f1, out, cases[i].want);
	}
	static const char *const bad[] = {
	    "", "kind==", "kind=committed", "1x", "name~=(", "labels.\"x", "kind==a b", "a,,b",
	    /* repetitions regcomp would grow past memory or time; a back-reference */
	    "name~=a++++++++++++++++++++++++++++++++++++++++",
	    "name~=((((((((((((((((((((a+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+",
	    "name~=/a{1000}{1000}/", "name~=/(((a{10}){10}){10})/", "name~=a?++++++++",
	    "name~=(a)\\1"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++) {
		char *f[1] = {(char *)bad[i]};
		list_names(&v, f, 1, out, sizeof(out), &st, NULL);
		ck_assert_msg(st == GRPC_INVALID_ARGUMENT, "filter \"%s\": status %d", bad[i], st);
	}
	/* 250 snapshots: all of them, in batches of 100 */
	for (int i = 0; i < 246; i++) {
		char key[16];
		snprintf(key, sizeof(key), "n%03d", i);
		ck_assert_int_eq(rpc_prepare(&v, key, "", 0, NULL), GRPC_OK);
	}
	size_t batches;
	list_names(&v, NULL, 0, out, sizeof(out), &st, &batches);
	ck_assert_int_eq(st, GRPC_OK);
	ck_assert_uint_eq(batches, 3);
	ck_assert(strncmp(out, "a b l1 n000 n001", 16) == 0);
	svc_stop(&v);
}
END_TEST

START_TEST(usage_counts_blocks_and_inodes)
{
	struct snap *s = open_store();
	imc_error err = {0};
	int64_t size, inodes;
	char path[256];

	prep(s, SNAP_KIND_ACTIVE, "a", NULL, NULL);
	ck_assert_int_eq(snap_usage(s, "a", &size, &inodes, &err), 0);
	ck_assert_int_eq(inodes, 1); /* the fs directory */
	snprintf(path, sizeof(path), "%s/snapshots/1/fs/f", dir);
	int fd = open(path, O_CREAT | O_WRONLY, 0644);
	char buf[65536] = {1};
	ck_assert_int_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	fsync(fd);
	close(fd);
	char hard[256];
	snprintf(hard, sizeof(hard), "%s/snapshots/1/fs/g", dir);
	ck_assert_int_eq(link(path, hard), 0); /* a hard link counts once */
	ck_assert_int_eq(snap_usage(s, "a", &size, &inodes, &err), 0);
	ck_assert_int_eq(inodes, 2);
	ck_assert_int_ge(size, 65536);
	commit(s, "l1", "a");
	int64_t csize, cinodes;
	ck_assert_int_eq(snap_usage(s, "l1", &csize, &cinodes, &err), 0);
	ck_assert_int_eq(csize, size);
	ck_assert_int_eq(cinodes, 2);
	ck_assert_int_eq(snap_usage(s, "a", &size, &inodes, &err), -ENOENT);
	snap_close(s);
}
END_TEST

START_TEST(store_is_locked_and_records_checked)
{
	struct snap *s = open_store(), *t;
	imc_error err = {0};
	char path[128];

	ck_assert_int_eq(snap_open(dir, &t, &err), -EBUSY);
	prep(s, SNAP_KIND_ACTIVE, "a", NULL, NULL);
	snap_close(s);
	snprintf(path, sizeof(path), "%s/meta.json", dir);
	FILE *f = fopen(path, "w");
	fputs("{\"version\":1,\"next_id\":2,\"snapshots\":{\"a\":{\"id\":1,\"kind\":\"weird\"}}}",
	      f);
	fclose(f);
	ck_assert_int_lt(snap_open(dir, &t, &err), 0);
	ck_assert_msg(strstr(err.msg, "snapshot a: malformed record"), "%s", err.msg);
}
END_TEST

/* The OCI image spec's ChainID: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) +
 * " " + DiffID(Ln)).  The values were computed with Python's hashlib from those formulas. */
START_TEST(chain_ids_as_oci)
{
	static const char *const ids[] = {
	    "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
	    "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d",
	    "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"};
	static const char *const want[] = {
	    "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
	    "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676",
	    "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106"};
	const char *bad[] = {ids[0], "sha256:xyz"};
	char got[80];
	imc_error err = {0};

	for (size_t n = 1; n <= 3; n++) {
		ck_assert_int_eq(oci_chain_id(ids, n, got, &err), 0);
		ck_assert_str_eq(got, want[n - 1]);
	}
	ck_assert_int_eq(oci_chain_id(ids, 0, got, &err), -EINVAL);
	ck_assert_int_eq(oci_chain_id(bad, 2, got, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "diff_id 1"), "%s", err.msg);
}
END_TEST

#define CACHE "imc-00000000000000c1"

static void write_meta(const char *json)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/meta.json", dir);
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(json, f);
	fclose(f);
}

/* A snapshot served from a cache (its record names the cache): what builds on it gets the
 * cache's image rootfs under lowers/<cache> as its lowest lowerdir (a tmpfs stands in for the
 * cache's read-only ext4 here; test_snapshotter_cache.sh mounts real caches), a view over it a
 * read-only bind of that rootfs, and its removal unmounts the lower.  An unreferenced lower is
 * unmounted at open. */
START_TEST(cache_lowers_under_chains)
{
	struct snap_mounts m;
	struct snap *s;
	imc_error err = {0};
	char lower[160], want[400];

	mkdir(dir, 0700);
	write_meta("{\"version\":1,\"next_id\":2,\"snapshots\":{\"top\":{\"id\":1,\"kind\":"
		   "\"committed\",\"parent\":\"\",\"created\":1,\"updated\":1,\"labels\":{},"
		   "\"size\":0,\"inodes\":0,\"cache\":\"" CACHE "\",\"image\":1}}}");
	snprintf(lower, sizeof(lower), "%s/lowers", dir);
	mkdir(lower, 0700);
	snprintf(lower, sizeof(lower), "%s/lowers/" CACHE, dir);
	mkdir(lower, 0700);
	ck_assert_int_eq(mount("none", lower, "tmpfs", 0, NULL), 0);
	s = open_store(); /* the lower is named: it stays */
	ck_assert_int_eq(n_entries("lowers"), 1);
	mkdir(dir, 0700);
	snprintf(want, sizeof(want), "%s/snapshots/1", dir);
	mkdir(want, 0700);

	prep(s, SNAP_KIND_ACTIVE, "c", "top", &m);
	snprintf(want, sizeof(want), "%s/lowers/" CACHE "/images/1/rootfs", dir);
	ck_assert_str_eq(m.m[0].type, "overlay");
	ck_assert(has_opt(&m.m[0], "lowerdir=", want));
	snap_mounts_free(&m);
	prep(s, SNAP_KIND_VIEW, "v", "top", &m);
	ck_assert_str_eq(m.m[0].type, "bind");
	ck_assert_str_eq(m.m[0].source, want);
	snap_mounts_free(&m);
	ck_assert_int_eq(snap_remove(s, "top", &err), -EBUSY);
	ck_assert_int_eq(snap_remove(s, "c", &err), 0);
	ck_assert_int_eq(snap_remove(s, "v", &err), 0);
	ck_assert_int_eq(snap_remove(s, "top", &err), 0);
	ck_assert_int_eq(n_entries("lowers"), 0); /* unmounted and removed */
	snap_close(s);

	/* A lower no record names (a crash between the mount and the record) goes at open;
	 * what is not a cache id there (a symlink to a mount, say) is left alone. */
	mkdir(lower, 0700);
	ck_assert_int_eq(mount("none", lower, "tmpfs", 0, NULL), 0);
	snprintf(want, sizeof(want), "%s/lowers/other", dir);
	ck_assert_int_eq(symlink("/proc", want), 0);
	s = open_store();
	ck_assert_int_eq(n_entries("lowers"), 1);
	ck_assert_int_eq(unlink(want), 0);
	snap_close(s);

	/* A record naming a cache must be a committed one with an image index. */
	write_meta("{\"version\":1,\"next_id\":2,\"snapshots\":{\"top\":{\"id\":1,\"kind\":"
		   "\"active\",\"parent\":\"\",\"created\":1,\"updated\":1,\"labels\":{},"
		   "\"cache\":\"" CACHE "\",\"image\":0}}}");
	ck_assert_int_lt(snap_open(dir, &s, &err), 0);
	ck_assert_msg(strstr(err.msg, "snapshot top: malformed record"), "%s", err.msg);
}
END_TEST

/* In a child: open, stop at POINT in OP, and be killed there by the parent. */
static void crash_at(const char *point, void (*op)(struct snap *s))
{
	pid_t pid = fork();
	int status;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		setenv("IMC_SNAP_STOP_AT", point, 1);
		op(open_store());
		_exit(3); /* did not stop */
	}
	ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
	ck_assert_msg(WIFSTOPPED(status), "%s: child did not stop", point);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status));
}

static void op_prepare(struct snap *s)
{
	prep(s, SNAP_KIND_ACTIVE, "k", "l1", NULL);
}
static void op_remove(struct snap *s)
{
	imc_error err;
	snap_remove(s, "b", &err);
}
static void op_commit(struct snap *s)
{
	commit(s, "l2", "b");
}

START_TEST(kill_9_anywhere_then_cleanup)
{
	struct snap *s = open_store();
	struct snap_info si;
	imc_error err = {0};
	unsigned removed;

	prep(s, SNAP_KIND_ACTIVE, "a", NULL, NULL);
	commit(s, "l1", "a");
	prep(s, SNAP_KIND_ACTIVE, "b", "l1", NULL);
	snap_close(s);

	crash_at("prepare-after-mkdir", op_prepare);
	s = open_store();
	ck_assert_int_eq(snap_stat(s, "k", &si, &err), -ENOENT);
	ck_assert_int_eq(n_entries("snapshots"), 3);
	prep(s, SNAP_KIND_ACTIVE, "k2", "l1", NULL); /* the orphan's id is not reused */
	ck_assert_int_eq(snap_cleanup(s, &removed, &err), 0);
	ck_assert_uint_eq(removed, 1);
	ck_assert_int_eq(n_entries("snapshots"), 3);
	ck_assert_int_eq(snap_remove(s, "k2", &err), 0);
	snap_close(s);

	crash_at("commit-before-meta", op_commit);
	s = open_store();
	ck_assert_int_eq(snap_stat(s, "b", &si, &err), 0);
	ck_assert_int_eq(si.kind, SNAP_KIND_ACTIVE);
	ck_assert_int_eq(snap_stat(s, "l2", &si, &err), -ENOENT);
	ck_assert_int_eq(snap_cleanup(s, &removed, &err), 0);
	ck_assert_uint_eq(removed, 0);
	snap_close(s);

	crash_at("remove-after-meta", op_remove);
	s = open_store();
	ck_assert_int_eq(snap_stat(s, "b", &si, &err), -ENOENT);
	ck_assert_int_eq(n_entries("snapshots"), 2);
	ck_assert_int_eq(snap_cleanup(s, &removed, &err), 0);
	ck_assert_uint_eq(removed, 1);
	ck_assert_int_eq(n_entries("snapshots"), 1);
	ck_assert_int_eq(n_entries("."), 4); /* lock, meta.json, snapshots, lowers */
	snap_close(s);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("snapshotter");
	TCase *tc = tcase_create("snapshotter");

	tcase_add_unchecked_fixture(tc, setup_base, teardown_base);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, mounts_follow_overlayfs);
	tcase_add_test(tc, errors_are_containerds);
	tcase_add_test(tc, labels_round_trip_and_update);
	tcase_add_test(tc, list_filters_as_containerd);
	tcase_add_test(tc, usage_counts_blocks_and_inodes);
	tcase_add_test(tc, store_is_locked_and_records_checked);
	tcase_add_test(tc, kill_9_anywhere_then_cleanup);
	tcase_add_test(tc, chain_ids_as_oci);
	tcase_add_test(tc, cache_lowers_under_chains);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
