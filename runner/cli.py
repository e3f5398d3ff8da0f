"""Command line: `runner validate | preview | plan | run | eval | compare | predict | export | runs | schema`.

Exit codes: 0 success, 2 bad spec or bad data (a message, never a traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from runner.errors import Interrupted, RunFolderError, RunnerError
from runner.terminal import printable
from runner.training.memory import bound_kernel_caches


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `runner` script; returns the process exit code instead of raising.

    Every failure becomes one line on stderr: a RunnerError its own exit code (2 for bad spec or
    data), Ctrl-C 130, anything else 1 (-v adds the traceback; RUNNER_DEBUG=1 re-raises it).
    """
    bound_kernel_caches()  # before any matmul: both caches are read on first use
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with verbosity(args.quiet, args.verbose):
            return args.func(args)
    except RunnerError as exc:
        print(f"error: {exc.message}" if exc.exit_code != 2 else exc.message, file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # the run's report says so and names the resume command
        print(f"\ninterrupted by {exc.name}; {exc.detail}".rstrip("; "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the machine (out of memory, a full disk) or a bug: one clear line
        if os.environ.get("RUNNER_DEBUG"):
            raise
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split())[:500]
        hint = "" if args.verbose else "\n(runner -v shows the traceback)"
        print(f"error: {type(exc).__name__}: {message}{hint}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def verbosity(quiet: bool, verbose: bool):
    """-q: stderr carries errors only (main prints them after this block; progress lines, data-check
    findings, scoring bars and warnings go nowhere); -v: the libraries' warnings and runner's info log.
    RUNNER_QUIET / RUNNER_VERBOSE tell quiet_libraries (and a trainer's progress bar) for the command."""
    stderr, name = sys.stderr, "RUNNER_QUIET" if quiet else "RUNNER_VERBOSE" if verbose else ""
    if name:
        os.environ[name] = "1"
    if quiet:
        sys.stderr = open(os.devnull, "w")  # left open: a library's log handler may hold it
    if verbose:
        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("runner").setLevel(logging.INFO)
    try:
        yield
    finally:
        sys.stderr = stderr
        os.environ.pop(name, None)


def runner_version() -> str:
    """`runner --version`: runner.__version__, the one place the version is written (pyproject.toml
    reads it too), so a source tree and an installed wheel say the same."""
    from runner import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its options; each sets `func`, the `cmd_*` handler `main` calls."""
    parser = argparse.ArgumentParser(
        prog="runner", description="Declarative instruction fine-tuning: one spec file per experiment."
    )
    parser.add_argument("--version", action="version", version=f"runner {runner_version()}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="nothing on stderr but errors")
    loudness.add_argument("-v", "--verbose", action="store_true", help="also library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a spec and print it with every default filled in")
    validate.add_argument("spec", type=Path)
    add_overrides(validate)
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="prepare data, train, evaluate and write the run folder")
    run.add_argument("spec", type=Path)
    add_overrides(run)
    run.add_argument("--output-dir", type=Path, help="where run folders go (overrides output_dir)")
    run.add_argument(
        "--smoke",
        action="store_true",
        help="the spec's own data, templates, method and report end to end in about a minute: a random "
        "2-layer model with the spec model's tokenizer, a few steps, a few test rows, no few-shot or probes",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its checkpoints/last.ckpt; for an experiment, its folder: "
        "runs only the runs that did not finish",
    )
    run.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="use this run folder (the same on every rank of a multi-process run started by torchrun, srun, ...); "
        "for an experiment, the experiment folder that several jobs share: created by the first, joined by the "
        "others (same spec only); the job that completes the last run writes the comparison",
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="an experiment: run only this variant (or run); repeatable",
    )
    run.add_argument(
        "--run-index",
        type=int,
        action="append",
        metavar="N",
        help="an experiment: run only its run number N (0-based, in the order runner validate lists them), "
        "e.g. --run-index $SLURM_ARRAY_TASK_ID; repeatable, combines with --only",
    )
    run.add_argument(
        "--reclaim",
        action="store_true",
        help="an experiment: also train runs marked running by a job on another machine (one that is gone; "
        "a job on this machine is checked, one elsewhere cannot be)",
    )
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("eval", help="evaluate without training: the base model, and a checkpoint if given")
    evaluate.add_argument("spec", type=Path)
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="a run's checkpoints/*.ckpt or its model/ folder")
    which.add_argument("--base", action="store_true", help="only the untouched base model")
    add_overrides(evaluate)
    evaluate.add_argument("--output-dir", type=Path, help="where run folders go (overrides output_dir)")
    evaluate.set_defaults(func=cmd_eval)

    compare = sub.add_parser(
        "compare",
        help="write a side-by-side table of several runs (markdown and html); given one experiment folder, "
        "write its comparison again",
    )
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument(
        "--output", type=Path, default=Path("."), help="folder for compare.md and compare.html (default: .)"
    )
    compare.set_defaults(func=cmd_compare)

    preview = sub.add_parser(
        "preview", help="show what the model will see: rendered rows, tokens, loss tokens, truncation, data checks"
    )
    preview.add_argument("spec", type=Path)
    preview.add_argument("--rows", type=int, default=3, help="rows shown per task (default 3)")
    preview.add_argument("--split", choices=("train", "val", "test"), default="train", help="split to show rows of")
    preview.add_argument("--json", action="store_true", help="one JSON object per row, for scripts")
    add_overrides(preview)
    preview.set_defaults(func=cmd_preview)

    plan = sub.add_parser(
        "plan", help="what a run will cost: data, steps, parameters, estimated time and memory (a few timed steps)"
    )
    plan.add_argument("spec", type=Path)
    plan.add_argument("--json", action="store_true", help="the plan as one JSON object")
    add_overrides(plan)
    plan.set_defaults(func=cmd_plan)

    predict = sub.add_parser(
        "predict", help="apply a finished run's template and model to new rows; one JSON line of predictions per row"
    )
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    predict.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="rows as JSONL, CSV, TSV, JSON or Parquet; '-' reads standard input",
    )
    predict.add_argument(
        "--output", type=Path, metavar="FILE", help="where the JSON lines go (default: standard output)"
    )
    predict.add_argument("--task", help="which of the run's tasks (default: its primary task)")
    predict.add_argument("--format", choices=("jsonl", "json", "csv", "tsv", "parquet"), help="the input's format")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a run's model as a Hugging Face folder: merged, or the adapter")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--merged", type=Path, metavar="OUT", help="plain weights for AutoModelForCausalLM.from_pretrained (no peft)"
    )
    target.add_argument("--adapter", type=Path, metavar="OUT", help="the peft adapter, for PeftModel.from_pretrained")
    dtypes = ("fp32", "bf16", "fp16")
    export.add_argument("--dtype", choices=dtypes, default="fp32", help="the weights' dtype, an adapter's too")
    export.set_defaults(func=cmd_export)

    runs = sub.add_parser("runs", help="every run under a folder: status, age, results, how to continue stopped ones")
    runs.add_argument("folder", type=Path, nargs="?", default=Path("runs"), metavar="DIR", help="default: ./runs")
    runs.set_defaults(func=cmd_runs)

    schema = sub.add_parser("schema", help="print the experiment JSON Schema")
    schema.set_defaults(func=cmd_schema)
    return parser


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable `--set KEY=VALUE` option, collected into `args.overrides` for load_spec."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value (dotted path, YAML value, validated like the file); repeatable",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the same pre-flight as `runner run`, then print the resolved spec, itself a valid spec."""
    from runner.flows.validate import validate
    from runner.spec.load import load_spec

    print(validate(load_spec(args.spec, args.overrides), args.spec), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train a single run or an experiment's runs, then print the results (a single run's on rank 0 only).

    Raises:
        RunnerError: --resume is not a folder, or experiment-only options are given for a single run.
    """
    from runner.flows.run import run_spec
    from runner.rundir.ranks import is_rank_zero
    from runner.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides, smoke=args.smoke)
    if args.resume is not None and not args.resume.is_dir():
        raise RunFolderError(f"--resume {args.resume}", ["not a folder; give the run folder `runner run` printed."])
    if spec.smoke:
        print(f"Smoke run {spec.name}: leaves out {'; '.join(spec.smoke)}.", file=sys.stderr)
    if spec.is_experiment:
        from runner.flows.experiment import experiment_summary, run_experiment_runs

        if args.resume is not None and args.run_dir is not None:
            raise RunnerError("--resume and --run-dir both name the experiment folder; give one of them.")
        parent = run_experiment_runs(
            spec,
            output_dir=args.output_dir,
            resume=args.resume,
            only=args.only,
            run_dir=args.run_dir,
            indices=args.run_index,
            reclaim=args.reclaim,
        )
        print(printable(experiment_summary(parent, shared=args.run_dir is not None), limit=None, newlines=True))
        return 0
    if args.only or args.run_index or args.reclaim:
        raise RunnerError(
            "--only, --run-index and --reclaim pick runs of an experiment; this spec has no variants, seeds or curve."
        )
    run_dir = run_spec(spec, output_dir=args.output_dir, resume=args.resume, run_dir=args.run_dir)
    if is_rank_zero():  # other ranks of a multi-process strategy have trained; rank 0 reports
        print_summary(run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the base model (`--base`) or a checkpoint into a new run folder, without training."""
    from runner.flows.evaluate import evaluate_spec
    from runner.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    run_dir = evaluate_spec(spec, None if args.base else args.checkpoint, output_dir=args.output_dir)
    print_summary(run_dir)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Print rendered rows, tokens and data checks; needs the tokenizer, not the model weights."""
    from runner.flows.preview import preview
    from runner.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    print(preview(spec, args.rows, args.split, args.json))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the cost estimate of a run, or of each run of an experiment; `--json` for scripts."""
    from runner.flows.plan import plan, plan_text
    from runner.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    if spec.is_experiment:
        from runner.flows.plan import experiment_plan_text, plan_experiment

        result = plan_experiment(spec)
        print(json.dumps(result, indent=2) if args.json else experiment_plan_text(result))
        return 0
    result = plan(spec)
    print(json.dumps(result, indent=2) if args.json else plan_text(result))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare run folders side by side; one experiment folder alone rewrites its own comparison."""
    from runner.flows.compare import compare

    md_path, html_path, markdown = compare(args.run_dirs, args.output)
    print(printable(markdown, limit=None, newlines=True))  # run names and task names come from files
    print(f"Written: {md_path} and {html_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict new rows with a finished run; predictions go to `--output` or stdout, the tally to stderr."""
    from runner.flows.predict import predict
    from runner.report.cells import plural, share
    from runner.training.setup import quiet_libraries

    quiet_libraries()
    summary = predict(args.run_dir, args.input, args.output, args.task, args.format)
    where = f" to {args.output}" if args.output else ""
    line = f"{plural(summary['rows'], 'row')} predicted{where}."
    if summary["with_gold"]:
        right = round(summary["accuracy"] * summary["with_gold"])
        line += f" {right:,} of the {plural(summary['with_gold'], 'row')} with a label predicted right ({share(summary['accuracy'])})."
    print(line, file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's model as a Hugging Face folder: merged weights or the peft adapter."""
    from runner.flows.export import export
    from runner.training.setup import quiet_libraries

    quiet_libraries()
    out = export(args.run_dir, args.merged or args.adapter, merged=args.merged is not None, dtype=args.dtype)
    how = "AutoModelForCausalLM.from_pretrained" if args.merged else "PeftModel.from_pretrained(base_model, ...)"
    print(f"Exported to {out}; load it with {how}.")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List every run under a folder; a missing folder is a RunnerError, not an empty table."""
    from runner.flows.runs import runs_table

    if not args.folder.is_dir():
        raise RunnerError(f"{args.folder}: no such folder; give the output_dir of your specs (runner runs DIR).")
    print(runs_table(args.folder))
    return 0


def print_summary(run_dir: Path) -> None:
    """Print the results table and where the report is; silent when the run wrote no report.json."""
    from runner.report.document import summary_table
    from runner.results import RunResult

    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = RunResult.from_json(json.loads(report_path.read_text()))
        print()
        print(printable(summary_table(report), limit=None, newlines=True))
        print(f"\nReport: {run_dir / 'report.html'} (and report.md)")
        print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the bundled JSON Schema byte for byte, for editors and validators."""
    from runner.spec.types import SCHEMA_PATH

    print(SCHEMA_PATH.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
