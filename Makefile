# The two set-up commands: `make demo` (build, train on demo data, serve, answer) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HNSWLIB_NO_NATIVE := 1

.PHONY: install test demo proto bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# reinstalled only when the package's metadata or a Cython source changed since the last install
STAMP := $(VENV)/.installed
CORE_SOURCES := $(wildcard recserve/_core/*.pyx recserve/_core/*.pxd recserve/_core/*.h)

$(STAMP): $(BIN)/python pyproject.toml setup.py $(CORE_SOURCES)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: install
	$(BIN)/python -m recserve.demo

proto: install
	$(BIN)/python -m recserve.protogen

bench: install
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/python bench/core.py

clean:
	rm -rf build $(VENV) *.egg-info recserve/_core/*.so recserve/_core/*.c
