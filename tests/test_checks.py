"""Bad learner input gets a clear verdict, never a crash; checks leave no trace."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from utils import transformer as ref
from utils.checks import CheckFailed, check


def failure(name, impl) -> str:
    with pytest.raises(CheckFailed) as info:
        check(name, impl)
    return str(info.value)


class MyLayerNorm(ref.LayerNorm):
    pass


def test_unknown_exercise_suggests_close_names():
    msg = failure("layer_norm", MyLayerNorm)
    assert "no exercise called 'layer_norm'" in msg and "'layernorm'" in msg


def test_instance_instead_of_class():
    msg = failure("layernorm", MyLayerNorm(ref.Config()))
    assert "pass the class itself" in msg


def test_none_and_wrong_type():
    assert "you passed None" in failure("layernorm", None)
    assert "expected a class" in failure("layernorm", 42)
    assert "expected a function" in failure("cross_entropy", "loss")


def test_reference_itself_is_refused():
    assert "reference implementation" in failure("layernorm", ref.LayerNorm)


def test_learner_exception_shows_learner_frames_only():
    def helper(x):
        return x @ torch.ones(3, 3)  # wrong inner size on purpose

    class Broken(ref.LayerNorm):
        def forward(self, x):
            return helper(x)

    msg = failure("layernorm", Broken)
    assert "your code raised RuntimeError" in msg
    assert "in helper" in msg and "in forward" in msg, msg
    assert "core.py" not in msg and "tests/exercises" not in msg and "module.py" not in msg, msg


def test_wrong_shape_is_named():
    class KeepdimForgotten(ref.LayerNorm):
        def forward(self, x):
            return x.mean(-1)

    msg = failure("layernorm", KeepdimForgotten)
    assert "has shape (2, 5), expected (2, 5, 16)" in msg


def test_transposed_output_is_recognised():
    class Transposed(ref.LayerNorm):
        def forward(self, x):
            return super().forward(x).transpose(-1, -2)

    assert "your output equals expected.permute(0, 2, 1)" in failure("layernorm", Transposed)


# ---- diagnosers: the kind of difference, when no catalogued mistake matches ---------------------


def diagnosis_of(name, impl) -> str:
    msg = failure(name, impl)
    lines = [line.strip() for line in msg.splitlines() if line.strip().startswith("diagnosis:")]
    assert len(lines) == 1, msg
    assert "likely mistake" not in msg, msg
    return lines[0]


def test_diagnosers_name_the_kind_of_difference_on_tensors():
    from utils.checks.core import diagnose

    gen = torch.Generator().manual_seed(0)
    want = torch.randn(2, 6, 6, generator=gen)
    cases = {
        "opposite sign": -want,
        "exactly times 6": want * 6,
        "exactly divided by sqrt(8)": want / 8 ** 0.5,
        "plus 0.3 everywhere": want + 0.3,
        "axes 1 and 2 swapped": want.transpose(1, 2),
        "shifted by 1 along axis 2": torch.cat([want[..., :1], want[..., :-1]], dim=-1),
        "in another order along axis 0": want.flip(0),
        "all zeros": torch.zeros_like(want),
        "wrong only above it": torch.where(torch.ones(6, 6, dtype=torch.bool).triu(1), want + 1, want),
        "except at index 0 of axis 1": torch.cat([want[:, :1] * 0 + 5, want[:, 1:]], dim=1),
        "within 0.": want * (1 + 0.001 * torch.randn(want.shape, generator=gen)),
        "does not change along axis 0": want[:1].expand(2, 6, 6).clone(),
        "same value (1.5)": torch.full_like(want, 1.5),
    }
    for words, got in cases.items():
        story = diagnose(got, want, 1e-5, 1e-5)
        assert story is not None and words in story, (words, story)
    assert diagnose(torch.randn(2, 6, 6, generator=gen), want, 1e-5, 1e-5) is None  # unrelated: no story
    assert diagnose(want, want, 1e-5, 1e-5) is None
    assert "opposite sign" in diagnose(-2.5, 2.5, 1e-5, 1e-5)
    assert "exactly times 48" in diagnose(48 * 0.7, 0.7, 1e-5, 1e-5)
    assert diagnose({"loss": 1.0, "out": want * 2}, {"loss": 1.0, "out": want}, 1e-5, 1e-5).startswith("your output is exactly times 2")
    assert diagnose(float("nan"), 1.0, 1e-5, 1e-5) is None  # NaN is said by the verdict itself
    codes = torch.tensor([0, 2, 1, -1, 2])
    assert "expected one + 1" in diagnose(codes + 1, codes, 0, 0)
    assert diagnose(codes.flip(0), codes, 0, 0) is None


def test_masked_scores_that_are_not_minus_inf_are_named():
    from utils.checks.core import diagnose

    scores = torch.randn(2, 5, 5)
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    story = diagnose(scores.masked_fill(upper, -1e4), scores.masked_fill(upper, float("-inf")), 1e-5, 1e-5)
    assert "-inf at 20 masked entries" in story and "-1e+04" in story and "everything else matches" in story


def test_an_uncatalogued_mistake_gets_a_diagnosis_in_the_verdict():
    class ShiftedMean(ref.LayerNorm):  # not a catalogued layernorm mistake: the output is offset by 0.1
        def forward(self, x):
            return super().forward(x) + 0.1

    assert "plus 0.1 everywhere" in diagnosis_of("layernorm", ShiftedMean)

    class ExactGelu(ref.MLP):
        def forward(self, x):
            import torch.nn.functional as F
            pre = torch.einsum("bpm,mh->bph", x, self.W_in) + self.b_in
            return torch.einsum("bph,hm->bpm", F.gelu(pre), self.W_out) + self.b_out

    msg = failure("mlp", ExactGelu)
    assert "gelu" in msg.lower() and "tanh" in msg.lower(), msg


def test_integer_dtype_is_named():
    class Ints(ref.LayerNorm):
        def forward(self, x):
            return super().forward(x).long()

    assert "dtype torch.int64, expected a floating-point tensor" in failure("layernorm", Ints)


def test_nan_is_named():
    class DividesByZero(ref.LayerNorm):
        def forward(self, x):
            return (x - x.mean(-1, keepdim=True)) / torch.zeros(()) * self.w

    msg = failure("layernorm", DividesByZero)
    assert "non-finite" in msg and "division by zero" in msg


def test_infinite_loop_is_stopped(monkeypatch):
    from utils.checks import get_exercise

    monkeypatch.setattr(get_exercise("layernorm"), "time_limit", 1.0)

    class Loops(ref.LayerNorm):
        def forward(self, x):
            while True:
                try:
                    pass
                except Exception:  # a learner's broad except must not swallow the time limit
                    pass

    msg = failure("layernorm", Loops)
    assert "more than 1 s" in msg and "infinite loop" in msg


def test_in_place_modification_is_reported():
    class InPlace(ref.LayerNorm):
        def forward(self, x):
            x -= x.mean(-1, keepdim=True)
            return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * self.w + self.b

    msg = failure("layernorm", InPlace)
    assert "modified its input `x` in place" in msg


def test_in_place_mask_is_reported():
    def mask(scores):
        n = scores.shape[-1]
        return scores.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))

    assert "modified its input `scores` in place" in failure("causal_mask", mask)


def test_wrong_parameter_names_are_explained():
    class Renamed(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(cfg.d_model))
            self.bias = nn.Parameter(torch.zeros(cfg.d_model))

        def forward(self, x):
            return x

    msg = failure("layernorm", Renamed)
    assert "missing: b, w" in msg and "unexpected: bias, weight" in msg


def test_returning_none_is_named():
    class ForgotReturn(ref.LayerNorm):
        def forward(self, x):
            super().forward(x)

    assert "should be a torch.Tensor, got NoneType" in failure("layernorm", ForgotReturn)


def test_checks_leave_global_state_alone():
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    grad = torch.is_grad_enabled()

    def sampler(logits, temperature):
        torch.set_grad_enabled(False)
        random.random()
        return torch.multinomial((logits / temperature).softmax(-1), 1).squeeze(-1)

    check("temperature", sampler)
    with pytest.raises(CheckFailed):
        check("layernorm", type("Bad", (ref.LayerNorm,), {"forward": lambda self, x: x}))
    assert torch.is_grad_enabled() == grad
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


def test_sampler_returning_floats_or_out_of_range():
    assert "integer token ids" in failure("temperature", lambda logits, t: (logits / t).softmax(-1).argmax(-1).float())
    assert "outside 0..7" in failure("temperature", lambda logits, t: torch.full(logits.shape[:1], 99))


def test_sampler_ignoring_filter_is_caught_statistically():
    msg = failure("top_k", lambda logits, k, temperature=1.0: torch.multinomial(logits.softmax(-1), 1).squeeze(-1))
    assert "should never be sampled" in msg


def test_success_prints_only_to_stdout_in_a_fresh_process(tmp_path):
    code = textwrap.dedent(
        """
        from utils import transformer as ref
        from utils.checks import check
        class LayerNorm(ref.LayerNorm):
            pass
        check("layernorm", LayerNorm)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("✓ layernorm"), proc.stdout
    assert proc.stderr == ""


