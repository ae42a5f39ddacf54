# Two commands on a fresh Debian/Ubuntu machine with Python 3.10+:
#   make demo   set up .venv, fetch the default assets, run the main job
#   make test   set up (if needed) and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
DATA := data/english
MINI_DATA := data/english-bpe8k
DEMO := runs/demo
# Extra pip arguments, e.g. an index that serves CPU builds of torch on machines without a local wheel.
PIP_ARGS ?=

.PHONY: setup assets data mini-data demo demo-mini demo-smollm2 reproduce test clean

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

mini-data: assets
	$(BIN)/inheritune data prepare --input "$$($(BIN)/inheritune assets path corpus)" --train-tokenizer 8192 \
	  --out $(MINI_DATA)

# About 15 minutes on 2 CPU cores (see README and docs/demo.md), through the product's verbs only: SmolLM2-135M's
# lazy layers (a real pretrained model), then "which blocks do I keep?" on it: 15-layer children of SmolLM2 (L/2)
# that keep its first 15 blocks (Inheritune), the 15 of highest Block Influence (ShortGPT), all but the 15
# consecutive blocks of smallest angular distance (Gromov et al.), and a random init of the same shape, each
# retrained on the same 20,480 tokens with the same recipe (lr and batch: the sweep of docs/pretrained.md) and
# scored before and after on the same windows, ending in the run's table and verdict.
DEMO_RUN_ARGS ?= --select first bi angular --baselines random --steps 40 --seq-len 128 --micro-batch-size 4 \
	--lr 1e-3 --eval-windows 48 --eval-interval 0 --analyze-n 50 --analyze-t 128 --compare-analysis false
demo: data
	$(BIN)/inheritune analyze smollm2 --data $(DATA) --out $(DEMO)/smollm2-analysis --n 100 --t 100 --overwrite true
	$(BIN)/inheritune run --reference smollm2 --data $(DATA) --out $(DEMO)/which-blocks $(DEMO_RUN_ARGS)

# The recipe from scratch in miniature (experiments/reproduce_mini, one seed, about 12 minutes): a 12-layer
# reference trained on the shipped corpus, Inheritune children grown from l = 6 until they match it, and a
# random-init model of the child's size on the same budget, ending in the report's table and verdict (its
# reference never forms lazy layers: see docs/reproduction.md).
demo-mini: mini-data
	$(BIN)/inheritune run --config experiments/reproduce_mini/main.yaml --data $(MINI_DATA) --out $(DEMO)/mini \
	  --baselines random --progress true

# The growth recipe on the pretrained SmolLM2 itself (not matched in minutes of CPU: see docs/demo.md). lr and
# batch: the best of the recorded sweep in docs/pretrained.md (lr 1e-4 to 3e-3 x batch 4, 8 windows of 128).
SMOLLM2_ARGS ?= --steps 80 --seq-len 128 --micro-batch-size 4 --lr 1e-3 --eval-windows 16 --eval-interval 20 \
	--max-rounds 2 --baselines random --analyze-n 50
demo-smollm2: data
	$(BIN)/inheritune run --reference smollm2 --data $(DATA) --out $(DEMO)/smollm2 --start auto $(SMOLLM2_ARGS)

# The full miniature reproduction (about an hour on 2 cores); writes docs/reproduction/.
reproduce: assets
	$(BIN)/python experiments/reproduce_mini/reproduce.py --out runs/reproduce_mini --docs docs/reproduction

test: assets
	$(BIN)/python -m pytest -q --durations=25  # the 25 slowest tests: where the time goes

clean:
	rm -rf $(VENV) $(DATA) $(MINI_DATA) $(DEMO) src/*.egg-info
