"""Performance estimation before labels: ours (CBPE / DLE, plain and reweighted) against NannyML 0.13 on the
same data, in one invocation.

    python benchmarks/estimation_bench.py [--setup-nannyml] [--models 100] [--rows 50000] [--runs 3]
                                          [--nannyml-models 10] [--days 20] [--no-nannyml]

NannyML runs in its own interpreter (NANNYML_PYTHON, else benchmarks/.venv-nannyml/bin/python, which
--setup-nannyml creates: `pip install nannyml==0.13.1 statsmodels`; it also resolves beside our pins, as the
optional extra `nannyml`, but it pins plotly < 6). Both sides build the data from the same seeds with the same
numpy (a checksum is compared); NannyML's usage logging is switched off (NML_DISABLE_USAGE_LOGGING).

Cases (reference 20,000 rows; DAYS days of 5,000 rows each):
- classifier, true P(y=1|x) = sigmoid(2 x1 + 1.2 x2 + 0.3), x1 ~ N(0, 2), x2 ~ N(0, 1); the model's score is
  g(2 x1 + 0.3 x2 + 0.3) ** 0.8, g the exact P(y=1 | that index) on the reference: it under-uses x2 and is
  miscalibrated (both estimators calibrate on the reference).
  stable; score_shift: a third of the rows with x1 ~ N(0, 0.6), near the boundary (accuracy about -5 points);
  underused_shift: x2 ~ N(1, 1), where P(y | score) no longer holds; underused_shift_large: x2 ~ N(1.5, 1).
- regressor, prediction 3 x1 + x2, y = prediction + N(0, 0.5 + |x1|), x1, x2 ~ N(0, 1): stable; shift: x1 ~ N(1, 1).

Reported: (a) agreement, mean |ours plain - NannyML| per metric over all case-days; (b) mean |estimate -
realized| per case, metric and estimator, and our bands' coverage; (c) time for MODELS models x ROWS rows x 1
day, median of RUNS runs (each run times NannyML, then ours: the same load on a shared machine), fit excluded
and fit included, NannyML timed on --nannyml-models models and scaled linearly (said in the output), its
LightGBM held to one thread as ours is (its scikit-learn wrapper otherwise takes every physical core); (d) what
DLE's sampled estimate on days of 50,000 rows costs in band width against running the trees on every row. The markdown goes to stdout and benchmarks/out/estimation_bench.md.
"""

from __future__ import annotations

import os

# One OpenMP thread on both sides (scikit-learn's and LightGBM's pools): on a shared two-core machine their
# spinning threads made fits up to ten times slower and the timings noise. Set before numpy is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
NML_VENV = HERE / ".venv-nannyml"
NML_VERSION = "0.13.1"
REF_ROWS, DAY_ROWS = 20_000, 5_000
CLASSIFIER_CASES = ("stable", "score_shift", "underused_shift", "underused_shift_large")
REGRESSOR_CASES = ("stable", "shift")
CLASSIFIER_METRICS = ("accuracy", "roc_auc", "f1")
REGRESSOR_METRICS = ("mae", "rmse")
FEATURES = ["x1", "x2"]


# -- data: numpy and pandas only (the NannyML worker runs this part too) ---------------------------------------

def _score_of(index: np.ndarray) -> np.ndarray:
    """P(y = 1 | 2 x1 + 0.3 x2 + 0.3 = index) on the reference, by Gauss-Hermite quadrature over x2 | index."""
    var = 4.0 * 4.0 + 0.09
    mean = index + 0.9 * 0.3 * (index - 0.3) / var
    sd = math.sqrt(0.81 * (1 - 0.09 / var))
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    return (1 / (1 + np.exp(-(mean[:, None] + sd * nodes[None, :])))) @ weights / weights.sum()


def classifier_rows(rng: np.random.Generator, n: int, case: str = "stable") -> pd.DataFrame:
    x1, x2 = rng.normal(0, 2.0, n), rng.normal({"underused_shift": 1.0, "underused_shift_large": 1.5}.get(case, 0.0),
                                              1.0, n)
    if case == "score_shift":
        x1 = np.where(rng.random(n) < 1 / 3, rng.normal(0, 0.6, n), x1)
    p = 1 / (1 + np.exp(-(2 * x1 + 1.2 * x2 + 0.3)))
    score = _score_of(2 * x1 + 0.3 * x2 + 0.3) ** 0.8
    return pd.DataFrame({"x1": x1, "x2": x2, "y_pred_proba": score, "y_pred": (score >= 0.5).astype(int),
                         "y_true": (rng.random(n) < p).astype(int)})


