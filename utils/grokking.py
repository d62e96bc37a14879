"""Grokking modular addition, and the Fourier algorithm the trained model ends up with.

The task of Power et al. (2022) and Nanda et al. (2023, *Progress measures for grokking via
mechanistic interpretability*): inputs ``[a, b, =]`` for all a, b < p, answer ``(a + b) mod p``
read at the last position, a random fraction of the p² pairs for training and the rest for
testing. A one-layer transformer with ReLU and no LayerNorm, trained full-batch with AdamW and
strong weight decay, first memorises the training pairs, then, long after, generalises.

What it learns (Nanda et al.): embed a and b as angles ``w·a``, ``w·b`` on circles for a few key
frequencies ``w = 2πk/p``; combine them in the attention and MLP with trigonometric identities
into ``cos(w(a + b))`` and ``sin(w(a + b))``; read out the logit of each answer c as
``cos(w(a + b − c))``, largest at c = a + b. The functions here measure that:

* ``fourier_basis``: the orthonormal basis of functions on Z_p (constant, cos and sin of each
  frequency k = 1 .. (p−1)/2);
* ``embedding_frequency_norms`` and ``key_frequencies``: which frequencies the embedding uses;
* ``neuron_frequency_fractions``: how much of each MLP neuron's activation (a function of a and
  b) one frequency explains;
* ``logit_frequency_projection``, ``restricted_logits``, ``excluded_logits``: the logits'
  components along ``cos(w(a + b − c))`` and ``sin(w(a + b − c))``, kept alone (restricted
  loss) or removed (excluded loss), as progress measures.

Everything is written for this course (definitions follow the paper's text; no code is taken
from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import Config, Transformer


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


@dataclass
class ModularAddition:
    """Every pair (a, b) for one prime p, split once into train and test indices."""

    p: int
    tokens: Tensor  # (p², 3): a, b, and the "=" token (id p)
    labels: Tensor  # (p²,): (a + b) mod p
    train: Tensor  # indices into tokens
    test: Tensor


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Every input ``[a, b, =]`` for a, b in 0 .. p−1, a-major (row ``a·p + b``), with the "="
    token's id p; and each row's answer ``(a + b) mod p``. Shapes (p², 3) and (p²,), int64."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p


def modular_addition(p: int, frac_train: float = 0.3, seed: int = 0) -> ModularAddition:
    """All p² inputs ``[a, b, =]`` in order (a-major, ``all_pairs``), their answers, and a random
    split with ``round(frac_train · p²)`` training pairs (seeded: the same split every time)."""
    tokens, labels = all_pairs(p)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(frac_train * p * p)
    return ModularAddition(p, tokens, labels, order[:n_train].sort().values, order[n_train:].sort().values)


def mirror_mask(data: ModularAddition) -> Tensor:
    """For each test pair (a, b), in the order of ``data.test``: is its mirror (b, a), which has
    the same answer, among the training pairs? (A pair with a = b is its own mirror, so never.)
    A model that has only memorised the training pairs, but treats its two inputs alike, gets
    the mirrored test pairs right for free."""
    p = data.p
    in_train = torch.zeros(p * p, dtype=torch.bool)
    in_train[data.train] = True
    a, b = data.tokens[data.test, 0], data.tokens[data.test, 1]
    return in_train[b * p + a]


def grokking_config(p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512) -> Config:
    """The paper's architecture in the course's Transformer: one layer, ReLU, no LayerNorm,
    a vocabulary of the p numbers and "=", three positions."""
    return Config(d_vocab=p + 1, n_ctx=3, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                  d_mlp=d_mlp, n_layers=1, normalization=None, act_fn="relu")


def answer_logits(model: nn.Module, tokens: Tensor, p: int) -> Tensor:
    """Logits of the p possible answers at the last position: (batch, p) (the "=" token's own
    logit is not an answer)."""
    return model(tokens)[:, -1, :p]


def loss_and_accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Mean cross-entropy (computed in float64: near-perfect models have losses of 1e-6) and
    the fraction of argmax answers that are right."""
    loss = F.cross_entropy(logits.double(), labels).item()
    return loss, (logits.argmax(-1) == labels).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Training, with a history of checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class GrokkingLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # step -> state dict

    def first_step(self, metric: str, at_least: float) -> int | None:
        """The first logged step where ``metric`` (e.g. "test_acc") is at least ``at_least``."""
        for step, value in zip(self.steps, getattr(self, metric)):
            if value >= at_least:
                return step
        return None


