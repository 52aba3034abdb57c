"""Learned and hand-written losses as drop-in modules for plain PyTorch training.

What was learned leaves the gym in one of three forms, and a built-in baseline in a fourth.
All load with torch alone (no stable-baselines3, no gymnasium, no environment), and
:class:`AdaptiveLoss` runs any of them inside an ordinary training loop::

    from lossgym import AdaptiveLoss
    criterion = AdaptiveLoss.load("runs/ppo-default/adaptive_loss", total_steps=epochs,
                                  class_counts=torch.bincount(train_labels))
    criterion.watch(optimizer)                   # optional: gradient-norm features
    for epoch in range(epochs):
        for x, y in loader:
            loss = criterion(model(x), y)
            ...
        criterion.step(val_logits=model(x_val), val_targets=y_val)   # like an LR scheduler

* **Open-loop schedule** (``kind="schedule"``): one :class:`~lossgym.schedules.LossSchedule`
  of the loss parameters over training progress, stored as JSON. ``step()`` needs no metrics.
* **Closed-loop controller** (``kind="controller"``): the agent's actor network. At every
  ``step()`` the loss computes the observation the environment would have shown the agent,
  with the environment's own code (:func:`lossgym.features.compute_features`), normalises it
  with the training run's statistics, runs the actor and maps its action to parameters with
  :class:`lossgym.actions.ActionMapping`.
* **Learned switch** (``kind="switch"``): open-loop schedules and a linear detector
  (:class:`Switch`). The first schedule plays until a progress point; there the loss computes
  the observation as a controller does and the detector names the schedule that plays on.
* **Built-in method** (``kind="method"``): a loss of :mod:`lossgym.methods` (class-balanced,
  CE-DRW, LDAM-DRW, FLSD-53, AdaFocal, AdaLoss, the gradient gate): the method object itself
  (:class:`lossgym.methods.LossMethod`) at one member, as the engine applies it to each of its
  members; AdaFocal learns its γ per bin from the validation logits given to ``step()``.

File format (version 2; version 1 reads too)
--------------------------------------------
An export is a folder holding ``manifest.json`` and, for controllers, ``actor.safetensors``
(the actor's float32 tensors). The manifest holds ``format``, ``format_version``, ``kind``,
``total_steps`` (the default number of ``step()`` calls in a training run), ``class_counts``
(bound training-set counts, or null), ``source`` (free-form provenance) and either
``schedule``, ``switch`` (:meth:`Switch.to_dict`), ``method`` (name, hyperparameters,
minibatches per period) or ``mapping``,
``features`` (version and names), ``base_rule`` (the schedule a residual controller corrects,
or null; version 2) and ``controller`` (algorithm, layer list, output squashing, recurrent
state size, observation-normalisation statistics (with, optionally, ``held``: the features
that took one value in training, fed as 0, and ``low``/``high``: the support each raw feature
is clipped to, null for none), and the weights file's name and SHA-256).
The manifest ends with the SHA-256 of its own content. Version 1 had no ``base_rule`` and
features version 1 (no context features).

Loading never unpickles anything: the manifest is JSON and the weights are safetensors. A
truncated, modified or damaged file, an unsupported ``format_version``, features this version
of lossgym does not compute, an unknown method or hyperparameter, a value out of range (NaN
and infinities included), class counts that are all zero or do not match the bound ones, or
weights whose shapes differ from the layers' raise ``ValueError`` naming the file, the bad
value and what is allowed. The weights' shapes are checked against the safetensors header
before any layer is built, so a manifest allocates no more than its weights file holds. A
checkpoint's state (:meth:`AdaptiveLoss.set_extra_state`) is checked entry by entry the same
way. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lossgym import _checks as checks
from lossgym._native import squared_norm
from lossgym.actions import ActionMapping
from lossgym.features import (
    FEATURE_VERSION,
    FEATURE_VERSIONS,
    FeatureSpec,
    compute_features,
    context_values,
    log_imbalance,
)
from lossgym.io import atomic_write, atomic_write_text
from lossgym.losses import ParametricCriterion
from lossgym.losses._kernel import (
    _Native,
    check_logits_targets,
    check_reduction,
    check_target_bounds,
    check_targets,
    native_plan,
)
from lossgym.methods import LossMethod, method_from_dict
from lossgym.metrics import classification_metrics
from lossgym.metrics import fit_temperature as temperature_scaling
from lossgym.population import MinibatchContext
from lossgym.schedules import LossSchedule

__all__ = [
    "FORMAT_VERSION",
    "AdaptiveLoss",
    "Controller",
    "GradientWatch",
    "Switch",
    "check_obs_normalization",
    "read_export",
    "write_export",
]

FORMAT = "lossgym-adaptive-loss"
FORMAT_VERSION = 2
#: Versions this lossgym reads (1: before context features and residual controllers).
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
WEIGHTS = "actor.safetensors"
KINDS = ("schedule", "controller", "switch", "method")
LAYER_KINDS = ("linear", "tanh", "relu", "lstm")
#: How the actor's last layer becomes an action in [-1, 1]: SB3's PPO clips its Gaussian mean,
#: SAC squashes its mean with tanh.
OUTPUTS = ("clip", "tanh")
_LSTM_TENSORS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


# ------------------------------------------------------------------------------- helpers
def _digest(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _keys(values: object, required: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(values).__name__}")
    missing = [k for k in required if k not in values]
    unknown = sorted(set(values) - set(required))
    if missing or unknown:
        raise ValueError(f"{where} lacks {missing} or has unknown keys {unknown}")
    return values


def _plain(value: Any) -> Any:
    """A value of a checkpoint's state as plain numbers and lists (tensors in float64)."""
    if isinstance(value, Tensor):
        return value.detach().double().cpu().tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _check_counts(counts: object, where: str) -> Tensor:
    """Training-set class counts as a float32 ``[C]`` tensor (C >= 2, finite, >= 0, not all
    zero: a training set has samples)."""
    if isinstance(counts, Tensor):
        t = counts.detach().to("cpu", torch.float64)
    else:
        if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence):
            raise ValueError(f"{where} must be a list of class counts, got {counts!r}")
        t = torch.tensor([checks.real(f"{where}[{i}]", c, 0.0) for i, c in enumerate(counts)],
                         dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2 or not bool(torch.isfinite(t).all()) or bool((t < 0).any()) \
            or not bool((t > 0).any()):
        shown = t.tolist() if t.numel() <= 20 else f"a tensor of shape {tuple(t.shape)}"
        raise ValueError(f"{where}={shown} is invalid; it must be [C] (C >= 2) finite counts "
                         f">= 0 of a training set, not all zero")
    return t.float()


def check_obs_normalization(values: object, dim: int) -> dict[str, Any] | None:
    """Observation-normalisation statistics (VecNormalize's) for ``dim`` features, checked
    entry by entry, or None: ``mean``, ``var``, ``epsilon``, ``clip_obs`` and, optionally,
    ``held`` and the support ``low``/``high``. Raises ``ValueError`` naming the bad entry."""
    if values is None:
        return None
    required = ("mean", "var", "epsilon", "clip_obs")
    optional = tuple(k for k in ("held", "low", "high") if isinstance(values, dict) and k in values)
    v = _keys(values, required + optional, "controller.obs_normalization")
    out: dict[str, Any] = {}
    for key, low in (("mean", -math.inf), ("var", 0.0)):
        items = v[key]
        if not isinstance(items, list) or len(items) != dim:
            raise ValueError(f"obs_normalization.{key} must list {dim} numbers (one per "
                             f"feature), got {len(items) if isinstance(items, list) else items!r}")
        out[key] = [checks.real(f"obs_normalization.{key}[{i}]", x, low)
                    for i, x in enumerate(items)]
    out["epsilon"] = checks.real("obs_normalization.epsilon", v["epsilon"], 0.0)
    out["clip_obs"] = checks.real("obs_normalization.clip_obs", v["clip_obs"], 0.0)
    if "held" in v:  # features that took one value in training: fed as 0 (lossgym.features)
        held = v["held"]
        if not isinstance(held, list) or len(held) != dim or not all(
                isinstance(h, bool) for h in held):
            raise ValueError(f"obs_normalization.held must list {dim} booleans (one per "
                             f"feature), got {held!r:.80}")
        out["held"] = list(held)
    if ("low" in v) != ("high" in v):
        raise ValueError("obs_normalization holds one of 'low' and 'high' without the other")
    if "low" in v:  # the support: raw features are clipped to what they took in training
        for key in ("low", "high"):
            items = v[key]
            if not isinstance(items, list) or len(items) != dim:
                raise ValueError(f"obs_normalization.{key} must list {dim} numbers or nulls "
                                 f"(one per feature), got {items!r:.80}")
            out[key] = [None if x is None else checks.real(f"obs_normalization.{key}[{i}]", x)
                        for i, x in enumerate(items)]
        bad = [i for i, (lo, hi) in enumerate(zip(out["low"], out["high"]))
               if lo is not None and hi is not None and lo > hi]
        if bad:
            raise ValueError(f"obs_normalization.low[{bad[0]}]={out['low'][bad[0]]} is above "
                             f"high[{bad[0]}]={out['high'][bad[0]]}; low <= high is allowed")
    return out


_SETUP_CHECKS: dict[str, Callable[[str, object], object]] = {
    "lr": lambda name, v: checks.real(name, v, 0.0, open_low=True),
    "weight_decay": lambda name, v: checks.real(name, v, 0.0),
    "batch_size": lambda name, v: checks.integer(name, v, 1),
    "width": lambda name, v: checks.integer(name, v, 1),
}


def _check_setup(setup: object) -> dict[str, Any]:
    """AdaptiveLoss's ``setup``: known keys (:data:`SETUP_DEFAULTS`), each value checked."""
    if setup is None:
        return {}
    if not isinstance(setup, Mapping):
        raise ValueError(f"setup={setup!r:.80} must be a dict with keys from "
                         f"{sorted(SETUP_DEFAULTS)}")
    unknown = sorted(set(setup) - set(SETUP_DEFAULTS), key=str)
    if unknown:
        raise ValueError(f"setup has unknown keys {unknown}; it takes {sorted(SETUP_DEFAULTS)}")
    out = dict(setup)
    for key, value in out.items():
        if key == "arch":
            if value not in ("mlp", "cnn") or not isinstance(value, str):
                raise ValueError(f"setup['arch']={value!r} is invalid: must be 'mlp' or 'cnn'")
        else:
            out[key] = _SETUP_CHECKS[key](f"setup[{key!r}]", value)
    return out


def _tensors(where: str, values: object) -> list[Tensor]:
    """The parameters (or gradients) given to ``watch`` / ``record_gradients``: a module's, or
    an iterable of tensors; anything else raises ``TypeError`` naming it."""
    if isinstance(values, nn.Module):
        return list(values.parameters())
    if isinstance(values, (str, bytes, Tensor)) or not isinstance(values, Iterable):
        raise TypeError(f"{where}() takes a model, an optimizer or an iterable of tensors, got "
                        f"{type(values).__name__}")
    out = list(values)
    bad = next((v for v in out if not isinstance(v, Tensor) and v is not None), None)
    if bad is not None:
        raise TypeError(f"{where}() takes an iterable of tensors, but it holds a "
                        f"{type(bad).__name__}: {bad!r:.80}")
    return out


def _period_value(name: str, value: object) -> Tensor:
    """A number that :meth:`AdaptiveLoss.step` takes (``train_loss``, ``grad_norm``,
    ``grad_norm_std``): a finite number >= 0, or a one-element tensor of one, as ``[1]``."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype is torch.bool:
            raise ValueError(f"{name} must be a number or a one-element real tensor, got a "
                             f"{value.dtype} tensor of shape {tuple(value.shape)}")
        checks.real(name, float(value), 0.0)
        return value.detach().reshape(1)
    return torch.tensor([checks.real(name, value, 0.0)])


# ------------------------------------------------------------------------------- the actor
def _layer_shapes(layers: object, obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    """The weights a controller's layer list needs (name → shape, as the state dict of the
    :class:`Controller`'s network names them), checking the list; allocates nothing."""
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"controller.layers must be a non-empty list, got {layers!r:.80}")
    shapes: dict[str, tuple[int, ...]] = {}
    width = obs_dim
    for i, layer in enumerate(layers):
        where = f"controller.layers[{i}]"
        kind = layer.get("kind") if isinstance(layer, dict) else None
        if kind not in LAYER_KINDS:
            raise ValueError(f"{where} has kind {kind!r}; known kinds: {LAYER_KINDS}")
        if kind in ("tanh", "relu"):
            _keys(layer, ("kind",), where)
            continue
        if kind == "lstm":
            _keys(layer, ("kind", "input_size", "hidden_size"), where)
            if i:
                raise ValueError(f"{where}: an lstm layer may only come first")
            size_in, size_out = (checks.integer(f"{where}.input_size", layer["input_size"], 1),
                                 checks.integer(f"{where}.hidden_size", layer["hidden_size"], 1))
            shapes.update({f"{i}.weight_ih_l0": (4 * size_out, size_in),
                           f"{i}.weight_hh_l0": (4 * size_out, size_out),
                           f"{i}.bias_ih_l0": (4 * size_out,), f"{i}.bias_hh_l0": (4 * size_out,)})
        else:
            _keys(layer, ("kind", "in_features", "out_features"), where)
            size_in, size_out = (checks.integer(f"{where}.in_features", layer["in_features"], 1),
                                 checks.integer(f"{where}.out_features", layer["out_features"], 1))
            shapes.update({f"{i}.weight": (size_out, size_in), f"{i}.bias": (size_out,)})
        if size_in != width:
            raise ValueError(f"{where} takes {size_in} inputs but receives {width} "
                             f"({'the observation' if i == 0 else 'the previous layer'})")
        width = size_out
    if layers[-1]["kind"] != "linear" or width != action_dim:
        raise ValueError(f"controller.layers must end with a linear layer of {action_dim} "
                         "outputs (one per action dimension)")
    return shapes


