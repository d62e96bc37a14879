"""Chapter 7 exercises: linear representations (probes, causal pushes, steering vectors).

Every input is built from the case's seed (``ctx.randn``, ``ctx.gen``), so a hidden case with
another seed gets other numbers. The inputs are shaped so that each catalogued mistake changes
the output: rows with a ``<bos>`` in the middle and a quotation left open before it, train and
test sets whose majority classes differ, features with different scales and means, residual
rows of different norms, a non-name token that outscores every name, and so on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils import probing as ref
from utils.checks import Exercise, LearnerError, Mistake


def _rand(ctx, *shape: int) -> Tensor:
    return torch.rand(shape, generator=ctx.gen)


def _scalar(value, what: str) -> Tensor:
    """A learner's single number as a 0-d tensor (a Python float, or a tensor of one element)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise LearnerError(f"{what} should be a tensor (or a number), got {type(value).__name__}")
    return value.detach().reshape(()).float() if value.numel() == 1 else value.detach()


def _pair(value, what: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, Tensor) for v in value)):
        raise LearnerError(f"{what} should return two tensors (a tuple), got {type(value).__name__}")
    return value[0].detach(), value[1].detach()


# ---- token rows with documents, quotations and names ------------------------------------------
BOS, QUOTE = 0, 3


def _rows(ctx, c) -> Tensor:
    """Token rows: <bos> first, a second <bos> in some rows, quotation marks (some left open
    before a <bos> or at the end of the row), names (ids 10..10+n_names) that recur."""
    rows, pos = c["rows"], c["pos"]
    kind = _rand(ctx, rows, pos)
    words = 4 + ctx.randint(6, rows, pos)                       # ordinary words 4..9
    names = 10 + ctx.randint(c["n_names"], rows, pos)           # names
    tokens = torch.where(kind < 0.35, names, words)
    tokens = torch.where((kind >= 0.35) & (kind < 0.5), torch.full_like(tokens, QUOTE), tokens)
    tokens[:, 0] = BOS
    for r in range(rows):
        if r % 2 == 0:  # a second document starts mid-row, with a quotation left open before it
            q = 2 + int(ctx.randint(pos - 4, 1))
            tokens[r, q] = BOS
            if int((tokens[r, 1:q] == QUOTE).sum()) % 2 == 0:  # make the count of marks odd
                tokens[r, q - 1] = 4 if tokens[r, q - 1] == QUOTE else QUOTE
    return tokens


# ---- 1. in_quote_labels -----------------------------------------------------------------------
def run_in_quote(impl, ctx):
    tokens = _rows(ctx, ctx.case)
    out = ctx.call(impl, tokens, QUOTE, BOS)
    if not isinstance(out, Tensor):
        raise LearnerError(f"in_quote_labels should return a tensor, got {type(out).__name__}")
    return {"in quote": out.detach().bool()}


def _quote_loop(tokens, quote_id, bos_id, mode):
    out = torch.zeros_like(tokens, dtype=torch.bool)
    for r in range(tokens.shape[0]):
        inside = False
        for p in range(tokens.shape[1]):
            t = int(tokens[r, p])
            if t == bos_id and mode != "no bos":
                inside = False
            if t == quote_id:
                if mode == "label then toggle":
                    out[r, p] = inside
                inside = not inside
                if mode == "toggle then label":
                    out[r, p] = inside
                if mode == "marks inside":
                    out[r, p] = True
                continue
            out[r, p] = inside
    return out


def quote_marks_inside(tokens, quote_id, bos_id=0):
    return _quote_loop(tokens, quote_id, bos_id, "marks inside")


def quote_opening_inside(tokens, quote_id, bos_id=0):
    return _quote_loop(tokens, quote_id, bos_id, "toggle then label")


def quote_closing_inside(tokens, quote_id, bos_id=0):
    return _quote_loop(tokens, quote_id, bos_id, "label then toggle")


def quote_no_bos(tokens, quote_id, bos_id=0):
    return _quote_loop(tokens, quote_id, bos_id, "no bos")


# ---- 2. name_seen_labels ----------------------------------------------------------------------
def run_name_seen(impl, ctx):
    c = ctx.case
    tokens = _rows(ctx, c)
    name_ids = torch.arange(10, 10 + c["n_names"])
    out = ctx.call(impl, tokens, name_ids, BOS)
    if not isinstance(out, Tensor):
        raise LearnerError(f"name_seen_labels should return a tensor, got {type(out).__name__}")
    return {"seen": out.detach().bool()}


