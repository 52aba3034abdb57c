"""Datasets, the dataset registry, imbalance profiles and training-pool sampling.

A :class:`Dataset` holds a *training pool* (from which each task draws its imbalanced, possibly
label-noisy training set), a balanced validation split and a balanced test split. Datasets are
looked up by name in a registry of :class:`DatasetInfo` records; the registry metadata is enough
to validate a task without loading (or generating) any data, and :func:`load_dataset` loads each
dataset at most once per process.

Built-in datasets:

* ``"mnist1d"``: MNIST-1D (Greydanus & Steinbach), generated offline by the ``mnist1d`` package
  with a fixed seed and cached as ``.npz`` under :func:`cache_dir`.
* ``"digits"``: scikit-learn's 8x8 handwritten digits (bundled with scikit-learn).
* ``"synthetic"``: a fixed draw of scikit-learn's ``make_classification``.

Features are standardised with statistics of the training pool only, so nothing about the
validation or test splits leaks into the inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from lossgym import _checks as checks

MIN_TRAIN_PER_CLASS = 5
"""Fewest training samples any class may get in a task (and that :func:`from_arrays` leaves in
the pool for every class)."""

PROFILES = ("exp", "step")
"""Imbalance profiles understood by :func:`class_counts`."""

BUILTIN_DATASETS = ("mnist1d", "digits", "synthetic")

# Relative slack before flooring in class_counts: n_max * rho**(-1) can land one ulp below an
# exact integer (e.g. 29.999999999999996 for 3000 / 100), which would floor to the wrong count.
_FLOOR_SLACK = 1e-12


@dataclass(frozen=True)
class Dataset:
    """A classification dataset: a training pool plus balanced validation and test splits.

    Attributes:
        name: Registry name of the dataset.
        num_classes: Number of classes C; labels are ``0 .. C-1``.
        x_train: float32 ``[M, F]`` training pool that each task's training set is drawn from.
            The pool need not be balanced, but every class occurs in it.
        y_train: int64 ``[M]`` clean labels of the pool.
        x_val: float32 ``[V, F]`` validation inputs.
        y_val: int64 ``[V]`` validation labels, the same number for every class.
        x_test: float32 ``[T, F]`` test inputs.
        y_test: int64 ``[T]`` test labels, the same number for every class.

    Features are 1-D vectors of length F; a 1-D CNN reads them as 1 channel x F positions.
    """

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Dataset.name must be a non-empty string, got {self.name!r}")
        checks.integer("Dataset.num_classes", self.num_classes, 2)
        num_features = None
        for split in ("train", "val", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
                raise ValueError(
                    f"Dataset.x_{split} must be a 2-D float32 numpy array, got {_describe(x)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
                raise ValueError(
                    f"Dataset.y_{split} must be a 1-D int64 numpy array, got {_describe(y)}"
                )
            if len(x) != len(y):
                raise ValueError(
                    f"Dataset.x_{split} has {len(x)} rows but y_{split} has {len(y)} labels"
                )
            if num_features is None:
                num_features = x.shape[1]
            if x.shape[1] != num_features or num_features == 0:
                raise ValueError(
                    f"Dataset.x_{split} has {x.shape[1]} features; all splits need the same "
                    f"positive number ({num_features} in x_train)"
                )
            if not np.isfinite(x).all():
                raise ValueError(f"Dataset.x_{split} contains NaN or infinite values")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"Dataset.y_{split} has labels in [{y.min()}, {y.max()}]; allowed are "
                    f"0..{self.num_classes - 1}"
                )
            counts = np.bincount(y, minlength=self.num_classes)
            if counts.min() == 0:
                raise ValueError(f"Dataset.y_{split} has no sample of class {int(counts.argmin())}")
            if split != "train" and counts.min() != counts.max():
                raise ValueError(
                    f"Dataset.y_{split} must be balanced (the same count per class), got per-class "
                    f"counts {counts.tolist()}"
                )

    @property
    def num_features(self) -> int:
        """Number of input features F."""
        return int(self.x_train.shape[1])

    @property
    def train_class_counts(self) -> np.ndarray:
        """int64 ``[C]``: how many samples of each class the training pool holds."""
        return np.bincount(self.y_train, minlength=self.num_classes)


@dataclass(frozen=True)
class DatasetInfo:
    """Registry metadata of a dataset: everything needed to validate a task without loading it.

    Attributes:
        name: Registry name.
        num_classes: Number of classes C.
        num_features: Number of input features F.
        train_per_class: Training samples per class the pool offers (the minimum over classes);
            the largest ``n_max`` a task may ask for.
        default_n_max: ``n_max`` used by tasks that do not set one (``<= train_per_class``).
        loader: Builds the :class:`Dataset`; called at most once per process by
            :func:`load_dataset`, which checks the result against this metadata.
    """

    name: str
    num_classes: int
    num_features: int
    train_per_class: int
    default_n_max: int
    loader: Callable[[], Dataset]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetInfo.name must be a non-empty string, got {self.name!r}")
        for field, low in (("num_classes", 2), ("num_features", 1), ("train_per_class", 1)):
            checks.integer(f"DatasetInfo.{field}", getattr(self, field), low)
        checks.integer("DatasetInfo.default_n_max", self.default_n_max, 1, self.train_per_class)
        if not callable(self.loader):
            raise ValueError(f"DatasetInfo.loader must be callable, got {self.loader!r}")


_REGISTRY: dict[str, DatasetInfo] = {}
_LOADED: dict[str, Dataset] = {}
# Held while loading so that two threads asking for the same dataset generate it only once;
# re-entrant so that a loader may itself load another registered dataset.
_LOCK = threading.RLock()


def register_dataset(info: DatasetInfo, overwrite: bool = False) -> None:
    """Add a dataset to the registry.

    Args:
        info: The dataset's metadata and loader.
        overwrite: Replace an existing registration of the same name (and forget any copy of it
            already loaded) instead of raising.
    """
    if not isinstance(info, DatasetInfo):
        raise ValueError(f"register_dataset expects a DatasetInfo, got {_describe(info)}")
    with _LOCK:
        if info.name in _REGISTRY and not overwrite:
            raise ValueError(
                f"dataset {info.name!r} is already registered; pass overwrite=True to replace it"
            )
        _REGISTRY[info.name] = info
        _LOADED.pop(info.name, None)


def dataset_names() -> tuple[str, ...]:
    """Names of all registered datasets, in registration order."""
    return tuple(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Registry metadata of the dataset called ``name``; raises ValueError for unknown names."""
    info = _REGISTRY.get(name) if isinstance(name, str) else None
    if info is None:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}")
    return info


