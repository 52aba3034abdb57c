import dataclasses
import io
import json
import re
import sys

import numpy as np
import pytest

import agents.train as train_mod
from agents.evaluate import EvalArgs, evaluate, held_out_tasks, learning_curve
from agents.train import TrainArgs, train
from lossgym.tasks import TaskDistribution, TaskFactors, TaskSpec

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=4)
TRAIN = TaskFactors(imbalance_ratios=(10.0, 20.0), widths=(16,), minibatches_per_step=(1,),
                    horizons=(3,), seed_range=(0, 1000))
HELD_OUT = dataclasses.replace(TRAIN, seed_range=(10_000, 20_000))
DIST = TaskDistribution(train=(TRAIN,), held_out_id=(HELD_OUT,),
                        held_out_ood=(dataclasses.replace(HELD_OUT, imbalance_ratios=(30.0,)),))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    original = train_mod.make_env

    def small_env(n, seed, run_dir, kw, tasks=None):
        return original(n, seed, run_dir, kw, tasks=SMALL)

    train_mod.make_env = small_env
    try:
        return train(TrainArgs(algo="ppo", run_dir=str(tmp_path_factory.mktemp("run") / "ppo"),
                               timesteps=32, num_envs=4, progress=False,
                               overrides={"n_steps": 8, "batch_size": 32}))
    finally:
        train_mod.make_env = original


def test_evaluate_end_to_end_writes_the_report(run_dir, capsys):
    path = evaluate(EvalArgs(run_dir=str(run_dir), seeds=2, id_tasks=1, ood_tasks=1,
                             tune_tasks=2, search_budget=4, progress="lines"),
                    distribution=DIST)
    text = path.read_text()
    for method in ("agent", "agent_replay", "agent_mean_action", "ce", "tuned_drw",
                   "tuned_ldam_drw", "tuned_feedback", "random_search", "cma_es", "ldam_drw",
                   "adafocal", "oracle_constant"):
        assert method in text, method
    assert "PASS" in text or "FAIL" in text
    assert "FEWER SEEDS (2) than the documented minimum of 5 per base task" in text
    for png in ("trajectories.png", "forest.png", "heatmap.png"):
        assert (run_dir / png).stat().st_size > 0
    records = json.loads((run_dir / "evaluation.json").read_text())["records"]
    agent = [r for r in records if r["method"] == "agent"]
    replay = [r for r in records if r["method"] == "agent_replay"]
    assert len(agent) == 4  # (1 ID + 1 OOD base task) x 2 seeds
    # The open-loop replay of the agent's own actions reproduces its episodes exactly.
    assert [r["test"] for r in agent] == [r["test"] for r in replay]
    # Progress for a log: timestamped lines at each tenth of the inner training runs, which
    # end at the plan: every held-out record, and the tuning grids (drw 10, ldam_drw 8,
    # feedback 8, constant 18 candidates) on 2 train tasks, the two searches' 4 and the
    # oracle's 9 x 4.
    lines = [line for line in capsys.readouterr().out.splitlines()  # Ray Tune prints too
             if re.match(r"\[ *\d+\.\ds\] ", line)]
    for said in ("inner training runs planned", "tuning and searches done",
                 "held-out evaluation done", "report written"):
        assert any(said in line for line in lines), said
    counts = [line for line in lines if "inner training runs (" in line]
    total = len(records) + 2 * (10 + 8 + 8 + 18) + 2 * 4 + 9 * 4
    assert counts[-1].split("] ")[1].startswith(f"{total}/{total} inner training runs (100 %)")
    assert 5 <= len(counts) <= 10 and all("ETA" in line for line in counts[:-1])


def test_counting_executor_counts_each_population_as_it_finishes(one_thread):
    from agents import distributed
    from agents.baselines import constant_rule
    from agents.evaluate import Counting
    from agents.rollout import rollout_method, rollout_policy

    tasks = [SMALL.replace(seed=1), SMALL.replace(width=16, seed=1), SMALL.replace(seed=2)]
    counts = []
    with distributed.using(Counting(distributed.LocalExecutor(), counts.append)):
        counted = rollout_policy(constant_rule(1.0, 0.5), tasks, "c", device="cpu")
        counted += rollout_method("logit_adjusted", tasks, device="cpu")
    assert counts == [2, 1, 2, 1]  # two populations (two widths) each
    plain = rollout_policy(constant_rule(1.0, 0.5), tasks, "c", device="cpu")
    plain += rollout_method("logit_adjusted", tasks, device="cpu")
    assert [r.test for r in counted] == [r.test for r in plain]


