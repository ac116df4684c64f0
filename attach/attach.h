/* Attaching caches on a sandbox host: a COW clone of the snapshot, a block device and a mount of
 * one image's rootfs, with state on disk so that detach works after a crash. */
#ifndef IMC_ATTACH_H
#define IMC_ATTACH_H

#include <stdbool.h>

#include "../common/imc.h"
#include "../store/store.h"

struct attach_request {
	const char *cache_id;
	unsigned image;	 /* /images/<image>/rootfs */
	const char *dir; /* where the rootfs appears */
};

/* Attach; ret_state (optional) gets the recorded attach state. */
int attach_cache(struct store *s, const struct attach_request *req, json_t **ret_state,
		 imc_error *err);
/* Undo the attach at dir: unmount, release the device, remove the clone and the state.  Works
 * on whatever part of an attach a crash left behind. */
int attach_detach(struct store *s, const char *dir, imc_error *err);
/* All recorded attaches, as a JSON array of states. */
int attach_list(struct store *s, json_t **ret, imc_error *err);

#endif
