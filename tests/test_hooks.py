"""Tests for utils/hooks.py: run_with_cache, run_with_hooks, cleanup, errors, ActivationCache."""

from __future__ import annotations

import pytest
import torch

from utils.hooks import ActivationCache, HookPoint
from utils.transformer import Config, Transformer

CFG = Config(d_vocab=53, n_ctx=16, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_layers=2)


@pytest.fixture
def model() -> Transformer:
    model = Transformer(CFG, seed=1)
    with torch.no_grad():  # random LayerNorm gains and biases, bigger weights: nothing is trivially zero
        gen = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf.startswith("b"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.mul_(10.0)
    return model.eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, CFG.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))


def no_hooks_left(model) -> bool:
    return all(not hp._hooks for hp in model.hook_dict.values())


# ---- run_with_cache --------------------------------------------------------------------------------
def test_run_with_cache_returns_every_activation(model, tokens):
    clean = model(tokens)
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    assert set(cache) == set(model.hook_dict)
    assert torch.equal(logits, clean)
    assert all(not act.requires_grad for act in cache.values())  # detached
    assert no_hooks_left(model)
    # The cached activations are the ones the forward used.
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])


@pytest.mark.parametrize(
    "names_filter, expected",
    [
        ("blocks.1.attn.hook_pattern", {"blocks.1.attn.hook_pattern"}),
        (["hook_embed", "blocks.0.mlp.hook_post"], {"hook_embed", "blocks.0.mlp.hook_post"}),
        (("hook_embed",), {"hook_embed"}),
        (lambda name: name.endswith("hook_z"), {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}),
    ],
    ids=["str", "list", "tuple", "callable"],
)
def test_run_with_cache_names_filter(model, tokens, names_filter, expected):
    _, cache = model.run_with_cache(tokens, names_filter=names_filter)
    assert set(cache) == expected
    assert no_hooks_left(model)


def test_run_with_cache_passes_forward_kwargs(model, tokens):
    loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter="hook_embed")
    torch.testing.assert_close(loss, model(tokens, return_type="loss"))
    assert set(cache) == {"hook_embed"}


# ---- run_with_hooks ------------------------------------------------------------------------------
def zero_head(head: int):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0  # z: [batch, pos, head, d_head]
        return z

    return hook


def test_zero_ablating_a_head_via_z_equals_zeroing_its_output_weights(model, tokens):
    clean = model(tokens)
    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(2))])
    assert (ablated - clean).abs().max() > 1e-3
    reference = Transformer(CFG)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.blocks[0].attn.W_O[2] = 0.0
    torch.testing.assert_close(ablated, reference(tokens))
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)


def test_zero_ablating_via_pattern_equals_ablating_z(model, tokens):
    def zero_pattern(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 3] = 0.0  # pattern: [batch, head, q_pos, k_pos]
        return pattern

    via_pattern = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", zero_pattern)])
    via_z = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head(3))])
    assert (via_pattern - model(tokens)).abs().max() > 1e-3
    torch.testing.assert_close(via_pattern, via_z)


def test_replacement_propagates_downstream(model, tokens):
    _, cache = model.run_with_cache(
        tokens,
        names_filter=["blocks.0.hook_attn_out", "blocks.0.hook_resid_mid"],
    )
    ablated_cache = {}

    def save(act, hook):
        ablated_cache[hook.name] = act

    out = model.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act)),
            ("blocks.0.hook_resid_mid", save),
        ],
    )
    assert out.shape == (2, 9, CFG.d_vocab)
    # resid_mid = resid_pre + attn_out, so with attn_out zeroed it moved by exactly attn_out.
    torch.testing.assert_close(cache["blocks.0.hook_resid_mid"] - ablated_cache["blocks.0.hook_resid_mid"], cache["blocks.0.hook_attn_out"])


def test_hook_returning_none_keeps_activation(model, tokens):
    clean = model(tokens)
    seen = []

    def observe(act, hook):
        seen.append((hook.name, act.shape))
        return None

    out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_post", observe)])
    assert seen == [("blocks.1.mlp.hook_post", torch.Size([2, 9, CFG.d_mlp]))]
    assert torch.equal(out, clean)


def test_hooks_at_one_point_run_in_order(model, tokens):
    calls = []
    scale = lambda k: lambda act, hook: (calls.append(k), act * k)[1]  # noqa: E731
    out = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", scale(2.0)), ("hook_embed", scale(3.0))])
    assert calls == [2.0, 3.0]
    expected = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", scale(6.0))])
    torch.testing.assert_close(out, expected)


def test_filter_function_as_hook_name(model, tokens):
    hit = []
    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_resid_post"), lambda a, h: hit.append(h.name))])
    assert hit == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert no_hooks_left(model)


# ---- cleanup -------------------------------------------------------------------------------------
def test_no_hooks_remain_after_run_with_hooks(model, tokens):
    clean = model(tokens)
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(0)), ("hook_pos_embed", lambda a, h: a * 0)])
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)


def test_no_hooks_remain_when_a_hook_raises(model, tokens):
    clean = model(tokens)

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(1)), ("blocks.1.hook_resid_pre", boom)])
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)


