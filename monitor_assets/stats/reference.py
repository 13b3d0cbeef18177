"""Validation of a reference set before it is profiled: rows whose label or score cannot be used are
counted and left out, and a reference too small to be a baseline is refused.

A NULL, NaN, infinite or non-numeric label or score (and, for a classifier, a label other than 0
or 1) makes a row unusable: a NaN label stops the profiling query ("Conversion Error" casting it to
an integer class), NaN scores distort the baseline metrics, NULL labels look like label drift every
day. The counting is SQL (`monitor_assets.analysis.queries.validate_reference`); `reference_check` judges
the counts. The caller keeps the rows matching `ReferenceCheck.where`, shows `warning` in its metadata
and reports `ReferenceTooSmall` with the model and file it was checking.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_REFERENCE_ROWS = 100


@dataclass
class ReferenceCheck:
    n_rows: int
    n_label_unusable: int  # NULL, NaN, infinite, not a number (classifier: not 0 or 1)
    n_score_unusable: int  # NULL, NaN, infinite, not a number
    n_usable: int  # rows with both a usable label and a usable score
    where: str  # SQL condition on the reference relation's columns that keeps the usable rows
    warning: str  # '' when every row is usable

    @property
    def n_left_out(self) -> int:
        return self.n_rows - self.n_usable


class ReferenceTooSmall(ValueError):
    """Fewer usable reference rows than the minimum. The message starts in lower case so that the
    caller can put the model and the file in front of it: f"model {id}: reference {path}: {exc}"."""

    def __init__(self, check: ReferenceCheck, min_rows: int):
        self.check, self.min_rows = check, min_rows
        detail = f"; {check.warning}" if check.warning else ""
        super().__init__(f"only {check.n_usable:,} usable row{'s' if check.n_usable != 1 else ''} of "
                         f"{check.n_rows:,}, at least {min_rows:,} are needed to be a baseline{detail}")


def reference_check(n: int, bad_label: int, bad_score: int, usable: int, where: str, classifier: bool = False,
                    min_rows: int = MIN_REFERENCE_ROWS) -> ReferenceCheck:
    """The verdict on a reference's counts (rows, rows with an unusable label, an unusable score, rows
    usable on both): the check with its warning text; raises `ReferenceTooSmall` when fewer than
    `min_rows` rows are usable. `where` is the SQL condition that keeps the usable rows."""
    parts = []
    if bad_label:
        kind = "0 or 1" if classifier else "a finite number"
        parts.append(f"{bad_label:,} with a label that is missing, NaN or not {kind}")
    if bad_score:
        parts.append(f"{bad_score:,} with a score that is missing, NaN or not a finite number")
    warning = f"{n - usable:,} of {n:,} reference rows left out: " + ", ".join(parts) if parts else ""
    check = ReferenceCheck(n, bad_label, bad_score, usable, where, warning)
    if usable < min_rows:
        raise ReferenceTooSmall(check, min_rows)
    return check
