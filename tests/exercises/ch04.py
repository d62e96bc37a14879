"""Chapter 4 exercises: activation patching.

Checks run on small random transformers built from the case's seed (so a hidden case with
another seed gets another model and other prompts), with a symmetric corruption: one token per
prompt differs between the clean and the corrupted run, as in the chapter's IOI prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from utils import patching as ref
from utils.checks import Exercise, LearnerError, Mistake
from utils.transformer import Config, Transformer

VOCAB = 24
N_NAMES = 8  # token ids 0..7 play the names; the rest are "other words"


def _model(ctx, n_layers=2, n_heads=3, attn_only=False) -> Transformer:
    cfg = Config(d_vocab=VOCAB, n_ctx=16, d_model=24, n_heads=n_heads, d_head=8, d_mlp=48, n_layers=n_layers,
                 attn_only=attn_only, init_range=0.4)
    return Transformer(cfg, seed=int(torch.randint(0, 2**31, (1,), generator=ctx.gen))).eval()


def _prompts(ctx, batch, pos, s2_back=3):
    """Random prompts with a repeated 'subject' S (at two positions) and an IO name once; the
    corrupted prompt has IO at S's second position, ``s2_back`` tokens before the end (cases
    vary it, so code that hard-codes S2's position fails). Returns clean, corrupt, io, s, s2_pos."""
    tokens = ctx.randint(VOCAB - N_NAMES, batch, pos) + N_NAMES
    perm = torch.stack([torch.randperm(N_NAMES, generator=ctx.gen)[:2] for _ in range(batch)])
    io, s = perm[:, 0], perm[:, 1]
    s2 = pos - s2_back
    # two distinct early positions, drawn for each prompt: code that assumes the names sit at the
    # same place in every prompt (or mirrors an index) fails
    first = torch.stack([torch.randperm(s2 - 1, generator=ctx.gen)[:2] + 1 for _ in range(batch)])
    rows = torch.arange(batch)
    tokens[rows, first[:, 0]] = io
    tokens[rows, first[:, 1]] = s
    tokens[rows, s2] = s
    corrupt = tokens.clone()
    corrupt[:, s2] = io
    return tokens, corrupt, io, s, s2


def _setup(ctx):
    c = ctx.case
    model = _model(ctx, c.get("layers", 2), c.get("heads", 3), c.get("attn_only", False))
    clean, corrupt, io, s, _ = _prompts(ctx, c["batch"], c["pos"], c.get("s2_back", 3))
    return model, clean, corrupt, ref.ld_metric(io, s)


def _as_tensor(value, what: str) -> Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise LearnerError(f"{what} should be a tensor (or a number), got {type(value).__name__}")
    return value.detach().reshape(()) if value.numel() == 1 else value.detach()


# ---- 1. symmetric corruption ----------------------------------------------------------------
def run_corruption(impl, ctx):
    c = ctx.case
    clean, _, io, s, _ = _prompts(ctx, c["batch"], c["pos"], c["s2_back"])
    return {"corrupted tokens": ctx.call(impl, clean, io, s)}


def corrupt_every_s(tokens, io, s):
    return torch.where(tokens == s[:, None], io[:, None], tokens)


def corrupt_first_s(tokens, io, s):
    out = tokens.clone()
    first = (tokens == s[:, None]).int().argmax(-1)
    out[torch.arange(len(tokens)), first] = io
    return out


def corrupt_swap_names(tokens, io, s):
    out = torch.where(tokens == s[:, None], io[:, None], tokens)
    return torch.where(tokens == io[:, None], s[:, None], out)


def corrupt_fixed_position(tokens, io, s):
    out = tokens.clone()
    out[:, -3] = io  # where S2 sits in the chapter's template
    return out


# ---- 2. logit difference --------------------------------------------------------------------
def run_logit_diff(impl, ctx):
    c = ctx.case
    logits = ctx.randn(c["batch"], c["pos"], c["vocab"], scale=2.0)
    perm = torch.stack([torch.randperm(c["vocab"], generator=ctx.gen)[:2] for _ in range(c["batch"])])
    return {"logit_diff": ctx.call(impl, logits, perm[:, 0], perm[:, 1])}


def ld_sign(logits, io, s):
    return ref.logit_diff(logits, s, io)


def ld_all_positions(logits, io, s):
    rows = torch.arange(len(io))
    return (logits[rows, :, io] - logits[rows, :, s]).mean(-1)


def ld_probs(logits, io, s):
    return ref.logit_diff(logits.softmax(-1), io, s)


def ld_every_pair(logits, io, s):
    return logits[:, -1, io] - logits[:, -1, s]  # [batch, batch]: every prompt's logits at every prompt's names


def ld_averaged(logits, io, s):
    return ref.logit_diff(logits, io, s).mean()


# ---- 3. normalised metric -------------------------------------------------------------------
def run_normalised(impl, ctx):
    c = ctx.case
    ld_clean, ld_corrupt = c["clean"], c["corrupt"]
    ld = ld_corrupt + (ld_clean - ld_corrupt) * (ctx.randn(c["n"]) * 0.6 + 0.5)
    return {"normalised": ctx.call(impl, ld, ld_clean, ld_corrupt)}


def norm_by_clean(ld, ld_clean, ld_corrupt):
    return ld / ld_clean


def norm_flipped(ld, ld_clean, ld_corrupt):
    return (ld - ld_clean) / (ld_corrupt - ld_clean)


def norm_abs_denominator(ld, ld_clean, ld_corrupt):
    return (ld - ld_corrupt) / abs(ld_clean - ld_corrupt)


