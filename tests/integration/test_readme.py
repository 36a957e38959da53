"""Every curl example in the README works against the running service as written, and answers what
the README says it prints.

What an example prints is read from the README itself: a ```json block right after the ```sh
block (for its last command), or a ``# {...}`` comment on or under the command (``...`` marks an
abbreviated object), or, for ``-w '%{http_code}'``, the status code the comment starts with.
Comments in prose ("# versions, platform, ...") describe rather than show, and are not compared.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ROOT

ELLIPSIS = object()  # where the README abbreviates an object with "..."


@dataclass
class Example:
    command: str
    printed: str | None  # what the README shows it prints, verbatim (None: nothing shown)

    @property
    def path(self) -> str:
        return re.search(r"localhost:8000(\S*)", self.command).group(1).rstrip("'\"")


def examples() -> list[Example]:
    text = (ROOT / "README.md").read_text()
    found: list[Example] = []
    for block, after in re.findall(r"```sh\n(.*?)```\n(```json\n.*?```)?", text, re.S):
        in_block: list[Example] = []
        lines = block.replace("\\\n", " ").splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("curl "):
                i += 1
                continue
            command_lines, comments = [lines[i]], []
            i += 1
            # a single-quoted -d body may span lines; then comment lines may follow
            while i < len(lines) and not lines[i].startswith("curl ") and not lines[i].startswith("#") \
                    and command_lines[-1].count("'") % 2 + sum(c.count("'") for c in command_lines) % 2:
                command_lines.append(lines[i])
                i += 1
            while i < len(lines) and lines[i].startswith("#"):
                comments.append(lines[i].lstrip("# "))
                i += 1
            inline = [c.split("  #", 1)[1].strip() for c in command_lines if "  #" in c]
            command = " ".join(c.split("  #", 1)[0].strip() for c in command_lines)
            shown = " ".join(inline + comments).strip()
            in_block.append(Example(command, shown or None))
        if after and in_block:
            in_block[-1].printed = after.removeprefix("```json\n").removesuffix("```")
        found += in_block
    return found


EXAMPLES = examples()


def documented_value(printed: str) -> Any | None:
    """The JSON a README comment shows, with ``...`` as ELLIPSIS; None for prose."""
    start = printed.find("{")
    if start != 0:
        return None
    depth, end = 0, None
    for k, ch in enumerate(printed):
        depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(ch, 0)
        if depth == 0:
            end = k + 1
            break
    if end is None:
        return None
    raw = re.sub(r",\s*\.\.\.", ', "__ellipsis__": true', printed[:end])
    try:
        value = json.loads(raw)
    except ValueError:
        return None

    def mark(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ELLIPSIS if k == "__ellipsis__" else mark(x) for k, x in v.items()}
        return [mark(x) for x in v] if isinstance(v, list) else v
    return mark(value)


def assert_matches(documented: Any, actual: Any, where: str = "") -> None:
    """The README's value equals the server's: keys and strings exactly, numbers to the precision
    the README prints them (three significant figures or better), timings not compared."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        keys = {k for k in documented if documented[k] is not ELLIPSIS}
        if len(keys) == len(documented):  # not abbreviated: the same keys
            assert set(actual) == keys, f"{where}: keys {sorted(actual)} != README's {sorted(keys)}"
        for k in keys:
            assert k in actual, f"{where}: no {k!r} in the answer"
            if k != "seconds":
                assert_matches(documented[k], actual[k], f"{where}.{k}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{where}: {actual!r}"
        for k, (d, a) in enumerate(zip(documented, actual, strict=True)):
            assert_matches(d, a, f"{where}[{k}]")
    elif isinstance(documented, bool) or documented is None or isinstance(documented, str):
        assert actual == documented, f"{where}: {actual!r} != README's {documented!r}"
    else:
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{where}: {actual!r}"
        if abs(documented) < 1e-6:  # gradient errors: rounding noise, on the right side of 1e-6
            assert abs(actual) < 1e-6, f"{where}: {actual!r} vs README's {documented!r}"
        else:
            assert math.isclose(actual, documented, rel_tol=0.02), f"{where}: {actual!r} != README's {documented!r}"


def test_the_readme_has_examples_for_every_endpoint():
    paths = {re.search(r"localhost:8000(/[\w/.]*)", e.command).group(1) for e in EXAMPLES}
    assert {"/predict", "/gradcheck", "/models", "/models/mnist", "/healthz", "/readyz", "/metrics",
            "/openapi.json"} <= paths
    shown = [e for e in EXAMPLES if e.printed and documented_value(e.printed) is not None]
    assert len(shown) >= 8  # the answers it shows are compared below, not just the status codes


def test_the_parser_reads_what_an_example_prints():
    assert documented_value('{"a":[1,{"b":"x",...}]} and prose') == {"a": [1, {"b": "x", "__ellipsis__": ELLIPSIS}]}
    assert documented_value("versions, platform, input and output tensors") is None
    with pytest.raises(AssertionError):
        assert_matches({"label": "1"}, {"label": "7"})
    with pytest.raises(AssertionError):
        assert_matches({"passed": True, "errors": {"w": 3e-10}}, {"passed": True, "errors": {"w": 3e-4}})
    with pytest.raises(AssertionError):
        assert_matches({"code": "validation_error"}, {"code": "validation_error", "extra": 1})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.path)
def test_readme_example(base_url, http, example):
    args = shlex.split(example.command)
    url = next(a for a in args if "localhost:8000" in a).replace("localhost:8000", base_url.split("//")[1])
    headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
    data = next((args[i + 1] for i, a in enumerate(args) if a == "-d"), None)
    method = next((args[i + 1] for i, a in enumerate(args) if a == "-X"), "POST" if data is not None else "GET")
    r = http.request(method, f"http://{url.split('://')[-1]}", data=data.encode() if data else None,
                     headers=headers, timeout=30)
    # the repository API's examples need ADMIN_TOKEN, which the test servers do not set: it is off (404)
    expected = 422 if "NaN" in (data or "") else 404 if "$ADMIN_TOKEN" in example.command else 200
    assert r.status_code == expected, (example.command, r.text[:300])
    if example.printed is None:
        return
    if "%{http_code}" in example.command:
        assert example.printed.startswith(str(r.status_code)), (example.printed, r.status_code)
        return
    documented = documented_value(example.printed)
    if documented is not None:
        assert_matches(documented, r.json(), example.path)
