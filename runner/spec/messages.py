"""Schema errors in words: a located line for each problem with what is allowed and the fix."""

from __future__ import annotations

import difflib
import json

import jsonschema

from runner.spec.types import schema


def schema_problems(raw: dict) -> list[str]:
    """Every schema violation of `raw` in words, one entry per error, ordered by path; empty when valid."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    return [_describe(e) for e in errors]


def json_path(parts) -> str:
    """A JSONPath for messages, like $.tasks[0].data, from a jsonschema error's path parts."""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    where = json_path(err.absolute_path)
    got = show_value(err.instance)
    kind, expected = err.validator, err.validator_value
    if kind == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        lines = []
        for key in sorted(set(err.instance) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"allowed keys: {', '.join(allowed)}."
            lines.append(f"{json_path([*err.absolute_path, key])}: unknown key {key!r}; {fix}")
        return "\n  ".join(lines)
    if kind == "required":
        missing = err.message.split("'")[1]
        return f"{where}: missing required key {missing!r}; {_field_help(err.schema, missing)}"
    if kind == "type":
        return f"{where}: got {got}, expected {_type_words(expected)}."
    if kind == "enum":
        hint = difflib.get_close_matches(str(err.instance), [str(v) for v in expected], n=1)
        fix = f"; did you mean {hint[0]!r}?" if hint else "."
        return f"{where}: got {got}, expected one of: {', '.join(map(str, expected))}{fix}"
    if kind == "const":
        return f"{where}: got {got}, expected {show_value(expected)}."
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"{where}: got {got}, expected a value {op} {expected}."
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return f"{where}: got {len(err.instance)} items, expected {word} {expected}."
    if kind == "uniqueItems":
        return f"{where}: got {got}, expected no repeated items."
    if kind in ("minLength", "maxLength"):
        return f"{where}: got {got}, expected {'at least' if kind == 'minLength' else 'at most'} {expected} characters."
    if kind == "pattern":
        return f"{where}: got {got}, expected letters, digits, '_', '.' or '-' (starting with a letter or digit)."
    if kind in ("oneOf", "anyOf"):
        return _describe_alternatives(err, where, got)
    return f"{where}: {err.message}."


def _describe_alternatives(err: jsonschema.ValidationError, where: str, got: str) -> str:
    # A data source is a path string or an object with exactly one of path/hub.
    if isinstance(err.instance, dict) and "properties" in err.schema:
        has = [k for k in ("path", "glob", "hub") if k in err.instance]
        if len(has) >= 2:
            return f"{where}: got {' and '.join(map(repr, has))}, expected exactly one of path, glob, hub."
        if not has and set(err.instance) <= set(resolve_ref("#/$defs/data_source")["properties"]):
            return (
                f"{where}: got none of 'path', 'glob', 'hub', expected one: a local file, a pattern of local files "
                "or a Hugging Face dataset id."
            )
    # An object that fits no object branch (task data: a data_source or split_files): report
    # the problems of the branch whose keys it shares most.
    if isinstance(err.instance, dict):
        branches = {}
        for e in err.context:
            branches.setdefault(e.relative_schema_path[0], []).append(e)
        objects = {
            i: errs
            for i, errs in branches.items()
            if not any(list(e.relative_schema_path) == [i, "type"] for e in errs)
            and _branch_schema(err.validator_value[i]).get("type") == "object"
        }
        if objects:
            keys = set(err.instance)
            best = max(
                objects, key=lambda i: len(keys & set(_branch_schema(err.validator_value[i]).get("properties", {})))
            )
            shallow = [e for e in objects[best] if len(e.relative_schema_path) <= 3 or e.validator == "oneOf"]
            return "\n  ".join(dict.fromkeys(_describe(e) for e in (shallow or objects[best])))
    # Otherwise report the branch whose type matches the value, if exactly one does.
    wrong_type = {e.relative_schema_path[0] for e in err.context if list(e.relative_schema_path)[1:] == ["type"]}
    same_type = [
        e
        for e in err.context
        if e.validator != "type" and len(e.relative_schema_path) <= 2 and e.relative_schema_path[0] not in wrong_type
    ]
    if len(same_type) == 1:
        return _describe(same_type[0])
    shapes = [_branch_words(branch) for branch in err.validator_value]
    return f"{where}: got {got}, expected {' or '.join(shapes)}."


def _branch_schema(branch: dict) -> dict:
    return resolve_ref(branch["$ref"]) if "$ref" in branch else branch


def _branch_words(branch: dict) -> str:
    if "const" in branch:
        return show_value(branch["const"])
    if "$ref" in branch:
        return "an object"
    if branch.get("type") == "array":
        return "a list"
    return _type_words(branch.get("type", "a value"))


def _type_words(expected) -> str:
    words = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "null",
    }
    if isinstance(expected, list):
        return " or ".join(words.get(t, t) for t in expected)
    return words.get(expected, str(expected))


def _field_help(node_schema: dict, key: str) -> str:
    prop = node_schema.get("properties", {}).get(key, {})
    if "$ref" in prop:
        prop = resolve_ref(prop["$ref"])
    return prop.get("description", "add it.")


def show_value(value) -> str:
    """A value for an error line: a string quoted (repr), anything else as JSON, cut to 60 characters."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(exc: Exception) -> str:
    """An exception's message with its line breaks and runs of spaces collapsed, for a one-line error."""
    return " ".join(str(exc).split())


def resolve_ref(ref: str) -> dict:
    """The schema node a local `$ref` ("#/$defs/...") points to; raises KeyError for an unknown ref."""
    node = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node
