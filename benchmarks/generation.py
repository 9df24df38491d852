#!/usr/bin/env python
"""Generation time per problem and per stage, for this checkout or another one (A/B).

    python benchmarks/generation.py                           # every problem of this checkout
    python benchmarks/generation.py --repo /tmp/old --label before --problems p3p relpose_5pt

Each problem is compiled in a fresh process (`compile_problem`, the work of `solvergen
generate` without rendering) under cProfile, and the cumulative times of the stages are read
from the profile, so that checkouts without a progress display are measured the same way:
  - algebra: the Groebner bases (groebner.analyze before FLINT; groebner.algebra and the FGLM
    changes of order, Algebra.quotient, after);
  - template search: template.choose_template;
  - total: compile_problem.
Writes benchmarks/results/generation-<label>.json and .md (machine, versions, commit).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from run import polynomial_problems  # benchmarks/run.py

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import cProfile, json, pstats, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from solvergen.spec import read_spec
from solvergen.compiler import compile_problem
problem = read_spec(Path(sys.argv[2])).problem
profile = cProfile.Profile()
start = time.perf_counter()
profile.enable()
compiled = compile_problem(problem)
profile.disable()
total = time.perf_counter() - start
stats = pstats.Stats(profile).stats
def cumulative(module, *names):
    return sum(v[3] for (f, _, n), v in stats.items() if f.endswith(module) and n in names)
print(json.dumps(dict(total=total, algebra=cumulative("groebner.py", "analyze", "algebra", "quotient"),
                      template=cumulative("template.py", "choose_template"),
                      shape=list(compiled.template_shape), solutions=compiled.num_solutions)))
"""


def measure(repo: Path, spec: Path, timeout: float) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", PROBE, str(repo), str(spec)], capture_output=True,
                             text=True, timeout=timeout, cwd=repo)
    except subprocess.TimeoutExpired:
        return dict(error=f"not finished in {timeout:g} s")
    if out.returncode:
        return dict(error=out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--label", default="current", help="name of the results files")
    parser.add_argument("--problems", nargs="*", help="problem names (default: every spec of this checkout)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per problem (default: 600)")
    args = parser.parse_args()
    names = args.problems or polynomial_problems()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=args.repo).stdout.strip()
    rows = {}
    for name in names:
        spec = args.repo / "problems" / f"{name}.py"
        if not spec.is_file():
            spec = ROOT / "problems" / f"{name}.py"
        rows[name] = measure(args.repo.resolve(), spec.resolve(), args.timeout)
        print(name, rows[name], flush=True)
    import flint, sympy, torch  # noqa: E401 - versions for the record

    machine = dict(platform=platform.platform(), processor=platform.processor(), python=platform.python_version(),
                   sympy=sympy.__version__, flint=flint.__version__, torch=torch.__version__, commit=commit)
    results = ROOT / "benchmarks" / "results"
    (results / f"generation-{args.label}.json").write_text(json.dumps(dict(machine=machine, problems=rows), indent=1))
    lines = [f"# Generation time per problem ({args.label}, commit {commit})", "",
             ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             "| problem | solutions | template | Groebner bases (s) | template search (s) | compile total (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | | |")
            continue
        shape = "x".join(map(str, row["shape"])) if row["shape"][0] else "-"
        lines.append(f"| {name} | {row['solutions']} | {shape} | {row['algebra']:.2f} | {row['template']:.2f} | {row['total']:.2f} |")
    (results / f"generation-{args.label}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
