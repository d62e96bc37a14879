"""A plain training loop with a progress bar, used by every chapter that trains a model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .transformer import lm_cross_entropy


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, tokens: Tensor) -> float:
    """One optimisation step on a batch of token sequences; returns the loss as a float."""
    loss = lm_cross_entropy(model(tokens), tokens)
    optimizer.zero_grad()  # gradients accumulate across backward() calls unless cleared
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass
class TrainingLog:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, list[float]] = field(default_factory=dict)

    def smoothed(self, window: int = 20) -> list[float]:
        out, total = [], 0.0
        for i, x in enumerate(self.losses):
            total += x
            if i >= window:
                total -= self.losses[i - window]
            out.append(total / min(i + 1, window))
        return out


def batches(data: Tensor, batch_size: int, seed: int = 0):
    """Endless shuffled batches of rows of ``data`` (its own generator: global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            if len(idx) == batch_size:
                yield data[idx]


def train(
    model: nn.Module,
    data: Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    step_fn: Callable[[nn.Module, torch.optim.Optimizer, Tensor], float] = train_step,
    seed: int = 0,
    warmup: int = 50,
    every: int = 0,
    callback: Callable[[int, nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
    desc: str = "training",
) -> TrainingLog:
    """Train ``model`` on rows of ``data`` with AdamW, a short warm-up and cosine decay.

    ``step_fn(model, optimizer, batch) -> loss`` does one step (chapter 1 has you write it).
    Every ``every`` steps, ``callback(step, model)`` may return numbers to log (e.g. a score).
    """
    from .grading import demo_steps

    steps = demo_steps(steps, desc)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(warmup, 1)) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(s / steps * torch.pi)).item())),
    )
    log = TrainingLog()
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    stream = batches(data, batch_size, seed)
    device = next(model.parameters()).device  # the data may stay on the CPU, batch by batch
    for step in bar:
        loss = step_fn(model, optimizer, next(stream).to(device))
        schedule.step()
        log.steps.append(step)
        log.losses.append(float(loss))
        if callback is not None and every and (step % every == 0 or step == steps - 1):
            with torch.no_grad():
                for key, value in callback(step, model).items():
                    log.extra.setdefault(key, []).append(float(value))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{log.smoothed()[-1]:.3f}")
    model.eval()
    log.seconds = time.perf_counter() - start
    return log
