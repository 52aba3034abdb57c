"""Statistics for reports: robust aggregates, bootstrap intervals, paired tests.

Everything here is plain numpy/scipy. Functions that resample take a seeded
:class:`numpy.random.Generator` (or an int seed, turned into one with
:func:`numpy.random.default_rng`) and never touch global random state, so a report is
reproducible from its seed.

* :func:`iqm`: interquartile mean, the aggregate recommended by Agarwal et al. (2021),
  "Deep RL at the edge of the statistical precipice" (rliable): the mean of the middle 50 %.
* :func:`bootstrap_ci`: percentile bootstrap confidence interval of any statistic.
* :func:`stratified_bootstrap_ci`: percentile bootstrap interval of a mean over several tasks
  that resamples seeds within each task (a stratified bootstrap): the tasks are fixed, so the
  interval reflects seed noise, not the spread between tasks (:func:`stratified_mean` is its
  statistic, :func:`stratified_bootstrap_samples` its resampled values).
* :func:`summarise`: mean and IQM with bootstrap intervals, standard deviation, count.
* :func:`paired_difference`: mean paired difference with a bootstrap interval (stratified by
  task when ``strata`` are given), paired t-test and Wilcoxon signed-rank p-values.

Temperature scaling and the expected calibration error live in :mod:`lossgym.metrics` (once):
the engine computes the test ECE before and after scaling that the reports show.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from scipy import stats as sps

from lossgym import _checks as checks

__all__ = [
    "bootstrap_ci",
    "iqm",
    "paired_contrast",
    "paired_difference",
    "run_key",
    "stratified_bootstrap_ci",
    "stratified_bootstrap_samples",
    "stratified_mean",
    "summarise",
]

RngLike = np.random.Generator | int | None

#: Statistics of :func:`stratified_bootstrap_ci`: the mean over tasks of each task's mean (every
#: task weighs the same), or the mean of all values pooled (every value weighs the same).
STRATIFIED_STATS = ("task_mean", "pooled_mean")



def _as_array(values: object, name: str = "values") -> np.ndarray:
    """``values`` as float64 numbers; anything that is not real numbers (None, strings, dicts,
    complex numbers) raises ``ValueError`` naming ``name``."""
    bad = values is None or isinstance(values, (str, bytes, dict))
    if not bad:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", np.exceptions.ComplexWarning)
                arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, np.exceptions.ComplexWarning):
            bad = True
    if bad:
        raise ValueError(f"{name}={values!r:.80} is invalid: must be real numbers (a list or "
                         "an array)")
    return arr


def _as_1d(values: object, name: str = "values") -> np.ndarray:
    arr = _as_array(values, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_level(level: float) -> None:
    checks.real("level", level, 0.0, 1.0, open_low=True, open_high=True)


def iqm(values: object, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean after trimming 25 % of the values from each end.

    As in rliable (``scipy.stats.trim_mean(x, 0.25)``): with ``n`` values, ``int(0.25 n)`` are
    dropped from each side of the sorted values, e.g. ``iqm(range(1, 9)) = mean(3, 4, 5, 6)``.

    Args:
        values: the values (any shape; flattened when ``axis`` is None).
        axis: the axis to reduce over; None reduces over all values.

    Returns:
        A float when ``axis`` is None, otherwise an array; NaN for no values.
    """
    arr = _as_array(values)
    if axis is None:
        arr = arr.reshape(-1)
        if arr.size == 0:
            return float("nan")
        return float(sps.trim_mean(arr, 0.25))
    return np.asarray(sps.trim_mean(arr, 0.25, axis=axis), dtype=np.float64)


def _apply_rows(stat: Callable[..., object], samples: np.ndarray) -> np.ndarray:
    """``stat`` of each row of ``samples`` ``[B, n]``, vectorised when ``stat`` takes ``axis``."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples], dtype=np.float64)


#: The most resamples a bootstrap takes: its ``n_boot`` values are held at once (80 MB here),
#: and beyond about 10^5 more resamples change no digit a report prints.
MAX_BOOT = 10**7
#: Resampled indices are drawn in blocks of at most this many (32 MB), so that memory does
#: not grow with ``n_boot`` times the sample size.
_BLOCK = 1 << 22


def _check_boot(n_boot: object) -> int:
    return checks.integer("n_boot", n_boot, 1, MAX_BOOT)


def _blocks(n_boot: int, width: int) -> list[int]:
    """Row counts of the blocks ``n_boot`` resamples of ``width`` draws each are made in: one
    block when it fits in :data:`_BLOCK` (then the draws are those of a single call)."""
    if n_boot * width <= _BLOCK:
        return [n_boot]
    rows = max(2, _BLOCK // width // 2 * 2)  # even, so each block uses whole 64-bit words
    return [rows] * (n_boot // rows) + ([n_boot % rows] if n_boot % rows else [])


def bootstrap_ci(
    values: object,
    stat: Callable[..., object] = np.mean,
    level: float = 0.95,
    n_boot: int = 2000,
    *,
    rng: RngLike = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat(values)``.

    Draws ``n_boot`` resamples of the values with replacement, computes ``stat`` of each and
    returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those.

    Args:
        values: one-dimensional sample.
        stat: the statistic; called as ``stat(samples, axis=1)`` on all resamples at once when it
            accepts ``axis`` (``np.mean``, ``np.median``, :func:`iqm`), otherwise per resample.
        level: confidence level in (0, 1).
        n_boot: number of bootstrap resamples.
        rng: seeded generator (or seed) for the resampling. Pass one explicitly for
            reproducibility; None draws fresh OS entropy.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values; both equal to ``stat(values)`` for one.
    """
    _check_level(level)
    n_boot = _check_boot(n_boot)
    arr = _as_1d(values)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        value = float(np.asarray(stat(arr), dtype=np.float64))
        return value, value
    gen = np.random.default_rng(rng)
    boot = np.concatenate([_apply_rows(stat, arr[gen.integers(0, arr.size, size=(rows, arr.size))])
                           for rows in _blocks(n_boot, arr.size)])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _strata_arrays(values_by_task: Sequence[object]) -> list[np.ndarray]:
    """The non-empty one-dimensional float arrays of ``values_by_task``."""
    arrays = [_as_1d(v, f"values_by_task[{i}]") for i, v in enumerate(values_by_task)]
    return [a for a in arrays if a.size]


