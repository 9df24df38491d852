"""Evaluating a polynomial system's equations and their Jacobian at batches of points.

A system (`plan.Equations`) is evaluated from its coefficient vector c, which the solver has
already computed: monomials are built degree by degree, h_k sums its terms c_j x^alpha_j, and
dh_k/dx_n sums alpha_jn c_j x^(alpha_j - e_n). Dense systems use batched matrix products
(h = C . monomials); sparse ones gather their terms.
"""
from __future__ import annotations

import torch

from .plan import Equations


def system_tensors(spec: Equations, device, dtype) -> dict:
    """The tensors of `spec` on `device`: what `prepare` and `evaluate` read."""

    def long(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    num_monomials = 1 + sum(len(parents) for parents, _ in spec.levels)
    size = spec.equations * num_monomials
    # dh/dx only needs the monomials below the top degree: a prefix (monomials are in degree order).
    below_top = num_monomials - (len(spec.levels[-1][0]) if spec.levels else 0)
    system = {
        "unknowns": spec.unknowns,
        "equations": spec.equations,
        "monomials": num_monomials,
        "below_top": below_top,
        # Dense (batched matrix products with C[k, p] and D[k * N + n, p]) unless that would be
        # mostly zeros; sparse systems gather and scatter their terms instead.
        "dense": size <= 4 * len(spec.term_equation),
        "levels": [(long(parents), long(unknowns)) for parents, unknowns in spec.levels],
        "term_equation": long(spec.term_equation),
        "term_monomial": long(spec.term_monomial),
        "derivative_position": long(spec.derivative_position),
        "derivative_coefficient": long(spec.derivative_coefficient),
        "derivative_factor": torch.tensor(spec.derivative_factor, dtype=dtype, device=device),
        "derivative_monomial": long(spec.derivative_monomial),
    }
    system["term_flat"] = system["term_equation"] * num_monomials + system["term_monomial"]
    system["derivative_flat"] = system["derivative_position"] * num_monomials + system["derivative_monomial"]
    if system["dense"]:
        # D = C T: T[p, n * P_below + q] = d(monomial p)/dx_n at monomial q (the exponent), the
        # same for every equation, so that the derivative matrices are one matrix product.
        n = spec.unknowns
        monomial = system["term_monomial"].index_select(0, system["derivative_coefficient"])
        column = (system["derivative_position"] % n) * below_top + system["derivative_monomial"]
        derivative_map = torch.zeros(num_monomials, n * below_top, dtype=dtype, device=device)
        derivative_map[monomial, column] = system["derivative_factor"]
        system["derivative_map"] = derivative_map
        # The same per monomial: d(monomial p)/dx_n = scale[p * N + n] * monomials[source[p * N + n]].
        scale, source = derivative_map.view(num_monomials, n, below_top).max(dim=-1)
        system["derivative_scale"], system["derivative_source"] = scale.flatten().unsqueeze(-1), source.flatten()
    else:
        # Sparse systems: the terms with constant coefficients become constant matrices (one
        # matrix product for all points); only the others are gathered per point.
        k, n = spec.equations, spec.unknowns
        values = dict(spec.constants)
        constant = torch.zeros(len(spec.term_equation), dtype=torch.bool)
        constant[list(values)] = True
        value = torch.zeros(len(spec.term_equation), dtype=dtype)
        value[list(values)] = torch.tensor(list(values.values()), dtype=dtype)
        h = torch.zeros(k * num_monomials, dtype=dtype)
        h.index_add_(0, system["term_flat"].cpu()[constant], value[constant])
        system["constant_h"] = h.view(k, num_monomials).to(device)
        system["constant_scale"] = system["constant_h"].abs()
        d_constant = constant[system["derivative_coefficient"].cpu()]
        d_value = value[system["derivative_coefficient"].cpu()] * system["derivative_factor"].cpu()
        d = torch.zeros(k * n * num_monomials, dtype=dtype)
        d.index_add_(0, system["derivative_flat"].cpu()[d_constant], d_value[d_constant])
        # Transposed: dh/dx = monomials^T @ this ([points, P_below] @ [P_below, K * N]).
        system["constant_jacobian"] = d.view(k * n, num_monomials)[:, :below_top].t().contiguous().to(device)
        varying = (~constant).nonzero().squeeze(-1).to(device)
        d_varying = (~d_constant).nonzero().squeeze(-1).to(device)
        system["varying_terms"] = varying
        system["varying_derivative_coefficient"] = system["derivative_coefficient"].index_select(0, d_varying)
        system["varying_derivative_factor"] = system["derivative_factor"].index_select(0, d_varying)
        system["varying_derivative_monomial"] = system["derivative_monomial"].index_select(0, d_varying)
        system["varying_derivative_position"] = system["derivative_position"].index_select(0, d_varying)
    return system


def monomial_values(x, system, below_top=False):
    """The system's monomials at points x [points, N], degree by degree (only those below the
    top degree if `below_top`), entry-major: [P, points] (gathering rows of that layout is much
    faster than gathering columns of [points, P])."""
    x = x.t().contiguous()
    level = torch.ones_like(x[:1])
    out = [level]
    for parents, unknowns in system["levels"][:-1] if below_top else system["levels"]:
        level = level.index_select(0, parents) * x.index_select(0, unknowns)
        out.append(level)
    return torch.cat(out, dim=0)


def coefficient_matrix(c, system):
    """A dense system's coefficient matrices C [B, K, P] (h = C . monomials) from c [B, n]."""
    k, p = system["equations"], system["monomials"]
    return c.new_zeros(c.shape[0], k * p).index_copy_(1, system["term_flat"], c).view(c.shape[0], k, p)


def prepare(c, system, residual=True, jacobian=False):
    """What `evaluate` needs from the coefficients alone for h (`residual`) and dh/dx
    (`jacobian`), built once for several sets of points (the Newton steps): c [B, n_coefficients]
    -> a dict. Dense systems: the coefficient matrices C [B, K, P] and |C|, and D [B, K * N,
    P_below] (dh_k/dx_n = D[k * N + n] . monomials below the top degree); sparse ones: the
    varying derivative factors."""
    prepared = {"c": c}
    if not system["dense"]:
        if jacobian:
            prepared["factor"] = derivative_factors(c, system)
        return prepared
    batch = c.shape[0]
    k, n = system["equations"], system["unknowns"]
    matrix = coefficient_matrix(c, system)
    if residual:
        prepared.update(matrix=matrix, abs=matrix.abs())
    if jacobian:
        derivative = matrix.view(batch * k, system["monomials"]) @ system["derivative_map"]
        prepared["derivative"] = derivative.view(batch, k * n, system["below_top"])
    return prepared


def evaluate(prepared, x, system, jacobian=False, residual=True):
    """h(x) and the size of its terms (sum_j |c_j x^alpha_j|) unless `residual` is False, and
    dh/dx if `jacobian`.

    prepared: `prepare(c, system, ...)` (c [B, n_coefficients]: the system's coefficients);
    x [B, S, N] -> [B, S, K] twice and [B, S, K, N] (None for what is not asked). Dense systems use
    batched matrix products; sparse ones gather their terms in an entry-major layout (rows of
    [terms, points]).
    """
    batch, slots = x.shape[:2]
    k, n = system["equations"], system["unknowns"]
    if system["dense"]:
        # Built entry-major (row gathers), then [B, P, S] for the matrix products.
        monomials = monomial_values(x.reshape(-1, n), system, below_top=not residual)
        monomials = monomials.view(len(monomials), batch, slots).permute(1, 0, 2).contiguous()  # [B, P, S]
        h = scale = None
        if residual:
            h = (prepared["matrix"] @ monomials).transpose(1, 2)
            scale = (prepared["abs"] @ monomials.abs()).transpose(1, 2)
        if not jacobian:
            return h, scale, None
        dh = (prepared["derivative"] @ monomials[:, : system["below_top"]]).transpose(1, 2)
        return h, scale, dh.unflatten(-1, (k, n))
    c = prepared["c"]
    monomials = monomial_values(x.reshape(-1, n), system, below_top=not residual)  # [P, B * S]
    # Constant coefficients: matrix products; the others: gathered terms.
    h = scale = None
    if residual:
        varying = system["varying_terms"]
        coefficients = c.index_select(1, varying).t()  # [n_varying, B]
        if slots > 1:
            coefficients = coefficients.repeat_interleave(slots, dim=1)  # [n_varying, B * S]
        terms = coefficients * monomials.index_select(0, system["term_monomial"].index_select(0, varying))
        equation = system["term_equation"].index_select(0, varying)
        h = (system["constant_h"] @ monomials).index_add_(0, equation, terms)
        scale = (system["constant_scale"] @ monomials.abs()).index_add_(0, equation, terms.abs())
        # Back to point-major, contiguous (strided results make later matmuls loop per matrix).
        h = h.t().contiguous().view(batch, slots, k)
        scale = scale.t().contiguous().view(batch, slots, k)
    if not jacobian:
        return h, scale, None
    factor = prepared["factor"]
    if slots > 1:
        factor = factor.repeat_interleave(slots, dim=0)
    return h, scale, sparse_jacobian(monomials, factor, system).view(batch, slots, k, n)


def derivative_factors(c, system):
    """The coefficients of a sparse system's derivative terms that vary: [B, n_coefficients] ->
    [B, V]."""
    return c.index_select(1, system["varying_derivative_coefficient"]) * system["varying_derivative_factor"]


def sparse_jacobian(monomials, factor, system):
    """dh/dx [points, K * N] of a sparse system from its monomials, entry-major [P, points] (at
    least those below the top degree), and the varying derivative factors per point [points, V]:
    one matrix product for the constant terms, a gather for the others."""
    dh = monomials[: system["below_top"]].t() @ system["constant_jacobian"]
    terms = factor * monomials.index_select(0, system["varying_derivative_monomial"]).t()
    return dh.index_add_(1, system["varying_derivative_position"], terms)


def relative_error(h, scale):
    tiny = torch.finfo(scale.dtype).tiny
    return (h.abs() / scale.clamp_min(tiny)).amax(dim=-1)