def regressor_rows(rng: np.random.Generator, n: int, case: str = "stable") -> pd.DataFrame:
    x1, x2 = rng.normal(1.0 if case == "shift" else 0.0, 1.0, n), rng.normal(0, 1, n)
    prediction = 3 * x1 + x2
    return pd.DataFrame({"x1": x1, "x2": x2, "y_pred": prediction,
                         "y_true": prediction + rng.normal(0, 1, n) * (0.5 + np.abs(x1))})


def case_data(task: str, case: str, days: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, days x DAY_ROWS analysis rows with a `day` column) of one case."""
    rows = classifier_rows if task == "classifier" else regressor_rows
    rng = np.random.default_rng([seed, CLASSIFIER_CASES.index(case) if task == "classifier" else 10
                                 + REGRESSOR_CASES.index(case)])
    reference = rows(rng, REF_ROWS)
    analysis = pd.concat([rows(rng, DAY_ROWS, case).assign(day=d) for d in range(days)], ignore_index=True)
    return reference, analysis


def timing_data(task: str, model: int, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model's reference and one stable day of `rows` rows (model = seed)."""
    make = classifier_rows if task == "classifier" else regressor_rows
    rng = np.random.default_rng([model, 99])
    return make(rng, REF_ROWS), make(rng, rows)


def checksum(frame: pd.DataFrame) -> float:
    return float(np.round(frame["y_pred"].sum() + frame["y_true"].sum() + frame["x1"].sum(), 6))


# -- NannyML (in its own interpreter) --------------------------------------------------------------------------

def _nannyml(task: str, chunk_size: int | None):
    """NannyML's estimator for `task`: chunks of `chunk_size` rows (one case-day each), or one chunk per call
    (a timed day of more rows than the reference has)."""
    import nannyml as nml

    chunker = (nml.chunk.SizeBasedChunker(chunk_size=chunk_size, incomplete="append") if chunk_size
               else nml.chunk.CountBasedChunker(chunk_number=1))
    if task == "classifier":
        return nml.CBPE(y_pred_proba="y_pred_proba", y_pred="y_pred", y_true="y_true", chunker=chunker,
                        problem_type="classification_binary", metrics=list(CLASSIFIER_METRICS))
    # LightGBM's defaults otherwise, on one thread: left alone its scikit-learn wrapper takes every physical core
    # whatever OMP_NUM_THREADS says, and on a shared two-core machine its spinning threads made a fit 3 to 7
    # times slower (measured: 0.3 s a model on one thread, 0.9 to 2 s on its default)
    return nml.DLE(feature_column_names=FEATURES, y_pred="y_pred", y_true="y_true", chunker=chunker,
                   metrics=list(REGRESSOR_METRICS), hyperparameters={"n_jobs": 1})


def _analysis_values(result, metrics) -> dict[str, list[float]]:
    frame = result.to_df()
    frame = frame[frame[("chunk", "period")] == "analysis"]
    return {m: [float(v) for v in frame[(m, "value")]] for m in metrics}


