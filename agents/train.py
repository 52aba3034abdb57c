"""Train a loss-adaptation agent on LossTuning-v0 with stable-baselines3.

    python -m agents.train --algo ppo --run-dir runs/ppo-default [--timesteps N] [--resume]

Reads top to bottom: arguments, hyperparameters (rl-zoo style YAML in agents/hyperparams/,
keyed by env id), the vector env (one batched population of inner classifiers, tasks from the
train split of ``TaskDistribution.default()``), the model, then ``learn`` with periodic
checkpoints and TensorBoard metrics of the inner runs. Everything lands in one run folder:

    config.json             arguments, hyperparameters, the run's id, wall time
    monitor.csv             one row per episode (VecMonitor): return, length, time, and the
                            columns of agents.vec_env.EPISODE_KEYWORDS (final validation
                            metric, test balanced accuracy and the twin's, the task drawn)
    tb/                     TensorBoard logs (SB3's, and lossgym/: the loss parameters per
                            step, validation and test metrics per episode, gain over the twin)
    checkpoints/            ckpt-<timesteps>.pt, written atomically, and latest.json
    policy.pt               the final parameters (torch.load(weights_only=True) reads them)
    policy.norm.json        VecNormalize's observation statistics, as JSON
    model.zip               the same model as SB3 saves it (PPO.load, SAC.load, ...)
    vecnormalize.pkl        the same statistics as SB3 saves them (VecNormalize.load)

Checkpoints hold tensors and JSON only, so loading never unpickles: the model is rebuilt from
config.json and its parameters are loaded into it (model.zip and vecnormalize.pkl are for SB3
users; nothing here reads them). A checkpoint also holds the random generators, the
observation statistics, the replay buffer (SAC) and the tasks of the episodes in flight, and is
written where every episode has just started, so ``--resume`` continues exactly where the run
was interrupted: an interrupted and resumed run equals an uninterrupted one with the same seed
(tasks drawn, episodes, parameters). ``--resume`` checks everything before it writes anything;
it takes the latest readable checkpoint of this run, drops the monitor.csv rows written after
it (to monitor.interrupted.csv; they are trained again) and appends to monitor.csv.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from numpy.typing import ArrayLike
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from agents.arguments import add_dataclass_arguments, build, check_fields, run_command
from agents.vec_env import EPISODE_KEYWORDS, LossTuningSB3VecEnv, make_vec_env
from lossgym.export import check_obs_normalization
from lossgym.io import atomic_write, atomic_write_text
from lossgym.tasks import TaskDistribution

ENV_ID = "LossTuning-v0"
ALGORITHMS = ("ppo", "sac", "recurrentppo")
CHECKPOINT_FORMAT = 2
#: The YAML keys that configure the env and its wrappers, not the model (rl-zoo's meaning).
LOSSGYM_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "env_kwargs", "vec_env_wrapper")


@dataclass
class TrainArgs:
    """Arguments of a training run."""

    algo: str | None = field(default=None, metadata={"choices": ALGORITHMS})
    """ppo, sac or recurrentppo (sb3-contrib's RecurrentPPO: the meta-learned controller);
    default ppo, or with --resume the run's."""
    run_dir: str | None = None
    """the run folder; everything is written there (default runs/<algo>-default)."""
    timesteps: int | None = field(default=None, metadata={"minimum": 1, "meaning": "env steps"})
    """env steps in total (default: the YAML's n_timesteps; with --resume, the run's)."""
    num_envs: int | None = field(default=None, metadata={"minimum": 1})
    """members of the batched vector env (default: the YAML's n_envs; with --resume, the
    run's)."""
    seed: int | None = field(default=None, metadata={"minimum": 0})
    """seed of the model and of the env's task draws (default 0; with --resume, the run's)."""
    checkpoint_every: int = field(default=4096, metadata={"minimum": 1, "meaning": "env steps"})
    """env steps between checkpoints (each is written at the next point where every episode
    has just started)."""
    resume: bool = False
    """continue the run in --run-dir from its latest readable checkpoint."""
    device: str = "auto"
    """where the inner classifiers train: auto, cpu or cuda (the policy stays on the CPU)."""
    progress: bool = True
    """show a progress bar."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """hyperparameters that replace the YAML's, as a JSON object (e.g. {"n_steps": 8})."""

    def __post_init__(self) -> None:
        check_fields(self)


def load_hyperparams(algo: str, env_id: str = ENV_ID,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML hyperparameters of ``algo`` for ``env_id``, with ``overrides`` replacing
    them."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo={algo!r} is not known; choose one of {ALGORITHMS}")
    text = resources.files("agents").joinpath("hyperparams", f"{algo}.yml").read_text()
    table = yaml.safe_load(text)
    if env_id not in table:
        raise ValueError(f"agents/hyperparams/{algo}.yml has no entry for {env_id!r}")
    hp = {**table[env_id], **(overrides or {})}
    # Written out, so that a run's config.json says which features it observed (runs from
    # before features version 2 say nothing and are read as version 1).
    hp["env_kwargs"] = {"context_features": True, **(hp.get("env_kwargs") or {})}
    return hp


def make_env(num_envs: int, seed: int, run_dir: Path | None, env_kwargs: dict[str, Any],
             tasks: Any = None) -> VecEnv:
    """The batched SB3 vector env on the train split, monitored: episodes are appended to
    ``run_dir/monitor.csv`` (which gets its header when it does not exist yet)."""
    monitor = make_vec_env(num_envs, seed=seed, tasks=tasks or TaskDistribution.default(),
                           split="train", **env_kwargs)
    if run_dir is not None:
        _attach_monitor(monitor, Path(run_dir) / "monitor.csv")
    return monitor


def _attach_monitor(monitor: VecMonitor, path: Path) -> None:
    """Record the monitor's episodes in ``path``, appended when it exists (its times then go
    on from the run's start)."""
    exists = path.exists()
    if exists:
        monitor.t_start = _monitor_header(path)["t_start"]
    monitor.results_writer = ResultsWriter(
        str(path), header={"t_start": monitor.t_start, "env_id": ENV_ID},
        extra_keys=EPISODE_KEYWORDS, override_existing=not exists)


def build_model(algo: str, env: VecEnv, hp: dict[str, Any], seed: int,
                tensorboard_log: str | None) -> BaseAlgorithm:
    """An SB3 model from YAML hyperparameters (the keys lossgym itself reads removed)."""
    kwargs = {k: v for k, v in hp.items() if k not in LOSSGYM_KEYS}
    policy_kwargs = dict(kwargs.pop("policy_kwargs", {}) or {})
    common = dict(seed=seed, tensorboard_log=tensorboard_log, device="cpu", verbose=0,
                  policy_kwargs=policy_kwargs, **kwargs)
    if algo in ("ppo", "es"):  # agents.es searches the parameters of PPO's network
        return PPO(hp["policy"], env, **common)
    if algo == "sac":
        return SAC(hp["policy"], env, **common)
    from sb3_contrib import RecurrentPPO

    return RecurrentPPO(hp["policy"], env, **common)


# --------------------------------------------------------------------------- checkpoints
def _chain(env: VecEnv) -> tuple[VecNormalize | None, VecMonitor, LossTuningSB3VecEnv]:
    """The normaliser (if any), the monitor and the adapter of a run's env."""
    norm = env if isinstance(env, VecNormalize) else None
    monitor = env.venv if norm is not None else env
    return norm, monitor, env.unwrapped


def _normalizer_state(env: VecEnv) -> dict[str, Any] | None:
    if not isinstance(env, VecNormalize):
        return None
    rms = env.obs_rms
    return {"mean": rms.mean.tolist(), "var": rms.var.tolist(), "count": float(rms.count),
            "clip_obs": env.clip_obs, "epsilon": env.epsilon}


def _replay_arrays(model: BaseAlgorithm) -> dict[str, np.ndarray]:
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return {}
    used = buffer.buffer_size if buffer.full else buffer.pos
    names = ["observations", "actions", "rewards", "dones", "timeouts"]
    if not buffer.optimize_memory_usage:
        names.append("next_observations")
    return {name: getattr(buffer, name)[:used] for name in names}


def save_checkpoint(model: BaseAlgorithm, env: VecEnv, path: Path, run_id: str,
                    monitor_path: Path) -> None:
    """Everything a run needs to go on exactly, as tensors and JSON (no pickled objects),
    written atomically: the parameters and optimiser states, the random generators, the
    observation statistics, the replay buffer, the episodes in flight (their tasks, steps and
    task generators) and how much of monitor.csv they account for."""
    norm, monitor, adapter = _chain(env)
    vec = adapter.vector_env
    np_state = np.random.get_state()
    action_space = model.action_space.np_random.bit_generator.state \
        if model.action_space._np_random is not None else None
    meta = {
        "format": CHECKPOINT_FORMAT,
        "run_id": run_id,
        "algo": type(model).__name__,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(getattr(model, "_episode_num", 0)),
        "monitor_bytes": monitor_path.stat().st_size,
        "monitor_episodes": int(monitor.episode_count),
        "episodes": {"tasks": [t.to_dict() for t in vec.batch.tasks],
                     "steps": [int(s) for s in vec.batch.steps],
                     "generators": [r.bit_generator.state for r in vec._rngs]},
        "normalizer": _normalizer_state(env),
        "numpy_random": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_random": random.getstate(),
        "action_space_random": action_space,
        "replay": ({"pos": int(model.replay_buffer.pos), "full": bool(model.replay_buffer.full)}
                   if isinstance(model, OffPolicyAlgorithm) else None),
    }
    state: dict[str, Any] = {
        "parameters": model.get_parameters(),
        "num_timesteps": torch.tensor(model.num_timesteps),
        "meta": json.dumps(meta),
        "torch_random": torch.get_rng_state(),
        "numpy_random_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "last_obs": torch.as_tensor(np.asarray(model._last_obs)),
        "last_episode_starts": torch.as_tensor(np.asarray(model._last_episode_starts)),
        "raw_obs": torch.as_tensor(np.asarray(norm.old_obs if norm is not None
                                              else model._last_obs)),
        "replay": {k: torch.from_numpy(np.ascontiguousarray(v))
                   for k, v in _replay_arrays(model).items()},
    }
    if getattr(model, "log_ent_coef", None) is not None:
        state["log_ent_coef"] = model.log_ent_coef.detach().clone()
    lstm = getattr(model, "_last_lstm_states", None)
    if lstm is not None:
        state["lstm"] = [t.detach().clone() for pair in (lstm.pi, lstm.vf) for t in pair]
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, run_id: str | None = None) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only=True``), checked;
    ``ValueError`` says what is wrong with it."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        meta = json.loads(state["meta"])
        state["meta"] = meta
        missing = [k for k in ("parameters", "torch_random", "last_obs", "raw_obs", "replay")
                   if k not in state]
        if missing or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"it is not a format-{CHECKPOINT_FORMAT} checkpoint of this "
                             f"version (missing {missing or 'nothing'}, format "
                             f"{meta.get('format')!r})")
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err
    _check_meta(meta, path)
    if run_id is not None and meta["run_id"] != run_id:
        raise ValueError(f"checkpoint {path} belongs to another run (run id "
                         f"{meta['run_id']!r}, not {run_id!r})")
    return state


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """The JSON part of a checkpoint has every piece :func:`restore_checkpoint` reads."""
    def numbers(values: Any) -> bool:
        return isinstance(values, list) and all(isinstance(v, int | float) for v in values)

    episodes, norm = meta.get("episodes"), meta.get("normalizer")
    problems = [
        name for name, ok in (
            ("num_timesteps", isinstance(meta.get("num_timesteps"), int)),
            ("monitor_bytes", isinstance(meta.get("monitor_bytes"), int)),
            ("episodes", isinstance(episodes, dict) and all(
                isinstance(episodes.get(k), list) for k in ("tasks", "steps", "generators"))
             and len({len(episodes[k]) for k in ("tasks", "steps", "generators")}) == 1),
            ("normalizer", norm is None or (isinstance(norm, dict) and numbers(norm.get("mean"))
                                            and numbers(norm.get("var"))
                                            and len(norm["mean"]) == len(norm["var"])
                                            and isinstance(norm.get("count"), int | float))),
            ("numpy_random", isinstance(meta.get("numpy_random"), list)),
            ("python_random", isinstance(meta.get("python_random"), list)),
        ) if not ok]
    if problems:
        raise ValueError(f"checkpoint {path} is damaged: malformed {', '.join(problems)} "
                         "(observation normaliser statistics are 'normalizer')")


