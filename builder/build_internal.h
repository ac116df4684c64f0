/* What the files of a build share, private to builder/build.c (the orchestration: resolve,
 * plan, check room, build fresh or on a base), builder/volume.c (the volume: mkfs and mount, the
 * images applied layer by layer, the data, /imcache.json, seal) and builder/base.c (incremental
 * builds on base snapshots). */
#ifndef IMC_BUILDER_BUILD_INTERNAL_H
#define IMC_BUILDER_BUILD_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "builder.h"

#define MANIFEST_FILE	 "imcache.json"
#define MANIFEST_VERSION 1

struct build {
	struct store *s;
	const char *id;
	struct builder_image **images;
	size_t n_images;
	struct builder_data_plan **plans;
	size_t n_plans;
	bool volume_created;
	struct store_dev dev;
	char mnt[PATH_MAX];
	bool mounted;
	bool borrowed_images; /* images belong to another build */
	json_t *pinned;	      /* the layer digests this build pinned in the blob store */
	uint64_t layer_bytes, data_bytes;
	uint64_t expected; /* bytes set aside beside the pool (store_space_expect) */
};

/* builder/build.c */
void build_cleanup(struct build *b);

/* A build that failed (r) names its cache, and says so when the size was too small, or when the
 * store, not the volume, ran out of space. */
int build_failed(const struct build *b, int r, uint64_t size, imc_error *err);

/* Before anything is written: the pool must hold content bytes, and its filesystem the layers
 * still to download as well (set aside for as long as the build runs, so that the pool promises
 * that much less: store_space_expect).  Too little is ENOSPC now, not an I/O error later. */
int build_check_room(struct build *b, const struct builder_opts *o, uint64_t content,
		     imc_error *err);

/* A fresh volume: mkfs, every image, the data, /imcache.json, seal. */
int build_fresh(struct build *b, const struct builder_opts *o, uint64_t size, json_t *manifest,
		imc_error *err);

/* The layer digests of an image, in order (a new reference; NULL on OOM). */
json_t *build_layer_digests(const struct builder_image *img);

/* (builder.h declares it too, for the unit tests.) */
uint64_t build_default_size(uint64_t layer_bytes, uint64_t data_bytes);

/* builder/volume.c */
/* Undo whatever of the volume exists: mount, mount point, device, the volume itself. */
void build_drop_volume(struct build *b);

/* Between the steps of a build: -ECANCELED once the caller asked to stop. */
int build_check_cancel(const struct build *b, const struct builder_opts *o, imc_error *err);

/* The volume activated in b->dev, made ext4 first with mkfs, mounted under builder_tmp_dir(). */
int build_mount_volume(struct build *b, bool mkfs, imc_error *err);

/* Every image of b pulled into /images/<n>/rootfs, each described into images. */
int build_apply_images(struct build *b, const struct builder_opts *o, json_t *images,
		       imc_error *err);

/* /imcache.json, written atomically. */
int build_write_manifest(struct build *b, json_t *manifest, imc_error *err);

/* Unmount cleanly (so clones never need a journal replay), release the device and seal the
 * volume as the snapshot of the same id. */
int build_seal_volume(struct build *b, imc_error *err);

/* The last steps of every build, once the images are in: the data, /imcache.json, seal. */
int build_finish_volume(struct build *b, const struct builder_opts *o, json_t *manifest,
			imc_error *err);

/* builder/base.c */
/* A cache of one image: its base (built now if there is none), cloned, grown, plus the data. */
int build_on_base(struct build *b, const struct builder_opts *o, uint64_t size,
		  uint64_t layer_bytes, json_t *manifest, imc_error *err);

#endif
