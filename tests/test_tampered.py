"""Run folders are input too: a corpus of tampered run folders through the real command line.

One real tiny run is made once for the module (random-tiny, one optimizer step); each case
copies it, changes one thing as a damaged disk, a careless edit or a hostile sender would, and
runs the command that reads it (`predict`, `export`, `eval --checkpoint`, `run --resume`,
`run --run-dir`, `runs`). Each must: exit with the case's code (2: the input is at fault; 0
for `runner runs`, which lists an unreadable report as a row), name the file on stderr, print
no traceback, write nothing anywhere (the case's whole folder is the same before and after),
and never unpickle: the pickles here would create MARKER, which must never appear.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import base_spec, make_workdir, write_spec
from corpus import alias_bomb
from test_bad_inputs import cli  # noqa: F401 (the in-process `runner` fixture)

from runner.errors import RunFolderError, RunnerError

MARKER = "MARKER"  # what the pickles here would create if anything unpickled them


class Payload:
    """Unpickling this creates the marker file: proof that code from a file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def tiny_spec(root: Path) -> Path:
    spec = base_spec()
    spec["training"] = {**spec["training"], "epochs": 1, "max_steps": 1}
    spec["evaluation"] = {**spec["evaluation"], "bootstrap_samples": 10, "baselines": ["majority", "fine_tuned"]}
    return write_spec(root / "spec.yaml", spec)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the run folder, its spec) of one real run, made once for the module."""
    root = tmp_path_factory.mktemp("tampered-base")
    make_workdir(root)
    spec = tiny_spec(root)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (root / "runs" / "tiny").iterdir()
    return run_dir, spec


# --- ways to tamper ---------------------------------------------------------------------------

Tamper = Callable[[Path, Path], None]  # (the run folder's copy, the case folder)


def edit_json(relative: str, change: Callable[..., object]) -> Tamper:
    """Change a JSON file of the run in place (`change(data)` edits it, or returns the new data)."""

    def tamper(run: Path, root: Path) -> None:
        data = json.loads((run / relative).read_text())
        result = change(data)
        (run / relative).write_text(json.dumps(data if result is None else result))

    return tamper


def edit_inference(change: Callable[[dict], object]) -> Tamper:
    return edit_json("inference.json", change)


def write(relative: str, content: str | bytes | Callable[[Path, Path], str | bytes]) -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        value = content(run, root) if callable(content) else content
        path = run / relative
        path.unlink(missing_ok=True)
        path.write_bytes(value) if isinstance(value, bytes) else path.write_text(value)

    return tamper


def remove(*relative: str) -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        for name in relative:
            (run / name).unlink()

    return tamper


def cut(relative: str, keep: float = 0.5) -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        data = (run / relative).read_bytes()
        (run / relative).write_bytes(data[: int(len(data) * keep)])

    return tamper


def pickled_checkpoint(run: Path, root: Path) -> bytes:
    """A zip checkpoint as torch.save writes it, whose pickle calls open(MARKER, "w")."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "hyper_parameters": Payload(root / MARKER)}, buffer)
    return buffer.getvalue()


def raw_pickle(run: Path, root: Path) -> bytes:
    """The old, non-zip pickle format, with the same payload."""
    return pickle.dumps({"state_dict": Payload(root / MARKER)})


def link(relative: str, target: str, content: str = "secret {{ text }}\n|||\n{{ sentiment }}\n") -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        (root / target).write_text(content)
        (run / relative).unlink()
        (run / relative).symlink_to(root / target)

    return tamper


