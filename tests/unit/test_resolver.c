/* match=best's image resolver (api/resolver.c) against real loopback sockets: a registry that
 * accepts connections and never answers (a listening socket nobody accepts on: the kernel
 * completes the handshake, the request sits unread) costs a lookup nothing, and its resolve ends
 * at the deadline as -ETIMEDOUT; a port where nothing listens fails at once as -ENOENT; stopping
 * the resolver ends a resolve in flight. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../../api/api.h"
#include "unit.h"

#define WAIT_MAX_NS (60ULL * 1000000000ULL) /* a failure criterion, not a speed assertion */

/* A listening TCP socket on 127.0.0.1 that is never accepted on; ret_port gets its port. */
static int stalled_listener(unsigned *ret_port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 16), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*ret_port = ntohs(sa.sin_port);
	return fd;
}

/* A port on 127.0.0.1 where nothing listens (bound, then closed). */
static unsigned closed_port(void)
{
	unsigned port;
	int fd = stalled_listener(&port);

	close(fd);
	return port;
}

static struct api_resolver *start(unsigned timeout_ms)
{
	struct api_resolver_config cfg = {.timeout_ms = timeout_ms};
	struct api_resolver *r = NULL;
	imc_error err = {0};

	ck_assert_msg(api_resolver_start(&cfg, &r, &err) == 0, "%s", err.msg);
	return r;
}

static void sleep_ms(long ms)
{
	nanosleep(&(struct timespec){.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L}, NULL);
}

/* Lookups of ref until they stop answering -EINPROGRESS; the last answer. */
static int settle(struct api_resolver *r, const char *ref, imc_error *err)
{
	uint64_t give_up = imc_monotonic_ns() + WAIT_MAX_NS;
	json_t *layers = NULL;
	int rc;

	while ((rc = api_resolver_layers(r, ref, "linux/amd64", &layers, err)) == -EINPROGRESS &&
	       imc_monotonic_ns() < give_up)
		sleep_ms(50);
	json_decref(layers);
	return rc;
}

START_TEST(stalled_registry_times_out)
{
	unsigned port;
	int fd = stalled_listener(&port);
	struct api_resolver *r = start(1000);
	json_t *layers = NULL;
	imc_error err = {0};
	char ref[64];
	int rc;

	snprintf(ref, sizeof(ref), "127.0.0.1:%u/stall/a:1", port);
	rc = api_resolver_layers(r, ref, "linux/amd64", &layers, &err);
	ck_assert_msg(rc == -EINPROGRESS, "first lookup: %d %s", rc, err.msg);
	ck_assert_ptr_null(layers);
	ck_assert_ptr_nonnull(strstr(err.msg, "being resolved"));
	rc = settle(r, ref, &err);
	ck_assert_msg(rc == -ETIMEDOUT, "settled as %d: %s", rc, err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, "did not answer within 1 s"));
	/* Kept: the next lookup answers the same at once, without asking the registry again. */
	rc = api_resolver_layers(r, ref, "linux/amd64", &layers, &err);
	ck_assert_int_eq(rc, -ETIMEDOUT);
	api_resolver_stop(r);
	close(fd);
}
END_TEST

START_TEST(refused_port_is_not_found)
{
	struct api_resolver *r = start(30000);
	imc_error err = {0};
	char ref[64];
	int rc;

	snprintf(ref, sizeof(ref), "127.0.0.1:%u/none/a:1", closed_port());
	rc = settle(r, ref, &err);
	ck_assert_msg(rc == -ENOENT, "settled as %d: %s", rc, err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, "none/a:1"));
	api_resolver_stop(r);
}
END_TEST

START_TEST(stop_ends_a_resolve_in_flight)
{
	unsigned port;
	int fd = stalled_listener(&port);
	struct api_resolver *r = start(600000); /* a deadline the test never reaches */
	json_t *layers = NULL;
	imc_error err = {0};
	char ref[64];

	snprintf(ref, sizeof(ref), "127.0.0.1:%u/stall/b:1", port);
	ck_assert_int_eq(api_resolver_layers(r, ref, "linux/amd64", &layers, &err), -EINPROGRESS);
	sleep_ms(300);	      /* let a resolver thread take it and connect */
	api_resolver_stop(r); /* joins the thread: returns only once the resolve has ended */
	close(fd);
}
END_TEST

static Suite *resolver_suite(void)
{
	Suite *s = suite_create("resolver");
	TCase *t = tcase_create("resolver");

	tcase_set_timeout(t, 120);
	tcase_add_test(t, stalled_registry_times_out);
	tcase_add_test(t, refused_port_is_not_found);
	tcase_add_test(t, stop_ends_a_resolve_in_flight);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	int rc = unit_run(resolver_suite());
	curl_global_cleanup();
	return rc;
}
