"""Headless Chromium driven by Playwright, as the page's tests (``tests/integration/test_browser.py``)
and its screenshots (``tests/screenshots.py``) both use it: one launch, one page session, one set of drawn digits.

Chromium is Debian's (``chromium`` on the ``PATH``, or ``$CHROMIUM``), launched through Playwright's
``executable_path``: Playwright's own browser download does not work on these machines.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORTS = {"desktop": {"width": 1280, "height": 1000}, "phone": {"width": 390, "height": 844}}


def unavailable() -> str | None:
    """Why Chromium cannot be driven here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not (CHROMIUM and Path(CHROMIUM).exists()):
        return "no chromium (apt install chromium, or set CHROMIUM=/path/to/chromium)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright's ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def path(*corners: tuple[float, float], step: float = 6.0) -> list[list[float]]:
    """The points a pointer reports moving through ``corners`` (one every ``step`` canvas pixels)."""
    points: list[list[float]] = []
    for (ax, ay), (bx, by) in itertools.pairwise(corners):
        n = max(1, int(np.hypot(bx - ax, by - ay) // step))
        points += [[ax + (bx - ax) * k / n, ay + (by - ay) * k / n] for k in range(n)]
    return [*points, list(corners[-1])]


# Digits as a person draws them on the 280 x 280 canvas: a few strokes each, not a pasted image.
DRAWN = {
    "1": [path((118, 78), (152, 42), (148, 150), (144, 242))],
    "4": [path((112, 40), (86, 120), (78, 162), (204, 160)), path((172, 70), (170, 160), (166, 248))],
    "7": [path((72, 56), (150, 52), (212, 50), (170, 140), (128, 246))],
}


class PageSession:
    """One page in its own browser context, with every console error and failed load recorded."""

    def __init__(self, browser, base_url: str, viewport: dict[str, int], **context_options) -> None:
        self.context = browser.new_context(viewport=viewport, device_scale_factor=1, **context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.base_url = base_url
        self.page.goto(f"{base_url}/")
        self.page.wait_for_selector("body[data-ready=true]")

    def pen_width(self) -> float:
        """The pen width the page draws with (app.js, the one home of it)."""
        return self.page.evaluate("async () => (await import('/static/app.js')).PEN_WIDTH")

    def panel(self, name: str):
        return self.page.locator(f"section#{name}")

    def label(self, name: str):
        return self.panel(name).get_by_test_id("label")

    def wait_for_label(self, name: str, label: str, timeout: float | None = None) -> None:
        """Wait until the ``name`` panel shows the predicted ``label``."""
        self.page.wait_for_function("([n, l]) => document.querySelector(`#${n}-label`).textContent === l",
                                    arg=[name, label], timeout=timeout)

    def draw(self, strokes: list[list[list[float]]]) -> None:
        """Draw ``strokes`` (canvas pixels) with the mouse: press, move through the points, release."""
        for points in self.on_page(strokes):
            self.page.mouse.move(*points[0])
            self.page.mouse.down()
            for x, y in points[1:]:
                self.page.mouse.move(x, y)
            self.page.mouse.up()

    def on_page(self, strokes: list[list[list[float]]]) -> list[list[tuple[float, float]]]:
        """``strokes`` in canvas pixels as page coordinates (the canvas scrolled into view first)."""
        canvas = self.page.locator("#mnist-canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        scale = box["width"] / 280  # the canvas's own width, in its pixels
        return [[(box["x"] + x * scale, box["y"] + y * scale) for x, y in stroke] for stroke in strokes]

    def close(self) -> None:
        self.context.close()
