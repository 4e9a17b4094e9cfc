# The two commands: `make run` (the whole stack, natively) and `make test` (every check).
# Both install what they need first: Debian packages with apt, Python packages in .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help run status stop restart reload logs backup restore migrate test test-fast lint deps system-packages cert lock clean load bench bench-signals bench-supervision bench-rules bench-overload profile

EDGE_PORT      ?= 5000
LOAD_DURATION  ?= 10m
LOAD_PAUSE_MS  ?= 100

help: ## This list: every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: deps ## The whole stack, supervised, in the foreground; HTTPS on :5000; Ctrl-C stops it
	$(PY) -m native.run

status: ## Each component of a running `make run`: state, pid, uptime, restarts
	@$(PY) -m native.run status

stop: ## Stop a `make run` started in another terminal
	@$(PY) -m native.run stop

restart: ## Start component C again, e.g. after its supervisor gave up: make restart C=mtail
	@$(PY) -m native.run restart $(C)

reload: ## New code and configs in place, no failed request: the app, nginx, prometheus, alertmanager (or C=<one>)
	@$(PY) -m native.reload $(C)

logs: ## Follow every component's log, interleaved (.state/logs/<component>/current)
	tail -n 5 -F $${STATE_DIR:-.state}/logs/*/current

backup: ## Every message of a running make run into a file that checks itself (FILE=...; default backups/)
	@$(PY) -m native.backup backup $(FILE)

restore: ## A backup into a running make run's empty store: make restore FILE=... (FORCE=1: add to one not empty)
	@$(PY) -m native.backup restore $(FILE) $(if $(FORCE),--force)

migrate: ## The other topology's messages into the running make run: make migrate TO=cluster (or TO=single; FILE=: its copy)
	@$(PY) -m native.backup migrate $(TO) $(FILE)

test: deps lint ## Lints, then every test (unit and end-to-end on the real native stack)
	$(PY) -m pytest

test-fast: deps ## The tests that start no stack (about 20 s): pytest -m "not stack"
	$(PY) -m pytest -m "not stack"

load: deps ## Realistic traffic against a running `make run` (reads, writes, 404s, bad requests)
	wrk --threads 1 --connections 4 --duration $(LOAD_DURATION) --script loadgen/traffic.lua \
	  https://localhost:$(EDGE_PORT) -- $(LOAD_PAUSE_MS)

bench: deps ## make run as shipped against a minimal uninstrumented app and the same app instrumented the usual way, side by side (docs/performance.md)
	$(PY) -m bench $(BENCH_ARGS)

bench-signals: deps ## What each observability signal costs per request, in one process
	$(PY) -m bench.signals

bench-supervision: deps ## What make run's supervisor and log writers cost per request, as shipped
	$(PY) -m bench.supervision $(BENCH_ARGS)

bench-overload: deps ## The edge at several times its capacity, shedding (as shipped) and not, side by side
	$(PY) -m bench.overload

bench-rules: deps ## Rule evaluation cost, HEAD's rules vs the working tree's, on 30 days of synthetic data
	$(PY) -m bench.rule_eval

profile: deps ## Where a worker's time goes under load: py-spy flame graph in bench/results/
	$(PY) -m bench.profile $(PROFILE_ARGS)

lint: deps ## ruff, mypy (strict: service/, native/, bench/), hadolint, shellcheck, the compose schema
	ruff check .
	ruff format --check .
	mypy
	hadolint Dockerfile monitoring/Dockerfile
	shellcheck redis/*.sh nginx/*.sh monitoring/edge-log/trim.sh scripts/* .ci/run
	check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.cluster.yml

deps: system-packages $(VENV)/.installed

system-packages:
	scripts/install-system-packages

# The pinned requirements, then the project itself without them, for its entry points (the
# samplers OTEL_TRACES_SAMPLER names: pyproject.toml); editable: the work tree is what runs.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

cert: ## Make a new self-signed development certificate (localhost.crt) and its key
	scripts/make-dev-cert

lock: $(VENV)/.installed ## Re-pin requirements*.txt from requirements*.in
	$(PY) -m pip install -q pip-tools
	pip-compile -q --strip-extras --no-header --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements.txt requirements.in
	pip-compile -q --strip-extras --no-header --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements-dev.txt requirements-dev.in

clean: ## Remove the venv and the native stack's state (stored messages included)
	rm -rf $(VENV) .state
