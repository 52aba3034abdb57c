"""scripts/context_support.py and the observation support it writes: the agent and its export
clip each raw context feature to the range it took in training, and change nothing inside it."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from agents.export import export_run
from agents.train import AgentPolicy
from lossgym.export import AdaptiveLoss, read_export, write_export
from lossgym.features import CONTEXT_FEATURES, FeatureSpec
from lossgym.tasks import TaskDistribution, TaskFactors

DEFAULT = Path(__file__).resolve().parents[1] / "results" / "es-noisy-linear"
K = len(CONTEXT_FEATURES)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("context_support")


def test_the_support_holds_every_sampled_train_task(script):
    factors = TaskFactors(imbalance_ratios=(10.0, 50.0), widths=(32, 128),
                          weight_decays=(0.0, 0.1), horizons=(4, 8), seed_range=(0, 100))
    held_out = dataclasses.replace(factors, seed_range=(100, 200))
    dist = TaskDistribution(train=(factors,), held_out_id=(held_out,), held_out_ood=(
        dataclasses.replace(held_out, imbalance_ratios=(20.0,)),))
    low, high = script.context_support(dist, tasks=64)
    rng = np.random.default_rng(0)
    values = np.array([script.task_context_values(t, float(t.num_train))
                       for t in (dist.sample(rng, "train") for _ in range(64))],
                      dtype=np.float32)  # as the observation holds them
    assert len(low) == len(high) == K
    np.testing.assert_array_equal(values.min(axis=0), low)
    np.testing.assert_array_equal(values.max(axis=0), high)
    # The factors that vary span an interval; those that do not are one point.
    names = [name for name, _, _ in CONTEXT_FEATURES]
    for name in ("ctx_weight_decay", "ctx_log_width", "ctx_log_epochs"):
        assert low[names.index(name)] < high[names.index(name)], name
    assert low[names.index("ctx_cnn")] == high[names.index("ctx_cnn")] == 0.0


@pytest.fixture(scope="module")
def supported(script, tmp_path_factory):
    """The committed default agent with a support on its context features, and its export."""
    run = tmp_path_factory.mktemp("support") / "run"
    assert script.main(["--run-dir", str(DEFAULT), "--out", str(run), "--tasks", "200"]) == 0
    return run, export_run(run, "controller", run / "adaptive_loss")


def test_agent_and_export_clip_the_context_to_its_support_and_nothing_else(supported):
    run, export = supported
    norm = json.loads((run / "policy.norm.json").read_text())
    low, high = np.array(norm["low"][-K:]), np.array(norm["high"][-K:])
    assert norm["low"][:-K] == [None] * (len(norm["mean"]) - K)
    agent, plain = AgentPolicy(run), AgentPolicy(DEFAULT)
    controller = AdaptiveLoss.load(export).controller
    inside = np.asarray(norm["mean"], dtype=np.float32)[None].repeat(3, 0)
    inside[0, -K:] = (low + high) / 2
    inside[1, :4] += 3.0  # a dynamic feature far from its mean stays as it is
    # A training task at the ends of the support, in the float32 the observation holds: the
    # support is float32 too, so nothing is clipped (float64 ends would clip it by 1e-7).
    inside[1, -K:], inside[2, -K:] = low, high
    outside = inside.copy()
    outside[:, -K:] = np.where(np.arange(K) % 2, high + 5.0, low - 5.0)  # digits-like
    for obs in (inside, outside):
        ours = agent.normalise(obs)
        exported = controller.normalise(torch.as_tensor(obs)).numpy()
        np.testing.assert_allclose(exported, ours, atol=1e-6)
    np.testing.assert_array_equal(agent.normalise(inside), plain.normalise(inside))
    clipped = outside.copy()
    clipped[:, -K:] = np.clip(outside[:, -K:], low, high)
    np.testing.assert_array_equal(agent.normalise(outside), plain.normalise(clipped))
    assert not np.array_equal(plain.normalise(outside), plain.normalise(clipped))


def test_a_bad_support_in_a_manifest_names_the_entry(supported, tmp_path):
    _, export = supported
    controller, manifest = read_export(export)
    norm = controller.obs_normalization
    for change, message in (({"low": [5.0] * len(norm["mean"]), "high": norm["high"]},
                             r"obs_normalization.low\[18\]=5.0 is above high\[18\]"),
                            ({"low": norm["low"][:-1], "high": norm["high"]},
                             "obs_normalization.low must list"),
                            ({"high": None}, "one of 'low' and 'high' without the other"),
                            ({"low": ["a"] * len(norm["mean"]), "high": norm["high"]},
                             r"obs_normalization.low\[0\]='a' is invalid")):
        bad = {**norm, **change}
        if change.get("high", 0) is None:
            del bad["high"]
        with pytest.raises(ValueError, match=message):
            write_export(type(controller)(controller.layers, controller.tensors(),
                                          controller.mapping, controller.output, bad,
                                          controller.algorithm, 2, controller.base_rule),
                         tmp_path / "bad", total_steps=manifest["total_steps"])
    # The support survives a round trip through the files.
    again, _ = read_export(export)
    assert again.obs_normalization["low"] == norm["low"]


def test_a_run_with_bad_statistics_is_refused_by_the_agent_as_by_the_export(supported,
                                                                            tmp_path):
    # One check of the statistics for both readers: a support with low > high, or a variance
    # that is not a number, is refused when the run loads, naming the entry, not acted on.
    run, _ = supported
    norm = json.loads((run / "policy.norm.json").read_text())
    dim = len(norm["mean"])
    for change, message in (({"low": [5.0] * dim}, r"obs_normalization.low\[18\]=5.0 is above"),
                            ({"var": [1.0] * (dim - 1) + [float("nan")]},
                             rf"obs_normalization.var\[{dim - 1}\]=nan is invalid"),
                            ({"mean": ["a"] * dim}, r"obs_normalization.mean\[0\]='a'")):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run, bad)
        (bad / "policy.norm.json").write_text(json.dumps({**norm, **change}))
        with pytest.raises(ValueError, match="observation statistics .* cannot be read") as err:
            AgentPolicy(bad)
        assert err.match(message)
    assert AgentPolicy(run).norm["low"] == norm["low"]  # the good one loads, support and all


def test_the_script_refuses_a_run_without_context_features(script, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "policy.norm.json"):
        shutil.copyfile(DEFAULT / name, run / name)
    config = json.loads((run / "config.json").read_text())
    config["hyperparams"]["env_kwargs"]["context_features"] = False
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        script.main(["--run-dir", str(run), "--out", str(tmp_path / "out")])


def test_a_loss_without_a_support_keeps_the_state_dict_it_had_before_supports(supported):
    # Checkpoints saved before supports existed hold no obs_low/obs_high: they still load
    # strictly, because a controller without a support registers no such buffers.
    default = AdaptiveLoss.load(DEFAULT / "adaptive_loss", total_steps=4,
                                class_counts=torch.tensor([50.0, 10.0, 5.0]))
    default.begin()
    assert sorted(default.state_dict()) == [
        "_extra_state", "controller.net.0.bias", "controller.net.0.weight",
        "controller.obs_held", "controller.obs_mean", "controller.obs_var"]
    # One with a support saves it, and a fresh loss of the same export loads it.
    _, export = supported
    clipped = AdaptiveLoss.load(export, total_steps=4, class_counts=torch.tensor([5.0, 1.0, 1.0]))
    clipped.begin()
    state = clipped.state_dict()
    assert {"controller.obs_low", "controller.obs_high"} <= set(state)
    again = AdaptiveLoss.load(export, total_steps=4, class_counts=torch.tensor([5.0, 1.0, 1.0]))
    again.load_state_dict(state)
    assert again.params == clipped.params


def test_the_support_goes_on_the_context_columns_of_a_version_3_run(script, tmp_path):
    # The progress basis follows the context features: it gets no support.
    run = DEFAULT / "basis"
    assert script.main(["--run-dir", str(run), "--out", str(tmp_path / "out"),
                        "--tasks", "50"]) == 0
    norm = json.loads((tmp_path / "out" / "policy.norm.json").read_text())
    spec = FeatureSpec(("margin", "scale", "cb"), 3)
    bounded = [i for i, lo in enumerate(norm["low"]) if lo is not None]
    assert bounded == spec.context_columns == list(range(spec.dim - 4 - K, spec.dim - 4))
    assert norm["high"][-4:] == [None] * 4
