/* The volume of a build, step by step: a fresh ext4 filesystem (mkfs) or a clone mounted, the
 * images pulled under /images/<n>/rootfs (each layer applied as soon as it is downloaded and
 * verified, while the later ones download), the model data under /data/<path>/ (written straight
 * into the volume, checksummed), /imcache.json, a clean unmount, and the seal that turns the
 * volume into the snapshot; and the undoing of whatever of it exists when a build fails.  The
 * order of the steps is builder/build.c's and builder/base.c's. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "build_internal.h"

/* No journal: a volume that a crash interrupts is thrown away, and so is a clone (sandboxes are
 * ephemeral), so there is nothing to recover; without one each attach mounts faster (no jbd2
 * thread) and detach has no journal to flush.  Nothing to discard on a fresh sparse file, and
 * inode tables stay holes until used. */
static const char *const mkfs_ext4_args[] = {
    "-q", "-F",	     "-b", "4096",	   "-m", "0",
    "-L", "imcache", "-O", "^has_journal", "-E", "nodiscard,lazy_itable_init=1",
    NULL};

/* Undo whatever of the volume exists: mount, mount point, device, the volume itself. */
void build_drop_volume(struct build *b)
{
	imc_error ignored;

	if (b->mounted)
		imc_priv_umount(b->mnt, 0, &ignored);
	b->mounted = false;
	if (b->mnt[0])
		rmdir(b->mnt);
	b->mnt[0] = '\0';
	if (b->volume_created) {
		store_deactivate(b->s, STORE_VOLUME, b->id, &b->dev, &ignored);
		store_remove(b->s, STORE_VOLUME, b->id, &ignored);
	} else if (b->dev.fd >= 0) {
		close(b->dev.fd);
	}
	b->volume_created = false;
	b->dev.fd = -1;
}

/* Between the steps of a build: -ECANCELED once the caller asked to stop. */
int build_check_cancel(const struct build *b, const struct builder_opts *o, imc_error *err)
{
	return builder_cancelled(o) ? imc_err(err, ECANCELED, "volume %s: build cancelled", b->id)
				    : 0;
}

static double ms_since(uint64_t t0)
{
	return (double)(imc_monotonic_ns() - t0) / 1e6;
}

static int fetch_data(struct build *b, const struct builder_opts *o, json_t *data, imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	for (size_t i = 0; i < b->n_plans; i++) {
		json_t *entry = NULL;
		uint64_t t0 = imc_monotonic_ns();
		int r = build_check_cancel(b, o, err);

		if (r == 0)
			r = builder_data_fetch(o, b->plans[i], root, b->dev.fd, &entry, err);
		if (r < 0)
			return r;
		imc_debug("volume %s: data %zu fetched in %.0f ms", b->id, i, ms_since(t0));
		if (json_array_append_new(data, entry) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

int build_mount_volume(struct build *b, bool mkfs, imc_error *err)
{
	_cleanup_free_ char *tmp = builder_tmp_dir(store_state_dir(b->s));
	int r;

	if (!tmp)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", tmp);
	snprintf(b->mnt, sizeof(b->mnt), "%s/" BUILDER_MOUNT_PREFIX "%s", tmp, b->id);
	if (mkdir(b->mnt, 0700) < 0) {
		r = imc_err_sys(err, errno, "mkdir %s", b->mnt);
		b->mnt[0] = '\0';
		return r;
	}
	r = mkfs ? imc_priv_mkfs("ext4", mkfs_ext4_args, b->dev.path, err) : 0;
	if (r == 0)
		r = imc_priv_mount_fs("ext4", b->dev.path, STORE_EXT4_MOUNT_OPTIONS, false, b->mnt,
				      err);
	b->mounted = r == 0;
	return r;
}

int build_apply_images(struct build *b, const struct builder_opts *o, json_t *images,
		       imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	if (mkdirat(root, "images", 0755) < 0)
		return imc_err_sys(err, errno, "mkdir /images");
	for (size_t i = 0; i < b->n_images; i++) {
		char path[64];
		_cleanup_close_ int rootfs = -1;
		json_t *desc;

		snprintf(path, sizeof(path), "images/%zu", i);
		if (mkdirat(root, path, 0755) < 0)
			return imc_err_sys(err, errno, "mkdir /%s", path);
		snprintf(path, sizeof(path), "images/%zu/rootfs", i);
		if (mkdirat(root, path, 0755) < 0)
			return imc_err_sys(err, errno, "mkdir /%s", path);
		rootfs = openat(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (rootfs < 0)
			return imc_err_sys(err, errno, "/%s", path);
		int r = builder_image_pull(o, b->images[i], rootfs, err);
		if (r < 0)
			return r;
		desc = builder_image_describe(b->images[i]);
		snprintf(path, sizeof(path), "/images/%zu/rootfs", i);
		if (!desc || json_object_set_new(desc, "rootfs", json_string(path)) < 0 ||
		    json_array_append_new(images, desc) < 0)
			return imc_err(err, ENOMEM, "out of memory");
	}
	return 0;
}

int build_write_manifest(struct build *b, json_t *manifest, imc_error *err)
{
	_cleanup_close_ int root = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0)
		return imc_err_sys(err, errno, "%s", b->mnt);
	return imc_json_write_atomic(root, MANIFEST_FILE, manifest, err);
}

/* Write the volume's filesystem out and learn whether that worked: a write that the pool refused
 * (ENOSPC) reaches the filesystem in the volume only at writeback, and an unmount would drop it
 * without a word, sealing a snapshot with holes in it. */
static int sync_volume(struct build *b, imc_error *err)
{
	_cleanup_close_ int fd = open(b->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || syncfs(fd) < 0)
		return imc_err_sys(err, errno, "volume %s: write back", b->id);
	return 0;
}

/* Unmount cleanly (so clones never need a journal replay), release the device and seal the
 * volume as the snapshot of the same id. */
int build_seal_volume(struct build *b, imc_error *err)
{
	uint64_t t0 = imc_monotonic_ns();
	double umount_ms, release_ms;
	int r = sync_volume(b, err);

	if (r == 0)
		r = imc_priv_umount(b->mnt, 0, err);
	if (r < 0)
		return r;
	b->mounted = false;
	umount_ms = ms_since(t0);
	r = store_deactivate(b->s, STORE_VOLUME, b->id, &b->dev, err);
	release_ms = ms_since(t0) - umount_ms;
	if (r == 0)
		r = store_seal(b->s, b->id, b->id, err);
	if (r == 0)
		b->volume_created = false;
	imc_debug("volume %s: unmount %.0f ms, release %.0f ms, seal %.0f ms", b->id, umount_ms,
		  release_ms, ms_since(t0) - umount_ms - release_ms);
	return r;
}

/* The last steps of every build, once the images are in: the data, /imcache.json, seal. */
int build_finish_volume(struct build *b, const struct builder_opts *o, json_t *manifest,
			imc_error *err)
{
	int r = fetch_data(b, o, json_object_get(manifest, "data"), err);

	if (r == 0)
		r = build_write_manifest(b, manifest, err);
	if (r == 0)
		r = build_check_cancel(b, o, err);
	if (r == 0)
		r = build_seal_volume(b, err);
	return r;
}
