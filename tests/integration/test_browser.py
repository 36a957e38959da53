"""The page at ``/`` in a real browser: headless Chromium driven by Playwright against the real
gunicorn server and the container (``base_url``), as a person would use it.

Chromium is Debian's (``/usr/bin/chromium``, or ``$CHROMIUM``), launched through Playwright's
``executable_path`` by ``tests/browser_driver.py`` (shared with ``tests/screenshots.py``). Without
Chromium or Playwright the tests skip, unless ``REQUIRE_BROWSER=1`` (CI sets it): then they fail.
Screenshots of each panel at desktop and phone sizes land in ``$BROWSER_ARTIFACTS``
(default ``test-artifacts/browser/``).

The page is the same files and the same app in both targets, so the container runs what proves the
image serves it whole (its assets, every panel at each size, a drawn digit, an error shown) and the
finer behaviour (strokes, presets, keyboard, gradient checks, explanations) runs against gunicorn only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import browser_driver
from tests.browser_driver import DRAWN, VIEWPORTS, PageSession, path
from tests.conftest import ROOT
from tests.integration.conftest import LocalServer
from tests.screenshots import VIEWPORT, png_size, screenshots
from training.drawing import strokes_to_mnist

GUNICORN_ONLY = pytest.mark.parametrize("base_url", ["gunicorn"], indirect=True)

ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))

# Shapes that stress the preprocessing: a dot, a thin vertical, a wide flat stroke, ink at the edges.
ODD_SHAPES = {
    "dot": [[[140, 140]]],
    "vertical": [path((140, 20), (141, 260))],
    "horizontal": [path((10, 140), (270, 150))],
    "corners": [[[0, 0]], [[280, 280]], path((0, 280), (280, 0))],
    "repeated-points": [[[50, 50], [50, 50], [90, 120], [90, 120]]],
    "empty": [],
}


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    reason = browser_driver.unavailable()
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests were required (REQUIRE_BROWSER=1) but cannot run: {reason}")
        pytest.skip(reason)
    with browser_driver.chromium() as chromium:
        yield chromium


@pytest.fixture
def session(browser, base_url) -> Iterator[PageSession]:
    s = PageSession(browser, base_url, VIEWPORTS["desktop"])
    yield s
    s.close()
    assert s.console_errors == [], f"the page logged errors: {s.console_errors}"


def test_the_page_and_its_assets_are_served(base_url):
    page = requests.get(f"{base_url}/", headers={"Accept": "text/html"}, timeout=10)  # as a browser asks
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset, kind in [("app.js", "javascript"), ("drawing.js", "javascript"), ("app.css", "text/css")]:
        r = requests.get(f"{base_url}/static/{asset}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["Content-Type"], asset
    assert requests.get(f"{base_url}/static/missing.js", timeout=10).status_code == 404
    glyphs = requests.get(f"{base_url}/ui/glyphs.json", timeout=10).json()
    assert glyphs["labels"] == ["1", "2", "3", "4", "5"] and np.shape(glyphs["images"]) == (5, 5, 5)


@pytest.mark.parametrize("digit", sorted(DRAWN))
def test_a_drawn_digit_is_recognised(session, digit):
    session.draw(DRAWN[digit])
    label = session.label("mnist")
    label.wait_for(state="visible")
    session.page.wait_for_function("d => document.querySelector('#mnist-label').textContent === d", arg=digit)
    assert session.panel("mnist").locator(".latency").inner_text().endswith("ms)")
    assert session.panel("mnist").locator(".bars li").count() == 10
    # What the page sent is what the Python preprocessing makes of the strokes the page recorded.
    strokes, sent = session.page.evaluate(
        "() => [window.numpyNets.panels.mnist.strokes, window.numpyNets.panels.mnist.input]")
    assert len(strokes) == len(DRAWN[digit])
    np.testing.assert_allclose(np.asarray(sent).reshape(28, 28), strokes_to_mnist(strokes, session.pen_width()),
                               atol=1e-6)


@GUNICORN_ONLY
def test_a_finger_draws_too(browser, base_url):
    """Touch input (real touch events through Chromium's DevTools protocol) draws, and does not scroll."""
    s = PageSession(browser, base_url, VIEWPORTS["phone"], has_touch=True, is_mobile=True)
    try:
        strokes = s.on_page(DRAWN["7"])
        scroll = s.page.evaluate("() => window.scrollY")
        cdp = s.context.new_cdp_session(s.page)
        for stroke in strokes:
            points = [{"x": x, "y": y} for x, y in stroke]
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
            for point in points[1:]:
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        s.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '7'")
        assert s.page.evaluate("() => window.scrollY") == scroll
        assert s.page.evaluate("() => window.numpyNets.panels.mnist.strokes.length") == len(DRAWN["7"])
    finally:
        s.close()
    assert s.console_errors == []


@GUNICORN_ONLY
def test_a_pen_draws_too(session):
    """Pen input (real pen pointer events through Chromium's DevTools protocol) draws like the mouse."""
    strokes = session.on_page(DRAWN["1"])
    cdp = session.context.new_cdp_session(session.page)
    session.page.evaluate("""() => { window.pointerTypes = new Set();
        document.querySelector('#mnist-canvas')
          .addEventListener('pointerdown', e => window.pointerTypes.add(e.pointerType)); }""")
    for points in strokes:
        for kind, (x, y) in [("mousePressed", points[0]), *[("mouseMoved", p) for p in points[1:]],
                             ("mouseReleased", points[-1])]:
            cdp.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                  "buttons": 0 if kind == "mouseReleased" else 1,
                                                  "clickCount": 1, "pointerType": "pen"})
    session.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '1'")
    assert session.page.evaluate("() => [...window.pointerTypes]") == ["pen"]


