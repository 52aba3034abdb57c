import numpy as np
import pytest
import torch

from agents import baselines
from agents.baselines import (
    HAND_BASELINES,
    METHOD_BASELINES,
    RULES,
    ConstantActionPolicy,
    FeedbackRule,
    PerMemberPolicy,
    RandomPolicy,
    ReplayPolicy,
    best_constant,
    cma_search,
    default_popsize,
    final_val_score,
    grid_search,
    policy_from_config,
    random_search,
    rollout_baseline,
    rollout_members,
)
from agents.baselines import constant_rule as ConstantPolicy
from agents.baselines import drw_rule as DRWPolicy
from agents.baselines import schedule_rule as SchedulePolicy
from agents.rollout import rollout_method, rollout_policy
from lossgym import TaskSpec
from lossgym.actions import ActionMapping
from lossgym.features import FeatureSpec
from lossgym.methods import METHODS, make_method


def METHODS_SCHEDULE(name):
    return make_method(name).schedule()

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=3, horizon=4)
TASKS = [SMALL.replace(seed=1), SMALL.replace(seed=2)]
DIM = FeatureSpec(("gamma", "alpha")).dim


pytestmark = pytest.mark.usefixtures("one_thread")


def obs(progress, balanced=0.5, worst=0.5, n=None):
    """Observations with the given progress / balanced accuracy / worst recall columns."""
    progress = np.atleast_1d(np.asarray(progress, dtype=np.float32))
    n = len(progress) if n is None else n
    out = np.zeros((n, DIM), dtype=np.float32)
    out[:, 0] = progress
    out[:, 4] = balanced
    out[:, 5] = worst
    return out


def params_of(actions, parameters=("gamma", "alpha")):
    """Loss parameters the env sets from absolute-mode actions."""
    mapping = ActionMapping(tuple(parameters))
    a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
    return mapping.apply(a, torch.zeros_like(a)).numpy()


def rule_params(rule, observations):
    """The parameters a rule sets for observations ``[N, D]`` at their progress column (a
    rollout gives the rule the exact progress h/H; the observation holds its float32)."""
    progress = np.asarray(observations)[:, 0].astype(np.float64)
    return np.asarray(rule.params(observations, np.round(progress, 6)))


def assert_records_close(a, b, atol=1e-5):
    assert a.task == b.task
    np.testing.assert_allclose(a.val_curve, b.val_curve, atol=atol, rtol=0)
    np.testing.assert_allclose(a.params, b.params, atol=atol, rtol=0)
    np.testing.assert_allclose(a.actions, b.actions, atol=atol, rtol=0)
    assert a.test.keys() == b.test.keys()
    for key in a.test:
        assert a.test[key] == pytest.approx(b.test[key], abs=atol)
    assert a.diverged == b.diverged


class Counter:
    """Wraps rollout_policy: counts inner training runs (members) and hides test metrics."""

    def __init__(self, hide_test=True):
        self.runs = 0
        self.calls = 0
        self.hide_test = hide_test

    def __call__(self, policy, tasks, *args, **kwargs):
        self.calls += 1
        self.runs += len(tasks)
        records = rollout_policy(policy, tasks, *args, **kwargs)
        if self.hide_test:
            for r in records:
                r.test = None  # any use of the test metric would raise
        return records


# ----------------------------------------------------------------------------- policies
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_constant_policy_maps_to_its_gamma_and_alpha(gamma, alpha):
    policy = ConstantPolicy(gamma, alpha)
    assert policy.parameters == ("gamma", "alpha") and policy.mode == "absolute"
    policy.reset(3)
    values = rule_params(policy, obs([0.0, 0.5, 0.9]))
    assert values.shape == (3, 2)
    np.testing.assert_allclose(values, [[gamma, alpha]] * 3, atol=1e-6)


