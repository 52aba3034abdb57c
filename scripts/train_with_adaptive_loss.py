"""Train a classifier on your own arrays with a plain PyTorch loop: cross-entropy against an
exported adaptive loss.

    python scripts/train_with_adaptive_loss.py [--x X.npy --y y.npy | --csv data.csv
                                                --label-column NAME]
                                               [--export runs/ppo-default/adaptive_loss]
                                               [--epochs 20] [--seeds 3]

The data are yours: features ``X [M, F]`` and labels ``y [M]`` as two ``.npy`` files, or a CSV
file with a header row whose label column you name (every other column is a feature). Labels
may be any values (numbers or names); the classes are numbered in sorted order. Without them,
the script draws a long-tailed ``make_classification`` data set. Either way the arrays pass
through :func:`lossgym.from_arrays` (balanced validation and test splits of
``--val-per-class`` and ``--test-per-class`` samples, standardised features). Without
``--export`` the loss is a hand-written schedule (focal γ annealed from 2 to 0, class-balanced
weights from 70 % of training on). Both criteria train the same MLP from the same
initialisation on the same minibatches; the adaptive loss steps once per epoch with the
validation logits, like a learning-rate scheduler. The script prints the test metrics of each
and the parameters the adaptive loss chose.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn

from lossgym import AdaptiveLoss, from_arrays
from lossgym.export import read_export
from lossgym.metrics import classification_metrics
from lossgym.schedules import LossSchedule, cosine, step

METRICS = ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece")


def long_tailed_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The stand-in for your data: ``X [M, F]`` floats and ``y [M]`` labels 0..C-1."""
    weights = [0.55, 0.25, 0.11, 0.06, 0.03]
    return make_classification(n_samples=8000, n_features=20, n_informative=12,
                               n_redundant=4, n_classes=len(weights), weights=weights,
                               class_sep=0.8, flip_y=0.0, random_state=seed)


def read_csv(path: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (every column but ``label_column``, as floats) and labels (as written) of a
    CSV file with a header row; ``ValueError`` names a missing column or a non-number."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(f"{path} is empty; it needs a header row and data rows")
    header, rows = [name.strip() for name in rows[0]], rows[1:]
    if label_column not in header:
        raise ValueError(f"{path} has no column {label_column!r}; its columns are {header}")
    label = header.index(label_column)
    features: list[list[float]] = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        try:
            features.append([float(v) for k, v in enumerate(row) if k != label])
        except ValueError:
            bad = next(k for k, v in enumerate(row) if k != label and not _is_number(v))
            raise ValueError(f"{path}, line {line}: column {header[bad]!r} holds "
                             f"{row[bad]!r}, not a number") from None
    return (np.array(features, dtype=np.float64).reshape(len(rows), len(header) - 1),
            np.array([row[label].strip() for row in rows]))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def user_arrays(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The user's ``X`` and ``y`` (labels numbered 0..C-1 in sorted order, and the label of
    each number) from ``--x``/``--y`` or ``--csv``; None without them."""
    if args.csv is not None:
        try:
            X, labels = read_csv(args.csv, args.label_column)
        except OSError as err:
            raise ValueError(f"--csv {args.csv}: cannot be read ({err})") from err
    elif args.x is not None:
        arrays = []
        for flag, path in (("--x", args.x), ("--y", args.y)):
            try:
                arrays.append(np.load(path, allow_pickle=False))
            except (OSError, ValueError) as err:
                raise ValueError(f"{flag} {path}: not a readable .npy file ({err})") from err
        X, labels = arrays
        if X.ndim != 2 or labels.shape != (len(X),):
            raise ValueError(f"--x must hold [M, F] features and --y [M] labels, got shapes "
                             f"{X.shape} and {labels.shape}")
    else:
        return None
    names, y = np.unique(labels, return_inverse=True)
    return X, y.astype(np.int64), [str(n) for n in names]


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


def build_parser() -> argparse.ArgumentParser:
    # The description is the docstring's first paragraph (its usage block is argparse's own).
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    data = parser.add_argument_group("your data (default: a synthetic long-tailed draw)")
    data.add_argument("--x", type=Path, default=None, metavar="X.npy",
                      help="features [M, F], a .npy file (with --y)")
    data.add_argument("--y", type=Path, default=None, metavar="y.npy",
                      help="labels [M], a .npy file (with --x)")
    data.add_argument("--csv", type=Path, default=None, metavar="DATA.csv",
                      help="a CSV file with a header row: the label column and the features "
                           "(with --label-column)")
    data.add_argument("--label-column", default=None, metavar="NAME",
                      help="the label column of --csv; every other column is a feature")
    data.add_argument("--val-per-class", type=int, default=40,
                      help="validation samples per class (default: %(default)s)")
    data.add_argument("--test-per-class", type=int, default=60,
                      help="test samples per class (default: %(default)s)")
    parser.add_argument("--export", default=None,
                        help="an export folder from `lossgym export` (default: a hand schedule)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="training epochs, one step() of the adaptive loss each "
                             "(default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of initialisation and data order, each trained with both "
                             "criteria (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.x is None) != (args.y is None):
        parser.error("--x and --y go together: the features and the labels")
    if args.csv is not None and args.x is not None:
        parser.error("give your data as --x/--y or as --csv, not both")
    if (args.csv is None) != (args.label_column is None):
        parser.error("--csv and --label-column go together: the file and its label column")
    for flag in ("epochs", "seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    try:
        if args.export is not None:
            read_export(args.export)
    except (OSError, ValueError) as err:
        parser.error(f"--export {args.export}: {err}")

    try:
        given = user_arrays(args)
        X, y, names = given if given is not None else (*long_tailed_arrays(), None)
        ds = from_arrays(X, y, name="example", val_per_class=args.val_per_class,
                         test_per_class=args.test_per_class, register=False)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    data = {k: torch.tensor(getattr(ds, k)) for k in
            ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    counts = torch.bincount(data["y_train"]).tolist()
    source = "synthetic data" if names is None else (
        "classes " + ", ".join(f"{k}={name!r}" for k, name in enumerate(names)))
    print(f"{len(counts)} classes ({source}), training counts {counts}; {args.epochs} epochs, "
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
