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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import machine_info, polynomial_problems  # noqa: E402
from test_gradients import float32_gradient_agreement  # noqa: E402

from solvergen.generate import import_generated  # noqa: E402

PROBLEMS = polynomial_problems()


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
        row = float32_gradient_agreement(module, args.count, args.seed)
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
