import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import lossgym
from lossgym import TaskSpec
from lossgym.envs import LossTuningEnv, LossTuningVectorEnv

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=3, horizon=4)
LOSSGYM_IDS = [env_id for env_id, spec in gym.registry.items()
               if str(spec.entry_point).startswith("lossgym")]


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        trace.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return np.array(trace), np.array(rewards), info


def test_registered_ids():
    assert LOSSGYM_IDS == ["LossTuning-v0"]
    spec = gym.spec("LossTuning-v0")
    assert spec.max_episode_steps is None  # episodes end at their own task's horizon
    assert spec.vector_entry_point is not None


def test_an_episode_longer_than_the_default_horizon_runs_to_its_end():
    # With max_episode_steps=20 in the registration, TimeLimit cut this task at step 20,
    # truncated and without its info["test"].
    task = SMALL.replace(horizon=25, minibatches_per_step=1)
    env = gym.make("LossTuning-v0", tasks=task)
    env.reset(seed=0)
    for step in range(1, 26):
        _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert not truncated
        assert terminated == (step == 25)
    assert "test" in info and info["step"] == 25
    venv = gym.make_vec("LossTuning-v0", num_envs=2, tasks=task)
    venv.reset(seed=0)
    for _ in range(25):
        _, _, terminated, truncated, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
        assert not truncated.any()
    assert terminated.all() and "test" in infos["final_info"]


def test_env_spec_round_trips_through_json():
    from gymnasium.envs.registration import EnvSpec

    env = gym.make("LossTuning-v0", tasks=SMALL.to_dict(), metric="macro_f1")
    again = gym.make(EnvSpec.from_json(env.spec.to_json()))
    assert again.spec == env.spec
    assert again.unwrapped.config == env.unwrapped.config
    np.testing.assert_array_equal(env.reset(seed=3)[0], again.reset(seed=3)[0])


def test_make_with_module_prefix_imports_lossgym():
    code = ("import gymnasium as gym; "
            "env = gym.make('lossgym:LossTuning-v0', tasks=None); print(env.action_space)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Box(-1.0, 1.0, (2,), float32)" in out.stdout


@pytest.mark.parametrize("env_id", LOSSGYM_IDS)
def test_gymnasium_check_env_passes_with_warnings_as_errors(env_id):
    env = gym.make(env_id, tasks=SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("mode", ["absolute", "delta"])
def test_observations_stay_in_space_over_random_episodes(mode):
    env = gym.make("LossTuning-v0", tasks=SMALL, action_mode=mode,
                   action_params=("gamma", "alpha", "tau", "label_smoothing", "poly_epsilon",
                                  "gate"))
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        assert env.observation_space.contains(obs)
        done = False
        while not done:
            # Actions well outside [-1, 1] must be clipped, not rejected.
            action = (rng.uniform(-3, 3, env.action_space.shape)).astype(np.float32)
            obs, reward, term, trunc, info = env.step(action)
            assert env.observation_space.contains(obs), obs
            assert np.isfinite(reward)
            done = term or trunc


def test_same_seed_same_episode_on_the_default_distribution():
    actions = np.random.default_rng(1).uniform(-1, 1, (20, 2)).astype(np.float32)
    a = rollout(LossTuningEnv(), 3, actions)
    b = rollout(LossTuningEnv(), 3, actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = rollout(LossTuningEnv(), 4, actions)
    assert not np.array_equal(a[0][0], c[0][0]) or not np.array_equal(a[1], c[1])


def test_reward_sums_to_metric_change_and_final_info_has_test_metrics():
    env = LossTuningEnv(tasks=SMALL)
    obs, _ = env.reset(seed=0)
    start = obs[4]  # validation balanced accuracy
    total, done = 0.0, False
    while not done:
        obs, reward, done, _, info = env.step(np.array([0.2, 0.5], dtype=np.float32))
        total += reward
    assert total == pytest.approx(obs[4] - start, abs=1e-6)
    assert set(info["test"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "ece"}
    assert info["step"] == SMALL.horizon and not info["diverged"]


def test_reward_does_not_depend_on_eval_batch_size():
    actions = np.random.default_rng(2).uniform(-1, 1, (4, 2)).astype(np.float32)
    big = rollout(LossTuningEnv(tasks=SMALL, eval_chunk=4096), 0, actions)
    small = rollout(LossTuningEnv(tasks=SMALL, eval_chunk=7), 0, actions)
    np.testing.assert_allclose(big[1], small[1], atol=1e-6)
    np.testing.assert_allclose(big[0], small[0], atol=1e-5)


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0]), np.array([np.inf, 0.0]),
                                 np.zeros(3), np.zeros((1, 2, 1)), np.zeros((1, 2)), "ab", {},
                                 np.array([0.1, 0.2], dtype=object), [[0.1], [0.2, 0.3]],
                                 np.array([0.5 + 1j, 0.0])])
