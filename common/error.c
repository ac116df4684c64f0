#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imc.h"

static int set_msg(imc_error *err, int errnum, const char *fmt, va_list ap, bool with_strerror)
{
	int code = errnum > 0 ? -errnum : errnum;

	if (code == 0)
		code = -EIO;
	if (!err)
		return code;
	err->code = code;
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	if (with_strerror) {
		size_t n = strlen(err->msg);
		snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(-code));
	}
	return code;
}

int imc_err(imc_error *err, int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = set_msg(err, errnum, fmt, ap, false);
	va_end(ap);
	return r;
}

int imc_err_sys(imc_error *err, int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = set_msg(err, errnum, fmt, ap, true);
	va_end(ap);
	return r;
}

int imc_err_wrap(imc_error *err, const char *fmt, ...)
{
	char ctx[IMC_ERR_MSG], old[IMC_ERR_MSG];
	va_list ap;

	if (!err)
		return -EIO;
	if (err->code == 0)
		err->code = -EIO;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof(ctx), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	snprintf(err->msg, sizeof(err->msg), "%s: %s", ctx, old);
	return err->code;
}

void imc_err_clear(imc_error *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
}

static enum imc_log_level log_level = IMC_LOG_INFO;

void imc_log_set_level(enum imc_log_level level)
{
	log_level = level;
}

/* Bytes of one log message before escaping, and of its escaped form: longer messages are cut. */
#define LOG_MSG_MAX 4096
#define LOG_OUT_MAX (2 * LOG_MSG_MAX)

/* Every message goes out as one line: whatever its arguments carry (a request's path, a ref, a
 * registry's answer) has its control characters, line breaks and invalid UTF-8 escaped, so that
 * nothing from outside can forge or hide a log line (imc_log_escape). */
void imc_log(enum imc_log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	char ts[32], msg[LOG_MSG_MAX], out[LOG_OUT_MAX];
	size_t len, used;
	va_list ap;
	int n;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	len = n < 0 ? 0 : (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
	used = imc_log_escape(msg, len, out, sizeof(out));
	imc_time_rfc3339(imc_now(), ts, sizeof(ts));
	flockfile(stderr);
	fprintf(stderr, "%s %s: %s%s\n", ts, names[level], out,
		used < len || (n > 0 && (size_t)n >= sizeof(msg)) ? " [truncated]" : "");
	funlockfile(stderr);
}
