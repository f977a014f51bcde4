# Two commands do all set-up on a fresh machine:  make predict INPUT=... OUTPUT=...   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INPUT ?= inputs
OUTPUT ?= outputs
IMAGE ?=
TAG ?= flare-fast-seg:latest
BENCH ?= bench
DEMO ?= demo

.PHONY: predict test lint docker bench demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-predict: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.deps-dev: requirements-dev.txt requirements-nnunet.txt requirements-cluster.txt $(VENV)/.deps-predict
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r requirements-nnunet.txt -r requirements-cluster.txt
	$(BIN)/python -m pip install -q --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
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

# Phantoms it has never seen (two abdomens, one whole body) -> predict + efficiency -> scores, all under $(DEMO)/
demo: $(VENV)/.deps-dev
	rm -rf "$(DEMO)"
	$(BIN)/python -m synthetic.phantoms --out "$(DEMO)/phantoms" --cases 2 --seed 9000 --fov abdomen
	$(BIN)/python -m synthetic.phantoms --out "$(DEMO)/phantoms" --cases 1 --seed 9100 --fov whole-body --spacing 0.8 5.0
	env PYTHON="$(CURDIR)/$(BIN)/python" $(BIN)/python -m evaluation.efficiency --inputs "$(DEMO)/phantoms/images" \
		--outputs "$(DEMO)/masks" --report "$(DEMO)/efficiency" --command "sh predict.sh"
	$(BIN)/python -m evaluation.metrics --pred "$(DEMO)/masks" --gt "$(DEMO)/phantoms/labels" --out "$(DEMO)/scores/results.csv" --rules flare23
