"""Transfer check: an exported learned loss in a plain PyTorch loop, on data it never saw.

    python scripts/transfer_check.py --export runs/ppo-default/adaptive_loss
        [--seeds 10] [--out results/ppo-default/transfer.md]

The learned loss (any export folder of ``lossgym export``), cross-entropy, logit adjustment
(``lossgym export --baseline logit_adjusted``) and a tuned DRW each train the same MLP in an
ordinary training loop (not lossgym's engine), on datasets outside lossgym's task
distribution, at imbalances chosen here. Exports are used only through their public API, as a
user would: ``AdaptiveLoss.load(folder, class_counts=..., total_steps=...,
minibatches_per_step=...)``, ``watch(optimizer)``, ``loss(logits, y)`` and
``step(val_logits=..., val_targets=...)`` once per period.

Reads top to bottom:

1. **Data.** Each dataset is split per seed into balanced validation and test sets and a
   long-tailed training set: class of rank r (a seeded permutation of the classes) keeps
   ``n_max · ρ^(−r/(C−1))`` of its remaining samples, ``n_max`` the smallest class's remainder.
   Features are standardised with training statistics.
2. **Training.** MLP F-128-128-C (ReLU), AdamW (lr 1e-3, weight decay 1e-2), minibatches of
   64 drawn epoch by epoch; ``--steps`` periods of ``--minibatches`` updates, the loss stepped
   after each with the validation logits (the export's environment steps).
3. **Seeds.** Seed s fixes the split, the subsample, the initialisation and the data order, the
   same for every method, so differences are paired.
4. **Tuned DRW** (deferred re-weighting: class weights w_c ∝ n_c^(−α) from a switch point on,
   plain cross-entropy before): the switch in {0.5, 0.67, 0.8} of training and the strength α in
   {0.5, 1} are chosen per dataset by mean validation balanced accuracy over ``--tune-seeds``
   seeds (1000, 1001, ...), disjoint from the evaluation seeds; the chosen pair then runs on
   the evaluation seeds.
5. **Table.** Test balanced accuracy per dataset: cross-entropy's mean, every method's paired
   difference against cross-entropy and the learned loss's against logit adjustment, with 95 %
   percentile-bootstrap intervals over seeds, and target 5's verdict.

Target 5, "the learned loss beats cross-entropy on every dataset and is not worse than logit
adjustment on any", is read as: on every dataset the interval of (learned − cross-entropy) lies
above zero, and the interval of (learned − logit adjustment) does not lie below zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import datasets as skd
from torch import nn

from agents.export import export_baseline
from agents.stats import paired_difference
from lossgym import AdaptiveLoss
from lossgym.data import symmetric_label_noise
from lossgym.export import read_export
from lossgym.io import atomic_write_text
from lossgym.schedules import LossSchedule, step

BATCH = 64
DRW_GRID = tuple((switch, alpha) for switch in (0.5, 0.67, 0.8) for alpha in (0.5, 1.0))
TUNE_SEED0 = 1000


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DataSpec:
    """A dataset of the check and the imbalance it is trained at."""

    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    """returns the full ``X [M, F]`` and ``y [M]``."""
    ratio: float
    """imbalance ratio ρ of the training set."""
    val_per_class: int
    """validation samples per class (balanced)."""
    test_per_class: int
    """test samples per class (balanced)."""
    kind: str
    """where the data come from."""


def _sklearn(loader: Callable[..., tuple[np.ndarray, np.ndarray]]
             ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    return lambda: loader(return_X_y=True)


def _quantiles() -> tuple[np.ndarray, np.ndarray]:
    return skd.make_gaussian_quantiles(n_samples=4000, n_features=8, n_classes=4,
                                       random_state=7)


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    return skd.make_classification(n_samples=6000, n_features=24, n_informative=10,
                                   n_redundant=6, n_classes=6, n_clusters_per_class=3,
                                   class_sep=1.2, flip_y=0.0, random_state=11)


DATASETS: dict[str, DataSpec] = {
    "wine": DataSpec(_sklearn(skd.load_wine), 5.0, 8, 8, "real (sklearn load_wine)"),
    "breast_cancer": DataSpec(_sklearn(skd.load_breast_cancer), 10.0, 40, 40,
                              "real (sklearn load_breast_cancer)"),
    "gaussian_quantiles": DataSpec(_quantiles, 50.0, 100, 100,
                                   "synthetic (make_gaussian_quantiles, nested shells)"),
    "make_classification_6c": DataSpec(_blobs, 100.0, 100, 100,
                                       "synthetic (make_classification, 6 classes x 3 "
                                       "clusters)"),
}


def split(spec: DataSpec, x: np.ndarray, y: np.ndarray, seed: int, label_noise: float = 0.0
          ) -> dict[str, torch.Tensor]:
    """Balanced validation and test sets and a long-tailed training set (see the module
    docstring), standardised with training statistics; a share ``label_noise`` of the
    training labels is flipped to another class, uniformly (validation and test stay
    clean)."""
    rng = np.random.default_rng([seed, 17])
    classes = np.unique(y)
    c = len(classes)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    rest = []
    for k in classes:
        idx = rng.permutation(np.flatnonzero(y == k))
        parts["val"].append(idx[: spec.val_per_class])
        parts["test"].append(idx[spec.val_per_class: spec.val_per_class + spec.test_per_class])
        rest.append(idx[spec.val_per_class + spec.test_per_class:])
    n_max = min(len(r) for r in rest)
    rank = rng.permutation(c)
    for k in range(c):
        keep = max(int(n_max * spec.ratio ** (-rank[k] / max(c - 1, 1))), 1)
        parts["train"].append(rest[k][:keep])
    out: dict[str, torch.Tensor] = {}
    index = {name: np.concatenate(p) for name, p in parts.items()}
    mean = x[index["train"]].mean(0)
    std = x[index["train"]].std(0) + 1e-8
    for name, idx in index.items():
        out[f"x_{name}"] = torch.tensor((x[idx] - mean) / std, dtype=torch.float32)
        out[f"y_{name}"] = torch.tensor(np.searchsorted(classes, y[idx]), dtype=torch.int64)
    noisy, _ = symmetric_label_noise(out["y_train"].numpy(), c, label_noise,
                                     np.random.default_rng([seed, 23]))
    out["y_train"] = torch.from_numpy(noisy)
    return out


# --------------------------------------------------------------------------- training
def balanced_accuracy(logits: torch.Tensor, targets: torch.Tensor, classes: int) -> float:
    """Mean per-class recall."""
    pred = logits.argmax(1)
    recalls = [float((pred[targets == k] == k).float().mean()) for k in range(classes)
               if (targets == k).any()]
    return float(np.mean(recalls))


def train_run(make_loss: Callable[[torch.Tensor], nn.Module | None],
              data: dict[str, torch.Tensor], seed: int, steps: int, minibatches: int
              ) -> tuple[float, float, list[dict[str, float]]]:
    """One plain training run; returns (validation, test) balanced accuracy at the end and the
    loss parameters of each period (empty for plain cross-entropy).

    ``make_loss(class_counts)`` returns the criterion, None for plain cross-entropy."""
    x, y = data["x_train"], data["y_train"]
    classes = int(data["y_test"].max()) + 1
    counts = torch.bincount(y, minlength=classes).float()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    criterion = make_loss(counts)
    if isinstance(criterion, AdaptiveLoss):
        criterion.watch(optimizer)
    order = torch.Generator().manual_seed(seed)
    queue = torch.zeros(0, dtype=torch.int64)
    for _ in range(steps):
        for _ in range(minibatches):
            if len(queue) < min(BATCH, len(y)):
                queue = torch.cat([queue, torch.randperm(len(y), generator=order)])
            idx, queue = queue[:BATCH], queue[BATCH:]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx]) if criterion is None \
                else criterion(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if isinstance(criterion, AdaptiveLoss):
            with torch.no_grad():
                criterion.step(val_logits=model(data["x_val"]), val_targets=data["y_val"])
    history = list(criterion.history[:steps]) if isinstance(criterion, AdaptiveLoss) else []
    with torch.no_grad():
        return (balanced_accuracy(model(data["x_val"]), data["y_val"], classes),
                balanced_accuracy(model(data["x_test"]), data["y_test"], classes), history)


def drw_loss(switch: float, alpha: float, steps: int, minibatches: int
             ) -> Callable[[torch.Tensor], nn.Module]:
    """Deferred re-weighting: w_c ∝ n_c^(−alpha) from ``switch`` of training on."""
    schedule = LossSchedule({"alpha": step([switch], [0.0, alpha])})
    return lambda counts: AdaptiveLoss(schedule, class_counts=counts, total_steps=steps,
                                       minibatches_per_step=minibatches)


def export_loss(folder: str | Path, steps: int, minibatches: int
                ) -> Callable[[torch.Tensor], nn.Module]:
    """An export folder, loaded fresh for each run as a user would."""
    return lambda counts: AdaptiveLoss.load(folder, class_counts=counts, total_steps=steps,
                                            minibatches_per_step=minibatches)


# --------------------------------------------------------------------------- the check
def _mean_params(histories: list[list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per loss parameter: its mean over seeds in the first period, over all periods, and in
    the last period."""
    names = {name for history in histories for params in history for name in params}
    out = {}
    for name in sorted(names):
        rows = np.array([[params.get(name, np.nan) for params in history]
                         for history in histories if history])
        out[name] = {"first": float(np.nanmean(rows[:, 0])), "mean": float(np.nanmean(rows)),
                     "last": float(np.nanmean(rows[:, -1]))}
    return out


