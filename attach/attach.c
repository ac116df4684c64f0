/* Attach = clone the snapshot, expose the clone as a block device, mount one image's rootfs of it
 * at the caller's directory.  The state of each attach is one JSON file written before anything
 * is touched, keyed by the directory, so detach can undo a half-done attach after a crash. */
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/priv.h"
#include "attach.h"

#define ATTACH_DIR	 "attachments"
#define ATTACH_IMAGE_MAX 1000
#define STATE_MAX_BYTES	 (64 * 1024)

static int open_attach_dir(struct store *s, imc_error *err)
{
	_cleanup_free_ char *path = imc_path_join(s->state_dir, ATTACH_DIR);
	int fd;

	if (!path)
		return imc_err(err, ENOMEM, "out of memory");
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return imc_err_sys(err, errno, "mkdir %s", path);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return imc_err_sys(err, errno, "%s", path);
	return fd;
}

/* The attach id names the clone and the state file: "att-" + 16 hex of sha256(dir). */
TESTABLE int attach_id_for_dir(const char *dir, char ret[32], imc_error *err)
{
	char hex[IMC_SHA256_HEX_LEN + 1];
	int r = imc_sha256_hex(dir, strlen(dir), hex, err);

	if (r < 0)
		return r;
	snprintf(ret, 32, "att-%.16s", hex);
	return 0;
}

static int state_name(const char *aid, char ret[64])
{
	snprintf(ret, 64, "%s.json", aid);
	return 0;
}

