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
    if linear.free:  # the declared unknowns from [block, free]: cat([x_block, x_free])[..., assemble]
        order = linear.block + linear.free
        tables["assemble"] = long(sorted(range(len(order)), key=order.__getitem__))
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
    ok = torch.ones_like(c[:, 0], dtype=torch.bool)
    if parallel.differentiated(square):  # rank-deficient rows: a full-rank stand-in (parallel.differentiated)
        with torch.no_grad():
            ok = _full_rank(torch.linalg.qr(square)[1], rank)
        stand_in = torch.cat([torch.eye(n, rank, dtype=c.dtype, device=c.device), tables["null_mix"]], dim=1)
        square = torch.where(ok[:, None, None], square, stand_in)
    q, r = parallel.per_matrix(torch.linalg.qr, square)
    ok = ok & _full_rank(r, rank)
    rhs = c.new_zeros(batch, rank).index_copy_(1, tables["rhs_positions"], -c.index_select(1, tables["rhs_sources"]))
    if linear.homogeneous:
        particular = c.new_zeros(batch, n)
    else:
        # L x = b with L^T = Q1 R1: the least-norm solution x_p = Q1 R1^-T b.
        y = torch.linalg.solve_triangular(r[:, :rank, :rank].transpose(1, 2), rhs.unsqueeze(-1), upper=False)
        particular = (q[:, :, :rank] @ y).squeeze(-1)
    return matrix, rhs, q[:, :, rank:], particular, ok


def _full_rank(r, rank):
    """Whether the first `rank` columns of the QR's R have full rank (relative to its largest pivot)."""
    pivots = r.diagonal(dim1=-2, dim2=-1)[:, :rank].abs()
    return torch.isfinite(pivots).all(dim=-1) & (pivots.amin(dim=-1) > 1e-10 * pivots.amax(dim=-1))


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
    q = q[..., 0]
    if parallel.differentiated(q):  # q = 0 cannot be scaled; divide by 1 there (parallel.differentiated)
        q = torch.where(q == 0, torch.full_like(q, float("inf")), q)
    ratio = -c[:, gauge.constant].unsqueeze(-1) / q  # the gauge is q(x) + c[constant] = 0
    if gauge.degree % 2 == 0:
        ok = ratio > 0
        scale = ratio.clamp_min(torch.finfo(x.dtype).tiny) ** (1.0 / gauge.degree)
    else:
        ok = torch.isfinite(ratio)
        scale = ratio.sign() * ratio.abs() ** (1.0 / gauge.degree)
    return x * scale.unsqueeze(-1), ok & torch.isfinite(scale)
