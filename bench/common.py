"""Shared by the benchmarks: ports, processes and their CPU/RSS from /proc, percentiles, Tansu, scratch databases.

Nothing here imports Django: a benchmark starts the product as child processes (`manage.py ...`)
with the environment of the layout it measures, so one bench process can measure both layouts.
"""

import contextlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the checkout
    sys.path.insert(0, str(ROOT))
MANAGE = ROOT / "manage.py"
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

# The production layout's services (`make bench` checks they run, like `make test`). A database and a
# Redis db number of the benchmarks' own, so a bench never touches what the tests use.
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/evdash_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
SECRET_KEY = "bench-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz-0123456789"
ADMIN_PASSWORD = "bench-password-7731"


def own_database_url(benchmark: str) -> str:
    """A PostgreSQL database of one benchmark's own (evdash_bench_NAME), on the bench's server.

    Benchmarks run one after the other under `make bench`, but a benchmark run alone may meet
    another one: a shared database would mix their fleets.
    """
    return re.sub(r"(/[^/?]+)(\?.*)?$", rf"\1_{benchmark}\2", DATABASE_URL, count=1)


def own_redis_url(db: int) -> str:
    """The bench's Redis server with db number `db` (pick one no other benchmark uses)."""
    return re.sub(r"/\d+$", f"/{db}", REDIS_URL) if re.search(r"/\d+$", REDIS_URL) else f"{REDIS_URL}/{db}"


def quick_default() -> bool:
    """EVDASH_BENCH_QUICK=1 makes every benchmark's CLI default to its quick run."""
    return os.environ.get("EVDASH_BENCH_QUICK", "").strip().lower() in ("1", "true", "yes", "on")


