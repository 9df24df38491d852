"""How the work is split: the CPU compacts and uses its threads, other devices mask.

On the CPU a host synchronization (a data-dependent shape such as `nonzero`) costs nothing, so
the solver works on the rows that need work only; on GPUs it would wait for the device, so the
solver masks instead. Large CPU batches run in chunks, concurrently on the intra-op threads,
and per-matrix LAPACK calls are split over the threads.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

CHUNK = 4096  # instances per chunk of the forward on the CPU (see by_chunks)
PARALLEL_BATCH = 4096  # from this batch on, chunks run concurrently on the CPU threads (measured: 1.0-1.5x)
PER_MATRIX_BATCH = 256  # from this batch on, per-matrix LAPACK calls are split over the threads

_pool = None  # the thread pool of on_threads, created at first use


def host_sync_is_free(device: torch.device) -> bool:
    """Whether data-dependent shapes (nonzero, compaction) cost nothing: on the CPU. On other
    devices they would wait for the device, so the solver masks instead."""
    return device.type == "cpu"


def differentiated(*tensors) -> bool:
    """Whether autograd records this computation (backward="autograd"): singular rows then need
    safe stand-ins, because the backward of a singular solve raises, and 0 * inf is NaN even in
    rows whose result is discarded."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def per_matrix(fn, matrix):
    """fn(matrix) -> tuple of tensors, for a batch of small matrices that LAPACK decomposes one at
    a time (ATen loops over the batch on one thread). On the CPU the batch is split over the
    intra-op threads (`on_threads`): about 2x on 2 cores."""
    threads = torch.get_num_threads()
    if (
        matrix.device.type == "cpu"
        and threads > 1
        and matrix.shape[0] >= PER_MATRIX_BATCH
        and not matrix.requires_grad
        and not torch.compiler.is_compiling()  # (compiled: one batched LAPACK call in the graph)
    ):
        parts = on_threads(fn, [(part,) for part in matrix.chunk(threads)])
        return tuple(torch.cat(outputs) for outputs in zip(*parts))
    return fn(matrix)


def on_threads(fn, parts):
    """[fn(*part) for part in parts], run by a pool of as many Python threads as intra-op threads
    (ATen releases the GIL while it computes).

    Each worker runs with one intra-op thread: otherwise every worker would start an OpenMP team
    of its own, and those teams, spinning idle, contend with the caller's next parallel op (the
    template LU measured 2-7x slower right after an eigendecomposition). The caller's thread
    count is restored afterwards (set_num_threads also changes the default of new threads)."""
    global _pool
    threads = torch.get_num_threads()
    if _pool is None:
        _pool = ThreadPoolExecutor(threads)
    try:
        return list(_pool.map(lambda part: _single_threaded(fn, *part), parts))
    finally:
        torch.set_num_threads(threads)


def _single_threaded(fn, *args):
    torch.set_num_threads(1)  # this worker thread's OpenMP team: itself only
    return fn(*args)


def by_chunks(fn, *rows, parallel=True):
    """fn(*rows) -> tuple of tensors, all with the batch first. On the CPU large batches run in
    chunks of at most `CHUNK` instances: their intermediates stay in cache and under the
    allocator's threshold for fresh, page-faulting memory, which otherwise costs more than the
    arithmetic. If `parallel` and without autograd (the IFT forward), batches of at least
    `PARALLEL_BATCH` run as two chunks per intra-op thread, concurrently (`on_threads`): most
    operations of a chunk are too small for ATen to split them over threads (batch 6,000 to
    10,000 on 2 cores: 1.02-1.5x). Not for compiled stages, whose kernels use the threads
    themselves (P3P: 1.25x slower so)."""
    batch, threads = len(rows[0]), torch.get_num_threads()
    if rows[0].device.type != "cpu":
        return fn(*rows)
    if parallel and threads > 1 and batch >= PARALLEL_BATCH and not torch.is_grad_enabled():
        size = min(CHUNK, -(-batch // (2 * threads)))
        parts = on_threads(fn, list(zip(*(value.split(size) for value in rows))))
    elif batch > 2 * CHUNK:
        parts = [fn(*chunk) for chunk in zip(*(value.split(CHUNK) for value in rows))]
    else:
        return fn(*rows)
    return tuple(torch.cat(outputs) for outputs in zip(*parts))
