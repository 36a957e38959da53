"""Render ``docs/benchmarks.md``'s tables from the results files, so a table never disagrees with its run.

The page holds the prose; each table sits between two marker comments naming a results file::

    <!-- bench.report serve_load -->
    ... rendered from bench/results/serve_load.json ...
    <!-- /bench.report -->

This command replaces what is between each pair with the newest run's caption (date, command, wall
time, machine, load average) and its table, from the ``report(result)`` of the benchmark that wrote
the file (its ``benchmark`` field), and leaves everything outside the markers as it is.
``tests/test_bench.py`` fails when the page differs from what this would write.

    python -m bench.report            # rewrite docs/benchmarks.md (make report)
    python -m bench.report --check    # exit 1, with a diff, if it is out of date
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path

from bench import results
from bench.machine import summary

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = re.compile(r"(<!-- bench\.report (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench\.report -->)", re.S)


def caption(result: dict) -> str:
    """The run's date, command, wall time, machine and load average, in one paragraph."""
    took = f", {result['wall_seconds'] / 60:.1f} min" if result.get("wall_seconds") else ""
    load = ", ".join(f"{v:.1f}" for v in result.get("load_average", []))
    return (f"Newest run: {result['date']}, `{result['command']}`{took}; {summary(result['machine'])}; "
            f"load average {load} at its end.")


def section(name: str, directory: Path = results.RESULTS) -> str:
    """The Markdown between the markers of results file ``name``: caption and table, or a note that
    there is no run yet."""
    result = results.load(name, directory)
    if result is None:
        return f"No run recorded yet (`bench/results/{name}.json` is missing).\n"
    module = importlib.import_module(f"bench.{result['benchmark']}")
    return f"{caption(result)}\n\n{module.report(result)}\n"


def render(doc: str, directory: Path = results.RESULTS) -> str:
    """``doc`` with every marked section rendered afresh from ``directory``."""
    return SECTION.sub(lambda m: f"{m.group(1)}\n{section(m.group('name'), directory)}\n{m.group(4)}", doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to render (default: docs/benchmarks.md)")
    parser.add_argument("--results", type=Path, default=results.RESULTS, help="the results files' directory")
    parser.add_argument("--check", action="store_true", help="write nothing: exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    old = args.doc.read_text()
    new = render(old, args.results)
    if args.check:
        if new == old:
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   str(args.doc), "rendered"))
        print(f"\n{results.portable(args.doc)} is out of date: python -m bench.report", file=sys.stderr)
        return 1
    if new != old:
        args.doc.write_text(new)
    print(f"{results.portable(args.doc)}: {len(SECTION.findall(new))} tables rendered"
          f"{'' if new != old else ', unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
