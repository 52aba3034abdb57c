"""Tests of lossgym.tasks: TaskSpec validation and serialisation, seeds, TaskDistribution."""

import itertools
import json
import math
import random
from dataclasses import FrozenInstanceError, fields, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossgym import data
from lossgym.data import class_counts, dataset_info, from_arrays, register_dataset
from lossgym.tasks import (
    MIN_TRAIN_PER_CLASS,
    SEED_STREAMS,
    TaskDistribution,
    TaskFactors,
    TaskSpec,
)

FIELDS = [f.name for f in fields(TaskSpec)]


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    monkeypatch.setattr(data, "_LOADED", dict(data._LOADED))


# --------------------------------------------------------------------------- TaskSpec
def test_defaults_resolve_without_loading_data(isolated_registry):
    def no_loading():
        raise AssertionError("constructing a TaskSpec must not load data")

    register_dataset(replace(dataset_info("mnist1d"), loader=no_loading), overwrite=True)
    spec = TaskSpec()
    assert (spec.dataset, spec.num_classes, spec.n_max) == ("mnist1d", 10, 3000)
    assert spec.class_counts().tolist() == class_counts(10, 3000, 100.0, "exp").tolist()
    assert spec.num_train == int(spec.class_counts().sum())
    assert spec.total_minibatches == 20 * 40
    assert spec.epochs == pytest.approx(800 * 128 / spec.num_train)


def test_spec_is_frozen_and_hashable():
    spec = TaskSpec()
    with pytest.raises(FrozenInstanceError):
        spec.lr = 0.1
    assert len({spec, TaskSpec(), TaskSpec(seed=1)}) == 2


def test_numbers_are_normalised():
    spec = TaskSpec(imbalance_ratio=np.int64(50), lr=1, width=np.int32(64))
    assert type(spec.imbalance_ratio) is float and spec.imbalance_ratio == 50.0
    assert type(spec.lr) is float and type(spec.width) is int
    assert json.loads(spec.to_json())["imbalance_ratio"] == 50.0


def test_json_round_trip():
    spec = TaskSpec(
        dataset="synthetic",
        imbalance_ratio=37.5,
        imbalance_profile="step",
        n_max=1234,
        label_noise=0.15,
        arch="cnn",
        width=48,
        depth=3,
        optimizer="sgd",
        lr=0.05,
        weight_decay=5e-4,
        momentum=0.8,
        batch_size=64,
        minibatches_per_step=7,
        horizon=11,
        seed=2**63 - 1,
    )
    assert TaskSpec.from_json(spec.to_json()) == spec
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert list(spec.to_dict()) == FIELDS
    assert TaskSpec.from_json(TaskSpec().to_json()) == TaskSpec()


valid_specs = st.builds(
    TaskSpec,
    dataset=st.sampled_from(["mnist1d", "synthetic"]),
    imbalance_ratio=st.floats(1.0, 600.0),
    imbalance_profile=st.sampled_from(["exp", "step"]),
    label_noise=st.floats(0.0, 0.5, exclude_max=True),
    arch=st.sampled_from(["mlp", "cnn"]),
    width=st.integers(4, 2048),
    depth=st.integers(1, 6),
    optimizer=st.sampled_from(["adamw", "adam", "sgd"]),
    lr=st.floats(0.0, 10.0, exclude_min=True),
    weight_decay=st.floats(0.0, 1.0),
    momentum=st.floats(0.0, 1.0, exclude_max=True),
    batch_size=st.integers(1, 65536),
    minibatches_per_step=st.integers(1, 256),  # 256 x 65536 = MAX_SAMPLES_PER_STEP
    horizon=st.integers(1, 10_000),
    seed=st.integers(0, 2**63 - 1),
)


