/* comm.h — the world of a Dive job: MPI start-up, who this rank is, the
 * collectives on flat buffers that data parallelism needs, and how a job
 * stops when something goes wrong.
 *
 * Works on plain pointers and byte/element counts: comm never sees a tensor.
 * Buffers are host memory unless a stream is given. The asynchronous
 * all-reduce takes an opaque `stream` (a cudaStream_t; NULL for host
 * buffers) so the GPU backend can start one bucket per group of layers
 * while backward goes on; the device side is set up by
 * dv_comm_device_init (see "device buffers" below). No CUDA type appears
 * here: streams are void *.
 *
 * Errors: every function returns dv_status; on failure a message that
 * already names the rank, host and call is in `err` (DV_ERR_LEN bytes).
 * The world communicator uses MPI_ERRORS_RETURN, so MPI failures come
 * back as statuses instead of killing the job silently.
 *
 * The watchdog: every blocking wait of comm (the collectives below, the
 * wait of an asynchronous all-reduce, the device side's host waits) polls,
 * spinning briefly, then yielding the core and sleeping (up to 1 ms a poll),
 * so a long wait costs little CPU. A wait that makes no progress for the
 * timeout (DIVE_COMM_TIMEOUT, or dv_comm_set_timeout) asks every other rank
 * whether it is there (2 s at most), prints one line naming the collective,
 * the step and the ranks that did not arrive, and ends the job
 * (MPI_Abort); so does every rank that is waiting in comm when it is asked.
 * See docs/reliability.md.
 */
#ifndef DV_COMM_H
#define DV_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dv_comm dv_comm;
typedef struct dv_comm_request dv_comm_request;

typedef enum dv_reduce { DV_REDUCE_SUM = 0, DV_REDUCE_MIN, DV_REDUCE_MAX } dv_reduce;

/* MPI_Init (once per process), world rank/size, and the node-local rank
 * from MPI_Comm_split_type(SHARED). Owned by the caller: dv_comm_free
 * finalizes MPI when this call initialized it (a host program that already
 * called MPI_Init keeps MPI). Reads DIVE_COMM_TIMEOUT (seconds, default
 * 600, 0 waits forever), DIVE_COMM_ALGO and DIVE_COMM_FAKE_NODE_SIZE; a bad
 * value on any rank fails every rank, with a message naming the variable.
 * Gathers every rank's host name (for the watchdog's message). */
dv_status dv_comm_init(dv_comm **out, int *argc, char ***argv, char *err);
void dv_comm_free(dv_comm *c);

int dv_comm_rank(const dv_comm *c);
int dv_comm_size(const dv_comm *c);
int dv_comm_local_rank(const dv_comm *c);
int dv_comm_local_size(const dv_comm *c);
const char *dv_comm_host(const dv_comm *c); /* borrowed */

/* The watchdog's timeout: seconds a wait may make no progress before the
 * job ends (see the top of this file); 0 waits forever. dv_comm_init sets it
 * from DIVE_COMM_TIMEOUT; set overrides it (the trainer's [train]
 * comm_timeout) for every later wait, device waits included. A value that
 * is not a number >= 0 leaves it as it is; infinity means 0. */
void dv_comm_set_timeout(dv_comm *c, double seconds);
double dv_comm_timeout(const dv_comm *c);

/* The training step this rank is at, for the watchdog's message ("step
 * 1234"; "start-up" before the first call). Call it every step. */
void dv_comm_set_step(dv_comm *c, long step);

/* A running 64-bit hash of the collectives this comm has entered: every
 * collective of this header (all-reduces, asynchronous starts host and
 * device, reduce-scatter, all-gather, shared buffer, broadcast, error
 * agreement, all_equal, barrier, device init) folds its kind and its element
 * or byte count in when it is called, in call order (waits, progress and
 * stream waits are not collectives of their own). Two ranks that called the
 * same collectives in the same order with the same sizes have the same
 * hash; one different call makes them differ. To compare it across ranks,
 * read it before the collective that compares it (which folds itself in). */
uint64_t dv_comm_sequence_hash(const dv_comm *c);

/* The device this rank should use given `ndevices` on its node: the local
 * rank modulo ndevices (ranks beyond the device count share, which only the
 * MPI path can serve). -1 when ndevices is 0. */
int dv_comm_select_device(const dv_comm *c, int ndevices);

