"""How much `knot_search` moves when only its own seed changes (issue 13, target 1).

Target 1 compares a learned loss with `knot_search`, CMA-ES over open-loop schedules on the
evaluation's tuning tasks, run once per evaluation with the draw's seed. This script runs the
same search again, on the same tuning tasks at the same budget, with other search seeds, plays
each schedule on the evaluation's held-out runs, and prints each reseeded search against the
evaluation's own (`knot_search`, paired, with the stratified-bootstrap CI the reports use) and
the spread of the searches' means. That spread is noise a single draw's CI does not hold: a
method within it of `knot_search` can pass or fail target 1 by the search's luck alone. The
evaluation's own seed among ``--search-seeds`` reproduces its search exactly (a check).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/search_noise.py \\
        --evaluation results/es-noisy-linear --seeds 6 --search-seeds 101 102 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents import baselines as bl
from agents.evaluate import (
    EvalArgs,
    action_terms,
    draw_of,
    evaluation_draw,
    record_to_dict,
    search_budget,
)
from agents.rollout import rollout_policy
from agents.stats import paired_contrast
from agents.train import AgentPolicy
from lossgym import _checks as checks
from lossgym.io import atomic_write_text, check_folder
from lossgym.tasks import TaskDistribution

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_oracle import scores  # noqa: E402


def search_noise(run_dir: Path, args: EvalArgs, search_seeds: Sequence[int],
                 distribution: TaskDistribution | None = None) -> dict[str, Any]:
    """``knot_search`` of the evaluation in ``run_dir`` again with each of ``search_seeds``,
    played on its held-out runs (drawn from ``distribution``, default the run's) and compared
    with the evaluation's ``knot_search``."""
    for seed in search_seeds:
        checks.integer("--search-seeds", seed, 0)
    twice = sorted({s for s in search_seeds if list(search_seeds).count(s) > 1})
    if twice:
        raise ValueError(f"--search-seeds {list(search_seeds)} names {twice[0]} twice: each "
                         "must be a different seed")
    data, args, _, tasks, tune = evaluation_draw(args, distribution)
    original = scores(data["records"], "knot_search")
    if not original:
        raise ValueError(f"--evaluation {run_dir}: its evaluation has no knot_search records "
                         "(run agents.evaluate --add-methods knot_search first)")
    agent = AgentPolicy(run_dir)
    budget = search_budget(args, run_dir, len(tune))
    terms = action_terms(agent)
    out: dict[str, Any] = {"evaluation": str(run_dir), "draw": draw_of(args), "budget": budget,
                           "means": {"evaluation": 100 * float(np.mean(list(
                               original.values())))}, "contrasts": {}, "records": []}
    for seed in search_seeds:
        start = time.time()
        config = bl.knot_search(tune, budget, seed, **terms, device=args.device)[0]
        name = f"knot_search_seed{seed}"
        records = [record_to_dict(r) for r in rollout_policy(
            bl.KnotPolicy(**config, **terms), tasks, name, device=args.device)]
        mine = scores(records, name)
        out["records"] += records
        out["means"][str(seed)] = 100 * float(np.mean(list(mine.values())))
        out["contrasts"][str(seed)] = paired_contrast(mine, original)
        print(f"search seed {seed}: {out['means'][str(seed)]:.2f} % in "
              f"{time.time() - start:.0f} s", flush=True)
    means = np.array(list(out["means"].values()))
    out["sd"] = float(means.std(ddof=1))
    return out


def report(result: dict[str, Any], command: str) -> str:
    lines = ["# `knot_search` again with other search seeds", "", f"Command: `{command}`", "",
             f"Evaluation `{result['evaluation']}`, draw {json.dumps(result['draw'])}; each "
             f"search at {result['budget']} inner runs on the same tuning tasks, played on "
             "the same held-out runs. Test balanced accuracy, points; paired differences "
             "against the evaluation's `knot_search` with 95 % stratified-bootstrap CIs.", "",
             "| search | mean, % | − the evaluation's search |", "|---|---|---|"]
    for seed, mean in result["means"].items():
        c = result["contrasts"].get(seed)
        cell = f"(its seed {result['draw']['seed']})" if c is None else \
            f"{c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
        lines.append(f"| {seed} | {mean:.2f} | {cell} |")
    lines += ["", f"Standard deviation of the searches' means: {result['sd']:.2f} points."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluation", required=True, type=Path,
                        help="a run folder holding an evaluation.json with knot_search")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--search-seeds", required=True, type=int, nargs="+")
    for name in ("seed", "id_tasks", "seeds", "ood_tasks", "tune_tasks", "search_budget"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help="as agents.evaluate's (default: the evaluation's draw)")
    parser.add_argument("--device", default="auto")
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None and k not in
             ("evaluation", "out", "search_seeds")}
    command = "python scripts/search_noise.py " + " ".join(argv or sys.argv[1:])
    try:
        check_folder("--out", ns.out)
        result = search_noise(ns.evaluation, EvalArgs(run_dir=str(ns.evaluation), **given),
                              ns.search_seeds)
    except ValueError as err:
        print(f"search_noise: {err}", file=sys.stderr)
        return 2
    result["command"] = command
    ns.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ns.out / "search_noise.json", json.dumps(result))
    atomic_write_text(ns.out / "report.md", report(result, command))
    print(report(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
