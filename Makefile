# Two commands on a fresh Debian/Ubuntu machine with Python 3.10+:
#   make demo   set up .venv, fetch the default assets, run the main job
#   make test   set up (if needed) and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
DATA := data/english
DEMO := runs/demo
# Extra pip arguments, e.g. an index that serves CPU builds of torch on machines without a local wheel.
PIP_ARGS ?=

.PHONY: setup assets data demo test clean

setup: $(STAMP)

# Re-runs only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  { echo "error: cannot create $(VENV); on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

assets: setup
	$(BIN)/inheritune assets fetch

data: assets
	$(BIN)/inheritune data prepare --input "$$($(BIN)/inheritune assets path corpus)" --tokenizer smollm2 --out $(DATA)

# The recipe on the embedded default, sized for about 15 minutes on 2 CPU cores (see README).
DEMO_ARGS ?= --steps 80 --seq-len 128 --micro-batch-size 4 --eval-windows 16 --eval-interval 20 \
	--max-rounds 2 --baselines random --analyze-n 50
demo: data
	$(BIN)/inheritune run --reference smollm2 --data $(DATA) --out $(DEMO) --start auto $(DEMO_ARGS)

test: assets
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(DEMO) src/*.egg-info
