"""Induction heads: the data that teaches them, and the measurements that find them.

Reference implementations for chapter 2 (the chapter has you write most of them yourself).

Data. Repeating a fixed-length block teaches a *positional* shortcut (attend a fixed distance
back), not induction. ``span_copy_batch`` instead copies a span of random length from a random
earlier position to a random later one, so the only way to predict the copy is to find the
previous occurrence of the current token and read what followed it: induction.

Scores (Olsson et al. 2022; Elhage et al. 2021), on ``repeated_tokens`` = [bos, x, x] with x of
``L`` random tokens:
* previous-token score: mean attention from position i to i - 1;
* duplicate-token score: mean attention from i (second copy) to i - L (the same token earlier);
* induction score: mean attention from i (second copy) to i - L + 1 (the token after it);
* composition score: ||W_A W_B||_F / (||W_A||_F ||W_B||_F).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .transformer import Config, Transformer

BOS = 0


def span_copy_batch(batch: int, seq_len: int, d_vocab: int, gen: torch.Generator,
                    min_span: int = 6, max_span: int = 16, n_spans: int = 1) -> Tensor:
    """Random tokens (BOS first) in which ``n_spans`` spans of 6-16 tokens each reappear later
    in the row, copied from a random position to a random later one."""
    tokens = torch.randint(1, d_vocab, (batch, seq_len), generator=gen)
    tokens[:, 0] = BOS
    for _ in range(n_spans):
        lengths = torch.randint(min_span, max_span + 1, (batch,), generator=gen).tolist()
        for row, span in enumerate(lengths):
            src = int(torch.randint(1, seq_len - 2 * span + 1, (1,), generator=gen))
            dst = int(torch.randint(src + span, seq_len - span + 1, (1,), generator=gen))
            tokens[row, dst : dst + span] = tokens[row, src : src + span]
    return tokens


def span_copy_batches(batch: int, seq_len: int, d_vocab: int, seed: int = 0, n_spans: int = 1):
    """An endless stream of ``span_copy_batch`` batches from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield span_copy_batch(batch, seq_len, d_vocab, gen, n_spans=n_spans)


def repeated_tokens(batch: int, half_len: int, d_vocab: int, seed: int = 0) -> Tensor:
    """[bos, x_1..x_L, x_1..x_L] with x uniform random tokens: shape [batch, 1 + 2 L]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, d_vocab, (batch, half_len), generator=gen)
    return torch.cat([torch.full((batch, 1), BOS), x, x], dim=1)


def _diagonal_score(pattern: Tensor, offset: int, first_query: int) -> Tensor:
    """pattern [batch, head, q, k] -> [head]: mean of pattern[:, :, q, q - offset] over batch and
    over queries q >= first_query."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [..., n_queries_with_a_key]
    # diag[..., j] is pattern[..., j + offset, j]: query q = j + offset
    return diag[..., max(first_query - offset, 0):].mean(dim=(0, -1))


def prev_token_scores(pattern: Tensor) -> Tensor:
    """pattern [batch, head, q, k] -> [head]: mean attention to the previous position."""
    return _diagonal_score(pattern, 1, first_query=1)


def duplicate_token_scores(pattern: Tensor, half_len: int) -> Tensor:
    """On repeated tokens: mean attention from the second copy to the same token in the first."""
    return _diagonal_score(pattern, half_len, first_query=1 + half_len)


def induction_scores(pattern: Tensor, half_len: int) -> Tensor:
    """On repeated tokens: mean attention from the second copy to the token *after* the same
    token in the first copy (offset L - 1)."""
    return _diagonal_score(pattern, half_len - 1, first_query=1 + half_len)


