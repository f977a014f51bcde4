# Two commands do all set-up on a fresh machine:  make predict INPUT=... OUTPUT=...   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INPUT ?= inputs
OUTPUT ?= outputs
IMAGE ?= flare-fast-seg:latest

.PHONY: predict test lint docker

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-predict: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.deps-dev: requirements-dev.txt $(VENV)/.deps-predict
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

predict: $(VENV)/.deps-predict
	$(BIN)/python -m app predict -i "$(INPUT)" -o "$(OUTPUT)" $(ARGS)

test: $(VENV)/.deps-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.deps-dev
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check .

docker:
	docker build -t $(IMAGE) .
