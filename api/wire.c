/* The API's id shapes (api/wire.h). */
#include <string.h>

#include "../common/imc.h"
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

/* The one cache id rule is common/'s (imc-attach checks ids with it too). */
bool api_cache_id_valid(const char *id)
{
	return imc_cache_id_valid(id);
}

bool api_attach_id_valid(const char *id)
{
	return prefixed_id_valid(id, API_ATTACH_PREFIX "-");
}
