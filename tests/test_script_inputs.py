"""Bad input to the scripts under scripts/: a clear one-line error (exit 2) that names the
option, its value and what is allowed, before any training and without writing any output;
never a traceback from deep inside numpy or torch, a silent run or one that never ends."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRAW = ["--tasks", "2", "--seeds", "4", "--quick"]


def _script(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _script(name)
        return cache[name]

    return get


def _refused(capsys, main, argv, *words):
    """``main(argv)`` exits (or returns) 2 with one line on stderr holding ``words``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


@pytest.mark.parametrize("name", ["hidden_noise", "control_room", "noise_floor", "base_rules"])
@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed", "-1", "an integer >= 0"]),
    (["--seeds", "100000000"], ["--seeds", "100000000", "an integer in [1, 10000]"]),
    (["--tasks", "100000", "--seeds", "4"], ["--tasks", "100000", "an integer in [1, "]),
    (["--tasks", "2", "--seeds", "4", "--quick", "--out", "FILE"], ["--out", "is a file"]),
])
def test_a_draw_that_cannot_be_made_is_refused_before_training(scripts, capsys, tmp_path,
                                                               name, argv, words):
    """Before: numpy's "expected non-negative integer" or "Cannot take a larger sample than
    population" tracebacks, a draw of distinct tasks that never ends, or a FileExistsError
    after the whole study."""
    file = tmp_path / "file"
    file.write_text("keep")
    out = ["--out", str(tmp_path / "out")]
    argv = [str(file) if a == "FILE" else a for a in argv]
    base = DRAW if "--out" in argv else [*DRAW, *out]
    levels = ["--levels", "0", "0.2"] if name == "hidden_noise" else []
    _refused(capsys, scripts(name).main, [*base, *levels, *argv], *words)
    assert not (tmp_path / "out").exists() and file.read_text() == "keep"


def test_the_draw_limit_counts_only_valid_base_tasks(scripts, capsys, tmp_path):
    """Before: the limit counted every combination of the grid, 1,296 for noisy_sizes, of
    which 216 are invalid (n_max 120 at rho 50 or 100 leaves the tail class under 5 samples)
    and never drawn, so --tasks 1,081 to 1,296 passed the check and the draw never ended."""
    from lossgym.tasks import TaskDistribution

    headroom = scripts("headroom")
    noisy_sizes = TaskDistribution.named("noisy_sizes")
    assert headroom.distinct_tasks(noisy_sizes, "train", False) == 1296 - 216
    assert headroom.distinct_tasks(noisy_sizes, "train", True) == (1296 - 216) // 3
    _refused(capsys, scripts("hidden_noise").main,
             ["--distribution", "noisy_sizes", "--tasks", "1081", "--seeds", "4", "--levels",
              "0", "0.2", "--out", str(tmp_path / "out")], "--tasks", "1081", "[1, 1080]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--levels", "0", "0.6"], ["--levels=0.6", "in [0, 0.5)"]),
    (["--levels", "0", "nan"], ["--levels=nan", "in [0, 0.5)"]),
    (["--tasks", "0"], ["--tasks=0", "an integer in [1, "]),
    (["--values", "nan"], ["--values=nan", "gate must be a number in [-5, 5]"]),
    (["--base", "nosuch"], ["--base 'nosuch'", "choose from"]),
    (["--device", "nosuch"], ["device='nosuch'", "'cpu'"]),
    (["--policy", "/nonexistent/run"], ["--policy /nonexistent/run", "config.json"]),
])
def test_hidden_noise_refuses_bad_options(scripts, capsys, tmp_path, argv, words):
    """Before: ValueError tracebacks from TaskSpec, numpy ("need at least one array to
    stack"), make_method, the device check or AgentPolicy."""
    out = tmp_path / "out"
    _refused(capsys, scripts("hidden_noise").main,
             [*DRAW, "--levels", "0", "0.2", "--out", str(out), *argv], *words)
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["--etas", "-1"], ["--etas=-1.0", ">= 0"]),
    (["--etas", "nan"], ["--etas=nan", ">= 0"]),
    (["--patience", "0"], ["--patience=0", "an integer >= 1"]),
    (["--delta", "nan"], ["--delta=nan", ">= 0"]),
    (["--latest", "2"], ["--latest=2.0", "in (0, 1]"]),
    (["--latest", "0"], ["--latest=0.0", "in (0, 1]"]),
    (["--device", "nosuch"], ["device='nosuch'", "'cpu'"]),
])
def test_control_room_refuses_bad_rule_options(scripts, capsys, tmp_path, argv, words):
    """Before: --patience, --delta and --latest out of range ran the study (exit 0); --etas
    and --device failed in a traceback."""
    out = tmp_path / "out"
    _refused(capsys, scripts("control_room").main,
             ["--tasks", "2", "--seeds", "2", "--quick", "--out", str(out), *argv], *words)
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed=-1", "an integer >= 0"]),
    (["--n-boot", "0"], ["--n-boot=0", "an integer >= 1"]),
    (["--device", "nosuch"], ["device='nosuch'"]),
])
def test_headroom_refuses_bad_options(scripts, capsys, tmp_path, argv, words):
    """Before: a numpy traceback (--seed -1, --device) or one at the end of the study
    (--n-boot 0)."""
    out = tmp_path / "out"
    _refused(capsys, scripts("headroom").main,
             ["--tasks", "2", "--seeds", "2", "--budget", "1", "--out", str(out), *argv], *words)
    assert not out.exists()


