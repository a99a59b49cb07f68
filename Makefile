# `make test` works on a fresh clone with only python3, git and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export FRONTALAB_FACES ?= $(abspath ../shared/faces)

BIN    := $(VENV)/bin
DEMO   ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: test test-slow install demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The main job: services, a prepared face set, the quick CPU sweep, its champion, frontal faces.
demo: $(STAMP)
	$(BIN)/frontalab up
	$(BIN)/frontalab prepare --source "$$($(BIN)/frontalab faces)" --out s3://frontalab/datasets/demo --limit 800
	$(BIN)/frontalab sweep sweeps/quick.yaml --name $(DEMO)
	$(BIN)/frontalab promote $(DEMO)
	$(BIN)/frontalab frontalize --model models:/frontalizer@champion \
	    $$(ls -d "$$($(BIN)/frontalab faces)"/* | tail -n 8) outputs/$(DEMO)
	@echo "frontal faces: outputs/$(DEMO)"
	@echo "MLflow UI: $$($(BIN)/frontalab status --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["mlflow"])')"

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
