"""Parameter checks whose errors name the parameter, its value and what is allowed."""

from __future__ import annotations

import difflib
import math
from typing import Iterable


def check_range(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in the given range.

    >>> check_range("top_p", 1.5, low=0, high=1, low_open=True)
    Traceback (most recent call last):
    ValueError: top_p must be in (0, 1], got 1.5.
    """
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        lo = _fmt(low) if low is not None else "-inf"
        hi = f"{_fmt(high)}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}, got {value!r}.")


def check_choice(name: str, value, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, suggesting the closest one."""
    choices = list(choices)
    if value in choices:
        return
    hint = difflib.get_close_matches(str(value), choices, n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.{suggestion}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_template(name: str, template) -> None:
    """A prompt template is ``"chat"`` or a format string that uses ``{prompt}``."""
    if template == "chat":
        return
    if not isinstance(template, str) or "{prompt}" not in template:
        raise ValueError(f"{name} must be 'chat' or a format string containing '{{prompt}}', got {template!r}.")
    try:
        template.format(prompt="")
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(
            f"{name} {template!r} is not a valid format string ({err}); write literal braces as '{{{{' and '}}}}'."
        ) from None


def check_counts(name: str, values, low: int = 1) -> tuple[int, ...]:
    """A list of integers, each at least ``low``, as a tuple; a single number is refused by name."""
    if not isinstance(values, (tuple, list)):
        raise ValueError(f"{name} must be a list of integers (e.g. [4, 2]), got {values!r}.")
    for v in values:
        check_range(name, v, low=low, integer=True)
    return tuple(values)


def check_stop(stop) -> tuple[str, ...]:
    """Stop strings as a tuple; a bare string is refused (it would otherwise be split into characters)."""
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a sequence of non-empty strings (e.g. ['\\n']), got {stop!r}.")
    return tuple(stop)
