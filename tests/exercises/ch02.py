"""Chapter 2 exercises: induction heads, on the shipped ``induction_2l`` model."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from utils import induction as ref
from utils.checks import Exercise, LearnerError, Mistake

_MODEL = None


def model():
    """The shipped model (loaded once; checks never modify it)."""
    global _MODEL
    if _MODEL is None:
        from utils.zoo import load_model

        _MODEL = load_model("induction_2l")
    return _MODEL


def _random_tokens(ctx, batch, pos):
    toks = ctx.randint(model().cfg.d_vocab - 1, batch, pos) + 1
    toks[:, 0] = ref.BOS
    return toks


def _random_pattern(ctx, batch, heads, n):
    scores = ctx.randn(batch, heads, n, n, scale=2.0)
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


# ---- 1. caching hook ------------------------------------------------------------------------
CACHE_NAMES = ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]


def run_caching_hook(impl, ctx):
    tokens = _random_tokens(ctx, ctx.case["batch"], ctx.case["pos"])
    store: dict = {}
    hook = ctx.call(impl, store)
    if not callable(hook):
        raise LearnerError(f"caching_hook(store) should return a hook function, got {type(hook).__name__}")
    # Autograd stays on, as in a notebook cell, so that an activation stored without .detach()
    # shows: it still requires grad (and keeps the graph of the whole forward pass alive).
    ctx.call(model().run_with_hooks, tokens, fwd_hooks=[(name, hook) for name in CACHE_NAMES])
    out = {name: store.get(name) for name in CACHE_NAMES}
    out["names stored with their autograd graph"] = [
        name for name in CACHE_NAMES if isinstance(store.get(name), Tensor) and store[name].requires_grad
    ]
    return out


def caching_hook_fixed_key(store):
    def hook(act, hook):
        store["activation"] = act.detach()

    return hook


def caching_hook_first_row(store):
    def hook(act, hook):
        store[hook.name] = act[0].detach()

    return hook


def caching_hook_no_detach(store):
    def hook(act, hook):
        store[hook.name] = act

    return hook


# ---- 2. zero-ablation hook ------------------------------------------------------------------
def run_head_hook(impl, ctx):
    tokens = _random_tokens(ctx, ctx.case["batch"], ctx.case["pos"])
    out = {}
    with torch.no_grad():
        for layer, head in ctx.case["heads"]:
            hook = functools.partial(impl, head=head)
            if "mean" in ctx.case:
                # the reference batch may be longer than the input (mean_z[:seq_len] then matters)
                mean_pos = ctx.case.get("mean_pos", ctx.case["pos"])
                _, cache = model().run_with_cache(_random_tokens(ctx, 16, mean_pos), names_filter=f"blocks.{layer}.attn.hook_z")
                hook = functools.partial(impl, head=head, mean_z=cache["z", layer].mean(0))
            logits = ctx.call(model().run_with_hooks, tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            out[f"logits with L{layer}H{head} ablated"] = logits
    return out


def zero_wrong_axis(z, hook, head):
    z = z.clone()
    z[:, head] = 0.0
    return z


def zero_all_but_head(z, hook, head):
    keep = torch.zeros(z.shape[2], dtype=torch.bool)
    keep[head] = True
    return z * keep[None, None, :, None]


def zero_no_return(z, hook, head):
    z = z.clone()
    z[:, :, head] = 0.0


def zero_last_axis(z, hook, head):
    z = z.clone()
    z[..., head] = 0.0
    return z


def mean_ablation_zero(z, hook, head, mean_z):
    return ref.zero_head_hook(z, hook, head)


def mean_ablation_all_heads(z, hook, head, mean_z):
    return mean_z[: z.shape[1]].expand_as(z).clone()


def mean_ablation_no_return(z, hook, head, mean_z):
    z = z.clone()
    z[:, :, head] = mean_z[: z.shape[1], head]


def mean_ablation_over_positions(z, hook, head, mean_z):
    z = z.clone()
    z[:, :, head] = mean_z[: z.shape[1], head].mean(0)
    return z


# ---- 3-5. detectors -------------------------------------------------------------------------
def run_prev_token(impl, ctx):
    c = ctx.case
    pattern = _random_pattern(ctx, c["batch"], c["heads"], c["n"])
    return {"scores": ctx.call(impl, pattern)}


def run_repeat_detector(impl, ctx):
    c = ctx.case
    pattern = _random_pattern(ctx, c["batch"], c["heads"], 1 + 2 * c["half_len"])
    return {"scores": ctx.call(impl, pattern, c["half_len"])}


def prev_same_position(pattern):
    return pattern.diagonal(0, -2, -1).mean(dim=(0, -1))


def prev_summed(pattern):
    return pattern.diagonal(-1, -2, -1).sum(dim=(0, -1))


def prev_per_batch(pattern):
    return pattern.diagonal(-1, -2, -1).mean(-1)


def prev_future(pattern):
    return pattern.diagonal(1, -2, -1).mean(dim=(0, -1))


def dup_as_induction(pattern, half_len):
    return ref.induction_scores(pattern, half_len)


def dup_all_queries(pattern, half_len):
    return pattern.diagonal(-half_len, -2, -1).mean(dim=(0, -1))


def dup_future(pattern, half_len):
    return pattern.diagonal(half_len, -2, -1).mean(dim=(0, -1))


def dup_per_batch(pattern, half_len):
    return pattern.diagonal(-half_len, -2, -1)[..., 1:].mean(-1)


def dup_sliced_by_query(pattern, half_len):
    return pattern.diagonal(-half_len, -2, -1)[..., half_len + 1 :].mean(dim=(0, -1))


def ind_as_duplicate(pattern, half_len):
    return ref.duplicate_token_scores(pattern, half_len)


def ind_all_queries(pattern, half_len):
    return pattern.diagonal(-(half_len - 1), -2, -1).mean(dim=(0, -1))


def ind_sliced_by_query(pattern, half_len):
    return pattern.diagonal(-(half_len - 1), -2, -1)[..., half_len + 1 :].mean(dim=(0, -1))


def ind_future(pattern, half_len):
    return pattern.diagonal(half_len - 1, -2, -1).mean(dim=(0, -1))


# ---- 6. per-token loss ----------------------------------------------------------------------
def run_per_token_loss(impl, ctx):
    c = ctx.case
    logits = ctx.randn(c["batch"], c["pos"], c["vocab"], scale=2.0)
    tokens = ctx.randint(c["vocab"], c["batch"], c["pos"])
    return {"loss": ctx.call(impl, logits, tokens)}


def ptl_no_shift(logits, tokens):
    return -logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]


def ptl_sign(logits, tokens):
    return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def ptl_averaged(logits, tokens):
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def ptl_shifted_the_wrong_way(logits, tokens):
    return -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]


def ptl_softmax_over_positions(logits, tokens):
    return -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None])[..., 0]


# ---- 7. induction scores through hooks ------------------------------------------------------
def run_record_scores(impl, ctx):
    c = ctx.case
    tokens = ref.repeated_tokens(c["batch"], c["half_len"], model().cfg.d_vocab, seed=c["seed"])
    with torch.no_grad():
        scores = ctx.call(impl, model(), tokens, c["half_len"])
    if any(hp._hooks for hp in model().hook_dict.values()):
        model().reset_hooks()
        raise LearnerError("your function left hooks on the model: use run_with_hooks (it removes them) or call model.reset_hooks()")
    return {"scores": scores}


def record_duplicate_scores(model_, tokens, half_len):
    scores = torch.zeros(model_.cfg.n_layers, model_.cfg.n_heads)

    def hook(pattern, hook):
        scores[int(hook.name.split(".")[1])] = ref.duplicate_token_scores(pattern, half_len)

    model_.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), hook)])
    return scores


def record_loop_variable(model_, tokens, half_len):
    scores = torch.zeros(model_.cfg.n_layers, model_.cfg.n_heads)
    fwd_hooks = []
    for layer in range(model_.cfg.n_layers):
        def hook(pattern, hook):
            scores[layer] = ref.induction_scores(pattern, half_len)  # `layer` is read when the hook runs

        fwd_hooks.append((f"blocks.{layer}.attn.hook_pattern", hook))
    model_.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    return scores


def record_from_scores_not_pattern(model_, tokens, half_len):
    scores = torch.zeros(model_.cfg.n_layers, model_.cfg.n_heads)

    def hook(attn_scores, hook):
        finite = attn_scores.masked_fill(attn_scores.isinf(), 0.0)
        scores[int(hook.name.split(".")[1])] = ref.induction_scores(finite, half_len)

    model_.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), hook)])
    return scores


# ---- 8. direct logit attribution ------------------------------------------------------------
def run_dla(impl, ctx):
    c = ctx.case
    tokens = ref.repeated_tokens(c["batch"], c["half_len"], model().cfg.d_vocab, seed=c["seed"])
    with torch.no_grad():
        _, cache = model().run_with_cache(tokens)
        return {"dla": ctx.call(impl, cache, model(), tokens)}


def dla_no_scale(cache, model_, tokens):
    ones = dict(cache)
    ones["ln_final.hook_scale"] = torch.ones_like(cache["ln_final.hook_scale"])
    return ref.head_logit_attribution(type(cache)(ones), model_, tokens)


def dla_no_centering(cache, model_, tokens):
    scale = cache["ln_final.hook_scale"][:, :-1]
    directions = model_.unembed.W_U[:, tokens[:, 1:]]
    out = []
    for layer in range(model_.cfg.n_layers):
        per_head = torch.einsum("bphd,hdm->hbpm", cache["z", layer][:, :-1], model_.blocks[layer].attn.W_O)
        out.append(torch.einsum("hbpm,mbp->hbp", per_head / scale * model_.ln_final.w, directions))
    return torch.stack(out)


def dla_no_gain(cache, model_, tokens):
    scale = cache["ln_final.hook_scale"][:, :-1]
    directions = model_.unembed.W_U[:, tokens[:, 1:]]
    out = []
    for layer in range(model_.cfg.n_layers):
        per_head = torch.einsum("bphd,hdm->hbpm", cache["z", layer][:, :-1], model_.blocks[layer].attn.W_O)
        per_head = per_head - per_head.mean(-1, keepdim=True)
        out.append(torch.einsum("hbpm,mbp->hbp", per_head / scale, directions))
    return torch.stack(out)


def dla_unembed_rows(cache, model_, tokens):
    scale = cache["ln_final.hook_scale"][:, :-1]
    directions = model_.unembed.W_U[tokens[:, 1:]]  # [batch, pos - 1, d_vocab]: rows, not columns
    out = []
    for layer in range(model_.cfg.n_layers):
        per_head = torch.einsum("bphd,hdm->hbpm", cache["z", layer][:, :-1], model_.blocks[layer].attn.W_O)
        per_head = (per_head - per_head.mean(-1, keepdim=True)) / scale * model_.ln_final.w
        out.append(torch.einsum("hbpm,bpm->hbp", per_head, directions))
    return torch.stack(out)


def dla_current_token(cache, model_, tokens):
    shifted = torch.cat([tokens[:, :-1], tokens[:, -1:]], dim=1)  # target = the current token
    shifted[:, 1:] = tokens[:, :-1]
    return ref.head_logit_attribution(cache, model_, shifted)


# ---- 10-13. circuits ------------------------------------------------------------------------
def run_ov(impl, ctx):
    layer, head = ctx.case["layer"], ctx.case["head"]
    with torch.no_grad():
        A, B = _factors(ctx.call(impl, model(), layer, head))
    return {"A @ B": A @ B, "A": A}


def _factors(result) -> tuple[Tensor, Tensor]:
    """Validate a learner's low-rank factorisation (A, B) of a circuit."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise LearnerError("return the two factors as a tuple (A, B), with A @ B the full circuit")
    A, B = result
    if not (isinstance(A, Tensor) and isinstance(B, Tensor)) or A.shape[-1] != B.shape[0]:
        raise LearnerError(f"A and B must be tensors with A @ B defined; got shapes {getattr(A, 'shape', A)} and {getattr(B, 'shape', B)}")
    return A, B


