"""Paired statistics shared by every evaluation: differences between two runs matched on (prompt, seed),
means with 95% t-intervals, and the seed-to-seed spread as a number of its own.

A run's values are a mapping ``(prompt, seed) -> value`` (``prompt`` any hashable key: the prompt's index in
the run's prompt list, so that a prompt listed twice stays two prompts).  The **unit** says what one
observation is:

- ``"answer"``: every (prompt, seed) pair;
- ``"prompt"`` (the default for tables and claims): the mean over seeds of each prompt first, since the
  seeds of one prompt share it and are correlated;
- ``"seed"``: the mean over prompts of each seed first.

The interval is the t-interval ``mean ± t(0.975, n - 1) · sd / √n`` over the n units (None below 2 units,
or when a value is not finite, e.g. the -inf fluency of an empty answer).
Wins, losses and ties count units whose (mean) difference is above, below or equal to 0 (within
:data:`TIE`); :func:`sign_test` is the exact two-sided sign test on them (ties left out), which for a
pass/fail gold at one seed is McNemar's exact test on the discordant problems.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Hashable, Mapping

UNITS = ("answer", "prompt", "seed")
DEFAULT_UNIT = "prompt"
LEVEL = 0.95
TIE = 1e-12  # a unit's difference this close to 0 is a tie (float noise of equal answers' means)

Key = tuple[Hashable, Hashable]  # (prompt, seed)


def _check_unit(unit) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}.")


def _check_values(name: str, values: Mapping[Key, float]) -> None:
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a mapping (prompt, seed) -> value, got {type(values).__name__}.")
    for key, value in values.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"{name} must be keyed by (prompt, seed) pairs, got the key {key!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name}[{key!r}] must be a number, got {value!r}.")


# --- Student's t quantile (scipy when installed) ------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy's when installed)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}.")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df!r}.")
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return _t_quantile(p, df)
    return float(student_t.ppf(p, df))


def _t_quantile(p: float, df: float) -> float:
    if p < 0.5:
        return -_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):  # bisection to float precision
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


# --- means and paired differences ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` units with its 95% t-interval (``low``/``high`` None below 2 units)."""

    unit: str
    n: int
    mean: float
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2


@dataclass(frozen=True)
class Paired(Interval):
    """A paired difference ``a - b`` over ``n`` units: its mean, 95% t-interval and the units' signs."""

    wins: int = 0  # units where a > b
    losses: int = 0
    ties: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def sign_p(self) -> float:
        """The exact two-sided sign test's p-value of the wins against the losses (:func:`sign_test`)."""
        return sign_test(self.wins, self.losses)


def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign test: the probability, with wins and losses equally likely, of a split at
    least as uneven as ``wins`` / ``losses`` (ties left out; McNemar's exact test on discordant pairs).
    1.0 when there are none."""
    for name, value in (("wins", wins), ("losses", losses)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a count (an integer of at least 0), got {value!r}.")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def units(values: Mapping[Key, float], unit: str = DEFAULT_UNIT) -> list[float]:
    """The observations of ``values`` at ``unit``: each value, or the mean per prompt or per seed (in the
    order the prompts or seeds first appear)."""
    _check_unit(unit)
    _check_values("values", values)
    if unit == "answer":
        return list(values.values())
    at = 0 if unit == "prompt" else 1
    groups: dict = {}
    for key, value in values.items():
        groups.setdefault(key[at], []).append(value)
    return [statistics.fmean(g) for g in groups.values()]


def interval(observations: list[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """Mean and ``level`` t-interval of ``observations`` (the interval None below 2 of them)."""
    if not observations:
        raise ValueError("observations must not be empty.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    mean = statistics.fmean(observations)
    n = len(observations)
    if n < 2 or not all(map(math.isfinite, observations)):  # e.g. the -inf fluency of an empty answer
        return mean, None, None
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(observations) / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_interval(values: Mapping[Key, float], unit: str = DEFAULT_UNIT) -> Interval:
    """The mean of one run's ``values`` with its 95% interval over ``unit``s."""
    obs = units(values, unit)
    if not obs:
        raise ValueError("values must not be empty.")
    return Interval(unit, len(obs), *interval(obs))


def seed_spread(values: Mapping[Key, float]) -> float | None:
    """The seed-to-seed spread: the standard deviation of the per-seed means (0 for one seed; None when a
    mean is not finite)."""
    means = units(values, "seed")
    if not means:
        raise ValueError("values must not be empty.")
    if not all(map(math.isfinite, means)):
        return None
    return statistics.stdev(means) if len(means) > 1 else 0.0


def paired(a: Mapping[Key, float], b: Mapping[Key, float], unit: str = DEFAULT_UNIT) -> Paired:
    """The paired difference ``a - b`` over the (prompt, seed) pairs both runs have, at ``unit``."""
    _check_unit(unit)
    _check_values("a", a)
    _check_values("b", b)
    shared = [k for k in a if k in b]
    if not shared:
        raise ValueError("a and b share no (prompt, seed) pair to compare.")
    obs = units({k: a[k] - b[k] for k in shared}, unit)
    mean, low, high = interval(obs)
    return Paired(unit, len(obs), mean, low, high, wins=sum(d > TIE for d in obs), losses=sum(d < -TIE for d in obs),
                  ties=sum(abs(d) <= TIE for d in obs))
