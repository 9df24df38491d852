"""Eigenpairs of batched action matrices, three ways: LAPACK (CPU; one matrix at a time, split
over the threads), the characteristic polynomial with Aberth-Ehrlich roots (any device, no host
synchronization), and closed forms for matrices up to 4 x 4 (any device, no iteration)."""
from __future__ import annotations

import torch

from . import dense, parallel, univariate


def _long(values, device):
    return torch.tensor(values, dtype=torch.long, device=device)


def lapack(matrix):
    """LAPACK, one matrix at a time (split over the CPU threads). A matrix LAPACK cannot
    decompose gets NaN eigenpairs."""
    return parallel.per_matrix(_lapack_serial, matrix)


def _lapack_serial(matrix):
    return nan_on_failure(torch.linalg.eig, matrix)


def nan_on_failure(fn, matrix):
    """fn(matrix) for a LAPACK decomposition of a batch [B, n, n] -> tuple of [B, ...] results.
    When LAPACK fails on the batch, the matrices go one at a time, and those it fails on get
    NaN results (of the shapes and dtypes fn gives)."""
    try:
        return fn(matrix)
    except RuntimeError:
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).unsqueeze(0)
        failed = tuple(torch.full_like(part, float("nan")) for part in fn(eye))
        parts = []
        for single in matrix.split(1):
            try:
                parts.append(fn(single))
            except RuntimeError:
                parts.append(failed)
        return tuple(torch.cat(column) for column in zip(*parts))


def hessenberg(a):
    """Householder reduction a = q h q^T with h upper Hessenberg: [B, S, S] -> h, q."""
    n = a.shape[-1]
    h = a
    q = torch.eye(n, dtype=a.dtype, device=a.device).expand_as(a)
    for k in range(n - 2):
        x = h[:, k + 1 :, k]
        norm = x.norm(dim=-1)
        first = x[:, 0] + torch.where(x[:, 0] >= 0, norm, -norm)
        v = torch.cat([first.unsqueeze(-1), x[:, 1:]], dim=-1)
        length = v.norm(dim=-1, keepdim=True)
        v = torch.where(length > 0, v / length.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(v))
        top, bottom = h[:, : k + 1, :], h[:, k + 1 :, :]
        h = torch.cat([top, bottom - 2 * v.unsqueeze(-1) * (v.unsqueeze(1) @ bottom)], dim=1)
        left, right = h[:, :, : k + 1], h[:, :, k + 1 :]
        h = torch.cat([left, right - 2 * (right @ v.unsqueeze(-1)) * v.unsqueeze(1)], dim=2)
        left, right = q[:, :, : k + 1], q[:, :, k + 1 :]
        q = torch.cat([left, right - 2 * (right @ v.unsqueeze(-1)) * v.unsqueeze(1)], dim=2)
    return h, q


def characteristic_polynomial(h):
    """det(lambda I - h) of upper Hessenberg h, ascending coefficients [B, S + 1] (monic)."""
    batch, n = h.shape[0], h.shape[-1]
    one = torch.zeros(batch, n + 1, dtype=h.dtype, device=h.device)
    one[:, 0] = 1
    polynomials = [one]  # polynomials[k] = characteristic polynomial of h[:k, :k]
    for k in range(n):
        previous = polynomials[k]
        p = torch.roll(previous, 1, dims=-1) - h[:, k, k].unsqueeze(-1) * previous
        product = torch.ones_like(h[:, 0, 0])
        for i in range(k - 1, -1, -1):
            product = product * h[:, i + 1, i]
            p = p - (h[:, i, k] * product).unsqueeze(-1) * polynomials[i]
        polynomials.append(p)
    return polynomials[n]


