# Two commands on a fresh machine: `make test` and `make demo`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2
BIN := $(VENV)/bin

.PHONY: test demo setup clean fashion-mnist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that nothing later lets pip pick a CUDA build by itself.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test,tensorboard]"
	touch $@

setup: $(VENV)/.installed

test: setup fashion-mnist
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

# The main job: train a small SwinV2 on Fashion-MNIST (Debian's dataset-fashion-mnist, installed when missing).
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=
demo: setup fashion-mnist
	$(BIN)/python -m swinv2 train fashion-mnist data.train_path=$(FASHION_MNIST) data.val_path=$(FASHION_MNIST) $(DEMO_ARGS)

fashion-mnist:
	@test -e $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { \
	  command -v apt-get >/dev/null && { apt-get install -y dataset-fashion-mnist || \
	    { apt-get update && apt-get install -y dataset-fashion-mnist; }; }; } || { \
	  echo "Fashion-MNIST is not at $(FASHION_MNIST) and apt-get could not install dataset-fashion-mnist."; \
	  echo "Put the four IDX .gz files in a folder and run: make demo FASHION_MNIST=/that/folder"; exit 1; }

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
