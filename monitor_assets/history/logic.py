"""The history table's SQL: every figure in long format, one row per date x model x metric x segment."""

import datetime as dt

from monitor_assets.storage.warehouse import replace_partitions

BUSINESS_MODEL_ID = "_business"

# Each part yields (partition_date, model_id, metric, segment, value) for the dates in temp table _days.
HISTORY_PARTS = {
    "performance_daily": """
        SELECT partition_date, model_id, metric, '' AS segment, value FROM (
            UNPIVOT (SELECT partition_date, model_id, COLUMNS(* EXCLUDE (partition_date, model_id, task,
                            model_versions, computed_at))::DOUBLE
                     FROM monitoring.performance_daily WHERE partition_date IN (SELECT d FROM _days))
            ON COLUMNS(* EXCLUDE (partition_date, model_id)) INTO NAME metric VALUE value)""",
    "business_kpis_daily": f"""
        SELECT partition_date, '{BUSINESS_MODEL_ID}', metric, '', value FROM (
            UNPIVOT (SELECT partition_date, COLUMNS(* EXCLUDE (partition_date, computed_at))::DOUBLE
                     FROM monitoring.business_kpis_daily WHERE partition_date IN (SELECT d FROM _days))
            ON COLUMNS(* EXCLUDE (partition_date)) INTO NAME metric VALUE value)""",
    "feature_drift": """
        SELECT partition_date, model_id, 'drift.' || method, role || ':' || feature, statistic
        FROM monitoring.feature_drift WHERE partition_date IN (SELECT d FROM _days) AND statistic IS NOT NULL
        UNION ALL
        SELECT partition_date, model_id, 'drift_share', '', drift_share
        FROM monitoring.drift_summary WHERE partition_date IN (SELECT d FROM _days)
        UNION ALL
        SELECT partition_date, model_id, 'drifted_features', '', n_drifted
        FROM monitoring.drift_summary WHERE partition_date IN (SELECT d FROM _days)""",
    "fairness": """
        SELECT partition_date, model_id, metric, attribute || '=' || grp, value FROM (
            UNPIVOT (SELECT partition_date, model_id, attribute, grp, selection_rate, true_positive_rate,
                            false_positive_rate, accuracy, mae, n::DOUBLE AS n
                     FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days))
            ON selection_rate, true_positive_rate, false_positive_rate, accuracy, mae, n
            INTO NAME metric VALUE value)
        UNION ALL
        SELECT DISTINCT partition_date, model_id, 'demographic_parity_ratio', attribute, demographic_parity_ratio
        FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days)
              AND demographic_parity_ratio IS NOT NULL
        UNION ALL
        SELECT DISTINCT partition_date, model_id, 'equalized_odds_difference', attribute, equalized_odds_difference
        FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days)
              AND equalized_odds_difference IS NOT NULL""",
    # The estimate before labels and its band: `estimated.<metric>`, with `lower` / `upper` as the segment.
    "estimated_performance": """
        SELECT partition_date, model_id, 'estimated.' || metric, CASE bound WHEN 'estimate' THEN '' ELSE bound END,
               value FROM (
            UNPIVOT (SELECT partition_date, model_id, metric, estimate, lower, upper
                     FROM monitoring.estimated_performance WHERE partition_date IN (SELECT d FROM _days))
            ON estimate, lower, upper INTO NAME bound VALUE value)""",
    # Each segment's estimate and its band: `segment_estimated.<metric>` (`.lower`, `.upper`), segment `market=DE`.
    "segment_estimated_performance": """
        SELECT partition_date, model_id,
               'segment_estimated.' || metric || CASE bound WHEN 'estimate' THEN '' ELSE '.' || bound END,
               segment, value FROM (
            UNPIVOT (SELECT partition_date, model_id, segment, metric, estimate, lower, upper
                     FROM monitoring.segment_estimated_performance WHERE partition_date IN (SELECT d FROM _days))
            ON estimate, lower, upper INTO NAME bound VALUE value)
        WHERE isfinite(value)""",
    # Each segment's figures: `segment.<metric>` (the main metric, labelled rows, volume), segment `market=DE`.
    "segment_performance": """
        SELECT partition_date, model_id, 'segment.' || metric, segment, value
        FROM monitoring.segment_performance WHERE partition_date IN (SELECT d FROM _days) AND value IS NOT NULL
        UNION ALL
        SELECT partition_date, model_id, 'segment.n_labelled', segment, n_labelled
        FROM monitoring.segment_performance WHERE partition_date IN (SELECT d FROM _days)
        UNION ALL
        SELECT partition_date, model_id, 'segment.volume', segment, volume
        FROM monitoring.segment_performance WHERE partition_date IN (SELECT d FROM _days)""",
    # Each judged segment's drift: `segment_drift.<feature>` (its evidence: statistic over threshold, 1 = at the
    # threshold; log p / log level for a test) and `segment_drift.drifted_features` (a count), segment `market=DE`.
    "segment_drift": """
        SELECT partition_date, model_id, 'segment_drift.' || feature, segment, evidence
        FROM monitoring.segment_drift
        WHERE partition_date IN (SELECT d FROM _days) AND judged AND isfinite(evidence)
        UNION ALL
        SELECT partition_date, model_id, 'segment_drift.drifted_features', segment, count(*) FILTER (WHERE drifted)
        FROM monitoring.segment_drift WHERE partition_date IN (SELECT d FROM _days) AND judged GROUP BY ALL""",
    # Each ranker's whole-day figures (version `*`): `ranking.<metric>` (ndcg_at_10, popularity_concentration, ...)
    # and its volume and labels (`ranking.n_requests`, `ranking.n_labelled_requests`, `ranking.label_coverage`),
    # every row of a ranker-day carrying the same counts. Versions' rows stay in the ranking table.
    "ranking_performance": """
        SELECT partition_date, model_id, 'ranking.' || metric, '', value
        FROM monitoring.ranking_performance
        WHERE partition_date IN (SELECT d FROM _days) AND model_version = '*' AND isfinite(value)
        UNION ALL
        SELECT partition_date, model_id, 'ranking.' || name, '', value FROM (
            UNPIVOT (SELECT partition_date, model_id, any_value(n_requests)::DOUBLE AS n_requests,
                            any_value(n_labelled_requests)::DOUBLE AS n_labelled_requests,
                            any_value(label_coverage) AS label_coverage
                     FROM monitoring.ranking_performance
                     WHERE partition_date IN (SELECT d FROM _days) AND model_version = '*' GROUP BY ALL)
            ON n_requests, n_labelled_requests, label_coverage INTO NAME name VALUE value)
        WHERE isfinite(value)""",
    # Each segmented ranker's segment figures (whole day): `ranking.<metric>` and `ranking.n_requests`,
    # `ranking.n_labelled_requests`, as the ranker's own rows are named, with the segment's name in `segment`.
    "ranking_segment_performance": """
        SELECT partition_date, model_id, 'ranking.' || metric, segment, value
        FROM monitoring.ranking_segment_performance
        WHERE partition_date IN (SELECT d FROM _days) AND isfinite(value)
        UNION ALL
        SELECT partition_date, model_id, 'ranking.' || name, segment, value FROM (
            UNPIVOT (SELECT partition_date, model_id, segment, any_value(n_requests)::DOUBLE AS n_requests,
                            any_value(n_labelled_requests)::DOUBLE AS n_labelled_requests
                     FROM monitoring.ranking_segment_performance
                     WHERE partition_date IN (SELECT d FROM _days) GROUP BY ALL)
            ON n_requests, n_labelled_requests INTO NAME name VALUE value)""",
    # Each multivariate statistic: `multivariate.<method>`, the whole model (segment '').
    "multivariate_drift": """
        SELECT partition_date, model_id, 'multivariate.' || method, '', statistic
        FROM monitoring.multivariate_drift WHERE partition_date IN (SELECT d FROM _days) AND statistic IS NOT NULL""",
}


def history_select_sql(parts: list[str]) -> str:
    union = "\nUNION ALL\n".join(HISTORY_PARTS[p] for p in parts)
    return f"""SELECT *, now() FROM ({union}) AS h(partition_date, model_id, metric, segment, value)"""


def write_history(con, days: list[dt.date], parts: list[str]) -> dict:
    """Rewrite the days' history rows from the given parts; the counts a run reports."""
    con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::DATE[]) AS d", [days])
    inserted = replace_partitions(con, "monitoring.history", days, history_select_sql(parts))
    per_day = dict(con.execute("""SELECT partition_date, count(*) FROM monitoring.history
                                  WHERE partition_date IN (SELECT d FROM _days) GROUP BY 1""").fetchall())
    total = con.execute("SELECT count(*) FROM monitoring.history").fetchall()[0][0]
    metrics = con.execute("SELECT count(DISTINCT metric) FROM monitoring.history").fetchall()[0][0]
    return {"inserted": inserted, "per_day": per_day, "total": total, "metrics": metrics}
