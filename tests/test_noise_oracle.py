"""scripts/noise_oracle.py: each noise level's schedule is searched on the evaluation's tuning
tasks at that level and played on that level's held-out runs, and compared run by run."""

import json

import numpy as np
import pytest
import torch
from conftest import load_script
from test_evaluate import DIST, SMALL

from agents import baselines as bl
from agents.evaluate import EvalArgs, evaluate
from agents.rollout import rollout_policy
from lossgym.tasks import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")

LEVELS = (0.0, 0.3)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A residual ES agent with a small --hidden-noise evaluation."""
    from agents.es import ESArgs, train_es

    run = train_es(ESArgs(run_dir=str(tmp_path_factory.mktemp("oracle") / "es"), generations=1,
                          pairs=2, progress=False,
                          env_kwargs={"action_mode": "residual", "reward_baseline": "base",
                                      "base_rule": "logit_adjusted", "max_step": 0.2}),
                   tasks=SMALL)
    evaluate(EvalArgs(run_dir=str(run), seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2,
                      small=True, device="cpu", progress="lines", hidden_noise=LEVELS),
             distribution=DIST)
    return run


def test_each_level_searches_at_its_noise_and_plays_its_own_runs(evaluated, monkeypatch):
    script = load_script("noise_oracle")
    searched, real = [], bl.knot_search

    def spy(tasks, budget, *a, **kw):
        searched.append(([t.label_noise for t in tasks], budget))
        config, table = real(tasks, budget, *a, **kw)
        played.append(bl.KnotPolicy(**config, **{k: kw[k] for k in (
            "parameters", "mode", "base_rule", "max_step")}))
        return config, table

    played: list = []
    monkeypatch.setattr(script.bl, "knot_search", spy)
    result = script.noise_oracle(evaluated, EvalArgs(run_dir=str(evaluated), search_budget=4,
                                                     device="cpu"), distribution=DIST)
    # The evaluation's draw (recorded) gives its two tuning tasks, at each level in turn.
    assert searched == [([0.0, 0.0], 4), ([0.3, 0.3], 4)]
    data = json.loads((evaluated / "evaluation.json").read_text())
    ce = [TaskSpec.from_dict(r["task"]) for r in data["records"] if r["method"] == "ce"]
    records = result["records"]
    assert sorted(json.dumps(r["task"], sort_keys=True) for r in records) == sorted(
        json.dumps(t.to_dict(), sort_keys=True) for t in ce)
    for level, policy in zip(LEVELS, played):
        runs = [t for t in ce if t.label_noise == level]
        again = rollout_policy(policy, runs, "again", device="cpu")
        assert [r["test"] for r in records if r["task"]["label_noise"] == level] == [
            r.test for r in again]
    # Compared with the evaluation's agent on all runs and on each level's.
    agent = result["contrasts"]["agent"]
    assert sorted(agent) == ["0.0", "0.3", "all"]
    assert agent["all"]["n"] == len(ce) and agent["0.3"]["n"] == len(ce) // 2
    text = script.report(result, "python scripts/noise_oracle.py ...")
    assert "| `agent` |" in text and "noise 0.3" in text


def test_an_evaluation_without_hidden_noise_is_refused(evaluated, tmp_path, capsys):
    script = load_script("noise_oracle")
    data = json.loads((evaluated / "evaluation.json").read_text())
    data["hidden_noise"] = []
    (tmp_path / "evaluation.json").write_text(json.dumps(data))
    assert script.main(["--evaluation", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "the oracle needs a --hidden-noise evaluation" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_switch_reads_the_gap_once_at_its_progress_and_plays_the_nearest_level():
    from lossgym.schedules import LossSchedule, constant

    script = load_script("noise_oracle")
    schedules = [LossSchedule({"scale": constant(10.0)}), LossSchedule({"scale": constant(3.0)})]
    rule = script.SwitchRule(schedules, script.nearest_gap([0.0, -0.5]), 0.3,
                             ("margin", "scale"))
    obs = np.zeros((1, 20))
    played = []
    for h, gap in enumerate([0.0, -0.6, -0.6, -0.6, 0.0]):  # the gap at progress 0.4 counts
        obs[0, script.TRAIN_LOSS] = gap
        played.append(rule.params(obs, np.array([h / 5]))[0].tolist())
    assert played == [[0.0, 10.0]] * 2 + [[0.0, 3.0]] * 3  # margin neutral, scale switched
    assert rule.gap == -0.6 and rule.level == 1
    rule.reset(1)  # a new episode decides again
    assert rule.level == -1 and rule.gap != rule.gap and rule.seen is None
    # Without a detector it only records the observation, playing the first schedule.
    probe = script.SwitchRule(schedules, None, 0.3, ("scale",))
    assert [probe.params(obs, np.array([p]))[0, 0] for p in (0.0, 0.4, 0.8)] == [10.0] * 3
    assert probe.gap == 0.0 and probe.level == -1


def test_the_switch_plays_the_first_schedule_then_the_level_it_detected(evaluated):
    from lossgym.schedules import LossSchedule

    script = load_script("noise_oracle")
    args = EvalArgs(run_dir=str(evaluated), search_budget=4, device="cpu")
    result = script.noise_oracle(evaluated, args, distribution=DIST)
    switch = script.switch_study(evaluated, args, result, 0.5, distribution=DIST)
    schedules = [LossSchedule.from_dict(result["schedules"][str(v)]) for v in LEVELS]
    parameters = tuple(switch["records"][0]["parameters"])
    levels = []
    for record in switch["records"]:
        params = np.asarray(record["params"])
        horizon = len(params)
        later = [h for h in range(horizon) if h / horizon >= 0.5 - 1e-9]
        expected = [[schedules[0](h / horizon)[p] for p in parameters] for h in range(horizon)]
        np.testing.assert_allclose(params[: later[0]], expected[: later[0]], rtol=1e-6)
        # From progress 0.5 on: one level's schedule, the level it detected.
        fits = [k for k, s in enumerate(schedules) if np.allclose(
            params[later], [[s(h / horizon)[p] for p in parameters] for h in later], rtol=1e-6)]
        assert fits
        levels.append((record["task"]["label_noise"], fits))
    rate = {str(v): np.mean([v == LEVELS[fits[0]] for noise, fits in levels if noise == v])
            for v in LEVELS if all(len(f) == 1 for _, f in levels)}
    if rate:
        assert rate == pytest.approx(switch["detected"])
    assert len(switch["means"]) == 2 and all(np.isfinite(switch["means"]))
    assert sorted(switch["contrasts"]["noise_oracle"]) == ["0.0", "0.3", "all"]
    result["switch"] = switch  # as a file written before the detectors existed holds it
    assert "## A closed loop between them: `noise_switch`" in script.report(result, "cmd")


def test_the_truth_switch_is_always_right_and_the_learned_one_fits_on_train_tasks(evaluated,
                                                                                  monkeypatch):
    script = load_script("noise_oracle")
    args = EvalArgs(run_dir=str(evaluated), search_budget=4, device="cpu")
    result = script.noise_oracle(evaluated, args, distribution=DIST)
    truth = script.switch_study(evaluated, args, result, 0.5, distribution=DIST,
                                detector="truth")
    assert truth["detected"] == {"0.0": 1.0, "0.3": 1.0}
    assert {r["method"] for r in truth["records"]} == {"noise_switch_truth"}
    observed: list = []
    real = script.observe

    def spy(schedules, tasks, *a, **kw):
        observed.extend(tasks)
        return real(schedules, tasks, *a, **kw)

    monkeypatch.setattr(script, "observe", spy)
    learned = script.switch_study(evaluated, args, result, 0.5, distribution=DIST,
                                  detector="learned", detector_tasks=3)
    # Three train-split tasks at each level, none of them held out or a tuning task.
    rng = np.random.default_rng([0, 13])  # the evaluation's seed
    drawn = [DIST.sample(rng, "train") for _ in range(3)]
    assert observed == [t.replace(label_noise=v) for v in LEVELS for t in drawn]
    held = {json.dumps(r["task"], sort_keys=True) for r in learned["records"]}
    assert not held & {json.dumps(t.to_dict(), sort_keys=True) for t in observed}
    assert learned["detector_tasks"] == 3 and 0.0 <= learned["train_accuracy"] <= 1.0
    result["switches"] = {"truth": truth, "learned": learned}
    text = script.report(result, "cmd")
    assert "`noise_switch_truth`" in text and "`noise_switch_learned`" in text
    with pytest.raises(ValueError, match="detector='best' is not one of"):
        script.switch_study(evaluated, args, result, 0.5, distribution=DIST, detector="best")


def test_the_winner_detector_learns_which_schedule_ends_better_on_train_tasks(evaluated,
                                                                             monkeypatch,
                                                                             tmp_path):
    script = load_script("noise_oracle")
    args = EvalArgs(run_dir=str(evaluated), search_budget=4, device="cpu")
    result = script.noise_oracle(evaluated, args, distribution=DIST)
    calls, fits = [], []
    real_observe, real_fit = script.observe, script.LogisticDetector

    def observe(schedules, tasks, at, parameters, device, arm=None):
        seen, records = real_observe(schedules, tasks, at, parameters, device, arm)
        calls.append((arm, tasks, seen, records))
        return seen, records

    def fit(x, y, levels):
        fits.append((x, y))
        return real_fit(x, y, levels)

    monkeypatch.setattr(script, "observe", observe)
    monkeypatch.setattr(script, "LogisticDetector", fit)
    study = script.switch_study(evaluated, args, result, 0.5, distribution=DIST,
                                detector="winner", detector_tasks=2)
    # Every train run is played with each schedule after the switch, the same run before it.
    assert [c[0] for c in calls] == [0, 1] and calls[0][1] == calls[1][1]
    for a, b in zip(calls[0][2], calls[1][2]):
        np.testing.assert_array_equal(a, b)
    # The label is the schedule whose run ends with the better validation score.
    x, y = fits[0]
    scores = np.array([[bl.final_val_score(r) for r in c[3]] for c in calls])
    np.testing.assert_array_equal(y, scores.argmax(0))
    np.testing.assert_array_equal(x, np.stack(calls[0][2]))
    assert study["arm_shares"] == pytest.approx(np.bincount(y, minlength=2) / len(y))
    assert {r["method"] for r in study["records"]} == {"noise_switch_winner"}
    # The fitted detector is kept, and exports as a switch that decides as it did.
    from lossgym import AdaptiveLoss
    from lossgym.schedules import LossSchedule

    result["switches"] = {"winner@0.5": study}
    parameters = tuple(study["records"][0]["parameters"])
    path = script.export_switch(result, "winner@0.5", parameters, tmp_path / "switch", 5)
    switch = AdaptiveLoss.load(path).switch
    assert switch.at == 0.5 and switch.parameters == parameters
    assert [s.to_dict() for s in switch.schedules] == [
        LossSchedule.from_dict(result["schedules"][str(v)]).to_dict() for v in LEVELS]
    fitted = real_fit(x, y, 2)
    assert [switch.choose(torch.as_tensor(row)) for row in x] == fitted.predict(x).tolist()
    with pytest.raises(ValueError, match="'gap@0.5' is not a learned switch"):
        gap = {"switches": {"gap@0.5": {"detector": "gap", "at": 0.5}}}
        script.export_switch(result | gap, "gap@0.5", parameters, tmp_path / "gap", 5)


def test_the_task_replay_of_a_switch_plays_the_mean_of_its_other_seeds(evaluated):
    from agents.evaluate import hidden_noise_base_task

    script = load_script("noise_oracle")
    args = EvalArgs(run_dir=str(evaluated), search_budget=4, device="cpu")
    result = script.noise_oracle(evaluated, args, distribution=DIST)
    study = script.switch_study(evaluated, args, result, 0.5, distribution=DIST,
                                detector="truth")
    replay = script.task_replay(study, LEVELS, "cpu")
    records, replayed = study["records"], replay["records"]
    assert [r["task"] for r in replayed] == [r["task"] for r in records]
    keys = [hidden_noise_base_task(TaskSpec.from_dict(r["task"])) for r in records]
    for i, r in enumerate(replayed):
        others = [np.asarray(records[j]["params"]) for j in range(len(records))
                  if keys[j] == keys[i] and j != i]
        np.testing.assert_allclose(r["params"], np.mean(others, axis=0), atol=1e-5)
    assert replay["method"] == "noise_switch_truth_task_replay"
    assert replay["contrast"]["all"]["n"] == len(records)
    study["task_replay"] = replay
    assert "`noise_switch_truth_task_replay`" in script.report(
        result | {"switches": {"truth@0.5": study}}, "cmd")


def test_the_logistic_detector_separates_levels_and_ignores_constant_features():
    script = load_script("noise_oracle")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 5))
    x[:, 1] += 4.0 * y  # one informative feature
    x[:, 3] = 7.0  # a feature constant in training
    fitted = script.LogisticDetector(x, y, 3)
    assert fitted.train_accuracy > 0.95 and not fitted.keep[3]
    row = np.array([0.0, 8.0, 0.0, -100.0, 0.0])  # the constant feature's value is ignored
    assert fitted(row) == 2 and fitted(row * np.array([1, 0, 1, 1, 1])) == 0


def test_schedules_searched_for_another_draw_are_refused(evaluated):
    script = load_script("noise_oracle")
    args = EvalArgs(run_dir=str(evaluated), search_budget=4, device="cpu")
    result = {"draw": {"seed": 7, "id_tasks": 1, "seeds": 2, "ood_tasks": 1, "tune_tasks": 2},
              "hidden_noise": list(LEVELS), "schedules": {}, "records": []}
    with pytest.raises(ValueError, match="searched for the draw .*'seed': 7"):
        script.switch_study(evaluated, args, result, 0.5, distribution=DIST)


def test_switch_studies_are_kept_by_detector_and_progress_old_files_included():
    script = load_script("noise_oracle")
    old = {"at": 0.3, "means": [0.0, 0.1]}
    result = {"switch": old, "switches": {"truth@0.3": {"detector": "truth", "at": 0.3},
                                          "truth@0.1": {"detector": "truth", "at": 0.1}}}
    found = script.switches(result)
    assert list(found) == ["gap@0.3", "truth@0.3", "truth@0.1"]
    assert found["gap@0.3"] == {"detector": "gap", "method": "noise_switch", **old}


def test_search_noise_reproduces_the_evaluations_search_at_its_seed(evaluated, tmp_path):
    import shutil

    from agents.evaluate import add_methods

    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    add_methods(EvalArgs(run_dir=str(run), search_budget=4, device="cpu"), ["knot_search"],
                distribution=DIST)
    script = load_script("search_noise")
    result = script.search_noise(run, EvalArgs(run_dir=str(run), search_budget=4, device="cpu"),
                                 [0, 7], distribution=DIST)
    # Seed 0 is the evaluation's: the same schedule, record for record.
    assert result["contrasts"]["0"]["mean"] == 0.0 and result["contrasts"]["0"]["ci_low"] == 0.0
    data = json.loads((run / "evaluation.json").read_text())
    own = sorted((json.dumps(r["task"], sort_keys=True), r["test"]["balanced_accuracy"])
                 for r in data["records"] if r["method"] == "knot_search")
    again = sorted((json.dumps(r["task"], sort_keys=True), r["test"]["balanced_accuracy"])
                   for r in result["records"] if r["method"] == "knot_search_seed0")
    assert own == again
    assert set(result["means"]) == {"evaluation", "0", "7"}
    assert result["contrasts"]["7"]["n"] == len(own)
    assert "| 7 |" in script.report(result, "cmd")
    with pytest.raises(ValueError, match="names 7 twice"):
        script.search_noise(run, EvalArgs(run_dir=str(run), search_budget=4, device="cpu"),
                            [7, 7], distribution=DIST)
