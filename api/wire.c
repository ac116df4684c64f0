/* The API's id shapes (api/wire.h). */
#include <string.h>

#include "wire.h"

/* prefix followed by 16 lowercase hex digits. */
static bool prefixed_id_valid(const char *id, const char *prefix)
{
	const size_t plen = strlen(prefix);

	if (!id || strncmp(id, prefix, plen) != 0 || strlen(id) != plen + 16)
		return false;
	for (const char *p = id + plen; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

bool api_cache_id_valid(const char *id)
{
	return prefixed_id_valid(id, API_ID_PREFIX "-");
}

bool api_attach_id_valid(const char *id)
{
	return prefixed_id_valid(id, API_ATTACH_PREFIX "-");
}
