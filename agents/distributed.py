"""Where the independent units of an evaluation run: in this process, or as Ray tasks.

A *unit* is one batched population: a policy or loss method on a group of tasks that share a
dataset and architecture (:func:`agents.rollout.group_tasks`). Batching inside a population is
where the speed comes from, so a population never spans workers; different populations (of
one method, of different methods, of a search's candidates) are independent and can run
anywhere.

* :class:`LocalExecutor` runs units one after the other in this process (the default).
* :class:`RayExecutor` submits each unit as a Ray task (``pip install 'lossgym[ray]'``). A unit
  whose worker dies or raises is retried (``max_retries``); results are gathered with
  ``ray.wait`` as they arrive, so a finished result is never recomputed or lost when another
  unit fails.

A remote unit works on its own copy of its inputs (what the worker unpickled), a local one on
the caller's objects. A unit is a function of its inputs as long as its policy carries no state
from one population to the next, which :func:`agents.rollout.rollout_policy` ensures by running
the populations of such a policy (``carries_state = True``, e.g. a random policy's generator)
as one unit, in order. A worker trains on one intra-op thread; so a run gives identical records
wherever its units run, given the same seeds and one thread in a local run.

:func:`executor_from` turns ``--ray auto|local|ADDRESS`` into an executor; :func:`using` makes
one current for the rollouts of :mod:`agents.rollout`, which every baseline, tuning and search
of :mod:`agents.baselines` goes through; :meth:`Executor.gather` runs independent calls side
by side so that their units share the workers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

#: What ``--ray`` without Ray installed says.
MISSING_RAY = "--ray needs Ray: pip install 'lossgym[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or ``ImportError`` with :data:`MISSING_RAY`."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(MISSING_RAY) from error
    return ray


def run_unit(fn: Callable[..., Any], args: tuple, threads: int | None = None) -> Any:
    """``fn(*args)`` on ``threads`` intra-op threads (unchanged when None)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return fn(*args)


class Executor:
    """Runs units ``fn(*args)``; the base class runs them here, in order."""

    def map(self, fn: Callable[..., Any], units: Sequence[tuple],
            on_result: Callable[[Any], None] | None = None) -> list[Any]:
        """``[fn(*args) for args in units]``, in order; ``on_result(result)`` as each unit
        finishes (to count finished units)."""
        results = []
        for args in units:
            results.append(fn(*args))
            if on_result is not None:
                on_result(results[-1])
        return results

    def gather(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """The results of independent zero-argument ``calls``, in order."""
        return [call() for call in calls]

    def close(self) -> None:
        """Release what the executor holds."""


class LocalExecutor(Executor):
    """Units run one after the other in this process."""


class UnitsFailed(RuntimeError):
    """Some units failed after all their retries.

    Attributes:
        results: every unit's result, None for the failed ones.
        errors: unit index → its final error.
    """

    def __init__(self, results: list[Any], errors: dict[int, BaseException]) -> None:
        first = next(iter(errors.items()))
        super().__init__(f"{len(errors)} of {len(results)} units failed after their retries "
                         f"(unit {first[0]}: {first[1]!r}); the others finished")
        self.results = results
        self.errors = errors


class RayExecutor(Executor):
    """Units run as Ray tasks on a local Ray or a cluster.

    Args:
        address: ``"local"`` starts a Ray for this process (``num_cpus`` workers); ``"auto"``
            joins the cluster that ``ray start`` runs on this machine (or ``RAY_ADDRESS``);
            anything else is a cluster address (``HOST:6379`` or ``ray://HOST:10001``).
            Ignored when Ray is already initialised in this process.
        num_cpus: CPUs of a local Ray (default: all of this machine's).
        max_retries: attempts after the first for a unit whose worker dies or that raises.
        threads: intra-op threads of each unit (one unit per CPU).
    """

    def __init__(self, address: str = "local", num_cpus: int | None = None,
                 max_retries: int = 3, threads: int = 1) -> None:
        ray = require_ray()
        self.started = False
        if not ray.is_initialized():
            env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env,
                         log_to_driver=False)
            else:
                if address != "auto":
                    check_reachable(address)
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            self.started = True
        self.max_retries = max_retries
        self.threads = threads
        self._remote = ray.remote(num_cpus=1, max_retries=max_retries,
                                  retry_exceptions=True)(run_unit)

    def map(self, fn: Callable[..., Any], units: Sequence[tuple],
            on_result: Callable[[Any], None] | None = None) -> list[Any]:
        """Submit every unit, then collect results as they finish (``on_result(result)`` on
        each, in this process); in order.

        Raises:
            UnitsFailed: when a unit still fails after ``max_retries`` retries; it carries
                every finished result.
        """
        ray = require_ray()
        refs = [self._remote.remote(fn, tuple(args), self.threads) for args in units]
        pending = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        errors: dict[int, BaseException] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as error:  # a Ray error wrapping the unit's last failure
                    errors[i] = error
                    continue
                if on_result is not None:
                    on_result(results[i])
        if errors:
            raise UnitsFailed(results, errors)
        return results

    def gather(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run the calls in threads, so that all their units are in flight together."""
        if len(calls) <= 1:
            return [call() for call in calls]
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            return list(pool.map(lambda call: call(), calls))

    def close(self) -> None:
        """Shut down the Ray this executor started (not one it joined)."""
        if self.started:
            require_ray().shutdown()
            self.started = False


#: How long :func:`check_reachable` waits for a cluster to answer.
CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A ``ValueError`` naming ``address`` unless it is ``HOST:PORT`` or ``ray://HOST:PORT``
    and something accepts a TCP connection there within ``timeout`` seconds. Ray itself
    retries an address that does not answer for minutes before it fails."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    allowed = "auto, local, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {address!r} is invalid: must be {allowed}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"--ray {address!r}: nothing answers at {hostport} ({err}); start "
                         f"the cluster there with `ray start --head`, or use --ray local"
                         ) from None


def executor_from(ray_address: str | None, num_cpus: int | None = None) -> Executor:
    """The executor for ``--ray``: None → :class:`LocalExecutor`, else a :class:`RayExecutor`
    at ``auto``, ``local`` or an address; ``ImportError`` (:data:`MISSING_RAY`) without Ray."""
    if ray_address is None:
        return LocalExecutor()
    if not ray_address:
        raise ValueError("--ray needs auto, local or a cluster ADDRESS")
    return RayExecutor(ray_address, num_cpus=num_cpus)


_current: Executor = LocalExecutor()


def current() -> Executor:
    """The executor the rollouts use now."""
    return _current


@contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """Make ``executor`` current inside the block (for every thread of this process)."""
    global _current
    before, _current = _current, executor
    try:
        yield executor
    finally:
        _current = before

