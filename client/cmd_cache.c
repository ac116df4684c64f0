/* imcctl get, delete, attach, detach and attachments: one cache (and its attachments). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../api/wire.h"
#include "../common/cli.h"
#include "../common/imc.h"
#include "imcctl.h"

/* The options of get, delete, attach, detach and attachments. */
struct one_opts {
	bool json, output_given, force;
	const char *attach_id, *host;
	const char *args[2]; /* ID [ATTACHMENT] */
	int n_args;
};

static int take_output(const struct imc_cli_opt *opt, const char *arg, void *o)
{
	struct one_opts *one = o;

	if (client_parse_output(arg, &one->json) < 0)
		return -1;
	one->output_given = true;
	return 0;
}

/* Every one of the five takes all of these. */
#define O(field) offsetof(struct one_opts, field)
static const struct imc_cli_opt one_options[] = {
    {"output", required_argument, 'o', take_output, 0},
    {"force", no_argument, 'f', imc_cli_true, O(force)},
    {"id", required_argument, 0, imc_cli_string, O(attach_id)},
    {"host", required_argument, 0, imc_cli_string, O(host)},
};
#undef O

static int parse_one_args(int argc, char **argv, int want_args, struct one_opts *o)
{
	*o = (struct one_opts){0};
	optind = 1;
	if (imc_cli_getopt(argc, argv, ":", one_options, IMC_ARRAY_SIZE(one_options), o) != 0)
		return -1;
	for (; optind < argc && o->n_args < 2; optind++)
		o->args[o->n_args++] = argv[optind];
	return optind == argc && o->n_args == want_args ? 0 : -1;
}

/* get ID, human: the fields people look at, then the events. */
static void print_cache(json_t *j)
{
	static const char *const keys[] = {"id",	"name",	   "status",	 "statusMessage",
					   "createdAt", "readyAt", "lastUsedAt", "expiresAt"};
	json_t *p = json_object_get(j, "progress"), *ev, *img;
	char size[32];
	size_t i;

	for (i = 0; i < IMC_ARRAY_SIZE(keys); i++)
		if (json_string_value(json_object_get(j, keys[i])))
			printf("%-14s %s\n", keys[i],
			       json_string_value(json_object_get(j, keys[i])));
	client_human_size(json_object_get(j, "size"), size, sizeof(size));
	printf("%-14s %s\n", "size", size);
	printf("%-14s %lld%s\n", "retentionDays",
	       (long long)json_integer_value(json_object_get(j, "retentionDays")),
	       json_integer_value(json_object_get(j, "retentionDays")) == 0 ? " (pinned)" : "");
	printf("%-14s %lld\n", "attachments",
	       (long long)json_integer_value(json_object_get(j, "attachments")));
	if (json_is_object(p))
		printf("%-14s %lld%% (%lld of %lld bytes)\n", "progress",
		       (long long)json_integer_value(json_object_get(p, "percent")),
		       (long long)json_integer_value(json_object_get(p, "bytesDone")),
		       (long long)json_integer_value(json_object_get(p, "bytesTotal")));
	json_array_foreach(json_object_get(j, "images"), i, img)
	    printf("image %-8zu %s %s %s\n", i, client_str_or(img, "ref", "-"),
		   client_str_or(img, "platform", ""), client_str_or(img, "digest", ""));
	printf("events:\n");
	json_array_foreach(json_object_get(j, "events"), i, ev)
	    printf("  %s  %-12s %s\n", client_str_or(ev, "time", "-"),
		   client_str_or(ev, "type", "-"), client_str_or(ev, "message", ""));
}

int client_cmd_get(const struct client *c, const struct client_command *cmd, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *path = NULL;
	struct one_opts o;

	if (parse_one_args(argc, argv, 1, &o) < 0) {
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	path = client_cache_path(o.args[0]);
	if (!path || client_call(c, "GET", path, NULL, &answer) < 0)
		return EXIT_FAIL;
	/* Without -o: a summary for a person at a terminal, the JSON for a script (as before). */
	if (o.output_given ? o.json : !isatty(STDOUT_FILENO))
		client_print_json(answer);
	else
		print_cache(answer);
	return EXIT_OK;
}

int client_cmd_delete(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv)
{
	_cleanup_json_ json_t *answer = NULL;
	_cleanup_free_ char *path = NULL, *full = NULL;
	struct one_opts o;

	if (parse_one_args(argc, argv, 1, &o) < 0) {
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	path = client_cache_path(o.args[0]);
	if (!path || asprintf(&full, "%s%s", path, o.force ? "?force=true" : "") < 0)
		return EXIT_FAIL;
	if (client_call(c, "DELETE", full, NULL, &answer) < 0)
		return EXIT_FAIL;
	if (o.json)
		client_print_json(answer);
	else
		printf("%s\n", o.args[0]);
	return EXIT_OK;
}

enum attachments_op { ATTACH, DETACH, LIST };

/* attach ID [--id att-…] [--host H]: record an attachment (what imc-attach --server does);
 * detach ID ATTACHMENT; attachments ID. */
static int attachments(const struct client *c, const struct client_command *cmd,
		       enum attachments_op op, int argc, char **argv)
{
	_cleanup_json_ json_t *answer = NULL, *body = json_object();
	_cleanup_free_ char *path = NULL, *full = NULL, *text = NULL;
	const bool detach = op == DETACH, list = op == LIST;
	struct one_opts o;
	size_t i;
	json_t *a;

	if (parse_one_args(argc, argv, detach ? 2 : 1, &o) < 0) {
		fputs(cmd->usage, stderr);
		return EXIT_USAGE;
	}
	if (detach && !api_attach_id_valid(o.args[1])) {
		fprintf(stderr, "imcctl: attachment \"%.80s\": want att-<16 hex digits>\n",
			o.args[1]);
		return EXIT_USAGE;
	}
	path = client_cache_path(o.args[0]);
	if (!path || !body ||
	    asprintf(&full, "%s/attachments%s%s", path, detach ? "/" : "",
		     detach ? o.args[1] : "") < 0)
		return EXIT_FAIL;
	if (o.attach_id)
		json_object_set_new(body, "id", json_string(o.attach_id));
	if (o.host)
		json_object_set_new(body, "host", json_string(o.host));
	text = json_dumps(body, JSON_COMPACT);
	if (!text || client_call(c,
				 detach ? "DELETE"
				 : list ? "GET"
					: "POST",
				 full, detach || list ? NULL : text, &answer) < 0)
		return EXIT_FAIL;
	if (o.json)
		client_print_json(answer);
	else if (!list)
		printf("%s\n", client_str_or(answer, "id", "-"));
	else
		json_array_foreach(json_object_get(answer, "items"), i, a)
		    printf("%s  %s  %s\n", client_str_or(a, "id", "-"),
			   client_str_or(a, "attachedAt", "-"), client_str_or(a, "host", "-"));
	return EXIT_OK;
}

int client_cmd_attach(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv)
{
	return attachments(c, cmd, ATTACH, argc, argv);
}

int client_cmd_detach(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv)
{
	return attachments(c, cmd, DETACH, argc, argv);
}

int client_cmd_attachments(const struct client *c, const struct client_command *cmd, int argc,
			   char **argv)
{
	return attachments(c, cmd, LIST, argc, argv);
}
