"""The `evaluation:` section of the config and the calendar of evaluation windows.

    evaluation:
      windows: [week, month, quarter, {rolling_days: 28}, {name: black_friday, start: 2026-11-20, end: 2026-11-30}]
      alerts: true   # the evaluation_window_within_baseline check judges each closed window (false: never warns)
      concentration_ratio: 1.25   # a ranker's window warns when its popularity concentration passes this x the reference's

A window is a span of whole days: a calendar week (Monday to Sunday), month or quarter; the N days ending on a day
(one rolling window per day); or a fixed date range (a release period). Each is compared with the reference and
with the window of the same kind before it (the previous week, month, quarter; the N days before; the same number
of days before a fixed range). Plain Python: no Dagster, no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor_assets.config import ConfigError

CALENDAR = ("week", "month", "quarter")
ROLLING = "rolling"
RANGE = "range"
MAX_ROLLING_DAYS = 366
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class WindowSpec:
    """One configured window: `kind` week | month | quarter | rolling | range; `name` is what the store calls it
    (`week`, `rolling_28d`, `black_friday`)."""

    kind: str
    name: str
    days: int = 0  # rolling: its length
    start: dt.date | None = None  # range
    end: dt.date | None = None


@dataclass(frozen=True)
class Window:
    """One evaluated window: a spec and its first and last day (both included)."""

    spec: WindowSpec
    start: dt.date
    end: dt.date

    @property
    def length(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def key(self) -> str:
        """The window's id in the store: name and first day (`week:2026-11-02`)."""
        return f"{self.spec.name}:{self.start.isoformat()}"

    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.length)]


@dataclass(frozen=True)
class EvaluationConfig:
    windows: tuple[WindowSpec, ...] = (WindowSpec("week", "week"), WindowSpec("month", "month"))
    # The `evaluation_window_within_baseline` check judges closed windows (false: it passes every day, and the
    # reports say nothing warned).
    alerts: bool = True
    # A ranker's window warns when its popularity concentration (the share of impressions to the top 1% of items)
    # passes this many times the reference's. On the demo the stable weeks sit within 1.03 x; the popularity
    # collapse (two days of a week at 0.40 against 0.18) makes its week 1.41 x.
    concentration_ratio: float = 1.25


DEFAULT = EvaluationConfig()


