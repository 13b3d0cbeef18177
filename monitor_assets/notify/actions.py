"""What an engineer decides about alerts, validated against the config and recorded with who, when and
why. The command line and the Dagster jobs (launched from the UI's Launchpad) both call these."""

from __future__ import annotations

import datetime as dt

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    EVALUATION_WINDOW_CHECK,
    QUALITY_CHECK,
    RANKING_DRIFT_CHECK,
    RANKING_PERFORMANCE_CHECK,
    RANKING_SEGMENT_CHECK,
    RETRAINING_CHECKS,
    THRESHOLD_CHECKS,
    VOLUME_RANGE_CHECK,
)
from monitor_assets.formatting import iso
from monitor_assets.storage.alert_state import AlertState

CHECK_NAMES = (*THRESHOLD_CHECKS, QUALITY_CHECK, VOLUME_RANGE_CHECK, *RETRAINING_CHECKS, EVALUATION_WINDOW_CHECK,
               RANKING_PERFORMANCE_CHECK, RANKING_DRIFT_CHECK, RANKING_SEGMENT_CHECK)


def _validate(config: MonitorConfig, model_id: str | None, check_name: str | None, by: str, reason: str) -> None:
    known = [*config.model_ids, *(r.id for r in config.rankers)]
    if model_id and model_id not in known:
        raise ValueError(f"unknown model {model_id!r}; configured: {', '.join(known)}")
    if check_name and check_name not in CHECK_NAMES:
        raise ValueError(f"unknown check {check_name!r}; expected one of {', '.join(CHECK_NAMES)}")
    if not by.strip() or not reason.strip():
        raise ValueError("say who decides (--by) and why (--reason): both are recorded")


def acknowledge(config: MonitorConfig, state: AlertState, model_id: str, check_name: str | None,
                day: str | None, by: str, reason: str) -> str:
    _validate(config, model_id, check_name, by, reason)
    if day:
        dt.date.fromisoformat(day)  # a clear ValueError for a malformed day
    ack_id = state.acknowledge(model_id, check_name or None, day or None, by.strip(), reason.strip())
    scope = f"{model_id} {check_name or 'all checks'} {day or 'up to today'}"
    return f"acknowledgement #{ack_id}: {scope}; alerts stay open, their notifications stop"


def silence(config: MonitorConfig, state: AlertState, model_id: str | None, check_name: str | None,
            hours: float, by: str, reason: str) -> str:
    _validate(config, model_id, check_name, by, reason)
    if not model_id and not check_name:
        raise ValueError("a silence needs a model, a check, or both")
    if not 0 < hours <= 24 * 90:
        raise ValueError(f"hours: expected more than 0 and at most 2160 (90 days), got {hours:g}")
    silence_id = state.silence(model_id, check_name, hours, by.strip(), reason.strip())
    rows = state.table("monitoring.alert_silences")
    ends = rows.loc[rows.id == silence_id, "ends_at"].iloc[0]
    return (f"silence #{silence_id}: {model_id or 'every model'} / {check_name or 'every check'} "
            f"until {iso(ends)}")


def lift_silence(state: AlertState, silence_id: int, by: str) -> str:
    if not state.lift_silence(silence_id, by):
        raise ValueError(f"no active silence #{silence_id}")
    return f"silence #{silence_id} lifted by {by}"
