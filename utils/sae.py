"""Sparse autoencoders (SAEs): dictionary learning on activations, scored against ground truth.

An SAE rewrites an activation vector x (``d_in`` numbers) as a sparse, non-negative
combination of ``d_sae`` learned directions (the decoder's rows, the "dictionary"):

    f     = activation((x - b_dec) @ W_enc + b_enc)     latents: [.., d_sae], mostly zero
    x_hat = f @ W_dec + b_dec                           reconstruction: [.., d_in]

If x really is a sparse sum of feature directions in superposition (chapter 3), a well-trained
SAE finds those directions. Here we can *check*: the synthetic data below and the course
language's annotations say which features are really there.

One family, five sparsity mechanisms (``SAEConfig.architecture``):

* ``"relu"``: ReLU latents with an L1 penalty (Towards Monosemanticity, Bricken et al. 2023).
  The L1 penalty also shrinks every active latent: the reconstruction comes out too small.
* ``"topk"``: keep each input's k largest pre-activations (Gao et al. 2024); L0 = k exactly,
  no penalty, no shrinkage. AuxK revives latents that have stopped firing.
* ``"batchtopk"``: keep the batch's k * batch largest (Bussmann et al. 2024): L0 = k on
  average, so easy inputs use fewer latents; at inference a threshold replaces the batch.
* ``"jumprelu"``: f = z if z > threshold else 0, a learned threshold per latent, trained with
  a straight-through estimator and an L0 penalty (Rajamanoharan et al. 2024b).
* ``"gated"``: a gate decides *which* latents fire, a separate magnitude path *how much*
  (Rajamanoharan et al. 2024a); the L1 penalty sits on the gate only.

Decoder rows are kept at unit norm (after every optimiser step), so a latent's activation is
the size of its feature and the L1 penalty cannot be dodged by shrinking f and growing W_dec.

Saved SAEs use SAELens's on-disk layout (a folder with ``cfg.json`` and
``sae_weights.safetensors``, parameters ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc``, ``b_dec``, ``threshold``), so they open in SAELens too.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")


# ---- Synthetic superposed data with known features ------------------------------------------
@dataclass(frozen=True)
class FeatureDataConfig:
    """``n_features`` sparse features in ``d`` dimensions. Feature i is present with
    probability ``l0 / n_features`` (so about ``l0`` are active per sample), with a magnitude
    drawn from U[min_magnitude, 1]; the sample is the sum of the active features' directions
    times their magnitudes."""

    n_features: int = 128
    d: int = 32
    l0: float = 4.0
    min_magnitude: float = 0.25
    seed: int = 0


class SyntheticFeatures:
    """Known feature directions (random unit vectors) and a seeded sampler of their sparse sums.

    >>> data = SyntheticFeatures(FeatureDataConfig())
    >>> x, f = data.sample(1024)      # x: [1024, 32] activations, f: [1024, 128] true features
    >>> data.directions.shape         # [128, 32], unit rows: what an SAE should recover
    """

    def __init__(self, cfg: FeatureDataConfig = FeatureDataConfig()):
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        d = torch.randn(cfg.n_features, cfg.d, generator=self.gen)
        self.directions = d / d.norm(dim=-1, keepdim=True)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(x [n, d], true feature magnitudes [n, n_features])."""
        c = self.cfg
        present = torch.rand(n, c.n_features, generator=self.gen) < c.l0 / c.n_features
        magnitude = c.min_magnitude + (1 - c.min_magnitude) * torch.rand(n, c.n_features, generator=self.gen)
        f = present * magnitude
        return f @ self.directions, f


# ---- The SAE family ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "relu"
    k: int = 4  # topk, batchtopk: active latents per input
    sparsity_coefficient: float = 1.0  # relu, gated: L1 coefficient; jumprelu: L0 coefficient
    jumprelu_bandwidth: float = 0.05  # width of the rectangle kernel in the threshold's gradient
    jumprelu_init_threshold: float = 0.1
    aux_k: int = 0  # topk, batchtopk: AuxK's k (0: no AuxK); Gao et al. use d_in // 2
    aux_coefficient: float = 1 / 32
    dead_after: int = 200  # steps without firing after which a latent counts as dead (AuxK)
    hook_name: str = ""  # where the activations come from (models), "" for synthetic data
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")


class SAE(nn.Module):
    """The shared parts: parameters, decoding, the reconstruction loss and bookkeeping.
    Subclasses define ``encode`` (and their sparsity penalty)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        # Encoder initialised as the decoder's transpose (Gao et al. 2024): at the start every
        # latent reads the direction it writes, which avoids many dead latents.
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # steps since each latent last fired (for AuxK and the dead-latent count while training)
        self.register_buffer("steps_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long), persistent=False)

    def pre_acts(self, x: Tensor) -> Tensor:
        # Subtract b_dec first: b_dec is the data's "centre", so the encoder sees the offset
        # from it, and decode() adds it back.
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def sparsity_loss(self, x: Tensor, f: Tensor) -> Tensor:
        return x.new_zeros(())

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """{'loss', 'mse', 'sparsity', 'aux', 'f'} for a batch x: [batch, d_in]. The MSE is summed
        over d_in and averaged over the batch (the squared error per input)."""
        f = self.encode(x)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        sparsity = self.sparsity_loss(x, f)
        aux = self.aux_loss(x, x_hat, f)
        return {"loss": mse + sparsity + aux, "mse": mse, "sparsity": sparsity, "aux": aux, "f": f}

    def aux_loss(self, x: Tensor, x_hat: Tensor, f: Tensor) -> Tensor:
        return x.new_zeros(())

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows (called after every optimiser step)."""
        self.W_dec.copy_(normalized_rows(self.W_dec))

    @torch.no_grad()
    def note_firing(self, f: Tensor) -> None:
        fired = (f > 0).flatten(0, -2).any(0)
        self.steps_since_fired += 1
        self.steps_since_fired[fired] = 0


def relu_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """ReLU((x - b_dec) @ W_enc + b_enc): x [..., d_in] -> latents [..., d_sae]."""
    return F.relu((x - b_dec) @ W_enc + b_enc)


