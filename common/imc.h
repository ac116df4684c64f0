/* imcache common helpers: errors, logging, sha256, atomic JSON files, safe paths. */
#ifndef IMC_H
#define IMC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "cleanup.h"

/* Static helpers that unit tests need to reach. */
#ifdef IMC_TESTING
#define TESTABLE
#else
#define TESTABLE static
#endif

#define IMC_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- errors ------------------------------------------------------------------------------
 * Functions return 0 or a negative errno and describe the failure in an imc_error.  Callers
 * add context with imc_err_wrap(); only main() and request handlers print errors. */
#define IMC_ERR_MSG 1024
typedef struct imc_error {
	int code; /* negative errno, 0 when clear */
	char msg[IMC_ERR_MSG];
} imc_error;

/* Set err (if not NULL) to -abs(errnum) and the formatted message; returns -abs(errnum). */
int imc_err(imc_error *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* As imc_err, appending ": strerror(errnum)". */
int imc_err_sys(imc_error *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix the message already in err with context ("ctx: old"); returns err->code. */
int imc_err_wrap(imc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imc_err_clear(imc_error *err);
/* Errno-only leaf helpers.  A few thin wrappers of one system call (imc_openat_in_root,
 * imc_write_all; dist_pread_full and dist_pwrite_full in dist/) and imc_buf_append (-ENOMEM
 * only) take no imc_error: they return a bare negative errno and set no message, as the call
 * they wrap would.  Their callers branch on the errno (-ENOENT: create it and look again) and
 * name the thing with imc_err_sys(err, -r, ...); they are never returned upward unwrapped.
 * Every other function that can fail takes an imc_error. */

/* ---- logging (top level only) ------------------------------------------------------------ */
enum imc_log_level { IMC_LOG_ERROR, IMC_LOG_WARN, IMC_LOG_INFO, IMC_LOG_DEBUG };
void imc_log_set_level(enum imc_log_level level);
void imc_log(enum imc_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define imc_error_log(...) imc_log(IMC_LOG_ERROR, __VA_ARGS__)
#define imc_warn(...)	   imc_log(IMC_LOG_WARN, __VA_ARGS__)
#define imc_info(...)	   imc_log(IMC_LOG_INFO, __VA_ARGS__)
#define imc_debug(...)	   imc_log(IMC_LOG_DEBUG, __VA_ARGS__)

/* ---- text from outside -------------------------------------------------------------------- */
/* The length (1-4) of the UTF-8 character at s (n bytes left) and its code point in *ret_cp
 * (may be NULL); 0 when s does not start with one (overlong forms and surrogates are not). */
size_t imc_utf8_char(const char *s, size_t n, uint32_t *ret_cp);
/* Are the n bytes at s UTF-8 (NUL bytes are, as in JSON)? */
bool imc_utf8_valid(const char *s, size_t n);
/* The n bytes at s as one printable line in out (size bytes, NUL-terminated): control bytes as
 * \n, \r, \t or \xNN, a backslash as \\, bytes that are not UTF-8 as \xNN, C1 controls and
 * U+2028/U+2029 as \uNNNN.  Returns how many bytes of s fit (whole characters only). */
size_t imc_log_escape(const char *s, size_t n, char *out, size_t size);

/* ---- sha256 (openssl EVP) ----------------------------------------------------------------- */
#define IMC_SHA256_HEX_LEN 64
typedef struct imc_sha256 {
	void *ctx; /* EVP_MD_CTX */
} imc_sha256;
int imc_sha256_init(imc_sha256 *h, imc_error *err);
void imc_sha256_update(imc_sha256 *h, const void *data, size_t len);
/* Writes 64 lowercase hex digits + NUL to out and frees the context. */
void imc_sha256_final_hex(imc_sha256 *h, char out[IMC_SHA256_HEX_LEN + 1]);
void imc_sha256_free(imc_sha256 *h);
int imc_sha256_hex(const void *data, size_t len, char out[IMC_SHA256_HEX_LEN + 1], imc_error *err);
/* Validate "sha256:<64 lowercase hex>"; on success copy the hex part to ret_hex. */
int imc_digest_parse(const char *digest, char ret_hex[IMC_SHA256_HEX_LEN + 1], imc_error *err);

/* ---- JSON (jansson) ----------------------------------------------------------------------- */
/* Write j to dirfd/name atomically: tmp file, fsync, rename, fsync dir. */
int imc_json_write_atomic(int dirfd, const char *name, json_t *j, imc_error *err);
/* The same without the fsyncs: atomic against a crash of the process, not of the machine (for
 * state that a reboot makes moot anyway, such as attaches). */
int imc_json_write_replace(int dirfd, const char *name, json_t *j, imc_error *err);
/* Read and parse dirfd/name (at most max_size bytes). */
int imc_json_read_file(int dirfd, const char *name, size_t max_size, json_t **ret, imc_error *err);
/* Parse a buffer that must hold one JSON object. */
int imc_json_parse_object(const char *buf, size_t len, json_t **ret, imc_error *err);
/* Fail naming the first key of obj not in allowed (NULL-terminated). ctx prefixes the name. */
int imc_json_check_fields(json_t *obj, const char *const *allowed, const char *ctx, imc_error *err);
/* Appends a formatted repair message to the JSON array REPAIRS (nothing when REPAIRS is NULL). */
void imc_repair_report(json_t *repairs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Typed field access.  A missing optional field leaves *ret untouched and returns 0; a missing
 * required field or a wrong type fails naming "ctx.key". */
int imc_json_get_string(json_t *obj, const char *key, bool required, size_t max_len,
			const char *ctx, const char **ret, imc_error *err);
int imc_json_get_int(json_t *obj, const char *key, bool required, int64_t min, int64_t max,
		     const char *ctx, int64_t *ret, imc_error *err);
int imc_json_get_bool(json_t *obj, const char *key, bool required, const char *ctx, bool *ret,
		      imc_error *err);
int imc_json_get_array(json_t *obj, const char *key, bool required, size_t max_items,
		       const char *ctx, json_t **ret, imc_error *err);
int imc_json_get_object(json_t *obj, const char *key, bool required, const char *ctx, json_t **ret,
			imc_error *err);

/* ---- paths and files ---------------------------------------------------------------------- */
/* Is s a safe single path component for identifiers we create ([A-Za-z0-9._-], 1..max, not
 * "." or ".."). */
bool imc_name_valid(const char *s, size_t max_len);
/* A cache's id as imcd makes them: IMC_CACHE_ID_PREFIX + 16 lowercase hex digits.  Anything else
 * in a store (a per-image base snapshot "img-…", a volume being built) is no cache of anyone's. */
#define IMC_CACHE_ID_PREFIX "imc-"
bool imc_cache_id_valid(const char *id);
/* malloc'ed "a/b" (NULL on OOM). */
char *imc_path_join(const char *a, const char *b);
int imc_mkdir_p(const char *path, mode_t mode, imc_error *err);
/* openat2(rootfd, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): path can never leave rootfd.
 * Returns an fd or -errno (an errno-only leaf helper, see above: the caller names the path). */
int imc_openat_in_root(int rootfd, const char *path, int flags, mode_t mode);
/* openat2(dirfd, path, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, and RESOLVE_BENEATH when
 * beneath): no component of path may be a symlink (-ELOOP), nor, beneath, lead out of dirfd
 * (-EXDEV).  Returns an fd or -errno. */
int imc_open_no_symlinks(int dirfd, const char *path, bool beneath, int flags);
/* Remove dirfd/name and everything below it without following symlinks; ENOENT is success.
 * name is a single component ("." and ".." refused), or an absolute path. */
int imc_rm_rf_at(int dirfd, const char *name, imc_error *err);
/* Read a whole file (at most max bytes) into a NUL-terminated malloc'ed buffer. */
int imc_read_file(const char *path, size_t max, char **ret, size_t *ret_len, imc_error *err);
/* Write all of buf to fd, retrying on EINTR/short writes; returns 0 or -errno (an errno-only leaf
 * helper, see above: the caller names the file). */
int imc_write_all(int fd, const void *buf, size_t len);

/* ---- leftovers of crashed writers (leftover.c) -------------------------------------------
 * A file written under a temporary name is held (an exclusive flock on its descriptor) for as
 * long as its writer lives; one nobody holds is a crash's leftover. */
/* Hold the file open on fd: 0, or -errno. */
int imc_hold_file(int fd);
/* Remove dirfd/name (a regular file) unless a live process holds it: 1 removed (*ret_bytes, when
 * not NULL, grows by what it had allocated), 0 held or gone already, or -errno. */
int imc_remove_unheld_at(int dirfd, const char *name, uint64_t *ret_bytes);
/* Test builds only: IMC_STOP_AT=name stops the process here (SIGSTOP), so a test can SIGKILL
 * it at exactly this point.  Nothing in release builds. */
void imc_stop_point(const char *name);

/* ---- growable buffers (buf.c) ------------------------------------------------------------- */
#include "buf.h"

/* ---- ids (id.c) and time (time.c) ---------------------------------------------------------- */
/* "<prefix>-" + 16 random lowercase hex digits, in a buffer of at least 64 bytes. */
int imc_random_id(const char *prefix, char *buf, size_t size, imc_error *err);
/* RFC 3339 UTC ("2026-11-23T13:11:18Z") of a unix time, in a buffer of at least 32 bytes. */
void imc_time_rfc3339(int64_t t, char *buf, size_t size);
int64_t imc_now(void);		 /* seconds since the epoch */
uint64_t imc_monotonic_ns(void); /* CLOCK_MONOTONIC in ns */
/* ns (of imc_monotonic_ns) as a timespec, for the timed waits on CLOCK_MONOTONIC conditions. */
struct timespec imc_timespec_of_ns(uint64_t ns);

#endif
