/* One request without HTTP (api/handle.c), as the server (api/server.c) hands it over: private
 * to those two files.  api_handle (api.h) is the same for a raw "path?query". */
#ifndef IMC_API_HANDLE_H
#define IMC_API_HANDLE_H

#include <stdbool.h>
#include <stddef.h>

#include "api.h"

/* A request's query, split and percent-decoded. */
struct api_request_query {
	const struct api_query_arg *args;
	size_t n;
	bool too_many;
};

/* api_handle with the path and its query arguments already apart (the server's way);
 * too_many_args: the query had more than API_QUERY_ARGS_MAX arguments. */
void api_handle_args(struct api_caches *c, const struct api_caller *who, const char *method,
		     const char *url, const struct api_query_arg *args, size_t n_args,
		     bool too_many_args, const char *body, size_t len, bool too_large,
		     struct api_response *ret);

/* Path and query arrive percent-decoded: "%ff" is a byte that is not UTF-8, which can name
 * nothing here and cannot be echoed in JSON.  False with a 400 naming where it is in ret. */
bool api_request_text_valid(const char *url, const struct api_request_query *q,
			    struct api_response *ret);

/* ret: status and {"error":{"code","message"}}. */
void api_answer_error(struct api_response *ret, unsigned status, const char *code,
		      const char *message);

#endif
