"""The probing toolkit (utils/probing.py), and chapter 7's numbers on the shipped ``course_lm``.

The quick tests check the tools on small inputs whose answer is known; the slow ones assert,
with margins, the numbers the chapter prints (seeded data, so they are the same on every run):
probes beat both baselines, a push along the probe's direction flips the IOI answer where a
random push of the same norm does not, and a steering vector makes samples say "Mary"."""

from __future__ import annotations

import pytest
import torch

from utils import probing as P
from utils.corpus import NAMES, QUOTE, Tokenizer
from utils.zoo import load_model

TOK = Tokenizer()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_model("course_lm").eval()


def encode(text: str) -> torch.Tensor:
    return torch.tensor([TOK.encode(text, bos=True)])


# ---- quick: the tools ---------------------------------------------------------------------------
def test_resid_points_cover_every_layer_point(model):
    names = P.resid_points(model)
    assert names == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
                     "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    assert [P.point_label(n) for n in names] == ["embed", "0 attn", "0 mlp", "1 attn", "1 mlp"]


def test_collect_resid_gathers_the_masked_positions(model):
    tokens = encode("Mary said \" the ball is red . \" John went to the park .")
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, [2, 5]] = True
    acts = P.collect_resid(model, tokens, mask)
    _, cache = model.run_with_cache(tokens)
    assert acts.shape == (5, 2, model.cfg.d_model)
    torch.testing.assert_close(acts[3], cache["blocks.1.hook_resid_mid"][0, [2, 5]])


def test_label_functions_on_a_known_text():
    tokens = encode("Mary said \" John has the ball . \" John smiled at Mary .")
    words = ["<bos>"] + "Mary said \" John has the ball . \" John smiled at Mary .".split()
    inside = P.in_quote_labels(tokens, TOK.stoi[QUOTE])[0].tolist()
    assert [w for w, i in zip(words, inside) if i] == ["John", "has", "the", "ball", "."]
    seen = P.name_seen_labels(tokens, P.NAME_IDS)[0].tolist()
    assert [(p, w) for p, (w, s) in enumerate(zip(words, seen)) if s] == [(10, "John"), (13, "Mary")]
    # a <bos> starts a new document: nothing seen, no quotation open
    again = torch.cat([encode("Mary said \" good morning"), encode("Mary went .")], 1)
    assert not P.name_seen_labels(again, P.NAME_IDS)[0, -3]
    assert not P.in_quote_labels(again, TOK.stoi[QUOTE])[0, -3:].any()


def test_data_sets_agree_with_the_generator_and_the_token_rules():
    quote = P.in_quote_data(4_800, seed=5)
    assert quote.labels.shape == (int(quote.mask.sum()),) and quote.labels.float().mean() > 0.05
    torch.testing.assert_close(quote.labels.bool(), P.in_quote_labels(quote.tokens, TOK.stoi[QUOTE])[quote.mask])
    seen = P.name_seen_data(4_800, seed=5)
    assert (quote.tokens == TOK.stoi[QUOTE])[quote.mask].sum() == 0
    torch.testing.assert_close(seen.labels.bool(), P.name_seen_labels(seen.tokens, P.NAME_IDS)[seen.mask])
    assert set(seen.tokens[seen.mask].tolist()) <= set(P.NAME_IDS.tolist())
    ioi = P.ioi_data(40, seed=5)
    assert ioi.n_classes == len(NAMES) == 24 and ioi.mask.sum() == 40
    assert (ioi.tokens[ioi.mask] == TOK.stoi["to"]).all()
    assert (ioi.labels != ioi.extra["s"]).all()


def test_split_is_by_rows_and_seeded():
    data = P.name_seen_data(4_800, seed=5)
    train, test = P.split_rows(data, seed=0)
    assert not (train & test).any() and (train | test).all()
    assert set(data.row[train].tolist()).isdisjoint(data.row[test].tolist())
    assert torch.equal(test, P.split_rows(data, seed=0)[1]) and not torch.equal(test, P.split_rows(data, seed=1)[1])


