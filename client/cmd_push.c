/* imcctl push: a cache's chunks to an OCI registry (client/push.c does the work). */
#include <inttypes.h>
#include <stdio.h>

#include "client.h"
#include "imcctl.h"

#define PUSH_INSECURE_MAX 16

struct push_opts {
	const char *insecure[PUSH_INSECURE_MAX + 1];
	size_t n_insecure;
};

static int take_insecure(const char *value, void *opts)
{
	struct push_opts *o = opts;

	if (o->n_insecure >= PUSH_INSECURE_MAX)
		return -1;
	o->insecure[o->n_insecure++] = value;
	return 0;
}

/* NAME VALUE only (no NAME=VALUE), as always. */
static const struct client_flag push_flags[] = {
    {"--insecure-registry", true, take_insecure},
};

/* push CACHE_ID REF [--insecure-registry HOST:PORT]...: client/push.c does the work. */
int client_cmd_push(const struct client *c, const struct client_command *cmd, int argc, char **argv)
{
	struct push_opts o = {0};
	struct client_push_config cfg = {.net = c->net,
					 .server = c->server,
					 .unix_socket = c->unix_path[0] ? c->unix_path : NULL,
					 .token = c->token[0] ? c->token : NULL,
					 .insecure_registries = o.insecure};
	struct client_push_stats st;
	const char *pos[2];
	size_t n_pos = 0;
	imc_error err = {0};

	for (int i = 1; i < argc; i++) {
		const struct client_flag *f;
		const char *value;

		if (argv[i][0] != '-' && n_pos < 2)
			pos[n_pos++] = argv[i];
		else if (argv[i][0] != '-' ||
			 !(f = client_flag_match(push_flags, IMC_ARRAY_SIZE(push_flags), false,
						 argc, argv, &i, &value)) ||
			 f->take(value, &o) != 0)
			n_pos = 3; /* a usage error, whatever follows */
	}
	if (n_pos != 2) {
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	if (client_push_snapshot(&cfg, pos[0], pos[1], &st, &err) < 0) {
		fprintf(stderr, "imcctl: %s\n", err.msg);
		return EXIT_FAIL;
	}
	printf("%s@%s\n", pos[1], st.manifest_digest);
	fprintf(stderr,
		"imcctl: pushed %s: %" PRIu64 " blobs uploaded (%" PRIu64 " bytes), %" PRIu64
		" already there\n",
		pos[0], st.blobs_uploaded, st.bytes_uploaded, st.blobs_skipped);
	return EXIT_OK;
}
