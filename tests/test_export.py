"""Exported losses: same decisions as SB3, the env's episode from a plain loop, no training stack
at run time, safe loading, checkpoints, schedules from agents and baselines, the CLI."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agents.train as train_mod
from agents.baselines import drw_rule as DRWPolicy
from agents.baselines import schedule_rule as SchedulePolicy
from agents.export import average_schedule, export_baseline, export_run
from agents.rollout import EpisodeRecord, rollout_policy
from agents.train import AgentPolicy, TrainArgs, train
from lossgym import AdaptiveLoss, Population, TaskSpec, load_dataset
from lossgym.cli import main as cli_main
from lossgym.export import _digest, read_export, write_export
from lossgym.features import FeatureSpec
from lossgym.losses import parametric_loss
from lossgym.methods import make_method
from lossgym.metrics import classification_metrics
from lossgym.models import StackedNet
from lossgym.schedules import LossSchedule, constant, cosine, step

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32, minibatches_per_step=2,
                 horizon=4)
TINY = {
    "ppo": {"n_steps": 8, "batch_size": 32},
    "recurrentppo": {"n_steps": 8, "batch_size": 32},
    "sac": {"learning_starts": 16, "batch_size": 32},
}
COUNTS = torch.tensor([50.0, 20.0, 5.0])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs of every algorithm (as tests/test_train.py makes them)."""
    original = train_mod.make_env
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "make_env",
                   lambda n, seed, run_dir, kw, tasks=None: original(n, seed, run_dir, kw,
                                                                     tasks=SMALL))
        return {algo: train(TrainArgs(algo=algo, run_dir=str(root / algo), timesteps=32,
                                      num_envs=4, checkpoint_every=10**6, progress=False,
                                      overrides=overrides))
                for algo, overrides in TINY.items()}


@pytest.fixture(scope="module")
def controller_export(runs, tmp_path_factory):
    return export_run(runs["ppo"], "controller", tmp_path_factory.mktemp("exp") / "ppo",
                      tasks=[SMALL])


def copy_export(src, tmp_path):
    return shutil.copytree(src, tmp_path / "copy")


def resign(folder, edit):
    """Rewrite an export's manifest through ``edit`` with a valid checksum, as a forger or a
    future version of lossgym would."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("sha256")
    edit(manifest)
    manifest["sha256"] = _digest(manifest)
    path.write_text(json.dumps(manifest))


def train_briefly(criterion, periods, seed=0, minibatches=3, model=None):
    """A tiny plain loop on random 3-class data; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    if model is None:
        model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(periods):
        for _ in range(minibatches):
            x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            opt.zero_grad()
            criterion(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            criterion.step(model(torch.randn(30, 4, generator=gen)), torch.arange(30) % 3)
    return model


# -------------------------------------------------------------------------- same decisions
@pytest.mark.parametrize("algo", ["ppo", "sac", "recurrentppo"])
def test_controller_acts_like_sb3_predict(runs, tmp_path, algo):
    out = export_run(runs[algo], "controller", tmp_path / algo, tasks=[SMALL])
    controller, manifest = read_export(out)
    assert sorted(p.name for p in out.iterdir()) == ["actor.safetensors", "manifest.json"]
    parameters = AgentPolicy(runs[algo]).parameters  # the action set of the trained run
    assert manifest["features"]["names"] == list(FeatureSpec(parameters).names)
    assert manifest["controller"]["recurrent_state_size"] == (64 if algo == "recurrentppo"
                                                              else 0)
    assert manifest["controller"]["obs_normalization"] is not None
    agent = AgentPolicy(runs[algo])  # SB3's deterministic predict with VecNormalize's stats
    low, high = FeatureSpec(parameters).bounds()
    rng = np.random.default_rng(0)
    agent.reset(8)
    state = None
    for _ in range(4):  # a sequence, so the recurrent state is compared too
        obs = rng.uniform(low, high, size=(8, len(low))).astype(np.float32)
        expected = agent.act(obs)
        actions, state = controller(torch.from_numpy(obs), state)
        np.testing.assert_allclose(actions.numpy(), expected, atol=1e-5, rtol=0)
    assert np.any(np.abs(expected) < 0.999)  # not every action is at the clip


# -------------------------------------------------------------------------------- same run
class Recorder:
    """A policy wrapper that keeps the observations the env showed."""

    def __init__(self, policy):
        self.policy, self.parameters, self.mode = policy, policy.parameters, policy.mode
        self.obs = []

    def __getattr__(self, name):
        # What the rollout reads off an agent (its base rule, features, step) is the agent's.
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def reset(self, num_envs):
        self.policy.reset(num_envs)

    def act(self, obs):
        self.obs.append(np.array(obs))
        return self.policy.act(obs)


def plain_model(task, num_features, num_classes):
    """An nn.Sequential MLP with the engine's initialisation of ``task``."""
    net = StackedNet(task.arch, num_features, num_classes, task.width, task.depth)
    p = net.views(net.init_member(torch.Generator().manual_seed(task.derive_seed("init")))[None])
    model = nn.Sequential(nn.Linear(num_features, task.width), nn.ReLU(),
                          nn.Linear(task.width, task.width), nn.ReLU(),
                          nn.Linear(task.width, num_classes))
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2], model[4]),
                                 [("w0", "b0"), ("w1", "b1"), ("w_out", "b_out")]):
            # The engine stores weights [in, out], with the head padded to 16 columns.
            layer.weight.copy_(p[w][0][:, :layer.out_features].T)
            layer.bias.copy_(p[b][0][:layer.out_features])
    return model


