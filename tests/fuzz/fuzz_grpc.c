/* Fuzz target: grpc/'s framing and its server connection.
 *
 * The first byte picks how the rest is read:
 *  - 0..63: raw HTTP/2 bytes after the client preface, fed to a server connection in pieces
 *    (the next byte of the input sets the piece size), with methods that echo;
 *  - 64..127: a request body (the gRPC frames, any bytes) sent by an nghttp2 client session to
 *    the server connection, to a method the next byte picks, with the grpc-timeout that the
 *    following bytes up to a NUL give;
 *  - 128..255: grpc_frame_parse over the whole rest (each frame inside the input, lengths
 *    adding up), grpc_timeout_parse, and grpc_message_encode/decode, which must round-trip.
 * Beyond "no crash, no leak, no UB": the frames found lie inside the input and the encoded
 * status message decodes to the original. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "../../grpc/grpc.h"
#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.pb-c.h"

static int echo(struct grpc_call *call, const ProtobufCMessage *req, void *ud)
{
	if (req->descriptor ==
	    &containerd__services__snapshots__v1__list_snapshots_request__descriptor)
		for (int i = 0; i < 3; i++)
			if (grpc_call_send(call, req) < 0)
				return GRPC_INTERNAL;
	if (req->descriptor ==
	    &containerd__services__snapshots__v1__stat_snapshot_request__descriptor)
		return grpc_call_fail(call, GRPC_NOT_FOUND, "no\n%s", "thing 100%");
	return grpc_call_send(call, req) < 0 ? GRPC_INTERNAL : GRPC_OK;
}

#define SVC "/containerd.services.snapshots.v1.Snapshots/"
static const struct grpc_method methods[] = {
    {SVC "Prepare", &containerd__services__snapshots__v1__prepare_snapshot_request__descriptor,
     false, echo},
    {SVC "Stat", &containerd__services__snapshots__v1__stat_snapshot_request__descriptor, false,
     echo},
    {SVC "List", &containerd__services__snapshots__v1__list_snapshots_request__descriptor, true,
     echo},
    {SVC "Update", &containerd__services__snapshots__v1__update_snapshot_request__descriptor, false,
     echo},
};
static const char *const paths[] = {SVC "Prepare", SVC "Stat", SVC "List",
				    SVC "Update",  SVC "Nope", "/x"};

static void feed_raw(struct grpc_server *srv, const uint8_t *d, size_t n)
{
	static const char preface[] = NGHTTP2_CLIENT_MAGIC;
	struct grpc_conn *c;
	size_t piece = n ? (size_t)d[0] + 1 : 1, off = 1;

	if (grpc_conn_new_mem(srv, &c) < 0)
		return;
	if (grpc_conn_feed(c, (const uint8_t *)preface, sizeof(preface) - 1) == 0)
		while (off < n) {
			size_t k = n - off < piece ? n - off : piece;
			if (grpc_conn_feed(c, d + off, k) < 0)
				break;
			off += k;
		}
	grpc_conn_free(c);
}

struct body {
	const uint8_t *d;
	size_t n, off;
};

static ssize_t read_body(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
			 nghttp2_data_source *src, void *ud)
{
	struct body *b = src->ptr;
	size_t k = b->n - b->off < len ? b->n - b->off : len;

	if (k)
		memcpy(buf, b->d + b->off, k);
	b->off += k;
	if (b->off == b->n)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)k;
}

static void feed_request(struct grpc_server *srv, const uint8_t *d, size_t n)
{
	nghttp2_session_callbacks *cbs;
	nghttp2_session *cli;
	struct grpc_conn *c;
	char timeout[16] = "";
	size_t t = 0, off = 1;
	const uint8_t *out;
	ssize_t k;

	while (off < n && d[off] && t < sizeof(timeout) - 1)
		timeout[t++] = (char)d[off++];
	off = off < n ? off + 1 : n;
	struct body b = {d + off, n - off, 0};
	nghttp2_nv nva[] = {
#define NV(a, v) {(uint8_t *)(a), (uint8_t *)(v), strlen(a), strlen(v), NGHTTP2_NV_FLAG_NONE}
	    NV(":method", "POST"),
	    NV(":scheme", "http"),
	    NV(":authority", "x"),
	    NV(":path", paths[(n ? d[0] : 0) % IMC_ARRAY_SIZE(paths)]),
	    NV("content-type", "application/grpc"),
	    NV("grpc-timeout", timeout),
#undef NV
	};
	nghttp2_data_provider prd = {.source.ptr = &b, .read_callback = read_body};

	if (nghttp2_session_callbacks_new(&cbs) != 0)
		return;
	if (nghttp2_session_client_new(&cli, cbs, NULL) != 0) {
		nghttp2_session_callbacks_del(cbs);
		return;
	}
	nghttp2_session_callbacks_del(cbs);
	nghttp2_submit_settings(cli, NGHTTP2_FLAG_NONE, NULL, 0);
	nghttp2_submit_request(cli, NULL, nva, IMC_ARRAY_SIZE(nva) - !t, &prd, NULL);
	if (grpc_conn_new_mem(srv, &c) == 0) {
		/* The client's window is 64 KiB: enough for the inputs run.sh allows. */
		while ((k = nghttp2_session_mem_send(cli, &out)) > 0)
			if (grpc_conn_feed(c, out, (size_t)k) < 0)
				break;
		grpc_conn_free(c);
	}
	nghttp2_session_del(cli);
}

static void pieces(const uint8_t *d, size_t n)
{
	size_t off = 0;
	char *s, enc[512], dec[512];
	uint64_t ns;

	while (off < n) {
		const uint8_t *m;
		size_t len, used;
		if (grpc_frame_parse(d + off, n - off, 4096, &m, &len, &used) < 0)
			break;
		if (m < d || m + len > d + n || used != len + 5)
			abort();
		off += used;
	}
	grpc_timeout_parse((const char *)d, n, &ns);
	s = strndup((const char *)d, n < 160 ? n : 160); /* 160 * 3 < 512: never cut */
	if (!s)
		return;
	grpc_message_encode(s, enc, sizeof(enc));
	grpc_message_decode(enc, strlen(enc), dec, sizeof(dec));
	if (strcmp(s, dec) != 0)
		abort();
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct grpc_server *srv;
	imc_error err;

	if (!srv && grpc_server_new(methods, IMC_ARRAY_SIZE(methods), NULL, &srv, &err) < 0)
		abort();
	if (size == 0)
		return 0;
	if (data[0] < 64)
		feed_raw(srv, data + 1, size - 1);
	else if (data[0] < 128)
		feed_request(srv, data + 1, size - 1);
	else
		pieces(data + 1, size - 1);
	return 0;
}
