"""The training-loop helper (README, "The contract, in short": Schedules; "Checkpoint resume")."""
import copy
import math
import os
import socket

import numpy as np
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


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "cosine"])
def test_noise_scale_computed_ahead_is_each_steps_own(schedule):
    # mol(x, step) takes a built-in schedule's noise scale from a block of steps computed ahead:
    # each step must get its own sqrt(gamma(step / T)), in any order of steps, across the
    # blocks' edges and up to the window's end.
    steps = 150
    x = torch.randn(2, 3, 4, 4)
    mol = mf.Mollifier(steps, schedule=schedule, generator=mf.Generator(4), backend="reference")
    g = mf.Generator(4)
    for step in [0, 1, 63, 64, 65, 130, 2, 149, 148, 100, 0, 127, 128, 149]:
        want = mf.mollify(x, math.sqrt(mf.schedules.get(schedule)(step / steps)), generator=g, backend="reference")
        assert torch.equal(mol(x, step), want), step


def test_a_custom_schedule_is_asked_at_each_step_only():
    # A custom schedule may be impure (read a global, count): it is called once per call, for
    # that step's u, never ahead.
    asked = []

    def schedule(u):
        asked.append(u)
        return 1.0 - u

    mol = mf.Mollifier(100, schedule=schedule, generator=mf.Generator(1), backend="reference")
    asked.clear()  # the constructor's check of the schedule's keywords
    x = torch.randn(2, 5)
    for step in (3, 4, 70):
        mol(x, step)
    assert asked == [3 / 100, 4 / 100, 70 / 100]


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
    "saved,here,word",
    [
        (dict(schedule="sigmoid"), dict(schedule="cosine"), "schedule"),
        (dict(schedule="sigmoid", tau=0.5), dict(schedule="sigmoid"), "tau"),
        (dict(schedule="sigmoid", end=3.0), dict(schedule="sigmoid", end=4.0), "end"),
        (dict(schedule="linear", clip_min=1e-3), dict(schedule="linear"), "clip_min"),
        (dict(mode="noise"), dict(mode="noise+blur", blur_sigma_max=1.0), "mode"),
        (dict(mode="blur", blur_sigma_max=2.0), dict(mode="blur", blur_sigma_max=1.0), "blur_sigma_max"),
    ],
)
def test_load_state_dict_refuses_another_schedule(saved, here, word):
    ckpt = mf.Mollifier(10, generator=mf.Generator(1), **saved).state_dict()
    mol = mf.Mollifier(10, generator=mf.Generator(5), **here)
    with pytest.raises(ValueError, match=word):
        mol.load_state_dict(ckpt)
    assert mol.generator.state_dict() == {"seed": 5, "offset": 0}, "a refused load changed the stream"


def test_load_state_dict_accepts_the_same_schedule_spelled_differently():
    # tau=0.7 is sigmoid's default: writing it out is the same schedule.
    ckpt = mf.Mollifier(10, generator=mf.Generator(1), schedule="sigmoid").state_dict()
    mol = mf.Mollifier(10, schedule="sigmoid", tau=0.7, end=3)
    mol.load_state_dict(ckpt)
    assert mol.generator.state_dict() == {"seed": 1, "offset": 0}


def test_state_dict_of_a_fresh_mollifier_leaves_torch_rng_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    mol = mf.Mollifier(10, backend="reference")
    ckpt = mol.state_dict()
    assert torch.equal(torch.get_rng_state(), before), "state_dict() drew from PyTorch's RNG"
    # The unseeded stream round-trips: both draw their seed at first use, reproducibly.
    other = mf.Mollifier(10, backend="reference")
    other.load_state_dict(ckpt)
    x = torch.zeros(2, 8)
    torch.manual_seed(2)
    a = mol(x, 1)
    torch.manual_seed(2)
    assert torch.equal(other(x, 1), a)


def test_deepcopy_of_a_used_mollifier_keeps_advancing():
    x = torch.zeros(2, 8)  # 4 counter groups per call
    mol = mf.Mollifier(10, generator=mf.Generator(3), backend="reference")
    mol(x, 0)
    c = copy.deepcopy(mol)
    got = [c(x, s) for s in (1, 2)]
    assert c.state_dict()["generator"] == {"seed": 3, "offset": 12}
    assert mol.state_dict()["generator"] == {"seed": 3, "offset": 4}
    for s, a in zip((1, 2), got):  # the copy continues the original's stream
        assert torch.equal(mol(x, s), a)


def test_unknown_backend_refused_at_construction():
    with pytest.raises(ValueError, match="backend.*cpux"):
        mf.Mollifier(10, backend="cpux")
    with pytest.raises(ValueError, match="backend"):
        mf.Mollifier(10, backend=None)


