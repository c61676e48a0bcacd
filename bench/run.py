"""`make bench`: run every benchmark, print a table per benchmark, write docs/benchmarks.md.

Each benchmark is a module bench/NAME.py with `TITLE: str` and `run(quick: bool) -> list[dict]`.
Each runs in a child process of its own (`run.py --child NAME`), so that one that fails, hangs or
leaves state behind cannot stop the others: a module that is missing, raises or outlives its time
budget is reported as a failed row with its error, and the run goes on.

docs/benchmarks.md keeps its hand-written prose: only what lies between a benchmark's markers
(`<!-- bench:NAME:start -->` ... `<!-- bench:NAME:end -->`) and the machine block is replaced, so
a `--only` run replaces only its own blocks.

    .venv/bin/python bench/run.py [--quick] [--only end_to_end,demo_latency] [--no-write]
"""

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

# In the order they run; each with its time budget in seconds (quick, full), about twice what it
# takes on the 2-core machine (all of them: ~6 min quick, ~20 min full). A module past its budget
# is stopped (SIGINT, so it cleans up; SIGKILL 30 s later) and reported as failed.
BENCHMARKS: dict[str, tuple[int, int]] = {
    "simulator": (60, 180),
    "decode": (45, 120),
    "poller": (240, 720),
    "live_push": (60, 180),
    "end_to_end": (150, 300),
    "fleet_page": (120, 420),
    "demo_latency": (120, 240),
    "edge": (360, 1200),
    "commands": (300, 600),
    "history": (240, 600),
    "api": (180, 300),
    "sitecontrol": (300, 900),
    "web_producer": (60, 120),
}
DOC = common.ROOT / "docs" / "benchmarks.md"
MACHINE_BLOCK = "machine"
NEW_BLOCKS_ANCHOR = "<!-- bench:new-blocks -->"


@dataclass
class Outcome:
    """One benchmark's run: its rows (or a failure row), how long it took, load before and after."""

    name: str
    title: str
    rows: list[dict]
    seconds: float
    load_start: float
    load_end: float
    quick: bool

    @property
    def failed(self) -> bool:
        return any("error" in row for row in self.rows)


# --- running -----------------------------------------------------------------------------------


def run_child(name: str, quick: bool, out: Path) -> None:
    """In the child: import bench.NAME, run it, write {"title", "rows"} as JSON to `out`."""
    module = importlib.import_module(f"bench.{name}")
    title = getattr(module, "TITLE", name)
    out.write_text(json.dumps({"title": title, "rows": module.run(quick)}, default=str))


def run_benchmark(name: str, quick: bool) -> Outcome:
    """Run one benchmark in a child process within its budget; never raises."""
    budget_s = BENCHMARKS[name][0 if quick else 1]
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    title, rows = name, []
    with tempfile.TemporaryDirectory(prefix=f"evdash-bench-{name}-") as scratch:
        out, log = Path(scratch) / "rows.json", Path(scratch) / "output.log"
        args = [common.PYTHON, str(Path(__file__).resolve()), "--child", name, "--out", str(out)]
        args += ["--quick"] if quick else []
        # Its own process group: on timeout the whole benchmark (and what it started) is stopped.
        child = subprocess.Popen(
            args, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        echo = threading.Thread(target=echo_output, args=(child.stdout, log), daemon=True)
        echo.start()
        error = None
        try:
            child.wait(budget_s)
        except subprocess.TimeoutExpired:
            error = f"stopped after its budget of {budget_s} s"
            stop_group(child)
        echo.join(5)  # a grandchild that kept the pipe open must not hold the run up
        output = log.read_text(errors="replace")
        if error is not None and output.strip():
            error += f"; its last output:\n{tail_lines(output, 15)}"
        if error is None and child.returncode != 0:
            error = f"exit status {child.returncode}:\n{tail_lines(output, 25)}"
        if error is None:
            try:
                result = json.loads(out.read_text())
                title, rows = result["title"], result["rows"]
            except (OSError, ValueError, KeyError) as exc:
                error = f"no result ({exc}):\n{tail_lines(output, 25)}"
        if error is None and not rows:
            error = "no rows"
        if error is not None:
            rows = [*rows, {"error": error}]
    return Outcome(name, title, rows, time.monotonic() - started, load_start, os.getloadavg()[0], quick)


def echo_output(pipe: IO[bytes], log: Path) -> None:
    """Show a benchmark's output as it comes (indented), and keep it for the error report."""
    with log.open("wb") as log_file:
        for line in pipe:
            log_file.write(line)
            log_file.flush()
            sys.stdout.write("   | " + line.decode(errors="replace"))
            sys.stdout.flush()


def stop_group(child: subprocess.Popen) -> None:
    """SIGINT to the benchmark's process group (its finally blocks stop what it started), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def tail_lines(text: str, count: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


# --- console and markdown ----------------------------------------------------------------------


def format_value(value: object) -> str:
    """Figures for people: 3 significant digits at most, no trailing noise."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def figure_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if "error" not in row]


def markdown_table(rows: list[dict]) -> str:
    """A markdown table; with many columns, transposed (one line per figure, one column per row)."""
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row if key not in keys]
    if not keys:
        return ""
    if len(keys) <= 8:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(format_value(row.get(key, "")) for key in keys) + " |" for row in rows]
    else:
        # The first figure names the columns when it is a label (e.g. the layout), else 1, 2, ...
        label = keys[0]
        if all(isinstance(row.get(label), str) for row in rows):
            names, keys = [str(row[label]) for row in rows], keys[1:]
        else:
            label, names = "figure", [str(i + 1) for i in range(len(rows))]
        lines = ["| " + " | ".join([label, *names]) + " |", "|" + "---|" * (len(rows) + 1)]
        lines += ["| " + " | ".join([key, *(format_value(row.get(key, "")) for row in rows)]) + " |" for key in keys]
    return "\n".join(lines)


