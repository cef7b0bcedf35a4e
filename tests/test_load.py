"""The idle target and the backoff schedule are pure functions: properties."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from procsup import idle_target
from procsup._backoff import backoff_delay

idles = st.integers(min_value=0, max_value=1000)
loads = st.floats(min_value=-1.0, max_value=2.0, allow_nan=False)
thresholds = st.floats(min_value=0.01, max_value=1.0)


@given(idles, thresholds)
def test_full_target_at_zero_load(idle: int, threshold: float) -> None:
    assert idle_target(idle, 0.0, threshold) == idle


@given(idles, loads, thresholds)
def test_zero_at_or_above_the_threshold(idle: int, load: float, threshold: float) -> None:
    if load >= threshold:
        assert idle_target(idle, load, threshold) == 0


@given(idles, loads, thresholds)
def test_bounded(idle: int, load: float, threshold: float) -> None:
    assert 0 <= idle_target(idle, load, threshold) <= idle


@given(idles, loads, loads, thresholds)
def test_never_rises_when_load_rises(idle: int, a: float, b: float, threshold: float) -> None:
    low, high = sorted((a, b))
    assert idle_target(idle, high, threshold) <= idle_target(idle, low, threshold)


@given(idles, thresholds)
def test_nan_load_counts_as_full(idle: int, threshold: float) -> None:
    assert idle_target(idle, math.nan, threshold) == 0


def test_seed_004_target_is_not_backwards() -> None:
    """Guards seed 004: at full load the target was set to the maximum."""
    assert idle_target(4, 1.0, 0.7) == 0
    assert idle_target(4, 0.0, 0.7) == 4
    assert 0 < idle_target(4, 0.35, 0.7) < 4


failures = st.integers(min_value=0, max_value=10_000)
jitters = st.floats(min_value=0.0, max_value=1.0)


@given(failures, jitters)
def test_backoff_is_capped_and_non_negative(n: int, jitter: float) -> None:
    delay = backoff_delay(n, base=0.1, cap=30.0, jitter=jitter)
    assert 0.0 <= delay <= 30.0
    if n == 0:
        assert delay == 0.0


@given(st.integers(min_value=1, max_value=60), jitters)
def test_backoff_grows_until_the_cap(n: int, jitter: float) -> None:
    now = backoff_delay(n, base=0.1, cap=30.0, jitter=jitter)
    later = backoff_delay(n + 1, base=0.1, cap=30.0, jitter=jitter)
    assert later >= now
    assert now >= 0.5 * min(30.0, 0.1 * 2 ** (n - 1)) - 1e-12