@GUNICORN_ONLY
def test_undo_and_clear(session):
    session.draw(DRAWN["4"])
    session.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '4'")
    session.page.get_by_role("button", name="Undo stroke").click()
    assert session.page.evaluate("() => window.numpyNets.panels.mnist.strokes.length") == 1
    session.page.get_by_role("button", name="Clear", exact=True).first.click()
    session.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '-'")
    assert session.page.evaluate("() => window.numpyNets.panels.mnist.input.every(v => v === 0)")


@GUNICORN_ONLY
def test_javascript_and_python_preprocessing_agree(session):
    """The two implementations of training/drawing.py's algorithm give the same array to 1e-6."""
    cases = {**DRAWN, **ODD_SHAPES}
    pen_width = session.pen_width()
    results = session.page.evaluate(
        """async ([cases, pen]) => {
             const { strokesToMnist } = await import('/static/drawing.js');
             return Object.fromEntries(Object.entries(cases).map(([k, s]) => [k, Array.from(strokesToMnist(s, pen))]));
           }""", [cases, pen_width])
    for name, strokes in cases.items():
        expected = strokes_to_mnist(strokes, pen_width)
        assert expected.shape == (28, 28)
        np.testing.assert_allclose(np.asarray(results[name]).reshape(28, 28), expected, atol=1e-6, err_msg=name)
        if strokes:
            assert expected.max() > 0.5 and expected.min() == 0.0, name
            ys, xs = np.mgrid[0:28, 0:28] + 0.5
            mass = (float((expected * xs).sum() / expected.sum()), float((expected * ys).sum() / expected.sum()))
            assert np.allclose(mass, 14.0, atol=0.6), (name, mass)  # centred by mass in the 28x28 field


@GUNICORN_ONLY
def test_each_glyph_preset_is_recognised(session):
    presets = session.panel("digits").get_by_role("group", name="Load a glyph")
    for digit in ["1", "2", "3", "4", "5"]:
        presets.get_by_role("button", name=f"Load glyph {digit}").click()
        session.page.wait_for_function("d => document.querySelector('#digits-label').textContent === d", arg=digit)
        assert session.panel("digits").locator(".bars li").count() == 5


@GUNICORN_ONLY
def test_the_grid_works_from_the_keyboard(session):
    session.panel("digits").get_by_role("button", name="Load glyph 1").click()
    session.page.wait_for_function("() => document.querySelector('#digits-label').textContent === '1'")
    first = session.panel("digits").get_by_role("button", name="row 1, column 1")
    first.focus()
    session.page.keyboard.press("ArrowRight")
    second = session.panel("digits").get_by_role("button", name="row 1, column 2")
    assert second.evaluate("e => e === document.activeElement")
    assert second.get_attribute("aria-pressed") == "true"
    session.page.keyboard.press("Space")
    assert second.get_attribute("aria-pressed") == "false"
    session.page.keyboard.press("ArrowDown")
    assert session.panel("digits").get_by_role("button", name="row 2, column 2").evaluate(
        "e => e === document.activeElement")
    # Draw a "4" from the keyboard alone: clear, then toggle its pixels.
    session.page.get_by_role("button", name="Clear").nth(1).click()
    four = [(0, 3), (1, 2), (1, 3), (2, 1), (2, 3), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (4, 3)]
    for r, c in four:
        session.panel("digits").get_by_role("button", name=f"row {r + 1}, column {c + 1}").focus()
        session.page.keyboard.press("Enter")
    session.page.wait_for_function("() => document.querySelector('#digits-label').textContent === '4'")


