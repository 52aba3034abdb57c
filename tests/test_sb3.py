"""stable-baselines3 integration: env checkers, the batched SB3 VecEnv adapter, and agents on it."""

from __future__ import annotations

import dataclasses
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecMonitor,
    VecNormalize,
)

from agents.vec_env import LossTuningSB3VecEnv, single_env_fn, unbatch_infos
from lossgym import TaskDistribution, TaskSpec
from lossgym.envs import LossTuningEnv, LossTuningVectorEnv
from lossgym.population import SHARED_FIELDS
from lossgym.tasks import TaskFactors

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32, minibatches_per_step=2,
                 horizon=4)
N = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_adapter(num_envs: int = N, **kwargs) -> LossTuningSB3VecEnv:
    return LossTuningSB3VecEnv(num_envs=num_envs, tasks=SMALL, **kwargs)


def random_actions(rng: np.random.Generator, num_envs: int = N) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(num_envs, 2)).astype(np.float32)


# ------------------------------------------------------------------------------ env checkers
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("render_mode", [None, "ansi"])
def test_sb3_check_env(render_mode):
    warnings.simplefilter("error")
    sb3_check_env(LossTuningEnv(tasks=SMALL, render_mode=render_mode), warn=True)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("render_mode", [None, "ansi"])
def test_gymnasium_check_env(render_mode):
    warnings.simplefilter("error")
    # Made through the registry so that the checker can rebuild it in the other render modes.
    env = gym.make("LossTuning-v0", tasks=SMALL, render_mode=render_mode)
    gym_check_env(env.unwrapped)


# ------------------------------------------------------------------------- adapter conventions
def test_construction():
    venv = make_adapter()
    assert venv.num_envs == N
    assert venv.observation_space == venv.vector_env.single_observation_space
    assert venv.action_space == venv.vector_env.single_action_space
    assert venv.observation_space.dtype == np.float32
    wrapped = LossTuningSB3VecEnv(LossTuningVectorEnv(num_envs=2, tasks=SMALL))
    assert wrapped.num_envs == 2
    with pytest.raises(ValueError, match="not both"):
        LossTuningSB3VecEnv(LossTuningVectorEnv(num_envs=2, tasks=SMALL), num_envs=2)
    with pytest.raises(TypeError):
        LossTuningSB3VecEnv(LossTuningEnv(tasks=SMALL))


def test_step_conventions():
    venv = make_adapter()
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (N, venv.observation_space.shape[0]) and obs.dtype == np.float32
    assert [set(info) for info in venv.reset_infos] == [{"task"}] * N
    episode_tasks = [info["task"] for info in venv.reset_infos]
    rng = np.random.default_rng(0)
    for t in range(1, 2 * SMALL.horizon + 1):
        reset_infos_before = [dict(info) for info in venv.reset_infos]
        obs, rewards, dones, infos = venv.step(random_actions(rng))
        assert obs.dtype == np.float32 and rewards.dtype == np.float32 and dones.dtype == bool
        assert obs.shape == (N, venv.observation_space.shape[0]) and len(infos) == N
        assert all(venv.observation_space.contains(o) for o in obs)
        episode_end = t % SMALL.horizon == 0
        np.testing.assert_array_equal(dones, episode_end)
        for i, info in enumerate(infos):
            assert info["TimeLimit.truncated"] is False
            assert isinstance(info["val_metric"], float) and info["diverged"] is False
            assert info["step"] == (SMALL.horizon if episode_end else t % SMALL.horizon)
            assert set(info["params"]) == {"gamma", "alpha"}
            assert ("terminal_observation" in info) == bool(dones[i])
            assert ("test" in info) == bool(dones[i])
            if dones[i]:
                term = info["terminal_observation"]
                assert term.dtype == np.float32 and term.shape == obs[i].shape
                assert term[0] == 1.0  # progress: the training budget is spent
                assert obs[i][0] == 0.0  # the new episode's first observation
                assert info["task"] == episode_tasks[i]  # the finished episode's task
                new_task = venv.reset_infos[i]["task"]
                assert new_task != info["task"]
                assert new_task == venv.tasks[i].to_dict()
                episode_tasks[i] = new_task
            else:
                assert venv.reset_infos[i] == reset_infos_before[i]


