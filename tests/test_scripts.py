"""The example script runs end to end: a plain PyTorch loop with cross-entropy and an export,
on the user's own arrays or on the synthetic draw."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/train_with_adaptive_loss.py"


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=600).stdout


def _tiny(seed=0):
    """3 long-tailed classes (60, 30, 20 samples) in 4 features, separable enough."""
    gen = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], [60, 30, 20])
    X = gen.normal(size=(len(y), 4)) + 2.0 * np.eye(3, 4)[y]
    return X, y


def _table(printed):
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    return [r.split(" | ")[0] for r in rows[1:]]


SMALL = ("--val-per-class", "5", "--test-per-class", "5", "--epochs", "2", "--seeds", "1")


def test_help_says_what_the_script_does_in_whole_sentences():
    text = _run(SCRIPT, "--help")
    assert ("Train a classifier on your own arrays with a plain PyTorch loop: cross-entropy "
            "against an exported adaptive loss.") in " ".join(text.split())
    for option in ("--x", "--y", "--csv", "--label-column", "--epochs", "--seeds"):
        assert option in text


def test_train_with_adaptive_loss_on_your_npy_arrays(tmp_path):
    X, y = _tiny()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    printed = _run(SCRIPT, "--x", str(tmp_path / "X.npy"), "--y", str(tmp_path / "y.npy"),
                   *SMALL)
    # Each class gives 5 validation and 5 test samples; the rest trains.
    assert "3 classes (classes 0='0', 1='1', 2='2'), training counts [50, 20, 10]" in printed
    assert _table(printed) == ["| cross-entropy", "| adaptive loss"]
    assert len(re.findall(r"^\s+\d+\s+gamma=", printed, flags=re.M)) == 2


def test_train_with_adaptive_loss_on_your_csv(tmp_path):
    X, y = _tiny(1)
    names = np.array(["owl", "cat", "eel"])[y]  # sorted: cat, eel, owl
    lines = ["f0,f1,species,f2,f3"] + [
        f"{a:.4f},{b:.4f},{name},{c:.4f},{d:.4f}" for (a, b, c, d), name in zip(X, names)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    printed = _run(SCRIPT, "--csv", str(tmp_path / "data.csv"), "--label-column", "species",
                   *SMALL)
    assert "3 classes (classes 0='cat', 1='eel', 2='owl'), training counts [20, 10, 50]" \
        in printed
    assert _table(printed) == ["| cross-entropy", "| adaptive loss"]


def _script():
    spec = importlib.util.spec_from_file_location("train_with_adaptive_loss", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--x", "X.npy"], "--x and --y go together"),
    (["--csv", "data.csv"], "--csv and --label-column go together"),
    (["--csv", "data.csv", "--label-column", "kind"], "no column 'kind'"),
    (["--csv", "bad.csv", "--label-column", "species"],
     "bad.csv, line 3: column 'f1' holds 'n/a', not a number"),
    (["--x", "X.npy", "--y", "y.npy", "--val-per-class", "5", "--test-per-class", "50"],
     "class 1 has 30 samples"),
])
def test_bad_data_exits_with_a_message(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    X, y = _tiny()
    np.save("X.npy", X)
    np.save("y.npy", y)
    (tmp_path / "data.csv").write_text("f0,f1,species\n0.1,0.2,owl\n")
    (tmp_path / "bad.csv").write_text("f0,f1,species\n0.1,0.2,owl\n0.3,n/a,cat\n")
    with pytest.raises(SystemExit) as exit_info:
        _script().main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_with_adaptive_loss_with_the_committed_agent(tmp_path):
    # The committed default agent exported as a controller, then used by the example loop.
    out = tmp_path / "adaptive_loss"
    _run("-m", "lossgym.cli", "export", "results/ppo-default", "--kind", "controller",
         "--out", str(out))
    printed = _run("scripts/train_with_adaptive_loss.py", "--export", str(out), "--epochs", "2",
                   "--seeds", "1")
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| cross-entropy", "| adaptive loss"]
    assert "kind='controller'" in printed and "step=2/2" in printed
    # One line of parameters per epoch, with the agent's five.
    epochs = [line for line in printed.splitlines() if re.match(r"\s+\d+\s+gamma=", line)]
    assert len(epochs) == 2
    for line in epochs:
        assert all(f"{p}=" in line for p in ("gamma", "alpha", "tau", "margin", "scale"))
