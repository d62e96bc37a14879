"""Chapter 6 exercises: grokking, and reading the modular-addition algorithm off the weights.

Every input is built from the case's seed, so a hidden case with another seed gets other numbers.
The inputs are shaped so that each catalogued mistake changes the output: asymmetric functions of
(a, b) (so a- and b-major orders differ), embeddings with several frequencies of unequal norm (so
thresholds matter), logits with a large mean per input (so forgetting to centre shows), non-zero
biases (so leaving them out of a weight norm shows), and so on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from utils import grokking as ref
from utils.checks import Exercise, LearnerError, Mistake


def _tensor(value, what: str, dtype=None) -> Tensor:
    """A learner's result as a tensor: a number becomes a 0-d tensor, a list of numbers a 1-d one."""
    if isinstance(value, bool):
        raise LearnerError(f"{what} should be a number or a tensor, got a bool")
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if isinstance(value, (set, frozenset)):
        raise LearnerError(f"{what} should be a sorted list (or a tensor), got a set: a set has no order")
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
        return torch.tensor(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return torch.tensor([float(v) for v in value])
    if not isinstance(value, Tensor):
        raise LearnerError(f"{what} should be a tensor, got {type(value).__name__}")
    value = value.detach()
    return value.to(dtype) if dtype is not None else value


def _pair(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise LearnerError(f"{what} should return two things (a tuple), got {type(value).__name__}"
                           + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""))
    return tuple(value)


def _model(ctx, p: int, d_model: int = 16, d_mlp: int = 32):
    """A small grokking model (one layer, ReLU, no LayerNorm) with random non-zero weights and biases."""
    model = ref.new_model(p, seed=ctx.case["seed"] % 10_000, d_model=d_model, n_heads=2, d_mlp=d_mlp)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(ctx.randn(*param.shape, scale=0.3))
    return model


def _grid(p: int) -> tuple[Tensor, Tensor]:
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    return a, b


def _embedding(ctx, p: int, d: int, freqs: list[int], scales: list[float], noise: float) -> Tensor:
    """(p + 1, d): cos and sin of each frequency k (times ``scale``) along random directions,
    plus noise; the last row (the "=" token) is unrelated and large."""
    x = torch.arange(p, dtype=torch.float32)[:, None]
    W = ctx.randn(p + 1, d, scale=noise)
    for k, s in zip(freqs, scales):
        for fn in (torch.cos, torch.sin):  # along a random unit direction, so the frequency's norm is s·sqrt(p)
            v = ctx.randn(1, d)
            W[:p] += s * fn(2 * math.pi * k * x / p) * v / v.norm()
    W[p] = ctx.randn(d, scale=5.0)
    return W


def _logits(ctx, p: int, freqs: list[int], offset: float = 3.0) -> Tensor:
    """Full-grid logits (p², p) made of cos(w(a + b − c)) terms of ``freqs`` (random amplitudes and
    phases), noise, and a large per-input mean."""
    a, b = _grid(p)
    c = torch.arange(p, dtype=torch.float64)[None, :]
    phase = 2 * math.pi * (a[:, None] + b[:, None] - c) / p
    logits = ctx.randn(p * p, p).double() * 0.4
    for k in freqs:
        amp = 1.0 + 2.0 * float(torch.rand((), generator=ctx.gen))
        shift = float(torch.rand((), generator=ctx.gen)) * 2 * math.pi
        logits += amp * torch.cos(k * phase + shift)
    logits += offset * (1 + ctx.randn(p * p, 1).double())
    return logits.float()


# ---- 1. all_pairs -----------------------------------------------------------------------------
def run_all_pairs(impl, ctx):
    tokens, labels = _pair(ctx.call(impl, ctx.case["p"]), "all_pairs")
    return {"tokens": _tensor(tokens, "tokens"), "labels": _tensor(labels, "labels")}


def pairs_b_major(p):
    a = torch.arange(p).repeat(p)
    b = torch.arange(p).repeat_interleave(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p


def pairs_no_mod(p):
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1), a + b


def pairs_eq_zero(p):
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.zeros_like(a)], dim=1), (a + b) % p


def pairs_no_eq(p):
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b], dim=1), (a + b) % p


def pairs_eq_p_plus_1(p):
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p + 1)], dim=1), (a + b) % p


# ---- 2. answer_logits -------------------------------------------------------------------------
def run_answer_logits(impl, ctx):
    p = ctx.case["p"]
    model = _model(ctx, p)
    tokens = ref.all_pairs(p)[0][torch.randperm(p * p, generator=ctx.gen)[: ctx.case["batch"]]]
    return {"logits": _tensor(ctx.call(impl, model, tokens, p), "answer_logits's result")}


def logits_first_position(model, tokens, p):
    return model(tokens)[:, 0, :p]


def logits_whole_vocab(model, tokens, p):
    return model(tokens)[:, -1]


def logits_softmax(model, tokens, p):
    return model(tokens)[:, -1, :p].softmax(-1)


def logits_log_softmax(model, tokens, p):
    return model(tokens)[:, -1].log_softmax(-1)[:, :p]


def logits_every_position(model, tokens, p):
    return model(tokens)[:, :, :p]


# ---- 3. mirror_mask ---------------------------------------------------------------------------
def run_mirror_mask(impl, ctx):
    c = ctx.case
    data = ref.modular_addition(c["p"], c["frac"], seed=c["seed"] % 1000)
    return {"mask": _tensor(ctx.call(impl, data), "mirror_mask's result").float()}


def _in_train(data):
    in_train = torch.zeros(data.p * data.p, dtype=torch.bool)
    in_train[data.train] = True
    return in_train