class PlainLoop:
    """A plain PyTorch loop on ``task``'s data: nn.Sequential with the engine's initialisation,
    torch.optim.AdamW and the engine's data order."""

    def __init__(self, task):
        self.ds = ds = load_dataset(task.dataset)
        self.pool = task.train_pool(ds)
        self.x_train = torch.tensor(ds.x_train)[torch.as_tensor(self.pool.indices)]
        self.y_train = torch.as_tensor(self.pool.labels)
        self.x_val, self.y_val = torch.tensor(ds.x_val), torch.tensor(ds.y_val)
        self.model = plain_model(task, ds.num_features, ds.num_classes)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=task.lr,
                                           weight_decay=task.weight_decay)
        self.batches = minibatches(len(self.y_train), task.batch_size,
                                   task.derive_seed("order"))

    def train(self, criterion, count):
        for _ in range(count):
            idx = next(self.batches)
            self.optimizer.zero_grad()
            criterion(self.model(self.x_train[idx]), self.y_train[idx]).backward()
            self.optimizer.step()

    @torch.no_grad()
    def val_logits(self):
        return self.model(self.x_val)

    @torch.no_grad()
    def test_metrics(self):
        return classification_metrics(self.model(torch.tensor(self.ds.x_test)),
                                      torch.tensor(self.ds.y_test))


def minibatches(num_samples, batch_size, seed):
    """Indices of consecutive minibatches over epochs of random permutations, continued
    across epochs: the engine's data order."""
    gen = torch.Generator().manual_seed(seed)
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(num_samples, generator=gen)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


@pytest.mark.parametrize("algo", ["ppo", "sac", "recurrentppo"])
def test_plain_loop_with_the_exported_controller_reproduces_the_env_episode(runs, tmp_path,
                                                                             algo):
    task = SMALL.replace(seed=3, horizon=5, minibatches_per_step=3)
    recorder = Recorder(AgentPolicy(runs[algo]))
    [record] = rollout_policy(recorder, [task], device="cpu")
    export = export_run(runs[algo], "controller", tmp_path / "loss", tasks=[task])

    # A plain PyTorch loop: nn.Sequential, torch.optim.AdamW, a sampler, the exported loss.
    loop = PlainLoop(task)
    # The context features' set-up as a user knows it before training (features version 2).
    criterion = AdaptiveLoss.load(export, class_counts=torch.as_tensor(loop.pool.class_counts),
                                  total_steps=task.horizon,
                                  minibatches_per_step=task.minibatches_per_step,
                                  setup={"batch_size": task.batch_size})
    criterion.watch(loop.model)
    logits = loop.val_logits()
    criterion.begin(logits, loop.y_val)
    observations = [criterion.observation]
    val = [classification_metrics(logits, loop.y_val)["balanced_accuracy"]]
    for _ in range(task.horizon):
        loop.train(criterion, task.minibatches_per_step)
        logits = loop.val_logits()
        criterion.step(val_logits=logits, val_targets=loop.y_val)
        observations.append(criterion.observation)
        val.append(classification_metrics(logits, loop.y_val)["balanced_accuracy"])

    params = np.array([[h[p] for p in record.parameters]
                       for h in criterion.history[:task.horizon]])
    np.testing.assert_allclose(params, record.params, atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.stack(observations[:task.horizon]).numpy(),
                               np.concatenate(recorder.obs), atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.stack(val).numpy(), record.val_curve, atol=1e-5, rtol=0)
    test = loop.test_metrics()
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll"):
        assert float(test[name]) == pytest.approx(record.test[name], abs=1e-5)