def test_headroom_render_only_writes_nothing_where_there_is_no_study(scripts, capsys,
                                                                     tmp_path):
    """Before: exit 0 and an empty index report.md written (over a study's own report.md when
    --out named the wrong folder)."""
    (tmp_path / "report.md").write_text("another study's report")
    _refused(capsys, scripts("headroom").main, ["--render-only", "--out", str(tmp_path)],
             "--out", str(tmp_path), "headroom.json")
    assert (tmp_path / "report.md").read_text() == "another study's report"
    missing = tmp_path / "missing"
    _refused(capsys, scripts("headroom").main, ["--render-only", "--out", str(missing)],
             "--out", str(missing))
    assert not missing.exists()


@pytest.mark.parametrize("at", ["nan", "1.5", "-1", "0"])
def test_noise_oracle_refuses_a_switch_outside_the_episode(scripts, capsys, tmp_path, at):
    """Before: a TypeError traceback after the draw (nan, 1.5) or a whole switch study at a
    switch that never happens (-1)."""
    out = tmp_path / "out"
    _refused(capsys, scripts("noise_oracle").main,
             ["--evaluation", str(tmp_path / "run"), "--out", str(out), "--switch-at", at],
             f"--switch-at={float(at)!r}", "in (0, 1)")
    assert not out.exists()


@pytest.mark.parametrize("tasks", ["0", "-3"])
def test_noise_oracle_refuses_no_detector_tasks_before_the_searches(scripts, capsys, tmp_path,
                                                                    tasks):
    """Before: ``--detector-tasks 0`` was read only after the per-level searches (25 minutes
    at the default budget), and then named ``detector_tasks``, not the option."""
    out = tmp_path / "out"
    _refused(capsys, scripts("noise_oracle").main,
             ["--evaluation", str(tmp_path / "run"), "--out", str(out), "--switch-at", "0.3",
              "--detector", "learned", "--detector-tasks", tasks],
             f"--detector-tasks={tasks}", ">= 1")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--out", "--export"])
