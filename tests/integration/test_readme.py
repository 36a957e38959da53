"""Every curl and Python example in the README and in ``docs/*.md`` works against the running service as
written, and answers what the page says it prints.

Which examples run:

* in a ```sh block, every command that starts with ``curl`` (it must call ``localhost:8000``); other
  shell commands there (``make``, ``docker``, ``kubectl``, ``python -m training``) are not run;
* every ```python block, as a script of its own (``python -c``, from the checkout), with
  ``localhost:8000`` pointed at the server under test and ``localhost:8001`` at its gRPC port.

A snippet that cannot run against the test server (a cluster, a container engine) is fenced as
```text instead, and is then not an example; keep those few.

What an example prints is read from the page itself. For curl: a ```json block right after the
```sh block (for its last command), or a ``# {...}`` comment on or under the command (``...`` marks
an abbreviated object), or, for ``-w '%{http_code}'``, the status code the comment starts with.
Comments in prose ("# versions, platform, ...") describe rather than show, and are not compared. For
Python: the text after ``# `` on a line that calls ``print(``, which must be a line of its output,
in order.

``SERVICE_URL`` (see conftest.py) points the examples at a server you started; its gRPC examples then
go to ``SERVICE_GRPC_TARGET`` (default: the same host, port 8001).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT

ELLIPSIS = object()  # where a page abbreviates an object with "..."
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KSERVE_MODELS = Path(os.environ.get("KSERVE_MODELS", ROOT / ".venv" / "kserve-models"))


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@dataclass
class Example:
    """One curl command of a page."""

    page: str
    line: int
    command: str
    printed: str | None  # what the page shows it prints, verbatim (None: nothing shown)

    @property
    def path(self) -> str:
        return re.search(r"localhost:8000(\S*)", self.command).group(1).rstrip("'\"")

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.path}"


@dataclass
class PythonExample:
    """One ```python block of a page."""

    page: str
    line: int
    code: str

    @property
    def printed(self) -> list[str]:
        """What the page shows its print calls printing, in order."""
        return [line.split("  # ", 1)[1].strip() for line in self.code.splitlines()
                if "print(" in line and "  # " in line]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def joined_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """A shell block's lines, with backslash continuations joined, each with its first page line."""
    out: list[tuple[int, str]] = []
    pending: str | None = None
    for n, raw in enumerate(block.splitlines()):
        if pending is None:
            start, pending = first_line + n, ""
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        out.append((start, pending + raw))
        pending = None
    if pending is not None:
        out.append((start, pending))
    return out


def curl_examples(text: str, page: str) -> list[Example]:
    found: list[Example] = []
    for match in re.finditer(r"```sh\n(.*?)```\n(```json\n.*?```)?", text, re.S):
        after = match.group(2)
        numbered = joined_lines(match.group(1), line_of(text, match.start(1)))
        lines = [line for _, line in numbered]
        in_block: list[Example] = []
        i = 0
        while i < len(lines):
            if not lines[i].startswith("curl "):
                i += 1
                continue
            start = numbered[i][0]
            command_lines, comments = [lines[i]], []
            i += 1
            # a single-quoted -d body may span lines; then comment lines may follow
            while i < len(lines) and not lines[i].startswith("curl ") and not lines[i].startswith("#") \
                    and sum(c.count("'") for c in command_lines) % 2:
                command_lines.append(lines[i])
                i += 1
            while i < len(lines) and lines[i].startswith("#"):
                comments.append(lines[i].lstrip("# "))
                i += 1
            inline = [c.split("  #", 1)[1].strip() for c in command_lines if "  #" in c]
            command = " ".join(c.split("  #", 1)[0].strip() for c in command_lines)
            shown = " ".join(inline + comments).strip()
            in_block.append(Example(page, start, command, shown or None))
        if after and in_block:
            in_block[-1].printed = after.removeprefix("```json\n").removesuffix("```")
        found += in_block
    return found


def python_examples(text: str, page: str) -> list[PythonExample]:
    return [PythonExample(page, line_of(text, m.start(1)), m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


TEXTS = {page_name(page): page.read_text() for page in PAGES}
EXAMPLES = [e for page, text in TEXTS.items() for e in curl_examples(text, page)]
PYTHON_EXAMPLES = [e for page, text in TEXTS.items() for e in python_examples(text, page)]


def documented_value(printed: str) -> Any | None:
    """The JSON a page's comment shows, with ``...`` as ELLIPSIS; None for prose."""
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
    """The page's value equals the server's: keys and strings exactly, numbers to the precision
    the page prints them (three significant figures or better), timings not compared."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        keys = {k for k in documented if documented[k] is not ELLIPSIS}
        if len(keys) == len(documented):  # not abbreviated: the same keys
            assert set(actual) == keys, f"{where}: keys {sorted(actual)} != the page's {sorted(keys)}"
        for k in keys:
            assert k in actual, f"{where}: no {k!r} in the answer"
            if k != "seconds":
                assert_matches(documented[k], actual[k], f"{where}.{k}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{where}: {actual!r}"
        for k, (d, a) in enumerate(zip(documented, actual, strict=True)):
            assert_matches(d, a, f"{where}[{k}]")
    elif isinstance(documented, bool) or documented is None or isinstance(documented, str):
        assert actual == documented, f"{where}: {actual!r} != the page's {documented!r}"
    else:
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{where}: {actual!r}"
        if abs(documented) < 1e-6:  # gradient errors: rounding noise, on the right side of 1e-6
            assert abs(actual) < 1e-6, f"{where}: {actual!r} vs the page's {documented!r}"
        else:
            assert math.isclose(actual, documented, rel_tol=0.02), f"{where}: {actual!r} != the page's {documented!r}"


def shows_an_error(example: Example) -> bool:
    documented = documented_value(example.printed or "")
    return isinstance(documented, dict) and "error" in documented


def test_the_docs_have_examples_for_every_endpoint():
    paths = {re.search(r"localhost:8000(/[\w/.:]*)", e.command).group(1) for e in EXAMPLES}
    assert {"/predict", "/gradcheck", "/explain", "/models", "/models/mnist", "/healthz", "/readyz", "/metrics",
            "/openapi.json", "/v2", "/v2/models/xor/infer", "/v2/models/xor/config", "/v2/models/xor/stats",
            "/v1/models/xor:predict", "/v1/models/xor:explain"} <= paths
    shown = [e for e in EXAMPLES if e.printed and documented_value(e.printed) is not None]
    assert len(shown) >= 15  # the answers they show are compared below, not just the status codes
    assert len(PYTHON_EXAMPLES) >= 5 and sum(len(e.printed) for e in PYTHON_EXAMPLES) >= 5
    assert {e.page for e in EXAMPLES} >= {"README.md", "docs/http-api.md", "docs/open-inference-protocol.md"}


def test_every_curl_in_a_shell_block_is_an_example():
    """No curl command is skipped silently: each one calls the server the tests start."""
    for page, text in TEXTS.items():
        blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
        curls = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                 if line.startswith("curl ")]
        assert all("localhost:8000" in line for line in curls), (page, curls)
        assert len(curls) == sum(e.page == page for e in EXAMPLES), page


def test_the_readme_is_a_front_door():
    """The README stays short, tours the four calls, and states the commands CI and newcomers run."""
    text = TEXTS["README.md"]
    assert len(text.splitlines()) <= 250
    sh = "".join(re.findall(r"```sh\n(.*?)```", text, re.S))
    assert re.search(r"^make serve\b", sh, re.M) and re.search(r"^make test\b", sh, re.M)  # .ci/run: `make test`
    readme_paths = {e.path.split("'")[0] for e in EXAMPLES if e.page == "README.md"}
    assert {"/predict", "/v2/models/xor/infer", "/gradcheck", "/explain"} <= readme_paths
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"the README does not link {page.name}"


def test_the_parser_reads_what_an_example_prints():
    assert documented_value('{"a":[1,{"b":"x",...}]} and prose') == {"a": [1, {"b": "x", "__ellipsis__": ELLIPSIS}]}
    assert documented_value("versions, platform, input and output tensors") is None
    with pytest.raises(AssertionError):
        assert_matches({"label": "1"}, {"label": "7"})
    with pytest.raises(AssertionError):
        assert_matches({"passed": True, "errors": {"w": 3e-10}}, {"passed": True, "errors": {"w": 3e-4}})
    with pytest.raises(AssertionError):
        assert_matches({"code": "validation_error"}, {"code": "validation_error", "extra": 1})
    example = PythonExample("x.md", 1, 'x = 1\nprint(x)  # 1\nprint("a  b")\nprint(x, x)  # 1 1\n')
    assert example.printed == ["1", "1 1"]
    page = ("text\n```sh\nmake serve\ncurl -s localhost:8000/x \\\n  -d '{\"a\":\n  1}'  # {\"b\":2}\n"
            "curl -s localhost:8000/y\n```\n")
    first, second = curl_examples(page, "x.md")
    assert first.command == "curl -s localhost:8000/x    -d '{\"a\": 1}'" and first.printed == '{"b":2}'
    assert (first.line, second.line, second.printed) == (4, 7, None)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_curl_example(base_url, http, example):
    args = shlex.split(example.command)
    url = next(a for a in args if "localhost:8000" in a).replace("localhost:8000", base_url.split("//")[1])
    headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
    data = next((args[i + 1] for i, a in enumerate(args) if a == "-d"), None)
    method = next((args[i + 1] for i, a in enumerate(args) if a == "-X"), "POST" if data is not None else "GET")
    r = http.request(method, f"http://{url.split('://')[-1]}", data=data.encode() if data else None,
                     headers=headers, timeout=30)
    # the repository API's examples need ADMIN_TOKEN, which the test servers do not set: it is off (404)
    if "$ADMIN_TOKEN" in example.command:
        assert r.status_code == 404, (example.command, r.text[:300])
    elif "NaN" in (data or ""):
        assert r.status_code == 422, (example.command, r.text[:300])
    elif shows_an_error(example):  # an example of an error: a client error, with the body it shows
        assert 400 <= r.status_code < 500, (example.command, r.status_code, r.text[:300])
    else:
        assert r.status_code == 200, (example.command, r.text[:300])
    if example.printed is None:
        return
    if "%{http_code}" in example.command:
        assert example.printed.startswith(str(r.status_code)), (example.printed, r.status_code)
        return
    documented = documented_value(example.printed)
    if documented is not None:
        assert_matches(documented, r.json(), example.path)