/* The float averages below run over node shared memory (plus MPI between
 * nodes) when every node holds the same number (> 1) of ranks, else over
 * MPI_Allreduce; DIVE_COMM_ALGO=mpi forces MPI_Allreduce (read at init).
 * Either way every rank gets the same bits, sum / size correctly rounded.
 * DIVE_COMM_FAKE_NODE_SIZE=K (testing only) treats each K consecutive
 * ranks as one node. */

/* Blocking in-place average of x (n floats) over all ranks. */
dv_status dv_comm_allreduce_avg(dv_comm *c, float *x, size_t n, char *err);

/* Sharded updates (ZeRO stage 1): the gradient average is reduce-scattered,
 * each rank updates only its shard of the parameters, and the shards are
 * all-gathered, so the optimizer's work is split across ranks instead of
 * repeated on each. [*lo, *hi) is this rank's shard of an n-vector: a
 * proper part where the node's shared-memory path serves, all of [0, n)
 * otherwise (then the reduce-scatter is an all-reduce and the all-gather
 * does nothing). The same n gives the same shards on every call. */
void dv_comm_shard(const dv_comm *c, size_t n, size_t *lo, size_t *hi);
/* On return x[lo, hi) of this rank's shard holds the average over all ranks
 * of x (n floats); the rest of x is undefined. Blocking. */
dv_status dv_comm_reduce_scatter_avg(dv_comm *c, float *x, size_t n, char *err);
/* A buffer of n floats (zeroed) that the other ranks of this node read in
 * place: gradients kept here are reduce-scattered without being copied into
 * shared memory first. Only x's own shard may be written between the
 * reduce-scatter and the next all-gather. NULL where sharding does not apply
 * or once one exists (err is set only on an MPI failure). Owned by comm
 * (released by dv_comm_free). Collective over the node. */
float *dv_comm_shared_buffer(dv_comm *c, size_t n, char *err);
/* Every rank's shard of x (n floats) is copied to every rank. Blocking. */
dv_status dv_comm_allgather(dv_comm *c, float *x, size_t n, char *err);

/* Start an in-place average of x (n floats); it completes in
 * dv_comm_wait. Requests are owned by comm and released by the wait (also
 * when the wait fails). Every rank starts the same all-reduces, host and
 * device alike, in the same order with the same n.
 *
 * stream == NULL: x is host memory, which must not be touched until the
 * wait returns.
 *
 * stream != NULL (a cudaStream_t, not the legacy default stream, on the
 * device bound by dv_comm_device_init, which must have been called): x is
 * a device pointer to n floats. The average reads x as left by all the
 * work queued on `stream` before this call (an event orders comm's own
 * stream after it; the host does not wait), and work queued on `stream`
 * after dv_comm_wait returns sees the result. Nothing may write x between
 * the start and the wait. The wait does not block the host on the NCCL
 * path; on the MPI path it blocks until the host all-reduce is done (the
 * copy back to x is queued, not waited for). */
dv_status dv_comm_allreduce_start(dv_comm *c, float *x, size_t n, void *stream,
                                  dv_comm_request **req, char *err);
/* Lets outstanding requests progress (call between layers); never blocks,
 * except that the first use of a larger buffer than ever before may wait
 * for the node's other ranks (the shared segments grow collectively). */
void dv_comm_progress(dv_comm *c);
dv_status dv_comm_wait(dv_comm *c, dv_comm_request *req, char *err);

/* ---- device buffers (built with CUDA) -------------------------------------
 * NCCL serves where every rank has a GPU of its own. Where two ranks share
 * one GPU (more ranks on a node than GPUs) only the MPI path serves: each
 * bucket goes device -> pinned host staging -> the host all-reduce above ->
 * device. */
typedef enum dv_comm_device_mode {
    DV_COMM_DEVICE_AUTO = 0, /* NCCL unless some GPU is shared by two ranks */
    DV_COMM_DEVICE_NCCL,     /* NCCL, or fail on every rank where a GPU is shared */
    DV_COMM_DEVICE_MPI,      /* staged through host memory, always */
    DV_COMM_DEVICE_COUNT
} dv_comm_device_mode;

