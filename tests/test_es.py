"""Tests for agents.es: the ES trainer end to end with a tiny budget, and its pieces."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from agents.es import (
    ESArgs,
    FrozenNormalizer,
    PopulationActor,
    _actor,
    centered_ranks,
    es_gradient,
    main,
    pair_tasks,
    run_generation,
    run_populations,
    split_members,
    train_es,
)
from agents.evaluate import agent_episodes, learning_curve
from agents.export import export_run
from agents.rollout import rollout_policy
from agents.train import AgentPolicy, build_model, load_hyperparams
from agents.vec_env import LossTuningSB3VecEnv
from lossgym import AdaptiveLoss, TaskSpec
from lossgym.envs.core import TaskSource
from lossgym.features import FeatureSpec

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=4)
GENERATIONS, PAIRS = 3, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("es") / "run"
    return train_es(ESArgs(run_dir=str(folder), generations=GENERATIONS, pairs=PAIRS,
                           progress=False), tasks=SMALL)


def _initial_model(seed: int = 0):
    hp = load_hyperparams("ppo")
    env = LossTuningSB3VecEnv(num_envs=1, action_params=hp["env_kwargs"]["action_params"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PPO's buffer does not fit one env
        return build_model("ppo", env, hp, seed, None)


def test_centered_ranks():
    ranks = centered_ranks([3.0, -1.0, 10.0, 0.5])
    np.testing.assert_allclose(ranks, [1 / 6, -0.5, 0.5, -1 / 6])
    assert ranks.mean() == pytest.approx(0.0)
    gen = np.random.default_rng(0)
    values = gen.normal(size=32)
    ranks = centered_ranks(values)
    assert ranks.min() == -0.5 and ranks.max() == 0.5 and ranks.mean() == pytest.approx(0.0)
    assert np.array_equal(np.argsort(ranks), np.argsort(values))
    # Invariant to monotone transformations of the returns.
    np.testing.assert_array_equal(centered_ranks(np.exp(values) * 100), ranks)


def test_es_gradient_ascends_a_quadratic():
    gen = np.random.default_rng(1)
    theta, target, sigma = np.zeros(20), gen.normal(size=20), 0.1
    eps = gen.standard_normal((200, 20))
    members = np.stack([theta + sigma * eps, theta - sigma * eps], 1).reshape(400, 20)
    returns = -np.sum((members - target) ** 2, axis=1)
    g = es_gradient(returns, torch.as_tensor(eps)).numpy()
    cosine = g @ target / np.linalg.norm(g) / np.linalg.norm(target)
    assert cosine > 0.8
    # Swapping the members of every pair reverses the direction exactly.
    swapped = returns.reshape(200, 2)[:, ::-1].reshape(-1)
    np.testing.assert_allclose(es_gradient(swapped, torch.as_tensor(eps)).numpy(), -g)


def test_antithetic_pairs_share_task_and_seed(one_thread):
    tasks = pair_tasks(TaskSource(SMALL, "train"), np.random.default_rng(0), 3)
    assert len(tasks) == 6
    for k in range(3):
        assert tasks[2 * k] == tasks[2 * k + 1]
    assert len({t.seed for t in tasks}) == 3
    # With equal parameters the two members of a pair are the same run: equal returns, while
    # different pairs (other seeds) differ.
    model = _initial_model()
    actor = PopulationActor(_actor(model.policy))
    # A policy far from the initial one (near-zero actions), so that the actions vary.
    theta = actor.theta + 0.5 * torch.randn(actor.theta.numel(),
                                            generator=torch.Generator().manual_seed(0))
    dim = FeatureSpec(("gamma", "alpha", "tau", "margin", "scale")).dim
    normalise = FrozenNormalizer(dim, 10.0, enabled=False)
    env_kwargs = {"reward_baseline": "paired", "action_params": "gamma,alpha,tau,margin,scale"}
    gen = run_generation(actor, theta.expand(6, -1).contiguous(), tasks, normalise, env_kwargs,
                         "cpu", seed=0)
    assert gen.tasks == tasks
    np.testing.assert_array_equal(gen.returns[0::2], gen.returns[1::2])
    assert len(set(gen.returns[0::2].tolist())) > 1
    assert np.all(gen.lengths == SMALL.horizon)
    assert gen.observations.shape == (6 * SMALL.horizon, dim)


def test_one_shared_twin_per_task_gives_the_env_twins_returns(one_thread):
    # Residual actions against the base twin: the population holds one zero-action member per
    # task instead of a twin per member, and every member's return is what the env's own twin
    # gives it (the same run of the base rule on the same task and seed).
    actor, thetas, tasks, normalise, env_kwargs = es_setup(4, per_task=2, seed=1)
    assert len(tasks) == 8 and len(set(tasks)) == 2
    assert tasks[0] == tasks[3] and tasks[4] == tasks[7] and tasks[0] != tasks[4]
    shared = run_generation(actor, thetas, tasks, normalise, env_kwargs, "cpu", seed=0)
    own = run_generation(actor, thetas, tasks, normalise, env_kwargs, "cpu", seed=0,
                         share_twins=False)
    assert shared.twins == 2 and own.twins == 8
    assert len(set(np.round(own.returns, 6).tolist())) > 2  # the members differ
    np.testing.assert_allclose(shared.returns, own.returns, atol=1e-5)
    np.testing.assert_array_equal(shared.lengths, own.lengths)
    np.testing.assert_allclose(shared.observations, own.observations, atol=1e-5)


def test_a_generation_draws_one_budget_for_all_its_pairs():
    from lossgym.tasks import TaskDistribution

    source = TaskSource(TaskDistribution.default(), "train")
    for seed in range(3):
        tasks = pair_tasks(source, np.random.default_rng(seed), 16)
        assert len({t.minibatches_per_step for t in tasks}) == 1
        assert len({t.seed for t in tasks}) == 16
        assert len({(t.imbalance_ratio, t.label_noise, t.weight_decay) for t in tasks}) > 1


def test_split_members_keeps_each_task_whole():
    a, b, c = (SMALL.replace(seed=s) for s in (1, 2, 3))
    tasks = [a] * 4 + [b] * 2 + [c] * 2
    assert split_members(tasks, 1) == [slice(0, 8)]
    assert split_members(tasks, 2) == [slice(0, 4), slice(4, 8)]
    assert split_members(tasks, 3) == [slice(0, 4), slice(4, 6), slice(6, 8)]
    assert split_members(tasks, 9) == split_members(tasks, 3)  # no more parts than tasks
    assert split_members([a] * 6, 2) == [slice(0, 6)]
    # Tasks bunched at the start: a cut must not take the last start a later cut needs.
    d = SMALL.replace(seed=4)
    assert split_members([a, b, c] + [d] * 9, 4) == [slice(0, 1), slice(1, 2), slice(2, 3),
                                                    slice(3, 12)]


def es_setup(pairs: int, per_task: int = 1, seed: int = 2):
    tasks = pair_tasks(TaskSource(SMALL, "train"), np.random.default_rng(seed), pairs, per_task)
    actor = PopulationActor(_actor(_initial_model().policy))
    generator = torch.Generator().manual_seed(seed)
    thetas = actor.theta + 0.5 * torch.randn(len(tasks), actor.theta.numel(),
                                             generator=generator)
    normalise = FrozenNormalizer(FeatureSpec(("gamma", "alpha", "tau", "margin", "scale")).dim,
                                 10.0, enabled=False)
    env_kwargs = {"reward_baseline": "base", "action_mode": "residual",
                  "base_rule": "logit_adjusted", "max_step": 0.5,
                  "action_params": "gamma,alpha,tau,margin,scale"}
    return actor, thetas, tasks, normalise, env_kwargs


def test_a_generation_split_into_populations_gives_the_same_returns(one_thread):
    actor, thetas, tasks, normalise, env_kwargs = es_setup(3)
    whole = run_generation(actor, thetas, tasks, normalise, env_kwargs, "cpu", seed=5)
    split = run_populations(actor, thetas, tasks, normalise, env_kwargs, "cpu", 5,
                            populations=2)
    assert split.tasks == whole.tasks and split.twins == whole.twins == 3
    np.testing.assert_allclose(split.returns, whole.returns, atol=1e-5)
    np.testing.assert_array_equal(split.lengths, whole.lengths)
    assert split.observations.shape == whole.observations.shape


def test_batched_actor_matches_sb3_predict():
    model = _initial_model(3)
    actor = PopulationActor(_actor(model.policy))
    dim = FeatureSpec(("gamma", "alpha", "tau", "margin", "scale")).dim
    obs = np.random.default_rng(0).normal(size=(7, dim)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    got = actor.act(actor.theta.expand(7, -1).contiguous(), obs)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Each member uses its own row of parameters.
    thetas = actor.theta.repeat(2, 1)
    thetas[1] += 1.0
    out = actor.act(thetas, obs[:2])
    np.testing.assert_allclose(out[0], expected[0], atol=1e-6)
    assert not np.allclose(out[1], expected[1])


def test_train_es_writes_a_run_that_loads_exports_and_evaluates(run, tmp_path):
    for name in ("config.json", "monitor.csv", "generations.csv", "policy.pt",
                 "policy.norm.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["algo"] == "es" and config["num_envs"] == 2 * PAIRS
    assert config["hyperparams"]["env_kwargs"]["reward_baseline"] == "paired"
    assert config["num_timesteps"] == GENERATIONS * 2 * PAIRS * SMALL.horizon
    state = torch.load(run / "policy.pt", weights_only=True)
    assert int(state["num_timesteps"]) == config["num_timesteps"]
    # monitor.csv as VecMonitor writes it: what agents.evaluate reads.
    assert agent_episodes(run) == GENERATIONS * 2 * PAIRS
    assert learning_curve(run, points=3).shape == (3, 2)
    rows = (run / "generations.csv").read_text().splitlines()
    assert len(rows) == 1 + GENERATIONS
    norm = json.loads((run / "policy.norm.json").read_text())
    # The last generation acted with the statistics of the ones before it.
    assert norm["count"] == pytest.approx((GENERATIONS - 1) * 2 * PAIRS * SMALL.horizon,
                                          abs=1e-3)

    # Only the actor moved: its parameters changed, the critic's did not.
    initial = _initial_model().policy.state_dict()
    trained = state["parameters"]["policy"]
    for name, value in trained.items():
        moved = not torch.equal(value, initial[name])
        is_actor = name.startswith(("mlp_extractor.policy_net", "action_net"))
        assert moved == is_actor, name

    # AgentPolicy reloads it and acts deterministically; so does the exported controller.
    agent = AgentPolicy(run)
    assert agent.algo == "es" and agent.norm is not None
    tasks = [SMALL.replace(seed=s) for s in range(2)]
    first = rollout_policy(agent, tasks, "agent")
    again = rollout_policy(AgentPolicy(run), tasks, "agent")
    np.testing.assert_array_equal(first[0].actions, again[0].actions)
    export = export_run(run, "controller", tmp_path / "export")
    counts = torch.tensor([300.0, 100.0, 15.0])
    params = []
    for _ in range(2):
        loss = AdaptiveLoss.load(export, class_counts=counts)
        logits, targets = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), \
            torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
        loss(logits, targets)
        loss.step(val_logits=logits, val_targets=targets, grad_norm=1.0, grad_norm_std=0.1)
        params.append(loss.history)
    assert params[0] == params[1] and len(params[0]) == 2
    assert json.loads((export / "manifest.json").read_text())["controller"]["algorithm"] == "es"

    # One task: its context (train size, classes, learning rate...) never varied, so those
    # features are held; the run, the agent and the export all feed them as 0, at any value.
    held = np.array(norm["held"])
    dim = FeatureSpec(("gamma", "alpha", "tau", "margin", "scale")).dim
    context = slice(dim - 8, dim)
    assert held[context].any() and not held[:4].any()
    obs = np.asarray(norm["mean"], dtype=np.float32)[None] + 3.0
    ours = agent.normalise(obs)
    assert np.all(ours[0, held] == 0.0) and np.all(ours[0, ~held] != 0.0)
    controller = AdaptiveLoss.load(export, class_counts=counts).controller
    np.testing.assert_allclose(controller.normalise(torch.as_tensor(obs)).numpy(), ours,
                               atol=1e-6)


def test_a_feature_that_never_varied_is_held_at_zero():
    norm = FrozenNormalizer(3, 10.0, enabled=True)
    norm.update(np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0]]))
    norm.freeze()
    out = norm(np.array([[1.0, 9.0, 2.0], [1.0, 5.0, 2.0]]))
    assert out[0, 1] == 0.0 and out[1, 1] == 0.0  # unseen 9 as seen 5: held
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-3)  # the mean of a varying feature
    assert norm.state()["held"] == [False, True, False]
    # VecNormalize's rule would have fed the unseen value at the clip.
    assert abs((9.0 - norm.mean[1]) / np.sqrt(norm.var[1] + norm.epsilon)) > 10.0


def test_main_parses_arguments(tmp_path, monkeypatch, capsys, one_thread):
    import agents.es as es_mod

    seen = {}
    monkeypatch.setattr(es_mod, "train_es", lambda args: seen.setdefault("args", args))
    assert main(["--run-dir", str(tmp_path / "x"), "--pairs", "2", "--generations", "1",
                 "--env-kwargs", '{"metric": "macro_f1"}', "--no-normalize", "--quiet",
                 "--tasks-per-pair", "3", "--overrides",
                 '{"policy_kwargs": {"net_arch": []}}']) == 0
    args = seen["args"]
    assert args.overrides == {"policy_kwargs": {"net_arch": []}}
    assert args.pairs == 2 and args.generations == 1 and args.normalize is False
    assert args.tasks_per_pair == 3
    assert args.env_kwargs == {"metric": "macro_f1"} and not args.progress
    with pytest.raises(ValueError, match="pairs"):
        train_es(ESArgs(run_dir=str(tmp_path / "y"), pairs=0))
    for flag in ("--overrides", "--env-kwargs"):
        with pytest.raises(SystemExit):
            main(["--run-dir", str(tmp_path / "z"), flag, "[16]"])
        assert f"{flag} must be a JSON object, got [16]" in capsys.readouterr().err


def test_agents_train_algo_es_runs_the_es_trainer(tmp_path):
    from agents import train as train_mod

    task = SMALL.replace(horizon=2).to_dict()
    rc = train_mod.main(["--algo", "es", "--run-dir", str(tmp_path / "es"), "--generations", "1",
                         "--pairs", "1", "--quiet", "--env-kwargs",
                         json.dumps({"tasks": task, "reward_baseline": "base",
                                     "action_mode": "residual"})])
    assert rc == 0
    config = json.loads((tmp_path / "es" / "config.json").read_text())
    assert config["args"]["algo"] == "es"
    assert config["hyperparams"]["env_kwargs"]["context_features"] is True
    assert AgentPolicy(tmp_path / "es").base_rule is not None  # residual around the default


def test_the_run_names_its_distribution_and_the_evaluation_reads_it(run, tmp_path):
    from agents.evaluate import run_distribution
    from lossgym.tasks import TaskDistribution

    assert run_distribution(run) == TaskDistribution.default()
    wide = tmp_path / "wide"
    wide.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["args"]["distribution"] = "wide"
    (wide / "config.json").write_text(json.dumps(config))
    assert run_distribution(wide) == TaskDistribution.wide()
    with pytest.raises(ValueError, match="distribution='nope' is not known"):
        train_es(ESArgs(run_dir=str(tmp_path / "bad"), distribution="nope"))
    assert not (tmp_path / "bad").exists()


def test_pair_means_average_each_pairs_tasks_sign_by_sign():
    from agents.es import pair_means

    # 2 pairs x 2 tasks: (task round, pair, sign) = (0,0,+) (0,0,-) (0,1,+) (0,1,-) (1,0,+) ...
    returns = np.array([1.0, 2.0, 10.0, 0.0, 3.0, 6.0, 20.0, 4.0])
    np.testing.assert_array_equal(pair_means(returns, 2, 2), [2.0, 4.0, 15.0, 2.0])
    np.testing.assert_array_equal(pair_means(returns, 4, 1), returns)


def test_each_pair_plays_several_tasks_and_its_returns_are_averaged(tmp_path, one_thread,
                                                                   monkeypatch):
    import agents.es as es_mod

    seen = []
    real = es_mod.es_gradient
    monkeypatch.setattr(es_mod, "es_gradient",
                        lambda returns, eps: seen.append((returns, eps)) or real(returns, eps))
    run = train_es(ESArgs(run_dir=str(tmp_path / "m"), generations=1, pairs=2,
                          tasks_per_pair=2, progress=False), tasks=SMALL)
    config = json.loads((run / "config.json").read_text())
    assert config["num_envs"] == 8 and config["episodes"] == 8 and agent_episodes(run) == 8
    returns, eps = seen[0]
    assert returns.shape == (4,) and eps.shape[0] == 2  # one mean per pair member
    monitor = [float(line.split(",")[0]) for line in
               (run / "monitor.csv").read_text().splitlines()[2:]]
    np.testing.assert_allclose(returns, np.asarray(monitor).reshape(2, 2, 2).mean(axis=0)
                               .reshape(-1), atol=1e-6)  # (task round, pair, sign)
    with pytest.raises(ValueError, match="tasks_per_pair=0"):
        train_es(ESArgs(run_dir=str(tmp_path / "z"), tasks_per_pair=0))


def test_pairs_that_share_tasks_are_different_pairs_never_one_pairs_own_tasks(tmp_path,
                                                                              one_thread,
                                                                              monkeypatch):
    """With --pairs-per-task 2 --tasks-per-pair 2, the 2 tasks of one pair must differ (else
    its mean is one run counted twice), and the members of one pair keep one direction."""
    import agents.es as es_mod

    seen = {}
    real = es_mod.run_populations

    def spy(actor, thetas, tasks, *args, **kwargs):
        seen.setdefault("thetas", thetas.clone())
        seen.setdefault("tasks", list(tasks))
        return real(actor, thetas, tasks, *args, **kwargs)

    monkeypatch.setattr(es_mod, "run_populations", spy)
    train_es(ESArgs(run_dir=str(tmp_path / "k"), generations=1, pairs=2, pairs_per_task=2,
                    tasks_per_pair=2, progress=False), tasks=SMALL)
    thetas, tasks = seen["thetas"], seen["tasks"]
    assert len(tasks) == 8
    for k in range(2):
        plus = [2 * k + 4 * j for j in range(2)]  # pair k's θ + σ ε_k in each task round
        torch.testing.assert_close(thetas[plus[0]], thetas[plus[1]])
        torch.testing.assert_close(thetas[plus[0] + 1], thetas[plus[1] + 1])
        assert tasks[plus[0]] != tasks[plus[1]]  # its two tasks are two runs
    assert tasks[0] == tasks[2] and tasks[4] == tasks[6]  # pairs 0 and 1 share, per round


def _untimed(path):
    """generations.csv without its wall-clock columns."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith("seconds")]
    assert len(keep) >= 10
    return [[row[i] for i in keep] for row in rows]


