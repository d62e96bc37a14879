"""Saving and loading model checkpoints, and the course's pretrained "model zoo".

A checkpoint is two files side by side, and neither is a pickle (unpickling runs arbitrary
code, so a downloaded ``.pt`` file is a program, not data):

* ``<name>.safetensors``: the weights, by their ``state_dict`` names;
* ``<name>.json``: ``{"format": 1, "config": {...Config fields...}, "metadata": {...}}``.

Checkpoints shipped with the course live in ``utils/checkpoints`` and load by name::

    available_models()        # the names there
    model = load_model(name)  # one of them
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .transformer import Config, Transformer

FORMAT = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_checkpoint(model: Transformer, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``path.safetensors`` (weights) and ``path.json`` (config and metadata)."""
    weights_path, json_path = _paths(path)
    # Serialise the JSON first, so unserialisable metadata fails before anything is written.
    text = json.dumps({"config": model.cfg.to_dict(), "metadata": metadata or {}, "format": FORMAT}, indent=2)
    # clone(): safetensors refuses tensors that share memory (e.g. tied weights).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, weights_path, metadata={"format": str(FORMAT)})
    json_path.write_text(text + "\n")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build a ``Transformer`` from a checkpoint written by ``save_checkpoint``.

    Raises ``ValueError`` naming every missing, unexpected or wrongly shaped tensor.
    """
    weights_path, json_path = _paths(path)
    for p in (json_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file {p} does not exist")
    try:
        info = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("config"), dict):
        raise ValueError(f"{json_path} is not a format-{FORMAT} checkpoint config (need 'format' and 'config')")
    cfg = Config.from_dict(info["config"])

    tensors = load_file(weights_path)  # safetensors: plain tensors, no code execution
    model = Transformer(cfg)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(tensors) & set(expected))
        if tensors[k].shape != expected[k].shape
    ]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {', '.join(wrong_shape)}")
    if problems:
        raise ValueError(f"checkpoint {weights_path} does not match its config:\n  " + "\n  ".join(problems))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def checkpoint_dir() -> Path:
    """The folder of checkpoints shipped with the course (``utils/checkpoints``)."""
    return Path(__file__).resolve().parent / "checkpoints"


def available_models() -> list[str]:
    """Names ``load_model`` accepts: every ``<name>.safetensors`` with a ``<name>.json`` beside it."""
    folder = checkpoint_dir()
    return sorted(p.stem for p in folder.glob("*.safetensors") if p.with_suffix(".json").is_file())


def load_model(name: str) -> Transformer:
    """Load a shipped checkpoint by name; ``available_models()`` lists the names."""
    names = available_models()
    if name not in names:
        listing = ", ".join(names) if names else "(none: no checkpoints in " + str(checkpoint_dir()) + ")"
        raise ValueError(f"unknown model {name!r}; available: {listing}")
    # The full file name, so a dotted name ("a.b") keeps its dot through with_suffix.
    return load_checkpoint(checkpoint_dir() / f"{name}.safetensors")


# ---- Recipes: how every shipped checkpoint was made -----------------------------------------
# Each shipped model is produced by a function here with a fixed seed, so anyone can retrain it:
#     python -m utils.zoo list
#     python -m utils.zoo train course_lm            # writes utils/checkpoints/course_lm.*
#     python -m utils.zoo train course_lm --out DIR  # somewhere else


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    make: Callable[..., tuple[object, dict]]  # make(steps=None, progress=True) -> (model, metadata)
    # save(model, out_dir, name, metadata) -> the path written; None: a Transformer checkpoint
    save: Callable[..., Path] | None = None


RECIPES: dict[str, Recipe] = {}

# Later chapters' modules register their own recipes when imported (``recipe(...)`` below); the
# zoo imports them by name only when a recipe is asked for, so this module, at the bottom of the
# import graph, never depends on them.
RECIPE_MODULES = ("utils.sae", "utils.toy_models", "utils.grokking", "utils.world")


def recipe(name: str, description: str, save: Callable[..., Path] | None = None):
    def register(fn):
        RECIPES[name] = Recipe(name, description, fn, save)
        return fn

    return register


def all_recipes() -> dict[str, Recipe]:
    """Every recipe: this module's and those of ``RECIPE_MODULES``."""
    import importlib

    for module in RECIPE_MODULES:
        importlib.import_module(module)
    return RECIPES


@recipe("course_lm", "Chapter 1's model trained longer: 2 layers, d_model 128, on the course language (n_ctx 48).")
def _course_lm(steps: int | None = None, progress: bool = True) -> tuple[Transformer, dict]:
    from .corpus import Tokenizer, token_dataset
    from .training import train

    steps = steps or 3000
    tokenizer = Tokenizer()
    cfg = Config(d_vocab=len(tokenizer), n_ctx=48, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_layers=2)
    data = token_dataset(600_000, cfg.n_ctx, seed=0)
    train_data, val_data = data[:-250], data[-250:]
    model = Transformer(cfg, seed=0)
    log = train(model, train_data, steps=steps, batch_size=32, lr=3e-3, seed=0, progress=progress, desc="course_lm")
    with torch.no_grad():
        val_loss = model(val_data, return_type="loss").item()
    return model, {"recipe": "course_lm", "steps": steps, "seed": 0, "val_loss": round(val_loss, 4),
                   "train_seconds": round(log.seconds, 1), "torch": torch.__version__,
                   "data": "token_dataset(600_000, 48, seed=0); last 250 rows held out"}


