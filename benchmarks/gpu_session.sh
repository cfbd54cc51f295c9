#!/usr/bin/env bash
# One GPU session, offline: build the extension with the CUDA kernels, run the GPU tests, then
# the microbenchmarks. For a machine that has a GPU, PyTorch, Triton and the test packages
# already installed but no network (no pinned installs). Usage, from the repository root:
#
#     bash benchmarks/gpu_session.sh [OUT_DIR] [BENCH_BUDGET_S]
#
# Environment: BENCH_ARGS (extra benchmark flags, e.g. "--shapes 256x3x256x256 --no-compile"),
# GPU_TEST_ARGS (extra pytest flags), MOLLIFY_FAST_CUDA_ARCHS (default 90).
#
# Everything it prints and writes (test report, benchmark CSV + raw JSON) goes to OUT_DIR
# (default benchmarks/results/gpu_session): commit the CSV under benchmarks/results/ to record
# the measured numbers.
set -uo pipefail
out=${1:-benchmarks/results/gpu_session}
budget=${2:-0.5}
mkdir -p "$out"
py=${PYTHON:-python3}
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/env.txt"
MOLLIFY_FAST_REQUIRE_EXT=1 MOLLIFY_FAST_CUDA=on MOLLIFY_FAST_CUDA_ARCHS=${MOLLIFY_FAST_CUDA_ARCHS:-90} \
  $py -m pip install -q --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
$py -m mollify_fast info | tee "$out/info.txt"
$py -m pytest -q -ra -p no:cacheprovider tests/test_mollify_gpu.py ${GPU_TEST_ARGS:-} --junitxml="$out/gpu_tests.xml" \
  2>&1 | tee "$out/gpu_tests.txt"
$py -m benchmarks.micro.bench_mollify --device cuda --budget "$budget" --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt"
