"""Every exercise's check passes the reference, rejects the stub, and names each catalogued mistake.

This is the proof that no check is a check that cannot fail.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.checks import CheckFailed, check, exercises

ALL = exercises()
MISTAKES = [(ex, m) for ex in ALL for m in ex.mistakes]


def stub_for(ex):
    """What a learner has before filling in the exercise: the chapter's `raise NotImplementedError()`."""
    if ex.kind == "class":
        def forward(self, *args, **kwargs):
            # YOUR CODE HERE
            raise NotImplementedError()

        return type(ex.title, (ex.reference,), {"forward": forward})

    def stub(*args, **kwargs):
        # YOUR CODE HERE
        raise NotImplementedError()

    return stub


def test_there_are_enough_exercises():
    assert len(exercises("ch01")) >= 12
    assert len(exercises("ch02")) >= 12
    assert len(exercises("ch03")) >= 10
    assert len(exercises("ch04")) >= 10
    assert len(exercises("ch06")) >= 12
    assert len(exercises("ch07")) >= 10
    assert all(ex.mistakes for ex in ALL), [ex.name for ex in ALL if not ex.mistakes]
    assert all(len(ex.cases) >= 2 for ex in ALL), "every check needs at least two inputs of different shapes"


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_reference_passes(ex, capfd):
    # A copy of the reference (check() refuses the toolkit's own object, see test_checks.py).
    impl = type(ex.title, (ex.reference,), {}) if ex.kind == "class" else (lambda *a, **k: ex.reference(*a, **k))
    assert check(ex.name, impl) is None
    out, err = capfd.readouterr()
    assert out.startswith(f"✓ {ex.name}:"), out
    assert err == "", "a passing check must write nothing to stderr (nbgrader scores stderr as failure)"


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_stub_says_not_implemented(ex):
    with pytest.raises(CheckFailed, match="not implemented yet"):
        check(ex.name, stub_for(ex))


@pytest.mark.parametrize("ex,mistake", MISTAKES, ids=[f"{ex.name}-{m.name}" for ex, m in MISTAKES])
def test_mistake_is_caught_with_its_hint(ex, mistake):
    with pytest.raises(CheckFailed) as info:
        check(ex.name, mistake.impl)
    message = str(info.value)
    assert message.startswith(f"✗ {ex.name}:"), message
    assert f"likely mistake ({mistake.name})" in message, message
    assert mistake.hint in message
    assert "input:" in message, "the verdict must name the input it used"


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_every_case_argument_varies(ex):
    """A parameter that every visible case holds fixed lets an answer that ignores it pass
    (a top-p sampler that ignores the temperature): every case key takes two values or more."""
    keys = {k for case in ex.cases for k in case} - {"seed", "describe", *ex.fixed}
    fixed = [k for k in sorted(keys) if len({repr(case.get(k)) for case in ex.cases}) < 2]
    assert not fixed, f"{ex.name}: every visible case has the same {', '.join(fixed)}"
    assert len({case.get("seed") for case in ex.cases}) == len(ex.cases), f"{ex.name}: two cases share a seed"


@pytest.mark.parametrize("ex", [ex for ex in ALL if ex.judge is None], ids=lambda ex: ex.name)
def test_mistakes_are_distinct(ex):
    """Two catalogued mistakes of one exercise must not be indistinguishable by output."""
    from utils.checks.core import close, trusted_outputs

    outs = {m.name: trusted_outputs(ex, m.impl) for m in ex.mistakes}
    ref = trusted_outputs(ex, ex.reference)
    names = list(outs)
    for i, a in enumerate(names):
        assert not all(close(x, r, ex.atol, ex.rtol) for x, r in zip(outs[a], ref)), f"{ex.name}: {a} equals the reference"
        for b in names[i + 1 :]:
            assert not all(close(x, y, ex.atol, ex.rtol) for x, y in zip(outs[a], outs[b])), f"{ex.name}: {a} == {b}"


