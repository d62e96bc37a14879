"""The toolkit follows its inputs' device and dtype. CI has no GPU, so two stand-ins catch a
function that builds its tensors on the CPU or in float32 behind the caller's back:

* the ``meta`` device (tensors with shapes but no data): every step runs, and every tensor
  that comes out is on ``meta``, as it would be on ``cuda``;
* float64: every tensor that comes out is float64 and agrees with the float32 run.

Functions that must read values (``.item()``, a data-dependent ``nonzero``: AUROC, AuxK's
dead-latent count, BatchTopK's threshold, the metrics that return Python floats) cannot run
on ``meta``; they run in the float64 test only.
"""

from __future__ import annotations

import pytest
import torch

from utils import induction as ind
from utils import patching as pat
from utils import sae as sl
from utils import sampling
from utils import toy_models as toy
from utils.transformer import Config, KVCache, Transformer

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is much faster than two, above all beside other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CFG = Config(d_vocab=30, n_ctx=12, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=2)


def _env(device: str, dtype: torch.dtype) -> dict:
    """Models and inputs on ``device`` in ``dtype``, with the same values for every dtype."""
    gen = torch.Generator().manual_seed(0)
    cpu_tokens = torch.randint(0, CFG.d_vocab, (3, 10), generator=gen)
    tokens = cpu_tokens.to(device)
    model = Transformer(CFG, seed=1).to(device=device, dtype=dtype).eval()
    attn_only = Transformer(CFG.replace(attn_only=True), seed=2).to(device=device, dtype=dtype).eval()
    tcfg = toy.ToyConfig(n_instances=3, n_features=5, n_hidden=2)
    x = torch.rand(8, 3, 5, generator=gen).to(device=device, dtype=dtype)
    acts = torch.randn(20, 16, generator=gen).to(device=device, dtype=dtype)
    saes = {}
    for arch in sl.ARCHITECTURES:
        s = sl.make_sae(sl.SAEConfig(d_in=16, d_sae=32, architecture=arch, k=3))
        saes[arch] = s.to(device=device, dtype=dtype).eval()
    return dict(tokens=tokens, cpu_tokens=cpu_tokens, model=model, attn_only=attn_only, io=tokens[:, 1], s=tokens[:, 2],
                corrupt=tokens.flip(0), toy=toy.ToyModel(tcfg).to(device=device, dtype=dtype),
                hidden_toy=toy.HiddenReluModel(tcfg).to(device=device, dtype=dtype), x=x, acts=acts, saes=saes,
                p=torch.full((3,), 0.3, device=device, dtype=dtype), importance=torch.ones(5, device=device, dtype=dtype))


def _cache(e):
    return e["model"].run_with_cache(e["tokens"])[1]