def norm_clean_denominator(ld, ld_clean, ld_corrupt):
    return (ld - ld_corrupt) / ld_clean


# ---- 4-8. activation patching ---------------------------------------------------------------
def run_patch(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    return {"patched metric": _as_tensor(ctx.call(impl, model, clean, corrupt, metric), "the result")}


def run_patch_directions(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    return {f"direction={d!r}": _as_tensor(ctx.call(impl, model, clean, corrupt, metric, direction=d), "the result")
            for d in ("denoise", "noise")}


def _patch(model, target, cache, metric, name, index) -> float:
    def hook(act, hook):
        act = act.clone()
        act[index] = cache[hook.name][index]
        return act

    return metric(model.run_with_hooks(target, fwd_hooks=[(name, hook)]))


@torch.no_grad()
def resid_all_positions(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        out[layer] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.hook_resid_pre", (slice(None),))
    return out


def resid_noising(model, clean, corrupt, metric):
    return ref.patch_residual(model, clean, corrupt, metric, direction="noise")


@torch.no_grad()
def resid_post(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.hook_resid_post", (slice(None), pos))
    return out


@torch.no_grad()
def blocks_all_positions(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    comps = ref.block_names(model)
    out = torch.zeros(len(comps), model.cfg.n_layers, clean.shape[1])
    for c, comp in enumerate(comps):
        for layer in range(model.cfg.n_layers):
            out[c, layer] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.hook_{comp}", (slice(None),))
    return out


def blocks_noising(model, clean, corrupt, metric):
    return ref.patch_block_outputs(model, clean, corrupt, metric, direction="noise")


@torch.no_grad()
def _blocks(model, clean, corrupt, metric, comps):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(len(comps), model.cfg.n_layers, clean.shape[1])
    for c, comp in enumerate(comps):
        for layer in range(model.cfg.n_layers):
            for pos in range(clean.shape[1]):
                out[c, layer, pos] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.hook_{comp}", (slice(None), pos))
    return out


def blocks_no_mlp(model, clean, corrupt, metric):
    return _blocks(model, clean, corrupt, metric, ["attn_out"])


def blocks_mlp_first(model, clean, corrupt, metric):
    return _blocks(model, clean, corrupt, metric, ["attn_out"] if model.cfg.attn_only else ["mlp_out", "attn_out"])


def heads_direction_ignored(model, clean, corrupt, metric, direction="denoise"):
    return ref.patch_head_outputs(model, clean, corrupt, metric)


def heads_directions_swapped(model, clean, corrupt, metric, direction="denoise"):
    return ref.patch_head_outputs(model, clean, corrupt, metric, direction="noise" if direction == "denoise" else "denoise")


@torch.no_grad()
def heads_whole_layer(model, clean, corrupt, metric, direction="denoise"):
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    _, cache = model.run_with_cache(source)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        out[layer] = _patch(model, target, cache, metric, f"blocks.{layer}.attn.hook_z", (slice(None),))
    return out


@torch.no_grad()
def head_pos_all_positions(model, clean, corrupt, metric):
    per_head = ref.patch_head_outputs(model, clean, corrupt, metric)
    return per_head[..., None].expand(-1, -1, clean.shape[1]).clone()


def head_pos_noising(model, clean, corrupt, metric):
    return ref.patch_head_positions(model, clean, corrupt, metric, direction="noise")


@torch.no_grad()
def head_pos_every_head(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, :, pos] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.attn.hook_z", (slice(None), pos))
    return out


@torch.no_grad()
def pattern_values(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            out[layer, head] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.attn.hook_v", (slice(None), slice(None), head))
    return out


@torch.no_grad()
def pattern_head_axis(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):  # axis 2 of the pattern is the query position, not the head
            out[layer, head] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.attn.hook_pattern", (slice(None), slice(None), head))
    return out


def pattern_noising(model, clean, corrupt, metric):
    return ref.patch_head_patterns(model, clean, corrupt, metric, direction="noise")


@torch.no_grad()
def pattern_whole_layer(model, clean, corrupt, metric):
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        out[layer] = _patch(model, corrupt, cache, metric, f"blocks.{layer}.attn.hook_pattern", (slice(None),))
    return out


# ---- 9. path patching -----------------------------------------------------------------------
def run_path_patch(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    c = ctx.case
    out = {}
    for i, (senders, receivers, inp) in enumerate(c["paths"]):
        value = _as_tensor(ctx.call(impl, model, clean, corrupt, metric, senders, receivers, inp), "path_patch's result")
        # One number per path, compared as a number: as a 1-element tensor every wrong value would
        # read as "the expected output times 1.01 everywhere: a scale factor?".
        out[f"path {i}: {senders} -> {receivers if receivers is not None else 'logits'} ({inp})"] = (
            float(value) if value.numel() == 1 else value)
    return out


@torch.no_grad()
def path_no_freeze(model, clean, corrupt, metric, senders, receivers=None, receiver_input="q"):
    _, clean_cache = model.run_with_cache(clean)

    def patch_senders(z, hook):
        layer = int(hook.name.split(".")[1])
        z = z.clone()
        for l, h in senders:
            if l == layer:
                z[:, :, h] = clean_cache[hook.name][:, :, h]
        return z

    hooks = [(lambda n: n.endswith("hook_z"), patch_senders)]
    if receivers is None:
        return metric(model.run_with_hooks(corrupt, fwd_hooks=hooks))
    names = {f"blocks.{l}.attn.hook_{receiver_input}" for l, _ in receivers}
    store = {}
    model.run_with_hooks(corrupt, fwd_hooks=hooks + [(n, lambda a, hook: store.__setitem__(hook.name, a.clone())) for n in names])

    def patch_receivers(act, hook):
        act = act.clone()
        for l, h in receivers:
            if f"blocks.{l}.attn.hook_{receiver_input}" == hook.name:
                act[:, :, h] = store[hook.name][:, :, h]
        return act

    return metric(model.run_with_hooks(corrupt, fwd_hooks=[(n, patch_receivers) for n in names]))


def path_one_run(model, clean, corrupt, metric, senders, receivers=None, receiver_input="q"):
    return ref.path_patch(model, clean, corrupt, metric, senders, None, receiver_input)


@torch.no_grad()
def path_receiver_outputs(model, clean, corrupt, metric, senders, receivers=None, receiver_input="q"):
    if receivers is None:
        return ref.path_patch(model, clean, corrupt, metric, senders, None)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupt_cache = model.run_with_cache(corrupt)

    def freeze(z, hook):
        layer = int(hook.name.split(".")[1])
        z = corrupt_cache[hook.name].clone()
        for l, h in senders:
            if l == layer:
                z[:, :, h] = clean_cache[hook.name][:, :, h]
        return z

    store = {}
    model.run_with_hooks(corrupt, fwd_hooks=[(lambda n: n.endswith("hook_z"), freeze)] +
                         [(f"blocks.{l}.attn.hook_z", lambda a, hook: store.__setitem__(hook.name, a.clone())) for l, _ in receivers])

    def patch(z, hook):
        z = z.clone()
        for l, h in receivers:
            if f"blocks.{l}.attn.hook_z" == hook.name:
                z[:, :, h] = store[hook.name][:, :, h]
        return z

    return metric(model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{l}.attn.hook_z", patch) for l, _ in receivers]))


@torch.no_grad()
def _path_variant(model, clean, corrupt, metric, senders, receivers, receiver_input, whole_layer=False, senders_again=False):
    if receivers is None:
        return ref.path_patch(model, clean, corrupt, metric, senders, None)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupt_cache = model.run_with_cache(corrupt)

    def with_senders(z, layer):
        for l, h in senders:
            if l == layer:
                z[:, :, h] = clean_cache[f"blocks.{layer}.attn.hook_z"][:, :, h]
        return z

    def freeze(z, hook):
        return with_senders(corrupt_cache[hook.name].clone(), int(hook.name.split(".")[1]))

    def senders_only(z, hook):
        return with_senders(z.clone(), int(hook.name.split(".")[1]))

    names = {f"blocks.{l}.attn.hook_{receiver_input}" for l, _ in receivers}
    store = {}
    model.run_with_hooks(corrupt, fwd_hooks=[(lambda n: n.endswith("hook_z"), freeze)] +
                         [(n, lambda a, hook: store.__setitem__(hook.name, a.clone())) for n in names])

    def patch(act, hook):
        if whole_layer:  # every head of the receiver's layer
            return store[hook.name]
        act = act.clone()
        for l, h in receivers:
            if f"blocks.{l}.attn.hook_{receiver_input}" == hook.name:
                act[:, :, h] = store[hook.name][:, :, h]
        return act

    hooks = [(n, patch) for n in names]
    if senders_again:
        hooks = [(lambda n: n.endswith("hook_z"), senders_only)] + hooks
    return metric(model.run_with_hooks(corrupt, fwd_hooks=hooks))


def path_whole_receiver_layer(model, clean, corrupt, metric, senders, receivers=None, receiver_input="q"):
    return _path_variant(model, clean, corrupt, metric, senders, receivers, receiver_input, whole_layer=True)


def path_senders_in_second_run(model, clean, corrupt, metric, senders, receivers=None, receiver_input="q"):
    return _path_variant(model, clean, corrupt, metric, senders, receivers, receiver_input, senders_again=True)


# ---- 10. attribution patching ---------------------------------------------------------------
def _z_and_grads(model, tokens, metric):
    acts = {}

    def keep(z, hook):
        z.retain_grad()
        acts[hook.name] = z

    with torch.enable_grad():
        metric(model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), keep)])).backward()
    model.zero_grad(set_to_none=True)
    return {k: (v.detach(), v.grad) for k, v in acts.items()}


def _attribution(model, clean, corrupt, metric, at, delta):
    at_run = _z_and_grads(model, clean if at == "clean" else corrupt, metric)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
    out = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        dz = delta(clean_cache[name], corrupt_cache[name])
        out.append((dz * at_run[name][1]).sum(dim=(0, 1, 3)))
    return torch.stack(out)


def attr_at_clean(model, clean, corrupt, metric):
    return _attribution(model, clean, corrupt, metric, "clean", lambda c, k: c - k)


def attr_no_difference(model, clean, corrupt, metric):
    return _attribution(model, clean, corrupt, metric, "corrupt", lambda c, k: c)


def attr_sign(model, clean, corrupt, metric):
    return _attribution(model, clean, corrupt, metric, "corrupt", lambda c, k: k - c)


def attr_abs(model, clean, corrupt, metric):
    return ref.attribution_patch(model, clean, corrupt, metric).abs()


def run_attribution(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    value = ctx.call(impl, model, clean, corrupt, metric)
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
        pass  # leftover parameter gradients do no harm to the result
    return {"attribution": _as_tensor(value, "the result")}


# ---- 11. circuit faithfulness ---------------------------------------------------------------
def run_faithfulness(impl, ctx):
    c = ctx.case
    model = _model(ctx, c.get("layers", 2), c.get("heads", 3), c.get("attn_only", False))
    clean, _, io, s, s2 = _prompts(ctx, c["batch"], c["pos"], c.get("s2_back", 3))
    reference = clean.clone()
    reference[:, s2] = ctx.randint(N_NAMES, c["batch"])  # a third name ("ABC")
    reference = reference[torch.randperm(c["batch"], generator=ctx.gen)]
    value = ctx.call(impl, model, clean, io, s, c["circuit"], reference)
    return {"faithfulness": float(value) if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1) else value}


def _ablated_ld(model, tokens, io, s, ablate_head, replacement):
    def hook(z, hook):
        layer = int(hook.name.split(".")[1])
        mask = torch.tensor([ablate_head(layer, h) for h in range(z.shape[2])])[None, None, :, None]
        return torch.where(mask, replacement(hook.name, z), z)

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), hook)])
        full = ref.logit_diff(model(tokens), io, s).mean().item()
    return ref.logit_diff(logits, io, s).mean().item() / full


