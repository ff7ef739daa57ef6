"""The study vocabulary: presets parse, ``to_dict`` round-trips, and bad input is a StudyError that
names the offending key and its value (the CLI prints that one line and exits 2)."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from regtorch.lab.study import Schedule, Study, StudyError, Variant, parse_study
from regtorch.lab.study.presets import PRESETS, preset, preset_names


def base() -> dict[str, Any]:
    """A valid study touching most of the schema (each bad case below breaks one thing)."""
    return {
        "name": "base",
        "description": "a valid study",
        "seeds": 3,
        "data_seed": 7,
        "data": {"kind": "linear", "features": 4, "train": 20, "val": 10, "test": 10,
                 "weights": [1.0, -2.0, 0.0, 0.5], "bias": 0.1, "noise_std": 0.1},
        "model": {"kind": "mlp", "hidden": [8, 4], "dropout_after": [2, 1]},
        "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                  "batch_size": 5, "epochs": 3, "dtype": "float64",
                  "schedule": {"kind": "exponential", "rate": 0.99, "min_lr": 1e-4}},
        "variants": [
            {"name": "none"},
            {"name": "l2", "penalty": "l2", "strength": [0.01, 0.1]},
            {"name": "l1", "penalty": "l1", "strength": 0.1, "apply": "prox"},
            {"name": "enet", "penalty": "elasticnet", "strength": 0.1, "l1_ratio": 0.3},
            {"name": "group", "penalty": "group", "strength": 0.1, "groups": "columns"},
            {"name": "blog", "penalty": "blog", "strength": 0.01},
            {"name": "wd", "weight_decay": 0.1, "params": "all"},
            {"name": "drop", "dropout": 0.2},
            {"name": "plateau", "schedule": {"kind": "plateau", "patience": 3, "per": "epoch"}},
            {"name": "constant", "schedule": "constant"},
        ],
    }


def sparse_linear() -> dict[str, Any]:
    return {"name": "sparse", "data": {"kind": "linear", "features": 6, "weights": 2.0,
                                       "nonzeros": 2},
            "variants": [{"name": "none"}]}


# --------------------------------------------------------------------------------------------
# Valid studies
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_presets_parse(name):
    study = preset(name)
    assert isinstance(study, Study)
    assert study.name == name
    assert study.description


def test_preset_names_are_the_issue_list():
    assert preset_names() == ["d2l-highdim", "mlp-synthetic", "digits", "linear-1d", "lr-decay",
                              "sparse-recovery", "diabetes-lasso", "breast-cancer", "digits-cnn",
                              "digits-prune"]


def test_unknown_preset_names_it_and_lists_the_presets():
    with pytest.raises(StudyError, match=r"'d2l'.*d2l-highdim"):
        preset("d2l")


def test_base_study_parses_as_written():
    study = parse_study(base())
    assert study.seeds == 3 and study.data_seed == 7
    assert study.data.weights == (1.0, -2.0, 0.0, 0.5)
    assert study.model.dropout_after == (1, 2)  # sorted, deduplicated
    assert study.train.schedule == Schedule("exponential", rate=0.99, min_lr=1e-4)
    by_name = {v.name: v for v in study.variants}
    assert by_name["none"] == Variant("none")
    assert by_name["l2"].strengths == (0.01, 0.1) and by_name["l2"].tuned
    assert not by_name["l1"].tuned and by_name["l1"].apply == "prox"
    assert by_name["blog"].params == "*weight*"  # the blog class's own selection
    assert by_name["plateau"].schedule == Schedule("plateau", patience=3, per="epoch")
    assert study.schedule_of(by_name["plateau"]).reacts_to_loss
    assert study.schedule_of(by_name["none"]) == study.train.schedule
    assert by_name["constant"].schedule == Schedule()


@pytest.mark.parametrize("spec", [
    *[pytest.param(PRESETS[name], id=name) for name in preset_names()],
    pytest.param(base(), id="base"),
    pytest.param(sparse_linear(), id="sparse-linear"),
])
def test_to_dict_round_trips(spec):
    study = parse_study(spec)
    assert parse_study(study.to_dict()) == study
    # config.json holds it: through JSON too
    assert parse_study(json.loads(json.dumps(study.to_dict()))) == study


@pytest.mark.parametrize(("seeds", "epochs"), [(1, None), (None, 1), (4, 7)])
def test_with_overrides(seeds, epochs):
    study = parse_study(base())
    changed = study.with_overrides(seeds=seeds, epochs=epochs)
    assert changed.seeds == (seeds or study.seeds)
    assert changed.train.epochs == (epochs or study.train.epochs)
    assert changed.variants == study.variants and changed.data == study.data


# --------------------------------------------------------------------------------------------
# Bad input: a StudyError naming the key and the value
# --------------------------------------------------------------------------------------------


def edit(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(base())
    change(spec)
    return spec


def set_in(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        target = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec.pop(key)


def add_variant(variant: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["variants"].append(variant)


def linear_model(spec: dict[str, Any]) -> None:
    spec["model"] = {"kind": "linear"}
    spec["variants"] = [{"name": "none"}, {"name": "drop", "dropout": 0.3}]


# (id, change to the base study, fragments the message must contain: the key, the value)
BAD = [
    ("unknown-penalty", set_in("variants", 1, "penalty", value="l3"),
     ["variants[1].penalty", "'l3'"]),
    ("negative-strength", set_in("variants", 2, "strength", value=-0.5),
     ["variants[2].strength", "-0.5"]),
    ("negative-strength-in-list", set_in("variants", 1, "strength", value=[0.1, -1.0]),
     ["variants[1].strength", "-1.0"]),
    ("nan-strength", set_in("variants", 2, "strength", value=math.nan),
     ["variants[2].strength", "nan"]),
    ("inf-strength", set_in("variants", 2, "strength", value=math.inf),
     ["variants[2].strength", "inf"]),
    ("nan-strength-in-list", set_in("variants", 1, "strength", value=[0.1, math.nan]),
     ["variants[1].strength", "nan"]),
    ("bool-strength", set_in("variants", 2, "strength", value=True),
     ["variants[2].strength", "True"]),
    ("empty-strength-list", set_in("variants", 1, "strength", value=[]),
     ["variants[1].strength", "empty"]),
    ("repeated-strength", set_in("variants", 1, "strength", value=[0.1, 0.1]),
     ["variants[1].strength", "[0.1, 0.1]"]),
    ("strength-without-penalty", set_in("variants", 0, "strength", value=0.1),
     ["variants[0].strength", "without a penalty"]),
    ("penalty-without-strength", add_variant({"name": "x", "penalty": "l2"}),
     ["variants[10]", "'l2'", "strength"]),
    ("typo-in-variant", set_in("variants", 1, "strenght", value=0.1),
     ["variants[1]", "'strenght'"]),
    ("typo-at-top", set_in("seed", value=3), ["unknown key", "'seed'"]),
    ("typo-in-train", set_in("train", "learning_rate", value=0.1),
     ["train", "'learning_rate'"]),
    ("missing-name", delete("name"), ["missing", "'name'"]),
    ("missing-data", delete("data"), ["missing", "'data'"]),
    ("missing-variants", delete("variants"), ["missing", "'variants'"]),
    ("empty-variants", set_in("variants", value=[]), ["variants", "empty"]),
    ("missing-variant-name", set_in("variants", 0, value={"penalty": "l2", "strength": 1.0}),
     ["variants[0]", "'name'"]),
    ("variant-not-a-table", set_in("variants", 0, value="none"),
     ["variants[0]", "'none'"]),
    ("duplicate-variant-names", add_variant({"name": "l2"}),
     ["variants[10].name", "'l2'", "twice"]),
    ("dropout-on-linear-model", linear_model, ["'drop'", ".dropout", "linear"]),
    ("prox-with-blog", set_in("variants", 5, "apply", value="prox"),
     ["variants[5].apply", "'prox'", "'blog'"]),
    ("string-lr", set_in("train", "lr", value="0.1"), ["train.lr", "'0.1'"]),
    ("zero-lr", set_in("train", "lr", value=0.0), ["train.lr", "0.0"]),
    ("string-seeds", set_in("seeds", value="5"), ["seeds", "'5'"]),
    ("zero-seeds", set_in("seeds", value=0), ["seeds", "0"]),
    ("float-epochs", set_in("train", "epochs", value=2.5), ["train.epochs", "2.5"]),
    ("unknown-optimizer", set_in("train", "optimizer", value="lbfgs"),
     ["train.optimizer", "'lbfgs'"]),
    ("unknown-loss", set_in("train", "loss", value="mae"), ["train.loss", "'mae'"]),
    ("momentum-with-adam", set_in("train", "optimizer", value="adam"),
     ["train.momentum", "'adam'"]),
    ("momentum-one", set_in("train", "momentum", value=1.0), ["train.momentum", "1.0"]),
    ("unknown-schedule", set_in("train", "schedule", value="cosine"),
     ["train.schedule", "'cosine'"]),
    ("rate-above-one", set_in("train", "schedule", "rate", value=1.5),
     ["train.schedule.rate", "1.5"]),
    ("plateau-factor-one", set_in("variants", 8, "schedule", "factor", value=1.0),
     ["variants[8].schedule.factor", "1.0"]),
    ("negative-weight-decay", set_in("variants", 6, "weight_decay", value=-0.1),
     ["variants[6].weight_decay", "-0.1"]),
    ("dropout-one", set_in("variants", 7, "dropout", value=1.0),
     ["variants[7].dropout", "1.0"]),
    ("l1-ratio-above-one", set_in("variants", 3, "l1_ratio", value=1.5),
     ["variants[3].l1_ratio", "1.5"]),
    ("unknown-groups", set_in("variants", 4, "groups", value="blocks"),
     ["variants[4].groups", "'blocks'"]),
    ("bad-variant-name", set_in("variants", 0, "name", value="no spaces"),
     ["variants[0].name", "'no spaces'"]),
    ("bad-study-name", set_in("name", value="a/b"), ["name", "'a/b'"]),
    ("unknown-data-kind", set_in("data", "kind", value="mnist"), ["data.kind", "'mnist'"]),
    ("weights-wrong-length", set_in("data", "weights", value=[1.0, 2.0]),
     ["data.weights", "[1.0, 2.0]"]),
    ("nonzeros-above-features", set_in("data", "nonzeros", value=9),
     ["data.nonzeros", "9"]),
    ("negative-noise", set_in("data", "noise_std", value=-1.0), ["data.noise_std", "-1.0"]),
    ("hidden-not-positive", set_in("model", "hidden", value=[8, 0]),
     ["model.hidden", "[8, 0]"]),
    ("dropout-after-missing-layer", set_in("model", "dropout_after", value=[3]),
     ["model.dropout_after", "[3]"]),
    ("linear-with-hidden", set_in("model", "kind", value="linear"),
     ["model.hidden"]),
    ("cross-entropy-on-regression", set_in("train", "loss", value="cross-entropy"),
     ["train.loss", "'cross-entropy'"]),
    ("digits-with-mse", set_in("data", value={"kind": "digits"}), ["digits", "'mse'"]),
    ("digits-without-test-set", set_in("data", value={"kind": "digits", "train": 1000,
                                                      "val": 797}),
     ["train + val", "1797"]),
]


@pytest.mark.parametrize(("change", "fragments"), [pytest.param(c, f, id=i) for i, c, f in BAD])
def test_bad_input_names_key_and_value(change, fragments):
    with pytest.raises(StudyError) as error:
        parse_study(edit(change), "my.toml")
    message = str(error.value)
    assert message.startswith("my.toml")  # the source is named
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message  # one line for the CLI


def test_study_error_is_a_value_error():
    assert issubclass(StudyError, ValueError)


def test_the_top_level_must_be_a_table():
    with pytest.raises(StudyError, match=r"\[1, 2\]"):
        parse_study([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(("overrides", "fragments"), [
    pytest.param({"seeds": 0}, ["--seeds", "0"], id="seeds-0"),
    pytest.param({"seeds": -2}, ["--seeds", "-2"], id="seeds-negative"),
    pytest.param({"seeds": True}, ["--seeds", "True"], id="seeds-bool"),
    pytest.param({"epochs": 0}, ["--epochs", "0"], id="epochs-0"),
    pytest.param({"epochs": 1.5}, ["--epochs", "1.5"], id="epochs-float"),
])
def test_bad_overrides(overrides, fragments):
    study = parse_study(base())
    with pytest.raises(StudyError) as error:
        study.with_overrides(**overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_the_manuals_study_file_is_valid():
    """The lab manual's example study parses, with the meaning its comments give."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    manual = (Path(__file__).resolve().parents[2] / "docs" / "lab.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", manual, flags=re.DOTALL)
    assert blocks, "docs/lab.md has no ```toml block"
    block = next(b for b in blocks if 'name = "my-study"' in b)
    study = parse_study(tomllib.loads(block), "docs/lab.md")
    assert [v.name for v in study.variants] == ["none", "l1", "prox-l1"]
    assert study.data.nonzeros == 5 and study.train.batch_size == 0
    assert study.variants[2].apply == "prox" and study.variants[2].tuned


