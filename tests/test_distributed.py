"""The executor abstraction without Ray: local units, and a clear error when Ray is missing."""

import sys

import pytest

from agents import distributed
from agents.baselines import RandomPolicy
from agents.baselines import constant_rule as ConstantPolicy
from agents.evaluate import EvalArgs, _pbt, parse_args
from agents.rollout import rollout_policy
from lossgym.tasks import TaskSpec

TINY = TaskSpec(imbalance_ratio=20.0, n_max=300, width=16, batch_size=32,
                minibatches_per_step=1, horizon=3)


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


def test_ray_flag_without_ray_says_what_to_install(no_ray, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--ray", "local"])
    assert "pip install 'lossgym[ray]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"lossgym\[ray\]"):
        distributed.executor_from("local")
    assert isinstance(distributed.executor_from(None), distributed.LocalExecutor)


def test_pbt_is_skipped_with_the_reason_without_ray(no_ray, tmp_path):
    policy, note = _pbt(EvalArgs(), [TINY], 2, tmp_path, ("gamma", "alpha"))
    assert policy is None and "Ray is not installed" in note
    with pytest.raises(ImportError):
        _pbt(EvalArgs(pbt=True), [TINY], 2, tmp_path, ("gamma", "alpha"))


@pytest.mark.parametrize("address, needle", [
    ("127.0.0.1:1", r"--ray '127.0.0.1:1': nothing answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", r"--ray 'ray://127.0.0.1:1': nothing answers at 127.0.0.1:1"),
    ("cluster", r"--ray 'cluster' is invalid: must be auto, local, HOST:PORT"),
    ("host:port", r"--ray 'host:port' is invalid"),
    ("host:70000", r"--ray 'host:70000' is invalid"),
])
def test_a_cluster_address_that_does_not_answer_is_refused_before_ray_connects(
        monkeypatch, address, needle):
    """Before: ray.init retried an address where nothing listens for minutes (the CLI hung)."""
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    with pytest.raises(ValueError, match=needle):
        distributed.executor_from(address)
    assert calls == []


def test_a_cluster_address_that_answers_is_passed_to_ray(monkeypatch):
    import socket
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "remote", lambda **kw: (lambda fn: fn))
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        distributed.executor_from(address)
    assert [c["address"] for c in calls] == [address]


class Recording(distributed.LocalExecutor):
    def __init__(self):
        self.units = 0

    def map(self, fn, units):
        self.units += len(units)
        return super().map(fn, units)


def test_each_population_is_one_unit_unless_the_policy_carries_state(one_thread):
    # Two architectures: two populations.
    tasks = [TINY.replace(seed=1), TINY.replace(width=24, seed=1), TINY.replace(seed=2)]
    with distributed.using(Recording()) as ex:
        records = rollout_policy(ConstantPolicy(1.0, 0.5), tasks, "c", device="cpu")
        assert ex.units == 2
        assert [r.task for r in records] == tasks
        alone = rollout_policy(ConstantPolicy(1.0, 0.5), tasks[1:2], "c", device="cpu")[0]
        assert alone.test == records[1].test
        ex.units = 0
        # A random policy's generator runs on from one population to the next: one unit.
        rollout_policy(RandomPolicy(3), tasks, "random", device="cpu")
        assert ex.units == 1
