"""Top-k multi-label classification through the LML projection layer (problems/lml.py; Amos,
Koltun and Kolter, "The Limited Multi-Label Projection Layer", 2019).

Task (synthetic, nothing downloaded): LABELS labels, each with a hidden prototype vector in
R^FEATURES. An input has exactly K active labels, drawn at random; its feature vector is the
sum of their prototypes plus Gaussian noise, passed through a fixed random rotation and tanh
(so that a linear read-out of the raw features is not the answer). A small MLP maps the features
to LABELS logits x.

Training objectives, each from the same initial weights and on the same batches (same seeds):
- LML: y = LML(x, K) (the point of {0 < y < 1, sum y = K} nearest to sigmoid(x) in the
  binary-entropy sense, a solvergen size-generic layer with the IFT backward); loss
  -sum_{true labels} log y_i (the paper's top-k loss, eq. 21);
- softmax: the cross-entropy of softmax(x) summed over the true labels;
- BCE: the binary cross-entropy of sigmoid(x) against the multi-hot target.

Reports, on held-out inputs, the top-K precision (the fraction of the K true labels among the K
largest logits; LML is monotone in x, so its top K is the logits' top K) of the untrained
network and of the network trained with each objective; the median time per training step
(forward, loss, backward and Adam step, wall clock, on the torch threads in use); and, for LML,
how many rows the layer flagged as not converged (`ok` false) during training and on the
held-out set, with the logits' range and the layer's Newton iteration counts.

Run from the repository root (about 10 s on one core):
    python examples/lml_topk.py [--steps 300] [--batch 64] [--seed 0] [--out benchmarks/results]
Results: benchmarks/results/lml_topk.{json,md}
"""
from __future__ import annotations

import argparse
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
LABELS, FEATURES, K, HIDDEN = 20, 32, 3, 64
NOISE = 1.5  # std of the feature noise (times the prototypes' typical length); top-3 precision ~0.85
METHODS = ("lml", "softmax", "bce")


def task(seed: int):
    """The hidden prototypes [LABELS, FEATURES] and the fixed rotation [FEATURES, FEATURES]."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(LABELS, FEATURES, generator=g) / FEATURES ** 0.5
    rotation, _ = torch.linalg.qr(torch.randn(FEATURES, FEATURES, generator=g))
    return prototypes, rotation


def sample(count: int, hidden, g: torch.Generator):
    """`count` inputs [count, FEATURES] and their true labels [count, K] (indices)."""
    prototypes, rotation = hidden
    labels = torch.argsort(torch.rand(count, LABELS, generator=g), dim=1)[:, :K]
    clean = prototypes[labels].sum(1)
    features = torch.tanh(2.0 * (clean + NOISE / FEATURES ** 0.5 * torch.randn(count, FEATURES, generator=g))
                          @ rotation)
    return features, labels


def network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, LABELS))


def multi_hot(labels):
    return torch.zeros(len(labels), LABELS).scatter_(1, labels, 1.0)


def precision_at_k(logits, labels) -> float:
    """The mean fraction of each row's K true labels among its K largest logits."""
    top = logits.topk(K, dim=1).indices
    return (top.unsqueeze(2) == labels.unsqueeze(1)).any(2).float().mean().item()


class Objective:
    """loss(logits, labels) for one training method; for LML, also the layer's ok flags."""

    def __init__(self, method: str, layer=None):
        self.method, self.layer, self.ok_fraction, self.iterations = method, layer, [], []
        self.not_ok, self.first_not_ok = 0, None

    def __call__(self, logits, labels):
        if self.method == "lml":
            y, ok = self.layer(logits, float(K))
            self.ok_fraction.append(ok.float().mean().item())
            self.iterations.append(self.layer.iterations)
            self.not_ok += int((~ok).sum())
            if self.first_not_ok is None and not ok.all():  # kept for the report: an input to reproduce it
                row = int((~ok).nonzero()[0, 0])
                self.first_not_ok = dict(x=logits[row].tolist(), dtype=str(logits.dtype), k=K, y=y[row].tolist(),
                                         newton_iterations=self.layer.iterations)
            return -y.gather(1, labels).log().sum(1).mean()
        if self.method == "softmax":
            return -logits.log_softmax(1).gather(1, labels).sum(1).mean()
        return nn.functional.binary_cross_entropy_with_logits(logits, multi_hot(labels), reduction="sum") / len(logits)


