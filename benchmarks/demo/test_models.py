"""The demo's and training benchmark's models and measures are what they claim: checked here so
that their numbers mean what they say (log-determinants against autograd Jacobians, the
Fréchet distance against closed forms and scipy's sqrtm, the tabular pipeline's
standardisation against statistics computed by hand)."""
import math
import os
import sys

import pytest
import torch

import mollify_fast as mf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.demo.digits import (BLUR_SIGMA_MAX, DigitsClassifier, as_levels, digits_split,  # noqa: E402
                                    feature_distance, frechet_distance, gaussian_stats,
                                    load_or_train_classifier, train_classifier, vae_batch)
from benchmarks.demo.tabular import load_table, run_flow, split_standardise  # noqa: E402
from benchmarks.demo.models import (BatchNormFlow, Glow, MLPVAE, RealNVP2D, RealNVPImage, TabularFlow,  # noqa: E402
                                      squeeze)


def _perturb(model, scale=0.3):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_realnvp2d_density_integrates_to_one():
    torch.manual_seed(0)
    m = RealNVP2D(n_layers=4, hidden=16).double()
    _perturb(m, 0.1)
    n, lim = 400, 8.0
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = m(grid).exp().sum().item() * (xs[1] - xs[0]).item() ** 2
    assert abs(mass - 1) < 0.01, mass


def test_realnvp2d_decode_inverts_encode():
    torch.manual_seed(1)
    m = RealNVP2D(n_layers=4, hidden=16).double()
    _perturb(m, 0.1)
    x = torch.randn(100, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        z, _ = m.encode(x)
        assert torch.allclose(m.decode(z), x, atol=1e-10)
        assert m.sample(7).shape == (7, 2)


def _flow_logdet_brute(model, x):
    """log p(x) from the change of variables computed with an autograd Jacobian."""
    def z_of(v):
        return _latent(model, v.view_as(x))

    jac = torch.autograd.functional.jacobian(z_of, x.reshape(-1))
    z = z_of(x.reshape(-1))
    return (-0.5 * (z * z + math.log(2 * math.pi))).sum() + torch.linalg.slogdet(jac)[1]


def _latent(model, x):
    """All latent variables of a multi-scale image flow, flattened, in a fixed order."""
    zs = []
    if isinstance(model, RealNVPImage):
        for block in model.scales:
            for i, layer in enumerate(block):
                if i == 3:
                    x = squeeze(x)
                x, _ = layer(x)
            z, x = x.chunk(2, 1)
            zs.append(z.reshape(-1))
        for layer in model.final:
            x, _ = layer(x)
    else:
        for i, block in enumerate(model.blocks):
            x = squeeze(x)
            for layer in block:
                x, _ = layer(x)
            if i < len(model.blocks) - 1:
                z, x = x.chunk(2, 1)
                zs.append(z.reshape(-1))
    zs.append(x.reshape(-1))
    return torch.cat(zs)


@pytest.mark.parametrize("cls", [RealNVPImage, Glow])
def test_image_flow_log_likelihood_matches_jacobian(cls):
    torch.manual_seed(0)
    model = cls(channels=3, hidden=8, scales=2).double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    model(torch.rand(8, 3, 4, 4, dtype=torch.float64))  # actnorm's data-dependent init
    _perturb(model, 0.05)
    got = model(x)[0]
    want = _flow_logdet_brute(model, x)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-8), (got.item(), want.item())


def test_iwae_bound_is_tighter_than_elbo_on_average():
    torch.manual_seed(0)
    m = MLPVAE(d=16, z=4, hidden=32)
    x = torch.rand(256, 16)
    with torch.no_grad():
        elbo = m.elbo(x).mean()
        iw = m.iwae(x, k=64).mean()
    assert iw >= elbo


# ---------------------------------------------------------------- tabular flows
def _tabular_eval(kind, d, seed, blocks=3, hidden=16):
    """A perturbed flow in eval mode, its batch norms estimated on a shifted, scaled sample."""
    torch.manual_seed(seed)
    model = TabularFlow(d, kind, blocks=blocks, hidden=hidden).double()
    _perturb(model, 0.1)
    model.reestimate_batchnorm(torch.randn(256, d, dtype=torch.float64) * 1.5 + 0.5)
    return model.eval()