/* Record the attach before doing it; fails with -EEXIST when dir is attached already. */
static int state_create(int adir, const char *aid, json_t *state, imc_error *err)
{
	char name[64], tmp[80];
	_cleanup_free_ char *buf = json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS);
	_cleanup_close_ int fd = -1;
	int r;

	if (!buf)
		return imc_err(err, ENOMEM, "out of memory");
	state_name(aid, name);
	snprintf(tmp, sizeof(tmp), ".%s.%d", name, (int)getpid());
	fd = openat(adir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return imc_err_sys(err, errno, "attach state %s", tmp);
	r = imc_write_all(fd, buf, strlen(buf));
	if (r == 0 && renameat2(adir, tmp, adir, name, RENAME_NOREPLACE) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(adir, tmp, 0);
	if (r == -EEXIST)
		return imc_err(err, EEXIST, "already attached");
	return r < 0 ? imc_err_sys(err, r, "attach state %s", name) : 0;
}

static int resolve_dir(const char *dir, char ret[PATH_MAX], imc_error *err)
{
	struct stat st;

	if (!dir || dir[0] == '\0')
		return imc_err(err, EINVAL, "mount directory: empty");
	if (!realpath(dir, ret))
		return imc_err_sys(err, errno, "mount directory %s", dir);
	if (stat(ret, &st) < 0)
		return imc_err_sys(err, errno, "mount directory %s", ret);
	if (!S_ISDIR(st.st_mode))
		return imc_err(err, ENOTDIR, "mount directory %s: not a directory", ret);
	return 0;
}

/* Undo whatever part of an attach exists: mount, device, clone, state. */
static int undo(struct store *s, int adir, const char *aid, const char *dir, bool mounted,
		imc_error *err)
{
	char name[64];
	int r = 0;

	if (mounted) {
		r = imc_priv_umount(dir, 0, err);
		if (r == -EINVAL)
			r = 0; /* not mounted (the crash came before the mount) */
		if (r < 0)
			return r;
	}
	r = store_deactivate(s, STORE_CLONE, aid, NULL, err);
	if (r < 0)
		return r;
	r = store_remove(s, STORE_CLONE, aid, err);
	if (r < 0 && r != -ENOENT)
		return r;
	state_name(aid, name);
	if (unlinkat(adir, name, 0) < 0 && errno != ENOENT)
		return imc_err_sys(err, errno, "attach state %s", name);
	return 0;
}

static int do_attach(struct store *s, const struct attach_request *req, const char *aid,
		     const char *dir, imc_error *err)
{
	char subdir[64];
	struct store_dev dev = {.fd = -1};
	int r;

	snprintf(subdir, sizeof(subdir), "images/%u/rootfs", req->image);
	/* No existence check first: the clone is the check, and the hot path stays short. */
	r = store_clone(s, req->cache_id, aid, err);
	if (r == -ENOENT)
		return imc_err(err, ENOENT, "cache %s: not in the local store", req->cache_id);
	if (r < 0)
		return r;
	r = store_activate(s, STORE_CLONE, aid, 0, &dev, err);
	if (r < 0)
		return r;
	r = imc_priv_mount_subdir("ext4", dev.path, STORE_EXT4_MOUNT_OPTIONS, false, subdir, dir,
				  err);
	if (r == -ENOENT)
		r = imc_err(err, ENOENT, "cache %s has no image %u", req->cache_id, req->image);
	/* From here the mount holds the device; dropping our descriptor lets it go with the
	 * mount (or now, when the mount failed). */
	close(dev.fd);
	return r;
}

int attach_cache(struct store *s, const struct attach_request *req, json_t **ret_state,
		 imc_error *err)
{
	char dir[PATH_MAX], aid[32];
	_cleanup_close_ int adir = -1;
	_cleanup_json_ json_t *state = NULL;
	int r;

	if (!imc_name_valid(req->cache_id, 64))
		return imc_err(err, EINVAL, "cache id \"%.80s\": malformed", req->cache_id);
	if (req->image > ATTACH_IMAGE_MAX)
		return imc_err(err, EINVAL, "image %u: at most %d", req->image, ATTACH_IMAGE_MAX);
	r = resolve_dir(req->dir, dir, err);
	if (r < 0)
		return r;
	if ((r = attach_id_for_dir(dir, aid, err)) < 0 || (adir = open_attach_dir(s, err)) < 0)
		return r < 0 ? r : adir;
	state = json_pack("{s:s, s:s, s:i, s:s, s:s, s:I}", "id", aid, "cacheId", req->cache_id,
			  "image", (int)req->image, "dir", dir, "driver", store_driver_name(s),
			  "createdAt", (json_int_t)imc_now());
	if (!state)
		return imc_err(err, ENOMEM, "out of memory");
	r = state_create(adir, aid, state, err);
	if (r < 0)
		return imc_err_wrap(err, "%s", dir);
	r = do_attach(s, req, aid, dir, err);
	if (r < 0) {
		imc_error undo_err;
		if (undo(s, adir, aid, dir, false, &undo_err) < 0)
			return imc_err_wrap(err, "attach %s at %s (and undoing it failed: %s)",
					    req->cache_id, dir, undo_err.msg);
		return imc_err_wrap(err, "attach %s at %s", req->cache_id, dir);
	}
	if (ret_state)
		*ret_state = steal_pointer(&state);
	return 0;
}

int attach_detach(struct store *s, const char *dir_arg, imc_error *err)
{
	char dir[PATH_MAX], aid[32], name[64];
	_cleanup_close_ int adir = -1;
	struct stat st;
	int r;

	/* The directory may be gone after a crash: then the given path is the key. */
	if (!realpath(dir_arg, dir)) {
		if (strlen(dir_arg) >= sizeof(dir))
			return imc_err(err, ENAMETOOLONG, "%.80s: path too long", dir_arg);
		snprintf(dir, sizeof(dir), "%s", dir_arg);
	}
	if ((r = attach_id_for_dir(dir, aid, err)) < 0 || (adir = open_attach_dir(s, err)) < 0)
		return r < 0 ? r : adir;
	state_name(aid, name);
	if (fstatat(adir, name, &st, 0) < 0)
		return errno == ENOENT ? imc_err(err, ENOENT, "%s: nothing attached there", dir)
				       : imc_err_sys(err, errno, "attach state %s", name);
	r = undo(s, adir, aid, dir, true, err);
	return r < 0 ? imc_err_wrap(err, "detach %s", dir) : 0;
}

int attach_list(struct store *s, json_t **ret, imc_error *err)
{
	int adir = open_attach_dir(s, err);
	_cleanup_dir_ DIR *d = NULL;
	_cleanup_json_ json_t *list = json_array();
	struct dirent *de;

	if (adir < 0)
		return adir;
	d = fdopendir(adir);
	if (!d) {
		close(adir);
		return imc_err_sys(err, errno, "attachments");
	}
	if (!list)
		return imc_err(err, ENOMEM, "out of memory");
	while ((de = readdir(d))) {
		json_t *state = NULL;
		size_t len = strlen(de->d_name);

		if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".json"))
			continue;
		if (imc_json_read_file(dirfd(d), de->d_name, STATE_MAX_BYTES, &state, err) < 0)
			return imc_err_wrap(err, "attachments");
		json_array_append_new(list, state);
	}
	*ret = steal_pointer(&list);
	return 0;
}
