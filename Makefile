# The two Quick start commands: `make demo` and `make test`. Both create .venv first when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/convert: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/convert

.PHONY: setup demo test lint
setup: $(BIN)/convert

demo: setup
	$(BIN)/convert torchvision.models:resnet18 --to separable --input-shape 1,3,224,224 -o out/resnet18-separable --overwrite

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2 --durations=10

lint: setup
	$(BIN)/ruff check .