def charpoly(matrix):
    """Eigenvalues (all, complex) and real eigenvectors (for the real part of each eigenvalue)
    without LAPACK and without host synchronization: Hessenberg form, its characteristic
    polynomial, Aberth-Ehrlich roots, eigenvectors by substitution in the Hessenberg matrix."""
    scale = matrix.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)
    h, q = hessenberg(matrix / scale)
    roots = univariate.polynomial_roots(characteristic_polynomial(h))
    n = h.shape[-1]
    shift = roots.real
    vector = [None] * n
    vector[n - 1] = torch.ones_like(shift)
    for k in range(n - 1, 0, -1):  # row k of (h - shift I) y = 0 gives y[k - 1]
        total = -shift * vector[k]
        for j in range(k, n):
            total = total + h[:, k, j].unsqueeze(-1) * vector[j]
        sub = h[:, k, k - 1].unsqueeze(-1)
        vector[k - 1] = -total / torch.where(sub == 0, torch.full_like(sub, torch.finfo(h.dtype).eps), sub)
    vectors = q @ torch.stack(vector, dim=1)
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return roots * scale.squeeze(-1), vectors


def closed_form(matrix, tables):
    """Real eigenpairs of action matrices up to 4 x 4 with no iteration, LAPACK or host
    synchronization: the characteristic polynomial (power traces and Newton's identities), its
    real roots in closed form (`univariate.real_roots`) refined by two Newton steps, and for each root the
    largest column of the adjugate of (matrix - root I), which spans its null space. Entry-major
    throughout ([n * n, B]: each operation is one contiguous row op). Eigenvalues [B, n] are
    complex like LAPACK's: imaginary part 0 for real roots, inf for slots without one (the
    caller rejects them); eigenvectors are the columns of [B, n, n]."""
    n = matrix.shape[-1]
    tiny = torch.finfo(matrix.dtype).tiny
    scale = matrix.abs().amax(dim=(-2, -1)).clamp_min(tiny)
    a = (matrix / scale[:, None, None]).flatten(1).t().contiguous()  # [n * n, B]
    c = _characteristic_polynomial_entries(a, n, tables)
    roots, real = univariate.real_roots(c)  # [n, B]
    for _ in range(2):
        value, slope = torch.ones_like(roots), torch.zeros_like(roots)
        for k in range(n - 1, -1, -1):
            slope = slope * roots + value
            value = value * roots + c[k]
        step = value / slope
        roots = roots - torch.where(real & torch.isfinite(step), step, torch.zeros_like(step))
    # a - root I for each root: [n * n, roots, B], and its adjugate.
    shifted = a.unsqueeze(1) - tables["diagonal"][:, None, None] * roots
    adjugate = _adjugate_entries(shifted.view(n * n, -1), n, tables).view(n, n, -1)  # [i, j, root * B]
    norms = adjugate.square().sum(0)  # [j, root * B]
    vectors, largest = adjugate[:, 0], norms[0]
    for j in range(1, n):  # the largest column (a running maximum: argmax over rows is slow)
        larger = norms[j] > largest
        vectors = torch.where(larger, adjugate[:, j], vectors)
        largest = torch.where(larger, norms[j], largest)
    vectors = (vectors / largest.sqrt().clamp_min(tiny)).view(n, n, -1)  # [i, root, B]
    imaginary = torch.where(real, torch.zeros_like(roots), torch.full_like(roots, float("inf")))
    eigenvalues = torch.complex((roots * scale).t(), imaginary.t())
    return eigenvalues, vectors.permute(2, 0, 1).contiguous()


