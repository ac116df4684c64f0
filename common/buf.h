/* Growable buffers (common/buf.c); included by imc.h. */
#ifndef IMC_BUF_H
#define IMC_BUF_H

#include <stddef.h>

/* Bytes that grow by appending, always NUL-terminated once anything was appended. */
struct imc_buf {
	char *data;
	size_t len, cap;
};
/* Append n bytes; on -ENOMEM buf is as it was (an errno-only leaf helper: see imc.h). */
int imc_buf_append(struct imc_buf *buf, const void *data, size_t n);
void imc_buf_free(struct imc_buf *buf);

#endif
