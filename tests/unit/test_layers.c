/* A corpus of hostile layers: each is written here with libarchive (or cut short, or made of
 * junk), applied to a fresh root with builder_layer_apply, and must either fail with the error
 * named in the case or stay inside the root.  Around the root lie a canary file and a directory
 * with a file in it; after every case both must be exactly as they were, and nothing new may
 * appear next to the root. */
#include <check.h>
#include <stdint.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "../../builder/builder.h"
#include "unit.h"

#define CANARY "canary: must never change\n"

/* The corpus below is a table: fields a case does not name are zero. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

enum kind { F, D, SYM, HARD, CHR, BLK, FIFO, BIGF };

struct ent {
	enum kind kind;
	const char *path; /* "@" is replaced by the test dir's absolute path */
	const char *data; /* file contents; link target ("@" as in path) */
	unsigned major, minor;
	int64_t uid;
	int n_xattrs;	    /* user.x0.. user.xN with 1-byte values */
	size_t xattr_bytes; /* one user.big of this many bytes */
};

enum outcome { FAILS, CONTAINED };

struct hostile {
	const char *name;
	const char *filter; /* "gzip", "zstd", "none" */
	struct ent ents[8];
	size_t n;
	enum outcome want;
	int want_errno;	      /* for FAILS; 0: any */
	const char *want_msg; /* for FAILS: a substring of the message */
	long cut;	      /* > 0: keep only this many bytes of the blob; < 0: drop -cut bytes */
};

static char base[64], top[256];
static char deep_path[4200], long_path[4300], long_name[320], big_data[5000];

static const struct hostile cases[] = {
    {"dotdot", "none", {{F, "../canary", "pwned"}}, 1, FAILS, EPERM, "climbs out of the root"},
    {"dotdot-inner",
     "gzip",
     {{D, "a/"}, {F, "a/../../canary", "pwned"}},
     2,
     FAILS,
     EPERM,
     "climbs out"},
    {"absolute", "none", {{F, "@/canary", "pwned"}}, 1, CONTAINED},
    {"symlink-abs-then-write",
     "gzip",
     {{SYM, "l", "@/outside"}, {F, "l/pwn", "pwned"}},
     2,
     FAILS,
     ENOENT,
     "entry \"l/pwn\""},
    {"symlink-rel-then-write",
     "none",
     {{D, "a/"}, {SYM, "a/l", "../../../../../../../../outside"}, {F, "a/l/keep", "pwned"}},
     3,
     FAILS,
     ENOENT,
     "entry \"a/l/keep\""},
    {"symlink-to-canary-then-file",
     "none",
     {{SYM, "c", "@/canary"}, {F, "c", "replaced, not written through"}},
     2,
     CONTAINED},
    {"symlink-root-then-write", "zstd", {{SYM, "r", "/"}, {F, "r@/canary", "pwned"}}, 2, CONTAINED},
    {"hardlink-dotdot", "none", {{HARD, "h", "../canary"}}, 1, FAILS, EPERM, "hardlink target"},
    {"hardlink-absolute", "none", {{HARD, "h", "@/canary"}}, 1, FAILS, ENOENT, "hardlink target"},
    {"hardlink-through-symlink",
     "none",
     {{SYM, "up", "../../../.."}, {HARD, "h", "up@/canary"}},
     2,
     FAILS,
     ENOENT,
     "hardlink target"},
    {"hardlink-to-directory",
     "none",
     {{D, "d/"}, {HARD, "h", "d"}},
     2,
     FAILS,
     EPERM,
     "is a directory"},
    {"huge-file-size", "none", {{BIGF, "big"}}, 1, FAILS, EFBIG, "file size"},
    {"size-beyond-data", "none", {{F, "f", big_data}}, 1, FAILS, 0, "entry \"f\"", 2000},
    {"block-device", "none", {{BLK, "dev/sda", NULL, 8, 0}}, 1, FAILS, EPERM, "block device 8:0"},
    {"char-device-mem",
     "none",
     {{CHR, "dev/mem", NULL, 1, 1}},
     1,
     FAILS,
     EPERM,
     "character device 1:1"},
    {"deep-nesting", "none", {{F, deep_path, "deep"}}, 1, FAILS, ELOOP, "deeper than"},
    {"long-path", "none", {{F, long_path, "long"}}, 1, FAILS, ENAMETOOLONG, "longer than"},
    {"long-name", "none", {{F, long_name, "long"}}, 1, FAILS, ENAMETOOLONG, NULL},
    {"duplicate-entries-swap-to-symlink",
     "none",
     {{D, "x/"}, {F, "x", "file now"}, {SYM, "x", "@/outside"}, {F, "x/keep", "pwned"}},
     4,
     FAILS,
     ENOENT,
     "entry \"x/keep\""},
    {"duplicate-entries-contained",
     "gzip",
     {{F, "dup", "one"}, {F, "dup", "two"}, {D, "dup/"}, {F, "dup/f", "three"}},
     4,
     CONTAINED},
    {"truncated-gzip", "gzip", {{F, "f", "some content that compresses"}}, 1, FAILS, 0, NULL, 30},
    {"truncated-zstd", "zstd", {{F, "f", "some content that compresses"}}, 1, FAILS, 0, NULL, 20},
    {"truncated-tar-header", "none", {{F, "f", "x"}}, 1, FAILS, 0, NULL, 300},
    {"whiteout-dotdot", "none", {{F, "../.wh.canary"}}, 1, FAILS, EPERM, "climbs out"},
    {"whiteout-of-parent", "none", {{F, "a/.wh.."}}, 1, FAILS, EINVAL, "malformed whiteout"},
    {"whiteout-through-symlink",
     "none",
     {{SYM, "o", "@/outside"}, {F, "o/.wh.keep"}},
     2,
     CONTAINED},
    {"opaque-through-symlink",
     "none",
     {{SYM, "o", "../../outside"}, {F, "o/.wh..wh..opq"}},
     2,
     CONTAINED},
    {"symlink-loop",
     "none",
     {{SYM, "a", "b"}, {SYM, "b", "a"}, {F, "a/x", "x"}},
     3,
     FAILS,
     ELOOP,
     NULL},
    {"too-many-xattrs", "none", {{F, "f", "x", .n_xattrs = 200}}, 1, FAILS, E2BIG, "extended"},
    {"xattr-too-large",
     "none",
     {{F, "f", "x", .xattr_bytes = 70000}},
     1,
     FAILS,
     E2BIG,
     "larger than"},
    {"owner-out-of-range",
     "none",
     {{F, "f", "x", .uid = 0x100000000LL}},
     1,
     FAILS,
     ERANGE,
     "owner"},
};