def _seen_loop(tokens, name_ids, bos_id, mode):
    out = torch.zeros_like(tokens, dtype=torch.bool)
    names = set(name_ids.tolist())
    for r in range(tokens.shape[0]):
        seen: set[int] = set()
        for p in range(tokens.shape[1]):
            t = int(tokens[r, p])
            if t == bos_id and mode != "no bos":
                seen = set()
            elif t in names or mode == "any token":
                if mode == "added first":
                    seen.add(t)
                out[r, p] = bool(seen) if mode == "any name" else t in seen
                seen.add(t)
    return out


def seen_added_first(tokens, name_ids, bos_id=0):
    return _seen_loop(tokens, name_ids, bos_id, "added first")


def seen_any_name(tokens, name_ids, bos_id=0):
    return _seen_loop(tokens, name_ids, bos_id, "any name")


def seen_no_bos(tokens, name_ids, bos_id=0):
    return _seen_loop(tokens, name_ids, bos_id, "no bos")


def seen_any_token(tokens, name_ids, bos_id=0):
    return _seen_loop(tokens, name_ids, bos_id, "any token")


# ---- 3. standardize ---------------------------------------------------------------------------
def run_standardize(impl, ctx):
    c = ctx.case
    scale = 0.2 + 4 * _rand(ctx, c["d"])
    centre = ctx.randn(c["d"], scale=3.0)
    x_train = ctx.randn(c["n_train"], c["d"]) * scale + centre
    x_test = ctx.randn(c["n_test"], c["d"]) * scale * 1.5 + centre + 1.0  # another distribution
    if c.get("constant"):
        x_train[:, 0], x_test[:, 0] = 2.0, 2.5  # a feature that never varies in training
    train, test = _pair(ctx.call(impl, x_train, x_test), "standardize")
    return {"train": train, "test": test}


def std_test_own_stats(x_train, x_test, eps=1e-5):
    return (x_train - x_train.mean(0)) / (x_train.std(0) + eps), (x_test - x_test.mean(0)) / (x_test.std(0) + eps)


def std_global(x_train, x_test, eps=1e-5):
    mean, std = x_train.mean(), x_train.std() + eps
    return (x_train - mean) / std, (x_test - mean) / std


def std_not_centred(x_train, x_test, eps=1e-5):
    std = x_train.std(0) + eps
    return x_train / std, x_test / std


def std_per_row(x_train, x_test, eps=1e-5):
    return ((x_train - x_train.mean(-1, keepdim=True)) / (x_train.std(-1, keepdim=True) + eps),
            (x_test - x_test.mean(-1, keepdim=True)) / (x_test.std(-1, keepdim=True) + eps))


def std_no_eps(x_train, x_test, eps=1e-5):
    mean, std = x_train.mean(0), x_train.std(0)
    return (x_train - mean) / std, (x_test - mean) / std


# ---- 4. probe_loss ----------------------------------------------------------------------------
def run_probe_loss(impl, ctx):
    c = ctx.case
    logits = ctx.randn(c["n"], c["classes"], scale=2.0)
    labels = ctx.randint(c["classes"], c["n"])
    W = ctx.randn(c["d"], c["classes"])
    return {"loss": _scalar(ctx.call(impl, logits, labels, W, c["wd"]), "probe_loss's result")}


def loss_summed(logits, labels, W, weight_decay):
    return F.cross_entropy(logits, labels, reduction="sum") + weight_decay * W.pow(2).sum()


def loss_norm_not_squared(logits, labels, W, weight_decay):
    return F.cross_entropy(logits, labels) + weight_decay * W.norm()


def loss_no_penalty(logits, labels, W, weight_decay):
    return F.cross_entropy(logits, labels)


def loss_mean_penalty(logits, labels, W, weight_decay):
    return F.cross_entropy(logits, labels) + weight_decay * W.pow(2).mean()


def loss_nll_of_logits(logits, labels, W, weight_decay):
    return F.nll_loss(logits, labels) + weight_decay * W.pow(2).sum()


# ---- 5. train_probe ---------------------------------------------------------------------------
def _probe_problem(ctx, c):
    """Standardized features, labels from a noisy linear rule with unequal class sizes."""
    x = ctx.randn(c["n"], c["d"])
    rule = ctx.randn(c["d"], c["classes"]) * 2
    labels = (x @ rule + ctx.randn(c["n"], c["classes"]) + torch.linspace(1.5, 0, c["classes"])).argmax(-1)
    return x, labels