def restore_checkpoint(model: BaseAlgorithm, env: VecEnv, state: dict[str, Any]) -> int:
    """Put a model and its freshly built env where the checkpoint left them; returns the
    number of episodes in flight that restart from their first step (0 when the checkpoint
    was taken where every episode had just started: then the run goes on exactly)."""
    meta = state["meta"]
    try:
        model.set_parameters(state["parameters"], exact_match=True)
    except Exception as err:
        raise ValueError(f"the checkpoint does not fit a {meta['algo']} model with the run's "
                         f"hyperparameters: {err}") from err
    if "log_ent_coef" in state:
        with torch.no_grad():
            model.log_ent_coef.copy_(state["log_ent_coef"])
    model.num_timesteps = meta["num_timesteps"]
    model._n_updates = meta["n_updates"]
    model._episode_num = meta["episode_num"]
    norm, monitor, adapter = _chain(env)
    monitor.episode_count = meta["monitor_episodes"]
    episodes = meta["episodes"]
    adapter.set_options([{"task": task} for task in episodes["tasks"]])
    raw = adapter.reset()  # the episodes in flight, restarted on their tasks
    for rng, generator_state in zip(adapter.vector_env._rngs, episodes["generators"]):
        rng.bit_generator.state = generator_state
    if norm is not None:
        stats = meta["normalizer"]
        norm.obs_rms.mean = np.asarray(stats["mean"])
        norm.obs_rms.var = np.asarray(stats["var"])
        norm.obs_rms.count = stats["count"]
        norm.old_obs = raw
    restarted = np.array([s > 0 for s in episodes["steps"]])
    fresh = norm.normalize_obs(raw) if norm is not None else raw
    model._last_obs = np.where(restarted[:, None], fresh, state["last_obs"].numpy())
    model._last_episode_starts = state["last_episode_starts"].numpy() | restarted
    if isinstance(model, OffPolicyAlgorithm):
        model._last_original_obs = raw
        buffer = model.replay_buffer
        for name, values in state["replay"].items():
            getattr(buffer, name)[: len(values)] = values.numpy()
        buffer.pos, buffer.full = meta["replay"]["pos"], meta["replay"]["full"]
    if "lstm" in state:
        pi_h, pi_c, vf_h, vf_c = state["lstm"]
        model._last_lstm_states = type(model._last_lstm_states)((pi_h, pi_c), (vf_h, vf_c))
    torch.set_rng_state(state["torch_random"])
    name, pos, has_gauss, gauss = meta["numpy_random"]
    np.random.set_state((name, state["numpy_random_keys"].numpy().astype(np.uint32), pos,
                         has_gauss, gauss))
    py = meta["python_random"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if meta["action_space_random"] is not None:
        model.action_space.np_random.bit_generator.state = meta["action_space_random"]
    if not restarted.any() and not np.array_equal(raw, state["raw_obs"].numpy()):
        warnings.warn("the resumed episodes' observations differ from the checkpoint's (another"
                      " device or library version?): the run goes on, but not bit for bit as "
                      "an uninterrupted one would", stacklevel=2)
    return int(restarted.sum())


class CheckpointEvery(BaseCallback):
    """Writes ``checkpoints/ckpt-<t>.pt`` every ``every`` env steps and points
    ``latest.json`` at it.

    A checkpoint is written between rollouts (after the update, before the next steps), at the
    first such point after ``every`` steps where every episode has just started, so that a
    resume is exact; if none comes within one more horizon of steps (diverged members fall out
    of step), it is written anyway and a resume restarts the episodes in flight.
    """

    def __init__(self, folder: Path, every: int, run_id: str, monitor_path: Path):
        super().__init__()
        self.folder = folder
        self.every = every
        self.run_id = run_id
        self.monitor_path = monitor_path
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_rollout_start(self) -> None:
        due = self.num_timesteps - self.last
        if due < self.every:
            return
        vec = self.model.get_env().unwrapped.vector_env
        horizon = max(t.horizon for t in vec.batch.tasks) * vec.num_envs
        if all(s == 0 for s in vec.batch.steps) or due >= self.every + horizon:
            self.save()

    def _on_step(self) -> bool:
        return True

    def save(self) -> Path:
        self.last = self.num_timesteps
        path = self.folder / f"ckpt-{self.num_timesteps}.pt"
        save_checkpoint(self.model, self.model.get_env(), path, self.run_id, self.monitor_path)
        atomic_write_text(self.folder / "latest.json",
                          json.dumps({"file": path.name, "num_timesteps": self.num_timesteps}))
        return path


class DomainMetrics(BaseCallback):
    """TensorBoard metrics of the inner runs under ``lossgym/``: the mean loss parameters per
    step, and per finished episode the final validation metric, the test balanced accuracy,
    the twin's and the gain over it (``reward_baseline="paired"``), and divergences."""

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            for name, value in (info.get("params") or {}).items():
                self.logger.record_mean(f"lossgym/param_{name}", value)
            if "test_balanced_accuracy" not in info:
                continue  # not the end of an episode
            test, twin = info["test_balanced_accuracy"], info["twin_test_balanced_accuracy"]
            self.logger.record_mean("lossgym/episode_val_metric", info["val_metric"])
            self.logger.record_mean("lossgym/episode_test_balanced_accuracy", test)
            self.logger.record_mean("lossgym/episode_diverged", float(info["diverged"]))
            if np.isfinite(twin):
                self.logger.record_mean("lossgym/episode_twin_test_balanced_accuracy", twin)
                self.logger.record_mean("lossgym/episode_test_gain_over_twin", test - twin)
            if "episode" in info:
                self.logger.record_mean("lossgym/episode_return", info["episode"]["r"])
        return True


_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)\.pt")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, if any (``ValueError`` if it names a file outside
    the run's checkpoints folder)."""
    folder = Path(run_dir) / "checkpoints"
    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["file"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{pointer} names {name!r}, which is not a file of {folder}; refusing "
                         "to load a checkpoint from outside the run folder")
    return folder / name