def _characteristic_polynomial_entries(a, n, tables):
    """det(lambda I - a) = sum_k c[k] lambda^k (c[n] = 1) for entry-major a [n * n, B]: the power
    traces p_k = tr(a^k) give c by Newton's identities."""
    transpose = tables["transpose"]
    traces = [a.index_select(0, tables["diagonal_index"]).sum(0), (a * a.index_select(0, transpose)).sum(0)]
    if n >= 3:
        square = a.index_select(0, tables["square_left"]) * a.index_select(0, tables["square_right"])
        square = square.view(n * n, n, -1).sum(1)  # entries of a^2
        traces.append((square * a.index_select(0, transpose)).sum(0))
    if n >= 4:
        traces.append((square * square.index_select(0, transpose)).sum(0))
    e = [torch.ones_like(traces[0])]  # elementary symmetric functions of the eigenvalues
    for k in range(1, n + 1):
        total = torch.zeros_like(e[0])
        for i in range(1, k + 1):
            total = total + (-1) ** (i - 1) * e[k - i] * traces[i - 1]
        e.append(total / k)
    return [(-1) ** (n - k) * e[n - k] for k in range(n + 1)]


def closed_form_tables(n, device, dtype):
    """Index tables of _eig_closed_form for n x n matrices (entry (i, j) at row n i + j)."""
    tables = dict(
        transpose=_long([n * j + i for i in range(n) for j in range(n)], device),
        diagonal_index=_long([n * i + i for i in range(n)], device),
        diagonal=torch.tensor([float(i == j) for i in range(n) for j in range(n)], dtype=dtype, device=device),
        square_left=_long([n * i + k for i in range(n) for j in range(n) for k in range(n)], device),
        square_right=_long([n * k + j for i in range(n) for j in range(n) for k in range(n)], device),
    )
    if n == 4:
        tables["adjugate_4"] = _adjugate_4_tables(device, dtype)
    return tables


def _adjugate_entries(m, n, tables):
    """Adjugate of n x n matrices (n <= 4) stored entry-major, [n * n, K] -> [n * n, K]."""
    if n == 4:
        return _adjugate_4(m, tables["adjugate_4"])
    if n == 1:
        return torch.ones_like(m)
    cofactors, _ = dense.adjugate(m.t().unflatten(-1, (n, n)))
    return cofactors.flatten(-2).t()


def _adjugate_4(m, tables):
    """Adjugate of 4 x 4 matrices stored entry-major, [16, K] (row-major entries) -> [16, K], by
    the Laplace expansion along row pairs: the six 2 x 2 minors of rows 0, 1 and of rows 2, 3,
    then each cofactor as three products of an entry and a minor (see _adjugate_4_tables). A
    few large elementwise operations instead of a hundred small ones."""
    a, b, entry, minor, sign = tables
    products = m.index_select(0, a) * m.index_select(0, b)
    minors = products[:12] - products[12:]
    terms = m.index_select(0, entry) * minors.index_select(0, minor)
    return (terms * sign.unsqueeze(-1)).view(16, 3, -1).sum(1)


def _adjugate_4_tables(device, dtype):
    """Index tables of _adjugate_4. Minor k (k < 6: rows 0, 1; else rows 2, 3; columns
    c1 < c2) = m[a_k] m[b_k] - m[a_(k+12)] m[b_(k+12)]. adj[i, j] = (-1)^(i + j) times the
    determinant of m without row j and column i, expanded along the row that shares j's pair."""
    def e(i, j):
        return 4 * i + j

    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    a = [e(r, c1) for r in (0, 2) for c1, _ in pairs] + [e(r + 1, c1) for r in (0, 2) for c1, _ in pairs]
    b = [e(r + 1, c2) for r in (0, 2) for _, c2 in pairs] + [e(r, c2) for r in (0, 2) for _, c2 in pairs]
    entry, minor, sign = [], [], []
    for i in range(4):
        for j in range(4):
            row = j ^ 1  # the other row of j's pair; the minors come from the other pair
            base = 6 if j < 2 else 0
            columns = [k for k in range(4) if k != i]
            for position, column in enumerate(columns):
                entry.append(e(row, column))
                minor.append(base + pairs.index(tuple(k for k in columns if k != column)))
                sign.append((-1.0) ** (i + j + (row - (row > j)) + position))
    long = [_long(values, device) for values in (a, b, entry, minor)]
    return (*long, torch.tensor(sign, dtype=dtype, device=device))
