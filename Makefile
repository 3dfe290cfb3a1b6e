# pictaxon: `make app` to run the classifier page, `make test` to check everything.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-quick sync-check nbdev-test lesson-test lesson pytest export clean-nbs chromium app model model-quick

venv: $(STAMP)

# Rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The upload-and-classify page at http://localhost:8866 (the same command as `pictaxon app`).
app: venv
	$(BIN)/pictaxon app

# The default model, committed as models/bears.json (+ bears.onnx, .pt, .pkl, bears_report/): EfficientNet-Lite0
# with its ImageNet weights from PyPI, fine-tuned on the shared bear photos, steps of 32 photos made of micro-batches
# of 8 (peak 1.6 GB in binder-box: it fits Binder's 2 GB). One thread gives the same numbers on any machine and avoids
# OpenMP's slowdown when the cores are shared (about 10 minutes on one CPU thread).
# `make model-quick` writes models/bears_quick.json: a head on the frozen network's cached features, in seconds.
BEARS ?= ../shared/datasets/bears
model: venv
	OMP_NUM_THREADS=1 $(BIN)/pictaxon train $(BEARS) --out models/bears --arch efficientnet_lite0 \
		--epochs 4 --lr 2e-3 --seed 42 --size 224 --valid-pct 0.2 --batch-size 32 --micro-batch 8

model-quick: venv
	OMP_NUM_THREADS=1 $(BIN)/pictaxon train $(BEARS) --out models/bears_quick --quick --seed 42 --valid-pct 0.2

export: venv
	$(BIN)/nbdev-export

clean-nbs: venv
	$(BIN)/nbdev-clean
	$(BIN)/nbdev-clean --fname lesson.ipynb

# The notebooks are the source: cleaning and exporting must change nothing that is committed.
sync-check: venv
	@$(BIN)/nbdev-clean
	@$(BIN)/nbdev-clean --fname lesson.ipynb
	@git diff --quiet -- notebooks app.ipynb lesson.ipynb || { echo "nbdev-clean changed notebooks: run 'make clean-nbs' and commit"; git diff --stat -- notebooks app.ipynb lesson.ipynb; exit 1; }
	@$(BIN)/nbdev-export
	@test -z "$$(git status --porcelain -- lib)" || { echo "notebooks and library are not in sync: run 'make export' and commit"; git status --porcelain -- lib; exit 1; }
	@echo "notebooks clean and in sync with lib/pictaxon"

nbdev-test: venv
	$(BIN)/nbdev-test --n-workers 2

# ONNX Runtime Web for `pictaxon export-web`, exactly as web/package-lock.json pins it (export-web runs this too).
web: web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs
web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs: web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# The browser tests drive Debian's chromium; install it once if this machine lacks it.
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

pytest: venv chromium
	$(BIN)/pytest

# The learner's notebook (root lesson.ipynb) top to bottom in a fresh kernel, on the route a learner without
# internet takes (IN_TEST=1: the sample photos), in a scratch copy: it writes photos and models where it runs.
lesson-test: venv
	@tmp=$$(mktemp -d); cp lesson.ipynb "$$tmp"/; OMP_NUM_THREADS=1 $(BIN)/nbdev-test "$$tmp/lesson.ipynb"; \
		status=$$?; rm -rf "$$tmp"; exit $$status

# Refresh the outputs saved in lesson.ipynb (what GitHub and a learner see before running anything), offline.
lesson: venv
	OMP_NUM_THREADS=1 $(BIN)/python -c "from pictaxon.lesson import run_lesson; run_lesson('lesson.ipynb', save_to='lesson.ipynb')"
	$(BIN)/nbdev-clean --fname lesson.ipynb

test: sync-check nbdev-test lesson-test pytest

# Everything but the tests marked slow (real training, real browser).
test-quick: venv
	$(BIN)/pytest -m "not slow"
