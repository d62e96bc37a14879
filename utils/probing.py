"""Linear representations: probes, causal tests along a direction, and steering vectors.

Reference implementations for chapter 7. The idea they test (Elhage et al. 2022; Nanda et al.
2023, "Emergent linear representations in world models"; Turner et al. 2023, "Activation
addition"; Templeton et al. 2024, "Golden Gate Claude"): a model stores what it knows as
*directions* in its residual stream. Then

* **reading** it is a linear probe: logistic regression from the residual stream at one
  layer point to a label. The course language's generator knows every label (utils/corpus.py:
  inside a quotation, a name already mentioned, which name is the indirect object), so every
  probe has ground truth;
* a probe can also read what the model never *uses*. A **causal test** moves the residual
  stream along the probe's direction and measures the output, against a random direction of
  the same norm;
* **writing** it is a steering vector: the difference of the mean residual streams of two
  sets of text (stories about Mary minus stories about John), added at one layer with a
  coefficient. A sweep of coefficients measures the effect (how often samples say "Mary")
  against its cost (the loss on ordinary text).

Two baselines come with every probe accuracy: the **majority class** (predict the most common
training label) and **the same probe on a randomly initialised model** of the same
configuration. The second is far above chance, because a random network still carries each
token's identity (its embedding) and an average of the tokens before it (attention at
initialisation is close to uniform): a probe can read a lot from those without any learned
representation at all.

Shapes: ``acts`` are ``[n, d_model]`` (one labelled position per row), or
``[n_points, n, d_model]`` for every layer point at once. Everything is seeded.
"""

from __future__ import annotations


from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .corpus import NAMES, QUOTE, LanguageGenerator, Tokenizer, ioi_prompts, token_dataset, token_dataset_with_info
from .transformer import Transformer

TOKENIZER = Tokenizer()
NAME_IDS = torch.tensor([TOKENIZER.stoi[n] for n in NAMES])


# ---- Where to read: the residual stream at every layer point --------------------------------
def resid_points(model: Transformer) -> list[str]:
    """Hook names of the residual stream at every layer point, in order: the embedding
    (``blocks.0.hook_resid_pre``), then after each attention layer (``hook_resid_mid``) and
    after each MLP (``hook_resid_post``). For a 2-layer model: 5 points."""
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(model.cfg.n_layers):
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_resid_mid")
        names.append(f"blocks.{layer}.hook_resid_post")
    return names


def point_label(name: str) -> str:
    """A short label for a hook name: ``"embed"``, ``"0 attn"``, ``"0 mlp"``..."""
    if name == "blocks.0.hook_resid_pre":
        return "embed"
    layer, hook = name.split(".")[1], name.split(".")[-1]
    return f"{layer} {'attn' if hook == 'hook_resid_mid' else 'mlp' if hook == 'hook_resid_post' else hook}"


@torch.no_grad()
def collect_resid(model: Transformer, tokens: Tensor, mask: Tensor, names: list[str] | None = None,
                  batch_rows: int = 200) -> Tensor:
    """The residual stream at the positions where ``mask`` [rows, pos] is True, at every
    layer point (``names``, default :func:`resid_points`): ``[n_points, n_true, d_model]``,
    positions in row-major order (the order of ``labels[mask]``)."""
    names = names or resid_points(model)
    out = []
    for i in range(0, len(tokens), batch_rows):
        _, cache = model.run_with_cache(tokens[i : i + batch_rows], names_filter=names)
        m = mask[i : i + batch_rows]
        out.append(torch.stack([cache[n][m] for n in names]))
    return torch.cat(out, 1)


