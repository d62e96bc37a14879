"""Possession stories: a latent world state for chapter 7's "world model" probe.

The course language (``utils.corpus``) has no variable that a story sets in one sentence and
that stays true, unwritten, over the following ones. This module adds one, using only words
already in the course vocabulary (so the course :class:`~utils.corpus.Tokenizer` encodes it,
and ``utils.corpus``'s own output is unchanged). A story passes one object between three
people::

    <bos> Mary has the key . Bob went to the park . Mary gave the key to Anna . Bob saw
    Mary at the lake . the key is with Anna . Anna handed the key to Bob . Mary was tired .

Who holds the object is the latent state: it is set by a transfer sentence (``X gave the
key to Y``, or ``Y took the key``), and the distractor sentences after it never say it. The
distractors mostly mention the people who do *not* hold the object, so the last-mentioned
name and the most frequent name are poor guesses. Some sentences ask the question
``the key is with NAME .``: the model is trained to say who holds the object.

:func:`world_data` labels the ``.`` closing every distractor sentence with the current
holder (an index into :data:`~utils.corpus.NAMES`); every other position gets -1.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from .corpus import MOODS, NAMES, PLACES, Tokenizer
from .transformer import Config, Transformer
from .zoo import recipe

TOKENIZER = Tokenizer()
WORLD_OBJECTS = ["ball", "key", "book", "ring", "coin", "hat"]
GIVE_VERBS = ["gave", "handed", "passed", "threw", "lent"]
N_CTX = 64


def _distractor(rng: random.Random, subject: str, other: str) -> list[str]:
    kind = rng.randrange(4)
    if kind == 0:
        return [subject, "went", "to", "the", rng.choice(PLACES), "."]
    if kind == 1:
        return [subject, "saw", other, "at", "the", rng.choice(PLACES), "."]
    if kind == 2:
        return [subject, "was", rng.choice(MOODS), "."]
    return [subject, "helped", other, "."]


def story(rng: random.Random, n_sentences: int = 6) -> tuple[list[str], list[int]]:
    """One story: its words (starting with ``<bos>``) and a label per word: the holder's index
    in ``NAMES`` at the ``.`` closing a distractor sentence, -1 elsewhere. ``question``
    sentences (``the key is with NAME .``) are not labelled: their answer is written there."""
    people = rng.sample(NAMES, 3)
    obj = rng.choice(WORLD_OBJECTS)
    holder = rng.choice(people)
    words, labels = ["<bos>", holder, "has", "the", obj, "."], [-1] * 6

    def add(sentence: list[str], label_end: bool = False) -> None:
        words.extend(sentence)
        labels.extend([-1] * (len(sentence) - 1) + [NAMES.index(holder) if label_end else -1])

    for _ in range(n_sentences):
        # 1-3 distractors, mostly about the people who do not hold the object ...
        for _ in range(rng.randint(1, 3)):
            others = [p for p in people if p != holder]
            subject = holder if rng.random() < 0.15 else rng.choice(others)
            add(_distractor(rng, subject, rng.choice([p for p in people if p != subject])), label_end=True)
        # ... then, often, the question (never straight after a transfer: the recipient would be
        # the last name written) ...
        if rng.random() < 0.75:
            add(["the", obj, "is", "with", holder, "."])
        # ... then a transfer: the holder changes.
        new = rng.choice([p for p in people if p != holder])
        if rng.random() < 0.7:
            sentence = [holder, rng.choice(GIVE_VERBS), "the", obj, "to", new, "."]
        else:
            sentence = [new, "took", "the", obj, "."]
        holder = new
        add(sentence)
    return words, labels


def world_dataset(n_rows: int, n_ctx: int = N_CTX, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(tokens [n_rows, n_ctx], labels [n_rows, n_ctx])``: one story per row, cut to
    ``n_ctx`` (stories are longer, so no row is padded). ``labels``: the holder's index in
    ``NAMES`` at the end of each distractor sentence, -1 elsewhere. Seeded, own RNG."""
    rng = random.Random(seed)
    tokens = torch.empty(n_rows, n_ctx, dtype=torch.long)
    labels = torch.empty(n_rows, n_ctx, dtype=torch.long)
    for i in range(n_rows):
        words, lab = story(rng, n_sentences=6)
        while len(words) < n_ctx:  # never happens with 14 sentences; kept as a guard
            more, more_lab = story(rng, n_sentences=6)
            words, lab = words + more, lab + more_lab
        tokens[i] = torch.tensor([TOKENIZER.stoi[w] for w in words[:n_ctx]])
        labels[i] = torch.tensor(lab[:n_ctx])
    return tokens, labels