# --- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port_range(count: int) -> int:
    """A base port with `count` consecutive ports from it that nobody listens on.

    Below Linux's ephemeral range (32768 and up), so that no outgoing connection takes one of them
    meanwhile; the start is random, so that two benchmarks run side by side rarely pick the same.
    """
    low, high = 20_000, 32_000 - count
    for _ in range(50):
        base = random.randrange(low, max(low + 1, high))
        if not any(port_open(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no free range of {count} ports in {low}..32000")


# --- waiting -----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> object:
    """Poll `condition` until it returns something true; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(interval_s)


# --- processes: CPU and RSS from /proc ---------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): field 3 (state) is index 0."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds used by `pid` (and, with tree, its descendants alive now)."""
    total = 0.0
    for member in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(member)
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def rss_mb(pid: int, tree: bool = True) -> float:
    """Resident set size in MiB of `pid` (and, with tree, its descendants)."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, IndexError):
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_BYTES
    return total / 2**20


@dataclass
class CpuMeter:
    """CPU seconds of named processes (each with its descendants, unless named in `alone`) between
    start() and stop()."""

    pids: dict[str, int]
    alone: frozenset[str] = frozenset()  # measured without descendants (they have entries of their own)
    started: dict[str, float] = field(default_factory=dict)
    wall_started: float = 0.0

    def start(self) -> None:
        self.started = {name: cpu_seconds(pid, name not in self.alone) for name, pid in self.pids.items()}
        self.wall_started = time.monotonic()

    def stop(self) -> tuple[dict[str, float], float]:
        """(CPU seconds per name, wall seconds) since start()."""
        used = {name: cpu_seconds(pid, name not in self.alone) - self.started[name] for name, pid in self.pids.items()}
        return used, time.monotonic() - self.wall_started


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM (the product's graceful stop), SIGKILL after `timeout_s`; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def spawn_manage(args: Sequence[str], env: dict[str, str], log_path: Path, **popen: object) -> subprocess.Popen:
    """Start `manage.py ARGS` with its output in `log_path`."""
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [PYTHON, str(MANAGE), *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, **popen
        )


def spawn_daphne(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """daphne serving the product on 127.0.0.1:`port`, returned once it accepts connections."""
    with log_path.open("ab") as log:
        daphne = subprocess.Popen(
            [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "evdash.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: port_open(port), 60, "daphne serving", interval_s=0.3)
    except BaseException:
        stop_process(daphne)
        raise
    return daphne


def run_manage(args: Sequence[str], env: dict[str, str], timeout_s: float = 300) -> str:
    """Run `manage.py ARGS` to completion; its stdout; RuntimeError with its output if it fails."""
    done = subprocess.run(
        [PYTHON, str(MANAGE), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- environments of the two layouts -----------------------------------------------------------


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DATABASE_URL", "REDIS_URL", "EVDASH_MODE", "DJANGO_SECRET_KEY", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(name, None)
    return env | {"PYTHONUNBUFFERED": "1", "EVDASH_LOG_LEVEL": "WARNING"}


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """Embedded mode on a scratch SQLite in `var_dir` (in-memory channel layer)."""
    return _base_env() | {"EVDASH_MODE": "embedded", "EVDASH_VAR_DIR": str(var_dir)} | extra


def production_env(bootstrap: str, database_url: str = DATABASE_URL, redis_url: str = REDIS_URL, **extra: str):
    """Production mode on the bench's PostgreSQL database and Redis db, plain HTTP on loopback."""
    return (
        _base_env()
        | {
            "EVDASH_MODE": "production",
            "DJANGO_SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "0",  # Tansu
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_SECURE_COOKIES": "0",
        }
        | extra
    )


@contextlib.contextmanager
def scratch_var_dir(prefix: str = "evdash-bench-") -> Iterator[Path]:
    """A temporary EVDASH_VAR_DIR (SQLite database, secret key), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        os.chmod(path, 0o700)
        yield Path(path)


def ensure_postgres_database(url: str = DATABASE_URL) -> None:
    """Create the database of `url` if it does not exist (connecting to `postgres` on the same server)."""
    import psycopg
    from psycopg import sql

    match = re.match(r"^(postgres(?:ql)?://[^/]+)/([^?]+)", url)
    if not match:
        raise ValueError(f"not a PostgreSQL URL: {url}")
    server, name = match.groups()
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def flush_redis(url: str = REDIS_URL) -> None:
    """Empty the bench's Redis db (channel layer groups left by an earlier run)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# --- the broker --------------------------------------------------------------------------------


@contextlib.contextmanager
def tansu(port: int | None = None, log_dir: Path | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """A Tansu broker (in-memory storage) for the duration: (process, bootstrap "127.0.0.1:PORT")."""
    from gateway.kafka.embedded import start_broker, stop_broker

    port = port or free_port()
    log_path = (log_dir or Path(tempfile.gettempdir())) / f"tansu-{port}.log"
    broker = start_broker(port=port, log_path=log_path)
    try:
        yield broker, f"127.0.0.1:{port}"
    finally:
        stop_broker(broker)


# --- figures -----------------------------------------------------------------------------------


def percentiles(values: Sequence[float], cuts: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """{"p50": ..., "p99": ...} of `values` (inclusive method: fine with few values); NaN if empty."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return {f"p{p}": value for p in cuts}
    quantiles = statistics.quantiles(values, n=100, method="inclusive")
    return {f"p{p}": quantiles[p - 1] for p in cuts}


def median_rows(rows: Sequence[dict[str, object]]) -> dict[str, object]:
    """One row: per key, the median of the numeric values over `rows` (others from the first row)."""
    merged: dict[str, object] = {}
    for key in rows[0]:
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
        if values and not isinstance(rows[0][key], bool):
            merged[key] = statistics.median(values)
        else:
            merged[key] = rows[0][key]
    return merged


def rounded(row: dict[str, object], digits: int = 1) -> dict[str, object]:
    """`row` with floats rounded for a table."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}


def print_rows(title: str, rows: Sequence[dict[str, object]]) -> None:
    """A plain table on stdout (the CLI of each benchmark)."""
    print(format_table(title, rows))


def format_table(title: str, rows: Sequence[dict[str, object]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    cells = [[str(row.get(k, "")) for k in keys] for row in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = [title, "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def chromium_version() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        return "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        return out.strip() or "unknown"
    return "unknown"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": round(ram_gib(), 1),
        "python": platform.python_version(),
        "chromium": chromium_version(),
        "kernel": platform.release(),
    }
