/* Shared by the Check unit test programs. */
#ifndef IMC_TESTS_UNIT_H
#define IMC_TESTS_UNIT_H

#include <check.h>

/* Run every test of s; the exit status of the program. */
static inline int unit_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

#endif
