"""CPU cost of one full-batch training step of the grokking model: the toolkit's Transformer
against a minimal hand-written model of the same architecture and size.

    .venv/bin/python benchmarks/grokking_step.py [--p 59] [--steps 40]

Prints a Markdown table of CPU-seconds per step (process time: stable on a shared machine, unlike
wall time) with one thread, and where the toolkit's time goes (torch.profiler, top operators).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from utils.grokking import answer_logits, modular_addition, new_model


class Minimal(nn.Module):
    """One attention layer (4 heads) and one ReLU MLP, no LayerNorm, no hooks: the floor."""

    def __init__(self, p: int, d: int = 128, heads: int = 4, d_mlp: int = 512):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        r = lambda *s: nn.Parameter(torch.randn(*s, generator=g) / math.sqrt(s[-2] if len(s) > 1 else 1))  # noqa: E731
        self.W_E, self.W_pos, self.W_U = r(p + 1, d), r(3, d), r(d, p + 1)
        self.W_QKV, self.W_O = r(d, 3 * d), r(d, d)
        self.W_in, self.W_out = r(d, d_mlp), r(d_mlp, d)
        self.heads = heads

    def forward(self, tokens):
        x = self.W_E[tokens] + self.W_pos
        b, n, d = x.shape
        q, k, v = (x @ self.W_QKV).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d) @ self.W_O
        x = x + F.relu(x @ self.W_in) @ self.W_out
        return x @ self.W_U


def cpu_per_step(model: nn.Module, data, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    x, y = data.tokens[data.train], data.labels[data.train]

    def step():
        loss = F.cross_entropy(answer_logits(model, x, data.p), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (first optimizer step imports torch._dynamo)
        step()
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--p", type=int, default=59)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = modular_addition(args.p, frac_train=0.5, seed=0)
    toolkit = cpu_per_step(new_model(args.p), data, args.steps)
    minimal = cpu_per_step(Minimal(args.p), data, args.steps)
    print(f"\nOne full-batch step, p = {args.p} ({len(data.train)} training pairs), 1 thread:\n")
    print("| model | CPU s / step | relative |\n|---|---:|---:|")
    print(f"| toolkit Transformer | {toolkit:.4f} | {toolkit / minimal:.1f} × |")
    print(f"| minimal hand-written | {minimal:.4f} | 1.0 × |")
    from torch.profiler import ProfilerActivity, profile

    model = new_model(args.p)
    x, y = data.tokens[data.train], data.labels[data.train]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            loss = F.cross_entropy(answer_logits(model, x, data.p), y)
            loss.backward()
    print("\nWhere the toolkit's forward and backward spend their time (5 steps):\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