def test_terminal_observation_equals_final_obs():
    # The same episodes driven through the raw vector env give the final obs to compare with.
    raw = LossTuningVectorEnv(num_envs=N, tasks=SMALL)
    venv = make_adapter()
    raw.reset(seed=21)
    venv.seed(21)
    np.testing.assert_array_equal(venv.reset(), raw.reset(seed=21)[0])
    rng = np.random.default_rng(1)
    for _ in range(SMALL.horizon):
        actions = random_actions(rng)
        r_obs, r_rew, r_term, _, r_infos = raw.step(actions)
        obs, rewards, dones, infos = venv.step(actions)
        np.testing.assert_array_equal(obs, r_obs)
        np.testing.assert_array_equal(rewards, r_rew.astype(np.float32))
        np.testing.assert_array_equal(dones, r_term)
    assert dones.all()
    for i in range(N):
        np.testing.assert_array_equal(infos[i]["terminal_observation"], r_infos["final_obs"][i])
        assert infos[i]["val_metric"] == pytest.approx(r_infos["final_info"]["val_metric"][i])


def test_matches_single_envs():
    # Member i with seed s + i matches a single env with seed s + i (as in a DummyVecEnv), up
    # to float rounding: batched and single-member kernels sum in different orders, and the
    # gradient-norm CV feature (index 9) amplifies that (see the engine's variance formula).
    venv = make_adapter()
    dummy = DummyVecEnv([single_env_fn(None, tasks=SMALL) for _ in range(N)])
    venv.seed(5)
    dummy.seed(5)
    np.testing.assert_allclose(venv.reset(), dummy.reset(), atol=1e-5)
    assert venv.reset_infos == dummy.reset_infos
    rng = np.random.default_rng(2)
    for _ in range(SMALL.horizon + 1):
        actions = random_actions(rng)
        obs, rewards, dones, infos = venv.step(actions)
        d_obs, d_rewards, d_dones, d_infos = dummy.step(actions)
        np.testing.assert_allclose(obs, d_obs, atol=1e-5)
        np.testing.assert_allclose(rewards, d_rewards, atol=1e-5)
        np.testing.assert_array_equal(dones, d_dones)
        for info, d_info in zip(infos, d_infos):
            assert set(info) == set(d_info)
            assert info["val_metric"] == pytest.approx(d_info["val_metric"], abs=1e-5)
            if "terminal_observation" in info:
                np.testing.assert_allclose(info["terminal_observation"],
                                           d_info["terminal_observation"], atol=1e-5)
                assert info["task"] == d_info["task"]
        assert venv.reset_infos == dummy.reset_infos


def test_seed_then_reset_is_reproducible():
    venv = make_adapter()
    venv.seed(123)
    first = venv.reset()
    tasks = [info["task"] for info in venv.reset_infos]
    venv.step(random_actions(np.random.default_rng(0)))
    venv.seed(123)
    np.testing.assert_array_equal(venv.reset(), first)
    assert [info["task"] for info in venv.reset_infos] == tasks
    assert len({t["seed"] for t in tasks}) == N  # env i is seeded with 123 + i
    other = venv.reset()  # seeds are used once: the next reset continues the generators
    assert [info["task"] for info in venv.reset_infos] != tasks
    assert not np.array_equal(other, first)


