"""How a categorical value is normalised, the same way wherever categories are counted or read: the
reference profile, the daily drift counts and the logged decision (predicted class).

`category_sql` is the one definition, an SQL expression (DuckDB normalises each value where it is
counted); `boolean_spelling` decides from normalised counts whether a feature is boolean-like.
"""

MISSING = "\x00missing"  # a category name no real data uses
TRUE_FALSE = ("true", "false")
ONE_ZERO = ("1", "0")
_NUMBER_TEXT = r"[+-]?(0|[1-9][0-9]*)(\.[0-9]*)?([eE][+-]?[0-9]+)?"


def category_sql(expr: str, booleans: tuple[str, str] | None = None) -> str:
    """SQL normalising a categorical value to text, NULL when missing.

    Spaces around the value are dropped; '' and 'NaN' (any case) are missing; true/false in any
    case are 'true'/'false'; a number written as text has one spelling ('1', '1.0' and '1e0' are
    '1'; '0.50' is '0.5'; '007' stays text, it is an identifier). With `booleans` = (t, f), the
    feature is boolean-like: true and 1 are t, false and 0 are f (the reference's spelling)."""
    v = f"trim(({expr})::VARCHAR)"
    num = f"TRY_CAST({v} AS DOUBLE)"
    is_number = f"regexp_full_match({v}, '{_NUMBER_TEXT}')"
    boolean = ""
    if booleans:
        t, f = (str(b).replace("'", "''") for b in booleans)
        boolean = (f"WHEN lower({v}) = 'true' OR ({is_number} AND {num} = 1) THEN '{t}' "
                   f"WHEN lower({v}) = 'false' OR ({is_number} AND {num} = 0) THEN '{f}' ")
    return (f"CASE WHEN {v} IS NULL OR {v} = '' OR lower({v}) = 'nan' THEN NULL {boolean}"
            f"WHEN lower({v}) IN ('true', 'false') THEN lower({v}) "
            f"WHEN {is_number} THEN (CASE WHEN {num} = trunc({num}) AND abs({num}) < 1e15 "
            f"THEN CAST(CAST({num} AS BIGINT) AS VARCHAR) ELSE CAST({num} AS VARCHAR) END) "
            f"ELSE {v} END")


def boolean_spelling(counts: dict[str, int]) -> tuple[str, str] | None:
    """The (true, false) spelling of a boolean-like feature, from its normalised counts: None unless
    every value is true/false or 1/0; text if the reference wrote any true/false, else '1'/'0'."""
    values = {c for c, v in counts.items() if c != MISSING and v}
    if not values or not values <= {*TRUE_FALSE, *ONE_ZERO}:
        return None
    return TRUE_FALSE if values & set(TRUE_FALSE) else ONE_ZERO
