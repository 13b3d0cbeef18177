"""Scale: hundreds of models in one daily run, the whole pipeline headless, time and memory per stage.

    python benchmarks/scale_bench.py [--models 5] [--rows 2000] [--days 2] [--shared] [--gzip]
        [--drifted-share 0.1] [--seed 7] [--max-gb 8] [--timeout 900] [--runs 1] [--keep] [--out DIR]
        [--shards N [--workers W]] [--layout named|unnamed|mixed] [--ingest-only]

Generates N models x R rows x D days of JSON-line prediction logs shaped like the demo's (one file per
model and day, predictions/{date}/<model>.jsonl), same-day labels for every prediction
(labels/{date}.csv), a reference Parquet file per model and a monitor.yaml for them, in
benchmarks/out/scale/<parameters>/ (reused when the parameters and seed match). --layout sets how the logs
are laid out: `named` (the default) one file per model and day named by model with a `{model}` glob; `unnamed`
the same files named part-NNNN.jsonl (a seeded order, not the model's) and the glob predictions/{date}/*.jsonl,
as a serving fleet writes its logs; `mixed` the records of several models interleaved (shuffled) in at most 10
files per day, with that same glob. Every model is a binary
classifier with 12 features (8 numeric, 4 categorical) named after the model (m017_f03), or, with
--shared, one schema for all (f03); its sensitive attribute is the shared context field `region`.
A seeded set of models (--drifted-share, at least one) drifts on the last day only: two numeric
features shift by 0.5 standard deviations and one categorical feature is reweighted, i.e. 3 of 12
features, and the config flags a model-day from a drift share of 0.2.

Each run is `python -m monitor_assets.run_pipeline` over all days in a fresh subprocess with a fresh
warehouse and DAGSTER_HOME. The process tree's memory (Pss: shared pages counted once) is polled every 0.2 s
and the tree is killed above --max-gb (or after --timeout s). Reported: wall seconds, peak memory (polled tree,
reported as peak_rss_gb, and the child's ru_maxrss), seconds and peak RSS per step (step times read back from the Dagster instance), and whether
the drifted models, and only they, were found (monitoring.drift_summary and monitoring.alerts). With
--runs K the figures are medians. With --shards N the run is `run_pipeline --shards N --workers W`: the
models split into N shards, each shard's steps in a process of its own, W at once, then the fleet run;
memory is the whole process tree's, and step times are listed per shard. With --ingest-only the run is the
ingestion of predictions alone (`ingest_days` over every day, as the `raw/predictions` step calls it, in a
fresh process with a fresh warehouse): its time, peak RSS and counts. The floors set for this benchmark are printed beside them; the last
line is one JSON object.

Ranking mode (--ranking): N rankers (`task: ranking`) x R requests x --items items x D days instead, e.g.
`--ranking --models 100 --rows 50000 --days 1` (issue 23: 100 rankers x 50,000 requests x 10 items x 1 day, peak
memory bound 2 GB). Each ranker logs one JSON line per request with its ranked list (`items`, `scores`;
rankings/{date}/<ranker>.jsonl), its interactions (clicks and purchases, more often near the top of the list) in
interactions/{date}/<ranker>.csv the same day, and has a reference Parquet file of 5,000 graded requests in the
impressions shape. A seeded set of rankers (--drifted-share) collapses on the last day (a popularity collapse: the
lists fill with the same 30 items and the interactions no longer follow the rank), which the ranking check must
find: reported is which rankers `monitoring.ranking_performance` judged below their floor on the last day, and on
any other day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the parent process stays small (see main)
    import numpy as np
    import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "out" / "scale"
FIRST_DAY = dt.date(2026, 3, 1)
N_NUMERIC, N_CATEGORICAL = 8, 4
LEVELS = (3, 4, 6, 8)  # levels of the four categorical features
REGIONS = ("north", "south", "east", "west")
DRIFT_SHARE = 0.2  # 3 drifted features of 12 = 0.25 is flagged, 2 of 12 (noise) is not
SHIFT_SD = 0.5
GB = 1024**3
# (models, rows, days) -> (seconds, GB) that the scale issue asks for.
FLOORS = {(100, 50_000, 2): (240.0, 2.0), (500, 10_000, 1): (240.0, 2.0)}
# Ranking mode: (rankers, requests, days) -> (seconds or None: no time bound set, GB).
RANKING_FLOORS = {(100, 50_000, 1): (None, 2.0)}
LAYOUTS = ("named", "unnamed", "mixed")
MIXED_FILES = 10  # files per day in the mixed layout
FORMAT_VERSION = 2  # bump when the generated data changes, so old folders are not reused
CATALOGUE = 20_000  # items per ranker's catalogue
COLLAPSED_ITEMS = 30  # a collapsed ranker's lists come from this many items
REFERENCE_REQUESTS = 5_000
CLASSIFIER_ROWS = 1_000  # the one classifier beside the rankers, per day


@dataclass(frozen=True)
class Params:
    models: int = 5
    rows: int = 2_000
    days: int = 2
    shared: bool = False
    drifted_share: float = 0.1
    seed: int = 7
    gzip: bool = False
    ranking: bool = False  # rankers: `models` rankers x `rows` requests x `items` items
    items: int = 10
    layout: str = "named"  # named | unnamed | mixed: see the module docstring

    @property
    def slug(self) -> str:
        if self.ranking:
            return (f"rank_m{self.models}_r{self.rows}_i{self.items}_d{self.days}_drift{self.drifted_share:g}"
                    f"_s{self.seed}{'_gz' if self.gzip else ''}")
        return (f"m{self.models}_r{self.rows}_d{self.days}_{'shared' if self.shared else 'distinct'}"
                f"_drift{self.drifted_share:g}_s{self.seed}{'_gz' if self.gzip else ''}"
                f"{'' if self.layout == 'named' else '_' + self.layout}")

    @property
    def dates(self) -> list[dt.date]:
        # Dagster has no partition for a day to come: a long run starts early enough to end before today.
        first = min(FIRST_DAY, dt.date.today() - dt.timedelta(days=self.days + 1))
        return [first + dt.timedelta(days=i) for i in range(self.days)]


@dataclass
class ModelSpec:
    """One synthetic model: its features' distributions, its score weights and whether it drifts."""

    id: str
    numeric: list[str]
    categorical: list[str]
    kinds: list[str]  # per numeric feature: normal or lognormal
    loc: list[float]
    scale: list[float]
    beta: list[float]  # score weights on the standardised numeric features
    drifted: bool = False
    shifted: list[str] = field(default_factory=list)
    reweighted: str | None = None

    def mean_sd(self, j: int) -> tuple[float, float]:
        """Theoretical mean and standard deviation of numeric feature j (shift and standardise by them)."""
        if self.kinds[j] == "normal":
            return self.loc[j], self.scale[j]
        m, s = self.loc[j], self.scale[j]
        return math.exp(m + s * s / 2), math.sqrt((math.exp(s * s) - 1) * math.exp(2 * m + s * s))


