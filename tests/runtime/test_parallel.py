"""CPU chunks and threads (solvergen/runtime/parallel.py): `by_chunks` and `per_matrix` return what
the unchunked call returns, in each of their regimes (one call, serial chunks, concurrent chunks
on the thread pool, LAPACK split over the threads), and a real solver's forward is the same on
the concurrent path as on the serial one."""
from __future__ import annotations

import threading

import geometry
import numpy as np
import pytest
import torch
from conftest import generated_module

from solvergen.runtime import parallel
from solvergen.runtime import template as template_stage


@pytest.fixture
def threads():
    """At least two intra-op threads (the concurrent paths need them); the count is restored."""
    before = torch.get_num_threads()
    if before < 2:
        torch.set_num_threads(2)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def recording(calls):
    """fn(x [B, 3], y [B]) -> (x * y + 1, x.sum(-1) - y): elementwise per row, so any split of the
    batch gives the same rows; records each call's batch size, thread and intra-op threads."""

    def fn(x, y):
        calls.append((len(x), threading.get_ident(), torch.get_num_threads()))
        return x * y.unsqueeze(-1) + 1, x.sum(-1) - y

    return fn


def inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(batch, 3)), rng.normal(size=batch)
    expected = (x * y[:, None] + 1, x.sum(-1) - y)  # numpy: the unchunked result
    return torch.from_numpy(x), torch.from_numpy(y), expected


def check_outputs(outputs, expected):
    assert isinstance(outputs, tuple) and len(outputs) == 2
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-15, atol=1e-15)


def thread_count_of_a_new_thread():
    """torch.get_num_threads() of a thread started now: set_num_threads in any thread changes
    this default, so it shows whether `on_threads` restored the caller's count."""
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_small_batch_is_one_call(threads, monkeypatch):
    """A batch of at most 2 * CHUNK (and below PARALLEL_BATCH) is one call, on the caller's thread."""
    monkeypatch.setattr(parallel, "CHUNK", 64)
    calls = []
    x, y, expected = inputs(128)
    with torch.no_grad():
        outputs = parallel.by_chunks(recording(calls), x, y)
    check_outputs(outputs, expected)
    assert [(size, ident) for size, ident, _ in calls] == [(128, threading.get_ident())]


def test_serial_chunks(threads, monkeypatch):
    """Above 2 * CHUNK (below PARALLEL_BATCH): chunks of CHUNK rows, in order, on the caller's
    thread, concatenated to the whole batch's result."""
    monkeypatch.setattr(parallel, "CHUNK", 64)
    calls = []
    x, y, expected = inputs(300)
    with torch.no_grad():
        outputs = parallel.by_chunks(recording(calls), x, y)
    check_outputs(outputs, expected)
    assert [size for size, _, _ in calls] == [64, 64, 64, 64, 44]
    assert {ident for _, ident, _ in calls} == {threading.get_ident()}


