#!/usr/bin/env python
"""Benchmark suite for the generated solvers: speed, accuracy, backward cost, and peers.

    python benchmarks/run.py                      # full run on the CPU
    python benchmarks/run.py --device cuda        # adds batches 100000 and 1000000
    python benchmarks/run.py --quick              # smoke run, under a minute
    python benchmarks/run.py --problems p3p relpose_5pt_nullspace
    python benchmarks/run.py --compile            # solvers built with compile=True (torch.compile)

Writes benchmarks/results/<device>.json (every number and the machine), <device>.md (tables) and
throughput_<device>.png. A --quick run writes <device>-quick.* instead, so it never overwrites a
full run; a --compile run adds `-compiled` to the names. See benchmarks/README.md for what is
measured and how to read the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/geometry.py: ground-truth instances

import geometry  # noqa: E402

from solvergen.generate import import_generated  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}
FAIL_THRESHOLD = 1e-6  # relative error above which an instance counts as a failure
LOOSE_THRESHOLD = 1e-3  # the float32 view: inputs already carry 1e-7 relative rounding
ERROR_FLOOR = 1e-18  # log10 of an exact answer would be -inf
SEED = 2026

_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    device: str
    quick: bool
    batches: list[int]
    warmup: int = 1
    min_repeats: int = 3  # timed calls at least ...
    max_repeats: int = 200  # ... and at most, stopping once min_time is spent
    min_time: float = 1.0  # seconds per measurement
    max_call_seconds: float = 30.0  # a series skips larger batches once one call takes longer
    backward_batch: int = 1024
    backward_repeats: int = 5
    peer_loop: int = 2000  # PoseLib: instances in the timed Python loop
    peer_loop_repeats: int = 3
    peer_batches: list[int] = field(default_factory=list)  # kornia
    seed: int = SEED
    compile: bool = False  # solvers built with compile=True (the autograd baseline stays eager)

    @classmethod
    def make(cls, device: str, quick: bool) -> "Config":
        if quick:
            return cls(
                device=device,
                quick=True,
                batches=[1, 64, 256],
                min_repeats=2,
                max_repeats=10,
                min_time=0.02,
                max_call_seconds=5.0,
                backward_batch=64,
                backward_repeats=2,
                peer_loop=256,
                peer_loop_repeats=1,
                peer_batches=[64, 256],
            )
        batches = [1, 64, 1000, 10000] + ([100000, 1000000] if device.startswith("cuda") else [])
        return cls(device=device, quick=False, batches=batches, peer_batches=sorted(set(batches) | {2000}))


# ---------------------------------------------------------------------------------------------
# Result rows
# ---------------------------------------------------------------------------------------------


@dataclass
class ForwardRow:
    problem: str
    dtype: str
    batch: int
    us_per_instance: float | None  # median call time / batch
    instances_per_s: float | None
    median_call_ms: float | None
    min_call_ms: float | None
    p25_call_ms: float | None
    p75_call_ms: float | None
    repeats: int
    note: str = ""  # "skipped: ..." when not measured; "peer reference" for extra batches


@dataclass
class AccuracyRow:
    problem: str
    dtype: str
    instances: int
    median_log10_error: float | None
    fail_share: float  # relative error > 1e-6 (or no valid solution)
    fail_share_1e3: float  # relative error > 1e-3
    mean_valid_solutions: float


@dataclass
class BackwardRow:
    problem: str
    loss: str  # a key of BACKWARD_LOSSES
    mode: str  # "ift" or "autograd"
    batch: int
    forward_backward_ms: float  # median
    backward_ms: float  # median, forward not timed
    saved_bytes: int  # unique storages saved for backward by the solver call
    cuda_backward_peak_bytes: int | None  # max_memory_allocated during backward, above its start
    runs: int
    nonfinite_runs: int  # runs whose gradient had a non-finite entry
    nonfinite_instances: int  # instances with a non-finite gradient, summed over runs
    ill_conditioned: int | None  # IFT: valid solutions left out of the last gradient


@dataclass
class BackwardRatio:
    problem: str
    loss: str
    batch: int
    forward_backward: float  # autograd / ift: > 1 means IFT is faster
    backward: float  # of the medians
    backward_paired_p25: float  # quartiles of autograd / ift over the alternating backward calls
    backward_paired_p75: float
    saved_bytes: float  # autograd / ift: > 1 means IFT saves less
    cuda_backward_peak: float | None


@dataclass
class PeerRow:
    problem: str
    implementation: str  # "PoseLib relpose_5pt", "kornia find_essential", ...
    dtype: str
    batch: int  # batch size, or the number of instances in a Python loop
    us_per_instance: float | None
    instances_per_s: float | None
    ours_us_same_batch: float | None  # solvergen, same problem, dtype and batch
    ratio_same_batch: float | None  # peer / ours: > 1 means ours is faster
    ours_us_batch1: float | None
    ratio_batch1: float | None
    median_log10_error: float | None
    fail_share: float | None
    mean_solutions: float | None
    note: str = ""


@dataclass
class Results:
    config: dict
    machine: dict
    forward: list[ForwardRow] = field(default_factory=list)
    accuracy: list[AccuracyRow] = field(default_factory=list)
    backward: list[BackwardRow] = field(default_factory=list)
    backward_ratios: list[BackwardRatio] = field(default_factory=list)
    peers: list[PeerRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    total_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Timing and accuracy helpers
# ---------------------------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


@dataclass
class Timing:
    times: list[float]  # seconds per call

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times, q))


def time_calls(fn, config: Config, *, min_repeats=None, max_repeats=None, min_time=None):
    """Warm up, then time single calls (synchronizing around each) until at least `min_repeats`
    calls and `min_time` seconds, at most `max_repeats` calls. Returns (Timing, last result)."""
    sync = synchronizer(config.device)
    min_repeats = config.min_repeats if min_repeats is None else min_repeats
    max_repeats = config.max_repeats if max_repeats is None else max_repeats
    min_time = config.min_time if min_time is None else min_time
    result = None
    for _ in range(config.warmup):
        result = fn()
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - started < min_time):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return Timing(times), result


def error_summary(errors: np.ndarray) -> tuple[float | None, float, float]:
    """(median log10 relative error, share > 1e-6, share > 1e-3); no valid solution = inf."""
    if errors.size == 0:
        return None, float("nan"), float("nan")
    log_errors = np.log10(np.maximum(errors, ERROR_FLOOR))
    median = float(np.median(log_errors))
    return (
        median if math.isfinite(median) else None,
        float(np.mean(~(errors <= FAIL_THRESHOLD))),
        float(np.mean(~(errors <= LOOSE_THRESHOLD))),
    )


def pad_solutions(per_instance: list[list[np.ndarray]], unknowns: int):
    """Ragged lists of solution vectors -> solutions [n, S, N] (zeros when missing), valid [n, S]."""
    width = max(1, max((len(s) for s in per_instance), default=1))
    solutions = np.zeros((len(per_instance), width, unknowns))
    valid = np.zeros((len(per_instance), width), dtype=bool)
    for i, sols in enumerate(per_instance):
        for j, x in enumerate(sols):
            solutions[i, j] = x
            valid[i, j] = np.all(np.isfinite(x))
    return np.where(valid[..., None], solutions, 0.0), valid


# ---------------------------------------------------------------------------------------------
# Problems and instances
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One problem: its generated module and its instances (numpy float64)."""

    name: str
    module: object
    params: np.ndarray  # [n, M]
    truth: np.ndarray | None  # [n, N], None when tests/geometry.py has no generator


