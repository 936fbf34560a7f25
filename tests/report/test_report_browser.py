"""The report in a real browser: headless Chromium, driven by Selenium, on a real run.

One run of the command (shipped default model, the sample photos, a copy whose npz is then
removed, and a truncated file) and one browser serve every test. Each test also checks that
the page logged no console error and requested nothing but local files.

Without Chromium, chromedriver or selenium these tests skip, saying why; with
``HEATMAP_REQUIRE_BROWSER=1`` (set by CI) they fail instead.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from heatmap_cli.cli.options import main
from heatmap_cli.render import cell_values_to_image, margin_fade
from heatmap_cli.report import REPORT_FILE, write_report
from heatmap_cli.report.encoding import DISPLAY_FLOOR, STORE_THRESHOLD
from tests.helpers.browser import REQUIRE_BROWSER, Browser, browser_missing, headless_chromium

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_images"
WAIT_S = 10.0

ALPHA_CHANNEL_JS = """
const canvas = document.getElementById('v-map');
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let text = '';
for (let i = 3; i < pixels.length; i += 4) text += String.fromCharCode(pixels[i]);
return [canvas.width, canvas.height, btoa(text)];
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real run with ``--report``, then ``nogrid`` loses its npz (as ``--outputs png,json``)
    and ``moved`` its source photo."""
    root = tmp_path_factory.mktemp("report")
    photos = root / "photos"
    photos.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        (photos / name).write_bytes((SAMPLES / name).read_bytes())
    (photos / "nogrid.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    (photos / "moved.jpg").write_bytes((SAMPLES / "chelsea.jpg").read_bytes())
    (photos / "broken.jpg").write_bytes((SAMPLES / "chelsea.jpg").read_bytes()[:3000])
    out = root / "out"
    result = CliRunner().invoke(
        main, [str(photos), "--out", str(out), "--report", "--device", "cpu"]
    )
    assert result.exit_code == 1, result.output  # broken.jpg failed, the others are done
    (out / "nogrid.npz").unlink()
    (photos / "moved.jpg").unlink()
    later = (out / "moved.json").stat().st_mtime_ns + 1_000_000_000
    os.utime(out / "moved.json", ns=(later, later))  # as if redone: its files are rebuilt
    write_report(out)
    records = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")}
    return {"out": out, "records": records, "broken": str(photos / "broken.jpg")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = browser_missing()
    if reason:
        if REQUIRE_BROWSER:
            pytest.fail(f"HEATMAP_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with headless_chromium() as chromium:
        yield chromium


def wait_for(browser: Browser, script: str) -> object:
    """Waits until a JavaScript expression is truthy; returns its value."""
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(browser.driver, WAIT_S).until(
        lambda driver: driver.execute_script(f"return {script};")
    )


def open_report(browser: Browser, run: dict, fragment: str = "") -> None:
    browser.open(run["out"] / REPORT_FILE)
    if fragment:
        browser.driver.execute_script("location.hash = arguments[0];", fragment)
    wait_for(browser, "document.documentElement.dataset.ready === 'true'")


def open_image(browser: Browser, run: dict, name: str) -> dict:
    """Opens one image's viewer from its gallery card; returns the gallery entry."""
    from selenium.webdriver.common.by import By

    open_report(browser, run)
    entry = next(e for e in embedded_images(browser) if e["name"] == name)
    browser.driver.find_element(By.CSS_SELECTOR, f'.card[data-key="{entry["key"]}"]').click()
    wait_for(browser, "document.getElementById('viewer').dataset.state === 'ready'")
    return entry


def embedded_images(browser: Browser) -> list[dict]:
    script = "return JSON.parse(document.getElementById('report-data').textContent).images;"
    return browser.driver.execute_script(script)


def map_alpha(browser: Browser) -> np.ndarray:
    """The map canvas's alpha channel: the heat in 0..255, uint8 (height, width)."""
    width, height, text = browser.driver.execute_script(ALPHA_CHANNEL_JS)
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(height, width)


def drawn_class(browser: Browser) -> str:
    return browser.driver.execute_script("return document.getElementById('v-map').dataset.cls;")


