"""Golden tables (tests/golden/): each shipped charger profile against words and meanings from outside our code.

A wrong address, function code, unit id, scale, word order, mask or data type in a profile, or a
codec bug, turns these red: the expected words and values were written by hand from vendor
documents, the published maps and evcc (see each table's docstring), never produced by the codec.
Reads go through the profile's RegisterSpec and the poller's decode path (its planned reads,
decoded by the decoder compiled from the profile, gateway/profiles/compiled.py), and once end to end:
a hand-written Modbus server (tests/golden/wire.py, not gateway/simulator) serves the literal words
and gateway.modbus.poller.ChargePointPoller polls it. Writes check the exact words of "limit 10 A"
and "pause" from the product's encoder, and once on the wire (function code, address, unit id).
"""

import pytest

from gateway.choices import TELEMETRY_VALUE_ROLES, Function, OperatorStatus, PollGroup, Role
from gateway.modbus.connection import ChargePointConnection
from gateway.modbus.pacing import Pacing
from gateway.modbus.planner import plan_reads
from gateway.modbus.poller import ChargePointConfig, ChargePointPoller
from gateway.profiles.codec import Value
from gateway.profiles.compiled import ProfileDecoder, compile_profile
from gateway.profiles.encode import check_write_range, encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.telemetry import Record
from tests.conftest import free_port, within
from tests.golden import GoldenTable, Read, Status, Write, all_tables
from tests.golden.wire import WordServer, WriteSeen

TABLES = {table.slug: table for table in all_tables()}
SPECS = {spec.slug: spec for spec in (read_spec_file(path) for path in shipped_profile_files())}
NOT_READ_ROLES = {Role.NONE.value}  # roles a read row cannot cover
FUNCTION_NAMES = {"holding": Function.HOLDING, "input": Function.INPUT}
FAULT_STATES = ("E", "F")  # IEC 61851: E = error (0 V), F = EVSE fault (-12 V)


def rows(kind: str) -> list[tuple[GoldenTable, Read | Status | Write]]:
    return [(table, row) for table in TABLES.values() for row in getattr(table, kind)]


def row_id(pair: tuple[GoldenTable, Read | Status | Write]) -> str:
    table, row = pair
    if isinstance(row, Read):
        return f"{table.slug}-{row.register}"
    if isinstance(row, Write):
        return f"{table.slug}-{row.action}"
    return f"{table.slug}-" + "-".join(
        f"{name}={'.'.join(f'{w:04X}' for w in words)}" for name, words in row.words.items()
    )


READS, STATUSES, WRITES = rows("reads"), rows("statuses"), rows("writes")


def spec_for(table: GoldenTable) -> ProfileSpec:
    return SPECS[table.slug]


def decoder_for(spec: ProfileSpec) -> ProfileDecoder:
    """The decoder the poller compiles: the profile's fast and slow planned reads."""
    return compile_profile(spec, plan_reads(spec, (PollGroup.FAST,)) + plan_reads(spec, (PollGroup.SLOW,)))


def decode_as_polled(decoder: ProfileDecoder, words: dict[str, tuple[int, ...]]) -> dict[str, Value]:
    """Values of the given registers, their words laid into the planned reads (zeros elsewhere)."""
    decoded: dict[str, Value] = {}
    for block in decoder.blocks:
        request = block.request
        inside = [register for register in request.registers if register.name in words]
        if not inside:
            continue
        answer = [0] * request.count
        for register in inside:
            assert len(words[register.name]) == register.count, f"{register.name}: {register.count} registers"
            first = register.address - request.address
            answer[first : first + register.count] = words[register.name]
        values, errors = block.decode(answer)
        assert not {register.name for register in inside} & set(errors), errors
        decoded.update((register.name, values[register.name]) for register in inside)
    assert set(decoded) == set(words), "a golden register that is not read"
    return decoded


def test_every_real_profile_has_a_golden_table() -> None:
    real = {slug for slug in SPECS if slug != "generic-ev-charger"}
    assert len(real) == 7
    assert set(TABLES) == real


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
def test_table_covers_every_role_the_profile_maps(table: GoldenTable) -> None:
    spec = spec_for(table)
    mapped = {register.role for register in spec.registers} - NOT_READ_ROLES
    covered = {row.role for row in table.reads if row.role}
    assert mapped - covered == set(), f"{table.slug}: roles without a golden row"
    failsafe = {"failsafe 10 A", "failsafe timeout 30 s"}  # issue 12: where the published map has them
    assert {"limit 10 A", "pause"} <= {row.action for row in table.writes} <= {"limit 10 A", "pause", *failsafe}
    assert len(table.statuses) >= 4
    live = [row.register for row in table.reads if row.live]
    assert len(live) == len(set(live)), "one live row per register"
    assert spec.default_unit_id == table.unit_id, "the profile's default unit id is not the vendor's"


