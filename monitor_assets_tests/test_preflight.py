"""The preflight on real files: a copy of the demo with typos, a user's CSV export, a year of dated files,
and `run_pipeline` refusing to start (and writing nothing) when the preflight finds a problem."""

import datetime as dt
import glob
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from monitor_assets.config import DEMO_CONFIG, load_config
from monitor_assets.preflight import Listing, preflight, run_days

from .conftest import write

REPO = Path(__file__).parents[1]
DEMO = DEMO_CONFIG.parent


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    """The demo's data and config in a temporary folder (the config's paths are relative to it)."""
    shutil.copytree(DEMO, tmp_path / "demo")
    return tmp_path / "demo"


def with_typos(folder: Path) -> Path:
    """The demo config with four mistakes a user makes: a folder, a reference file, a feature, a label column."""
    text = (DEMO_CONFIG.read_text()
            .replace("path: labels/{date}.csv.gz", "path: labls/{date}.csv.gz")
            .replace("reference: reference/purchase_propensity.parquet",
                     "reference: reference/purchase_propensty.parquet")
            .replace("      amount: numeric\n", "      amout: numeric\n")
            .replace("    score_field: prediction", "    score_field: prediction\n    reference_fields: {label: lable}"))
    return write(folder / "mine.yaml", text)


def lines(problems, warning: bool = False) -> list[str]:
    return [str(p) for p in problems if p.warning == warning]


def test_demo_passes_with_one_warning_for_its_silent_model_day():
    config = load_config(DEMO_CONFIG)
    began = time.perf_counter()
    problems = preflight(config)
    took = time.perf_counter() - began
    print(f"preflight on the demo (30 days, 3 models): {took * 1000:.0f} ms")
    assert lines(problems) == []
    # The demo's purchase_propensity logs nothing on 2026-10-19 (an incident the run must flag, not stop on).
    assert lines(problems, warning=True) == [
        f"{DEMO_CONFIG}: sources.predictions.path: no file of model purchase_propensity "
        "(predictions/2026-10-19/purchase_propensity.jsonl.gz) on 1 of 30 days: 2026-10-19; its "
        "predictions_logged check will fail there"]
    assert took < 1.0


def test_every_typo_is_reported_at_once_with_the_closest_name(demo_copy):
    path = with_typos(demo_copy)
    began = time.perf_counter()
    problems = preflight(load_config(path))
    took = time.perf_counter() - began
    assert lines(problems) == [
        f"{path}: sources.labels.path: no file matches labls/{{date}}.csv.gz on any of the 30 days "
        f"2026-10-01..2026-10-30: nothing matches 'labls' in {demo_copy} (did you mean 'labels'?)",
        f"{path}: models[0].features.amout: column 'amout' not in fraud_detector.parquet (did you mean 'amount'?)",
        f"{path}: models[1].reference: file not found: reference/purchase_propensty.parquet "
        "(did you mean 'purchase_propensity.parquet'?)",
        f"{path}: models[2].reference_fields.label: column 'lable' not in demand_forecaster.parquet "
        "(did you mean 'label'?)",
    ]
    # The JSON logs lack the misspelt feature too; a first record may lack an optional key, so it only warns.
    assert (f"{path}: models[0].features.amout: field 'features.amout' not in the first record of "
            "predictions/2026-10-01/fraud_detector.jsonl.gz (did you mean 'features.amount'?)") in lines(problems, True)
    assert took < 2.0


def test_a_day_without_files_is_an_error_unless_the_source_allows_it(demo_copy):
    for day in ("2026-10-05", "2026-10-06", "2026-10-09"):
        (demo_copy / "sales" / f"{day}.csv.gz").unlink()
    config = load_config(demo_copy / "monitor.yaml")
    assert lines(preflight(config)) == [
        f"{config.file}: sources.sales.path: no file matches sales/{{date}}.csv.gz on 3 of 30 days: "
        "2026-10-05..2026-10-06, 2026-10-09 (set allow_empty: true if days without files are expected)"]
    # A run of other days does not care.
    assert lines(preflight(config, run_days(config, dt.date(2026, 10, 10), dt.date(2026, 10, 30)))) == []
    text = (demo_copy / "monitor.yaml").read_text().replace("path: sales/{date}.csv.gz",
                                                            "path: sales/{date}.csv.gz\n    allow_empty: true")
    allowed = load_config(write(demo_copy / "allowed.yaml", text))
    assert allowed.sales.allow_empty and lines(preflight(allowed)) == []


CSV_CONFIG = """
partitions: {start_date: 2025-06-01, end_date: 2025-06-02}
sources:
  predictions:
    path: export/preds_{date:%Y%m%d}.csv
    fields: {prediction_id: req, timestamp: served, model_id: svc, latency_ms: ms, score: yhat}
  labels:
    path: truth/{date}.csv
    fields: {prediction_id: request, label: actual}
models:
  - id: basket_size
    task: regression
    reference: ref.parquet
    reference_fields: {score: yhat, label: actual}
    features: {visits: numeric, stroe: categorical}
    sensitive_attributes: [segment]
"""


