"""Chapter 5 exercises: sparse autoencoders.

Every input is built from the case's seed (``ctx.randn``, ``ctx.gen``), so a hidden case with
another seed gets other numbers. The inputs are shaped so that each catalogued mistake changes
the output: a non-zero b_dec, decoder rows that are not unit norm, data with a non-zero mean,
negative pre-activations among the top k, tied AUROC scores, and so on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from utils import sae as ref
from utils.checks import Exercise, LearnerError, Mistake


def _rand(ctx, *shape: int) -> Tensor:
    return torch.rand(shape, generator=ctx.gen)


def _perm(ctx, n: int) -> Tensor:
    return torch.randperm(n, generator=ctx.gen)


def _scalar(value, what: str) -> Tensor:
    """A learner's single number as a 0-d tensor (a Python float, or a tensor of one element)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise LearnerError(f"{what} should be a tensor (or a number), got {type(value).__name__}")
    return value.detach().reshape(()) if value.numel() == 1 else value.detach()


def _float(value, what: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise LearnerError(f"{what} should be a number (a Python float), got {type(value).__name__}")


def _lead(c) -> tuple[int, ...]:
    """The leading (input) axes of a case: (batch,) or (batch, pos)."""
    return (c["batch"], c["pos"]) if c.get("pos") else (c["batch"],)


def _shape_text(c, last: str) -> str:
    lead = _lead(c)
    names = "batch, pos" if len(lead) == 2 else "batch"
    return f"({', '.join(map(str, lead))}, {c[last]}) [{names}, {last}]"


# ---- 1. relu_encode ---------------------------------------------------------------------------
def run_relu_encode(impl, ctx):
    c = ctx.case
    x = ctx.randn(*_lead(c), c["d_in"]) + ctx.randn(c["d_in"])  # the data's centre is not 0
    W_enc = ctx.randn(c["d_in"], c["d_sae"]) / math.sqrt(c["d_in"])
    b_enc = ctx.randn(c["d_sae"], scale=0.3)
    b_dec = ctx.randn(c["d_in"], scale=0.8)
    return {"f": ctx.call(impl, x, W_enc, b_enc, b_dec)}


def enc_no_b_dec(x, W_enc, b_enc, b_dec):
    return F.relu(x @ W_enc + b_enc)


def enc_b_dec_added(x, W_enc, b_enc, b_dec):
    return F.relu((x + b_dec) @ W_enc + b_enc)


def enc_no_relu(x, W_enc, b_enc, b_dec):
    return (x - b_dec) @ W_enc + b_enc


def enc_no_b_enc(x, W_enc, b_enc, b_dec):
    return F.relu((x - b_dec) @ W_enc)


def enc_bias_after_relu(x, W_enc, b_enc, b_dec):
    return F.relu((x - b_dec) @ W_enc) + b_enc


# ---- 2. l1_sae_loss ---------------------------------------------------------------------------
def run_l1_loss(impl, ctx):
    c = ctx.case
    x = ctx.randn(c["batch"], c["d_in"]) + 0.5
    x_hat = 0.8 * x + ctx.randn(c["batch"], c["d_in"], scale=0.4)
    f = F.relu(ctx.randn(c["batch"], c["d_sae"]) - 0.3)
    # decoder rows of norms between 0.3 and 2.5: not unit norm, so the weighting matters
    W_dec = ref.normalized_rows(ctx.randn(c["d_sae"], c["d_in"])) * (0.3 + 2.2 * _rand(ctx, c["d_sae"], 1))
    return {"loss": _scalar(ctx.call(impl, x, x_hat, f, W_dec, c["l1"]), "l1_sae_loss's result")}


def _mse(x, x_hat):
    return (x_hat - x).pow(2).sum(-1).mean()


def l1_unweighted(x, x_hat, f, W_dec, l1_coefficient):
    return _mse(x, x_hat) + l1_coefficient * f.sum(-1).mean()


def l1_mse_mean(x, x_hat, f, W_dec, l1_coefficient):
    return (x_hat - x).pow(2).mean() + l1_coefficient * (f * W_dec.norm(dim=-1)).sum(-1).mean()


def l1_squared_penalty(x, x_hat, f, W_dec, l1_coefficient):
    return _mse(x, x_hat) + l1_coefficient * (f * W_dec.norm(dim=-1)).pow(2).sum(-1).mean()


def l1_squared_norms(x, x_hat, f, W_dec, l1_coefficient):
    return _mse(x, x_hat) + l1_coefficient * (f * W_dec.pow(2).sum(-1)).sum(-1).mean()


def l1_summed_over_batch(x, x_hat, f, W_dec, l1_coefficient):
    return _mse(x, x_hat) + l1_coefficient * (f * W_dec.norm(dim=-1)).sum()


# ---- 3. normalized_rows -----------------------------------------------------------------------
def run_normalized_rows(impl, ctx):
    c = ctx.case
    W = ctx.randn(c["d_sae"], c["d_in"]) * (0.2 + 3 * _rand(ctx, c["d_sae"], 1))
    if c.get("zero_row") is not None:
        W[c["zero_row"]] = 0.0  # a latent whose decoder row is all zeros
    return {"W": ctx.call(impl, W)}


def rows_columns(W):
    return W / W.norm(dim=0, keepdim=True).clamp_min(1e-8)


def rows_frobenius(W):
    return W / W.norm()


def rows_squared_norm(W):
    return W / W.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)


def rows_l1(W):
    return W / W.abs().sum(-1, keepdim=True).clamp_min(1e-8)


def rows_no_clamp(W):
    return W / W.norm(dim=-1, keepdim=True)


# ---- 4. l0 ------------------------------------------------------------------------------------
def run_l0(impl, ctx):
    c = ctx.case
    f = F.relu(ctx.randn(*_lead(c), c["d_sae"]) - c["shift"])  # exact zeros, positive values
    return {"l0": _scalar(ctx.call(impl, f), "l0's result")}


def l0_fraction(f):
    return (f != 0).float().mean()


def l0_l1(f):
    return f.sum(-1).mean()


def l0_total(f):
    return (f != 0).float().sum()


def l0_wrong_axis(f):
    return (f != 0).float().sum(0).mean()


def l0_first_axis(f):
    return (f != 0).float().sum(-1).mean(0)


# ---- 5. fvu -----------------------------------------------------------------------------------
def run_fvu(impl, ctx):
    c = ctx.case
    centre = ctx.randn(c["d_in"], scale=2.0)  # a different mean in every dimension
    x = ctx.randn(*_lead(c), c["d_in"]) * (0.5 + _rand(ctx, c["d_in"])) + centre
    if c.get("pos"):  # and a different mean at every position
        x = x + ctx.randn(c["pos"], c["d_in"])
    x_hat = x + ctx.randn(*x.shape, scale=c["noise"])
    return {"fvu": _scalar(ctx.call(impl, x, x_hat), "fvu's result")}


def _flat(x, x_hat):
    return x.flatten(0, -2), x_hat.flatten(0, -2)


def fvu_not_centred(x, x_hat):
    x, x_hat = _flat(x, x_hat)
    return (x - x_hat).pow(2).sum() / x.pow(2).sum()


def fvu_explained(x, x_hat):
    return 1 - ref.fvu(x, x_hat)