def model_specs(p: Params) -> list[ModelSpec]:
    """Every model's distributions, seeded: the same parameters always give the same data."""
    import numpy as np

    width = max(3, len(str(p.models - 1)))
    n_drift = 0 if p.drifted_share <= 0 else max(1, round(p.drifted_share * p.models))
    drifted = set(np.random.default_rng([p.seed, 1]).choice(p.models, min(n_drift, p.models), replace=False).tolist())
    specs = []
    for i in range(p.models):
        rng = np.random.default_rng([p.seed, 2, i])
        mid = f"m{i:0{width}d}"
        prefix = "" if p.shared else f"{mid}_"
        names = [f"{prefix}f{j:02d}" for j in range(N_NUMERIC + N_CATEGORICAL)]
        kinds = ["normal" if j % 2 == 0 else "lognormal" for j in range(N_NUMERIC)]
        loc = [float(rng.uniform(-50, 150)) if k == "normal" else float(rng.uniform(0, 3)) for k in kinds]
        scale = [float(rng.uniform(1, 30)) if k == "normal" else float(rng.uniform(0.2, 0.8)) for k in kinds]
        spec = ModelSpec(mid, names[:N_NUMERIC], names[N_NUMERIC:], kinds, loc, scale,
                         rng.normal(0, 0.6, N_NUMERIC).round(3).tolist())
        if i in drifted:
            spec.drifted = True
            spec.shifted = sorted(rng.choice(spec.numeric, 2, replace=False).tolist())
            spec.reweighted = str(rng.choice(spec.categorical))
        specs.append(spec)
    return specs


def _weights(levels: int, reverse: bool) -> np.ndarray:
    import numpy as np

    w = np.linspace(3, 1, levels)
    w = w[::-1] if reverse else w  # reversed: the rarest level becomes the commonest
    return w / w.sum()


def sample(spec: ModelSpec, rng: np.random.Generator, n: int, drift: bool) -> pd.DataFrame:
    """n rows of one model: features, region, score and label (labels drawn from the score)."""
    import numpy as np
    import pandas as pd

    data: dict[str, Any] = {}
    z = np.zeros(n)
    for j, name in enumerate(spec.numeric):
        mean, sd = spec.mean_sd(j)
        x = (rng.normal(spec.loc[j], spec.scale[j], n) if spec.kinds[j] == "normal"
             else rng.lognormal(spec.loc[j], spec.scale[j], n))
        if drift and name in spec.shifted:
            x = x + SHIFT_SD * sd
        z += spec.beta[j] * (x - mean) / sd
        data[name] = np.round(x, 4)
    for name, levels in zip(spec.categorical, LEVELS, strict=True):
        codes = rng.choice(levels, n, p=_weights(levels, drift and name == spec.reweighted))
        if name == spec.categorical[0]:
            z += 0.8 * (codes == 0)
        data[name] = pd.Categorical.from_codes(codes, [f"v{k}" for k in range(levels)])
    data["region"] = pd.Categorical.from_codes(rng.integers(0, len(REGIONS), n), list(REGIONS))
    score = 1 / (1 + np.exp(-(z - 1.0)))
    data["score"] = np.round(score, 4)
    data["label"] = (rng.random(n) < score).astype(np.int8)
    return pd.DataFrame(data)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _features_struct(spec: ModelSpec) -> str:
    """DuckDB struct literal: the `features` object of a log line, categories as text."""
    parts = [f"'{n}': {_ident(n)}" for n in spec.numeric] + [f"'{n}': {_ident(n)}::VARCHAR" for n in spec.categorical]
    return "{" + ", ".join(parts) + "}"