def parse_evaluation(data: Any, file: Path | str = "config", key: str = "evaluation") -> EvaluationConfig:
    """The `evaluation:` mapping (None: the default, week and month). Errors are one line naming the key."""
    if data is None:
        return DEFAULT
    if not isinstance(data, dict):
        raise ConfigError(file, key, f"expected a mapping, got {type(data).__name__}")
    extra = sorted(set(data) - {"windows", "alerts", "concentration_ratio"}, key=str)
    if extra:
        raise ConfigError(file, f"{key}.{extra[0]}", "unknown key; expected windows, alerts, concentration_ratio")
    alerts = data.get("alerts", True)
    if not isinstance(alerts, bool):
        raise ConfigError(file, f"{key}.alerts", f"expected true or false, got {alerts!r}")
    ratio = data.get("concentration_ratio", DEFAULT.concentration_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 1 < ratio <= 100:
        raise ConfigError(file, f"{key}.concentration_ratio", f"expected a number above 1 (at most 100), got {ratio!r}")
    items = data.get("windows")
    if items is None:
        return EvaluationConfig(alerts=alerts, concentration_ratio=float(ratio))
    if not isinstance(items, list) or not items:
        raise ConfigError(file, f"{key}.windows", "expected a non-empty list of windows")
    specs = [_window(item, file, f"{key}.windows[{i}]") for i, item in enumerate(items)]
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(file, f"{key}.windows[{i}]", f"window {name!r} is listed twice")
    return EvaluationConfig(tuple(specs), alerts, float(ratio))


def _window(item: Any, file: Path | str, key: str) -> WindowSpec:
    if isinstance(item, str):
        if item not in CALENDAR:
            raise ConfigError(file, key, f"expected one of {', '.join(CALENDAR)}, {{rolling_days: N}} or "
                                         f"{{name, start, end}}, got {item!r}")
        return WindowSpec(item, item)
    if not isinstance(item, dict):
        raise ConfigError(file, key, f"expected a window name or a mapping, got {type(item).__name__}")
    if "rolling_days" in item:
        extra = sorted(set(item) - {"rolling_days"}, key=str)
        if extra:
            raise ConfigError(file, f"{key}.{extra[0]}", "unknown key beside rolling_days")
        n = item["rolling_days"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ROLLING_DAYS:
            raise ConfigError(file, f"{key}.rolling_days", f"expected a whole number of days in [1, "
                                                           f"{MAX_ROLLING_DAYS}], got {n!r}")
        return WindowSpec(ROLLING, f"rolling_{n}d", days=n)
    extra = sorted(set(item) - {"name", "start", "end"}, key=str)
    if extra:
        raise ConfigError(file, f"{key}.{extra[0]}", "unknown key; expected rolling_days, or name, start and end")
    for part in ("name", "start", "end"):
        if item.get(part) is None:
            raise ConfigError(file, f"{key}.{part}", "is required")
    name = item["name"]
    if not isinstance(name, str) or not NAME.match(name) or name in CALENDAR or name.startswith("rolling_"):
        raise ConfigError(file, f"{key}.name", "expected a lower-case name (letters, digits, _; at most 40; not a "
                                               f"calendar window's or rolling_...), got {name!r}")
    start, end = (_date(item[p], file, f"{key}.{p}") for p in ("start", "end"))
    if end < start:
        raise ConfigError(file, f"{key}.end", f"expected a date on or after start {start}, got {end}")
    return WindowSpec(RANGE, name, start=start, end=end)


def _date(value: Any, file: Path | str, key: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(file, key, f"expected a date YYYY-MM-DD, got {value!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# The calendar


def window_of(spec: WindowSpec, day: dt.date) -> Window:
    """The window of `spec` holding `day` (rolling: the N days ending on it; range: the range itself)."""
    if spec.kind == "week":
        start = day - dt.timedelta(days=day.weekday())
        return Window(spec, start, start + dt.timedelta(days=6))
    if spec.kind in ("month", "quarter"):
        first_month = day.month if spec.kind == "month" else 3 * ((day.month - 1) // 3) + 1
        start = dt.date(day.year, first_month, 1)
        return Window(spec, start, _add_months(start, 1 if spec.kind == "month" else 3) - dt.timedelta(days=1))
    if spec.kind == ROLLING:
        return Window(spec, day - dt.timedelta(days=spec.days - 1), day)
    return Window(spec, spec.start, spec.end)


def previous(window: Window) -> Window:
    """The window of the same kind before it: the previous week, month or quarter; the same length before."""
    if window.spec.kind in CALENDAR:
        return window_of(window.spec, window.start - dt.timedelta(days=1))
    end = window.start - dt.timedelta(days=1)
    return Window(window.spec, end - dt.timedelta(days=window.length - 1), end)


def windows_touching(specs: tuple[WindowSpec, ...], days: list[dt.date]) -> list[Window]:
    """Every window holding at least one of `days`, once each. Rolling windows are those ending on one of them
    (later ones do not exist yet: a run refreshing a day also covers the days after it up to its own)."""
    found: dict[tuple[str, dt.date], Window] = {}
    for spec in specs:
        if spec.kind == RANGE:
            if any(spec.start <= d <= spec.end for d in days):
                found[(spec.name, spec.start)] = window_of(spec, spec.start)
            continue
        for day in days:
            w = window_of(spec, day)
            found.setdefault((spec.name, w.start), w)
    return sorted(found.values(), key=lambda w: (w.spec.name, w.start))


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)
