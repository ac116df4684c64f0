/* Fuzz target: layer application (builder_layer_apply).
 *
 * Each input is a layer blob (tar, tar.gz or tar.zst) in a memfd, applied into a fresh root:
 *
 *     $TMPDIR/imc-fuzz-layer.XXXXXX/g1/g2/g3/root
 *
 * The property that matters: whatever the layer says ("..", absolute names, symlinks and hard
 * links pointing out, whiteouts of "..") nothing is created, removed, renamed or changed
 * outside root.  g1, g2 and g3 are guards: after each input each must still hold exactly its one
 * child and keep its inode, owner, mode and mtime; the root keeps its inode, owner and mode (an
 * entry for "/" or "." never changes it).  A layer may fail; it may not escape.  The root is
 * removed after every input, and the whole directory at exit.
 *
 * Two kinds of input.  Most are the blob itself, as a registry would send it.  But libarchive is
 * not instrumented and nearly every mutation of a tar header breaks its checksum, so the fuzzer
 * would learn little about the entries: an input that starts with STRUCTURED_MAGIC is instead a
 * list of entries (layer_from_script()) that this target writes as a valid tar itself, with
 * names and link targets drawn from a small vocabulary ("..", "/", whiteouts, the guards' names)
 * so that entries collide, shadow each other and point out of the root often. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "../../builder/builder.h"

static const char *const chain[] = {"g1", "g2", "g3", "root"};
#define CHAIN_LEN IMC_ARRAY_SIZE(chain)

static char base_path[4096];
static int base_fd = -1;

__attribute__((noreturn)) static void die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_layer: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

static void remove_base(void)
{
	if (base_fd >= 0) {
		imc_rm_rf_at(base_fd, chain[0], NULL);
		close(base_fd);
		base_fd = -1;
	}
	if (base_path[0])
		rmdir(base_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(base_path, sizeof(base_path), "%s/imc-fuzz-layer.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(base_path))
		die("mkdtemp", base_path);
	base_fd = open(base_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (base_fd < 0)
		die("open", base_path);
	atexit(remove_base);
	return 0;
}

/* Make g1/g2/g3/root; returns an fd of root. */
static int make_chain(void)
{
	_cleanup_close_ int dfd = fcntl(base_fd, F_DUPFD_CLOEXEC, 0);

	for (size_t i = 0; i < CHAIN_LEN; i++) {
		if (mkdirat(dfd, chain[i], 0755) < 0)
			die("mkdir", chain[i]);
		int fd = openat(dfd, chain[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			die("open", chain[i]);
		close(dfd);
		dfd = fd;
	}
	return steal_fd(&dfd);
}

/* The stat of each directory of the chain, once it is complete. */
static void stat_chain(struct stat ret_st[CHAIN_LEN])
{
	char path[64] = "";

	for (size_t i = 0; i < CHAIN_LEN; i++) {
		size_t n = strlen(path);
		snprintf(path + n, sizeof(path) - n, "%s%s", i ? "/" : "", chain[i]);
		if (fstatat(base_fd, path, &ret_st[i], AT_SYMLINK_NOFOLLOW) < 0)
			die("stat", path);
	}
}

/* The same directory, with the same owner and mode; a guard (not the root, whose contents
 * change) with the same contents. */
static bool same_dir(const struct stat *a, const struct stat *b, bool guard)
{
	return S_ISDIR(a->st_mode) && a->st_ino == b->st_ino && a->st_mode == b->st_mode &&
	       a->st_uid == b->st_uid && a->st_gid == b->st_gid &&
	       (!guard || (a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
			   a->st_mtim.tv_nsec == b->st_mtim.tv_nsec));
}

/* dfd must hold exactly one entry, want, the directory it held before (was). */
static void check_only_child(int dfd, const char *parent, const char *want, const struct stat *was,
			     bool guard)
{
	_cleanup_dir_ DIR *d = NULL;
	struct dirent *de;
	struct stat st;
	/* A new open file description: its offset is not dfd's. */
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	size_t n = 0;

	if (fd < 0 || !(d = fdopendir(fd)))
		die("opendir", parent);
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (strcmp(de->d_name, want) != 0) {
			fprintf(stderr, "fuzz_layer: ESCAPE: %s/%s was created outside the root\n",
				parent, de->d_name);
			abort();
		}
		n++;
	}
	if (n != 1 || fstatat(dfd, want, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode) ||
	    !same_dir(&st, was, guard)) {
		fprintf(stderr, "fuzz_layer: ESCAPE: %s/%s was removed, replaced or changed\n",
			parent, want);
		abort();
	}
}

static void check_chain(const struct stat was[CHAIN_LEN])
{
	_cleanup_close_ int dfd = fcntl(base_fd, F_DUPFD_CLOEXEC, 0);
	const char *parent = base_path;

	for (size_t i = 0; i < CHAIN_LEN; i++) {
		check_only_child(dfd, parent, chain[i], &was[i], i + 1 < CHAIN_LEN);
		if (i + 1 == CHAIN_LEN)
			break;
		int fd = openat(dfd, chain[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			die("open", chain[i]);
		close(dfd);
		dfd = fd;
		parent = chain[i];
	}
}

static int blob_from(const uint8_t *data, size_t size)
{
	_cleanup_close_ int fd = memfd_create("layer", MFD_CLOEXEC);

	if (fd < 0)
		die("memfd_create", NULL);
	if (imc_write_all(fd, data, size) < 0 || lseek(fd, 0, SEEK_SET) != 0)
		die("write memfd", NULL);
	return steal_fd(&fd);
}

/* ---- structured inputs ---------------------------------------------------------------------
 * STRUCTURED_MAGIC, then a byte of options (bits 0-1: 0 none, 1 gzip, 2 zstd), then entries
 * until the input ends:
 *   type byte (low 3 bits: file, dir, symlink, hardlink, fifo, char device, dir, file),
 *   attribute byte (bits 0-2: permissions, bits 3-4: owner),
 *   a path, and for symlinks and hard links a target path:
 *     a byte: bits 0-2 the number of components (0-7), bit 3 a leading "/", bit 4 a trailing
 *     "/"; then one byte per component, an index into words[];
 *   for files a length byte and that many bytes of contents. */
#define STRUCTURED_MAGIC   0xa5
#define SCRIPT_ENTRIES_MAX 64

static const char *const words[] = {
    "a",
    "b",
    "c",
    "..",
    ".",
    "",
    "g1",
    "g2",
    "g3",
    "root",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..",
    ".wh...",
    ".wh..wh.plnk",
    ".wh.",
    ".wh.g3",
    ".wh.root",
    "etc",
    "tmp",
    "proc",
    "self",
    "dev",
    "l",
    "d",
    "...",
    "a/../..",
};
static const mode_t perms[] = {0755, 0644, 0, 0777, 04755, 01777, 02755, 0400};
static const int64_t owners[] = {0, 1000, 65534, 4294967294LL};

struct script {
	const uint8_t *p;
	size_t n;
};

static uint8_t script_byte(struct script *s)
{
	if (s->n == 0)
		return 0;
	s->n--;
	return *s->p++;
}

static void script_path(struct script *s, char *out, size_t size)
{
	uint8_t shape = script_byte(s);
	size_t len = 0;

	out[0] = '\0';
	if (shape & 8)
		len += (size_t)snprintf(out + len, size - len, "/");
	for (unsigned i = 0; i < (shape & 7u) && len < size; i++) {
		const char *w = words[script_byte(s) % IMC_ARRAY_SIZE(words)];
		len += (size_t)snprintf(out + len, size - len, "%s%s", i ? "/" : "", w);
	}
	if ((shape & 16) && len < size)
		snprintf(out + len, size - len, "/");
}

/* Fill e from the script; returns the bytes of contents to write (in buf). */
static size_t script_entry(struct script *s, struct archive_entry *e, char *buf, size_t size)
{
	static const mode_t types[] = {AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFREG,
				       AE_IFIFO, AE_IFCHR, AE_IFDIR, AE_IFREG};
	uint8_t kind = script_byte(s) & 7, attr = script_byte(s);
	char path[512];
	size_t len = 0;

	script_path(s, path, sizeof(path));
	archive_entry_set_pathname(e, path);
	archive_entry_set_filetype(e, types[kind]);
	archive_entry_set_perm(e, perms[attr & 7]);
	archive_entry_set_uid(e, owners[(attr >> 3) & 3]);
	archive_entry_set_gid(e, owners[(attr >> 3) & 3]);
	archive_entry_set_mtime(e, 1700000000, 0);
	if (kind == 2 || kind == 3) {
		script_path(s, path, sizeof(path));
		if (kind == 2)
			archive_entry_set_symlink(e, path);
		else
			archive_entry_set_hardlink(e, path);
	} else if (types[kind] == AE_IFCHR) {
		archive_entry_set_rdevmajor(e, 1);
		archive_entry_set_rdevminor(e, 3);
	} else if (types[kind] == AE_IFREG) {
		len = script_byte(s);
		len = len < size ? len : size;
		for (size_t i = 0; i < len; i++)
			buf[i] = (char)script_byte(s);
		archive_entry_set_size(e, (la_int64_t)len);
	}
	return len;
}

static int script_filter(struct archive *a, uint8_t options)
{
	switch (options & 3) {
	case 1:
		return archive_write_add_filter_gzip(a);
	case 2:
		return archive_write_add_filter_zstd(a);
	default:
		return ARCHIVE_OK;
	}
}

/* Write the layer a script describes into fd.  libarchive may refuse an entry (an empty name,
 * a hard link to nothing): the entry is left out. */
static void layer_from_script(const uint8_t *data, size_t size, int fd)
{
	struct script s = {data, size};
	struct archive *a = archive_write_new();
	char buf[256];

	if (!a || archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    script_filter(a, script_byte(&s)) != ARCHIVE_OK ||
	    archive_write_open_fd(a, fd) != ARCHIVE_OK)
		die("archive_write", a ? archive_error_string(a) : NULL);
	for (size_t i = 0; s.n > 0 && i < SCRIPT_ENTRIES_MAX; i++) {
		struct archive_entry *e = archive_entry_new();
		if (!e)
			die("archive_entry_new", NULL);
		size_t len = script_entry(&s, e, buf, sizeof(buf));
		int r = archive_write_header(a, e);
		if ((r == ARCHIVE_OK || r == ARCHIVE_WARN) && len > 0)
			archive_write_data(a, buf, len);
		archive_entry_free(e);
	}
	if (archive_write_close(a) != ARCHIVE_OK)
		die("archive_write_close", archive_error_string(a));
	archive_write_free(a);
}

static int blob_from_input(const uint8_t *data, size_t size)
{
	if (size == 0 || data[0] != STRUCTURED_MAGIC)
		return blob_from(data, size);
	_cleanup_close_ int fd = memfd_create("layer", MFD_CLOEXEC);
	if (fd < 0)
		die("memfd_create", NULL);
	layer_from_script(data + 1, size - 1, fd);
	if (lseek(fd, 0, SEEK_SET) != 0)
		die("lseek memfd", NULL);
	return steal_fd(&fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stat chain_st[CHAIN_LEN];
	_cleanup_close_ int blob = blob_from_input(data, size);
	_cleanup_close_ int rootfd = make_chain();
	imc_error err = {0};
	int r;

	stat_chain(chain_st);
	r = builder_layer_apply(rootfd, blob, "fuzz", &err);

	if (r > 0 || (r < 0 && (err.code != r || err.msg[0] == '\0')))
		die("bad error report", err.msg);
	check_chain(chain_st);
	if (imc_rm_rf_at(base_fd, chain[0], &err) < 0)
		die("cannot remove what the layer created", err.msg);
	return 0;
}
