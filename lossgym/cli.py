"""The ``lossgym`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lossgym import __version__
from lossgym.tasks import TaskSpec


def _task_from_args(args: argparse.Namespace) -> TaskSpec:
    if args.task is None:
        task = TaskSpec()
    else:
        try:
            task = TaskSpec.from_json(Path(args.task).read_text())
        except OSError as err:
            raise ValueError(f"--task {args.task}: cannot be read: {err}") from err
        except ValueError as err:
            raise ValueError(f"--task {args.task}: {err}") from err
    for option, name, value in (("--rho", "imbalance_ratio", args.rho),
                                ("--dataset", "dataset", args.dataset)):
        if value is not None:  # 0 and "" are values, not "use the default"
            try:
                task = task.replace(**{name: value})
            except ValueError as err:
                raise ValueError(f"{option}={value!r}: {err}") from err
    return task


def _check_device(device: str) -> None:
    from lossgym.population import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise ValueError(f"--{err}") from None


def _compare(args: argparse.Namespace) -> int:
    from lossgym.compare import compare
    from lossgym.io import atomic_write_text

    task = _task_from_args(args)
    _check_device(args.device)
    if args.output is not None and Path(args.output).is_dir():
        raise ValueError(f"--output={args.output!r} is a folder; it must be the path of the "
                         "JSON file to write")
    result = compare(task, methods=args.methods, seeds=range(args.seeds), device=args.device,
                     progress=not args.no_progress)
    print(f"\nTest metrics on {task.dataset}, rho={task.imbalance_ratio:g} "
          f"({task.imbalance_profile}), {task.arch} {task.width}x{task.depth}, "
          f"{task.optimizer} lr={task.lr:g} "
          f"wd={task.weight_decay:g}, ~{task.epochs:.1f} epochs; {len(result.seeds)} paired seeds")
    print(result.table())
    if len(result.seeds) < 2 and "ce" in result.metrics:
        print("(one seed: the paired confidence intervals need 2 seeds at least; --seeds 10 "
              "gives the table above its intervals)")
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lossgym`` command."""
    parser = argparse.ArgumentParser(prog="lossgym", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lossgym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="train one task with every built-in loss over seeds")
    cmp.add_argument("--seeds", type=int, default=10, help="number of paired seeds (default 10)")
    cmp.add_argument("--methods", nargs="+", default=None,
                     help="methods to run (default: all built-in losses)")
    cmp.add_argument("--task", default=None,
                     help="a TaskSpec JSON file (default: the default task)")
    cmp.add_argument("--rho", type=float, default=None, help="override the imbalance ratio")
    cmp.add_argument("--dataset", default=None, help="override the dataset")
    cmp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    cmp.add_argument("--output", default=None, help="also write the results as JSON here")
    cmp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cmp.set_defaults(run=_compare)
    for name, (module, what) in AGENT_COMMANDS.items():  # listed in --help; parsed there
        sub.add_parser(name, help=f"{what}: python -m {module} (see lossgym {name} -h)")
    return parser


#: Commands served by the ``agents`` package (the training stack), looked up by module name
#: and imported only when used, so that ``lossgym`` never imports ``agents`` otherwise.
AGENT_COMMANDS = {
    "train": ("agents.train", "train an agent"),
    "evaluate": ("agents.evaluate", "evaluate a run on held-out tasks against the baselines"),
    "export": ("agents.export", "export a trained agent or a baseline as an AdaptiveLoss for "
                                "plain PyTorch training"),
}


def _agent_command(name: str, argv: list[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(AGENT_COMMANDS[name][0])
    except ImportError as err:
        print(f"lossgym: error: lossgym {name} needs the agents package and its training stack "
              f"(pip install 'lossgym[agents]'): {err}", file=sys.stderr)
        return 2
    sys.argv[0] = f"lossgym {name}"
    return module.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lossgym``; errors in the user's input exit with status 2 and a message.

    ``lossgym train``, ``evaluate`` and ``export`` hand their arguments to ``python -m
    agents.train``, ``agents.evaluate`` and ``agents.export``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in AGENT_COMMANDS:
        return _agent_command(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "seeds", 1) < 1:
        parser.error(f"--seeds={args.seeds} is invalid: must be an integer >= 1 (a confidence "
                     "interval needs 2 at least)")
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"lossgym: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
