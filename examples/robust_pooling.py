"""Robust pooling of point clouds with gross outliers, learned end to end through the
pseudo-Huber pooling layer (problems/robust_pool.py; Gould et al., "Exploiting Problem Structure
in Deep Declarative Networks", section 4).

Task (synthetic): each cloud has POINTS points in R^3. A fraction OUTLIER_FRACTION of them are
gross outliers, uniform in the box [-OUTLIER_RANGE, OUTLIER_RANGE]^3; the others are the true
centre c (uniform in [-CENTRE_RANGE, CENTRE_RANGE]^3) plus Gaussian noise (INLIER_NOISE), seen
through a fixed sensor distortion unknown to the model, x -> x + DISTORTION x |x| (radial, as
from a lens). The target is c.

Models (the pooled point is the prediction; the loss is the squared error to c):
- mean pooling of the raw points; robust pooling of the raw points (no training);
- a per-point network x -> x + s mlp(x / s) (s = CENTRE_RANGE + 2; a 3-32-32-3 MLP shared by
  the points, its last layer initialised to zero, so that it starts as the identity) followed by
  robust pooling y = argmin_y sum_i alpha^2 (sqrt(1 + |x_i - y|^2 / alpha^2) - 1), trained with
  the layer's IFT backward (backward="ift"), and the same with backward="autograd" (through the
  Newton iterations; the same batches and initial weights);
- the same network followed by mean pooling, trained the same way (a baseline: training alone,
  without the robust layer);
- a reference the models do not have: robust pooling of the points with the true distortion
  undone;
- at a second scale (--second-alpha, 0.5 by default): the untrained robust pooling, the network
  trained through the layer with the IFT backward, and the reference, so that the layer is also
  seen at alpha != 1.

Reports the held-out centre error (mean and median Euclidean distance) of each, the median time
per training step (forward, loss, backward and Adam step, wall clock), the layer's `ok` rate,
the largest difference between the layer's held-out outputs and a plain IRLS solve of the same
problem (a check of the layer's forward), and the largest difference between the network's
parameter gradients through the layer's IFT backward and through autograd on one batch (with
the gradient with respect to alpha, against a central finite difference), at both scales.

Run from the repository root (about 40 s on one core):
    python examples/robust_pooling.py [--steps 300] [--batch 32] [--alpha 1] [--second-alpha 0.5]
        [--seed 0] [--out benchmarks/results]
Results: benchmarks/results/robust_pooling.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import solvergen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
POINTS, OUTLIER_FRACTION = 64, 0.3
CENTRE_RANGE, INLIER_NOISE, OUTLIER_RANGE, DISTORTION = 3.0, 0.3, 15.0, 0.05
DTYPE = torch.float64
TRAINED = ("mean", "robust_ift", "robust_autograd")  # at --alpha; "robust_ift_alpha2" at --second-alpha


def distort(x):
    return x + DISTORTION * x * x.norm(dim=-1, keepdim=True)


def undistort(x):
    """The inverse of `distort`: radius r' = r + DISTORTION r^2 solved for r."""
    r_obs = x.norm(dim=-1, keepdim=True)
    r = 2 * r_obs / (1 + torch.sqrt(1 + 4 * DISTORTION * r_obs))
    return x * r / r_obs.clamp_min(1e-300)


def clouds(count: int, g: torch.Generator, points: int = POINTS):
    """Observed clouds [count, points, 3], true centres [count, 3], inlier masks [count, points]."""
    centre = CENTRE_RANGE * (2 * torch.rand(count, 3, generator=g, dtype=DTYPE) - 1)
    inliers = distort(centre[:, None] + INLIER_NOISE * torch.randn(count, points, 3, generator=g, dtype=DTYPE))
    outliers = OUTLIER_RANGE * (2 * torch.rand(count, points, 3, generator=g, dtype=DTYPE) - 1)
    inlier = torch.rand(count, points, generator=g) >= OUTLIER_FRACTION
    return torch.where(inlier[..., None], inliers, outliers), centre, inlier


