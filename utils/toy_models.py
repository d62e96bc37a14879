"""Toy models of superposition (Elhage et al. 2022), trained many at once along an instance axis.

Each instance is an independent small model: ``n_features`` sparse features are squeezed into
``n_hidden`` dimensions and reconstructed,

    h  = W x                      (W: [n_hidden, n_features] per instance)
    x' = ReLU(W^T h + b)          (the "ReLU output" model)
    x' = ReLU(W^T ReLU(W x) + b)  (hidden_relu=True: a privileged basis in the hidden layer)

Features are present with probability p = 1 - S (S: sparsity), with values U[0, 1]; the loss
weights feature i by its importance I_i. Instances differ in p (or importance), so one training
run sweeps a whole axis of the paper's figures. Chapter 5 trains sparse autoencoders on the
hidden activations of these models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ToyConfig:
    n_instances: int = 10
    n_features: int = 5
    n_hidden: int = 2
    hidden_relu: bool = False


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        # Xavier-normal init, as in the paper's code.
        std = (2 / (cfg.n_hidden + cfg.n_features)) ** 0.5
        self.W = nn.Parameter(torch.randn(cfg.n_instances, cfg.n_hidden, cfg.n_features, generator=gen) * std)
        self.b_final = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))

    def hidden(self, x: Tensor) -> Tensor:
        """x: [batch, instances, features] -> h: [batch, instances, hidden]"""
        h = einops.einsum(x, self.W, "batch inst feat, inst hid feat -> batch inst hid")
        return F.relu(h) if self.cfg.hidden_relu else h

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)
        out = einops.einsum(h, self.W, "batch inst hid, inst hid feat -> batch inst feat")
        return F.relu(out + self.b_final)


class HiddenReluModel(ToyModel):
    """The privileged-basis variant (a ReLU on the hidden layer too), as its own class."""

    def __init__(self, cfg: ToyConfig, seed: int | None = 0):
        super().__init__(ToyConfig(cfg.n_instances, cfg.n_features, cfg.n_hidden, hidden_relu=True), seed)


def generate_batch(n_batch: int, feature_probability: Tensor, n_features: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """[n_batch, n_instances, n_features]: each feature present with its instance's probability,
    independently, with a value drawn from U[0, 1] when present."""
    n_instances = feature_probability.shape[0]
    shape = (n_batch, n_instances, n_features)
    # Drawn where the generator lives (the same numbers on every device), then moved to the
    # probabilities' device and dtype.
    where = generator.device if generator is not None else feature_probability.device
    if where.type == "meta":
        where = torch.device("cpu")
    values = torch.rand(shape, generator=generator, device=where)
    uniform = torch.rand(shape, generator=generator, device=where)
    target = dict(device=feature_probability.device, dtype=feature_probability.dtype
                  if feature_probability.is_floating_point() else torch.get_default_dtype())
    present = uniform.to(**target) < feature_probability.reshape(n_instances, -1)
    return values.to(**target) * present


def generate_correlated_batch(n_batch: int, feature_probability: Tensor, n_pairs: int,
                              generator: torch.Generator | None = None) -> Tensor:
    """[n_batch, n_instances, 2 * n_pairs]: features 2k and 2k+1 form a pair that is present
    together (with the instance's probability) or absent together; values independent U[0, 1]."""
    n_instances = feature_probability.shape[0]
    values = torch.rand(n_batch, n_instances, 2 * n_pairs, generator=generator)
    pair_present = torch.rand(n_batch, n_instances, n_pairs, generator=generator) < feature_probability.reshape(n_instances, 1)
    return values * pair_present.repeat_interleave(2, dim=-1)  # [p0, p0, p1, p1, ...]


def generate_anticorrelated_batch(n_batch: int, feature_probability: Tensor, n_pairs: int,
                                  generator: torch.Generator | None = None) -> Tensor:
    """[n_batch, n_instances, 2 * n_pairs]: features 2k and 2k+1 are never present together.
    A pair is active with probability 2p (so p <= 0.5), then a fair coin picks which of its two
    features is present: each feature alone is still present with probability p."""
    n_instances = feature_probability.shape[0]
    values = torch.rand(n_batch, n_instances, 2 * n_pairs, generator=generator)
    active = torch.rand(n_batch, n_instances, n_pairs, generator=generator) < 2 * feature_probability.reshape(n_instances, 1)
    first = torch.rand(n_batch, n_instances, n_pairs, generator=generator) < 0.5
    present = torch.stack([active & first, active & ~first], dim=-1).flatten(-2)  # [a0, b0, a1, b1, ...]
    return values * present


def importance_weighted_loss(out: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """Squared error weighted by importance [n_instances, n_features] (or [n_features]):
    mean over batch and features for each instance, summed over instances, so every instance
    trains as if alone."""
    return (importance * (x - out) ** 2).mean(dim=(0, 2)).sum()


def train_toy_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, importance: Tensor) -> float:
    loss = importance_weighted_loss(model(x), x, importance)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_toy_model(model: ToyModel, feature_probability: Tensor, importance: Tensor, steps: int = 10_000,
                    batch_size: int = 1024, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                    desc: str = "toy models", step_fn=None, batch_fn=None) -> list[float]:
    """AdamW, constant lr 1e-3, fresh batches of 1024 (the paper's settings). Returns the losses.

    ``step_fn(model, optimizer, x, importance) -> loss`` does one step (chapter 3 has you write it).
    Batches come from the toolkit's seeded ``generate_batch`` (or ``batch_fn(n_batch,
    feature_probability, n_features, generator)``, e.g. correlated features), so runs are repeatable."""
    from tqdm.auto import tqdm

    from .grading import demo_steps

    steps = demo_steps(steps, desc)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # on the model's device, in its dtype (the batches are drawn on the CPU, then moved there)
    weight = next(model.parameters())  # device and dtype of the model (W, or W1 for AbsModel)
    feature_probability = feature_probability.to(weight.device, weight.dtype).reshape(model.cfg.n_instances, -1)
    importance = importance.to(weight.device, weight.dtype)
    losses = []
    bar = tqdm(range(steps), desc=desc, mininterval=0.5, disable=not progress)
    # These tensors are tiny: one thread is several times faster than two (no synchronisation),
    # and 10x faster when another process competes for the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in bar:
            x = (batch_fn or generate_batch)(batch_size, feature_probability, model.cfg.n_features, gen)
            losses.append((step_fn or train_toy_step)(model, optimizer, x, importance))
            if step % 200 == 0:
                bar.set_postfix(loss=f"{losses[-1] / model.cfg.n_instances:.4f}")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return losses


# ---- Measurements ---------------------------------------------------------------------------
def feature_norms(W: Tensor) -> Tensor:
    """[instances, hidden, features] -> [instances, features]: ||W_i||, how strongly feature i is represented."""
    return W.norm(dim=1)


def gram(W: Tensor) -> Tensor:
    """W^T W: [instances, features, features]. Diagonal: squared norms; off-diagonal: interference."""
    return einops.einsum(W, W, "inst hid f1, inst hid f2 -> inst f1 f2")


def superposition(W: Tensor) -> Tensor:
    """[instances, features]: sum over j != i of (W_i_hat . W_j)^2, how much the other features
    project onto feature i's direction (0: feature i has a dimension to itself)."""
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, W, "inst hid fi, inst hid fj -> inst fi fj") ** 2
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def feature_dimensionality(W: Tensor) -> Tensor:
    """[instances, features]: D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (the paper's definition):
    1 for a feature with its own dimension, 1/2 for an antipodal pair, 2/5 in a pentagon, ..."""
    unit = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    overlaps = einops.einsum(unit, W, "inst hid fi, inst hid fj -> inst fi fj") ** 2
    return W.norm(dim=1) ** 2 / overlaps.sum(-1).clamp_min(1e-12)