def ov_uses_query(model_, layer, head):
    attn = model_.blocks[layer].attn
    return model_.embed.W_E @ attn.W_Q[head], attn.W_O[head] @ model_.unembed.W_U


def ov_no_embedding(model_, layer, head):
    attn = model_.blocks[layer].attn
    return attn.W_V[head], attn.W_O[head] @ model_.unembed.W_U


def ov_unembed_transposed(model_, layer, head):
    attn = model_.blocks[layer].attn
    return model_.embed.W_E @ attn.W_V[head], attn.W_O[head] @ model_.unembed.W_U.T


def ov_embed_transposed(model_, layer, head):
    attn = model_.blocks[layer].attn
    return model_.embed.W_E.T @ attn.W_V[head], attn.W_O[head] @ model_.unembed.W_U


def run_top1(impl, ctx):
    c = ctx.case
    M = ctx.randn(c["n"], c["n"]) + c["boost"] * torch.eye(c["n"]) * (ctx.randn(c["n"]) > 0).float()
    value = ctx.call(impl, M)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return {"fraction": float(value) if isinstance(value, (int, float)) else value}


def top1_columns(M):
    return (M.argmax(dim=0) == torch.arange(M.shape[0])).float().mean().item()


def top1_diag_above_mean(M):
    return (M.diagonal() > M.mean(-1)).float().mean().item()


