"""Read a charger once with a profile's plan: the commissioning check behind `manage.py probe`."""

import time
from dataclasses import dataclass, field

from gateway.choices import PollGroup
from gateway.modbus.connection import ChargePointConnection, DeviceException, ModbusError
from gateway.modbus.pacing import Pacing
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import DecodeError, Value
from gateway.profiles.decode import decode_register, to_telemetry_fields
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.telemetry import Record, build_record


@dataclass
class ProbedValue:
    """One register as read: its words on the wire and what they decode to."""

    register: RegisterSpec
    unit_id: int
    words: list[int] | list[bool]
    value: Value = None
    error: str | None = None


@dataclass
class ProbeResult:
    """Everything one probe read, and what failed."""

    values: list[ProbedValue] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    record: Record | None = None
    reads: int = 0
    elapsed_ms: float = 0.0
    pacing: Pacing = field(default_factory=Pacing)
    paced_ms: float = 0.0  # of elapsed_ms, the time spent waiting for the charger's pacing


async def probe(
    host: str, port: int, unit_id: int, profile: ProfileSpec, *, timeout_s: float = 3.0, pacing: Pacing | None = None
) -> ProbeResult:
    """Connect, run every planned read (fast and slow groups), decode; raises ConnectionFailed.

    Requests are paced as the profile's vendor asks (KEBA: 0.5 s apart) unless `pacing` says otherwise.
    """
    if pacing is None:
        pacing = Pacing(profile.request_gap_ms, profile.write_gap_ms)
    result = ProbeResult(pacing=pacing)
    connection = ChargePointConnection(host, port, unit_id, timeout_s, pacing=pacing)
    started = time.monotonic()
    try:
        await connection.ensure_connected()
        for request in plan_reads(profile, (PollGroup.FAST, PollGroup.SLOW)):
            await _read(connection, request, unit_id, result)
    finally:
        await connection.close()
    result.elapsed_ms = (time.monotonic() - started) * 1000
    result.paced_ms = connection.paced_s * 1000
    decoded = {probed.register.name: probed.value for probed in result.values if probed.error is None}
    fields = to_telemetry_fields(profile, decoded)
    result.record = build_record(
        charge_point=f"probe-{host}-{port}".replace(".", "-").replace(":", "-"),
        site="probe",
        profile=profile.slug,
        seq=1,
        fields=fields,
        error="; ".join(result.errors) or None,
        poll_ms=result.elapsed_ms,
    )
    return result


async def _read(connection: ChargePointConnection, request: ReadRequest, unit_id: int, result: ProbeResult) -> None:
    result.reads += 1
    unit = unit_id if request.unit_id is None else request.unit_id
    try:
        words = await connection.read(request)
    except DeviceException as exc:
        names = ", ".join(reg.name for reg in request.registers)
        result.errors.append(f"{exc} [{names}]")
        return
    except ModbusError as exc:
        if not connection.connected:
            raise
        result.errors.append(str(exc))
        return
    for register in request.registers:
        first = register.address - request.address
        chunk = words[first : first + register.count]
        probed = ProbedValue(register, unit, list(chunk))
        try:
            probed.value = decode_register(register, chunk)
        except DecodeError as exc:
            probed.error = f"cannot decode {register.name}: {exc}"
            result.errors.append(probed.error)
        result.values.append(probed)
