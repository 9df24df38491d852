"""Size-generic layers: backward time and peak memory against the generic and hand-derived methods.

For lml, robust_pool and entropic_ot, at n = 64, 256, 1,024, 4,096 (OT: m = n = 64, 256, 1,024)
and batch 8 and 128, the backward of one loss <g, y> (the forward is run once, outside the timing):

  - ift: the generated layer's backward (the structured IFT solve the compiler chose);
  - dense_ift: the DDN library's generic method (tests/size_generic_references.dense_ift_backward:
    autograd Hessians, one backward pass per unknown entry, dense solves);
  - autograd: through the forward's iterations (lml, robust_pool: the layer with
    backward="autograd", through its Newton steps; entropic_ot: through 100 log-domain Sinkhorn
    iterations, the usual alternative);
  - closed_form: the papers' hand-derived backward (LML eq. 19; DDN's OT block elimination;
    DDN's pooling backward with the d x d Hessian), called as a bare function;
  - closed_form_layer: the same backward as a user runs it, inside a torch.autograd.Function
    (as the LML paper's module does), timed like ift: autograd.grad of the same loss <g, y>.

A method is not run where it would not fit this machine's time or memory (the JSON says which
and why). Peak memory: the largest sum of live CPU allocations during the backward, from
torch.profiler's memory events. Output: results/size_generic.{json,md,png}.

    python benchmarks/size_generic.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import size_generic_references as ref  # noqa: E402
from run import STEADY_MALLOC, peak_bytes, steady_allocator  # noqa: E402

import solvergen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DENSE_MAX_UNKNOWNS = 1024  # the dense method's N backward passes and N x N solves beyond this: minutes
AUTOGRAD_MAX_ENTRIES = 4_000_000  # batch x unknowns through the iterations: memory beyond this
CASE_MAX_ENTRIES = 20_000_000  # batch x unknowns: the Sinkhorn forward alone takes minutes beyond this


def median_time(fn, repeats: int, budget: float) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start < budget or len(times) < 2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class _ClosedFormLayer(torch.autograd.Function):
    """y (given) with a hand-derived backward `backward(grad) -> dl/dx` attached to x."""

    @staticmethod
    def forward(ctx, x, y, backward):
        ctx.closed_form = backward
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.closed_form(grad), None, None


def closed_form_layer(x, y, backward, grad):
    """The closed-form backward timed as a layer's: autograd.grad of <grad, y> wrt x."""
    xg = x.clone().requires_grad_(True)
    return gradient_runner(lambda: (_ClosedFormLayer.apply(xg, y, backward) * grad).sum(), [xg])


def gradient_runner(loss_of, inputs):
    """() -> gradient of the scalar loss wrt inputs, the graph kept between calls."""
    loss = loss_of()
    return lambda: torch.autograd.grad(loss, inputs, retain_graph=True)


# -- Problems ---------------------------------------------------------------------------------


