"""Kernels compiled next to ours for comparison: what torch.compile emits, and a published kernel.

``inductor_randn_kernel`` / ``inductor_randn4x_kernel``: the pointwise kernel inductor generates
for ``alpha * x + sigma * torch.randn_like(x)`` (one fused ``triton_poi_fused_add_mul_randn_like``
kernel after a tiny seed kernel), written by hand from inductor's code generator: the load of the
seed from the seeds buffer, ``TritonOverrides.randn`` -> ``tl.randn(seed, offset.to(tl.uint32))``
(older inductors, and any kernel that is not 1-D) or ``triton_helpers.randn4x(seed, offset,
XBLOCK)`` (torch/_inductor/runtime/triton_helpers.py in newer ones, 1-D CUDA kernels), XBLOCK
1024 with 4 warps (inductor's pointwise heuristic for large 1-D sizes).

``add_kernel``: the Triton tutorial 01 vector add, verbatim in its logic (BLOCK_SIZE 1024).
"""
import triton
import triton.language as tl

XBLOCK = 1024
ALPHA = 0.8
SIGMA = 0.6

try:  # torch >= 2.12's inductor helper; absent in older torch
    from torch._inductor.runtime.triton_helpers import randn4x as _inductor_randn4x

    HAS_RANDN4X = True
except Exception:  # noqa: BLE001 - any import problem means: no such helper here
    _inductor_randn4x = None
    HAS_RANDN4X = False


@triton.jit
def inductor_randn_kernel(in_ptr0, in_ptr1, out_ptr0, load_seed_offset, xnumel, XBLOCK: tl.constexpr):
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:]
    xmask = xindex < xnumel
    x0 = xindex
    tmp0 = tl.load(in_ptr0 + (x0), xmask).to(tl.float32)
    tmp1 = tl.load(in_ptr1 + load_seed_offset)
    tmp2 = tl.randn(tmp1, (x0).to(tl.uint32))
    tmp3 = tmp0 * 0.8 + tmp2 * 0.6
    tl.store(out_ptr0 + (x0), tmp3.to(out_ptr0.dtype.element_ty), xmask)


if HAS_RANDN4X:

    @triton.jit
    def inductor_randn4x_kernel(in_ptr0, in_ptr1, out_ptr0, load_seed_offset, xnumel, XBLOCK: tl.constexpr):
        xoffset = tl.program_id(0) * XBLOCK
        xindex = xoffset + tl.arange(0, XBLOCK)[:]
        xmask = xindex < xnumel
        x0 = xindex
        tmp0 = tl.load(in_ptr0 + (x0), xmask).to(tl.float32)
        tmp1 = tl.load(in_ptr1 + load_seed_offset)
        tmp2 = _inductor_randn4x(tmp1, (x0).to(tl.uint32), XBLOCK)
        tmp3 = tmp0 * 0.8 + tmp2 * 0.6
        tl.store(out_ptr0 + (x0), tmp3.to(out_ptr0.dtype.element_ty), xmask)
else:
    inductor_randn4x_kernel = None


@triton.jit
def add_kernel(x_ptr, y_ptr, output_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    block_start = pid * BLOCK_SIZE
    offsets = block_start + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    output = x + y
    tl.store(output_ptr + offsets, output, mask=mask)