def all_head_scores(model: Transformer, half_len: int = 20, batch: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Previous-token, duplicate-token and induction scores of every head: each [n_layers, n_heads]."""
    tokens = repeated_tokens(batch, half_len, model.cfg.d_vocab, seed)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out = {"prev_token": [], "duplicate": [], "induction": []}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        out["prev_token"].append(prev_token_scores(pattern))
        out["duplicate"].append(duplicate_token_scores(pattern, half_len))
        out["induction"].append(induction_scores(pattern, half_len))
    return {k: torch.stack(v) for k, v in out.items()}


def composition_score(W_A: Tensor, W_B: Tensor) -> Tensor:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F): how much of what A writes, B reads."""
    return (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())


def ov_matrix(model: Transformer, layer: int, head: int) -> Tensor:
    """W_V W_O of one head: [d_model, d_model] (row-vector convention: x @ W_OV)."""
    attn = model.blocks[layer].attn
    return attn.W_V[head] @ attn.W_O[head]


def qk_matrix(model: Transformer, layer: int, head: int) -> Tensor:
    """W_Q W_K^T of one head: [d_model, d_model]; score(x_q, x_k) = x_q W_QK x_k^T / sqrt(d_head)."""
    attn = model.blocks[layer].attn
    return attn.W_Q[head] @ attn.W_K[head].T


@torch.no_grad()
def k_composition_scores(model: Transformer, early: int = 0, late: int = 1) -> Tensor:
    """[n_heads(early), n_heads(late)]: how much each later head's keys read each earlier head's output.

    Keys of the late head read x + x W_OV (earlier head's output), so its scores contain
    x_q W_QK (x_k W_OV)^T = x_q (W_QK W_OV^T) x_k^T: K-composition is W_OV^(early) with W_QK^(late)^T.
    """
    n = model.cfg.n_heads
    return torch.stack([
        torch.stack([composition_score(ov_matrix(model, early, a), qk_matrix(model, late, b).T) for b in range(n)])
        for a in range(n)
    ])


def random_composition_baseline(cfg: Config, n: int = 200, seed: int = 0) -> float:
    """Mean composition score of random matrices shaped like W_OV and W_QK^T (rank d_head)."""
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(n):
        def low_rank():
            return torch.randn(cfg.d_model, cfg.d_head, generator=gen) @ torch.randn(cfg.d_head, cfg.d_model, generator=gen)
        scores.append(float(composition_score(low_rank(), low_rank())))
    return sum(scores) / n


def induction_config(n_layers: int = 2) -> Config:
    return Config(d_vocab=64, n_ctx=64, d_model=64, n_heads=4, d_head=16, d_mlp=0, n_layers=n_layers,
                  attn_only=True, normalization="LN", init_range=0.1)


def train_induction_model(n_layers: int = 2, steps: int = 3000, seed: int = 0, every: int = 50,
                          progress: bool = True, desc: str | None = None) -> tuple[Transformer, dict[str, list[float]]]:
    """Train an attention-only model on span-copy data, logging loss and head scores.

    AdamW at a constant 1e-3 (no schedule, so a shorter run is exactly the start of a longer
    one), batches of 64 rows of 64 tokens with three copied spans each. Every ``every`` steps
    it records the smoothed training loss, the loss on the second copy of repeated random
    tokens, and the best induction and layer-0 previous-token scores.
    """
    from tqdm.auto import tqdm

    from .transformer import lm_cross_entropy

    from .grading import demo_steps

    steps = demo_steps(steps, desc or f"the {n_layers}-layer model")
    cfg = induction_config(n_layers)
    model = Transformer(cfg, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    stream = span_copy_batches(64, cfg.n_ctx, cfg.d_vocab, seed=seed, n_spans=3)
    probe = repeated_tokens(16, 20, cfg.d_vocab, seed=seed + 1)
    history: dict[str, list[float]] = {"step": [], "loss": [], "repeat_loss": [], "induction": [], "prev_token": []}
    recent: list[float] = []
    bar = tqdm(range(steps), desc=desc or f"{n_layers}-layer model", mininterval=0.5, disable=not progress)
    probe = probe.to(model.device)
    for step in bar:
        batch = next(stream).to(model.device)
        loss = lm_cross_entropy(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent = (recent + [loss.item()])[-every:]
        if step % every == 0 or step == steps - 1:
            with torch.no_grad():
                scores = all_head_scores(model, half_len=20, batch=16, seed=seed + 1)
                logits = model(probe)
                second = -logits[:, 20:-1].log_softmax(-1).gather(-1, probe[:, 21:, None]).mean()
            history["step"].append(step)
            history["loss"].append(sum(recent) / len(recent))
            history["repeat_loss"].append(second.item())
            history["induction"].append(scores["induction"][-1].max().item())
            history["prev_token"].append(scores["prev_token"][0].max().item())
            bar.set_postfix(loss=f"{history['loss'][-1]:.2f}", induction=f"{history['induction'][-1]:.2f}")
    model.eval()
    return model, history


HISTORY_FILE = Path(__file__).resolve().parent / "checkpoints" / "induction_2l_history.json"


def save_training_history(steps: int = 1500, path: str | Path = HISTORY_FILE, progress: bool = True) -> Path:
    """Run chapter 2's training cell (the 2-layer model and the 1-layer control, ``steps`` each,
    seed 0) and save both histories, so that a learner can skip the training and load the curves:
    ``python -m utils.induction``."""
    _, two = train_induction_model(n_layers=2, steps=steps, seed=0, progress=progress, desc="2-layer model")
    _, one = train_induction_model(n_layers=1, steps=steps, seed=0, progress=progress, desc="1-layer control")
    data = {"made_by": "python -m utils.induction (utils.induction.save_training_history)", "steps": steps,
            "seed": 0, "torch": torch.__version__, "two_layers": two, "one_layer_control": one}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return Path(path)


def load_training_history(path: str | Path = HISTORY_FILE) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The saved histories of chapter 2's training cell: (2-layer model, 1-layer control), each
    as ``train_induction_model`` returns it."""
    data = json.loads(Path(path).read_text())
    return data["two_layers"], data["one_layer_control"]


# ---- Chapter 2 reference tools: hooks, attribution, circuits --------------------------------
def caching_hook(store: dict):
    """A hook that saves each activation it sees under its hook point's name."""

    def hook(activation: Tensor, hook) -> None:
        store[hook.name] = activation.detach()

    return hook


def zero_head_hook(z: Tensor, hook, head: int) -> Tensor:
    """On ``hook_z`` ([batch, pos, head, d_head]): remove one head's output."""
    z = z.clone()
    z[:, :, head] = 0.0
    return z


def mean_ablation_hook(z: Tensor, hook, head: int, mean_z: Tensor) -> Tensor:
    """On ``hook_z``: replace one head's output by its mean over a reference batch.
    ``mean_z`` is [pos, head, d_head] (the mean over the batch)."""
    z = z.clone()
    z[:, :, head] = mean_z[: z.shape[1], head]
    return z


def per_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """[batch, pos, d_vocab], [batch, pos] -> [batch, pos - 1]: loss of predicting token i + 1."""
    return -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def record_induction_scores(model: Transformer, tokens: Tensor, half_len: int) -> Tensor:
    """[n_layers, n_heads] induction scores, computed by a hook on every attention pattern."""
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=model.device, dtype=model.embed.W_E.dtype)

    def hook(pattern: Tensor, hook) -> None:
        layer = int(hook.name.split(".")[1])
        scores[layer] = induction_scores(pattern, half_len)

    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), hook)])
    return scores


