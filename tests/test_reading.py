"""runner.reading: local files read literally, bounded, and every problem located."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runner.data import read as reading
from runner.data.read import read_rows, read_text
from runner.errors import DataError
from runner.limits import Limits
from runner.spec.types import DataSource


def rows_of(path: Path, fmt: str = "auto", limits: Limits | None = None) -> list[dict]:
    return read_rows(DataSource(path=path, format=fmt), limits or Limits())


def problems_of(path: Path | None = None, fmt: str = "auto", limits: Limits | None = None, **source) -> list[str]:
    with pytest.raises(DataError) as info:
        read_rows(DataSource(path=path, format=fmt, **source), limits or Limits())
    return info.value.problems


# --- CSV / TSV ------------------------------------------------------------------------------


def test_csv_fields_over_csv_modules_128k_limit_read_fine(tmp_path):
    # GitHub-issue / JIRA exports: one description far over csv's default 131,072 characters.
    body, huge = "x" * 200_000, "line\n" * 400_000  # 200 KB, and 2 MB with quoted newlines
    path = tmp_path / "issues.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["id", "body"], ["a1", body], ["a2", huge]])
    assert rows_of(path) == [{"id": "a1", "body": body}, {"id": "a2", "body": huge}]


def test_csv_field_limit_set_elsewhere_is_only_raised(tmp_path):
    old = csv.field_size_limit(1000)
    try:
        path = tmp_path / "d.csv"
        path.write_text("text\n" + "y" * 5000 + "\n")
        assert rows_of(path, limits=Limits(field_chars=10_000)) == [{"text": "y" * 5000}]
        assert csv.field_size_limit() >= 10_001
    finally:
        csv.field_size_limit(old)


def test_a_field_past_csvs_own_limit_is_located_and_stops_the_file(tmp_path):
    old = csv.field_size_limit(10)
    try:
        path = tmp_path / "d.csv"
        path.write_text("id,body\n1,ok\n2," + "b" * 500 + "\n3,ok\n")
        assert problems_of(path, limits=Limits(field_chars=100)) == [
            "row 2 (line 3): a field over limits.field_chars (100 characters); "
            "shorten the field or raise limits.field_chars."
        ]
    finally:
        csv.field_size_limit(old)


def test_empty_cells_are_empty_strings_and_numbers_are_inferred_per_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,zip,score,note, name \n1,007,1.5,,Ann\n,012,,x,  Bob \n3,100,2,,\n")
    assert rows_of(path) == [
        {"id": 1, "zip": "007", "score": 1.5, "note": "", "name": "Ann"},
        {"id": "", "zip": "012", "score": "", "note": "x", "name": "  Bob "},  # cells kept as written
        {"id": 3, "zip": "100", "score": 2.0, "note": "", "name": ""},
    ]
    assert isinstance(rows_of(path)[0]["id"], int)


def test_ids_too_long_for_int64_and_infinite_floats_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,x\n1234567890123456789012,1e999\n5,1.0\n")
    assert rows_of(path) == [{"id": "1234567890123456789012", "x": "1e999"}, {"id": "5", "x": "1.0"}]


def test_bom_crlf_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines, one comma",yes\r\n\r\nplain,no\r\n')
    assert rows_of(path) == [{"text": "two\r\nlines, one comma", "label": "yes"}, {"text": "plain", "label": "no"}]


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\na, b\tyes\n")
    assert rows_of(path) == [{"text": "a, b", "label": "yes"}]


def test_csv_structure_problems_are_located(tmp_path):
    dup, ragged, header_only, empty = (tmp_path / f"{n}.csv" for n in ("dup", "ragged", "header", "empty"))
    dup.write_text("text, label,label\na,b,c\n")
    ragged.write_text("text,label\na,b\n\nc,d,e\n")
    header_only.write_text("text,label\n\n")
    empty.write_text(" \n\n")
    assert problems_of(dup) == ["header: column 'label' appears twice (columns 2 and 3); rename one."]
    assert problems_of(ragged) == [
        "row 2 (line 4): 3 fields, the header has 2; quote fields that contain the delimiter."
    ]
    assert problems_of(header_only) == ["no rows: only a header line."]
    assert problems_of(empty) == ["the file is empty: no rows."]


def test_many_problems_are_capped_with_a_true_total(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n" + "1\n" * 30)
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert len(info.value.problems) == 21 and info.value.problems[-1] == "... and 10 more problems."
    assert "(30 problems)" in info.value.message


def test_non_utf8_byte_is_located(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nok,yes\ncaf\xe9 au lait,no\n")
    assert problems_of(path) == ["line 3: not UTF-8 (byte 0xe9 at column 4); save the file as UTF-8."]


# --- literal paths and globs ----------------------------------------------------------------


def test_brackets_in_a_path_are_literal(tmp_path):
    (tmp_path / "run[1]").mkdir()
    (tmp_path / "run1").mkdir()
    (tmp_path / "run[1]" / "t.jsonl").write_text('{"text": "the literal one"}\n')
    (tmp_path / "run1" / "t.jsonl").write_text('{"text": "WRONG: matched as a pattern"}\n')
    assert rows_of(tmp_path / "run[1]" / "t.jsonl") == [{"text": "the literal one"}]


def test_glob_reads_files_sorted_and_formats_by_extension(tmp_path):
    (tmp_path / "b.csv").write_text("text,n\nfrom b,2\n")
    (tmp_path / "a.jsonl").write_text('{"text": "from a", "n": 1}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_text("text,n\nfrom c,3\n")
    rows = read_rows(DataSource(glob=str(tmp_path / "**" / "*.*sv*")), Limits())  # b.csv, sub/c.csv
    assert rows == [{"text": "from b", "n": 2}, {"text": "from c", "n": 3}]
    rows = read_rows(DataSource(glob=str(tmp_path / "*")))  # the folder `sub` is skipped
    assert [r["text"] for r in rows] == ["from a", "from b"]


def test_glob_problems_name_the_file_and_no_match_names_the_pattern(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("text\nok\n")
    (tmp_path / "b.csv").write_text("text,label\nx\n")
    assert problems_of(glob=str(tmp_path / "*.csv")) == [
        "b.csv: row 1 (line 2): 1 field, the header has 2; quote fields that contain the delimiter."
    ]
    monkeypatch.setattr(reading, "MAX_GLOB_FILES", 1)
    assert problems_of(glob=str(tmp_path / "*.csv")) == ["the pattern matches over 1 files; narrow it."]
    pattern = str(tmp_path / "*.parquet")
    assert problems_of(glob=pattern) == [
        f"the pattern {pattern!r} matches no file; check it (and the folder it starts from)."
    ]


# --- bounds ---------------------------------------------------------------------------------


def test_a_file_over_file_mb_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xff not even utf-8 " * 200)  # read, this would be a UTF-8 problem
    assert problems_of(path, limits=Limits(file_mb=0.001)) == [
        "the file is 0.00324 MB, over limits.file_mb (0.001); raise limits.file_mb or sample the file."
    ]


def test_fields_over_field_chars_are_located_by_row_and_field(tmp_path):
    limits = Limits(field_chars=100)
    jsonl, csv_path = tmp_path / "d.jsonl", tmp_path / "d.csv"
    rows = [{"text": "ok"}, {"text": "ok", "meta": {"body": "z" * 101, "tags": ["t" * 150]}}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_path.write_text("id,body\n1,short\n2," + "b" * 120 + "\n")
    over = "over limits.field_chars (100); shorten the field or raise limits.field_chars."
    assert sorted(problems_of(jsonl, limits=limits)) == [
        f"line 2, field 'meta.body': 101 characters, {over}",
        f"line 2, field 'meta.tags[0]': 150 characters, {over}",
    ]
    assert problems_of(csv_path, limits=limits) == [f"row 2 (line 3), column 'body': 120 characters, {over}"]


def test_deep_json_rows_are_nesting_errors_not_recursion_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    deep_object = '{"a": ' * 100 + "1" + "}" * 100
    path.write_text('{"text": "ok"}\n' + "[" * 100_000 + "\n" + deep_object + "\n")
    assert problems_of(path) == [
        "line 2: nested 100,000 levels deep, over limits.nesting (64); flatten the row.",
        "line 3: nested 100 levels deep, over limits.nesting (64); flatten the row.",
    ]
    (problem,) = problems_of(path, limits=Limits(nesting=1_000_000))[:1]  # allowed, but past the parser
    assert problem == "line 2: nested 100,000 levels deep, deeper than the JSON parser reads; flatten the row."
    array = tmp_path / "d.json"
    array.write_text('[{"text": "ok"}, {"x": ' + "[" * 5000 + "]" * 5000 + "}]")
    assert problems_of(array) == ["row 2: nested 5,001 levels deep, over limits.nesting (64); flatten the row."]


# --- JSON, JSONL, Parquet -------------------------------------------------------------------


def test_jsonl_keeps_nulls_absent_keys_and_locates_broken_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a", "label": null}\r\n\r\n{"text": "b"}\r\n')
    assert rows_of(path) == [{"text": "a", "label": None}, {"text": "b"}]
    path.write_text('{"text": "ok"}\n{"text": "broken"\n[1, 2]\n')
    assert problems_of(path) == [
        "line 2: not valid JSON (Expecting ',' delimiter at column 18).",
        "line 3: got a list, expected a JSON object.",
    ]


def test_json_must_be_a_non_empty_list_of_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"text": "one object"}')
    assert problems_of(path) == ["expected a JSON list of objects (one per row); for one object per line use .jsonl."]
    path.write_text("[]")
    assert problems_of(path) == ["the file holds an empty list: no rows."]
    path.write_text('[{"text": "a"}, "b"]')
    assert problems_of(path) == ["row 2: got a str, expected a JSON object."]
    path.write_text('[{"text": "a"},\n {"text": }]')
    assert problems_of(path) == ["line 2: not valid JSON (Expecting value at column 11)."]


def test_parquet_round_trip_with_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "a", "n": 1, "tags": ["x"]}, {"text": None, "n": None, "tags": []}]
    path = tmp_path / "d[1].parquet"  # brackets: read literally here too
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert rows_of(path) == rows


def test_garbage_or_json_in_a_parquet_file_is_located(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text('[{"text": "json, not parquet"}]')
    (problem,) = problems_of(path)
    assert problem.startswith("cannot be read as parquet: ") and "magic" in problem


def test_text_and_unknown_formats_are_not_rows(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "d.xlsx").write_text("x")
    assert "holds no rows" in problems_of(tmp_path / "notes.txt", fmt="text")[0]
    assert problems_of(tmp_path / "d.xlsx")[0].startswith("unknown format '.xlsx'")
    assert problems_of(tmp_path / "missing.csv") == ["no such file."]
    (tmp_path / "folder.csv").mkdir()
    assert problems_of(tmp_path / "folder.csv") == ["not a file (a folder)."]


def test_hub_failures_are_data_errors(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert problems_of(hub="org/set") == ["cannot be read from the hub: Couldn't reach the hub (offline)"]


# --- text -----------------------------------------------------------------------------------


def test_read_text_is_bounded_and_utf8_checked(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\n")
    assert read_text(path) == "line one\nline two\n"
    path.write_bytes(b"fine\nna\xefve\n")
    with pytest.raises(DataError) as info:
        read_text(path)
    assert info.value.problems == ["line 2: not UTF-8 (byte 0xef at column 3); save the file as UTF-8."]
    with pytest.raises(DataError) as info:
        read_text(path, Limits(file_mb=0.000001))
    assert "over limits.file_mb" in info.value.problems[0]
