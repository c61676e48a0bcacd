"""manage.py probe: the commissioning tool against real simulator servers and dead ends."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from gateway.choices import DataType
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.spec import RegisterSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file, save_spec
from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import decode_record, encode_record
from tests.conftest import free_port

pytestmark = pytest.mark.django_db
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


@pytest.fixture
def charger():
    """One simulated generic charger in a background thread, charging at known values."""
    with SimulatorFleet(GENERIC, 1, base_port=0, seed=21).run_in_thread() as fleet:
        sim = fleet.charge_points[0]
        sim.set_status("charging")
        sim.set_value("power_w", 7_360)
        sim.set_value("current_l1_a", 32.0)
        yield sim


def run_probe(*args: str) -> str:
    out = StringIO()
    call_command("probe", *args, stdout=out)
    return out.getvalue()


def test_probe_prints_every_decoded_value(generic_profile, charger) -> None:
    output = run_probe(f"127.0.0.1:{charger.port}", "--profile", "generic-ev-charger", "--unit", "1")
    assert "status charging, IEC 61851 state C" in output
    assert "2 reads" in output
    power_row = next(line for line in output.splitlines() if line.startswith("power "))
    assert "7360" in power_row and "power_w" in power_row
    # Every register of the profile has a row, identity strings included.
    rows = {line.split(" ", 1)[0] for line in output.splitlines()}
    names = {register.name for register in GENERIC.registers}
    assert len(names) == 15
    assert names - rows == set()


def test_probe_json_is_a_valid_telemetry_record(generic_profile, charger) -> None:
    record = json.loads(run_probe(f"127.0.0.1:{charger.port}", "--profile", "generic-ev-charger", "--json"))
    assert decode_record(encode_record(record)) == record
    assert record["values"]["current_l1_a"] == 32.0
    assert record["quality"] == "good"


def test_connection_refused_is_a_clear_error(generic_profile) -> None:
    port = free_port()
    with pytest.raises(CommandError, match=rf"127.0.0.1:{port} unit 1: cannot connect"):
        run_probe(f"127.0.0.1:{port}", "--profile", "generic-ev-charger")


def test_timeout_is_a_clear_error(generic_profile) -> None:
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        port = hung.getsockname()[1]
        with pytest.raises(CommandError, match=rf"127.0.0.1:{port} unit 1: .*(timed out|Timeout|No response)"):
            run_probe(f"127.0.0.1:{port}", "--profile", "generic-ev-charger", "--timeout", "0.5")


def test_modbus_exception_names_the_code_and_the_block(charger) -> None:
    # A profile claiming a register the charger does not have.
    extra = RegisterSpec(name="mystery", address=500, data_type=DataType.UINT16)
    spec = replace(GENERIC, slug="generic-plus", registers=(*GENERIC.registers, extra))
    save_spec(spec, DeviceProfile, Register, StatusRule)
    with pytest.raises(CommandError) as error:
        run_probe(f"127.0.0.1:{charger.port}", "--profile", "generic-plus")
    assert "ILLEGAL DATA ADDRESS for holding registers 500..500 [mystery]" in str(error.value)


def test_undecodable_value_is_reported(charger) -> None:
    # Reading the binary power register as text cannot decode.
    as_text = RegisterSpec(name="power_as_text", address=2, data_type=DataType.STRING, length=2, encoding="utf-8")
    others = tuple(r for r in GENERIC.registers if r.address not in (2, 3))
    save_spec(replace(GENERIC, slug="generic-text", registers=(*others, as_text)), DeviceProfile, Register, StatusRule)
    charger.set_value("power_w", 0xFFFF_FFFF)
    with pytest.raises(CommandError, match="cannot decode power_as_text: bytes ff ff ff ff are not valid utf-8"):
        run_probe(f"127.0.0.1:{charger.port}", "--profile", "generic-text")


def test_unknown_profile_lists_the_known_ones(generic_profile) -> None:
    with pytest.raises(CommandError, match=r"Unknown profile 'nope'\. Known profiles: .*generic-ev-charger"):
        run_probe("127.0.0.1", "--profile", "nope")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:http"])
def test_bad_port_is_rejected(generic_profile, endpoint: str) -> None:
    with pytest.raises(CommandError, match="Port must be a number between 1 and 65535"):
        run_probe(endpoint, "--profile", "generic-ev-charger")


def test_failure_exits_non_zero_without_a_traceback(tmp_path) -> None:
    env = os.environ | {"DJANGO_DEBUG": "1", "EVDASH_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=settings.BASE_DIR, check=True, timeout=120)
    port = free_port()
    result = subprocess.run(
        [*manage, "probe", f"127.0.0.1:{port}", "--profile", "generic-ev-charger"],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"CommandError: 127.0.0.1:{port} unit 1: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr
