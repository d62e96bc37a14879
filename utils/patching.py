"""Activation patching on the indirect-object (IOI) task: data, metrics, patching tools.

Reference implementations for chapter 4 (the chapter has you write most of them yourself),
and the recipe of the model it studies, ``ioi_2l`` (see ``train_ioi_model``).

The task (Wang et al. 2022, "Interpretability in the Wild"): in
``When Mary and John went to the shop , John gave a book to`` the next word is ``Mary``, the
indirect object (IO), not ``John``, the subject (S) that is mentioned twice. The metric is the
logit difference ``logit(IO) - logit(S)`` at the last position.

Corruption by *symmetric token replacement* (Zhang & Nanda 2024): replace the second mention
of S by IO. ``When Mary and John went to the shop , Mary gave a book to`` has the same length,
the same names and the same template, but now John is the answer, so the corrupted logit
difference (still IO minus S of the *clean* prompt) is about minus the clean one. Everything
that differs between the two runs is caused by one token, so whatever restores the clean
behaviour when patched in carries the information of *which name was repeated*.

Conventions (Heimersheim & Nanda 2024, "How to use and interpret activation patching"):

* **denoising** runs the *corrupted* prompt and patches in *clean* activations: a component
  that restores the behaviour is *sufficient* (given the rest of the corrupted run);
* **noising** runs the *clean* prompt and patches in *corrupted* activations: a component
  whose corruption destroys the behaviour is *necessary*.

All patching functions take a ``metric(logits) -> scalar tensor`` and return the metric of
every patched run; with ``normalised_metric`` the numbers read 0 = corrupted, 1 = clean.
Prompts of one batch must share a template (all positions aligned).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import einops
import torch
from torch import Tensor

from .corpus import IOI_TEMPLATES, NAMES, LanguageGenerator, Tokenizer, ioi_prompts
from .transformer import Config, Transformer

Metric = Callable[[Tensor], Tensor]
Head = tuple[int, int]

# ---- Held-out splits ------------------------------------------------------------------------
# Name pairs: an IOI sentence whose two names form a held-out pair never occurs in training
# (stories containing one are skipped), although every name occurs in many other pairs. The
# held-out pairs are scattered (i + j divisible by 5, for names NAMES[i] and NAMES[j]) so that
# no simple rule ("names from the same half") separates them from the training pairs.
def is_heldout_pair(a: str, b: str) -> bool:
    return (NAMES.index(a) + NAMES.index(b)) % 5 == 0


# Templates: template 8 ("As A and B walked to the PLACE , S handed the OBJ to") is never
# trained on. It is the only template whose verb also occurs in another one (template 1): every
# other template has a transfer verb of its own, which a model that never saw it could not read.
# (Its opener "As" is still new to the model.)
HELDOUT_TEMPLATES: list[int] = [8]
TRAIN_TEMPLATES: list[int] = [t for t in range(len(IOI_TEMPLATES)) if t not in HELDOUT_TEMPLATES]


# ---- Clean and corrupted prompts ------------------------------------------------------------
@dataclass
class IOIBatch:
    """Prompts of one template with their symmetric corruptions.

    ``clean``/``corrupt``: [batch, pos] token ids (``<bos>`` first); ``io``/``s``: [batch] ids
    of the indirect object and the subject of the *clean* prompt; ``pos``: the position of
    each role ("IO", "S1", "S2", "END"; IO and S1 swap places between ABBA and BABA prompts,
    so those two are [batch] tensors, S2 and END are ints); ``labels``: one word per position.
    """

    clean: Tensor
    corrupt: Tensor
    io: Tensor
    s: Tensor
    pos: dict
    labels: list[str]
    prompts: list[dict]

    def __len__(self) -> int:
        return self.clean.shape[0]


def symmetric_corruption(tokens: Tensor, io: Tensor, s: Tensor) -> Tensor:
    """Replace the *second* mention of the subject ``s`` in each prompt by the indirect object ``io``.

    [batch, pos], [batch], [batch] -> [batch, pos]. Exactly one token per prompt changes, so the
    clean and corrupted runs stay aligned position by position."""
    is_s = tokens == s[:, None]  # [batch, pos]
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    s2 = torch.where(is_s, positions, -1).max(-1).values  # the last mention of S
    out = tokens.clone()
    out[torch.arange(len(tokens), device=tokens.device), s2] = io
    return out


def ioi_batch(n: int, template: int, seed: int = 0, heldout_pairs: bool = True, third_name: bool = False) -> IOIBatch:
    """``n`` prompts of one IOI template (half ABBA, half BABA) and their corruptions.

    ``heldout_pairs``: only pairs of names that no training IOI sentence put together
    (``is_heldout_pair``). ``third_name``: the "ABC" reference distribution of Wang et al.
    instead: S2 is replaced by a third name, so no name is repeated and nothing tells IO from S
    (its mean activations are what mean-ablation uses).
    """
    tok = Tokenizer()
    rng = random.Random(seed)
    prompts = []
    i = 0
    while len(prompts) < n:
        # ioi_prompts alternates ABBA/BABA by index; draw one at a time with fresh seeds.
        p = ioi_prompts(1, seed=rng.randrange(2**31), templates=[template])[0]  # always ABBA
        if i % 2:  # every other prompt in BABA order
            p = _reorder(p)
        if heldout_pairs and not is_heldout_pair(p["io"], p["s"]):
            continue
        prompts.append(p)
        i += 1
    clean = torch.tensor([tok.encode(p["prompt"], bos=True) for p in prompts])
    io = torch.tensor([tok.stoi[p["io"]] for p in prompts])
    s = torch.tensor([tok.stoi[p["s"]] for p in prompts])
    slots = ["<bos>"] + IOI_TEMPLATES[template].split()
    labels, positions = [], {}
    for slot in slots:
        if slot == "{A_OBJECT}":
            labels += ["a/an", "OBJ"]
            continue
        name = {"{A}": "A", "{B}": "B", "{S}": "S2", "{PLACE}": "PLACE", "{OBJECT}": "OBJ"}.get(slot, slot)
        positions.setdefault(name, len(labels))
        labels.append(name)
    labels[-1] = "END (to)"
    s2, end = positions["S2"], len(labels) - 1
    is_abba = torch.tensor([p["order"] == "ABBA" for p in prompts])
    a, b = positions["A"], positions["B"]
    pos = {"IO": torch.where(is_abba, a, b), "S1": torch.where(is_abba, b, a), "S2": s2, "END": end}
    if third_name:
        others = [[nm for nm in NAMES if nm not in (p["io"], p["s"])] for p in prompts]
        corrupt = clean.clone()
        corrupt[:, s2] = torch.tensor([tok.stoi[rng.choice(o)] for o in others])
    else:
        corrupt = symmetric_corruption(clean, io, s)
    return IOIBatch(clean, corrupt, io, s, pos, labels, prompts)


def _reorder(p: dict) -> dict:
    """Swap the first two names of a prompt (ABBA <-> BABA); S2 stays the subject."""
    words = p["prompt"].split()
    i_io, i_s = words.index(p["io"]), words.index(p["s"])
    words[i_io], words[i_s] = p["s"], p["io"]
    return dict(p, prompt=" ".join(words), order="BABA" if p["order"] == "ABBA" else "ABBA")


# ---- Metrics --------------------------------------------------------------------------------
def logit_diff(logits: Tensor, io: Tensor, s: Tensor) -> Tensor:
    """logit(IO) - logit(S) at the last position: [batch, pos, d_vocab], [batch], [batch] -> [batch].

    (Equal to the difference of log-probabilities: the softmax's normaliser cancels.)"""
    last = logits[:, -1]  # [batch, d_vocab]
    io, s = io.to(last.device), s.to(last.device)
    return last.gather(-1, io[:, None])[:, 0] - last.gather(-1, s[:, None])[:, 0]


def normalised_metric(ld: Tensor | float, ld_clean: float, ld_corrupt: float) -> Tensor | float:
    """0 when the patched run behaves like the corrupted run, 1 when like the clean run."""
    return (ld - ld_corrupt) / (ld_clean - ld_corrupt)


def ld_metric(io: Tensor, s: Tensor) -> Metric:
    """Mean logit difference as a metric (logits -> scalar)."""
    return lambda logits: logit_diff(logits, io, s).mean()


def normalised_ld_metric(model: Transformer, batch: IOIBatch) -> Metric:
    """Mean logit difference rescaled so the corrupted run scores 0 and the clean run 1."""
    with torch.no_grad():
        ld_clean = logit_diff(model(batch.clean), batch.io, batch.s).mean().item()
        ld_corrupt = logit_diff(model(batch.corrupt), batch.io, batch.s).mean().item()
    return lambda logits: normalised_metric(logit_diff(logits, batch.io, batch.s).mean(), ld_clean, ld_corrupt)


# ---- Direct logit attribution and the last-name heuristic ------------------------------------
def head_dla(model: Transformer, tokens: Tensor, names: Tensor) -> Tensor:
    """[batch, n_layers, n_heads]: each head's *direct* contribution to the logit of ``names[b]``
    (one token id per prompt) at the last position.

    A head writes ``z_h W_O^h`` into the residual stream; the final LayerNorm is linear once its
    scale is fixed at the value of this run (centre, divide by ``ln_final.hook_scale``, multiply
    by the gain ``w``), and the unembedding is linear: so the head's share of the logit is that
    vector dotted with ``W_U[:, name]``. Biases (``b_O``, LayerNorm's ``b``, ``b_U``) belong to
    no head and are left out; so is everything a head does *through later heads*."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z") or n == "ln_final.hook_scale")
        scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
        direction = model.unembed.W_U[:, names.to(tokens.device)].T  # [batch, d_model]
        out = []
        for layer in range(model.cfg.n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # [batch, head, d_head]
            per_head = einops.einsum(z, model.blocks[layer].attn.W_O, "b h d, h d m -> b h m")
            per_head = (per_head - per_head.mean(-1, keepdim=True)) / scale[:, None] * model.ln_final.w
            out.append(einops.einsum(per_head, direction, "b h m, b m -> b h"))
    return torch.stack(out, dim=1)


def last_name_heuristic(tokens: Tensor, names: Tensor) -> Tensor:
    """[batch, pos], [n_names] -> [batch]: the answer of the rule "suppress the last-mentioned
    name": the most recently mentioned name that differs from the last-mentioned one (-1 where
    a prompt mentions fewer than two different names).

    On every IOI template the last-mentioned name is S2, so the rule answers IO; it parts from
    the IOI answer as soon as another name follows S2."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    rows = torch.arange(len(tokens), device=tokens.device)
    is_name = torch.isin(tokens, names.to(tokens.device))
    last = tokens[rows, torch.where(is_name, positions, -1).max(-1).values.clamp(min=0)]
    other = is_name & (tokens != last[:, None])
    before = torch.where(other, positions, -1).max(-1).values
    return torch.where(before >= 0, tokens[rows, before.clamp(min=0)], -1)