def top1_count(M):
    return (M.argmax(dim=-1) == torch.arange(M.shape[0])).float().sum().item()


def top1_flat_argmax(M):
    return (M.argmax() == torch.arange(M.shape[0])).float().mean().item()


def run_composition(impl, ctx):
    c = ctx.case
    A = ctx.randn(c["m"], c["r"]) @ ctx.randn(c["r"], c["m"])
    B = ctx.randn(c["m"], c["r"]) @ ctx.randn(c["r"], c["m"])
    value = ctx.call(impl, A, B)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.reshape(())
    return {"score": value}


def comp_unnormalised(A, B):
    return (A @ B).norm()


def comp_spectral(A, B):
    return torch.linalg.matrix_norm(A @ B, ord=2) / (torch.linalg.matrix_norm(A, ord=2) * torch.linalg.matrix_norm(B, ord=2))


def comp_reversed(A, B):
    return (B @ A).norm() / (A.norm() * B.norm())


def comp_elementwise(A, B):
    return (A * B).norm() / (A.norm() * B.norm())


def run_kqk(impl, ctx):
    with torch.no_grad():
        A, B = _factors(ctx.call(impl, model(), ctx.case["prev"], ctx.case["head"]))
    return {"A @ B": A @ B}


def kqk_without_prev_head(model_, prev_head, induction_head):
    late = model_.blocks[1].attn
    return model_.embed.W_E @ late.W_Q[induction_head], (model_.embed.W_E @ late.W_K[induction_head]).T


def kqk_query_side_composed(model_, prev_head, induction_head):
    late = model_.blocks[1].attn
    q = model_.embed.W_E @ ref.ov_matrix(model_, 0, prev_head) @ late.W_Q[induction_head]
    return q, (model_.embed.W_E @ late.W_K[induction_head]).T


def kqk_prev_head_in_layer_1(model_, prev_head, induction_head):
    late = model_.blocks[1].attn
    key_side = model_.embed.W_E @ ref.ov_matrix(model_, 1, prev_head) @ late.W_K[induction_head]
    return model_.embed.W_E @ late.W_Q[induction_head], key_side.T


def kqk_ov_transposed(model_, prev_head, induction_head):
    late = model_.blocks[1].attn
    key_side = model_.embed.W_E @ ref.ov_matrix(model_, 0, prev_head).T @ late.W_K[induction_head]
    return model_.embed.W_E @ late.W_Q[induction_head], key_side.T


def kqk_sides_swapped(model_, prev_head, induction_head):
    query_side, key_side_t = ref.k_composed_qk_circuit(model_, prev_head, induction_head)
    return key_side_t.T, query_side.T


# ---- 14-17. analysis: positional QK, composition kinds, eigenvalues, SVD ---------------------
def run_positional_qk(impl, ctx):
    c = ctx.case
    W_pos = ctx.randn(c["n_ctx"], c["d_model"])
    W_Q, W_K = ctx.randn(c["d_model"], c["d_head"]), ctx.randn(c["d_model"], c["d_head"])
    scores = ctx.call(impl, W_pos, W_Q, W_K)
    if not isinstance(scores, Tensor) or scores.shape != (c["n_ctx"], c["n_ctx"]):
        raise LearnerError(f"return a [n_ctx, n_ctx] tensor of scores, got {getattr(scores, 'shape', type(scores).__name__)}")
    # -inf and a finite score compare as close under allclose's relative tolerance, so compare the
    # scores a query may use and the attention they give (any large negative mask works like -inf).
    return {"scores on and below the diagonal": scores.tril(), "attention (softmax over keys)": scores.softmax(-1)}


def _causal(scores, fill=float("-inf")):
    return scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), fill)


def pqk_unscaled(W_pos, W_Q, W_K):
    return _causal((W_pos @ W_Q) @ (W_pos @ W_K).T)


def pqk_unmasked(W_pos, W_Q, W_K):
    return (W_pos @ W_Q) @ (W_pos @ W_K).T / W_Q.shape[-1] ** 0.5


def pqk_sides_swapped(W_pos, W_Q, W_K):
    return _causal((W_pos @ W_K) @ (W_pos @ W_Q).T / W_Q.shape[-1] ** 0.5)


def pqk_scaled_by_d_model(W_pos, W_Q, W_K):
    return _causal((W_pos @ W_Q) @ (W_pos @ W_K).T / W_pos.shape[-1] ** 0.5)


def pqk_masked_with_zero(W_pos, W_Q, W_K):
    return _causal((W_pos @ W_Q) @ (W_pos @ W_K).T / W_Q.shape[-1] ** 0.5, fill=0.0)


def _low_rank_stack(ctx, n, m, r):
    return ctx.randn(n, m, r) @ ctx.randn(n, r, m)


