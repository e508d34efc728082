"""Shared bits of the benchmarks: percentiles and model factories."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.3f} ms p99={percentile(ms, 99):.3f} ms "
        f"max={max(ms):.3f} ms mean={statistics.fmean(ms):.3f} ms"
    )
