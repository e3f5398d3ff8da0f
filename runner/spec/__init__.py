"""The spec: one YAML/JSON file read, checked and turned into frozen, typed objects.

Road: load (parse, bounds, overrides, schema) → checks (what the schema cannot say) →
expand (variants, seeds, curve points into runs) → build (typed objects) → written (the
re-runnable form saved in each run folder)."""