def _stratified_stat(task_means: np.ndarray, sizes: np.ndarray, stat: str) -> np.ndarray:
    """``stat`` over the last axis of per-task means ``[..., T]`` of tasks of ``sizes [T]``."""
    if stat == "task_mean":
        return task_means.mean(axis=-1)
    return (task_means * sizes).sum(axis=-1) / sizes.sum()


def _check_stat(stat: str) -> None:
    if stat not in STRATIFIED_STATS:
        raise ValueError(f"stat={stat!r} is not known; choose one of {STRATIFIED_STATS}")


def stratified_bootstrap_samples(
    values_by_task: Sequence[object],
    stat: str = "task_mean",
    n_boot: int = 2000,
    *,
    rng: RngLike = None,
) -> np.ndarray:
    """The bootstrap distribution behind :func:`stratified_bootstrap_ci`: ``[n_boot]`` values.

    Each resample draws, for every task independently, as many values as the task has, with
    replacement, from that task's values only; then computes ``stat`` (see
    :func:`stratified_bootstrap_ci`). Tasks without values are left out; an empty array is
    returned when no task has one.
    """
    _check_stat(stat)
    n_boot = _check_boot(n_boot)
    arrays = _strata_arrays(values_by_task)
    if not arrays:
        return np.zeros(0)
    gen = np.random.default_rng(rng)
    sizes = np.array([a.size for a in arrays], dtype=np.float64)
    out = []
    for rows in _blocks(n_boot, max(a.size for a in arrays) + len(arrays)):
        means = np.empty((rows, len(arrays)))
        for t, arr in enumerate(arrays):
            means[:, t] = arr[gen.integers(0, arr.size, size=(rows, arr.size))].mean(axis=1)
        out.append(_stratified_stat(means, sizes, stat))
    return np.concatenate(out)


def stratified_bootstrap_ci(
    values_by_task: Sequence[object],
    stat: str = "task_mean",
    level: float = 0.95,
    n_boot: int = 2000,
    *,
    rng: RngLike = None,
) -> tuple[float, float]:
    """Percentile interval of a mean over tasks, from a bootstrap that resamples within tasks.

    ``values_by_task[t]`` holds task t's values, one per seed (for a comparison: the per-seed
    paired differences on that task). The tasks are fixed; only the seeds are random, so each
    resample draws each task's seeds with replacement from that task alone (a stratified
    bootstrap) and the interval reflects seed noise, not which tasks were chosen. With one seed
    per task the interval has zero width.

    Args:
        values_by_task: one one-dimensional sample per task (tasks without values are left
            out).
        stat: ``"task_mean"``: the mean over tasks of each task's mean (every task weighs the
            same); ``"pooled_mean"``: the mean of all values (every seed weighs the same; tasks
            with more seeds weigh more). Both are equal when every task has as many seeds.
        level: confidence level in (0, 1).
        n_boot: number of bootstrap resamples.
        rng: seeded generator (or seed) for the resampling; None draws fresh OS entropy.

    Returns:
        ``(low, high)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
        :func:`stratified_bootstrap_samples`; ``(nan, nan)`` when no task has values.
    """
    _check_level(level)
    boot = stratified_bootstrap_samples(values_by_task, stat, n_boot, rng=rng)
    if boot.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(low), float(high)


def stratified_mean(values_by_task: Sequence[object], stat: str = "task_mean") -> float:
    """The statistic :func:`stratified_bootstrap_ci` resamples, on the data themselves; NaN
    when no task has values."""
    _check_stat(stat)
    arrays = _strata_arrays(values_by_task)
    if not arrays:
        return float("nan")
    sizes = np.array([a.size for a in arrays], dtype=np.float64)
    return float(_stratified_stat(np.array([a.mean() for a in arrays]), sizes, stat))


