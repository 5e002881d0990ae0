# qwenbench: `make demo` and `make test` work on a fresh clone; each target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= results
SYNTHETIC ?=
OUT ?=

.PHONY: install demo test lint bench-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing qwenbench and llama-cpp-python (the first install compiles llama.cpp: about 6 minutes on 2 cores)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qwenbench demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check qwenbench tests

# the whole comparison matrix; resumable (rerun continues), SYNTHETIC=1 measures synthetic twins, OUT=file.csv
bench-all: $(STAMP)
	$(BIN)/qwenbench bench --config configs/bench-all.toml --resume $(if $(SYNTHETIC),--synthetic) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