def l1_sae_loss(x: Tensor, x_hat: Tensor, f: Tensor, W_dec: Tensor, l1_coefficient: float) -> Tensor:
    """Squared error (summed over d_in, averaged over inputs) plus l1_coefficient times the L1
    norm of the latents weighted by their decoder rows' norms, also averaged over inputs.

    The weighting (Anthropic's April 2024 update) makes the penalty independent of how the
    scale is split between f and W_dec: otherwise the SAE could shrink f and grow W_dec."""
    mse = (x_hat - x).pow(2).sum(-1).mean()
    return mse + l1_coefficient * (f * W_dec.norm(dim=-1)).sum(-1).mean()


def normalized_rows(W: Tensor) -> Tensor:
    """W [d_sae, d_in] with every row scaled to unit norm."""
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class ReluSAE(SAE):
    """ReLU latents, L1 penalty weighted by decoder norms."""

    def encode(self, x: Tensor) -> Tensor:
        return relu_encode(x, self.W_enc, self.b_enc, self.b_dec)

    def sparsity_loss(self, x: Tensor, f: Tensor) -> Tensor:
        return self.cfg.sparsity_coefficient * (f * self.W_dec.norm(dim=-1)).sum(-1).mean()


def topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep each row's k largest pre-activations (ReLU'd), zero the rest."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


