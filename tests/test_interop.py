"""The course's models in TransformerLens and Hugging Face, its caches with TransformerLens's
conventions. TransformerLens 3.x and transformers come with the test extra (never run-time
dependencies); without them these tests are skipped, except in CI."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from utils import interop, zoo
from utils.transformer import Config, Transformer

SHIPPED = ("course_lm", "induction_2l", "ioi_2l")


def _require(module: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def tl_lib():
    return _require("transformer_lens")


def _tokens(model, batch=3, seed=0):
    return torch.randint(0, model.cfg.d_vocab, (batch, model.cfg.n_ctx), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_run_identically_in_transformer_lens(name, tl_lib):
    """Logits and every hook (all of the toolkit's exist in TransformerLens) within 1e-5."""
    model = zoo.load_model(name).eval()
    tl = interop.to_transformer_lens(model)
    assert isinstance(tl, tl_lib.HookedTransformer)
    tokens = _tokens(model)
    with torch.no_grad():
        ours, cache = model.run_with_cache(tokens)
        theirs, tl_cache = tl.run_with_cache(tokens)
    assert set(cache) <= set(tl_cache.keys()), sorted(set(cache) - set(tl_cache.keys()))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    for key in cache:
        torch.testing.assert_close(cache[key], tl_cache[key], atol=1e-5, rtol=0, msg=key)


def test_transformer_lens_comparison_can_fail(tl_lib):
    """Guard against a vacuous comparison: a changed weight shows in the logits and the hooks."""
    model = zoo.load_model("ioi_2l").eval()
    tl = interop.to_transformer_lens(model)
    with torch.no_grad():
        tl.blocks[1].attn.W_V[2] += 0.05
        tokens = _tokens(model)
        _, cache = model.run_with_cache(tokens)
        _, tl_cache = tl.run_with_cache(tokens)
    assert (cache["z", 1] - tl_cache["z", 1]).abs().max() > 1e-3
    torch.testing.assert_close(cache["z", 0], tl_cache["z", 0])


SHORT_KEYS = [("attn", 0), ("pattern", 1), ("resid_post", -1), ("resid_pre", 0), ("scale", 0, "ln1"),
              ("normalized", 1, "ln2"), ("scale",), ("q", -2), ("z", 1), ("post", 0), ("mlp_out", -1),
              "embed", "pos_embed", "k1", "scale0ln1", "normalized", "blocks.0.hook_resid_mid"]


@pytest.fixture(scope="module")
def course_lm_caches(tl_lib):
    """course_lm, two rows of tokens, and the caches of our model and of its TransformerLens copy."""
    model = zoo.load_model("course_lm").eval()
    tokens = _tokens(model, batch=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        _, tl_cache = interop.to_transformer_lens(model).run_with_cache(tokens)
    return model, tokens, cache, tl_cache


def test_cache_short_names_match_transformer_lens(course_lm_caches):
    _, _, cache, tl_cache = course_lm_caches
    for key in SHORT_KEYS:
        torch.testing.assert_close(cache[key], tl_cache[key], atol=1e-5, rtol=0, msg=str(key))
        assert key in cache


def test_residual_decompositions_match_transformer_lens(course_lm_caches):
    model, tokens, cache, tl_cache = course_lm_caches
    for kwargs in (dict(), dict(layer=1), dict(layer=1, mlp_input=True), dict(apply_ln=True), dict(layer=1, apply_ln=True)):
        ours, labels = cache.decompose_resid(return_labels=True, **kwargs)
        theirs, tl_labels = tl_cache.decompose_resid(return_labels=True, **kwargs)
        assert labels == tl_labels, kwargs
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=str(kwargs))
    # the components add up to the residual stream they decompose
    torch.testing.assert_close(cache.decompose_resid().sum(0), cache["resid_post", -1], atol=1e-5, rtol=0)
    for kwargs in (dict(), dict(layer=1), dict(apply_ln=True)):
        ours, labels = cache.stack_head_results(return_labels=True, **kwargs)
        theirs, tl_labels = tl_cache.stack_head_results(return_labels=True, **kwargs)
        assert labels == tl_labels
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=str(kwargs))
    answer, wrong = tokens[:, -1], tokens[:, 0]
    # TransformerLens's logit_attrs assumes the final LayerNorm's gain folded into W_U: fold it
    # (by hand, so that nothing else changes) in the copy TransformerLens gets
    folded = zoo.load_model("course_lm").eval()
    with torch.no_grad():
        folded.unembed.W_U.mul_(folded.ln_final.w[:, None])
        folded.ln_final.w.fill_(1.0)
        _, tl_cache = interop.to_transformer_lens(folded).run_with_cache(tokens)
    for stack_of in ("decompose_resid", "stack_head_results"):
        ours = cache.logit_attrs(getattr(cache, stack_of)(pos_slice=slice(-1, None)), answer[:, None], wrong[:, None],
                                 pos_slice=slice(-1, None))
        theirs = tl_cache.logit_attrs(getattr(tl_cache, stack_of)(pos_slice=slice(-1, None)), answer[:, None],
                                      wrong[:, None], pos_slice=slice(-1, None))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=stack_of)
    # the direct logit attributions of all components add up to the logit difference (before b_U)
    logits = model(tokens)[:, -1]
    diff = logits.gather(-1, answer[:, None]) - logits.gather(-1, wrong[:, None])
    b_U = model.unembed.b_U
    total = cache.logit_attrs(cache.decompose_resid(pos_slice=slice(-1, None)), answer[:, None], wrong[:, None],
                              pos_slice=slice(-1, None)).sum(0)
    ln_b = model.ln_final.b @ (model.unembed.W_U[:, answer] - model.unembed.W_U[:, wrong])
    torch.testing.assert_close(total[:, 0] + ln_b + b_U[answer] - b_U[wrong], diff[:, 0], atol=1e-4, rtol=0)