def console_report(outcome: Outcome) -> str:
    status = "FAILED" if outcome.failed else "ok"
    head = f"== {outcome.name}: {outcome.title} ({outcome.seconds:.0f} s, {status})"
    text = [head]
    figures = figure_rows(outcome.rows)
    if figures:
        text.append(common.format_table("", [{k: format_value(v) for k, v in row.items()} for row in figures]))
    for row in outcome.rows:
        if "error" in row:
            which = ", ".join(f"{key} {value}" for key, value in row.items() if key != "error")
            text.append(f"FAILED{f' ({which})' if which else ''}: {row['error']}")
    return "\n".join(text)


def reproduce_line(name: str) -> str:
    return (
        f"Reproduce: `make bench ONLY={name}` (add `QUICK=1` for the quick run), "
        f"or `.venv/bin/python bench/{name}.py [--quick]` for the benchmark alone."
    )


def benchmark_block(outcome: Outcome, commit: str) -> str:
    """The generated part of one benchmark in docs/benchmarks.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "quick run" if outcome.quick else "full run"
    parts = [
        f"{outcome.title}: {when}, commit {commit}, {kind}, {outcome.seconds:.0f} s, "
        f"load average {outcome.load_start:.1f} → {outcome.load_end:.1f}.",
        "",
    ]
    figures = figure_rows(outcome.rows)
    if figures:
        parts += [markdown_table(figures), ""]
    for row in outcome.rows:
        if "error" in row:
            which = ", ".join(f"{key} {value}" for key, value in row.items() if key != "error")
            parts += [f"**Failed**{f' ({which})' if which else ''}:", "", "```", tail_lines(str(row["error"]), 15)]
            parts += ["```", ""]
    parts.append(reproduce_line(outcome.name))
    return "\n".join(parts)


def machine_block(commit: str, load_start: tuple, load_end: tuple, quick: bool) -> str:
    info = common.machine()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Last `make bench`{' (quick)' if quick else ''}: {when}, commit {commit}.",
            "",
            "| machine | |",
            "|---|---|",
            f"| cores | {info['cores']} |",
            f"| CPU | {info['cpu_model']} |",
            f"| RAM | {info['ram_gib']} GiB |",
            f"| kernel | {info['kernel']} |",
            f"| Python | {info['python']} |",
            f"| Chromium | {info['chromium']} |",
            f"| load average (1, 5, 15 min) at start | {', '.join(f'{v:.2f}' for v in load_start)} |",
            f"| load average (1, 5, 15 min) at end | {', '.join(f'{v:.2f}' for v in load_end)} |",
        ]
    )


def replace_block(doc: str, name: str, content: str, heading: str = "") -> str:
    """`doc` with block NAME's content replaced.

    A block the page does not have yet goes, under `heading`, before the new-blocks anchor (else at
    the end), followed by a placeholder for its hand-written reading.
    """
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{content}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc, count=1)
    placeholder = f"### {heading or name}\n\n{block}\n\nReading: _to be written._\n\n"
    if NEW_BLOCKS_ANCHOR in doc:
        return doc.replace(NEW_BLOCKS_ANCHOR, placeholder + NEW_BLOCKS_ANCHOR, 1)
    return doc.rstrip("\n") + "\n\n" + placeholder


def current_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=common.ROOT, capture_output=True, text=True)

    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    return commit + ("" if git("diff", "--quiet", "HEAD").returncode == 0 else " (with uncommitted changes)")


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", default=common.quick_default(), help="Quick runs (or EVDASH_BENCH_QUICK=1)."
    )
    parser.add_argument("--only", default="", help=f"Comma-separated, of: {', '.join(BENCHMARKS)}.")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave docs/benchmarks.md as it is.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        try:
            run_child(options.child, options.quick, options.out)
        except Exception:
            traceback.print_exc()
            return 1
        return 0

    names = [name.strip() for name in options.only.split(",") if name.strip()] or list(BENCHMARKS)
    if unknown := [name for name in names if name not in BENCHMARKS]:
        parser.error(f"unknown benchmarks: {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    names = [name for name in BENCHMARKS if name in names]  # always in the registry's order

    commit = current_commit()
    load_start = os.getloadavg()
    print(f"evdash benchmarks ({'quick' if options.quick else 'full'}): {', '.join(names)}; commit {commit}")
    print("The machine is shared and noisy: read CPU per unit of work before rates.", flush=True)
    outcomes = []
    for name in names:
        print(f"\n-- {name} (budget {BENCHMARKS[name][0 if options.quick else 1]} s) ...", flush=True)
        outcome = run_benchmark(name, options.quick)
        outcomes.append(outcome)
        print(console_report(outcome), flush=True)
    load_end = os.getloadavg()

    if not options.no_write:
        doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        doc = replace_block(doc, MACHINE_BLOCK, machine_block(commit, load_start, load_end, options.quick))
        for outcome in outcomes:
            doc = replace_block(doc, outcome.name, benchmark_block(outcome, commit), outcome.title)
        DOC.write_text(doc)
        print(f"\nwrote {DOC.relative_to(common.ROOT)}")
    failed = [outcome.name for outcome in outcomes if outcome.failed]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} benchmarks ran"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
