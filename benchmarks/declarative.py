"""Declarative layers: forward and backward times, the IFT against its baselines, and the peers.

    python benchmarks/declarative.py                       # batches 1, 64, 1024, 10000
    python benchmarks/declarative.py --batches 1,64 --problems qp_layer

Per layer and batch size (float64, CPU): the forward; the backward of a fixed random linear
loss of y with
  - "ift": the generated backward (implicit function theorem with generated VJPs),
  - "autograd": backward="autograd", through the forward's iterations,
  - "dense_ift": the DDN library's generic method, written here pass for pass
    (`dense_ift_gradient`): the Hessians and mixed second derivatives by autograd, one backward
    pass per entry, separately for y and for the parameters, and for each constraint, then a
    dense solve (the forward's result is reused); its gradient is checked against the IFT's;
the bytes saved for backward by each; and for qp_layer the peers qpth and cvxpylayers (forward
plus backward of the same loss, on the same instances). Times are medians of repeated calls.
Results: benchmarks/results/declarative.{json,md}, with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import solvergen  # noqa: E402
from run import machine_info, peak_bytes, saved_bytes_of, steady_allocator, version  # noqa: E402
from solvergen.spec import read_spec  # noqa: E402

PROBLEMS = ("robust_line_fit", "qp_layer", "tanh_fixed_point", "kabsch_quaternion")


def instances(name: str, count: int, seed: int = 0) -> torch.Tensor:
    """Parameters from the spec's sampler (tanh_fixed_point: contractions W, random x)."""
    if name == "tanh_fixed_point":
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(count, 6, 6, generator=g, dtype=torch.float64)
        W = 0.9 * W / torch.linalg.matrix_norm(W, ord=2)[:, None, None]
        return torch.cat([W.flatten(1), torch.randn(count, 6, generator=g, dtype=torch.float64)], -1)
    problem = read_spec(ROOT / "problems" / f"{name}.py").problem
    rng = random.Random(seed)
    return torch.tensor([problem.sampler(rng) for _ in range(count)], dtype=torch.float64)


def median_time(fn, repeats: int, budget: float) -> float:
    fn()  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - started < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def median_backward_time(run_forward, repeats: int, budget: float) -> float:
    """The median time of `loss.backward()` alone: `run_forward()` builds the loss, untimed."""
    run_forward().backward()  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - started < budget):
        loss = run_forward()
        t0 = time.perf_counter()
        loss.backward()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _batch_jacobian(out, wrt, create_graph=False):
    """DDN node.py's `_batch_jacobian`: one backward pass per entry of out [B, K] -> [B, K, P]."""
    rows = []
    for k in range(out.shape[-1]):
        g = torch.autograd.grad(out[:, k].sum(), wrt, retain_graph=True, create_graph=create_graph, allow_unused=True)[0]
        rows.append(torch.zeros_like(wrt) if g is None else g)
    return torch.stack(rows, -2)


def dense_ift_gradient(layer, params, y, m, weights):
    """The DDN library's generic backward (ddn/pytorch/node.py), pass for pass:
    Argmin: fY = df/dy by autograd; fYY = _batch_jacobian(fY, y) (N passes) and fXY =
    _batch_jacobian(fY, a) (N passes); with constraints h (E + I of them) hY =
    _batch_jacobian(h, y) (E + I passes), for each constraint hiYY and hiXY (N passes each) and
    hX (E + I passes); H = fYY + sum m_i hiYY, B = fXY + sum m_i hiXY (our multipliers m, L =
    f + m . h); the KKT system with the equalities and the active inequalities (multiplier > 0;
    DDN's inequality node treats them as equalities), solved densely. Implicit: J_y =
    _batch_jacobian(F, y) and J_a = _batch_jacobian(F, a) (N passes each), J_y^T w = grad."""
    plan = layer.plan
    n = plan.num_unknowns
    with torch.enable_grad():
        a = params.detach().requires_grad_(True)
        yv = y.detach().requires_grad_(True)
        if plan.kind == "implicit":
            F = plan.residual(yv, a)
            Jy, Ja = _batch_jacobian(F, yv), _batch_jacobian(F, a)
            w = torch.linalg.lstsq(Jy.transpose(-1, -2), weights.unsqueeze(-1)).solution
            return -(Ja.transpose(-1, -2) @ w).squeeze(-1)
        f = plan.objective(yv, a)
        fY = torch.autograd.grad(f.sum(), yv, create_graph=True)[0]
        H = _batch_jacobian(fY, yv).detach()
        Bm = _batch_jacobian(fY, a).detach()
        p = plan.num_constraints
        if p:
            h = plan.constraints(yv, a)
            hY = _batch_jacobian(h, yv, create_graph=True)
            for i in range(p):
                H = H + m[:, i, None, None] * _batch_jacobian(hY[:, i], yv).detach()
                Bm = Bm + m[:, i, None, None] * _batch_jacobian(hY[:, i], a).detach()
            A, C = hY.detach(), _batch_jacobian(h, a).detach()
    B = len(y)
    if not p:
        w = torch.linalg.solve(H, weights.unsqueeze(-1)).squeeze(-1)
        return -(Bm.transpose(-1, -2) @ w.unsqueeze(-1)).squeeze(-1)
    active = torch.ones(B, p, dtype=torch.bool)
    active[:, plan.num_equalities:] = m[:, plan.num_equalities:] > 0
    A = A * active[..., None]
    C = C * active[..., None]
    K = torch.zeros(B, n + p, n + p, dtype=y.dtype)
    K[:, :n, :n], K[:, :n, n:], K[:, n:, :n] = H, A.transpose(-1, -2), A
    K[:, n:, n:] = torch.diag_embed((~active).to(y.dtype))  # inactive: the multiplier's row decouples
    w = torch.linalg.solve(K.transpose(-1, -2), torch.cat([weights, weights.new_zeros(B, p)], -1).unsqueeze(-1))
    return -(torch.cat([Bm, C], -2).transpose(-1, -2) @ w).squeeze(-1)


