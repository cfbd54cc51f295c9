"""Tensor subclasses that only type a batch (torchvision's tv_tensors.Image, a plain
``class MyBatch(torch.Tensor)``) run like a plain tensor and come back as their own type; a
subclass with logic of its own (``nn.Parameter``) keeps going through the custom op."""
import pytest
import torch

import mollify_fast as mf

tv_tensors = pytest.importorskip("torchvision.tv_tensors")


class Batch(torch.Tensor):
    pass


@pytest.mark.parametrize("wrap", [tv_tensors.Image, lambda t: t.as_subclass(Batch)], ids=["tv_image", "plain_subclass"])
@pytest.mark.parametrize("blur", [None, 1.0])
def test_wrapper_subclass_keeps_its_type_and_the_plain_numbers(wrap, blur):
    x = torch.rand(4, 3, 9, 11)
    xs = wrap(x.clone())
    got, eps = mf.mollify(xs, 0.3, blur_sigma=blur, generator=mf.Generator(5), return_noise=True)
    want, want_eps = mf.mollify(x, 0.3, blur_sigma=blur, generator=mf.Generator(5), return_noise=True)
    assert type(got) is type(xs) and type(eps) is type(xs)
    assert torch.equal(got.as_subclass(torch.Tensor), want)
    assert torch.equal(eps.as_subclass(torch.Tensor), want_eps)


def test_wrapper_subclass_out_and_in_place():
    x = torch.rand(4, 3, 9, 11)
    img = tv_tensors.Image(x.clone())
    want = mf.mollify(x, 0.3, generator=mf.Generator(5))
    out = tv_tensors.Image(torch.empty_like(x))
    assert mf.mollify(img, 0.3, generator=mf.Generator(5), out=out) is out
    assert torch.equal(out.as_subclass(torch.Tensor), want)
    assert mf.mollify(img, 0.3, generator=mf.Generator(5), out=img) is img
    assert torch.equal(img.as_subclass(torch.Tensor), want)


def test_wrapper_subclass_takes_the_plan_path():
    """The plain tensor's launch plan serves the subclass: no custom-op dispatch."""
    import sys

    mm = sys.modules["mollify_fast._op"]
    x = torch.rand(4, 3, 9, 13)
    mm._plans.clear()
    mf.mollify(tv_tensors.Image(x), 0.3, generator=mf.Generator(1))
    assert any(k[0] == x.shape for k in mm._plans), "the subclass call built no launch plan"


def test_parameter_is_not_unwrapped():
    p = torch.nn.Parameter(torch.rand(4, 5), requires_grad=False)
    y = mf.mollify(p, 0.3, generator=mf.Generator(1))
    assert type(y) is torch.Tensor and torch.equal(y, mf.mollify(p.detach(), 0.3, generator=mf.Generator(1)))
