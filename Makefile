# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build .venv first. torch is installed alone and pinned, so pip takes the CPU wheel from the local
# wheel store instead of resolving the newest CUDA build through transformer-lens's dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: demo test venv bench clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PIP) "$(TORCH)" numpy 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import torch" || { echo "torch failed to install: check that $(TORCH) is available"; exit 1; }
	$(PIP) -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import circuitlab, transformer_lens, tokenizers" || { echo "installing circuitlab failed (see pip output above)"; exit 1; }
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/circuitlab train --preset attn2 --max-steps 300 --eval-every 100 --out runs/demo-attn2
	$(BIN)/circuitlab info runs/demo-attn2

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
