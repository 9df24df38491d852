"""The backward pass: the implicit function theorem on the declared equations, per valid
solution; nothing is differentiated through QR, SVD or the eigendecomposition."""
from __future__ import annotations

import torch

from . import compiled as compilation
from . import dense, equations, forward, parallel


def implicit_vjp(a, x, valid, c, grad, cond_max, plan, system):
    """Gradient wrt the parameters of <grad, solutions> by the implicit function theorem.

    Per valid solution that receives a non-zero gradient, with J = dh/dx (K x N, rows scaled to
    unit norm): w = J^-T grad when K == N, and w = J (J^T J)^-1 grad when K > N (Theorem 1 of
    MinBackProp, by `dense.gram_solve`); then
    d<grad, x>/da = -sum_k w_k dh_k/da. Solutions whose Jacobian is singular or whose estimated
    condition number exceeds `cond_max` contribute zero; their number is returned with the
    gradient.
    """
    n, k = plan.num_unknowns, plan.num_equations
    batch, slots = valid.shape
    grad = grad.reshape(-1, n)
    usable = valid.reshape(-1) & (grad != 0).any(dim=-1)
    # The (instance, solution) pairs to differentiate: on the CPU only the usable ones (after
    # `select`, one per instance; a host synchronization costs nothing there); elsewhere all of
    # them, masked, to avoid one.
    if parallel.host_sync_is_free(a.device):
        pairs = usable.nonzero().squeeze(-1)
    else:
        pairs = torch.arange(batch * slots, device=a.device)
    instance = pairs // slots
    usable = usable.index_select(0, pairs)
    g = torch.where(usable.unsqueeze(-1), grad.index_select(0, pairs), torch.zeros_like(grad[:1]))
    tiny = torch.finfo(a.dtype).tiny
    if system["dense"] and len(pairs) > batch:  # several pairs per instance: per instance, then the pairs
        prepared = equations.prepare(c, system, residual=False, jacobian=True)
        _, _, jacobian = equations.evaluate(prepared, x, system, jacobian=True, residual=False)
        jacobian = jacobian.flatten(0, 1).index_select(0, pairs)
        x = x.reshape(-1, n).index_select(0, pairs)
    elif system["dense"]:  # about one per instance (after `select`): C of each pair times dm/dx
        x = x.reshape(-1, n).index_select(0, pairs)
        matrix = equations.coefficient_matrix(c.index_select(0, instance), system)
        monomials = equations.monomial_values(x, system, below_top=True)  # [P_below, pairs]
        derivatives = monomials.index_select(0, system["derivative_source"]) * system["derivative_scale"]
        derivatives = derivatives.t().contiguous().view(len(pairs), system["monomials"], n)  # [pairs, P, N]
        jacobian = matrix @ derivatives
    else:  # terms per point anyway: only the pairs
        x = x.reshape(-1, n).index_select(0, pairs)
        monomials = equations.monomial_values(x, system, below_top=True)
        factor = equations.derivative_factors(c, system).index_select(0, instance)
        jacobian = equations.sparse_jacobian(monomials, factor, system).view(-1, k, n)
    a = a.index_select(0, instance)
    # Rows of J scaled to unit norm (this scales w, not the result); condition numbers are those
    # of J with equilibrated columns.
    row = torch.linalg.vector_norm(jacobian, dim=-1).clamp_min(tiny)  # [P, K]
    jacobian = jacobian.div_(row.unsqueeze(-1))  # (a fresh tensor in every branch)
    if k == n:
        column = torch.linalg.vector_norm(jacobian, dim=-2).clamp_min(tiny)
        scaled = jacobian / column.unsqueeze(-2)
        inverse, invertible = dense.small_inverse(scaled)
        condition = torch.linalg.matrix_norm(scaled) * torch.linalg.matrix_norm(inverse)
        w = (inverse.transpose(-1, -2) @ (g / column).unsqueeze(-1)).squeeze(-1)
    else:
        u, invertible, condition = dense.gram_solve(jacobian.transpose(-1, -2) @ jacobian, g)
        w = (jacobian @ u.unsqueeze(-1)).squeeze(-1)
    good = usable & invertible & (condition <= cond_max) & torch.isfinite(w).all(dim=-1)
    skipped = (usable & ~good).sum()
    w = torch.where(good.unsqueeze(-1), w, torch.zeros_like(w)) / row  # unused pairs: w = 0
    contribution = -plan.parameter_vjp(x, a, w)
    contribution = torch.where(good.unsqueeze(-1), contribution, torch.zeros_like(contribution))
    return contribution.new_zeros(batch, plan.num_parameters).index_add_(0, instance, contribution), skipped


class ImplicitFunction(torch.autograd.Function):
    """Forward: the solver without autograd. Backward: the implicit function theorem."""

    @staticmethod
    def forward(ctx, params, solver):
        a = params.detach().to(solver.compute_dtype)
        x, valid, c = forward.solve(a, solver)
        ctx.save_for_backward(a, x, valid, c)
        ctx.solver = solver
        ctx.dtype = params.dtype
        ctx.mark_non_differentiable(valid)
        return x.to(params.dtype), valid

    @staticmethod
    def backward(ctx, grad_solutions, grad_valid):
        a, x, valid, c = ctx.saved_tensors
        vjp = compilation.compiled(implicit_vjp, ctx.solver, len(a))
        plan = ctx.solver.plan
        system = forward.tensors(plan, a.device, a.dtype)["declared"]
        grad, skipped = vjp(a, x, valid, c, grad_solutions.to(a.dtype), ctx.solver.cond_max, plan, system)
        ctx.solver.ill_conditioned = skipped
        return grad.to(ctx.dtype), None