@GUNICORN_ONLY
def test_xor_toggles_through_its_truth_table(session):
    """One switch flipped at a time (a Gray code: 00, 10, 11, 01), on and off: each answer is XOR's, and
    differs from the one before, so each wait is for the new answer."""
    state = {"input a": False, "input b": False}
    for flip in (None, "input a", "input b", "input a"):
        if flip is not None:
            state[flip] = not state[flip]
            switch = session.panel("xor").get_by_role("switch", name=flip)
            if state[flip]:  # by the keyboard-reachable switch, as a click on its label would
                switch.check()
            else:
                switch.uncheck()
        expected = str(int(state["input a"]) ^ int(state["input b"]))
        session.page.wait_for_function("d => document.querySelector('#xor-label').textContent === d", arg=expected)
        assert session.panel("xor").locator(".bars li").count() == 2


@GUNICORN_ONLY
@pytest.mark.parametrize("model", ["mnist", "digits", "xor"])
def test_check_gradients_passes(session, model):
    if model == "mnist":
        session.draw(DRAWN["7"])
        session.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '7'")
    panel = session.panel(model)
    facts = panel.locator(".facts")
    assert "Parameters" in facts.inner_text() and "Weights SHA-256" in facts.inner_text()
    panel.get_by_role("button", name="Check gradients").click()
    verdict = panel.get_by_test_id("verdict")
    verdict.wait_for(timeout=60_000)
    assert verdict.inner_text() == "passed"
    assert panel.locator(".gradcheck tbody tr").count() >= 2  # a row per parameter tensor


def test_an_api_error_is_shown_as_a_message(browser, base_url):
    s = PageSession(browser, base_url, VIEWPORTS["desktop"])
    try:
        version = s.panel("xor").get_by_label("Version")
        version.fill("99")
        version.press("Tab")  # commit the change
        error = s.panel("xor").get_by_role("alert")
        error.wait_for(state="visible")
        assert error.inner_text().startswith("404 not_found: model 'xor' has no version 99")
        assert s.label("xor").inner_text() == "-"
        assert "99: not loaded" in s.panel("xor").locator(".facts").inner_text()
        version.fill("")
        version.press("Tab")
        error.wait_for(state="hidden")
        assert s.label("xor").inner_text() == "0"
    finally:
        s.close()
    # The browser reports the 404 itself, and nothing else went wrong.
    assert all("404" in e for e in s.console_errors), s.console_errors


CONTRAST_PAIRS = [  # (text element, the element whose background it sits on)
    ("header p", "html"), ("footer p", "html"), ("h2", ".panel"), ("#mnist-help", ".panel"), (".facts dt", ".panel"),
    ("button.check", ".panel"), (".latency", ".panel"), ("#digits-presets button", ".panel"),
]


def contrast(fg: list[float], bg: list[float]) -> float:
    def luminance(rgb: list[float]) -> float:
        c = np.asarray(rgb[:3]) / 255.0
        c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])
    high, low = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_every_panel_is_usable_and_screenshotted(browser, base_url, request, viewport):
    s = PageSession(browser, base_url, VIEWPORTS[viewport])
    try:
        s.draw(DRAWN["4"])
        s.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '4'")
        s.panel("digits").get_by_role("button", name="Load glyph 3").click()
        s.page.wait_for_function("() => document.querySelector('#digits-label').textContent === '3'")
        s.panel("xor").get_by_role("switch", name="input b").check()
        s.page.wait_for_function("() => document.querySelector('#xor-label').textContent === '1'")
        # Nothing sticks out sideways on a phone, and every control has an accessible name.
        assert s.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        unnamed = s.page.evaluate("""() => [...document.querySelectorAll('button, input, canvas[tabindex]')]
            .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim() || (e.labels && e.labels.length)))
            .map(e => e.outerHTML)""")
        assert unnamed == []
        for text, background in CONTRAST_PAIRS:
            fg, bg = s.page.evaluate("""([t, b]) => [t, b].map(sel => {
                const style = getComputedStyle(document.querySelector(sel));
                return (sel === b ? style.backgroundColor : style.color).match(/[\\d.]+/g).map(Number); })""",
                                     [text, background])
            assert len(bg) == 3 or bg[3] == 1, f"{background} has no opaque background: {bg}"
            assert contrast(fg, bg) >= 4.5, (text, fg, bg)
        target = request.node.callspec.params.get("base_url", "server")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name in ("mnist", "digits", "xor"):
            s.panel(name).screenshot(path=ARTIFACTS / f"{target}-{viewport}-{name}.png")
        s.page.screenshot(path=ARTIFACTS / f"{target}-{viewport}-page.png", full_page=True)
    finally:
        s.close()
    assert s.console_errors == []