def test_bad_actions_raise_and_leave_the_state_alone(bad):
    env = LossTuningEnv(tasks=SMALL)
    ref = LossTuningEnv(tasks=SMALL)
    env.reset(seed=5)
    ref.reset(seed=5)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)
    good = np.array([0.1, -0.3], dtype=np.float32)
    o1, r1, *_ = env.step(good)
    o2, r2, *_ = ref.step(good)
    np.testing.assert_array_equal(o1, o2)
    assert r1 == r2


def test_action_mapping_clips_and_delta_is_bounded():
    env = LossTuningEnv(tasks=SMALL, action_mode="delta", max_step=0.1)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0, 1.0], dtype=np.float32))
    assert info["params"] == pytest.approx({"gamma": 0.5, "alpha": 0.1})
    _, _, _, _, info = env.step(np.array([7.0, -9.0], dtype=np.float32))  # clipped to ±1
    assert info["params"] == pytest.approx({"gamma": 1.0, "alpha": 0.0})
    absolute = LossTuningEnv(tasks=SMALL)
    absolute.reset(seed=0)
    _, _, _, _, info = absolute.step(np.array([0.0, 3.0], dtype=np.float32))
    assert info["params"] == pytest.approx({"gamma": 2.5, "alpha": 1.0})


def test_vector_member_matches_single_env():
    n, seed = 3, 10
    tasks = [SMALL.replace(seed=100 + i, imbalance_ratio=r) for i, r in enumerate([20, 5, 50])]
    actions = np.random.default_rng(3).uniform(-1, 1, (SMALL.horizon, n, 2)).astype(np.float32)
    venv = LossTuningVectorEnv(num_envs=n, tasks=SMALL)
    obs, _ = venv.reset(seed=seed, options={"task": tasks})
    trace, rewards = [obs], []
    for k in range(SMALL.horizon):
        obs, r, term, trunc, infos = venv.step(actions[k])
        trace.append(np.where(term[:, None], np.stack(
            [infos["final_obs"][i] if term[i] else obs[i] for i in range(n)]), obs))
        rewards.append(r)
    assert term.all() and infos["_final_obs"].all()
    for i in range(n):
        env = LossTuningEnv(tasks=SMALL)
        o, _ = env.reset(seed=seed + i, options={"task": tasks[i]})
        single_obs, single_r = [o], []
        for k in range(SMALL.horizon):
            o, r, *_ = env.step(actions[k, i])
            single_obs.append(o)
            single_r.append(r)
        np.testing.assert_allclose(np.array(trace)[:, i], np.array(single_obs), atol=1e-5)
        np.testing.assert_allclose(np.array(rewards)[:, i], single_r, atol=1e-5)


def test_vector_autoreset_and_partial_reset_leave_others_alone():
    venv = gym.make_vec("LossTuning-v0", num_envs=2, tasks=SMALL)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=0)
    act = np.zeros((2, 2), dtype=np.float32)
    obs, *_ = venv.step(act)
    twin = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    twin.reset(seed=0)
    twin.step(act)
    obs2, _ = venv.reset(options={"reset_mask": np.array([False, True])})
    np.testing.assert_array_equal(obs2[0], obs[0])
    assert obs2[1][0] == 0.0  # progress restarts
    a, ra, *_ = venv.step(act)
    b, rb, *_ = twin.step(act)
    np.testing.assert_array_equal(a[0], b[0])
    assert ra[0] == rb[0]


def test_divergence_ends_the_episode_with_the_penalty():
    env = LossTuningEnv(tasks=SMALL, divergence_penalty=2.0)
    env.reset(seed=0)
    batch = env.batch
    original = batch._criterion
    batch._criterion = lambda logits, y, ctx: original(logits, y, ctx) * float("nan")
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and not truncated and info["diverged"] and reward == -2.0
    assert env.observation_space.contains(obs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.float32))


def _diverge_member(batch, member):
    original = batch._criterion

    def criterion(logits, y, ctx):
        loss = original(logits, y, ctx).clone()
        loss[member] = float("nan")
        return loss

    batch._criterion = criterion


