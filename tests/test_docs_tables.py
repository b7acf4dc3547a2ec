"""The result tables of the docs: every ``<!-- table: PATH NAME -->`` marker of
docs/results/*.md renders (by docs/hooks/results.py, the MkDocs hook) to a Markdown table, a
bad marker stops the build with the page and the marker in the error, and the rendered
numbers are the committed JSON's."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "results").glob("*.md"))


def _hook():
    spec = importlib.util.spec_from_file_location(
        "docs_results_hook", ROOT / "docs/hooks/results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _hook()
MARKERS = [(page.name, *marker) for page in PAGES for marker in hook.markers(page.read_text())]


@pytest.fixture(scope="module")
def tables() -> dict[tuple[str, str], str]:
    """Every marker's table, rendered once."""
    return {(path, name): hook.render(path, name) for _, path, name in MARKERS}


def json_of(path: str):
    return json.loads((ROOT / path).read_text())


def cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [cell.strip() for cell in line[1:-1].split("|")]


def row(table: str, *starts: str) -> list[str]:
    """The cells of the one row whose first cells are ``starts``."""
    found = [
        cells(line) for line in table.splitlines()[2:] if cells(line)[: len(starts)] == list(starts)
    ]
    assert len(found) == 1, (starts, found)
    return found[0]


def test_the_pages_have_markers():
    assert PAGES, "docs/results has no pages"
    names = {(path, name) for _, path, name in MARKERS}
    assert ("benchmarks/results.json", "speed") in names
    assert len(names) >= 9


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_page_builds_without_a_marker_left(page):
    text = page.read_text()
    assert len(hook.MARKER.findall(text)) == len(hook.markers(text))  # none malformed
    out = hook.replace_markers(text, f"page results/{page.name}")
    assert "<!-- table" not in out


@pytest.mark.parametrize(("page", "path", "name"), MARKERS)
def test_every_marker_renders_a_table(tables, page, path, name):
    lines = tables[path, name].splitlines()
    assert len(lines) >= 3, f"{page}: {path} {name} has no rows"
    header, rule, *rows = lines
    width = len(cells(header))
    assert width >= 2 and all(cell for cell in cells(header)[2:])
    assert cells(rule) == ["---"] * width
    for line in rows:
        assert len(cells(line)) == width, line


def test_an_unknown_marker_raises_naming_page_and_marker():
    markdown = "text\n\n<!-- table: benchmarks/results.json no-such-table -->\n"
    with pytest.raises(hook.TableError, match=r"results/speed\.md.*no-such-table"):
        hook.replace_markers(markdown, "page results/speed.md")


def test_a_missing_json_raises_naming_page_and_marker():
    markdown = "<!-- table: benchmarks/no_such_file.json speed -->\n"
    with pytest.raises(hook.TableError, match=r"results/x\.md.*no_such_file\.json.*does not exist"):
        hook.replace_markers(markdown, "page results/x.md")


@pytest.mark.parametrize(
    "marker",
    [
        "<!-- table: speed -->",  # no path
        "<!-- table: ../outside.json speed -->",  # outside the repository
        "some text <!-- table: benchmarks/results.json speed -->",  # not on its own line
    ],
)
def test_a_bad_marker_raises(marker):
    with pytest.raises(hook.TableError, match=r"results/x\.md"):
        hook.replace_markers(f"{marker}\n", "page results/x.md")


def test_the_hook_replaces_markers_and_keeps_their_indentation():
    page = SimpleNamespace(file=SimpleNamespace(src_uri="results/speed.md"))
    markdown = "- an item\n\n    <!-- table: benchmarks/fused.json fused -->\n\nafter\n"
    out = hook.on_page_markdown(markdown, page=page, config={}, files=None)
    table = [line for line in out.splitlines() if "|" in line]
    assert "<!--" not in out and len(table) == 4
    assert all(line.startswith("    |") for line in table)
    with pytest.raises(hook.TableError, match=r"results/speed\.md"):
        hook.on_page_markdown("<!-- table: benchmarks/fused.json nope -->", page, {}, None)


def test_speed_numbers_are_the_json(tables):
    cases = {case["case"]: case for case in json_of("benchmarks/results.json")["cases"]}
    table = tables["benchmarks/results.json", "speed"]
    train = {r["library"]: r["median_s"] for r in cases["C"]["train"]}
    sample = {r["library"]: r["median_s"] for r in cases["C"]["sample"]}
    cells_ = row(table, f"C. {cases['C']['title']}", "training step")
    assert cells_[2].startswith(f"{1e3 * train['flowforge']:.2f} ± ")
    lines = table.splitlines()
    sampling = cells(lines[lines.index("| " + " | ".join(cells_) + " |") + 1])
    ratio = sample["normflows"] / sample["flowforge"]
    assert f"{1e3 * sample['normflows']:.2f} ({ratio:.2f}x)" in sampling  # MAF sampling, 14.6x


