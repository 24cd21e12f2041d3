"""Wilson score intervals for accuracies, and the rule the demo compares two accuracies by.

An accuracy measured on n problems is a binomial proportion; the Wilson interval keeps its coverage near
the nominal level at the small n and the proportions near 0 or 1 that evaluations produce, where the
normal ("Wald") interval collapses to a point.

Example:
    >>> low, high = wilson_interval(170, 200)
    >>> round(low, 3), round(high, 3)
    (0.794, 0.893)
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of `successes` out of `n` trials.

    >>> wilson_interval(0, 10)[0], round(wilson_interval(0, 10)[1], 3)
    (0.0, 0.278)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0  # nothing measured: every accuracy is possible
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 and n the bound is exactly 0 or 1 (the formula leaves a rounding error there)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point.

    >>> intervals_overlap((0.8, 0.9), (0.85, 0.95)), intervals_overlap((0.1, 0.2), (0.3, 0.4))
    (True, False)
    """
    return a[0] <= b[1] and b[0] <= a[1]


PARITY_MARGIN = 0.02
"""How far below the baseline's accuracy the Multiverse model may score and still be at parity."""


def accuracy_parity(
    multiverse: float, multiverse_interval: tuple[float, float], baseline: float, baseline_interval: tuple[float, float]
) -> bool:
    """The demo's accuracy target: the Multiverse model is at parity with the baseline.

    Met when its accuracy is within `PARITY_MARGIN` (2 points) below the baseline's or above it, or when the
    two Wilson 95% intervals overlap: the gap is then within what the sampling of the held-out problems
    alone produces. It fails only when the Multiverse model is measurably worse: more than 2 points below
    and with disjoint intervals. (It says nothing about the baseline being sound: the demo checks that apart.)

    >>> accuracy_parity(0.80, (0.74, 0.85), 0.86, (0.81, 0.90))  # 6 points below, but within the noise of n = 200
    True
    >>> accuracy_parity(0.60, (0.53, 0.67), 0.86, (0.81, 0.90))
    False
    """
    return multiverse >= baseline - PARITY_MARGIN or intervals_overlap(multiverse_interval, baseline_interval)