# (name, fn(env) -> tensor or tuple of tensors, runs on meta?)
CALLS = [
    ("forward", lambda e: e["model"](e["tokens"]), True),
    ("loss", lambda e: e["model"](e["tokens"], return_type="loss"), True),
    ("run_with_cache", lambda e: tuple(_cache(e).values()), True),
    ("kv cache", lambda e: e["model"](e["tokens"][:, :4], kv_cache=KVCache(CFG.n_layers)), True),
    ("decompose_resid", lambda e: _cache(e).decompose_resid(apply_ln=True), True),
    ("stack_head_results", lambda e: _cache(e).stack_head_results(apply_ln=True), True),
    ("logit_attrs", lambda e: (c := _cache(e)).logit_attrs(c.decompose_resid(), e["tokens"]), True),
    ("generate (greedy)", lambda e: sampling.generate(e["model"], e["tokens"][:, :3], 3, temperature=0).float(), False),
    ("symmetric_corruption", lambda e: pat.symmetric_corruption(e["tokens"], e["io"], e["s"]).float(), True),
    ("patch_residual", lambda e: pat.patch_residual(e["model"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("patch_block_outputs", lambda e: pat.patch_block_outputs(e["model"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("patch_head_outputs", lambda e: pat.patch_head_outputs(e["attn_only"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("patch_head_positions", lambda e: pat.patch_head_positions(e["attn_only"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("patch_head_patterns", lambda e: pat.patch_head_patterns(e["attn_only"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("attribution_patch", lambda e: pat.attribution_patch(e["attn_only"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"])), True),
    ("path_patch", lambda e: pat.path_patch(e["attn_only"], e["tokens"], e["corrupt"], pat.ld_metric(e["io"], e["s"]), senders=[(0, 0)],
                                            receivers=[(1, 1)]), True),
    ("circuit_logit_diff", lambda e: torch.tensor(pat.circuit_logit_diff(e["attn_only"], e["tokens"], e["io"], e["s"], [(0, 0)], e["corrupt"])), False),
    ("induction scores", lambda e: ind.induction_scores(_cache(e)["pattern", 1], 5), True),
    ("record_induction_scores", lambda e: ind.record_induction_scores(e["model"], e["tokens"], 5), True),
    ("head_logit_attribution", lambda e: ind.head_logit_attribution(_cache(e), e["model"], e["tokens"]), True),
    ("k_composition_scores", lambda e: ind.k_composition_scores(e["model"]), True),
    ("ov_circuit", lambda e: ind.ov_circuit(e["model"], 0, 1), True),
    ("k_composed_qk_circuit", lambda e: ind.k_composed_qk_circuit(e["model"], 0, 1), True),
    ("toy generate_batch", lambda e: toy.generate_batch(8, e["p"], 5, torch.Generator().manual_seed(0)), True),
    ("toy forward + loss", lambda e: toy.importance_weighted_loss(e["toy"](e["x"]), e["x"], e["importance"]), True),
    ("hidden ReLU toy", lambda e: e["hidden_toy"](e["x"]), True),
    ("toy geometry", lambda e: tuple(getattr(toy, f)(e["toy"].W.detach()) for f in (
        "feature_norms", "gram", "superposition", "feature_dimensionality")), True),
    ("toy counts", lambda e: tuple(getattr(toy, f)(e["toy"].W.detach()).float() for f in (
        "one_neuron_phase", "polysemantic_fraction", "antipodal_pairs")), True),
    ("SAEs encode/decode", lambda e: tuple(s(e["acts"]) for s in e["saes"].values()), True),
    ("SAE losses (training mode, no AuxK)", lambda e: tuple(s.train().loss(e["acts"])["loss"] for a, s in e["saes"].items() if a != "batchtopk"), True),
    ("SAE metrics", lambda e: (sl.fvu(e["acts"], 0.9 * e["acts"]), sl.relative_reconstruction_bias(e["acts"], 0.9 * e["acts"]),
                               sl.mmcs(e["acts"], e["acts"][:5])), True),
    ("SAE counts", lambda e: (sl.l0(e["acts"]), sl.dead_fraction(e["acts"])), True),
    ("auroc", lambda e: (sl.auroc(e["acts"][:, 0], e["acts"][:, 1] > 0), sl.auroc_matrix(e["acts"].relu(), e["acts"][:, :3] > 0)), False),
    ("splice and steer", lambda e: e["model"].run_with_hooks(e["tokens"], fwd_hooks=[
        ("blocks.0.hook_resid_post", sl.splice_hook(e["saes"]["topk"])),
        ("blocks.1.hook_resid_post", sl.steering_hook(e["acts"][0], 2.0))]), True),
    ("logit_effects", lambda e: sl.logit_effects(e["model"], e["saes"]["relu"]), True),
    ("collect_activations", lambda e: sl.collect_activations(e["model"], e["tokens"], "blocks.0.hook_resid_post"), True),
    ("sample_with_hooks", lambda e: sl.sample_with_hooks(e["model"], 4, 5).float(), False),
    # inputs made on the CPU (token ids, probe batches, data) go to the model's device
    ("CPU token ids", lambda e: e["model"](e["cpu_tokens"]), True),
    ("all_head_scores", lambda e: tuple(ind.all_head_scores(e["model"], half_len=5, batch=2).values()), True),
    ("logit_diff with CPU ids", lambda e: pat.logit_diff(e["model"](e["tokens"]), e["cpu_tokens"][:, 1], e["cpu_tokens"][:, 2]), True),
    ("train_toy_model (CPU probabilities)", lambda e: torch.tensor(toy.train_toy_model(
        e["toy"], torch.full((3,), 0.3), torch.ones(5), steps=5, progress=False)), False),
]


# Outputs that are counts, token ids, fractions of counts or Python numbers: float32 (or an
# integer type) whatever the inputs; the float64 test compares their values only.
COUNTS = {"generate (greedy)", "symmetric_corruption", "circuit_logit_diff", "toy counts", "SAE counts", "auroc",
          "sample_with_hooks", "train_toy_model (CPU probabilities)"}


def _tensors(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name,fn", [(n, f) for n, f, meta in CALLS if meta], ids=[n for n, _, meta in CALLS if meta])
def test_runs_on_the_meta_device(name, fn):
    outs = _tensors(fn(_env("meta", torch.float32)))
    assert outs and all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in outs), \
        [(type(t).__name__, getattr(t, "device", None)) for t in outs]


@pytest.mark.parametrize("name,fn", [(n, f) for n, f, _ in CALLS], ids=[n for n, _, _ in CALLS])
def test_runs_in_float64_and_agrees_with_float32(name, fn):
    torch.manual_seed(0)
    outs64 = _tensors(fn(_env("cpu", torch.float64)))
    torch.manual_seed(0)
    outs32 = _tensors(fn(_env("cpu", torch.float32)))
    for a, b in zip(outs64, outs32):
        if name not in COUNTS:
            assert a.dtype == torch.float64, f"{name}: float64 inputs gave a {a.dtype} output"
        torch.testing.assert_close(a.double(), b.double(), atol=1e-3, rtol=1e-3, msg=name)
