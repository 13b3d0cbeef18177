"""The text of an alert message (numbers and days written by `monitor_assets.formatting`). No Dagster here.

A message is one model, one check and the days it failed on (one channel's pending alerts, grouped):
severity, days, the latest value against its threshold, what the check saw (for drift: the drifted
features, most drifted first), what else is open for that model, and links to the run and to the
model's part of the dashboard.
"""

from __future__ import annotations

import json

from monitor_assets.formatting import day_span, fmt_day, fmt_num, plural


def drift_details(features: list[dict], limit: int = 8) -> str:
    """The drifted features, most drifted (statistic over threshold) first, one line each."""
    ranked = sorted(features, key=lambda f: -(f.get("statistic") or 0) / max(f.get("threshold") or 1e-12, 1e-12))
    lines = [f"  - {f['feature']}: {f['method']} {fmt_num(f.get('statistic'))} (threshold "
             f"{fmt_num(f.get('threshold'))}); reference {f.get('reference_summary') or 'n/a'} -> current "
             f"{f.get('current_summary') or 'n/a'}" for f in ranked[:limit]]
    if len(ranked) > limit:
        lines.append(f"  … and {len(ranked) - limit} more")
    return "\n".join(lines)


def compose(rows: list[dict], also_open: list[tuple[str, int]], run_url: str, dashboard_url: str,
            ack_hint: str | None = None) -> tuple[str, str]:
    """Subject and plain-text body of one message from delivery rows of one model and check."""
    rows = sorted(rows, key=lambda r: str(r["partition_date"]))
    latest = rows[-1]
    model_id, check = latest["model_id"], latest["check_name"]
    level = "ERROR" if any(r["severity"] == "ERROR" for r in rows) else "WARN"
    days = [fmt_day(r["partition_date"]) for r in rows]
    span = day_span(days)
    details = latest.get("details") or {}
    details = json.loads(details) if isinstance(details, str) else details
    if details.get("job"):  # a failed run, not a check
        subject = f"[{level}] run failed: {details['job']}"
        body = [f"Job:        {details['job']}", f"Partitions: {details.get('partitions') or 'n/a'}",
                f"Run:        {run_url}", f"Error:      {latest['message']}"]
        return subject, "\n".join(body) + "\n"
    subject = f"[{level}] {model_id}: {check} failed on {span}"
    lines = [
        f"Model:      {model_id}",
        f"Check:      {check}",
        f"Severity:   {level}",
        f"Days:       {span}",
        f"Value:      {fmt_num(latest.get('value'))} (threshold {fmt_num(latest.get('threshold'))}) on {days[-1]}",
        f"What:       {latest['message']}",
    ]
    if details.get("drifted_features"):
        lines.append("Drifted:\n" + drift_details(details["drifted_features"]))
    if len(rows) > 1:
        lines.append("Each day:   " + ", ".join(f"{d} = {fmt_num(r.get('value'))}" for d, r in zip(days, rows, strict=True)))
    lines.append("Also open:  " + ("; ".join(f"{c} ({plural(n, 'day')})" for c, n in also_open)
                                   if also_open else f"nothing else for {model_id}"))
    lines.append(f"Run:        {run_url}")
    lines.append(f"Dashboard:  {dashboard_url}")
    if ack_hint:
        lines.append(f"Acknowledge: {ack_hint}")
    return subject, "\n".join(lines) + "\n"
