/* The blob cache's layout: <state>/blobs/sha256/<hex>, the verified blobs of every registry
 * (written by oci_registry_fetch_blob, read by the builder). */
#include <stdio.h>

#include "oci.h"

char *oci_blob_dir(const char *state_dir)
{
	return imc_path_join(state_dir, "blobs");
}

char *oci_blob_sha256_dir(const char *blob_dir)
{
	return imc_path_join(blob_dir, "sha256");
}
