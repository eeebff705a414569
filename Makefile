# The two commands of the README. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: demo test install bench clean

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
# GPU users: install your CUDA torch into .venv first and run `make TORCH=torch ...`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,viz]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graphop demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(VENV)/bin/graphop bench layers
	$(VENV)/bin/graphop bench model

clean:
	rm -rf $(VENV) .pytest_cache
