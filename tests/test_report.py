"""Tests for agents.stats (aggregates, bootstrap, paired tests, temperature scaling) and
agents.report (report contents, figures, atomic writes)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy import special

from agents.report import write_report
from agents.rollout import EpisodeRecord
from agents.stats import bootstrap_ci, iqm, paired_difference, summarise
from lossgym import metrics
from lossgym.tasks import TaskSpec

# --------------------------------------------------------------------------- stats


def test_iqm_known_cases():
    # 8 values: drop 2 from each end, mean of 3, 4, 5, 6.
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    assert iqm([1, 2, 3, 4, 100, -100, 5, 6]) == pytest.approx((2 + 3 + 4 + 5) / 4)
    # Order does not matter; 4 values: drop one each side.
    assert iqm([10.0, 0.0, 2.0, 4.0]) == pytest.approx(3.0)
    assert iqm([7.0]) == 7.0
    assert np.isnan(iqm([]))
    rows = np.array([np.arange(1, 9), np.arange(1, 9) * 2.0])
    np.testing.assert_allclose(iqm(rows, axis=1), [4.5, 9.0])


def test_bootstrap_ci_contains_mean_narrows_and_is_reproducible():
    gen = np.random.default_rng(1)
    small = gen.normal(5.0, 2.0, size=20)
    large = gen.normal(5.0, 2.0, size=2000)
    lo_s, hi_s = bootstrap_ci(small, rng=np.random.default_rng(0))
    lo_l, hi_l = bootstrap_ci(large, rng=np.random.default_rng(0))
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    # Width close to the normal approximation 2 * 1.96 * s / sqrt(n).
    expected = 2 * 1.96 * large.std(ddof=1) / np.sqrt(large.size)
    assert hi_l - lo_l == pytest.approx(expected, rel=0.15)
    # Same seed, same interval; another seed, another one.
    assert bootstrap_ci(small, rng=np.random.default_rng(0)) == (lo_s, hi_s)
    assert bootstrap_ci(small, rng=np.random.default_rng(9)) != (lo_s, hi_s)
    # Non-vectorised statistics work too and give the same as the vectorised route.
    slow = bootstrap_ci(small, stat=lambda v: float(np.mean(v)), rng=np.random.default_rng(0))
    np.testing.assert_allclose(slow, (lo_s, hi_s))
    # A higher level gives a wider interval.
    lo9, hi9 = bootstrap_ci(small, level=0.99, rng=np.random.default_rng(0))
    assert lo9 <= lo_s and hi9 >= hi_s
    assert bootstrap_ci([3.0], rng=np.random.default_rng(0)) == (3.0, 3.0)
    assert all(np.isnan(bootstrap_ci([], rng=np.random.default_rng(0))))
    with pytest.raises(ValueError):
        bootstrap_ci(small, level=1.5, rng=np.random.default_rng(0))


def test_summarise_fields():
    values = np.arange(1.0, 9.0)
    s = summarise(values, np.random.default_rng(0))
    assert s["n"] == 8
    assert s["mean"] == pytest.approx(4.5)
    assert s["iqm"] == pytest.approx(4.5)
    assert s["std"] == pytest.approx(values.std(ddof=1))
    assert s["mean_ci"][0] < 4.5 < s["mean_ci"][1]
    assert s["iqm_ci"][0] <= 4.5 <= s["iqm_ci"][1]
    assert summarise(values, np.random.default_rng(0)) == s


def test_paired_difference_detects_shift():
    gen = np.random.default_rng(2)
    base = gen.normal(0.6, 0.1, size=30)  # large between-task spread ...
    a = base + 0.02 + gen.normal(0, 0.005, size=30)  # ... small, consistent paired shift
    d = paired_difference(a, base, np.random.default_rng(0))
    assert d["n"] == 30
    assert d["mean"] == pytest.approx(np.mean(a - base))
    assert 0 < d["ci_low"] < d["mean"] < d["ci_high"]
    assert d["t_pvalue"] < 1e-6 and d["wilcoxon_pvalue"] < 1e-4


def test_paired_difference_no_shift():
    gen = np.random.default_rng(3)
    base = gen.normal(0.6, 0.1, size=30)
    b = base + gen.normal(0, 0.01, size=30)
    d = paired_difference(b, base, np.random.default_rng(0))
    assert d["ci_low"] < 0 < d["ci_high"]
    assert d["t_pvalue"] > 0.05 and d["wilcoxon_pvalue"] > 0.05


def test_paired_difference_degenerate_cases():
    x = np.array([0.5, 0.6, 0.7])
    same = paired_difference(x, x, np.random.default_rng(0))
    assert same["mean"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    assert same["t_pvalue"] == 1.0 and same["wilcoxon_pvalue"] == 1.0
    const = paired_difference(x + 0.1, x, np.random.default_rng(0))
    assert const["t_pvalue"] == 0.0 and const["mean"] == pytest.approx(0.1)
    one = paired_difference([1.0], [0.5], np.random.default_rng(0))
    assert one["n"] == 1 and np.isnan(one["t_pvalue"])
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0], np.random.default_rng(0))


def _overconfident(n: int, seed: int, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits z with labels drawn from softmax(z), returned as 3 z."""
    gen = np.random.default_rng(seed)
    z = gen.normal(0.0, 1.5, size=(n, classes))
    probs = special.softmax(z, axis=1)
    y = (probs.cumsum(axis=1) > gen.random((n, 1))).argmax(axis=1)
    return 3.0 * z, y


