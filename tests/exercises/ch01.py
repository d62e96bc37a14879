"""Chapter 1 exercises: a transformer from scratch.

Each exercise runs the learner's object on seeded inputs (``run_*``), compares with the
toolkit's reference, and recognises catalogued mistakes by their outputs. The mistakes below
are realistic wrong answers; CI proves each one fails its check with its own hint.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

from utils import sampling as ref_sampling
from utils import training as ref_training
from utils import transformer as ref
from utils.checks import Exercise, LearnerError, Mistake
from utils.transformer import Config

from .judges import judge_distribution

CFG_A = Config(d_vocab=37, n_ctx=12, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=2)
CFG_B = Config(d_vocab=23, n_ctx=9, d_model=24, n_heads=3, d_head=4, d_mlp=40, n_layers=1)
# Hidden tests (grading only): another shape of everything, and sequences longer than the
# visible checks use, so code that hard-codes a visible size fails.
CFG_H = Config(d_vocab=31, n_ctx=20, d_model=20, n_heads=5, d_head=6, d_mlp=28, n_layers=3)
HIDDEN_RESID = [dict(seed=0, cfg=CFG_H, batch=3, pos=17, scale=1.0, offset=0.5)]
HIDDEN_TOKENS = [dict(seed=0, cfg=CFG_H, batch=2, pos=19)]


def _cfg_text(cfg: Config) -> str:
    return f"d_model={cfg.d_model}, n_heads={cfg.n_heads}, d_head={cfg.d_head}, d_mlp={cfg.d_mlp}, d_vocab={cfg.d_vocab}"


def _resid_cases(what: str, extra: str = "") -> list[dict]:
    return [
        dict(seed=1, cfg=CFG_A, batch=2, pos=6, scale=1.0,
             describe=f"{what} of shape (2, 6, 16) [batch, pos, d_model], random parameters ({_cfg_text(CFG_A)}){extra}"),
        dict(seed=2, cfg=CFG_B, batch=3, pos=9, scale=1.5,
             describe=f"{what} of shape (3, 9, 24) [batch, pos, d_model] with std 1.5, random parameters ({_cfg_text(CFG_B)}){extra}"),
    ]


def _token_cases(cfgs=None) -> list[dict]:
    a, b = cfgs or (CFG_A, CFG_B)
    return [
        dict(seed=3, cfg=a, batch=2, pos=7, describe=f"tokens of shape (2, 7) [batch, pos], random parameters ({_cfg_text(a)})"),
        dict(seed=4, cfg=b, batch=4, pos=9, describe=f"tokens of shape (4, 9) [batch, pos], random parameters ({_cfg_text(b)})"),
    ]


# ---- 1. Embed -------------------------------------------------------------------------------
def run_module_on_tokens(impl, ctx):
    c = ctx.case
    module = ctx.make(impl, c["cfg"])
    tokens = ctx.randint(c.get("ids_below", c["cfg"].d_vocab), c["batch"], c["pos"])
    return {"out": ctx.call(module, tokens)}


class EmbedByPosition(ref.Embed):
    def forward(self, tokens):
        return self.W_E[torch.arange(tokens.shape[1])].expand(tokens.shape[0], -1, -1)


class EmbedScaledBySqrtDModel(ref.Embed):
    def forward(self, tokens):
        return self.W_E[tokens] * math.sqrt(self.W_E.shape[1])


class EmbedFlattened(ref.Embed):
    def forward(self, tokens):
        return self.W_E.index_select(0, tokens.flatten())


class PosEmbedByToken(ref.PosEmbed):
    def forward(self, tokens):
        return self.W_pos[tokens]


class PosEmbedNoBatch(ref.PosEmbed):
    def forward(self, tokens):
        return self.W_pos[: tokens.shape[1]]


class PosEmbedAllPositions(ref.PosEmbed):
    def forward(self, tokens):
        return einops.repeat(self.W_pos, "pos d -> batch pos d", batch=tokens.shape[0])


class PosEmbedLenIsBatch(ref.PosEmbed):
    def forward(self, tokens):
        seq_len = len(tokens)  # the batch size, not the number of positions
        return einops.repeat(self.W_pos[:seq_len], "pos d -> batch pos d", batch=tokens.shape[0])


# ---- 2. LayerNorm ---------------------------------------------------------------------------
def run_resid_module(impl, ctx):
    c = ctx.case
    module = ctx.make(impl, c["cfg"])
    x = ctx.randn(c["batch"], c["pos"], c["cfg"].d_model, scale=c["scale"]) + c.get("offset", 0.0)
    return {"out": ctx.call(module, x)}


class LNUnbiased(ref.LayerNorm):
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.var(-1, keepdim=True, unbiased=True) + self.eps).sqrt() * self.w + self.b


class LNEpsOutside(ref.LayerNorm):
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.w + self.b


class LNNoCentering(ref.LayerNorm):
    def forward(self, x):
        return x / (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt() * self.w + self.b


class LNWrongAxis(ref.LayerNorm):
    def forward(self, x):
        x = x - x.mean(-2, keepdim=True)
        return x / (x.pow(2).mean(-2, keepdim=True) + self.eps).sqrt() * self.w + self.b


class LNHardcodedEps(ref.LayerNorm):
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * self.w + self.b


LN_CASES = [
    # eps = cfg.layer_norm_eps is not always GPT-2's 1e-5, so a hard-coded 1e-5 shows
    dict(seed=5, cfg=CFG_A.replace(layer_norm_eps=1e-3), batch=2, pos=5, scale=1.0, offset=0.0,
         describe="x of shape (2, 5, 16) [batch, pos, d_model] ~ N(0, 1), random w and b, cfg.layer_norm_eps=1e-3"),
    dict(seed=6, cfg=CFG_B, batch=3, pos=4, scale=0.01, offset=0.0,
         describe="x of shape (3, 4, 24) with tiny values (std 0.01, so eps matters), random w and b"),
    dict(seed=7, cfg=CFG_B, batch=2, pos=3, scale=2.0, offset=3.0,
         describe="x of shape (2, 3, 24) with mean 3 and std 2, random w and b"),
]


# ---- 3. Causal mask -------------------------------------------------------------------------
def run_causal_mask(impl, ctx):
    c = ctx.case
    scores = ctx.randn(c["batch"], c["heads"], c["pos"], c["pos"], scale=2.0)
    masked = ctx.call(impl, scores)
    if not isinstance(masked, Tensor):
        raise LearnerError(f"apply_causal_mask should return a tensor, got {type(masked).__name__}")
    # Judge what the mask does to attention: any large negative value works like -inf.
    return {"pattern": masked.softmax(dim=-1)}


def mask_includes_diagonal(scores):
    n = scores.shape[-1]
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(0), float("-inf"))


def mask_the_past(scores):
    n = scores.shape[-1]
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).tril(-1), float("-inf"))


def mask_with_zero(scores):
    n = scores.shape[-1]
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), 0.0)


# ---- 4. Attention ---------------------------------------------------------------------------
class _AttnVariant(ref.Attention):
    scale_by = "sqrt"
    mask = "before"
    softmax_dim = -1

    def forward(self, x, kv_cache=None):
        q = einops.einsum(x, self.W_Q, "b p m, h m d -> b p h d") + self.b_Q
        k = einops.einsum(x, self.W_K, "b p m, h m d -> b p h d") + self.b_K
        v = einops.einsum(x, self.W_V, "b p m, h m d -> b p h d") + self.b_V
        scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k")
        if self.scale_by == "sqrt":
            scores = scores / math.sqrt(self.cfg.d_head)
        elif self.scale_by == "d_head":
            scores = scores / self.cfg.d_head
        if self.mask == "before":
            scores = ref.apply_causal_mask(scores)
        pattern = scores.softmax(dim=self.softmax_dim)
        if self.mask == "after":
            pattern = torch.where(ref.apply_causal_mask(pattern).isinf(), 0.0, pattern)
        z = einops.einsum(pattern, v, "b h q k, b k h d -> b q h d")
        return einops.einsum(z, self.W_O, "b q h d, h d m -> b q m") + self.b_O


class AttnNoScale(_AttnVariant):
    scale_by = None


class AttnScaleByDHead(_AttnVariant):
    scale_by = "d_head"


class AttnNoMask(_AttnVariant):
    mask = None


class AttnMaskAfterSoftmax(_AttnVariant):
    mask = "after"


class AttnSoftmaxWrongAxis(_AttnVariant):
    softmax_dim = -2


class AttnNoOutputBias(ref.Attention):
    def forward(self, x, kv_cache=None):
        return super().forward(x) - self.b_O


# ---- 5. MLP ---------------------------------------------------------------------------------
class MLPRelu(ref.MLP):
    def forward(self, x):
        return F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class MLPNoInBias(ref.MLP):
    def forward(self, x):
        return ref.gelu_new(x @ self.W_in) @ self.W_out + self.b_out


class MLPExactGelu(ref.MLP):
    def forward(self, x):
        return F.gelu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class MLPNoOutBias(ref.MLP):
    def forward(self, x):
        return ref.gelu_new(x @ self.W_in + self.b_in) @ self.W_out


# ---- 6. Transformer block -------------------------------------------------------------------
class BlockPostLN(ref.TransformerBlock):
    def forward(self, resid, kv_cache=None):
        resid = self.ln1(resid + self.attn(resid))
        return self.ln2(resid + self.mlp(resid))


class BlockNoResidual(ref.TransformerBlock):
    def forward(self, resid, kv_cache=None):
        resid = self.attn(self.ln1(resid))
        return self.mlp(self.ln2(resid))


class BlockSameLN(ref.TransformerBlock):
    def forward(self, resid, kv_cache=None):
        resid = resid + self.attn(self.ln1(resid))
        return resid + self.mlp(self.ln1(resid))


class BlockParallel(ref.TransformerBlock):
    def forward(self, resid, kv_cache=None):
        return resid + self.attn(self.ln1(resid)) + self.mlp(self.ln2(resid))


# ---- 7. Unembed -----------------------------------------------------------------------------
class UnembedNoBias(ref.Unembed):
    def forward(self, x):
        return x @ self.W_U


class UnembedSoftmax(ref.Unembed):
    def forward(self, x):
        return (x @ self.W_U + self.b_U).softmax(dim=-1)


class UnembedLogSoftmax(ref.Unembed):
    def forward(self, x):
        return (x @ self.W_U + self.b_U).log_softmax(dim=-1)


class UnembedLastPosition(ref.Unembed):
    def forward(self, x):
        return x[:, -1] @ self.W_U + self.b_U


# ---- 8. Full transformer --------------------------------------------------------------------
class TransformerNoFinalLN(ref.Transformer):
    def forward(self, tokens, return_type="logits", kv_cache=None):
        resid = self.embed(tokens) + self.pos_embed(tokens)
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(resid)


class TransformerNoPosEmbed(ref.Transformer):
    def forward(self, tokens, return_type="logits", kv_cache=None):
        resid = self.embed(tokens)
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))


class TransformerBlockOutputDiscarded(ref.Transformer):
    def forward(self, tokens, return_type="logits", kv_cache=None):
        resid = self.embed(tokens) + self.pos_embed(tokens)
        for block in self.blocks:
            block(resid)  # the block's output is thrown away
        return self.unembed(self.ln_final(resid))


class TransformerBlocksReadEmbeddings(ref.Transformer):
    def forward(self, tokens, return_type="logits", kv_cache=None):
        resid = self.embed(tokens) + self.pos_embed(tokens)
        for block in self.blocks:
            out = block(resid)  # every block reads the embeddings; only the last one's output is kept
        return self.unembed(self.ln_final(out))


def run_transformer(impl, ctx):
    c = ctx.case
    model = ctx.make(impl, c["cfg"])
    tokens = ctx.randint(c["cfg"].d_vocab, c["batch"], c["pos"])
    return {"logits": ctx.call(model, tokens)}


# ---- 9. Cross-entropy -----------------------------------------------------------------------
def run_cross_entropy(impl, ctx):
    c = ctx.case
    logits = ctx.randn(c["batch"], c["pos"], c["vocab"], scale=3.0)
    tokens = ctx.randint(c["vocab"], c["batch"], c["pos"])
    loss = ctx.call(impl, logits, tokens)
    if isinstance(loss, Tensor) and loss.numel() == 1 and loss.ndim > 0:
        loss = loss.reshape(())
    return {"loss": loss}


def ce_no_shift(logits, tokens):
    return -logits.log_softmax(-1).gather(-1, tokens[..., None]).mean()


def ce_wrong_shift(logits, tokens):
    return -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, :-1, None]).mean()


def ce_sum(logits, tokens):
    return -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).sum()


def ce_probs_not_log(logits, tokens):
    return -logits[:, :-1].softmax(-1).gather(-1, tokens[:, 1:, None]).mean()


def ce_log_softmax_over_positions(logits, tokens):
    return -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None]).mean()


# ---- 10. Training step ----------------------------------------------------------------------
TRAIN_CFG = Config(d_vocab=29, n_ctx=8, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=1)


def run_train_step(impl, ctx):
    c = ctx.case
    cfg = c["cfg"]
    model = ref.Transformer(cfg, seed=c["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(c["steps"]):
        batch = ctx.randint(cfg.d_vocab, c["batch"], cfg.n_ctx)
        loss = ctx.call(impl, model, optimizer, batch)
        if isinstance(loss, Tensor) and loss.numel() == 1:
            loss = loss.item()
        if not isinstance(loss, (int, float)):
            raise LearnerError(f"train_step should return the loss as a number (loss.item()), got {type(loss).__name__}")
        losses.append(float(loss))
    return {"losses": torch.tensor(losses), "W_U": model.unembed.W_U.detach().clone()}


def train_no_zero_grad(model, optimizer, tokens):
    loss = ref.lm_cross_entropy(model(tokens), tokens)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_no_step(model, optimizer, tokens):
    loss = ref.lm_cross_entropy(model(tokens), tokens)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def train_shifted_twice(model, optimizer, tokens):
    loss = ref.lm_cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_loss_after_step(model, optimizer, tokens):
    loss = ref.lm_cross_entropy(model(tokens), tokens)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return ref.lm_cross_entropy(model(tokens), tokens).item()


# ---- 11-14. Sampling ------------------------------------------------------------------------
N_SAMPLES = 20_000


def _sampling_logits(ctx) -> Tensor:
    return ctx.randn(ctx.case["vocab"], scale=1.5)


def run_greedy(impl, ctx):
    logits = ctx.randn(ctx.case["batch"], ctx.case["vocab"], scale=2.0)
    return {"tokens": ctx.call(impl, logits)}


def greedy_values(logits):
    return logits.max(dim=-1).values


def greedy_softmax_wrong_axis(logits):
    return logits.softmax(dim=0).argmax(dim=-1)


def greedy_no_dim(logits):
    return logits.argmax()


def greedy_over_batch(logits):
    return logits.argmax(dim=0)


def greedy_keepdim(logits):
    return logits.argmax(dim=-1, keepdim=True)


def _probs_for(exercise_name: str, logits: Tensor, case: dict) -> Tensor:
    if exercise_name == "temperature":
        return (logits / case["temperature"]).softmax(-1)
    if exercise_name == "top_k":
        kth = logits.topk(case["k"]).values[-1]
        return (logits.masked_fill(logits < kth, float("-inf")) / case["temperature"]).softmax(-1)
    if exercise_name == "top_p":
        probs = (logits / case["temperature"]).softmax(-1)
        sorted_p, order = probs.sort(descending=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < case["p"]
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        return (logits.masked_fill(~keep, float("-inf")) / case["temperature"]).softmax(-1)
    raise KeyError(exercise_name)


def make_sampling_run(exercise_name: str, call):
    def run(impl, ctx):
        logits = _sampling_logits(ctx)
        batch = logits.expand(N_SAMPLES, -1).contiguous()
        ctx.seed_globals()
        samples = ctx.call(impl, batch, *call(ctx.case))
        if isinstance(samples, Tensor) and samples.ndim == 2 and samples.shape[-1] == 1:
            samples = samples.squeeze(-1)  # [batch, 1] is fine too
        return {"samples": samples, "probs": _probs_for(exercise_name, logits, ctx.case)}

    return run


def temp_multiplied(logits, temperature):
    return torch.multinomial((logits * temperature).softmax(-1), 1).squeeze(-1)


def temp_on_probs(logits, temperature):
    return torch.multinomial(logits.softmax(-1) / temperature, 1).squeeze(-1)


def temp_softmax_over_batch(logits, temperature):
    return torch.multinomial((logits / temperature).softmax(dim=0), 1).squeeze(-1)


def temp_argmax(logits, temperature):
    return (logits / temperature).argmax(dim=-1)


def top_k_plus_one(logits, k, temperature=1.0):
    return ref_sampling.sample_top_k(logits, k + 1, temperature)


def top_k_smallest(logits, k, temperature=1.0):
    vals, ids = logits.topk(k, dim=-1, largest=False)
    return ids.gather(-1, torch.multinomial((vals / temperature).softmax(-1), 1)).squeeze(-1)


def top_k_no_temperature(logits, k, temperature=1.0):
    return ref_sampling.sample_top_k(logits, k, 1.0)


def top_p_drops_crossing_token(logits, p, temperature=1.0):
    probs = (logits / temperature).softmax(-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_p.cumsum(-1) < p  # drops the token that crosses p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return ref_sampling.sample_temperature(logits.masked_fill(~keep, float("-inf")), temperature)


def top_p_ascending(logits, p, temperature=1.0):
    probs = (logits / temperature).softmax(-1)
    sorted_p, order = probs.sort(dim=-1, descending=False)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return ref_sampling.sample_temperature(logits.masked_fill(~keep, float("-inf")), temperature)


def top_p_no_temperature(logits, p, temperature=1.0):
    return ref_sampling.sample_top_p(logits, p, 1.0)


# ---- 15. KV cache (bonus) -------------------------------------------------------------------
def run_kv_cache(impl, ctx):
    c = ctx.case
    cfg = c["cfg"]
    attn = ref.Attention(cfg)
    for name, value in ctx.random_params(attn).items():
        getattr(attn, name).data.copy_(value)
    x = ctx.randn(c["batch"], sum(c["chunks"]), cfg.d_model)
    outs, k, v, start = [], None, None, 0
    for size in c["chunks"]:
        result = ctx.call(impl, attn, x[:, start : start + size], k, v)
        if not (isinstance(result, tuple) and len(result) == 3):
            raise LearnerError("attention_with_kv_cache should return a tuple (output, k_all, v_all)")
        out, k, v = result
        outs.append(out)
        start += size
    return {"out": torch.cat(outs, dim=1), "full": ref.Attention.forward(attn, x)}


def kv_no_concat(attn, x_new, past_k, past_v):
    out, k, v = ref_sampling.attention_with_kv_cache(attn, x_new, None, None)
    return out, (k if past_k is None else torch.cat([past_k, k], 1)), (v if past_v is None else torch.cat([past_v, v], 1))


def kv_mask_from_zero(attn, x_new, past_k, past_v):
    q = einops.einsum(x_new, attn.W_Q, "b p m, h m d -> b p h d") + attn.b_Q
    k = einops.einsum(x_new, attn.W_K, "b p m, h m d -> b p h d") + attn.b_K
    v = einops.einsum(x_new, attn.W_V, "b p m, h m d -> b p h d") + attn.b_V
    if past_k is not None:
        k, v = torch.cat([past_k, k], 1), torch.cat([past_v, v], 1)
    scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") / math.sqrt(attn.cfg.d_head)
    q_len, k_len = scores.shape[-2:]
    mask = torch.ones(q_len, k_len, dtype=torch.bool).triu(1)  # as if queries started at position 0
    pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
    z = einops.einsum(pattern, v, "b h q k, b k h d -> b q h d")
    return einops.einsum(z, attn.W_O, "b q h d, h d m -> b q m") + attn.b_O, k, v


def _kv_attention(attn, x_new, past_k, past_v, mask=True):
    q = einops.einsum(x_new, attn.W_Q, "b p m, h m d -> b p h d") + attn.b_Q
    k_new = einops.einsum(x_new, attn.W_K, "b p m, h m d -> b p h d") + attn.b_K
    v_new = einops.einsum(x_new, attn.W_V, "b p m, h m d -> b p h d") + attn.b_V
    k, v = k_new, v_new
    if past_k is not None:
        k, v = torch.cat([past_k, k_new], 1), torch.cat([past_v, v_new], 1)
    scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") / math.sqrt(attn.cfg.d_head)
    if mask:
        scores = ref.apply_causal_mask(scores)
    z = einops.einsum(scores.softmax(-1), v, "b h q k, b k h d -> b q h d")
    return einops.einsum(z, attn.W_O, "b q h d, h d m -> b q m") + attn.b_O, k, v, k_new, v_new


def kv_no_mask(attn, x_new, past_k, past_v):
    out, k, v, _, _ = _kv_attention(attn, x_new, past_k, past_v, mask=False)
    return out, k, v


def kv_returns_new_only(attn, x_new, past_k, past_v):
    out, _, _, k_new, v_new = _kv_attention(attn, x_new, past_k, past_v)
    return out, k_new, v_new


def _judge_kv(exercise, outputs, references, mistakes):
    from utils.checks.core import consistent_mistake, describe_difference, fail

    problems = [describe_difference("your cached output", got["out"], want["full"], exercise.atol, exercise.rtol)
                for got, want in zip(outputs, references)]
    failing = [i for i, p in enumerate(problems) if p]
    if not failing:
        return
    i = failing[0]
    # A mistake is named only if it explains every failing case (one case can match by chance).
    # Mistakes' outputs are computed only here, when the answer fails.
    hint = consistent_mistake(exercise, [{"out": o["out"]} for o in outputs], [None] * len(outputs),
                              {k: [{"out": o["out"]} for o in v] for k, v in mistakes.items()}, failing)
    fail(exercise, exercise.cases[i], problems[i] + " (compared with running the whole sequence at once)", hint)


# ---------------------------------------------------------------------------------------------
EXERCISES = [
    Exercise(
        name="embed", title="Embed", reference=ref.Embed, run=run_module_on_tokens,
        # One input without the largest id (d_vocab - 1): F.one_hot(tokens) without num_classes
        # is then too narrow for W_E (with every id present it would pass).
        cases=[
            dict(seed=3, cfg=CFG_A, batch=2, pos=7, ids_below=30,
                 describe=f"tokens of shape (2, 7) [batch, pos] with ids 0..29 only (the largest id, 36, does not occur), random parameters ({_cfg_text(CFG_A)})"),
            dict(seed=4, cfg=CFG_B, batch=4, pos=9, ids_below=CFG_B.d_vocab,
                 describe=f"tokens of shape (4, 9) [batch, pos], ids from the whole vocabulary, random parameters ({_cfg_text(CFG_B)})"),
        ],
        hidden_cases=HIDDEN_TOKENS,
        mistakes=[
            Mistake("rows by position", "you looked up rows of W_E by position; the embedding is indexed by token id: W_E[tokens].", EmbedByPosition),
            Mistake("scaled by sqrt(d_model)", "you multiplied the embeddings by sqrt(d_model), as the original Transformer paper does; GPT-2 uses the plain lookup W_E[tokens].", EmbedScaledBySqrtDModel),
            Mistake("flattened tokens", "you looked up the flattened tokens and returned [batch * pos, d_model]; index with the 2-D tokens, W_E[tokens], to get [batch, pos, d_model].", EmbedFlattened),
        ],
        stuck="an embedding is a lookup table: row t of W_E is the vector of token t (section 1).",
    ),
    Exercise(
        name="pos_embed", title="PosEmbed", reference=ref.PosEmbed, run=run_module_on_tokens,
        hidden_cases=HIDDEN_TOKENS,
        # a vocabulary smaller than n_ctx, so that indexing W_pos by token id runs (and is caught by its output)
        cases=_token_cases((CFG_A.replace(d_vocab=10), CFG_B.replace(d_vocab=7))),
        mistakes=[
            Mistake("rows by token", "you indexed W_pos with the token ids; positional embeddings depend only on the position 0..pos-1.", PosEmbedByToken),
            Mistake("no batch axis", "you returned [pos, d_model]; repeat it over the batch to get [batch, pos, d_model] (einops.repeat).", PosEmbedNoBatch),
            Mistake("all n_ctx positions", "you returned all n_ctx rows of W_pos; take only as many positions as the input has: W_pos[:seq_len] with seq_len = tokens.shape[1].", PosEmbedAllPositions),
            Mistake("seq_len from the batch axis", "you took the sequence length from len(tokens) (tokens.shape[0]), which is the batch size; positions are axis 1: batch, seq_len = tokens.shape.", PosEmbedLenIsBatch),
        ],
        stuck="W_pos[:seq_len] holds one vector per position; every sequence in the batch gets the same ones.",
    ),
    Exercise(
        name="layernorm", title="LayerNorm", reference=ref.LayerNorm, run=run_resid_module, cases=LN_CASES,
        hidden_cases=HIDDEN_RESID,
        mistakes=[
            Mistake("unbiased variance", "you used the unbiased variance (dividing by d_model - 1). LayerNorm divides by d_model: x.var(-1, unbiased=False, keepdim=True).", LNUnbiased),
            Mistake("eps outside the square root", "you added eps after the square root; GPT-2 computes sqrt(var + eps).", LNEpsOutside),
            Mistake("no centering", "you did not subtract the mean before scaling.", LNNoCentering),
            Mistake("wrong axis", "you normalised over positions (dim -2); normalise each vector over d_model (dim -1).", LNWrongAxis),
            Mistake("hard-coded eps", "you wrote eps as the number 1e-5; use self.eps (set from cfg.layer_norm_eps), which this input sets to another value.", LNHardcodedEps),
        ],
        stuck="x - mean, divided by sqrt(biased variance + eps), times w, plus b; all over the last axis.",
    ),
    Exercise(
        name="causal_mask", title="apply_causal_mask", reference=ref.apply_causal_mask, run=run_causal_mask, kind="function",
        hidden_cases=[dict(seed=0, batch=2, heads=4, pos=13)],
        cases=[
            dict(seed=8, batch=2, heads=3, pos=5, describe="scores of shape (2, 3, 5, 5) [batch, head, q_pos, k_pos]"),
            dict(seed=9, batch=1, heads=2, pos=8, describe="scores of shape (1, 2, 8, 8) [batch, head, q_pos, k_pos]"),
        ],
        mistakes=[
            Mistake("masks the diagonal", "you also masked the diagonal: a token may attend to itself (torch.triu(..., diagonal=1)).", mask_includes_diagonal),
            Mistake("masks the past", "you masked the past instead of the future: query i may only see keys 0..i.", mask_the_past),
            Mistake("masked with 0", "you set masked scores to 0, which softmax still turns into weight; use -inf (or a very negative number).", mask_with_zero),
        ],
        stuck="build a [q_pos, k_pos] boolean mask that is True where k > q (torch.triu(ones, diagonal=1)) and masked_fill it with -inf.",
    ),
    Exercise(
        name="attention", title="Attention", reference=ref.Attention, run=run_resid_module, cases=_resid_cases("x"),
        hidden_cases=HIDDEN_RESID,
        uses="apply_causal_mask",
        mistakes=[
            Mistake("no 1/sqrt(d_head) scaling", "your scores are sqrt(d_head) times too large: divide q·k by sqrt(d_head) before the softmax.", AttnNoScale),
            Mistake("scaled by d_head", "you divided the scores by d_head; the scale is 1/sqrt(d_head).", AttnScaleByDHead),
            Mistake("no causal mask", "your heads attend to future positions: apply the causal mask to the scores.", AttnNoMask),
            Mistake("mask after softmax", "you masked after the softmax, so each row no longer sums to 1; mask the scores (with -inf) before the softmax.", AttnMaskAfterSoftmax),
            Mistake("softmax over the wrong axis", "your softmax normalises over queries (dim -2); normalise over keys: softmax(dim=-1).", AttnSoftmaxWrongAxis),
            Mistake("no output bias", "you left out b_O.", AttnNoOutputBias),
        ],
        stuck="q, k, v via einsum 'batch pos d_model, head d_model d_head -> batch pos head d_head'; scores 'q·k' per head; mask; softmax over keys; z = pattern @ v; out = sum over heads of z @ W_O + b_O.",
    ),
    Exercise(
        name="mlp", title="MLP", reference=ref.MLP, run=run_resid_module, cases=_resid_cases("x"),
        hidden_cases=HIDDEN_RESID,
        mistakes=[
            Mistake("ReLU instead of GELU", "you used ReLU; GPT-2's MLP uses GELU (the tanh approximation, gelu_new).", MLPRelu),
            Mistake("no input bias", "you left out b_in.", MLPNoInBias),
            Mistake("exact GELU", "you used the exact GELU (F.gelu's default); GPT-2 uses the tanh approximation: F.gelu(..., approximate=\"tanh\").", MLPExactGelu),
            Mistake("no output bias", "you left out b_out: ... @ W_out + b_out.", MLPNoOutBias),
        ],
        stuck="gelu_new(x @ W_in + b_in) @ W_out + b_out.",
    ),
    Exercise(
        name="block", title="TransformerBlock", reference=ref.TransformerBlock, run=run_resid_module, cases=_resid_cases("resid_pre"),
        hidden_cases=HIDDEN_RESID,
        uses="LayerNorm, Attention and MLP",
        mistakes=[
            Mistake("post-LN", "you normalised after adding to the residual stream (post-LN); GPT-2 is pre-LN: resid + attn(ln1(resid)).", BlockPostLN),
            Mistake("no residual connection", "you replaced the residual stream instead of adding to it: resid = resid + attn(...).", BlockNoResidual),
            Mistake("ln1 used twice", "the MLP must read through ln2, not ln1.", BlockSameLN),
            Mistake("MLP reads resid_pre", "your MLP read the block's input, so it never sees what attention wrote; it reads resid_mid: resid_mid = resid_pre + attn(ln1(resid_pre)), then resid_mid + mlp(ln2(resid_mid)).", BlockParallel),
        ],
        stuck="resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).",
    ),
    Exercise(
        name="unembed", title="Unembed", reference=ref.Unembed, run=run_resid_module, cases=_resid_cases("x"),
        hidden_cases=HIDDEN_RESID,
        mistakes=[
            Mistake("no bias", "you left out b_U.", UnembedNoBias),
            Mistake("softmax applied", "you returned probabilities; the unembedding returns raw logits (no softmax): x @ W_U + b_U.", UnembedSoftmax),
            Mistake("log_softmax applied", "you returned log-probabilities; the unembedding returns raw logits (the loss applies log_softmax itself): x @ W_U + b_U.", UnembedLogSoftmax),
            Mistake("last position only", "you unembedded only the last position; return logits for every position, [batch, pos, d_vocab] (training needs them all).", UnembedLastPosition),
        ],
        stuck="logits = x @ W_U + b_U.",
    ),
    Exercise(
        name="transformer", title="Transformer", reference=ref.Transformer, run=run_transformer, cases=_token_cases(),
        hidden_cases=HIDDEN_TOKENS,
        uses="Embed, PosEmbed, TransformerBlock and Unembed", atol=2e-4, rtol=2e-4,
        mistakes=[
            Mistake("no final LayerNorm", "you skipped ln_final before the unembedding.", TransformerNoFinalLN),
            Mistake("no positional embedding", "you did not add pos_embed(tokens) to the token embeddings.", TransformerNoPosEmbed),
            Mistake("block output discarded", "you called each block without keeping its output; write resid = block(resid) in the loop.", TransformerBlockOutputDiscarded),
            Mistake("every block reads the embeddings", "every block read the embeddings and only the last block's output was kept; feed each block the previous one's output: resid = block(resid).", TransformerBlocksReadEmbeddings),
        ],
        stuck="resid = embed + pos_embed; each block in turn; logits = unembed(ln_final(resid)).",
    ),
    Exercise(
        name="cross_entropy", title="lm_cross_entropy", reference=ref.lm_cross_entropy, run=run_cross_entropy, kind="function",
        cases=[
            dict(seed=10, batch=3, pos=6, vocab=11, describe="logits (3, 6, 11), tokens (3, 6)"),
            dict(seed=11, batch=2, pos=9, vocab=17, describe="logits (2, 9, 17), tokens (2, 9)"),
        ],
        mistakes=[
            Mistake("no shift", "position i must predict token i + 1, not token i: use logits[:, :-1] against tokens[:, 1:].", ce_no_shift),
            Mistake("shifted the wrong way", "you paired logits[:, 1:] with tokens[:, :-1]; the logits at position i predict token i + 1.", ce_wrong_shift),
            Mistake("sum instead of mean", "you summed the losses; take the mean over batch and positions.", ce_sum),
            Mistake("probabilities, not log-probabilities", "use log_softmax: the loss is the negative *log* probability of the right token.", ce_probs_not_log),
            Mistake("log_softmax over positions", "your log_softmax normalised over positions (dim 1); normalise over the vocabulary: log_softmax(dim=-1).", ce_log_softmax_over_positions),
        ],
        stuck="log_probs = logits[:, :-1].log_softmax(-1); pick the right token's entry with gather; negate and average.",
    ),
    Exercise(
        name="train_step", title="train_step", reference=ref_training.train_step, run=run_train_step, kind="function",
        uses="lm_cross_entropy", atol=1e-4, rtol=1e-3,
        cases=[
            dict(seed=12, steps=3, batch=4, cfg=TRAIN_CFG, describe="3 steps of AdamW (lr 1e-2) on a 1-layer model, batches of 4 random sequences of 8 tokens"),
            dict(seed=23, steps=2, batch=2, cfg=TRAIN_CFG.replace(n_layers=2, n_ctx=5, d_vocab=13),
                 describe="2 steps of AdamW (lr 1e-2) on a 2-layer model, batches of 2 random sequences of 5 tokens"),
        ],
        mistakes=[
            Mistake("no zero_grad", "gradients accumulate across steps: call optimizer.zero_grad() before loss.backward().", train_no_zero_grad),
            Mistake("parameters never updated", "the parameters never change: call optimizer.step() after loss.backward(), and zero_grad() before backward (zero_grad between backward and step throws the gradients away).", train_no_step),
            Mistake("shifted twice", "lm_cross_entropy already pairs position i with token i + 1; pass it model(tokens) and tokens themselves, not tokens[:, :-1] and tokens[:, 1:].", train_shifted_twice),
            Mistake("loss after the update", "you returned the loss recomputed after optimizer.step(); return the loss of the forward pass you trained on (loss.item() of that loss).", train_loss_after_step),
        ],
        stuck="loss = lm_cross_entropy(model(tokens), tokens); optimizer.zero_grad(); loss.backward(); optimizer.step(); return loss.item().",
    ),
    Exercise(
        name="greedy", title="sample_greedy", reference=ref_sampling.sample_greedy, run=run_greedy, kind="function",
        cases=[
            dict(seed=13, batch=6, vocab=11, describe="logits of shape (6, 11) [batch, d_vocab]"),
            dict(seed=14, batch=3, vocab=40, describe="logits of shape (3, 40) [batch, d_vocab]"),
        ],
        mistakes=[
            Mistake("values instead of ids", "you returned the largest logit values; return their positions (token ids) with argmax.", greedy_values),
            Mistake("softmax over the batch", "your softmax ran over the batch axis (dim 0), which changes which token is largest; argmax of the logits over the last axis is enough.", greedy_softmax_wrong_axis),
            Mistake("argmax without dim", "argmax without dim returns one index into the flattened tensor; take it per row: logits.argmax(dim=-1).", greedy_no_dim),
            Mistake("argmax over the batch", "you took the argmax over the batch axis (dim 0); take it over the vocabulary: logits.argmax(dim=-1).", greedy_over_batch),
            Mistake("keepdim", "you returned shape [batch, 1]; return one id per row, [batch]: argmax(dim=-1) without keepdim=True.", greedy_keepdim),
        ],
        stuck="logits.argmax(dim=-1).",
    ),
    Exercise(
        name="temperature", title="sample_temperature", reference=ref_sampling.sample_temperature, kind="function",
        run=make_sampling_run("temperature", lambda c: (c["temperature"],)), judge=judge_distribution,
        cases=[
            dict(seed=15, vocab=8, temperature=0.5, describe=f"{N_SAMPLES} rows of the same 8 logits, temperature 0.5"),
            dict(seed=16, vocab=12, temperature=2.0, describe=f"{N_SAMPLES} rows of the same 12 logits, temperature 2.0"),
        ],
        mistakes=[
            Mistake("multiplied by T", "you multiplied the logits by the temperature; divide them: softmax(logits / T).", temp_multiplied),
            Mistake("temperature has no effect", "your samples follow softmax(logits) as if T were 1: the temperature changed nothing. "
                    "Dividing the probabilities by T does that (torch.multinomial renormalises), and so does subtracting T "
                    "from the logits (softmax ignores a constant shift). Divide the logits by T before the softmax.", temp_on_probs),
            Mistake("softmax over the batch", "your softmax ran over the batch axis (dim 0), which made every token equally likely; normalise over the vocabulary: softmax(dim=-1).", temp_softmax_over_batch),
            Mistake("argmax, not a sample", "every row got the same token, the most likely one: an argmax, or one draw reused for the whole batch. "
                    "Draw one token per row: torch.multinomial(probs, num_samples=1) on the [batch, vocab] probabilities.", temp_argmax),
        ],
        stuck="probs = (logits / temperature).softmax(-1); torch.multinomial(probs, 1).squeeze(-1).",
    ),
    Exercise(
        name="top_k", title="sample_top_k", reference=ref_sampling.sample_top_k, kind="function",
        run=make_sampling_run("top_k", lambda c: (c["k"], c["temperature"])), judge=judge_distribution,
        cases=[
            dict(seed=17, vocab=10, k=3, temperature=1.0, describe=f"{N_SAMPLES} rows of the same 10 logits, k=3, temperature 1"),
            dict(seed=18, vocab=13, k=5, temperature=0.7, describe=f"{N_SAMPLES} rows of the same 13 logits, k=5, temperature 0.7"),
        ],
        mistakes=[
            Mistake("k + 1 tokens", "you kept k + 1 tokens (an off-by-one).", top_k_plus_one),
            Mistake("the k smallest", "you kept the k *least* likely tokens; topk's default largest=True keeps the most likely.", top_k_smallest),
            Mistake("temperature ignored", "you ignored the temperature: divide the kept logits by it before the softmax.", top_k_no_temperature),
        ],
        stuck="values, ids = logits.topk(k); sample an index from softmax(values / T); map it back through ids.",
    ),
    Exercise(
        name="top_p", title="sample_top_p", reference=ref_sampling.sample_top_p, kind="function",
        run=make_sampling_run("top_p", lambda c: (c["p"], c["temperature"])), judge=judge_distribution,
        cases=[
            dict(seed=19, vocab=10, p=0.5, temperature=1.0, describe=f"{N_SAMPLES} rows of the same 10 logits, p=0.5, temperature 1"),
            dict(seed=20, vocab=12, p=0.9, temperature=0.6, describe=f"{N_SAMPLES} rows of the same 12 logits, p=0.9, temperature 0.6"),
        ],
        mistakes=[
            Mistake("drops the token that crosses p", "you dropped the token whose probability takes the total past p; keep it (keep a token if the mass *before* it is < p).", top_p_drops_crossing_token),
            Mistake("least likely first", "you accumulated probabilities from the least likely token; sort in descending order.", top_p_ascending),
            Mistake("temperature ignored", "you ignored the temperature: divide the logits by it before the softmax (the nucleus is chosen from the tempered probabilities).", top_p_no_temperature),
        ],
        stuck="sort probs descending; keep tokens whose cumulative mass before them is < p; set the others' logits to -inf; sample.",
    ),
    Exercise(
        name="kv_cache", title="attention_with_kv_cache", reference=ref_sampling.attention_with_kv_cache, kind="function",
        run=run_kv_cache, judge=_judge_kv, atol=1e-5, rtol=1e-4,
        cases=[
            dict(seed=21, cfg=CFG_A, batch=2, chunks=(4, 1, 1, 2, 1), describe="a prompt of 4 positions, then 1, 1, 2 and 1 new positions (batch 2, d_model 16)"),
            dict(seed=22, cfg=CFG_B, batch=1, chunks=(1, 1, 1, 3), describe="1, 1, 1 then 3 new positions (batch 1, d_model 24)"),
        ],
        mistakes=[
            Mistake("cache not used", "the new queries only see the new keys: concatenate past_k/past_v with the new ones before computing scores.", kv_no_concat),
            Mistake("mask offset", "your mask assumes the queries start at position 0; with a cache they are the *last* q_len of k_len positions (query i is at position k_len - q_len + i).", kv_mask_from_zero),
            Mistake("no mask", "you left out the causal mask; a single new token may see every cached key, but a prompt or a chunk of several new tokens must not see its own future: mask keys after each query's position.", kv_no_mask),
            Mistake("returns only the new keys", "you returned the new positions' k and v; return the concatenated k_all, v_all (past and new), or the next call loses the earlier positions.", kv_returns_new_only),
        ],
        stuck="compute q, k, v for x_new; cat past k/v along the position axis; mask key positions after each query's absolute position.",
    ),
]
