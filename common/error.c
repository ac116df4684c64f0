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

void imc_log(enum imc_log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	char ts[32];
	va_list ap;

	if (level > log_level)
		return;
	imc_time_rfc3339(imc_now(), ts, sizeof(ts));
	flockfile(stderr);
	fprintf(stderr, "%s %s: ", ts, names[level]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	funlockfile(stderr);
}