def test_counting_executor_counts_ray_units_in_this_process(one_thread):
    pytest.importorskip("ray")
    from agents import distributed
    from agents.baselines import constant_rule
    from agents.evaluate import Counting
    from agents.rollout import rollout_policy

    tasks = [SMALL.replace(seed=1), SMALL.replace(width=16, seed=1), SMALL.replace(seed=2)]
    local = rollout_policy(constant_rule(1.0, 0.5), tasks, "c", device="cpu")
    counts = []
    ray_executor = distributed.RayExecutor("local", num_cpus=1)
    try:
        with distributed.using(Counting(ray_executor, counts.append)):
            remote = rollout_policy(constant_rule(1.0, 0.5), tasks, "c", device="cpu")
    finally:
        ray_executor.close()
    assert sorted(counts) == [1, 2]
    assert [r.test for r in remote] == [r.test for r in local]


def test_progress_lines_and_bar():
    from agents.evaluate import Progress

    out = io.StringIO()
    progress = Progress("lines", out=out)
    progress.set_total(20)
    progress.say("hello")
    for _ in range(19):
        progress.add(1)
    progress.set_total(19)  # a corrected plan
    progress.close()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\[ *\d+\.\ds\] hello", lines[0])
    assert len(lines) == 11
    assert re.search(r"\] 2/20 inner training runs \(10 %\), ETA (\d+ min )?\d+ s$", lines[1])
    assert "] 18/20 inner training runs (90 %), ETA " in lines[-2]
    assert lines[-1].endswith("] 19/19 inner training runs (100 %)")
    bar = io.StringIO()
    progress = Progress("bar", out=bar)
    progress.set_total(4)
    progress.add(1)
    progress.say("a line above the bar")
    progress.add(3)
    progress.close()
    text = bar.getvalue()
    assert "a line above the bar" in text and "4/4" in text and "inner training runs" in text
    assert Progress("none").say("nothing") is None
    with pytest.raises(ValueError):
        Progress("loud")


def test_held_out_tasks_are_paired_and_unseen():
    import numpy as np

    tasks = held_out_tasks(DIST, np.random.default_rng(0), id_tasks=2, seeds=3)
    assert len(tasks) == 9
    assert all(DIST.split_of(t) in ("held_out_id", "held_out_ood") for t in tasks)
    assert tasks[1].replace(seed=tasks[0].seed) == tasks[0]


def test_learning_curve_reads_the_monitor(run_dir):
    curve = learning_curve(run_dir)
    assert curve.shape[1] == 2 and len(curve) >= 1