def test_hand_baseline_registry():
    expected = {"ce": (0, 0), "focal_0.5": (0.5, 0), "focal_1": (1, 0), "focal_2": (2, 0),
                "focal_3": (3, 0), "focal_5": (5, 0), "cb_power": (0, 1),
                "cb_power_focal": (1, 1)}
    assert set(HAND_BASELINES) == set(expected) | {"random"}
    for name, (gamma, alpha) in expected.items():
        policy = HAND_BASELINES[name]()
        policy.reset(1)
        np.testing.assert_allclose(rule_params(policy, obs(0.3)), [[gamma, alpha]], atol=1e-6)
    # One registry, one name per loss: a name in both registries is the same loss.
    assert set(RULES) >= set(HAND_BASELINES) | {"drw", "schedule", "feedback"}
    for name in set(RULES) & set(METHODS):
        values = RULES[name]().schedule(0.0)
        assert METHODS[name][1] == {k: v for k, v in values.items() if v != 0.0}
    assert HAND_BASELINES["random"]() is not HAND_BASELINES["random"]()
    assert set(METHOD_BASELINES) <= set(METHODS)
    assert {"cb_beta0.9", "cb_beta0.99", "cb_beta0.999", "cb_beta0.9999"} <= set(METHOD_BASELINES)


def test_class_balanced_beta_grid_is_the_class_balanced_method():
    # β = 0.9999 is the built-in class_balanced; another β weighs the classes differently.
    tasks = [SMALL.replace(seed=s) for s in (0, 1)]
    same = rollout_baseline("cb_beta0.9999", tasks, device="cpu")
    builtin = rollout_baseline("cb_power", tasks, device="cpu")  # power-law α = 1
    reference = rollout_method("cb_effective", tasks, device="cpu")
    assert [r.test for r in same] == [r.test for r in reference]
    other = rollout_baseline("cb_beta0.9", tasks, device="cpu")
    assert [r.test for r in other] != [r.test for r in same]
    assert all(r.method == "cb_power" for r in builtin)