def stage_picture(browser: Browser) -> np.ndarray:
    from selenium.webdriver.common.by import By

    png = browser.driver.find_element(By.ID, "stage").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def load_npz(run: dict, name: str) -> dict[str, np.ndarray]:
    with np.load(run["out"] / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def assert_clean(browser: Browser) -> None:
    assert browser.errors() == []
    assert browser.remote_requests() == []


# ---------------------------------------------------------------------------------------------


def test_gallery_shows_every_image_its_top_class_and_the_failures(browser, run) -> None:
    from selenium.webdriver.common.by import By

    open_report(browser, run)

    cards = browser.driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
    names = [card.find_element(By.CSS_SELECTOR, ".name").text for card in cards]
    assert names == sorted(run["records"])
    for card, name in zip(cards, names, strict=True):
        top = card.find_element(By.CSS_SELECTOR, ".scores li .cls").text
        assert top == run["records"][name]["top_k"][0]["name"]
    failure = browser.driver.find_element(By.CSS_SELECTOR, "#failures-list li")
    assert failure.get_attribute("data-image") == run["broken"]
    assert (
        failure.text.startswith(run["broken"] + ": ") and len(failure.text) > len(run["broken"]) + 5
    )

    browser.driver.find_element(By.ID, "filter").send_keys("espresso")
    shown = [
        card.find_element(By.CSS_SELECTOR, ".name").text for card in cards if card.is_displayed()
    ]
    expected = [
        n for n in names if any(c["name"] == "espresso" for c in run["records"][n]["top_k"])
    ]
    assert shown == expected and 0 < len(shown) < len(names)
    assert_clean(browser)


def test_map_is_the_grid_interpolated_between_window_centres(browser, run) -> None:
    entry = open_image(browser, run, "chelsea")
    arrays = load_npz(run, "chelsea")
    record = run["records"]["chelsea"]
    shown = int(drawn_class(browser))
    assert shown == record["classes"][0]["index"]

    alpha = map_alpha(browser)

    height, width = alpha.shape
    assert [width, height] == entry["photo_size"]
    original = record["original_size"]
    scale = np.array([width / original["width"], height / original["height"]])
    probs = arrays["probs"][shown]
    # drawn as the PNG overlays: on their shared scale, opacity sqrt(heat), margins faded
    scale_json = record["classes"][0]["scale"]
    low, high = entry["range"]
    assert (scale_json["name"], low, high) == ("shared", scale_json["low"], scale_json["high"])
    centers = arrays["centers"] * scale
    values = cell_values_to_image(probs, centers, (height, width), method="linear")
    fade = margin_fade(centers, (height, width)).region()
    # The 8-bit grid is within half a step of the range its class is stored over.
    step = 0.5 / 255 * max(float(probs.max()), DISPLAY_FLOOR) / (high - low)
    heat = (values - low) / (high - low)
    bounds = [np.sqrt(np.clip(heat + d, 0, 1)) * fade * 255 for d in (-step, step)]
    drawn = alpha.astype(np.float64)
    assert np.all(drawn >= bounds[0] - 1.0 - 1e-3) and np.all(drawn <= bounds[1] + 1.0 + 1e-3)
    assert drawn[height // 2, 0] < 0.1 * drawn[height // 2].max()  # faded at the border
    assert_clean(browser)


def test_switching_class_changes_the_map_and_any_class_can_be_chosen_by_name(browser, run) -> None:
    from selenium.webdriver.common.by import By

    open_image(browser, run, "coffee")
    record = run["records"]["coffee"]
    probs = load_npz(run, "coffee")["probs"]
    peaks = probs.reshape(len(probs), -1).max(axis=1)
    first = map_alpha(browser)

    second = record["classes"][1]["index"]
    browser.driver.find_element(
        By.CSS_SELECTOR, f'#v-rendered button[data-class="{second}"]'
    ).click()
    wait_for(browser, f"document.getElementById('v-map').dataset.cls === '{second}'")
    assert not np.array_equal(map_alpha(browser), first)

    rendered = {c["index"] for c in record["classes"]}
    unrendered = next(int(i) for i in np.argsort(-peaks) if int(i) not in rendered)
    assert peaks[unrendered] >= STORE_THRESHOLD
    name = str(load_npz(run, "coffee")["classes"][unrendered])
    picker = browser.driver.find_element(By.ID, "v-class")
    picker.send_keys(name[:4])
    options = browser.driver.find_elements(By.CSS_SELECTOR, "#v-options li[role=option]")
    assert options and all(name[:4].lower() in o.text.lower() for o in options)
    picker.send_keys(name[4:])
    browser.driver.find_element(
        By.CSS_SELECTOR, f'#v-options li[data-class="{unrendered}"]'
    ).click()
    wait_for(browser, f"document.getElementById('v-map').dataset.cls === '{unrendered}'")
    assert map_alpha(browser).max() > 0

    faint = int(np.argmin(peaks))
    browser.driver.execute_script(
        "location.hash = location.hash.split(':')[0] + ':' + arguments[0];", faint
    )
    wait_for(browser, "document.getElementById('v-map').dataset.cls === ''")
    assert map_alpha(browser).max() == 0
    assert "below 1/255" in browser.driver.find_element(By.ID, "v-class-info").text
    assert_clean(browser)


def test_hovering_outlines_the_cells_window_and_shows_its_top_classes(browser, run) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_image(browser, run, "coffee")
    arrays = load_npz(run, "coffee")
    probs, centers, window = arrays["probs"], arrays["centers"], arrays["window"]
    original = run["records"]["coffee"]["original_size"]
    stage = browser.driver.find_element(By.ID, "stage")
    rect = browser.driver.execute_script("return arguments[0].getBoundingClientRect();", stage)
    per_pixel = rect["width"] / original["width"]
    rows, cols = probs.shape[1:]

    for row, col in [(0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1)]:
        x, y = centers[row, col] * per_pixel
        offset = (round(x - rect["width"] / 2), round(y - rect["height"] / 2))
        ActionChains(browser.driver).move_to_element_with_offset(stage, *offset).perform()
        wait_for(browser, f"document.getElementById('v-cell').dataset.row === '{row}'")

        cell = browser.driver.find_element(By.ID, "v-cell")
        assert (cell.get_attribute("data-row"), cell.get_attribute("data-col")) == (
            str(row),
            str(col),
        )
        lines = browser.driver.find_elements(By.CSS_SELECTOR, "#v-top tr")
        shown = [int(line.get_attribute("data-class")) for line in lines]
        values = [float(line.get_attribute("data-value")) for line in lines]
        expected = np.argsort(-probs[:, row, col], kind="stable")[:5]
        assert shown == expected.tolist()
        np.testing.assert_allclose(values, probs[expected, row, col], atol=1e-4)
        assert [line.find_elements(By.TAG_NAME, "td")[1].text for line in lines] == [
            str(arrays["classes"][i]) for i in expected
        ]
        box = browser.driver.execute_script(
            "return document.getElementById('v-window').getBoundingClientRect();"
        )
        left, top = (centers[row, col] - window / 2) * per_pixel
        assert box["x"] - rect["x"] == pytest.approx(left, abs=1.0)
        assert box["y"] - rect["y"] == pytest.approx(top, abs=1.0)
        assert box["width"] == pytest.approx(window[0] * per_pixel, abs=1.0)
    assert_clean(browser)


def test_opacity_slider_fades_the_map(browser, run) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_image(browser, run, "coffee")
    slider = browser.driver.find_element(By.ID, "v-alpha")
    opacity = "return getComputedStyle(document.getElementById('v-map')).opacity;"
    assert browser.driver.execute_script(opacity) == "0.5"  # the overlays' --alpha
    half = stage_picture(browser)

    slider.send_keys(Keys.END)
    assert browser.driver.execute_script(opacity) == "1"
    full = stage_picture(browser)
    slider.send_keys(Keys.HOME)
    assert browser.driver.execute_script(opacity) == "0"
    none = stage_picture(browser)
    browser.driver.execute_script("document.getElementById('v-map').hidden = true;")
    photo = stage_picture(browser)
    browser.driver.execute_script("document.getElementById('v-map').hidden = false;")

    assert np.array_equal(none, photo)
    # Where the map is hot, more opacity moves the pixel further from the photo.
    distance_half, distance_full = (np.abs(p - photo).sum() for p in (half, full))
    assert 0 < distance_half < distance_full
    assert_clean(browser)


def test_image_without_grid_shows_its_overlays_and_says_why(browser, run) -> None:
    from selenium.webdriver.common.by import By

    entry = open_image(browser, run, "nogrid")

    notes = browser.driver.find_element(By.ID, "v-notes").text
    assert "no nogrid.npz" in notes
    assert not browser.driver.find_element(By.ID, "v-class").is_enabled()
    overlay = browser.driver.find_element(By.ID, "v-overlay")
    assert overlay.is_displayed()
    assert overlay.get_attribute("src").endswith("/" + entry["rendered"][0][3])
    wait_for(browser, "document.getElementById('v-overlay').complete")
    assert browser.driver.execute_script(
        "return document.getElementById('v-overlay').naturalWidth;"
    )
    assert_clean(browser)


def test_image_without_its_photo_still_draws_the_map_and_hovers(browser, run) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_image(browser, run, "moved")

    assert "not readable" in browser.driver.find_element(By.ID, "v-notes").text
    assert not browser.driver.find_element(By.ID, "v-photo").is_displayed()
    assert map_alpha(browser).max() > 0
    stage = browser.driver.find_element(By.ID, "stage")
    size = run["records"]["moved"]["original_size"]
    assert stage.size["width"] / stage.size["height"] == pytest.approx(
        size["width"] / size["height"], rel=0.01
    )
    ActionChains(browser.driver).move_to_element(stage).perform()
    wait_for(browser, "document.getElementById('v-cell').dataset.row !== undefined")
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#v-top tr")) == 5
    assert_clean(browser)
