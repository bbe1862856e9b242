/* test_mpi_check.c — the MPI tests' non-jumping checks and their agreement
 * across ranks; see test_mpi_check.h. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>

#include <mpi.h>

#include "test_mpi_check.h"

void tcheck_expect(tcheck *t, int ok, const char *what, const char *file, int line) {
    if (ok) return;
    t->bad++;
    fprintf(stderr, "%s %s:%d: expected %s\n", dv_error_origin(), file, line, what);
}

void tcheck_expect_ok(tcheck *t, dv_status s, const char *err, const char *what, const char *file,
                      int line) {
    if (s == DV_OK) return;
    t->bad++;
    fprintf(stderr, "%s %s:%d: %s failed: %s\n", dv_error_origin(), file, line, what, err);
}

/* Uses MPI directly rather than dv_comm_first_failed, which is under test. */
void tcheck_finish(tcheck *t) {
    int bad = t->bad, total = 0;
    MPI_Allreduce(&bad, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    assert_int_equal(total, 0);
}
