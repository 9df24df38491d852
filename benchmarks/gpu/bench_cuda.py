"""benchmarks/run.py --device cuda --no-peers, with a deadline: the same measurements, run
problem by problem through run.py's own functions, writing cuda.json/.md/png after each problem
so that a run cut short keeps what it measured. Problems not started before the deadline are
listed in the notes.

    python gpu/bench_cuda.py --device cuda --deadline 300 --instances 200000 --min-time 0.5 --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
run = importlib.util.module_from_spec(spec)
sys.modules["bench_run"] = run
spec.loader.exec_module(run)


def write(results, out: Path, stem: str):
    results.total_seconds = time.perf_counter() - run._START
    results.machine["load_average_end"] = run.load_average()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(run.to_json(results), indent=1) + "\n")
    (out / f"{stem}.md").write_text(run.markdown(results))
    try:
        run.plot(results, out / f"throughput_{stem}.png")
    except Exception as exc:  # noqa: BLE001
        run.log(f"plot failed: {type(exc).__name__}: {exc}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds: start no problem after this")
    ap.add_argument("--instances", type=int, default=None, help="ground-truth instances per problem "
                    "(default: the largest batch); larger batches repeat them")
    ap.add_argument("--min-time", type=float, default=None)
    ap.add_argument("--batches", type=int, nargs="*")
    ap.add_argument("--max-call", type=float, default=None, help="config.max_call_seconds")
    ap.add_argument("--problems", nargs="*")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--stem", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    config = run.Config.make(args.device, False)
    if args.min_time is not None:
        config.min_time = args.min_time
    if args.max_call is not None:
        config.max_call_seconds = args.max_call
    if args.batches:
        config.batches = args.batches
    device_name = args.device.replace(":", "")
    stem = args.stem or device_name
    results = run.Results(config=dataclasses.asdict(config), machine=run.machine_info(args.device))
    if args.commit:
        results.machine["git_commit"] = args.commit
        results.machine["git_dirty"] = False
    m = results.machine
    run.log(f"solvergen benchmarks on {args.device} ({m.get('gpu', m['cpu'])}, {m['cpu_cores']} cores, "
            f"torch {m['versions']['torch']}, {m['torch_threads']} threads)")
    n_instances = args.instances or max(config.batches)
    results.notes.append(
        f"run through gpu/bench_cuda.py (run.py's functions, problem by problem, peers not run: kornia and PoseLib "
        f"are not installed on the GPU machine); {n_instances} ground-truth instances per problem, repeated for "
        f"larger batches; accuracy from the first {n_instances} outputs of the largest batch; min_time "
        f"{config.min_time} s; a series stops growing the batch once a call takes more than {config.max_call_seconds} s")
    names = run.discover_problems(args.problems)
    ours = run.OursTimer(config, results)
    durations = []
    for index, name in enumerate(names, 1):
        elapsed = time.perf_counter() - run._START
        expected = max(durations) if durations else 0.0
        if elapsed + expected > args.deadline:
            skipped = names[index - 1:]
            results.notes.append(f"not measured (deadline of {args.deadline:.0f} s): {', '.join(skipped)}")
            run.log(results.notes[-1])
            break
        started = time.perf_counter()
        try:
            run.log(f"[{index}/{len(names)}] {name}: generating {n_instances} instances")
            case = run.load_case(name, n_instances, config.seed, results)
            if case is None:
                continue
            shape = tuple(getattr(case.module, "TEMPLATE_SHAPE", None) or (0, 0))
            template = f"template {shape[0]} x {shape[1]}" if shape[0] else "no template"
            run.log(f"[{index}/{len(names)}] {name}: {case.module.NUM_SOLUTIONS} solutions, {template}")
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            run.bench_forward(case, ours, config, results)
            if args.device.startswith("cuda"):
                results.notes.append(f"{name}: peak CUDA memory in the forward sweep "
                                     f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
            if not args.no_backward:
                run.bench_backward(case, config, results)
        except Exception as exc:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            results.notes.append(f"{name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            run.log(results.notes[-1])
        finally:
            case = None
            ours.tensors.clear()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        durations.append(time.perf_counter() - started)
        run.log(f"[{index}/{len(names)}] {name}: done in {durations[-1]:.0f} s")
        write(results, args.out, stem)
    write(results, args.out, stem)
    run.log(f"wrote {stem}.json/.md/png to {args.out} in {results.total_seconds:.0f} s")


if __name__ == "__main__":
    main()