def summarise(values: object, rng: RngLike = None, level: float = 0.95,
              n_boot: int = 2000) -> dict[str, object]:
    """Mean and IQM with percentile-bootstrap intervals, sample standard deviation, count.

    Args:
        values: one-dimensional sample.
        rng: seeded generator (or seed); one integer is drawn from it to seed the resampling,
            and the mean's and the IQM's intervals use the same resamples.
        level: confidence level.
        n_boot: bootstrap resamples.

    Returns:
        ``{"mean", "mean_ci": (low, high), "iqm", "iqm_ci": (low, high), "std" (ddof=1, 0 for
        one value), "n"}``; NaNs for an empty sample.
    """
    arr = _as_1d(values)
    gen = np.random.default_rng(rng)
    seed = int(gen.integers(0, 2**63 - 1))
    n = int(arr.size)
    nan = float("nan")
    return {
        "mean": float(arr.mean()) if n else nan,
        "mean_ci": bootstrap_ci(arr, np.mean, level, n_boot, rng=np.random.default_rng(seed)),
        "iqm": iqm(arr),
        "iqm_ci": bootstrap_ci(arr, iqm, level, n_boot, rng=np.random.default_rng(seed)),
        "std": float(arr.std(ddof=1)) if n > 1 else (0.0 if n == 1 else nan),
        "n": n,
    }


def paired_difference(
    a: object, b: object, rng: RngLike = None, level: float = 0.95, n_boot: int = 2000,
    *, strata: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Compare paired samples ``a[i]`` and ``b[i]`` (e.g. two methods on the same task and seed).

    Args:
        a: first sample, one value per pair.
        b: second sample, same length.
        rng: seeded generator (or seed) for the bootstrap.
        level: confidence level of the interval.
        n_boot: bootstrap resamples.
        strata: the task of each pair (any hashable label, one per pair), or None. Given, the
            interval comes from :func:`stratified_bootstrap_ci` (pairs resampled within their
            task, statistic ``"pooled_mean"``, the mean reported), and ``n_strata`` is added.

    Returns:
        ``mean``: mean of ``a - b``; ``ci_low``/``ci_high``: percentile bootstrap interval of that
        mean (resampling pairs, within tasks when ``strata`` are given); ``t_pvalue``:
        two-sided paired t-test
        (:func:`scipy.stats.ttest_rel`); ``wilcoxon_pvalue``: two-sided Wilcoxon signed-rank test
        (:func:`scipy.stats.wilcoxon`); ``n``: number of pairs. When every difference is zero both
        p-values are 1; when all differences are equal and non-zero the t-test p-value is 0 (zero
        variance); p-values are NaN with fewer than two pairs.
    """
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    n = int(d.size)
    nan = float("nan")
    groups: dict[Hashable, list[float]] = {}
    if strata is not None:
        labels = list(strata)
        if len(labels) != n:
            raise ValueError(f"strata needs one label per pair: got {len(labels)} for {n} pairs")
        for label, value in zip(labels, d.tolist()):
            groups.setdefault(label, []).append(value)
        low, high = stratified_bootstrap_ci(list(groups.values()), "pooled_mean", level, n_boot,
                                            rng=rng)
    else:
        low, high = bootstrap_ci(d, np.mean, level, n_boot, rng=rng)
    out = {"mean": float(d.mean()) if n else nan, "ci_low": low, "ci_high": high,
           "t_pvalue": nan, "wilcoxon_pvalue": nan, "n": n}
    if strata is not None:
        out["n_strata"] = len(groups)
    if n < 2:
        return out
    if np.all(d == 0):
        out["t_pvalue"] = 1.0
        out["wilcoxon_pvalue"] = 1.0
        return out
    if np.ptp(d) == 0:  # constant non-zero difference: t is infinite
        out["t_pvalue"] = 0.0
    else:
        out["t_pvalue"] = float(sps.ttest_rel(x, y).pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties notes
        out["wilcoxon_pvalue"] = float(sps.wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def run_key(task: dict[str, object]) -> tuple[str, int]:
    """A held-out run's key: its base task (the task's JSON without the seed) and its seed."""
    if not isinstance(task, dict) or not checks.is_seed(task.get("seed")):
        raise ValueError(f"task={task!r:.80} must be a TaskSpec's dict with an integer seed >= 0")
    base = {k: v for k, v in task.items() if k != "seed"}
    return json.dumps(base, sort_keys=True), int(task["seed"])  # type: ignore[call-overload]


def paired_contrast(a: dict[tuple[str, int], float], b: dict[tuple[str, int], float],
                    rng: RngLike = 0) -> dict[str, float]:
    """Mean paired difference ``a − b`` in points (×100) over the runs both hold (keys of
    :func:`run_key`), with its 95 % stratified-bootstrap interval (pairs resampled within
    their base task) and ``n``, the number of pairs."""
    keys = sorted(set(a) & set(b))
    d = paired_difference([a[k] for k in keys], [b[k] for k in keys], rng,
                          strata=[k[0] for k in keys])
    return {"mean": 100 * d["mean"], "ci_low": 100 * d["ci_low"],
            "ci_high": 100 * d["ci_high"], "n": len(keys)}
