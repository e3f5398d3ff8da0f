"""Reading data files into rows, by the runner itself: literal paths, bounded sizes, and every
problem located by file, line or row.

`datasets.load_dataset` (used only for the hub) reads a local path as a glob pattern, stops on
CSV fields over 128 KB without naming the row, turns empty CSV cells into None/NaN and ints into
floats, and dies with a RecursionError on a deeply nested JSON row; local files are read here.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from pathlib import Path

from runner.errors import DataError
from runner.limits import DEFAULT_LIMITS, Limits
from runner.spec.types import DATA_EXTENSIONS, DataSource

MAX_PROBLEMS_SHOWN = 20


MAX_GLOB_FILES = 10_000


ROW_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")


# CSV type inference, as pandas did before: ints without leading zeros (IDs and zip codes like
# 007 stay text) and at most 18 digits (longer numbers are IDs, and past int64 for pandas too).
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")


_FLOAT = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


_TOO_LONG = "{:,} characters, over limits.field_chars ({:,}); shorten the field or raise limits.field_chars."


# JSON strings and brackets, to measure a row too deep for json.loads (the error path only).
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


class _Stop(Exception):
    """A problem after which the rest of a file cannot be read (bad bytes, broken quoting)."""


class _Problems:
    """Problems of one source: the first MAX_PROBLEMS_SHOWN kept, all of them counted."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.total = 0
        self.prefix = ""  # the file's name, when a glob source reads several

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.shown) < MAX_PROBLEMS_SHOWN:
            self.shown.append(self.prefix + message)

    def raise_for(self, where: str) -> None:
        if self.total:
            more = self.total - len(self.shown)
            tail = [f"... and {more:,} more problem{'s' if more != 1 else ''}."] if more else []
            raise DataError(where, self.shown + tail, total=self.total)


def read_rows(source: DataSource, limits: Limits = DEFAULT_LIMITS) -> list[dict]:
    """Read a source's rows: a local file, every file a glob matches, or a hub dataset.

    Args:
        source: `path` (opened literally), `glob` (an absolute pattern; files read in sorted
            order, each one's format from its extension unless `format` is set) or `hub`.
        limits: bounds on file size, field length and nesting.

    Returns:
        The rows, in file order. CSV/TSV cells are strings as written (an empty cell is ""),
        except columns whose non-empty cells all look like ints or floats.

    Raises:
        DataError: every problem found, each located by file, line or row.
    """
    where = source.describe()
    if source.path is None and source.glob is None:
        return _read_hub(source, limits)
    problems = _Problems()
    paths = _expand(source.glob, where) if source.glob is not None else [Path(source.path)]
    base = Path(os.path.commonpath([p.parent for p in paths])) if source.glob is not None else None
    rows: list[dict] = []
    csv_rows: list[dict] = []  # types are inferred over a glob's CSV files together
    for path in paths:
        if base is not None:
            problems.prefix = f"{path.relative_to(base)}: "
        fmt = source.format if source.format != "auto" else DATA_EXTENSIONS.get(path.suffix.lower())
        got = _read_file(path, fmt, limits, problems)
        rows.extend(got)
        if fmt in ("csv", "tsv"):
            csv_rows.extend(got)
    problems.raise_for(where)
    _infer_types(csv_rows)
    return rows


