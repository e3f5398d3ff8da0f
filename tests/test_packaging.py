"""An installed runner works from any folder: the wheel carries the schemas, the built-in
templates and the suites inside the package, and the code finds them there; `runner --version`
and the global -q / -v flags."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import make_workdir, sentiment_rows, write_jsonl

from runner import cli

PROJECT = Path(__file__).resolve().parent.parent
# What a build reads: pyproject.toml names README.md and LICENSE; setup.py copies schemas/ and templates/.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "runner", "schemas", "templates")


def pyproject_version() -> str:
    """The version as written once, in runner/__init__.py (pyproject.toml reads it from there)."""
    text = (PROJECT / "runner" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline with the venv's setuptools from a copy of the sources (so no
    build/ or egg-info lands in the repo): what `pip install .` installs."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (PROJECT / name).is_dir():
            shutil.copytree(PROJECT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(PROJECT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "-q", "-w", str(root / "dist")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (built,) = (root / "dist").glob("runner-*.whl")
    return built


def test_the_wheel_holds_the_schemas_the_builtin_templates_and_the_suites(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert wheel.name.startswith(f"runner-{pyproject_version()}-")
    assert {"runner/schemas/experiment.schema.json", "runner/schemas/report.schema.json"} <= names
    templates = {f"runner/templates/{p.name}" for p in (PROJECT / "templates").glob("*.jinja")}
    assert len(templates) >= 5 and templates <= names
    suites = {
        p.relative_to(PROJECT).as_posix()
        for p in (PROJECT / "runner" / "suites").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {"runner/suites/general/suite.yaml", "runner/suites/replay/general.jsonl"} <= suites <= names
    packages = {p.parent.relative_to(PROJECT).as_posix() for p in (PROJECT / "runner").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names
    entry_points = zipfile.ZipFile(wheel).read(f"runner-{pyproject_version()}.dist-info/entry_points.txt").decode()
    assert "runner = runner.cli:main" in entry_points


def test_installed_runner_finds_its_files_inside_the_package(wheel, tmp_path):
    """The wheel unpacked is runner as installed: far from the repo, it reads its own copies, and
    `runner schema` prints the repo's schema byte for byte."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import runner.spec.types as t; "
        "print(t.__file__, t.SCHEMA_PATH, t.REPORT_SCHEMA_PATH, t.TEMPLATE_DIR, t.SUITES_DIR, sep='\\n'); "
        "t.schema(); from runner.cli import main; main(['schema'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    paths = proc.stdout.splitlines()[:5]
    assert all(Path(p).is_relative_to(site / "runner") for p in paths), paths
    assert Path(paths[3], "ticket_urgency.jinja").is_file() and Path(paths[4], "replay", "rows.jinja").is_file()
    printed = "\n".join(proc.stdout.split("\n")[5:])
    assert printed == (PROJECT / "schemas" / "experiment.schema.json").read_text()


def test_version_prints_the_project_version():
    assert 'attr = "runner.__version__"' in (PROJECT / "pyproject.toml").read_text()
    proc = subprocess.run([sys.executable, "-m", "runner", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"runner {pyproject_version()}\n"
    assert cli.runner_version() == pyproject_version()


def test_quiet_prints_results_and_errors_only(tmp_path, capsys):
    root = make_workdir(tmp_path)
    write_jsonl(root / "data" / "sentiment.jsonl", sentiment_rows() * 2)  # rows repeat across splits: leaks
    spec = str(root / "spec.yaml")
    assert cli.main(["-q", "validate", spec]) == 2  # a failing data check is still said
    assert "[fail] leaks" in capsys.readouterr().err
    warn = ["--set", "data_checks.leaks=warn"]
    assert cli.main(["validate", spec, *warn]) == 0
    assert "data check [warn] leaks" in capsys.readouterr().err
    assert cli.main(["-q", "validate", spec, *warn]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "learning_rate" in out


def test_verbose_shows_the_traceback_of_an_unexpected_failure(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(cli, "cmd_schema", broken)
    monkeypatch.delenv("RUNNER_DEBUG", raising=False)
    assert cli.main(["schema"]) == 1
    err = capsys.readouterr().err
    assert "error: ZeroDivisionError: planted" in err and "Traceback" not in err and "runner -v" in err
    assert cli.main(["-v", "schema"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: ZeroDivisionError: planted" in err
    assert cli.main(["-q", "schema"]) == 1  # -q keeps errors
    assert "error: ZeroDivisionError: planted" in capsys.readouterr().err
