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
                    desc: str = "toy models", step_fn=None) -> list[float]:
    """AdamW, constant lr 1e-3, fresh batches of 1024 (the paper's settings). Returns the losses.

    ``step_fn(model, optimizer, x, importance) -> loss`` does one step (chapter 3 has you write it).
    Batches come from the toolkit's seeded ``generate_batch``, so runs are repeatable."""
    from tqdm.auto import tqdm

    from .grading import demo_steps

    steps = demo_steps(steps, desc)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # on the model's device, in its dtype (the batches are drawn on the CPU, then moved there)
    feature_probability = feature_probability.to(model.W.device, model.W.dtype).reshape(model.cfg.n_instances, -1)
    importance = importance.to(model.W.device, model.W.dtype)
    losses = []
    bar = tqdm(range(steps), desc=desc, mininterval=0.5, disable=not progress)
    # These tensors are tiny: one thread is several times faster than two (no synchronisation),
    # and 10x faster when another process competes for the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in bar:
            x = generate_batch(batch_size, feature_probability, model.cfg.n_features, gen)
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


def dimensionality_experiment(steps: int = 5_000, progress: bool = True):
    """40 equally important features in 10 dimensions, at 12 sparsities from p = 1 to p = 0.005."""
    cfg = ToyConfig(n_instances=12, n_features=40, n_hidden=10)
    p = torch.logspace(0, -2.3, cfg.n_instances)
    model = ToyModel(cfg, seed=0)
    train_toy_model(model, p, torch.ones(cfg.n_features), steps=steps, progress=progress, desc="40 features in 10 dims")
    return model, p


def phase_experiment(steps: int = 4_000, k: int = 8, progress: bool = True):
    """One neuron, two features: feature 1's relative importance (0.1..10) x density (1..0.01), k x k instances."""
    density = torch.logspace(0, -2, k).repeat_interleave(k)
    relative = torch.logspace(-1, 1, k).repeat(k)
    model = ToyModel(ToyConfig(n_instances=k * k, n_features=2, n_hidden=1), seed=0)
    importance = torch.stack([torch.ones(k * k), relative], dim=1)
    train_toy_model(model, density, importance, steps=steps, progress=progress, desc="one neuron, two features")
    return model, density, relative


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