# ---------------------------------------------------------------- no training stack needed
def test_exports_load_and_train_without_the_training_stack(controller_export, tmp_path):
    schedule = export_baseline("schedule", tmp_path / "schedule")
    script = textwrap.dedent("""
        import pickle, sys
        for name in ("gymnasium", "stable_baselines3", "sb3_contrib", "agents"):
            sys.modules[name] = None  # import raises ImportError
        import torch

        def refuse(*args, **kwargs):
            raise AssertionError("something was unpickled")
        pickle.load = pickle.loads = torch.load = refuse
        from lossgym import AdaptiveLoss
        import lossgym.cli
        for path in sys.argv[1:]:
            criterion = AdaptiveLoss.load(path, class_counts=torch.tensor([50., 20., 5.]),
                                          total_steps=3)
            model = torch.nn.Linear(4, 3)
            criterion.watch(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                for _ in range(2):
                    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
                    opt.zero_grad()
                    criterion(model(x), y).backward()
                    opt.step()
                with torch.no_grad():
                    criterion.step(model(torch.randn(30, 4)), torch.arange(30) % 3)
            print(criterion.kind, len(criterion.history))
        print("cli", lossgym.cli.main(["export", "some_run"]))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(controller_export), str(schedule)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["controller 4", "schedule 4", "cli 2"]
    assert "needs the agents package" in result.stderr


# ---------------------------------------------------------------------------------- safety
def test_loading_never_unpickles(controller_export, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    criterion = AdaptiveLoss.load(controller_export)
    assert criterion.kind == "controller"


def test_truncated_tampered_and_wrong_version_files_raise(controller_export, tmp_path):
    folder = copy_export(controller_export, tmp_path)
    manifest, weights = folder / "manifest.json", folder / "actor.safetensors"
    good_manifest, good_weights = manifest.read_bytes(), weights.read_bytes()

    def check(match, path=manifest):
        with pytest.raises(ValueError, match=match) as info:
            AdaptiveLoss.load(folder)
        assert str(path) in str(info.value)  # the message names the file
        manifest.write_bytes(good_manifest)
        weights.write_bytes(good_weights)

    manifest.write_bytes(good_manifest[: len(good_manifest) // 2])
    check("truncated")
    manifest.write_text(good_manifest.decode().replace('"total_steps": 4', '"total_steps": 5'))
    check("checksum mismatch")
    manifest.write_text(good_manifest.decode().replace('"format_version": 2',
                                                       '"format_version": 3'))
    check("format_version 3 is not supported")
    weights.write_bytes(good_weights[:-100])
    check("truncated, modified", weights)
    flipped = bytearray(good_weights)
    flipped[len(flipped) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    check("truncated, modified", weights)
    # Garbage behind a valid checksum still fails cleanly.
    weights.write_bytes(b"\x00" * 64)
    resign(folder, lambda m: m["controller"]["weights"].update(
        sha256=__import__("hashlib").sha256(b"\x00" * 64).hexdigest()))
    with pytest.raises(ValueError, match="cannot be read"):
        AdaptiveLoss.load(folder)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["features"]["names"].__setitem__(3, "gpu_temperature"),
     r"unknown features \['gpu_temperature'\]"),
    (lambda m: m["features"].update(version=4), "features version 4"),
    (lambda m: m["mapping"].update(parameters=["gamma", "alpha", "tau"]), "unknown features"),
    (lambda m: m["controller"]["layers"][0].update(in_features=16), "takes 16 inputs"),
    (lambda m: m["controller"]["layers"].insert(1, {"kind": "softmax"}), "kind 'softmax'"),
    (lambda m: m["controller"].update(recurrent_state_size=64), "recurrent_state_size"),
    (lambda m: m["controller"]["weights"].update(file="../manifest.json"), "file name"),
    (lambda m: m.update(kind="pickle"), "kind 'pickle'"),
    (lambda m: m.update(class_counts=[3, -1]), "counts"),
])
def test_manifests_asking_for_what_lossgym_cannot_do_are_refused(controller_export, tmp_path,
                                                                  edit, match):
    folder = copy_export(controller_export, tmp_path)
    resign(folder, edit)
    with pytest.raises(ValueError, match=match):
        AdaptiveLoss.load(folder)


def test_mismatched_class_counts_are_refused(tmp_path):
    out = write_export(LossSchedule({"alpha": constant(1.0)}), tmp_path / "bound",
                       total_steps=4, class_counts=[10, 5, 1])
    with pytest.raises(ValueError, match="bound to 3 classes but class_counts has 4"):
        AdaptiveLoss.load(out, class_counts=[4, 3, 2, 1])
    criterion = AdaptiveLoss.load(out)
    assert criterion.class_counts.tolist() == [10, 5, 1]
    with pytest.raises(ValueError, match="logits have 4 classes but this loss has 3"):
        criterion(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FileNotFoundError):
        AdaptiveLoss.load(tmp_path / "missing")


# --------------------------------------------------------------------------- the module
@pytest.mark.parametrize("ldam", [{}, {"margin": 0.5, "scale": 10.0}, {"scale": 3.0},
                                  {"margin": 0.3}])
@pytest.mark.parametrize("terms", [
    {"gamma": 1.5, "alpha": 0.7, "tau": 0.5, "label_smoothing": 0.1, "poly_epsilon": 0.5,
     "gate": 2.0},
    {"gamma": 1.5, "alpha": 0.7, "tau": 0.5, "poly_epsilon": 0.5},  # the CPU closed form
])
def test_forward_is_the_parametric_loss(ldam, terms):
    params = {**terms, **ldam}
    counts = torch.tensor([40.0, 9.0, 3.0, 0.0])
    logits = torch.randn(32, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 4, (32,))
    for reduction in ("mean", "sum", "none"):
        criterion = AdaptiveLoss(LossSchedule(params), class_counts=counts, total_steps=4,
                                 reduction=reduction)
        ours = criterion(logits, targets)
        theirs = parametric_loss(logits, targets, counts, reduction=reduction, **params)
        torch.testing.assert_close(ours, theirs)
        g_ours, = torch.autograd.grad(ours.sum(), logits)
        g_theirs, = torch.autograd.grad(theirs.sum(), logits)
        torch.testing.assert_close(g_ours, g_theirs)
    neutral = AdaptiveLoss(LossSchedule({"gamma": 0.0, "alpha": 0.0}), class_counts=counts,
                           total_steps=4)
    assert torch.equal(neutral(logits, targets), F.cross_entropy(logits, targets))


def test_schedule_steps_history_and_repr():
    schedule = LossSchedule({"gamma": cosine(2.0, 0.0), "alpha": step([0.5], [0.0, 1.0])})
    criterion = AdaptiveLoss(schedule, class_counts=COUNTS, total_steps=4)
    assert criterion.params == {} and "not started" in repr(criterion)
    train_briefly(criterion, periods=5)  # one step past the end: progress stays at 1
    expected = [schedule(min(t / 4, 1.0)) for t in range(6)]
    assert [h.keys() for h in criterion.history] == [e.keys() for e in expected]
    for h, e in zip(criterion.history, expected):
        assert h == pytest.approx(e, abs=1e-6)
    assert "step=5/4" in repr(criterion) and "gamma=0, alpha=1" in repr(criterion)


@pytest.mark.parametrize("kind", ["schedule", "controller"])
def test_state_dict_round_trips_mid_period(controller_export, tmp_path, kind):
    export = controller_export if kind == "controller" else write_export(
        LossSchedule({"gamma": cosine(3.0, 0.0)}), tmp_path / "s", total_steps=6)
    criterion = AdaptiveLoss.load(export, class_counts=COUNTS, total_steps=6)
    model = nn.Linear(4, 3)
    criterion.watch(model)
    train_briefly(criterion, periods=2, model=model)
    # Half a period more, then checkpoint: the period's statistics travel with the state.
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    criterion(model(x), y).backward()
    torch.save(criterion.state_dict(), tmp_path / "ckpt.pt")
    twin = AdaptiveLoss.load(export, class_counts=COUNTS, total_steps=6)
    twin.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert repr(twin) == repr(criterion) and twin.history == criterion.history
    twin_model = nn.Linear(4, 3)
    twin_model.load_state_dict(model.state_dict())
    twin.watch(twin_model)
    val = torch.randn(30, 4)
    for c, m in ((criterion, model), (twin, twin_model)):
        with torch.no_grad():
            c.step(m(val), torch.arange(30) % 3)
        train_briefly(c, periods=2, seed=1, model=m)
    assert twin.history == criterion.history
    other = AdaptiveLoss(LossSchedule({"gamma": constant(1.0)}), total_steps=6)
    with pytest.raises(ValueError, match="saved by the adaptive loss of export"):
        other.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))


def test_defaults_for_what_the_user_does_not_supply(controller_export):
    criterion = AdaptiveLoss.load(controller_export)  # the README's call, as written
    assert criterion.total_steps == SMALL.horizon  # the reference task's
    model = nn.Linear(4, 3)
    x = torch.randn(60, 4)
    y = torch.tensor([0] * 40 + [1] * 15 + [2] * 5)
    with pytest.warns(UserWarning, match="class_counts"):
        criterion(model(x[:30]), y[:30]).backward()
    criterion(model(x[30:]), y[30:]).backward()
    with pytest.warns(UserWarning, match="watch"):
        criterion.step()  # no metrics: the documented defaults
    assert criterion.class_counts.tolist() == [40, 15, 5]
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(model(x[:30]), y[:30]),
                          F.cross_entropy(model(x[30:]), y[30:])]).mean()
    assert criterion.observation[1] == pytest.approx(float(torch.log(ce + 1e-6)), abs=1e-5)
    assert criterion.observation[8] == pytest.approx(np.log(1e-6))  # zero gradient
    assert len(criterion.history) == 2


def test_the_readme_snippet_works_as_written(controller_export):
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    x_val, y_val = torch.randn(30, 4), torch.arange(30) % 3
    epochs = 3
    with pytest.warns(UserWarning):  # class counts counted, no gradient norms: said so
        criterion = AdaptiveLoss.load(controller_export)
        for epoch in range(epochs):  # noqa: B007 (the snippet, as written)
            for x, y in loader:
                loss = criterion(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            criterion.step(val_logits=model(x_val), val_targets=y_val, train_loss=loss)
    assert len(criterion.history) == epochs + 1 and criterion.steps_done == epochs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_the_cpu(controller_export):
    histories = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        criterion = AdaptiveLoss.load(controller_export, class_counts=COUNTS,
                                      total_steps=4).to(device)
        model = nn.Linear(4, 3).to(device)
        criterion.watch(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            for _ in range(2):
                x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
                opt.zero_grad()
                criterion(model(x.to(device)), y.to(device)).backward()
                opt.step()
            with torch.no_grad():
                criterion.step(model(torch.randn(30, 4, generator=gen).to(device)),
                               (torch.arange(30) % 3).to(device))
        histories.append(criterion.history)
    for cpu, cuda in zip(*histories):
        assert cpu == pytest.approx(cuda, abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adafocal", "adaloss", "ldam_drw"])
def test_methods_run_on_cuda_like_on_the_cpu(tmp_path, name):
    export = export_baseline(name, tmp_path / name, tasks=[SMALL.replace(horizon=3)])
    runs = []
    for device in ("cpu", "cuda"):
        criterion = AdaptiveLoss.load(export, class_counts=COUNTS).to(device)
        model = nn.Linear(4, 3).to(device)
        torch.manual_seed(0)
        model.reset_parameters()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(3):
            for _ in range(2):
                x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
                opt.zero_grad()
                loss = criterion(model(x.to(device)), y.to(device))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            with torch.no_grad():
                criterion.step(model(torch.randn(30, 4, generator=gen).to(device)),
                               (torch.arange(30) % 3).to(device))
        runs.append((losses, criterion.history))
    np.testing.assert_allclose(runs[0][0], runs[1][0], atol=1e-4)
    for cpu, cuda in zip(runs[0][1], runs[1][1]):
        assert cpu == pytest.approx(cuda, abs=1e-4)


# ------------------------------------------------------------- schedules from policies
def test_average_schedule_is_exact_over_mixed_horizons():
    def record(params):
        params = np.array(params, dtype=np.float32)
        return EpisodeRecord(task=SMALL, method="x", params=params, actions=params,
                             val_curve=np.zeros(len(params) + 1), test={},
                             parameters=("gamma", "alpha"))

    schedule = average_schedule([record([[1.0, 0.0], [3.0, 0.0]]),
                                 record([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])])
    assert schedule.to_dict() == {
        "gamma": {"kind": "step", "boundaries": [0.5], "values": [1.0, 2.0]},
        "alpha": {"kind": "step", "boundaries": [0.5], "values": [0.0, 0.5]},
    }


def test_run_exports_its_averaged_trajectory_as_a_schedule(runs, tmp_path):
    tasks = [SMALL.replace(seed=s) for s in range(2)]
    out = export_run(runs["ppo"], "schedule", tmp_path / "schedule", tasks=tasks)
    records = rollout_policy(AgentPolicy(runs["ppo"]), tasks, device="cpu")
    criterion = AdaptiveLoss.load(out, class_counts=COUNTS)
    for _ in range(SMALL.horizon - 1):
        criterion.step()
    got = np.array([[h[p] for p in records[0].parameters] for h in criterion.history])
    np.testing.assert_allclose(got, np.mean([r.params for r in records], axis=0), atol=1e-5)


def test_baselines_export_as_their_exact_schedules(tmp_path):
    task = SMALL.replace(horizon=5)
    [record] = rollout_policy(DRWPolicy(switch=0.6, alpha=0.8), [task], device="cpu")
    out = tmp_path / "drw"
    from agents.export import export_policy

    export_policy(DRWPolicy(switch=0.6, alpha=0.8), out, tasks=[task], name="drw")
    criterion = AdaptiveLoss.load(out, class_counts=COUNTS)
    for _ in range(task.horizon - 1):
        criterion.step()
    got = np.array([[h["gamma"], h["alpha"]] for h in criterion.history])
    np.testing.assert_allclose(got, record.params, atol=1e-6)
    # The constants a policy holds besides γ and α (here τ and the logit scale) export too.
    policy = SchedulePolicy(gamma_start=2.0, gamma_end=0.5, drw_switch=0.6, drw_alpha=0.9,
                            alpha_start=0.2, tau=1.0, scale=10.0)
    [record] = rollout_policy(policy, [task], device="cpu")
    export_policy(policy, tmp_path / "schedule", tasks=[task], name="schedule")
    criterion = AdaptiveLoss.load(tmp_path / "schedule", class_counts=COUNTS)
    for _ in range(task.horizon - 1):
        criterion.step()
    got = np.array([[h[p] for p in record.parameters] for h in criterion.history])
    assert record.parameters == ("gamma", "alpha", "tau", "scale")
    np.testing.assert_allclose(got, record.params, atol=1e-5)
    la, _ = read_export(export_baseline("logit_adjusted", tmp_path / "la"))
    assert la.to_dict() == {"tau": {"kind": "constant", "value": 1.0}}
    flsd, manifest = read_export(export_baseline("flsd53", tmp_path / "flsd"))
    assert manifest["kind"] == "method" and flsd.to_dict() == {"name": "flsd53", "params": {}}
    assert manifest["method"]["minibatches_per_step"] == TaskSpec().minibatches_per_step
    cb, _ = read_export(export_baseline("cb_effective", tmp_path / "cb"))
    assert cb.to_dict()["params"] == {"gamma": 0.0, "beta": 0.9999, "switch": 0.0}
    # The evaluation's class-balanced β grid exports by its report names.
    grid, manifest = read_export(export_baseline("cb_beta0.99", tmp_path / "cb99"))
    assert grid.to_dict()["name"] == "cb_beta0.99" and grid.to_dict()["params"]["beta"] == 0.99
    assert manifest["source"] == {"method": "cb_beta0.99"}
    with pytest.raises(ValueError, match="not known"):
        export_baseline("nope", tmp_path / "nope")
    with pytest.raises(ValueError, match="not known"):
        export_baseline("method:drw", tmp_path / "nope")
    with pytest.raises(ValueError, match="now cb_power .* or cb_effective"):
        export_baseline("class_balanced", tmp_path / "nope")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["method"].update(name="focal_pickle"),
     r"method 'focal_pickle' is not known; choose from \['adafocal'"),
    (lambda m: m["method"]["params"].update(margin=0.5),
     r"method 'ldam_drw' has no hyperparameters \['margin'\]; it takes \['scale', 'switch'\]"),
    (lambda m: m["method"]["params"].update(switch=1.5),
     r"method 'ldam_drw': switch=1\.5 is out of range: must be a finite number in \[0, 1\]"),
    (lambda m: m["method"]["params"].update(scale="30"), r"scale='30' is invalid"),
    (lambda m: m["method"].update(minibatches_per_step=0), "minibatches_per_step=0"),
    (lambda m: m["method"].pop("params"), "method lacks"),
    (lambda m: m.update(schedule={}), "unknown keys"),
])
def test_method_manifests_with_unknown_or_bad_values_are_refused(tmp_path, edit, match):
    folder = export_baseline("ldam_drw", tmp_path / "ldam")
    resign(folder, edit)
    with pytest.raises(ValueError, match=match) as info:
        AdaptiveLoss.load(folder)
    assert str(folder / "manifest.json") in str(info.value)


@pytest.mark.parametrize("name", ["adafocal", "adaloss", "ce_drw"])
def test_method_state_round_trips_mid_period(tmp_path, name):
    export = export_baseline(name, tmp_path / name, tasks=[SMALL.replace(horizon=3,
                                                                         minibatches_per_step=3)])
    criterion = AdaptiveLoss.load(export, class_counts=COUNTS)
    model = nn.Linear(4, 3)
    train_briefly(criterion, periods=2, model=model)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    criterion(model(x), y).backward()  # a minibatch into the period
    torch.save(criterion.state_dict(), tmp_path / "ckpt.pt")
    twin = AdaptiveLoss.load(export, class_counts=COUNTS)
    twin.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert repr(twin) == repr(criterion) and twin.history == criterion.history
    twin_model = nn.Linear(4, 3)
    twin_model.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for c, m in ((criterion, model), (twin, twin_model)):
        losses = [c(m(x), y) for _ in range(2)]  # AdaLoss's running means move in between
        with torch.no_grad():
            c.step(m(x), y)
        train_briefly(c, periods=2, seed=1, model=m)
        c.losses = losses
    torch.testing.assert_close(twin.losses, criterion.losses)
    assert twin.history == criterion.history
    if name == "adafocal":
        with pytest.raises(ValueError, match="pass val_logits and val_targets"):
            criterion.step()


def test_cli_export(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["export", str(runs["sac"]), "--kind", "controller", "--out", str(out)]) == 0
    assert AdaptiveLoss.load(out).controller.algorithm == "sac"
    assert cli_main(["export", "--baseline", "drw", "--out", str(tmp_path / "drw")]) == 0
    schedule, _ = read_export(tmp_path / "drw")
    assert schedule.to_dict()["alpha"] == step([0.8], [0.0, 1.0]).to_dict()
    assert cli_main(["export", "--baseline", "ldam_drw", "--out", str(tmp_path / "ldam")]) == 0
    method, _ = read_export(tmp_path / "ldam")
    assert method.to_dict()["name"] == "ldam_drw"
    assert cli_main(["export", "--baseline", "drw", "--kind", "controller",
                     "--out", str(tmp_path / "x")]) == 2
    assert cli_main(["export", str(tmp_path / "not_a_run")]) == 2
    assert "no config.json" in capsys.readouterr().err


# ------------------------------------------------------------------ built-in methods
OUTSIDE_PARAMETRIC = ["cb_effective", "cb_focal", "ce_drw", "ldam_drw", "flsd53",
                      "adafocal", "adaloss", "gradient_gate"]


@pytest.mark.parametrize("name", OUTSIDE_PARAMETRIC)
def test_plain_loop_with_an_exported_method_reproduces_the_engine_run(tmp_path, name):
    # 4 periods of 3 minibatches: DRW's switch at 80 % falls inside period 3 (minibatch 10).
    task = SMALL.replace(seed=3, horizon=4, minibatches_per_step=3)
    population = Population([task], device="cpu")
    method = make_method(name, 1, population.num_classes,
                         torch.device("cpu"))
    engine_val = [float(population.evaluate("val")["balanced_accuracy"][0])]
    for _ in range(task.horizon):
        population.train(method)
        method.observe_validation(population.logits("val"), population.targets("val"))
        engine_val.append(float(population.evaluate("val")["balanced_accuracy"][0]))
    engine_test = population.evaluate("test")

    export = export_baseline(name, tmp_path / "export", tasks=[task])
    assert read_export(export)[1]["kind"] == "method"
    loop = PlainLoop(task)
    criterion = AdaptiveLoss.load(export, class_counts=torch.as_tensor(loop.pool.class_counts))
    assert criterion.kind == "method" and criterion.total_steps == task.horizon
    val = [float(classification_metrics(loop.val_logits(), loop.y_val)["balanced_accuracy"])]
    for _ in range(task.horizon):
        loop.train(criterion, task.minibatches_per_step)
        logits = loop.val_logits()
        criterion.step(logits, loop.y_val)
        val.append(float(classification_metrics(logits, loop.y_val)["balanced_accuracy"]))
    test = loop.test_metrics()
    np.testing.assert_allclose(val, engine_val, atol=1e-5, rtol=0)
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll"):
        assert float(test[metric]) == pytest.approx(float(engine_test[metric][0]), abs=1e-5)
    if name in ("ce_drw", "ldam_drw"):  # the history holds each period's start
        assert [h["reweighted"] for h in criterion.history] == [0.0, 0.0, 0.0, 0.0, 1.0]
    if name == "adafocal":
        assert criterion.history[0]["gamma_bin0"] == 1.0
        assert criterion.history[-1] != criterion.history[0]  # γ learned from validation


def test_watching_the_optimizer_or_the_model_records_the_same_norms():
    norms = []
    for target in ("model", "optimizer"):
        torch.manual_seed(0)
        criterion = AdaptiveLoss(LossSchedule({"gamma": constant(1.0)}), class_counts=COUNTS,
                                 total_steps=4)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        handle = criterion.watch(model if target == "model" else opt)
        expected = []
        for _ in range(3):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            opt.zero_grad()
            criterion(model(x), y).backward()
            expected.append(torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()])))
            opt.step()
        torch.testing.assert_close(criterion._total_grad_norms(), torch.stack(expected))
        norms.append(criterion._total_grad_norms())
        handle.remove()
        criterion(model(x), y).backward()
        opt.step()
        assert len(criterion._grad_norms) == 3  # removed: nothing more recorded
    torch.testing.assert_close(norms[0], norms[1])


def test_watch_warns_about_parameters_without_gradient():
    criterion = AdaptiveLoss(LossSchedule({"gamma": constant(1.0)}), class_counts=COUNTS,
                             total_steps=4)
    used, unused = nn.Linear(4, 3), nn.Linear(4, 3)
    criterion.watch(list(used.parameters()) + list(unused.parameters()))
    with pytest.warns(UserWarning, match="got no gradient"):
        for _ in range(2):
            criterion(used(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
    assert criterion._grad_norms == []  # incomplete passes are not recorded


# ---------------------------------------------------------------------------- calibration
def test_fit_temperature_lowers_the_validation_ece_of_over_confident_logits(tmp_path):
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 3, generator=gen) * 1.5
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=gen).squeeze(-1)
    logits = 4.0 * true_logits  # over-confident by a temperature of 4
    val, test = slice(0, 2000), slice(2000, None)
    export = write_export(LossSchedule({"alpha": constant(0.5)}), tmp_path / "a", total_steps=4)
    criterion = AdaptiveLoss.load(export, class_counts=COUNTS)
    with pytest.raises(RuntimeError, match="call fit_temperature"):
        criterion.calibrate(logits)
    temperature = criterion.fit_temperature(logits[val], labels[val])
    assert isinstance(temperature, float) and temperature == criterion.temperature
    assert 3.0 < temperature < 5.0

    def ece(z, y):
        return float(classification_metrics(z.unsqueeze(0), y, 3)["ece"])

    for part in (val, test):
        calibrated = criterion.calibrate(logits[part])
        assert ece(calibrated, labels[part]) < 0.5 * ece(logits[part], labels[part])
        assert torch.equal(calibrated.argmax(-1), logits[part].argmax(-1))
    # The temperature is part of the checkpoint.
    twin = AdaptiveLoss.load(export, class_counts=COUNTS)
    twin.load_state_dict(criterion.state_dict())
    assert twin.temperature == temperature
    with pytest.raises(IndexError, match=r"val_targets: Target 3 is out of bounds \[0, 3\)"):
        criterion.fit_temperature(logits[:4], torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs validation samples"):
        criterion.fit_temperature(logits[:0], labels[:0])


@pytest.mark.parametrize("held", [[True], "yes", None])
def test_held_features_of_the_wrong_kind_are_refused(controller_export, tmp_path, held):
    folder = copy_export(controller_export, tmp_path)
    resign(folder, lambda m: m["controller"]["obs_normalization"].update(held=held))
    with pytest.raises(ValueError, match=r"obs_normalization\.held must list \d+ booleans"):
        read_export(folder)


def test_held_features_are_fed_as_zero(controller_export, tmp_path):
    folder = copy_export(controller_export, tmp_path)
    dim = len(json.loads((folder / "manifest.json").read_text())["features"]["names"])
    held = [i % 2 == 0 for i in range(dim)]
    resign(folder, lambda m: m["controller"]["obs_normalization"].update(held=held))
    controller, _ = read_export(folder)
    out = controller.normalise(torch.full((2, dim), 7.0))
    assert torch.all(out[:, torch.tensor(held)] == 0)
    assert torch.all(out[:, ~torch.tensor(held)] != 0)


@pytest.mark.parametrize("name", ["ldam_drw", "ce_drw", "cb_effective"])
def test_a_method_keeps_one_plan_up_to_its_switch_and_matches_the_method(name):
    from lossgym.methods import make_method
    from lossgym.population import MinibatchContext

    counts = torch.tensor([50.0, 20.0, 5.0])
    steps, per_step = 4, 5
    loss = AdaptiveLoss(make_method(name), class_counts=counts, total_steps=steps,
                        minibatches_per_step=per_step)
    reference = make_method(name, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    values, fast = [], []
    for k in range(steps * per_step):
        logits = torch.randn(8, 3, generator=gen, requires_grad=True)
        targets = torch.randint(0, 3, (8,), generator=gen)
        value = loss(logits, targets)
        value.backward()
        fast.append(loss._fast is not None)
        ref_logits = logits.detach().clone().requires_grad_(True)
        progress = (torch.tensor(float(k)) / float(steps * per_step)).reshape(1)
        expected = reference.member_loss(ref_logits[None], targets[None],
                                         MinibatchContext(progress, counts[None]))[0]
        expected.backward()
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
        values.append(float(value.detach()))
        if (k + 1) % per_step == 0:
            loss.step()
    assert all(fast)  # every minibatch after the first went through the one-call plan


def test_make_reproduce_trains_the_committed_default():
    """The Makefile's ``reproduce`` names the settings in the committed default's config."""
    import json
    import re
    import shlex

    top = os.path.join(os.path.dirname(__file__), os.pardir)
    makefile = open(os.path.join(top, "Makefile")).read()

    def variable(name):
        text = re.search(rf"^{name} \??= (.*?)\n\n", makefile, re.S | re.M).group(1)
        return text.replace("\\\n", "")

    run = re.search(r"^RUN \?= (\S+)$", makefile, re.M).group(1)
    config = json.load(open(os.path.join(top, "results", os.path.basename(run),
                                         "config.json")))["args"]
    assert config["env_kwargs"] == json.loads(variable("AGENT_ENV"))
    assert config["overrides"] == json.loads(variable("LINEAR"))
    recipe = re.search(r"^reproduce:.*?\n((?:\t.*\n)+)", makefile, re.M).group(1)
    train = shlex.split(recipe.split("\n")[0].replace("\\", "").strip() + " "
                        + recipe.split("\n")[1].strip())
    options = dict(zip(train, train[1:]))
    for option, key in (("--generations", "generations"), ("--pairs", "pairs"),
                        ("--seed", "seed"), ("--distribution", "distribution")):
        assert options[option] == str(config[key]), option


@pytest.mark.parametrize("name", ["es-noisy-sizes", "es-noisy-linear", "es-ldamdrw10",
                                  "es-noisy-linear/support", "es-noisy-linear/basis"])
def test_the_committed_default_export_loads_and_trains_in_a_plain_loop(name):
    """The README's ``AdaptiveLoss.load("results/es-noisy-linear/adaptive_loss")`` (and the
    previous defaults') from a clone."""
    root = os.path.join(os.path.dirname(__file__), os.pardir, "results", name)
    criterion = AdaptiveLoss.load(os.path.join(root, "adaptive_loss"), total_steps=4,
                                  class_counts=torch.tensor([50, 10, 5]))
    assert criterion.kind == "controller" and criterion.controller.base_rule is not None
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    criterion.watch(optimizer)
    x, y = torch.randn(65, 4), torch.tensor([0] * 50 + [1] * 10 + [2] * 5)
    for _ in range(4):
        for _ in range(3):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
        with torch.no_grad():
            criterion.step(val_logits=model(x), val_targets=y, train_loss=float(loss))
    scales = [h["scale"] for h in criterion.history]
    assert len(scales) == 5 and all(1.0 <= s <= 30.0 for s in scales)
