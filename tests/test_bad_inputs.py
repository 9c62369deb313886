"""Bad inputs through the public entry points: every config field kind and every command-line flag of
``python -m geomix.train``, ``sweeps/ablation.py``, ``sweeps/search.py`` and ``analysis/tables.py``.

Each case runs the entry point's ``main`` in-process and asserts what a user sees: exit status 2, exactly
one ``error:`` line that names the bad value and what is allowed, and no traceback. Nothing trains and no
Ray starts (an autouse fixture turns either into a test failure). The data sources and the results
folder have their own file, ``test_bad_inputs_data.py``; a handful of subprocess cases at the end prove the
real commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import store
import sweeps.cli
import sweeps.session
from analysis import cli as tables
from geomix import train
from sweeps import ablation, search

ROOT = Path(__file__).resolve().parent.parent
BIG = str(2**70)

# A trial that would take a second if it ran: the micro model from random weights, a few samples.
SMALL = ["model.name=geomix-micro", "model.pretrained=null", "data.train_size=16", "data.val_size=8",
         "data.test_size=8", "optim.batch_size=8", "optim.epochs=1", "run.progress=false", "run.threads=1"]
SWEEP_BASE = ("base:\n  model: {name: geomix-micro, pretrained: null}\n"
              "  data: {train_size: 16, val_size: 8, test_size: 8}\n  optim: {epochs: 1, batch_size: 8}\n")

ENTRIES = {
    "train": train.main,
    "ablation": lambda argv: sweeps.cli.cli(ablation.main, argv),
    "search": lambda argv: sweeps.cli.cli(search.main, argv),
    "tables": tables.main,
}


pytestmark = pytest.mark.usefixtures("nothing_starts")  # tests/conftest.py: training or Ray = failure


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad (and good) YAML files, a plain file to stand in for a folder, and results folders."""
    d = tmp_path_factory.mktemp("bad-inputs")

    def write(name: str, text: str | bytes) -> str:
        path = d / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    write("afile", "not a folder")
    write("syntax.yaml", "optim:\n  lr: [1e-3\n")
    write("tabs.yaml", "optim:\n\tlr: 0.1\n")
    write("dup.yaml", "optim:\n  lr: 0.001\n  lr: 0.002\n")
    write("dup_top.yaml", "optim: {lr: 0.1}\nrun: {seed: 1}\noptim: {epochs: 2}\n")
    write("list.yaml", "- optim\n- run\n")
    write("scalar.yaml", "3\n")
    write("latin1.yaml", b"optim:\n  lr: 0.1  # caf\xe9\n")
    write("two_docs.yaml", "optim: {lr: 0.1}\n---\noptim: {lr: 0.2}\n")
    write("unknown.yaml", "optim: {learning_rate: 0.1}\n")
    write("type.yaml", "loss: {w_m2: three}\n")
    write("section.yaml", "loss: 3\n")
    write("quoted_lr.yaml", "optim: {lr: 'fast'}\n")
    write("sw.yaml", "name: s\nseeds: [0]\n" + SWEEP_BASE + "methods: {ft: {}, m2: {loss.w_m2: 0.1}}\n")
    write("sw_bs.yaml", "name: s\n" + SWEEP_BASE.replace("batch_size: 8", "batch_size: 64")
          + "methods: {ft: {}}\n")
    write("sw_syntax.yaml", "name: s\nbase: {optim: {epochs: 1\n")
    write("sw_dup.yaml", "name: s\nseeds: [0]\nseeds: [1]\nmethods: {ft: {}}\n")
    write("sw_dup_method.yaml", "name: s\nmethods:\n  ft: {}\n  ft: {loss.tau: 0.05}\n")
    write("sw_seeds_dup.yaml", "name: s\nseeds: [0, 0]\n" + SWEEP_BASE + "methods: {ft: {}}\n")
    write("sw_seeds_neg.yaml", "name: s\nseeds: [-3]\n" + SWEEP_BASE + "methods: {ft: {}}\n")
    write("sw_seeds_str.yaml", "name: s\nseeds: '0,1'\n" + SWEEP_BASE + "methods: {ft: {}}\n")
    write("sw_row.yaml", "name: s\n" + SWEEP_BASE + "methods: {ft: 3}\n")
    write("sw_row_key.yaml", "name: s\n" + SWEEP_BASE + "methods: {ft: {optim.learning_rate: 1}}\n")
    write("sw_unknown.yaml", "name: s\nmethod: {ft: {}}\n")
    write("sw_smoke.yaml", "name: s\nmethods: {ft: {}}\nsmoke_test: {epochs: 1}\n")
    write("sw_list.yaml", "- name\n")
    write("sw_row_seed.yaml", "name: s\n" + SWEEP_BASE + "methods: {ft: {run.seed: 4}}\n")
    write("sw_csv.yaml", f"name: s\nbase:\n  data: {{source: csv, path: {d}/nope.csv}}\n"
          "  model: {pretrained: null}\nmethods: {ft: {}}\n")
    write("se.yaml", "name: q\n" + SWEEP_BASE + "search: {num_samples: 2}\n")
    write("se_bs.yaml", "name: q\n" + SWEEP_BASE.replace("batch_size: 8", "batch_size: 64")
          + "search: {num_samples: 2}\n")
    write("se_methods.yaml", "name: q\n" + SWEEP_BASE + "methods: {ft: {}}\n")
    write("se_key.yaml", "name: q\nsearch: {samples: 2}\n")
    write("se_terms.yaml", "name: q\nsearch: {terms: [m2, zz]}\n")
    write("se_range.yaml", "name: q\nsearch: {weight_range: [0.5, 0.1]}\n")
    write("se_policies.yaml", "name: q\nsearch: {policies: []}\n")
    write("se_factor.yaml", "name: q\nsearch: {reduction_factor: 1}\n")
    write("se_samples.yaml", "name: q\nsearch: {num_samples: 1.5}\n")
    write("se_block.yaml", "name: q\nsearch: [1, 2]\n")
    return d


