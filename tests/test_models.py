"""geomix.models (tiny configs, pretrained tags, local checkpoints) and geomix.basemodel (the cached
embedded base model)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from geomix import basemodel, models
from geomix.config import DataConfig, ModelConfig


def _micro(**kw) -> ModelConfig:
    return ModelConfig(**{"name": "geomix-micro", "pretrained": None, **kw})


def _outputs(model: torch.nn.Module, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = tokenizer(["a red circle", "two blue squares", "a green cross left of a cyan star"])
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_tiny_configs_are_registered_and_build():
    torch.manual_seed(0)
    model, preprocess, tokenizer = models.create(_micro(init_tau=0.05))
    import open_clip

    assert {"geomix-tiny", "geomix-micro"} <= set(open_clip.list_models())
    assert math.isclose(float(model.logit_scale.detach().exp()), 20.0, rel_tol=1e-5)
    tokens = tokenizer(["a red circle"])
    assert tokens.shape == (1, models.TINY_CONFIGS["geomix-micro"]["text_cfg"]["context_length"])
    from PIL import Image

    x = preprocess(Image.new("RGB", (40, 50), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    img, txt = _outputs(model, tokenizer)
    assert img.shape == (3, 64) and txt.shape == (3, 64)


def test_unknown_name_and_tag_give_clear_errors():
    with pytest.raises(ValueError, match=r"model.name='no-such-model' is invalid"):
        models.create(ModelConfig(name="no-such-model", pretrained=None))
    # A tag the model does not have (and no such file): named, with what is allowed.
    with pytest.raises(ValueError, match=r"model.pretrained='laion2b_s34b_b79k' is invalid.*tags"):
        models.create(ModelConfig(name="geomix-micro", pretrained="laion2b_s34b_b79k"))
    with pytest.raises(ValueError, match=r"model.pretrained='not-a-tag' is invalid.*openai"):
        models.create(ModelConfig(name="ViT-B-32", pretrained="not-a-tag"))


@pytest.mark.parametrize("layout", ["raw", "wrapped", "ddp_prefix"])
def test_local_checkpoint_round_trip(tmp_path, layout):
    torch.manual_seed(1)
    model, _, tokenizer = models.create(_micro())
    state = model.state_dict()
    if layout == "ddp_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state} if layout != "raw" else state, path)

    torch.manual_seed(2)  # a different random init, so equality proves the load
    loaded, _, _ = models.create(_micro(pretrained=str(path)))
    for a, b in zip(_outputs(model, tokenizer), _outputs(loaded, tokenizer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loading_a_checkpoint_does_not_warn_no_weights_loaded(tmp_path, caplog):
    """open_clip warns "No pretrained weights loaded" on every pretrained=None build; geomix loads its own
    weights right after, so that warning must not reach the user (it did, once per trial, in sweep logs)."""
    model, _, _ = models.create(_micro())
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    with caplog.at_level("WARNING"):
        models.create(_micro(pretrained=str(path)))
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING"):  # other open_clip warnings still get through the filter
        import logging

        logging.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_mismatched_or_unreadable_checkpoint_is_a_value_error(tmp_path):
    tiny, _, _ = models.create(ModelConfig(name="geomix-tiny", pretrained=None))
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ValueError, match="does not match the model"):
        models.create(_micro(pretrained=str(path)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read it as a torch checkpoint"):
        models.create(_micro(pretrained=str(junk)))


def test_embedded_base_is_built_once_then_cached(tmp_path, monkeypatch):
    cfg = _micro(
        pretrained=models.EMBEDDED_BASE, cache_dir=str(tmp_path / "cache"), base_epochs=1,
        base_train_size=64, base_batch_size=32,
    )
    data = DataConfig(train_size=64, val_size=16, test_size=16)
    torch.manual_seed(123)
    first, _, tokenizer = basemodel.starting_model(cfg, data)
    rng_after_miss = torch.get_rng_state()
    path = basemodel.base_path(cfg, data)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))

    # A second call must be a cache hit: building again would fail loudly.
    def no_build(*a, **k):
        raise AssertionError("the base model was rebuilt instead of read from the cache")

    monkeypatch.setattr(basemodel, "_build", no_build)
    torch.manual_seed(123)
    second, _, _ = basemodel.starting_model(cfg, data)
    # Building the base does not consume the caller's RNG: a hit and a miss leave the same state behind.
    assert torch.equal(torch.get_rng_state(), rng_after_miss)
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    # The base was trained: it differs from a fresh init with the same seed.
    torch.manual_seed(0)
    fresh, _, _ = models.create(_micro())
    assert not torch.equal(fresh.visual.conv1.weight, first.visual.conv1.weight)

    # Fine-tune-only settings share the base; its recipe does not.
    assert basemodel.base_path(dataclasses.replace(cfg, cache_dir=cfg.cache_dir), dataclasses.replace(
        data, styles=("dark",), train_size=999)) == path
    assert basemodel.base_path(dataclasses.replace(cfg, base_epochs=2), data) != path
    assert basemodel.base_path(cfg, dataclasses.replace(data, base_styles=("flat",))) != path


def test_embedded_base_does_not_depend_on_the_callers_rng(tmp_path):
    """Two builds of one recipe, by callers in different RNG states, give the same weights (the cache key
    is the recipe, so the file must not depend on who happened to build it first)."""
    data = DataConfig(train_size=64, val_size=16, test_size=16)
    built = []
    for caller_seed in (1, 2):
        cfg = _micro(pretrained=models.EMBEDDED_BASE, cache_dir=str(tmp_path / f"c{caller_seed}"),
                     base_epochs=1, base_train_size=64, base_batch_size=32)
        torch.manual_seed(caller_seed)
        torch.rand(caller_seed * 7)
        built.append(basemodel.starting_model(cfg, data)[0].state_dict())
    for k in built[0]:
        assert torch.equal(built[0][k], built[1][k]), k


def test_embedded_base_build_shows_a_bar_on_request_and_it_changes_nothing(tmp_path, capsys):
    data = DataConfig(train_size=64, val_size=16, test_size=16)
    built = {}
    for progress in (True, None, False):  # None: only on a terminal, and pytest's stderr is not one
        cfg = _micro(pretrained=models.EMBEDDED_BASE, cache_dir=str(tmp_path / f"c{progress}"),
                     base_epochs=1, base_train_size=64, base_batch_size=32)
        built[progress] = basemodel.starting_model(cfg, data, progress=progress)[0].state_dict()
        err = capsys.readouterr().err
        bar = "base: " in err and "/2 [" in err  # drawn at its start (a fast close may skip 2/2)
        assert bar == (progress is True), err
    for k in built[True]:
        assert torch.equal(built[True][k], built[False][k]), k


def test_embedded_base_needs_embedded_data():
    cfg = _micro(pretrained=models.EMBEDDED_BASE)
    with pytest.raises(ValueError, match="embedded-base.*geomix.basemodel"):
        models.create(cfg)  # the factory never trains: the base is basemodel's
    with pytest.raises(ValueError, match="data.source='shapes'"):
        basemodel.starting_model(cfg, DataConfig(source="csv", path="x.csv"))