def one_neuron_phase(W: Tensor, threshold: float = 0.5) -> Tensor:
    """For models with 2 features and 1 hidden dimension: [instances] phase codes.
    0: only feature 0 represented; 1: only feature 1; 2: both (superposition); -1: neither."""
    represented = W.abs()[:, 0, :] > threshold  # [instances, 2]
    codes = torch.full((W.shape[0],), -1, dtype=torch.long, device=W.device)
    codes[represented[:, 0] & ~represented[:, 1]] = 0
    codes[~represented[:, 0] & represented[:, 1]] = 1
    codes[represented[:, 0] & represented[:, 1]] = 2
    return codes


def polysemantic_fraction(W: Tensor, purity: float = 0.9, alive: float = 0.1) -> Tensor:
    """[instances]: among neurons (hidden dimensions) with positive input weights of norm >
    ``alive``, the fraction that are polysemantic: their largest feature holds less than
    ``purity`` of the neuron's squared *positive* weight. (Behind a ReLU, a negative weight only
    silences the neuron; the features a neuron *responds to* are its positive weights.)"""
    energy = F.relu(W) ** 2  # [instances, hidden, features]
    total = energy.sum(-1)
    top_share = energy.max(-1).values / total.clamp_min(1e-12)
    live = total.sqrt() > alive
    poly = (top_share < purity) & live
    return poly.sum(-1).float() / live.sum(-1).clamp_min(1).float()


