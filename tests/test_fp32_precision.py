"""The fast engine's fp32 meta-gradient against float64, on small ResNet-12s and a Conv4 (CPU).

One fp32 run is a lottery: the second-order meta-gradient of a batch-statistics BatchNorm
network is ill-conditioned, so any change of rounding redraws its error from a heavy-tailed
distribution (``benchmarks/fp32_error.py``; docs/performance.md). Over several seeds, the fast
engine's error must stay within a small factor of the exact engine's (geometric mean of the
per-seed ratios), and its median error too. The exact engine equals the plain loop bit for bit.
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("channels", [(16, 16, 16, 16), (8, 8, 16, 16), (4, 4, 8, 8)])
def test_fast_engine_fp32_error_is_within_a_small_factor_of_the_exact_engines(
    channels, load_benchmark
):
    pytest.importorskip("fewmask_plugin_metaticket")
    module = load_benchmark("fp32_error")
    levers = {"exact": module.LEVERS["exact"], "fast": module.LEVERS["fast"]}
    rows = [module.seed_errors(s, channels, 32, "metaticket", 2, levers) for s in range(6)]
    assert all(r["exact"] == r["loop"] for r in rows)
    summary = module.summary(rows)
    assert summary["fast"]["ratio_geomean"] < 3.0, summary
    assert summary["fast"]["median"] < 3.0 * summary["exact"]["median"], summary


def test_channels_last_is_used_only_on_wide_convolutions():
    """The narrowing that keeps the fast engine's fp32 error near the exact engine's."""
    from torch import nn

    from fewmask.engine import channels_last_pays

    assert channels_last_pays(nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 16, 3)))
    assert not channels_last_pays(nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 8, 3)))
    assert channels_last_pays(nn.Linear(4, 4))  # nothing to narrow
