"""Numbers, percentages, p-values, plurals, days and times written for people: in alert messages, check
results, the dashboard and the command line. One formatter per kind of value; no Dagster, no I/O."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import pandas as pd


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x, whole: bool = False) -> str:
    """4 significant digits, thousands separated, never scientific for everyday magnitudes ('n/a' for none).
    `whole`: a whole number (a count, also one summed as a float: 115800.0) is written in full, '115,800'."""
    if _missing(x):
        return "n/a"
    x = float(x)
    if whole and x.is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    if x != 0 and (abs(x) >= 1e9 or abs(x) < 1e-4):
        return f"{x:.2e}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    text = f"{x:.4g}"
    return text if "e" not in text else f"{x:.4f}"


def plain_number(x) -> str:
    """A number without float noise or separators, for CSV: 3, 0.0812, 1346.5 (6 significant digits), '' for none."""
    if x is None or pd.isna(x):
        return ""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def fmt_p(p) -> str:
    """'p < 1e-300' below what a double can tell apart, 'p = 3.2e-07' for small, 'p = 0.012' else."""
    if _missing(p):
        return "p n/a"
    p = float(p)
    if p < 1e-300:
        return "p < 1e-300"
    if p < 1e-3:
        return f"p = {p:.1e}"
    return f"p = {p:.3f}"


def fmt_pct(x) -> str:
    """A share as a percentage: '42%', and two decimals below 10%: '3.35%'."""
    if _missing(x):
        return "n/a"
    return f"{float(x):.0%}" if abs(float(x)) >= 0.1 else f"{float(x):.2%}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 day', '3 days' ('2 wolves' with `words`)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def fmt_day(value) -> str:
    """A partition date without a time part."""
    if value is None:
        return ""
    try:
        return str(pd.Timestamp(value).date())
    except (ValueError, TypeError):
        return str(value)


def day_span(days: Sequence[str]) -> str:
    """'2026-10-03', or the first and last day and how many: '2026-10-03 .. 2026-10-05 (3 days)'."""
    days = sorted(set(days))
    if not days:
        return "(no day)"
    return days[0] if len(days) == 1 else f"{days[0]} .. {days[-1]} ({plural(len(days), 'day')})"


def iso(ts: float | None, seconds: bool = False) -> str:
    """An epoch time for people: '2026-11-23 14:05 UTC'; with `seconds`, ISO 8601 to the second as
    '2026-11-23T14:05:09Z'. '' for none."""
    if ts is None or pd.isna(ts):
        return ""
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ" if seconds
                                                                   else "%Y-%m-%d %H:%M UTC")


def fmt_cell(value: object, column: str = "", widest: int = 60) -> str:
    """One value of a table or record as a person reads it: ISO dates, '-' for missing (NaN, NaT), numbers
    rounded, shares in %, text on one line and cut at `widest` characters."""
    if value is None or value != value:  # NaN and NaT are not equal to themselves
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds" if value.second else "minutes")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        if column == "traffic_share":
            return f"{value:.0%}"
        if column == "p_value":
            return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"
        return f"{value:,.0f}" if value.is_integer() and abs(value) < 1e15 else f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}" if column != "request_id" else str(value)
    text = " ".join(str(value).split())  # one line per row
    return text if len(text) <= widest else text[:widest - 1] + "…"