def test_probe_learns_a_separable_problem_and_baselines():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen) * torch.tensor([5.0, 1, 1, 1, 1, 0.1]) + 3
    y = (x[:, 1] - x[:, 2] > 0.3).long()
    x_train, x_test = P.standardize(x[:300], x[300:])
    torch.testing.assert_close(x_train.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    W, b = P.train_probe(x_train, y[:300], 2)
    assert W.shape == (6, 2) and b.shape == (2,)
    assert P.accuracy(x_test @ W + b, y[300:]) > 0.95
    assert P.majority_baseline(torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 0, 0])) == 0.25
    assert torch.equal(P.train_probe(x_train, y[:300], 2)[0], W), "a probe from zeros is deterministic"


def test_push_random_and_direction_helpers():
    gen = torch.Generator().manual_seed(0)
    resid = torch.randn(5, 8, generator=gen)
    d = torch.randn(5, 8, generator=gen) * 3
    moved = P.push_along(resid, d, 0.5)
    torch.testing.assert_close((moved - resid).norm(dim=-1), 0.5 * resid.norm(dim=-1))
    r = P.random_like(d, seed=1)
    torch.testing.assert_close(r.norm(dim=-1), d.norm(dim=-1))
    assert (P.random_like(d, seed=1) == r).all() and P.cosine(r[0], d[0]) < 0.9
    W, std = torch.randn(8, 3, generator=gen), torch.rand(8, generator=gen) + 0.5
    u = P.probe_direction(W, std, 2, 0)
    torch.testing.assert_close(u, (W[:, 2] - W[:, 0]) / std / ((W[:, 2] - W[:, 0]) / std).norm())
    many = P.probe_direction(W, std, torch.tensor([2, 1]), torch.tensor([0, 0]))
    torch.testing.assert_close(many[0], u)
    logits = torch.zeros(2, len(TOK))
    logits[0, P.NAME_IDS[3]] = 1.0
    logits[1, P.NAME_IDS[5]] = 1.0
    logits[1, TOK.stoi["the"]] = 9.0  # not a name: ignored
    assert P.top_name_rate(logits, torch.tensor([3, 5])) == 1.0


def test_remove_direction_mean_ablates_one_direction_only():
    gen = torch.Generator().manual_seed(0)
    resid, direction, centre = torch.randn(2, 5, 8, generator=gen), torch.randn(8, generator=gen) * 4, torch.randn(8, generator=gen)
    out = P.remove_direction(resid, direction, centre)
    unit = direction / direction.norm()
    torch.testing.assert_close(out @ unit, (centre @ unit).expand(2, 5))
    other = torch.randn(8, generator=gen)
    other = other - (other @ unit) * unit
    torch.testing.assert_close(out @ other, resid @ other)


def test_mean_difference_and_target_frequency():
    a, b = torch.ones(3, 4), torch.zeros(5, 4)
    torch.testing.assert_close(P.mean_difference(a, b), torch.ones(4))
    samples = torch.tensor([[0, 7, 7], [7, 2, 3], [0, 1, 7]])
    assert P.target_frequency(samples, 7) == pytest.approx(2 / 3)


def test_coefficient_zero_leaves_logits_unchanged(model):
    tokens = P.normal_text(8, seed=11)
    vector = torch.randn(model.cfg.d_model)
    clean = model(tokens)
    for hook in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"):
        steered = model.run_with_hooks(tokens, fwd_hooks=[(hook, P.steering_hook(vector, 0.0))])
        assert torch.equal(steered, clean)
        moved = model.run_with_hooks(tokens, fwd_hooks=[(hook, P.steering_hook(vector, 1.0))])
        assert torch.equal(moved[:, 0], clean[:, 0]), "the <bos> position is left alone"
        assert not torch.allclose(moved[:, 1:], clean[:, 1:])


# ---- slow: the chapter's numbers ------------------------------------------------------------------
@pytest.mark.slow
def test_in_quote_probe_beats_both_baselines(model):
    """Measured: best 0.972 (0 attn) vs random model 0.949 vs majority 0.915. The embedding point
    is the same for both models (0.949): token identity alone says a lot about quotations."""
    t = P.probe_table(model, P.in_quote_data())
    assert max(t["trained"]) >= 0.96
    assert max(t["trained"]) > max(t["random"]) + 0.015
    assert max(t["random"]) > t["majority"] + 0.015
    assert t["trained"][0] == pytest.approx(t["random"][0], abs=0.01)


@pytest.mark.slow
def test_name_seen_probe_beats_both_baselines(model):
    """Measured: best 0.848 (1 attn) vs random model 0.815 vs majority 0.747."""
    t = P.probe_table(model, P.name_seen_data())
    assert max(t["trained"]) >= 0.83
    assert max(t["trained"]) > max(t["random"]) + 0.02
    assert max(t["random"]) > t["majority"] + 0.03


