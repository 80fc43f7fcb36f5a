# Two entry points for a fresh machine with Python 3.11 (everything else is installed here):
#   make pipeline   set up, generate the synthetic corpus, run the DVC pipeline (dvc repro),
#                   print a dozen-line summary (every figure: dvc metrics show)
#   make test       set up (and Debian's chromium for the browser tests), run the default
#                   test suite (slow tests excluded)
#   make serve      set up, start the REST service on 127.0.0.1:3000 (the registry's champion;
#                   SERVE_ARGS="--bundle models/bundle --port 3001" to change; README "Serve")
# uv installs from the committed uv.lock, straight from PyPI: it ignores this machine's pip
# configuration, whose local torch +cpu wheel breaks torchvision/timm (DESIGN §6).

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow"

export DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export UV_PYTHON_DOWNLOADS := never
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Bytecode caches under var/pycache, written by the first process that imports a module and
# read by every later one. Where the environment sets PYTHONDONTWRITEBYTECODE (this project's
# machines do), each of the DAG's Python processes (about 30) compiled torch, mlflow and DVC
# again: 4 to 5 s apiece on 2 cores. The prefix keeps __pycache__ folders out of the source
# tree, whose folders are DVC dependencies.
export PYTHONPYCACHEPREFIX := $(CURDIR)/var/pycache
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup browser pipeline test test-all serve bento lint clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(TOOLS)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --locked --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

pipeline: setup
	veracity generate --out data/raw
	dvc repro
	veracity summary

# The browser tests (tests/integration/test_analyst_page.py) drive Debian's chromium; the
# set-up installs it when it is missing (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }; }

test: setup browser
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

serve: setup
	veracity serve $(SERVE_ARGS)

# The service's image (offline): the locked requirements, then bentoml build (it needs uv on PATH).
BENTOFILE ?= serving/bentofile.yaml
bento: setup
	mkdir -p var/bento
	$(UV) export --frozen --no-dev --no-emit-project --no-hashes -o var/bento/requirements.txt >/dev/null
	PATH=$(CURDIR)/$(TOOLS)/bin:$$PATH BENTOML_HOME=$(CURDIR)/var/bentoml bentoml build -f $(BENTOFILE) .

test-all: PYTEST_ARGS =
test-all: test

lint: setup
	$(BIN)/ruff check veracity serving monitoring components pipelines tests bench

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache var/pycache
