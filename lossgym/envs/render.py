"""``render_mode="rgb_array"``: a small picture of the episode so far, drawn with numpy alone.

The top panel is the validation metric over the steps, the bottom one each controlled loss
parameter (rescaled to its range) over the steps, one colour per parameter in action order.
The x axis spans the task's horizon, so a frame shows how much of the episode is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEIGHT, WIDTH = 96, 128
_MARGIN = 3
_BACKGROUND = (24, 24, 24)
_FRAME = (90, 90, 90)
_METRIC = (240, 240, 240)
#: One colour per parameter (cycled beyond eight).
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (160, 160, 160))


def _panel(image: np.ndarray, top: int, bottom: int) -> tuple[int, int]:
    """Draws a panel's frame; returns the pixel rows of the values 1 and 0."""
    image[top, _MARGIN:WIDTH - _MARGIN] = _FRAME
    image[bottom, _MARGIN:WIDTH - _MARGIN] = _FRAME
    image[top:bottom + 1, _MARGIN] = _FRAME
    image[top:bottom + 1, WIDTH - _MARGIN - 1] = _FRAME
    return top + 1, bottom - 1


def _polyline(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: tuple[int, ...]) -> None:
    if len(xs) == 1:
        image[int(round(ys[0])), int(round(xs[0]))] = colour
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
        image[np.rint(np.linspace(y0, y1, n)).astype(int),
              np.rint(np.linspace(x0, x1, n)).astype(int)] = colour


def _series(image: np.ndarray, x_of: np.ndarray, first_step: int, values: np.ndarray,
            rows: tuple[int, int], colour: tuple[int, ...]) -> None:
    """One line of ``values`` in [0, 1] (clipped), the first at step ``first_step``."""
    top, bottom = rows
    values = np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0)[: len(x_of) - first_step]
    if len(values):
        xs = x_of[first_step:first_step + len(values)]
        _polyline(image, xs, bottom - values * (bottom - top), colour)


def episode_image(metric: Sequence[float], params: Sequence[Sequence[float]], horizon: int,
                  metric_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """uint8 ``[96, 128, 3]``: ``metric`` (one value per observation, from the reset on) and
    ``params`` (one row per step, each value in [0, 1]) over ``horizon`` steps."""
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:] = _BACKGROUND
    x_of = np.linspace(_MARGIN + 1, WIDTH - _MARGIN - 2, max(horizon, 1) + 1)
    low, high = metric_range
    rows = _panel(image, 2, HEIGHT // 2 - 2)
    _series(image, x_of, 0, (np.asarray(metric, dtype=float) - low) / (high - low), rows,
            _METRIC)
    rows = _panel(image, HEIGHT // 2 + 1, HEIGHT - 3)
    table = np.asarray(params, dtype=float)
    for j in range(table.shape[1] if table.ndim == 2 else 0):
        # Parameters are set by the actions of steps 1, 2, ...
        _series(image, x_of, 1, table[:, j], rows, PALETTE[j % len(PALETTE)])
    return image
