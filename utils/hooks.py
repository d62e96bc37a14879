"""Hook points: named places in a model where activations can be read or replaced.

The design follows TransformerLens's ``hook_points.py`` so that what a learner writes here
transfers to TransformerLens, SAELens and nnsight:

* ``HookPoint`` is an identity module. Put one wherever an activation is worth reading; its
  name in the module tree (``blocks.0.attn.hook_pattern``) is the activation's name.
* A hook is a function ``hook(activation, hook) -> new_activation | None``. Returning ``None``
  keeps the activation; returning a tensor replaces it.
* ``HookedRootModule.run_with_hooks`` and ``run_with_cache`` always leave the model clean,
  even when a hook raises.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Union

import torch
from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], Union[Tensor, None]]
NameFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


class HookPoint(nn.Module):
    """An identity layer that calls the hooks added to it, in the order they were added."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None  # set by HookedRootModule.setup()
        self._hooks: list[HookFn] = []

    def add_hook(self, fn: HookFn) -> None:
        self._hooks.append(fn)

    def remove_hooks(self) -> None:
        self._hooks.clear()

    def remove_hook(self, fn: HookFn) -> None:
        """Remove the most recently added instance of ``fn`` (other hooks stay)."""
        for i in range(len(self._hooks) - 1, -1, -1):
            if self._hooks[i] is fn:
                del self._hooks[i]
                return

    def forward(self, x: Tensor) -> Tensor:
        for fn in self._hooks:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"a hook on {self.name} returned {type(out).__name__}; "
                        "return a tensor to replace the activation, or None to keep it"
                    )
                if out.shape != x.shape:
                    raise ValueError(
                        f"a hook on {self.name} returned shape {tuple(out.shape)}, "
                        f"but the activation has shape {tuple(x.shape)}"
                    )
                x = out
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _make_filter(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


class HookedRootModule(nn.Module):
    """Base class of hooked models: call ``self.setup()`` at the end of ``__init__``."""

    hook_dict: dict[str, HookPoint]

    def setup(self) -> None:
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def reset_hooks(self) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator["HookedRootModule"]:
        """Context manager: add ``(name_or_filter, hook)`` pairs, remove them on exit, always."""
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for name, fn in fwd_hooks:
                matches = [hp for n, hp in self.hook_dict.items() if (n == name if isinstance(name, str) else name(n))]
                if isinstance(name, str) and not matches:
                    raise KeyError(f"no hook point named {name!r}; see model.hook_dict for the names")
                for hp in matches:
                    hp.add_hook(fn)
                    added.append((hp, fn))
            yield self
        finally:
            # Remove only what this call added, so hooks from an enclosing ``hooks()`` survive.
            for hp, fn in reversed(added):
                hp.remove_hook(fn)

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (), **kwargs):
        """Run the model with temporary hooks; they are removed afterwards, even on error."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter: NameFilter = None, **kwargs) -> tuple[Tensor, "ActivationCache"]:
        """Run the model and return ``(output, cache)`` with every (filtered) activation."""
        keep = _make_filter(names_filter)
        cache: dict[str, Tensor] = {}

        def save(act: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = act.detach()

        hooks = [(name, save) for name in self.hook_dict if keep(name)]
        out = self.run_with_hooks(*args, fwd_hooks=hooks, **kwargs)
        return out, ActivationCache(cache, model=self)


# ---- Short names for activations (TransformerLens's conventions) -----------------------------
_ATTN_ACTS = {"q", "k", "v", "z", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_ACT_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
                "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_PLACE_ALIASES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a short one, with TransformerLens's conventions
    (``transformer_lens.utils.get_act_name``):

    >>> act_name("pattern", 0), act_name("attn", 1), act_name("resid_post", 1)
    ('blocks.0.attn.hook_pattern', 'blocks.1.attn.hook_pattern', 'blocks.1.hook_resid_post')
    >>> act_name("scale", 0, "ln1"), act_name("scale"), act_name("embed"), act_name("k6")
    ('blocks.0.ln1.hook_scale', 'ln_final.hook_scale', 'hook_embed', 'blocks.6.attn.hook_k')
    """
    if layer is None and layer_type is None and ("." in name or name.startswith("hook_")):
        return name  # already a full name
    packed = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)  # "k6", "scale4ln1"
    if packed is not None and layer is None:
        name, layer, layer_type = packed.group(1), int(packed.group(2)), packed.group(3)
    name = _ACT_ALIASES.get(name, name)
    if name in _ATTN_ACTS:
        place = "attn"
    elif name in _MLP_ACTS:
        place = "mlp"
    else:
        place = _PLACE_ALIASES.get(layer_type, layer_type) if layer_type else ""
    full = (f"blocks.{layer}." if layer is not None else "") + (f"{place}." if place else "") + f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = "ln_final." + full
    return full