def bench_layer(name: str, batches, repeats: int, budget: float, records: list) -> None:
    ift = solvergen.load(ROOT / "problems" / f"{name}.py")
    autograd = solvergen.load(ROOT / "problems" / f"{name}.py", backward="autograd")
    for batch in batches:
        params = instances(name, batch, seed=batch)
        weights = torch.randn(batch, ift.plan.num_unknowns, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1))
        record = {"layer": name, "batch": batch, "forward_path": ift.forward_path}
        with torch.no_grad():
            record["forward_ms"] = 1e3 * median_time(lambda: ift(params), repeats, budget)
            y, ok = ift(params)
            m = torch.cat(ift.multipliers, -1) if ift.multipliers is not None else y.new_zeros(batch, 0)
        record["ok_percent"] = 100.0 * ok.double().mean().item()

        def backward_of(model):
            def run():
                p = params.clone().requires_grad_(True)
                out, _ = model(p)
                (out * weights).sum().backward()
                return p.grad
            return run

        def loss_of(model):
            def run():
                out, _ = model(params.clone().requires_grad_(True))
                return (out * weights).sum()
            return run

        for mode, model in (("ift", ift), ("autograd", autograd)):
            record[f"{mode}_forward_backward_ms"] = 1e3 * median_time(backward_of(model), repeats, budget)
            record[f"{mode}_backward_ms"] = 1e3 * median_backward_time(loss_of(model), repeats, budget)
            record[f"{mode}_saved_bytes"] = saved_bytes_of(
                lambda model=model: model(params.clone().requires_grad_(True))[0].sum())
            loss = loss_of(model)()
            record[f"{mode}_backward_peak_bytes"] = peak_bytes(loss.backward)
        dense_batch = min(batch, 1024)  # its per-entry passes: cap the batch, time scaled to the full batch
        dense = lambda: dense_ift_gradient(ift, params[:dense_batch], y[:dense_batch], m[:dense_batch],  # noqa: E731
                                           weights[:dense_batch])
        record["dense_ift_backward_ms"] = 1e3 * median_time(dense, repeats, budget) * batch / dense_batch
        record["dense_ift_batch_measured"] = dense_batch
        record["dense_ift_backward_peak_bytes"] = peak_bytes(dense) if dense_batch == batch else None
        rows = ok[:dense_batch]  # the baseline computes the same gradient: checked on the converged rows
        record["dense_vs_ift_max_abs"] = float((dense() - backward_of(ift)()[:dense_batch])[rows].abs().max())
        if name == "qp_layer":
            peers(params, weights, repeats, budget, record)
        records.append(record)
        print(json.dumps(record), flush=True)


