"""Every `runner …` command a user is shown works as printed: the README's, and those a run, an
interrupted run and `runner runs` print. Resume commands are run for real on random-tiny; the rest
go through the CLI's own parser and the spec loader (what `runner validate` starts with)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT, base_spec, sentiment_rows, write_jsonl, write_spec

from runner.cli import build_parser, main
from runner.spec.load import load_spec

README = PROJECT / "README.md"
# Placeholders the README uses in example commands, and what stands for them here.
PLACEHOLDERS = {
    "SPEC": "experiments/ticket_urgency.yaml",
    "experiments/<spec>": "experiments/ticket_urgency.yaml",
    "<folder>": "RUN_FOLDER",
    "<experiment folder>": "RUN_FOLDER",
    "RUN_DIR": "RUN_FOLDER",
    "EXP_DIR": "RUN_FOLDER",
}
USAGE = re.compile(r"\[|\]| \| |\(--|COMMAND|\.\.\.$")  # a synopsis (`runner run SPEC [--set …]`), not a command


def readme_commands() -> list[str]:
    """Command lines starting with `runner` in the README's code blocks and inline code."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if " runner " in f" {line} ":
                found.append("runner " + line.split("runner ", 1)[1].split(" | ")[0])
    for span in re.findall(r"`(runner [^`]+)`", text):
        if any(
            not word.startswith("-") for word in span.split()[2:]
        ):  # a command, not a name (`runner eval --checkpoint`)
            found.append(span)
    return [c for c in dict.fromkeys(found) if not USAGE.search(c) and "RUNS/..." not in c]


def substituted(command: str, folder: Path) -> list[str]:
    """The command's arguments, placeholders replaced by real paths."""
    for name, value in sorted(PLACEHOLDERS.items(), key=lambda kv: -len(kv[0])):
        command = command.replace(name, value)
    command = re.sub(r"\$\w+", "0", command)  # a launcher's variables ($SLURM_ARRAY_TASK_ID)
    argv = shlex.split(command)[1:]
    return [str(folder) if a == "RUN_FOLDER" else str(PROJECT / a) if a.startswith("experiments/") else a for a in argv]


def check_command(argv: list[str]) -> None:
    """Parse as the CLI does; a command naming a spec file loads it with its overrides."""
    args = build_parser().parse_args(argv)
    spec = getattr(args, "spec", None)
    if spec is not None and Path(spec).is_file():
        load_spec(spec, getattr(args, "overrides", []), smoke=getattr(args, "smoke", False))


def test_every_readme_command_parses_and_its_spec_loads(tmp_path: Path, capsys) -> None:
    commands = readme_commands()
    assert len(commands) > 15 and any("--smoke" in c for c in commands)
    failures, specs = [], {}
    for command in commands:
        argv = substituted(command, tmp_path)
        args = build_parser().parse_args(argv) if argv and argv[0] in ("run", "plan", "validate", "preview") else None
        if args is not None and Path(args.spec).is_file() and not any(o.startswith("trainer.") for o in args.overrides):
            # `runner validate` on what the command runs (a launcher's multi-device settings need its machine)
            specs[(str(args.spec), tuple(args.overrides))] = command
        try:
            check_command(argv)
        except SystemExit as exc:  # argparse exits: 0 for --version, 2 for a bad command line
            if exc.code != 0:
                failures.append(f"{command}: exit {exc.code}")
        except Exception as exc:  # a spec problem
            failures.append(f"{command}: {type(exc).__name__} {exc}")
    assert failures == []
    assert len(specs) >= 5
    for (spec, overrides), command in specs.items():
        code = main(["validate", spec, *[f for o in overrides for f in ("--set", o)]])
        assert code == 0, f"{command}: runner validate exit {code}: {capsys.readouterr().err[-1500:]}"


def printed_commands(text: str) -> list[list[str]]:
    """Every `runner …` command in terminal output, as argv (a command ends at the line's end or a `;`)."""
    return [shlex.split(m)[1:] for m in re.findall(r"runner (?:run|plan|compare|validate) [^\n;]+", text)]


def tiny_workdir(root: Path, rows: int = 40) -> Path:
    """A spec folder whose run takes seconds (random-tiny) and overrides a setting with --set."""
    (root / "data").mkdir(parents=True)
    (root / "templates").mkdir()
    write_jsonl(root / "data" / "sentiment.jsonl", sentiment_rows(rows))
    (root / "templates" / "sentiment.jinja").write_text("Review: {{ text }}\nSentiment:\n|||\n{{ sentiment }}\n")
    return write_spec(root / "spec.yaml", base_spec())


def test_a_runs_printed_commands_work_with_its_overrides(tmp_path: Path, capsys) -> None:
    spec = tiny_workdir(tmp_path)
    assert main(["run", str(spec), "--set", "training.learning_rate=0.004", "--set", "training.epochs=1"]) == 0
    printed = printed_commands(capsys.readouterr().err)
    assert [argv[0] for argv in printed] == ["plan"]  # the plan hint, printed before training
    (plan,) = printed
    # The hint names the run folder's own spec.yaml: the --set values are in it, so the plan is of this run.
    assert load_spec(plan[1]).training.learning_rate == 0.004
    check_command(plan)


def start(spec: Path, *extra: str) -> subprocess.Popen:
    """`runner run SPEC --set training.learning_rate=0.004 …` in its own process, output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "runner", "run", str(spec), "--set", "training.learning_rate=0.004", *extra]
    return subprocess.Popen(
        command, cwd=spec.parent, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def stop_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> str:
    """SIGTERM the run once `ready()` holds; its stderr."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    return err


@pytest.mark.parametrize("when", ["base scoring", "training"])
def test_the_resume_command_an_interrupted_run_prints_finishes_it_as_printed(tmp_path: Path, when: str) -> None:
    spec = tiny_workdir(tmp_path, rows=120)
    runs = tmp_path / "runs"
    if when == "base scoring":  # report.json exists from the start; the first checkpoint comes after base scoring
        ready = lambda: any(runs.rglob("report.json")) and not any(runs.rglob("*.ckpt"))  # noqa: E731
    else:
        ready = lambda: any(runs.rglob("last.ckpt"))  # noqa: E731
    err = stop_when(start(spec, "--set", "training.epochs=2"), ready)
    resumes = [argv for argv in printed_commands(err) if "--resume" in argv]
    assert resumes, err[-2000:]
    argv = resumes[-1]
    done = subprocess.run([sys.executable, "-m", "runner", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = runs.rglob("report.json")
    assert '"status": "complete"' in report.read_text()
    # `runner runs` now shows it complete; before, it showed the same command to continue it.


def test_runner_runs_prints_a_resume_command_that_works(tmp_path: Path, capsys) -> None:
    spec = tiny_workdir(tmp_path, rows=120)
    runs = tmp_path / "runs"
    stop_when(start(spec, "--set", "training.epochs=2"), lambda: any(runs.rglob("last.ckpt")))
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0
    resumes = [argv for argv in printed_commands(capsys.readouterr().out) if "--resume" in argv]
    assert len(resumes) == 1
    check_command(resumes[0])
    assert load_spec(resumes[0][1]).training.learning_rate == 0.004  # the run's own override, kept