# ---- Labelled data sets from the generator's ground truth ------------------------------------
@dataclass
class ProbeData:
    """Token rows, the positions to probe and their labels.

    ``tokens`` [rows, pos]; ``mask`` [rows, pos] bool, the labelled positions; ``labels`` [n]
    long, one per True entry of ``mask`` in row-major order; ``classes`` names the label values;
    ``row`` [n]: the row of each labelled position (split train and test by rows, so that two
    positions of one story never end up on both sides); ``extra``: more per-position data
    (the IOI subject, say)."""

    tokens: Tensor
    mask: Tensor
    labels: Tensor
    classes: list[str]
    row: Tensor
    extra: dict

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def in_quote_labels(tokens: Tensor, quote_id: int, bos_id: int = 0) -> Tensor:
    """True for tokens strictly between an opening and a closing quotation mark ([rows, pos]
    bool). The marks themselves are False; a ``<bos>`` starts a new document, outside any
    quotation. (A row cut from the middle of a quotation cannot know it: the generator's own
    annotation can, see :func:`in_quote_data`.)"""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    for r in range(tokens.shape[0]):
        inside = False
        for p in range(tokens.shape[1]):
            t = int(tokens[r, p])
            if t == bos_id:
                inside = False
            elif t == quote_id:
                inside = not inside
                continue
            out[r, p] = inside
    return out


def name_seen_labels(tokens: Tensor, name_ids: Tensor, bos_id: int = 0) -> Tensor:
    """True at a name whose same name occurs earlier in the same document of the row (after the
    last ``<bos>`` before it); False everywhere else, first mentions included ([rows, pos])."""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    names = set(name_ids.tolist())
    for r in range(tokens.shape[0]):
        seen: set[int] = set()
        for p in range(tokens.shape[1]):
            t = int(tokens[r, p])
            if t == bos_id:
                seen = set()
            elif t in names:
                out[r, p] = t in seen
                seen.add(t)
    return out


def in_quote_data(n_tokens: int = 24_000, seed: int = 1, n_ctx: int = 48) -> ProbeData:
    """Every token but ``<bos>`` and the quotation marks, labelled 1 inside a quotation. The
    label is the generator's annotation; positions the row cannot know (a row cut from the
    middle of a quotation) are left out."""
    tokens, infos = token_dataset_with_info(n_tokens, n_ctx, seed=seed)
    truth = torch.tensor([[t.in_quote for t in row] for row in infos])
    visible = in_quote_labels(tokens, TOKENIZER.stoi[QUOTE], TOKENIZER.bos_id)
    mask = (tokens != TOKENIZER.bos_id) & (tokens != TOKENIZER.stoi[QUOTE]) & (truth == visible)
    rows = torch.arange(len(tokens))[:, None].expand_as(tokens)
    return ProbeData(tokens, mask, truth[mask].long(), ["outside", "inside"], rows[mask], {})


def name_seen_data(n_tokens: int = 48_000, seed: int = 2, n_ctx: int = 48) -> ProbeData:
    """Every name, labelled 1 if this name was already mentioned (the generator's
    ``first_mention`` is False). Names whose earlier mention fell before the row's first token
    are left out: the model cannot see it."""
    tokens, infos = token_dataset_with_info(n_tokens, n_ctx, seed=seed)
    is_name = torch.tensor([[t.role == "name" for t in row] for row in infos])
    seen = torch.tensor([[t.role == "name" and not t.first_mention for t in row] for row in infos])
    visible = name_seen_labels(tokens, NAME_IDS, TOKENIZER.bos_id)
    mask = is_name & (seen == visible)
    rows = torch.arange(len(tokens))[:, None].expand_as(tokens)
    return ProbeData(tokens, mask, seen[mask].long(), ["first mention", "seen before"], rows[mask], {})


def ioi_data(n: int = 1200, seed: int = 3) -> ProbeData:
    """IOI prompts (``When Mary and John went to the shop , John gave a book to``), labelled
    at the last token (the position that predicts the answer) with the indirect object's index
    in :data:`NAMES` (24 classes). ``extra["s"]``: the subject's index; ``extra["last"]``: the
    last position of each row (rows are right-padded with ``<pad>``, which the causal model
    never reads before the last token)."""
    prompts = ioi_prompts(n, seed=seed)
    ids = [TOKENIZER.encode(p["prompt"], bos=True) for p in prompts]
    length = max(map(len, ids))
    tokens = torch.full((n, length), TOKENIZER.pad_id)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
    last = torch.tensor([len(row) - 1 for row in ids])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[torch.arange(n), last] = True
    io = torch.tensor([NAMES.index(p["io"]) for p in prompts])
    s = torch.tensor([NAMES.index(p["s"]) for p in prompts])
    return ProbeData(tokens, mask, io, list(NAMES), torch.arange(n), {"s": s, "last": last})