@pytest.mark.parametrize("mode", ["blur", "noise+blur"])
def test_blur_modes_refuse_tabular_batches(mode):
    g = mf.Generator(4)
    mol = mf.Mollifier(10, mode=mode, blur_sigma_max=1.0, generator=g, backend="reference")
    with pytest.raises(ValueError, match=r"(?s)tabular.*mode=.noise"):
        mol(torch.randn(16, 5), 0)
    assert g.offset == 0, "the refused call advanced the stream"
    assert mol(torch.randn(16, 5), 10).shape == (16, 5)  # after the window nothing runs anyway


@pytest.mark.parametrize(
    "step", [np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)]
)
def test_integer_like_steps(step):
    x = torch.randn(2, 3, 4, 4)
    want = mf.Mollifier(8, generator=mf.Generator(6), backend="reference")(x, 3)
    mol = mf.Mollifier(8, generator=mf.Generator(6), backend="reference")
    assert torch.equal(mol(x, step), want)
    assert mol.gamma(step) == mol.gamma(3)
    assert mol(x, type(step)(8) if isinstance(step, np.integer) else torch.tensor(8)) is x


@pytest.mark.parametrize(
    "step,exc", [(2.5, TypeError), (3.0, TypeError), (True, TypeError), (torch.tensor(2.0), TypeError),
                 (torch.tensor([1, 2]), ValueError), (np.int64(-1), ValueError), (torch.tensor(-1), ValueError)]
)
def test_bad_steps_refused(step, exc):
    g = mf.Generator(1)
    with pytest.raises(exc, match="step"):
        mf.Mollifier(10, generator=g)(torch.zeros(2, 4), step)
    assert g.offset == 0


@pytest.mark.parametrize("mode,step_type,compiles", [("noise", "tensor", 1), ("noise+blur", "tensor", 1),
                                                     ("noise", "int", 2)])
def test_compiled_step_does_not_recompile_per_step(mode, step_type, compiles):
    # A training step compiled with fullgraph=True: with the step as a 0-d tensor the
    # schedule is computed from it in the graph, so a new step is new data, not a new graph.
    # A Python int is a constant in the first graph; PyTorch makes it dynamic at the second
    # value, which is one recompile (the old code recompiled at every step).
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    kw = dict(mode=mode, blur_sigma_max=1.5) if mode != "noise" else {}
    x = torch.randn(2, 3, 6, 6)
    eager = mf.Mollifier(6, generator=mf.Generator(8), backend="reference", **kw)
    mol = mf.Mollifier(6, generator=mf.Generator(8), backend="reference", **kw)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)
    def train_step(x, step):
        return mol(x, step) * 2

    for step in range(5):
        got = train_step(x, torch.tensor(step) if step_type == "tensor" else step)
        want = eager(x, step) * 2
        # The graph computes the schedule with torch's float64 functions, eager with math's:
        # sigma may differ in its last float64 bit, which can move a float32 output by 1 ulp.
        assert (got - want).abs().max() <= 2 * 2.0**-23 * (1 + want.abs().max()), step
    assert counter.frame_count == compiles, f"{counter.frame_count} compiles for 5 steps"
    assert mol.generator.offset == eager.generator.offset


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
        # The usual DDP resume: rank 0 saves, every rank loads rank 0's checkpoint.
        ckpt = [mol.state_dict()]
        torch.distributed.broadcast_object_list(ckpt, src=0)
        uninterrupted = mol(x, 3)
        resumed = mf.Mollifier(10, backend="reference")
        resumed.load_state_dict(ckpt[0])
        r = resumed(x, 3)
        rs = [torch.zeros_like(r) for _ in range(world)]
        torch.distributed.all_gather(rs, r)
        same = torch.tensor([torch.equal(r, uninterrupted)])
        sames = [torch.zeros_like(same) for _ in range(world)]
        torch.distributed.all_gather(sames, same)
        if rank == 0:
            torch.save({"y": ys, "gamma": gs, "resumed": rs, "same": sames}, path)
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
    assert not torch.equal(res["resumed"][0], res["resumed"][1]), "after the resume both ranks draw the same noise"
    # Every rank started from the same torch seed, so rank 0's checkpoint is every rank's:
    # each rank's resumed run draws exactly what its uninterrupted run draws.
    assert all(bool(s) for s in res["same"]), res["same"]


def _sched_a(u):
    return 1.0 - u


def _sched_b(u):
    return (1.0 - u) ** 2


def test_load_state_dict_refuses_another_callable_schedule():
    import functools

    ckpt = mf.Mollifier(10, schedule=_sched_a, generator=mf.Generator(1)).state_dict()
    for other in (_sched_b, lambda u: 1.0 - u, functools.partial(mf.schedules.sigmoid, tau=0.5)):
        mol = mf.Mollifier(10, schedule=other, generator=mf.Generator(5))
        with pytest.raises(ValueError, match="schedule"):
            mol.load_state_dict(ckpt)
        assert mol.generator.state_dict() == {"seed": 5, "offset": 0}
    # Two different lambdas (same name "<lambda>") and two partials differ too.
    lam = mf.Mollifier(10, schedule=lambda u: 1.0 - u).state_dict()
    with pytest.raises(ValueError, match="schedule"):
        mf.Mollifier(10, schedule=lambda u: (1.0 - u) ** 2).load_state_dict(lam)
    part = mf.Mollifier(10, schedule=functools.partial(mf.schedules.sigmoid, tau=0.5)).state_dict()
    with pytest.raises(ValueError, match="schedule"):
        mf.Mollifier(10, schedule=functools.partial(mf.schedules.sigmoid, tau=0.6)).load_state_dict(part)
    # The same function (a rerun of the same script) resumes.
    mol = mf.Mollifier(10, schedule=_sched_a)
    mol.load_state_dict(ckpt)
    assert mol.generator.state_dict() == {"seed": 1, "offset": 0}


