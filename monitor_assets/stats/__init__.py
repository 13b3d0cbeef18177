"""The pure statistics core: no Dagster, no I/O, and no imports of the rest of the package. Functions take
arrays, frames, counts or small dataclasses and return small frames or dataclasses. The SQL that counts
rows for drift, fairness and reference validation lives in `analysis.queries`; `performance` and `loss`
still build their one aggregate query over a relation the caller names."""