def add_third_name(batch: IOIBatch, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts on which "suppress the last-mentioned name" and the IOI answer part: ``and C``
    inserted after S2, with C a third name ("..., Ben and Ruth handed the key to" -> Laura).
    Returns (tokens [batch, pos + 2], c [batch]). The answer is still IO (the one name that
    neither gives nor is repeated); the last-mentioned name is now C, and the most recent name
    before it is S."""
    tok = Tokenizer()
    rng = random.Random(seed)
    s2 = batch.pos["S2"]
    c = torch.tensor([tok.stoi[rng.choice([nm for nm in NAMES if nm not in (p["io"], p["s"])])] for p in batch.prompts])
    middle = torch.stack([torch.full_like(c, tok.stoi["and"]), c], dim=1)
    return torch.cat([batch.clean[:, : s2 + 1], middle, batch.clean[:, s2 + 1 :]], dim=1), c


# ---- Activation patching --------------------------------------------------------------------
def _results(model: Transformer, *shape: int) -> Tensor:
    """A table for metric values, on the model's device and in its dtype (GPU, float64, meta)."""
    return torch.zeros(shape, device=model.device, dtype=model.embed.W_E.dtype)


def _runs(model: Transformer, clean: Tensor, corrupt: Tensor, direction: str, names) -> tuple[Tensor, dict]:
    """(tokens to run, activations to patch in) for ``direction``."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    _, cache = model.run_with_cache(source, names_filter=names)
    return target, cache


def patch_activation(model: Transformer, target: Tensor, source_cache, metric: Metric, hook_name: str,
                     index: tuple) -> Tensor:
    """The metric of a run on ``target`` in which the activation ``hook_name`` has its entries
    ``[index]`` replaced by ``source_cache[hook_name][index]`` (the rest stays as computed).

    ``index`` indexes the whole activation, batch axis included: ``(slice(None), pos)`` is one
    position of every prompt, ``(slice(None), slice(None), head)`` one head of ``hook_z``. Every
    patching loop of this module is this call inside loops over names and indices."""
    def hook(act, hook):
        act = act.clone()  # never write into the activation the model computed
        act[index] = source_cache[hook.name][index]
        return act

    with torch.no_grad():
        return metric(model.run_with_hooks(target, fwd_hooks=[(hook_name, hook)]))


@torch.no_grad()
def patch_residual(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, direction: str = "denoise") -> Tensor:
    """[n_layers, pos]: the metric after patching ``blocks.{layer}.hook_resid_pre`` at one position.

    Denoising (default): run ``corrupt``, patch in ``clean``'s residual stream. Noising: the
    other way round."""
    names = lambda n: n.endswith("hook_resid_pre")  # noqa: E731
    target, cache = _runs(model, clean, corrupt, direction, names)
    out = _results(model, model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = patch_activation(model, target, cache, metric, f"blocks.{layer}.hook_resid_pre", (slice(None), pos))
    return out


def block_names(model: Transformer) -> list[str]:
    """The block outputs ``patch_block_outputs`` patches: attention, then MLP if the model has one."""
    return ["attn_out"] if model.cfg.attn_only else ["attn_out", "mlp_out"]


@torch.no_grad()
def patch_block_outputs(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, direction: str = "denoise") -> Tensor:
    """[component, n_layers, pos]: patch ``blocks.{layer}.hook_{attn_out|mlp_out}`` at one position.

    Components are ``block_names(model)``: attention output, then (unless attention-only) MLP output."""
    comps = block_names(model)
    target, cache = _runs(model, clean, corrupt, direction, lambda n: n.split(".")[-1] in {f"hook_{c}" for c in comps})
    out = _results(model, len(comps), model.cfg.n_layers, clean.shape[1])
    for c, comp in enumerate(comps):
        for layer in range(model.cfg.n_layers):
            for pos in range(clean.shape[1]):
                out[c, layer, pos] = patch_activation(model, target, cache, metric, f"blocks.{layer}.hook_{comp}", (slice(None), pos))
    return out


@torch.no_grad()
def patch_head_outputs(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, direction: str = "denoise") -> Tensor:
    """[n_layers, n_heads]: patch one head's output ``z`` (``blocks.{l}.attn.hook_z``) at every position.

    ``direction="denoise"``: run corrupt, patch in clean (is this head enough to restore the
    behaviour?). ``"noise"``: run clean, patch in corrupt (does corrupting it break the behaviour?)."""
    target, cache = _runs(model, clean, corrupt, direction, lambda n: n.endswith("hook_z"))
    out = _results(model, model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            def hook(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = cache[hook.name][:, :, head]
                return z

            out[layer, head] = metric(model.run_with_hooks(target, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]))
    return out


@torch.no_grad()
def patch_head_positions(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, direction: str = "denoise") -> Tensor:
    """[n_layers, n_heads, pos]: patch one head's output at one position."""
    target, cache = _runs(model, clean, corrupt, direction, lambda n: n.endswith("hook_z"))
    out = _results(model, model.cfg.n_layers, model.cfg.n_heads, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            for pos in range(clean.shape[1]):
                def hook(z, hook, head=head, pos=pos):
                    z = z.clone()
                    z[:, pos, head] = cache[hook.name][:, pos, head]
                    return z

                out[layer, head, pos] = metric(model.run_with_hooks(target, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]))
    return out


@torch.no_grad()
def patch_head_patterns(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, direction: str = "denoise") -> Tensor:
    """[n_layers, n_heads]: patch one head's attention pattern (``hook_pattern``), keeping its values.

    Tells *where a head looks* apart from *what it moves*: a head whose pattern alone restores
    the behaviour finds the right position in the clean run, and its values are the same in
    both runs (or do not matter)."""
    target, cache = _runs(model, clean, corrupt, direction, lambda n: n.endswith("hook_pattern"))
    out = _results(model, model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            def hook(pattern, hook, head=head):
                pattern = pattern.clone()
                pattern[:, head] = cache[hook.name][:, head]
                return pattern

            out[layer, head] = metric(model.run_with_hooks(target, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", hook)]))
    return out


# ---- Path patching --------------------------------------------------------------------------
def path_patch(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, senders: Sequence[Head],
               receivers: Sequence[Head] | None = None, receiver_input: str = "q") -> float | Tensor:
    """The metric when clean activations reach only along the paths sender heads -> receiver heads.

    Denoising, in two runs of the corrupted prompt (after Wang et al. 2022):

    1. patch the senders' outputs (``hook_z``) with their clean values and *freeze every other
       head* at its corrupted value, so the change can only travel directly from the senders
       through the residual stream (and the MLPs), not through other heads; record the
       receivers' ``receiver_input`` (``"q"``, ``"k"`` or ``"v"``);
    2. run the corrupted prompt again, patching only those receiver inputs; return the metric.

    With ``receivers=None`` the path ends at the logits: the metric of run 1 itself (the
    senders' direct effect).
    """
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    senders = {tuple(h) for h in senders}
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=lambda n: n.endswith("hook_z"))

    def patch_senders_freeze_rest(z, hook):
        # Every head frozen at its corrupted output, except the senders: their clean output.
        layer = int(hook.name.split(".")[1])
        heads = [h for l, h in senders if l == layer]
        patched = corrupt_cache[hook.name].clone()
        if heads:
            patched[:, :, heads] = clean_cache[hook.name][:, :, heads]
        return patched

    freeze = [(lambda n: n.endswith("hook_z"), patch_senders_freeze_rest)]
    if receivers is None:
        with torch.no_grad():
            return metric(model.run_with_hooks(corrupt, fwd_hooks=freeze))
    receivers = [tuple(h) for h in receivers]
    names = {f"blocks.{l}.attn.hook_{receiver_input}" for l, _ in receivers}
    with torch.no_grad():
        store: dict[str, Tensor] = {}

        def save(act, hook):
            store[hook.name] = act.clone()

        model.run_with_hooks(corrupt, fwd_hooks=freeze + [(n, save) for n in names])

        def patch_receivers(act, hook):
            layer = int(hook.name.split(".")[1])
            act = act.clone()
            for l, h in receivers:
                if l == layer:
                    act[:, :, h] = store[hook.name][:, :, h]
            return act

        return metric(model.run_with_hooks(corrupt, fwd_hooks=[(n, patch_receivers) for n in names]))


# ---- Attribution patching -------------------------------------------------------------------
def attribution_patch(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric) -> Tensor:
    """[n_layers, n_heads]: a first-order estimate of ``patch_head_outputs`` (denoising) from one
    forward and one backward pass (Nanda, "Attribution patching", 2023).

    metric(z_corrupt + dz) ≈ metric(z_corrupt) + dz · ∂metric/∂z, with dz = z_clean - z_corrupt
    and the gradient taken *at the corrupted run*, summed over positions and d_head per head.
    The estimate is of the *change*; add metric(corrupt) to compare with patched values.
    """
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    acts: dict[str, Tensor] = {}

    def keep(z, hook):
        z.retain_grad()
        acts[hook.name] = z

    with torch.enable_grad():
        value = metric(model.run_with_hooks(corrupt, fwd_hooks=[(lambda n: n.endswith("hook_z"), keep)]))
        value.backward()
    out = []
    for layer in range(model.cfg.n_layers):
        z = acts[f"blocks.{layer}.attn.hook_z"]
        dz = clean_cache[f"blocks.{layer}.attn.hook_z"] - z.detach()
        out.append(einops.einsum(dz, z.grad, "b p h d, b p h d -> h"))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def integrated_attribution(model: Transformer, clean: Tensor, corrupt: Tensor, metric: Metric, steps: int = 4) -> Tensor:
    """[n_layers, n_heads]: attribution patching with the gradient averaged along the way
    (integrated gradients, Sundararajan et al. 2017; Marks et al. 2024 use it for circuits).

    For each head alone, move its output along the straight line ``z_corrupt + α Δz`` (every
    other activation computed as usual) and average ∂metric/∂z at the midpoints
    ``α = (k + ½) / steps``, k = 0 … steps - 1; return ``Δz · mean gradient``. Since
    d metric / dα = Δz · ∂metric/∂z, the exact integral is the real patch's change,
    ``patch_head_outputs - metric(corrupt)``, and the midpoint sum converges to it as ``steps``
    grows; ``attribution_patch`` is the one-point estimate at α = 0. Costs
    ``n_layers * n_heads * steps`` forward and backward passes."""
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=lambda n: n.endswith("hook_z"))
    out = _results(model, model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.cfg.n_heads):
            z0, dz = corrupt_cache[name][:, :, head], clean_cache[name][:, :, head] - corrupt_cache[name][:, :, head]
            total = torch.zeros_like(dz)
            for k in range(steps):
                x = (z0 + (k + 0.5) / steps * dz).requires_grad_(True)

                def hook(z, hook, x=x, head=head):
                    z = z.clone()
                    z[:, :, head] = x
                    return z

                with torch.enable_grad():
                    metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])).backward()
                total += x.grad
            out[layer, head] = (dz * total / steps).sum()
    model.zero_grad(set_to_none=True)
    return out