def mirror_pair_itself(data):
    a, b = data.tokens[data.test, 0], data.tokens[data.test, 1]
    return _in_train(data)[a * data.p + b]


def mirror_in_test(data):
    a, b = data.tokens[data.test, 0], data.tokens[data.test, 1]
    return ~_in_train(data)[b * data.p + a]


def mirror_every_pair(data):
    a, b = data.tokens[:, 0], data.tokens[:, 1]
    return _in_train(data)[b * data.p + a]


def mirror_over_train(data):
    a, b = data.tokens[data.train, 0], data.tokens[data.train, 1]
    return _in_train(data)[b * data.p + a]


def mirror_position_in_split(data):
    a, b = data.tokens[data.test, 0], data.tokens[data.test, 1]
    # the mirror's row number compared with positions 0..n_train-1, not with the training rows
    return (b * data.p + a) < len(data.train)


# ---- 4. weight_norm ---------------------------------------------------------------------------
def run_weight_norm(impl, ctx):
    model = _model(ctx, ctx.case["p"], d_model=ctx.case["d_model"], d_mlp=2 * ctx.case["d_model"])
    return {"weight norm": _tensor(ctx.call(impl, model), "weight_norm's result").double()}


def wn_sqrt(model):
    return math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))


def wn_weights_only(model):
    return sum(float((p.detach().double() ** 2).sum()) for n, p in model.named_parameters()
               if not n.rsplit(".", 1)[-1].startswith("b"))


def wn_mean(model):
    return sum(float((p.detach().double() ** 2).mean()) for p in model.parameters())


def wn_sum_of_norms(model):
    return sum(float(p.detach().double().norm()) for p in model.parameters())


def wn_abs(model):
    return sum(float(p.detach().double().abs().sum()) for p in model.parameters())


# ---- 5. fourier_basis -------------------------------------------------------------------------
def run_fourier_basis(impl, ctx):
    return {"basis": _tensor(ctx.call(impl, ctx.case["p"]), "fourier_basis's result").float()}