def test_lossgym_train_and_evaluate_hand_over_to_the_agents_package(monkeypatch, capsys):
    from lossgym import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--seeds", "0"])
    assert exit_info.value.code == 2 and "--seeds=0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--algo", "bogus"])
    assert "bogus" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr("agents.evaluate.main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["evaluate", "--run-dir", "x", "--report-only"]) == 0
    assert calls == [["--run-dir", "x", "--report-only"]]
    monkeypatch.setitem(sys.modules, "agents.train", None)  # the training stack is missing
    assert cli.main(["train"]) == 2
    assert "pip install 'lossgym[agents]'" in capsys.readouterr().err


def test_add_methods_runs_them_on_the_same_held_out_tasks(run_dir, tmp_path):
    import shutil

    from agents.baselines import rollout_baseline
    from agents.evaluate import add_methods, record_to_dict
    from agents.rollout import rollout_policy

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    tasks = held_out_tasks(DIST, np.random.default_rng(0), id_tasks=1, seeds=2)
    records = (rollout_policy(train_mod.AgentPolicy(run), tasks, "agent", device="cpu")
               + rollout_baseline("ce", tasks, device="cpu"))
    (run / "evaluation.json").write_text(json.dumps(
        {"note": "tiny.", "records": [record_to_dict(r) for r in records]}))
    path = add_methods(EvalArgs(run_dir=str(run), seeds=2, id_tasks=1, ood_tasks=1,
                                device="cpu"), ["cb_beta0.9"], distribution=DIST)
    data = json.loads((run / "evaluation.json").read_text())
    added = [r for r in data["records"] if r["method"] == "cb_beta0.9"]
    assert [r["task"] for r in added] == [t.to_dict() for t in tasks]
    assert len(data["records"]) == 3 * len(tasks) and "--add-methods" in data["note"]
    assert "cb_beta0.9" in path.read_text()
    with pytest.raises(ValueError, match="held-out tasks differ"):
        add_methods(EvalArgs(run_dir=str(run), seeds=3, id_tasks=1, ood_tasks=1,
                             device="cpu"), ["cb_beta0.9"], distribution=DIST)
    with pytest.raises(SystemExit):
        from agents.evaluate import parse_args
        parse_args(["--add-methods", "nope"])


def test_add_methods_reruns_the_searches_and_hand_baselines_record_for_record(run_dir,
                                                                              tmp_path):
    # The searches run again at the agent's budget on the tuning tasks evaluate() drew, from
    # the same generators: they find the same configurations and give the same records.
    import shutil

    from agents.evaluate import add_methods

    args = dict(seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2, search_budget=4)
    if not (run_dir / "evaluation.json").is_file():  # the end-to-end test above writes it
        evaluate(EvalArgs(run_dir=str(run_dir), progress="lines", **args), distribution=DIST)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = json.loads((run / "evaluation.json").read_text())["records"]
    names = ("random_search", "random_search_constant", "cma_es", "focal_2", "tuned_constant",
             "oracle_constant")
    add_methods(EvalArgs(run_dir=str(run), **args), ["random_search", "cma_es", "focal_2",
                                                     "tuned_constant", "oracle_constant"],
                distribution=DIST)
    data = json.loads((run / "evaluation.json").read_text())
    after = data["records"]
    assert len(after) == len(before)
    # The note says the budget each search was run again at; a tuned family is no search.
    for name in ("random_search", "cma_es"):
        said = f" {name} was run again by --add-methods at 4 inner runs (run: "
        assert data["note"].count(said) == 1, data["note"]
    assert "tuned_constant was run again" not in data["note"]
    present = [n for n in names if any(r["method"] == n for r in before)]
    assert set(names) - {"random_search_constant"} <= set(present)  # it may draw no constant
    for name in present:
        old = [r for r in before if r["method"] == name]
        assert [r for r in after if r["method"] == name] == old, name
    # PBT that cannot run says why, and the evaluation is left as it was.
    with pytest.raises(ValueError, match="pbt: PBT: skipped"):
        add_methods(EvalArgs(run_dir=str(run), pbt=False, **args), ["pbt"], distribution=DIST)
    assert json.loads((run / "evaluation.json").read_text())["records"] == after


def test_the_small_evaluation_runs_the_named_baselines_and_says_so(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = evaluate(EvalArgs(run_dir=str(run), seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2,
                             small=True, device="cpu", progress="lines"), distribution=DIST)
    text = path.read_text()
    records = json.loads((run / "evaluation.json").read_text())["records"]
    methods = {r["method"] for r in records}
    assert methods == {"agent", "agent_replay", "agent_mean_action", "agent_task_replay", "ce",
                       "logit_adjusted", "ldam_drw", "tuned_drw", "tuned_ldam_drw"}
    assert "SMALL VERSION" in text and "FEWER SEEDS (2)" in text
    # Its progress ends at its plan: the held-out records, DRW's 10 candidates x 2 tasks and
    # LDAM-DRW's 8.
    total = len(records) + 10 * 2 + 8 * 2
    lines = capsys.readouterr().out.splitlines()
    counts = [line for line in lines if "inner training runs (" in line]
    assert counts[-1].endswith(f"] {total}/{total} inner training runs (100 %)")
    assert "planned" in lines[0] and "PBT" not in lines[0]

    # --add-methods tunes a family again on the same tuning tasks as the evaluation drew:
    # it reproduces the evaluation's tuned LDAM-DRW, record for record.
    from agents.evaluate import add_methods

    before = [r for r in records if r["method"] == "tuned_ldam_drw"]
    add_methods(EvalArgs(run_dir=str(run), seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2,
                         device="cpu"), ["tuned_ldam_drw"], distribution=DIST)
    data = json.loads((run / "evaluation.json").read_text())
    after = [r for r in data["records"] if r["method"] == "tuned_ldam_drw"]
    assert after == before and len(data["records"]) == len(records)


def test_an_agent_around_another_base_rule_meets_that_rule_as_a_baseline(tmp_path, capsys):
    from agents.es import ESArgs, train_es
    from agents.rollout import ScheduleRule, rollout_policy
    from lossgym.schedules import LossSchedule, constant, step

    base = LossSchedule({"margin": constant(0.5), "scale": constant(30.0),
                         "alpha": step([0.8], [0.0, 1.0])})
    run = train_es(ESArgs(run_dir=str(tmp_path / "es"), generations=1, pairs=2, progress=False,
                          env_kwargs={"action_mode": "residual", "reward_baseline": "base",
                                      "base_rule": base.to_dict(), "max_step": 0.2}),
                   tasks=SMALL)
    args = dict(seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2, search_budget=4, pbt=False,
                device="cpu")
    path = evaluate(EvalArgs(run_dir=str(run), progress="lines", **args), distribution=DIST)
    data = json.loads((run / "evaluation.json").read_text())
    records = [r for r in data["records"] if r["method"] == "base_rule"]
    assert data["base_rule"] == "base_rule" and len(records) == 4
    tasks = [TaskSpec.from_dict(r["task"]) for r in records]
    parameters = ("gamma", "alpha", "tau", "margin", "scale")
    again = rollout_policy(ScheduleRule(base, parameters), tasks, "again", device="cpu")
    assert [r["test"] for r in records] == [r.test for r in again]
    text = path.read_text()
    assert "base_rule" in text and "run as a fixed rule" in text
    # A residual agent also meets CMA-ES over open-loop schedules of its own actions
    # (knot_search, the agent's budget: 2 candidates x 2 tuning tasks), counted in the plan.
    knots = [r for r in data["records"] if r["method"] == "knot_search"]
    assert [r["task"] for r in knots] == [r["task"] for r in records]
    assert "knot_search" in data["tuned"] and "knot_search" in text
    from lossgym.schedules import LossSchedule as Schedule

    played = Schedule.from_dict(json.loads((run / "knot_schedule.json").read_text()))
    assert played.parameters == ("gamma", "alpha", "tau", "margin", "scale")
    counts = [line for line in capsys.readouterr().out.splitlines()
              if "inner training runs (" in line]
    total = len(data["records"]) + 2 * (10 + 8 + 8 + 18) + 3 * 4 + 9 * 4
    assert counts[-1].split("] ")[1].startswith(f"{total}/{total} inner training runs (100 %)")
    # All-zero knots are the base rule exactly; --add-methods runs the search again, the same.
    from agents import baselines as bl
    from agents.evaluate import action_terms, add_methods

    agent = train_mod.AgentPolicy(run)
    zero = rollout_policy(bl.KnotPolicy(np.zeros((len(agent.parameters), 4)),
                                        **action_terms(agent)), tasks, "zero", device="cpu")
    assert [r.test for r in zero] == [r["test"] for r in records]
    add_methods(EvalArgs(run_dir=str(run), **args), ["knot_search"], distribution=DIST)
    after = json.loads((run / "evaluation.json").read_text())
    assert [r for r in after["records"] if r["method"] == "knot_search"] == knots

    # A knot policy's loss schedule plays what it plays (clipped where the knots leave the
    # ranges), so it can be the base rule of an agent retrained in the same folder, which
    # --add-methods agent then rolls out against the same baselines on the same runs.
    knotted = bl.KnotPolicy([[-0.9, 0.6, 0.0, 0.3], [0.5, -1.0, 1.0, 0.2],
                             [1.0, 1.0, -0.4, 0.0], [-0.3, 0.8, 0.1, -1.0],
                             [0.2, -0.6, 0.9, 0.4]], **action_terms(agent))
    schedule = knotted.schedule()
    played = rollout_policy(knotted, tasks, "knots", device="cpu")
    replayed = rollout_policy(ScheduleRule(schedule, agent.parameters), tasks, "schedule",
                              device="cpu")
    for a, b in zip(played, replayed):
        np.testing.assert_allclose(a.params, b.params, atol=1e-5, rtol=0)
    assert float(np.min(np.stack([r.params for r in played])[..., 0])) == 0.0  # γ clipped at 0
    train_es(ESArgs(run_dir=str(tmp_path / "es2"), generations=1, pairs=2, progress=False,
                    seed=1, env_kwargs={"action_mode": "residual", "reward_baseline": "base",
                                        "base_rule": schedule.to_dict(), "max_step": 0.1}),
             tasks=SMALL)
    for name in ("policy.pt", "policy.norm.json", "config.json", "monitor.csv"):
        (run / name).write_bytes((tmp_path / "es2" / name).read_bytes())
    add_methods(EvalArgs(run_dir=str(run), **args), ["agent"], distribution=DIST)
    final = json.loads((run / "evaluation.json").read_text())

    def tests_of(data, method):
        return [r["test"] for r in data["records"] if r["method"] == method]

    assert tests_of(final, "ce") == tests_of(after, "ce")
    assert tests_of(final, "knot_search") == tests_of(after, "knot_search")
    assert tests_of(final, "base_rule") == [r.test for r in replayed]
    new_agent = train_mod.AgentPolicy(run)
    assert new_agent.base_rule == schedule and new_agent.max_step == 0.1
    assert tests_of(final, "agent") == [r.test for r in rollout_policy(
        new_agent, tasks, "agent", device="cpu")]
    for method in ("agent_replay", "agent_mean_action", "agent_task_replay"):
        assert len(tests_of(final, method)) == len(tasks)
    assert "replaced by --add-methods agent" in final["note"]


def test_the_searches_run_for_an_agent_that_does_not_control_alpha(tmp_path):
    # The default agent controls γ, τ, Δ, s and cb, not α: random search and CMA-ES, whose
    # schedule spaces are of γ and α, search α besides its parameters instead of failing.
    from agents.baselines import rollout_baseline
    from agents.es import ESArgs, train_es
    from agents.evaluate import add_methods, record_to_dict, search_parameters
    from agents.rollout import rollout_policy

    run = train_es(ESArgs(run_dir=str(tmp_path / "es"), generations=1, pairs=1, progress=False,
                          env_kwargs={"action_mode": "residual", "reward_baseline": "base",
                                      "base_rule": "ldam_drw", "max_step": 0.2,
                                      "action_params": "gamma,tau,margin,scale,cb"}),
                   tasks=SMALL)
    agent = train_mod.AgentPolicy(run)
    assert search_parameters(agent) == ("gamma", "alpha", "tau", "margin", "scale", "cb")
    tasks = held_out_tasks(DIST, np.random.default_rng(0), id_tasks=1, seeds=2)
    records = (rollout_policy(agent, tasks, "agent", device="cpu")
               + rollout_baseline("ce", tasks, device="cpu"))
    (run / "evaluation.json").write_text(json.dumps(
        {"note": "tiny.", "records": [record_to_dict(r) for r in records]}))
    add_methods(EvalArgs(run_dir=str(run), seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2,
                         search_budget=4, device="cpu"), ["random_search", "cma_es"],
                distribution=DIST)
    methods = [r["method"] for r in json.loads((run / "evaluation.json").read_text())["records"]]
    assert methods.count("random_search") == methods.count("cma_es") == len(tasks)


def test_added_methods_are_named_once_and_complete_a_small_evaluation():
    from agents import baselines as bl
    from agents.evaluate import (
        ADDED_NOTE,
        COMPLETED_NOTE,
        SMALL_NOTE,
        SMALL_SKIPS,
        TUNED_FAMILIES,
        added_note,
    )

    note = SMALL_NOTE + f"Agent: a. {SMALL_SKIPS} Wall time: 3 s." + ADDED_NOTE + "focal_0.5."
    some = {"agent", "ce", "focal_0.5", "cb_beta0.9"}
    once = added_note(note, ["cb_beta0.9"], some, residual=True)
    assert once == (SMALL_NOTE + f"Agent: a. {SMALL_SKIPS} Wall time: 3 s." + ADDED_NOTE
                    + "focal_0.5, cb_beta0.9.")
    assert added_note(once, ["focal_0.5"], some, residual=True) == once
    full = (some | set(bl.HAND_BASELINES) | set(bl.METHOD_BASELINES) | set(TUNED_FAMILIES)
            | {"random_search", "random_search_constant", "cma_es", "oracle_constant", "pbt"})
    # A residual agent's full evaluation also has knot_search: without it, still small.
    assert added_note(once, ["pbt"], full, residual=True).startswith(SMALL_NOTE)
    done = added_note(once, ["pbt"], full | {"knot_search"}, residual=True)
    assert done == (COMPLETED_NOTE + "Agent: a. Wall time: 3 s." + ADDED_NOTE
                    + "focal_0.5, cb_beta0.9, pbt.")


def test_a_rerun_search_says_its_own_budget_once(run_dir):
    # A search that --add-methods runs again for a retrained agent gets that agent's budget;
    # the note's first budgets are the first agent's, so the rerun says its own, and a second
    # rerun replaces what the first said instead of adding to it.
    from agents.evaluate import agent_episodes, rerun_note

    note = "Agent: a. Searches: 768 inner runs each."
    once = rerun_note(note, "knot_search", 3072, run_dir)
    said = (f" knot_search was run again by --add-methods at 3072 inner runs ({run_dir.name}: "
            f"{agent_episodes(run_dir)} training episodes).")
    assert once == note + said
    again = rerun_note(once + " Other.", "knot_search", 96, run_dir)
    assert again == note + " Other." + said.replace("3072", "96")
    assert rerun_note(again, "cma_es", 8, run_dir).startswith(again + " cma_es was run again")


def test_hidden_noise_cycles_the_noise_over_seeds_and_hides_it_from_the_task_replay(
        run_dir, tmp_path):
    import shutil

    from agents.evaluate import add_methods, replay_key, task_replay_actions
    from agents.rollout import EpisodeRecord

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    args = dict(seeds=4, id_tasks=1, ood_tasks=1, tune_tasks=2, small=True, device="cpu",
                hidden_noise=(0.0, 0.3))
    path = evaluate(EvalArgs(run_dir=str(run), progress="lines", **args), distribution=DIST)
    data = json.loads((run / "evaluation.json").read_text())
    assert data["hidden_noise"] == [0.0, 0.3]
    ce = [TaskSpec.from_dict(r["task"]) for r in data["records"] if r["method"] == "ce"]
    assert [t.label_noise for t in ce] == [0.0, 0.3, 0.0, 0.3] * 2
    text = path.read_text()
    assert "HIDDEN NOISE (--hidden-noise)" in text
    # The tables' tasks are task × noise cells, and the report says so.
    assert "1 base task, their seeds at label noise 0, 0.3 (hidden): 2 task × noise cells × " \
        "2 seeds = 4 runs per method" in text
    assert "whatever their hidden noise" in text and "no held-out task × noise cell" in text
    # --add-methods draws the same noisy tasks from evaluation.json's levels.
    before = [r for r in data["records"] if r["method"] == "tuned_drw"]
    add_methods(EvalArgs(run_dir=str(run), **{**args, "small": False}), ["tuned_drw"],
                distribution=DIST)
    after = json.loads((run / "evaluation.json").read_text())["records"]
    assert [r for r in after if r["method"] == "tuned_drw"] == before

    # The task replay of a run is the mean over its base task's other seeds, whatever their
    # noise (hidden), or over those at its own noise too (visible: the task's own noise).
    def record(seed, noise, value):
        return EpisodeRecord(task=SMALL.replace(seed=seed, label_noise=noise), method="agent",
                             params=np.zeros((1, 1)), actions=np.full((2, 1), value),
                             val_curve=np.zeros(2), test={}, diverged=False)

    records = [record(1, 0.0, 1.0), record(2, 0.3, 2.0), record(3, 0.0, 4.0),
               record(4, 0.3, 8.0)]
    hidden = task_replay_actions(records, replay_key((0.0, 0.3)))[:, 0, 0]
    np.testing.assert_allclose(hidden, [14 / 3, 13 / 3, 11 / 3, 7 / 3])
    visible = task_replay_actions(records, replay_key(()))[:, 0, 0]
    np.testing.assert_allclose(visible, [4.0, 8.0, 1.0, 2.0])


@pytest.mark.parametrize("levels", [(0.6,), (-0.1,), ("a",)])
def test_hidden_noise_out_of_range_names_the_option_and_the_value(levels, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"hidden_noise=.*is invalid: each value must be"):
        EvalArgs(run_dir=str(tmp_path), hidden_noise=levels)
    if levels != ("a",):
        from agents.evaluate import main

        with pytest.raises(SystemExit) as exit_info:
            main(["--run-dir", str(tmp_path), "--hidden-noise", "0", str(levels[0])])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"--hidden-noise=[0.0, {levels[0]}] is invalid: each value must be" in err
        assert f"; {levels[0]} is not" in err


def test_add_methods_draws_with_the_options_the_evaluation_recorded(run_dir, tmp_path):
    # evaluation.json records its draw, so --add-methods needs no draw options; an option
    # that would draw other tasks is refused, and an evaluation made before the record gets
    # it the first time its options are shown to match.
    import shutil

    from agents.baselines import rollout_baseline
    from agents.evaluate import DRAW_FIELDS, add_methods, record_to_dict

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    tasks = held_out_tasks(DIST, np.random.default_rng(3), id_tasks=1, seeds=2, ood_tasks=1)
    draw = {"seed": 3, "id_tasks": 1, "seeds": 2, "ood_tasks": 1, "tune_tasks": 2}
    assert sorted(draw) == sorted(DRAW_FIELDS)
    from agents.rollout import rollout_policy

    ce = [record_to_dict(r) for r in rollout_baseline("ce", tasks, device="cpu")
          + rollout_policy(train_mod.AgentPolicy(run), tasks, "agent", device="cpu")]
    path = run / "evaluation.json"
    path.write_text(json.dumps({"note": "tiny.", "draw": draw, "records": ce}))
    add_methods(EvalArgs(run_dir=str(run), device="cpu"), ["focal_2"], distribution=DIST)
    data = json.loads(path.read_text())
    added = [r["task"] for r in data["records"] if r["method"] == "focal_2"]
    assert added == [t.to_dict() for t in tasks] and data["draw"] == draw
    with pytest.raises(ValueError, match=r"--seeds 4: .* was drawn with --seeds 2"):
        add_methods(EvalArgs(run_dir=str(run), seeds=4, device="cpu"), ["focal_1"],
                    distribution=DIST)
    path.write_text(json.dumps({"note": "tiny.", "draw": {**draw, "seeds": "2"},
                                "records": ce}))
    with pytest.raises(ValueError, match="'draw'.* is not a valid draw"):
        add_methods(EvalArgs(run_dir=str(run), device="cpu"), ["focal_1"], distribution=DIST)
    # Made before the record: the draw options are needed, checked, then recorded.
    path.write_text(json.dumps({"note": "tiny.", "records": ce}))
    with pytest.raises(ValueError, match="was not made with --seed 0 --id-tasks 12 --seeds 5 "
                                         "--ood-tasks 4 --tune-tasks 6: its held-out tasks"):
        add_methods(EvalArgs(run_dir=str(run), device="cpu"), ["focal_1"], distribution=DIST)
    add_methods(EvalArgs(run_dir=str(run), device="cpu", **draw), ["focal_1"],
                distribution=DIST)
    assert json.loads(path.read_text())["draw"] == draw


def test_a_search_that_a_small_evaluation_never_ran_is_not_said_to_run_again(run_dir):
    from agents.evaluate import rerun_note

    first = rerun_note("Agent: a.", "knot_search", 1536, run_dir, again=False)
    assert " knot_search was run by --add-methods at 1536 inner runs" in first
    assert "again" not in first
    # Run a second time, it was run again, and the first sentence gives way to the second.
    second = rerun_note(first, "knot_search", 3072, run_dir)
    assert second.count("knot_search was run") == 1
    assert " knot_search was run again by --add-methods at 3072 inner runs" in second
