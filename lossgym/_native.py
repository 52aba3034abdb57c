"""The package's compiled kernels (the C extension ``lossgym._closedform``, built by
``pip install`` where a C compiler is present; see setup.py) and their torch fallbacks' switch.

On small CPU batches a loss step costs the number of kernels it launches, not its arithmetic:
the extension computes the closed-form loss with its gradient
(:func:`lossgym.losses.modulated_ce`'s fast path) and the gradient norm (:func:`squared_norm`) in
one call each. Where it is missing, or for tensors it does not take (CUDA, other dtypes),
lossgym runs the same computations as torch kernels. ``LOSSGYM_NO_EXTENSION=1`` turns it off
(as tests do, to compare the two).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

closedform = None
if os.environ.get("LOSSGYM_NO_EXTENSION", "") in ("", "0"):
    try:
        from lossgym import _closedform as closedform  # type: ignore[no-redef]
    except ImportError:  # pragma: no cover - built without a C compiler
        closedform = None


def squared_norm(grads: Sequence[Tensor]) -> float | None:
    """The sum of the squares of every value of ``grads`` (the squared L2 norm of them all,
    accumulated in double precision), or None where the extension does not take them: it
    takes contiguous CPU tensors, all float32 or all float64."""
    if closedform is None or not grads:
        return None
    dtype = grads[0].dtype
    if dtype is not torch.float32 and dtype is not torch.float64:
        return None
    for g in grads:
        if g.dtype is not dtype or not g.is_cpu or not g.is_contiguous():
            return None
    return closedform.sum_squares([g.data_ptr() for g in grads], [g.numel() for g in grads],
                                  dtype is torch.float64)
