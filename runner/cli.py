"""Command line: `runner validate | run | schema`.

Exit codes: 0 success, 2 bad spec or bad data (a message, never a traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from runner.errors import RunnerError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RunnerError as exc:
        print(f"error: {exc.message}" if exc.exit_code != 2 else exc.message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="Declarative instruction fine-tuning: one spec file per experiment."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a spec and print it with every default filled in")
    validate.add_argument("spec", type=Path)
    validate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value (dotted path, YAML value); repeatable",
    )
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="prepare data, train, evaluate and write the run folder")
    run.add_argument("spec", type=Path)
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value (dotted path, YAML value); repeatable",
    )
    run.add_argument("--output-dir", type=Path, help="where run folders go (overrides output_dir)")
    run.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its checkpoints/last.ckpt"
    )
    run.set_defaults(func=cmd_run)

    schema = sub.add_parser("schema", help="print the experiment JSON Schema")
    schema.set_defaults(func=cmd_schema)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from runner.spec import load_spec, to_jsonable

    spec = load_spec(args.spec, args.overrides)
    resolved = to_jsonable(spec)
    resolved.pop("source_path", None)
    print(f"# {args.spec}: valid. Resolved spec (defaults filled in, paths absolute):")
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from runner.report import summary_table
    from runner.run import run_experiment
    from runner.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.resume is not None and not args.resume.is_dir():
        raise RunnerError(f"--resume {args.resume}: not a run folder.")
    run_dir = run_experiment(spec, output_dir=args.output_dir, resume=args.resume)
    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        print()
        print(summary_table(report))
        print(f"\nReport: {run_dir / 'report.md'}")
        print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from runner.spec import SCHEMA_PATH

    print(SCHEMA_PATH.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
