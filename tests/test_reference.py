"""The oracle itself: Philox known answers, Triton's tl.randn4x, stream bookkeeping, blur."""
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import mollify_fast as mf
from mollify_fast import reference as R

from conftest import assert_within

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key, expected.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    got = R.philox4x32_10(torch.tensor(ctr), torch.tensor(key))
    assert tuple(got.tolist()) == expected


def test_philox_batched_matches_single():
    ctr = torch.tensor([k[0] for k in KAT])
    key = torch.tensor([k[1] for k in KAT])
    assert R.philox4x32_10(ctr, key).tolist() == [list(k[2]) for k in KAT]


# An independent scalar Philox + Box-Muller with Python ints and math, written from the paper,
# to check the vectorised reference's stream layout (counter words, key split, uniform map).
def _philox_scalar(c, k):
    c = list(c)
    k0, k1 = k
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c


def _normals_scalar(seed, offset, groups):
    out = []
    for j in range(groups):
        ctr = (offset + j) % 2**64
        w = _philox_scalar((ctr & 0xFFFFFFFF, ctr >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
        u = []
        for word in w:
            i = word - 2**32 if word >= 2**31 else word
            i = ~i if i < 0 else i
            u.append(i * 4.6566127342e-10)
        r0 = math.sqrt(-2 * math.log(max(u[0], 1e-7)))
        r1 = math.sqrt(-2 * math.log(max(u[2], 1e-7)))
        out += [r0 * math.cos(2 * math.pi * u[1]), r0 * math.sin(2 * math.pi * u[1]),
                r1 * math.cos(2 * math.pi * u[3]), r1 * math.sin(2 * math.pi * u[3])]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 7), (2**64 - 1, 2**32 - 2), (0x0123456789ABCDEF, 2**64 - 3)])
def test_first_groups_match_independent_scalar_philox(seed, offset):
    got = R.normals(seed, offset, 4 * 6)
    want = _normals_scalar(seed, offset, 6)
    # float32 uniforms/transcendentals vs float64: the contract's float32 tolerance.
    assert_within(got, want, 2e-5 * (1 + want.abs()), "normals vs scalar philox")


def test_normals_prefix_and_tail():
    # numel not a multiple of 4 takes a prefix of the last group; streams concatenate.
    full = R.normals(99, 5, 40)
    assert torch.equal(R.normals(99, 5, 37), full[:37])
    assert torch.equal(R.normals(99, 7, 32), full[8:])


@pytest.mark.parametrize(
    "seed,offset",
    [(0, 0), (42, 3), (2**63 + 12345, 2**32 - 5), (2**64 - 1, 2**40 + 17), (7, 2**64 - 9)],
)
def test_reference_equals_triton_randn4x_interpreted(seed, offset):
    """README, "The noise stream": the stream is exactly tl.randn4x(seed, offset + j)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _randn4x_kernel(out_ptr, seed, offset, n_groups, BLOCK: tl.constexpr):
        j = tl.arange(0, BLOCK)
        m = j < n_groups
        n0, n1, n2, n3 = tl.randn4x(seed, offset.to(tl.int64) + j)
        tl.store(out_ptr + 4 * j, n0, mask=m)
        tl.store(out_ptr + 4 * j + 1, n1, mask=m)
        tl.store(out_ptr + 4 * j + 2, n2, mask=m)
        tl.store(out_ptr + 4 * j + 3, n3, mask=m)

    groups = 37
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        pytest.skip("Triton needs TRITON_INTERPRET=1 (CPU tensors) or a GPU")
    out = torch.full((4 * 64,), float("nan"), device=device)
    signed = lambda v: v - 2**64 if v >= 2**63 else v  # noqa: E731
    _randn4x_kernel[(1,)](out, signed(seed), signed(offset), groups, BLOCK=64)
    want = R.normals(seed, offset, 4 * groups)
    assert_within(out[: 4 * groups].cpu(), want, 2e-5 * (1 + want.abs().double()), "tl.randn4x vs reference")


def test_offsets_advance_by_groups():
    g = mf.Generator(11, offset=2**32 - 1)
    x = torch.zeros(3, 5, 7)  # 105 elements -> 27 groups
    _, e1 = mf.mollify(x, 1.0, generator=g, return_noise=True, backend="reference")
    assert g.offset == 2**32 - 1 + 27
    _, e2 = mf.mollify(x, 1.0, generator=g, return_noise=True, backend="reference")
    assert g.offset == 2**32 - 1 + 54
    assert torch.equal(e1.reshape(-1), R.normals(11, 2**32 - 1, 105))
    assert torch.equal(e2.reshape(-1), R.normals(11, 2**32 - 1 + 27, 105))


def test_offset_wraps_modulo_2_64():
    g = mf.Generator(3, offset=2**64 - 1)
    mf.mollify(torch.zeros(9), 0.5, generator=g, backend="reference")
    assert g.offset == 2  # 3 groups from 2**64 - 1
    assert torch.equal(R.normals(3, 2**64 - 1, 12)[4:], R.normals(3, 0, 8))


def test_channels_last_gets_same_noise_as_contiguous():
    x = torch.randn(2, 3, 5, 4)
    xc = x.contiguous(memory_format=torch.channels_last)
    a = mf.mollify(x, 0.7, generator=mf.Generator(8), backend="reference")
    b = mf.mollify(xc, 0.7, generator=mf.Generator(8), backend="reference")
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_reference_reflect_index_is_torch_reflect():
    for n in (2, 3, 5):
        i = torch.arange(-(n - 1), 2 * n - 1)
        x = torch.arange(float(n))[None, None]
        padded = torch.nn.functional.pad(x, (n - 1, n - 1), mode="reflect")[0, 0]
        assert torch.equal(R.reflect_index(i, n).float(), padded)
    assert R.reflect_index(torch.arange(-5, 6), 1).tolist() == [0] * 11


@pytest.mark.parametrize("hw", [(17, 19), (8, 8), (7, 12)])
@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_reference_blur_equals_torchvision(hw, s):
    r = math.ceil(3 * s)
    if r >= min(hw):
        pytest.skip("torchvision's padding needs r < min(H, W)")
    x = torch.rand(2, 3, *hw)
    want = TF.gaussian_blur(x, [2 * r + 1] * 2, [s, s])
    assert_within(R.blur(x, s), want, 1e-6 * (1 + want.abs()), "reference blur vs torchvision")
