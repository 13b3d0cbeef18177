"""Preflight: everything a run needs from its inputs, checked before anything is written.

    python -m monitor_assets.preflight [--config PATH] [--start YYYY-MM-DD] [--end YYYY-MM-DD]

Checks the config (load_config), that every source's glob matches a file on every day of the run (unless the
source sets `allow_empty: true`), that every reference file exists, is readable and has the columns the
model reads (its features, `reference_fields`), and that every mapped field of the CSV and Parquet sources is
a column of a sample file (JSON lines: the first line's keys, as a warning). Only headers are read: the
Parquet footer, a CSV's first line, a JSON file's first line. Directories are listed once each and globs
matched with fnmatch, so a year of days stays well under a second.

All problems are reported at once, one line each: the config file, the key, what is wrong and the closest
valid name. Exit status: 0 fine (warnings may be printed), 2 problems found or a bad config.
`run_pipeline` runs this before every run; the predictions ingestion step runs it for runs started
elsewhere (the UI, a schedule) unless the run's PREFLIGHT_TAG says it was done. No Dagster imports here.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import difflib
import fnmatch
import gzip
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from monitor_assets.config import (
    OPTIONAL_FIELDS,
    SOURCE_DEFAULT_FIELDS,
    ConfigError,
    ModelConfig,
    MonitorConfig,
    SourceConfig,
    load_config,
)

PREFLIGHT_TAG = "monitor_assets/preflight"  # run tag: "passed" when the launcher already ran the preflight
MAGIC = re.compile(r"[*?[]")
MAX_HEADER_BYTES = 1 << 20  # a header line longer than 1 MiB is not a header


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in the words of ConfigError: `<config file>: <key>: <what>`."""

    file: str
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class PreflightError(ValueError):
    """The preflight found problems: one line naming how many, then each (joined by ' | ')."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        super().__init__(f"preflight found {n} problem{'s' * (n != 1)}, nothing run: "
                         + " | ".join(str(p) for p in problems))


def _hint(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Listing:
    """Directory listings, each read once: a glob is matched component by component with fnmatch, as
    `glob.glob` does (no `**` recursion; `*` skips names starting with '.')."""

    def __init__(self):
        self._cache: dict[str, list[str] | None] = {}

    def names(self, folder: str) -> list[str] | None:
        if folder not in self._cache:
            try:
                self._cache[folder] = sorted(os.listdir(folder))
            except OSError:  # missing, not a folder, unreadable
                self._cache[folder] = None
        return self._cache[folder]

    def match(self, pattern: str) -> tuple[list[str], str]:
        """The paths matching `pattern` (absolute), and when none does, why: the first part that matched
        nothing, where, and the closest name there."""
        parts = Path(pattern).parts
        current = [parts[0]]
        for part in parts[1:]:
            found, why = [], ""
            for folder in current:
                names = self.names(folder)
                if names is None:
                    continue
                if MAGIC.search(part):
                    hits = [n for n in names if fnmatch.fnmatchcase(n, part)
                            and (part.startswith(".") or not n.startswith("."))]
                else:
                    hits = [part] if part in names else []
                found += [os.path.join(folder, n) for n in hits]
                if not hits and not why:
                    plain = MAGIC.sub("", part)
                    why = f"nothing matches {part!r} in {folder}{_hint(plain, names) if plain else ''}"
            if not found:
                return [], why or f"no folder to look for {part!r} in"
            current = found
        return sorted(current), ""


def _days_text(days: list[dt.date], limit: int = 6) -> str:
    """2026-10-03, 2026-10-05..2026-10-07: runs of consecutive days, the first `limit` of them."""
    runs: list[list[dt.date]] = []
    for day in days:
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    text = [f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs[:limit]]
    return ", ".join(text) + (f" and {len(runs) - limit} more" if len(runs) > limit else "")


# --- headers ---------------------------------------------------------------------------------------

def _open_text(path: str):
    raw = open(path, "rb")
    stream = gzip.open(raw) if path.lower().endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")  # a BOM is no name


def _first_line(path: str) -> str:
    with _open_text(path) as f:
        return f.readline(MAX_HEADER_BYTES)


def _format(path: str) -> str:
    low = path.lower().removesuffix(".gz")
    return "parquet" if low.endswith(".parquet") else "csv" if low.endswith(".csv") else "jsonl"


def columns_of(path: str, fmt: str | None = None) -> list[str] | dict:
    """A file's column names (CSV header, Parquet footer), or a JSON-lines file's first record."""
    fmt = fmt or _format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    line = _first_line(path)
    if fmt == "csv":  # DuckDB detects the delimiter: take the one that splits the header most
        return max((next(csv.reader([line.rstrip("\r\n")], delimiter=d), []) for d in ",;\t|"), key=len)
    record = json.loads(line) if line.strip() else {}
    if not isinstance(record, dict):
        raise ValueError("the first line is not a JSON object")
    return record


def _has_path(record: dict, path: str) -> bool:
    """A dotted JSON path (`features.amount`) in a record, as the readers split it."""
    node = record
    for step in path.split("."):
        if not isinstance(node, dict) or step not in node:
            return False
        node = node[step]
    return True


def _json_keys(record: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in record.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _json_keys(v, f"{prefix}{k}.")
    return keys


# --- the checks ------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, config: MonitorConfig, days: list[dt.date]):
        self.config, self.days = config, days
        self.file = str(config.file)
        self.folder = config.file.parent
        self.listing = Listing()
        self.problems: list[Problem] = []
        self.checked = {"globs": 0, "files": 0}

    def add(self, key: str, message: str, warning: bool = False) -> None:
        self.problems.append(Problem(self.file, key, message, warning))

    def show(self, path: str) -> str:
        """A path as the config writes it: relative to the config's folder when inside it."""
        p = Path(path)
        return str(p.relative_to(self.folder)) if p.is_relative_to(self.folder) else str(p)

    def sources(self) -> list[tuple[str, SourceConfig]]:
        named = [("predictions", self.config.predictions), ("labels", self.config.labels),
                 ("interactions", self.config.interactions), ("sales", self.config.sales)]
        return [(kind, src) for kind, src in named if src is not None]

    def globs(self, kind: str, src: SourceConfig) -> dict[str | None, str]:
        """Per model of a `{model}` path (else None): the first file matched on any day (the sample whose
        header is checked), after reporting the days on which nothing matched.

        A day without any file is an error unless `allow_empty`, as in ingestion. With a `{model}` path, a
        model without a file on a day whose other models have theirs is a warning: the run loads the others
        and its `predictions_logged` check fails for that model and day (a daily run must not stop for it)."""
        models = [m.id for m in self.config.models] if src.per_model else [None]
        days = self.days[:1] if src.split_by_time else self.days  # one export spans every day
        key, template = f"sources.{kind}.path", self.show(src.path)
        samples: dict[str | None, str] = {}
        missing: dict[str | None, list[dt.date]] = {m: [] for m in models}
        empty_days, why = [], ""
        for day in days:
            any_file = False
            for model in models:
                self.checked["globs"] += 1
                files, reason = self.listing.match(src.paths_for(day, model))
                if files:
                    samples.setdefault(model, files[0])
                    any_file = True
                else:
                    missing[model].append(day)
                    why = why or reason
            if not any_file:
                empty_days.append(day)
        if src.allow_empty:
            return samples
        if src.split_by_time and empty_days:
            self.add(key, f"no file matches {template}: {why}")
        elif len(empty_days) == len(days):
            self.add(key, f"no file matches {template} on any of the {len(days)} days {days[0]}..{days[-1]}: {why}")
        elif empty_days:
            # Labels come late: a day whose file is not there yet is expected (the run keeps that day's rows).
            self.add(key, f"no file matches {template} on {len(empty_days)} of {len(days)} days: "
                          f"{_days_text(empty_days)} (set allow_empty: true if days without files are expected)",
                     warning=kind == "labels")
        for model in models if src.per_model and len(empty_days) < len(days) else []:
            lost = [d for d in missing[model] if d not in empty_days]
            if lost:
                self.add(key, f"no file of model {model} ({self.show(src.paths_for(lost[0], model))}) on "
                              f"{len(lost)} of {len(days)} days: {_days_text(lost)}; its predictions_logged check "
                              "will fail there", warning=True)
        return samples

    def source_fields(self, kind: str, src: SourceConfig, sample: str, models: list[ModelConfig],
                      per_model: bool) -> None:
        """Every column the readers will ask the sample file for (see ingestion.plans)."""
        wanted: list[tuple[str, str, bool]] = []  # (key, field, required)
        defaults = SOURCE_DEFAULT_FIELDS[kind]
        for canonical, column in src.fields.items():
            if column is None or (kind == "predictions" and canonical == "score"):  # each model's score_field
                continue
            optional = canonical in OPTIONAL_FIELDS.get(kind, ()) or (canonical == "model_id" and per_model)
            # An optional field under its default name may be absent (it loads as NULL); one the config maps
            # to a column of its own is expected to be there.
            if optional and column == defaults.get(canonical):
                continue
            wanted.append((f"sources.{kind}.fields.{canonical}", column, not optional))
        if kind == "predictions":
            for i, m in enumerate(self.config.models):
                if m not in models:
                    continue
                wanted.append((f"models[{i}].score_field", m.score_field, True))
                for group, items in (("features", m.features), ("sensitive_attributes", m.sensitive_attributes),
                                     ("segments.columns", m.segments.columns)):
                    wanted += [(f"models[{i}].{group}.{f.name}", f.source, True) for f in items]
        try:
            found = columns_of(sample, src.format)
        except Exception as exc:  # unreadable, corrupt, not the configured format
            # A bad first JSON line is quarantined by the run like any other: only a warning here.
            self.add(f"sources.{kind}.path", f"cannot read the header of {self.show(sample)}: "
                                             f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                     warning=src.format == "jsonl")
            return
        self.checked["files"] += 1
        seen: set[tuple[str, str]] = set()
        for key, field, required in wanted:
            if (key, field) in seen:
                continue
            seen.add((key, field))
            if isinstance(found, dict):  # JSON lines: a later record may have what the first lacks
                if not _has_path(found, field):
                    self.add(key, f"field {field!r} not in the first record of {self.show(sample)}"
                                  f"{_hint(field, _json_keys(found))}", warning=True)
            elif field.lower() not in {c.lower() for c in found}:
                self.add(key, f"column {field!r} not in {self.show(sample)}{_hint(field, found)}",
                         warning=not required)

    def references(self) -> None:
        for i, m in enumerate(self.config.models):
            path = Path(m.reference_path)
            if not path.is_file():
                names = self.listing.names(str(path.parent)) or []
                what = "is not a file" if path.exists() else "file not found"
                self.add(f"models[{i}].reference", f"{what}: {self.show(str(path))}{_hint(path.name, names)}")
                continue
            try:
                found = columns_of(str(path))
            except Exception as exc:
                self.add(f"models[{i}].reference", f"cannot read {self.show(str(path))}: "
                                                   f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                continue
            self.checked["files"] += 1
            columns = _json_keys(found) if isinstance(found, dict) else found
            lower = {c.lower() for c in columns}
            # The reference is read by feature name (not source) and by the mapped score, label, decision.
            wanted = [(f"models[{i}].features.{f.name}", f.name) for f in m.features]
            wanted += [(f"models[{i}].reference_fields.{k}", v) for k, v in m.reference_fields.items()]
            for key, column in wanted:
                if column.lower() not in lower:
                    self.add(key, f"column {column!r} not in {path.name}{_hint(column, columns)}")

    def run(self) -> list[Problem]:
        for kind, src in self.sources():
            samples = self.globs(kind, src)
            if src.per_model:
                for m in self.config.models:
                    if m.id in samples:
                        self.source_fields(kind, src, samples[m.id], [m], per_model=True)
            elif None in samples:
                self.source_fields(kind, src, samples[None], list(self.config.models), per_model=False)
        self.references()
        return self.problems


def run_days(config: MonitorConfig, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
    """The days of a run: start..end, by default the config's partitions (up to yesterday without end_date)."""
    first = start or config.start_date
    last = end or config.end_date or dt.date.today() - dt.timedelta(days=1)
    return [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]


def preflight(config: MonitorConfig, days: list[dt.date] | None = None) -> list[Problem]:
    """Every problem (errors and warnings) the inputs of a run over `days` have; [] when all is well."""
    return _Checker(config, days if days is not None else run_days(config)).run()


def require(config: MonitorConfig, days: list[dt.date] | None = None, only: str = "") -> list[Problem]:
    """Raise PreflightError if there is an error; return the rest as warnings. With `only` (a key prefix),
    errors under other keys are returned as warnings: a step checks its own input and leaves a model's
    reference or the labels to the steps that read them, so one model's problem stops no other model."""
    problems = preflight(config, days)
    errors = [p for p in problems if not p.warning and p.key.startswith(only)]
    if errors:
        raise PreflightError(errors)
    return [p if p.warning or p.key.startswith(only) else Problem(p.file, p.key, p.message, True) for p in problems]


def report(problems: list[Problem], out=sys.stderr) -> None:
    for p in problems:
        print(("warning: " if p.warning else "") + " ".join(str(p).split()), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the config (default $MONITOR_CONFIG, else the demo's)")
    parser.add_argument("--start", type=dt.date.fromisoformat, help="first day (default: the config's first)")
    parser.add_argument("--end", type=dt.date.fromisoformat, help="last day (default: the config's last)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    days = run_days(config, args.start, args.end)
    if not days:
        print(f"--start {args.start} is after --end {args.end}", file=sys.stderr)
        return 2
    problems = preflight(config, days)
    report(problems)
    errors = sum(not p.warning for p in problems)
    took = time.perf_counter() - began
    if errors:
        print(f"preflight: {errors} problem{'s' * (errors != 1)} in {config.file} ({took:.2f} s)", file=sys.stderr)
        return 2
    print(f"preflight ok: {config.file}, {len(days)} days, {len(config.models)} models ({took:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