# -- the schema in the docstring shows the real defaults ---------------------------------------
def _defaults_by_section(tmp_path) -> list[dict[str, Any]]:
    """What parse_study gives for every key left out, per section of the docstring's schema
    (the top level, synthetic data, the user's data, model, train, variants, python model)."""
    import dataclasses

    def parsed(data=None, model=None, variant=None):
        return parse_study({"name": "x", "data": data or {"kind": "linear"},
                            "model": model or {}, "variants": [variant or {"name": "none"}]},
                           root=tmp_path)

    def fields_of(obj) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}

    plain = parsed()
    user: dict[str, Any] = {}
    for data in ({"kind": "csv", "path": "x.csv", "target": "y"},
                 {"kind": "python", "factory": "m:f"}, {"kind": "sklearn", "name": "diabetes"}):
        user = {**fields_of(parsed(data=data).data), **user}
    cnn = parse_study({"name": "x", "data": {"kind": "sklearn", "name": "digits", "images": True},
                       "model": {"kind": "cnn", "channels": [4]},
                       "train": {"loss": "cross-entropy"}, "variants": [{"name": "none"}]})
    model = {**fields_of(cnn.model), "kind": plain.model.kind, "channels": ()}  # required there
    variant = fields_of(plain.variants[0])
    variant["early_stopping"] = dataclasses.asdict(
        parsed(variant={"name": "v", "early_stopping": {}}).variants[0].early_stopping)
    recipe = fields_of(plain.train)
    recipe["schedule"] = recipe["schedule"].kind  # "constant"
    python = fields_of(parsed(model={"kind": "python", "factory": "m:f"}).model)
    if python["root"] == str(tmp_path.resolve()):  # "." is the study file's directory
        python["root"] = "."
    return [{"description": plain.description, "seeds": plain.seeds,
             "data_seed": plain.data_seed}, fields_of(plain.data), user, model, recipe, variant,
            python]


