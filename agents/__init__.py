"""Training and evaluation of loss-adjustment agents on lossgym (stable-baselines3 and friends).

Installed by the ``lossgym`` distribution beside ``lossgym`` itself; nothing in
``lossgym`` imports it. ``agents.make_vec_env(n_envs, **env_kwargs)`` is the batched SB3
vector env in one call (see :mod:`agents.vec_env`).
"""

from typing import Any

__all__ = ["make_vec_env"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import agents.baselines` does not import SB3.
    if name == "make_vec_env":
        from agents.vec_env import make_vec_env

        return make_vec_env
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