# ---- Circuits -------------------------------------------------------------------------------
def mean_head_outputs(model: Transformer, reference: Tensor) -> dict[str, Tensor]:
    """Mean ``hook_z`` of every layer over a reference batch: {name: [pos, head, d_head]}."""
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=lambda n: n.endswith("hook_z"))
    return {name: z.mean(0) for name, z in cache.items()}


def circuit_logit_diff(model: Transformer, tokens: Tensor, io: Tensor, s: Tensor, circuit: Sequence[Head],
                       reference: Tensor) -> float:
    """Mean logit difference when every head *not* in ``circuit`` is mean-ablated (its output
    replaced at each position by its mean over ``reference``, a batch of the same template)."""
    means = mean_head_outputs(model, reference)
    keep = {tuple(h) for h in circuit}

    def ablate(z, hook):
        layer = int(hook.name.split(".")[1])
        mask = torch.tensor([(layer, h) in keep for h in range(z.shape[2])], device=z.device)[None, None, :, None]
        return torch.where(mask, z, means[hook.name][None])

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), ablate)])
    return logit_diff(logits, io, s).mean().item()


def circuit_faithfulness(model: Transformer, tokens: Tensor, io: Tensor, s: Tensor, circuit: Sequence[Head],
                         reference: Tensor) -> float:
    """LD(circuit alone) / LD(full model): the fraction of the logit difference the circuit keeps
    when every other head is mean-ablated over ``reference`` (Wang et al. report 87 % for their
    26-head circuit in GPT-2 small)."""
    with torch.no_grad():
        full = logit_diff(model(tokens), io, s).mean().item()
    return circuit_logit_diff(model, tokens, io, s, circuit, reference) / full


