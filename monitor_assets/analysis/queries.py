"""The SQL that feeds the statistics core: DuckDB counts the rows, `monitor_assets.stats` judges the counts.

* Drift: `profile_reference` (grid bounds from quantiles, then the reference's counts) and `compute_drift`
  (one scan of the current rows); numeric columns stream out as Arrow batches into
  `stats.drift.NumericCounter`, categories are counted by DuckDB's `histogram` and normalised by
  `stats.categories.category_sql`.
* `score_association`: each feature's association with the score on the reference (key features).
* Fairness: `group_counts`, the confusion counts per sensitive attribute and group.
* Reference validation: `validate_reference`, the rows whose label or score cannot be used.

Identifiers from the config are quoted (`quote_ident`), never pasted raw.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.stats import drift as D
from monitor_assets.stats.categories import MISSING, boolean_spelling, category_sql
from monitor_assets.stats.reference import MIN_REFERENCE_ROWS, ReferenceCheck, reference_check
from monitor_assets.storage.sql import quote_ident, sql_str

# ---------------------------------------------------------------------------------------------
# Drift: counting the rows for `stats.drift`.


def numeric_value_sql(name: str) -> str:
    """A numeric column as DOUBLE, NaN as missing (NULL)."""
    return f"nullif({quote_ident(name)}::DOUBLE, 'NaN'::DOUBLE)"


def normalize_counts(con: duckdb.DuckDBPyConnection, raw: dict[str, int],
                     booleans: tuple[str, str] | None = None) -> dict[str, int]:
    """Counts of raw text values merged by `category_sql`: DuckDB normalises each distinct value once
    (the same expression as on every row, at the cost of the distinct values only)."""
    return _normalize_many(con, {"_": (raw, booleans)})["_"]


def _normalize_many(con: duckdb.DuckDBPyConnection,
                    raws: dict[str, tuple[dict[str, int], tuple[str, str] | None]]) -> dict[str, dict[str, int]]:
    """`normalize_counts` for several features, one query per boolean spelling."""
    spellings = {b for _, b in raws.values()}
    keys = {b: sorted({k for raw, bb in raws.values() if bb == b for k in raw if k != MISSING}) for b in spellings}
    mapped = {b: dict(con.execute(f"SELECT k, {category_sql('k', b)} FROM unnest(?::VARCHAR[]) AS t(k)",
                                  [keys[b]]).fetchall()) if keys[b] else {} for b in spellings}
    out = {}
    for name, (raw, b) in raws.items():
        counts: dict[str, int] = {}
        for key, v in raw.items():
            norm = MISSING if key == MISSING else mapped[b][key]
            norm = MISSING if norm is None else norm
            counts[norm] = counts.get(norm, 0) + v
        out[name] = counts
    return out


def _histograms_sql(categorical: list[str]) -> str:
    """SELECT items: the row count, then each categorical column's `histogram` as raw text (NULL as MISSING)."""
    return ", ".join(["count(*)"] + [f"histogram(coalesce({quote_ident(c)}::VARCHAR, '{MISSING}'))"
                                     for c in categorical])


def count_histograms(con: duckdb.DuckDBPyConnection, relation: str, numeric: dict[str, tuple[float, float, int]],
                     categorical: list[str], params: list | None = None,
                     batch_rows: int = 1 << 18,
                     normalize: dict[str, tuple[str, str] | None] | None = None) -> dict[str, D.NumericCounts | dict]:
    """Fine histograms for `numeric` {name: (lo, hi, bins)} and category counts for `categorical`.

    DuckDB scans and casts; numeric columns stream out in Arrow batches (memory stays bounded by
    the batch, whatever the row count) into `D.NumericCounter`; categories are counted by DuckDB's
    `histogram`. NaN counts as missing. Categoricals named in `normalize` {name: booleans} are
    normalised by `category_sql` with those booleans (`normalize_counts`); the others are counted as
    their raw text."""
    out: dict[str, D.NumericCounts | dict] = {}
    names = list(numeric)
    if names:
        cols = ", ".join(f"{quote_ident(n)}::DOUBLE AS v{i}" for i, n in enumerate(names))
        counters = {n: D.NumericCounter(*numeric[n]) for n in names}
        reader = con.sql(f"SELECT {cols} FROM ({relation})", params=params or None).to_arrow_reader(batch_rows)
        for batch in reader:
            for i, name in enumerate(names):
                counters[name].add(batch.column(i).to_numpy(zero_copy_only=False))
        for name in names:
            out[name] = counters[name].result()
    if categorical or not names:
        row = con.execute(f"SELECT {_histograms_sql(categorical)} FROM ({relation})", params or []).fetchall()[0]
        for name, hist in zip(categorical, row[1:], strict=True):
            out[name] = dict(hist or {})
        if normalize:
            out.update(_normalize_many(con, {c: (out[c], normalize[c]) for c in categorical if c in normalize}))
    return out


