"""Train a loss-adaptation agent on LossTuning-v0 with stable-baselines3.

    python -m agents.train --algo ppo --run-dir runs/ppo-default [--timesteps N] [--resume]

Reads top to bottom: arguments, hyperparameters (rl-zoo style YAML in agents/hyperparams/,
keyed by env id), the vector env (one batched population of inner classifiers, tasks from the
train split of ``TaskDistribution.default()``), the model, then ``learn`` with periodic
checkpoints. Everything lands in one run folder:

    config.json             arguments and hyperparameters
    monitor.csv             episode returns and lengths (VecMonitor)
    tb/                     TensorBoard logs
    checkpoints/            ckpt-<timesteps>.pt, written atomically, and latest.json
    policy.pt               the final parameters (torch.load(weights_only=True) reads them)
    obs_normalization.json  VecNormalize's observation statistics, as JSON

Checkpoints hold tensors and JSON only, so loading never unpickles: the model is rebuilt from
config.json and its parameters are loaded into it. SAC resumes with an empty replay buffer.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from agents.vec_env import LossTuningSB3VecEnv
from lossgym.io import atomic_write, atomic_write_text
from lossgym.tasks import TaskDistribution

ENV_ID = "LossTuning-v0"
ALGORITHMS = ("ppo", "sac", "recurrentppo")


@dataclass
class TrainArgs:
    """Arguments of a training run."""

    algo: str = "ppo"
    """ppo, sac or recurrentppo (sb3-contrib's RecurrentPPO: the meta-learned controller)."""
    run_dir: str = "runs/ppo-default"
    """the run folder; everything is written there."""
    timesteps: int | None = None
    """env steps in total (default: the YAML's n_timesteps)."""
    num_envs: int | None = None
    """members of the batched vector env (default: the YAML's n_envs)."""
    seed: int = 0
    """seed of the model and of the env's task draws."""
    checkpoint_every: int = 4096
    """env steps between checkpoints."""
    resume: bool = False
    """continue from the run folder's latest checkpoint."""
    device: str = "auto"
    """where the inner classifiers train (the policy network stays on the CPU)."""
    progress: bool = True
    """show a progress bar."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """hyperparameters that replace the YAML's (e.g. {"n_steps": 8} in tests)."""


def load_hyperparams(algo: str, env_id: str = ENV_ID) -> dict[str, Any]:
    """The YAML hyperparameters of ``algo`` for ``env_id``."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo={algo!r} is not known; choose one of {ALGORITHMS}")
    text = resources.files("agents").joinpath("hyperparams", f"{algo}.yml").read_text()
    table = yaml.safe_load(text)
    if env_id not in table:
        raise ValueError(f"agents/hyperparams/{algo}.yml has no entry for {env_id!r}")
    hp = dict(table[env_id])
    # Written out, so that a run's config.json says which features it observed (runs from
    # before features version 2 say nothing and are read as version 1).
    hp["env_kwargs"] = {"context_features": True, **(hp.get("env_kwargs") or {})}
    return hp


def make_env(num_envs: int, seed: int, run_dir: Path | None, env_kwargs: dict[str, Any],
             tasks: Any = None) -> VecEnv:
    """The batched SB3 vector env on the train split, with episode monitoring."""
    venv = LossTuningSB3VecEnv(
        num_envs=num_envs, tasks=tasks or TaskDistribution.default(), split="train",
        **env_kwargs,
    )
    venv.seed(seed)
    return VecMonitor(venv, filename=str(run_dir / "monitor.csv") if run_dir else None)


def build_model(algo: str, env: VecEnv, hp: dict[str, Any], seed: int,
                tensorboard_log: str | None) -> BaseAlgorithm:
    """An SB3 model from YAML hyperparameters (the keys lossgym itself reads removed)."""
    kwargs = {k: v for k, v in hp.items()
              if k not in ("n_envs", "n_timesteps", "policy", "normalize", "env_kwargs")}
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
def _torch_state(model: BaseAlgorithm) -> dict[str, Any]:
    state: dict[str, Any] = {"parameters": model.get_parameters()}
    if getattr(model, "log_ent_coef", None) is not None:
        state["log_ent_coef"] = model.log_ent_coef.detach().clone()
    return state


def _normalizer_state(env: VecEnv) -> dict[str, Any] | None:
    if not isinstance(env, VecNormalize):
        return None
    rms = env.obs_rms
    return {"mean": rms.mean.tolist(), "var": rms.var.tolist(), "count": float(rms.count),
            "clip_obs": env.clip_obs, "epsilon": env.epsilon}


def save_checkpoint(model: BaseAlgorithm, env: VecEnv, path: Path) -> None:
    """Parameters (torch, no pickled objects) plus JSON metadata, atomically."""
    state = _torch_state(model)
    state["num_timesteps"] = torch.tensor(model.num_timesteps)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    norm = _normalizer_state(env)
    if norm is not None:
        atomic_write_text(path.with_suffix(".norm.json"), json.dumps(norm))


def load_checkpoint(model: BaseAlgorithm, env: VecEnv, path: Path) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err
    model.set_parameters(state["parameters"], exact_match=True)
    if "log_ent_coef" in state:
        with torch.no_grad():
            model.log_ent_coef.copy_(state["log_ent_coef"])
    model.num_timesteps = int(state["num_timesteps"])
    norm_path = path.with_suffix(".norm.json")
    if isinstance(env, VecNormalize) and norm_path.exists():
        norm = json.loads(norm_path.read_text())
        env.obs_rms.mean = np.asarray(norm["mean"])
        env.obs_rms.var = np.asarray(norm["var"])
        env.obs_rms.count = norm["count"]


class CheckpointEvery(BaseCallback):
    """Writes ``checkpoints/ckpt-<t>.pt`` every ``every`` env steps and points
    ``latest.json`` at it."""

    def __init__(self, folder: Path, every: int):
        super().__init__()
        self.folder = folder
        self.every = every
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every:
            self.save()
        return True

    def save(self) -> None:
        self.last = self.num_timesteps
        path = self.folder / f"ckpt-{self.num_timesteps}.pt"
        save_checkpoint(self.model, self.model.get_env(), path)
        atomic_write_text(self.folder / "latest.json",
                          json.dumps({"file": path.name, "num_timesteps": self.num_timesteps}))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, if any."""
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    return run_dir / "checkpoints" / json.loads(pointer.read_text())["file"]


# --------------------------------------------------------------------------------- train
def train(args: TrainArgs) -> Path:
    """Train (or resume) an agent; returns the run folder."""
    run_dir = Path(args.run_dir)
    hp = load_hyperparams(args.algo)
    hp.update(args.overrides)
    num_envs = args.num_envs or int(hp["n_envs"])
    total = args.timesteps or int(hp["n_timesteps"])
    if total < 1 or num_envs < 1:
        raise ValueError(f"timesteps={total} and num_envs={num_envs} must be positive")
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = latest_checkpoint(run_dir) if args.resume else None
    if args.resume and resume_from is None:
        raise ValueError(f"--resume: {run_dir} has no checkpoint (checkpoints/latest.json)")
    config = {"args": asdict(args), "hyperparams": hp, "env_id": ENV_ID,
              "num_envs": num_envs, "timesteps": total}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))

    env_kwargs = dict(hp.get("env_kwargs") or {})
    env_kwargs["device"] = args.device
    env = make_env(num_envs, args.seed, run_dir, env_kwargs)
    if hp.get("normalize"):
        env = VecNormalize(env, norm_obs=True, norm_reward=False, gamma=hp.get("gamma", 0.99))
    model = build_model(args.algo, env, hp, args.seed, str(run_dir / "tb"))
    if resume_from is not None:
        load_checkpoint(model, env, resume_from)
    checkpoints = CheckpointEvery(run_dir / "checkpoints", args.checkpoint_every)
    start = time.time()
    model.learn(total_timesteps=max(total - model.num_timesteps, 0), callback=checkpoints,
                progress_bar=args.progress, reset_num_timesteps=resume_from is None,
                tb_log_name=args.algo)
    checkpoints.save()
    save_checkpoint(model, env, run_dir / "policy.pt")
    config["wall_seconds"] = time.time() - start + config.get("wall_seconds", 0.0)
    config["num_timesteps"] = model.num_timesteps
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    env.close()
    return run_dir


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Command-line arguments as :class:`TrainArgs`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ppo", choices=ALGORITHMS)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--num-envs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=4096)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    return TrainArgs(algo=ns.algo, run_dir=ns.run_dir or f"runs/{ns.algo}-default",
                     timesteps=ns.timesteps, num_envs=ns.num_envs, seed=ns.seed,
                     checkpoint_every=ns.checkpoint_every, resume=ns.resume, device=ns.device,
                     progress=not ns.no_progress)


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.train`` and ``lossgym train``: train, print the run folder."""
    print(train(parse_args(argv)))
    return 0


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- the agent
class AgentPolicy:
    """A trained run as a :class:`agents.rollout.Policy`: deterministic actions of the saved
    parameters, with the saved observation normalisation; recurrent state per env."""

    def __init__(self, run_dir: str | Path, checkpoint: str | Path | None = None):
        run_dir = Path(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
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
        except Exception as err:
            raise ValueError(f"agent parameters {path} cannot be read: {err}") from err
        self.model.set_parameters(state["parameters"], exact_match=True)
        norm_path = path.with_suffix(".norm.json")
        self.norm = json.loads(norm_path.read_text()) if norm_path.exists() else None
        self.recurrent = self.algo == "recurrentppo"
        self._state: Any = None
        self._starts = np.ones(1, dtype=bool)

    def normalise(self, obs: np.ndarray) -> np.ndarray:
        """Observations as VecNormalize saw them in training."""
        if self.norm is None:
            return obs
        mean, var = np.asarray(self.norm["mean"]), np.asarray(self.norm["var"])
        out = (obs - mean) / np.sqrt(var + self.norm["epsilon"])
        return np.clip(out, -self.norm["clip_obs"], self.norm["clip_obs"]).astype(np.float32)

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