/* Sets up device all-reduces on `device`, one of the node's `ndevices`
 * GPUs; the CUDA backend has already called cudaSetDevice(device) on this
 * thread, normally with device = dv_comm_select_device(c, ndevices).
 * Collective: every rank calls it with the same mode, and every rank
 * returns the same status; on failure err holds this rank's own reason, or
 * else the first failing rank's. A GPU counts as shared when two ranks'
 * devices have the same PCI bus id on the same host.
 * max_floats sizes the MPI path's pinned host staging buffer (owned by
 * comm): the n of all device requests started and not yet waited must fit
 * in it together (the whole gradient, for one all-reduce per bucket of it).
 * NCCL ignores it. Its waits use the comm's timeout (dv_comm_timeout;
 * see dv_comm_stream_wait). The device side lives in the CUDA
 * module (libdive-cuda.so, or the one DIVE_CUDA_MODULE names), which the
 * first call loads. Fails when called twice on one comm, and where the
 * module cannot be loaded (Dive built without CUDA, or the CUDA libraries
 * absent). dv_comm_free releases it all (the
 * NCCL communicator, comm's stream and events, the staging buffer); free
 * the comm while the device is still up, not after a cudaDeviceReset. */
dv_status dv_comm_device_init(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                              size_t max_floats, char *err);

/* "nccl" or "mpi" once dv_comm_device_init has succeeded; NULL before it
 * and without CUDA. A static string. */
const char *dv_comm_device_path(const dv_comm *c);

/* Host flow control for a device stream (a cudaStream_t): records an event
 * on `stream` into a ring of 8 kept by comm (when it is full the oldest is
 * waited for first), then waits until every event recorded so far except
 * the newest `keep` has completed. A training step ends with keep = 1 (the
 * host runs at most one step ahead of the GPU); keep = 0 before the host
 * reads results. It polls, checking NCCL for asynchronous errors; on one it
 * aborts the NCCL communicator and fails with a message naming this rank.
 * The device side then stays failed (later starts, waits and stream waits
 * fail too) and the caller should end the job (dv_comm_abort). A failed
 * kernel or copy on `stream` fails it as well. When no event completes for
 * the comm's timeout (a rank died or hung, or the GPU did) the watchdog
 * fires: it names the ranks that did not arrive and ends the job.
 * stream == NULL returns DV_OK at once. */
dv_status dv_comm_stream_wait(dv_comm *c, void *stream, int keep, char *err);

/* Broadcast `bytes` bytes from `root` to every rank. */
dv_status dv_comm_bcast(dv_comm *c, void *buf, size_t bytes, int root, char *err);

/* Reduce n doubles in place over all ranks. */
dv_status dv_comm_allreduce_double(dv_comm *c, double *x, int n, dv_reduce op, char *err);

/* Collective error agreement: every rank passes whether it is fine; returns
 * the lowest rank that is not, or -1 when all are. Each rank must call it
 * the same number of times. */
int dv_comm_first_failed(dv_comm *c, int ok);

/* 1 when every rank holds the same `bytes` bytes in buf (checked by a
 * checksum reduction). */
int dv_comm_all_equal(dv_comm *c, const void *buf, size_t bytes);

void dv_comm_barrier(dv_comm *c);

/* Ends the whole job now: prints `[rank r/n host] msg` to stderr and
 * calls MPI_Abort. Use for an error that only this rank sees mid-run;
 * errors all ranks see go through dv_comm_first_failed and a clean exit. */
void dv_comm_abort(dv_comm *c, int code, const char *msg);

/* ---- the MPI check (for any module that may include comm.h) ------------
 * DV_MPI_CHECK(err, mpi_call(...)) fails, in a function that returns
 * dv_status, when the call does not return MPI_SUCCESS, with
 * MPI_Error_string's text; it belongs to base.h's check family (DV_FAIL,
 * DV_CHECK, DV_TRY). Expand it only where <mpi.h> is included. */
#define DV_MPI_CHECK(err, expr)                                                                    \
    do {                                                                                           \
        int dv_mpi_rc_ = (expr);                                                                   \
        if (dv_mpi_rc_ != MPI_SUCCESS) {                                                           \
            char dv_mpi_msg_[MPI_MAX_ERROR_STRING] = "unknown MPI error";                          \
            int dv_mpi_len_ = 0;                                                                   \
            MPI_Error_string(dv_mpi_rc_, dv_mpi_msg_, &dv_mpi_len_);                               \
            DV_FAIL((err), #expr, "%s (MPI error %d)", dv_mpi_msg_, dv_mpi_rc_);                   \
        }                                                                                          \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
