"""The superposition results chapter 3 shows, asserted with fixed seeds (slow: these train)."""

from __future__ import annotations

import pytest
import torch

from utils import toy_models as tm

PAPER_BANDS = torch.tensor([1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8])  # the fractions the paper marks


@pytest.fixture(scope="module")
def intro():
    model, p = tm.intro_experiment(progress=False)
    return model.W.detach(), p


pytestmark = pytest.mark.slow


def test_dense_features_get_exactly_n_hidden_dimensions(intro):
    W, p = intro
    norms = tm.feature_norms(W)[0]  # instance 0: p = 1
    assert p[0] == 1
    assert int((norms > 0.5).sum()) == 2, norms
    represented = W[0][:, norms > 0.5]
    cos = torch.nn.functional.cosine_similarity(represented[:, 0], represented[:, 1], dim=0)
    assert abs(cos) < 0.1  # nearly orthogonal
    assert torch.equal((norms > 0.5).nonzero().flatten(), torch.tensor([0, 1]))  # the two most important


def test_sparse_features_are_in_superposition_with_a_pentagon(intro):
    W, p = intro
    sparse = (p <= 0.02).nonzero().flatten().tolist()
    assert sparse
    represented = (tm.feature_norms(W) > 0.5).sum(-1)
    assert all(int(represented[i]) > 2 for i in sparse)  # more features than dimensions
    assert any(tm.is_regular_polygon(W[i]) for i in sparse), "no pentagon among the sparse instances"
    # Moderately sparse instances use antipodal pairs.
    assert int(tm.antipodal_pairs(W).max()) >= 2


def test_feature_dimensionality_sweep_sticks_to_the_papers_fractions():
    """The shipped 100-in-10 sweep, counted as the notebook counts it (the numbers its prose states)."""
    model, sweep, _ = tm.load_toy("toy_dimensionality")
    W = model.W.detach()
    p = sweep["feature_probability"]
    norms, dims = tm.feature_norms(W), tm.feature_dimensionality(W)
    represented = (norms > 0.5).sum(-1)
    assert represented.tolist() == [2, 13, 18, 20, 29, 37, 46, 59, 72, 87] + [100] * 6
    counts = tm.band_counts(dims, norms, PAPER_BANDS, tol=0.02)
    assert counts.tolist() == [0, 1, 12, 38, 1, 5]  # 1, 3/4, 2/3, 1/2, 2/5, 3/8
    assert tm.band_counts(dims[1:2], norms[1:2], PAPER_BANDS)[2] == 12  # p = 0.66: on 2/3
    assert tm.band_counts(dims[2:4], norms[2:4], PAPER_BANDS)[3] == 38  # p = 0.44, 0.29: every one on 1/2
    assert tm.antipodal_pairs(W)[2:4].tolist() == [9, 10]
    kept = dims[4][norms[4] > 0.5]
    assert kept.min() > 0.305 and kept.max() < 0.405  # p = 0.19: between 0.31 and 0.40
    sparse = dims[5:][norms[5:] > 0.5]
    assert sparse.min() > 0.085 and sparse.max() < 0.295  # between 0.09 and 0.29
    assert p[10] == pytest.approx(0.0158, abs=1e-4) and (represented[10:] == 100).all()
    assert int(represented.sum()) == 983 and int((dims[norms > 0.5] < 3 / 8 - 0.02).sum()) == 926
    # the dense end: no feature with a direction of its own
    assert int((norms[0] > 0.3).sum()) == 53 and norms[0].max() < 0.605


def test_dense_end_ties_with_pca_and_the_tie_broken_model_is_pca():
    """The notebook's dense-end numbers: equal importances tie with the PCA solution; importance
    0.9^i (the shipped toy_dense_end) trains to it."""
    model, sweep, meta = tm.load_toy("toy_dense_end")
    assert meta["recipe"] == "toy_dense_end" and meta["steps"] == 10_000 and meta["decay"] == 0.9
    assert torch.equal(sweep["feature_probability"], torch.ones(1))
    assert torch.allclose(sweep["importance"], 0.9 ** torch.arange(100, dtype=torch.float32))
    W = model.W.detach()
    norms, dims = tm.feature_norms(W)[0], tm.feature_dimensionality(W)[0]
    assert (dims > 0.9).nonzero().flatten().tolist() == list(range(10))  # exactly the 10 most important
    assert dims[:10].min() > 0.995 and norms[:10].min() > 0.995 and norms[:10].max() < 1.005  # printed 1.00
    assert norms[10:].max() < 0.06 and dims[10:].max() < 0.01  # the other 90 dropped
    loss, pca = tm.eval_loss(model, sweep["feature_probability"], sweep["importance"], n_eval=8_000), \
        tm.eval_loss(tm.pca_solution(model.cfg, sweep["feature_probability"]), sweep["feature_probability"], sweep["importance"], n_eval=8_000)
    assert abs(loss - pca).item() < 1e-3 * pca.item()
    # the equal-importance sweep, as the notebook prints it (8 000 samples, seed 1)
    dim_model, dim_sweep, _ = tm.load_toy("toy_dimensionality")
    p, importance = dim_sweep["feature_probability"], dim_sweep["importance"]
    trained = tm.eval_loss(dim_model, p, importance, n_eval=8_000)
    pca = tm.eval_loss(tm.pca_solution(dim_model.cfg, p), p, importance, n_eval=8_000)
    assert abs(trained[0] - 0.0750) < 5e-5 and abs(pca[0] - 0.0750) < 5e-5  # a tie: 0.0750 both
    assert abs(trained[2] - 0.0847) < 5e-5 and abs(pca[2] - 0.0882) < 5e-5  # p = 0.44: superposition wins


