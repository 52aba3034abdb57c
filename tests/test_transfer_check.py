"""scripts/transfer_check.py: the plain-loop transfer check, with a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.export import export_baseline

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "transfer_check.py"
TINY = ["--seeds", "2", "--steps", "2", "--minibatches", "2", "--tune-seeds", "1"]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("transfer_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _run(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=600).stdout


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "gaussian_quantiles",
                                  "make_classification_6c"])
def test_split_is_balanced_long_tailed_and_disjoint(check, name):
    spec = check.DATASETS[name]
    x, y = spec.load()
    data = check.split(spec, np.asarray(x, dtype=np.float64), y, seed=3)
    classes = len(np.unique(y))
    for part, per_class in (("val", spec.val_per_class), ("test", spec.test_per_class)):
        assert torch.bincount(data[f"y_{part}"]).tolist() == [per_class] * classes
    counts = torch.bincount(data["y_train"], minlength=classes)
    assert counts.min() >= 1
    assert counts.max() / counts.min() == pytest.approx(spec.ratio, rel=0.25)
    # Standardised with training statistics; no sample in two splits.
    assert data["x_train"].mean(0).abs().max() < 1e-4
    rows = [tuple(r) for part in ("train", "val", "test") for r in data[f"x_{part}"].tolist()]
    assert len(set(rows)) == len(rows)
    # The seed decides the split; the same seed gives the same one.
    again = check.split(spec, np.asarray(x, dtype=np.float64), y, seed=3)
    assert torch.equal(again["x_train"], data["x_train"])
    other = check.split(spec, np.asarray(x, dtype=np.float64), y, seed=4)
    assert not torch.equal(other["y_train"], data["y_train"]) or \
        not torch.equal(other["x_train"], data["x_train"])


def test_same_loss_twice_gives_zero_paired_differences(tmp_path):
    # Logit adjustment's own export as "the learned loss": every seed must give the same run,
    # so the learned − logit adjustment column is exactly zero.
    export = export_baseline("logit_adjusted", tmp_path / "la")
    out = tmp_path / "transfer.md"
    printed = _run("--export", str(export), "--datasets", "wine,breast_cancer",
                   "--out", str(out), *TINY)
    text = out.read_text()
    assert text in printed
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| wine", "| breast_cancer"]
    for row in rows:
        assert row.split(" | ")[9] == "+0.00 [+0.00, +0.00]"
    assert ("Target 5: PASS" in text) != ("Target 5: FAIL" in text)
    raw = json.loads(out.with_suffix(".json").read_text())["results"]
    for name in ("wine", "breast_cancer"):
        acc = raw[name]["test_balanced_accuracy"]
        assert acc["learned"] == acc["logit_adjusted"]
        assert len(acc["ce"]) == 2 and all(0.0 <= v <= 1.0 for v in acc["ce"])
        assert len(raw[name]["drw_scores"]) == 6


def test_with_the_committed_agent_exported_as_a_controller(tmp_path):
    export = tmp_path / "ppo_export"
    subprocess.run([sys.executable, "-m", "lossgym.cli", "export", "results/ppo-default",
                    "--kind", "controller", "--out", str(export)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    printed = _run("--export", str(export), "--datasets", "gaussian_quantiles", *TINY)
    assert "| gaussian_quantiles |" in printed
    assert "Target 5: " in printed


def test_bad_arguments_are_refused():
    result = subprocess.run([sys.executable, str(SCRIPT), "--export", "x", "--datasets",
                             "iris"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown" in result.stderr


def test_label_noise_flips_that_share_of_training_labels_only(check):
    spec = check.DATASETS["make_classification_6c"]
    x, y = spec.load()
    x = np.asarray(x, dtype=np.float64)
    clean = check.split(spec, x, y, seed=3)
    noisy = check.split(spec, x, y, seed=3, label_noise=0.4)
    for key in ("x_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(clean[key], noisy[key]), key
    from lossgym.data import symmetric_label_noise

    expected, _ = symmetric_label_noise(clean["y_train"].numpy(), 6, 0.4,
                                        np.random.default_rng([3, 23]))
    assert noisy["y_train"].tolist() == expected.tolist()  # lossgym's own noise model
    flipped = (clean["y_train"] != noisy["y_train"]).float().mean().item()
    assert flipped == pytest.approx(0.4, abs=0.05)
    assert torch.equal(check.split(spec, x, y, seed=3, label_noise=0.4)["y_train"],
                       noisy["y_train"])


def test_a_reference_export_gets_its_own_column(tmp_path):
    export = export_baseline("logit_adjusted", tmp_path / "la")
    printed = _run("--export", str(export), "--reference", str(export), "--datasets", "wine",
                   "--label-noise", "0.2", *TINY)
    header, row = [line for line in printed.splitlines() if line.startswith("| ")][:2]
    column = header.split(" | ").index("learned − reference")
    assert row.split(" | ")[column] == "+0.00 [+0.00, +0.00]"
    assert "Label noise: 0.2 of the training labels flipped" in printed
    result = subprocess.run([sys.executable, str(SCRIPT), "--export", str(export),
                             "--label-noise", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--label-noise 1.0: must be in [0, 1)" in result.stderr
