# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs cirlab, runs the demo on the built-in world
#   make test   -> installs the dev extras, runs the test suite (test-core, then test-openclip)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
DEMO_OUT ?= demo-out
EXTRAS ?= dev

.PHONY: demo test test-core install install-dev clean test-openclip

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

# the whole suite: the main environment, then open_clip's own (see below)
test: test-core test-openclip

test-core: $(VENV)/.installed-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

# open_clip needs torchvision: its tests run in their own environment (torch 2.14.1 + torchvision 0.29.1).
VENV_OPENCLIP ?= .venv-openclip
$(VENV_OPENCLIP)/.installed: pyproject.toml requirements/openclip.txt
	$(PYTHON) -m venv $(VENV_OPENCLIP)
	$(VENV_OPENCLIP)/bin/python -m pip install -q -r requirements/openclip.txt
	$(VENV_OPENCLIP)/bin/python -m pip install -q -c requirements/openclip.txt -e ".[openclip]" "pytest>=7" "pytest-timeout>=2"
	touch $@

test-openclip: $(VENV_OPENCLIP)/.installed
	$(VENV_OPENCLIP)/bin/python -m pytest -q -p no:cacheprovider tests/test_openclip_backbone.py tests/test_backbones_contract.py tests/test_openclip_clip4cir.py

clean:
	rm -rf $(VENV) $(VENV_OPENCLIP) $(DEMO_OUT) .pytest_cache