class PerPoint(nn.Module):
    """x -> x + s mlp(x / s), applied to every point; the identity at initialisation."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.scale = CENTRE_RANGE + 2
        self.mlp = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).to(DTYPE)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return x + self.scale * self.mlp(x / self.scale)


def irls(x, alpha: float, iterations: int = 500):
    """The pseudo-Huber pooling by iteratively reweighted least squares from the mean: weights
    1 / sqrt(1 + |x_i - y|^2 / alpha^2) (a majorise-minimise step; f never increases)."""
    y = x.mean(-2)
    for _ in range(iterations):
        w = 1 / torch.sqrt(1 + ((x - y[..., None, :]) ** 2).sum(-1, keepdim=True) / alpha ** 2)
        y = (w * x).sum(-2) / w.sum(-2)
    return y


def errors(prediction, centre):
    e = (prediction - centre).norm(dim=-1)
    return dict(mean=e.mean().item(), median=e.median().item())


class Pool:
    """Mean or robust pooling; for robust pooling, records the layer's ok rate."""

    def __init__(self, kind: str, layer=None, alpha: float = 1.0):
        self.kind, self.layer, self.alpha, self.ok_fraction, self.iterations = kind, layer, alpha, [], []

    def __call__(self, x):
        if self.kind == "mean":
            return x.mean(-2)
        y, ok = self.layer(x, self.alpha)
        self.ok_fraction.append(ok.float().mean().item())
        self.iterations.append(self.layer.iterations)
        return y


