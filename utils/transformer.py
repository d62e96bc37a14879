"""A small, readable GPT-2-style transformer with hook points.

This is the course's reference model: chapter 1 has you write each piece yourself, and later
chapters analyse models built from this file. It follows GPT-2's definition exactly
(pre-LayerNorm, learned positional embeddings, GELU with the tanh approximation, causal
attention scaled by 1/sqrt(d_head)), so a GPT-2-architecture checkpoint can be loaded into it
(see ``from_gpt2_state_dict``). Parameter names and shapes follow TransformerLens:

==================  ===================================  ==============================
parameter           shape                                GPT-2 (Hugging Face) source
==================  ===================================  ==============================
embed.W_E           [d_vocab, d_model]                   wte.weight
pos_embed.W_pos     [n_ctx, d_model]                     wpe.weight
blocks.l.ln1.w/b    [d_model]                            h.l.ln_1.weight/bias
blocks.l.attn.W_Q   [n_heads, d_model, d_head]           h.l.attn.c_attn.weight[:, :d]
blocks.l.attn.b_Q   [n_heads, d_head]                    h.l.attn.c_attn.bias[:d]
  (W_K, W_V, b_K, b_V likewise from the second and third thirds of c_attn)
blocks.l.attn.W_O   [n_heads, d_head, d_model]           h.l.attn.c_proj.weight
blocks.l.attn.b_O   [d_model]                            h.l.attn.c_proj.bias
blocks.l.ln2.w/b    [d_model]                            h.l.ln_2.weight/bias
blocks.l.mlp.W_in   [d_model, d_mlp]                     h.l.mlp.c_fc.weight
blocks.l.mlp.b_in   [d_mlp]                              h.l.mlp.c_fc.bias
blocks.l.mlp.W_out  [d_mlp, d_model]                     h.l.mlp.c_proj.weight
blocks.l.mlp.b_out  [d_model]                            h.l.mlp.c_proj.bias
ln_final.w/b        [d_model]                            ln_f.weight/bias
unembed.W_U         [d_model, d_vocab]                   lm_head.weight.T (= wte.weight.T: tied)
unembed.b_U         [d_vocab]                            zeros
==================  ===================================  ==============================

(Hugging Face's GPT-2 stores its linear layers as ``Conv1D`` with weights ``[in, out]``,
so ``x @ weight`` needs no transpose; only the head axis has to be split out.)

Variants later chapters need: ``attn_only=True`` (no MLPs) and ``normalization=None``
(no LayerNorm anywhere).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import HookedRootModule, HookPoint


@dataclass(frozen=True)
class Config:
    d_vocab: int = 512
    n_ctx: int = 128
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    n_layers: int = 2
    attn_only: bool = False
    normalization: Literal["LN"] | None = "LN"
    layer_norm_eps: float = 1e-5
    init_range: float = 0.02
    act_fn: Literal["gelu_new", "gelu", "relu"] = "gelu_new"

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's GELU: the tanh approximation of x * Phi(x)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS = {"gelu_new": gelu_new, "gelu": F.gelu, "relu": F.relu}
# Hugging Face GPT-2's ``activation_function`` names for ours ("gelu" is exact erf-GELU in both).
_HF_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


class Embed(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [batch, pos] -> [batch, pos, d_model]. Indexing is a one-hot matmul, done cheaply.
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        # The same position vectors for every sequence in the batch; `offset` is the number of
        # tokens already processed (used by the KV cache).
        batch, seq_len = tokens.shape
        return einops.repeat(self.W_pos[offset : offset + seq_len], "pos d -> batch pos d", batch=batch)


class LayerNorm(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]: the per-token divisor
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]: centred and scaled, before w and b

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        # The *biased* variance (divide by d_model, not d_model - 1), as GPT-2 and PyTorch do.
        # eps goes inside the square root so an all-constant vector never divides by zero.
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        # hook_normalized records the activation *before* the gain and bias, as TransformerLens
        # does, so caches and patches at this name mean the same thing in both libraries.
        return self.hook_normalized(x / scale) * self.w + self.b


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, m, d))
        self.W_K = nn.Parameter(torch.empty(h, m, d))
        self.W_V = nn.Parameter(torch.empty(h, m, d))
        self.W_O = nn.Parameter(torch.empty(h, d, m))
        self.b_Q = nn.Parameter(torch.zeros(h, d))
        self.b_K = nn.Parameter(torch.zeros(h, d))
        self.b_V = nn.Parameter(torch.zeros(h, d))
        self.b_O = nn.Parameter(torch.zeros(m))
        self.hook_q = HookPoint()  # [batch, q_pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, k_pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, k_pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos], after the mask
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos], rows sum to 1
        self.hook_z = HookPoint()  # [batch, q_pos, head, d_head]

    def forward(self, x: Tensor, kv_cache: "KVCacheEntry | None" = None) -> Tensor:
        q = self.hook_q(einops.einsum(x, self.W_Q, "b p m, h m d -> b p h d") + self.b_Q)
        k = self.hook_k(einops.einsum(x, self.W_K, "b p m, h m d -> b p h d") + self.b_K)
        v = self.hook_v(einops.einsum(x, self.W_V, "b p m, h m d -> b p h d") + self.b_V)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # keys and values of every position so far
        # Scale by 1/sqrt(d_head): with unit-variance q and k the dot product has variance
        # d_head, which would push softmax into saturation and kill its gradients.
        scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") / math.sqrt(self.cfg.d_head)
        scores = self.hook_attn_scores(apply_causal_mask(scores))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # normalise over key positions
        z = self.hook_z(einops.einsum(pattern, v, "b h q k, b k h d -> b q h d"))
        return einops.einsum(z, self.W_O, "b q h d, h d m -> b q m") + self.b_O


def apply_causal_mask(scores: Tensor) -> Tensor:
    """Set scores[..., q, k] to -inf where key k lies in the future of query q.

    The mask must come *before* the softmax: -inf becomes a weight of exactly 0, and the
    remaining weights still sum to 1. Queries are the last ``q_len`` of the ``k_len`` positions
    (with a KV cache, earlier positions have no query in this call).
    """
    q_len, k_len = scores.shape[-2:]
    q_pos = torch.arange(k_len - q_len, k_len, device=scores.device)[:, None]
    k_pos = torch.arange(k_len, device=scores.device)[None, :]
    return scores.masked_fill(k_pos > q_pos, float("-inf"))


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.act_fn = ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(self.act_fn(pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """Pre-LN residual block: resid_mid = resid_pre + attn(ln1(resid_pre)), then the MLP."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        norm = LayerNorm if cfg.normalization == "LN" else None
        self.ln1 = norm(cfg) if norm else nn.Identity()
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = norm(cfg) if norm else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Tensor, kv_cache: "KVCacheEntry | None" = None) -> Tensor:
        resid = self.hook_resid_pre(resid_pre)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), kv_cache))
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class Unembed(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_in = HookPoint()  # [batch, pos, d_model]: the final residual, after ln_final
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]: the logits

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_out(self.hook_in(x) @ self.W_U + self.b_U)


