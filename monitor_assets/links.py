"""Where the dashboard's pages are: the page names the dashboard writes and the links alerts point at.
One rule for both, so a message never links to a page that is not there."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor_assets.config import MonitorConfig

INDEX_PAGE = "dashboard.html"  # public; its rows keep id="model-<model_id>" for old links
MODELS_DIR = "models"

_PLAIN_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,79}")
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def model_page(model_id: str) -> str:
    """A model's page, relative to the reports folder. Plain lower-case ids keep their name
    (`models/fraud_detector.html`); anything else is cleaned and gets a short hash of the id, so no two
    ids share a page, also on case-insensitive disks, and the name needs no URL escaping."""
    stem = model_id
    if not _PLAIN_NAME.fullmatch(model_id) or model_id.split(".")[0] in _RESERVED_NAMES:
        clean = re.sub(r"[^A-Za-z0-9_-]+", "_", model_id).strip("_")[:60] or "model"
        stem = f"{clean}-{hashlib.sha1(model_id.encode()).hexdigest()[:10]}"
    return f"{MODELS_DIR}/{stem}.html"


def dashboard_url(config: MonitorConfig, model_id: str) -> str:
    """The model's own dashboard page (the index for findings that concern no single model), as a file URL."""
    page = model_page(model_id) if model_id in config.model_ids else INDEX_PAGE
    return (Path(config.reports_dir) / page).resolve().as_uri()
