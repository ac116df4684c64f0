/* grpc/: framing, grpc-timeout, grpc-message, and a real server on a unix socket (in a thread)
 * answered through the client: unary and streaming calls, status trailers, unknown methods,
 * broken frames and messages, caps, deadlines, stale and busy sockets. */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "../../grpc/grpc.h"
#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.pb-c.h"
#include "unit.h"

#define PB(x) Containerd__Services__Snapshots__V1__##x

START_TEST(frames_parse)
{
	const uint8_t ok[] = {0, 0, 0, 0, 2, 'h', 'i', 9};
	const uint8_t big[] = {0, 0, 0x40, 0, 1};
	const uint8_t zip[] = {1, 0, 0, 0, 0};
	const uint8_t flag[] = {2, 0, 0, 0, 0};
	const uint8_t *m;
	size_t len, used;

	ck_assert_int_eq(grpc_frame_parse(ok, sizeof(ok), 100, &m, &len, &used), 0);
	ck_assert_uint_eq(len, 2);
	ck_assert_uint_eq(used, 7);
	ck_assert(memcmp(m, "hi", 2) == 0);
	ck_assert_int_eq(grpc_frame_parse(ok, 6, 100, &m, &len, &used), -EAGAIN);
	ck_assert_int_eq(grpc_frame_parse(ok, 4, 100, &m, &len, &used), -EAGAIN);
	ck_assert_int_eq(grpc_frame_parse(ok, sizeof(ok), 1, &m, &len, &used), -EFBIG);
	ck_assert_int_eq(grpc_frame_parse(big, sizeof(big), GRPC_MAX_MESSAGE, &m, &len, &used),
			 -EFBIG);
	ck_assert_int_eq(grpc_frame_parse(zip, sizeof(zip), 100, &m, &len, &used), -EOPNOTSUPP);
	ck_assert_int_eq(grpc_frame_parse(flag, sizeof(flag), 100, &m, &len, &used), -EPROTO);
}
END_TEST

START_TEST(timeouts_parse)
{
	uint64_t ns;

	ck_assert_int_eq(grpc_timeout_parse("1S", 2, &ns), 0);
	ck_assert_uint_eq(ns, 1000000000ull);
	ck_assert_int_eq(grpc_timeout_parse("250m", 4, &ns), 0);
	ck_assert_uint_eq(ns, 250000000ull);
	ck_assert_int_eq(grpc_timeout_parse("2H", 2, &ns), 0);
	ck_assert_uint_eq(ns, 7200000000000ull);
	ck_assert_int_eq(grpc_timeout_parse("7n", 2, &ns), 0);
	ck_assert_uint_eq(ns, 7);
	ck_assert_int_eq(grpc_timeout_parse("99999999H", 9, &ns), 0);
	ck_assert_uint_eq(ns, UINT64_MAX);
	static const char *const bad[] = {"", "S", "1", "1x", "-1S", "123456789S", "1.5S"};
	for (size_t i = 0; i < IMC_ARRAY_SIZE(bad); i++)
		ck_assert_int_eq(grpc_timeout_parse(bad[i], strlen(bad[i]), &ns), -EINVAL);
}
END_TEST

START_TEST(status_messages_round_trip)
{
	char enc[64], dec[64];

	grpc_message_encode("snapshot x: 100% \"gone\"\n\xc3\xa9", enc, sizeof(enc));
	ck_assert_str_eq(enc, "snapshot x: 100%25 \"gone\"%0A%C3%A9");
	grpc_message_decode(enc, strlen(enc), dec, sizeof(dec));
	ck_assert_str_eq(dec, "snapshot x: 100% \"gone\"\n\xc3\xa9");
	grpc_message_encode("\n\n\n", enc, 7); /* cut at a whole escape */
	ck_assert_str_eq(enc, "%0A%0A");
	grpc_message_decode("%zz%4", 5, dec, sizeof(dec));
	ck_assert_str_eq(dec, "%zz%4");
}
END_TEST

/* ---- a server in a thread ---------------------------------------------------------------- */
/* Usage answers size = the key's length; Stat fails with the key as its message; List streams
 * as many Info messages as the number in its first filter, checking the deadline; Cleanup
 * answers nothing (a handler bug: unary without a message). */
static int h_usage(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(UsageRequest) *req = (const void *)m;
	PB(UsageResponse) resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_RESPONSE__INIT;

	resp.size = (int64_t)strlen(req->key);
	resp.inodes = 7;
	return grpc_call_send(call, &resp.base) < 0 ? GRPC_INTERNAL : GRPC_OK;
}

