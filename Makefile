# One entry point per job; each sets up what it needs in a local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-stamp

.PHONY: venv install test test-triton-min sass bench bench-sweep bench-training demo info clean

venv: $(STAMP)
$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# MOLLIFY_FAST_REQUIRE_EXT=1: here a broken C++/CUDA build fails loudly (a user's plain
# `pip install .` falls back to the torch backend instead).
# Editable install: Python changes apply at once; the extension is rebuilt when its sources change.
INSTALLED := $(VENV)/.install-stamp
install: $(INSTALLED)
$(INSTALLED): $(STAMP) $(wildcard csrc/* kernels/*) CMakeLists.txt setup.py pyproject.toml
	MOLLIFY_FAST_REQUIRE_EXT=$${MOLLIFY_FAST_REQUIRE_EXT:-1} $(PY) -m pip install --no-build-isolation -e .
	touch $@

# The suite (interpreted Triton, host-run CUDA kernels, the sm_90 SASS budgets), then the Triton
# tests again under the lowest supported Triton (installed into .triton-min/ on first use).
test: install
	$(PY) -m mollify_fast info
	$(PY) -m pytest -ra tests
	$(MAKE) test-triton-min

test-triton-min: install
	PYTHON=$(PY) bash tests/triton_min_version.sh

# The static sm_90 report (no GPU needed): benchmarks/results/sass_sm90.{csv,md}, all MODELED.
sass: install
	$(PY) -m benchmarks.sass_report

info: install
	$(PY) -m mollify_fast info

clean:
	rm -rf build .triton-min *.egg-info mollify_fast/_C*.so mollify_fast/_build_status.json .pytest_cache $(INSTALLED)

# Extra arguments: make bench BENCH_ARGS=--quick BENCH_OUT=/tmp/b ; make demo DEMO_ARGS="--scale 0.1"
BENCH_OUT ?= benchmarks/results
BENCH_ARGS ?=
DEMO_ARGS ?=
DEVSLUG = $$($(PY) -c "import torch; print('cpu' if not torch.cuda.is_available() else ''.join(c if c.isalnum() else '_' for c in torch.cuda.get_device_name(0)).strip('_').lower())")

bench: install
	$(PY) -m benchmarks.bench_mollify --out $(BENCH_OUT) $(BENCH_ARGS)
	$(PY) -m benchmarks.plot_mollify $(BENCH_OUT)/mollify_$(DEVSLUG).csv

# The main job: vanilla vs mollified RealNVP (2-D problems) and VAE (8x8 digits), 3 seeds.
demo: install
	$(PY) -m benchmarks.demo $(DEMO_ARGS)

# Size sweep 2^8..2^26 elements (per-call overhead and small batches), CSV + plot.
bench-sweep: install
	$(PY) -m benchmarks.bench_mollify_sweep --out $(BENCH_OUT) --plot $(BENCH_ARGS)

bench-training: install
	$(PY) -m benchmarks.bench_training
