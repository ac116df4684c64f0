/* imcctl's own parts (internal to client/): the request and output helpers of imcctl_main.c and
 * the commands, one function each, in files by command group (cmd_*.c).  imcctl_main.c holds the
 * command table: a command is a function here and a row there. */
#ifndef IMC_CLIENT_IMCCTL_H
#define IMC_CLIENT_IMCCTL_H

#include <stdbool.h>
#include <sys/un.h>

#include <jansson.h>

struct net_client;

/* Exit codes: 0 ok, 1 the request or the cache failed, 2 usage. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

struct client {
	char server[512]; /* base URL, without a trailing slash */
	/* --server unix:PATH: requests go over this socket to a dummy http://localhost base URL. */
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char where[512];  /* the server as the user named it, for messages */
	char token[4097]; /* the bearer token (--token, else $IMCACHE_TOKEN) or "" */
	struct net_client *net;
};

struct client_command {
	const char *name;
	const char *alias; /* another name for it ("ls"), NULL for none */
	int (*run)(const struct client *c, const struct client_command *cmd, int argc, char **argv);
	const char *help;  /* its lines in imcctl --help */
	const char *usage; /* what a misuse of it prints */
};

/* The commands: argv[0] is the command's name; they return the exit code. */
int client_cmd_create(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv);
int client_cmd_list(const struct client *c, const struct client_command *cmd, int argc,
		    char **argv);
int client_cmd_get(const struct client *c, const struct client_command *cmd, int argc, char **argv);
int client_cmd_delete(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv);
int client_cmd_attach(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv);
int client_cmd_detach(const struct client *c, const struct client_command *cmd, int argc,
		      char **argv);
int client_cmd_attachments(const struct client *c, const struct client_command *cmd, int argc,
			   char **argv);
int client_cmd_push(const struct client *c, const struct client_command *cmd, int argc,
		    char **argv);

/* A request that must answer 2xx with a JSON object: ret_body gets a reference.  Fails (-EIO,
 * having printed why) otherwise. */
int client_call(const struct client *c, const char *method, const char *path, const char *body,
		json_t **ret_body);
/* "/v1/imagecaches/<id escaped>", NULL when out of memory. */
char *client_cache_path(const char *id);

/* Output. */
void client_print_json(json_t *j);
const char *client_str_or(json_t *obj, const char *key, const char *dflt);
void client_human_size(json_t *v, char *buf, size_t size);
/* -o json, table or plain: *json; -EINVAL for anything else. */
int client_parse_output(const char *s, bool *json);

/* Options in imcctl's own syntax (the global ones and push's; the other commands' go through
 * getopt_long, common/cli.h): NAME VALUE, or NAME=VALUE too where equals is set. */
struct client_flag {
	const char *name; /* "--token", "-h" */
	bool has_value;
	int (*take)(const char *value, void *opts); /* 0, or stop with this */
};

/* The row argv[*i] names and its value (the next argument is consumed: *i moves on), NULL when
 * none does or its value is missing. */
const struct client_flag *client_flag_match(const struct client_flag *table, size_t n, bool equals,
					    int argc, char **argv, int *i, const char **ret_value);

#endif