@pytest.mark.slow
def test_io_identity_is_linear_from_layer_0(model):
    """Measured: 0.043 / 0.953 / 1.0 / 1.0 / 1.0 per point; random model ≤ 0.433; majority 0.07."""
    t = P.probe_table(model, P.ioi_data())
    assert t["trained"][1] >= 0.9 and min(t["trained"][2:]) >= 0.99
    assert max(t["random"]) <= 0.5
    assert t["majority"] <= 0.1 and t["trained"][0] <= 0.15  # the embedding of "to" knows nothing


@pytest.mark.slow
def test_pushing_along_the_probe_direction_flips_the_answer(model):
    """Measured at blocks.1.hook_resid_pre, half a residual norm: S top in 92 % (IO top 8 %);
    a random direction of the same norm: S top 0 %, IO stays top in 100 %."""
    r = P.ioi_causal_test(model, "blocks.1.hook_resid_pre", alpha=0.5)
    assert r["clean IO top"] >= 0.95
    assert r["probe S top"] >= 0.8
    assert r["random S top"] < 0.2 and r["random IO top"] >= 0.9
    small = P.ioi_causal_test(model, "blocks.1.hook_resid_pre", alpha=0.25)
    assert small["probe S top"] < r["probe S top"]


@pytest.mark.slow
def test_steering_vector_sweep(model):
    """Measured (layer 1, Mary - John, 100 samples of 40 tokens): coefficient 0 → 13 % at +0;
    2 → 55 % at +0.066 nats; 3 → 91 % at +0.195; 4 → 98 % at +0.406; 8 → 100 % at +2.13.
    The IO probe's Mary-minus-John direction, scaled to the same norm, at 4: 98 % at +0.34.
    A random vector of the same norm at 4: 9 %. One pair of prompts (ActAdd, "Mary" - "John") at
    4: 11 %. The embedding layer at 4: 61 % at +0.67."""
    hook = "blocks.1.hook_resid_pre"
    vector = P.steering_vector(model, hook)
    rows = {r["coefficient"]: r for r in P.steering_sweep(model, vector, hook, coefficients=(0, 2, 4))}
    assert rows[0]["cost"] == 0.0 and rows[0]["frequency"] <= 0.25
    assert rows[4]["frequency"] >= 0.85
    assert 0.1 <= rows[4]["cost"] <= 0.8
    assert rows[0]["frequency"] < rows[2]["frequency"] < rows[4]["frequency"]
    assert rows[2]["cost"] < rows[4]["cost"]
    control = P.steering_sweep(model, P.random_like(vector, seed=0), hook, coefficients=(4,))[0]
    assert control["frequency"] < 0.3
    W, _, std = P.train_io_probe(model, hook)
    along_probe = P.probe_direction(W, std, NAMES.index("Mary"), NAMES.index("John")) * vector.norm()
    probe_row = P.steering_sweep(model, along_probe, hook, coefficients=(4,))[0]
    assert probe_row["frequency"] >= 0.85, "the probe's Mary-minus-John direction steers too"
    one_pair = P.steering_sweep(model, P.one_pair_vector(model, hook), hook, coefficients=(4,))[0]
    assert one_pair["frequency"] < 0.3, "one pair of prompts (ActAdd) is not enough here"
    embed = "blocks.0.hook_resid_pre"
    early = P.steering_sweep(model, P.steering_vector(model, embed), embed, coefficients=(4,))[0]
    assert early["frequency"] < rows[4]["frequency"] and early["cost"] > rows[4]["cost"]


@pytest.mark.slow
def test_the_quotation_direction_is_read_more_than_written(model):
    """Measured at blocks.1.hook_resid_mid (difference of means, norm 4.8): P(closing quote) at a
    full stop inside a quotation 0.999; with the direction mean-ablated 0.984 (the knowledge is in
    more than one direction); with 4 times the vector subtracted 0.294. After a full stop outside
    a quotation, P(quote) 0.008, and 0.272 with 4 times the vector added."""
    r = P.quote_direction_test(model)
    assert r["close clean"] >= 0.98
    assert r["close removed"] >= 0.9
    assert r["close subtracted"] < 0.6
    assert r["open clean"] < 0.03 and 3 * r["open clean"] < r["open added"] < 0.6
