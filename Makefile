# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create/reuse .venv, install, run the main job end to end on embedded defaults
#   make test   - create/reuse .venv, install, run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench lock clean

# --compile-bytecode: .pyc files are written once at install, so imports do not compile every module
# again in each process where PYTHONDONTWRITEBYTECODE is set (~1.8 s of a feature build's start-up).
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (custops needs Python 3.11; set PYTHON=...)" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -r requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/custops demo

test: $(STAMP)
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src pipelines serving tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/features_bench.py

# Re-pin every dependency (run after changing pyproject.toml dependencies).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf .custops .pytest_cache