def fit_temperature(z, y):
    """Temperature scaling and ECE exist once, in lossgym.metrics (torch, batched)."""
    return float(metrics.fit_temperature(torch.tensor(z, dtype=torch.float64),
                                         torch.tensor(y)))


def expected_calibration_error(z, y, n_bins=15):
    probs = torch.softmax(torch.tensor(z, dtype=torch.float64), dim=-1)
    conf, pred = probs.max(-1)
    return float(metrics.expected_calibration_error(conf, (pred == torch.tensor(y)).double(),
                                                    n_bins))


def test_temperature_scaling_recovers_temperature_and_lowers_ece():
    val_z, val_y = _overconfident(6000, 0)
    test_z, test_y = _overconfident(6000, 1)
    temperature = fit_temperature(val_z, val_y)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(test_z, test_y)
    after = expected_calibration_error(test_z / temperature, test_y)
    assert after < before / 3
    assert after < 0.03


def test_expected_calibration_error_by_hand():
    # Two samples, confidences 0.9 (correct) and 0.6 (wrong), in different bins of 15.
    logits = np.log(np.array([[0.9, 0.1], [0.4, 0.6]]))
    targets = np.array([0, 0])
    assert expected_calibration_error(logits, targets) == pytest.approx((0.1 + 0.6) / 2)
    # One bin: |mean accuracy - mean confidence|.
    assert expected_calibration_error(logits, targets, n_bins=1) == pytest.approx(
        abs(0.5 - 0.75))


# --------------------------------------------------------------------------- report

RATIOS = {10.0: "held_out_id", 100.0: "held_out_id", 50.0: "held_out_ood"}
SEEDS = range(10)
H = 5


def _split_of(task: TaskSpec) -> str:
    return RATIOS[task.imbalance_ratio]


def _record(task: TaskSpec, method: str, bal: float, params: np.ndarray | None = None,
            diverged: bool = False) -> EpisodeRecord:
    # The test split is balanced, so accuracy is balanced accuracy.
    test = {"accuracy": bal, "balanced_accuracy": bal, "macro_f1": bal - 0.02,
            "ece": 0.1 - bal / 10, "nll": 1.0, "worst_class_recall": bal / 2}
    has = params is not None
    return EpisodeRecord(
        task=task, method=method, params=params if has else np.zeros((0, 0)),
        actions=np.zeros_like(params) if has else np.zeros((0, 0)),
        val_curve=np.linspace(0.1, bal, H + 1), test=test, diverged=diverged,
        parameters=("gamma", "alpha") if has else (),
    )


