/* Recovering what half-done builds left behind: a build that a killed imcd left mounted at
 * <state>/tmp/build-<volume> is unmounted (which frees its loop device), its directory removed,
 * and its half-built volume removed from the store. */
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sys/mount.h>

#include "../common/priv.h"
#include "builder.h"

#define VOLUME_ID_MAX 64 /* a volume is named after its cache */

static void remove_volume(struct store *s, const char *id, json_t *repairs)
{
	imc_error e = {0};
	int r = store_remove(s, STORE_VOLUME, id, &e);

	if (r == 0)
		imc_repair_report(repairs, "cache %s: removed the leftover %s", id,
				  store_kind_name(STORE_VOLUME));
	else if (r != -ENOENT)
		imc_repair_report(repairs, "cache %s: cannot remove the leftover %s: %s", id,
				  store_kind_name(STORE_VOLUME), e.msg);
}

static void recover_build_dir(struct store *s, int tmpfd, const char *tmp, const char *name,
			      json_t *repairs)
{
	_cleanup_free_ char *path = imc_path_join(tmp, name);
	const char *volume = name + strlen(BUILDER_MOUNT_PREFIX);
	imc_error e = {0};
	int r;

	if (!path)
		return;
	r = imc_priv_umount(path, MNT_DETACH, &e);
	if (r == 0)
		imc_repair_report(repairs, "%s: unmounted a build that imcd did not see finish",
				  path);
	else if (r != -EINVAL && r != -ENOENT)
		imc_repair_report(repairs, "%s: cannot unmount: %s", path, e.msg);
	if (unlinkat(tmpfd, name, AT_REMOVEDIR) == 0)
		imc_repair_report(repairs, "%s: removed", path);
	if (imc_name_valid(volume, VOLUME_ID_MAX))
		remove_volume(s, volume, repairs);
}

char *builder_tmp_dir(const char *state_dir)
{
	return imc_path_join(state_dir, "tmp");
}

void builder_recover(struct store *s, const char *state_dir, json_t *repairs)
{
	_cleanup_free_ char *tmp = builder_tmp_dir(state_dir);
	_cleanup_dir_ DIR *d = tmp ? opendir(tmp) : NULL;
	const size_t n = strlen(BUILDER_MOUNT_PREFIX);
	struct dirent *de;

	while (d && (de = readdir(d)))
		if (strncmp(de->d_name, BUILDER_MOUNT_PREFIX, n) == 0 && de->d_name[n])
			recover_build_dir(s, dirfd(d), tmp, de->d_name, repairs);
}