def _check_weights(expected: Mapping[str, tuple[int, ...]],
                  got: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """The weights (name → (shape, dtype name)) are exactly the ``expected`` float32 ones."""
    if set(got) != set(expected):
        raise ValueError(f"the weights hold tensors {sorted(got)} but the layers need "
                         f"{sorted(expected)}")
    for name, shape in expected.items():
        if got[name] != (shape, "float32"):
            raise ValueError(f"weight {name} is {got[name][1]} of shape {got[name][0]}; the "
                             f"layers need float32 of shape {shape}")


#: safetensors' dtype names → torch's.
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _safetensors_header(data: bytes) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name → (shape, dtype name) of the tensors in a safetensors file, from its header (an
    8-byte little-endian length, then JSON) alone."""
    if len(data) < 8:
        raise ValueError("it is shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(f"its header claims {size} bytes but the file holds {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
        return {name: (tuple(int(n) for n in entry["shape"]),
                       _SAFETENSORS_DTYPES.get(entry["dtype"], str(entry["dtype"])))
                for name, entry in header.items() if name != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"its header is not safetensors JSON: {err!r}") from err


class Controller(nn.Module):
    """An actor network with its observation normalisation: observations ``[N, D]`` (the
    features of :mod:`lossgym.features`) to actions ``[N, d]`` in [−1, 1].

    The network is a list of layers (JSON), each ``{"kind": "linear", "in_features": i,
    "out_features": o}``, ``{"kind": "tanh"}``, ``{"kind": "relu"}`` or, as the first layer
    only, ``{"kind": "lstm", "input_size": i, "hidden_size": h}`` (one layer, as
    ``torch.nn.LSTM``); the last layer is linear with ``d`` outputs, which ``output`` turns
    into an action (``"clip"`` to [−1, 1] or ``"tanh"``).

    Args:
        layers: the layer list.
        tensors: the weights, named as the state dict of ``torch.nn.ModuleList`` of the layers
            (``"0.weight"``, ``"0.weight_ih_l0"``, ...); float32 and complete.
        mapping: how actions become loss parameters.
        output: ``"clip"`` or ``"tanh"``.
        obs_normalization: VecNormalize's ``mean``, ``var``, ``epsilon`` and ``clip_obs``
            (and optionally ``held``: per feature, whether it took one value in every training
            observation, so that the policy, which never saw it vary, sees it as 0; and
            ``low``/``high``: per feature, the support a raw feature is clipped to before it
            is normalised, or None for no bound), or None when the agent saw raw observations.
        algorithm: what trained it (informational, e.g. ``"ppo"``).
        features_version: the observation it reads (:class:`lossgym.features.FeatureSpec`).
        base_rule: the schedule its residual actions correct (residual mapping only).
    """

    def __init__(self, layers: Sequence[Mapping[str, Any]], tensors: Mapping[str, Tensor],
                 mapping: ActionMapping, output: str = "clip",
                 obs_normalization: Mapping[str, Any] | None = None, algorithm: str = "",
                 features_version: int = FEATURE_VERSION,
                 base_rule: LossSchedule | None = None) -> None:
        super().__init__()
        self.mapping = mapping
        self.spec = FeatureSpec(mapping.parameters, features_version)
        if (mapping.mode == "residual") != (base_rule is not None):
            raise ValueError("a controller has a base rule exactly when its actions are "
                             "residual (mapping mode 'residual')")
        self.base_rule = base_rule
        if output not in OUTPUTS:
            raise ValueError(f"controller.output={output!r} must be one of {OUTPUTS}")
        self.output = output
        self.algorithm = str(algorithm)
        self.layers = [dict(layer) if isinstance(layer, Mapping) else layer for layer in layers]
        # The shapes first, so that a manifest's layer list allocates nothing the weights lack.
        expected = _layer_shapes(self.layers, self.spec.dim, mapping.dim)
        _check_weights(expected, {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                                 for k, v in tensors.items()})
        self.net = nn.ModuleList(
            nn.Tanh() if layer["kind"] == "tanh" else nn.ReLU() if layer["kind"] == "relu"
            else nn.LSTM(layer["input_size"], layer["hidden_size"]) if layer["kind"] == "lstm"
            else nn.Linear(layer["in_features"], layer["out_features"]) for layer in self.layers)
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"weight {name} holds NaN or infinite values")
        self.net.load_state_dict(dict(tensors))
        self.net.requires_grad_(False)
        norm = check_obs_normalization(
            None if obs_normalization is None else dict(obs_normalization), self.spec.dim)
        self.obs_normalization = norm
        if norm is not None:
            self.register_buffer("obs_mean", torch.tensor(norm["mean"], dtype=torch.float64))
            self.register_buffer("obs_var", torch.tensor(norm["var"], dtype=torch.float64))
            self.register_buffer("obs_held", torch.tensor(norm.get("held", [False] * len(
                norm["mean"]))))
            if "low" in norm:  # buffers only then: older checkpoints' state dicts still load
                for key, none in (("low", -math.inf), ("high", math.inf)):
                    self.register_buffer(f"obs_{key}", torch.tensor(
                        [none if x is None else x for x in norm[key]], dtype=torch.float64))

    @property
    def recurrent_state_size(self) -> int:
        """Hidden units of the LSTM (0 for a feed-forward actor)."""
        first = self.net[0]
        return first.hidden_size if isinstance(first, nn.LSTM) else 0

    def initial_state(self, batch: int = 1) -> tuple[Tensor, Tensor] | None:
        """Zero LSTM state for ``batch`` sequences (None for a feed-forward actor)."""
        size = self.recurrent_state_size
        if not size:
            return None
        device = self.net[0].weight_ih_l0.device
        zeros = torch.zeros(1, batch, size, device=device)
        return zeros, zeros.clone()

    def normalise(self, obs: Tensor) -> Tensor:
        """Observations as the agent saw them in training (VecNormalize: in float64, then
        clipped and cast to float32; a feature that took one value in training, ``held``, is
        0; a feature with a support, ``low``/``high``, is clipped to it first)."""
        if self.obs_normalization is None:
            return obs.float()
        eps, clip = self.obs_normalization["epsilon"], self.obs_normalization["clip_obs"]
        raw = obs.double()
        if "low" in self.obs_normalization:
            raw = torch.maximum(torch.minimum(raw, self.obs_high), self.obs_low)
        out = (raw - self.obs_mean) / torch.sqrt(self.obs_var + eps)
        return out.clamp(-clip, clip).masked_fill(self.obs_held, 0.0).float()

    @torch.no_grad()
    def forward(self, obs: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Deterministic actions ``[N, d]`` for raw observations ``[N, D]``, and the new LSTM
        state (pass None to start an episode)."""
        x = self.normalise(obs)
        modules = list(self.net)
        if isinstance(modules[0], nn.LSTM):
            if state is None:
                state = self.initial_state(x.shape[0])
            out, state = modules[0](x.unsqueeze(0), state)
            x = out.squeeze(0)
            modules = modules[1:]
        for module in modules:
            x = module(x)
        return (x.clamp(-1.0, 1.0) if self.output == "clip" else torch.tanh(x)), state

    def describe(self) -> dict[str, Any]:
        """The manifest's ``controller`` entry, without the weights file."""
        return {"algorithm": self.algorithm, "layers": self.layers, "output": self.output,
                "recurrent_state_size": self.recurrent_state_size,
                "obs_normalization": self.obs_normalization}

    def tensors(self) -> dict[str, Tensor]:
        """The actor's weights, as stored in the weights file."""
        return {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}



class Switch:
    """A learned switch between open-loop schedules (``kind="switch"``): ``schedules[0]``
    plays until progress ``at``; at the first ``step()`` at or past it a multinomial logistic
    regression on the observation (:mod:`lossgym.features`, the environment's, standardised
    by ``mean`` and ``scale``, the features whose ``keep`` is false left out) names the
    schedule that plays to the end of the run. ``scripts/noise_oracle.py --detector winner``
    fits one on train-split runs (which schedule ended better) and writes it with
    ``--export``.

    Args:
        schedules: two or more :class:`~lossgym.schedules.LossSchedule`.
        at: progress of the decision, in (0, 1].
        parameters: the loss parameters it sets (a schedule's parameters it lacks stay
            neutral) and observes.
        detector: ``mean``, ``scale`` (> 0) and ``keep`` (bools), one per feature;
            ``weight`` ``[kept features, schedules]`` and ``bias`` ``[schedules]``.
        features_version: the observation it reads.
    """

    def __init__(self, schedules: Sequence[LossSchedule], at: float,
                 parameters: Sequence[str], detector: Mapping[str, Any],
                 features_version: int = FEATURE_VERSION) -> None:
        self.schedules = list(schedules)
        if len(self.schedules) < 2 or not all(isinstance(x, LossSchedule)
                                              for x in self.schedules):
            raise ValueError(f"switch.schedules must be two or more loss schedules, got "
                             f"{len(self.schedules)}")
        self.at = checks.real("switch.at", at, 0.0, 1.0, open_low=True)
        self.mapping = ActionMapping(tuple(parameters), "absolute")
        self.parameters = self.mapping.parameters
        self._neutral = self.mapping.neutral().tolist()
        extra = sorted({p for x in self.schedules for p in x.parameters} - set(self.parameters))
        if extra:
            raise ValueError(f"switch.schedules set {extra}, which switch.parameters "
                             f"{list(self.parameters)} lack")
        self.spec = FeatureSpec(self.parameters, features_version)
        entry = _keys(detector, ("mean", "scale", "keep", "weight", "bias"), "switch.detector")
        dim, k = self.spec.dim, len(self.schedules)
        keep = entry["keep"]
        if not isinstance(keep, list) or len(keep) != dim \
                or not all(isinstance(b, bool) for b in keep):
            raise ValueError(f"switch.detector.keep must be {dim} booleans, one per feature")
        kept = sum(keep)
        self.keep = torch.tensor(keep, dtype=torch.bool)
        self.mean, self.scale, self.weight, self.bias = (
            _array(entry[name], f"switch.detector.{name}", shape)
            for name, shape in (("mean", (dim,)), ("scale", (dim,)), ("weight", (kept, k)),
                                ("bias", (k,))))
        if not bool((self.scale > 0).all()):
            raise ValueError("switch.detector.scale must be > 0 everywhere")

    def choose(self, obs: Tensor) -> int:
        """The index of the schedule the observation ``[D]`` (raw, as computed) names."""
        z = ((obs.detach().cpu().double() - self.mean) / self.scale)[self.keep]
        return int((z @ self.weight + self.bias).argmax())

    def params(self, choice: int, t: float) -> Tensor:
        """The parameters at progress ``t`` under schedule ``choice`` (the first before a
        choice, ``-1``)."""
        values = self.schedules[max(choice, 0)](t)
        return torch.tensor([values.get(p, n) for p, n in zip(self.parameters, self._neutral)])

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``switch`` entry."""
        return {"at": self.at, "parameters": list(self.parameters),
                "features": self.spec.to_dict(),
                "schedules": [x.to_dict() for x in self.schedules],
                "detector": {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                             "keep": self.keep.tolist(), "weight": self.weight.tolist(),
                             "bias": self.bias.tolist()}}

    @classmethod
    def from_dict(cls, values: object) -> Switch:
        """Read :meth:`to_dict` output (checked: ``ValueError`` names what is wrong)."""
        entry = _keys(values, ("at", "parameters", "features", "schedules", "detector"),
                      "switch")
        if not isinstance(entry["parameters"], list) or not isinstance(entry["schedules"], list):
            raise ValueError("switch.parameters and switch.schedules must be lists")
        version = _features_version(entry["features"], tuple(entry["parameters"]))
        return cls([LossSchedule.from_dict(x) for x in entry["schedules"]], entry["at"],
                   entry["parameters"], entry["detector"], version)


def _array(values: object, where: str, shape: tuple[int, ...] | None) -> Tensor:
    """``values`` as a float64 tensor with finite entries (of ``shape``, unless None), else
    ``ValueError``."""
    try:
        t = torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where} must be a (nested) list of numbers: {err}") from None
    if (shape is not None and tuple(t.shape) != shape) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where} must be finite numbers of shape {shape}, got shape "
                         f"{tuple(t.shape)}")
    return t


# ------------------------------------------------------------------------------ the format
#: What an export holds.
Rule = LossSchedule | Controller | Switch | LossMethod


def write_export(rule: Rule, out: str | Path, *,
                 total_steps: int,
                 class_counts: Sequence[float] | Tensor | None = None,
                 source: Mapping[str, Any] | None = None,
                 minibatches_per_step: int = 1) -> Path:
    """Write an export folder that :meth:`AdaptiveLoss.load` reads; returns its path.

    Args:
        rule: a schedule (open loop), a controller (closed loop) or a built-in method
            (:mod:`lossgym.methods`).
        out: the folder (created; files in it are replaced atomically).
        total_steps: default number of ``step()`` calls in a training run (a controller's
            progress feature is ``steps / total_steps``), e.g. the reference task's horizon.
        class_counts: bind the export to these training-set class counts (optional).
        source: provenance recorded as is (JSON values).
        minibatches_per_step: a method's minibatches per ``step()`` by default (where its
            deferred re-weighting switches within a period).
    """
    from lossgym import __version__

    folder = Path(out)
    kind, entries = _describe(rule)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lossgym_version": __version__,
        "kind": kind,
        "total_steps": checks.integer("total_steps", total_steps, 1),
        "class_counts": None if class_counts is None
        else _check_counts(class_counts, "class_counts").tolist(),
        "source": dict(source or {}), **entries,
    }
    if kind == "method":
        manifest["method"]["minibatches_per_step"] = checks.integer(
            "minibatches_per_step", minibatches_per_step, 1)
    elif kind == "controller":
        from safetensors.torch import save

        data = save(rule.tensors(), metadata={"format": "pt"})
        atomic_write(folder / WEIGHTS, lambda tmp: Path(tmp).write_bytes(data))
        manifest["controller"]["weights"] = {"file": WEIGHTS,
                                             "sha256": hashlib.sha256(data).hexdigest()}
    manifest["sha256"] = _digest(manifest)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
    if kind != "controller":
        # A controller exported here before left its weights; the new manifest ignores them.
        (folder / WEIGHTS).unlink(missing_ok=True)
    return folder


def _describe(rule: Rule) -> tuple[str, dict[str, Any]]:
    """The kind of ``rule`` and the manifest's entries that describe it (new dicts; a
    controller's without its weights file)."""
    if isinstance(rule, LossSchedule):
        return "schedule", {"schedule": rule.to_dict()}
    if isinstance(rule, LossMethod):
        return "method", {"method": rule.to_dict()}
    if isinstance(rule, Switch):
        return "switch", {"switch": rule.to_dict()}
    if isinstance(rule, Controller):
        return "controller", {
            "mapping": rule.mapping.to_dict(), "features": rule.spec.to_dict(),
            "base_rule": None if rule.base_rule is None else rule.base_rule.to_dict(),
            "controller": rule.describe()}
    raise ValueError(f"rule must be a LossSchedule, a Controller, a Switch or a LossMethod, "
                     f"got {type(rule).__name__}")