def read_text(path: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    """Read a UTF-8 text file (the perplexity and drift probes' text), bounded by `limits.file_mb`.

    Raises:
        DataError: the file is missing, too large, not UTF-8 (located by line) or empty.
    """

    def read() -> str:
        with open(path, encoding="utf-8-sig") as f:  # newlines translated, as Path.read_text did
            text = f.read()
        if not text.strip():
            raise _Stop("the file is empty: no text.")
        return text

    problems = _Problems()
    text = _attempt(path, limits, problems, read)
    problems.raise_for(str(path))
    return text


def _expand(pattern: str, where: str) -> list[Path]:
    """The files a glob matches, sorted; directories skipped and the count capped."""
    found = []
    for name in glob.iglob(pattern, recursive=True):
        if Path(name).is_file():
            found.append(name)
            if len(found) > MAX_GLOB_FILES:
                raise DataError(where, [f"the pattern matches over {MAX_GLOB_FILES:,} files; narrow it."])
    if not found:
        raise DataError(where, [f"the pattern {pattern!r} matches no file; check it (and the folder it starts from)."])
    return [Path(name) for name in sorted(found)]


def _read_hub(source: DataSource, limits: Limits) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        rows = datasets.load_dataset(source.hub, source.config, split=source.split).to_list()
    except Exception as exc:  # datasets, huggingface_hub and fsspec raise many types
        reason = " ".join(str(exc).split())[:300]
        raise DataError(source.describe(), [f"cannot be read from the hub: {reason or type(exc).__name__}"]) from None
    problems = _Problems()
    for number, row in enumerate(rows, 1):
        _check_row(row, f"row {number}", limits, problems)
    problems.raise_for(source.describe())
    return rows


def _read_file(path: Path, fmt: str | None, limits: Limits, problems: _Problems) -> list[dict]:
    """One file's rows; its problems go to `problems` (an unreadable file gives no rows)."""
    if fmt == "text":
        problems.add("format 'text' holds no rows; task data needs .jsonl, .json, .csv, .tsv or .parquet.")
    elif fmt not in ROW_FORMATS:
        problems.add(f"unknown format {path.suffix or fmt!r}; use {', '.join(ROW_FORMATS)} or set format.")
    elif fmt in ("json", "parquet"):
        return _attempt(path, limits, problems, _read_json if fmt == "json" else _read_parquet, path, limits, problems)
    else:
        return _attempt(path, limits, problems, _read_lines, path, fmt, limits, problems)
    return []


def _read_lines(path: Path, fmt: str, limits: Limits, problems: _Problems) -> list[dict]:
    # newline="" lets csv see quoted newlines as written; JSONL lines end at "\n" only.
    with open(path, encoding="utf-8-sig", newline="" if fmt != "jsonl" else "\n") as f:
        if fmt == "jsonl":
            return _read_jsonl(f, limits, problems)
        return _read_csv(f, "\t" if fmt == "tsv" else ",", limits, problems)


def _attempt(path: Path, limits: Limits, problems: _Problems, read, *args):
    """Check the file's size, then `read(*args)`; a problem that stops the file is added, and
    the result is then empty."""
    try:
        if not path.is_file():
            raise _Stop(
                "no such file." if not path.exists() else f"not a file ({'a folder' if path.is_dir() else 'special'})."
            )
        size = path.stat().st_size / 2**20
        if size > limits.file_mb:
            shown = f"{size:,.0f}" if size >= 10 else f"{size:.3g}"
            raise _Stop(
                f"the file is {shown} MB, over limits.file_mb ({limits.file_mb:g}); "
                "raise limits.file_mb or sample the file."
            )
        return read(*args)
    except UnicodeDecodeError:  # located by a second, binary pass: the text reader does not say where
        problems.add(_bad_byte(path))
    except _Stop as exc:
        problems.add(str(exc))
    except OSError as exc:
        problems.add(f"cannot be read: {exc.strerror or exc}.")
    return []


def _bad_byte(path: Path) -> str:
    """Where the first non-UTF-8 byte of a file is: line, byte and (byte) column."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            skip = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                raw[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = skip + exc.start
                return f"line {number}: not UTF-8 (byte 0x{raw[at]:02x} at column {at + 1}); save the file as UTF-8."
    return "not UTF-8 (it ends inside a character); save the file as UTF-8."


def _read_csv(f, delimiter: str, limits: Limits, problems: _Problems) -> list[dict]:
    # csv's own field limit (128 KB by default) stops real exports; field_chars is enforced
    # below with the row and column named. The setting is process-wide, so it is only raised.
    # 2**31 - 1 fits a C long on every platform (a larger value is an OverflowError on Windows).
    csv.field_size_limit(max(csv.field_size_limit(), min(limits.field_chars + 1, 2**31 - 1)))
    reader = csv.reader(f, delimiter=delimiter)
    header: list[str] | None = None
    rows: list[dict] = []
    number, line = 0, 1  # data rows so far; the line the next record starts on
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            # a blank line; a lone empty cell is a row only in a one-column file ("" quoted)
            if not record or (len(record) == 1 and not record[0].strip() and (not header or len(header) > 1)):
                continue
            if header is None:
                header = [name.strip() for name in record]
                seen: dict[str, int] = {}
                for i, name in enumerate(header, 1):
                    if name and name in seen:
                        problems.add(
                            f"header: column {name!r} appears twice (columns {seen[name]} and {i}); rename one."
                        )
                    seen.setdefault(name, i)
                continue
            number += 1
            if len(record) != len(header):
                fields = f"{len(record)} field{'s' if len(record) != 1 else ''}"
                problems.add(
                    f"row {number} (line {start}): {fields}, the header has {len(header)}; "
                    "quote fields that contain the delimiter."
                )
            for name, cell in zip(header, record):
                if len(cell) > limits.field_chars:
                    problems.add(
                        f"row {number} (line {start}), column {name!r}: {_TOO_LONG.format(len(cell), limits.field_chars)}"
                    )
            rows.append(dict(zip(header, record)))
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise _Stop(
                f"row {number + 1} (line {line}): a field over limits.field_chars ({limits.field_chars:,} "
                "characters); shorten the field or raise limits.field_chars."
            ) from None
        raise _Stop(f"row {number + 1} (line {line}): cannot be read as CSV ({exc}).") from None
    if header is None:
        problems.add("the file is empty: no rows.")
    elif not number:
        problems.add("no rows: only a header line.")
    return rows


def _read_jsonl(f, limits: Limits, problems: _Problems) -> list[dict]:
    rows: list[dict] = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(line.rstrip())  # stripped: an error at the line's end stays on this line
        except json.JSONDecodeError as exc:
            problems.add(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).")
            continue
        except RecursionError:  # deeper than the parser's stack: measure it without parsing
            problems.add(f"{where}: {_too_deep(_deepest(line)[0], limits)}")
            continue
        if _check_row(row, where, limits, problems):
            rows.append(row)
    if not rows and not problems.total:
        problems.add("the file is empty: no rows.")
    return rows


def _read_json(path: Path, limits: Limits, problems: _Problems) -> list[dict]:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise _Stop("the file is empty: no rows.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Stop(f"line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    except RecursionError:
        depth, element = _deepest(text)
        raise _Stop(f"row {element + 1}: {_too_deep(depth - 1, limits)}") from None
    del text  # the parsed rows and the text are the two copies held; drop one
    if not isinstance(value, list):
        raise _Stop("expected a JSON list of objects (one per row); for one object per line use .jsonl.")
    if not value:
        raise _Stop("the file holds an empty list: no rows.")
    for number, row in enumerate(value, 1):
        _check_row(row, f"row {number}", limits, problems)
    return value


def _read_parquet(path: Path, limits: Limits, problems: _Problems) -> list[dict]:
    import pyarrow.parquet as pq

    with open(path, "rb") as f:  # a file object: pyarrow never reads the name as a pattern or URI
        try:
            table = pq.read_table(f)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for non-parquet files
            raise _Stop(f"cannot be read as parquet: {' '.join(str(exc).split())[:300]}") from None
    rows = table.to_pylist()
    del table
    for number, row in enumerate(rows, 1):
        _check_row(row, f"row {number}", limits, problems)
    return rows


def _check_row(row: object, where: str, limits: Limits, problems: _Problems) -> bool:
    """Whether a parsed row is an object within the nesting and field bounds (walked without
    recursion: a row may be deeper than Python's stack); each problem is added."""
    if not isinstance(row, dict):
        problems.add(f"{where}: got a {type(row).__name__}, expected a JSON object.")
        return False
    before = problems.total
    deepest = 1
    stack: list[tuple[object, int, str]] = [(row, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        deepest = max(deepest, depth)
        for key, item in items:
            long = isinstance(item, str) and len(item) > limits.field_chars
            if long or isinstance(item, (dict, list)):  # a name is built only for these (speed)
                name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
                if long:
                    problems.add(f"{where}, field {name!r}: {_TOO_LONG.format(len(item), limits.field_chars)}")
                else:
                    stack.append((item, depth + 1, name))
    if deepest > limits.nesting:
        problems.add(f"{where}: {_too_deep(deepest, limits)}")
    return problems.total == before


def _too_deep(depth: int, limits: Limits) -> str:
    if depth <= limits.nesting:  # within the limit but past what json.loads can parse
        return f"nested {depth:,} levels deep, deeper than the JSON parser reads; flatten the row."
    return f"nested {depth:,} levels deep, over limits.nesting ({limits.nesting}); flatten the row."


def _deepest(text: str) -> tuple[int, int]:
    """The deepest bracket nesting in JSON text and the 0-based top-level element reaching it."""
    depth = deepest = element = at = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, element
        elif token in "]}":
            depth -= 1
        elif token == "," and depth == 1:
            element += 1
    return deepest, at


def _infer_types(rows: list[dict]) -> None:
    """Make int-like and float-like CSV columns numbers, in place; empty cells stay ""."""
    names = dict.fromkeys(name for row in rows for name in row)  # a glob's files may differ in columns
    for name in names:
        kind, decimal = None, False  # decimal: a cell with a point or exponent was seen
        for row in rows:
            cell = row.get(name, "")
            if cell == "" or (kind is int and _INT.fullmatch(cell)):
                continue
            if kind is None and _INT.fullmatch(cell):
                kind = int
            elif _FLOAT.fullmatch(cell):
                kind, decimal = float, decimal or any(c in cell for c in ".eE")
            else:
                kind = str
                break
        # a float column needs a point or exponent somewhere: 25-digit IDs are not floats
        if kind is int or (kind is float and decimal):
            converted = [kind(row[name]) if row.get(name, "") != "" else None for row in rows]
            if kind is int or all(v is None or math.isfinite(v) for v in converted):  # 1e999 is inf
                for row, value in zip(rows, converted):
                    if value is not None:
                        row[name] = value
