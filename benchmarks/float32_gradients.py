"""How right are the gradients of precision="float32" solvers? Against the float64 solver's.

    python benchmarks/float32_gradients.py [--count 500] [--seed 0] [--problems ...]

Per problem: `count` random noise-free instances in float32 (the float64 reference gets the same
float32-rounded values, so input rounding is not counted). Each solver picks the valid solution
closest to the ground truth (`select`), and the loss is a fixed random combination of its
unknowns; its gradient with respect to the parameters is compared where both solvers found the
truth (relative error below 1e-3: the truth is that of the unrounded parameters). A gradient is "zeroed" when the
float32 solver returned exactly zero for it (ill-conditioned or refused: it must be counted in
`ill_conditioned`). Reports, per problem: instances compared, zeroed (and whether all were
counted), the share of non-zero float32 gradients within 1e-2 relative of float64's, the number
more than 10% off, and the median relative error. Results: benchmarks/results/float32_gradients.md
and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import geometry  # noqa: E402
from run import machine_info  # noqa: E402

from solvergen.generate import import_generated  # noqa: E402

PROBLEMS = sorted(p.stem for p in (ROOT / "problems").glob("*.py"))


def picked_gradient(solver, params, truth, weights):
    """The picked solution, whether it was found, the gradient of <weights, picked> wrt params,
    and the solver's ill_conditioned count."""
    a = params.clone().requires_grad_(True)
    solutions, valid = solver(a)
    picked, found = solver.select(solutions, valid, reference=truth.to(solutions.dtype))
    (picked * weights.to(picked.dtype)).sum().backward()
    ill = solver.ill_conditioned
    return picked.detach().double(), found, a.grad.double(), int(ill) if ill is not None else 0


def relative(a, b):
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)


def compare(module, count, seed, **float32_options):
    params, truth = geometry.INSTANCES[module.PLAN.name](count, np.random.default_rng(seed))
    params32 = torch.from_numpy(params).float()
    truth = torch.from_numpy(truth)
    weights = torch.randn(len(module.UNKNOWN_NAMES), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x64, found64, g64, _ = picked_gradient(module.Solver(), params32.double(), truth, weights)
    x32, found32, g32, ill32 = picked_gradient(
        module.Solver(precision="float32", **float32_options), params32, truth, weights
    )
    err64, err32 = relative(x64, truth), relative(x32, truth)
    if module.SIGN_GAUGE:  # solutions up to sign: select aligned them with the truth
        err64 = torch.minimum(err64, relative(-x64, truth))
        err32 = torch.minimum(err32, relative(-x32, truth))
    both = found64 & found32 & (err64 < 1e-3) & (err32 < 1e-3)
    zeroed = both & (g32 == 0).all(dim=-1) & (g64 != 0).any(dim=-1)
    compared = both & ~zeroed
    error = relative(g32, g64)[compared]
    return dict(
        problem=module.PLAN.name,
        instances=count,
        both_found=int(both.sum()),
        zeroed=int(zeroed.sum()),
        ill_conditioned=ill32,
        within_1e2=float((error <= 1e-2).double().mean()) if len(error) else float("nan"),
        over_10_percent=int((error > 0.1).sum()),
        median=float(error.median()) if len(error) else float("nan"),
        worst=float(error.max()) if len(error) else float("nan"),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", nargs="+", default=PROBLEMS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="float32_gradients")
    args = parser.parse_args(argv)
    machine = machine_info("cpu")
    rows = []
    for name in args.problems:
        module = import_generated(ROOT / "generated" / f"{name}.py")
        row = compare(module, args.count, args.seed)
        rows.append(row)
        print(
            f"{name:26s} both found {row['both_found']:4d}, zeroed {row['zeroed']:3d} (ill_conditioned "
            f"{row['ill_conditioned']}), within 1e-2 {row['within_1e2']:.4f}, over 10% {row['over_10_percent']}, "
            f"median {row['median']:.2e}, worst {row['worst']:.2e}", flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(dict(machine=machine, rows=rows, count=args.count,
                                                                 seed=args.seed), indent=2))
    lines = [
        "# precision=\"float32\" gradients against float64",
        "",
        f"`python benchmarks/float32_gradients.py --count {args.count} --seed {args.seed}`. "
        f"{machine['cpu']}, torch {machine['versions']['torch']}, commit {machine['git_commit']} "
        f"(uncommitted changes: {machine['git_dirty']}), {machine['date']}.",
        "",
        "| problem | both found the truth | zeroed (counted in ill_conditioned) | non-zero within 1e-2 | over 10% off "
        "| median relative error | worst |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['both_found']} / {r['instances']} | {r['zeroed']} ({r['ill_conditioned']}) | "
            f"{r['within_1e2']:.2%} | {r['over_10_percent']} | {r['median']:.1e} | {r['worst']:.1e} |"
        )
    (args.out / f"{args.label}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