static char *expand(const char *s, char *buf, size_t size)
{
	const char *at = s ? strchr(s, '@') : NULL;

	if (!at)
		return (char *)s;
	snprintf(buf, size, "%.*s%s%s", (int)(at - s), s, top, at + 1);
	return buf;
}

static void entry_body(struct archive_entry *e, const struct ent *en, size_t *ret_len)
{
	char target[600];

	*ret_len = 0;
	switch (en->kind) {
	case F:
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_perm(e, 0644);
		*ret_len = en->data ? strlen(en->data) : 0;
		archive_entry_set_size(e, (la_int64_t)*ret_len);
		break;
	case BIGF:
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_perm(e, 0644);
		archive_entry_set_size(e, 2LL << 40);
		break;
	case D:
		archive_entry_set_filetype(e, AE_IFDIR);
		archive_entry_set_perm(e, 0755);
		break;
	case SYM:
		archive_entry_set_filetype(e, AE_IFLNK);
		archive_entry_set_perm(e, 0777);
		archive_entry_copy_symlink(e, expand(en->data, target, sizeof(target)));
		break;
	case HARD:
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_perm(e, 0644);
		archive_entry_copy_hardlink(e, expand(en->data, target, sizeof(target)));
		break;
	case CHR:
	case BLK:
		archive_entry_set_filetype(e, en->kind == CHR ? AE_IFCHR : AE_IFBLK);
		archive_entry_set_perm(e, 0600);
		archive_entry_set_rdevmajor(e, en->major);
		archive_entry_set_rdevminor(e, en->minor);
		break;
	case FIFO:
		archive_entry_set_filetype(e, AE_IFIFO);
		archive_entry_set_perm(e, 0600);
		break;
	}
}

static void entry_xattrs(struct archive_entry *e, const struct ent *en)
{
	static char big[80000];

	for (int i = 0; i < en->n_xattrs; i++) {
		char name[32];
		snprintf(name, sizeof(name), "user.x%d", i);
		archive_entry_xattr_add_entry(e, name, "v", 1);
	}
	if (en->xattr_bytes) {
		memset(big, 'b', sizeof(big));
		archive_entry_xattr_add_entry(e, "user.big", big, en->xattr_bytes);
	}
}

/* The output of the tar writer, refused beyond a limit: an entry that declares 2 TiB gets its
 * header out and no more (closing the archive would pad it with zeros up to its size). */
struct sink {
	int fd;
	size_t left;
};

static la_ssize_t sink_write(struct archive *a, void *data, const void *buf, size_t n)
{
	struct sink *s = data;

	if (n > s->left) {
		archive_set_error(a, EFBIG, "enough");
		return -1;
	}
	s->left -= n;
	return write(s->fd, buf, n);
}

