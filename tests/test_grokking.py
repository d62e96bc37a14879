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


# ---- The shipped p = 59 history: the run chapter 6 trains live (gk.LIVE_RUN) ---------------
LN59 = math.log(59)


@pytest.fixture(scope="module")
def history():
    return g.load_run("grokking_p59_history")


@pytest.fixture(scope="module")
def measures(history):
    keys = g.key_frequencies(history.model.embed.W_E.detach(), 59)
    return g.progress_measures(history.model, history.log.snapshots, history.data, keys)


def test_the_history_is_small_and_complete(history):
    from utils.zoo import checkpoint_dir

    size = sum(f.stat().st_size for f in (checkpoint_dir() / "grokking_p59_history").iterdir())
    assert size < 4e6, size  # a few MB: 21 snapshots in float16
    assert sorted(history.log.snapshots) == list(range(0, 1001, 50))
    assert history.settings == g.LIVE_RUN and history.log.steps == list(range(0, 1001, 10))


def test_chapter_6_live_run_memorises_first_and_generalises_late(history):
    """§2's prose: train accuracy 100 % by step 100 while the test loss is above chance (about 8);
    test accuracy ≥ 95 % around step 850, 100 % by step 1 000; about 46 % test accuracy just
    after memorising."""
    log = history.log
    memorised = log.first_step("train_acc", 1.0)
    assert memorised <= 100
    at = log.steps.index(100)
    assert 7.0 < log.test_loss[at] and log.test_loss[at] > LN59 + 3
    assert 800 <= log.first_step("test_acc", 0.95) <= 900
    assert log.test_acc[-1] >= 0.999
    assert all(0.42 <= log.test_acc[log.steps.index(s)] <= 0.52 for s in (100, 200, 300))


def test_the_free_test_accuracy_is_commutativity(history):
    """§2: at step 200, 99.9 % right on test pairs whose mirror is a training pair, under 1 % on the
    others (below chance, 1/59)."""
    data = history.data
    mirrored = g.mirror_mask(data)
    assert 0.45 < mirrored.float().mean() < 0.52
    model = g.new_model(59, d_model=64, n_heads=4, d_mlp=256)
    model.load_state_dict(history.log.snapshots[200])
    with torch.no_grad():
        right = g.answer_logits(model, data.tokens[data.test], 59).argmax(-1) == data.labels[data.test]
    assert right[mirrored].float().mean() >= 0.995
    assert right[~mirrored].float().mean() < 0.01 < 1 / 59


def test_the_three_phases_on_the_history(measures):
    """§6's prose and its shaded phases (memorisation 0-100, circuit formation 100-650, clean-up
    650-1000): the restricted loss falls from about 0.7 to 0.002 and the excluded loss climbs from
    about 3 to above 10 while the unseen test accuracy stays under 25 %; the weights grow to
    about 1 650 by step 100, then lose about a third of their squared norm from 650 to 1 000 while
    the unseen accuracy goes from about 20 % to 100 %."""
    m = {k: dict(zip(measures["step"], v)) for k, v in measures.items()}
    assert m["full_train_loss"][100] < 0.05
    assert m["unseen_test_acc"][100] < 0.02
    assert 0.5 < m["restricted_loss"][100] < 0.9 and m["restricted_loss"][650] < 0.005
    assert 2.5 < m["excluded_loss"][100] < 3.5 and m["excluded_loss"][650] > 10
    assert all(m["unseen_test_acc"][s] < 0.25 for s in range(0, 651, 50))
    assert 0.15 < m["unseen_test_acc"][650] < 0.3 and m["unseen_test_acc"][1000] >= 0.99
    assert 1500 < m["weight_norm"][100] < 1800 and m["weight_norm"][100] == max(m["weight_norm"].values())
    assert 0.6 < m["weight_norm"][1000] / m["weight_norm"][650] < 0.75
    # the weights fall faster during clean-up than during circuit formation
    assert (m["weight_norm"][650] - m["weight_norm"][1000]) / 350 > 2 * (m["weight_norm"][100] - m["weight_norm"][650]) / 550