def run_qkv_composition(impl, ctx):
    c = ctx.case
    W_OV_early = _low_rank_stack(ctx, c["n_early"], c["d_model"], c["d_head"])
    W_QK_late = _low_rank_stack(ctx, c["n_late"], c["d_model"], c["d_head"])
    W_OV_late = _low_rank_stack(ctx, c["n_late"], c["d_model"], c["d_head"])
    return {"scores": ctx.call(impl, W_OV_early, W_QK_late, W_OV_late)}


def qkv_q_and_k_swapped(W_OV_early, W_QK_late, W_OV_late):
    return ref.qkv_composition_scores(W_OV_early, W_QK_late, W_OV_late)[[1, 0, 2]]


def qkv_k_not_transposed(W_OV_early, W_QK_late, W_OV_late):
    out = ref.qkv_composition_scores(W_OV_early, W_QK_late, W_OV_late)
    out[1] = out[0]
    return out


def qkv_v_reversed(W_OV_early, W_QK_late, W_OV_late):
    out = ref.qkv_composition_scores(W_OV_early, W_QK_late, W_OV_late)
    for a, W_A in enumerate(W_OV_early):
        for b, W_B in enumerate(W_OV_late):
            out[2, a, b] = ref.composition_score(W_B, W_A)
    return out


def qkv_heads_transposed(W_OV_early, W_QK_late, W_OV_late):
    return ref.qkv_composition_scores(W_OV_early, W_QK_late, W_OV_late).transpose(1, 2)


def qkv_unnormalised(W_OV_early, W_QK_late, W_OV_late):
    out = torch.zeros(3, W_OV_early.shape[0], W_QK_late.shape[0])
    for a, W_A in enumerate(W_OV_early):
        for b in range(W_QK_late.shape[0]):
            out[0, a, b] = (W_A @ W_QK_late[b]).norm()
            out[1, a, b] = (W_A @ W_QK_late[b].T).norm()
            out[2, a, b] = (W_A @ W_OV_late[b]).norm()
    return out


def _scalar(value):
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) else value


def run_eigen_fraction(impl, ctx):
    c = ctx.case
    M = ctx.randn(c["n"], c["n"]) + c["shift"] * torch.eye(c["n"])
    return {"fraction": _scalar(ctx.call(impl, M))}


def eig_symmetric_solver(M):
    eig = torch.linalg.eigvalsh(M)
    return float(eig.abs()[eig > 0].sum() / eig.abs().sum())


def eig_counted(M):
    return float((torch.linalg.eigvals(M).real > 0).float().mean())


def eig_real_parts(M):
    eig = torch.linalg.eigvals(M)
    return float(eig.real.clamp(min=0).sum() / eig.abs().sum())


def eig_singular_values(M):
    s = torch.linalg.svdvals(M)
    return float(s[s > 0].sum() / s.sum())


def eig_copying_score(M):
    eig = torch.linalg.eigvals(M)
    return float(eig.sum().real / eig.abs().sum())


def run_effective_rank(impl, ctx):
    c = ctx.case
    M = ctx.randn(c["rows"], c["rank"]) @ ctx.randn(c["rank"], c["cols"])
    return {"effective rank": _scalar(ctx.call(impl, M))}


def erank_squared(M):
    s2 = torch.linalg.svdvals(M) ** 2
    p = s2 / s2.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def erank_entropy_only(M):
    s = torch.linalg.svdvals(M)
    p = s / s.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def erank_matrix_rank(M):
    return float(torch.linalg.matrix_rank(M))


def erank_not_normalised(M):
    s = torch.linalg.svdvals(M)
    s = s[s > 0]
    return float(torch.exp(-(s * s.log()).sum()))


def run_qk_decomposition(impl, ctx):
    c = ctx.case
    q_parts = ctx.randn(c["batch"], c["n_q"], c["d_model"])
    k_parts = ctx.randn(c["batch"], c["n_k"], c["d_model"])
    W_Q, W_K = ctx.randn(c["d_model"], c["d_head"]), ctx.randn(c["d_model"], c["d_head"])
    return {"terms": ctx.call(impl, q_parts, k_parts, W_Q, W_K)}


def qkd_unscaled(q_parts, k_parts, W_Q, W_K):
    return ref.qk_score_decomposition(q_parts, k_parts, W_Q, W_K) * W_Q.shape[-1] ** 0.5


def qkd_weights_swapped(q_parts, k_parts, W_Q, W_K):
    return ref.qk_score_decomposition(q_parts, k_parts, W_K, W_Q)


def qkd_summed_over_batch(q_parts, k_parts, W_Q, W_K):
    return ref.qk_score_decomposition(q_parts, k_parts, W_Q, W_K) * q_parts.shape[0]


def qkd_transposed(q_parts, k_parts, W_Q, W_K):
    return ref.qk_score_decomposition(q_parts, k_parts, W_Q, W_K).T


def qkd_rows_crossed(q_parts, k_parts, W_Q, W_K):
    q, k = q_parts @ W_Q, k_parts @ W_K
    return torch.einsum("aid,bjd->ij", q, k) / (q.shape[0] ** 2 * W_Q.shape[-1] ** 0.5)


# ---------------------------------------------------------------------------------------------
_TOKENS = [dict(seed=31, batch=2, pos=12, describe="random tokens of shape (2, 12)"),
           dict(seed=32, batch=3, pos=20, describe="random tokens of shape (3, 20)")]
_REPEATS = [dict(seed=41, batch=4, half_len=8, describe="repeated random tokens [bos, x, x], x of 8 tokens, batch 4"),
            dict(seed=42, batch=2, half_len=15, describe="repeated random tokens [bos, x, x], x of 15 tokens, batch 2")]

