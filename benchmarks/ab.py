"""Interleaved A/B timing of two folders of generated solvers (e.g. before and after a change).

    python benchmarks/ab.py OLD_DIR NEW_DIR [--problems p3p relpose_5pt ...] [--rounds 15]

For each problem, the module of each folder is imported (both in one process: a folder of modules
that embed their runtime, one generated with --standalone, or generated/ with the installed
runtime), and per round, A then B then B then A:
  - the forward at `--forward-batch` (default 10,000) instances, float64, without autograd;
  - the IFT backward alone at `--backward-batch` (default 1,024) instances for the loss on the
    solution `select`ed toward the ground truth (MinBackProp's setting), and for a loss on every
    valid solution.
Machine noise hits both alike; the report gives medians per side and the median and quartiles of
the per-round ratios new / old. Results: benchmarks/results/ab-<label>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import geometry  # noqa: E402
from run import load_average, machine_info, polynomial_problems, steady_allocator  # noqa: E402

from solvergen.generate import import_generated  # noqa: E402

PROBLEMS = polynomial_problems()


def forward_seconds(module, params, precision, backward="ift") -> float:
    solver = module.Solver(precision=precision, backward=backward)
    recording = backward == "autograd"  # the autograd baseline's forward records its graph
    with torch.set_grad_enabled(recording):
        start = time.perf_counter()
        solver(params.clone().requires_grad_(recording))
        return time.perf_counter() - start


def backward_seconds(module, params, truth, weights, loss, precision, backward="ift") -> float:
    solver = module.Solver(precision=precision, backward=backward)
    a = params.clone().requires_grad_(True)
    solutions, valid = solver(a)
    if loss == "selected":
        picked, _ = solver.select(solutions, valid, reference=truth)
        value = (picked * weights[0]).sum()
    else:
        value = (solutions * weights * valid.unsqueeze(-1)).sum()
    start = time.perf_counter()
    value.backward()
    return time.perf_counter() - start


def measure(name, modules, rounds, forward_batch, backward_batch, seed, precision="float64", backward="ift"):
    params, truth = geometry.INSTANCES[name](max(forward_batch, backward_batch), np.random.default_rng(seed))
    dtype = torch.float64 if precision == "float64" else torch.float32
    params, truth = torch.from_numpy(params).to(dtype), torch.from_numpy(truth).to(dtype)
    old = modules[0]
    weights = torch.randn(old.NUM_SOLUTIONS, len(old.UNKNOWN_NAMES), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed)).to(dtype)
    tasks = {
        f"forward {forward_batch}": lambda m: forward_seconds(m, params[:forward_batch], precision, backward),
        **{
            f"backward {backward_batch} {loss}": (
                lambda m, loss=loss: backward_seconds(
                    m, params[:backward_batch], truth[:backward_batch], weights, loss, precision, backward
                )
            )
            for loss in ("selected", "all")
        },
    }
    rows = []
    for task, run in tasks.items():
        for module in modules:  # warm-up (tables, level-wise programs, caches)
            run(module)
        times = [[], []]
        for _ in range(rounds):
            for side in (0, 1, 1, 0):
                times[side].append(run(modules[side]))
        old_t, new_t = np.array(times[0]), np.array(times[1])
        ratio = new_t.reshape(-1, 2).mean(1) / old_t.reshape(-1, 2).mean(1)  # per round
        rows.append(dict(
            problem=name, task=task, old_ms=float(np.median(old_t) * 1e3), new_ms=float(np.median(new_t) * 1e3),
            ratio_median=float(np.median(ratio)), ratio_q1=float(np.percentile(ratio, 25)),
            ratio_q3=float(np.percentile(ratio, 75)),
        ))
        r = rows[-1]
        print(f"{name:26s} {task:24s} old {r['old_ms']:9.2f} ms  new {r['new_ms']:9.2f} ms  "
              f"new/old {r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}]", flush=True)
    return rows


def main(argv=None) -> int:
    if argv is None:  # run as a script (a re-run would replace a calling process)
        steady_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--problems", nargs="+", default=PROBLEMS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--forward-batch", type=int, default=10_000)
    parser.add_argument("--backward-batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("float64", "float32"), default="float64",
                        help="the solvers' precision (and the parameters' dtype)")
    parser.add_argument("--backward", choices=("ift", "autograd"), default="ift",
                        help="the solvers' backward (autograd: the forward is timed with autograd recording)")
    parser.add_argument("--label", default="runtime")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    machine = machine_info("cpu")
    rows = []
    for name in args.problems:
        modules = [import_generated(folder / f"{name}.py") for folder in (args.old, args.new)]
        rows += measure(name, modules, args.rounds, args.forward_batch, args.backward_batch, args.seed, args.precision,
                        args.backward)
    machine["load_average_end"] = load_average()
    config = dict(old=str(args.old), new=str(args.new), rounds=args.rounds, forward_batch=args.forward_batch,
                  backward_batch=args.backward_batch, seed=args.seed, precision=args.precision,
                  backward=args.backward)
    args.out.mkdir(parents=True, exist_ok=True)
    report = dict(machine=machine, config=config, rows=rows)
    (args.out / f"ab-{args.label}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# A/B: {args.label}",
        "",
        f"Old: `{args.old}`, new: `{args.new}`. {args.rounds} rounds of old, new, new, old; {args.precision}, backward={args.backward}. "
        f"{machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['versions']['torch']} "
        f"({machine['torch_threads']} threads), Python {machine['python']}, commit {machine['git_commit']} "
        f"(uncommitted changes: {machine['git_dirty']}), {machine['date']}; load average (1, 5, 15 min) "
        f"{machine['load_average_start']} at start, {machine['load_average_end']} at end.",
        "",
        "| problem | task | old (ms, median) | new (ms, median) | new / old (median per round) | quartiles |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['task']} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | "
                     f"{r['ratio_median']:.3f} | {r['ratio_q1']:.3f} - {r['ratio_q3']:.3f} |")
    (args.out / f"ab-{args.label}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
