"""scripts/noise_oracle.py: each noise level's schedule is searched on the evaluation's tuning
tasks at that level and played on that level's held-out runs, and compared run by run."""

import json

import pytest
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
