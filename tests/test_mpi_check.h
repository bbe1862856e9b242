/* test_mpi_check.h — checks that do not jump, for the MPI tests
 * (test_comm.c, test_comm_cuda.c): EXPECT and EXPECT_OK count failures in a
 * tcheck and print them, and tcheck_finish makes the ranks agree on the
 * outcome at the end of a test, so a check failing on one rank fails the
 * test on all of them together instead of leaving the others blocked in a
 * collective.
 */
#ifndef DV_TEST_MPI_CHECK_H
#define DV_TEST_MPI_CHECK_H

#include "comm.h"

typedef struct tcheck {
    int bad;
} tcheck;

#define EXPECT(t, cond) tcheck_expect((t), (cond), #cond, __FILE__, __LINE__)
#define EXPECT_OK(t, status, err)                                                                  \
    tcheck_expect_ok((t), (status), (err), #status, __FILE__, __LINE__)

void tcheck_expect(tcheck *t, int ok, const char *what, const char *file, int line);
void tcheck_expect_ok(tcheck *t, dv_status s, const char *err, const char *what, const char *file,
                      int line);
/* Fails the test (cmocka) on every rank when any rank's t has a failure;
 * a collective over MPI_COMM_WORLD, so every rank must call it. */
void tcheck_finish(tcheck *t);

#endif
