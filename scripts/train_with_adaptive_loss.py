"""Train a classifier on your own arrays with a plain PyTorch loop: cross-entropy against an
exported adaptive loss.

    python scripts/train_with_adaptive_loss.py [--export runs/ppo-default/adaptive_loss]
                                               [--epochs 20] [--seeds 3]

The data are a long-tailed ``make_classification`` draw passed through
:func:`lossgym.from_arrays` (balanced validation and test splits, standardised features): put
your own ``X, y`` there. Without ``--export`` the loss is a hand-written schedule (focal γ
annealed from 2 to 0, class-balanced weights from 70 % of training on). Both criteria train
the same MLP from the same initialisation on the same minibatches; the adaptive loss steps
once per epoch with the validation logits, like a learning-rate scheduler. The script prints
the test metrics of each and the parameters the adaptive loss chose.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn

from lossgym import AdaptiveLoss, from_arrays
from lossgym.metrics import classification_metrics
from lossgym.schedules import LossSchedule, cosine, step

METRICS = ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece")


def long_tailed_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Your data go here: ``X [M, F]`` floats and ``y [M]`` labels 0..C-1."""
    weights = [0.55, 0.25, 0.11, 0.06, 0.03]
    return make_classification(n_samples=8000, n_features=20, n_informative=12,
                               n_redundant=4, n_classes=len(weights), weights=weights,
                               class_sep=0.8, flip_y=0.0, random_state=seed)


def make_criterion(export: str | None, train_labels: torch.Tensor, epochs: int
                   ) -> AdaptiveLoss:
    counts = torch.bincount(train_labels).float()
    if export:
        # One step() per epoch of minibatches of 128 (where a method's DRW switch falls).
        return AdaptiveLoss.load(export, class_counts=counts, total_steps=epochs,
                                 minibatches_per_step=-(-len(train_labels) // 128))
    schedule = LossSchedule({"gamma": cosine(2.0, 0.0), "alpha": step([0.7], [0.0, 1.0])})
    return AdaptiveLoss(schedule, class_counts=counts, total_steps=epochs)


def train(criterion: nn.Module, data: dict[str, torch.Tensor], epochs: int, seed: int
          ) -> nn.Module:
    """A plain loop: AdamW, shuffled minibatches of 128, one criterion.step() per epoch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(data["x_train"].shape[1], 128), nn.ReLU(),
                          nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, int(data["y_train"].max()) + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    adaptive = isinstance(criterion, AdaptiveLoss)
    if adaptive:
        criterion.watch(optimizer)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data["y_train"]), generator=order).split(128):
            loss = criterion(model(data["x_train"][idx]), data["y_train"][idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if adaptive:
            with torch.no_grad():
                criterion.step(val_logits=model(data["x_val"]), val_targets=data["y_val"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=None,
                        help="an export folder from `lossgym export` (default: a hand schedule)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    X, y = long_tailed_arrays()
    ds = from_arrays(X, y, name="example", val_per_class=40, test_per_class=60, register=False)
    data = {k: torch.tensor(getattr(ds, k)) for k in
            ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    counts = torch.bincount(data["y_train"]).tolist()
    print(f"{len(counts)} classes, training counts {counts}; {args.epochs} epochs, "
          f"{args.seeds} seeds\n")

    results: dict[str, list[dict[str, float]]] = {"cross-entropy": [], "adaptive loss": []}
    criterion = None
    for seed in range(args.seeds):
        criterion = make_criterion(args.export, data["y_train"], args.epochs)
        for name, loss in (("cross-entropy", F.cross_entropy), ("adaptive loss", criterion)):
            model = train(loss, data, args.epochs, seed)
            with torch.no_grad():
                test = classification_metrics(model(data["x_test"]), data["y_test"])
            results[name].append({m: float(test[m]) for m in METRICS})

    print("| criterion | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, rows in results.items():
        cells = [f"{100 * np.mean([r[m] for r in rows]):.2f} ± "
                 f"{100 * np.std([r[m] for r in rows]):.2f}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    assert criterion is not None
    print(f"\n{criterion}\nparameters per epoch (last seed):")
    for epoch, params in enumerate(criterion.history[: args.epochs]):
        print(f"  {epoch:3d}  " + "  ".join(f"{k}={v:.3f}" for k, v in params.items()))


if __name__ == "__main__":
    main()
