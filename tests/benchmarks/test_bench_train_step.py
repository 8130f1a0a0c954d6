"""``benchmarks/bench_train_step.py``: every variant trains the same network on the same batch."""

from __future__ import annotations

import math

import pytest
from helpers.benchmarks import load_benchmark

bench = load_benchmark("bench_train_step")


@pytest.mark.parametrize("variant", ["eager", "channels_last"])
def test_a_variant_times_real_training_steps(variant):
    t = bench.time_variant(variant, patch=(64, 64), batch=2, steps=2, warmup=1)
    assert set(t) == {"first", "median"} and all(math.isfinite(v) and v > 0 for v in t.values())


def test_the_benchmarked_network_is_the_cpu_plans():
    from brainseg_cli.data.plan import CPU_BASE_FEATURES

    assert bench.NETWORK["base_features"] == CPU_BASE_FEATURES
    assert set(bench.VARIANTS) == {"eager", "channels_last", "compile"}