def test_check_leaves_learner_class_untouched():
    ex = next(e for e in ALL if e.name == "layernorm")
    impl = type("LayerNorm", (ex.reference,), {"marker": 1})
    before = dict(vars(impl))
    check("layernorm", impl)
    assert dict(vars(impl)) == before
    assert isinstance(impl(ex.cases[0]["cfg"]), nn.Module)
    torch.testing.assert_close(impl(ex.cases[0]["cfg"]).w, torch.ones(ex.cases[0]["cfg"].d_model))


# ---- hidden tests (nbgrader's hidden test regions, see utils/grading) ---------------------------


# Two secrets: the quick suite runs one, the full suite both.
@pytest.mark.parametrize("secret", [1, pytest.param(987_654_321, marks=pytest.mark.slow)])
@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_reference_passes_hidden_tests(ex, secret):
    """Hidden tests draw fresh seeds for every grading run: the reference must pass whatever
    the seed, and the inputs must really change with it."""
    from utils.checks.core import collect, judge

    impl = type(ex.title, (ex.reference,), {}) if ex.kind == "class" else (lambda *a, **k: ex.reference(*a, **k))
    hidden = ex.hidden_suite(secret)
    assert len(hidden.cases) == 2 * len(ex.cases) + len(ex.hidden_cases)
    fresh = hidden.cases[len(ex.cases):]
    assert {c["seed"] for c in fresh}.isdisjoint({c.get("seed") for c in ex.cases})
    judge(hidden, collect(hidden, impl))
    assert ex.hidden_suite(secret).cases != ex.hidden_suite(secret + 1).cases


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_hidden_suite_contains_every_visible_case(ex):
    """Hidden tests are a superset of the visible check: each visible case, seed and all."""
    for secret in (0, 1, 987_654_321):
        hidden = ex.hidden_suite(secret).cases
        for case in ex.cases:
            assert case in hidden, f"{ex.name}: visible case {ex.describe(case)} is missing from the hidden suite"


@pytest.mark.parametrize("ex", [ex for ex in ALL if ex.judge is None and ex.mistakes], ids=lambda ex: ex.name)
def test_a_wrong_answer_the_visible_check_rejects_fails_the_hidden_suite_too(ex):
    """Every catalogued mistake fails the hidden suite. The suite keeps every visible case
    (tested above), so that holds by construction; this proves more: the freshly seeded cases
    *alone* reject each mistake, so hidden tests still catch it with seeds never seen.
    (Exercises with their own judge are left out: the sampling judges are statistical, and
    their visible cases are in the suite.)"""
    from dataclasses import replace

    from utils.checks.core import close, run_cases, trusted_outputs

    hidden = ex.hidden_suite(12345)
    fresh = replace(hidden, cases=hidden.cases[len(ex.cases):])
    want = trusted_outputs(fresh, ex.reference)
    for mistake in ex.mistakes:
        try:
            got = run_cases(fresh, mistake.impl, guarded=False)
        except Exception:  # the mistake crashes on a hidden input: rejected
            continue
        assert not all(close(g, w, ex.atol, ex.rtol) for g, w in zip(got, want)), \
            f"{ex.name}: mistake {mistake.name!r} passes the freshly seeded hidden cases"


def test_every_chapter_has_hidden_shapes():
    """Besides reseeding, each chapter's hidden tests include inputs of shapes the visible checks never use."""
    chapters = sorted({ex.chapter for ex in ALL})
    for chapter in chapters:
        assert any(ex.hidden_cases for ex in exercises(chapter)), f"{chapter} has no hidden extra shapes"


def test_hidden_tests_catch_code_tuned_to_the_visible_check():
    """A causal mask hard-coded for the visible sizes passes the visible check, not the hidden one."""
    from utils.checks.core import collect, judge

    def mask_up_to_nine(scores):
        future = torch.ones(9, 9, dtype=torch.bool).triu(1)
        n = scores.shape[-1]
        return scores.masked_fill(future[:n, :n] if n <= 9 else future, float("-inf"))

    check("causal_mask", mask_up_to_nine)
    hidden = exercises("ch01")[[ex.name for ex in exercises("ch01")].index("causal_mask")].hidden_suite(3)
    with pytest.raises(CheckFailed):
        judge(hidden, collect(hidden, mask_up_to_nine))
