"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The new file is written beside the target as ``.<name>.<pid>.<token>.tmp`` and renamed into
place. It is created with mode 0o666 less the umask, as ``open()`` would create the target
(a ``tempfile.mkstemp`` file is 0o600 whatever the umask). A process killed mid-write leaves
its temporary file behind; the next write of the same target removes the ones whose process
is gone (and those that ``tempfile.mkstemp`` made in earlier versions, after an hour).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


#: Age after which an earlier version's temporary file (no process id in its name) is an orphan.
_OLD_ORPHAN_SECONDS = 3600


def _remove_orphans(target: Path) -> None:
    """Temporary files of ``target`` whose writer is gone (killed mid-write)."""
    name = re.escape(target.name)
    ours = re.compile(rf"\.{name}\.(\d+)\.[0-9a-f]+\.tmp")
    mkstemp = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for entry in names:
        path = target.parent / entry
        match = ours.fullmatch(entry)
        try:
            if (match and not _process_alive(int(match.group(1)))) or (
                    mkstemp.fullmatch(entry)
                    and time.time() - path.stat().st_mtime > _OLD_ORPHAN_SECONDS):
                path.unlink()
        except OSError:
            pass


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never another writer's file; 0o666: the kernel applies the umask.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


def write_study(json_path: str | os.PathLike[str], result: object,
                report_path: str | os.PathLike[str], report: str) -> None:
    """A study's results: ``result`` as JSON and its Markdown ``report``, each atomically.

    The JSON goes first, so a report on disk always has its data beside it.
    """
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    atomic_write_text(report_path, report)


def check_folder(option: str, path: str | os.PathLike[str]) -> None:
    """A ``ValueError`` naming ``option`` where ``path``, a folder a command will create and
    write into, is an existing file (checked before any work, so that nothing is lost)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{option} {path} is a file: must be a folder (created if missing)")
