"""MkDocs hook: the result tables of the docs, built from the committed JSON at build time.

A page asks for a table with a marker on a line of its own::

    <!-- table: benchmarks/results.json speed -->

``PATH`` is a JSON file relative to the repository root and ``NAME`` says which table of it
(one JSON file can hold several, e.g. ``quality-best`` and ``quality-end``). The hook replaces
the marker with the Markdown table, made by the functions that the benchmark scripts print
their tables with (``--report``; imported from ``benchmarks``, with the repository root on
``sys.path``) wherever a script has one, so a page never carries a hand copy of a committed
measurement.

The tables (``NAME``: what makes it, and the JSON it reads):

- ``speed``: ``benchmarks.__main__.summary``, ``benchmarks/results.json``;
- ``floor``: ``benchmarks.floor.report``, ``benchmarks/floor.json``;
- ``fused``: the table that ``python -m benchmarks.fused`` prints, less its ``check``
  column, ``benchmarks/fused.json``;
- ``compile``: ``benchmarks.compile.row`` under a header with the units,
  ``benchmarks/compile.json``;
- ``quality-best`` and ``quality-end``: ``benchmarks.quality.report`` at the best validation
  epoch or at the end of the budget, ``benchmarks/quality.json`` or
  ``benchmarks/quality_ten_seeds.json``;
- ``scale-bound``: ``benchmarks.scale_bound.report`` with flowforge's runs of
  ``benchmarks/quality.json`` and ``benchmarks/quality_ten_seeds.json`` as the rows of the
  defaults (what ``python -m benchmarks.scale_bound --report`` prints),
  ``benchmarks/scale_bound.json``;
- ``kill-campaign``: the table that ``experiments/kill_campaign.py`` writes,
  ``experiments/kill_campaign/results.json``;
- ``cnf-toys`` and ``cnf-batch``: ``benchmarks.cnf_toys.table`` and
  ``benchmarks.cnf_batch.table``, ``benchmarks/cnf_toys.json`` and
  ``benchmarks/cnf_batch.json``;
- ``cnf-quality`` and ``cnf-sampling``: ``benchmarks.cnf_toys.quality_table`` (of the
  longest budget with curves) and ``benchmarks.cnf_toys.sampling_table``,
  ``benchmarks/cnf_toys.json``;
- ``amortized-fm``: ``benchmarks.amortized_fm.table``, ``benchmarks/amortized_fm.json``;
- ``time-to-quality`` and ``time-to-quality-summary``: ``benchmarks.time_to_quality.table``
  and ``.summary``, ``benchmarks/time_to_quality.json``; ``fit-variants``:
  ``benchmarks.time_to_quality.variants``, ``benchmarks/fit_variants.json``;
- ``vi-guide``: ``benchmarks.vi_guide.table``, ``benchmarks/vi_guide.json``.

An unknown name, a missing JSON file, a malformed marker or a renderer that fails raises
:class:`TableError`, naming the page and the marker, which stops ``mkdocs build``.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # MkDocs reports a PluginError as one clean line; the tests import this without MkDocs
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover - the dev extra has no MkDocs
    PluginError = Exception

ROOT = Path(__file__).resolve().parents[2]

# Any table marker, well formed or not: ``<!-- table: ... -->``.
MARKER = re.compile(r"<!--\s*table:(?P<body>.*?)-->", re.DOTALL)
# The body of a well-formed one: a relative path to a .json file and a table name.
BODY = re.compile(r"\s*(?P<path>[\w./-]+\.json)\s+(?P<name>[a-z][a-z0-9-]*)\s*")


class TableError(PluginError):
    """A table marker that cannot be rendered (the message names the page and the marker)."""


def _module(name: str) -> Any:
    """``benchmarks.<name>``, importable from the repository root."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def speed(path: Path) -> str:
    return _module("__main__").summary(_load(path))


def floor(path: Path) -> str:
    return _module("floor").report(_load(path))


def fused(path: Path) -> str:
    """``python -m benchmarks.fused``'s table without the ``check`` column (the float64
    check's largest relative difference, which the page gives in words)."""
    module = _module("fused")
    rows = []
    for record in _load(path):
        names = [name for name in ("eager", "fused", "normflows") if name in record]
        rows.append(module.row(record["case"], {n: 1e3 * record[n]["median_s"] for n in names}))
    return "\n".join(module.header() + rows)


