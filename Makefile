# One entry point per job; each sets up what it needs in a local virtual environment.
# Every job writes into build/ (ignored by git) by default: committing measured results is a
# deliberate step, e.g. `make bench BENCH_OUT=benchmarks/results` or `make demo DEMO_ARGS="--out
# benchmarks/results/demo"`; after any job here `git status --porcelain` is empty.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-stamp

.PHONY: venv install test test-triton-min typecheck sass sass-check bench bench-sweep bench-training demo demo-full info clean

venv: $(STAMP)
$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# MOLLIFY_FAST_REQUIRE_EXT=1: here a broken C++/CUDA build fails loudly (a user's plain
# `pip install .` falls back to the torch backend instead, and says so).
# Editable install: Python changes apply at once; the extension is rebuilt when its sources change.
INSTALLED := $(VENV)/.install-stamp
install: $(INSTALLED)
$(INSTALLED): $(STAMP) $(wildcard csrc/* kernels/*) CMakeLists.txt setup.py pyproject.toml
	MOLLIFY_FAST_REQUIRE_EXT=$${MOLLIFY_FAST_REQUIRE_EXT:-1} $(PY) -m pip install --no-build-isolation -e .
	touch $@

# The suite: interpreted Triton, host-run CUDA kernels, the sm_90 budgets of a representative
# subset of the kernel variants; then the Triton tests again under the lowest supported Triton
# (installed into .triton-min/ on first use). The full budget matrix is `make sass-check`.
# Tests run in parallel on the machine's cores (pytest-xdist; PYTEST_WORKERS=0 runs them in one
# process); a test that must not share its process's work (the SASS report) names its group.
PYTEST_WORKERS ?= auto
PYTEST_PAR = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadgroup)
test: install
	$(PY) -m mollify_fast info
	$(PY) -m pytest -ra $(PYTEST_PAR) tests benchmarks/demo/test_models.py
	$(MAKE) test-triton-min

test-triton-min: install
	PYTHON=$(PY) bash tests/triton_min_version.sh $(PYTEST_PAR)

# mypy (configured in pyproject.toml) on the package and on tests/typing/check_public_api.py,
# whose assert_type lines pin the public API's types (mollify's overloads on return_noise).
typecheck: install
	$(PY) -m mypy

# Every kernel variant against benchmarks/sass/budgets.json, under Triton 3.8 and, at the same
# time (ptxas is single-threaded), under Triton 3.6 (its lines prefixed); about 12 and 13 minutes
# of compiling from an empty cache on the 2-core machine. CI runs it after make test and make typecheck.
SASS_OUT ?= build/results/sass
sass-check: install
	PYTHON=$(PY) bash tests/triton_min_version.sh --run true
	set -o pipefail; \
	( PYTHON=$(PY) bash tests/triton_min_version.sh --run $(PY) -m benchmarks.sass.report --check --no-baselines \
		--only triton --out $(SASS_OUT)/triton-min 2>&1 | sed -u 's/^/[triton 3.6] /' ) & min=$$!; \
	$(PY) -m benchmarks.sass.report --check --no-baselines --out $(SASS_OUT); main=$$?; \
	wait $$min; low=$$?; \
	echo "sass-check: Triton 3.8 + CUDA exit $$main, Triton 3.6 exit $$low"; \
	test $$main -eq 0 -a $$low -eq 0

# The static sm_90 report (no GPU needed), all MODELED; SASS_OUT=benchmarks/results refreshes the committed one.
sass: install
	$(PY) -m benchmarks.sass.report --out $(SASS_OUT)

info: install
	$(PY) -m mollify_fast info

clean:
	rm -rf build .triton-min *.egg-info mollify_fast/_C*.so mollify_fast/_build_status.json .pytest_cache $(INSTALLED)

# Extra arguments: make bench BENCH_ARGS=--quick BENCH_OUT=benchmarks/results ; make demo DEMO_ARGS="--seeds 1"
BENCH_OUT ?= build/results
BENCH_ARGS ?=
DEMO_ARGS ?=
DEVSLUG = $$($(PY) -c "import torch; print('cpu' if not torch.cuda.is_available() else ''.join(c if c.isalnum() else '_' for c in torch.cuda.get_device_name(0)).strip('_').lower())")

bench: install
	$(PY) -m benchmarks.micro.bench_mollify --out $(BENCH_OUT) $(BENCH_ARGS)
	$(PY) -m benchmarks.micro.plot_mollify $(BENCH_OUT)/mollify_$(DEVSLUG).csv

# The main job: vanilla vs mollified flows on the paper's UCI tables and the VAE.
demo: install
	$(PY) -m benchmarks.demo $(DEMO_ARGS)

demo-full: install
	$(PY) -m benchmarks.demo --full --resume $(DEMO_ARGS)

# Size sweep 2^8..2^26 elements (per-call overhead and small batches), CSV + plot.
bench-sweep: install
	$(PY) -m benchmarks.micro.bench_mollify_sweep --out $(BENCH_OUT) --plot $(BENCH_ARGS)

bench-training: install
	$(PY) -m benchmarks.micro.bench_training --out $(BENCH_OUT) $(BENCH_ARGS)
