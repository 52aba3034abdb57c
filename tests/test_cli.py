"""The command lines a user meets first: lossgym compare, train and evaluate (rc 2 and a message
for every mistake of theirs, never a traceback or a silently replaced value), and --version."""

import json
import subprocess
import sys

import pytest

from lossgym import TaskSpec, cli

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=4)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a command starts training: a bad option must stop it first."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("lossgym.compare.compare", refuse)
    monkeypatch.setattr("agents.train.train", refuse)
    monkeypatch.setattr("agents.evaluate.evaluate", refuse)


@pytest.mark.parametrize(("argv", "shown"), [
    (["compare", "--rho", "0"], "--rho=0.0"),  # ran rho = 100
    (["compare", "--rho", "5000"], "--rho=5000.0"),
    (["compare", "--dataset", ""], "--dataset=''"),
    (["compare", "--device", "cuda:7"], "--device='cuda:7'"),
    (["compare", "--task", "/no/such/task.json"], "--task /no/such/task.json"),
])
def test_compare_refuses_bad_values_with_rc_2(no_training, capsys, argv, shown):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err


def test_compare_with_one_seed_says_a_ci_needs_two(tmp_path, capsys):
    task = tmp_path / "task.json"
    task.write_text(SMALL.to_json())
    assert cli.main(["compare", "--task", str(task), "--seeds", "1", "--methods", "ce",
                     "focal_2", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "a CI needs 2 seeds" in out


@pytest.mark.parametrize(("argv", "shown"), [
    (["--timesteps", "0"], "--timesteps=0"),  # started the full default run
    (["--num-envs", "0"], "--num-envs=0"),  # trained 64 envs
    (["--checkpoint-every", "0"], "--checkpoint-every=0"),  # a checkpoint every step
    (["--timesteps", "-5"], "--timesteps=-5"),
    (["--seed", "-1"], "--seed=-1"),
    (["--algo", "a2c"], "a2c"),
    (["--overrides", "[1]"], "JSON object"),
])
def test_train_refuses_bad_options_with_rc_2(no_training, capsys, argv, shown):
    with pytest.raises(SystemExit) as caught:
        cli.main(["train", *argv])
    assert caught.value.code == 2 and shown in capsys.readouterr().err


def test_train_and_evaluate_report_missing_runs_with_rc_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli.main(["train", "--resume", "--run-dir", str(missing), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
    assert cli.main(["evaluate", "--run-dir", str(missing), "--no-pbt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    run = tmp_path / "run"
    run.mkdir()
    assert cli.main(["evaluate", "--run-dir", str(run), "--report-only"]) == 2
    assert "evaluation.json does not exist" in capsys.readouterr().err
    (run / "evaluation.json").write_text("{half")
    assert cli.main(["evaluate", "--run-dir", str(run), "--report-only"]) == 2
    assert "evaluation.json cannot be read" in capsys.readouterr().err
    (run / "evaluation.json").write_text(json.dumps({"records": 3}))
    assert cli.main(["evaluate", "--run-dir", str(run), "--add-methods", "ce"]) == 2
    assert "is not an evaluation" in capsys.readouterr().err


def test_every_train_and_evaluate_option_has_help():
    from agents.evaluate import build_parser as evaluate_parser
    from agents.train import build_parser as train_parser

    for parser in (train_parser(), evaluate_parser()):
        for action in parser._actions:
            assert action.help and len(action.help) > 10, action.option_strings
    text = train_parser().format_help()
    assert "(default: 4096)" in text and "the YAML's n_timesteps" in text


def test_version_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "lossgym", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"lossgym {__import__('lossgym').__version__}"
    assert subprocess.run([sys.executable, "-m", "lossgym", "compare", "--rho", "0"],
                          capture_output=True, text=True).returncode == 2


def test_run_command_prints_the_result_or_the_users_error_with_status_2(capsys):
    from agents.arguments import run_command

    assert run_command(lambda: "done", "prog") == 0
    assert capsys.readouterr().out == "done\n"

    def bad() -> None:
        raise ValueError("--seeds=0 is out of range")

    def missing() -> None:
        raise FileNotFoundError("runs/x/config.json")

    assert run_command(bad, "prog") == 2 and run_command(missing, "prog") == 2
    assert capsys.readouterr().err == ("prog: error: --seeds=0 is out of range\n"
                                       "prog: error: runs/x/config.json\n")

    def bug() -> None:
        raise KeyError("a bug is not the user's error")

    with pytest.raises(KeyError):  # a bug still shows its traceback
        run_command(bug, "prog")
