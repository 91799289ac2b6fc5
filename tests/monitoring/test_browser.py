"""The monitoring pages render in a real browser: headless Debian Chromium, no JS errors, no network.

Uses the system Chromium and chromedriver (scripts/system-deps.sh installs them); nothing is
downloaded at run time. Skipped where they are missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from custops.pipelines import monitoring as PM

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Chromium/chromedriver not installed (scripts/system-deps.sh installs them)")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def load(driver: object, path: Path, expect: str, timeout: float = 30.0) -> str:
    """Open a file, wait until its rendered text contains `expect`; fail on any console error."""
    driver.get(path.as_uri())  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.execute_script("return document.body ? document.body.innerText : ''")  # type: ignore[attr-defined]
        if expect in text:
            break
        time.sleep(0.2)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
    assert not errors, errors  # uncaught exceptions and failed loads (e.g. a CDN script) are SEVERE
    assert expect in text, text[:500]
    return text


def test_index_and_reports_render_without_js_errors(
    browser: object, ok_run: PM.MonitorResult, drift_run: PM.MonitorResult, monitoring_out: Path
) -> None:
    index = load(browser, monitoring_out / "index.html", "custops monitoring")
    assert "same-distribution" in index and "injected-drift" in index
    page = load(browser, drift_run.paths["page"], "Why this status")
    assert "revenue_365d" in page
    report = load(browser, drift_run.paths["report"], "Dataset Drift")  # rendered by Evidently's inlined JS
    assert "Share of Drifted Columns" in report
