# Shortcuts for the commands in README.md. `make help` lists them.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help install lock pipeline test test-fast lint format mlflow-ui prefect-ui clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/malaria:
	python3 -m venv $(VENV) && $(BIN)/pip install -c requirements.lock -e ".[test]"

install: $(BIN)/malaria ## create .venv and install the project with its test tools (locked)

LOCK_VENV := $(shell mktemp -u /tmp/malaria-lock-XXXXXX)
lock: ## re-resolve the dependencies of pyproject.toml into requirements.lock (latest releases)
	python3 -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q -e ".[test]" \
	  && (echo "# pip freeze of a fresh \`pip install -e \".[test]\"\` (make lock); used as constraints" \
	  && $(LOCK_VENV)/bin/pip freeze --exclude-editable) > requirements.lock.tmp \
	  && mv requirements.lock.tmp requirements.lock; rm -rf $(LOCK_VENV) requirements.lock.tmp

pipeline: install ## offline demo: synthetic cells end to end
	$(BIN)/malaria pipeline --source synthetic --limit 2000 --epochs 10

test: install ## lint, the import contract, then the whole suite (slow end-to-end tests included)
	$(BIN)/ruff check . && $(BIN)/lint-imports && $(BIN)/pytest

test-fast: install ## the fast loop: lint, the import contract, the tests not marked slow
	$(BIN)/ruff check . && $(BIN)/lint-imports && $(BIN)/pytest -m "not slow"

lint: install ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

mlflow-ui: install ## browse runs and models of the local store on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/store/mlflow.db --host 127.0.0.1 --port 5000

prefect-ui: install ## browse flow runs on http://127.0.0.1:4200
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/prefect server start --host 127.0.0.1

clean: ## remove datasets and the local MLflow store (not the venv)
	rm -rf data mlflow/store