def nannyml_worker(spec: dict) -> dict:
    """Estimates per case-day, then timings; runs under the NannyML interpreter."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    out = {"estimates": {}, "checksums": {}, "timing": {}}
    for task, cases, metrics in (("classifier", CLASSIFIER_CASES, CLASSIFIER_METRICS),
                                 ("regressor", REGRESSOR_CASES, REGRESSOR_METRICS)):
        for case in cases if spec["estimates"] else ():
            reference, analysis = case_data(task, case, spec["days"])
            out["checksums"][f"{task}/{case}"] = checksum(analysis)
            estimator = _nannyml(task, DAY_ROWS).fit(reference)
            out["estimates"][f"{task}/{case}"] = _analysis_values(
                estimator.estimate(analysis.drop(columns=["y_true", "day"])), metrics)
    for task in ("classifier", "regressor"):
        if spec["runs"] and not spec["estimates"]:  # warm up (imports, first calls) outside the timing, as ours is
            reference, day = timing_data(task, 10 ** 6, 2000)
            _analysis_values(_nannyml(task, None).fit(reference).estimate(day.drop(columns=["y_true"])),
                             CLASSIFIER_METRICS if task == "classifier" else REGRESSOR_METRICS)
        runs = []
        for _ in range(spec["runs"]):
            fit = estimate = 0.0
            for model in range(spec["models"]):
                reference, day = timing_data(task, model, spec["rows"])
                day = day.drop(columns=["y_true"])
                started = time.perf_counter()
                estimator = _nannyml(task, None).fit(reference)
                fitted = time.perf_counter()
                _analysis_values(estimator.estimate(day), CLASSIFIER_METRICS if task == "classifier"
                                 else REGRESSOR_METRICS)
                fit, estimate = fit + fitted - started, estimate + time.perf_counter() - fitted
            runs.append({"fit": fit, "estimate": estimate})
        out["timing"][task] = runs
    return out


def run_nannyml(python: str, spec: dict) -> dict:
    env = dict(os.environ, NML_DISABLE_USAGE_LOGGING="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    done = subprocess.run([python, __file__, "--nannyml-worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def setup_nannyml() -> str:
    python = NML_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(NML_VENV)], check=True)
    # statsmodels: imported by nannyml 0.13.1's plotting but missing from its requirements
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"nannyml=={NML_VERSION}", "statsmodels"], check=True)
    return str(python)


# -- ours ----------------------------------------------------------------------------------------------------

def fit_ours(task: str, reference: pd.DataFrame, reweight: bool):
    from monitor_assets.stats import estimation as E

    if task == "classifier":
        return E.ConfidenceEstimator.fit(reference.y_pred_proba.to_numpy(), reference.y_true.to_numpy(),
                                         reference.y_pred.to_numpy(float), features=reference[FEATURES].to_numpy(),
                                         reweight=reweight)
    return E.LossEstimator.fit(reference[FEATURES].to_numpy(), reference.y_pred.to_numpy(),
                               reference.y_true.to_numpy(), reweight=reweight)


def estimate_ours(task: str, estimator, day: pd.DataFrame, metrics, seed: int = 0):
    if task == "classifier":  # plain CBPE reads no features (nor does the pipeline read them for it)
        return estimator.estimate(day.y_pred_proba.to_numpy(), day.y_pred.to_numpy(float), metrics, seed=seed,
                                  features=day[FEATURES].to_numpy() if estimator.sample is not None else None)
    return estimator.estimate(day[FEATURES].to_numpy(), day.y_pred.to_numpy(), metrics, seed=seed)


def realized(task: str, day: pd.DataFrame) -> dict[str, float]:
    from sklearn import metrics as skm

    y = day.y_true.to_numpy()
    if task == "classifier":
        return {"accuracy": skm.accuracy_score(y, day.y_pred), "roc_auc": skm.roc_auc_score(y, day.y_pred_proba),
                "f1": skm.f1_score(y, day.y_pred)}
    return {"mae": skm.mean_absolute_error(y, day.y_pred),
            "rmse": math.sqrt(skm.mean_squared_error(y, day.y_pred))}


def accuracy_runs(days: int) -> tuple[dict, dict]:
    """Per case: realized values and our estimates (plain, reweighted) per day, and the checksums."""
    results, sums = {}, {}
    for task, cases, metrics in (("classifier", CLASSIFIER_CASES, CLASSIFIER_METRICS),
                                 ("regressor", REGRESSOR_CASES, REGRESSOR_METRICS)):
        for case in cases:
            reference, analysis = case_data(task, case, days)
            sums[f"{task}/{case}"] = checksum(analysis)
            fitted = {"plain": fit_ours(task, reference, False), "reweighted": fit_ours(task, reference, True)}
            rows = {"realized": [], "plain": [], "reweighted": []}
            for d, day in analysis.groupby("day"):
                rows["realized"].append(realized(task, day))
                for name, estimator in fitted.items():
                    rows[name].append({e.metric: e for e in estimate_ours(task, estimator, day, metrics, seed=d)})
            results[f"{task}/{case}"] = rows
    return results, sums


def plain_of(estimator):
    """The plain estimator inside a reweighted one: the same fit without the reference sample (fitting it
    separately would repeat the same work)."""
    from dataclasses import replace

    from monitor_assets.stats import estimation as E

    plain = E.CONFIDENCE if isinstance(estimator, E.ConfidenceEstimator) else E.LOSS_MODEL
    return replace(estimator, sample=None, method=plain)


def time_ours(task: str, models: int, rows: int, runs: int) -> dict:
    """Seconds for `models` models x one day of `rows` rows: the fit (the reweighted fit, which holds the plain
    one), and estimating a stable and a shifted day with each estimator."""
    out = {"fit": [], "plain/stable": [], "plain/shifted": [], "reweighted/stable": [], "reweighted/shifted": []}
    metrics = CLASSIFIER_METRICS if task == "classifier" else REGRESSOR_METRICS
    make = classifier_rows if task == "classifier" else regressor_rows
    for _ in range(runs):
        sums = dict.fromkeys(out, 0.0)
        for model in range(models):
            reference, stable = timing_data(task, model, rows)
            shifted = make(np.random.default_rng([model, 98]), rows,
                           "underused_shift" if task == "classifier" else "shift")
            started = time.perf_counter()
            fitted = {"reweighted": fit_ours(task, reference, True)}
            sums["fit"] += time.perf_counter() - started
            fitted["plain"] = plain_of(fitted["reweighted"])
            for name, estimator in fitted.items():
                for day_name, day in (("stable", stable), ("shifted", shifted)):
                    started = time.perf_counter()
                    estimate_ours(task, estimator, day, metrics, seed=model)
                    sums[f"{name}/{day_name}"] += time.perf_counter() - started
        for k, v in sums.items():
            out[k].append(v)
    return {k: statistics.median(v) for k, v in out.items()}


def large_days(days: int = 5, rows: int = 50_000) -> list[list]:
    """Our default DLE (reweighted) on days of `rows` rows: the estimate from a sample of rows by difference (as
    run) against the trees on every row: mean |estimate - realized|, mean band half-width, coverage."""
    from monitor_assets.stats import estimation as E

    out = []
    for case in REGRESSOR_CASES:
        reference, _ = case_data("regressor", case, 1)
        estimator = fit_ours("regressor", reference, True)
        rng = np.random.default_rng([7, REGRESSOR_CASES.index(case)])
        found = {"sampled": [], "every row": []}
        for d in range(days):
            day = regressor_rows(rng, rows, case)
            real = realized("regressor", day)
            for name, exact_rows in (("sampled", E.EXACT_ROWS), ("every row", 10 ** 12)):
                kept, E.EXACT_ROWS = E.EXACT_ROWS, exact_rows
                try:
                    found[name] += [(e.metric, e.estimate - real[e.metric], (e.upper - e.lower) / 2,
                                     e.lower <= real[e.metric] <= e.upper)
                                    for e in estimate_ours("regressor", estimator, day, REGRESSOR_METRICS, seed=d)]
                finally:
                    E.EXACT_ROWS = kept
        for metric in REGRESSOR_METRICS:
            for name, values in found.items():
                v = [x for x in values if x[0] == metric]
                out.append([f"regressor/{case}", metric, name, _mean_abs([x[1] for x in v]),
                            float(np.mean([x[2] for x in v])), float(np.mean([x[3] for x in v]))])
    return out


# -- the report ------------------------------------------------------------------------------------------------

def _mean_abs(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(np.abs(values))) if values else math.nan


def report(ours: dict, nml: dict | None, timing: dict, args, large: list | None = None) -> str:
    from monitor_assets.wiring import markdown_table

    lines = ["## Estimation benchmark: ours vs NannyML " + NML_VERSION, ""]
    if nml is not None:
        agree = []
        for metric in (*CLASSIFIER_METRICS, *REGRESSOR_METRICS):
            diffs = [e[metric].estimate - nml["estimates"][key][metric][d]
                     for key, rows in ours.items() if metric in rows["realized"][0]
                     for d, e in enumerate(rows["plain"])]
            agree.append((metric, len(diffs), _mean_abs(diffs)))
        lines += ["(a) Agreement: mean |ours plain - NannyML| over every case-day", "",
                  markdown_table(["metric", "case-days", "mean abs difference"], agree, limit=20), ""]
    rows = []
    for key, r in ours.items():
        for metric in r["realized"][0]:
            real = [x[metric] for x in r["realized"]]
            cells = [key, metric, round(float(np.mean(real)), 4)]
            for name in ("plain", "reweighted"):
                cells.append(_mean_abs([e[metric].estimate - x for e, x in zip(r[name], real, strict=True)]))
            cells.append(_mean_abs([v - x for v, x in zip(nml["estimates"][key][metric], real, strict=True)])
                         if nml else math.nan)
            for name in ("plain", "reweighted"):
                cells.append(float(np.mean([e[metric].lower <= x <= e[metric].upper
                                            for e, x in zip(r[name], real, strict=True)])))
            rows.append(cells)
    lines += [f"(b) Mean |estimate - realized| over {args.days} days of {DAY_ROWS:,} rows (reference "
              f"{REF_ROWS:,}); coverage = share of days whose realized value is inside our 95% band", "",
              markdown_table(["case", "metric", "realized (mean)", "ours plain", "ours reweighted", "NannyML",
                              "coverage plain", "coverage reweighted"], rows, limit=100), ""]
    scale = args.models / args.nannyml_models
    trows = []
    for task, label in (("classifier", "CBPE"), ("regressor", "DLE")):
        ours_scale = 1.0 if task == "classifier" else args.models / args.dle_models
        t = {k: v * ours_scale for k, v in timing[task].items()}
        nml_fit = nml_est = math.nan
        if nml is not None:
            nml_fit = statistics.median(r["fit"] for r in nml["timing"][task]) * scale
            nml_est = statistics.median(r["estimate"] for r in nml["timing"][task]) * scale
        for name in ("plain", "reweighted"):
            for day in ("stable", "shifted"):
                excl, incl = t[f"{name}/{day}"], t[f"{name}/{day}"] + t["fit"]
                trows.append([label, f"ours {name}", day, round(excl, 2), round(incl, 2), round(nml_est / excl, 1),
                              round((nml_est + nml_fit) / incl, 1)])
        trows.append([label, "NannyML", "stable", round(nml_est, 2), round(nml_est + nml_fit, 2), 1.0, 1.0])
    lines += [f"(c) Seconds for {args.models} models x {args.rows:,} rows x 1 day, median of {args.runs} runs, one "
              f"OpenMP thread each side, each run NannyML then ours (the same load); fit excluded = estimating only (ours reuses a stored fit), fit included = "
              f"fitting on {REF_ROWS:,} reference rows too. NannyML timed on {args.nannyml_models} models and scaled "
              f"linearly (x{scale:g}), its LightGBM on one thread; ours on "
              + (f"all {args.models}" if args.dle_models == args.models else
                 f"all {args.models} (CBPE) and {args.dle_models} (DLE, x{args.models / args.dle_models:g})")
              + ". Shifted day: x2 ~ N(1, 1) / x1 ~ N(1, 1) (reweighting applied).", "",
              markdown_table(["estimator", "who", "day", "s fit excluded", "s fit included", "NannyML / ours (excl.)",
                              "NannyML / ours (incl.)"], trows, limit=100), ""]
    if large is not None:
        lines += ["(d) Our default DLE (reweighted) on 5 days of 50,000 rows per case: the loss models on a sample of "
                  "the rows and the surrogate on all (as run) against the loss models on every row", "",
                  markdown_table(["case", "metric", "rows the trees run on", "mean abs error", "mean band half-width",
                                  "coverage"], large, limit=100), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--nannyml-models", type=int, default=10)
    parser.add_argument("--dle-models", type=int, default=None,
                        help="models our DLE is timed on, then scaled (default: all of --models)")
    parser.add_argument("--setup-nannyml", action="store_true")
    parser.add_argument("--no-nannyml", action="store_true")
    parser.add_argument("--nannyml-worker", help=argparse.SUPPRESS)  # internal: the NannyML side, as JSON
    args = parser.parse_args()
    args.dle_models = args.dle_models or args.models
    if args.nannyml_worker:
        print(json.dumps(nannyml_worker(json.loads(args.nannyml_worker))))
        return
    nml = None
    if not args.no_nannyml:
        python = setup_nannyml() if args.setup_nannyml else os.environ.get(
            "NANNYML_PYTHON", str(NML_VENV / "bin" / "python"))
        if not Path(python).exists():
            sys.exit(f"no NannyML interpreter at {python}: run with --setup-nannyml, set NANNYML_PYTHON, "
                     "or pass --no-nannyml")
        nml = run_nannyml(python, {"estimates": True, "days": args.days, "runs": 0, "models": args.nannyml_models,
                                   "rows": args.rows})
    ours, sums = accuracy_runs(args.days)
    if nml is not None and nml["checksums"] != sums:
        sys.exit(f"the two sides built different data: {sums} vs {nml['checksums']}")
    # Side by side: each run times NannyML, then ours, so both sides see the same load of a shared machine.
    ours_runs, nml_runs = [], {"classifier": [], "regressor": []}
    for _ in range(args.runs):
        if nml is not None:
            timed = run_nannyml(python, {"estimates": False, "days": args.days, "runs": 1,
                                         "models": args.nannyml_models, "rows": args.rows})
            for task, runs in timed["timing"].items():
                nml_runs[task] += runs
        ours_runs.append({"classifier": time_ours("classifier", args.models, args.rows, 1),
                          "regressor": time_ours("regressor", args.dle_models, args.rows, 1)})
    timing = {task: {k: statistics.median(r[task][k] for r in ours_runs) for k in ours_runs[0][task]}
              for task in ("classifier", "regressor")}
    if nml is not None:
        nml["timing"] = nml_runs
    text = report(ours, nml, timing, args, large_days())
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "estimation_bench.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
