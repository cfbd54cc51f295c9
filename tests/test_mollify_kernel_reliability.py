"""Wrong values found by an adversarial battery in the kernels' launch paths and numerics.

* The Triton two-pass blur (radius > 8) on planes that do not merge into one run (channels_last
  with C >= 2, every other sample, transposed planes, per-sample parameters): its float32
  scratch must be indexed with the same plane decomposition as x and out.
* A NaN or inf in a per-sample blur reaches only its own sample's window, and a blur sigma
  gives the same radius whatever form it is passed in.
* ``out=`` (any layout, ``out=x``, tiny tensors, ``return_noise``) gives exactly the
  out-of-place result on every backend.
* NCSN-scale sigmas (up to 1e3) within the two-part parity bound (eps, then the output given eps).
* ``sigma = 0`` gives exactly x in every dtype (subnormals, +-max, +-inf, NaN), in particular the
  final float32 -> bfloat16/float16 rounding under the Triton interpreter.

Triton runs on CPU tensors under ``TRITON_INTERPRET=1`` (conftest.py): shapes stay small.
"""
import os

import pytest
import torch

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_backend_parity, backend_or_skip

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
EMULATE = "MOLLIFY_FAST_CUDA_EMULATE"


def _device(backend):
    if backend in ("cpu", "torch", "reference") or (backend == "triton" and INTERPRET):
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda"


def _mv(v, dev):
    return v.to(dev) if torch.is_tensor(v) else v


def _vs_reference(backend, x, sigma, what, **kw):
    """Run ``backend`` and the reference on one stream; two-part parity of eps and out."""
    backend_or_skip(backend)
    dev = _device(backend)
    g = mf.Generator(21, 5)
    out, noise = mf.mollify(x.to(dev), _mv(sigma, dev), generator=g, return_noise=True, backend=backend,
                            **{k: _mv(v, dev) for k, v in kw.items()})
    assert mf.last_backend() == backend
    want, want_noise = mf.mollify(x, sigma, generator=mf.Generator(21, 5), return_noise=True,
                                  backend="reference", **kw)
    assert_backend_parity(out.cpu(), noise.cpu(), want, want_noise, x, sigma, what=what, **kw)


# ------------------------------------------------------------------------------------------
# 1. Triton two-pass blur on planes that do not merge
# ------------------------------------------------------------------------------------------


def _two_pass_inputs():
    base = torch.randn(4, 2, 11, 12)
    return {
        "channels_last": base[:2].contiguous(memory_format=torch.channels_last),
        "every-other-sample": base[::2],
        "transposed": base[:2].transpose(-1, -2).contiguous().transpose(-1, -2),
    }


@pytest.mark.parametrize("layout", list(_two_pass_inputs()))
@pytest.mark.parametrize("per_sample", [False, True], ids=["scalar", "per-sample"])
def test_triton_two_pass_blur_on_unmerged_planes(layout, per_sample):
    """Each sample gets its own blur (it got the last sample's: the scratch was indexed with
    strides that ignored the sample index)."""
    from mollify_fast.backends import mollify_triton as M

    torch.manual_seed(0)
    x = _two_pass_inputs()[layout]
    assert M.FUSED_MAX_RADIUS < 10 < min(x.shape[-2:])
    sigma = torch.tensor([0.3, 0.7]) if per_sample else 0.3
    blur = torch.tensor([3.2, 2.9]) if per_sample else 3.2  # radii 10 and 9: the two-pass path
    _vs_reference("triton", x, sigma, f"two-pass {layout}", alpha=0.9, blur_sigma=blur)


def test_triton_two_pass_blur_out_in_another_layout():
    """x contiguous, out and the returned noise channels_last: three different plane layouts."""
    backend_or_skip("triton")
    dev = _device("triton")
    x = torch.randn(2, 2, 11, 12)
    out = torch.empty_like(x).contiguous(memory_format=torch.channels_last).to(dev)
    got = mf.mollify(x.to(dev), 0.4, blur_sigma=3.5, generator=mf.Generator(2), out=out, backend="triton")
    want = mf.mollify(x.to(dev), 0.4, blur_sigma=3.5, generator=mf.Generator(2), backend="triton")
    assert got is out and torch.equal(out, want)
    ref = mf.mollify(x, 0.4, blur_sigma=3.5, generator=mf.Generator(2), backend="reference")
    assert (want.cpu() - ref).abs().max() < 1e-4