class Transformer(HookedRootModule):
    """The full model: tokens [batch, pos] -> logits [batch, pos, d_vocab]."""

    def __init__(self, cfg: Config, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = Unembed(cfg)
        self.init_weights(seed)
        self.setup()

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """GPT-2's scheme: weights ~ N(0, init_range), biases 0, LayerNorm gains 1.

        Uses its own generator, so building a model never moves the global RNG.
        """
        gen = torch.Generator()
        if seed is None:
            gen.seed()  # a fresh random seed; torch.seed() would reseed, and so move, the global RNG
        else:
            gen.manual_seed(seed)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=gen) * self.cfg.init_range)
            elif leaf == "w":
                p.fill_(1.0)
            else:
                p.zero_()

    def forward(
        self,
        tokens: Tensor,
        return_type: Literal["logits", "loss", "both"] = "logits",
        kv_cache: "KVCache | None" = None,
    ):
        if tokens.ndim == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)  # token ids made on the CPU work with a model on a GPU
        offset = kv_cache.n_tokens if kv_cache is not None else 0
        if offset + tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {offset + tokens.shape[1]} tokens exceeds n_ctx={self.cfg.n_ctx}")
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens, offset))
        for layer, block in enumerate(self.blocks):
            resid = block(resid, kv_cache[layer] if kv_cache is not None else None)
        logits = self.unembed(self.ln_final(resid))
        if return_type == "logits":
            return logits
        loss = lm_cross_entropy(logits, tokens)
        return loss if return_type == "loss" else (logits, loss)

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    # ---- GPT-2 weights --------------------------------------------------------------------
    @classmethod
    def from_gpt2_state_dict(cls, sd: dict[str, Tensor], cfg: Config) -> "Transformer":
        """Build a model from a Hugging Face ``GPT2LMHeadModel``/``GPT2Model`` state dict, in the
        state dict's own dtype (float64 stays float64) and on its device."""
        converted = convert_gpt2_state_dict(sd, cfg)
        model = cls(cfg).to(converted["embed.W_E"].dtype).to(converted["embed.W_E"].device)
        model.load_state_dict(converted)
        return model