def test_set_options_applies_at_next_reset_only():
    venv = make_adapter()
    venv.seed(0)
    venv.reset()
    pinned = SMALL.replace(seed=7)
    venv.set_options({"task": pinned})
    venv.reset()
    assert all(t == pinned for t in venv.tasks)
    assert all(info["task"] == pinned.to_dict() for info in venv.reset_infos)
    venv.reset()
    assert all(t.seed != 7 for t in venv.tasks)
    # Per-env options: env 1 pinned, the others draw (as single envs would).
    venv.set_options([{}, {"task": pinned.to_dict()}, {}, {}])
    venv.seed(40)
    obs = venv.reset()
    single = LossTuningEnv(tasks=SMALL)
    for i in (0, 2, 3):
        s_obs, s_info = single.reset(seed=40 + i)
        assert venv.reset_infos[i] == s_info
        np.testing.assert_allclose(obs[i], s_obs, atol=1e-5)
    s_obs, s_info = single.reset(seed=41, options={"task": pinned})
    assert venv.tasks[1] == pinned and venv.reset_infos[1] == s_info
    np.testing.assert_allclose(obs[1], s_obs, atol=1e-5)
    venv.set_options({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        venv.reset()


def test_get_attr_env_method_set_attr():
    venv = make_adapter(render_mode="ansi")
    venv.reset()
    assert venv.render_mode == "ansi"
    assert venv.get_attr("render_mode") == ["ansi"] * N
    assert venv.has_attr("render_mode") and not venv.has_attr("no_such_thing")
    assert venv.get_attr("observation_space", indices=[0, 2]) == [venv.observation_space] * 2
    assert venv.get_attr("action_space", indices=1) == [venv.action_space]
    assert venv.get_attr("task") == venv.tasks
    assert venv.get_attr("metadata")[0]["render_modes"] == ["ansi", "rgb_array"]
    with pytest.raises(AttributeError, match="no_such_thing"):
        venv.get_attr("no_such_thing")
    with pytest.raises(AttributeError):
        venv.get_attr("step")  # methods are not per-env attributes
    lines = venv.env_method("render", indices=[1, 3])
    assert len(lines) == 2 and all(isinstance(s, str) and s.startswith("step 0/4") for s in lines)
    assert venv.env_method("get_wrapper_attr", "task", indices=[2]) == [venv.tasks[2]]
    assert venv.env_method("has_wrapper_attr", "nope") == [False] * N
    with pytest.raises(AttributeError, match="supported"):
        venv.env_method("step", np.zeros(2))
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * N
    rendered = venv.render()
    assert rendered.splitlines() == venv.env_method("render")
    venv.set_attr("divergence_note", 3)
    assert venv.get_attr("divergence_note", indices=[0]) == [3]
    with pytest.raises(ValueError, match="indices=None"):
        venv.set_attr("divergence_note", 4, indices=[0])
    with pytest.raises(AttributeError):
        venv.set_attr("task", SMALL)
    assert make_adapter(num_envs=1).env_method("render") == [None]
    venv.close()
    venv.close()


def test_task_distribution():
    small = TaskFactors(imbalance_ratios=(20.0,), widths=(16, 32), minibatches_per_step=(1,),
                        horizons=(2,), seed_range=(0, 1000))
    held_out = dataclasses.replace(small, seed_range=(1000, 2000))
    dist = TaskDistribution(train=(small,), held_out_id=(held_out,),
                            held_out_ood=(dataclasses.replace(held_out, widths=(24,)),))
    venv = LossTuningSB3VecEnv(num_envs=N, tasks=dist)
    venv.seed(0)
    venv.reset()  # raises today: "member 1 has width=16 but the population uses width=32"
    for _ in range(2 * 2):
        _, _, dones, _ = venv.step(np.zeros((N, 2), dtype=np.float32))
        assert all(all(getattr(t, f) == getattr(venv.tasks[0], f) for f in SHARED_FIELDS)
                   for t in venv.tasks)
    assert dones.all()


# ------------------------------------------------------------------------------------ wrappers
def test_vec_monitor_reports_episode_returns():
    venv = VecMonitor(make_adapter())
    venv.seed(9)
    venv.reset()
    rng = np.random.default_rng(3)
    returns = np.zeros(N, dtype=np.float32)
    lengths = np.zeros(N, dtype=int)
    episodes = 0
    for _ in range(2 * SMALL.horizon):
        _, rewards, dones, infos = venv.step(random_actions(rng))
        returns += rewards
        lengths += 1
        for i in np.flatnonzero(dones):
            assert infos[i]["episode"]["r"] == pytest.approx(float(returns[i]), abs=1e-5)
            assert infos[i]["episode"]["l"] == lengths[i] == SMALL.horizon
            returns[i], lengths[i] = 0.0, 0
            episodes += 1
        for i in np.flatnonzero(~dones):
            assert "episode" not in infos[i]
    assert episodes == 2 * N


def test_vec_normalize():
    venv = VecNormalize(make_adapter(), norm_obs=True, norm_reward=True)
    obs = venv.reset()
    assert obs.shape == (N, venv.observation_space.shape[0])
    rng = np.random.default_rng(4)
    for _ in range(SMALL.horizon):
        obs, rewards, dones, infos = venv.step(random_actions(rng))
        assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rewards))
    assert dones.all()
    raw_terminal = venv.unnormalize_obs(infos[0]["terminal_observation"])
    assert raw_terminal[0] == pytest.approx(1.0, abs=1e-4)  # normalised, then undone