static void write_layer(const struct hostile *h, const char *file)
{
	struct archive *a = archive_write_new();
	bool big = h->ents[h->n - 1].kind == BIGF;
	struct sink out = {.fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644),
			   .left = big ? 1u << 20 : SIZE_MAX};

	ck_assert_int_ge(out.fd, 0);
	ck_assert_int_eq(archive_write_set_format_pax(a), ARCHIVE_OK);
	if (strcmp(h->filter, "gzip") == 0)
		ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
	else if (strcmp(h->filter, "zstd") == 0)
		ck_assert_int_eq(archive_write_add_filter_zstd(a), ARCHIVE_OK);
	/* No zero padding after the compressed stream (zstd would read it as a bad frame). */
	ck_assert_int_eq(archive_write_set_bytes_in_last_block(a, 1), ARCHIVE_OK);
	ck_assert_int_eq(archive_write_open2(a, &out, NULL, sink_write, NULL, NULL), ARCHIVE_OK);
	for (size_t i = 0; i < h->n; i++) {
		const struct ent *en = &h->ents[i];
		struct archive_entry *e = archive_entry_new();
		char path[4400];
		size_t len;

		archive_entry_copy_pathname(e, expand(en->path, path, sizeof(path)));
		archive_entry_set_uid(e, en->uid);
		archive_entry_set_gid(e, 0);
		archive_entry_set_mtime(e, 1000000, 0);
		entry_body(e, en, &len);
		entry_xattrs(e, en);
		int r = archive_write_header(a, e);
		ck_assert_msg(r == ARCHIVE_OK || r == ARCHIVE_WARN, "%s: %s", h->name,
			      archive_error_string(a));
		if (len)
			ck_assert_int_eq(archive_write_data(a, en->data, len), (la_ssize_t)len);
		archive_entry_free(e);
	}
	ck_assert_int_eq(archive_write_close(a), big ? ARCHIVE_FATAL : ARCHIVE_OK);
	archive_write_free(a);
	close(out.fd);
}

static void cut_blob(const char *file, long cut)
{
	struct stat st;

	ck_assert_int_eq(stat(file, &st), 0);
	off_t keep = cut > 0 ? cut : st.st_size + cut;
	ck_assert_msg(keep > 0 && keep < st.st_size, "cut %ld of %lld bytes", cut,
		      (long long)st.st_size);
	ck_assert_int_eq(truncate(file, keep), 0);
}

static void write_file(const char *path, const char *content)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
}

static char *read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return NULL;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return buf;
}

/* Names directly in dir, sorted, joined with ','. */
static void listing(const char *dir, char *out, size_t size)
{
	struct dirent **names = NULL;
	int n = scandir(dir, &names, NULL, alphasort);
	size_t len = 0;

	out[0] = '\0';
	for (int i = 0; i < n; i++) {
		if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, ".."))
			len += (size_t)snprintf(out + len, len < size ? size - len : 0, "%s,",
						names[i]->d_name);
		free(names[i]);
	}
	free(names);
}

/* base is made and removed by the parent process, so a failed case leaves nothing behind; each
 * case works in its own top below it. */
static void setup_base(void)
{
	snprintf(base, sizeof(base), "/tmp/imc-test-layers-XXXXXX");
	if (!mkdtemp(base))
		abort();
}

static void teardown_base(void)
{
	imc_error err = {0};
	int dfd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd < 0 || imc_rm_rf_at(dfd, strrchr(base, '/') + 1, &err) < 0)
		fprintf(stderr, "cannot remove %s: %s\n", base, err.msg);
	if (dfd >= 0)
		close(dfd);
}

static void setup(void)
{
	char p[600];

	snprintf(top, sizeof(top), "%s/t-XXXXXX", base);
	ck_assert_ptr_nonnull(mkdtemp(top));
	snprintf(p, sizeof(p), "%s/root", top);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/outside", top);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/outside/keep", top);
	write_file(p, "keep\n");
	snprintf(p, sizeof(p), "%s/canary", top);
	write_file(p, CANARY);
	/* 600 components of "d/", a path of 5000 bytes and a 300-byte name */
	for (size_t i = 0; i < 600; i++)
		memcpy(deep_path + 2 * i, "d/", 2);
	memcpy(deep_path + 1200, "f", 2);
	memset(long_path, 'p', sizeof(long_path) - 1);
	for (size_t i = 200; i < sizeof(long_path) - 1; i += 200)
		long_path[i] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	memset(long_name, 'n', 300);
	long_name[300] = '\0';
	memset(big_data, 'z', sizeof(big_data) - 1);
}