def generate(p: Params, folder: Path) -> dict:
    """Write logs, labels, references and monitor.yaml into `folder`; manifest.json is written last,
    so a folder with a manifest is complete. Line building is DuckDB's JSON writer, not a Python loop."""
    import duckdb
    import numpy as np

    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "reference").mkdir(parents=True)
    (folder / "labels").mkdir()
    specs = model_specs(p)
    con = duckdb.connect()
    con.execute("CREATE TABLE labels (prediction_id VARCHAR, model_id VARCHAR, label TINYINT)")
    ext = ".jsonl.gz" if p.gzip else ".jsonl"
    options = "FORMAT JSON, COMPRESSION gzip" if p.gzip else "FORMAT JSON"
    for i, spec in enumerate(specs):
        frame = sample(spec, np.random.default_rng([p.seed, 3, i]), max(p.rows, 2_000), drift=False)
        con.register("frame", frame)
        columns = ", ".join(_ident(n) for n in spec.numeric) + ", " + ", ".join(
            f"{_ident(n)}::VARCHAR AS {_ident(n)}" for n in [*spec.categorical, "region"])
        ref = folder / "reference" / f"{spec.id}.parquet"
        con.execute(f"COPY (SELECT {columns}, score, label FROM frame) TO '{ref}' (FORMAT PARQUET)")
        con.unregister("frame")
    for d, day in enumerate(p.dates):
        (folder / "predictions" / day.isoformat()).mkdir(parents=True)
        last = d == p.days - 1
        for i, spec in enumerate(specs):
            rng = np.random.default_rng([p.seed, 4, i, d])
            frame = sample(spec, rng, p.rows, drift=last and spec.drifted)
            frame["idx"] = np.arange(p.rows)
            frame["ts_ms"] = np.sort(rng.integers(0, 86_400_000, p.rows))
            frame["latency_ms"] = np.round(rng.gamma(4, 12, p.rows), 1)
            frame["status"] = np.where(rng.random(p.rows) < 0.001, "error", "ok")
            con.register("frame", frame)
            pid = f"printf('{spec.id}-{day:%Y%m%d}-%07d', idx)"
            path = folder / "predictions" / day.isoformat() / f"{spec.id}{ext}"
            con.execute(f"""COPY (SELECT strftime(TIMESTAMP '{day}' + to_milliseconds(ts_ms), '%Y-%m-%dT%H:%M:%S.%gZ')
                                         AS timestamp, 'INFO' AS level, 'serving.{spec.id}' AS logger,
                                         'prediction served' AS message, {pid} AS prediction_id,
                                         '{spec.id}' AS model_id, '1.0.{i}' AS model_version, latency_ms, status,
                                         {_features_struct(spec)} AS features, {{'region': region::VARCHAR}} AS context,
                                         score
                                  FROM frame) TO '{path}' ({options})""")
            con.execute(f"INSERT INTO labels SELECT {pid}, '{spec.id}', label FROM frame")
            con.unregister("frame")
        con.execute(f"COPY labels TO '{folder / 'labels' / f'{day}.csv'}' (FORMAT CSV, HEADER)")
        con.execute("DELETE FROM labels")
        relayout(p, [s.id for s in specs], folder / "predictions" / day.isoformat(), ext, d)
    con.close()
    write_config(p, specs, folder, ext)
    manifest = {"format": FORMAT_VERSION, "params": asdict(p), "first": str(p.dates[0]), "last": str(p.dates[-1]),
                "drifted": [s.id for s in specs if s.drifted],
                "models": [asdict(s) for s in specs],
                "lines": p.models * p.rows * p.days,
                "log_bytes": sum(f.stat().st_size for f in (folder / "predictions").rglob("*") if f.is_file()),
                "generate_seconds": round(time.perf_counter() - started, 2)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _open(path: Path, mode: str):
    import gzip

    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def relayout(p: Params, ids: list[str], day_dir: Path, ext: str, d: int) -> None:
    """Turn one day's per-model files (<model><ext>) into the layout's: `unnamed` renames them part-NNNN in a
    seeded order; `mixed` interleaves the lines of about models / 10 models into each of at most 10 files."""
    import numpy as np

    if p.layout == "named":
        return
    rng = np.random.default_rng([p.seed, 5, d])
    order = rng.permutation(len(ids))
    if p.layout == "unnamed":
        for k, i in enumerate(order):
            (day_dir / f"{ids[i]}{ext}").rename(day_dir / f"part-{k:04d}{ext}")
        return
    n_files = max(1, min(MIXED_FILES, len(ids) // 2))  # at least two models a file
    for k in range(n_files):
        members = [ids[i] for i in order[k::n_files]]
        lines: list[bytes] = []
        for mid in members:
            with _open(day_dir / f"{mid}{ext}", "rb") as f:
                lines += f.readlines()
            (day_dir / f"{mid}{ext}").unlink()
        with _open(day_dir / f"part-{k:04d}{ext}", "wb") as f:
            f.writelines(lines[i] for i in rng.permutation(len(lines)))
        del lines


def write_config(p: Params, specs: list[ModelSpec], folder: Path, ext: str) -> Path:
    import yaml

    config = {
        "partitions": {"start_date": p.dates[0].isoformat(), "end_date": p.dates[-1].isoformat()},
        "label_delay_days": 0,  # every label arrives the day of its prediction
        "sources": {
            "predictions": {"path": f"predictions/{{date}}/{'{model}' if p.layout == 'named' else '*'}{ext}",
                            "fields": {k: k for k in ("prediction_id", "timestamp", "model_id", "model_version",
                                                      "latency_ms", "status", "score")},
                            "ok_status": ["ok"]},
            "labels": {"path": "labels/{date}.csv"},
        },
        "thresholds": {"drift_share": DRIFT_SHARE},
        "drift": {"dataset_drift_share": DRIFT_SHARE},
        "fairness": {"min_group_size": 100},
        "models": [{"id": s.id, "task": "binary_classification", "version": f"1.0.{i}",
                    "reference": f"reference/{s.id}.parquet",
                    "features": {n: "numeric" for n in s.numeric} | {n: "categorical" for n in s.categorical},
                    "sensitive_attributes": ["region"]}
                   for i, s in enumerate(specs)],
    }
    path = folder / "monitor.yaml"
    path.write_text("# Generated by benchmarks/scale_bench.py; paths are relative to this file.\n"
                    + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110))
    return path


# --- ranking mode: rankers' lists and interactions ------------------------------------------------

def ranker_ids(p: Params) -> tuple[list[str], list[str]]:
    """Every ranker's id and, seeded, the ones that collapse on the last day (at least one when the share is
    above 0)."""
    import numpy as np

    width = max(3, len(str(p.models - 1)))
    ids = [f"r{i:0{width}d}" for i in range(p.models)]
    n = 0 if p.drifted_share <= 0 else max(1, round(p.drifted_share * p.models))
    chosen = np.random.default_rng([p.seed, 11]).choice(p.models, min(n, p.models), replace=False)
    return ids, sorted(ids[i] for i in chosen)


def ranked_lists(rng: np.random.Generator, n: int, items: int, collapsed: bool) -> dict:
    """n requests' lists: item codes (n x items, distinct within a list), scores falling with the rank, and each
    shown item's grade (0 none, 1 click, 3 purchase). A healthy ranker's lists start from a Zipf-popular item and
    step through the catalogue; its interactions fall off with the rank. A collapsed one shows items of the same
    COLLAPSED_ITEMS and is clicked regardless of the rank, less often."""
    import numpy as np

    pos = np.arange(items)
    if collapsed:
        start = rng.integers(0, COLLAPSED_ITEMS, n)
        codes = (start[:, None] + pos[None, :]) % COLLAPSED_ITEMS
        p_act = np.full(items, 0.04)
    else:
        start = np.minimum(rng.zipf(1.3, n) - 1, CATALOGUE - 1)
        codes = (start[:, None] + pos[None, :] * 997) % CATALOGUE  # 997 is prime to CATALOGUE: no repeats
        p_act = 0.25 / (1 + pos)
    acted = rng.random((n, items)) < p_act[None, :]
    grades = np.where(acted, np.where(rng.random((n, items)) < 0.2, 3, 1), 0).astype(np.int8)
    scores = np.round(np.sort(rng.random((n, items)), axis=1)[:, ::-1], 4)
    return {"codes": codes, "scores": scores, "grades": grades}


def generate_ranking(p: Params, folder: Path) -> dict:
    """Rankers' logs (one JSON line per request with its list), interactions, references and monitor.yaml;
    manifest.json last. Lines are written by DuckDB's JSON writer from Arrow lists, not a Python loop."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    started = time.perf_counter()
    # One small classifier beside the rankers (CLASSIFIER_ROWS a day, no drift): the classifier stages run as in
    # any deployment, and a config with rankers alone is not run through yet (see write_ranking_config).
    generate(replace(p, models=1, rows=CLASSIFIER_ROWS, ranking=False, drifted_share=0.0, gzip=False), folder)
    ids, collapsed = ranker_ids(p)
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    ext = ".jsonl.gz" if p.gzip else ".jsonl"
    options = "FORMAT JSON, COMPRESSION gzip" if p.gzip else "FORMAT JSON"
    item_names = pa.array([f"i{k:05d}" for k in range(CATALOGUE)])

    def names(codes: np.ndarray) -> pa.Array:
        return item_names.take(pa.array(codes.ravel()))

    for i, rid in enumerate(ids):
        lists = ranked_lists(np.random.default_rng([p.seed, 12, i]), REFERENCE_REQUESTS, p.items, False)
        n = REFERENCE_REQUESTS
        grades = lists["grades"].ravel()
        ref = pa.table({"request_id": pa.array([f"ref-{k}" for k in range(n) for _ in range(p.items)]),
                        "item_id": names(lists["codes"]), "rank": np.tile(np.arange(1, p.items + 1), n),
                        "score": lists["scores"].ravel(),
                        "event": pa.array(np.where(grades == 3, "purchase", np.where(grades == 1, "click", None)))})
        con.register("ref", ref)
        con.execute(f"COPY ref TO '{folder / 'reference' / f'{rid}.parquet'}' (FORMAT PARQUET)")
        con.unregister("ref")
    for d, day in enumerate(p.dates):
        for sub in ("rankings", "interactions"):
            (folder / sub / day.isoformat()).mkdir(parents=True)
        last = d == p.days - 1
        for i, rid in enumerate(ids):
            lists = ranked_lists(np.random.default_rng([p.seed, 13, i, d]), p.rows, p.items, last and rid in collapsed)
            n = p.rows
            offsets = pa.array(np.arange(0, n * p.items + 1, p.items, dtype=np.int32))
            requests = pa.array([f"{rid}-{day:%Y%m%d}-{k:07d}" for k in range(n)])
            log = pa.table({"request_id": requests, "model_version": pa.array(["v1"] * n),
                            "items": pa.ListArray.from_arrays(offsets, names(lists["codes"])),
                            "scores": pa.ListArray.from_arrays(offsets, pa.array(lists["scores"].ravel()))})
            con.register("log", log)
            con.execute(f"COPY log TO '{folder / 'rankings' / day.isoformat() / f'{rid}{ext}'}' ({options})")
            con.unregister("log")
            hit = np.flatnonzero(lists["grades"].ravel())
            acts = pa.table({"request_id": requests.take(pa.array(hit // p.items)),
                             "item_id": names(lists["codes"].ravel()[hit]),
                             "event": pa.array(np.where(lists["grades"].ravel()[hit] == 3, "purchase", "click"))})
            con.register("acts", acts)
            con.execute(f"COPY acts TO '{folder / 'interactions' / day.isoformat() / f'{rid}.csv'}' (FORMAT CSV, HEADER)")
            con.unregister("acts")
    con.close()
    write_ranking_config(p, ids, folder, ext)
    manifest = {"format": FORMAT_VERSION, "mode": "ranking", "params": asdict(p), "first": str(p.dates[0]),
                "last": str(p.dates[-1]), "drifted": collapsed, "models": [{"id": r} for r in ids],
                "lines": p.models * p.rows * p.days, "impressions": p.models * p.rows * p.items * p.days,
                "log_bytes": sum(f.stat().st_size for f in (folder / "rankings").rglob("*") if f.is_file()),
                "generate_seconds": round(time.perf_counter() - started, 2)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def write_ranking_config(p: Params, ids: list[str], folder: Path, ext: str) -> Path:
    """The rankers added to the small classifier's monitor.yaml. (With rankers alone, preflight wants the shared
    `sources:` to match files, and retraining_trigger and alerts fail on an empty model list: checked 2026-12-06.)"""
    import yaml

    path = folder / "monitor.yaml"
    config = yaml.safe_load(path.read_text())
    config["models"] += [{"id": rid, "task": "ranking", "version": "v1", "source": f"rankings/{{date}}/{rid}{ext}",
                          "labels": f"interactions/{{date}}/{rid}.csv", "reference": f"reference/{rid}.parquet",
                          "ranking": {"k": [5, 10]}, "thresholds": {"min_metric_ratio": 0.9}}
                         for rid in ids]
    path.write_text("# Generated by benchmarks/scale_bench.py --ranking; paths are relative to this file.\n"
                    + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110))
    return path


def existing_data(p: Params, folder: Path) -> dict | None:
    """The manifest of a complete data set made from the same parameters and seed, if `folder` has one."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    # Folders made before the ranking mode and the layouts.
    params = {"ranking": False, "items": 10, "layout": "named", **manifest.get("params", {})}
    return manifest if manifest.get("format") == FORMAT_VERSION and params == asdict(p) else None


def ensure_data(p: Params, folder: Path) -> dict:
    """The manifest of the data in `folder`, generated unless an identical set is there."""
    return existing_data(p, folder) or (generate_ranking if p.ranking else generate)(p, folder)


# --- running and measuring -----------------------------------------------------------------------

def tree_pids(root: int) -> list[int]:
    """`root` and its descendants, from /proc/<pid>/stat (this kernel has no /proc/<pid>/task/*/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def tree_memory(root: int) -> int:
    """Resident bytes of the process tree under `root`: each process's proportional set size (Pss: a page shared
    by k processes counts 1/k in each, so worker processes forked from one server are not counted k times over),
    its VmRSS where the kernel gives no Pss. For a single process the two differ by its share of shared
    libraries (tens of MB)."""
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
            else:
                raise OSError("no Pss")
        except OSError:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            except OSError:
                pass
    return total


@dataclass
class Watched:
    """What one watched child did: exit, time, memory and the RSS samples (epoch seconds, bytes)."""

    returncode: int
    started: float  # epoch seconds at launch
    wall: float
    peak_rss: int
    ru_maxrss: int
    killed: str | None
    samples: list[tuple[float, int]]


def run_watched(cmd: list[str], env: dict[str, str], log: Path, max_gb: float, timeout: float,
                interval: float = 0.2) -> Watched:
    """Run `cmd` in its own session, polling its tree's RSS; kill the whole group above the cap or
    after the timeout, so a blow-up cannot take the shared machine down."""
    with open(log, "wb") as out:
        began, started = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        peak, killed, samples = 0, None, []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = tree_memory(proc.pid)
            samples.append((time.time(), rss))
            peak = max(peak, rss)
            if killed is None and rss > max_gb * GB:
                killed = f"killed above {max_gb:g} GB"
            elif killed is None and time.perf_counter() - began > timeout:
                killed = f"killed after {timeout:g} s"
            if killed:
                _kill_group(proc.pid)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(interval)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        _kill_group(proc.pid)  # anything the run left behind in its session
    return Watched(proc.returncode, started, wall, peak, usage.ru_maxrss * 1024, killed, samples)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


INSPECT = r"""
import json, os, sys
from pathlib import Path
import dagster as dg, duckdb
home, warehouse = sys.argv[1], sys.argv[2]
out = {"run": None, "steps": [], "drift": [], "drift_alerts": [], "alerts": {}, "rows": {}}
with dg.DagsterInstance.from_config(home) as instance:
    runs = instance.get_runs(limit=100)  # a fresh home: this pipeline's runs (one, or each shard's and the fleet's)
    if runs:
        run = runs[0]
        stats = instance.get_run_stats(run.run_id)
        failed = [r for r in runs if r.status.value != "SUCCESS"]
        out["run"] = {"id": run.run_id, "status": failed[0].status.value if failed else run.status.value,
                      "start": stats.start_time, "end": stats.end_time, "runs": len(runs)}
        for r in runs:
            shard = r.tags.get("monitor_assets/shard")
            out["steps"] += [{"key": s.step_key + (f" [{shard}]" if shard else ""),
                              "status": s.status.value if s.status else None, "start": s.start_time, "end": s.end_time}
                             for s in instance.get_run_step_stats(r.run_id)]
    if runs:  # ranking mode: the ranking check's failed evaluations, per partition
        key = dg.AssetCheckKey(dg.AssetKey(["monitoring", "ranking_performance"]), "ranking_performance_within_baseline")
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=100000)
        for r in records:
            e = r.event.dagster_event.event_specific_data if r.event and r.event.dagster_event else None
            if e is not None and getattr(e, "passed", True) is False:
                out.setdefault("ranking_check_failed", []).append(r.partition)
