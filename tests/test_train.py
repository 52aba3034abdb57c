import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

import agents.train as train_mod
from agents.rollout import rollout_policy
from agents.train import AgentPolicy, TrainArgs, latest_checkpoint, load_hyperparams, train
from agents.vec_env import EPISODE_KEYWORDS
from lossgym import TaskDistribution, TaskSpec
from lossgym.tasks import TaskFactors

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=4)
TINY = {
    "ppo": {"n_steps": 8, "batch_size": 32},
    "recurrentppo": {"n_steps": 8, "batch_size": 32},
    "sac": {"learning_starts": 16, "batch_size": 32},
}


@pytest.fixture(autouse=True)
def small_tasks(monkeypatch):
    original = train_mod.make_env
    monkeypatch.setattr(train_mod, "make_env",
                        lambda n, seed, run_dir, kw, tasks=None: original(n, seed, run_dir, kw,
                                                                          tasks=SMALL))


def tiny_args(tmp_path, algo, timesteps=64, **kw):
    kw.setdefault("overrides", TINY[algo])
    return TrainArgs(algo=algo, run_dir=str(tmp_path / algo), timesteps=timesteps, num_envs=4,
                     checkpoint_every=32, progress=False, **kw)


@pytest.mark.parametrize("algo", ["ppo", "sac", "recurrentppo"])
def test_train_end_to_end_writes_the_run_folder(tmp_path, algo):
    run = train(tiny_args(tmp_path, algo))
    config = json.loads((run / "config.json").read_text())
    assert config["num_timesteps"] >= 64
    assert (run / "policy.pt").exists() and (run / "monitor.csv").exists()
    assert any((run / "tb").iterdir())
    assert latest_checkpoint(run).exists()
    # Checkpoints load without unpickling anything.
    state = torch.load(run / "policy.pt", weights_only=True)
    assert int(state["num_timesteps"]) == config["num_timesteps"]
    agent = AgentPolicy(run)
    records = rollout_policy(agent, [SMALL.replace(seed=s) for s in range(2)], "agent")
    again = rollout_policy(AgentPolicy(run), [SMALL.replace(seed=s) for s in range(2)], "agent")
    np.testing.assert_array_equal(records[0].actions, again[0].actions)
    assert records[0].params.shape == (SMALL.horizon, len(agent.parameters))


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = train(tiny_args(tmp_path, "ppo", timesteps=64))
    saved = torch.load(latest_checkpoint(first), weights_only=True)
    resumed = train(tiny_args(tmp_path, "ppo", timesteps=128, resume=True))
    config = json.loads((resumed / "config.json").read_text())
    assert int(saved["num_timesteps"]) == 64
    assert config["num_timesteps"] == 128
    assert latest_checkpoint(resumed).name == "ckpt-128.pt"