def load_dataset(name: str) -> Dataset:
    """Load a registered dataset, at most once per process.

    The returned dataset is shared between callers, so its arrays are made read-only.

    Args:
        name: Registry name, one of :func:`dataset_names`.
    """
    info = dataset_info(name)
    with _LOCK:
        dataset = _LOADED.get(name)
        if dataset is None:
            dataset = info.loader()
            _check_matches_info(dataset, info)
            _make_read_only(dataset)
            _LOADED[name] = dataset
    return dataset


def _check_matches_info(dataset: Dataset, info: DatasetInfo) -> None:
    if not isinstance(dataset, Dataset):
        raise ValueError(f"loader of dataset {info.name!r} returned {_describe(dataset)}")
    loaded = {
        "name": dataset.name,
        "num_classes": dataset.num_classes,
        "num_features": dataset.num_features,
        "train_per_class": int(dataset.train_class_counts.min()),
    }
    expected = {key: getattr(info, key) for key in loaded}
    if loaded != expected:
        raise ValueError(
            f"dataset {info.name!r} as loaded has {loaded}, but its registry entry says {expected}"
        )


def _make_read_only(dataset: Dataset) -> None:
    for split in ("train", "val", "test"):
        getattr(dataset, f"x_{split}").flags.writeable = False
        getattr(dataset, f"y_{split}").flags.writeable = False


