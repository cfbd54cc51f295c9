"""A Dataset that mollifies each item with a shared ``mf.Generator``.

It lives in its own importable module because spawned DataLoader workers (and spawned
processes in general) unpickle the dataset by module path: a class defined inside a test
function could not be found there.
"""
import torch
from torch.utils.data import Dataset

import mollify_fast as mf

# One item is 8 numbers: 2 counter groups of 4 normals each (README, "The noise stream").
ITEM = 8


class NoiseDataset(Dataset):
    """Item ``i`` is pure noise (sigma = 1 on zeros) drawn from the shared generator."""

    def __init__(self, generator: "mf.Generator", n: int):
        self.generator = generator
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.zeros(1, ITEM)
        return mf.mollify(x, 1.0, generator=self.generator, backend="reference")[0]


def draw_in_child(generator: "mf.Generator", path: str, calls: int) -> None:
    """Target for a spawned process: draw ``calls`` items and save them."""
    ds = NoiseDataset(generator, calls)
    torch.save(torch.stack([ds[i] for i in range(calls)]), path)
