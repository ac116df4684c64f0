/* Random ids: "<prefix>-" + 16 hex digits from getrandom(). */
#include <errno.h>
#include <stdio.h>
#include <sys/random.h>

#include "imc.h"

int imc_random_id(const char *prefix, char *buf, size_t size, imc_error *err)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char rnd[8];
	char digits[17];

	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return imc_err_sys(err, errno, "getrandom");
	for (unsigned i = 0; i < sizeof(rnd); i++) {
		digits[2 * i] = hex[rnd[i] >> 4];
		digits[2 * i + 1] = hex[rnd[i] & 15];
	}
	digits[16] = '\0';
	if ((size_t)snprintf(buf, size, "%s-%s", prefix, digits) >= size)
		return imc_err(err, ENAMETOOLONG, "id buffer too small");
	return 0;
}
