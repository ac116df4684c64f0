/* Command-line option tables (cli.h): the getopt_long arrays built from the rows. */
#include <stdbool.h>
#include <string.h>

#include "cli.h"

#define LONG_VAL_BASE 256 /* getopt_long's val for a row without a short form: its index + this */

int imc_cli_string(const struct imc_cli_opt *opt, const char *arg, void *opts)
{
	*(const char **)((char *)opts + opt->off) = arg;
	return 0;
}

int imc_cli_true(const struct imc_cli_opt *opt, const char *arg, void *opts)
{
	*(bool *)((char *)opts + opt->off) = true;
	return 0;
}

/* The row getopt_long's answer ch stands for, NULL for none. */
static const struct imc_cli_opt *row_of(int ch, const struct imc_cli_opt *table, size_t n)
{
	if (ch >= LONG_VAL_BASE && (size_t)(ch - LONG_VAL_BASE) < n)
		return &table[ch - LONG_VAL_BASE];
	for (size_t i = 0; i < n; i++)
		if (table[i].short_opt && table[i].short_opt == ch)
			return &table[i];
	return NULL;
}

int imc_cli_getopt(int argc, char **argv, const char *prefix, const struct imc_cli_opt *table,
		   size_t n, void *opts)
{
	struct option longopts[n + 1];
	char shorts[strlen(prefix) + 2 * n + 1];
	size_t len = strlen(prefix);
	int ch, r;

	memcpy(shorts, prefix, len);
	for (size_t i = 0; i < n; i++) {
		longopts[i] = (struct option){table[i].name, table[i].has_arg, NULL,
					      table[i].short_opt ? table[i].short_opt
								 : LONG_VAL_BASE + (int)i};
		if (!table[i].short_opt)
			continue;
		shorts[len++] = (char)table[i].short_opt;
		if (table[i].has_arg == required_argument)
			shorts[len++] = ':';
	}
	shorts[len] = '\0';
	longopts[n] = (struct option){0};
	while ((ch = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
		const struct imc_cli_opt *row = row_of(ch, table, n);

		if (!row)
			return IMC_CLI_REJECTED;
		r = row->take(row, optarg, opts);
		if (r != 0)
			return r;
	}
	return 0;
}
