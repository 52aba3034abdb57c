"""Tests for agents.stats' stratified bootstrap (resampling seeds within tasks)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agents.stats import (
    bootstrap_ci,
    paired_difference,
    stratified_bootstrap_ci,
    stratified_bootstrap_samples,
    stratified_mean,
)


def _exact_distribution(values_by_task, stat):
    """Every stratified resample, enumerated: {statistic: probability}."""
    per_task = [list(itertools.product(v, repeat=len(v))) for v in values_by_task]
    sizes = np.array([len(v) for v in values_by_task], dtype=np.float64)
    out: dict[float, float] = {}
    total = np.prod([len(p) for p in per_task])
    for combo in itertools.product(*per_task):
        means = np.array([np.mean(c) for c in combo])
        value = means.mean() if stat == "task_mean" else (means * sizes).sum() / sizes.sum()
        key = round(float(value), 12)
        out[key] = out.get(key, 0.0) + 1.0 / total
    return out


@pytest.mark.parametrize("stat", ["task_mean", "pooled_mean"])
def test_stratified_bootstrap_matches_exact_enumeration(stat):
    data = [[0.0, 1.0, 3.0], [2.0, 5.0]]  # 27 x 4 = 108 equally likely resamples
    exact = _exact_distribution(data, stat)
    boot = stratified_bootstrap_samples(data, stat, n_boot=200_000, rng=np.random.default_rng(0))
    # Every resample's statistic is one of the enumerated values ...
    keys = np.array(sorted(exact))
    assert np.all(np.min(np.abs(boot[:, None] - keys[None, :]), axis=1) < 1e-9)
    # ... with the enumerated frequencies.
    for key, prob in exact.items():
        assert np.mean(np.abs(boot - key) < 1e-9) == pytest.approx(prob, abs=0.004)
    # Mean and variance of the bootstrap distribution, exactly: within-task variances only.
    sizes = np.array([3.0, 2.0])
    var_t = np.array([np.var(v) for v in data])  # ddof 0: the bootstrap's
    if stat == "task_mean":
        mean, var = np.mean([np.mean(v) for v in data]), np.sum(var_t / sizes) / 4
    else:
        mean, var = np.mean(np.concatenate(data)), np.sum(var_t * sizes) / sizes.sum() ** 2
    assert stratified_mean(data, stat) == pytest.approx(mean)
    assert boot.mean() == pytest.approx(mean, abs=0.005)
    assert boot.var() == pytest.approx(var, rel=0.02)


def test_stratified_bootstrap_ci_by_hand():
    # Task A: {0, 1} gives task means 0, 0.5, 0.5, 1 (each 1/4); task B: one seed, always 2.
    # Mean of task means: 1 (1/4), 1.25 (1/2), 1.5 (1/4); the 5 % and 95 % quantiles of a
    # large sample fall inside the outer plateaus, so the 90 % interval is exactly (1, 1.5).
    data = [np.array([0.0, 1.0]), np.array([2.0])]
    low, high = stratified_bootstrap_ci(data, "task_mean", level=0.9, n_boot=4000,
                                        rng=np.random.default_rng(1))
    assert (low, high) == (1.0, 1.5)
    # Pooled: (sum of A's resample + 2) / 3 = 2/3, 1, 1, 4/3.
    low, high = stratified_bootstrap_ci(data, "pooled_mean", level=0.9, n_boot=4000,
                                        rng=np.random.default_rng(1))
    assert low == pytest.approx(2 / 3) and high == pytest.approx(4 / 3)


def test_stratified_bootstrap_one_seed_per_task_has_zero_width():
    data = [[0.3], [-1.0], [2.5], [0.1]]
    low, high = stratified_bootstrap_ci(data, rng=np.random.default_rng(0))
    assert low == high == pytest.approx(np.mean([0.3, -1.0, 2.5, 0.1]))
    # The ordinary bootstrap over the same values treats the tasks as random: wide.
    lo_u, hi_u = bootstrap_ci(np.ravel(data), rng=np.random.default_rng(0))
    assert hi_u - lo_u > 1.0


def test_stratified_bootstrap_ignores_between_task_spread_and_is_reproducible():
    gen = np.random.default_rng(3)
    offsets = np.array([-3.0, 0.0, 4.0, 10.0])  # tasks differ a lot ...
    data = [o + gen.normal(0, 0.1, size=10) for o in offsets]  # ... seeds barely
    low, high = stratified_bootstrap_ci(data, rng=np.random.default_rng(0))
    assert low < stratified_mean(data) < high
    # Width near the normal approximation of the within-task noise: 2 * 1.96 * 0.1 / sqrt(40).
    assert high - low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(40), rel=0.3)
    lo_u, hi_u = bootstrap_ci(np.concatenate(data), rng=np.random.default_rng(0))
    assert hi_u - lo_u > 20 * (high - low)
    assert stratified_bootstrap_ci(data, rng=np.random.default_rng(0)) == (low, high)
    assert stratified_bootstrap_ci(data, rng=np.random.default_rng(5)) != (low, high)
    lo9, hi9 = stratified_bootstrap_ci(data, level=0.99, rng=np.random.default_rng(0))
    assert lo9 <= low and hi9 >= high


def test_stratified_bootstrap_edge_cases():
    assert all(np.isnan(stratified_bootstrap_ci([], rng=0)))
    assert all(np.isnan(stratified_bootstrap_ci([[], []], rng=0)))
    assert np.isnan(stratified_mean([[]]))
    # Empty tasks are left out: they do not count in the mean over tasks.
    assert stratified_mean([[1.0, 3.0], [], [4.0]]) == pytest.approx(3.0)
    assert stratified_mean([[1.0, 3.0], [4.0]], "pooled_mean") == pytest.approx(8 / 3)
    with pytest.raises(ValueError, match="stat"):
        stratified_bootstrap_ci([[1.0]], stat="median")
    with pytest.raises(ValueError, match="level"):
        stratified_bootstrap_ci([[1.0]], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        stratified_bootstrap_samples([[1.0]], n_boot=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        stratified_bootstrap_ci([np.zeros((2, 2))])


def test_paired_difference_with_strata():
    gen = np.random.default_rng(4)
    task = np.repeat(np.arange(5), 8)
    base = np.array([0.5, 0.6, 0.7, 0.8, 0.9])[task] + gen.normal(0, 0.05, task.size)
    a = base + 0.01 + gen.normal(0, 0.003, task.size)
    plain = paired_difference(a, base, np.random.default_rng(0))
    strat = paired_difference(a, base, np.random.default_rng(0), strata=[f"t{t}" for t in task])
    assert strat["n_strata"] == 5 and "n_strata" not in plain
    # Same point estimate and tests; the interval is the stratified bootstrap of the pooled mean.
    for key in ("mean", "t_pvalue", "wilcoxon_pvalue", "n"):
        assert strat[key] == plain[key]
    groups = [(a - base)[task == t] for t in range(5)]
    expected = stratified_bootstrap_ci(groups, "pooled_mean", rng=np.random.default_rng(0))
    assert (strat["ci_low"], strat["ci_high"]) == expected
    assert strat["ci_low"] < strat["mean"] < strat["ci_high"]
    # One pair per task: a zero-width interval at the mean.
    one = paired_difference([1.0, 2.0, 4.0], [0.0, 0.0, 0.0], 0, strata=["a", "b", "c"])
    assert one["ci_low"] == pytest.approx(7 / 3) and one["ci_high"] == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="strata"):
        paired_difference([1.0, 2.0], [0.0, 0.0], 0, strata=["a"])


def test_large_bootstraps_draw_in_blocks_with_the_same_resamples(monkeypatch):
    """Memory stays bounded for a large n_boot: the indices are drawn in blocks, and for the
    plain bootstrap the blocks draw exactly the resamples of one call (odd sample sizes too)."""
    import agents.stats as stats

    values = np.random.default_rng(1).normal(size=7)
    whole = stats.bootstrap_ci(values, np.median, 0.9, 1001, rng=np.random.default_rng(3))
    by_task = [values[:3], values[3:]]
    whole_strat = stratified_bootstrap_samples(by_task, n_boot=1001, rng=np.random.default_rng(3))
    monkeypatch.setattr(stats, "_BLOCK", 50)
    assert stats._blocks(1001, 7) == [6] * 166 + [5]
    assert stats.bootstrap_ci(values, np.median, 0.9, 1001, rng=np.random.default_rng(3)) == whole
    blocked = stratified_bootstrap_samples(by_task, n_boot=1001, rng=np.random.default_rng(3))
    assert blocked.shape == whole_strat.shape == (1001,)
    assert abs(blocked.mean() - whole_strat.mean()) < 0.05