def test_resume_without_checkpoint_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        train(tiny_args(tmp_path, "ppo", resume=True))
    assert not (tmp_path / "ppo").exists()  # a failed resume creates nothing
    run = train(tiny_args(tmp_path, "ppo"))
    (run / "policy.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="policy.pt"):
        AgentPolicy(run)


def test_hyperparams_are_keyed_by_env_id():
    for algo in ("ppo", "sac", "recurrentppo"):
        hp = load_hyperparams(algo)
        assert hp["n_timesteps"] > 0 and hp["policy"]
    with pytest.raises(ValueError, match="'a2c'"):
        load_hyperparams("a2c")


# ------------------------------------------------------------------------------- resume
class Killed(Exception):
    """Stands for kill -9: the process stops mid-rollout; what it wrote stays."""


def interrupt_at(monkeypatch, timesteps):
    original = train_mod.DomainMetrics._on_step

    def on_step(self):
        if self.num_timesteps >= timesteps:
            raise Killed
        return original(self)

    monkeypatch.setattr(train_mod.DomainMetrics, "_on_step", on_step)


ORIGINAL_MAKE_ENV = train_mod.make_env
SMALL_GRID = TaskFactors(imbalance_ratios=(10.0, 20.0), label_noises=(0.0, 0.1), widths=(32,),
                         minibatches_per_step=(2,), horizons=(4,), seed_range=(0, 1000))
DIST = TaskDistribution(
    train=(SMALL_GRID,),
    held_out_id=(dataclasses.replace(SMALL_GRID, seed_range=(5000, 6000)),),
    held_out_ood=(dataclasses.replace(SMALL_GRID, seed_range=(5000, 6000), widths=(24,)),))


@pytest.fixture
def drawn_tasks(monkeypatch):
    """Tasks drawn from a small distribution (ratios, noise, seeds), not one fixed task."""
    monkeypatch.setattr(train_mod, "make_env", lambda n, seed, run_dir, kw, tasks=None:
                        ORIGINAL_MAKE_ENV(n, seed, run_dir, kw, tasks=DIST))


def monitor_rows(run):
    lines = (run / "monitor.csv").read_text().splitlines()
    rows = list(csv.DictReader(lines[1:]))
    for row in rows:
        del row["t"]  # wall time
    return rows


def parameters(run):
    return torch.load(run / "policy.pt", weights_only=True)["parameters"]


def assert_same_tensors(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def run_files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


@pytest.mark.parametrize("algo", ["ppo", "sac", "recurrentppo"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, drawn_tasks, algo):
    # Resume recreated monitor.csv (its episodes were lost) and was not exact.
    full = train(tiny_args(tmp_path / "full", algo, timesteps=96))
    with monkeypatch.context() as m:
        interrupt_at(m, 48)  # after the checkpoint at 32 steps, mid-rollout
        with pytest.raises(Killed):
            train(tiny_args(tmp_path / "cut", algo, timesteps=96))
    cut = tmp_path / "cut" / algo
    assert latest_checkpoint(cut).name == "ckpt-32.pt"
    rows_before = len(monitor_rows(cut))
    resumed = train(tiny_args(tmp_path / "cut", algo, timesteps=96, resume=True))
    assert monitor_rows(resumed) == monitor_rows(full)  # the tasks drawn, returns, lengths
    assert len(monitor_rows(full)) > rows_before > 0
    assert {r["task_imbalance_ratio"] for r in monitor_rows(full)} == {"10.0", "20.0"}
    assert_same_tensors(parameters(resumed), parameters(full))
    replayed = (cut / "monitor.interrupted.csv").read_text().splitlines()
    assert len(replayed) == rows_before - 8  # the rows after the checkpoint, trained again
    config = json.loads((resumed / "config.json").read_text())
    assert config["num_timesteps"] == 96 and config["resumed_from"] == ["ckpt-32.pt"]


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, monkeypatch, drawn_tasks):
    full = train(tiny_args(tmp_path / "full", "ppo", timesteps=96))
    for damage in ("truncate", "missing"):
        with monkeypatch.context() as m:
            interrupt_at(m, 80)
            with pytest.raises(Killed):
                train(tiny_args(tmp_path / damage, "ppo", timesteps=96))
        run = tmp_path / damage / "ppo"
        latest = latest_checkpoint(run)
        assert latest.name == "ckpt-64.pt"
        if damage == "truncate":
            latest.write_bytes(latest.read_bytes()[:1000])
        else:
            latest.unlink()
        resumed = train(tiny_args(tmp_path / damage, "ppo", timesteps=96, resume=True))
        assert monitor_rows(resumed) == monitor_rows(full)
        assert_same_tensors(parameters(resumed), parameters(full))


@pytest.fixture
def killed_run(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        interrupt_at(m, 48)
        with pytest.raises(Killed):
            train(tiny_args(tmp_path, "ppo", timesteps=96))
    return tmp_path / "ppo"


@pytest.mark.parametrize("damage", ["all_corrupt", "outside", "absolute", "algo", "num_envs",
                                    "seed", "norm_garbage", "monitor_gone", "config_garbage"])
def test_a_failed_resume_writes_nothing(tmp_path, killed_run, damage):
    # A failed resume truncated monitor.csv and rewrote config.json before failing.
    run = killed_run
    kwargs, shown = {}, None
    if damage == "all_corrupt":
        for ckpt in (run / "checkpoints").glob("ckpt-*.pt"):
            ckpt.write_bytes(b"garbage")
        shown = "no readable checkpoint"
    elif damage in ("outside", "absolute"):
        target = "../../elsewhere.pt" if damage == "outside" else str(tmp_path / "x.pt")
        (run / "checkpoints" / "latest.json").write_text(json.dumps({"file": target}))
        shown = "outside the run folder"
    elif damage == "algo":
        kwargs, shown = {"algo": "sac", "overrides": {}}, "trained with algo='ppo'"
    elif damage == "num_envs":
        kwargs, shown = {"num_envs": 8}, "num_envs=4"
    elif damage == "seed":
        kwargs, shown = {"seed": 3}, "seed=0"
    elif damage == "norm_garbage":
        # The observation statistics live inside the checkpoint: damage the checkpoint's.
        ckpt = latest_checkpoint(run)
        state = torch.load(ckpt, weights_only=True)
        meta = json.loads(state["meta"])
        meta["normalizer"] = "garbage"
        state["meta"] = json.dumps(meta)
        torch.save(state, ckpt)
        shown = "normali"
    elif damage == "monitor_gone":
        (run / "monitor.csv").unlink()
        shown = "monitor.csv is missing"
    elif damage == "config_garbage":
        (run / "config.json").write_text("{not json")
        shown = "config.json cannot be read"
    before = run_files(run)
    args = tiny_args(run.parent, "ppo", timesteps=96, resume=True)
    with pytest.raises(ValueError, match=shown):
        train(dataclasses.replace(args, **kwargs))
    assert run_files(run) == before


def test_the_run_folder_has_sb3_files_and_domain_metrics(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_args(tmp_path, "ppo", timesteps=64,
                          overrides={**TINY["ppo"], "env_kwargs": {"reward_baseline": "paired",
                                                                   "action_params": "gamma,tau"}}))
    agent = AgentPolicy(run)
    venv = train_mod.make_env(2, 0, None, {"reward_baseline": "paired",
                                           "action_params": "gamma,tau"})
    norm = VecNormalize.load(str(run / "vecnormalize.pkl"), venv)
    norm.training = False
    model = PPO.load(run / "model.zip", device="cpu")
    obs = norm.reset()
    raw = norm.get_original_obs()
    sb3_actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(sb3_actions, agent.act(raw), atol=1e-6)
    rows = monitor_rows(run)
    assert list(rows[0]) == ["r", "l", *EPISODE_KEYWORDS]
    assert all(float(r["twin_test_balanced_accuracy"]) >= 0 for r in rows)
    events = EventAccumulator(str(next((run / "tb").iterdir()))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lossgym/param_gamma", "lossgym/param_tau", "lossgym/episode_val_metric",
            "lossgym/episode_test_balanced_accuracy", "lossgym/episode_test_gain_over_twin",
            "rollout/ep_rew_mean"} <= tags


def test_agent_policy_names_a_corrupt_normaliser_or_config(tmp_path):
    run = train(tiny_args(tmp_path, "ppo"))
    (run / "policy.norm.json").write_text('{"mean": [1, 2]}')
    with pytest.raises(ValueError, match="policy.norm.json"):
        AgentPolicy(run)
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json does not exist"):
        AgentPolicy(run)


def test_zero_and_negative_budgets_are_refused_not_replaced_by_defaults(tmp_path):
    for name, value in (("timesteps", 0), ("num_envs", 0), ("checkpoint_every", 0),
                        ("seed", -1), ("algo", "a2c")):
        with pytest.raises(ValueError, match=f"{name}={value!r}"):
            TrainArgs(**{name: value})
    assert not tmp_path.joinpath("ppo").exists()
