"""Bounds on what a user's input may cost: every parser and every template render is held to
these, and a case past one is a located error (exit 2), never a hang or an exhausted machine.

The spec's `limits:` section sets them (schema defaults match `Limits()`); the spec file
itself is read under the fixed SPEC_* bounds, since its own limits cannot be known before it
is read.
"""

from __future__ import annotations

from dataclasses import dataclass

# The spec file (and a run folder's spec.yaml, and every --set value): a hand-written spec is
# a few hundred values a dozen levels deep; these are far above that and far below what makes
# a YAML alias bomb ("billion laughs") or a deeply nested document cost memory or a traceback.
SPEC_MAX_BYTES = 4 * 2**20
SPEC_MAX_VALUES = 100_000  # values after YAML aliases are expanded
SPEC_MAX_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Per-spec bounds on data files and templates (the schema's `limits`)."""

    file_mb: float = 4096.0  # a data file larger than this is refused before it is read
    field_chars: int = 10_000_000  # one cell / JSON string; real exports carry 100 KB+ descriptions
    nesting: int = 64  # depth of a JSON row (objects and lists inside each other)
    template_seconds: float = 2.0  # wall time to render one row
    template_chars: int = 10_000_000  # what one row may render to (and any string a template builds)


DEFAULT_LIMITS = Limits()


def limits_from(values: object) -> Limits:
    """Limits read back from a run folder (inference.json): known keys with positive numbers
    only, the defaults for anything else, so a damaged file cannot lift or break a bound."""
    if not isinstance(values, dict):
        return DEFAULT_LIMITS
    kept = {}
    for name, default in vars(DEFAULT_LIMITS).items():
        value = values.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"):
            kept[name] = type(default)(value)
    return Limits(**kept)