def class_counts(num_classes: int, n_max: int, ratio: float, profile: str) -> np.ndarray:
    """Per-class training-set sizes of an imbalanced task.

    Args:
        num_classes: Number of classes C (>= 2).
        n_max: Size of the largest class (class 0).
        ratio: Imbalance ratio rho = largest / smallest class size (>= 1; 1 gives a balanced set).
        profile: ``"exp"``: long tail ``n_c = floor(n_max * rho**(-c / (C - 1)))``;
            ``"step"`` (Cao et al., 2019, LDAM): the first ``ceil(C / 2)`` classes get ``n_max``,
            the others ``floor(n_max / rho)``.

    Returns:
        int64 array ``[C]``, non-increasing in the class index.
    """
    checks.integer("num_classes", num_classes, 2)
    checks.integer("n_max", n_max, 1)
    checks.real("ratio", ratio, 1.0)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile == "exp":
        exponents = -np.arange(num_classes) / (num_classes - 1)
        sizes = n_max * np.power(float(ratio), exponents)
    else:
        head = math.ceil(num_classes / 2)
        sizes = np.where(np.arange(num_classes) < head, float(n_max), n_max / float(ratio))
    return np.floor(sizes * (1.0 + _FLOOR_SLACK)).astype(np.int64)


@dataclass(frozen=True)
class TrainPool:
    """The training set of one task: which pool samples it uses and the labels it sees.

    Attributes:
        indices: int64 ``[N]`` rows of ``dataset.x_train``, grouped by clean class.
        labels: int64 ``[N]`` observed labels (after label noise): what the learner trains on.
        clean_labels: int64 ``[N]`` true labels, ``dataset.y_train[indices]``.
        class_counts: int64 ``[C]`` counts of the *observed* labels, i.e. the class frequencies a
            practitioner would see.
        noisy_mask: bool ``[N]``, True where ``labels != clean_labels``.
    """

    indices: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray
    class_counts: np.ndarray
    noisy_mask: np.ndarray