def antipodal_pairs(W: Tensor, threshold: float = 0.5, cos: float = -0.9) -> Tensor:
    """[instances]: number of pairs of represented features pointing in opposite directions."""
    norms = feature_norms(W)
    unit = W / (norms[:, None, :] + 1e-6)
    cosines = einops.einsum(unit, unit, "inst hid fi, inst hid fj -> inst fi fj")
    represented = norms > threshold
    both = represented[:, :, None] & represented[:, None, :]
    return ((cosines < cos) & both).triu(1).sum(dim=(-1, -2))


def pair_cosines(W: Tensor) -> Tensor:
    """[instances, hidden, 2 * n_pairs] -> [instances, n_pairs]: cosine similarity between the
    directions of features 2k and 2k+1 (0: orthogonal, -1: antipodal)."""
    return F.cosine_similarity(W[..., 0::2], W[..., 1::2], dim=1, eps=1e-8)


def band_counts(dims: Tensor, norms: Tensor, fractions: Tensor, tol: float = 0.02, threshold: float = 0.5) -> Tensor:
    """How many represented features (norm > threshold) sit on each band of ``fractions``:
    each feature's dimensionality counts for its nearest fraction if it lies within ``tol``
    of it. dims, norms: [instances, features] -> [n_fractions] counts (int64)."""
    values = dims[norms > threshold]
    distance = (values[:, None] - fractions[None, :].to(values.dtype)).abs()
    nearest = distance.min(-1)
    return torch.bincount(nearest.indices[nearest.values < tol], minlength=fractions.shape[0])


NOT_REPRESENTED, DEDICATED, SHARED = 0, 1, 2  # the codes feature_status returns


def feature_status(W: Tensor, represented: float = 0.5, shared: float = 0.1) -> Tensor:
    """[instances, hidden, features] -> [instances, features] codes, the paper's bar-chart reading:
    0 not represented (||W_i|| <= ``represented``), 1 a dedicated dimension (represented, and its
    superposition sum_j!=i (W_i_hat . W_j)^2 < ``shared``), 2 in superposition (represented, >= ``shared``).
    A dropped feature is not represented whatever its superposition says: its direction is noise."""
    norms, sup = feature_norms(W), superposition(W)
    codes = torch.where(sup < shared, DEDICATED, SHARED)
    return torch.where(norms > represented, codes, NOT_REPRESENTED)


def is_regular_polygon(W2: Tensor, threshold: float = 0.5, tol_deg: float = 8.0) -> bool:
    """For one instance with 2 hidden dims ([2, features]): are all features represented, with
    equal norms and equally spaced angles (a regular polygon, e.g. the pentagon)?"""
    norms = W2.norm(dim=0)
    if (norms < threshold).any() or (norms.max() - norms.min()) / norms.max() > 0.15:
        return False
    angles = torch.atan2(W2[1], W2[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * torch.pi]))
    target = 2 * torch.pi / W2.shape[1]
    return bool(((gaps - target).abs() < torch.deg2rad(torch.tensor(tol_deg))).all())