def peers(params, weights, repeats, budget, record):
    """qpth and cvxpylayers on the same QPs: forward plus backward of the same loss."""
    Q, p = params[:, :64].view(-1, 8, 8), params[:, 64:72]
    A, b = params[:, 72:88].view(-1, 2, 8), params[:, 88:90]
    G, h = params[:, 90:138].view(-1, 6, 8), params[:, 138:144]
    try:
        from qpth.qp import QPFunction

        def run_qpth():
            tensors = [t.clone().requires_grad_(True) for t in (Q, p, G, h, A, b)]
            (QPFunction(verbose=-1, eps=1e-12, maxIter=50)(*tensors) * weights).sum().backward()

        record["qpth_forward_backward_ms"] = 1e3 * median_time(run_qpth, repeats, budget)
    except ImportError:
        record["qpth_forward_backward_ms"] = None
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        if len(params) > 1024:  # a thread pool of per-instance conic solves: minutes at 10,000
            record["cvxpylayers_forward_backward_ms"] = None
            return
        x = cp.Variable(8)
        Lp, pp = cp.Parameter((8, 8)), cp.Parameter(8)
        Ap, bp, Gp, hp = cp.Parameter((2, 8)), cp.Parameter(2), cp.Parameter((6, 8)), cp.Parameter(6)
        problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lp @ x) + pp @ x), [Ap @ x == bp, Gp @ x <= hp])
        layer = CvxpyLayer(problem, parameters=[Lp, pp, Ap, bp, Gp, hp], variables=[x])
        L = torch.linalg.cholesky(Q).transpose(-1, -2)  # Q = L^T L with L upper: 1/2 |L x|^2

        def run_cvxpylayers():
            tensors = [t.clone().requires_grad_(True) for t in (L, p, A, b, G, h)]
            (layer(*tensors)[0] * weights).sum().backward()

        record["cvxpylayers_forward_backward_ms"] = 1e3 * median_time(run_cvxpylayers, max(2, repeats // 4), budget)
    except ImportError:
        record["cvxpylayers_forward_backward_ms"] = None


def markdown(data: dict) -> str:
    machine = data["machine"]
    lines = [
        "# Declarative layers: forward, backward and peers",
        "",
        f"`python benchmarks/declarative.py {data['arguments']}`; {machine['date']}; {machine['cpu']}, "
        f"torch threads {machine['torch_threads']}; torch {machine['versions']['torch']}, "
        f"qpth {data['versions']['qpth']}, cvxpylayers {data['versions']['cvxpylayers']}, cvxpy {data['versions']['cvxpy']}; "
        f"load average at start {machine['load_average_start']}; malloc settings "
        f"{machine.get('malloc_settings') or 'glibc defaults'} (benchmarks/run.py `steady_allocator`).",
        "",
        "float64, CPU. Times in ms per call for the whole batch (medians). Backward: `loss.backward()` alone, "
        "after an untimed forward (the JSON also has forward and backward together). dense IFT: the "
        "DDN library's generic method, pass for pass (node.py: Hessians and mixed derivatives by autograd, one "
        "pass per entry, separately for y and the parameters and for each constraint; measured at a batch of "
        "at most 1,024 and scaled), differentiating the generated objective and constraints (robust_line_fit's "
        "20 terms evaluated vectorised, as lanes, as a DDN user would write them); its gradient agrees with the "
        f"IFT's to {max(r['dense_vs_ift_max_abs'] for r in data['records']):.0e} (`dense_vs_ift_max_abs` in the "
        "JSON). Saved: bytes saved for backward by the forward. Peak: the largest sum of live CPU allocations "
        "while the backward runs (torch.profiler's memory events; the dense IFT's only where it ran on the "
        "whole batch).",
        "",
        "| layer | batch | forward | IFT backward | autograd backward | dense IFT backward | dense / IFT | autograd / IFT "
        "| saved, IFT | saved, autograd | peak, IFT | peak, autograd | peak, dense | qpth (fwd+bwd) "
        "| cvxpylayers (fwd+bwd) | ok % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ms(value):
        return "-" if value is None else f"{value:.3g}"

    def mb(value):
        return "-" if value is None else f"{value / 1e6:.2f} MB"

    for r in data["records"]:
        ift = max(r["ift_backward_ms"], 1e-6)
        lines.append(
            f"| {r['layer']} | {r['batch']} | {ms(r['forward_ms'])} | {ms(r['ift_backward_ms'])} | "
            f"{ms(r['autograd_backward_ms'])} | {ms(r['dense_ift_backward_ms'])} | {r['dense_ift_backward_ms'] / ift:.1f}x | "
            f"{r['autograd_backward_ms'] / ift:.1f}x | {r['ift_saved_bytes'] / 1e6:.2f} MB | "
            f"{r['autograd_saved_bytes'] / 1e6:.2f} MB | {mb(r.get('ift_backward_peak_bytes'))} | "
            f"{mb(r.get('autograd_backward_peak_bytes'))} | {mb(r.get('dense_ift_backward_peak_bytes'))} | "
            f"{ms(r.get('qpth_forward_backward_ms'))} | "
            f"{ms(r.get('cvxpylayers_forward_backward_ms'))} | {r['ok_percent']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    if argv is None:  # run as a script (a re-run would replace a calling process)
        steady_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--batches", default="1,64,1024,10000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per timed quantity (at least 2 calls)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for name in args.problems.split(","):
        bench_layer(name, [int(b) for b in args.batches.split(",")], args.repeats, args.budget, records)
    data = {
        "arguments": " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info("cpu"),
        "versions": {p: version(p) for p in ("qpth", "cvxpylayers", "cvxpy")},
        "records": records,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "declarative.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "declarative.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