def refused(capsys, entry: str, argv: list[str], *named: str, allowed: str = "allowed") -> str:
    """Run ``entry`` on ``argv``; assert status 2, one ``error:`` line naming ``named`` and what is
    ``allowed``, no traceback; return the line."""
    try:
        code = ENTRIES[entry](argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    for needle in (*named, allowed):
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _fill(argv, d: Path) -> list[str]:
    return [a.replace("{D}", str(d)) for a in argv]


# ----------------------------------------------------------------------------------------------------------
# python -m geomix.train: every kind of config field, as key=value overrides

BOOL = [
    ("run.resume=1", "run.resume=1", "true or false"),
    ("run.resume=yes_please", "run.resume='yes_please'", "true or false"),
    ("data.skip_bad=maybe", "data.skip_bad='maybe'", "true or false"),
    ("loss.local_loss=2", "loss.local_loss=2", "true or false"),
    ("run.progress=[true]", "run.progress=[True]", "true or false"),
    ("run.save_embeddings=0.5", "run.save_embeddings=0.5", "true or false"),
    ("run.eval_start=null", "run.eval_start=None", "bool"),
    ("data.allow_overlap=sometimes", "data.allow_overlap='sometimes'", "true or false"),
]
INT = [
    ("optim.epochs=1.5", "optim.epochs=1.5", "an integer"),
    ("optim.epochs=true", "optim.epochs=True", "an integer"),
    ("optim.epochs=0", "optim.epochs=0", "[1, inf]"),
    ("optim.epochs=many", "optim.epochs='many'", "an integer"),
    ("optim.epochs=" + BIG, "optim.epochs=" + BIG, "2**63"),
    ("data.train_size=1", "data.train_size=1", "[2, inf]"),
    ("data.val_size=1", "data.val_size=1", "[2, inf]"),
    ("data.test_size=0", "data.test_size=0", "[2, inf]"),
    ("data.image_size=1000", "data.image_size=1000", "[8, 512]"),
    ("data.captions_per_image=0", "data.captions_per_image=0", "[1, inf]"),
    ("data.loader_workers=65", "data.loader_workers=65", "[0, 64]"),
    ("mix.m2.n_projections=0", "mix.m2.n_projections=0", "[1, inf]"),
    ("model.base_epochs=0", "model.base_epochs=0", "[1, inf]"),
    ("model.base_train_size=1", "model.base_train_size=1", "[2, inf]"),
    ("model.base_batch_size=1", "model.base_batch_size=1", "[2, inf]"),
    ("optim.batch_size=1", "optim.batch_size=1", "[2, inf]"),
    ("optim.max_steps=0", "optim.max_steps=0", "[1, inf]"),
    ("run.threads=0", "run.threads=0", "[1, inf]"),
    ("run.seed=-1", "run.seed=-1", "[0, 2**63 - 1]"),
    ("run.seed=" + BIG, "run.seed=" + BIG, "2**63 - 1"),
    ("data.seed=" + BIG, "data.seed=" + BIG, "2**63 - 1"),
    ("data.seed=-5", "data.seed=-5", "[0, 2**63 - 1]"),
    ("run.eval_every=-1", "run.eval_every=-1", "[0, inf]"),
    ("run.log_every=0", "run.log_every=0", "[1, inf]"),
    ("run.checkpoint_every=-1", "run.checkpoint_every=-1", "[0, inf]"),
    ("run.report_every=-2", "run.report_every=-2", "[0, inf]"),
]
FLOAT = [
    ("optim.lr=-1", "optim.lr=-1.0", "(0, inf]"),
    ("optim.lr=0", "optim.lr=0.0", "(0, inf]"),
    ("optim.lr=.nan", "optim.lr=nan", "a finite number"),
    ("optim.lr=.inf", "optim.lr=inf", "a finite number"),
    ("optim.lr=1e400", "optim.lr=inf", "a finite number"),
    ("optim.lr=1" + "0" * 400, "optim.lr=1000", "a finite number"),
    ("optim.lr=fast", "optim.lr='fast'", "a number"),
    ("optim.lr=true", "optim.lr=True", "a number"),
    ("optim.lr=[0.1]", "optim.lr=[0.1]", "a number"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1", "[0, inf]"),
    ("optim.warmup_frac=1", "optim.warmup_frac=1.0", "[0, 1)"),
    ("optim.eps=0", "optim.eps=0.0", "(0, inf]"),
    ("optim.grad_clip=0", "optim.grad_clip=0.0", "(0, inf]"),
    ("loss.tau=0", "loss.tau=0.0", "(0, inf]"),
    ("loss.tau=-1e-2", "loss.tau=-0.01", "(0, inf]"),
    ("loss.m2_tau=0", "loss.m2_tau=0.0", "(0, inf]"),
    ("loss.input_alpha=0", "loss.input_alpha=0.0", "(0, inf]"),
    ("model.init_tau=0", "model.init_tau=0.0", "(0, inf]"),
    ("model.max_logit_scale=0.5", "model.max_logit_scale=0.5", "[1, inf]"),
    ("model.base_lr=0", "model.base_lr=0.0", "(0, inf]"),
]
CHOICE = [
    ("data.source=parquet", "data.source='parquet'", "'shapes', 'csv', 'json'"),
    ("run.device=tpu", "run.device='tpu'", "'auto', 'cpu', 'cuda'"),
    ("run.precision=fp8", "run.precision='fp8'", "'fp32', 'bf16', 'fp16'"),
    ("loss.kind=mixup", "loss.kind='mixup'", "'contrastive', 'imix', 'unmix'"),
    ("loss.decay=linear", "loss.decay='linear'", "'constant', 'inverse_epoch'"),
    ("optim.schedule=step", "optim.schedule='step'", "'cosine', 'linear', 'constant'"),
    ("mix.geometry=hyperbolic", "mix.geometry='hyperbolic'", "'geodesic', 'linear'"),
    ("mix.partner=nearest", "mix.partner='nearest'", "'reverse', 'random', 'history'"),
    ("mix.m2.policy=uniform", "mix.m2.policy='uniform'", "'beta', 'fixed', 'progressive', 'history'"),
    ("mix.v.estimator=approx", "mix.v.estimator='approx'", "'sliced', 'exact'"),
    ("data.eval_captions=some", "data.eval_captions='some'", "'all', 'first'"),
    ("data.source=3", "data.source=3", "one of"),
]
LIST = [
    ("data.styles=dark", "data.styles='dark'", "a list"),
    ("data.styles=[]", "data.styles=[]", "a non-empty list of flat, outline, textured, dark"),
    ("data.styles=[dark,dark]", "data.styles=['dark', 'dark']", "distinct styles"),
    ("data.styles=[neon]", "data.styles[0]='neon'", "'flat', 'outline', 'textured', 'dark'"),
    ("data.styles={a: 1}", "data.styles={'a': 1}", "a list"),
    ("data.base_styles=[]", "data.base_styles=[]", "a non-empty list of flat, outline, textured, dark"),
    ("data.base_styles=[flat,flat]", "data.base_styles=['flat', 'flat']", "distinct styles"),
    ("data.base_styles=[flat,neon]", "data.base_styles[1]='neon'", "one of"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]", "exactly 2 values"),
    ("optim.betas=[0.9,0.98,0.99]", "optim.betas=[0.9, 0.98, 0.99]", "exactly 2 values"),
    ("optim.betas=0.9", "optim.betas=0.9", "a list"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]=1.0", "[0, 1)"),
]
STRING = [
    ("method=", "method=None", "str"),
    ("method=[a]", "method=['a']", "a string"),
    ("model.name=nope", "model.name='nope'", "open_clip model names"),
    ("model.name=", "model.name=None", "str"),
    ("data.csv_separator=|", "data.csv_separator='|'", "a tab ('\\t', 'tab') or a comma (',', 'comma')"),
    ("data.csv_separator=ab", "data.csv_separator='ab'", "a tab"),
    ("data.csv_separator=;", "data.csv_separator=';'", "a comma"),
    ("data.csv_separator=3", "data.csv_separator=3", "a string"),
    ("data.csv_img_key=3", "data.csv_img_key=3", "a string"),
    ("data.csv_caption_key=[x]", "data.csv_caption_key=['x']", "a string"),
]
PATH = [
    (["data.path=3"], "data.path=3", "a string"),
    (["data.path={D}/train.csv"], "data.path=", "None unless data.source is 'csv' or 'json'"),
    (["data.image_root={D}"], "data.image_root=", "None unless data.source is 'json'"),
    (["data.source=csv", "data.path={D}/a.csv", "data.image_root={D}"], "data.image_root=",
     "None unless data.source is 'json'"),
    (["data.source=json", "data.path={D}/a.json", "data.val_path={D}/b.json"], "data.val_path=",
     "None unless data.source is 'csv'"),
    (["data.test_path={D}/t.csv"], "data.test_path=", "None unless data.source is 'csv'"),
    (["data.source=csv"], "data.path=None", "a file path when data.source='csv'"),
    (["data.source=json"], "data.path=None", "a file path when data.source='json'"),
    (["data.source=csv", "data.path={D}/nope.csv"], "nope.csv", "an existing file"),
    (["data.source=csv", "data.path={D}"], "it is a folder", "an existing file"),
    (["data.source=json", "data.path={D}/nope.json"], "nope.json", "an existing file"),
    (["model.pretrained=embedded-base", "model.cache_dir={D}/afile/cache"], "model.cache_dir=",
     "a folder path"),
    (["model.pretrained=embedded-base", "model.cache_dir={D}/afile"], "model.cache_dir=", "a folder path"),
    (["model.pretrained=embedded-base", "model.cache_dir=[x]"], "model.cache_dir=['x']", "a string"),
    (["run.out_dir={D}/afile/out"], "run.out_dir=", "a folder path"),
    (["run.out_dir={D}/afile"], "run.out_dir=", "a folder path"),
    (["model.pretrained=laion2b"], "model.pretrained='laion2b'", "a local checkpoint path"),
    (["model.pretrained={D}"], "model.pretrained=", "a local checkpoint path"),
    (["model.pretrained={D}/afile"], "model.pretrained=", "torch.save(state_dict)"),
    (["model.pretrained={D}/syntax.yaml"], "model.pretrained=", "torch.save(state_dict)"),
    (["model.pretrained=embedded-base", "data.source=csv", "data.path={D}/afile"],
     "model.pretrained='embedded-base'", "the embedded base model needs the embedded data"),
]
MIX_TERMS = [
    ("mix.v.alpha=-1", "mix.v.alpha=-1.0", "(0, inf]"),
    ("mix.l.alpha=0", "mix.l.alpha=0.0", "(0, inf]"),
    ("mix.vl.beta=0", "mix.vl.beta=0.0", "(0, inf]"),
    ("mix.m2.value=1.5", "mix.m2.value=1.5", "[0, 1]"),
    ("mix.v.temperature=0", "mix.v.temperature=0.0", "(0, inf]"),
    ("mix.l.sigma=2", "mix.l.sigma=2.0", "[0, 1]"),
    ("mix.vl.momentum=1", "mix.vl.momentum=1.0", "[0, 1)"),
    ("mix.m2.n_projections=1.5", "mix.m2.n_projections=1.5", "an integer"),
    ("mix.v.policy=nope", "mix.v.policy='nope'", "one of 'beta'"),
    ("mix.zz.alpha=1", "mix.zz", "allowed keys under mix are"),
    ("mix.v=3", "mix.v=3", "a mapping of LambdaConfig fields"),
    ("mix.v.nope=1", "mix.v.nope", "allowed keys under mix.v are"),
    ("mix=3", "mix=3", "a mapping of MixConfig fields"),
]
LOSS_TERMS = [
    ("loss.w_m2=-1", "loss.w_m2=-1.0", "[0, inf]"),
    ("loss.w_v=.nan", "loss.w_v=nan", "a finite number"),
    ("loss.w_l=abc", "loss.w_l='abc'", "a number"),
    ("loss.w_vl=[1]", "loss.w_vl=[1]", "a number"),
    ("loss.w_zz=1", "loss.w_zz", "allowed keys under loss are"),
    ("loss.w_=1", "loss.w_", "allowed keys under loss are"),
]
SECTION = [
    ("loss=3", "loss=3", "a mapping of LossConfig fields"),
    ("data.nope=1", "data.nope", "allowed keys under data are"),
    ("nope.x=1", "nope", "allowed keys under the top level are"),
    ("nope=1", "nope", "allowed keys under the top level are"),
]
OVERRIDE_SYNTAX = [
    (["optim.lr"], "'optim.lr'", "dotted.key=value"),
    (["=3"], "'=3'", "dotted.key=value"),
    (["optim..lr=1"], "'optim..lr=1'", "dotted.key=value"),
    (["optim.lr=[1"], "'optim.lr=[1'", "a YAML value"),
    (["optim.lr={a"], "'optim.lr={a'", "a YAML value"),
    (["optim.lr='x"], "optim.lr='x", "a YAML value"),
    (["optim=1", "optim.lr=1"], "conflicts with another override of 'optim'", "not both"),
]


def _field_cases():
    for group, cases in (("bool", BOOL), ("int", INT), ("float", FLOAT), ("choice", CHOICE),
                         ("list", LIST), ("string", STRING), ("mix-term", MIX_TERMS),
                         ("loss-term", LOSS_TERMS), ("section", SECTION)):
        for override, named, allowed in cases:
            yield pytest.param([override], named, allowed, id=f"{group}:{override[:40]}")
    for argv, named, allowed in PATH:
        yield pytest.param(argv, named, allowed, id=f"path:{' '.join(argv)[:50]}")
    for argv, named, allowed in OVERRIDE_SYNTAX:
        yield pytest.param(argv, named, allowed, id=f"syntax:{' '.join(argv)}")


@pytest.mark.parametrize(("argv", "named", "allowed"), list(_field_cases()))
def test_train_refuses_a_bad_field(argv, named, allowed, files, capsys):
    line = refused(capsys, "train", SMALL + _fill(argv, files), named, allowed=allowed or "allowed")
    assert line.startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("argv", [["run.device=cuda"], ["run.device=cuda", "run.precision=fp16"]])
def test_train_refuses_cuda_without_a_gpu(argv, capsys):
    refused(capsys, "train", SMALL + argv, "run.device='cuda'", "'auto' or 'cpu'")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_train_refuses_half_precision_on_the_cpu(precision, capsys):
    refused(capsys, "train", SMALL + ["run.device=cpu", f"run.precision={precision}"],
            f"run.precision='{precision}'", "'auto' or 'fp32'")


@pytest.mark.parametrize(("name", "named", "allowed"), [
    ("syntax.yaml", "is not valid YAML", "a YAML mapping"),
    ("tabs.yaml", "is not valid YAML", "a YAML mapping"),
    ("dup.yaml", "has the key 'lr' twice (lines 2 and 3)", "each key once"),
    ("dup_top.yaml", "has the key 'optim' twice (lines 1 and 3)", "each key once"),
    ("list.yaml", "holds list", "a YAML mapping"),
    ("scalar.yaml", "holds int", "a YAML mapping"),
    ("latin1.yaml", "is not UTF-8 text", "a UTF-8 YAML file"),
    ("two_docs.yaml", "is not valid YAML", "a YAML mapping"),
    ("unknown.yaml", "optim.learning_rate", "allowed keys under optim are"),
    ("type.yaml", "loss.w_m2='three'", "a number"),
    ("section.yaml", "loss=3", "a mapping of LossConfig fields"),
    ("quoted_lr.yaml", "optim.lr='fast'", "a number"),
    ("nope.yaml", "does not exist", "a path to a YAML file"),
    (".", "is a folder", "a path to a YAML file"),
])
def test_train_refuses_a_bad_config_file(name, named, allowed, files, capsys):
    line = refused(capsys, "train", ["--config", str(files / name), *SMALL], named, allowed=allowed)
    if name not in ("unknown.yaml", "type.yaml", "section.yaml", "quoted_lr.yaml"):
        assert str(files / name) in line  # the file is named


@pytest.mark.parametrize(("argv", "named"), [
    (["--config"], "--config"),
    (["--frobnicate"], "--frobnicate"),
])
def test_train_refuses_a_bad_flag(argv, named, capsys):
    refused(capsys, "train", argv, named, allowed="")


def test_yaml_1_2_numbers_and_no_silent_last_key(files, tmp_path):
    """``lr: 1e-3`` in a file is the number a user means (PyYAML alone reads the string '1e-3')."""
    from geomix.config import load_config

    cfg = tmp_path / "lr.yaml"
    cfg.write_text("optim: {lr: 1e-3, eps: 1.0e-8}\nloss: {w_m2: 5e-2}\n"
                   "data: {source: csv, path: 2024-01-01}\n")
    loaded = load_config(cfg)
    assert (loaded.optim.lr, loaded.optim.eps, loaded.loss.w_m2) == (1e-3, 1e-8, 0.05)
    assert loaded.data.path == "2024-01-01"  # no timestamps: a path stays a string
    with pytest.raises(ValueError, match="has the key 'lr' twice"):
        load_config(files / "dup.yaml")


@pytest.mark.parametrize("spelling", ["\\t", "tab", "\t", ",", "comma"])
def test_csv_separator_spellings_are_accepted(spelling):
    from geomix.config import build_config

    want = "," if "," in spelling or spelling == "comma" else "\t"
    assert build_config({}, [f"data.csv_separator={spelling}"]).data.csv_separator == want


# ----------------------------------------------------------------------------------------------------------
# sweeps/ablation.py and sweeps/search.py: every flag, the sweep YAML, and the checks before Ray


def _sweep(files, entry: str, argv: list[str], *, config: str | None = None) -> list[str]:
    default = "sw.yaml" if entry == "ablation" else "se.yaml"
    out = [] if "--results" in argv else ["--results", str(files / f"results-{entry}")]
    return ["--config", str(files / (config or default)), *out, *_fill(argv, files)]


ABLATION = [
    (["--methods", ""], "--methods=''", "a comma-separated subset of ft, m2"),
    (["--methods", " , "], "--methods=' , '", "a comma-separated subset"),
    (["--methods", "ft,ft"], "--methods='ft,ft'", "each method once"),
    (["--methods", "nope"], "--methods nope", "allowed ft, m2"),
    (["--seeds", ""], "--seeds ''", "distinct integers"),
    (["--seeds", "0,0"], "--seeds '0,0'", "distinct integers"),
    (["--seeds", "-1"], "--seeds '-1'", "[0, 2**63 - 1]"),
    (["--seeds", "a,b"], "--seeds 'a,b'", "comma-separated"),
    (["--seeds", "0,,1"], "--seeds '0,,1'", "comma-separated"),
    (["--seeds", BIG], f"--seeds '{BIG}'", "[0, 2**63 - 1]"),
    (["--seeds", "1.5"], "--seeds '1.5'", "integers"),
]
SHARED = [
    (["--name", ""], "--name=''", "a sweep name"),
    (["--name", "a/b"], "name='a/b'", "without '/'"),
    (["--name", "a b"], "name='a b'", "or spaces"),
    (["--results", ""], "--results=''", "a folder or an s3:// gs:// URI"),
    (["--results", "{D}/afile"], "--results=", "a folder path"),
    (["--results", "{D}/afile/res"], "--results=", "a folder path"),
    (["--storage", ""], "--storage=''", "a folder or an s3:// gs:// URI"),
    (["--storage", "{D}/afile/ray"], "--storage=", "a folder path"),
    (["--num-workers", "-1"], "num_workers=-1", "[0, inf]"),
    (["--num-workers", "two"], "--num-workers", "invalid int value"),
    (["--gpus-per-worker", "-1"], "gpus_per_worker=-1.0", "[0, inf]"),
    (["--gpus-per-worker", "nan"], "gpus_per_worker=nan", "a finite number"),
    (["--gpus-per-worker", "0.5", "--num-workers", "2"], "gpus_per_worker=0.5", "0 or 1"),
    (["--num-workers", "3"], "optim.batch_size=8", "a multiple of --num-workers=3"),
    (["--verbose", "9"], "--verbose", "choose from 0, 1, 2, 3"),
    (["--max-concurrent", "0"], "max_concurrent=0", "[1, inf]"),
    (["--max-concurrent", "x"], "--max-concurrent", "invalid int value"),
    (["--max-failures", "-1"], "max_failures=-1", "[0, inf]"),
    (["--smoke-test=yes"], "--smoke-test", "ignored explicit argument"),
    (["--overwrite=1"], "--overwrite", "ignored explicit argument"),
    (["--keep-checkpoints=no"], "--keep-checkpoints", "ignored explicit argument"),
    (["--address"], "--address", "expected one argument"),
    (["--address", "head node"], "--address='head node'", "local (start Ray here), auto"),
    (["--address", "head:99999"], "--address='head:99999'", "HOST:PORT"),
    (["--address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1", "HOST:PORT / ray://HOST:PORT"),
    (["--address", "ray://127.0.0.1:1"], "nothing answers at 127.0.0.1:1", "of a running Ray head"),
    (["--mlflow", "ftp://x"], "--mlflow='ftp://x'", "a tracking URI"),
    (["--mlflow", "mlruns"], "--mlflow='mlruns'", "sqlite:///PATH.db"),
    (["--frobnicate"], "--frobnicate", "unrecognized arguments"),
    (["optim.lr=-1"], "optim.lr=-1.0", "(0, inf]"),
    (["optim.lr=[1"], "'optim.lr=[1'", "a YAML value"),
    (["run.seed=3"], "base run.seed=3", "the sweep's seeds set it"),
    (["data.base_styles=[]"], "data.base_styles=[]", "a non-empty list"),
    (["data.csv_separator=;"], "data.csv_separator=';'", "a tab"),
    (["model.pretrained=embedded-base", "model.cache_dir={D}/afile/cache"], "model.cache_dir=",
     "a folder path"),
    (["model.name=nope"], "model.name='nope'", "open_clip model names"),
]
SWEEP_FILES = [
    ("sw_bs.yaml", "optim.batch_size=64", "at most the training set size 16"),
    ("sw_syntax.yaml", "is not valid YAML", "a YAML mapping"),
    ("sw_dup.yaml", "has the key 'seeds' twice", "each key once"),
    ("sw_dup_method.yaml", "has the key 'ft' twice", "each key once"),
    ("sw_seeds_dup.yaml", "seeds=[0, 0]", "distinct integers"),
    ("sw_seeds_neg.yaml", "seeds=[-3]", "[0, 2**63 - 1]"),
    ("sw_seeds_str.yaml", "seeds='0,1'", "a non-empty list"),
    ("sw_row.yaml", "methods.ft=3", "a mapping of dotted TrainConfig keys"),
    ("sw_row_key.yaml", "optim.learning_rate", "allowed keys under optim are"),
    ("sw_unknown.yaml", "unknown sweep key(s) method", "allowed are"),
    ("sw_smoke.yaml", "unknown smoke_test key(s) epochs", "allowed are"),
    ("sw_list.yaml", "holds list", "a YAML mapping"),
    ("sw_csv.yaml", "data.path=", "an existing file"),
    ("sw_row_seed.yaml", "methods.ft run.seed=4", "the sweep's seeds set it"),
    ("nope.yaml", "does not exist", "a path to a YAML file"),
]
SEARCH = [
    (["--num-samples", "0"], None, "search.num_samples=0", "an integer >= 1"),
    (["--num-samples", "many"], None, "--num-samples", "invalid int value"),
    ([], "se_bs.yaml", "optim.batch_size=64", "at most the training set size 16"),
    ([], "se_methods.yaml", "methods in a search config", "allowed keys are name, base, search"),
    ([], "se_key.yaml", "unknown search key(s) samples", "allowed are"),
    ([], "se_terms.yaml", "search.terms[1]='zz'", "one of"),
    ([], "se_range.yaml", "search.weight_range=[0.5, 0.1]", "0 < lo <= hi"),
    ([], "se_policies.yaml", "search.policies=[]", "a non-empty list"),
    ([], "se_factor.yaml", "search.reduction_factor=1", "(1, inf]"),
    ([], "se_samples.yaml", "search.num_samples=1.5", "an integer >= 1"),
    ([], "se_block.yaml", "search=[1, 2]", "a mapping"),
    ([], "sw_syntax.yaml", "is not valid YAML", "a YAML mapping"),
]


@pytest.mark.parametrize(("argv", "named", "allowed"), [
    pytest.param(a, n, w, id=" ".join(a)[:50] or "empty") for a, n, w in ABLATION])
def test_ablation_refuses_a_bad_flag(argv, named, allowed, files, capsys):
    refused(capsys, "ablation", _sweep(files, "ablation", argv), named, allowed=allowed)
    assert not (files / "results-ablation").exists()  # nothing written


@pytest.mark.parametrize("entry", ["ablation", "search"])
@pytest.mark.parametrize(("argv", "named", "allowed"), [
    pytest.param(a, n, w, id=" ".join(a)[:50]) for a, n, w in SHARED])
def test_sweeps_refuse_a_bad_shared_flag(entry, argv, named, allowed, files, capsys):
    refused(capsys, entry, _sweep(files, entry, argv), named, allowed=allowed)


@pytest.mark.parametrize(("name", "named", "allowed"), SWEEP_FILES)
def test_ablation_refuses_a_bad_sweep_file(name, named, allowed, files, capsys):
    refused(capsys, "ablation", _sweep(files, "ablation", [], config=name), named, allowed=allowed)


@pytest.mark.parametrize(("argv", "config", "named", "allowed"), [
    pytest.param(a, c, n, w, id=c or " ".join(a)) for a, c, n, w in SEARCH])
def test_search_refuses_bad_settings(argv, config, named, allowed, files, capsys):
    refused(capsys, "search", _sweep(files, "search", argv, config=config), named, allowed=allowed)


def test_batch_larger_than_the_training_set_is_refused_before_ray(files, capsys):
    """Checked on the driver: before, every trial failed in Ray and the driver ended with
    ``error: No objects to concatenate``."""
    line = refused(capsys, "ablation", _sweep(files, "ablation", [], config="sw_bs.yaml"),
                   "method 'ft': optim.batch_size=64 is invalid")
    assert "No objects" not in line


# ----------------------------------------------------------------------------------------------------------
# analysis/tables.py: every flag


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    rows = [store.trial_row(sweep="fx", trial_id=f"ft-{s}", config={"method": "ft", "run": {"seed": s}},
                            result={"test_r1_i2t": 10.0 + s, "test_rsum": 100.0 + s}, status="completed",
                            error=None, env={}) for s in range(2)]
    store.write_rows(d / "ok", "trials", rows)
    (d / "afile").write_text("x")
    return d


@pytest.mark.parametrize(("argv", "named", "allowed"), [
    (["{R}/ok", "--format", "html"], "--format", "choose from 'markdown', 'latex', 'csv'"),
    (["{R}/ok", "--top-k", "0"], "--top-k=0", "an integer >= 1"),
    (["{R}/ok", "--top-k", "ten"], "--top-k", "invalid int value"),
    (["{R}/ok", "--metric", "nope"], "metric='nope'", "one of r1_i2t"),
    (["{R}/ok", "--figures"], "--figures needs --out DIR", "--out"),
    (["{R}/ok", "--out", "{R}/afile"], "--out=", "a folder path"),
    (["{R}/ok", "--out", "{R}/afile/tables"], "--out=", "a folder path"),
    (["{R}/ok", "--out"], "--out", "expected one argument"),
    ([], "the following arguments are required: results", "results"),
    (["{R}/nope"], "'{R}/nope' does not exist", "a folder written by store.write_rows"),
    (["{R}/afile"], "afile", "a folder written by store.write_rows"),
    (["{R}/ok", "--frobnicate"], "--frobnicate", "unrecognized arguments"),
])
def test_tables_refuses_a_bad_flag(argv, named, allowed, results, capsys):
    argv = [a.replace("{R}", str(results)) for a in argv]
    line = refused(capsys, "tables", argv, named.replace("{R}", str(results)), allowed=allowed)
    assert line.startswith("python analysis/tables.py: error: ")


def test_tables_out_unwritable_fails_before_printing(results, capsys):
    with pytest.raises(SystemExit) as stop:
        tables.main([str(results / "ok"), "--out", str(results / "afile" / "t")])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and "--out=" in err and out == ""  # no table printed before the error
    assert tables.main([str(results / "ok")]) == 0 and capsys.readouterr().out.strip()


# ----------------------------------------------------------------------------------------------------------
# the real commands, as a user types them (in parallel: each pays the interpreter's start)


def test_the_real_commands_print_one_error_line(files, results):
    env = dict(os.environ)
    commands = {
        "train": [sys.executable, "-m", "geomix.train", f"--config={files / 'dup.yaml'}"],
        "ablation": [sys.executable, "sweeps/ablation.py", "--seeds", "0,0", "--results",
                     str(files / "r-real")],
        "search": [sys.executable, "sweeps/search.py", "--config", str(files / "sw_syntax.yaml")],
        "tables": [sys.executable, "analysis/tables.py", str(results / "ok"), "--top-k", "0"],
    }
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, c in commands.items()}
    named = {"train": "has the key 'lr' twice", "ablation": "--seeds '0,0' is invalid",
             "search": "is not valid YAML", "tables": "--top-k=0 is invalid"}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert proc.returncode == 2, (key, err)
        assert len(lines) == 1 and named[key] in lines[0] and "allowed" in lines[0], (key, err)
        assert "Traceback" not in err + out