def faith_zero(model, tokens, io, s, circuit, reference):
    keep = {tuple(h) for h in circuit}
    return _ablated_ld(model, tokens, io, s, lambda l, h: (l, h) not in keep, lambda name, z: torch.zeros_like(z))


def faith_inverted(model, tokens, io, s, circuit, reference):
    keep = {tuple(h) for h in circuit}
    means = ref.mean_head_outputs(model, reference)
    return _ablated_ld(model, tokens, io, s, lambda l, h: (l, h) in keep, lambda name, z: means[name][None].expand_as(z))


def faith_position_mean(model, tokens, io, s, circuit, reference):
    keep = {tuple(h) for h in circuit}
    means = ref.mean_head_outputs(model, reference)
    return _ablated_ld(model, tokens, io, s, lambda l, h: (l, h) not in keep,
                       lambda name, z: means[name].mean(0)[None, None].expand_as(z))


def faith_clean_means(model, tokens, io, s, circuit, reference):
    keep = {tuple(h) for h in circuit}
    means = ref.mean_head_outputs(model, tokens)
    return _ablated_ld(model, tokens, io, s, lambda l, h: (l, h) not in keep, lambda name, z: means[name][None].expand_as(z))


def faith_not_divided(model, tokens, io, s, circuit, reference):
    return ref.circuit_logit_diff(model, tokens, io, s, circuit, reference)