def split_rows(data: ProbeData, test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Boolean masks (train, test) over the labelled positions, splitting by *row*."""
    rows = int(data.row.max()) + 1
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    test_rows = torch.zeros(rows, dtype=torch.bool)
    test_rows[perm[: int(rows * test_fraction)]] = True
    test = test_rows[data.row]
    return ~test, test


# ---- The probe: multinomial logistic regression ----------------------------------------------
def standardize(x_train: Tensor, x_test: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Centre and scale every feature (column) by the *training* set's mean and standard
    deviation, so that the probe's learning rate suits every layer (residual norms grow with
    depth). The test set uses the training statistics: the test set is not seen while fitting."""
    mean, std = x_train.mean(0), x_train.std(0) + eps
    return (x_train - mean) / std, (x_test - mean) / std


def probe_loss(logits: Tensor, labels: Tensor, W: Tensor, weight_decay: float) -> Tensor:
    """Mean cross-entropy of ``logits`` [n, classes] against ``labels`` [n] plus
    ``weight_decay`` times the squared Frobenius norm of the weights ``W`` [d, classes] (never
    the bias: a bias does not overfit, it sets the base rate)."""
    return F.cross_entropy(logits, labels) + weight_decay * W.pow(2).sum()


def train_probe(x: Tensor, labels: Tensor, n_classes: int, steps: int = 200, lr: float = 0.05,
                weight_decay: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Logistic regression (softmax over ``n_classes``) from features ``x`` [n, d] to
    ``labels`` [n]: full batch, Adam, weights and bias starting at zero (so the result does not
    depend on a seed). Returns ``(W [d, n_classes], b [n_classes])``; predict with
    ``x @ W + b``. Standardize ``x`` first (see :func:`standardize`)."""
    W = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    for _ in range(steps):
        loss = probe_loss(x @ W + b, labels, W, weight_decay)
        optimizer.zero_grad()  # gradients accumulate across backward() calls unless cleared
        loss.backward()
        optimizer.step()
    return W.detach(), b.detach()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose highest logit is the label's (a 0-d tensor)."""
    return (logits.argmax(-1) == labels).float().mean()


def majority_baseline(train_labels: Tensor, test_labels: Tensor) -> Tensor:
    """Test accuracy of always predicting the most common *training* label (a 0-d tensor)."""
    majority = torch.bincount(train_labels).argmax()
    return (test_labels == majority).float().mean()


def probe_accuracy(acts: Tensor, data: ProbeData, train: Tensor, test: Tensor, steps: int = 200,
                   lr: float = 0.05, weight_decay: float = 1e-4) -> float:
    """Train on ``acts[train]`` (standardized), return the test accuracy."""
    x_train, x_test = standardize(acts[train], acts[test])
    W, b = train_probe(x_train, data.labels[train], data.n_classes, steps, lr, weight_decay)
    return float(accuracy(x_test @ W + b, data.labels[test]))


def random_model(model: Transformer, seed: int = 1) -> Transformer:
    """A model with ``model``'s configuration and freshly initialised weights (GPT-2's scheme,
    seeded): the baseline that shows what a probe reads without any training."""
    return Transformer(model.cfg, seed=seed).eval()


def probe_table(model: Transformer, data: ProbeData, seed: int = 0, steps: int = 200) -> dict:
    """Test accuracy per layer point for ``model`` and for :func:`random_model`, plus the
    majority baseline: ``{"points", "trained", "random", "majority"}``."""
    train, test = split_rows(data, seed=seed)
    out = {"points": [point_label(n) for n in resid_points(model)],
           "majority": float(majority_baseline(data.labels[train], data.labels[test]))}
    for key, m in [("trained", model), ("random", random_model(model, seed=seed + 1))]:
        acts = collect_resid(m, data.tokens, data.mask)
        out[key] = [probe_accuracy(a, data, train, test, steps) for a in acts]
    return out


# ---- Is it used? Pushing the residual stream along a direction ------------------------------
def probe_direction(W: Tensor, std: Tensor, positive: Tensor | int, negative: Tensor | int) -> Tensor:
    """The residual-stream direction along which the probe's logit of class ``positive``
    rises fastest against class ``negative``, as a unit vector ([d], or [n, d] for tensors of
    classes). The probe read standardized features (x - mean) / std, so in the residual
    stream its weights are W / std."""
    w = W[:, positive] - W[:, negative]  # [d], or [d, n] for tensors of classes
    w = (w.mT if w.ndim == 2 else w) / std
    return w / w.norm(dim=-1, keepdim=True)


def push_along(resid: Tensor, direction: Tensor, alpha: float) -> Tensor:
    """``resid`` [n, d] moved by ``alpha`` times its own norm along ``direction`` ([d] or
    [n, d], normalised here): alpha = 0.5 moves each row by half its length."""
    unit = direction / direction.norm(dim=-1, keepdim=True)
    return resid + alpha * resid.norm(dim=-1, keepdim=True) * unit


def random_like(direction: Tensor, seed: int = 0) -> Tensor:
    """Random directions with the norms of ``direction`` ([d] or [n, d]): the control."""
    r = torch.randn(direction.shape, generator=torch.Generator().manual_seed(seed))
    return r / r.norm(dim=-1, keepdim=True) * direction.norm(dim=-1, keepdim=True)


def top_name_rate(logits: Tensor, target: Tensor, name_ids: Tensor = NAME_IDS) -> Tensor:
    """Fraction of rows of ``logits`` [n, d_vocab] whose highest-scoring *name* (among
    ``name_ids``) is ``target`` [n] (an index into ``name_ids``)."""
    return (logits[:, name_ids].argmax(-1) == target).float().mean()


@torch.no_grad()
def push_logits(model: Transformer, data: ProbeData, hook_name: str, direction: Tensor,
                alpha: float) -> Tensor:
    """Final-position logits [n, d_vocab] of the IOI prompts with the residual stream at
    ``hook_name`` pushed along ``direction`` ([n, d]) at the last position only."""
    rows = torch.arange(len(data.tokens))
    last = data.extra["last"]

    def hook(act, hook):
        act = act.clone()
        act[rows, last] = push_along(act[rows, last], direction, alpha)
        return act

    logits = model.run_with_hooks(data.tokens, fwd_hooks=[(hook_name, hook)])
    return logits[rows, last]


def train_io_probe(model: Transformer, hook_name: str, data: ProbeData | None = None, train: Tensor | None = None,
                   steps: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """The indirect-object probe at ``hook_name`` (default data: :func:`ioi_data`, trained on the
    training rows of ``split_rows(data, seed=3)``): ``(W, b, std)``, ``std`` the training
    standard deviation that :func:`probe_direction` needs."""
    data = ioi_data() if data is None else data
    train = split_rows(data, seed=3)[0] if train is None else train
    acts = collect_resid(model, data.tokens, data.mask, [hook_name])[0]
    mean, std = acts[train].mean(0), acts[train].std(0) + 1e-5
    W, b = train_probe((acts[train] - mean) / std, data.labels[train], data.n_classes, steps)
    return W, b, std


def ioi_causal_test(model: Transformer, hook_name: str = "blocks.1.hook_resid_pre", alpha: float = 0.5,
                    n: int = 1200, seed: int = 3, steps: int = 200) -> dict:
    """Train the IO-identity probe at ``hook_name`` on 3/4 of the prompts; on the other 1/4,
    push the last position by ``alpha`` residual norms along the probe's subject-minus-IO
    direction, and along a random direction of the same norm. Returns the fraction of prompts
    whose top name is the subject (and the IO) in each case."""
    data = ioi_data(n, seed)
    train, test = split_rows(data, seed=seed)
    W, _, std = train_io_probe(model, hook_name, data, train, steps)
    sub = ProbeData(data.tokens[test], data.mask[test], data.labels[test], data.classes, torch.arange(int(test.sum())),
                    {"s": data.extra["s"][test], "last": data.extra["last"][test]})
    s, io = sub.extra["s"], sub.labels
    d = probe_direction(W, std, s, io)
    out = {"clean": model(sub.tokens)[torch.arange(len(s)), sub.extra["last"]]}
    out["probe"] = push_logits(model, sub, hook_name, d, alpha)
    out["random"] = push_logits(model, sub, hook_name, random_like(d, seed), alpha)
    return {f"{k} {who}": float(top_name_rate(v, t)) for k, v in out.items() for who, t in [("S top", s), ("IO top", io)]}


def remove_direction(resid: Tensor, direction: Tensor, centre: Tensor) -> Tensor:
    """``resid`` [..., d] with its component along ``direction`` [d] set to that of ``centre`` [d]
    (the data's mean): a mean-ablation of one direction, which leaves every other direction alone."""
    unit = direction / direction.norm()
    return resid - ((resid - centre) @ unit)[..., None] * unit


@torch.no_grad()
def quote_direction_test(model: Transformer, hook_name: str = "blocks.1.hook_resid_mid", scale: float = 4.0,
                         data: ProbeData | None = None) -> dict:
    """Read versus write along the quotation direction (inside minus outside, difference of
    means at ``hook_name``), at every position of the in-quote data set's rows:

    * ``close clean`` / ``close removed`` / ``close subtracted``: mean P(next token is a closing
      quotation mark) at a full stop inside a quotation (where the answer is a closing mark),
      clean, with the direction mean-ablated, and with ``scale`` times the vector subtracted;
    * ``open clean`` / ``open added``: mean P(quotation mark) after a full stop outside any
      quotation, clean and with ``scale`` times the vector added.
    """
    data = in_quote_data() if data is None else data
    tokens, quote = data.tokens, TOKENIZER.stoi[QUOTE]
    acts = collect_resid(model, tokens, data.mask, [hook_name])[0]
    vector = mean_difference(acts[data.labels == 1], acts[data.labels == 0])
    centre = acts.mean(0)
    inside = torch.zeros_like(tokens, dtype=torch.bool)
    inside[data.mask] = data.labels.bool()
    outside = data.mask.clone()
    outside[data.mask] = ~data.labels.bool()
    full_stop = tokens == TOKENIZER.stoi["."]
    next_token = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], TOKENIZER.pad_id)], 1)
    closing = inside & full_stop & (next_token == quote)
    after_stop = outside & full_stop & (next_token != quote)

    def p_quote(edit) -> Tensor:
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: edit(act))])
        return logits.softmax(-1)[..., quote]

    clean = p_quote(lambda a: a)
    removed = p_quote(lambda a: remove_direction(a, vector, centre))
    subtracted = p_quote(lambda a: a - scale * vector)
    added = p_quote(lambda a: a + scale * vector)
    return {"close clean": float(clean[closing].mean()), "close removed": float(removed[closing].mean()),
            "close subtracted": float(subtracted[closing].mean()), "open clean": float(clean[after_stop].mean()),
            "open added": float(added[after_stop].mean()), "vector norm": float(vector.norm())}