def test_divergence_is_observed_at_the_upper_bounds_not_as_a_perfect_fit():
    names = list(LossTuningEnv(tasks=SMALL).batch.features.names)
    loss_col, grad_col = names.index("log_train_loss"), names.index("log_grad_norm")
    env = LossTuningEnv(tasks=SMALL)
    high = env.observation_space.high
    env.reset(seed=0)
    _diverge_member(env.batch, 0)
    obs, _, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and info["diverged"]
    assert obs[loss_col] == high[loss_col] and obs[grad_col] == high[grad_col]
    assert np.isnan(info["train_loss"])  # no finite step before it
    env = LossTuningEnv(tasks=SMALL)
    env.reset(seed=0)
    _, _, _, _, first = env.step(np.zeros(2, dtype=np.float32))
    _diverge_member(env.batch, 0)
    obs, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["diverged"] and info["train_loss"] == first["train_loss"] > 0
    # The vector env's final_obs and final_info of the diverged member say the same.
    venv = LossTuningVectorEnv(num_envs=2, tasks=SMALL, reward_baseline="paired")
    venv.reset(seed=0)
    _diverge_member(venv.batch, 1)
    obs, _, terminated, _, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert terminated.tolist() == [False, True]
    final = infos["final_obs"][1]
    assert final[loss_col] == high[loss_col] and final[grad_col] == high[grad_col]
    assert np.isnan(infos["final_info"]["train_loss"][1])
    assert infos["final_info"]["diverged"].tolist() == [False, True]
    assert obs[0][loss_col] < high[loss_col]


def test_rgb_array_frames_show_the_episode_so_far():
    env = gym.make("LossTuning-v0", tasks=SMALL, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (96, 128, 3) and first.dtype == np.uint8
    frames = [first]
    for _ in range(SMALL.horizon):
        env.step(np.array([0.5, -0.5], dtype=np.float32))
        frames.append(env.render())
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    venv = gym.make_vec("LossTuning-v0", num_envs=2, tasks=SMALL, render_mode="rgb_array")
    venv.reset(seed=0)
    venv.step(np.zeros((2, 2), dtype=np.float32))
    images = venv.render()
    assert len(images) == 2 and all(i.shape == (96, 128, 3) for i in images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("LossTuning-v0", tasks=SMALL, render_mode="rgb_array").unwrapped)


def test_next_step_autoreset_and_gymnasium_vector_wrappers():
    from gymnasium.vector import AutoresetMode
    from gymnasium.wrappers.vector import NormalizeObservation

    with pytest.raises((ValueError, AssertionError)):  # AssertionError in gymnasium 1.1
        NormalizeObservation(gym.make_vec("LossTuning-v0", num_envs=2, tasks=SMALL))
    venv = gym.make_vec("LossTuning-v0", num_envs=2, tasks=SMALL, autoreset_mode="NextStep")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    same = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    obs, _ = venv.reset(seed=4)
    np.testing.assert_array_equal(obs, same.reset(seed=4)[0])
    act = np.full((2, 2), 0.3, dtype=np.float32)
    for _ in range(SMALL.horizon - 1):
        np.testing.assert_array_equal(venv.step(act)[0], same.step(act)[0])
    obs, reward, terminated, truncated, infos = venv.step(act)
    s_obs, s_reward, *_, s_infos = same.step(act)
    assert terminated.all() and "test" in infos and "final_obs" not in infos
    np.testing.assert_array_equal(obs, np.stack(s_infos["final_obs"]))  # the last observation
    np.testing.assert_array_equal(reward, s_reward)
    obs, reward, terminated, truncated, infos = venv.step(np.full((2, 2), 9.0, np.float32))
    np.testing.assert_array_equal(obs, s_obs)  # the next episode's first observation
    assert reward.tolist() == [0.0, 0.0] and not terminated.any() and not truncated.any()
    assert infos["task"]["seed"].tolist() == s_infos["task"]["seed"].tolist()
    np.testing.assert_array_equal(venv.step(act)[0], same.step(act)[0])
    wrapped = NormalizeObservation(gym.make_vec("LossTuning-v0", num_envs=2, tasks=SMALL,
                                                autoreset_mode=AutoresetMode.NEXT_STEP))
    wrapped.reset(seed=0)
    for _ in range(SMALL.horizon + 2):
        obs, *_ = wrapped.step(np.zeros((2, 2), dtype=np.float32))
        assert np.all(np.isfinite(obs))


def test_paired_baseline_gives_zero_reward_for_cross_entropy():
    env = LossTuningEnv(tasks=SMALL, reward_baseline="paired")
    env.reset(seed=0)
    ce_action = np.array([-1.0, -1.0], dtype=np.float32)  # gamma = 0, alpha = 0
    done = False
    while not done:
        _, reward, done, _, info = env.step(ce_action)
        assert reward == pytest.approx(0.0, abs=1e-7)
    assert info["test"]["balanced_accuracy"] == pytest.approx(
        info["test"]["reference_balanced_accuracy"], abs=1e-6)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1", "accuracy", "neg_ece",
                                    "soft_balanced_accuracy"])
