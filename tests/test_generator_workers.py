"""README, "The noise stream": one ``mf.Generator`` in DataLoader workers and spawned processes.

Each process that inherits a generator (a forked or spawned DataLoader worker, a spawned
child) draws a stream of its own, never the parent's counter groups, and never changes the
parent's generator. Real workers, so each test costs a few seconds (spawn imports torch
in every worker).
"""
import multiprocessing

import pytest
import torch
from torch.utils.data import DataLoader

import mollify_fast as mf

from _worker_dataset import NoiseDataset, draw_in_child
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402

ITEMS = 8


def _groups(noise: torch.Tensor) -> torch.Tensor:
    """Counter groups as rows of 4 normals: two equal rows mean a group was drawn twice."""
    return noise.reshape(-1, 4)


def _assert_unique(*noises: torch.Tensor) -> None:
    g = torch.cat([_groups(n) for n in noises])
    n_unique = torch.unique(g, dim=0).shape[0]
    assert n_unique == g.shape[0], f"{g.shape[0] - n_unique} of {g.shape[0]} counter groups drawn twice"


def _epochs(loader: DataLoader, n: int):
    return [torch.cat(list(loader)) for _ in range(n)]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_draw_their_own_streams(context):
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} start method on this platform")
    g = mf.Generator(123)
    mf.mollify(torch.zeros(1, 4), 1.0, generator=g, backend="reference")  # used in the parent first
    before = g.state_dict()
    # Spawn starts cost ~5 s each on the 2-core dev VM (torch is imported in every worker), so the
    # spawn workers persist across the two epochs; the fork workers are new each epoch (the
    # case that repeated every epoch's noise).
    loader = DataLoader(NoiseDataset(g, ITEMS), batch_size=2, num_workers=2, multiprocessing_context=context,
                        persistent_workers=context == "spawn")
    torch.manual_seed(0)
    epochs = _epochs(loader, 2)
    assert g.state_dict() == before, "the workers changed the parent's generator"
    if context == "fork":  # (the same property for spawn would start two more workers)
        torch.manual_seed(0)  # the workers' seeds come from PyTorch's RNG in the parent
        again = _epochs(loader, 2)
        for a, b in zip(epochs, again):
            assert torch.equal(a, b), "worker noise is not reproducible under torch.manual_seed"
    parent = torch.stack([NoiseDataset(g, ITEMS)[i] for i in range(ITEMS)])  # the parent goes on drawing
    # No group twice: not across the two workers, not across epochs, not with the parent.
    _assert_unique(*epochs, parent)


def test_generator_sent_to_a_spawned_process(tmp_path):
    # Sending a generator to a spawned child pickles it with multiprocessing's pickler, which
    # moves tensors into shared memory: the parent must not keep reading the freed old buffer,
    # the child must not draw the parent's groups, and the parent's counter is its own.
    g = mf.Generator(77)
    first = NoiseDataset(g, 1)[0]  # used before sending (any cached view is in place)
    path = str(tmp_path / "child.pt")
    p = multiprocessing.get_context("spawn").Process(target=draw_in_child, args=(g, path, 4))
    p.start()
    p.join(SUBPROCESS_LIMIT_S)  # a hang, never a slow machine
    assert p.exitcode == 0
    child = torch.load(path)
    assert g.state_dict() == {"seed": 77, "offset": 2}, "the child moved the parent's counter"
    after = torch.stack([NoiseDataset(g, 3)[i] for i in range(3)])
    assert g.state_dict() == {"seed": 77, "offset": 8}, "the parent's counter stopped advancing"
    ref = mf.Generator(77)
    want = torch.stack([NoiseDataset(ref, 4)[i] for i in range(4)])
    assert torch.equal(torch.cat([first[None], after]), want), "the parent's stream changed"
    _assert_unique(want, child)


def test_workers_of_different_ranks_draw_different_streams(monkeypatch):
    # DDP with DataLoader workers: every rank runs the same script with the same torch seed,
    # so the workers' seeds agree across ranks. A Mollifier's stream derives its key from the rank, and a
    # worker must derive it from the rank of the process that forked it (it has no process group of its
    # own). The rank comes from the RANK environment variable, as torchrun sets it.
    outs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        g = mf.Generator(5)
        mf.Mollifier(10, generator=g)  # the Mollifier takes the stream over: per-rank
        loader = DataLoader(NoiseDataset(g, ITEMS), batch_size=2, num_workers=2, multiprocessing_context="fork")
        torch.manual_seed(0)
        outs.append(torch.cat(list(loader)))
    _assert_unique(*outs)