def _raw_rows(p, two_pi=True, order="interleaved"):
    x = torch.arange(p, dtype=torch.float64)
    f = 2 * math.pi if two_pi else 1.0
    ks = range(1, (p - 1) // 2 + 1)
    cos = [torch.cos(f * k * x / p) for k in ks]
    sin = [torch.sin(f * k * x / p) for k in ks]
    if order == "interleaved":
        rows = [r for pair in zip(cos, sin) for r in pair]
    elif order == "sin_first":
        rows = [r for pair in zip(sin, cos) for r in pair]
    else:  # all cos, then all sin
        rows = cos + sin
    return torch.stack([torch.ones(p, dtype=torch.float64)] + rows)


def fb_unnormalised(p):
    return _raw_rows(p).float()


def fb_sin_first(p):
    B = _raw_rows(p, order="sin_first")
    return (B / B.norm(dim=1, keepdim=True)).float()


def fb_cos_block(p):
    B = _raw_rows(p, order="blocks")
    return (B / B.norm(dim=1, keepdim=True)).float()


def fb_no_two_pi(p):
    B = _raw_rows(p, two_pi=False)
    return (B / B.norm(dim=1, keepdim=True)).float()


def fb_const_unnormalised(p):
    B = _raw_rows(p)
    B[1:] = B[1:] / B[1:].norm(dim=1, keepdim=True)
    return B.float()


def fb_columns(p):
    B = _raw_rows(p)
    return (B / B.norm(dim=1, keepdim=True)).T.contiguous().float()


# ---- 6. embedding_frequency_norms --------------------------------------------------------------
def run_embedding_norms(impl, ctx):
    c = ctx.case
    W_E = _embedding(ctx, c["p"], c["d"], c["freqs"], c["scales"], noise=0.3)
    return {"norms": _tensor(ctx.call(impl, W_E, c["p"]), "embedding_frequency_norms's result").float()}


def _coeff_power(W_E, p):
    return ((ref.fourier_basis(p).to(W_E.dtype) @ W_E[:p]) ** 2).sum(-1)


def efn_cos_only(W_E, p):
    return _coeff_power(W_E, p)[1::2].sqrt()


def efn_sum_of_norms(W_E, p):
    per_row = _coeff_power(W_E, p).sqrt()
    return per_row[1::2] + per_row[2::2]


def efn_squared(W_E, p):
    per_row = _coeff_power(W_E, p)
    return per_row[1::2] + per_row[2::2]


def efn_pairs_shifted(W_E, p):
    per_row = _coeff_power(W_E, p)
    return (per_row[0:-1:2] + per_row[1::2]).sqrt()


def efn_eq_row(W_E, p):
    # the "=" row taken as number 0 and the last number dropped
    per_row = ((ref.fourier_basis(p).to(W_E.dtype) @ torch.cat([W_E[p:], W_E[: p - 1]])) ** 2).sum(-1)
    return (per_row[1::2] + per_row[2::2]).sqrt()


# ---- 7. key_frequencies -----------------------------------------------------------------------
def run_key_frequencies(impl, ctx):
    c = ctx.case
    W_E = _embedding(ctx, c["p"], c["d"], c["freqs"], c["scales"], noise=0.05) * c["gain"]
    keys = ctx.call(impl, W_E, c["p"], c["threshold"])
    return {"key frequencies": _tensor(keys, "key_frequencies's result").flatten().double()}


def kf_zero_based(W_E, p, threshold=0.5):
    norms = ref.embedding_frequency_norms(W_E, p)
    return [k for k in range(len(norms)) if norms[k] >= threshold * norms.max()]


def kf_mean(W_E, p, threshold=0.5):
    norms = ref.embedding_frequency_norms(W_E, p)
    return [k + 1 for k in range(len(norms)) if norms[k] >= threshold * norms.mean()]


def kf_absolute(W_E, p, threshold=0.5):
    norms = ref.embedding_frequency_norms(W_E, p)
    return [k + 1 for k in range(len(norms)) if norms[k] >= threshold]


def kf_top3(W_E, p, threshold=0.5):
    norms = ref.embedding_frequency_norms(W_E, p)
    return sorted((norms.topk(3).indices + 1).tolist())


def kf_by_size(W_E, p, threshold=0.5):
    norms = ref.embedding_frequency_norms(W_E, p)
    order = norms.argsort(descending=True).tolist()
    return [k + 1 for k in order if norms[k] >= threshold * norms.max()]


# ---- 8. fourier_transform_2d ------------------------------------------------------------------
def run_fourier_2d(impl, ctx):
    c = ctx.case
    p = c["p"]
    a, b = _grid(p)
    # several functions of (a, b), none symmetric: a- and b-axes must not be confused
    grids = torch.stack([torch.cos(2 * math.pi * 2 * a / p) * (1 + b) / p,
                         torch.sin(2 * math.pi * (a + 3 * b) / p) + 0.1 * a,
                         (a * b) % p / p]).float().reshape(3, p, p)
    grids = grids + ctx.randn(3, p, p, scale=0.2)
    if c.get("lead"):
        grids = grids.reshape(3, 1, p, p).expand(3, c["lead"], p, p) + ctx.randn(3, c["lead"], p, p, scale=0.1)
    return {"components": _tensor(ctx.call(impl, grids, p), "fourier_transform_2d's result").float()}


def f2_transposed_basis(grid, p):
    B = ref.fourier_basis(p).to(grid.dtype)
    return B.T @ grid @ B


def f2_a_only(grid, p):
    return ref.fourier_basis(p).to(grid.dtype) @ grid


def f2_b_only(grid, p):
    return grid @ ref.fourier_basis(p).to(grid.dtype).T


def f2_swapped_axes(grid, p):
    B = ref.fourier_basis(p).to(grid.dtype)
    return (B @ grid @ B.T).transpose(-1, -2)


# ---- 9. neuron_frequency_fractions ------------------------------------------------------------
def run_neuron_fractions(impl, ctx):
    c = ctx.case
    p = c["p"]
    a, b = _grid(p)
    cols = []
    for _ in range(c["neurons"]):
        k1, k2 = (int(v) for v in torch.randint(1, (p - 1) // 2 + 1, (2,), generator=ctx.gen))
        w1, w2 = 2 * math.pi * k1 / p, 2 * math.pi * k2 / p
        mix = torch.rand(4, generator=ctx.gen).double()
        cols.append(3 * mix[0] + mix[1] * torch.cos(w1 * a) * torch.cos(w1 * b) + mix[2] * torch.sin(w1 * a)
                    + mix[3] * torch.cos(w2 * (a + 2 * b)))
    acts = torch.stack(cols, dim=1).float() + ctx.randn(p * p, c["neurons"], scale=0.05)
    return {"fractions": _tensor(ctx.call(impl, acts, p), "neuron_frequency_fractions's result").float()}


def _power(acts, p):
    return ref.fourier_transform_2d(acts.T.reshape(-1, p, p), p) ** 2


def nf_mean_in_total(acts, p):
    power = _power(acts, p)
    total = power.sum(dim=(1, 2))
    out = []
    for k in range(1, (p - 1) // 2 + 1):
        rows = [0, 2 * k - 1, 2 * k]
        out.append(power[:, rows][:, :, rows].sum(dim=(1, 2)) - power[:, 0, 0])
    return torch.stack(out, dim=1) / total[:, None]


def nf_no_const_cross(acts, p):
    power = _power(acts, p)
    power[:, 0, 0] = 0
    total = power.sum(dim=(1, 2))
    out = [power[:, 2 * k - 1: 2 * k + 1, 2 * k - 1: 2 * k + 1].sum(dim=(1, 2)) for k in range(1, (p - 1) // 2 + 1)]
    return torch.stack(out, dim=1) / total[:, None]


def nf_a_frequency_only(acts, p):
    power = _power(acts, p)
    power[:, 0, 0] = 0
    total = power.sum(dim=(1, 2))
    out = [power[:, 2 * k - 1: 2 * k + 1, :].sum(dim=(1, 2)) for k in range(1, (p - 1) // 2 + 1)]
    return torch.stack(out, dim=1) / total[:, None]


def nf_not_normalised(acts, p):
    power = _power(acts, p)
    out = []
    for k in range(1, (p - 1) // 2 + 1):
        rows = [0, 2 * k - 1, 2 * k]
        out.append(power[:, rows][:, :, rows].sum(dim=(1, 2)) - power[:, 0, 0])
    return torch.stack(out, dim=1)


# ---- 10. components_for_fraction --------------------------------------------------------------
def run_components(impl, ctx):
    c = ctx.case
    values = torch.rand(c["n"], generator=ctx.gen).pow(c["skew"])  # a few large, many small
    out = {}
    for fraction in c["fractions"]:
        out[f"fraction={fraction}"] = _tensor(ctx.call(impl, values, fraction), "components_for_fraction's result").double()
    return out


def cf_unsorted(values, fraction):
    cumulative = values.flatten().double().cumsum(0)
    return int((cumulative < fraction * cumulative[-1]).sum()) + 1


def cf_ascending(values, fraction):
    cumulative = values.flatten().double().sort().values.cumsum(0)
    return int((cumulative < fraction * cumulative[-1]).sum()) + 1


def cf_one_short(values, fraction):
    cumulative = values.flatten().double().sort(descending=True).values.cumsum(0)
    return int((cumulative < fraction * cumulative[-1]).sum())


def cf_fraction_ignored(values, fraction):
    cumulative = values.flatten().double().sort(descending=True).values.cumsum(0)
    return int((cumulative < 0.9 * cumulative[-1]).sum()) + 1


def cf_fraction_of_count(values, fraction):
    return math.ceil(fraction * values.numel())


# ---- 11. logit_directions ---------------------------------------------------------------------
def run_logit_directions(impl, ctx):
    c = ctx.case
    return {"directions": _tensor(ctx.call(impl, c["p"], list(c["freqs"])), "logit_directions's result").float()}


def _dirs(p, freqs, sign=1, normalise=True, order=(torch.cos, torch.sin), two_pi=True):
    a, b = _grid(p)
    c = torch.arange(p, dtype=torch.float64)[None, :]
    f = 2 * math.pi if two_pi else 1.0
    phase = f * ((a[:, None] + b[:, None] + sign * c)) / p
    out = []
    for k in freqs:
        for fn in order:
            d = fn(k * phase)
            out.append(d / d.norm() if normalise else d)
    return torch.stack(out).float()


def ld_plus_c(p, freqs):
    return _dirs(p, freqs, sign=1)


def ld_unnormalised(p, freqs):
    return _dirs(p, freqs, sign=-1, normalise=False)


def ld_sin_first(p, freqs):
    return _dirs(p, freqs, sign=-1, order=(torch.sin, torch.cos))


def ld_no_two_pi(p, freqs):
    return _dirs(p, freqs, sign=-1, two_pi=False)


def ld_cos_only(p, freqs):
    return _dirs(p, freqs, sign=-1, order=(torch.cos,))


# ---- 12. logit_frequency_projection -----------------------------------------------------------
def run_projection(impl, ctx):
    c = ctx.case
    logits = _logits(ctx, c["p"], c["true_freqs"])
    return {"projection": _tensor(ctx.call(impl, logits, c["p"], list(c["freqs"])),
                                  "logit_frequency_projection's result").float()}


def proj_cos_only(logits, p, freqs):
    dirs = ref.logit_directions(p, freqs)[0::2].to(logits.dtype)
    return torch.einsum("k,kxc->xc", torch.einsum("kxc,xc->k", dirs, logits), dirs)


def proj_unnormalised(logits, p, freqs):
    dirs = _dirs(p, freqs, sign=-1, normalise=False).to(logits.dtype)
    return torch.einsum("k,kxc->xc", torch.einsum("kxc,xc->k", dirs, logits), dirs)


def proj_coefficients(logits, p, freqs):
    dirs = ref.logit_directions(p, freqs).to(logits.dtype)
    return torch.einsum("kxc,xc->k", dirs, logits)


def proj_removed(logits, p, freqs):
    return logits - ref.logit_frequency_projection(logits, p, freqs)


def proj_per_input(logits, p, freqs):
    # coefficients fitted separately for every input (a, b), not once over the whole grid
    dirs = ref.logit_directions(p, freqs).to(logits.dtype)
    return torch.einsum("kx,kxc->xc", torch.einsum("kxc,xc->kx", dirs, logits), dirs) * (p * p)


# ---- 13. fraction_of_logit_variance -----------------------------------------------------------
def run_variance(impl, ctx):
    c = ctx.case
    logits = _logits(ctx, c["p"], c["true_freqs"], offset=c["offset"])
    value = ctx.call(impl, logits, c["p"], list(c["freqs"]))
    return {"fraction": _tensor(value, "fraction_of_logit_variance's result").double()}


def fv_uncentred(logits, p, freqs):
    part = ref.logit_frequency_projection(logits, p, freqs)
    return float((part.double() ** 2).sum() / (logits.double() ** 2).sum())


def fv_norm_ratio(logits, p, freqs):
    centred = logits - logits.mean(-1, keepdim=True)
    part = ref.logit_frequency_projection(logits, p, freqs)
    return float(part.double().norm() / centred.double().norm())


def fv_centred_over_inputs(logits, p, freqs):
    centred = logits - logits.mean(0, keepdim=True)
    part = ref.logit_frequency_projection(logits, p, freqs)
    return float((part.double() ** 2).sum() / (centred.double() ** 2).sum())


def fv_one_minus(logits, p, freqs):
    centred = logits - logits.mean(-1, keepdim=True)
    part = ref.logit_frequency_projection(logits, p, freqs)
    return 1 - float((part.double() ** 2).sum() / (centred.double() ** 2).sum())


# ---- 14. restricted_and_excluded_loss --------------------------------------------------------
def run_restricted(impl, ctx):
    c = ctx.case
    data = ref.modular_addition(c["p"], c["frac"], seed=c["seed"] % 1000)
    logits = _logits(ctx, c["p"], c["true_freqs"], offset=1.0)
    # the right answers get a boost on the training pairs only: a "memorised" part outside the key frequencies
    boost = torch.zeros_like(logits)
    boost[data.train, data.labels[data.train]] = c["memorised"]
    restricted, excluded = _pair(ctx.call(impl, logits + boost, data, list(c["freqs"])), "restricted_and_excluded_loss")
    return {"restricted loss": _tensor(restricted, "the restricted loss").double(),
            "excluded loss": _tensor(excluded, "the excluded loss").double()}


def _losses(logits, data, freqs, rows):
    r = F.cross_entropy(ref.restricted_logits(logits, data.p, freqs)[rows].double(), data.labels[rows]).item()
    e = F.cross_entropy(ref.excluded_logits(logits, data.p, freqs)[rows].double(), data.labels[rows]).item()
    return r, e


def re_test_pairs(logits, data, freqs):
    return _losses(logits, data, freqs, data.test)


def re_all_pairs(logits, data, freqs):
    return _losses(logits, data, freqs, torch.arange(data.p ** 2))


def re_swapped(logits, data, freqs):
    r, e = _losses(logits, data, freqs, data.train)
    return e, r


def re_full_logits_kept(logits, data, freqs):
    rows = data.train
    r = F.cross_entropy(ref.restricted_logits(logits, data.p, freqs)[rows].double(), data.labels[rows]).item()
    e = F.cross_entropy(logits[rows].double(), data.labels[rows]).item()
    return r, e


EXERCISES = [
    Exercise(
        name="all_pairs", title="all_pairs", reference=ref.all_pairs, run=run_all_pairs, kind="function",
        cases=[dict(seed=1, p=5, describe="p=5"), dict(seed=2, p=7, describe="p=7")],
        hidden_cases=[dict(seed=0, p=11), dict(seed=0, p=3)],
        mistakes=[
            Mistake("b-major order", "row a·p + b must hold (a, b): a changes slowest. Use a = arange(p).repeat_interleave(p) "
                    "and b = arange(p).repeat(p); you swapped them.", pairs_b_major),
            Mistake("no mod", "the answer is (a + b) mod p, a number below p: take % p.", pairs_no_mod),
            Mistake("'=' is token 0", "0 is already the number 0; the \"=\" token has its own id, p (the vocabulary is "
                    "0 .. p−1 then \"=\").", pairs_eq_zero),
            Mistake("'=' is token p + 1", "the \"=\" token's id is p, the first id after the numbers 0 .. p−1 (d_vocab = p + 1).",
                    pairs_eq_p_plus_1),
            Mistake("no '=' position", "each input has three tokens [a, b, =]: the model reads its answer at the \"=\" position.",
                    pairs_no_eq),
        ],
        stuck="a = torch.arange(p).repeat_interleave(p); b = torch.arange(p).repeat(p); "
              "return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p.",
    ),
    Exercise(
        name="answer_logits", title="answer_logits", reference=ref.answer_logits, run=run_answer_logits, kind="function",
        cases=[dict(seed=11, p=7, batch=10, describe="a random p=7 model, 10 inputs [a, b, =]"),
               dict(seed=12, p=11, batch=4, describe="a random p=11 model, 4 inputs [a, b, =]")],
        hidden_cases=[dict(seed=0, p=13, batch=20), dict(seed=0, p=5, batch=1)],
        mistakes=[
            Mistake("first position", "read the logits at the *last* position ([:, -1]): only there has the model seen both numbers.",
                    logits_first_position),
            Mistake("'=' logit kept", "keep only the p answers' logits ([..., :p]): the \"=\" token (id p) is never an answer.",
                    logits_whole_vocab),
            Mistake("softmax", "return the logits themselves: cross-entropy applies the softmax.", logits_softmax),
            Mistake("log-softmax over the whole vocabulary", "return raw logits of the p answers, not log-probabilities.",
                    logits_log_softmax),
            Mistake("every position", "keep only the last position: the result is [batch, p], not [batch, 3, p].", logits_every_position),
        ],
        stuck="model(tokens)[:, -1, :p].",
    ),
    Exercise(
        name="mirror_mask", title="mirror_mask", reference=ref.mirror_mask, run=run_mirror_mask, kind="function",
        cases=[dict(seed=21, p=7, frac=0.5, describe="p=7, half of the 49 pairs for training"),
               dict(seed=22, p=11, frac=0.3, describe="p=11, 30 % of the 121 pairs for training")],
        hidden_cases=[dict(seed=0, p=13, frac=0.6), dict(seed=0, p=5, frac=0.2)],
        mistakes=[
            Mistake("the pair itself", "look up the *mirror* (b, a), whose row is b·p + a; (a, b) itself is a test pair, "
                    "so it is never in the training set.", mirror_pair_itself),
            Mistake("mirror in the test set", "True where the mirror is a *training* pair; you marked the ones where it is not.",
                    mirror_in_test),
            Mistake("every pair", "one answer per *test* pair, in the order of data.test: index with data.test first.",
                    mirror_every_pair),
            Mistake("training pairs", "the question is about the test pairs (data.test), not the training pairs.", mirror_over_train),
            Mistake("row compared with a count", "data.train holds row numbers: mark them in a boolean table of p² rows, then "
                    "look up b·p + a in it.", mirror_position_in_split),
        ],
        stuck="in_train = torch.zeros(p * p, dtype=torch.bool); in_train[data.train] = True; "
              "a, b = data.tokens[data.test, 0], data.tokens[data.test, 1]; return in_train[b * p + a].",
    ),
    Exercise(
        name="weight_norm", title="weight_norm", reference=ref.weight_norm, run=run_weight_norm, kind="function",
        cases=[dict(seed=31, p=7, d_model=16, describe="a p=7 model, d_model 16, with non-zero biases"),
               dict(seed=32, p=5, d_model=8, describe="a p=5 model, d_model 8, with non-zero biases")],
        hidden_cases=[dict(seed=0, p=11, d_model=32)],
        mistakes=[
            Mistake("square root", "the weight norm here is the *sum of squares* (what weight decay penalises), not its square root.", wn_sqrt),
            Mistake("biases left out", "include every parameter, biases too: model.parameters().", wn_weights_only),
            Mistake("mean of squares", "sum the squares over every entry (.pow(2).sum()), not their mean per parameter.", wn_mean),
            Mistake("sum of norms", "square before you sum: Σ ||W||² over the parameters, not Σ ||W||.", wn_sum_of_norms),
            Mistake("absolute values", "sum the *squares* of the entries, not their absolute values.", wn_abs),
        ],
        atol=1e-3, rtol=1e-5,
        stuck="sum(float((p.detach() ** 2).sum()) for p in model.parameters()).",
    ),
    Exercise(
        name="fourier_basis", title="fourier_basis", reference=ref.fourier_basis, run=run_fourier_basis, kind="function",
        cases=[dict(seed=41, p=5, describe="p=5"), dict(seed=42, p=7, describe="p=7")],
        hidden_cases=[dict(seed=0, p=13), dict(seed=0, p=3)],
        mistakes=[
            Mistake("rows not normalised", "divide every row by its norm (B / B.norm(dim=1, keepdim=True)): the basis must be orthonormal.",
                    fb_unnormalised),
            Mistake("constant not normalised", "the constant row needs normalising too: 1/sqrt(p) in every entry.", fb_const_unnormalised),
            Mistake("sin before cos", "for each k, the cos row comes first, then the sin row: const, cos 1, sin 1, cos 2, ...", fb_sin_first),
            Mistake("all cos, then all sin", "interleave: const, cos 1, sin 1, cos 2, sin 2, ...; not every cos row before every sin row.",
                    fb_cos_block),
            Mistake("2π missing", "frequency k means k full turns over 0 .. p−1: cos(2π·k·x/p), not cos(k·x/p).", fb_no_two_pi),
            Mistake("one function per column", "one function per *row*: B[i] is the i-th basis function over x = 0 .. p−1.", fb_columns),
        ],
        atol=1e-5, rtol=1e-5,
        stuck="x = torch.arange(p); rows = [ones] + [cos(2πkx/p), sin(2πkx/p) for k in 1..(p−1)/2]; "
              "B = torch.stack(rows); return B / B.norm(dim=1, keepdim=True).",
    ),
    Exercise(
        name="embedding_frequency_norms", title="embedding_frequency_norms", reference=ref.embedding_frequency_norms,
        run=run_embedding_norms, kind="function",
        cases=[dict(seed=51, p=11, d=8, freqs=(2, 4), scales=(1.0, 0.4), describe="W_E of shape (12, 8) [p + 1, d_model]: "
                    "frequencies 2 and 4 with unequal weight, noise, and a large \"=\" row"),
               dict(seed=52, p=13, d=6, freqs=(1, 5, 6), scales=(0.5, 1.0, 0.8), describe="W_E of shape (14, 6): frequencies 1, "
                    "5 and 6 with unequal weight, noise, and a large \"=\" row")],
        hidden_cases=[dict(seed=0, p=17, d=10, freqs=(3, 8), scales=(1.0, 1.0)), dict(seed=0, p=7, d=4, freqs=(1,), scales=(2.0,))],
        mistakes=[
            Mistake("cos only", "a frequency has two rows, cos k and sin k: add both squared norms before the square root "
                    "(a number's phase puts it partly on each).", efn_cos_only),
            Mistake("norms added", "combine cos and sin as sqrt(||cos part||² + ||sin part||²), not ||cos part|| + ||sin part||.",
                    efn_sum_of_norms),
            Mistake("no square root", "return the norm, the square root of ||cos part||² + ||sin part||².", efn_squared),
            Mistake("rows paired from the constant", "row 0 is the constant; frequency k is rows 2k − 1 (cos) and 2k (sin): "
                    "pair rows 1 and 2, 3 and 4, ... ([1::2] and [2::2]).", efn_pairs_shifted),
            Mistake("'=' row included", "W_E has p + 1 rows; the last one is the \"=\" token, not a number: use W_E[:p].", efn_eq_row),
        ],
        atol=1e-4, rtol=1e-4,
        stuck="coeffs = fourier_basis(p) @ W_E[:p]; per_row = (coeffs ** 2).sum(-1); (per_row[1::2] + per_row[2::2]).sqrt().",
    ),
    Exercise(
        name="key_frequencies", title="key_frequencies", reference=ref.key_frequencies, run=run_key_frequencies,
        kind="function", uses="embedding_frequency_norms",
        cases=[dict(seed=61, p=13, d=8, freqs=(2, 5, 6, 3), scales=(1.0, 0.7, 0.3, 0.25), threshold=0.5, gain=0.02,
                    describe="W_E (14, 8) built from frequencies 2, 5, 6 and 3 with weights 1, 0.7, 0.3 and 0.25, all small; threshold=0.5"),
               dict(seed=62, p=17, d=12, freqs=(8, 3, 1, 4), scales=(0.9, 1.0, 0.45, 0.2), threshold=0.4, gain=1.0,
                    describe="W_E (18, 12) built from frequencies 8, 3, 1 and 4 with weights 0.9, 1, 0.45 and 0.2; threshold=0.4")],
        hidden_cases=[dict(seed=0, p=23, d=16, freqs=(4, 9, 11), scales=(1.0, 0.8, 0.6), threshold=0.5, gain=3.0),
                      dict(seed=0, p=11, d=6, freqs=(3,), scales=(1.0,), threshold=0.5, gain=0.1)],
        mistakes=[
            Mistake("0-based", "frequencies are numbered from 1: norms[0] is frequency 1, so return k + 1.", kf_zero_based),
            Mistake("compared with the mean", "compare with threshold × the *largest* norm, not the mean.", kf_mean),
            Mistake("absolute threshold", "the threshold is relative: norms ≥ threshold × norms.max().", kf_absolute),
            Mistake("always three", "return every frequency above the threshold, however many: a model may use 2 or 6.", kf_top3),
            Mistake("sorted by size", "return the frequencies in increasing order (sorted by k, not by norm).", kf_by_size),
        ],
        atol=0, rtol=0,
        stuck="norms = embedding_frequency_norms(W_E, p); [k + 1 for k in range(len(norms)) if norms[k] >= threshold * norms.max()].",
    ),
    Exercise(
        name="fourier_transform_2d", title="fourier_transform_2d", reference=ref.fourier_transform_2d, run=run_fourier_2d,
        kind="function", uses="fourier_basis",
        cases=[dict(seed=71, p=7, lead=0, describe="three functions of (a, b), grid of shape (3, 7, 7) [function, a, b]"),
               dict(seed=72, p=5, lead=2, describe="grid of shape (3, 2, 5, 5) [function, copy, a, b]")],
        hidden_cases=[dict(seed=0, p=11, lead=0), dict(seed=0, p=3, lead=4)],
        mistakes=[
            Mistake("basis transposed", "the rows of B are the basis functions: B @ grid @ B.T, not B.T @ grid @ B.", f2_transposed_basis),
            Mistake("only along a", "transform along both inputs: B @ grid (along a) @ B.T (along b).", f2_a_only),
            Mistake("only along b", "transform along both inputs: B @ grid @ B.T, not grid @ B.T alone.", f2_b_only),
            Mistake("axes swapped", "keep a's component on the second-to-last axis and b's on the last: B @ grid @ B.T, not its transpose.",
                    f2_swapped_axes),
        ],
        atol=1e-4, rtol=1e-4,
        stuck="B = fourier_basis(p); return B @ grid @ B.T (matmul works on the last two axes).",
    ),
    Exercise(
        name="neuron_frequency_fractions", title="neuron_frequency_fractions", reference=ref.neuron_frequency_fractions,
        run=run_neuron_fractions, kind="function", uses="fourier_transform_2d",
        cases=[dict(seed=81, p=7, neurons=5, describe="acts of shape (49, 5) [a·p + b, neuron]: each neuron a mix of "
                    "two frequencies, with a large mean"),
               dict(seed=82, p=11, neurons=3, describe="acts of shape (121, 3): each neuron a mix of two frequencies, with a large mean")],
        hidden_cases=[dict(seed=0, p=13, neurons=8), dict(seed=0, p=5, neurons=2)],
        mistakes=[
            Mistake("mean counted", "the constant × constant component (the neuron's mean) is not variance: set power[:, 0, 0] = 0 "
                    "before dividing by the total.", nf_mean_in_total),
            Mistake("constant cross terms left out", "frequency k's block includes its products with the constant (cos k(a) × const, "
                    "const × sin k(b), ...): rows and columns [0, 2k − 1, 2k], minus the const × const entry.", nf_no_const_cross),
            Mistake("a's frequency only", "take the components where *both* axes are frequency k or constant, not every "
                    "component whose a-frequency is k.", nf_a_frequency_only),
            Mistake("not normalised", "divide each neuron's block powers by its total variance, so the fractions are between 0 and 1.",
                    nf_not_normalised),
        ],
        atol=1e-4, rtol=1e-3,
        stuck="power = fourier_transform_2d(acts.T.reshape(-1, p, p), p) ** 2; power[:, 0, 0] = 0; for each k sum "
              "power over rows and columns [0, 2k−1, 2k]; divide by power.sum((1, 2)).",
    ),
    Exercise(
        name="components_for_fraction", title="components_for_fraction", reference=ref.components_for_fraction,
        run=run_components, kind="function",
        cases=[dict(seed=91, n=50, skew=6.0, fractions=(0.5, 0.9, 0.99), describe="50 non-negative values (a few large, many small); fractions 0.5, 0.9, 0.99"),
               dict(seed=92, n=200, skew=3.0, fractions=(0.25, 0.8, 1.0), describe="200 non-negative values; fractions 0.25, 0.8, 1.0")],
        hidden_cases=[dict(seed=0, n=1000, skew=10.0, fractions=(0.9, 0.95)), dict(seed=0, n=7, skew=1.0, fractions=(0.5, 0.6))],
        mistakes=[
            Mistake("not sorted", "take the largest values first: sort in descending order before the cumulative sum.", cf_unsorted),
            Mistake("smallest first", "sort in *descending* order: the fewest components come from the largest values.", cf_ascending),
            Mistake("one short", "count the component that crosses the fraction too: the cumulative sums strictly below "
                    "fraction × total, plus one.", cf_one_short),
            Mistake("fraction ignored", "use the fraction passed in, not 0.9.", cf_fraction_ignored),
            Mistake("fraction of the count", "reach a fraction of the *total* (of the values' sum), not of the number of entries.",
                    cf_fraction_of_count),
        ],
        atol=0, rtol=0,
        stuck="c = values.flatten().sort(descending=True).values.cumsum(0); int((c < fraction * c[-1]).sum()) + 1.",
    ),
    Exercise(
        name="logit_directions", title="logit_directions", reference=ref.logit_directions, run=run_logit_directions,
        kind="function",
        cases=[dict(seed=101, p=7, freqs=(1, 3), describe="p=7, freqs [1, 3]"),
               dict(seed=102, p=11, freqs=(4,), describe="p=11, freqs [4]")],
        hidden_cases=[dict(seed=0, p=13, freqs=(2, 5, 6)), dict(seed=0, p=5, freqs=(2,))],
        mistakes=[
            Mistake("a + b + c", "the logit of answer c peaks at c = a + b: use cos(w(a + b − c)), with c subtracted.", ld_plus_c),
            Mistake("not normalised", "scale each direction to unit norm over the whole (p², p) grid (d / d.norm()).", ld_unnormalised),
            Mistake("sin before cos", "for each k: the cos direction, then the sin direction.", ld_sin_first),
            Mistake("2π missing", "w = 2πk/p: cos(2πk(a + b − c)/p).", ld_no_two_pi),
            Mistake("cos only", "two directions per frequency, cos and sin: the model's peak can sit at any phase.", ld_cos_only),
        ],
        atol=1e-5, rtol=1e-4,
        stuck="a, b from all_pairs(p) as columns [p², 1], c = arange(p) as a row [1, p]; phase = 2π(a + b − c)/p; for k: "
              "cos(k·phase), sin(k·phase), each / its norm; stack.",
    ),
    Exercise(
        name="logit_frequency_projection", title="logit_frequency_projection", reference=ref.logit_frequency_projection,
        run=run_projection, kind="function", uses="logit_directions",
        cases=[dict(seed=111, p=7, true_freqs=(1, 3), freqs=(1, 3), describe="logits (49, 7) made of frequencies 1 and 3 + noise "
                    "+ a large mean per input; freqs [1, 3]"),
               dict(seed=112, p=11, true_freqs=(2, 4, 5), freqs=(4,), describe="logits (121, 11) made of frequencies 2, 4 and 5 "
                    "+ noise + a large mean; freqs [4]")],
        hidden_cases=[dict(seed=0, p=13, true_freqs=(2, 6), freqs=(2, 6, 3)), dict(seed=0, p=5, true_freqs=(1,), freqs=(2,))],
        mistakes=[
            Mistake("cos only", "project on both directions of each frequency, cos and sin.", proj_cos_only),
            Mistake("directions not unit norm", "project on unit-norm directions: with d of norm n, (d·x) d is n² times too large.",
                    proj_unnormalised),
            Mistake("coefficients only", "return the projection itself, Σ_k (d_k · logits) d_k, of shape [p², p], not the coefficients.",
                    proj_coefficients),
            Mistake("part removed", "return the part *along* the directions; logits minus it is the excluded part.", proj_removed),
            Mistake("one fit per input", "each direction spans the whole (p², p) grid: one coefficient per direction, "
                    "(dirs * logits).sum over both axes.", proj_per_input),
        ],
        atol=1e-4, rtol=1e-3,
        stuck="dirs = logit_directions(p, freqs); coeffs = (dirs * logits).sum((1, 2)); return (coeffs[:, None, None] * dirs).sum(0).",
    ),
    Exercise(
        name="fraction_of_logit_variance", title="fraction_of_logit_variance", reference=ref.fraction_of_logit_variance,
        run=run_variance, kind="function", uses="logit_frequency_projection",
        cases=[dict(seed=121, p=7, true_freqs=(1, 3), freqs=(1, 3), offset=3.0, describe="logits (49, 7) of frequencies 1 and 3 "
                    "+ noise + a large mean per input; freqs [1, 3]"),
               dict(seed=122, p=11, true_freqs=(2, 4, 5), freqs=(4, 2), offset=1.0, describe="logits (121, 11) of frequencies "
                    "2, 4 and 5 + noise + a mean per input; freqs [4, 2]")],
        hidden_cases=[dict(seed=0, p=13, true_freqs=(2, 6), freqs=(2, 6), offset=5.0), dict(seed=0, p=5, true_freqs=(1,), freqs=(2,), offset=2.0)],
        mistakes=[
            Mistake("not centred", "subtract each input's mean logit first (logits.mean(-1, keepdim=True)): no softmax sees it, "
                    "so it is not variance the algorithm must explain.", fv_uncentred),
            Mistake("ratio of norms", "a fraction of *variance*: squared norms, ||part||² / ||centred||².", fv_norm_ratio),
            Mistake("centred over inputs", "centre each input's logits over the answers (mean over the last axis), not each answer over the inputs.",
                    fv_centred_over_inputs),
            Mistake("fraction left", "return the fraction explained by the frequencies, not 1 minus it.", fv_one_minus),
        ],
        atol=1e-4, rtol=1e-3,
        stuck="centred = logits - logits.mean(-1, keepdim=True); part = logit_frequency_projection(logits, p, freqs); "
              "(part ** 2).sum() / (centred ** 2).sum().",
    ),
    Exercise(
        name="restricted_and_excluded_loss", title="restricted_and_excluded_loss", reference=ref.restricted_and_excluded_loss,
        run=run_restricted, kind="function", uses="logit_frequency_projection",
        cases=[dict(seed=131, p=7, frac=0.5, true_freqs=(1, 3), freqs=(1, 3), memorised=3.0,
                    describe="p=7, half the pairs for training; logits of frequencies 1 and 3, with the training answers boosted by 3; freqs [1, 3]"),
               dict(seed=132, p=11, frac=0.3, true_freqs=(2, 4), freqs=(4,), memorised=6.0,
                    describe="p=11, 30 % for training; logits of frequencies 2 and 4, training answers boosted by 6; freqs [4]")],
        hidden_cases=[dict(seed=0, p=13, frac=0.4, true_freqs=(5,), freqs=(5, 1), memorised=1.0)],
        mistakes=[
            Mistake("test pairs", "both progress measures are computed on the *training* pairs (data.train): they watch the "
                    "algorithm replace memorisation where memorisation exists.", re_test_pairs),
            Mistake("every pair", "use the training pairs only (data.train), not every pair.", re_all_pairs),
            Mistake("swapped", "return (restricted, excluded): restricted keeps only the key frequencies, excluded removes them.",
                    re_swapped),
            Mistake("excluded = full loss", "the excluded loss removes the key frequencies' part (logits − projection); "
                    "you returned the full logits' loss.", re_full_logits_kept),
        ],
        atol=1e-4, rtol=1e-3,
        stuck="cross-entropy of restricted_logits(logits, p, freqs)[data.train] and of excluded_logits(...)[data.train], "
              "against data.labels[data.train].",
    ),
]