def test_hooks_context_manager_cleans_up_on_error(model, tokens):
    with pytest.raises(ZeroDivisionError):
        with model.hooks([("hook_embed", lambda a, h: a * 0)]):
            assert not no_hooks_left(model)
            1 / 0
    assert no_hooks_left(model)


def test_nested_hooks_keep_the_outer_ones(model, tokens):
    """run_with_cache inside a ``hooks()`` block must not strip the enclosing block's hooks."""
    ablate = [("blocks.0.attn.hook_z", zero_head(2))]
    expected = model.run_with_hooks(tokens, fwd_hooks=ablate)
    with model.hooks(ablate):
        inner, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
        after_inner = model(tokens)
    torch.testing.assert_close(inner, expected)
    assert (cache["blocks.0.attn.hook_z"][:, :, 2] == 0).all()
    torch.testing.assert_close(after_inner, expected)
    assert no_hooks_left(model)


# ---- errors ------------------------------------------------------------------------------------------
def test_unknown_hook_name_raises_key_error_naming_it(model, tokens):
    with pytest.raises(KeyError, match="blocks.0.attn.hook_nonsense"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, h: a), ("blocks.0.attn.hook_nonsense", lambda a, h: a)])
    assert no_hooks_left(model)


def test_wrong_shape_from_hook_is_a_clear_error(model, tokens):
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_pattern.*\(2, 4, 9\).*\(2, 4, 9, 9\)"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: a[..., 0])])
    assert no_hooks_left(model)


def test_non_tensor_from_hook_is_a_clear_error(model, tokens):
    with pytest.raises(TypeError, match=r"blocks\.1\.hook_mlp_out returned float"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, h: 0.0)])
    assert no_hooks_left(model)


def test_hookpoint_is_identity_without_hooks():
    hp = HookPoint()
    x = torch.randn(3, 4)
    assert hp(x) is x


# ---- ActivationCache short-cuts -----------------------------------------------------------------------
def test_activation_cache_shortcuts(model, tokens):
    _, cache = model.run_with_cache(tokens)
    pairs = {
        ("pattern", 0): "blocks.0.attn.hook_pattern",
        ("attn_scores", 1): "blocks.1.attn.hook_attn_scores",
        ("q", 1): "blocks.1.attn.hook_q",
        ("z", 0): "blocks.0.attn.hook_z",
        ("resid_post", 1): "blocks.1.hook_resid_post",
        ("resid_pre", 0): "blocks.0.hook_resid_pre",
        ("attn_out", 1): "blocks.1.hook_attn_out",
        ("post", 0): "blocks.0.mlp.hook_post",
        ("pre", 1): "blocks.1.mlp.hook_pre",
    }
    for short, full in pairs.items():
        assert cache[short] is cache[full], short
    assert cache["post", 0].shape == (2, 9, CFG.d_mlp)
    assert cache["pattern", 0].shape == (2, CFG.n_heads, 9, 9)
    with pytest.raises(KeyError):
        cache["resid_post", 5]


def test_activation_cache_follows_transformer_lens_conventions(model, tokens):
    """Negative layers, the short names TransformerLens accepts, and a KeyError that names the
    full name and the nearest ones (tests/test_interop.py compares them with TransformerLens)."""
    from utils.hooks import act_name

    _, cache = model.run_with_cache(tokens)
    last = CFG.n_layers - 1
    assert cache["resid_post", -1] is cache[f"blocks.{last}.hook_resid_post"]
    assert cache["attn", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"] and cache["embed"] is cache["hook_embed"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"] and cache["scale0ln2"] is cache["blocks.0.ln2.hook_scale"]
    assert ("resid_post", -1) in cache and ("resid_post", 7) not in cache and "embed" in cache
    assert act_name("normalized", 3, "ln2") == "blocks.3.ln2.hook_normalized"
    assert act_name("mlp_post", 2) == "blocks.2.mlp.hook_post" and act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(KeyError, match="blocks.0.hook_resid_mdi.*did you mean 'blocks.0.hook_resid_mid'"):
        cache["resid_mdi", 0]
    with pytest.raises(ValueError, match="run_with_cache"):
        ActivationCache(dict(cache)).decompose_resid()


def test_decompositions_add_up_to_the_residual_stream(model, tokens):
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed"] + [f"{l}_{p}_out" for l in range(CFG.n_layers) for p in ("attn", "mlp")]
    torch.testing.assert_close(stack.sum(0), cache["resid_post", -1], atol=1e-5, rtol=0)
    heads = cache.stack_head_results(layer=1)
    b_O = model.blocks[0].attn.b_O
    torch.testing.assert_close(heads.sum(0) + b_O, cache["attn_out", 0], atol=1e-5, rtol=0)
    # direct logit attribution: components + LayerNorm bias + b_U = the logits
    t = tokens[:, -1]
    attrs = cache.logit_attrs(stack, t[:, None].expand(-1, tokens.shape[1]))
    const = model.ln_final.b @ model.unembed.W_U[:, t] + model.unembed.b_U[t]
    torch.testing.assert_close(attrs.sum(0) + const[:, None], logits.gather(-1, t[:, None, None].expand(-1, tokens.shape[1], 1))[..., 0],
                               atol=1e-4, rtol=0)