def count_histograms_by(con: duckdb.DuckDBPyConnection, relation: str, by: str,
                        numeric: dict[str, tuple[float, float, int]], categorical: list[str],
                        batch_rows: int = 1 << 18, normalize: dict[str, tuple[str, str] | None] | None = None
                        ) -> dict[object, dict[str, D.NumericCounts | dict]]:
    """`count_histograms` of each value of column `by` (a backfill's days) in two scans of `relation` in all,
    not two per value: {value: counts}, for the values that have rows. Each value's numbers reach its counters in
    the relation's order, at most `batch_rows` at a time, as `count_histograms` feeds them from a scan of that
    value's rows alone: the same counts, the same sums but for rounding where a scan splits a value's rows into
    other batches (DuckDB's batches follow its input's chunks)."""
    out: dict[object, dict[str, D.NumericCounts | dict]] = {}
    names = list(numeric)
    if names:
        cols = ", ".join(f"{quote_ident(n)}::DOUBLE AS v{i}" for i, n in enumerate(names))
        table = con.sql(f"SELECT {quote_ident(by)} AS __by, {cols} FROM ({relation})").to_arrow_table()
        found, group = np.unique(np.array(table.column(0).to_pylist(), dtype=object), return_inverse=True)
        order = np.argsort(group, kind="stable")  # each value's rows, in the relation's order
        starts = np.searchsorted(group[order], np.arange(len(found) + 1))
        columns = [table.column(i + 1).to_numpy(zero_copy_only=False) for i in range(len(names))]
        for g, key in enumerate(found):
            rows = order[starts[g]:starts[g + 1]]
            counts = out.setdefault(key, {})
            for name, values in zip(names, columns, strict=True):
                counter = D.NumericCounter(*numeric[name])
                for first in range(0, len(rows), batch_rows):
                    counter.add(values[rows[first:first + batch_rows]])
                counts[name] = counter.result()
    if categorical or not names:
        for key, *row in con.execute(f"SELECT {quote_ident(by)}, {_histograms_sql(categorical)} FROM ({relation}) "
                                     "GROUP BY 1").fetchall():
            counts = out.setdefault(key, {})
            for name, hist in zip(categorical, row[1:], strict=True):
                counts[name] = dict(hist or {})
        if normalize:  # one query for every value's categories
            done = _normalize_many(con, {(key, c): (counts[c], normalize[c]) for key, counts in out.items()
                                         for c in categorical if c in normalize})
            for (key, c), merged in done.items():
                out[key][c] = merged
    return out


GRID_SAMPLE_ROWS = 100_000


