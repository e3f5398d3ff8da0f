"""Errors a user can act on: one message, every problem, no traceback."""

from __future__ import annotations


class RunnerError(Exception):
    """An expected failure with a message for the user; the CLI prints it and exits."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProblemsError(RunnerError):
    """Several problems found at once, each a line of `where: what, expected, fix`."""

    exit_code = 2
    what = "input"

    def __init__(self, source: str, problems: list[str], footer: str | None = None, total: int | None = None) -> None:
        self.source = source
        self.problems = list(problems)
        n = total if total is not None else len(self.problems)  # total: when only some are shown
        header = f"{source} is not a valid {self.what} ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems), *([footer] if footer else [])]))


class SpecError(ProblemsError):
    """The spec breaks the schema or a semantic rule."""

    what = "spec"


class TemplateError(ProblemsError):
    """A template cannot serve the spec's model (its fixed text alone is too long)."""

    what = "template for this model"


class TemplateFileError(ProblemsError):
    """A template file cannot be used: unreadable, not valid Jinja, or reaching for other files."""

    what = "template"


class DataError(ProblemsError):
    """Task data cannot be read or a row cannot become a training example."""

    what = "data set"


class RunFolderError(ProblemsError):
    """A run folder given as input (`eval --checkpoint`, `predict`, `export`, `--resume`,
    `--run-dir`) that cannot be used: each problem names the file, what is wrong and the fix."""

    what = "run folder"


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler, `docker stop`) arrived: the run stops, its report
    says `interrupted`, and the process exits 128 + the signal number (130, 143).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it; but not
    a KeyboardInterrupt, which Lightning's fit turns into an exit with code 1.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.detail = ""  # what the run left and how to continue, set by the flow that stopped
        super().__init__(self.name)


class PreflightError(RunnerError):
    """Every problem the pre-flight found, in every input at once: each section is one input's
    ProblemsError (the spec, a data file, a template) with its own header."""

    exit_code = 2

    def __init__(self, errors: list[ProblemsError]) -> None:
        self.errors = list(errors)
        self.problems = [p for e in self.errors for p in e.problems]
        super().__init__("\n".join(e.message for e in self.errors))


def raise_all(errors: list[ProblemsError]) -> None:
    """Raise the problems collected (one error as itself, several as one PreflightError); the
    same message found twice (tasks and runs share sources) is shown once."""
    unique = list({e.message: e for e in errors}.values())
    if len(unique) == 1:
        raise unique[0]
    if unique:
        raise PreflightError(unique)


def collect(errors: list[ProblemsError], step, *args):
    """Run one pre-flight step; its problems join `errors` instead of stopping the others
    (None is returned in their place)."""
    try:
        return step(*args)
    except PreflightError as exc:
        errors.extend(exc.errors)
    except ProblemsError as exc:
        errors.append(exc)
    return None