def test_csv_source_fields_are_checked_against_a_sample_header(tmp_path):
    for day in ("20250601", "20250602"):
        write(tmp_path / "export" / f"preds_{day}.csv", "req,served_at,svc,ms,yhat,visits,store,segment\n"
                                                        "r1,2025-06-01 10:00:00,basket_size,3,1.5,7,A,new\n")
    for day in ("2025-06-01", "2025-06-02"):
        write(tmp_path / "truth" / f"{day}.csv", "request,actual\nr1,1.4\n")
    pd.DataFrame({"visits": [1.0], "store": ["A"], "segment": ["new"], "yhat": [1.0], "actual": [1.0]}).to_parquet(
        tmp_path / "ref.parquet")
    config = load_config(write(tmp_path / "mine.yaml", CSV_CONFIG))
    path = config.file
    assert lines(preflight(config)) == [
        f"{path}: sources.predictions.fields.timestamp: column 'served' not in export/preds_20250601.csv "
        "(did you mean 'served_at'?)",
        f"{path}: models[0].features.stroe: column 'stroe' not in export/preds_20250601.csv (did you mean 'store'?)",
        f"{path}: models[0].features.stroe: column 'stroe' not in ref.parquet (did you mean 'store'?)",
    ]
    fixed = load_config(write(tmp_path / "fixed.yaml", CSV_CONFIG.replace("served,", "served_at,")
                              .replace("stroe", "store")))
    assert preflight(fixed) == []


def test_directory_listing_matches_exactly_what_glob_matches(tmp_path):
    for name in ("a/2026-01-01/x.jsonl", "a/2026-01-01/y.jsonl", "a/2026-01-01/.hidden.jsonl", "a/2026-01-02/x.csv",
                 "a/b[1]/z.jsonl", "a/2026-01-01.jsonl", "a/notes.txt"):
        write(tmp_path / name, "{}\n")
    listing = Listing()
    patterns = ["a/*/*.jsonl", "a/2026-01-0?/x.*", "a/*/.*", "a/b[[]1]/*", "a/2026-01-01.jsonl", "a/*.jsonl",
                "a/missing/*.jsonl", "a/2026-01-01/*.jsonl/*", "a/[!n]*", "a/*/*"]
    for pattern in patterns:
        full = str(tmp_path / pattern)
        assert listing.match(full)[0] == sorted(glob.glob(full)), pattern


def test_a_year_of_dated_files_is_checked_in_well_under_a_second(tmp_path):
    start = dt.date(2025, 1, 1)
    days = [start + dt.timedelta(days=k) for k in range(365)]
    for day in days:
        write(tmp_path / "preds" / f"{day}.csv", "prediction_id,timestamp,model_id,score,tenure\n")
        write(tmp_path / "labels" / f"{day:%Y%m%d}.csv", "prediction_id,label\n")
    pd.DataFrame({"tenure": [1.0], "score": [0.5], "label": [1]}).to_parquet(tmp_path / "ref.parquet")
    config = load_config(write(tmp_path / "year.yaml", f"""
partitions: {{start_date: {days[0]}, end_date: {days[-1]}}}
sources:
  predictions: {{path: "preds/{{date}}.csv"}}
  labels: {{path: "labels/{{date:%Y%m%d}}.csv"}}
models:
  - {{id: churn, task: binary_classification, reference: ref.parquet, features: {{tenure: numeric}}}}
"""))
    began = time.perf_counter()
    problems = preflight(config)
    took = time.perf_counter() - began
    print(f"preflight over 365 days x 2 sources: {took * 1000:.0f} ms")
    assert problems == [] and took < 1.0
    # A day without predictions is an error; a day without labels a warning (labels come late).
    (tmp_path / "preds" / "2025-07-04.csv").unlink()
    (tmp_path / "labels" / "20250705.csv").unlink()
    problems = preflight(config)
    assert lines(problems) == [
        f"{config.file}: sources.predictions.path: no file matches preds/{{date}}.csv on 1 of 365 days: "
        "2025-07-04 (set allow_empty: true if days without files are expected)"]
    assert lines(problems, warning=True) == [
        f"{config.file}: sources.labels.path: no file matches labels/{{date:%Y%m%d}}.csv on 1 of 365 days: "
        "2025-07-05 (set allow_empty: true if days without files are expected)"]


