"""Headless Chromium (Debian's package) driven by Playwright, with no network beyond 127.0.0.1/file."""

import shutil
import tempfile
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS, viewport={"width": width, "height": height})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Offline by construction: anything but local files and loopback is refused.
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("file://", "http://127.0.0.1", "data:")) else route.abort())
        try:
            yield page, errors
        finally:
            context.close()
