"""pytest-benchmark entry points: ``pytest benchmarks/micro`` (``--benchmark-json=...`` to save).

The side-by-side harness with CSV results and plots is ``python -m benchmarks.micro.bench_mollify``;
these cases are the same ops through pytest-benchmark's own statistics.
"""
import math

import pytest
import torch

import mollify_fast as mf

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(256, 3, 32, 32), (64, 3, 256, 256)]
SIGMA, ALPHA = 0.6, math.sqrt(1 - 0.36)


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _backends():
    names = []
    for name, (ok, _) in mf.available_backends().items():
        if ok and name != "reference":
            try:
                mf.mollify(torch.zeros(2, 2, device=DEV), 0.5, backend=name)
                names.append(name)
            except mf.BackendUnavailableError:
                pass
    return names


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("provider", ["eager"] + [f"mollify_fast[{b}]" for b in _backends()])
def test_noise(benchmark, provider, shape):
    x = torch.randn(shape, device=DEV)
    g = mf.Generator(1)
    if provider == "eager":
        fn = lambda: ALPHA * x + SIGMA * torch.randn_like(x)  # noqa: E731
    else:
        backend = provider[len("mollify_fast["):-1]
        fn = lambda: mf.mollify(x, SIGMA, generator=g, backend=backend)  # noqa: E731
    benchmark.group = f"noise {shape}"
    benchmark(lambda: (fn(), _sync()))


@pytest.mark.parametrize("blur_sigma", [1.0, 2.0])
@pytest.mark.parametrize("provider", ["torchvision+eager"] + [f"mollify_fast[{b}]" for b in _backends()])
def test_blur_noise(benchmark, provider, blur_sigma):
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(256, 3, 32, 32, device=DEV)
    g = mf.Generator(1)
    r = math.ceil(3 * blur_sigma)
    if provider == "torchvision+eager":
        fn = lambda: ALPHA * TF.gaussian_blur(x, [2 * r + 1] * 2, [blur_sigma] * 2) + SIGMA * torch.randn_like(x)  # noqa: E731
    else:
        backend = provider[len("mollify_fast["):-1]
        fn = lambda: mf.mollify(x, SIGMA, blur_sigma=blur_sigma, generator=g, backend=backend)  # noqa: E731
    benchmark.group = f"blur+noise s={blur_sigma}"
    benchmark(lambda: (fn(), _sync()))