def test_sparsity_sweep_norms_coloured_by_superposition():
    """The paper's sweep (20 features, importance 0.7^i, in 5 dims), read with feature_status as the
    notebook prints it: not represented / dedicated / in superposition per sparsity."""
    model, p = tm.sparsity_sweep(progress=False)
    W = model.W.detach()
    assert torch.allclose(1 - p, torch.tensor([0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999]))
    status, norms, sup = tm.feature_status(W), tm.feature_norms(W), tm.superposition(W)
    counts = torch.stack([(status == code).sum(-1) for code in (0, 1, 2)], dim=1)
    assert counts.tolist() == [[15, 5, 0], [13, 3, 4], [10, 0, 10], [10, 0, 10], [9, 0, 11], [6, 0, 14], [6, 0, 14]]
    # S = 0: PCA, the five most important features each on a dimension of their own, the rest dropped
    assert status[0].tolist() == [1] * 5 + [0] * 15
    assert norms[0, :5].min() > 0.99 and sup[0, :5].max() < 0.01 and norms[0, 5:].max() < 0.01
    # S = 0.7: the three most important keep their dimensions, the next four share two as antipodal pairs
    assert status[1].tolist() == [1] * 3 + [2] * 4 + [0] * 13
    assert int(tm.antipodal_pairs(W)[1]) == 2
    # S = 0.9 and 0.97: ten features in five antipodal pairs (at 0.9 feature 10 in place of feature 9)
    assert status[2].tolist() == [2] * 9 + [0, 2] + [0] * 9 and status[3].tolist() == [2] * 10 + [0] * 10
    assert tm.antipodal_pairs(W)[2:4].tolist() == [5, 5]
    # S = 0.999: 14 of 20 features in 5 dimensions, none with a dimension of its own
    assert (status[-1] == 2).sum() == 14 and (status[-1] == 1).sum() == 0
    assert (status[-2:, :13] == 2).all()  # the six left out are among the seven least important
    shared = sup[4:][status[4:] == 2]
    assert shared.min() > 0.95 and shared.max() < 3.65  # S >= 0.99: superposition between 1.0 and 3.6


def test_privileged_basis_becomes_polysemantic_with_sparsity():
    model, p = tm.privileged_experiment(progress=False)
    poly = tm.polysemantic_fraction(model.W.detach())
    dense, sparse = poly[p > 0.3].mean(), poly[p < 0.05].mean()
    assert dense <= 0.2 and sparse >= 0.8, poly  # measured: 0.0 at p = 0.5, 1.0 below p = 0.05
    assert poly[-1] > poly[0]


def test_one_neuron_phase_diagram_matches_the_analytic_border():
    """The shipped sweep, read as the notebook reads it (best of 4 seeds per cell)."""
    model, sweep, meta = tm.load_toy("toy_phase")
    density, relative, seeds = sweep["density"], sweep["relative"], int(sweep["seeds"])
    assert seeds == 4 and model.cfg.n_instances == 4 * 64 and meta["recipe"] == "toy_phase"
    importance = torch.stack([torch.ones_like(relative), relative], dim=1)
    W, loss = tm.best_of_seeds(model, density, importance, seeds)
    codes = tm.one_neuron_phase(W)
    dense = density == 1
    assert (codes[dense & (relative < 1)] == 0).all() and (codes[dense & (relative > 1)] == 1).all()
    below = density < tm.phase_boundary(relative)
    # The notebook states: 44 of 44 below the border in superposition, 16 of 20 above it not,
    # a single seed 30 of 44.
    assert int(below.sum()) == 44 and int((codes[below] == 2).sum()) == 44
    assert int((codes[~below] != 2).sum()) == 16
    first_seed = tm.one_neuron_phase(model.W.detach()[:64])
    assert int((first_seed[below] == 2).sum()) == 30
    # the exceptions above the border are next to it: the cell just below is in superposition
    grid, below_grid = codes.reshape(8, 8), below.reshape(8, 8)
    for row, col in ((~below_grid) & (grid == 2)).nonzero().tolist():
        assert below_grid[row + 1, col] or below_grid[row + 2, col], (row, col)


