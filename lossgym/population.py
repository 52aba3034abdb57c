"""The batched engine: a population of N inner classifiers trained as one torch program.

Members share the dataset and the architecture. Each has its own task (imbalance, label
noise, seed, learning rate, weight decay, budget), its own training pool, its own generators
for initialisation and data order, its own optimiser state and its own loss parameters. The
data stays on the device; a minibatch is a gather of ``[N, B]`` indices.

A member whose loss (or gradient) goes non-finite is flagged in ``diverged`` and frozen; the
others carry on. A member is reset on its own with :meth:`Population.reset_member`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lossgym.data import Dataset, load_dataset
from lossgym.metrics import classification_metrics, fit_temperature, soft_balanced_accuracy
from lossgym.models import StackedNet
from lossgym.optim import BatchedOptimizer
from lossgym.tasks import TaskSpec

#: Task fields that all members of one population must share.
SHARED_FIELDS = ("dataset", "arch", "width", "depth", "batch_size", "optimizer")

DATA_SPLITS = ("train", "val", "test")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a ``device`` argument names: ``"auto"`` picks CUDA when it is available,
    else the CPU. Anything but the CPU or a CUDA device this machine has raises ``ValueError``
    naming the value (the one device check of the env, the engine, the methods and the CLI)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device) if isinstance(device, (str, torch.device)) else None
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: must be 'auto', 'cpu', 'cuda', "
                         "'cuda:N' or a torch.device")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device={device!r}: no CUDA device is available here; use 'cpu' "
                             "or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={device!r}: there is no CUDA device {dev.index} (this "
                             f"machine has {count}); use 'cuda:0' ... 'cuda:{count - 1}'")
    return dev


@dataclass(frozen=True)
class MinibatchContext:
    """What a criterion may read besides logits and targets, one row per member.

    Attributes:
        progress: fraction of each member's training budget done before this minibatch, ``[N]``.
        class_counts: each member's training-pool class counts (observed labels), ``[N, C]``.
    """

    progress: Tensor
    class_counts: Tensor


#: A criterion maps logits ``[N, B, C]``, targets ``[N, B]`` and the context to one loss per
#: member, ``[N]``. Members are independent: member i's loss must depend on row i alone.
Criterion = Callable[[Tensor, Tensor, MinibatchContext], Tensor]


@dataclass(frozen=True)
class TrainStats:
    """Per-member statistics of one :meth:`Population.train` call (means over its minibatches).

    Attributes:
        loss: the criterion's loss, ``[N]``.
        ce: plain cross-entropy of the same minibatches (comparable across losses), ``[N]``.
        grad_norm: L2 norm of the gradient, mean over minibatches, ``[N]``.
        grad_norm_std: its standard deviation over the minibatches, ``[N]``.
        minibatches: minibatches each member trained, ``[N]``.
    """

    loss: Tensor
    ce: Tensor
    grad_norm: Tensor
    grad_norm_std: Tensor
    minibatches: Tensor


class Population:
    """N inner classifiers trained together.

    Args:
        tasks: one :class:`TaskSpec` per member. They must agree on :data:`SHARED_FIELDS`.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        eval_chunk: evaluation batch size (it changes memory use, never the results).
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        device: str | torch.device = "auto",
        eval_chunk: int = 1024,
    ):
        tasks = list(tasks)
        if not tasks:
            raise ValueError("a population needs at least one task, got none")
        if eval_chunk < 1:
            raise ValueError(f"eval_chunk={eval_chunk} must be a positive integer")
        self.device = resolve_device(device)
        self.eval_chunk = eval_chunk
        self.reference = tasks[0]
        for i, task in enumerate(tasks):
            self._check_compatible(task, i)
        self.dataset: Dataset = load_dataset(self.reference.dataset)
        self.net = StackedNet(
            self.reference.arch,
            self.dataset.num_features,
            self.dataset.num_classes,
            self.reference.width,
            self.reference.depth,
        )
        self.num_classes = self.dataset.num_classes
        dev = self.device
        self._x = {
            "train": torch.tensor(self.dataset.x_train, device=dev),
            "val": torch.tensor(self.dataset.x_val, device=dev),
            "test": torch.tensor(self.dataset.x_test, device=dev),
        }
        self._y = {
            "val": torch.tensor(self.dataset.y_val, device=dev),
            "test": torch.tensor(self.dataset.y_test, device=dev),
        }
        n = len(tasks)
        self.tasks: list[TaskSpec] = list(tasks)
        # One contiguous [N, ...] tensor per layer: a run of members is then a contiguous
        # slice of each, which the fused optimiser updates in one call.
        self.layers: dict[str, Tensor] = {
            slot.name: torch.zeros((n, *slot.shape), device=dev) for slot in self.net.slots
        }
        self.optimizer = BatchedOptimizer(
            self.reference.optimizer,
            list(self.layers.values()),
            [t.lr for t in tasks],
            [t.weight_decay for t in tasks],
            [t.momentum for t in tasks],
        )
        self.diverged = torch.zeros(n, dtype=torch.bool, device=dev)
        self.minibatches_done = torch.zeros(n, dtype=torch.long)
        self.class_counts = torch.zeros(n, self.num_classes, device=dev)
        self._pool_index: list[Tensor] = [torch.empty(0, dtype=torch.long)] * n
        self._pool_label: list[Tensor] = [torch.empty(0, dtype=torch.long)] * n
        self._order_gen: list[torch.Generator] = [torch.Generator() for _ in range(n)]
        self._order: list[Tensor] = [torch.empty(0, dtype=torch.long)] * n
        self._cursor = [0] * n
        self._flat_stale = True
        for i, task in enumerate(tasks):
            self._init_member(i, task)

    # ------------------------------------------------------------------ members
    @property
    def num_members(self) -> int:
        return len(self.tasks)

    @property
    def params(self) -> Tensor:
        """A copy of all members' parameters as flat rows ``[N, P]`` (layout: ``net.slots``)."""
        return torch.cat([t.flatten(1) for t in self.layers.values()], dim=1)

    @torch.no_grad()
    def set_params(self, flat: Tensor, member: int | None = None) -> None:
        """Overwrite the parameters of all members (``flat`` ``[N, P]``) or of one (``[P]``)."""
        rows = flat.unsqueeze(0) if member is not None else flat
        expected = (1 if member is not None else self.num_members, self.net.num_params)
        if tuple(rows.shape) != expected:
            raise ValueError(f"parameters of shape {tuple(flat.shape)} do not fit; expected "
                             f"{expected[1:] if member is not None else expected}")
        for slot in self.net.slots:
            part = rows[:, slot.offset : slot.offset + slot.size].reshape(-1, *slot.shape)
            target = self.layers[slot.name]
            (target if member is None else target[member : member + 1]).copy_(part)

    def _check_compatible(self, task: TaskSpec, i: int) -> None:
        if not isinstance(task, TaskSpec):
            raise ValueError(f"member {i}: expected a TaskSpec, got {type(task).__name__}")
        for field in SHARED_FIELDS:
            mine, ref = getattr(task, field), getattr(self.reference, field)
            if mine != ref:
                raise ValueError(
                    f"member {i} has {field}={mine!r} but the population uses {field}={ref!r}; "
                    f"members must share {', '.join(SHARED_FIELDS)}"
                )

    def _init_member(self, i: int, task: TaskSpec) -> None:
        pool = task.train_pool(self.dataset)
        self._pool_index[i] = torch.as_tensor(pool.indices, dtype=torch.long)
        self._pool_label[i] = torch.as_tensor(pool.labels, dtype=torch.long)
        self.class_counts[i] = torch.as_tensor(pool.class_counts, dtype=torch.float32)
        init_gen = torch.Generator().manual_seed(task.derive_seed("init"))
        self.set_params(self.net.init_member(init_gen).to(self.device), member=i)
        self._order_gen[i] = torch.Generator().manual_seed(task.derive_seed("order"))
        self._order[i] = torch.empty(0, dtype=torch.long)
        self._cursor[i] = 0
        self.diverged[i] = False
        self.minibatches_done[i] = 0
        self._flat_stale = True

    def reset_member(self, i: int, task: TaskSpec) -> None:
        """Start member ``i`` afresh on ``task``; the other members are not touched."""
        if not 0 <= i < self.num_members:
            raise ValueError(f"member index {i} is out of range 0..{self.num_members - 1}")
        self._check_compatible(task, i)
        self.tasks[i] = task
        self.optimizer.reset_member(i, task.lr, task.weight_decay, task.momentum)
        self._init_member(i, task)

    def _rebuild_flat_pools(self) -> None:
        # All pools concatenated, so that one gather serves every member's minibatch.
        sizes = [len(p) for p in self._pool_index]
        self._pool_offset = torch.tensor([0] + sizes[:-1]).cumsum(0)
        self._flat_index = torch.cat(self._pool_index).to(self.device)
        self._flat_label = torch.cat(self._pool_label).to(self.device)
        self._flat_stale = False

    def _next_positions(self, i: int, count: int) -> Tensor:
        """The next ``count`` positions in member i's pool: epochs of random permutations,
        continued across calls, so a member's data order does not depend on how its budget
        is split into steps."""
        pool_size = len(self._pool_index[i])
        out = []
        needed = count
        while needed > 0:
            if self._cursor[i] >= len(self._order[i]):
                self._order[i] = torch.randperm(pool_size, generator=self._order_gen[i])
                self._cursor[i] = 0
            take = min(needed, len(self._order[i]) - self._cursor[i])
            out.append(self._order[i][self._cursor[i] : self._cursor[i] + take])
            self._cursor[i] += take
            needed -= take
        return torch.cat(out)

    # ---------------------------------------------------------------- training
    def progress(self) -> Tensor:
        """Fraction of each member's training budget done, ``[N]`` on the device."""
        budgets = torch.tensor([t.total_minibatches for t in self.tasks], dtype=torch.float32)
        return (self.minibatches_done.float() / budgets).to(self.device)

    def train(
        self,
        criterion: Criterion,
        num_minibatches: int | Sequence[int] | None = None,
        active: Sequence[bool] | None = None,
    ) -> TrainStats:
        """Train every active member for its number of minibatches.

        Args:
            criterion: loss per member (see :data:`Criterion`).
            num_minibatches: per member, or one number for all; default each task's
                ``minibatches_per_step``. Members with fewer minibatches sit out the rest.
            active: members to train (default: all); diverged members never train.
        """
        n = self.num_members
        if num_minibatches is None:
            counts = [t.minibatches_per_step for t in self.tasks]
        elif isinstance(num_minibatches, int):
            counts = [num_minibatches] * n
        else:
            counts = [int(c) for c in num_minibatches]
        if len(counts) != n or any(c < 0 for c in counts):
            raise ValueError(f"num_minibatches={num_minibatches!r} must give {n} counts >= 0")
        wanted = [True] * n if active is None else [bool(a) for a in active]
        if len(wanted) != n:
            raise ValueError(f"active has {len(wanted)} entries for {n} members")
        diverged = self.diverged.tolist()
        counts = [c if (w and not d) else 0 for c, w, d in zip(counts, wanted, diverged)]
        k_max = max(counts)
        b = self.reference.batch_size
        dev = self.device
        zeros = torch.zeros(n, device=dev)
        loss_sum, ce_sum = zeros.clone(), zeros.clone()
        # Float64 sums: E[g²] − E[g]² in float32 loses the spread of similar gradient norms.
        g_sum, g_sq = zeros.double(), zeros.double()
        if k_max == 0:
            return TrainStats(zeros, zeros, zeros, zeros, torch.zeros(n, dtype=torch.long))
        if self._flat_stale:
            self._rebuild_flat_pools()
        # Positions for the whole call, drawn per member on the CPU from its own generator.
        positions = torch.zeros(n, k_max * b, dtype=torch.long)
        for i, c in enumerate(counts):
            if c:
                positions[i, : c * b] = self._next_positions(i, c * b) + self._pool_offset[i]
        positions = positions.view(n, k_max, b).to(dev)
        counts_dev = torch.tensor(counts, device=dev)
        x_train = self._x["train"]
        budgets = torch.tensor([t.total_minibatches for t in self.tasks], dtype=torch.float32,
                               device=dev)
        done = self.minibatches_done.to(dev).float()
        alive = [i for i in range(n) if counts[i] > 0]
        for k in range(k_max):
            if k > 0 and any(c == k for c in counts):
                alive = [i for i in alive if counts[i] > k]
            live = (counts_dev > k) & ~self.diverged
            flat_pos = positions[:, k]
            rows = self._flat_index.index_select(0, flat_pos.reshape(-1))
            x = x_train.index_select(0, rows).view(n, b, -1)
            y = self._flat_label.index_select(0, flat_pos.reshape(-1)).view(n, b)
            leaves = {k: v.detach().requires_grad_(True) for k, v in self.layers.items()}
            logits = self.net.forward_layers(leaves, x)
            ctx = MinibatchContext(progress=(done + k) / budgets, class_counts=self.class_counts)
            loss = criterion(logits, y, ctx)
            if loss.shape != (n,):
                raise ValueError(
                    f"the criterion returned shape {tuple(loss.shape)}, expected ({n},)"
                )
            grads = torch.autograd.grad(torch.where(live, loss, 0.0).sum(), list(leaves.values()))
            gnorm = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
            gnorm = torch.linalg.vector_norm(gnorm, dim=0)
            bad = live & ~(torch.isfinite(loss) & torch.isfinite(gnorm))
            self.diverged |= bad
            if bad.any():
                alive = [i for i in alive if not bool(bad[i])]
            self.optimizer.step(grads, alive)
            with torch.no_grad():
                ce = F.cross_entropy(logits.detach().flatten(0, 1), y.flatten(), reduction="none")
                ce = ce.view(n, b).mean(1)
                ok = live & ~bad
                loss_sum += torch.where(ok, loss.detach(), 0.0)
                ce_sum += torch.where(ok, ce, 0.0)
                g64 = torch.where(ok, gnorm, 0.0).double()
                g_sum += g64
                g_sq += g64 * g64
        trained = torch.tensor(counts)
        self.minibatches_done += trained
        m = trained.to(dev).clamp_min(1).float()
        g_mean = g_sum / m
        g_std = (g_sq / m - g_mean * g_mean).clamp_min(0.0).sqrt()
        return TrainStats(loss_sum / m, ce_sum / m, g_mean.float(), g_std.float(), trained)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def logits(self, split: str = "val", members: Sequence[int] | None = None) -> Tensor:
        """Logits on an evaluation split, ``[M, V, C]`` for the listed members (default all).

        The train split is not an evaluation split: each member's pool is its own."""
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r} is not an evaluation split; use 'val' or 'test'")
        layers = self.layers
        if members is not None:
            index = torch.as_tensor(list(members), dtype=torch.long, device=self.device)
            layers = {k: v.index_select(0, index) for k, v in layers.items()}
        m = next(iter(layers.values())).shape[0]
        parts = [
            self.net.forward_layers(layers, chunk.unsqueeze(0).expand(m, -1, -1))
            for chunk in self._x[split].split(self.eval_chunk)
        ]
        return torch.cat(parts, dim=1)

    def targets(self, split: str = "val") -> Tensor:
        """Labels of an evaluation split, ``[V]``, shared by all members."""
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r} is not an evaluation split; use 'val' or 'test'")
        return self._y[split]

    @torch.no_grad()
    def evaluate(self, split: str = "val", members: Sequence[int] | None = None, *,
                 soft: bool = False) -> dict[str, Tensor]:
        """Batched metrics on ``split`` (see :mod:`lossgym.metrics`), one row per member;
        with ``soft``, also ``soft_balanced_accuracy`` (temperature fitted on ``split``)."""
        logits = self.logits(split, members)
        out = classification_metrics(logits, self._y[split], self.num_classes)
        if soft:
            out["soft_balanced_accuracy"] = soft_balanced_accuracy(logits, self._y[split])
        return out

    @torch.no_grad()
    def final_metrics(self, members: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Test metrics for final reports, plus ``ece_ts`` and ``soft_balanced_accuracy``: the
        test ECE and soft balanced accuracy after temperature scaling with T (``temperature``)
        fitted on the validation split."""
        test_logits = self.logits("test", members)
        out = classification_metrics(test_logits, self._y["test"], self.num_classes)
        temperature = fit_temperature(self.logits("val", members), self._y["val"])
        scaled = classification_metrics(test_logits / temperature[:, None, None],
                                        self._y["test"], self.num_classes)
        out["ece_ts"] = scaled["ece"]
        out["soft_balanced_accuracy"] = soft_balanced_accuracy(test_logits, self._y["test"],
                                                               temperature)
        out["temperature"] = temperature
        return out
