"""Medians of rounds and of paired ratios, with a distribution-free interval (the sign test's).

On a shared machine whose speed swings 2x within minutes, the benchmarks measure contenders in turns
and report the median round, or the median of paired ratios, never a mean.
"""

from __future__ import annotations

import math
import statistics


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median and the narrowest symmetric order-statistic interval
    ``[x_(k), x_(n-k+1)]`` whose coverage is at least ``level`` (the sign test's; no assumption about
    the spread). Below 6 values no interval reaches 95 %: then the range, which covers less."""
    xs, n = sorted(values), len(values)
    tail, k = 0.0, 0  # P(Binomial(n, 1/2) <= k - 1): the chance that fewer than k values fall below the median
    while k < n // 2:
        step = math.comb(n, k) / 2 ** n
        if 2 * (tail + step) > 1 - level:
            break
        tail += step
        k += 1
    if k == 0:  # too few values for any interval at this level
        return statistics.median(xs), xs[0], xs[-1]
    return statistics.median(xs), xs[k - 1], xs[n - k]


def median_round(rounds: list[dict], key: str = "rps") -> dict:
    """The round whose ``key`` is the median (the upper one of an even count): a real round, not a mix."""
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]