def polynomial_problems() -> list[str]:
    """The specs in problems/ that declare a `Problem` (the declarative layers, `Argmin` and
    `Implicit`, have their own benchmark: benchmarks/declarative.py)."""
    from solvergen.problem import Problem
    from solvergen.spec import read_spec

    return sorted(p.stem for p in (ROOT / "problems").glob("*.py")
                  if not p.stem.startswith("_") and isinstance(read_spec(p).problem, Problem))


def discover_problems(selected: list[str] | None) -> list[str]:
    names = polynomial_problems()
    if selected:
        unknown = sorted(set(selected) - set(names))
        if unknown:
            raise SystemExit(f"unknown problem(s): {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in selected]
    return names


def load_case(name: str, n: int, seed: int, results: Results) -> Case | None:
    path = ROOT / "generated" / f"{name}.py"
    if not path.exists():
        results.notes.append(f"{name}: generated/{name}.py missing (run `solvergen generate problems/{name}.py`)")
        log(results.notes[-1])
        return None
    module = import_generated(path)
    if name in geometry.INSTANCES:
        params, truth = geometry.INSTANCES[name](n, np.random.default_rng(seed))
    else:
        results.notes.append(f"{name}: no ground truth in tests/geometry.py; timed on random params, no accuracy")
        log(results.notes[-1])
        params, truth = np.random.default_rng(seed).normal(size=(n, len(module.PARAMETER_NAMES))), None
    return Case(name, module, np.ascontiguousarray(params), truth)


def compile_first_call(case: Case, config: Config, results: Results) -> None:
    """--compile: time the first forward and backward (batch 64, float64), which compile the
    solver's programs; torch.compile caches kernels on disk, so a second run compiles less."""
    solver = case.module.Solver(compile=True)
    params = torch.from_numpy(case.params[:64]).to(config.device).requires_grad_(True)
    sync = synchronizer(config.device)
    t0 = time.perf_counter()
    solutions, valid = solver(params)
    sync()
    t1 = time.perf_counter()
    (solutions * valid.unsqueeze(-1)).sum().backward()
    sync()
    t2 = time.perf_counter()
    results.notes.append(f"{case.name}: first compiled call (compilation included): forward {t1 - t0:.1f} s, "
                         f"backward {t2 - t1:.1f} s")
    log(results.notes[-1])


# ---------------------------------------------------------------------------------------------
# 1. Forward speed and accuracy
# ---------------------------------------------------------------------------------------------


class OursTimer:
    """Forward timings of solvergen, kept per (problem, dtype, batch) so that peers can be
    compared at their own batch sizes (measured on demand if the forward sweep lacks one)."""

    def __init__(self, config: Config, results: Results):
        self.config = config
        self.results = results
        self.cache: dict[tuple[str, str, int], float | None] = {}
        self.tensors: dict[tuple[str, str], torch.Tensor] = {}

    def params(self, case: Case, dtype: str) -> torch.Tensor:
        key = (case.name, dtype)
        if key not in self.tensors:
            self.tensors[key] = torch.from_numpy(case.params).to(DTYPES[dtype]).to(self.config.device)
        return self.tensors[key]

    def measure(self, case: Case, dtype: str, batch: int, note: str = ""):
        """Times solver(params[:batch]); appends a ForwardRow; returns (row, last output)."""
        solver = case.module.Solver(compile=self.config.compile)
        params = self.params(case, dtype)
        if batch > params.shape[0]:
            reps = -(-batch // params.shape[0])
            params = params.repeat(reps, 1)
        x = params[:batch]
        with torch.no_grad():
            timing, output = time_calls(lambda: solver(x), self.config)
        median = timing.median
        row = ForwardRow(
            case.name, dtype, batch, median / batch * 1e6, batch / median, median * 1e3,
            min(timing.times) * 1e3, timing.percentile(25) * 1e3, timing.percentile(75) * 1e3, len(timing.times), note,
        )
        self.results.forward.append(row)
        self.cache[(case.name, dtype, batch)] = row.us_per_instance
        return row, output

    def skip(self, case: Case, dtype: str, batch: int, reason: str) -> None:
        self.results.forward.append(ForwardRow(case.name, dtype, batch, None, None, None, None, None, None, 0, f"skipped: {reason}"))
        self.cache[(case.name, dtype, batch)] = None

    def us_per_instance(self, case: Case, dtype: str, batch: int) -> float | None:
        key = (case.name, dtype, batch)
        if key not in self.cache:
            try:
                self.measure(case, dtype, batch, note="peer reference")
            except RuntimeError as exc:  # out of memory on a large batch
                self.skip(case, dtype, batch, type(exc).__name__)
        return self.cache[key]


def bench_forward(case: Case, ours: OursTimer, config: Config, results: Results) -> None:
    for dtype in DTYPES:
        largest = None  # (batch, output) of the largest measured batch, for the accuracy
        too_slow = None
        for batch in config.batches:
            if too_slow is not None:
                ours.skip(case, dtype, batch, too_slow)
                continue
            try:
                row, output = ours.measure(case, dtype, batch)
            except RuntimeError as exc:
                too_slow = f"{type(exc).__name__} at batch {batch}"
                ours.skip(case, dtype, batch, too_slow)
                log(f"  {case.name} {dtype} batch {batch}: {too_slow}")
                if config.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            largest = (batch, output)
            log(
                f"  forward {case.name:28s} {dtype} batch {batch:>7d}: "
                f"{row.us_per_instance:10.2f} us/instance {row.instances_per_s:12.0f} /s ({row.repeats} calls)"
            )
            if row.median_call_ms / 1e3 > config.max_call_seconds:
                too_slow = f"a call at batch {batch} took {row.median_call_ms / 1e3:.0f} s"
        if largest is not None and case.truth is not None:
            batch, (solutions, valid) = largest
            n = min(batch, case.truth.shape[0])
            errors = relative_errors(case, solutions[:n].double().cpu().numpy(), valid[:n].cpu().numpy())
            median, fail, fail_loose = error_summary(errors)
            results.accuracy.append(
                AccuracyRow(case.name, dtype, n, median, fail, fail_loose, float(valid[:n].sum(-1).double().mean()))
            )
            log(
                f"  accuracy {case.name:27s} {dtype} n={n}: median log10 err {median if median is not None else float('inf'):.2f}, "
                f"fail(>1e-6) {fail:.2%}, fail(>1e-3) {fail_loose:.2%}"
            )


# ---------------------------------------------------------------------------------------------
# 2. Backward: IFT vs autograd through the forward computation
# ---------------------------------------------------------------------------------------------


def peak_bytes(fn) -> int:
    """Peak of live CPU allocations while fn runs (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        # allocations are counted in the operator that makes them (self, not its children);
        # frees come as "[memory]" events with negative sizes
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def saved_bytes_of(fn) -> int:
    """Bytes of the unique storages saved for backward while `fn` runs."""
    storages: dict[tuple, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


BACKWARD_LOSSES = {
    "all": "sum over all valid solutions of fixed random weights times the solutions",
    "selected": "fixed random weights times the valid solution closest to the ground truth (`Solver.select`, "
                "up to sign where the problem has a sign gauge): MinBackProp's training setting",
}


def bench_backward(case: Case, config: Config, results: Results) -> None:
    """IFT vs autograd for each loss in BACKWARD_LOSSES ("selected" needs ground truth). The two
    modes are timed alternately, call by call, so that machine noise hits both alike."""
    device, batch = config.device, config.backward_batch
    sync = synchronizer(device)
    base = torch.from_numpy(case.params[:batch]).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    weights = torch.randn(case.module.NUM_SOLUTIONS, len(case.module.UNKNOWN_NAMES), generator=generator,
                          dtype=torch.float64).to(device)
    reference = torch.from_numpy(case.truth[:batch]).to(device) if case.truth is not None else None
    solvers = {mode: case.module.Solver(backward=mode, compile=config.compile and mode == "ift")
               for mode in ("ift", "autograd")}
    # Memory saved for backward by the solver call (the same for every loss).
    saved = {mode: saved_bytes_of(lambda: solver(base.clone().requires_grad_(True)))
             for mode, solver in solvers.items()}
    for loss_name in BACKWARD_LOSSES:
        if loss_name == "selected" and reference is None:
            continue

        def forward(solver):
            params = base.clone().requires_grad_(True)
            solutions, valid = solver(params)
            if loss_name == "all":
                loss = (solutions * weights * valid.unsqueeze(-1)).sum()
            else:
                picked, _ = solver.select(solutions, valid, reference=reference)
                loss = (picked * weights[0]).sum()
            return params, loss

        counts = {mode: [0, 0, 0] for mode in solvers}  # runs, runs with a non-finite entry, instances

        def check(mode, params):
            bad = int((~torch.isfinite(params.grad).all(dim=-1)).sum())
            counts[mode][0] += 1
            counts[mode][1] += bad > 0
            counts[mode][2] += bad

        def forward_backward(solver):
            params, loss = forward(solver)
            loss.backward()
            return params

        for mode, solver in solvers.items():  # warm-up
            check(mode, forward_backward(solver))
        # Alternate the modes: at least backward_repeats runs each and min_time seconds in all
        # (at most 4x the runs). Forward + backward, then the backward alone (forward not timed).
        full = {mode: [] for mode in solvers}
        alone = {mode: [] for mode in solvers}
        limit, started = 4 * config.backward_repeats, time.perf_counter()
        while len(full["ift"]) < config.backward_repeats or (
                len(full["ift"]) < limit and time.perf_counter() - started < 2 * config.min_time):
            for mode, solver in solvers.items():
                sync()
                t0 = time.perf_counter()
                forward_backward(solver)
                sync()
                full[mode].append(time.perf_counter() - t0)
                params, loss = forward(solver)
                sync()
                t0 = time.perf_counter()
                loss.backward()
                sync()
                alone[mode].append(time.perf_counter() - t0)
                check(mode, params)

        rows = {}
        for mode, solver in solvers.items():
            peak = None  # CUDA: the peak of a backward
            if device.startswith("cuda"):
                params, loss = forward(solver)
                sync()
                start = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                loss.backward()
                sync()
                peak = int(torch.cuda.max_memory_allocated() - start)
                check(mode, params)
            ill = solver.ill_conditioned
            runs, nonfinite_runs, nonfinite_instances = counts[mode]
            row = BackwardRow(
                case.name, loss_name, mode, batch, float(np.median(full[mode])) * 1e3,
                float(np.median(alone[mode])) * 1e3, saved[mode], peak, runs, nonfinite_runs, nonfinite_instances,
                int(ill) if ill is not None else None,
            )
            rows[mode] = row
            results.backward.append(row)
            log(
                f"  backward {case.name:27s} {loss_name:8s} {mode:8s} batch {row.batch}: "
                f"fwd+bwd {row.forward_backward_ms:9.2f} ms, bwd {row.backward_ms:9.2f} ms, "
                f"saved {row.saved_bytes / 2**20:8.2f} MiB, non-finite runs {row.nonfinite_runs}/{row.runs}"
            )
        ift, auto = rows["ift"], rows["autograd"]
        paired = np.array(alone["autograd"]) / np.array(alone["ift"])
        results.backward_ratios.append(
            BackwardRatio(
                case.name, loss_name, ift.batch,
                auto.forward_backward_ms / ift.forward_backward_ms,
                auto.backward_ms / ift.backward_ms,
                float(np.percentile(paired, 25)), float(np.percentile(paired, 75)),
                auto.saved_bytes / max(ift.saved_bytes, 1),
                auto.cuda_backward_peak_bytes / max(ift.cuda_backward_peak_bytes, 1)
                if ift.cuda_backward_peak_bytes is not None else None,
            )
        )


# ---------------------------------------------------------------------------------------------
# 3. Peers: PoseLib (a Python loop over instances) and kornia (batched)
# ---------------------------------------------------------------------------------------------


@dataclass
class LoopPeer:
    """A single-instance solver timed in a Python loop (PoseLib)."""

    name: str
    fn: Callable
    inputs: list[tuple]  # per-instance arguments
    to_solutions: Callable[[int, object], list[np.ndarray]]  # (instance, output) -> our unknowns
    note: str = ""


@dataclass
class BatchedPeer:
    """A batched torch solver (kornia), timed like ours at each batch size and dtype."""

    name: str
    fn: Callable  # fn(*inputs) -> output
    inputs: Callable[[int, torch.dtype], tuple]  # (batch, dtype) -> tensors on the device
    to_solutions: Callable[[object, int], tuple[np.ndarray, np.ndarray]]  # -> solutions [B, S, N], valid [B, S]
    note: str = ""


def relative_errors(case: Case, solutions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """geometry.relative_errors on the first len(solutions) instances, up to sign where the
    problem fixes the scale of its solutions only up to sign (the plan's `sign_flip`: the
    gauge's block changes sign, free unknowns such as a focal length do not)."""
    truth = case.truth[: solutions.shape[0]]
    return geometry.relative_errors(solutions, valid, truth, up_to_sign=case.module.PLAN.sign_flip)


def homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Normalize the last axis; zero vectors (kornia's missing 7-point roots) become NaN."""
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, vectors / norm, np.nan)


def null_coordinates(matrices: np.ndarray, null: np.ndarray, last: int) -> np.ndarray:
    """Matrices [n, S, 9] (row-major) in the span of the orthonormal null-space basis
    null [n, k, 9] -> our unknowns [n, S, last]: the coordinates c = null vec(M) divided by
    the coordinate of the basis element whose coefficient is 1 in the spec, c[:last] / c[last]."""
    c = np.einsum("nkj,nsj->nsk", null, matrices)
    with np.errstate(divide="ignore", invalid="ignore"):
        return c[..., :last] / c[..., last : last + 1]


def replicate_scene(case: Case, seed: int) -> dict | None:
    """The points behind the instances of tests/geometry.py. Problems in natural form have them
    in their parameters; for the null-space forms the scene is drawn again from the same seed in
    the same order and checked against the parameters. None if that no longer reproduces them."""
    n, params = case.params.shape[0], case.params
    natural = {"relpose_5pt": 5, "fundamental_7pt": 7, "homography_4pt": 4}
    if case.name == "p3p":
        return {"world": params[:, :9].reshape(n, 3, 3), "rays": params[:, 9:].reshape(n, 3, 3)}
    if case.name in natural:
        k = natural[case.name]
        return {"x1": homogeneous(params[:, : 2 * k].reshape(n, k, 2)),
                "x2": homogeneous(params[:, 2 * k : 4 * k].reshape(n, k, 2))}
    rng = np.random.default_rng(seed)
    if case.name == "relpose_5pt_nullspace":
        x1, x2, _ = geometry.two_view_scene(rng, n, 5)
        dim = 4
    elif case.name == "fundamental_7pt_nullspace":
        q1, q2, _ = geometry.two_view_scene(rng, n, 7)
        K1, K2 = geometry._random_calibration(rng, n), geometry._random_calibration(rng, n)
        x1, x2 = np.einsum("nij,npj->npi", K1, q1), np.einsum("nij,npj->npi", K2, q2)
        dim = 2
    elif case.name == "relpose_6pt_shared_focal":
        q1, q2, _ = geometry.two_view_scene(rng, n, 6)
        f = rng.uniform(0.5, 2.0, size=n)
        K = np.zeros((n, 3, 3))
        K[:, 0, 0] = K[:, 1, 1] = f
        K[:, 2, 2] = 1
        x1, x2 = np.einsum("nij,npj->npi", K, q1), np.einsum("nij,npj->npi", K, q2)
        dim = 3
    else:
        return None
    null = geometry.epipolar_null_space(x1, x2, dim)
    if not np.allclose(null.reshape(n, -1), params, rtol=0, atol=1e-12):
        return None
    return {"x1": x1, "x2": x2, "null": null}


def poselib_peers(case: Case, scene: dict, n: int) -> list[LoopPeer]:
    import poselib

    def pairs(a, b):
        return [(np.ascontiguousarray(a[i]), np.ascontiguousarray(b[i])) for i in range(n)]

    def essential(pose):  # PoseLib: x2 ~ R x1 + t, as in tests/geometry.py
        return (geometry.skew(pose.t) @ pose.R).reshape(9)

    if case.name == "p3p":
        world, rays = scene["world"][:n], scene["rays"][:n]
        bearings = rays / np.linalg.norm(rays, axis=-1, keepdims=True)

        def depths(i, poses):  # x_j = <R A_j + t, a_j> / |a_j|^2 along our (unnormalized) rays
            camera = [world[i] @ p.R.T + p.t for p in poses]
            return [np.sum(c * rays[i], axis=-1) / np.sum(rays[i] * rays[i], axis=-1) for c in camera]

        return [LoopPeer("PoseLib p3p", poselib.p3p, pairs(bearings, world), depths)]

    if case.name in ("relpose_5pt_nullspace", "relpose_5pt"):
        # Unit bearing vectors: the cheirality test of relpose_5pt assumes them.
        x1, x2 = (v[:n] / np.linalg.norm(v[:n], axis=-1, keepdims=True) for v in (scene["x1"], scene["x2"]))
        if case.name == "relpose_5pt":  # unknowns: E with |E| = 1, compared up to sign
            def from_matrices(i, matrices):
                return list(unit_rows(np.reshape(matrices, (-1, 9)))) if len(matrices) else []
        else:  # unknowns: null-space coordinates of E
            def from_matrices(i, matrices):
                if not len(matrices):
                    return []
                return list(null_coordinates(np.reshape(matrices, (1, -1, 9)), scene["null"][i : i + 1], 3)[0])

        return [
            LoopPeer("PoseLib essential_matrix_5pt", poselib.essential_matrix_5pt, pairs(x1, x2), from_matrices),
            LoopPeer("PoseLib relpose_5pt", poselib.relpose_5pt, pairs(x1, x2),
                     lambda i, poses: from_matrices(i, [essential(p) for p in poses]),
                     "poses after its cheirality test"),
        ]

    if case.name == "relpose_6pt_shared_focal":
        x1, x2, null = scene["x1"][:n], scene["x2"][:n], scene["null"]  # pixels [u, v, 1], pp at 0

        def unknowns(i, image_pairs):  # F = K^-1 [t]x R K^-1 -> (x, y) in the null space, w = 1 / f^2
            out = []
            for pair in image_pairs:
                f = pair.camera1.focal()
                k_inv = np.diag([1 / f, 1 / f, 1.0])
                F = (k_inv @ geometry.skew(pair.pose.t) @ pair.pose.R @ k_inv).reshape(1, 1, 9)
                xy = null_coordinates(F, null[i : i + 1], 2)[0, 0]
                out.append(np.array([xy[0], xy[1], 1 / f**2]))
            return out

        return [LoopPeer("PoseLib shared_focal_relpose_6pt", poselib.shared_focal_relpose_6pt, pairs(x1, x2), unknowns,
                         "focal lengths after its cheirality test")]
    return []


def kornia_peers(case: Case, scene: dict, device: str, compile: bool) -> list[BatchedPeer]:
    import kornia

    epipolar = kornia.geometry.epipolar
    if case.name not in ("relpose_5pt_nullspace", "relpose_5pt", "fundamental_7pt_nullspace", "fundamental_7pt",
                         "homography_4pt"):
        return []
    points = [torch.from_numpy(np.ascontiguousarray(scene[key][..., :2])) for key in ("x1", "x2")]

    def inputs(batch, dtype):
        return tuple(p[:batch].to(dtype).to(device) for p in points)

    def matrices_to_solutions(matrices, batch):
        """[B, S, 3, 3] (NaN or zero for missing roots) -> our unknowns and validity."""
        m = matrices.double().cpu().numpy().reshape(batch, -1, 9)
        if "null" in scene:
            last = 3 if case.name == "relpose_5pt_nullspace" else 1
            m = np.where(np.linalg.norm(m, axis=-1, keepdims=True) > 0, m, np.nan)
            solutions = null_coordinates(m, scene["null"][:batch], last)
        else:
            solutions = unit_rows(m)
        valid = np.isfinite(solutions).all(-1)
        return np.where(valid[..., None], solutions, 0.0), valid

    note = "batched, points in"
    if case.name in ("relpose_5pt_nullspace", "relpose_5pt"):
        peers = [BatchedPeer("kornia find_essential", epipolar.find_essential, inputs, matrices_to_solutions,
                             note + "; NaN slots for complex roots")]
        if case.name == "relpose_5pt_nullspace":
            peers.append(ours_from_points_peer(case, scene, device, compile))
        return peers
    if case.name.startswith("fundamental_7pt"):
        return [BatchedPeer("kornia find_fundamental 7POINT",
                            lambda a, b: epipolar.find_fundamental(a, b, method="7POINT"), inputs,
                            matrices_to_solutions, note + "; zero matrices for complex roots")]
    return [BatchedPeer("kornia find_homography_dlt", kornia.geometry.homography.find_homography_dlt, inputs,
                        lambda H, batch: matrices_to_solutions(H.unsqueeze(1), batch), note)]


def ours_from_points_peer(case: Case, scene: dict, device: str, compile: bool) -> BatchedPeer:
    """solvergen fed from points like kornia: SVD null space of the epipolar rows, then the solver."""
    solver = case.module.Solver(compile=compile)
    points = [torch.from_numpy(scene[key]) for key in ("x1", "x2")]

    def inputs(batch, dtype):
        return tuple(p[:batch].to(dtype).to(device) for p in points)

    def solve(x1, x2):
        a, b = x1.double(), x2.double()
        rows = (b.unsqueeze(-1) * a.unsqueeze(-2)).reshape(*a.shape[:-1], 9)  # vec(x2 x1^T), row-major
        null = torch.linalg.svd(rows, full_matrices=True).Vh[..., -4:, :]
        solutions, valid = solver(null.reshape(null.shape[0], -1).to(x1.dtype))
        return solutions, valid, null

    def to_solutions(output, batch):
        solutions, valid, null = output
        coefficients = torch.cat([solutions.double(), torch.ones_like(solutions[..., :1], dtype=torch.float64)], -1)
        E = torch.einsum("bsk,bkj->bsj", coefficients, null).cpu().numpy()
        unknowns = null_coordinates(E, scene["null"][:batch], 3)  # in the basis of the instance
        valid = valid.cpu().numpy() & np.isfinite(unknowns).all(-1)
        return np.where(valid[..., None], unknowns, 0.0), valid

    return BatchedPeer("solvergen + SVD null space", solve, inputs, to_solutions,
                       "batched, points in (torch SVD null space, then our solver)")


def peer_row(case: Case, ours: OursTimer, implementation: str, dtype: str, batch: int, us: float | None,
             solutions=None, valid=None, note: str = "") -> PeerRow:
    ours_same = ours.us_per_instance(case, dtype, batch)
    ours_one = ours.us_per_instance(case, dtype, 1)
    median = fail = mean = None
    if solutions is not None:
        median, fail, _ = error_summary(relative_errors(case, solutions, valid))
        mean = float(valid.sum(-1).mean())
    return PeerRow(
        case.name, implementation, dtype, batch, us, 1e6 / us if us else None,
        ours_same, us / ours_same if us and ours_same else None,
        ours_one, us / ours_one if us and ours_one else None,
        median, fail, mean, note,
    )


def log_peer(row: PeerRow) -> None:
    ratio = f"{row.ratio_same_batch:.3g}x ours" if row.ratio_same_batch else "-"
    err = f"{row.median_log10_error:.2f}" if row.median_log10_error is not None else "-"
    fail = f"{row.fail_share:.2%}" if row.fail_share is not None else "-"
    us = f"{row.us_per_instance:10.2f}" if row.us_per_instance else "         -"
    log(f"  peer {row.implementation:32s} {row.dtype} batch {row.batch:>7d}: {us} us/instance ({ratio}), "
        f"median log10 err {err}, fail {fail}")


def run_loop_peer(case: Case, peer: LoopPeer, ours: OursTimer, config: Config, results: Results) -> None:
    """Median over repeats of the time per instance of [peer.fn(*args) for args in inputs]."""
    peer.fn(*peer.inputs[0])  # warm up
    per_instance, outputs = [], None
    for _ in range(config.peer_loop_repeats):
        t0 = time.perf_counter()
        outputs = [peer.fn(*args) for args in peer.inputs]
        per_instance.append((time.perf_counter() - t0) / len(peer.inputs))
    solutions, valid = pad_solutions([peer.to_solutions(i, out) for i, out in enumerate(outputs)],
                                     case.truth.shape[1])
    note = f"Python loop over {len(peer.inputs)} instances, one thread" + (f"; {peer.note}" if peer.note else "")
    row = peer_row(case, ours, peer.name, "float64", len(peer.inputs), float(np.median(per_instance)) * 1e6,
                   solutions, valid, note)
    results.peers.append(row)
    log_peer(row)


def run_batched_peer(case: Case, peer: BatchedPeer, ours: OursTimer, config: Config, results: Results) -> None:
    for dtype_name, dtype in DTYPES.items():
        stop = None
        for batch in config.peer_batches:
            if batch > case.params.shape[0]:
                continue
            if stop:
                results.peers.append(peer_row(case, ours, peer.name, dtype_name, batch, None, note=f"skipped: {stop}"))
                continue
            args = peer.inputs(batch, dtype)
            try:
                with torch.no_grad():
                    timing, output = time_calls(lambda: peer.fn(*args), config)
            except RuntimeError as exc:  # out of memory
                stop = f"{type(exc).__name__} at batch {batch}"
                results.peers.append(peer_row(case, ours, peer.name, dtype_name, batch, None, note=f"skipped: {stop}"))
                continue
            solutions, valid = peer.to_solutions(output, batch)
            row = peer_row(case, ours, peer.name, dtype_name, batch, timing.median / batch * 1e6, solutions, valid,
                           peer.note)
            results.peers.append(row)
            log_peer(row)
            if timing.median > config.max_call_seconds:
                stop = f"a call at batch {batch} took {timing.median:.0f} s"


def bench_peers(case: Case, ours: OursTimer, config: Config, results: Results) -> None:
    if case.truth is None:
        return
    scene = replicate_scene(case, config.seed)
    if scene is None and case.name not in PEER_PROBLEMS:
        results.notes.append(f"{case.name}: no peer")
        return
    if scene is None:
        results.notes.append(f"{case.name}: could not reproduce the scene of tests/geometry.py; peers skipped")
        log(results.notes[-1])
        return
    n = min(config.peer_loop, case.params.shape[0])
    try:
        loop_peers = poselib_peers(case, scene, n)
    except ImportError:
        loop_peers = []
        results.notes.append("poselib not installed: no PoseLib rows")
    try:
        batched_peers = kornia_peers(case, scene, config.device, config.compile)
    except ImportError:
        batched_peers = []
        results.notes.append("kornia not installed: no kornia rows")
    if not loop_peers and not batched_peers:
        results.notes.append(f"{case.name}: no peer")
    elif not loop_peers and "poselib not installed: no PoseLib rows" not in results.notes:
        results.notes.append(f"{case.name}: PoseLib's Python API has no minimal solver for it; kornia only")
    for peer in loop_peers:
        run_loop_peer(case, peer, ours, config, results)
    for peer in batched_peers:
        run_batched_peer(case, peer, ours, config, results)


PEER_PROBLEMS = ("p3p", "relpose_5pt_nullspace", "relpose_6pt_shared_focal", "fundamental_7pt_nullspace",
                 "relpose_5pt", "fundamental_7pt", "homography_4pt")


# ---------------------------------------------------------------------------------------------
# 4. Machine information and outputs
# ---------------------------------------------------------------------------------------------


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other processes on the machine distort the timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# glibc malloc returns freed blocks above 128 KB to the system and maps them anew, page faults
# and all: torch's CPU operations on [1024, 20] float64 tensors (160 KB) then flip between two
# speeds up to 4x apart from one process to the next. Kept memory gives steady figures (the
# PyTorch CPU tuning guide's advice, with glibc's own settings instead of jemalloc/tcmalloc).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def steady_allocator() -> None:
    """Run this benchmark again (the same command line) with STEADY_MALLOC in its environment,
    unless it is there already (or not Linux, or SOLVERGEN_BENCH_SYSTEM_MALLOC=1);
    `machine_info` records the settings. Call it first in a script's main, only when run as a
    script: it replaces the process."""
    if (sys.platform != "linux" or os.environ.get("SOLVERGEN_BENCH_SYSTEM_MALLOC") == "1"
            or all(k in os.environ for k in STEADY_MALLOC)):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **STEADY_MALLOC})


def machine_info(device: str) -> dict:
    import solvergen

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "solvergen": solvergen.__version__,
            **{p: version(p) for p in ("torch", "numpy", "sympy", "poselib", "kornia", "matplotlib")},
        },
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "solvergen", "generated", "templates", "problems")),
        "device": device,
        "load_average_start": load_average(),
        "malloc_settings": {k: os.environ.get(k) for k in STEADY_MALLOC},
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def to_json(results: Results) -> dict:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(results))