def test_extra_parameters_stay_neutral():
    parameters = ("tau", "gamma", "alpha", "poly_epsilon")
    policy = ConstantPolicy(2.0, 0.5, parameters=parameters)
    x = np.zeros((2, FeatureSpec(parameters).dim), dtype=np.float32)
    np.testing.assert_allclose(rule_params(policy, x), [[0, 2, 0.5, 0]] * 2, atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        ConstantPolicy(parameters=("gamma", "tau"))


@pytest.mark.parametrize("switch", [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0])
def test_drw_switches_exactly_at_the_switch_progress(switch):
    horizon = 10
    k = np.arange(horizon)
    progress = k / horizon  # what a rollout gives the rule
    policy = DRWPolicy(switch=switch, alpha=0.75, gamma=1.0)
    policy.reset(horizon)
    p = policy.params(obs(progress), progress)
    expected_alpha = np.where(k >= round(switch * horizon), 0.75, 0.0)
    np.testing.assert_allclose(p[:, 1], expected_alpha, atol=1e-6)
    np.testing.assert_allclose(p[:, 0], 1.0, atol=1e-6)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_schedule_endpoints_and_shape(shape):
    policy = SchedulePolicy(gamma_start=4.0, gamma_end=1.0, shape=shape, drw_switch=0.6,
                            drw_alpha=0.5)
    policy.reset(5)
    p = rule_params(policy, obs([0.0, 0.25, 0.5, 0.6, 1.0]))
    s = np.array([0.0, 0.25, 0.5, 0.6, 1.0])
    if shape == "cosine":
        s = (1 - np.cos(np.pi * s)) / 2
    np.testing.assert_allclose(p[:, 0], 4.0 - 3.0 * s, atol=1e-5)
    assert p[2, 0] == pytest.approx(2.5, abs=1e-5)  # both shapes cross the midpoint at p=0.5
    np.testing.assert_allclose(p[:, 1], [0.0, 0.0, 0.0, 0.5, 0.5], atol=1e-6)
    # monotone between the endpoints
    g = np.array([policy.schedule(t)["gamma"] for t in np.linspace(0, 1, 21)])
    assert np.all(np.diff(g) <= 1e-12) and g[0] == 4.0 and g[-1] == pytest.approx(1.0)


def test_schedule_alpha_before_the_switch_and_constant_special_case():
    policy = SchedulePolicy(gamma_start=1.0, gamma_end=1.0, drw_switch=0.5, drw_alpha=0.8,
                            alpha_start=0.3)
    p = rule_params(policy, obs([0.0, 0.45, 0.5, 0.9]))
    np.testing.assert_allclose(p[:, 1], [0.3, 0.3, 0.8, 0.8], atol=1e-6)
    assert '"values": [0.3, 0.8]' in repr(policy)
    constant = SchedulePolicy(gamma_start=2.0, gamma_end=2.0, drw_switch=0.0, drw_alpha=0.4,
                              alpha_start=0.4)
    assert constant.schedule == ConstantPolicy(gamma=2.0, alpha=0.4).schedule


def test_best_constant_of_a_mixed_history():
    schedule = {"gamma_start": 3.0, "gamma_end": 0.0, "shape": "cosine", "drw_switch": 0.5,
                "drw_alpha": 1.0, "alpha_start": 0.0, "tau": 0.2}
    constants = [{"gamma_start": g, "gamma_end": g, "shape": "linear", "drw_switch": 0.0,
                  "drw_alpha": a, "alpha_start": a, "tau": t}
                 for g, a, t in ((1.0, 0.5, 0.7), (2.0, 0.25, 1.0))]
    history = [{**schedule, "score": 0.9}, {**constants[0], "score": 0.5},
               {**constants[1], "score": 0.6}]
    assert best_constant(history, ("gamma", "alpha", "tau")) == {
        "gamma": 2.0, "alpha": 0.25, "tau": 1.0}
    assert best_constant(history[:1], ("gamma", "alpha", "tau")) is None


def test_schedule_increasing_gamma():
    policy = SchedulePolicy(gamma_start=0.0, gamma_end=5.0, shape="linear", drw_switch=1.0)
    p = rule_params(policy, obs([0.0, 0.5, 0.95]))
    np.testing.assert_allclose(p, [[0.0, 0.0], [2.5, 0.0], [4.75, 0.0]], atol=1e-5)


def test_feedback_raises_alpha_when_worst_recall_lags_and_stays_clipped():
    policy = FeedbackRule(eta=2.0, margin=0.0, alpha_max=0.6)
    policy.reset(2)
    # at reset (progress 0) alpha starts at 0 whatever the gap
    a0 = rule_params(policy, obs([0.0, 0.0], balanced=[0.5, 0.5], worst=[0.0, 0.5]))
    np.testing.assert_allclose(a0[:, 1], [0.0, 0.0], atol=1e-6)
    # row 0: gap 0.1 -> alpha 0.2; row 1: no gap -> stays 0
    a1 = rule_params(policy, obs([0.25, 0.25], balanced=[0.6, 0.5], worst=[0.5, 0.5]))
    np.testing.assert_allclose(a1[:, 1], [0.2, 0.0], atol=1e-6)
    a2 = rule_params(policy, obs([0.5, 0.5], balanced=[0.6, 0.5], worst=[0.5, 0.5]))
    np.testing.assert_allclose(a2[:, 1], [0.4, 0.0], atol=1e-6)
    # a large gap saturates at alpha_max
    a3 = rule_params(policy, obs([0.75, 0.75], balanced=[0.9, 0.5], worst=[0.0, 0.5]))
    np.testing.assert_allclose(a3[:, 1], [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(a3[:, 0], [0.0, 0.0], atol=1e-6)
    # a new episode (progress 0 or reset) restarts at 0
    a4 = rule_params(policy, obs([0.0, 0.25], balanced=[0.9, 0.9], worst=[0.0, 0.0]))
    np.testing.assert_allclose(a4[:, 1], [0.0, 0.6], atol=1e-6)
    policy.reset(2)
    np.testing.assert_allclose(policy.alpha, [0.0, 0.0])


def test_feedback_margin_lowers_alpha_and_clips_at_zero():
    policy = FeedbackRule(eta=1.0, margin=0.1, alpha_max=1.0)
    policy.reset(1)
    rule_params(policy, obs(0.0))
    a = rule_params(policy, obs(0.25, balanced=0.8, worst=0.4))[0, 1]
    assert a == pytest.approx(0.3, abs=1e-6)
    a = rule_params(policy, obs(0.5, balanced=0.8, worst=0.75))[0, 1]
    assert a == pytest.approx(0.25, abs=1e-6)
    a = rule_params(policy, obs(0.75, balanced=0.8, worst=0.8))[0, 1]
    assert a == pytest.approx(0.15, abs=1e-6)
    for p in (0.8, 0.85, 0.9):
        a = rule_params(policy, obs(p, balanced=0.8, worst=0.8))[0, 1]
    assert a == 0.0
    with pytest.raises(ValueError, match="rows"):
        rule_params(policy, obs([0.1, 0.2]))


def test_random_policy_is_reproducible_per_seed():
    def draw(seed):
        policy = RandomPolicy(seed)
        policy.reset(3)
        return np.stack([policy.act(obs([0.1] * 3)) for _ in range(4)])

    a, b, c = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (4, 3, 2) and a.dtype == np.float32
    assert np.all(np.abs(a) <= 1.0)


def test_constant_action_policy():
    policy = ConstantActionPolicy([0.2, 1.5])
    policy.reset(2)
    np.testing.assert_allclose(policy.act(obs([0.0, 0.5])), [[0.2, 1.0]] * 2, atol=1e-7)
    delta = ConstantActionPolicy([0.1, -0.1, 0.0], ("gamma", "alpha", "tau"), mode="delta")
    assert delta.mode == "delta"
    with pytest.raises(ValueError, match="3 finite values"):
        ConstantActionPolicy([0.1, 0.2], ("gamma", "alpha", "tau"))
    with pytest.raises(ValueError, match="finite"):
        ConstantActionPolicy([np.nan, 0.0])


def test_replay_policy_steps_and_checks():
    actions = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 20.0
    policy = ReplayPolicy(actions)
    policy.reset(2)
    for t in range(3):
        np.testing.assert_array_equal(policy.act(obs([0.0, 0.0])), actions[:, t])
    with pytest.raises(ValueError, match="past the 3 recorded"):
        policy.act(obs([0.0, 0.0]))
    policy.reset(2)
    np.testing.assert_array_equal(policy.act(obs([0.0, 0.0])), actions[:, 0])
    with pytest.raises(ValueError, match="num_envs=3"):
        policy.reset(3)
    with pytest.raises(ValueError, match="shape"):
        ReplayPolicy(actions[0])


def test_per_member_policy_checks():
    with pytest.raises(ValueError, match="empty"):
        PerMemberPolicy([])
    same = ConstantPolicy()
    with pytest.raises(ValueError, match="same object"):
        PerMemberPolicy([same, same])
    with pytest.raises(ValueError, match="all must agree"):
        PerMemberPolicy([ConstantPolicy(), ConstantPolicy(parameters=("gamma", "alpha", "tau"))])
    policy = PerMemberPolicy([ConstantPolicy(1.0), DRWPolicy(0.5, 1.0)])
    with pytest.raises(ValueError, match="num_envs=3"):
        policy.reset(3)
    policy.reset(2)
    p = rule_params(policy, obs([0.6, 0.6]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: ConstantPolicy(gamma=6.0), r"gamma=6\.0 is out of range.*\[0, 5\]"),
    (lambda: ConstantPolicy(alpha=-0.1), r"alpha=-0\.1 .*\[0, 1\]"),
    (lambda: ConstantPolicy(gamma=float("nan")), "gamma=nan is invalid"),
    (lambda: DRWPolicy(switch=1.2), r"switch=1\.2 .*\[0, 1\]"),
    (lambda: SchedulePolicy(shape="step"), "shape='step'.*linear"),
    (lambda: SchedulePolicy(gamma_end=-1.0), r"gamma_end=-1\.0"),
    (lambda: SchedulePolicy(drw_alpha=2.0), r"drw_alpha=2\.0"),
    (lambda: FeedbackRule(eta=-1.0), r"eta=-1\.0 is out of range: must be a finite number >= 0"),
    (lambda: FeedbackRule(alpha_max=1.5), r"alpha_max=1\.5"),
    (lambda: FeedbackRule(margin=2.0), r"margin=2\.0 .*\[-1, 1\]"),
    (lambda: RandomPolicy(seed=-1), "seed=-1"),
    (lambda: RandomPolicy(mode="relative"), "relative"),
    (lambda: RandomPolicy(parameters=("beta",)), "beta"),
    (lambda: policy_from_config("grid", {}), "grid"),
    (lambda: baselines.ldam_drw_rule(scale=0.0), r"scale=0\.0 is out of range"),
    (lambda: baselines.ldam_drw_rule(switch=1.0), r"switch=1\.0 is out of range"),
])
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_search_argument_validation():
    with pytest.raises(ValueError, match="multiple of len"):
        random_search(TASKS, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="space='grid'"):
        random_search(TASKS, 4, np.random.default_rng(0), space="grid")
    with pytest.raises(ValueError, match="space='mixed' is random search's"):
        cma_search(TASKS, 4, space="mixed")
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        random_search(TASKS, 4, 0)
    with pytest.raises(ValueError, match="at least 2"):
        cma_search(TASKS, 2)
    with pytest.raises(ValueError, match="popsize=3 must divide"):
        cma_search(TASKS, 8, popsize=3)
    with pytest.raises(ValueError, match=r"switch=1\.5 is out of range"):
        grid_search("drw", TASKS, switch=(0.5, 1.5))
    with pytest.raises(ValueError, match="empty"):
        grid_search("constant", TASKS, gamma=())
    with pytest.raises(ValueError, match="select='train'"):
        grid_search("constant", TASKS, select="train")
    with pytest.raises(ValueError, match="baseline 'nope'"):
        rollout_baseline("nope", TASKS)


def test_default_popsize():
    assert default_popsize(12, 2) == 6
    assert default_popsize(4, 2) == 4
    assert default_popsize(7, 2) == 7  # prime above the default: one generation
    assert default_popsize(16, 4) == 8
    assert default_popsize(2, 4) == 2
    assert default_popsize(171, 8) == 19  # a large budget: ~8 generations, not 19 of 9


# ----------------------------------------------------------------------------- rollouts
def test_per_member_policy_equals_each_policy_alone():
    tasks = [SMALL.replace(seed=s) for s in (0, 1, 2)]

    def make():
        return [ConstantPolicy(2.0, 0.5), DRWPolicy(switch=0.5, alpha=1.0),
                FeedbackRule(eta=2.0)]

    together = rollout_policy(PerMemberPolicy(make()), tasks, device="cpu")
    for i, (policy, task) in enumerate(zip(make(), tasks)):
        alone = rollout_policy(policy, [task], device="cpu")[0]
        assert_records_close(together[i], alone)
    # the DRW member switched exactly at progress 0.5 (step 2 of 4)
    np.testing.assert_allclose(together[1].params[:, 1], [0, 0, 1, 1], atol=1e-6)
    # the feedback member starts at alpha 0 and never lowers it (margin 0)
    alpha = together[2].params[:, 1]
    assert alpha[0] == 0.0 and np.all(np.diff(alpha) >= 0) and alpha[-1] > 0


def test_replay_reproduces_a_recorded_rollout_exactly():
    tasks = [SMALL.replace(seed=5), SMALL.replace(seed=6)]
    recorded = rollout_policy(RandomPolicy(3), tasks, device="cpu")
    replayed = rollout_policy(ReplayPolicy.from_records(recorded), tasks, device="cpu")
    for a, b in zip(recorded, replayed):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.params, b.params)
        np.testing.assert_array_equal(a.val_curve, b.val_curve)
        assert a.test == b.test


def test_rollout_members_spans_populations_in_task_order(monkeypatch):
    counter = Counter(hide_test=False)
    monkeypatch.setattr(baselines, "rollout_policy", counter)
    narrow = SMALL.replace(width=16, horizon=2)
    tasks = [SMALL.replace(seed=1, horizon=2), narrow, SMALL.replace(seed=2, horizon=2),
             narrow.replace(seed=3)]
    policies = [ConstantPolicy(g, 0.0) for g in (0.0, 1.0, 2.0, 3.0)]
    records = rollout_members(policies, tasks, name=["a", "b", "c", "d"], device="cpu",
                              max_members=1)
    assert [r.task for r in records] == tasks
    assert [r.method for r in records] == ["a", "b", "c", "d"]
    np.testing.assert_allclose([r.params[0, 0] for r in records], [0, 1, 2, 3], atol=1e-6)
    assert counter.runs == 4 and counter.calls == 4  # max_members=1: one run per call
    with pytest.raises(ValueError, match="2 policies for 4 tasks"):
        rollout_members(policies[:2], tasks)


def test_rollout_baseline_hand_and_method():
    task = [SMALL.replace(seed=4, horizon=2)]
    hand = rollout_baseline("focal_2", task, device="cpu")[0]
    np.testing.assert_allclose(hand.params, [[2.0, 0.0]] * 2, atol=1e-6)
    assert hand.method == "focal_2"
    method = rollout_baseline("ce_drw", task, device="cpu")[0]
    assert method.method == "ce_drw" and len(method.val_curve) == 3
    assert 0.0 <= method.test["balanced_accuracy"] <= 1.0


def test_tuned_ldam_drw_family_is_the_ldam_drw_method():
    # At the paper's s = 30 and switch 0.8 the family's rule is LDAM-DRW as a schedule; its
    # records match the built-in method run by the engine (the method = schedule test).
    rule = baselines.ldam_drw_rule()
    assert rule.schedule.to_dict() == METHODS_SCHEDULE("ldam_drw").to_dict()
    other = policy_from_config("ldam_drw", {"scale": 10.0, "switch": 0.7})
    assert other.schedule(0.69) == {"margin": 0.5, "scale": 10.0, "cb": 0.0}
    assert other.schedule(0.7) == {"margin": 0.5, "scale": 10.0, "cb": 1.0}
    task = [SMALL.replace(seed=5, horizon=5)]  # the switch at 0.8 falls on a step boundary
    ours = rollout_policy(rule, task, "r", device="cpu")[0]
    method = rollout_method("ldam_drw", task, device="cpu")[0]
    assert ours.test["balanced_accuracy"] == pytest.approx(method.test["balanced_accuracy"],
                                                           abs=1e-6)


def test_tuning_runs_end_to_end_with_exact_run_counts(monkeypatch):
    counter = Counter()
    monkeypatch.setattr(baselines, "rollout_policy", counter)
    best, table = grid_search("drw", TASKS, switch=(0.5, 0.75), alpha=(1.0,), device="cpu")
    assert counter.runs == 2 * 1 * 2 and counter.calls == 1
    assert best["switch"] in (0.5, 0.75) and best["alpha"] == 1.0 and best["gamma"] == 0.0
    assert len(table) == 2 and all(0.0 <= row["score"] <= 1.0 for row in table)
    assert max(row["score"] for row in table) == next(
        row["score"] for row in table if row["switch"] == best["switch"])
    DRWPolicy(**best)

    best, table = grid_search("feedback", TASKS, eta=(1.0, 5.0), margin=(0.0,), device="cpu")
    assert counter.runs == 4 + 4
    assert best["eta"] in (1.0, 5.0) and best["margin"] == 0.0 and best["alpha_max"] == 1.0
    FeedbackRule(**best)

    best, table = grid_search("constant", TASKS, gamma=(0.0, 2.0), alpha=(0.0, 1.0),
                              device="cpu")
    assert counter.runs == 8 + 8 and counter.calls == 3
    assert best["gamma"] in (0.0, 2.0) and best["alpha"] in (0.0, 1.0)
    assert [(r["gamma"], r["alpha"]) for r in table] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    for row in table:
        assert row["score"] == pytest.approx(np.mean(row["task_scores"]))


def test_tuning_scores_the_final_validation_metric():
    best, table = grid_search("constant", TASKS, gamma=(1.0,), alpha=(0.5,), device="cpu")
    alone = rollout_policy(ConstantPolicy(1.0, 0.5), TASKS, device="cpu")
    np.testing.assert_allclose(table[0]["task_scores"], [r.val_curve[-1] for r in alone],
                               atol=1e-5)
    assert final_val_score(alone[0]) == pytest.approx(alone[0].val_curve[-1])

    oracle, otable = grid_search("constant", TASKS, select="test", gamma=(1.0,), alpha=(0.5,),
                                 device="cpu")
    assert oracle == {"gamma": 1.0, "alpha": 0.5}
    np.testing.assert_allclose(otable[0]["task_scores"],
                               [r.test["balanced_accuracy"] for r in alone], atol=1e-5)
    assert otable[0]["val_score"] == pytest.approx(table[0]["score"], abs=1e-5)


@pytest.mark.parametrize("space", ["constant", "schedule", "mixed"])
def test_random_search_within_bounds_and_exact_budget(monkeypatch, space):
    counter = Counter()
    monkeypatch.setattr(baselines, "rollout_policy", counter)
    best, history = random_search(TASKS, 6, np.random.default_rng(0), space=space,
                                  device="cpu")
    assert counter.runs == 6 and len(history) == 3 and counter.calls == 1
    assert [row["candidate"] for row in history] == [0, 1, 2]
    for config in [best] + history:
        if space == "constant":
            assert 0 <= config["gamma"] <= 5 and 0 <= config["alpha"] <= 1
        else:
            assert 0 <= config["gamma_start"] <= 5 and 0 <= config["gamma_end"] <= 5
            assert config["shape"] in ("linear", "cosine")
            assert 0 <= config["drw_switch"] <= 1 and 0 <= config["drw_alpha"] <= 1
            assert 0 <= config["alpha_start"] <= 1
    assert best in [{k: row[k] for k in best} for row in history]
    assert max(row["score"] for row in history) == next(
        row["score"] for row in history if {k: row[k] for k in best} == best)
    policy_from_config(space, best)
    again, _ = random_search(TASKS, 6, np.random.default_rng(0), space=space, device="cpu")
    assert again == best


@pytest.mark.parametrize("space", ["constant", "schedule"])
def test_cma_search_within_bounds_and_exact_budget(monkeypatch, space):
    counter = Counter()
    monkeypatch.setattr(baselines, "rollout_policy", counter)
    state = np.random.get_state()[1].copy()
    best, history = cma_search(TASKS, 8, seed=0, space=space, popsize=2, device="cpu")
    assert counter.runs == 8 and len(history) == 4 and counter.calls == 2  # 2 generations
    assert [row["generation"] for row in history] == [0, 0, 1, 1]
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    for config in [best] + history:
        if space == "constant":
            assert 0 <= config["gamma"] <= 5 and 0 <= config["alpha"] <= 1
        else:
            assert 0 <= config["gamma_start"] <= 5 and 0 <= config["gamma_end"] <= 5
            assert config["shape"] == "cosine"
            assert 0 <= config["drw_switch"] <= 1 and 0 <= config["drw_alpha"] <= 1
            assert 0 <= config["alpha_start"] <= 1
    policy_from_config(space, best)
    if space == "constant":
        again, history2 = cma_search(TASKS, 8, seed=0, space=space, popsize=2, device="cpu")
        assert again == best
        assert [r["gamma"] for r in history2] == [r["gamma"] for r in history]
        # default popsize: 4 candidates -> one generation of 4
        counter.calls = 0
        _, history3 = cma_search(TASKS, 8, seed=1, space=space, device="cpu")
        assert counter.calls == 1 and len(history3) == 4


def test_fixed_parameters_of_hand_policies():
    policy = ConstantPolicy(1.0, 0.5, tau=1.0, margin=0.5, scale=10.0)
    assert policy.parameters == ("gamma", "alpha", "tau", "margin", "scale")
    policy.reset(2)
    x = np.zeros((2, FeatureSpec(policy.parameters).dim), dtype=np.float32)
    np.testing.assert_allclose(rule_params(policy, x), [[1.0, 0.5, 1.0, 0.5, 10.0]] * 2,
                               atol=1e-5)
    assert '"scale": {"kind": "constant", "value": 10.0}' in repr(policy)
    drw = policy_from_config("drw", {"switch": 0.5, "alpha": 1.0, "tau": 1.0})
    drw.reset(2)
    x = np.zeros((2, FeatureSpec(drw.parameters).dim), dtype=np.float32)
    x[:, 0] = [0.2, 0.6]
    np.testing.assert_allclose(rule_params(drw, x), [[0, 0, 1.0], [0, 1.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="'bogus' is not known"):
        ConstantPolicy(bogus=1.0)
    with pytest.raises(ValueError, match="scale"):
        ConstantPolicy(scale=100.0)
    with pytest.raises(ValueError, match="not among the controlled"):
        ConstantPolicy(parameters=("gamma", "alpha"), tau=1.0)


@pytest.mark.parametrize("space", ["constant", "schedule"])
def test_searches_cover_an_agents_extra_parameters(monkeypatch, space):
    monkeypatch.setattr(baselines, "rollout_policy", Counter())
    parameters = ("gamma", "alpha", "tau", "scale")
    best, history = random_search(TASKS, 6, np.random.default_rng(0), space=space,
                                  parameters=parameters, device="cpu")
    best_cma, history_cma = cma_search(TASKS, 8, seed=0, space=space, popsize=2,
                                       parameters=parameters, device="cpu")
    for config in [best, best_cma] + history + history_cma:
        assert 0 <= config["tau"] <= 2 and 1 <= config["scale"] <= 30
    assert len({row["tau"] for row in history}) == 3
    policy = policy_from_config(space, best)
    assert set(policy.parameters) == set(parameters)


def test_knot_policy_is_linear_in_progress_between_its_knots_and_clipped():
    from agents.baselines import KnotPolicy

    policy = KnotPolicy([[0.0, 1.0, -0.5], [2.0, 2.0, -3.0]], parameters=("gamma", "alpha"))
    obs = np.zeros((5, 3))
    obs[:, 0] = [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(policy.act(obs), [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0],
                                                 [0.25, 0.0], [-0.5, -1.0]])
    with pytest.raises(ValueError, match=r"knots has shape \(2, 1\); expected \[2, K >= 2\]"):
        KnotPolicy([[0.0], [1.0]], parameters=("gamma", "alpha"))
    with pytest.raises(ValueError, match="knots"):
        KnotPolicy([[0.0, float("nan")], [1.0, 0.0]], parameters=("gamma", "alpha"))


def test_a_residual_knot_policy_writes_down_the_loss_schedule_it_plays():
    from agents.baselines import KnotPolicy
    from lossgym.schedules import LossSchedule, constant, cosine, join, linear, step

    # γ = clip(0 + a · 0.2 · 5) with a = −1 → 1: zero up to p = 0.5, then a line to 1. α =
    # clip(step(0.5: 0.2 → 0.6) + 0.2 · a) with a = 0.5 → −0.5 breaks at the step, too.
    base = LossSchedule({"alpha": step([0.5], [0.2, 0.6])})
    policy = KnotPolicy([[-1.0, 1.0], [0.5, -0.5]], parameters=("gamma", "alpha"),
                        mode="residual", base_rule=base, max_step=0.2)
    schedule = policy.schedule()
    gamma, alpha = schedule.schedules["gamma"], schedule.schedules["alpha"]
    assert gamma.to_dict() == {"kind": "join", "boundaries": [0.5], "schedules": [
        {"kind": "linear", "start": 0.0, "end": 0.0},
        {"kind": "linear", "start": 0.0, "end": 1.0}]}
    assert alpha.boundaries == (0.5,)
    np.testing.assert_allclose([alpha(t) for t in (0.0, 0.25, 0.4999999, 0.5, 1.0)],
                               [0.3, 0.25, 0.2, 0.6, 0.5], atol=1e-6)
    # Where the line leaves the range the clip bends it, and the schedule breaks there:
    # α = 0.9 + 0.2 · (1 − 2p) is above 1 until p = 0.25.
    policy = KnotPolicy([[0.0, 0.0], [1.0, -1.0]], parameters=("gamma", "alpha"),
                        mode="residual", base_rule=LossSchedule({"alpha": constant(0.9)}),
                        max_step=0.2)
    alpha = policy.schedule().schedules["alpha"]
    assert alpha.boundaries == pytest.approx((0.25,))
    assert [s.to_dict() for s in alpha.schedules] == [
        {"kind": "linear", "start": 1.0, "end": 1.0},
        {"kind": "linear", "start": 1.0, "end": pytest.approx(0.7)}]
    # A base rule of lines and joins is piecewise linear too: zero knots give it back.
    ramp = join([constant(0.2), linear(0.2, 0.8)], [0.5])
    policy = KnotPolicy([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], parameters=("gamma", "alpha"),
                        mode="residual", base_rule=LossSchedule({"alpha": ramp}), max_step=0.2)
    alpha = policy.schedule().schedules["alpha"]
    np.testing.assert_allclose([alpha(t) for t in np.linspace(0.0, 1.0, 41)],
                               [ramp(t) for t in np.linspace(0.0, 1.0, 41)], atol=1e-12)
    with pytest.raises(ValueError, match="only a residual KnotPolicy"):
        KnotPolicy([[0.0, 1.0], [0.0, 1.0]], parameters=("gamma", "alpha")).schedule()
    with pytest.raises(ValueError, match="a cosine schedule is not piecewise linear"):
        KnotPolicy([[0.0, 1.0], [0.0, 1.0]], parameters=("gamma", "alpha"), mode="residual",
                   base_rule=LossSchedule({"gamma": cosine(2.0, 0.0)})).schedule()


def test_knot_search_scores_every_candidate_and_returns_the_best():
    from agents.baselines import knot_search

    tasks = TASKS
    config, history = knot_search(tasks, 8, seed=0, knots=2, popsize=2, mode="absolute",
                                  parameters=("gamma", "alpha"), device="cpu")
    assert [row["generation"] for row in history] == [0, 0, 1, 1]
    best = max(history, key=lambda row: row["score"])
    assert config == {"knots": best["knots"]}
    assert all(row["score"] == pytest.approx(np.mean(row["task_scores"])) for row in history)
    with pytest.raises(ValueError, match="popsize=3 must divide the 4 candidates"):
        knot_search(tasks, 8, popsize=3, mode="absolute", parameters=("gamma", "alpha"))