def compiled(path: Path) -> str:
    rows = [_module("compile").row(record) for record in _load(path)]
    header = [
        "| case | library | graph breaks | compile, cold (s) | eager step (ms) "
        "| compiled step (ms) | speed-up | pays off after (steps) | vs flowforge |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + rows)


def quality_best(path: Path) -> str:
    return _module("quality").report(_load(path), at_best=True)


def quality_end(path: Path) -> str:
    return _module("quality").report(_load(path), at_best=False)


SCALE_BOUND_DEFAULTS = ("benchmarks/quality.json", "benchmarks/quality_ten_seeds.json")


def scale_bound(path: Path) -> str:
    defaults = [ROOT / name for name in SCALE_BOUND_DEFAULTS]
    for default in defaults:  # default_runs would skip a missing one silently
        if not default.is_file():
            raise FileNotFoundError(f"{default.relative_to(ROOT)} (the default rows) is missing")
    module = _module("scale_bound")
    return module.report(module.with_defaults(_load(path), module.default_runs(defaults)))


def kill_campaign(path: Path) -> str:
    """The table of ``experiments/kill_campaign.py`` (its ``main`` builds it inline)."""
    results = _load(path)
    signals = ("SIGKILL", "SIGTERM", "SIGINT")
    total = {name: sum(r["kills"][name] for r in results) for name in signals}
    codes: dict[str, int] = {}
    for r in results:
        for key, count in r["exit_codes"].items():
            codes[key] = codes.get(key, 0) + count
    return "\n".join(
        [
            "| runs | SIGKILL | SIGTERM | SIGINT | exit statuses | byte-identical "
            "| temporaries left |",
            "|---|---|---|---|---|---|---|",
            f"| {len(results)} | {total['SIGKILL']} | {total['SIGTERM']} | {total['SIGINT']} | "
            + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
            + f" | {sum(r['identical'] for r in results)} of {len(results)} | "
            + f"{sum(len(r['leftover_temporaries']) for r in results)} |",
        ]
    )


def cnf_toys(path: Path) -> str:
    return _module("cnf_toys").table(_load(path))


def cnf_quality(path: Path) -> str:
    results = _load(path)
    budget = max(r["train_minutes"] for r in results["rows"] if "curve" in r)
    return _module("cnf_toys").quality_table(results, budget)


def cnf_sampling(path: Path) -> str:
    return _module("cnf_toys").sampling_table(_load(path))


def amortized_fm(path: Path) -> str:
    return _module("amortized_fm").table(_load(path)["rows"])


def time_to_quality(path: Path) -> str:
    return _module("time_to_quality").table(_load(path))


def time_to_quality_summary(path: Path) -> str:
    return _module("time_to_quality").summary(_load(path))


def fit_variants(path: Path) -> str:
    return _module("time_to_quality").variants(_load(path))


def vi_guide(path: Path) -> str:
    return _module("vi_guide").table(_load(path))


def precision(path: Path) -> str:
    return _module("precision").table(_load(path))


def cnf_batch(path: Path) -> str:
    return _module("cnf_batch").table(_load(path))


TABLES: dict[str, Callable[[Path], str]] = {
    "cnf-toys": cnf_toys,
    "cnf-batch": cnf_batch,
    "cnf-quality": cnf_quality,
    "cnf-sampling": cnf_sampling,
    "amortized-fm": amortized_fm,
    "time-to-quality": time_to_quality,
    "time-to-quality-summary": time_to_quality_summary,
    "fit-variants": fit_variants,
    "vi-guide": vi_guide,
    "precision": precision,
    "speed": speed,
    "floor": floor,
    "fused": fused,
    "compile": compiled,
    "quality-best": quality_best,
    "quality-end": quality_end,
    "scale-bound": scale_bound,
    "kill-campaign": kill_campaign,
}


def render(path: str, name: str) -> str:
    """The Markdown table ``name`` of the JSON file ``path`` (relative to the repository root).
    Raises ``KeyError`` for an unknown name and ``FileNotFoundError`` for a missing file."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    file = (ROOT / path).resolve()
    if not file.is_relative_to(ROOT):
        raise FileNotFoundError(f"{path} is outside the repository")
    if not file.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return TABLES[name](file).strip()


def markers(markdown: str) -> list[tuple[str, str]]:
    """The ``(path, name)`` of every well-formed marker in ``markdown``, in order."""
    found = []
    for match in MARKER.finditer(markdown):
        body = BODY.fullmatch(match["body"])
        if body:
            found.append((body["path"], body["name"]))
    return found


def replace_markers(markdown: str, where: str) -> str:
    """``markdown`` with every table marker replaced by its table, indented as the marker is
    (so that a table inside a list item stays in it); ``where`` (the page) goes into the
    error of a marker that cannot be rendered."""

    def table(match: re.Match) -> str:
        marker = match[0]
        start = markdown.rfind("\n", 0, match.start()) + 1
        end = markdown.find("\n", match.end())
        indent = markdown[start : match.start()]
        rest = markdown[match.end() : len(markdown) if end < 0 else end]
        if indent.strip() or rest.strip():
            raise TableError(f"{where}: table marker {marker!r} is not on a line of its own")
        body = BODY.fullmatch(match["body"])
        if body is None:
            raise TableError(
                f"{where}: malformed table marker {marker!r}; "
                "expected '<!-- table: PATH.json NAME -->'"
            )
        try:
            rendered = render(body["path"], body["name"])
        except Exception as error:  # unknown name, missing file, a renderer that fails
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise TableError(
                f"{where}: table marker {marker!r}: {type(error).__name__}: {message}"
            ) from error
        return ("\n" + indent).join(rendered.splitlines())

    return MARKER.sub(table, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!--" not in markdown:
        return markdown
    return replace_markers(markdown, f"page {page.file.src_uri}")