def run_train_probe(impl, ctx):
    c = ctx.case
    x, labels = _probe_problem(ctx, c)
    out = ctx.call(impl, x, labels, c["classes"], c["steps"], c["lr"], c["wd"])
    W, b = _pair(out, "train_probe")
    x_new = ctx.randn(20, c["d"])
    return {"W": W, "b": b, "logits on new inputs": x_new @ W + b}


def _train(x, labels, n_classes, steps, lr, weight_decay, mode=""):
    W = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([W, b] if mode != "no bias" else [W], lr=lr)
    for _ in range(steps):
        logits = x @ W + (b if mode != "no bias" else 0)
        if mode == "mse":
            loss = (logits - F.one_hot(labels, n_classes).float()).pow(2).mean() + weight_decay * W.pow(2).sum()
        else:
            loss = F.cross_entropy(logits, labels) + weight_decay * W.pow(2).sum()
        if mode == "bias decayed":
            loss = loss + weight_decay * b.pow(2).sum()
        if mode != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return W.detach(), b.detach()


def probe_no_zero_grad(x, labels, n_classes, steps=200, lr=0.05, weight_decay=1e-4):
    return _train(x, labels, n_classes, steps, lr, weight_decay, "no zero_grad")


def probe_mse(x, labels, n_classes, steps=200, lr=0.05, weight_decay=1e-4):
    return _train(x, labels, n_classes, steps, lr, weight_decay, "mse")


def probe_no_bias(x, labels, n_classes, steps=200, lr=0.05, weight_decay=1e-4):
    return _train(x, labels, n_classes, steps, lr, weight_decay, "no bias")


def probe_bias_decayed(x, labels, n_classes, steps=200, lr=0.05, weight_decay=1e-4):
    return _train(x, labels, n_classes, steps, lr, weight_decay, "bias decayed")


# ---- 6. majority_baseline ---------------------------------------------------------------------
def run_majority(impl, ctx):
    c = ctx.case
    k = c["classes"]
    # training labels favour class 0, the test set favours the last class
    train = torch.multinomial(torch.linspace(3, 1, k), c["n_train"], replacement=True, generator=ctx.gen)
    test = torch.multinomial(torch.linspace(1, 2.5, k), c["n_test"], replacement=True, generator=ctx.gen)
    return {"accuracy": _scalar(ctx.call(impl, train, test), "majority_baseline's result")}


def maj_from_test(train_labels, test_labels):
    return (test_labels == torch.bincount(test_labels).argmax()).float().mean()


def maj_chance(train_labels, test_labels):
    return torch.tensor(1.0 / (int(max(train_labels.max(), test_labels.max())) + 1))


def maj_train_frequency(train_labels, test_labels):
    return torch.bincount(train_labels).max() / len(train_labels)


def maj_minority(train_labels, test_labels):
    counts = torch.bincount(train_labels).float()
    return (test_labels == counts.masked_fill(counts == 0, float("inf")).argmin()).float().mean()


# ---- 7. probe_direction -----------------------------------------------------------------------
def run_probe_direction(impl, ctx):
    c = ctx.case
    W = ctx.randn(c["d"], c["classes"])
    std = 0.1 + 3 * _rand(ctx, c["d"])
    if c["batched"]:
        pos = ctx.randint(c["classes"], c["batched"])
        neg = (pos + 1 + ctx.randint(c["classes"] - 1, c["batched"])) % c["classes"]
    else:
        pos, neg = 1, 0
    out = ctx.call(impl, W, std, pos, neg)
    if not isinstance(out, Tensor):
        raise LearnerError(f"probe_direction should return a tensor, got {type(out).__name__}")
    return {"direction": out.detach()}


def _unit(w):
    return w / w.norm(dim=-1, keepdim=True)


def _diff(W, positive, negative):
    w = W[:, positive] - W[:, negative]
    return w.mT if w.ndim == 2 else w


def dir_std_ignored(W, std, positive, negative):
    return _unit(_diff(W, positive, negative))


def dir_times_std(W, std, positive, negative):
    return _unit(_diff(W, positive, negative) * std)


def dir_sign(W, std, positive, negative):
    return _unit(_diff(W, negative, positive) / std)


def dir_not_unit(W, std, positive, negative):
    return _diff(W, positive, negative) / std


# ---- 8. push_along ----------------------------------------------------------------------------
def run_push(impl, ctx):
    c = ctx.case
    resid = ctx.randn(c["n"], c["d"]) * (0.5 + 4 * _rand(ctx, c["n"], 1))  # rows of very different norms
    shape = (c["n"], c["d"]) if c["per_row"] else (c["d"],)
    direction = ctx.randn(*shape) * 3
    out = ctx.call(impl, resid, direction, c["alpha"])
    if not isinstance(out, Tensor):
        raise LearnerError(f"push_along should return a tensor, got {type(out).__name__}")
    return {"pushed": out.detach()}