def question_positions(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``(mask, answer)``: True at every ``with`` (the model's next token there is the holder)
    that is not the row's last position, and the token that follows it."""
    mask = tokens == TOKENIZER.stoi["with"]
    mask[:, -1] = False
    answer = torch.full_like(tokens, -1)
    answer[:, :-1] = tokens[:, 1:]
    return mask, answer[mask]


@torch.no_grad()
def holder_accuracy(model: Transformer, tokens: Tensor) -> float:
    """Fraction of questions (``the key is with``) whose top next-token prediction is the holder."""
    mask, answer = question_positions(tokens)
    logits = model(tokens)
    return float((logits[mask].argmax(-1) == answer).float().mean())


def name_heuristics(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """At every position: the last name mentioned so far, and the most frequent one so far (ties
    to the most recently mentioned), as indices into ``NAMES`` (-1 before any name)."""
    name_index = {TOKENIZER.stoi[n]: i for i, n in enumerate(NAMES)}
    last = torch.full_like(tokens, -1)
    most = torch.full_like(tokens, -1)
    for r in range(tokens.shape[0]):
        counts: dict[int, int] = {}
        recent = -1
        for p in range(tokens.shape[1]):
            t = int(tokens[r, p])
            if t in name_index:
                recent = name_index[t]
                counts[recent] = counts.get(recent, 0) + 1
            last[r, p] = recent
            if counts:
                top = max(counts.values())
                most[r, p] = recent if counts.get(recent) == top else max(
                    (c, k) for k, c in counts.items() if c == top)[1]
    return last, most


def probe_data(n_rows: int = 1500, seed: int = 1, at: str = "distractor"):
    """The current holder as a chapter-7 ``ProbeData`` (24 classes: the names), labelled

    * ``at="distractor"``: at the ``.`` closing every distractor sentence (nobody asks there);
    * ``at="question"``: at the ``with`` of every question (``the key is with``), whose next
      token is the holder.

    In both, the current sentence does not contain the holder's name. ``extra["last"]`` and
    ``extra["most"]``: the last-mentioned and the most frequent name so far at each position."""
    from .probing import ProbeData

    tokens, labels = world_dataset(n_rows, seed=seed)
    if at == "distractor":
        mask = labels >= 0
        y = labels[mask]
    elif at == "question":
        mask, answer = question_positions(tokens)
        index = {TOKENIZER.stoi[n]: i for i, n in enumerate(NAMES)}
        y = torch.tensor([index[int(a)] for a in answer])
    else:
        raise ValueError(f"at must be 'distractor' or 'question', not {at!r}")
    rows = torch.arange(n_rows)[:, None].expand_as(tokens)
    last, most = name_heuristics(tokens)
    return ProbeData(tokens, mask, y, list(NAMES), rows[mask], {"last": last[mask], "most": most[mask]})


def heuristic_accuracy(data, test: Tensor) -> dict[str, float]:
    """Accuracy on the ``test`` positions of ``data`` (from :func:`probe_data`) of guessing the
    last-mentioned name and the most frequent name so far (no training: nothing to fit)."""
    return {"last_mentioned": float((data.extra["last"][test] == data.labels[test]).float().mean()),
            "most_frequent": float((data.extra["most"][test] == data.labels[test]).float().mean())}


@recipe("world_2l", "Chapter 7's world-model toy: 2 layers, d_model 64, on possession stories (utils.world).")
def _world_2l(steps: int | None = None, progress: bool = True) -> tuple[Transformer, dict]:
    from .training import train

    steps = steps or 8000
    cfg = Config(d_vocab=len(TOKENIZER), n_ctx=N_CTX, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_layers=2)
    data, _ = world_dataset(20_000, seed=0)
    val, _ = world_dataset(500, seed=100)
    model = Transformer(cfg, seed=0)
    log = train(model, data, steps=steps, batch_size=32, lr=3e-3, seed=0, progress=progress, desc="world_2l")
    model.eval()
    with torch.no_grad():
        val_loss = model(val, return_type="loss").item()
    return model, {"recipe": "world_2l", "steps": steps, "seed": 0, "val_loss": round(val_loss, 4),
                   "holder_accuracy": round(holder_accuracy(model, val), 4),
                   "train_seconds": round(log.seconds, 1), "torch": torch.__version__,
                   "data": "utils.world.world_dataset(20_000, 64, seed=0); validation world_dataset(500, seed=100)"}
