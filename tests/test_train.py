import json

import numpy as np
import pytest
import torch

import agents.train as train_mod
from agents.rollout import rollout_policy
from agents.train import AgentPolicy, TrainArgs, latest_checkpoint, load_hyperparams, train
from lossgym import TaskSpec

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
    return TrainArgs(algo=algo, run_dir=str(tmp_path / algo), timesteps=timesteps, num_envs=4,
                     checkpoint_every=32, progress=False, overrides=TINY[algo], **kw)


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
    with pytest.raises(ValueError, match="no checkpoint"):
        train(tiny_args(tmp_path, "ppo", resume=True))
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