def find_checkpoint(run_dir: Path, run_id: str) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest readable checkpoint of run ``run_id``: the one ``latest.json`` names, else
    the newest earlier one; with the problems met on the way. ``ValueError`` if none."""
    folder = run_dir / "checkpoints"
    problems: list[str] = []
    named = latest_checkpoint(run_dir)  # refuses a file outside the run folder
    if named is None:
        problems.append(f"{folder / 'latest.json'} is missing or unreadable")
    found = sorted(((int(m.group(1)), folder / m.group(0)) for m in
                    (_CHECKPOINT_NAME.fullmatch(p.name) for p in folder.glob("ckpt-*.pt"))
                    if m), reverse=True) if folder.is_dir() else []
    candidates = ([named] if named is not None else []) + [p for _, p in found if p != named]
    for path in candidates:
        if not path.exists():
            problems.append(f"{path} does not exist")
            continue
        try:
            return path, read_checkpoint(path, run_id), problems
        except ValueError as err:
            problems.append(str(err))
    raise ValueError(f"--resume: {run_dir} has no readable checkpoint of this run"
                     + (f" ({'; '.join(problems)})" if problems else ""))


def _monitor_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            header = json.loads(handle.readline().removeprefix("#"))
            columns = handle.readline().strip().split(",")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as a monitor file: {err}") from err
    expected = ["r", "l", "t", *EPISODE_KEYWORDS]
    if columns != expected or "t_start" not in header:
        raise ValueError(f"{path} has the columns {columns}; this version writes {expected}")
    return header


# --------------------------------------------------------------------------------- train
@dataclass
class _Resume:
    """What a resume starts from, all checked before anything is written."""

    config: dict[str, Any]
    checkpoint: Path
    state: dict[str, Any]
    problems: list[str]


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{run_dir} holds no training run: {path} does not exist") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as a training run's config: {err}") from err
    if not (isinstance(config, dict) and {"args", "hyperparams", "num_envs"} <= set(config)
            and isinstance(config["args"], dict) and "algo" in config["args"]):
        raise ValueError(f"{path} is not a training run's config (it lacks args, hyperparams "
                         "or num_envs)")
    return config


def _plan_resume(args: TrainArgs, run_dir: Path) -> tuple[TrainArgs, _Resume]:
    """The run's own arguments for a resume, after checking that ``args`` agree with them
    and that a usable checkpoint and monitor file are there."""
    if not run_dir.is_dir():
        raise ValueError(f"--resume: the run folder {run_dir} does not exist")
    config = _read_config(run_dir)
    saved = config["args"]
    for name in ("algo", "num_envs", "seed"):
        given, theirs = getattr(args, name), saved[name] if name != "num_envs" \
            else config["num_envs"]
        if given is not None and given != theirs:
            raise ValueError(f"--resume {'--' + name.replace('_', '-')} {given}: the run in "
                             f"{run_dir} was trained with {name}={theirs!r}; resume it with "
                             "that value or without the option")
    if args.overrides and args.overrides != saved.get("overrides", {}):
        raise ValueError(f"--resume: overrides {args.overrides} differ from the run's "
                         f"{saved.get('overrides', {})}")
    resumed = replace(args, algo=saved["algo"], num_envs=config["num_envs"], seed=saved["seed"],
                      overrides=saved.get("overrides", {}),
                      timesteps=config["timesteps"] if args.timesteps is None
                      else args.timesteps)
    checkpoint, state, problems = find_checkpoint(run_dir, config.get("run_id", ""))
    done = state["meta"]["num_timesteps"]
    if resumed.timesteps <= done:
        raise ValueError(f"--resume: {checkpoint} has already trained {done} of the run's "
                         f"{resumed.timesteps} timesteps; pass --timesteps N > {done} to "
                         "train further")
    monitor = run_dir / "monitor.csv"
    if not monitor.exists():
        raise ValueError(f"--resume: {monitor} is missing; its episodes cannot be continued")
    _monitor_header(monitor)
    if monitor.stat().st_size < state["meta"]["monitor_bytes"]:
        raise ValueError(f"--resume: {monitor} is shorter than when {checkpoint} was written "
                         f"({monitor.stat().st_size} < {state['meta']['monitor_bytes']} "
                         "bytes); the checkpoint's episodes are not all in it")
    return resumed, _Resume(config, checkpoint, state, problems)


def _rewind_monitor(path: Path, size: int) -> int:
    """Cut monitor.csv back to ``size`` bytes (the checkpoint's); the rows after it go to
    monitor.interrupted.csv. Returns how many rows moved."""
    with open(path, "rb") as handle:
        handle.seek(size)
        tail = handle.read()
    if tail:
        with open(path.with_name("monitor.interrupted.csv"), "ab") as out:
            out.write(tail)
        with open(path, "r+b") as handle:
            handle.truncate(size)
    return tail.count(b"\n")


def _save_final(model: BaseAlgorithm, env: VecEnv, run_dir: Path) -> None:
    """policy.pt (+ policy.norm.json) for lossgym, model.zip and vecnormalize.pkl for SB3."""
    state = {"parameters": model.get_parameters(),
             "num_timesteps": torch.tensor(model.num_timesteps)}
    if getattr(model, "log_ent_coef", None) is not None:
        state["log_ent_coef"] = model.log_ent_coef.detach().clone()
    atomic_write(run_dir / "policy.pt", lambda tmp: torch.save(state, tmp))
    norm = _normalizer_state(env)
    if norm is not None:
        atomic_write_text(run_dir / "policy.norm.json", json.dumps(norm))

    def save_zip(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            model.save(handle)

    atomic_write(run_dir / "model.zip", save_zip)
    if isinstance(env, VecNormalize):
        atomic_write(run_dir / "vecnormalize.pkl", env.save)


def train(args: TrainArgs) -> Path:
    """Train (or resume) an agent; returns the run folder."""
    check_fields(args)
    algo = args.algo or "ppo"
    run_dir = Path(args.run_dir or f"runs/{algo}-default")
    resume = None
    if args.resume:
        args, resume = _plan_resume(args, run_dir)
        hp = dict(resume.config["hyperparams"])
    else:
        hp = load_hyperparams(algo, overrides=args.overrides)
        args = replace(args, algo=algo, seed=0 if args.seed is None else args.seed)
    args = replace(args, run_dir=str(run_dir))
    num_envs = args.num_envs if args.num_envs is not None else int(hp["n_envs"])
    total = args.timesteps if args.timesteps is not None else int(hp["n_timesteps"])
    if resume is not None:
        config = dict(resume.config)
        config["timesteps"] = total
    else:
        config = {"args": asdict(args), "hyperparams": hp, "env_id": ENV_ID,
                  "num_envs": num_envs, "timesteps": total, "run_id": uuid.uuid4().hex}

    # Everything that can fail is built before a file is written.
    env_kwargs = dict(hp.get("env_kwargs") or {})
    env_kwargs["device"] = args.device
    env = make_env(num_envs, args.seed, None, env_kwargs)
    if hp.get("normalize"):
        # rl-zoo's meaning: True, or VecNormalize's keyword arguments.
        options = hp["normalize"] if isinstance(hp["normalize"], dict) else {}
        env = VecNormalize(env, **{"norm_obs": True, "norm_reward": False,
                                   "gamma": hp.get("gamma", 0.99), **options})
    model = build_model(args.algo, env, hp, args.seed, str(run_dir / "tb"))
    monitor_path = run_dir / "monitor.csv"
    if resume is not None:
        restarted = restore_checkpoint(model, env, resume.state)
        for problem in resume.problems:
            print(f"--resume: skipped: {problem}", file=sys.stderr)
        moved = _rewind_monitor(monitor_path, resume.state["meta"]["monitor_bytes"])
        print(f"--resume: from {resume.checkpoint} ({model.num_timesteps} timesteps)"
              + (f"; {moved} monitor.csv rows written after it moved to "
                 "monitor.interrupted.csv" if moved else "")
              + (f"; {restarted} episodes in flight restart" if restarted else ""),
              file=sys.stderr)
        config.setdefault("resumed_from", []).append(resume.checkpoint.name)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        monitor_path.unlink(missing_ok=True)
    _attach_monitor(_chain(env)[1], monitor_path)
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))

    checkpoints = CheckpointEvery(run_dir / "checkpoints", args.checkpoint_every,
                                  config["run_id"], monitor_path)
    start = time.time()
    try:
        model.learn(total_timesteps=total - model.num_timesteps,
                    callback=CallbackList([checkpoints, DomainMetrics()]),
                    progress_bar=args.progress, reset_num_timesteps=resume is None,
                    tb_log_name=args.algo)
        checkpoints.save()
        _save_final(model, env, run_dir)
        config["wall_seconds"] = time.time() - start + config.get("wall_seconds", 0.0)
        config["num_timesteps"] = model.num_timesteps
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    finally:
        env.close()
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    """The command line: one option per field of :class:`TrainArgs`, its help the field's
    docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, TrainArgs)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Command-line arguments as :class:`TrainArgs`; a bad value exits with status 2 and a
    message."""
    parser = build_parser()
    return build(parser, TrainArgs, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.train`` and ``lossgym train``: train, print the run folder. Errors in
    the user's input (options, run folders, checkpoints) exit with status 2 and a message.
    ``--algo es`` hands the other options to ``python -m agents.es`` (evolution strategies
    over the same policy network; ``--algo es --help`` lists its options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--algo=es" or (arg == "--algo" and argv[i + 1:i + 2] == ["es"]):
            from agents import es

            return es.main(argv[:i] + argv[i + (1 if arg == "--algo=es" else 2):])
    args = parse_args(argv)
    return run_command(lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- the agent
def normalise_observations(obs: np.ndarray, mean: ArrayLike, var: ArrayLike, epsilon: float,
                           clip_obs: float, held: ArrayLike | None = None,
                           support: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Observations ``[N, D]`` as the policy sees them, in float32: each raw feature clipped to
    its ``support`` (low, high) if given, standardised as VecNormalize does and clipped to
    ±``clip_obs``; a ``held`` feature (one value in training) is 0. ES trains with this rule
    and :class:`AgentPolicy` acts with it; :meth:`lossgym.export.Controller.normalise` is the
    same rule in torch."""
    if support is not None:
        obs = np.clip(obs, *support)
    out = np.clip((obs - np.asarray(mean)) / np.sqrt(np.asarray(var) + epsilon), -clip_obs,
                  clip_obs)
    return (out if held is None else np.where(np.asarray(held, dtype=bool), 0.0, out)
            ).astype(np.float32)


