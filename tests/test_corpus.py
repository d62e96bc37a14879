"""Tests for utils/corpus.py, the course's seeded language."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from utils import corpus
from utils.corpus import (
    IOI_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    VOCAB,
    CharTokenizer,
    LanguageGenerator,
    TokenInfo,
    Tokenizer,
    ioi_prompts,
    token_dataset,
    token_dataset_with_info,
)

# Changing the vocabulary changes token ids and breaks every model trained on the old ones.
# If you change it on purpose, update these two constants.
EXPECTED_VOCAB_SIZE = 199
EXPECTED_VOCAB_SHA256 = "b35f8485eab2c38b1710afae969045615bc947bc87016d6541783fb2eb5e83fa"


def vocab_hash(vocab: list[str]) -> str:
    return hashlib.sha256("\n".join(vocab).encode()).hexdigest()


def words(infos: list[TokenInfo]) -> list[str]:
    return [t.word for t in infos]


@pytest.fixture(scope="module")
def stories() -> list[list[TokenInfo]]:
    gen = LanguageGenerator(seed=123)
    return [gen.story() for _ in range(300)]


# --- vocabulary ---------------------------------------------------------------------------


def test_vocab_is_small_unique_and_starts_with_specials():
    assert len(VOCAB) < 500
    assert len(VOCAB) == len(set(VOCAB))
    assert VOCAB[0] == "<bos>" and VOCAB[1] == "<pad>"
    for group in (NAMES, PLACES, OBJECTS):
        assert set(group) <= set(VOCAB)
    assert len(NAMES) >= 20 and len(PLACES) >= 12 and len(OBJECTS) >= 16


def test_vocab_is_stable():
    assert vocab_hash(VOCAB) == vocab_hash(list(corpus.VOCAB))  # computed twice
    assert len(VOCAB) == EXPECTED_VOCAB_SIZE
    assert vocab_hash(VOCAB) == EXPECTED_VOCAB_SHA256


def test_vocab_is_the_same_in_a_fresh_interpreter():
    code = (
        "import hashlib; from utils.corpus import VOCAB; "
        "print(hashlib.sha256('\\n'.join(VOCAB).encode()).hexdigest())"
    )
    repo_root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert out.stdout.strip() == vocab_hash(VOCAB)


def test_every_word_has_one_role():
    for word in VOCAB:
        assert corpus.role_of(word) in corpus.ROLES
    assert corpus.role_of("Mary") == "name" and corpus.role_of("park") == "place"
    assert corpus.role_of('"') == "quote" and corpus.role_of(".") == "punct"
    assert corpus.role_of("<bos>") == "special" and corpus.role_of("gave") == "verb"
    with pytest.raises(ValueError):
        corpus.role_of("zebra")


# --- tokenizers ---------------------------------------------------------------------------


def test_tokenizer_round_trip():
    tok = Tokenizer()
    text = LanguageGenerator(seed=5).text(20)
    ids = tok.encode(text)
    assert tok.decode(ids) == " ".join(text.split())
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)
    assert len(tok) == len(VOCAB)
    assert tok.bos_id == 0 and tok.pad_id == 1
    assert tok.encode("Mary went to the park .", bos=True)[0] == tok.bos_id
    assert tok.encode("Mary")[0] == tok.stoi["Mary"] == VOCAB.index("Mary")
    assert tok.decode(tok.stoi["park"]) == "park"


def test_tokenizer_unknown_word_is_named():
    tok = Tokenizer()
    with pytest.raises(ValueError, match="'zebra'"):
        tok.encode("Mary saw a zebra .")
    with pytest.raises(ValueError, match="'park.'"):
        tok.encode("Mary went to the park.")


def test_char_tokenizer_round_trip():
    text = "Hello, world!\nThe quick brown fox. Ünïcode ok."
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(text, bos=True)
    assert ids[0] == tok.bos_id == 0 and tok.pad_id == 1
    assert len(tok) == len(set(text)) + 2
    assert tok.decode(torch.tensor(tok.encode("word"))) == "word"
    with pytest.raises(ValueError, match="'Z'"):
        tok.encode("Zoo")


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_text_different_seed_different_text():
    assert LanguageGenerator(seed=7).text(30) == LanguageGenerator(seed=7).text(30)
    assert LanguageGenerator(seed=7).text(30) != LanguageGenerator(seed=8).text(30)


def test_generator_does_not_use_global_random_state():
    import random

    random.seed(1)
    a = LanguageGenerator(seed=3).text(10)
    random.seed(2)
    b = LanguageGenerator(seed=3).text(10)
    assert a == b


def test_token_dataset_is_deterministic():
    a = token_dataset(20_000, 64, seed=0)
    assert torch.equal(a, token_dataset(20_000, 64, seed=0))
    assert not torch.equal(a, token_dataset(20_000, 64, seed=1))


def test_ioi_prompts_are_deterministic():
    assert ioi_prompts(50, seed=3) == ioi_prompts(50, seed=3)
    assert ioi_prompts(50, seed=3) != ioi_prompts(50, seed=4)


# --- generated text -----------------------------------------------------------------------


def test_generated_text_uses_only_the_vocabulary_and_every_word_but_pad():
    tokens = token_dataset(100_000, 128, seed=0)
    counts = torch.bincount(tokens.flatten(), minlength=len(VOCAB))
    unused = [w for w, c in zip(VOCAB, counts.tolist()) if c == 0]
    assert unused == ["<pad>"]


def test_articles_are_correct(stories):
    for doc in stories:
        ws = words(doc)
        for article, nxt in zip(ws, ws[1:]):
            if article in ("a", "an"):
                assert article == ("an" if nxt[0] in "aeiou" else "a"), " ".join(ws)


def test_stories_have_3_to_8_sentences_about_2_or_3_characters():
    gen = LanguageGenerator(seed=11)
    n_chars = Counter()
    for _ in range(200):
        sentences = gen.story_sentences()
        assert 3 <= len(sentences) <= 8
        names = {t.entity for s in sentences for t in s if t.entity}
        assert 2 <= len(names) <= 3
        n_chars[len(names)] += 1
    assert n_chars[2] > 0 and n_chars[3] > 0


def test_names_recur_within_stories(stories):
    repeats = []
    for doc in stories:
        counts = Counter(t.entity for t in doc if t.entity)
        repeats.append(sum(counts.values()) / len(counts))
    assert sum(repeats) / len(repeats) > 2.0  # each name occurs > 2 times on average


def test_ioi_fraction_roughly_as_requested():
    for fraction in (0.0, 0.3, 0.6):
        gen = LanguageGenerator(seed=2, ioi_fraction=fraction)
        sentences = [s for _ in range(1000) for s in gen.story_sentences()]
        ioi = sum(any(t.ioi_role == "END" for t in s) for s in sentences)
        assert abs(ioi / len(sentences) - fraction) < 0.03, (fraction, ioi / len(sentences))


def test_default_ioi_fraction_is_at_least_a_quarter():
    gen = LanguageGenerator(seed=4)
    sentences = [s for _ in range(500) for s in gen.story_sentences()]
    assert sum(any(t.ioi_role == "END" for t in s) for s in sentences) / len(sentences) >= 0.25


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        LanguageGenerator(ioi_fraction=1.5)
    with pytest.raises(ValueError):
        LanguageGenerator(names=["Mary", "Zed"])
    with pytest.raises(ValueError):
        LanguageGenerator(ioi_templates=[len(IOI_TEMPLATES)])
    with pytest.raises(ValueError):
        LanguageGenerator().ioi_sentence(order="ABAB")
    with pytest.raises(ValueError):
        LanguageGenerator().ioi_sentence(names=("Mary", "Mary"))


# --- annotations --------------------------------------------------------------------------


def test_story_starts_with_bos(stories):
    for doc in stories:
        assert doc[0] == TokenInfo("<bos>", "special")
        assert "<bos>" not in words(doc[1:])


def test_names_are_flagged_with_their_entity(stories):
    for doc in stories:
        for t in doc:
            assert t.role == corpus.role_of(t.word)
            if t.word in NAMES:
                assert t.role == "name" and t.entity == t.word
            else:
                assert t.entity is None and not t.first_mention


def test_in_quote_exactly_between_quote_marks(stories):
    n_quoted = 0
    for doc in stories:
        inside = False
        for t in doc:
            if t.word == '"':
                assert t.role == "quote" and not t.in_quote
                inside = not inside
            else:
                assert t.in_quote == inside, " ".join(words(doc))
                n_quoted += t.in_quote
        assert not inside  # every quotation is closed
    assert n_quoted > 100


def test_quotes_follow_said_or_asked(stories):
    for doc in stories:
        ws = words(doc)
        opening = [i for i, w in enumerate(ws) if w == '"'][::2]
        for i in opening:
            assert ws[i - 1] in ("said", "asked") or ws[i - 2] == "asked"


def test_first_mention_once_per_name_per_document(stories):
    for doc in stories:
        seen = set()
        for t in doc:
            if t.entity:
                assert t.first_mention == (t.entity not in seen)
                seen.add(t.entity)
        firsts = Counter(t.entity for t in doc if t.first_mention)
        assert set(firsts.values()) == {1} and set(firsts) == seen


def test_ioi_roles_in_stories(stories):
    n_ioi = 0
    for doc in stories:
        ws = words(doc)
        for i, t in enumerate(doc):
            if t.ioi_role == "END":
                n_ioi += 1
                assert t.word == "to"
                answer = doc[i + 1]
                assert answer.ioi_role == "ANSWER" and ws[i + 2] == "."
                # the IO, S1 and S2 that belong to this END are the last ones before it
                last = {}
                for j in range(i):
                    if doc[j].ioi_role:
                        last[doc[j].ioi_role] = doc[j].word
                assert last["IO"] == answer.word
                assert last["S1"] == last["S2"] != answer.word
    assert n_ioi > 100


# --- IOI sentences and prompts ------------------------------------------------------------


def test_there_are_enough_ioi_templates():
    assert len(IOI_TEMPLATES) >= 5
    assert all(t.split()[-1] == "to" for t in IOI_TEMPLATES)


@pytest.mark.parametrize("template", range(len(IOI_TEMPLATES)))
@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_ioi_sentence(template, order):
    gen = LanguageGenerator(seed=0)
    sent = gen.ioi_sentence(template=template, names=("Mary", "John"), order=order)
    ws = words(sent)
    assert ws[-3:] == ["to", "Mary", "."]
    assert ws.count("John") == 2 and ws.count("Mary") == 2
    roles = {t.ioi_role: i for i, t in enumerate(sent) if t.ioi_role}
    assert set(roles) == {"IO", "S1", "S2", "END", "ANSWER"}
    assert ws[roles["IO"]] == ws[roles["ANSWER"]] == "Mary"
    assert ws[roles["S1"]] == ws[roles["S2"]] == "John"
    assert (roles["IO"] < roles["S1"]) == (order == "ABBA")
    assert roles["S1"] < roles["S2"] < roles["END"] == len(ws) - 3
    assert [t.first_mention for t in sent if t.entity] == [True, True, False, False]


def test_ioi_prompts():
    tok = Tokenizer()
    prompts = ioi_prompts(200, seed=0)
    assert len(prompts) == 200
    for p in prompts:
        assert set(p) == {"prompt", "io", "s", "template", "order"}
        ws = p["prompt"].split()
        assert ws[-1] == "to"
        assert p["io"] != p["s"]
        assert ws.count(p["s"]) == 2 and ws.count(p["io"]) == 1
        full = ws + [p["io"], "."]
        assert full.count(p["s"]) == 2
        first = p["io"] if p["order"] == "ABBA" else p["s"]
        assert ws.index(first) < ws.index(p["s"] if first == p["io"] else p["io"])
        tok.encode(p["prompt"])  # only vocabulary words
    orders = Counter(p["order"] for p in prompts)
    assert orders == {"ABBA": 100, "BABA": 100}
    assert len({p["template"] for p in prompts}) == len(IOI_TEMPLATES)


def test_ioi_prompts_of_one_template_have_one_length():
    lengths = {}
    for p in ioi_prompts(300, seed=1):
        lengths.setdefault(p["template"], set()).add(len(p["prompt"].split()))
    assert all(len(v) == 1 for v in lengths.values())


def test_ioi_prompts_hold_out_names_and_templates():
    held_out = NAMES[-6:]
    prompts = ioi_prompts(100, seed=0, names=held_out, templates=[1, 4])
    assert {p["io"] for p in prompts} | {p["s"] for p in prompts} <= set(held_out)
    assert {p["template"] for p in prompts} == {1, 4}
    # and the generator can keep them out of the training stream
    tokens = token_dataset(20_000, 64, seed=0, names=NAMES[:-6], ioi_templates=[0, 2, 3])
    text = set(Tokenizer().decode(tokens.flatten()).split())
    assert not text & set(held_out)


def test_ioi_prompt_matches_template_text():
    p = ioi_prompts(1, seed=0, names=["Mary", "John"], templates=[0])[0]
    io, s = p["io"], p["s"]
    a, b = (io, s) if p["order"] == "ABBA" else (s, io)
    assert p["prompt"].startswith(f"When {a} and {b} went to the ")
    assert f", {s} gave " in p["prompt"]


# --- datasets -----------------------------------------------------------------------------


def test_token_dataset_shape_bos_dtype():
    tokens = token_dataset(10_000, 64, seed=0)
    assert tokens.shape == (10_000 // 64, 64)
    assert tokens.dtype == torch.long
    assert (tokens[:, 0] == Tokenizer().bos_id).all()
    assert not (tokens[:, 1] == Tokenizer().bos_id).any()  # never "<bos> <bos>"
    assert int(tokens.max()) < len(VOCAB) and int(tokens.min()) >= 0


def test_token_dataset_rows_continue_the_text_stream():
    seq_len = 32
    tokens = token_dataset(3_200, seq_len, seed=9)
    stream = Tokenizer().encode(LanguageGenerator(seed=9).text(200))
    # Each row is <bos> + the next seq_len - 1 tokens of the stream (a document's own
    # <bos> is skipped when a row starts exactly at a document boundary).
    pos = 0
    for row in tokens.tolist():
        if stream[pos] == 0:
            pos += 1
        assert stream[pos : pos + seq_len - 1] == row[1:]
        pos += seq_len - 1


def test_token_dataset_with_info_matches_tokens():
    tokens, infos = token_dataset_with_info(20_000, 64, seed=0)
    assert torch.equal(tokens, token_dataset(20_000, 64, seed=0))
    assert len(infos) == tokens.shape[0] and all(len(r) == 64 for r in infos)
    tok = Tokenizer()
    for row, row_info in zip(tokens.tolist(), infos):
        assert [tok.vocab[i] for i in row] == [t.word for t in row_info]
    flat = [t for r in infos for t in r]
    assert any(t.in_quote for t in flat) and any(t.ioi_role == "END" for t in flat)
    assert any(t.first_mention for t in flat)


def test_token_dataset_ioi_fraction_kwarg():
    few = token_dataset(20_000, 64, seed=0, ioi_fraction=0.0)
    many = token_dataset(20_000, 64, seed=0, ioi_fraction=0.9)
    while_id = Tokenizer().stoi["While"]  # opens only IOI template 3
    assert (few == while_id).sum() == 0 and (many == while_id).sum() > 20


def test_token_dataset_with_char_tokenizer():
    text = LanguageGenerator(seed=0).text(5)
    tok = CharTokenizer.from_text("".join(VOCAB) + " ")
    tokens = token_dataset(2_000, 50, seed=0, tokenizer=tok)
    assert tokens.shape == (40, 50) and (tokens[:, 0] == tok.bos_id).all()
    assert tok.decode(tokens[0, 1:]) in text.replace("<bos> ", "")
