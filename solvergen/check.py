"""`solvergen check SPEC`: what the field reports for a new solver, on random instances.

Instances come from the spec's sampler (with the ground truth when it returns
`(parameters, unknowns)`) or, without one, from standard normal parameters. Reported: the
solution count, the real solutions found per instance, the log10 relative residual of the
declared equations at the valid solutions (max_k |h_k| / sum of |terms of h_k|), the log10
relative error of the closest valid solution to the ground truth, the failure share and the
time per instance of the batched forward.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SpecError
from .generate import load
from .problem import Problem
from .runtime.forward import relative_residuals
from .spec import read_spec

FOUND = 1e-6  # the truth counts as found when a valid solution is this close (relative error)


@dataclass(frozen=True)
class CheckResult:
    name: str
    num_solutions: int
    template: str
    instances: int
    source: str  # "the spec's sampler" or "standard normal parameters"
    dtype: str
    real_found: np.ndarray  # [n] valid solutions per instance
    log10_residual: np.ndarray  # over the valid solutions of all instances
    log10_error: np.ndarray | None  # [n] closest valid solution to the truth (inf: none valid)
    seconds_per_instance: float

    @property
    def failure_share(self) -> float:
        """Share of instances where the truth was not found (error above FOUND, or no valid
        solution); without ground truth, where no valid solution was found."""
        if self.log10_error is not None:
            return float(np.mean(~(self.log10_error <= np.log10(FOUND))))
        return float(np.mean(self.real_found == 0))

    def describe(self) -> str:
        lines = [
            f"{self.name}: {self.num_solutions} solutions ({self.template}), {self.instances} instances "
            f"from {self.source}, {self.dtype}",
            f"  real solutions found: mean {self.real_found.mean():.2f} per instance "
            f"(min {self.real_found.min()}, max {self.real_found.max()})",
        ]
        if self.log10_residual.size:
            lines.append(f"  log10 relative residual: median {np.median(self.log10_residual):.1f}, "
                         f"95th percentile {np.percentile(self.log10_residual, 95):.1f} "
                         f"({self.log10_residual.size} valid solutions)")
        if self.log10_error is not None:
            finite = self.log10_error[np.isfinite(self.log10_error)]
            if finite.size:
                lines.append(f"  log10 relative error to ground truth: median {np.median(finite):.1f}, "
                             f"95th percentile {np.percentile(finite, 95):.1f} (closest valid solution)")
            lines.append(f"  failures: {100 * self.failure_share:.2f}% (no valid solution within "
                         f"{FOUND:g} of the truth)")
        else:
            lines.append(f"  failures: {100 * self.failure_share:.2f}% (no valid solution; "
                         "no ground truth: give the spec a sampler returning (parameters, unknowns))")
        lines.append(f"  time: {1e6 * self.seconds_per_instance:.1f} us per instance "
                     f"(batch {self.instances}, {torch.get_num_threads()} CPU threads)")
        return "\n".join(lines)

    def plot(self, path) -> None:
        """The histogram of log10 residuals and errors (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.linspace(-17, 1, 73)
        ax.hist(np.clip(self.log10_residual, -17, 1), bins=bins, alpha=0.6, label="relative residual")
        if self.log10_error is not None:
            ax.hist(np.clip(self.log10_error, -17, 1), bins=bins, alpha=0.6,
                    label="relative error to the truth (1 = not found)")
        ax.set_xlabel("log10")
        ax.set_ylabel("count")
        ax.set_title(f"{self.name}: {self.instances} instances, {self.dtype}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def draw_instances(problem, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """n instances: parameters [n, M] and, when the sampler gives it, the truth [n, N]."""
    if problem.sampler is None:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, len(problem.parameters))), None, "standard normal parameters"
    rng = random.Random(seed)
    params, truth = [], []
    for _ in range(n):
        p, x = problem.sample(rng)
        params.append([float(v) for v in p])
        truth.append(None if x is None else [float(v) for v in x])
    if any(t is None for t in truth):
        truth = None
    return np.array(params), (np.array(truth) if truth is not None else None), "the spec's sampler"


def check(spec_path, n: int = 2000, seed: int = 0, dtype=torch.float64, out_dir=None, **load_options) -> CheckResult:
    """Generate `spec_path` if needed and measure its solver on `n` random instances."""
    if n < 1:
        raise SpecError(f"--n must be at least 1, got {n}")
    spec = read_spec(Path(spec_path))
    if not isinstance(spec.problem, Problem):
        tests = "tests/test_size_generic.py" if spec.problem.is_indexed else "tests/test_declarative.py"
        raise SpecError(f"solvergen check measures Problem solvers; {spec.problem.name} is an "
                        f"{type(spec.problem).__name__} layer (the tests of such layers: {tests})")
    solver = load(spec_path, out_dir, **load_options)
    params, truth, source = draw_instances(spec.problem, n, seed)
    a = torch.from_numpy(params).to(dtype)
    with torch.no_grad():
        solver(a[: min(n, 8)])  # warm-up: tables, level programs
        start = time.perf_counter()
        solutions, valid = solver(a)
        seconds = (time.perf_counter() - start) / n
        residual = relative_residuals(solver.plan, a.double(), solutions.double())
    x, valid = solutions.double().numpy(), valid.numpy()
    log10_residual = np.log10(np.maximum(residual.numpy()[valid], 1e-17))
    log10_error = None
    if truth is not None:
        err = np.linalg.norm(x - truth[:, None, :], axis=-1)
        if solver.plan.sign_flip:
            flipped = x * np.asarray(solver.plan.sign_flip)
            err = np.minimum(err, np.linalg.norm(flipped - truth[:, None, :], axis=-1))
        err = err / np.maximum(np.linalg.norm(truth, axis=-1), 1e-300)[:, None]
        err = np.where(valid, err, np.inf).min(axis=1)
        log10_error = np.log10(np.maximum(err, 1e-17))
    rows, cols = solver.plan.template_shape
    template = f"template {rows}x{cols}" if rows else "no template"
    return CheckResult(spec.problem.name, solver.plan.num_solutions, template, n, source,
                       str(dtype).replace("torch.", ""), valid.sum(axis=1), log10_residual,
                       log10_error, seconds)


def run_check(args) -> CheckResult:
    """The `solvergen check` command (see cli.py)."""
    result = check(args.spec, n=args.n, seed=args.seed, dtype=getattr(torch, args.dtype),
                   out_dir=args.out, budget=args.budget)
    if args.plot:
        try:
            result.plot(args.plot)
        except ImportError:
            raise SpecError("--plot needs matplotlib (pip install matplotlib)") from None
    return result