def push_not_normalised(resid, direction, alpha):
    return resid + alpha * resid.norm(dim=-1, keepdim=True) * direction


def push_no_resid_norm(resid, direction, alpha):
    return resid + alpha * _unit(direction)


def push_batch_norm(resid, direction, alpha):
    return resid + alpha * resid.norm() * _unit(direction)


def push_replaced(resid, direction, alpha):
    return alpha * resid.norm(dim=-1, keepdim=True) * _unit(direction)


# ---- 9. top_name_rate -------------------------------------------------------------------------
def run_top_name(impl, ctx):
    c = ctx.case
    name_ids = torch.randperm(c["vocab"], generator=ctx.gen)[: c["names"]]
    logits = ctx.randn(c["n"], c["vocab"])
    target = ctx.randint(c["names"], c["n"])
    boost = _rand(ctx, c["n"]) < 0.6  # most rows: the target name is the top name
    logits[boost.nonzero()[:, 0], name_ids[target[boost]]] += 3.0
    other = torch.ones(c["vocab"], dtype=torch.bool)
    other[name_ids] = False
    logits[: c["n"] // 2, other.nonzero()[0, 0]] += 8.0  # a non-name word outscores every name
    return {"rate": _scalar(ctx.call(impl, logits, target, name_ids), "top_name_rate's result")}


def top_whole_vocab(logits, target, name_ids):
    return (logits.argmax(-1) == name_ids[target]).float().mean()


def top_count(logits, target, name_ids):
    return (logits[:, name_ids].argmax(-1) == target).float().sum()


def top_token_id(logits, target, name_ids):
    return (logits[:, name_ids].argmax(-1) == name_ids[target]).float().mean()


def top_softmax_batch(logits, target, name_ids):
    return (logits[:, name_ids].softmax(0).argmax(-1) == target).float().mean()


# ---- 10. mean_difference ----------------------------------------------------------------------
def run_mean_difference(impl, ctx):
    c = ctx.case
    a = ctx.randn(c["n_a"], c["d"]) + ctx.randn(c["d"])
    b = ctx.randn(c["n_b"], c["d"]) * 2 + ctx.randn(c["d"])
    out = ctx.call(impl, a, b)
    if not isinstance(out, Tensor):
        raise LearnerError(f"mean_difference should return a tensor, got {type(out).__name__}")
    return {"vector": out.detach()}


def md_reversed(acts_a, acts_b):
    return acts_b.mean(0) - acts_a.mean(0)


def md_paired(acts_a, acts_b):
    n = min(len(acts_a), len(acts_b))
    return (acts_a[:n] - acts_b[:n]).mean(0)


def md_normalised(acts_a, acts_b):
    v = acts_a.mean(0) - acts_b.mean(0)
    return v / v.norm()


def md_pooled(acts_a, acts_b):
    return acts_a.mean(0) - torch.cat([acts_a, acts_b]).mean(0)


# ---- 11. add_vector ---------------------------------------------------------------------------
def run_add_vector(impl, ctx):
    c = ctx.case
    resid = ctx.randn(c["batch"], c["pos"], c["d"])
    vector = ctx.randn(c["d"], scale=2.0)
    out = ctx.call(impl, resid, vector, c["coefficient"], c["skip"])
    if not isinstance(out, Tensor):
        raise LearnerError(f"add_vector should return a tensor, got {type(out).__name__}")
    return {"steered": out.detach()}


def add_everywhere(resid, vector, coefficient, skip=1):
    return resid + coefficient * vector


def add_one_position(resid, vector, coefficient, skip=1):
    out = resid.clone()
    out[:, skip] = out[:, skip] + coefficient * vector
    return out


def add_unit(resid, vector, coefficient, skip=1):
    out = resid.clone()
    out[:, skip:] = out[:, skip:] + coefficient * vector / vector.norm()
    return out


def add_before_skip(resid, vector, coefficient, skip=1):
    out = resid.clone()
    out[:, :skip] = out[:, :skip] + coefficient * vector
    return out


# ---- 12. target_frequency ---------------------------------------------------------------------
def run_target_frequency(impl, ctx):
    c = ctx.case
    samples = 1 + ctx.randint(c["vocab"] - 1, c["n"], c["length"])
    samples[:, : c["skip"]] = c["target"]  # the prompt contains the target word
    samples[:, 0] = 0
    extra = _rand(ctx, c["n"], c["length"]) < 0.08
    extra[:, : c["skip"]] = False
    samples[extra] = c["target"]  # some samples say it twice or more
    out = ctx.call(impl, samples, c["target"], c["skip"])
    return {"frequency": _scalar(out, "target_frequency's result")}


def freq_tokens(samples, target_id, skip=1):
    return (samples[:, skip:] == target_id).float().mean()


def freq_prompt_counted(samples, target_id, skip=1):
    return (samples == target_id).any(-1).float().mean()


def freq_count(samples, target_id, skip=1):
    return (samples[:, skip:] == target_id).any(-1).float().sum()


def freq_mentions_per_sample(samples, target_id, skip=1):
    return (samples[:, skip:] == target_id).float().sum(-1).mean()


EXERCISES = [
    Exercise(
        name="in_quote_labels", title="in_quote_labels", reference=ref.in_quote_labels, run=run_in_quote, kind="function",
        cases=[dict(seed=701, rows=4, pos=14, n_names=3, describe="tokens of shape (4, 14): quotation marks (id 3), "
                    "a second <bos> (id 0) mid-row in rows 0 and 2, some quotations left open"),
               dict(seed=702, rows=3, pos=20, n_names=5, describe="tokens of shape (3, 20): quotation marks (id 3), "
                    "a second <bos> mid-row in rows 0 and 2, some quotations left open")],
        hidden_cases=[dict(seed=0, rows=8, pos=30, n_names=4), dict(seed=0, rows=2, pos=8, n_names=2)],
        mistakes=[
            Mistake("marks labelled inside", "the quotation marks themselves are False: only the tokens strictly between "
                    "an opening and a closing mark are inside.", quote_marks_inside),
            Mistake("opening mark counted", "flip the state at a mark and label the mark False: toggling first and then "
                    "labelling marks every opening quotation mark as inside.", quote_opening_inside),
            Mistake("closing mark counted", "label the mark False: labelling with the state before the toggle marks "
                    "every closing quotation mark as inside.", quote_closing_inside),
            Mistake("<bos> ignored", "a <bos> starts a new document, outside any quotation: reset the state there "
                    "(a quotation left open before it must not run on).", quote_no_bos),
        ],
        stuck="Loop over each row with a flag `inside`: at <bos> set it False; at a quotation mark flip it and leave the mark "
              "False (continue); at any other token write the flag.",
    ),
    Exercise(
        name="name_seen_labels", title="name_seen_labels", reference=ref.name_seen_labels, run=run_name_seen, kind="function",
        cases=[dict(seed=711, rows=4, pos=16, n_names=3, describe="tokens of shape (4, 16): names are ids 10-12, "
                    "a second <bos> (id 0) mid-row in rows 0 and 2"),
               dict(seed=712, rows=3, pos=22, n_names=6, describe="tokens of shape (3, 22): names are ids 10-15, "
                    "a second <bos> mid-row in rows 0 and 2")],
        hidden_cases=[dict(seed=0, rows=8, pos=30, n_names=8), dict(seed=0, rows=2, pos=8, n_names=2)],
        mistakes=[
            Mistake("current name counted", "ask whether the name was seen *before* adding it to the seen set: "
                    "otherwise every name counts as seen, first mentions included.", seen_added_first),
            Mistake("any earlier name", "the label is whether *this* name was mentioned before, not whether any name was.", seen_any_name),
            Mistake("<bos> ignored", "a <bos> starts a new document: empty the seen set there (names of the previous "
                    "story do not count).", seen_no_bos),
            Mistake("every token labelled", "only names get a True label (tokens in name_ids); other repeated words stay False.", seen_any_token),
        ],
        stuck="For each row keep a set `seen`: at <bos> empty it; at a name write `t in seen`, then add t.",
    ),
    Exercise(
        name="standardize", title="standardize", reference=ref.standardize, run=run_standardize, kind="function",
        cases=[dict(seed=721, n_train=30, n_test=12, d=5, constant=False, describe="x_train (30, 5) and x_test (12, 5), "
                    "every feature with its own mean and scale; the test set is shifted and wider"),
               dict(seed=722, n_train=20, n_test=9, d=7, constant=True, describe="x_train (20, 7) and x_test (9, 7); "
                    "feature 0 is constant in training (its std is 0)")],
        hidden_cases=[dict(seed=0, n_train=100, n_test=40, d=16, constant=True), dict(seed=0, n_train=6, n_test=3, d=2, constant=False)],
        mistakes=[
            Mistake("test statistics", "standardize the test set with the *training* mean and std: the test set must not "
                    "be looked at while fitting (and its own statistics hide a shift).", std_test_own_stats),
            Mistake("one mean for all features", "take the mean and std of each feature (column, dim 0), not of all numbers at once.", std_global),
            Mistake("not centred", "subtract the training mean before dividing by the std.", std_not_centred),
            Mistake("per row", "statistics run over the examples (dim 0), one per feature; you normalised each row (dim -1).", std_per_row),
            Mistake("no eps", "add eps to the std: a feature that is constant in training has std 0, and dividing by it gives inf/nan.", std_no_eps),
        ],
        stuck="mean, std = x_train.mean(0), x_train.std(0) + eps; return (x_train - mean) / std, (x_test - mean) / std.",
    ),
    Exercise(
        name="probe_loss", title="probe_loss", reference=ref.probe_loss, run=run_probe_loss, kind="function",
        cases=[dict(seed=731, n=12, classes=2, d=6, wd=0.01, describe="logits (12, 2), labels (12,), W (6, 2), weight_decay=0.01"),
               dict(seed=732, n=9, classes=5, d=4, wd=0.1, describe="logits (9, 5), labels (9,), W (4, 5), weight_decay=0.1")],
        hidden_cases=[dict(seed=0, n=50, classes=24, d=16, wd=0.001), dict(seed=0, n=3, classes=3, d=2, wd=1.0)],
        mistakes=[
            Mistake("summed cross-entropy", "average the cross-entropy over the examples (F.cross_entropy's default), "
                    "or the penalty's weight would depend on the batch size.", loss_summed),
            Mistake("norm, not squared", "the penalty is the *squared* Frobenius norm: W.pow(2).sum(), not W.norm().", loss_norm_not_squared),
            Mistake("no penalty", "add weight_decay * (W ** 2).sum() to the cross-entropy.", loss_no_penalty),
            Mistake("mean penalty", "sum the squared weights (W.pow(2).sum()), do not average them.", loss_mean_penalty),
            Mistake("nll of raw logits", "F.nll_loss expects log-probabilities: use F.cross_entropy on the logits (it applies log_softmax).", loss_nll_of_logits),
        ],
        stuck="F.cross_entropy(logits, labels) + weight_decay * W.pow(2).sum().",
    ),
    Exercise(
        name="train_probe", title="train_probe", reference=ref.train_probe, run=run_train_probe, kind="function",
        uses="probe_loss", atol=2e-3, rtol=2e-3,
        cases=[dict(seed=741, n=60, d=5, classes=2, steps=40, lr=0.1, wd=0.01,
                    describe="x (60, 5), 2 classes (unequal sizes), steps=40, lr=0.1, weight_decay=0.01"),
               dict(seed=742, n=80, d=6, classes=4, steps=30, lr=0.05, wd=0.001,
                    describe="x (80, 6), 4 classes (unequal sizes), steps=30, lr=0.05, weight_decay=0.001")],
        hidden_cases=[dict(seed=0, n=200, d=12, classes=6, steps=50, lr=0.05, wd=0.001), dict(seed=0, n=30, d=3, classes=3, steps=20, lr=0.2, wd=0.05)],
        mistakes=[
            Mistake("no zero_grad", "call optimizer.zero_grad() every step: gradients accumulate across backward() calls.", probe_no_zero_grad),
            Mistake("squared error", "a probe classifies: train on the cross-entropy of the logits (probe_loss), not a squared error "
                    "against one-hot labels.", probe_mse),
            Mistake("no bias", "give the probe a bias b [n_classes] and train it too (x @ W + b): it sets the base rate of each class.", probe_no_bias),
            Mistake("bias decayed", "weight decay applies to W only, never to the bias.", probe_bias_decayed),
        ],
        stuck="W = zeros(d, n_classes, requires_grad=True), b likewise; Adam([W, b], lr); each step: loss = probe_loss(x @ W + b, "
              "labels, W, weight_decay); zero_grad; backward; step. Return W.detach(), b.detach().",
    ),
    Exercise(
        name="majority_baseline", title="majority_baseline", reference=ref.majority_baseline, run=run_majority, kind="function",
        cases=[dict(seed=751, classes=2, n_train=40, n_test=30, describe="train_labels (40,) mostly 0, test_labels (30,) mostly 1"),
               dict(seed=752, classes=5, n_train=60, n_test=25, describe="train_labels (60,) of 5 classes, class 0 commonest; "
                    "test_labels (25,) where the last class is commonest")],
        hidden_cases=[dict(seed=0, classes=24, n_train=300, n_test=100), dict(seed=0, classes=3, n_train=10, n_test=7)],
        mistakes=[
            Mistake("majority of the test set", "the baseline may only learn from the training labels: find the commonest "
                    "*training* label, then score it on the test labels.", maj_from_test),
            Mistake("chance", "the majority baseline is not 1 / n_classes: it is the test accuracy of always answering the "
                    "commonest training label.", maj_chance),
            Mistake("training frequency", "score the commonest training label on the *test* labels; its frequency in the "
                    "training set is not a test accuracy.", maj_train_frequency),
            Mistake("least common class", "predict the *most* common training label (argmax of the counts).", maj_minority),
        ],
        stuck="majority = torch.bincount(train_labels).argmax(); (test_labels == majority).float().mean().",
    ),
    Exercise(
        name="probe_direction", title="probe_direction", reference=ref.probe_direction, run=run_probe_direction, kind="function",
        cases=[dict(seed=761, d=6, classes=2, batched=0, describe="W (6, 2) trained on standardized features, std (6,) from "
                    "0.1 to 3.1, positive=1, negative=0"),
               dict(seed=762, d=8, classes=5, batched=4, describe="W (8, 5), std (8,), positive and negative: tensors of 4 "
                    "classes each (one direction per row: result (4, 8))")],
        hidden_cases=[dict(seed=0, d=16, classes=24, batched=10), dict(seed=0, d=3, classes=2, batched=0)],
        mistakes=[
            Mistake("std ignored", "the probe read (x - mean) / std, so in the residual stream its weights are W / std: "
                    "divide by std before normalising.", dir_std_ignored),
            Mistake("multiplied by std", "divide by std: the logit is W . (x - mean) / std, so the direction in x is W / std.", dir_times_std),
            Mistake("sign", "the direction raises class `positive` against `negative`: W[:, positive] - W[:, negative].", dir_sign),
            Mistake("not unit", "return a unit vector: divide by its norm (per row when there are several).", dir_not_unit),
        ],
        stuck="w = W[:, positive] - W[:, negative] (transpose to [n, d] when the classes are tensors); w = w / std; "
              "w / w.norm(dim=-1, keepdim=True).",
    ),
    Exercise(
        name="push_along", title="push_along", reference=ref.push_along, run=run_push, kind="function",
        cases=[dict(seed=771, n=5, d=8, per_row=False, alpha=0.5, describe="resid (5, 8), rows of very different norms; "
                    "one direction (8,) of norm ~8; alpha=0.5"),
               dict(seed=772, n=4, d=6, per_row=True, alpha=-1.0, describe="resid (4, 6); one direction per row (4, 6); alpha=-1.0")],
        hidden_cases=[dict(seed=0, n=20, d=16, per_row=True, alpha=0.25), dict(seed=0, n=2, d=3, per_row=False, alpha=2.0)],
        mistakes=[
            Mistake("direction not normalised", "normalise the direction to unit length: the size of the push comes from "
                    "alpha and the residual's norm only.", push_not_normalised),
            Mistake("residual norm ignored", "scale the push by each row's own norm: alpha * resid.norm(dim=-1, keepdim=True) * unit.", push_no_resid_norm),
            Mistake("one norm for the batch", "each row moves by alpha times *its own* norm (norm(dim=-1, keepdim=True)), "
                    "not the norm of the whole batch.", push_batch_norm),
            Mistake("replaced, not added", "add the push to the residual stream (resid + ...), keeping what was there.", push_replaced),
        ],
        stuck="unit = direction / direction.norm(dim=-1, keepdim=True); resid + alpha * resid.norm(dim=-1, keepdim=True) * unit.",
    ),
    Exercise(
        name="top_name_rate", title="top_name_rate", reference=ref.top_name_rate, run=run_top_name, kind="function",
        cases=[dict(seed=781, n=10, vocab=30, names=6, describe="logits (10, 30), 6 name ids, target (10,) indices into "
                    "name_ids; in half the rows a non-name word has the highest logit"),
               dict(seed=782, n=8, vocab=20, names=4, describe="logits (8, 20), 4 name ids, target (8,); a non-name word "
                    "has the highest logit in half the rows")],
        hidden_cases=[dict(seed=0, n=40, vocab=199, names=24), dict(seed=0, n=3, vocab=8, names=2)],
        mistakes=[
            Mistake("whole vocabulary", "compare the names only (logits[:, name_ids]): the top token overall is often not a name.", top_whole_vocab),
            Mistake("count", "return the fraction of rows (.mean()), not the count.", top_count),
            Mistake("token ids compared", "argmax over logits[:, name_ids] is an index into name_ids, like target; "
                    "do not compare it with token ids.", top_token_id),
            Mistake("softmax over the batch", "the top name is a per-row argmax over the names; a softmax over the batch "
                    "(dim 0) changes which name wins.", top_softmax_batch),
        ],
        stuck="(logits[:, name_ids].argmax(-1) == target).float().mean().",
    ),
    Exercise(
        name="mean_difference", title="mean_difference", reference=ref.mean_difference, run=run_mean_difference, kind="function",
        cases=[dict(seed=791, n_a=12, n_b=7, d=5, describe="acts_a (12, 5) and acts_b (7, 5): different sizes and means"),
               dict(seed=792, n_a=5, n_b=9, d=8, describe="acts_a (5, 8) and acts_b (9, 8): different sizes and means")],
        hidden_cases=[dict(seed=0, n_a=100, n_b=40, d=16), dict(seed=0, n_a=2, n_b=3, d=3)],
        mistakes=[
            Mistake("reversed", "the vector points from b to a: mean(acts_a) - mean(acts_b).", md_reversed),
            Mistake("paired rows", "the two sets are not paired and may differ in size: take each set's own mean over all its rows.", md_paired),
            Mistake("normalised", "keep the difference's own length: its norm is what makes coefficient 1 a natural scale.", md_normalised),
            Mistake("pooled mean", "subtract the mean of acts_b alone, not the mean of both sets together.", md_pooled),
        ],
        stuck="acts_a.mean(0) - acts_b.mean(0).",
    ),
    Exercise(
        name="add_vector", title="add_vector", reference=ref.add_vector, run=run_add_vector, kind="function",
        cases=[dict(seed=801, batch=3, pos=6, d=5, coefficient=2.0, skip=1, describe="resid (3, 6, 5), vector (5,), coefficient=2.0, skip=1"),
               dict(seed=802, batch=2, pos=7, d=4, coefficient=-0.5, skip=3, describe="resid (2, 7, 4), vector (4,), coefficient=-0.5, skip=3")],
        hidden_cases=[dict(seed=0, batch=4, pos=20, d=16, coefficient=4.0, skip=1), dict(seed=0, batch=1, pos=3, d=2, coefficient=8.0, skip=2)],
        mistakes=[
            Mistake("every position", "leave the first `skip` positions (the <bos>, the prompt) alone: add from position skip on.", add_everywhere),
            Mistake("one position only", "add at every position from skip on (out[:, skip:]), not at position skip alone.", add_one_position),
            Mistake("unit vector", "add coefficient * vector as given: normalising it changes what coefficient 1 means.", add_unit),
            Mistake("positions before skip", "add at positions skip and after (out[:, skip:]), not before.", add_before_skip),
        ],
        stuck="out = resid.clone(); out[:, skip:] = out[:, skip:] + coefficient * vector; return out.",
    ),
    Exercise(
        name="target_frequency", title="target_frequency", reference=ref.target_frequency, run=run_target_frequency, kind="function",
        cases=[dict(seed=811, n=12, length=10, vocab=15, target=5, skip=1, describe="samples (12, 10), target_id=5, skip=1 "
                    "(the prompt is <bos>); some samples say the target twice"),
               dict(seed=812, n=9, length=14, vocab=25, target=7, skip=3, describe="samples (9, 14), target_id=7, skip=3: the "
                    "3-token prompt contains the target in every sample")],
        hidden_cases=[dict(seed=0, n=100, length=40, vocab=199, target=21, skip=1), dict(seed=0, n=4, length=5, vocab=6, target=2, skip=2)],
        mistakes=[
            Mistake("token frequency", "count samples, not tokens: a sample counts once if it contains the target at least "
                    "once (.any(-1)), then take the mean over samples.", freq_tokens),
            Mistake("prompt counted", "leave the first `skip` tokens (the prompt) out: samples[:, skip:].", freq_prompt_counted),
            Mistake("count", "return the fraction of samples (.mean()), not their number.", freq_count),
            Mistake("mentions per sample", "the target frequency is the fraction of samples that mention the target at all "
                    "(.any(-1)), not the average number of mentions.", freq_mentions_per_sample),
        ],
        stuck="(samples[:, skip:] == target_id).any(-1).float().mean().",
    ),
]