def lm_cross_entropy(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token loss: position i predicts token i + 1 (the last position has no target)."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    return -log_probs.gather(-1, tokens[:, 1:, None]).mean()


def convert_gpt2_state_dict(sd: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """Map Hugging Face GPT-2 parameter names and layouts onto this file's (see the table above).

    The unembedding is ``lm_head.weight`` when the state dict has one (a ``GPT2LMHeadModel``;
    equal to ``wte.weight`` when the two are tied, different when they are not), else the
    embedding (a bare ``GPT2Model``, which GPT-2 ties). Dtypes are kept as they are."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    if cfg.normalization != "LN":
        raise ValueError("Hugging Face's GPT-2 always has LayerNorm: convert into a config with normalization='LN'")
    if cfg.act_fn not in _HF_ACTIVATIONS.values():
        raise ValueError(f"act_fn {cfg.act_fn!r} has no Hugging Face GPT-2 equivalent")
    missing = [k for k in ("wte.weight", "wpe.weight", "ln_f.weight") if k not in sd]
    if missing:
        raise KeyError(f"not a GPT-2 state dict: {missing} missing")
    h = cfg.n_heads
    W_E = sd["wte.weight"]
    W_U = sd["lm_head.weight"] if "lm_head.weight" in sd else W_E
    if W_E.shape != (cfg.d_vocab, cfg.d_model) or W_U.shape != (cfg.d_vocab, cfg.d_model):
        raise ValueError(f"the state dict's embedding is {tuple(W_E.shape)} (unembedding {tuple(W_U.shape)}); "
                         f"the config asks for ({cfg.d_vocab}, {cfg.d_model})")
    out = {
        "embed.W_E": W_E,
        "pos_embed.W_pos": sd["wpe.weight"],
        "ln_final.w": sd["ln_f.weight"],
        "ln_final.b": sd["ln_f.bias"],
        "unembed.W_U": W_U.T.contiguous(),
        "unembed.b_U": torch.zeros(cfg.d_vocab, dtype=W_U.dtype, device=W_U.device),
    }
    for l in range(cfg.n_layers):
        p = f"h.{l}."
        W_q, W_k, W_v = sd[p + "attn.c_attn.weight"].chunk(3, dim=1)
        b_q, b_k, b_v = sd[p + "attn.c_attn.bias"].chunk(3, dim=0)
        for name, W, b in (("Q", W_q, b_q), ("K", W_k, b_k), ("V", W_v, b_v)):
            out[f"blocks.{l}.attn.W_{name}"] = einops.rearrange(W, "m (h d) -> h m d", h=h)
            out[f"blocks.{l}.attn.b_{name}"] = einops.rearrange(b, "(h d) -> h d", h=h)
        out[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "attn.c_proj.weight"], "(h d) m -> h d m", h=h)
        out[f"blocks.{l}.attn.b_O"] = sd[p + "attn.c_proj.bias"]
        out[f"blocks.{l}.ln1.w"], out[f"blocks.{l}.ln1.b"] = sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]
        if not cfg.attn_only:
            out[f"blocks.{l}.ln2.w"], out[f"blocks.{l}.ln2.b"] = sd[p + "ln_2.weight"], sd[p + "ln_2.bias"]
            out[f"blocks.{l}.mlp.W_in"] = sd[p + "mlp.c_fc.weight"]
            out[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.c_fc.bias"]
            out[f"blocks.{l}.mlp.W_out"] = sd[p + "mlp.c_proj.weight"]
            out[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.c_proj.bias"]
    return {k: v.detach().clone() for k, v in out.items()}


# ---- KV cache ------------------------------------------------------------------------------
class KVCacheEntry:
    """Keys and values of one layer for every position processed so far."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v


class KVCache:
    """One ``KVCacheEntry`` per layer. Pass the same cache to successive ``model(...)`` calls."""

    def __init__(self, n_layers: int) -> None:
        self.entries = [KVCacheEntry() for _ in range(n_layers)]

    def __getitem__(self, layer: int) -> KVCacheEntry:
        return self.entries[layer]

    @property
    def n_tokens(self) -> int:
        k = self.entries[0].k
        return 0 if k is None else k.shape[1]