def test_metrics_and_bad_arguments(metric):
    env = LossTuningEnv(tasks=SMALL, metric=metric)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert np.isfinite(reward)
    with pytest.raises(ValueError, match="'f2'"):
        LossTuningEnv(metric="f2")
    with pytest.raises(ValueError, match="'mean'"):
        LossTuningEnv(reward_baseline="mean")
    with pytest.raises(ValueError, match="'beta'"):
        LossTuningEnv(action_params=("gamma", "beta"))
    with pytest.raises(ValueError, match="'relative'"):
        LossTuningEnv(action_mode="relative")
    with pytest.raises(ValueError, match="reset options"):
        env.reset(options={"tsak": SMALL})


CUDA_MISSING = [] if torch.cuda.is_available() else [("device", "cuda")]


@pytest.mark.parametrize(("name", "value"), [
    ("action_params", 5), ("action_params", ["gamma", 3]), ("max_step", "0.1"),
    ("max_step", True), ("max_step", 0.0), ("max_step", float("nan")),
    ("divergence_penalty", "1"), ("divergence_penalty", float("inf")), ("eval_chunk", 2.5),
    ("eval_chunk", True), ("eval_chunk", 0), ("split", "test"), ("render_mode", "video"),
    ("device", "tpu"), ("device", 3), ("device", "meta"), ("tasks", 5), *CUDA_MISSING,
])
# gym.make warns of an unknown render mode before the env refuses it.
@pytest.mark.filterwarnings("ignore:.*render_mode='video':UserWarning")
def test_bad_constructor_arguments_name_the_argument_and_the_value(name, value):
    for make in (lambda: LossTuningEnv(**{name: value}),
                 lambda: LossTuningVectorEnv(num_envs=2, **{name: value}),
                 lambda: gym.make("LossTuning-v0", **{name: value})):
        with pytest.raises(ValueError) as caught:
            make()
        assert f"{name}={value!r}" in str(caught.value)
    if name == "device":
        assert "CUDA" in str(caught.value) or "'cpu'" in str(caught.value)


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"num_envs": 0}, "num_envs=0"), ({"num_envs": 2.0}, "num_envs=2.0"),
    ({"num_envs": 2, "max_episode_steps": 0}, "max_episode_steps=0"),
    ({"num_envs": 2, "autoreset_mode": "sometimes"}, "autoreset_mode='sometimes'"),
])
def test_bad_vector_arguments(kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        LossTuningVectorEnv(tasks=SMALL, **kwargs)


def test_one_configuration_for_both_envs():
    from lossgym.envs import LossTuningConfig

    config = LossTuningConfig(tasks=SMALL, action_params="gamma,tau", metric="macro_f1")
    assert config.action_params == ("gamma", "tau")
    single = LossTuningEnv(config=config)
    vector = LossTuningVectorEnv(num_envs=2, config=config)
    assert single.config == vector.config == config
    assert single.action_space.shape == vector.single_action_space.shape == (2,)
    assert LossTuningEnv(config=config, metric="accuracy").config.metric == "accuracy"
    assert LossTuningEnv(tasks=SMALL, action_params=["gamma", "tau"], metric="macro_f1"
                         ).config == config
    assert gym.make("LossTuning-v0", tasks=SMALL, eval_chunk=np.int64(7)
                    ).unwrapped.config.eval_chunk == 7
    with pytest.raises(TypeError, match="'metrik'"):
        LossTuningEnv(metrik="accuracy")
    with pytest.raises(ValueError, match="config="):
        LossTuningEnv(config={"metric": "accuracy"})


def test_numpy_integer_seeds_are_seeds():
    env, ref = LossTuningEnv(tasks=SMALL), LossTuningEnv(tasks=SMALL)
    np.testing.assert_array_equal(env.reset(seed=np.int64(3))[0], ref.reset(seed=3)[0])
    assert env.task == ref.task
    venv, vref = (LossTuningVectorEnv(num_envs=2, tasks=SMALL) for _ in range(2))
    np.testing.assert_array_equal(venv.reset(seed=np.int64(3))[0], vref.reset(seed=3)[0])
    np.testing.assert_array_equal(venv.reset(seed=[np.int32(5), None])[0][0],
                                  vref.reset(seed=[5, None])[0][0])


@pytest.mark.parametrize("seed", [1.5, -5, "3", True, [1, -1], [1, -1, 2], [1.0, 2]])
def test_bad_seeds_raise_before_anything_is_reseeded(seed):
    venv = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    twin = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    venv.reset(seed=0)
    twin.reset(seed=0)
    with pytest.raises(ValueError, match="seed="):
        venv.reset(seed=seed)
    obs, infos = venv.reset()
    obs2, infos2 = twin.reset()  # both continue the generators of seed 0
    assert infos["task"]["seed"].tolist() == infos2["task"]["seed"].tolist()
    np.testing.assert_array_equal(obs, obs2)
    single = LossTuningEnv(tasks=SMALL)
    if not isinstance(seed, list):
        with pytest.raises(ValueError, match="seed="):
            single.reset(seed=seed)


def test_a_rejected_reset_does_not_reseed():
    env = LossTuningEnv(tasks=SMALL)
    env.reset(seed=1)
    state = env.np_random.bit_generator.state
    for options in ({"bogus": 1}, {"task": 5}, {"task": "no_such_dataset"}):
        with pytest.raises(ValueError):
            env.reset(seed=7, options=options)
        assert env.np_random.bit_generator.state == state
    venv = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    venv.reset(seed=1)
    states = [rng.bit_generator.state for rng in venv._rngs]
    with pytest.raises(ValueError):
        venv.reset(seed=7, options={"task": [SMALL, 5]})
    assert [rng.bit_generator.state for rng in venv._rngs] == states


@pytest.mark.parametrize("mask", [[True], np.array([True, False, True]), [5, 7],
                                  np.array([1, 0]), "ab", np.array([False, False]), 1])
def test_bad_reset_masks_are_refused(mask):
    venv = LossTuningVectorEnv(num_envs=2, tasks=SMALL)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": mask})
    obs, _ = venv.reset(options={"reset_mask": [False, True]})  # a list of bools is fine
    assert obs.shape == (2, venv.single_observation_space.shape[0])


def test_reset_options_pin_the_task_and_render_is_one_line():
    env = LossTuningEnv(render_mode="ansi")
    _, info = env.reset(seed=0, options={"task": SMALL.replace(seed=9)})
    assert env.task == SMALL.replace(seed=9) and info["task"]["seed"] == 9
    _, info = env.reset(options={"task": SMALL.replace(seed=3).to_dict()})
    assert env.task.seed == 3
    env.step(np.zeros(2, dtype=np.float32))
    line = env.render()
    assert "\n" not in line and "step 1/4" in line


def test_randomness_is_owned_by_the_env():
    torch.manual_seed(0)
    np.random.seed(0)
    state_t, state_np = torch.get_rng_state(), np.random.get_state()[1].copy()
    env = LossTuningEnv(tasks=SMALL)
    env.reset(seed=1)
    env.step(np.zeros(2, dtype=np.float32))
    assert torch.equal(torch.get_rng_state(), state_t)
    np.testing.assert_array_equal(np.random.get_state()[1], state_np)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_env_runs_on_cuda():
    env = LossTuningEnv(tasks=SMALL, device="cuda")
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert env.observation_space.contains(obs)


def test_lossgym_does_not_import_agents():
    assert "agents" not in sys.modules or not any(
        m.startswith("lossgym") and "agents" in getattr(sys.modules[m], "__dict__", {})
        for m in list(sys.modules))
    assert lossgym.__version__


def test_soft_reward_is_the_change_of_the_populations_soft_balanced_accuracy():
    from lossgym.metrics import soft_balanced_accuracy

    env = LossTuningEnv(tasks=SMALL, metric="soft_balanced_accuracy", reward_baseline="none")
    env.reset(seed=0)
    batch = env.batch
    pop = batch.population
    before = soft_balanced_accuracy(pop.logits("val"), pop.targets("val"))[0].item()
    _, reward, _, _, info = env.step(np.array([0.2, 0.5], dtype=np.float32))
    after = soft_balanced_accuracy(pop.logits("val"), pop.targets("val"))[0].item()
    assert reward == pytest.approx(after - before, abs=1e-6)
    assert 0.0 < after < 1.0
