"""Tests for utils/transformer.py: GPT-2 equivalence, causality, variants, KV cache, hook names."""

from __future__ import annotations

import math

import einops
import pytest
import torch
import torch.nn.functional as F

from utils.transformer import (
    Config,
    KVCache,
    LayerNorm,
    Transformer,
    convert_gpt2_state_dict,
    lm_cross_entropy,
)

SMALL = Config(d_vocab=61, n_ctx=16, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_layers=2)


def randomised(cfg: Config = SMALL, seed: int = 0) -> Transformer:
    """A model whose LayerNorm gains and biases are random too (they init to 1 and 0)."""
    model = Transformer(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf.startswith("b"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:  # larger weights than init_range, so attention is far from uniform
                p.mul_(10.0)
    return model.eval()


def random_tokens(cfg: Config, batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ---- equivalence with Hugging Face GPT-2 ---------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_pair():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=32,
        vocab_size=100,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        activation_function="gelu_new",
        initializer_range=0.1,  # logits of order 1, so a 1e-5 tolerance means something
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(20240)
        hf = transformers.GPT2LMHeadModel(hf_cfg)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if ".ln_" in name and name.endswith(".weight"):
                    p.copy_(1 + 0.5 * torch.randn_like(p))
                elif name.endswith(".bias"):
                    p.copy_(0.2 * torch.randn_like(p))
    hf.eval()
    sd = hf.state_dict()
    # The randomisation reached every LayerNorm and bias (else mapping mistakes could hide).
    ln_ws = [k for k in sd if ".ln_" in k and k.endswith(".weight")]
    biases = [k for k in sd if k.endswith(".bias")]
    assert len(ln_ws) == 2 * 2 + 1 and len(biases) >= 2 * 6 + 1
    assert all(not torch.allclose(sd[k], torch.ones_like(sd[k])) for k in ln_ws)
    assert all((sd[k] != 0).all() for k in biases)
    cfg = Config(
        d_vocab=100,
        n_ctx=32,
        d_model=64,
        n_heads=4,
        d_head=16,
        d_mlp=256,
        n_layers=2,
        layer_norm_eps=hf_cfg.layer_norm_epsilon,
        act_fn="gelu_new",
    )
    ours = Transformer.from_gpt2_state_dict(sd, cfg)
    return hf, ours, cfg


def _hf_forward(hf, tokens):
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("shape", [(1, 32), (3, 7)])
def test_logits_match_hf_gpt2(gpt2_pair, shape):
    hf, ours, cfg = gpt2_pair
    tokens = random_tokens(cfg, *shape, seed=shape[1])
    expected = _hf_forward(hf, tokens).logits
    with torch.no_grad():
        got = ours(tokens)
    assert got.shape == expected.shape == (*shape, cfg.d_vocab)
    assert expected.std() > 0.3  # the comparison is not trivially satisfied by tiny logits
    diff = (got - expected).abs().max().item()
    print(f"max abs logit difference vs HF GPT-2 {shape}: {diff:.3g}")
    assert diff < 1e-5


def test_intermediate_activations_match_hf_gpt2(gpt2_pair):
    hf, ours, cfg = gpt2_pair
    tokens = random_tokens(cfg, 2, 11, seed=5)
    block_out, mlp_out = {}, {}
    handles = []
    for l, block in enumerate(hf.transformer.h):
        handles.append(block.register_forward_hook(lambda m, i, o, l=l: block_out.__setitem__(l, o[0] if isinstance(o, tuple) else o)))
        handles.append(block.mlp.register_forward_hook(lambda m, i, o, l=l: mlp_out.__setitem__(l, o)))
    try:
        out = _hf_forward(hf, tokens)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        _, cache = ours.run_with_cache(tokens)

    def close(a, b):
        assert a.shape == b.shape
        return (a - b).abs().max().item() < 1e-5

    # hidden_states: the embeddings, the output of each block but the last, then ln_f's output.
    assert close(out.hidden_states[0], cache["blocks.0.hook_resid_pre"])
    assert close(out.hidden_states[1], cache["blocks.0.hook_resid_post"])
    assert close(out.hidden_states[-1], cache["unembed.hook_in"])
    # hook_normalized is LayerNorm's output before its gain and bias (TransformerLens's meaning)
    assert close(out.hidden_states[-1], cache["ln_final.hook_normalized"] * ours.ln_final.w + ours.ln_final.b)
    assert not close(out.hidden_states[-1], cache["ln_final.hook_normalized"])
    for l in range(cfg.n_layers):
        assert close(block_out[l], cache["resid_post", l])
        assert close(mlp_out[l], cache["mlp_out", l])
        assert close(out.attentions[l], cache["pattern", l])


def test_gpt2_comparison_detects_a_wrong_head_split(gpt2_pair):
    """Guard against a vacuous equivalence test: splitting heads the wrong way must show up."""
    hf, ours, cfg = gpt2_pair
    sd = convert_gpt2_state_dict(hf.state_dict(), cfg)
    for name in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V"):
        sd[name] = einops.rearrange(
            einops.rearrange(sd[name], "h m d -> m (h d)"), "m (d h) -> h m d", h=cfg.n_heads
        )
    wrong = Transformer(cfg)
    wrong.load_state_dict(sd)
    tokens = random_tokens(cfg, 2, 9)
    with torch.no_grad():
        assert (wrong(tokens) - ours(tokens)).abs().max() > 1e-3


# ---- causality and attention -----------------------------------------------------------------------
def test_future_tokens_do_not_change_earlier_logits():
    model = randomised()
    tokens = random_tokens(SMALL, 2, 12)
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % SMALL.d_vocab
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3  # ...but does change the later ones


def test_attention_patterns_are_causal_distributions():
    model = randomised()
    tokens = random_tokens(SMALL, 3, 10)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    above = torch.ones(10, 10, dtype=torch.bool).triu(1)
    for l in range(SMALL.n_layers):
        pattern, scores = cache["pattern", l], cache["attn_scores", l]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(3, SMALL.n_heads, 10), atol=1e-6, rtol=0)
        assert (pattern >= 0).all()
        assert (pattern[..., above] == 0).all()
        assert (pattern[..., ~above] > 0).all()
        assert torch.isneginf(scores[..., above]).all() and torch.isfinite(scores[..., ~above]).all()
        assert (pattern[..., 0, 0] == 1).all()  # the first token can only attend to itself


# ---- variants --------------------------------------------------------------------------------------
def test_attn_only_model_has_no_mlp():
    cfg = SMALL.replace(attn_only=True)
    model = Transformer(cfg)
    names = [n for n, _ in model.named_modules()] + list(model.state_dict()) + list(model.hook_dict)
    assert not [n for n in names if "mlp" in n or "ln2" in n or "resid_mid" in n]
    assert "blocks.1.attn.W_Q" in model.state_dict()
    logits = model(random_tokens(cfg, 2, 5))
    assert logits.shape == (2, 5, cfg.d_vocab) and torch.isfinite(logits).all()


def test_model_without_normalization_has_no_layernorm():
    cfg = SMALL.replace(normalization=None)
    model = Transformer(cfg)
    assert not any(isinstance(m, LayerNorm) for m in model.modules())
    assert not [n for n in model.state_dict() if n.startswith("ln") or ".ln" in n]
    assert not [n for n in model.hook_dict if "normalized" in n or "scale" in n]
    tokens = random_tokens(cfg, 2, 5)
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (2, 5, cfg.d_vocab) and torch.isfinite(logits).all()
    # Without ln_final the logits are exactly the unembedded residual stream.
    torch.testing.assert_close(logits, cache["resid_post", 1] @ model.unembed.W_U + model.unembed.b_U)


def test_attn_only_without_normalization_runs():
    cfg = SMALL.replace(attn_only=True, normalization=None)
    model = Transformer(cfg)
    assert {n.rsplit(".", 1)[-1] for n in model.state_dict()} == {
        "W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_U", "b_U",
    }
    loss = model(random_tokens(cfg, 2, 6), return_type="loss")
    assert torch.isfinite(loss)


# ---- loss ------------------------------------------------------------------------------------------
def test_untrained_loss_is_about_log_vocab():
    cfg = Config()  # default sizes, d_vocab=512
    model = Transformer(cfg, seed=3)
    loss = model(random_tokens(cfg, 4, 64), return_type="loss")
    assert loss.ndim == 0
    assert abs(loss.item() - math.log(cfg.d_vocab)) < 0.1


def test_lm_cross_entropy_matches_f_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 9, 17, generator=gen)
    tokens = torch.randint(0, 17, (3, 9), generator=gen)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 17), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(lm_cross_entropy(logits, tokens), expected)


