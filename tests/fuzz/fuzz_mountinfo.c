/* Fuzz target: the mountinfo scan that finds an overlay attach's mounts (its overlay by the
 * source "imc-<att-id>", and the mounts on top of it) for detach and reconcile.  Mount points
 * are names anyone who can mount chooses, escaped by the kernel.
 *
 * Properties beyond "no crash, no leak, no UB": at most ATTACH_POD_MOUNTS_MAX mounts; every mount
 * point is a string shorter than PATH_MAX; a mount that is not the overlay sits on one of the
 * mounts found (its parent is among them); with no overlay found, nothing is. */
#include <stdlib.h>
#include <string.h>

#include "../../attach/internal.h"

#define AID "att-0123456789abcdef"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static struct attach_pod_mount m[ATTACH_POD_MOUNTS_MAX];
	char *buf = malloc(size + 1);
	size_t n;
	bool any_overlay = false;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	n = attach_pod_mounts_scan(buf, AID, m);
	if (n > ATTACH_POD_MOUNTS_MAX)
		abort();
	for (size_t i = 0; i < n; i++) {
		bool parent_found = false;
		if (strnlen(m[i].point, PATH_MAX) >= PATH_MAX)
			abort();
		any_overlay |= m[i].overlay;
		for (size_t j = 0; j < n && !m[i].overlay && !parent_found; j++)
			parent_found = j != i && m[j].id == m[i].parent;
		if (!m[i].overlay && !parent_found)
			abort();
	}
	if (n > 0 && !any_overlay)
		abort();
	free(buf);
	return 0;
}
