# nfbuilder: `make demo` runs word_count on the embedded engine; `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint typecheck regen proto check-proto bench-map bench-engine bench-parallel clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

# Debian packages the tests need (a real Redis for the state store); root on CI machines.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

setup: $(STAMP) system-deps

demo: setup
	$(BIN)/python scripts/demo.py

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check nfbuilder tests apps bench
	$(BIN)/mypy nfbuilder

regen: setup
	$(BIN)/python scripts/regen_golden.py

proto: setup
	$(BIN)/python scripts/gen_proto.py

check-proto: setup
	$(BIN)/python scripts/gen_proto.py --check

bench-map: setup
	$(BIN)/python bench/map_vertex.py

bench-engine: setup
	$(BIN)/python bench/engine.py

bench-parallel: setup
	$(BIN)/python bench/parallel.py

clean:
	rm -rf build .nfbuilder $(VENV)