def test_failure_renders_as_verdict_in_ipython():
    """IPython shows CheckFailed through _render_traceback_: the verdict without checker frames."""
    err = CheckFailed("✗ x: something")
    assert err._render_traceback_() == ["✗ x: something"]
    assert isinstance(err, AssertionError)  # nbgrader and pytest treat it as a failed test


def _counting_exercise(name="counting"):
    """A small function exercise whose reference and mistakes count their calls."""
    from utils.checks.core import Exercise, Mistake

    calls = {"reference": 0, "double": 0, "negate": 0}

    def counted(label, fn):
        def impl(x):
            calls[label] += 1
            return fn(x)
        return impl

    def run(impl, ctx):
        return {"out": impl(ctx.randn(3, 4))}

    ex = Exercise(name=name, title="f", reference=counted("reference", lambda x: x.exp()), run=run, kind="function",
                  cases=[dict(seed=1), dict(seed=2)],
                  mistakes=[Mistake("double", "hint d", counted("double", lambda x: 2 * x.exp())),
                            Mistake("negate", "hint n", counted("negate", lambda x: -x.exp()))])
    return ex, calls


def test_a_correct_answer_runs_no_mistake_and_a_second_check_reuses_the_reference():
    from utils.checks.core import collect, judge

    ex, calls = _counting_exercise("counting_correct")
    judge(ex, collect(ex, lambda x: x.exp()))
    assert calls == {"reference": 2, "double": 0, "negate": 0}  # one run per case, no mistake
    judge(ex, collect(ex, lambda x: torch.exp(x)))
    assert calls["reference"] == 2  # remembered per case
    # a suite that keeps these cases and adds one runs the reference on the new case only
    from dataclasses import replace
    judge(replace(ex, cases=ex.cases + [dict(seed=3)]), collect(replace(ex, cases=ex.cases + [dict(seed=3)]), torch.exp))
    assert calls["reference"] == 3


def test_a_wrong_answer_runs_the_mistakes_only_as_far_as_needed_and_outputs_are_copies():
    from utils.checks.core import CheckFailed, collect, judge, trusted_outputs

    ex, calls = _counting_exercise("counting_wrong")
    with pytest.raises(CheckFailed, match="hint d"):
        judge(ex, collect(ex, lambda x: 2 * x.exp()))
    assert calls["double"] == 2 and calls["negate"] == 0  # the first mistake matched
    # what a judge gets is a copy: changing it does not change what the next check compares with
    first = trusted_outputs(ex, ex.reference)
    first[0]["out"].zero_()
    assert trusted_outputs(ex, ex.reference)[0]["out"].abs().min() > 0
    assert calls["reference"] == 2
