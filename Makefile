# The two commands: `make run` (a working local stack) and `make test` (every test).
SHELL := /bin/bash
CARGO ?= cargo
DB_NAME ?= ai_gateway

.PHONY: run test fuzz services sdk-deps lint fmt migrate build clean-test-dbs check-deploy bench bench-kill

run:
	deploy/local/run.sh

test: services clean-test-dbs sdk-deps check-deploy
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

services:
	deploy/local/ensure-services.sh

# schemathesis against /openapi.json with many examples per operation (`make test` runs a few):
# no 5xx, every answer as documented. SCHEMATHESIS_MAX_EXAMPLES=N to change.
fuzz: services sdk-deps
	$(CARGO) build --workspace --bins
	SCHEMATHESIS_MAX_EXAMPLES=$${SCHEMATHESIS_MAX_EXAMPLES:-200} \
		$(CARGO) test -p integration-tests --test api -- --nocapture schemathesis::

# Offline checks of deploy/ and k8s/: hadolint, kustomize render + Kubernetes/KEDA schemas,
# compose schema, RabbitMQ definitions vs the code's topology, Grafana dashboard metrics.
check-deploy:
	deploy/check.sh

# The official OpenAI SDKs the end-to-end tests drive (PyPI and npm, pinned), schemathesis (PyPI,
# pinned; tests/api/schemathesis.rs), and the console's browser test tools (playwright-core,
# axe-core; they drive Debian's chromium package).
sdk-deps:
	@[ -x .run/sdk-venv/bin/python ] || python3 -m venv .run/sdk-venv
	@.run/sdk-venv/bin/python -c "import openai, anthropic" 2>/dev/null \
		|| .run/sdk-venv/bin/pip install -q -r tests/sdk/requirements.txt
	@[ -x .run/schemathesis-venv/bin/python ] || python3 -m venv .run/schemathesis-venv
	@.run/schemathesis-venv/bin/pip freeze 2>/dev/null | grep -qxF "$$(cat tests/schemathesis/requirements.txt)" \
		|| .run/schemathesis-venv/bin/pip install -q -r tests/schemathesis/requirements.txt
	@[ -d tests/sdk/node_modules/openai ] && [ -d tests/sdk/node_modules/@anthropic-ai/sdk ] \
		|| (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
	@[ -d tests/console/node_modules/playwright-core ] && [ -d tests/console/node_modules/axe-core ] \
		|| (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)

# Test databases are named gwtest_<uuid>; drop what earlier runs left behind.
clean-test-dbs:
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'gwtest\_%'" \
		| while read -r db; do [ -n "$$db" ] && dropdb -h 127.0.0.1 -U postgres --if-exists "$$db"; done; true

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --bins

migrate: services
	deploy/local/dev-env.sh
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$(DB_NAME)'" | grep -q 1 \
		|| createdb -h 127.0.0.1 -U postgres $(DB_NAME)
	set -a; . .run/dev.env; set +a; \
		APP__DATABASE__URL=$${APP__DATABASE__URL:-postgres://postgres@127.0.0.1:5432/$(DB_NAME)} \
		$(CARGO) run -q --bin gateway-api -- migrate

# Benchmark on this machine (release build, own database/queues/ports); writes docs/BENCHMARKS.md.
bench:
	tests/bench/run.sh
	python3 tests/bench/jobs.py
	python3 tests/bench/kill.py

# Only the kill table of `make bench`: each binary killed with SIGKILL under load, then the
# charges counted (about a minute and a half); rewrites its own section of docs/BENCHMARKS.md.
bench-kill: services
	$(CARGO) build --release --bins
	python3 tests/bench/kill.py
