# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv if it is missing, install torch 2.13.0 first (a CPU wheel is
# available offline on these machines; any other spec pulls a multi-GB CUDA build),
# then the project with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The UI test drives Debian's chromium (a browser download at run time cannot work offline).
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

demo: $(STAMP)
	$(BIN)/rightsweep sweep

test: $(STAMP) browser
	$(BIN)/python -m pytest

# Benchmarks (not part of `make test`): regenerates bench/results/ and BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) results .pytest_cache
