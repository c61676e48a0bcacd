# evdash: two commands. `make demo` runs the whole product embedded; `make test` runs every test.
# Both set up what they need first (scripts/prerequisites: system packages, services, the venv).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

# Production-mode tests use this machine's PostgreSQL and Redis (override as needed).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# Test worker processes (pytest-xdist). The tests mostly wait (brokers, subprocesses, browsers), so
# 4 workers keep 2 cores busy; each test file stays on one worker (module fixtures, file order).
# Each worker has its own Kafka broker, ports, SQLite/PostgreSQL test database and Redis database
# (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile

.PHONY: install demo test lint check clean

$(STAMP): requirements.txt requirements-dev.txt
	@PYTHON=$(PYTHON) scripts/prerequisites python
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The venv and the embedded database: then `.venv/bin/python manage.py <command>` works as is.
install: $(STAMP)
	$(PY) manage.py migrate --verbosity 0
	@echo "Installed, embedded mode (README, Modes): .venv/bin/python manage.py help"

demo: $(STAMP)
	$(PY) manage.py demo

test: $(STAMP)
	@PYTHON=$(PYTHON) scripts/prerequisites test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	EVDASH_MODE=embedded $(PY) manage.py check
	EVDASH_MODE=embedded $(PY) manage.py makemigrations --check --dry-run
	EVDASH_MODE=embedded $(PY) -m pytest -m "not production" $(PYTEST_PARALLEL)
	EVDASH_MODE=production DJANGO_SECRET_KEY=test-only-not-secret-$$(date +%s)-0123456789abcdefghijklmnopqrstuvwxyz \
	  DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(PY) -m pytest -m production $(PYTEST_PARALLEL)

# Benchmarks (README, Benchmarks): each against real parts within its time budget; prints tables and
# rewrites the generated blocks of docs/benchmarks.md. `make bench QUICK=1` (or EVDASH_BENCH_QUICK=1)
# for the short runs, `make bench ONLY=end_to_end,poller` for some. The production layout uses a
# database and a Redis db of its own on the same servers as the tests.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/evdash_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/7
.PHONY: bench
bench: $(STAMP)
	@PYTHON=$(PYTHON) scripts/prerequisites test
	BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) BENCH_REDIS_URL=$(BENCH_REDIS_URL) \
	  $(PY) bench/run.py $(if $(filter 1 yes true,$(QUICK)),--quick) $(if $(ONLY),--only $(ONLY))

# Refresh the README's pictures (docs/dashboard-*.png) from the browser tests against `manage.py demo`.
# Tests alone never write tracked files: they save screenshots under test-results/ (ignored).
.PHONY: screenshots
screenshots: $(STAMP)
	EVDASH_SCREENSHOT_DIR=$(CURDIR)/docs EVDASH_MODE=embedded DJANGO_DEBUG=1 $(PY) -m pytest tests/test_browser.py \
	  -k "test_fleet_goes_live or test_charge_point_page_draws_live_charts" -p no:cacheprovider -q
	EVDASH_SCREENSHOT_DIR=$(CURDIR)/docs EVDASH_MODE=embedded DJANGO_DEBUG=1 $(PY) -m pytest tests/test_browser_pipeline.py \
	  -p no:cacheprovider -q

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