def fvu_global_mean(x, x_hat):
    return (x - x_hat).pow(2).sum() / (x - x.mean()).pow(2).sum()


def fvu_per_input(x, x_hat):
    x, x_hat = _flat(x, x_hat)
    return ((x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)).mean()


def fvu_per_position_mean(x, x_hat):
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


# ---- 6. dead_fraction -------------------------------------------------------------------------
def run_dead_fraction(impl, ctx):
    c = ctx.case
    f = F.relu(ctx.randn(c["n"], c["d_sae"]) - 0.3)
    alive = torch.ones(c["d_sae"])
    alive[_perm(ctx, c["d_sae"])[: c["dead"]]] = 0.0  # these latents never fire
    f = f * alive * (_rand(ctx, c["n"], 1) > 0.2)  # and some inputs fire no latent at all
    return {"dead": _scalar(ctx.call(impl, f), "dead_fraction's result")}


def dead_alive(f):
    return 1 - ref.dead_fraction(f)


def dead_count(f):
    return (~(f != 0).any(0)).float().sum()


def dead_zero_entries(f):
    return (f == 0).float().mean()


def dead_inputs(f):
    return (~(f != 0).any(-1)).float().mean()


def dead_any_zero(f):
    return (f == 0).any(0).float().mean()


# ---- 7. max_cosines, 8. fraction_recovered ---------------------------------------------------
def _dictionary(ctx, c):
    """True directions (rows of varying norms) and a decoder [d_sae, d] whose rows are noisy
    copies of some of them (some negated), rescaled, plus random rows."""
    n_true, d, d_sae = c["n_true"], c["d"], c["d_sae"]
    true = ctx.randn(n_true, d) * (0.4 + 2 * _rand(ctx, n_true, 1))
    unit = ref.normalized_rows(true)
    m = min(d_sae - 2, n_true)
    source = _perm(ctx, n_true)[:m]
    noise = 0.05 + 1.3 * _rand(ctx, m, 1)
    copies = unit[source] + noise * ctx.randn(m, d) / math.sqrt(d)
    sign = torch.where(_rand(ctx, m, 1) < 0.35, -1.0, 1.0)
    rows = torch.cat([copies * sign, ctx.randn(d_sae - m, d) / math.sqrt(d)])
    W_dec = rows[_perm(ctx, d_sae)] * (0.3 + 2.7 * _rand(ctx, d_sae, 1))
    return W_dec, true


def run_max_cosines(impl, ctx):
    W_dec, true = _dictionary(ctx, ctx.case)
    return {"max cosines": ctx.call(impl, W_dec, true)}


def _unit(W):
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def cos_abs(W_dec, true_directions):
    return (_unit(true_directions) @ _unit(W_dec).T).abs().max(-1).values


def cos_dot(W_dec, true_directions):
    return (true_directions @ W_dec.T).max(-1).values


def cos_decoder_raw(W_dec, true_directions):
    return (_unit(true_directions) @ W_dec.T).max(-1).values


def cos_true_raw(W_dec, true_directions):
    return (true_directions @ _unit(W_dec).T).max(-1).values


def cos_per_latent(W_dec, true_directions):
    return (_unit(true_directions) @ _unit(W_dec).T).max(0).values


def cos_columns(W_dec, true_directions):
    return (_unit(true_directions) @ (W_dec / W_dec.norm(dim=0, keepdim=True)).T).max(-1).values


def run_fraction_recovered(impl, ctx):
    W_dec, true = _dictionary(ctx, ctx.case)
    values = [_scalar(ctx.call(impl, W_dec, true, t), "fraction_recovered's result") for t in ctx.case["thresholds"]]
    return {f"threshold={t}": v for t, v in zip(ctx.case["thresholds"], values)}


def rec_abs(W_dec, true_directions, threshold=0.9):
    return (cos_abs(W_dec, true_directions) > threshold).float().mean()


def rec_dot(W_dec, true_directions, threshold=0.9):
    return (cos_dot(W_dec, true_directions) > threshold).float().mean()


def rec_per_latent(W_dec, true_directions, threshold=0.9):
    return (cos_per_latent(W_dec, true_directions) > threshold).float().mean()


def rec_count(W_dec, true_directions, threshold=0.9):
    return (ref.max_cosines(W_dec, true_directions) > threshold).float().sum()


def rec_threshold_ignored(W_dec, true_directions, threshold=0.9):
    return (ref.max_cosines(W_dec, true_directions) > 0.9).float().mean()


def rec_mean_cosine(W_dec, true_directions, threshold=0.9):
    cos = _unit(true_directions) @ _unit(W_dec).T
    return (cos > threshold).float().mean()


# ---- 9. relative_reconstruction_bias ----------------------------------------------------------
def run_gamma(impl, ctx):
    c = ctx.case
    x = ctx.randn(*_lead(c), c["d_in"])
    shrink = c["shrink"] + 0.3 * _rand(ctx, *_lead(c), 1)  # every input shrunk by its own factor
    x_hat = shrink * x + ctx.randn(*x.shape, scale=c["noise"])
    return {"gamma": _scalar(ctx.call(impl, x, x_hat), "relative_reconstruction_bias's result")}


def gamma_inverted(x, x_hat):
    return 1 / ref.relative_reconstruction_bias(x, x_hat)


def gamma_norm_ratio(x, x_hat):
    return x_hat.norm() / x.norm()


def gamma_squared_norm_ratio(x, x_hat):
    return x_hat.pow(2).sum() / x.pow(2).sum()


def gamma_per_input(x, x_hat):
    x, x_hat = _flat(x, x_hat)
    return (x_hat.pow(2).sum(-1) / (x_hat * x).sum(-1)).mean()


# ---- 10. topk_activation, 11. batch_topk_activation -------------------------------------------
def _pre(ctx, c):
    """Pre-activations with a shift per row: some rows mostly negative (negatives among their
    top k), some mostly positive."""
    pre = ctx.randn(c["batch"], c["d_sae"])
    return pre + (torch.tensor([-2.0, -0.5, 0.8])[torch.arange(c["batch"]) % 3] + 0.2 * ctx.randn(c["batch"]))[:, None]


def run_topk(impl, ctx):
    return {"f": ctx.call(impl, _pre(ctx, ctx.case), ctx.case["k"])}


def topk_no_relu(pre, k):
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def topk_abs(pre, k):
    values, indices = pre.abs().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def topk_smallest(pre, k):
    values, indices = pre.topk(k, dim=-1, largest=False)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


def topk_strict(pre, k):
    kth = pre.topk(k, dim=-1).values[..., -1:]
    return F.relu(pre) * (pre > kth)


def run_batch_topk(impl, ctx):
    return {"f": ctx.call(impl, _pre(ctx, ctx.case), ctx.case["k"])}


def btopk_per_row(pre, k):
    return ref.topk_activation(pre, k)


def btopk_k_only(pre, k):
    flat = pre.flatten()
    values, indices = flat.topk(k)
    return torch.zeros_like(flat).scatter(-1, indices, F.relu(values)).reshape(pre.shape)


def btopk_no_relu(pre, k):
    flat = pre.flatten()
    values, indices = flat.topk(k * pre.shape[0])
    return torch.zeros_like(flat).scatter(-1, indices, values).reshape(pre.shape)