@pytest.mark.parametrize("kind", TabularFlow.KINDS)
def test_tabular_flow_log_likelihood_matches_change_of_variables(kind):
    """log p(x) = log N(f(x); 0, I) + log|det df/dx| with the Jacobian from autograd, per row,
    in eval mode (batch norms a fixed bijection): catches a wrong MADE mask (the Jacobian would
    not be triangular) or a missing log-det term."""
    d = 5
    model = _tabular_eval(kind, d, 0)
    x = torch.randn(4, d, dtype=torch.float64)
    got = model(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: model.encode(v[None])[0][0], x[i])
        z = model.encode(x[i:i + 1])[0][0]
        want = (-0.5 * (z * z + math.log(2 * math.pi))).sum() + torch.linalg.slogdet(jac)[1]
        assert torch.allclose(got[i], want, rtol=1e-10, atol=1e-10), (kind, i, got[i].item(), want.item())


@pytest.mark.parametrize("kind", TabularFlow.KINDS)
def test_tabular_flow_density_integrates_to_one(kind):
    """exp(log p) of a 2-D flow summed over a fine grid is 1: the density is normalised."""
    model = _tabular_eval(kind, 2, 1, blocks=2)
    n, lim = 400, 9.0
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = model(grid).exp().sum().item() * (xs[1] - xs[0]).item() ** 2
    assert abs(mass - 1) < 0.01, (kind, mass)


def test_maf_layer_is_autoregressive():
    """Output i of a MAF block depends on inputs <= i only (so its Jacobian is triangular and
    the sum of -a_i is its log-determinant)."""
    torch.manual_seed(1)
    made = TabularFlow(6, "maf", blocks=1, hidden=32).double().layers[0]
    _perturb(made, 0.5)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0][0], torch.randn(6, dtype=torch.float64))
    assert torch.count_nonzero(jac.triu(1)) == 0, jac
    assert torch.count_nonzero(jac.diagonal()) == 6