@settings(max_examples=60, deadline=None)
@given(valid_specs)
def test_json_round_trip_property(spec):
    again = TaskSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()
    assert spec.class_counts().min() >= MIN_TRAIN_PER_CLASS
    assert 0 <= spec.derive_seed("init") < 2**63


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "imagenet"),
        ("dataset", 3),
        ("num_classes", 7),
        ("num_classes", "10"),
        ("imbalance_ratio", 0.5),
        ("imbalance_ratio", 1001.0),
        ("imbalance_ratio", math.nan),
        ("imbalance_ratio", math.inf),
        ("imbalance_ratio", "100"),
        ("imbalance_ratio", True),
        ("imbalance_profile", "linear"),
        ("n_max", 0),
        ("n_max", 3001),
        ("n_max", 100.0),
        ("n_max", True),
        ("label_noise", 0.5),
        ("label_noise", -0.1),
        ("arch", "resnet"),
        ("width", 3),
        ("width", 2049),
        ("width", 64.0),
        ("depth", 0),
        ("depth", 7),
        ("optimizer", "rmsprop"),
        ("lr", 0.0),
        ("lr", 11.0),
        ("lr", "1e-3"),
        ("lr", math.nan),
        ("weight_decay", -1.0),
        ("weight_decay", 2.0),
        ("momentum", 1.0),
        ("batch_size", 0),
        ("batch_size", 65537),
        ("minibatches_per_step", 0),
        ("minibatches_per_step", 10**12),
        ("horizon", 0),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", False),
    ],
)
def test_invalid_field_is_named_with_its_value(field, value):
    with pytest.raises(ValueError) as caught:
        TaskSpec(**{field: value})
    assert f"{field}={value!r}" in str(caught.value)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="'imagenet'.*known datasets: mnist1d, digits, synthetic"):
        TaskSpec(dataset="imagenet")


def test_digits_at_rho_100_names_the_starved_class():
    with pytest.raises(ValueError) as caught:
        TaskSpec(dataset="digits", imbalance_ratio=100.0)
    message = str(caught.value)
    assert "class 9" in message and "0 training samples" in message
    assert "imbalance_ratio to at most 18.8" in message
    # The suggestion is right: 18.8 is the largest ratio that still passes.
    assert TaskSpec(dataset="digits", imbalance_ratio=18.8).class_counts()[-1] == 5


def test_too_small_n_max_suggests_a_larger_one():
    with pytest.raises(ValueError, match="class 9 .* raise n_max to at least 500"):
        TaskSpec(imbalance_ratio=100.0, n_max=400)


def test_from_dict_and_from_json_reject_unknown_or_malformed_input():
    with pytest.raises(ValueError, match="unknown field.*'learning_rate'"):
        TaskSpec.from_dict({"lr": 1e-3, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="JSON must be an object"):
        TaskSpec.from_json("[1, 2]")
    with pytest.raises(ValueError):
        TaskSpec.from_json("{not json")
    with pytest.raises(ValueError, match="lr=-1"):
        TaskSpec.from_json('{"lr": -1}')


def test_replace_validates_and_re_resolves_dataset_defaults():
    spec = TaskSpec(imbalance_ratio=10.0)
    assert spec.replace(lr=0.01).lr == 0.01
    with pytest.raises(ValueError, match="lr=-1"):
        spec.replace(lr=-1.0)
    with pytest.raises(ValueError, match="unknown field.*'learnrate'"):
        spec.replace(learnrate=1.0)
    digits = spec.replace(dataset="digits")
    assert (digits.n_max, digits.num_classes) == (94, 10)
    assert spec.replace(dataset="digits", n_max=50).n_max == 50


def test_derive_seed_streams_are_distinct_and_stable():
    spec = TaskSpec()
    seeds = {stream: spec.derive_seed(stream) for stream in ("data", "init", "order")}
    # Regression values: changing them silently changes every task's randomness.
    assert seeds == {
        "data": 5173637523555637341,
        "init": 6105380500047365410,
        "order": 2176490089703295832,
    }
    assert set(SEED_STREAMS) == {"data", "init", "order"}
    other = TaskSpec(seed=1)
    assert all(other.derive_seed(s) != seeds[s] for s in seeds)
    # Only the seed matters, not the other factors.
    assert TaskSpec(lr=0.1).derive_seed("data") == seeds["data"]
    with pytest.raises(ValueError, match="'weights'.*data"):
        spec.derive_seed("weights")


def test_train_pool_uses_the_data_stream(isolated_registry):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 200)
    x = rng.normal(size=(len(y), 5))
    ds = from_arrays(x, y, name="task-pool", val_per_class=10, test_per_class=10)
    spec = TaskSpec(dataset="task-pool", imbalance_ratio=20.0, label_noise=0.2)
    assert spec.n_max == 180
    pool = spec.train_pool(ds)
    assert np.bincount(pool.clean_labels).tolist() == spec.class_counts().tolist() == [180, 40, 9]
    assert np.array_equal(pool.labels, spec.replace(lr=0.5).train_pool(ds).labels)
    assert not np.array_equal(pool.indices, spec.replace(seed=1).train_pool(ds).indices)
    with pytest.raises(ValueError, match="'task-pool'"):
        TaskSpec().train_pool(ds)


