# Two entry points for a fresh machine (Python + pip only):
#   make demo   set up, build a real example outputs/ tree, scan, convert, validate, catalog it
#   make test   set up and run the test suite (the same command CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CKPT    = $(VENV)/bin/ckptctl
DEMO   ?= demo-outputs

.PHONY: setup demo test lint bench schema docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf $(DEMO) $(DEMO).tf
	$(PY) examples/build_example_tree.py $(DEMO)
	$(PY) examples/build_tf_tree.py $(DEMO).tf && mv $(DEMO).tf/* $(DEMO)/ && rmdir $(DEMO).tf
	$(CKPT) scan $(DEMO)
	$(CKPT) convert --outputs-dir $(DEMO)
	$(CKPT) validate --strict --deep $(DEMO)
	$(CKPT) catalog $(DEMO) --best val/hmean
	$(CKPT) catalog $(DEMO) --best val_loss

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