class ActivationCache(dict):
    """A dict of activations by hook name, with TransformerLens's short-cuts:

    * ``cache["pattern", 0]`` is ``cache["blocks.0.attn.hook_pattern"]`` (also ``cache["attn", 0]``);
    * ``cache["resid_post", -1]``: negative layers count from the last;
    * ``cache["scale", 0, "ln1"]`` is ``cache["blocks.0.ln1.hook_scale"]``, ``cache["scale"]``
      the final LayerNorm's; ``cache["embed"]`` is ``cache["hook_embed"]``.

    With the model that made it (``run_with_cache`` passes it), it also decomposes the residual
    stream like TransformerLens's cache: ``decompose_resid``, ``stack_head_results``,
    ``apply_ln_to_stack`` and ``logit_attrs``.
    """

    def __init__(self, activations: dict | None = None, model: "nn.Module | None" = None):
        super().__init__(activations or {})
        self.model = model

    @property
    def n_layers(self) -> int | None:
        if self.model is not None:
            return self.model.cfg.n_layers
        layers = [int(k.split(".")[1]) for k in self if k.startswith("blocks.")]
        return max(layers) + 1 if layers else None

    def resolve(self, key) -> str:
        """The full hook name that ``key`` (a name, or a TransformerLens-style tuple) stands for."""
        if isinstance(key, str):
            return key if dict.__contains__(self, key) else act_name(key)
        if isinstance(key, tuple) and key and isinstance(key[0], str):
            name, layer, *rest = (*key, None)[:3] if len(key) < 3 else key
            if isinstance(layer, int) and layer < 0 and self.n_layers is not None:
                layer += self.n_layers
            return act_name(name, layer, rest[0] if rest else None)
        raise KeyError(key)

    def __getitem__(self, key):
        full = self.resolve(key)
        if not dict.__contains__(self, full):
            close = difflib.get_close_matches(full, list(self), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"{key!r} (that is, {full!r}) is not in this cache{hint}")
        return dict.__getitem__(self, full)

    def __contains__(self, key) -> bool:
        try:
            return dict.__contains__(self, self.resolve(key))
        except KeyError:
            return False

    # ---- decomposing the residual stream ------------------------------------------------------
    def _need_model(self):
        if self.model is None:
            raise ValueError("this cache has no model: make it with model.run_with_cache(...)")
        return self.model

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, apply_ln: bool = False,
                        pos_slice: slice | None = None, return_labels: bool = False):
        """The residual stream before block ``layer`` (all blocks by default), split into what wrote
        it: ``[embed, pos_embed, 0_attn_out, 0_mlp_out, 1_attn_out, ...]``, stacked on a new first
        axis: [component, batch, pos, d_model]. ``mlp_input=True`` adds block ``layer``'s attention
        output (the input of its MLP)."""
        model = self._need_model()
        layer = model.cfg.n_layers if layer is None or layer == -1 else layer
        parts = [("embed", self["hook_embed"]), ("pos_embed", self["hook_pos_embed"])]
        for l in range(layer + (1 if mlp_input else 0)):
            parts.append((f"{l}_attn_out", self["attn_out", l]))
            if l < layer and not model.cfg.attn_only:
                parts.append((f"{l}_mlp_out", self["mlp_out", l]))
        stack = torch.stack([t for _, t in parts])
        if pos_slice is not None:
            stack = stack[:, :, pos_slice]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, [n for n, _ in parts]) if return_labels else stack

    def stack_head_results(self, layer: int | None = -1, pos_slice: slice | None = None, apply_ln: bool = False,
                           return_labels: bool = False):
        """Each head's output (z @ W_O, without b_O) for every head of the blocks before ``layer``
        (all by default, or with -1): [layer * head, batch, pos, d_model], labelled ``L{l}H{h}``."""
        model = self._need_model()
        layer = model.cfg.n_layers if layer is None or layer == -1 else layer
        stacks, labels = [], []
        for l in range(layer):
            z = self["z", l]
            W_O = model.blocks[l].attn.W_O
            stacks.append(torch.einsum("bphd,hdm->hbpm", z, W_O.to(z.dtype)))
            labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)]
        stack = torch.cat(stacks) if stacks else torch.zeros(0)
        if pos_slice is not None:
            stack = stack[:, :, pos_slice]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, stack: Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: slice | None = None) -> Tensor:
        """Put each component of a residual-stream stack through the LayerNorm that reads it, as a
        linear map: centre it and divide by the scale cached for the whole residual stream
        (``ln_final`` by default; block ``layer``'s ln1, or ln2 with ``mlp_input``). Without
        LayerNorm the stack comes back unchanged."""
        model = self._need_model()
        if model.cfg.normalization is None:
            return stack
        if layer is None or layer == -1 or layer == model.cfg.n_layers:
            scale = self["scale"]
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        if pos_slice is not None:
            scale = scale[:, pos_slice]
        return (stack - stack.mean(-1, keepdim=True)) / scale

    def logit_attrs(self, residual_stack: Tensor, tokens: Tensor | int, incorrect_tokens: Tensor | int | None = None,
                    pos_slice: slice | None = None) -> Tensor:
        """How much each component of ``residual_stack`` [component, batch, pos, d_model] (raw, as
        ``decompose_resid`` or ``stack_head_results`` give it; the final LayerNorm's cached scale
        is applied here) adds to the logit of ``tokens`` (one id, or one per batch and position),
        minus that of ``incorrect_tokens`` if given: [component, batch, pos]. ``pos_slice``: the
        positions the stack was sliced to.

        The final LayerNorm's gain ``ln_final.w`` is part of the direction read off, so the
        attributions plus the constant terms (``ln_final.b @ W_U`` and ``b_U``) add up to the
        logits. (TransformerLens's ``logit_attrs`` assumes the gain was folded into ``W_U``, as
        its ``from_pretrained`` does by default; on an unfolded model it leaves the gain out.)"""
        model = self._need_model()
        W_U = model.unembed.W_U.to(residual_stack.dtype)
        if model.cfg.normalization == "LN":
            W_U = model.ln_final.w.to(W_U.dtype)[:, None] * W_U

        def direction(t):
            t = torch.as_tensor(t, device=W_U.device)
            return W_U[:, t].movedim(0, -1)  # [..., d_model]

        d = direction(tokens)
        if incorrect_tokens is not None:
            d = d - direction(incorrect_tokens)
        return (self.apply_ln_to_stack(residual_stack, pos_slice=pos_slice) * d).sum(-1)
