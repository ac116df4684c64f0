/* Command-line option tables for the programs' main files: one row per option, so adding an
 * option is adding a row (and its line in the usage text). */
#ifndef IMC_CLI_H
#define IMC_CLI_H

#include <getopt.h>
#include <limits.h>
#include <stddef.h>

struct imc_cli_opt;
/* Takes an option's value (NULL for a flag without one) into opts, the command's options
 * struct; returns 0 to go on, anything else to stop parsing with that value. */
typedef int imc_cli_take_fn(const struct imc_cli_opt *opt, const char *arg, void *opts);

struct imc_cli_opt {
	const char *name; /* --NAME */
	int has_arg;	  /* no_argument or required_argument */
	int short_opt;	  /* its -X form ('s' for -s), 0 for none */
	imc_cli_take_fn *take;
	size_t off; /* offsetof the field in opts that imc_cli_string and imc_cli_true set */
};

/* The options for imc_cli_string (a const char *) and imc_cli_true (a bool) fields. */
int imc_cli_string(const struct imc_cli_opt *opt, const char *arg, void *opts);
int imc_cli_true(const struct imc_cli_opt *opt, const char *arg, void *opts);

/* What imc_cli_getopt returns for an option getopt_long rejects (unknown, or its value
 * missing): getopt_long has said so unless prefix starts with ':'. */
#define IMC_CLI_REJECTED INT_MIN

/* getopt_long over argv from optind with the n rows of table; prefix ("", "+" or ":") starts
 * the short options string.  Returns 0 when the options end (optind at the first argument left),
 * the first nonzero value a take function returns, or IMC_CLI_REJECTED. */
int imc_cli_getopt(int argc, char **argv, const char *prefix, const struct imc_cli_opt *table,
		   size_t n, void *opts);

#endif
