"""Size-generic layers in a few lines each: LML, entropic OT through Sinkhorn + `attach`, and the
leading eigenvector through `torch.linalg.eigh` + `attach`.

    python examples/size_generic_layers.py

Each layer is compiled from its spec in problems/ (once; `solvergen.load` caches the module in
generated/). The sizes come from the tensors: the same module serves any n. Prints what each
layer returns and checks its gradient against a central finite difference.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import solvergen

ROOT = Path(__file__).resolve().parent.parent


def sinkhorn(M, r, c, eps, iterations):
    """Plain log-domain Sinkhorn: the transport plan of the entropic OT problem."""
    f, g = torch.zeros_like(r), torch.zeros_like(c)
    for _ in range(iterations):
        f = eps * torch.log(r) - eps * torch.logsumexp((g[..., None, :] - M) / eps, -1)
        g = eps * torch.log(c) - eps * torch.logsumexp((f[..., :, None] - M) / eps, -2)
    return torch.exp((f[..., :, None] + g[..., None, :] - M) / eps)


def finite_difference(loss, x, direction, h=1e-6):
    return (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="size of the LML input and of the OT marginals")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = torch.float64
    out = {}

    # LML: the k-hot "soft top-k" of logits x.
    lml = solvergen.load(ROOT / "problems" / "lml.py")
    x = (3 * torch.randn(args.batch, args.n, dtype=dtype)).requires_grad_(True)
    y, ok = lml(x, 5.0)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    direction = torch.randn_like(x)
    fd = finite_difference(lambda x_: (lml(x_, 5.0)[0] * weights).sum(), x.detach(), direction)
    out["lml"] = dict(ok=bool(ok.all()), sum_y=float(y.detach().sum(-1).mean()),
                      gradient_vs_fd=abs(float((x.grad * direction).sum() - fd)) / abs(float(fd)))
    print(f"lml: y sums to {out['lml']['sum_y']:.6f} (k = 5), ok {out['lml']['ok']}; gradient vs central difference: relative {out['lml']['gradient_vs_fd']:.1e}")

    # Entropic OT: Sinkhorn gives the plan; attach refines it by one Newton step and attaches the
    # implicit-function gradient (no graph through the iterations).
    ot = solvergen.load(ROOT / "problems" / "entropic_ot.py")
    M = torch.rand(args.batch, args.n, args.n // 2, dtype=dtype, requires_grad=True)
    r = torch.full((args.batch, args.n), 1.0 / args.n, dtype=dtype)
    c = torch.full((args.batch, args.n // 2), 2.0 / args.n, dtype=dtype)
    with torch.no_grad():
        P_sinkhorn = sinkhorn(M, r, c, 0.1, 300)
    P = ot.attach(M, r, c, 0.1, P_sinkhorn)
    cost = (P * M).sum()
    cost.backward()
    direction = torch.randn_like(M)
    fd = finite_difference(lambda M_: (ot.attach(M_, r, c, 0.1, sinkhorn(M_, r, c, 0.1, 300)) * M_).sum(),
                           M.detach(), direction)
    out["entropic_ot"] = dict(ok=bool(ot.last_ok.all()), refinement=float((P.detach() - P_sinkhorn).abs().max()),
                              gradient_vs_fd=abs(float((M.grad * direction).sum() - fd)) / abs(float(fd)))
    print(f"entropic_ot: {args.n} x {args.n // 2} plans, ok {out['entropic_ot']['ok']}, Newton refinement of "
          f"Sinkhorn's plan {out['entropic_ot']['refinement']:.1e}; gradient "
          f"of the transport cost vs central difference: relative {out['entropic_ot']['gradient_vs_fd']:.1e}")

    # Spectral matching: eigh gives the leading eigenpair, attach its implicit-function gradient.
    spectral = solvergen.load(ROOT / "problems" / "spectral_matching.py")
    A = torch.rand(args.batch, 32, 32, dtype=dtype)
    W = (A + A.transpose(-1, -2)).requires_grad_(True)

    def leading(W_):
        values, vectors = torch.linalg.eigh(W_.detach())
        v = vectors[..., -1] * torch.sign(vectors[..., -1].sum(-1, keepdim=True))
        return spectral.attach(W_, (v, values[..., -1]))

    v, lam = leading(W)
    (v[..., 0]).sum().backward()
    direction = torch.randn_like(W)
    fd = finite_difference(lambda W_: leading(W_)[0][..., 0].sum(), W.detach(), direction)
    out["spectral_matching"] = dict(ok=bool(spectral.last_ok.all()),
                                    gradient_vs_fd=abs(float((W.grad * direction).sum() - fd)) / abs(float(fd)))
    print(f"spectral_matching: leading eigenvalue {float(lam[0].detach()):.3f}, ok {out['spectral_matching']['ok']}; "
          f"gradient vs central difference: relative {out['spectral_matching']['gradient_vs_fd']:.1e}")
    return out


if __name__ == "__main__":
    main()
