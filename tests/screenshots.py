"""The page's pictures in ``docs/``, taken from what serves today (``make screenshots``).

Starts the real server (``python -m service`` on the shipped ``model_repository/``, as the integration tests
start it), opens ``/`` in headless Chromium through the browser tests' driver (``tests/browser_driver.py``) at a
fixed 1280 x 1000 viewport, and with fixed inputs writes:

* ``page.png``: the whole page, a 4 drawn on the MNIST canvas and read, the glyph 3 in the 5x5 grid, XOR of 0 and 1;
* ``explain.png``: the MNIST panel's explanation (integrated gradients, the page's default) of a drawn 7.

The model facts in them (version, architecture, parameters, accuracies, weights hash) are the served models'.
Latencies and the explanation's seconds are measured, so two runs differ in those few pixels.

    python -m tests.screenshots [--out DIR]   # default: docs/
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests import browser_driver
from tests.browser_driver import DRAWN, VIEWPORTS, PageSession
from tests.integration.conftest import ROOT, LocalServer

VIEWPORT = VIEWPORTS["desktop"]
MODELS = ("mnist", "digits", "xor")
PAGE_INPUTS = {"mnist": "4", "digits": "3", "xor": "1"}  # what page.png shows each panel predict
EXPLAINED = "7"  # the digit drawn for explain.png


@dataclass
class Screenshots:
    """What was written, and what the page showed while it was taken."""

    page: Path
    explain: Path
    page_size: tuple[int, int]  # (width, height) of the document, which page.png shows whole
    explain_box: tuple[float, float]  # (width, height) of the MNIST panel's explanation, which explain.png shows
    predicted: dict[str, str] = field(default_factory=dict)  # panel -> label the page showed in page.png
    explained: str = ""  # the class explain.png explains
    facts: dict[str, dict[str, str]] = field(default_factory=dict)  # panel -> its "About this model" rows
    served: dict[str, dict] = field(default_factory=dict)  # model -> GET /models/<name>'s ready newest version


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def settle(s: PageSession) -> None:
    """No hover or focus styling left over from the clicks, and the page at its top."""
    s.page.mouse.move(0, 0)
    s.page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")


def facts(s: PageSession, name: str) -> dict[str, str]:
    """The panel's "About this model" rows, as shown."""
    terms = s.panel(name).locator(".facts dt").all_inner_texts()
    values = s.panel(name).locator(".facts dd").all_inner_texts()
    return dict(zip(terms, values, strict=True))


def served(base_url: str, name: str) -> dict:
    info = requests.get(f"{base_url}/models/{name}", timeout=10).json()
    return next(v for v in info["versions"] if v["version"] == info["latest_version"] and v["status"] == "ready")


def take(browser, base_url: str, out: Path) -> Screenshots:
    """Drive the page at ``base_url`` with the fixed inputs; write ``out/page.png`` and ``out/explain.png``
    (both at the end, so a failed run leaves the old pair)."""
    s = PageSession(browser, base_url, VIEWPORT)
    try:
        s.draw(DRAWN[PAGE_INPUTS["mnist"]])
        s.wait_for_label("mnist", PAGE_INPUTS["mnist"])
        s.panel("digits").get_by_role("button", name=f"Load glyph {PAGE_INPUTS['digits']}").click()
        s.wait_for_label("digits", PAGE_INPUTS["digits"])
        s.panel("xor").get_by_role("switch", name="input b").check()  # a = 0, b = 1
        s.wait_for_label("xor", PAGE_INPUTS["xor"])
        settle(s)
        predicted = {name: s.label(name).inner_text() for name in MODELS}
        shown = {name: facts(s, name) for name in MODELS}
        page_size = tuple(s.page.evaluate("() => [document.documentElement.scrollWidth,"
                                          " document.documentElement.scrollHeight]"))
        page_png = s.page.screenshot(full_page=True)

        mnist = s.panel("mnist")
        mnist.get_by_role("button", name="Clear", exact=True).click()
        s.wait_for_label("mnist", "-")
        s.draw(DRAWN[EXPLAINED])
        s.wait_for_label("mnist", EXPLAINED)
        mnist.get_by_role("button", name="Explain", exact=True).click()
        mnist.get_by_test_id("attribution").wait_for(state="visible", timeout=60_000)
        settle(s)
        explained = mnist.get_by_test_id("attribution").get_attribute("data-target")
        controls = mnist.locator(".explain-controls")
        box = controls.bounding_box()
        explain_png = controls.screenshot()
    finally:
        s.close()
    if s.console_errors:
        raise RuntimeError(f"the page logged errors: {s.console_errors}")
    out.mkdir(parents=True, exist_ok=True)
    shots = Screenshots(page=out / "page.png", explain=out / "explain.png", page_size=page_size,
                        explain_box=(box["width"], box["height"]), predicted=predicted,
                        explained=explained, facts=shown, served={name: served(base_url, name) for name in MODELS})
    shots.page.write_bytes(page_png)
    shots.explain.write_bytes(explain_png)
    return shots


def screenshots(out: Path, browser=None) -> Screenshots:
    """Start the real server on the shipped models (and Chromium, unless ``browser`` is given); :func:`take`."""
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(browser_driver.chromium())
        server = LocalServer(Path(tmp), MODEL_DIR=str(ROOT / "model_repository"), VERSION_POLICY="latest:1").start()
        try:
            return take(browser, server.url, out)
        finally:
            code = server.stop()
            if code != 0:
                print(server.read_log()[-3000:], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where page.png and explain.png go "
                        "(default: docs/)")
    args = parser.parse_args(argv)
    reason = browser_driver.unavailable()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    shots = screenshots(args.out)
    for name in MODELS:
        shown = shots.facts[name]
        print(f"{name}: predicted {shots.predicted[name]}; version {shown['Version']}, "
              f"{shown['Parameters']} parameters")
    for png, what in [(shots.page, "the page"), (shots.explain, f"the explanation of a drawn {shots.explained}")]:
        width, height = png_size(png.read_bytes())
        print(f"{png}: {what}, {width} x {height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