@pytest.fixture
def grpc_target(request, base_url) -> str:
    """host:port of the gRPC side of the server under test."""
    if os.environ.get("SERVICE_URL"):
        return os.environ.get("SERVICE_GRPC_TARGET") or f"{urlsplit(base_url).hostname}:8001"
    target = request.node.callspec.params["base_url"]
    return request.getfixturevalue("gunicorn_server" if target == "gunicorn" else "container").grpc_target


def kserve_prelude() -> str:
    """KServe's client from the wheel in ``.venv/kserve-models``, as tests/integration/test_kserve_sdk.py
    imports it: a bare ``kserve`` package, without ``kserve/__init__`` (KServe's model server)."""
    if not (KSERVE_MODELS / "kserve" / "inference_client.py").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"KServe's SDK is missing from {KSERVE_MODELS}: run make .venv/.dev")
        pytest.skip(f"no kserve wheel in {KSERVE_MODELS} (make .venv/.dev installs it)")
    return ("import sys, types\nkserve = types.ModuleType('kserve')\n"
            f"kserve.__path__ = [{str(KSERVE_MODELS / 'kserve')!r}]\nsys.modules['kserve'] = kserve\ndel kserve\n")


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=lambda e: e.id)
def test_python_example(base_url, grpc_target, example):
    code = (example.code.replace("localhost:8000", base_url.split("//")[1])
            .replace("localhost:8001", grpc_target))
    if re.search(r"^\s*(from|import) kserve\b", code, re.M):
        code = kserve_prelude() + code
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, f"{example.id} failed:\n{run.stderr[-3000:]}"
    output = iter(run.stdout.splitlines())
    for shown in example.printed:  # each shown line is printed, in order
        assert any(line.strip() == shown for line in output), \
            f"{example.id}: {shown!r} is not printed; it printed:\n{run.stdout[-2000:]}"