EXERCISES = [
    Exercise(
        name="caching_hook", title="caching_hook", reference=ref.caching_hook, run=run_caching_hook, kind="function", cases=_TOKENS,
        hidden_cases=[dict(seed=0, batch=5, pos=29)],
        mistakes=[
            Mistake("one key for everything", "every activation overwrote the same entry: store it under hook.name.", caching_hook_fixed_key),
            Mistake("first sequence only", "you stored act[0]; keep the whole batch.", caching_hook_first_row),
            Mistake("not detached", "you stored the activation itself, which still carries its autograd graph (and keeps the whole "
                    "forward pass in memory): store activation.detach().", caching_hook_no_detach),
        ],
        stuck="inside the hook: store[hook.name] = activation.detach(); return nothing.",
    ),
    Exercise(
        name="zero_head_hook", title="zero_head_hook", reference=ref.zero_head_hook, run=run_head_hook, kind="function",
        cases=[dict(_TOKENS[0], heads=[(0, 1), (1, 2)]), dict(_TOKENS[1], heads=[(1, 0), (0, 3)])],
        mistakes=[
            Mistake("wrong axis", "z is [batch, pos, head, d_head]: the head axis is 2, so zero z[:, :, head].", zero_wrong_axis),
            Mistake("kept only that head", "you zeroed every head except the chosen one; ablate just that head.", zero_all_but_head),
            Mistake("hook returned None", "your hook zeroed a copy (z.clone()) but returned nothing, so the model went on with the "
                    "original z: end the hook with `return z`.", zero_no_return),
            Mistake("last axis", "z[..., head] indexes the last axis (d_head), zeroing one component of every head; the head "
                    "axis is 2: z[:, :, head] = 0.", zero_last_axis),
        ],
        stuck="z = z.clone(); z[:, :, head] = 0; return z.",
    ),
    Exercise(
        name="prev_token_scores", title="prev_token_scores", reference=ref.prev_token_scores, run=run_prev_token, kind="function",
        cases=[dict(seed=51, batch=2, heads=3, n=9, describe="random causal patterns (2, 3, 9, 9) [batch, head, q, k]"),
               dict(seed=52, batch=4, heads=2, n=13, describe="random causal patterns (4, 2, 13, 13)")],
        hidden_cases=[dict(seed=0, batch=1, heads=5, n=22)],
        mistakes=[
            Mistake("current token", "you took the main diagonal (attention to the same position); the previous token is one below it: diagonal(offset=-1).", prev_same_position),
            Mistake("sum, not mean", "average over batch and positions instead of summing.", prev_summed),
            Mistake("not averaged over the batch", "average over the batch too: one score per head.", prev_per_batch),
            Mistake("future token", "diagonal(offset=1) lies *above* the main diagonal: attention to the next position, which the "
                    "causal mask sets to 0. The previous token is below it: diagonal(offset=-1, dim1=-2, dim2=-1).", prev_future),
        ],
        stuck="pattern.diagonal(offset=-1, dim1=-2, dim2=-1) is [batch, head, pos - 1]; average over batch and positions.",
    ),
    Exercise(
        name="duplicate_token_scores", title="duplicate_token_scores", reference=ref.duplicate_token_scores, run=run_repeat_detector, kind="function",
        cases=[dict(seed=53, batch=2, heads=3, half_len=5, describe="random causal patterns (2, 3, 11, 11), half_len 5"),
               dict(seed=54, batch=3, heads=2, half_len=8, describe="random causal patterns (3, 2, 17, 17), half_len 8")],
        hidden_cases=[dict(seed=0, batch=2, heads=4, half_len=11)],
        mistakes=[
            Mistake("induction offset", "offset half_len - 1 is the *induction* position; the duplicate token sits exactly half_len back.", dup_as_induction),
            Mistake("first-half queries included", "only queries in the second copy (positions > half_len) have a duplicate to look at; leave the others out.", dup_all_queries),
            Mistake("future offset", "diagonal(offset=half_len) lies above the main diagonal (keys after the query, all 0 under "
                    "the causal mask); keys half_len back are below it: diagonal(offset=-half_len, dim1=-2, dim2=-1).", dup_future),
            Mistake("not averaged over the batch", "average over the batch too (mean over dims 0 and -1): one score per head.", dup_per_batch),
            Mistake("diagonal sliced by query position", "entry j of diagonal(offset=-half_len) is query j + half_len, not "
                    "query j, so slicing from half_len + 1 left nothing (the mean of nothing is NaN): the second-copy "
                    "queries start at entry 1, diag[..., 1:].", dup_sliced_by_query),
        ],
        stuck="diagonal(offset=-half_len); keep entries whose query is in the second copy; average.",
    ),
    Exercise(
        name="induction_scores", title="induction_scores", reference=ref.induction_scores, run=run_repeat_detector, kind="function",
        cases=[dict(seed=55, batch=2, heads=3, half_len=5, describe="random causal patterns (2, 3, 11, 11), half_len 5"),
               dict(seed=56, batch=3, heads=2, half_len=8, describe="random causal patterns (3, 2, 17, 17), half_len 8")],
        hidden_cases=[dict(seed=0, batch=2, heads=4, half_len=11)],
        mistakes=[
            Mistake("duplicate offset", "offset half_len is the duplicate token itself; an induction head attends to the token *after* it: offset half_len - 1.", ind_as_duplicate),
            Mistake("first-half queries included", "only queries in the second copy (positions > half_len) count; the first copy has nothing to induct from.", ind_all_queries),
            Mistake("diagonal sliced by query position", "entry j of diagonal(offset=-(half_len - 1)) is query j + half_len - 1, "
                    "not query j, so slicing from half_len + 1 kept only the last query: the second-copy queries start at "
                    "entry 2, diag[..., 2:].", ind_sliced_by_query),
            Mistake("future offset", "diagonal(offset=half_len - 1) lies above the main diagonal (keys after the query, all 0 under "
                    "the causal mask); use diagonal(offset=-(half_len - 1), dim1=-2, dim2=-1).", ind_future),
        ],
        stuck="diagonal(offset=-(half_len - 1)); entry j is query j + half_len - 1; keep queries > half_len; average over batch and those queries.",
    ),
    Exercise(
        name="per_token_loss", title="per_token_loss", reference=ref.per_token_loss, run=run_per_token_loss, kind="function",
        cases=[dict(seed=61, batch=2, pos=7, vocab=11, describe="logits (2, 7, 11), tokens (2, 7)"),
               dict(seed=62, batch=3, pos=10, vocab=19, describe="logits (3, 10, 19), tokens (3, 10)")],
        hidden_cases=[dict(seed=0, batch=1, pos=23, vocab=41)],
        mistakes=[
            Mistake("no shift", "position i predicts token i + 1: use logits[:, :-1] against tokens[:, 1:].", ptl_no_shift),
            Mistake("sign", "the loss is the *negative* log-probability.", ptl_sign),
            Mistake("averaged", "you returned the mean loss, one number; return the loss at every position, [batch, pos - 1] "
                    "(no .mean(), or F.cross_entropy(..., reduction='none') reshaped).", ptl_averaged),
            Mistake("shifted the wrong way", "you scored logits[:, 1:] against tokens[:, :-1]; the logits at position i predict "
                    "the *next* token: logits[:, :-1] against tokens[:, 1:].", ptl_shifted_the_wrong_way),
            Mistake("log_softmax over positions", "log_softmax(1) normalises over positions; normalise over the vocabulary: "
                    "log_softmax(dim=-1).", ptl_softmax_over_positions),
        ],
        stuck="-logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0].",
    ),
    Exercise(
        name="record_induction_scores", title="record_induction_scores", reference=ref.record_induction_scores, run=run_record_scores, kind="function",
        uses="induction_scores", cases=_REPEATS,
        mistakes=[
            Mistake("duplicate scores", "you recorded duplicate-token scores; use induction_scores (offset half_len - 1).", record_duplicate_scores),
            Mistake("scores, not pattern", "hook hook_pattern (after the softmax), not hook_attn_scores.", record_from_scores_not_pattern),
            Mistake("loop variable in the hook", "every hook wrote into the last layer's row: a function defined in a loop reads "
                    "the loop variable when it runs, by then the last layer. Take the layer from the hook, "
                    "int(hook.name.split('.')[1]), or bind it with functools.partial(hook_fn, layer=layer).", record_loop_variable),
        ],
        stuck="a hook on every name ending in 'hook_pattern' (a filter function as the name); the layer is int(hook.name.split('.')[1]).",
    ),
    Exercise(
        name="head_logit_attribution", title="head_logit_attribution", reference=ref.head_logit_attribution, run=run_dla, kind="function",
        cases=_REPEATS, atol=1e-3, rtol=1e-3,
        mistakes=[
            Mistake("LayerNorm scale ignored", "divide each head's output by the final LayerNorm's scale (cache['ln_final.hook_scale']): that is what the logits saw.", dla_no_scale),
            Mistake("not centred", "LayerNorm subtracts the mean over d_model first: centre each head's output before dividing by the scale.", dla_no_centering),
            Mistake("current token", "attribute to the logit of the *next* token, tokens[:, 1:], not the current one.", dla_current_token),
            Mistake("LayerNorm gain ignored", "after dividing by the scale, multiply by the final LayerNorm's gain, "
                    "model.ln_final.w: the logits saw it too.", dla_no_gain),
            Mistake("rows of W_U", "W_U is [d_model, d_vocab]: a token's unembedding direction is a column, W_U[:, token]. "
                    "W_U[token] is a row (it only has the right shape because d_model = d_vocab here).", dla_unembed_rows),
        ],
        stuck="out = einsum(z, W_O) per head; centre over d_model; / scale * ln_final.w; dot with W_U[:, tokens[:, 1:]].",
    ),
    Exercise(
        name="mean_ablation_hook", title="mean_ablation_hook", reference=ref.mean_ablation_hook, run=run_head_hook, kind="function",
        cases=[dict(_TOKENS[0], heads=[(0, 0), (1, 3)], mean=True),
               dict(_TOKENS[1], heads=[(1, 1), (0, 2)], mean=True, mean_pos=28,
                    describe="random tokens of shape (3, 20); mean_z from a reference batch of 28 positions")],
        fixed=("mean",),  # tells run_head_hook to pass mean_z: what the exercise is, not an input
        mistakes=[
            Mistake("zero instead of mean", "you zeroed the head; mean ablation replaces it with mean_z[:, head] (its average output).", mean_ablation_zero),
            Mistake("every head replaced", "only the chosen head should be replaced: z[:, :, head] = mean_z[:seq_len, head].", mean_ablation_all_heads),
            Mistake("hook returned None", "your hook edited a copy (z.clone()) but returned nothing, so the model went on with "
                    "the original z: end the hook with `return z`.", mean_ablation_no_return),
            Mistake("averaged over positions", "mean_z is already the mean over the batch; each position keeps its own mean: "
                    "z[:, :, head] = mean_z[:seq_len, head], without a further .mean(0).", mean_ablation_over_positions),
        ],
        stuck="z = z.clone(); z[:, :, head] = mean_z[: z.shape[1], head]; return z.",
    ),
    Exercise(
        name="ov_circuit", title="ov_circuit", reference=ref.ov_circuit, run=run_ov, kind="function",
        cases=[dict(seed=71, layer=1, head=0, describe="layer 1, head 0"), dict(seed=72, layer=0, head=2, describe="layer 0, head 2")],
        mistakes=[
            Mistake("W_Q instead of W_V", "the OV circuit uses the value weights W_V, not W_Q.", ov_uses_query),
            Mistake("no embedding", "start from the tokens: A = W_E @ W_V[head], so the circuit maps tokens to logits.", ov_no_embedding),
            Mistake("W_U transposed", "W_U is already [d_model, d_vocab]: B = W_O[head] @ W_U, without .T (the transpose "
                    "only fits because d_model = d_vocab here).", ov_unembed_transposed),
            Mistake("W_E transposed", "W_E is [d_vocab, d_model], one row per token: A = W_E @ W_V[head], without .T (the "
                    "transpose only fits because d_vocab = d_model here).", ov_embed_transposed),
        ],
        stuck="A = model.embed.W_E @ attn.W_V[head]; B = attn.W_O[head] @ model.unembed.W_U.",
    ),
    Exercise(
        name="top1_diagonal", title="top1_diagonal_fraction", reference=ref.top1_diagonal_fraction, run=run_top1, kind="function",
        cases=[dict(seed=73, n=12, boost=3.0, describe="a random 12 x 12 matrix with a boosted diagonal in some rows"),
               dict(seed=74, n=30, boost=2.0, describe="a random 30 x 30 matrix with a boosted diagonal in some rows")],
        hidden_cases=[dict(seed=0, n=21, boost=2.5)],
        mistakes=[
            Mistake("columns", "take the argmax of each *row* (dim=-1): for source token i, which output is largest?", top1_columns),
            Mistake("above the mean", "count rows whose *largest* entry is on the diagonal, not rows where the diagonal beats the mean.", top1_diag_above_mean),
            Mistake("count, not fraction", "you returned how many rows have their maximum on the diagonal; divide by the "
                    "number of rows (.mean() instead of .sum()).", top1_count),
            Mistake("argmax of the whole matrix", "M.argmax() without dim is one index into the flattened matrix; take each "
                    "row's argmax: M.argmax(dim=-1).", top1_flat_argmax),
        ],
        stuck="(M.argmax(dim=-1) == torch.arange(len(M))).float().mean().item().",
    ),
    Exercise(
        name="composition_score", title="composition_score", reference=ref.composition_score, run=run_composition, kind="function",
        cases=[dict(seed=75, m=16, r=4, describe="two random rank-4 16 x 16 matrices"),
               dict(seed=76, m=24, r=6, describe="two random rank-6 24 x 24 matrices")],
        hidden_cases=[dict(seed=0, m=20, r=5)],
        mistakes=[
            Mistake("not normalised", "divide by ||W_A||_F ||W_B||_F so the score lies in [0, 1].", comp_unnormalised),
            Mistake("spectral norm", "use Frobenius norms (tensor.norm()), as Elhage et al. do.", comp_spectral),
            Mistake("product reversed", "W_A writes what W_B reads, so the product is W_A @ W_B, not W_B @ W_A (square "
                    "matrices multiply either way, but the result differs).", comp_reversed),
            Mistake("elementwise product", "`*` multiplies entry by entry; compose the two matrices with `@`: "
                    "(W_A @ W_B).norm() / (W_A.norm() * W_B.norm()).", comp_elementwise),
        ],
        stuck="(W_A @ W_B).norm() / (W_A.norm() * W_B.norm()).",
    ),
    Exercise(
        name="k_composed_qk", title="k_composed_qk_circuit", reference=ref.k_composed_qk_circuit, run=run_kqk, kind="function",
        cases=[dict(seed=77, prev=0, head=1, describe="previous-token head 0, layer-1 head 1"),
               dict(seed=78, prev=1, head=3, describe="previous-token head 1, layer-1 head 3")],
        mistakes=[
            Mistake("previous-token head left out", "the keys see the *previous* token through the layer-0 head: insert its W_OV on the key side.", kqk_without_prev_head),
            Mistake("composed on the query side", "that is Q-composition; the previous-token head's output enters the induction head's *keys*.", kqk_query_side_composed),
            Mistake("previous-token head from layer 1", "the previous-token head is in layer 0: use W_OV = "
                    "model.blocks[0].attn.W_V[prev_head] @ model.blocks[0].attn.W_O[prev_head].", kqk_prev_head_in_layer_1),
            Mistake("W_OV transposed", "in the row-vector convention the head maps x to x @ W_V @ W_O: use W_OV = W_V[prev_head] "
                    "@ W_O[prev_head], not its transpose (it only fits because the matrix is square).", kqk_ov_transposed),
            Mistake("query and key swapped", "rows are query tokens, columns the previous tokens of keys: return the query "
                    "side first, (W_E @ W_Q[h], (W_E @ W_OV @ W_K[h]).T).", kqk_sides_swapped),
        ],
        stuck="query side W_E @ W_Q[h]; key side W_E @ W_OV(prev head) @ W_K[h]; return (query_side, key_side.T).",
    ),
    Exercise(
        name="positional_qk", title="positional_qk_scores", reference=ref.positional_qk_scores, run=run_positional_qk, kind="function",
        cases=[dict(seed=81, n_ctx=10, d_model=8, d_head=4, describe="W_pos (10, 8), W_Q and W_K (8, 4)"),
               dict(seed=82, n_ctx=14, d_model=12, d_head=6, describe="W_pos (14, 12), W_Q and W_K (12, 6)")],
        hidden_cases=[dict(seed=0, n_ctx=23, d_model=10, d_head=3)],
        mistakes=[
            Mistake("not scaled", "attention scores are divided by sqrt(d_head) before the softmax: divide by W_Q.shape[-1] ** 0.5.", pqk_unscaled),
            Mistake("no causal mask", "a query cannot see later keys: set the entries above the diagonal to -inf "
                    "(scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float('-inf'))).", pqk_unmasked),
            Mistake("query and key sides swapped", "rows are queries: (W_pos @ W_Q) @ (W_pos @ W_K).T, not "
                    "(W_pos @ W_K) @ (W_pos @ W_Q).T (that is the transpose, then masked).", pqk_sides_swapped),
            Mistake("scaled by sqrt(d_model)", "the scale is sqrt(d_head), the size of a query vector, W_Q.shape[-1]; "
                    "not sqrt(d_model).", pqk_scaled_by_d_model),
            Mistake("future masked with 0", "a score of 0 is not excluded: after the softmax it still gets weight. "
                    "Mask the future with float('-inf').", pqk_masked_with_zero),
        ],
        stuck="(W_pos @ W_Q) @ (W_pos @ W_K).T / sqrt(d_head), then masked_fill the strict upper triangle with -inf.",
    ),
    Exercise(
        name="qkv_composition", title="qkv_composition_scores", reference=ref.qkv_composition_scores, run=run_qkv_composition, kind="function",
        uses="composition_score",
        cases=[dict(seed=83, n_early=2, n_late=3, d_model=8, d_head=2,
                    describe="2 early and 3 late heads, rank-2 8 x 8 matrices"),
               dict(seed=84, n_early=3, n_late=2, d_model=10, d_head=3,
                    describe="3 early and 2 late heads, rank-3 10 x 10 matrices")],
        hidden_cases=[dict(seed=0, n_early=4, n_late=4, d_model=12, d_head=4)],
        mistakes=[
            Mistake("Q and K swapped", "the early output enters the late head's queries as x W_OV^A W_QK^B (Q: W_QK as it is) "
                    "and its keys through W_QK^T (K): out[0] uses W_QK_late[b], out[1] W_QK_late[b].T.", qkv_q_and_k_swapped),
            Mistake("K-composition not transposed", "keys sit on the right of x_q W_QK x_k^T, so an output read as a key meets "
                    "W_QK transposed: K-composition is composition_score(W_OV_early[a], W_QK_late[b].T).", qkv_k_not_transposed),
            Mistake("V-composition reversed", "the early head writes first, then the late head reads it through its values: "
                    "composition_score(W_OV_early[a], W_OV_late[b]), early matrix on the left.", qkv_v_reversed),
            Mistake("heads transposed", "index the result [kind, early head, late head]: out[:, a, b] with a over "
                    "W_OV_early and b over the late heads.", qkv_heads_transposed),
            Mistake("not normalised", "use composition_score (divide by both Frobenius norms), not the norm of the product alone.", qkv_unnormalised),
        ],
        stuck="out[0, a, b] = composition_score(W_OV_early[a], W_QK_late[b]); out[1] with W_QK_late[b].T; out[2] with W_OV_late[b].",
    ),
    Exercise(
        name="positive_eigenvalues", title="positive_eigenvalue_fraction", reference=ref.positive_eigenvalue_fraction,
        run=run_eigen_fraction, kind="function",
        cases=[dict(seed=85, n=8, shift=1.0, describe="a random 8 x 8 matrix plus 1.0 x identity"),
               dict(seed=86, n=15, shift=0.5, describe="a random 15 x 15 matrix plus 0.5 x identity")],
        hidden_cases=[dict(seed=0, n=30, shift=2.0)],
        mistakes=[
            Mistake("symmetric eigensolver", "torch.linalg.eigvalsh assumes a symmetric matrix and reads only one triangle; an "
                    "OV circuit is not symmetric: use torch.linalg.eigvals (complex eigenvalues).", eig_symmetric_solver),
            Mistake("counted eigenvalues", "weigh each eigenvalue by its magnitude: sum(|λ| where Re λ > 0) / sum(|λ|), not "
                    "the share of eigenvalues with a positive real part.", eig_counted),
            Mistake("real parts in the numerator", "the numerator sums magnitudes |λ| (eig.abs()) of the eigenvalues with "
                    "Re λ > 0, not their real parts.", eig_real_parts),
            Mistake("singular values", "singular values are never negative, so the fraction is always 1: use eigenvalues "
                    "(torch.linalg.eigvals), whose sign says whether the map copies or suppresses.", eig_singular_values),
            Mistake("copying score Σλ / Σ|λ|", "that is Elhage et al.'s summary statistic, in [-1, 1]; this exercise asks for "
                    "the share of magnitude with a positive real part, in [0, 1].", eig_copying_score),
        ],
        stuck="eig = torch.linalg.eigvals(M); return (eig.abs()[eig.real > 0].sum() / eig.abs().sum()).item().",
    ),
    Exercise(
        name="effective_rank", title="effective_rank", reference=ref.effective_rank, run=run_effective_rank, kind="function",
        cases=[dict(seed=87, rows=10, cols=8, rank=3, describe="a random rank-3 10 x 8 matrix"),
               dict(seed=88, rows=12, cols=16, rank=6, describe="a random rank-6 12 x 16 matrix")],
        hidden_cases=[dict(seed=0, rows=20, cols=20, rank=11)],
        mistakes=[
            Mistake("squared singular values", "normalise the singular values themselves, p = σ / σ.sum() (Roy & Vetterli's "
                    "definition), not σ².", erank_squared),
            Mistake("entropy, not its exponential", "the effective rank is exp(H), H = -(p * p.log()).sum(): a matrix with r "
                    "equal singular values then scores r.", erank_entropy_only),
            Mistake("matrix rank", "torch.linalg.matrix_rank counts the non-zero singular values; the effective rank weighs "
                    "them: exp of the entropy of σ / σ.sum().", erank_matrix_rank),
            Mistake("not normalised", "turn the singular values into a distribution first, p = σ / σ.sum(), then take "
                    "exp(-(p * p.log()).sum()).", erank_not_normalised),
        ],
        stuck="s = torch.linalg.svdvals(M); p = s / s.sum(); p = p[p > 0]; return torch.exp(-(p * p.log()).sum()).item().",
    ),
    Exercise(
        name="qk_decomposition", title="qk_score_decomposition", reference=ref.qk_score_decomposition, run=run_qk_decomposition,
        kind="function",
        cases=[dict(seed=89, batch=3, n_q=4, n_k=5, d_model=8, d_head=4,
                    describe="q_parts (3, 4, 8), k_parts (3, 5, 8), W_Q and W_K (8, 4)"),
               dict(seed=90, batch=5, n_q=3, n_k=2, d_model=12, d_head=6,
                    describe="q_parts (5, 3, 12), k_parts (5, 2, 12), W_Q and W_K (12, 6)")],
        hidden_cases=[dict(seed=0, batch=2, n_q=7, n_k=7, d_model=16, d_head=8)],
        mistakes=[
            Mistake("not scaled", "the attention score is q . k / sqrt(d_head): divide every term by W_Q.shape[-1] ** 0.5.", qkd_unscaled),
            Mistake("W_Q and W_K swapped", "query parts go through W_Q, key parts through W_K: (q_parts @ W_Q) and (k_parts @ W_K).", qkd_weights_swapped),
            Mistake("summed over the batch", "return the mean over the batch (one typical score per pair of parts), not the sum.", qkd_summed_over_batch),
            Mistake("query and key axes transposed", "rows are query parts, columns key parts: [n_q, n_k], entry [i, j] = "
                    "query part i against key part j.", qkd_transposed),
            Mistake("rows paired across the batch", "each row's query meets its own row's key: einsum('bid,bjd->ij', q, k) "
                    "(one batch letter on both sides), not every query row against every key row.", qkd_rows_crossed),
        ],
        stuck="q = q_parts @ W_Q; k = k_parts @ W_K; torch.einsum('bid,bjd->ij', q, k) / (batch * sqrt(d_head)).",
    ),
]
