# One venv, installed from scratch when absent. `make test` is what CI runs (.ci/run).
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast quickstart bench clean

$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	# bfcl-eval's declared deps pull ~6 GB and pin numpy 1.26; its multi-turn code needs only mpmath.
	$(VPY) -m pip install -q --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

quickstart: $(STAMP)
	$(VPY) -m launch.quickstart --workdir=runs/quickstart

bench: $(STAMP)
	$(VPY) -m launch.benchmark --suite=all --min_stopped_frac=1.0 --cohorts=2 --out=docs/benchmarks/cpu_lab.json

clean:
	rm -rf $(VENV) runs