def test_phase_boundary_matches_the_losses_it_compares():
    """At the border, superposition's fixed-weight loss equals the loss of dropping the weaker feature."""
    for r in (0.1, 0.5, 1.0, 3.0, 10.0):
        p = float(tm.phase_boundary(torch.tensor(r)))
        drop = min(1.0, r) * (p / 3 - p**2 / 4)
        assert abs(p**2 * (1 + r) / 6 - drop) < 1e-6
    assert float(tm.phase_boundary(torch.tensor(1.0))) == pytest.approx(4 / 7)


def test_shipped_sweeps_come_from_their_recipes(tmp_path):
    """The recipes run (briefly) and write what load_toy reads."""
    from utils import zoo

    for name in ("toy_phase", "toy_dimensionality", "toy_dense_end"):
        assert name in zoo.all_recipes()
        path = zoo.retrain(name, tmp_path, steps=3, progress=False)
        assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "weights.safetensors"]
        shipped = zoo.checkpoint_dir() / name
        assert sorted(p.name for p in shipped.iterdir()) == ["cfg.json", "weights.safetensors"]
    model, sweep, meta = tm.load_toy("toy_dimensionality")
    assert meta["steps"] == 10_000 and model.cfg.n_features == 100 and model.cfg.n_hidden == 10
    assert torch.equal(sweep["feature_probability"], torch.logspace(0, -2.7, 16))


@pytest.fixture(scope="module")
def correlated():
    corr, p = tm.correlation_experiment(tm.generate_correlated_batch, progress=False)
    anti, _ = tm.correlation_experiment(tm.generate_anticorrelated_batch, progress=False)
    return corr.W.detach(), anti.W.detach(), p


def test_anticorrelated_pairs_are_antipodal(correlated):
    _, anti, p = correlated
    cos = tm.pair_cosines(anti)
    assert p[0] == pytest.approx(0.2, abs=1e-3) and p[1] == pytest.approx(0.11, abs=0.01)
    assert (cos[:2] < -0.995).all(), cos  # printed as -1.00 at p = 0.2 and 0.11
    assert (tm.feature_norms(anti) > 0.95).all()
    assert (cos[2:].abs() < 0.05).all(), cos  # very sparse: pairs orthogonal, the square of two antipodal pairs


def test_correlated_pairs_are_orthogonal_or_collapse(correlated):
    corr, _, p = correlated
    cos = tm.pair_cosines(corr)
    assert (cos[1:3].abs() <= 0.025).all(), cos  # p = 0.11, 0.06: between -0.02 and 0.01
    assert (cos[1:3] >= -0.025).all() and (cos[1:3] <= 0.015).all(), cos
    assert (cos[0] > 0.965).all(), cos  # p = 0.2: each pair shares one direction (0.99, 0.97)
    norms = tm.feature_norms(corr)[0]
    assert ((norms > 0.695) & (norms < 0.755)).all(), norms  # 0.70-0.75
    cross = torch.nn.functional.cosine_similarity(corr[2, :, 0], corr[2, :, 2], dim=0)
    assert cross < -0.995  # p = 0.06: feature 0's antipodal partner is feature 2, from the other pair


def test_relu_layer_computes_abs_in_superposition_when_sparse():
    model, p = tm.abs_experiment(progress=False)
    explained = tm.abs_explained(model, p)
    poly = tm.polysemantic_fraction(model.W1.detach().abs())
    assert p[0] == 1 and p[1] == pytest.approx(0.5, abs=0.01) and p[-1] == pytest.approx(0.03, abs=0.003)
    for inst in (0, 1):  # dense: exactly 3 features computed (1.00), 3 not at all (0.00), 2 neurons each
        assert int((explained[inst] > 0.995).sum()) == 3 and int((explained[inst].abs() < 0.005).sum()) == 3, explained[inst]
        assert ((model.W1.detach()[inst].abs() > 0.5).sum(0) == 2 * (explained[inst] > 0.995)).all()
        assert poly[inst] == 0
    assert explained[0, [0, 4, 5]].min() > 0.995  # the three computed at p = 1
    sparse = explained[-1].sort().values
    assert sparse[-1] == pytest.approx(0.98, abs=0.005) and sparse[-2] == pytest.approx(0.94, abs=0.005), sparse
    assert sparse[:4].min() > 0.405 and sparse[:4].max() < 0.455, sparse  # 0.41-0.45
    assert poly[-1] == 1
    assert (explained[3:5] > 0.3).sum(-1).tolist() == [5, 4]  # p = 0.13, 0.06: mixed
