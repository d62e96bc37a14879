"""The superposition results chapter 3 shows, asserted with fixed seeds (slow: these train)."""

from __future__ import annotations

import pytest
import torch

from utils import toy_models as tm

STICKY = torch.tensor([1, 3 / 4, 2 / 3, 3 / 5, 1 / 2, 2 / 5, 1 / 3, 2 / 7, 1 / 4])


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


def test_feature_dimensionality_sticks_to_simple_fractions():
    model, p = tm.dimensionality_experiment(progress=False)
    W = model.W.detach()
    norms = tm.feature_norms(W)
    dims = tm.feature_dimensionality(W)
    values = dims[norms > 0.5]
    nearest = (values[:, None] - STICKY[None]).abs().min(-1)
    assert (nearest.values < 0.03).float().mean() > 0.7, values
    assert len(set(nearest.indices[nearest.values < 0.03].tolist())) >= 3  # several distinct fractions
    # More features than dimensions once sparse: mean dimensions per represented feature falls.
    per_feature = 10 / (norms > 0.5).sum(-1).float()
    assert per_feature[p <= 0.05].max() <= 0.3 and per_feature[0] >= 0.6


def test_privileged_basis_becomes_polysemantic_with_sparsity():
    model, p = tm.privileged_experiment(progress=False)
    poly = tm.polysemantic_fraction(model.W.detach())
    dense, sparse = poly[p > 0.3].mean(), poly[p < 0.05].mean()
    assert dense <= 0.2 and sparse >= 0.8, poly  # measured: 0.0 at p = 0.5, 1.0 below p = 0.05
    assert poly[-1] > poly[0]


def test_one_neuron_phase_diagram_has_all_three_phases():
    model, density, relative = tm.phase_experiment(progress=False)
    codes = tm.one_neuron_phase(model.W.detach())
    dense = density == 1
    assert (codes[dense & (relative < 0.5)] == 0).all()  # dense, feature 1 unimportant: only feature 0
    assert (codes[dense & (relative > 2)] == 1).all()  # dense, feature 1 important: only feature 1
    assert (codes[density < 0.05] == 2).float().mean() > 0.5  # sparse: both, in superposition
