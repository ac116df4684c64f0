/* Scope-bound cleanup attributes: every early return frees what the scope owns.  libc and
 * jansson only: a library's cleanups live with the room that uses it (net/curl_cleanup.h,
 * builder/layer.c, store/thin.c). */
#ifndef IMC_CLEANUP_H
#define IMC_CLEANUP_H

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <jansson.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void imc_freep(void *p)
{
	free(*(void **)p);
}

static inline void imc_closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

static inline void imc_fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

static inline void imc_closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

static inline void imc_json_decrefp(json_t **j)
{
	json_decref(*j);
}

#define _cleanup_free_	 _cleanup_(imc_freep)
#define _cleanup_close_	 _cleanup_(imc_closep)
#define _cleanup_fclose_ _cleanup_(imc_fclosep)
#define _cleanup_dir_	 _cleanup_(imc_closedirp)
#define _cleanup_json_	 _cleanup_(imc_json_decrefp)

/* Hand ownership out of a cleanup-managed variable. */
#define steal_pointer(pp)                                                                          \
	({                                                                                         \
		__typeof__(*(pp)) _p = *(pp);                                                      \
		*(pp) = NULL;                                                                      \
		_p;                                                                                \
	})

static inline int steal_fd(int *fd)
{
	int r = *fd;
	*fd = -1;
	return r;
}

#endif
