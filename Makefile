# binome: two-command setup.  `make demo` runs a local cluster; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup deps venv ui oidc-op image path demo test test-unit test-integration test-lab lint clean

setup: deps venv ui oidc-op image path

deps:
	@bash tools/setup-debian.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# The web interface (ui/): `npm ci` when the lock file changed, a build when a source
# did; both skipped when up to date. The build lands in the Python package
# (src/binome/ui_dist, not committed) so that `pip install` ships it.
UI_DIST  := src/binome/ui_dist/index.html
UI_DEPS  := ui/node_modules/.binome-installed
UI_SRC   := $(shell find ui/src -type f 2>/dev/null) ui/index.html ui/vite.config.ts ui/tsconfig.json

$(UI_DEPS): ui/package.json ui/package-lock.json
	@command -v npm >/dev/null || { echo "setup: npm (Node.js 20+) is needed to build the web UI"; exit 1; }
	cd ui && npm ci --no-audit --no-fund
	@touch $@

$(UI_DIST): $(UI_DEPS) $(UI_SRC)
	cd ui && npm run build

ui: $(UI_DIST)

# The test-only OpenID provider (the reference Node.js OP, oidc-provider) that the OpenID
# realm's integration test starts: `npm ci` when its lock file changed, else nothing.
OIDC_OP      := tests/integration/access/oidc_op
OIDC_OP_DEPS := $(OIDC_OP)/node_modules/.binome-installed

$(OIDC_OP_DEPS): $(OIDC_OP)/package.json $(OIDC_OP)/package-lock.json
	@command -v npm >/dev/null || { echo "setup: npm (Node.js 20+) is needed for the OpenID test provider"; exit 1; }
	cd $(OIDC_OP) && npm ci --no-audit --no-fund
	@touch $@

oidc-op: $(OIDC_OP_DEPS)

image: venv
	$(PY) -m binome.lab.image

# `binome` and `binomed` on the PATH: /usr/local/bin links to this clone's venv, so the
# commands `make demo` prints work as printed. A link is (re)pointed here; a file that is
# not a link (someone else's binome) is left alone.
BINDIR ?= /usr/local/bin
path: venv
	@for cmd in binome binomed; do \
	    src="$(abspath $(VENV))/bin/$$cmd"; dst="$(BINDIR)/$$cmd"; \
	    if [ -e "$$dst" ] && [ ! -L "$$dst" ]; then \
	        echo "setup: $$dst is not a link, left alone (run $$src)"; \
	    elif [ "$$(readlink "$$dst")" = "$$src" ]; then :; \
	    elif ln -sfn "$$src" "$$dst" 2>/dev/null; then echo "setup: $$dst -> $$src"; \
	    else echo "setup: cannot write $$dst (not root?): run $$src or add its directory to PATH"; \
	    fi; \
	done

demo: setup
	$(PY) -m binome.lab.demo

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy   # what and how strictly: [tool.mypy] in pyproject.toml

test: setup lint
	$(PY) -m pytest -p no:cacheprovider --durations=30

test-unit: venv
	$(PY) -m pytest -p no:cacheprovider -m unit

test-integration: setup
	$(PY) -m pytest -p no:cacheprovider -m integration

test-lab: setup
	$(PY) -m pytest -p no:cacheprovider -m lab

clean:
	rm -rf $(VENV) .cache build *.egg-info ui/node_modules src/binome/ui_dist $(OIDC_OP)/node_modules
