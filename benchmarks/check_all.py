#!/usr/bin/env python
"""`solvergen check` on every shipped problem: benchmarks/results/check.md (and .json).

    python benchmarks/check_all.py [--n 2000]

Problems whose spec has a sampler returning (parameters, unknowns) are measured against that
ground truth; the others on standard normal parameters (residuals and solution counts only).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from run import polynomial_problems  # benchmarks/run.py
from solvergen.check import check

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    rows = {}
    for spec in [ROOT / "problems" / f"{name}.py" for name in polynomial_problems()]:
        result = check(spec, n=args.n, out_dir=ROOT / "generated")
        print(result.describe(), flush=True)
        finite = result.log10_error[np.isfinite(result.log10_error)] if result.log10_error is not None else None
        rows[spec.stem] = dict(
            solutions=result.num_solutions, template=result.template, source=result.source,
            real_found=float(result.real_found.mean()),
            residual_median=float(np.median(result.log10_residual)),
            residual_p95=float(np.percentile(result.log10_residual, 95)),
            error_median=float(np.median(finite)) if finite is not None and finite.size else None,
            error_p95=float(np.percentile(finite, 95)) if finite is not None and finite.size else None,
            failure_share=result.failure_share, us_per_instance=1e6 * result.seconds_per_instance)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   threads=torch.get_num_threads(), commit=commit, instances=args.n)
    results = ROOT / "benchmarks" / "results"
    (results / "check.json").write_text(json.dumps(dict(machine=machine, problems=rows), indent=1))

    def cell(value, fmt="{:.1f}"):
        return "-" if value is None else fmt.format(value)

    lines = ["# `solvergen check` on every shipped problem", "",
             ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             "Failure: without ground truth, an instance with no valid solution; with it, no valid solution "
             "within 1e-6 of the truth. Log10 values are relative residuals and errors (median / 95th percentile).", "",
             "| problem | solutions | template | instances from | real found (mean) | residual | error to truth | failures | µs per instance |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['solutions']} | {r['template']} | {r['source']} | {r['real_found']:.2f} | "
                     f"{cell(r['residual_median'])} / {cell(r['residual_p95'])} | {cell(r['error_median'])} / {cell(r['error_p95'])} | "
                     f"{100 * r['failure_share']:.2f}% | {r['us_per_instance']:.1f} |")
    (results / "check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
