"""Config layering, round trip and validation: every bad value names the field and what is allowed."""

import sys

import pytest
import yaml

from geomix import config as C


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = C.build_config()
    d = C.to_dict(cfg)
    assert C.from_dict(C.TrainConfig, d) == cfg
    C.save_config(cfg, tmp_path / "config.yaml")
    assert C.load_config(tmp_path / "config.yaml") == cfg
    assert not (tmp_path / "config.yaml.tmp").exists()


def test_layering_defaults_file_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"loss": {"w_m2": 0.5, "w_vl": 0.2}, "mix": {"m2": {"alpha": 0.3}}}))
    cfg = C.load_config(path, ["loss.w_m2=0.1", "data.styles=[dark, flat]", "loss.tau=null"])
    assert cfg.loss.w_m2 == 0.1  # command line beats the file
    assert cfg.loss.w_vl == 0.2  # file beats the defaults
    assert cfg.mix.m2.alpha == 0.3 and cfg.mix.m2.policy == "beta"
    assert cfg.mix.v == C.MixConfig().v  # untouched siblings keep their defaults
    assert cfg.data.styles == ("dark", "flat")
    assert cfg.loss.tau is None


def test_flatten_gives_dotted_columns():
    flat = C.flatten(C.to_dict(C.build_config(overrides=["mix.vl.alpha=2"])))
    assert flat["mix.vl.alpha"] == 2.0
    assert flat["loss.w_m2"] == 0.0
    assert flat["data.styles"] == '["dark"]'
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


def test_config_hash_is_stable_and_sensitive():
    a = C.build_config()
    assert C.config_hash(a) == C.config_hash(C.build_config())
    assert C.config_hash(a) != C.config_hash(C.build_config(overrides=["model.base_epochs=3"]))


@pytest.mark.parametrize(
    "override, field",
    [
        ("loss.w_m2=-0.1", "loss.w_m2"),
        ("loss.tau=0", "loss.tau"),
        ("loss.tau=-1", "loss.tau"),
        ("mix.v.alpha=0", "mix.v.alpha"),
        ("mix.m2.beta=-2", "mix.m2.beta"),
        ("mix.vl.value=1.5", "mix.vl.value"),
        ("mix.l.policy=cosine", "mix.l.policy"),
        ("mix.partner=nearest", "mix.partner"),
        ("mix.geometry=euclid", "mix.geometry"),
        ("loss.decay=linear", "loss.decay"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.batch_size=1", "optim.batch_size"),
        ("optim.epochs=2.5", "optim.epochs"),
        ("run.device=tpu", "run.device"),
        ("data.source=parquet", "data.source"),
        ("data.styles=[]", "data.styles"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("run.resume=maybe", "run.resume"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValueError) as err:
        C.build_config(overrides=[override])
    msg = str(err.value)
    assert field in msg and "allowed" in msg


def test_unknown_keys_are_errors_not_ignored():
    with pytest.raises(ValueError, match=r"loss\.w_m3.*allowed keys under loss"):
        C.build_config({"loss": {"w_m3": 1.0}})
    with pytest.raises(ValueError, match="unknown config key"):
        C.build_config(overrides=["mix.m2.gamma=1"])


def test_mix_weights_require_contrastive_kind():
    with pytest.raises(ValueError, match="loss.kind"):
        C.build_config(overrides=["loss.kind=imix", "loss.w_vl=0.1"])


def test_csv_source_needs_a_path():
    with pytest.raises(ValueError, match="data.path"):
        C.build_config(overrides=["data.source=csv"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="dotted.key=value"):
        C.parse_overrides(["loss.w_m2"])
    with pytest.raises(ValueError, match="does not exist"):
        C.load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        C.load_config(tmp_path / "list.yaml")


def test_import_geomix_does_not_pull_in_sweep_stack():
    import subprocess

    code = (
        "import sys, geomix, geomix.config, geomix.sphere, geomix.losses, geomix.mixing, geomix.metrics\n"
        "bad = [m for m in ('ray', 'optuna', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scientific_notation_overrides_are_numbers():
    cfg = C.build_config(overrides=["optim.lr=2e-3", "loss.w_m2=5E-2", "run.out_dir=1e3x"])
    assert cfg.optim.lr == 0.002 and cfg.loss.w_m2 == 0.05
    assert cfg.run.out_dir == "1e3x"  # only whole numbers are converted


def test_admits_none_knows_nullable_fields_and_follows_the_term_registry():
    from geomix import registry

    assert C.admits_none("optim.grad_clip") is True and C.admits_none("optim.lr") is False
    assert C.admits_none("optim.no_such") is None and C.admits_none("no_such.key") is None
    assert C.admits_none("optim.lr") is False  # the cached answer is the same
    assert C.admits_none("mix.cos.policy") is None
    term = registry.MixTerm("cos", "cos", "cos-Mix", lambda x, lam: None, uses_partners=False)
    registry.register_term(term)
    try:
        assert C.admits_none("mix.cos.policy") is False and C.admits_none("loss.w_cos") is False
    finally:
        registry.unregister_term("cos")
    assert C.admits_none("mix.cos.policy") is None