# ---- Writing: steering vectors ---------------------------------------------------------------
def mean_difference(acts_a: Tensor, acts_b: Tensor) -> Tensor:
    """The steering vector ``mean(acts_a) - mean(acts_b)`` over the rows of each ([n_a, d],
    [n_b, d]; the two sets may differ in size)."""
    return acts_a.mean(0) - acts_b.mean(0)


def stories_about(name: str, avoid: str, n: int, seed: int = 0, n_ctx: int = 48) -> Tensor:
    """``n`` stories (token rows of ``n_ctx``, right-padded, <bos> first) whose first ``n_ctx``
    tokens mention ``name`` and never ``avoid``."""
    gen = LanguageGenerator(seed)
    rows = []
    while len(rows) < n:
        words = next(gen.documents(1))[:n_ctx]
        if name in words and avoid not in words:
            rows.append(TOKENIZER.encode(" ".join(words)) + [TOKENIZER.pad_id] * (n_ctx - len(words)))
    return torch.tensor(rows)


@torch.no_grad()
def steering_vector(model: Transformer, hook_name: str, target: str = "Mary", other: str = "John",
                    n: int = 200, seed: int = 0) -> Tensor:
    """Difference of means at ``hook_name``: mean residual stream over every real token
    (not <bos>, not padding) of ``n`` stories about ``target`` minus that of ``n`` stories
    about ``other``."""
    means = []
    for who, avoid in [(target, other), (other, target)]:
        tokens = stories_about(who, avoid, n, seed=seed)
        mask = (tokens != TOKENIZER.bos_id) & (tokens != TOKENIZER.pad_id)
        means.append(collect_resid(model, tokens, mask, [hook_name])[0])
    return mean_difference(*means)


