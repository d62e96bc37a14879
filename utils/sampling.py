"""Turning logits into text: greedy decoding, temperature, top-k, top-p, and a KV cache.

Every sampler takes logits ``[batch, d_vocab]`` (the last position's) and returns token ids
``[batch]``. Samplers draw from the global torch RNG, so ``torch.manual_seed`` makes them
repeatable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .transformer import Attention, KVCache, KVCacheEntry


def sample_greedy(logits: Tensor) -> Tensor:
    """The most likely token (ties go to the lowest id, as argmax does)."""
    return logits.argmax(dim=-1)


def sample_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Sample from softmax(logits / T): T < 1 sharpens the distribution, T > 1 flattens it."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use sample_greedy for T -> 0)")
    probs = (logits / temperature).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(-1)


def sample_top_k(logits: Tensor, k: int, temperature: float = 1.0) -> Tensor:
    """Sample only among the k most likely tokens (renormalised)."""
    top_logits, top_ids = logits.topk(k, dim=-1)
    choice = sample_temperature(top_logits, temperature)  # index into the top k
    return top_ids.gather(-1, choice[:, None]).squeeze(-1)


def sample_top_p(logits: Tensor, p: float, temperature: float = 1.0) -> Tensor:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches p.

    The token that pushes the running total past p is *kept* (otherwise p close to 0 would
    leave nothing to sample).
    """
    probs = (logits / temperature).softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability mass strictly above each token
    keep_sorted = before < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    filtered = logits.masked_fill(~keep, float("-inf"))
    return sample_temperature(filtered, temperature)


def attention_with_kv_cache(attn: Attention, x_new: Tensor, past_k: Tensor | None, past_v: Tensor | None):
    """One attention layer on new positions only, reusing earlier keys and values.

    x_new: [batch, new_pos, d_model] (already layer-normed); past_k/past_v: [batch, old_pos,
    n_heads, d_head] or None. Returns (output [batch, new_pos, d_model], k_all, v_all).
    This is the toolkit's own cached path (``Attention.forward`` with a ``KVCacheEntry``);
    chapter 1 has you write it out by hand.
    """
    entry = KVCacheEntry()
    entry.k, entry.v = past_k, past_v
    out = attn(x_new, entry)
    return out, entry.k, entry.v


@torch.no_grad()
def generate(
    model,
    tokens: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    stop_token: int | None = None,
) -> Tensor:
    """Extend ``tokens`` ([batch, pos] or [pos]) by ``max_new_tokens`` sampled tokens (fewer
    only if every sequence has just sampled ``stop_token``).

    temperature=0 means greedy. With ``use_cache`` the prompt is processed once and every
    later step feeds a single token, reusing cached keys and values (toolkit models only).

    Past the model's context length (``model.cfg.n_ctx``) the window slides: each new token is
    predicted from the last ``n_ctx`` tokens only, recomputed without the cache (learned
    positional embeddings cannot be shifted, so cached keys cannot be reused). Earlier tokens,
    the ``<bos>`` among them, stay in the returned sequence but the model no longer sees them,
    so text far past ``n_ctx`` drifts from what the model was trained on. A prompt longer than
    ``n_ctx`` is read from its last ``n_ctx`` tokens in the same way.
    """
    squeeze = tokens.ndim == 1
    tokens = tokens[None] if squeeze else tokens
    n_ctx = model.cfg.n_ctx
    cache = KVCache(model.cfg.n_layers) if use_cache else None
    next_input = tokens
    for _ in range(max_new_tokens):
        if tokens.shape[1] >= n_ctx:  # the window is full: slide it, without the cache
            cache = None
        if cache is not None:
            logits = model(next_input, kv_cache=cache)[:, -1]
        else:
            logits = model(tokens[:, -n_ctx:])[:, -1]
        if temperature == 0:
            new = sample_greedy(logits)
        elif top_k is not None:
            new = sample_top_k(logits, top_k, temperature)
        elif top_p is not None:
            new = sample_top_p(logits, top_p, temperature)
        else:
            new = sample_temperature(logits, temperature)
        tokens = torch.cat([tokens, new[:, None]], dim=1)
        next_input = new[:, None]
        if stop_token is not None and bool((new == stop_token).all()):
            break
    return tokens[0] if squeeze else tokens