def _records(agent_gain: float = 0.04) -> list[EpisodeRecord]:
    """agent > logit_adjusted (static) > ldam > ce, with per-task noise shared by all methods."""
    gen = np.random.default_rng(0)
    records = []
    for ratio in RATIOS:
        for seed in SEEDS:
            task = TaskSpec(imbalance_ratio=ratio, seed=seed)
            base = 0.7 - ratio / 1000 + gen.normal(0, 0.03)
            steps = np.linspace(0, 1, H)
            agent_params = np.stack([2 * steps, 0.5 + 0 * steps], 1) + gen.normal(0, .1, (H, 2))
            records += [
                _record(task, "agent", base + agent_gain + gen.normal(0, 0.003), agent_params),
                _record(task, "schedule", base + 0.01 + gen.normal(0, 0.003),
                        np.stack([steps, 0.25 + 0 * steps], 1)),
                _record(task, "ce", base + gen.normal(0, 0.003), diverged=seed == 3),
                _record(task, "logit_adjusted", base + 0.015 + gen.normal(0, 0.003)),
                _record(task, "ldam", base + 0.02 + gen.normal(0, 0.003)),
            ]
    return records


def _write(tmp_path, records, **kw):
    kw = {"agent": "agent", "static_methods": ("ce", "logit_adjusted"), "split_of": _split_of,
          "budget_note": "Budget: 1M steps, 10 seeds.", "rng_seed": 0, **kw}
    return write_report(tmp_path, records, **kw)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _row(section: str, first_cell: str) -> list[str]:
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def _column(section: str, title: str) -> int:
    """Index of the first table column titled ``title`` in ``section``."""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if title in cells:
            return cells.index(title)
    raise AssertionError(f"no column {title!r}")


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]


