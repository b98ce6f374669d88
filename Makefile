# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs cirlab, runs the demo on the built-in world
#   make test   -> installs the dev extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
DEMO_OUT ?= demo-out
EXTRAS ?= dev

.PHONY: demo test install install-dev clean

$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/cpu.txt
	$(PIP) install -q -c requirements/cpu.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c requirements/cpu.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/cirlab demo --out $(DEMO_OUT)

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
