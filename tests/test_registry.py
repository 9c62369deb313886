"""The vocabularies of geomix.registry: a mix term added through the registry is a config key, a loss term
and a trainable run with no other edit; method ids are open; one metric vocabulary."""

from __future__ import annotations

import pytest
import torch

from geomix import losses, registry, train
from geomix.config import LossConfig, MixConfig, build_config, flatten, to_dict
from geomix.losses.kernels import TermInputs


def _cosine_term(x: TermInputs, lam):
    """A throw-away term: λ times the mean (1 - cos) of the positive pairs (its value is easy to check)."""
    share = lam * (1.0 - (x.img * x.txt).sum(-1)).mean()
    return share, (x.img, x.img, x.txt)


@pytest.fixture
def cos_term():
    term = registry.MixTerm("cos", "cos", "cos-Mix", _cosine_term, uses_partners=False)
    registry.register_term(term)
    try:
        yield term
    finally:
        registry.unregister_term("cos")


def test_a_registered_term_is_a_config_key_and_a_loss_term(cos_term):
    cfg = build_config(overrides=["loss.w_cos=0.5", "mix.cos.policy=fixed", "mix.cos.value=0.4"])
    assert cfg.loss.w_cos == 0.5 and cfg.loss.active_terms == ("cos",) and cfg.mix.cos.value == 0.4
    flat = flatten(to_dict(cfg))
    assert flat["loss.w_cos"] == 0.5 and flat["mix.cos.policy"] == "fixed"  # result columns follow
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    total, terms = losses.MixLoss(cfg.loss, cfg.mix)(img, txt, 10.0, epoch=0, step=0, total_steps=1)
    expected_term = 0.4 * (1.0 - (img * txt).sum(-1)).mean()
    assert torch.allclose(terms["cos"], expected_term)
    assert torch.allclose(total, losses.clip_loss(img, txt, 10.0) + 0.5 * expected_term)
    assert terms["lam_cos"].item() == pytest.approx(0.4)


def test_a_registered_term_trains_one_step(cos_term):
    cfg = build_config(overrides=[
        "model.name=geomix-micro", "model.pretrained=null", "data.train_size=32", "data.val_size=16",
        "data.test_size=16", "optim.batch_size=16", "optim.epochs=1", "optim.max_steps=1", "run.eval_every=0",
        "run.progress=false", "run.report_every=1", "loss.w_cos=1.0",
    ])

    class Recorder:
        reports: list[dict] = []

        def report(self, metrics, checkpoint_dir):
            self.reports.append(dict(metrics))

        def initial_checkpoint(self):
            return None

    rec = Recorder()
    result = train.run(cfg, hooks=rec)
    assert result["status"] == "completed" and result["steps"] == 1
    step = rec.reports[0]
    assert step["step"] == 1 and step["loss_cos"] > 0 and "lam_cos" in step
    assert step["train_loss"] == pytest.approx(step["loss_clip"] + step["loss_cos"], rel=1e-5)


def test_unknown_terms_are_named_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"loss.w_cos=1.0 is invalid: allowed a registered mix term: m2"):
        LossConfig(w_cos=1.0)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) loss.w_cos"):
        build_config(overrides=["loss.w_cos=1.0"])
    with pytest.raises(ValueError, match="not yet registered"):
        registry.register_term(registry.MixTerm("m2", "x", "x", _cosine_term))
    with pytest.raises(ValueError, match="term name='M 2' is invalid"):
        registry.MixTerm("M 2", "x", "x", _cosine_term)


def test_terms_draw_in_registry_order_and_defaults_come_from_the_registry():
    assert registry.term_names()[:4] == ("m2", "v", "l", "vl")
    mix = MixConfig()
    assert [mix.lam(t).alpha for t in ("m2", "v", "l", "vl")] == [1.0, 0.2, 0.2, 1.0]
    assert [t.uses_partners for t in registry.TERMS.values()][:4] == [False, True, True, True]


def test_methods_are_open_and_metrics_are_one_vocabulary():
    assert registry.method_display("m3_mix") == "m³-Mix" and registry.method_display("m3_w1") == "m3_w1"
    assert list(registry.PAPER_METHODS)[:2] == ["zs", "ft"]
    assert registry.METRIC_KEYS[:7] == ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum")
    assert registry.METRICS["ece"].higher is False and registry.METRICS["gap"].higher is None
    assert registry.metric_key("test", "rsum") == "test_rsum"
    assert registry.split_metric_key("val_r1_i2t") == ("val", "r1_i2t")
    assert registry.split_metric_key("train_loss") is None
    assert registry.split_metric_key("start_test_x") is None