@pytest.mark.parametrize("pair", READS, ids=[row_id(pair) for pair in READS])
def test_golden_read(pair: tuple[GoldenTable, Read]) -> None:
    table, row = pair
    register = spec_for(table).register(row.register)
    assert (register.address, register.function, register.unit_id) == (
        row.address,
        FUNCTION_NAMES[row.function],
        row.unit_id,
    ), f"{row.register}: not where {row.source} puts it"
    assert register.role == row.role
    decoded = decode_as_polled(decoder_for(spec_for(table)), {row.register: row.words})[row.register]
    assert decoded == row.value, (
        f"{row.register}: words {[hex(w) for w in row.words]} mean {row.value!r} ({row.source})"
    )


@pytest.mark.parametrize("pair", STATUSES, ids=[row_id(pair) for pair in STATUSES])
def test_golden_status(pair: tuple[GoldenTable, Status]) -> None:
    table, row = pair
    spec = spec_for(table)
    decoder = decoder_for(spec)
    decoded = decode_as_polled(decoder, row.words)
    fields = decoder.telemetry_fields(decoded)
    status, iec_state = fields.status, fields.iec61851_state
    assert fields.problems == []
    if row.faulted:
        assert status == OperatorStatus.FAULTED, f"{decoded} is an error per {row.source}"
        assert iec_state in FAULT_STATES
    else:
        assert iec_state == row.iec61851_state, f"{decoded} is state {row.iec61851_state} per {row.source}"
        assert status != OperatorStatus.FAULTED


@pytest.mark.parametrize("pair", WRITES, ids=[row_id(pair) for pair in WRITES])
def test_golden_write_words(pair: tuple[GoldenTable, Write]) -> None:
    table, row = pair
    register = spec_for(table).register(row.register)
    assert register.writable, f"{row.register} must be writable for {row.action!r}"
    assert (register.address, register.function, register.unit_id) == (row.address, Function.HOLDING, row.unit_id)
    assert encode_for_write(register, row.value) == list(row.words), row.source


@pytest.mark.parametrize("pair", WRITES, ids=[row_id(pair) for pair in WRITES])
def test_golden_write_is_allowed_by_the_profile(pair: tuple[GoldenTable, Write]) -> None:
    """The vendor's own "limit 10 A" and "pause" must pass the profile's write range."""
    table, row = pair
    check_write_range(spec_for(table).register(row.register), row.value)


def served_words(table: GoldenTable) -> dict[tuple[int, str, int], int]:
    words: dict[tuple[int, str, int], int] = {}
    for row in table.reads:
        if not row.live:
            continue
        unit_id = table.unit_id if row.unit_id is None else row.unit_id
        for offset, word in enumerate(row.words):
            words[(unit_id, row.function, row.address + offset)] = word
    return words


def expected_in_record(record: Record, row: Read) -> object:
    if row.role in TELEMETRY_VALUE_ROLES:
        return record["values"][row.role]
    return record["extra"][row.register]


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
async def test_golden_words_polled_end_to_end(table: GoldenTable) -> None:
    """The poller plans, reads (function code, unit id) and decodes the literal words into the record."""
    server = WordServer(served_words(table))
    port = free_port()
    await server.start(port)
    config = ChargePointConfig(
        slug="golden",
        site="lab",
        host="127.0.0.1",
        port=port,
        unit_id=table.unit_id,
        interval_ms=1000,
        profile=spec_for(table),
        pacing=Pacing(),  # vendor pacing is tested elsewhere; this checks what is read, not when
    )
    poller = ChargePointPoller(config, lambda record: None)
    try:
        record = await within(poller.poll_once(), 30)
    finally:
        await poller.connection.close()
        await server.stop()
    assert record["error"] is None, record["error"]
    for row in (row for row in table.reads if row.live):
        want = row.value.hex() if isinstance(row.value, bytes) else row.value
        assert expected_in_record(record, row) == want, f"{row.register} ({row.source})"
    assert record["iec61851_state"] == table.live_iec61851_state


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
async def test_golden_writes_on_the_wire(table: GoldenTable) -> None:
    """The request each charger receives: function code, address, unit id and words."""
    server = WordServer({})
    port = free_port()
    await server.start(port)
    connection = ChargePointConnection("127.0.0.1", port, table.unit_id, 5.0)
    spec = spec_for(table)
    try:
        await within(connection.ensure_connected())
        for row in table.writes:
            register = spec.register(row.register)
            await within(
                connection.write_registers(register.address, encode_for_write(register, row.value), register.unit_id)
            )
    finally:
        await connection.close()
        await server.stop()
    assert len(server.writes) == len(table.writes)
    for seen, row in zip(server.writes, table.writes, strict=True):
        unit_id = table.unit_id if row.unit_id is None else row.unit_id
        assert seen.function_code in row.function_codes, f"{row.action}: FC{seen.function_code} ({row.source})"
        assert seen == WriteSeen(unit_id, seen.function_code, row.address, row.words), row.action
