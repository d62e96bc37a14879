"""The grokking toolkit (utils/grokking.py): the task, the Fourier basis and the measures of the
modular-addition algorithm, each checked on inputs whose answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from utils import grokking as g


def test_the_task_covers_every_pair_once_and_splits_it():
    data = g.modular_addition(7, frac_train=0.3, seed=1)
    assert data.tokens.shape == (49, 3) and (data.tokens[:, 2] == 7).all()
    assert torch.equal(data.labels, (data.tokens[:, 0] + data.tokens[:, 1]) % 7)
    assert len(data.train) == round(0.3 * 49) and len(data.train) + len(data.test) == 49
    assert not set(data.train.tolist()) & set(data.test.tolist())
    again = g.modular_addition(7, frac_train=0.3, seed=1)
    assert torch.equal(again.train, data.train)  # the split is seeded
    assert not torch.equal(g.modular_addition(7, 0.3, seed=2).train, data.train)


def test_the_model_is_the_papers_architecture():
    model = g.new_model(13, seed=0, d_model=32, n_heads=4, d_mlp=64)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_ctx, cfg.d_vocab, cfg.normalization, cfg.act_fn) == (1, 3, 14, None, "relu")
    data = g.modular_addition(13)
    assert g.answer_logits(model, data.tokens[:5], 13).shape == (5, 13)
    state = torch.random.get_rng_state()
    g.new_model(13, seed=3, d_model=32, n_heads=4, d_mlp=64)
    assert torch.equal(state, torch.random.get_rng_state())  # global random state untouched


@pytest.mark.parametrize("p", [5, 13, 59])
def test_the_fourier_basis_is_orthonormal(p):
    basis, names = g.fourier_basis(p), g.fourier_names(p)
    assert basis.shape == (p, p) and names[:3] == ["const", "cos 1", "sin 1"] and names[-1] == f"sin {(p - 1) // 2}"
    assert torch.allclose(basis @ basis.T, torch.eye(p), atol=1e-5)
    x = torch.arange(p, dtype=torch.float32)
    assert torch.allclose(basis[3], torch.cos(2 * math.pi * 2 * x / p) / math.sqrt(p / 2), atol=1e-5)


def _embedding_of(p: int, freqs: list[int], d: int = 16, noise: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(p, dtype=torch.float32)[:, None]
    W = noise * torch.randn(p + 1, d, generator=gen)
    for k in freqs:
        W[:p] += torch.cos(2 * math.pi * k * x / p) * torch.randn(1, d, generator=gen)
        W[:p] += torch.sin(2 * math.pi * k * x / p) * torch.randn(1, d, generator=gen)
    return W


def test_key_frequencies_are_those_the_embedding_is_built_from():
    W = _embedding_of(23, [3, 8], noise=0.05)
    norms = g.embedding_frequency_norms(W, 23)
    assert norms.shape == (11,) and set(norms.topk(2).indices.add(1).tolist()) == {3, 8}
    assert g.key_frequencies(W, 23) == [3, 8]


def test_a_neuron_made_of_one_frequency_is_explained_by_it():
    p, k = 17, 5
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    w = 2 * math.pi * k / p
    acts = torch.stack([
        torch.cos(w * a) * torch.cos(w * b) + 0.3 * torch.sin(w * a),  # frequency 5 only
        torch.cos(w * (a + b)) + torch.cos(2 * math.pi * 2 * a / p),  # half frequency 5, half 2
    ], dim=1)
    frac = g.neuron_frequency_fractions(acts, p)
    assert frac.shape == (2, 8)
    assert frac[0, k - 1] == pytest.approx(1.0, abs=1e-6) and frac[0].sum() == pytest.approx(1.0, abs=1e-6)
    # cos(w(a + b)) and cos(2·2πa/p) have the same variance (1/2 each over the grid)
    assert frac[1, k - 1] == pytest.approx(0.5, abs=1e-6) and frac[1, 1] == pytest.approx(0.5, abs=1e-6)


def test_logits_of_the_algorithm_are_all_key_frequency():
    p = 13
    a = torch.arange(p).repeat_interleave(p)[:, None]
    b = torch.arange(p).repeat(p)[:, None]
    c = torch.arange(p)[None, :]
    phase = 2 * math.pi * (a + b - c).double() / p
    algorithm = 2.0 * torch.cos(3 * phase) + 1.5 * torch.cos(5 * phase + 0.4)
    noise = torch.randn(p * p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = algorithm + 0.7 + 0.1 * noise
    assert g.fraction_of_logit_variance(algorithm, p, [3, 5]) == pytest.approx(1.0, abs=1e-9)
    assert 0.9 < g.fraction_of_logit_variance(logits, p, [3, 5]) < 1.0
    assert g.fraction_of_logit_variance(logits, p, [1, 2]) < 0.05
    restricted = g.restricted_logits(logits, p, [3, 5])
    assert torch.allclose(restricted - restricted.mean(-1, keepdim=True), algorithm, atol=0.05)
    excluded = g.excluded_logits(logits, p, [3, 5])
    labels = ((a + b) % p).squeeze(1)
    assert g.loss_and_accuracy(restricted, labels)[1] == 1.0
    assert g.loss_and_accuracy(excluded, labels)[0] > math.log(p) - 0.1  # nothing left to read
    assert torch.allclose(restricted + excluded - logits.mean(-1, keepdim=True), logits, atol=1e-9)


@pytest.mark.slow
def test_the_live_configuration_groks():
    """The configuration chapter 6 trains live: p = 59, half the pairs, AdamW lr 3e-3, weight
    decay 1.0, the paper's initialisation. It memorises first (train accuracy 100 % while the
    test loss is above chance, ln 59 = 4.08), and generalises much later (test accuracy ≥ 95 %)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and steadier on a busy machine
    try:
        _check_the_live_configuration()
    finally:
        torch.set_num_threads(threads)


