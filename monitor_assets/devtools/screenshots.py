"""Screenshots for the README, taken from this machine's own run (`make run` first):
the dashboard, the asset lineage and the asset catalog in the Dagster UI.

    python -m monitor_assets.devtools.screenshots [--out docs/img]
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from monitor_assets.config import REPO_ROOT, load_config
from monitor_assets.devtools.webserver import graphql, running_webserver
from monitor_assets.links import model_page

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "img"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    dashboard = Path(config.reports_dir) / "dashboard.html"
    if not dashboard.exists():
        raise SystemExit(f"{dashboard} does not exist: run `make run` first")
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS,
                                                        viewport={"width": 1500, "height": 950})
        page = browser.new_page()
        page.goto(dashboard.as_uri())
        page.wait_for_selector("#models")
        page.screenshot(path=str(out / "dashboard.png"))
        page.goto((Path(config.reports_dir) / model_page("purchase_propensity")).as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "dashboard_model.png"), full_page=True)
        with running_webserver() as url:
            graphql(url, "mutation { setNuxSeen }")
            page.goto(f"{url}/asset-groups")
            page.wait_for_selector("text=Global asset lineage")
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "asset_lineage.png"))
            page.goto(f"{url}/assets")
            page.wait_for_selector("text=performance_daily")
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "asset_catalog.png"))
        browser.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
