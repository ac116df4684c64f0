/* cri-pull SOCKET IMAGE: the CRI's runtime.v1.ImageService/PullImage on containerd's socket, the
 * pull that the kubelet makes (containerd's unpacker with the snapshot.ref labels of remote
 * snapshotters; ctr 1.6 fetches every blob before it unpacks).  Prints the image reference
 * containerd answers.  The request is one field by hand (PullImageRequest{image: ImageSpec{
 * image: IMAGE}}): the CRI's protos are not packaged. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../grpc/grpc.h"

static int varint(uint8_t *p, size_t v)
{
	int n = 0;

	do {
		p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

int main(int argc, char **argv)
{
	static uint8_t body[5 + 2 * 10 + 2 + 4096];
	struct grpc_client *c = NULL;
	struct grpc_reply reply = {0};
	imc_error err = {0};
	size_t len, inner, n = 5;
	const uint8_t *msg;
	size_t msg_len, used;

	if (argc != 3 || (len = strlen(argv[2])) > 4096) {
		fprintf(stderr, "usage: cri-pull SOCKET IMAGE\n");
		return 2;
	}
	inner = 1 + (size_t)varint((uint8_t[10]){0}, len) + len; /* ImageSpec */
	body[n++] = 0x0a;
	n += (size_t)varint(body + n, inner);
	body[n++] = 0x0a;
	n += (size_t)varint(body + n, len);
	memcpy(body + n, argv[2], len);
	n += len;
	body[0] = 0;
	for (int i = 0; i < 4; i++)
		body[1 + i] = (uint8_t)((n - 5) >> (24 - 8 * i));
	if (grpc_client_connect(argv[1], &c, &err) < 0 ||
	    grpc_client_call_raw(c, "/runtime.v1.ImageService/PullImage", body, n, "120S", &reply,
				 &err) < 0) {
		fprintf(stderr, "cri-pull: %s\n", err.msg);
		grpc_client_free(c);
		return 1;
	}
	grpc_client_free(c);
	if (reply.status != 0) {
		fprintf(stderr, "cri-pull: status %d: %s\n", reply.status, reply.message);
		grpc_reply_free(&reply);
		return 1;
	}
	/* PullImageResponse{image_ref = 1}: print the string (a digest: under 128 bytes). */
	if (grpc_frame_parse((const uint8_t *)reply.body.data, reply.body.len, 1 << 20, &msg,
			     &msg_len, &used) == 0 &&
	    msg_len > 2 && msg[0] == 0x0a && msg[1] == msg_len - 2)
		printf("%.*s\n", (int)(msg_len - 2), (const char *)msg + 2);
	grpc_reply_free(&reply);
	return 0;
}
