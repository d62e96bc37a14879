"""Possession stories (utils/world.py) and chapter 7's world-model section on ``world_2l``.

Quick tests: the generator's labels on a hand-checked story and against an independent
re-derivation from the tokens, and ``utils.corpus`` untouched. Slow tests: the numbers the
chapter prints (seeded, so the same on every run), with margins."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch

from utils import probing as P
from utils import world as W
from utils.corpus import NAMES, token_dataset
from utils.zoo import load_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_labels_on_a_hand_checked_story():
    words, labels = W.story(random.Random(5), n_sentences=2)
    assert " ".join(words) == (
        "<bos> Ella has the book . Ruth saw Ella at the park . Ruth helped Ella . David saw Ruth at "
        "the shop . the book is with Ella . Ella threw the book to David . Ruth helped David . "
        "the book is with David . Ruth took the book .")
    assert {i: NAMES[x] for i, x in enumerate(labels) if x >= 0} == {12: "Ella", 16: "Ella", 23: "Ella", 40: "David"}


def test_labels_match_the_holder_read_back_from_the_tokens():
    tokens, labels = W.world_dataset(200, seed=3)
    tok = W.TOKENIZER
    names = {tok.stoi[n]: i for i, n in enumerate(NAMES)}
    to, took, has = tok.stoi["to"], tok.stoi["took"], tok.stoi["has"]
    for r in range(len(tokens)):
        row, holder = tokens[r].tolist(), -1
        for p, t in enumerate(row):
            if t == has:
                holder = names[row[p - 1]]
            elif t == took:
                holder = names[row[p - 1]]
            elif t == to and p + 1 < len(row) and row[p + 1] in names:
                holder = names[row[p + 1]]
            if labels[r, p] >= 0:
                assert labels[r, p] == holder
                assert row[p] == tok.stoi["."]
    # every question is answered with the holder
    mask, answer = W.question_positions(tokens)
    assert mask.sum() > 100


def test_heuristics_are_poor_guesses():
    d = W.probe_data(300, seed=4, at="distractor")
    h = W.heuristic_accuracy(d, torch.ones(len(d.labels), dtype=torch.bool))
    assert h["last_mentioned"] < 0.36 and h["most_frequent"] < 0.4


def test_course_language_output_unchanged():
    """utils/world.py is a separate generator: the course language's data are byte-identical."""
    t = token_dataset(20_000, 48, seed=0)
    digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    assert digest == "f134b576aa098fbf3a1e13ddff1d7605a265ed7b8ba6e949ecd9cb6227243fd9"


@pytest.fixture(scope="module")
def model():
    return load_model("world_2l")


@pytest.mark.slow
def test_model_answers_who_holds_the_object(model):
    val, _ = W.world_dataset(500, seed=100)
    acc = W.holder_accuracy(model, val)
    assert acc > 0.98  # measured 1.000 (500 stories, 1 492 questions)


@pytest.mark.slow
def test_holder_probe_where_asked_beats_every_baseline(model):
    d = W.probe_data(1500, seed=1, at="question")
    tab = P.probe_table(model, d)
    _, test = P.split_rows(d)
    h = W.heuristic_accuracy(d, test)
    best = max(tab["trained"])
    assert best > 0.98  # measured 1.00 after layer 1's attention and MLP
    assert max(tab["trained"][:3]) < 0.75  # layer 0: 0.55 and 0.61, the answer is found in layer 1
    assert best > max(tab["random"]) + 0.25
    assert best > max(h.values()) + 0.3
    assert best > tab["majority"] + 0.5


@pytest.mark.slow
def test_holder_probe_where_nobody_asks_is_barely_above_a_random_model(model):
    """The honest near-negative: at the end of a distractor sentence the holder is read little
    better than from a random model's residual stream (which knows the story's 3 people)."""
    d = W.probe_data(1500, seed=1, at="distractor")
    tab = P.probe_table(model, d)
    _, test = P.split_rows(d)
    h = W.heuristic_accuracy(d, test)
    best, rand = max(tab["trained"]), max(tab["random"])  # measured 0.48 and 0.41
    assert best < rand + 0.15 and best < 0.6
    assert best > max(h.values()) + 0.1  # last-mentioned 0.28, most frequent 0.30
    assert best > tab["majority"] + 0.3  # 0.04
