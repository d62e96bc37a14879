"""Carry course models into the libraries the field uses: TransformerLens and Hugging Face.

The toolkit's transformer already uses TransformerLens's parameter and hook names, so the
conversions are short; this module keeps them in one place and says what does not carry over.

* ``to_transformer_lens(model)``: a TransformerLens 3.x ``HookedTransformer`` with the same
  weights (``load_state_dict`` unchanged). Its logits and every hook the two share agree to
  float rounding (``tests/test_interop.py``). TransformerLens 4 removed ``HookedTransformer``;
  its ``TransformerBridge`` wraps a Hugging Face model, so use ``save_hf_gpt2`` and load that
  folder there (``transformer_lens_config`` gives the 3.x config as a dict, for reference).
* ``to_hf_gpt2(model)`` / ``save_hf_gpt2(model, folder)``: a Hugging Face ``GPT2LMHeadModel``,
  saved with ``save_pretrained`` (safetensors), which ``transformers``, nnsight and other tools
  load offline. GPT-2 has LayerNorm, an MLP in every block and no unembedding bias, so:

  - a model without LayerNorm (``normalization=None``) is refused: GPT-2 cannot express it;
  - an attention-only model gets MLPs whose weights are all zero (they add exactly 0);
  - the unembedding bias ``b_U`` is folded, exactly, into ``ln_f.bias`` and ``lm_head``: the
    final LayerNorm's normalised output has zero mean, so adding the same row ``c`` (divided by
    the LayerNorm gain) to every row of the unembedding changes nothing but the constant term,
    which then carries ``b_U``. The logits agree; the last hidden state Hugging Face reports
    (``ln_f``'s output) is shifted by a constant vector when ``b_U`` is not zero.

None of this is a run-time dependency of the course: ``transformer_lens`` and ``transformers``
are imported only when these functions are called (``pip install -e '.[test]'`` has both).
"""

from __future__ import annotations

from pathlib import Path

import einops
import torch
from torch import Tensor

from .transformer import _HF_ACTIVATIONS, Transformer


def transformer_lens_config(model: Transformer) -> dict:
    """The keyword arguments of TransformerLens's ``HookedTransformerConfig`` for ``model``."""
    c = model.cfg
    return dict(n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads,
                d_mlp=None if c.attn_only else c.d_mlp, d_vocab=c.d_vocab, act_fn=c.act_fn,
                normalization_type="LN" if c.normalization == "LN" else None, attn_only=c.attn_only,
                eps=c.layer_norm_eps, positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
                default_prepend_bos=False, dtype=model.embed.W_E.dtype, device=str(model.device))


