/* clock.c — seconds on a monotonic clock, for step times, ETAs and
 * timeouts. */
#include "base.h"

#include <time.h>

double dv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
