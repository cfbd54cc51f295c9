"""Static sm_90 performance report of the mollify kernels: SASS counts and a MODELED H100 model.

Modules: :mod:`.disasm` (cubin -> functions -> basic blocks, loops, the steady-state path and
its instruction mix), :mod:`.model` (instruction classes, H100 SXM pipe rates and the MODELED
issue/pipe/memory bounds, with their sources), :mod:`.compile` (every Triton launch variant
through Triton's own binder, the CUDA kernels through nvcc with the project's CMake flags, and
the baselines). The entry point is ``python -m benchmarks.sass.report``.
"""
