# The two set-up commands are `make repro` and `make test`; both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint pipeline docs use bench-data bench-train bench-gpu bench-eval bench-repro release compare chat \
	chat-web rate rate-report

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# dvc.yaml from params.yaml: run it after changing train.parts or the sources (chatmill/pipeline.py).
pipeline: setup
	$(BIN)/python -m chatmill.pipeline

# The generated tables of docs/ (metrics, record formats) from their registries in chatmill/.
docs: setup
	$(BIN)/python -m chatmill.docs

# Replace params.yaml with a preset (a complete params set), e.g. `make use PRESET=experiment-7`,
# and write dvc.yaml for it.
use: setup
	@test -f presets/$(PRESET).yaml || { echo "error: presets/$(PRESET).yaml not found; see presets/"; exit 1; }
	cp presets/$(PRESET).yaml params.yaml
	$(BIN)/python -m chatmill.pipeline
	@echo "params.yaml is now presets/$(PRESET).yaml; \`git diff params.yaml dvc.yaml\` shows the change"

# sample-eval of two runs side by side: A and B are DVC experiments or git revisions (read from the
# DVC cache; `workspace` too) or model folders such as models/part-03 (evaluated now with params.yaml's
# eval section). Prints the metric diff table and writes reports/compare.html.
compare: setup
	@test -n "$(A)" -a -n "$(B)" || { echo "error: usage: make compare A=EXP_OR_MODEL B=EXP_OR_MODEL"; exit 1; }
	$(BIN)/python -m chatmill.compare $(A) $(B)

# Chat in the terminal with MODEL (default: the last trained part) as PERSONA (a persona card; default
# an assistant); /help lists the commands.
chat: setup
	$(BIN)/python -m chatmill.chat $(if $(MODEL),--model $(MODEL)) $(if $(PERSONA),--persona $(PERSONA))

# The same chat as a local web page (Gradio): the persona card, sampling sliders, regenerate, undo and
# reset, at http://127.0.0.1:7860 (or PORT=N; HOST=0.0.0.0 serves the network).
chat-web: setup
	$(BIN)/python -m chatmill.webchat $(if $(MODEL),--model $(MODEL)) $(if $(PERSONA),--persona $(PERSONA)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Blind side-by-side rating of two runs (A and B as `make compare` takes them) in the browser, at
# http://127.0.0.1:7861 (or PORT=N; HOST=0.0.0.0 for testers on the network); judgements go to
# ratings/A-vs-B.jsonl. `make rate-report` prints the win rate of B over A and writes metrics/ratings.json.
rate: setup
	@test -n "$(A)" -a -n "$(B)" || { echo "error: usage: make rate A=EXP_OR_MODEL B=EXP_OR_MODEL"; exit 1; }
	$(BIN)/python -m chatmill.ratepage $(A) $(B) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

rate-report: setup
	@test -n "$(A)" -a -n "$(B)" || { echo "error: usage: make rate-report A=EXP_OR_MODEL B=EXP_OR_MODEL"; exit 1; }
	$(BIN)/python -m chatmill.rating $(A) $(B)

# Push the last trained part (or PART=N) to the Hugging Face Hub: release.repo_id (or REPO=OWNER/NAME),
# branch release.revision. Needs HF_TOKEN or `hf auth login`, a clean git tree and a clean `dvc status`;
# DRY_RUN=1 only builds release/ and prints what would be pushed.
release: setup
	$(BIN)/python -m chatmill.release $(if $(PART),--part $(PART)) $(if $(REPO),--repo $(REPO)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

# Data-stage benchmark on N MB of generated PIPPA logs, REPS times (default 3 up to 100 MB, else 1):
# medians and ranges against the parse+tokenize floors; writes benchmarks/results/data.json.
SIZE_MB ?= 100
bench-data: setup
	$(BIN)/python -m chatmill.bench.data --size-mb $(SIZE_MB) $(if $(REPS),--repetitions $(REPS))

# `make repro` from nothing in a temporary copy of the repo: each stage's wall split into import, set-up
# and work, and DVC's own share; checks the outputs' md5s against dvc.lock (or EXPECT=a dvc.lock);
# writes benchmarks/results/repro.json. N=3 repeats the whole pipeline (median).
bench-repro: setup
	$(BIN)/python -m chatmill.bench.repro $(if $(N),--repetitions $(N)) $(if $(EXPECT),--expect $(EXPECT))

# CPU training benchmark: a 4.3M-parameter Llama (TINY=1: the tiny scratch model) trained on N sample
# conversations (default 10; TINY=1: 60) packed (chatmill), padded per conversation, one example per
# reply, and packed with LoRA, in ROUNDS rounds (default 3) whose steps take turns between the ways:
# medians and ranges, one step of each way profiled; writes benchmarks/results/train.json.
bench-train: setup
	$(BIN)/python -m chatmill.bench.train $(if $(N),--conversations $(N)) $(if $(ROUNDS),--rounds $(ROUNDS)) \
		$(if $(filter-out 0,$(TINY)),--tiny)

# Sample-eval generation throughput, batched vs one prompt at a time, on MODEL (default: the last trained
# part) with THREADS torch threads (default: torch's), in 5 interleaved rounds (medians and ranges);
# writes benchmarks/results/eval.json.
bench-eval: setup
	$(BIN)/python -m chatmill.bench.eval $(if $(MODEL),--model $(MODEL)) $(if $(THREADS),--threads $(THREADS))

# GPU training benchmark (a CUDA machine, one or more GPUs, no downloads): the packing-exactness tests
# on the GPU attention paths, then a 1.1B Llama at seq 2048, bf16, ZeRO-1, packed vs padded: tokens/s
# per GPU and MFU, medians and ranges of 5 timed blocks per way; writes benchmarks/results/gpu.json.
# ARGS passes options, e.g. ARGS="--ways packed --compile --accumulation 8"
# (see python -m chatmill.bench.gpu --help).
bench-gpu: setup
	$(BIN)/python -m pytest -q tests/test_attention.py
	$(BIN)/python -m chatmill.bench.gpu $(ARGS)
