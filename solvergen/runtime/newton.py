"""Newton polishing: Gauss-Newton steps on a system's equations, rows scaled by their size."""
from __future__ import annotations

import torch

from . import dense, equations, parallel

CONVERGED = 4.0  # relative residual, in units of roundoff, below which Newton stops


def polish(c, x, active, steps, system):
    """Gauss-Newton steps on the system's equations (rows scaled by their size) for the
    `active` points; a step is kept only where it lowers the relative residual.
    Returns the points and their relative residual.

    A point whose relative residual is already at the rounding level (`CONVERGED` units of
    roundoff) gains nothing from a step and takes none. On the CPU each step runs only on the
    instances that still have such a point (a host synchronization costs nothing there); after
    the first step these are a minority, and dh/dx is evaluated for them only. Inside a compiled
    graph (compile=True) every step runs on all points, masked: a data-dependent shape would split
    the graph."""
    prepared = equations.prepare(c, system, jacobian=True)
    h, scale, jacobian = equations.evaluate(prepared, x, system, jacobian=True)
    error = equations.relative_error(h, scale)
    converged = CONVERGED * torch.finfo(x.dtype).eps
    for _ in range(steps):
        todo = active & (error > converged)
        if not parallel.host_sync_is_free(x.device) or torch.compiler.is_compiling():
            rows = None
        else:
            rows = todo.any(dim=-1).nonzero().squeeze(-1)
            if len(rows) == 0:
                break
            if len(rows) > 0.75 * len(x):  # gathering would cost more than it saves
                rows = None
        state = (x, h, scale, error)
        if rows is None:
            x, h, scale, error = newton_step(prepared, *state, jacobian, todo, system)
        else:
            subset = newton_step(
                {key: value.index_select(0, rows) for key, value in prepared.items()},
                *(value.index_select(0, rows) for value in state),
                None if jacobian is None else jacobian.index_select(0, rows),
                todo.index_select(0, rows),
                system,
            )
            x, h, scale, error = (value.index_copy(0, rows, part) for value, part in zip(state, subset))
        jacobian = None  # at the new points: evaluated by the next step, for its rows only
    return x, error


def newton_step(prepared, x, h, scale, error, jacobian, todo, system):
    """One Gauss-Newton step for the `todo` points, kept where it lowers the relative residual:
    the new x, h, scale and relative residual. `jacobian`: dh/dx at x, or None to evaluate it."""
    if jacobian is None:
        _, _, jacobian = equations.evaluate(prepared, x, system, jacobian=True, residual=False)
    row = scale.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1)
    scaled = jacobian / row
    residual = torch.where(todo.unsqueeze(-1), h / row.squeeze(-1), torch.zeros_like(h))
    if torch.is_grad_enabled() and (x.requires_grad or prepared["c"].requires_grad):
        # The other slots solve a harmless system (no NaN, not even in autograd's backward).
        identity = torch.eye(system["equations"], system["unknowns"], dtype=x.dtype, device=x.device)
        scaled = torch.where(todo[..., None, None], scaled, identity)
    # (Without autograd, a singular system in another slot gives a NaN step there, which the
    # residual test below rejects; a zero residual gives a zero step.)
    if system["equations"] == system["unknowns"]:
        delta = dense.small_solve(scaled, residual)
    else:
        transposed = scaled.transpose(-1, -2).contiguous()  # (bmm copies strided operands per matrix)
        delta = dense.small_solve(transposed @ scaled, (transposed @ residual.unsqueeze(-1)).squeeze(-1))
    candidate = x - delta
    h1, scale1, _ = equations.evaluate(prepared, candidate, system)
    error1 = equations.relative_error(h1, scale1)
    better = todo & (error1 < error)  # False where error1 is NaN
    x = torch.where(better.unsqueeze(-1), candidate, x)
    h = torch.where(better.unsqueeze(-1), h1, h)
    scale = torch.where(better.unsqueeze(-1), scale1, scale)
    error = torch.where(better, error1, error)
    return x, h, scale, error