def symmetric_label_noise(labels: np.ndarray, num_classes: int, rate: float,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with each one, with probability ``rate``, replaced by a class drawn uniformly
    from the *other* ``num_classes - 1``; also the mask of the flipped ones. Draws
    ``rng.random`` then ``rng.integers``, one value per label each."""
    flip = rng.random(len(labels)) < rate
    # Adding 1..C-1 modulo C picks each of the other classes with equal probability.
    shifted = (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes
    return np.where(flip, shifted, labels).astype(np.int64), flip


def sample_train_pool(
    dataset: Dataset, counts: np.ndarray, label_noise: float, rng: np.random.Generator
) -> TrainPool:
    """Draw an imbalanced, possibly label-noisy training set from a dataset's pool.

    For each class c, ``counts[c]`` distinct pool samples of class c are drawn uniformly at random.
    Then symmetric label noise is applied: with probability ``label_noise`` a sample's label is
    replaced by a class drawn uniformly from the *other* C - 1 classes. The result depends only on
    the arguments and the state of ``rng``.

    Args:
        dataset: Dataset whose training pool is sampled.
        counts: ``[C]`` non-negative ints, how many samples of each (clean) class to draw; each at
            most what the pool holds of that class.
        label_noise: Probability in [0, 1] of flipping each label.
        rng: Source of all randomness; advanced by the call.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a Dataset, got {_describe(dataset)}")
    num_classes = dataset.num_classes
    counts = np.asarray(counts)
    if counts.shape != (num_classes,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(
            f"counts must be {num_classes} integers (one per class), got {_describe(counts)}"
        )
    available = dataset.train_class_counts
    for c in range(num_classes):
        if not 0 <= counts[c] <= available[c]:
            raise ValueError(
                f"counts[{c}]={int(counts[c])} is invalid: dataset {dataset.name!r} has "
                f"{int(available[c])} training samples of class {c}, so 0..{int(available[c])} "
                "are allowed"
            )
    checks.real("label_noise", label_noise, 0.0, 1.0)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {_describe(rng)}")

    indices = np.concatenate(
        [
            rng.choice(np.flatnonzero(dataset.y_train == c), size=int(counts[c]), replace=False)
            for c in range(num_classes)
        ]
    ).astype(np.int64)
    clean = dataset.y_train[indices]
    labels, flip = symmetric_label_noise(clean, num_classes, label_noise, rng)
    return TrainPool(
        indices=indices,
        labels=labels,
        clean_labels=clean,
        class_counts=np.bincount(labels, minlength=num_classes).astype(np.int64),
        noisy_mask=flip,
    )


def from_arrays(
    X: np.ndarray,
    y: np.ndarray,
    *,
    name: str = "user",
    val_per_class: int = 30,
    test_per_class: int = 50,
    seed: int = 0,
    register: bool = True,
) -> Dataset:
    """Build a dataset from your own arrays.

    A balanced validation split and a balanced test split are drawn per class; the remaining
    samples form the training pool. Features are standardised (per feature) with statistics of the
    training pool.

    Args:
        X: ``[M, F]`` real-valued, finite features.
        y: ``[M]`` integer labels ``0 .. C-1`` with every class present (C >= 2).
        name: Registry name; the built-in names are reserved. Registering replaces an earlier
            dataset of the same name, so specs made for the old data may no longer fit.
        val_per_class: Validation samples per class (>= 1).
        test_per_class: Test samples per class (>= 1). Every class needs at least
            ``val_per_class + test_per_class + MIN_TRAIN_PER_CLASS`` samples.
        seed: Seed (>= 0) of the generator that picks the validation and test samples.
        register: Register the dataset under ``name`` so that ``TaskSpec(dataset=name)`` works;
            its ``default_n_max`` is everything the pool offers per class.

    Returns:
        The dataset (read-only arrays); the same object :func:`load_dataset` returns when
        registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in BUILTIN_DATASETS:
        raise ValueError(f"name={name!r} is reserved for a built-in dataset; choose another name")
    for field, value in (("val_per_class", val_per_class), ("test_per_class", test_per_class)):
        checks.integer(field, value, 1)
    checks.integer("seed", seed, 0)
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array [M, F], got shape {X.shape}")
    if X.dtype == np.bool_ or not (
        np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
    ):
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    # Labels 0..C-1 with every class present imply C <= M; checking this first also keeps
    # bincount from allocating for absurd labels and uint64 labels from overflowing int64.
    if y.max() >= len(y):
        raise ValueError(
            f"y has label {y.max()}; labels must be 0..C-1 with every class present, so below "
            f"the number of samples ({len(y)})"
        )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"y has label {int(y.min())}; labels must be 0..C-1")
    num_classes = int(y.max()) + 1
    if num_classes < 2:
        raise ValueError(f"y must contain at least 2 classes, got labels {np.unique(y).tolist()}")
    counts = np.bincount(y, minlength=num_classes)
    needed = val_per_class + test_per_class + MIN_TRAIN_PER_CLASS
    for c in range(num_classes):
        if counts[c] < needed:
            raise ValueError(
                f"class {c} has {int(counts[c])} samples, but labels must be 0..{num_classes - 1} "
                f"with every class having at least val_per_class={val_per_class} + "
                f"test_per_class={test_per_class} + {MIN_TRAIN_PER_CLASS} training = {needed}"
            )
    dataset = _assemble(
        name,
        X.astype(np.float64),
        y,
        num_classes,
        val_per_class,
        test_per_class,
        np.random.default_rng(seed),
        per_feature=True,
    )
    if not register:
        _make_read_only(dataset)
        return dataset
    train_per_class = int(dataset.train_class_counts.min())
    register_dataset(
        DatasetInfo(
            name=name,
            num_classes=num_classes,
            num_features=dataset.num_features,
            train_per_class=train_per_class,
            default_n_max=train_per_class,
            loader=lambda: dataset,
        ),
        overwrite=True,
    )
    return load_dataset(name)


def _assemble(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    val_per_class: int,
    test_per_class: int,
    rng: np.random.Generator,
    *,
    per_feature: bool,
) -> Dataset:
    """Split per class into balanced val/test and a pool, then standardise with pool statistics.

    ``per_feature=False`` uses one scalar mean and std, which keeps the shape of signals whose
    features are positions (MNIST-1D) intact.
    """
    parts: dict[str, list[np.ndarray]] = {"val": [], "test": [], "train": []}
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        parts["val"].append(members[:val_per_class])
        parts["test"].append(members[val_per_class : val_per_class + test_per_class])
        parts["train"].append(members[val_per_class + test_per_class :])
    # Shuffle across classes so that no split is ordered by label.
    rows = {split: rng.permutation(np.concatenate(chunks)) for split, chunks in parts.items()}
    pool = x[rows["train"]]
    axis = 0 if per_feature else None
    # Magnitudes beyond ~1e154 overflow the squares of the variance (the std became inf and
    # the feature 0), and below ~1e-154 they underflow: such features are scaled by their
    # largest magnitude first. Other data is standardised exactly as it always was.
    scale = np.abs(pool).max(axis=axis)
    extreme = (scale > _SAFE_MAGNITUDE) | ((scale > 0) & (scale < 1 / _SAFE_MAGNITUDE))
    scale = np.where(extreme, scale, 1.0)
    mean = (pool / scale).mean(axis=axis)
    std = (pool / scale).std(axis=axis)
    # Constant features (e.g. digits' always-blank border pixels) are only centred.
    std = np.where(std > 0, std, 1.0)
    arrays = {}
    for split, index in rows.items():
        with np.errstate(over="ignore", invalid="ignore"):
            standard = (x[index] / scale - mean) / std
            arrays[f"x_{split}"] = standard.astype(np.float32)
        _check_representable(arrays[f"x_{split}"], x[index], split)
        arrays[f"y_{split}"] = y[index].astype(np.int64)
    return Dataset(name=name, num_classes=num_classes, **arrays)


#: Magnitude above which (or below whose inverse) a feature is scaled before standardising.
_SAFE_MAGNITUDE = 1e150


def _check_representable(standard: np.ndarray, raw: np.ndarray, split: str) -> None:
    """Standardised values must fit float32: a finite outlier far outside the training pool's
    range (say 1e300 in the validation split) does not, and is named as what it is."""
    bad = ~np.isfinite(standard)
    if bad.any():
        row, feature = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"X has the finite value {raw[row, feature]:g} in feature {feature} (a sample drawn "
            f"for the {split} split) that lies so far outside the training pool's values of "
            f"that feature that, standardised with the pool's mean and std, it exceeds "
            f"float32's range ({np.finfo(np.float32).max:g}); {int(bad.sum())} value(s) do: "
            "remove or clip such outliers"
        )


def cache_dir() -> Path:
    """Folder for cached generated data.

    ``$LOSSGYM_CACHE`` if set, else ``$XDG_CACHE_HOME/lossgym`` (when that is an absolute path,
    as the XDG spec requires), else ``~/.cache/lossgym``. Created on first write.
    """
    explicit = os.environ.get("LOSSGYM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "lossgym"
    return Path.home() / ".cache" / "lossgym"


@dataclass(frozen=True)
class _Mnist1dRecipe:
    """How the built-in MNIST-1D dataset is generated and split (sizes are per class).

    A pool of 3000 per class lets an exponential long tail with n_max=3000 at rho=100 keep 30
    samples in its tail class.
    """

    val_per_class: int = 100
    test_per_class: int = 300
    pool_per_class: int = 3000
    generation_seed: int = 20_240_601
    split_seed: int = 1

    @property
    def per_class(self) -> int:
        return self.val_per_class + self.test_per_class + self.pool_per_class


_MNIST1D = _Mnist1dRecipe()
_MNIST1D_CLASSES = 10
_MNIST1D_FEATURES = 40  # mnist1d's default final_seq_length
# Bump when the cached file's layout or the generation overrides change meaning.
_CACHE_FORMAT = 1


def _mnist1d_overrides(recipe: _Mnist1dRecipe) -> dict[str, object]:
    # train_split=1.0: mnist1d's own split is not balanced per class, so split it ourselves.
    return {
        "num_samples": recipe.per_class * _MNIST1D_CLASSES,
        "seed": recipe.generation_seed,
        "train_split": 1.0,
    }


def _mnist1d_cache_path(recipe: _Mnist1dRecipe) -> Path:
    # mnist1d's defaults and algorithm are pinned by its version, so the key needs only that and
    # our overrides; computing it must not import mnist1d (that pulls in matplotlib).
    key_source = {
        "format": _CACHE_FORMAT,
        "mnist1d": metadata.version("mnist1d"),
        "overrides": _mnist1d_overrides(recipe),
    }
    digest = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"mnist1d-v{_CACHE_FORMAT}-{digest}.npz"


def _generate_mnist1d(recipe: _Mnist1dRecipe) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for field, value in _mnist1d_overrides(recipe).items():
        setattr(args, field, value)
    # make_dataset seeds Python's and NumPy's global generators (it never touches torch);
    # restore both so that generating the data is invisible to the caller.
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return generated["x"].astype(np.float32), generated["y"].astype(np.int64)


def _read_cached(path: Path, num_samples: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or of the wrong shape."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            x, y = cached["x"], cached["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if x.shape != (num_samples, _MNIST1D_FEATURES) or x.dtype != np.float32:
        return None
    if y.shape != (num_samples,) or y.dtype != np.int64:
        return None
    return x, y


def _write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that readers see either no file or the complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file private (0600); the cached data is public, and a shared cache
        # folder should let every user read it.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _mnist1d_dataset(recipe: _Mnist1dRecipe) -> Dataset:
    path = _mnist1d_cache_path(recipe)
    num_samples = recipe.per_class * _MNIST1D_CLASSES
    cached = _read_cached(path, num_samples)
    if cached is None:
        x, y = _generate_mnist1d(recipe)
        _write_npz_atomically(path, {"x": x, "y": y})
    else:
        x, y = cached
    return _assemble(
        "mnist1d",
        x.astype(np.float64),
        y,
        _MNIST1D_CLASSES,
        recipe.val_per_class,
        recipe.test_per_class,
        np.random.default_rng(recipe.split_seed),
        per_feature=False,
    )


def _load_mnist1d() -> Dataset:
    return _mnist1d_dataset(_MNIST1D)


_DIGITS_VAL = 30
_DIGITS_TEST = 50
# load_digits' smallest class (8) has 174 images; 174 - 30 - 50 remain for the pool.
_DIGITS_TRAIN_PER_CLASS = 94


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _assemble(
        "digits",
        bunch.data.astype(np.float64),
        bunch.target.astype(np.int64),
        10,
        _DIGITS_VAL,
        _DIGITS_TEST,
        np.random.default_rng(1),
        per_feature=True,
    )


_SYNTHETIC_VAL = 100
_SYNTHETIC_TEST = 300
_SYNTHETIC_POOL = 3000
_SYNTHETIC_FEATURES = 40


def _load_synthetic() -> Dataset:
    from sklearn.datasets import make_classification

    # 2 clusters per class x 10 classes divide the samples evenly, so every class gets exactly
    # _SYNTHETIC_VAL + _SYNTHETIC_TEST + _SYNTHETIC_POOL. class_sep=1.0 makes it moderately hard:
    # a 2x128 MLP trained for 800 AdamW steps reaches about 80% accuracy on the balanced pool.
    # flip_y=0 because label noise is a task factor, applied by sample_train_pool.
    x, y = make_classification(
        n_samples=10 * (_SYNTHETIC_VAL + _SYNTHETIC_TEST + _SYNTHETIC_POOL),
        n_features=_SYNTHETIC_FEATURES,
        n_informative=20,
        n_redundant=10,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.0,
        random_state=20_240_601,
    )
    return _assemble(
        "synthetic",
        x.astype(np.float64),
        y.astype(np.int64),
        10,
        _SYNTHETIC_VAL,
        _SYNTHETIC_TEST,
        np.random.default_rng(1),
        per_feature=True,
    )


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"{type(value).__name__} {value!r}"


register_dataset(
    DatasetInfo(
        name="mnist1d",
        num_classes=_MNIST1D_CLASSES,
        num_features=_MNIST1D_FEATURES,
        train_per_class=_MNIST1D.pool_per_class,
        default_n_max=3000,
        loader=_load_mnist1d,
    )
)
register_dataset(
    DatasetInfo(
        name="digits",
        num_classes=10,
        num_features=64,
        train_per_class=_DIGITS_TRAIN_PER_CLASS,
        default_n_max=_DIGITS_TRAIN_PER_CLASS,
        loader=_load_digits,
    )
)
register_dataset(
    DatasetInfo(
        name="synthetic",
        num_classes=10,
        num_features=_SYNTHETIC_FEATURES,
        train_per_class=_SYNTHETIC_POOL,
        default_n_max=3000,
        loader=_load_synthetic,
    )
)