# -- "Explain": the attributions drawn over each panel's input, as the API gives them ----------------
MINUS = "\u2212"  # the page prints negative numbers with a real minus sign


def heat(t: float) -> np.ndarray:
    """app.js's diverging colour map, for comparing the page's pixels with the API's numbers."""
    end = np.array([33, 102, 172]) if t < 0 else np.array([178, 24, 43])
    return np.round(255 + (end - 255) * min(1.0, abs(t)))


def explained(session, name: str, method: str | None = None, target: str | None = None) -> dict:
    """Click the panel's Explain (choosing a method and class first), wait for the overlay; the
    page's answer, re-asked of the API by this test with the same body."""
    panel = session.panel(name)
    if method:
        panel.get_by_label("Method", exact=True).select_option(method)
    if target:
        panel.get_by_label("Class to explain").select_option(target)
    panel.get_by_role("button", name="Explain", exact=True).click()
    panel.get_by_test_id("attribution").wait_for(state="visible", timeout=60_000)
    shown, sent = session.page.evaluate(f"""() => [window.numpyNets.panels.{name}.explanation,
                                                   window.numpyNets.panels.{name}.input]""")
    body = {"model": name, "inputs": [sent], "method": shown["method"], **({"targets": [target]} if target else {})}
    api = requests.post(f"{session.base_url}/explain", json=body, timeout=60).json()
    np.testing.assert_allclose(shown["attributions"], api["attributions"], rtol=1e-9, atol=1e-15)
    assert shown["targets"] == api["targets"]
    return api


@GUNICORN_ONLY
def test_mnist_explain_draws_a_heat_map_that_matches_the_api(session):
    session.draw(DRAWN["7"])
    session.page.wait_for_function("() => document.querySelector('#mnist-label').textContent === '7'")
    api = explained(session, "mnist")
    assert api["targets"] == ["7"] and api["method"] == "integrated_gradients"
    values = np.asarray(api["attributions"][0], dtype=np.float64)
    scale = np.abs(values).max()
    heat_map = session.panel("mnist").get_by_test_id("attribution")
    assert float(heat_map.get_attribute("data-scale")) == pytest.approx(scale, rel=1e-12)
    pixels = np.array(session.page.evaluate("""() => Array.from(document.querySelector('#mnist-heat')
        .getContext('2d').getImageData(0, 0, 28, 28).data)""")).reshape(784, 4)[:, :3]
    ink = np.asarray(session.page.evaluate("() => window.numpyNets.panels.mnist.input"))
    want = np.array([np.round(heat(v / scale) * (1 - 0.45 * x)) for v, x in zip(values, ink, strict=True)])
    assert np.abs(pixels - want).max() <= 1  # the API's numbers, pixel for pixel (canvas rounding aside)
    ends = session.panel("mnist").get_by_test_id("legend").locator("span").all_inner_texts()
    assert [float(ends[0].replace(MINUS, "-")), float(ends[-1])] == pytest.approx([-scale, scale], rel=5e-3)
    assert "convergence delta" in session.panel("mnist").locator(".explanation").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    session.panel("mnist").screenshot(path=ARTIFACTS / "explain-mnist.png")
    session.panel("mnist").locator(".explain-controls").screenshot(path=ARTIFACTS / "explain-mnist-heat-map.png")
    # another class and method, chosen on the page
    api = explained(session, "mnist", method="saliency", target="1")
    assert api["targets"] == ["1"] and heat_map.get_attribute("data-target") == "1"
    # a new drawing clears the stale explanation
    session.draw(DRAWN["1"])
    heat_map.wait_for(state="detached")