START_TEST(hostile_layer)
{
	const struct hostile *h = &cases[_i];
	char layer[600], p[600], buf[256], list[4096];
	imc_error err = {0};
	int rootfd, fd, r;

	snprintf(layer, sizeof(layer), "%s/layer", top);
	write_layer(h, layer);
	if (h->cut)
		cut_blob(layer, h->cut);
	snprintf(p, sizeof(p), "%s/root", top);
	rootfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = open(layer, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(rootfd, 0);
	ck_assert_int_ge(fd, 0);
	r = builder_layer_apply(rootfd, fd, "layer hostile", &err);
	close(fd);
	close(rootfd);

	if (h->want == FAILS) {
		ck_assert_msg(r < 0, "%s: applied without an error", h->name);
		ck_assert_int_eq(r, err.code);
		if (h->want_errno)
			ck_assert_msg(r == -h->want_errno, "%s: %s (%d), want %s", h->name, err.msg,
				      r, strerror(h->want_errno));
		ck_assert_msg(strncmp(err.msg, "layer hostile: ", 15) == 0, "%s: %s", h->name,
			      err.msg);
		if (h->want_msg)
			ck_assert_msg(strstr(err.msg, h->want_msg), "%s: \"%s\" lacks \"%s\"",
				      h->name, err.msg, h->want_msg);
	} else {
		ck_assert_msg(r == 0, "%s: %s", h->name, err.msg);
	}
	/* Nothing outside the root changed. */
	snprintf(p, sizeof(p), "%s/canary", top);
	ck_assert_msg(read_small(p, buf, sizeof(buf)), "%s: canary gone", h->name);
	ck_assert_str_eq(buf, CANARY);
	snprintf(p, sizeof(p), "%s/outside/keep", top);
	ck_assert_msg(read_small(p, buf, sizeof(buf)), "%s: outside/keep gone", h->name);
	ck_assert_str_eq(buf, "keep\n");
	snprintf(p, sizeof(p), "%s/outside", top);
	listing(p, list, sizeof(list));
	ck_assert_str_eq(list, "keep,");
	listing(top, list, sizeof(list));
	ck_assert_str_eq(list, "canary,layer,outside,root,");
	listing("/", list, sizeof(list));
	ck_assert_msg(!strstr(list, "pwn"), "%s: / has %s", h->name, list);
}
END_TEST

/* What the contained cases did inside the root (beyond not escaping it). */
START_TEST(contained_results)
{
	char p[1200], buf[256];
	struct stat st;

	for (size_t i = 0; i < IMC_ARRAY_SIZE(cases); i++) {
		const struct hostile *h = &cases[i];
		char layer[600];
		imc_error err = {0};

		if (h->want != CONTAINED)
			continue;
		snprintf(layer, sizeof(layer), "%s/layer", top);
		write_layer(h, layer);
		snprintf(p, sizeof(p), "%s/root", top);
		int rootfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		int fd = open(layer, O_RDONLY | O_CLOEXEC);
		ck_assert_msg(builder_layer_apply(rootfd, fd, "layer", &err) == 0, "%s: %s",
			      h->name, err.msg);
		close(fd);
		close(rootfd);
	}
	/* absolute: the path was taken as relative to the root */
	snprintf(p, sizeof(p), "%s/root%s/canary", top, top);
	ck_assert_str_eq(read_small(p, buf, sizeof(buf)), "pwned");
	/* the symlink to the canary was replaced by a file */
	snprintf(p, sizeof(p), "%s/root/c", top);
	ck_assert_int_eq(lstat(p, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_str_eq(read_small(p, buf, sizeof(buf)), "replaced, not written through");
	/* duplicates: the last entry wins */
	snprintf(p, sizeof(p), "%s/root/dup/f", top);
	ck_assert_str_eq(read_small(p, buf, sizeof(buf)), "three");
	/* the whiteout and the opaque marker behind symlinks touched nothing */
	snprintf(p, sizeof(p), "%s/root/o", top);
	ck_assert_int_eq(lstat(p, &st), 0);
	ck_assert(S_ISLNK(st.st_mode));
	snprintf(p, sizeof(p), "%s/outside/keep", top);
	ck_assert_str_eq(read_small(p, buf, sizeof(buf)), "keep\n");
	snprintf(p, sizeof(p), "%s/canary", top);
	ck_assert_str_eq(read_small(p, buf, sizeof(buf)), CANARY);
}
END_TEST

static Suite *layers_suite(void)
{
	Suite *s = suite_create("hostile layers");
	TCase *tc = tcase_create("corpus");

	tcase_add_unchecked_fixture(tc, setup_base, teardown_base);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, hostile_layer, 0, IMC_ARRAY_SIZE(cases));
	tcase_add_test(tc, contained_results);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return unit_run(layers_suite());
}