# -------------------------------------------------------------------------------------- agents
def test_ppo_learns_and_predicts():
    venv = make_adapter()
    venv.seed(0)
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=128, n_epochs=2, seed=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    model.learn(512)
    assert model.num_timesteps == 512
    actions, _ = model.predict(venv.reset(), deterministic=True)
    assert actions.shape == (N, 2) and np.all(np.abs(actions) <= 1.0)


def test_sac_learns_and_predicts():
    venv = make_adapter()
    venv.seed(0)
    model = SAC("MlpPolicy", venv, learning_starts=64, batch_size=64, buffer_size=1024,
                train_freq=1, gradient_steps=1, seed=0, policy_kwargs={"net_arch": [32, 32]},
                device="cpu")
    model.learn(512)
    assert model.num_timesteps == 512
    actions, _ = model.predict(venv.reset(), deterministic=True)
    assert actions.shape == (N, 2) and np.all(np.abs(actions) <= 1.0)


def test_recurrent_ppo_learns():
    venv = make_adapter()
    venv.seed(0)
    model = RecurrentPPO("MlpLstmPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0,
                         policy_kwargs={"lstm_hidden_size": 16, "net_arch": [32]}, device="cpu")
    model.learn(256)
    assert model.num_timesteps == 256
    obs = venv.reset()
    actions, state = model.predict(obs, episode_start=np.ones(N, dtype=bool), deterministic=True)
    assert actions.shape == (N, 2) and state is not None


# ---------------------------------------------------------------------------------- processes
def test_subproc_vec_env_matches_dummy():
    fns = [single_env_fn(1, tasks=SMALL) for _ in range(2)]
    sub = SubprocVecEnv(fns, start_method="forkserver")
    dummy = DummyVecEnv([single_env_fn(None, tasks=SMALL) for _ in range(2)])
    try:
        sub.seed(11)
        dummy.seed(11)
        np.testing.assert_array_equal(sub.reset(), dummy.reset())
        assert list(sub.reset_infos) == dummy.reset_infos
        rng = np.random.default_rng(5)
        ends = 0
        for _ in range(SMALL.horizon + 1):
            actions = random_actions(rng, 2)
            s_obs, s_rew, s_done, s_infos = sub.step(actions)
            d_obs, d_rew, d_done, d_infos = dummy.step(actions)
            np.testing.assert_array_equal(s_obs, d_obs)
            np.testing.assert_array_equal(s_rew, d_rew)
            np.testing.assert_array_equal(s_done, d_done)
            for s_info, d_info in zip(s_infos, d_infos):
                assert set(s_info) == set(d_info)
                assert s_info["val_metric"] == d_info["val_metric"]
                if "terminal_observation" in s_info:
                    np.testing.assert_array_equal(s_info["terminal_observation"],
                                                  d_info["terminal_observation"])
                    assert s_info["test"] == d_info["test"]
            ends += int(s_done.sum())
            assert list(sub.reset_infos) == dummy.reset_infos
        assert ends == 2  # the autoreset after the episode's end was compared too
        assert sub.get_attr("render_mode") == [None, None]
    finally:
        sub.close()
        dummy.close()


def test_unbatch_infos():
    infos = {"a": np.array([1.0, 0.0, 3.0]), "_a": np.array([True, False, True]),
             "d": {"x": np.array([1, 2, 3]), "_x": np.array([False, True, True])},
             "_d": np.array([False, True, True])}
    out = unbatch_infos(infos, 3)
    assert out == [{"a": 1.0}, {"d": {"x": 2}}, {"a": 3.0, "d": {"x": 3}}]
    assert type(out[0]["a"]) is float and type(out[1]["d"]["x"]) is int


# ------------------------------------------------------------------------------- one-liners
@pytest.fixture
def small_registration(monkeypatch):
    """LossTuning-v0's registration with the small task, so the one-liners run in seconds."""
    monkeypatch.setitem(gym.spec("LossTuning-v0").kwargs, "tasks", SMALL)


