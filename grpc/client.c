/* A blocking gRPC client, one call at a time (the unit tests' client). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "grpc.h"

#define MAX_REPLY (64u << 20)

struct grpc_client {
	int fd;
	nghttp2_session *h2;
	struct grpc_reply *reply;
	int32_t id;
	bool closed;
	const uint8_t *body;
	size_t body_len, body_off;
};

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct grpc_client *c = ud;
	char v[32];

	if (frame->hd.stream_id != c->id)
		return 0;
#define IS(s) (namelen == sizeof(s) - 1 && memcmp(name, s, namelen) == 0)
	if (IS(":status") || IS("grpc-status")) {
		size_t n = valuelen < sizeof(v) - 1 ? valuelen : sizeof(v) - 1;
		memcpy(v, value, n);
		v[n] = '\0';
		*(IS(":status") ? &c->reply->http_status : &c->reply->status) = atoi(v);
	} else if (IS("grpc-message")) {
		grpc_message_decode((const char *)value, valuelen, c->reply->message,
				    sizeof(c->reply->message));
	}
#undef IS
	return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
		   void *ud)
{
	struct grpc_client *c = ud;

	if (id != c->id)
		return 0;
	if (c->reply->body.len + len > MAX_REPLY || imc_buf_append(&c->reply->body, data, len) < 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return 0;
}

static int on_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
	struct grpc_client *c = ud;

	if (id == c->id)
		c->closed = true;
	return 0;
}

static ssize_t read_body(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
			 nghttp2_data_source *src, void *ud)
{
	struct grpc_client *c = ud;
	size_t n = c->body_len - c->body_off;

	if (n > len)
		n = len;
	if (n)
		memcpy(buf, c->body + c->body_off, n);
	c->body_off += n;
	if (c->body_off == c->body_len)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static int new_session(struct grpc_client *c)
{
	nghttp2_session_callbacks *cbs;
	int r;

	if (nghttp2_session_callbacks_new(&cbs) != 0)
		return -ENOMEM;
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
	r = nghttp2_session_client_new(&c->h2, cbs, c);
	nghttp2_session_callbacks_del(cbs);
	if (r != 0)
		return -ENOMEM;
	nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, NULL, 0);
	return 0;
}

int grpc_client_connect(const char *path, struct grpc_client **ret, imc_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct grpc_client *c;

	if (strlen(path) >= sizeof(sa.sun_path))
		return imc_err(err, ENAMETOOLONG, "%s: socket path too long", path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return imc_err(err, ENOMEM, "out of memory");
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		grpc_client_free(c);
		return imc_err_sys(err, e, "%s: connect", path);
	}
	if (new_session(c) < 0) {
		grpc_client_free(c);
		return imc_err(err, ENOMEM, "out of memory");
	}
	*ret = c;
	return 0;
}

void grpc_client_free(struct grpc_client *c)
{
	if (!c)
		return;
	if (c->h2)
		nghttp2_session_del(c->h2);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

void grpc_reply_free(struct grpc_reply *r)
{
	imc_buf_free(&r->body);
	r->body = (struct imc_buf){0};
}

/* Sends what nghttp2 has, then reads once; -errno when the connection is gone. */
static int pump(struct grpc_client *c)
{
	uint8_t buf[65536];
	const uint8_t *p;
	ssize_t n;

	while ((n = nghttp2_session_mem_send(c->h2, &p)) > 0)
		for (ssize_t off = 0; off < n;) {
			ssize_t w = send(c->fd, p + off, (size_t)(n - off), MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return -EPIPE;
			off += w;
		}
	if (n < 0)
		return -EPROTO;
	if (c->closed)
		return 0;
	n = recv(c->fd, buf, sizeof(buf), 0);
	if (n < 0 && errno == EINTR)
		return 0;
	if (n <= 0)
		return n == 0 ? -ECONNRESET : -errno;
	return nghttp2_session_mem_recv(c->h2, buf, (size_t)n) < 0 ? -EPROTO : 0;
}

int grpc_client_call_raw(struct grpc_client *c, const char *path, const void *body, size_t len,
			 const char *timeout, struct grpc_reply *ret, imc_error *err)
{
	nghttp2_nv nva[] = {
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE}
	    NV(":method", "POST"),
	    NV(":scheme", "http"),
	    NV(":authority", "localhost"),
	    NV(":path", path),
	    NV("content-type", "application/grpc"),
	    NV("te", "trailers"),
	    NV("grpc-timeout", timeout ? timeout : ""),
#undef NV
	};
	nghttp2_data_provider prd = {.read_callback = read_body};
	int r = 0;

	*ret = (struct grpc_reply){.status = -1};
	c->reply = ret;
	c->closed = false;
	c->body = body;
	c->body_len = len;
	c->body_off = 0;
	c->id = nghttp2_submit_request(c->h2, NULL, nva, IMC_ARRAY_SIZE(nva) - !timeout, &prd, c);
	if (c->id < 0)
		return imc_err(err, EPROTO, "%s: cannot submit: %s", path, nghttp2_strerror(c->id));
	while (!c->closed && r == 0)
		r = pump(c);
	if (r < 0) {
		grpc_reply_free(ret);
		return imc_err_sys(err, -r, "%s", path);
	}
	return 0;
}

static void free_msgs(ProtobufCMessage **msgs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		protobuf_c_message_free_unpacked(msgs[i], NULL);
	free(msgs);
}

/* The framed messages of body, unpacked with desc. */
static int unpack_all(const struct imc_buf *body, const ProtobufCMessageDescriptor *desc,
		      ProtobufCMessage ***ret, size_t *ret_n)
{
	ProtobufCMessage **msgs = NULL;
	size_t n = 0, off = 0;

	while (off < body->len) {
		const uint8_t *m;
		size_t len, used;
		ProtobufCMessage **grown;
		if (grpc_frame_parse((const uint8_t *)body->data + off, body->len - off, MAX_REPLY,
				     &m, &len, &used) < 0 ||
		    !(grown = realloc(msgs, (n + 1) * sizeof(*msgs)))) {
			free_msgs(msgs, n);
			return -EBADMSG;
		}
		msgs = grown;
		if (!(msgs[n] = protobuf_c_message_unpack(desc, NULL, len, m))) {
			free_msgs(msgs, n);
			return -EBADMSG;
		}
		n++;
		off += used;
	}
	*ret = msgs;
	*ret_n = n;
	return 0;
}

int grpc_client_call(struct grpc_client *c, const char *path, const ProtobufCMessage *req,
		     const ProtobufCMessageDescriptor *desc, ProtobufCMessage ***ret_msgs,
		     size_t *ret_n, struct grpc_reply *ret, imc_error *err)
{
	struct imc_buf body = {0};
	int r;

	if (grpc_frame_append(&body, req) < 0)
		return imc_err(err, ENOMEM, "%s: cannot pack the request", path);
	r = grpc_client_call_raw(c, path, body.data, body.len, NULL, ret, err);
	imc_buf_free(&body);
	if (r < 0)
		return r;
	if (unpack_all(&ret->body, desc, ret_msgs, ret_n) < 0) {
		grpc_reply_free(ret);
		return imc_err(err, EBADMSG, "%s: malformed response", path);
	}
	return 0;
}