@torch.no_grad()
def one_pair_vector(model: Transformer, hook_name: str, target: str = "Mary", other: str = "John") -> Tensor:
    """ActAdd's steering vector from a single pair of prompts (Turner et al. 2023): the residual
    stream at ``hook_name`` of ``<bos> target`` minus that of ``<bos> other``, at the name."""
    tokens = torch.tensor([TOKENIZER.encode(target, bos=True), TOKENIZER.encode(other, bos=True)])
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][0, 1] - cache[hook_name][1, 1]


def add_vector(resid: Tensor, vector: Tensor, coefficient: float, skip: int = 1) -> Tensor:
    """``resid`` [batch, pos, d] plus ``coefficient * vector`` at every position from ``skip``
    on (the <bos> position, which every text shares, is left alone)."""
    out = resid.clone()
    out[:, skip:] = out[:, skip:] + coefficient * vector
    return out


def steering_hook(vector: Tensor, coefficient: float, skip: int = 1):
    """A forward hook that applies :func:`add_vector`."""

    def hook(act, hook):
        return add_vector(act, vector, coefficient, skip)

    return hook


def target_frequency(samples: Tensor, target_id: int, skip: int = 1) -> Tensor:
    """Fraction of sample rows [n, length] that contain ``target_id`` at least once after the
    first ``skip`` tokens (the prompt)."""
    return (samples[:, skip:] == target_id).any(-1).float().mean()