# ---- The chapter's experiments (shared by the notebook and the tests) -----------------------
def intro_experiment(model_cls=ToyModel, step_fn=None, steps: int = 10_000, progress: bool = True):
    """5 features in 2 dimensions, importance 0.9^i, 10 instances from dense (p = 1) to sparse (p = 0.01)."""
    cfg = ToyConfig(n_instances=10, n_features=5, n_hidden=2)
    p = torch.logspace(0, -2, cfg.n_instances)
    importance = 0.9 ** torch.arange(cfg.n_features, dtype=torch.float32)
    torch.manual_seed(0)
    model = model_cls(cfg)
    train_toy_model(model, p, importance, steps=steps, progress=progress, step_fn=step_fn, desc="5 features in 2 dims")
    return model, p


def privileged_experiment(model_cls=HiddenReluModel, steps: int = 6_000, progress: bool = True):
    """A ReLU hidden layer: 10 features (importance 0.75^i) on 5 neurons, p from 0.5 down to 0.01.

    (At p = 1 every feature is always on and training often settles in a mixed local minimum;
    from p = 0.5 the dense end is cleanly monosemantic.)"""
    cfg = ToyConfig(n_instances=8, n_features=10, n_hidden=5, hidden_relu=True)
    p = torch.logspace(math.log10(0.5), -2, cfg.n_instances)
    torch.manual_seed(0)
    model = model_cls(cfg)
    train_toy_model(model, p, 0.75 ** torch.arange(cfg.n_features, dtype=torch.float32), steps=steps,
                    progress=progress, desc="privileged basis")
    return model, p



def sparsity_sweep(steps: int = 10_000, progress: bool = True):
    """The paper's sweep with norms coloured by superposition: 20 features (importance 0.7^i) in 5
    dimensions, at sparsities S = 0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999 (p = 1 - S)."""
    cfg = ToyConfig(n_instances=7, n_features=20, n_hidden=5)
    p = 1 - torch.tensor([0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999])
    model = ToyModel(cfg, seed=0)
    train_toy_model(model, p, 0.7 ** torch.arange(cfg.n_features, dtype=torch.float32), steps=steps,
                    progress=progress, desc="20 features in 5 dims")
    return model, p


