"""Record reference outputs that a refactor must reproduce (tests/test_reference.py).

    python tests/reference/make_reference.py   # writes tests/reference/reference.json

Recorded on main before the consolidation of issue 12: one episode of the single env and of
the vector env (2- and 5-parameter actions, paired reward), ``lossgym compare`` on a small
task, an exported controller and a schedule in a plain loop, and every built-in method's loss
values and gradients on fixed inputs. The functions here only use the public API that stays
(env ids and keyword arguments, ``compare``, ``AdaptiveLoss``, the export commands).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import lossgym  # noqa: F401  (registers the env ids)
from lossgym import AdaptiveLoss
from lossgym.compare import compare
from lossgym.schedules import LossSchedule, cosine, step
from lossgym.tasks import TaskSpec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASK = TaskSpec(n_max=200, imbalance_ratio=20.0, width=32, minibatches_per_step=3, horizon=4,
                batch_size=32)
FIVE = ("gamma", "alpha", "tau", "margin", "scale")
METHODS = ("ce", "focal_2", "cb_effective", "cb_focal", "ce_drw", "ldam_drw",
           "logit_adjusted", "poly1", "flsd53", "adafocal", "adaloss", "gradient_gate")
#: Names of the methods before issue 12 renamed them (new name → old name).
OLD_NAMES = {"cb_effective": "class_balanced", "focal_2": "focal_g2"}


def _actions(rng: np.random.Generator, shape: tuple[int, ...], steps: int) -> list[np.ndarray]:
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(steps)]


def _env_kwargs() -> dict:
    """Features version 1, where the env has versions (the reference predates version 2)."""
    try:
        from lossgym.envs.config import LossTuningConfig
    except ImportError:
        return {}
    return {"context_features": False} if "context_features" in \
        LossTuningConfig.__dataclass_fields__ else {}


def single_episode(params: tuple[str, ...]) -> dict:
    env = gym.make("LossTuning-v0", tasks=TASK, action_params=params,
                   reward_baseline="paired", **_env_kwargs())
    obs, _ = env.reset(seed=3)
    out = {"obs": [obs.tolist()], "rewards": []}
    for a in _actions(np.random.default_rng(0), (len(params),), TASK.horizon):
        obs, reward, *_ = env.step(a)
        out["obs"].append(obs.tolist())
        out["rewards"].append(float(reward))
    return out


def vector_episode(params: tuple[str, ...]) -> dict:
    env = gym.make_vec("LossTuning-v0", num_envs=3, vectorization_mode="vector_entry_point",
                       tasks=TASK, action_params=params, reward_baseline="paired",
                       **_env_kwargs())
    obs, _ = env.reset(seed=5)
    out = {"obs": [obs.tolist()], "rewards": []}
    for a in _actions(np.random.default_rng(1), (3, len(params)), TASK.horizon):
        obs, reward, *_ = env.step(a)
        out["obs"].append(obs.tolist())
        out["rewards"].append(reward.tolist())
    return out


def compare_small() -> dict:
    methods = [OLD_NAMES.get(m, m) if _old_api() else m for m in METHODS]
    result = compare(TASK, methods, seeds=(0, 1), device="cpu", progress=False)
    return {m: {k: v.tolist() for k, v in result.metrics[name].items()}
            for m, name in zip(METHODS, methods)}


def _old_api() -> bool:
    from lossgym import methods

    return "class_balanced" in getattr(methods, "BUILTIN_METHODS", {})


def _plain_loop(criterion: AdaptiveLoss, epochs: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = torch.cat([torch.zeros(60), torch.ones(24), torch.full((12,), 2)]).long()
    xv = torch.randn(30, 8, generator=g)
    yv = torch.arange(30) % 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion.watch(model)
    losses, params = [], []
    for _ in range(epochs):
        for b in range(0, 96, 32):
            opt.zero_grad()
            loss = criterion(model(x[b:b + 32]), y[b:b + 32])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            criterion.step(model(xv), yv)
        params.append({k: float(v) for k, v in criterion.params.items()})
    return {"losses": losses, "params": params}


def exports_in_plain_loop() -> dict:
    counts = [60.0, 24.0, 12.0]
    schedule = LossSchedule({"gamma": cosine(2.0, 0.0), "alpha": step([0.5], [0.0, 1.0]),
                             "tau": cosine(0.0, 1.0)})
    out = {"schedule": _plain_loop(AdaptiveLoss(schedule, class_counts=counts, total_steps=3))}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "lossgym.cli", "export",
                        str(ROOT / "results" / "ppo-default"), "--kind", "controller",
                        "--out", f"{tmp}/ctrl"], check=True, cwd=ROOT, capture_output=True)
        loss = AdaptiveLoss.load(f"{tmp}/ctrl", class_counts=counts, total_steps=3)
        out["controller"] = _plain_loop(loss)
    return out


def method_losses() -> dict:
    """Each built-in method's exported loss (one member) on fixed inputs: value and gradient."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 24, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 4, (2, 24), generator=g)
    counts = torch.tensor([50.0, 20.0, 8.0, 3.0])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in METHODS:
            name = OLD_NAMES.get(m, m) if _old_api() else m
            if _old_api() and name in ("class_balanced", "cb_focal"):
                name = "method:" + name
            folder = f"{tmp}/{m}"
            subprocess.run([sys.executable, "-m", "lossgym.cli", "export", "--baseline", name,
                            "--out", folder], check=True, cwd=ROOT, capture_output=True)
            loss = AdaptiveLoss.load(folder, class_counts=counts, total_steps=4,
                                     minibatches_per_step=2)
            rows = []
            for _period in range(4):
                for mb in range(2):
                    z = logits[mb].clone().requires_grad_(True)
                    value = loss(z, targets[mb])
                    value.backward()
                    rows.append({"value": float(value.detach()),
                                 "grad": z.grad.flatten().tolist()})
                with torch.no_grad():
                    loss.step(logits[0], targets[0])
            out[m] = rows
    return out


def record() -> dict:
    torch.set_num_threads(1)
    return {
        "single_2": single_episode(("gamma", "alpha")),
        "single_5": single_episode(FIVE),
        "vector_2": vector_episode(("gamma", "alpha")),
        "vector_5": vector_episode(FIVE),
        "compare": compare_small(),
        "plain_loop": exports_in_plain_loop(),
        "methods": method_losses(),
    }


if __name__ == "__main__":
    (HERE / "reference.json").write_text(json.dumps(record()))
    print(HERE / "reference.json")
