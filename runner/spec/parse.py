"""Parsing a spec file under fixed bounds (size, depth, values), --set overrides and schema
defaults: raw text to a defaults-filled dict."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from runner.errors import SpecError
from runner.limits import SPEC_MAX_BYTES, SPEC_MAX_DEPTH, SPEC_MAX_VALUES
from runner.spec.messages import one_line, resolve_ref, show_value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: YAML keeps the
    last silently, so a second `training:` block would drop the first without a word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _reject_duplicate_json_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}; keep one")
    return dict(pairs)


def read_spec_file(path: Path) -> dict:
    """A spec file as a dict, read under fixed bounds (size, nesting, values after YAML aliases)."""
    if not path.is_file():
        raise SpecError(str(path), ["file not found; give the path to a .yaml, .yml or .json spec."])
    if path.stat().st_size > SPEC_MAX_BYTES:
        raise SpecError(
            str(path), [f"the file is {path.stat().st_size:,} bytes; a spec is at most {SPEC_MAX_BYTES:,} bytes."]
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            str(path), [f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8."]
        ) from None
    data = parse_spec_text(text, json_text=path.suffix == ".json", source=str(path))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(str(path), [f"$: got {got}, expected a mapping of keys such as name, model, tasks."])
    return data


def parse_spec_text(text: str, json_text: bool, source: str, where: str = "$") -> Any:
    """YAML (or JSON) text as plain data, bounded: duplicate keys, nesting deeper than
    SPEC_MAX_DEPTH and more than SPEC_MAX_VALUES values once aliases are expanded (a "billion
    laughs" bomb expands a few lines into billions) are errors, not a hang or a traceback."""
    try:
        if json_text:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(source, [f"cannot be parsed: {one_line(exc)}"]) from None
    except RecursionError:  # both parsers recurse per nesting level
        raise SpecError(
            source, [f"{where}: nested too deeply; a spec is at most {SPEC_MAX_DEPTH} levels deep."]
        ) from None
    problem = _size_problem(data, where)
    if problem:
        raise SpecError(source, [problem])
    return data


def _size_problem(value: Any, where: str) -> str | None:
    """Count values and depth without recursion, stopping at the first bound passed: walking an
    alias bomb's expanded tree (as validation and error formatting would) never ends."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > SPEC_MAX_VALUES:
            return (
                f"{where}: more than {SPEC_MAX_VALUES:,} values once YAML aliases (*name) are expanded; "
                "a spec is a few hundred values: write the repeated parts out, without nested aliases."
            )
        if depth > SPEC_MAX_DEPTH:
            return f"{where}: nested more than {SPEC_MAX_DEPTH} levels deep; a spec is a few levels deep."
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """Apply `KEY=VALUE` overrides (dotted path; list items by index; value parsed as YAML)."""
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=2.")
            continue
        try:
            value = parse_spec_text(text, json_text=False, source=source, where=f"--set {key}")
        except SpecError as exc:
            problems += [f"--set {show_value(item)}: {p.removeprefix(f'--set {key}: ')}" for p in exc.problems]
            continue
        try:
            set_path(raw, key.split("."), value)
        except (KeyError, IndexError, TypeError) as exc:
            problems.append(f"--set {show_value(item)}: {exc.args[0]}")
    if problems:
        raise SpecError(source, problems)
    problem = _size_problem(raw, "$")
    if problem:
        raise SpecError(source, [problem])
    return raw


def set_path(node: Any, parts: list[str], value: Any) -> None:
    """Set a `--set` value at a dotted path in place, creating missing dict keys on the way.

    Raises:
        IndexError: a list index that is not a number or is out of range (lists never grow).
        TypeError: the path goes through a value that is neither a dict nor a list.
    """
    *parents, last = parts
    for i, part in enumerate(parents):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise TypeError(f"{where} is a {type(node).__name__}, it has no key {parts[i + 1]!r}.")
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(parts))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TypeError(f"{'.'.join(parents)} is a {type(node).__name__}, it has no key {last!r}.")


def _list_index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise IndexError(f"{where}: expected a list index from 0 to {len(items) - 1}.")
    return int(part)


def non_finite(value, path: str = "$") -> list[str]:
    """NaN and infinities pass JSON Schema's number checks (YAML writes them .nan, .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: got {value}, expected a finite number."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{path}[{i}]")]
    return []


def fill_defaults(node_schema: dict, value: Any) -> Any:
    """Fill every missing property that has a `default` in the schema, recursively."""
    if "$ref" in node_schema:
        node_schema = resolve_ref(node_schema["$ref"])
    if isinstance(value, dict) and "properties" in node_schema:
        for key, sub in node_schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = fill_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in node_schema:
        return [fill_defaults(node_schema["items"], v) for v in value]
    return value
