"""CONTRACT section 5: the training-loop helper."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import mollify_fast as mf


def test_window_and_identity_after():
    mol = mf.Mollifier(10, generator=mf.Generator(1), backend="reference")
    x = torch.randn(2, 3, 4, 4)
    assert mol(x, 10) is x and mol(x, 1000) is x
    y = mol(x, 0)
    assert y is not x and not torch.equal(y, x)
    assert mol.gamma(0) == 1.0 and mol.gamma(10) == 0.0


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "cosine"])
def test_noise_mode_matches_mollify(schedule):
    x = torch.randn(3, 2, 5, 5)
    mol = mf.Mollifier(8, schedule=schedule, generator=mf.Generator(2), backend="reference")
    g = mf.Generator(2)
    for step in range(8):
        gamma = mf.schedules.get(schedule)(step / 8)
        want = mf.mollify(x, math.sqrt(gamma), generator=g, backend="reference")
        assert torch.equal(mol(x, step), want), step


@pytest.mark.parametrize("mode", ["blur", "noise+blur"])
def test_blur_modes(mode):
    x = torch.rand(2, 3, 9, 9)
    mol = mf.Mollifier(4, mode=mode, blur_sigma_max=2.0, generator=mf.Generator(3), backend="reference")
    g = mf.Generator(3)
    for step in range(4):
        gamma = mf.schedules.sigmoid(step / 4)
        s = math.sqrt(gamma)
        want = mf.mollify(x, 0.0 if mode == "blur" else s, blur_sigma=2.0 * s, generator=g, backend="reference")
        assert torch.equal(mol(x, step), want)
    if mode == "blur":  # pure blur, no noise: at step 0 the blur sigma is blur_sigma_max
        y = mol(x, 0)
        want = mf.reference.blur(x, 2.0)
        assert (y - want).abs().max() <= 1e-6 * (1 + want.abs().max())


def test_schedule_kwargs_pass_through():
    mol = mf.Mollifier(10, schedule="sigmoid", start=-3.0, end=3.0, tau=1.0)
    assert mol.gamma(5) == pytest.approx(mf.schedules.sigmoid(0.5, start=-3.0, end=3.0, tau=1.0))
    with pytest.raises(TypeError):
        mf.Mollifier(10, schedule="linear", tau=1.0)


def test_resume_from_state_dict_draws_the_same_noise():
    x = torch.randn(4, 3, 8, 8)
    k, total = 3, 7
    full = mf.Mollifier(total + 5, generator=mf.Generator(77), backend="reference")
    uninterrupted = [full(x, s) for s in range(total)]
    first = mf.Mollifier(total + 5, generator=mf.Generator(77), backend="reference")
    for s in range(k):
        first(x, s)
    ckpt = first.state_dict()
    resumed = mf.Mollifier(total + 5, backend="reference")  # its own default stream, replaced by the checkpoint
    resumed.load_state_dict(ckpt)
    for s in range(k, total):
        assert torch.equal(resumed(x, s), uninterrupted[s]), s


def test_default_stream_reproducible_with_manual_seed():
    x = torch.randn(2, 8)
    torch.manual_seed(4)
    a = mf.Mollifier(5, backend="reference")(x, 1)
    torch.manual_seed(4)
    b = mf.Mollifier(5, backend="reference")(x, 1)
    assert torch.equal(a, b)


def test_load_state_dict_refuses_other_config():
    ckpt = mf.Mollifier(10, generator=mf.Generator(1)).state_dict()
    with pytest.raises(ValueError, match="mollify_steps"):
        mf.Mollifier(11).load_state_dict(ckpt)


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(mollify_steps=0), ValueError, "mollify_steps"),
        (dict(mollify_steps=-3), ValueError, "mollify_steps"),
        (dict(mollify_steps=2.5), TypeError, "mollify_steps"),
        (dict(mollify_steps=10, mode="sharpen"), ValueError, "mode"),
        (dict(mollify_steps=10, mode="blur"), ValueError, "blur_sigma_max"),
        (dict(mollify_steps=10, schedule="exp"), ValueError, "schedule"),
        (dict(mollify_steps=10, generator=torch.Generator()), TypeError, "generator"),
    ],
)
def test_constructor_errors(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        mf.Mollifier(**kwargs)


def test_negative_step_refused():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="step"):
        mf.Mollifier(10)(x, -1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same base seed everywhere, as in a real DDP script
        mol = mf.Mollifier(10, backend="reference")
        x = torch.zeros(4, 16)
        y = mol(x, 2)
        gamma = torch.tensor([mol.gamma(2)], dtype=torch.float64)
        ys = [torch.zeros_like(y) for _ in range(world)]
        gs = [torch.zeros_like(gamma) for _ in range(world)]
        torch.distributed.all_gather(ys, y)
        torch.distributed.all_gather(gs, gamma)
        if rank == 0:
            torch.save({"y": ys, "gamma": gs}, path)
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_ranks_draw_different_streams(tmp_path):
    path = str(tmp_path / "gathered.pt")
    mp.spawn(_rank_main, args=(2, _free_port(), path), nprocs=2, join=True)
    res = torch.load(path)
    assert not torch.equal(res["y"][0], res["y"][1]), "both ranks drew the same noise"
    assert torch.equal(res["gamma"][0], res["gamma"][1]), "the schedule differs across ranks"
    for y in res["y"]:
        assert y.std() > 0.5  # real noise of variance gamma(0.2) ~ 0.6
