"""The example script runs end to end: a plain PyTorch loop with cross-entropy and an export."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=600).stdout


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