def _no_constant(name: str) -> None:
    raise ValueError(f"it holds {name}, which JSON does not allow: manifests hold finite "
                     "numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"it holds the number {text}, beyond the float range: manifests hold "
                         "finite numbers only")
    return value


def _manifest_path(path: str | Path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path={path!r} must be an export folder or its {MANIFEST} (a str or "
                        f"os.PathLike), got {type(path).__name__}")
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; pass an export folder (holding "
                                f"{MANIFEST}) or its manifest file")
    return file


def read_export(path: str | Path
                ) -> tuple[Rule, dict[str, Any]]:
    """Read and check an export written by :func:`write_export`.

    Args:
        path: the export folder or its ``manifest.json``.

    Returns:
        the rule and the manifest.

    Raises:
        ValueError: naming the file and the problem, for anything but an intact export of a
            supported version.
    """
    file = _manifest_path(path)
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"), parse_constant=_no_constant,
                              parse_float=_finite_float)
    except (ValueError, RecursionError) as err:  # decoding and JSON errors are ValueErrors
        raise ValueError(f"{file}: not a readable lossgym export manifest (truncated or "
                         f"damaged?): {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file}: not a lossgym export manifest (it has no "
                         f"'format': '{FORMAT}')")
    version = manifest.get("format_version")
    if version not in READ_VERSIONS:
        raise ValueError(f"{file}: format_version {version!r} is not supported; this lossgym "
                         f"reads versions {list(READ_VERSIONS)}")
    checksum = manifest.pop("sha256", None)
    if checksum != _digest(manifest):
        raise ValueError(f"{file}: checksum mismatch: the manifest was modified after lossgym "
                         "wrote it, or is damaged")
    try:
        return _parse(manifest, file), manifest
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from err


