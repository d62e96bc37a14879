"""Tests for utils/zoo.py: safetensors + JSON checkpoints, validation, no pickle, the model zoo."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from utils import zoo
from utils.transformer import Config, Transformer
from utils.zoo import checkpoint_dir, load_checkpoint, load_model, save_checkpoint

CFG = Config(d_vocab=47, n_ctx=12, d_model=24, n_heads=3, d_head=8, d_mlp=48, n_layers=2)


def trained_looking(cfg: Config = CFG, seed: int = 5) -> Transformer:
    """A model whose every parameter differs from a freshly built one (gains and biases too)."""
    model = Transformer(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def tokens(cfg: Config = CFG) -> torch.Tensor:
    return torch.randint(0, cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))


def test_round_trip_gives_identical_logits(tmp_path):
    model = trained_looking()
    save_checkpoint(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt.safetensors").is_file() and (tmp_path / "ckpt.json").is_file()
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, Transformer) and loaded.cfg == CFG
    t = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(t), model(t))
        # Not a coincidence of seeds: a fresh model of this config differs.
        assert not torch.equal(Transformer(CFG)(t), model(t))
    sd, loaded_sd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == loaded_sd.keys() and all(torch.equal(sd[k], loaded_sd[k]) for k in sd)
    assert loaded.device == torch.device("cpu")
    assert loaded.hook_dict.keys() == model.hook_dict.keys()  # hooks set up


@pytest.mark.parametrize("as_str", [False, True])
@pytest.mark.parametrize("suffix", ["", ".safetensors", ".json"])
def test_path_may_be_given_with_either_suffix(tmp_path, suffix, as_str):
    model = trained_looking()
    path = tmp_path / f"m{suffix}"
    save_checkpoint(model, str(path) if as_str else path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    loaded = load_checkpoint(str(path) if as_str else path)
    assert torch.equal(loaded.embed.W_E, model.embed.W_E)


@pytest.mark.parametrize(
    "cfg",
    [CFG.replace(attn_only=True), CFG.replace(normalization=None), CFG.replace(act_fn="relu", layer_norm_eps=1e-6)],
    ids=["attn_only", "no_norm", "relu"],
)
def test_round_trip_keeps_config_variants(tmp_path, cfg):
    model = trained_looking(cfg)
    save_checkpoint(model, tmp_path / "v")
    loaded = load_checkpoint(tmp_path / "v")
    assert loaded.cfg == cfg
    with torch.no_grad():
        assert torch.equal(loaded(tokens(cfg)), model(tokens(cfg)))


def test_json_has_config_metadata_and_format(tmp_path):
    meta = {"trained_on": "induction task", "steps": 1000, "loss": 0.123}
    save_checkpoint(trained_looking(), tmp_path / "ckpt", metadata=meta)
    data = json.loads((tmp_path / "ckpt.json").read_text())
    assert data == {"config": CFG.to_dict(), "metadata": meta, "format": 1}
    assert Config.from_dict(data["config"]) == CFG
    # The weights file holds exactly the state dict, by name.
    assert set(load_file(tmp_path / "ckpt.safetensors")) == set(Transformer(CFG).state_dict())


def test_metadata_defaults_to_empty(tmp_path):
    save_checkpoint(trained_looking(), tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt.json").read_text())["metadata"] == {}


def test_unserialisable_metadata_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(trained_looking(), tmp_path / "ckpt", metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


# ---- validation --------------------------------------------------------------------------------
def _rewrite_weights(path, change):
    tensors = load_file(path.with_suffix(".safetensors"))
    change(tensors)
    save_file(tensors, path.with_suffix(".safetensors"))


def test_missing_tensor_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(trained_looking(), path)
    _rewrite_weights(path, lambda t: (t.pop("blocks.1.attn.W_Q"), t.pop("ln_final.b")))
    with pytest.raises(ValueError, match=r"missing tensors: blocks\.1\.attn\.W_Q, ln_final\.b"):
        load_checkpoint(path)


def test_unexpected_tensor_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(trained_looking(), path)
    _rewrite_weights(path, lambda t: t.__setitem__("blocks.0.mystery", torch.zeros(3)))
    with pytest.raises(ValueError, match=r"unexpected tensors: blocks\.0\.mystery"):
        load_checkpoint(path)


def test_wrong_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(trained_looking(), path)
    _rewrite_weights(path, lambda t: t.__setitem__("embed.W_E", torch.zeros(CFG.d_vocab + 1, CFG.d_model)))
    with pytest.raises(ValueError, match=r"embed\.W_E \(file \(48, 24\), model \(47, 24\)\)"):
        load_checkpoint(path)


def test_config_that_disagrees_with_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(trained_looking(), path)
    data = json.loads(path.with_suffix(".json").read_text())
    data["config"]["attn_only"] = True
    path.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unexpected tensors: .*blocks\.0\.mlp\.W_in"):
        load_checkpoint(path)


def test_bad_json_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(trained_looking(), path)
    data = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text(json.dumps({**data, "config": {**data["config"], "n_experts": 4}}))
    with pytest.raises(ValueError, match="n_experts"):
        load_checkpoint(path)


def test_missing_file_is_a_clear_error(tmp_path):
    save_checkpoint(trained_looking(), tmp_path / "ckpt")
    (tmp_path / "ckpt.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt\.json"):
        load_checkpoint(tmp_path / "ckpt")


def test_loader_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    model = trained_looking()
    save_checkpoint(model, path)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.unembed.W_U, model.unembed.W_U)
    # ...and the weights file is not a pickle/zip under a safetensors name.
    head = path.with_suffix(".safetensors").read_bytes()[:16]
    assert not head.startswith(b"PK") and not head.startswith(b"\x80")


# ---- the model zoo ---------------------------------------------------------------------------------
def test_checkpoint_dir_is_inside_the_package():
    import utils

    assert checkpoint_dir() == zoo.Path(utils.__file__).resolve().parent / "checkpoints"


def test_load_model_by_name_and_unknown_name_lists_available(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "checkpoint_dir", lambda: tmp_path)
    alpha, beta = trained_looking(seed=1), trained_looking(seed=2)
    save_checkpoint(alpha, tmp_path / "alpha")
    # A dotted name needs its suffix spelled out (the path goes through with_suffix).
    save_checkpoint(beta, tmp_path / "beta.v2.safetensors")
    (tmp_path / "orphan.safetensors").write_bytes(b"")  # no JSON: not a checkpoint
    assert zoo.available_models() == ["alpha", "beta.v2"]
    assert torch.equal(load_model("beta.v2").embed.W_E, beta.embed.W_E)
    assert torch.equal(load_model("alpha").embed.W_E, alpha.embed.W_E)
    with pytest.raises(ValueError, match=r"'nope'.*available: alpha, beta\.v2"):
        load_model("nope")
    with pytest.raises(ValueError, match="available"):
        load_model("../alpha")


def test_unknown_name_in_the_real_zoo_lists_what_is_shipped():
    with pytest.raises(ValueError, match="available") as info:
        load_model("nope")
    for name in zoo.available_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", zoo.available_models())
def test_every_shipped_checkpoint_loads(name):
    model = load_model(name)
    data = json.loads((checkpoint_dir() / f"{name}.json").read_text())
    assert model.cfg == Config.from_dict(data["config"])
    t = torch.randint(0, model.cfg.d_vocab, (1, min(8, model.cfg.n_ctx)))
    with torch.no_grad():
        assert torch.isfinite(model(t)).all()


# ---- The shipped course_lm checkpoint -----------------------------------------------------------


def test_course_lm_checkpoint_matches_its_recipe_and_writes_the_language():
    from utils import zoo
    from utils.corpus import Tokenizer, token_dataset
    from utils.sampling import generate

    model = zoo.load_model("course_lm")
    meta = json.loads((zoo.checkpoint_dir() / "course_lm.json").read_text())["metadata"]
    # The recipe's own held-out rows give exactly the loss recorded when it was trained.
    held_out = token_dataset(600_000, model.cfg.n_ctx, seed=0)[-250:]
    with torch.no_grad():
        assert model(held_out, return_type="loss").item() == pytest.approx(meta["val_loss"], abs=2e-3)
        # Fresh text from another seed: far below the unigram entropy (≈4.3 nats).
        fresh = token_dataset(20_000, model.cfg.n_ctx, seed=1234)
        assert model(fresh, return_type="loss").item() < 1.4
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    text = tokenizer.decode(generate(model, torch.tensor(tokenizer.encode("Mary went to the park .", bos=True)), 30, temperature=0))
    assert text.count(".") >= 2, text  # whole sentences, not word salad


def test_recipe_entry_point_trains_and_saves(tmp_path, capsys):
    from utils import zoo

    assert zoo.main(["train", "course_lm", "--steps", "5", "--out", str(tmp_path)]) == 0
    model = zoo.load_checkpoint(tmp_path / "course_lm.safetensors")
    meta = json.loads((tmp_path / "course_lm.json").read_text())["metadata"]
    assert meta["steps"] == 5 and meta["recipe"] == "course_lm"
    assert model.cfg.n_layers == 2
    assert zoo.main(["list"]) == 0
    assert "course_lm" in capsys.readouterr().out


def test_the_zoo_imports_no_chapter_module_until_a_recipe_is_asked_for():
    """Checkpoint I/O sits at the bottom of the import graph: importing utils.zoo loads the
    model classes, not the chapters that register recipes (utils.sae, ...)."""
    import subprocess
    import sys

    code = ("import sys, utils.zoo as z; print(sorted(m for m in sys.modules if m.startswith('utils.')));"
            "z.all_recipes(); print('utils.sae' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "utils.sae" not in out[0] and "utils.training" not in out[0], out[0]
    assert out[1] == "True"
