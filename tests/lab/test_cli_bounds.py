"""Command-line bounds: the λ grid of ``regtorch sweep --lambdas`` is bounded, and a negative λ
parses and is refused for its value (not as an unknown option)."""

from __future__ import annotations

import contextlib
import io

import pytest

from regtorch.lab.analysis.sweep import MAX_LAMBDAS, parse_lambdas
from regtorch.lab.cli import main
from regtorch.lab.cli.command import MAX_ERROR_LINE
from regtorch.lab.study.spec import StudyError


def _main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


@pytest.mark.parametrize("text", ["1e-3:1e3:100000", ",".join(str(i + 1) for i in range(201))],
                         ids=["range", "list"])
def test_a_grid_beyond_the_bound_is_refused(text):
    with pytest.raises(StudyError, match=f"at most {MAX_LAMBDAS} values of λ"):
        parse_lambdas(text)


def test_the_bound_itself_is_accepted():
    assert len(parse_lambdas(f"1e-3:1e3:{MAX_LAMBDAS}")) == MAX_LAMBDAS


def test_a_huge_grid_exits_2_before_any_directory(tmp_path):
    status, err = _main(["sweep", "linear-1d", "--penalty", "l2", "--lambdas", "1e-3:1e3:100000",
                         "--out", str(tmp_path / "runs")])
    assert status == 2
    assert err == (f"regtorch: --lambdas '1e-3:1e3:100000': at most {MAX_LAMBDAS} values of λ "
                   f"(each is --seeds trainings), got 100000\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["-1,2", "-1"])
def test_a_negative_lambda_parses_and_is_refused_for_its_value(text, tmp_path):
    status, err = _main(["sweep", "linear-1d", "--penalty", "l2", "--lambdas", text,
                         "--out", str(tmp_path / "runs")])
    assert status == 2
    assert err.startswith(f"regtorch: --lambdas '{text}': every λ must be finite and > 0, got "
                          f"-1.0")
    assert list(tmp_path.iterdir()) == []


def test_lambdas_without_a_value_is_a_usage_error():
    status, err = _main(["sweep", "linear-1d", "--penalty", "l2", "--lambdas", "--seeds", "2"])
    assert status == 2
    assert "--lambdas: expected one argument" in err


@pytest.mark.parametrize("argv", [
    ["sweep", "linear-1d", "--penalty", "l2", "--lambdas", ",".join(["1"] * 201)],
    ["sweep", "linear-1d", "--penalty", "l2", "--lambdas", ",".join(["-1"] * 100)],
    ["run", "x" * 500]], ids=["long-grid", "long-negative", "long-name"])
def test_errors_are_short_and_whole(argv, tmp_path):
    status, err = _main([*argv, "--out", str(tmp_path / "runs")])
    assert status == 2
    assert err.count("\n") == 1 and len(err.rstrip("\n")) <= MAX_ERROR_LINE, err
    # the advice at the end is there, not cut off
    assert err.rstrip().endswith(("got 201", "got -1.0 (λ = 0 is always trained, as the "
                                  "reference)", "or give a .toml study file)")), err  # not cut
