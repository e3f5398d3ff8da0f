"""`runner validate`: the same pre-flight as `runner run`, then the resolved spec, which is itself
a valid spec (defaults filled in, paths absolute)."""

from __future__ import annotations

from pathlib import Path

import yaml

from runner.inputs import print_findings
from runner.preflight import preflight
from runner.spec.types import Spec
from runner.spec.written import written_spec
from runner.training.setup import quiet_libraries


def validate(spec: Spec, source: Path) -> str:
    """Check everything `runner run` checks (data read, templated and checked, the method against
    the model, the strategy, the output folder; what passes here, run accepts), print the data
    checks' findings, and return the resolved spec with a header saying what was checked."""
    quiet_libraries()
    findings = {f.line(): f for inputs in preflight(spec, writes=True) for f in inputs.findings}
    print_findings(list(findings.values()))
    lines = [
        f"# {source}: valid (data, templates, model and settings checked). The resolved spec,",
        "# defaults filled in and paths absolute; itself a valid spec:",
    ]
    if spec.is_experiment:
        runs = ", ".join(f"{i} {r.run.name}" for i, r in enumerate(spec.runs))
        lines.append(f"# An experiment of {len(spec.runs)} runs (--run-index, --only): {runs}.")
    return "\n".join(lines) + "\n" + yaml.safe_dump(written_spec(spec), sort_keys=False)
