# Shortcuts for the commands in README.md. `make help` lists them.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help install pipeline test lint format mlflow-ui prefect-ui clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/malaria:
	python3 -m venv $(VENV) && $(BIN)/pip install -e ".[test]"

install: $(BIN)/malaria ## create .venv and install the project with its test tools

pipeline: install ## offline demo: synthetic cells end to end
	$(BIN)/malaria pipeline --source synthetic --limit 400 --epochs 2

test: install ## lint, then the whole test suite (slow end-to-end tests included)
	$(BIN)/ruff check . && $(BIN)/pytest

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