def test_write_report_contents_and_files(tmp_path):
    records = _records()
    curve = np.stack([np.arange(0, 1000, 100), np.linspace(-1, 1, 10)], 1)
    path = _write(tmp_path, records, learning_curve=curve)
    assert path == tmp_path / "report.md"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "forest.png", "heatmap.png", "learning_curve.png", "report.md", "trajectories.png"]
    for name in ("forest.png", "heatmap.png", "learning_curve.png", "trajectories.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = path.read_text()
    assert text.startswith("# ")
    assert "Budget: 1M steps, 10 seeds." in text
    for method in ("agent", "schedule", "ce", "logit_adjusted", "ldam"):
        assert f"`{method}`" in text
    for heading in ("in distribution", "out of distribution", "## All held-out tasks",
                    "by imbalance ratio", "## Verdict"):
        assert heading in text
    # ldam is the best non-agent method, logit_adjusted the best static loss.
    assert "Best baseline: `ldam`" in text and "best: `logit_adjusted`" in text

    # Agent listed first in each method table.
    table = _section(text, "## All held-out tasks")
    methods = [c.split("|")[1].strip() for c in table.splitlines() if c.startswith("| `")]
    assert methods[:5] == ["`agent`", "`schedule`", "`ce`", "`logit_adjusted`", "`ldam`"]

    # Table numbers match a recomputation.
    for heading, split in (("## All held-out tasks", None),
                           ("## Held-out tasks, out of distribution", "held_out_ood")):
        section = _section(text, heading)
        for method in ("agent", "ce"):
            recs = [r for r in records if r.method == method
                    and (split is None or _split_of(r.task) == split)]
            row = _row(section, f"`{method}`")
            assert int(row[1]) == len(recs)
            assert int(row[2]) == sum(r.diverged for r in recs)
            for title, key in (("Bal. acc.", "balanced_accuracy"), ("ECE", "ece")):
                col = _column(section, f"{title} mean [95% CI]")
                s = summarise([r.test[key] for r in recs], np.random.default_rng(0))
                mean, lo, hi = _numbers(row[col])
                np.testing.assert_allclose([mean, lo, hi],
                                           100 * np.array([s["mean"], *s["mean_ci"]]),
                                           atol=0.006)
                assert _numbers(row[col + 1])[0] == pytest.approx(100 * s["iqm"], abs=0.006)

    # Paired difference vs the reference on all tasks matches a recomputation: its interval
    # resamples seeds within the three tasks (a stratified bootstrap).
    ce_row = [line for line in table.splitlines()
              if line.startswith("| `ce` (reference)") and "Bal. acc." in line][0]
    cells = [c.strip() for c in ce_row.strip().strip("|").split("|")]
    a = np.array([r.test["balanced_accuracy"] for r in records if r.method == "agent"])
    b = np.array([r.test["balanced_accuracy"] for r in records if r.method == "ce"])
    strata = [r.task.imbalance_ratio for r in records if r.method == "agent"]
    d = paired_difference(a, b, np.random.default_rng(0), strata=strata)
    assert d["n_strata"] == 3
    assert int(cells[2]) == 30
    np.testing.assert_allclose(_numbers(cells[3] + cells[4]),
                               100 * np.array([d["mean"], d["ci_low"], d["ci_high"]]),
                               atol=0.006)

    # Per-ratio table: one row per ratio, 10 pairs each.
    ratio_table = _section(text, "by imbalance ratio")
    for ratio in ("10", "50", "100"):
        assert _row(ratio_table, ratio)[2] == "10"

    verdict = _section(text, "## Verdict")
    assert verdict.count("**PASS**") == 3 and "**FAIL**" not in verdict
    assert "3 of 3 evaluated targets hold" in verdict


def test_section_headers_count_what_the_runs_column_counts(tmp_path):
    # 3 base tasks (2 in distribution, 1 out) x 10 seeds, 5 methods.
    text = _write(tmp_path, _records()).read_text()
    for heading, tasks, runs in (("## All held-out tasks", 3, 30),
                                 ("## Held-out tasks, in distribution", 2, 20),
                                 ("## Held-out tasks, out of distribution", 1, 10)):
        section = _section(text, heading)
        base = "task" if tasks == 1 else "tasks"
        assert (f"{tasks} base {base} × 10 seeds = {runs} runs per method (the Runs column); "
                f"5 methods, {5 * runs} runs in all.") in section
        for method in ("agent", "ce", "ldam"):
            assert _row(section, f"`{method}`")[1] == str(runs)
    # Base tasks with different numbers of seeds say so.
    fewer = [r for r in _records() if r.task.imbalance_ratio != 100.0 or r.task.seed < 4]
    section = _section(_write(tmp_path / "fewer", fewer).read_text(), "## All held-out tasks")
    assert "3 base tasks with 4–10 seeds each = 24 runs per method" in section
    assert _row(section, "`agent`")[1] == "24"


def test_accuracy_on_a_balanced_test_split_is_said_once_not_listed(tmp_path):
    text = _write(tmp_path, _records()).read_text()
    assert text.count("Accuracy equals balanced accuracy on every run") == 1
    assert "Accuracy mean" not in text and "| Accuracy |" not in text
    assert "Bal. acc. mean [95% CI]" in text
    # Where they differ on a run (an unbalanced test split), accuracy keeps its columns.
    records = _records()
    records[0].test["accuracy"] += 0.01
    text = _write(tmp_path / "unbalanced", records).read_text()
    assert "Accuracy equals balanced accuracy" not in text
    table = _section(text, "## All held-out tasks")
    assert _column(table, "Accuracy mean [95% CI]") == _column(table, "Macro-F1 IQM [95% CI]") + 1
    assert "| Accuracy |" in table


def test_a_gain_bought_with_calibration_is_marked_beside_it(tmp_path):
    gen = np.random.default_rng(5)
    records = _records()
    for r in records:
        if r.method == "agent":  # better balanced accuracy, clearly worse ECE
            r.test["ece"] += 0.05 + gen.normal(0, 0.003)
        elif r.method == "ldam":  # better balanced accuracy, ECE as noisy as it is
            r.test["ece"] += gen.normal(0, 0.01)
        elif r.method == "logit_adjusted":  # worse ECE, the same balanced accuracy as ce
            r.test["balanced_accuracy"] -= 0.015
            r.test["accuracy"] -= 0.015
            r.test["ece"] += 0.05
    text = _write(tmp_path, records).read_text()
    for heading in ("## All held-out tasks", "## Held-out tasks, in distribution",
                    "## Held-out tasks, out of distribution"):
        section = _section(text, heading)
        column = _column(section, "Bal. acc. mean [95% CI]")
        assert _row(section, "`agent`")[column].endswith(" †")
        for method in ("schedule", "ce", "logit_adjusted", "ldam"):
            assert "†" not in _row(section, f"`{method}`")[column], method
        note = [line for line in section.splitlines() if line.startswith("† ")]
        assert len(note) == 1
        assert "`AdaptiveLoss.fit_temperature(val_logits, val_targets)`" in note[0]
        listed = [line for line in section.splitlines() if line.startswith("- `")]
        assert len(listed) == 1 and listed[0].startswith("- `agent`: balanced accuracy +4.")
    # The listed ECE difference is the paired one against ce, stratified by task.
    note = [line for line in _section(text, "## All held-out tasks").splitlines()
            if line.startswith("- `agent`")][0]
    a = np.array([r.test["ece"] for r in records if r.method == "agent"])
    b = np.array([r.test["ece"] for r in records if r.method == "ce"])
    strata = [r.task.imbalance_ratio for r in records if r.method == "agent"]
    d = paired_difference(a, b, np.random.default_rng(0), strata=strata)
    assert f"ECE {100 * d['mean']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]" \
        in note
    assert "Calibration: `agent`'s balanced accuracy comes with an ECE worse" in text
    # Without the trade, no mark and no note.
    text = _write(tmp_path / "calibrated", _records()).read_text()
    assert "†" not in text and "Calibration:" not in text


def test_tasks_in_no_split_get_a_section_of_their_own(tmp_path):
    # An evaluation made with another distribution: split_of knows no split for ratio 50.
    text = _write(tmp_path, _records(), split_of=lambda t: RATIOS[t.imbalance_ratio]
                  if t.imbalance_ratio != 50.0 else None).read_text()
    section = _section(text, "## Tasks in no split of the task distribution")
    assert "1 base task × 10 seeds = 10 runs per method" in section
    assert _row(_section(text, "by imbalance ratio"), "50")[1] == "no split"


def test_write_report_fail_verdict_without_learning_curve(tmp_path):
    path = _write(tmp_path, _records(agent_gain=0.0), best_baseline="ldam")
    text = path.read_text()
    verdict = _section(text, "## Verdict")
    assert "1. **FAIL**" in verdict and "2. **FAIL**" in verdict
    assert "Best baseline: `ldam`" in text and "(the non-agent" not in text
    assert not (tmp_path / "learning_curve.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.png", "heatmap.png",
                                                          "report.md", "trajectories.png"]


def test_write_report_without_agent_or_splits(tmp_path):
    records = [r for r in _records() if r.method != "agent"]
    text = write_report(tmp_path, records).read_text()
    assert "## All held-out tasks" in text and "in distribution" not in text
    assert "no targets were evaluated" in text
    with pytest.raises(ValueError, match="agent"):
        write_report(tmp_path, records, agent="missing")
    with pytest.raises(ValueError):
        write_report(tmp_path, records, learning_curve=np.zeros(5))


def test_write_report_is_atomic(tmp_path, monkeypatch):
    path = _write(tmp_path, _records())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_savefig = Figure.savefig
    calls = []

    def failing_savefig(self, fname, *args, **kwargs):
        calls.append(fname)
        if len(calls) == 2:  # the second figure: write half a file, then fail
            with open(fname, "wb") as handle:
                handle.write(b"\x89PNG partial")
            raise RuntimeError("disk full")
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tmp_path, _records(agent_gain=0.0), budget_note="a different note")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert "Budget: 1M steps" in path.read_text()
    # Temporary files were beside the targets and are gone.
    assert all(str(tmp_path) in str(f) for f in calls)
    assert not list(tmp_path.glob(".*"))


