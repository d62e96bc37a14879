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
        return out, ActivationCache(cache)


class ActivationCache(dict):
    """A dict of activations by hook name, with a few TransformerLens-style short-cuts.

    ``cache["pattern", 0]`` is ``cache["blocks.0.attn.hook_pattern"]``;
    ``cache["resid_post", 1]`` is ``cache["blocks.1.hook_resid_post"]``.
    """

    _ATTN = {"q", "k", "v", "z", "attn_scores", "pattern"}
    _MLP = {"pre", "post"}

    def __getitem__(self, key):
        if isinstance(key, tuple):
            short, layer = key
            if short in self._ATTN:
                key = f"blocks.{layer}.attn.hook_{short}"
            elif short in self._MLP:
                key = f"blocks.{layer}.mlp.hook_{short}"
            else:
                key = f"blocks.{layer}.hook_{short}"
        return super().__getitem__(key)
