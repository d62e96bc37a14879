"""Chapter 3 exercises: toy models of superposition."""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

from utils import toy_models as ref
from utils.checks import Exercise, LearnerError, Mistake
from utils.checks.core import consistent_mistake, describe_difference, fail
from utils.toy_models import ToyConfig

CFG_A = ToyConfig(n_instances=3, n_features=5, n_hidden=2)
CFG_B = ToyConfig(n_instances=2, n_features=8, n_hidden=3)
CFG_H = ToyConfig(n_instances=4, n_features=11, n_hidden=4)  # hidden tests only


def _sparse_x(ctx, batch, cfg, p=0.4):
    values = ctx.randn(batch, cfg.n_instances, cfg.n_features).abs().clamp(max=1.0)
    return values * (ctx.randn(batch, cfg.n_instances, cfg.n_features) > math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * p)))


# ---- 1. generate_batch (judged statistically) ---------------------------------------------
N_BATCH = 4000


def run_generate_batch(impl, ctx):
    c = ctx.case
    p = torch.tensor(c["p"])
    ctx.seed_globals()
    batch = ctx.call(impl, N_BATCH, p, c["n_features"])
    return {"batch": batch, "p": p}


def _presence_correlation(batch: Tensor) -> float:
    """Mean correlation between the presence of feature 0 and 1, over instances where both vary."""
    present = (batch > 0).float()
    corrs = []
    for inst in range(batch.shape[1]):
        a, b = present[:, inst, 0], present[:, inst, 1]
        if a.std() > 0.05 and b.std() > 0.05:
            corrs.append(float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())))
    return max(corrs) if corrs else 0.0


def judge_generate_batch(exercise, outputs, references, mistakes):
    problems = []
    for i, (case, got, want) in enumerate(zip(exercise.cases, outputs, references)):
        batch, p = got.get("batch"), want["p"]
        expected_shape = tuple(want["batch"].shape)
        if not isinstance(batch, Tensor) or tuple(batch.shape) != expected_shape:
            problem = describe_difference("your batch", batch, want["batch"], 0, 0) or "wrong output"
        elif not batch.is_floating_point():
            problem = f"your batch has dtype {batch.dtype}; feature values are floats"
        elif not torch.isfinite(batch).all():
            # Before the range and density checks: NaN compares False with everything, so it would
            # read as "0 % of features present" there.
            n_nan, n_inf = int(torch.isnan(batch).sum()), int(torch.isinf(batch).sum())
            counts = " and ".join(f"{n} {kind} value(s)" for n, kind in ((n_nan, "NaN"), (n_inf, "inf")) if n)
            idx = [int(j) for j in (~torch.isfinite(batch)).nonzero()[0]]
            first = "NaN" if torch.isnan(batch[tuple(idx)]) else "inf"
            problem = (f"your batch contains {counts}; the first ({first}) at index {idx} [sample, instance, feature]. "
                       "Feature values must be finite numbers in [0, 1]: is there a division by zero (0 / 0 is NaN) or a log of 0?")
        elif _same_mask_every_sample(batch, p):
            problem = ("every sample has the same features present (in an instance with 0 < feature_probability < 1): "
                       "the mask must be drawn anew for every sample")
        elif batch.min() < 0 or batch.max() > 1:
            problem = f"feature values must lie in [0, 1], yours range from {batch.min():.2f} to {batch.max():.2f}"
        else:
            problem = None
            density = (batch > 0).float().mean(dim=(0, 2))
            n = batch.shape[0] * batch.shape[2]
            for inst, (d, q) in enumerate(zip(density.tolist(), p.tolist())):
                if abs(d - q) > 5 * math.sqrt(q * (1 - q) / n) + 0.01:
                    problem = f"in instance {inst}, {d:.1%} of features are present; expected {q:.1%} (feature_probability[{inst}])"
                    break
            if problem is None:
                nonzero = batch[batch > 0]
                if abs(nonzero.mean() - 0.5) > 0.02 or abs(nonzero.std() - 0.2887) > 0.02:
                    problem = (f"present features should take values from U[0, 1] (mean 0.50, std 0.29); "
                               f"yours have mean {nonzero.mean():.2f}, std {nonzero.std():.2f}")
                elif _presence_correlation(batch) > 0.3:
                    problem = "features are present or absent together; each feature must be drawn independently"
        problems.append(problem)
    failing = [i for i, problem in enumerate(problems) if problem]
    if failing:
        i = failing[0]
        fail(exercise, exercise.cases[i], problems[i], consistent_mistake(exercise, outputs, references, {}, failing))


def gb_no_mask(n_batch, feature_probability, n_features):
    return torch.rand(n_batch, feature_probability.shape[0], n_features)


def gb_inverted(n_batch, feature_probability, n_features):
    x = torch.rand(n_batch, feature_probability.shape[0], n_features)
    return x * (torch.rand_like(x) > feature_probability[:, None])


def gb_gaussian(n_batch, feature_probability, n_features):
    x = torch.randn(n_batch, feature_probability.shape[0], n_features)
    return x * (torch.rand_like(x) < feature_probability[:, None])


def gb_shared_mask(n_batch, feature_probability, n_features):
    x = torch.rand(n_batch, feature_probability.shape[0], n_features)
    return x * (torch.rand(n_batch, feature_probability.shape[0], 1) < feature_probability[:, None])


def gb_one_mask_for_batch(n_batch, feature_probability, n_features):
    x = torch.rand(n_batch, feature_probability.shape[0], n_features)
    return x * (torch.rand(1, feature_probability.shape[0], n_features) < feature_probability[:, None])


def gb_first_probability(n_batch, feature_probability, n_features):
    x = torch.rand(n_batch, feature_probability.shape[0], n_features)
    return x * (torch.rand_like(x) < feature_probability[0])


def _one_probability_for_all(batch, p) -> bool:
    """Every instance has the density of one and the same entry of ``p`` (which varies)."""
    if not isinstance(batch, Tensor) or batch.ndim != 3 or batch.shape[1] != p.shape[0] or bool((p == p[0]).all()):
        return False
    return any(_density_near(batch, torch.full_like(p, float(q))) for q in p.tolist())


