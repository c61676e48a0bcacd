"""Decode cost per record: the reference decoder vs the one compiled from the profile, per shipped profile.

One record = every planned read of the profile (fast and slow group) decoded, plus the telemetry
fields (roles, status). The words are what the simulator serves for a charging charge point, so
the decode takes the path real records take (valid text, known status). Both decoders get the
same words and must give the same fields (`same_output`).

- reference: decode_block per read (register by register through codec.decode_value) and
  to_telemetry_fields, as the poller did before the compiled decoder;
- compiled: gateway.profiles.compiled (struct formats per read block, conversions and status rules
  folded once per profile).

CPU time of this process (time.process_time: user + system, ns resolution) per record, median over 5 runs, the process
pinned to one core. The machine is shared and noisy: compare the two columns of one run, not
figures of different runs.

    .venv/bin/python bench/decode.py [--quick]
"""

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/decode.py` puts bench/ first, not the checkout
    sys.path.insert(0, str(ROOT))

from bench.common import print_rows, quick_default  # noqa: E402

TITLE = "Decode: CPU µs per record, reference vs compiled (all planned reads + telemetry fields)"
RUNS = 5


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()


def _served_words(profile, requests) -> list[list[int] | list[bool]]:
    """What a simulated charge point of this profile answers to each read while charging."""
    import random

    from gateway.simulator.behaviour import ChargePointBehaviour
    from gateway.simulator.registers import identity_values
    from gateway.simulator.server import SimulatedChargePoint

    rng = random.Random(7)
    charge_point = SimulatedChargePoint(
        "bench-cp",
        profile,
        ChargePointBehaviour(rng),
        port=0,
        unit_id=profile.default_unit_id,
        identity=identity_values(profile, rng, "bench-cp"),
    )
    charge_point.connect_vehicle()
    for _ in range(120):  # two minutes of simulated time: plugged in and charging
        charge_point.tick(1.0)
    answers = []
    for request in requests:
        unit_id = profile.default_unit_id if request.unit_id is None else request.unit_id
        words = charge_point.read_words(unit_id, request.function, request.address, request.count)
        if not isinstance(words, list):
            raise RuntimeError(f"{profile.slug}: the simulator refuses {request} ({words!r})")
        answers.append(words)
    return answers


def _cpu_us_per_record(decode_record: Callable[[], object], records: int) -> float:
    gc.collect()
    started = time.process_time()
    for _ in range(records):
        decode_record()
    return (time.process_time() - started) / records * 1e6


def _profile_row(profile, records: int) -> dict[str, object]:
    from gateway.choices import PollGroup
    from gateway.modbus.planner import plan_reads
    from gateway.profiles.compiled import compile_profile
    from gateway.profiles.decode import decode_block, to_telemetry_fields

    requests = plan_reads(profile, (PollGroup.FAST,)) + plan_reads(profile, (PollGroup.SLOW,))
    answers = _served_words(profile, requests)
    pairs = list(zip(requests, answers, strict=True))
    decoder = compile_profile(profile, requests)

    def reference():
        decoded = {}
        for request, words in pairs:
            values, _errors = decode_block(request.registers, request.address, words)
            decoded.update(values)
        return to_telemetry_fields(profile, decoded)

    def compiled():
        decoded = {}
        for request, words in pairs:
            values, _errors = decoder.decode_block(request, words)
            decoded.update(values)
        return decoder.telemetry_fields(decoded)

    same = repr(asdict(reference())) == repr(asdict(compiled()))
    runs = {"reference": [], "compiled": []}
    for _ in range(RUNS):  # interleaved, so a noisy moment hits both
        runs["reference"].append(_cpu_us_per_record(reference, records))
        runs["compiled"].append(_cpu_us_per_record(compiled, records))
    ref, comp = statistics.median(runs["reference"]), statistics.median(runs["compiled"])
    return {
        "profile": profile.slug,
        "reads": len(requests),
        "registers": sum(len(request.registers) for request in requests),
        "reference_cpu_us_per_record": round(ref, 1),
        "compiled_cpu_us_per_record": round(comp, 1),
        "compiled_min_max_us": f"{min(runs['compiled']):.1f}-{max(runs['compiled']):.1f}",
        "speedup_x": round(ref / comp, 1),
        "same_output": same,
    }


def run(quick: bool) -> list[dict]:
    """One row per shipped profile."""
    _setup_django()
    from gateway.profiles.store import read_spec_file, shipped_profile_files

    records = 2000 if quick else 10000
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(affinity)})  # one core: no migrations mid-run
    try:
        return [_profile_row(read_spec_file(path), records) for path in shipped_profile_files()]
    finally:
        os.sched_setaffinity(0, affinity)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=quick_default(), help="fewer records per run")
    print_rows(TITLE, run(parser.parse_args().quick))
