"""docs/benchmarks.md's tables are generated from benchmarks/results/*.json, never hand-copied."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report


def test_committed_page_is_up_to_date() -> None:
    page = report.PAGE.read_text()
    assert report.fill(page, report.render_tables()) == page, (
        "docs/benchmarks.md is stale: run python benchmarks/report.py"
    )


def test_every_result_file_has_a_renderer_and_a_place_on_the_page() -> None:
    page = report.PAGE.read_text()
    for path in sorted(report.RESULTS.glob("*.json")):
        assert path.stem in report.RENDERERS, f"no renderer for {path.name}"
        assert f"<!-- table:{path.stem} -->" in page, f"no table for {path.name} in the page"


def test_a_changed_result_changes_the_table(tmp_path: Path) -> None:
    """The numbers come from the file: change one and the rendered page shows it."""
    data = json.loads((report.RESULTS / "training.json").read_text())
    data["summary"]["pipeline_vs_in_memory"] = 0.123
    (tmp_path / "training.json").write_text(json.dumps(data))
    page = "x\n<!-- table:training -->\nold\n<!-- /table:training -->\ny\n"
    out = report.fill(page, report.render_tables(tmp_path))
    assert "| 0.12 |" in out and "old" not in out
    assert out.startswith("x\n<!-- table:training -->\n") and out.endswith(
        "<!-- /table:training -->\ny\n"
    )