static int h_stat(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(StatSnapshotRequest) *req = (const void *)m;
	return grpc_call_fail(call, GRPC_NOT_FOUND, "%s", req->key);
}

static int h_list(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	const PB(ListSnapshotsRequest) *req = (const void *)m;
	PB(ListSnapshotsResponse)
	resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_RESPONSE__INIT;
	PB(Info) info = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__INIT, *p = &info;
	int n = req->n_filters ? atoi(req->filters[0]) : 0;

	info.name = "x";
	resp.n_info = 1;
	resp.info = &p;
	for (int i = 0; i < n; i++) {
		if (grpc_call_expired(call))
			return grpc_call_fail(call, GRPC_DEADLINE_EXCEEDED, "after %d", i);
		if (grpc_call_send(call, &resp.base) < 0)
			return GRPC_INTERNAL;
	}
	return GRPC_OK;
}

static int h_cleanup(struct grpc_call *call, const ProtobufCMessage *m, void *ud)
{
	return GRPC_OK;
}

#define SVC "/containerd.services.snapshots.v1.Snapshots/"
static const struct grpc_method methods[] = {
    {SVC "Usage", &containerd__services__snapshots__v1__usage_request__descriptor, false, h_usage},
    {SVC "Stat", &containerd__services__snapshots__v1__stat_snapshot_request__descriptor, false,
     h_stat},
    {SVC "List", &containerd__services__snapshots__v1__list_snapshots_request__descriptor, true,
     h_list},
    {SVC "Cleanup", &containerd__services__snapshots__v1__cleanup_request__descriptor, false,
     h_cleanup},
};

struct fixture {
	char dir[64], sock[128];
	struct grpc_server *srv;
	pthread_t thread;
	volatile sig_atomic_t stop;
	struct grpc_client *cli;
};

static void *serve(void *p)
{
	struct fixture *f = p;
	imc_error err = {0};
	grpc_server_run(f->srv, &f->stop, &err);
	return NULL;
}