@pytest.mark.parametrize("chunk", [64, 4096])
def test_concurrent_chunks(threads, monkeypatch, chunk):
    """From PARALLEL_BATCH on, without autograd: chunks of at most CHUNK rows, two per thread
    where CHUNK allows, run on the pool's threads (not the caller's), each with one intra-op
    thread; the result is the whole batch's, and the caller's thread count is restored (also the
    default of new threads)."""
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 256)
    monkeypatch.setattr(parallel, "CHUNK", chunk)
    calls = []
    x, y, expected = inputs(600)
    with torch.no_grad():
        outputs = parallel.by_chunks(recording(calls), x, y)
    check_outputs(outputs, expected)
    # 2 threads: CHUNK 64 -> 9 x 64 + 24; CHUNK 4096 -> two chunks per thread, 4 x 150
    largest = min(chunk, -(-600 // (2 * threads)))
    expected_sizes = [len(part) for part in torch.arange(600).split(largest)]
    assert sorted(size for size, _, _ in calls) == sorted(expected_sizes)
    assert threads != 2 or len(calls) == (10 if chunk == 64 else 4)
    assert threading.get_ident() not in {ident for _, ident, _ in calls}
    assert {count for _, _, count in calls} == {1}
    assert torch.get_num_threads() == threads
    assert thread_count_of_a_new_thread() == threads


def test_no_concurrency_with_autograd_parallel_false_or_one_thread(threads, monkeypatch):
    """The concurrent path is not taken with autograd enabled, with parallel=False, or with one
    intra-op thread: serial chunks on the caller's thread instead, with the same result."""
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 256)
    monkeypatch.setattr(parallel, "CHUNK", 64)
    x, y, expected = inputs(300)
    main = threading.get_ident()

    calls = []
    with torch.enable_grad():
        outputs = parallel.by_chunks(recording(calls), x, y)
    check_outputs(outputs, expected)
    assert [size for size, _, _ in calls] == [64, 64, 64, 64, 44] and {i for _, i, _ in calls} == {main}

    calls = []
    with torch.no_grad():
        outputs = parallel.by_chunks(recording(calls), x, y, parallel=False)
    check_outputs(outputs, expected)
    assert [size for size, _, _ in calls] == [64, 64, 64, 64, 44] and {i for _, i, _ in calls} == {main}

    calls = []
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            outputs = parallel.by_chunks(recording(calls), x, y)
    finally:
        torch.set_num_threads(threads)
    check_outputs(outputs, expected)
    assert [size for size, _, _ in calls] == [64, 64, 64, 64, 44] and {i for _, i, _ in calls} == {main}


def test_gradients_flow_through_serial_chunks(monkeypatch):
    """With autograd the chunks are concatenated differentiably: d(sum of outputs)/dx = y + 1."""
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 256)
    monkeypatch.setattr(parallel, "CHUNK", 64)
    x, y, _ = inputs(300)
    x.requires_grad_(True)
    first, second = parallel.by_chunks(recording([]), x, y)
    (first.sum() + second.sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), (y.unsqueeze(-1) + 1).expand(300, 3).numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("batch", [parallel.PER_MATRIX_BATCH + 44, parallel.PER_MATRIX_BATCH - 56])