# --------------------------------------------------------------------------- figures


def _rng0():
    return np.random.default_rng(0)


def test_forest_plot_sorted_paired_differences_with_stratified_cis():
    from agents.report import _forest_data, _forest_figure

    records = _records()
    methods = ["agent", "schedule", "ce", "logit_adjusted", "ldam"]
    titles, panels = _forest_data(records, "ce", "ldam", methods, _rng0)
    assert titles == ["vs ce", "vs best baseline ldam"]
    assert set(panels["vs ce"]) == {"agent", "schedule", "logit_adjusted", "ldam"}
    assert set(panels["vs best baseline ldam"]) == {"agent", "schedule", "ce", "logit_adjusted"}
    a = np.array([r.test["balanced_accuracy"] for r in records if r.method == "logit_adjusted"])
    b = np.array([r.test["balanced_accuracy"] for r in records if r.method == "ce"])
    strata = [r.task.imbalance_ratio for r in records if r.method == "logit_adjusted"]
    expected = paired_difference(a, b, _rng0(), strata=strata)
    got = panels["vs ce"]["logit_adjusted"]
    assert (got["mean"], got["ci_low"], got["ci_high"]) == pytest.approx(
        (expected["mean"], expected["ci_low"], expected["ci_high"]))

    fig = _forest_figure(records, "ce", "ldam", methods, "agent", _rng0)
    axes = fig.axes
    assert len(axes) == 2
    # Bottom to top: increasing difference vs ce, the reference itself at 0.
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == ["ce", "schedule", "logit_adjusted", "ldam", "agent"]
    # A readable size, whatever the number of methods: not thousands of pixels wide.
    width, height = fig.get_size_inches() * 120
    assert width < 1600 and height < 1000
    # The agent's interval is drawn where its CI is.
    agent = panels["vs ce"]["agent"]
    xs = [line.get_xdata() for line in axes[0].get_lines()
          if list(line.get_ydata()) == [4, 4] and len(line.get_xdata()) == 2]
    np.testing.assert_allclose(xs[0], 100 * np.array([agent["ci_low"], agent["ci_high"]]))


