"""Judges shared by exercises that are not a plain "equal to the reference" comparison."""

from __future__ import annotations

import math

import torch

from utils.checks.core import Exercise, describe_difference, fail


def frequencies(samples: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(samples.flatten().long().clamp(0, n - 1), minlength=n).double() / samples.numel()


def distribution_problem(samples, probs: torch.Tensor, sigmas: float = 5.0, noisy_probs: bool = False) -> str | None:
    """Why ``samples`` look unlike draws from ``probs`` (None if they look fine)."""
    n_tokens = probs.numel()
    if not isinstance(samples, torch.Tensor):
        return f"your sampler should return a tensor of token ids, got {type(samples).__name__}"
    if samples.is_floating_point():
        return f"your sampler returned dtype {samples.dtype}; it should return integer token ids (torch.long)"
    if samples.numel() and (samples.min() < 0 or samples.max() >= n_tokens):
        return f"your sampler returned ids outside 0..{n_tokens - 1} (min {int(samples.min())}, max {int(samples.max())})"
    n = samples.numel()
    freq = frequencies(samples, n_tokens)
    variance = probs * (1 - probs) / n * (2 if noisy_probs else 1)
    if not noisy_probs:  # first the clearest failure: a token that must never appear
        for tok in ((probs == 0) & (freq > 0)).nonzero().flatten().tolist():
            return (
                f"token {tok} should never be sampled (probability 0 after filtering), "
                f"but your sampler picked it {round(float(freq[tok]) * n)} times out of {n}"
            )
    for tok in torch.argsort(probs, descending=True).tolist():
        p, f = float(probs[tok]), float(freq[tok])
        allowed = sigmas * math.sqrt(float(variance[tok])) + 2e-3
        if abs(f - p) > allowed:
            return (
                f"token {tok} was sampled {f:.1%} of the time over {n} draws; expected {p:.1%} "
                f"(±{allowed:.1%})"
            )
    return None


def judge_distribution(exercise: Exercise, outputs, references, mistakes) -> None:
    """Outputs hold ``samples`` (token ids drawn from the same logits); references hold the exact
    ``probs`` those samples should follow. Mistakes are recognised by their empirical frequencies."""
    for i, (case, got, want) in enumerate(zip(exercise.cases, outputs, references)):
        shape_problem = describe_difference("your output", got["samples"], want["samples"], 0, 0) if isinstance(got.get("samples"), torch.Tensor) and got["samples"].shape != want["samples"].shape else None
        problem = shape_problem or distribution_problem(got.get("samples"), want["probs"])
        if problem is None:
            continue
        hint = None
        if shape_problem is None and isinstance(got.get("samples"), torch.Tensor):
            for m in exercise.mistakes:
                if m.name in mistakes:
                    m_freq = frequencies(mistakes[m.name][i]["samples"], want["probs"].numel())
                    if distribution_problem(got["samples"], m_freq, noisy_probs=True) is None:
                        hint = m
                        break
        fail(exercise, case, problem, hint)
