# Two commands on a fresh machine: `make test` and `make demo`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2
BIN := $(VENV)/bin

.PHONY: test demo setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that nothing later lets pip pick a CUDA build by itself.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

demo: setup
	$(BIN)/python -m swinv2 demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
