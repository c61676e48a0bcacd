"""The telemetry contract: records the poller builds validate against the shipped JSON Schema."""

import json
from datetime import UTC, datetime

import fastjsonschema
import pytest
from django.conf import settings

from gateway.modbus.planner import plan_reads
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.telemetry import (
    SCHEMA_PATH,
    InvalidRecord,
    build_record,
    compiled_validator,
    decode_record,
    encode_record,
    newest_per_charge_point,
    schema_validator,
)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


def decode_generic(words: dict[int, int]):
    """Decode the generic profile's fast block (16 registers, zero unless given) into telemetry fields.

    The words are literal wire values (address -> word), not made by our encoder.
    """
    [request] = plan_reads(GENERIC, ("fast",))
    assert (request.address, request.count) == (0, 16)
    block = [words.get(address, 0) for address in range(16)]
    values, errors = decode_block(request.registers, request.address, block)
    assert errors == {}
    return to_telemetry_fields(GENERIC, values)


def test_generic_block_decodes_scaled_values_and_status() -> None:
    # Generic map (docs/profiles.md): big-endian, uint32 high word first, int16 two's complement.
    fields = decode_generic(
        {
            0: 0x0002,  # status 2 = charging
            2: 0x0000,  # power 11040 W = 0x00002B20
            3: 0x2B20,
            4: 0x0640,  # current L1 1600 × 0.01 A
            5: 0x0641,  # 1601
            6: 0x063F,  # 1599
            7: 0x08FD,  # voltage L1 2301 × 0.1 V
            10: 0x075B,  # energy 123456789 Wh = 0x075BCD15
            11: 0xCD15,
            14: 0xFFC9,  # temperature -55 × 0.1 °C (int16)
            15: 0x00A0,  # max current 160 × 0.1 A
        }
    )
    assert fields.status == "charging"
    assert fields.iec61851_state == "C"
    assert fields.values["power_w"] == 11_040
    assert fields.values["current_l1_a"] == 16.0
    assert fields.values["current_l2_a"] == 16.01
    assert fields.values["voltage_l1_v"] == 230.1
    assert fields.values["energy_total_wh"] == 123_456_789
    assert fields.values["temperature_c"] == -5.5
    assert fields.values["current_limit_a"] == 16.0
    assert fields.problems == []


def test_unknown_status_code_is_reported_not_guessed() -> None:
    fields = decode_generic({0: 99})
    assert fields.status == "unavailable"
    # Names what it saw: the status code first, then any other register the rules look at.
    [problem] = fields.problems
    assert problem.startswith("unknown status (status=99") and problem.endswith(")")


def test_built_records_validate_and_round_trip() -> None:
    record = build_record(
        charge_point="cp-01",
        site="site",
        profile="generic-ev-charger",
        seq=7,
        fields=decode_generic({0: 1}),
        poll_ms=3.21,
        moment=datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC),
    )
    assert record["ts"] == "2026-11-24T12:00:00.123Z"
    assert record["quality"] == "good"
    assert decode_record(encode_record(record)) == record


