"""The native backend against the torch path (`Solver(backend=...)`), same run, same instances.

For every problem the native backend supports: the forward's time per instance at batches 1,
100 and 10,000 (float64, CPU, median of repeats, after a warm-up call), valid solutions per
instance, the truth found (relative error <= 1e-6) and the median log10 error of both; the first
call's compile time with an empty cache and a fresh process's load time from the cache; and
PoseLib's per-instance time on the same instances where its Python API has the solver (a loop
over 2,000 instances, the Python call included, as in benchmarks/run.py, whose scene
reconstruction and conversions it reuses), and kornia's batched torch solvers at batch 10,000, with
their truth found; and the native backend at batch 10,000 on every core of the machine (a fresh
process with OMP_NUM_THREADS and torch's threads set to the core count: the kernel's OpenMP loop
over instances). Results: results/native.{json,md}.

    python benchmarks/native.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import geometry  # noqa: E402
from conftest import generated_module  # noqa: E402

from solvergen.runtime import native  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import run as peers  # noqa: E402  (benchmarks/run.py: PoseLib's inputs and outputs in our unknowns)

POSELIB_INSTANCES = 2000

PROBLEMS = ["p3p", "implicit_example", "relpose_5pt_nullspace", "relpose_5pt", "relpose_6pt_shared_focal",
            "relpose_6pt_shared_focal_natural", "fundamental_7pt", "gp3p", "p35pf", "relpose_8pt_radial"]


def per_instance_us(solver, params, repeats):
    with torch.no_grad():
        solver(params[:2])
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            solver(params)
            times.append(time.perf_counter() - started)
    return 1e6 * float(np.median(times)) / len(params)


def cold_and_warm_build(name):
    """Seconds for a fresh process to build the native kernel with an empty cache, then to load it."""
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT / 'tests')!r}); from conftest import generated_module; "
              f"solver = generated_module({name!r}).Solver; "
              "t = time.perf_counter(); solver(backend='native'); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, SOLVERGEN_CACHE=cache)
        return [float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for _ in range(2)]


def all_cores_us(name, repeats):
    """Native µs per instance at batch 10,000 in a fresh process using every core (OpenMP reads
    OMP_NUM_THREADS when the kernel loads), on the same instances."""
    cores = os.cpu_count() or 1
    script = (f"import sys, time, numpy as np, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); import geometry; "
              f"from conftest import generated_module; torch.set_num_threads({cores}); torch.set_grad_enabled(False); "
              f"params, _ = geometry.INSTANCES[{name!r}](10000, np.random.default_rng(0)); "
              "params = torch.tensor(params, dtype=torch.float64); "
              f"solver = generated_module({name!r}).Solver(backend='native'); solver(params[:2]); times = []\n"
              f"for _ in range({repeats}):\n"
              "    started = time.perf_counter(); solver(params); times.append(time.perf_counter() - started)\n"
              "print(1e6 * float(np.median(times)) / len(params))")
    env = dict(os.environ, OMP_NUM_THREADS=str(cores))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return cores, float(result.stdout.split()[-1])


def peer_scene(package, name, module, params, truth):
    """(run.py's Case, the points behind the instances), or (None, None) where the peer's
    package is missing or the points cannot be rebuilt (benchmarks/run.py: replicate_scene)."""
    try:
        __import__(package)
    except ImportError:
        return None, None
    case = peers.Case(name, module, params.numpy(), truth)
    return case, peers.replicate_scene(case, 0)


def poselib_timings(name, module, params, truth, repeats):
    """[(PoseLib solver, µs per instance, truth found)] on the first POSELIB_INSTANCES instances."""
    case, scene = peer_scene("poselib", name, module, params, truth)
    if scene is None:
        return []
    out = []
    for peer in peers.poselib_peers(case, scene, POSELIB_INSTANCES):
        peer.fn(*peer.inputs[0])
        times, outputs = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = [peer.fn(*args) for args in peer.inputs]
            times.append(time.perf_counter() - started)
        solutions, valid = peers.pad_solutions([peer.to_solutions(i, o) for i, o in enumerate(outputs)], truth.shape[1])
        errors = peers.relative_errors(case, solutions, valid)
        out.append({"solver": peer.name, "us": 1e6 * float(np.median(times)) / len(peer.inputs),
                    "truth_found": float((errors <= 1e-6).mean()), "note": peer.note})
    return out


def kornia_timings(name, module, params, truth, repeats):
    """[(kornia solver, µs per instance at batch 10,000, truth found)]: its batched torch solvers
    on the same instances (benchmarks/run.py's inputs and conversions), float64."""
    case, scene = peer_scene("kornia", name, module, params, truth)
    if scene is None:
        return []
    out = []
    batch = params.shape[0]
    for peer in peers.kornia_peers(case, scene, "cpu", False):
        if peer.name.startswith("solvergen"):  # run.py's own "ours from points" row
            continue
        inputs = peer.inputs(batch, torch.float64)
        with torch.no_grad():
            peer.fn(*[x[:2] for x in inputs])
            times, output = [], None
            for _ in range(repeats):
                started = time.perf_counter()
                output = peer.fn(*inputs)
                times.append(time.perf_counter() - started)
        solutions, valid = peer.to_solutions(output, batch)
        errors = peers.relative_errors(case, solutions, valid)
        out.append({"solver": peer.name, "us": 1e6 * float(np.median(times)) / batch,
                    "truth_found": float((errors <= 1e-6).mean()), "note": peer.note})
    return out


def main(argv=None):
    if argv is None:  # run as a script (a re-run would replace a calling process)
        peers.steady_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    records = []
    for name in PROBLEMS:
        module = generated_module(name)
        params, truth = geometry.INSTANCES[name](10000, np.random.default_rng(0))
        params = torch.tensor(params, dtype=torch.float64)
        record = {"problem": name}
        record["compile_s"], record["cached_load_s"] = cold_and_warm_build(name)
        for backend in ("torch", "native"):
            solver = module.Solver(backend=backend)
            for batch in (1, 100, 10000):
                record[f"{backend}_us_{batch}"] = per_instance_us(solver, params[:batch], args.repeats)
            with torch.no_grad():
                x, valid = solver(params)
            errors = geometry.relative_errors(x.numpy(), valid.numpy(), truth, module.PLAN.sign_flip)
            record[f"{backend}_valid_per_instance"] = float(valid.sum(-1).double().mean())
            record[f"{backend}_truth_found"] = float((errors <= 1e-6).mean())
            record[f"{backend}_median_log10_error"] = float(np.median(np.log10(np.maximum(errors, 1e-17))))
        record["cores"], record["native_us_10000_all_cores"] = all_cores_us(name, args.repeats)
        record["poselib"] = poselib_timings(name, module, params, truth, args.repeats)
        record["kornia"] = kornia_timings(name, module, params, truth, args.repeats)
        records.append(record)
        print(json.dumps(record), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    data = {"command": "python benchmarks/native.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "compiler": native._compiler_id(native.compiler()), "commit": commit,
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": list(os.getloadavg()),
                        "malloc_settings": {k: os.environ.get(k) for k in peers.STEADY_MALLOC}},
            "records": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "native.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# Native backend against the torch path", "",
             f"`{data['command']}`; {data['machine']['date']}; {data['machine']['cpu']}, torch threads "
             f"{data['machine']['torch_threads']}; torch {data['machine']['torch']}; {data['machine']['compiler']}; "
             f"commit {commit or '?'}; load average at start {[round(v, 2) for v in data['machine']['load_average']]}; "
             f"malloc settings {data['machine']['malloc_settings']} (benchmarks/run.py `steady_allocator`).", "",
             "float64, CPU, µs per instance of the whole forward (median). Truth found: relative error <= 1e-6.", "",
             "| problem | torch b=1 | native b=1 | torch b=100 | native b=100 | torch b=10,000 | native b=10,000 | "
             "speed-up at 10,000 | native b=10,000, all cores | valid/inst. torch / native | truth found torch / native | "
             "median log10 err torch / native | compile s | cached load s |",
             "| --- " * 14 + "|"]
    for r in records:
        lines.append(
            f"| {r['problem']} | {r['torch_us_1']:.0f} | {r['native_us_1']:.0f} | {r['torch_us_100']:.1f} | "
            f"{r['native_us_100']:.1f} | {r['torch_us_10000']:.1f} | {r['native_us_10000']:.1f} | "
            f"{r['torch_us_10000'] / r['native_us_10000']:.1f}x | {r['native_us_10000_all_cores']:.2f} ({r['cores']}) | "
            f"{r['torch_valid_per_instance']:.3f} / "
            f"{r['native_valid_per_instance']:.3f} | {100 * r['torch_truth_found']:.2f}% / {100 * r['native_truth_found']:.2f}% | "
            f"{r['torch_median_log10_error']:.1f} / {r['native_median_log10_error']:.1f} | {r['compile_s']:.1f} | "
            f"{r['cached_load_s']:.2f} |")
    lines += ["", f"Peers in the same run: PoseLib, a Python loop over {POSELIB_INSTANCES} of the same instances, one "
              "thread, the Python call included (its C++ alone is faster: the 5-point solver's README figure is 5.5 µs); "
              "kornia, batched torch at batch 10,000 (float64). Truth found on the instances each ran.", "",
              "| problem | peer | peer µs | native µs at 10,000 | native / peer time | native, all cores / peer time | "
              "peer truth found |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        for peer in r["poselib"] + r.get("kornia", []):
            note = f" ({peer['note']})" if peer["note"] else ""
            lines.append(f"| {r['problem']} | {peer['solver']}{note} | {peer['us']:.1f} | {r['native_us_10000']:.1f} | "
                         f"{r['native_us_10000'] / peer['us']:.2f} | {r['native_us_10000_all_cores'] / peer['us']:.2f} | "
                         f"{100 * peer['truth_found']:.2f}% |")
    (out / "native.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