def reference_grids(con: duckdb.DuckDBPyConnection, relation: str, numeric: list[str], params: list | None = None,
                    bins: int = D.FINE_BINS) -> dict[str, tuple[float, float, int]]:
    """Each numeric feature's fine grid (`D.grid_bounds`) from the reference's quantiles and min..max."""
    if not numeric:
        return {}
    parts = ", ".join(f"quantile_cont({numeric_value_sql(n)}, [0.001, 0.999]), min({numeric_value_sql(n)}), "
                      f"max({numeric_value_sql(n)})" for n in numeric)
    # Grid bounds need not be exact: quantiles of a seeded Bernoulli sample of about GRID_SAMPLE_ROWS
    # rows (all rows of a smaller set). A reservoir of that size cost 3x more at a million rows.
    rows = con.execute(f"SELECT count(*) FROM ({relation})", params or []).fetchone()[0]
    columns = ", ".join(quote_ident(n) for n in numeric)
    sample = (f" USING SAMPLE {100 * GRID_SAMPLE_ROWS / rows:.12f} PERCENT (bernoulli, 7)"
              if rows > GRID_SAMPLE_ROWS else "")
    row = con.execute(f"SELECT {parts} FROM (SELECT {columns} FROM ({relation})){sample}", params or []).fetchall()[0]
    return {name: D.grid_bounds(*row[3 * i: 3 * i + 3], bins) for i, name in enumerate(numeric)}


def profile_reference(con: duckdb.DuckDBPyConnection, relation: str, features: list[D.FeatureSpec],
                      params: list | None = None, bins: int = D.FINE_BINS) -> dict[str, D.Profile]:
    """Profile a reference set once: grid bounds from its quantiles, then its counts on that grid.
    Categories are normalised (`category_sql`); a boolean-like one keeps the reference's spelling."""
    numeric = [f.name for f in features if f.kind == "numeric"]
    bounds = reference_grids(con, relation, numeric, params, bins)
    categorical = [f.name for f in features if f.kind == "categorical"]
    counted = count_histograms(con, relation, bounds, categorical, params)  # categories as raw text
    # Two normalising queries for all categoricals (not two per feature: hundreds of models add up).
    plain = _normalize_many(con, {c: (counted[c], None) for c in categorical})
    spelling = {c: boolean_spelling(plain[c]) for c in categorical}
    normalized = _normalize_many(con, {c: (counted[c], spelling[c]) for c in categorical})
    return D.build_profiles(features, bounds, counted, normalized, spelling)


def compute_drift(con: duckdb.DuckDBPyConnection, relation: str, specs: list[D.FeatureSpec],
                  profiles: dict[str, D.Profile], params: list | None = None,
                  control_across_features: bool = True) -> list[D.DriftResult]:
    """Count the current rows in one scan and compare each feature with its reference profile.

    Call it once per model and day with all the model's features: with `control_across_features`
    (default) the p-value tests are corrected together (`D.control_false_alarms`). Categories are
    normalised as the profile was (`category_sql`)."""
    numeric, categorical, normalize = D.counting_plan(specs, profiles)
    counted = count_histograms(con, relation, numeric, categorical, params, normalize=normalize)
    return D.drift_from_counts(specs, profiles, counted, control_across_features)


def score_association(con: duckdb.DuckDBPyConnection, relation: str, features: list[D.FeatureSpec], target: str,
                      params: list | None = None) -> dict[str, float]:
    """How strongly each feature goes with `target` (the score) on `relation`, in [0, 1]: |Pearson r| for
    a numeric feature, the correlation ratio (eta) for a categorical one (missing as its own category).
    NaN where undefined (constant feature or score, fewer than 3 rows). Huge values are fine: DuckDB's
    corr works in doubles and gives NaN, never an exception, on overflow. One statement for every feature
    (a statement costs milliseconds before its first row; a fleet profiles hundreds of references)."""
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    if not numeric and not categorical:
        return {}
    y = f"nullif({quote_ident(target)}::DOUBLE, 'NaN'::DOUBLE)"
    columns = ", ".join([f"{y} AS __y"] + [f"{numeric_value_sql(n)} AS __n{i}" for i, n in enumerate(numeric)]
                        + [f"coalesce({quote_ident(c)}::VARCHAR, '{MISSING}') AS __g{j}"
                           for j, c in enumerate(categorical)])
    picks = [f"(SELECT abs(corr(__n{i}, __y)) FROM d)" for i in range(len(numeric))]
    if categorical:
        picks.append("(SELECT sum((__y - mu) * (__y - mu)) FROM l, m)")
        picks += [f"(SELECT sum(n * (mg - mu) * (mg - mu)) FROM (SELECT count(*) AS n, avg(__y) AS mg FROM l "
                  f"GROUP BY __g{j}), m)" for j in range(len(categorical))]
    row = con.execute(f"""WITH d AS MATERIALIZED (SELECT {columns} FROM ({relation})),
                               l AS (SELECT * FROM d WHERE __y IS NOT NULL), m AS (SELECT avg(__y) AS mu FROM l)
                          SELECT {', '.join(picks)}""", params or []).fetchall()[0]
    out = {n: float(v) if v is not None and math.isfinite(v) else math.nan
           for n, v in zip(numeric, row[:len(numeric)], strict=True)}
    if categorical:
        total, between = row[len(numeric)], row[len(numeric) + 1:]
        for name, b in zip(categorical, between, strict=True):
            out[name] = (math.sqrt(min(max(b / total, 0.0), 1.0))
                         if b is not None and total and math.isfinite(total) else math.nan)
    return out


