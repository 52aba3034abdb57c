"""Task specifications and the meta-RL task distribution.

A :class:`TaskSpec` fully describes one episode's inner training run: dataset, imbalance, label
noise, architecture, optimiser, training budget and seed. Specs are validated on construction
against the dataset registry's metadata only, so building (or sampling) a spec never loads or
generates data.

A :class:`TaskDistribution` is a set of factor grids (:class:`TaskFactors`) for three disjoint
splits: ``"train"`` (tasks an agent meta-trains on), ``"held_out_id"`` (the training factors with
unseen seeds) and ``"held_out_ood"`` (unseen datasets, architectures or imbalance ratios, also with
unseen seeds).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import numpy as np

from lossgym import _checks as checks
from lossgym.data import (
    MIN_TRAIN_PER_CLASS,
    PROFILES,
    Dataset,
    TrainPool,
    dataset_info,
    dataset_names,
    sample_train_pool,
)
from lossgym.data import class_counts as _profile_counts
from lossgym.optim import OPTIMIZERS

ARCHS = ("mlp", "cnn")
TASK_SPLITS = ("train", "held_out", "held_out_id", "held_out_ood")

SEED_STREAMS: dict[str, int] = {"data": 0x64617461, "init": 0x696E6974, "order": 0x6F726472}
"""Fixed per-stream integers for :meth:`TaskSpec.derive_seed` (the ASCII codes of "data",
"init" and "ordr"). Large constants keep them apart from the keys ``SeedSequence.spawn`` uses."""

_SEED_LIMIT = 2**63

MAX_SAMPLES_PER_STEP = 2**24
"""The most training samples one step may draw (``minibatches_per_step * batch_size``): the
engine draws a step's sample indices at once, 8 bytes each per member (here 128 MiB)."""


def _choice_field(field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"TaskSpec.{field}={value!r} is invalid: must be one of {choices}")
    return value


def _dataset_field(value: object) -> str:
    if not isinstance(value, str) or value not in dataset_names():
        raise ValueError(
            f"TaskSpec.dataset={value!r} is not a registered dataset; known datasets: "
            f"{', '.join(dataset_names())}"
        )
    return value


# Checks (and normalises, e.g. int -> float) every field whose rule does not depend on the dataset.
_RULES: dict[str, Callable[[object], object]] = {
    "dataset": _dataset_field,
    "imbalance_ratio": partial(checks.real, "TaskSpec.imbalance_ratio", low=1.0, high=1000.0),
    "imbalance_profile": partial(_choice_field, "imbalance_profile", choices=PROFILES),
    "label_noise": partial(checks.real, "TaskSpec.label_noise", low=0.0, high=0.5, open_high=True),
    "arch": partial(_choice_field, "arch", choices=ARCHS),
    "width": partial(checks.integer, "TaskSpec.width", low=4, high=2048),
    "depth": partial(checks.integer, "TaskSpec.depth", low=1, high=6),
    "optimizer": partial(_choice_field, "optimizer", choices=OPTIMIZERS),
    "lr": partial(checks.real, "TaskSpec.lr", low=0.0, high=10.0, open_low=True),
    "weight_decay": partial(checks.real, "TaskSpec.weight_decay", low=0.0, high=1.0),
    "momentum": partial(checks.real, "TaskSpec.momentum", low=0.0, high=1.0, open_high=True),
    "batch_size": partial(checks.integer, "TaskSpec.batch_size", low=1, high=65536),
    "minibatches_per_step": partial(checks.integer, "TaskSpec.minibatches_per_step", low=1),
    "horizon": partial(checks.integer, "TaskSpec.horizon", low=1),
    "seed": partial(checks.integer, "TaskSpec.seed", low=0, high=_SEED_LIMIT - 1),
}