static void start(struct fixture *f)
{
	imc_error err = {0};

	*f = (struct fixture){0};
	snprintf(f->dir, sizeof(f->dir), "/tmp/imc-grpc.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/s.sock", f->dir);
	ck_assert_int_eq(grpc_server_new(methods, IMC_ARRAY_SIZE(methods), NULL, &f->srv, &err), 0);
	ck_assert_msg(grpc_server_listen(f->srv, f->sock, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(pthread_create(&f->thread, NULL, serve, f), 0);
	ck_assert_msg(grpc_client_connect(f->sock, &f->cli, &err) == 0, "%s", err.msg);
}

static void stop(struct fixture *f)
{
	grpc_client_free(f->cli);
	f->stop = 1;
	pthread_join(f->thread, NULL);
	grpc_server_free(f->srv);
	ck_assert_int_eq(access(f->sock, F_OK), -1); /* the socket went with the server */
	rmdir(f->dir);
}

static void raw(struct fixture *f, const char *method, const void *body, size_t len,
		const char *timeout, struct grpc_reply *r)
{
	char path[128];
	imc_error err = {0};

	snprintf(path, sizeof(path), SVC "%s", method);
	ck_assert_msg(grpc_client_call_raw(f->cli, path, body, len, timeout, r, &err) == 0, "%s",
		      err.msg);
}

START_TEST(unary_calls_and_status)
{
	struct fixture f;
	PB(UsageRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_REQUEST__INIT;
	ProtobufCMessage **msgs;
	size_t n;
	struct grpc_reply r;
	imc_error err = {0};

	start(&f);
	req.key = "abcde";
	for (int i = 0; i < 3; i++) { /* several calls on one connection */
		ck_assert_int_eq(
		    grpc_client_call(
			f.cli, SVC "Usage", &req.base,
			&containerd__services__snapshots__v1__usage_response__descriptor, &msgs, &n,
			&r, &err),
		    0);
		ck_assert_int_eq(r.http_status, 200);
		ck_assert_int_eq(r.status, GRPC_OK);
		ck_assert_uint_eq(n, 1);
		ck_assert_int_eq(((PB(UsageResponse) *)msgs[0])->size, 5);
		protobuf_c_message_free_unpacked(msgs[0], NULL);
		free(msgs);
		grpc_reply_free(&r);
	}
	/* a failure: Trailers-Only, the message percent-decoded */
	PB(StatSnapshotRequest)
	st = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
	st.key = "no such\nsnapshot 100%";
	ck_assert_int_eq(
	    grpc_client_call(
		f.cli, SVC "Stat", &st.base,
		&containerd__services__snapshots__v1__stat_snapshot_response__descriptor, &msgs, &n,
		&r, &err),
	    0);
	ck_assert_int_eq(r.status, GRPC_NOT_FOUND);
	ck_assert_str_eq(r.message, "no such\nsnapshot 100%");
	ck_assert_uint_eq(n, 0);
	free(msgs);
	grpc_reply_free(&r);
	/* a unary handler that sent nothing */
	raw(&f, "Cleanup", "\0\0\0\0\0", 5, NULL, &r);
	ck_assert_int_eq(r.status, GRPC_INTERNAL);
	grpc_reply_free(&r);
	stop(&f);
}
END_TEST

START_TEST(bad_requests_get_errors)
{
	struct fixture f;
	struct grpc_reply r;
	static const struct {
		const char *method, *body;
		size_t len;
		int status;
	} cases[] = {
	    {"Nope", "\0\0\0\0\0", 5, GRPC_UNIMPLEMENTED},
	    {"Usage", "", 0, GRPC_INTERNAL},			   /* no message */
	    {"Usage", "\0\0\0\0\3\x12", 6, GRPC_INTERNAL},	   /* truncated */
	    {"Usage", "\0\0\0\0\2\x12\x05", 7, GRPC_INTERNAL},	   /* malformed protobuf */
	    {"Usage", "\0\0\0\0\0\0\0\0\0\0", 10, GRPC_INTERNAL},  /* two messages */
	    {"Usage", "\1\0\0\0\0", 5, GRPC_UNIMPLEMENTED},	   /* compressed */
	    {"Usage", "\7\0\0\0\0", 5, GRPC_INTERNAL},		   /* bad flag */
	    {"Usage", "\0\0\x40\0\1", 5, GRPC_RESOURCE_EXHAUSTED}, /* over 4 MiB */
	};

	start(&f);
	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		raw(&f, cases[i].method, cases[i].body, cases[i].len, NULL, &r);
		ck_assert_msg(r.status == cases[i].status, "case %zu: status %d (%s)", i, r.status,
			      r.message);
		ck_assert_uint_eq(r.body.len, 0);
		grpc_reply_free(&r);
	}
	/* a body over the cap is not kept, and the connection still serves */
	size_t big = GRPC_MAX_MESSAGE + 64;
	_cleanup_free_ char *body = calloc(1, big);
	body[2] = 0x40;
	raw(&f, "Usage", body, big, NULL, &r);
	ck_assert_int_eq(r.status, GRPC_RESOURCE_EXHAUSTED);
	grpc_reply_free(&r);
	raw(&f, "Usage", "\0\0\0\0\0", 5, NULL, &r);
	ck_assert_int_eq(r.status, GRPC_OK);
	grpc_reply_free(&r);
	stop(&f);
}
END_TEST

START_TEST(streaming_and_deadlines)
{
	struct fixture f;
	PB(ListSnapshotsRequest)
	req = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_REQUEST__INIT;
	char *filters[] = {"250"};
	ProtobufCMessage **msgs;
	struct imc_buf body = {0};
	struct grpc_reply r;
	imc_error err = {0};
	size_t n;

	start(&f);
	req.n_filters = 1;
	req.filters = filters;
	ck_assert_int_eq(
	    grpc_client_call(
		f.cli, SVC "List", &req.base,
		&containerd__services__snapshots__v1__list_snapshots_response__descriptor, &msgs,
		&n, &r, &err),
	    0);
	ck_assert_int_eq(r.status, GRPC_OK);
	ck_assert_uint_eq(n, 250);
	for (size_t i = 0; i < n; i++)
		protobuf_c_message_free_unpacked(msgs[i], NULL);
	free(msgs);
	grpc_reply_free(&r);
	/* A deadline of 1 ns has passed when the call runs. */
	ck_assert_int_eq(grpc_frame_append(&body, &req.base), 0);
	raw(&f, "List", body.data, body.len, "1n", &r);
	ck_assert_int_eq(r.status, GRPC_DEADLINE_EXCEEDED);
	grpc_reply_free(&r);
	raw(&f, "List", body.data, body.len, "10H", &r);
	ck_assert_int_eq(r.status, GRPC_OK);
	grpc_reply_free(&r);
	imc_buf_free(&body);
	stop(&f);
}
END_TEST

START_TEST(sockets_stale_busy_and_foreign)
{
	struct fixture f;
	struct grpc_server *other;
	imc_error err = {0};
	char file[160];

	start(&f);
	ck_assert_int_eq(grpc_server_new(methods, 1, NULL, &other, &err), 0);
	ck_assert_int_eq(grpc_server_listen(other, f.sock, &err), -EADDRINUSE);
	snprintf(file, sizeof(file), "%s/file", f.dir);
	close(open(file, O_CREAT | O_WRONLY, 0600));
	ck_assert_int_eq(grpc_server_listen(other, file, &err), -EEXIST);
	ck_assert_int_eq(access(file, F_OK), 0);
	unlink(file);
	stop(&f);
	/* a socket nobody listens on any more (its process died) is replaced */
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(mkdir(f.dir, 0700), 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f.sock);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	ck_assert_msg(grpc_server_listen(other, f.sock, &err) == 0, "%s", err.msg);
	grpc_server_free(other);
	ck_assert_int_eq(access(f.sock, F_OK), -1);
	rmdir(f.dir);
}
END_TEST

START_TEST(memory_connections_refuse_garbage)
{
	struct grpc_server *srv;
	struct grpc_conn *c;
	imc_error err = {0};

	ck_assert_int_eq(grpc_server_new(methods, IMC_ARRAY_SIZE(methods), NULL, &srv, &err), 0);
	ck_assert_int_eq(grpc_conn_new_mem(srv, &c), 0);
	ck_assert_int_eq(grpc_conn_feed(c, (const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18), -EPROTO);
	grpc_conn_free(c);
	ck_assert_int_eq(grpc_conn_new_mem(srv, &c), 0);
	ck_assert_int_eq(grpc_conn_feed(c, (const uint8_t *)"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24),
			 0);
	ck_assert_uint_gt(grpc_conn_output(c)->len, 0); /* the server's SETTINGS */
	grpc_conn_free(c);
	grpc_server_free(srv);
}
END_TEST

/* A call without HTTP/2 (what the fuzz target drives): the handler's status, its framed answer
 * and its message come back; an unknown method is Unimplemented.  The codes have their names. */
START_TEST(calls_without_http2)
{
	PB(UsageRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_REQUEST__INIT;
	struct imc_buf body = {0}, out = {0};
	struct grpc_server *srv;
	const uint8_t *msg;
	size_t mlen, used;
	PB(UsageResponse) * resp;
	imc_error err = {0};
	char text[GRPC_MAX_STATUS_MSG + 1];

	ck_assert_int_eq(grpc_server_new(methods, IMC_ARRAY_SIZE(methods), NULL, &srv, &err), 0);
	req.key = "abcd";
	ck_assert_int_eq(grpc_frame_append(&body, &req.base), 0);
	ck_assert_int_eq(
	    grpc_server_call(srv, SVC "Usage", body.data, body.len, &out, text, sizeof(text)),
	    GRPC_OK);
	ck_assert_int_eq(grpc_frame_parse((const uint8_t *)out.data, out.len, GRPC_MAX_MESSAGE,
					  &msg, &mlen, &used),
			 0);
	ck_assert_uint_eq(used, out.len);
	resp = containerd__services__snapshots__v1__usage_response__unpack(NULL, mlen, msg);
	ck_assert_ptr_nonnull(resp);
	ck_assert_int_eq(resp->size, 4);
	containerd__services__snapshots__v1__usage_response__free_unpacked(resp, NULL);
	imc_buf_free(&out);
	out = (struct imc_buf){0};
	ck_assert_int_eq(
	    grpc_server_call(srv, SVC "Stat", body.data, body.len, &out, text, sizeof(text)),
	    GRPC_NOT_FOUND);
	imc_buf_free(&out);
	out = (struct imc_buf){0};
	ck_assert_int_eq(
	    grpc_server_call(srv, SVC "Nope", body.data, body.len, &out, text, sizeof(text)),
	    GRPC_UNIMPLEMENTED);
	imc_buf_free(&out);
	imc_buf_free(&body);
	grpc_server_free(srv);
	ck_assert_str_eq(grpc_code_name(GRPC_NOT_FOUND), "NotFound");
	ck_assert_str_eq(grpc_code_name(GRPC_FAILED_PRECONDITION), "FailedPrecondition");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("grpc");
	TCase *tc = tcase_create("grpc");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, frames_parse);
	tcase_add_test(tc, timeouts_parse);
	tcase_add_test(tc, status_messages_round_trip);
	tcase_add_test(tc, unary_calls_and_status);
	tcase_add_test(tc, bad_requests_get_errors);
	tcase_add_test(tc, streaming_and_deadlines);
	tcase_add_test(tc, sockets_stale_busy_and_foreign);
	tcase_add_test(tc, memory_connections_refuse_garbage);
	tcase_add_test(tc, calls_without_http2);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
