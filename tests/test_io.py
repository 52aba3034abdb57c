import json
import os
import subprocess
import sys
import time

import pytest

from lossgym.io import atomic_write, atomic_write_text, write_study


@pytest.fixture
def umask():
    """Sets the process umask for a test and restores it."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(value):
        os.umask(value)

    yield set_to
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask):
    # mkstemp made every file 0o600 whatever the umask.
    umask(mask)
    path = atomic_write_text(tmp_path / "config.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    other = atomic_write(tmp_path / "ckpt.pt", lambda tmp: open(tmp, "wb").write(b"x"))
    assert other.stat().st_mode & 0o777 == 0o666 & ~mask


def test_overwriting_gives_the_umask_mode_too(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "a.json"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o644


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_orphans_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "latest.json"
    dead = tmp_path / f".latest.json.{_dead_pid()}.0a1b2c3d.tmp"
    alive = tmp_path / f".latest.json.{os.getpid()}.0a1b2c3d.tmp"  # a writer still at work
    old = tmp_path / ".latest.json.ab_cd123.tmp"  # mkstemp's, from an earlier version
    fresh_old = tmp_path / ".latest.json.zz_cd123.tmp"
    other = tmp_path / f".other.json.{_dead_pid()}.0a1b2c3d.tmp"  # another target's
    for path in (dead, alive, old, fresh_old, other):
        path.write_text("partial")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    atomic_write_text(target, "{}")
    assert not dead.exists() and not old.exists()
    assert alive.exists() and fresh_old.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, fresh_old.name, other.name, "latest.json"])


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_study_writes_its_json_and_report_and_an_unserialisable_result_keeps_the_old(tmp_path):
    data, report = tmp_path / "out" / "study.json", tmp_path / "out" / "report.md"
    write_study(data, {"mean": 1.5}, report, "# study\n")
    assert json.loads(data.read_text()) == {"mean": 1.5} and report.read_text() == "# study\n"
    with pytest.raises(TypeError):
        write_study(data, {"mean": object()}, report, "# new\n")
    assert json.loads(data.read_text()) == {"mean": 1.5} and report.read_text() == "# study\n"