def _points(x: float) -> str:
    return f"{round(100 * x, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def _interval(d: dict[str, float]) -> str:
    return f"{_points(d['mean'])} [{_points(d['ci_low'])}, {_points(d['ci_high'])}]"


def run_check(export: str | Path, seeds: int, names: Sequence[str], steps: int,
              minibatches: int, tune_seeds: int, log: Callable[[str], None] = print,
              label_noise: float = 0.0, reference: str | Path | None = None
              ) -> tuple[str, dict]:
    """Run every method on every dataset (and the export ``reference``, e.g. the learned
    loss's base rule, when given); returns the Markdown report and the raw results."""
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        la_folder = export_baseline("logit_adjusted", Path(tmp) / "logit_adjusted")
        learned = export_loss(export, steps, minibatches)
        logit_adjusted = export_loss(la_folder, steps, minibatches)
        results: dict[str, dict] = {}
        for name in names:
            spec = DATASETS[name]
            x, y = spec.load()
            x = np.asarray(x, dtype=np.float64)
            # Tuning DRW on validation, on seeds the evaluation does not use.
            tune_data = [split(spec, x, y, TUNE_SEED0 + s, label_noise)
                         for s in range(tune_seeds)]
            scores = {cfg: float(np.mean([train_run(drw_loss(*cfg, steps, minibatches), d,
                                                    TUNE_SEED0 + s, steps, minibatches)[0]
                                          for s, d in enumerate(tune_data)]))
                      for cfg in DRW_GRID}
            best = max(scores, key=scores.get)
            makers = {"ce": lambda counts: None, "learned": learned,
                      "logit_adjusted": logit_adjusted,
                      "tuned_drw": drw_loss(*best, steps, minibatches)}
            if reference is not None:
                makers["reference"] = export_loss(reference, steps, minibatches)
            test: dict[str, list[float]] = {m: [] for m in makers}
            counts, chosen = None, []
            for seed in range(seeds):
                data = split(spec, x, y, seed, label_noise)
                if counts is None:
                    counts = torch.bincount(data["y_train"]).tolist()
                for method in makers:
                    _, value, history = train_run(makers[method], data, seed, steps,
                                                  minibatches)
                    test[method].append(value)
                    if method == "learned":
                        chosen.append(history)
            results[name] = {"kind": spec.kind, "ratio": spec.ratio, "classes": len(counts),
                             "train_counts_seed0": counts, "drw_scores": {
                                 f"switch={s:g},alpha={a:g}": v for (s, a), v in scores.items()},
                             "drw_choice": {"switch": best[0], "alpha": best[1]},
                             "test_balanced_accuracy": test,
                             "learned_params": _mean_params(chosen)}
            log(f"[{time.time() - start:6.1f}s] {name}: ce {100 * np.mean(test['ce']):.2f}, "
                f"learned {100 * np.mean(test['learned']):.2f}, logit_adjusted "
                f"{100 * np.mean(test['logit_adjusted']):.2f}, tuned_drw "
                f"{100 * np.mean(test['tuned_drw']):.2f} (DRW switch {best[0]:g}, "
                f"alpha {best[1]:g})")
    report = format_report(export, results, seeds, steps, minibatches, tune_seeds,
                           time.time() - start, label_noise, reference)
    return report, results