def _check_the_live_configuration():
    p = 59
    data = g.modular_addition(p, frac_train=0.5, seed=0)
    model = g.new_model(p, seed=0)
    log = g.train_grokking(model, data, 600, lr=3e-3, weight_decay=1.0, log_every=50, snapshot_every=100,
                           progress=False)
    memorised = log.first_step("train_acc", 1.0)
    generalised = log.first_step("test_acc", 0.95)
    assert memorised is not None and memorised <= 100
    assert log.test_loss[log.steps.index(memorised)] > math.log(p)  # worse than chance on the test pairs
    assert generalised is not None and generalised >= memorised + 200, (memorised, generalised)
    assert log.test_acc[-1] >= 0.99
    keys = g.key_frequencies(model.embed.W_E.detach(), p)
    logits = g.full_logits(model, p)
    assert 2 <= len(keys) <= 6
    assert g.fraction_of_logit_variance(logits, p, keys) > 0.7
    restricted = g.loss_and_accuracy(g.restricted_logits(logits, p, keys)[data.test], data.labels[data.test])
    excluded = g.loss_and_accuracy(g.excluded_logits(logits, p, keys)[data.train], data.labels[data.train])
    assert restricted[1] == 1.0 and excluded[0] > 1.0
    # Progress measures over the run: the circuit forms before the test accuracy shows it
    # (restricted loss falls between memorising and generalising), and weight decay shrinks the
    # weights throughout.
    measures = g.progress_measures(model, log.snapshots, data, keys)
    at = {step: i for i, step in enumerate(measures["step"])}
    assert measures["step"] == [0, 100, 200, 300, 400, 500, 600]
    mid = at[200]
    assert measures["test_acc"][mid] < 0.95 and measures["restricted_loss"][mid] < measures["restricted_loss"][at[100]]
    assert measures["excluded_loss"][-1] > measures["excluded_loss"][at[100]]
    assert measures["weight_norm"][-1] < measures["weight_norm"][at[100]]