def _same_mask_every_sample(batch, p) -> bool:
    """In some instance with 0 < p < 1, is the same mix of present and absent features in every sample?
    (All features present everywhere is "no sparsity", not this.)"""
    if not isinstance(batch, Tensor) or batch.ndim != 3 or batch.shape[0] < 2 or batch.shape[1] != p.shape[0]:
        return False
    present = batch > 0
    same = (present == present[:1]).all(dim=(0, 2))  # [instances]
    mixed = present[0].any(-1) & ~present[0].all(-1)
    return bool((same & mixed & (p > 0) & (p < 1)).any())


def _density_near(batch, target):
    if not isinstance(batch, Tensor) or batch.ndim != 3:
        return False
    return bool(((batch > 0).float().mean(dim=(0, 2)) - target).abs().max() < 0.03)


# ---- 2. ToyModel.forward, 10. HiddenReluModel.forward ------------------------------------
def run_toy_forward(impl, ctx):
    c = ctx.case
    model = ctx.make(impl, c["cfg"])
    x = _sparse_x(ctx, c["batch"], c["cfg"], c["p"])
    return {"out": ctx.call(model, x)}


class ToyNoRelu(ref.ToyModel):
    def forward(self, x):
        h = einops.einsum(x, self.W, "b i f, i h f -> b i h")
        return einops.einsum(h, self.W, "b i h, i h f -> b i f") + self.b_final


class ToyNoBias(ref.ToyModel):
    def forward(self, x):
        h = einops.einsum(x, self.W, "b i f, i h f -> b i h")
        return F.relu(einops.einsum(h, self.W, "b i h, i h f -> b i f"))


class ToyHiddenRelu(ref.ToyModel):
    def forward(self, x):
        h = F.relu(einops.einsum(x, self.W, "b i f, i h f -> b i h"))
        return F.relu(einops.einsum(h, self.W, "b i h, i h f -> b i f") + self.b_final)


class ToyBiasAfterRelu(ref.ToyModel):
    def forward(self, x):
        h = einops.einsum(x, self.W, "b i f, i h f -> b i h")
        return F.relu(einops.einsum(h, self.W, "b i h, i h f -> b i f")) + self.b_final


class HiddenReluWithoutHiddenRelu(ref.HiddenReluModel):
    def forward(self, x):
        return ToyModelForward(self, x)


def ToyModelForward(model, x):  # the plain ReLU-output forward, on any model with W and b_final
    h = einops.einsum(x, model.W, "b i f, i h f -> b i h")
    return F.relu(einops.einsum(h, model.W, "b i h, i h f -> b i f") + model.b_final)


class HiddenReluNoBias(ref.HiddenReluModel):
    def forward(self, x):
        h = F.relu(einops.einsum(x, self.W, "b i f, i h f -> b i h"))
        return F.relu(einops.einsum(h, self.W, "b i h, i h f -> b i f"))


class HiddenReluNoOutputRelu(ref.HiddenReluModel):
    def forward(self, x):
        h = F.relu(einops.einsum(x, self.W, "b i f, i h f -> b i h"))
        return einops.einsum(h, self.W, "b i h, i h f -> b i f") + self.b_final


# ---- 3. loss, 4. training step --------------------------------------------------------------
def run_loss(impl, ctx):
    c = ctx.case
    x = _sparse_x(ctx, c["batch"], c["cfg"], c["p"])
    out = x + 0.3 * ctx.randn(*x.shape)
    importance = c["decay"] ** torch.arange(c["cfg"].n_features, dtype=torch.float32)
    importance = importance * (1 + torch.arange(c["cfg"].n_instances)[:, None])  # differs per instance too
    loss = ctx.call(impl, out, x, importance)
    if isinstance(loss, Tensor) and loss.numel() == 1:
        loss = loss.reshape(())
    return {"loss": loss}


def loss_no_importance(out, x, importance):
    return ((x - out) ** 2).mean(dim=(0, 2)).sum()


def loss_mean_instances(out, x, importance):
    return (importance * (x - out) ** 2).mean()


def loss_sum_batch(out, x, importance):
    return (importance * (x - out) ** 2).sum(0).mean(-1).sum()


def loss_importance_squared(out, x, importance):
    return ((importance * (x - out)) ** 2).mean(dim=(0, 2)).sum()


def loss_sum_features(out, x, importance):
    return (importance * (x - out) ** 2).mean(0).sum()