def test_floor_fused_and_compile_numbers_are_the_json(tables):
    floor = {case["case"]: case for case in json_of("benchmarks/floor.json")["cases"]}
    b = floor["B"]
    cells_ = row(tables["benchmarks/floor.json", "floor"], f"B. {b['title']}")
    assert (
        cells_[3]
        == f"{1e3 * b['timings']['products']['median_s']:.2f} ({b['product_count']} products)"
    )
    assert cells_[2] == "-"  # that run predates the compiled step

    fused = {record["case"]: record for record in json_of("benchmarks/fused.json")}
    cells_ = row(tables["benchmarks/fused.json", "fused"], "A")
    assert cells_[1:3] == [f"{1e3 * fused['A'][k]['median_s']:.2f}" for k in ("eager", "fused")]

    compiled = {(r["case"], r["library"]): r for r in json_of("benchmarks/compile.json")}
    d = compiled["D", "flowforge"]
    cells_ = row(tables["benchmarks/compile.json", "compile"], "D", "flowforge")
    assert cells_[2:6] == [
        str(d["graph_breaks"]),
        f"{d['compile_s']:.1f}",
        f"{d['eager_ms']:.2f}",
        f"{d['compiled_ms']:.2f}",
    ]


def seed_mean(values: list[float]) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.3f} ± {se:.3f}"


@pytest.mark.parametrize(
    ("path", "data", "model", "library", "column"),
    [
        ("benchmarks/quality.json", "checkerboard", "nsf", "flowforge", 3),
        ("benchmarks/quality_ten_seeds.json", "two-moons", "maf", "nflows", 5),
    ],
)
def test_quality_numbers_are_the_json(tables, path, data, model, library, column):
    runs = [
        r for r in json_of(path) if (r["data"], r["model"], r["library"]) == (data, model, library)
    ]
    best = row(tables[path, "quality-best"], data, model)
    end = row(tables[path, "quality-end"], data, model)
    assert best[2] == str(len(runs))
    assert best[column].strip("*") == seed_mean([r["nll_at_best"] for r in runs])
    assert end[column].strip("*") == seed_mean([r["nll"] for r in runs])


def test_scale_bound_numbers_are_the_json(tables):
    runs = [
        r
        for r in json_of("benchmarks/scale_bound.json")
        if (
            r["data"],
            r["model"],
            r["scale_bound"],
            r.get("init", "identity"),
            r.get("scale", "tanh"),
        )
        == ("digits", "maf", 0.5, "identity", "tanh")
    ]
    cells_ = row(
        tables["benchmarks/scale_bound.json", "scale-bound"], "digits (bits/dim)", "maf", "0.5"
    )
    assert cells_[4] == str(len(runs))
    assert cells_[5] == seed_mean([r["bits_per_dim"] for r in runs])
    assert cells_[6] == seed_mean([r["bits_per_dim_at_best"] for r in runs])


def test_kill_campaign_numbers_are_the_json_and_the_faults_table(tables):
    results = json_of("experiments/kill_campaign/results.json")
    kills = {
        name: sum(r["kills"][name] for r in results) for name in ("SIGKILL", "SIGTERM", "SIGINT")
    }
    cells_ = row(
        tables["experiments/kill_campaign/results.json", "kill-campaign"], str(len(results))
    )
    assert cells_[1:4] == [str(kills[name]) for name in ("SIGKILL", "SIGTERM", "SIGINT")]
    identical = sum(r["identical"] for r in results)
    assert cells_[5] == f"{identical} of {len(results)}"
    # the hand-written row of the faults table says the same
    faults = (ROOT / "docs/results/correctness.md").read_text()
    assert (
        f"{sum(kills.values())} ({kills['SIGKILL']} SIGKILL, {kills['SIGTERM']} SIGTERM, "
        f"{kills['SIGINT']} SIGINT) over {len(results)} runs"
    ) in faults
    assert f"{identical} of {len(results)} byte-identical" in faults


def test_continuous_flow_numbers_are_the_json(tables):
    toys = tables["benchmarks/cnf_toys.json", "cnf-toys"]
    for record in json_of("benchmarks/cnf_toys.json")["rows"]:
        cells_ = row(toys, record["data"], record["library"], f"{record['train_minutes']:g}")
        assert cells_[3] == str(record["steps"]) and cells_[6] == f"{record['gap']:.3f}"
    batch = tables["benchmarks/cnf_batch.json", "cnf-batch"]
    for record in json_of("benchmarks/cnf_batch.json")["rows"]:
        assert row(batch, record["library"])[1] == f"{record['normal']:.1e}"


def test_amortized_flow_matching_numbers_are_the_json(tables):
    table = tables["benchmarks/amortized_fm.json", "amortized-fm"]
    page = " ".join((ROOT / "docs/results/inference.md").read_text().split())
    for record in json_of("benchmarks/amortized_fm.json")["rows"]:
        cells_ = row(table, record["model"])
        assert cells_[3] == f"{record['kl']:.3f}" and cells_[4] == f"{record['c2st']:.3f}"
        assert f"{record['kl']:.2f}" in page and f"{record['c2st']:.2f}" in page