def _features_version(entry: object, parameters: tuple[str, ...]) -> int:
    """The version of a manifest's ``features`` entry, checked against what this lossgym
    computes for ``parameters``."""
    features = _keys(entry, ("version", "names"), "features")
    if features["version"] not in FEATURE_VERSIONS:
        raise ValueError(f"features version {features['version']!r} is not supported; this "
                         f"lossgym computes versions {list(FEATURE_VERSIONS)}")
    expected = list(FeatureSpec(parameters, features["version"]).names)
    names = features["names"]
    if names != expected:
        names = names if isinstance(names, list) else [names]
        unknown = [n for n in names if n not in expected]
        raise ValueError(f"the manifest asks for the features {names}; unknown features "
                         f"{unknown}; for parameters {list(parameters)} this lossgym "
                         f"computes exactly {expected}")
    return features["version"]


def _parse(manifest: dict[str, Any], file: Path) -> Rule:
    kind = manifest.get("kind")
    entries = {"schedule": ("schedule",), "method": ("method",), "switch": ("switch",),
               "controller": (
        "mapping", "features", "controller") + (("base_rule",) if manifest["format_version"] >= 2
                                                else ())}
    if kind not in entries:
        raise ValueError(f"kind {kind!r} is not known; an export is one of {KINDS}")
    _keys(manifest, ("format", "format_version", "lossgym_version", "kind", "total_steps",
                     "class_counts", "source") + entries[kind], "the manifest")
    checks.integer("total_steps", manifest["total_steps"], 1)
    if manifest["class_counts"] is not None:
        _check_counts(manifest["class_counts"], "class_counts")
    if kind == "schedule":
        return LossSchedule.from_dict(manifest["schedule"])
    if kind == "switch":
        return Switch.from_dict(manifest["switch"])
    if kind == "method":
        entry = _keys(manifest["method"], ("name", "params", "minibatches_per_step"), "method")
        checks.integer("method.minibatches_per_step", entry["minibatches_per_step"], 1)
        return method_from_dict({"name": entry["name"], "params": entry["params"]})
    mapping_values = manifest["mapping"]
    if not isinstance(mapping_values, dict):
        raise ValueError("mapping must be a JSON object")
    mapping = ActionMapping.from_dict(mapping_values)
    version = _features_version(manifest["features"], mapping.parameters)
    spec = _keys(manifest["controller"], ("algorithm", "layers", "output",
                                          "recurrent_state_size", "obs_normalization",
                                          "weights"), "controller")
    weights = _keys(spec["weights"], ("file", "sha256"), "controller.weights")
    name = weights["file"]
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"controller.weights.file={name!r} must be a file name beside the "
                         "manifest")
    weights_file = file.parent / name
    if not weights_file.is_file():
        raise ValueError(f"its weights file {weights_file} does not exist")
    data = weights_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != weights["sha256"]:
        raise ValueError(f"the weights file {weights_file} does not match the SHA-256 in the "
                         "manifest: it is truncated, modified or from another export")
    from safetensors.torch import load

    layers = spec["layers"]
    # The shapes against the weights file's header before anything is allocated.
    expected = _layer_shapes(layers, FeatureSpec(mapping.parameters, version).dim,
                            mapping.dim)
    try:
        header = _safetensors_header(data)
    except ValueError as err:
        raise ValueError(f"the weights file {weights_file} cannot be read: {err}") from err
    _check_weights(expected, header)
    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own error type for malformed data
        raise ValueError(f"the weights file {weights_file} cannot be read: {err}") from err
    base = manifest.get("base_rule")
    controller = Controller(layers, tensors, mapping, spec["output"], spec["obs_normalization"],
                            spec["algorithm"], version,
                            None if base is None else LossSchedule.from_dict(base))
    if spec["recurrent_state_size"] != controller.recurrent_state_size:
        raise ValueError(f"controller.recurrent_state_size={spec['recurrent_state_size']!r} "
                         f"but the layers give {controller.recurrent_state_size}")
    return controller