def correlation_experiment(batch_fn, steps: int = 4_000, progress: bool = True, desc: str = "correlated pairs"):
    """Two pairs of features (4 features) in 2 dimensions, equally important, 6 instances with p
    from 0.2 to 0.01. ``batch_fn(n_batch, feature_probability, n_pairs)`` draws the batches (from
    torch's global generator, seeded here): ``generate_correlated_batch`` or
    ``generate_anticorrelated_batch``, or your own."""
    cfg = ToyConfig(n_instances=6, n_features=4, n_hidden=2)
    p = torch.logspace(-0.7, -2, cfg.n_instances)
    model = ToyModel(cfg, seed=0)
    torch.manual_seed(0)
    train_toy_model(model, p, torch.ones(cfg.n_features), steps=steps, progress=progress, desc=desc,
                    batch_fn=lambda n, q, f, gen: batch_fn(n, q.reshape(-1), f // 2))
    return model, p


# ---- Computation in superposition: |x| through a ReLU layer ------------------------------------
class AbsModel(nn.Module):
    """Elhage et al. (2022), *Computation in superposition*: features take values in [-1, 1] and
    the model must output their absolute values through ``n_hidden`` ReLU neurons,

        h = ReLU(W1 x),    y' = ReLU(W2 h + b_final)

    W1: [instances, hidden, features], W2: [instances, features, hidden] (not tied). One neuron
    cannot compute |x| (a ReLU sees only one sign): |x| = ReLU(x) + ReLU(-x) takes two."""

    def __init__(self, cfg: ToyConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        std = (2 / (cfg.n_hidden + cfg.n_features)) ** 0.5
        self.W1 = nn.Parameter(torch.randn(cfg.n_instances, cfg.n_hidden, cfg.n_features, generator=gen) * std)
        self.W2 = nn.Parameter(torch.randn(cfg.n_instances, cfg.n_features, cfg.n_hidden, generator=gen) * std)
        self.b_final = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(einops.einsum(x, self.W1, "batch inst feat, inst hid feat -> batch inst hid"))
        out = einops.einsum(h, self.W2, "batch inst hid, inst feat hid -> batch inst feat")
        return F.relu(out + self.b_final)


def generate_signed_batch(n_batch: int, feature_probability: Tensor, n_features: int,
                          generator: torch.Generator | None = None) -> Tensor:
    """Like ``generate_batch``, but a present feature takes a value from U[-1, 1]."""
    n_instances = feature_probability.shape[0]
    shape = (n_batch, n_instances, n_features)
    values = torch.rand(shape, generator=generator) * 2 - 1
    present = torch.rand(shape, generator=generator) < feature_probability.reshape(n_instances, -1)
    return values * present


def _abs_step(model, optimizer, x, importance):
    loss = importance_weighted_loss(model(x), x.abs(), importance)  # the target is |x|
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def abs_explained(model: nn.Module, feature_probability: Tensor, n_eval: int = 20_000, seed: int = 1) -> Tensor:
    """[instances, features]: how much of the variance of |x_i| the model's output explains,
    1 - E[(y'_i - |x_i|)^2] / Var(|x_i|), on a fresh batch (1: computed, about 0: not)."""
    gen = torch.Generator().manual_seed(seed)
    x = generate_signed_batch(n_eval, feature_probability, model.cfg.n_features, gen)
    target = x.abs()
    return 1 - ((model(x) - target) ** 2).mean(0) / target.var(0).clamp_min(1e-12)


def abs_experiment(model_cls=AbsModel, steps: int = 4_000, progress: bool = True):
    """|x| of 6 features (importance 0.9^i) through 6 ReLU neurons, at 6 feature probabilities from 1 to 0.03."""
    cfg = ToyConfig(n_instances=6, n_features=6, n_hidden=6)
    p = torch.logspace(0, -1.5, cfg.n_instances)
    torch.manual_seed(0)
    model = model_cls(cfg)
    train_toy_model(model, p, 0.9 ** torch.arange(cfg.n_features, dtype=torch.float32), steps=steps, progress=progress,
                    desc="|x| in superposition", step_fn=_abs_step,
                    batch_fn=lambda n, q, f, gen: generate_signed_batch(n, q, f, gen))
    return model, p

# ---- Shipped sweeps: too slow to train live on 2 cores, trained by recipes ------------------
# Two of the chapter's figures need more than a notebook's time budget: the feature-dimensionality
# sweep (100 features in 10 dimensions, 10 000 steps) and the phase diagram with several seeds per
# cell. Their recipes are below; the weights ship in utils/checkpoints/<name>/ (weights.safetensors
# + cfg.json, no pickle), and ``python -m utils.zoo train toy_phase`` retrains one.
def dimensionality_sweep(steps: int = 10_000, progress: bool = True):
    """100 equally important features in 10 dimensions (10x more features than dimensions), at 16
    feature probabilities from 1 (dense) to 0.002, with the paper's settings."""
    cfg = ToyConfig(n_instances=16, n_features=100, n_hidden=10)
    p = torch.logspace(0, -2.7, cfg.n_instances)
    model = ToyModel(cfg, seed=0)
    importance = torch.ones(cfg.n_features)
    train_toy_model(model, p, importance, steps=steps, progress=progress, desc="100 features in 10 dims")
    return model, p, importance


def dense_end(steps: int = 10_000, progress: bool = True, decay: float = 0.9):
    """The sweep's dense end with the tie broken: 100 features in 10 dimensions, all always present
    (p = 1), importance ``decay^i``. With equal importances every 10-dimensional subspace loses the
    same variance, so training stops in whichever mixed subspace it drifts to; a decay makes the
    top 10 features the one best subspace, and training finds it: the PCA solution."""
    cfg = ToyConfig(n_instances=1, n_features=100, n_hidden=10)
    p = torch.ones(1)
    model = ToyModel(cfg, seed=0)
    importance = decay ** torch.arange(cfg.n_features, dtype=torch.float32)
    train_toy_model(model, p, importance, steps=steps, progress=progress, desc="dense end, importance 0.9^i")
    return model, p, importance


def pca_solution(cfg: ToyConfig, feature_probability: Tensor) -> ToyModel:
    """The PCA-like solution of a dense toy model: features 0 .. n_hidden - 1 each on a hidden axis
    of their own (W = [I, 0]), the others dropped and predicted by their mean, p / 2, through the bias."""
    model = ToyModel(cfg)
    with torch.no_grad():
        model.W.zero_()
        model.W[:, :, : cfg.n_hidden] = torch.eye(cfg.n_hidden)
        model.b_final.zero_()
        model.b_final[:, cfg.n_hidden :] = feature_probability.reshape(-1, 1) / 2
    return model.eval()


@torch.no_grad()
def eval_loss(model: nn.Module, feature_probability: Tensor, importance: Tensor, n_eval: int = 20_000, seed: int = 1) -> Tensor:
    """[instances]: each instance's importance-weighted loss on a fresh seeded batch of ``n_eval``."""
    gen = torch.Generator().manual_seed(seed)
    x = generate_batch(n_eval, feature_probability.reshape(model.cfg.n_instances, -1), model.cfg.n_features, gen)
    return (importance * (x - model(x)) ** 2).mean(dim=(0, 2))


def phase_sweep(steps: int = 4_000, k: int = 8, seeds: int = 4, progress: bool = True):
    """One neuron, two features: feature 1's relative importance (0.1..10) x density (1..0.01), a
    k x k grid, each cell trained ``seeds`` times from different initialisations (instances
    ``s * k * k + cell``). ``best_of_seeds`` keeps the run with the lowest loss per cell."""
    density = torch.logspace(0, -2, k).repeat_interleave(k)
    relative = torch.logspace(-1, 1, k).repeat(k)
    model = ToyModel(ToyConfig(n_instances=k * k * seeds, n_features=2, n_hidden=1), seed=0)
    importance = torch.stack([torch.ones(k * k), relative], dim=1)
    train_toy_model(model, density.repeat(seeds), importance.repeat(seeds, 1), steps=steps, progress=progress,
                    desc="one neuron, two features")
    return model, density, relative


@torch.no_grad()
def best_of_seeds(model: ToyModel, feature_probability: Tensor, importance: Tensor, seeds: int,
                  n_eval: int = 20_000, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Instances ``s * n + cell`` are ``seeds`` runs of the same ``n`` cells. Returns the weights
    of each cell's lowest-loss run, W [n, hidden, features], and that loss [n] (on a fresh batch)."""
    n = model.cfg.n_instances // seeds
    gen = torch.Generator().manual_seed(seed)
    p = feature_probability.reshape(n, -1).repeat(seeds, 1)
    imp = importance.reshape(-1, model.cfg.n_features).expand(n, -1).repeat(seeds, 1)
    x = generate_batch(n_eval, p, model.cfg.n_features, gen)
    loss = (imp * (x - model(x)) ** 2).mean(dim=(0, 2)).reshape(seeds, n)
    best = loss.argmin(0)
    W = model.W.detach().reshape(seeds, n, model.cfg.n_hidden, model.cfg.n_features)[best, torch.arange(n)]
    return W, loss[best, torch.arange(n)]


def phase_boundary(relative: Tensor) -> Tensor:
    """An approximate analytic border of the one-neuron phase diagram: the density below which
    two features in superposition (W = (1, -1), b = 0) lose less than keeping only the more
    important one (W = 1, the other predicted by its mean through the bias).

    Per sample, a feature is present with probability p and value x ~ U[0, 1]. Dropping feature j
    costs I_j Var(x_j) = I_j (p/3 - p^2/4). In superposition, a feature alone is reconstructed
    exactly; when both are present (probability p^2) the smaller value is lost from one output and
    the larger is reduced by it in the other, E[min(x0, x1)^2] = 1/6 each, so the cost is
    p^2 (1 + I_1) / 6. Superposition wins when p^2 (1 + r) / 6 < min(1, r) (p/3 - p^2/4), i.e.
    p < 4r / (2 + 5r) for r = I_1 < 1 and p < 4 / (5 + 2r) for r > 1 (4/7 at r = 1). Trained
    models can do slightly better than these fixed weights, so the true border lies a little higher."""
    return torch.where(relative < 1, 4 * relative / (2 + 5 * relative), 4 / (5 + 2 * relative))


def save_toy(model: ToyModel, out_dir, name: str, metadata: dict) -> "Path":
    """Write ``out_dir/name/weights.safetensors`` (W, b_final and the sweep's tensors) and ``cfg.json``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().cpu().clone().contiguous() for k, v in getattr(model, "sweep", {}).items()})
    save_file(tensors, folder / "weights.safetensors")
    cfg = {"n_instances": model.cfg.n_instances, "n_features": model.cfg.n_features, "n_hidden": model.cfg.n_hidden,
           "hidden_relu": model.cfg.hidden_relu}
    (folder / "cfg.json").write_text(json.dumps({"format": 1, "config": cfg, "metadata": metadata}, indent=2) + "\n")
    return folder


def load_toy(name: str) -> tuple[ToyModel, dict[str, Tensor], dict]:
    """A shipped sweep by name (``toy_dimensionality``, ``toy_phase``): the model, the sweep's
    tensors (feature probability, importance, ...) and the recipe's metadata."""
    import json

    from safetensors.torch import load_file

    from .zoo import checkpoint_dir

    folder = checkpoint_dir() / name
    info = json.loads((folder / "cfg.json").read_text())
    tensors = load_file(folder / "weights.safetensors")
    model = ToyModel(ToyConfig(**info["config"]))
    model.load_state_dict({k: tensors.pop(k) for k in ("W", "b_final")})
    return model.eval(), tensors, info["metadata"]


def _register_recipes() -> None:
    from .zoo import recipe

    def save(model, out_dir, name, metadata):
        return save_toy(model, out_dir, name, metadata)

    @recipe("toy_dimensionality", "Chapter 3's feature-dimensionality sweep: 100 features in 10 dims, 16 sparsities.", save=save)
    def _toy_dimensionality(steps: int | None = None, progress: bool = True):
        steps = steps or 10_000
        model, p, importance = dimensionality_sweep(steps=steps, progress=progress)
        model.sweep = {"feature_probability": p, "importance": importance}
        return model, {"recipe": "toy_dimensionality", "steps": steps, "seed": 0, "torch": torch.__version__}

    @recipe("toy_dense_end", "Chapter 3's dense end with the tie broken: 100 features (importance 0.9^i) in 10 dims, p = 1.", save=save)
    def _toy_dense_end(steps: int | None = None, progress: bool = True):
        steps = steps or 10_000
        model, p, importance = dense_end(steps=steps, progress=progress)
        model.sweep = {"feature_probability": p, "importance": importance}
        return model, {"recipe": "toy_dense_end", "steps": steps, "decay": 0.9, "seed": 0, "torch": torch.__version__}

    @recipe("toy_phase", "Chapter 3's one-neuron phase diagram: 8 x 8 cells, 4 seeds each.", save=save)
    def _toy_phase(steps: int | None = None, progress: bool = True):
        steps = steps or 4_000
        model, density, relative = phase_sweep(steps=steps, progress=progress)
        model.sweep = {"density": density, "relative": relative, "seeds": torch.tensor(4)}
        return model, {"recipe": "toy_phase", "steps": steps, "seeds": 4, "seed": 0, "torch": torch.__version__}


_register_recipes()
