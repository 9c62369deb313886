"""geomix.train: the loop on a micro model and a few dozen embedded samples (CPU, one thread)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from geomix import basemodel, logs, loop, train
from geomix.config import build_config, load_config

SMALL = [
    "model.name=geomix-micro",
    "model.pretrained=null",
    "data.train_size=64",
    "data.val_size=16",
    "data.test_size=16",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.lr=0.002",
    "run.progress=false",
    "run.threads=1",
]
ALL_TERMS = ["loss.w_m2=0.2", "loss.w_v=0.2", "loss.w_l=0.2", "loss.w_vl=0.2"]


class Recorder:
    """Hooks that keep every report (and can stop the run after a given one, like a crash)."""

    def __init__(self, crash_after_checkpoints: int | None = None):
        self.reports: list[dict] = []
        self.checkpoints: list[str] = []
        self.crash_after = crash_after_checkpoints

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            self.checkpoints.append(checkpoint_dir)
            if self.crash_after is not None and len(self.checkpoints) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash after a checkpoint")

    def initial_checkpoint(self):
        return None


def _cfg(*overrides: str):
    return build_config({}, SMALL + list(overrides))


def _steps(rec: Recorder) -> list[dict]:
    return [r for r in rec.reports if "val_r1_i2t" not in r and not r.get("done")]


def test_training_decreases_the_loss():
    rec = Recorder()
    # One batch of 32 pairs, 30 steps: a random-init CLIP first sits near ln(32) = 3.47, then memorises.
    cfg = _cfg("data.train_size=32", "optim.epochs=30", "optim.lr=0.001", "optim.warmup_frac=0",
               "run.report_every=1", "run.eval_every=0")
    result = train.run(cfg, hooks=rec)
    assert result["status"] == "completed" and result["steps"] == 30
    losses = [r["train_loss"] for r in _steps(rec)]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert np.mean(losses[-5:]) < math.log(32) - 0.2
    final = rec.reports[-1]
    assert final["done"] is True and final["status"] == "completed" and "test_r1_i2t" in final
    assert result["samples_seen"] == 30 * 32 and result["samples_per_s"] > 0


def test_learnable_tau_moves_and_is_clamped_fixed_tau_stays():
    rec = Recorder()
    # init scale 1/0.07 = 14.3 and a ceiling of 15 with a large lr: the clamp must hold every step.
    train.run(_cfg("run.report_every=1", "model.max_logit_scale=15", "optim.lr=0.05", "optim.warmup_frac=0"),
              hooks=rec)
    scales = [r["logit_scale"] for r in _steps(rec)]
    assert max(scales) <= 15.0 + 1e-4 and len(set(scales)) > 1

    rec = Recorder()
    result = train.run(_cfg("run.report_every=1", "loss.tau=0.05"), hooks=rec)
    assert result["status"] == "completed"
    assert all(abs(r["logit_scale"] - 20.0) < 1e-3 for r in _steps(rec))



@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_lr_schedule_after_the_warm_up(schedule):
    """``optim.schedule``: the lr each step reports (after its optimiser step), 8 steps, 2 of them warm-up."""
    rec = Recorder()
    overrides = ["run.report_every=1", "optim.epochs=4", "optim.warmup_frac=0.25", "optim.lr=0.004"]
    if schedule != "cosine":  # the default
        overrides.append(f"optim.schedule={schedule}")
    assert train.run(_cfg(*overrides), hooks=rec)["status"] == "completed"
    lrs = [r["lr"] for r in _steps(rec)]
    # Step k (1-based) reports the lr the scheduler set for step k + 1: warm-up (k+1)/2 of the lr for k < 2,
    # then the decay's position (k - 2) / 6 between the end of the warm-up and the last step.
    after = [(k - 2) / 6 for k in range(2, 9)]
    shape = {"cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in after],
             "linear": [1 - p for p in after], "constant": [1.0] * 7}[schedule]
    assert lrs == pytest.approx([0.004] + [0.004 * m for m in shape], rel=1e-9)
    assert len(lrs) == 8

@pytest.mark.parametrize(
    "overrides,terms",
    [
        (ALL_TERMS, {"loss_clip", "loss_m2", "loss_v", "loss_l", "loss_vl", "lam_m2", "lam_vl"}),
        (ALL_TERMS + ["mix.geometry=linear", "mix.partner=random", "loss.decay=inverse_epoch"], {"loss_vl"}),
        (["loss.kind=imix"], {"loss_imix", "lam_imix"}),
        (["loss.kind=unmix"], {"loss_clip", "loss_unmix", "lam_unmix"}),
    ],
    ids=["m3", "m3-linear-random", "imix", "unmix"],
)
def test_every_loss_kind_trains(overrides, terms):
    rec = Recorder()
    result = train.run(_cfg(*overrides), hooks=rec)
    assert result["status"] == "completed", result["error"]
    epoch1 = rec.reports[1]  # reports[0] is the starting model's validation point (step 0)
    assert epoch1["epoch"] == 1 and terms <= set(epoch1)
    assert all(math.isfinite(epoch1[k]) for k in terms)
    assert 0 <= result["test_r1_i2t"] <= 100 and math.isfinite(result["test_rsum"])
    assert {"val_r1_i2t", "val_gap", "val_ece", "val_zs_acc"} <= set(epoch1)


def test_learning_curves_start_at_step_zero_without_changing_training(monkeypatch):
    rec = Recorder()
    result = train.run(_cfg("loss.w_m2=0.2", "loss.w_vl=0.2"), hooks=rec)
    start = rec.reports[0]
    assert start["epoch"] == 0 and start["step"] == 0 and start["samples_seen"] == 0
    assert {"val_rsum", "val_r1_i2t", "val_gap"} <= set(start) and "train_loss" not in start
    assert [r["epoch"] for r in rec.reports if "val_rsum" in r] == [0, 1, 2]
    # The extra evaluation draws no random numbers: without it the run is bit-identical.
    monkeypatch.setattr(loop.Trainer, "_report_start", lambda self: None)
    without = train.run(_cfg("loss.w_m2=0.2", "loss.w_vl=0.2"), hooks=Recorder())
    test_keys = [k for k in result if k.startswith("test_")]
    assert test_keys and {k: result[k] for k in test_keys} == {k: without[k] for k in test_keys}
    # No point at step 0 without periodic validation (run.eval_every=0).
    rec = Recorder()
    train.run(_cfg("run.eval_every=0"), hooks=rec)
    assert [r["step"] for r in rec.reports] == [4]


def test_resume_is_bit_identical(tmp_path):
    cfg = _cfg("optim.epochs=3", "loss.w_m2=0.3", "loss.w_vl=0.3", "mix.vl.policy=progressive",
               "run.save_embeddings=true")
    full = train.run(cfg.__class__(**{**cfg.__dict__, "run": cfg.run.__class__(
        **{**cfg.run.__dict__, "out_dir": str(tmp_path / "full")})}))

    interrupted = cfg.__class__(**{**cfg.__dict__, "run": cfg.run.__class__(
        **{**cfg.run.__dict__, "out_dir": str(tmp_path / "resumed")})})
    crashed = Recorder(crash_after_checkpoints=1)
    with pytest.raises(KeyboardInterrupt):
        train.run(interrupted, hooks=crashed)
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("ckpt-*"))) == 1
    # The Ray path: a checkpoint handed over by the hooks, no files of its own.
    ray_like = Recorder()
    ray_like.initial_checkpoint = lambda: crashed.checkpoints[0]
    from_hooks = train.run(cfg, hooks=ray_like)
    assert ray_like.reports[0]["step"] > 0  # a resumed run has no step-0 point: its curve already has one
    resumed = train.run(interrupted)
    assert {k: v for k, v in from_hooks.items() if k.startswith("test_")} == {
        k: v for k, v in full.items() if k.startswith("test_")
    }

    assert full["status"] == resumed["status"] == "completed"
    assert full["steps"] == resumed["steps"] == 6 and resumed["samples_seen"] == full["samples_seen"]
    test_keys = [k for k in full if k.startswith("test_")]
    assert len(test_keys) >= 10
    assert {k: full[k] for k in test_keys} == {k: resumed[k] for k in test_keys}
    a = np.load(tmp_path / "full" / "embeddings_test.npz")
    b = np.load(tmp_path / "resumed" / "embeddings_test.npz")
    assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["txt"], b["txt"])
    assert a["img"].shape == (16, 64) and a["txt_to_img"].shape == (a["txt"].shape[0],)


def test_divergence_stops_the_run_and_names_the_term():
    # τ = 1e-40: the scale overflows float32, the CLIP logits are non-finite at the first step.
    rec = Recorder()
    result = train.run(_cfg("loss.tau=1.0e-40"), hooks=rec)
    assert result["status"] == "diverged"
    assert "'clip'" in result["error"] and "step 0" in result["error"]
    assert result["steps"] == 0 and not any(k.startswith("test_") for k in result)
    assert rec.reports[-1]["status"] == "diverged" and rec.reports[-1]["done"] is True

    # An absurd learning rate: finite at first, then a term blows up later; the step is named.
    result = train.run(
        _cfg("optim.lr=1.0e+30", "optim.warmup_frac=0", "optim.grad_clip=null", "optim.epochs=4")
    )
    assert result["status"] == "diverged" and "non-finite" in result["error"]
    assert 0 < result["steps"] < 8


def test_zero_shot_evaluates_the_starting_model_only():
    rec = Recorder()
    zs = train.run(_cfg("method=zs"), hooks=rec)
    assert zs["status"] == "completed" and zs["steps"] == 0 and zs["samples_seen"] == 0
    start = train.run(_cfg("optim.max_steps=1", "run.eval_start=true"))
    # Same seed, same init: the zero-shot test metrics equal the fine-tune's starting point.
    assert zs["test_r1_i2t"] == start["start_test_r1_i2t"] and zs["test_gap"] == start["start_test_gap"]
    assert len(rec.reports) == 1 and rec.reports[0]["done"] is True


def test_bad_inputs_fail_before_training():
    with pytest.raises(ValueError, match="optim.batch_size=128 is invalid"):
        train.run(_cfg("optim.batch_size=128"))
    with pytest.raises(ValueError, match="run.precision='bf16' is invalid on the CPU"):
        train.run(_cfg("run.precision=bf16", "run.device=cpu"))


def test_cli_prints_base_and_fine_tuned(tmp_path, capsys):
    base = [
        "model.pretrained=embedded-base", f"model.cache_dir={tmp_path / 'cache'}", "model.base_epochs=2",
        "model.base_train_size=64", "model.base_batch_size=32",
    ]
    out_dir = tmp_path / "out"
    code = train.main(SMALL + base + ALL_TERMS + [f"run.out_dir={out_dir}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "test R@1 i->t: base" in out and "-> fine-tuned" in out
    assert "r1_i2t" in out and "status=completed" in out
    assert basemodel.base_path(build_config({}, SMALL + base).model, build_config({}, SMALL).data).is_file()
    assert (out_dir / "result.json").is_file()
    # the resolved config is a file, named in the output, with the method its loss terms make
    saved = load_config(out_dir / "config.yaml")
    assert saved.method == "m3_mix" and saved.loss.w_vl == 0.2 and saved.run.out_dir == str(out_dir)
    assert f"method m3_mix: resolved config written to {out_dir / 'config.yaml'}" in out
    # one validation line per evaluation point, the starting model's first
    val_lines = [ln for ln in out.splitlines() if ": val rsum " in ln]
    assert [ln.split(":")[0] for ln in val_lines] == ["epoch 0 step 0", "epoch 1 step 2", "epoch 2 step 4"]
    assert all(" R@1 i->t " in ln and ", t->i " in ln for ln in val_lines)
    saved_line = out.strip().splitlines()[-1]
    assert saved_line.startswith("saved: ") and str(out_dir / "result.json") in saved_line
    assert "checkpoint " + str(out_dir / "checkpoints" / "ckpt-") in saved_line
    assert train.main(["optim.lr=-1"]) == 2


def test_cli_without_out_dir_prints_yaml_and_says_nothing_was_saved(capsys):
    assert train.main(SMALL + ["loss.w_m2=0.1", "method=my_run", "optim.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "method my_run: resolved config" in out  # an explicit method= is kept
    printed = yaml.safe_load(out.split("resolved config", 1)[1].split("epoch 0 step 0")[0])
    assert printed["method"] == "my_run" and printed["loss"]["w_m2"] == 0.1
    assert out.strip().splitlines()[-1].startswith("nothing was saved (run.out_dir is not set); add "
                                                   "run.out_dir=DIR")


@pytest.mark.parametrize("overrides,method", [
    ([], "ft"),
    (["loss.tau=0.05"], "ft_tau0.05"),
    (["loss.tau=0.1"], "ft_tau0.10"),
    (["loss.kind=imix"], "imix"),
    (["loss.kind=unmix"], "unmix"),
    (["loss.w_m2=0.1"], "m2_mix"),
    (["loss.w_vl=0.1"], "vl_mix"),
    (ALL_TERMS, "m3_mix"),
    (ALL_TERMS + ["mix.geometry=linear"], "m3_mix_linear"),
    (["loss.w_vl=0.1", "loss.w_m2=0.1"], "m2+vl"),
    (["loss.w_v=0.1", "loss.w_l=0.1", "loss.w_vl=0.1"], "v+l+vl"),
])
def test_method_name_follows_the_loss_terms_that_are_on(overrides, method):
    assert train.method_name(build_config({}, overrides)) == method


def test_method_name_of_a_registered_term():
    from geomix import registry

    registry.register_term(registry.MixTerm("cos", "cos", "cos-Mix", lambda inputs, lam: (None, None)))
    try:
        assert train.method_name(build_config({}, ["loss.w_cos=0.5"])) == "cos_mix"
        # m3 is the paper's four terms; a fifth one on top is named term by term
        assert train.method_name(build_config({}, ALL_TERMS + ["loss.w_cos=0.5"])) == "m2+v+l+vl+cos"
    finally:
        registry.unregister_term("cos")


def test_log_lines_go_above_the_bar():
    import io
    import logging

    with logs.progress_bar(True, total=1, file=io.StringIO()) as bar:
        assert bar is not None
        assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in logging.root.handlers)
    assert not any(type(h).__name__ == "_TqdmLoggingHandler" for h in logging.root.handlers)
    with logs.progress_bar(False, total=1) as bar:
        assert bar is None