class AgentPolicy:
    """A trained run as a :class:`agents.rollout.Policy`: deterministic actions of the saved
    parameters, with the saved observation normalisation; recurrent state per env."""

    def __init__(self, run_dir: str | Path, checkpoint: str | Path | None = None):
        run_dir = Path(run_dir)
        config = _read_config(run_dir)
        self.algo = config["args"]["algo"]
        hp = config["hyperparams"]
        env_kwargs = dict(hp.get("env_kwargs") or {})
        # Runs from before features version 2 observed no context features.
        env_kwargs.setdefault("context_features", False)
        from lossgym.actions import ActionMapping, parse_parameters
        from lossgym.envs.config import LossTuningConfig

        mapping = ActionMapping(parse_parameters(env_kwargs.get("action_params",
                                                                ("gamma", "alpha"))),
                                env_kwargs.get("action_mode", "absolute"),
                                float(env_kwargs.get("max_step", 0.1)))
        self.parameters = mapping.parameters
        self.mode = mapping.mode
        self.max_step = mapping.max_step
        # What the rollout's episodes must give it: its observation and its base rule.
        config = LossTuningConfig.build(**{k: v for k, v in env_kwargs.items()
                                           if k not in ("tasks", "split")})
        self.context_features = config.context_features
        self.progress_basis = config.progress_basis
        self.base_rule = config.episode_batch(1).base_rule if self.mode == "residual" else None
        spaces_env = LossTuningSB3VecEnv(num_envs=1, **{k: v for k, v in env_kwargs.items()
                                                        if k != "reward_baseline"})
        with warnings.catch_warnings():
            # PPO warns that its rollout buffer does not fit one env; nothing is collected here.
            warnings.simplefilter("ignore", UserWarning)
            self.model = build_model(self.algo, spaces_env, hp, 0, None)
        path = Path(checkpoint) if checkpoint else run_dir / "policy.pt"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            self.model.set_parameters(state["parameters"], exact_match=True)
        except Exception as err:
            raise ValueError(f"agent parameters {path} cannot be read: {err}") from err
        norm_path = path.with_suffix(".norm.json")
        self.norm = None
        #: Per feature, the range a raw feature is clipped to before it is normalised (as
        #: :class:`lossgym.export.Controller` clips it), or None without a support.
        self._support: tuple[np.ndarray, np.ndarray] | None = None
        if norm_path.exists():
            try:
                raw = json.loads(norm_path.read_text())
                if not isinstance(raw, dict):
                    raise ValueError(f"it holds a {type(raw).__name__}, not a JSON object")
                raw.pop("count", None)  # VecNormalize's running count: not needed to act
                self.norm = check_obs_normalization(raw, self.model.observation_space.shape[0])
                if "low" in self.norm:
                    self._support = tuple(
                        np.array([bound if x is None else x for x in self.norm[key]],
                                 dtype=np.float64) for key, bound in (("low", -np.inf),
                                                                      ("high", np.inf)))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"observation statistics {norm_path} cannot be read: "
                                 f"{err!r}") from err
        self.recurrent = self.algo == "recurrentppo"
        self._state: Any = None
        self._starts = np.ones(1, dtype=bool)

    def normalise(self, obs: np.ndarray) -> np.ndarray:
        """Observations as VecNormalize saw them in training."""
        if self.norm is None:
            return obs
        return normalise_observations(obs, self.norm["mean"], self.norm["var"],
                                      self.norm["epsilon"], self.norm["clip_obs"],
                                      self.norm.get("held"), self._support)

    def reset(self, num_envs: int) -> None:
        self._state = None
        self._starts = np.ones(num_envs, dtype=bool)

    def act(self, obs: np.ndarray) -> np.ndarray:
        x = self.normalise(np.asarray(obs, dtype=np.float32))
        if self.recurrent:
            actions, self._state = self.model.predict(x, state=self._state,
                                                      episode_start=self._starts,
                                                      deterministic=True)
            self._starts = np.zeros(len(x), dtype=bool)
            return actions
        actions, _ = self.model.predict(x, deterministic=True)
        return actions