@recipe("induction_2l", "Chapter 2's model: 2-layer attention-only transformer with induction heads, trained on random tokens with copied spans.")
def _induction_2l(steps: int | None = None, progress: bool = True) -> tuple[Transformer, dict]:
    from .induction import all_head_scores, train_induction_model

    steps = steps or 3000
    model, history = train_induction_model(n_layers=2, steps=steps, seed=0, progress=progress, desc="induction_2l")
    scores = all_head_scores(model, half_len=20)
    return model, {"recipe": "induction_2l", "steps": steps, "seed": 0, "torch": torch.__version__,
                   "best_induction_score": round(scores["induction"][1].max().item(), 3),
                   "best_prev_token_score_layer0": round(scores["prev_token"][0].max().item(), 3),
                   "repeat_loss_second_half": round(history["repeat_loss"][-1], 3),
                   "data": "span_copy_batches(64, 64, 64, seed=0, n_spans=3)"}


@recipe("ioi_2l", "Chapter 4's model: 2-layer attention-only transformer (4 heads per layer) trained on IOI-rich course-language stories.")
def _ioi_2l(steps: int | None = None, progress: bool = True) -> tuple[Transformer, dict]:
    from .patching import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, evaluate_ioi, train_ioi_model

    steps = steps or 3000
    model, info = train_ioi_model(steps=steps, seed=0, progress=progress, desc="ioi_2l")
    held_out = evaluate_ioi(model, HELDOUT_TEMPLATES, n=400, seed=1, heldout_pairs=True)
    seen = evaluate_ioi(model, TRAIN_TEMPLATES, n=50, seed=2, heldout_pairs=False)
    return model, {"recipe": "ioi_2l", "steps": steps, "seed": 0, "torch": torch.__version__, **info,
                   "heldout": {k: round(v, 3) for k, v in held_out.items()},
                   "train_templates": {k: round(v, 3) for k, v in seen.items()},
                   "data": "utils.patching.ioi_training_data(): course-language stories, ioi_fraction 1.0, "
                           f"IOI templates {TRAIN_TEMPLATES}, no IOI sentence on a held-out name pair",
                   "heldout_set": f"template {HELDOUT_TEMPLATES}, name pairs with utils.patching.is_heldout_pair"}

def retrain(name: str, out_dir: str | Path | None = None, steps: int | None = None, progress: bool = True) -> Path:
    """Run a recipe and save its checkpoint (by default into the shipped folder)."""
    recipes = all_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(recipes))}")
    model, metadata = recipes[name].make(steps=steps, progress=progress)
    if recipes[name].save is not None:
        path = recipes[name].save(model, Path(out_dir or checkpoint_dir()), name, metadata)
    else:
        path = Path(out_dir or checkpoint_dir()) / f"{name}.safetensors"
        save_checkpoint(model, path, metadata)
    # safetensors writes its files readable by their owner only; a shipped checkpoint must be
    # readable by everyone (the grading sandbox's kernel runs as another user).
    for file in ([*path.iterdir()] if path.is_dir() else [path, path.with_suffix(".json")]):
        file.chmod(0o644)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.zoo", description="The course's shipped models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list recipes and shipped checkpoints")
    t = sub.add_parser("train", help="retrain a shipped model from its recipe")
    t.add_argument("name")
    t.add_argument("--out", help="folder to write into (default: utils/checkpoints)")
    t.add_argument("--steps", type=int, help="override the number of steps (for a quick try)")
    args = parser.parse_args(argv)
    if args.command == "list":
        shipped = set(available_models()) | {p.name for p in checkpoint_dir().iterdir() if (p / "cfg.json").is_file()}
        for name, r in sorted(all_recipes().items()):
            print(f"{name:16s} {'shipped' if name in shipped else 'not built'}  {r.description}")
        return 0
    path = retrain(args.name, args.out, args.steps)
    if path.is_dir():  # an SAE: cfg.json + sae_weights.safetensors
        meta = json.loads((path / "cfg.json").read_text())["metadata"]
        size = sum(p.stat().st_size for p in path.iterdir())
    else:
        meta = json.loads(path.with_suffix(".json").read_text())["metadata"]
        size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.1f} MB): {meta}")
    return 0


if __name__ == "__main__":
    # Run as ``python -m utils.zoo``, this file is the module ``__main__``; the chapters register
    # their recipes with ``utils.zoo``, so use that module's registry.
    from utils.zoo import main as _main

    raise SystemExit(_main())
