"""The linear block L x = b of a natural formulation: its null space, and the gauge.

`linear` arguments are the plan's `LinearBlock`; `tables` are its tensors (`tensors`).
"""
from __future__ import annotations

import torch

from . import equations, parallel
from .plan import LinearBlock


def tensors(linear: LinearBlock, device, dtype) -> dict:
    """The linear block's tables as tensors on `device`."""

    def long(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    tables = dict(
        matrix_positions=long(linear.matrix_positions),
        matrix_sources=long(linear.matrix_sources),
        rhs_positions=long(linear.rhs_positions),
        rhs_sources=long(linear.rhs_sources),
        null_mix=torch.tensor(linear.null_mix, dtype=dtype, device=device),
        used_parameters=long(linear.used_parameters),
    )
    if linear.gauge is not None:
        tables["gauge"] = equations.system_tensors(linear.gauge.equations, device, dtype)
        tables["gauge_coefficients"] = long(linear.gauge.coefficients)
    return tables


def null_space(c, linear, tables):
    """The linear block L x = b ([B, r, N], [B, r]) from the declared coefficients c, a basis
    N [B, N, k] of its null space (orthonormal), the particular solution x_p [B, N] (zeros for a
    homogeneous block), and the rows [B] where L had full rank."""
    batch, rank = c.shape[0], linear.rank
    n = len(linear.null_mix)
    entries = c.index_select(1, tables["matrix_sources"])
    matrix = c.new_zeros(batch, rank * n).index_copy_(1, tables["matrix_positions"], entries)
    matrix = matrix.view(batch, rank, n)
    # QR of the square [L^T | G]: the first `rank` columns of Q span the row space of L, the
    # others its null space (orthonormal, in a generic basis).
    square = torch.cat([matrix.transpose(1, 2), tables["null_mix"].expand(batch, -1, -1)], dim=2)
    q, r = parallel.per_matrix(torch.linalg.qr, square)
    pivots = r.diagonal(dim1=-2, dim2=-1)[:, :rank].abs()
    ok = torch.isfinite(pivots).all(dim=-1) & (pivots.amin(dim=-1) > 1e-10 * pivots.amax(dim=-1))
    rhs = c.new_zeros(batch, rank).index_copy_(1, tables["rhs_positions"], -c.index_select(1, tables["rhs_sources"]))
    if linear.homogeneous:
        particular = c.new_zeros(batch, n)
    else:
        # L x = b with L^T = Q1 R1: the least-norm solution x_p = Q1 R1^-T b.
        y = torch.linalg.solve_triangular(r[:, :rank, :rank].transpose(1, 2), rhs.unsqueeze(-1), upper=False)
        particular = (q[:, :, :rank] @ y).squeeze(-1)
    return matrix, rhs, q[:, :, rank:], particular, ok


def reduced_inputs(a, null, particular, linear, tables):
    """The inputs of the reduced equations' coefficients: [N flattened, x_p (inhomogeneous
    blocks), the declared parameters they use]."""
    inputs = [null.flatten(1)] + ([] if linear.homogeneous else [particular])
    return torch.cat(inputs + [a.index_select(1, tables["used_parameters"])], dim=1)


def linear_error(matrix, rhs, x):
    """Relative residual of the linear block at x [B, S, N]: [B, S]."""
    h = x @ matrix.transpose(1, 2) - rhs.unsqueeze(1)
    scale = x.abs() @ matrix.abs().transpose(1, 2) + rhs.abs().unsqueeze(1)
    return equations.relative_error(h, scale)


def rescale_to_gauge(x, c, gauge, tables):
    """Scale each point so that the gauge equation q(x) = c holds: the positive root for an
    even degree (one representative of +-x), the real root for an odd one. Returns the points
    and where the scaling exists."""
    q_coefficients = c.index_select(1, tables["gauge_coefficients"])
    q, _, _ = equations.evaluate(equations.prepare(q_coefficients, tables["gauge"]), x, tables["gauge"])
    ratio = -c[:, gauge.constant].unsqueeze(-1) / q[..., 0]  # the gauge is q(x) + c[constant] = 0
    if gauge.degree % 2 == 0:
        ok = ratio > 0
        scale = ratio.clamp_min(torch.finfo(x.dtype).tiny) ** (1.0 / gauge.degree)
    else:
        ok = torch.isfinite(ratio)
        scale = ratio.sign() * ratio.abs() ** (1.0 / gauge.degree)
    return x * scale.unsqueeze(-1), ok & torch.isfinite(scale)
