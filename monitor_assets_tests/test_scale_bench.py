"""benchmarks/scale_bench.py at a toy size: the data it writes has the declared shape, and a headless run
over it finds exactly the models it drifted."""

import importlib.util
import sys
from pathlib import Path

import duckdb
import pytest

from monitor_assets.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("scale_bench", None)


@pytest.fixture(scope="module")
def toy(bench, tmp_path_factory):
    params = bench.Params(models=3, rows=300, days=2, seed=7)
    folder = tmp_path_factory.mktemp("scale") / params.slug
    return params, folder, bench.ensure_data(params, folder)


def test_generated_data_has_the_declared_shape(bench, toy):
    params, folder, manifest = toy
    assert bench.existing_data(params, folder) == manifest  # a second call reuses the folder
    config = load_config(folder / "monitor.yaml")
    assert len(config.models) == 3 and manifest["drifted"] == [m["id"] for m in manifest["models"] if m["drifted"]]
    assert len(manifest["drifted"]) == 1
    names = [f.name for m in config.models for f in m.features]
    assert len(names) == len(set(names)) == 36  # distinct per model
    con = duckdb.connect()
    for m in config.models:
        assert [f.type for f in m.features].count("numeric") == 8 and len(m.features) == 12
        assert all(f.name.startswith(f"{m.id}_") for f in m.features)
        assert [a.source for a in m.sensitive_attributes] == ["context.region"]
        for day in params.dates:
            log = folder / "predictions" / str(day) / f"{m.id}.jsonl"
            row = con.execute(f"""SELECT count(*), count(DISTINCT prediction_id), min(timestamp)::DATE,
                                         any_value(features), any_value(context)
                                  FROM read_json('{log}')""").fetchone()
            assert row[:3] == (300, 300, day)
            assert sorted(row[3]) == sorted(f.name for f in m.features) and set(row[4]) == {"region"}
    for day in params.dates:
        assert con.execute(f"SELECT count(*) FROM read_csv('{folder}/labels/{day}.csv')").fetchone()[0] == 900


def test_only_the_drifted_models_shift_on_the_last_day(bench, toy):
    params, folder, manifest = toy
    con = duckdb.connect()
    first, last = (str(d) for d in params.dates)
    for m in manifest["models"]:
        for name in m["numeric"]:
            ref_mean, ref_sd = con.execute(f"""SELECT avg("{name}"), stddev("{name}")
                                              FROM '{folder}/reference/{m["id"]}.parquet'""").fetchone()
            for day in (first, last):
                mean = con.execute(f"""SELECT avg(features."{name}")
                                       FROM read_json('{folder}/predictions/{day}/{m["id"]}.jsonl')""").fetchone()[0]
                shift = (mean - ref_mean) / ref_sd
                if day == last and name in m["shifted"]:
                    assert 0.3 < shift < 0.7, (m["id"], name, shift)
                else:
                    assert abs(shift) < 0.25, (m["id"], day, name, shift)
        for name in m["categorical"]:
            before, after = (con.execute(f"""SELECT avg((features."{name}" = 'v0')::INT)
                                              FROM read_json('{folder}/predictions/{day}/{m["id"]}.jsonl')"""
                                          ).fetchone()[0] for day in (first, last))
            if name == m["reweighted"]:  # the commonest level becomes the rarest: a third of its share
                assert after < 0.6 * before, (m["id"], name, before, after)
            else:
                assert abs(after - before) < 0.12, (m["id"], name, before, after)


def test_a_headless_run_finds_exactly_the_drifted_models(bench, toy):
    params, folder, manifest = toy
    result = bench.run_once(folder, manifest, "run1", max_gb=4, timeout=300, keep=False)
    assert result.returncode == 0 and result.killed is None and result.run_status == "SUCCESS", bench.tail(result.log)
    assert result.found == result.alerted == manifest["drifted"]
    assert result.false_other_days == []
    assert {"raw/predictions", "monitoring/feature_drift", "reports/monitoring_dashboard"} <= set(result.steps)
    assert 0 < result.peak_gb < 4 and result.wall > sum(result.steps.values())
    summary = bench.summarize(params, manifest, [result])
    assert summary["exact"] and summary["floor"] is None


@pytest.mark.parametrize("layout", ["unnamed", "mixed"])
def test_layouts_hold_the_same_records_under_a_glob_without_the_model(bench, tmp_path, layout):
    """unnamed: the named layout's files under names without the model; mixed: several models' records
    shuffled together in each file. Both hold exactly the named layout's lines, and the config's glob does not
    name the model."""
    named, other = bench.Params(models=4, rows=50, days=2), bench.Params(models=4, rows=50, days=2, layout=layout)
    assert other.slug == named.slug + f"_{layout}"
    folders = {p.layout: tmp_path / p.slug for p in (named, other)}
    for p in (named, other):
        bench.ensure_data(p, folders[p.layout])
    config = load_config(folders[layout] / "monitor.yaml")
    assert config.predictions.path.endswith("predictions/{date}/*.jsonl")
    con = duckdb.connect()
    for day in named.dates:
        files = sorted((folders[layout] / "predictions" / str(day)).iterdir())
        assert [f.name for f in files] == [f"part-{k:04d}.jsonl" for k in range(4 if layout == "unnamed" else 2)]
        models = [con.execute(f"SELECT list(DISTINCT model_id ORDER BY model_id) FROM read_json('{f}')").fetchone()[0]
                  for f in files]
        assert sorted(m for ms in models for m in ms) == ["m000", "m001", "m002", "m003"]
        assert {len(ms) for ms in models} == ({1} if layout == "unnamed" else {2})
        lines = {p.layout: sorted(line for f in (folders[p.layout] / "predictions" / str(day)).iterdir()
                                  for line in f.read_text().splitlines()) for p in (named, other)}
        assert lines[layout] == lines["named"] and len(lines["named"]) == 200