def to_transformer_lens(model: Transformer):
    """A TransformerLens 3.x ``HookedTransformer`` with ``model``'s weights (a copy)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:  # TransformerLens missing, or 4.x (no HookedTransformer)
        raise ImportError(
            "to_transformer_lens needs TransformerLens 3.x (pip install 'transformer-lens>=3,<4'). "
            "TransformerLens 4 has no HookedTransformer: export with save_hf_gpt2 and load the folder "
            "with its TransformerBridge instead."
        ) from e
    import warnings

    with warnings.catch_warnings():  # 3.x announces its own removal in 4.0 (see the module notes)
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(HookedTransformerConfig(**transformer_lens_config(model)))
    missing, unexpected = tl.load_state_dict(model.state_dict(), strict=False)
    # TransformerLens keeps two constant buffers per attention layer (the causal mask and the
    # value masked scores get); nothing else may be missing or left over.
    missing = [k for k in missing if not k.endswith((".attn.mask", ".attn.IGNORE"))]
    if missing or unexpected:
        raise RuntimeError(f"TransformerLens's model differs from the course's: missing {missing}, unexpected {unexpected}")
    return tl.eval()


def hf_gpt2_state_dict(model: Transformer) -> dict[str, Tensor]:
    """``model``'s weights in Hugging Face ``GPT2LMHeadModel``'s names and layouts (the inverse
    of ``utils.transformer.convert_gpt2_state_dict``, plus the folding of ``b_U``)."""
    c = model.cfg
    if c.normalization != "LN":
        raise ValueError("Hugging Face's GPT-2 always applies LayerNorm; a model without it "
                         "(normalization=None) cannot be exported exactly. Use to_transformer_lens instead.")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtype, device = sd["embed.W_E"].dtype, sd["embed.W_E"].device
    out = {"transformer.wte.weight": sd["embed.W_E"], "transformer.wpe.weight": sd["pos_embed.W_pos"]}
    d_mlp = 4 if c.attn_only else c.d_mlp
    for l in range(c.n_layers):
        p, b = f"transformer.h.{l}.", f"blocks.{l}."
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = sd[b + "ln1.w"], sd[b + "ln1.b"]
        W = [einops.rearrange(sd[b + f"attn.W_{n}"], "h m d -> m (h d)") for n in "QKV"]
        bias = [einops.rearrange(sd[b + f"attn.b_{n}"], "h d -> (h d)") for n in "QKV"]
        out[p + "attn.c_attn.weight"] = torch.cat(W, dim=1)
        out[p + "attn.c_attn.bias"] = torch.cat(bias)
        out[p + "attn.c_proj.weight"] = einops.rearrange(sd[b + "attn.W_O"], "h d m -> (h d) m")
        out[p + "attn.c_proj.bias"] = sd[b + "attn.b_O"]
        if c.attn_only:  # an MLP that adds exactly zero
            zeros = lambda *shape: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
            out[p + "ln_2.weight"], out[p + "ln_2.bias"] = torch.ones(c.d_model, dtype=dtype, device=device), zeros(c.d_model)
            out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = zeros(c.d_model, d_mlp), zeros(d_mlp)
            out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = zeros(d_mlp, c.d_model), zeros(c.d_model)
        else:
            out[p + "ln_2.weight"], out[p + "ln_2.bias"] = sd[b + "ln2.w"], sd[b + "ln2.b"]
            out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = sd[b + "mlp.W_in"], sd[b + "mlp.b_in"]
            out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = sd[b + "mlp.W_out"], sd[b + "mlp.b_out"]
    w, ln_b, W_U, b_U = sd["ln_final.w"], sd["ln_final.b"], sd["unembed.W_U"], sd["unembed.b_U"]
    if b_U.abs().max() > 0:
        # logits = (n * w + ln_b) @ W_U + b_U, with n the normalised residual (n · 1 = 0). Replace
        # ln_b by ln_b + beta * w and W_U by W_U + (1 / w)[:, None] * cvec[None]: the n-term is
        # unchanged (n · 1 = 0), and the constant term equals ln_b @ W_U + b_U when
        # cvec = (b_U - beta * (w @ W_U)) / (ln_b · (1 / w) + beta * d_model). beta makes that
        # denominator d_model, so cvec stays small.
        if w.abs().min() < 1e-6:
            raise ValueError("the final LayerNorm has a gain of (nearly) zero in some dimension, so its "
                             "unembedding bias cannot be folded into Hugging Face's GPT-2 (which has none)")
        inv = 1.0 / w
        s = (ln_b * inv).sum()
        beta = (c.d_model - s) / c.d_model
        cvec = (b_U - beta * (w @ W_U)) / (s + beta * c.d_model)
        ln_b = ln_b + beta * w
        W_U = W_U + inv[:, None] * cvec[None, :]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = w, ln_b
    out["lm_head.weight"] = W_U.T.contiguous()
    return {k: v.contiguous() for k, v in out.items()}


def hf_gpt2_config(model: Transformer):
    """A ``transformers.GPT2Config`` for ``model`` (untied unembedding, no dropout)."""
    from transformers import GPT2Config

    c = model.cfg
    if c.n_heads * c.d_head != c.d_model:
        raise ValueError(f"Hugging Face's GPT-2 needs n_heads * d_head == d_model; this model has "
                         f"{c.n_heads} x {c.d_head} != {c.d_model}")
    return GPT2Config(vocab_size=c.d_vocab, n_positions=c.n_ctx, n_embd=c.d_model, n_layer=c.n_layers,
                      n_head=c.n_heads, n_inner=4 if c.attn_only else c.d_mlp,
                      activation_function=_HF_ACTIVATIONS[c.act_fn], layer_norm_epsilon=c.layer_norm_eps,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=None)


def to_hf_gpt2(model: Transformer):
    """A Hugging Face ``GPT2LMHeadModel`` whose logits equal ``model``'s (see the module notes)."""
    from transformers import GPT2LMHeadModel

    config = hf_gpt2_config(model)
    sd = hf_gpt2_state_dict(model)
    hf = GPT2LMHeadModel(config).to(sd["lm_head.weight"].dtype)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]  # constant buffers
    if missing or unexpected:
        raise RuntimeError(f"GPT2LMHeadModel's weights differ from the export: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def save_hf_gpt2(model: Transformer, folder: str | Path) -> Path:
    """Save ``model`` as a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``):
    ``GPT2LMHeadModel.from_pretrained(folder)`` loads it offline."""
    folder = Path(folder)
    to_hf_gpt2(model).save_pretrained(folder)
    return folder