@torch.no_grad()
def sample(model: Transformer, n: int = 100, length: int = 40, fwd_hooks=(), seed: int = 0) -> Tensor:
    """``n`` samples of ``length`` tokens after <bos> at temperature 1, with ``fwd_hooks``:
    [n, length + 1]. Seeded: every setting sees the same random numbers."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.full((n, 1), TOKENIZER.bos_id)
    for _ in range(length):
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
        tokens = torch.cat([tokens, torch.multinomial(logits.softmax(-1), 1, generator=gen)], 1)
    return tokens


@torch.no_grad()
def steered_loss(model: Transformer, tokens: Tensor, fwd_hooks=()) -> float:
    """Mean next-token loss on ``tokens`` with ``fwd_hooks`` applied."""
    return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=list(fwd_hooks)))


def normal_text(n_rows: int = 200, seed: int = 7, n_ctx: int = 48) -> Tensor:
    """Held-out rows of ordinary course text, to price a steering vector in nats."""
    return token_dataset(n_rows * n_ctx, n_ctx, seed=seed)


@torch.no_grad()
def steering_sweep(model: Transformer, vector: Tensor, hook_name: str, coefficients=(0, 1, 2, 3, 4, 6, 8),
                   target: str = "Mary", n_samples: int = 100, length: int = 40, text: Tensor | None = None,
                   seed: int = 0) -> list[dict]:
    """For each coefficient: the fraction of samples that say ``target`` and the loss on
    ordinary text, and its increase over the unsteered loss (the cost, in nats)."""
    text = normal_text() if text is None else text
    target_id = TOKENIZER.stoi[target]
    clean = steered_loss(model, text)
    rows = []
    for c in coefficients:
        hooks = [(hook_name, steering_hook(vector, c))]
        samples = sample(model, n_samples, length, hooks, seed)
        loss = steered_loss(model, text, hooks)
        rows.append({"coefficient": c, "frequency": float(target_frequency(samples, target_id)),
                     "loss": loss, "cost": loss - clean})
    return rows


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / (a.norm() * b.norm()))