# ---------------------------------------------------------------------------------------------
# Fairness: confusion counts per group for `stats.fairness.fairness_table`.


def group_counts(con: duckdb.DuckDBPyConnection, relation: str, attributes: list[str],
                 params: list | dict | None = None, by: str | None = None) -> pd.DataFrame:
    """Per attribute and group: n, selected, n_labelled, tp, fp, fn, tn and the absolute error sum.

    `relation` has `y_pred` (0/1 for classifiers, the prediction for regressors), `y_true`
    (NULL until labelled) and the attribute columns; a missing attribute value is its own group.
    `by`: a column of `relation` (a day) the counts are also split by, first in the result."""
    key = f"{quote_ident(by)}, " if by else ""
    parts = []
    for attr in attributes:
        parts.append(f"""
            SELECT {key}{sql_str(attr)} AS attribute, coalesce({quote_ident(attr)}::VARCHAR, '(missing)') AS grp,
                   count(*) AS n, sum(y_pred) AS selected, count(y_true) AS n_labelled,
                   count(*) FILTER (WHERE y_pred = 1 AND y_true = 1) AS tp,
                   count(*) FILTER (WHERE y_pred = 1 AND y_true = 0) AS fp,
                   count(*) FILTER (WHERE y_pred = 0 AND y_true = 1) AS fn,
                   count(*) FILTER (WHERE y_pred = 0 AND y_true = 0) AS tn,
                   sum(abs(y_pred - y_true)) AS abs_error
            FROM src GROUP BY {key}grp""")
    sql = f"WITH src AS MATERIALIZED ({relation}) " + " UNION ALL ".join(parts) + f" ORDER BY {key}attribute, grp"
    return con.execute(sql, params or []).df() if parts else pd.DataFrame()


# ---------------------------------------------------------------------------------------------
# Reference validation: the counts for `stats.reference.reference_check`.


def usable_sql(column: str, classes: bool = False) -> str:
    """SQL true when `column` holds a finite number (and, with `classes`, 0 or 1); never NULL."""
    value = f"TRY_CAST({quote_ident(column)} AS DOUBLE)"
    test = f"isfinite({value})" + (f" AND {value} IN (0, 1)" if classes else "")
    return f"coalesce({test}, false)"


def validate_reference(con: duckdb.DuckDBPyConnection, relation: str, label: str, score: str,
                       params: list | None = None, min_rows: int = MIN_REFERENCE_ROWS,
                       classifier: bool = False) -> ReferenceCheck:
    """Count the reference rows whose `label` or `score` column cannot be used, in one scan.

    Returns the counts, the WHERE condition keeping the usable rows and a warning text; raises
    `ReferenceTooSmall` when fewer than `min_rows` rows are usable."""
    label_ok, score_ok = usable_sql(label, classifier), usable_sql(score)
    n, bad_label, bad_score, usable = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE NOT {label_ok}), count(*) FILTER (WHERE NOT {score_ok}), "
        f"count(*) FILTER (WHERE {label_ok} AND {score_ok}) FROM ({relation})", params or []).fetchall()[0]
    return reference_check(n, bad_label, bad_score, usable, f"{label_ok} AND {score_ok}", classifier, min_rows)
