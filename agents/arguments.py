"""Command lines generated from argument dataclasses (``TrainArgs``, ``EvalArgs``).

Each field becomes one option (``run_dir`` → ``--run-dir``; a bool → ``--x/--no-x``; a dict →
a JSON object; a tuple → several values), its help text the docstring written under the
field, and its range the field's metadata (``minimum``, ``maximum`` (exclusive),
``choices``), which :func:`check_fields` also enforces when the dataclass is built in Python.
So a default, a range or a description is written once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of dataclass ``cls``, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _base_type(hint: Any) -> type:
    """``int`` from ``int``, ``int | None`` or ``Optional[int]``; ``tuple`` from
    ``tuple[float, ...]``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.get_origin(hint) or hint


def _item_type(hint: Any) -> type:
    """``float`` from ``tuple[float, ...]``."""
    return typing.get_args(hint)[0]


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def problem(value: Any, base: type, metadata: Mapping[str, Any], item: type = float
            ) -> str | None:
    """What is wrong with ``value`` for a field (None if nothing): its allowed values. Numbers
    are checked against metadata ``minimum`` and ``maximum`` (exclusive); a tuple field
    (``tuple[item, ...]``) checks each of its items so."""
    if value is None:
        return None
    if base is tuple:
        if not isinstance(value, tuple | list):
            return "must be a sequence of numbers"
        for x in value:
            wrong = problem(x, item, metadata)
            if wrong:
                return f"each value {wrong}; {x!r} is not"
        return None
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {list(choices)}"
    if base in (int, float):
        ok = isinstance(value, int if base is int else int | float) \
            and not isinstance(value, bool)
        low, high = metadata.get("minimum"), metadata.get("maximum")
        if not ok or (low is not None and value < low) or (high is not None and value >= high):
            kind = "an integer" if base is int else "a number"
            return f"must be {kind}" + (f" >= {low}" if low is not None else "") + \
                (f" and < {high}" if high is not None else "") + \
                (f" ({metadata['meaning']})" if "meaning" in metadata else "")
    return None


def invalid(cls: type, values: Mapping[str, Any], cli: bool = False) -> str | None:
    """The message for the first field of ``values`` out of its range (None if none): the
    field (its option, with ``cli``), its value and what is allowed."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            base = _base_type(hints[f.name])
            wrong = problem(values[f.name], base, f.metadata,
                            _item_type(hints[f.name]) if base is tuple else float)
            if wrong:
                return f"{option(f.name) if cli else f.name}={values[f.name]!r} is invalid: {wrong}"
    return None


def check_fields(instance: Any) -> None:
    """Raise ``ValueError`` (see :func:`invalid`) if a field of ``instance`` is out of range."""
    message = invalid(type(instance), vars(instance))
    if message:
        raise ValueError(message)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            skip: Sequence[str] = ()) -> None:
    """One option per field of ``cls`` (except ``skip``), help from the field docstrings."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring to be its --help text")
        base = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = docs[f.name]
        if default not in (None, {}, ()):
            text = text.removesuffix(".") + " (default: %(default)s)."
        kwargs: dict[str, Any] = {"default": default, "help": text, "dest": f.name}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is dict:
            kwargs.update(type=_json_object, metavar="JSON")
        elif base is tuple:
            kwargs.update(type=_item_type(hints[f.name]), nargs="*")
            if "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
        else:
            kwargs["type"] = base
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(option(f.name), **kwargs)


def build(parser: argparse.ArgumentParser, cls: type, namespace: argparse.Namespace,
          **changes: Any) -> Any:
    """``cls`` from the parsed ``namespace`` (its fields only), checked with the options'
    names in the messages; a bad value ends the program with ``parser.error`` (status 2)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(changes)
    message = invalid(cls, values, cli=True)
    if message:
        parser.error(message)
    return cls(**values)


def run_command(call: Callable[[], object], prog: str | None = None) -> int:
    """A command's exit status: 0 after printing what ``call`` returns; 2 when it raises a
    ``ValueError`` or ``OSError`` (the user's input: options, run folders, files), printed as
    ``prog: error: ...`` on stderr. ``prog`` defaults to the script's name."""
    try:
        print(call())
    except (ValueError, OSError) as err:
        name = prog or os.path.basename(sys.argv[0]) or "lossgym"
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    return 0