def outside_checkpoint_paths(run: Path, root: Path) -> None:
    """last.ckpt's ModelCheckpoint state names a file outside checkpoints/ through `..`: Lightning
    would load it as the best checkpoint and delete it once a better epoch is saved."""
    (root / "victim.txt").write_text("the user's file")
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    victim = str(run.resolve() / "checkpoints" / ".." / ".." / "victim.txt")
    for key, value in state["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            value.update(dirpath=str(run.resolve() / "checkpoints"), best_model_path=victim)
            value.update(kth_best_model_path=victim, best_k_models={victim: torch.tensor(1e9)})
    torch.save(state, last)


def both(*tampers: Tamper) -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        for one in tampers:
            one(run, root)

    return tamper


def hostile_report(name: str, error: str, task: str) -> Tamper:
    def tamper(run: Path, root: Path) -> None:
        report = json.loads((run / "report.json").read_text())
        report.update(name=name, status="failed", error=error, spec_path=error)
        report["model"]["method"] = name
        report["tasks"] = {task: report["tasks"]["sentiment"]}
        (run / "report.json").write_text(json.dumps(report))

    return tamper


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\x08\u202eevil"


# --- the corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the real tampering it stands for
    command: tuple[str, ...]  # {run}: the copy, {spec}: the run's own spec, {local}: a spec in the case folder
    tamper: Tamper | None
    expect: tuple[str, ...]  # substrings of stderr (stdout for `runner runs`)
    code: int = 2


PREDICT = ("predict", "{run}", "--input", "{root}/rows.jsonl")
EXPORT = ("export", "{run}", "--adapter", "{root}/out")
EVAL = ("eval", "{local}", "--checkpoint")
RESUME = ("run", "{spec}", "--resume", "{run}")
SAFETENSORS = "model/adapter_model.safetensors"

CASES = [
    Case("safetensors_truncated", "a copy cut short", PREDICT, cut(SAFETENSORS), (SAFETENSORS, "safetensors")),
    Case("safetensors_garbage", "weights overwritten", EXPORT, write(SAFETENSORS, b"\x00" * 64), (SAFETENSORS,)),
    Case("safetensors_empty", "a zero-byte file (disk full)", PREDICT, write(SAFETENSORS, b""), (SAFETENSORS,)),
    Case(
        "model_pickle",
        "a pickled pytorch_model.bin dropped into model/",
        PREDICT,
        write("model/pytorch_model.bin", raw_pickle),
        ("model/pytorch_model.bin", "pickle"),
    ),
    Case(
        "model_custom_code",
        "tokenizer_config.json asking for custom code",
        EXPORT,
        edit_json("model/tokenizer_config.json", lambda d: d.update(auto_map={"AutoTokenizer": "evil.Tokenizer"})),
        ("model/tokenizer_config.json", "custom code"),
    ),
    Case(
        "model_link_out",
        "model/tokenizer.json a link out",
        PREDICT,
        link("model/tokenizer.json", "t.json", "{}"),
        ("model/tokenizer.json", "link"),
    ),
    Case(
        "inference_list",
        "inference.json a list",
        PREDICT,
        write("inference.json", "[]"),
        ("inference.json", "expected an object"),
    ),
    Case(
        "inference_not_json",
        "inference.json cut short",
        EXPORT,
        cut("inference.json", 0.3),
        ("inference.json", "not valid JSON"),
    ),
    Case(
        "inference_unknown_method",
        "method renamed",
        EXPORT,
        edit_inference(lambda d: d.update(method="qlora")),
        ("inference.json", "$.method", "qlora"),
    ),
    Case(
        "inference_wrong_types",
        "numbers as text, a negative batch",
        PREDICT,
        edit_inference(
            lambda d: d.update(max_length="128", batch_size=-1, chat_template="yes", tasks={"sentiment": 3})
        ),
        ("inference.json", "$.max_length", "$.batch_size", "$.chat_template", "$.tasks.sentiment"),
    ),
    Case(
        "inference_missing_keys",
        "keys deleted",
        PREDICT,
        edit_inference(lambda d: {k: v for k, v in d.items() if k not in ("tasks", "precision")}),
        ("inference.json", "$.tasks: missing", "$.precision: missing"),
    ),
    Case(
        "inference_method_mismatch",
        "method says full, model/ holds an adapter",
        EXPORT,
        edit_inference(lambda d: d.update(method="full")),
        ("model/", "adapter"),
    ),
    Case(
        "template_dotdot",
        "template path ../../x",
        PREDICT,
        edit_inference(lambda d: d["tasks"]["sentiment"].update(template="../../x")),
        ("inference.json", "template", "outside the run folder"),
    ),
    Case(
        "template_absolute",
        "template path absolute, to a file that exists",
        PREDICT,
        both(
            write("../outside.jinja", "{{ text }}\n|||\n{{ sentiment }}\n"),
            lambda run, root: edit_inference(
                lambda d: d["tasks"]["sentiment"].update(template=str(root / "outside.jinja"))
            )(run, root),
        ),
        ("inference.json", "template", "outside the run folder"),
    ),
    Case(
        "template_link_out",
        "templates/ copy replaced by a link out",
        PREDICT,
        link("templates/sentiment.jinja", "secret.jinja"),
        ("inference.json", "template", "outside the run folder"),
    ),
    Case(
        "input_missing",
        "--input names no file",
        ("predict", "{run}", "--input", "{root}/missing.jsonl"),
        None,
        ("--input", "no such file"),
    ),
    Case(
        "eval_pickle_ckpt",
        "a .ckpt whose pickle runs code",
        (*EVAL, "{run}/checkpoints/last.ckpt"),
        write("checkpoints/last.ckpt", pickled_checkpoint),
        ("last.ckpt", "unpickling it could run code"),
    ),
    Case(
        "eval_raw_pickle",
        "a .ckpt that is a bare pickle, not a zip",
        (*EVAL, "{run}/checkpoints/last.ckpt"),
        write("checkpoints/last.ckpt", raw_pickle),
        ("last.ckpt", "zip"),
    ),
    Case(
        "eval_ckpt_truncated",
        "a checkpoint cut short",
        (*EVAL, "{run}/checkpoints/last.ckpt"),
        cut("checkpoints/last.ckpt"),
        ("last.ckpt", "cannot be read as a checkpoint"),
    ),
    Case(
        "eval_not_a_model",
        "--checkpoint at report.json",
        (*EVAL, "{run}/report.json"),
        None,
        ("report.json", "checkpoints/*.ckpt"),
    ),
    Case(
        "eval_model_truncated",
        "--checkpoint model/ with cut weights",
        (*EVAL, "{run}/model"),
        cut(SAFETENSORS),
        ("adapter_model.safetensors",),
    ),
    Case("eval_run_folder", "--checkpoint at the whole run folder", (*EVAL, "{run}"), None, ("a run folder", "model/")),
    Case(
        "resume_fingerprints_damaged",
        "fingerprints.json cut short",
        RESUME,
        cut("fingerprints.json"),
        ("fingerprints.json", "not valid JSON"),
    ),
    Case(
        "resume_fingerprints_list",
        "fingerprints.json a list",
        RESUME,
        write("fingerprints.json", "[1, 2]"),
        ("fingerprints.json", "not an object"),
    ),
    Case(
        "resume_spec_damaged",
        "spec.yaml cut mid-line",
        RESUME,
        write("spec.yaml", "name: tiny\nmodel: {source: [\n"),
        ("spec.yaml", "cannot be parsed"),
    ),
    Case(
        "resume_spec_bomb",
        "spec.yaml a 'billion laughs'",
        RESUME,
        write("spec.yaml", alias_bomb()),
        ("spec.yaml", "aliases"),
    ),
    Case(
        "resume_spec_not_mapping",
        "spec.yaml a list",
        RESUME,
        write("spec.yaml", "- a\n- b\n"),
        ("spec.yaml", "expected a mapping"),
    ),
    Case(
        "resume_last_garbage",
        "last.ckpt overwritten",
        RESUME,
        write("checkpoints/last.ckpt", b"garbage"),
        ("checkpoints/last.ckpt", "cannot be read"),
    ),
    Case(
        "resume_last_pickle",
        "last.ckpt whose pickle runs code",
        RESUME,
        write("checkpoints/last.ckpt", pickled_checkpoint),
        ("checkpoints/last.ckpt", "unpickling it could run code"),
    ),
    Case(
        "resume_no_header",
        "last.ckpt and spec.yaml both gone",
        RESUME,
        remove("checkpoints/last.ckpt", "spec.yaml"),
        ("no spec.yaml and no checkpoints/last.ckpt",),
    ),
    Case(
        "resume_checkpoint_names_outside",
        "last.ckpt naming ../../victim.txt",
        RESUME,
        outside_checkpoint_paths,
        ("checkpoints/last.ckpt", "ModelCheckpoint", "victim.txt"),
    ),
    Case(
        "run_dir_project_folder",
        "--run-dir at the user's project folder",
        ("run", "{local}", "--run-dir", "{root}"),
        None,
        ("--run-dir", "spec.yaml (not written by runner)", "not empty"),
    ),
    Case("run_dir_dot", "--run-dir .", ("run", "{local}", "--run-dir", "."), None, ("--run-dir", "not empty")),
    Case(
        "run_dir_file",
        "--run-dir at a file",
        ("run", "{local}", "--run-dir", "{root}/rows.jsonl"),
        None,
        ("rows.jsonl", "a file, not a folder"),
    ),
    Case(
        "run_dir_holds_run",
        "--run-dir at a finished run",
        ("run", "{local}", "--run-dir", "{run}"),
        None,
        ("already holds a run", "--resume"),
    ),
    Case(
        "runs_escape_sequences",
        "report.json with escape sequences",
        ("runs", "{root}"),
        hostile_report(ESCAPES, ESCAPES, ESCAPES),
        ("\\x1b]0;pwned\\x07",),
        code=0,
    ),
    Case(
        "runs_huge_strings",
        "report.json with megabyte strings",
        ("runs", "{root}"),
        hostile_report("n" * 2_000_000, "e" * 5_000_000, "t" * 1_000_000),
        ("more characters",),
        code=0,
    ),
    Case(
        "runs_not_a_report",
        "report.json nested 100,000 deep",
        ("runs", "{root}"),
        write("report.json", "[" * 100_000),
        ("unreadable",),
        code=0,
    ),
]


def test_corpus_size() -> None:
    """At least 20 tampered folders, every command that reads a run folder among them."""
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.command[0] if c.command[0] != "run" else c.command[2] for c in CASES}
    assert {"predict", "export", "eval", "--resume", "--run-dir", "runs"} <= commands


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, size and modification time (links not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def stage(case: Case, root: Path, tiny_run: tuple[Path, Path]) -> tuple[Path, list[str]]:
    """The case folder: a project (spec.yaml, data/, templates/, rows.jsonl), the run's copy in
    run/, tampered; and the command line."""
    run_dir, spec = tiny_run
    make_workdir(root)
    local = tiny_spec(root)
    (root / "rows.jsonl").write_text('{"text": "great"}\n{"text": "awful"}\n')
    run = root / "run"
    shutil.copytree(run_dir, run)
    if case.tamper is not None:
        case.tamper(run, root)
    names = {"run": str(run), "spec": str(spec), "local": str(local), "root": str(root)}
    return run, [part.format(**names) for part in case.command]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tampered_run_folder_is_refused(case: Case, tmp_path: Path, tiny_run, cli) -> None:  # noqa: F811
    run, argv = stage(case, tmp_path, tiny_run)
    before = snapshot(tmp_path)
    code, out, err = cli(argv)
    shown = out if case.command[0] == "runs" else err
    problems = []
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    problems += [f"does not name {text!r}" for text in case.expect if text not in shown]
    if (tmp_path / MARKER).exists():
        problems.append("a pickle was unpickled: the marker file exists")
    after = snapshot(tmp_path)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        problems.append(f"files written or changed: {[name for name, _ in changed][:5]}")
    assert not problems, f"{case.id} ({case.what}): " + "; ".join(problems) + f"\n--- stderr ---\n{err[-3000:]}"


def test_runs_prints_no_escape_sequence_and_no_megabyte_line(tmp_path: Path, tiny_run, cli) -> None:  # noqa: F811
    """Text from a report.json reaches the terminal escaped and cut: no ESC, BEL, CR, backspace or
    bidi override, and no line longer than a few hundred characters."""
    for case in [c for c in CASES if c.id in ("runs_escape_sequences", "runs_huge_strings")]:
        root = tmp_path / case.id
        root.mkdir()
        stage(case, root, tiny_run)
        code, out, err = cli(["runs", str(root)])
        assert code == 0, err
        assert not any(ch in out for ch in "\x1b\x07\r\x08\u202e"), repr(out[:500])
        assert max(len(line) for line in out.splitlines()) < 1500


def test_the_untampered_copy_still_predicts_and_exports(tmp_path: Path, tiny_run, cli) -> None:  # noqa: F811
    """The checks refuse tampering, not runner's own folders."""
    run, _ = stage(Case("intact", "", ("runs",), None, ()), tmp_path, tiny_run)
    code, out, err = cli(["predict", str(run), "--input", str(tmp_path / "rows.jsonl")])
    assert code == 0, err[-3000:]
    assert len(out.splitlines()) == 2
    code, _, err = cli(["export", str(run), "--adapter", str(tmp_path / "adapter")])
    assert code == 0, err[-3000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_victim_of_a_checkpoint_state_is_never_touched(tmp_path: Path, tiny_run, cli) -> None:  # noqa: F811
    case = next(c for c in CASES if c.id == "resume_checkpoint_names_outside")
    _, argv = stage(case, tmp_path, tiny_run)
    assert cli(argv)[0] == 2
    assert (tmp_path / "victim.txt").read_text() == "the user's file"


def test_run_dir_takes_a_header_runner_began(tmp_path: Path) -> None:
    """A folder holding only the header a killed rank 0 left (runner's own spec.yaml) is taken;
    the same names written by a user are not."""
    from runner.rundir.experiment import join_experiment
    from runner.rundir.ranks import claim_run_dir

    begun = tmp_path / "begun"
    begun.mkdir()
    (begun / "spec.yaml").write_text("# The resolved spec of this run: every default filled in, paths absolute.\n")
    (begun / "splits.json.tmp").write_text("{")
    assert claim_run_dir(begun) == begun
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spec.yaml").write_text(yaml.safe_dump(base_spec()))
    with pytest.raises(RunFolderError, match="spec.yaml \\(not written by runner\\)"):
        claim_run_dir(mine)
    with pytest.raises(RunFolderError, match="not an experiment folder"):
        join_experiment(mine, None, lambda: None)
    assert sorted(p.name for p in mine.iterdir()) == ["spec.yaml"]  # not even the lock file


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while writing a run-folder file: a RunnerError naming the file and the fix, and no
    temporary file left."""
    from runner.rundir.folder import write_json, write_text

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(RunnerError) as caught:
        write_json(tmp_path / "report.json", {"a": 1})
    assert caught.value.exit_code == 1
    assert caught.value.message == (
        f"cannot write {tmp_path / 'report.json'}: No space left on device; free space or choose another output_dir."
    )
    with pytest.raises(RunnerError, match="cannot write .*spec.yaml: No space left on device"):
        write_text(tmp_path / "spec.yaml", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_end_of_a_run_is_in_its_report(tmp_path: Path, monkeypatch, cli) -> None:  # noqa: F811
    """The run's guard records the write failure (report.json says failed, naming the file) and
    the command exits 1 with the same line, no traceback."""
    make_workdir(tmp_path)
    spec = tiny_spec(tmp_path)
    original = Path.write_text

    def full_for_reports(self, *args, **kwargs):
        if self.name == "report.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_reports)
    code, _, err = cli(["eval", str(spec), "--base"])
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert "cannot write" in err and "report.md: No space left on device; free space" in err
    (report,) = (tmp_path / "runs").rglob("report.json")
    data = json.loads(report.read_text())
    assert data["status"] == "failed" and "report.md: No space left on device" in data["error"]


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    from runner.terminal import printable

    assert printable("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert printable("a\u202eb\ud800c") == "a\\u202eb\\ud800c"
    assert printable("line\nnext") == "line\\nnext" and printable("line\nnext", newlines=True) == "line\nnext"
    assert printable("é ü 中文 🙂") == "é ü 中文 🙂"
    assert printable("x" * 1000, 10) == "x" * 10 + "… (990 more characters)"


def test_compare_prints_a_crafted_reports_text_escaped(tmp_path, capsys):
    """`runner compare` prints text that came from run folders: escape sequences are shown, not obeyed."""
    import json

    from runner.cli import main

    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        report = {
            "name": f"run\x1b]0;pwned\x07{name}",
            "status": "complete",
            "primary_task": "t",
            "tasks": {
                "t\x1b[2J": {"kind": "classification", "data": {}, "test": {"fine_tuned": {"accuracy": 0.5, "n": 4}}}
            },
        }
        (folder / "report.json").write_text(json.dumps(report))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out
