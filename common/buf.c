/* Growable buffers: bytes that grow by appending (common/buf.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imc.h"

int imc_buf_append(struct imc_buf *buf, const void *data, size_t n)
{
	if (n > SIZE_MAX / 2 - buf->len - 1)
		return -ENOMEM;
	if (buf->len + n + 1 > buf->cap) {
		size_t cap = buf->cap ? buf->cap : 4096;
		char *grown;

		while (cap < buf->len + n + 1)
			cap *= 2;
		grown = realloc(buf->data, cap);
		if (!grown)
			return -ENOMEM;
		buf->data = grown;
		buf->cap = cap;
	}
	memcpy(buf->data + buf->len, data, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return 0;
}

void imc_buf_free(struct imc_buf *buf)
{
	free(buf->data);
	*buf = (struct imc_buf){0};
}