def test_noise_oracle_refuses_a_file_for_a_folder(scripts, capsys, tmp_path, flag):
    """Before: a FileExistsError traceback, after the study (--out, --export)."""
    file = tmp_path / "file"
    file.write_text("keep")
    paths = {"--out": str(tmp_path / "out"), "--export": None, flag: str(file)}
    argv = ["--evaluation", str(tmp_path / "run"), "--switch-at", "0.3", "--detector",
            "learned", *[a for k, v in paths.items() if v for a in (k, v)]]
    _refused(capsys, scripts("noise_oracle").main, argv, flag, str(file), "is a file")
    assert file.read_text() == "keep" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--search-seeds", "-1"], ["--search-seeds=-1", "an integer >= 0"]),
    (["--search-seeds", "1", "1"], ["--search-seeds [1, 1]", "twice"]),
    (["--search-seeds", "1", "--out", "FILE"], ["--out", "is a file"]),
])
def test_search_noise_refuses_bad_seeds_before_searching(scripts, capsys, tmp_path, argv,
                                                         words):
    """Before: a repeated seed was noticed only after both of its searches had run; a
    negative seed or a file for --out failed deep inside the study."""
    file = tmp_path / "file"
    file.write_text("keep")
    argv = [str(file) if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    _refused(capsys, scripts("search_noise").main,
             ["--evaluation", str(tmp_path / "run"), *out, *argv], *words)
    assert file.read_text() == "keep" and not (tmp_path / "out").exists()


def test_pooled_draws_refuses_a_file_for_its_out_folder(scripts, capsys, tmp_path):
    """Before: a FileExistsError traceback."""
    file = tmp_path / "file"
    file.write_text("keep")
    _refused(capsys, scripts("pooled_draws").main,
             ["--draw", "a", str(tmp_path / "records.json"), "--contrast", "x", "y", "--out",
              str(file)], "--out", str(file), "is a file")
    assert file.read_text() == "keep"


@pytest.mark.parametrize("text, words", [
    ("{not json", ["--run-dir", "cannot be read"]),
    ("{}", ["--run-dir", "is not an evaluation"]),
    ('{"records": []}', ["--run-dir", "no records of the agent"]),
])
def test_schedule_ablation_refuses_a_damaged_evaluation(scripts, capsys, tmp_path, text,
                                                        words):
    """Before: JSONDecodeError, KeyError and ValueError tracebacks."""
    (tmp_path / "evaluation.json").write_text(text)
    _refused(capsys, scripts("schedule_ablation").main, ["--run-dir", str(tmp_path)], *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.json"]


def test_schedule_ablation_refuses_a_bad_device_and_a_folder_for_out(scripts, capsys,
                                                                     tmp_path):
    (tmp_path / "evaluation.json").write_text('{"records": []}')
    _refused(capsys, scripts("schedule_ablation").main,
             ["--run-dir", str(tmp_path), "--device", "nosuch"], "device='nosuch'")
    _refused(capsys, scripts("schedule_ablation").main,
             ["--run-dir", str(tmp_path), "--out", str(tmp_path)], "--out", "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.json"]


def test_context_range_refuses_a_folder_that_is_not_a_run(scripts, capsys, tmp_path):
    """Before: FileNotFoundError and IsADirectoryError tracebacks."""
    _refused(capsys, scripts("context_range").main,
             ["--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "t.md")],
             "--run-dir", "missing", "policy.norm.json")
    _refused(capsys, scripts("context_range").main,
             ["--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path)],
             "--out", "is a folder")
    assert list(tmp_path.iterdir()) == []


def test_context_support_refuses_a_bad_run_and_never_overwrites_a_folder(scripts, capsys,
                                                                         tmp_path):
    """Before: a FileNotFoundError traceback; an --out holding another run (or the run
    itself) had its files overwritten (or a SameFileError traceback)."""
    _refused(capsys, scripts("context_support").main,
             ["--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "new")],
             "--run-dir", "missing", "policy.norm.json")
    assert not (tmp_path / "new").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "policy.norm.json").write_text("keep")
    run = ROOT / "results" / "es-noisy-linear"
    for out in (other, run):
        _refused(capsys, scripts("context_support").main,
                 ["--run-dir", str(run), "--out", str(out), "--tasks", "2"],
                 "--out", str(out), "must be a new (or empty) folder")
    assert (other / "policy.norm.json").read_text() == "keep"


@pytest.mark.parametrize("flag", ["--export", "--reference"])
def test_transfer_check_refuses_a_folder_without_an_export(scripts, capsys, tmp_path, flag):
    """Before: a FileNotFoundError traceback, after the datasets were loaded."""
    export = str(ROOT / "results" / "es-default" / "adaptive_loss")
    paths = {"--export": export, flag: str(tmp_path / "missing")}
    out = tmp_path / "r.md"
    _refused(capsys, scripts("transfer_check").main,
             [*[a for kv in paths.items() for a in kv], "--out", str(out)],
             flag, "missing", "manifest.json")
    assert not out.exists()


def test_transfer_check_refuses_a_folder_for_its_report(scripts, capsys, tmp_path):
    """Before: an IsADirectoryError traceback after the whole check."""
    export = str(ROOT / "results" / "es-default" / "adaptive_loss")
    _refused(capsys, scripts("transfer_check").main,
             ["--export", export, "--out", str(tmp_path)], "--out", "is a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], ["--epochs 0", "at least 1"]),
    (["--seeds", "0"], ["--seeds 0", "at least 1"]),
    (["--seeds", "-2"], ["--seeds -2", "at least 1"]),
    (["--export", "/nonexistent/export"], ["--export /nonexistent/export", "manifest.json"]),
])
def test_train_with_adaptive_loss_refuses_bad_options(scripts, capsys, argv, words):
    """Before: a ValueError (total_steps=0), an AssertionError (--seeds 0) or a
    FileNotFoundError traceback (--export)."""
    _refused(capsys, scripts("train_with_adaptive_loss").main, argv, *words)


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed -1", "at least 0"]),
    (["--seeds", "0"], ["--seeds 0", "at least 1"]),
    (["--id-tasks", "-1"], ["--id-tasks -1", "at least 0"]),
    (["--ood-tasks", "-1"], ["--ood-tasks -1", "at least 0"]),
    (["--id-tasks", "0", "--ood-tasks", "0"], ["--id-tasks", "--ood-tasks", "both 0"]),
    (["--out", "FILE"], ["--out", "is a file"]),
])
def test_compare_trainers_refuses_bad_options_before_training(scripts, capsys, tmp_path,
                                                              argv, words):
    """Before: main() took no arguments; on the command line these trained agents before
    failing in a traceback (or, --ood-tasks -1, ran through with exit 0)."""
    file = tmp_path / "file"
    file.write_text("keep")
    argv = [str(file) if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    _refused(capsys, scripts("compare_trainers").main,
             ["--episodes", "32", "--algos", "es", *out, *argv], *words)
    assert file.read_text() == "keep" and not (tmp_path / "out").exists()


def test_a_good_draw_passes_the_checks(scripts):
    """The checks refuse only what cannot run: the default and held-out draws pass."""
    headroom = scripts("headroom")
    from lossgym.tasks import DISTRIBUTIONS, TaskDistribution

    for name in DISTRIBUTIONS:
        for split in ("train", "held_out_id"):
            dist = TaskDistribution.named(name)
            headroom.check_draw(dist, split, 20, 5, 0, False)
            headroom.check_draw(dist, split, 2, 2, 0, True)
    assert headroom.distinct_tasks(TaskDistribution.default(), "train", False) == 648


@pytest.mark.parametrize("flag", ["--x", "--y", "--csv"])
def test_train_with_adaptive_loss_names_the_file_it_cannot_read(scripts, capsys, tmp_path,
                                                                flag):
    """Before: numpy's "This file contains pickled (object) data ..." or a bare "[Errno 21]
    Is a directory", naming neither the option nor the file."""
    import numpy as np

    np.save(tmp_path / "good.npy", np.zeros(3))
    (tmp_path / "bad.npy").write_text("not an array")
    bad = {"--x": tmp_path / "bad.npy", "--y": tmp_path / "bad.npy", "--csv": tmp_path}[flag]
    data = {"--x": ["--x", str(bad), "--y", str(tmp_path / "good.npy")],
            "--y": ["--x", str(tmp_path / "good.npy"), "--y", str(bad)],
            "--csv": ["--csv", str(bad), "--label-column", "y"]}[flag]
    _refused(capsys, scripts("train_with_adaptive_loss").main, data, f"{flag} {bad}")


@pytest.mark.parametrize("datasets", [",", ""])
def test_base_rules_refuses_no_datasets(scripts, capsys, tmp_path, datasets):
    """Before: ``--datasets ,`` ran the engine part and wrote a study with no plain loop."""
    _refused(capsys, scripts("base_rules").main,
             [*DRAW, "--datasets", datasets, "--out", str(tmp_path / "out")],
             "--datasets", "none given")
    assert not (tmp_path / "out").exists()
