"""The native backend on a CUDA device (NVRTC, one instance per thread), for a lent GPU.

Per problem, float64: the first call's NVRTC compile with an empty cache and the load from the
cache in a fresh process; throughput (instances per second) at batch 10^4 to 10^6 (--batches),
timed two ways: each call followed by torch.cuda.synchronize(), and `--calls` calls queued back
to back with one synchronize at the end (the forward issues no host synchronisation: checked here
with torch.cuda.set_sync_debug_mode("error") on every timed call); the truth found and the
median log10 error of the GPU's solutions, and how often they match the CPU kernel's on the same
10,000 instances (both ways, 1e-6 relative). Results: --out/native_cuda.{json,md}.

    python benchmarks/gpu/native_cuda.py --out benchmarks/results
    python benchmarks/gpu/native_cuda.py --problems relpose_5pt_nullspace --batches 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import geometry  # noqa: E402
from conftest import generated_module  # noqa: E402
from test_native import matched  # noqa: E402

from solvergen.runtime import native  # noqa: E402

PROBLEMS = ["relpose_5pt_nullspace", "relpose_5pt", "p3p", "relpose_6pt_shared_focal", "fundamental_7pt"]


def build_seconds(name: str) -> list[float]:
    """A fresh process's first call on the GPU with an empty cache (NVRTC compile), then another's (load)."""
    script = (f"import sys, time, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); import numpy as np, geometry; "
              f"from conftest import generated_module; p, _ = geometry.INSTANCES[{name!r}](4, np.random.default_rng(0)); "
              f"s = generated_module({name!r}).Solver(backend='native'); a = torch.tensor(p).cuda(); "
              "t = time.perf_counter(); s(a); torch.cuda.synchronize(); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, SOLVERGEN_CACHE=cache)
        return [float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for _ in range(2)]


def throughput(solver, params, calls: int) -> dict:
    """Instances per second, synchronised after each call and queued back to back."""
    solver(params)
    torch.cuda.synchronize()
    each = []
    for _ in range(calls):
        started = time.perf_counter()
        torch.cuda.set_sync_debug_mode("error")
        solver(params)
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        each.append(time.perf_counter() - started)
    started = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    for _ in range(calls):
        solver(params)
    torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    queued = (time.perf_counter() - started) / calls
    return {"per_second_synchronised": len(params) / float(np.median(each)), "per_second_queued": len(params) / queued}


def accuracy(name: str, module, solver) -> dict:
    params, truth = geometry.INSTANCES[name](10000, np.random.default_rng(1))
    a = torch.tensor(params, dtype=torch.float64)
    x_g, v_g = (t.cpu() for t in solver(a.cuda()))
    x_c, v_c = module.Solver(backend="native")(a)
    errors = geometry.relative_errors(x_g.numpy(), v_g.numpy(), truth, module.PLAN.sign_flip)
    return {"truth_found": float((errors <= 1e-6).mean()),
            "median_log10_error": float(np.median(np.log10(np.maximum(errors, 1e-17)))),
            "gpu_finds_cpu": float(matched(x_c, v_c, x_g, v_g, 1e-6).float().mean()),
            "cpu_finds_gpu": float(matched(x_g, v_g, x_c, v_c, 1e-6).float().mean())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--batches", default="10000,100000,1000000")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--commit", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("native_cuda.py: no CUDA device")
    torch.set_grad_enabled(False)
    props = torch.cuda.get_device_properties(0)
    data = {"command": "python benchmarks/gpu/native_cuda.py " + " ".join(argv or sys.argv[1:]),
            "machine": {"device": props.name, "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
                        "cuda": torch.version.cuda, "nvrtc": native.nvrtc_version(native.nvrtc_library()),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": args.commit},
            "results": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.problems.split(","):
        module = generated_module(name)
        solver = module.Solver(backend="native")
        record = {"problem": name, "build_seconds": build_seconds(name), **accuracy(name, module, solver)}
        params, _ = geometry.INSTANCES[name](10000, np.random.default_rng(0))
        base = torch.tensor(params, dtype=torch.float64).cuda()
        for batch in (int(b) for b in args.batches.split(",")):
            a = base.repeat((batch + len(base) - 1) // len(base), 1)[:batch].contiguous()
            record[f"batch_{batch}"] = throughput(solver, a, args.calls)
        data["results"].append(record)
        print(json.dumps(record), flush=True)
        write(data, out)


def write(data, out: Path):
    (out / "native_cuda.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    lines = ["# The native backend on a CUDA device", "",
             f"`{data['command']}`; {m['date']}; {m['device']} (sm {m['capability']}); torch {m['torch']}, CUDA "
             f"{m['cuda']}, NVRTC {m['nvrtc']}; commit {m['commit'] or '?'}.", "",
             "float64. Instances per second: synchronised after each call / calls queued back to back (no host "
             "synchronisation inside the forward: CUDA's sync debug mode raised on none of them). Build: a fresh "
             "process's first call with an empty cache (NVRTC) / a second process's (load from the cache).", "",
             "| problem | build s (cold / cached) | truth found | median log10 error | GPU finds CPU's | CPU finds GPU's "
             "| " + " | ".join(k.replace("batch_", "batch ") for k in data["results"][0] if k.startswith("batch_")) + " |",
             "| --- " * (6 + sum(k.startswith("batch_") for k in data["results"][0])) + "|"]
    for r in data["results"]:
        rates = [f"{v['per_second_synchronised']:.3g} / {v['per_second_queued']:.3g}" for k, v in r.items()
                 if k.startswith("batch_")]
        lines.append(f"| {r['problem']} | {r['build_seconds'][0]:.1f} / {r['build_seconds'][1]:.2f} | "
                     f"{100 * r['truth_found']:.2f}% | {r['median_log10_error']:.1f} | {100 * r['gpu_finds_cpu']:.2f}% | "
                     f"{100 * r['cpu_finds_gpu']:.2f}% | " + " | ".join(rates) + " |")
    (out / "native_cuda.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