def train_grokking(model: nn.Module, data: ModularAddition, steps: int, lr: float = 1e-3,
                   weight_decay: float = 1.0, betas: tuple[float, float] = (0.9, 0.98),
                   log_every: int = 10, snapshot_every: int | None = None,
                   progress: bool = True) -> GrokkingLog:
    """Full-batch AdamW on the training pairs (the paper's optimiser settings by default),
    logging train and test loss and accuracy every ``log_every`` steps, and keeping a copy of
    the weights every ``snapshot_every`` steps (for progress measures)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    x_train, y_train = data.tokens[data.train], data.labels[data.train]
    x_test, y_test = data.tokens[data.test], data.labels[data.test]
    log = GrokkingLog()
    bar = tqdm(range(steps + 1), desc="training", disable=not progress, mininterval=1.0)
    for step in bar:
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                tr = loss_and_accuracy(answer_logits(model, x_train, data.p), y_train)
                te = loss_and_accuracy(answer_logits(model, x_test, data.p), y_test)
            log.steps.append(step)
            log.train_loss.append(tr[0])
            log.train_acc.append(tr[1])
            log.test_loss.append(te[0])
            log.test_acc.append(te[1])
            bar.set_postfix(train_acc=f"{tr[1]:.2f}", test_acc=f"{te[1]:.2f}", refresh=False)
        if snapshot_every and (step % snapshot_every == 0 or step == steps):
            log.snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step == steps:
            break
        loss = F.cross_entropy(answer_logits(model, x_train, data.p), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return log


def weight_norm(model: nn.Module) -> float:
    """Sum of squares of every parameter: what weight decay shrinks."""
    return sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The Fourier basis of functions on Z_p
# ---------------------------------------------------------------------------------------------


def fourier_basis(p: int) -> Tensor:
    """The (p, p) orthonormal Fourier basis of functions on {0, ..., p−1}, one function per
    row: the constant, then cos(2πk·x/p) and sin(2πk·x/p) for k = 1 .. (p−1)/2 (p odd), each
    scaled to unit norm (``fourier_names`` names the rows). float32."""
    if p % 2 == 0:
        raise ValueError("the basis here is for odd p (the course uses primes)")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float()


def fourier_names(p: int) -> list[str]:
    """The names of ``fourier_basis(p)``'s rows: "const", "cos 1", "sin 1", ..."""
    return ["const"] + [f"{fn} {k}" for k in range(1, (p - 1) // 2 + 1) for fn in ("cos", "sin")]


def embedding_frequency_norms(W_E: Tensor, p: int) -> Tensor:
    """For each frequency k = 1 .. (p−1)/2, the norm of the embedding of the p numbers along
    cos k and sin k together: ``||F_cos_k W_E||² + ||F_sin_k W_E||²``, square-rooted. (The
    "=" token's row, if W_E has p + 1 rows, is not a number and is left out.)"""
    basis = fourier_basis(p)
    coeffs = basis.to(W_E.dtype) @ W_E[:p]  # (p, d_model): the embedding in the Fourier basis
    per_row = (coeffs ** 2).sum(-1)
    return (per_row[1::2] + per_row[2::2]).sqrt()


def key_frequencies(W_E: Tensor, p: int, threshold: float = 0.5) -> list[int]:
    """The frequencies the embedding is built from: those whose norm
    (``embedding_frequency_norms``) is at least ``threshold`` times the largest, sorted. A
    trained model has a few such frequencies of similar norm and a clear drop after them."""
    norms = embedding_frequency_norms(W_E, p)
    return [k + 1 for k in range(len(norms)) if norms[k] >= threshold * norms.max()]


def fourier_transform_2d(grid: Tensor, p: int) -> Tensor:
    """A function of two inputs, ``grid[..., a, b]`` (any leading axes), in the Fourier basis
    along both: ``B @ grid @ Bᵀ`` with B = ``fourier_basis(p)``. Entry [..., i, j] is the
    component along (row i of B as a function of a) × (row j as a function of b). The basis is
    orthonormal, so the sum of squares is unchanged."""
    basis = fourier_basis(p).to(grid.dtype)
    return basis @ grid @ basis.T


def components_for_fraction(values: Tensor, fraction: float) -> int:
    """How many of ``values``' entries (e.g. squared coefficients: power), taken largest first,
    reach at least ``fraction`` of their total."""
    ordered = values.flatten().double().sort(descending=True).values
    cumulative = ordered.cumsum(0)
    return int((cumulative < fraction * cumulative[-1]).sum()) + 1


def neuron_frequency_fractions(acts: Tensor, p: int) -> Tensor:
    """For neurons whose activations ``acts`` (p², n_neurons; rows in the order of
    ``modular_addition``, a-major) are functions of (a, b): the fraction of each neuron's
    variance explained by each frequency k = 1 .. (p−1)/2, i.e. by the 2D Fourier components
    whose a-frequency or b-frequency is k (and the other is k or constant).
    Returns (n_neurons, (p − 1)/2)."""
    grid = acts.T.reshape(-1, p, p)  # (neuron, a, b)
    power = fourier_transform_2d(grid, p) ** 2  # (neuron, a-component, b-component)
    power[:, 0, 0] = 0  # the mean is not variance
    total = power.sum(dim=(1, 2)).clamp_min(1e-30)
    n_freq = (p - 1) // 2
    out = torch.zeros(acts.shape[1], n_freq, dtype=acts.dtype)
    for k in range(1, n_freq + 1):
        rows = [0, 2 * k - 1, 2 * k]  # const, cos k, sin k
        block = power[:, rows][:, :, rows].sum(dim=(1, 2)) - power[:, 0, 0]
        out[:, k - 1] = block
    return out / total[:, None]


# ---------------------------------------------------------------------------------------------
# The logits along cos(w(a + b − c)) and sin(w(a + b − c))
# ---------------------------------------------------------------------------------------------


def logit_directions(p: int, freqs: list[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """(2·len(freqs), p², p): for each k in ``freqs``, cos then sin of 2πk(a + b − c)/p over
    the full grid (rows a-major as in ``all_pairs``, columns c), each scaled to unit norm. They
    are orthogonal to each other (for distinct k in 1 .. (p−1)/2) and to any constant. Computed in float64, returned in ``dtype``."""
    a = torch.arange(p).repeat_interleave(p)[:, None]
    b = torch.arange(p).repeat(p)[:, None]
    c = torch.arange(p)[None, :]
    phase = 2 * math.pi * ((a + b - c) % p).double() / p
    dirs = []
    for k in freqs:
        for fn in (torch.cos, torch.sin):
            d = fn(k * phase)
            dirs.append((d / d.norm()).to(dtype))  # computed in float64; 14 float32 directions for p = 113 are 80 MB
    return torch.stack(dirs)


def logit_frequency_projection(logits: Tensor, p: int, freqs: list[int]) -> Tensor:
    """The part of the full-grid logits (p², p; rows a-major as in ``modular_addition``)
    along cos and sin of 2πk(a + b − c)/p for each k in ``freqs``."""
    dirs = logit_directions(p, freqs, dtype=logits.dtype)
    coeffs = torch.einsum("kxc,xc->k", dirs, logits)
    return torch.einsum("k,kxc->xc", coeffs, dirs)


def restricted_logits(logits: Tensor, p: int, freqs: list[int]) -> Tensor:
    """Only the key frequencies' part of the logits (plus each input's mean logit, which no
    softmax sees): the restricted loss is the loss of these."""
    return logits.mean(-1, keepdim=True) + logit_frequency_projection(logits, p, freqs)


def excluded_logits(logits: Tensor, p: int, freqs: list[int]) -> Tensor:
    """The logits with the key frequencies' part removed: the excluded loss is their loss."""
    return logits - logit_frequency_projection(logits, p, freqs)


def fraction_of_logit_variance(logits: Tensor, p: int, freqs: list[int]) -> float:
    """How much of the logits' variance over answers the key frequencies' part explains."""
    centred = logits - logits.mean(-1, keepdim=True)
    part = logit_frequency_projection(logits, p, freqs)
    return float((part.double() ** 2).sum() / (centred.double() ** 2).sum())


def restricted_and_excluded_loss(logits: Tensor, data: ModularAddition, freqs: list[int]) -> tuple[float, float]:
    """Nanda et al.'s two progress measures, on the *training* pairs: the loss of the logits
    keeping only the key frequencies' part (restricted loss: is the algorithm enough on its
    own?) and the loss with that part removed (excluded loss: can the model still answer
    without it, i.e. from memorisation?). ``logits`` are the full grid's (p², p)."""
    rows, labels = data.train, data.labels[data.train]
    restricted = loss_and_accuracy(restricted_logits(logits, data.p, freqs)[rows], labels)[0]
    excluded = loss_and_accuracy(excluded_logits(logits, data.p, freqs)[rows], labels)[0]
    return restricted, excluded


def progress_measures(model: nn.Module, snapshots: dict[int, dict[str, Tensor]], data: ModularAddition,
                      freqs: list[int]) -> dict[str, list[float]]:
    """For each snapshot of a training run (``GrokkingLog.snapshots``, loaded into ``model`` in
    turn): test accuracy, overall and on the test pairs whose mirror is *not* a training pair
    (``mirror_mask``: the honest measure of generalisation), the restricted and excluded losses
    (``restricted_and_excluded_loss``), the full training loss, and the weight norm. Nanda et
    al.'s progress measures: the circuit forms (restricted loss falls, excluded loss rises) while
    test accuracy still looks like memorisation; then weight decay cleans the memorisation up."""
    out: dict[str, list[float]] = {k: [] for k in ("step", "test_acc", "unseen_test_acc", "restricted_loss",
                                                   "excluded_loss", "full_train_loss", "weight_norm")}
    unseen = data.test[~mirror_mask(data)]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        for step in sorted(snapshots):
            model.load_state_dict({k: v.to(saved[k].dtype) for k, v in snapshots[step].items()})
            logits = full_logits(model, data.p)
            out["step"].append(step)
            out["test_acc"].append(loss_and_accuracy(logits[data.test], data.labels[data.test])[1])
            out["unseen_test_acc"].append(loss_and_accuracy(logits[unseen], data.labels[unseen])[1])
            out["full_train_loss"].append(loss_and_accuracy(logits[data.train], data.labels[data.train])[0])
            restricted, excluded = restricted_and_excluded_loss(logits, data, freqs)
            out["restricted_loss"].append(restricted)
            out["excluded_loss"].append(excluded)
            out["weight_norm"].append(weight_norm(model))
    finally:
        model.load_state_dict(saved)
    return out


def full_logits(model: nn.Module, p: int) -> Tensor:
    """The model's answer logits on every (a, b), in the order of ``modular_addition``."""
    data = modular_addition(p, frac_train=0.0)
    with torch.no_grad():
        return answer_logits(model, data.tokens, p)


def paper_init_(model: Transformer, seed: int = 0) -> Transformer:
    """Re-initialise ``model`` as Nanda et al.'s grokking model was: each weight matrix from a
    normal distribution with standard deviation 1/sqrt(fan-in) (the unembedding 1/sqrt(d_vocab)),
    biases zero. These weights are far larger than the course's usual 0.02: it is a large
    initial weight norm that makes the model memorise first and generalise late (Liu et al.
    2023, *Omnigrok*), and weight decay that brings the norm down."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    scale = {"W_E": cfg.d_model, "W_pos": cfg.d_model, "W_Q": cfg.d_model, "W_K": cfg.d_model,
             "W_V": cfg.d_model, "W_O": cfg.d_model, "W_in": cfg.d_model, "W_out": cfg.d_mlp,
             "W_U": cfg.d_vocab}
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in scale:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(scale[leaf]))
            else:
                param.zero_()
    return model


def new_model(p: int, seed: int = 0, **sizes) -> Transformer:
    """A freshly initialised grokking model, with the paper's initialisation (``paper_init_``;
    seeded, and the global random state is left as it was)."""
    return paper_init_(Transformer(grokking_config(p, **sizes), seed=seed), seed=seed)


# ---------------------------------------------------------------------------------------------
# The live run, and a saved history of it
# ---------------------------------------------------------------------------------------------

# The run chapter 6 trains live (about 30 CPU-seconds) and ships as a history of snapshots:
# memorised by step 100, generalised (test accuracy ≥ 95 %) around step 850.
LIVE_RUN = {"p": 59, "frac_train": 0.5, "split_seed": 0, "seed": 0, "d_model": 64, "n_heads": 4, "d_mlp": 256,
            "lr": 3e-3, "weight_decay": 1.0, "steps": 1000}


@dataclass
class GrokkingRun:
    """A training run: the model (at its last step), the task and split, and the log (with
    snapshots of the weights)."""

    model: Transformer
    data: ModularAddition
    log: GrokkingLog
    settings: dict


def train_run(settings: dict | None = None, steps: int | None = None, log_every: int = 10,
              snapshot_every: int | None = 50, progress: bool = True, desc: str = "the grokking run",
              **changes) -> GrokkingRun:
    """Train one run from ``settings`` (``LIVE_RUN`` by default, with ``changes`` applied, e.g.
    ``frac_train=0.8`` or ``weight_decay=0.1``); ``steps`` overrides its number of steps.
    (While a notebook is autograded it trains for a few steps only: ``utils.grading.demo_steps``.)"""
    from .grading import demo_steps

    s = dict(settings or LIVE_RUN, **changes)
    if steps is not None:
        s["steps"] = steps
    s["steps"] = demo_steps(s["steps"], desc)
    data = modular_addition(s["p"], s["frac_train"], seed=s["split_seed"])
    model = new_model(s["p"], seed=s["seed"], d_model=s["d_model"], n_heads=s["n_heads"], d_mlp=s["d_mlp"])
    log = train_grokking(model, data, s["steps"], lr=s["lr"], weight_decay=s["weight_decay"], log_every=log_every,
                         snapshot_every=snapshot_every, progress=progress)
    return GrokkingRun(model, data, log, s)


_CURVES = ("steps", "train_loss", "test_loss", "train_acc", "test_acc")


def save_run(run: GrokkingRun, out_dir, name: str, metadata: dict):
    """Write ``out_dir/name/weights.safetensors`` (every snapshot, in float16, as
    ``step_NNNNN.<parameter>``) and ``cfg.json`` (model config, settings, the logged curves)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"step_{step:05d}.{k}": v.detach().to(torch.float16).contiguous()
               for step, state in run.log.snapshots.items() for k, v in state.items()}
    save_file(tensors, folder / "weights.safetensors")
    curves = {k: [round(v, 6) if isinstance(v, float) else v for v in getattr(run.log, k)] for k in _CURVES}
    info = {"format": 1, "config": run.model.cfg.to_dict(), "settings": run.settings, "curves": curves,
            "metadata": metadata}
    (folder / "cfg.json").write_text(json.dumps(info, indent=1) + "\n")
    return folder


def load_run(name: str = "grokking_p59_history") -> GrokkingRun:
    """A shipped run by name: its model at the last snapshot, its task and split, and its log
    (curves and every snapshot, as float32)."""
    import json

    from safetensors.torch import load_file

    from .zoo import checkpoint_dir

    folder = checkpoint_dir() / name
    info = json.loads((folder / "cfg.json").read_text())
    s = info["settings"]
    log = GrokkingLog(**{k: info["curves"][k] for k in _CURVES})
    for key, tensor in load_file(folder / "weights.safetensors").items():
        step, param = key.split(".", 1)
        log.snapshots.setdefault(int(step[5:]), {})[param] = tensor.float()
    model = Transformer(Config.from_dict(info["config"]))
    model.load_state_dict(log.snapshots[max(log.snapshots)])
    return GrokkingRun(model.eval(), modular_addition(s["p"], s["frac_train"], seed=s["split_seed"]), log, s)


# ---------------------------------------------------------------------------------------------
# The shipped models (recipes: python -m utils.zoo train grokking_p113)
# ---------------------------------------------------------------------------------------------

from .zoo import recipe  # noqa: E402  (the zoo imports this module for its recipes)


@recipe("grokking_p59_history", "Chapter 6's live run (p = 59, d_model 64, half the pairs), with a snapshot "
        "of the weights every 50 steps: the progress measures' history.",
        save=lambda run, out_dir, name, metadata: save_run(run, out_dir, name, metadata))
def _grokking_p59_history(steps: int | None = None, progress: bool = True) -> tuple[GrokkingRun, dict]:
    import time

    start = time.process_time()
    run = train_run(steps=steps, snapshot_every=50, progress=progress)
    log = run.log
    return run, {"recipe": "grokking_p59_history", "torch": torch.__version__,
                 "train_cpu_seconds": round(time.process_time() - start, 1),
                 "first_step_train_acc_1": log.first_step("train_acc", 1.0),
                 "first_step_test_acc_0.95": log.first_step("test_acc", 0.95),
                 "key_frequencies": key_frequencies(run.model.embed.W_E.detach(), run.data.p)}
@recipe("grokking_p113", "Chapter 6's model: one layer, ReLU, no LayerNorm, trained on (a + b) mod 113 "
        "(40 % of pairs) with AdamW and weight decay 1.0 until long after it generalised.")
def _grokking_p113(steps: int | None = None, progress: bool = True) -> tuple[Transformer, dict]:
    import time

    steps = steps or 1500
    p = 113
    data = modular_addition(p, frac_train=0.4, seed=0)
    model = new_model(p, seed=0)
    start = time.process_time()
    log = train_grokking(model, data, steps, lr=3e-3, weight_decay=1.0, log_every=50, progress=progress)
    keys = key_frequencies(model.embed.W_E.detach(), p)
    logits = full_logits(model, p)
    return model, {"recipe": "grokking_p113", "p": p, "frac_train": 0.4, "split_seed": 0, "seed": 0,
                   "steps": steps, "lr": 3e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "torch": torch.__version__,
                   "train_cpu_seconds": round(time.process_time() - start, 1),
                   "train_loss": log.train_loss[-1], "test_loss": log.test_loss[-1], "test_acc": log.test_acc[-1],
                   "first_step_train_acc_1": log.first_step("train_acc", 1.0),
                   "first_step_test_acc_0.95": log.first_step("test_acc", 0.95),
                   "key_frequencies": keys,
                   "logit_variance_explained": round(fraction_of_logit_variance(logits, p, keys), 4)}
