"""The elimination template: fill it, eliminate it, build the action matrix, take its eigenpairs,
read the solutions off the eigenvectors and polish them by Newton.

`template` arguments are the plan's `Template`; `tables` are its tensors (`tensors`).
"""
from __future__ import annotations

import torch

from . import compiled as compilation
from . import eig, newton, parallel
from .plan import Template

# Largest |factor| allowed in the fixed-pivot template elimination, else LAPACK (sparse_elimination).
# Measured, solutions after Newton as accurate as with LAPACK's: float64 1e3, float32 4.
GROWTH_LIMIT = {torch.float64: 1e3, torch.float32: 4.0}


def tensors(template: Template, device, dtype) -> dict:
    """The template's tables as tensors on `device`."""

    def long(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    n = template.basis
    action = torch.zeros(n, n, dtype=dtype, device=device)
    for row, column, value in template.action_constant:
        action[row, column] += value
    pairs = torch.zeros(template.num_read, n, n + template.num_reduced, dtype=dtype, device=device)
    for q, i, j in zip(template.read_monomial, template.read_basis, template.read_value):
        pairs[q, i, j] = 1  # P[q][i, j] = 1 for each read-off pair (basis i, monomial j) of q
    tables = dict(
        positions=long(template.positions),
        sources=long(template.sources),
        action=action,
        action_rows=long(template.action_rows),
        action_reduced=long(template.action_reduced),
        action_scale=torch.tensor(template.action_scale, dtype=dtype, device=device),
        fallback=torch.diag(torch.arange(1, n + 1, dtype=dtype, device=device)),
        read_pairs=pairs,
    )
    if template.sparse_lu is not None:
        lu = template.sparse_lu

        def level(step):
            return tuple(long(values) for values in (step.pivot, step.column, step.factor, step.source, step.target))

        tables["sparse_lu"] = dict(
            slots=lu.slots,
            template_slots=long(lu.template_slots),
            forward=[level(step) for step in lu.forward],
            upward=[level(step) for step in lu.upward],
            numerators=long(lu.numerators),
            denominators=long(lu.denominators),
        )
    if template.fixed:
        # Partial sign symmetry: the read-off gives the negated unknowns, then the fixed ones;
        # `unknown_order` puts them back in order, and `pair_sign` makes each pair's other member.
        negated = [i for i in range(template.unknowns) if i not in template.fixed]
        order = negated + list(template.fixed)
        tables["unknown_order"] = long([order.index(i) for i in range(template.unknowns)])
        tables["pair_sign"] = torch.tensor([1.0 if i in template.fixed else -1.0 for i in range(template.unknowns)],
                                           dtype=dtype, device=device)
    if n <= 4:
        tables["closed_form"] = eig.closed_form_tables(n, device, dtype)
    return tables


# -- Elimination -----------------------------------------------------------------------------


def sparse_elimination(c, template, tables):
    """The template's reduced block X [B, T, S] (see dense_elimination) by the fixed-pivot sparse
    elimination planned at compile time (solvergen/sparse_lu.py), and the rows [B] where it is
    trustworthy: finite, with every forward factor |column / pivot| within GROWTH_LIMIT (partial
    pivoting keeps them at 1). Entry-major: the slots are rows [slots + 1, B], the last
    one a structural zero, so that each gather reads whole contiguous rows."""
    lu = tables["sparse_lu"]
    values = c.new_zeros(lu["slots"] + 1, c.shape[0])
    values.index_copy_(0, lu["template_slots"], c.index_select(1, tables["sources"]).t())
    growth = c.new_zeros(c.shape[0])
    # Under autograd a zero pivot divides by 1 instead and marks the row (see parallel.differentiated).
    zero_pivot = c.new_zeros(c.shape[0], dtype=torch.bool) if parallel.differentiated(c) else None

    def divide(numerator, denominator):
        nonlocal zero_pivot
        if zero_pivot is None:
            return numerator / denominator
        zero = denominator == 0
        zero_pivot = zero_pivot | zero.reshape(-1, c.shape[0]).any(dim=0)
        return numerator / torch.where(zero, torch.ones_like(denominator), denominator)

    for pivot, column, factor, source, target in lu["forward"]:
        f = divide(values.index_select(0, column), values.index_select(0, pivot))
        growth = torch.maximum(growth, f.abs().amax(dim=0))  # NaN propagates: untrusted
        values.index_add_(0, target, f.index_select(0, factor) * values.index_select(0, source), alpha=-1)
    for pivot, column, factor, source, target in lu["upward"]:
        f = divide(values.index_select(0, column), values.index_select(0, pivot))
        values.index_add_(0, target, f.index_select(0, factor) * values.index_select(0, source), alpha=-1)
    x = values.index_select(0, lu["numerators"]).view(template.num_reduced, template.basis, -1)
    x = divide(x, values.index_select(0, lu["denominators"]).unsqueeze(1))
    x = x.permute(2, 0, 1).contiguous()
    trusted = (growth <= GROWTH_LIMIT.get(c.dtype, 4.0)) & torch.isfinite(x).flatten(1).all(dim=-1)
    return x, trusted if zero_pivot is None else trusted & ~zero_pivot


def dense_elimination(c, template, tables):
    """The template's reduced block X [B, T, S]: [eliminated | reduced] X' = basis block, solved by
    LAPACK (partial pivoting), X the rows of X' of the reduced monomials (reduced monomial
    t = -X[t] . basis); and the rows [B] where the solve succeeded."""
    rows, cols = template.shape
    square = template.square
    entries = c.index_select(1, tables["sources"])
    flat = c.new_zeros(c.shape[0], rows * cols).index_copy_(1, tables["positions"], entries)
    matrices = flat.view(-1, rows, cols)
    if parallel.differentiated(matrices):  # singular rows solve [I | 0] instead (see `differentiated`)
        with torch.no_grad():
            singular = torch.linalg.lu_factor_ex(matrices[:, :, :square]).info != 0
            singular |= ~torch.isfinite(matrices).flatten(1).all(dim=-1)
        stand_in = torch.eye(rows, cols, dtype=c.dtype, device=c.device)  # (the square block is rows x rows)
        matrices = torch.where(singular[:, None, None], stand_in, matrices)
        solution = torch.linalg.solve(matrices[:, :, :square], matrices[:, :, square:])
        return solution[:, square - template.num_reduced :, :], ~singular
    solution, info = parallel.per_matrix(lambda t: torch.linalg.solve_ex(t[:, :, :square], t[:, :, square:]), matrices)
    return solution[:, square - template.num_reduced :, :], info == 0


def eliminate(c, template, tables):
    """The template's reduced block X [B, T, S] and the rows [B] where it could be computed.
    Templates without a sparse plan (too dense for one to pay, see solvergen/sparse_lu.py): by
    LAPACK. With one: on the CPU by the sparse elimination, with the rows it does not trust
    solved again by LAPACK (P3P at batch 4,096: 6.6 ms against 28); inside a compiled graph by
    the sparse elimination alone (the caller, `solve_candidates`, redoes the rows it does not
    trust); on other devices by the batched dense solve (no host synchronization)."""
    if template.sparse_lu is None or not parallel.host_sync_is_free(c.device):
        return dense_elimination(c, template, tables)
    x, solved = sparse_elimination(c, template, tables)
    if torch.compiler.is_compiling():
        return x, solved
    again = (~solved).nonzero().squeeze(-1)
    if len(again):
        redone, redone_solved = dense_elimination(c.index_select(0, again), template, tables)
        x = x.index_copy(0, again, redone)
        solved = solved.index_copy(0, again, redone_solved)
    return x, solved


# -- Eigenpairs and read-off -----------------------------------------------------------------


def eigen_candidates(c, template, tables, method):
    """Solutions of the template's system from its coefficients c [B, n]: [B, S, n_unknowns]
    (read off the real parts of the eigenvectors), the eigenvalues [B, S] (complex: the caller
    keeps the real ones), and the rows [B] whose template and action matrix were usable."""
    batch, n = c.shape[0], template.basis
    reduced, solved = eliminate(c, template, tables)
    # Action matrix, its eigenvectors, the unknowns.
    scaled = tables["action_scale"].unsqueeze(-1) * reduced.index_select(1, tables["action_reduced"])
    action = tables["action"].expand(batch, n, n).index_add(1, tables["action_rows"], -scaled)
    # Entries beyond sqrt(max) / 256 (5e151 in float64) overflow the squares inside LAPACK's
    # eig: MKL then aborts the process ("double free or corruption", relpose_8pt_radial with a
    # parameter of 1e300). Such rows, and non-finite ones, have no solutions.
    limit = torch.finfo(action.dtype).max ** 0.5 / 256
    ok = torch.isfinite(c).all(dim=-1) & solved & (action.abs() <= limit).flatten(1).all(dim=-1)
    action = torch.where(ok.view(-1, 1, 1), action, tables["fallback"])
    if method == "charpoly":
        eigenvalues, vectors = eig.charpoly(action)
    elif method == "closed_form":
        eigenvalues, vectors = eig.closed_form(action, tables["closed_form"])
    else:
        eigenvalues, vectors = eig.lapack(action)
        # Real solutions have real eigenvalues, whose LAPACK eigenvectors are real; complex
        # eigenvalues are rejected by the caller, so the read-off can stay in real arithmetic
        # (contiguous: a strided operand makes bmm copy it matrix by matrix).
        if parallel.differentiated(vectors):  # (eig's backward refuses phase-dependent losses)
            vectors = torch.where((eigenvalues.imag == 0).unsqueeze(-2), vectors, torch.zeros_like(vectors))
        vectors = vectors.real.contiguous()
    return read_off(eigenvalues, vectors, reduced, template, tables), eigenvalues, ok


def read_off(eigenvalues, vectors, reduced, template, tables):
    """The read monomials from the real eigenvectors v (columns of `vectors`, the basis monomials
    at a solution, up to scale): a least-squares ratio v_(q m) / v_m over the read-off pairs,
    which the large entries dominate (accurate also for solutions far from the origin). The
    unknowns [B, basis, N]; for an even template from the quadratic monomials (see
    `from_quadratics`)."""
    batch, n, count = vectors.shape[0], template.basis, template.num_read
    values = torch.cat([vectors, -(reduced @ vectors)], dim=1)  # [B, basis + T, basis]
    pairs = tables["read_pairs"]  # [R, basis, basis + T]
    # sum_ij v_i P[q, i, j] values_j for every read monomial q: one matrix product over all instances.
    paired = pairs.flatten(0, 1) @ values.transpose(0, 1).reshape(n + template.num_reduced, batch * n)
    entry_major = vectors.transpose(0, 1).reshape(1, n, batch * n)  # v_i per (instance, slot)
    numerator = (paired.view(count, n, batch * n) * entry_major).sum(1)  # [R, B * basis]
    weight = vectors * vectors  # v_i^2, once for every pair (i, j) of a read monomial
    denominator = weight.transpose(1, 2) @ pairs.sum(-1).t()  # [B, basis, R]
    if parallel.differentiated(numerator, denominator):
        denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    q = numerator.t().reshape(batch, n, count) / denominator
    if template.action_read >= 0:
        column = torch.arange(count, device=q.device) == template.action_read
        q = torch.where(column, eigenvalues.real.unsqueeze(-1), q)
    if not template.even:
        return q
    if not template.fixed:
        return from_quadratics(q, template.unknowns)
    # Partial symmetry: the quadratic monomials of the negated unknowns, then the fixed ones.
    negated = template.unknowns - len(template.fixed)
    pairs = negated * (negated + 1) // 2
    x = torch.cat([from_quadratics(q[..., :pairs], negated), q[..., pairs:]], dim=-1)
    return x.index_select(-1, tables["unknown_order"])


def from_quadratics(q, n):
    """x [B, P, n] from the quadratic monomials q [B, P, n (n + 1) / 2] (x_i x_j, i <= j) of each
    pair of solutions +-x: with G = x x^T, x = G[:, k] / sqrt(G_kk) for the largest diagonal
    entry G_kk (a running maximum over rows of q, each contiguous). NaN where G_kk <= 0 (the pair
    is not real)."""
    upper = [(i, j) for i in range(n) for j in range(i, n)]
    rows = q.flatten(0, 1).t().contiguous()  # [R, B * P]

    def gram(i, j):
        return rows[upper.index((min(i, j), max(i, j)))]

    top, column = gram(0, 0), [gram(i, 0) for i in range(n)]
    for k in range(1, n):
        larger = gram(k, k) > top
        top = torch.where(larger, gram(k, k), top)
        column = [torch.where(larger, gram(i, k), value) for i, value in enumerate(column)]
    x = torch.stack(column, -1) / top.clamp_min(torch.finfo(q.dtype).tiny).sqrt().unsqueeze(-1)
    x = torch.where((top > 0).unsqueeze(-1), x, torch.full_like(x, float("nan")))
    return x.view(*q.shape[:2], n)


# -- The template stage ----------------------------------------------------------------------


def solve_candidates(c, ok, template, tables, system, settings):
    """`polished_candidates` without its last output. With compile=True and the closed-form
    eigenpairs (no LAPACK call, no host synchronization on that path) the whole stage is compiled
    into one graph of fused kernels. On the CPU, the rows it could not use (the sparse
    elimination did not trust them) or that got no solution within `residual_tol` are then
    redone as written with LAPACK's eigenpairs: the closed form works from the characteristic
    polynomial, which loses real roots of badly scaled action matrices (P3P: about 5 instances
    in 10,000) where LAPACK's backward-stable QR does not."""
    if not compiled_stage(settings, c):
        return polished_candidates(c, ok, template, tables, system, settings)[:3]
    compiled = compilation.compiled(polished_candidates, settings, len(c))
    x, error, candidate, usable = compiled(c, ok, template, tables, system, settings)
    if parallel.host_sync_is_free(c.device):
        solved = (candidate & (error <= settings.residual_tol)).any(dim=-1)
        again = (ok & ~(usable & solved)).nonzero().squeeze(-1)
        if len(again):
            redone = polished_candidates(
                c.index_select(0, again), ok.index_select(0, again), template, tables, system, settings, method="lapack"
            )
            x, error, candidate = (
                value.index_copy(0, again, part) for value, part in zip((x, error, candidate), redone)
            )
    return x, error, candidate


def compiled_stage(settings, c):
    """Whether `solve_candidates` runs compiled for coefficients c: compile=True, the closed-form
    eigenpairs, and a batch that `compiled.compiled` compiles (2 or more)."""
    return settings.compile and len(c) > 1 and settings.resolved_eig(c.device) == "closed_form"


def real_enough(eigenvalues, imag_tol):
    """Which eigenvalues [B, S] (complex) count as real: |imag| <= imag_tol max(|real|, floor),
    with floor = min(1, the instance's largest |eigenvalue|): relative for an instance whose
    eigenvalues are all small (a null-space basis vector scaled by 1e-20 makes them about 1e-20,
    and an absolute floor of 1 let complex pairs through as real, duplicates after Newton).
    stage.h's `real_enough` is the same rule."""
    size = torch.where(torch.isfinite(eigenvalues), eigenvalues.abs(), torch.zeros_like(eigenvalues.real))
    floor = size.amax(dim=-1, keepdim=True).clamp_max(1.0)
    return eigenvalues.imag.abs() <= imag_tol * torch.maximum(eigenvalues.real.abs(), floor)


def polished_candidates(c, ok, template, tables, system, settings, method=None):
    """The template's real solutions for coefficients c [B, n] (rows where `ok`), polished by
    Newton on `system`: points [B, S, n_unknowns], their relative residual, which are
    candidates (real, finite, from a usable template), and the rows [B] whose template and
    action matrix were usable. `method`: the eigen method (default: the solver's)."""
    z, eigenvalues, found = eigen_candidates(c, template, tables, method or settings.resolved_eig(c.device))
    candidate = (ok & found).unsqueeze(-1) & torch.isfinite(z).all(dim=-1) & real_enough(eigenvalues, settings.imag_tol)
    z = torch.where(candidate.unsqueeze(-1), z, torch.zeros_like(z))
    x, error = newton.polish(c, z, candidate, settings.newton_steps, system)
    if template.even:
        # Each eigenpair is a pair of solutions +-x (or x with some unknowns negated: `fixed`);
        # Newton's steps keep the sign symmetry exactly (every equation is even or odd in the
        # negated unknowns), so the other is polished by negating them.
        other = x * tables["pair_sign"] if template.fixed else -x
        return torch.cat([x, other], dim=1), error.repeat(1, 2), candidate.repeat(1, 2), found
    return x, error, candidate, found