def test_heatmap_holds_mean_paired_differences_per_task():
    from agents.report import _heatmap_figure

    records = _records()
    methods = ["agent", "schedule", "ce", "logit_adjusted", "ldam"]
    fig = _heatmap_figure(records, "ce", methods, _split_of)
    ax = fig.axes[0]
    cells = np.asarray(ax.images[0].get_array())
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows == ["agent", "ldam", "logit_adjusted", "schedule"]  # best first; no ce row
    # Held-out ID tasks (rho 10, 100) first, then OOD (rho 50).
    assert [c.split("ρ=")[1].split(" ")[0] for c in cols] == ["10", "100", "50"]
    assert "held-out ID" in cols[0] and "held-out OOD" in cols[2]
    for i, method in enumerate(rows):
        for j, ratio in enumerate((10.0, 100.0, 50.0)):
            a = [r.test["balanced_accuracy"] for r in records
                 if r.method == method and r.task.imbalance_ratio == ratio]
            b = [r.test["balanced_accuracy"] for r in records
                 if r.method == "ce" and r.task.imbalance_ratio == ratio]
            assert cells[i, j] == pytest.approx(100 * np.mean(np.subtract(a, b)))
    # Without reference records: the balanced accuracy itself.
    fig = _heatmap_figure([r for r in records if r.method != "ce"], "ce", methods, None)
    cells = np.asarray(fig.axes[0].images[0].get_array())
    assert cells.shape == (4, 3) and np.all((cells > 50) & (cells < 100))


def test_trajectories_show_the_agent_against_its_base_rule(tmp_path):
    from agents.report import _trajectories_figure

    records = _records()
    methods = ["agent", "schedule", "ce", "logit_adjusted", "ldam"]
    fig = _trajectories_figure(records, methods, "agent", base_rule="schedule")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["agent", "schedule (base rule)"]
    assert "against its base rule schedule" in fig._suptitle.get_text()
    gamma = fig.axes[0]
    base = [line for line in gamma.get_lines() if line.get_label() == "schedule (base rule)"]
    np.testing.assert_allclose(base[0].get_ydata(), np.linspace(0, 1, H))
    agent = [line for line in gamma.get_lines() if line.get_label() == "agent"][0]
    expected = np.mean([r.params[:, 0] for r in records if r.method == "agent"], axis=0)
    np.testing.assert_allclose(agent.get_ydata(), expected)
    # Without a base rule the other methods are grey context; write_report passes it on.
    fig = _trajectories_figure(records, methods, "agent")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["agent", "other methods (means)"]
    _write(tmp_path, records, base_rule="schedule")
    assert (tmp_path / "trajectories.png").stat().st_size > 0