def test_return_types_agree():
    model = randomised()
    tokens = random_tokens(SMALL, 2, 8)
    logits, loss = model(tokens, return_type="both")
    torch.testing.assert_close(logits, model(tokens))
    torch.testing.assert_close(loss, model(tokens, return_type="loss"))
    torch.testing.assert_close(loss, lm_cross_entropy(logits, tokens))
    # A 1-D token sequence is treated as a batch of one.
    torch.testing.assert_close(model(tokens[0]), logits[:1])


# ---- KV cache --------------------------------------------------------------------------------------
def test_kv_cache_matches_full_forward():
    model = randomised()
    tokens = random_tokens(SMALL, 2, 11)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(SMALL.n_layers)
        pieces = [model(tokens[:, :4], kv_cache=cache)]
        for i in range(4, 11):
            pieces.append(model(tokens[:, i : i + 1], kv_cache=cache))
    assert cache.n_tokens == 11
    incremental = torch.cat(pieces, dim=1)
    assert (incremental - full).abs().max() < 1e-5


def test_kv_cache_raises_beyond_n_ctx():
    model = randomised()
    tokens = random_tokens(SMALL, 1, SMALL.n_ctx + 1)
    cache = KVCache(SMALL.n_layers)
    with torch.no_grad():
        model(tokens[:, : SMALL.n_ctx - 1], kv_cache=cache)
        model(tokens[:, SMALL.n_ctx - 1 : SMALL.n_ctx], kv_cache=cache)  # exactly n_ctx: fine
        with pytest.raises(ValueError, match="n_ctx"):
            model(tokens[:, SMALL.n_ctx :], kv_cache=cache)
        assert cache.n_tokens == SMALL.n_ctx
        with pytest.raises(ValueError, match="n_ctx"):
            model(tokens)