def batch_topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the k * batch largest pre-activations of the whole batch [batch, d_sae] (ReLU'd)."""
    flat = pre.flatten()
    values, indices = flat.topk(k * pre.shape[0])
    return torch.zeros_like(flat).scatter(-1, indices, F.relu(values)).reshape(pre.shape)


def auxk_activations(pre: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """AuxK's latents: among the *dead* latents only (``dead``: bool [d_sae]), each input's
    ``k_aux`` largest pre-activations (ReLU'd); every other entry 0. With fewer dead latents
    than k_aux, all of them."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return torch.zeros_like(pre)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = masked.topk(min(k_aux, n_dead), dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


class _AuxK:
    """AuxK (Gao et al. 2024): the dead latents' top ``aux_k`` pre-activations must reconstruct
    what the live ones missed, x - x_hat. It gives dead latents a gradient towards useful
    directions; it does not change the SAE's output."""

    def aux_loss(self, x: Tensor, x_hat: Tensor, f: Tensor) -> Tensor:
        cfg = self.cfg
        if not self.training or cfg.aux_k <= 0:
            return x.new_zeros(())
        dead = self.steps_since_fired >= cfg.dead_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        aux_f = auxk_activations(self.pre_acts(x), dead, cfg.aux_k)
        residual = (x - x_hat).detach()
        aux_hat = aux_f @ self.W_dec  # no b_dec: it reconstructs a difference
        loss = (aux_hat - residual).pow(2).sum(-1).mean()
        # normalised by the residual's size, so the coefficient does not depend on the scale
        return cfg.aux_coefficient * loss / residual.pow(2).sum(-1).mean().clamp_min(1e-12)


class TopKSAE(_AuxK, SAE):
    def encode(self, x: Tensor) -> Tensor:
        return topk_activation(self.pre_acts(x), self.cfg.k)


class BatchTopKSAE(_AuxK, SAE):
    """Top k * batch over the batch while training; at inference, every pre-activation above
    ``threshold`` (a running average of the smallest activation kept while training), so an
    input's latents do not depend on the other inputs in its batch."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        if self.training and pre.dim() == 2:
            f = batch_topk_activation(pre, self.cfg.k)
            with torch.no_grad():
                kept = f[f > 0]
                if kept.numel():
                    self.threshold.lerp_(kept.min(), 0.01 if self.threshold > 0 else 1.0)
            return f
        return F.relu(pre) * (pre > self.threshold)


def jumprelu(z: Tensor, threshold: Tensor) -> Tensor:
    """z where z > threshold (per latent, threshold [d_sae]), else 0. Unlike ReLU(z - threshold),
    an active latent keeps its full value z: no shrinkage."""
    return z * (z > threshold)


def jumprelu_threshold_grad(z: Tensor, threshold: Tensor, bandwidth: float, grad_f: Tensor) -> Tensor:
    """The straight-through estimate of d(loss)/d(threshold) for f = jumprelu(z, threshold),
    given grad_f = d(loss)/df [batch, d_sae]: f jumps from 0 to z at z = threshold, so
    df/dthreshold is approximated by -(threshold / bandwidth) * rect((z - threshold) / bandwidth),
    where rect(u) = 1 for |u| < 1/2, else 0. Summed over the batch: [d_sae]."""
    near = ((z - threshold).abs() < bandwidth / 2).to(z.dtype)
    return (-(threshold / bandwidth) * near * grad_f).flatten(0, -2).sum(0)


class _JumpReLU(torch.autograd.Function):
    """f = z * H(z - threshold). The step H has zero gradient almost everywhere, so the
    threshold gets a straight-through estimate: the rectangle kernel of width ``bandwidth``
    around the threshold (Rajamanoharan et al. 2024b, eq. 11)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return jumprelu(z, threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        grad_z = grad * (z > threshold)  # where active, f = z: gradient 1
        return grad_z, jumprelu_threshold_grad(z, threshold, ctx.bandwidth, grad), None


class _Step(torch.autograd.Function):
    """H(z - threshold), with the same rectangle-kernel estimate for the threshold's gradient
    (for the L0 penalty: the count of active latents has a gradient only through it)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((z - threshold).abs() < eps / 2).to(z.dtype)
        grad_threshold = (-(1.0 / eps) * near * grad).flatten(0, -2).sum(0)
        return torch.zeros_like(z), grad_threshold, None


class JumpReLUSAE(SAE):
    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold))

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x)
        return _JumpReLU.apply(z, self.threshold, self.cfg.jumprelu_bandwidth)

    def sparsity_loss(self, x: Tensor, f: Tensor) -> Tensor:
        l0 = _Step.apply(self.pre_acts(x), self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return self.cfg.sparsity_coefficient * l0

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        super().normalize_decoder()
        self.threshold.clamp_(min=1e-4)  # a threshold at or below zero is a plain ReLU


def gated_encode(x: Tensor, W_gate: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor, b_dec: Tensor) -> Tensor:
    """Gated latents: 1[(x - b_dec) @ W_gate + b_gate > 0] * ReLU((x - b_dec) @ W_mag + b_mag),
    where W_mag = W_gate * exp(r_mag) (each latent's gate weights, rescaled)."""
    centred = x - b_dec
    gate = (centred @ W_gate + b_gate) > 0
    return gate * F.relu(centred @ (W_gate * r_mag.exp()) + b_mag)


class GatedSAE(SAE):
    """Which latents fire: the gate, (x - b_dec) @ W_enc + b_gate > 0. How much: the magnitude
    path, (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag (weights shared with the gate up to a
    per-latent rescale). The L1 penalty acts on the gate only, so magnitudes are not shrunk; an
    auxiliary loss makes the gate's ReLU output alone reconstruct x through a frozen decoder,
    so the gate learns to fire where it should."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        del self.b_enc
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def pre_acts(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_gate

    def encode(self, x: Tensor) -> Tensor:
        return gated_encode(x, self.W_enc, self.b_gate, self.r_mag, self.b_mag, self.b_dec)

    def sparsity_loss(self, x: Tensor, f: Tensor) -> Tensor:
        gate = F.relu(self.pre_acts(x))
        return self.cfg.sparsity_coefficient * (gate * self.W_dec.norm(dim=-1)).sum(-1).mean()

    def aux_loss(self, x: Tensor, x_hat: Tensor, f: Tensor) -> Tensor:
        gate = F.relu(self.pre_acts(x))
        via_gate = gate @ self.W_dec.detach() + self.b_dec.detach()
        return (via_gate - x).pow(2).sum(-1).mean()


_CLASSES = {"relu": ReluSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE, "gated": GatedSAE}


def make_sae(cfg: SAEConfig) -> SAE:
    """The SAE class for ``cfg.architecture``."""
    return _CLASSES[cfg.architecture](cfg)


# ---- Metrics ----------------------------------------------------------------------------------
def l0(f: Tensor) -> Tensor:
    """Mean number of active (non-zero) latents per input. f: [..., d_sae]."""
    return (f != 0).float().sum(-1).mean()


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the
    batch (0: perfect; 1: no better than predicting the mean)."""
    x, x_hat = x.flatten(0, -2), x_hat.flatten(0, -2)
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def dead_fraction(f: Tensor) -> Tensor:
    """Fraction of latents that never fire on these inputs. f: [n, d_sae]."""
    return (~(f.flatten(0, -2) != 0).any(0)).float().mean()


def max_cosines(W_dec: Tensor, true_directions: Tensor) -> Tensor:
    """For each true feature [n_true, d], the highest cosine similarity with any decoder row
    [d_sae, d]: how well the dictionary contains that feature."""
    a = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = true_directions / true_directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (b @ a.T).max(dim=-1).values


def mmcs(W_dec: Tensor, true_directions: Tensor) -> Tensor:
    """Mean max cosine similarity over the true features (Sharkey et al. 2022)."""
    return max_cosines(W_dec, true_directions).mean()


def fraction_recovered(W_dec: Tensor, true_directions: Tensor, threshold: float = 0.9) -> Tensor:
    """Fraction of true features with some decoder row at cosine > threshold."""
    return (max_cosines(W_dec, true_directions) > threshold).float().mean()


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> Tensor:
    """gamma = argmin_g E||x_hat / g - x||^2 = E||x_hat||^2 / E<x_hat, x> (Rajamanoharan et al.
    2024a). 1: unbiased; below 1: reconstructions systematically too small (shrinkage)."""
    x, x_hat = x.flatten(0, -2), x_hat.flatten(0, -2)
    return x_hat.pow(2).sum() / (x_hat * x).sum()


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve of ``scores`` [n] for the binary ``labels`` [n]: the probability
    that a random positive scores higher than a random negative, ties counting one half.
    1: the score separates the classes perfectly; 0.5: no better than chance. (Computed from
    ranks, the Mann-Whitney U statistic, in O(n log n).)"""
    scores = scores.flatten().double()
    labels = labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64, device=scores.device)
    # tied scores share the mean of their ranks
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).float()


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """How much of the loss the SAE keeps when its reconstruction replaces the activation:
    (ce_ablated - ce_spliced) / (ce_ablated - ce_clean). 1: as good as the real activation;
    0: as bad as zeroing it."""
    return (ce_ablated - ce_spliced) / (ce_ablated - ce_clean)


def splice_hook(sae: SAE):
    """A hook that replaces an activation [batch, pos, d_in] by the SAE's reconstruction."""

    def hook(act: Tensor, hook) -> Tensor:
        return sae(act)

    return hook


def steering_hook(direction: Tensor, alpha: float):
    """A hook that adds ``alpha * direction`` (a [d_in] vector, used as given) to the
    activation at every position."""

    def hook(act: Tensor, hook) -> Tensor:
        return act + alpha * direction

    return hook


@torch.no_grad()
def latent_precision_recall(f: Tensor, true_f: Tensor, W_dec: Tensor, true_directions: Tensor) -> tuple[float, float]:
    """Do the *codes* match, not just the dictionary? For each true feature, take the latent
    whose decoder row is closest to it; precision: how often the feature is present when that
    latent fires; recall: how often the latent fires when the feature is present. Means over
    the true features. (MMCS scores only the decoder's directions.)"""
    cos = normalized_rows(true_directions) @ normalized_rows(W_dec).T  # [n_true, d_sae]
    fires = f[:, cos.argmax(1)] != 0  # [n, n_true]
    present = true_f > 0
    both = (fires & present).sum(0).float()
    precision = both / fires.sum(0).clamp_min(1)
    recall = both / present.sum(0).clamp_min(1)
    return precision.mean().item(), recall.mean().item()


@torch.no_grad()
def evaluate(sae: SAE, x: Tensor, true_directions: Tensor | None = None, true_f: Tensor | None = None,
             chunk: int = 8192) -> dict[str, float]:
    """The standard numbers for ``sae`` on inputs x [n, d_in] (and true features if known)."""
    was_training = sae.training
    sae.eval()
    x = x.flatten(0, -2)
    # In chunks of rows, so that the latents of a large evaluation set ([n, d_sae]) never all
    # exist at once: the sums behind L0, FVU, gamma and the dead latents add up across chunks.
    centre = x.mean(0)
    active = err = var = hat_sq = hat_dot = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    for start in range(0, len(x), chunk):
        xs = x[start : start + chunk]
        f = sae.encode(xs)
        x_hat = sae.decode(f)
        active += (f != 0).sum().item()
        fired |= (f != 0).any(0)
        err += (xs - x_hat).double().pow(2).sum().item()
        var += (xs - centre).double().pow(2).sum().item()
        hat_sq += x_hat.double().pow(2).sum().item()
        hat_dot += (x_hat.double() * xs).sum().item()
    out = {"l0": active / len(x), "fvu": err / var, "dead": 1.0 - fired.float().mean().item(), "gamma": hat_sq / hat_dot}
    if true_directions is not None:
        out["mmcs"] = mmcs(sae.W_dec, true_directions).item()
        out["recovered"] = fraction_recovered(sae.W_dec, true_directions).item()
        if true_f is not None:
            out["precision"], out["recall"] = latent_precision_recall(sae.encode(x), true_f, sae.W_dec, true_directions)
    sae.train(was_training)
    return out


# ---- Training ---------------------------------------------------------------------------------
@dataclass
class SAETrainingLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_sae(sae: SAE, sample, steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3,
              progress: bool = True, desc: str = "SAE", seed: int = 0, warmup: int = 0) -> SAETrainingLog:
    """Adam on batches from ``sample``: either a function ``sample(n) -> x [n, d_in]`` (fresh
    synthetic data every step) or a tensor of activations [N, d_in] (shuffled batches of its
    rows). Decoder rows are renormalised after every step. The learning rate rises linearly
    over ``warmup`` steps and decays linearly to zero over the last 20 %."""
    from tqdm.auto import tqdm

    from .grading import demo_steps

    steps = demo_steps(steps, desc)
    if isinstance(sample, Tensor):
        data, gen = sample, torch.Generator().manual_seed(seed)

        def sample(n):  # noqa: F811 (a tensor becomes a sampler of its rows)
            return data[torch.randint(0, len(data), (n,), generator=gen)]

    with torch.no_grad():  # start b_dec at the data's centre (the geometric median's cheap cousin)
        sae.b_dec.copy_(sample(min(4 * batch_size, 8192)).mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    decay_from = int(0.8 * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup))
        * (1.0 if s < decay_from else max(0.0, (steps - s) / max(1, steps - decay_from))))
    log = SAETrainingLog()
    start = time.perf_counter()
    sae.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    for step in bar:
        x = sample(batch_size).to(device=device, dtype=dtype)
        out = sae.loss(x)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        schedule.step()
        sae.normalize_decoder()
        sae.note_firing(out["f"])
        if step % 10 == 0 or step == steps - 1:
            log.steps.append(step)
            log.loss.append(out["loss"].item())
            log.mse.append(out["mse"].item())
            log.l0.append(l0(out["f"]).item())
            if step % 50 == 0:
                bar.set_postfix(mse=f"{log.mse[-1]:.4f}", l0=f"{log.l0[-1]:.1f}")
    sae.eval()
    log.seconds = time.perf_counter() - start
    return log


# ---- The chapter's experiments on synthetic data (shared by the notebook and the tests) ------
def synthetic_sae(architecture: str, data: SyntheticFeatures, d_sae: int = 128, steps: int = 800,
                  batch_size: int = 1024, progress: bool = True, desc: str | None = None, **cfg) -> tuple[SAE, dict]:
    """Train one SAE on ``data`` (any synthetic data set with ``directions`` and ``sample``) and
    score it on 8 192 fresh samples: (sae, metrics)."""
    sae = make_sae(SAEConfig(d_in=data.directions.shape[1], d_sae=d_sae, architecture=architecture, **cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster than two, and fairer on a shared CPU
    try:
        log = train_sae(sae, lambda n: data.sample(n)[0], steps=steps, batch_size=batch_size, progress=progress,
                        desc=desc or architecture)
    finally:
        torch.set_num_threads(threads)
    x, f = data.sample(8192)
    return sae, {**evaluate(sae, x, data.directions, f), "seconds": log.seconds}


def l1_sweep(coefficients=(0.001, 0.01, 0.1, 0.3, 1.0), steps: int = 800, progress: bool = True) -> list[dict]:
    """ReLU + L1 SAEs at several penalties on the default synthetic data: one dict per penalty."""
    data = SyntheticFeatures(FeatureDataConfig())
    rows = []
    for c in coefficients:
        _, m = synthetic_sae("relu", data, steps=steps, sparsity_coefficient=c, progress=progress, desc=f"L1 {c:g}")
        rows.append({"coefficient": c, **m})
    return rows


# The penalties used for the comparison (chosen by the sweeps in the chapter: L0 near the truth).
VARIANTS = {
    "ReLU + L1 (λ 0.3)": dict(architecture="relu", sparsity_coefficient=0.3),
    "TopK (k 4)": dict(architecture="topk", k=4),
    "BatchTopK (k 4)": dict(architecture="batchtopk", k=4),
    "JumpReLU (L0 0.03)": dict(architecture="jumprelu", sparsity_coefficient=0.03),
    "Gated (L1 0.5)": dict(architecture="gated", sparsity_coefficient=0.5),
}


def variants_experiment(steps: int = 800, progress: bool = True, variants: dict | None = None) -> dict[str, dict]:
    """Every architecture on the default synthetic data, at the penalties in ``VARIANTS``."""
    data = SyntheticFeatures(FeatureDataConfig())
    out = {}
    for name, cfg in (variants or VARIANTS).items():
        cfg = dict(cfg)
        _, out[name] = synthetic_sae(cfg.pop("architecture"), data, steps=steps, progress=progress, desc=name, **cfg)
    return out


def jumprelu_sweep(coefficients=(0.003, 0.03, 3.0), steps: int = 800, progress: bool = True) -> list[dict]:
    """JumpReLU SAEs at several L0 penalties: too little stays dense, too much stops firing."""
    data = SyntheticFeatures(FeatureDataConfig())
    rows = []
    for c in coefficients:
        _, m = synthetic_sae("jumprelu", data, steps=steps, sparsity_coefficient=c, progress=progress, desc=f"JumpReLU {c:g}")
        rows.append({"coefficient": c, **m})
    return rows


# ---- Width, feature splitting and absorption (section 5) --------------------------------------
class ClusteredFeatures:
    """Features that come in families: ``n_clusters`` centre directions, each with
    ``per_cluster`` sub-features pointing near it (cosine about 0.7 with their centre). When a
    family is active (probability ``l0 / n_clusters``) exactly one of its sub-features is, with a
    magnitude in U[0.25, 1]. A narrow SAE can afford one latent per family; a wider one can split
    it into one latent per sub-feature (feature splitting, Bricken et al. 2023)."""

    def __init__(self, n_clusters: int = 16, per_cluster: int = 4, d: int = 32, l0: float = 3.0,
                 spread: float = 1.0, seed: int = 0):
        self.n_clusters, self.per_cluster, self.d, self.l0 = n_clusters, per_cluster, d, l0
        self.gen = torch.Generator().manual_seed(seed)
        self.centres = normalized_rows(torch.randn(n_clusters, d, generator=self.gen))
        noise = spread * torch.randn(n_clusters * per_cluster, d, generator=self.gen) / d ** 0.5
        self.directions = normalized_rows(self.centres.repeat_interleave(per_cluster, 0) + noise)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(x [n, d], true sub-feature magnitudes [n, n_clusters * per_cluster])."""
        active = torch.rand(n, self.n_clusters, generator=self.gen) < self.l0 / self.n_clusters
        which = torch.randint(0, self.per_cluster, (n, self.n_clusters), generator=self.gen)
        magnitude = 0.25 + 0.75 * torch.rand(n, self.n_clusters, generator=self.gen)
        f = torch.zeros(n, self.n_clusters * self.per_cluster)
        f.scatter_(1, torch.arange(self.n_clusters) * self.per_cluster + which, active * magnitude)
        return f @ self.directions, f


class HierarchicalFeatures:
    """The default synthetic data (128 features in 32 dimensions) where the first ``n_parents``
    features are *parents* and the next ``n_parents * children`` their *children*: a child is
    present with probability ``p_child`` and implies its parent ("a dog" implies "an animal"); a
    parent is also present on its own with probability ``p_parent``. Parents and children have
    magnitude 1. The setting of feature absorption (Chanin et al. 2024)."""

    def __init__(self, n_parents: int = 4, children: int = 4, p_parent: float = 0.03, p_child: float = 0.05,
                 cfg: FeatureDataConfig = FeatureDataConfig()):
        self.cfg, self.n_parents, self.children = cfg, n_parents, children
        self.p_parent, self.p_child = p_parent, p_child
        self.base = SyntheticFeatures(cfg)
        self.gen = self.base.gen
        self.directions = self.base.directions

    def child_ids(self, parent: int) -> list[int]:
        start = self.n_parents + parent * self.children
        return list(range(start, start + self.children))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        c, P, C = self.cfg, self.n_parents, self.n_parents * self.children
        present = torch.rand(n, c.n_features, generator=self.gen) < c.l0 / c.n_features
        present[:, :P] = torch.rand(n, P, generator=self.gen) < self.p_parent
        present[:, P : P + C] = torch.rand(n, C, generator=self.gen) < self.p_child
        present[:, :P] |= present[:, P : P + C].reshape(n, P, self.children).any(-1)  # a child implies its parent
        magnitude = c.min_magnitude + (1 - c.min_magnitude) * torch.rand(n, c.n_features, generator=self.gen)
        magnitude[:, : P + C] = 1.0
        f = present * magnitude
        return f @ self.directions, f


def absorption_rate(f_parent: Tensor, parent_present: Tensor, child_present: Tensor) -> Tensor:
    """How often the parent's latent stays silent when it should fire because a child is there:
    among inputs where the parent and at least one of its children are present, the fraction on
    which ``f_parent`` (the parent latent's activation, [n]) is zero. ``child_present``: [n,
    children] bool."""
    both = parent_present & child_present.any(-1)
    return (f_parent[both] == 0).float().mean()


def width_experiment(widths=(64, 128, 512), k: int = 4, steps: int = 800, progress: bool = True) -> list[dict]:
    """TopK SAEs of several widths on the default data (128 true features): too narrow cannot
    hold every feature; wider than the truth leaves the extra latents dead or nearly idle.
    Besides ``synthetic_sae``'s metrics: ``matched_latents`` (live latents within cosine 0.9 of
    a true feature), ``unmatched_live`` and their mean firing rate."""
    data = SyntheticFeatures(FeatureDataConfig())
    rows = []
    for w in widths:
        sae, m = synthetic_sae("topk", data, d_sae=w, k=k, steps=steps, progress=progress, desc=f"TopK, {w} latents")
        x, _ = data.sample(8192)
        with torch.no_grad():
            fires = (sae.encode(x) != 0).float().mean(0)  # [d_sae]: how often each latent fires
            matched = (normalized_rows(sae.W_dec) @ data.directions.T).max(-1).values > 0.9
        live_unmatched = (fires > 0) & ~matched
        rows.append({"width": w, **m, "matched_latents": int((matched & (fires > 0)).sum()),
                     "unmatched_live": int(live_unmatched.sum()),
                     "unmatched_fire_rate": fires[live_unmatched].mean().item() if live_unmatched.any() else 0.0})
    return rows


def splitting_experiment(widths=(16, 64, 256), k: int = 3, steps: int = 800, progress: bool = True) -> list[dict]:
    """TopK SAEs of several widths on ``ClusteredFeatures`` (16 families of 4 sub-features). For
    each: the sub-features recovered (max cosine > 0.9), the mean max cosine of the family
    centres and of the sub-features, the dead fraction, and the live latents per family."""
    data = ClusteredFeatures()
    rows = []
    for w in widths:
        sae, m = synthetic_sae("topk", data, d_sae=w, k=k, steps=steps, progress=progress, desc=f"TopK, {w} latents")
        rows.append({"width": w, "fvu": m["fvu"], "dead": m["dead"], "sub_mmcs": m["mmcs"], "sub_recovered": m["recovered"],
                     "centre_mmcs": mmcs(sae.W_dec, data.centres).item(),
                     "live_per_family": round((1 - m["dead"]) * w) / data.n_clusters})
    return rows


def absorption_experiment(ks=(5, 8), steps: int = 800, progress: bool = True) -> list[dict]:
    """TopK SAEs on ``HierarchicalFeatures`` at several k. For each parent, its latent (the
    decoder row closest to its direction) and its children's latents; averaged over parents:
    ``recall_alone`` (the parent latent fires when the parent is present without a child),
    ``absorption`` (``absorption_rate``: silent when a child is present), and ``child_lean``
    (the cosine of the children's latents with the *parent's* direction: an absorbing child
    latent has taken in part of its parent)."""
    data = HierarchicalFeatures()
    rows = []
    for k in ks:
        sae, m = synthetic_sae("topk", data, d_sae=128, k=k, steps=steps, progress=progress, desc=f"TopK k {k}")
        x, true_f = data.sample(16384)
        with torch.no_grad():
            f = sae.encode(x)
            dec = normalized_rows(sae.W_dec)
            nearest = (data.directions @ dec.T).argmax(-1)  # each true feature's latent
            alone, absorbed, lean = [], [], []
            for p in range(data.n_parents):
                kids = data.child_ids(p)
                fp, parent = f[:, nearest[p]], true_f[:, p] > 0
                child = true_f[:, kids] > 0
                alone.append((fp[parent & ~child.any(-1)] != 0).float().mean().item())
                absorbed.append(absorption_rate(fp, parent, child).item())
                lean += (dec[nearest[kids]] @ data.directions[p]).tolist()
        rows.append({"k": k, "l0": m["l0"], "fvu": m["fvu"], "recall_alone": sum(alone) / len(alone),
                     "absorption": sum(absorbed) / len(absorbed), "child_lean": sum(lean) / len(lean),
                     "parent_child_cosine": (data.directions[data.n_parents : data.n_parents * (1 + data.children)]
                                             @ data.directions[: data.n_parents].T).abs().mean().item()})
    return rows


# ---- SAEs on the course language model ------------------------------------------------------
LM_HOOK = "blocks.1.hook_resid_post"  # the residual stream after the last block
LM_TRAIN_SEED, LM_EVAL_SEED = 1, 2  # course_lm itself was trained on token_dataset(..., seed=0)


@torch.no_grad()
def collect_activations(model, tokens: Tensor, hook_name: str, batch_rows: int = 100) -> Tensor:
    """The activations at ``hook_name`` for every row of ``tokens`` [rows, pos]: [rows, pos, d].
    (An "activation store" in SAELens's words; ours fits in memory.)"""
    out = None
    with torch.no_grad():  # no autograd graph: it would hold every intermediate of the batch
        for i in range(0, len(tokens), batch_rows):
            _, cache = model.run_with_cache(tokens[i : i + batch_rows], names_filter=hook_name)
            act = cache[hook_name]
            if out is None:  # filled in place: no second copy from a torch.cat at the end
                out = act.new_empty((len(tokens), *act.shape[1:]))
            out[i : i + len(act)] = act
    return out


@torch.no_grad()
def encode_in_chunks(sae: SAE, x: Tensor, chunk: int = 8192) -> Tensor:
    """``sae.encode(x)`` for a large x [n, d_in], a chunk of rows at a time: the pre-activations
    of every row at once (and TopK's copy of them) would take several times the latents' memory."""
    out = None
    for start in range(0, len(x), chunk):
        f = sae.encode(x[start : start + chunk])
        if out is None:
            out = f.new_empty((len(x), *f.shape[1:]))
        out[start : start + len(f)] = f
    return out


def activation_scale(acts: Tensor) -> float:
    """s with E||x / s||^2 = d_in: dividing by it makes hyperparameters independent of the
    hook's activation size."""
    return (acts.pow(2).sum(-1).mean().sqrt() / acts.shape[-1] ** 0.5).item()


@torch.no_grad()
def fold_activation_scale(sae: SAE, scale: float) -> SAE:
    """An SAE trained on x / scale, rewritten to take x itself: W_enc / scale, W_dec and b_dec
    times scale (pre-activations and thresholds are unchanged). Decoder rows then have norm
    ``scale``: a latent's activation times its row is its contribution in the model's units."""
    sae.W_enc /= scale
    sae.W_dec *= scale
    sae.b_dec *= scale
    return sae


@torch.no_grad()
def lm_losses(model, sae: SAE, tokens: Tensor, hook_name: str, skip_positions: int = 1,
              batch_rows: int = 250) -> dict[str, float]:
    """Mean next-token loss of ``model`` on ``tokens``: clean, with the SAE's reconstruction
    spliced in at ``hook_name``, and with that activation zero-ablated (positions before
    ``skip_positions``, the <bos> the SAE never saw, stay clean in both)."""

    def spliced(act, hook):
        out = act.clone()
        out[:, skip_positions:] = sae(act[:, skip_positions:])
        return out

    def zeroed(act, hook):
        out = act.clone()
        out[:, skip_positions:] = 0.0
        return out

    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    for i in range(0, len(tokens), batch_rows):
        t = tokens[i : i + batch_rows]
        totals["clean"] += model(t, return_type="loss").item() * len(t)
        totals["spliced"] += model.run_with_hooks(t, return_type="loss", fwd_hooks=[(hook_name, spliced)]).item() * len(t)
        totals["zero"] += model.run_with_hooks(t, return_type="loss", fwd_hooks=[(hook_name, zeroed)]).item() * len(t)
    out = {k: v / len(tokens) for k, v in totals.items()}
    out["recovered"] = ce_loss_recovered(out["clean"], out["spliced"], out["zero"])
    return out


def annotations(tokens: Tensor, infos, min_count: int = 50) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Binary ground-truth labels per token ([rows, pos] bool) from the corpus generator's
    annotations (utils/corpus.py: TokenInfo) and the tokens themselves. Returns (labels, kind):
    kind "word" for one word's identity, "role" for a part of speech, "context" for everything
    that depends on the surrounding text (quotation state, IOI roles, mentions, the previous
    word). Labels with fewer than ``min_count`` positives are left out."""
    from .corpus import QUOTE, ROLES, VOCAB

    ioi_roles = [None, "IO", "S1", "S2", "END", "ANSWER"]
    w = tokens
    role = torch.tensor([[ROLES.index(t.role) for t in row] for row in infos])
    in_quote = torch.tensor([[t.in_quote for t in row] for row in infos])
    first = torch.tensor([[t.first_mention for t in row] for row in infos])
    ioi = torch.tensor([[ioi_roles.index(t.ioi_role) for t in row] for row in infos])
    prev_w = torch.cat([torch.full_like(w[:, :1], -1), w[:, :-1]], 1)
    prev_role = torch.cat([torch.full_like(role[:, :1], -1), role[:, :-1]], 1)
    next_in_quote = torch.cat([in_quote[:, 1:], torch.zeros_like(in_quote[:, :1])], 1)
    prev_in_quote = torch.cat([torch.zeros_like(in_quote[:, :1]), in_quote[:, :-1]], 1)
    wid = {word: i for i, word in enumerate(VOCAB)}
    is_name = role == ROLES.index("name")
    quote = w == wid[QUOTE]
    labels: dict[str, Tensor] = {}
    kind: dict[str, str] = {}

    def add(name, t, k):
        if int(t.sum()) >= min_count:
            labels[name], kind[name] = t, k

    for i, word in enumerate(VOCAB):
        if word not in ("<bos>", "<pad>"):
            add(f"word={word}", w == i, "word")
    for r in ROLES:
        if r not in ("quote", "special"):  # one-word roles: the same as a word label
            add(f"role={r}", role == ROLES.index(r), "role")
    add("in_quote", in_quote, "context")
    add("name in quote", in_quote & is_name, "context")
    add("name not in quote", ~in_quote & is_name, "context")
    add("opening quote", quote & next_in_quote, "context")
    add("closing quote", quote & prev_in_quote, "context")
    add("first token in quote", in_quote & (prev_w == wid[QUOTE]), "context")
    add("first mention of a name", first, "context")
    add("repeated mention of a name", is_name & ~first, "context")
    for i, r in enumerate(ioi_roles):
        if r is not None:
            add(f"ioi_role={r}", ioi == i, "context")
    add("inside an IOI sentence", ioi > 0, "context")
    add("'to' that is not the IOI END", (w == wid["to"]) & (ioi != ioi_roles.index("END")), "context")
    for p in ("the", "a", "to", "said", "asked", "at", QUOTE, "and"):
        add(f"previous word={p}", prev_w == wid[p], "context")
    add("previous word is a name", prev_role == ROLES.index("name"), "context")
    add("name at sentence start", is_name & ((prev_w == wid["."]) | (prev_w == wid["<bos>"])), "context")
    return labels, kind


def auroc_matrix(scores: Tensor, labels: Tensor, chunk: int = 16) -> Tensor:
    """AUROC of every column of ``scores`` [n, n_latents] (non-negative latent activations)
    for every column of ``labels`` [n, n_labels] (bool): [n_latents, n_labels]. Ties among the
    many exact zeros get their average rank; non-zero activations are treated as distinct
    (float ties there are vanishingly rare), which makes this one matrix product."""
    n = scores.shape[0]
    lab = labels.to(torch.float64)
    n_pos = lab.sum(0)
    arange = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    out = []
    # A few latents at a time: float64 ranks of every latent at once would take 8 bytes x n x
    # n_latents several times over (over a gigabyte for chapter 5's 47 000 tokens x 1 024 latents).
    for start in range(0, scores.shape[1], chunk):
        s = scores[:, start : start + chunk].double()
        order = s.argsort(dim=0)
        ranks = torch.empty_like(s)
        ranks.scatter_(0, order, arange.expand_as(s).contiguous())
        zero = s == 0
        ranks = torch.where(zero, (zero.sum(0, keepdim=True).to(s.dtype) + 1) / 2, ranks)
        out.append((ranks.T @ lab - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)))
    return torch.cat(out).float()


@torch.no_grad()
def best_latents(f: Tensor, labels: dict[str, Tensor], kind: dict[str, str], by: str = "auroc") -> list[dict]:
    """For each annotation, the latent that best predicts it: one dict per annotation (its
    ``auroc``, and the ``precision``, ``recall`` and ``f1`` of "the latent fires" as a
    prediction), best first. ``by="auroc"`` ranks latents by their activation's AUROC;
    ``by="f1"`` by how well *firing* matches the label, which punishes broad latents that are
    active on most positives and on much else. f [n, d_sae]; labels[name] [n] bool."""
    names = list(labels)
    L = torch.stack([labels[k] for k in names], 1)
    au = auroc_matrix(f, L)
    Lf = L.float()
    # [d_sae, n_labels]: tokens where the latent fires and the label holds, and [d_sae]: tokens
    # where it fires (a few latents at a time: a copy of all of f, as floats or as the int64s
    # that summing booleans makes, would take hundreds of megabytes)
    both, fired = [], []
    for i in range(0, f.shape[1], 16):
        fires = (f[:, i : i + 16] != 0).float()
        both.append(fires.T @ Lf)
        fired.append(fires.sum(0))
    both, fired = torch.cat(both), torch.cat(fired)
    precision = both / fired.clamp_min(1)[:, None]
    recall = both / Lf.sum(0).clamp_min(1)[None]
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    latent = (au if by == "auroc" else f1).argmax(0)
    rows = []
    for i, n in enumerate(names):
        j = int(latent[i])
        rows.append({"annotation": n, "kind": kind[n], "latent": j, "auroc": float(au[j, i]),
                     "precision": float(precision[j, i]), "recall": float(recall[j, i]), "f1": float(f1[j, i]),
                     "positives": int(labels[n].sum())})
    return sorted(rows, key=lambda r: -r[by])


def logit_effects(model, sae: SAE) -> Tensor:
    """[d_sae, d_vocab]: how much each latent's decoder direction raises each token's logit
    along the direct path (through the final LayerNorm's gain and the unembedding), centred per
    latent. A latent's best token tells you what it makes the model *say*."""
    eff = (sae.W_dec.detach() * model.ln_final.w.detach()) @ model.unembed.W_U.detach()
    return eff - eff.mean(1, keepdim=True)


@torch.no_grad()
def sample_with_hooks(model, n: int, length: int, fwd_hooks=(), seed: int = 0, temperature: float = 1.0) -> Tensor:
    """``n`` samples of ``length`` tokens from <bos>, with ``fwd_hooks`` applied at every step
    (a steering hook, say): [n, length + 1], <bos> first. Seeded: every setting sees the same
    random numbers."""
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same samples on every device
    tokens = torch.zeros(n, 1, dtype=torch.long, device=model.device)  # <bos> is id 0
    for _ in range(length):
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
        probs = (logits.float() / temperature).softmax(-1).cpu()
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen).to(tokens.device)], 1)
    return tokens


def positions_from(skip: int, hook):
    """Wrap a hook so it acts only on positions >= skip (the SAE never saw <bos>)."""

    def wrapped(act, hook_point):
        out = act.clone()
        out[:, skip:] = hook(act[:, skip:], hook_point)
        return out

    return wrapped


def train_lm_sae(model, hook_name: str = LM_HOOK, d_sae: int = 1024, k: int = 16, steps: int = 1500,
                 n_tokens: int = 1_000_000, batch_size: int = 4096, lr: float = 2e-3, progress: bool = True,
                 desc: str = "course_lm SAE") -> tuple[SAE, dict]:
    """A TopK SAE (with AuxK) on ``hook_name`` of ``model``: activations of
    token_dataset(n_tokens, n_ctx, seed=LM_TRAIN_SEED) without the <bos> position, divided by a
    fixed scale while training (folded into the weights afterwards)."""
    from .corpus import token_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokens = token_dataset(n_tokens, model.cfg.n_ctx, seed=LM_TRAIN_SEED)
        acts = collect_activations(model, tokens, hook_name)[:, 1:].reshape(-1, model.cfg.d_model)
        scale = activation_scale(acts)
        acts = acts / scale
        cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, architecture="topk", k=k, aux_k=64,
                        dead_after=max(1, 200_000 // batch_size), hook_name=hook_name)
        sae = make_sae(cfg)
        log = train_sae(sae, acts, steps=steps, batch_size=batch_size, lr=lr, warmup=100, progress=progress, desc=desc)
    finally:
        torch.set_num_threads(threads)
    del acts
    fold_activation_scale(sae, scale)
    return sae, {"steps": steps, "scale": round(scale, 4), "train_seconds": round(log.seconds, 1),
                 "data": f"token_dataset({n_tokens}, {model.cfg.n_ctx}, seed={LM_TRAIN_SEED}), position 0 left out"}


def load_course_sae(name: str = "course_lm_sae") -> SAE:
    """The shipped SAE on course_lm (see the recipe ``python -m utils.zoo train course_lm_sae``)."""
    from .zoo import checkpoint_dir

    return load_sae(checkpoint_dir() / name)


def _register_recipes() -> None:
    from .zoo import load_model, recipe

    def save(sae, out_dir, name, metadata):
        return save_sae(sae, Path(out_dir) / name, metadata)

    @recipe("course_lm_sae", "Chapter 5's SAE: TopK (k 16), 1 024 latents, on course_lm's blocks.1.hook_resid_post.",
            save=save)
    def _course_lm_sae(steps: int | None = None, progress: bool = True):
        model = load_model("course_lm")
        sae, info = train_lm_sae(model, steps=steps or 1500, progress=progress)
        from .corpus import token_dataset

        ev = token_dataset(96_000, model.cfg.n_ctx, seed=LM_EVAL_SEED)
        acts = collect_activations(model, ev, LM_HOOK)[:, 1:].reshape(-1, model.cfg.d_model)
        scores = evaluate(sae, acts)
        losses = lm_losses(model, sae, ev, LM_HOOK)
        return sae, {"recipe": "course_lm_sae", "seed": 0, "torch": torch.__version__, **info,
                     **{k: round(v, 4) for k, v in scores.items()},
                     "ce": {k: round(v, 4) for k, v in losses.items()},
                     "eval": f"token_dataset(96_000, 48, seed={LM_EVAL_SEED}), position 0 left out"}


_register_recipes()


# ---- Saving in SAELens's layout ---------------------------------------------------------------
_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "gated": "gated"}


def save_sae(sae: SAE, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``folder/cfg.json`` and ``folder/sae_weights.safetensors``.

    ``cfg.json`` holds SAELens's fields (``architecture``, ``d_in``, ``d_sae``, ...) and the
    course's own config under ``course_config``. A BatchTopK SAE is saved as the JumpReLU SAE it
    is at inference (its threshold for every latent), as SAELens does."""
    from safetensors.torch import save_file

    folder = Path(folder)
    arch = sae.cfg.architecture
    tensors = {k: v.detach().clone().contiguous() for k, v in sae.state_dict().items()}
    if arch == "batchtopk":
        tensors["threshold"] = tensors["threshold"].expand(sae.cfg.d_sae).clone()
    cfg = {"architecture": _SAELENS_ARCH[arch], "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "hook_name": sae.cfg.hook_name,
           "course_config": asdict(sae.cfg), "metadata": metadata or {}}
    if arch == "topk":
        cfg["k"] = sae.cfg.k
    text = json.dumps(cfg, indent=2)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(text + "\n")
    return folder


def load_sae(folder: str | Path) -> SAE:
    """An SAE saved by ``save_sae``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for p in (folder / "cfg.json", folder / "sae_weights.safetensors"):
        if not p.is_file():
            raise FileNotFoundError(f"SAE file {p} does not exist")
    info = json.loads((folder / "cfg.json").read_text())
    known = {f.name for f in fields(SAEConfig)}
    cfg = SAEConfig(**{k: v for k, v in info["course_config"].items() if k in known})
    sae = make_sae(cfg)
    tensors = load_file(folder / "sae_weights.safetensors")
    if cfg.architecture == "batchtopk":
        tensors["threshold"] = tensors["threshold"][0]
    missing, unexpected = sae.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: missing tensors {missing}, unexpected {unexpected}")
    return sae.eval()


def sae_info(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "cfg.json").read_text())
