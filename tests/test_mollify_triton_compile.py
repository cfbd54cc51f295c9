"""The Triton kernels compile for real GPUs (sm_80, sm_90), checked without a GPU.

The interpreter (how CI runs the kernels) is lenient where the compiler is not: Python ints
and floats instead of tensors, loop bounds, constexpr specialisation of int arguments equal to
1. So the kernels are also compiled to cubin here, through Triton's own compiler and ptxas, for
the argument types real launches produce. Runs in a subprocess because this test process
defines the kernels in interpreter mode (TRITON_INTERPRET=1, see conftest.py).
"""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r'''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import mollify_fast.backends.mollify_triton as M

    def compile_kernel(k, types, consts, arch):
        sig = {n: ("constexpr" if n in consts else types.get(n, "i64")) for n in k.arg_names}
        src = ASTSource(fn=k, signature=sig, constexprs={(k.arg_names.index(n),): v for n, v in consts.items()})
        cc = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        assert len(cc.asm["cubin"]) > 0

    def ptrs(dt):
        return {n: "*" + dt for n in ("x_ptr", "out_ptr", "noise_ptr")} | {
            "sigma_ptr": "*fp32", "alpha_ptr": "*fp32", "blur_ptr": "*fp32", "radius_ptr": "*i32",
            "sigma": "fp32", "alpha": "fp32", "blur_sigma": "fp32"}

    n = 0
    for arch in (80, 90):
        for dt, ints, seed in (("fp32", "i64", "i64"), ("bf16", "i32", "u64"), ("fp16", "i32", "i32")):
            types = ptrs(dt) | {k: ints for k in ("numel", "sample_numel", "radius", "H", "W", "P1")} | {
                "seed": seed, "offset": seed}
            for contig in (True, False):
                compile_kernel(M._mollify_noise_kernel, types, dict(
                    CONTIG=contig, HAS_NOISE=not contig, SIGMA_PER_SAMPLE=contig, ALPHA_PER_SAMPLE=not contig,
                    BLOCK=M.NOISE_BLOCK), arch)
                n += 1
            for ps in (True, False):
                compile_kernel(M._mollify_blur_kernel, types, dict(
                    ROWS_ARE_SAMPLES=not ps, HAS_NOISE=ps, SIGMA_PER_SAMPLE=ps, ALPHA_PER_SAMPLE=ps,
                    BLUR_PER_SAMPLE=ps, TILE_H=16, TILE_W=32 if ps else 64), arch)
                n += 1
    print("compiled", n)
    '''
)


def test_triton_kernels_compile_for_sm80_and_sm90():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0 and ("ASTSource" in r.stderr and "TypeError" in r.stderr):
        pytest.skip(f"this Triton's ASTSource API differs from 3.8's: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip() == "compiled 24"
