# Two commands for a newcomer: `make run` (pipeline on the demo data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
INSTALL_LOG := $(VENV)/install.log
# Instance template: not in the repo root, where `dagster dev` would warn that it is not used. MONITOR_ENV
# picks it: local (SQLite) or prod (PostgreSQL and the run queue; needs the DAGSTER_PG_* variables).
MONITOR_ENV ?= local
INSTANCE_TEMPLATE := deploy/$(MONITOR_ENV)/dagster.yaml
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: run dev sql test lint bench demo-data screenshots clean

# pip's output (and any build backend's banners) goes to the log; the terminal gets one line, or the
# log's tail when the install fails.
$(STAMP): pyproject.toml
	@mkdir -p $(VENV)
	@echo "installing monitor_assets[dev] into $(VENV) (log: $(INSTALL_LOG))"
	@{ $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/python -m pip install --upgrade pip \
	  && $(BIN)/python -m pip install -e '.[dev]'; } > $(INSTALL_LOG) 2>&1 \
	  || { tail -n 25 $(INSTALL_LOG); echo "install failed: full output in $(INSTALL_LOG)" >&2; exit 1; }
	@touch $(STAMP)

# Refreshed when the template is newer; a previous copy (maybe edited) is kept beside it.
$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE_TEMPLATE)
	@mkdir -p "$(DAGSTER_HOME)"
	@if [ -f "$@" ]; then cp "$@" "$@.bak" && echo "refreshed $@ from $(INSTANCE_TEMPLATE) (previous: $@.bak)"; fi
	@sed 's#{env: DAGSTER_HOME}#"$(DAGSTER_HOME)"#' $(INSTANCE_TEMPLATE) > "$@"  # runner.instance_yaml does the same

run: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	@$(BIN)/python -m monitor_assets.run_pipeline

# A supervisor runs `dagster dev` and stops all of it on Ctrl-C, SIGTERM or SIGHUP, also when started from
# a script or a service manager (where `dagster dev` alone ignores them). `make dev PORT=3001`, or $MONITOR_UI_PORT.
PORT ?= $(or $(MONITOR_UI_PORT),3000)
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m monitor_assets.devtools.dev --host 127.0.0.1 --port $(PORT)

# An SQL shell on the warehouse (read-only; the tables by their documented names).
sql: $(STAMP)
	@$(BIN)/python -m monitor_assets.query -i

# The suite's test files shared out over the cores (at most 4: the daemon tests start processes of their own);
# one file's tests stay on one worker with its module fixtures, the slowest files first (conftest's SLOW_FIRST).
# `make test TEST_WORKERS=0` runs them all in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check monitor_assets monitor_assets_tests benchmarks

screenshots: $(STAMP)
	$(BIN)/python -m monitor_assets.devtools.screenshots

demo-data: $(STAMP)
	$(BIN)/python -m monitor_assets.demo.generate

clean:
	rm -rf warehouse reports .dagster_home