# --------------------------------------------------------------------------- TaskDistribution
@pytest.fixture(scope="module")
def dist():
    return TaskDistribution.default()


# The TaskSpec fields a TaskFactors grid draws.
FACTOR_FIELDS = [
    "dataset",
    "imbalance_ratio",
    "imbalance_profile",
    "label_noise",
    "arch",
    "width",
    "depth",
    "optimizer",
    "lr",
    "weight_decay",
    "minibatches_per_step",
    "horizon",
]


def _grid_specs(grid):
    """Every spec of a grid, at its first seed."""
    for combo in itertools.product(*(grid.values(field) for field in FACTOR_FIELDS)):
        yield TaskSpec(**dict(zip(FACTOR_FIELDS, combo, strict=True)), seed=grid.seed_range[0])


def test_every_default_combination_is_valid(dist):
    for split in ("train", "held_out_id", "held_out_ood"):
        for grid in getattr(dist, split):
            for spec in _grid_specs(grid):
                assert dist.split_of(spec) == split


def test_default_grids(dist):
    (train,) = dist.train
    assert train.seed_range == (0, 10_000)
    assert set(train.datasets) == {"mnist1d", "synthetic"}
    assert train.imbalance_ratios == (10.0, 20.0, 50.0, 100.0)
    assert train.label_noises == (0.0, 0.1, 0.2)
    assert train.archs == ("mlp",) and train.widths == (64, 128, 256)
    assert train.weight_decays == (1e-3, 1e-2, 1e-1)
    assert train.minibatches_per_step == (20, 40, 60)
    for grid in dist.held_out_id + dist.held_out_ood:
        assert grid.seed_range[0] >= 1_000_000


def test_splits_are_disjoint_and_held_out_covers_the_ood_factors(dist):
    rng = np.random.default_rng(0)
    train = {dist.sample(rng, "train") for _ in range(400)}
    held = [dist.sample(rng, "held_out") for _ in range(600)]
    assert not train & set(held)
    assert all(dist.split_of(spec) == "train" and dist.is_train(spec) for spec in train)
    assert all(spec.seed < 10_000 for spec in train)
    kinds = {spec: dist.split_of(spec) for spec in held}
    assert set(kinds.values()) == {"held_out_id", "held_out_ood"}
    assert not any(dist.is_train(spec) for spec in held)
    assert all(spec.seed >= 1_000_000 for spec in held)
    ood = [spec for spec, kind in kinds.items() if kind == "held_out_ood"]
    assert "digits" in {spec.dataset for spec in ood}
    assert "cnn" in {spec.arch for spec in ood}
    assert {30.0, 200.0} <= {spec.imbalance_ratio for spec in ood}
    seen = {f: {getattr(s, f) for s in train} for f in ("dataset", "arch", "imbalance_ratio")}
    assert not {"digits"} & seen["dataset"] and not {"cnn"} & seen["arch"]
    for spec in ood:
        assert (
            spec.dataset not in seen["dataset"]
            or spec.arch not in seen["arch"]
            or spec.imbalance_ratio not in seen["imbalance_ratio"]
        )
    for spec, kind in kinds.items():
        if kind == "held_out_id":
            assert spec.dataset in seen["dataset"] and spec.arch == "mlp"
            assert spec.imbalance_ratio in seen["imbalance_ratio"]


@pytest.mark.parametrize("split", ["held_out_id", "held_out_ood"])
def test_named_held_out_splits(dist, split):
    rng = np.random.default_rng(1)
    assert all(dist.split_of(dist.sample(rng, split)) == split for _ in range(100))


def test_sampling_is_reproducible(dist):
    def draws(seed):
        rng = np.random.default_rng(seed)
        return [dist.sample(rng, split) for split in ("train", "held_out") * 20]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_sampling_leaves_global_random_state_alone(dist):
    np.random.seed(123)
    random.seed(123)
    numpy_before = np.random.get_state()
    python_before = random.getstate()
    rng = np.random.default_rng(0)
    for split in ("train", "held_out", "held_out_id", "held_out_ood"):
        dist.sample(rng, split)
    numpy_after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(numpy_before, numpy_after, strict=True))
    assert random.getstate() == python_before