@pytest.mark.slow
def test_the_live_configuration_groks_and_is_the_shipped_run(history):
    """Chapter 6 trains gk.LIVE_RUN live (about 30 CPU-seconds) and says the shipped history is
    the same run, step for step; and its two controls: with 80 % of the pairs the delay is gone
    (test accuracy about 98 % at step 100), with weight decay 0.1 there is no generalisation in
    1 000 steps (test loss above 15, test accuracy at the commutativity share)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and steadier on a busy machine
    try:
        live = g.train_run(progress=False)
        more_data = g.train_run(frac_train=0.8, steps=300, snapshot_every=None, log_every=25, progress=False)
        less_decay = g.train_run(weight_decay=0.1, snapshot_every=None, log_every=50, progress=False)
    finally:
        torch.set_num_threads(threads)
    log, shipped = live.log, history.log
    assert log.steps == shipped.steps
    assert log.first_step("train_acc", 1.0) <= 100 and 800 <= log.first_step("test_acc", 0.95) <= 900
    # the same run as the shipped one (numbers differ only by floating-point order)
    for name in ("train_acc", "test_acc"):
        assert max(abs(a - b) for a, b in zip(getattr(log, name), getattr(shipped, name))) < 0.05, name
    assert more_data.log.test_acc[more_data.log.steps.index(100)] >= 0.95
    assert less_decay.log.first_step("test_acc", 0.95) is None
    assert less_decay.log.test_loss[-1] > 15 and less_decay.log.test_acc[-1] < 0.52
    assert len(g.key_frequencies(less_decay.model.embed.W_E.detach(), 59)) > 10  # no sparse set of frequencies


# ---- The shipped p = 113 model (chapter 6, sections 3-5) ------------------------------------
# What chapter 6's prose states about the shipped model (sections 3-5).
P113_STEPS = 1500
P113_KEYS = [1, 6, 8, 18, 21, 39, 56]
P113_VARIANCE = (0.84, 0.88)  # "about 86 %"
P113_ONE_FREQUENCY = (0.85, 0.93)  # "about 90 % of the active neurons"
P113_FOURIER_COUNT = (5, 9)  # "about 7 components"
P113_STANDARD_COUNT = (7500, 8500)  # "about 8 000"


@pytest.fixture(scope="module")
def model113():
    from utils.zoo import load_model

    return load_model("grokking_p113")


def test_the_shipped_p113_model_grokked(model113):
    import json

    from utils.zoo import checkpoint_dir

    meta = json.loads((checkpoint_dir() / "grokking_p113.json").read_text())["metadata"]
    assert meta["steps"] == P113_STEPS and meta["first_step_train_acc_1"] <= 100
    assert meta["first_step_test_acc_0.95"] == 550  # §3: "generalised at step 550"
    data = g.modular_addition(113, frac_train=0.4, seed=0)
    logits = g.full_logits(model113, 113)
    assert g.loss_and_accuracy(logits[data.test], data.labels[data.test])[1] == 1.0


def test_the_key_frequencies_explain_the_logits(model113):
    """§3 and §5: the key frequencies as stated, the share of logit variance they explain, random
    sets of as many other frequencies explaining a fraction of a percent; restricted test loss
    below the full model's, excluded train loss above ln 113; the control the other way round."""
    p = 113
    keys = g.key_frequencies(model113.embed.W_E.detach(), p)
    assert keys == P113_KEYS
    logits = g.full_logits(model113, p)
    explained = g.fraction_of_logit_variance(logits, p, keys)
    assert P113_VARIANCE[0] <= explained <= P113_VARIANCE[1], explained
    # "about 7 % is a per-answer offset; without it the key frequencies explain about 92 %"
    centred = logits - logits.mean(-1, keepdim=True)
    offset = centred.mean(0, keepdim=True)
    assert 0.06 <= offset.pow(2).sum().item() * p * p / centred.pow(2).sum().item() <= 0.08
    assert 0.91 <= g.fraction_of_logit_variance(logits - offset, p, keys) <= 0.94
    gen = torch.Generator().manual_seed(0)  # the notebook's control sets
    others = [k for k in range(1, 57) if k not in keys]
    random_sets = [[others[i] for i in torch.randperm(len(others), generator=gen)[:len(keys)]] for _ in range(5)]
    assert all(g.fraction_of_logit_variance(logits, p, s) < 0.01 for s in random_sets)
    data = g.modular_addition(p, frac_train=0.4, seed=0)
    full_test = g.loss_and_accuracy(logits[data.test], data.labels[data.test])[0]
    restricted_test = g.loss_and_accuracy(g.restricted_logits(logits, p, keys)[data.test], data.labels[data.test])[0]
    assert restricted_test <= full_test
    restricted, excluded = g.restricted_and_excluded_loss(logits, data, keys)
    assert excluded >= math.log(p) and restricted < 0.01
    control = g.restricted_and_excluded_loss(logits, data, random_sets[0])
    assert control[0] > math.log(p) - 0.1 and control[1] < 0.01


