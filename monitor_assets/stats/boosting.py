"""scikit-learn's gradient boosting, without work it repeats on every small fit.

`LossBooster`: one fit's binned rows handed to the next fit on the same rows.

The |error| and error² loss models of one DLE fit (`stats.estimation`) learn from the same rows, and binning them
(quantile thresholds per column, then every value's bin) is about a third of such a small fit's time. The trees are
the same either way: below 200,000 rows scikit-learn's bins depend on the rows alone, never on the target. The
hand-over is checked (the rows must be equal) and relies on one private method of scikit-learn
(`BaseHistGradientBoosting._bin_data`); a scikit-learn that bins elsewhere only bins twice, as before.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor


class LossBooster(HistGradientBoostingRegressor):
    """`HistGradientBoostingRegressor` whose fit takes `given_bins` (an earlier fit's `made_bins`: the rows as
    scikit-learn saw them, its bin mapper, the binned rows) and keeps its own in `made_bins` until the caller takes
    them (`take_bins`), so a stored fit never carries rows."""

    given_bins: tuple | None = None
    made_bins: tuple | None = None

    def _bin_data(self, X, sample_weight, is_training_data):  # noqa: N803 (scikit-learn's names)
        if not is_training_data:
            return super()._bin_data(X, sample_weight, is_training_data)
        given, self.given_bins = self.given_bins, None
        if given is not None and given[0].shape == X.shape and np.array_equal(given[0], X, equal_nan=True):
            self._bin_mapper, binned = given[1], given[2]
        else:
            binned = super()._bin_data(X, sample_weight, is_training_data)
        self.made_bins = (X, self._bin_mapper, binned)
        return binned

    def take_bins(self) -> tuple | None:
        made, self.made_bins = self.made_bins, None
        return made


class CodedClassifier(HistGradientBoostingClassifier):
    """`HistGradientBoostingClassifier` for rows whose categorical columns (`categorical_features`, a boolean
    mask) already hold small codes (floats, NaN missing), as `stats.multivariate.Encoder` writes them.

    scikit-learn re-encodes categorical columns with an OrdinalEncoder inside a ColumnTransformer on every fit and
    every prediction: a third of a domain classifier's time at 7,000 rows. This does the same mapping in numpy (a
    code's rank among the training rows' codes; missing and unseen codes NaN; categorical columns first), so the
    trees and predictions are the same; `coded_classifier` checks that against scikit-learn's own encoding once
    per process and falls back to scikit-learn's when they differ."""

    def _preprocess_X(self, X, *, reset):  # noqa: N802, N803 (scikit-learn's names)
        mask = self.categorical_features
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or not mask.any():
            return super()._preprocess_X(X, reset=reset)
        X = np.asarray(X, dtype=np.float64)  # noqa: N806
        if reset:
            if X.ndim != 2 or X.shape[1] != len(mask):
                return super()._preprocess_X(X, reset=reset)  # scikit-learn's own error
            self.is_categorical_ = mask.copy()
            self._preprocessor = None  # scikit-learn's encoders are not made
            self.n_features_in_ = X.shape[1]
            self._codes = [np.unique(c[~np.isnan(c)]) for c in X[:, mask].T]
            for j, codes in zip(np.flatnonzero(mask), self._codes, strict=True):
                if len(codes) > self.max_bins:
                    raise ValueError(f"Categorical feature at index {j} is expected to have a cardinality <= "
                                     f"{self.max_bins} but actually has a cardinality of {len(codes)}.")
            self._is_categorical_remapped = np.r_[np.ones(len(self._codes), bool), np.zeros((~mask).sum(), bool)]
            known = [np.arange(len(c), dtype=np.float64) for c in self._codes] + [None] * int((~mask).sum())
            return self._remap(X), known
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[-1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return self._remap(X)

    def _remap(self, X):  # noqa: N803
        mask = self.is_categorical_
        out = np.empty(X.shape, dtype=np.float64)
        for i, (column, codes) in enumerate(zip(X[:, mask].T, self._codes, strict=True)):
            at = np.searchsorted(codes, column)
            known = at < len(codes)
            known[known] = codes[at[known]] == column[known]  # NaN never equals: missing stays NaN
            out[:, i] = np.where(known, at, np.nan)
        out[:, len(self._codes):] = X[:, ~mask]
        return out


_CODED_OK: list[bool] = []


def coded_classifier(**params) -> HistGradientBoostingClassifier:
    """A `CodedClassifier` with `params`, or scikit-learn's own classifier when this scikit-learn encodes
    categorical codes differently from `CodedClassifier` (checked once per process on a small messy sample:
    missing values, codes the fit never saw)."""
    if not _CODED_OK:
        rng = np.random.default_rng(0)
        x = np.column_stack([rng.normal(size=300), rng.integers(0, 7, 300).astype(float),
                             rng.integers(2, 5, 300).astype(float)])
        x[rng.random(300) < 0.1, 1] = np.nan
        probe = x.copy()
        probe[:20, 1], probe[20:40, 2] = 9.0, 0.0  # codes the fit never saw
        mask = np.array([False, True, True])
        own, theirs = CodedClassifier(categorical_features=mask), HistGradientBoostingClassifier(
            categorical_features=mask)
        same = True
        for reset, data in ((True, x), (False, probe)):
            a, b = own._preprocess_X(data, reset=reset), theirs._preprocess_X(data, reset=reset)
            if reset:
                same &= all((p is None and q is None) or (p is not None and q is not None and np.array_equal(p, q))
                            for p, q in zip(a[1], b[1], strict=True)) and len(a[1]) == len(b[1])
                a, b = a[0], b[0]
                same &= np.array_equal(own._is_categorical_remapped, theirs._is_categorical_remapped)
            same &= a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        _CODED_OK.append(bool(same))
    return (CodedClassifier if _CODED_OK[0] else HistGradientBoostingClassifier)(**params)
