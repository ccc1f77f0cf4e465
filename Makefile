# The environment lives in .venv/ at the checkout root. `make setup` is idempotent: it reinstalls only
# when a requirements file changed since the last complete install (stamp file).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sweep-installed
REQS := requirements/constraints.txt requirements/base.txt requirements/nodeps.txt pyproject.toml

.PHONY: setup postgres test lint bench bench-published lock demo-lake clean

setup: $(STAMP)

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, exactly this pin: it takes the CPU build on disk instead of GBs of CUDA packages
	$(BIN)/pip install -q -c requirements/constraints.txt torch
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/base.txt
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt -r requirements/nodeps.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# PostgreSQL server binaries for tests/test_postgres.py (installs them as root when missing)
postgres:
	bash scripts/ensure_postgres.sh

test: setup postgres
	$(BIN)/ruff check sweeper tests bench scripts
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: setup
	$(BIN)/ruff check sweeper tests bench scripts
	$(BIN)/ruff format --check sweeper tests bench scripts

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run

# naive loop vs sweep run on the published model shapes (small presets), one line per backend (bench/published.py)
bench-published: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.published

# Re-resolve base.txt from base.in (needs the registry); commit the result.
lock:
	rm -rf /tmp/sweep-lock && $(PY) -m venv /tmp/sweep-lock
	/tmp/sweep-lock/bin/pip install -q -c requirements/constraints.txt torch
	/tmp/sweep-lock/bin/pip install -q -c requirements/constraints.txt -r requirements/base.in
	{ echo "# Resolved from requirements/base.in with torch held by requirements/constraints.txt (make lock)."; \
	  /tmp/sweep-lock/bin/pip freeze | grep -viE '^(torch)=='; } > requirements/base.txt

demo-lake: setup
	$(BIN)/python scripts/build_demo_lake.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