# ---- 12. direct logit attribution -----------------------------------------------------------
def run_head_dla(impl, ctx):
    model, clean, _, _ = _setup(ctx)
    with torch.no_grad():  # a gain that is not all ones, so forgetting it shows
        model.ln_final.w.mul_(1 + 0.5 * ctx.randn(model.cfg.d_model).abs())
    names = ctx.randint(N_NAMES, clean.shape[0])
    return {"direct logit attribution": _as_tensor(ctx.call(impl, model, clean, names), "the result")}


def _dla(model, tokens, names, centre=True, scale=True, gain=True, positions="last"):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        sc = cache["ln_final.hook_scale"]  # [batch, pos, 1]
        out = []
        for layer in range(model.cfg.n_layers):
            per = torch.einsum("bphd,hdm->bphm", cache[f"blocks.{layer}.attn.hook_z"], model.blocks[layer].attn.W_O)
            if centre:
                per = per - per.mean(-1, keepdim=True)
            if scale:
                per = per / sc[:, :, None]
            if gain:
                per = per * model.ln_final.w
            per = per @ model.unembed.W_U  # [batch, pos, head, d_vocab]
            per = per[torch.arange(len(names)), :, :, names]  # [batch, pos, head]
            out.append(per[:, -1] if positions == "last" else per.sum(1))
    return torch.stack(out, 1)


def dla_no_scale(model, tokens, names):
    return _dla(model, tokens, names, scale=False)


def dla_not_centred(model, tokens, names):
    return _dla(model, tokens, names, centre=False)


def dla_no_gain(model, tokens, names):
    return _dla(model, tokens, names, gain=False)


def dla_every_position(model, tokens, names):
    return _dla(model, tokens, names, positions="sum")


# ---- 13. the last-name heuristic ------------------------------------------------------------
def run_heuristic(impl, ctx):
    c = ctx.case
    batch, pos = c["batch"], c["pos"]
    tokens = ctx.randint(VOCAB - N_NAMES, batch, pos) + N_NAMES
    names = torch.randperm(N_NAMES, generator=ctx.gen)[: c["n_names"]]
    for row in range(batch):
        k = int(torch.randint(3, c["mentions"] + 1, (1,), generator=ctx.gen))
        where = torch.randperm(pos - 1, generator=ctx.gen)[:k] + 1
        pool = names[torch.randperm(len(names), generator=ctx.gen)[:3]]
        who = pool[torch.randint(0, len(pool), (k,), generator=ctx.gen)]
        who[:2] = pool[:2]  # at least two different names
        tokens[row, where] = who[torch.randperm(k, generator=ctx.gen)]
    return {"heuristic's answer": ctx.call(impl, tokens, names)}


def _mentions(tokens, names):
    keep = set(names.tolist())
    return [[t for t in row.tolist() if t in keep] for row in tokens]


def heur_last_name(tokens, names):
    return torch.tensor([m[-1] for m in _mentions(tokens, names)])


def heur_first_other(tokens, names):
    return torch.tensor([next(t for t in m if t != m[-1]) for m in _mentions(tokens, names)])


