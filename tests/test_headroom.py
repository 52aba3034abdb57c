"""scripts/headroom.py: a tiny end-to-end run, and the selection and bootstrap helpers."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def headroom():
    spec = importlib.util.spec_from_file_location("headroom", ROOT / "scripts" / "headroom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(headroom, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("headroom")
    # Budget 7 takes the DRW and feedback hand rules in besides the built-in methods.
    result = headroom.main(["--quick", "--budget", "7", "--out", str(out)])
    return out, result


def test_quick_run_writes_a_report_that_round_trips(quick_run):
    out, result = quick_run
    stored = json.loads((out / "default" / "headroom.json").read_text(encoding="utf-8"))
    assert stored == json.loads(json.dumps(result))
    report = (out / "default" / "report.md").read_text(encoding="utf-8")
    assert result["command"] in report and "--quick --budget 7" in result["command"]
    assert "selection room" in report and "dynamic room" in report
    assert result["command"] in (out / "report.md").read_text(encoding="utf-8")
    # 3 families × budget 7 × 2 tasks × 2 seeds, every score a balanced accuracy.
    assert result["inner_runs"] == 3 * 7 * 2 * 2
    for split in ("val", "test"):
        for family in ("rule", "constant", "schedule"):
            scores = np.asarray(result["scores"][split][family])
            assert scores.shape == (7, 2, 2)
            assert np.all((scores >= 0) & (scores <= 1))
    names = [c["name"] for c in result["candidates"]["rule"]]
    assert "drw_s0.7" in names and "feedback_eta1" in names
    # The fixed pair: deferred re-weighting against the same weights from the start.
    contrast = result["summary"]["contrasts"]["ce_drw - cb_effective"]
    test = np.asarray(result["scores"]["test"]["rule"])
    d = test[names.index("ce_drw")] - test[names.index("cb_effective")]
    assert contrast["mean"] == pytest.approx(d.mean())
    assert contrast["ci"][0] <= contrast["ci"][1]


def test_per_task_best_is_at_least_the_single_best_on_the_selection_split(quick_run):
    summary = quick_run[1]["summary"]
    iv = summary["in_sample_val"]
    assert iv["per_task_best_rule"] >= iv["single_best_rule"]
    assert iv["selection_room"] >= 0
    for entry in [*summary["rooms"].values(), *summary["methods"].values()]:
        low, high = entry["ci"]
        assert low <= high


def test_cross_fitted_selection_never_sees_the_scored_seed(headroom):
    # Candidate 1 is best on validation everywhere except seed 0, where candidate 0's
    # validation is huge; seed 0's choice must ignore seed 0 and pick candidate 1.
    val = np.zeros((2, 1, 3))
    val[1] = 0.6
    val[0, 0, 0] = 10.0
    test = np.arange(6, dtype=float).reshape(2, 1, 3)
    scores, choice = headroom.loso_per_task(val, test)
    assert choice[0, 0] == 1 and scores[0, 0] == test[1, 0, 0]
    # Seeds 1 and 2 see candidate 0's seed-0 value: (10 + 0) / 2 > 0.6.
    assert list(choice[0, 1:]) == [0, 0]
    single, single_choice = headroom.loso_single(val, test)
    assert np.array_equal(single, scores) and np.array_equal(single_choice, choice)


def test_stratified_bootstrap_intervals(headroom):
    rng = np.random.default_rng(0)
    constant = np.full((5, 4), 0.25)
    assert headroom.stratified_bootstrap(constant, rng, 500) == pytest.approx((0.25, 0.25))
    values = rng.normal(1.0, 1.0, (30, 5))
    low, high = headroom.stratified_bootstrap(values, rng, 2000)
    assert low < values.mean() < high and 0.5 < low and high < 1.5
    assert headroom.verdict((low, high)) == "room (CI above 0)"
    assert headroom.verdict((-0.1, 0.2)).startswith("within noise")
    assert headroom.verdict((-0.3, -0.1)).startswith("negative")


def test_candidates_stay_in_their_box(headroom):
    for config in headroom.constant_candidates(12, 0):
        for p, (lo, hi) in headroom.BOX.items():
            assert lo <= config[p] <= hi
    shapes = set()
    for config in headroom.schedule_candidates(12, 1):
        schedule = headroom.loss_schedule(config)  # LossSchedule checks the ranges itself
        shapes.add(config["shape"])
        assert 0.2 <= config["switch"] <= 0.9
        assert set(schedule.parameters) == set(headroom.PARAMETERS)
    assert shapes == set(headroom.SCHEDULE_SHAPES)


def test_wide_distribution_widens_the_default_and_keeps_its_splits_apart():
    from lossgym.tasks import TaskDistribution, TaskSpec

    default, wide = TaskDistribution.default(), TaskDistribution.wide()
    rng = np.random.default_rng(0)
    drawn = [wide.sample(rng) for _ in range(200)]
    assert all(wide.split_of(t) == "train" for t in drawn)
    assert {t.optimizer for t in drawn} == {"adamw", "adam"}
    assert max(t.label_noise for t in drawn) == 0.4 and min(t.weight_decay for t in drawn) == 0
    epochs = [t.epochs for t in drawn]
    assert min(epochs) < 2 and max(epochs) > 25
    # The default task is in both train splits; the default's width 256 only in its own.
    assert default.is_train(TaskSpec(seed=5)) and wide.is_train(TaskSpec(seed=5))
    assert default.is_train(TaskSpec(width=256, seed=5))
    assert not wide.is_train(TaskSpec(width=256, seed=5))
    for split in ("held_out_id", "held_out_ood"):
        assert wide.split_of(wide.sample(rng, split)) == split


def test_render_only_rewrites_the_same_reports_from_the_json(headroom, quick_run):
    out, result = quick_run
    before = {p: p.read_text(encoding="utf-8") for p in out.rglob("report.md")}
    (out / "default" / "report.md").unlink()
    rendered = headroom.main(["--render-only", "--out", str(out)])
    assert list(rendered) == ["default"] and rendered["default"]["summary"] == json.loads(
        json.dumps(result["summary"]))
    assert {p: p.read_text(encoding="utf-8") for p in out.rglob("report.md")} == before
