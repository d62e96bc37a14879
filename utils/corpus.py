"""The course language: a small, seeded, English-like language with known ground truth.

Pretrained models cannot be downloaded here, and natural text hides what is "really" going
on in it. So the course makes its own language. Every token it generates comes with a
:class:`TokenInfo` that says what the token *is* (a name? inside a quotation? the subject of
an indirect-object sentence?), which lets later chapters score a model's features and
circuits against the truth.

The language
------------
Words are tokens, written exactly as they appear (``"Mary"``, ``"the"``, ``"."``). The
vocabulary is the fixed list :data:`VOCAB` (ids never change between runs or machines):

====================  ==========================================================
ids                   what
====================  ==========================================================
0                     ``<bos>``: begins every document and every training row
1                     ``<pad>``: padding, never generated
2-5                   punctuation ``. , ?`` and the quotation mark ``"``
then                  function words, names, places, objects, verbs, adjectives
====================  ==========================================================

A document is a short story (3-8 sentences) about 2-3 characters. Its sentences are drawn
from three constructions:

1. **Story sentences** -- ``Mary went to the park .``, ``Mary found a red ball at the park .``,
   ``John saw Mary at the park .``. Names, places and objects recur, so copying what came
   earlier in the document (an *induction* mechanism) pays off.
2. **Indirect-object (IOI) sentences** -- ``When Mary and John went to the shop , John gave
   a book to Mary .`` The subject (S) is mentioned twice; the answer is the *other* name, the
   indirect object (IO). See :data:`IOI_TEMPLATES`.
3. **Quotations** -- ``Mary said " the ball is red . "``. Tokens between the quotation marks
   are marked ``in_quote=True``.

(Story sentences also include a small counting construction: ``Tom counted two , three ,
four .``)

Quick start
-----------
>>> gen = LanguageGenerator(seed=0)
>>> doc = gen.story()                      # list[TokenInfo], starts with <bos>
>>> " ".join(t.word for t in doc)          # doctest: +SKIP
>>> tokens = token_dataset(200_000, 64)    # LongTensor [3125, 64], rows start with <bos>
>>> tok = Tokenizer(); tok.decode(tokens[0])  # doctest: +SKIP

Everything is deterministic given the seed: the generator uses its own
``random.Random(seed)`` and never the global random state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "ADJECTIVES",
    "CharTokenizer",
    "IOI_TEMPLATES",
    "LanguageGenerator",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "ROLES",
    "STORY_TEMPLATES",
    "TokenInfo",
    "Tokenizer",
    "VERBS",
    "VOCAB",
    "ioi_prompts",
    "role_of",
    "token_dataset",
    "token_dataset_with_info",
]

# ---------------------------------------------------------------------------------------
# Vocabulary. The order of these lists IS the token-id order: only ever append, and know
# that any change invalidates models trained on the old ids.
# ---------------------------------------------------------------------------------------

BOS = "<bos>"
PAD = "<pad>"
SPECIAL_TOKENS = [BOS, PAD]
PUNCTUATION = [".", ",", "?"]
QUOTE = '"'

NAMES = [
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah",
    "David", "Emma", "Paul", "Lucy", "Mike", "Kate", "Peter", "Jane",
    "Sam", "Laura", "Ben", "Ruth", "Jack", "Clara", "Dan", "Ella",
]  # fmt: skip
PLACES = [
    "shop", "park", "school", "garden", "river", "market", "station", "library",
    "beach", "farm", "lake", "museum", "zoo", "cafe", "office", "bakery",
]  # fmt: skip
OBJECTS = [
    "book", "apple", "ball", "key", "letter", "cup", "hat", "pen", "ring", "box",
    "egg", "orange", "umbrella", "kite", "bag", "map", "coin", "flower", "drawing", "basket",
    "cake", "ticket", "toy",
]  # fmt: skip
# Adjectives that describe objects ("a shiny key", "the key is shiny") ...
OBJECT_ADJECTIVES = [
    "red", "blue", "green", "yellow", "small", "big", "old", "new",
    "heavy", "shiny", "little", "round", "soft", "broken", "empty", "strange",
    "purple", "white", "black", "tiny", "pretty", "dirty", "clean",
]  # fmt: skip
# ... and adjectives that describe people ("Mary was tired .") or the day ("a long day").
MOODS = ["happy", "sad", "tired", "hungry", "angry", "excited"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm"]
ADJECTIVES = OBJECT_ADJECTIVES + MOODS + WEATHER + ["long"]
TIMES = ["morning", "afternoon", "evening"]

# Verbs that move an object from one person to another: the IOI templates use them.
TRANSFER_VERBS = [
    "gave", "handed", "showed", "sent", "passed", "brought", "threw", "offered", "lent",
]  # fmt: skip
OTHER_VERBS = [
    "went", "walked", "found", "saw", "liked", "took", "lost", "bought", "said", "asked",
    "counted", "looked", "met", "had", "arrived", "working", "like", "go", "have", "has",
    "played", "put", "waited", "helped", "smiled", "ran", "carried", "wanted", "dropped",
]  # fmt: skip
VERBS = TRANSFER_VERBS + OTHER_VERBS

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
FUNCTION_WORDS = [
    # capitalised sentence openers are their own tokens
    "When", "Then", "After", "While", "Afterwards", "Later", "As", "In", "It",
    "the", "a", "an", "to", "at", "and", "of", "with", "in", "on", "for", "near", "home",
    "again", "not", "very", "is", "was", "were", "are", "did", "can", "I", "you", "it",
    "do", "let", "us", "where", "thank", "good", "today", "day", "friend", "table",
] + TIMES + NUMBERS  # fmt: skip

VOCAB: list[str] = (
    SPECIAL_TOKENS
    + PUNCTUATION
    + [QUOTE]
    + FUNCTION_WORDS
    + NAMES
    + PLACES
    + OBJECTS
    + VERBS
    + ADJECTIVES
)
assert VOCAB[0] == BOS and VOCAB[1] == PAD
assert len(VOCAB) == len(set(VOCAB)), "a word is listed twice in the vocabulary"

ROLES = ("name", "place", "object", "verb", "adj", "func", "punct", "quote", "special")
_ROLE_OF: dict[str, str] = {}
for _role, _words in [
    ("special", SPECIAL_TOKENS),
    ("punct", PUNCTUATION),
    ("quote", [QUOTE]),
    ("func", FUNCTION_WORDS),
    ("name", NAMES),
    ("place", PLACES),
    ("object", OBJECTS),
    ("verb", VERBS),
    ("adj", ADJECTIVES),
]:
    for _w in _words:
        _ROLE_OF[_w] = _role
_NAME_SET = frozenset(NAMES)


def role_of(word: str) -> str:
    """The part of speech of a vocabulary word: one of :data:`ROLES`.

    Every word has exactly one role. ``"func"`` covers function words, numbers and the
    few glue nouns (``day``, ``friend``, ``home``).
    """
    try:
        return _ROLE_OF[word]
    except KeyError:
        raise ValueError(f"{word!r} is not a word of the course language") from None


def _article(next_word: str) -> str:
    """``"an"`` before a vowel sound, else ``"a"`` (all our words are regular)."""
    return "an" if next_word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------
# Sentence templates.
# ---------------------------------------------------------------------------------------

# Indirect-object identification. Each template is the *prompt*: it ends with "to", and the
# full sentence is the prompt followed by "{IO} .". Slots:
#   {A} {B}     the two names, in the order given by "ABBA" (A=IO, B=S) or "BABA" (A=S, B=IO)
#   {S}         the subject, repeated
#   {PLACE}     a place;  {OBJECT} an object;  {A_OBJECT} "a"/"an" + object (two tokens)
# Every slot is a fixed number of tokens, so all prompts of one template have the same length
# and the same positions for IO, S1, S2 and END.
IOI_TEMPLATES: list[str] = [
    "When {A} and {B} went to the {PLACE} , {S} gave {A_OBJECT} to",
    "Then , {A} and {B} had a long day at the {PLACE} . {S} handed {A_OBJECT} to",
    "After {A} and {B} went to the {PLACE} , {S} showed the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE} , {S} sent {A_OBJECT} to",
    "Then , {A} and {B} went to the {PLACE} . {S} passed the {OBJECT} to",
    "When {A} and {B} arrived at the {PLACE} , {S} brought {A_OBJECT} to",
    "Afterwards , {A} and {B} met at the {PLACE} . {S} threw the {OBJECT} to",
    "Later , {A} and {B} were at the {PLACE} . {S} offered the {OBJECT} to",
    "As {A} and {B} walked to the {PLACE} , {S} handed the {OBJECT} to",
    "In the morning , {A} and {B} went to the {PLACE} . {S} lent {A_OBJECT} to",
]
IOI_ORDERS = ("ABBA", "BABA")

# Story sentences. Slots:
#   {A} {B}   two different characters of the story
#   {PLACE}   one of the story's places
#   {NEW}     introduces an object: "a ball", "an old key"
#   {OBJ}     refers to an object: "the ball", "the old key" (one seen before, when possible)
#   {THE_OBJ} {ITS_ADJ}  "the ball" ... "red": an object and its (consistent) adjective
#   {MOOD}    happy / sad / ...        {WEATHER} sunny / rainy / ...
#   {TIME}    morning / afternoon / evening      {COUNT}  "two , three , four"
STORY_TEMPLATES: list[str] = [
    "{A} went to the {PLACE} .",
    "{A} walked to the {PLACE} with {B} .",
    "{A} and {B} walked to the {PLACE} .",
    "{A} found {NEW} at the {PLACE} .",
    "{A} bought {NEW} at the {PLACE} .",
    "{A} saw {B} at the {PLACE} .",
    "Later , {A} met {B} at the {PLACE} .",
    "{A} liked {OBJ} .",
    "{A} took {OBJ} home .",
    "{A} lost {OBJ} again .",
    "{A} looked at {OBJ} with {B} .",
    "{A} was a friend of {B} .",
    "{A} was {MOOD} .",
    "{A} and {B} were very {MOOD} .",
    "{A} counted {COUNT} .",
    "In the {TIME} , {A} went to the {PLACE} .",
    "It was a {WEATHER} day .",
    "{A} played with {OBJ} in the {PLACE} .",
    "{A} put {OBJ} on the table .",
    "{A} waited for {B} at the {PLACE} .",
    "{A} helped {B} with {OBJ} .",
    "{A} smiled at {B} .",
    "{A} ran to the {PLACE} .",
    "{A} carried {OBJ} to the {PLACE} .",
    "{A} did not like {OBJ} .",
    "{A} wanted {NEW} .",
    "{A} dropped {OBJ} near the {PLACE} .",
    # quotations
    '{A} said " {THE_OBJ} is {ITS_ADJ} . "',
    '{A} said " I like {OBJ} . "',
    '{A} asked " where is {OBJ} ? "',
    '{A} said " {B} has {OBJ} . "',
    '{A} asked {B} " do you have {OBJ} ? "',
    '{A} said " let us go to the {PLACE} . "',
    '{A} said " thank you , {B} . "',
    '{A} said " good morning , {B} . "',
    '{A} asked " can I have {OBJ} ? "',
    '{A} said " it is {WEATHER} today . "',
    '{A} asked {B} " are you {MOOD} ? "',
]


_IOI_SLOTS = {"{A}", "{B}", "{S}", "{PLACE}", "{OBJECT}", "{A_OBJECT}"}
_STORY_SLOTS = {"{A}", "{B}", "{PLACE}", "{NEW}", "{OBJ}", "{THE_OBJ}", "{ITS_ADJ}", "{MOOD}",
                "{WEATHER}", "{TIME}", "{COUNT}"}  # fmt: skip


def _check_templates() -> None:
    """Every word of every template must be a known slot or a vocabulary word."""
    for templates, slots in [(IOI_TEMPLATES, _IOI_SLOTS), (STORY_TEMPLATES, _STORY_SLOTS)]:
        for template in templates:
            for word in template.split():
                if word not in slots and word not in _ROLE_OF:
                    raise AssertionError(f"{word!r} in template {template!r} is unknown")
        assert all(t.split()[-1] == "to" for t in IOI_TEMPLATES), "IOI prompts end with 'to'"


_check_templates()

# ---------------------------------------------------------------------------------------
# Annotations.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """The ground truth about one token.

    Attributes:
        word: the token as written.
        role: part of speech, one of :data:`ROLES` (fixed per word, see :func:`role_of`).
        entity: for names, the name itself; else ``None``.
        in_quote: ``True`` for tokens strictly between an opening and a closing quotation
            mark (the marks themselves are ``False``).
        first_mention: for names, ``True`` at the first time this name occurs in the
            document; ``False`` everywhere else.
        ioi_role: inside IOI sentences only: ``"IO"`` and ``"S1"`` for the two names in
            "A and B", ``"S2"`` for the repeated subject, ``"END"`` for the ``to`` right
            before the answer, and ``"ANSWER"`` for the answer itself (the IO again).
            ``None`` everywhere else.
    """

    word: str
    role: str
    entity: str | None = None
    in_quote: bool = False
    first_mention: bool = False
    ioi_role: str | None = None


# A "raw" sentence is what the constructions produce: (word, ioi_role) pairs. The
# annotations that depend on context (in_quote, first_mention) are added by _annotate.
RawSentence = list[tuple[str, "str | None"]]
_BOS_INFO = TokenInfo(BOS, "special")


def _annotate(raw: Iterable[tuple[str, str | None]]) -> list[TokenInfo]:
    """Turn raw (word, ioi_role) pairs of ONE document into TokenInfos."""
    infos = []
    seen_names: set[str] = set()
    in_quote = False
    for word, ioi_role in raw:
        if word == QUOTE:
            in_quote = not in_quote
            infos.append(TokenInfo(word, "quote"))
            continue
        if word in _NAME_SET:
            first = word not in seen_names
            seen_names.add(word)
            infos.append(TokenInfo(word, "name", word, in_quote, first, ioi_role))
        else:
            infos.append(TokenInfo(word, _ROLE_OF[word], None, in_quote, False, ioi_role))
    return infos


# ---------------------------------------------------------------------------------------
# Tokenizers.
# ---------------------------------------------------------------------------------------


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise ValueError(f"decode takes one sequence, got a tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class Tokenizer:
    """Word-level tokenizer of the course language.

    ``encode`` splits on whitespace, so punctuation and quotation marks must be separated
    by spaces, exactly as the generator writes them: ``Mary said " hi . "``.

    >>> tok = Tokenizer()
    >>> tok.encode("Mary went to the park .", bos=True)[0] == tok.bos_id
    True
    """

    def __init__(self, vocab: list[str] | None = None) -> None:
        self.vocab: list[str] = list(VOCAB if vocab is None else vocab)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        if len(self.stoi) != len(self.vocab):
            raise ValueError("the vocabulary has duplicate words")
        self.bos_id: int = self.stoi[BOS]
        self.pad_id: int = self.stoi[PAD]

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of ``text`` (split on whitespace); ``bos=True`` prepends ``<bos>``."""
        ids = [self.bos_id] if bos else []
        stoi = self.stoi
        for word in text.split():
            try:
                ids.append(stoi[word])
            except KeyError:
                raise ValueError(
                    f"unknown word {word!r}: it is not in the course vocabulary "
                    f"({len(self.vocab)} words). Words are case-sensitive, and punctuation "
                    "must be separated by spaces."
                ) from None
        return ids

    def decode(self, ids) -> str:
        """Words for ``ids`` (a list, a 1-D tensor or a single id), joined with spaces."""
        return " ".join(self.vocab[i] for i in _as_id_list(ids))

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"Tokenizer({len(self)} words)"