def test_per_matrix_inverse(threads, batch):
    """per_matrix(torch.linalg.inv_ex): the direct call's inverses and infos (a singular matrix
    included), equal to numpy's inverses; at or above PER_MATRIX_BATCH one call per thread on the
    pool, below it one call on the caller's thread. The thread count is restored."""
    rng = np.random.default_rng(batch)
    matrices = rng.normal(size=(batch, 5, 5))
    matrices[17] = 0.0  # singular: info > 0
    calls = []

    def inv(m):
        calls.append((len(m), threading.get_ident()))
        return torch.linalg.inv_ex(m)

    inverse, info = parallel.per_matrix(inv, torch.from_numpy(matrices))
    direct_inverse, direct_info = torch.linalg.inv_ex(torch.from_numpy(matrices))
    assert torch.equal(info, direct_info) and info[17] > 0 and (info[torch.arange(batch) != 17] == 0).all()
    good = np.arange(batch) != 17
    torch.testing.assert_close(inverse[good], direct_inverse[good], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(inverse.numpy()[good], np.linalg.inv(matrices[good]), rtol=1e-9, atol=1e-9)
    if batch >= parallel.PER_MATRIX_BATCH:
        assert sorted(size for size, _ in calls) == sorted(len(part) for part in torch.arange(batch).chunk(threads))
        assert len(calls) == threads and threading.get_ident() not in {ident for _, ident in calls}
    else:
        assert calls == [(batch, threading.get_ident())]
    assert torch.get_num_threads() == threads and thread_count_of_a_new_thread() == threads


def test_per_matrix_keeps_autograd(threads):
    """A matrix that requires grad is decomposed in one call (the threads would drop the graph):
    the inverse stays differentiable."""
    matrices = torch.eye(3, dtype=torch.float64).repeat(parallel.PER_MATRIX_BATCH, 1, 1) * 2
    matrices.requires_grad_(True)
    calls = []

    def inv(m):
        calls.append(len(m))
        return torch.linalg.inv_ex(m)

    inverse, _ = parallel.per_matrix(inv, matrices)
    assert calls == [parallel.PER_MATRIX_BATCH]
    inverse.sum().backward()  # d sum(A^-1) / dA = -A^-T 1 1^T A^-T = -1/4 everywhere at A = 2 I
    torch.testing.assert_close(matrices.grad, torch.full_like(matrices, -0.25), rtol=0, atol=1e-15)


def solve_recorded(module, params, monkeypatch, calls):
    """The forward under no_grad, recording the template stage's calls (batch size, thread)."""
    original = template_stage.solve_candidates

    def recorded(c, *args):
        calls.append((len(c), threading.get_ident()))
        return original(c, *args)

    with monkeypatch.context() as patch:
        patch.setattr(template_stage, "solve_candidates", recorded)
        with torch.no_grad():
            return module.Solver()(params)


@pytest.mark.parametrize("name", ["p3p", "relpose_5pt_nullspace"])
def test_concurrent_forward_equals_serial(name, threads, monkeypatch):
    """A real solver at a batch that takes the concurrent path: the same valid masks and, per
    instance, the same set of solutions (1e-9 relative; LAPACK may order close eigenvalues
    differently) as the serial whole-batch forward, also around rows without solutions."""
    module = generated_module(name)
    params, _ = geometry.INSTANCES[name](600, np.random.default_rng(41))
    params = torch.from_numpy(params)
    params[7] = float("nan")  # rows without solutions stay masked in their own chunk
    params[300] = 0.0
    main = threading.get_ident()

    serial_calls = []
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 10**9)
    serial, serial_valid = solve_recorded(module, params, monkeypatch, serial_calls)
    assert serial_calls == [(600, main)]

    concurrent_calls = []
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 256)
    monkeypatch.setattr(parallel, "CHUNK", 64)
    concurrent, concurrent_valid = solve_recorded(module, params, monkeypatch, concurrent_calls)
    assert sum(size for size, _ in concurrent_calls) == 600 and max(size for size, _ in concurrent_calls) <= 64
    assert main not in {ident for _, ident in concurrent_calls}
    assert torch.get_num_threads() == threads

    assert torch.equal(concurrent_valid, serial_valid)
    assert not serial_valid[7].any() and not serial_valid[300].any()
    assert serial_valid.any(dim=-1).double().mean() > 0.9  # there is something to compare
    distance = (concurrent.unsqueeze(-2) - serial.unsqueeze(-3)).norm(dim=-1)  # [B, S, S]
    both = concurrent_valid.unsqueeze(-1) & serial_valid.unsqueeze(-2)
    distance = distance.masked_fill(~both, float("inf"))
    # each concurrent solution has a serial one within 1e-9 (relative, at least absolute) and vice versa
    for nearest, solutions, valid in ((distance.amin(dim=-1), concurrent, concurrent_valid),
                                      (distance.amin(dim=-2), serial, serial_valid)):
        size = solutions.norm(dim=-1).clamp_min(1.0)
        assert (nearest[valid] <= 1e-9 * size[valid]).all(), (nearest / size)[valid].max()


def test_concurrent_forward_at_the_default_threshold(threads, monkeypatch):
    """With the default PARALLEL_BATCH and CHUNK (no patching), a batch of PARALLEL_BATCH runs
    concurrently on the pool and gives the serial forward's result."""
    module = generated_module("implicit_example")
    params, _ = geometry.INSTANCES["implicit_example"](parallel.PARALLEL_BATCH, np.random.default_rng(42))
    params = torch.from_numpy(params)
    calls = []
    concurrent, concurrent_valid = solve_recorded(module, params, monkeypatch, calls)
    assert len(calls) >= 2 and threading.get_ident() not in {ident for _, ident in calls}
    monkeypatch.setattr(parallel, "PARALLEL_BATCH", 10**9)
    serial, serial_valid = solve_recorded(module, params, monkeypatch, [])
    assert torch.equal(concurrent_valid, serial_valid) and serial_valid.all()
    torch.testing.assert_close(concurrent, serial, rtol=1e-12, atol=1e-12)


def test_thread_count_restored_when_a_chunk_raises(threads):
    """`on_threads` restores the caller's thread count (and so the default of new threads) also
    when a worker raises."""

    def fail(x):
        raise RuntimeError("chunk failed")

    with pytest.raises(RuntimeError, match="chunk failed"):
        parallel.on_threads(fail, [(torch.zeros(1),), (torch.zeros(1),)])
    assert torch.get_num_threads() == threads
    assert thread_count_of_a_new_thread() == threads
