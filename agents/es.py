"""Train the loss-adaptation policy with evolution strategies (OpenAI-ES, antithetic pairs).

    python -m agents.es --run-dir runs/es-default [--generations 24] [--pairs 16]

The policy is the network PPO trains (stable-baselines3's ``ActorCriticPolicy``, built from
``agents/hyperparams/ppo.yml`` as :mod:`agents.train` builds it); ES searches the parameters
θ of its actor only (``mlp_extractor.policy_net`` and ``action_net``) and acts with the mean
of its Gaussian, as ``predict(deterministic=True)`` does. Reads top to bottom:

1. **One generation is one batched population.** P antithetic pairs ε_k ~ N(0, I): member 2k
   acts with θ + σ ε_k and member 2k + 1 with θ − σ ε_k, both on the same task and seed (so
   the same pool, initialisation and data order), in one :class:`LossTuningVectorEnv` of 2P
   members. Pairs get different tasks of the train split (one dataset, architecture and
   budget per population: the first draw fixes them).
2. **Fitness** is each member's whole-episode return against its base twin (the env's
   ``reward_baseline``: ``"paired"`` trains a cross-entropy twin beside every member), turned
   into centred ranks in [−0.5, 0.5] over the population. With residual actions against the
   base twin (the default agent), the twin is the zero action, and every member on one task
   and seed would train the same twin: the population then holds **one twin per task**, a
   member acting with the zero action, instead of one per member (2P + P/k runs instead of
   4P for k pairs per task; :func:`shares_twins`).
3. **Update** (Salimans et al. 2017): g = Σ_k (F(θ + σε_k) − F(θ − σε_k)) ε_k / (2P), the
   1/σ left to the step size; Adam ascends g with coupled L2 ``weight_decay``.
4. **Observation normalisation**: running mean and variance of every observation the members
   acted on, frozen within a generation (the first one sees raw observations) and updated
   after it, applied as SB3's ``VecNormalize`` applies its statistics, except that a feature
   that took one value in every observation so far is held at 0 (:class:`FrozenNormalizer`).

The run folder has :mod:`agents.train`'s layout, so ``lossgym export RUN`` and
``python -m agents.evaluate --run-dir RUN`` read it as they read a PPO run::

    config.json        arguments ("algo": "es") and the PPO hyperparameters of the network
    monitor.csv        one row per member episode (return against the twin, length, time)
    generations.csv    per generation: the population's dataset and net, return statistics, |θ|,
                       seconds in the env (inner training) and outside it
    policy.pt          the policy's parameters (torch.load(weights_only=True)), every generation
    policy.norm.json   the observation statistics the last generation acted with
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn
from torch.func import functional_call, vmap

from agents import distributed
from agents.arguments import run_command
from agents.train import ENV_ID, build_model, load_hyperparams, normalise_observations
from agents.vec_env import LossTuningSB3VecEnv, unbatch_infos
from lossgym import _checks as checks
from lossgym.envs.config import LossTuningConfig
from lossgym.envs.core import TaskSource, as_task
from lossgym.envs.loss_tuning import LossTuningVectorEnv
from lossgym.io import atomic_write, atomic_write_text
from lossgym.tasks import DISTRIBUTIONS, TaskDistribution, TaskSpec

__all__ = ["ESArgs", "centered_ranks", "es_gradient", "main", "pair_means", "train_es"]


@dataclass
class ESArgs:
    """Arguments of an evolution-strategies run."""

    run_dir: str = "runs/es-default"
    """the run folder; everything is written there."""
    generations: int = 24
    """generations; each is one population of 2 × pairs episodes (24 × 32 = 768 episodes, the
    default PPO run's budget)."""
    pairs: int = 16
    """antithetic pairs P per generation (2P members, plus their twins in the population)."""
    populations: int = 1
    """populations a generation is split into (whole tasks each): each is one unit of
    :mod:`agents.distributed`, so with ``ray`` they train side by side (one per CPU)."""
    ray: str | None = None
    """run the populations on Ray: "local" (a Ray on this machine's CPUs), "auto" or an
    address; None: one after the other in this process."""
    distribution: str = "default"
    """the task distribution whose train split the pairs' tasks come from (one of
    :data:`lossgym.tasks.DISTRIBUTIONS`); the evaluation uses its held-out splits."""
    pairs_per_task: int = 1
    """pairs k that share one task and seed (and one twin): fewer twins to train, fewer tasks
    per generation."""
    tasks_per_pair: int = 1
    """tasks m that each pair plays (each its own draw and seed; m × 2P members): a pair's two
    returns are means over its m tasks before the ranks, which quiets the chaos of single runs
    (``results/noise_floor/``) at m times the episodes per generation."""
    sigma: float = 0.05
    """standard deviation of the perturbations of the actor's parameters."""
    learning_rate: float = 0.02
    """Adam's step size on θ."""
    weight_decay: float = 0.005
    """L2 coefficient added to Adam's gradient (OpenAI-ES's l2coeff); 0 switches it off."""
    normalize: bool | None = None
    """normalise observations with running statistics; None: the YAML's ``normalize``."""
    clip_obs: float = 10.0
    """normalised observations are clipped to [−clip_obs, clip_obs] (VecNormalize's default)."""
    seed: int = 0
    """seed of the initial policy, the perturbations and the task draws."""
    device: str = "auto"
    """where the inner classifiers train (the policy stays on the CPU)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """:class:`LossTuningVectorEnv` arguments over the YAML's ``env_kwargs`` (e.g.
    ``{"reward_baseline": "base", "action_mode": "residual"}``); passed through unchanged."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """PPO hyperparameters over the YAML's (e.g. ``{"policy_kwargs": {"net_arch": [16]}}``);
    they shape the network, which is all ES takes from them."""
    progress: bool = True
    """print one line per generation."""


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` scaled to [−0.5, 0.5] (ties broken by position); mean 0."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2:
        return np.zeros(values.size)
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks / (values.size - 1) - 0.5


def pair_means(returns: np.ndarray, pairs: int, tasks_per_pair: int) -> np.ndarray:
    """``[2P]`` returns, member 2k (θ + σ ε_k) and 2k + 1 (θ − σ ε_k) each the mean over pair
    k's tasks, from the ``[2Pm]`` returns of members laid out task round by task round, then
    pair, then sign (round j holds every pair once, so ``pairs_per_task`` groups different
    pairs, never one pair's own tasks)."""
    return np.asarray(returns, dtype=np.float64).reshape(tasks_per_pair, pairs, 2).mean(
        axis=0).reshape(-1)


def es_gradient(returns: np.ndarray, eps: torch.Tensor) -> torch.Tensor:
    """The ascent direction g = Σ_k (F_2k − F_2k+1) ε_k / (2P) from the returns ``[2P]`` of
    members θ + σ ε_k (even) and θ − σ ε_k (odd), F their centred ranks; ``eps`` is ``[P, n]``."""
    fitness = centered_ranks(returns)
    gap = torch.as_tensor(fitness[0::2] - fitness[1::2], dtype=eps.dtype)
    return gap @ eps / len(fitness)


# --------------------------------------------------------------------------- the policy
def _actor(policy: nn.Module) -> nn.Sequential:
    """The actor of an SB3 ``ActorCriticPolicy`` as one module (sharing its parameters):
    observation → mean action."""
    return nn.Sequential(*policy.mlp_extractor.policy_net, policy.action_net)


class PopulationActor:
    """The actor's parameters as a flat vector θ, and one batched forward of many θs."""

    def __init__(self, actor: nn.Sequential):
        self.actor = actor
        self.names = [name for name, _ in actor.named_parameters()]
        self.shapes = [p.shape for p in actor.parameters()]
        self.sizes = [p.numel() for p in actor.parameters()]

    @property
    def theta(self) -> torch.Tensor:
        """A copy of the actor's current parameters, flat."""
        return nn.utils.parameters_to_vector(self.actor.parameters()).detach().clone()

    def load(self, theta: torch.Tensor) -> None:
        """Set the actor's parameters to ``theta``."""
        with torch.no_grad():
            nn.utils.vector_to_parameters(theta, self.actor.parameters())

    @torch.no_grad()
    def act(self, thetas: torch.Tensor, obs: np.ndarray) -> np.ndarray:
        """Member i's deterministic action (its mean, clipped to [−1, 1]) for ``obs[i]``."""
        parts = thetas.split(self.sizes, dim=1)
        params = {name: part.reshape(len(thetas), *shape)
                  for name, part, shape in zip(self.names, parts, self.shapes)}
        x = torch.as_tensor(obs, dtype=torch.float32)
        out = vmap(lambda p, row: functional_call(self.actor, p, (row,)))(params, x)
        return out.clamp(-1.0, 1.0).numpy()


# --------------------------------------------------------------------------- normalisation
class FrozenNormalizer:
    """VecNormalize's observation normalisation with statistics frozen for a generation.

    It also keeps each feature's range over every observation seen: a feature that took one
    value in all of them (e.g. the architecture, or the learning rate, on a train split with one
    of each) is *held*, fed to the policy as 0 at any value. The policy never saw it vary, so it
    learned no response to it, while VecNormalize's rule would turn an unseen value into
    ±``clip_obs`` (its variance is near 0)."""

    epsilon = 1e-8

    def __init__(self, dim: int, clip_obs: float, enabled: bool):
        self.rms = RunningMeanStd(shape=(dim,))
        self.low, self.high = np.full(dim, np.inf), np.full(dim, -np.inf)
        self.clip_obs = clip_obs
        self.enabled = enabled
        self.freeze()

    def update(self, obs: np.ndarray) -> None:
        """Add observations ``[K, D]`` to the running statistics (used from the next freeze)."""
        self.rms.update(obs)
        self.low = np.minimum(self.low, obs.min(axis=0))
        self.high = np.maximum(self.high, obs.max(axis=0))

    def freeze(self) -> None:
        """Use the running statistics as they are now until the next call."""
        self.mean, self.var = self.rms.mean.copy(), self.rms.var.copy()
        self.count = float(self.rms.count)
        self.held = self.high == self.low

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        return normalise_observations(obs, self.mean, self.var, self.epsilon, self.clip_obs,
                                      self.held)

    def state(self) -> dict[str, Any]:
        """The frozen statistics in :func:`agents.train.save_checkpoint`'s JSON form, with the
        held features."""
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count,
                "clip_obs": self.clip_obs, "epsilon": self.epsilon,
                "held": [bool(h) for h in self.held]}


