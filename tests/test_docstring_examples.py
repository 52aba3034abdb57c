"""Every example in the docstrings of ``agents/`` and ``lossgym/`` runs as written: each
doctest (``>>>``), each fenced ```` ```python ```` block and each ``::`` literal block that is
Python. A literal block that is not Python (a folder layout, a formula) is prose, not an
example; a Python one that cannot run as written must be listed in SKETCHES with the reason.

Examples run like doctests: in a copy of their module's globals (so they may use the module's
own names), here in a fresh working folder.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "lossgym")

#: (module, the block's first line) → why it is not run: a sketch with the reader's own names.
SKETCHES = {
    ("lossgym.export", "from lossgym import AdaptiveLoss"):
        "a sketch of a training loop: `epochs`, `train_labels`, `optimizer`, `loader` and "
        "`model` are the reader's, and the export folder is made by `lossgym export`",
}

_FENCED = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")


def _literal_blocks(doc: str) -> list[str]:
    """The ``::`` literal blocks of a docstring (not those of directives such as
    ``.. math::``), dedented."""
    lines = doc.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::") or _DIRECTIVE.match(line):
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for later in lines[i + 1 :]:
            if later.strip() and len(later) - len(later.lstrip()) <= indent:
                break
            body.append(later)
        code = textwrap.dedent("\n".join(body)).strip("\n")
        if code:
            blocks.append(code)
    return blocks


def _is_python(code: str) -> bool:
    try:
        compile(code, "<example>", "exec")
    except SyntaxError:
        return False
    return True


def _docstrings(path: Path) -> list[str]:
    """The docstrings of a source file: its module's, its classes' and its functions'."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
        n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _examples() -> tuple[list[str], list[tuple[str, str]]]:
    """Modules with doctests, and (module, code) of every Python code block."""
    doctests, blocks = [], []
    for path in _sources():
        name = _module_name(path)
        docs = _docstrings(path)
        if any(">>>" in doc for doc in docs):
            doctests.append(name)
        for doc in docs:
            for code in _FENCED.findall(doc) + _literal_blocks(doc):
                code = textwrap.dedent(code).strip("\n")
                if ">>>" not in code and _is_python(code):
                    blocks.append((name, code))
    return doctests, blocks


DOCTESTS, BLOCKS = _examples()


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in PACKAGES:
            raise
        pytest.skip(f"{name} needs {error.name}, which is not installed")


@pytest.mark.parametrize("name", DOCTESTS)
def test_doctests_run(name, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    module = _import(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name, code", BLOCKS,
                         ids=[f"{name}:{code.splitlines()[0][:40]}" for name, code in BLOCKS])
def test_code_blocks_run(name, code, tmp_path, monkeypatch, one_thread):
    first = code.splitlines()[0].strip()
    if (name, first) in SKETCHES:
        pytest.skip(SKETCHES[name, first])
    monkeypatch.chdir(tmp_path)
    module = _import(name)
    exec(compile(code, f"<example in {name}>", "exec"), dict(vars(module)))


def test_the_examples_are_found():
    # The known ones, so that a broken discovery cannot pass by finding nothing.
    assert "agents.vec_env" in DOCTESTS
    found = {(name, code.splitlines()[0].strip()) for name, code in BLOCKS}
    assert ("lossgym.schedules", 'LossSchedule({"alpha": step([0.8], [0.0, 1.0]), "gamma": '
            'cosine(2.0, 0.0)})') in found
    assert any(name == "lossgym.envs.loss_tuning" and first.startswith('gym.make(')
               for name, first in found)
    assert set(SKETCHES) <= found
    # Literal blocks that are not Python are prose: es.py's folder layout is not an example.
    assert not any(name == "agents.es" for name, _ in BLOCKS)
