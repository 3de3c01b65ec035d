# Two entry points for a fresh machine: `make run` (the default study) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch lies on disk on our machines; elsewhere pip takes it from the index.
PIP_EXTRA := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.installed

.PHONY: run test faults venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_EXTRA) -e '.[test]'
	touch $(STAMP)

# profiles/default (the workflow profile) supplies `cores: all`, `resources: gpu=1` and
# `rerun-incomplete`. A Snakemake killed with -9 leaves its lock behind: released here when no
# Snakemake runs in this directory any more (a live one keeps it).
run: $(STAMP)
	@if [ -n "$$(ls .snakemake/locks 2>/dev/null)" ] && ! for p in $$(pgrep -f 'bin/snakemake' || true); do \
	    [ "$$(readlink /proc/$$p/cwd 2>/dev/null)" = "$$PWD" ] && exit 0; done; then \
	  echo "releasing the lock of a Snakemake that no longer runs here"; $(VENV)/bin/snakemake --unlock -q; fi
	$(VENV)/bin/snakemake

test: $(STAMP)
	$(PY) -m pytest -q

# The fault-injection suite (bad configs, corrupt and deleted files, kills, tracking failures):
# pytest's last line is the summary, "N passed, M failed".
faults: $(STAMP)
	$(PY) -m pytest -q -m faults

bench: $(STAMP)
	$(PY) benchmarks/bench_step.py

clean:
	rm -rf $(VENV)