def train(pools: dict, args):
    """Train one network per pool from the same initial weights on the same batches. The models
    take their steps in turn (interleaved), so that load from other processes on the machine
    affects their step times alike."""
    models = {name: PerPoint(args.seed) for name in pools}
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=args.lr) for name, model in models.items()}
    data = torch.Generator().manual_seed(args.seed + 1)
    step_ms, losses = ({name: [] for name in pools} for _ in range(2))
    for _ in range(args.steps):
        x, centre, _ = clouds(args.batch, data)
        for name, pool in pools.items():
            start = time.perf_counter()
            loss = (pool(models[name](x)) - centre).pow(2).sum(-1).mean()
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            step_ms[name].append(1e3 * (time.perf_counter() - start))
            losses[name].append(loss.item())
    window = max(1, min(50, args.steps // 5))
    runs = {}
    for name, pool in pools.items():
        run = runs[name] = dict(step_ms_median=float(np.median(step_ms[name])),
                                loss_first=float(np.mean(losses[name][:window])),
                                loss_last=float(np.mean(losses[name][-window:])), loss_window=window,
                                finite=bool(np.isfinite(losses[name]).all()))
        if pool.ok_fraction:
            run["train_ok_fraction_mean"] = float(np.mean(pool.ok_fraction))
            run["train_ok_fraction_min"] = float(np.min(pool.ok_fraction))
            run["train_newton_iterations_mean"] = float(np.mean(pool.iterations))
    return models, runs


def gradient_check(model, layers, alpha: float, args):
    """For the loss on one batch: max |grad_ift - grad_autograd| over the network's parameters, and
    d loss / d alpha through either backward against a central finite difference."""
    x, centre, _ = clouds(args.batch, torch.Generator().manual_seed(args.seed + 3))
    grads, outputs, alpha_grads = {}, {}, {}
    for backward, layer in layers.items():
        copy_ = copy.deepcopy(model)
        a = torch.tensor(alpha, dtype=DTYPE, requires_grad=True)
        y, ok = layer(copy_(x), a.expand(args.batch))
        (y - centre).pow(2).sum(-1).mean().backward()
        grads[backward] = torch.cat([p.grad.flatten() for p in copy_.parameters()])
        outputs[backward] = (y.detach(), ok)
        alpha_grads[backward] = a.grad.item()
    with torch.no_grad():
        points, h = model(x), 1e-5 * alpha
        loss = [(layers["ift"](points, alpha + sign * h)[0] - centre).pow(2).sum(-1).mean().item() for sign in (1, -1)]
    difference = (grads["ift"] - grads["autograd"]).abs().max().item()
    return dict(alpha=alpha, max_abs_difference=difference, max_abs_gradient=grads["ift"].abs().max().item(),
                forward_max_abs_difference=(outputs["ift"][0] - outputs["autograd"][0]).abs().max().item(),
                ok_fraction=outputs["ift"][1].float().mean().item(), batch=args.batch,
                alpha_gradient_ift=alpha_grads["ift"], alpha_gradient_autograd=alpha_grads["autograd"],
                alpha_gradient_finite_difference=(loss[0] - loss[1]) / (2 * h))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per trained model")
    parser.add_argument("--batch", type=int, default=32, help="clouds per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=1.0, help="pseudo-Huber scale of the main comparison")
    parser.add_argument("--second-alpha", type=float, default=0.5,
                        help="a second pseudo-Huber scale: untrained pooling, IFT training, reference and gradient "
                             "check repeated there; 0 skips")
    parser.add_argument("--test", type=int, default=2000, help="held-out clouds")
    parser.add_argument("--seed", type=int, default=0, help="network initialisation (and data: seed + 1, 2, 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS), help="folder for robust_pooling.{json,md}; '' writes nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = ROOT / "problems" / "robust_pool.py"
    layers = {backward: solvergen.load(spec, out_dir=ROOT / "generated", backward=backward)
              for backward in ("ift", "autograd")}
    x_test, c_test, inlier_test = clouds(args.test, torch.Generator().manual_seed(args.seed + 2))
    error, ok_test, irls_difference = {}, {}, {}

    alphas = {"": args.alpha}
    if args.second_alpha:
        alphas["_alpha2"] = args.second_alpha

    def robust(x, name, alpha):
        with torch.no_grad():
            y, ok = layers["ift"](x, alpha)
            irls_difference[name] = (y - irls(x, alpha)).abs().max().item()
        ok_test[name] = ok.float().mean().item()
        return y

    error["mean_pooling"] = errors(x_test.mean(1), c_test)
    for suffix, alpha in alphas.items():
        error["robust_pooling" + suffix] = errors(robust(x_test, "robust_pooling" + suffix, alpha), c_test)
        key = "reference_undistorted_robust" + suffix
        error[key] = errors(robust(undistort(x_test), key, alpha), c_test)
    error["reference_inliers_mean_undistorted"] = errors(
        (undistort(x_test) * inlier_test[..., None]).sum(1) / inlier_test.sum(1, keepdim=True), c_test)
    print(f"untrained: mean pooling {error['mean_pooling']['mean']:.3f}, robust pooling " + ", ".join(
        f"(alpha {alpha:g}) {error['robust_pooling' + suffix]['mean']:.3f}" for suffix, alpha in alphas.items())
        + " (held-out mean centre error)", flush=True)
    pools = {name: Pool("mean") if name == "mean" else Pool("robust", layers[name.split("_")[1]], args.alpha)
             for name in TRAINED}
    if args.second_alpha:
        pools["robust_ift_alpha2"] = Pool("robust", layers["ift"], args.second_alpha)
    models, runs = train(pools, args)
    for name in pools:
        with torch.no_grad():
            points = models[name](x_test)
        pooled = points.mean(1) if name == "mean" else robust(points, f"trained_{name}", pools[name].alpha)
        error[f"trained_{name}"] = errors(pooled, c_test)
        print(f"trained, {name}: held-out mean centre error {error[f'trained_{name}']['mean']:.3f}, "
              f"{runs[name]['step_ms_median']:.2f} ms/step", flush=True)
    checks = [gradient_check(models["robust_ift" + suffix], layers, alpha, args) for suffix, alpha in alphas.items()]
    for check in checks:
        print(f"alpha {check['alpha']:g}, IFT vs autograd gradient on one batch: max abs difference "
              f"{check['max_abs_difference']:.2e} (max abs gradient {check['max_abs_gradient']:.2e}); d loss / d alpha: "
              f"IFT {check['alpha_gradient_ift']:.6e}, autograd {check['alpha_gradient_autograd']:.6e}, finite "
              f"difference {check['alpha_gradient_finite_difference']:.6e}", flush=True)
    record = dict(
        command="python examples/robust_pooling.py" + "".join(
            f" --{key.replace('_', '-')} {getattr(args, key)}"
            for key in ("steps", "batch", "lr", "alpha", "second_alpha", "test", "seed", "threads")
            if getattr(args, key) != parser.get_default(key)),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     python=platform.python_version(), torch=torch.__version__, solvergen=solvergen.__version__,
                     torch_threads=torch.get_num_threads(), date=datetime.date.today().isoformat()),
        setting=dict(points=POINTS, outlier_fraction=OUTLIER_FRACTION, centre_range=CENTRE_RANGE,
                     inlier_noise=INLIER_NOISE, outlier_range=OUTLIER_RANGE, distortion=DISTORTION,
                     dtype=str(DTYPE), steps=args.steps, batch=args.batch, lr=args.lr, alpha=args.alpha,
                     second_alpha=args.second_alpha, test=args.test, seed=args.seed,
                     layer=dict(max_iterations=layers["ift"].max_iterations, tol=layers["ift"].tol)),
        centre_error=error, runs=runs, test_ok_fraction=ok_test, layer_minus_irls_max_abs=irls_difference,
        gradient_check=checks[0], gradient_check_alpha2=checks[1] if len(checks) > 1 else None,
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "robust_pooling.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "robust_pooling.md").write_text(report(record))
    return record


def report(record) -> str:
    m, s, e, r = record["machine"], record["setting"], record["centre_error"], record["runs"]
    ok, irls_diff = record["test_ok_fraction"], record["layer_minus_irls_max_abs"]
    checks = [g for g in (record["gradient_check"], record.get("gradient_check_alpha2")) if g]
    alpha2 = s.get("second_alpha") or None
    trained = [name for name in (*TRAINED, "robust_ift_alpha2") if name in r]

    def ok_cell(key):
        return f"{100 * ok[key]:.1f}%" if key in ok else "-"

    lines = [
        "# Robust pooling through the pseudo-Huber layer (examples/robust_pooling.py)", "",
        f"`{record['command']}` on {m['processor']}, {m['platform']}, python {m['python']}, torch {m['torch']}, "
        f"solvergen {m['solvergen']}, {m['torch_threads']} torch thread(s), {m['date']}.", "",
        f"Clouds of {s['points']} points, {100 * s['outlier_fraction']:.0f}% gross outliers (uniform in "
        f"[-{s['outlier_range']:g}, {s['outlier_range']:g}]^3); inliers: centre (uniform in "
        f"[-{s['centre_range']:g}, {s['centre_range']:g}]^3) plus noise {s['inlier_noise']:g}, through the unknown "
        f"distortion x + {s['distortion']:g} x |x|. Per-point residual MLP (identity at start), {s['steps']} Adam "
        f"steps (lr {s['lr']}) of {s['batch']} clouds, the same initial weights and batches for every model; "
        f"pseudo-Huber alpha = {s['alpha']:g}" + (f" (and {alpha2:g} where marked)" if alpha2 else "")
        + f"; {s['dtype']}; errors on {s['test']} held-out clouds.", "",
        "| model | alpha | held-out centre error, mean | median | median ms per training step | layer ok (held out) | "
        "max abs layer - IRLS (held out) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("mean_pooling", "mean pooling, no training", None, None),
            ("robust_pooling", "robust pooling (pseudo-Huber), no training", None, s["alpha"]),
            ("robust_pooling_alpha2", "robust pooling (pseudo-Huber), no training", None, alpha2),
            ("trained_mean", "per-point network + mean pooling, trained", "mean", None),
            ("trained_robust_ift", "per-point network + robust pooling, trained, IFT backward", "robust_ift",
             s["alpha"]),
            ("trained_robust_autograd", "per-point network + robust pooling, trained, autograd backward",
             "robust_autograd", s["alpha"]),
            ("trained_robust_ift_alpha2", "per-point network + robust pooling, trained, IFT backward",
             "robust_ift_alpha2", alpha2),
            ("reference_undistorted_robust", "reference: robust pooling of the undistorted points", None, s["alpha"]),
            ("reference_undistorted_robust_alpha2", "reference: robust pooling of the undistorted points", None,
             alpha2),
            ("reference_inliers_mean_undistorted", "reference: mean of the undistorted inliers (oracle)", None, None)]
    for key, label, run, alpha in rows:
        if key not in e:
            continue
        ms = f"{r[run]['step_ms_median']:.2f}" if run else "-"
        diff = f"{irls_diff[key]:.1e}" if key in irls_diff else "-"
        a = f"{alpha:g}" if alpha else "-"
        lines.append(f"| {label} | {a} | {e[key]['mean']:.3f} | {e[key]['median']:.3f} | {ms} | {ok_cell(key)} | "
                     f"{diff} |")
    lines += [
        "", "Time per step: forward, loss, backward and Adam step, median over steps, wall clock; the trainings "
        "run interleaved, step by step, so that other load on the machine affects them alike. "
        "Newton iterations per layer call in training: " + "; ".join(
            f"{name} {r[name]['train_newton_iterations_mean']:.1f}" for name in trained
            if "train_newton_iterations_mean" in r[name]) + ". IRLS: 500 "
        "iteratively reweighted least-squares steps from the mean, an independent solve of the same problem.", "",
        f"Training loss (squared centre error), first {r['robust_ift']['loss_window']} steps -> last: "
        + "; ".join(f"{name} {r[name]['loss_first']:.3f} -> {r[name]['loss_last']:.3f}" for name in trained)
        + ". Layer ok during training: " + "; ".join(
            f"{name} {100 * r[name]['train_ok_fraction_mean']:.1f}% on average (worst batch "
            f"{100 * r[name]['train_ok_fraction_min']:.1f}%)"
            for name in trained if "train_ok_fraction_mean" in r[name])
        + ".", "",
    ]
    for g in checks:
        name = "robust_ift" if g is record["gradient_check"] else "robust_ift_alpha2"
        lines.append(
            f"Gradient check at alpha = {g['alpha']:g} (one batch of {g['batch']} clouds, the network {name}): the "
            f"network's parameter gradients through backward=\"ift\" and backward=\"autograd\" differ by at most "
            f"{g['max_abs_difference']:.1e} (largest gradient entry {g['max_abs_gradient']:.1e}); the forward "
            f"outputs by {g['forward_max_abs_difference']:.1e}; layer ok on {100 * g['ok_fraction']:.0f}% of the "
            f"batch. d loss / d alpha: IFT {g['alpha_gradient_ift']:.6e}, autograd {g['alpha_gradient_autograd']:.6e}, "
            f"central finite difference {g['alpha_gradient_finite_difference']:.6e}.")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(report(main()), end="")