def head_logit_attribution(cache, model: Transformer, tokens: Tensor) -> Tensor:
    """Direct logit attribution of every head: [n_layers, n_heads, batch, pos - 1].

    Each head writes z_h W_O^h into the residual stream; its direct effect on the logit of the
    correct next token goes through the final LayerNorm, which (for a fixed input) is linear:
    centre, divide by the cached scale, multiply by the gain, then dot with W_U[:, next token].
    """
    scale = cache["ln_final.hook_scale"][:, :-1]  # [batch, pos - 1, 1]
    directions = model.unembed.W_U[:, tokens[:, 1:]]  # [d_model, batch, pos - 1]
    out = []
    for layer in range(model.cfg.n_layers):
        z = cache["z", layer][:, :-1]  # [batch, pos - 1, head, d_head]
        per_head = torch.einsum("bphd,hdm->hbpm", z, model.blocks[layer].attn.W_O)
        per_head = per_head - per_head.mean(-1, keepdim=True)
        per_head = per_head / scale * model.ln_final.w
        out.append(torch.einsum("hbpm,mbp->hbp", per_head, directions))
    return torch.stack(out)


def ov_circuit(model: Transformer, layer: int, head: int) -> tuple[Tensor, Tensor]:
    """The full OV circuit W_E W_V W_O W_U as two factors: [d_vocab, d_head] @ [d_head, d_vocab]."""
    attn = model.blocks[layer].attn
    return model.embed.W_E @ attn.W_V[head], attn.W_O[head] @ model.unembed.W_U


def top1_diagonal_fraction(M: Tensor) -> float:
    """Fraction of rows whose largest entry is on the diagonal."""
    return (M.argmax(dim=-1) == torch.arange(M.shape[0], device=M.device)).float().mean().item()


def k_composed_qk_circuit(model: Transformer, prev_head: int, induction_head: int) -> tuple[Tensor, Tensor]:
    """Token-to-token QK circuit of a layer-1 head whose keys read a layer-0 head's output.

    Entry [a, b]: the score a query token a gives a key position whose *previous* token is b
    (moved there by the previous-token head): W_E W_Q (W_E W_OV W_K)^T, as two factors."""
    late = model.blocks[1].attn
    query_side = model.embed.W_E @ late.W_Q[induction_head]
    key_side = model.embed.W_E @ ov_matrix(model, 0, prev_head) @ late.W_K[induction_head]
    return query_side, key_side.T


