"""Differentiate through a black-box combinatorial solver (Vlastelica et al. 2020, Rolinek et al. 2020).

    layer = solvergen.blackbox(solve, lambda_=20.0)   # solve(weights [B, ...]) -> solutions [B, ...]
    y = layer(weights)                               # forward: one call of solve on the whole batch
    loss(y).backward()                               # backward: one more call, on weights + lambda_ * dL/dy

`solve` is any function that minimises a linear cost over a discrete set, per instance of a batch:
y(w) = argmin_{y in Y} w . y, with the solution y in the space of the costs w (same shape: a
permutation matrix for [n, n] assignment costs, a vertex indicator for vertex costs on a grid, ...).
Its gradient is zero almost everywhere; the backward replaces it by the exact gradient of a
piecewise-linear interpolation of w -> L(y(w)) (Algorithm 1 of blackbox_graph_matching.md):

    w' = w + lambda_ * dL/dy,        dL/dw := -(y(w) - y(w')) / lambda_.

lambda_ is the interpolation range. The perturbed costs w' move every cost that the loss would
like chosen less (dL/dy > 0) up and the others down, by lambda_ * |dL/dy|; the gradient is the
difference of the two solutions. A lambda_ too small for the gaps between the costs of competing
solutions leaves y(w') = y(w), hence a zero gradient; a large one compares with far-away solutions
(a smoother, less local gradient). It is measured in units of cost per unit of dL/dy, so it
scales with the costs and with the loss normalisation: a loss averaged over a batch of B divides
dL/dy, and so the effective range, by B. The default 20 lies in the range of the papers (80 in
blackbox_graph_matching.md); a model that learns the scale of its costs absorbs much of the choice
(examples/blackbox_matching.py trains alike with 5, 20 and 80). `solve` must be deterministic: an
instance whose loss gradient is zero is solved again on the same costs and must get the same solution.

Batching: `solve` receives the whole batch (batch dimension first) in one call, as a torch tensor
or, with numpy=True, as a numpy array on the CPU; it may return either, converted back to the
dtype and device of the weights. With threads=N the batch is split along dim 0 into N chunks,
solved concurrently on a thread pool and concatenated: useful for solvers that release the GIL.

Non-finite values: an instance (index along dim 0) whose costs, or whose perturbed costs in the
backward, contain NaN or +-inf has those entries replaced by 0 before `solve` sees them, its
solution is the one of the replaced costs, and its gradient is zero; the other instances are
unaffected. Forbidden choices belong inside `solve` (e.g. a mask), not in infinite costs.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["Blackbox", "blackbox"]

DEFAULT_LAMBDA = 20.0


def blackbox(solve: Callable, lambda_: float = DEFAULT_LAMBDA, *, numpy: bool = False,
             threads: int | None = None) -> Blackbox:
    """An nn.Module y = solve(weights) whose backward is the blackbox gradient (module docstring).

    solve:    weights [B, ...] -> solutions [B, ...] (same shape), one call per batch (or chunk).
    lambda_:  the interpolation range, a positive finite number (default 20; module docstring).
    numpy:    pass numpy arrays (on the CPU) to solve instead of torch tensors.
    threads:  None (one call) or N: the batch in N chunks along dim 0 on a thread pool.
    """
    return Blackbox(solve, lambda_, numpy=numpy, threads=threads)


class Blackbox(nn.Module):
    """The module returned by `blackbox`: forward(weights [B, ...]) -> solutions [B, ...]."""

    def __init__(self, solve: Callable, lambda_: float = DEFAULT_LAMBDA, *, numpy: bool = False,
                 threads: int | None = None):
        super().__init__()
        if not callable(solve):
            raise TypeError(f"blackbox: solve must be callable, got {type(solve).__name__}")
        if (isinstance(lambda_, bool) or not isinstance(lambda_, numbers.Real)
                or not (math.isfinite(lambda_) and lambda_ > 0)):
            raise ValueError(f"blackbox: lambda_ must be a positive finite number, got {lambda_!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"blackbox: threads must be None or a positive int, got {threads!r}")
        self.solve, self.lambda_, self.numpy, self.threads = solve, float(lambda_), bool(numpy), threads

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point() or weights.dim() < 1:
            raise TypeError("blackbox: weights must be a floating-point torch tensor with the batch "
                            f"dimension first, got {_describe(weights)}")
        return _BlackboxFunction.apply(weights, self._call, self.lambda_)

    def extra_repr(self) -> str:
        name = getattr(self.solve, "__name__", type(self.solve).__name__)
        return f"solve={name}, lambda_={self.lambda_}, numpy={self.numpy}, threads={self.threads}"

    def _call(self, weights: torch.Tensor) -> torch.Tensor:
        """solve on (finite) weights, in `threads` chunks along dim 0; solutions like the weights."""
        chunks = torch.tensor_split(weights, max(1, min(self.threads or 1, len(weights))))
        inputs = [chunk.cpu().numpy() if self.numpy else chunk for chunk in chunks]
        if len(inputs) == 1:
            outputs = [self.solve(inputs[0])]
        else:
            with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
                outputs = list(pool.map(self.solve, inputs))
        return torch.cat([_solution(output, chunk) for output, chunk in zip(outputs, chunks)])


class _BlackboxFunction(torch.autograd.Function):
    """Algorithm 1: the forward solves once; the backward solves once more on w + lambda_ * grad."""

    @staticmethod
    def forward(ctx, weights, call, lambda_):
        solution = call(_zero_non_finite(weights))
        ctx.save_for_backward(weights, solution)
        ctx.call, ctx.lambda_ = call, lambda_
        return solution

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weights, solution = ctx.saved_tensors
        perturbed = _zero_non_finite(weights) + ctx.lambda_ * grad
        finite = _finite_instances(weights) & _finite_instances(perturbed)
        perturbed_solution = ctx.call(_zero_non_finite(perturbed))
        gradient = (perturbed_solution - solution) / ctx.lambda_  # = -(y(w) - y(w')) / lambda_
        return torch.where(finite, gradient, 0), None, None


def _zero_non_finite(x: torch.Tensor) -> torch.Tensor:
    """A copy of x (solve may overwrite it) with NaN and +-inf replaced by 0."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _finite_instances(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, ..., 1] (broadcasts against x): whether instance b of x has only finite entries."""
    finite = torch.isfinite(x).unsqueeze(-1).flatten(1).all(1)
    return finite.view((-1,) + (1,) * (x.dim() - 1))


def _solution(output, chunk: torch.Tensor) -> torch.Tensor:
    """The solution `output` of solve(chunk) as a tensor with the shape, dtype and device of chunk."""
    if not isinstance(output, (torch.Tensor, np.ndarray)):
        raise TypeError(f"blackbox: solve must return a numpy array or a torch tensor, got {type(output).__name__}")
    if tuple(output.shape) != tuple(chunk.shape):
        raise ValueError(f"blackbox: solve returned shape {tuple(output.shape)} for weights of shape "
                         f"{tuple(chunk.shape)}; a solution must have the shape of its weights")
    return torch.as_tensor(output).to(dtype=chunk.dtype, device=chunk.device)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-d tensor of {x.dtype}"
    return type(x).__name__