def train(args, hidden, layer):
    """Train one network per objective from the same initial weights on the same batches. The
    networks take their steps in turn (interleaved), so that load from other processes on the
    machine affects their step times alike."""
    objectives = {method: Objective(method, layer) for method in METHODS}
    models = {method: network(args.seed) for method in METHODS}
    optimizers = {method: torch.optim.Adam(model.parameters(), lr=args.lr) for method, model in models.items()}
    data = torch.Generator().manual_seed(args.seed + 1)
    step_ms, losses = ({method: [] for method in METHODS} for _ in range(2))
    for _ in range(args.steps):
        features, labels = sample(args.batch, hidden, data)
        for method in METHODS:
            start = time.perf_counter()
            loss = objectives[method](models[method](features), labels)
            optimizers[method].zero_grad()
            loss.backward()
            optimizers[method].step()
            step_ms[method].append(1e3 * (time.perf_counter() - start))
            losses[method].append(loss.item())
    window = max(1, min(50, args.steps // 5))
    runs = {method: dict(step_ms_median=float(np.median(step_ms[method])),
                         loss_first=float(np.mean(losses[method][:window])),
                         loss_last=float(np.mean(losses[method][-window:])), loss_window=window,
                         finite=bool(np.isfinite(losses[method]).all())) for method in METHODS}
    lml = objectives["lml"]
    runs["lml"].update(train_ok_fraction_mean=float(np.mean(lml.ok_fraction)),
                       train_ok_fraction_min=float(np.min(lml.ok_fraction)),
                       train_not_ok_rows=lml.not_ok, train_first_not_ok_row=lml.first_not_ok,
                       train_newton_iterations_mean=float(np.mean(lml.iterations)),
                       train_newton_iterations_max=int(max(lml.iterations)),
                       train_steps_at_max_iterations=int(sum(i >= layer.max_iterations for i in lml.iterations)))
    return models, runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per method")
    parser.add_argument("--batch", type=int, default=64, help="inputs per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test", type=int, default=4000, help="held-out inputs")
    parser.add_argument("--seed", type=int, default=0, help="network initialisation (and data: seed + 1, + 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS), help="folder for lml_topk.{json,md}; '' writes nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    hidden = task(1000 + args.seed)
    test_features, test_labels = sample(args.test, hidden, torch.Generator().manual_seed(args.seed + 2))
    layer = solvergen.load(ROOT / "problems" / "lml.py", out_dir=ROOT / "generated")  # backward="ift"
    with torch.no_grad():
        untrained = precision_at_k(network(args.seed)(test_features), test_labels)
    precision = {"untrained": untrained}
    models, runs = train(args, hidden, layer)
    for method, model in models.items():
        with torch.no_grad():
            logits = model(test_features)
            precision[method] = precision_at_k(logits, test_labels)
            if method == "lml":
                y, ok = layer(logits.double(), float(K))
                runs[method].update(
                    test_ok_fraction=ok.float().mean().item(), test_not_ok_rows=int((~ok).sum()),
                    test_newton_iterations=layer.iterations,
                    test_y_sum_error_max=(y.sum(1) - K).abs().max().item(),
                    test_logit_range=[logits.min().item(), logits.max().item()],
                    test_precision_from_y=precision_at_k(y, test_labels))
        print(f"{method}: held-out top-{K} precision {precision[method]:.3f}, "
              f"{runs[method]['step_ms_median']:.2f} ms/step", flush=True)
    record = dict(
        command="python examples/lml_topk.py" + "".join(
            f" --{key} {getattr(args, key)}" for key in ("steps", "batch", "lr", "test", "seed", "threads")
            if getattr(args, key) != parser.get_default(key)),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     python=platform.python_version(), torch=torch.__version__, solvergen=solvergen.__version__,
                     torch_threads=torch.get_num_threads(), date=datetime.date.today().isoformat()),
        setting=dict(labels=LABELS, features=FEATURES, k=K, hidden=HIDDEN, noise=NOISE, steps=args.steps,
                     batch=args.batch, lr=args.lr, test=args.test, seed=args.seed,
                     layer=dict(backward=layer.backward, max_iterations=layer.max_iterations, tol=layer.tol)),
        precision_at_k=precision, runs=runs,
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lml_topk.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "lml_topk.md").write_text(report(record))
    return record


def report(record) -> str:
    m, s, p, r = record["machine"], record["setting"], record["precision_at_k"], record["runs"]
    lml = r["lml"]
    lines = [
        "# Top-k classification through the LML layer (examples/lml_topk.py)", "",
        f"`{record['command']}` on {m['processor']}, {m['platform']}, python {m['python']}, torch {m['torch']}, "
        f"solvergen {m['solvergen']}, {m['torch_threads']} torch thread(s), {m['date']}.", "",
        f"{s['labels']} labels, exactly k = {s['k']} active per input; features: the sum of the active labels' "
        f"prototypes ({s['features']} dims) plus noise, rotated, tanh. MLP {s['features']}-{s['hidden']}-"
        f"{s['hidden']}-{s['labels']}; {s['steps']} Adam steps (lr {s['lr']}) of {s['batch']} inputs, the same "
        f"initial weights and batches for every objective; precision on {s['test']} held-out inputs.", "",
        f"| network | held-out top-{s['k']} precision | median ms per training step | "
        f"loss, first {lml['loss_window']} steps -> last {lml['loss_window']} |",
        "| --- | --- | --- | --- |",
        f"| untrained | {p['untrained']:.3f} | - | - |",
    ]
    labels = {"lml": "LML layer (IFT backward), -sum log y over the true labels",
              "softmax": "softmax, cross-entropy summed over the true labels", "bce": "sigmoid, binary cross-entropy"}
    for method in METHODS:
        run = r[method]
        lines.append(f"| trained: {labels[method]} | {p[method]:.3f} | {run['step_ms_median']:.2f} | "
                     f"{run['loss_first']:.3f} -> {run['loss_last']:.3f} |")
    lines += [
        "", "Time per step: forward, loss, backward and Adam step, median over steps, wall clock; the three "
        "trainings run interleaved, step by step, so that other load on the machine affects them alike.", "",
        f"LML layer (backward={s['layer']['backward']!r}, max_iterations={s['layer']['max_iterations']}, "
        f"tol={s['layer']['tol']:g}), float32 logits in training: {lml['train_not_ok_rows']} rows not ok (`ok` false) "
        f"of {s['steps'] * s['batch']} during training ({100 * lml['train_ok_fraction_mean']:.2f}% ok on average, "
        f"worst batch {100 * lml['train_ok_fraction_min']:.1f}%); on the held-out logits of the trained network "
        f"(float64, {s['test']} rows) {lml['test_not_ok_rows']} rows not ok (logits in "
        f"[{lml['test_logit_range'][0]:.1f}, {lml['test_logit_range'][1]:.1f}], max |sum y - k| = "
        f"{lml['test_y_sum_error_max']:.1e}, {lml['test_newton_iterations']} Newton iterations). Newton iterations "
        f"per training forward: {lml['train_newton_iterations_mean']:.1f} on average, "
        f"{lml['train_newton_iterations_max']} at most; {lml['train_steps_at_max_iterations']} of {s['steps']} "
        "steps ran to max_iterations (a batch iterates until its last row converges). Rows that are not ok keep "
        "the last Newton iterate and get zero gradient.",
    ]
    first = lml.get("train_first_not_ok_row")
    if first is not None:
        top = max(range(len(first["x"])), key=lambda i: first["x"][i])
        lines += ["", f"The first row flagged not ok in training (its logits and y in the JSON, runs.lml."
                  f"train_first_not_ok_row): logits in [{min(first['x']):.2f}, {max(first['x']):.2f}], "
                  f"y at the largest logit = 1 - {1 - first['y'][top]:.1e} ({first.get('dtype', 'float32')}); "
                  f"{first['newton_iterations']} Newton iterations in its batch."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(report(main()), end="")