def runner_env(tmp: Path, config: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MONITOR_", "DAGSTER_HOME"))}
    return {**env, "MONITOR_CONFIG": str(config), "DAGSTER_HOME": str(tmp / "home"),
            "MONITOR_WAREHOUSE": str(tmp / "out" / "monitor.duckdb"), "MONITOR_REPORTS_DIR": str(tmp / "out" / "reports"),
            "PYTHONPATH": str(REPO)}


def test_run_pipeline_refuses_to_start_and_writes_nothing(demo_copy, tmp_path):
    path = with_typos(demo_copy)
    expected = lines(preflight(load_config(path)))
    result = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline"], env=runner_env(tmp_path, path),
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        *expected, f"preflight: 4 problems in {path}; nothing was run or written"]
    assert not (tmp_path / "out").exists()  # no warehouse file, lake folder, state file or report
    assert not (tmp_path / "home" / "run_logs").exists()  # and no run was started


def test_cli_exit_status_and_output(demo_copy):
    ok = subprocess.run([sys.executable, "-m", "monitor_assets.preflight", "--config", str(DEMO_CONFIG)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith(f"preflight ok: {DEMO_CONFIG}, 30 days, 4 models (")
    assert ok.stderr.startswith("warning: ") and len(ok.stderr.splitlines()) == 1
    path = with_typos(demo_copy)
    bad = subprocess.run([sys.executable, "-m", "monitor_assets.preflight", "--config", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    errors = [line for line in bad.stderr.splitlines() if not line.startswith("warning: ")]
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(errors) == 5 and errors[-1].startswith(f"preflight: 4 problems in {path} (")


def test_a_run_started_elsewhere_checks_each_source_in_its_own_step_and_fails_it_once(demo_copy, tmp_path):
    """As from the UI or a schedule (no run_pipeline, no preflight tag): the predictions step runs the preflight
    on its own source, which is sound here, so it loads (one model's feature typo and another's reference typo
    are those models' problems, warned in its log); the labels glob that matches nothing fails the labels step
    once, without a retry, naming the glob, and nothing downstream of the labels runs."""
    import dagster as dg

    from .conftest import run_job

    path = with_typos(demo_copy)
    config = replace(load_config(path), warehouse_path=str(tmp_path / "wh" / "monitor.duckdb"),
                     reports_dir=str(tmp_path / "reports"))
    result = run_job(config, "2026-10-01", raise_on_error=False)
    assert not result.success
    failures = {e.step_key: e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}
    assert set(failures) == {"raw__labels"}
    message = failures["raw__labels"].event_specific_data.error.message
    assert f"labels 2026-10-01: no file matches {demo_copy}/labls/2026-10-01.csv.gz; nothing of the day was " \
           "replaced" in message
    assert not any(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
    raw = {p.name for p in (tmp_path / "wh" / "monitor_lake" / "raw").iterdir()}
    assert any(name.startswith("predictions") for name in raw) and "labels" not in raw, raw
    succeeded = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {"raw__predictions", "raw__sales"} <= succeeded
    assert not succeeded & {"raw__labels", "monitoring__feature_drift", "monitoring__performance_daily"}


def test_a_missing_reference_file_is_not_retried(demo_copy, tmp_path):
    """Without the preflight (the step run alone): a missing reference is reported at once, naming model and
    file, with no retry; it was an OSError, retried three times (19 s), before. (Whether the step then fails or
    records the model's error and profiles the others is the reference step's own contract.)"""
    import dagster as dg

    from monitor_assets.definitions import MONITORING_JOB, build_definitions

    (demo_copy / "reference" / "demand_forecaster.parquet").unlink()
    config = replace(load_config(demo_copy / "monitor.yaml"), warehouse_path=str(tmp_path / "wh" / "monitor.duckdb"),
                     reports_dir=str(tmp_path / "reports"))
    job = build_definitions(config).resolve_job_def(MONITORING_JOB)
    instance = dg.DagsterInstance.ephemeral()
    began = time.perf_counter()
    result = job.execute_in_process(asset_selection=[dg.AssetKey(["monitoring", "reference_profiles"])],
                                    partition_key="2026-10-01", raise_on_error=False, instance=instance)
    took = time.perf_counter() - began
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in [e.event_type for e in result.all_events]
    expected = (f"model demand_forecaster: reference file {demo_copy / 'reference' / 'demand_forecaster.parquet'} "
                "does not exist")
    assert any(expected in (entry.message or "") for entry in instance.all_logs(result.run_id))
    assert took < 10, took


def test_headers_read_as_duckdb_reads_them(tmp_path):
    import gzip

    from monitor_assets.preflight import columns_of

    write(tmp_path / "bom.csv", "\ufeffreq;served_at;yhat\r\nr1;2025-06-01;1\n")  # Excel's export: BOM and ';'
    with gzip.open(tmp_path / "q.csv.gz", "wt") as f:
        f.write('id,"a,b",c\n1,2,3\n')
    write(tmp_path / "l.jsonl", '{"id": 1, "features": {"x": 2}}\n')
    assert columns_of(str(tmp_path / "bom.csv")) == ["req", "served_at", "yhat"]
    assert columns_of(str(tmp_path / "q.csv.gz")) == ["id", "a,b", "c"]
    assert columns_of(str(tmp_path / "l.jsonl")) == {"id": 1, "features": {"x": 2}}