def test_the_same_seed_trains_the_same_policy_and_another_seed_does_not(run, tmp_path):
    """The CPU promise: ES training with one seed is bit-reproducible (weights, the
    generations log and the normaliser), and the seed is what decides it."""
    again = train_es(ESArgs(run_dir=str(tmp_path / "again"), generations=GENERATIONS,
                            pairs=PAIRS, progress=False), tasks=SMALL)
    first = torch.load(run / "policy.pt", weights_only=True)["parameters"]["policy"]
    second = torch.load(again / "policy.pt", weights_only=True)["parameters"]["policy"]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert _untimed(run / "generations.csv") == _untimed(again / "generations.csv")
    assert json.loads((run / "policy.norm.json").read_text()) == \
        json.loads((again / "policy.norm.json").read_text())

    other = train_es(ESArgs(run_dir=str(tmp_path / "other"), generations=1, pairs=PAIRS,
                            seed=1, progress=False), tasks=SMALL)
    moved = torch.load(other / "policy.pt", weights_only=True)["parameters"]["policy"]
    assert any(not torch.equal(moved[n], first[n]) for n in first
               if n.startswith("action_net"))


def test_a_linear_policy_trains_and_its_export_acts_as_the_agent(tmp_path, one_thread):
    run = train_es(ESArgs(run_dir=str(tmp_path / "linear"), generations=2, pairs=2,
                          progress=False, overrides={"policy_kwargs": {"net_arch": []}}),
                   tasks=SMALL)
    agent = AgentPolicy(run)
    export = export_run(run, "controller", tmp_path / "export")
    layers = json.loads((export / "manifest.json").read_text())["controller"]["layers"]
    assert [layer["kind"] for layer in layers] == ["linear"]
    controller = AdaptiveLoss.load(export, class_counts=torch.tensor([300.0, 100.0, 15.0])
                                   ).controller
    mean = np.asarray(json.loads((run / "policy.norm.json").read_text())["mean"], np.float32)
    obs = mean[None] + np.random.default_rng(0).normal(size=(5, mean.size)).astype(np.float32)
    agent.reset(5)
    expected = agent.act(obs)
    got, _ = controller(torch.as_tensor(obs))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert np.ptp(expected, axis=0).max() > 0  # the actions depend on the observation