def heur_second_to_last(tokens, names):
    return torch.tensor([m[-2] for m in _mentions(tokens, names)])


def heur_four_back(tokens, names):
    return tokens[:, -4].clone()


# ---- 14. a generic patch --------------------------------------------------------------------
def run_patch_activation(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    out = {}
    for name, index in ctx.case["patches"]:
        idx = tuple(slice(None) if i is None else i for i in index)
        value = _as_tensor(ctx.call(impl, model, corrupt, cache, metric, name, idx), "the result")
        out[f"{name}{list(index)}"] = float(value) if value.numel() == 1 else value
    return out


def _patch_with(model, target, cache, metric, hook_name, write, names=None):
    def hook(act, hook):
        act = act.clone()
        write(act, cache[hook.name])
        return act

    with torch.no_grad():
        return metric(model.run_with_hooks(target, fwd_hooks=[(names or hook_name, hook)]))


def pa_whole(model, target, source_cache, metric, hook_name, index):
    return _patch_with(model, target, source_cache, metric, hook_name, lambda a, s: a.copy_(s))


def pa_every_layer(model, target, source_cache, metric, hook_name, index):
    suffix = hook_name.split(".", 2)[-1]

    def write(a, s):
        a[index] = s[index]

    return _patch_with(model, target, source_cache, metric, hook_name, write, names=lambda n: n.endswith(suffix))


def pa_broadcast(model, target, source_cache, metric, hook_name, index):
    def write(a, s):
        a[...] = s[index].unsqueeze(len([i for i in index if isinstance(i, slice)]))  # every position gets the patched slice

    return _patch_with(model, target, source_cache, metric, hook_name, write)


def pa_own_values(model, target, source_cache, metric, hook_name, index):
    with torch.no_grad():
        _, own = model.run_with_cache(target)
    return ref.patch_activation(model, target, own, metric, hook_name, index)


# ---- 15. integrated attribution -------------------------------------------------------------
def run_integrated(impl, ctx):
    model, clean, corrupt, metric = _setup(ctx)
    value = ctx.call(impl, model, clean, corrupt, metric, steps=ctx.case["steps"])
    return {"integrated attribution": _as_tensor(value, "the result")}


def _integrated(model, clean, corrupt, metric, alphas, reduce="mean", times="delta"):
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, kc = model.run_with_cache(corrupt)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.cfg.n_heads):
            z0, dz = kc[name][:, :, head], cc[name][:, :, head] - kc[name][:, :, head]
            grads = []
            for a in alphas:
                x = (z0 + a * dz).requires_grad_(True)

                def hook(z, hook, x=x, head=head):
                    z = z.clone()
                    z[:, :, head] = x
                    return z

                with torch.enable_grad():
                    metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])).backward()
                grads.append(x.grad)
            g = torch.stack(grads).sum(0) if reduce == "sum" else torch.stack(grads).mean(0)
            out[layer, head] = ((dz if times == "delta" else cc[name][:, :, head]) * g).sum()
    model.zero_grad(set_to_none=True)
    return out


def ig_endpoints(model, clean, corrupt, metric, steps=4):
    return _integrated(model, clean, corrupt, metric, torch.linspace(0, 1, steps).tolist())


def ig_summed(model, clean, corrupt, metric, steps=4):
    return _integrated(model, clean, corrupt, metric, [(k + 0.5) / steps for k in range(steps)], reduce="sum")


def ig_at_corrupt(model, clean, corrupt, metric, steps=4):
    return ref.attribution_patch(model, clean, corrupt, metric)


def ig_no_difference(model, clean, corrupt, metric, steps=4):
    return _integrated(model, clean, corrupt, metric, [(k + 0.5) / steps for k in range(steps)], times="clean")


# ---------------------------------------------------------------------------------------------
_SMALL = [dict(seed=401, batch=3, pos=8, describe="a random 2-layer model with MLPs (3 heads), 3 prompts of 8 tokens"),
          dict(seed=402, batch=2, pos=10, layers=3, heads=2, attn_only=True, s2_back=5,
               describe="a random 3-layer attention-only model (2 heads), 2 prompts of 10 tokens (S2 at position 5)")]
# Hidden tests only: a deeper model with more heads and longer prompts.
_SMALL_HIDDEN = [dict(seed=0, batch=4, pos=12, layers=3, heads=4, s2_back=4)]
_PATHS = [[([(0, 0)], [(1, 1)], "q"), ([(0, 1), (0, 2)], [(1, 0)], "v"), ([(0, 2)], None, "q")],
          [([(0, 0)], [(2, 1)], "q"), ([(0, 1)], [(2, 0), (2, 1)], "k"), ([(1, 0)], None, "q")]]