# ---- The model ------------------------------------------------------------------------------
def ioi_config(n_layers: int = 2, n_heads: int = 4, attn_only: bool = True, d_model: int = 64) -> Config:
    d_vocab = len(Tokenizer())
    return Config(d_vocab=d_vocab, n_ctx=32, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                  d_mlp=0 if attn_only else 4 * d_model,
                  n_layers=n_layers, attn_only=attn_only, normalization="LN")


def ioi_training_data(n_tokens: int = 800_000, seq_len: int = 32, seed: int = 0, ioi_fraction: float = 1.0) -> Tensor:
    """Course-language stories cut into rows of ``seq_len`` tokens (each starting with ``<bos>``),
    as ``corpus.token_dataset`` does, with IOI sentences of the training templates only and
    without any story that has an IOI sentence on a held-out name pair."""
    tok = Tokenizer()
    gen = LanguageGenerator(seed, ioi_fraction=ioi_fraction, ioi_templates=TRAIN_TEMPLATES)
    n_rows = n_tokens // seq_len
    stream: list[int] = []
    while len(stream) < n_rows * seq_len:
        story = gen._story_raw()
        pairs = [[w for w, role in sentence if role in ("IO", "S1")] for sentence in story]
        if any(len(p) == 2 and is_heldout_pair(*p) for p in pairs):
            continue
        stream += [tok.bos_id] + [tok.stoi[w] for sentence in story for w, _ in sentence]
    rows = [stream[i * seq_len : (i + 1) * seq_len] for i in range(n_rows)]
    for row in rows:
        row[0] = tok.bos_id  # a row may start mid-story: it still starts with <bos>
    return torch.tensor(rows)


