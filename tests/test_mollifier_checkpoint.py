"""A Mollifier held by a module is checkpointed with ``module.state_dict()`` and resumed
exactly, with no user hooks, also through Lightning (README, "Lightning and other frameworks").
"""
import io
import warnings

import numpy as np
import pytest
import torch

import mollify_fast as mf

X = torch.zeros(2, 8)


class Model(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)
        self.mol = mf.Mollifier(10, backend="reference", **kw)

    def forward(self, x, step):
        return self.lin(self.mol(x, step))


def _round_trip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # no allowlist: plain types and tensors only


@pytest.mark.parametrize("kw", [{}, {"tau": np.float64(0.5), "end": np.int64(4)}])
def test_module_state_dict_carries_the_position(kw):
    torch.manual_seed(0)
    model = Model(**kw)
    for s in range(3):
        model.mol(X, s)
    sd = _round_trip(model.state_dict())
    assert "mol._extra_state" in sd and not list(model.mol.buffers()), "the position must not be a buffer"
    want = [model.mol(X, s) for s in (3, 4)]
    torch.manual_seed(123)  # the resumed run's own RNG must not matter
    resumed = Model(**kw)
    resumed.load_state_dict(sd)
    assert all(torch.equal(resumed.mol(X, s), w) for s, w in zip((3, 4), want))
    # A module made with other settings refuses the checkpoint, naming the setting.
    with pytest.raises(ValueError, match="tau"):
        Model(**dict(kw, tau=0.6)).load_state_dict(sd)


def test_standalone_state_dict_keeps_its_format():
    mol = mf.Mollifier(10, generator=mf.Generator(3), backend="reference", tau=np.float64(0.5))
    sd = mol.state_dict()
    assert set(sd) == {"mollify_steps", "schedule", "schedule_kwargs", "mode", "blur_sigma_max", "generator"}
    assert type(sd["schedule_kwargs"]["tau"]) is float
    other = mf.Mollifier(10, backend="reference", tau=0.5)
    other.load_state_dict(_round_trip(sd))
    assert other.generator.state_dict() == {"seed": 3, "offset": 0}
    # torch.nn.Module's own form of the state loads too.
    other.load_state_dict(torch.nn.Module.state_dict(mol))


def test_lightning_resume_mid_epoch_draws_the_uninterrupted_noise(tmp_path):
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 1)
            self.mol = mf.Mollifier(100, backend="reference")
            self.drawn = {}

        def training_step(self, batch, idx):
            x = self.mol(batch[0], self.global_step)
            self.drawn[self.global_step] = x.clone()
            return self.lin(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(model, max_steps, ckpt_path=None):
        loader = DataLoader(TensorDataset(torch.zeros(8, 8)), batch_size=2)  # 4 steps an epoch
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
            trainer.fit(model, loader, ckpt_path=ckpt_path)
        return trainer

    torch.manual_seed(0)
    full = Lit()
    fit(full, 6)
    torch.manual_seed(0)
    first = Lit()
    trainer = fit(first, 3)  # stops mid-epoch (step 3 of 4)
    path = str(tmp_path / "mid.ckpt")
    trainer.save_checkpoint(path)
    torch.manual_seed(99)  # a fresh process's RNG: the checkpoint alone must restore the stream
    resumed = Lit()
    fit(resumed, 6, ckpt_path=path)
    assert sorted(resumed.drawn) == [3, 4, 5]
    for s in (3, 4, 5):
        assert torch.equal(resumed.drawn[s], full.drawn[s]), f"step {s} drew other noise after the resume"
