# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv if it is missing, install torch 2.13.0 first (a CPU wheel is
# available offline on these machines; any other spec pulls a multi-GB CUDA build),
# then the project with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rightsweep sweep

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
