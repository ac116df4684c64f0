/* gRPC's length-prefixed messages, grpc-timeout and grpc-message's encoding. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc.h"

int grpc_frame_parse(const uint8_t *buf, size_t len, size_t max, const uint8_t **ret_msg,
		     size_t *ret_len, size_t *ret_used)
{
	uint32_t n;

	if (len < 5)
		return -EAGAIN;
	if (buf[0] > 1)
		return -EPROTO;
	n = (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
	if (n > max)
		return -EFBIG;
	if (buf[0] == 1)
		return -EOPNOTSUPP;
	if (len - 5 < n)
		return -EAGAIN;
	*ret_msg = buf + 5;
	*ret_len = n;
	*ret_used = 5 + (size_t)n;
	return 0;
}

int grpc_frame_append(struct imc_buf *out, const ProtobufCMessage *msg)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t hdr[5] = {0, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
	_cleanup_free_ uint8_t *body = NULL;

	if (n > GRPC_MAX_MESSAGE)
		return -EFBIG;
	body = malloc(n ? n : 1);
	if (!body)
		return -ENOMEM;
	protobuf_c_message_pack(msg, body);
	if (imc_buf_append(out, hdr, sizeof(hdr)) < 0)
		return -ENOMEM;
	if (imc_buf_append(out, body, n) < 0) {
		out->len -= sizeof(hdr);
		return -ENOMEM;
	}
	return 0;
}

int grpc_timeout_parse(const char *v, size_t len, uint64_t *ret_ns)
{
	uint64_t n = 0, mul;
	size_t i;

	if (len < 2 || len > 9)
		return -EINVAL;
	for (i = 0; i + 1 < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -EINVAL;
		n = n * 10 + (uint64_t)(v[i] - '0');
	}
	switch (v[len - 1]) {
	case 'H':
		mul = 3600ull * 1000000000ull;
		break;
	case 'M':
		mul = 60ull * 1000000000ull;
		break;
	case 'S':
		mul = 1000000000ull;
		break;
	case 'm':
		mul = 1000000ull;
		break;
	case 'u':
		mul = 1000ull;
		break;
	case 'n':
		mul = 1;
		break;
	default:
		return -EINVAL;
	}
	/* 8 digits of hours overflow 64 bits of nanoseconds: cap. */
	*ret_ns = n > UINT64_MAX / mul ? UINT64_MAX : n * mul;
	return 0;
}

void grpc_message_encode(const char *in, char *out, size_t size)
{
	size_t o = 0;

	if (size == 0)
		return;
	for (; *in; in++) {
		unsigned char ch = (unsigned char)*in;
		if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
			if (o + 1 >= size)
				break;
			out[o++] = (char)ch;
		} else {
			if (o + 3 >= size)
				break;
			snprintf(out + o, 4, "%%%02X", ch);
			o += 3;
		}
	}
	out[o] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void grpc_message_decode(const char *in, size_t len, char *out, size_t size)
{
	size_t i, o = 0;

	if (size == 0)
		return;
	for (i = 0; i < len && o + 1 < size; i++) {
		int hi, lo;
		if (in[i] == '%' && i + 2 < len && (hi = hexval(in[i + 1])) >= 0 &&
		    (lo = hexval(in[i + 2])) >= 0) {
			out[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			out[o++] = in[i];
		}
	}
	out[o] = '\0';
}

const char *grpc_code_name(int code)
{
	static const char *const names[] = {
	    "OK",
	    "Canceled",
	    "Unknown",
	    "InvalidArgument",
	    "DeadlineExceeded",
	    "NotFound",
	    "AlreadyExists",
	    "PermissionDenied",
	    "ResourceExhausted",
	    "FailedPrecondition",
	    "Aborted",
	    "OutOfRange",
	    "Unimplemented",
	    "Internal",
	    "Unavailable",
	    "DataLoss",
	    "Unauthenticated",
	};
	return code >= 0 && (size_t)code < IMC_ARRAY_SIZE(names) ? names[code] : "Code(?)";
}
