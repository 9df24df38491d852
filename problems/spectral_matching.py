"""Spectral matching (Leordeanu and Hebert; implicit_layers.md section 5.4): the leading
eigenvector v of a symmetric affinity matrix W (n x n) as an `Implicit` layer,

    (W_sym - lam I) v = 0,  v^T v = 1,  with W_sym = (W + W^T) / 2,

so that W need not be exactly symmetric. Its gradient is that of the eigenvector of W_sym.
Newton on these equations converges to whichever eigenpair is nearest the start, so the forward
is run elsewhere: compute v and lam with `torch.linalg.eigh`, then call
`v, lam = layer.attach(W, (v, lam))`. That refines them by one Newton step and attaches the
implicit-function gradient. The Jacobian is dense: an (n + 1) x (n + 1) solve, batched.
"""
import sympy as sp

from solvergen import Implicit

n = sp.Symbol("n", integer=True, positive=True)
i = sp.Idx("i", n)
j = sp.Idx("j", n)
W = sp.IndexedBase("W", shape=(n, n))
v = sp.IndexedBase("v", shape=(n,))
lam = sp.Symbol("lam")

problem = Implicit(
    "spectral_matching",
    unknowns=[v, lam],
    parameters=[W],
    equations=[sp.Sum((W[i, j] + W[j, i]) / 2 * v[j], (j, 0, n - 1)) - lam * v[i],
               sp.Sum(v[i] ** 2, (i, 0, n - 1)) - 1],
    init=[1 / sp.sqrt(n), 0],
)