# ---- Hugging Face ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_export_to_hugging_face_exactly(name, tmp_path, monkeypatch):
    """In float64 the exported GPT2LMHeadModel's logits and block outputs equal ours to 1e-10
    (the mapping is exact, b_U folding included); in float32 within float rounding. It is
    saved with save_pretrained and loads back offline."""
    transformers = _require("transformers")
    model = zoo.load_model(name).eval()
    tokens = _tokens(model)
    m64 = zoo.load_model(name).double().eval()
    hf64 = interop.to_hf_gpt2(m64)
    with torch.no_grad():
        out = hf64(tokens, output_hidden_states=True)
        ours, cache = m64.run_with_cache(tokens)
    torch.testing.assert_close(out.logits, ours, atol=1e-10, rtol=0)
    for l in range(model.cfg.n_layers):  # hidden_states[l] is the input of block l
        torch.testing.assert_close(out.hidden_states[l], cache["resid_pre", l], atol=1e-10, rtol=0)
    folder = interop.save_hf_gpt2(model, tmp_path / "hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens), atol=5e-5, rtol=1e-5)


def test_export_refuses_what_gpt2_cannot_express():
    _require("transformers")
    with pytest.raises(ValueError, match="normalization=None"):
        interop.to_hf_gpt2(Transformer(Config(d_vocab=20, n_ctx=8, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=1,
                                              normalization=None)))
    with pytest.raises(ValueError, match="n_heads \\* d_head == d_model"):
        interop.to_hf_gpt2(Transformer(Config(d_vocab=20, n_ctx=8, d_model=16, n_heads=2, d_head=5, d_mlp=32, n_layers=1)))


def test_hugging_face_round_trip_keeps_an_untied_unembedding_and_float64():
    """convert_gpt2_state_dict reads lm_head.weight (not wte) and keeps float64."""
    _require("transformers")
    model = zoo.load_model("course_lm").double().eval()
    with torch.no_grad():
        model.unembed.b_U.zero_()  # so that lm_head is W_U itself, no folding
    hf = interop.to_hf_gpt2(model)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    back = Transformer.from_gpt2_state_dict(hf.state_dict(), model.cfg)
    assert back.unembed.W_U.dtype == torch.float64
    tokens = _tokens(model)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), model(tokens), atol=1e-10, rtol=0)
