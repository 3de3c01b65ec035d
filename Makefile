# Two entry points for a fresh machine: `make run` (the default study) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch lies on disk on our machines; elsewhere pip takes it from the index.
PIP_EXTRA := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.installed

.PHONY: run test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_EXTRA) -e '.[test]'
	touch $(STAMP)

# profiles/default (the workflow profile) supplies `cores: all` and `resources: gpu=1`
run: $(STAMP)
	$(VENV)/bin/snakemake

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_step.py

clean:
	rm -rf $(VENV)
