"""Paired contrasts pooled over several held-out draws (issue 13, target 1).

One draw's contrast of two methods carries the noise of that draw's searches and training (a
search run again at another budget moved `knot_search` by 0.66 points on one draw) besides the
seed noise its stratified bootstrap measures. Pooling the draws asks the question the targets
ask, on four times the runs and four independent searches: is one method better than another
*as a procedure*? This script reads the records of each draw (``evaluation.json`` of
``agents.evaluate``, ``noise_oracle.json`` of ``scripts/noise_oracle.py``) and prints, for each
contrast ``A − B``:

* each draw's paired difference with its 95 % stratified-bootstrap CI (as the reports);
* the pooled difference over every draw's runs, pairs resampled within their draw's base task
  (seed noise only, as within a draw);
* the mean of the draws' differences with a Student-t interval over draws, which also holds
  the noise of the searches and of training that each draw redid (wide with four draws).

A file given as ``PATH#TAG`` has ``TAG`` appended to its methods' names (``knot3264.json#@3264``
gives ``knot_search@3264``); a switch study of ``noise_oracle.json`` is named
``METHOD@PROGRESS`` (``noise_switch_winner@0.3``).

    PYTHONPATH=. python scripts/pooled_draws.py \\
        --draw seed0 results/es-noisy-linear/evaluation.json \\
            results/es-noisy-linear/noise_oracle/seed0/noise_oracle.json \\
        --draw seed1 results/es-noisy-linear/fresh_draw/evaluation.json ... \\
        --contrast agent knot_search --out results/es-noisy-linear/pooled
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from agents.stats import paired_contrast, run_key
from lossgym.io import atomic_write_text, check_folder

#: A run's key across draws: (draw, base task JSON) and seed.
Key = tuple[str, int]


def read_records(path: str) -> list[dict[str, Any]]:
    """The records of one file (``PATH`` or ``PATH#TAG``), named as the module docstring says."""
    file, _, tag = path.partition("#")
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--draw file {file!r} cannot be read: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"--draw file {file!r} holds no records: it must be an "
                         "evaluation.json or a noise_oracle.json")
    records = list(data["records"])
    for key, study in (data.get("switches") or {}).items():
        at = key.partition("@")[2]
        records += [r | {"method": f"{study['method']}@{at}"} for r in study["records"]]
        replay = study.get("task_replay", {}).get("records", [])
        records += [r | {"method": f"{study['method']}@{at}_task_replay"} for r in replay]
    return [r | {"method": r["method"] + tag} for r in records]


def scores(records: Sequence[dict[str, Any]], draw: str) -> dict[str, dict[Key, float]]:
    """method → {(draw|base task, seed): test balanced accuracy}."""
    out: dict[str, dict[Key, float]] = {}
    for r in records:
        base, seed = run_key(r["task"])
        out.setdefault(r["method"], {})[(f"{draw}|{base}", seed)] = \
            r["test"]["balanced_accuracy"]
    return out


def pooled(draws: dict[str, dict[str, dict[Key, float]]], a: str, b: str) -> dict[str, Any]:
    """The contrast ``a − b``: per draw, pooled over the draws' runs, and over draws."""
    per_draw = {name: paired_contrast(m[a], m[b]) for name, m in draws.items()
                if m.get(a) and m.get(b)}
    if not per_draw:
        raise ValueError(f"no draw holds records of both {a!r} and {b!r}")
    union_a = {k: v for name in per_draw for k, v in draws[name][a].items()}
    union_b = {k: v for name in per_draw for k, v in draws[name][b].items()}
    means = np.array([c["mean"] for c in per_draw.values()])
    out: dict[str, Any] = {"a": a, "b": b, "draws": per_draw,
                           "pooled": paired_contrast(union_a, union_b),
                           "over_draws": {"mean": float(means.mean()), "k": len(means)}}
    if len(means) > 1:
        half = sps.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))
        out["over_draws"] |= {"ci_low": float(means.mean() - half),
                              "ci_high": float(means.mean() + half)}
    return out


def _cell(c: dict[str, float]) -> str:
    if "ci_low" not in c:
        return f"{c['mean']:+.2f}"
    return f"{c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def report(results: Sequence[dict[str, Any]], names: Sequence[str], command: str) -> str:
    lines = ["# Paired contrasts pooled over held-out draws", "",
             f"Command: `{command}`", "",
             "Test balanced accuracy, points, 95 % CIs. Per draw and pooled: stratified "
             "bootstrap over seeds within base tasks (the draw's searches and training fixed). "
             "Over draws: Student-t interval of the draws' mean differences, which also holds "
             "the noise of each draw's searches and training.", "",
             "| A − B | " + " | ".join(names) + " | pooled (runs) | over draws |",
             "|---" * (len(names) + 3) + "|"]
    for r in results:
        cells = [_cell(r["draws"][n]) if n in r["draws"] else "—" for n in names]
        lines.append(f"| `{r['a']}` − `{r['b']}` | " + " | ".join(cells)
                     + f" | {_cell(r['pooled'])} ({r['pooled']['n']}) | "
                     + f"{_cell(r['over_draws'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draw", nargs="+", action="append", required=True,
                        metavar=("NAME", "FILE"), help="a draw's name and its record files")
    parser.add_argument("--contrast", nargs=2, action="append", required=True,
                        metavar=("A", "B"), help="methods to compare, A − B")
    parser.add_argument("--out", type=Path, default=None,
                        help="write pooled.json and report.md there")
    ns = parser.parse_args(argv)
    command = "python scripts/pooled_draws.py " + " ".join(argv or sys.argv[1:])
    try:
        if ns.out is not None:
            check_folder("--out", ns.out)
        draws: dict[str, dict[str, dict[Key, float]]] = {}
        for name, *files in ns.draw:
            if not files:
                raise ValueError(f"--draw {name} names no files")
            if name in draws:
                raise ValueError(f"--draw {name} is given twice")
            draws[name] = {}
            for file in files:
                for method, values in scores(read_records(file), name).items():
                    draws[name].setdefault(method, {}).update(values)
        results = [pooled(draws, a, b) for a, b in ns.contrast]
    except ValueError as err:
        print(f"pooled_draws: {err}", file=sys.stderr)
        return 2
    text = report(results, list(draws), command)
    if ns.out is not None:
        ns.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ns.out / "pooled.json",
                          json.dumps({"command": command, "contrasts": results}, indent=1))
        atomic_write_text(ns.out / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
