"""Number formatting for humans, shared by the Markdown report and the plot axes.

Every formatter accepts anything (None, NaN, a string from a hand-edited file) and returns a
string, because a report about a broken run is exactly when the data is most likely to be odd.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "n/a"


def as_float(value: Any) -> float | None:
    """Return ``value`` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _special(number: float) -> str | None:
    """Spell out NaN and infinities instead of letting them look like real numbers."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return None


def fmt_int(value: Any) -> str:
    """1234567 -> '1,234,567'."""
    number = as_float(value)
    if number is None:
        return MISSING
    return _special(number) or f"{round(number):,}"


def fmt_count(value: Any) -> str:
    """1234567 -> '1,234,567 (1.23 M)': exact for copying, rounded for reading."""
    number = as_float(value)
    if number is None:
        return MISSING
    exact = fmt_int(number)
    if _special(number) or abs(number) < 1000:
        return exact
    return f"{exact} ({human_count(number)})"


def human_count(value: float) -> str:
    """Compact form with a metric suffix: 1234 -> '1.23 k', 5e9 -> '5 G'."""
    special = _special(value)
    if special:
        return special
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g} {suffix}"
    return f"{value:.3g}"


def fmt_percent(value: Any) -> str:
    """Fraction 0..1 -> '97.53 %'."""
    number = as_float(value)
    if number is None:
        return MISSING
    return _special(number) or f"{100.0 * number:.2f} %"


def fmt_percent_bare(value: Any) -> str:
    """Fraction 0..1 -> '97.53' (for table columns whose header already says %)."""
    number = as_float(value)
    if number is None:
        return MISSING
    return _special(number) or f"{100.0 * number:.2f}"


def fmt_loss(value: Any) -> str:
    """Loss with four decimals (0.012345 -> '0.0123'); scientific when tiny or huge."""
    number = as_float(value)
    if number is None:
        return MISSING
    special = _special(number)
    if special:
        return special
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e5):
        return f"{number:.3e}"
    return f"{number:.4f}"


def fmt_seconds(value: Any) -> str:
    """Seconds for one epoch: 0.1234 -> '0.123 s'."""
    number = as_float(value)
    if number is None:
        return MISSING
    return _special(number) or f"{number:.3f} s"


def fmt_duration(value: Any) -> str:
    """Total run time: '0.123 s', '42.500 s', '3 min 05 s', '2 h 07 min'."""
    number = as_float(value)
    if number is None:
        return MISSING
    special = _special(number)
    if special:
        return special
    if number < 60:
        return f"{number:.3f} s"
    minutes, seconds = divmod(round(number), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_change(initial: Any, final: Any) -> str:
    """Relative change in percent with a sign: (64, 48) -> '-25.0 %'."""
    start, end = as_float(initial), as_float(final)
    if start is None or end is None or start == 0 or _special(start) or _special(end):
        return MISSING
    change = 100.0 * (end - start) / start
    return "0.0 %" if change == 0 else f"{change:+.1f} %"


def fmt_widths(widths: Any) -> str:
    """[64, 32, 10] -> '64-32-10' (units per resizable layer, input to output)."""
    if not isinstance(widths, list | tuple) or not widths:
        return MISSING
    return "-".join(fmt_int(width).replace(",", "") for width in widths)


def md_cell(text: Any) -> str:
    """Make arbitrary text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