def lml_case(n, batch, gen):
    x = 3 * torch.randn(batch, n, generator=gen)
    k = torch.full((batch,), float(max(1, n // 10)))
    layer = solvergen.load(ROOT / "problems" / "lml.py")
    y, ok = layer(x, k)
    grad = torch.randn(batch, n, generator=gen)
    xg = x.clone().requires_grad_(True)
    methods = {
        "ift": gradient_runner(lambda: (layer(xg, k)[0] * grad).sum(), [xg]),
        "closed_form": lambda: ref.lml_backward(y, grad),
        "closed_form_layer": closed_form_layer(x, y, lambda g: ref.lml_backward(y, g), grad),
    }
    if batch * n <= AUTOGRAD_MAX_ENTRIES:
        auto = solvergen.load(ROOT / "problems" / "lml.py", backward="autograd")
        xa = x.clone().requires_grad_(True)
        methods["autograd"] = gradient_runner(lambda: (auto(xa, k)[0] * grad).sum(), [xa])
    if n <= DENSE_MAX_UNKNOWNS:
        methods["dense_ift"] = lambda: ref.dense_ift_backward(
            lambda y_, x_, k_: ref.lml_objective(y_, x_), lambda y_, x_, k_: (y_.sum(-1) - k_)[:, None],
            y, (x, k), grad)
    return methods, ok, n


def pool_case(n, batch, gen):
    x = torch.randn(batch, n, 3, generator=gen)
    x = x + 6 * (torch.rand(batch, n, 1, generator=gen) < 0.2) * torch.randn(batch, n, 3, generator=gen).sign()
    layer = solvergen.load(ROOT / "problems" / "robust_pool.py")
    y, ok = layer(x, 1.0)
    grad = torch.randn(batch, 3, generator=gen)
    xg = x.clone().requires_grad_(True)
    methods = {
        "ift": gradient_runner(lambda: (layer(xg, 1.0)[0] * grad).sum(), [xg]),
        "closed_form": lambda: ref.robust_pool_backward(x, y, "pseudo_huber", 1.0, grad),
        "closed_form_layer": closed_form_layer(x, y, lambda g: ref.robust_pool_backward(x, y, "pseudo_huber", 1.0, g),
                                               grad),
        "dense_ift": lambda: ref.dense_ift_backward(
            lambda y_, x_: ref.robust_pool_objective(y_, x_, "pseudo_huber", 1.0), None, y, (x,), grad),
    }
    auto = solvergen.load(ROOT / "problems" / "robust_pool.py", backward="autograd")
    xa = x.clone().requires_grad_(True)
    methods["autograd"] = gradient_runner(lambda: (auto(xa, 1.0)[0] * grad).sum(), [xa])
    return methods, ok, 3


def ot_case(n, batch, gen):
    M = torch.rand(batch, n, n, generator=gen)
    r = torch.rand(batch, n, generator=gen) + 0.5
    c = torch.rand(batch, n, generator=gen) + 0.5
    r, c = r / r.sum(-1, keepdim=True), c / c.sum(-1, keepdim=True)
    eps = 0.1
    P = ref.sinkhorn(M, r, c, eps, iterations=500).detach()
    layer = solvergen.load(ROOT / "problems" / "entropic_ot.py")
    layer.attach(M, r, c, eps, P)
    ok = layer.last_ok
    grad = torch.randn(batch, n, n, generator=gen)
    Mg = M.clone().requires_grad_(True)
    methods = {
        "ift": gradient_runner(lambda: (layer.attach(Mg, r, c, eps, P) * grad).sum(), [Mg]),
        "closed_form": lambda: ref.ot_backward_ddn(P, r, c, eps, grad),
        "closed_form_layer": closed_form_layer(M, P, lambda g: ref.ot_backward_ddn(P, r, c, eps, g)[0], grad),
    }
    if batch * n * n <= AUTOGRAD_MAX_ENTRIES:
        Ms = M.clone().requires_grad_(True)
        methods["autograd"] = gradient_runner(lambda: (ref.sinkhorn(Ms, r, c, eps, iterations=100) * grad).sum(), [Ms])
    return methods, ok, n * n


CASES = {"lml": lml_case, "robust_pool": pool_case, "entropic_ot": ot_case}


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "solvergen": solvergen.__version__, "commit": commit,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average": list(os.getloadavg()),
            "malloc_settings": {k: os.environ.get(k) for k in STEADY_MALLOC}}


def run(sizes: dict, batches, repeats, budget) -> list:
    records = []
    for name, ns in sizes.items():
        for n in ns:
            for batch in batches:
                if name == "entropic_ot" and batch * n * n > CASE_MAX_ENTRIES:
                    records.append({"layer": name, "n": n, "batch": batch, "skipped": "the forward (Sinkhorn on "
                                    f"{batch} x {n} x {n}) takes minutes on this machine"})
                    print(json.dumps(records[-1]), flush=True)
                    continue
                gen = torch.Generator().manual_seed(n * 1000 + batch)
                methods, ok, unknowns = CASES[name](n, batch, gen)
                record = {"layer": name, "n": n, "batch": batch, "unknowns": unknowns,
                          "ok_percent": 100.0 * ok.double().mean().item(), "ms": {}, "peak_mb": {}, "not_run": {}}
                for method in ("ift", "closed_form", "closed_form_layer", "autograd", "dense_ift"):
                    if method not in methods:
                        record["not_run"][method] = ("N backward passes and N x N dense solves with N = "
                                                     f"{unknowns} per instance" if method == "dense_ift"
                                                     else "graph of every iteration: memory")
                        continue
                    fn = methods[method]
                    record["ms"][method] = 1e3 * median_time(fn, repeats, budget)
                    record["peak_mb"][method] = peak_bytes(fn) / 2**20
                records.append(record)
                print(json.dumps(record), flush=True)
    return records


def markdown(data) -> str:
    m = data["machine"]
    lines = [
        "# Size-generic layers: backward time and peak memory",
        "",
        f"`{data['command']}`; {m['date']}; {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; "
        f"torch {m['torch']}, solvergen {m['solvergen']} ({m['commit'][:10] if m['commit'] else '?'}); "
        f"load average at start {[round(v, 2) for v in m['load_average']]}.",
        "",
        "float64, CPU. Backward of one loss <g, y> in ms for the whole batch (median), the forward excluded; peak: "
        "largest live CPU allocation during the backward (torch.profiler). ift: the generated layer; closed form: "
        "the papers' hand-derived backward, as a bare function; closed form layer: the same inside a "
        "torch.autograd.Function, timed as ift is (autograd.grad of the same loss); autograd: through the forward's "
        "iterations (entropic_ot: 100 Sinkhorn iterations); dense IFT: the DDN library's generic method. '-': not "
        "run (see the JSON's `not_run`).",
        "",
        "| layer | n | batch | ift ms | closed form ms | closed form layer ms | autograd ms | dense IFT ms | dense / ift "
        "| ift / closed form | ift / closed form layer | peak MB ift | peak MB closed form | peak MB autograd "
        "| peak MB dense | ok % |",
        "| --- " * 16 + "|",
    ]

    def f(v):
        return "-" if v is None else (f"{v:.3g}" if v < 1000 else f"{v:.0f}")
    for r in data["records"]:
        if "skipped" in r:
            continue
        ms, mb = r["ms"], r["peak_mb"]
        ratio = f"{ms['dense_ift'] / ms['ift']:.0f}x" if "dense_ift" in ms else "-"
        closed = f"{ms['ift'] / ms['closed_form']:.2f}" if "closed_form" in ms else "-"
        layer = f"{ms['ift'] / ms['closed_form_layer']:.2f}" if "closed_form_layer" in ms else "-"
        size = f"{r['n']} x {r['n']}" if r["layer"] == "entropic_ot" else str(r["n"])
        lines.append(f"| {r['layer']} | {size} | {r['batch']} | {f(ms.get('ift'))} | {f(ms.get('closed_form'))} | "
                     f"{f(ms.get('closed_form_layer'))} | {f(ms.get('autograd'))} | {f(ms.get('dense_ift'))} | {ratio} | "
                     f"{closed} | {layer} | {f(mb.get('ift'))} | "
                     f"{f(mb.get('closed_form'))} | {f(mb.get('autograd'))} | {f(mb.get('dense_ift'))} | {r['ok_percent']:.1f} |")
    skipped = [r for r in data["records"] if "skipped" in r]
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"{r['layer']} n = {r['n']}, batch {r['batch']} ({r['skipped']})"
                                            for r in skipped) + "."]
    return "\n".join(lines) + "\n"


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"ift": ("C0", "o", "generated IFT"), "closed_form": ("C2", "s", "hand-derived closed form"),
              "autograd": ("C1", "^", "autograd through iterations"), "dense_ift": ("C3", "x", "dense IFT (DDN generic)")}
    for ax, name in zip(axes, ("lml", "robust_pool", "entropic_ot")):
        records = [r for r in data["records"] if r["layer"] == name and r["batch"] == 8 and "skipped" not in r]
        for method, (color, marker, label) in styles.items():
            pts = [(r["unknowns"] if name == "entropic_ot" else r["n"], r["ms"][method]) for r in records if method in r["ms"]]
            if pts:
                ax.loglog(*zip(*pts), color=color, marker=marker, label=label)
        ax.set_title(f"{name}, batch 8")
        ax.set_xlabel("m x n (plan entries)" if name == "entropic_ot" else "n")
        ax.set_ylabel("backward ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    if argv is None:  # run as a script (a re-run would replace a calling process)
        steady_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 64, 256; batch 8; few repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    if args.quick:
        sizes = {"lml": [64, 256], "robust_pool": [64, 256], "entropic_ot": [64]}
        batches, repeats, budget = [8], 3, 1.0
    else:
        sizes = {"lml": [64, 256, 1024, 4096], "robust_pool": [64, 256, 1024, 4096], "entropic_ot": [64, 256, 1024]}
        batches, repeats, budget = [8, 128], 7, 5.0
    command = "python benchmarks/size_generic.py" + (" --quick" if args.quick else "") + (
        f" --threads {args.threads}" if args.threads else "")
    data = {"command": command, "machine": machine(), "records": run(sizes, batches, repeats, budget)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "size_generic_quick" if args.quick else "size_generic"
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(markdown(data))
    plot(data, out / f"{stem}.png")
    print(markdown(data))


if __name__ == "__main__":
    main()