# ------------------------------------------------------------------------------- the loss
class GradientWatch:
    """Feeds the L2 norm of a model's gradient, once per backward pass, to an
    :class:`AdaptiveLoss` (made by :meth:`AdaptiveLoss.watch`); ``remove()`` stops it.

    Each parameter's post-accumulate-grad hook (public autograd API) ticks it off; once every
    watched parameter has its gradient, the pass is complete and the norm of all ``.grad``s
    is recorded. A parameter that gets no gradient in a
    pass (unused by the forward) would leave the pass incomplete: when a parameter comes
    round a second time, the incomplete pass is dropped, with a warning.
    """

    def __init__(self, loss: AdaptiveLoss, params: list[Tensor]) -> None:
        self._loss = loss
        self._params = params
        self._seen: set[int] = set()  # the parameters with their gradient in this pass
        self._handles = [p.register_post_accumulate_grad_hook(partial(self._on_grad, i))
                         for i, p in enumerate(params)]

    def _on_grad(self, i: int, _param: Tensor) -> None:
        if i in self._seen:
            missing = len(self._params) - len(self._seen)
            self._seen = set()
            if "unused" not in self._loss._warned:
                self._loss._warned.add("unused")
                warnings.warn(f"watch(): {missing} watched parameter(s) got no gradient in a "
                              "backward pass, so its gradient norm was not recorded; watch "
                              "only the parameters the loss depends on", UserWarning,
                              stacklevel=2)
        self._seen.add(i)
        if len(self._seen) == len(self._params):
            self._seen = set()
            self._loss._record_norm([p.grad for p in self._params if p.grad is not None])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _describe_model(model: nn.Module) -> dict[str, Any]:
    """The context features' architecture and width of a model: a CNN if it has a
    convolution, and the width of its first linear or convolutional layer."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return {"arch": "cnn", "width": module.out_channels}
        if isinstance(module, nn.Linear):
            return {"arch": "mlp", "width": module.out_features}
    return {}


#: What the context features assume where the user's loop tells nothing (AdamW's defaults,
#: the engine's default MLP and batch size).
SETUP_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-2, "batch_size": 128,
                                  "arch": "mlp", "width": 128}


#: The checkpoint state's entries (:meth:`AdaptiveLoss.get_extra_state`) that are attributes
#: of the loss, saved with :func:`_plain` and restored as checked (those in
#: :data:`_TENSOR_STATE` as float32 tensors).
_STATE_ATTRS = {"total_steps": "total_steps", "steps_done": "steps_done",
                "num_classes": "_num_classes", "last_change": "_last_change",
                "history": "history", "class_counts": "_counts",
                "counts_inferred": "_counts_inferred", "seen": "_seen",
                "observation": "observation", "ce": "_ce", "minibatch": "_minibatch",
                "batch_size": "_batch_size", "period_sizes": "_period_sizes",
                "model_setup": "_model_setup", "minibatches_per_step": "minibatches_per_step",
                "temperature": "temperature", "choice": "choice"}
_TENSOR_STATE = ("last_change", "class_counts", "seen", "observation")


def _on(metrics: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in metrics.items()}


class AdaptiveLoss(nn.Module):
    """The engine's parametric loss (:func:`lossgym.losses.parametric_loss`) with parameters
    set by an exported schedule or controller, or a built-in method (:mod:`lossgym.methods`),
    stepped like a learning-rate scheduler.

    Each ``step()`` ends one period of training (one environment step of the agent: an epoch
    in the usual loop) and sets the parameters for the next one; :meth:`begin` (optional, or
    implied by the first forward) sets those of the first period. ``history[t]`` holds the
    parameters used in period ``t``.

    Args:
        rule: a :class:`~lossgym.schedules.LossSchedule`, a :class:`Controller`, a
            :class:`Switch` or a built-in method.
        class_counts: training samples per class ``[C]``: they set the class-balance weights
            (α) and logit adjustment (τ) and the controller's imbalance feature. Default: the
            counts bound in the export (:meth:`load`), else the labels seen in training forwards
            until the first ``step()`` (exact after one epoch; before that the running count;
            a warning says so). While no label has been counted (a forward in ``eval()`` or
            under ``torch.no_grad()`` before any training forward) the counts are unknown and
            read as equal counts: uniform α weights, no logit adjustment, equal margins.
        total_steps: the number of ``step()`` calls in the training run; progress is
            ``steps done / total_steps`` (clipped to 1). :meth:`load` defaults to the
            export's (the horizon of the task it was exported for).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in ``parametric_loss``.
        minibatches_per_step: training minibatches per ``step()`` (e.g. ``len(loader)``),
            which places a method's deferred re-weighting switch within a period as the
            engine does. :meth:`load` defaults to the export's (its reference task's).
        setup: the training set-up, for a controller's context features (:meth:`context`):
            ``lr``, ``weight_decay``, ``batch_size``, ``arch`` ("mlp" or "cnn"), ``width``.
            Default for each: what :meth:`watch` saw (the optimizer's first param group; the
            model's first linear or convolutional layer), the first training minibatch's
            size, else :data:`SETUP_DEFAULTS`.

    What a controller observes at ``step()`` (:mod:`lossgym.features`), and the defaults for
    what it is not given:

    * validation metrics from ``val_logits`` / ``val_targets``; default: the last ones
      given, else those of a classifier with constant logits (NLL ln C, accuracy 1/C);
    * ``train_loss``: the mean plain cross-entropy of the period's minibatches; default: what
      the loss recorded in its training forwards (in train mode, with autograd on: call
      ``criterion.eval()`` or use ``torch.no_grad()`` to compute other losses with it), else
      the validation NLL (what the environment shows before training);
    * ``grad_norm`` / ``grad_norm_std``: mean and standard deviation over the period's
      minibatches of the L2 norm of the gradient of all model parameters; default: what
      :meth:`watch` or :meth:`record_gradients` recorded, else 0 (a zero gradient, as the
      environment shows before training; a warning says so).

    Calibration: where a loss trades calibration for balanced accuracy (class-balance α,
    logit adjustment τ and margins leave the trained model over- or under-confident), the
    exported loss offers the fix. After training, ``criterion.fit_temperature(val_logits,
    val_targets)`` fits a temperature T on the validation logits (temperature scaling, Guo et
    al. 2017: :func:`lossgym.metrics.fit_temperature`, the T that minimises the validation
    NLL), keeps it (in the state dict too) and returns it; ``criterion.calibrate(logits)``
    returns ``logits / T`` for inference. Accuracy and balanced accuracy do not change.

    The loss is :class:`~lossgym.losses.ParametricCriterion`, the criterion the environment
    trains with: on the CPU (float32 / float64) the loss, its gradient, the recorded
    cross-entropy and the gradient norm are one call each of the C extension, with the class
    terms (τ log n, n^(−α), the margins) computed once a period; elsewhere torch kernels.
    """

    def __init__(self, rule: Rule, *,
                 class_counts: Sequence[float] | Tensor | None = None, total_steps: int,
                 reduction: str = "mean", minibatches_per_step: int | None = None,
                 setup: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.setup = _check_setup(setup)
        self._optimizer: torch.optim.Optimizer | None = None
        self._model_setup: dict[str, Any] = {}
        self._batch_size: int | None = None
        self._mps_given = minibatches_per_step is not None
        check_reduction(reduction)
        self.reduction = reduction
        self.total_steps = checks.integer("total_steps", total_steps, 1)
        #: ``"schedule"``, ``"controller"`` or ``"method"``.
        self.kind, identity = _describe(rule)
        self.schedule = rule if isinstance(rule, LossSchedule) else None
        self.controller = rule if isinstance(rule, Controller) else None
        self.switch = rule if isinstance(rule, Switch) else None
        self.method = rule if isinstance(rule, LossMethod) else None
        self.controlled: tuple[str, ...] = rule.parameters if self.schedule is not None \
            else tuple(rule.hyper) if self.method is not None else rule.mapping.parameters
        if self.controller is not None:
            identity["weights"] = _tensor_digest(rule.tensors())
        #: Minibatches per period, for a method's deferred re-weighting.
        self.minibatches_per_step = checks.integer(
            "minibatches_per_step", 1 if minibatches_per_step is None else minibatches_per_step,
            1)
        self._loss = ParametricCriterion(reduction=reduction)
        #: Identifies the rule, so a checkpoint cannot be loaded into another export's loss.
        self.export_id = _digest(identity)
        self._counts = None if class_counts is None \
            else _check_counts(class_counts, "class_counts")
        self._counts_inferred = class_counts is None
        self._num_classes = None if self._counts is None else int(self._counts.numel())
        self._warned: set[str] = set()
        #: The temperature of :meth:`fit_temperature` (None until fitted).
        self.temperature: float | None = None
        # Labels counted in training forwards while the class counts are unknown; kept across
        # begin(), which the first forward calls after counting its minibatch.
        self._seen: Tensor | None = None
        self._reset_run()

    # ----------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, *, class_counts: Sequence[float] | Tensor | None = None,
             total_steps: int | None = None, reduction: str = "mean",
             minibatches_per_step: int | None = None, setup: Mapping[str, Any] | None = None
             ) -> AdaptiveLoss:
        """An adaptive loss from an export folder (or its ``manifest.json``) that lossgym
        wrote; see the class docstring for the arguments. Counts that do not match the counts
        bound in the export raise ``ValueError``."""
        rule, manifest = read_export(path)
        bound = manifest["class_counts"]
        if class_counts is not None and bound is not None:
            given = _check_counts(class_counts, "class_counts")
            if given.numel() != len(bound):
                raise ValueError(f"{_manifest_path(path)}: the export is bound to "
                                 f"{len(bound)} classes but class_counts has {given.numel()}")
            if not torch.equal(given, torch.tensor(bound, dtype=torch.float32)):
                raise ValueError(f"{_manifest_path(path)}: the export is bound to the class "
                                 f"counts {bound} but class_counts is {given.tolist()}; pass "
                                 "those counts or none (an export without bound counts takes "
                                 "any)")
        counts = class_counts if class_counts is not None else bound
        if minibatches_per_step is None and "method" in manifest:
            minibatches_per_step = manifest["method"]["minibatches_per_step"]
        total_steps = manifest["total_steps"] if total_steps is None else total_steps
        return cls(rule, class_counts=counts, total_steps=total_steps,
                   reduction=reduction, minibatches_per_step=minibatches_per_step, setup=setup)

    # ----------------------------------------------------------------------- state
    def _reset_run(self) -> None:
        self.steps_done = 0
        self._params: Tensor | None = None
        self._kwargs: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.observation: Tensor | None = None
        self._last_change = torch.zeros(len(self.controlled))
        self._state: tuple[Tensor, Tensor] | None = None
        #: A switch's schedule (-1 before its decision).
        self.choice = -1
        self._last_metrics: dict[str, Tensor] | None = None
        # The method at one member for this run, with its learned state (made at first use).
        self._live: LossMethod | None = None
        self._counts_row: tuple[tuple, MinibatchContext] | None = None
        # (logits shape, dtype, the C extension's plan, reduction, the minibatch count it holds
        # up to or None, the shape a method sees the logits in or None) of the period, once
        # the counts are known: what forward() calls directly.
        self._fast: tuple[torch.Size, torch.dtype, tuple, str, int | None,
                          tuple[int, ...] | None] | None = None
        self._period_sizes: list[int] = []  # training minibatches of each period so far
        self._clear_period()

    def _clear_period(self) -> None:
        # One value per minibatch (a float from the extension, else a 0-d tensor on the
        # logits' device), reduced at step(): no extra kernel or host sync per forward.
        self._ce: list[Tensor | float] = []
        # Per minibatch, the gradient's norm (a float from the extension, else a 0-d tensor).
        self._grad_norms: list[float | Tensor] = []
        self._minibatch = 0  # training forwards in this period

    @property
    def params(self) -> dict[str, float]:
        """The current loss parameters (empty before the first period starts)."""
        return dict(self._kwargs)

    @property
    def class_counts(self) -> Tensor | None:
        """The training-set class counts in use (None while unknown)."""
        return self._counts if self._counts is not None else self._seen

    # ----------------------------------------------------------------------- training
    def watch(self, model: nn.Module | torch.optim.Optimizer | Iterable[Tensor]
              ) -> GradientWatch | torch.utils.hooks.RemovableHandle:
        """Record the L2 norm of the gradient (all the ``.grad``s) once per minibatch, as the
        environment measures it. Call it once. Returns a handle with ``remove()``.

        Given the optimiser, the norm of its parameters' gradients is read just before each
        ``optimizer.step()`` (one hook call per update: the cheaper choice, and with gradient
        accumulation one norm per update). Given the model or its parameters, the norm is
        read at the end of every backward pass (:class:`GradientWatch`: one hook per
        parameter; with gradient accumulation each backward records the gradient accumulated
        so far)."""
        if isinstance(model, torch.optim.Optimizer):
            self._optimizer = model
            return model.register_step_pre_hook(self._on_optimizer_step)
        params = _tensors("watch", model)
        if isinstance(model, nn.Module):
            self._model_setup = _describe_model(model)
        params = [p for p in params if p is not None and p.requires_grad]
        if not params:
            raise ValueError("watch() needs at least one parameter that requires grad")
        return GradientWatch(self, params)

    @torch.no_grad()
    def record_gradients(self, grads: nn.Module | Iterable[Tensor]) -> None:
        """Record one minibatch's gradient norm: pass the model after ``backward()`` (its
        ``.grad``s are read) or the gradient tensors themselves."""
        if isinstance(grads, nn.Module):
            grads = [p.grad for p in grads.parameters()]
        else:
            grads = _tensors("record_gradients", grads)
        self._record_norm([g for g in grads if g is not None])

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any
                           ) -> None:
        self._record_norm([p.grad for group in optimizer.param_groups for p in group["params"]
                           if p.grad is not None])

    def _record_norm(self, grads: list[Tensor]) -> None:
        if grads:
            # One call of the extension on the CPU; else the norm of the per-tensor norms (as
            # torch.nn.utils.get_total_norm), left on the device until step().
            squared = squared_norm(grads)
            self._grad_norms.append(math.sqrt(squared) if squared is not None else
                                    torch.linalg.vector_norm(torch.stack(
                                        torch._foreach_norm(grads))))

    @staticmethod
    def _stacked(values: list[Tensor | float]) -> Tensor:
        """Per-minibatch values (floats from the extension, 0-d tensors from torch) as one
        1-D float32 tensor, with one host transfer at most."""
        if all(isinstance(v, Tensor) for v in values):
            return torch.stack(values).float()
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    def _total_grad_norms(self) -> Tensor:
        """The period's gradient norms, one per recorded minibatch (a 1-D tensor)."""
        return self._stacked(self._grad_norms)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of logits ``[..., B, C]`` and int64 targets ``[..., B]``."""
        fast = self._fast
        if fast is not None and logits.shape == fast[0] and logits.dtype is fast[1] \
                and logits.is_cpu and targets.dtype is torch.int64 \
                and targets.shape == fast[0][:-1] and self.reduction == fast[3] \
                and (fast[4] is None or self._minibatches_done() < fast[4]):
            # The period's plan of the C extension (the parameters and counts are fixed until
            # step(), a method's terms until its bound): the loss, its gradient and the
            # recorded cross-entropy in one call, the targets checked in it.
            training = self._is_training_forward(logits)
            x, y = (logits, targets) if fast[5] is None else (logits.view(fast[5]),
                                                               targets.view(fast[5][:-1]))
            loss = _Native.apply(x, y, fast[2][0],
                                 self._ce if training and self._observes else None)
            self._minibatch += training
            return loss.view(targets.shape) if fast[5] is not None and loss.ndim else loss
        check_logits_targets(logits, targets)
        num_classes = logits.shape[-1]
        if self._num_classes is None:
            self._num_classes = num_classes
        elif num_classes != self._num_classes:
            raise ValueError(f"logits have {num_classes} classes but this loss has "
                             f"{self._num_classes} (from its class counts or earlier logits)")
        counts = self._counts_for(logits, targets)
        training = self._is_training_forward(logits)
        if training and self._batch_size is None:  # before begin(): the context reads it
            self._batch_size = int(targets.numel())
        if self._params is None:
            self.begin()
        if self.method is not None:
            loss = self._method_loss(logits, targets, counts)
        else:
            # A controller observes the period's mean plain cross-entropy, recorded on the way.
            record = self._observes and training
            loss = self._loss(logits, targets, self._kwargs, counts.to(logits.dtype),
                              self._ce if record else None)
            if self._counts is not None and self._loss.cached_terms is not None:
                plan = native_plan(self._loss.cached_terms, logits, targets, self.reduction)
                if plan is not None:
                    self._fast = (logits.shape, logits.dtype, plan, self.reduction, None, None)
        if training:
            self._minibatch += 1
        return loss

    def _method_loss(self, logits: Tensor, targets: Tensor, counts: Tensor) -> Tensor:
        """The method at one member, with the engine's float32 progress of this minibatch."""
        training = self._is_training_forward(logits)
        method = self._live_method(logits.shape[-1], logits.device)
        m = self.minibatches_per_step
        # The counts as the member's row, kept while they are the same tensor, unmodified, so
        # that the method keeps its terms (and their plan) for the period; the context, with
        # its progress tensor refilled in place, is kept with them.
        key = (id(counts), counts._version, logits.device, logits.dtype)
        if self._counts_row is None or self._counts_row[0] != key:
            self._counts_row = (key, MinibatchContext(
                torch.zeros(1, device=logits.device),
                counts.to(logits.device, logits.dtype).reshape(1, -1)))
        ctx = self._counts_row[1]
        ctx.progress.fill_(float(self.steps_done * m + self._minibatch)).div_(
            float(self.total_steps * m))
        module = getattr(method, "module", None)
        if module is not None:
            module.train(training)
        x, y = logits.reshape(1, -1, logits.shape[-1]), targets.reshape(1, -1)
        loss = method.member_loss(x, y, ctx, self.reduction)[0]
        # (On the CPU only: the plan is the C extension's, and reading the switch on a GPU
        # would sync with it at every minibatch.)
        held = method.held_terms(ctx, x) \
            if self._counts is not None and training and logits.is_cpu else None
        if held is not None:  # the same terms up to a bound: one plan for the minibatches
            plan = native_plan(held[0], x, y, self.reduction)
            if plan is not None:
                self._fast = (logits.shape, logits.dtype, plan, self.reduction,
                              None if held[1] is None else self._first_minibatch_at(held[1]),
                              tuple(x.shape))
        return loss.reshape(targets.shape) if self.reduction == "none" and loss.ndim else loss

    def _minibatches_done(self) -> int:
        return self.steps_done * self.minibatches_per_step + self._minibatch

    def _first_minibatch_at(self, progress: float) -> int:
        """The first minibatch count whose float32 progress (as :meth:`_method_loss` computes
        it) reaches ``progress``."""
        total = float(self.total_steps * self.minibatches_per_step)
        count = max(int(progress * total) - 2, self._minibatches_done())
        while float(torch.tensor(float(count)) / total) < progress:
            count += 1
        return count

    def _live_method(self, num_classes: int | None, device: torch.device) -> LossMethod:
        # Kept out of the submodules: its state travels in the extra state.
        if self._live is None or (self._live.num_classes is None and num_classes is not None):
            assert self.method is not None
            self.__dict__["_live"] = method_from_dict(self.method.to_dict(), 1, num_classes,
                                                      device)
        return self._live

    def _is_training_forward(self, logits: Tensor) -> bool:
        return self.training and logits.requires_grad and torch.is_grad_enabled()

    def _counts_for(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self._counts is not None:
            if self._counts.device != logits.device:
                self._counts = self._counts.to(logits.device)
            return self._counts
        if self._seen is None:
            self._seen = torch.zeros(logits.shape[-1], device=logits.device)
            if "counts" not in self._warned:
                self._warned.add("counts")
                warnings.warn("AdaptiveLoss has no class counts: it counts the training labels "
                              "until the first step(); pass class_counts= (e.g. "
                              "torch.bincount(train_labels)) to use the exact counts from the "
                              "start", UserWarning, stacklevel=3)
        if self._is_training_forward(logits):
            check_target_bounds(targets, logits.shape[-1])
            self._seen = self._seen.to(logits.device)
            flat = targets.reshape(-1).to(logits.device)
            self._seen.index_add_(0, flat, torch.ones_like(flat, dtype=self._seen.dtype))
        return self._seen

    def _known_counts(self, device: torch.device) -> Tensor:
        counts = self.class_counts
        if counts is None:
            if self._num_classes is None:
                raise ValueError("the number of classes is unknown: pass class_counts= or "
                                 "val_logits= before the first forward")
            counts = torch.zeros(self._num_classes)
        return counts.to(device)

    # ----------------------------------------------------------------------- decisions
    def begin(self, val_logits: Tensor | None = None, val_targets: Tensor | None = None
              ) -> None:
        """Start a training run: set the parameters of the first period.

        A schedule takes its value at progress 0. A controller decides from the observation
        the environment shows at reset: the untrained model's validation metrics (from
        ``val_logits`` / ``val_targets``, or the defaults), a train loss equal to the
        validation NLL and a zero gradient. A method starts from its initial state (AdaFocal:
        γ0 in every bin). Called by the first forward if not called before.
        """
        self._check_validation(val_logits, val_targets)
        self._reset_run()
        if self.method is not None:
            self._live_method(self._num_classes, self._device())
            self._describe_method()
        elif self.switch is not None:
            self._set_switched(self.switch.params(-1, 0.0))
        elif self.controller is None:
            self._set_params(self._scheduled(0.0))
        else:
            metrics = self._val_metrics(val_logits, val_targets)
            zero = torch.zeros(1, dtype=torch.float64)
            self._decide(0.0, metrics["nll"], zero, zero, metrics)
        self.history.append(self.params)

    def step(self, val_logits: Tensor | None = None, val_targets: Tensor | None = None, *,
             train_loss: float | Tensor | None = None, grad_norm: float | Tensor | None = None,
             grad_norm_std: float | Tensor | None = None, progress: float | None = None
             ) -> None:
        """End a period of training and set the parameters of the next one.

        Args:
            val_logits: ``[V, C]`` logits of the validation set (controllers; schedules
                ignore them).
            val_targets: ``[V]`` its labels.
            train_loss: mean plain cross-entropy of the period's minibatches (default: the
                recorded one).
            grad_norm: mean gradient L2 norm of the period's minibatches (default: the
                recorded one).
            grad_norm_std: its standard deviation over those minibatches (default: the
                recorded one, or 0 when ``grad_norm`` is given).
            progress: the fraction of training done (default ``steps done / total_steps``;
                a method's deferred re-weighting counts minibatches instead, as the engine).

        A method export learns from ``val_logits`` / ``val_targets`` where the method does
        (AdaFocal's γ update; required there) and ignores the other arguments.
        """
        self._check_validation(val_logits, val_targets)
        for name, value in (("train_loss", train_loss), ("grad_norm", grad_norm),
                            ("grad_norm_std", grad_norm_std)):
            if value is not None:
                _period_value(name, value)
        if progress is not None:
            checks.real("progress", progress)
        if self._params is None:
            self.begin()
        self.steps_done += 1
        if self._minibatch:
            self._period_sizes.append(self._minibatch)
        t = self.steps_done / self.total_steps if progress is None \
            else checks.real("progress", progress)
        t = min(max(t, 0.0), 1.0)
        if self.method is not None:
            if self.method.uses_validation:
                if val_logits is None or val_targets is None:
                    raise ValueError(f"the method {self.method.name!r} learns from the "
                                     "validation set: pass val_logits and val_targets to step()")
                method = self._live_method(val_logits.shape[-1], val_logits.device)
                method.observe_validation(val_logits.detach().unsqueeze(0),
                                          val_targets.to(val_logits.device))
        elif not self._observes:
            self._set_params(self._scheduled(t))
        else:
            metrics = self._val_metrics(val_logits, val_targets)
            if train_loss is not None:
                loss = _period_value("train_loss", train_loss).float()
            elif self._ce:  # the mean of the minibatches' recorded cross-entropies
                loss = self._stacked(self._ce).mean().reshape(1)
            else:
                loss = metrics["nll"]
            g_mean, g_std = self._gradient_stats(grad_norm, grad_norm_std)
            if self.switch is None:
                self._decide(t, loss, g_mean, g_std, metrics)
            else:
                obs = self._observe(self.switch, t, loss, g_mean, g_std, metrics, self._params)
                self.observation = obs[0].cpu()
                if self.choice < 0 and t >= self.switch.at - 1e-9:
                    self.choice = self.switch.choose(obs[0])
                self._set_switched(self.switch.params(self.choice, t))
        if self._counts_inferred and self._counts is None and self._seen is not None:
            self._counts = self._seen
            self._fast = None
        self._clear_period()
        if self.method is not None:
            self._describe_method()
        self.history.append(self.params)

    def fit_temperature(self, val_logits: Tensor, val_targets: Tensor) -> float:
        """Fit and keep the temperature T > 0 that minimises the NLL of ``val_logits / T``
        (``[V, C]``, e.g. of the trained model on the validation set) for ``val_targets``
        (``[V]``); returns T. See :meth:`calibrate`."""
        self._check_validation(val_logits, val_targets)
        if not val_targets.numel():
            raise ValueError("fit_temperature needs validation samples, but val_targets is "
                             "empty")
        self.temperature = float(temperature_scaling(val_logits.detach(),
                                                     val_targets.to(val_logits.device)))
        return self.temperature

    def calibrate(self, logits: Tensor) -> Tensor:
        """``logits / T`` with the temperature of :meth:`fit_temperature`, for inference."""
        if self.temperature is None:
            raise RuntimeError("calibrate() needs a temperature: call "
                               "fit_temperature(val_logits, val_targets) first")
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a tensor, got {type(logits).__name__}")
        return logits / self.temperature

    def _describe_method(self) -> None:
        """A method's parameters in use at the start of the period (``params``)."""
        method = self.method
        assert method is not None
        self._params = torch.tensor(list(method.hyper.values()), dtype=torch.float32)
        self._kwargs = (self._live or method).describe()
        if method.uses_progress:  # the engine's float32 progress against the switch
            progress = torch.tensor(float(self.steps_done)) / float(self.total_steps)
            self._kwargs["reweighted"] = float(bool(progress >= method.hyper["switch"]))

    def _scheduled(self, t: float) -> Tensor:
        assert self.schedule is not None
        values = self.schedule(t)
        return torch.tensor([values[p] for p in self.controlled])

    def _set_params(self, params: Tensor) -> None:
        self._params = params.detach().to("cpu", torch.float32)
        self._kwargs = dict(zip(self.controlled, self._params.tolist()))
        self._fast = None

    def _check_validation(self, val_logits: Tensor | None, val_targets: Tensor | None) -> None:
        """Validation logits ``[V, C]`` (C this loss's classes where known) and int64 labels
        ``[V]`` in [0, C), or neither."""
        if (val_logits is None) != (val_targets is None):
            raise ValueError("pass val_logits and val_targets together")
        if val_logits is None:
            return
        if not isinstance(val_logits, Tensor) or not isinstance(val_targets, Tensor):
            raise TypeError(f"val_logits and val_targets must be tensors, got "
                            f"{type(val_logits).__name__} and {type(val_targets).__name__}")
        if val_logits.ndim != 2 or tuple(val_targets.shape) != tuple(val_logits.shape[:1]):
            raise ValueError(f"val_logits must be [V, C] and val_targets [V], got "
                             f"{tuple(val_logits.shape)} and {tuple(val_targets.shape)}")
        if self._num_classes is not None and val_logits.shape[-1] != self._num_classes:
            raise ValueError(f"val_logits have {val_logits.shape[-1]} classes but this loss has "
                             f"{self._num_classes}")
        check_targets(val_logits, val_targets, "val_targets")

    def _val_metrics(self, val_logits: Tensor | None, val_targets: Tensor | None
                     ) -> dict[str, Tensor]:
        device = self._device()
        if val_logits is not None:
            assert val_targets is not None
            if self._num_classes is None:
                self._num_classes = val_logits.shape[-1]
            metrics = classification_metrics(val_logits.detach().unsqueeze(0),
                                              val_targets.to(val_logits.device),
                                              self._num_classes)
            self._last_metrics = _on(metrics, device)
        if self._last_metrics is not None:
            return self._last_metrics
        c = self._known_counts(device).numel()
        # A classifier whose logits are all equal, on a balanced validation set.
        return _on(classification_metrics(torch.zeros(1, c, c), torch.arange(c), c), device)

    def _gradient_stats(self, grad_norm: float | Tensor | None,
                        grad_norm_std: float | Tensor | None) -> tuple[Tensor, Tensor]:
        if grad_norm is not None:
            mean = _period_value("grad_norm", grad_norm).double()
            std = _period_value("grad_norm_std", 0.0 if grad_norm_std is None
                                else grad_norm_std).double()
            return mean, std
        if self._grad_norms:
            # Float64, as the engine's sums: E[g²] − E[g]² in float32 loses the spread.
            g = self._total_grad_norms().double()
            mean = g.mean()
            std = ((g * g).mean() - mean * mean).clamp_min(0.0).sqrt()
            return mean.reshape(1), std.reshape(1)
        if "grad" not in self._warned:
            self._warned.add("grad")
            warnings.warn("AdaptiveLoss recorded no gradient norms this period, so the "
                          "controller sees a zero gradient; call criterion.watch(model) once "
                          "before training (or pass grad_norm= to step())", UserWarning,
                          stacklevel=3)
        zero = torch.zeros(1, dtype=torch.float64)
        return zero, zero

    def _device(self) -> torch.device:
        if self.controller is None:
            return torch.device("cpu")
        return next(self.controller.net.parameters()).device

    def _decide(self, progress: float, train_loss: Tensor, grad_mean: Tensor, grad_std: Tensor,
                metrics: Mapping[str, Tensor]) -> None:
        """One decision of the controller, as :class:`lossgym.envs.core.EpisodeBatch` makes
        it: features of the period just ended → action → parameters."""
        c = self.controller
        assert c is not None
        device = self._device()
        base = None
        if c.mapping.mode == "residual":  # the base rule's parameters for the coming period
            values = c.base_rule(progress)
            base = torch.tensor([values.get(p, n) for p, n in
                                 zip(c.mapping.parameters, c.mapping.neutral().tolist())],
                                device=device)
        start = c.mapping.neutral().to(device) if base is None else base
        current = (start if self._params is None else self._params).to(device)
        obs = self._observe(c, progress, train_loss, grad_mean, grad_std, metrics, current)
        if self._state is not None:
            self._state = (self._state[0].to(device), self._state[1].to(device))
        action, self._state = c(obs, self._state)
        new = c.mapping.apply(action[0], current, base)
        self._last_change = (c.mapping.normalise(new) - c.mapping.normalise(current)).cpu()
        self.observation = obs[0].cpu()
        self._set_params(new)

    def _observe(self, rule: Controller | Switch, progress: float, train_loss: Tensor,
                 grad_mean: Tensor, grad_std: Tensor, metrics: Mapping[str, Tensor],
                 current: Tensor) -> Tensor:
        """The observation ``[1, D]`` the environment shows ``rule`` after a period played
        with the parameters ``current``."""
        device = current.device
        return compute_features(
            rule.spec,
            progress=torch.tensor([progress], dtype=torch.float32, device=device),
            train_loss=train_loss.to(device).float(),
            grad_norm=grad_mean.to(device).float(),
            grad_norm_std=grad_std.to(device).float(),
            val_metrics=metrics,
            params=rule.mapping.normalise(current.unsqueeze(0)),
            last_change=self._last_change.to(device).unsqueeze(0),
            imbalance=log_imbalance(self._known_counts(device).float().unsqueeze(0)),
            context=self.context().unsqueeze(0) if rule.spec.context else None,
        )

    def _set_switched(self, new: Tensor) -> None:
        """A switch's parameters for the coming period, with their change as the environment
        records it (from the neutral parameters at the start of a run)."""
        mapping = self.switch.mapping  # type: ignore[union-attr]
        old = mapping.neutral() if self._params is None else self._params
        self._last_change = (mapping.normalise(new) - mapping.normalise(old)).cpu()
        self._set_params(new)

    @property
    def _observes(self) -> bool:
        """Whether the rule reads the observation (a controller or a switch)."""
        return self.controller is not None or self.switch is not None

    def context(self) -> Tensor:
        """The context features (:func:`lossgym.features.context_values`) of this training
        run, ``[8]``, from the class counts, ``total_steps``, the minibatches per period
        (given, else counted in the periods so far), ``setup`` and what :meth:`watch` saw."""
        counts = self._known_counts(torch.device("cpu"))
        size = float(counts.sum())
        group = self._optimizer.param_groups[0] if self._optimizer is not None else {}
        seen = {"lr": group.get("lr"), "weight_decay": group.get("weight_decay"),
                "batch_size": self._batch_size, **self._model_setup}
        setup = {k: self.setup.get(k, seen.get(k) if seen.get(k) is not None else default)
                 for k, default in SETUP_DEFAULTS.items()}
        periods = self.minibatches_per_step if self._mps_given or not self._period_sizes \
            else max(self._period_sizes)
        epochs = self.total_steps * periods * setup["batch_size"] / max(size, 1.0)
        values = context_values(train_size=size, num_classes=counts.numel(), lr=setup["lr"],
                                weight_decay=setup["weight_decay"],
                                batch_size=setup["batch_size"], epochs=epochs,
                                arch=setup["arch"], width=setup["width"])
        return torch.tensor(values, dtype=torch.float32, device=self._device())

    # ----------------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        """The run's state (plain numbers and lists), so ``state_dict()`` checkpoints it and
        ``torch.load(weights_only=True)`` reads it."""
        live = self._live.state() if self._live is not None else {}
        return {"export_id": self.export_id,
                **{key: _plain(getattr(self, attr)) for key, attr in _STATE_ATTRS.items()},
                "params": _plain(self._params), "state": _plain(self._state),
                "last_metrics": _plain(self._last_metrics),
                "grad_norms": self._total_grad_norms().tolist() if self._grad_norms else [],
                "module": {k: v.detach().cpu().tolist() for k, v in live.items()} or None}

    def set_extra_state(self, state: Any) -> None:
        """Restore :meth:`get_extra_state`'s state, checked entry by entry first: a state that
        is not one this loss could have saved raises ``ValueError`` and changes nothing."""
        if not isinstance(state, dict) or state.get("export_id") != self.export_id:
            theirs = state.get("export_id") if isinstance(state, dict) else None
            raise ValueError(f"this state was saved by the adaptive loss of export {theirs!r},"
                             f" not by this one ({self.export_id!r})")
        st = self._checked_state(state)
        device = self._device()
        live = None
        if self.method is not None and (st["params"] is not None or st["module"]):
            live = method_from_dict(self.method.to_dict(), 1, st["num_classes"], device)
            dtypes = {k: v.dtype for k, v in live.state().items()}
            module = st["module"] or {}
            if module and set(module) != set(dtypes):
                raise ValueError(f"state['module'] holds {sorted(module)} but the method "
                                 f"{self.method.name!r} keeps {sorted(dtypes)}")
            try:
                live.load_state({k: torch.tensor(v, dtype=dtypes[k]) for k, v in module.items()})
            except (RuntimeError, TypeError, ValueError) as err:
                raise ValueError(f"state['module'] does not fit the method "
                                 f"{self.method.name!r}: {err}") from err
        self._fast = None
        for key, attr in _STATE_ATTRS.items():
            value = st[key]
            setattr(self, attr, value if key not in _TENSOR_STATE or value is None
                    else torch.tensor(value, dtype=torch.float32))
        self._grad_norms, self._params, self._kwargs = st["grad_norms"], None, {}
        if st["params"] is not None:
            self._set_params(torch.tensor(st["params"], dtype=torch.float32))
        self._state = None if st["state"] is None \
            else tuple(torch.tensor(s, dtype=torch.float32, device=device) for s in st["state"])
        metrics = st["last_metrics"]
        self._last_metrics = None if metrics is None else {
            k: torch.tensor(v, dtype=torch.bool if k == "class_present" else torch.float32,
                            device=device) for k, v in metrics.items()}
        self.__dict__["_live"] = live
        if self.method is not None and st["params"] is not None:
            self._describe_method()

    def _checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The entries of a saved state, each checked against what this loss saves (types,
        lengths, ranges); entries that older checkpoints lack take their defaults."""
        defaults = {"minibatch": 0, "batch_size": None, "period_sizes": [], "model_setup": {},
                    "minibatches_per_step": self.minibatches_per_step, "module": None,
                    "temperature": None, "choice": -1}
        required = ("export_id", "total_steps", "steps_done", "num_classes", "params",
                    "last_change", "history", "class_counts", "counts_inferred", "seen",
                    "state", "last_metrics", "observation", "ce", "grad_norms")
        missing = [k for k in required if k not in state]
        unknown = sorted(set(state) - set(required) - set(defaults))
        if missing or unknown:
            raise ValueError(f"the saved state lacks {missing} or has unknown entries {unknown}")
        st = {**defaults, **state}

        def fail(key: str, wanted: str) -> None:
            raise ValueError(f"state[{key!r}] must be {wanted}, got {st[key]!r:.80}")

        def numbers(key: str, length: int | None = None, low: float = -math.inf,
                    optional: bool = False) -> list[float] | None:
            values = st[key]
            if values is None and optional:
                return None
            if not isinstance(values, list) or (length is not None and len(values) != length):
                fail(key, f"a list of {'' if length is None else f'{length} '}numbers"
                          f"{' or None' if optional else ''}")
            return [checks.real(f"state[{key!r}][{i}]", v, low) for i, v in enumerate(values)]

        def array(values: object, where: str, shape: tuple[int, ...] | None) -> list:
            _array(values, where, shape)
            return values  # type: ignore[return-value]

        out: dict[str, Any] = {}
        for key, low in (("total_steps", 1), ("steps_done", 0), ("num_classes", 1),
                         ("minibatch", 0), ("batch_size", 1), ("minibatches_per_step", 1)):
            out[key] = None if st[key] is None and key in ("num_classes", "batch_size") \
                else checks.integer(f"state[{key!r}]", st[key], low)
        d, classes = len(self.controlled), out["num_classes"]
        out["params"] = numbers("params", d, optional=True)
        out["last_change"] = numbers("last_change", d)
        for key in ("class_counts", "seen"):
            out[key] = numbers(key, classes, 0.0, optional=True)
            if out[key] is not None and classes is None:
                raise ValueError(f"state[{key!r}] is given but state['num_classes'] is None")
        history = st["history"]
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and all(isinstance(k, str) for k in h) for h in history):
            fail("history", "a list of {name: number} objects")
        out["history"] = [{k: checks.real(f"state['history'][{i}][{k!r}]", v) for k, v in h.items()}
                          for i, h in enumerate(history)]
        if not isinstance(st["counts_inferred"], bool):
            raise ValueError(f"state['counts_inferred']={st['counts_inferred']!r} must be a bool")
        out["counts_inferred"] = st["counts_inferred"]
        hidden = self.controller.recurrent_state_size if self.controller is not None else 0
        lstm = st["state"]
        if lstm is not None and (not hidden or not isinstance(lstm, list) or len(lstm) != 2):
            raise ValueError(f"state['state'] must be None{' or [h, c]' if hidden else ''} for "
                             f"this {'recurrent ' if hidden else ''}{self.kind}")
        out["state"] = None if lstm is None else [
            array(v, f"state['state'][{i}]", (1, 1, hidden)) for i, v in enumerate(lstm)]
        metrics = st["last_metrics"]
        if metrics is not None:
            names = sorted(classification_metrics(torch.zeros(1, 2, 2), torch.arange(2), 2))
            if not isinstance(metrics, dict) or sorted(metrics) != names:
                raise ValueError(f"state['last_metrics'] must be None or hold exactly {names}")
            for k, v in metrics.items():
                array(v, f"state['last_metrics'][{k!r}]", None)
        out["last_metrics"] = metrics
        observer = self.controller if self.controller is not None else self.switch
        dim = observer.spec.dim if observer is not None else None
        out["observation"] = numbers("observation", dim, optional=True)
        if out["observation"] is not None and dim is None:
            raise ValueError(f"state['observation'] must be None for a {self.kind}")
        out["ce"] = numbers("ce")
        out["grad_norms"] = numbers("grad_norms", low=0.0)
        if not isinstance(st["period_sizes"], list):
            fail("period_sizes", "a list of integers")
        out["period_sizes"] = [checks.integer(f"state['period_sizes'][{i}]", v, 1)
                               for i, v in enumerate(st["period_sizes"])]
        setup = st["model_setup"]
        if not isinstance(setup, dict) or set(setup) - {"arch", "width"} \
                or setup.get("arch", "mlp") not in ("mlp", "cnn"):
            fail("model_setup", "{'arch': 'mlp' or 'cnn', 'width': n} or empty")
        if "width" in setup:
            checks.integer("state['model_setup']['width']", setup["width"], 1)
        out["model_setup"] = dict(setup)
        module = st["module"]
        if module is not None and (self.method is None or not isinstance(module, dict)):
            raise ValueError(f"state['module'] must be None for a {self.kind}"
                             if self.method is None else
                             "state['module'] must be None or a {name: values} object")
        out["module"] = module
        t = st["temperature"]
        out["temperature"] = None if t is None else checks.real("state['temperature']", t, 1e-12)
        last = -1 if self.switch is None else len(self.switch.schedules) - 1
        out["choice"] = checks.integer("state['choice']", st["choice"], -1, last)
        return out

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v:.4g}" for k, v in self._kwargs.items()) or "not started"
        algo = f" ({self.controller.algorithm})" if self.controller is not None \
            and self.controller.algorithm else ""
        if self.switch is not None:
            algo = f" (schedule {max(self.choice, 0)}{'' if self.choice >= 0 else ', undecided'})"
        return (f"kind={self.kind!r}{algo}, step={self.steps_done}/{self.total_steps}, "
                f"{params}, reduction={self.reduction!r}")
