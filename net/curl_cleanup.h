/* Cleanup attributes for libcurl handles, for the code that still calls libcurl itself until it
 * moves onto net_perform() (docs/architecture.md, net/). */
#ifndef IMC_NET_CURL_CLEANUP_H
#define IMC_NET_CURL_CLEANUP_H

#include <curl/curl.h>

#include "../common/cleanup.h"

static inline void imc_curl_cleanupp(CURL **c)
{
	if (*c)
		curl_easy_cleanup(*c);
}

static inline void imc_curl_slist_freep(struct curl_slist **l)
{
	curl_slist_free_all(*l);
}

#define _cleanup_curl_	     _cleanup_(imc_curl_cleanupp)
#define _cleanup_curl_slist_ _cleanup_(imc_curl_slist_freep)

#endif
