"""Regenerates docs/report.png: the report of a real run on sample_images/, in headless Chromium.

The command runs with ``--report`` on ``sample_images/`` into ``docs/example/`` (ignored by
git); the page opens on ``coffee`` (its top rendered class, espresso), and the pointer rests on
the cell where espresso peaks, so the picture shows the outlined window and that cell's top 5.

Needs Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``) and
selenium (the ``test`` extra).

Run: .venv/bin/python docs/report_screenshot.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "example"
SHOT = ROOT / "docs" / "report.png"
sys.path.insert(0, str(ROOT))  # tests.helpers.browser: the shared headless-Chromium helper

from tests.helpers.browser import headless_chromium  # noqa: E402


def main() -> None:
    """Runs the command, opens the report on coffee, points at espresso's peak, saves."""
    command = [sys.executable, "-m", "heatmap_cli", "sample_images/", "--out", str(OUT)]
    subprocess.run([*command, "--report", "-q"], cwd=ROOT, check=True)
    record = json.loads((OUT / "coffee.json").read_text(encoding="utf-8"))
    peak = record["classes"][0]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    with headless_chromium(width=1280, height=820) as browser:
        driver = browser.driver
        browser.open(OUT / "index.html")
        driver.execute_script("location.hash = 'coffee';")
        WebDriverWait(driver, 10).until(
            lambda d: (
                d.execute_script("return document.getElementById('viewer').dataset.state;")
                == "ready"
            )
        )
        stage = driver.find_element(By.ID, "stage")
        width = stage.size["width"] / record["original_size"]["width"]
        offset = (
            peak["x"] * width - stage.size["width"] / 2,
            peak["y"] * width - stage.size["height"] / 2,
        )
        ActionChains(driver).move_to_element_with_offset(stage, *map(round, offset)).perform()
        problems = browser.errors() + browser.remote_requests()
        if problems:
            raise SystemExit(f"the page was not clean: {problems}")
        driver.save_screenshot(str(SHOT))
    print(f"wrote {SHOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
