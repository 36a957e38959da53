"""``GET /``: the page to try the models (``service/app/static/``), and the glyph presets it offers.

``GET /`` is also KServe's model server root: a client that does not ask for text/html gets
``{"status": "alive"}`` instead of the page (content negotiation on ``Accept``).

The page is plain HTML, CSS and JavaScript modules served from the package (no build step, no
CDN): it works offline and in the read-only container. It is a client of the public API like any
other; only what a page needs beyond the API lives here.
"""

from __future__ import annotations

import functools

from flask import Blueprint, Response, request, send_from_directory

from service.app.blueprints import respond_json
from service.app.blueprints.v1 import server_live

# The blueprint serves the assets too (/static/...), so its own after_request hook covers the page and
# them, and the API's requests never pass through it.
ui = Blueprint("ui", __name__, static_folder="../static", static_url_path="/static")

# Everything the page loads comes from this server; nothing may frame it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@ui.get("/")
def index() -> Response:
    """The page (draw a digit, click a 5x5 glyph, toggle XOR, check gradients) for a browser, which
    asks for text/html; for an API client (``*/*``, JSON or no Accept), KServe's V1 server-live body."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"], "application/json") != "text/html":
        response = server_live()
    else:
        response = send_from_directory(ui.static_folder, "index.html")
        response.headers["Cache-Control"] = "no-cache"  # revalidate (ETag): a new release shows at once
    response.vary.add("Accept")  # one URL, two bodies: caches must tell them apart
    return response


@ui.get("/ui/glyphs.json")
def glyphs() -> Response:
    """The five 5x5 training glyphs, as the digits panel's presets."""
    return respond_json(_glyphs())


@functools.cache
def _glyphs() -> dict[str, list]:
    from training.datasets import digit_glyphs

    images, labels, _ = digit_glyphs()
    return {"labels": labels, "images": images.reshape(-1, 5, 5).astype(int).tolist()}


@ui.after_request
def page_headers(response: Response) -> Response:
    """The page and its assets get a strict content security policy and no referrer."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
