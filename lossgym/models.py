"""Stacked inner classifiers: N independent networks held as one flat parameter tensor.

Every member's parameters live in one row of a ``[N, P]`` tensor. Layers are views into
that row, so one optimiser update touches all members at once and a member can be reset
by overwriting its row. Forward passes take inputs ``[N, B, F]`` (each member its own
minibatch) and return logits ``[N, B, C]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ARCHITECTURES = ("mlp", "cnn")


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter of a member lives in the member's flat row."""

    name: str
    shape: tuple[int, ...]
    offset: int
    fan_in: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class StackedNet:
    """Architecture of a population's members: parameter layout, initialisation and forward.

    Args:
        arch: ``"mlp"`` (``depth`` hidden ReLU layers of ``width`` units) or ``"cnn"``
            (``depth`` 1-D convolutions with ``width`` channels, max-pooling after each,
            global average pooling and a linear head). Inputs are feature vectors; the CNN
            reads them as one channel of length ``num_features``.
        num_features: input size F.
        num_classes: output size C.
        width: hidden units (MLP) or channels (CNN).
        depth: number of hidden layers (MLP) or convolutions (CNN).
    """

    def __init__(self, arch: str, num_features: int, num_classes: int, width: int, depth: int):
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch={arch!r} is not known; choose one of {ARCHITECTURES}")
        self.arch = arch
        self.num_features = num_features
        self.num_classes = num_classes
        self.width = width
        self.depth = depth
        # A head narrower than 16 columns falls off the fast path of CPU batched matmuls (measured
        # on 2 cores: [128,128]x[128,10] ran 3.7x slower than x[128,16]), so the head is padded
        # to 16 outputs and the logits are sliced back to C. The padding columns never receive
        # a gradient and never reach the logits.
        self.head_width = num_classes if num_classes >= 16 else 16
        shapes: list[tuple[str, tuple[int, ...], int]] = []
        if arch == "mlp":
            fan_in = num_features
            for layer in range(depth):
                shapes += [(f"w{layer}", (fan_in, width), fan_in), (f"b{layer}", (width,), fan_in)]
                fan_in = width
            shapes += [("w_out", (fan_in, self.head_width), fan_in),
                       ("b_out", (self.head_width,), fan_in)]
        else:
            channels = 1
            for layer in range(depth):
                kernel = 5 if layer == 0 else 3
                fan_in = channels * kernel
                shapes += [
                    (f"conv{layer}", (width, channels, kernel), fan_in),
                    (f"bias{layer}", (width,), fan_in),
                ]
                channels = width
            shapes += [("w_out", (width, self.head_width), width),
                       ("b_out", (self.head_width,), width)]
        slots, offset = [], 0
        for name, shape, fan_in in shapes:
            slots.append(ParamSlot(name, shape, offset, fan_in))
            offset += math.prod(shape)
        self.slots: tuple[ParamSlot, ...] = tuple(slots)
        self.num_params = offset

    def init_member(self, generator: torch.Generator) -> Tensor:
        """One member's flat parameters, drawn like ``nn.Linear``/``nn.Conv1d``'s defaults.

        Weights and biases are U(−1/√fan_in, 1/√fan_in). Drawn on the CPU from the member's
        own generator, so a member's initialisation does not depend on the population size
        or the device.
        """
        parts = []
        for slot in self.slots:
            bound = 1.0 / math.sqrt(slot.fan_in)
            u = torch.rand(slot.size, generator=generator, dtype=torch.float64)
            parts.append((u * 2.0 - 1.0) * bound)
        return torch.cat(parts).to(torch.float32)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Per-layer views ``[N, *shape]`` into the flat parameters ``[N, P]``."""
        return {
            s.name: flat[:, s.offset : s.offset + s.size].unflatten(1, s.shape) for s in self.slots
        }

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        """Logits ``[N, B, C]`` for inputs ``x`` of shape ``[N, B, F]``."""
        return self.forward_layers(self.views(flat), x)

    def forward_layers(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits ``[N, B, C]`` from per-layer parameters ``p`` (as :meth:`views` gives)."""
        if self.arch == "mlp":
            h = x
            for layer in range(self.depth):
                # In place: baddbmm's backward does not need its output, and the copy costs.
                h = torch.relu_(torch.baddbmm(p[f"b{layer}"].unsqueeze(1), h, p[f"w{layer}"]))
            return self._head(p, h)
        n, b, length = x.shape
        # Grouped convolution runs the N members' convolutions as one call: the members become
        # channel groups of a single [B, N*channels, L] input.
        h = x.transpose(0, 1)  # [B, N, L]
        for layer in range(self.depth):
            weight = p[f"conv{layer}"]
            kernel = weight.shape[-1]
            h = F.conv1d(
                h,
                weight.reshape(n * self.width, weight.shape[2], kernel),
                p[f"bias{layer}"].reshape(n * self.width),
                padding=kernel // 2,
                groups=n,
            )
            h = torch.relu(h)
            if h.shape[-1] >= 2:
                h = F.max_pool1d(h, 2)
        h = h.mean(-1).view(b, n, self.width).transpose(0, 1)  # [N, B, width]
        return self._head(p, h)

    def _head(self, p: dict[str, Tensor], h: Tensor) -> Tensor:
        return torch.baddbmm(p["b_out"].unsqueeze(1), h, p["w_out"])[..., : self.num_classes]

    def flops_per_sample(self) -> int:
        """Multiply-adds ×2 of one forward pass for one sample (for throughput reports)."""
        if self.arch == "mlp":
            dims = [self.num_features] + [self.width] * self.depth + [self.num_classes]
            return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        total, length, channels = 0, self.num_features, 1
        for layer in range(self.depth):
            kernel = 5 if layer == 0 else 3
            total += 2 * length * channels * kernel * self.width
            channels = self.width
            length = max(length // 2, 1) if length >= 2 else length
        return total + 2 * self.width * self.num_classes
