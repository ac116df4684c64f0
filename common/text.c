/* Bytes that come from outside: UTF-8 validation and escaping for the log. */
#include <stdio.h>
#include <string.h>

#include "imc.h"

size_t imc_utf8_char(const char *s, size_t n, uint32_t *ret_cp)
{
	const unsigned char *p = (const unsigned char *)s;
	uint32_t cp, min;
	size_t len;

	if (n == 0)
		return 0;
	if (p[0] < 0x80) {
		len = 1, cp = p[0], min = 0;
	} else if ((p[0] & 0xe0) == 0xc0) {
		len = 2, cp = p[0] & 0x1f, min = 0x80;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3, cp = p[0] & 0x0f, min = 0x800;
	} else if ((p[0] & 0xf8) == 0xf0) {
		len = 4, cp = p[0] & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	/* Overlong forms, UTF-16 surrogates and code points past Unicode are not UTF-8. */
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	if (ret_cp)
		*ret_cp = cp;
	return len;
}

bool imc_utf8_valid(const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t k = imc_utf8_char(s + i, n - i, NULL);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

/* The escape of one byte or character for the log, or 0 when it goes out as it is. */
static size_t escape_one(const char *s, size_t n, char esc[16], size_t *ret_used)
{
	unsigned char c = (unsigned char)s[0];
	uint32_t cp = 0;
	size_t k;

	*ret_used = 1;
	switch (c) {
	case '\n':
		return (size_t)snprintf(esc, 16, "\\n");
	case '\r':
		return (size_t)snprintf(esc, 16, "\\r");
	case '\t':
		return (size_t)snprintf(esc, 16, "\\t");
	case '\\':
		return (size_t)snprintf(esc, 16, "\\\\");
	}
	if (c < 0x20 || c == 0x7f)
		return (size_t)snprintf(esc, 16, "\\x%02x", c);
	if (c < 0x80)
		return 0;
	k = imc_utf8_char(s, n, &cp);
	if (k == 0) /* not UTF-8: the byte, escaped */
		return (size_t)snprintf(esc, 16, "\\x%02x", c);
	*ret_used = k;
	/* C1 controls (a terminal takes U+009B as CSI) and the line and paragraph separators. */
	if (cp <= 0x9f || cp == 0x2028 || cp == 0x2029)
		return (size_t)snprintf(esc, 16, "\\u%04x", (unsigned)cp);
	return 0;
}

size_t imc_log_escape(const char *s, size_t n, char *out, size_t size)
{
	size_t o = 0, i = 0;

	if (size == 0)
		return 0;
	while (i < n) {
		char esc[16];
		size_t used, e = escape_one(s + i, n - i, esc, &used);
		const char *src = e ? esc : s + i;
		size_t len = e ? e : used;

		if (o + len >= size)
			break; /* whole escapes and characters only */
		memcpy(out + o, src, len);
		o += len;
		i += used;
	}
	out[o] = '\0';
	return i;
}