def test_sample_rejects_bad_arguments(dist):
    with pytest.raises(ValueError, match="'validation'.*held_out_ood"):
        dist.sample(np.random.default_rng(0), "validation")
    with pytest.raises(ValueError, match="Generator"):
        dist.sample(np.random.RandomState(0))


def test_invalid_combinations_are_redrawn():
    grid = TaskFactors(datasets=("digits",), imbalance_ratios=(10.0, 100.0))
    dist = TaskDistribution(
        train=(grid,),
        held_out_id=(replace(grid, seed_range=(10_000, 20_000)),),
        held_out_ood=(replace(grid, archs=("cnn",), seed_range=(10_000, 20_000)),),
    )
    rng = np.random.default_rng(0)
    assert {dist.sample(rng).imbalance_ratio for _ in range(50)} == {10.0}


def test_base_tasks_are_the_valid_combinations_draw_returns():
    grid = TaskFactors(datasets=("digits", "synthetic"), imbalance_ratios=(10.0, 100.0),
                       widths=(64, 128))
    tasks = grid.base_tasks()
    # digits at rho 100 leaves its tail class without samples: 2 of the 8 combinations.
    assert len(tasks) == 8 - 2 == len({t.to_json() for t in tasks})
    assert all(grid.contains(t) and t.seed == grid.seed_range[0] for t in tasks)
    assert {(t.dataset, t.imbalance_ratio) for t in tasks} == {
        ("digits", 10.0), ("synthetic", 10.0), ("synthetic", 100.0)}
    rng = np.random.default_rng(0)
    drawn: set[str] = set()
    for _ in range(400):
        try:
            drawn.add(grid.draw(rng).replace(seed=grid.seed_range[0]).to_json())
        except ValueError:
            continue
    assert drawn == {t.to_json() for t in tasks}


def test_a_grid_without_valid_combinations_raises():
    grid = TaskFactors(datasets=("digits",), imbalance_ratios=(100.0,))
    dist = TaskDistribution(
        train=(grid,),
        held_out_id=(replace(grid, seed_range=(10_000, 20_000)),),
        held_out_ood=(replace(grid, archs=("cnn",), seed_range=(10_000, 20_000)),),
    )
    with pytest.raises(ValueError, match="no valid task.*class 9"):
        dist.sample(np.random.default_rng(0))


def test_split_of_outsiders(dist):
    assert dist.split_of(TaskSpec(seed=5_000_000)) is None
    # A train-grid spec except for a non-default field.
    inside = TaskSpec(imbalance_ratio=10.0, seed=3)
    assert dist.split_of(inside) == "train"
    assert dist.split_of(inside.replace(n_max=2000)) is None
    assert dist.split_of(inside.replace(batch_size=64)) is None
    assert not dist.is_train(inside.replace(seed=10_000))