def test_verdict_targets_control_and_no_task_worse_than_ce(tmp_path):
    records = _records()
    agent = {r.task: r for r in records if r.method == "agent"}
    replay = [_record(t, "agent_task_replay", r.test["balanced_accuracy"] - 0.01)
              for t, r in agent.items()]
    verdict = _section(_write(tmp_path, records + replay).read_text(), "## Verdict")
    assert "3. **PASS**" in verdict and "4. **PASS**" in verdict
    assert "4 of 4 evaluated targets hold" in verdict
    assert "What the policy adds" not in verdict  # no mean-action or base-rule runs
    # The agent's gain over a constant at its mean action and over its base rule.
    constant = [_record(t, "agent_mean_action", r.test["balanced_accuracy"] - 0.02)
                for t, r in agent.items()]
    base = [_record(t, "base_rule", r.test["balanced_accuracy"] + 0.03)
            for t, r in agent.items()]
    verdict = _section(_write(tmp_path / "adds", records + replay + constant + base
                              ).read_text(), "## Verdict")
    assert "`agent` − `agent_mean_action`: +2.00 points [+2.00, +2.00]" in verdict
    assert "`agent` − `base_rule`: -3.00 points [-3.00, -3.00]" in verdict
    # Replaying the task's mean trajectory does as well: a schedule, not control.
    same = [_record(t, "agent_task_replay", r.test["balanced_accuracy"])
            for t, r in agent.items()]
    verdict = _section(_write(tmp_path / "same", records + same).read_text(), "## Verdict")
    assert "3. **FAIL**" in verdict
    # One base task (ratio 100) where the agent loses to cross-entropy on every seed.
    ce = {r.task: r for r in records if r.method == "ce"}
    worse = [r if r.method != "agent" or r.task.imbalance_ratio != 100 else
             _record(r.task, "agent", ce[r.task].test["balanced_accuracy"] - 0.05,
                     r.params) for r in records]
    verdict = _section(_write(tmp_path / "worse", worse).read_text(), "## Verdict")
    assert "4. **FAIL**" in verdict and "worse on 1" in verdict
    # The same test on the other methods, the agent's ablations and the reference left out:
    # ldam loses to cross-entropy on every seed of two tasks.
    lower = sorted(RATIOS)[:2]
    worse = [r if r.method != "ldam" or r.task.imbalance_ratio not in lower else
             _record(r.task, "ldam", ce[r.task].test["balanced_accuracy"] - 0.05
                     - r.task.seed / 1e3) for r in worse + replay]
    verdict = _section(_write(tmp_path / "others", worse).read_text(), "## Verdict")
    assert (f"The same test on the other methods (how many of the {len(RATIOS)} they are "
            "worse than `ce` on): `logit_adjusted` 0, `schedule` 0, `ldam` 2.") in verdict


def test_targets_without_paired_runs_are_not_evaluated(tmp_path):
    # Only the agent and cross-entropy: targets 2 and 3 have nothing to compare with.
    records = [r for r in _records() if r.method in ("agent", "ce")]
    verdict = _section(_write(tmp_path, records, static_methods=("ce",)).read_text(),
                       "## Verdict")
    assert "1. **PASS**: `agent` beats the best baseline `ce` with a 95 % CI above zero" \
        in verdict
    assert "2. **N/A**: at least 1 points above `logit_adjusted` (no paired runs of it)." \
        in verdict
    assert "3. **N/A**: beats `agent_task_replay` (no paired runs of it)." in verdict
    assert "**Overall: 2 of 2 evaluated targets hold.**" in verdict