def fmt(value, spec: str = ".2f", empty: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return empty
    return format(value, spec)


def fmt_time(us: float | None) -> str:
    """Microseconds with 3 significant digits."""
    if us is None:
        return "-"
    return f"{us:.3g}" if us < 1000 else f"{us:,.0f}"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.3g}{unit}"
    return f"{rate:.3g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: Results) -> str:
    m, c = results.machine, results.config
    v = m["versions"]
    out = [
        f"# solvergen benchmarks: {m['device']}{' (quick)' if c['quick'] else ''}"
        f"{', solvers built with compile=True (torch.compile)' if c.get('compile') else ''}",
        "",
        f"- Date: {m['date']}; commit `{(m['git_commit'] or '?')[:12]}`{' (with uncommitted changes)' if m['git_dirty'] else ''}",
        f"- CPU: {m['cpu']}, {m['cpu_cores']} cores, torch threads {m['torch_threads']}"
        + (f"; GPU: {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else ""),
        f"- OS: {m['os']}; Python {m['python']}; load average (1/5/15 min) at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')} (a load near the core count means other processes shared the CPU)",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- Timing: median of >= {c['min_repeats']} calls and >= {c['min_time']} s after {c['warmup']} warm-up call(s); "
        f"total run {results.total_seconds:.0f} s",
        "",
        "## Forward",
        "",
        "Microseconds per instance (instances per second), median call time / batch size. Instances from "
        "`tests/geometry.py`; float32 inputs are solved in float64 inside and returned as float32.",
        "",
    ]
    batches = sorted({r.batch for r in results.forward})
    cells = {(r.problem, r.dtype, r.batch): r for r in results.forward}
    problems = list(dict.fromkeys(r.problem for r in results.forward))
    rows = []
    for problem in problems:
        for dtype in DTYPES:
            row = [problem, dtype]
            for b in batches:
                r = cells.get((problem, dtype, b))
                if r is None or r.us_per_instance is None:
                    row.append("-" if r is None else r.note)
                else:
                    row.append(f"{fmt_time(r.us_per_instance)} ({fmt_rate(r.instances_per_s)}/s)")
            rows.append(row)
    out += [table(["problem", "dtype", *[f"batch {b}" for b in batches]], rows), ""]

    out += [
        "## Accuracy",
        "",
        "From the outputs of the largest timed batch. Error: per instance, the smallest relative error "
        "|x - truth| / |truth| over the valid solutions (inf without one). Failure: error > 1e-6; "
        "float32 inputs carry 1e-7 relative rounding, so also see the > 1e-3 column.",
        "",
        table(
            ["problem", "dtype", "instances", "median log10 error", "fail > 1e-6", "fail > 1e-3", "mean valid solutions"],
            [[r.problem, r.dtype, str(r.instances), fmt(r.median_log10_error), f"{r.fail_share:.2%}",
              f"{r.fail_share_1e3:.2%}", fmt(r.mean_valid_solutions)] for r in results.accuracy],
        ),
        "",
        "## Backward",
        "",
        f"Batch {c['backward_batch']}, float64. Losses: "
        + "; ".join(f"**{name}**: {text}" for name, text in BACKWARD_LOSSES.items())
        + ". IFT: the generated implicit-function backward; autograd: backpropagation through the "
        "forward computation (template solve, eigendecomposition, Newton steps). The two are timed "
        "alternately, call by call. Times are medians in ms; ratios are autograd / IFT (> 1: IFT is "
        "cheaper), of the medians, with the quartiles of the per-call ratios. Saved: unique storages "
        "saved for backward by the solver call. Non-finite: runs whose gradient had a non-finite entry.",
        "",
    ]
    by_mode = {(r.problem, r.loss, r.mode): r for r in results.backward}
    rows = []
    has_cuda = any(r.cuda_backward_peak_bytes is not None for r in results.backward)
    for ratio in results.backward_ratios:
        ift, auto = (by_mode[(ratio.problem, ratio.loss, mode)] for mode in ("ift", "autograd"))
        row = [
            ratio.problem, ratio.loss,
            fmt(ift.forward_backward_ms), fmt(auto.forward_backward_ms), fmt(ratio.forward_backward, ".3g"),
            fmt(ift.backward_ms), fmt(auto.backward_ms), fmt(ratio.backward, ".3g"),
            f"{ratio.backward_paired_p25:.3g}-{ratio.backward_paired_p75:.3g}",
            fmt(ift.saved_bytes / 2**20), fmt(auto.saved_bytes / 2**20), fmt(ratio.saved_bytes, ".3g"),
        ]
        if has_cuda:
            row += [fmt((ift.cuda_backward_peak_bytes or 0) / 2**20), fmt((auto.cuda_backward_peak_bytes or 0) / 2**20),
                    fmt(ratio.cuda_backward_peak, ".3g")]
        row += [f"{ift.nonfinite_runs}/{ift.runs}", f"{auto.nonfinite_runs}/{auto.runs}", str(ift.ill_conditioned)]
        rows.append(row)
    header = ["problem", "loss", "IFT fwd+bwd", "autograd fwd+bwd", "ratio", "IFT bwd", "autograd bwd", "ratio",
              "per-call ratio (quartiles)", "IFT saved MiB", "autograd saved MiB", "ratio"]
    if has_cuda:
        header += ["IFT bwd peak MiB", "autograd bwd peak MiB", "ratio"]
    header += ["non-finite IFT", "non-finite autograd", "IFT ill-conditioned"]
    out += [table(header, rows), ""]

    if results.peers:
        out += [
            "## Peers",
            "",
            "Same instances as above. PoseLib: a Python loop over single instances (its C++ solver per call, "
            "one thread). kornia: batched torch, fed the point correspondences, so for the null-space problems "
            "its time includes the null space (`solvergen + SVD null space` is ours fed the same way). "
            "peer/ours = peer time / solvergen time per instance (> 1: solvergen is faster), at the same batch "
            "size and dtype, and against solvergen at batch 1. Errors are measured in our unknowns, against "
            "the same ground truth: peer matrices are mapped into the null-space coordinates of the instance "
            "(null-space forms), or normalized and compared up to sign (natural forms); poses become depths "
            "(P3P) or F and w = 1/f^2 (6-point).",
            "",
            table(
                ["problem", "implementation", "dtype", "batch", "us/instance", "instances/s", "ours us/instance",
                 "peer/ours", "ours batch 1", "peer/ours b1", "median log10 error", "fail > 1e-6", "mean solutions", "note"],
                [[r.problem, r.implementation, r.dtype, str(r.batch), fmt_time(r.us_per_instance),
                  fmt_rate(r.instances_per_s), fmt_time(r.ours_us_same_batch), fmt(r.ratio_same_batch, ".3g"),
                  fmt_time(r.ours_us_batch1), fmt(r.ratio_batch1, ".3g"), fmt(r.median_log10_error),
                  fmt(r.fail_share * 100 if r.fail_share is not None else None, ".2f") + ("%" if r.fail_share is not None else ""),
                  fmt(r.mean_solutions), r.note] for r in results.peers],
            ),
            "",
        ]
    if results.notes:
        out += ["## Notes", "", *[f"- {n}" for n in results.notes], ""]
    return "\n".join(out)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    problems = list(dict.fromkeys(r.problem for r in results.forward))
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(problems)}
    for problem in problems:
        for dtype, style in (("float64", "-"), ("float32", "--")):
            rows = sorted((r for r in results.forward if r.problem == problem and r.dtype == dtype
                           and r.instances_per_s and r.note != "peer reference"), key=lambda r: r.batch)
            if rows:
                ax.plot([r.batch for r in rows], [r.instances_per_s for r in rows], style, marker=".",
                        color=colors[problem], label=f"{problem} {dtype}")
    # Peers: marker = implementation, colour = problem, faded = float32.
    markers = {"PoseLib": "*", "kornia": "x", "solvergen + SVD": "o"}
    used = set()
    for r in results.peers:
        if not r.instances_per_s:
            continue
        kind = next((key for key in markers if r.implementation.startswith(key)), None)
        marker = markers.get(kind, "s")
        used.add(kind)
        ax.scatter([r.batch], [r.instances_per_s], marker=marker, s=80 if marker == "*" else 40,
                   color=colors.get(r.problem, "k"), alpha=1.0 if r.dtype == "float64" else 0.45,
                   facecolors="none" if marker == "o" else None)
    handles, labels = ax.get_legend_handles_labels()
    names = {"PoseLib": "PoseLib (Python loop)", "kornia": "kornia (batched)",
             "solvergen + SVD": "solvergen + SVD null space"}
    for kind in [k for k in markers if k in used]:
        handles.append(plt.Line2D([], [], linestyle="none", marker=markers[kind], color="0.3",
                                  markerfacecolor="none" if markers[kind] == "o" else "0.3", markersize=8))
        labels.append(f"{names[kind]}, colour of its problem")
    if used:
        handles.append(plt.Line2D([], [], linestyle="none", marker="x", color="0.3", alpha=0.45, markersize=8))
        labels.append("faded marker: float32")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (PoseLib: instances in a Python loop)")
    ax.set_ylabel("instances / second")
    m = results.machine
    ax.set_title(f"solvergen forward throughput, {m['device']}: {m.get('gpu', m['cpu'])}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small batches, few repeats (< 1 minute)")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="problem names (default: all in problems/)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--no-peers", action="store_true", help="skip PoseLib and kornia")
    parser.add_argument("--no-backward", action="store_true", help="skip the backward comparison")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--compile", action="store_true",
                        help="build the solvers with compile=True (torch.compile); writes <device>-compiled.*")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    if argv is None:  # run as a script (a re-run would replace a calling process)
        steady_allocator()
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config.make(args.device, args.quick)
    config.seed = args.seed
    config.compile = args.compile
    device_name = args.device.replace(":", "")
    stem = device_name + ("-compiled" if args.compile else "") + ("-quick" if args.quick else "")
    results = Results(config=dataclasses.asdict(config), machine=machine_info(args.device))
    m = results.machine
    log(f"solvergen benchmarks on {args.device} ({m.get('gpu', m['cpu'])}, {m['cpu_cores']} cores, "
        f"torch {m['versions']['torch']}, {m['torch_threads']} threads){' [quick]' if args.quick else ''}")

    names = discover_problems(args.problems)
    ours = OursTimer(config, results)
    n_instances = max(config.batches)
    for index, name in enumerate(names, 1):
        log(f"[{index}/{len(names)}] {name}: generating {n_instances} instances")
        case = load_case(name, n_instances, config.seed, results)
        if case is None:
            continue
        shape = tuple(getattr(case.module, "TEMPLATE_SHAPE", None) or (0, 0))
        template = f"template {shape[0]} x {shape[1]}" if shape[0] else "no template"
        log(f"[{index}/{len(names)}] {name}: {case.module.NUM_SOLUTIONS} solutions, {template}")
        if config.compile:
            compile_first_call(case, config, results)
        bench_forward(case, ours, config, results)
        if not args.no_backward:
            bench_backward(case, config, results)
        if not args.no_peers:
            bench_peers(case, ours, config, results)
        del case
        ours.tensors.clear()
        if config.device.startswith("cuda"):
            torch.cuda.empty_cache()

    results.total_seconds = time.perf_counter() - _START
    results.machine["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.md", args.out / f"throughput_{stem}.png"
    json_path.write_text(json.dumps(to_json(results), indent=1) + "\n")
    md_path.write_text(markdown(results))
    try:
        plot(results, png_path)
    except ImportError:
        log("matplotlib not installed: no plot")
        png_path = None
    log(f"wrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}, "
        f"{md_path.name}{', ' + png_path.name if png_path else ''} in {results.total_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
