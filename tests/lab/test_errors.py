"""Errors are short by construction, not by truncation: every error path, given a value far too
long to quote, still prints one line of at most ``MAX_ERROR_LINE`` characters (the study file's
path aside), with the key it is about and the advice that ends it."""

from __future__ import annotations

import contextlib
import io
import textwrap

import pytest

from regtorch.lab.cli import main
from regtorch.lab.cli.command import MAX_ERROR_LINE
from regtorch.lab.study.spec import PENALTIES

LONG = "x" * 5000  # far longer than any line may be

STUDY = """\
name = "tiny"
[data]
{data}
[model]
{model}
[train]
epochs = 1
{train}
[[variants]]
name = "none"
{variant}
"""
SYNTHETIC = 'kind = "linear"\nfeatures = 3\ntrain = 20\nval = 10\ntest = 10'
CSV = 'kind = "csv"\npath = "d.csv"\ntarget = "y"'
FACTORIES = f"""\
import numpy as np

def data():
    raise ValueError("{'m' * 3000} end")

def data_long_keys():
    return {{"{LONG}": (np.zeros((4, 2)), np.zeros(4))}}

def model(**kwargs):
    raise RuntimeError("{'m' * 3000}")
"""


def _study(data: str = SYNTHETIC, model: str = 'kind = "linear"', train: str = "",
           variant: str = "") -> str:
    return STUDY.format(data=data, model=model, train=train, variant=variant)


# case → (argv after the study-file path is written, study text or None, the key or subject the
# line must name, how the line must end: its advice)
CASES = {
    "unknown preset": (["run", LONG], None, "unknown preset 'xxx",
                       "or give a .toml study file)"),
    "bad study name": (["run", "s.toml"], _study().replace('"tiny"', f'"!{LONG}"'),
                       "s.toml: name", "must be letters, digits, '-', '_' or '.'"),
    "unknown key": (["run", "s.toml"], f"{LONG} = 1\n" + _study(), "s.toml: unknown key",
                    "unknown key 'xxxxxxxxxxxxxxxxxx…xxxxxxxxxxxxxxxxxxx'"),
    "unknown penalty": (["run", "s.toml"], _study(variant=f'penalty = "{LONG}"'),
                        "s.toml: variants[0].penalty", f"{', '.join(PENALTIES)})"),
    "bad optimizer": (["run", "s.toml"], _study(train=f'optimizer = "{LONG}"'),
                      "s.toml: train.optimizer", "sgd, adam, adamw)"),
    "long strength list with a repeat": (
        ["run", "s.toml"], _study(variant='penalty = "l2"\nstrength = '
                                  f'{[0.5 + i for i in range(800)] + [0.5]}'),
        "s.toml: variants[0].strength", "…, 798.5, 799.5, 0.5]"),
    "hidden widths": (["run", "s.toml"], _study(model=f'kind = "mlp"\nhidden = ["{LONG}"]'),
                      "s.toml: model.hidden", "xxx']"),
    "csv column": (["run", "s.toml"], _study(data=CSV.replace('"y"', f'"{LONG}"')),
                   "s.toml: data.target", "(columns: a, b, y)"),
    "csv many columns": (["run", "s.toml"], _study(data=CSV.replace('"y"', '"nope"')),
                         "s.toml: data.target", "(100 in all))"),
    "csv file": (["run", "s.toml"], _study(data=CSV.replace("d.csv", "d/" * 1000 + "x.csv")),
                 "s.toml: data.path", "d/d/x.csv'"),
    "data factory raises": (["run", "s.toml"],
                            _study(data='kind = "python"\nfactory = "f.py:data"'),
                            "s.toml: data.factory", "…"),
    "data factory not importable": (
        ["run", "s.toml"], _study(data=f'kind = "python"\nfactory = "{LONG}:make"'),
        "s.toml: data.factory", "…"),
    "data factory returns a bad mapping": (
        ["run", "s.toml"], _study(data='kind = "python"\nfactory = "f.py:data_long_keys"'),
        "s.toml: data.factory", "(expected 'train', 'val', 'test')"),
    "model factory raises": (["run", "s.toml"],
                             _study(model='kind = "python"\nfactory = "f.py:model"'),
                             "s.toml: model.factory", "…"),
    "penalty params select nothing": (
        ["run", "s.toml"], _study(variant=f'penalty = "l2"\nstrength = 0.1\nparams = "{LONG}"'),
        "s.toml: variant 'none': params = 'xxx", "(it has '0.weight', '0.bias')"),
    "weight-decay params select nothing": (
        ["run", "s.toml"], _study(variant=f'weight_decay = 0.1\nparams = "{LONG}"'),
        "s.toml: variant 'none': params = 'xxx", "(it has '0.weight', '0.bias')"),
    "--lambdas": (["sweep", "linear-1d", "--penalty", "l2", "--lambdas", LONG], None,
                  "--lambdas 'xxx", "or v1,v2,..."),
    "--memory": (["run", "linear-1d", "--memory", LONG], None, "--memory 'xxx",
                 "expected a size such as 512M or 2G"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_error_is_one_short_whole_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, study, subject, advice = CASES[case]
    (tmp_path / "f.py").write_text(FACTORIES)
    wide = ",".join(f"c{i}" for i in range(99))
    (tmp_path / "d.csv").write_text(
        "a,b,y\n" + "1,2,3\n" * 20 if "many" not in case
        else wide + ",y\n" + textwrap.dedent(("0," * 99 + "1\n") * 20))
    if study is not None:
        (tmp_path / "s.toml").write_text(study)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main([*argv, "--out", str(tmp_path / "runs")])
    line = err.getvalue()
    assert status == 2, line
    assert line.count("\n") == 1 and line.startswith("regtorch: "), line
    assert len(line.rstrip("\n")) <= MAX_ERROR_LINE, (len(line), line)
    assert subject in line, line
    assert line.rstrip("\n").endswith(advice), line
    assert not (tmp_path / "runs").exists()