@torch.no_grad()
def evaluate_ioi(model: Transformer, templates: Sequence[int] = HELDOUT_TEMPLATES, n: int = 200, seed: int = 1,
                 heldout_pairs: bool = True) -> dict[str, float]:
    """Accuracy (is IO's logit above S's?) and mean logit difference, clean and corrupted, on
    ``n`` prompts per template. Also top-1: is IO the model's single most likely next word?"""
    lds, lds_corrupt, top1 = [], [], []
    for t in templates:
        b = ioi_batch(n, t, seed=seed + 1000 * t, heldout_pairs=heldout_pairs)
        logits = model(b.clean)
        lds.append(logit_diff(logits, b.io, b.s))
        lds_corrupt.append(logit_diff(model(b.corrupt), b.io, b.s))
        top1.append((logits[:, -1].argmax(-1) == b.io.to(logits.device)).float())
    ld, ldc, top1 = torch.cat(lds), torch.cat(lds_corrupt), torch.cat(top1)
    return {"accuracy": (ld > 0).float().mean().item(), "top1_accuracy": top1.mean().item(),
            "logit_diff": ld.mean().item(), "logit_diff_corrupt": ldc.mean().item()}


def train_ioi_model(steps: int = 3000, seed: int = 0, n_layers: int = 2, n_heads: int = 4, attn_only: bool = True,
                    d_model: int = 64,
                    batch_size: int = 64, lr: float = 3e-3, ioi_fraction: float = 1.0, progress: bool = True,
                    desc: str = "ioi_2l") -> tuple[Transformer, dict]:
    """Train the chapter's model on the course language; returns (model, measurements)."""
    from .training import train

    cfg = ioi_config(n_layers, n_heads, attn_only, d_model)
    data = ioi_training_data(seq_len=cfg.n_ctx, seed=seed, ioi_fraction=ioi_fraction)
    model = Transformer(cfg, seed=seed)
    # One thread: faster for a model this small (and far faster on a busy machine), and the
    # result no longer depends on the machine's thread count (the shipped checkpoint is
    # reproduced bit for bit by ``python -m utils.zoo train ioi_2l``).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = train(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress, desc=desc)
    finally:
        torch.set_num_threads(threads)
    info = {"train_seconds": round(log.seconds, 1), "final_loss": round(sum(log.losses[-50:]) / 50, 4)}
    return model, info