EXERCISES = [
    Exercise(
        name="symmetric_corruption", title="symmetric_corruption", reference=ref.symmetric_corruption, run=run_corruption,
        kind="function",
        cases=[dict(seed=411, batch=4, pos=9, s2_back=3, describe="4 prompts of 9 tokens, S twice (S2 at position 6), IO once"),
               dict(seed=412, batch=6, pos=14, s2_back=6, describe="6 prompts of 14 tokens, S twice (S2 at position 8), IO once")],
        hidden_cases=[dict(seed=0, batch=5, pos=17, s2_back=4)],
        mistakes=[
            Mistake("every S replaced", "replace only the *second* mention of S; changing both removes the repeated name altogether.", corrupt_every_s),
            Mistake("first S replaced", "you replaced the first mention of S (S1); the symmetric corruption replaces the second one (S2).", corrupt_first_s),
            Mistake("names swapped everywhere", "change exactly one token (S2 -> IO); swapping every IO and S changes three positions.", corrupt_swap_names),
            Mistake("fixed position", "you wrote IO at a fixed position (-3, where S2 sits in the chapter's template); find S2 in each prompt "
                    "instead: the last position where tokens == s[:, None].", corrupt_fixed_position),
        ],
        stuck="is_s = tokens == s[:, None]; the last True in each row is S2 (e.g. torch.where(is_s, arange, -1).max(-1)); clone, then set it to io.",
    ),
    Exercise(
        name="ioi_logit_diff", title="logit_diff", reference=ref.logit_diff, run=run_logit_diff, kind="function",
        cases=[dict(seed=421, batch=4, pos=6, vocab=11, describe="logits (4, 6, 11), io and s of shape (4,)"),
               dict(seed=422, batch=7, pos=3, vocab=20, describe="logits (7, 3, 20), io and s of shape (7,)")],
        hidden_cases=[dict(seed=0, batch=3, pos=11, vocab=33)],
        mistakes=[
            Mistake("sign", "the metric is logit(IO) - logit(S): positive when the model prefers the right name.", ld_sign),
            Mistake("every position", "use the last position only (logits[:, -1]): that is where the model predicts the name.", ld_all_positions),
            Mistake("probabilities", "take the difference of logits, not of softmax probabilities.", ld_probs),
            Mistake("every prompt's names", "logits[:, -1, io] picks every prompt's IO logit in every prompt ([batch, batch]); pair each "
                    "prompt with its own names: rows = torch.arange(len(io)); logits[rows, -1, io] - logits[rows, -1, s].", ld_every_pair),
            Mistake("averaged", "return one logit difference per prompt ([batch]); the metric that uses it takes the .mean() (as ioi_metric does).", ld_averaged),
        ],
        stuck="last = logits[:, -1]; last.gather(-1, io[:, None])[:, 0] - last.gather(-1, s[:, None])[:, 0].",
    ),
    Exercise(
        name="normalised_metric", title="normalised_metric", reference=ref.normalised_metric, run=run_normalised, kind="function",
        cases=[dict(seed=431, n=5, clean=3.2, corrupt=-2.9, describe="5 logit differences, clean 3.2, corrupted -2.9"),
               dict(seed=432, n=9, clean=0.4, corrupt=1.5, describe="9 logit differences, clean 0.4 *below* corrupted 1.5")],
        hidden_cases=[dict(seed=0, n=13, clean=2.5, corrupt=-1.0)],
        mistakes=[
            Mistake("divided by the clean value", "subtract the corrupted baseline first: (ld - ld_corrupt) / (ld_clean - ld_corrupt).", norm_by_clean),
            Mistake("flipped", "the corrupted run should score 0 and the clean run 1, not the other way round.", norm_flipped),
            Mistake("abs() in the denominator", "divide by ld_clean - ld_corrupt itself, without abs(): when the clean value is below the "
                    "corrupted one, the clean run must still score 1.", norm_abs_denominator),
            Mistake("divided by ld_clean", "the denominator is the distance between the baselines, ld_clean - ld_corrupt, not ld_clean.", norm_clean_denominator),
        ],
        stuck="(ld - ld_corrupt) / (ld_clean - ld_corrupt).",
    ),
    Exercise(
        name="patch_residual", title="patch_residual", reference=ref.patch_residual, run=run_patch, kind="function",
        cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("every position at once", "patch one position at a time: resid[:, pos] only, not the whole residual stream.", resid_all_positions),
            Mistake("noising", "this is denoising: run the *corrupted* tokens and patch in activations cached from the *clean* run.", resid_noising),
            Mistake("resid_post", "patch blocks.{layer}.hook_resid_pre (the stream entering layer `layer`), not hook_resid_post.", resid_post),
        ],
        stuck="cache the clean run; for each layer and position, run the corrupted tokens with a hook on blocks.{layer}.hook_resid_pre that copies cache[name][:, pos] into resid[:, pos].",
    ),
    Exercise(
        name="patch_block_outputs", title="patch_block_outputs", reference=ref.patch_block_outputs, run=run_patch, kind="function",
        cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("every position at once", "patch one position at a time: act[:, pos] only.", blocks_all_positions),
            Mistake("noising", "this is denoising: run the *corrupted* tokens and patch in the *clean* block outputs.", blocks_noising),
            Mistake("MLPs left out", "when model.cfg.attn_only is False, patch hook_mlp_out too, as component 1 (after hook_attn_out): [2, n_layers, pos].", blocks_no_mlp),
            Mistake("components swapped", "component 0 is the attention output (hook_attn_out), component 1 the MLP output (hook_mlp_out).", blocks_mlp_first),
        ],
        stuck="components: hook_attn_out, then hook_mlp_out unless model.cfg.attn_only; for each, each layer, each position: one run with one hook.",
    ),
    Exercise(
        name="patch_head_outputs", title="patch_head_outputs", reference=ref.patch_head_outputs, run=run_patch_directions,
        kind="function", cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("direction ignored", "with direction='noise' run the *clean* tokens and patch in *corrupted* activations.", heads_direction_ignored),
            Mistake("directions swapped", "denoising runs the corrupted tokens with clean activations patched in; noising the opposite.", heads_directions_swapped),
            Mistake("whole layer", "patch one head: z[:, :, head], not every head of the layer.", heads_whole_layer),
        ],
        stuck="source, target = (clean, corrupt) if direction == 'denoise' else (corrupt, clean); cache the source; for each head, run the target with z[:, :, head] replaced.",
    ),
    Exercise(
        name="patch_head_positions", title="patch_head_positions", reference=ref.patch_head_positions, run=run_patch,
        kind="function", cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("every position at once", "patch one position of one head: z[:, pos, head].", head_pos_all_positions),
            Mistake("noising", "this is denoising: run the *corrupted* tokens and patch in *clean* activations.", head_pos_noising),
            Mistake("every head at once", "patch one head at a time: z[:, pos, head], not z[:, pos] (every head of the layer).", head_pos_every_head),
        ],
        stuck="three nested loops (layer, head, pos); the hook sets z[:, pos, head] = clean_cache[name][:, pos, head].",
    ),
    Exercise(
        name="patch_head_patterns", title="patch_head_patterns", reference=ref.patch_head_patterns, run=run_patch,
        kind="function", cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("values patched", "patch the attention *pattern* (hook_pattern, [batch, head, q, k]), not the values.", pattern_values),
            Mistake("whole layer", "patch one head's pattern: pattern[:, head], not the whole layer's.", pattern_whole_layer),
            Mistake("head axis", "hook_pattern is [batch, head, query, key]: the head is axis 1, pattern[:, head]; pattern[:, :, head] "
                    "(z's head axis) patches one query position of every head.", pattern_head_axis),
            Mistake("noising", "this is denoising: run the *corrupted* tokens and patch in the *clean* patterns.", pattern_noising),
        ],
        stuck="hook blocks.{layer}.attn.hook_pattern; its head axis is 1: pattern[:, head] = clean_cache[name][:, head].",
    ),
    Exercise(
        name="path_patch", title="path_patch", reference=ref.path_patch, run=run_path_patch, kind="function",
        cases=[dict(_SMALL[0], paths=_PATHS[0]), dict(_SMALL[1], paths=_PATHS[1])], time_limit=20.0,
        mistakes=[
            Mistake("other heads not frozen", "in the first run, every head that is not a sender must keep its *corrupted* output; otherwise the effect also reaches the receivers through other heads.", path_no_freeze),
            Mistake("receivers ignored", "you returned the metric of the first run; run the corrupted tokens again with only the receivers' inputs patched.", path_one_run),
            Mistake("receiver outputs patched", "patch the receivers' *input* (hook_q, hook_k or hook_v of that head), not their output z.", path_receiver_outputs),
            Mistake("whole receiver layer", "in the second run patch only the receiver heads' inputs, act[:, :, head] = saved[:, :, head], "
                    "not every head of the receiver's layer.", path_whole_receiver_layer),
            Mistake("senders patched again", "the second run patches *only* the receivers' inputs: the senders' clean outputs must reach "
                    "the logits through the receivers alone, so drop the sender hooks from that run.", path_senders_in_second_run),
        ],
        stuck="run 1: hook every hook_z: z = corrupt_z.clone(); z[:, :, sender] = clean_z[:, :, sender]; save the receivers' hook_{receiver_input}. Run 2: corrupted tokens, patch only those receiver inputs.",
    ),
    Exercise(
        name="attribution_patch", title="attribution_patch", reference=ref.attribution_patch, run=run_attribution,
        kind="function", cases=_SMALL, hidden_cases=_SMALL_HIDDEN, atol=1e-4, rtol=1e-3,
        mistakes=[
            Mistake("gradient at the clean run", "take the gradient at the *corrupted* run: we estimate what patching clean values *into the corrupted run* would do.", attr_at_clean),
            Mistake("no difference", "multiply the gradient by the *change* z_clean - z_corrupt, not by z_clean.", attr_no_difference),
            Mistake("sign", "the change is z_clean - z_corrupt (from the corrupted value towards the clean one).", attr_sign),
            Mistake("abs()", "keep the sign of each head's estimate: a negative value says patching that head would *lower* the metric.", attr_abs),
        ],
        stuck="hook every hook_z on the corrupted run with z.retain_grad(); metric(logits).backward(); per head: ((clean_z - z) * z.grad).sum over batch, pos and d_head.",
    ),
    Exercise(
        name="circuit_faithfulness", title="circuit_faithfulness", reference=ref.circuit_faithfulness, run=run_faithfulness,
        kind="function",
        cases=[dict(_SMALL[0], batch=6, circuit=[(0, 1), (1, 0), (1, 2)]),
               dict(_SMALL[1], batch=5, circuit=[(0, 0), (2, 1)])],
        mistakes=[
            Mistake("zero-ablation", "mean-ablate: replace each other head's output with its mean over the *reference* batch, not with zeros.", faith_zero),
            Mistake("circuit ablated", "keep the circuit's heads and ablate every *other* head.", faith_inverted),
            Mistake("mean over positions", "average over the batch only, keeping one mean per position ([pos, head, d_head]).", faith_position_mean),
            Mistake("means of the prompts", "take the means over the `reference` batch (ABC prompts), not over the prompts you evaluate: "
                    "their means still carry which name is repeated.", faith_clean_means),
            Mistake("not divided", "return a fraction: the ablated mean logit difference divided by the full model's.", faith_not_divided),
        ],
        stuck="means = reference z cache .mean(0) per layer; hook every hook_z: torch.where(head in circuit, z, mean); divide the ablated mean logit difference by the full model's.",
    ),

    Exercise(
        name="head_dla", title="head_dla", reference=ref.head_dla, run=run_head_dla, kind="function",
        cases=_SMALL, hidden_cases=_SMALL_HIDDEN,
        mistakes=[
            Mistake("LayerNorm scale left out", "divide each head's output by the final LayerNorm's scale of that run "
                    "(cache['ln_final.hook_scale'][:, -1]) before the unembedding: the logits see the *normalised* stream.", dla_no_scale),
            Mistake("not centred", "LayerNorm subtracts the mean over d_model first: centre each head's output "
                    "(x - x.mean(-1, keepdim=True)) before dividing by the scale.", dla_not_centred),
            Mistake("gain left out", "multiply by the final LayerNorm's gain, model.ln_final.w, after dividing by the scale.", dla_no_gain),
            Mistake("every position", "take the head's output at the last position only (z[:, -1]): that is where the logit is read; "
                    "you summed over positions.", dla_every_position),
        ],
        stuck="z = cache[f'blocks.{l}.attn.hook_z'][:, -1] ([batch, head, d_head]); out = einsum(z, W_O, 'b h d, h d m -> b h m'); "
              "centre, / scale[:, None], * ln_final.w; dot with W_U[:, names].T ([batch, d_model]); stack over layers on dim 1.",
    ),
    Exercise(
        name="last_name_heuristic", title="last_name_heuristic", reference=ref.last_name_heuristic, run=run_heuristic,
        kind="function",
        cases=[dict(seed=4101, batch=5, pos=10, n_names=4, mentions=4, describe="5 prompts of 10 tokens, 3-4 name mentions from 4 names"),
               dict(seed=4102, batch=8, pos=15, n_names=6, mentions=6, describe="8 prompts of 15 tokens, 3-6 name mentions from 6 names")],
        hidden_cases=[dict(seed=0, batch=11, pos=20, n_names=8, mentions=7)],
        mistakes=[
            Mistake("the last name itself", "the rule *suppresses* the last-mentioned name: answer the most recent name that differs from it.", heur_last_name),
            Mistake("first other name", "take the *most recent* name that differs from the last-mentioned one, not the earliest.", heur_first_other),
            Mistake("second-to-last mention", "the mention before the last can be the same name again (S S); skip every mention "
                    "of the last-mentioned name: mask = is_name & (tokens != last[:, None]).", heur_second_to_last),
            Mistake("four tokens back", "names are not at a fixed offset: find them with torch.isin(tokens, names), whatever their positions.", heur_four_back),
        ],
        stuck="is_name = torch.isin(tokens, names); last = tokens[rows, where(is_name, arange, -1).max(-1).values]; "
              "then the same max over is_name & (tokens != last[:, None]).",
    ),
    Exercise(
        name="patch_activation", title="patch_activation", reference=ref.patch_activation, run=run_patch_activation,
        kind="function",
        cases=[dict(_SMALL[0], patches=[("blocks.1.hook_resid_pre", (None, 6)), ("blocks.0.attn.hook_z", (None, None, 1)),
                                        ("blocks.1.hook_mlp_out", (None, 7))]),
               dict(_SMALL[1], patches=[("blocks.2.hook_resid_pre", (None, 9)), ("blocks.1.attn.hook_pattern", (None, 0)),
                                        ("blocks.1.hook_attn_out", (None, 8))])],
        hidden_cases=[dict(_SMALL_HIDDEN[0], patches=[("blocks.2.hook_resid_pre", (None, 10)), ("blocks.1.attn.hook_z", (None, 11, 2))])],
        mistakes=[
            Mistake("whole activation", "replace only act[index]; you copied the whole activation (every position, every head).", pa_whole),
            Mistake("every layer", "hook exactly hook_name; a filter on its ending (n.endswith(...)) patches that activation in every layer.", pa_every_layer),
            Mistake("index on one side only", "index both sides: act[index] = source_cache[hook.name][index]; you wrote the indexed "
                    "slice over the whole activation.", pa_broadcast),
            Mistake("target's own values", "take the replacement from source_cache (the other run), not from a cache of the target run "
                    "itself: patching a run with its own values changes nothing.", pa_own_values),
        ],
        stuck="def hook(act, hook): act = act.clone(); act[index] = source_cache[hook.name][index]; return act; "
              "then metric(model.run_with_hooks(target, fwd_hooks=[(hook_name, hook)])) under torch.no_grad().",
    ),
    Exercise(
        name="integrated_attribution", title="integrated_attribution", reference=ref.integrated_attribution, run=run_integrated,
        kind="function", cases=[dict(_SMALL[0], steps=2), dict(_SMALL[1], steps=3)],
        hidden_cases=[dict(_SMALL_HIDDEN[0], steps=4)], atol=1e-4, rtol=1e-3, time_limit=20.0,
        mistakes=[
            Mistake("endpoints", "use the midpoints alpha = (k + 0.5) / steps; torch.linspace(0, 1, steps) includes alpha = 0 and 1.", ig_endpoints),
            Mistake("summed, not averaged", "average the gradients over the steps (divide by steps): the estimate is dz . mean gradient.", ig_summed),
            Mistake("only at alpha = 0", "take the gradient at every midpoint alpha = (k + 0.5) / steps, with only this head moved to "
                    "z_corrupt + alpha * dz; at alpha = 0 alone it is attribution patching.", ig_at_corrupt),
            Mistake("no difference", "multiply the mean gradient by the change dz = z_clean - z_corrupt, not by z_clean.", ig_no_difference),
        ],
        stuck="for each (layer, head) and k: x = (z0 + (k + 0.5) / steps * dz).requires_grad_(); a hook puts x into z[:, :, head]; "
              "metric(...).backward(); add x.grad. Then (dz * total / steps).sum().",
    ),
]