def test_offline_record_validates() -> None:
    record = build_record(
        charge_point="cp-01",
        site="site",
        profile="generic-ev-charger",
        seq=1,
        fields=None,
        error="cannot connect to 127.0.0.1:1",
    )
    assert record["status"] == "offline"
    assert record["quality"] == "bad"
    assert decode_record(encode_record(record))["error"] == "cannot connect to 127.0.0.1:1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b'{"type": "telemetry"}', "is a required property"),
        (None, "empty message"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode_record(payload)


def test_wrong_status_value_names_the_field() -> None:
    record = build_record(charge_point="cp", site="s", profile="p", seq=1, fields=decode_generic({0: 1}))
    record["status"] = "exploded"
    with pytest.raises(InvalidRecord, match=r"^status: "):
        decode_record(json.dumps(record).encode())


def test_schema_file_is_where_the_readme_says() -> None:
    relative = SCHEMA_PATH.relative_to(settings.BASE_DIR).as_posix()
    assert relative in (settings.BASE_DIR / "README.md").read_text()
    assert json.loads(SCHEMA_PATH.read_text())["properties"]["schema_version"] == {"const": 2}


def test_power_is_derived_only_where_the_profile_declares_it() -> None:
    from dataclasses import replace

    from gateway.profiles.spec import RegisterSpec

    registers = tuple(
        RegisterSpec(f"{kind}_{phase}", address, scale=scale, role=f"{kind}_{phase}_{unit}")
        for address, (kind, phase, scale, unit) in enumerate(
            (k, p, s, u) for k, s, u in (("current", 0.1, "a"), ("voltage", 1, "v")) for p in ("l1", "l2", "l3")
        )
    )
    spec = replace(GENERIC, registers=registers, status_rules=())
    decoded = {"current_l1": 16.0, "current_l2": 16.0, "current_l3": 0.0} | {
        f"voltage_{p}": 230 for p in ("l1", "l2", "l3")
    }
    assert to_telemetry_fields(spec, decoded).values["power_w"] is None
    derived = to_telemetry_fields(replace(spec, derived=("power_w",)), decoded)
    assert derived.values["power_w"] == 7360.0
    assert derived.extra["derived"] == ["power_w"]


def valid_record(**changes: object) -> dict:
    record = build_record(charge_point="cp-01", site="site", profile="p", seq=3, fields=decode_generic({0: 2}))
    return record | changes


# Records the schema refuses, with the field the reason must name (the dead-letter reason).
INVALID = [
    pytest.param(valid_record(status="exploded"), "status", id="status-not-in-enum"),
    pytest.param(valid_record(seq=-1), "seq", id="negative-seq"),
    pytest.param(valid_record(seq=1.5), "seq", id="fractional-seq"),
    pytest.param(valid_record(schema_version=3), "schema_version", id="other-version"),
    pytest.param(valid_record(type="alert"), "type", id="other-type"),
    pytest.param(valid_record(charge_point="cp 01"), "charge_point", id="slug-with-space"),
    pytest.param(valid_record(ts="2026-11-24 12:00:00"), "ts", id="ts-without-T-and-ms"),
    pytest.param(valid_record(iec61851_state="G"), "iec61851_state", id="unknown-iec-state"),
    pytest.param(valid_record(values={"power_w": "11 kW"}), "values/power_w", id="value-as-text"),
    pytest.param(valid_record(values={"bogus_w": 1}), "values", id="unknown-value-role"),
    pytest.param(valid_record(quality="great"), "quality", id="unknown-quality"),
    pytest.param(valid_record(error=7), "error", id="error-not-text"),
    pytest.param(valid_record(hacked=True), "(record)", id="unknown-field"),
    pytest.param({k: v for k, v in valid_record().items() if k != "site"}, "(record)", id="missing-site"),
    pytest.param([valid_record()], "(record)", id="not-an-object"),
]


@pytest.mark.parametrize(("record", "field"), INVALID)
def test_the_compiled_validator_refuses_what_the_schema_refuses_and_the_reason_names_the_field(
    record: object, field: str
) -> None:
    # Both validators come from the one schema file and agree on each case ...
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        compiled_validator()(record)
    assert list(schema_validator().iter_errors(record))
    # ... and the dead-letter reason names the field, in the reference validator's words.
    with pytest.raises(InvalidRecord) as caught:
        decode_record(json.dumps(record).encode())
    assert str(caught.value).startswith(f"{field}: "), str(caught.value)


def test_the_compiled_validator_accepts_what_the_poller_builds() -> None:
    for record in (valid_record(), build_record(charge_point="c", site="s", profile="p", seq=0, fields=None)):
        compiled_validator()(record)
        assert list(schema_validator().iter_errors(record)) == []


def test_newest_per_charge_point_orders_by_ts_then_seq() -> None:
    base = valid_record()
    a1, a2 = base | {"seq": 1}, base | {"seq": 2}
    # A restarted poller counts from 1 again: a later ts wins over a higher seq.
    a_restarted = base | {"seq": 1, "ts": "2099-01-01T00:00:00.000Z"}
    b = base | {"charge_point": "cp-02"}
    assert newest_per_charge_point([a2, b, a1]) == [a2, b]
    assert newest_per_charge_point([a_restarted, a2]) == [a_restarted]


def test_a_version_1_record_is_upgraded_not_dead_lettered() -> None:
    """Records written before the upgrade (still in an outbox or a topic) keep their current limit."""
    v1 = valid_record(schema_version=1)
    v1["values"] = {"power_w": 7200.0, "max_current_a": 16.0}
    v1.pop("active_limit_a", None)
    record = decode_record(json.dumps(v1).encode())
    assert record["schema_version"] == 2
    assert record["values"] == {"power_w": 7200.0, "current_limit_a": 16.0}
    assert record["active_limit_a"] is None


def test_a_version_1_record_is_still_checked() -> None:
    v1 = valid_record(schema_version=1, status="exploded")
    with pytest.raises(InvalidRecord, match=r"^status: "):
        decode_record(json.dumps(v1).encode())