def btopk_per_latent(pre, k):
    values, indices = pre.topk(k, dim=0)
    return torch.zeros_like(pre).scatter(0, indices, F.relu(values))


def btopk_not_reshaped(pre, k):
    flat = pre.flatten()
    values, indices = flat.topk(k * pre.shape[0])
    return torch.zeros_like(flat).scatter(-1, indices, F.relu(values))


# ---- 12. auxk_activations ---------------------------------------------------------------------
def run_auxk(impl, ctx):
    c = ctx.case
    pre = ctx.randn(c["batch"], c["d_sae"]) + (2.5 * _rand(ctx, c["batch"], 1) - 1.5)  # some rows mostly negative
    dead = torch.zeros(c["d_sae"], dtype=torch.bool)
    dead[_perm(ctx, c["d_sae"])[: c["n_dead"]]] = True
    return {"aux f": ctx.call(impl, pre, dead, c["k_aux"])}


def auxk_mask_ignored(pre, dead, k_aux):
    return ref.topk_activation(pre, k_aux)


def auxk_live(pre, dead, k_aux):
    return ref.auxk_activations(pre, ~dead, k_aux)


def auxk_no_relu(pre, dead, k_aux):
    n_dead = int(dead.sum())
    if n_dead == 0:
        return torch.zeros_like(pre)
    values, indices = pre.masked_fill(~dead, float("-inf")).topk(min(k_aux, n_dead), dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def auxk_no_topk(pre, dead, k_aux):
    return F.relu(pre) * dead


def auxk_topk_then_mask(pre, dead, k_aux):
    return ref.topk_activation(pre, k_aux) * dead


# ---- 13. jumprelu, 14. jumprelu_threshold_grad ------------------------------------------------
def _thresholds(ctx, c):
    return 0.05 + c["max_threshold"] * _rand(ctx, c["d_sae"])


def run_jumprelu(impl, ctx):
    c = ctx.case
    z = ctx.randn(c["batch"], c["d_sae"])
    return {"f": ctx.call(impl, z, _thresholds(ctx, c))}


def jr_shifted(z, threshold):
    return F.relu(z - threshold)


def jr_relu(z, threshold):
    return F.relu(z)


def jr_step(z, threshold):
    return (z > threshold).float()


def jr_abs(z, threshold):
    return z * (z.abs() > threshold)


def jr_one_threshold(z, threshold):
    return z * (z > threshold.mean())


def run_jumprelu_grad(impl, ctx):
    c = ctx.case
    threshold = _thresholds(ctx, c)
    bw = c["bandwidth"]
    near = threshold + bw * 0.8 * ctx.randn(c["batch"], c["d_sae"])  # about half within bw/2
    far = ctx.randn(c["batch"], c["d_sae"])
    z = torch.where(_rand(ctx, c["batch"], c["d_sae"]) < 0.7, near, far)
    grad_f = ctx.randn(c["batch"], c["d_sae"])
    return {"grad threshold": ctx.call(impl, z, threshold, bw, grad_f)}


def _near(z, threshold, width):
    return ((z - threshold).abs() < width).float()


def jg_no_threshold(z, threshold, bandwidth, grad_f):
    return (-(1.0 / bandwidth) * _near(z, threshold, bandwidth / 2) * grad_f).sum(0)


def jg_sign(z, threshold, bandwidth, grad_f):
    return ((threshold / bandwidth) * _near(z, threshold, bandwidth / 2) * grad_f).sum(0)


def jg_full_width(z, threshold, bandwidth, grad_f):
    return (-(threshold / bandwidth) * _near(z, threshold, bandwidth) * grad_f).sum(0)


def jg_mean(z, threshold, bandwidth, grad_f):
    return (-(threshold / bandwidth) * _near(z, threshold, bandwidth / 2) * grad_f).mean(0)


def jg_no_bandwidth(z, threshold, bandwidth, grad_f):
    return (-threshold * _near(z, threshold, bandwidth / 2) * grad_f).sum(0)


def jg_grad_ignored(z, threshold, bandwidth, grad_f):
    return (-(threshold / bandwidth) * _near(z, threshold, bandwidth / 2)).sum(0)


# ---- 15. gated_encode -------------------------------------------------------------------------
def run_gated(impl, ctx):
    c = ctx.case
    x = ctx.randn(c["batch"], c["d_in"]) + ctx.randn(c["d_in"])
    W_gate = ctx.randn(c["d_in"], c["d_sae"]) / math.sqrt(c["d_in"])
    b_gate = ctx.randn(c["d_sae"], scale=0.4)
    r_mag = ctx.randn(c["d_sae"], scale=0.6)
    b_mag = ctx.randn(c["d_sae"], scale=0.4)
    b_dec = ctx.randn(c["d_in"], scale=0.8)
    return {"f": ctx.call(impl, x, W_gate, b_gate, r_mag, b_mag, b_dec)}


def gated_no_exp(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    centred = x - b_dec
    return ((centred @ W_gate + b_gate) > 0) * F.relu(centred @ (W_gate * r_mag) + b_mag)


def gated_no_rescale(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    centred = x - b_dec
    return ((centred @ W_gate + b_gate) > 0) * F.relu(centred @ W_gate + b_mag)


def gated_gate_from_magnitude(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    mag = (x - b_dec) @ (W_gate * r_mag.exp()) + b_mag
    return (mag > 0) * F.relu(mag)


def gated_relu_gate(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    centred = x - b_dec
    return F.relu(centred @ W_gate + b_gate) * F.relu(centred @ (W_gate * r_mag.exp()) + b_mag)


def gated_no_magnitude_relu(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    centred = x - b_dec
    return ((centred @ W_gate + b_gate) > 0) * (centred @ (W_gate * r_mag.exp()) + b_mag)


def gated_no_b_dec(x, W_gate, b_gate, r_mag, b_mag, b_dec):
    return ref.gated_encode(x, W_gate, b_gate, r_mag, b_mag, torch.zeros_like(b_dec))


# ---- 15b. absorption_rate ---------------------------------------------------------------------
def run_absorption_rate(impl, ctx):
    """A parent latent that fires on most inputs where its parent is alone, on fewer where a child
    is present too; children present on their own rows (two at once on some), each implying the
    parent; some inputs with neither."""
    c = ctx.case
    n, kids = c["n"], c["children"]
    child = _rand(ctx, n, kids) < c["p_child"]
    parent = (_rand(ctx, n) < 0.3) | child.any(-1)
    with_child = child.any(-1)
    fire_p = torch.where(with_child, torch.full((n,), 0.35), torch.where(parent, torch.full((n,), 0.85), torch.full((n,), 0.1)))
    f_parent = (_rand(ctx, n) < fire_p) * (0.2 + _rand(ctx, n))
    return {"absorption rate": _scalar(ctx.call(impl, f_parent, parent, child), "absorption_rate's result")}


def absorb_firing(f_parent, parent_present, child_present):
    both = parent_present & child_present.any(-1)
    return (f_parent[both] != 0).float().mean()


def absorb_all_parent_inputs(f_parent, parent_present, child_present):
    return (f_parent[parent_present] == 0).float().mean()


def absorb_first_child(f_parent, parent_present, child_present):
    both = parent_present & child_present[:, 0]
    return (f_parent[both] == 0).float().mean()


def absorb_every_child(f_parent, parent_present, child_present):
    both = parent_present & child_present.all(-1)
    return (f_parent[both] == 0).float().mean() if both.any() else torch.tensor(0.0)


def absorb_over_all_inputs(f_parent, parent_present, child_present):
    both = parent_present & child_present.any(-1)
    return ((f_parent == 0) & both).float().mean()


def absorb_mean_per_child(f_parent, parent_present, child_present):
    rates = [(f_parent[parent_present & child_present[:, j]] == 0).float().mean() for j in range(child_present.shape[1])]
    return torch.stack(rates).nanmean()


def absorb_parent_alone(f_parent, parent_present, child_present):
    alone = parent_present & ~child_present.any(-1)
    return (f_parent[alone] == 0).float().mean()


# ---- 16. auroc --------------------------------------------------------------------------------
def run_auroc(impl, ctx):
    c = ctx.case
    labels = torch.zeros(c["n"], dtype=torch.bool)
    labels[_perm(ctx, c["n"])[: c["n_pos"]]] = True
    if c["scores"] == "integers":  # a handful of values: ties everywhere
        scores = ctx.randint(3, c["n"]).float() + labels * ctx.randint(3, c["n"]).float()
    else:  # rounded to one decimal: some ties
        scores = (ctx.randn(c["n"]) * 0.4 + 0.3 + 0.5 * labels).round(decimals=1)
    return {"auroc": _scalar(ctx.call(impl, scores, labels), "auroc's result")}


def _pairs(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return pos[:, None], neg[None, :]


def auroc_ties_ignored(scores, labels):
    pos, neg = _pairs(scores, labels)
    return (pos > neg).float().mean()


def auroc_ties_win(scores, labels):
    pos, neg = _pairs(scores, labels)
    return (pos >= neg).float().mean()


def auroc_ranks_no_ties(scores, labels):
    order = scores.argsort(stable=True)
    ranks = torch.empty(len(scores))
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_flipped(scores, labels):
    return 1 - ref.auroc(scores, labels)


def auroc_accuracy(scores, labels):
    return ((scores > 0.5) == labels).float().mean()


def auroc_not_normalised(scores, labels):
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return ref.auroc(scores, labels) * (n_pos * n_neg)


# ---- 17. ce_loss_recovered --------------------------------------------------------------------
def run_ce_recovered(impl, ctx):
    c = ctx.case
    out = []
    for _ in range(c["n"]):
        clean = c["clean"] + 0.5 * float(_rand(ctx, 1))
        ablated = clean + c["gap"] * (0.5 + float(_rand(ctx, 1)))
        spliced = clean + (ablated - clean) * (-0.1 + 1.2 * float(_rand(ctx, 1)))
        out.append(_float(ctx.call(impl, clean, spliced, ablated), "ce_loss_recovered's result"))
    return {"recovered": torch.tensor(out, dtype=torch.float64)}


def ce_inverted(ce_clean, ce_spliced, ce_ablated):
    return (ce_ablated - ce_clean) / (ce_ablated - ce_spliced)


def ce_one_minus(ce_clean, ce_spliced, ce_ablated):
    return (ce_spliced - ce_clean) / (ce_ablated - ce_clean)


def ce_loss_ratio(ce_clean, ce_spliced, ce_ablated):
    return ce_clean / ce_spliced


def ce_divided_by_ablated(ce_clean, ce_spliced, ce_ablated):
    return (ce_ablated - ce_spliced) / ce_ablated


# ---------------------------------------------------------------------------------------------
def _d(c, what="x", last="d_in"):
    return f"{what} of shape {_shape_text(c, last)}"


_ENC = [dict(seed=501, batch=5, d_in=6, d_sae=10),
        dict(seed=502, batch=3, pos=4, d_in=8, d_sae=16)]
for _c in _ENC:
    _c["describe"] = (f"{_d(_c)} with a non-zero mean, random W_enc ({_c['d_in']}, {_c['d_sae']}), "
                      "non-zero b_enc and b_dec")

_LOSS = [dict(seed=511, batch=6, d_in=5, d_sae=9, l1=0.4),
         dict(seed=512, batch=9, d_in=8, d_sae=20, l1=0.05)]
for _c in _LOSS:
    _c["describe"] = (f"x and x_hat of shape ({_c['batch']}, {_c['d_in']}), f ({_c['batch']}, {_c['d_sae']}) >= 0, "
                      f"W_dec ({_c['d_sae']}, {_c['d_in']}) with row norms from 0.3 to 2.5 (not unit), l1_coefficient={_c['l1']}")

_DICT = [dict(seed=541, n_true=8, d=6, d_sae=12),
         dict(seed=542, n_true=15, d=10, d_sae=14)]
for _c in _DICT:
    _c["describe"] = (f"W_dec ({_c['d_sae']}, {_c['d']}) and true_directions ({_c['n_true']}, {_c['d']}), rows of varying "
                      "norms; some decoder rows are noisy copies of true directions, some of them negated")

_TOPK = [dict(seed=551, batch=6, d_sae=10, k=3), dict(seed=552, batch=4, d_sae=16, k=5)]
for _c in _TOPK:
    _c["describe"] = (f"pre of shape ({_c['batch']}, {_c['d_sae']}) [batch, d_sae], k={_c['k']}; some rows mostly "
                      "negative (negative values among their top k)")

EXERCISES = [
    Exercise(
        name="relu_encode", title="relu_encode", reference=ref.relu_encode, run=run_relu_encode, kind="function",
        cases=_ENC, hidden_cases=[dict(seed=0, batch=7, d_in=12, d_sae=24), dict(seed=0, batch=2, pos=3, d_in=5, d_sae=7)],
        mistakes=[
            Mistake("b_dec not subtracted", "subtract the decoder bias before encoding: ReLU((x - b_dec) @ W_enc + b_enc). "
                    "b_dec is the data's centre; the encoder reads the offset from it.", enc_no_b_dec),
            Mistake("b_dec added", "subtract b_dec from x, don't add it: (x - b_dec) @ W_enc + b_enc (decode adds it back).", enc_b_dec_added),
            Mistake("no ReLU", "apply the ReLU: latents are non-negative, F.relu((x - b_dec) @ W_enc + b_enc).", enc_no_relu),
            Mistake("b_enc left out", "add the encoder bias b_enc before the ReLU: a negative b_enc is what keeps a latent off on weak inputs.", enc_no_b_enc),
            Mistake("b_enc after the ReLU", "add b_enc inside the ReLU, ReLU(... + b_enc), not after it: latents must be >= 0.", enc_bias_after_relu),
        ],
        stuck="F.relu((x - b_dec) @ W_enc + b_enc): @ works for any leading axes of x.",
    ),
    Exercise(
        name="l1_sae_loss", title="l1_sae_loss", reference=ref.l1_sae_loss, run=run_l1_loss, kind="function",
        cases=_LOSS, hidden_cases=[dict(seed=0, batch=13, d_in=7, d_sae=30, l1=0.2)],
        mistakes=[
            Mistake("unweighted L1", "weight each latent's activation by its decoder row's norm, (f * W_dec.norm(dim=-1)).sum(-1): "
                    "otherwise the SAE can shrink f and grow W_dec to dodge the penalty.", l1_unweighted),
            Mistake("MSE averaged over d_in", "sum the squared error over d_in and average over the inputs only: "
                    "(x_hat - x).pow(2).sum(-1).mean(), not .mean() over every entry.", l1_mse_mean),
            Mistake("squared penalty", "the sparsity penalty is an L1 norm: sum the weighted activations themselves, not their squares.", l1_squared_penalty),
            Mistake("squared decoder norms", "weight by the decoder rows' norms, W_dec.norm(dim=-1), not their squared norms.", l1_squared_norms),
            Mistake("L1 summed over the batch", "average the penalty over the inputs as you do the MSE: .sum(-1).mean(), not a sum over the whole batch.", l1_summed_over_batch),
        ],
        stuck="mse = (x_hat - x).pow(2).sum(-1).mean(); l1 = (f * W_dec.norm(dim=-1)).sum(-1).mean(); return mse + l1_coefficient * l1.",
    ),
    Exercise(
        name="normalized_rows", title="normalized_rows", reference=ref.normalized_rows, run=run_normalized_rows, kind="function",
        cases=[dict(seed=521, d_sae=6, d_in=4, describe="W of shape (6, 4) [d_sae, d_in], rows of norms from 0.2 to 6"),
               dict(seed=522, d_sae=10, d_in=7, zero_row=3, describe="W of shape (10, 7), row 3 all zeros (it must stay zeros, not NaN)")],
        hidden_cases=[dict(seed=0, d_sae=20, d_in=9, zero_row=11), dict(seed=0, d_sae=5, d_in=12)],
        mistakes=[
            Mistake("columns normalised", "normalise each *row* (one latent's decoder direction): W.norm(dim=-1, keepdim=True), not dim=0.", rows_columns),
            Mistake("Frobenius norm", "divide each row by its own norm, not the whole matrix by W.norm() (the Frobenius norm).", rows_frobenius),
            Mistake("squared norm", "divide by the norm, W.norm(dim=-1, keepdim=True), not the squared norm (sum of squares).", rows_squared_norm),
            Mistake("L1 norm", "divide by the L2 norm of each row (W.norm(dim=-1, keepdim=True)), not the sum of absolute values.", rows_l1),
            Mistake("division by zero", "an all-zero row gives 0 / 0 = NaN: clamp the norm, W.norm(dim=-1, keepdim=True).clamp_min(1e-8).", rows_no_clamp),
        ],
        stuck="W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8).",
    ),
    Exercise(
        name="l0", title="l0", reference=ref.l0, run=run_l0, kind="function",
        cases=[dict(seed=531, batch=7, d_sae=12, shift=0.5, describe="f of shape (7, 12) [batch, d_sae], about 30% of entries > 0, the rest exactly 0"),
               dict(seed=532, batch=3, pos=5, d_sae=8, shift=1.0,
                    describe="f of shape (3, 5, 8) [batch, pos, d_sae], about 16% of entries > 0, the rest exactly 0")],
        hidden_cases=[dict(seed=0, batch=11, d_sae=30, shift=0.2), dict(seed=0, batch=2, pos=9, d_sae=6, shift=0.7)],
        mistakes=[
            Mistake("fraction of latents", "L0 counts active latents per input: sum over the latent axis, (f != 0).float().sum(-1), "
                    "then average over inputs; .mean() over everything divides by d_sae too.", l0_fraction),
            Mistake("L1 norm", "count the non-zero latents, (f != 0), instead of summing their values: L0, not L1.", l0_l1),
            Mistake("total count", "average over the inputs: (f != 0).float().sum(-1).mean(), not the total count of the batch.", l0_total),
            Mistake("wrong axis", "count over the latent axis, the last one (.sum(-1)), then average over inputs; you summed over axis 0.", l0_wrong_axis),
            Mistake("mean over the first axis only", "average over every leading axis: with f of shape [batch, pos, d_sae] "
                    "that is .mean() with no dim after .sum(-1), not .mean(0).", l0_first_axis),
        ],
        stuck="(f != 0).float().sum(-1).mean().",
    ),
    Exercise(
        name="fvu", title="fvu", reference=ref.fvu, run=run_fvu, kind="function",
        cases=[dict(seed=533, batch=16, d_in=6, noise=0.5, describe="x of shape (16, 6) with a different non-zero mean in every dimension, x_hat = x + noise (std 0.5)"),
               dict(seed=534, batch=5, pos=4, d_in=8, noise=0.3,
                    describe="x of shape (5, 4, 8) [batch, pos, d_in] with a non-zero mean that differs per dimension and position, x_hat = x + noise (std 0.3)")],
        hidden_cases=[dict(seed=0, batch=40, d_in=10, noise=0.8), dict(seed=0, batch=3, pos=7, d_in=5, noise=0.4)],
        mistakes=[
            Mistake("not centred", "the denominator is the variance of x around its mean, sum ||x - x.mean(0)||^2, not sum ||x||^2.", fvu_not_centred),
            Mistake("variance explained", "return the fraction of variance *un*explained, sum ||x - x_hat||^2 / sum ||x - mean||^2 "
                    "(0 is perfect), not 1 minus it.", fvu_explained),
            Mistake("centred by one number", "subtract the mean of each dimension, x.mean(0) (a [d_in] vector), not x.mean(), one number for every entry.", fvu_global_mean),
            Mistake("average of per-input ratios", "divide the total squared error by the total variance over the batch; "
                    "a mean of one ratio per input weights the inputs differently.", fvu_per_input),
            Mistake("mean per position", "flatten the leading axes first, x.flatten(0, -2): with x of shape [batch, pos, d_in], "
                    "x.mean(0) is one mean per position, not the mean over every input.", fvu_per_position_mean),
        ],
        stuck="x, x_hat = x.flatten(0, -2), x_hat.flatten(0, -2); (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().",
    ),
    Exercise(
        name="dead_fraction", title="dead_fraction", reference=ref.dead_fraction, run=run_dead_fraction, kind="function",
        cases=[dict(seed=535, n=20, d_sae=12, dead=3, describe="f of shape (20, 12) [n, d_sae], 3 latents never fire, some inputs fire none"),
               dict(seed=536, n=9, d_sae=20, dead=8, describe="f of shape (9, 20), 8 latents never fire, some inputs fire none")],
        hidden_cases=[dict(seed=0, n=50, d_sae=32, dead=5), dict(seed=0, n=6, d_sae=7, dead=1)],
        mistakes=[
            Mistake("alive fraction", "return the fraction of latents that *never* fire, not of those that do.", dead_alive),
            Mistake("count, not fraction", "divide the number of dead latents by d_sae: .float().mean() over latents, not .sum().", dead_count),
            Mistake("fraction of zero entries", "a latent is dead when it is zero on *every* input: (f != 0).any(0) says which fire "
                    "at least once; (f == 0).mean() is the fraction of zero entries instead.", dead_zero_entries),
            Mistake("inputs instead of latents", "look along the batch axis, per latent: (f != 0).any(0) ([d_sae]), not .any(-1), "
                    "which finds inputs that activate no latent.", dead_inputs),
            Mistake("zero on some input", "dead means zero on *all* inputs: ~(f != 0).any(0) (or (f == 0).all(0)), not (f == 0).any(0).", dead_any_zero),
        ],
        stuck="(~(f != 0).any(0)).float().mean(): per latent, did it fire on any input?",
    ),
    Exercise(
        name="max_cosines", title="max_cosines", reference=ref.max_cosines, run=run_max_cosines, kind="function",
        cases=_DICT, hidden_cases=[dict(seed=0, n_true=20, d=8, d_sae=30), dict(seed=0, n_true=5, d=16, d_sae=9)],
        mistakes=[
            Mistake("abs() of the cosines", "keep the sign: a decoder row pointing *against* a feature (cosine -0.95) does not "
                    "represent it, since latents are non-negative.", cos_abs),
            Mistake("dot products", "normalise both sets of rows to unit norm first: a dot product of unnormalised rows is not a cosine.", cos_dot),
            Mistake("decoder rows not normalised", "normalise the decoder rows too (W_dec / W_dec.norm(dim=-1, keepdim=True)): "
                    "they need not be unit norm.", cos_decoder_raw),
            Mistake("true directions not normalised", "normalise the true directions too: these need not be unit vectors.", cos_true_raw),
            Mistake("max per latent", "take the max over the decoder rows for each *true feature* (.max(dim=-1) of [n_true, d_sae] "
                    "cosines), giving [n_true]; you took it per latent.", cos_per_latent),
            Mistake("columns normalised", "normalise each decoder *row* (dim=-1), not each column (dim=0).", cos_columns),
        ],
        stuck="a = W_dec / its row norms; b = true_directions / its row norms; (b @ a.T).max(dim=-1).values.",
    ),
    Exercise(
        name="fraction_recovered", title="fraction_recovered", reference=ref.fraction_recovered, run=run_fraction_recovered,
        kind="function", uses="max_cosines",
        cases=[dict(_DICT[0], seed=543, thresholds=(0.5, 0.8, 0.95),
                    describe=_DICT[0]["describe"] + "; called with threshold 0.5, 0.8 and 0.95"),
               dict(_DICT[1], seed=544, thresholds=(0.3, 0.7, 0.9),
                    describe=_DICT[1]["describe"] + "; called with threshold 0.3, 0.7 and 0.9")],
        hidden_cases=[dict(seed=0, n_true=20, d=8, d_sae=30, thresholds=(0.6, 0.85)), dict(seed=0, n_true=6, d=12, d_sae=9, thresholds=(0.4, 0.75))],
        mistakes=[
            Mistake("abs() of the cosines", "keep the sign of the cosines: a negated decoder row does not recover a feature.", rec_abs),
            Mistake("dot products", "compare cosine similarities (unit-normalised rows) with the threshold, not raw dot products.", rec_dot),
            Mistake("per latent", "count *true features* that some decoder row matches (max over decoder rows, per feature), "
                    "not decoder rows that match some feature.", rec_per_latent),
            Mistake("count, not fraction", "return the fraction of true features recovered (.float().mean()), not their number.", rec_count),
            Mistake("threshold ignored", "you compared with 0.9 whatever the `threshold` argument: use the threshold passed in.", rec_threshold_ignored),
            Mistake("every pair counted", "take each true feature's *best* cosine (max over decoder rows) before comparing: "
                    "the mean over every (feature, row) pair is a different number.", rec_mean_cosine),
        ],
        stuck="(max_cosines(W_dec, true_directions) > threshold).float().mean().",
    ),
    Exercise(
        name="relative_reconstruction_bias", title="relative_reconstruction_bias", reference=ref.relative_reconstruction_bias,
        run=run_gamma, kind="function",
        cases=[dict(seed=563, batch=12, d_in=6, shrink=0.5, noise=0.2,
                    describe="x of shape (12, 6), x_hat = x shrunk by 0.5-0.8 (per input) + noise (std 0.2)"),
               dict(seed=562, batch=4, pos=5, d_in=8, shrink=0.8, noise=0.5,
                    describe="x of shape (4, 5, 8) [batch, pos, d_in], x_hat = x shrunk by 0.8-1.1 (per input) + noise (std 0.5)")],
        hidden_cases=[dict(seed=0, batch=30, d_in=10, shrink=0.5, noise=0.2), dict(seed=0, batch=3, pos=6, d_in=4, shrink=0.9, noise=0.6)],
        mistakes=[
            Mistake("inverted", "gamma = sum ||x_hat||^2 / sum <x_hat, x>: the reconstruction's squared norm over its overlap with x, "
                    "not the other way round (below 1 means shrinkage).", gamma_inverted),
            Mistake("norm ratio", "gamma is not ||x_hat|| / ||x||: divide sum ||x_hat||^2 by sum <x_hat, x>, so noise in x_hat "
                    "is not mistaken for scale.", gamma_norm_ratio),
            Mistake("squared norm ratio", "divide sum ||x_hat||^2 by the overlap sum <x_hat, x> = (x_hat * x).sum(), not by sum ||x||^2.", gamma_squared_norm_ratio),
            Mistake("average of per-input ratios", "sum over the whole batch first, then divide once: "
                    "x_hat.pow(2).sum() / (x_hat * x).sum(), not a mean of one ratio per input.", gamma_per_input),
        ],
        stuck="x_hat.pow(2).sum() / (x_hat * x).sum() (both sums over every entry).",
    ),
    Exercise(
        name="topk_activation", title="topk_activation", reference=ref.topk_activation, run=run_topk, kind="function",
        cases=_TOPK, hidden_cases=[dict(seed=0, batch=9, d_sae=32, k=8), dict(seed=0, batch=3, d_sae=5, k=2)],
        mistakes=[
            Mistake("no ReLU", "apply a ReLU to the kept values: in a row whose top k includes negative pre-activations, "
                    "those latents must be 0, not negative.", topk_no_relu),
            Mistake("top k of |pre|", "select the k *largest* pre-activations (pre.topk(k)), not the largest in absolute value, "
                    "and keep their signed (then ReLU'd) values.", topk_abs),
            Mistake("k smallest", "keep the k largest pre-activations: topk's default largest=True, or a descending sort.", topk_smallest),
            Mistake("k - 1 kept", "pre > (k-th largest value) keeps only k - 1 entries: use >=, or scatter the topk values at their indices.", topk_strict),
        ],
        stuck="values, indices = pre.topk(k, dim=-1); torch.zeros_like(pre).scatter(-1, indices, F.relu(values)).",
    ),
    Exercise(
        name="batch_topk_activation", title="batch_topk_activation", reference=ref.batch_topk_activation, run=run_batch_topk,
        kind="function",
        cases=[dict(seed=571, batch=6, d_sae=10, k=5, describe="pre of shape (6, 10) [batch, d_sae], k=5: keep 30 of 60 entries; "
                    "fewer than 30 are positive, and some rows are far larger than others"),
               dict(seed=572, batch=4, d_sae=12, k=2, describe="pre of shape (4, 12), k=2: keep 8 of 48 entries; some rows far larger than others")],
        hidden_cases=[dict(seed=0, batch=10, d_sae=24, k=5), dict(seed=0, batch=4, d_sae=6, k=4)],
        mistakes=[
            Mistake("top k per row", "BatchTopK pools the whole batch: flatten pre and keep its k * batch largest entries, so one "
                    "row may keep more than k and another fewer.", btopk_per_row),
            Mistake("k, not k * batch", "keep k * batch entries of the flattened batch (k per input on average), not k in all.", btopk_k_only),
            Mistake("no ReLU", "apply a ReLU to the kept values: when fewer than k * batch entries are positive, the negative "
                    "ones kept must be 0.", btopk_no_relu),
            Mistake("top k per latent", "flatten the whole batch and take one top-k over it; pre.topk(k, dim=0) keeps k inputs per latent instead.", btopk_per_latent),
            Mistake("not reshaped", "reshape the result back to pre's shape [batch, d_sae] (.reshape(pre.shape)).", btopk_not_reshaped),
        ],
        stuck="flat = pre.flatten(); values, indices = flat.topk(k * pre.shape[0]); zeros_like(flat).scatter(-1, indices, F.relu(values)).reshape(pre.shape).",
    ),
    Exercise(
        name="auxk_activations", title="auxk_activations", reference=ref.auxk_activations, run=run_auxk, kind="function",
        uses="topk_activation",
        cases=[dict(seed=581, batch=5, d_sae=16, n_dead=7, k_aux=3, describe="pre of shape (5, 16), 7 of 16 latents dead, k_aux=3"),
               dict(seed=582, batch=4, d_sae=12, n_dead=2, k_aux=4, describe="pre of shape (4, 12), only 2 latents dead, k_aux=4 (fewer dead latents than k_aux)"),
               dict(seed=583, batch=3, d_sae=10, n_dead=0, k_aux=2, describe="pre of shape (3, 10), no latent dead, k_aux=2 (the result is all zeros)")],
        hidden_cases=[dict(seed=0, batch=8, d_sae=24, n_dead=10, k_aux=5), dict(seed=0, batch=2, d_sae=9, n_dead=3, k_aux=6)],
        mistakes=[
            Mistake("dead mask ignored", "choose among the *dead* latents only: fill the live ones with -inf "
                    "(pre.masked_fill(~dead, float('-inf'))) before the top-k.", auxk_mask_ignored),
            Mistake("live latents selected", "`dead` is True for the dead latents: keep those and mask the others "
                    "(masked_fill(~dead, -inf)); you kept the live ones.", auxk_live),
            Mistake("no ReLU", "apply a ReLU to the kept values: dead latents' pre-activations are often negative, and those must give 0.", auxk_no_relu),
            Mistake("no top-k", "keep only each input's k_aux largest dead pre-activations, not every dead latent's value.", auxk_no_topk),
            Mistake("top-k before the mask", "mask first, then take the top k_aux: the top k of all latents, then zeroing the live "
                    "ones, leaves fewer than k_aux dead latents.", auxk_topk_then_mask),
        ],
        stuck="n = min(k_aux, int(dead.sum())) (all zeros if 0); values, indices = pre.masked_fill(~dead, -inf).topk(n, dim=-1); scatter F.relu(values) into zeros.",
    ),
    Exercise(
        name="jumprelu", title="jumprelu", reference=ref.jumprelu, run=run_jumprelu, kind="function",
        cases=[dict(seed=591, batch=10, d_sae=8, max_threshold=0.8, describe="z of shape (10, 8) ~ N(0, 1), thresholds [8] from 0.05 to 0.85, one per latent"),
               dict(seed=592, batch=4, d_sae=15, max_threshold=1.5, describe="z of shape (4, 15), thresholds [15] from 0.05 to 1.55")],
        hidden_cases=[dict(seed=0, batch=10, d_sae=20, max_threshold=1.0), dict(seed=0, batch=2, d_sae=5, max_threshold=0.5)],
        mistakes=[
            Mistake("ReLU(z - threshold)", "JumpReLU keeps the full value z where z > threshold: z * (z > threshold), "
                    "not ReLU(z - threshold), which shrinks every active latent.", jr_shifted),
            Mistake("threshold ignored", "zero every entry with z <= threshold, not just the negative ones: z * (z > threshold).", jr_relu),
            Mistake("step only", "return z where it passes the threshold, not the 0/1 mask itself: z * (z > threshold).", jr_step),
            Mistake("abs(z) compared", "compare z itself with the threshold: a large negative z must give 0, not stay.", jr_abs),
            Mistake("one threshold for all latents", "each latent has its own threshold: compare z [batch, d_sae] with threshold [d_sae] "
                    "(broadcast along the batch), not with one number.", jr_one_threshold),
        ],
        stuck="z * (z > threshold): threshold [d_sae] broadcasts over the batch.",
    ),
    Exercise(
        name="jumprelu_threshold_grad", title="jumprelu_threshold_grad", reference=ref.jumprelu_threshold_grad,
        run=run_jumprelu_grad, kind="function",
        cases=[dict(seed=601, batch=12, d_sae=6, max_threshold=0.5, bandwidth=0.2,
                    describe="z of shape (12, 6), most entries within a bandwidth of the threshold, thresholds [6] from 0.05 to 0.55, bandwidth=0.2, grad_f ~ N(0, 1)"),
               dict(seed=602, batch=8, d_sae=10, max_threshold=1.0, bandwidth=0.05,
                    describe="z of shape (8, 10), most entries within a bandwidth of the threshold, thresholds [10] from 0.05 to 1.05, bandwidth=0.05, grad_f ~ N(0, 1)")],
        hidden_cases=[dict(seed=0, batch=20, d_sae=12, max_threshold=0.3, bandwidth=0.1), dict(seed=0, batch=5, d_sae=4, max_threshold=2.0, bandwidth=0.5)],
        mistakes=[
            Mistake("threshold factor missing", "f jumps by z = threshold at the threshold, so the estimate carries a factor threshold: "
                    "-(threshold / bandwidth) * rect(...), not -(1 / bandwidth) (that is the step function's, for the L0 penalty).", jg_no_threshold),
            Mistake("sign", "raising the threshold switches latents off, so df/dthreshold is negative: -(threshold / bandwidth) * rect(...).", jg_sign),
            Mistake("kernel too wide", "rect(u) is 1 for |u| < 1/2: the window is |z - threshold| < bandwidth / 2, not < bandwidth.", jg_full_width),
            Mistake("averaged over the batch", "sum over the batch (.sum(0)), as autograd does for a parameter used by every input, not .mean(0).", jg_mean),
            Mistake("not divided by the bandwidth", "the rectangle kernel has height 1 / bandwidth: -(threshold / bandwidth) * rect(...), not -threshold * rect(...).", jg_no_bandwidth),
            Mistake("grad_f ignored", "multiply by the upstream gradient grad_f (chain rule) before summing over the batch.", jg_grad_ignored),
        ],
        stuck="near = ((z - threshold).abs() < bandwidth / 2).float(); (-(threshold / bandwidth) * near * grad_f).sum(0).",
    ),
    Exercise(
        name="gated_encode", title="gated_encode", reference=ref.gated_encode, run=run_gated, kind="function",
        cases=[dict(seed=611, batch=6, d_in=5, d_sae=9, describe="x of shape (6, 5) with a non-zero mean, W_gate (5, 9), random non-zero b_gate, r_mag, b_mag and b_dec"),
               dict(seed=612, batch=4, d_in=8, d_sae=14, describe="x of shape (4, 8) with a non-zero mean, W_gate (8, 14), random non-zero b_gate, r_mag, b_mag and b_dec")],
        hidden_cases=[dict(seed=0, batch=10, d_in=12, d_sae=20), dict(seed=0, batch=3, d_in=4, d_sae=6)],
        mistakes=[
            Mistake("r_mag multiplied", "rescale with exp(r_mag): W_mag = W_gate * r_mag.exp() (positive, and 1 when r_mag = 0), not W_gate * r_mag.", gated_no_exp),
            Mistake("no rescale", "the magnitude path uses W_gate * exp(r_mag), not W_gate itself.", gated_no_rescale),
            Mistake("gate from the magnitude path", "the gate is (x - b_dec) @ W_gate + b_gate > 0, with b_gate: the gate path decides "
                    "which latents fire, the magnitude path only how much.", gated_gate_from_magnitude),
            Mistake("ReLU gate", "the gate is a 0/1 step, (pre_gate > 0), not ReLU(pre_gate): its value must not scale the magnitude.", gated_relu_gate),
            Mistake("no ReLU on the magnitudes", "apply a ReLU to the magnitude path: an open gate with a negative magnitude gives 0.", gated_no_magnitude_relu),
            Mistake("b_dec not subtracted", "both paths read x - b_dec, as in the ReLU SAE's encoder.", gated_no_b_dec),
        ],
        stuck="c = x - b_dec; gate = (c @ W_gate + b_gate) > 0; mag = F.relu(c @ (W_gate * r_mag.exp()) + b_mag); return gate * mag.",
    ),
    Exercise(
        name="absorption_rate", title="absorption_rate", reference=ref.absorption_rate, run=run_absorption_rate,
        kind="function",
        cases=[dict(seed=611, n=60, children=3, p_child=0.2,
                    describe="60 inputs, 3 children (sometimes two at once), the parent also present alone on some inputs"),
               dict(seed=612, n=45, children=2, p_child=0.3,
                    describe="45 inputs, 2 children (sometimes both), the parent also present alone on some inputs")],
        hidden_cases=[dict(seed=0, n=200, children=4, p_child=0.1), dict(seed=0, n=30, children=1, p_child=0.4)],
        mistakes=[
            Mistake("firing rate", "absorption is how often the parent latent is *silent* (f_parent == 0) when a child is present, "
                    "not how often it fires.", absorb_firing),
            Mistake("every parent input", "count only the inputs where a child is present too "
                    "(parent_present & child_present.any(-1)); where the parent is alone there is nothing to absorb it.",
                    absorb_all_parent_inputs),
            Mistake("first child only", "any child can absorb the parent: child_present.any(-1) over all the children, "
                    "not child_present[:, 0].", absorb_first_child),
            Mistake("all children at once", "one child is enough: child_present.any(-1), not .all(-1) (which asks for every "
                    "child at once).", absorb_every_child),
            Mistake("fraction of all inputs", "divide by the number of inputs where parent and child are present "
                    "(index f_parent with that mask, then .mean()), not by every input.", absorb_over_all_inputs),
            Mistake("parent alone", "that is the parent latent's miss rate when the parent is *alone*; absorption is measured "
                    "where a child is present too.", absorb_parent_alone),
            Mistake("mean of one rate per child", "count each input once: one fraction over all inputs where any child is "
                    "present (child_present.any(-1)), not the mean of one fraction per child (an input with two children "
                    "would count twice, a rare child as much as a common one).", absorb_mean_per_child),
        ],
        stuck="both = parent_present & child_present.any(-1); (f_parent[both] == 0).float().mean().",
    ),
    Exercise(
        name="auroc", title="auroc", reference=ref.auroc, run=run_auroc, kind="function",
        cases=[dict(seed=621, n=40, n_pos=12, scores="rounded", describe="40 scores rounded to one decimal (some ties), 12 positive labels (bool)"),
               dict(seed=622, n=30, n_pos=5, scores="integers", describe="30 scores taking the values 0..4 (ties everywhere), 5 positive labels (bool)")],
        hidden_cases=[dict(seed=0, n=100, n_pos=50, scores="rounded"), dict(seed=0, n=17, n_pos=3, scores="integers")],
        mistakes=[
            Mistake("ties ignored", "a tie between a positive and a negative counts one half: (pos > neg) + 0.5 * (pos == neg), "
                    "averaged over every pair (or tied scores share the mean of their ranks).", auroc_ties_ignored),
            Mistake("ties counted as wins", "a tie counts one half, not one: (pos > neg) + 0.5 * (pos == neg), not pos >= neg.", auroc_ties_win),
            Mistake("tied ranks not averaged", "with the rank method, tied scores must share the mean of their ranks; "
                    "argsort breaks ties by position.", auroc_ranks_no_ties),
            Mistake("1 - AUROC", "it is the probability that a random *positive* scores above a random negative; you computed the opposite.", auroc_flipped),
            Mistake("accuracy", "AUROC compares every positive with every negative; it is not the accuracy at a threshold.", auroc_accuracy),
            Mistake("not normalised", "divide the count of winning pairs (U) by n_pos * n_neg, the number of pairs.", auroc_not_normalised),
        ],
        atol=1e-5, rtol=1e-5,
        stuck="pos = scores[labels]; neg = scores[~labels]; ((pos[:, None] > neg).float() + 0.5 * (pos[:, None] == neg).float()).mean().",
    ),
    Exercise(
        name="ce_loss_recovered", title="ce_loss_recovered", reference=ref.ce_loss_recovered, run=run_ce_recovered,
        kind="function",
        cases=[dict(seed=631, n=5, clean=3.2, gap=4.0, describe="5 triples (ce_clean ~ 3.2-3.7, ce_ablated 2-6 above it, ce_spliced in between or just outside)"),
               dict(seed=632, n=4, clean=1.1, gap=0.8, describe="4 triples (ce_clean ~ 1.1-1.6, ce_ablated 0.4-1.2 above it, ce_spliced in between or just outside)")],
        hidden_cases=[dict(seed=0, n=7, clean=5.0, gap=2.0)],
        mistakes=[
            Mistake("inverted ratio", "(ce_ablated - ce_spliced) / (ce_ablated - ce_clean): the loss the SAE keeps over the loss at stake, not the other way round.", ce_inverted),
            Mistake("1 - recovered", "measure from the ablated end, (ce_ablated - ce_spliced) / (ce_ablated - ce_clean): "
                    "1 when the spliced loss equals the clean loss. You computed the fraction lost.", ce_one_minus),
            Mistake("ratio of losses", "compare with both baselines: (ce_ablated - ce_spliced) / (ce_ablated - ce_clean), not ce_clean / ce_spliced.", ce_loss_ratio),
            Mistake("divided by the ablated loss", "divide by the gap between the baselines, ce_ablated - ce_clean, not by ce_ablated.", ce_divided_by_ablated),
        ],
        stuck="(ce_ablated - ce_spliced) / (ce_ablated - ce_clean).",
    ),
]
