/* imcd's command line, private to api/imcd_main.c (start-up and wiring) and api/imcd_options.c
 * (the option table, the usage text and the environment). */
#ifndef IMC_API_IMCD_H
#define IMC_API_IMCD_H

#include <stdbool.h>
#include <stdint.h>

#include "api.h"

#define MAX_INSECURE_REGISTRIES 64
#define MAX_DATA_ALLOW		64
#define MAX_DRIVER_OPTS		32

struct imcd_options {
	const char *listen;
	const char *state_dir;
	const char *driver;
	uint64_t pool_size;
	const char *insecure[MAX_INSECURE_REGISTRIES + 1];
	size_t n_insecure;
	const char *driver_opts[MAX_DRIVER_OPTS + 1];
	size_t n_driver_opts;
	const char *ready_file;
	unsigned threads;
	const char *auth_file;
	const char *ca_file;
	const char *hf_endpoint;
	const char *config; /* NULL: API_CONFIG_DEFAULT when it exists */
	bool no_config;	    /* not even API_CONFIG_DEFAULT */
	const char *tls_cert;
	const char *tls_key;
	unsigned build_workers;	      /* 0: api/caches.c's default (2) */
	double evict_high, evict_low; /* 0: 0.90 / 0.80 */
	unsigned sweep_interval_ms;   /* 0: 60 s */
	struct api_http_limits http;  /* 0: the config's, else the default */
	unsigned day_seconds;	      /* 0: 86400; test builds only: $IMCD_DAY_SECONDS */
	char platform[OCI_PLATFORM_MAX];
	unsigned resolve_timeout_ms;		    /* 0: 30 s */
	unsigned shutdown_grace_ms;		    /* 0: 30 s */
	unsigned tenant_builds;			    /* 0: api/caches.c's rule */
	uint64_t blob_cache_max;		    /* 0: the config's, else no cap */
	const char *data_allow[MAX_DATA_ALLOW + 1]; /* --allow-data-destination */
	size_t n_data_allow;
	uint64_t min_rate, min_rate_window_s; /* 0: net/'s defaults (64 KiB/s, 60 s) */
	uint64_t max_blob_size;		      /* 0: OCI_BLOB_MAX_DEFAULT */
	uint32_t chunk_size;		      /* of new chunk exports; 0: DIST_CHUNK_SIZE_DEFAULT */
	bool export_on_request;		      /* --export request: not at Ready, at the first GET */
};

/* Fills o from argv: 0 to run, 1 to exit 0 (--help), -1 after a usage error (said on stderr). */
int imcd_parse_args(int argc, char **argv, struct imcd_options *o);

/* The environment channels, all read here: $HF_ENDPOINT (the Hugging Face convention) when
 * --hf-endpoint is not given, and in test builds only the retention day's length. */
void imcd_read_environment(struct imcd_options *o);

#endif