@dataclass(frozen=True)
class TaskSpec:
    """One inner training run (one episode).

    Attributes:
        dataset: Registered dataset name (see :func:`lossgym.data.dataset_names`).
        num_classes: Number of classes; None means the dataset's, otherwise it must equal it.
            Always a concrete int after construction.
        imbalance_ratio: Largest / smallest training-class size rho, in [1, 1000].
        imbalance_profile: ``"exp"`` (long tail) or ``"step"``; see
            :func:`lossgym.data.class_counts`.
        n_max: Training samples of the largest class; None means the dataset's
            ``default_n_max``; at most its ``train_per_class``. Always an int after construction.
        label_noise: Probability in [0, 0.5) that a training label is replaced by a uniformly
            drawn other class.
        arch: ``"mlp"`` or ``"cnn"`` (1-D CNN over the feature vector).
        width: Hidden units per layer (MLP) or channels (CNN), in [4, 2048].
        depth: Number of hidden layers, in [1, 6].
        optimizer: ``"adamw"`` (decoupled weight decay), ``"adam"`` (Adam with weight decay as
            coupled L2) or ``"sgd"`` (with ``momentum``).
        lr: Learning rate, in (0, 10].
        weight_decay: Weight decay, in [0, 1].
        momentum: SGD momentum, in [0, 1); ignored by the other optimisers.
        batch_size: Minibatch size, in [1, 65536].
        minibatches_per_step: Optimiser updates per environment step (>= 1), at most
            :data:`MAX_SAMPLES_PER_STEP` samples a step with ``batch_size``.
        horizon: Environment steps per episode (>= 1).
        seed: Root seed in [0, 2**63); see :meth:`derive_seed`.

    Every class must get at least :data:`MIN_TRAIN_PER_CLASS` training samples.
    """

    dataset: str = "mnist1d"
    num_classes: int | None = None
    imbalance_ratio: float = 100.0
    imbalance_profile: str = "exp"
    n_max: int | None = None
    label_noise: float = 0.0
    arch: str = "mlp"
    width: int = 128
    depth: int = 2
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9
    batch_size: int = 128
    minibatches_per_step: int = 40
    horizon: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name, rule in _RULES.items():
            object.__setattr__(self, name, rule(getattr(self, name)))
        info = dataset_info(self.dataset)
        if self.num_classes is None:
            object.__setattr__(self, "num_classes", info.num_classes)
        elif checks.integer("TaskSpec.num_classes", self.num_classes, 2) != info.num_classes:
            raise ValueError(
                f"TaskSpec.num_classes={self.num_classes!r} does not match dataset "
                f"{self.dataset!r}, which has {info.num_classes} classes (use None or "
                f"{info.num_classes})"
            )
        if self.n_max is None:
            object.__setattr__(self, "n_max", info.default_n_max)
        else:
            object.__setattr__(
                self, "n_max", checks.integer("TaskSpec.n_max", self.n_max, 1, info.train_per_class)
            )
        self._check_smallest_class(info.train_per_class)
        samples = self.minibatches_per_step * self.batch_size
        if samples > MAX_SAMPLES_PER_STEP:
            raise ValueError(
                f"TaskSpec.minibatches_per_step={self.minibatches_per_step!r} is out of range: "
                f"with batch_size={self.batch_size} one step would draw {samples:,} samples "
                f"({_size(samples * 8)} of indices per member); at most "
                f"{MAX_SAMPLES_PER_STEP:,} samples a step are allowed, so minibatches_per_step "
                f"<= {MAX_SAMPLES_PER_STEP // self.batch_size}"
            )

    def _check_smallest_class(self, train_per_class: int) -> None:
        counts = self.class_counts()
        short = np.flatnonzero(counts < MIN_TRAIN_PER_CLASS)
        if short.size == 0:
            return
        worst = int(short[np.argmin(counts[short])])
        fixes = []
        if self.n_max >= MIN_TRAIN_PER_CLASS:
            fixes.append(f"lower imbalance_ratio to at most {self.n_max / MIN_TRAIN_PER_CLASS:g}")
        needed_n_max = math.ceil(MIN_TRAIN_PER_CLASS * self.imbalance_ratio)
        if needed_n_max <= train_per_class:
            fixes.append(f"raise n_max to at least {needed_n_max}")
        raise ValueError(
            f"TaskSpec leaves class {worst} of dataset {self.dataset!r} with {int(counts[worst])} "
            f"training samples ({short.size} classes below {MIN_TRAIN_PER_CLASS}) at "
            f"imbalance_ratio={self.imbalance_ratio:g}, imbalance_profile="
            f"{self.imbalance_profile!r}, n_max={self.n_max} (the dataset offers up to "
            f"{train_per_class} per class); every class needs at least {MIN_TRAIN_PER_CLASS}: "
            f"{' or '.join(fixes)}"
        )

    def class_counts(self) -> np.ndarray:
        """int64 ``[C]``: training samples per (clean) class, largest first."""
        return _profile_counts(
            self.num_classes, self.n_max, self.imbalance_ratio, self.imbalance_profile
        )

    @property
    def num_train(self) -> int:
        """Size of the training set."""
        return int(self.class_counts().sum())

    @property
    def total_minibatches(self) -> int:
        """Optimiser updates in one episode: ``horizon * minibatches_per_step``."""
        return self.horizon * self.minibatches_per_step

    @property
    def epochs(self) -> float:
        """Approximate passes over the training set in one episode."""
        return self.total_minibatches * self.batch_size / self.num_train

    def to_dict(self) -> dict[str, Any]:
        """All fields (with ``num_classes`` and ``n_max`` resolved) as JSON-compatible values."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TaskSpec:
        """Build a spec from a mapping of field names to values (missing fields take defaults).

        Args:
            values: Field values, e.g. from :meth:`to_dict`; unknown keys raise ValueError.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"TaskSpec.from_dict expects a mapping, got {type(values).__name__}")
        _reject_unknown_keys(values.keys(), "TaskSpec.from_dict")
        return cls(**values)

    def to_json(self) -> str:
        """The spec as a JSON object (keys sorted), readable by :meth:`from_json`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        """Parse a spec written by :meth:`to_json`.

        Args:
            text: A JSON object of field values.
        """
        if not isinstance(text, str):
            raise ValueError(f"TaskSpec.from_json expects a str, got {type(text).__name__}")
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"TaskSpec JSON is malformed: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"TaskSpec JSON must be an object, got {type(values).__name__}")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> TaskSpec:
        """A validated copy with some fields changed.

        When ``dataset`` changes, ``num_classes`` and ``n_max`` are re-resolved for the new
        dataset unless given in ``changes``.

        Args:
            changes: New field values by name; unknown names raise ValueError.
        """
        _reject_unknown_keys(changes.keys(), "TaskSpec.replace")
        if changes.get("dataset", self.dataset) != self.dataset:
            changes = {"num_classes": None, "n_max": None, **changes}
        return dataclasses.replace(self, **changes)

    def derive_seed(self, stream: str) -> int:
        """A 63-bit seed for one named random stream of this task.

        The seed is the first 64-bit word of
        ``np.random.SeedSequence(entropy=self.seed, spawn_key=(SEED_STREAMS[stream],))``
        shifted right by one bit, so streams are statistically independent of each other and of
        other tasks' seeds, and stable across versions.

        Args:
            stream: ``"data"`` (training-pool subsample and label noise), ``"init"`` (weight
                initialisation) or ``"order"`` (minibatch order).
        """
        if not isinstance(stream, str) or stream not in SEED_STREAMS:
            raise ValueError(f"stream={stream!r} is unknown; known streams: {tuple(SEED_STREAMS)}")
        sequence = np.random.SeedSequence(entropy=self.seed, spawn_key=(SEED_STREAMS[stream],))
        return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1

    def train_pool(self, dataset: Dataset) -> TrainPool:
        """This task's training set, drawn from ``dataset`` with the ``"data"`` seed stream.

        Args:
            dataset: The loaded dataset named by :attr:`dataset`.
        """
        if not isinstance(dataset, Dataset) or dataset.name != self.dataset:
            raise ValueError(
                f"train_pool needs the loaded dataset {self.dataset!r}, got "
                f"{getattr(dataset, 'name', type(dataset).__name__)!r}"
            )
        return sample_train_pool(
            dataset,
            self.class_counts(),
            self.label_noise,
            np.random.default_rng(self.derive_seed("data")),
        )


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:,.3g} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _reject_unknown_keys(keys: Any, where: str) -> None:
    known = [field.name for field in fields(TaskSpec)]
    unknown = sorted(str(key) for key in keys if key not in known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {known}")


# TaskFactors field -> the TaskSpec field its values are drawn for.
_FACTOR_FIELDS: dict[str, str] = {
    "datasets": "dataset",
    "imbalance_ratios": "imbalance_ratio",
    "imbalance_profiles": "imbalance_profile",
    "label_noises": "label_noise",
    "archs": "arch",
    "widths": "width",
    "depths": "depth",
    "optimizers": "optimizer",
    "lrs": "lr",
    "weight_decays": "weight_decay",
    "minibatches_per_step": "minibatches_per_step",
    "horizons": "horizon",
    "n_maxes": "n_max",
}


@dataclass(frozen=True)
class TaskFactors:
    """A product grid of task factors: each factor is drawn uniformly from its tuple.

    Fields not listed here (``num_classes``, ``momentum``, ``batch_size``) keep their
    :class:`TaskSpec` defaults. Every factor tuple must be non-empty and duplicate-free.

    Attributes:
        datasets: Dataset names.
        imbalance_ratios: Imbalance ratios rho.
        imbalance_profiles: ``"exp"`` and/or ``"step"``.
        label_noises: Label-noise rates.
        archs: Architectures.
        widths: Hidden widths / channels.
        depths: Hidden-layer counts.
        optimizers: Optimiser names.
        lrs: Learning rates.
        weight_decays: Weight-decay values.
        minibatches_per_step: Updates per environment step (sets the training budget).
        horizons: Environment steps per episode.
        n_maxes: Training samples of the largest class (None: the dataset's default, its
            whole pool). Drawn only when it holds several values, so a grid without it draws
            exactly the tasks it drew before this factor existed.
        seed_range: Seeds are drawn uniformly from the half-open range ``[start, stop)``.
    """

    datasets: tuple[str, ...] = ("mnist1d",)
    imbalance_ratios: tuple[float, ...] = (100.0,)
    imbalance_profiles: tuple[str, ...] = ("exp",)
    label_noises: tuple[float, ...] = (0.0,)
    archs: tuple[str, ...] = ("mlp",)
    widths: tuple[int, ...] = (128,)
    depths: tuple[int, ...] = (2,)
    optimizers: tuple[str, ...] = ("adamw",)
    lrs: tuple[float, ...] = (1e-3,)
    weight_decays: tuple[float, ...] = (1e-2,)
    minibatches_per_step: tuple[int, ...] = (40,)
    horizons: tuple[int, ...] = (20,)
    n_maxes: tuple[int | None, ...] = (None,)
    seed_range: tuple[int, int] = (0, 10_000)

    def __post_init__(self) -> None:
        for factor, spec_field in _FACTOR_FIELDS.items():
            values = getattr(self, factor)
            if isinstance(values, str) or not isinstance(values, (tuple, list)) or not values:
                raise ValueError(
                    f"TaskFactors.{factor}={values!r} is invalid: must be a non-empty tuple of "
                    f"{spec_field} values"
                )
            normalised = tuple(_factor_rule(spec_field, value) for value in values)
            if len(set(normalised)) != len(normalised):
                raise ValueError(f"TaskFactors.{factor}={values!r} has duplicate values")
            object.__setattr__(self, factor, normalised)
        start, stop = _seed_range(self.seed_range)
        object.__setattr__(self, "seed_range", (start, stop))

    def values(self, spec_field: str) -> tuple[Any, ...]:
        """The grid's values for one TaskSpec field (e.g. ``"arch"``)."""
        for factor, field in _FACTOR_FIELDS.items():
            if field == spec_field:
                return getattr(self, factor)
        raise ValueError(
            f"spec_field={spec_field!r} is not a factor; factors: {tuple(_FACTOR_FIELDS.values())}"
        )

    def draw(self, rng: np.random.Generator) -> TaskSpec:
        """One spec with every factor drawn uniformly; raises ValueError if the combination is
        invalid (e.g. too few samples in the tail class).

        Args:
            rng: Source of randomness; advanced by the call.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        chosen: dict[str, Any] = {}
        for factor, spec_field in _FACTOR_FIELDS.items():
            options = getattr(self, factor)
            if factor == "n_maxes" and len(options) == 1:
                chosen[spec_field] = options[0]  # no draw: the sequence stays as before it
                continue
            chosen[spec_field] = options[int(rng.integers(len(options)))]
        chosen["seed"] = int(rng.integers(*self.seed_range))
        return TaskSpec(**chosen)

    def base_tasks(self) -> list[TaskSpec]:
        """Every valid combination of the factors, at the first seed of the range: the
        distinct base tasks :meth:`draw` can return (invalid combinations, which ``draw``
        refuses, are left out)."""
        out = []
        for values in itertools.product(*(getattr(self, f) for f in _FACTOR_FIELDS)):
            try:
                out.append(TaskSpec(**dict(zip(_FACTOR_FIELDS.values(), values, strict=True)),
                                    seed=self.seed_range[0]))
            except ValueError:
                continue
        return out

    def contains(self, spec: TaskSpec) -> bool:
        """Whether ``draw`` can return ``spec``."""
        start, stop = self.seed_range
        if not start <= spec.seed < stop:
            return False
        if any(getattr(spec, field) not in self.values(field) for field in _FACTOR_FIELDS.values()
               if field != "n_max"):
            return False
        default = dataset_info(spec.dataset).default_n_max  # what None resolves to
        if not any(spec.n_max == (default if n is None else n) for n in self.n_maxes):
            return False
        # Non-factor fields must be the defaults that draw() leaves them at.
        rebuilt = {field: getattr(spec, field) for field in _FACTOR_FIELDS.values()}
        try:
            return TaskSpec(**rebuilt, seed=spec.seed) == spec
        except ValueError:
            # Only a non-default field (e.g. a larger n_max) made the spec valid.
            return False


def _seed_range(value: object) -> tuple[int, int]:
    valid = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(checks.is_integer(v) for v in value)
        and 0 <= value[0] < value[1] <= _SEED_LIMIT
    )
    if not valid:
        raise ValueError(
            f"TaskFactors.seed_range={value!r} is invalid: must be (start, stop) ints with "
            f"0 <= start < stop <= 2**63"
        )
    return int(value[0]), int(value[1])


def _factor_rule(spec_field: str, value: object) -> object:
    """A factor's value checked (and normalised) as the TaskSpec field checks it; ``n_max``
    may also be None (the dataset's default) and is checked against the pool by TaskSpec."""
    if spec_field == "n_max":
        return None if value is None else checks.integer("TaskFactors.n_maxes", value, 1)
    return _RULES[spec_field](value)


# Rejection sampling gives up after this many invalid combinations in a row.
_MAX_DRAWS = 1000
_HELD_OUT_SEEDS = (1_000_000, 2_000_000)


@dataclass(frozen=True)
class TaskDistribution:
    """The meta-RL task distribution: factor grids for three disjoint splits.

    Disjointness is structural and checked on construction:

    * every held-out grid's seed range is disjoint from every train grid's seed range, so no
      held-out spec is a train spec;
    * ``held_out_id`` grids use only factor values that occur in the train grids;
    * every ``held_out_ood`` grid has at least one factor none of whose values occurs in the
      train grids, so no OOD spec is an ID spec.

    Attributes:
        train: Grids of the training split.
        held_out_id: Grids of in-distribution held-out tasks (seen factors, unseen seeds).
        held_out_ood: Grids of out-of-distribution held-out tasks.
    """

    train: tuple[TaskFactors, ...]
    held_out_id: tuple[TaskFactors, ...]
    held_out_ood: tuple[TaskFactors, ...]

    def __post_init__(self) -> None:
        for split in ("train", "held_out_id", "held_out_ood"):
            grids = getattr(self, split)
            if not isinstance(grids, (tuple, list)) or not grids:
                raise ValueError(
                    f"TaskDistribution.{split} must be a non-empty tuple of TaskFactors, "
                    f"got {grids!r}"
                )
            for grid in grids:
                if not isinstance(grid, TaskFactors):
                    raise ValueError(
                        f"TaskDistribution.{split} must hold TaskFactors, got {type(grid).__name__}"
                    )
            object.__setattr__(self, split, tuple(grids))
        seen = {
            field: {value for grid in self.train for value in grid.values(field)}
            for field in _FACTOR_FIELDS.values()
        }
        for split in ("held_out_id", "held_out_ood"):
            for index, grid in enumerate(getattr(self, split)):
                for train_grid in self.train:
                    if _overlap(grid.seed_range, train_grid.seed_range):
                        raise ValueError(
                            f"TaskDistribution.{split}[{index}].seed_range={grid.seed_range} "
                            f"overlaps the train seed range {train_grid.seed_range}"
                        )
        for index, grid in enumerate(self.held_out_id):
            for field, train_values in seen.items():
                unseen = set(grid.values(field)) - train_values
                if unseen:
                    raise ValueError(
                        f"TaskDistribution.held_out_id[{index}] uses {field} values "
                        f"{sorted(unseen, key=str)} that no train grid has; those belong in "
                        "held_out_ood"
                    )
        for index, grid in enumerate(self.held_out_ood):
            if all(set(grid.values(field)) & train_values for field, train_values in seen.items()):
                raise ValueError(
                    f"TaskDistribution.held_out_ood[{index}] needs at least one factor whose "
                    "values all differ from the train grids' (e.g. an unseen dataset or arch)"
                )

    @classmethod
    def default(cls) -> TaskDistribution:
        """The standard lossgym distribution.

        * train: datasets mnist1d and synthetic; exponential imbalance rho in {10, 20, 50, 100};
          label noise {0, 0.1, 0.2}; MLP of width {64, 128, 256}, depth 2; AdamW with lr 1e-3 and
          weight decay {1e-3, 1e-2, 1e-1}; budget via minibatches_per_step {20, 40, 60} over a
          horizon of 20; seeds 0..9999.
        * held_out_id: the same factors with seeds in [1_000_000, 2_000_000).
        * held_out_ood (same seeds), three grids: unseen ratios rho in {30, 200}; the unseen
          CNN architecture on MNIST-1D (16 or 32 channels, since a 1-D CNN costs about 10x an
          MLP per sample at equal width; learning rate 1e-2, where it learns); the unseen
          dataset digits at rho in {10, 15} (its pool of 94 per class leaves a tail class of
          at least 5 only up to rho = 18.8).
        """
        train = TaskFactors(
            datasets=("mnist1d", "synthetic"),
            imbalance_ratios=(10.0, 20.0, 50.0, 100.0),
            label_noises=(0.0, 0.1, 0.2),
            widths=(64, 128, 256),
            weight_decays=(1e-3, 1e-2, 1e-1),
            minibatches_per_step=(20, 40, 60),
            seed_range=(0, 10_000),
        )
        return cls._with_held_out(train)

    @classmethod
    def named(cls, name: str) -> TaskDistribution:
        """The distribution called ``name``: one of :data:`DISTRIBUTIONS`."""
        if name not in DISTRIBUTIONS:
            raise ValueError(f"distribution={name!r} is not known; choose one of "
                             f"{DISTRIBUTIONS}")
        return getattr(cls, name)()

    @classmethod
    def _with_held_out(cls, train: TaskFactors) -> TaskDistribution:
        """A distribution on the train grid ``train`` with the standard held-out splits: the
        same factors with unseen seeds, and three OOD grids (unseen ratios, the CNN, digits)."""
        held_out = dataclasses.replace(train, seed_range=_HELD_OUT_SEEDS)
        return cls(
            train=(train,),
            held_out_id=(held_out,),
            held_out_ood=(
                dataclasses.replace(held_out, imbalance_ratios=(30.0, 200.0)),
                # MNIST-1D's signals only (a CNN over make_classification's unordered features
                # stays at chance), at lr 1e-2: at 1e-3 the CNN's cross-entropy scored 11 % on
                # 10 classes, within noise of chance, so that grid tested nothing.
                dataclasses.replace(held_out, datasets=("mnist1d",), archs=("cnn",),
                                    widths=(16, 32), lrs=(1e-2,)),
                dataclasses.replace(held_out, datasets=("digits",), imbalance_ratios=(10.0, 15.0)),
            ),
        )

    def sample(self, rng: np.random.Generator, split: str = "train") -> TaskSpec:
        """Draw a valid task from one split.

        A grid of the split is chosen uniformly, then each factor uniformly; invalid
        combinations are redrawn from the same grid. ``"held_out"`` first picks
        ``"held_out_id"`` or ``"held_out_ood"`` with equal probability.

        Args:
            rng: Source of all randomness; advanced by the call.
            split: One of :data:`TASK_SPLITS`.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if split not in TASK_SPLITS:
            raise ValueError(f"split={split!r} is unknown; splits: {TASK_SPLITS}")
        if split == "held_out":
            split = ("held_out_id", "held_out_ood")[int(rng.integers(2))]
        grids = getattr(self, split)
        index = int(rng.integers(len(grids)))
        last_error: ValueError | None = None
        for _ in range(_MAX_DRAWS):
            try:
                return grids[index].draw(rng)
            except ValueError as error:
                last_error = error
        raise ValueError(
            f"{split}[{index}] gave no valid task in {_MAX_DRAWS} draws; last error: {last_error}"
        )

    def split_of(self, spec: TaskSpec) -> str | None:
        """``"train"``, ``"held_out_id"`` or ``"held_out_ood"``: the split whose grids can
        produce ``spec``; None if none can."""
        if not isinstance(spec, TaskSpec):
            raise ValueError(f"spec must be a TaskSpec, got {type(spec).__name__}")
        for split in ("train", "held_out_id", "held_out_ood"):
            if any(grid.contains(spec) for grid in getattr(self, split)):
                return split
        return None

    def is_train(self, spec: TaskSpec) -> bool:
        """Whether ``spec`` belongs to the train split."""
        return self.split_of(spec) == "train"

    @classmethod
    def wide(cls) -> TaskDistribution:
        """:meth:`default` widened over the training regime, where the best loss and the best
        time to change it move (``scripts/headroom.py`` measures the room on both).

        * train: datasets mnist1d and synthetic; exponential imbalance rho in {10, 20, 50,
          100}; label noise {0, 0.1, 0.2, 0.3, 0.4} (default: up to 0.2); MLP of width
          {64, 128}, depth 2 (default: also 256, which costs about 3x per run); AdamW
          (decoupled weight decay) or Adam (weight decay as coupled L2; default: AdamW only)
          with lr {3e-4, 1e-3, 3e-3} (default: 1e-3) and weight decay {0, 1e-3, 1e-2, 1e-1}
          (default: no 0); budget via minibatches_per_step {5, 10, 20, 40, 80} over a horizon
          of 20, about 1 to 28 epochs (default: {20, 40, 60}, about 4 to 21); seeds 0..9999.
        * held_out_id and held_out_ood: built from the train grid as in :meth:`default`
          (unseen seeds; unseen ratios {30, 200}; the CNN on MNIST-1D at 16 or 32 channels and
          lr 1e-2; digits at rho in {10, 15}).
        """
        train = TaskFactors(
            datasets=("mnist1d", "synthetic"),
            imbalance_ratios=(10.0, 20.0, 50.0, 100.0),
            label_noises=(0.0, 0.1, 0.2, 0.3, 0.4),
            widths=(64, 128),
            optimizers=("adamw", "adam"),
            lrs=(3e-4, 1e-3, 3e-3),
            weight_decays=(0.0, 1e-3, 1e-2, 1e-1),
            minibatches_per_step=(5, 10, 20, 40, 80),
            seed_range=(0, 10_000),
        )
        return cls._with_held_out(train)

    @classmethod
    def noisy(cls) -> TaskDistribution:
        """:meth:`default` with label noise 0 or 0.4 in every split: the data is clean or
        heavily noisy, and nothing but the run itself tells which (the context features do not
        hold the noise). Here the best logit scale depends on the noise
        (``results/hidden_noise/``), so a closed loop has something to read off the run."""
        train = dataclasses.replace(cls.default().train[0], label_noises=(0.0, 0.4))
        return cls._with_held_out(train)

    @classmethod
    def noisy_sizes(cls) -> TaskDistribution:
        """:meth:`noisy` whose train split also varies the training-set size: the largest
        class keeps its whole pool (3,000 samples), 600 or 120 (``n_maxes``; 120 only where
        the tail class keeps 5 samples, rho <= 24). At a fixed number of minibatches a small
        set is a long budget in epochs: train sizes about 400 to 12,000 samples and 4 to 380
        epochs, where :meth:`noisy` trains on about 7,000 to 12,000 samples and 4 to 21
        epochs. Digits (about 400 samples, 130 to 400 epochs) and the small sets of ordinary
        training loops then lie inside the range of the context features an agent trains on
        (``scripts/context_range.py``). The held-out splits are :meth:`noisy`'s, drawn
        identically (the default ``n_maxes`` draws nothing), so agents of the two meet the
        same held-out suite."""
        noisy = cls.noisy()
        train = dataclasses.replace(noisy.train[0], n_maxes=(None, 600, 120))
        return cls(train=(train,), held_out_id=noisy.held_out_id,
                   held_out_ood=noisy.held_out_ood)


#: The named distributions (:meth:`TaskDistribution.named`).
DISTRIBUTIONS = ("default", "wide", "noisy", "noisy_sizes")


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]
