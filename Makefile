# Two commands do all set-up on a fresh machine:  make predict INPUT=... OUTPUT=...   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INPUT ?= inputs
OUTPUT ?= outputs
IMAGE ?=
TAG ?= flare-fast-seg:latest
BENCH ?= bench

.PHONY: predict test lint docker bench

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
	docker build -t $(or $(IMAGE),$(TAG)) .

# Efficiency harness over a folder: locally through predict.sh, or the organisers' docker run with IMAGE=...
bench: $(VENV)/.deps-dev
	env PYTHON="$(CURDIR)/$(BIN)/python" $(BIN)/python -m evaluation.efficiency --inputs "$(INPUT)" --outputs "$(BENCH)/masks" \
		--report "$(BENCH)/report" $(if $(IMAGE),--image "$(IMAGE)",--command "sh predict.sh")