from monitor_assets.config import lake_beside
lake = lake_beside(warehouse)  # every table is in the lake; the DuckDB file is only a legacy one
if os.path.exists(lake) or os.path.exists(warehouse):
    from monitor_assets.storage.warehouse import open_warehouse
    con = open_warehouse(warehouse, read_only=True)  # the lake beside it, under the documented names
    q = lambda sql: con.execute(sql).fetchall()
    try:  # ranking mode
        out["ranking"] = q("SELECT partition_date::VARCHAR, model_id, below_baseline FROM monitoring.ranking_performance "
                           "WHERE model_version = '*' AND metric = 'ndcg_at_10'")
        out["rows"]["raw.ranking_impressions"] = q("SELECT count(*) FROM raw.ranking_impressions")[0][0]
        out["rows"]["monitoring.ranking_performance"] = q("SELECT count(*) FROM monitoring.ranking_performance")[0][0]
        out["rows"]["raw.quarantine"] = q("SELECT count(*) FROM raw.quarantine")[0][0]
    except duckdb.Error:
        pass
    try:
        out["drift"] = q("SELECT partition_date::VARCHAR, model_id, n_drifted, drift_share, dataset_drift "
                         "FROM monitoring.drift_summary")
        out["drift_alerts"] = q("SELECT partition_date::VARCHAR, model_id FROM monitoring.alerts "
                                "WHERE check_name = 'drift_share_below_threshold'")
        out["alerts"] = dict(q("SELECT check_name, count(*) FROM monitoring.alerts GROUP BY 1"))
        for t in ("raw.predictions", "raw.labels", "raw.quarantine"):
            out["rows"][t] = q(f"SELECT count(*) FROM {t}")[0][0]
        # The widest table: one model's (the union and the facts are narrower).
        out["rows"]["raw.predictions columns"] = max(
            (len(con.execute(f'SELECT * FROM raw."{v}" LIMIT 0').description) for (v,) in q(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = 'raw' AND view_name LIKE 'predictions%'")),
            default=0)
    except duckdb.Error as exc:  # a run killed before it made the tables
        out["error"] = str(exc).splitlines()[0]
    out["warehouse_bytes"] = sum(os.path.getsize(p) for p in [warehouse, warehouse + ".wal"] if os.path.exists(p)) + sum(
        f.stat().st_size for f in Path(lake).rglob("*") if f.is_file())
print(json.dumps(out))
"""


@dataclass
class RunResult:
    wall: float
    peak_gb: float
    ru_maxrss_gb: float
    returncode: int
    killed: str | None
    run_status: str | None
    startup: float  # process start to the first step: imports, definitions, instance
    steps: dict[str, float]  # step -> seconds, in execution order
    step_peak_gb: dict[str, float | None]  # step -> highest tree RSS sampled while it ran
    found: list[str]  # dataset_drift on the last day
    features_flagged: dict[str, int]  # model -> drifted features on the last day, where any
    alerted: list[str]  # drift alert on the last day
    false_other_days: list[str]  # "<day> <model>" flagged on a stable day
    alerts: dict[str, int]
    rows: dict[str, int]
    warehouse_mb: float
    log: str


def run_once(folder: Path, manifest: dict, name: str, max_gb: float, timeout: float, keep: bool,
             shards: int = 1, workers: int | None = None) -> RunResult:
    """One headless pipeline run over every day, with a fresh warehouse and Dagster home, then read back.
    With shards > 1: the runner's --shards/--workers (a process per shard, then the fleet run)."""
    run_dir = folder / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    home = run_dir / "dagster_home"
    home.mkdir(parents=True)
    template = REPO / "deploy" / "local" / "dagster.yaml"
    shutil.copy(template if template.exists() else REPO / "dagster.yaml", home / "dagster.yaml")
    warehouse = run_dir / "monitor.duckdb"
    env = {**os.environ, "MONITOR_CONFIG": str(folder / "monitor.yaml"), "MONITOR_WAREHOUSE": str(warehouse),
           "MONITOR_REPORTS_DIR": str(run_dir / "reports"), "DAGSTER_HOME": str(home), "TQDM_DISABLE": "1"}
    log = folder / "runs" / f"{name}.log"  # kept beside the run folder, which --keep alone keeps
    cmd = [sys.executable, "-m", "monitor_assets.run_pipeline", "--start", manifest["first"], "--end", manifest["last"]]
    if shards > 1:
        cmd += ["--shards", str(shards), "--workers", str(workers or shards)]
    watched = run_watched(cmd, env, log, max_gb, timeout)
    # Read back in a child: dagster and duckdb in this process would raise the next run's ru_maxrss,
    # which Linux carries over from the parent at fork.
    read = subprocess.run([sys.executable, "-c", INSPECT, str(home), str(warehouse)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    if read.returncode != 0:
        raise RuntimeError(f"reading back the run failed:\n{read.stderr[-2000:]}")
    info = json.loads(read.stdout.strip().splitlines()[-1])
    if not keep:
        shutil.rmtree(run_dir)
    steps = sorted((s for s in info["steps"] if s["start"]), key=lambda s: s["start"])
    durations = {_stage(s["key"]): (s["end"] or s["start"]) - s["start"] for s in steps}
    # A step shorter than the polling interval may have no sample: None, not 0.
    step_peak = {_stage(s["key"]): max((rss / GB for t, rss in watched.samples if s["start"] <= t <= (s["end"] or t)),
                                       default=None) for s in steps}
    startup = steps[0]["start"] - watched.started if steps else watched.wall  # no step: it all was start-up
    last = manifest["last"]
    if manifest.get("mode") == "ranking":  # rankers judged below their floor; the check failed on the day
        found = sorted(m for d, m, below in info.get("ranking", []) if d == last and below)
        flagged_features = {}
        alerted = found if last in info.get("ranking_check_failed", []) else []
        other = sorted(f"{d} {m}" for d, m, below in info.get("ranking", []) if d != last and below)
    else:
        found = sorted(m for d, m, _, _, flagged in info["drift"] if d == last and flagged)
        flagged_features = {m: n for d, m, n, _, _ in sorted(info["drift"]) if d == last and n}
        alerted = sorted(m for d, m in info["drift_alerts"] if d == last)
        other = sorted(f"{d} {m}" for d, m, _, _, flagged in info["drift"] if d != last and flagged)
    return RunResult(
        wall=watched.wall, peak_gb=watched.peak_rss / GB, ru_maxrss_gb=watched.ru_maxrss / GB,
        returncode=watched.returncode, killed=watched.killed,
        run_status=info["run"]["status"] if info["run"] else None, startup=max(startup, 0.0),
        steps=durations, step_peak_gb=step_peak, found=found, features_flagged=flagged_features, alerted=alerted, false_other_days=other,
        alerts=info["alerts"], rows=info["rows"], warehouse_mb=info.get("warehouse_bytes", 0) / 1e6, log=str(log))


INGEST_ONLY = r"""
import datetime as dt, json, sys, time
from monitor_assets.config import load_config
from monitor_assets.ingestion.readers import ingest_days
from monitor_assets.storage.warehouse import connect
config = load_config(sys.argv[1])
days = [dt.date.fromisoformat(sys.argv[3]) + dt.timedelta(days=i) for i in range(int(sys.argv[4]))]
t = time.perf_counter()
with connect(sys.argv[2]) as con:
    results = [r for _, r in ingest_days(con, config, "predictions", days)]
    rows = con.execute("SELECT count(*) FROM raw.predictions").fetchall()[0][0]
print(json.dumps({"seconds": time.perf_counter() - t, "read": sum(r.read for r in results),
                  "loaded": sum(r.loaded for r in results), "quarantined": sum(r.quarantined for r in results),
                  "rows": rows}))
"""


@dataclass
class IngestResult:
    wall: float  # the child's process, imports included
    seconds: float  # ingest_days alone
    peak_gb: float
    returncode: int
    killed: str | None
    counts: dict[str, int]
    log: str


def ingest_once(folder: Path, manifest: dict, name: str, max_gb: float, timeout: float, keep: bool) -> IngestResult:
    """The ingestion of predictions alone over every day (what the `raw/predictions` step runs), in a fresh
    process on a fresh warehouse, its tree's RSS polled as in `run_once`."""
    run_dir = folder / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log = folder / "runs" / f"{name}.log"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", INGEST_ONLY, str(folder / "monitor.yaml"), str(run_dir / "monitor.duckdb"),
           manifest["first"], str(manifest["params"]["days"])]
    watched = run_watched(cmd, env, log, max_gb, timeout)
    out = Path(log).read_text(errors="replace").strip().splitlines()
    info = json.loads(out[-1]) if watched.returncode == 0 and out else {}
    if not keep:
        shutil.rmtree(run_dir)
    return IngestResult(watched.wall, info.pop("seconds", float("nan")), watched.peak_rss / GB, watched.returncode,
                        watched.killed, info, str(log))


def report_ingest(p: Params, manifest: dict, runs: list[IngestResult]) -> dict:
    """Medians of the ingest-only runs, printed, and the summary (the last line's JSON)."""
    med = statistics.median
    ok = all(r.returncode == 0 and r.killed is None for r in runs)
    print(f"{p.models} models x {p.rows:,} rows x {p.days} day(s), layout {p.layout}: {manifest['lines']:,} log lines, "
          f"{manifest['log_bytes'] / 1e6:,.1f} MB; ingestion of predictions only")
    for i, r in enumerate(runs, 1):
        outcome = r.killed or f"exit {r.returncode}"
        print(f"run {i}: ingest {r.seconds:.1f} s (process {r.wall:.1f} s), peak RSS {r.peak_gb:.2f} GB, {outcome}, "
              f"{r.counts}")
        if r.returncode != 0 or r.killed:
            print("  " + (tail(r.log) or "(no output)").replace("\n", "\n  "))
    s = {"mode": "ingest-only", "layout": p.layout, "models": p.models, "rows": p.rows, "days": p.days,
         "lines": manifest["lines"], "runs": len(runs), "ok": ok,
         "ingest_seconds": round(med(r.seconds for r in runs), 2), "process_seconds": round(med(r.wall for r in runs), 2),
         "peak_rss_gb": round(med(r.peak_gb for r in runs), 3), "counts": runs[-1].counts,
         "load": os.getloadavg()[0]}
    print(f"median of {len(runs)}: ingest {s['ingest_seconds']:.1f} s, process {s['process_seconds']:.1f} s, "
          f"peak RSS {s['peak_rss_gb']:.2f} GB (load {s['load']:.2f})")
    return s


def _stage(step_key: str) -> str:
    return step_key.replace("__", "/")


def tail(path: str, lines: int = 15) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


# --- reporting -----------------------------------------------------------------------------------

def summarize(p: Params, manifest: dict, runs: list[RunResult]) -> dict:
    """Medians over the runs, detection (exact only if every run found exactly the drifted models),
    and the floor for this size."""
    drifted = sorted(manifest["drifted"])
    med = statistics.median
    stages = list(dict.fromkeys(k for r in runs for k in r.steps))
    wall, peak = med(r.wall for r in runs), med(r.peak_gb for r in runs)
    ok = all(r.returncode == 0 and r.killed is None for r in runs)
    exact = all(r.found == drifted and r.alerted == drifted and not r.false_other_days for r in runs)
    floor = (RANKING_FLOORS if p.ranking else FLOORS).get((p.models, p.rows, p.days))
    return {
        "mode": "ranking" if p.ranking else "classifiers", "items": p.items if p.ranking else None, "layout": p.layout,
        "models": p.models, "rows": p.rows, "days": p.days, "shared": p.shared, "gzip": p.gzip, "seed": p.seed,
        "lines": manifest["lines"], "log_mb": round(manifest["log_bytes"] / 1e6, 1), "runs": len(runs),
        "ok": ok, "killed": next((r.killed for r in runs if r.killed), None),
        "wall_seconds": round(wall, 2), "lines_per_second": round(manifest["lines"] / wall) if wall else None,
        "peak_rss_gb": round(peak, 3), "ru_maxrss_gb": round(med(r.ru_maxrss_gb for r in runs), 3),
        "startup_seconds": round(med(r.startup for r in runs), 2),
        "other_seconds": round(med(r.wall - r.startup - sum(r.steps.values()) for r in runs), 2),
        "stage_seconds": {k: round(med(r.steps.get(k, 0.0) for r in runs), 2) for k in stages},
        "stage_peak_gb": {k: _max_or_none(r.step_peak_gb.get(k) for r in runs) for k in stages},
        "drifted": drifted, "found": runs[-1].found, "alerted": runs[-1].alerted,
        "features_flagged_last_day": runs[-1].features_flagged,
        "missed": sorted(set(drifted) - set(runs[-1].found)),
        "false_positives": sorted(set(runs[-1].found) - set(drifted)) + runs[-1].false_other_days,
        "exact": exact, "alerts": runs[-1].alerts, "warehouse_rows": runs[-1].rows,
        "warehouse_mb": round(runs[-1].warehouse_mb, 1),
        "floor": {"seconds": floor[0], "gb": floor[1]} if floor else None,
        "floor_pass": (ok and (floor[0] is None or wall <= floor[0]) and peak <= floor[1]) if floor else None,
    }


def _max_or_none(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known), 3) if known else None


def report(p: Params, manifest: dict, reused: bool, runs: list[RunResult], s: dict) -> None:
    schema = "one shared schema" if p.shared else "distinct features per model"
    made = "reused" if reused else f"generated in {manifest['generate_seconds']:.1f} s"
    if p.ranking:
        print(f"{p.models} rankers x {p.rows:,} requests x {p.items} items x {p.days} day(s): {s['lines']:,} log "
              f"lines, {manifest['impressions']:,} impressions, {s['log_mb']:,.1f} MB ({made})")
    else:
        print(f"{p.models} models x {p.rows:,} rows x {p.days} day(s), {schema}, layout {p.layout}: {s['lines']:,} log lines, "
              f"{s['log_mb']:,.1f} MB ({made})")
    if s.get("shards", 1) > 1:
        print(f"{s['shards']} shards, {s['workers']} at once: step times are per shard and overlap, so the "
              "'between steps' line is not meaningful")
    for i, r in enumerate(runs, 1):
        outcome = r.killed or f"exit {r.returncode} {r.run_status or 'no run recorded'}"
        print(f"run {i}: {r.wall:.1f} s, peak RSS {r.peak_gb:.2f} GB (tree), ru_maxrss {r.ru_maxrss_gb:.2f} GB, "
              f"{outcome}")
        if r.returncode != 0 or r.killed:
            print("  " + (tail(r.log) or "(no output)").replace("\n", "\n  "))
    label = f"median of {len(runs)}" if len(runs) > 1 else "seconds"
    print(f"\n  {'stage':<44} {label:>12} {'peak GB':>8}")
    print(f"  {'(start-up: imports, definitions, instance)':<44} {s['startup_seconds']:>12.2f}")
    for k, sec in s["stage_seconds"].items():
        peak = s["stage_peak_gb"][k]
        print(f"  {k:<44} {sec:>12.2f} {'-' if peak is None else f'{peak:.2f}':>8}")
    print(f"  {'(between steps, shutdown)':<44} {s['other_seconds']:>12.2f}")
    print(f"  {'whole run (wall)':<44} {s['wall_seconds']:>12.2f} {s['peak_rss_gb']:>8.2f}")
    rows = s["warehouse_rows"]
    if p.ranking:
        report_ranking(p, s)
        return
    if rows:
        print(f"\nwarehouse {s['warehouse_mb']:,.1f} MB: raw.predictions {rows.get('raw.predictions', 0):,} rows x "
              f"{rows.get('raw.predictions columns', 0):,} columns, raw.labels {rows.get('raw.labels', 0):,}, "
              f"quarantined {rows.get('raw.quarantine', 0):,}; {s['lines_per_second']:,} lines/s end to end")
    print(f"drift on the last day: {len(s['found'])} flagged, {len(s['drifted'])} drifted "
          f"({', '.join(s['drifted']) or 'none'}); missed {s['missed'] or 'none'}, "
          f"false {s['false_positives'] or 'none'}; drift alerts {len(s['alerted'])} -> "
          f"{'EXACT' if s['exact'] else 'NOT EXACT'}")
    noise = {m: n for m, n in s["features_flagged_last_day"].items() if m not in s["drifted"]}
    print("drifted features on the last day: " + ", ".join(
        f"{m} {s['features_flagged_last_day'].get(m, 0)}/{N_NUMERIC + N_CATEGORICAL}" for m in s["drifted"])
          + (f"; stable models with a flagged feature: {len(noise)} (max {max(noise.values())})" if noise else ""))
    if s["alerts"]:
        print("alerts by check: " + ", ".join(f"{k} {v}" for k, v in sorted(s["alerts"].items())))
    for (m, r, d), (sec, gb) in FLOORS.items():
        if (m, r, d) == (p.models, p.rows, p.days):
            verdict = "PASS" if s["floor_pass"] else "FAIL"
            print(f"floor {m} models x {r:,} rows x {d} day(s): <= {sec:g} s and <= {gb:g} GB: "
                  f"{s['wall_seconds']:.1f} s, {s['peak_rss_gb']:.2f} GB -> {verdict}")
        else:
            within = ("did not complete" if not s["ok"] else
                      "is within that budget" if s["wall_seconds"] <= sec and s["peak_rss_gb"] <= gb else
                      "is over that budget")
            print(f"floor {m} models x {r:,} rows x {d} day(s): <= {sec:g} s and <= {gb:g} GB: not this size "
                  f"(this size {within})")


def report_ranking(p: Params, s: dict) -> None:
    """The ranking mode's lines after the step table: rows, detection of the collapsed rankers, the floor."""
    rows = s["warehouse_rows"]
    print(f"\nwarehouse {s['warehouse_mb']:,.1f} MB: raw.ranking_impressions {rows.get('raw.ranking_impressions', 0):,} "
          f"rows, monitoring.ranking_performance {rows.get('monitoring.ranking_performance', 0):,}, quarantined "
          f"{rows.get('raw.quarantine', 0):,}; {s['lines_per_second']:,} requests/s end to end")
    print(f"collapse on the last day: {len(s['found'])} rankers below their floor, {len(s['drifted'])} collapsed "
          f"({', '.join(s['drifted']) or 'none'}); missed {s['missed'] or 'none'}, false {s['false_positives'] or 'none'}; "
          f"ranking check failed on the last day: {bool(s['alerted'])} -> {'EXACT' if s['exact'] else 'NOT EXACT'}")
    for (m, r, d), (sec, gb) in RANKING_FLOORS.items():
        bound = (f"<= {sec:g} s and " if sec is not None else "") + f"<= {gb:g} GB"
        if (m, r, d) == (p.models, p.rows, p.days):
            print(f"bound {m} rankers x {r:,} requests x {d} day(s): {bound}: {s['wall_seconds']:.1f} s, "
                  f"{s['peak_rss_gb']:.2f} GB -> {'PASS' if s['floor_pass'] else 'FAIL'}")
        else:
            print(f"bound {m} rankers x {r:,} requests x {d} day(s): {bound}: not this size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2_000, help="rows per model and day")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--shared", action="store_true", help="one feature schema for all models")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz logs")
    parser.add_argument("--ranking", action="store_true",
                        help="rankers instead of classifiers: --models rankers x --rows requests x --items items")
    parser.add_argument("--items", type=int, default=10, help="items per ranked list (--ranking)")
    parser.add_argument("--drifted-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-gb", type=float, default=8.0, help="kill the run's process tree above this RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill the run after this many seconds")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--shards", type=int, default=1, help="split the models into N shards (run_pipeline --shards)")
    parser.add_argument("--workers", type=int, default=None, help="shard processes at once (default: --shards)")
    parser.add_argument("--layout", choices=LAYOUTS, default="named",
                        help="named: a file per model named by it; unnamed: the same files, a glob without the model; "
                             "mixed: several models' records shuffled in each of at most 10 files per day")
    parser.add_argument("--ingest-only", action="store_true",
                        help="run only the ingestion of predictions (ingest_days), not the whole pipeline")
    parser.add_argument("--keep", action="store_true", help="keep each run's warehouse, Dagster home and reports")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="parent of the work folders")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if min(args.models, args.rows, args.days, args.runs) < 1:
        parser.error("--models, --rows, --days and --runs must be at least 1")
    if args.items < 1:
        parser.error("--items must be at least 1")
    if args.ranking and args.layout != "named":
        parser.error("--layout applies to classifiers' logs, not --ranking")
    p = Params(args.models, args.rows, args.days, args.shared, args.drifted_share, args.seed, args.gzip,
               args.ranking, args.items if args.ranking else 10, args.layout)
    folder = args.out / p.slug
    if args.generate_only:
        ensure_data(p, folder)
        return
    manifest = existing_data(p, folder)
    reused = manifest is not None
    if manifest is None:
        # Generated in a child: this process stays small, so the measured children's ru_maxrss (which
        # Linux carries over from the parent at fork) is their own.
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--generate-only"], check=True)
        manifest = ensure_data(p, folder)
    if args.shards < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--shards and --workers must be at least 1")
    if args.ingest_only:
        runs = [ingest_once(folder, manifest, f"ingest{k}", args.max_gb, args.timeout, args.keep)
                for k in range(1, args.runs + 1)]
        print(json.dumps(report_ingest(p, manifest, runs)))
        return
    runs = [run_once(folder, manifest, f"run{k}", args.max_gb, args.timeout, args.keep, args.shards, args.workers)
            for k in range(1, args.runs + 1)]
    s = summarize(p, manifest, runs)
    s["shards"], s["workers"] = args.shards, (min(args.workers or args.shards, args.shards) if args.shards > 1 else 1)
    report(p, manifest, reused, runs, s)
    print(json.dumps(s))


if __name__ == "__main__":
    main()