def test_sb3_one_liners_on_the_registered_id(small_registration):
    # Both crashed: SB3 makes the env with render_mode="rgb_array".
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    model = PPO("MlpPolicy", "LossTuning-v0", n_steps=8, batch_size=8, seed=0, device="cpu")
    model.learn(16)
    assert model.num_timesteps == 16
    frame = model.get_env().render()
    assert frame.dtype == np.uint8 and frame.ndim == 3
    venv = sb3_make_vec_env("LossTuning-v0", n_envs=2, seed=0)
    obs = venv.reset()
    obs, rewards, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert obs.shape == (2, venv.observation_space.shape[0]) and len(infos) == 2
    assert all(image.shape == (96, 128, 3) for image in venv.get_images())


def test_agents_make_vec_env_is_the_batched_adapter(tmp_path):
    from agents import make_vec_env
    from agents.vec_env import EPISODE_KEYWORDS

    venv = make_vec_env(N, seed=3, monitor_dir=str(tmp_path), tasks=SMALL,
                        reward_baseline="paired", render_mode="rgb_array")
    assert isinstance(venv.unwrapped, LossTuningSB3VecEnv) and venv.num_envs == N
    reference = make_adapter()
    reference.seed(3)
    np.testing.assert_array_equal(venv.reset(), reference.reset())
    for _ in range(SMALL.horizon):
        _, _, dones, infos = venv.step(np.zeros((N, 2), dtype=np.float32))
    assert dones.all()
    assert {"episode", *EPISODE_KEYWORDS} <= set(infos[0])
    assert infos[0]["task_seed"] == reference.tasks[0].seed
    assert 0 <= infos[0]["twin_test_balanced_accuracy"] <= 1
    header = (tmp_path / "monitor.csv").read_text().splitlines()[1].split(",")
    assert header == ["r", "l", "t", *EPISODE_KEYWORDS]
    images = venv.get_images()
    assert len(images) == N and images[0].shape == (96, 128, 3)
    PPO("MlpPolicy", venv, n_steps=8, batch_size=32, seed=0, device="cpu").learn(32)
    venv.close()


def test_docstring_examples_run():
    import doctest

    import agents.vec_env

    result = doctest.testmod(agents.vec_env, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_rl_zoo_vec_env_wrapper_trains_one_batched_population(tmp_path):
    # What rl_zoo3.train does with `vec_env_wrapper: agents.vec_env.Batched` in its YAML.
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    from agents.vec_env import Batched

    singles = sb3_make_vec_env("LossTuning-v0", n_envs=N, seed=7, monitor_dir=str(tmp_path),
                               env_kwargs={"tasks": SMALL.to_dict(), "metric": "macro_f1"})
    venv = Batched(singles)
    adapter = venv.unwrapped
    assert isinstance(adapter, LossTuningSB3VecEnv) and adapter.num_envs == N
    assert adapter.vector_env.config.metric == "macro_f1"
    reference = make_adapter(metric="macro_f1")
    reference.seed(7)
    np.testing.assert_array_equal(venv.reset(), reference.reset())
    for _ in range(SMALL.horizon):
        venv.step(np.zeros((N, 2), dtype=np.float32))
    venv.close()
    rows = (tmp_path / "monitor.csv").read_text().splitlines()
    assert len(rows) == 2 + N


def test_rl_zoo3_train_on_the_batched_adapter(tmp_path):
    pytest.importorskip("rl_zoo3")
    import subprocess
    import sys

    conf = tmp_path / "ppo.yml"
    conf.write_text(f"""LossTuning-v0:
  n_envs: 4
  n_timesteps: 64
  policy: MlpPolicy
  normalize: {{norm_obs: true, norm_reward: false}}
  vec_env_wrapper: agents.vec_env.Batched
  env_kwargs: {{reward_baseline: paired, tasks: {json.dumps(SMALL.to_dict())}}}
  n_steps: 8
  batch_size: 32
""")
    subprocess.run([sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env",
                    "LossTuning-v0", "--gym-packages", "lossgym", "--conf-file", str(conf),
                    "--seed", "0", "-f", str(tmp_path / "logs"), "--eval-freq", "-1"],
                   check=True, capture_output=True)
    run = tmp_path / "logs" / "ppo" / "LossTuning-v0_1"
    assert (run / "LossTuning-v0.zip").exists()
    assert len((run / "monitor.csv").read_text().splitlines()) == 2 + 64 // SMALL.horizon
