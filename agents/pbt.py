"""Population Based Training of the loss parameters: a Ray Tune baseline at the agent's budget.

PBT (Jaderberg et al., 2017) tunes the loss parameters (γ, α, or an agent's whole action set)
*during* training: every trial trains one inner
classifier per train task with the loss parameters of its config; every
``perturbation_interval`` steps the bottom quarter of the trials (by mean validation metric)
copy the state of a top-quarter trial and perturb its parameters (Ray Tune's
:class:`~ray.tune.schedulers.PopulationBasedTraining`, synchronous). The parameters the best
trial used at each step, inherited prefix included, form the discovered schedule: a step
schedule over training progress (:class:`lossgym.schedules.LossSchedule`, written as JSON),
which :class:`agents.rollout.ScheduleRule` replays on held-out tasks like every other baseline.

**Budget.** A trial is one inner training run per task, so ``trials × len(tasks)`` inner runs,
the same count as the searches of :mod:`agents.baselines` (``budget`` must be a multiple of
``len(tasks)``). A checkpoint holds the task list and the parameters applied so far (JSON, no
pickle); restoring it retrains that prefix from the task seeds, which the deterministic engine
reproduces exactly. Those replayed steps cost compute but add no information;
:class:`PBTResult` counts them.

Needs Ray (``pip install 'lossgym[ray]'``); everything is imported lazily so that this module
imports without it.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.distributed import require_ray
from agents.rollout import group_tasks
from lossgym import params as loss_params
from lossgym.actions import DEFAULT_PARAMETERS, ActionMapping
from lossgym.envs.core import EpisodeBatch
from lossgym.population import resolve_device
from lossgym.schedules import LossSchedule, constant, step
from lossgym.tasks import TaskSpec

CHECKPOINT = "pbt_state.json"


class _Run:
    """One trial's inner training: a population per group of compatible tasks, stepped with
    one set of loss parameters for every member; ``trajectory`` holds the parameters applied
    so far, in the order of ``parameters``."""

    def __init__(self, tasks: Sequence[dict], metric: str, device: str,
                 parameters: Sequence[str] = DEFAULT_PARAMETERS) -> None:
        self.tasks = [TaskSpec.from_dict(t) for t in tasks]
        self.parameters = tuple(parameters)
        mapping = ActionMapping(self.parameters, "absolute")
        dev = resolve_device(device)
        self.groups = group_tasks(self.tasks)
        self.batches = []
        for ids in self.groups:
            batch = EpisodeBatch(len(ids), mapping, metric, "none", 1.0, dev, 1024)
            batch.reset(range(len(ids)), [self.tasks[i] for i in ids])
            self.batches.append(batch)
        self.trajectory: list[list[float]] = []

    @property
    def horizon(self) -> int:
        return max(t.horizon for t in self.tasks)

    def step(self, values: Sequence[float]) -> None:
        """One env step of every unfinished member with the loss parameters ``values``, each
        clipped into its range (PBT's perturbations multiply by 0.8 or 1.2, which can leave
        it)."""
        config = {p: min(max(float(v), loss_params.ranges()[p][0]), loss_params.ranges()[p][1])
                  for p, v in zip(self.parameters, values)}
        row = torch.tensor([[config[p] for p in self.parameters]])
        for batch in self.batches:
            if not all(batch.done):
                batch.step(params=row.expand(len(batch.done), -1))
        self.trajectory.append([config[p] for p in self.parameters])

    def score(self) -> float:
        """Mean current validation metric over tasks (0 for a diverged member)."""
        values = []
        for batch in self.batches:
            diverged = batch.population.diverged.cpu().numpy()[: len(batch.done)]
            values += [0.0 if d or not np.isfinite(v) else float(v)
                       for v, d in zip(batch.value, diverged)]
        return float(np.mean(values))


def _trainable() -> type:
    """The Tune trainable class (defined here so that Ray is imported lazily)."""
    from ray import tune

    class LossPBTTrainable(tune.Trainable):
        """A PBT trial: config holds one value per name of ``parameters`` (perturbed), and
        ``parameters``, ``tasks``, ``metric``, ``device`` and ``threads`` (fixed)."""

        def setup(self, config: dict[str, Any]) -> None:
            torch.set_num_threads(int(config["threads"]))
            self.run = self._new_run(config)
            self.replayed = 0

        @staticmethod
        def _new_run(config: dict[str, Any]) -> _Run:
            return _Run(config["tasks"], config["metric"], config["device"],
                        config["parameters"])

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            # Tune reuses this actor for another trial (then restores its checkpoint, if any):
            # starting a process per trial would cost more than the inner training.
            self.setup(new_config)
            return True

        def step(self) -> dict[str, Any]:
            self.run.step([self.config[p] for p in self.config["parameters"]])
            values = dict(zip(self.run.parameters, self.run.trajectory[-1]))  # as applied
            replayed, self.replayed = self.replayed, 0
            return {"score": self.run.score(), **values, "replayed_steps": replayed,
                    "done": len(self.run.trajectory) >= self.run.horizon}

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            (Path(checkpoint_dir) / CHECKPOINT).write_text(
                json.dumps({"trajectory": self.run.trajectory}))

        def load_checkpoint(self, checkpoint_dir: str) -> None:
            state = json.loads((Path(checkpoint_dir) / CHECKPOINT).read_text())
            self.run = self._new_run(self.config)
            for values in state["trajectory"]:
                self.run.step(values)
            self.replayed += len(state["trajectory"])

    return LossPBTTrainable


@dataclass
class PBTResult:
    """What a PBT run found and what it cost.

    Attributes:
        trajectory: ``[K, d]``: the parameters the best trial used at each of its K steps.
        score: the best trial's final mean validation metric.
        trials: trials (population size).
        inner_runs: ``trials × len(tasks)``, the budget in inner training runs.
        steps: env steps of new training, ``inner_runs × horizon``.
        replayed_steps: trial steps retrained to restore checkpoints (exploits, resumes).
        perturbation_interval: steps between PBT's exploit/explore decisions.
    """

    trajectory: list[list[float]]
    score: float
    trials: int
    inner_runs: int
    steps: int
    replayed_steps: int
    perturbation_interval: int
    parameters: tuple[str, ...] = DEFAULT_PARAMETERS

    def schedule(self) -> LossSchedule:
        """The trajectory as a step schedule over progress: step k of K governs [k/K, (k+1)/K)."""
        k = len(self.trajectory)
        bounds = [j / k for j in range(1, k)]
        columns = np.asarray(self.trajectory, dtype=np.float64).T
        return LossSchedule({
            name: step(bounds, list(map(float, column))) if k > 1 else constant(float(column[0]))
            for name, column in zip(self.parameters, columns)
        })

    def budget_note(self) -> str:
        """One sentence on the budget, for the report."""
        return (f"PBT (Ray Tune, synchronous): {self.trials} trials × "
                f"{self.inner_runs // self.trials} train tasks = {self.inner_runs} inner runs, "
                f"exploit/explore every {self.perturbation_interval} steps; restoring "
                f"checkpoints retrained {self.replayed_steps} trial-steps on top of the "
                f"{self.steps} new ones.")


def pbt_search(
    tasks: Sequence[TaskSpec],
    budget: int,
    seed: int = 0,
    perturbation_interval: int | None = None,
    *,
    parameters: Sequence[str] = DEFAULT_PARAMETERS,
    metric: str = "balanced_accuracy",
    device: str = "cpu",
    storage: str | Path | None = None,
    threads: int = 1,
) -> PBTResult:
    """Population Based Training of the loss parameters (γ and α by default; an agent's whole
    action set with ``parameters``) on ``tasks`` with ``budget`` inner training runs.

    Uses the Ray this process is connected to, or starts a local one for the call.

    Args:
        tasks: the train tasks every trial trains on.
        budget: inner training runs, a positive multiple of ``len(tasks)`` buying >= 2 trials.
        seed: seeds the initial draws and PBT's perturbations (python ``random``, restored
            afterwards).
        perturbation_interval: steps between exploit/explore; default a quarter of the
            horizon (at least 1).
        parameters: the searched parameters, each perturbed over its whole range.
        metric: the validation metric PBT maximises.
        device: where inner classifiers train.
        storage: Tune's results folder (default: a temporary one, deleted afterwards).
        threads: intra-op threads per trial.
    """
    ray = require_ray()
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    tasks = list(tasks)
    if not tasks or budget < 2 * len(tasks) or budget % len(tasks):
        raise ValueError(f"budget={budget} must be a multiple of len(tasks)={len(tasks)} that "
                         "buys at least 2 trials")
    trials = budget // len(tasks)
    parameters = ActionMapping(tuple(parameters)).parameters  # checked names
    ranges = {p: tune.uniform(*loss_params.ranges()[p][:2]) for p in parameters}
    horizon = max(t.horizon for t in tasks)
    interval = perturbation_interval or max(horizon // 4, 1)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    state = random.getstate()
    random.seed(seed)
    # PBT logs every exploit and explore at INFO; the result holds what matters.
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.WARNING)
    tmp = tempfile.TemporaryDirectory(prefix="lossgym-pbt-") if storage is None else None
    try:
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=interval,
            hyperparam_mutations=dict(ranges), synch=True)
        param_space = {**ranges, "parameters": list(parameters),
                       "tasks": [t.to_dict() for t in tasks], "metric": metric,
                       "device": device, "threads": threads}
        tuner = tune.Tuner(
            tune.with_resources(_trainable(), {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="score", mode="max", scheduler=scheduler, num_samples=trials,
                search_alg=BasicVariantGenerator(random_state=seed), reuse_actors=True),
            run_config=tune.RunConfig(
                name="pbt", storage_path=str(Path(storage or tmp.name).resolve()),
                stop={"training_iteration": horizon}, verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} PBT trials failed: {errors[0]!r}")
        best = grid.get_best_result(metric="score", mode="max", scope="last")
        with best.checkpoint.as_directory() as path:
            trajectory = json.loads((Path(path) / CHECKPOINT).read_text())["trajectory"]
        replayed = int(sum(r.metrics_dataframe["replayed_steps"].sum() for r in grid))
        return PBTResult(trajectory=trajectory, score=float(best.metrics["score"]),
                         trials=trials, inner_runs=budget, steps=budget * horizon,
                         replayed_steps=replayed, perturbation_interval=interval,
                         parameters=parameters)
    finally:
        random.setstate(state)
        tune_logger.setLevel(level)
        if tmp is not None:
            tmp.cleanup()
        if started:
            ray.shutdown()