def format_report(export: str | Path, results: dict, seeds: int, steps: int, minibatches: int,
                  tune_seeds: int, seconds: float, label_noise: float = 0.0,
                  reference: str | Path | None = None) -> str:
    """The Markdown table and verdict of :func:`run_check`'s results."""
    header = ["Dataset", "Data", "Classes", "ρ", "Train counts (seed 0)", "CE bal. acc.",
              "learned − CE", "logit adj. − CE", "tuned DRW − CE", "learned − logit adj.",
              *(["learned − reference"] if reference is not None else []), "DRW choice"]
    lines = ["# Transfer check: the learned loss in a plain PyTorch loop", "",
             f"Export: `{export}`. {seeds} paired seeds per dataset; MLP F-128-128-C, AdamW "
             f"(lr 1e-3, wd 1e-2), batch {BATCH}, {steps} loss steps × {minibatches} "
             f"minibatches. Tuned DRW: switch × α from {len(DRW_GRID)} pairs, chosen per "
             f"dataset by validation balanced accuracy on {tune_seeds} separate seeds. Test "
             "balanced accuracy (%); differences in points, mean [95 % percentile-bootstrap "
             f"CI over seeds]. Wall time {seconds:.0f} s."
             + (f" Label noise: {label_noise:g} of the training labels flipped to another "
                "class, uniformly (validation and test clean); the train counts are of the "
                "observed labels." if label_noise else "")
             + (f" Reference: `{reference}`." if reference is not None else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    beats_ce, not_worse = {}, {}
    for name, r in results.items():
        t = {m: np.asarray(v) for m, v in r["test_balanced_accuracy"].items()}
        d = {m: paired_difference(t[m], t["ce"], np.random.default_rng(0))
             for m in ("learned", "logit_adjusted", "tuned_drw")}
        vs_la = paired_difference(t["learned"], t["logit_adjusted"], np.random.default_rng(0))
        beats_ce[name] = d["learned"]["ci_low"] > 0
        not_worse[name] = vs_la["ci_high"] >= 0
        choice = r["drw_choice"]
        lines.append("| " + " | ".join([
            name, r["kind"], str(r["classes"]), f"{r['ratio']:g}",
            str(r["train_counts_seed0"]), f"{100 * t['ce'].mean():.2f}",
            _interval(d["learned"]), _interval(d["logit_adjusted"]), _interval(d["tuned_drw"]),
            _interval(vs_la),
            *([_interval(paired_difference(t["learned"], t["reference"],
                                           np.random.default_rng(0)))]
              if reference is not None else []),
            f"switch {choice['switch']:g}, α {choice['alpha']:g}"]) + " |")
    ok = all(beats_ce.values()) and all(not_worse.values())
    lines += ["", "Loss parameters the learned loss chose (mean over seeds: first period / mean "
              "over periods / last period):", ""]
    for name, r in results.items():
        chosen = ", ".join(f"{p} {v['first']:.2f} / {v['mean']:.2f} / {v['last']:.2f}"
                           for p, v in r["learned_params"].items())
        lines.append(f"- {name}: {chosen or 'n/a'}")
    lines += ["", "## Target 5", "",
              "The learned loss beats cross-entropy on every dataset (CI of learned − CE above "
              "zero) and is not worse than logit adjustment on any (CI of learned − logit adj. "
              "not below zero).", ""]
    for name in results:
        lines.append(f"- {name}: beats CE: {'yes' if beats_ce[name] else 'no'}; not worse "
                     f"than logit adjustment: {'yes' if not_worse[name] else 'no'}")
    lines += ["", f"**Target 5: {'PASS' if ok else 'FAIL'}**"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True,
                        help="an AdaptiveLoss export folder (lossgym export ...)")
    parser.add_argument("--seeds", type=int, default=10, help="paired evaluation seeds")
    parser.add_argument("--out", default=None, help="write the Markdown report here (and the "
                                                    "raw results beside it as .json)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated subset of {list(DATASETS)}")
    parser.add_argument("--steps", type=int, default=20,
                        help="loss steps per run (the export's environment steps)")
    parser.add_argument("--minibatches", type=int, default=20, help="minibatches per step")
    parser.add_argument("--tune-seeds", type=int, default=3, help="seeds for tuning DRW")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="share of training labels flipped to another class, in [0, 1)")
    parser.add_argument("--reference", default=None,
                        help="another export folder to compare the learned loss with, e.g. "
                             "its base rule")
    args = parser.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        parser.error(f"--datasets: unknown {unknown or 'none given'}; known: {list(DATASETS)}")
    for flag in ("seeds", "steps", "minibatches", "tune_seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.label_noise < 1.0:
        parser.error(f"--label-noise {args.label_noise}: must be in [0, 1)")
    for flag, folder in (("--export", args.export), ("--reference", args.reference)):
        try:
            if folder is not None:
                read_export(folder)
        except (OSError, ValueError) as err:
            parser.error(f"{flag} {folder}: {err}")
    if args.out and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder: must be the Markdown file to write")
    report, results = run_check(args.export, args.seeds, names, args.steps, args.minibatches,
                                args.tune_seeds, label_noise=args.label_noise,
                                reference=args.reference)
    print(report)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            {"export": str(args.export), "seeds": args.seeds, "steps": args.steps,
             "minibatches": args.minibatches, "tune_seeds": args.tune_seeds,
             "label_noise": args.label_noise, "reference": args.reference,
             "results": results}, indent=1))
        atomic_write_text(out, report)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