class CharTokenizer:
    """Character-level tokenizer for any plain text a learner brings.

    Same interface as :class:`Tokenizer`: ids 0 and 1 are ``<bos>`` and ``<pad>``, then the
    characters of the text in sorted order. ``decode`` joins with no separator.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer takes single characters")
        self.vocab: list[str] = [BOS, PAD] + chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.vocab)}
        self.bos_id: int = 0
        self.pad_id: int = 1

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """A tokenizer whose vocabulary is every character that occurs in ``text``."""
        return cls(text)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = [self.bos_id] if bos else []
        stoi = self.stoi
        for ch in text:
            try:
                ids.append(stoi[ch])
            except KeyError:
                raise ValueError(f"unknown character {ch!r}: it was not in the text this "
                                 "tokenizer was built from") from None
        return ids

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in _as_id_list(ids))

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self)} tokens)"


# ---------------------------------------------------------------------------------------
# The generator.
# ---------------------------------------------------------------------------------------


def _ioi_raw(template: int, io: str, s: str, order: str, place: str, obj: str) -> RawSentence:
    """One full IOI sentence (prompt + answer + ".") as raw (word, ioi_role) pairs."""
    if order not in IOI_ORDERS:
        raise ValueError(f"order must be 'ABBA' or 'BABA', got {order!r}")
    if io == s:
        raise ValueError(f"the two names of an IOI sentence must differ, got {io!r} twice")
    first, second = (io, s) if order == "ABBA" else (s, io)
    first_role, second_role = ("IO", "S1") if order == "ABBA" else ("S1", "IO")
    out: RawSentence = []
    for slot in IOI_TEMPLATES[template].split():
        if slot == "{A}":
            out.append((first, first_role))
        elif slot == "{B}":
            out.append((second, second_role))
        elif slot == "{S}":
            out.append((s, "S2"))
        elif slot == "{PLACE}":
            out.append((place, None))
        elif slot == "{OBJECT}":
            out.append((obj, None))
        elif slot == "{A_OBJECT}":
            out += [(_article(obj), None), (obj, None)]
        else:
            out.append((slot, None))
    out[-1] = ("to", "END")  # every template ends with "to"
    out += [(io, "ANSWER"), (".", None)]
    return out


class LanguageGenerator:
    """Seeded generator of documents in the course language.

    Args:
        seed: everything generated is a deterministic function of the seed (and of the
            sequence of calls made: each call advances the generator's own RNG).
        ioi_fraction: probability that a sentence of a story is an IOI sentence.
        names: the names stories may use (default :data:`NAMES`); pass a subset to hold
            names out for evaluation.
        ioi_templates: indices into :data:`IOI_TEMPLATES` that stories may use (default: all).

    A "sentence" here is one construction; IOI templates that start with "Then , ..." are
    two English sentences but one construction.
    """

    def __init__(
        self,
        seed: int = 0,
        ioi_fraction: float = 0.3,
        *,
        names: list[str] | None = None,
        ioi_templates: list[int] | None = None,
        min_sentences: int = 3,
        max_sentences: int = 8,
    ) -> None:
        if not 0.0 <= ioi_fraction <= 1.0:
            raise ValueError(f"ioi_fraction must be in [0, 1], got {ioi_fraction}")
        self.names = list(NAMES if names is None else names)
        unknown = [n for n in self.names if n not in _NAME_SET]
        if unknown or len(self.names) < 2:
            raise ValueError(f"names must be at least two of NAMES; bad: {unknown or self.names}")
        n_templates = len(IOI_TEMPLATES)
        self.ioi_templates = list(range(n_templates) if ioi_templates is None else ioi_templates)
        if not self.ioi_templates or not all(0 <= t < n_templates for t in self.ioi_templates):
            raise ValueError(f"ioi_templates must be indices into IOI_TEMPLATES: {ioi_templates}")
        if not 1 <= min_sentences <= max_sentences:
            raise ValueError("need 1 <= min_sentences <= max_sentences")
        self.seed = seed
        self.ioi_fraction = ioi_fraction
        self.min_sentences = min_sentences
        self.max_sentences = max_sentences
        self.rng = random.Random(seed)

    # -- public API ----------------------------------------------------------------------

    def story(self) -> list[TokenInfo]:
        """One document: ``<bos>`` followed by a 3-8 sentence story."""
        return [_BOS_INFO] + _annotate(w for sentence in self._story_raw() for w in sentence)

    def story_sentences(self) -> list[list[TokenInfo]]:
        """Like :meth:`story` (without ``<bos>``), split into its sentences (constructions).

        Annotations are those of the whole document (``first_mention`` spans sentences).
        """
        raw = self._story_raw()
        flat = _annotate(w for sentence in raw for w in sentence)
        out, start = [], 0
        for sentence in raw:
            out.append(flat[start : start + len(sentence)])
            start += len(sentence)
        return out

    def ioi_sentence(
        self,
        template: int | None = None,
        names: tuple[str, str] | None = None,
        order: str | None = "ABBA",
    ) -> list[TokenInfo]:
        """One IOI sentence, annotated as a document of its own (no ``<bos>``).

        Args:
            template: index into :data:`IOI_TEMPLATES` (default: random among this
                generator's ``ioi_templates``).
            names: ``(io, s)`` -- the indirect object (the answer) and the subject. Default:
                two random names from this generator's ``names``.
            order: ``"ABBA"`` (IO first: "When Mary and John ..., John gave ... to Mary"),
                ``"BABA"`` (S first: "When John and Mary ..., John gave ... to Mary"), or
                ``None`` for a random one.
        """
        rng = self.rng
        if template is None:
            template = rng.choice(self.ioi_templates)
        io, s = rng.sample(self.names, 2) if names is None else names
        if order is None:
            order = rng.choice(IOI_ORDERS)
        return _annotate(_ioi_raw(template, io, s, order, rng.choice(PLACES), rng.choice(OBJECTS)))

    def documents(self, n_documents: int) -> Iterator[list[str]]:
        """The words of ``n_documents`` stories (each list starts with ``<bos>``)."""
        for _ in range(n_documents):
            yield [BOS] + [w for sentence in self._story_raw() for w, _ in sentence]

    def text(self, n_documents: int) -> str:
        """``n_documents`` stories as text: one document per line, each starting with
        ``<bos>``. ``Tokenizer().encode(text)`` gives exactly the token stream that
        :func:`token_dataset` cuts into rows."""
        return "\n".join(" ".join(words) for words in self.documents(n_documents))

    # -- internals -----------------------------------------------------------------------

    def _story_raw(self) -> list[RawSentence]:
        """A story as a list of raw sentences. All randomness of a story is drawn here."""
        rng = self.rng
        n_characters = 3 if len(self.names) >= 3 and rng.random() < 0.4 else 2
        characters = rng.sample(self.names, n_characters)
        places = rng.sample(PLACES, 2)
        objects: dict[str, str | None] = {}  # object -> its adjective (None: not described)
        sentences = []
        for _ in range(rng.randint(self.min_sentences, self.max_sentences)):
            if rng.random() < self.ioi_fraction:
                io, s = rng.sample(characters, 2)
                sentences.append(
                    _ioi_raw(
                        rng.choice(self.ioi_templates), io, s, rng.choice(IOI_ORDERS),
                        rng.choice(places), rng.choice(OBJECTS),
                    )
                )  # fmt: skip
            else:
                sentences.append(self._story_sentence(characters, places, objects))
        return sentences

    def _story_sentence(
        self, characters: list[str], places: list[str], objects: dict[str, str | None]
    ) -> RawSentence:
        rng = self.rng
        template = rng.choice(STORY_TEMPLATES)
        a, b = rng.sample(characters, 2)

        def some_object() -> str:
            # Mostly talk about objects the story already mentioned.
            if objects and rng.random() < 0.75:
                return rng.choice(list(objects))
            obj = rng.choice(OBJECTS)
            objects.setdefault(obj, None)
            return obj

        words: list[str] = []
        its_adj = None
        for slot in template.split():
            if slot == "{A}":
                words.append(a)
            elif slot == "{B}":
                words.append(b)
            elif slot == "{PLACE}":
                words.append(rng.choice(places))
            elif slot == "{NEW}":
                obj = rng.choice(OBJECTS)
                adj = rng.choice(OBJECT_ADJECTIVES) if rng.random() < 0.5 else None
                if objects.get(obj) is not None:
                    adj = objects[obj]  # keep a described object's adjective consistent
                objects[obj] = adj
                np = [adj, obj] if adj else [obj]
                words += [_article(np[0])] + np
            elif slot == "{OBJ}":
                obj = some_object()
                words += ["the", objects[obj], obj] if objects[obj] else ["the", obj]
            elif slot == "{THE_OBJ}":
                obj = some_object()
                if objects[obj] is None:
                    objects[obj] = rng.choice(OBJECT_ADJECTIVES)
                its_adj = objects[obj]
                words += ["the", obj]
            elif slot == "{ITS_ADJ}":
                words.append(its_adj)
            elif slot == "{MOOD}":
                words.append(rng.choice(MOODS))
            elif slot == "{WEATHER}":
                words.append(rng.choice(WEATHER))
            elif slot == "{TIME}":
                words.append(rng.choice(TIMES))
            elif slot == "{COUNT}":
                length = rng.randint(3, 5)
                start = rng.randint(0, len(NUMBERS) - length)
                for i, number in enumerate(NUMBERS[start : start + length]):
                    words += [number, ","] if i < length - 1 else [number]
            else:
                words.append(slot)
        return [(w, None) for w in words]


# ---------------------------------------------------------------------------------------
# Evaluation prompts and training data.
# ---------------------------------------------------------------------------------------


def ioi_prompts(
    n: int,
    seed: int = 0,
    names: list[str] | None = None,
    templates: list[int] | None = None,
) -> list[dict]:
    """``n`` IOI prompts for evaluation, half ABBA and half BABA (alternating).

    Each prompt is a dict ``{"prompt", "io", "s", "template", "order"}``; the prompt is text
    without ``<bos>`` that ends with ``to``, and the correct next word is ``io``. Prompts
    of the same template have the same number of tokens. Pass disjoint ``names`` (a subset
    of :data:`NAMES`) or ``templates`` (indices into :data:`IOI_TEMPLATES`) to build
    held-out sets.
    """
    rng = random.Random(seed)
    names = list(NAMES if names is None else names)
    templates = list(range(len(IOI_TEMPLATES)) if templates is None else templates)
    if len(names) < 2:
        raise ValueError("ioi_prompts needs at least two names")
    prompts = []
    for i in range(n):
        template = rng.choice(templates)
        io, s = rng.sample(names, 2)
        order = IOI_ORDERS[i % 2]
        raw = _ioi_raw(template, io, s, order, rng.choice(PLACES), rng.choice(OBJECTS))
        prompt = " ".join(w for w, _ in raw[:-2])  # drop the answer and the full stop
        prompts.append({"prompt": prompt, "io": io, "s": s, "template": template, "order": order})
    return prompts


def _rows(n_tokens: int, seq_len: int, seed: int, tokenizer, with_info: bool, **generator_kwargs):
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    tokenizer = Tokenizer() if tokenizer is None else tokenizer
    n_rows = n_tokens // seq_len
    generator = LanguageGenerator(seed, **generator_kwargs)
    bos = tokenizer.bos_id
    word_level = isinstance(tokenizer, Tokenizer)
    if with_info and not word_level:
        raise ValueError("token_dataset_with_info needs a word-level Tokenizer")

    # A stream of documents, each starting with <bos>. Each row takes at most seq_len
    # tokens of it, so this is always long enough.
    stream: list[int] = []
    infos: list[TokenInfo] = []
    while len(stream) < n_rows * seq_len:
        raw = generator._story_raw()
        words = [w for sentence in raw for w, _ in sentence]
        if word_level:
            stoi = tokenizer.stoi
            stream.append(bos)
            stream += [stoi[w] for w in words]
        else:
            stream += tokenizer.encode(" ".join(words), bos=True)
        if with_info:
            infos.append(_BOS_INFO)
            infos += _annotate(w for sentence in raw for w in sentence)

    # Each row is <bos> + the next seq_len - 1 tokens (skipping a document's own <bos> when
    # a row starts exactly at a document boundary, so a row never starts "<bos> <bos>").
    rows, row_infos, pos = [], [], 0
    for _ in range(n_rows):
        if stream[pos] == bos:
            pos += 1
        rows.append([bos] + stream[pos : pos + seq_len - 1])
        if with_info:
            row_infos.append([_BOS_INFO] + infos[pos : pos + seq_len - 1])
        pos += seq_len - 1
    tokens = torch.tensor(rows, dtype=torch.long).reshape(n_rows, seq_len)
    return tokens, row_infos


def token_dataset(
    n_tokens: int, seq_len: int, seed: int = 0, tokenizer=None, **generator_kwargs
) -> torch.LongTensor:
    """A seeded training set: ``LongTensor[n_tokens // seq_len, seq_len]``.

    The stream of documents (each beginning with ``<bos>``, as in
    :meth:`LanguageGenerator.text`) is cut into rows; every row starts with ``<bos>`` and
    continues the stream where the previous row stopped, so a row may start mid-document
    and may contain the ``<bos>`` of the next document.

    ``generator_kwargs`` go to :class:`LanguageGenerator` (e.g. ``ioi_fraction=0.5`` or
    ``names=NAMES[:16]`` to hold the other names out). ``tokenizer`` defaults to
    :class:`Tokenizer`; a :class:`CharTokenizer` covering the language also works.
    """
    return _rows(n_tokens, seq_len, seed, tokenizer, False, **generator_kwargs)[0]


def token_dataset_with_info(
    n_tokens: int, seq_len: int, seed: int = 0, tokenizer=None, **generator_kwargs
) -> tuple[torch.LongTensor, list[list[TokenInfo]]]:
    """:func:`token_dataset` plus the ground truth: ``infos[i][j]`` describes ``tokens[i, j]``.

    Same arguments, same tokens. Annotations are those of the token's document, so a name
    whose document started in an earlier row has ``first_mention=False`` here.
    """
    return _rows(n_tokens, seq_len, seed, tokenizer, True, **generator_kwargs)
