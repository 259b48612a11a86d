# Two entry points for a fresh machine (Python + pip only):
#   make demo   set up, build a real example outputs/ tree, scan, convert, validate, catalog it
#   make test   set up and run the test suite (the same command CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CKPT    = $(VENV)/bin/ckptctl
DEMO   ?= demo-outputs

.PHONY: setup demo test lint bench schema docs tour clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf $(DEMO)
	$(PY) tools/readme_tour.py --build $(DEMO)   # every builder in tools/readme_tour.py BUILDERS
	$(CKPT) scan $(DEMO)
	$(CKPT) convert --outputs-dir $(DEMO)
	$(CKPT) validate --strict --deep $(DEMO)
	$(CKPT) catalog $(DEMO) --best val/hmean
	$(CKPT) catalog $(DEMO) --best val_loss
	$(CKPT) catalog $(DEMO) --best eval_loss

test: setup
	$(PY) -m ruff check ckptctl tests benchmarks examples tools
	$(PY) -m mypy
	$(PY) -m pytest -n 2 --dist loadgroup -q

bench: setup
	$(PY) benchmarks/run_all.py

schema: setup
	$(PY) -m ckptctl.schema > schemas/sidecar-1.0.schema.json

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

docs: setup
	$(PY) tools/cli_docs.py README.md

tour: setup   # README's tour, from a real run of the demo (tests/test_readme_tour.py checks it)
	$(PY) tools/readme_tour.py README.md
