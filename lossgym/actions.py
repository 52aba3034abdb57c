"""The one mapping from agent actions in [−1, 1]^d to loss parameters.

The environment, the baselines and the exported losses all go through
:class:`ActionMapping`, so a policy means the same thing in training and in deployment.

Each action dimension controls one parameter of :func:`lossgym.losses.parametric_loss`
over its range in :data:`lossgym.params.LOSS_PARAMS` (the table: ``python -m lossgym.params``).

``mode="absolute"``: parameter = low + (a + 1) / 2 · (high − low).
``mode="delta"``: parameter ← clip(parameter + a · max_step · (high − low), low, high).
``mode="residual"``: parameter = clip(base + a · max_step · (high − low), low, high), with
``base`` the base rule's parameter at this step: a zero action is the base rule, exactly.
Actions outside [−1, 1] are clipped to it first. Episodes start at the neutral values (plain
cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lossgym import _checks as checks
from lossgym import params as loss_params

ACTION_MODES = ("absolute", "delta", "residual")
DEFAULT_PARAMETERS = ("gamma", "alpha")


@dataclass(frozen=True)
class ActionMapping:
    """Maps actions ``[..., d]`` in [−1, 1] to loss parameters ``[..., d]``.

    Args:
        parameters: the controlled parameters, in action order (names of
            :data:`lossgym.params.LOSS_PARAMS`); γ and α by default.
        mode: ``"absolute"``, ``"delta"`` or ``"residual"``.
        max_step: in delta and residual mode, the largest move (per step, or away from the
            base rule) as a fraction of the range.
    """

    parameters: tuple[str, ...] = DEFAULT_PARAMETERS
    mode: str = "absolute"
    max_step: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.parameters, str) or not isinstance(self.parameters, Sequence):
            raise ValueError(f"parameters={self.parameters!r} must be a sequence of names from "
                             f"{loss_params.names()}")
        params = tuple(self.parameters)
        object.__setattr__(self, "parameters", params)
        if not params:
            raise ValueError("parameters is empty; choose from " + ", ".join(loss_params.names()))
        for name in params:
            loss_params.param(name)
        if len(set(params)) != len(params):
            raise ValueError(f"parameters {list(params)} repeat a name")
        if self.mode not in ACTION_MODES:
            raise ValueError(f"action_mode={self.mode!r} is not known; choose one of "
                             f"{ACTION_MODES}")
        object.__setattr__(self, "max_step", checks.real(
            "max_step", self.max_step, 0.0, 1.0, open_low=True,
            meaning="the largest move as a fraction of a parameter's range"))

    @property
    def dim(self) -> int:
        return len(self.parameters)

    def bounds(self, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper parameter bounds, ``[d]`` each."""
        specs = [loss_params.param(p) for p in self.parameters]
        return (torch.tensor([p.low for p in specs], device=device),
                torch.tensor([p.high for p in specs], device=device))

    def neutral(self, device: torch.device | None = None) -> Tensor:
        """The parameters an episode starts from (plain cross-entropy), ``[d]``."""
        return torch.tensor([loss_params.param(p).neutral for p in self.parameters],
                            device=device)

    def apply(self, action: Tensor, current: Tensor, base: Tensor | None = None) -> Tensor:
        """New parameters from ``action`` (clipped to [−1, 1]) and the ``current`` ones (delta
        mode) or the base rule's (residual mode)."""
        low, high = self.bounds(action.device)
        a = action.clamp(-1.0, 1.0)
        if self.mode == "absolute":
            return low + (a + 1.0) * 0.5 * (high - low)
        if self.mode == "residual":
            if base is None:
                raise ValueError("residual mode needs the base rule's parameters")
            current = base
        return torch.minimum(torch.maximum(current + a * self.max_step * (high - low), low), high)

    def normalise(self, params: Tensor) -> Tensor:
        """Parameters rescaled to [−1, 1] (the inverse of the absolute mapping)."""
        low, high = self.bounds(params.device)
        return (params - low) / (high - low) * 2.0 - 1.0

    def as_kwargs(self, params: Tensor) -> dict[str, Tensor]:
        """Keyword arguments for :func:`lossgym.losses.parametric_loss` from ``[N, d]``."""
        return {name: params[..., j] for j, name in enumerate(self.parameters)}

    def to_dict(self) -> dict:
        return {"parameters": list(self.parameters), "mode": self.mode, "max_step": self.max_step}

    @classmethod
    def from_dict(cls, values: dict) -> ActionMapping:
        if not isinstance(values, dict):
            raise ValueError(f"an action mapping must be a JSON object, got "
                             f"{type(values).__name__}")
        unknown = set(values) - {"parameters", "mode", "max_step"}
        if unknown:
            raise ValueError(f"unknown action mapping keys {sorted(unknown)}")
        return cls(tuple(values.get("parameters", DEFAULT_PARAMETERS)),
                   values.get("mode", "absolute"), values.get("max_step", 0.1))


def parse_parameters(parameters: str | Sequence[str]) -> tuple[str, ...]:
    """``"gamma,alpha"`` or a sequence of names → a tuple of names."""
    if isinstance(parameters, str):
        return tuple(p.strip() for p in parameters.split(",") if p.strip())
    return tuple(parameters)
