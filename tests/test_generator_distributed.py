"""torch.distributed (gloo, 2 ranks on 127.0.0.1): a Mollifier's ranks draw different streams
whatever the order of the first draw and ``init_process_group``, and ranks started by fork are
as reproducible under a fixed ``torch.manual_seed`` as spawned ones (README, "torch.distributed").
"""
import multiprocessing
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

import mollify_fast as mf
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402

WORLD = 2
X = torch.zeros(2, 8)  # 4 counter groups per call


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("RANK", None)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)


def _gather_save(rank: int, draws: torch.Tensor, path: str) -> None:
    got = [torch.zeros_like(draws) for _ in range(WORLD)]
    torch.distributed.all_gather(got, draws)
    if rank == 0:
        torch.save(torch.stack(got), path)


def _draw_before_init(rank, port, path, backend):
    torch.manual_seed(0)  # the same base seed on every rank, as in a real DDP script
    mol = mf.Mollifier(10, backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = mol(X, 0)  # before the process group: the rank is not known yet
        _init(rank, port)
        try:
            later = torch.stack([mol(X, s) for s in (1, 2)])
            warned = torch.tensor([any("before the torch.distributed rank was known" in str(w.message)
                                       for w in caught)], dtype=torch.float32)
            _gather_save(rank, torch.cat([first.flatten(), later.flatten(), warned]), path)
        finally:
            torch.distributed.destroy_process_group()


# "cpu": the launch call takes the stream itself and asks whether a process group exists only
# for a provisional stream; "reference": the stream is taken in Python.
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_draw_before_init_process_group_does_not_tie_the_ranks(tmp_path, backend):
    if backend == "cpu" and not mf.backends.availability("cpu")[0]:
        pytest.skip("the compiled extension is not built")
    path = str(tmp_path / "gathered.pt")
    mp.spawn(_draw_before_init, args=(_free_port(), path, backend), nprocs=WORLD, join=True)
    got = torch.load(path)
    n = X.numel()
    first, later, warned = got[:, :n], got[:, n:-1], got[:, -1]
    # The first draw could not know the rank: both drew rank 0's stream, and rank 1 says so.
    assert torch.equal(first[0], first[1])
    assert warned.tolist() == [0.0, 1.0], warned
    # From the process group on, the ranks draw different streams (before the fix: equal all run).
    groups = later.reshape(-1, 4)
    assert torch.unique(groups, dim=0).shape[0] == groups.shape[0], "a counter group drawn on two ranks"


def _forked_rank(rank, port, mol, path):
    _init(rank, port)
    try:
        _gather_save(rank, torch.stack([mol(X, s) for s in (0, 1)]), path)
    finally:
        torch.distributed.destroy_process_group()


def _run_forked(path: str) -> torch.Tensor:
    torch.manual_seed(0)
    mol = mf.Mollifier(10, backend="reference")  # made in the launcher, inherited by fork
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_forked_rank, args=(r, port, mol, path)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(SUBPROCESS_LIMIT_S)  # a hang, never a slow machine
    assert [p.exitcode for p in procs] == [0] * WORLD
    assert mol.generator.state_dict()["offset"] == 0, "a rank moved the launcher's generator"
    return torch.load(path)


def test_fork_started_ranks_are_reproducible_and_distinct(tmp_path):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    a = _run_forked(str(tmp_path / "a.pt"))
    b = _run_forked(str(tmp_path / "b.pt"))
    assert torch.equal(a, b), "two runs with the same torch.manual_seed drew other noise (pid-keyed ranks)"
    assert not torch.equal(a[0], a[1]), "both ranks drew the same noise"
    # Each forked rank draws the stream a rank that built the Mollifier itself would draw, so
    # the usual DDP checkpoint (rank 0 saves the base seed, every rank loads) resumes exactly.
    for rank in range(WORLD):
        os.environ["RANK"] = str(rank)
        try:
            torch.manual_seed(0)
            own = mf.Mollifier(10, backend="reference")
            assert torch.equal(torch.stack([own(X, s) for s in (0, 1)]), a[rank])
        finally:
            del os.environ["RANK"]


def _probe_states(rank, port, path):
    from mollify_fast import generator

    seen = [(generator._group_initialized(), torch.distributed.is_initialized())]
    _init(rank, port)
    try:
        seen.append((generator._group_initialized(), torch.distributed.is_initialized()))
    finally:
        torch.distributed.destroy_process_group()
    seen.append((generator._group_initialized(), torch.distributed.is_initialized()))
    if rank == 0:
        torch.save(seen, path)


def test_the_process_group_probe_agrees_with_torch_distributed(tmp_path):
    # The per-draw check for a provisional stream reads the default group without
    # torch.distributed.is_initialized's properties; it must answer as that function does before
    # init_process_group, with a group, and after destroy_process_group.
    path = str(tmp_path / "seen.pt")
    mp.spawn(_probe_states, args=(_free_port(), path), nprocs=WORLD, join=True)
    seen = torch.load(path)
    assert seen == [(False, False), (True, True), (False, False)], seen