def run_toy_step(impl, ctx):
    c = ctx.case
    model = ref.ToyModel(c["cfg"], seed=c["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    importance = c["decay"] ** torch.arange(c["cfg"].n_features, dtype=torch.float32)
    losses = []
    for _ in range(3):
        x = _sparse_x(ctx, 16, c["cfg"], c["p"])
        loss = ctx.call(impl, model, optimizer, x, importance)
        if isinstance(loss, Tensor) and loss.numel() == 1:
            loss = loss.item()
        if not isinstance(loss, (int, float)):
            raise LearnerError(f"train_toy_step should return the loss as a number (loss.item()), got {type(loss).__name__}")
        losses.append(float(loss))
    return {"losses": torch.tensor(losses), "W": model.W.detach().clone()}


def step_no_zero_grad(model, optimizer, x, importance):
    loss = ref.importance_weighted_loss(model(x), x, importance)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_plain_mse(model, optimizer, x, importance):
    loss = F.mse_loss(model(x), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def step_no_step(model, optimizer, x, importance):
    loss = ref.importance_weighted_loss(model(x), x, importance)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


# ---- 5-9, 11. measurements ------------------------------------------------------------------
def run_on_W(impl, ctx):
    c = ctx.case
    W = ctx.randn(c["inst"], c["hid"], c["feat"]) * c.get("scale", 1.0)
    if c.get("sparse_rows"):
        W = W * (ctx.randn(c["inst"], 1, c["feat"]) > 0)  # some features unrepresented
    if c.get("peaked"):  # each neuron has one strong feature of varying strength: shares near the purity line
        top = torch.stack([torch.randperm(c["feat"], generator=ctx.gen)[:1] for _ in range(c["inst"] * c["hid"])])
        bump = torch.zeros(c["inst"] * c["hid"], c["feat"]).scatter_(1, top, 1.0 + 3 * torch.rand(c["inst"] * c["hid"], 1, generator=ctx.gen))
        W = 0.4 * W + bump.reshape(c["inst"], c["hid"], c["feat"])
    if c.get("dead_neurons"):
        W = W * (ctx.randn(c["inst"], c["hid"], 1) > -0.5)  # some neurons (rows) with no weights at all
    value = ctx.call(impl, W, *c.get("args", ()))
    return {"value": value}


def poly_abs_share(W, purity=0.9, alive=0.1):
    positive = F.relu(W)
    share = positive.max(-1).values / positive.sum(-1).clamp_min(1e-12)
    live = positive.pow(2).sum(-1).sqrt() > alive
    return ((share < purity) & live).sum(-1).float() / live.sum(-1).clamp_min(1).float()


def norms_wrong_axis(W):
    return W.norm(dim=2)


def norms_squared(W):
    return (W**2).sum(1)


def norms_instance_axis(W):
    return W.norm(dim=0)


def gram_hidden(W):
    return einops.einsum(W, W, "i h1 f, i h2 f -> i h1 h2")


def gram_no_instances(W):
    return einops.einsum(W, W, "i h f1, j h f2 -> i f1 f2") / W.shape[0]


def gram_cosines(W):
    unit = W / W.norm(dim=1, keepdim=True)
    return einops.einsum(unit, unit, "i h f1, i h f2 -> i f1 f2")


def sup_includes_self(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    return (einops.einsum(unit, W, "i h a, i h b -> i a b") ** 2).sum(-1)


def sup_not_normalised(W):
    overlaps = einops.einsum(W, W, "i h a, i h b -> i a b") ** 2
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def sup_not_squared(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, W, "i h a, i h b -> i a b")
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def sup_cosines(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, unit, "i h a, i h b -> i a b") ** 2
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def dim_not_normalised(W):
    overlaps = einops.einsum(W, W, "i h a, i h b -> i a b") ** 2
    return W.norm(dim=1) ** 2 / overlaps.sum(-1)


def dim_excludes_self(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, W, "i h a, i h b -> i a b") ** 2
    return W.norm(dim=1) ** 2 / (overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)).clamp_min(1e-12)


def dim_norm_not_squared(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, W, "i h a, i h b -> i a b") ** 2
    return W.norm(dim=1) / overlaps.sum(-1).clamp_min(1e-12)


def dim_cosines(W):
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, unit, "i h a, i h b -> i a b") ** 2
    return W.norm(dim=1) ** 2 / overlaps.sum(-1).clamp_min(1e-12)


def run_phase(impl, ctx):
    c = ctx.case
    W = ctx.randn(c["inst"], 1, 2) * 0.8
    codes = ctx.call(impl, W, c["threshold"])
    return {"codes": codes}


def phase_signed(W, threshold=0.5):
    represented = W[:, 0, :] > threshold
    codes = torch.full((W.shape[0],), -1, dtype=torch.long)
    codes[represented[:, 0] & ~represented[:, 1]] = 0
    codes[~represented[:, 0] & represented[:, 1]] = 1
    codes[represented[:, 0] & represented[:, 1]] = 2
    return codes


def phase_swapped(W, threshold=0.5):
    codes = ref.one_neuron_phase(W, threshold)
    return torch.where(codes == 0, 1, torch.where(codes == 1, 0, codes))


def phase_threshold_ignored(W, threshold=0.5):
    return ref.one_neuron_phase(W, 0.5)


def phase_squared(W, threshold=0.5):
    represented = (W**2)[:, 0, :] > threshold
    codes = torch.full((W.shape[0],), -1, dtype=torch.long)
    codes[represented[:, 0] & ~represented[:, 1]] = 0
    codes[~represented[:, 0] & represented[:, 1]] = 1
    codes[represented[:, 0] & represented[:, 1]] = 2
    return codes


def poly_signed(W, purity=0.9, alive=0.1):
    energy = W**2
    total = energy.sum(-1)
    poly = (energy.max(-1).values / total.clamp_min(1e-12) < purity) & (total.sqrt() > alive)
    live = total.sqrt() > alive
    return poly.sum(-1).float() / live.sum(-1).clamp_min(1).float()


def poly_over_features(W, purity=0.9, alive=0.1):
    return ref.polysemantic_fraction(W.transpose(1, 2), purity, alive)


def poly_defaults(W, purity=0.9, alive=0.1):
    return ref.polysemantic_fraction(W)


def poly_dead_counted(W, purity=0.9, alive=0.1):
    energy = F.relu(W) ** 2
    total = energy.sum(-1)
    poly = (energy.max(-1).values / total.clamp_min(1e-12) < purity) & (total.sqrt() > alive)
    return poly.sum(-1).float() / W.shape[1]


# ---- 12-13. correlated and anti-correlated batches (judged on their statistics) ------------
N_PAIR_BATCH = 20_000


def _pair_stats(batch: Tensor) -> dict:
    """What a correlated batch must get right, as numbers that do not depend on the order of
    random draws: how often each two features are present together, the mean value of a present
    feature, and the mean product of a pair's values when both are present (1/4 if independent)."""
    if not isinstance(batch, Tensor) or batch.ndim != 3 or batch.shape[-1] % 2:
        return {"batch": batch}
    batch = batch.float()
    present = (batch > 0).float()
    co = einops.einsum(present, present, "b i f, b i g -> i f g") / batch.shape[0]
    mean_value = batch.sum(0).sum(-1) / present.sum(0).sum(-1).clamp_min(1)
    both = present[..., 0::2] * present[..., 1::2]
    product = (batch[..., 0::2] * batch[..., 1::2]).sum(dim=(0, 2)) / both.sum(dim=(0, 2)).clamp_min(1)
    return {"co_presence": co, "mean_value": mean_value, "pair_product": product}


def run_pair_batch(impl, ctx):
    c = ctx.case
    p = torch.tensor(c["p"])
    ctx.seed_globals()
    batch = ctx.call(impl, N_PAIR_BATCH, p, c["n_pairs"])
    if isinstance(batch, Tensor) and tuple(batch.shape) != (N_PAIR_BATCH, len(c["p"]), 2 * c["n_pairs"]):
        return {"shape": tuple(batch.shape)}
    return _pair_stats(batch)


def _pair_values(n_batch, p, n_pairs):
    return torch.rand(n_batch, p.shape[0], 2 * n_pairs)


def corr_independent(n_batch, feature_probability, n_pairs):
    return _pair_values(n_batch, feature_probability, n_pairs) * (torch.rand(n_batch, feature_probability.shape[0], 2 * n_pairs) < feature_probability[:, None])


def corr_halves(n_batch, feature_probability, n_pairs):
    present = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < feature_probability[:, None]
    return _pair_values(n_batch, feature_probability, n_pairs) * present.repeat(1, 1, 2)


def corr_shared_values(n_batch, feature_probability, n_pairs):
    values = torch.rand(n_batch, feature_probability.shape[0], n_pairs)
    present = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < feature_probability[:, None]
    return (values * present).repeat_interleave(2, dim=-1)


def corr_inverted(n_batch, feature_probability, n_pairs):
    present = torch.rand(n_batch, feature_probability.shape[0], n_pairs) > feature_probability[:, None]
    return _pair_values(n_batch, feature_probability, n_pairs) * present.repeat_interleave(2, dim=-1)


def anti_independent(n_batch, feature_probability, n_pairs):
    return corr_independent(n_batch, feature_probability, n_pairs)


def anti_pair_probability_p(n_batch, feature_probability, n_pairs):
    active = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < feature_probability[:, None]
    first = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < 0.5
    return _pair_values(n_batch, feature_probability, n_pairs) * torch.stack([active & first, active & ~first], -1).flatten(-2)


def anti_no_coin(n_batch, feature_probability, n_pairs):
    active = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < 2 * feature_probability[:, None]
    return _pair_values(n_batch, feature_probability, n_pairs) * torch.stack([active, torch.zeros_like(active)], -1).flatten(-2)


def anti_both_present(n_batch, feature_probability, n_pairs):
    active = torch.rand(n_batch, feature_probability.shape[0], n_pairs) < 2 * feature_probability[:, None]
    return _pair_values(n_batch, feature_probability, n_pairs) * active.repeat_interleave(2, dim=-1)


# ---- 14. pair_cosines, 15. band_counts ------------------------------------------------------
def pairs_dot(W):
    return (W[..., 0::2] * W[..., 1::2]).sum(1)


def pairs_halves(W):
    n = W.shape[-1] // 2
    return F.cosine_similarity(W[..., :n], W[..., n:], dim=1)


def pairs_abs(W):
    return ref.pair_cosines(W).abs()


def run_bands(impl, ctx):
    c = ctx.case
    fractions = torch.tensor(c["fractions"])
    which = ctx.randint(len(c["fractions"]), c["inst"], c["feat"])
    dims = fractions[which] + 0.03 * ctx.randn(c["inst"], c["feat"])  # near a band, some further than tol
    norms = 1.5 * torch.rand(c["inst"], c["feat"], generator=ctx.gen)  # some features dropped (norm < threshold)
    counts = ctx.call(impl, dims, norms, fractions, c["tol"], c["threshold"])
    return {"counts": counts}


def bands_dropped_counted(dims, norms, fractions, tol=0.02, threshold=0.5):
    return ref.band_counts(dims, torch.ones_like(norms), fractions, tol, threshold)


def bands_no_tolerance(dims, norms, fractions, tol=0.02, threshold=0.5):
    return ref.band_counts(dims, norms, fractions, float("inf"), threshold)


def bands_every_band(dims, norms, fractions, tol=0.02, threshold=0.5):
    values = dims[norms > threshold]
    return ((values[:, None] - fractions[None]).abs() < tol).sum(0)


def bands_threshold_ignored(dims, norms, fractions, tol=0.02, threshold=0.5):
    return ref.band_counts(dims, norms, fractions, tol, 0.5)



# ---- feature_status (dedicated / in superposition / not represented) --------------------------
def run_status(impl, ctx):
    """W with known parts: ``n_ded`` features alone on their own hidden axis (plus a little noise),
    the rest sharing the other axes, with norms from 0 to 1.5 (some exactly 0: dropped)."""
    c = ctx.case
    inst, hid, feat, n_ded = c["inst"], c["hid"], c["feat"], c["n_ded"]
    W = torch.zeros(inst, hid, feat)
    for i in range(inst):
        order = torch.randperm(feat, generator=ctx.gen)
        for axis, f in enumerate(order[:n_ded].tolist()):
            W[i, axis, f] = 0.55 + 0.9 * torch.rand((), generator=ctx.gen)  # some between 0.5 and 0.71
        rest = order[n_ded:]
        directions = F.normalize(ctx.randn(hid - n_ded, len(rest)), dim=0)
        W[i, n_ded:, rest] = directions * 1.5 * torch.rand(len(rest), generator=ctx.gen)
        W[i, :, rest[:2]] = 0.0  # dropped entirely: zero norm, zero superposition
    W = W + 0.03 * ctx.randn(inst, hid, feat) * (W != 0)  # a little interference on the dedicated axes
    return {"codes": ctx.call(impl, W, c["represented"], c["shared"])}


def status_dropped_not_excluded(W, represented=0.5, shared=0.1):
    codes = torch.where(ref.feature_norms(W) > represented, ref.SHARED, ref.NOT_REPRESENTED)
    codes[ref.superposition(W) < shared] = ref.DEDICATED  # overwrites dropped features too
    return codes


def status_squared_norm(W, represented=0.5, shared=0.1):
    return ref.feature_status(W, represented ** 0.5, shared)  # ||W_i||^2 > represented


def status_arguments_ignored(W, represented=0.5, shared=0.1):
    return ref.feature_status(W)


def status_codes_swapped(W, represented=0.5, shared=0.1):
    codes = ref.feature_status(W, represented, shared)
    return torch.where(codes == ref.DEDICATED, ref.SHARED, torch.where(codes == ref.SHARED, ref.DEDICATED, codes))


# ---- 16. AbsModel.forward (computation in superposition) ------------------------------------
def run_abs_forward(impl, ctx):
    c = ctx.case
    model = ctx.make(impl, c["cfg"])
    x = _sparse_x(ctx, c["batch"], c["cfg"], c["p"])
    x = x * torch.where(ctx.randn(*x.shape) > 0, 1.0, -1.0)  # values in [-1, 1]: both signs
    return {"out": ctx.call(model, x)}


def _abs_hidden(model, x):
    return einops.einsum(x, model.W1, "batch inst feat, inst hid feat -> batch inst hid")


class AbsNoHiddenRelu(ref.AbsModel):
    def forward(self, x):
        return F.relu(einops.einsum(_abs_hidden(self, x), self.W2, "batch inst hid, inst feat hid -> batch inst feat") + self.b_final)


class AbsTied(ref.AbsModel):
    def forward(self, x):
        h = F.relu(_abs_hidden(self, x))
        return F.relu(einops.einsum(h, self.W1, "batch inst hid, inst hid feat -> batch inst feat") + self.b_final)


class AbsNoOutputRelu(ref.AbsModel):
    def forward(self, x):
        h = F.relu(_abs_hidden(self, x))
        return einops.einsum(h, self.W2, "batch inst hid, inst feat hid -> batch inst feat") + self.b_final


class AbsNoBias(ref.AbsModel):
    def forward(self, x):
        h = F.relu(_abs_hidden(self, x))
        return F.relu(einops.einsum(h, self.W2, "batch inst hid, inst feat hid -> batch inst feat"))


# ---------------------------------------------------------------------------------------------
_W_CASES = [dict(seed=81, inst=3, hid=2, feat=5, describe="W of shape (3, 2, 5) [instances, hidden, features]"),
            dict(seed=82, inst=2, hid=4, feat=9, sparse_rows=True, describe="W of shape (2, 4, 9), some features zeroed")]
_W_HIDDEN = [dict(seed=0, inst=5, hid=3, feat=12, sparse_rows=True)]

EXERCISES = [
    Exercise(
        name="generate_batch", title="generate_batch", reference=ref.generate_batch, run=run_generate_batch, kind="function",
        judge=judge_generate_batch,
        cases=[dict(seed=91, p=[1.0, 0.5, 0.1], n_features=6, describe=f"{N_BATCH} samples, feature_probability [1.0, 0.5, 0.1], 6 features"),
               dict(seed=92, p=[0.3, 0.05], n_features=10, describe=f"{N_BATCH} samples, feature_probability [0.3, 0.05], 10 features")],
        mistakes=[
            Mistake("no sparsity", "every feature is always present: multiply the values by a mask `torch.rand(...) < feature_probability`.", gb_no_mask,
                    detect=lambda got, want: _density_near(got["batch"], torch.ones_like(want["p"])) and not bool((want["p"] == 1).all())),
            Mistake("one probability for every instance", "every instance has the same density, that of a single entry of "
                    "feature_probability (feature_probability[0]?): compare with feature_probability[:, None], one probability "
                    "per instance, broadcast over the features.", gb_first_probability,
                    detect=lambda got, want: _one_probability_for_all(got["batch"], want["p"])),
            Mistake("inverted probability", "features are present with probability 1 - p: a feature is present when rand < p.", gb_inverted,
                    detect=lambda got, want: _density_near(got["batch"], 1 - want["p"])),
            Mistake("Gaussian values", "torch.randn gives negative values; feature values come from U[0, 1]: torch.rand.", gb_gaussian,
                    detect=lambda got, want: isinstance(got["batch"], Tensor) and bool(got["batch"].min() < 0)),
            Mistake("one mask per instance", "your mask has one entry per (sample, instance): draw it for every feature separately.", gb_shared_mask,
                    detect=lambda got, want: isinstance(got["batch"], Tensor) and got["batch"].ndim == 3 and _presence_correlation(got["batch"]) > 0.3),
            Mistake("one mask for the whole batch", "your mask has no batch axis (shape [n_instances, n_features] or [1, ...]), so "
                    "every sample gets the same features: draw it with the full shape, torch.rand(n_batch, n_instances, n_features) "
                    "< feature_probability[:, None].", gb_one_mask_for_batch,
                    detect=lambda got, want: _same_mask_every_sample(got["batch"], want["p"])),
        ],
        stuck="values = torch.rand(n_batch, n_instances, n_features); mask = torch.rand(same shape) < feature_probability[:, None]; return values * mask.",
    ),
    Exercise(
        name="toy_model", title="ToyModel", reference=ref.ToyModel, run=run_toy_forward,
        cases=[dict(seed=93, cfg=CFG_A, batch=6, p=0.4, describe="x of shape (6, 3, 5) [batch, instances, features], random W and b_final"),
               dict(seed=94, cfg=CFG_B, batch=4, p=0.8, describe="x of shape (4, 2, 8), random W and b_final")],
        hidden_cases=[dict(seed=0, cfg=CFG_H, batch=7, p=0.2)],
        mistakes=[
            Mistake("no ReLU", "the output is ReLU(W^T h + b_final): you left out the ReLU.", ToyNoRelu),
            Mistake("no bias", "add b_final before the ReLU.", ToyNoBias),
            Mistake("ReLU on the hidden layer", "this model is linear in the hidden layer (h = W x); the hidden ReLU is a different model (section 6).", ToyHiddenRelu),
            Mistake("bias after the ReLU", "add b_final inside the ReLU, ReLU(W^T h + b_final), not after it: a negative bias must be able to silence a feature.", ToyBiasAfterRelu),
        ],
        stuck="h = einsum(x, W, 'batch inst feat, inst hid feat -> batch inst hid'); out = einsum(h, W, 'batch inst hid, inst hid feat -> batch inst feat'); ReLU(out + b_final).",
    ),
    Exercise(
        name="toy_loss", title="importance_weighted_loss", reference=ref.importance_weighted_loss, run=run_loss, kind="function",
        cases=[dict(seed=95, cfg=CFG_A, batch=8, p=0.4, decay=0.8, describe="out and x of shape (8, 3, 5), importance (3, 5) [instances, features]"),
               dict(seed=96, cfg=CFG_B, batch=5, p=0.7, decay=0.6, describe="out and x of shape (5, 2, 8), importance (2, 8)")],
        hidden_cases=[dict(seed=0, cfg=CFG_H, batch=9, p=0.3, decay=0.9)],
        mistakes=[
            Mistake("importance ignored", "weight each feature's squared error by its importance.", loss_no_importance),
            Mistake("mean over instances", "sum over instances (each instance is its own model); average over batch and features only.", loss_mean_instances),
            Mistake("sum over the batch", "average over the batch; a sum makes the loss (and the step size) grow with the batch size.", loss_sum_batch),
            Mistake("importance inside the square", "you squared the importance too ((importance * (x - out)) ** 2): weight the squared error, importance * (x - out) ** 2.", loss_importance_squared),
            Mistake("sum over features", "average over the features as well as the batch (.mean(dim=(0, 2))), then sum over instances only.", loss_sum_features),
        ],
        stuck="(importance * (x - out) ** 2).mean(dim=(0, 2)).sum().",
    ),
    Exercise(
        name="toy_train_step", title="train_toy_step", reference=ref.train_toy_step, run=run_toy_step, kind="function",
        uses="importance_weighted_loss", rtol=1e-3,
        cases=[dict(seed=97, cfg=CFG_A, p=0.4, decay=0.9, describe="3 AdamW steps (lr 1e-2) on a ToyModel with 3 instances, 5 features, 2 hidden, importance 0.9^i"),
               dict(seed=98, cfg=CFG_B, p=0.7, decay=0.7, describe="3 AdamW steps (lr 1e-2) on a ToyModel with 2 instances, 8 features, 3 hidden, importance 0.7^i")],
        mistakes=[
            Mistake("no zero_grad", "gradients accumulate across steps: call optimizer.zero_grad() before loss.backward().", step_no_zero_grad),
            Mistake("no optimizer.step()", "the weights never change: optimizer.step() is missing, or zero_grad() clears the gradients "
                    "between loss.backward() and optimizer.step(). The order is zero_grad(), backward(), step().", step_no_step),
            Mistake("plain MSE", "you trained on an unweighted mean squared error (F.mse_loss); use importance_weighted_loss(model(x), x, importance).", step_plain_mse),
        ],
        stuck="loss = importance_weighted_loss(model(x), x, importance); zero_grad; backward; step; return loss.item().",
    ),
    Exercise(
        name="feature_norms", title="feature_norms", reference=ref.feature_norms, run=run_on_W, kind="function", cases=_W_CASES,
        hidden_cases=_W_HIDDEN,
        mistakes=[
            Mistake("wrong axis", "a feature's direction is a column W[:, :, i]: take the norm over the hidden axis (dim=1).", norms_wrong_axis),
            Mistake("squared", "return the norm itself, not its square.", norms_squared),
            Mistake("instance axis", "W has an instance axis first ([instances, hidden, features]): the hidden axis is dim=1, not dim=0 as for a single 2-D W.", norms_instance_axis),
        ],
        stuck="W.norm(dim=1).",
    ),
    Exercise(
        name="gram", title="gram", reference=ref.gram, run=run_on_W, kind="function", cases=_W_CASES,
        hidden_cases=_W_HIDDEN,
        mistakes=[
            Mistake("W W^T", "you computed W W^T ([hidden, hidden]); the feature-by-feature matrix is W^T W ([features, features]).", gram_hidden),
            Mistake("mixed instances", "each instance is a separate model: keep the instance axis in both operands.", gram_no_instances),
            Mistake("cosine similarities", "you normalised the columns first (cosine similarities); the Gram matrix uses W itself, so its diagonal holds the squared norms ||W_i||^2.", gram_cosines),
        ],
        stuck="einops.einsum(W, W, 'inst hid f1, inst hid f2 -> inst f1 f2').",
    ),
    Exercise(
        name="superposition", title="superposition", reference=ref.superposition, run=run_on_W, kind="function", cases=_W_CASES,
        hidden_cases=_W_HIDDEN,
        mistakes=[
            Mistake("includes itself", "leave out j = i: a feature does not interfere with itself.", sup_includes_self),
            Mistake("not normalised", "project onto the *unit* vector of feature i (divide W_i by its norm).", sup_not_normalised),
            Mistake("not squared", "square each overlap before summing, (W_i_hat . W_j) ** 2: signed overlaps cancel out.", sup_not_squared),
            Mistake("both normalised", "normalise only feature i's vector: (W_i_hat . W_j)^2 keeps W_j's length, so a weakly represented feature interferes less.", sup_cosines),
        ],
        stuck="unit = W / W.norm(dim=1, keepdim=True); overlaps[i, j] = (unit_i . W_j)^2; sum over j and subtract the diagonal.",
    ),
    Exercise(
        name="feature_dimensionality", title="feature_dimensionality", reference=ref.feature_dimensionality, run=run_on_W, kind="function",
        cases=_W_CASES, atol=1e-3, rtol=1e-3,
        mistakes=[
            Mistake("not normalised", "the denominator projects onto the *unit* vector of feature i: (W_i_hat . W_j)^2.", dim_not_normalised),
            Mistake("self left out", "the denominator's sum includes j = i (that term is ||W_i||^2, so a lone feature gets D = 1).", dim_excludes_self),
            Mistake("norm not squared", "the numerator is the *squared* norm, W.norm(dim=1) ** 2.", dim_norm_not_squared),
            Mistake("both normalised", "normalise only W_i in the denominator: sum_j (W_i_hat . W_j)^2 keeps W_j's length.", dim_cosines),
        ],
        stuck="D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2, the sum including j = i.",
    ),
    Exercise(
        name="one_neuron_phase", title="one_neuron_phase", reference=ref.one_neuron_phase, run=run_phase, kind="function",
        cases=[dict(seed=99, inst=40, threshold=0.5, describe="W of shape (40, 1, 2): 40 one-neuron models of 2 features, threshold 0.5"),
               dict(seed=100, inst=64, threshold=0.3, describe="W of shape (64, 1, 2), threshold 0.3")],
        mistakes=[
            Mistake("sign", "a feature is represented whatever the sign of its weight: compare |W| with the threshold.", phase_signed),
            Mistake("codes swapped", "code 0 means only feature 0 is represented, code 1 only feature 1.", phase_swapped),
            Mistake("threshold ignored", "you compared with 0.5 whatever the `threshold` argument: compare |W| with `threshold`.", phase_threshold_ignored),
            Mistake("squared weight", "compare |W| itself with the threshold, not W ** 2.", phase_squared),
        ],
        stuck="represented = W.abs()[:, 0, :] > threshold; then codes 0 / 1 / 2 / -1 from the two booleans.",
    ),
    Exercise(
        name="hidden_relu_model", title="HiddenReluModel", reference=ref.HiddenReluModel, run=run_toy_forward,
        cases=[dict(seed=101, cfg=CFG_A, batch=6, p=0.4, describe="x of shape (6, 3, 5), random W and b_final"),
               dict(seed=102, cfg=CFG_B, batch=4, p=0.8, describe="x of shape (4, 2, 8), random W and b_final")],
        mistakes=[
            Mistake("no hidden ReLU", "the privileged-basis model applies a ReLU to the hidden layer: h = ReLU(W x).", HiddenReluWithoutHiddenRelu),
            Mistake("no output ReLU", "keep the output ReLU too: ReLU(W^T h + b_final).", HiddenReluNoOutputRelu),
            Mistake("no bias", "add b_final before the output ReLU: ReLU(W^T h + b_final).", HiddenReluNoBias),
        ],
        stuck="h = ReLU(einsum(x, W)); out = ReLU(einsum(h, W) + b_final).",
    ),
    Exercise(
        name="polysemantic_fraction", title="polysemantic_fraction", reference=ref.polysemantic_fraction, run=run_on_W, kind="function",
        cases=[dict(seed=103, inst=4, hid=5, feat=10, args=(0.9, 0.1), peaked=True,
                    describe="W of shape (4, 5, 10) [instances, neurons, features], one strong feature per neuron, purity 0.9, alive 0.1"),
               dict(seed=104, inst=3, hid=6, feat=6, sparse_rows=True, dead_neurons=True, args=(0.7, 0.3),
                    describe="W of shape (3, 6, 6), some features zeroed, some neurons dead, purity 0.7, alive 0.3")],
        mistakes=[
            Mistake("negative weights counted", "behind a ReLU a negative weight only silences a neuron: measure purity on the positive weights (F.relu(W) ** 2).", poly_signed),
            Mistake("features, not neurons", "the question is per *neuron* (a row W[:, j, :]): how many features does it respond to?", poly_over_features),
            Mistake("arguments ignored", "you used purity 0.9 and alive 0.1 whatever the arguments: use the `purity` and `alive` passed in.", poly_defaults),
            Mistake("share of the weight, not of its square", "purity is the top feature's share of the neuron's *squared* positive "
                    "weight: energy = F.relu(W) ** 2, then max / sum over features (you took shares of F.relu(W) itself).", poly_abs_share),
            Mistake("dead neurons counted", "divide by the number of *live* neurons (positive-weight norm > alive), not by every neuron.", poly_dead_counted),
        ],
        stuck="energy = relu(W)**2; per neuron: top share = max over features / sum over features; polysemantic if share < purity among live neurons.",
    ),
    Exercise(
        name="correlated_batch", title="generate_correlated_batch", reference=ref.generate_correlated_batch, run=run_pair_batch,
        kind="function", atol=0.03, rtol=0,
        cases=[dict(seed=111, p=[0.4, 0.2, 0.05], n_pairs=2, describe=f"{N_PAIR_BATCH} samples, feature_probability [0.4, 0.2, 0.05], 2 pairs (4 features)"),
               dict(seed=112, p=[0.3, 0.1], n_pairs=4, describe=f"{N_PAIR_BATCH} samples, feature_probability [0.3, 0.1], 4 pairs (8 features)")],
        hidden_cases=[dict(seed=0, p=[0.25, 0.15, 0.1, 0.05], n_pairs=3)],
        mistakes=[
            Mistake("independent features", "each feature has its own mask, so a pair is present together only p^2 of the time: draw one "
                    "mask per *pair*, shape [n_batch, n_instances, n_pairs], and use it for both features of the pair.", corr_independent),
            Mistake("pairs not adjacent", "features k and k + n_pairs share a mask: `.repeat(1, 1, 2)` copies the whole mask; the pairs are "
                    "features (2k, 2k+1), so duplicate each entry in place with `.repeat_interleave(2, dim=-1)`.", corr_halves),
            Mistake("values shared", "both features of a pair take the same value: they are present together, but each draws its own "
                    "U[0, 1] value (values of shape [n_batch, n_instances, 2 * n_pairs]).", corr_shared_values),
            Mistake("inverted probability", "pairs are present with probability 1 - p: a pair is present when rand < p.", corr_inverted),
        ],
        stuck="values = torch.rand(n_batch, n_inst, 2 * n_pairs); pair = torch.rand(n_batch, n_inst, n_pairs) < feature_probability[:, None]; "
              "return values * pair.repeat_interleave(2, dim=-1).",
    ),
    Exercise(
        name="anticorrelated_batch", title="generate_anticorrelated_batch", reference=ref.generate_anticorrelated_batch, run=run_pair_batch,
        kind="function", atol=0.03, rtol=0,
        cases=[dict(seed=113, p=[0.4, 0.2, 0.05], n_pairs=2, describe=f"{N_PAIR_BATCH} samples, feature_probability [0.4, 0.2, 0.05], 2 pairs (4 features)"),
               dict(seed=114, p=[0.3, 0.1], n_pairs=4, describe=f"{N_PAIR_BATCH} samples, feature_probability [0.3, 0.1], 4 pairs (8 features)")],
        hidden_cases=[dict(seed=0, p=[0.25, 0.15, 0.1, 0.05], n_pairs=3)],
        mistakes=[
            Mistake("independent features", "the two features of a pair are sometimes present together: draw whether the *pair* is active "
                    "(probability 2p), then a coin that picks exactly one of its two features.", anti_independent),
            Mistake("pair active with probability p", "each feature is present only p/2 of the time: the pair must be active with "
                    "probability 2p, so that each of its features, picked half the time, is present with probability p.", anti_pair_probability_p),
            Mistake("no coin flip", "the second feature of each pair is never present: pick which feature of an active pair is present "
                    "with a fair coin (torch.rand(...) < 0.5), the first when it is True, the second when False.", anti_no_coin),
            Mistake("both present", "when a pair is active you set both of its features: anti-correlated features are never present "
                    "together, exactly one of the two is.", anti_both_present),
        ],
        stuck="active = rand(n_batch, n_inst, n_pairs) < 2 * p[:, None]; first = rand(same) < 0.5; "
              "present = torch.stack([active & first, active & ~first], dim=-1).flatten(-2); return torch.rand(...) * present.",
    ),
    Exercise(
        name="pair_cosines", title="pair_cosines", reference=ref.pair_cosines, run=run_on_W, kind="function",
        cases=[dict(seed=115, inst=3, hid=2, feat=4, describe="W of shape (3, 2, 4) [instances, hidden, features]: 2 pairs"),
               dict(seed=116, inst=2, hid=3, feat=8, scale=2.0, describe="W of shape (2, 3, 8), entries twice as large: 4 pairs")],
        hidden_cases=[dict(seed=0, inst=5, hid=4, feat=6, scale=0.5)],
        mistakes=[
            Mistake("dot product, not cosine", "divide the dot product by both norms, ||W_2k|| ||W_2k+1||: a cosine lies in [-1, 1] "
                    "whatever the features' lengths.", pairs_dot),
            Mistake("pairs not adjacent", "the pairs are features (2k, 2k+1), W[..., 0::2] with W[..., 1::2]; you paired k with k + n_pairs.", pairs_halves),
            Mistake("absolute value", "keep the sign: an antipodal pair has cosine -1, an aligned one +1; |cos| cannot tell them apart.", pairs_abs),
        ],
        stuck="F.cosine_similarity(W[..., 0::2], W[..., 1::2], dim=1): the hidden axis is dim 1.",
    ),
    Exercise(
        name="band_counts", title="band_counts", reference=ref.band_counts, run=run_bands, kind="function",
        cases=[dict(seed=117, inst=4, feat=30, fractions=[1.0, 0.75, 2 / 3, 0.5, 0.4, 0.375], tol=0.03, threshold=0.5,
                    describe="dims and norms of shape (4, 30), the paper's six bands (2/5 and 3/8 closer than 2 * tol), tol 0.03, threshold 0.5"),
               dict(seed=118, inst=3, feat=12, fractions=[1.0, 0.5, 1 / 3], tol=0.02, threshold=0.8,
                    describe="dims and norms of shape (3, 12), bands [1, 1/2, 1/3], tol 0.02, threshold 0.8")],
        hidden_cases=[dict(seed=0, inst=6, feat=50, fractions=[1.0, 0.75, 2 / 3, 0.5, 0.4, 0.375, 0.25], tol=0.025, threshold=0.3)],
        mistakes=[
            Mistake("dropped features counted", "count only represented features, norms > threshold: a dropped feature's dimensionality means nothing.", bands_dropped_counted),
            Mistake("tolerance ignored", "a value counts for its nearest band only when it lies within tol of it; values between bands count for none.", bands_no_tolerance),
            Mistake("counted in every band", "some values were counted twice (2/5 and 3/8 lie 0.025 apart, less than 2 * tol): count each "
                    "value once, for its *nearest* band (argmin of the distance), if that band is within tol.", bands_every_band),
            Mistake("threshold ignored", "you kept features with norm > 0.5 whatever the `threshold` argument: use `threshold`.", bands_threshold_ignored),
        ],
        stuck="v = dims[norms > threshold]; d = (v[:, None] - fractions[None]).abs(); nearest = d.min(-1); "
              "torch.bincount(nearest.indices[nearest.values < tol], minlength=len(fractions)).",
    ),
    Exercise(
        name="feature_status", title="feature_status", reference=ref.feature_status, run=run_status, kind="function",
        cases=[dict(seed=121, inst=3, hid=5, feat=12, n_ded=3, represented=0.5, shared=0.1,
                    describe="W of shape (3, 5, 12) [instances, hidden, features]: 3 features on axes of their own, 2 dropped, "
                             "the rest sharing 2 axes; represented 0.5, shared 0.1"),
               dict(seed=122, inst=2, hid=6, feat=9, n_ded=2, represented=0.3, shared=0.25,
                    describe="W of shape (2, 6, 9): 2 features on axes of their own, 2 dropped; represented 0.3, shared 0.25")],
        hidden_cases=[dict(seed=0, inst=5, hid=8, feat=20, n_ded=4, represented=0.4, shared=0.15)],
        mistakes=[
            Mistake("dropped features classified", "a feature with norm <= represented is not represented (code 0) whatever its "
                    "superposition: a dropped feature has no direction, so its superposition (here 0) means nothing. "
                    "Decide 'represented?' first, then 'dedicated or shared?' only for represented features.", status_dropped_not_excluded),
            Mistake("squared norm", "compare the norm ||W_i|| with `represented`, not the squared norm (the diagonal of W^T W).", status_squared_norm),
            Mistake("arguments ignored", "you used represented 0.5 and shared 0.1 whatever the arguments: use the `represented` and "
                    "`shared` passed in.", status_arguments_ignored),
            Mistake("codes swapped", "code 1 means a dedicated dimension (superposition < shared), code 2 in superposition "
                    "(superposition >= shared).", status_codes_swapped),
        ],
        stuck="norms = feature_norms(W); sup = superposition(W); codes = torch.where(sup < shared, 1, 2); "
              "return torch.where(norms > represented, codes, 0).",
    ),
    Exercise(
        name="abs_model", title="AbsModel", reference=ref.AbsModel, run=run_abs_forward,
        cases=[dict(seed=119, cfg=ToyConfig(n_instances=3, n_features=5, n_hidden=4), batch=6, p=0.5,
                    describe="x of shape (6, 3, 5) with values in [-1, 1], 4 hidden neurons, random W1, W2, b_final"),
               dict(seed=120, cfg=ToyConfig(n_instances=2, n_features=4, n_hidden=7), batch=5, p=0.9,
                    describe="x of shape (5, 2, 4) with values in [-1, 1], 7 hidden neurons, random W1, W2, b_final")],
        hidden_cases=[dict(seed=0, cfg=ToyConfig(n_instances=4, n_features=9, n_hidden=6), batch=8, p=0.3)],
        mistakes=[
            Mistake("no hidden ReLU", "apply a ReLU to the hidden layer, h = ReLU(W1 x): without it the model is linear up to the "
                    "output ReLU and cannot compute |x| = ReLU(x) + ReLU(-x).", AbsNoHiddenRelu),
            Mistake("tied weights", "this model has its own output weights: contract h with W2 ([instances, features, hidden]), not with W1.", AbsTied),
            Mistake("no output ReLU", "keep the output ReLU: y' = ReLU(W2 h + b_final).", AbsNoOutputRelu),
            Mistake("no bias", "add b_final before the output ReLU: ReLU(W2 h + b_final).", AbsNoBias),
        ],
        stuck="h = ReLU(einsum(x, W1, 'batch inst feat, inst hid feat -> batch inst hid')); "
              "out = ReLU(einsum(h, W2, 'batch inst hid, inst feat hid -> batch inst feat') + b_final).",
    ),
]
