"""``benchmarks/bench_fused.py``'s variant filter (the benchmark itself is run by hand)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(_DIR))  # bench_fused imports bench_penalty as a sibling module
    try:
        spec = importlib.util.spec_from_file_location("bench_fused", _DIR / "bench_fused.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_DIR))
    return module


def test_every_variant_without_a_filter(bench):
    assert bench.pick_variants(None) == list(bench.VARIANTS)


def test_a_filter_keeps_the_matching_variants_and_the_references(bench):
    picked = bench.pick_variants("L1 Proximal, fused prox")
    expected = [name for name in bench.VARIANTS
                if name in ("none", "none (2nd copy)", "builtin weight_decay")
                or "L1 Proximal" in name or "fused prox" in name]
    assert picked == expected
    assert "L1 Proximal pure PyTorch" in picked and "L2 reg()" not in picked


def test_a_piece_matching_nothing_is_refused_by_name(bench):
    with pytest.raises(SystemExit, match="invalid --variants piece: 'Proximall'"):
        bench.pick_variants("L1 Proximal,Proximall")
    with pytest.raises(SystemExit, match="invalid --variants piece"):
        bench.pick_variants(" , ")