def test_distribution_structure_is_checked():
    train = TaskFactors(imbalance_ratios=(10.0,))
    id_grid = replace(train, seed_range=(10_000, 20_000))
    ood = replace(id_grid, archs=("cnn",))
    with pytest.raises(ValueError, match="seed_range=\\(5000, 20000\\) overlaps"):
        TaskDistribution((train,), (replace(id_grid, seed_range=(5_000, 20_000)),), (ood,))
    with pytest.raises(ValueError, match="held_out_id\\[0\\] uses arch values \\['cnn'\\]"):
        TaskDistribution((train,), (ood,), (ood,))
    with pytest.raises(ValueError, match="held_out_ood\\[0\\] needs at least one factor"):
        TaskDistribution((train,), (id_grid,), (id_grid,))
    with pytest.raises(ValueError, match="held_out_ood must be a non-empty tuple"):
        TaskDistribution((train,), (id_grid,), ())


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"imbalance_ratios": (0.5,)}, "imbalance_ratio=0.5"),
        ({"archs": ()}, "archs=\\(\\)"),
        ({"archs": "mlp"}, "archs='mlp'"),
        ({"widths": (64, 64)}, "duplicate"),
        ({"datasets": ("imagenet",)}, "'imagenet'"),
        ({"seed_range": (10, 10)}, "seed_range=\\(10, 10\\)"),
        ({"seed_range": (0, 2**63 + 1)}, "seed_range"),
    ],
)
def test_task_factors_validate_values(kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        TaskFactors(**kwargs)


def test_task_factors_values_lookup():
    grid = TaskFactors(widths=(32, 64))
    assert grid.values("width") == (32, 64)
    with pytest.raises(ValueError, match="'seed' is not a factor"):
        grid.values("seed")


def test_a_step_is_bounded_by_the_memory_of_its_sample_indices():
    # minibatches_per_step=10**12 was accepted, and step() then failed allocating 256 TB.
    from lossgym.tasks import MAX_SAMPLES_PER_STEP

    with pytest.raises(ValueError, match="minibatches_per_step <= 131072") as caught:
        TaskSpec(minibatches_per_step=10**12)
    assert "batch_size=128" in str(caught.value)
    assert TaskSpec(minibatches_per_step=MAX_SAMPLES_PER_STEP // 128).minibatches_per_step
    with pytest.raises(ValueError, match="minibatches_per_step"):
        TaskSpec(minibatches_per_step=MAX_SAMPLES_PER_STEP // 64 + 1, batch_size=64)


def test_the_noisy_distribution_is_the_default_at_noise_0_or_0_4_in_every_split():
    default, noisy = TaskDistribution.default(), TaskDistribution.named("noisy")
    for split in ("train", "held_out_id", "held_out_ood"):
        assert [g.label_noises for g in getattr(noisy, split)] == [(0.0, 0.4)] * len(
            getattr(default, split))
        assert [replace(g, label_noises=(0.0,)) for g in getattr(noisy, split)] == [
            replace(g, label_noises=(0.0,)) for g in getattr(default, split)]
    rng = np.random.default_rng(0)
    assert {noisy.sample(rng, "train").label_noise for _ in range(60)} == {0.0, 0.4}
    with pytest.raises(ValueError, match="'noisy'"):
        TaskDistribution.named("nosiy")


def test_noisy_sizes_varies_the_train_size_and_keeps_noisys_held_out_draws():
    noisy, sizes = TaskDistribution.noisy(), TaskDistribution.named("noisy_sizes")
    assert sizes.train == (replace(noisy.train[0], n_maxes=(None, 600, 120)),)
    rng = np.random.default_rng(0)
    drawn = [sizes.sample(rng, "train") for _ in range(300)]
    assert {t.n_max for t in drawn} == {3000, 600, 120}
    assert all(sizes.split_of(t) == "train" for t in drawn)
    # n_max 120 leaves the tail class its 5 samples only up to rho = 24.
    assert {t.imbalance_ratio for t in drawn if t.n_max == 120} == {10.0, 20.0}
    # Its held-out splits are noisy()'s, drawn identically, so both meet one suite.
    for split in ("held_out_id", "held_out_ood", "held_out"):
        a, b = np.random.default_rng(3), np.random.default_rng(3)
        assert [sizes.sample(a, split) for _ in range(40)] == [
            noisy.sample(b, split) for _ in range(40)]
    # The default n_maxes draws nothing: every distribution draws what it drew before it.
    grid = TaskFactors(datasets=("mnist1d", "synthetic"), widths=(64, 128))
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(5):
        picks = [b.integers(2), b.integers(1), b.integers(1), b.integers(1), b.integers(1),
                 b.integers(2)]  # dataset, ratio, profile, noise, arch, width
        for _ in range(6):  # depth, optimizer, lr, weight decay, minibatches, horizon
            b.integers(1)
        seed = int(b.integers(0, 10_000))
        assert grid.draw(a) == TaskSpec(dataset=("mnist1d", "synthetic")[picks[0]],
                                        width=(64, 128)[picks[5]], seed=seed)
    task = TaskSpec(seed=5)
    assert noisy.split_of(task.replace(n_max=600)) is None
    assert sizes.split_of(task.replace(n_max=600)) == "train"
    assert sizes.split_of(task.replace(n_max=599)) is None


def test_n_maxes_names_the_factor_when_bad():
    for bad in ((0,), (1.5,), ("many",), ()):
        with pytest.raises(ValueError, match="n_maxes"):
            TaskFactors(n_maxes=bad)
    with pytest.raises(ValueError, match="duplicate"):
        TaskFactors(n_maxes=(600, 600))


def test_held_out_n_maxes_unseen_in_training_are_named_even_with_none():
    train = TaskFactors(n_maxes=(600,))
    held = replace(train, n_maxes=(None, 50), seed_range=(1_000_000, 2_000_000))
    with pytest.raises(ValueError, match=r"n_max values \[50, None\]"):
        TaskDistribution(train=(train,), held_out_id=(held,), held_out_ood=(
            replace(held, n_maxes=(600,), datasets=("digits",)),))