@GUNICORN_ONLY
def test_digits_explain_colours_the_cells(session):
    session.panel("digits").get_by_role("button", name="Load glyph 3").click()
    session.page.wait_for_function("() => document.querySelector('#digits-label').textContent === '3'")
    api = explained(session, "digits", method="gradient_x_input")
    values = np.asarray(api["attributions"][0], dtype=np.float64).reshape(25)
    cells = session.panel("digits").locator(".cell")
    shown = [float(cells.nth(i).get_attribute("data-attribution")) for i in range(25)]
    np.testing.assert_allclose(shown, values, rtol=1e-12, atol=1e-300)
    colours = session.page.evaluate("""() => [...document.querySelectorAll('#digits-grid .cell')]
        .map(c => getComputedStyle(c).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number))""")
    scale = np.abs(values).max()
    assert np.abs(np.array(colours) - [heat(v / scale) for v in values]).max() <= 1
    session.panel("digits").screenshot(path=ARTIFACTS / "explain-digits.png")


@GUNICORN_ONLY
def test_xor_explain_shows_the_inputs_bars(session):
    session.panel("xor").get_by_role("switch", name="input b").check()
    session.page.wait_for_function("() => document.querySelector('#xor-label').textContent === '1'")
    api = explained(session, "xor")
    texts = session.panel("xor").get_by_test_id("attribution-value").all_inner_texts()
    assert [float(t.replace(MINUS, "-")) for t in texts] == pytest.approx(api["attributions"][0], rel=2e-3, abs=1e-12)
    bars = session.panel("xor").locator(".attribution .bar")
    assert bars.count() == 2
    session.panel("xor").screenshot(path=ARTIFACTS / "explain-xor.png")


# -- docs/page.png and docs/explain.png: what `make screenshots` runs still takes them ---------------
def test_the_docs_screenshots_show_the_served_models(browser, tmp_path):
    shots = screenshots(tmp_path, browser=browser)  # its own server on the shipped models, as the target starts
    assert shots.predicted == {"mnist": "4", "digits": "3", "xor": "1"} and shots.explained == "7"
    page = png_size(shots.page.read_bytes())
    assert page == shots.page_size and page[0] == VIEWPORT["width"] and page[1] >= VIEWPORT["height"]
    explain = png_size(shots.explain.read_bytes())
    # the element's box, in whole device pixels: a box at a fractional offset covers up to one more row each side
    assert all(box - 1 <= got <= box + 2 for got, box in zip(explain, shots.explain_box, strict=True)), explain
    assert 200 <= explain[0] <= VIEWPORT["width"] // 2  # one panel's part, not the page
    for name, version in shots.served.items():  # the facts shown are the served newest version's
        assert shots.facts[name]["Version"] == f"{version['version']} (latest)"
        assert shots.facts[name]["Parameters"] == f"{version['parameter_count']:,}"


@pytest.fixture(scope="module")
def capturing_server(tmp_path_factory) -> Iterator[tuple[LocalServer, Path]]:
    capture = tmp_path_factory.mktemp("page-capture")
    srv = LocalServer(tmp_path_factory.mktemp("page-server"), CAPTURE_DIR=str(capture)).start()
    yield srv, capture
    assert srv.stop() == 0


def test_right_and_wrong_label_the_answer_and_show_live_accuracy(browser, capturing_server):
    server, capture = capturing_server
    s = PageSession(browser, server.url, VIEWPORTS["desktop"])
    try:
        panel = s.panel("mnist")
        assert panel.get_by_role("group", name="Was it right?").is_hidden()  # nothing answered yet
        s.draw(DRAWN["4"])
        s.wait_for_label("mnist", "4")
        panel.get_by_test_id("right").click()
        result = panel.get_by_test_id("feedback-result")
        result.wait_for()
        s.page.wait_for_function("() => document.querySelector('#mnist .facts').textContent.includes('of 1 labelled')")
        assert "100.0 % of 1 labelled" in panel.locator(".facts").inner_text()
        assert '"4" was right' in result.inner_text()
        s.page.get_by_role("button", name="Clear").first.click()
        s.draw(DRAWN["7"])
        s.wait_for_label("mnist", "7")
        panel.get_by_label("The right class").select_option("1")
        panel.get_by_test_id("wrong").click()
        s.page.wait_for_function("() => document.querySelector('#mnist .facts').textContent.includes('of 2 labelled')")
        assert "50.0 % of 2 labelled" in panel.locator(".facts").inner_text()
        assert 'noted as "1"' in panel.get_by_test_id("feedback-result").inner_text()
    finally:
        s.close()
    assert s.console_errors == []
    stored = [json.loads(line) for p in capture.glob("feedback/feedback-*.jsonl")
              for line in p.read_text().splitlines()]
    assert sorted(e["data"]["labels"][0] for e in stored) == ["1", "4"]
    assert {e["data"]["predicted"][0] for e in stored} == {"4", "7"}