def test_split_and_standardisation_follow_the_authors_rules():
    """No shuffling; the last int(0.1 N) rows are test, the last int(0.1 N') of the rest are
    validation; standardised by the mean and population std of training + validation rows."""
    n = 1599
    x = torch.stack([torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64) ** 2 % 97], 1)
    train, val, test, stats = split_standardise(x)
    assert (train.shape[0], val.shape[0], test.shape[0]) == (1296, 144, 159)  # red-wine's sizes
    back = lambda t: t.double() * stats["std"] + stats["mean"]  # noqa: E731
    # Row order kept: column 0 (the row index) comes back as consecutive blocks.
    assert torch.allclose(back(train)[:, 0], torch.arange(0, 1296, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(back(val)[:, 0], torch.arange(1296, 1440, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(back(test)[:, 0], torch.arange(1440, n, dtype=torch.float64), atol=1e-3)
    rest = x[:1440]
    m = rest.sum(0) / 1440
    assert torch.allclose(stats["mean"], m, atol=1e-9)
    assert torch.allclose(stats["std"], ((rest - m) ** 2).sum(0).div(1440).sqrt(), atol=1e-9)
    # The shipped tables have the shapes of the authors' files.
    for name, shape in (("redwine", (1599, 11)), ("whitewine", (4898, 11)), ("parkinsons", (5875, 15))):
        assert tuple(load_table(name).shape) == shape


def test_batchnorm_is_reestimated_on_the_clean_training_set(one_thread):
    """After a mollified epoch (epoch 0: the batches are pure noise, N(0, 1)), the batch norm
    in front of a Glow flow holds the statistics of the clean training rows (mean 5, std 0.1),
    and the reported training log-likelihood is the eval-mode one on those rows."""
    g = torch.Generator().manual_seed(0)
    train = 5 + 0.1 * torch.randn(300, 3, generator=g)
    val, test = train[:50], train[50:100]
    r = run_flow(train, val, test, "glow", True, seed=0, epochs=1, hidden=8, keep_model=True)
    bn = r["model"].layers[0]
    assert isinstance(bn, BatchNormFlow)
    assert torch.allclose(bn.running_mean, train.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, train.var(0, unbiased=False) + bn.eps, rtol=1e-4)
    with torch.no_grad():
        assert abs(r["model"].eval()(train).mean().item() - r["train_ll"]) < 1e-3
    assert len(r["test_ll_per_epoch"]) == 1 and r["best_val_epoch"] == 1


def test_optimal_decoder_sigma_maximises_the_batch_likelihood():
    """The closed-form decoder scale is sqrt(mean squared residual) of the batch, and no other
    shared scale gives the batch a higher reconstruction likelihood."""
    torch.manual_seed(0)
    m = MLPVAE(d=16, z=4, hidden=32, decoder_sigma="optimal")
    x, z = torch.rand(64, 16), torch.randn(64, 4)
    with torch.no_grad():
        best = m._log_px(x, z).sum().item()
        mse = (x - m.decode(z)).pow(2).mean()
        assert torch.allclose(m.log_scale.exp(), mse.sqrt())
        fixed = MLPVAE(d=16, z=4, hidden=32, decoder_sigma=1.0)
        fixed.load_state_dict({k: v for k, v in m.state_dict().items() if k != "log_scale"}, strict=False)
        for s in (0.5, 0.9, 1.1, 2.0):
            fixed.log_scale.fill_(math.log(s) + m.log_scale.item())
            assert fixed._log_px(x, z).sum().item() < best
    with pytest.raises(ValueError, match="decoder_sigma"):
        MLPVAE(decoder_sigma="big")


# ---------------------------------------------------------------- Fréchet distance
def _spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    # Commuting (diagonal) covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) * 3
    want = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert abs(got - want.item()) < 1e-12 * (1 + want.item()), (got, want.item())
    # Same Gaussian: 0; a shift only: |d|^2.
    c = _spd(5, g)
    m = torch.randn(5, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(m, c, m, c)) < 1e-9 * c.trace().item()
    assert abs(frechet_distance(m, c, m + 2, c) - 20) < 1e-9 * c.trace().item()


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    c1, c2 = _spd(7, g), _spd(7, g)
    mu1, mu2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    covmean = scipy_linalg.sqrtm((c1 @ c2).numpy()).real
    want = ((mu1 - mu2) ** 2).sum().item() + c1.trace().item() + c2.trace().item() - 2 * float(covmean.trace())
    got = frechet_distance(mu1, c1, mu2, c2)
    assert abs(got - want) < 1e-8 * (c1.trace() + c2.trace()).item(), (got, want)
    assert abs(frechet_distance(mu2, c2, mu1, c1) - got) < 1e-8 * (c1.trace() + c2.trace()).item()


def test_gaussian_stats_recover_a_known_gaussian():
    g = torch.Generator().manual_seed(2)
    c = _spd(3, g)
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c).T + 1.5
    mu, cov = gaussian_stats(x)
    # Standard errors: sd/sqrt(n) for the mean, ~sqrt(2/n)*scale for the covariance; 6 of them.
    assert torch.allclose(mu, torch.full((3,), 1.5, dtype=torch.float64), atol=6 * c.diagonal().max().sqrt() / 447)
    assert torch.allclose(cov, c, atol=6 * (2 / 200_000) ** 0.5 * c.diagonal().max())


# ---------------------------------------------------------------- digits feature extractor
def test_digits_classifier_shapes_and_image_or_row_input():
    torch.manual_seed(0)
    clf = DigitsClassifier().eval()
    x = torch.rand(7, 64)
    with torch.no_grad():
        f_rows, f_imgs = clf.features(x), clf.features(x.view(7, 1, 8, 8))
        assert f_rows.shape == (7, DigitsClassifier.FEATURES) and clf(x).shape == (7, 10)
        assert torch.equal(f_rows, f_imgs)
    # The distance of a set to itself is 0 (up to the eigen-decomposition's rounding).
    assert abs(feature_distance(clf, x.repeat(20, 1) + 0.01 * torch.randn(140, 64), x.repeat(20, 1))) < 1.0


@pytest.fixture
def one_thread():
    # ~50 tiny steps: a second intra-op thread only spins, and on a busy 2-core machine that
    # made this test 10x slower.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_digits_classifier_learns_and_is_cached(tmp_path, one_thread):
    tx, ty, ex, ey = digits_split()
    assert tx.shape == (1500, 64) and ex.shape == (297, 64) and 0 <= tx.min() and tx.max() <= 1
    clf = train_classifier(tx, ty, epochs=2)
    with torch.no_grad():
        acc = (clf(ex).argmax(1) == ey).float().mean().item()
    assert acc > 0.7, acc  # chance is 0.1
    torch.save(clf.state_dict(), tmp_path / "digits_classifier.pt")
    loaded, acc2 = load_or_train_classifier(str(tmp_path), tx, ty, ex, ey)
    assert acc2 == acc  # the cached weights, not a retrained model
    # Real digits are far closer to held-out digits than noise is.
    assert feature_distance(clf, tx[:300], ex) < 0.2 * feature_distance(clf, torch.rand(300, 64), ex)


@pytest.mark.parametrize("mode", ["vanilla", "noise", "blur"])
def test_vae_uint8_batches_give_the_float_pipelines_numbers(mode):
    # The VAE's batches are uint8 grey levels mapped by the mollify call itself: every arm must
    # train on exactly the floats (and the stream) of the float pipeline it replaces, across
    # the window's end.
    tx = digits_split()[0][:256]
    u8 = as_levels(tx).view(-1, 1, 8, 8)
    assert u8.dtype == torch.uint8 and int(u8.max()) == 16
    xf = tx.view(-1, 1, 8, 8)
    kw = {} if mode != "blur" else {"mode": "blur", "blur_sigma_max": BLUR_SIGMA_MAX}
    mol = None if mode == "vanilla" else mf.Mollifier(10, generator=mf.Generator(5), input_scale=1 / 16, **kw)
    ref = None if mode == "vanilla" else mf.Mollifier(10, generator=mf.Generator(5), **kw)
    gen = mf.Generator(5)
    for step in (0, 3, 9, 10, 12):
        got = vae_batch(u8, step, mol, gen)
        want = xf if ref is None else ref(xf, step)
        assert got.dtype == torch.float32 and torch.equal(got, want), (mode, step)


def test_as_levels_refuses_values_off_the_grid():
    with pytest.raises(ValueError, match="multiple of 1/16"):
        as_levels(torch.tensor([0.5, 0.51]))


def test_seed_spread_reads_both_codes_and_counts_run_away_seeds(tmp_path):
    """The seed-spread report on runs with known values: the authors' CSV is read per seed and
    epoch (its last row is epoch 150), the medians and run-away counts are those of the values
    written, and a clear shift between two sets of seeds gives a small p-value."""
    import json

    from benchmarks.demo import seed_spread

    runs = tmp_path / "runs"
    runs.mkdir()
    ours = [-15.0, -16.0, -17.0, -14.5, -15.5, -16.5, -200.0]
    settings = {"epochs": 150, "hidden": 512, "lr": 1e-4, "batch": 100}
    for seed, v in enumerate(ours):
        curve = [-12.0 + (v + 12.0) * e / 149 for e in range(150)]
        with open(runs / f"redwine_maf_vanilla_seed{seed}.json", "w") as f:
            json.dump({**settings, "test_ll": v, "test_ll_per_epoch": curve}, f)
    theirs = [-16.0, -15.0, -18.0, -17.5, -14.0, -16.2]
    csv_path = tmp_path / "authors.csv"
    with open(csv_path, "w") as f:
        f.write("# made up for the test\nseed,epoch,test_ll\n")
        for seed, v in enumerate(theirs, start=1):
            f.write(f"{seed},5,-12.5\n{seed},150,{v}\n")
    read = seed_spread.read_authors(str(csv_path))
    assert sorted(read) == [1, 2, 3, 4, 5, 6] and read[3] == [(5, -12.5), (150, -18.0)]
    assert seed_spread.main(["--seeds", "7", "--cached-only", "--runs", str(runs), "--authors", str(csv_path),
                             "--out", str(tmp_path)]) == 0
    md = (tmp_path / "seed_spread_redwine_maf_vanilla.md").read_text()
    assert (tmp_path / "seed_spread_redwine_maf_vanilla.png").stat().st_size > 0
    def row(name):  # seeds, mean ± std, median, quartiles, worst, best, run-away seeds
        return [c.strip() for c in md.split(f"| {name} |")[1].split("\n")[0].split("|")[:-1]]

    # The median of all 13 seeds is -16.0: a run-away seed ends below -26.0.
    assert row("ours")[0] == "7" and row("ours")[2] == "-16.00" and row("ours")[4] == "-200.00"
    assert row("ours")[6] == "1" and row("authors' code")[6] == "0" and row("authors' code")[2] == "-16.10"
    _, p_same = seed_spread.mann_whitney(ours, theirs)
    _, p_shifted = seed_spread.mann_whitney([v - 5.0 for v in theirs], theirs)
    assert p_same > 0.05 and p_shifted < 0.01
