"""GPU correctness of the committed generated solvers: the same ground-truth instances solved on
the CPU and on the GPU (float64), compared with the truth and with each other.

    python gpu/gpu_check.py --device cuda --n 10000 --out DIR

Per problem (tests/geometry.py INSTANCES, seed 2026):
  - cpu/auto:   Solver() on the CPU (eig auto: LAPACK on the CPU)
  - cpu/<m>:    Solver(eig=<m>) on the CPU, <m> the method the GPU resolves to (charpoly or closed_form)
  - gpu/auto:   Solver() on the GPU (float64)
  - gpu/f32:    Solver(precision="float32") on the GPU (float64 inputs), truth share at 1e-3
Truth: per instance, min relative error over valid solutions (up to sign where the plan has
sign_flip); "found" = error <= 1e-6. Agreement gpu vs cpu/<m> and vs cpu/auto: instances whose
valid-solution counts are equal, and, per instance, the largest relative distance of a valid
solution of one side to the nearest valid solution of the other (both directions), with the
same up-to-sign rule. Gradients: IFT backward of the 'selected' loss (fixed random weights times
the valid solution nearest the truth), GPU vs cpu/<m>, on instances found by both.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import geometry  # noqa: E402

from solvergen.generate import import_generated  # noqa: E402

SEED = 2026
FOUND = 1e-6
_T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def truth_errors(sol, valid, truth, flip):
    return geometry.relative_errors(sol, valid, truth, up_to_sign=flip)


def set_distance(a, va, b, vb, flip, scale):
    """Per instance: max over valid solutions of a of the min relative distance to valid b
    (inf if a has a valid solution and b none; 0 if a has none)."""
    d = np.linalg.norm(a[:, :, None, :] - b[:, None, :, :], axis=-1)
    if flip is not None and flip is not False:
        f = -1.0 if flip is True else np.asarray(flip)
        d = np.minimum(d, np.linalg.norm(a[:, :, None, :] * f - b[:, None, :, :], axis=-1))
    d = d / scale[:, None, None]
    d = np.where(vb[:, None, :], d, np.inf).min(axis=2)  # [n, Sa]
    d = np.where(va, d, 0.0).max(axis=1)
    return d


def summarize_truth(err, valid):
    le = np.log10(np.maximum(err, 1e-18))
    med = float(np.median(le))
    return {
        "found_share": float(np.mean(err <= FOUND)),
        "found_share_1e3": float(np.mean(err <= 1e-3)),
        "median_log10_error": med if math.isfinite(med) else None,
        "mean_valid": float(valid.sum(-1).mean()),
    }


def agreement(a, va, b, vb, flip, truth):
    scale = np.linalg.norm(truth, axis=-1)
    d = np.maximum(set_distance(a, va, b, vb, flip, scale), set_distance(b, vb, a, va, flip, scale))
    same_count = va.sum(-1) == vb.sum(-1)
    ld = np.log10(np.maximum(d, 1e-18))
    return {
        "same_valid_count_share": float(np.mean(same_count)),
        "sets_within_1e-8_share": float(np.mean(d <= 1e-8)),
        "sets_within_1e-6_share": float(np.mean(d <= 1e-6)),
        "median_log10_set_distance": float(np.median(ld)),
        "p99_log10_set_distance": float(np.percentile(ld, 99)),
    }


def solve(solver, params, device):
    x = torch.from_numpy(params).to(device)
    with torch.no_grad():
        sol, valid = solver(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return sol.double().cpu().numpy(), valid.cpu().numpy()


def selected_grad(module, params, truth, device, **kw):
    solver = module.Solver(**kw)
    x = torch.from_numpy(params).to(device).requires_grad_(True)
    ref = torch.from_numpy(truth).to(device)
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(len(module.UNKNOWN_NAMES), generator=g, dtype=torch.float64).to(device)
    sol, valid = solver(x)
    picked, found = solver.select(sol, valid, reference=ref)
    (picked * w).sum().backward()
    return x.grad.cpu().numpy(), found.cpu().numpy()


def check(name, device, n, grad_n):
    module = import_generated(ROOT / "generated" / f"{name}.py")
    params, truth = geometry.INSTANCES[name](n, np.random.default_rng(SEED))
    params, truth = np.ascontiguousarray(params), np.ascontiguousarray(truth)
    flip = module.PLAN.sign_flip
    method = module.Solver().resolved_eig(torch.device("cuda"))  # what the GPU runs
    out = {"problem": name, "n": n, "gpu_eig": method, "num_solutions": module.NUM_SOLUTIONS}
    runs = {}
    t = time.perf_counter()
    runs["cpu/auto"] = solve(module.Solver(), params, "cpu")
    runs[f"cpu/{method}"] = solve(module.Solver(eig=method), params, "cpu")
    t_cpu = time.perf_counter() - t
    t = time.perf_counter()
    solve(module.Solver(), params[:64], device)  # first call: tables and programs built
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    runs["gpu/auto"] = solve(module.Solver(), params, device)
    t_gpu = time.perf_counter() - t
    runs["gpu/f32"] = solve(module.Solver(precision="float32"), params, device)
    out["seconds"] = {"cpu_two_solves": t_cpu, "gpu_first_call_b64": t_first, "gpu_solve": t_gpu}
    out["truth"] = {}
    for key, (s, v) in runs.items():
        out["truth"][key] = summarize_truth(truth_errors(s, v, truth, flip), v)
    g, vg = runs["gpu/auto"]
    out["agree_gpu_vs_cpu_same_eig"] = agreement(g, vg, *runs[f"cpu/{method}"], flip, truth)
    out["agree_gpu_vs_cpu_auto"] = agreement(g, vg, *runs["cpu/auto"], flip, truth)
    # gradients
    m = min(grad_n, n)
    gc, fc = selected_grad(module, params[:m], truth[:m], "cpu", eig=method)
    gg, fg = selected_grad(module, params[:m], truth[:m], device)
    both = fc & fg
    finite = np.isfinite(gg).all(-1) & np.isfinite(gc).all(-1)
    use = both & finite
    rel = np.linalg.norm(gg - gc, axis=-1) / np.maximum(np.linalg.norm(gc, axis=-1), 1e-300)
    lr = np.log10(np.maximum(rel[use], 1e-18))
    out["grad"] = {
        "n": m,
        "found_both": int(both.sum()),
        "nonfinite_gpu": int((~np.isfinite(gg).all(-1)).sum()),
        "nonfinite_cpu": int((~np.isfinite(gc).all(-1)).sum()),
        "median_log10_rel_diff": float(np.median(lr)) if lr.size else None,
        "p99_log10_rel_diff": float(np.percentile(lr, 99)) if lr.size else None,
        "within_1e-6_share": float(np.mean(rel[use] <= 1e-6)) if lr.size else None,
    }
    return out


def markdown(results, meta):
    lines = [
        "# solvergen GPU correctness: CPU vs GPU on the same instances",
        "",
        f"- {meta['gpu']} (CUDA {meta['cuda']}), torch {meta['torch']}, numpy {meta['numpy']}, Python {meta['python']}",
        f"- Commit `{meta['commit']}` (the committed generated solvers); date {meta['date']}; script: gpu_check.py "
        f"(not in the repository); {meta['n']} instances per problem from tests/geometry.py (seed {SEED}), float64 inputs",
        "- Truth found: the smallest relative error over valid solutions <= 1e-6 (up to sign where the plan has "
        "sign_flip); `gpu f32` is Solver(precision=\"float32\") on the GPU, its share at 1e-3.",
        "- cpu/<eig>: the CPU solver with the eigen method the GPU resolves to (charpoly, or closed_form for action "
        "matrices up to 4 x 4); cpu/auto: the CPU default (LAPACK).",
        "- Set distance: per instance, the largest relative distance (to |truth|) of a valid solution of one run to "
        "the nearest valid solution of the other, both ways.",
        "",
        "## Truth",
        "",
        "| problem | GPU eig | truth found: cpu auto | cpu same eig | gpu | gpu f32 (1e-3) | median log10 err: cpu auto | cpu same eig | gpu | mean valid: cpu same eig | gpu |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    for r in results:
        if "error" in r:
            lines.append(f"| {r['problem']} | FAILED: {r['error'][:200]} |")
            continue
        m = r["gpu_eig"]
        t = r["truth"]
        lines.append(
            f"| {r['problem']} | {m} | {pct(t['cpu/auto']['found_share'])} | {pct(t[f'cpu/{m}']['found_share'])} | "
            f"{pct(t['gpu/auto']['found_share'])} | {pct(t['gpu/f32']['found_share_1e3'])} | "
            f"{fmt(t['cpu/auto']['median_log10_error'])} | {fmt(t[f'cpu/{m}']['median_log10_error'])} | "
            f"{fmt(t['gpu/auto']['median_log10_error'])} | {t[f'cpu/{m}']['mean_valid']:.3f} | {t['gpu/auto']['mean_valid']:.3f} |"
        )
    lines += [
        "",
        "## GPU against CPU",
        "",
        "| problem | vs | same valid count | sets within 1e-8 | within 1e-6 | median log10 set distance | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            continue
        for key, label in (("agree_gpu_vs_cpu_same_eig", f"cpu/{r['gpu_eig']}"), ("agree_gpu_vs_cpu_auto", "cpu/auto")):
            a = r[key]
            lines.append(
                f"| {r['problem']} | {label} | {pct(a['same_valid_count_share'])} | {pct(a['sets_within_1e-8_share'])} | "
                f"{pct(a['sets_within_1e-6_share'])} | {fmt(a['median_log10_set_distance'])} | {fmt(a['p99_log10_set_distance'])} |"
            )
    lines += [
        "",
        "## IFT gradients, GPU against CPU (same eig)",
        "",
        "Loss: fixed random weights times the valid solution nearest the truth (`Solver.select`); gradient with "
        "respect to the parameters, relative difference |g_gpu - g_cpu| / |g_cpu| on instances where both found one.",
        "",
        "| problem | instances | found by both | non-finite gpu / cpu | median log10 rel diff | p99 | within 1e-6 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            continue
        g = r["grad"]
        lines.append(
            f"| {r['problem']} | {g['n']} | {g['found_both']} | {g['nonfinite_gpu']} / {g['nonfinite_cpu']} | "
            f"{fmt(g['median_log10_rel_diff'])} | {fmt(g['p99_log10_rel_diff'])} | {pct(g['within_1e-6_share'])} |"
        )
    lines += ["", "## Seconds", "", "| problem | CPU: two solves | GPU first call (batch 64) | GPU solve |", "|---|---|---|---|"]
    for r in results:
        if "error" in r:
            continue
        s = r["seconds"]
        lines.append(f"| {r['problem']} | {s['cpu_two_solves']:.2f} | {s['gpu_first_call_b64']:.2f} | {s['gpu_solve']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--grad-n", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stem", default="cuda-correctness")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--problems", nargs="*")
    args = ap.parse_args()
    import datetime
    import platform

    meta = {
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU (" + args.device + ")",
        "cuda": torch.version.cuda, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "commit": args.commit, "n": args.n, "grad_n": args.grad_n,
        "device": args.device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
    }
    names = args.problems or sorted(geometry.INSTANCES)
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            r = check(name, args.device, args.n, args.grad_n)
        except Exception as exc:  # keep going: report it
            import traceback

            traceback.print_exc()
            r = {"problem": name, "error": f"{type(exc).__name__}: {exc}"}
        results.append(r)
        if "error" not in r:
            t, a, g = r["truth"], r["agree_gpu_vs_cpu_same_eig"], r["grad"]
            log(f"{name:34s} found cpu {t['cpu/auto']['found_share']:.4f} gpu {t['gpu/auto']['found_share']:.4f} "
                f"med log10 err gpu {t['gpu/auto']['median_log10_error']} | same count {a['same_valid_count_share']:.4f} "
                f"sets<=1e-8 {a['sets_within_1e-8_share']:.4f} | grad med {g['median_log10_rel_diff']} | {r['seconds']}")
        else:
            log(f"{name}: {r['error']}")
        (args.out / f"{args.stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        (args.out / f"{args.stem}.md").write_text(markdown(results, meta))
    log("done")


if __name__ == "__main__":
    main()
