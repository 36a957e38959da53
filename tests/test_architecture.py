"""The layering contract (pyproject.toml's ``[tool.importlinter]``, run by ``make lint``) holds for the
tree, and fails on a planted back-import of each kind it forbids."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (module that gets the import, the import planted, the contract that must then break)
BACK_IMPORTS = [
    ("service/dataplane/dataplane.py", "from service.app import create_app", "no layer imports one above it"),
    ("service/repository/registry.py", "from service.batching import rules", "no layer imports one above it"),
    ("service/app/blueprints/inference.py", "from service.http_server import background",
     "no layer imports one above it"),
    ("service/app/hooks.py", "import gevent", "Only the HTTP server imports gunicorn and gevent"),
    ("service/protocols/v2_http.py", "import flask", "nothing knows a transport"),
    ("service/dataplane/diagnostics.py", "import grpc", "nothing knows a transport"),
    ("model/layers.py", "import service.errors", "The network library stands alone"),
    ("training/cli.py", "from service import config", "Training never imports the server"),
]


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable} (make .venv/.dev installs it)")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


def copy_of_the_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    for package in ("service", "model", "training"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return tree


def test_the_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("path", "line", "contract"), BACK_IMPORTS, ids=[row[0] for row in BACK_IMPORTS])
def test_a_planted_back_import_breaks_its_contract(tmp_path, path, line, contract):
    tree = copy_of_the_tree(tmp_path)
    target = tree / path
    assert target.exists(), path
    text = target.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    target.write_text(head + sep + line + "  # planted\n" + rest if sep else line + "  # planted\n" + text)
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, broken
