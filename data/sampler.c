/* sampler.c — docs/design.md's sampling contract: one permutation of [0, n) per
 * epoch, identical on every rank and machine; rank r takes every W-th sample
 * of each global batch; the last partial global batch is dropped so every
 * rank runs the same number of steps. Evaluation instead splits [0, n) into
 * contiguous per-rank ranges that cover every sample once.
 *
 * The permutation is a Fisher-Yates shuffle driven by a counter-based
 * generator (splitmix64 of a key and a draw counter), so it depends only on
 * (seed, epoch, n) — never on libc, thread or process state.
 */
#include "data.h"

#include <stdlib.h>

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, bound) without modulo bias: draws below 2^64 mod bound are
 * rejected and the counter moves on, which stays deterministic. */
static uint64_t draw_below(uint64_t key, uint64_t *counter, uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = splitmix64(key ^ splitmix64((*counter)++));
        if (r >= threshold) return r % bound;
    }
}

void dv_sampler_permutation(int64_t n, uint64_t seed, int64_t epoch, int64_t *perm) {
    uint64_t key = splitmix64(splitmix64(seed) + (uint64_t)epoch);
    uint64_t counter = 0;
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)draw_below(key, &counter, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

int64_t dv_sampler_steps(const dv_sampler *s) {
    if (s->global_batch <= 0) return 0;
    return s->n / s->global_batch;
}

void dv_sampler_indices(const dv_sampler *s, int64_t epoch, int64_t step, int64_t *cache,
                        int64_t *cache_epoch, int64_t *idx, int64_t *global_pos) {
    int per_rank = s->global_batch / s->world;
    int64_t base = step * s->global_batch + s->rank;
    const int64_t *perm = NULL;
    int64_t *tmp = NULL;
    if (s->shuffle == DV_ORDER_SHUFFLE) {
        if (cache && cache_epoch) {
            if (*cache_epoch != epoch) {
                dv_sampler_permutation(s->n, s->seed, epoch, cache);
                *cache_epoch = epoch;
            }
            perm = cache;
        } else {
            tmp = malloc(sizeof(int64_t) * (size_t)s->n);
            if (tmp) {
                dv_sampler_permutation(s->n, s->seed, epoch, tmp);
                perm = tmp;
            }
        }
    }
    for (int k = 0; k < per_rank; k++) {
        int64_t p = base + (int64_t)k * s->world;
        if (global_pos) global_pos[k] = p;
        if (s->shuffle == DV_ORDER_IDENTITY)
            idx[k] = p;
        else if (s->shuffle == DV_ORDER_STREAMS)
            idx[k] = (p % s->global_batch) * (s->n / s->global_batch) + step;
        else if (perm)
            idx[k] = perm[p];
        else
            idx[k] = -1; /* out of memory: dv_split_read rejects the index */
    }
    free(tmp);
}

void dv_eval_shard(int64_t n, int world, int rank, int64_t *begin, int64_t *end) {
    int64_t q = n / world, rem = n % world;
    *begin = (int64_t)rank * q + (rank < rem ? rank : rem);
    *end = *begin + q + (rank < rem ? 1 : 0);
}
