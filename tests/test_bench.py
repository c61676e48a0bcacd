"""bench/run.py: what `make bench` writes into docs/benchmarks.md, and how it reports a failed benchmark."""

import subprocess
import sys

from bench import run

DOC = """# Benchmarks

Hand-written intro.

<!-- bench:machine:start -->
old machine
<!-- bench:machine:end -->

### Poller

<!-- bench:poller:start -->
old poller figures
<!-- bench:poller:end -->

Reading: the poller's hand-written reading.

<!-- bench:end_to_end:start -->
old end-to-end figures
<!-- bench:end_to_end:end -->

Reading: end to end, by hand.

<!-- bench:new-blocks -->

## Where the poller's time goes

Hand-written profile notes.
"""


def outcome(name: str, rows: list[dict]) -> run.Outcome:
    return run.Outcome(name, f"Title of {name}", rows, seconds=12.0, load_start=0.5, load_end=0.7, quick=True)


def test_a_run_replaces_only_its_own_blocks_and_keeps_the_prose() -> None:
    block = run.benchmark_block(outcome("poller", [{"charge_points": 500, "cpu_us_per_record": 95.25}]), "abc1234")
    doc = run.replace_block(DOC, "poller", block, "Title of poller")
    assert "old poller figures" not in doc
    assert "| 500 | 95.2 |" in doc and "commit abc1234" in doc
    for kept in (
        "Hand-written intro.",
        "the poller's hand-written reading",
        "old end-to-end figures",
        "end to end, by hand",
        "Hand-written profile notes.",
        "old machine",
    ):
        assert kept in doc
    assert doc.count("<!-- bench:poller:start -->") == 1 and doc.count("<!-- bench:poller:end -->") == 1
    # A second run replaces the block again, not a copy of it.
    assert run.replace_block(doc, "poller", "new", "Title of poller").count("<!-- bench:poller:start -->") == 1


def test_a_benchmark_new_to_the_page_goes_before_the_anchor_with_a_reading_placeholder() -> None:
    doc = run.replace_block(DOC, "fleet_page", "figures", "Fleet page")
    new_block = doc.index("<!-- bench:fleet_page:start -->")
    assert doc.index("<!-- bench:end_to_end:end -->") < new_block < doc.index("<!-- bench:new-blocks -->")
    assert "### Fleet page\n\n<!-- bench:fleet_page:start -->\nfigures\n" in doc
    assert "Reading: _to be written._" in doc[new_block:]


def test_a_failed_benchmark_shows_its_error_beside_the_rows_that_ran() -> None:
    rows = [{"layout": "demo", "latency_p50_ms": 40.0}, {"layout": "production", "error": "daphne exited 1"}]
    block = run.benchmark_block(outcome("end_to_end", rows), "abc1234")
    assert "| demo | 40.0 |" in block
    assert "**Failed** (layout production):" in block and "daphne exited 1" in block


def test_a_missing_benchmark_module_is_a_failed_child_not_a_crash(tmp_path) -> None:
    child = subprocess.run(
        [sys.executable, "bench/run.py", "--child", "no_such_benchmark", "--out", str(tmp_path / "rows.json")],
        cwd=run.common.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 1
    assert "No module named 'bench.no_such_benchmark'" in child.stderr
    assert not (tmp_path / "rows.json").exists()
