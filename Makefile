# Two commands do all set-up on a fresh machine with Python 3.11:
#   make serve   serve the bundled model on $(PORT) (only the `serve` extra: no torch)
#   make test    lint, type-check and run every test (all extras)
# Each creates or reuses a virtual environment in the repository.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
SERVE_VENV ?= .venv-serve
CONSTRAINTS := requirements/constraints.txt
PIP_INSTALL = python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)
PORT ?= 3000
MODEL_REPOSITORY ?= model_repository
PYTEST_ARGS ?=

.PHONY: test serve lint typecheck install clean requirements bench bundled-model browser orthanc gpu-check

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/$(PIP_INSTALL) -e '.[serve,train,export,dev]'
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/$(PIP_INSTALL) -e '.[serve]'
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The /ui tests drive a real headless Chromium (Debian's package; Playwright downloads nothing).
# Installed here when possible (root with apt-get); otherwise those tests skip and say why.
browser:
	@test -n "$$CXR_MSN_CHROMIUM" || command -v chromium >/dev/null 2>&1 || \
	command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the /ui browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: apt-get could not install chromium; the /ui browser tests will skip"; \
	else \
		echo "note: no chromium and no root apt-get; the /ui browser tests will skip"; \
	fi

# The PACS tests (tests/serving/test_pacs_{orthanc,stow}.py) start a real Orthanc (Debian's package) on
# free loopback ports with their own configuration; the packaged service is never started.
orthanc:
	@(test -n "$$CXR_MSN_ORTHANC" || command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc) && \
	test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing orthanc and orthanc-dicomweb (apt-get) for the PACS tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null) || \
		echo "warning: apt-get could not install orthanc; the PACS tests will skip"; \
	else \
		echo "note: no Orthanc and no root apt-get; the PACS tests will skip"; \
	fi

test: lint typecheck browser orthanc
	$(VENV)/bin/pytest $(PYTEST_ARGS)

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/cxr-msn serve --repository $(MODEL_REPOSITORY) --port $(PORT)

# Train, evaluate, export and document the model `make serve` ships (recipes/bundled_model.json).
# Needs ../shared/data; about an hour on 2 CPU cores.
bundled-model: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m recipes.bundled_model

# The benchmark suite: prints a table, writes benchmarks/results.{json,md}. Minutes, not seconds.
bench: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[bench]'
	$(VENV)/bin/python -m benchmarks.run --out benchmarks

# The prepared GPU check (issue 18): pretraining step and loader throughput, a short run, the
# synchronisations in one step, ONNX Runtime CUDA/TensorRT at batch 1/8/32 with parity, on one
# CUDA GPU; writes benchmarks/results-gpu.{json,md}. Its own venv: the `gpu` extra's
# onnxruntime-gpu replaces onnxruntime. Without a GPU it says so and exits 0.
GPU_VENV ?= .venv-gpu
$(GPU_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/$(PIP_INSTALL) -e '.[train,gpu]'
	touch $@

gpu-check: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m benchmarks.gpu_check --out benchmarks

# requirements/serve.txt: the serve extra's pinned closure, installed into the Bento.
requirements: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet --dry-run --ignore-installed --report .serve-report.json \
		-c $(CONSTRAINTS) '.[serve]'
	$(VENV)/bin/python requirements/pin_serve.py .serve-report.json > requirements/serve.txt
	rm -f .serve-report.json

clean:
	rm -rf $(VENV) $(SERVE_VENV) .mypy_cache .ruff_cache .pytest_cache