def test_neurons_live_on_one_frequency(model113):
    """§4: most active neurons have one frequency explaining more than half their variance, on
    the key frequencies only; a few components in the Fourier basis against thousands in the
    standard basis (medians over neurons, for 90 % of a neuron's variance)."""
    p = 113
    data = g.modular_addition(p, frac_train=0.4, seed=0)
    with torch.no_grad():
        _, cache = model113.run_with_cache(data.tokens, names_filter="blocks.0.mlp.hook_post")
    acts = cache["blocks.0.mlp.hook_post"][:, -1]
    fractions = g.neuron_frequency_fractions(acts, p)
    best_fraction, best_freq = fractions.max(-1)
    alive = acts.std(0) > 1e-6
    one = (best_fraction > 0.5) & alive
    share = float(one.sum() / alive.sum())
    assert P113_ONE_FREQUENCY[0] <= share <= P113_ONE_FREQUENCY[1], share
    assert set((best_freq[one] + 1).tolist()) <= set(P113_KEYS)
    fourier, standard = [], []
    for n in alive.nonzero().flatten().tolist():
        grid = acts[:, n].reshape(p, p)
        power = g.fourier_transform_2d(grid, p) ** 2
        power[0, 0] = 0
        fourier.append(g.components_for_fraction(power, 0.9))
        standard.append(g.components_for_fraction((grid - grid.mean()) ** 2, 0.9))
    median = lambda xs: sorted(xs)[len(xs) // 2]
    assert P113_FOURIER_COUNT[0] <= median(fourier) <= P113_FOURIER_COUNT[1], median(fourier)
    assert P113_STANDARD_COUNT[0] <= median(standard) <= P113_STANDARD_COUNT[1], median(standard)


def test_a_retrained_history_loads_and_everyone_can_read_it(tmp_path, monkeypatch):
    """The recipe's files round-trip through ``load_run``, and are readable by every user (the
    grading sandbox runs the kernel as another user; safetensors alone writes mode 0600)."""
    from utils import zoo

    folder = zoo.retrain("grokking_p59_history", tmp_path, steps=3, progress=False)
    assert sorted(f.name for f in folder.iterdir()) == ["cfg.json", "weights.safetensors"]
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in folder.iterdir())
    monkeypatch.setattr(zoo, "checkpoint_dir", lambda: tmp_path)
    run = g.load_run("grokking_p59_history")
    assert sorted(run.log.snapshots) == [0, 3] and run.log.steps == [0, 3]
    assert torch.allclose(run.model.embed.W_E, run.log.snapshots[3]["embed.W_E"])


def test_chapter_6_checks_take_plain_python_answers_and_explain_a_set():
    """A mask as a list of bools passes; frequencies as a set (no order) get a message saying so."""
    from utils.checks import CheckFailed, check

    check("mirror_mask", lambda data: g.mirror_mask(data).tolist())
    check("key_frequencies", lambda W_E, p, threshold=0.5: g.key_frequencies(W_E, p, threshold))
    with pytest.raises(CheckFailed, match="got a set: a set has no order"):
        check("key_frequencies", lambda W_E, p, threshold=0.5: set(g.key_frequencies(W_E, p, threshold)))