# ---- seeds and the global RNG ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 123, None])
def test_building_a_model_leaves_global_rng_alone(seed):
    state = torch.get_rng_state()
    Transformer(SMALL, seed=seed)
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_same_weights():
    a, b, c = Transformer(SMALL, seed=7), Transformer(SMALL, seed=7), Transformer(SMALL, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.W_E"], sc["embed.W_E"])
    assert not torch.equal(Transformer(SMALL, seed=None).embed.W_E, Transformer(SMALL, seed=None).embed.W_E)


def test_init_scheme():
    model = Transformer(Config(), seed=0)
    sd = model.state_dict()
    assert abs(sd["blocks.0.mlp.W_in"].std().item() - 0.02) < 0.002
    assert torch.equal(sd["blocks.0.ln1.w"], torch.ones(128)) and torch.equal(sd["blocks.0.ln1.b"], torch.zeros(128))
    assert torch.equal(sd["blocks.1.attn.b_Q"], torch.zeros(4, 32))


# ---- hook names and shapes -------------------------------------------------------------------------
def expected_hook_shapes(cfg: Config, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
    m, h, d = cfg.d_model, cfg.n_heads, cfg.d_head
    shapes = {"hook_embed": (batch, pos, m), "hook_pos_embed": (batch, pos, m)}
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        shapes |= {
            b + "hook_resid_pre": (batch, pos, m),
            b + "ln1.hook_scale": (batch, pos, 1),
            b + "ln1.hook_normalized": (batch, pos, m),
            b + "attn.hook_q": (batch, pos, h, d),
            b + "attn.hook_k": (batch, pos, h, d),
            b + "attn.hook_v": (batch, pos, h, d),
            b + "attn.hook_attn_scores": (batch, h, pos, pos),
            b + "attn.hook_pattern": (batch, h, pos, pos),
            b + "attn.hook_z": (batch, pos, h, d),
            b + "hook_attn_out": (batch, pos, m),
            b + "hook_resid_mid": (batch, pos, m),
            b + "ln2.hook_scale": (batch, pos, 1),
            b + "ln2.hook_normalized": (batch, pos, m),
            b + "mlp.hook_pre": (batch, pos, cfg.d_mlp),
            b + "mlp.hook_post": (batch, pos, cfg.d_mlp),
            b + "hook_mlp_out": (batch, pos, m),
            b + "hook_resid_post": (batch, pos, m),
        }
    shapes |= {"ln_final.hook_scale": (batch, pos, 1), "ln_final.hook_normalized": (batch, pos, m),
               "unembed.hook_in": (batch, pos, m), "unembed.hook_out": (batch, pos, cfg.d_vocab)}
    return shapes


def test_transformerlens_hook_names_and_shapes():
    cfg = SMALL.replace(n_layers=3, d_head=5)  # d_head * n_heads != d_model is allowed
    model = randomised(cfg)
    expected = expected_hook_shapes(cfg, 2, 6)
    assert set(model.hook_dict) == set(expected)
    assert all(hp.name == name for name, hp in model.hook_dict.items())
    with torch.no_grad():
        _, cache = model.run_with_cache(random_tokens(cfg, 2, 6))
    assert {name: tuple(act.shape) for name, act in cache.items()} == expected


def test_attn_only_hook_names():
    cfg = SMALL.replace(attn_only=True)
    expected = {n for n in expected_hook_shapes(cfg, 1, 1) if not any(s in n for s in ("mlp", "ln2", "resid_mid"))}
    assert set(Transformer(cfg).hook_dict) == expected


# ---- residual stream decomposition -----------------------------------------------------------------
def test_residual_stream_is_sum_of_components():
    model = randomised()
    tokens = random_tokens(SMALL, 2, 9)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    total = cache["hook_embed"] + cache["hook_pos_embed"]
    for l in range(SMALL.n_layers):
        total = total + cache["attn_out", l] + cache["mlp_out", l]
    final = cache["resid_post", SMALL.n_layers - 1]
    assert final.abs().max() > 1  # non-trivial
    assert (total - final).abs().max() < 1e-5
    # and the logits are the unembedded final LayerNorm output
    ln_out = cache["ln_final.hook_normalized"] * model.ln_final.w + model.ln_final.b
    assert (ln_out - cache["unembed.hook_in"]).abs().max() < 1e-6
    unembedded = ln_out @ model.unembed.W_U + model.unembed.b_U
    assert (unembedded - logits).abs().max() < 1e-5
    assert torch.equal(cache["unembed.hook_out"], logits)


def test_generate_slides_past_the_context_length():
    """Asked for more tokens than n_ctx leaves room for, generate gives them all: past n_ctx
    each token is predicted from the last n_ctx tokens, the same with or without the KV cache."""
    from utils.sampling import generate

    cfg = SMALL.replace(n_ctx=12)
    model = randomised(cfg).eval()
    prompt = random_tokens(cfg, 2, 5)
    cached = generate(model, prompt, 30, temperature=0)
    plain = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (2, 35) and torch.equal(cached, plain)
    assert torch.equal(cached[:, :5], prompt)
    with torch.no_grad():  # the token after position 20 is the greedy choice given positions 9..20
        assert torch.equal(cached[:, 21], model(cached[:, 9:21])[:, -1].argmax(-1))
    long_prompt = random_tokens(cfg, 1, 20)[0]
    assert generate(model, long_prompt, 3, temperature=0).shape == (23,)