ADMIN_EXAMPLES = [e for e in EXAMPLES if "$ADMIN_TOKEN" in e.command]


def test_the_admin_examples_work_with_a_token(tmp_path):
    """The repository API's examples, in page order, with the real curl binary against a server that has a
    token and a version 3 of mnist (the rollout examples name it): each answers 200, with what the page
    shows. Without a token they would only be checked to answer 404 (test_curl_example)."""
    import shutil

    from tests.integration.conftest import LocalServer
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("no curl binary: .ci/run installs it")
        pytest.skip("no curl binary")
    assert {e.page for e in ADMIN_EXAMPLES} == {"docs/operations.md", "docs/rollouts.md"} and len(ADMIN_EXAMPLES) >= 8
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository", repo)
    shutil.copytree(repo / "mnist" / "2", repo / "mnist" / "3")
    server = LocalServer(tmp_path / "server", ADMIN_TOKEN="doc-token", MODEL_DIR=str(repo)).start()
    try:
        for example in ADMIN_EXAMPLES:
            args = [a.replace("$ADMIN_TOKEN", "doc-token").replace("localhost:8000", f"127.0.0.1:{server.port}")
                    for a in shlex.split(example.command)]
            run = subprocess.run([curl, *args[1:], "-w", "\n%{http_code}"], capture_output=True, text=True,
                                 timeout=60)
            body, _, status = run.stdout.rpartition("\n")
            assert run.returncode == 0 and status == "200", (example.id, status, body[:300])
            documented = documented_value(example.printed or "")
            if documented is not None:
                assert_matches(documented, json.loads(body), example.path)
    finally:
        assert server.stop() == 0