# --------------------------------------------------------------------------- a generation
@dataclass
class Generation:
    """What one population of antithetic pairs did."""

    returns: np.ndarray
    """whole-episode return of each member against its twin, ``[2P]``."""
    lengths: np.ndarray
    """episode length of each member, ``[2P]``."""
    diverged: np.ndarray
    """whether each member's inner training diverged, ``[2P]``."""
    tasks: list[TaskSpec]
    """each member's task (members 2k and 2k + 1 share one)."""
    observations: np.ndarray
    """every raw observation a member acted on, ``[K, D]``."""
    env_seconds: float
    """seconds spent in the env (the batched inner training)."""
    policy_seconds: float
    """seconds spent computing actions."""
    twins: int = 0
    """twin runs the population trained beside the members."""


def pair_tasks(source: TaskSource, rng: np.random.Generator, pairs: int, per_task: int = 1
               ) -> list[TaskSpec]:
    """Members' tasks: one task for every ``per_task`` pairs, each given to both members of its
    pairs, all able to share one population and all with the first draw's minibatches per
    step: a population trains every member for its largest count (those with fewer sit out,
    computed all the same), so one budget per population wastes nothing."""
    count = -(-pairs // per_task)
    first = source.draw(rng)
    tasks, draws = [first], 0
    while len(tasks) < count:
        draws += 1
        if draws > 1000 * count:
            raise ValueError(f"no {count} tasks in split {source.split!r} share {first}'s "
                             "minibatches per step")
        task = source.draw(rng, like=first)
        if task.minibatches_per_step == first.minibatches_per_step:
            tasks.append(task)
    return [tasks[k // per_task] for k in range(pairs) for _ in range(2)]


def shares_twins(env_kwargs: dict[str, Any]) -> bool:
    """Whether a generation trains one base twin per task instead of one per member: with
    residual actions against the base twin, the zero action is the twin."""
    return (env_kwargs.get("reward_baseline") == "base"
            and env_kwargs.get("action_mode") == "residual")


def run_generation(actor: PopulationActor, thetas: torch.Tensor, tasks: list[TaskSpec],
                   normalise: FrozenNormalizer, env_kwargs: dict[str, Any], device: str,
                   seed: int, share_twins: bool | None = None) -> Generation:
    """One episode of every member: member i acts with ``thetas[i]`` on ``tasks[i]``.

    With ``share_twins`` (default :func:`shares_twins`), the env runs without twins and the
    population holds one more member per distinct task that plays the zero action (the base
    rule); each member's return is its own minus its task's twin's, which is what the env's
    twin would have given it. A twin that diverged leaves its members their own returns."""
    n = len(tasks)
    share = shares_twins(env_kwargs) if share_twins is None else share_twins
    twins = list(dict.fromkeys(tasks)) if share else []
    twin_of = np.array([twins.index(t) for t in tasks]) if share else None
    if share:
        env_kwargs = {**env_kwargs, "reward_baseline": "none"}
    everyone = list(tasks) + twins
    total = len(everyone)
    start = time.perf_counter()
    # Episodes end together (one horizon) unless a member diverges; members that are done sit
    # out on their autoreset episode (a draw of the first task with a new seed: same shapes).
    venv = LossTuningVectorEnv(num_envs=total, tasks=tasks[0], split="train", device=device,
                               **env_kwargs)
    obs, _ = venv.reset(seed=seed, options={"task": everyone})
    env_seconds = time.perf_counter() - start
    policy_seconds = 0.0
    returns, lengths = np.zeros(total), np.zeros(total, dtype=np.int64)
    diverged, done = np.zeros(total, dtype=bool), np.zeros(total, dtype=bool)
    actions = np.zeros((total, *venv.single_action_space.shape), dtype=np.float32)
    seen = []
    try:
        while not done.all():
            seen.append(obs[:n][~done[:n]].copy())
            tick = time.perf_counter()
            actions[:n] = actor.act(thetas, normalise(obs[:n]))
            tock = time.perf_counter()
            obs, rewards, terminated, truncated, infos = venv.step(actions)
            env_seconds += time.perf_counter() - tock
            policy_seconds += tock - tick
            live = ~done
            returns[live] += rewards[live]
            lengths[live] += 1
            ended = live & (terminated | truncated)
            if ended.any():
                per_member = unbatch_infos(infos, total)
                for i in np.flatnonzero(ended):
                    diverged[i] = bool(per_member[i].get("final_info", {}).get("diverged"))
            done |= ended
    finally:
        venv.close()
    own = returns[:n]
    if share:
        twin_returns = np.where(diverged[n:], 0.0, returns[n:])
        own = own - twin_returns[twin_of]
    return Generation(own, lengths[:n], diverged[:n], list(tasks), np.concatenate(seen),
                      env_seconds, policy_seconds, len(twins) if share else
                      n * (env_kwargs.get("reward_baseline") in ("paired", "base")))


def split_members(tasks: Sequence[TaskSpec], parts: int) -> list[slice]:
    """Contiguous runs of members, as equal as whole tasks allow, at most ``parts`` of them:
    the members of one task (its pairs, and so its twin) stay together."""
    starts = [i for i in range(len(tasks)) if i == 0 or tasks[i] != tasks[i - 1]]
    parts = min(parts, len(starts))
    cuts, last = [0], 0  # last: the index in starts of the latest cut
    for j in range(1, parts):  # the task start nearest to an equal share, leaving enough
        target = j * len(tasks) / parts  # starts after it for the cuts still to come
        last = min(range(last + 1, len(starts) - parts + j + 1),
                   key=lambda k: abs(starts[k] - target))
        cuts.append(starts[last])
    cuts.append(len(tasks))
    return [slice(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def run_populations(actor: PopulationActor, thetas: torch.Tensor, tasks: list[TaskSpec],
                    normalise: FrozenNormalizer, env_kwargs: dict[str, Any], device: str,
                    seed: int, populations: int = 1, share_twins: bool | None = None
                    ) -> Generation:
    """:func:`run_generation` split into ``populations`` populations of whole tasks, run as
    units of the current :mod:`agents.distributed` executor (population j's env seed is
    ``seed + j``: one population is exactly :func:`run_generation`)."""
    parts = split_members(tasks, populations)
    units = [(actor, thetas[part], tasks[part], normalise, env_kwargs, device, seed + j,
              share_twins) for j, part in enumerate(parts)]
    gens = distributed.current().map(run_generation, units)
    return Generation(np.concatenate([g.returns for g in gens]),
                      np.concatenate([g.lengths for g in gens]),
                      np.concatenate([g.diverged for g in gens]),
                      [t for g in gens for t in g.tasks],
                      np.concatenate([g.observations for g in gens]),
                      sum(g.env_seconds for g in gens), sum(g.policy_seconds for g in gens),
                      sum(g.twins for g in gens))


# --------------------------------------------------------------------------- saving
def _save_policy(model: Any, normalise: FrozenNormalizer, run_dir: Path, timesteps: int
                 ) -> None:
    """``policy.pt`` (and ``policy.norm.json``) as :func:`agents.train.save_checkpoint`
    writes them."""
    state = {"parameters": model.get_parameters(), "num_timesteps": torch.tensor(timesteps)}
    atomic_write(run_dir / "policy.pt", lambda tmp: torch.save(state, tmp))
    if normalise.enabled:
        atomic_write_text(run_dir / "policy.norm.json", json.dumps(normalise.state()))


GENERATION_FIELDS = ("generation", "episodes", "twins", "population", "max_minibatches",
                     "mean_return", "best_return", "worst_return", "mean_pair_gap", "diverged",
                     "theta_norm", "env_seconds", "policy_seconds", "update_seconds", "seconds")


# --------------------------------------------------------------------------------- train
def train_es(args: ESArgs, tasks: TaskSpec | TaskDistribution | None = None) -> Path:
    """Train the policy with ES; returns the run folder.

    Args:
        args: the run's arguments.
        tasks: where the pairs' tasks come from: a :class:`TaskDistribution` (its train split;
            default ``TaskDistribution.default()``) or one :class:`TaskSpec` (a fresh seed per
            pair).
    """
    for name in ("generations", "pairs", "pairs_per_task", "tasks_per_pair", "populations"):
        checks.integer(name, getattr(args, name), 1)
    for name, low, open_low in (("sigma", 0.0, True), ("learning_rate", 0.0, True),
                                ("weight_decay", 0.0, False), ("clip_obs", 0.0, True)):
        checks.real(name, getattr(args, name), low, open_low=open_low)
    checks.integer("seed", args.seed, 0, 2**32 - 1)  # numpy's and SB3's seeds
    for name in ("env_kwargs", "overrides"):
        if not isinstance(getattr(args, name), dict):
            raise ValueError(f"{name}={getattr(args, name)!r:.80} must be a dict (a JSON object)")
    TaskDistribution.named(args.distribution)  # a known name
    try:  # the env's arguments, before anything is written
        LossTuningConfig.build(**{**{k: v for k, v in args.env_kwargs.items() if k != "tasks"},
                                  "device": args.device})
    except TypeError as err:
        raise ValueError(f"env_kwargs: {err}") from None
    executor = distributed.executor_from(args.ray)
    try:
        with distributed.using(executor):
            return _train_es(args, tasks)
    finally:
        executor.close()


def _train_es(args: ESArgs, tasks: TaskSpec | TaskDistribution | None) -> Path:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hp = load_hyperparams("ppo", overrides=args.overrides)
    env_kwargs = {**dict(hp.get("env_kwargs") or {}), **args.env_kwargs}
    hp["env_kwargs"] = env_kwargs
    normalize = bool(hp.get("normalize")) if args.normalize is None else args.normalize
    hp["normalize"] = normalize
    members = 2 * args.pairs * args.tasks_per_pair
    config: dict[str, Any] = {"args": {"algo": "es", **asdict(args)}, "hyperparams": hp,
                              "env_id": ENV_ID, "num_envs": members,
                              "episodes": args.generations * members}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))

    # The network, built exactly as agents.train builds PPO's (so AgentPolicy reloads it).
    spaces_env = LossTuningSB3VecEnv(num_envs=1, **{k: v for k, v in env_kwargs.items()
                                                    if k != "reward_baseline"})
    with warnings.catch_warnings():
        # PPO warns that its rollout buffer does not fit one env; nothing is collected here.
        warnings.simplefilter("ignore", UserWarning)
        try:
            model = build_model("ppo", spaces_env, hp, args.seed, None)
        except TypeError as err:  # a key of overrides that PPO does not take
            raise ValueError(f"overrides={args.overrides!r:.80}: {err}") from None
    obs_dim = int(np.prod(spaces_env.observation_space.shape))
    spaces_env.close()
    actor = PopulationActor(_actor(model.policy))
    theta = nn.Parameter(actor.theta)
    optimizer = torch.optim.Adam([theta], lr=args.learning_rate, weight_decay=args.weight_decay)
    normalise = FrozenNormalizer(obs_dim, args.clip_obs, normalize)

    rng = np.random.default_rng(args.seed)
    if tasks is None and "tasks" in env_kwargs:  # e.g. a TaskSpec's dict from the command line
        tasks = as_task(env_kwargs["tasks"])
    env_kwargs = {k: v for k, v in env_kwargs.items() if k != "tasks"}
    source = TaskSource(tasks or TaskDistribution.named(args.distribution), "train")
    monitor = ResultsWriter(str(run_dir / "monitor.csv"),
                            header={"t_start": time.time(), "env_id": ENV_ID})
    start = time.time()
    timesteps = 0
    with open(run_dir / "generations.csv", "w", newline="", encoding="utf-8") as log_file:
        log = csv.DictWriter(log_file, fieldnames=GENERATION_FIELDS)
        log.writeheader()
        for generation in range(args.generations):
            tick = time.perf_counter()
            eps = torch.as_tensor(rng.standard_normal((args.pairs, theta.numel())),
                                  dtype=torch.float32)
            # Members 2k and 2k + 1: θ + σ ε_k and θ − σ ε_k, once in each round of tasks.
            signed = torch.stack([eps, -eps], dim=1).repeat(args.tasks_per_pair, 1, 1).reshape(
                members, -1)
            thetas = theta.detach() + args.sigma * signed
            members_tasks = pair_tasks(source, rng, args.pairs * args.tasks_per_pair,
                                       args.pairs_per_task)
            gen = run_populations(actor, thetas, members_tasks, normalise, env_kwargs,
                                  args.device, int(rng.integers(0, 2**31 - 1)),
                                  args.populations)
            update_tick = time.perf_counter()
            optimizer.zero_grad()
            theta.grad = -es_gradient(  # Adam minimises: ascend g
                pair_means(gen.returns, args.pairs, args.tasks_per_pair), eps)
            optimizer.step()
            actor.load(theta.detach())
            _save_policy(model, normalise, run_dir, timesteps + int(gen.lengths.sum()))
            normalise.update(gen.observations)
            normalise.freeze()
            update_seconds = time.perf_counter() - update_tick
            timesteps += int(gen.lengths.sum())
            elapsed = time.time() - start
            for r, length in zip(gen.returns, gen.lengths):
                monitor.write_row({"r": round(float(r), 6), "l": int(length),
                                   "t": round(elapsed, 6)})
            task = gen.tasks[0]
            row = {"generation": generation, "episodes": (generation + 1) * members,
                   "twins": gen.twins,
                   "population": f"{task.dataset} {task.arch}{task.width}",
                   "max_minibatches": max(t.minibatches_per_step for t in gen.tasks),
                   "mean_return": float(gen.returns.mean()),
                   "best_return": float(gen.returns.max()),
                   "worst_return": float(gen.returns.min()),
                   "mean_pair_gap": float(np.abs(gen.returns[0::2] - gen.returns[1::2]).mean()),
                   "diverged": int(gen.diverged.sum()),
                   "theta_norm": float(theta.detach().norm()),
                   "env_seconds": gen.env_seconds, "policy_seconds": gen.policy_seconds,
                   "update_seconds": update_seconds,
                   "seconds": time.perf_counter() - tick}
            log.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            log_file.flush()
            if args.progress:
                print(f"gen {generation:3d} | {row['population']} | return "
                      f"mean {row['mean_return']:+.4f} best {row['best_return']:+.4f} | "
                      f"{row['seconds']:.1f} s (env {gen.env_seconds:.1f}, policy "
                      f"{gen.policy_seconds:.2f}, update {update_seconds:.2f})", flush=True)
    monitor.close()
    config["num_timesteps"] = timesteps
    config["wall_seconds"] = time.time() - start
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    return run_dir


def parse_args(argv: Sequence[str] | None = None) -> ESArgs:
    """Command-line arguments as :class:`ESArgs`."""
    defaults = ESArgs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=defaults.run_dir)
    parser.add_argument("--generations", type=int, default=defaults.generations)
    parser.add_argument("--pairs", type=int, default=defaults.pairs)
    parser.add_argument("--pairs-per-task", type=int, default=defaults.pairs_per_task)
    parser.add_argument("--tasks-per-pair", type=int, default=defaults.tasks_per_pair)
    parser.add_argument("--populations", type=int, default=defaults.populations)
    parser.add_argument("--distribution", default=defaults.distribution,
                        choices=DISTRIBUTIONS)
    parser.add_argument("--ray", default=None, metavar="local|auto|ADDRESS")
    parser.add_argument("--sigma", type=float, default=defaults.sigma)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--env-kwargs", type=json.loads, default={},
                        help='JSON object of env arguments, e.g. \'{"reward_baseline": "base"}\'')
    parser.add_argument("--overrides", type=json.loads, default={},
                        help="JSON object of PPO hyperparameters that shape the network, e.g. "
                             "'{\"policy_kwargs\": {\"net_arch\": []}}' (a linear policy)")
    parser.add_argument("--quiet", action="store_true", help="no line per generation")
    ns = parser.parse_args(argv)
    for name in ("env_kwargs", "overrides"):
        if not isinstance(getattr(ns, name), dict):
            parser.error(f"--{name.replace('_', '-')} must be a JSON object, got "
                         f"{getattr(ns, name)!r}")
    return ESArgs(run_dir=ns.run_dir, generations=ns.generations, pairs=ns.pairs,
                  pairs_per_task=ns.pairs_per_task, tasks_per_pair=ns.tasks_per_pair,
                  populations=ns.populations, ray=ns.ray,
                  distribution=ns.distribution,
                  sigma=ns.sigma,
                  learning_rate=ns.learning_rate, weight_decay=ns.weight_decay,
                  normalize=ns.normalize, seed=ns.seed, device=ns.device,
                  env_kwargs=ns.env_kwargs, overrides=ns.overrides, progress=not ns.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.es``: train, print the run folder. Errors in the user's input
    (options, the run folder) exit with status 2 and a message."""
    args = parse_args(argv)
    return run_command(lambda: train_es(args))


if __name__ == "__main__":
    sys.exit(main())
