/* Fuzz target: the snapshot service's messages and List filters (attach/snap_*.c).
 *
 * The first byte picks how the rest is read:
 *  - 0..127: up to 4 filters, split at NUL bytes, parsed with snap_filter_parse; an accepted
 *    filter is matched against three snapshots (twice: the answer must not change);
 *  - 128..255: the next byte picks one of the ten methods and the rest is its request message
 *    (protobuf, any bytes), framed and run through the real service over a store in $TMPDIR
 *    (grpc_server_call: unpack, checks, the snapshot operation, the response).  The store is
 *    made anew every 256 inputs.
 * Beyond "no crash, no leak, no UB": a failure has a message; every answer of a unary method
 * that succeeded is one frame that unpacks. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../attach/snap.h"

static void filters(const uint8_t *d, size_t n)
{
	json_t *labels =
	    json_pack("{s:s,s:s}", "containerd.io/snapshot.ref", "sha256:1", "a.b", "");
	struct snap_info infos[] = {
	    {"k", "", SNAP_KIND_ACTIVE, 1, 2, labels},
	    {"sha256:1", "p", SNAP_KIND_COMMITTED, 1, 2, NULL},
	    {"v", "sha256:1", SNAP_KIND_VIEW, 1, 2, labels},
	};
	size_t off = 0;

	for (int i = 0; i < 4 && off <= n; i++) {
		size_t len = strnlen((const char *)d + off, n - off);
		char *s = strndup((const char *)d + off, len);
		struct snap_filter f;
		imc_error err = {0};
		if (!s)
			break;
		if (snap_filter_parse(s, &f, &err) == 0) {
			for (size_t j = 0; j < IMC_ARRAY_SIZE(infos); j++)
				if (snap_filter_match(&f, &infos[j]) !=
				    snap_filter_match(&f, &infos[j]))
					abort();
			snap_filter_free(&f);
		} else if (err.code >= 0 || !err.msg[0]) {
			abort();
		}
		free(s);
		off += len + 1;
	}
	json_decref(labels);
}

static struct snap *store;
static struct grpc_server *srv;
static char root[256];
static unsigned runs;

static void reset_store(void)
{
	imc_error err = {0};

	grpc_server_free(srv);
	snap_close(store);
	srv = NULL;
	store = NULL;
	if (root[0])
		imc_rm_rf_at(AT_FDCWD, root, &err);
	snprintf(root, sizeof(root), "%s/fuzz-snap.%d",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
	if (snap_open(root, &store, &err) < 0 ||
	    grpc_server_new(snap_service_methods, snap_service_n_methods, store, &srv, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
}

static void request(const uint8_t *d, size_t n)
{
	const struct grpc_method *m;
	struct imc_buf body = {0}, out = {0};
	uint8_t hdr[5] = {0};
	char msg[GRPC_MAX_STATUS_MSG + 1];
	int code;

	if (n == 0)
		return;
	if (runs++ % 256 == 0)
		reset_store();
	m = &snap_service_methods[d[0] % snap_service_n_methods];
	n--;
	hdr[1] = (uint8_t)(n >> 24);
	hdr[2] = (uint8_t)(n >> 16);
	hdr[3] = (uint8_t)(n >> 8);
	hdr[4] = (uint8_t)n;
	if (imc_buf_append(&body, hdr, 5) < 0 || imc_buf_append(&body, d + 1, n) < 0)
		abort();
	code = grpc_server_call(srv, m->path, body.data, body.len, &out, msg, sizeof(msg));
	if (code != GRPC_OK && !msg[0])
		abort();
	if (code == GRPC_OK && !m->server_streaming) {
		const uint8_t *p;
		size_t len, used;
		if (grpc_frame_parse((const uint8_t *)out.data, out.len, GRPC_MAX_MESSAGE, &p, &len,
				     &used) < 0 ||
		    used != out.len)
			abort();
	}
	imc_buf_free(&out);
	imc_buf_free(&body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] < 128)
		filters(data + 1, size - 1);
	else
		request(data + 1, size - 1);
	return 0;
}
