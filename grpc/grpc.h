/* gRPC over HTTP/2 without TLS (h2c with prior knowledge, as containerd speaks to its proxy
 * plugins) on a unix socket, through libnghttp2; messages are protobuf-c's.  A server that runs
 * unary and server-streaming handlers one at a time, and a small blocking client. */
#ifndef GRPC_H
#define GRPC_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "../common/imc.h"

/* The status codes of grpc/status.proto. */
enum grpc_code {
	GRPC_OK = 0,
	GRPC_CANCELLED = 1,
	GRPC_UNKNOWN = 2,
	GRPC_INVALID_ARGUMENT = 3,
	GRPC_DEADLINE_EXCEEDED = 4,
	GRPC_NOT_FOUND = 5,
	GRPC_ALREADY_EXISTS = 6,
	GRPC_PERMISSION_DENIED = 7,
	GRPC_RESOURCE_EXHAUSTED = 8,
	GRPC_FAILED_PRECONDITION = 9,
	GRPC_ABORTED = 10,
	GRPC_OUT_OF_RANGE = 11,
	GRPC_UNIMPLEMENTED = 12,
	GRPC_INTERNAL = 13,
	GRPC_UNAVAILABLE = 14,
	GRPC_DATA_LOSS = 15,
	GRPC_UNAUTHENTICATED = 16,
};

/* Caps on what a peer sends: one message (gRPC's default receive limit), the status message, the
 * streams of one connection at once, the connections at once. */
#define GRPC_MAX_MESSAGE     (4u << 20)
#define GRPC_MAX_STATUS_MSG  1024
#define GRPC_MAX_STREAMS     32
#define GRPC_MAX_CONNS	     64
#define GRPC_MAX_HEADER_SIZE (16u << 10)

/* ---- framing (frame.c): pure functions, fuzzed ------------------------------------------- */
/* The length-prefixed message at the start of buf (flag byte, 4-byte big-endian length): sets
 * *ret_msg and *ret_len to its body and *ret_used to the bytes it takes.  -EAGAIN: buf holds less
 * than a whole message; -EFBIG: longer than max; -EOPNOTSUPP: compressed (flag 1); -EPROTO:
 * another flag. */
int grpc_frame_parse(const uint8_t *buf, size_t len, size_t max, const uint8_t **ret_msg,
		     size_t *ret_len, size_t *ret_used);
/* Append msg, packed and prefixed, to out. */
int grpc_frame_append(struct imc_buf *out, const ProtobufCMessage *msg);
/* A grpc-timeout value ("1-8 digits" + H, M, S, m, u or n) in nanoseconds; -EINVAL if bad. */
int grpc_timeout_parse(const char *v, size_t len, uint64_t *ret_ns);
/* grpc-message's percent-encoding: bytes outside 0x20..0x7e and '%' become %XX.  Writes at most
 * size-1 characters and a NUL (cut at a whole escape). */
void grpc_message_encode(const char *in, char *out, size_t size);
/* The reverse (malformed escapes stay as they are). */
void grpc_message_decode(const char *in, size_t len, char *out, size_t size);
const char *grpc_code_name(int code);

/* ---- server (server.c) ------------------------------------------------------------------ */
struct grpc_call;
/* A handler gets the request, unpacked with its method's descriptor, sends any responses with
 * grpc_call_send (a unary method exactly one on success) and returns a grpc_code; a failure's
 * message is set with grpc_call_fail. */
typedef int (*grpc_handler)(struct grpc_call *call, const ProtobufCMessage *req, void *userdata);

struct grpc_method {
	const char *path; /* "/package.Service/Method" */
	const ProtobufCMessageDescriptor *request;
	bool server_streaming;
	grpc_handler handler;
};

/* 0, -ENOMEM, or -EFBIG when msg is over GRPC_MAX_MESSAGE. */
int grpc_call_send(struct grpc_call *call, const ProtobufCMessage *msg);
/* Sets the status message (cut to GRPC_MAX_STATUS_MSG) and returns code. */
int grpc_call_fail(struct grpc_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Has the caller's grpc-timeout passed (never, without one)? */
bool grpc_call_expired(const struct grpc_call *call);

struct grpc_server;
/* methods (n of them) and userdata must outlive the server. */
int grpc_server_new(const struct grpc_method *methods, size_t n, void *userdata,
		    struct grpc_server **ret, imc_error *err);
/* Bind a unix socket at path (a stale socket there is replaced; anything else is refused),
 * mode 0660. */
int grpc_server_listen(struct grpc_server *s, const char *path, imc_error *err);
/* Serve until *stop is set (checked at least every 200 ms). */
int grpc_server_run(struct grpc_server *s, volatile sig_atomic_t *stop, imc_error *err);
/* Closes the connections, unlinks the socket. */
void grpc_server_free(struct grpc_server *s);

/* One call without HTTP/2 (fuzzing, tests): body is the framed request; returns the status,
 * the framed responses in *ret_out (free with imc_buf_free) and the message in ret_msg. */
int grpc_server_call(struct grpc_server *s, const char *path, const void *body, size_t len,
		     struct imc_buf *ret_out, char *ret_msg, size_t msg_size);

/* A connection fed from memory (unit tests, fuzzing): what the server answers is kept and can be
 * read with grpc_conn_output. */
struct grpc_conn;
int grpc_conn_new_mem(struct grpc_server *s, struct grpc_conn **ret);
/* 0, or -EPROTO when the peer broke the protocol and the connection is over. */
int grpc_conn_feed(struct grpc_conn *c, const uint8_t *data, size_t len);
const struct imc_buf *grpc_conn_output(const struct grpc_conn *c);
void grpc_conn_free(struct grpc_conn *c);

/* ---- client (client.c) ------------------------------------------------------------------ */
struct grpc_client;
int grpc_client_connect(const char *path, struct grpc_client **ret, imc_error *err);
void grpc_client_free(struct grpc_client *c);

struct grpc_reply {
	int http_status;
	int status; /* grpc-status; -1 when the answer had none */
	char message[GRPC_MAX_STATUS_MSG + 1];
	struct imc_buf body; /* the response DATA, still framed */
};
void grpc_reply_free(struct grpc_reply *r);
/* POST body (already framed: any bytes, so tests can send broken ones) to path; timeout is a
 * grpc-timeout value or NULL.  0 once the stream ended (whatever its status), -errno when the
 * connection failed. */
int grpc_client_call_raw(struct grpc_client *c, const char *path, const void *body, size_t len,
			 const char *timeout, struct grpc_reply *ret, imc_error *err);
/* A call with one request message; the responses unpacked with desc (ret_msgs: n of them,
 * free each with protobuf_c_message_free_unpacked and the array with free). */
int grpc_client_call(struct grpc_client *c, const char *path, const ProtobufCMessage *req,
		     const ProtobufCMessageDescriptor *desc, ProtobufCMessage ***ret_msgs,
		     size_t *ret_n, struct grpc_reply *ret, imc_error *err);

#endif