def _toml_value(text: str) -> Any:
    import tomllib

    return tomllib.loads(f"v = {text}")["v"]


def _plain(key: str, value: Any) -> Any:
    """A parsed default as TOML writes it: tuples as lists, ``kwargs`` pairs as a table."""
    if key == "kwargs":
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def test_the_schema_in_the_docstring_shows_the_real_defaults(tmp_path):
    """Every ``key = value`` of the study docstring's schema is the key's default as parsed
    (unless marked required or given as an example, "e.g.", of a key without a default)."""
    from regtorch.lab.study import spec

    schema = spec.__doc__.split("errors::\n\n", 1)[1].split("\n\nPenalties", 1)[0]
    sections = re.split(r"\n    \[\[?\w+\]\]?[^\n]*\n", "\n" + schema)
    defaults = _defaults_by_section(tmp_path)
    assert len(sections) == len(defaults)
    checked = 0
    for section, default in zip(sections, defaults):
        for line in section.splitlines():
            found = re.match(r"^    (\w+) = (.*?)(?:\s{2,}#\s*(.*))?$", line)
            if not found:
                continue
            key, value, comment = found.group(1), found.group(2), found.group(3) or ""
            if key == "kind" or comment.startswith(("required", "e.g.")):
                if comment.startswith("e.g."):  # an example stands only for a key without one
                    assert default.get(key) in (None, ()), (key, default.get(key))
                continue
            assert key in default, key
            assert _toml_value(value) == _plain(key, default[key]), (key, value, default[key])
            checked += 1
    assert checked >= 40
    # the schedules' own defaults, shown in the comments
    for table in re.findall(r"\{kind = [^}]*\}", schema):
        given = _toml_value(table)
        schedule = parse_study({"name": "x", "data": {"kind": "linear"},
                                "train": {"schedule": {"kind": given["kind"]}},
                                "variants": [{"name": "none"}]}).train.schedule
        assert {k: getattr(schedule, k) for k in given} == given, table


def test_config_json_names_the_python_factory_wherever_it_is_read(tmp_path, monkeypatch):
    """A python model's root (the study file's directory, where ``f.py`` is found) is in
    ``Study.to_dict()`` (config.json), so the configuration builds the same factory from any
    directory — `regtorch report` and a resumed run resolve what the first run used."""
    from regtorch.lab.study.models import build_model

    (tmp_path / "f.py").write_text("import torch\n\ndef make():\n"
                                   "    return torch.nn.Linear(3, 1)\n")
    study = parse_study({"name": "x", "data": {"kind": "linear", "features": 3},
                         "model": {"kind": "python", "factory": "f.py:make"},
                         "variants": [{"name": "none"}]}, root=tmp_path)
    config = json.loads(json.dumps(study.to_dict()))
    assert config["model"]["root"] == str(tmp_path.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = parse_study(config, root=elsewhere)
    assert again == study and again.to_dict() == config
    model = build_model(again.model, (3,), 1, seed=0)
    assert isinstance(model, torch.nn.Linear)
