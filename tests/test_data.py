"""Tests of lossgym.data: class-count profiles, built-in datasets, caching, pools, user data.

The full-size MNIST-1D generation takes tens of seconds on a small machine, so the generation and
caching machinery is tested with a tiny recipe (same code path, 20 samples per class); the real
dataset is checked as loaded from the user's cache.
"""

import random
from dataclasses import replace

import numpy as np
import pytest

from lossgym import data
from lossgym.data import (
    MIN_TRAIN_PER_CLASS,
    DatasetInfo,
    class_counts,
    dataset_info,
    dataset_names,
    from_arrays,
    load_dataset,
    register_dataset,
    sample_train_pool,
)

TINY_MNIST1D = data._Mnist1dRecipe(val_per_class=3, test_per_class=4, pool_per_class=13)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by the test are forgotten afterwards."""
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    monkeypatch.setattr(data, "_LOADED", dict(data._LOADED))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LOSSGYM_CACHE", str(folder))
    return folder


def _rows(x):
    return {row.tobytes() for row in x}


def _assert_balanced_and_disjoint(ds, val_per_class, test_per_class):
    c = ds.num_classes
    assert np.bincount(ds.y_val, minlength=c).tolist() == [val_per_class] * c
    assert np.bincount(ds.y_test, minlength=c).tolist() == [test_per_class] * c
    train, val, test = _rows(ds.x_train), _rows(ds.x_val), _rows(ds.x_test)
    assert len(train) == len(ds.x_train) and len(val) == len(ds.x_val)
    assert not train & val and not train & test and not val & test


def _blobs(n_per_class, num_classes, num_features=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = rng.normal(size=(len(y), num_features)) + y[:, None]
    return x, y


# --------------------------------------------------------------------------- class_counts
def test_exp_profile_matches_hand_computed_values():
    # 3000 * 100 ** (-c / 9), floored.
    expected = [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
    assert class_counts(10, 3000, 100.0, "exp").tolist() == expected
    # Exact powers must not lose a sample to rounding: 100 / 2**c.
    assert class_counts(3, 100, 4.0, "exp").tolist() == [100, 50, 25]
    assert class_counts(5, 10, 10.0, "exp").tolist() == [10, 5, 3, 1, 1]


def test_step_profile_matches_hand_computed_values():
    assert class_counts(10, 3000, 100.0, "step").tolist() == [3000] * 5 + [30] * 5
    assert class_counts(5, 100, 3.0, "step").tolist() == [100, 100, 100, 33, 33]


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_ratio_one_is_balanced(profile):
    counts = class_counts(7, 55, 1.0, profile)
    assert counts.dtype == np.int64
    assert counts.tolist() == [55] * 7


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        ((10, 100, 10.0, "linear"), "'linear'"),
        ((10, 100, 0.5, "exp"), "0.5"),
        ((10, 0, 10.0, "exp"), "0"),
        ((1, 100, 10.0, "exp"), "1"),
        ((10, 100, float("nan"), "exp"), "nan"),
    ],
)
def test_class_counts_rejects_bad_arguments(args, shown):
    with pytest.raises(ValueError, match=shown):
        class_counts(*args)


def test_mnist1d_default_keeps_30_in_the_tail_at_rho_100():
    info = dataset_info("mnist1d")
    assert info.default_n_max == 3000 <= info.train_per_class
    assert class_counts(10, info.default_n_max, 100.0, "exp")[-1] >= 30


# --------------------------------------------------------------------------- registry
def test_builtins_are_registered():
    assert {"mnist1d", "digits", "synthetic"} <= set(dataset_names())


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="'imagenet'.*mnist1d, digits, synthetic"):
        dataset_info("imagenet")


def test_register_refuses_duplicates_unless_overwrite(isolated_registry):
    x, y = _blobs(20, 2)
    first = from_arrays(x, y, name="blobs", val_per_class=3, test_per_class=3, register=False)
    info = DatasetInfo("blobs", 2, 3, 14, 14, lambda: first)
    register_dataset(info)
    assert load_dataset("blobs") is first
    with pytest.raises(ValueError, match="'blobs' is already registered"):
        register_dataset(info)
    second = replace(first, x_train=first.x_train + 1)
    register_dataset(replace(info, loader=lambda: second), overwrite=True)
    assert load_dataset("blobs") is second


def test_load_dataset_checks_the_loader_against_the_registry(isolated_registry):
    x, y = _blobs(20, 2)
    ds = from_arrays(x, y, name="blobs", val_per_class=3, test_per_class=3, register=False)
    register_dataset(DatasetInfo("blobs", 2, 3, 99, 14, lambda: ds))
    with pytest.raises(ValueError, match="train_per_class"):
        load_dataset("blobs")


def test_dataset_info_validates_fields():
    with pytest.raises(ValueError, match="default_n_max.*500"):
        DatasetInfo("x", 2, 3, 100, 500, lambda: None)
    with pytest.raises(ValueError, match="num_classes.*1"):
        DatasetInfo("x", 1, 3, 100, 50, lambda: None)


def test_dataset_rejects_unbalanced_val():
    x, y = _blobs(20, 2)
    ds = from_arrays(x, y, name="blobs", val_per_class=3, test_per_class=3, register=False)
    unbalanced = ds.y_val.copy()
    unbalanced[0] = 1 - unbalanced[0]
    with pytest.raises(ValueError, match="y_val must be balanced"):
        replace(ds, y_val=unbalanced)


# --------------------------------------------------------------------------- built-ins
@pytest.mark.parametrize(
    ("name", "val", "test", "features"), [("digits", 30, 50, 64), ("synthetic", 100, 300, 40)]
)
def test_small_builtins(name, val, test, features):
    ds = load_dataset(name)
    assert load_dataset(name) is ds
    info = dataset_info(name)
    assert (ds.num_classes, ds.num_features) == (10, features)
    assert ds.train_class_counts.min() == info.train_per_class
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    c = ds.num_classes
    assert np.bincount(ds.y_val, minlength=c).tolist() == [val] * c
    assert np.bincount(ds.y_test, minlength=c).tolist() == [test] * c
    # Standardised with pool statistics (digits has constant blank pixels, left at 0).
    std = ds.x_train.std(axis=0)
    assert np.allclose(ds.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(std[std > 0], 1, atol=1e-4)
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0] = 1.0


def test_digits_splits_use_every_image_once():
    ds = load_dataset("digits")
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
    assert dataset_info("digits").train_per_class == 94


def test_synthetic_splits_are_disjoint():
    _assert_balanced_and_disjoint(load_dataset("synthetic"), 100, 300)
    assert load_dataset("synthetic").train_class_counts.tolist() == [3000] * 10


# --------------------------------------------------------------------------- mnist1d
def _global_states():
    return random.getstate(), np.random.get_state()


def _same_states(a, b):
    (py_a, np_a), (py_b, np_b) = a, b
    return py_a == py_b and all(np.array_equal(u, v) for u, v in zip(np_a, np_b, strict=True))


def test_mnist1d_generation_is_invisible_and_cached_outside_cwd(cache, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    random.seed(7)
    np.random.seed(7)
    before = _global_states()

    ds = data._mnist1d_dataset(TINY_MNIST1D)

    assert _same_states(before, _global_states())
    assert list(cwd.iterdir()) == []
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d-v") and files[0].endswith(".npz")
    assert ds.name == "mnist1d" and ds.num_features == 40
    assert ds.train_class_counts.tolist() == [13] * 10
    _assert_balanced_and_disjoint(ds, 3, 4)


def test_mnist1d_cache_is_reused(cache, monkeypatch):
    first = data._mnist1d_dataset(TINY_MNIST1D)
    (path,) = cache.iterdir()
    mtime = path.stat().st_mtime_ns

    def no_generation(recipe):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(data, "_generate_mnist1d", no_generation)
    second = data._mnist1d_dataset(TINY_MNIST1D)
    assert path.stat().st_mtime_ns == mtime
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(first, field), getattr(second, field))


def test_mnist1d_corrupt_cache_is_regenerated(cache):
    path = data._mnist1d_cache_path(TINY_MNIST1D)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file")
    ds = data._mnist1d_dataset(TINY_MNIST1D)
    assert ds.train_class_counts.tolist() == [13] * 10
    assert data._read_cached(path, TINY_MNIST1D.per_class * 10) is not None
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_cache_key_depends_on_the_recipe(cache):
    other = replace(TINY_MNIST1D, generation_seed=TINY_MNIST1D.generation_seed + 1)
    assert data._mnist1d_cache_path(other) != data._mnist1d_cache_path(TINY_MNIST1D)
    assert data._mnist1d_cache_path(TINY_MNIST1D).parent == cache


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSGYM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LOSSGYM_CACHE")
    assert data.cache_dir() == tmp_path / "xdg" / "lossgym"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "lossgym"


@pytest.fixture(scope="session")
def full_mnist1d():
    # The real dataset, from the user's cache (the engine tests need it anyway); its
    # generation and caching are tested above with the tiny recipe.
    return load_dataset("mnist1d")


def test_full_mnist1d(full_mnist1d):
    ds = full_mnist1d
    info = dataset_info("mnist1d")
    assert ds.train_class_counts.tolist() == [info.train_per_class] * 10
    assert ds.num_features == info.num_features
    _assert_balanced_and_disjoint(ds, 100, 300)


# --------------------------------------------------------------------------- train pools
@pytest.fixture(scope="module")
def pool_source():
    x, y = _blobs(1000, 4, seed=3)
    return from_arrays(x, y, name="pool-source", val_per_class=5, test_per_class=5, register=False)


def test_pool_has_exact_counts_and_no_noise_by_default(pool_source):
    counts = np.array([900, 300, 50, 5])
    pool = sample_train_pool(pool_source, counts, 0.0, np.random.default_rng(0))
    assert np.bincount(pool.clean_labels, minlength=4).tolist() == counts.tolist()
    assert pool.class_counts.tolist() == counts.tolist()
    assert len(np.unique(pool.indices)) == counts.sum()
    assert np.array_equal(pool.clean_labels, pool_source.y_train[pool.indices])
    assert np.array_equal(pool.labels, pool.clean_labels) and not pool.noisy_mask.any()
    for array in (pool.indices, pool.labels, pool.clean_labels, pool.class_counts):
        assert array.dtype == np.int64


def test_label_noise_flips_to_other_classes_at_the_requested_rate(pool_source):
    counts = pool_source.train_class_counts
    pool = sample_train_pool(pool_source, counts, 0.3, np.random.default_rng(1))
    assert abs(pool.noisy_mask.mean() - 0.3) < 0.02
    assert np.array_equal(pool.noisy_mask, pool.labels != pool.clean_labels)
    assert pool.class_counts.tolist() == np.bincount(pool.labels, minlength=4).tolist()
    # Each of the 3 other classes is equally likely.
    shifts = (pool.labels - pool.clean_labels)[pool.noisy_mask] % 4
    assert set(np.unique(shifts)) == {1, 2, 3}
    assert np.allclose(np.bincount(shifts, minlength=4)[1:] / len(shifts), 1 / 3, atol=0.03)


def test_pool_is_deterministic_given_the_generator(pool_source):
    counts = np.array([100, 50, 20, 10])

    def draw(seed):
        return sample_train_pool(pool_source, counts, 0.2, np.random.default_rng(seed))

    a, b, c = draw(5), draw(5), draw(6)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.indices, c.indices)


@pytest.mark.parametrize(
    ("counts", "noise", "rng", "shown"),
    [
        (np.array([10, 10, 10, 991]), 0.0, np.random.default_rng(0), "counts\\[3\\]=991"),
        (np.array([10, 10, 10]), 0.0, np.random.default_rng(0), "4 integers"),
        (np.array([1.0, 1.0, 1.0, 1.0]), 0.0, np.random.default_rng(0), "float64"),
        (np.array([10, 10, 10, 10]), 1.5, np.random.default_rng(0), "1.5"),
        (np.array([10, 10, 10, 10]), 0.0, np.random.RandomState(0), "RandomState"),
    ],
)
def test_pool_rejects_bad_arguments(pool_source, counts, noise, rng, shown):
    with pytest.raises(ValueError, match=shown):
        sample_train_pool(pool_source, counts, noise, rng)


# --------------------------------------------------------------------------- from_arrays
def test_from_arrays_splits_standardises_and_registers(isolated_registry):
    x, y = _blobs(60, 3, num_features=4, seed=1)
    # A unique id per row makes the splits' rows comparable.
    x[:, 0] = np.arange(len(x))
    ds = from_arrays(x, y, name="mine", val_per_class=10, test_per_class=15, seed=2)
    assert load_dataset("mine") is ds
    info = dataset_info("mine")
    assert (info.num_classes, info.num_features) == (3, 4)
    assert info.train_per_class == info.default_n_max == 35
    _assert_balanced_and_disjoint(ds, 10, 15)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == len(x)
    assert np.allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(ds.x_train.std(axis=0), 1, atol=1e-5)
    again = from_arrays(x, y, name="mine", val_per_class=10, test_per_class=15, seed=2)
    assert np.array_equal(again.x_val, ds.x_val)
    assert load_dataset("mine") is again


def test_from_arrays_seed_changes_the_split():
    x, y = _blobs(60, 3)
    a = from_arrays(x, y, name="a", seed=0, val_per_class=5, test_per_class=5, register=False)
    b = from_arrays(x, y, name="b", seed=1, val_per_class=5, test_per_class=5, register=False)
    assert not np.array_equal(a.x_val, b.x_val)


def _bad_inputs():
    x, y = _blobs(100, 3)
    nan_x = x.copy()
    nan_x[4, 1] = np.nan
    negative = y.copy()
    negative[0] = -1
    few = y.copy()
    few[few == 2] = 1
    few[:5] = 2
    return [
        ((x[:, 0], y), {}, "shape \\(300,\\)"),
        ((x, y[:-1]), {}, "shape \\(299,\\)"),
        ((x, negative), {}, "label -1"),
        ((x, np.where(y == 2, 10**12, y).astype(np.uint64)), {}, "label 1000000000000"),
        ((x, y.astype(float)), {}, "float64"),
        ((nan_x, y), {}, "NaN"),
        ((x, np.zeros_like(y)), {}, "at least 2 classes"),
        ((x, few), {}, "class 2 has 5 samples"),
        ((x, y), {"val_per_class": 0}, "val_per_class.*0"),
        ((x, y), {"name": "mnist1d"}, "'mnist1d' is reserved"),
        ((x, y), {"seed": -3}, "-3"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "shown"), _bad_inputs())
def test_from_arrays_rejects_bad_input(args, kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        from_arrays(*args, **{"register": False, **kwargs})


def test_min_train_per_class_is_enforced_by_from_arrays():
    x, y = _blobs(30 + 50 + MIN_TRAIN_PER_CLASS, 2)
    assert from_arrays(x, y, register=False).train_class_counts.tolist() == [5, 5]
    with pytest.raises(ValueError, match="has 84 samples"):
        from_arrays(x[1:], y[1:], register=False)


@pytest.mark.parametrize("magnitude", [1e200, 1e300, 1e-200, 1e-300])
def test_from_arrays_standardises_huge_and_tiny_features(magnitude):
    # The variance's squares overflowed beyond ~1e154: the std was inf and every value 0.
    x, y = _blobs(100, 3)
    reference = from_arrays(x, y, register=False)
    scaled = x.copy()
    scaled[:, 1] *= magnitude
    ds = from_arrays(scaled, y, register=False)
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(getattr(ds, f"x_{split}"), getattr(reference, f"x_{split}"),
                                   rtol=1e-5, atol=1e-5)
    assert ds.x_train[:, 1].std() == pytest.approx(1.0, abs=1e-5)


def test_from_arrays_names_a_finite_outlier_outside_float32():
    x, y = _blobs(100, 3)
    # The sample from_arrays puts first into class 0's validation split (seed 0).
    row = np.random.default_rng(0).permutation(np.flatnonzero(y == 0))[0]
    x[row, 2] = 1e300
    with pytest.raises(ValueError) as caught:
        from_arrays(x, y, register=False)
    message = str(caught.value)
    assert "NaN or infinite" not in message
    assert "1e+300" in message and "feature 2" in message and "val" in message


def test_symmetric_label_noise_flips_to_another_class_only():
    from lossgym.data import symmetric_label_noise

    labels = np.arange(3000) % 5
    noisy, flip = symmetric_label_noise(labels, 5, 0.3, np.random.default_rng(0))
    assert np.array_equal(noisy != labels, flip)
    assert abs(flip.mean() - 0.3) < 0.03
    assert set(np.unique(noisy[flip] - labels[flip]) % 5) == {1, 2, 3, 4}
    same, none = symmetric_label_noise(labels, 5, 0.0, np.random.default_rng(0))
    assert np.array_equal(same, labels) and not none.any()