# ---- Chapter 2 analysis tools: positional QK, composition kinds, eigenvalues, SVD -----------
def positional_qk_scores(W_pos: Tensor, W_Q: Tensor, W_K: Tensor) -> Tensor:
    """The positional part of one head's attention scores: [n_ctx, n_ctx].

    Entry [q, k] is the score a query at position q gives a key at position k when each carries
    only its positional embedding: W_pos[q] W_Q (W_pos[k] W_K)^T / sqrt(d_head), with keys after
    the query set to -inf (causal mask). W_pos [n_ctx, d_model]; W_Q, W_K [d_model, d_head]."""
    scores = (W_pos @ W_Q) @ (W_pos @ W_K).T / W_Q.shape[-1] ** 0.5
    future = torch.ones_like(scores, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf"))


def qkv_composition_scores(W_OV_early: Tensor, W_QK_late: Tensor, W_OV_late: Tensor) -> Tensor:
    """Q-, K- and V-composition of every (early head, late head) pair: [3, n_early, n_late].

    W_OV_early [n_early, d_model, d_model]; W_QK_late, W_OV_late [n_late, d_model, d_model]
    (row-vector convention: a head writes x @ W_OV, scores x_q @ W_QK @ x_k^T). The early head's
    output x W_OV^A can enter the late head's queries (x W_OV^A W_QK^B: Q-composition), its keys
    (W_QK^B (x W_OV^A)^T = x W_OV^A W_QK^B^T read as a key: K-composition) or its values
    (x W_OV^A W_OV^B: V-composition). Each is scored with composition_score (Elhage et al. 2021)."""
    out = torch.zeros(3, W_OV_early.shape[0], W_QK_late.shape[0], dtype=W_OV_early.dtype)
    for a, W_A in enumerate(W_OV_early):
        for b in range(W_QK_late.shape[0]):
            out[0, a, b] = composition_score(W_A, W_QK_late[b])
            out[1, a, b] = composition_score(W_A, W_QK_late[b].T)
            out[2, a, b] = composition_score(W_A, W_OV_late[b])
    return out


def positive_eigenvalue_fraction(M: Tensor) -> float:
    """Share of the eigenvalue magnitude of a square matrix carried by eigenvalues with a positive
    real part: sum(|λ| for Re λ > 0) / sum(|λ|). Near 1 for a copying OV circuit (Elhage et al.
    2021: positive eigenvalues mean a token increases its own logit and those of similar tokens)."""
    eig = torch.linalg.eigvals(M.double())
    mag = eig.abs()
    return float(mag[eig.real > 0].sum() / mag.sum())


def effective_rank(M: Tensor) -> float:
    """Entropy effective rank (Roy & Vetterli 2007): exp(H(p)) with p_i = σ_i / Σ σ_j over the
    singular values σ of M. Equals r for a matrix with r equal non-zero singular values."""
    s = torch.linalg.svdvals(M.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def qk_score_decomposition(q_parts: Tensor, k_parts: Tensor, W_Q: Tensor, W_K: Tensor) -> Tensor:
    """Split one head's attention score into a term per (query component, key component) pair.

    q_parts [batch, n_q, d_model]: the parts whose sum is the (normalised) residual stream at
    each row's query position; k_parts [batch, n_k, d_model] likewise at its key position.
    Returns [n_q, n_k]: the mean over the batch of (q_parts[:, i] W_Q) . (k_parts[:, j] W_K) /
    sqrt(d_head). Summed, the entries give the score without the b_Q and b_K terms."""
    q = q_parts @ W_Q  # [batch, n_q, d_head]
    k = k_parts @ W_K  # [batch, n_k, d_head]
    return torch.einsum("bid,bjd->ij", q, k) / (q.shape[0] * W_Q.shape[-1] ** 0.5)


def residual_parts_at(cache, model: Transformer, positions: Tensor) -> tuple[Tensor, list[str]]:
    """The input of layer 1's attention at ``positions`` (one per row), split into parts that
    sum to it exactly: token embedding, position embedding, each layer-0 head's output, and the
    biases (layer 0's b_O and LayerNorm's b), each through ln1 of layer 1 as it acted on this
    input (centred, divided by the cached scale, times the gain). -> ([batch, parts, d_model], names)."""
    rows = torch.arange(positions.shape[0])
    z = cache["z", 0][rows, positions]  # [batch, head, d_head]
    heads = torch.einsum("bhd,hdm->bhm", z, model.blocks[0].attn.W_O)
    parts = torch.cat([cache["hook_embed"][rows, positions][:, None], cache["hook_pos_embed"][rows, positions][:, None], heads,
                       model.blocks[0].attn.b_O.expand(len(rows), 1, -1)], dim=1)
    ln = model.blocks[1].ln1
    scale = cache["blocks.1.ln1.hook_scale"][rows, positions]  # [batch, 1]
    parts = (parts - parts.mean(-1, keepdim=True)) / scale[:, None] * ln.w
    parts[:, -1] = parts[:, -1] + ln.b
    names = ["embed", "pos"] + [f"L0H{h}" for h in range(model.cfg.n_heads)] + ["biases"]
    return parts, names


if __name__ == "__main__":
    print(f"wrote {save_training_history()}")