def test_load_state_dict_refuses_unexpected_keys():
    ckpt = dict(mf.Mollifier(10, generator=mf.Generator(1)).state_dict(), bogus=1)
    mol = mf.Mollifier(10, generator=mf.Generator(5))
    with pytest.raises(ValueError, match="bogus"):
        mol.load_state_dict(ckpt)
    assert mol.generator.state_dict() == {"seed": 5, "offset": 0}
    mol.load_state_dict(ckpt, strict=False)  # PyTorch's non-strict loading ignores it
    assert mol.generator.state_dict() == {"seed": 1, "offset": 0}


def test_zero_dim_integer_array_step():
    mol = mf.Mollifier(10, generator=mf.Generator(2), backend="reference")
    ref = mf.Mollifier(10, generator=mf.Generator(2), backend="reference")
    x = torch.zeros(2, 8)
    assert torch.equal(mol(x, np.array(3)), ref(x, 3))
    assert mol.gamma(np.array(3, dtype=np.uint8)) == ref.gamma(3)
    with pytest.raises(TypeError, match="step"):
        mol(x, np.array(3.0))
    with pytest.raises(ValueError, match="step"):
        mol(x, np.array([3]))


def test_custom_schedule_values_outside_0_1():
    x = torch.zeros(2, 8)
    # Rounding: a variance a few ulps below 0 is 0 (no noise), not a math domain error.
    tiny = mf.Mollifier(10, schedule=lambda u: (1.0 - u) - 0.1 if u >= 0.9 else 1.0 - u,  # -2.8e-17
                        generator=mf.Generator(2), backend="reference")
    assert tiny.gamma(9) == 0.0
    assert torch.equal(tiny(x, 9), x)
    for bad, value in ((lambda u: -0.25, "-0.25"), (lambda u: 1.5, "1.5"), (lambda u: float("nan"), "nan")):
        mol = mf.Mollifier(10, schedule=bad, generator=mf.Generator(2), backend="reference")
        with pytest.raises(ValueError, match=rf"schedule.*u=0\.3.*{value}"):
            mol(x, 3)
        with pytest.raises(ValueError, match=value):
            mol.gamma(3)
        assert mol.generator.state_dict() == {"seed": 2, "offset": 0}


def test_module_hooks_and_compiled_modules_still_take_nn_modules_call_path():
    # mol(x, step) skips nn.Module's call frames only when nothing uses them: a forward hook,
    # a forward pre-hook and a global hook still run, with the same result as the plain call.
    x = torch.zeros(2, 3)
    mol = mf.Mollifier(10, schedule="linear", generator=mf.Generator(3))
    ref = mf.Mollifier(10, schedule="linear", generator=mf.Generator(3))(x, 2)
    seen = []
    h1 = mol.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    h2 = mol.register_forward_hook(lambda m, args, out: seen.append("post"))
    h3 = torch.nn.modules.module.register_module_forward_hook(lambda m, args, out: seen.append("global"))
    try:
        out = mol(x, 2)
    finally:
        h1.remove(), h2.remove(), h3.remove()
    assert seen == ["pre", "post", "global"] or seen == ["pre", "global", "post"]
    assert torch.equal(out, ref)
    seen.clear()
    mol(x, 3)
    assert seen == []


@pytest.mark.parametrize("schedule", ["linear", "sigmoid", "cosine", "numpy", "rounding"])
def test_training_loop_call_equals_forward(schedule):
    # mol(x, step) takes the plan path straight from __call__; forward, the general path, must
    # give the same numbers and leave the generator at the same place, for any schedule output
    # (a numpy float, a value rounded just past 1 that forward clamps).
    sched = {"numpy": lambda u: np.float64(1.0 - u) ** 2, "rounding": lambda u: 1.0 + 1e-12 * (1 - u)}.get(schedule, schedule)
    x = torch.randn(4, 3, 5)
    fast = mf.Mollifier(50, schedule=sched, generator=mf.Generator(11))
    slow = mf.Mollifier(50, schedule=sched, generator=mf.Generator(11))
    for step in (0, 7, 49, 50, 60):
        got, want = fast(x, step), slow.forward(x, step)
        assert torch.equal(got, want), (schedule, step)
        assert fast.generator.offset == slow.generator.offset
